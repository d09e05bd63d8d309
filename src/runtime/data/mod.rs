//! Data sets: reading CSV, NumPy `.npy` and `.npz` files against what a model reads (its
//! inputs and targets), the validation split, the order of rows in each epoch, and the
//! standardization of inputs (LANGUAGE.md §13–14).
//!
//! Every error names the file and, where known, the line and the column (both 1-based;
//! the column is the field's position in its CSV row). The codes:
//!
//! | code | about |
//! |---|---|
//! | E0500 | the file cannot be read (missing, unreadable): the OS message |
//! | E0501 | the contents cannot be read: unknown format, not a number, no rows, a broken `.npy`/`.npz` |
//! | E0502 | the columns of a CSV file do not match the model, or a row has the wrong number of fields |
//! | E0503 | a class label that is not an integer in `0..K` |
//! | E0504 | an array the model needs is missing (or the format cannot hold it) |
//! | E0505 | an array has the wrong shape, or the arrays disagree on the number of rows |
//! | E0506 | a NaN or infinite input or target value (found by [`crate::runtime::sanity`]) |
//!
//! No file contents make this module panic.

use std::fmt;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Axis, IxDyn};

use crate::diag::{self, Code, ColorChoice, Severity};

mod from_csv;
mod from_npy;
mod from_safetensors;
mod split;
mod standardize;

pub(crate) use from_csv::{csv_fields, csv_row_line, CsvFields};
pub use split::epoch_order;
pub use standardize::{scale_of, Standardizer, TargetScale};

const E_IO: Code = Code::E0500;
const E_FORMAT: Code = Code::E0501;
const E_COLUMNS: Code = Code::E0502;
const E_LABEL: Code = Code::E0503;
const E_MISSING: Code = Code::E0504;
const E_SHAPE: Code = Code::E0505;

/// One input or target of a model as the data loader needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    /// The name of the input or target in the model.
    pub name: String,
    /// The shape of one sample, without the batch dimension (`[]` for `class[N]`).
    pub shape: Vec<usize>,
    /// `Some(K)` for class labels (`class[...] of K`), `None` for plain tensors.
    pub classes: Option<usize>,
}

/// What a model reads: its inputs and its targets, in declaration order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSpec {
    /// The inputs.
    pub inputs: Vec<PortSpec>,
    /// The targets.
    pub targets: Vec<PortSpec>,
}

/// A loaded data set: one array per input and per target (in the order of the
/// [`DataSpec`]), each of shape `[rows, shape...]`. Class labels are stored as `f32`
/// holding integers `0..K`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// One array per input.
    pub inputs: Vec<ArrayD<f32>>,
    /// One array per target; empty when loaded without targets.
    pub targets: Vec<ArrayD<f32>>,
    /// The number of rows (samples).
    pub rows: usize,
}

/// A data error: always names the file, and where known the line and the column
/// (1-based; the column is the field's position in its CSV row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataError {
    /// The error code, `E0500` to `E0506`.
    pub code: Code,
    /// The data file.
    pub path: PathBuf,
    /// The line (the CSV header is line 1), when known.
    pub line: Option<usize>,
    /// The column (field number in the row), when known.
    pub column: Option<usize>,
    /// What is wrong, with the expected and the found values.
    pub message: String,
}

impl DataError {
    fn new(code: Code, path: &Path, message: impl Into<String>) -> DataError {
        DataError {
            code,
            path: path.to_path_buf(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    fn at(mut self, line: Option<usize>, column: Option<usize>) -> DataError {
        self.line = line;
        self.column = column;
        self
    }
}

impl DataError {
    /// The error rendered like a compiler diagnostic:
    /// `error[E0502]: FILE:LINE:COLUMN: MESSAGE`, leaving out the unknown parts.
    pub fn render(&self, color: ColorChoice) -> String {
        let message = located(&self.path, self.line, self.column, &self.message);
        diag::render_unplaced(Severity::Error, Some(self.code), &message, None, color)
    }
}

impl fmt::Display for DataError {
    /// [`DataError::render`] without colors or the final newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.render(ColorChoice::Never);
        f.write_str(text.strip_suffix('\n').unwrap_or(&text))
    }
}

/// `FILE:LINE:COLUMN: MESSAGE`, leaving out the unknown parts (a column is shown only
/// after a line).
pub(crate) fn located(
    path: &Path,
    line: Option<usize>,
    column: Option<usize>,
    message: &str,
) -> String {
    let mut at = path.display().to_string();
    if let Some(line) = line {
        at.push_str(&format!(":{line}"));
        if let Some(column) = column {
            at.push_str(&format!(":{column}"));
        }
    }
    format!("{at}: {message}")
}

impl std::error::Error for DataError {}

/// Reads the data file `path` for a model that reads `spec`.
///
/// The format follows the extension (`.csv`, `.npy`, `.npz`, in any case). With
/// `with_targets == false` (prediction) only the inputs are read: target columns or
/// arrays may be absent and are ignored if present, and [`Dataset::targets`] is empty.
///
/// CSV: a header row is required. A target `t` takes the column `t` (when one sample
/// of it has one element) or the columns `t.0`, `t.1`, ... (row-major over its shape);
/// with exactly one target and no such column, the column `label`. The remaining
/// columns, in file order, are the inputs: all of them for a single input (reshaped to
/// its shape), or for several inputs, the columns prefixed `x.` for input `x`.
///
/// `.npy`: the single input; only without targets. `.npz`: arrays keyed by input and
/// target name. An array has the rows first, then the values of one sample in any shape
/// with the right number of elements, read row-major like the columns of a CSV file
/// (`[rows, 64]`, `[rows, 8, 8]` or `[rows, 1, 8, 8]` alike; `[rows]` for one value per
/// row). Arrays may hold floats, integers or booleans; they are converted to `f32`.
pub fn load(path: &Path, spec: &DataSpec, with_targets: bool) -> Result<Dataset, DataError> {
    for port in spec.inputs.iter().chain(&spec.targets) {
        if elements(&port.shape).is_none() {
            return Err(DataError::new(
                E_SHAPE,
                path,
                format!(
                    "one sample of `{}` ({}) has too many elements",
                    port.name,
                    show_shape(&port.shape)
                ),
            ));
        }
    }
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match extension.as_deref() {
        Some("csv") => from_csv::load_csv(path, spec, with_targets),
        Some("npy") => from_npy::load_npy(path, spec, with_targets),
        Some("npz") => from_npy::load_npz(path, spec, with_targets),
        Some("safetensors") => from_safetensors::load_safetensors(path, spec, with_targets),
        _ => Err(DataError::new(
            E_FORMAT,
            path,
            "unknown data format: expected a .csv, .npy, .npz or .safetensors file",
        )),
    }
}

/// The number of elements of one sample of this shape; `None` on overflow.
fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// The element count of a port; ports were checked at the start of [`load`].
fn port_elements(port: &PortSpec) -> usize {
    elements(&port.shape).unwrap_or(0)
}

fn show_shape(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

fn io_error(path: &Path, error: &std::io::Error) -> DataError {
    DataError::new(E_IO, path, format!("cannot read the file: {error}"))
}

fn no_rows(path: &Path, detail: &str) -> DataError {
    DataError::new(E_FORMAT, path, format!("no rows: {detail}"))
}

/// Checks a class label; returns the problem, if any, as a message naming `place`
/// (" in column `label`").
fn label_problem(value: f32, classes: usize, place: &str) -> Option<String> {
    let valid = value.fract() == 0.0 && value >= 0.0 && f64::from(value) < classes as f64;
    if valid {
        return None;
    }
    if classes == 0 {
        return Some(format!(
            "class label {value}{place} is invalid: the target has no classes"
        ));
    }
    let what = if value.fract() == 0.0 {
        "is out of range"
    } else {
        "is not an integer"
    };
    Some(format!(
        "class label {value}{place} {what}: expected an integer from 0 to {} ({classes} classes)",
        classes - 1
    ))
}

/// Builds the array `[rows, shape...]` from row-major values.
fn shaped(
    path: &Path,
    name: &str,
    rows: usize,
    shape: &[usize],
    values: Vec<f32>,
) -> Result<ArrayD<f32>, DataError> {
    let mut dims = Vec::with_capacity(shape.len() + 1);
    dims.push(rows);
    dims.extend_from_slice(shape);
    ArrayD::from_shape_vec(IxDyn(&dims), values).map_err(|e| {
        DataError::new(
            E_SHAPE,
            path,
            format!(
                "cannot shape the values of `{name}` as {}: {e}",
                show_shape(&dims)
            ),
        )
    })
}

/// Whether a found array shape fits `[rows, shape...]`: rows first, then as many values
/// per row as one sample has (read row-major, as the columns of a CSV file are).
fn shape_fits(found: &[usize], shape: &[usize]) -> bool {
    match found.split_first() {
        Some((_, rest)) => elements(rest).is_some() && elements(rest) == elements(shape),
        None => false,
    }
}

/// Checks a read array against its port and shapes it `[rows, shape...]`.
fn fit_port(
    path: &Path,
    what: &str,
    port: &PortSpec,
    found: &[usize],
    values: Vec<f32>,
) -> Result<ArrayD<f32>, DataError> {
    if !shape_fits(found, &port.shape) {
        let rows = found.first().map_or("rows".to_string(), |r| r.to_string());
        let dims: String = port.shape.iter().map(|d| format!(", {d}")).collect();
        return Err(DataError::new(
            E_SHAPE,
            path,
            format!(
                "{what} has shape {}, expected [{rows}{dims}] for `{}` (rows first, then {} values per row in any shape)",
                show_shape(found),
                port.name,
                port_elements(port)
            ),
        ));
    }
    let rows = found.first().copied().unwrap_or(0);
    if let Some(classes) = port.classes {
        let per_row = port_elements(port).max(1);
        for (k, &value) in values.iter().enumerate() {
            let place = format!(" in {what}, row {} (counting from 0),", k / per_row);
            if let Some(problem) = label_problem(value, classes, &place) {
                return Err(DataError::new(E_LABEL, path, problem));
            }
        }
    }
    shaped(path, &port.name, rows, &port.shape, values)
}

/// Builds a data set from named arrays (`.npz`, `.safetensors`): `fetch(name, what)`
/// reads one as (shape, values); every input and (when wanted) target must be among
/// `keys`, and all must have the same number of rows.
fn assemble(
    path: &Path,
    spec: &DataSpec,
    with_targets: bool,
    keys: &[String],
    mut fetch: impl FnMut(&str, &str) -> Result<(Vec<usize>, Vec<f32>), DataError>,
) -> Result<Dataset, DataError> {
    let ports: Vec<(bool, &PortSpec)> = spec
        .inputs
        .iter()
        .map(|p| (false, p))
        .chain(
            spec.targets
                .iter()
                .filter(|_| with_targets)
                .map(|p| (true, p)),
        )
        .collect();
    let mut dataset = Dataset {
        inputs: Vec::new(),
        targets: Vec::new(),
        rows: 0,
    };
    // The first array read and its number of rows.
    let mut first: Option<(&str, usize)> = None;
    for (is_target, port) in ports {
        if !keys.contains(&port.name) {
            let present = if keys.is_empty() {
                "the file holds no arrays".to_string()
            } else {
                let shown: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
                format!("the file holds {}", shown.join(", "))
            };
            let role = if is_target { "target" } else { "input" };
            return Err(DataError::new(
                E_MISSING,
                path,
                format!(
                    "no array `{}` for the {role} `{}`; {present}",
                    port.name, port.name
                ),
            ));
        }
        let what = format!("array `{}`", port.name);
        let (found, values) = fetch(&port.name, &what)?;
        let array = fit_port(path, &what, port, &found, values)?;
        let rows = array.len_of(Axis(0));
        match first {
            None => first = Some((&port.name, rows)),
            Some((name, expected)) if rows != expected => {
                return Err(DataError::new(
                    E_SHAPE,
                    path,
                    format!(
                        "array `{}` has {rows} rows, but `{name}` has {expected}: every array needs one row per sample",
                        port.name
                    ),
                ));
            }
            Some(_) => {}
        }
        if is_target {
            dataset.targets.push(array);
        } else {
            dataset.inputs.push(array);
        }
    }
    dataset.rows = first.map_or(0, |(_, rows)| rows);
    if dataset.rows == 0 {
        return Err(no_rows(path, "the arrays have 0 rows"));
    }
    Ok(dataset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_counts() {
        assert_eq!(elements(&[]), Some(1));
        assert_eq!(elements(&[1, 8, 8]), Some(64));
        assert_eq!(elements(&[usize::MAX, 2]), None);
    }

    #[test]
    fn labels_are_integers_in_range() {
        assert_eq!(label_problem(0.0, 10, ""), None);
        assert_eq!(label_problem(9.0, 10, ""), None);
        let ten = label_problem(10.0, 10, "").unwrap_or_default();
        assert!(ten.contains("10 is out of range") && ten.contains("0 to 9 (10 classes)"));
        let half = label_problem(2.5, 10, " in column `c`").unwrap_or_default();
        assert_eq!(
            half,
            "class label 2.5 in column `c` is not an integer: expected an integer from 0 to 9 (10 classes)"
        );
        assert!(label_problem(-1.0, 10, "").is_some());
        assert!(label_problem(f32::NAN, 10, "").is_some());
        assert!(label_problem(f32::INFINITY, 10, "").is_some());
        assert!(label_problem(0.0, 0, "").is_some());
    }

    #[test]
    fn shapes_fit_by_values_per_row() {
        assert!(shape_fits(&[5, 1, 8, 8], &[1, 8, 8]));
        assert!(shape_fits(&[5, 8, 8], &[1, 8, 8]));
        assert!(shape_fits(&[5, 64], &[1, 8, 8]));
        assert!(shape_fits(&[5, 8, 8], &[64]));
        assert!(shape_fits(&[5], &[1]));
        assert!(shape_fits(&[5], &[]));
        assert!(shape_fits(&[5, 1], &[]));
        assert!(shape_fits(&[0, 4], &[4]));
        assert!(!shape_fits(&[], &[]));
        assert!(!shape_fits(&[5, 3], &[4]));
        assert!(!shape_fits(&[5], &[4]));
        assert!(!shape_fits(&[5, usize::MAX, 2], &[4]));
    }

    #[test]
    fn display_leaves_out_unknown_parts() {
        let e = DataError::new(E_COLUMNS, Path::new("d/x.csv"), "bad");
        assert_eq!(e.to_string(), "error[E0502]: d/x.csv: bad");
        assert_eq!(
            e.clone().at(Some(3), None).to_string(),
            "error[E0502]: d/x.csv:3: bad"
        );
        assert_eq!(
            e.at(Some(3), Some(1)).to_string(),
            "error[E0502]: d/x.csv:3:1: bad"
        );
    }
}
