//! Learning-rate schedules, evaluated once per epoch, and the hyperparameters the
//! optimizer and clipping read at each step.

use crate::check::train::Schedule;
use crate::ir::{Clip, Hyper, Optimizer};
use std::collections::HashMap;
use std::f64::consts::PI;

/// The learning rate of epoch `epoch` (from 0) of a run of `epochs` epochs with base rate `lr`.
pub fn learning_rate(s: &Schedule, lr: f64, epoch: u64, epochs: u64) -> f64 {
    match s {
        Schedule::Constant => lr,
        Schedule::Step { every, gamma } => lr * gamma.powi((epoch / every.max(&1)) as i32),
        Schedule::Exponential { gamma } => lr * gamma.powi(epoch as i32),
        Schedule::Cosine { min_lr } => {
            let t = epoch as f64 / epochs.max(1) as f64;
            min_lr + (lr - min_lr) * (1.0 + (PI * t).cos()) / 2.0
        }
        Schedule::Warmup { epochs: w, then } => {
            if epoch < *w {
                lr * (epoch + 1) as f64 / *w as f64
            } else {
                learning_rate(then, lr, epoch - w, epochs.saturating_sub(*w))
            }
        }
    }
}

/// The hyperparameters of step `step` (from 1) at learning rate `lr`.
pub fn hyper(opt: &Optimizer, clip: Option<Clip>, lr: f64, step: u64) -> HashMap<Hyper, f64> {
    let mut h = HashMap::new();
    h.insert(Hyper::Lr, lr);
    match *opt {
        Optimizer::Sgd {
            momentum,
            weight_decay,
            ..
        } => {
            h.insert(Hyper::Momentum, momentum);
            h.insert(Hyper::WeightDecay, weight_decay);
        }
        Optimizer::Adam {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } => {
            h.insert(Hyper::Beta1, beta1);
            h.insert(Hyper::Beta2, beta2);
            h.insert(Hyper::Bias1, 1.0 - beta1.powi(step as i32));
            h.insert(Hyper::Bias2, 1.0 - beta2.powi(step as i32));
            h.insert(Hyper::Eps, eps);
            h.insert(Hyper::WeightDecay, weight_decay);
        }
        Optimizer::Rmsprop {
            alpha,
            eps,
            momentum,
            ..
        } => {
            h.insert(Hyper::Alpha, alpha);
            h.insert(Hyper::Eps, eps);
            h.insert(Hyper::Momentum, momentum);
        }
    }
    if let Some(Clip::Norm(c) | Clip::Value(c)) = clip {
        h.insert(Hyper::Clip, c);
    }
    h.insert(Hyper::Step, step as f64);
    h.insert(Hyper::RowOffset, 0.0);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_by_hand() {
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        close(learning_rate(&Schedule::Constant, 0.1, 7, 10), 0.1);
        let step = Schedule::Step {
            every: 5,
            gamma: 0.5,
        };
        close(learning_rate(&step, 0.1, 4, 20), 0.1);
        close(learning_rate(&step, 0.1, 5, 20), 0.05);
        close(learning_rate(&step, 0.1, 10, 20), 0.025);
        close(
            learning_rate(&Schedule::Exponential { gamma: 0.9 }, 1.0, 2, 10),
            0.81,
        );
        let cos = Schedule::Cosine { min_lr: 0.0 };
        close(learning_rate(&cos, 1.0, 0, 10), 1.0);
        close(learning_rate(&cos, 1.0, 5, 10), 0.5);
        let warm = Schedule::Warmup {
            epochs: 2,
            then: Box::new(Schedule::Constant),
        };
        close(learning_rate(&warm, 0.1, 0, 10), 0.05);
        close(learning_rate(&warm, 0.1, 1, 10), 0.1);
        close(learning_rate(&warm, 0.1, 5, 10), 0.1);
    }
}
