//! CSV data files: the header assigns columns to inputs and targets, every row is
//! parsed against it, and errors name the line and column.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use super::{
    io_error, label_problem, no_rows, port_elements, shaped, DataError, DataSpec, Dataset,
    E_COLUMNS, E_FORMAT, E_LABEL,
};

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

pub(super) fn load_csv(
    path: &Path,
    spec: &DataSpec,
    with_targets: bool,
) -> Result<Dataset, DataError> {
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
                let value = parse_number(field, path, &names[column]).map_err(at)?;
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

/// Parses one field of column `column` as an `f32`, allowing surrounding spaces; on
/// failure, an error describing the text found.
fn parse_number(field: &[u8], path: &Path, column: &str) -> Result<f32, DataError> {
    let text = String::from_utf8_lossy(field);
    let trimmed = text.trim();
    let found = if trimmed.is_empty() {
        "an empty field".to_string()
    } else if let Ok(value) = trimmed.parse::<f32>() {
        return Ok(value);
    } else {
        let shown: String = trimmed.chars().take(40).collect();
        if shown.len() < trimmed.len() {
            format!("`{shown}…`")
        } else {
            format!("`{shown}`")
        }
    };
    Err(DataError::new(
        E_FORMAT,
        path,
        format!("expected a number in column `{column}`, found {found}"),
    ))
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

/// What the header holds, for a message about a missing target column: a first line of
/// numbers is data, not a header; otherwise the columns it names (the first 8).
fn header_hint(names: &[String]) -> String {
    if names.iter().all(|n| n.trim().parse::<f64>().is_ok()) {
        return ": the first line holds numbers, but it must be a header naming the columns \
                (the target's column by the target's name, every other column an input)"
            .to_string();
    }
    let shown: Vec<String> = names.iter().take(8).map(|n| format!("`{n}`")).collect();
    let more = match names.len().saturating_sub(8) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    format!(
        "; the header names {}{more} (the target's column is found by the target's name, every other column is an input)",
        shown.join(", ")
    )
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
                    reason.push_str(&header_hint(names));
                    missing = Some(reason);
                }
            }
        }
    }

    let parts = parts.join(", ");
    let mismatch = |detail: Option<String>, column: Option<usize>| {
        // With as many columns as expected, the count is not what is wrong.
        let mut message = match (&detail, expected == width) {
            (Some(d), true) => d.clone(),
            _ => format!("expected {expected} columns ({parts}), found {width}"),
        };
        if let (Some(detail), false) = (detail, expected == width) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_with_spaces_and_specials() {
        let parse = |field: &[u8]| parse_number(field, Path::new("d.csv"), "x");
        let found = |field: &[u8]| {
            let e = parse(field).unwrap_err();
            assert_eq!((e.code, e.path.as_path()), (E_FORMAT, Path::new("d.csv")));
            e.message
                .strip_prefix("expected a number in column `x`, found ")
                .map(str::to_string)
                .unwrap_or_else(|| panic!("{}", e.message))
        };
        assert_eq!(parse(b" 1.5 "), Ok(1.5));
        assert_eq!(parse(b"-2e3"), Ok(-2000.0));
        assert!(parse(b"nan").is_ok_and(f32::is_nan));
        assert_eq!(parse(b"inf"), Ok(f32::INFINITY));
        assert_eq!(parse(b"-inf"), Ok(f32::NEG_INFINITY));
        assert_eq!(found(b"abc"), "`abc`");
        assert_eq!(found(b"  "), "an empty field");
        assert_eq!(found(b"\xFF"), "`\u{FFFD}`");
        let long = found(&[b'x'; 100]);
        assert!(long.ends_with("…`") && long.len() < 60, "{long}");
    }
}
