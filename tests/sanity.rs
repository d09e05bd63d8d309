//! The sanity checks run on a data set after loading: non-finite values (E0506), constant
//! input columns (W0201) and class imbalance (W0202), on small files written to a
//! temporary directory and on the bundled example data. Also the loader's class-label
//! errors (E0503), which the checks rely on.

use std::fs;
use std::path::{Path, PathBuf};

use kiln::diag::Code;
use kiln::runtime::data::{load, DataError, DataSpec, Dataset, PortSpec};
use kiln::runtime::sanity::{check, DataWarning};
use ndarray::{arr1, arr2, ArrayD, IxDyn};
use ndarray_npy::{write_npy, NpzWriter};
use tempfile::TempDir;

fn port(name: &str, shape: &[usize], classes: Option<usize>) -> PortSpec {
    PortSpec {
        name: name.to_string(),
        shape: shape.to_vec(),
        classes,
    }
}

fn spec(inputs: Vec<PortSpec>, targets: Vec<PortSpec>) -> DataSpec {
    DataSpec { inputs, targets }
}

/// One input `x` of `width` features and a class target `label` of `classes` classes.
fn classifier(width: usize, classes: usize) -> DataSpec {
    spec(
        vec![port("x", &[width], None)],
        vec![port("label", &[], Some(classes))],
    )
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/data")
        .join(name)
}

fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    fs::write(&path, text).unwrap();
    path
}

fn load_ok(path: &Path, spec: &DataSpec) -> Dataset {
    load(path, spec, true).unwrap_or_else(|e| panic!("{e}"))
}

/// Loads and checks a file that must pass, and returns its warnings.
fn warnings(path: &Path, spec: &DataSpec) -> Vec<DataWarning> {
    let data = load_ok(path, spec);
    check(&data, spec, path).unwrap_or_else(|e| panic!("unexpected error: {e}"))
}

/// Loads a file and checks it; the check must fail.
fn check_err(path: &Path, spec: &DataSpec) -> DataError {
    let data = load_ok(path, spec);
    match check(&data, spec, path) {
        Ok(w) => panic!("expected an error, got the warnings {w:?}"),
        Err(e) => e,
    }
}

/// A CSV file with the header `header` and `rows` rows made by `row(r)`.
fn csv(header: &str, rows: usize, row: impl Fn(usize) -> String) -> String {
    let mut text = format!("{header}\n");
    for r in 0..rows {
        text.push_str(&row(r));
        text.push('\n');
    }
    text
}

fn codes(warnings: &[DataWarning]) -> Vec<Code> {
    warnings.iter().map(|w| w.code).collect()
}

// ---------------------------------------------------------------------------------------
// E0506

#[test]
fn nan_in_an_input_names_the_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    // 16 rows; row 15 (line 17) holds NaN in `p2`, the third column.
    let text = csv("p0,p1,p2,p3,label", 16, |r| {
        let p2 = if r == 15 {
            "NaN".to_string()
        } else {
            r.to_string()
        };
        format!("{r},1,{p2},{},{}", r * 2, r % 2)
    });
    let path = write(&dir, "data.csv", &text);
    let model = spec(
        vec![port("pixels", &[4], None)],
        vec![port("label", &[], Some(2))],
    );
    let e = check_err(&path, &model);
    assert_eq!((e.code, e.line, e.column), (Code::E0506, Some(17), Some(3)));
    assert_eq!(e.path, path);
    assert_eq!(
        e.to_string(),
        format!(
            "error[E0506]: {}:17:3: `pixels` holds NaN in column `p2` (data row 16, feature 3)",
            path.display()
        )
    );
}

#[test]
fn the_column_is_the_field_in_the_file_even_with_the_label_first() {
    let dir = tempfile::tempdir().unwrap();
    // The target is the first column: the inputs are fields 2 to 4.
    let path = write(&dir, "x.csv", "label,a,b,c\n0,1,2,3\n1,4,inf,6\n0,7,8,9\n");
    let e = check_err(&path, &classifier(3, 2));
    assert_eq!((e.code, e.line, e.column), (Code::E0506, Some(3), Some(3)));
    assert!(
        e.message
            .contains("`x` holds inf in column `b` (data row 2, feature 2)"),
        "{e}"
    );
}

#[test]
fn inf_in_a_target() {
    let dir = tempfile::tempdir().unwrap();
    // A regression target in the middle of the file.
    let path = write(&dir, "r.csv", "a,y,b\n1,0.5,2\n3,0.25,4\n5,-inf,6\n7,1,8\n");
    let model = spec(vec![port("x", &[2], None)], vec![port("y", &[1], None)]);
    let e = check_err(&path, &model);
    assert_eq!((e.code, e.line, e.column), (Code::E0506, Some(4), Some(2)));
    assert_eq!(
        e.to_string(),
        format!(
            "error[E0506]: {}:4:2: `y` holds -inf in column `y` (data row 3)",
            path.display()
        )
    );
}

#[test]
fn the_first_bad_value_in_file_order_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    // Row 0 is fine; row 1 holds NaN in the input `b` (field 3) and inf in the target
    // `y` (field 1); row 2 holds NaN in `a`. The first in the file is `y` on line 3.
    let path = write(&dir, "r.csv", "y,a,b\n1,2,3\ninf,5,nan\n7,nan,9\n");
    let model = spec(vec![port("x", &[2], None)], vec![port("y", &[1], None)]);
    let e = check_err(&path, &model);
    assert_eq!((e.code, e.line, e.column), (Code::E0506, Some(3), Some(1)));
    assert!(e.message.starts_with("`y` holds inf"), "{e}");
}

#[test]
fn the_line_follows_the_file_when_a_field_spans_lines() {
    let dir = tempfile::tempdir().unwrap();
    // A quoted header name with a line break: row 1 starts on line 4, not 3.
    let path = write(&dir, "q.csv", "\"a\nA\",label\n1,0\nNaN,1\n");
    let e = check_err(&path, &classifier(1, 2));
    assert_eq!((e.code, e.line, e.column), (Code::E0506, Some(4), Some(1)));
}

#[test]
fn several_inputs_are_found_by_their_prefixed_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "m.csv", "b.0,a.0,y,a.1,b.1\n1,2,0,3,4\n5,6,1,nan,8\n");
    let model = spec(
        vec![port("a", &[2], None), port("b", &[2], None)],
        vec![port("y", &[1], None)],
    );
    let e = check_err(&path, &model);
    assert_eq!((e.code, e.line, e.column), (Code::E0506, Some(3), Some(4)));
    assert!(
        e.message
            .contains("`a` holds NaN in column `a.1` (data row 2, feature 2)"),
        "{e}"
    );
}

#[test]
fn nan_in_an_npz_array_names_the_array_and_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.npz");
    let mut npz = NpzWriter::new(fs::File::create(&path).unwrap());
    npz.add_array("x", &arr2(&[[1f32, 2.0], [3.0, 4.0], [5.0, f32::NAN]]))
        .unwrap();
    npz.add_array("label", &arr1(&[0i64, 1, 0])).unwrap();
    npz.finish().unwrap();
    let e = check_err(&path, &classifier(2, 2));
    assert_eq!((e.code, e.line, e.column), (Code::E0506, None, None));
    assert_eq!(
        e.to_string(),
        format!(
            "error[E0506]: {}: array `x` holds NaN (row 2, feature 1, counting from 0)",
            path.display()
        )
    );
}

#[test]
fn inf_in_an_npy_file_for_prediction() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npy");
    write_npy(&path, &arr2(&[[1f64, 2.0], [f64::INFINITY, 4.0]])).unwrap();
    let model = classifier(2, 2);
    let data = load(&path, &model, false).unwrap();
    let e = check(&data, &model, &path).unwrap_err();
    assert_eq!((e.code, e.line, e.column), (Code::E0506, None, None));
    assert!(
        e.message
            .contains("the array (`x`) holds inf (row 1, feature 0, counting from 0)"),
        "{e}"
    );
}

#[test]
fn without_targets_only_the_inputs_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "p.csv", "y,a,b\nnan,1,2\n1,3,nan\n");
    let model = spec(vec![port("x", &[2], None)], vec![port("y", &[1], None)]);
    let data = load(&path, &model, false).unwrap();
    let e = check(&data, &model, &path).unwrap_err();
    assert_eq!((e.code, e.line, e.column), (Code::E0506, Some(3), Some(3)));
}

// ---------------------------------------------------------------------------------------
// E0503 (from the loader)

#[test]
fn bad_class_labels_are_refused_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    // The label is the second column: every error points at field 2.
    for (label, what) in [
        ("3", "3 in column `label` is out of range"),
        ("7", "7 in column `label` is out of range"),
        ("-1", "-1 in column `label` is out of range"),
        ("1.5", "1.5 in column `label` is not an integer"),
        ("nan", "NaN in column `label` is not an integer"),
    ] {
        let text = format!("a,label,b\n1,0,2\n3,2,4\n5,{label},6\n");
        let path = write(&dir, "l.csv", &text);
        let e = load(&path, &classifier(2, 3), true).unwrap_err();
        assert_eq!(
            (e.code, e.line, e.column),
            (Code::E0503, Some(4), Some(2)),
            "{label}: {e}"
        );
        assert_eq!(e.path, path);
        assert!(e.message.contains(what), "{label}: {e}");
        assert!(e.message.contains("0 to 2 (3 classes)"), "{label}: {e}");
        assert!(
            e.to_string()
                .starts_with(&format!("error[E0503]: {}:4:2: ", path.display())),
            "{e}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// W0201

#[test]
fn a_constant_column_is_named_with_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "c.csv",
        "label,a,b,c\n0,1,7,3\n1,2,7,1\n0,3,7,4\n1,4,7,1\n",
    );
    let w = warnings(&path, &classifier(3, 2));
    assert_eq!(codes(&w), [Code::W0201], "{w:?}");
    assert_eq!((w[0].line, w[0].column), (None, Some(3)));
    assert_eq!(w[0].message, "column 3 (`b`) of `x` is 7 in all 4 rows");
    let help = w[0].help.as_deref().unwrap_or_default();
    assert!(help.contains("no information"), "{help}");
    assert!(help.contains("standardize"), "{help}");
    assert_eq!(
        w[0].to_string(),
        format!(
            "warning[W0201]: {}: column 3 (`b`) of `x` is 7 in all 4 rows\n  = help: {help}",
            path.display()
        )
    );
}

#[test]
fn more_than_five_constant_columns_are_summarized() {
    let dir = tempfile::tempdir().unwrap();
    // 12 columns, of which 8 are constant (every one but f2, f5, f8, f11).
    let header: Vec<String> = (0..12).map(|j| format!("f{j}")).collect();
    let text = csv(&format!("{},label", header.join(",")), 6, |r| {
        let values: Vec<String> = (0..12)
            .map(|j| {
                if j % 3 == 2 {
                    (r * j).to_string()
                } else {
                    "0.5".to_string()
                }
            })
            .collect();
        format!("{},{}", values.join(","), r % 2)
    });
    let path = write(&dir, "many.csv", &text);
    let w = warnings(&path, &classifier(12, 2));
    // Constant: f0, f1, f3, f4, f6, f7, f9, f10 (fields 1, 2, 4, 5, 7, 8, 10, 11).
    assert_eq!(codes(&w), [Code::W0201; 6], "{w:#?}");
    let columns: Vec<Option<usize>> = w.iter().map(|w| w.column).collect();
    assert_eq!(columns, [Some(1), Some(2), Some(4), Some(5), Some(7), None]);
    assert_eq!(w[0].message, "column 1 (`f0`) of `x` is 0.5 in all 6 rows");
    assert_eq!(
        w[5].message,
        "3 more input columns are constant: columns 8 (`f7`), 10 (`f9`), 11 (`f10`)"
    );
    assert!(w[5].help.is_some());
}

#[test]
fn constant_features_of_an_npz_array() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.npz");
    let mut x = ArrayD::<f32>::zeros(IxDyn(&[3, 2, 4]));
    for r in 0..3 {
        x[[r, 1, 2]] = r as f32;
    }
    let mut npz = NpzWriter::new(fs::File::create(&path).unwrap());
    npz.add_array("x", &x).unwrap();
    npz.add_array("label", &arr1(&[0i64, 1, 0])).unwrap();
    npz.finish().unwrap();
    let w = warnings(&path, &classifier(8, 2));
    // Features 0..8 except 6 are constant: 5 one by one, then 2 more.
    assert_eq!(codes(&w), [Code::W0201; 6], "{w:#?}");
    assert_eq!(w[0].message, "feature 0 of array `x` is 0 in all 3 rows");
    assert_eq!(w[0].column, None);
    assert_eq!(
        w[5].message,
        "2 more input columns are constant: features 5, 7 of array `x`"
    );
}

#[test]
fn one_row_has_no_constant_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "one.csv", "a,b,label\n1,2,0\n");
    let w = warnings(&path, &classifier(2, 1));
    assert!(w.is_empty(), "{w:?}");
}

// ---------------------------------------------------------------------------------------
// W0202

#[test]
fn an_imbalance_of_ten_to_one_is_reported_with_the_focal_hint() {
    let dir = tempfile::tempdir().unwrap();
    // Class 0: 20 rows, class 1: 2 rows.
    let text = csv("a,label", 22, |r| format!("{r},{}", u8::from(r >= 20)));
    let path = write(&dir, "imb.csv", &text);
    let w = warnings(&path, &classifier(1, 2));
    assert_eq!(codes(&w), [Code::W0202], "{w:#?}");
    assert_eq!(w[0].column, Some(2));
    assert_eq!(
        w[0].message,
        "the classes of `label` are imbalanced: class 0 has 20 rows, class 1 only 2 (10:1); \
         rows per class: 0: 20, 1: 2"
    );
    assert_eq!(
        w[0].help.as_deref(),
        Some(
            "weight the classes or use `focal(gamma: 2)` as the loss, which down-weights \
             easy examples"
        )
    );
    println!("{}", w[0]);

    // 9:1 is not reported.
    let text = csv("a,label", 20, |r| format!("{r},{}", u8::from(r >= 18)));
    let path = write(&dir, "nine.csv", &text);
    assert!(warnings(&path, &classifier(1, 2)).is_empty());
}

#[test]
fn a_class_without_rows_is_reported_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    // 10 classes declared, 0 to 6 present (each twice), 7 to 9 missing.
    let text = csv("a,label", 14, |r| format!("{r},{}", r % 7));
    let path = write(&dir, "miss.csv", &text);
    let w = warnings(&path, &classifier(1, 10));
    assert_eq!(codes(&w), [Code::W0202; 3], "{w:#?}");
    assert_eq!(w[0].message, "class 7 of `label` has no rows");
    assert_eq!(w[2].message, "class 9 of `label` has no rows");
    assert!(w[0]
        .help
        .as_deref()
        .unwrap_or_default()
        .contains("0 to K−1"));
}

#[test]
fn many_missing_classes_are_summarized() {
    let dir = tempfile::tempdir().unwrap();
    let text = csv("a,label", 4, |r| format!("{r},{}", r % 2));
    let path = write(&dir, "vocab.csv", &text);
    let w = warnings(&path, &classifier(1, 1000));
    assert_eq!(codes(&w), [Code::W0202; 6], "{w:#?}");
    assert_eq!(w[0].message, "class 2 of `label` has no rows");
    assert_eq!(
        w[5].message,
        "993 more classes of `label` have no rows: 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 \
         and 983 more"
    );
}

#[test]
fn a_balanced_set_gives_no_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let text = csv("a,b,label", 30, |r| {
        format!("{},{},{}", r, (r * 7) % 5, r % 3)
    });
    let path = write(&dir, "ok.csv", &text);
    assert!(warnings(&path, &classifier(2, 3)).is_empty());
}

// ---------------------------------------------------------------------------------------
// The bundled data sets

fn show(name: &str, w: &[DataWarning]) {
    println!("{name}: {} warning(s)", w.len());
    for w in w {
        println!("{w}");
    }
}

#[test]
fn the_bundled_iris_and_breast_cancer_data_pass_without_warnings() {
    let iris = classifier(4, 3);
    for name in ["iris_train.csv", "iris_test.csv"] {
        let w = warnings(&example(name), &iris);
        show(name, &w);
        assert!(w.is_empty(), "{name}: {w:#?}");
    }
    // As examples/breast_cancer.kiln reads it: a float target for bce.
    let breast_cancer = spec(
        vec![port("features", &[30], None)],
        vec![port("label", &[1], None)],
    );
    // And as a two-class target (279 benign to 177 malignant: not imbalanced).
    let two_classes = classifier(30, 2);
    for name in ["breast_cancer_train.csv", "breast_cancer_test.csv"] {
        for model in [&breast_cancer, &two_classes] {
            let w = warnings(&example(name), model);
            show(name, &w);
            assert!(w.is_empty(), "{name}: {w:#?}");
        }
    }
}

#[test]
fn the_bundled_digits_have_constant_pixels() {
    let digits = spec(
        vec![port("pixels", &[1, 8, 8], None)],
        vec![port("label", &[], Some(10))],
    );
    let path = example("digits_train.csv");
    let w = warnings(&path, &digits);
    show("digits_train.csv", &w);
    let messages: Vec<&str> = w.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "column 1 (`p0`) of `pixels` is 0 in all 1438 rows",
            "column 33 (`p32`) of `pixels` is 0 in all 1438 rows",
            "column 40 (`p39`) of `pixels` is 0 in all 1438 rows",
        ]
    );

    // The test part has six: five, then one more.
    let path = example("digits_test.csv");
    let w = warnings(&path, &digits);
    show("digits_test.csv", &w);
    assert_eq!(codes(&w), [Code::W0201; 6]);
    assert_eq!(
        w[5].message,
        "1 more input column is constant: column 57 (`p56`)"
    );
}

// ---------------------------------------------------------------------------------------
// Robustness

#[test]
fn a_data_set_that_does_not_match_its_spec_does_not_panic() {
    let path = Path::new("nowhere/x.csv");
    let empty = spec(vec![], vec![]);
    let odd = Dataset {
        inputs: vec![
            ArrayD::from_elem(IxDyn(&[]), f32::NAN),
            ArrayD::zeros(IxDyn(&[0, 3])),
            ArrayD::zeros(IxDyn(&[3, 0])),
            ArrayD::zeros(IxDyn(&[3, 2])),
        ],
        targets: vec![ArrayD::from_elem(IxDyn(&[3]), 1e30)],
        rows: 7,
    };
    // The file does not exist: no column names, but the warnings still come.
    let w = check(&odd, &empty, path).unwrap();
    assert_eq!(codes(&w), [Code::W0201, Code::W0201], "{w:#?}");
    assert_eq!(w[0].message, "feature 0 of `input 3` is 0 in all 3 rows");

    let mut bad = odd.clone();
    bad.inputs[3][[2, 1]] = f32::NEG_INFINITY;
    let e = check(&bad, &empty, path).unwrap_err();
    // The header cannot be read again: the line is row + 2.
    assert_eq!((e.code, e.line, e.column), (Code::E0506, Some(4), None));

    // Labels outside the classes (never from the loader) are not counted.
    let labels = spec(vec![], vec![port("t", &[], Some(2))]);
    let data = Dataset {
        inputs: vec![],
        targets: vec![arr1(&[0f32, 5.0, -1.0, 0.5, 1.0]).into_dyn()],
        rows: 5,
    };
    assert!(check(&data, &labels, Path::new("t.npz"))
        .unwrap()
        .is_empty());
}
