//! Learning-rate schedules, evaluated once per epoch.

use crate::check::train::Schedule;
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
