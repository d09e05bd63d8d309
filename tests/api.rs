//! The library API: compile from a string or a file, sessions that train, predict,
//! evaluate, save and load, parameters by name, errors instead of panics on bad input,
//! and compiled code shared between sessions.

use kiln::exec::RunError;
use kiln::runtime::error::RuntimeError;
use ndarray::{array, ArrayD};

#[path = "../examples/embed.rs"]
mod embed;

const XOR: &str = "model xor {
  input  x: [N, 2]
  target y: [N, 1]
  h   = x |> dense(8) |> tanh
  out = h |> dense(1)
  output out
  loss mse(out, y)
}
train xor {
  optimizer sgd(lr: 0.1, momentum: 0.9)
  batch 4
  epochs 200
}
";

fn data() -> (ArrayD<f32>, ArrayD<f32>) {
    (
        array![[0., 0.], [0., 1.], [1., 0.], [1., 1.]].into_dyn(),
        array![[0.], [1.], [1.], [0.]].into_dyn(),
    )
}

#[test]
fn the_embed_example_trains_xor() {
    embed::main().expect("the example runs");
}

#[test]
fn train_with_a_callback_then_predict_evaluate_and_classify() {
    let model = kiln::compile_str(XOR).unwrap();
    assert_eq!(model.name(), "xor");
    assert_eq!(model.inputs(), vec![("x".to_string(), vec![None, Some(2)])]);
    assert_eq!(model.outputs(), vec!["out".to_string()]);
    assert!(model.summary().contains("dense"));
    let mut s = model.session(3).unwrap();
    let (x, y) = data();
    let mut epochs = Vec::new();
    let report = s
        .train(&[("x", &x)], &[("y", &y)], |r| epochs.push(r.train_loss))
        .unwrap();
    assert_eq!(epochs.len(), 200);
    assert_eq!(report.epochs, 200);
    assert!(
        epochs[199] < epochs[0] / 100.0,
        "{} → {}",
        epochs[0],
        epochs[199]
    );
    let out = s.predict(&[("x", &x)]).unwrap();
    let rounded: Vec<f32> = out.iter().map(|v| v.round()).collect();
    assert_eq!(rounded, [0.0, 1.0, 1.0, 0.0]);
    let ev = s.evaluate(&[("x", &x)], &[("y", &y)]).unwrap();
    assert!(ev.loss.unwrap() < 1e-3);
    assert_eq!(s.classify(&[("x", &x)]).unwrap(), None, "not a classifier");
    assert_eq!(s.progress(), (200, 200));
}

#[test]
fn same_seed_same_training_and_different_seeds_differ() {
    let model = kiln::compile_str(XOR).unwrap();
    let (x, y) = data();
    let mut losses = Vec::new();
    for seed in [1, 1, 2] {
        let mut s = model.session(seed).unwrap();
        let mut l = 0.0;
        for _ in 0..20 {
            l = s.train_step(&[("x", &x)], &[("y", &y)]).unwrap();
        }
        losses.push(l.to_bits());
    }
    assert_eq!(losses[0], losses[1]);
    assert_ne!(losses[0], losses[2]);
}

#[test]
fn sessions_share_compiled_code_and_move_between_threads() {
    let model = kiln::compile_str(XOR).unwrap();
    let (x, y) = data();
    let mut a = model.session(1).unwrap();
    a.train_step(&[("x", &x)], &[("y", &y)]).unwrap();
    a.predict(&[("x", &x)]).unwrap();
    let compiled = model.compiled_functions();
    assert_eq!(compiled, 2, "a training step and a forward pass");
    let handle = std::thread::spawn(move || {
        let (x, y) = data();
        let mut b = model.session(2).unwrap();
        b.train_step(&[("x", &x)], &[("y", &y)]).unwrap();
        b.predict(&[("x", &x)]).unwrap();
        model.compiled_functions()
    });
    assert_eq!(handle.join().unwrap(), compiled, "nothing recompiled");
}

#[test]
fn wrong_inputs_are_errors_naming_the_input_and_both_shapes() {
    let model = kiln::compile_str(XOR).unwrap();
    let mut s = model.session(1).unwrap();
    let (x, y) = data();
    let bad: ArrayD<f32> = ArrayD::zeros(ndarray::IxDyn(&[4, 3]));
    let e = s.predict(&[("x", &bad)]).unwrap_err().to_string();
    assert_eq!(e, "input `x` has shape [4, 3], expected [N, 2]");
    let e = s.predict(&[("z", &x)]).unwrap_err().to_string();
    assert_eq!(e, "the model has no input `z` (its inputs: x)");
    let e = s.train_step(&[("x", &x)], &[]).unwrap_err().to_string();
    assert_eq!(e, "target `y` is missing");
    let short: ArrayD<f32> = ArrayD::zeros(ndarray::IxDyn(&[3, 1]));
    let e = s
        .train_step(&[("x", &x)], &[("y", &short)])
        .unwrap_err()
        .to_string();
    assert_eq!(e, "target `y` has shape [3, 1], expected [N, 1]");
    let empty: ArrayD<f32> = ArrayD::zeros(ndarray::IxDyn(&[0, 2]));
    assert!(s.predict(&[("x", &empty)]).is_err());
    let e = s.parameter("nope").unwrap_err().to_string();
    assert_eq!(e, "the model has no parameter `nope`");
    let w: ArrayD<f32> = ArrayD::zeros(ndarray::IxDyn(&[3, 3]));
    let e = s
        .set_parameter("h.dense.weight", w.view())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "parameter `h.dense.weight` has shape [3, 3], expected [2, 8]"
    );
    // Nothing was changed by the failed calls.
    s.train_step(&[("x", &x)], &[("y", &y)]).unwrap();
}

#[test]
fn parameters_by_name_save_and_load() {
    let model = kiln::compile_str(XOR).unwrap();
    let (x, y) = data();
    let mut s = model.session(4).unwrap();
    assert_eq!(
        s.parameter_names(),
        [
            "h.dense.weight",
            "h.dense.bias",
            "out.dense.weight",
            "out.dense.bias"
        ]
    );
    let w = s.parameter("out.dense.weight").unwrap().to_owned();
    assert_eq!(w.shape(), &[8, 1]);
    let zeros = ArrayD::<f32>::zeros(w.raw_dim());
    s.set_parameter("out.dense.weight", zeros.view()).unwrap();
    s.set_parameter(
        "out.dense.bias",
        ndarray::arr1(&[0.25f32]).into_dyn().view(),
    )
    .unwrap();
    let out = s.predict(&[("x", &x)]).unwrap();
    assert!(out.iter().all(|&v| v == 0.25), "{out}");
    s.set_parameter("out.dense.weight", w.view()).unwrap();
    for _ in 0..5 {
        s.train_step(&[("x", &x)], &[("y", &y)]).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    s.save(&path).unwrap();
    let next_a = s.train_step(&[("x", &x)], &[("y", &y)]).unwrap();
    let mut t = model.session(99).unwrap();
    t.load(&path).unwrap();
    assert_eq!(t.progress(), (0, 5));
    let next_b = t.train_step(&[("x", &x)], &[("y", &y)]).unwrap();
    assert_eq!(next_a.to_bits(), next_b.to_bits(), "resumed exactly");
    assert!(t.load(dir.path().join("missing.safetensors")).is_err());
}

#[test]
fn hyperparameter_setters_change_the_steps() {
    let model = kiln::compile_str(XOR).unwrap();
    let (x, y) = data();
    let (mut a, mut b) = (model.session(5).unwrap(), model.session(5).unwrap());
    b.set_learning_rate(0.0);
    let before = b.parameter("h.dense.weight").unwrap().to_owned();
    a.train_step(&[("x", &x)], &[("y", &y)]).unwrap();
    b.train_step(&[("x", &x)], &[("y", &y)]).unwrap();
    assert_eq!(b.parameter("h.dense.weight").unwrap(), before.view());
    assert_ne!(a.parameter("h.dense.weight").unwrap(), before.view());
    b.set_batch_size(2);
    b.set_epochs(3);
    assert_eq!((b.config().batch, b.config().epochs), (2, 3));
    let mut seen = 0;
    b.set_learning_rate(0.1);
    let r = b.train(&[("x", &x)], &[("y", &y)], |_| seen += 1).unwrap();
    assert_eq!((seen, r.steps), (3, 1 + 3 * 2));
}

#[test]
fn compile_errors_render_like_kiln_check() {
    let e = kiln::compile_str("model m {\n  input x: [N, 2]\n  y = relu(x, 3)\n  output y\n}\n")
        .unwrap_err();
    assert!(e.list().iter().any(|d| d.is_error()));
    let text = e.to_string();
    assert!(text.starts_with("error[E"), "{text}");
    assert!(text.contains("┌─ <string>:3:"), "{text}");
    let e = kiln::compile_file("no/such/file.kiln")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot read `no/such/file.kiln`"), "{e}");
    assert!(kiln::compile_str("").is_err());
    assert!(kiln::compile_str("}}}{{{").is_err());
}

#[test]
fn bad_values_are_errors_or_numbers_never_panics() {
    let model = kiln::compile_str(
        "model c {
  input  ids: class[N, 3] of 5
  target label: class[N] of 4
  logits = ids |> embedding(5, 4) |> flatten |> dense(4)
  output logits
  loss cross_entropy(logits, label)
}
",
    )
    .unwrap();
    let mut s = model.session(1).unwrap();
    // A bad id or label is the user's mistake, never reported as Kiln's bug.
    fn user_error<T>(r: Result<T, kiln::Error>) -> bool {
        matches!(
            r,
            Err(kiln::Error::Runtime(RuntimeError::Run(RunError::Input(_))))
        )
    }
    for bad in [-1.0f32, 2.5, 1e9, f32::NAN, f32::INFINITY, 5.0] {
        let ids: ArrayD<f32> = array![[0., 1., bad], [1., 2., 3.]].into_dyn();
        let label: ArrayD<f32> = array![1., 2.].into_dyn();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (
                user_error(s.predict(&[("ids", &ids)])),
                user_error(s.train_step(&[("ids", &ids)], &[("label", &label)])),
            )
        }));
        assert_eq!(r.ok(), Some((true, true)), "id {bad}");
        let ids: ArrayD<f32> = array![[0., 1., 2.], [1., 2., 3.]].into_dyn();
        let label: ArrayD<f32> = array![bad, 2.].into_dyn();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            user_error(s.train_step(&[("ids", &ids)], &[("label", &label)]))
        }));
        assert_eq!(r.ok(), Some(true), "label {bad}");
    }
}

/// With `standardize`, a regression model trained through the library on targets of a
/// large scale predicts in the targets' units, and its metrics are on that scale.
#[test]
fn standardized_regression_predicts_in_the_targets_units() {
    let model = kiln::compile_str(
        "model line {
           input  x: [N, 1]
           target y: [N, 1]
           h = x |> dense(1)
           output h
           loss mse(h, y)
         }
         train line {
           optimizer sgd(lr: 0.1)
           batch 5
           epochs 300
           standardize true
           seed 2
         }",
    )
    .unwrap();
    let mut s = model.session(2).unwrap();
    let xs: Vec<f32> = (0..20).map(|i| i as f32 / 19.0).collect();
    let x = ArrayD::from_shape_vec(vec![20, 1], xs.clone()).unwrap();
    let y = x.mapv(|v| 300.0 * v + 1000.0);
    let report = s.train(&[("x", &x)], &[("y", &y)], |_| {}).unwrap();
    // The loss is on the standardized scale: small from the first epoch.
    assert!(
        report.history[0].train_loss < 10.0,
        "{}",
        report.history[0].train_loss
    );
    let out = s.predict(&[("x", &x)]).unwrap();
    for (p, v) in out.iter().zip(&xs) {
        assert!((p - (300.0 * v + 1000.0)).abs() < 2.0, "{p} for x = {v}");
    }
    let ev = s.evaluate(&[("x", &x)], &[("y", &y)]).unwrap();
    let r = ev.regression.expect("regression metrics");
    assert!(r.r2 > 0.999 && r.mae < 2.0, "{r:?}");
}

/// `Session::load_pretrained`: the parameters of another model's checkpoint whose names
/// and shapes match are loaded exactly, the rest stay as initialized and are named.
#[test]
fn pretrained_parameters_load_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("xor.safetensors");
    let mut s = kiln::compile_str(XOR).unwrap().session(3).unwrap();
    let (x, y) = data();
    s.train(&[("x", &x)], &[("y", &y)], |_| {}).unwrap();
    s.save(&saved).unwrap();
    let other = XOR
        .replace("out = h |> dense(1)", "out = h |> dense(1) as head")
        .replace("xor", "tuned");
    let model = kiln::compile_str(&other).unwrap();
    let mut t = model.session(5).unwrap();
    let fresh = t.parameter("head.weight").unwrap().to_owned();
    let p = t.load_pretrained(&saved).unwrap();
    assert_eq!(p.loaded, ["h.dense.weight", "h.dense.bias"]);
    assert_eq!(p.values, 24);
    assert_eq!(p.fresh, ["head.weight", "head.bias"]);
    assert_eq!(p.unused, ["out.dense.bias", "out.dense.weight"]);
    assert_eq!(
        t.parameter("h.dense.weight").unwrap(),
        s.parameter("h.dense.weight").unwrap()
    );
    assert_eq!(t.parameter("head.weight").unwrap(), fresh);
    // A file that holds none of the parameters is a mistake, not a fresh start.
    let renamed = other.replace("x |> dense(8)", "x |> dense(8) as body");
    let mut u = kiln::compile_str(&renamed).unwrap().session(5).unwrap();
    let err = u.load_pretrained(&saved).unwrap_err().to_string();
    assert!(
        err.contains("holds none of model `tuned`'s parameters"),
        "{err}"
    );
}

/// `freeze h`: every parameter under `h` — batch normalization's running statistics
/// included — is bit-identical after training, carries no optimizer state, and the rest
/// trains; the summary counts the frozen apart.
#[test]
fn frozen_parameters_never_change() {
    let src = XOR
        .replace(
            "x |> dense(8) |> tanh",
            "x |> dense(8) |> batchnorm |> tanh",
        )
        .replace("epochs 200", "epochs 20\n  freeze h");
    let model = kiln::compile_str(&src).unwrap();
    assert!(
        model.summary().contains("Trainable params: 9\n"),
        "{}",
        model.summary()
    );
    assert!(
        model.summary().contains("Frozen params:    40\n"),
        "{}",
        model.summary()
    );
    let mut s = model.session(3).unwrap();
    let names = s.parameter_names();
    let before: Vec<ArrayD<f32>> = names
        .iter()
        .map(|n| s.parameter(n).unwrap().to_owned())
        .collect();
    let (x, y) = data();
    s.train(&[("x", &x)], &[("y", &y)], |_| {}).unwrap();
    for (n, b) in names.iter().zip(&before) {
        let after = s.parameter(n).unwrap();
        let same = after.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
        assert_eq!(same, n.starts_with("h."), "{n}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("frozen.safetensors");
    s.save(&path).unwrap();
    let c = kiln::runtime::checkpoint::Checkpoint::load(&path).unwrap();
    let state: Vec<&String> = c
        .tensors
        .keys()
        .filter(|k| k.starts_with("optimizer."))
        .collect();
    assert_eq!(
        state,
        [
            "optimizer.out.dense.bias.momentum_buffer",
            "optimizer.out.dense.weight.momentum_buffer"
        ]
    );
}
