//! The JIT against the reference interpreter: outputs, loss, every gradient, and the
//! parameters after three optimizer steps, at batch sizes 1, 7 and 64, for every example
//! that runs today and for models that use every operation, layer, loss, optimizer and
//! clipping.

use kiln::check::{check_file, LintLevels};
use kiln::exec::{Backend, State};
use kiln::interp::dims;
use kiln::interp::Interpreter;
use kiln::ir::DType;
use kiln::jit::Jit;
use kiln::ops::elementwise::Spelling;
use kiln::ops::Elem;
use kiln::runtime::program::{self, Program};
use kiln::runtime::schedule;
use kiln::runtime::train::Run;
use kiln::span::Sources;
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn program(src: &str) -> (Program, kiln::check::train::TrainConfig) {
    let mut sources = Sources::new();
    let id = sources.add("t.kiln", None, src.to_string());
    let c = check_file(&mut sources, id, &LintLevels::default());
    let msgs: Vec<String> = c.diagnostics.iter().map(|d| d.message.clone()).collect();
    let p = c.program.unwrap_or_else(|| panic!("{msgs:?}"));
    let m = &p.models[0];
    let cfg = p
        .train(&m.name)
        .cloned()
        .unwrap_or_else(|| kiln::check::train::TrainConfig::defaults(&m.name, m.span));
    (program::prepare(m), cfg)
}

fn random_batch(
    p: &Program,
    batch: usize,
    rng: &mut ChaCha8Rng,
) -> (Vec<ArrayD<f32>>, Vec<ArrayD<f32>>) {
    let gen = |t: &kiln::ir::Tensor, rng: &mut ChaCha8Rng| {
        let d = dims(&t.shape, batch);
        let n: usize = d.iter().product();
        let v: Vec<f32> = match t.dtype {
            DType::Class(k) => (0..n).map(|_| rng.gen_range(0..k) as f32).collect(),
            DType::F32 => (0..n).map(|_| rng.gen_range(-1.5f32..1.5)).collect(),
        };
        ArrayD::from_shape_vec(IxDyn(&d), v).unwrap()
    };
    let inputs = p.forward.inputs.iter().map(|t| gen(t, rng)).collect();
    let targets = p.forward.targets.iter().map(|t| gen(t, rng)).collect();
    (inputs, targets)
}

fn close(what: &str, a: &ArrayD<f32>, b: &ArrayD<f32>) {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes");
    for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
        let tol = 1e-5 * x.abs().max(y.abs()).max(1.0);
        assert!(
            (x - y).abs() <= tol || (x.is_nan() && y.is_nan()),
            "{what}[{i}]: interp {x} vs jit {y}"
        );
    }
}

/// Compares the two backends on a model at batch sizes 1, 7 and 64.
fn compare(src: &str) {
    let (p, cfg) = program(src);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for batch in [1, 7, 64] {
        let (inputs, targets) = random_batch(&p, batch, &mut rng);
        let run = Run::new(&p, &cfg).unwrap();
        let state: State = run.state.clone();
        let (mut interp, mut jit) = (Interpreter, Jit::new());
        // Forward: every output and the loss.
        let mut roots: Vec<_> = p.forward.outputs.iter().map(|(_, n)| *n).collect();
        roots.extend(p.forward.loss);
        let a = interp
            .forward(&p.forward, &state, &inputs, &targets, &roots)
            .unwrap();
        let b = jit
            .forward(&p.forward, &state, &inputs, &targets, &roots)
            .unwrap();
        assert_eq!(a.len(), roots.len(), "batch {batch}: interpreter outputs");
        assert_eq!(b.len(), roots.len(), "batch {batch}: JIT outputs");
        for (k, (x, y)) in a.iter().zip(&b).enumerate() {
            close(&format!("batch {batch} forward root {k}"), x, y);
        }
        if p.forward.loss.is_none() {
            continue;
        }
        // Gradients.
        let g = run.graph();
        let h = schedule::hyper(&cfg.optimizer, cfg.clip, 0.01, 1);
        let (la, ga) = interp.gradients(g, &state, &inputs, &targets, &h).unwrap();
        let (lb, gb) = jit.gradients(g, &state, &inputs, &targets, &h).unwrap();
        assert!(
            (la - lb).abs() <= 1e-5 * la.abs().max(1.0),
            "batch {batch} loss {la} vs {lb}"
        );
        assert_eq!(ga.len(), gb.len(), "batch {batch}: gradients");
        for ((pa, x), (pb, y)) in ga.iter().zip(&gb) {
            assert_eq!(pa, pb);
            close(
                &format!("batch {batch} grad {}", p.forward.params[*pa].tensor.name),
                x,
                y,
            );
        }
        // Three optimizer steps.
        let (mut sa, mut sb) = (state.clone(), state.clone());
        for step in 1..=3 {
            let h = schedule::hyper(&cfg.optimizer, cfg.clip, cfg.optimizer.lr(), step);
            let ra = interp.step(g, &mut sa, &inputs, &targets, &h).unwrap();
            let rb = jit.step(g, &mut sb, &inputs, &targets, &h).unwrap();
            assert!(
                (ra.loss - rb.loss).abs() <= 1e-5 * ra.loss.abs().max(1.0),
                "step {step}: {} vs {}",
                ra.loss,
                rb.loss
            );
        }
        assert_eq!(
            sa.params.len(),
            sb.params.len(),
            "batch {batch}: parameters"
        );
        assert_eq!(sa.params.len(), p.forward.params.len());
        for (k, (x, y)) in sa.params.iter().zip(&sb.params).enumerate() {
            close(
                &format!(
                    "batch {batch} param {} after 3 steps",
                    p.forward.params[k].tensor.name
                ),
                x,
                y,
            );
        }
        assert_eq!(sa.states.len(), sb.states.len(), "batch {batch}: states");
        for (k, (x, y)) in sa.states.iter().zip(&sb.states).enumerate() {
            close(
                &format!("batch {batch} optimizer state {k} after 3 steps"),
                x,
                y,
            );
        }
    }
}

fn strip_train(src: &str) -> String {
    // The train block's data paths are relative to the examples folder; keep the settings.
    src.lines()
        .filter(|l| !l.trim_start().starts_with("data "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn examples_match_the_interpreter() {
    for name in [
        "xor.kiln",
        "iris.kiln",
        "digits_mlp.kiln",
        "breast_cancer.kiln",
    ] {
        let src = strip_train(&std::fs::read_to_string(format!("examples/{name}")).unwrap());
        compare(&src);
    }
}

const TRAIN: &str = "train m {\n  optimizer sgd(lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 0.01)\n  clip norm(1.0)\n}\n";

/// Every elementwise function the language names (and each variant, as its word argument
/// chooses it), read from the registry, between two layers.
#[test]
fn every_activation_matches() {
    let mut calls = Vec::new();
    for &e in Elem::ALL {
        let d = e.def();
        let call = match d.traits.dsl {
            Some(Spelling::Activation | Spelling::Function) => d.name.to_string(),
            Some(Spelling::Variant { of, arg, value, .. }) => format!("{of}({arg}: {value})"),
            None => continue,
        };
        // Functions defined on positive numbers get inputs away from 0.
        let pre = if d.domain.lo > 0.0 {
            "|> abs |> softplus |> "
        } else {
            "|> "
        };
        calls.push(format!("{pre}{call}"));
    }
    assert!(calls.len() >= 17, "{calls:?}");
    for act in calls {
        let src = format!(
            "model m {{\n  input x: [N, 5]\n  target y: [N, 3]\n  h = x |> dense(6) {act} |> dense(3)\n  output h\n  loss mse(h, y)\n}}\n{TRAIN}"
        );
        compare(&src);
    }
}

#[test]
fn arithmetic_reductions_and_shapes_match() {
    compare(
        "model m {
  input x: [N, 4, 3]
  input z: [N, 3]
  target y: [N, 2]
  a = x |> dense(3) |> tanh
  zz = reshape(z, [N, 1, 3])
  b = a * zz - zz / (abs(zz) + 1) + 0.5
  c = concat(mean(b, axis: 2), sum(b, axis: 1), max(b, axis: 2), min(b, axis: 1), axis: 1)
  d = (b @ reshape(z, [N, 3, 1])) |> flatten
  e = concat(first(x), last(x), c, d, axis: 1) |> dense(2)
  output probs = softmax(e)
  output lp = log_softmax(e)
  loss huber(e, y, delta: 0.5) + 0.1 * mae(e, y) + 0.01 * mean(-e)
  regularize l1(0.001)
  regularize l2(0.01) on e
}
train m {
  optimizer adamw(lr: 0.01, weight_decay: 0.1)
  clip value(0.5)
}",
    );
}

#[test]
fn every_loss_matches() {
    let class = |loss: &str, opt: &str| {
        format!(
            "model m {{\n  input x: [N, 6]\n  target y: class[N] of 4\n  s = x |> dense(8) |> relu |> dense(4)\n  output s\n  loss {loss}\n}}\ntrain m {{\n  optimizer {opt}\n}}\n"
        )
    };
    compare(&class("cross_entropy(s, y)", "adam(lr: 0.01)"));
    compare(&class(
        "cross_entropy(s, y, smoothing: 0.1)",
        "rmsprop(lr: 0.01, momentum: 0.5)",
    ));
    compare(&class("focal(s, y, gamma: 2)", "rmsprop(lr: 0.01)"));
    compare(&class("hinge(s, y)", "sgd(lr: 0.1)"));
    let binary = |loss: &str| {
        format!(
            "model m {{\n  input x: [N, 6]\n  target y: [N, 1]\n  s = x |> dense(5) |> elu |> dense(1)\n  output s\n  loss {loss}\n}}\ntrain m {{\n  optimizer adam(lr: 0.01, weight_decay: 0.01)\n}}\n"
        )
    };
    for loss in [
        "bce(s, y)",
        "focal(s, y)",
        "exponential(s, y)",
        "hinge(s, y)",
        "mse(s, y)",
        "mae(s, y)",
        "huber(s, y)",
    ] {
        compare(&binary(loss));
    }
    compare(
        "model m {\n  input x: [N, 6]\n  target y: [N, 3]\n  s = x |> dense(3)\n  output s\n  loss cross_entropy(s, softmax(y))\n}\n",
    );
}

#[test]
fn layer_examples_match_the_interpreter() {
    for name in ["digits_cnn.kiln", "digits_gru.kiln", "resnet_block.kiln"] {
        let src = strip_train(&std::fs::read_to_string(format!("examples/{name}")).unwrap());
        compare(&src);
    }
}

/// `digits_bn_dropout` trains with its own Adam. Its dense layer before batchnorm has no
/// bias: a bias there has a zero true gradient (batchnorm subtracts the batch mean), which
/// both backends compute as rounding noise, and Adam's normalization would turn that noise
/// into steps of ±lr/10 whose sign no two summation orders share.
#[test]
fn batchnorm_dropout_example_matches_the_interpreter() {
    let src = strip_train(&std::fs::read_to_string("examples/digits_bn_dropout.kiln").unwrap());
    assert!(
        src.contains("dense(256, bias: false) |> batchnorm"),
        "{src}"
    );
    compare(&src);
}

/// The train block of the layer cases: Adam (state for every parameter), clipping, a seed
/// for the noise.
const LAYER_TRAIN: &str = "train m {\n  optimizer adam(lr: 0.01)\n  clip norm(1.0)\n  seed 3\n}\n";

/// A model `h = x |> LAYERS |> dense(2)` on input `x: INPUT` with an mse loss.
fn layer_model(input: &str, layers: &str) -> String {
    format!(
        "model m {{\n  input x: {input}\n  target y: [N, 2]\n  h = x |> {layers} |> dense(2)\n  output h\n  loss mse(h, y)\n}}\n{LAYER_TRAIN}"
    )
}

#[test]
fn convolutions_match() {
    for (input, layers) in [
        ("[N, 2, 9]", "conv1d(3, 3) |> tanh |> flatten"),
        (
            "[N, 2, 9]",
            "conv1d(3, 3, stride: 2, pad: 1, dilation: 2) |> relu |> conv1d(2, 1) |> flatten",
        ),
        ("[N, 2, 6, 5]", "conv2d(3, 3, pad: 1) |> relu |> flatten"),
        (
            "[N, 2, 6, 5]",
            "conv2d(3, (3, 2), stride: (2, 1), pad: (1, 0)) |> tanh |> conv2d(2, 1, bias: false) |> flatten",
        ),
        (
            "[N, 1, 7, 6]",
            "conv2d(2, 2, dilation: 2, pad: 1, stride: 2) |> elu |> flatten",
        ),
        ("[N, 3, 4, 4]", "conv2d(4, 1) |> flatten"),
    ] {
        compare(&layer_model(input, layers));
    }
}

/// Convolutions whose column matrix is built over several chunks of the batch (an
/// uneven last one at batch 7 and 64), and 2×2 max pooling over blocks of four windows,
/// a tail, and odd heights and widths whose last row and column no window reads (after
/// ReLU, so windows tie at 0 and the first element must get the gradient).
#[test]
fn chunked_convolutions_and_2x2_pooling_match() {
    for (input, layers) in [
        (
            "[N, 3, 20, 21]",
            "conv2d(4, 5) |> relu |> maxpool2d(2) |> conv2d(3, 3, pad: 1) |> relu |> maxpool2d(2) |> flatten",
        ),
        (
            "[N, 2, 19, 40]",
            "conv2d(5, (3, 4), stride: (1, 2), pad: (1, 1)) |> relu |> maxpool2d(2) |> flatten",
        ),
    ] {
        compare(&layer_model(input, layers));
    }
}

#[test]
fn poolings_match() {
    for (input, layers) in [
        ("[N, 2, 9]", "conv1d(2, 2) |> maxpool1d(2) |> flatten"),
        (
            "[N, 2, 9]",
            "conv1d(2, 2) |> tanh |> maxpool1d(3, stride: 1, pad: 1) |> flatten",
        ),
        (
            "[N, 2, 9]",
            "conv1d(2, 2) |> avgpool1d(3, stride: 2, pad: 1, count_pad: false) |> flatten",
        ),
        (
            "[N, 2, 9]",
            "conv1d(2, 2) |> avgpool1d(2, pad: 1) |> flatten",
        ),
        (
            "[N, 2, 6, 6]",
            "conv2d(2, 2, pad: 1) |> relu |> maxpool2d(2) |> flatten",
        ),
        (
            "[N, 2, 6, 6]",
            "conv2d(2, 2) |> tanh |> maxpool2d(3, stride: 2, pad: 1) |> flatten",
        ),
        (
            "[N, 2, 6, 6]",
            "conv2d(2, 2) |> avgpool2d((2, 3), stride: 1, pad: (1, 1)) |> flatten",
        ),
        (
            "[N, 2, 6, 6]",
            "conv2d(2, 2) |> avgpool2d(3, stride: 2, pad: 1, count_pad: false) |> flatten",
        ),
        ("[N, 2, 6, 5]", "conv2d(3, 2) |> global_avgpool"),
        ("[N, 2, 6, 5]", "conv2d(3, 2) |> tanh |> global_maxpool"),
        ("[N, 2, 9]", "conv1d(3, 2) |> global_maxpool"),
        ("[N, 2, 7, 5]", "conv2d(2, 2) |> spp(levels: [1, 2, 3])"),
        (
            "[N, 2, 9]",
            "conv1d(2, 2) |> tanh |> maxpool1d(3, stride: 1, pad: 2) |> flatten",
        ),
        (
            "[N, 2, 6, 6]",
            "conv2d(2, 2) |> avgpool2d(3, stride: 2, pad: 2, count_pad: false) |> flatten",
        ),
        ("[N, 1, 4, 4]", "conv2d(2, 2) |> spp(levels: [1, 4])"),
    ] {
        compare(&layer_model(input, layers));
    }
}

/// Layers right before `batchnorm` have no bias: its gradient would be zero up to
/// rounding, which Adam amplifies (see `batchnorm_dropout_example_matches_the_interpreter`).
#[test]
fn normalization_and_prelu_match() {
    for (input, layers) in [
        ("[N, 5]", "dense(6, bias: false) |> batchnorm |> relu"),
        (
            "[N, 2, 5, 5]",
            "conv2d(3, 3, pad: 1, bias: false) |> batchnorm(momentum: 0.3) |> relu |> global_avgpool",
        ),
        ("[N, 2, 7]", "conv1d(3, 2, bias: false) |> batchnorm |> flatten"),
        ("[N, 4, 5]", "dense(6) |> layernorm |> tanh |> flatten"),
        ("[N, 5]", "dense(6) |> layernorm(eps: 0.001)"),
        ("[N, 5]", "dense(6) |> prelu"),
        ("[N, 2, 5, 5]", "conv2d(3, 2) |> prelu |> flatten"),
    ] {
        compare(&layer_model(input, layers));
    }
}

/// The fused batch normalization kernels (statistics, normalization, the two sums and dx
/// of the VJP) on channel runs of every length mod 4, over `[N, C]` rows wider than a
/// vector, and after a shift that makes the mean large against the spread. As above, no
/// bias right before a batchnorm.
#[test]
fn fused_batchnorm_matches() {
    for (input, layers) in [
        (
            "[N, 7]",
            "dense(37, bias: false) |> batchnorm(eps: 0.01) |> relu",
        ),
        (
            "[N, 3, 6]",
            "conv1d(2, 1, bias: false) |> batchnorm |> flatten",
        ),
        (
            "[N, 2, 3, 3]",
            "conv2d(5, 1, bias: false) |> batchnorm |> tanh |> flatten",
        ),
        (
            "[N, 3]",
            "dense(4, bias: false) |> exp |> batchnorm(momentum: 0.5) |> dense(3) |> relu",
        ),
    ] {
        compare(&layer_model(input, layers));
    }
}

#[test]
fn dropout_and_rrelu_match() {
    for (input, layers) in [
        ("[N, 5]", "dense(16) |> relu |> dropout(0.5)"),
        ("[N, 2, 4, 4]", "conv2d(3, 2) |> dropout(0.2) |> flatten"),
        ("[N, 5]", "dense(16) |> rrelu"),
        (
            "[N, 5]",
            "dense(8) |> rrelu(lower: 0.05, upper: 0.5) |> dropout(0.3) |> dense(8) |> rrelu",
        ),
    ] {
        compare(&layer_model(input, layers));
    }
}

#[test]
fn embeddings_match() {
    compare(&format!(
        "model m {{
  input ids: class[N, 5] of 7
  target y: class[N] of 3
  h = ids |> embedding(7, 4) |> flatten |> dense(3)
  output h
  loss cross_entropy(h, y)
}}
{LAYER_TRAIN}"
    ));
    compare(&format!(
        "model m {{
  input ids: class[N] of 5
  target y: [N, 2]
  h = ids |> embedding(5, 3) |> dense(2)
  output h
  loss mse(h, y)
}}
{LAYER_TRAIN}"
    ));
    compare(&format!(
        "model m {{
  input ids: class[N, 4] of 6
  input x: [N, 4, 2]
  target y: [N, 2]
  a = ids |> embedding(6, 3, frozen: true)
  b = ids |> embedding(6, 2)
  h = concat(a, b, x, axis: 2) |> dense(3) |> tanh |> flatten |> dense(2)
  output h
  loss mse(h, y)
}}
{LAYER_TRAIN}"
    ));
}

#[test]
fn recurrent_layers_match() {
    for layers in [
        "rnn(3) |> flatten",
        "rnn(3, activation: relu, bidirectional: true, sequence: false)",
        "lstm(3) |> last",
        "lstm(3, bidirectional: true) |> flatten",
        "lstm(2, bidirectional: true, sequence: false)",
        "gru(3, sequence: false)",
        "gru(3, bidirectional: true) |> first",
        "gru(2, bidirectional: true, sequence: false)",
    ] {
        compare(&layer_model("[N, 5, 3]", layers));
    }
    compare(&layer_model(
        "[N, 1, 3]",
        "lstm(2, bidirectional: true, sequence: false)",
    ));
}

/// The fused recurrence's kernels with hidden sizes that fill whole vectors and leave
/// remainders, in both directions, at batch 1 (row loops) and 7 and 64 (the GEMM).
#[test]
fn fused_recurrences_of_wider_cells_match() {
    for (input, layers) in [
        ("[N, 6, 5]", "lstm(16, bidirectional: true) |> last"),
        ("[N, 5, 4]", "gru(9, bidirectional: true, sequence: false)"),
        (
            "[N, 7, 3]",
            "rnn(8, activation: relu, bidirectional: true) |> flatten",
        ),
        ("[N, 4, 3]", "rnn(5, activation: relu) |> first"),
        ("[N, 1, 4]", "gru(6, bidirectional: true) |> flatten"),
        ("[N, 3, 4]", "lstm(5, sequence: false)"),
    ] {
        compare(&layer_model(input, layers));
    }
}

/// Same inputs, same bits: the recurrence's gradients do not depend on the run or on the
/// thread count.
#[test]
fn fused_recurrence_is_deterministic_across_threads() {
    let src = layer_model(
        "[N, 12, 6]",
        "lstm(32, bidirectional: true, sequence: false)",
    );
    let (p, cfg) = program(&src);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (inputs, targets) = random_batch(&p, 48, &mut rng);
    let run = Run::new(&p, &cfg).unwrap();
    let g = run.graph();
    let h = schedule::hyper(&cfg.optimizer, cfg.clip, 0.01, 1);
    let grads = |threads: usize| {
        let mut jit = Jit::with_threads(threads);
        jit.gradients(g, &run.state, &inputs, &targets, &h).unwrap()
    };
    let (l1, g1) = grads(1);
    for threads in [1, 2] {
        let (l, gr) = grads(threads);
        assert_eq!(l.to_bits(), l1.to_bits(), "loss, {threads} threads");
        for ((pa, x), (pb, y)) in g1.iter().zip(&gr) {
            assert_eq!(pa, pb);
            let same = x
                .iter()
                .zip(y.iter())
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{threads} threads: gradient of parameter {pa} differs"
            );
        }
    }
}

/// Every way the JIT computes a matrix product — generated loops for tiny products (each
/// combination of transposes), the run-time choice for GEMV-like ones (at most 4 rows
/// inline, more through the GEMM) with its epilogue, the kernel for GEMV-like ones with a
/// large right operand, and the library GEMM — against the
/// interpreter, at batch sizes around the 4-row boundary.
#[test]
fn every_product_path_matches_the_interpreter() {
    use kiln::ir::build::Builder;
    use kiln::ir::{Dim, Func, Graph, Op, Param, Shape, Tensor};
    use kiln::jit::plan::{plan, Kind};
    let n = Dim::Batch;
    let f = |k: u64| Dim::Fixed(k);
    // (a's shape, b's shape, ta, tb, the plan's choice)
    let cases = [
        (
            vec![f(3), f(5)],
            vec![f(5), f(4)],
            false,
            false,
            Kind::Product,
        ),
        (
            vec![f(5), f(3)],
            vec![f(5), f(4)],
            true,
            false,
            Kind::Product,
        ),
        (
            vec![f(3), f(5)],
            vec![f(4), f(5)],
            false,
            true,
            Kind::Product,
        ),
        (
            vec![f(5), f(3)],
            vec![f(4), f(5)],
            true,
            true,
            Kind::Product,
        ),
        (vec![n, f(3)], vec![f(3), f(5)], false, false, Kind::Product),
        (vec![n, f(6)], vec![f(5), f(6)], false, true, Kind::Product),
        (vec![n, f(3)], vec![n, f(5)], true, false, Kind::Product),
        (vec![n, f(40)], vec![f(40), f(53)], false, false, Kind::Gemv),
        (vec![n, f(37)], vec![f(30), f(37)], false, true, Kind::Gemv),
        (vec![n, f(40)], vec![n, f(30)], true, false, Kind::Kernel),
        // GEMV-like with a right operand past an L2 cache: the kernel's row-streaming loops
        // up to 4 rows.
        (
            vec![n, f(300)],
            vec![f(300), f(900)],
            false,
            false,
            Kind::Kernel,
        ),
        (
            vec![n, f(300)],
            vec![f(900), f(300)],
            false,
            true,
            Kind::Kernel,
        ),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (sa, sb, ta, tb, kind) in cases {
        let mut g = Graph::default();
        let x = g.push(
            Op::Input(0),
            vec![],
            Shape::new(sa.clone()),
            DType::F32,
            None,
            "a",
        );
        g.inputs.push(Tensor {
            name: "a".into(),
            shape: Shape::new(sa.clone()),
            dtype: DType::F32,
        });
        // The second operand is an input when it has the batch, else a parameter.
        let batched = sb.contains(&n);
        let w = if batched {
            g.inputs.push(Tensor {
                name: "b".into(),
                shape: Shape::new(sb.clone()),
                dtype: DType::F32,
            });
            g.push(
                Op::Input(1),
                vec![],
                Shape::new(sb.clone()),
                DType::F32,
                None,
                "b",
            )
        } else {
            g.params.push(Param {
                tensor: Tensor {
                    name: "b".into(),
                    shape: Shape::new(sb.clone()),
                    dtype: DType::F32,
                },
                trainable: true,
            });
            g.push(
                Op::Param(0),
                vec![],
                Shape::new(sb.clone()),
                DType::F32,
                None,
                "b",
            )
        };
        let mut b = Builder::new(&mut g);
        // An epilogue: bias by column and an activation.
        let cols = match (ta, tb) {
            (_, false) => sb[1],
            (_, true) => sb[0],
        };
        let quarter = b.constant(0.25);
        let bias = b.broadcast_to(quarter, Shape::new(vec![cols]));
        let y = b.matmul(x, w, ta, tb);
        let z = b.add(y, bias);
        let out = b.map(Func::of(Elem::Tanh), z);
        let planned = plan(&g, &[out]);
        assert_eq!(planned.kinds[y], kind, "{sa:?}·{sb:?} ta {ta} tb {tb}");
        let fused = (kind != Kind::Kernel).then_some(out);
        assert_eq!(
            planned.epilogue(y),
            fused,
            "bias and tanh are the product's epilogue"
        );
        for batch in [1, 3, 4, 5, 7, 64] {
            let gen = |s: &[Dim], rng: &mut ChaCha8Rng| {
                let d = dims(&Shape::new(s.to_vec()), batch);
                let v = (0..d.iter().product()).map(|_| rng.gen_range(-1.0f32..1.0));
                ArrayD::from_shape_vec(IxDyn(&d), v.collect()).unwrap()
            };
            let mut inputs = vec![gen(&sa, &mut rng)];
            let mut state = State {
                params: vec![],
                states: vec![],
            };
            if batched {
                inputs.push(gen(&sb, &mut rng));
            } else {
                state.params.push(gen(&sb, &mut rng));
            }
            // The product itself is not a root, so its epilogue runs inside its loops.
            let roots = [out];
            let a = Interpreter
                .forward(&g, &state, &inputs, &[], &roots)
                .unwrap();
            let j = Jit::new()
                .forward(&g, &state, &inputs, &[], &roots)
                .unwrap();
            for (k, (p, q)) in a.iter().zip(&j).enumerate() {
                close(
                    &format!("{sa:?}·{sb:?} ta {ta} tb {tb} batch {batch} root {k}"),
                    p,
                    q,
                );
            }
        }
    }
}

/// An Adam step is one pass over each parameter: both moments are computed inside the
/// weight's loop and stored there (`Stored`). The values match the interpreter's:
/// `every_loss_matches` and the examples above train with Adam.
#[test]
fn adam_updates_each_parameter_in_one_loop() {
    let (p, cfg) = program(
        "model m {\n  input x: [N, 5]\n  target y: [N, 3]\n  out = x |> dense(3)\n  output out\n  loss mse(out, y)\n}\ntrain m {\n  optimizer adam(lr: 0.01, weight_decay: 0.001)\n}\n",
    );
    let g = p.training_graph(&cfg);
    let plan = kiln::jit::plan::plan(&g, &g.step_roots());
    use kiln::jit::plan::Kind;
    let stored = plan.kinds.iter().filter(|k| **k == Kind::Stored).count();
    assert_eq!(stored, 4, "two moments of each of two parameters");
    for (slot, u) in &g.updates {
        let host = match plan.kinds[*u] {
            Kind::Stored => (0..g.nodes.len())
                .find(|&j| plan.kinds[j] == Kind::Loop && plan.fused_into(&g, j).contains(u))
                .expect("a loop computes it"),
            _ => *u,
        };
        assert_eq!(plan.kinds[host], Kind::Loop, "{slot:?}");
        assert_eq!(
            g.updates
                .iter()
                .filter(|(_, v)| { *v == host || plan.fused_into(&g, host).contains(v) })
                .count(),
            3,
            "{slot:?}: the weight and both moments in one loop"
        );
    }
}

/// A recurrent layer's backward pass is handed its states' gradient alone (`[N, T, H]`),
/// never the reserve-wide one padded with zeros; an LSTM or plain RNN adds both biases
/// once, as one `[G·H]` sum.
#[test]
fn recurrences_take_their_states_gradient() {
    use kiln::ir::Op;
    use kiln::jit::plan::Kind;
    for layer in [
        "lstm(8, sequence: false)",
        "gru(8, sequence: true) |> flatten",
        "rnn(8, bidirectional: true, sequence: false)",
    ] {
        let (p, cfg) = program(&layer_model("[N, 5, 3]", layer));
        let g = p.training_graph(&cfg);
        let plan = kiln::jit::plan::plan(&g, &g.step_roots());
        let live = |op: fn(&Op) -> bool| {
            (0..g.nodes.len())
                .filter(|&i| plan.kinds[i] != Kind::Dead && op(&g.nodes[i].op))
                .collect::<Vec<_>>()
        };
        for n in live(|op| matches!(op, Op::RecurrenceGrad(_))) {
            let gw = g.nodes[g.nodes[n].args[2]].shape.fixed(2);
            assert_eq!(gw, Some(8), "{layer}: {}", g.nodes[n].op);
        }
        let widest = live(|op| matches!(op, Op::SliceGrad { .. }))
            .iter()
            .filter_map(|&n| g.nodes[n].shape.fixed(2))
            .max();
        assert!(
            widest.unwrap_or(0) <= 8,
            "{layer}: zeros only as wide as the states"
        );
        for rec in live(|op| matches!(op, Op::Recurrence(_))) {
            let Op::Recurrence(r) = &g.nodes[rec].op else {
                unreachable!()
            };
            let bias = &g.nodes[g.nodes[rec].args[2]];
            let summed = matches!(bias.op, Op::Binary(kiln::ir::Binary::Add))
                && bias
                    .args
                    .iter()
                    .all(|&a| matches!(g.nodes[a].op, Op::Param(_)));
            let gru = r.cell == kiln::ir::op::Cell::Gru;
            assert_eq!(summed, !gru, "{layer}: the recurrence's bias");
        }
    }
}

/// The JIT's cache never runs code compiled for other contents: neither after a graph is
/// edited in place nor after another graph takes its place at the same address.
#[test]
fn cache_follows_the_graph_not_its_address() {
    let src = "model m {\n  input x: [N, 2]\n  output y = x + x\n}\n";
    let (p, _) = program(src);
    let root = p.forward.outputs[0].1;
    let state = State {
        params: vec![],
        states: vec![],
    };
    let x = ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![3.0f32, 5.0]).unwrap();
    let inputs = [x];
    let mut jit = Jit::new();
    let run = |jit: &mut Jit, g: &kiln::ir::Graph| -> Vec<f32> {
        let out = jit.forward(g, &state, &inputs, &[], &[root]).unwrap();
        out[0].iter().copied().collect()
    };
    let mut g = p.forward.clone();
    assert_eq!(run(&mut jit, &g), [6.0, 10.0]);
    assert_eq!(run(&mut jit, &g), [6.0, 10.0]);
    assert_eq!(jit.compiled(), 1, "an unchanged graph is compiled once");
    // Edited in place: same address, same number of nodes.
    g.nodes[root].op = kiln::ir::Op::Binary(kiln::ir::Binary::Mul);
    assert_eq!(run(&mut jit, &g), [9.0, 25.0]);
    // Replaced by another graph of as many nodes, in the same place.
    let (q, _) = program("model m {\n  input x: [N, 2]\n  output y = x - x\n}\n");
    assert_eq!(q.forward.nodes.len(), g.nodes.len());
    g = q.forward.clone();
    assert_eq!(run(&mut jit, &g), [0.0, 0.0]);
}

/// A graph of inputs and targets built node by node, for the tests below that check the
/// JIT against formulas written here in f64 (code the JIT shares with the interpreter —
/// losses, softmax, batched products — cannot be checked by comparing the two).
struct Reference {
    g: kiln::ir::Graph,
}

impl Reference {
    fn new() -> Self {
        Reference {
            g: kiln::ir::Graph::default(),
        }
    }

    /// A new input (`target: false`) or target of this shape and type.
    fn leaf(&mut self, target: bool, dims: Vec<kiln::ir::Dim>, dtype: DType) -> usize {
        use kiln::ir::{Op, Shape, Tensor};
        let list = if target {
            &mut self.g.targets
        } else {
            &mut self.g.inputs
        };
        let k = list.len();
        list.push(Tensor {
            name: format!("t{k}"),
            shape: Shape::new(dims.clone()),
            dtype,
        });
        let op = if target { Op::Target(k) } else { Op::Input(k) };
        self.g
            .push(op, vec![], Shape::new(dims), dtype, None, format!("t{k}"))
    }

    /// The JIT's values of `roots`, as f64.
    fn run(
        &self,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        roots: &[usize],
    ) -> Vec<Vec<f64>> {
        let state = State {
            params: vec![],
            states: vec![],
        };
        let out = Jit::new()
            .forward(&self.g, &state, inputs, targets, roots)
            .unwrap();
        assert_eq!(out.len(), roots.len());
        out.iter()
            .map(|a| a.iter().map(|&v| f64::from(v)).collect())
            .collect()
    }
}

fn uniform(rng: &mut ChaCha8Rng, dims: &[usize], lo: f32, hi: f32) -> ArrayD<f32> {
    let n = dims.iter().product();
    let v = (0..n).map(|_| rng.gen_range(lo..hi)).collect();
    ArrayD::from_shape_vec(IxDyn(dims), v).unwrap()
}

fn f64s(a: &ArrayD<f32>) -> Vec<f64> {
    a.iter().map(|&v| f64::from(v)).collect()
}

/// `jit` against `want` elementwise: relative 1e-5, absolute `floor`.
fn near(what: &str, want: &[f64], jit: &[f64], floor: f64) {
    assert_eq!(want.len(), jit.len(), "{what}: lengths");
    for (i, (w, j)) in want.iter().zip(jit).enumerate() {
        let tol = (1e-5 * w.abs().max(j.abs())).max(floor);
        assert!((w - j).abs() <= tol, "{what}[{i}]: formula {w} vs jit {j}");
    }
}

fn sigmoid64(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Row-wise log-softmax of `z` (rows of `k`).
fn log_softmax64(z: &[f64], k: usize) -> Vec<f64> {
    z.chunks(k)
        .flat_map(|row| {
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            row.iter().map(move |v| v - lse).collect::<Vec<_>>()
        })
        .collect()
}

/// PyTorch's definitions of each loss, in f64: `x` the predictions, `t` the targets
/// (class ids when `k` is `Some(classes)`).
fn loss64(kind: kiln::ir::LossKind, x: &[f64], t: &[f64], k: Option<usize>) -> f64 {
    use kiln::ir::LossKind as L;
    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    let pairs = || x.iter().zip(t).map(|(&x, &t)| (x, t));
    if let Some(k) = k {
        let lp = log_softmax64(x, k);
        let rows = (0..t.len()).map(|r| {
            (
                &x[r * k..(r + 1) * k],
                &lp[r * k..(r + 1) * k],
                t[r] as usize,
            )
        });
        return mean(match kind {
            // torch.nn.functional.cross_entropy(label_smoothing=ε).
            L::CrossEntropy(eps) => rows
                .map(|(_, lp, c)| (1.0 - eps) * -lp[c] + eps * -lp.iter().sum::<f64>() / k as f64)
                .collect(),
            // Softmax focal loss: −α (1 − p_c)^γ log p_c.
            L::Focal(gamma, alpha) => rows
                .map(|(_, lp, c)| -alpha * (1.0 - lp[c].exp()).powf(gamma) * lp[c])
                .collect(),
            // torch.nn.MultiMarginLoss: Σ_{j≠c} max(0, 1 − x_c + x_j) / K.
            L::Hinge => rows
                .map(|(z, _, c)| {
                    (0..k)
                        .filter(|&j| j != c)
                        .map(|j| (1.0 - z[c] + z[j]).max(0.0))
                        .sum::<f64>()
                        / k as f64
                })
                .collect(),
            _ => unreachable!("{kind:?} takes no class labels"),
        });
    }
    mean(match kind {
        L::Mae => pairs().map(|(x, t)| (x - t).abs()).collect(),
        L::Mse => pairs().map(|(x, t)| (x - t).powi(2)).collect(),
        L::Huber(d) => pairs()
            .map(|(x, t)| {
                let e = (x - t).abs();
                if e <= d {
                    0.5 * e * e
                } else {
                    d * (e - 0.5 * d)
                }
            })
            .collect(),
        L::Exponential => pairs().map(|(x, t)| (-t * x).exp()).collect(),
        L::Hinge => pairs().map(|(x, t)| (1.0 - t * x).max(0.0)).collect(),
        // binary_cross_entropy_with_logits.
        L::Bce => pairs()
            .map(|(x, t)| {
                let p = sigmoid64(x);
                -(t * p.ln() + (1.0 - t) * (1.0 - p).ln())
            })
            .collect(),
        // torchvision.ops.sigmoid_focal_loss.
        L::Focal(gamma, alpha) => pairs()
            .map(|(x, t)| {
                let p = sigmoid64(x);
                let ce = -(t * p.ln() + (1.0 - t) * (1.0 - p).ln());
                let pt = p * t + (1.0 - p) * (1.0 - t);
                let at = alpha * t + (1.0 - alpha) * (1.0 - t);
                at * ce * (1.0 - pt).powf(gamma)
            })
            .collect(),
        _ => unreachable!("{kind:?} needs class labels"),
    })
}

/// Every loss's value and its gradient w.r.t. the prediction (`Op::LossGrad`, scaled by
/// an upstream gradient) against PyTorch's definitions, the gradient by central
/// differences of the f64 formula.
#[test]
fn losses_match_their_definitions() {
    use kiln::ir::{Dim, LossKind as L, Op, Shape};
    let (n, classes) = (7usize, 5usize);
    // (loss, class labels, the targets' range: 0 uniform in [-1.5, 1.5), 1 in [0, 1],
    // 2 in {0, 1}, 3 in {−1, +1})
    let cases = [
        (L::Mae, false, 0),
        (L::Mse, false, 0),
        (L::Huber(0.7), false, 0),
        (L::Exponential, false, 3),
        (L::Hinge, false, 3),
        (L::Hinge, true, 0),
        (L::CrossEntropy(0.0), true, 0),
        (L::CrossEntropy(0.1), true, 0),
        (L::Bce, false, 1),
        (L::Focal(2.0, 0.25), false, 2),
        (L::Focal(1.5, 0.6), false, 1),
        (L::Focal(2.0, 0.25), true, 0),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    for (kind, labels, range) in cases {
        let mut r = Reference::new();
        let pdims = vec![Dim::Batch, Dim::Fixed(classes as u64)];
        let pred = r.leaf(false, pdims.clone(), DType::F32);
        let (tdims, dtype) = if labels {
            (vec![Dim::Batch], DType::Class(classes as u64))
        } else {
            (pdims.clone(), DType::F32)
        };
        let target = r.leaf(true, tdims, dtype);
        let upstream = r.leaf(false, vec![], DType::F32);
        let mut b = kiln::ir::build::Builder::new(&mut r.g);
        let loss = b.loss(kind, pred, target);
        let grad = b.push(
            Op::LossGrad(kind),
            vec![pred, target, upstream],
            Shape::new(pdims),
        );
        let x = uniform(&mut rng, &[n, classes], -2.0, 2.0);
        let t = if labels {
            let v = (0..n).map(|_| rng.gen_range(0..classes) as f32).collect();
            ArrayD::from_shape_vec(IxDyn(&[n]), v).unwrap()
        } else {
            let v = (0..n * classes)
                .map(|_| match range {
                    0 => rng.gen_range(-1.5f32..1.5),
                    1 => rng.gen_range(0.0f32..1.0),
                    2 => f32::from(u8::from(rng.gen_bool(0.5))),
                    _ => [-1.0, 1.0][usize::from(rng.gen_bool(0.5))],
                })
                .collect();
            ArrayD::from_shape_vec(IxDyn(&[n, classes]), v).unwrap()
        };
        let g = 0.75f32;
        let up = ArrayD::from_elem(IxDyn(&[]), g);
        let out = r.run(&[x.clone(), up], std::slice::from_ref(&t), &[loss, grad]);
        let (xs, ts) = (f64s(&x), f64s(&t));
        let k = labels.then_some(classes);
        let what = format!("{kind:?} labels {labels}");
        near(&what, &[loss64(kind, &xs, &ts, k)], &out[0], 1e-6);
        let h = 1e-6;
        let numeric: Vec<f64> = (0..xs.len())
            .map(|i| {
                let (mut hi, mut lo) = (xs.clone(), xs.clone());
                hi[i] += h;
                lo[i] -= h;
                f64::from(g) * (loss64(kind, &hi, &ts, k) - loss64(kind, &lo, &ts, k)) / (2.0 * h)
            })
            .collect();
        near(&format!("{what} gradient"), &numeric, &out[1], 1e-7);
    }
}

/// Softmax and log-softmax along the last axis against their formulas.
#[test]
fn softmax_matches_its_definition() {
    use kiln::ir::{Dim, Op};
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let mut r = Reference::new();
    let x = r.leaf(
        false,
        vec![Dim::Batch, Dim::Fixed(3), Dim::Fixed(6)],
        DType::F32,
    );
    let mut b = kiln::ir::build::Builder::new(&mut r.g);
    let sm = b.like(Op::Softmax(2), vec![x], x);
    let lsm = b.like(Op::LogSoftmax(2), vec![x], x);
    for (batch, spread) in [(1, 1.0), (7, 4.0), (5, 40.0)] {
        let v = uniform(&mut rng, &[batch, 3, 6], -spread, spread);
        let out = r.run(std::slice::from_ref(&v), &[], &[sm, lsm]);
        let want = log_softmax64(&f64s(&v), 6);
        let probs: Vec<f64> = want.iter().map(|l| l.exp()).collect();
        near(&format!("softmax, spread {spread}"), &probs, &out[0], 1e-7);
        near(
            &format!("log_softmax, spread {spread}"),
            &want,
            &out[1],
            1e-6,
        );
    }
}

/// Batched matrix products, each combination of transposes, against the triple loop.
#[test]
fn batch_matmul_matches_its_definition() {
    use kiln::ir::Dim;
    let f = |k: u64| Dim::Fixed(k);
    let (m, k, n) = (3usize, 4usize, 5usize);
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let (ra, ca) = if ta { (k, m) } else { (m, k) };
        let (rb, cb) = if tb { (n, k) } else { (k, n) };
        let mut r = Reference::new();
        let a = r.leaf(
            false,
            vec![Dim::Batch, f(2), f(ra as u64), f(ca as u64)],
            DType::F32,
        );
        let bb = r.leaf(
            false,
            vec![Dim::Batch, f(2), f(rb as u64), f(cb as u64)],
            DType::F32,
        );
        let y = kiln::ir::build::Builder::new(&mut r.g).batch_matmul(a, bb, ta, tb);
        for batch in [1, 3] {
            let av = uniform(&mut rng, &[batch, 2, ra, ca], -1.0, 1.0);
            let bv = uniform(&mut rng, &[batch, 2, rb, cb], -1.0, 1.0);
            let out = r.run(&[av.clone(), bv.clone()], &[], &[y]);
            let (ad, bd) = (f64s(&av), f64s(&bv));
            let mut want = vec![];
            for s in 0..batch * 2 {
                let at = |i: usize, l: usize| {
                    let (row, col) = if ta { (l, i) } else { (i, l) };
                    ad[s * ra * ca + row * ca + col]
                };
                let bt = |l: usize, j: usize| {
                    let (row, col) = if tb { (j, l) } else { (l, j) };
                    bd[s * rb * cb + row * cb + col]
                };
                for i in 0..m {
                    for j in 0..n {
                        want.push((0..k).map(|l| at(i, l) * bt(l, j)).sum());
                    }
                }
            }
            near(
                &format!("ta {ta} tb {tb} batch {batch}"),
                &want,
                &out[0],
                1e-6,
            );
        }
    }
}

/// Every elementwise function of the registry: the JIT's `f(x)` and `g·f′(x)` (its inline
/// code) against the registry's f64 expressions, across the checked domain and, for
/// functions defined on negative numbers, at ±30 and ±80.
#[test]
fn elementwise_functions_match_the_registry() {
    use kiln::ir::{Dim, Func};
    let mut rng = ChaCha8Rng::seed_from_u64(18);
    for &e in Elem::ALL {
        let def = e.def();
        let mut p = [0.0; 2];
        for (v, param) in p.iter_mut().zip(def.params) {
            *v = param.default;
        }
        let func = Func::with(e, p);
        let d = def.domain;
        let mut xs: Vec<f64> = (0..64)
            .map(|i| d.lo + (d.hi - d.lo) * f64::from(i) / 63.0)
            .filter(|x| d.kinks.iter().all(|k| (x - k).abs() >= 0.1))
            .collect();
        let inner = xs.len();
        if d.lo < 0.0 {
            xs.extend([-80.0, -30.0, 30.0, 80.0]);
        }
        let mut r = Reference::new();
        let x = r.leaf(false, vec![Dim::Batch], DType::F32);
        let g = r.leaf(false, vec![Dim::Batch], DType::F32);
        let mut b = kiln::ir::build::Builder::new(&mut r.g);
        let y = b.map(func, x);
        let dy = b.map_grad(func, x, g);
        let xv: Vec<f32> = xs.iter().map(|&v| v as f32).collect();
        let gv: Vec<f32> = (0..xs.len()).map(|_| rng.gen_range(0.5f32..1.5)).collect();
        let arr = |v: &[f32]| ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).unwrap();
        let out = r.run(&[arr(&xv), arr(&gv)], &[], &[y, dy]);
        for (i, &xf) in xv.iter().enumerate() {
            let x64 = f64::from(xf);
            let want = [func.apply(x64), f64::from(gv[i]) * func.derivative(x64)];
            for (which, (w, j)) in ["f", "g·f′"].iter().zip(want.iter().zip(&out)) {
                let (w, j) = (*w, j[i]);
                let what = format!("{} {which}({x64}): registry {w} vs jit {j}", def.name);
                if i < inner {
                    let tol = (1e-5 * w.abs()).max(1e-6);
                    assert!((w - j).abs() <= tol, "{what}");
                } else {
                    // f32 overflows where f64 does not: compare as f32.
                    let w = f64::from(w as f32);
                    let same_inf = w.is_infinite() && w == j;
                    let close = w.is_finite()
                        && j.is_finite()
                        && (w - j).abs() <= (1e-4 * w.abs().max(j.abs())).max(1e-6);
                    assert!(same_inf || close, "{what}");
                }
            }
        }
    }
}
