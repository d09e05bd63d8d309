//! The IR's operations. Elementwise operations broadcast as NumPy does; shapes are the
//! node's own (`Node::shape`), so an operation only carries what its shape does not say.

use std::fmt;

/// Losses (LANGUAGE.md §8). Each is a mean over the batch and other non-class dims.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LossKind {
    /// |pred − y|.
    Mae,
    /// (pred − y)².
    Mse,
    /// Huber with this delta.
    Huber(f64),
    /// exp(−y·score).
    Exponential,
    /// max(0, 1 − y·score), or multi-class hinge with labels.
    Hinge,
    /// Softmax cross-entropy with label smoothing.
    CrossEntropy(f64),
    /// Sigmoid binary cross-entropy.
    Bce,
    /// Focal loss (gamma, alpha).
    Focal(f64, f64),
    /// Fraction misclassified (a metric).
    ZeroOne,
}

/// An elementwise function of one argument. Each has a derivative, used by
/// [`Op::MapGrad`]: `g · f'(x)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Func {
    /// −x.
    Neg,
    /// eˣ.
    Exp,
    /// ln x.
    Log,
    /// √x.
    Sqrt,
    /// |x|.
    Abs,
    /// x².
    Square,
    /// 1/x.
    Recip,
    /// max(0, x).
    Relu,
    /// x, or α·x for x < 0.
    LeakyRelu(f64),
    /// x, or α·(eˣ − 1) for x < 0.
    Elu(f64),
    /// 1 / (1 + e⁻ˣ).
    Sigmoid,
    /// tanh x.
    Tanh,
    /// x·Φ(x) with the error function.
    Gelu,
    /// The tanh approximation of GELU.
    GeluTanh,
    /// x·sigmoid(x).
    Silu,
    /// ln(1 + eˣ).
    Softplus,
    /// −1, 0 or 1.
    Sign,
    /// 1 for x > 0, else 0.
    Step,
}

impl Func {
    /// The name used when printing the IR.
    pub fn name(self) -> String {
        match self {
            Func::LeakyRelu(a) => format!("leaky_relu({a})"),
            Func::Elu(a) => format!("elu({a})"),
            other => format!("{other:?}").to_lowercase(),
        }
    }
}

/// Elementwise functions of two arguments (broadcasting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    /// a + b.
    Add,
    /// a − b.
    Sub,
    /// a · b.
    Mul,
    /// a / b.
    Div,
    /// max(a, b).
    Max,
    /// min(a, b).
    Min,
    /// 1 where a = b, else 0.
    Eq,
}

/// Reductions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    /// Σ.
    Sum,
    /// Mean (over the batch too when axis 0 is reduced: divides by the run-time size).
    Mean,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
}

/// Scalars supplied at run time to every training step, so that a schedule or a new
/// hyperparameter never recompiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hyper {
    /// The learning rate of this step (after the schedule).
    Lr,
    /// SGD/RMSprop momentum.
    Momentum,
    /// Adam β₁.
    Beta1,
    /// Adam β₂.
    Beta2,
    /// 1 − β₁ᵗ (bias correction at step t).
    Bias1,
    /// 1 − β₂ᵗ.
    Bias2,
    /// Denominator ε.
    Eps,
    /// Weight decay.
    WeightDecay,
    /// RMSprop α.
    Alpha,
    /// Clipping threshold (norm or value).
    Clip,
}

/// A mutable slot the training step writes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// A parameter.
    Param(usize),
    /// Optimizer state.
    State(usize),
}

/// An IR operation.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Model input `k`.
    Input(usize),
    /// Model target `k`.
    Target(usize),
    /// Parameter `k`.
    Param(usize),
    /// Optimizer or layer state `k`.
    State(usize),
    /// A run-time scalar hyperparameter.
    Hyper(Hyper),
    /// The run-time batch size as a scalar.
    BatchSize,
    /// A scalar constant.
    Const(f64),
    /// `f(x)` elementwise.
    Map(Func),
    /// `g · f'(x)` elementwise; arguments (x, g).
    MapGrad(Func),
    /// Elementwise with broadcasting; arguments (a, b).
    Binary(Binary),
    /// Matrix product of the arguments seen as matrices (all leading dimensions
    /// collapsed into rows), each optionally transposed. Without `ta` the result keeps a's
    /// leading dimensions: `[.., m, k]·[k, n] → [.., m, n]`; with `ta` the leading
    /// dimensions are contracted: `[.., k]ᵀ·[.., n] → [k, n]`.
    MatMul {
        /// Transpose a.
        ta: bool,
        /// Transpose b.
        tb: bool,
    },
    /// NumPy `matmul` over the last two dimensions, leading ones broadcast.
    BatchMatMul {
        /// Transpose the last two dimensions of a.
        ta: bool,
        /// Transpose the last two dimensions of b.
        tb: bool,
    },
    /// Same elements, the node's shape.
    Reshape,
    /// Broadcast to the node's shape.
    BroadcastTo,
    /// Sum broadcast dimensions away, down to the node's shape.
    SumTo,
    /// A reduction over axes.
    Reduce {
        /// Which.
        kind: Reduce,
        /// Axes (sorted).
        axes: Vec<usize>,
        /// Reduced axes stay as size 1.
        keepdims: bool,
    },
    /// Softmax along an axis.
    Softmax(usize),
    /// Log-softmax along an axis.
    LogSoftmax(usize),
    /// Softmax's VJP; arguments (y, g): `y·(g − Σ g·y)`.
    SoftmaxGrad(usize),
    /// Log-softmax's VJP; arguments (y, g): `g − eʸ·Σ g`.
    LogSoftmaxGrad(usize),
    /// Concatenation along an axis.
    Concat(usize),
    /// `len` elements from `start` along `axis`.
    Slice {
        /// Axis.
        axis: usize,
        /// First index.
        start: usize,
        /// Count.
        len: usize,
    },
    /// The slice's VJP: `g` placed at `start` along `axis` in zeros of the node's shape.
    SliceGrad {
        /// Axis.
        axis: usize,
        /// First index.
        start: usize,
    },
    /// A loss of (prediction, target): a scalar mean over the batch.
    Loss(LossKind),
    /// The loss's VJP w.r.t. the prediction; arguments (prediction, target, g).
    LossGrad(LossKind),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Input(k) => write!(f, "input#{k}"),
            Op::Target(k) => write!(f, "target#{k}"),
            Op::Param(k) => write!(f, "param#{k}"),
            Op::State(k) => write!(f, "state#{k}"),
            Op::Hyper(h) => write!(f, "hyper.{}", format!("{h:?}").to_lowercase()),
            Op::BatchSize => write!(f, "batch_size"),
            Op::Const(c) => write!(f, "const {c}"),
            Op::Map(func) => write!(f, "{}", func.name()),
            Op::MapGrad(func) => write!(f, "{}_grad", func.name()),
            Op::Binary(b) => write!(f, "{}", format!("{b:?}").to_lowercase()),
            Op::MatMul { ta, tb } => write!(
                f,
                "matmul{}{}",
                if *ta { " ta" } else { "" },
                if *tb { " tb" } else { "" }
            ),
            Op::BatchMatMul { ta, tb } => {
                write!(
                    f,
                    "batch_matmul{}{}",
                    if *ta { " ta" } else { "" },
                    if *tb { " tb" } else { "" }
                )
            }
            Op::Reshape => write!(f, "reshape"),
            Op::BroadcastTo => write!(f, "broadcast_to"),
            Op::SumTo => write!(f, "sum_to"),
            Op::Reduce {
                kind,
                axes,
                keepdims,
            } => {
                let kind = format!("{kind:?}").to_lowercase();
                write!(
                    f,
                    "reduce_{kind} axes={axes:?}{}",
                    if *keepdims { " keepdims" } else { "" }
                )
            }
            Op::Softmax(a) => write!(f, "softmax axis={a}"),
            Op::LogSoftmax(a) => write!(f, "log_softmax axis={a}"),
            Op::SoftmaxGrad(a) => write!(f, "softmax_grad axis={a}"),
            Op::LogSoftmaxGrad(a) => write!(f, "log_softmax_grad axis={a}"),
            Op::Concat(a) => write!(f, "concat axis={a}"),
            Op::Slice { axis, start, len } => {
                write!(f, "slice axis={axis} start={start} len={len}")
            }
            Op::SliceGrad { axis, start } => write!(f, "slice_grad axis={axis} start={start}"),
            Op::Loss(l) => write!(f, "loss {l:?}"),
            Op::LossGrad(l) => write!(f, "loss_grad {l:?}"),
        }
    }
}
