//! Per-feature standardization of the inputs, fitted on the training rows.

use ndarray::ArrayD;

use super::Dataset;

/// Per-feature standardization of the inputs, fitted on a training set: each element of
/// an input's sample (each CSV column) becomes `(x − mean) / std`.
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    /// One vector per input, one mean per element of the input's sample (flattened
    /// row-major).
    pub mean: Vec<Vec<f32>>,
    /// One vector per input, one standard deviation per element, never 0.
    pub std: Vec<Vec<f32>>,
}

/// The number of elements of one sample of an array `[rows, shape...]`.
fn sample_elements(array: &ArrayD<f32>) -> usize {
    array.shape().get(1..).map_or(0, |s| s.iter().product())
}

impl Standardizer {
    /// Fits the means and population standard deviations (dividing by the number of
    /// rows), computed in `f64`, of each input element of `data`. A constant element
    /// (standard deviation 0, or no rows) gets standard deviation 1, so that it is only
    /// centered: its value becomes exactly 0. Non-finite values give non-finite
    /// statistics; rejecting them is the sanity checks' job.
    pub fn fit(data: &Dataset) -> Standardizer {
        let mut mean = Vec::with_capacity(data.inputs.len());
        let mut std = Vec::with_capacity(data.inputs.len());
        for input in &data.inputs {
            let m = sample_elements(input);
            let rows = input.shape().first().copied().unwrap_or(0);
            let mut sum = vec![0f64; m];
            let mut first = vec![0f32; m];
            let mut constant = vec![true; m];
            for (k, &x) in input.iter().enumerate() {
                let j = k % m;
                if k < m {
                    first[j] = x;
                } else if x != first[j] {
                    constant[j] = false;
                }
                sum[j] += f64::from(x);
            }
            let means: Vec<f64> = sum.iter().map(|s| s / rows.max(1) as f64).collect();
            let mut squares = vec![0f64; m];
            for (k, &x) in input.iter().enumerate() {
                let j = k % m;
                let d = f64::from(x) - means[j];
                squares[j] += d * d;
            }
            let mut input_mean = Vec::with_capacity(m);
            let mut input_std = Vec::with_capacity(m);
            for j in 0..m {
                if rows == 0 {
                    input_mean.push(0.0);
                    input_std.push(1.0);
                } else if constant[j] {
                    // Exactly the value, so that the column becomes exactly 0.
                    input_mean.push(first[j]);
                    input_std.push(1.0);
                } else {
                    let s = (squares[j] / rows as f64).sqrt() as f32;
                    input_mean.push(means[j] as f32);
                    // A deviation too small for f32 counts as 0.
                    input_std.push(if s == 0.0 { 1.0 } else { s });
                }
            }
            mean.push(input_mean);
            std.push(input_std);
        }
        Standardizer { mean, std }
    }

    /// Whether this standardizer fits `data`: one mean and deviation per element of
    /// each input. [`Standardizer::apply`] leaves inputs that do not fit unchanged.
    pub fn matches(&self, data: &Dataset) -> bool {
        self.mean.len() == data.inputs.len()
            && self.std.len() == data.inputs.len()
            && data.inputs.iter().enumerate().all(|(i, input)| {
                let m = sample_elements(input);
                self.mean[i].len() == m && self.std[i].len() == m
            })
    }

    /// Standardizes the inputs of `data` in place: `x = (x − mean) / std`, computed in
    /// `f64` from the stored `f32` statistics (a stored deviation of 0 counts as 1).
    /// Targets are left alone, and so is an input whose size does not match the fitted
    /// one (see [`Standardizer::matches`]).
    pub fn apply(&self, data: &mut Dataset) {
        for (i, input) in data.inputs.iter_mut().enumerate() {
            let m = sample_elements(input);
            let (Some(mean), Some(std)) = (self.mean.get(i), self.std.get(i)) else {
                continue;
            };
            if m == 0 || mean.len() != m || std.len() != m {
                continue;
            }
            for (k, x) in input.iter_mut().enumerate() {
                let j = k % m;
                // A deviation of 0 (only from a damaged checkpoint) only centers.
                let scale = if std[j] == 0.0 {
                    1.0
                } else {
                    f64::from(std[j])
                };
                *x = ((f64::from(*x) - f64::from(mean[j])) / scale) as f32;
            }
        }
    }
}
