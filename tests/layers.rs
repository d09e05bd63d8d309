//! The layers that take more than a matrix product: convolution, pooling, spatial pyramid
//! pooling, embedding, batch and layer normalization, PReLU, dropout, rrelu and the
//! recurrent cells. Forward values against cases computed by hand (or by a reference
//! written here from PyTorch's published definitions), in f64 through the interpreter
//! and through the runtime's state; training against evaluation behaviour; and the
//! separation of the two graphs.

use kiln::check::train::TrainConfig;
use kiln::check::{check_file, LintLevels};
use kiln::exec::{Backend, State};
use kiln::interp::Interpreter;
use kiln::interp::{self, Env};
use kiln::ir::{Graph, Hyper, NodeId, Op, Slot};
use kiln::runtime::init::init_params;
use kiln::runtime::program::{self, Program};
use kiln::runtime::schedule;
use kiln::runtime::train::Run;
use kiln::span::Sources;
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

// ---------------------------------------------------------------- running models

fn program(src: &str) -> (Program, TrainConfig) {
    let mut sources = Sources::new();
    let id = sources.add("t.kiln", None, src.to_string());
    let c = check_file(&mut sources, id, &LintLevels::default());
    let errors: Vec<String> = c
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| format!("{}: {}", d.code, d.message))
        .collect();
    let p = c.program.unwrap_or_else(|| panic!("{errors:?}"));
    let m = &p.models[0];
    let cfg = p
        .train(&m.name)
        .cloned()
        .unwrap_or_else(|| TrainConfig::defaults(&m.name, m.span));
    (program::prepare(m), cfg)
}

fn array(dims: &[usize], v: Vec<f64>) -> ArrayD<f64> {
    ArrayD::from_shape_vec(IxDyn(dims), v).expect("value count matches the shape")
}

fn to_f32(a: &ArrayD<f64>) -> ArrayD<f32> {
    a.mapv(|v| v as f32)
}

fn uniform(r: &mut ChaCha8Rng, dims: &[usize], lo: f64, hi: f64) -> ArrayD<f64> {
    let n = dims.iter().product();
    array(dims, (0..n).map(|_| r.gen_range(lo..hi)).collect())
}

/// A checked, lowered model with parameter values in f64, set by name.
struct Net {
    p: Program,
    cfg: TrainConfig,
    params: Vec<ArrayD<f64>>,
}

impl Net {
    fn new(src: &str) -> Net {
        let (p, cfg) = program(src);
        let params = init_params(&p.model, 1)
            .unwrap()
            .iter()
            .map(|a| a.mapv(f64::from))
            .collect();
        Net { p, cfg, params }
    }

    fn index(&self, name: &str) -> usize {
        let names: Vec<&str> = self
            .p
            .forward
            .params
            .iter()
            .map(|q| q.tensor.name.as_str())
            .collect();
        names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("no parameter `{name}` among {names:?}"))
    }

    /// Sets parameter `name` (its shape stays; the values are in row-major order).
    fn set(&mut self, name: &str, values: &[f64]) {
        let k = self.index(name);
        let dims = self.params[k].shape().to_vec();
        assert_eq!(
            values.len(),
            self.params[k].len(),
            "`{name}` has shape {dims:?}"
        );
        self.params[k] = array(&dims, values.to_vec());
    }

    fn get(&self, name: &str) -> &ArrayD<f64> {
        &self.params[self.index(name)]
    }

    /// The parameters as the runtime's state (f32).
    fn state(&self) -> State {
        State {
            params: self.params.iter().map(to_f32).collect(),
            states: vec![],
        }
    }

    /// The outputs of the evaluation graph (no hyperparameters at all: the graph must
    /// not read the step).
    fn eval(&self, inputs: &[ArrayD<f64>]) -> Vec<ArrayD<f64>> {
        outputs(&self.p.forward, &self.params, inputs, &HashMap::new())
    }

    /// The outputs of the training-mode forward graph with noise from `seed` at `step`.
    fn train(&self, seed: u64, step: u64, inputs: &[ArrayD<f64>]) -> Vec<ArrayD<f64>> {
        let g = self.p.train_forward(seed);
        let hyper = HashMap::from([(Hyper::Step, step as f64), (Hyper::RowOffset, 0.0)]);
        outputs(&g, &self.params, inputs, &hyper)
    }
}

/// The named outputs of `g` in f64 through the interpreter.
fn outputs(
    g: &Graph,
    params: &[ArrayD<f64>],
    inputs: &[ArrayD<f64>],
    hyper: &HashMap<Hyper, f64>,
) -> Vec<ArrayD<f64>> {
    let roots: Vec<NodeId> = g.outputs.iter().map(|(_, n)| *n).collect();
    let env = Env {
        inputs,
        targets: &[],
        params,
        states: &[],
        hyper,
        batch: inputs[0].shape()[0],
    };
    let vals = interp::run::<f64>(g, &env, &roots).expect("the graph runs");
    roots
        .iter()
        .map(|&r| vals[r].clone().expect("output computed"))
        .collect()
}

/// `got` has shape `dims` and the values `want` to 1e-10 (relative, 1e-12 absolute).
fn assert_values(what: &str, got: &ArrayD<f64>, dims: &[usize], want: &[f64]) {
    assert_eq!(got.shape(), dims, "{what}: shape");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-12 + 1e-10 * b.abs(),
            "{what}[{i}]: got {a}, want {b}\ngot  {:?}\nwant {want:?}",
            got.iter().collect::<Vec<_>>()
        );
    }
}

/// f32 results against f64 expectations.
fn assert_f32(what: &str, got: &ArrayD<f32>, want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: element count");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let a = f64::from(*a);
        assert!(
            (a - b).abs() <= 1e-6 + 1e-5 * b.abs(),
            "{what}[{i}]: got {a}, want {b}"
        );
    }
}

fn flat(a: &ArrayD<f64>) -> Vec<f64> {
    a.iter().copied().collect()
}

/// 1, 2, .., n.
fn count_up(n: usize) -> Vec<f64> {
    (1..=n).map(|v| v as f64).collect()
}

// ---------------------------------------------------------------- convolution

#[test]
fn conv2d_3x3_input_2x2_kernel_pad_1_by_hand() {
    let mut net = Net::new(
        "model m {
  input x: [N, 1, 3, 3]
  y = x |> conv2d(2, 2, pad: 1)
  output y
}",
    );
    // Channel 0: [[1, 2], [3, 4]]; channel 1: [[0, 1], [−1, 0]].
    net.set(
        "y.conv2d.weight",
        &[1.0, 2.0, 3.0, 4.0, 0.0, 1.0, -1.0, 0.0],
    );
    net.set("y.conv2d.bias", &[0.5, -1.0]);
    let x: Vec<f64> = count_up(9);
    let neg: Vec<f64> = x.iter().map(|v| -v).collect();
    let input = array(&[2, 1, 3, 3], [x, neg].concat());
    let y = &net.eval(&[input])[0];
    // The padded input is 5×5; out[i][j] = Σ w[a][b]·xp[i + a][j + b].
    let c0 = [
        4.0, 11.0, 18.0, 9.0, //
        18.0, 37.0, 47.0, 21.0, //
        36.0, 67.0, 77.0, 33.0, //
        14.0, 23.0, 26.0, 9.0,
    ];
    let c1 = [
        0.0, -1.0, -2.0, -3.0, //
        1.0, -2.0, -2.0, -6.0, //
        4.0, -2.0, -2.0, -9.0, //
        7.0, 8.0, 9.0, 0.0,
    ];
    let mut want = Vec::new();
    for sign in [1.0, -1.0] {
        want.extend(c0.iter().map(|v| sign * v + 0.5));
        want.extend(c1.iter().map(|v| sign * v - 1.0));
    }
    assert_values("conv2d pad 1", y, &[2, 2, 4, 4], &want);
}

#[test]
fn conv1d_dilation_2_by_hand() {
    let mut net = Net::new(
        "model m {
  input x: [N, 2, 6]
  y = x |> conv1d(1, 3, dilation: 2, bias: false)
  z = x |> conv1d(1, 3, dilation: 2, stride: 2, pad: 1, bias: false)
  output y
  output z
}",
    );
    // w[0][0] = [1, 10, 100], w[0][1] = [1, 0, −1].
    let w = [1.0, 10.0, 100.0, 1.0, 0.0, -1.0];
    net.set("y.conv1d.weight", &w);
    net.set("z.conv1d.weight", &w);
    let x = array(
        &[1, 2, 6],
        vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
    );
    let out = net.eval(&[x]);
    // y[0] reads x[0], x[2], x[4]: (1 + 30 + 500) + (6 − 2); y[1] reads x[1], x[3], x[5].
    assert_values("conv1d dilation 2", &out[0], &[1, 1, 2], &[535.0, 646.0]);
    // With pad 1 and stride 2: z[0] reads (pad), x[1], x[3]: 20 + 400 + (0·5 − 3).
    assert_values(
        "conv1d dilation 2, stride 2, pad 1",
        &out[1],
        &[1, 1, 2],
        &[417.0, 646.0],
    );
}

/// PyTorch's conv1d/conv2d (cross-correlation, zero padding) written out.
fn reference_conv(
    x: &ArrayD<f64>,
    w: &ArrayD<f64>,
    bias: &[f64],
    stride: (usize, usize),
    pad: (usize, usize),
    dil: (usize, usize),
) -> ArrayD<f64> {
    let (n, c, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (o, kh, kw) = (w.shape()[0], w.shape()[2], w.shape()[3]);
    let oh = (h + 2 * pad.0 - dil.0 * (kh - 1) - 1) / stride.0 + 1;
    let ow = (wd + 2 * pad.1 - dil.1 * (kw - 1) - 1) / stride.1 + 1;
    let mut out = ArrayD::zeros(IxDyn(&[n, o, oh, ow]));
    for b in 0..n {
        for oc in 0..o {
            for i in 0..oh {
                for j in 0..ow {
                    let mut s = bias[oc];
                    for ic in 0..c {
                        for a in 0..kh {
                            for e in 0..kw {
                                let y = (i * stride.0 + a * dil.0) as i64 - pad.0 as i64;
                                let z = (j * stride.1 + e * dil.1) as i64 - pad.1 as i64;
                                if y >= 0 && z >= 0 && (y as usize) < h && (z as usize) < wd {
                                    s += w[[oc, ic, a, e]] * x[[b, ic, y as usize, z as usize]];
                                }
                            }
                        }
                    }
                    out[[b, oc, i, j]] = s;
                }
            }
        }
    }
    out
}

#[test]
fn conv2d_stride_pad_dilation_rectangular_and_1x1_against_a_reference() {
    let mut r = ChaCha8Rng::seed_from_u64(1);
    // (C, H, W, out, (kh, kw), stride, pad, dilation)
    let cases = [
        (2, 5, 5, 3, [3, 3], [1, 1], [1, 1], [1, 1]),
        (1, 6, 7, 2, [2, 3], [2, 1], [0, 1], [1, 1]),
        (2, 7, 6, 2, [3, 2], [1, 2], [2, 0], [2, 1]),
        (3, 4, 4, 2, [1, 1], [1, 1], [0, 0], [1, 1]),
        (2, 6, 6, 2, [3, 3], [2, 2], [1, 1], [2, 2]),
        (2, 5, 8, 3, [1, 3], [1, 3], [0, 2], [1, 1]),
    ];
    for (c, h, w, o, k, s, p, d) in cases {
        let src = format!(
            "model m {{
  input x: [N, {c}, {h}, {w}]
  y = x |> conv2d({o}, ({}, {}), stride: ({}, {}), pad: ({}, {}), dilation: ({}, {}))
  output y
}}",
            k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1]
        );
        let mut net = Net::new(&src);
        let wv = uniform(&mut r, &[o, c, k[0], k[1]], -1.0, 1.0);
        let bv: Vec<f64> = (0..o).map(|_| r.gen_range(-1.0..1.0)).collect();
        net.set("y.conv2d.weight", &flat(&wv));
        net.set("y.conv2d.bias", &bv);
        let x = uniform(&mut r, &[3, c, h, w], -2.0, 2.0);
        let want = reference_conv(&x, &wv, &bv, (s[0], s[1]), (p[0], p[1]), (d[0], d[1]));
        let got = &net.eval(std::slice::from_ref(&x))[0];
        assert_values(&src, got, want.shape(), &flat(&want));
    }
}

// ---------------------------------------------------------------- pooling

#[test]
fn maxpool2d_and_avgpool2d_with_padding_by_hand() {
    let net = Net::new(
        "model m {
  input x: [N, 1, 4, 4]
  a = x |> maxpool2d(3, stride: 2, pad: 1)
  b = x |> avgpool2d(3, stride: 2, pad: 1, count_pad: false)
  c = x |> avgpool2d(3, stride: 2, pad: 1)
  output a
  output b
  output c
}",
    );
    // x = 1..16 row-major; sample 2 is −x (max pooling must not pick the padding).
    let x = count_up(16);
    let neg: Vec<f64> = x.iter().map(|v| -v).collect();
    let out = net.eval(&[array(&[2, 1, 4, 4], [x, neg].concat())]);
    // Windows: rows/columns {0, 1} and {1, 2, 3}.
    assert_values(
        "maxpool2d pad 1",
        &out[0],
        &[2, 1, 2, 2],
        &[6.0, 8.0, 14.0, 16.0, -1.0, -2.0, -5.0, -6.0],
    );
    // count_pad false: divided by the real elements (4, 6, 6, 9).
    let both = |v: [f64; 4]| [v, v.map(|x| -x)].concat();
    let b = [14.0 / 4.0, 30.0 / 6.0, 57.0 / 6.0, 99.0 / 9.0];
    assert_values(
        "avgpool2d count_pad false",
        &out[1],
        &[2, 1, 2, 2],
        &both(b),
    );
    // count_pad true (the default): always divided by 9.
    let c = [14.0 / 9.0, 30.0 / 9.0, 57.0 / 9.0, 99.0 / 9.0];
    assert_values("avgpool2d count_pad true", &out[2], &[2, 1, 2, 2], &both(c));
}

#[test]
fn overlapping_pooling_by_hand() {
    let net = Net::new(
        "model m {
  input x: [N, 1, 3, 3]
  input s: [N, 1, 7]
  input t: [N, 1, 3]
  a = x |> maxpool2d(2, stride: 1)
  b = x |> avgpool2d(2, stride: 1)
  c = s |> maxpool1d(3, stride: 2)
  d = t |> avgpool1d(2, stride: 1, pad: 1)
  e = t |> avgpool1d(2, stride: 1, pad: 1, count_pad: false)
  output a
  output b
  output c
  output d
  output e
}",
    );
    let x = array(
        &[1, 1, 3, 3],
        vec![1.0, 5.0, 2.0, 7.0, 3.0, 8.0, 4.0, 9.0, 6.0],
    );
    let s = array(&[1, 1, 7], vec![3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]);
    let t = array(&[1, 1, 3], vec![2.0, 4.0, 6.0]);
    let out = net.eval(&[x, s, t]);
    assert_values(
        "maxpool2d(2, stride: 1)",
        &out[0],
        &[1, 1, 2, 2],
        &[7.0, 8.0, 9.0, 9.0],
    );
    assert_values(
        "avgpool2d(2, stride: 1)",
        &out[1],
        &[1, 1, 2, 2],
        &[4.0, 4.5, 5.75, 6.5],
    );
    assert_values(
        "maxpool1d(3, stride: 2)",
        &out[2],
        &[1, 1, 3],
        &[4.0, 5.0, 9.0],
    );
    // Windows [pad, 2], [2, 4], [4, 6], [6, pad].
    assert_values(
        "avgpool1d count_pad",
        &out[3],
        &[1, 1, 4],
        &[1.0, 3.0, 5.0, 3.0],
    );
    assert_values(
        "avgpool1d real elements",
        &out[4],
        &[1, 1, 4],
        &[2.0, 3.0, 5.0, 6.0],
    );
}

#[test]
fn global_pools_by_hand() {
    let net = Net::new(
        "model m {
  input x: [N, 2, 2, 3]
  input s: [N, 2, 4]
  a = x |> global_avgpool
  b = x |> global_maxpool
  c = s |> global_avgpool
  d = s |> global_maxpool
  output a
  output b
  output c
  output d
}",
    );
    let x = array(
        &[1, 2, 2, 3],
        vec![
            1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -1.0, -7.0, 0.0, 2.0, -3.0, 4.0,
        ],
    );
    let s = array(
        &[1, 2, 4],
        vec![-2.0, -1.0, -4.0, -3.0, 0.5, 0.25, 1.0, 0.0],
    );
    let out = net.eval(&[x, s]);
    assert_values("global_avgpool 2-d", &out[0], &[1, 2], &[3.5, -5.0 / 6.0]);
    assert_values("global_maxpool 2-d", &out[1], &[1, 2], &[6.0, 4.0]);
    assert_values("global_avgpool 1-d", &out[2], &[1, 2], &[-2.5, 0.4375]);
    assert_values("global_maxpool 1-d", &out[3], &[1, 2], &[-1.0, 1.0]);
}

#[test]
fn spp_levels_use_pytorch_adaptive_bins() {
    let net = Net::new(
        "model m {
  input x: [N, 2, 3, 3]
  input z: [N, 1, 5, 5]
  a = x |> spp(levels: [1, 2])
  b = z |> spp(levels: [3])
  output a
  output b
}",
    );
    // Channel 1 is 10 − channel 0.
    let c0 = [1.0, 5.0, 2.0, 7.0, 3.0, 8.0, 4.0, 9.0, 6.0];
    let c1: Vec<f64> = c0.iter().map(|v| 10.0 - v).collect();
    let x = array(&[1, 2, 3, 3], [c0.to_vec(), c1].concat());
    let z = array(&[1, 1, 5, 5], (0..25).map(f64::from).collect());
    let out = net.eval(&[x, z]);
    // Level 1: the maximum of each channel. Level 2 over 3: bins {0, 1} and {1, 2}.
    // Flattened per level as [C, l, l] and the levels concatenated.
    assert_values(
        "spp [1, 2] on 3×3",
        &out[0],
        &[1, 10],
        &[9.0, 9.0, 7.0, 8.0, 9.0, 9.0, 9.0, 8.0, 7.0, 7.0],
    );
    // 3 bins over 5: {0, 1}, {1, 2, 3}, {3, 4}: the maximum is at the bin's last row and
    // column (1, 3, 4).
    assert_values(
        "spp [3] on 5×5",
        &out[1],
        &[1, 9],
        &[6.0, 8.0, 9.0, 16.0, 18.0, 19.0, 21.0, 23.0, 24.0],
    );
}

// ---------------------------------------------------------------- embedding

#[test]
fn embedding_rows_by_id() {
    let mut net = Net::new(
        "model m {
  input ids: class[N, 3] of 5
  e = ids |> embedding(5, 2)
  output e
}",
    );
    net.set(
        "e.embedding.weight",
        &[0.0, 1.0, 10.0, 11.0, 20.0, 21.0, 30.0, 31.0, 40.0, 41.0],
    );
    let ids = array(&[2, 3], vec![0.0, 4.0, 2.0, 2.0, 2.0, 1.0]);
    let e = &net.eval(&[ids])[0];
    assert_values(
        "embedding",
        e,
        &[2, 3, 2],
        &[
            0.0, 1.0, 40.0, 41.0, 20.0, 21.0, 20.0, 21.0, 20.0, 21.0, 10.0, 11.0,
        ],
    );
}

// ---------------------------------------------------------------- normalization

/// Per-channel (axis 1) statistics of `x` `[N, C, ..]`: mean and biased variance.
fn channel_stats(x: &ArrayD<f64>) -> (Vec<f64>, Vec<f64>, usize) {
    let c = x.shape()[1];
    let mut vals = vec![Vec::new(); c];
    for (idx, v) in x.indexed_iter() {
        vals[idx[1]].push(*v);
    }
    let n = vals[0].len();
    let mean: Vec<f64> = vals
        .iter()
        .map(|v| v.iter().sum::<f64>() / n as f64)
        .collect();
    let var = vals
        .iter()
        .zip(&mean)
        .map(|(v, m)| v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64)
        .collect();
    (mean, var, n)
}

/// γ·(x − μ)/√(σ² + ε) + β per channel (axis 1).
fn normalized(
    x: &ArrayD<f64>,
    mean: &[f64],
    var: &[f64],
    g: &[f64],
    b: &[f64],
    eps: f64,
) -> Vec<f64> {
    x.indexed_iter()
        .map(|(idx, v)| {
            let c = idx[1];
            g[c] * (v - mean[c]) / (var[c] + eps).sqrt() + b[c]
        })
        .collect()
}

/// One training step through the runtime (interpreter backend): the state after it.
fn one_step(net: &Net, inputs: &[ArrayD<f64>], targets: &[ArrayD<f64>]) -> State {
    let run = Run::new(&net.p, &net.cfg).unwrap();
    let mut state = net.state();
    assert_eq!(run.state.params.len(), state.params.len());
    state.states = run.state.states.clone();
    let h = schedule::hyper(&net.cfg.optimizer, net.cfg.clip, net.cfg.optimizer.lr(), 1);
    let inputs: Vec<_> = inputs.iter().map(to_f32).collect();
    let targets: Vec<_> = targets.iter().map(to_f32).collect();
    Interpreter
        .step(run.graph(), &mut state, &inputs, &targets, &h)
        .expect("the step runs");
    state
}

#[test]
fn batchnorm_2d_batch_statistics_in_training_running_statistics_in_evaluation() {
    let mut net = Net::new(
        "model m {
  input x: [N, 3]
  target y: [N, 3]
  h = x |> batchnorm(momentum: 0.2)
  output h
  loss mse(h, y)
}
train m {
  optimizer sgd(lr: 0.1)
}",
    );
    let (g, b) = ([1.5, -0.5, 2.0], [0.1, 0.2, -0.3]);
    let (rm, rv) = ([0.5, -1.0, 0.0], [2.0, 0.5, 1.0]);
    net.set("h.batchnorm.weight", &g);
    net.set("h.batchnorm.bias", &b);
    net.set("h.batchnorm.running_mean", &rm);
    net.set("h.batchnorm.running_var", &rv);
    let x = array(
        &[4, 3],
        vec![
            0.3, -1.2, 2.0, //
            1.1, 0.4, -0.5, //
            -0.7, 2.2, 0.9, //
            0.0, -0.1, 1.6,
        ],
    );
    let (mean, var, n) = channel_stats(&x);
    assert_eq!(n, 4);
    let train = &net.train(3, 1, std::slice::from_ref(&x))[0];
    assert_values(
        "batchnorm, training",
        train,
        &[4, 3],
        &normalized(&x, &mean, &var, &g, &b, 1e-5),
    );
    let eval = &net.eval(std::slice::from_ref(&x))[0];
    assert_values(
        "batchnorm, evaluation",
        eval,
        &[4, 3],
        &normalized(&x, &rm, &rv, &g, &b, 1e-5),
    );
    // One training step: running ← 0.8·running + 0.2·statistic, with the unbiased
    // variance n/(n − 1)·σ² (PyTorch), not the biased one the normalization uses.
    let y = array(&[4, 3], vec![0.0; 12]);
    let after = one_step(&net, &[x], &[y]);
    let new_mean: Vec<f64> = rm
        .iter()
        .zip(&mean)
        .map(|(r, m)| 0.8 * r + 0.2 * m)
        .collect();
    let unbiased: Vec<f64> = var.iter().map(|v| v * 4.0 / 3.0).collect();
    let new_var: Vec<f64> = rv
        .iter()
        .zip(&unbiased)
        .map(|(r, v)| 0.8 * r + 0.2 * v)
        .collect();
    assert_f32(
        "running_mean after one step",
        &after.params[net.index("h.batchnorm.running_mean")],
        &new_mean,
    );
    assert_f32(
        "running_var after one step",
        &after.params[net.index("h.batchnorm.running_var")],
        &new_var,
    );
}

#[test]
fn batchnorm_4d_statistics_per_channel_over_batch_and_space() {
    let mut net = Net::new(
        "model m {
  input x: [N, 2, 2, 3]
  target y: [N, 2, 2, 3]
  h = x |> batchnorm
  output h
  loss mse(h, y)
}
train m {
  optimizer sgd(lr: 0.1)
}",
    );
    let (g, b) = ([0.7, 1.3], [-0.2, 0.4]);
    let (rm, rv) = ([0.3, -0.6], [1.5, 0.8]);
    net.set("h.batchnorm.weight", &g);
    net.set("h.batchnorm.bias", &b);
    net.set("h.batchnorm.running_mean", &rm);
    net.set("h.batchnorm.running_var", &rv);
    let mut r = ChaCha8Rng::seed_from_u64(2);
    let x = uniform(&mut r, &[2, 2, 2, 3], -2.0, 2.0);
    let (mean, var, n) = channel_stats(&x);
    assert_eq!(n, 12);
    let train = &net.train(3, 1, std::slice::from_ref(&x))[0];
    assert_values(
        "batchnorm 4-d, training",
        train,
        &[2, 2, 2, 3],
        &normalized(&x, &mean, &var, &g, &b, 1e-5),
    );
    let eval = &net.eval(std::slice::from_ref(&x))[0];
    assert_values(
        "batchnorm 4-d, evaluation",
        eval,
        &[2, 2, 2, 3],
        &normalized(&x, &rm, &rv, &g, &b, 1e-5),
    );
    // Default momentum 0.1; n = N·H·W = 12 values per channel.
    let y = array(&[2, 2, 2, 3], vec![0.0; 24]);
    let after = one_step(&net, &[x], &[y]);
    let new_mean: Vec<f64> = rm
        .iter()
        .zip(&mean)
        .map(|(r, m)| 0.9 * r + 0.1 * m)
        .collect();
    let new_var: Vec<f64> = rv
        .iter()
        .zip(&var)
        .map(|(r, v)| 0.9 * r + 0.1 * v * 12.0 / 11.0)
        .collect();
    assert_f32(
        "running_mean after one step",
        &after.params[net.index("h.batchnorm.running_mean")],
        &new_mean,
    );
    assert_f32(
        "running_var after one step",
        &after.params[net.index("h.batchnorm.running_var")],
        &new_var,
    );
}

#[test]
fn batchnorm_starts_at_identity_statistics() {
    // γ = 1, β = 0, running mean 0 and variance 1 (PyTorch's initial values).
    let net = Net::new(
        "model m {
  input x: [N, 3, 2]
  h = x |> batchnorm
  output h
}",
    );
    assert_eq!(flat(net.get("h.batchnorm.weight")), vec![1.0; 3]);
    assert_eq!(flat(net.get("h.batchnorm.bias")), vec![0.0; 3]);
    assert_eq!(flat(net.get("h.batchnorm.running_mean")), vec![0.0; 3]);
    assert_eq!(flat(net.get("h.batchnorm.running_var")), vec![1.0; 3]);
}

#[test]
fn layernorm_over_the_last_axis() {
    let mut net = Net::new(
        "model m {
  input x: [N, 2, 4]
  h = x |> layernorm
  k = x |> layernorm(eps: 0.5)
  output h
  output k
}",
    );
    let (g, b) = ([1.0, -2.0, 0.5, 3.0], [0.0, 0.1, -0.2, 0.3]);
    net.set("h.layernorm.weight", &g);
    net.set("h.layernorm.bias", &b);
    let mut r = ChaCha8Rng::seed_from_u64(3);
    let x = uniform(&mut r, &[3, 2, 4], -2.0, 2.0);
    let out = net.eval(std::slice::from_ref(&x));
    for (k, eps, g, b) in [(0, 1e-5, g, b), (1, 0.5, [1.0; 4], [0.0; 4])] {
        let mut want = Vec::new();
        for row in x.as_slice().expect("standard layout").chunks(4) {
            let m = row.iter().sum::<f64>() / 4.0;
            let v = row.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 4.0;
            for (j, x) in row.iter().enumerate() {
                want.push(g[j] * (x - m) / (v + eps).sqrt() + b[j]);
            }
        }
        assert_values(&format!("layernorm eps {eps}"), &out[k], &[3, 2, 4], &want);
    }
    // Training behaves the same.
    let train = net.train(9, 4, std::slice::from_ref(&x));
    assert_eq!(train, out);
}

#[test]
fn prelu_learns_one_slope_per_channel() {
    let mut net = Net::new(
        "model m {
  input x: [N, 3]
  input z: [N, 2, 3]
  a = x |> prelu
  b = z |> prelu
  output a
  output b
}",
    );
    assert_eq!(
        flat(net.get("a.prelu.weight")),
        vec![0.25; 3],
        "initial slope"
    );
    net.set("a.prelu.weight", &[0.25, -0.5, 2.0]);
    net.set("b.prelu.weight", &[0.1, 3.0]);
    let x = array(&[2, 3], vec![-2.0, -2.0, -2.0, 1.0, -4.0, 3.0]);
    let z = array(
        &[2, 2, 3],
        vec![
            -1.0, 2.0, -3.0, -1.0, 2.0, -3.0, 4.0, -5.0, 0.5, -2.0, 0.0, -1.0,
        ],
    );
    let out = net.eval(&[x, z]);
    assert_values(
        "prelu [N, C]",
        &out[0],
        &[2, 3],
        &[-0.5, 1.0, -4.0, 1.0, 2.0, 3.0],
    );
    // [N, C, L]: the slope of channel c (axis 1) for every position.
    assert_values(
        "prelu [N, C, L]",
        &out[1],
        &[2, 2, 3],
        &[
            -0.1,
            2.0,
            0.1 * -3.0,
            -3.0,
            2.0,
            -9.0,
            4.0,
            0.1 * -5.0,
            0.5,
            -6.0,
            0.0,
            -3.0,
        ],
    );
}

// ---------------------------------------------------------------- noise

#[test]
fn dropout_identity_in_evaluation_inverted_mask_in_training() {
    let net = Net::new(
        "model m {
  input x: [N, 40]
  h = x |> dropout(0.3)
  output h
}",
    );
    let mut r = ChaCha8Rng::seed_from_u64(4);
    let x = uniform(&mut r, &[50, 40], 0.5, 1.5);
    let inputs = std::slice::from_ref(&x);
    assert_eq!(net.eval(inputs)[0], x, "evaluation is the identity");
    let mask = |seed, step| -> Vec<f64> {
        let y = &net.train(seed, step, inputs)[0];
        y.iter().zip(x.iter()).map(|(y, x)| y / x).collect()
    };
    let m = mask(7, 1);
    let zeros = m.iter().filter(|&&v| v == 0.0).count();
    // 2000 elements, p = 0.3: 600 ± 20.5 (one standard deviation).
    assert!((500..=700).contains(&zeros), "{zeros} of 2000 zeroed");
    for v in &m {
        assert!(
            *v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-12,
            "kept elements are scaled by 1/(1 − p): {v}"
        );
    }
    assert_eq!(mask(7, 1), m, "same seed and step, same mask");
    let differ = |a: &[f64], b: &[f64]| a.iter().zip(b).filter(|(a, b)| a != b).count();
    // Independent masks differ in about 2·0.3·0.7 = 42% of the elements.
    assert!(
        differ(&mask(7, 2), &m) > 500,
        "another step draws another mask"
    );
    assert!(
        differ(&mask(8, 1), &m) > 500,
        "another seed draws another mask"
    );
    // Two dropouts of one graph draw independent masks at the same step.
    let two = Net::new(
        "model m {
  input x: [N, 40]
  a = x |> dropout(0.3)
  b = x |> dropout(0.3)
  output a
  output b
}",
    );
    let out = two.train(7, 1, inputs);
    let zero = |a: &ArrayD<f64>| a.iter().map(|v| *v == 0.0).collect::<Vec<bool>>();
    let (za, zb) = (zero(&out[0]), zero(&out[1]));
    let both = za.iter().zip(&zb).filter(|(a, b)| **a && **b).count();
    // Independent: about 0.09·2000 = 180 zeroed in both (0.3·2000 = 600 if the same).
    assert!(
        (100..=300).contains(&both),
        "{both} elements zeroed by both"
    );
    // The training graph of the run draws the same mask as the training forward graph
    // with the train block's seed.
    let tg = net.p.training_graph(&net.cfg);
    let hyper = HashMap::from([(Hyper::Step, 1.0), (Hyper::RowOffset, 0.0)]);
    let from_tg = &outputs(&tg, &net.params, inputs, &hyper)[0];
    assert_eq!(*from_tg, net.train(net.cfg.seed, 1, inputs)[0]);
}

#[test]
fn rrelu_mean_slope_in_evaluation_random_slopes_in_training() {
    let net = Net::new(
        "model m {
  input x: [N, 30]
  h = x |> rrelu(lower: 0.1, upper: 0.4)
  k = x |> rrelu
  output h
  output k
}",
    );
    let mut r = ChaCha8Rng::seed_from_u64(5);
    let x = uniform(&mut r, &[50, 30], -2.0, 2.0);
    let inputs = std::slice::from_ref(&x);
    let eval = net.eval(inputs);
    for (k, slope) in [(0, 0.25), (1, (1.0 / 8.0 + 1.0 / 3.0) / 2.0)] {
        let want: Vec<f64> = x
            .iter()
            .map(|&v| if v >= 0.0 { v } else { slope * v })
            .collect();
        assert_values(
            &format!("rrelu {k}, evaluation"),
            &eval[k],
            &[50, 30],
            &want,
        );
    }
    let slopes = |seed, step| -> Vec<f64> {
        let y = &net.train(seed, step, inputs)[0];
        let mut s = Vec::new();
        for (y, x) in y.iter().zip(x.iter()) {
            if *x >= 0.0 {
                assert_eq!(y, x, "positive inputs pass unchanged");
            } else {
                s.push(y / x);
            }
        }
        s
    };
    let s = slopes(7, 1);
    assert!(s.len() > 600, "{} negative inputs", s.len());
    let (lo, hi) = s
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(
        lo >= 0.1 - 1e-12 && hi <= 0.4 + 1e-12,
        "slopes in [{lo}, {hi}]"
    );
    // Spread over the interval, not one slope.
    assert!(lo < 0.11 && hi > 0.39, "slopes in [{lo}, {hi}]");
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    assert!((mean - 0.25).abs() < 0.02, "mean slope {mean}");
    assert_eq!(slopes(7, 1), s, "same seed and step, same slopes");
    assert_ne!(slopes(7, 2), s, "another step, other slopes");
}

// ---------------------------------------------------------------- recurrent layers

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cell {
    RnnTanh,
    RnnRelu,
    Lstm,
    Gru,
}

impl Cell {
    fn gates(self) -> usize {
        match self {
            Cell::RnnTanh | Cell::RnnRelu => 1,
            Cell::Lstm => 4,
            Cell::Gru => 3,
        }
    }

    fn layer(self, h: usize, bidirectional: bool, sequence: bool) -> String {
        let opts = format!("bidirectional: {bidirectional}, sequence: {sequence}");
        match self {
            Cell::RnnTanh => format!("rnn({h}, {opts})"),
            Cell::RnnRelu => format!("rnn({h}, activation: relu, {opts})"),
            Cell::Lstm => format!("lstm({h}, {opts})"),
            Cell::Gru => format!("gru({h}, {opts})"),
        }
    }

    fn word(self) -> &'static str {
        match self {
            Cell::RnnTanh | Cell::RnnRelu => "rnn",
            Cell::Lstm => "lstm",
            Cell::Gru => "gru",
        }
    }
}

/// One direction's weights: w_ih `[G·H, F]`, w_hh `[G·H, H]`, b_ih, b_hh `[G·H]`.
struct Weights {
    w_ih: ArrayD<f64>,
    w_hh: ArrayD<f64>,
    b_ih: Vec<f64>,
    b_hh: Vec<f64>,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// W·v + b for W `[rows, cols]`.
fn affine(w: &ArrayD<f64>, v: &[f64], b: &[f64]) -> Vec<f64> {
    (0..w.shape()[0])
        .map(|i| b[i] + (0..v.len()).map(|j| w[[i, j]] * v[j]).sum::<f64>())
        .collect()
}

/// PyTorch's cells step by step over `x` `[N, T, F]` from zero state, backwards when
/// `reverse`: the hidden state after each time step, indexed `[t][n][k]` by the time
/// step it was computed at.
fn reference_rnn(
    cell: Cell,
    hidden: usize,
    x: &ArrayD<f64>,
    w: &Weights,
    reverse: bool,
) -> Vec<Vec<Vec<f64>>> {
    let (n, t, f) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let hd = hidden;
    let mut out = vec![vec![vec![0.0; hd]; n]; t];
    for b in 0..n {
        let mut h = vec![0.0; hd];
        let mut c = vec![0.0; hd];
        let order: Vec<usize> = if reverse {
            (0..t).rev().collect()
        } else {
            (0..t).collect()
        };
        for step in order {
            let xt: Vec<f64> = (0..f).map(|j| x[[b, step, j]]).collect();
            let gi = affine(&w.w_ih, &xt, &w.b_ih);
            let gh = affine(&w.w_hh, &h, &w.b_hh);
            let at = |v: &[f64], gate: usize, k: usize| v[gate * hd + k];
            h = match cell {
                Cell::RnnTanh => (0..hd).map(|k| (gi[k] + gh[k]).tanh()).collect(),
                Cell::RnnRelu => (0..hd).map(|k| (gi[k] + gh[k]).max(0.0)).collect(),
                Cell::Lstm => {
                    // i, f, g, o; c' = f·c + i·g; h' = o·tanh(c').
                    let mut hn = vec![0.0; hd];
                    for k in 0..hd {
                        let i = sigmoid(at(&gi, 0, k) + at(&gh, 0, k));
                        let fg = sigmoid(at(&gi, 1, k) + at(&gh, 1, k));
                        let g = (at(&gi, 2, k) + at(&gh, 2, k)).tanh();
                        let o = sigmoid(at(&gi, 3, k) + at(&gh, 3, k));
                        c[k] = fg * c[k] + i * g;
                        hn[k] = o * c[k].tanh();
                    }
                    hn
                }
                Cell::Gru => {
                    // r, z, n; n = tanh(W_in x + b_in + r·(W_hn h + b_hn)); h' = (1 − z)·n + z·h.
                    (0..hd)
                        .map(|k| {
                            let r = sigmoid(at(&gi, 0, k) + at(&gh, 0, k));
                            let z = sigmoid(at(&gi, 1, k) + at(&gh, 1, k));
                            let nn = (at(&gi, 2, k) + r * at(&gh, 2, k)).tanh();
                            (1.0 - z) * nn + z * h[k]
                        })
                        .collect()
                }
            };
            out[step][b] = h.clone();
        }
    }
    out
}

#[test]
fn recurrent_layers_against_pytorch_equations() {
    let mut r = ChaCha8Rng::seed_from_u64(6);
    let (n, f, hd) = (3, 3, 2);
    // T = 1 too: both directions read the one step, and the reverse's last state is it.
    for (t, cell) in [
        (4, Cell::RnnTanh),
        (4, Cell::RnnRelu),
        (4, Cell::Lstm),
        (4, Cell::Gru),
        (1, Cell::Lstm),
        (1, Cell::Gru),
    ] {
        for bidirectional in [false, true] {
            for sequence in [true, false] {
                let layer = cell.layer(hd, bidirectional, sequence);
                let src = format!(
                    "model m {{\n  input x: [N, {t}, {f}]\n  y = x |> {layer}\n  output y\n}}"
                );
                let mut net = Net::new(&src);
                let gh = cell.gates() * hd;
                let dirs = if bidirectional { 2 } else { 1 };
                let mut weights = Vec::new();
                for d in 0..dirs {
                    let suffix = if d == 1 { "_reverse" } else { "" };
                    let w = Weights {
                        w_ih: uniform(&mut r, &[gh, f], -0.8, 0.8),
                        w_hh: uniform(&mut r, &[gh, hd], -0.8, 0.8),
                        b_ih: flat(&uniform(&mut r, &[gh], -0.5, 0.5)),
                        b_hh: flat(&uniform(&mut r, &[gh], -0.5, 0.5)),
                    };
                    let name = |p: &str| format!("y.{}.{p}{suffix}", cell.word());
                    net.set(&name("weight_ih"), &flat(&w.w_ih));
                    net.set(&name("weight_hh"), &flat(&w.w_hh));
                    net.set(&name("bias_ih"), &w.b_ih);
                    net.set(&name("bias_hh"), &w.b_hh);
                    weights.push(w);
                }
                let x = uniform(&mut r, &[n, t, f], -1.5, 1.5);
                let runs: Vec<_> = weights
                    .iter()
                    .enumerate()
                    .map(|(d, w)| reference_rnn(cell, hd, &x, w, d == 1))
                    .collect();
                // Sequence: [N, T, dirs·H], each step's [forward, reverse] states.
                // Last state: the forward one after t = T − 1, the reverse one after t = 0.
                let mut want = Vec::new();
                let mut dims = vec![n];
                if sequence {
                    dims.extend([t, dirs * hd]);
                    for b in 0..n {
                        for step in 0..t {
                            for run in &runs {
                                want.extend(&run[step][b]);
                            }
                        }
                    }
                } else {
                    dims.push(dirs * hd);
                    for b in 0..n {
                        for (d, run) in runs.iter().enumerate() {
                            want.extend(&run[if d == 0 { t - 1 } else { 0 }][b]);
                        }
                    }
                }
                let what = format!("{layer} over {t} steps");
                let got = &net.eval(std::slice::from_ref(&x))[0];
                assert_values(&what, got, &dims, &want);
                // The same through the runtime's state and the interpreter backend (f32).
                let state = net.state();
                let root = net.p.forward.outputs[0].1;
                let got32 = Interpreter
                    .forward(&net.p.forward, &state, &[to_f32(&x)], &[], &[root])
                    .expect("runs");
                assert_f32(&format!("{what} (f32)"), &got32[0], &want);
            }
        }
    }
}

// ---------------------------------------------------------------- train/eval separation

const BOTH: &str = "model m {
  input img: [N, 2, 4, 4]
  input x: [N, 5]
  target y: [N, 3]
  c = img |> conv2d(3, 3, pad: 1) |> batchnorm |> rrelu |> flatten
  h = x |> dense(4) |> batchnorm(momentum: 0.3) |> relu |> dropout(0.5)
  out = concat(c, h, axis: 1) |> dense(3)
  output out
  loss mse(out, y)
}
train m {
  optimizer sgd(lr: 0.1, momentum: 0.9)
  seed 3
}";

fn running_stats(g: &Graph) -> Vec<usize> {
    g.params
        .iter()
        .enumerate()
        .filter(|(_, q)| q.tensor.name.contains("running_"))
        .map(|(k, _)| k)
        .collect()
}

/// Whether any node `roots` depend on reads one of the parameters `params`.
fn reads(g: &Graph, roots: &[NodeId], params: &[usize]) -> bool {
    let live = g.live(roots);
    g.nodes
        .iter()
        .enumerate()
        .any(|(i, n)| live[i] && matches!(n.op, Op::Param(k) if params.contains(&k)))
}

#[test]
fn evaluation_graph_has_no_noise_no_batch_statistics_and_no_updates() {
    let (p, _) = program(BOTH);
    let g = &p.forward;
    let stats = running_stats(g);
    assert_eq!(
        stats.len(),
        4,
        "two batchnorms, two running statistics each"
    );
    assert!(g.updates.is_empty(), "evaluation writes nothing back");
    for n in &g.nodes {
        assert!(
            !matches!(n.op, Op::Noise { .. }),
            "noise in evaluation: {}",
            n.name
        );
        assert!(
            !matches!(n.op, Op::Hyper(_)),
            "evaluation reads a hyperparameter: {}",
            n.name
        );
        assert!(
            !matches!(n.op, Op::BatchSize),
            "evaluation depends on the batch size: {}",
            n.name
        );
        if let Op::Reduce { axes, .. } = &n.op {
            assert!(
                !axes.contains(&0),
                "a reduction over the batch in evaluation: {}",
                n.name
            );
        }
        assert!(
            !matches!(n.op, Op::BatchStats | Op::BatchNorm { .. }),
            "batch statistics in evaluation: {}",
            n.name
        );
    }
    // Evaluation normalizes with the running statistics.
    let out = g.outputs[0].1;
    assert!(reads(g, &[out], &stats));
}

#[test]
fn training_graph_normalizes_with_batch_statistics_and_updates_running_ones() {
    let (p, cfg) = program(BOTH);
    let fwd = p.train_forward(cfg.seed);
    let stats = running_stats(&fwd);
    let noise = fwd
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Noise { .. }))
        .count();
    assert_eq!(noise, 2, "one dropout mask and one rrelu slope tensor");
    // Each batchnorm computes its batch statistics once and normalizes with them.
    let count = |f: fn(&Op) -> bool| fwd.nodes.iter().filter(|n| f(&n.op)).count();
    assert_eq!(count(|op| matches!(op, Op::BatchStats)), 2);
    assert_eq!(count(|op| matches!(op, Op::BatchNorm { .. })), 2);
    for n in fwd
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::BatchNorm { .. }))
    {
        assert!(
            matches!(fwd.nodes[n.args[1]].op, Op::BatchStats)
                && fwd.nodes[n.args[1]].args[0] == n.args[0],
            "batchnorm normalizes with the statistics of its own input"
        );
    }
    let mut updated: Vec<usize> = fwd
        .updates
        .iter()
        .map(|(s, _)| match s {
            Slot::Param(k) => *k,
            Slot::State(k) => panic!("forward graph updates state #{k}"),
        })
        .collect();
    updated.sort();
    assert_eq!(
        updated, stats,
        "the running statistics, and only they, are written back"
    );
    // Neither the outputs nor the loss read a running statistic.
    let mut roots: Vec<NodeId> = fwd.outputs.iter().map(|(_, n)| *n).collect();
    roots.extend(fwd.loss);
    roots.extend(fwd.objective);
    assert!(
        !reads(&fwd, &roots, &stats),
        "training normalizes with running statistics"
    );
    // Nor do the gradients of the whole training step; only their own updates do.
    let tg = p.training_graph(&cfg);
    let mut roots: Vec<NodeId> = tg.grads.iter().map(|(_, n)| *n).collect();
    roots.extend(tg.loss);
    roots.extend(
        tg.updates
            .iter()
            .filter(|(s, _)| !matches!(s, Slot::Param(k) if stats.contains(k)))
            .map(|(_, n)| *n),
    );
    assert!(!reads(&tg, &roots, &stats));
    assert!(
        tg.grads.iter().all(|(k, _)| !stats.contains(k)),
        "statistics get no gradient"
    );
    let names: Vec<&str> = tg.states.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.iter().all(|n| !n.contains("running_")),
        "optimizer state for a running statistic: {names:?}"
    );
}

#[test]
fn evaluation_is_repeatable_and_leaves_running_statistics_alone() {
    let (p, cfg) = program(BOTH);
    let mut r = ChaCha8Rng::seed_from_u64(8);
    let img = uniform(&mut r, &[6, 2, 4, 4], -1.0, 1.0);
    let x = uniform(&mut r, &[6, 5], -1.0, 1.0);
    let y = uniform(&mut r, &[6, 3], -1.0, 1.0);
    let inputs = [to_f32(&img), to_f32(&x)];
    let targets = [to_f32(&y)];
    let run = Run::new(&p, &cfg).unwrap();
    let mut state = run.state.clone();
    let stats = running_stats(&p.forward);
    // Make the running statistics unlike the batch's so that reading them shows.
    for (i, &k) in stats.iter().enumerate() {
        state.params[k].mapv_inplace(|v| v + 0.5 + i as f32 * 0.25);
    }
    let before = state.clone();
    let mut roots: Vec<NodeId> = p.forward.outputs.iter().map(|(_, n)| *n).collect();
    roots.extend(p.forward.loss);
    let a = Interpreter
        .forward(&p.forward, &state, &inputs, &targets, &roots)
        .expect("runs");
    let b = Interpreter
        .forward(&p.forward, &state, &inputs, &targets, &roots)
        .expect("runs");
    assert_eq!(a, b, "evaluation twice");
    assert_eq!(state, before, "evaluation changed the state");
    // Training output does not depend on the running statistics: changing them leaves
    // the loss of a training step unchanged, while it changes evaluation.
    let g = run.graph();
    let h = schedule::hyper(&cfg.optimizer, cfg.clip, cfg.optimizer.lr(), 1);
    let (l1, g1) = Interpreter
        .gradients(g, &state, &inputs, &targets, &h)
        .expect("runs");
    let mut other = state.clone();
    for &k in &stats {
        other.params[k].mapv_inplace(|v| v * 3.0 + 1.0);
    }
    let (l2, g2) = Interpreter
        .gradients(g, &other, &inputs, &targets, &h)
        .expect("runs");
    assert_eq!(l1, l2, "the training loss read a running statistic");
    assert_eq!(g1, g2, "a training gradient read a running statistic");
    let c = Interpreter
        .forward(&p.forward, &other, &inputs, &targets, &roots)
        .expect("runs");
    assert_ne!(a[0], c[0], "evaluation ignores the running statistics");
    // A training step writes the running statistics (and nothing reads them back).
    let mut stepped = state.clone();
    Interpreter
        .step(g, &mut stepped, &inputs, &targets, &h)
        .expect("runs");
    for &k in &stats {
        assert_ne!(
            stepped.params[k], state.params[k],
            "running statistic #{k} not updated"
        );
    }
}
