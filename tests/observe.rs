//! What a training run shows: the NaN diagnostic with its place in the model file,
//! gradient-health warnings, the end-of-run report, and output that stays plain when
//! piped. Through the `kiln` binary, as a user runs it.

use std::path::Path;
use std::process::{Command, Output};

fn kiln(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("kiln runs")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(out: &Output) -> (String, String) {
    let (o, e) = text(out);
    assert!(
        out.status.success(),
        "exit {:?}\n{o}\n{e}",
        out.status.code()
    );
    (o, e)
}

fn data_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/data")
        .display()
        .to_string()
}

/// A regression whose output goes through `exp` (line 5): a huge learning rate makes it
/// overflow there first.
const BOOM: &str = "model boom {
  input  x: [N, 2]
  target y: [N, 1]
  h   = x |> dense(8) |> tanh
  out = h |> dense(1) |> exp
  output out
  loss mse(out, y)
}

train boom {
  data train: \"d.csv\"
  optimizer sgd(lr: 0.01)
  batch  8
  epochs 2
  seed   1
}
";

fn boom_data(dir: &Path) {
    let mut csv = String::from("x0,x1,y\n");
    for i in 0..64 {
        let a = (i as f64 * 0.37).sin();
        let b = (i as f64 * 0.91).cos();
        csv += &format!("{a:.4},{b:.4},{:.4}\n", (a + b).abs() + 0.5);
    }
    std::fs::write(dir.join("d.csv"), csv).unwrap();
    std::fs::write(dir.join("boom.kiln"), BOOM).unwrap();
}

#[test]
fn an_exploding_run_stops_at_the_operation_that_overflowed_and_keeps_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    boom_data(d);
    ok(&kiln(
        &["train", "boom.kiln", "--save", "m.ckpt", "--quiet"],
        d,
    ));
    let before = std::fs::read(d.join("m.ckpt")).unwrap();
    let out = kiln(
        &[
            "train",
            "boom.kiln",
            "--resume",
            "m.ckpt",
            "--save",
            "m.ckpt",
            "--lr",
            "1000",
            "--epochs",
            "6",
            "--color",
            "never",
        ],
        d,
    );
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("error[E0601]: the loss became"), "{err}");
    assert!(err.contains("at epoch 3, step"), "{err}");
    // The span is the `exp` of line 5, column 26.
    assert!(err.contains("boom.kiln:5:26"), "{err}");
    assert!(
        err.contains("`exp` produced the first non-finite value"),
        "{err}"
    );
    assert!(
        err.contains("likely cause: exp of a large value overflowed"),
        "{err}"
    );
    assert!(err.contains("learning rate (1000) is too high"), "{err}");
    assert!(err.contains("clip norm(1.0)"), "{err}");
    assert!(
        err.contains("last good checkpoint `m.ckpt` is kept"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(d.join("m.ckpt")).unwrap(),
        before,
        "the checkpoint of epoch 2 is intact"
    );
}

#[test]
fn non_finite_input_data_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    boom_data(d);
    std::fs::write(d.join("d.csv"), "x0,x1,y\n0.5,1,2\n0.1,nan,1\n").unwrap();
    let out = kiln(&["train", "boom.kiln", "--quiet"], d);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("E0506") && err.contains("d.csv:3:2"), "{err}");
}

/// A 20-layer MLP of `act` units on the digits (with batchnorm when `bn`).
fn deep(act: &str, bn: bool) -> String {
    let stage = if bn {
        format!("    |> dense(32) |> batchnorm |> {act}\n")
    } else {
        format!("    |> dense(32) |> {act}\n")
    };
    format!(
        "model deep {{
  input  pixels: [N, 64]
  target label: class[N] of 10
  logits = pixels
{}    |> dense(10)
  output logits
  loss cross_entropy(logits, label)
  allow W0005
}}

train deep {{
  data train: \"{data}/digits_train.csv\"
  optimizer sgd(lr: 0.1)
  batch 32
  epochs 1
  standardize true
  seed 1
}}
",
        stage.repeat(20),
        data = data_dir()
    )
}

#[test]
fn deep_sigmoid_stack_warns_of_vanishing_gradients_relu_and_batchnorm_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("sigmoid.kiln"), deep("sigmoid", false)).unwrap();
    std::fs::write(d.join("relu.kiln"), deep("relu", true)).unwrap();
    let args = |f: &'static str| {
        [
            "train",
            f,
            "--diagnose",
            "--color",
            "never",
            "--report",
            "r.json",
            "--allow",
            "constant_column",
        ]
    };
    let (out, err) = ok(&kiln(&args("sigmoid.kiln"), d));
    assert!(err.contains("warning[W0101]: vanishing gradients"), "{err}");
    // The warning points at the first dense layer (line 5) and names the remedies.
    assert!(err.contains("sigmoid.kiln:5:8"), "{err}");
    assert!(
        err.contains("batchnorm") && err.contains("residual"),
        "{err}"
    );
    assert!(
        out.contains("grad norm") && out.contains("logits.dense.0"),
        "{out}"
    );
    assert!(
        !err.contains("W0201"),
        "--allow silences data warnings: {err}"
    );
    // The report records the per-layer figures.
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("r.json")).unwrap()).unwrap();
    let layers = r["history"][0]["health"]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 21);
    let first = layers[0]["grad_norm"].as_f64().unwrap();
    let last = layers[20]["grad_norm"].as_f64().unwrap();
    assert!(first / last < 1e-3, "{first} / {last}");
    assert!(layers[0]["update_ratio"].as_f64().unwrap() >= 0.0);

    let (out, err) = ok(&kiln(&args("relu.kiln"), d));
    assert!(!err.contains("W0101"), "{err}");
    assert!(out.contains("logits.dense.0"), "{out}");
}

#[test]
fn grad_reports_gradient_health() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("sigmoid.kiln"), deep("sigmoid", false)).unwrap();
    let data = format!("{}/digits_train.csv", data_dir());
    let (out, err) = ok(&kiln(
        &["grad", "sigmoid.kiln", "--data", &data, "--color", "never"],
        d,
    ));
    assert!(out.contains("gradient health:"), "{out}");
    assert!(out.contains("saturated"), "{out}");
    assert!(err.contains("warning[W0101]"), "{err}");
}

#[test]
fn piped_output_has_no_terminal_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/iris.kiln");
    let (out, err) = ok(&kiln(
        &["train", model.to_str().unwrap(), "--epochs", "3"],
        d,
    ));
    for (what, s) in [("stdout", &out), ("stderr", &err)] {
        assert!(
            !s.chars().any(|c| c == '\u{1b}' || c == '\r'),
            "{what} has control characters: {s:?}"
        );
    }
    // One plain line per epoch, then the end-of-run report: per-class metrics, the
    // confusion matrix and the checkpoint.
    let epochs = out.lines().filter(|l| l.starts_with("epoch ")).count();
    assert_eq!(epochs, 3, "{out}");
    assert!(out.contains("samples/s"), "{out}");
    assert!(out.contains("macro"), "{out}");
    assert!(out.contains("confusion matrix"), "{out}");
    assert!(out.contains("checkpoint: iris.safetensors"), "{out}");
}
