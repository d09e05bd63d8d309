//! The optimizer and gradient-clipping descriptors a training graph is built from:
//! `check` validates a train block into them, autodiff emits their update as IR, and
//! the runtime sets their hyperparameters for each step.

/// An optimizer with its hyperparameters.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Optimizer {
    /// Stochastic gradient descent (PyTorch's formulation of momentum and nesterov).
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum in [0, 1).
        momentum: f64,
        /// Nesterov momentum.
        nesterov: bool,
        /// L2 penalty added to the gradient.
        weight_decay: f64,
    },
    /// Adam; `decoupled` is AdamW.
    Adam {
        /// Learning rate.
        lr: f64,
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator epsilon.
        eps: f64,
        /// Weight decay.
        weight_decay: f64,
        /// AdamW: decay applied to the weights, not the gradient.
        decoupled: bool,
    },
    /// RMSprop.
    Rmsprop {
        /// Learning rate.
        lr: f64,
        /// Square-average decay.
        alpha: f64,
        /// Denominator epsilon.
        eps: f64,
        /// Momentum.
        momentum: f64,
    },
}

impl Optimizer {
    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            Optimizer::Sgd { lr, .. }
            | Optimizer::Adam { lr, .. }
            | Optimizer::Rmsprop { lr, .. } => *lr,
        }
    }

    /// The same optimizer with another base learning rate.
    pub fn with_lr(&self, new: f64) -> Optimizer {
        let mut o = self.clone();
        match &mut o {
            Optimizer::Sgd { lr, .. }
            | Optimizer::Adam { lr, .. }
            | Optimizer::Rmsprop { lr, .. } => *lr = new,
        }
        o
    }
}

/// Gradient clipping.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Clip {
    /// Scale all gradients so their global L2 norm is at most this.
    Norm(f64),
    /// Clamp every gradient value to ±this.
    Value(f64),
}
