//! `kiln build` end to end: the MLP, CNN and GRU digits examples are built into static
//! libraries, linked into a C program with `cc`, and their outputs compared with `kiln
//! predict`'s on the same weights and rows: bit-identical at `kiln predict`'s batch size,
//! and at batch 1 and 7 too; two threads calling predict at once get the same outputs;
//! a batch below 1 is refused. A training loop in C (`<model>_train_step`) takes the same
//! steps as the JIT from the same checkpoint: the same losses and parameters, bit for bit,
//! and the loss falls. Without `cc` the test fails in CI (CI=true) and is skipped
//! elsewhere.

use ndarray::ArrayD;
use ndarray_npy::NpzReader;
use std::path::Path;
mod tools;

use std::process::{Command, Output};
use tools::run;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// The rows of the test data that are predicted.
const ROWS: usize = 40;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn kiln(args: &[&str]) -> Output {
    run(Command::new(KILN)
        .args(args)
        .current_dir(root().join("examples")))
}

/// Whether `cc` runs: when not, CI fails and a developer's run skips.
fn have_cc() -> bool {
    tools::have("cc", "tests/build.rs needs a C compiler in CI")
}

/// Builds `libkiln_rt.a` beside the kiln binary, once per test run (the tests of this file
/// wait for it): `cargo build` makes it, `cargo test` does not, and one left by an
/// earlier build may be stale. It is built as `cargo test` builds: with the test profile
/// and with kiln's tests (so with their dependencies' features), so that the kiln library
/// `cargo test` has just compiled is reused and only the runtime crate is compiled.
fn runtime() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let exe = Path::new(KILN);
        let dir = exe.parent().expect("the binary's directory");
        let target = dir.parent().expect("the target directory");
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new(cargo)
            .args([
                "build",
                "-p",
                "kiln-rt",
                "-p",
                "kiln",
                "--lib",
                "--tests",
                "--profile",
            ])
            .arg(if profile == "release" {
                "release"
            } else {
                "test"
            })
            .env("CARGO_TARGET_DIR", target)
            .current_dir(root()));
    });
}

/// The C program: `app MODE ROWS CHUNK IN OUT`, with the model's header included as
/// `model.h` and its names passed as macros (M_PREDICT, M_IN0, M_OUT0 ... ).
const APP: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model.h"

static long rows;
static float *x, *expected;

/* Predicts every row, `chunk` rows per call, into y. */
static int predict_all(long chunk, float *y) {
  for (long r = 0; r < rows; r += chunk) {
    long b = rows - r < chunk ? rows - r : chunk;
    const void *in[1] = { x + r * M_IN0 };
    void *out[1] = { y + r * M_OUT0 };
    int s = M_PREDICT(b, in, out);
    if (s != 0) return s;
  }
  return 0;
}

static void *worker(void *arg) {
  float *y = malloc(rows * M_OUT0 * sizeof(float));
  long bad = 0;
  for (int rep = 0; rep < 20 && !bad; rep++) {
    if (predict_all(7, y) != 0 || memcmp(y, expected, rows * M_OUT0 * sizeof(float)) != 0)
      bad = 1;
  }
  free(y);
  (void)arg;
  return (void *)bad;
}

int main(int argc, char **argv) {
  if (argc != 6) return 64;
  rows = atol(argv[2]);
  long chunk = atol(argv[3]);
  x = malloc(rows * M_IN0 * sizeof(float));
  FILE *f = fopen(argv[4], "rb");
  if (!f || fread(x, sizeof(float), rows * M_IN0, f) != (size_t)(rows * M_IN0)) return 65;
  fclose(f);
  float *y = malloc(rows * M_OUT0 * sizeof(float));
  if (strcmp(argv[1], "predict") == 0) {
    int s = predict_all(chunk, y);
    if (s != 0) { fprintf(stderr, "predict returned %d\n", s); return 1; }
    f = fopen(argv[5], "wb");
    fwrite(y, sizeof(float), rows * M_OUT0, f);
    fclose(f);
    return 0;
  }
  if (strcmp(argv[1], "threads") == 0) {
    expected = malloc(rows * M_OUT0 * sizeof(float));
    if (predict_all(7, expected) != 0) return 1;
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, worker, NULL);
    long bad = 0;
    for (int i = 0; i < 2; i++) { void *r; pthread_join(t[i], &r); bad |= (long)r; }
    return bad ? 2 : 0;
  }
  if (strcmp(argv[1], "batch") == 0) {
    const void *in[1] = { x };
    void *out[1] = { y };
    if (M_PREDICT(0, in, out) == 0 || M_PREDICT(-3, in, out) == 0) return 3;
    if (M_PREDICT(1, in, NULL) == 0) return 4;
    return M_PREDICT(1, in, out);
  }
  return 64;
}
"#;

/// The C training loop: `train ROWS BATCH STEPS X Y OUT` takes STEPS steps on the ROWS
/// rows of X (floats) and Y (class ids), BATCH rows a step in turn, and writes each
/// step's loss, then every parameter, to OUT. The model's header is `model.h`; MODEL is
/// its name, `params.h` lists its parameters' sizes (PARAM_SIZES) and M_IN0, M_OUT0 are
/// as for APP. It checks the errors of the training calls first, and that a fresh
/// context predicts as the built library does.
const TRAIN_APP: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model.h"
#include "params.h"

#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
#define F(x) CAT(MODEL, x)

int main(int argc, char **argv) {
  if (argc != 7) return 64;
  long rows = atol(argv[1]), batch = atol(argv[2]), steps = atol(argv[3]);
  float *x = malloc(rows * M_IN0 * sizeof(float));
  int64_t *y = malloc(rows * sizeof(int64_t));
  FILE *f = fopen(argv[4], "rb");
  if (!f || fread(x, sizeof(float), rows * M_IN0, f) != (size_t)(rows * M_IN0)) return 65;
  fclose(f);
  f = fopen(argv[5], "rb");
  if (!f || fread(y, sizeof(int64_t), rows, f) != (size_t)rows) return 65;
  fclose(f);

  F(train) *ctx = F(train_new)();
  if (!ctx) return 10;
  float loss = 0;
  const void *in[1] = { x };
  const void *tg[1] = { y };
  if (F(train_step)(ctx, 0, in, tg, &loss) != 1) return 11;
  if (F(train_step)(ctx, batch, in, tg, NULL) != 2) return 12;
  if (F(train_step)(NULL, batch, in, tg, &loss) != 2) return 13;
  if (F(train_step)(ctx, batch, in, NULL, &loss) != 2) return 14;
  if (F(train_set_lr)(ctx, -1.0) != 7) return 15;
  int64_t bad = y[0];
  y[0] = 10;
  if (F(train_step)(ctx, batch, in, tg, &loss) != 3) return 16;
  y[0] = bad;

  /* Before any step, the context predicts as the library. */
  float *p1 = malloc(batch * M_OUT0 * sizeof(float));
  float *p2 = malloc(batch * M_OUT0 * sizeof(float));
  void *o1[1] = { p1 }, *o2[1] = { p2 };
  if (F(predict)(batch, in, o1) != 0 || F(predict_ctx)(ctx, batch, in, o2) != 0) return 17;
  if (memcmp(p1, p2, batch * M_OUT0 * sizeof(float)) != 0) return 18;

  FILE *out = fopen(argv[6], "wb");
  for (long s = 0; s < steps; s++) {
    long r = (s * batch) % rows;
    const void *bin[1] = { x + r * M_IN0 };
    const void *btg[1] = { y + r };
    int st = F(train_step)(ctx, batch, bin, btg, &loss);
    if (st != 0) { fprintf(stderr, "step %ld returned %d\n", s, st); return 19; }
    fwrite(&loss, sizeof(float), 1, out);
  }
  /* After training, the context's predictions have moved; the library's have not. */
  if (F(predict_ctx)(ctx, batch, in, o2) != 0) return 20;
  if (memcmp(p1, p2, batch * M_OUT0 * sizeof(float)) == 0) return 21;
  if (F(predict)(batch, in, o2) != 0 || memcmp(p1, p2, batch * M_OUT0 * sizeof(float)) != 0)
    return 22;

  static const long sizes[] = PARAM_SIZES;
  long n = sizeof(sizes) / sizeof(sizes[0]);
  float **params = malloc(n * sizeof(float *));
  for (long k = 0; k < n; k++) params[k] = malloc(sizes[k] * sizeof(float));
  if (F(train_params)(ctx, NULL) != 2) return 23;
  if (F(train_params)(ctx, params) != 0) return 24;
  for (long k = 0; k < n; k++) fwrite(params[k], sizeof(float), sizes[k], out);
  fclose(out);
  F(train_free)(ctx);
  F(train_free)(NULL);
  return 0;
}
"#;

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Builds `example`, links it into the C program, and checks it against `kiln predict`.
fn check(example: &str, output: &str) {
    if !have_cc() {
        return;
    }
    runtime();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = format!("{example}.kiln");
    let weights = d.join("w.safetensors");
    kiln(&[
        "train",
        &file,
        "--epochs",
        "1",
        "--quiet",
        "--save",
        weights.to_str().unwrap(),
    ]);
    let lib = d.join("lib");
    kiln(&[
        "build",
        &file,
        "--weights",
        weights.to_str().unwrap(),
        "-o",
        lib.to_str().unwrap(),
    ]);
    let header = std::fs::read_to_string(lib.join(format!("{example}.h"))).unwrap();
    let up = example.to_uppercase();
    assert!(
        header.contains(&format!("#define {up}_NUM_INPUTS 1")),
        "{header}"
    );
    assert!(
        header.contains(&format!("#define {up}_INPUT_0_SIZE 64")),
        "{header}"
    );

    // The first rows of the test data, as CSV for kiln predict and as floats for C.
    let csv = std::fs::read_to_string(root().join("examples/data/digits_test.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().take(ROWS + 1).collect();
    let data = d.join("rows.csv");
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let mut floats = Vec::new();
    for line in &lines[1..] {
        for v in line.split(',').take(64) {
            floats.extend(v.parse::<f32>().unwrap().to_ne_bytes());
        }
    }
    let input = d.join("x.bin");
    std::fs::write(&input, floats).unwrap();
    // `kiln predict`'s outputs at a batch size: the matrix products take other paths
    // for other row counts (a row-times-matrix loop up to 4 rows), so the bits may differ
    // between batch sizes, but not between the JIT and the library at one batch size.
    let predict = |batch: usize| -> Vec<f32> {
        let npz = d.join(format!("p{batch}.npz"));
        kiln(&[
            "predict",
            &file,
            "--weights",
            weights.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--batch",
            &batch.to_string(),
            "--out",
            npz.to_str().unwrap(),
        ]);
        let mut reader = NpzReader::new(std::fs::File::open(&npz).unwrap()).unwrap();
        let values: ArrayD<f32> = reader.by_name(output).unwrap();
        values.iter().copied().collect()
    };

    std::fs::write(d.join("model.h"), &header).unwrap();
    std::fs::write(d.join("app.c"), APP).unwrap();
    let app = d.join("app");
    compile(
        d,
        example,
        "app.c",
        &format!("-DM_PREDICT={example}_predict"),
    );

    for chunk in [32, 1, 7] {
        let expected = predict(chunk);
        let width = expected.len() / ROWS;
        assert!(header.contains(&format!("#define {up}_OUTPUT_0_SIZE {width}")));
        let out = d.join(format!("y{chunk}.bin"));
        let rows = ROWS.to_string();
        let chunk_s = chunk.to_string();
        run(Command::new(&app).args([
            "predict",
            &rows,
            &chunk_s,
            input.to_str().unwrap(),
            out.to_str().unwrap(),
        ]));
        let got = read_f32(&out);
        assert_eq!(got.len(), expected.len());
        let differ = got
            .iter()
            .zip(&expected)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ,
            0,
            "{example} at batch {chunk}: {differ} of {} outputs differ from kiln predict's",
            got.len()
        );
    }
    let status = |mode: &str| {
        Command::new(&app)
            .args([mode, &ROWS.to_string(), "1", input.to_str().unwrap(), "-"])
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(status("threads"), Some(0), "{example}: two threads at once");
    assert_eq!(
        status("batch"),
        Some(0),
        "{example}: a batch below 1 is refused"
    );
    train(example, d, &header, &weights);
}

/// Compiles the C program `d/NAME.c` into `d/NAME`, linked with `d/lib/lib<example>.a`,
/// with `define` and the model's first input and output sizes as M_IN0 and M_OUT0.
fn compile(d: &Path, example: &str, file: &str, define: &str) {
    let up = example.to_uppercase();
    run(Command::new("cc")
        .current_dir(d)
        .arg(define)
        .arg(format!("-DM_IN0={up}_INPUT_0_SIZE"))
        .arg(format!("-DM_OUT0={up}_OUTPUT_0_SIZE"))
        .args([file, "-I", "lib"])
        .arg(format!("lib/lib{example}.a"))
        .args(["-lm", "-lpthread", "-ldl", "-o"])
        .arg(file.trim_end_matches(".c")));
}

/// Steps of the C training loop.
const STEPS: usize = 12;
/// Rows a step.
const BATCH: usize = 32;
/// The rows the loop cycles through: the loss on them falls from pass to pass.
const TRAIN_ROWS: usize = 4 * BATCH;

/// Builds the C training loop against the library in `d/lib` and checks its losses and
/// parameters against the JIT's steps from the checkpoint `weights`.
fn train(example: &str, d: &Path, header: &str, weights: &Path) {
    let up = example.to_uppercase();
    let count = header
        .lines()
        .find_map(|l| l.strip_prefix(&format!("#define {up}_NUM_PARAMS ")))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .expect("the header counts the parameters");
    let sizes: Vec<String> = (0..count).map(|k| format!("{up}_PARAM_{k}_SIZE")).collect();
    std::fs::write(
        d.join("params.h"),
        format!("#define PARAM_SIZES {{ {} }}\n", sizes.join(", ")),
    )
    .unwrap();
    std::fs::write(d.join("train.c"), TRAIN_APP).unwrap();
    compile(d, example, "train.c", &format!("-DMODEL={example}"));

    // The first rows of the training data: pixels and labels.
    let csv = std::fs::read_to_string(root().join("examples/data/digits_train.csv")).unwrap();
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for line in csv.lines().skip(1).take(TRAIN_ROWS) {
        let values: Vec<f32> = line.split(',').map(|v| v.parse().unwrap()).collect();
        pixels.extend_from_slice(&values[..64]);
        labels.push(values[64]);
    }
    let bytes = |v: Vec<u8>, name: &str| {
        std::fs::write(d.join(name), v).unwrap();
    };
    bytes(
        pixels.iter().flat_map(|v| v.to_ne_bytes()).collect(),
        "tx.bin",
    );
    bytes(
        labels
            .iter()
            .flat_map(|&v| (v as i64).to_ne_bytes())
            .collect(),
        "ty.bin",
    );
    run(Command::new(d.join("train")).current_dir(d).args([
        &TRAIN_ROWS.to_string(),
        &BATCH.to_string(),
        &STEPS.to_string(),
        "tx.bin",
        "ty.bin",
        "trained.bin",
    ]));
    let got = read_f32(&d.join("trained.bin"));

    // The JIT's steps from the same checkpoint, through the library API.
    let model = kiln::compile_file(root().join(format!("examples/{example}.kiln"))).unwrap();
    let mut session = model.session(model.train_config().seed).unwrap();
    session.load(weights).unwrap();
    let (input, shape) = model.inputs().remove(0);
    let target = model.targets().remove(0).0;
    let mut expected = Vec::new();
    for s in 0..STEPS {
        let r = (s * BATCH) % TRAIN_ROWS;
        let mut dims = vec![BATCH];
        dims.extend(shape.iter().skip(1).map(|d| d.expect("a fixed dimension")));
        let x = ArrayD::from_shape_vec(dims, pixels[r * 64..(r + BATCH) * 64].to_vec()).unwrap();
        let y = ArrayD::from_shape_vec(vec![BATCH], labels[r..r + BATCH].to_vec()).unwrap();
        let loss = session
            .train_step(&[(input.as_str(), &x)], &[(target.as_str(), &y)])
            .unwrap();
        expected.push(loss as f32);
    }
    for name in session.parameter_names() {
        expected.extend(session.parameter(&name).unwrap().iter());
    }
    assert_eq!(
        got.len(),
        expected.len(),
        "{example}: losses and parameters"
    );
    let differ = got
        .iter()
        .zip(&expected)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(
        differ,
        0,
        "{example}: {differ} of {} losses and parameters differ from the JIT's steps; losses {:?} vs {:?}",
        got.len(),
        &got[..STEPS],
        &expected[..STEPS]
    );
    let passes = STEPS * BATCH / TRAIN_ROWS;
    let pass = |k: usize| -> f32 {
        let per = TRAIN_ROWS / BATCH;
        got[k * per..(k + 1) * per].iter().sum::<f32>() / per as f32
    };
    assert!(
        pass(passes - 1) < pass(0),
        "{example}: the loss does not fall: {:?}",
        &got[..STEPS]
    );
}

#[test]
fn mlp() {
    check("digits_mlp", "probs");
}

#[test]
fn cnn() {
    check("digits_cnn", "logits");
}

#[test]
fn gru() {
    check("digits_gru", "logits");
}

#[test]
fn batchnorm_and_dropout() {
    check("digits_bn_dropout", "logits");
}

/// A model with a class-id input (int64 in C) beside a float input, and a regression
/// output trained on standardized inputs and target: the library standardizes the
/// inputs and un-standardizes the output as `kiln predict` does; an id out of range is
/// refused.
const EMBED: &str = "model embed_reg {
  input  ids: class[N] of 5
  input  x: [N, 3]
  target y: [N, 2]
  e = ids |> embedding(5, 4)
  out = (e |> dense(2)) + (x |> dense(2))
  output out
  loss mse(out, y)
}

train embed_reg {
  data train: \"train.csv\"
  optimizer adam(lr: 0.01)
  batch 8
  epochs 3
  standardize true
  seed 1
}
";

const EMBED_APP: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include "embed_reg.h"

int main(int argc, char **argv) {
  long rows = atol(argv[1]), chunk = atol(argv[2]);
  int64_t *ids = malloc(rows * sizeof(int64_t));
  float *x = malloc(rows * EMBED_REG_INPUT_1_SIZE * sizeof(float));
  float *y = malloc(rows * EMBED_REG_OUTPUT_0_SIZE * sizeof(float));
  FILE *f = fopen(argv[3], "rb");
  if (fread(ids, sizeof(int64_t), rows, f) != (size_t)rows) return 65;
  if (fread(x, sizeof(float), rows * 3, f) != (size_t)(rows * 3)) return 65;
  fclose(f);
  for (long r = 0; r < rows; r += chunk) {
    long b = rows - r < chunk ? rows - r : chunk;
    const void *in[EMBED_REG_NUM_INPUTS] = { ids + r, x + r * EMBED_REG_INPUT_1_SIZE };
    void *out[EMBED_REG_NUM_OUTPUTS] = { y + r * EMBED_REG_OUTPUT_0_SIZE };
    if (embed_reg_predict(b, in, out) != EMBED_REG_OK) return 1;
  }
  f = fopen(argv[4], "wb");
  fwrite(y, sizeof(float), rows * EMBED_REG_OUTPUT_0_SIZE, f);
  fclose(f);
  int64_t bad[2] = { 1, 5 };
  const void *in[2] = { bad, x };
  void *out[1] = { y };
  if (embed_reg_predict(2, in, out) != EMBED_REG_ERR_CLASS) return 2;
  bad[1] = -1;
  if (embed_reg_predict(2, in, out) != EMBED_REG_ERR_CLASS) return 2;
  return 0;
}
"#;

#[test]
fn class_ids_and_standardization() {
    if !have_cc() {
        return;
    }
    runtime();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("m.kiln"), EMBED).unwrap();
    // y depends on the id and on x, on scales far from 0 and 1.
    let rows = 64usize;
    let mut csv = String::from("ids.0,x.0,x.1,x.2,y.0,y.1\n");
    let mut bin = Vec::new();
    let mut xs = Vec::new();
    for r in 0..rows {
        let id = (r * 7 + 3) % 5;
        let x: Vec<f32> = (0..3)
            .map(|k| ((r * 13 + k * 5) % 17) as f32 * 0.5 - 3.0)
            .collect();
        let y = [10.0 + id as f32 + 2.0 * x[0], x[1] - 3.0 * x[2] - 20.0];
        csv += &format!("{id},{},{},{},{},{}\n", x[0], x[1], x[2], y[0], y[1]);
        bin.extend((id as i64).to_ne_bytes());
        xs.extend(x.iter().flat_map(|v| v.to_ne_bytes()));
    }
    bin.extend(xs);
    std::fs::write(d.join("train.csv"), csv).unwrap();
    std::fs::write(d.join("x.bin"), bin).unwrap();
    let kiln_in = |args: &[&str]| run(Command::new(KILN).args(args).current_dir(d));
    kiln_in(&["train", "m.kiln", "--quiet", "--save", "w.safetensors"]);
    kiln_in(&["build", "m.kiln", "--weights", "w.safetensors", "-o", "lib"]);
    std::fs::write(d.join("app.c"), EMBED_APP).unwrap();
    run(Command::new("cc")
        .current_dir(d)
        .args(["app.c", "-I", "lib", "lib/libembed_reg.a"])
        .args(["-lm", "-lpthread", "-ldl", "-o", "app"]));
    for batch in [8, 3] {
        let b = batch.to_string();
        let npz = format!("p{batch}.npz");
        kiln_in(&[
            "predict",
            "m.kiln",
            "--weights",
            "w.safetensors",
            "--data",
            "train.csv",
            "--batch",
            &b,
            "--out",
            &npz,
        ]);
        let mut reader = NpzReader::new(std::fs::File::open(d.join(&npz)).unwrap()).unwrap();
        let expected: ArrayD<f32> = reader.by_name("out").unwrap();
        let out = format!("y{batch}.bin");
        run(Command::new(d.join("app")).current_dir(d).args([
            &rows.to_string(),
            &b,
            "x.bin",
            &out,
        ]));
        let got = read_f32(&d.join(&out));
        let expected: Vec<f32> = expected.iter().copied().collect();
        assert_eq!(got.len(), expected.len());
        // The outputs are in the target's units (means near 13 and -20), not standardized.
        let mean = expected.iter().step_by(2).sum::<f32>() / rows as f32;
        assert!(mean > 5.0, "{expected:?}");
        assert!(
            got.iter()
                .zip(&expected)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "batch {batch}: the library's outputs differ from kiln predict's:\n{got:?}\n{expected:?}"
        );
    }
}

#[test]
fn a_missing_runtime_is_an_error_that_says_how_to_build_it() {
    let o = Command::new(KILN)
        .args([
            "build",
            "digits_mlp.kiln",
            "--weights",
            "absent.safetensors",
        ])
        .args(["-o", "unused"])
        .env("KILN_RT", "/nonexistent/libkiln_rt.a")
        .current_dir(root().join("examples"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cargo build --release"), "{err}");
    assert!(!root().join("examples/unused").exists());
}

/// README's `kiln build` example, run as it is written (in a scratch folder beside a link
/// to examples/): train, build, compile examples/c/digits_app.c and run it; the program
/// prints the README's lines, numbers aside, and its fine-tuning lowers the loss.
#[test]
fn readme_example_runs() {
    if !have_cc() {
        return;
    }
    runtime();
    let text = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = text
        .find("```\n$ kiln train examples/digits_mlp.kiln\n$ kiln build")
        .expect("README shows `kiln build`");
    let block = &text[start + 4..];
    let block = &block[..block.find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::os::unix::fs::symlink(root().join("examples"), d.join("examples")).unwrap();
    let mut printed = String::new();
    let mut expected = Vec::new();
    for line in block.lines() {
        let Some(cmd) = line.strip_prefix("$ ") else {
            expected.push(line);
            continue;
        };
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let mut c = match words[0] {
            "kiln" => Command::new(KILN),
            "./app" => Command::new(d.join("app")),
            other => Command::new(other),
        };
        let o = run(c.args(&words[1..]).current_dir(d));
        if words[0] == "./app" {
            printed = String::from_utf8_lossy(&o.stdout).into_owned();
        }
    }
    let shape = |l: &str| -> String {
        l.split(|c: char| c.is_ascii_digit() || c == '.')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join("#")
    };
    let got: Vec<&str> = printed.lines().collect();
    assert_eq!(
        got.iter().map(|l| shape(l)).collect::<Vec<_>>(),
        expected.iter().map(|l| shape(l)).collect::<Vec<_>>(),
        "the program prints:\n{printed}"
    );
    let loss = |l: &str| -> f64 { l.rsplit(' ').next().unwrap().parse().unwrap() };
    assert!(loss(got[3]) < loss(got[1]), "{printed}");
}
