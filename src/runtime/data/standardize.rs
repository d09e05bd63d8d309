//! Per-feature standardization of the inputs (and of a regression model's float
//! target), fitted on the training rows.

use ndarray::ArrayD;

use super::Dataset;

/// Per-feature standardization of the inputs, fitted on a training set: each element of
/// an input's sample (each CSV column) becomes `(x − mean) / std`; a regression model's
/// float target may be standardized the same way ([`Standardizer::fit_target`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    /// One vector per input, one mean per element of the input's sample (flattened
    /// row-major).
    pub mean: Vec<Vec<f32>>,
    /// One vector per input, one standard deviation per element, never 0.
    pub std: Vec<Vec<f32>>,
    /// The standardization of a regression model's float target, when it has one.
    pub target: Option<TargetScale>,
}

/// The standardization of a regression model's float target: each element of its sample
/// becomes `(y − mean) / std` for training, and predictions are turned back into the
/// target's units with `y = ŷ · std + mean`.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetScale {
    /// The target's index among the model's targets.
    pub target: usize,
    /// One mean per element of the target's sample (flattened row-major).
    pub mean: Vec<f32>,
    /// One standard deviation per element, never 0.
    pub std: Vec<f32>,
}

/// The number of elements of one sample of an array `[rows, shape...]`.
fn sample_elements(array: &ArrayD<f32>) -> usize {
    array.shape().get(1..).map_or(0, |s| s.iter().product())
}

/// Means and population standard deviations (dividing by the number of rows), computed
/// in `f64`, of each element of the samples of `array` (`[rows, shape...]`). A constant
/// element (standard deviation 0, or no rows) gets standard deviation 1, so that it is
/// only centered: its value becomes exactly 0. Non-finite values give non-finite
/// statistics; rejecting them is the sanity checks' job.
fn columns(array: &ArrayD<f32>) -> (Vec<f32>, Vec<f32>) {
    let m = sample_elements(array);
    let rows = array.shape().first().copied().unwrap_or(0);
    let mut sum = vec![0f64; m];
    let mut first = vec![0f32; m];
    let mut constant = vec![true; m];
    for (k, &x) in array.iter().enumerate() {
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
    for (k, &x) in array.iter().enumerate() {
        let j = k % m;
        let d = f64::from(x) - means[j];
        squares[j] += d * d;
    }
    let mut mean = Vec::with_capacity(m);
    let mut std = Vec::with_capacity(m);
    for j in 0..m {
        if rows == 0 {
            mean.push(0.0);
            std.push(1.0);
        } else if constant[j] {
            // Exactly the value, so that the column becomes exactly 0.
            mean.push(first[j]);
            std.push(1.0);
        } else {
            let s = (squares[j] / rows as f64).sqrt() as f32;
            mean.push(means[j] as f32);
            // A deviation too small for f32 counts as 0.
            std.push(if s == 0.0 { 1.0 } else { s });
        }
    }
    (mean, std)
}

/// A deviation of 0 (only from a damaged checkpoint) counts as 1: it only centers.
pub fn scale_of(std: f32) -> f64 {
    if std == 0.0 {
        1.0
    } else {
        f64::from(std)
    }
}

/// The values of `array`, row-major (made so first if they are not).
fn contiguous(array: &mut ArrayD<f32>) -> &mut [f32] {
    if array.as_slice().is_none() {
        *array = array.as_standard_layout().into_owned();
    }
    array
        .as_slice_mut()
        .expect("an array in standard layout is contiguous")
}

/// `x = (x − mean) / std` per sample element, unless the sizes do not match.
fn standardize(array: &mut ArrayD<f32>, mean: &[f32], std: &[f32]) {
    let m = sample_elements(array);
    if m == 0 || mean.len() != m || std.len() != m {
        return;
    }
    for row in contiguous(array).chunks_exact_mut(m) {
        for ((x, &mu), &sd) in row.iter_mut().zip(mean).zip(std) {
            *x = ((f64::from(*x) - f64::from(mu)) / scale_of(sd)) as f32;
        }
    }
}

impl Standardizer {
    /// Fits the statistics of each input element of `data` (see [`columns`]: a constant
    /// element gets standard deviation 1). The targets are not fitted: see
    /// [`Standardizer::fit_target`].
    pub fn fit(data: &Dataset) -> Standardizer {
        let (mean, std) = data.inputs.iter().map(columns).unzip();
        Standardizer {
            mean,
            std,
            target: None,
        }
    }

    /// Also fits the statistics of target `target` of `data` (a regression model's float
    /// target) by the inputs' rule, so that [`Standardizer::apply`] standardizes it too.
    pub fn fit_target(&mut self, data: &Dataset, target: usize) {
        self.target = data.targets.get(target).map(|t| {
            let (mean, std) = columns(t);
            TargetScale { target, mean, std }
        });
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

    /// Standardizes the inputs of `data` in place, and its standardized target when it
    /// has it: `x = (x − mean) / std`, computed in `f64` from the stored `f32`
    /// statistics (a stored deviation of 0 counts as 1). Other targets are left alone,
    /// and so is an input or target whose size does not match the fitted one (see
    /// [`Standardizer::matches`]).
    pub fn apply(&self, data: &mut Dataset) {
        for (i, input) in data.inputs.iter_mut().enumerate() {
            if let (Some(mean), Some(std)) = (self.mean.get(i), self.std.get(i)) {
                standardize(input, mean, std);
            }
        }
        if let Some(t) = &self.target {
            if let Some(target) = data.targets.get_mut(t.target) {
                standardize(target, &t.mean, &t.std);
            }
        }
    }

    /// Undoes the target's standardization on `values` (predictions of the standardized
    /// target, or the target itself, `[rows, shape...]`): `y = ŷ · std + mean`, computed
    /// in `f64`. Values are left alone without a standardized target, or when their
    /// size does not match it.
    pub fn unstandardize_target(&self, values: &mut ArrayD<f32>) {
        let m = sample_elements(values);
        self.unstandardize_rows(contiguous(values), m);
    }

    /// [`Standardizer::unstandardize_target`] on rows of `m` values each.
    pub fn unstandardize_rows(&self, values: &mut [f32], m: usize) {
        let Some(t) = &self.target else { return };
        if m == 0 || t.mean.len() != m || t.std.len() != m {
            return;
        }
        for row in values.chunks_exact_mut(m) {
            for ((y, &mu), &sd) in row.iter_mut().zip(&t.mean).zip(&t.std) {
                *y = (f64::from(*y) * scale_of(sd) + f64::from(mu)) as f32;
            }
        }
    }
}
