//! The training runtime end to end, through the `kiln` binary as a user runs it.

use kiln::runtime::checkpoint::Checkpoint;
use ndarray::{ArrayD, IxDyn};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kiln(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("kiln runs")
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
        .display()
        .to_string()
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("report written"))
        .expect("report is JSON")
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Predicted values of the first output column of a `kiln predict` CSV.
fn first_column(csv: &str) -> Vec<f64> {
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn xor_trains_to_zero_loss_and_predicts_the_truth_table() {
    let dir = tmp();
    let d = dir.path();
    ok(&kiln(
        &[
            "train",
            &example("xor.kiln"),
            "--quiet",
            "--save",
            "xor.ckpt",
            "--report",
            "r.json",
        ],
        d,
    ));
    let r = report(&d.join("r.json"));
    let loss = r["train"]["loss"].as_f64().unwrap();
    assert!(loss < 1e-3, "final loss {loss}");
    let csv = ok(&kiln(
        &[
            "predict",
            &example("xor.kiln"),
            "--weights",
            "xor.ckpt",
            "--data",
            &example("data/xor.csv"),
        ],
        d,
    ));
    let rounded: Vec<i64> = first_column(&csv)
        .iter()
        .map(|v| v.round() as i64)
        .collect();
    assert_eq!(rounded, [0, 1, 1, 0]);
}

#[test]
fn hand_set_xor_weights_predict_exactly() {
    // The course notes: h1 = relu(x + y − 1), h2 = relu(−x − y + 1), out = −h1 − h2 + 1.
    let dir = tmp();
    let d = dir.path();
    let t = |shape: &[usize], v: &[f32]| ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap();
    let mut c = Checkpoint::new();
    // Kiln's dense weight is [in, out]: column j holds unit j's weights.
    c.tensors
        .insert("h.dense.weight".into(), t(&[2, 2], &[1.0, -1.0, 1.0, -1.0]));
    c.tensors
        .insert("h.dense.bias".into(), t(&[2], &[-1.0, 1.0]));
    c.tensors
        .insert("out.dense.weight".into(), t(&[2, 1], &[-1.0, -1.0]));
    c.tensors.insert("out.dense.bias".into(), t(&[1], &[1.0]));
    c.save(&d.join("hand.safetensors")).unwrap();
    let csv = ok(&kiln(
        &[
            "predict",
            &example("xor.kiln"),
            "--weights",
            "hand.safetensors",
            "--data",
            &example("data/xor.csv"),
        ],
        d,
    ));
    assert_eq!(first_column(&csv), [0.0, 1.0, 1.0, 0.0]);
}

fn test_accuracy(model: &str) -> f64 {
    let dir = tmp();
    let d = dir.path();
    ok(&kiln(
        &[
            "train",
            &example(model),
            "--quiet",
            "--save",
            "m.ckpt",
            "--report",
            "r.json",
        ],
        d,
    ));
    report(&d.join("r.json"))["test"]["classification"]["accuracy"]
        .as_f64()
        .unwrap()
}

#[test]
fn digits_mlp_reaches_97_percent() {
    let acc = test_accuracy("digits_mlp.kiln");
    assert!(acc >= 0.97, "test accuracy {acc}");
}

#[test]
fn breast_cancer_reaches_95_percent() {
    let acc = test_accuracy("breast_cancer.kiln");
    assert!(acc >= 0.95, "test accuracy {acc}");
}

#[test]
fn iris_reaches_86_percent() {
    let acc = test_accuracy("iris.kiln");
    assert!(acc >= 0.86, "test accuracy {acc}");
}

#[test]
fn digits_cnn_reaches_98_percent() {
    let acc = test_accuracy("digits_cnn.kiln");
    assert!(acc >= 0.98, "test accuracy {acc}");
}

#[test]
fn digits_gru_reaches_95_percent() {
    let acc = test_accuracy("digits_gru.kiln");
    assert!(acc >= 0.95, "test accuracy {acc}");
}

#[test]
fn batchnorm_and_dropout_mlp_reaches_97_percent() {
    let acc = test_accuracy("digits_bn_dropout.kiln");
    assert!(acc >= 0.97, "test accuracy {acc}");
}

#[test]
fn resnet_block_trains() {
    let acc = test_accuracy("resnet_block.kiln");
    assert!(acc >= 0.95, "test accuracy {acc}");
}

fn tensors(path: &Path) -> Vec<(String, Vec<u32>)> {
    let c = Checkpoint::load(path).unwrap();
    c.tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.iter().map(|x| x.to_bits()).collect()))
        .collect()
}

#[test]
fn same_seed_same_weights_bit_for_bit_for_any_thread_count() {
    let dir = tmp();
    let d = dir.path();
    for (name, threads) in [("a.ckpt", "1"), ("b.ckpt", "2")] {
        ok(&kiln(
            &[
                "train",
                &example("digits_mlp.kiln"),
                "--quiet",
                "--epochs",
                "3",
                "--threads",
                threads,
                "--save",
                name,
            ],
            d,
        ));
    }
    let (a, b) = (tensors(&d.join("a.ckpt")), tensors(&d.join("b.ckpt")));
    assert!(!a.is_empty());
    assert_eq!(a, b);
    ok(&kiln(
        &[
            "train",
            &example("digits_mlp.kiln"),
            "--quiet",
            "--epochs",
            "3",
            "--seed",
            "5",
            "--save",
            "c.ckpt",
        ],
        d,
    ));
    assert_ne!(a, tensors(&d.join("c.ckpt")));
}

#[test]
fn same_seed_same_checkpoint_byte_for_byte() {
    // Two processes: each has its own hash seeds, so nothing in the file may follow a
    // hash map's order. Iris writes many metadata keys and the standardization.
    let dir = tmp();
    let d = dir.path();
    for name in ["a.ckpt", "b.ckpt"] {
        ok(&kiln(
            &[
                "train",
                &example("iris.kiln"),
                "--quiet",
                "--epochs",
                "2",
                "--threads",
                "1",
                "--save",
                name,
            ],
            d,
        ));
    }
    let a = std::fs::read(d.join("a.ckpt")).unwrap();
    let b = std::fs::read(d.join("b.ckpt")).unwrap();
    assert!(a.len() > 1000, "{}", a.len());
    assert!(a == b, "the two checkpoints differ");
    let c = Checkpoint::load(&d.join("a.ckpt")).unwrap();
    assert!(c.meta.len() >= 8, "{:?}", c.meta);
    assert!(c.tensors.contains_key("standardize.features.mean"));
}

#[test]
fn dropout_and_batchnorm_runs_repeat_bit_for_bit() {
    // Dropout masks come from the seed and the step; the running statistics are saved.
    let dir = tmp();
    let d = dir.path();
    for (name, threads) in [("a.ckpt", "1"), ("b.ckpt", "2")] {
        ok(&kiln(
            &[
                "train",
                &example("digits_bn_dropout.kiln"),
                "--quiet",
                "--epochs",
                "2",
                "--threads",
                threads,
                "--save",
                name,
            ],
            d,
        ));
    }
    let (a, b) = (tensors(&d.join("a.ckpt")), tensors(&d.join("b.ckpt")));
    assert_eq!(a, b);
    let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.iter().any(|n| n.ends_with("running_var")),
        "{names:?}"
    );
    // The running variance has moved away from its initial ones.
    let (_, var) = a.iter().find(|(n, _)| n.ends_with("running_var")).unwrap();
    assert!(var.iter().any(|&bits| f32::from_bits(bits) != 1.0));
}

#[test]
fn resume_ends_with_the_weights_of_an_uninterrupted_run() {
    let dir = tmp();
    let d = dir.path();
    let ex = example("digits_mlp.kiln");
    ok(&kiln(
        &[
            "train",
            &ex,
            "--quiet",
            "--epochs",
            "4",
            "--save",
            "full.ckpt",
        ],
        d,
    ));
    ok(&kiln(
        &[
            "train",
            &ex,
            "--quiet",
            "--epochs",
            "2",
            "--save",
            "half.ckpt",
        ],
        d,
    ));
    ok(&kiln(
        &[
            "train",
            &ex,
            "--quiet",
            "--epochs",
            "4",
            "--resume",
            "half.ckpt",
            "--save",
            "resumed.ckpt",
        ],
        d,
    ));
    assert_eq!(
        tensors(&d.join("full.ckpt")),
        tensors(&d.join("resumed.ckpt"))
    );
}

#[test]
fn killing_a_run_leaves_a_readable_checkpoint() {
    let dir = tmp();
    let d = dir.path();
    let ckpt = d.join("run.ckpt");
    for round in 0..6u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "train",
                &example("digits_mlp.kiln"),
                "--quiet",
                "--save",
                "run.ckpt",
                "--epochs",
                "1000",
            ])
            .current_dir(d)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait for a first checkpoint, then kill at a different moment each round: every
        // epoch rewrites the file, so some kills land while it is being written.
        let start = std::time::Instant::now();
        while !ckpt.exists() && start.elapsed().as_secs() < 60 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(37 * round + 11));
        child.kill().unwrap();
        child.wait().unwrap();
        let c = Checkpoint::load(&ckpt).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(c.tensors.contains_key("logits.dense.0.weight"));
        let leftovers: Vec<PathBuf> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".tmp-"))
            .collect();
        for l in leftovers {
            // A killed writer may leave its temporary file; the checkpoint itself is intact.
            std::fs::remove_file(l).unwrap();
        }
    }
}

#[test]
fn readme_main_command_needs_no_arguments() {
    let dir = tmp();
    let out = ok(&kiln(&["train", &example("digits_mlp.kiln")], dir.path()));
    assert!(out.contains("epoch  60/60"), "{out}");
    assert!(out.contains("test: 359 rows"), "{out}");
    assert!(dir.path().join("digits_mlp.safetensors").exists());
}

#[test]
fn eval_and_grad_report_loss_metrics_and_gradients() {
    let dir = tmp();
    let d = dir.path();
    ok(&kiln(
        &[
            "train",
            &example("iris.kiln"),
            "--quiet",
            "--epochs",
            "5",
            "--save",
            "iris.ckpt",
        ],
        d,
    ));
    let out = ok(&kiln(
        &["eval", &example("iris.kiln"), "--weights", "iris.ckpt"],
        d,
    ));
    assert!(out.contains("accuracy"), "{out}");
    assert!(out.contains("loss: "), "{out}");
    let out = ok(&kiln(
        &[
            "grad",
            &example("iris.kiln"),
            "--data",
            &example("data/iris_train.csv"),
            "--weights",
            "iris.ckpt",
            "--out",
            "g.safetensors",
        ],
        d,
    ));
    assert!(out.contains("h.dense.weight"), "{out}");
    let g = Checkpoint::load(&d.join("g.safetensors")).unwrap();
    assert_eq!(g.tensors["h.dense.weight"].shape(), [4, 16]);
    assert_eq!(g.tensors["logits.dense.bias"].shape(), [3]);
    // The output-bias gradient of softmax cross-entropy sums to zero over the classes.
    let s: f32 = g.tensors["logits.dense.bias"].iter().sum();
    assert!(s.abs() < 1e-5, "{s}");
}

#[test]
fn a_checkpoint_of_another_model_is_refused() {
    let dir = tmp();
    let d = dir.path();
    ok(&kiln(
        &[
            "train",
            &example("iris.kiln"),
            "--quiet",
            "--epochs",
            "1",
            "--save",
            "iris.ckpt",
        ],
        d,
    ));
    let out = kiln(
        &[
            "eval",
            &example("digits_mlp.kiln"),
            "--weights",
            "iris.ckpt",
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("different model"), "{err}");
}

#[test]
fn plain_weights_with_a_wrong_shape_name_the_tensor_and_both_shapes() {
    let dir = tmp();
    let d = dir.path();
    let mut c = Checkpoint::new();
    let z = |s: &[usize]| ArrayD::<f32>::zeros(IxDyn(s));
    c.tensors.insert("h.dense.weight".into(), z(&[2, 2]));
    c.tensors.insert("h.dense.bias".into(), z(&[2]));
    c.tensors.insert("out.dense.weight".into(), z(&[1, 2]));
    c.tensors.insert("extra".into(), z(&[3]));
    c.save(&d.join("w.safetensors")).unwrap();
    let out = kiln(
        &[
            "predict",
            &example("xor.kiln"),
            "--weights",
            "w.safetensors",
            "--data",
            &example("data/xor.csv"),
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("out.dense.weight") && err.contains("[1, 2]") && err.contains("[2, 1]"),
        "{err}"
    );
    assert!(
        err.contains("out.dense.bias") && err.contains("missing"),
        "{err}"
    );
    assert!(err.contains("extra"), "{err}");
}

#[test]
fn a_data_file_of_the_wrong_width_names_file_line_and_widths() {
    let dir = tmp();
    let d = dir.path();
    std::fs::write(d.join("bad.csv"), "a,b,c,y\n1,2,3,0\n").unwrap();
    let out = kiln(
        &[
            "train",
            &example("xor.kiln"),
            "--train",
            "bad.csv",
            "--quiet",
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.csv:1"), "{err}");
    assert!(err.contains('2') && err.contains('3'), "{err}");
}

#[test]
fn ir_prints_every_pass() {
    let dir = tmp();
    let d = dir.path();
    let lower = ok(&kiln(&["ir", &example("xor.kiln")], d));
    assert!(
        lower.contains("matmul") && lower.contains("relu") && lower.contains("loss Mse"),
        "{lower}"
    );
    let ad = ok(&kiln(
        &["ir", &example("xor.kiln"), "--after", "autodiff"],
        d,
    ));
    assert!(
        ad.contains("relu_grad") && ad.contains("grad h.dense.weight"),
        "{ad}"
    );
    let opt = ok(&kiln(
        &["ir", &example("xor.kiln"), "--after", "optimizer"],
        d,
    ));
    assert!(
        opt.contains("hyper.lr") && opt.contains("update h.dense.weight.momentum_buffer"),
        "{opt}"
    );
}

#[test]
fn early_stopping_restores_the_best_weights() {
    let dir = tmp();
    let d = dir.path();
    let data = example("data/iris_train.csv");
    let model = format!(
        "model iris {{
  input  features: [N, 4]
  target label: class[N] of 3
  logits = features |> dense(64) |> relu |> dense(3)
  output logits
  loss cross_entropy(logits, label)
}}
train iris {{
  data train: \"{data}\"
  optimizer adam(lr: 0.05)
  epochs 300
  validation 0.3
  standardize true
  early_stop(monitor: val_loss, patience: 3)
  seed 3
}}
"
    );
    std::fs::write(d.join("iris.kiln"), model).unwrap();
    ok(&kiln(
        &[
            "train",
            "iris.kiln",
            "--quiet",
            "--save",
            "es.ckpt",
            "--report",
            "r.json",
        ],
        d,
    ));
    let r = report(&d.join("r.json"));
    let epochs = r["epochs"].as_u64().unwrap();
    let best = r["best_epoch"].as_u64().unwrap();
    assert!(epochs < 300, "stopped after {epochs} epochs");
    assert!(r["stopped_early"].is_string());
    assert_eq!(best + 3, epochs, "patience 3 after the best epoch");
    // The best epoch had the lowest validation loss of the run.
    let losses: Vec<f64> = r["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["val_loss"].as_f64().unwrap())
        .collect();
    let min = losses.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(losses[best as usize - 1], min);
    // The saved checkpoint holds the restored (best) weights.
    let c = Checkpoint::load(&d.join("es.ckpt")).unwrap();
    assert_eq!(
        c.tensors["logits.dense.0.weight"],
        c.tensors["best.logits.dense.0.weight"]
    );
}
