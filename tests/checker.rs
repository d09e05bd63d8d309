//! Whole-pipeline tests of the checker through the library: parameter names, shapes,
//! initializers, shared layers, blocks, train configuration.

use kiln::check::graph::{CheckedModel, Init, LayerKind};
use kiln::check::train::{Metric, Schedule, Task};
use kiln::check::{check_file, Checked, LintLevels};
use kiln::ir::{Clip, Optimizer};
use kiln::span::Sources;

fn check(src: &str) -> Checked {
    let mut sources = Sources::new();
    let id = sources.add("test.kiln", None, src.to_string());
    check_file(&mut sources, id, &LintLevels::default())
}

fn model(src: &str) -> CheckedModel {
    let c = check(src);
    let codes: Vec<_> = c
        .diagnostics
        .iter()
        .map(|d| (d.code, d.message.clone()))
        .collect();
    let p = c
        .program
        .unwrap_or_else(|| panic!("unexpected errors: {codes:?}"));
    p.models.into_iter().next().expect("one model")
}

fn param_names(m: &CheckedModel) -> Vec<(String, Vec<u64>)> {
    m.params
        .iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect()
}

fn codes(src: &str) -> Vec<&'static str> {
    check(src)
        .diagnostics
        .iter()
        .map(|d| d.code.as_str())
        .collect()
}

#[test]
fn parameter_names_follow_the_binding_layer_index_rule() {
    let m = model(
        "model m {
           input x: [N, 784]
           h = x |> dense(256) |> relu
           logits = h |> dense(128) |> relu |> dense(10) as head
           out = logits |> dense(3) |> dense(2)
           output out
         }",
    );
    let names: Vec<String> = param_names(&m).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "h.dense.weight",
            "h.dense.bias",
            "logits.dense.weight",
            "logits.dense.bias",
            "head.weight",
            "head.bias",
            "out.dense.0.weight",
            "out.dense.0.bias",
            "out.dense.1.weight",
            "out.dense.1.bias",
        ]
    );
    assert_eq!(m.params[0].shape, vec![784, 256]);
    assert_eq!(m.params[4].shape, vec![128, 10]);
}

#[test]
fn pytorch_layouts_for_conv_norm_and_recurrent_layers() {
    let m = model(
        "model m {
           input img: [N, 3, 32, 32]
           input seq: [N, 7, 5]
           c = img |> conv2d(8, (3, 5), stride: 2, pad: 1) |> batchnorm
           r = seq |> lstm(4, bidirectional: true)
           g = seq |> gru(6, sequence: false)
           output c
           output r
           output g
         }",
    );
    let p = param_names(&m);
    let get = |n: &str| {
        p.iter()
            .find(|(x, _)| x == n)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| panic!("no {n} in {p:?}"))
    };
    assert_eq!(get("c.conv2d.weight"), vec![8, 3, 3, 5]);
    assert_eq!(get("c.batchnorm.running_var"), vec![8]);
    assert_eq!(get("r.lstm.weight_ih"), vec![16, 5]);
    assert_eq!(get("r.lstm.weight_hh_reverse"), vec![16, 4]);
    assert_eq!(get("g.gru.bias_hh"), vec![18]);
    let shape = |name: &str| {
        m.outputs
            .iter()
            .find(|o| o.name == name)
            .map(|o| m.nodes[o.node].ty.to_string())
            .unwrap()
    };
    // floor((32 + 2 - 3) / 2) + 1 = 16; floor((32 + 2 - 5) / 2) + 1 = 15
    assert_eq!(shape("c"), "[N, 8, 16, 15]");
    assert_eq!(shape("r"), "[N, 7, 8]");
    assert_eq!(shape("g"), "[N, 6]");
    let state: u64 = m
        .params
        .iter()
        .filter(|p| !p.trainable)
        .map(|p| p.numel())
        .sum();
    assert_eq!(state, 16);
}

#[test]
fn he_before_relu_family_xavier_otherwise() {
    let m = model(
        "model m {
           input x: [N, 4]
           a = x |> dense(8) |> batchnorm |> relu
           b = a |> dense(8) |> tanh
           c = b |> dense(8, init: normal(0.02)) |> relu
           output c
         }",
    );
    let init = |n: &str| m.params.iter().find(|p| p.name == n).unwrap().init.clone();
    assert_eq!(init("a.dense.weight"), Init::He);
    assert_eq!(init("b.dense.weight"), Init::Xavier);
    assert_eq!(init("c.dense.weight"), Init::Normal(0.02));
    assert_eq!(init("a.dense.bias"), Init::Constant(0.0));
}

#[test]
fn shared_layer_values_have_one_set_of_parameters() {
    let m = model(
        "model m {
           input a: [N, 10]
           input b: [N, 10]
           layer enc = dense(4)
           za = a |> enc
           zb = b |> enc
           output s = za + zb
         }",
    );
    assert_eq!(
        param_names(&m),
        vec![
            ("enc.weight".into(), vec![10, 4]),
            ("enc.bias".into(), vec![4])
        ]
    );
    assert_eq!(m.layers.len(), 1);
    let c = codes(
        "model m {
           input a: [N, 10]
           input b: [N, 12]
           layer enc = dense(4)
           output s = (a |> enc) + (b |> enc)
         }",
    );
    assert_eq!(c, ["E0314"]);
}

#[test]
fn blocks_instantiate_per_use_with_unified_symbols() {
    let m = model(
        "block residual(x: [N, C, H, W]) {
           y = x |> conv2d(C, 3, pad: 1) |> relu
           return relu(x + y)
         }
         model m {
           input img: [N, 1, 8, 8]
           s = img |> conv2d(16, 3, pad: 1)
           r1 = s |> residual
           r2 = r1 |> residual
           t = r2 |> conv2d(4, 1)
           r3 = t |> residual
           output r3
         }",
    );
    let names: Vec<String> = param_names(&m).into_iter().map(|(n, _)| n).collect();
    assert!(
        names.contains(&"r1.residual.y.conv2d.weight".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"r2.residual.y.conv2d.bias".to_string()));
    let w = m
        .params
        .iter()
        .find(|p| p.name == "r3.residual.y.conv2d.weight")
        .unwrap();
    assert_eq!(w.shape, vec![4, 4, 3, 3]);
}

#[test]
fn shared_block_reuses_parameters() {
    let m = model(
        "block mlp(x: [N, F]) {
           return x |> dense(F) |> relu
         }
         model m {
           input x: [N, 6]
           layer f = mlp
           y = x |> f |> f
           output y
         }",
    );
    assert_eq!(
        param_names(&m),
        vec![
            ("f.return.dense.weight".into(), vec![6, 6]),
            ("f.return.dense.bias".into(), vec![6])
        ]
    );
}

#[test]
fn errors_report_each_root_cause_once() {
    // `h` fails (unknown layer); everything computed from it stays silent.
    let c = codes(
        "model m {
           input x: [N, 4]
           target y: class[N] of 3
           h = x |> dens(8)
           z = h |> relu |> dense(3)
           q = dense(x, 5) + x
           output z
           loss cross_entropy(z, y)
         }",
    );
    assert_eq!(c, ["E0202", "E0301"]);
}

#[test]
fn class_counts_and_loss_shapes() {
    let c = codes(
        "model m {
           input x: [N, 4]
           target y: class[N] of 3
           z = x |> dense(4)
           output z
           loss cross_entropy(z, y)
         }",
    );
    assert_eq!(c, ["E0307"]);
    let c = codes(
        "model m {
           input x: [N, 4]
           target y: [N]
           z = x |> dense(1)
           output z
           loss mse(z, y)
         }",
    );
    assert_eq!(c, ["E0308"]);
}

#[test]
fn train_blocks_fill_defaults_and_validate_ranges() {
    let src = "model m {
                 input x: [N, 2]
                 target y: [N, 1]
                 z = x |> dense(1)
                 output z
                 loss mse(z, y)
               }
               train m {
                 optimizer sgd(lr: 0.1, momentum: 0.9, nesterov: true)
                 schedule warmup(2) then step(every: 5, gamma: 0.5)
                 clip norm(5)
                 metrics mae, r2
               }";
    let p = check(src).program.expect("valid");
    let t = &p.trains[0];
    assert_eq!(t.batch, 32);
    assert_eq!(t.epochs, 10);
    assert_eq!(t.clip, Some(Clip::Norm(5.0)));
    assert!(
        matches!(t.optimizer, Optimizer::Sgd { lr, momentum, nesterov: true, .. } if lr == 0.1 && momentum == 0.9)
    );
    assert_eq!(
        t.schedule,
        Schedule::Warmup {
            epochs: 2,
            then: Box::new(Schedule::Step {
                every: 5,
                gamma: 0.5
            })
        }
    );
    let bad = src
        .replace("lr: 0.1", "lr: 0")
        .replace("momentum: 0.9", "momentum: 1.5");
    assert_eq!(
        codes(&bad),
        ["E0403", "E0403"],
        "both bad values are reported"
    );
    let bad = src.replace("metrics mae, r2", "metrics acuracy\n epoch 3");
    assert_eq!(codes(&bad), ["E0402", "E0401"]);
    let no_loss = "model m {\n input x: [N, 2]\n output x\n}\ntrain m {\n batch 2\n}";
    assert_eq!(codes(no_loss), ["E0404"]);
}

#[test]
fn recurrent_and_embedding_layers() {
    let m = model(
        "model m {
           input tokens: class[N, 12] of 100
           e = tokens |> embedding(100, 16, frozen: true)
           h = e |> rnn(8, activation: relu) |> last
           output h
         }",
    );
    assert!(matches!(
        m.layers[1].kind,
        LayerKind::Recurrent { hidden: 8, .. }
    ));
    assert!(!m.params[0].trainable);
    assert_eq!(m.nodes[m.outputs[0].node].ty.to_string(), "[N, 8]");
}

#[test]
fn every_example_checks_cleanly() {
    for entry in std::fs::read_dir("examples").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "kiln") {
            let mut sources = Sources::new();
            let (id, bad) = kiln::check::load_file(&mut sources, &path).unwrap();
            assert!(bad.is_none());
            let c = check_file(&mut sources, id, &LintLevels::default());
            assert!(
                c.diagnostics.is_empty(),
                "{}: {}",
                path.display(),
                kiln::diag::render(&sources, &c.diagnostics, kiln::diag::ColorChoice::Never)
            );
            let p = c.program.unwrap();
            assert!(!p.trains.is_empty(), "{} has a train block", path.display());
            assert!(p.trains[0].train_data.as_ref().is_some_and(|d| d.exists()));
        }
    }
}

/// Every lint has its own name (W0005 and W0101 were both `vanishing_gradients`, so
/// `allow vanishing_gradients` silenced only the first).
#[test]
fn lint_names_are_unique() {
    let lints: Vec<&str> = kiln::diag::CODES
        .iter()
        .map(|c| c.lint)
        .filter(|l| !l.is_empty())
        .collect();
    for (i, a) in lints.iter().enumerate() {
        assert!(!lints[i + 1..].contains(a), "two lints are named `{a}`");
    }
    assert_eq!(
        kiln::diag::lookup("saturating_stack").map(|c| c.code.as_str()),
        Some("W0005")
    );
}

#[test]
fn metrics_follow_the_task_of_the_loss() {
    let model_with = |target: &str, loss: &str, metrics: &str| {
        format!(
            "model m {{\n  input x: [N, 2]\n  target y: {target}\n  z = x |> dense(2)\n  output z\n  loss {loss}\n}}\ntrain m {{\n  metrics {metrics}\n}}\n"
        )
    };
    let regression = model_with("[N, 2]", "mse(z, y)", "r2, mae, rmse, r2");
    let c = check(&regression);
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    let p = c.program.expect("checks");
    assert_eq!(Task::of(&p.models[0]), Some(Task::Regression));
    assert_eq!(p.trains[0].metrics, [Metric::R2, Metric::Mae, Metric::Rmse]);
    for loss in ["mae(z, y)", "huber(z, y)", "0.5 * mse(z, y) + mae(z, y)"] {
        let src = model_with("[N, 2]", loss, "accuracy");
        assert_eq!(codes(&src), ["E0406"], "{loss}");
    }
    let classifier = model_with("class[N] of 2", "cross_entropy(z, y)", "mae, f1");
    assert_eq!(codes(&classifier), ["E0406"]);
    let p = check(&model_with("class[N] of 2", "cross_entropy(z, y)", "f1"))
        .program
        .expect("checks");
    assert_eq!(Task::of(&p.models[0]), Some(Task::Classification));
    assert_eq!(p.trains[0].metrics, [Metric::F1]);
}
