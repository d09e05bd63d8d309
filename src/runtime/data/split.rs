//! Rows of a data set: selecting them (batches), the validation split, and the order of
//! rows in each epoch.

use ndarray::{ArrayD, Axis};
use rand::seq::SliceRandom;

use super::Dataset;
use crate::exec::rng::{stream, Purpose};

impl Dataset {
    /// Rows `idx` (in that order) as a new data set, used for batches and splits.
    ///
    /// # Panics
    ///
    /// If an index is not below [`Dataset::rows`] (a caller's bug, never file contents).
    pub fn select(&self, idx: &[usize]) -> Dataset {
        let pick = |arrays: &[ArrayD<f32>]| -> Vec<ArrayD<f32>> {
            arrays.iter().map(|a| a.select(Axis(0), idx)).collect()
        };
        Dataset {
            inputs: pick(&self.inputs),
            targets: pick(&self.targets),
            rows: idx.len(),
        }
    }

    /// Splits the rows into `(train, validation)`: validation takes the last
    /// `round(rows · fraction)` rows of a permutation drawn from
    /// `stream(seed, Purpose::Split, 0)`, and training the others. Both keep the file's
    /// order of rows (the split chooses rows; [`epoch_order`] orders them). A fraction of
    /// 0 (or below, or NaN) leaves validation empty; 1 or more leaves training empty.
    pub fn split(&self, fraction: f64, seed: u64) -> (Dataset, Dataset) {
        let held = validation_rows(self.rows, fraction);
        let mut order: Vec<usize> = (0..self.rows).collect();
        order.shuffle(&mut stream(seed, Purpose::Split, 0));
        let (train, validation) = order.split_at(self.rows - held);
        let mut train = train.to_vec();
        let mut validation = validation.to_vec();
        train.sort_unstable();
        validation.sort_unstable();
        (self.select(&train), self.select(&validation))
    }
}

/// `round(rows · fraction)`, within `0..=rows`.
fn validation_rows(rows: usize, fraction: f64) -> usize {
    if fraction.is_nan() || fraction <= 0.0 {
        return 0;
    }
    let held = (rows as f64 * fraction).round();
    if held >= rows as f64 {
        rows
    } else {
        held as usize
    }
}

/// The order of rows in epoch `epoch`: a permutation of `0..rows` shuffled (Fisher–Yates)
/// with `stream(seed, Purpose::Shuffle, epoch)`.
pub fn epoch_order(rows: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows).collect();
    order.shuffle(&mut stream(seed, Purpose::Shuffle, epoch));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_row_counts() {
        assert_eq!(validation_rows(10, 0.0), 0);
        assert_eq!(validation_rows(10, -1.0), 0);
        assert_eq!(validation_rows(10, f64::NAN), 0);
        assert_eq!(validation_rows(10, 0.25), 3); // 2.5 rounds away from zero
        assert_eq!(validation_rows(1438, 0.1), 144);
        assert_eq!(validation_rows(10, 1.0), 10);
        assert_eq!(validation_rows(10, 5.0), 10);
    }
}
