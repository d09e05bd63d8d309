//! `kiln export` against the real ONNX Runtime: every model of every example and a
//! table of small models that together use every builtin of the language are exported
//! with random weights (batchnorm's running statistics included), run by ONNX Runtime
//! (`tests/onnx/ort.py`, after `onnx.checker` with `full_check`) at batch 1 and 7, and
//! compared output by output with `kiln predict` on the same weights and inputs. Real
//! checkpoints of `kiln train` with standardization are exported too: ONNX Runtime fed
//! the raw inputs must give what `kiln predict` gives. The command line's exit codes,
//! warnings and atomic writes are tested without Python.
//!
//! Python: `$KILN_ONNX_PYTHON`, else `target/pyenv/bin/python` (made by
//! `.ci/onnx-venv.sh`), with onnx, onnxruntime and numpy. Without it the ONNX Runtime
//! tests print `skipped: ...` and pass, unless `CI` is set: then they fail.

use kiln::check::{check_file, load_file, LintLevels};
use kiln::interp::dims;
use kiln::ir::DType;
use kiln::ops::catalog::{self, Def, Kind};
use kiln::ops::elementwise::Spelling;
use kiln::ops::Elem;
use kiln::runtime::program;
use kiln::span::Sources;
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// `kiln export`'s default opset, and the range it supports.
const DEFAULT_OPSET: u64 = 28;
const OPSETS: std::ops::RangeInclusive<u64> = 13..=28;
/// Opsets the case table is also exported at (at batch 7): the oldest supported, and
/// those where an operator the export may use appears or changes form
/// (LayerNormalization 17, Reduce* axes as an input and Mish 18, Gelu 20).
const OTHER_OPSETS: &[u64] = &[13, 17, 18, 20];
/// The batch sizes every model runs at.
const BATCHES: &[usize] = &[1, 7];
/// Relative tolerance of each element, and of the floor each output's largest
/// magnitude sets (see [`compare`]).
const RTOL: f64 = 1e-5;
/// What the export of one example may take, measured around the debug binary's whole
/// process (start, check, lower, write); the release binary's export is far faster.
const EXPORT_TIME_LIMIT: Duration = Duration::from_secs(2);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn kiln(args: &[&str]) -> Output {
    Command::new(KILN)
        .args(args)
        .current_dir(root())
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run kiln")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally, not by a signal")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// A fresh folder under the system's temporary folder for one test, removed when the
/// test passes and kept (its path is in the failure) when it fails.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("kiln-export-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch folder");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write a scratch file");
        p
    }

    /// The names of the files in the folder, sorted.
    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .expect("list the scratch folder")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept the files of the failed test in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------- Python

/// The Python that runs `tests/onnx/ort.py`, when it has onnx, onnxruntime and numpy.
/// Without it: a panic when `CI` is set (CI must run these tests), else `None` after a
/// `skipped: ...` line.
fn python(test: &str) -> Option<PathBuf> {
    static FOUND: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let py = std::env::var_os("KILN_ONNX_PYTHON")
            .map_or_else(|| root().join("target/pyenv/bin/python"), PathBuf::from);
        // Finding the modules is enough here (importing onnxruntime takes half a second):
        // a broken install fails in ort.py, as a test failure.
        let probe = "import importlib.util, sys\n\
                     missing = [m for m in ('onnx', 'onnxruntime', 'numpy') if importlib.util.find_spec(m) is None]\n\
                     print(', '.join(missing))\n\
                     sys.exit(1 if missing else 0)";
        match Command::new(&py).args(["-c", probe]).output() {
            Ok(o) if o.status.success() => Ok(py),
            Ok(o) => Err(format!(
                "`{}` lacks the modules {}",
                py.display(),
                String::from_utf8_lossy(&o.stdout).trim()
            )),
            Err(e) => Err(format!("cannot run `{}`: {e}", py.display())),
        }
    });
    match found {
        Ok(py) => Some(py.clone()),
        Err(why) => {
            let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
            assert!(
                !ci,
                "{test}: {why}; CI is set, so the ONNX Runtime checks must run: run \
                 .ci/onnx-venv.sh, or set KILN_ONNX_PYTHON to a Python with onnx, \
                 onnxruntime and numpy"
            );
            eprintln!(
                "skipped: {test}: {why} (run .ci/onnx-venv.sh, or set KILN_ONNX_PYTHON to a \
                 Python with onnx, onnxruntime and numpy)"
            );
            None
        }
    }
}

// ---------------------------------------------------------------- models

/// An input of a model: per-sample dimensions, and the class count of class ids.
#[derive(Clone, Debug)]
struct Port {
    name: String,
    dims: Vec<usize>,
    classes: Option<u64>,
}

/// What the tests need to know of one model of a file.
#[derive(Clone, Debug)]
struct Info {
    file: PathBuf,
    model: String,
    inputs: Vec<Port>,
    /// The batch symbol as the model writes it (`N`).
    batch: String,
    /// Output names with their per-sample dimensions and whether they are class ids.
    outputs: Vec<(String, Vec<usize>, bool)>,
    /// Every parameter and state tensor `--weights` must hold, with its shape.
    params: Vec<(String, Vec<usize>)>,
}

/// The models of a file, checked by the library.
fn models_in(file: &Path) -> Vec<Info> {
    let mut sources = Sources::new();
    let (id, bad) = load_file(&mut sources, file).expect("read the model file");
    assert!(bad.is_none(), "{}: {bad:?}", file.display());
    let checked = check_file(&mut sources, id, &LintLevels::default());
    let errors: Vec<String> = checked
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| format!("{:?}: {}", d.code, d.message))
        .collect();
    let p = checked
        .program
        .unwrap_or_else(|| panic!("{}: {errors:#?}", file.display()));
    assert!(!p.models.is_empty(), "{} declares no model", file.display());
    p.models
        .iter()
        .map(|m| {
            let prog = program::prepare(m);
            let g = &prog.forward;
            let sample = |shape| dims(shape, 1)[1..].to_vec();
            Info {
                file: file.to_path_buf(),
                model: m.name.clone(),
                batch: m.batch_symbol.clone(),
                inputs: g
                    .inputs
                    .iter()
                    .map(|t| Port {
                        name: t.name.clone(),
                        dims: sample(&t.shape),
                        classes: match t.dtype {
                            DType::Class(k) => Some(k),
                            DType::F32 => None,
                        },
                    })
                    .collect(),
                outputs: g
                    .outputs
                    .iter()
                    .map(|(n, id)| {
                        let node = &g.nodes[*id];
                        let ids = matches!(node.dtype, DType::Class(_));
                        (n.clone(), sample(&node.shape), ids)
                    })
                    .collect(),
                params: g
                    .params
                    .iter()
                    .map(|p| (p.tensor.name.clone(), dims(&p.tensor.shape, 1)))
                    .collect(),
            }
        })
        .collect()
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "kiln"))
        .collect();
    v.sort();
    assert!(v.len() >= 5, "examples/*.kiln");
    v
}

// ---------------------------------------------------------------- weights and data

/// Random values for a parameter, on a scale that keeps activations near 1 whatever
/// the layer: weights uniform with variance 1/fan-in (the fan-in read from the
/// layouts of LANGUAGE.md §9), biases and shifts in ±0.5, scales and PReLU slopes in
/// 0.5..1.5, running means in ±0.5 and running variances in 0.5..2, so that evaluation
/// with the running statistics is really tested.
fn random_param(name: &str, shape: &[usize], rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let last = name.rsplit('.').next().unwrap_or(name);
    let word = name
        .split('.')
        .rev()
        .skip(1)
        .find(|w| !w.chars().all(|c| c.is_ascii_digit()))
        .unwrap_or("");
    let (lo, hi) = if last == "running_var" {
        (0.5, 2.0)
    } else if last == "running_mean" || last.starts_with("bias") {
        (-0.5, 0.5)
    } else if shape.len() <= 1 {
        (0.5, 1.5)
    } else if word == "embedding" {
        (-1.0, 1.0)
    } else {
        let fan: usize = if last.starts_with("weight_") || shape.len() > 2 {
            // Recurrent [G·h, F] and convolution [out, in, k...] weights.
            shape[1..].iter().product()
        } else {
            // dense: [in, units].
            shape[0]
        };
        let a = (3.0 / fan.max(1) as f32).sqrt();
        (-a, a)
    };
    (0..n).map(|_| rng.gen_range(lo..hi)).collect()
}

/// Writes a plain safetensors file of parameters under Kiln's names.
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            let v = TensorView::new(Dtype::F32, shape.clone(), b).expect("a tensor view");
            (name.clone(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write safetensors");
}

/// Random weights for every parameter and state tensor of `info`, written to `path`.
fn random_weights(info: &Info, path: &Path, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = info
        .params
        .iter()
        .map(|(n, shape)| (n.clone(), shape.clone(), random_param(n, shape, &mut rng)))
        .collect();
    write_safetensors(path, &tensors);
}

/// An input array: floats, or class ids (int64 in the file, as ONNX wants them).
enum Array {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}

/// Where a target's inputs come from.
#[derive(Clone, Debug)]
enum Inputs {
    /// Floats uniform in the range; class ids uniform in `0..K`.
    Random(f32, f32),
    /// The first rows of a data set, `[rows, features]`, for a model with one input.
    Rows(ArrayD<f32>),
}

/// Inputs at batch `batch`, written to an `.npz` under the inputs' names (class ids as
/// int64, as ONNX wants them).
fn write_inputs(info: &Info, batch: usize, from: &Inputs, path: &Path, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let arrays: Vec<(String, Array)> = info
        .inputs
        .iter()
        .map(|port| {
            let mut shape = vec![batch];
            shape.extend(&port.dims);
            let n: usize = shape.iter().product();
            let a = match (port.classes, from) {
                (Some(k), _) => Array::I64(
                    ArrayD::from_shape_vec(
                        IxDyn(&shape),
                        (0..n).map(|_| rng.gen_range(0..k as i64)).collect(),
                    )
                    .unwrap(),
                ),
                (None, Inputs::Random(lo, hi)) => Array::F32(
                    ArrayD::from_shape_vec(
                        IxDyn(&shape),
                        (0..n).map(|_| rng.gen_range(*lo..*hi)).collect(),
                    )
                    .unwrap(),
                ),
                (None, Inputs::Rows(rows)) => {
                    assert_eq!(info.inputs.len(), 1, "rows of a data set for one input");
                    let v: Vec<f32> = rows.iter().copied().take(n).collect();
                    assert_eq!(v.len(), n, "{batch} rows of the data set");
                    Array::F32(ArrayD::from_shape_vec(IxDyn(&shape), v).unwrap())
                }
            };
            (port.name.clone(), a)
        })
        .collect();
    write_npz(path, &arrays);
}

/// The input columns of a CSV data set (every column but `label` and `target`), as
/// `[rows, columns]`.
fn csv_rows(path: &Path, target: &str) -> ArrayD<f32> {
    let text = std::fs::read_to_string(path).expect("read the data set");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    let keep: Vec<bool> = header
        .iter()
        .map(|h| h.trim() != "label" && h.trim() != target)
        .collect();
    let mut values = Vec::new();
    let mut rows = 0;
    for line in lines.filter(|l| !l.trim().is_empty()) {
        rows += 1;
        for (field, k) in line.split(',').zip(&keep) {
            if *k {
                values.push(field.trim().parse::<f32>().expect("a number"));
            }
        }
    }
    let width = keep.iter().filter(|k| **k).count();
    ArrayD::from_shape_vec(IxDyn(&[rows, width]), values).expect("a rectangular data set")
}

fn write_npz(path: &Path, arrays: &[(String, Array)]) {
    let f = std::fs::File::create(path).expect("create an npz");
    let mut npz = ndarray_npy::NpzWriter::new(f);
    for (name, a) in arrays {
        match a {
            Array::F32(a) => npz.add_array(name.as_str(), a),
            Array::I64(a) => npz.add_array(name.as_str(), a),
        }
        .expect("write an npz array");
    }
    npz.finish().expect("finish an npz");
}

/// The arrays of an `.npz` by name, as f32 (int64 class ids converted), without
/// `kiln predict`'s `class`; an array of another type is an error naming it.
fn read_npz(path: &Path) -> Result<BTreeMap<String, ArrayD<f32>>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut npz = ndarray_npy::NpzReader::new(f).map_err(|e| format!("{}: {e}", path.display()))?;
    let names = npz
        .names()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for n in names {
        if n == "class" {
            continue; // kiln predict's classes: not a model output
        }
        // Floats, or class ids (int64) compared as floats, as `kiln predict` writes them.
        let a: ArrayD<f32> = match npz.by_name::<ndarray::OwnedRepr<f32>, IxDyn>(&n) {
            Ok(a) => a,
            Err(_) => npz
                .by_name::<ndarray::OwnedRepr<i64>, IxDyn>(&n)
                .map(|a| a.mapv(|v| v as f32))
                .map_err(|e| {
                    format!(
                        "{}: array `{n}` is neither float32 nor int64: {e}",
                        path.display()
                    )
                })?,
        };
        out.insert(n, a);
    }
    Ok(out)
}

// ---------------------------------------------------------------- comparing

/// The multi-dimensional index of flat index `i` in `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[k] = i % d;
            i /= d;
        }
    }
    idx
}

/// The worst element of a comparison, as a fraction of its tolerance.
#[derive(Clone, Debug, Default)]
struct Worst {
    ratio: f64,
    what: String,
}

/// Compares ONNX Runtime's `ort` with Kiln's `kiln`: each element must satisfy
/// |ort − kiln| ≤ atol + RTOL·|kiln|, with atol = RTOL·max|kiln| over the output (so
/// elements far smaller than the output's scale are held to the output's scale). Returns
/// the worst element (with its ratio to the tolerance), or a failure naming it.
fn compare(what: &str, kiln: &ArrayD<f32>, ort: &ArrayD<f32>) -> Result<Worst, String> {
    if kiln.shape() != ort.shape() {
        return Err(format!(
            "{what}: ONNX Runtime's shape {:?} is not Kiln's {:?}",
            ort.shape(),
            kiln.shape()
        ));
    }
    let scale = kiln.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let atol = (RTOL * scale).max(f64::from(f32::MIN_POSITIVE));
    let mut worst = (0f64, 0usize);
    let mut bad = 0usize;
    for (i, (&k, &o)) in kiln.iter().zip(ort.iter()).enumerate() {
        let (k, o) = (f64::from(k), f64::from(o));
        let ratio = if k.is_nan() && o.is_nan() {
            0.0
        } else if !k.is_finite() || !o.is_finite() {
            if k == o {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            (o - k).abs() / (atol + RTOL * k.abs())
        };
        if ratio > 1.0 {
            bad += 1;
        }
        if ratio > worst.0 || i == 0 {
            worst = (ratio, i);
        }
    }
    if kiln.is_empty() {
        return Ok(Worst::default());
    }
    let (ratio, i) = worst;
    let k = kiln.iter().nth(i).copied().unwrap_or(f32::NAN);
    let o = ort.iter().nth(i).copied().unwrap_or(f32::NAN);
    let detail = format!(
        "{what}: worst element {:?} of {:?}: ONNX Runtime {o:e}, kiln {k:e} (|diff| {:e}, \
         tolerance {:e}, max |kiln| {scale:e})",
        unravel(i, kiln.shape()),
        kiln.shape(),
        (f64::from(o) - f64::from(k)).abs(),
        atol + RTOL * f64::from(k).abs()
    );
    if ratio > 1.0 {
        Err(format!(
            "{detail}; {bad} of {} elements beyond the tolerance",
            kiln.len()
        ))
    } else {
        Ok(Worst {
            ratio,
            what: detail,
        })
    }
}

#[test]
fn compare_holds_each_element_to_its_output_s_scale() {
    let a = |v: &[f32]| ArrayD::from_shape_vec(IxDyn(&[1, v.len()]), v.to_vec()).unwrap();
    let kiln = a(&[1000.0, 0.001, -2.0]);
    // atol = 1e-5 · 1000 = 0.01: small elements may be off by about that much.
    assert!(compare("ok", &kiln, &a(&[1000.005, 0.008, -2.009])).is_ok());
    let err = compare("bad", &kiln, &a(&[1000.0, 0.001, -2.02])).unwrap_err();
    assert!(err.contains("[0, 2]") && err.contains("1 of 3"), "{err}");
    let err = compare("nan", &kiln, &a(&[1000.0, f32::NAN, -2.0])).unwrap_err();
    assert!(err.contains("[0, 1]"), "{err}");
    let err = compare("shape", &kiln, &a(&[1000.0, 0.001])).unwrap_err();
    assert!(err.contains("shape"), "{err}");
}

// ---------------------------------------------------------------- the pipeline

/// One model to export and compare.
struct Target {
    /// How failures name it: `case conv2d`, `examples/iris.kiln model iris`, ...
    label: String,
    info: Info,
    /// `--weights` of the export; `None` exports the seeded initialization.
    export_weights: Option<PathBuf>,
    /// `--weights` of `kiln predict`.
    predict_weights: PathBuf,
    /// Opsets beyond the default one (each run at the last batch size only).
    other_opsets: Vec<u64>,
    /// Its inputs.
    inputs: Inputs,
}

/// What [`prepare`] did for one target: the ONNX Runtime jobs that follow, the failures
/// on the way, and the default-opset export's wall time.
struct Prepared {
    index: usize,
    jobs: Vec<Job>,
    failures: Vec<String>,
    time: Option<Duration>,
}

/// One ONNX Runtime run and what it is compared with.
struct Job {
    label: String,
    target: usize,
    opset: u64,
    onnx: PathBuf,
    inputs: PathBuf,
    kiln_out: PathBuf,
    ort_out: PathBuf,
}

/// What a run of the pipeline saw.
#[derive(Default)]
struct Report {
    failures: Vec<String>,
    worst: Worst,
    jobs: usize,
    /// Wall time of each default-opset export, by label.
    export_times: Vec<(String, Duration)>,
}

/// A file-name stem for a label.
fn stem(label: &str) -> String {
    label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Runs `kiln predict` on `t` at each batch size and exports it at each of its opsets.
fn prepare(t: &Target, index: usize, dir: &Path) -> Prepared {
    let base = dir.join(stem(&t.label));
    let name = |suffix: &str| PathBuf::from(format!("{}.{suffix}", base.display()));
    let mut failures = Vec::new();
    let mut jobs = Vec::new();
    let mut time = None;
    // Kiln's predictions at each batch size.
    let mut predicted = Vec::new();
    for (k, &batch) in BATCHES.iter().enumerate() {
        let inputs = name(&format!("b{batch}.in.npz"));
        write_inputs(
            &t.info,
            batch,
            &t.inputs,
            &inputs,
            1000 * index as u64 + k as u64,
        );
        let out = name(&format!("b{batch}.kiln.npz"));
        let o = kiln(&[
            "predict",
            s(&t.info.file),
            "--model",
            &t.info.model,
            "--color",
            "never",
            "--threads",
            "1",
            "--weights",
            s(&t.predict_weights),
            "--data",
            s(&inputs),
            "--out",
            s(&out),
        ]);
        if code(&o) == 0 {
            predicted.push((batch, inputs, out));
        } else {
            failures.push(format!(
                "{}: kiln predict at batch {batch} exited with {}: {}",
                t.label,
                code(&o),
                stderr(&o)
            ));
        }
    }
    let opsets = std::iter::once(None).chain(t.other_opsets.iter().copied().map(Some));
    for opset in opsets {
        let onnx = name(&format!("o{}.onnx", opset.unwrap_or(DEFAULT_OPSET)));
        let mut args = vec![
            "export".to_string(),
            s(&t.info.file).to_string(),
            "--model".into(),
            t.info.model.clone(),
            "-o".into(),
            s(&onnx).to_string(),
        ];
        if let Some(w) = &t.export_weights {
            args.extend(["--weights".into(), s(w).to_string()]);
        }
        if let Some(k) = opset {
            args.extend(["--opset".into(), k.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let start = Instant::now();
        let o = kiln(&args);
        let took = start.elapsed();
        if opset.is_none() {
            time = Some(took);
        }
        let at = opset.map_or(String::new(), |k| format!(" --opset {k}"));
        if code(&o) != 0 {
            failures.push(format!(
                "{}: kiln export{at} exited with {}: {}",
                t.label,
                code(&o),
                stderr(&o)
            ));
            continue;
        }
        let warned = stderr(&o).to_lowercase().contains("warning");
        if t.export_weights.is_some() && warned {
            failures.push(format!(
                "{}: kiln export{at} --weights warned: {}",
                t.label,
                stderr(&o)
            ));
        }
        if t.export_weights.is_none() && !warned {
            failures.push(format!(
                "{}: kiln export{at} without --weights gave no warning",
                t.label
            ));
        }
        // The default opset at every batch size, the others at the last.
        let last = *BATCHES.last().unwrap();
        for (batch, inputs, kiln_out) in predicted.iter().filter(|p| opset.is_none() || p.0 == last)
        {
            let k = opset.unwrap_or(DEFAULT_OPSET);
            jobs.push(Job {
                label: format!("{} (opset {k}, batch {batch})", t.label),
                target: index,
                opset: k,
                onnx: onnx.clone(),
                inputs: inputs.clone(),
                kiln_out: kiln_out.clone(),
                ort_out: name(&format!("o{k}.b{batch}.ort.npz")),
            });
        }
    }
    Prepared {
        index,
        jobs,
        failures,
        time,
    }
}

/// Checks what ort.py reports of the graph against the model: the opset, the inputs
/// (names in order, float32 or int64 for class ids, the batch dimension the model's batch
/// symbol `N`, then its sizes), the outputs (likewise), and every parameter as an
/// initializer under its Kiln name.
fn check_graph(job: &Job, info: &Info, r: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    if r["opset"].as_u64() != Some(job.opset) {
        bad.push(format!(
            "{}: the model's default-domain opset is {}, not {}",
            job.label, r["opset"], job.opset
        ));
    }
    let port = |name: &str, ty: &str, sample: &[usize]| {
        let mut d = vec![json!(info.batch)];
        d.extend(sample.iter().map(|&k| json!(k)));
        json!({"name": name, "type": ty, "dims": d})
    };
    let want: Vec<Value> = info
        .inputs
        .iter()
        .map(|p| {
            let ty = if p.classes.is_some() {
                "int64"
            } else {
                "float"
            };
            port(&p.name, ty, &p.dims)
        })
        .collect();
    if r["inputs"].as_array() != Some(&want) {
        bad.push(format!(
            "{}: graph inputs {} (expected {})",
            job.label,
            r["inputs"],
            Value::from(want)
        ));
    }
    let want: Vec<Value> = info
        .outputs
        .iter()
        .map(|(n, d, ids)| port(n, if *ids { "int64" } else { "float" }, d))
        .collect();
    if r["outputs"].as_array() != Some(&want) {
        bad.push(format!(
            "{}: graph outputs {} (expected {})",
            job.label,
            r["outputs"],
            Value::from(want)
        ));
    }
    let inits: BTreeSet<&str> = r["initializers"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["name"].as_str()).collect())
        .unwrap_or_default();
    let missing: Vec<&str> = info
        .params
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !inits.contains(n))
        .collect();
    if !missing.is_empty() {
        bad.push(format!(
            "{}: parameters that are no initializer of the graph: {}",
            job.label,
            missing.join(", ")
        ));
    }
    bad
}

/// Exports every target, runs every job on ONNX Runtime in one Python process, and
/// compares; returns what it saw (failures are collected, not raised).
fn run_targets(targets: &[Target], py: &Path, dir: &Path) -> Report {
    let mut report = Report::default();
    // Export and predict, on a few threads: each model is its own processes.
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<Prepared>> = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(t) = targets.get(i) else { break };
                let prepared = prepare(t, i, dir);
                done.lock().unwrap().push(prepared);
            });
        }
    });
    let mut done = done.into_inner().unwrap();
    done.sort_by_key(|d| d.index);
    let mut jobs = Vec::new();
    for d in done {
        jobs.extend(d.jobs);
        report.failures.extend(d.failures);
        if let Some(time) = d.time {
            report
                .export_times
                .push((targets[d.index].label.clone(), time));
        }
    }
    report.jobs = jobs.len();
    if jobs.is_empty() {
        return report;
    }
    // One Python process for every job.
    let manifest: Vec<Value> = jobs
        .iter()
        .map(|j| json!({"model": s(&j.onnx), "inputs": s(&j.inputs), "outputs": s(&j.ort_out)}))
        .collect();
    let manifest_path = dir.join("jobs.json");
    std::fs::write(&manifest_path, Value::from(manifest).to_string()).unwrap();
    let o = Command::new(py)
        .arg(root().join("tests/onnx/ort.py"))
        .arg("--manifest")
        .arg(&manifest_path)
        .output()
        .expect("run tests/onnx/ort.py");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let results: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if results.len() != jobs.len() {
        report.failures.push(format!(
            "ort.py reported {} of {} jobs (exit {:?}): {}{}",
            results.len(),
            jobs.len(),
            o.status.code(),
            stdout,
            stderr(&o)
        ));
    }
    for r in &results {
        let Some(job) = r["job"].as_u64().and_then(|k| jobs.get(k as usize)) else {
            continue;
        };
        if r["ok"] != json!(true) {
            report.failures.push(format!(
                "{}: ONNX Runtime or the ONNX checker failed: {}",
                job.label,
                r["error"].as_str().unwrap_or("?")
            ));
            continue;
        }
        let info = &targets[job.target].info;
        report.failures.extend(check_graph(job, info, r));
        let (kiln_out, ort_out) = match (read_npz(&job.kiln_out), read_npz(&job.ort_out)) {
            (Ok(k), Ok(o)) => (k, o),
            (Err(e), _) | (_, Err(e)) => {
                report.failures.push(format!("{}: {e}", job.label));
                continue;
            }
        };
        for (name, _, _) in &info.outputs {
            let what = format!("{} output `{name}`", job.label);
            match (kiln_out.get(name), ort_out.get(name)) {
                (Some(k), Some(o)) => match compare(&what, k, o) {
                    Ok(w) if w.ratio >= report.worst.ratio => report.worst = w,
                    Ok(_) => {}
                    Err(e) => report.failures.push(e),
                },
                (None, _) => report
                    .failures
                    .push(format!("{what}: kiln predict did not write it")),
                (_, None) => report
                    .failures
                    .push(format!("{what}: ONNX Runtime did not return it")),
            }
        }
    }
    report
}

/// Fails with every failure of the report, or prints what it measured.
fn finish(test: &str, report: &Report) {
    eprintln!(
        "{test}: {} ONNX Runtime runs; the closest call was {:.3} of the tolerance: {}",
        report.jobs, report.worst.ratio, report.worst.what
    );
    assert!(
        report.failures.is_empty(),
        "{test}: {} failures:\n\n{}",
        report.failures.len(),
        report.failures.join("\n\n")
    );
}

/// A target with random weights for every model of `file`.
fn random_targets(label: &str, file: &Path, dir: &Path, seed: u64) -> Vec<Target> {
    models_in(file)
        .into_iter()
        .enumerate()
        .map(|(k, info)| {
            let label = format!("{label} model `{}`", info.model);
            let w = dir.join(format!("{}.w.safetensors", stem(&label)));
            random_weights(&info, &w, seed + k as u64);
            Target {
                label,
                info,
                export_weights: Some(w.clone()),
                predict_weights: w,
                other_opsets: Vec::new(),
                inputs: Inputs::Random(-2.0, 2.0),
            }
        })
        .collect()
}

// ---------------------------------------------------------------- examples

/// Every model of every example, with random weights, at the default opset; each
/// export within [`EXPORT_TIME_LIMIT`].
#[test]
fn every_example_matches_onnx_runtime() {
    let Some(py) = python("every_example_matches_onnx_runtime") else {
        return;
    };
    let dir = Scratch::new("examples");
    let mut targets = Vec::new();
    for (k, ex) in examples().iter().enumerate() {
        let name = format!("examples/{}", ex.file_name().unwrap().to_string_lossy());
        targets.extend(random_targets(&name, ex, &dir.0, 100 * k as u64));
    }
    let report = run_targets(&targets, &py, &dir.0);
    let slow: Vec<String> = report
        .export_times
        .iter()
        .filter(|(_, t)| *t > EXPORT_TIME_LIMIT)
        .map(|(l, t)| format!("{l}: {t:?}"))
        .collect();
    eprintln!(
        "export wall times (debug binary): {:?}",
        report.export_times
    );
    assert!(
        slow.is_empty(),
        "exports slower than {EXPORT_TIME_LIMIT:?}: {slow:?}"
    );
    finish("every_example_matches_onnx_runtime", &report);
}

// ---------------------------------------------------------------- the case table

/// The builtins a model source calls, each with the argument names the call gives:
/// `f(...)`, a pipeline stage `|> f`, and an initializer `init: f`.
fn calls(src: &str) -> Vec<(String, BTreeSet<String>)> {
    let text: String = src
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    // Tokens: identifiers (and numbers), `|>`, and single characters.
    let mut tokens: Vec<String> = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c == '|' && chars.get(i + 1) == Some(&'>') {
            tokens.push("|>".into());
            i += 2;
        } else {
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
            i += 1;
        }
    }
    let is_ident = |t: &str| t.starts_with(|c: char| c.is_alphabetic() || c == '_');
    let mut out = Vec::new();
    for (j, t) in tokens.iter().enumerate() {
        if !is_ident(t) {
            continue;
        }
        let before = |k: usize| j.checked_sub(k).map(|b| tokens[b].as_str());
        let opens = tokens.get(j + 1).is_some_and(|n| n == "(");
        let staged = before(1) == Some("|>");
        let init = before(1) == Some(":") && before(2) == Some("init");
        if !(opens || staged || init) {
            continue;
        }
        let mut args = BTreeSet::new();
        if opens {
            let mut depth = 0;
            for (k, u) in tokens.iter().enumerate().skip(j + 1) {
                match u.as_str() {
                    "(" | "[" => depth += 1,
                    ")" | "]" => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ if depth == 1
                        && is_ident(u)
                        && tokens.get(k + 1).is_some_and(|n| n == ":") =>
                    {
                        args.insert(u.clone());
                    }
                    _ => {}
                }
            }
        }
        out.push((t.clone(), args));
    }
    out
}

/// Every builtin of the registry (layers, shaping layers, activations, functions,
/// losses, regularizers, initializers) is called by some case of [`CASES`], every
/// optional argument of a layer, shaping layer, activation or function is named by some
/// call, and every variant (`gelu(approximate: tanh)`) is chosen by some call: a new
/// builtin or argument fails here until the table exports it.
#[test]
fn every_builtin_has_an_export_case() {
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, src) in CASES {
        for (f, args) in calls(src) {
            used.entry(f).or_default().extend(args);
        }
    }
    let mut missing = Vec::new();
    for sig in catalog::all() {
        let Some(args) = used.get(sig.name) else {
            missing.push(format!("`{}` ({:?})", sig.name, sig.kind));
            continue;
        };
        if !matches!(
            sig.kind,
            Kind::Layer | Kind::Shaping | Kind::Activation | Kind::Function
        ) {
            continue;
        }
        for (arg, def) in sig.params {
            if *def == Def::Required || *arg == "init" || args.contains(*arg) {
                continue;
            }
            missing.push(format!("`{}` with its argument `{arg}`", sig.name));
        }
    }
    let squeezed: Vec<String> = CASES
        .iter()
        .map(|(_, src)| src.split_whitespace().collect::<String>())
        .collect();
    for e in Elem::ALL {
        if let Some(Spelling::Variant { of, arg, value, .. }) = e.def().traits.dsl {
            let call = format!("{of}({arg}:{value})");
            if !squeezed.iter().any(|s| s.contains(&call)) {
                missing.push(format!("`{of}({arg}: {value})` ({})", e.def().name));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "no case of CASES in tests/export.rs uses: {}",
        missing.join(", ")
    );
}

#[test]
fn the_call_scanner_sees_calls_stages_and_initializers() {
    let c = calls(
        "model m {\n  h = x |> dense(4, init: he) |> relu  # max(\n  y = gelu(h, approximate: tanh) + sum(h, axis: [1, 2])\n  z = concat(a, b, axis: 1) |> spp(levels: [1, 2]) as head\n}\n",
    );
    let names: Vec<&str> = c.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["dense", "he", "relu", "gelu", "sum", "concat", "spp"],
        "{c:?}"
    );
    let args = |k: usize| c[k].1.iter().map(String::as_str).collect::<Vec<_>>();
    assert_eq!(args(0), ["init"]);
    assert_eq!(args(3), ["approximate"]);
    assert_eq!(args(4), ["axis"]);
    assert_eq!(args(6), ["levels"]);
}

/// Cases exported at every supported opset (at batch 7), beyond [`OTHER_OPSETS`]: the
/// elementwise functions, normalization, reductions and softmax have operators that
/// appear or change form between opsets.
const EVERY_OPSET: &[&str] = &["activations", "layernorm", "reductions", "softmax_axis"];

/// Every case of the table, with random weights, at batch 1 and 7 at the default opset
/// and at batch 7 at [`OTHER_OPSETS`] (every opset for [`EVERY_OPSET`]).
#[test]
fn every_case_matches_onnx_runtime() {
    let Some(py) = python("every_case_matches_onnx_runtime") else {
        return;
    };
    let dir = Scratch::new("cases");
    let mut names = BTreeSet::new();
    let mut targets = Vec::new();
    for (k, (name, src)) in CASES.iter().enumerate() {
        assert!(names.insert(*name), "case `{name}` twice");
        let file = dir.write(&format!("{name}.kiln"), src);
        for mut t in random_targets("case", &file, &dir.0, 7000 + 10 * k as u64) {
            t.other_opsets = if EVERY_OPSET.contains(name) {
                OPSETS.filter(|&o| o != DEFAULT_OPSET).collect()
            } else {
                OTHER_OPSETS.to_vec()
            };
            targets.push(t);
        }
    }
    let report = run_targets(&targets, &py, &dir.0);
    finish("every_case_matches_onnx_runtime", &report);
}

// ---------------------------------------------------------------- standardization

/// The tensors of a safetensors file, by name.
fn safetensors_f32(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).expect("read the checkpoint");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("a safetensors file");
    st.tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == Dtype::F32)
        .map(|(n, v)| {
            let data = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (n, data)
        })
        .collect()
}

/// Trains `file` for `epochs` into `ckpt` (quietly, from the repository root).
fn train(file: &Path, extra: &[&str], ckpt: &Path) {
    let mut args = vec!["train", s(file), "--quiet", "--save", s(ckpt)];
    args.extend(extra);
    let o = kiln(&args);
    assert_eq!(code(&o), 0, "kiln {args:?}: {}", stderr(&o));
}

/// Asserts that the checkpoint standardizes `names` with statistics that matter (some
/// mean away from 0, some deviation away from 1).
fn assert_standardizes(ckpt: &Path, names: &[&str]) {
    let t = safetensors_f32(ckpt);
    for n in names {
        let (mean, std) = (
            t.get(&format!("standardize.{n}.mean")),
            t.get(&format!("standardize.{n}.std")),
        );
        let (Some(mean), Some(std)) = (mean, std) else {
            panic!("{}: no standardization of `{n}`", ckpt.display());
        };
        assert!(
            mean.iter().any(|m| m.abs() > 0.5) && std.iter().any(|s| (s - 1.0).abs() > 0.2),
            "{}: `{n}` has trivial statistics: mean {mean:?}, std {std:?}",
            ckpt.display()
        );
    }
}

/// A regression model whose float target is standardized, with a float input of rank 3
/// and a class-id input beside a plain one (class ids keep mean 0 and deviation 1). Its
/// first output is not the one the loss compares with the target, so only `out` is turned
/// back into the target's units (not `twice`, computed from it, nor `feat`).
const REGRESSION: &str = "model reg {
  input  x: [N, 3]
  input  s: [N, 2, 2]
  input  tok: class[N, 3] of 5
  target y: [N, 2]
  e   = tok |> embedding(5, 2) |> flatten
  h   = concat(x, flatten(s), e, axis: 1) |> dense(8) |> tanh
  output feat = h |> dense(3)
  out = h |> dense(2)
  output out
  output twice = out * 2
  loss mse(out, y)
}

train reg {
  optimizer adam(lr: 0.01)
  batch 8
  epochs 2
  standardize true
  seed 3
}
";

/// A model that outputs an input: with standardization, the standardized input (what
/// `kiln predict` gives), which cannot have the input's name in ONNX (E0701); named, it
/// exports.
const ECHO: &str = "model echo {
  input  x: [N, 3]
  target y: [N, 2]
  out = x |> dense(2)
  output x
  output out
  loss mse(out, y)
}

train echo {
  standardize true
  seed 1
}
";

/// Checkpoints of `kiln train` carry standardization: the export bakes it in, so ONNX
/// Runtime fed the raw inputs gives what `kiln predict` gives on them, regression
/// outputs in the target's units included. Every example whose train block standardizes
/// (classifiers: iris, digits with an input of rank 2, 3 and 4, digits' constant pixels,
/// breast cancer's `bce`, whose target is not standardized), trained for one epoch and fed
/// the first rows of its test set; and a regression model.
#[test]
fn checkpoints_with_standardization_match_onnx_runtime() {
    let Some(py) = python("checkpoints_with_standardization_match_onnx_runtime") else {
        return;
    };
    let dir = Scratch::new("standardize");
    let mut targets = Vec::new();
    for ex in examples() {
        let model = kiln::compile_file(&ex).expect("the example compiles");
        let cfg = model.train_config();
        if !cfg.standardize {
            continue;
        }
        let name = format!("examples/{}", ex.file_name().unwrap().to_string_lossy());
        let test = cfg.test_data.as_ref().expect("a test set");
        let test = ex.parent().unwrap().join(test);
        let ckpt = dir.path(&format!("{}.safetensors", stem(&name)));
        train(&ex, &["--epochs", "1"], &ckpt);
        let info = models_in(&ex).remove(0);
        assert_standardizes(&ckpt, &[info.inputs[0].name.as_str()]);
        let target = model.targets()[0].0.clone();
        targets.push(Target {
            label: format!("{name} trained"),
            info,
            export_weights: Some(ckpt.clone()),
            predict_weights: ckpt,
            other_opsets: vec![13],
            inputs: Inputs::Rows(csv_rows(&test, &target)),
        });
    }
    assert!(targets.len() >= 5, "examples that standardize");
    // The regression model, on data where x and s lie in 100..200 and y is in the
    // thousands.
    let file = dir.write("reg.kiln", REGRESSION);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let rows = 64;
    let x: Vec<f32> = (0..rows * 3).map(|_| rng.gen_range(100.0..200.0)).collect();
    let sv: Vec<f32> = (0..rows * 4).map(|_| rng.gen_range(100.0..200.0)).collect();
    let tok: Vec<i64> = (0..rows * 3).map(|_| rng.gen_range(0..5)).collect();
    let y: Vec<f32> = (0..rows)
        .flat_map(|r| {
            let (x, s) = (&x[3 * r..3 * r + 3], &sv[4 * r..4 * r + 4]);
            [300.0 * x[0] + 1000.0 + s[0], -20.0 * x[1] + 5.0 * s[3]]
        })
        .collect();
    let arr =
        |shape: &[usize], v: Vec<f32>| Array::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap());
    let data = dir.path("reg.npz");
    write_npz(
        &data,
        &[
            ("x".into(), arr(&[rows, 3], x)),
            ("s".into(), arr(&[rows, 2, 2], sv)),
            (
                "tok".into(),
                Array::I64(ArrayD::from_shape_vec(IxDyn(&[rows, 3]), tok).unwrap()),
            ),
            ("y".into(), arr(&[rows, 2], y)),
        ],
    );
    let ckpt = dir.path("reg.safetensors");
    train(&file, &["--train", s(&data)], &ckpt);
    assert_standardizes(&ckpt, &["x", "s", "y"]);
    targets.push(Target {
        label: "regression model trained".into(),
        info: models_in(&file).remove(0),
        export_weights: Some(ckpt.clone()),
        predict_weights: ckpt,
        other_opsets: vec![13],
        inputs: Inputs::Random(100.0, 200.0),
    });
    // The model that outputs its input, trained on the same x: refused under the input's
    // name, exported under its own.
    let file = dir.write("echo.kiln", ECHO);
    let ckpt = dir.path("echo.safetensors");
    train(&file, &["--train", s(&data), "--epochs", "1"], &ckpt);
    assert_standardizes(&ckpt, &["x"]);
    let refused = dir.path("echo.onnx");
    let o = kiln(&["export", s(&file), "--weights", s(&ckpt), "-o", s(&refused)]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("error[E0701]: output `x` is the standardized input `x`"),
        "{}",
        stderr(&o)
    );
    assert!(!refused.exists());
    let file = dir.write(
        "echo.kiln",
        &ECHO.replace("output x\n", "output x_standardized = x * 1\n"),
    );
    train(&file, &["--train", s(&data), "--epochs", "1"], &ckpt);
    targets.push(Target {
        label: "input-echoing model trained".into(),
        info: models_in(&file).remove(0),
        export_weights: Some(ckpt.clone()),
        predict_weights: ckpt,
        other_opsets: Vec::new(),
        inputs: Inputs::Random(100.0, 200.0),
    });
    let report = run_targets(&targets, &py, &dir.0);
    finish(
        "checkpoints_with_standardization_match_onnx_runtime",
        &report,
    );
}

/// Without `--weights`, the export holds the seeded initialization: what the model's
/// train block's seed initializes (a session's parameters, saved), with a warning.
#[test]
fn without_weights_the_seeded_initialization_matches_onnx_runtime() {
    let Some(py) = python("without_weights_the_seeded_initialization_matches_onnx_runtime") else {
        return;
    };
    let dir = Scratch::new("seeded");
    let mut targets = Vec::new();
    for ex in ["examples/xor.kiln", "examples/digits_bn_dropout.kiln"] {
        let file = root().join(ex);
        let model = kiln::compile_file(&file).expect("the example compiles");
        let seed = model.train_config().seed;
        let saved = dir.path(&format!("{}.seeded.safetensors", stem(ex)));
        model
            .session(seed)
            .expect("a session")
            .save(&saved)
            .expect("save the initialization");
        targets.push(Target {
            label: format!("{ex} seeded (seed {seed})"),
            info: models_in(&file).remove(0),
            export_weights: None,
            predict_weights: saved,
            other_opsets: Vec::new(),
            inputs: Inputs::Random(-2.0, 2.0),
        });
    }
    let report = run_targets(&targets, &py, &dir.0);
    finish(
        "without_weights_the_seeded_initialization_matches_onnx_runtime",
        &report,
    );
}

// ---------------------------------------------------------------- the command line

const XOR: &str = "examples/xor.kiln";

/// A model with one error: an unknown name (E0201).
const UNKNOWN_NAME: &str = "model m {
  input x: [N, 4]
  target y: [N, 1]
  h = xx |> dense(1)
  output h
  loss mse(h, y)
}
";

#[test]
fn export_without_weights_warns_and_exits_0() {
    let dir = Scratch::new("warns");
    let out = dir.path("xor.onnx");
    let o = kiln(&["export", XOR, "-o", s(&out)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("warning") && err.to_lowercase().contains("seed"),
        "a warning that mentions the seeded initialization: {err}"
    );
    assert!(std::fs::metadata(&out).expect("the model").len() > 0);
    assert_eq!(dir.files(), ["xor.onnx"], "only the model is left");
    // With weights, no warning.
    let w = dir.path("w.safetensors");
    random_weights(&models_in(&root().join(XOR)).remove(0), &w, 1);
    let o = kiln(&["export", XOR, "--weights", s(&w), "-o", s(&out)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stderr(&o), "", "no warning with --weights");
}

/// The same export writes the same bytes.
#[test]
fn an_export_is_deterministic() {
    let dir = Scratch::new("deterministic");
    let (a, b) = (dir.path("a.onnx"), dir.path("b.onnx"));
    for out in [&a, &b] {
        let o = kiln(&["export", "examples/digits_gru.kiln", "-o", s(out)]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
}

#[test]
fn every_supported_opset_is_accepted() {
    let dir = Scratch::new("opsets");
    for k in OPSETS {
        let out = dir.path(&format!("xor{k}.onnx"));
        let o = kiln(&["export", XOR, "--opset", &k.to_string(), "-o", s(&out)]);
        assert_eq!(code(&o), 0, "--opset {k}: {}", stderr(&o));
        assert!(out.exists(), "--opset {k}");
    }
}

/// Asserts that `kiln ARGS` exits with `want` and leaves no file in `dir` beyond `keep`
/// (no partial model, no temporary file); returns stderr.
fn fails(dir: &Scratch, args: &[&str], want: i32, keep: &[&str]) -> String {
    let o = kiln(args);
    let err = stderr(&o);
    assert_eq!(code(&o), want, "kiln {args:?}: {err}");
    assert!(!err.is_empty(), "kiln {args:?} says why");
    assert_eq!(dir.files(), keep, "kiln {args:?} leaves no file behind");
    err
}

#[test]
fn usage_and_io_errors_exit_2_and_write_nothing() {
    let dir = Scratch::new("usage");
    let out = dir.path("out.onnx");
    let o = s(&out);
    // No -o.
    fails(&dir, &["export", XOR], 2, &[]);
    // A model file that does not exist, or is a folder.
    fails(&dir, &["export", "examples/no_such.kiln", "-o", o], 2, &[]);
    fails(&dir, &["export", "examples", "-o", o], 2, &[]);
    // Weights that cannot be read.
    let none = dir.path("none.safetensors");
    fails(
        &dir,
        &["export", XOR, "--weights", s(&none), "-o", o],
        2,
        &[],
    );
    // An output that cannot be written.
    let nowhere = dir.path("no/such/folder/out.onnx");
    fails(&dir, &["export", XOR, "-o", s(&nowhere)], 2, &[]);
    // Opsets out of range name the range.
    for k in ["12", "99", "0"] {
        let err = fails(&dir, &["export", XOR, "--opset", k, "-o", o], 2, &[]);
        assert!(
            err.contains("13") && err.contains("28"),
            "--opset {k}: names the supported range 13..=28: {err}"
        );
    }
}

#[test]
fn a_wrong_model_exits_1_and_writes_nothing() {
    let dir = Scratch::new("wrong_model");
    let bad = dir.write("bad.kiln", UNKNOWN_NAME);
    let out = dir.path("out.onnx");
    let err = fails(
        &dir,
        &["export", s(&bad), "--color", "never", "-o", s(&out)],
        1,
        &["bad.kiln"],
    );
    assert!(err.contains("error[E0201]"), "{err}");
    let err = fails(
        &dir,
        &["export", XOR, "--model", "nope", "-o", s(&out)],
        1,
        &["bad.kiln"],
    );
    assert!(err.contains("nope"), "names the model: {err}");
    // An output computed from a target cannot be exported (E0700).
    let needs_target = dir.write(
        "needs_target.kiln",
        "model t {\n  input x: [N, 3]\n  target y: [N, 3]\n  out = x |> dense(3)\n  output out\n  output err = out - y\n  loss mse(out, y)\n}\n",
    );
    let err = fails(
        &dir,
        &[
            "export",
            s(&needs_target),
            "--color",
            "never",
            "-o",
            s(&out),
        ],
        1,
        &["bad.kiln", "needs_target.kiln"],
    );
    assert!(err.contains("error[E0700]") && err.contains("err"), "{err}");
}

/// Weights that do not fit the model are refused as `kiln predict` refuses them (same
/// exit code, the tensor named), and a failed export leaves an existing output as it was.
#[test]
fn weights_that_do_not_fit_are_refused_like_predict() {
    let dir = Scratch::new("misfit");
    let out = dir.write("out.onnx", "an older export");
    let data = root().join("examples/data/xor.csv");
    let info = models_in(&root().join(XOR)).remove(0);
    // A tensor of the wrong shape.
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = info
        .params
        .iter()
        .map(|(n, shape)| (n.clone(), shape.clone(), vec![0.5; shape.iter().product()]))
        .collect();
    tensors[0].1 = vec![3, 2];
    tensors[0].2 = vec![0.5; 6];
    let misfit = dir.path("misfit.safetensors");
    write_safetensors(&misfit, &tensors);
    // Not a safetensors file.
    let garbage = dir.write("garbage.safetensors", "not a safetensors file");
    // A checkpoint of another model.
    let iris = dir.path("iris.safetensors");
    kiln::compile_file(root().join("examples/iris.kiln"))
        .unwrap()
        .session(1)
        .unwrap()
        .save(&iris)
        .unwrap();
    let keep = [
        "garbage.safetensors",
        "iris.safetensors",
        "misfit.safetensors",
        "out.onnx",
    ];
    for (w, names) in [
        (&misfit, Some(tensors[0].0.as_str())),
        (&garbage, None),
        (&iris, None),
    ] {
        let p = kiln(&["predict", XOR, "--weights", s(w), "--data", s(&data)]);
        assert_ne!(code(&p), 0, "predict refuses {}", w.display());
        let err = fails(
            &dir,
            &["export", XOR, "--weights", s(w), "-o", s(&out)],
            code(&p),
            &keep,
        );
        if let Some(n) = names {
            assert!(err.contains(n), "names `{n}`: {err}");
        }
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "an older export",
            "a failed export leaves the existing output alone"
        );
    }
}

// ---------------------------------------------------------------- the cases

/// Small models that together call every builtin of the language (with every optional
/// argument named, and non-default values where they change the result), each with a
/// loss as real models have one; [`every_builtin_has_an_export_case`] holds the table to
/// the registry. Each is checked by `kiln check`'s rules when its test loads it.
const CASES: &[(&str, &str)] = &[
    (
        "dense",
        "model dense {
  input  x: [N, 5]
  input  s: [N, 4, 5]
  input  t: [N, 2, 3, 5]
  target y: [N, 3]
  target ys: [N, 4, 2]
  h     = x |> dense(8, init: normal(0.1)) |> relu
  out   = h |> dense(3, bias: false, init: uniform(0.3))
  seq   = s |> dense(6, init: xavier) |> tanh |> dense(2)
  deep  = t |> dense(4, init: he)
  output out
  output seq
  output deep
  loss mse(out, y) + 0.5 * mae(seq, ys)
  regularize l2(1e-3)
  regularize l1(1e-4) on seq
}
",
    ),
    (
        "conv1d",
        "model conv1d {
  input  x: [N, 3, 16]
  target y: [N, 2]
  a   = x |> conv1d(4, 3, stride: 2, pad: 1, dilation: 2) |> relu
  b   = a |> conv1d(5, 1, bias: false)
  c   = x |> conv1d(2, 5)
  d   = x |> conv1d(3, 4, stride: 3, pad: 2)
  out = concat(flatten(b), flatten(c), flatten(d), axis: 1) |> dense(2)
  output a
  output b
  output c
  output d
  output out
  loss huber(out, y, delta: 0.5)
}
",
    ),
    (
        "conv2d",
        "model conv2d {
  input  image: [N, 2, 9, 8]
  target y: [N, 3]
  a   = image |> conv2d(4, (3, 2), stride: (2, 1), pad: (1, 0), dilation: (1, 2)) |> relu
  b   = a |> conv2d(3, 3, pad: 1, stride: 2)
  c   = image |> conv2d(2, 1, bias: false)
  d   = image |> conv2d(3, (1, 3), dilation: 2, pad: (0, 2))
  e   = image |> conv2d(2, 3, stride: (1, 3), pad: (2, 1), dilation: (2, 1))
  out = concat(global_avgpool(b), global_maxpool(c), global_avgpool(d), global_maxpool(e), axis: 1) |> dense(3)
  output a
  output b
  output c
  output d
  output e
  output out
  loss bce(out, y)
}
",
    ),
    (
        "pool1d",
        "model pool1d {
  input  x: [N, 2, 11]
  target y: [N, 2]
  m1  = x |> maxpool1d(3, stride: 2, pad: 1)
  m2  = x |> maxpool1d(2)
  m3  = x |> maxpool1d(4, stride: 1, pad: 2)
  a1  = x |> avgpool1d(3, stride: 2, pad: 1)
  a2  = x |> avgpool1d(3, stride: 2, pad: 1, count_pad: false)
  a3  = x |> avgpool1d(4, stride: 3)
  a4  = x |> avgpool1d(5, stride: 2, pad: 2, count_pad: false)
  g1  = x |> global_avgpool
  g2  = x |> global_maxpool
  out = concat(m1, a1, a2, axis: 2) |> flatten |> dense(2)
  output m1
  output m2
  output m3
  output a1
  output a2
  output a3
  output a4
  output g1
  output g2
  output out
  loss mse(out, y)
}
",
    ),
    (
        "pool2d",
        "model pool2d {
  input  x: [N, 2, 7, 6]
  target y: [N, 2]
  m1  = x |> maxpool2d(2)
  m2  = x |> maxpool2d((3, 2), stride: (2, 1), pad: (1, 0))
  m3  = x |> maxpool2d(3, stride: 2, pad: 1)
  a1  = x |> avgpool2d(3, stride: 2, pad: 1)
  a2  = x |> avgpool2d(3, stride: 2, pad: 1, count_pad: false)
  a3  = x |> avgpool2d((2, 3), stride: (1, 2), pad: (1, 1), count_pad: false)
  a4  = x |> avgpool2d((2, 3), stride: (1, 2), pad: (1, 1))
  a5  = x |> avgpool2d(2)
  g1  = x |> global_avgpool
  g2  = x |> global_maxpool
  out = concat(g1, g2, axis: 1) |> dense(2)
  output m1
  output m2
  output m3
  output a1
  output a2
  output a3
  output a4
  output a5
  output out
  loss mae(out, y)
}
",
    ),
    (
        "spp",
        "model spp {
  input  x: [N, 3, 7, 7]
  input  z: [N, 2, 9, 10]
  input  w: [N, 2, 5, 3]
  target y: [N, 2]
  a   = x |> spp(levels: [1, 2, 3])
  b   = z |> spp
  c   = w |> spp(levels: [2, 4])
  out = concat(a, b, c, axis: 1) |> dense(2)
  output a
  output b
  output c
  output out
  loss l1_loss(out, y)
}
",
    ),
    (
        "batchnorm",
        "model batchnorm {
  input  x: [N, 6]
  input  image: [N, 3, 5, 4]
  target label: class[N] of 4
  a      = x |> dense(5) |> batchnorm |> relu
  b      = image |> batchnorm(eps: 1e-3, momentum: 0.2)
  c      = image |> conv2d(4, 3, pad: 1) |> batchnorm |> relu |> global_avgpool
  s      = x |> reshape([N, 2, 3]) |> batchnorm
  logits = concat(a, c, axis: 1) |> dense(4)
  output a
  output b
  output s
  output logits
  loss cross_entropy(logits, label, smoothing: 0.1)
}
",
    ),
    (
        "layernorm",
        "model layernorm {
  input  x: [N, 4, 6]
  input  z: [N, 5]
  target label: class[N] of 3
  a      = x |> layernorm
  b      = z |> dense(7) |> layernorm(eps: 1e-3) |> relu
  logits = concat(flatten(a), b, axis: 1) |> dense(3)
  output a
  output b
  output logits
  loss focal(logits, label, gamma: 1.5, alpha: 0.5)
}
",
    ),
    (
        "prelu",
        "model prelu {
  input  x: [N, 3, 5]
  input  z: [N, 4]
  input  image: [N, 2, 4, 4]
  target label: class[N] of 3
  a      = x |> prelu
  b      = z |> dense(4) |> prelu
  c      = image |> conv2d(3, 3, pad: 1) |> prelu
  logits = concat(flatten(a), b, flatten(c), axis: 1) |> dense(3)
  output a
  output b
  output c
  output logits
  loss hinge(logits, label)
}
",
    ),
    (
        "embedding",
        "model embedding {
  input  tokens: class[N, 6] of 11
  input  word: class[N] of 5
  target probs: [N, 3]
  e      = tokens |> embedding(11, 4)
  f      = tokens |> embedding(11, 3, frozen: true) |> mean(axis: 1)
  w      = word |> embedding(5, 2)
  logits = concat(e |> gru(5, sequence: false), f, w, axis: 1) |> dense(3)
  output e
  output w
  output logits
  loss cross_entropy(logits, probs)
}
",
    ),
    (
        "rnn",
        "model rnn {
  input  x: [N, 5, 3]
  target y: [N, 1]
  r1  = x |> rnn(4)
  r2  = x |> rnn(4, bidirectional: true)
  r3  = x |> rnn(4, sequence: false)
  r4  = x |> rnn(4, bidirectional: true, sequence: false)
  r5  = x |> rnn(3, activation: relu)
  r6  = x |> rnn(3, activation: relu, bidirectional: true)
  r7  = x |> rnn(3, activation: relu, sequence: false)
  r8  = x |> rnn(3, activation: relu, bidirectional: true, sequence: false)
  out = concat(r3, r4, r7, r8, axis: 1) |> dense(1)
  output r1
  output r2
  output r3
  output r4
  output r5
  output r6
  output r7
  output r8
  output out
  loss exponential(out, y)
}
",
    ),
    (
        "lstm",
        "model lstm {
  input  x: [N, 6, 3]
  target y: [N, 2]
  l1  = x |> lstm(4)
  l2  = x |> lstm(4, bidirectional: true)
  l3  = x |> lstm(4, sequence: false)
  l4  = x |> lstm(4, bidirectional: true, sequence: false)
  l5  = l2 |> lstm(3, bidirectional: true) |> last
  out = concat(l3, l4, l5, axis: 1) |> dense(2)
  output l1
  output l2
  output l3
  output l4
  output l5
  output out
  loss hinge(out, y)
}
",
    ),
    (
        "gru",
        "model gru {
  input  x: [N, 6, 3]
  target y: [N, 2]
  g1  = x |> gru(4)
  g2  = x |> gru(4, bidirectional: true)
  g3  = x |> gru(4, sequence: false)
  g4  = x |> gru(4, bidirectional: true, sequence: false)
  g5  = g1 |> gru(3) |> first
  out = concat(g3, g4, g5, axis: 1) |> dense(2)
  output g1
  output g2
  output g3
  output g4
  output g5
  output out
  loss mse(out, y)
}
",
    ),
    (
        "first_last",
        "model first_last {
  input  x: [N, 5, 3]
  target y: [N, 3]
  a   = x |> first
  b   = last(x)
  c   = x |> dense(4) |> first
  out = a + b
  output a
  output b
  output c
  output out
  loss mse(out, y)
}
",
    ),
    (
        "activations",
        "model activations {
  input  x: [N, 3, 4]
  target y: [N, 1]
  allow activation_before_regression_loss
  v          = 3 * x
  o_relu     = relu(v)
  o_leaky    = v |> leaky_relu
  o_leaky2   = v |> leaky_relu(alpha: 0.2)
  o_rrelu    = v |> rrelu
  o_rrelu2   = v |> rrelu(lower: 0.1, upper: 0.5)
  o_elu      = v |> elu
  o_elu2     = v |> elu(alpha: 0.5)
  o_sigmoid  = v |> sigmoid
  o_tanh     = v |> tanh
  o_identity = v |> identity
  o_gelu     = v |> gelu
  o_gelu2    = v |> gelu(approximate: tanh)
  o_silu     = v |> silu
  o_softplus = v |> softplus
  o_mish     = v |> mish
  o_hswish   = v |> hardswish
  o_exp      = exp(x)
  o_log      = log(abs(v) + 0.25)
  o_sqrt     = sqrt(abs(v) + 0.1)
  o_abs      = abs(v)
  o_softmax  = v |> softmax
  o_logsm    = v |> log_softmax
  w          = 25 * x
  big        = concat(softplus(w), mish(w), silu(w), gelu(w), gelu(w, approximate: tanh), elu(w), sigmoid(w), tanh(w), hardswish(w), softmax(w), log_softmax(w), axis: 2)
  out        = x |> flatten |> dense(1) |> softplus
  output o_relu
  output o_leaky
  output o_leaky2
  output o_rrelu
  output o_rrelu2
  output o_elu
  output o_elu2
  output o_sigmoid
  output o_tanh
  output o_identity
  output o_gelu
  output o_gelu2
  output o_silu
  output o_softplus
  output o_mish
  output o_hswish
  output o_exp
  output o_log
  output o_sqrt
  output o_abs
  output o_softmax
  output o_logsm
  output big
  output out
  loss mse(out, y)
}
",
    ),
    (
        "softmax_axis",
        "model softmax_axis {
  input  x: [N, 3, 4, 2]
  target label: class[N] of 4
  a      = softmax(x, axis: 1)
  b      = x |> log_softmax(axis: 2)
  c      = x |> softmax(axis: -2)
  d      = x |> log_softmax(axis: -3)
  e      = x |> softmax
  logits = x |> flatten |> dense(4)
  output a
  output b
  output c
  output d
  output e
  output probs = softmax(logits)
  loss cross_entropy(logits, label)
}
",
    ),
    (
        "reductions",
        "model reductions {
  input  x: [N, 3, 4, 5]
  target y: [N]
  s1 = sum(x)
  s2 = sum(x, axis: [2, 3], keepdims: true)
  s3 = x |> sum(axis: -1)
  m1 = mean(x, axis: 1)
  m2 = mean(x, keepdims: true)
  m3 = mean(x, axis: [1, 3])
  x1 = max(x, axis: [1, 3])
  x2 = max(x)
  x3 = max(x, axis: 2, keepdims: true)
  n1 = min(x, axis: -1, keepdims: true)
  n2 = min(x, axis: [1, 2])
  n3 = min(x)
  output s1
  output s2
  output s3
  output m1
  output m2
  output m3
  output x1
  output x2
  output x3
  output n1
  output n2
  output n3
  loss mse(s1, y)
}
",
    ),
    (
        "concat",
        "model concat {
  input  a: [N, 3, 4]
  input  b: [N, 2, 4]
  input  c: [N, 3, 5]
  input  z: [N, 6]
  target y: [N, 2]
  c1  = concat(a, b, axis: 1)
  c2  = concat(a, c, axis: 2)
  c3  = concat(a, c, a, axis: -1)
  c4  = concat(b, b, b, axis: -2)
  c5  = concat(flatten(a), z, axis: 1)
  out = c5 |> dense(2)
  output c1
  output c2
  output c3
  output c4
  output c5
  output out
  loss mse(out, y)
}
",
    ),
    (
        "reshape",
        "model reshape {
  input  x: [N, 2, 3, 4]
  target y: [N, 2]
  a   = x |> reshape([N, 6, 4])
  b   = a |> reshape([N, -1, 2])
  c   = x |> flatten
  d   = c |> reshape([N, 4, 3, 2]) |> flatten |> dense(2)
  output a
  output b
  output c
  output d
  loss mse(d, y)
}
",
    ),
    (
        "arithmetic",
        "model arithmetic {
  input  x: [N, 3, 4]
  input  r: [N, 1, 4]
  input  w: [N, 3, 1]
  target y: [N, 3, 4]
  a   = x + r
  b   = x - w
  c   = x * r
  d   = x / (abs(w) + 1)
  e   = 2.5 * x - 1
  f   = -x + 0.5
  g   = 1 / (x * x + 1)
  h   = r - x
  i   = w * r
  j   = -(x |> dense(2)) / 3
  k   = (x + w) * (r - 0.5) / 2 - -x
  output a
  output b
  output c
  output d
  output e
  output f
  output g
  output h
  output i
  output j
  output k
  loss mse(k, y)
}
",
    ),
    (
        "matmul",
        "model matmul {
  input  x: [N, 3, 4]
  input  v: [N, 4, 2]
  input  z: [N, 4]
  input  u: [N, 3]
  input  p: [N, 2, 3, 4]
  input  q: [N, 2, 4, 5]
  target y: [N, 3, 2]
  mm  = x @ v
  vm  = z @ v
  mv  = x @ z
  um  = u @ x
  vv  = z @ z
  bmm = p @ q
  pv  = p @ v
  xq  = x @ q
  zq  = z @ q
  out = (x |> dense(4)) @ v
  output pv
  output xq
  output zq
  output mm
  output vm
  output mv
  output um
  output vv
  output bmm
  output out
  loss mse(out, y)
}
",
    ),
    (
        "dropout",
        "model dropout {
  input  x: [N, 6]
  input  s: [N, 2, 3, 3]
  target label: class[N] of 2
  a      = x |> dropout(0.3)
  b      = s |> dropout(0.9)
  logits = x |> dense(8) |> relu |> dropout(0.5) |> dense(2)
  output a
  output b
  output c = a
  output logits
  loss cross_entropy(logits, label)
}
",
    ),
    (
        "shared_layers",
        "block mix(x: [N, F], z: [N, F]) {
  h = x |> dense(F) |> relu
  return h + z
}

block cell(x: [N, F]) {
  y = x |> dense(F) |> tanh
  return x + y
}

model shared_layers {
  input  x: [N, 4]
  input  z: [N, 4]
  target label: class[N] of 3
  allow unused, symmetric_init
  layer enc = dense(4)
  layer r   = cell
  a      = x |> enc
  b      = z |> enc |> tanh
  m1     = a |> mix(b)
  m2     = m1 |> mix(a)
  c1     = m2 |> r
  c2     = c1 |> r
  k      = z |> dense(4, init: zeros) |> dense(4, init: ones) |> dense(4, init: constant(0.5))
  logits = concat(c2, k, axis: 1) |> dense(3) as head
  err    = zero_one(logits, label)
  output c2
  output logits
  loss cross_entropy(logits, label)
}
",
    ),
    (
        "outputs",
        "model outputs {
  input  x: [N, 3]
  input  z: [N, 2, 2]
  input  tok: class[N, 2] of 4
  target y: [N, 2]
  h = x |> dense(2)
  output c = x
  output d = x |> dropout(0.2)
  output h
  output h2 = h
  output z2 = z |> dropout(0.1)
  output t2 = tok
  loss mse(h, y)
}

model second_model {
  input  x: [B, 4]
  target label: class[B] of 3
  logits = x |> dense(3, bias: false)
  e = x |> reshape([B, 2, 2]) |> dense(3, bias: false)
  output lp = log_softmax(logits)
  output e
  loss cross_entropy(logits, label)
}
",
    ),
    (
        "input_outputs",
        "model input_outputs {
  input  x: [N, 3]
  input  tok: class[N, 2] of 4
  target y: [N, 2]
  h = x |> dense(2)
  output x
  output tok
  output h
  loss mse(h, y)
}
",
    ),
];
