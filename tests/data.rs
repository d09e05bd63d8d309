//! The data loader: the example data sets, every error it reports, the NumPy formats,
//! splits, epoch order and standardization.

use std::fs;
use std::path::{Path, PathBuf};

use kiln::diag::Code;
use kiln::runtime::data::{
    epoch_order, load, DataError, DataSpec, Dataset, PortSpec, Standardizer,
};
use ndarray::{arr1, arr2, Array, ArrayD, Axis, IxDyn};
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

/// A model reading the digits as `input_shape`, with 10 classes.
fn digits(input_shape: &[usize]) -> DataSpec {
    spec(
        vec![port("pixels", input_shape, None)],
        vec![port("label", &[], Some(10))],
    )
}

fn iris() -> DataSpec {
    spec(
        vec![port("features", &[4], None)],
        vec![port("label", &[], Some(3))],
    )
}

fn breast_cancer() -> DataSpec {
    spec(
        vec![port("features", &[30], None)],
        vec![port("label", &[1], None)],
    )
}

fn xor() -> DataSpec {
    spec(vec![port("x", &[2], None)], vec![port("y", &[1], None)])
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/data")
        .join(name)
}

fn load_ok(path: &Path, spec: &DataSpec) -> Dataset {
    match load(path, spec, true) {
        Ok(data) => data,
        Err(e) => panic!("{e}"),
    }
}

fn load_err(path: &Path, spec: &DataSpec, with_targets: bool) -> DataError {
    match load(path, spec, with_targets) {
        Ok(data) => panic!("expected an error, loaded {} rows", data.rows),
        Err(e) => e,
    }
}

/// The fields of line `line` (1-based) of a CSV file, as numbers.
fn csv_line(path: &Path, line: usize) -> Vec<f32> {
    let text = fs::read_to_string(path).unwrap();
    text.lines()
        .nth(line - 1)
        .unwrap()
        .split(',')
        .map(|f| f.trim().parse().unwrap())
        .collect()
}

/// Writes `contents` to `name` in a new temporary directory.
fn temp_file(name: &str, contents: &[u8]) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    fs::write(&path, contents).unwrap();
    (dir, path)
}

fn write_npz(path: &Path, arrays: &[(&str, ArrayD<f32>)]) {
    let mut npz = NpzWriter::new(fs::File::create(path).unwrap());
    for (name, array) in arrays {
        npz.add_array(*name, array).unwrap();
    }
    npz.finish().unwrap();
}

// ---------------------------------------------------------------------------------------
// The example data sets

#[test]
fn digits_load_with_their_sizes_and_values() {
    for (file, rows) in [("digits_train.csv", 1438), ("digits_test.csv", 359)] {
        let path = example(file);
        let data = load_ok(&path, &digits(&[64]));
        assert_eq!(data.rows, rows, "{file}");
        assert_eq!(data.inputs.len(), 1);
        assert_eq!(data.targets.len(), 1);
        assert_eq!(data.inputs[0].shape(), &[rows, 64]);
        assert_eq!(data.targets[0].shape(), &[rows]);
        // Every row of the file, as read independently.
        for row in [0, 1, rows - 1] {
            let fields = csv_line(&path, row + 2);
            let pixels: Vec<f32> = (0..64).map(|j| data.inputs[0][[row, j]]).collect();
            assert_eq!(pixels, fields[..64], "{file} row {row}");
            assert_eq!(data.targets[0][[row]], fields[64], "{file} row {row}");
        }
        assert!(data.targets[0]
            .iter()
            .all(|&l| (0.0..10.0).contains(&l) && l.fract() == 0.0));
    }
    let train = load_ok(&example("digits_train.csv"), &digits(&[64]));
    let first: Vec<f32> = (0..6).map(|j| train.inputs[0][[0, j]]).collect();
    assert_eq!(first, [0.0, 0.0, 12.0, 9.0, 12.0, 1.0]);
}

#[test]
fn digits_reshape_row_major_for_the_cnn_and_the_gru() {
    let path = example("digits_train.csv");
    let flat = load_ok(&path, &digits(&[64]));
    let image = load_ok(&path, &digits(&[1, 8, 8]));
    let sequence = load_ok(&path, &digits(&[8, 8]));
    assert_eq!(image.inputs[0].shape(), &[1438, 1, 8, 8]);
    assert_eq!(sequence.inputs[0].shape(), &[1438, 8, 8]);
    for row in [0, 700, 1437] {
        for j in 0..64 {
            let v = flat.inputs[0][[row, j]];
            assert_eq!(image.inputs[0][[row, 0, j / 8, j % 8]], v);
            assert_eq!(sequence.inputs[0][[row, j / 8, j % 8]], v);
        }
    }
    assert_eq!(image.inputs[0][[0, 0, 0, 2]], 12.0);
    assert_eq!(image.targets, flat.targets);
}

#[test]
fn iris_loads() {
    for (file, rows) in [("iris_train.csv", 120), ("iris_test.csv", 30)] {
        let path = example(file);
        let data = load_ok(&path, &iris());
        assert_eq!(data.rows, rows);
        assert_eq!(data.inputs[0].shape(), &[rows, 4]);
        assert_eq!(data.targets[0].shape(), &[rows]);
        let fields = csv_line(&path, 2);
        assert_eq!(
            data.inputs[0]
                .index_axis(Axis(0), 0)
                .iter()
                .copied()
                .collect::<Vec<f32>>(),
            fields[..4]
        );
        assert_eq!(data.targets[0][[0]], fields[4]);
    }
    let train = load_ok(&example("iris_train.csv"), &iris());
    assert_eq!(
        train.inputs[0]
            .index_axis(Axis(0), 0)
            .iter()
            .copied()
            .collect::<Vec<f32>>(),
        [5.3, 3.7, 1.5, 0.2]
    );
    assert_eq!(train.targets[0][[0]], 0.0);
    assert_eq!(train.targets[0][[1]], 1.0);
}

#[test]
fn breast_cancer_loads_with_a_float_target() {
    for (file, rows) in [
        ("breast_cancer_train.csv", 456),
        ("breast_cancer_test.csv", 113),
    ] {
        let path = example(file);
        let data = load_ok(&path, &breast_cancer());
        assert_eq!(data.rows, rows);
        assert_eq!(data.inputs[0].shape(), &[rows, 30]);
        assert_eq!(data.targets[0].shape(), &[rows, 1]);
        let fields = csv_line(&path, 2);
        assert_eq!(
            data.inputs[0]
                .index_axis(Axis(0), 0)
                .iter()
                .copied()
                .collect::<Vec<f32>>(),
            fields[..30]
        );
        assert_eq!(data.targets[0][[0, 0]], fields[30]);
        assert!(data.targets[0].iter().all(|&l| l == 0.0 || l == 1.0));
    }
}

#[test]
fn xor_reads_its_target_by_name() {
    let data = load_ok(&example("xor.csv"), &xor());
    assert_eq!(data.rows, 4);
    assert_eq!(
        data.inputs[0],
        arr2(&[[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]).into_dyn()
    );
    assert_eq!(
        data.targets[0],
        arr2(&[[0.0], [1.0], [1.0], [0.0]]).into_dyn()
    );
}

#[test]
fn prediction_reads_only_the_inputs() {
    let path = example("digits_test.csv");
    let with = load_ok(&path, &digits(&[64]));
    let without = load(&path, &digits(&[64]), false).unwrap();
    assert!(without.targets.is_empty());
    assert_eq!(without.inputs, with.inputs);
    assert_eq!(without.rows, 359);

    // A file without the target column at all.
    let (_dir, path) = temp_file("x.csv", b"x0,x1\n0,1\n1,1\n");
    let data = load(&path, &xor(), false).unwrap();
    assert_eq!(data.inputs[0], arr2(&[[0.0, 1.0], [1.0, 1.0]]).into_dyn());
    assert!(data.targets.is_empty());
    // Training on it is an error.
    let e = load_err(&path, &xor(), true);
    assert_eq!((e.code, e.line, e.column), (Code::E0502, Some(1), None));
    assert!(e
        .message
        .contains("expected 3 columns (2 for `x`, 1 for `y`), found 2"));
    assert!(
        e.message.contains("no column is named `y` or `label`"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// CSV details

#[test]
fn csv_allows_spaces_specials_and_quotes() {
    let (_dir, path) = temp_file(
        "x.csv",
        b" x0 , x1 ,y\n 1.5 , -2e3 ,1\r\nnan,inf,0\n\"3\",-inf,1\n",
    );
    let data = load_ok(&path, &xor());
    let x = &data.inputs[0];
    assert_eq!(data.rows, 3);
    assert_eq!((x[[0, 0]], x[[0, 1]]), (1.5, -2000.0));
    assert!(x[[1, 0]].is_nan());
    assert_eq!(x[[1, 1]], f32::INFINITY);
    assert_eq!((x[[2, 0]], x[[2, 1]]), (3.0, f32::NEG_INFINITY));
    assert_eq!(data.targets[0], arr2(&[[1.0], [0.0], [1.0]]).into_dyn());
}

#[test]
fn csv_label_column_may_come_first() {
    let (_dir, path) = temp_file("x.csv", b"label,a,b,c,d\n2,1,2,3,4\n0,5,6,7,8\n");
    let data = load_ok(&path, &iris());
    assert_eq!(
        data.inputs[0],
        arr2(&[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]).into_dyn()
    );
    assert_eq!(data.targets[0], arr1(&[2.0, 0.0]).into_dyn());
}

#[test]
fn csv_several_inputs_and_a_multi_element_target() {
    // Target `t` of shape [2, 2] reads t.0..t.3 in index order, wherever they are.
    let (_dir, path) = temp_file(
        "x.csv",
        b"meta.age,t.1,img.p0,t.0,img.p1,t.3,meta.h,t.2,img.p2,img.p3\n\
          30,11,1,10,2,13,1.8,12,3,4\n",
    );
    let model = spec(
        vec![port("img", &[2, 2], None), port("meta", &[2], None)],
        vec![port("t", &[2, 2], None)],
    );
    let data = load_ok(&path, &model);
    assert_eq!(data.inputs[0].shape(), &[1, 2, 2]);
    assert_eq!(
        data.inputs[0].iter().copied().collect::<Vec<_>>(),
        [1.0, 2.0, 3.0, 4.0]
    );
    assert_eq!(
        data.inputs[1].iter().copied().collect::<Vec<_>>(),
        [30.0, 1.8]
    );
    assert_eq!(data.targets[0].shape(), &[1, 2, 2]);
    assert_eq!(
        data.targets[0].iter().copied().collect::<Vec<_>>(),
        [10.0, 11.0, 12.0, 13.0]
    );

    // A column for no input.
    let (_dir2, path) = temp_file(
        "y.csv",
        b"meta.age,t.1,img.p0,t.0,img.p1,t.3,meta.h,t.2,img.p2,img.p3,extra\n\
          30,11,1,10,2,13,1.8,12,3,4,0\n",
    );
    let e = load_err(&path, &model, true);
    assert_eq!((e.code, e.line, e.column), (Code::E0502, Some(1), Some(11)));
    assert!(e.message.contains("expected 10 columns"), "{e}");
    assert!(e.message.contains("found 11"), "{e}");
    assert!(e.message.contains("`extra`"), "{e}");

    // An input short of a column.
    let (_dir3, path) = temp_file(
        "z.csv",
        b"img.p0,img.p1,img.p2,meta.a,meta.b,t.0,t.1,t.2,t.3\n1,2,3,4,5,6,7,8,9\n",
    );
    let e = load_err(&path, &model, true);
    assert_eq!((e.code, e.line), (Code::E0502, Some(1)));
    assert!(
        e.message
            .contains("expected 10 columns (4 for `img`, 2 for `meta`, 4 for `t`), found 9"),
        "{e}"
    );
    assert!(e.message.contains("found 3 columns prefixed `img.`"), "{e}");

    // Target columns that do not fit.
    let (_dir4, path) = temp_file(
        "w.csv",
        b"img.p0,img.p1,img.p2,img.p3,meta.a,meta.b,t.0,t.1,t.2,t.4\n1,2,3,4,5,6,7,8,9,10\n",
    );
    let e = load_err(&path, &model, true);
    assert_eq!((e.code, e.line, e.column), (Code::E0502, Some(1), Some(10)));
    assert!(e.message.contains("`t.4`"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Errors

#[test]
fn a_row_with_a_missing_field() {
    let (_dir, path) = temp_file("x.csv", b"x0,x1,y\n0,0,0\n0,1\n1,0,1\n");
    let e = load_err(&path, &xor(), true);
    assert_eq!((e.code, e.line, e.column), (Code::E0502, Some(3), None));
    assert!(
        e.message
            .contains("expected 3 columns (2 for `x`, 1 for `y`), found 2"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "error[E0502]: {}:3: expected 3 columns (2 for `x`, 1 for `y`), found 2",
            path.display()
        )
    );
    // And one too many.
    let (_dir, path) = temp_file("x.csv", b"x0,x1,y\n0,0,0,7\n");
    let e = load_err(&path, &xor(), true);
    assert_eq!((e.code, e.line), (Code::E0502, Some(2)));
    assert!(e.message.contains("found 4"), "{e}");
}

#[test]
fn a_cell_that_is_not_a_number() {
    let (_dir, path) = temp_file("x.csv", b"x0,x1,y\n0,0,0\n0,abc,1\n");
    let e = load_err(&path, &xor(), true);
    assert_eq!((e.code, e.line, e.column), (Code::E0501, Some(3), Some(2)));
    assert!(e.message.contains("`abc`"), "{e}");
    assert!(e.message.contains("`x1`"), "{e}");

    let (_dir, path) = temp_file("x.csv", b"x0,x1,y\n0,,0\n");
    let e = load_err(&path, &xor(), true);
    assert_eq!((e.code, e.line, e.column), (Code::E0501, Some(2), Some(2)));
    assert!(e.message.contains("empty"), "{e}");
}

#[test]
fn a_label_out_of_range() {
    let mut text = b"a,b,c,d,label\n1,2,3,4,9\n".to_vec();
    text.extend_from_slice(b"1,2,3,4,10\n");
    let (_dir, path) = temp_file("x.csv", &text);
    let model = spec(
        vec![port("features", &[4], None)],
        vec![port("label", &[], Some(10))],
    );
    let e = load_err(&path, &model, true);
    assert_eq!((e.code, e.line, e.column), (Code::E0503, Some(3), Some(5)));
    assert!(
        e.message.contains("10 in column `label` is out of range"),
        "{e}"
    );
    assert!(e.message.contains("10 classes"), "{e}");
    // Not checked when the targets are not read.
    assert_eq!(load(&path, &model, false).unwrap().rows, 2);
}

#[test]
fn a_label_that_is_not_an_integer() {
    let (_dir, path) = temp_file("x.csv", b"a,b,c,d,label\n1,2,3,4,2.5\n");
    let e = load_err(&path, &iris(), true);
    assert_eq!((e.code, e.line, e.column), (Code::E0503, Some(2), Some(5)));
    assert!(
        e.message
            .contains("2.5 in column `label` is not an integer"),
        "{e}"
    );
    assert!(e.message.contains("3 classes"), "{e}");

    let (_dir, path) = temp_file("x.csv", b"a,b,c,d,label\n1,2,3,4,-1\n");
    assert_eq!(load_err(&path, &iris(), true).code, Code::E0503);
}

#[test]
fn a_file_too_wide_for_the_model() {
    let path = example("digits_train.csv");
    let e = load_err(&path, &iris(), true);
    assert_eq!((e.code, e.line, e.column), (Code::E0502, Some(1), None));
    assert!(
        e.message
            .contains("expected 5 columns (4 for `features`, 1 for `label`), found 65"),
        "{e}"
    );
    assert!(e.to_string().starts_with("error[E0502]: "));
    assert!(e
        .to_string()
        .contains("digits_train.csv:1: expected 5 columns"));

    // Without targets, a present label column is still set aside.
    let e = load_err(&path, &iris(), false);
    assert!(
        e.message
            .contains("expected 5 columns (4 for `features`, 1 for `label`, not read), found 65"),
        "{e}"
    );
    // And too narrow.
    let e = load_err(&example("iris_train.csv"), &digits(&[1, 8, 8]), true);
    assert!(
        e.message
            .contains("expected 65 columns (64 for `pixels`, 1 for `label`), found 5"),
        "{e}"
    );
}

#[test]
fn a_duplicated_target_column() {
    let (_dir, path) = temp_file("x.csv", b"x0,y,x1,y\n0,0,0,0\n");
    let e = load_err(&path, &xor(), true);
    assert_eq!((e.code, e.line, e.column), (Code::E0502, Some(1), Some(4)));
    assert!(e.message.contains("`y` appears twice"), "{e}");
}

#[test]
fn empty_and_header_only_files() {
    for contents in [&b""[..], b"x0,x1,y\n", b"x0,x1,y"] {
        let (_dir, path) = temp_file("x.csv", contents);
        let e = load_err(&path, &xor(), true);
        assert_eq!(e.code, Code::E0501, "{e}");
        assert!(e.message.starts_with("no rows"), "{e}");
    }
}

#[test]
fn a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["absent.csv", "absent.npy", "absent.npz"] {
        let path = dir.path().join(name);
        let e = load_err(&path, &xor(), false);
        assert_eq!(e.code, Code::E0500, "{e}");
        assert_eq!(e.path, path);
        assert!(e.message.contains("cannot read the file"), "{e}");
        assert_eq!((e.line, e.column), (None, None));
    }
}

#[test]
fn an_unknown_format() {
    for name in ["x.txt", "x", "x.parquet"] {
        let (_dir, path) = temp_file(name, b"x0,x1,y\n0,0,0\n");
        let e = load_err(&path, &xor(), true);
        assert_eq!(e.code, Code::E0501);
        assert!(e.message.contains("unknown data format"), "{e}");
    }
    // A CSV named .safetensors is read as safetensors, and refused as malformed.
    let (_dir, path) = temp_file("x.safetensors", b"x0,x1,y\n0,0,0\n");
    let e = load_err(&path, &xor(), true);
    assert_eq!(e.code, Code::E0501);
    assert!(e.message.contains("not a valid .safetensors file"), "{e}");
    // The extension is read in any case.
    let (_dir, path) = temp_file("X.CSV", b"x0,x1,y\n0,0,0\n");
    assert_eq!(load_ok(&path, &xor()).rows, 1);
}

#[test]
fn non_utf8_and_garbage_do_not_panic() {
    let (_dir, path) = temp_file("x.csv", b"x0,x1,y\n0,\xFF\xFE,0\n");
    let e = load_err(&path, &xor(), true);
    assert_eq!((e.code, e.line, e.column), (Code::E0501, Some(2), Some(2)));
    for name in ["x.npy", "x.npz"] {
        let (_dir, path) = temp_file(name, b"\x93NUMPY garbage");
        let e = load_err(&path, &xor(), false);
        assert_eq!(e.code, Code::E0501, "{e}");
    }
}

/// Mutated copies of small valid files: every outcome is a value or an error.
#[test]
fn mutated_files_never_panic() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let npz = dir.path().join("seed.npz");
    write_npz(
        &npz,
        &[
            ("x", arr2(&[[0.0f32, 1.0], [1.0, 0.0]]).into_dyn()),
            ("y", arr2(&[[1.0f32], [0.0]]).into_dyn()),
        ],
    );
    let npy = dir.path().join("seed.npy");
    write_npy(&npy, &arr2(&[[0.0f32, 1.0], [1.0, 0.0]])).unwrap();
    let seeds = [
        ("csv", b"x0,x1,y\n0,0,0\n0,1,1\n\"1\",0,1\n1,1,0\n".to_vec()),
        ("npz", fs::read(&npz).unwrap()),
        ("npy", fs::read(&npy).unwrap()),
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    for round in 0..600 {
        let (ext, seed) = &seeds[round % seeds.len()];
        let mut bytes = seed.clone();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..bytes.len());
            match rng.gen_range(0..3) {
                0 => bytes[i] = rng.gen(),
                1 => {
                    bytes.remove(i);
                }
                _ => bytes.truncate(i),
            }
            if bytes.is_empty() {
                break;
            }
        }
        let path = dir.path().join(format!("m{round}.{ext}"));
        fs::write(&path, &bytes).unwrap();
        for with_targets in [true, false] {
            if let Ok(data) = load(&path, &xor(), with_targets) {
                assert_eq!(data.inputs[0].shape()[0], data.rows);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// NumPy

#[test]
fn npz_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.npz");
    let x = Array::from_shape_fn(IxDyn(&[5, 2]), |i| (i[0] * 2 + i[1]) as f32 * 0.5);
    let y = Array::from_shape_fn(IxDyn(&[5, 1]), |i| (i[0] % 2) as f32);
    write_npz(&path, &[("x", x.clone()), ("y", y.clone())]);
    let data = load_ok(&path, &xor());
    assert_eq!(data.rows, 5);
    assert_eq!(data.inputs[0], x);
    assert_eq!(data.targets[0], y);
    // Without targets.
    let data = load(&path, &xor(), false).unwrap();
    assert_eq!(data.inputs[0], x);
    assert!(data.targets.is_empty());
}

#[test]
fn npz_of_other_types_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.npz");
    // Images as f64 [rows, 8, 8] for a model reading [1, 8, 8]; labels as i64 [rows].
    let images = Array::from_shape_fn((3, 8, 8), |(r, i, j)| (r * 64 + i * 8 + j) as f64);
    let labels = arr1(&[3i64, 0, 9]);
    let mut npz = NpzWriter::new_compressed(fs::File::create(&path).unwrap());
    npz.add_array("pixels", &images).unwrap();
    npz.add_array("label", &labels).unwrap();
    npz.finish().unwrap();
    let data = load_ok(&path, &digits(&[1, 8, 8]));
    assert_eq!(data.rows, 3);
    assert_eq!(data.inputs[0].shape(), &[3, 1, 8, 8]);
    assert_eq!(data.inputs[0][[2, 0, 7, 7]], 191.0);
    assert_eq!(data.targets[0], arr1(&[3.0, 0.0, 9.0]).into_dyn());

    // u8 and bool arrays.
    let path = dir.path().join("b.npz");
    let mut npz = NpzWriter::new(fs::File::create(&path).unwrap());
    npz.add_array("x", &arr2(&[[0u8, 255], [7, 1]])).unwrap();
    npz.add_array("y", &arr2(&[[true], [false]])).unwrap();
    npz.finish().unwrap();
    let data = load_ok(&path, &xor());
    assert_eq!(data.inputs[0], arr2(&[[0.0, 255.0], [7.0, 1.0]]).into_dyn());
    assert_eq!(data.targets[0], arr2(&[[1.0], [0.0]]).into_dyn());
}

#[test]
fn npz_missing_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.npz");
    write_npz(
        &path,
        &[
            ("x", ArrayD::zeros(IxDyn(&[4, 2]))),
            ("z", ArrayD::zeros(IxDyn(&[4, 1]))),
        ],
    );
    let e = load_err(&path, &xor(), true);
    assert_eq!((e.code, e.line, e.column), (Code::E0504, None, None));
    assert!(e.message.contains("no array `y`"), "{e}");
    assert!(e.message.contains("`x`, `z`"), "{e}");
    // Prediction does not need it.
    assert_eq!(load(&path, &xor(), false).unwrap().rows, 4);
}

#[test]
fn npz_wrong_shape_and_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.npz");
    write_npz(
        &path,
        &[
            ("x", ArrayD::zeros(IxDyn(&[4, 3]))),
            ("y", ArrayD::zeros(IxDyn(&[4, 1]))),
        ],
    );
    let e = load_err(&path, &xor(), true);
    assert_eq!(e.code, Code::E0505);
    assert!(
        e.message.contains("has shape [4, 3], expected [4, 2]"),
        "{e}"
    );

    write_npz(
        &path,
        &[
            ("x", ArrayD::zeros(IxDyn(&[4, 2]))),
            ("y", ArrayD::zeros(IxDyn(&[3, 1]))),
        ],
    );
    let e = load_err(&path, &xor(), true);
    assert_eq!(e.code, Code::E0505);
    assert!(e.message.contains("`y` has 3 rows, but `x` has 4"), "{e}");

    write_npz(
        &path,
        &[
            ("x", ArrayD::zeros(IxDyn(&[0, 2]))),
            ("y", ArrayD::zeros(IxDyn(&[0, 1]))),
        ],
    );
    let e = load_err(&path, &xor(), true);
    assert_eq!(e.code, Code::E0501);
    assert!(e.message.starts_with("no rows"), "{e}");
}

#[test]
fn npz_labels_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.npz");
    let mut npz = NpzWriter::new(fs::File::create(&path).unwrap());
    npz.add_array("features", &ArrayD::<f32>::zeros(IxDyn(&[3, 4])))
        .unwrap();
    npz.add_array("label", &arr1(&[0i32, 3, 1])).unwrap();
    npz.finish().unwrap();
    let e = load_err(&path, &iris(), true);
    assert_eq!(e.code, Code::E0503);
    assert!(
        e.message
            .contains("3 in array `label`, row 1 (counting from 0), is out of range"),
        "{e}"
    );
    assert!(e.message.contains("3 classes"), "{e}");
}

#[test]
fn npy_holds_the_single_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npy");
    let x = Array::from_shape_fn((3, 64), |(r, j)| (r + j) as f32);
    write_npy(&path, &x).unwrap();
    let data = load(&path, &digits(&[1, 8, 8]), false).unwrap();
    assert_eq!(data.rows, 3);
    assert_eq!(data.inputs[0].shape(), &[3, 1, 8, 8]);
    assert_eq!(data.inputs[0][[2, 0, 7, 7]], 65.0);
    assert!(data.targets.is_empty());

    // Training needs the targets too.
    let e = load_err(&path, &digits(&[64]), true);
    assert_eq!(e.code, Code::E0504);
    assert!(e.message.contains(".npz or .csv"), "{e}");
    // A model without targets reads it even "with targets".
    let no_targets = spec(vec![port("pixels", &[64], None)], vec![]);
    assert_eq!(load(&path, &no_targets, true).unwrap().rows, 3);
    // Several inputs need an .npz.
    let two = spec(vec![port("a", &[32], None), port("b", &[32], None)], vec![]);
    assert_eq!(load_err(&path, &two, false).code, Code::E0504);
    // Wrong width.
    let e = load_err(&path, &iris(), false);
    assert_eq!(e.code, Code::E0505);
    assert!(
        e.message.contains("has shape [3, 64], expected [3, 4]"),
        "{e}"
    );
    // Integer arrays too.
    write_npy(&path, &arr2(&[[1i64, 2], [3, 4]])).unwrap();
    let data = load(&path, &xor(), false).unwrap();
    assert_eq!(data.inputs[0], arr2(&[[1.0, 2.0], [3.0, 4.0]]).into_dyn());
}

#[test]
fn npy_header_larger_than_the_file() {
    // A valid header announcing 2^40 float32 values, then 8 bytes of data.
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1), }";
    let mut padded = header.to_string();
    while !(10 + padded.len() + 1).is_multiple_of(64) {
        padded.push(' ');
    }
    padded.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(padded.len() as u16).to_le_bytes());
    bytes.extend_from_slice(padded.as_bytes());
    bytes.extend_from_slice(&[0; 8]);
    let (_dir, path) = temp_file("big.npy", &bytes);
    let spec1 = spec(vec![port("x", &[1], None)], vec![]);
    let e = load_err(&path, &spec1, false);
    assert_eq!(e.code, Code::E0501);
    assert!(
        e.message.contains("announces shape [1099511627776, 1]"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// Splits, order, standardization

fn counting(rows: usize) -> Dataset {
    Dataset {
        inputs: vec![Array::from_shape_fn(IxDyn(&[rows, 2]), |i| {
            (i[0] * 10 + i[1]) as f32
        })],
        targets: vec![Array::from_shape_fn(IxDyn(&[rows]), |i| i[0] as f32)],
        rows,
    }
}

#[test]
fn select_picks_rows_in_order() {
    let data = counting(5);
    let picked = data.select(&[4, 0, 4]);
    assert_eq!(picked.rows, 3);
    assert_eq!(
        picked.inputs[0],
        arr2(&[[40.0, 41.0], [0.0, 1.0], [40.0, 41.0]]).into_dyn()
    );
    assert_eq!(picked.targets[0], arr1(&[4.0, 0.0, 4.0]).into_dyn());
    let none = data.select(&[]);
    assert_eq!(none.rows, 0);
    assert_eq!(none.inputs[0].shape(), &[0, 2]);
}

#[test]
fn split_is_seeded_and_partitions_the_rows() {
    let data = counting(1438);
    let (train, validation) = data.split(0.1, 42);
    assert_eq!((train.rows, validation.rows), (1294, 144));
    let rows_of =
        |d: &Dataset| -> Vec<usize> { d.targets[0].iter().map(|&v| v as usize).collect() };
    let (t, v) = (rows_of(&train), rows_of(&validation));
    // Each part keeps the file's order; together they are every row once.
    assert!(t.windows(2).all(|w| w[0] < w[1]));
    assert!(v.windows(2).all(|w| w[0] < w[1]));
    let mut all = [t.clone(), v.clone()].concat();
    all.sort_unstable();
    assert_eq!(all, (0..1438).collect::<Vec<_>>());
    // Inputs follow their rows.
    for (k, &r) in v.iter().enumerate() {
        assert_eq!(validation.inputs[0][[k, 1]], (r * 10 + 1) as f32);
    }
    // The same seed gives the same split; another seed another one.
    let (_, again) = data.split(0.1, 42);
    assert_eq!(rows_of(&again), v);
    let (_, other) = data.split(0.1, 43);
    assert_ne!(rows_of(&other), v);
    // Not simply the last rows.
    assert_ne!(v, (1294..1438).collect::<Vec<_>>());

    let (train, validation) = data.split(0.0, 42);
    assert_eq!(validation.rows, 0);
    assert_eq!(train, data);
    let (train, validation) = counting(10).split(0.25, 1);
    assert_eq!((train.rows, validation.rows), (7, 3));
}

#[test]
fn epoch_order_is_a_seeded_permutation() {
    let a = epoch_order(100, 7, 0);
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    assert_ne!(a, sorted);
    assert_eq!(epoch_order(100, 7, 0), a);
    assert_ne!(epoch_order(100, 7, 1), a);
    assert_ne!(epoch_order(100, 8, 0), a);
    assert!(epoch_order(0, 7, 0).is_empty());
    assert_eq!(epoch_order(1, 7, 3), [0]);
}

#[test]
fn standardizer_centers_and_scales_each_feature() {
    // Column 0: 1, 2, 3, 4 (mean 2.5, population std sqrt(1.25)); column 1 constant 7.
    let train = Dataset {
        inputs: vec![arr2(&[[1.0f32, 7.0], [2.0, 7.0], [3.0, 7.0], [4.0, 7.0]]).into_dyn()],
        targets: vec![arr1(&[5.0f32, 6.0, 7.0, 8.0]).into_dyn()],
        rows: 4,
    };
    let s = Standardizer::fit(&train);
    assert_eq!(s.mean, vec![vec![2.5, 7.0]]);
    assert_eq!(s.std, vec![vec![1.25f64.sqrt() as f32, 1.0]]);
    assert!(s.matches(&train));

    let mut data = train.clone();
    s.apply(&mut data);
    let x = &data.inputs[0];
    let column: Vec<f32> = (0..4).map(|r| x[[r, 0]]).collect();
    let expected: Vec<f32> = [1.0f64, 2.0, 3.0, 4.0]
        .iter()
        .map(|v| ((v - 2.5) / f64::from(1.25f64.sqrt() as f32)) as f32)
        .collect();
    assert_eq!(column, expected);
    let mean: f32 = column.iter().sum::<f32>() / 4.0;
    let var: f32 = column.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 4.0;
    assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
    // The constant column is centered, not NaN.
    assert!((0..4).all(|r| x[[r, 1]] == 0.0));
    // Targets are left alone.
    assert_eq!(data.targets, train.targets);

    // Test data uses the training statistics.
    let mut test = Dataset {
        inputs: vec![arr2(&[[2.5f32, 8.0]]).into_dyn()],
        targets: vec![],
        rows: 1,
    };
    s.apply(&mut test);
    assert_eq!(test.inputs[0], arr2(&[[0.0, 1.0]]).into_dyn());
}

#[test]
fn standardizer_constant_columns_with_rounding() {
    // 0.1 is not exact in binary: a naive mean would leave a tiny non-zero deviation.
    let data = Dataset {
        inputs: vec![ArrayD::from_elem(IxDyn(&[3, 1, 2, 2]), 0.1f32)],
        targets: vec![],
        rows: 3,
    };
    let s = Standardizer::fit(&data);
    assert_eq!(s.mean, vec![vec![0.1; 4]]);
    assert_eq!(s.std, vec![vec![1.0; 4]]);
    let mut applied = data.clone();
    s.apply(&mut applied);
    assert!(applied.inputs[0].iter().all(|&v| v == 0.0));
}

#[test]
fn standardizer_on_the_digits() {
    let train = load_ok(&example("digits_train.csv"), &digits(&[1, 8, 8]));
    let s = Standardizer::fit(&train);
    assert_eq!((s.mean[0].len(), s.std[0].len()), (64, 64));
    let mut data = train.clone();
    s.apply(&mut data);
    assert!(data.inputs[0].iter().all(|v| v.is_finite()));
    // Pixel 0 is always 0 in the digits: a constant column, centered.
    assert_eq!(s.std[0][0], 1.0);
    assert!((0..data.rows).all(|r| data.inputs[0][[r, 0, 0, 0]] == 0.0));
    // A mismatched standardizer leaves the data unchanged.
    let other = Standardizer::fit(&load_ok(&example("iris_train.csv"), &iris()));
    assert!(!other.matches(&train));
    let mut unchanged = train.clone();
    other.apply(&mut unchanged);
    assert_eq!(unchanged, train);
}

#[test]
fn safetensors_holds_named_arrays() {
    use kiln::runtime::checkpoint::Checkpoint;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.safetensors");
    let mut c = Checkpoint::new();
    let x = ndarray::ArrayD::from_shape_vec(
        ndarray::IxDyn(&[3, 2]),
        vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0],
    )
    .unwrap();
    let y = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[3]), vec![0.0f32, 2.0, 1.0]).unwrap();
    c.tensors.insert("x".into(), x.clone());
    c.tensors.insert("y".into(), y);
    c.save(&path).unwrap();
    let spec = kiln::runtime::data::DataSpec {
        inputs: vec![kiln::runtime::data::PortSpec {
            name: "x".into(),
            shape: vec![2],
            classes: None,
        }],
        targets: vec![kiln::runtime::data::PortSpec {
            name: "y".into(),
            shape: vec![],
            classes: Some(3),
        }],
    };
    let d = kiln::runtime::data::load(&path, &spec, true).unwrap();
    assert_eq!(d.rows, 3);
    assert_eq!(d.inputs[0], x);
    assert_eq!(
        d.targets[0].iter().copied().collect::<Vec<_>>(),
        [0.0, 2.0, 1.0]
    );
    // A label out of range is checked as in every format.
    let mut c = Checkpoint::load(&path).unwrap();
    c.tensors.insert(
        "y".into(),
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[3]), vec![0.0f32, 3.0, 1.0]).unwrap(),
    );
    c.save(&path).unwrap();
    let e = kiln::runtime::data::load(&path, &spec, true).unwrap_err();
    assert_eq!(e.code, Code::E0503, "{e}");
}

/// A misnamed target column, or a file without a header, is told what the header holds
/// and how the target is found; the count of columns is not blamed when it is right.
#[test]
fn a_missing_target_column_names_the_columns_there_are() {
    let (_dir, path) = temp_file("misnamed.csv", b"a,b,target\n0,1,1\n1,1,0\n");
    let e = load_err(&path, &xor(), true);
    assert_eq!((e.code, e.line), (Code::E0502, Some(1)));
    assert_eq!(
        e.message,
        "no column is named `y` or `label`; the header names `a`, `b`, `target` (the target's column is found by the target's name, every other column is an input)"
    );
    let (_dir, path) = temp_file("bare.csv", b"0,1,1\n1,1,0\n");
    let e = load_err(&path, &xor(), true);
    assert!(
        e.message
            .starts_with("no column is named `y` or `label`: the first line holds numbers, but it must be a header"),
        "{e}"
    );
}
