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
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Axis, IxDyn, OwnedRepr};
use ndarray_npy::npy::header::Header;
use ndarray_npy::{NpzReader, ReadNpyError, ReadNpyExt, ReadNpzError, ReadableElement};
use rand::seq::SliceRandom;

use crate::exec::rng::{stream, Purpose};

const E_IO: &str = "E0500";
const E_FORMAT: &str = "E0501";
const E_COLUMNS: &str = "E0502";
const E_LABEL: &str = "E0503";
const E_MISSING: &str = "E0504";
const E_SHAPE: &str = "E0505";

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
    pub code: &'static str,
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
    fn new(code: &'static str, path: &Path, message: impl Into<String>) -> DataError {
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

impl fmt::Display for DataError {
    /// `error[E0502]: FILE:LINE:COLUMN: MESSAGE`, leaving out the unknown parts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error[{}]: {}", self.code, self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
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
        Some("csv") => load_csv(path, spec, with_targets),
        Some("npy") => load_npy(path, spec, with_targets),
        Some("npz") => load_npz(path, spec, with_targets),
        Some("safetensors") => load_safetensors(path, spec, with_targets),
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

// ---------------------------------------------------------------------------------------
// CSV

/// Where the values of one input or target come from in a CSV file.
struct Group {
    /// Which array: an input (`false`) or a target (`true`), and its index.
    target: bool,
    index: usize,
    /// The header columns (0-based), in the order of the sample's elements.
    columns: Vec<usize>,
    classes: Option<usize>,
}

/// How the header's columns are assigned.
struct Layout {
    groups: Vec<Group>,
    /// What the columns are for: "64 for `pixels`, 1 for `label`".
    parts: String,
}

/// A CSV reader that keeps the header as a record and allows rows of any width (the
/// loader reports wrong widths itself, with the line).
fn csv_reader(file: File) -> csv::Reader<BufReader<File>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(BufReader::new(file))
}

fn load_csv(path: &Path, spec: &DataSpec, with_targets: bool) -> Result<Dataset, DataError> {
    let file = File::open(path).map_err(|e| io_error(path, &e))?;
    let mut reader = csv_reader(file);
    let mut record = csv::ByteRecord::new();

    if !read_record(path, &mut reader, &mut record)? {
        return Err(no_rows(path, "the file is empty"));
    }
    let header_line = record_line(&record);
    let names = header_names(&record);
    let layout = assign_columns(path, header_line, &names, spec, with_targets)?;

    let mut inputs: Vec<Vec<f32>> = vec![Vec::new(); spec.inputs.len()];
    let mut targets: Vec<Vec<f32>> = vec![Vec::new(); spec.targets.len()];
    let mut rows = 0usize;
    while read_record(path, &mut reader, &mut record)? {
        let line = record_line(&record);
        if record.len() != names.len() {
            return Err(DataError::new(
                E_COLUMNS,
                path,
                format!(
                    "expected {} columns ({}), found {}",
                    names.len(),
                    layout.parts,
                    record.len()
                ),
            )
            .at(line, None));
        }
        for group in &layout.groups {
            let out = if group.target {
                &mut targets[group.index]
            } else {
                &mut inputs[group.index]
            };
            for &column in &group.columns {
                let field = record.get(column).unwrap_or_default();
                let at = |e: DataError| e.at(line, Some(column + 1));
                let value = parse_number(field).map_err(|text| {
                    at(DataError::new(
                        E_FORMAT,
                        path,
                        format!(
                            "expected a number in column `{}`, found {text}",
                            names[column]
                        ),
                    ))
                })?;
                if let Some(classes) = group.classes {
                    let place = format!(" in column `{}`", names[column]);
                    if let Some(problem) = label_problem(value, classes, &place) {
                        return Err(at(DataError::new(E_LABEL, path, problem)));
                    }
                }
                out.push(value);
            }
        }
        rows += 1;
    }
    if rows == 0 {
        return Err(no_rows(path, "the file has a header but no data"));
    }

    let mut dataset = Dataset {
        inputs: Vec::with_capacity(inputs.len()),
        targets: Vec::with_capacity(targets.len()),
        rows,
    };
    for (port, values) in spec.inputs.iter().zip(inputs) {
        let array = shaped(path, &port.name, rows, &port.shape, values)?;
        dataset.inputs.push(array);
    }
    if with_targets {
        for (port, values) in spec.targets.iter().zip(targets) {
            let array = shaped(path, &port.name, rows, &port.shape, values)?;
            dataset.targets.push(array);
        }
    }
    Ok(dataset)
}

/// The names of a header record: trimmed, without a UTF-8 byte-order mark.
fn header_names(record: &csv::ByteRecord) -> Vec<String> {
    record
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let field = if i == 0 {
                field.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(field)
            } else {
                field
            };
            String::from_utf8_lossy(field).trim().to_string()
        })
        .collect()
}

/// Where [`load`] found the values of a CSV file, for messages about them (the sanity
/// checks): the header's names, and for each input and each target (in the order of the
/// [`DataSpec`]; no targets without them) the 1-based field numbers of one sample's
/// elements, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CsvFields {
    pub(crate) names: Vec<String>,
    pub(crate) inputs: Vec<Vec<usize>>,
    pub(crate) targets: Vec<Vec<usize>>,
}

/// Reads the header of the CSV file `path` again and assigns its columns as [`load`]
/// does.
pub(crate) fn csv_fields(
    path: &Path,
    spec: &DataSpec,
    with_targets: bool,
) -> Result<CsvFields, DataError> {
    let file = File::open(path).map_err(|e| io_error(path, &e))?;
    let mut reader = csv_reader(file);
    let mut record = csv::ByteRecord::new();
    if !read_record(path, &mut reader, &mut record)? {
        return Err(no_rows(path, "the file is empty"));
    }
    let names = header_names(&record);
    let layout = assign_columns(path, record_line(&record), &names, spec, with_targets)?;
    let mut fields = CsvFields {
        names,
        inputs: vec![Vec::new(); spec.inputs.len()],
        targets: vec![Vec::new(); if with_targets { spec.targets.len() } else { 0 }],
    };
    for group in layout.groups {
        let out = if group.target {
            fields.targets.get_mut(group.index)
        } else {
            fields.inputs.get_mut(group.index)
        };
        if let Some(out) = out {
            *out = group.columns.iter().map(|c| c + 1).collect();
        }
    }
    Ok(fields)
}

/// The line on which data row `row` (counting from 0, after the header) of the CSV file
/// `path` starts, read again; `None` if the file cannot be read that far.
pub(crate) fn csv_row_line(path: &Path, row: usize) -> Option<usize> {
    let file = File::open(path).ok()?;
    let mut reader = csv_reader(file);
    let mut record = csv::ByteRecord::new();
    for _ in 0..=row.checked_add(1)? {
        if !reader.read_byte_record(&mut record).ok()? {
            return None;
        }
    }
    record_line(&record)
}

/// Reads the next record; `false` at the end of the file.
fn read_record<R: std::io::Read>(
    path: &Path,
    reader: &mut csv::Reader<R>,
    record: &mut csv::ByteRecord,
) -> Result<bool, DataError> {
    reader.read_byte_record(record).map_err(|e| {
        let line = e.position().map(|p| p.line() as usize);
        match e.kind() {
            csv::ErrorKind::Io(io) => io_error(path, io).at(line, None),
            _ => {
                DataError::new(E_FORMAT, path, format!("not a valid CSV file: {e}")).at(line, None)
            }
        }
    })
}

fn record_line(record: &csv::ByteRecord) -> Option<usize> {
    record.position().map(|p| p.line() as usize)
}

/// Parses one field as an `f32`, allowing surrounding spaces; on failure, returns a
/// description of the text found.
fn parse_number(field: &[u8]) -> Result<f32, String> {
    let text = String::from_utf8_lossy(field);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("an empty field".to_string());
    }
    trimmed.parse::<f32>().map_err(|_| {
        let shown: String = trimmed.chars().take(40).collect();
        if shown.len() < trimmed.len() {
            format!("`{shown}…`")
        } else {
            format!("`{shown}`")
        }
    })
}

/// Describes a run of columns: `` `y` `` or `` `y.0` to `y.2` ``.
fn column_names(name: &str, count: usize, single: bool) -> String {
    if single {
        format!("`{name}`")
    } else if count == 1 {
        format!("`{name}.0`")
    } else {
        format!("`{name}.0` to `{name}.{}`", count.saturating_sub(1))
    }
}

/// The result of looking for a target's columns in the header.
enum TargetColumns {
    Found(Vec<usize>),
    Missing,
}

/// Looks for the columns named `name` (when `count == 1`) or `name.0`, `name.1`, ...
fn find_target_columns(
    path: &Path,
    line: Option<usize>,
    names: &[String],
    name: &str,
    count: usize,
) -> Result<TargetColumns, DataError> {
    let error = |message: String, column: Option<usize>| {
        Err(DataError::new(E_COLUMNS, path, message).at(line, column))
    };
    if count == 1 {
        let exact: Vec<usize> = (0..names.len()).filter(|&j| names[j] == name).collect();
        match exact.as_slice() {
            [] => {}
            [j] => return Ok(TargetColumns::Found(vec![*j])),
            [first, second, ..] => {
                return error(
                    format!(
                        "column `{name}` appears twice (columns {} and {})",
                        first + 1,
                        second + 1
                    ),
                    Some(second + 1),
                )
            }
        }
    }
    let prefix = format!("{name}.");
    let prefixed: Vec<usize> = (0..names.len())
        .filter(|&j| names[j].starts_with(&prefix))
        .collect();
    if prefixed.is_empty() {
        return Ok(TargetColumns::Missing);
    }
    if prefixed.len() != count {
        return error(
            format!(
                "expected {count} columns {} for `{name}`, found {} columns prefixed `{prefix}`",
                column_names(name, count, false),
                prefixed.len()
            ),
            None,
        );
    }
    let mut slots: Vec<Option<usize>> = vec![None; count];
    for &j in &prefixed {
        let index = names[j][prefix.len()..].parse::<usize>().ok();
        match index.and_then(|i| slots.get_mut(i)) {
            Some(slot @ None) => *slot = Some(j),
            _ => {
                return error(
                    format!(
                        "column `{}` does not fit `{name}`: expected the columns {}, each once",
                        names[j],
                        column_names(name, count, false)
                    ),
                    Some(j + 1),
                )
            }
        }
    }
    Ok(TargetColumns::Found(slots.into_iter().flatten().collect()))
}

/// Assigns the header's columns to the model's inputs and targets.
fn assign_columns(
    path: &Path,
    line: Option<usize>,
    names: &[String],
    spec: &DataSpec,
    with_targets: bool,
) -> Result<Layout, DataError> {
    let width = names.len();
    let mut used = vec![false; width];
    let mut groups = Vec::new();
    // What the expected columns are for, and how many.
    let mut parts: Vec<String> = spec
        .inputs
        .iter()
        .map(|p| format!("{} for `{}`", port_elements(p), p.name))
        .collect();
    let mut expected: usize = spec.inputs.iter().map(port_elements).sum();
    // A reason to add to the count message, if a target is missing.
    let mut missing: Option<String> = None;

    let single_target = spec.targets.len() == 1;
    for (index, target) in spec.targets.iter().enumerate() {
        let count = port_elements(target);
        if !with_targets {
            // Ignore every column that belongs to the target, whether or not it fits.
            let owns = |n: &str, name: &str| n == name || n.starts_with(&format!("{name}."));
            let mut ignored: Vec<usize> = (0..width)
                .filter(|&j| owns(&names[j], &target.name))
                .collect();
            let mut column = target.name.as_str();
            if ignored.is_empty() && single_target {
                ignored = (0..width).filter(|&j| owns(&names[j], "label")).collect();
                column = "label";
            }
            if !ignored.is_empty() {
                for &j in &ignored {
                    used[j] = true;
                }
                expected += ignored.len();
                parts.push(if column == target.name {
                    format!("{} for `{}`, not read", ignored.len(), target.name)
                } else {
                    format!(
                        "{} for `{}` in column `{column}`, not read",
                        ignored.len(),
                        target.name
                    )
                });
            }
            continue;
        }

        expected += count;
        let mut found = find_target_columns(path, line, names, &target.name, count)?;
        let mut column = target.name.as_str();
        if matches!(found, TargetColumns::Missing) && single_target && target.name != "label" {
            found = find_target_columns(path, line, names, "label", count)?;
            column = "label";
        }
        match found {
            TargetColumns::Found(columns) => {
                for &j in &columns {
                    used[j] = true;
                }
                parts.push(if column == target.name {
                    format!("{count} for `{}`", target.name)
                } else {
                    format!("{count} for `{}` in column `{column}`", target.name)
                });
                groups.push(Group {
                    target: true,
                    index,
                    columns,
                    classes: target.classes,
                });
            }
            TargetColumns::Missing => {
                parts.push(format!("{count} for `{}`", target.name));
                if missing.is_none() {
                    let mut reason = format!(
                        "no column is named {}",
                        column_names(&target.name, count, count == 1)
                    );
                    if single_target && target.name != "label" {
                        reason
                            .push_str(&format!(" or {}", column_names("label", count, count == 1)));
                    }
                    missing = Some(reason);
                }
            }
        }
    }

    let parts = parts.join(", ");
    let mismatch = |detail: Option<String>, column: Option<usize>| {
        let mut message = format!("expected {expected} columns ({parts}), found {width}");
        if let Some(detail) = detail {
            message.push_str("; ");
            message.push_str(&detail);
        }
        DataError::new(E_COLUMNS, path, message).at(line, column)
    };
    if let Some(reason) = missing {
        return Err(mismatch(Some(reason), None));
    }

    let remaining: Vec<usize> = (0..width).filter(|&j| !used[j]).collect();
    if let [input] = spec.inputs.as_slice() {
        if remaining.len() != port_elements(input) {
            return Err(mismatch(None, None));
        }
        groups.push(Group {
            target: false,
            index: 0,
            columns: remaining,
            classes: input.classes,
        });
    } else {
        for (index, input) in spec.inputs.iter().enumerate() {
            let prefix = format!("{}.", input.name);
            let columns: Vec<usize> = remaining
                .iter()
                .copied()
                .filter(|&j| names[j].starts_with(&prefix))
                .collect();
            if columns.len() != port_elements(input) {
                return Err(mismatch(
                    Some(format!(
                        "found {} columns prefixed `{prefix}` for `{}`",
                        columns.len(),
                        input.name
                    )),
                    None,
                ));
            }
            for &j in &columns {
                used[j] = true;
            }
            groups.push(Group {
                target: false,
                index,
                columns,
                classes: input.classes,
            });
        }
        if let Some(j) = (0..width).find(|&j| !used[j]) {
            let reason = if spec.inputs.is_empty() {
                "the model has no input".to_string()
            } else {
                "with several inputs, each input `x` reads the columns named `x.…`".to_string()
            };
            return Err(mismatch(
                Some(format!(
                    "column `{}` is for no input or target ({reason})",
                    names[j]
                )),
                Some(j + 1),
            ));
        }
    }
    Ok(Layout { groups, parts })
}

// ---------------------------------------------------------------------------------------
// NumPy

/// The element types read from `.npy` arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

/// The element type of a NumPy type descriptor such as `<f4` or `|u1`.
fn elem_of(descriptor: &str) -> Option<Elem> {
    let code = descriptor
        .strip_prefix(['<', '>', '|'])
        .unwrap_or(descriptor);
    Some(match code {
        "f4" => Elem::F32,
        "f8" => Elem::F64,
        "i1" | "b" => Elem::I8,
        "i2" => Elem::I16,
        "i4" => Elem::I32,
        "i8" => Elem::I64,
        "u1" | "B" => Elem::U8,
        "u2" => Elem::U16,
        "u4" => Elem::U32,
        "u8" => Elem::U64,
        "b1" => Elem::Bool,
        _ => return None,
    })
}

/// Conversion of an array element to `f32`.
trait ToF32: Copy {
    fn to_f32(self) -> f32;
}

macro_rules! to_f32_as {
    ($($t:ty),*) => {$(
        impl ToF32 for $t {
            fn to_f32(self) -> f32 {
                self as f32
            }
        }
    )*};
}
to_f32_as!(f32, f64, i8, i16, i32, i64, u8, u16, u32, u64);

impl ToF32 for bool {
    fn to_f32(self) -> f32 {
        if self {
            1.0
        } else {
            0.0
        }
    }
}

/// Somewhere an array can be read from with a chosen element type.
trait ArraySource {
    /// Reads the array as elements of type `T`; on failure, a description.
    fn read<T: ReadableElement>(&mut self) -> Result<ArrayD<T>, String>;
}

/// The bytes of a whole `.npy` file.
struct NpyBytes<'a>(&'a [u8]);

impl ArraySource for NpyBytes<'_> {
    fn read<T: ReadableElement>(&mut self) -> Result<ArrayD<T>, String> {
        ArrayD::<T>::read_npy(self.0).map_err(|e| e.to_string())
    }
}

/// One array of an `.npz` file.
struct NpzEntry<'a, R: std::io::Read + std::io::Seek> {
    npz: &'a mut NpzReader<R>,
    name: &'a str,
}

impl<R: std::io::Read + std::io::Seek> ArraySource for NpzEntry<'_, R> {
    fn read<T: ReadableElement>(&mut self) -> Result<ArrayD<T>, String> {
        self.npz
            .by_name::<OwnedRepr<T>, IxDyn>(self.name)
            .map_err(|e| e.to_string())
    }
}

/// Reads an array of element type `elem` and converts it to `f32`: its shape and its
/// values in row-major order (whatever the file's memory order).
fn read_as_f32<S: ArraySource>(
    source: &mut S,
    elem: Elem,
) -> Result<(Vec<usize>, Vec<f32>), String> {
    fn convert<T: ToF32>(array: ArrayD<T>) -> (Vec<usize>, Vec<f32>) {
        let values = array.iter().map(|v| v.to_f32()).collect();
        (array.shape().to_vec(), values)
    }
    Ok(match elem {
        Elem::F32 => convert(source.read::<f32>()?),
        Elem::F64 => convert(source.read::<f64>()?),
        Elem::I8 => convert(source.read::<i8>()?),
        Elem::I16 => convert(source.read::<i16>()?),
        Elem::I32 => convert(source.read::<i32>()?),
        Elem::I64 => convert(source.read::<i64>()?),
        Elem::U8 => convert(source.read::<u8>()?),
        Elem::U16 => convert(source.read::<u16>()?),
        Elem::U32 => convert(source.read::<u32>()?),
        Elem::U64 => convert(source.read::<u64>()?),
        Elem::Bool => convert(source.read::<bool>()?),
    })
}

fn unsupported_dtype(path: &Path, what: &str, descriptor: &str) -> DataError {
    DataError::new(
        E_FORMAT,
        path,
        format!("{what} has dtype {descriptor}: expected numbers (float, integer or bool)"),
    )
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

fn load_npy(path: &Path, spec: &DataSpec, with_targets: bool) -> Result<Dataset, DataError> {
    let [input] = spec.inputs.as_slice() else {
        return Err(DataError::new(
            E_MISSING,
            path,
            format!(
                "a .npy file holds one array, but the model has {} inputs: use a .npz file with one array per input, or a .csv file",
                spec.inputs.len()
            ),
        ));
    };
    if with_targets && !spec.targets.is_empty() {
        let names: Vec<String> = spec
            .targets
            .iter()
            .map(|t| format!("`{}`", t.name))
            .collect();
        return Err(DataError::new(
            E_MISSING,
            path,
            format!(
                "a .npy file holds only the input `{}`; the targets ({}) need a .npz or .csv file",
                input.name,
                names.join(", ")
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| io_error(path, &e))?;
    let mut rest: &[u8] = &bytes;
    let header = Header::from_reader(&mut rest)
        .map_err(|e| DataError::new(E_FORMAT, path, format!("not a valid .npy file: {e}")))?;
    // Every element takes at least one byte: refuse a header that announces more data
    // than the file holds before anything is allocated for it.
    let announced = elements(&header.shape);
    if announced.is_none_or(|n| n > rest.len()) {
        return Err(DataError::new(
            E_FORMAT,
            path,
            format!(
                "not a valid .npy file: its header announces shape {}, but the file holds only {} bytes of data",
                show_shape(&header.shape),
                rest.len()
            ),
        ));
    }
    let descriptor = header.type_descriptor.to_string();
    let elem = header
        .type_descriptor
        .as_string()
        .and_then(|s| elem_of(s))
        .ok_or_else(|| unsupported_dtype(path, "the array", &descriptor))?;
    let (found, values) = read_as_f32(&mut NpyBytes(&bytes), elem)
        .map_err(|e| DataError::new(E_FORMAT, path, format!("not a valid .npy file: {e}")))?;
    let array = fit_port(path, "the array", input, &found, values)?;
    let rows = array.len_of(Axis(0));
    if rows == 0 {
        return Err(no_rows(path, "the array has 0 rows"));
    }
    Ok(Dataset {
        inputs: vec![array],
        targets: Vec::new(),
        rows,
    })
}

fn load_npz(path: &Path, spec: &DataSpec, with_targets: bool) -> Result<Dataset, DataError> {
    let file = File::open(path).map_err(|e| io_error(path, &e))?;
    let invalid =
        |e: ReadNpzError| DataError::new(E_FORMAT, path, format!("not a valid .npz file: {e}"));
    let mut npz = NpzReader::new(BufReader::new(file)).map_err(invalid)?;
    let keys = npz.names().map_err(invalid)?;
    assemble(path, spec, with_targets, &keys, |name, what| {
        Ok(match probe_npz(path, &mut npz, name, what)? {
            Probe::Bytes(array) => {
                let values = array.iter().map(|&v| v.to_f32()).collect();
                (array.shape().to_vec(), values)
            }
            Probe::Other(elem) => {
                let mut entry = NpzEntry {
                    npz: &mut npz,
                    name,
                };
                read_as_f32(&mut entry, elem).map_err(|e| {
                    DataError::new(E_FORMAT, path, format!("cannot read {what}: {e}"))
                })?
            }
        })
    })
}

/// A `.safetensors` data file: tensors named like the inputs and targets.
fn load_safetensors(
    path: &Path,
    spec: &DataSpec,
    with_targets: bool,
) -> Result<Dataset, DataError> {
    let file = super::checkpoint::Checkpoint::load(path).map_err(|e| {
        DataError::new(
            E_FORMAT,
            path,
            format!("not a valid .safetensors file: {e}"),
        )
    })?;
    let keys: Vec<String> = file.tensors.keys().cloned().collect();
    assemble(path, spec, with_targets, &keys, |name, _| {
        let t = &file.tensors[name];
        Ok((t.shape().to_vec(), t.iter().copied().collect()))
    })
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

/// What reading an `.npz` array as bytes found.
enum Probe {
    /// The array holds bytes (`u8`): here it is.
    Bytes(ArrayD<u8>),
    /// The array holds elements of another type, still to be read.
    Other(Elem),
}

/// Reads an `.npz` array as bytes: that fails on the type descriptor, before any data is
/// read, unless the array does hold bytes; either way, the element type is then known.
fn probe_npz<R: std::io::Read + std::io::Seek>(
    path: &Path,
    npz: &mut NpzReader<R>,
    name: &str,
    what: &str,
) -> Result<Probe, DataError> {
    match npz.by_name::<OwnedRepr<u8>, IxDyn>(name) {
        Ok(array) => Ok(Probe::Bytes(array)),
        Err(ReadNpzError::Npy(ReadNpyError::WrongDescriptor(descriptor))) => descriptor
            .as_string()
            .and_then(|s| elem_of(s))
            .map(Probe::Other)
            .ok_or_else(|| unsupported_dtype(path, what, &descriptor.to_string())),
        Err(e) => Err(DataError::new(
            E_FORMAT,
            path,
            format!("cannot read {what}: {e}"),
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Splits, order, standardization

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
    fn numbers_parse_with_spaces_and_specials() {
        assert_eq!(parse_number(b" 1.5 "), Ok(1.5));
        assert_eq!(parse_number(b"-2e3"), Ok(-2000.0));
        assert!(parse_number(b"nan").is_ok_and(f32::is_nan));
        assert_eq!(parse_number(b"inf"), Ok(f32::INFINITY));
        assert_eq!(parse_number(b"-inf"), Ok(f32::NEG_INFINITY));
        assert_eq!(parse_number(b"abc"), Err("`abc`".to_string()));
        assert_eq!(parse_number(b"  "), Err("an empty field".to_string()));
        assert_eq!(parse_number(b"\xFF"), Err("`\u{FFFD}`".to_string()));
        let long = parse_number(&[b'x'; 100]).unwrap_err();
        assert!(long.ends_with("…`") && long.len() < 60, "{long}");
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
    fn dtypes() {
        assert_eq!(elem_of("<f4"), Some(Elem::F32));
        assert_eq!(elem_of(">f8"), Some(Elem::F64));
        assert_eq!(elem_of("|u1"), Some(Elem::U8));
        assert_eq!(elem_of("|b1"), Some(Elem::Bool));
        assert_eq!(elem_of("<i8"), Some(Elem::I64));
        assert_eq!(elem_of("<U5"), None);
        assert_eq!(elem_of("<f2"), None);
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
