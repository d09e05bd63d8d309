//! Sanity checks of a data set, run right after [`load`](crate::runtime::data::load) and
//! before training: values that would make training fail are errors, properties that
//! make it likely to go wrong are warnings. Every report names the file and, where it
//! applies, the line and the column (for CSV; both 1-based, the column is the field's
//! position in its row) or the array and the row (for `.npy`, `.npz`, `.safetensors`).
//!
//! | code | lint | about |
//! |---|---|---|
//! | E0506 | | a NaN or infinite value in an input or a target (the first one, in file order) |
//! | W0201 | `constant_column` | an input feature with the same value in every row |
//! | W0202 | `class_imbalance` | a class of a `class[...] of K` target with no rows, or classes 10× apart |
//!
//! Class labels outside `0..K` are already refused by the loader (E0503).
//!
//! No data set, consistent with its spec or not, makes this module panic.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ndarray::ArrayD;

use crate::diag::{self, Code, ColorChoice, Severity};

use crate::runtime::data::{
    csv_fields, csv_row_line, located, CsvFields, DataError, DataSpec, Dataset,
};

const E_NON_FINITE: Code = Code::E0506;
const W_CONSTANT: Code = Code::W0201;
const W_IMBALANCE: Code = Code::W0202;

/// How many constant columns (or missing classes) are reported one by one; the rest are
/// summed up in one more warning.
const SHOWN: usize = 5;
/// How many column numbers or classes a summary lists before `…`.
const LISTED: usize = 10;
/// How many classes the per-class counts of W0202 list before `…`.
const COUNTED: usize = 20;
/// W0202 warns when the most frequent class has at least this many times the rows of the
/// least frequent one.
const IMBALANCE_RATIO: u128 = 10;

const CONSTANT_HELP: &str = "a constant column carries no information: drop it (if the \
     input's shape allows), or keep it knowing that `standardize` turns it into 0 in every row";
const IMBALANCE_HELP: &str =
    "weight the classes or use `focal(gamma: 2)` as the loss, which down-weights easy examples";
const MISSING_HELP: &str = "a class without rows cannot be learned: add rows of it, or check \
     the `of K` of the target (the labels are the integers 0 to K−1)";

/// A data warning: always names the file, and where known the line and the column
/// (1-based; the column is the field's position in its CSV row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataWarning {
    /// The warning code, `W0201` or `W0202`.
    pub code: Code,
    /// The data file.
    pub path: PathBuf,
    /// The line (the CSV header is line 1), when the warning is about one line.
    pub line: Option<usize>,
    /// The column (field number in the row), when the warning is about one CSV column.
    pub column: Option<usize>,
    /// What was found, with the values.
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
}

impl DataWarning {
    /// The warning rendered like a compiler diagnostic:
    /// `warning[W0201]: FILE:LINE:COLUMN: MESSAGE`, leaving out the unknown parts (as
    /// [`DataError`] does), then `  = help: HELP` on a second line when there is help.
    pub fn render(&self, color: ColorChoice) -> String {
        let message = located(&self.path, self.line, self.column, &self.message);
        let help = self.help.as_deref();
        diag::render_unplaced(Severity::Warning, Some(self.code), &message, help, color)
    }
}

impl fmt::Display for DataWarning {
    /// [`DataWarning::render`] without colors or the final newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.render(ColorChoice::Never);
        f.write_str(text.strip_suffix('\n').unwrap_or(&text))
    }
}

/// Checks a data set loaded from `path` for a model that reads `spec`, right after
/// [`load`](crate::runtime::data::load) (row numbers are the file's: check before any
/// split or selection).
///
/// Returns the first NaN or infinite input or target value as an `E0506` error: the
/// lowest row, and in it the lowest column. Otherwise returns the warnings, in this
/// order: constant input columns (`W0201`; at most five one by one, then one warning
/// for the others), then for each class target its classes without rows and its
/// imbalance (`W0202`). A data set with fewer than two rows has no constant columns.
///
/// For a CSV file, the header is read again to name the columns exactly as `load`
/// assigned them (targets may come anywhere in the file), and, for an error, the file
/// is read up to the row to give its line; if that fails the line is taken as `row + 2`.
pub fn check(data: &Dataset, spec: &DataSpec, path: &Path) -> Result<Vec<DataWarning>, DataError> {
    let mut source = Source::new(path, spec, !data.targets.is_empty());
    let ports = ports(data, spec);
    if let Some(found) = first_non_finite(&ports, &mut source) {
        return Err(non_finite_error(&ports, &mut source, &found));
    }
    let mut warnings = constant_columns(&ports, &mut source);
    for port in &ports {
        if let (true, Some(classes)) = (port.target, port.classes) {
            warnings.extend(class_balance(port, classes, &mut source));
        }
    }
    Ok(warnings)
}

// ---------------------------------------------------------------------------------------
// Where values come from

/// The format of the data file, as [`load`](crate::runtime::data::load) chooses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Csv,
    Npy,
    /// `.npz`, `.safetensors`: arrays named like the inputs and targets.
    Arrays,
}

/// The data file, with the CSV header read on first need.
struct Source<'a> {
    path: &'a Path,
    spec: &'a DataSpec,
    format: Format,
    with_targets: bool,
    /// `None` until read; then `Some(None)` if the header could not be read again.
    fields: Option<Option<CsvFields>>,
}

impl<'a> Source<'a> {
    fn new(path: &'a Path, spec: &'a DataSpec, with_targets: bool) -> Source<'a> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        let format = match extension.as_deref() {
            Some("csv") => Format::Csv,
            Some("npy") => Format::Npy,
            _ => Format::Arrays,
        };
        Source {
            path,
            spec,
            format,
            with_targets,
            fields: None,
        }
    }

    fn fields(&mut self) -> Option<&CsvFields> {
        if self.format != Format::Csv {
            return None;
        }
        let (path, spec, with_targets) = (self.path, self.spec, self.with_targets);
        self.fields
            .get_or_insert_with(|| csv_fields(path, spec, with_targets).ok())
            .as_ref()
    }

    /// The 1-based CSV field of element `feature` of a port's sample.
    fn field(&mut self, port: &Port, feature: usize) -> Option<usize> {
        let fields = self.fields()?;
        let groups = if port.target {
            &fields.targets
        } else {
            &fields.inputs
        };
        groups.get(port.index)?.get(feature).copied()
    }

    /// The header's name of a 1-based CSV field.
    fn column_name(&mut self, field: usize) -> Option<String> {
        let fields = self.fields()?;
        fields.names.get(field.checked_sub(1)?).cloned()
    }

    /// The line of data row `row` (counting from 0) in a CSV file.
    fn line(&self, row: usize) -> Option<usize> {
        match self.format {
            Format::Csv => csv_row_line(self.path, row).or_else(|| row.checked_add(2)),
            Format::Npy | Format::Arrays => None,
        }
    }

    /// How a port's values are named in messages: `` `x` `` in a CSV file,
    /// `` array `x` `` in an `.npz` file.
    fn what(&self, port: &Port) -> String {
        match self.format {
            Format::Csv => format!("`{}`", port.name),
            Format::Npy => format!("the array (`{}`)", port.name),
            Format::Arrays => format!("array `{}`", port.name),
        }
    }

    fn is_csv(&self) -> bool {
        self.format == Format::Csv
    }
}

/// One array of the data set.
struct Port<'a> {
    /// A target (`true`) or an input, and its index among them.
    target: bool,
    index: usize,
    name: String,
    classes: Option<usize>,
    array: &'a ArrayD<f32>,
    /// The number of rows (the first dimension).
    rows: usize,
    /// The number of elements of one row's sample.
    width: usize,
}

/// The inputs, then the targets, named after the spec (or by position, if the spec has
/// fewer of them than the data set).
fn ports<'a>(data: &'a Dataset, spec: &DataSpec) -> Vec<Port<'a>> {
    let inputs = data.inputs.iter().enumerate().map(|(i, a)| (false, i, a));
    let targets = data.targets.iter().enumerate().map(|(i, a)| (true, i, a));
    inputs
        .chain(targets)
        .map(|(target, index, array)| {
            let specs = if target { &spec.targets } else { &spec.inputs };
            let port = specs.get(index);
            let role = if target { "target" } else { "input" };
            let shape = array.shape();
            Port {
                target,
                index,
                name: port.map_or_else(|| format!("{role} {index}"), |p| p.name.clone()),
                classes: port.and_then(|p| p.classes),
                array,
                rows: shape.first().copied().unwrap_or(0),
                width: shape.get(1..).map_or(0, |s| s.iter().product()),
            }
        })
        .collect()
}

/// The values of row `row` of a port.
fn row_values<'p>(port: &'p Port, row: usize) -> impl Iterator<Item = f32> + 'p {
    port.array
        .iter()
        .skip(row.saturating_mul(port.width))
        .take(port.width)
        .copied()
}

// ---------------------------------------------------------------------------------------
// E0506: non-finite values

/// A non-finite value: the port (index into the ports), its row and element.
struct Found {
    port: usize,
    row: usize,
    feature: usize,
    value: f32,
}

/// The first non-finite value: in the lowest row, the lowest CSV field (or, without
/// fields, the first port and element).
fn first_non_finite(ports: &[Port], source: &mut Source) -> Option<Found> {
    let firsts: Vec<Option<usize>> = ports
        .iter()
        .map(|p| {
            if p.width == 0 {
                return None;
            }
            let k = p.array.iter().position(|v| !v.is_finite())?;
            Some(k / p.width)
        })
        .collect();
    let row = firsts.iter().flatten().copied().min()?;
    let mut best: Option<((usize, usize, usize), Found)> = None;
    for (p, port) in ports.iter().enumerate() {
        if firsts[p] != Some(row) {
            continue;
        }
        for (feature, value) in row_values(port, row).enumerate() {
            if value.is_finite() {
                continue;
            }
            let key = (
                source.field(port, feature).unwrap_or(usize::MAX),
                p,
                feature,
            );
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                let found = Found {
                    port: p,
                    row,
                    feature,
                    value,
                };
                best = Some((key, found));
            }
        }
    }
    best.map(|(_, found)| found)
}

fn show_non_finite(value: f32) -> &'static str {
    if value.is_nan() {
        "NaN"
    } else if value > 0.0 {
        "inf"
    } else {
        "-inf"
    }
}

fn non_finite_error(ports: &[Port], source: &mut Source, found: &Found) -> DataError {
    let Some(port) = ports.get(found.port) else {
        return DataError {
            code: E_NON_FINITE,
            path: source.path.to_path_buf(),
            line: None,
            column: None,
            message: "the data holds a non-finite value".to_string(),
        };
    };
    let value = show_non_finite(found.value);
    let what = source.what(port);
    let column = source.field(port, found.feature);
    // Counted from 1 beside a file's line and column, from 0 (and said so) in an array.
    let feature = |first: usize| {
        if port.width > 1 {
            format!(", feature {}", found.feature + first)
        } else {
            String::new()
        }
    };
    let (line, message) = if source.is_csv() {
        let place = column
            .and_then(|c| source.column_name(c))
            .map_or(String::new(), |name| format!(" in column `{name}`"));
        (
            source.line(found.row),
            format!(
                "{what} holds {value}{place} (data row {}{})",
                found.row + 1,
                feature(1)
            ),
        )
    } else {
        (
            None,
            format!(
                "{what} holds {value} (row {}{}, counting from 0)",
                found.row,
                feature(0)
            ),
        )
    };
    DataError {
        code: E_NON_FINITE,
        path: source.path.to_path_buf(),
        line,
        column: if line.is_some() { column } else { None },
        message,
    }
}

// ---------------------------------------------------------------------------------------
// W0201: constant columns

/// A constant input element.
struct Constant {
    port: usize,
    feature: usize,
    value: f32,
    field: Option<usize>,
}

fn constant_columns(ports: &[Port], source: &mut Source) -> Vec<DataWarning> {
    let mut found: Vec<Constant> = Vec::new();
    for (p, port) in ports.iter().enumerate() {
        if port.target || port.rows < 2 || port.width == 0 {
            continue;
        }
        let first: Vec<f32> = row_values(port, 0).collect();
        let mut constant = vec![true; first.len()];
        for (k, &x) in port.array.iter().enumerate().skip(port.width) {
            let j = k % port.width;
            if let (Some(&v), Some(c)) = (first.get(j), constant.get_mut(j)) {
                if x != v {
                    *c = false;
                }
            }
        }
        for (feature, (&value, &c)) in first.iter().zip(&constant).enumerate() {
            if c {
                let field = source.field(port, feature);
                found.push(Constant {
                    port: p,
                    feature,
                    value,
                    field,
                });
            }
        }
    }
    // File order: by column in a CSV file, else by input and element.
    found.sort_by_key(|c| (c.field.unwrap_or(usize::MAX), c.port, c.feature));

    let mut warnings = Vec::new();
    for c in found.iter().take(SHOWN) {
        let Some(port) = ports.get(c.port) else {
            continue;
        };
        let place = match c.field {
            Some(field) => {
                let name = source
                    .column_name(field)
                    .map_or(String::new(), |n| format!(" (`{n}`)"));
                format!("column {field}{name} of {}", source.what(port))
            }
            None => format!("feature {} of {}", c.feature, source.what(port)),
        };
        warnings.push(DataWarning {
            code: W_CONSTANT,
            path: source.path.to_path_buf(),
            line: None,
            column: c.field,
            message: format!("{place} is {} in all {} rows", c.value, port.rows),
            help: Some(CONSTANT_HELP.to_string()),
        });
    }
    let rest = found.get(SHOWN..).unwrap_or_default();
    if !rest.is_empty() {
        warnings.push(constant_summary(ports, source, rest));
    }
    warnings
}

/// One warning for the constant columns beyond the first [`SHOWN`].
fn constant_summary(ports: &[Port], source: &mut Source, rest: &[Constant]) -> DataWarning {
    let n = rest.len();
    let (noun, plural) = if n == 1 {
        ("column is", "")
    } else {
        ("columns are", "s")
    };
    let listed = if rest.iter().all(|c| c.field.is_some()) {
        let items: Vec<String> = rest
            .iter()
            .filter_map(|c| c.field)
            .take(LISTED)
            .map(|field| match source.column_name(field) {
                Some(name) => format!("{field} (`{name}`)"),
                None => field.to_string(),
            })
            .collect();
        format!("column{plural} {}", list(items, n))
    } else {
        // Grouped by input: "features 3, 4 of array `x`".
        let mut groups: Vec<(usize, Vec<String>)> = Vec::new();
        for c in rest.iter().take(LISTED) {
            match groups.last_mut() {
                Some((port, features)) if *port == c.port => features.push(c.feature.to_string()),
                _ => groups.push((c.port, vec![c.feature.to_string()])),
            }
        }
        let parts: Vec<String> = groups
            .into_iter()
            .map(|(p, features)| {
                let what = ports.get(p).map_or(String::new(), |port| source.what(port));
                let s = if features.len() == 1 { "" } else { "s" };
                format!("feature{s} {} of {what}", features.join(", "))
            })
            .collect();
        let more = if n > LISTED {
            format!(" and {} more", n - LISTED)
        } else {
            String::new()
        };
        format!("{}{more}", parts.join("; "))
    };
    DataWarning {
        code: W_CONSTANT,
        path: source.path.to_path_buf(),
        line: None,
        column: None,
        message: format!("{n} more input {noun} constant: {listed}"),
        help: Some(CONSTANT_HELP.to_string()),
    }
}

/// `a, b, c` for the first [`LISTED`] of `total` items (`items` holds at most that many),
/// then `and N more`.
fn list(items: Vec<String>, total: usize) -> String {
    let shown = items.len();
    let mut text = items.join(", ");
    if total > shown {
        text.push_str(&format!(" and {} more", total - shown));
    }
    text
}

// ---------------------------------------------------------------------------------------
// W0202: class balance

/// Classes without rows, then the imbalance of one class target.
fn class_balance(port: &Port, classes: usize, source: &mut Source) -> Vec<DataWarning> {
    // Counts of the valid labels only: the loader refuses others (E0503).
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for &v in port.array.iter() {
        if v.fract() == 0.0 && v >= 0.0 && f64::from(v) < classes as f64 {
            *counts.entry(v as usize).or_insert(0) += 1;
        }
    }
    if counts.is_empty() {
        return Vec::new();
    }
    // "rows" when each row has one label, else "labels".
    let unit = if port.width == 1 { "rows" } else { "labels" };
    let what = source.what(port);
    let column = if port.width == 1 {
        source.field(port, 0)
    } else {
        None
    };
    let warning = |message: String, help: &str| DataWarning {
        code: W_IMBALANCE,
        path: source.path.to_path_buf(),
        line: None,
        column,
        message,
        help: Some(help.to_string()),
    };

    let mut warnings = Vec::new();
    let missing_total = classes.saturating_sub(counts.len());
    // Enough of the missing classes for the messages: present ones are at most the rows.
    let missing: Vec<usize> = (0..classes)
        .filter(|c| !counts.contains_key(c))
        .take(SHOWN + LISTED)
        .collect();
    for c in missing.iter().take(SHOWN) {
        warnings.push(warning(
            format!("class {c} of {what} has no {unit}"),
            MISSING_HELP,
        ));
    }
    if missing_total > SHOWN {
        let rest: Vec<String> = missing.iter().skip(SHOWN).map(|c| c.to_string()).collect();
        let n = missing_total - SHOWN;
        let (noun, verb) = if n == 1 {
            ("class", "has")
        } else {
            ("classes", "have")
        };
        warnings.push(warning(
            format!(
                "{n} more {noun} of {what} {verb} no {unit}: {}",
                list(rest, n)
            ),
            MISSING_HELP,
        ));
    }

    // The most frequent class (the lowest on a tie) and the least frequent present one.
    let most = counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)));
    let least = counts.iter().min_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)));
    if let (Some((&big, &many)), Some((&small, &few))) = (most, least) {
        if (many as u128) >= IMBALANCE_RATIO * few as u128 {
            let ratio = format!("{:.1}", many as f64 / few as f64);
            let ratio = ratio.strip_suffix(".0").unwrap_or(&ratio);
            let per_class: Vec<String> = (0..classes)
                .take(COUNTED)
                .map(|c| format!("{c}: {}", counts.get(&c).copied().unwrap_or(0)))
                .collect();
            let more = if classes > COUNTED { ", …" } else { "" };
            warnings.push(warning(
                format!(
                    "the classes of {what} are imbalanced: class {big} has {many} {unit}, \
                     class {small} only {few} ({ratio}:1); {unit} per class: {}{more}",
                    per_class.join(", ")
                ),
                IMBALANCE_HELP,
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_adds_the_help_line() {
        let w = DataWarning {
            code: W_CONSTANT,
            path: PathBuf::from("d/x.csv"),
            line: None,
            column: Some(3),
            message: "column 3 is 0 in all 4 rows".to_string(),
            help: Some("drop it".to_string()),
        };
        assert_eq!(
            w.to_string(),
            "warning[W0201]: d/x.csv: column 3 is 0 in all 4 rows\n  = help: drop it"
        );
        let w = DataWarning {
            line: Some(2),
            help: None,
            ..w
        };
        assert_eq!(
            w.to_string(),
            "warning[W0201]: d/x.csv:2:3: column 3 is 0 in all 4 rows"
        );
    }

    #[test]
    fn lists_are_cut() {
        assert_eq!(list(vec!["1".into(), "2".into()], 2), "1, 2");
        assert_eq!(list(vec!["1".into()], 3), "1 and 2 more");
    }

    #[test]
    fn non_finite_names() {
        assert_eq!(show_non_finite(f32::NAN), "NaN");
        assert_eq!(show_non_finite(f32::INFINITY), "inf");
        assert_eq!(show_non_finite(f32::NEG_INFINITY), "-inf");
    }
}
