//! Finite-difference gradient checks in f64: every differentiable IR operation (including
//! convolution, pooling and gather), every elementwise function and every loss is
//! differentiated by `autodiff::differentiate`, evaluated by the reference interpreter, and
//! compared with central differences of the objective; then whole models lowered from
//! source in training mode (with regularizers, and with every layer: batch statistics,
//! dropout and rrelu noise fixed by the seed and the step, recurrent cells), frozen
//! parameters, and one step of every optimizer against PyTorch's update rules computed
//! by hand.
//!
//! Each op's objective is `Σ op(x)·R` with a fixed random tensor R, so that the gradient
//! of every output element matters. Values and shapes come from a seeded ChaCha8 stream.

use kiln::autodiff::{differentiate, training_graph};
use kiln::check::graph::CheckedModel;
use kiln::check::{check_file, LintLevels};
use kiln::interp::{self, Env};
use kiln::ir::build::Builder;
use kiln::ir::op::{Cell, Recurrence};
use kiln::ir::{
    Binary, Clip, ConvGeom, DType, Dim, Func, Graph, Hyper, LossKind, NodeId, Op, Optimizer, Param,
    Pool, PoolKind, Reduce, Shape, Slot, Tensor, Windows,
};
use kiln::lower::{lower_model, Mode};
use kiln::ops::Elem;
use kiln::span::Sources;
use ndarray::{ArrayD, IxDyn};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

// ---------------------------------------------------------------- values and shapes

/// The finite-difference step.
const H: f64 = 1e-6;

/// The three run-time batch sizes every batched case runs at.
const BATCHES: [usize; 3] = [1, 3, 7];

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `[d...]` with fixed dims.
fn fx(d: &[u64]) -> Shape {
    Shape::new(d.iter().map(|&k| Dim::Fixed(k)).collect())
}

/// `[N, d...]`.
fn bt(d: &[u64]) -> Shape {
    Shape::batched(d)
}

/// A random size 1..=5 (so batch-1-like and odd sizes both occur).
fn size(r: &mut ChaCha8Rng) -> u64 {
    r.gen_range(1..=5)
}

fn array(dims: &[usize], v: Vec<f64>) -> ArrayD<f64> {
    ArrayD::from_shape_vec(IxDyn(dims), v).expect("value count matches the shape")
}

fn count(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// Uniform in `[lo, hi)`.
fn uniform(r: &mut ChaCha8Rng, dims: &[usize], lo: f64, hi: f64) -> ArrayD<f64> {
    let v = (0..count(dims)).map(|_| r.gen_range(lo..hi)).collect();
    array(dims, v)
}

/// A magnitude in `[lo, hi)` with a random sign: away from zero.
fn away_value(r: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    let m = r.gen_range(lo..hi);
    if r.gen_bool(0.5) {
        m
    } else {
        -m
    }
}

fn away(r: &mut ChaCha8Rng, dims: &[usize], lo: f64, hi: f64) -> ArrayD<f64> {
    let v = (0..count(dims)).map(|_| away_value(r, lo, hi)).collect();
    array(dims, v)
}

/// `n` values, pairwise at least 0.15 apart, in random order (no ties for max/min).
fn distinct(r: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n)
        .map(|i| (i as f64 - n as f64 / 2.0) * 0.25 + r.gen_range(-0.05..0.05))
        .collect();
    v.shuffle(r);
    v
}

/// Random ±1.
fn signs(r: &mut ChaCha8Rng, dims: &[usize]) -> ArrayD<f64> {
    let v = (0..count(dims))
        .map(|_| if r.gen_bool(0.5) { 1.0 } else { -1.0 })
        .collect();
    array(dims, v)
}

/// Random integers in `0..k` (class labels, or 0/1 targets with k = 2).
fn labels(r: &mut ChaCha8Rng, dims: &[usize], k: usize) -> ArrayD<f64> {
    let v = (0..count(dims)).map(|_| r.gen_range(0..k) as f64).collect();
    array(dims, v)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 + 1e-5 * a.abs().max(b.abs())
}

/// For values computed two ways in f64 without finite differences.
fn tight(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 + 1e-10 * a.abs().max(b.abs())
}

fn panic_text(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".into())
}

// ---------------------------------------------------------------- problems

/// The seed of the training-mode graphs (dropout and rrelu noise).
const SEED: u64 = 5;

/// The training step every evaluation runs at: the noise of a step is fixed, so the
/// objective is a deterministic function of the parameters.
const STEP: f64 = 3.0;

/// The run-time hyperparameters a forward graph reads: only the step (for noise).
fn step_hyper() -> HashMap<Hyper, f64> {
    HashMap::from([(Hyper::Step, STEP), (Hyper::RowOffset, 0.0)])
}

/// A graph with its objective set, and the values it runs on.
struct Problem {
    g: Graph,
    inputs: Vec<ArrayD<f64>>,
    targets: Vec<ArrayD<f64>>,
    params: Vec<ArrayD<f64>>,
    batch: usize,
}

impl Problem {
    fn new(batch: usize) -> Self {
        Problem {
            g: Graph::default(),
            inputs: Vec::new(),
            targets: Vec::new(),
            params: Vec::new(),
            batch,
        }
    }

    fn dims(&self, s: &Shape) -> Vec<usize> {
        interp::dims(s, self.batch)
    }

    fn builder(&mut self) -> Builder<'_> {
        Builder::new(&mut self.g)
    }

    /// Adds parameter `name` with value `v` and returns its node.
    fn param(&mut self, name: &str, shape: &Shape, v: ArrayD<f64>, trainable: bool) -> NodeId {
        assert_eq!(v.shape(), self.dims(shape).as_slice(), "value of {name}");
        let k = self.g.params.len();
        self.g.params.push(Param {
            tensor: Tensor {
                name: name.into(),
                shape: shape.clone(),
                dtype: DType::F32,
            },
            trainable,
        });
        self.params.push(v);
        self.g
            .push(Op::Param(k), vec![], shape.clone(), DType::F32, None, name)
    }

    /// Adds input `name` of element type `dtype` with value `v` and returns its node.
    fn input(&mut self, name: &str, shape: &Shape, v: ArrayD<f64>, dtype: DType) -> NodeId {
        assert_eq!(v.shape(), self.dims(shape).as_slice(), "value of {name}");
        let k = self.g.inputs.len();
        self.g.inputs.push(Tensor {
            name: name.into(),
            shape: shape.clone(),
            dtype,
        });
        self.inputs.push(v);
        self.g
            .push(Op::Input(k), vec![], shape.clone(), dtype, None, name)
    }

    /// Adds target `name` with value `v` and returns its node.
    fn target(&mut self, name: &str, shape: &Shape, v: ArrayD<f64>) -> NodeId {
        assert_eq!(v.shape(), self.dims(shape).as_slice(), "value of {name}");
        let k = self.g.targets.len();
        self.g.targets.push(Tensor {
            name: name.into(),
            shape: shape.clone(),
            dtype: DType::F32,
        });
        self.targets.push(v);
        self.g
            .push(Op::Target(k), vec![], shape.clone(), DType::F32, None, name)
    }

    /// Sets the objective to `Σ y·R` for a fixed random R of y's shape: a target when the
    /// shape has the batch, else a frozen parameter.
    fn weigh(&mut self, y: NodeId, r: &mut ChaCha8Rng) {
        let s = self.g.node(y).shape.clone();
        let v = uniform(r, &self.dims(&s), -1.5, 1.5);
        let weights = if s.has_batch() {
            self.target("R", &s, v)
        } else {
            self.param("R", &s, v, false)
        };
        let mut b = self.builder();
        let m = b.mul(y, weights);
        let o = b.sum_all(m);
        self.g.objective = Some(o);
    }

    fn env<'a>(
        &'a self,
        params: &'a [ArrayD<f64>],
        hyper: &'a HashMap<Hyper, f64>,
    ) -> Env<'a, f64> {
        Env {
            inputs: &self.inputs,
            targets: &self.targets,
            params,
            states: &[],
            hyper,
            batch: self.batch,
        }
    }

    /// The value of node `n` of the forward graph with these parameter values.
    fn value(&self, n: NodeId, params: &[ArrayD<f64>]) -> Result<ArrayD<f64>, String> {
        let hyper = step_hyper();
        let env = self.env(params, &hyper);
        let vals = catch_unwind(AssertUnwindSafe(|| interp::run::<f64>(&self.g, &env, &[n])))
            .map_err(|e| format!("the interpreter panicked: {}", panic_text(e)))?
            .map_err(|e| format!("the interpreter failed: {e}"))?;
        vals[n]
            .clone()
            .ok_or_else(|| format!("node %{n} has no value"))
    }

    /// The objective with these parameter values.
    fn objective(&self, params: &[ArrayD<f64>]) -> Result<f64, String> {
        let o = self.g.objective.expect("objective set");
        let v = self.value(o, params)?;
        v.iter()
            .next()
            .copied()
            .ok_or_else(|| "empty objective".into())
    }

    /// The gradient `differentiate` gives each parameter (None: none).
    fn analytic(&self) -> Result<Vec<Option<ArrayD<f64>>>, String> {
        let mut g = self.g.clone();
        catch_unwind(AssertUnwindSafe(|| differentiate(&mut g)))
            .map_err(|e| format!("differentiate panicked: {}", panic_text(e)))?;
        let roots: Vec<NodeId> = g.grads.iter().map(|&(_, n)| n).collect();
        let hyper = step_hyper();
        let env = self.env(&self.params, &hyper);
        let vals = catch_unwind(AssertUnwindSafe(|| interp::run::<f64>(&g, &env, &roots)))
            .map_err(|e| {
                format!(
                    "the interpreter panicked on the backward graph: {}\n{}",
                    panic_text(e),
                    g.print(None)
                )
            })?
            .map_err(|e| format!("the interpreter failed on the backward graph: {e}"))?;
        let mut out = vec![None; g.params.len()];
        for &(k, n) in &g.grads {
            if out[k].is_some() {
                return Err(format!("two gradients for parameter #{k}"));
            }
            out[k] = Some(vals[n].clone().ok_or("a gradient has no value")?);
        }
        Ok(out)
    }
}

/// Compares `differentiate` with central differences for every trainable parameter, and
/// checks that frozen parameters get no gradient. Returns the failures.
fn gradcheck(p: &Problem, label: &str) -> Vec<String> {
    let grads = match p.analytic() {
        Ok(g) => g,
        Err(e) => return vec![format!("{label}: {e}")],
    };
    let mut fails = Vec::new();
    for (k, param) in p.g.params.iter().enumerate() {
        let name = &param.tensor.name;
        if !param.trainable {
            if grads[k].is_some() {
                fails.push(format!("{label}: frozen parameter `{name}` got a gradient"));
            }
            continue;
        }
        let want = p.dims(&param.tensor.shape);
        let analytic: Vec<f64> = match &grads[k] {
            Some(gr) if gr.shape() != want.as_slice() => {
                fails.push(format!(
                    "{label}: gradient of `{name}` has shape {:?}, the parameter {want:?}",
                    gr.shape()
                ));
                continue;
            }
            Some(gr) => gr.iter().copied().collect(),
            None => vec![0.0; count(&want)],
        };
        let mut params = p.params.clone();
        let mut bad = Vec::new();
        for (i, &an) in analytic.iter().enumerate() {
            let x0 = *params[k].iter().nth(i).expect("element");
            let mut at = |v: f64| {
                *params[k].iter_mut().nth(i).expect("element") = v;
                p.objective(&params)
            };
            let (fp, fm) = match (at(x0 + H), at(x0 - H)) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => {
                    fails.push(format!("{label}: {e}"));
                    return fails;
                }
            };
            at(x0).ok();
            let fd = (fp - fm) / (2.0 * H);
            if !close(an, fd) || !an.is_finite() {
                bad.push(format!(
                    "[{i}] autodiff {an:.9} vs finite difference {fd:.9}"
                ));
            }
        }
        if !bad.is_empty() {
            let shown: Vec<&str> = bad.iter().take(4).map(String::as_str).collect();
            fails.push(format!(
                "{label}: ∂/∂`{name}` wrong in {} of {} elements: {}",
                bad.len(),
                analytic.len(),
                shown.join("; ")
            ));
        }
    }
    fails
}

/// Failures collected over many cases, asserted at the end so that one run reports all.
#[derive(Default)]
struct Failures {
    fails: Vec<String>,
    cases: usize,
}

impl Failures {
    fn check(&mut self, p: &Problem, label: &str) {
        self.cases += 1;
        self.fails.extend(gradcheck(p, label));
    }

    fn fail(&mut self, msg: String) {
        self.fails.push(msg);
    }

    fn done(self, what: &str) {
        eprintln!("{what}: {} cases checked", self.cases);
        assert!(
            self.fails.is_empty(),
            "{what}: {} failure(s) in {} cases:\n{}",
            self.fails.len(),
            self.cases,
            self.fails.join("\n")
        );
    }
}

// ---------------------------------------------------------------- elementwise functions

/// Every elementwise function of the registry, the parameterized ones at two settings.
fn funcs() -> Vec<Func> {
    let mut v = Vec::new();
    for &e in Elem::ALL {
        match e.def().params.len() {
            0 => v.push(Func::of(e)),
            _ => {
                v.push(Func::with(e, [0.01, 0.2]));
                v.push(Func::with(e, [0.5, 1.0]));
            }
        }
    }
    v
}

/// Inputs in the function's domain as the registry states it, 0.1 away from its kinks.
fn map_input(f: Func, r: &mut ChaCha8Rng, dims: &[usize]) -> ArrayD<f64> {
    let d = f.def().domain;
    let v = (0..count(dims))
        .map(|_| loop {
            let x = r.gen_range(d.lo..d.hi);
            if d.kinks.iter().all(|k| (x - k).abs() >= 0.1) {
                break x;
            }
        })
        .collect();
    array(dims, v)
}

#[test]
fn map_every_function() {
    let mut r = rng(1);
    let mut f = Failures::default();
    for func in funcs() {
        let (d, e) = (size(&mut r), size(&mut r));
        let shapes = [
            (1, bt(&[])),
            (3, bt(&[d])),
            (7, bt(&[d, e])),
            (1, fx(&[d, e])),
            (3, Shape::scalar()),
        ];
        for (batch, shape) in shapes {
            let mut p = Problem::new(batch);
            let v = map_input(func, &mut r, &p.dims(&shape));
            let x = p.param("x", &shape, v, true);
            let y = p.builder().map(func, x);
            p.weigh(y, &mut r);
            f.check(&p, &format!("{func} on {shape} (batch {batch})"));
        }
    }
    // Softplus switches to the identity above 20: both branches.
    for (lo, hi) in [(15.0, 30.0), (-30.0, -15.0)] {
        let mut p = Problem::new(3);
        let s = bt(&[4]);
        let v = uniform(&mut r, &p.dims(&s), lo, hi);
        let x = p.param("x", &s, v, true);
        let y = p.builder().map(Func::of(Elem::Softplus), x);
        p.weigh(y, &mut r);
        f.check(&p, &format!("softplus on [{lo}, {hi})"));
    }
    f.done("map");
}

#[test]
fn sign_and_step_have_zero_gradient() {
    let mut r = rng(2);
    for func in [Func::of(Elem::Sign), Func::of(Elem::Step)] {
        let mut p = Problem::new(3);
        let s = bt(&[4]);
        let v = away(&mut r, &p.dims(&s), 0.1, 2.0);
        let x = p.param("x", &s, v, true);
        let y = p.builder().map(func, x);
        p.weigh(y, &mut r);
        let grads = p.analytic().expect("differentiates");
        let g = grads[0].as_ref().expect("x gets a (zero) gradient");
        assert!(
            g.iter().all(|&v| v == 0.0),
            "{func}: gradient {g:?} should be zero"
        );
    }
}

// ---------------------------------------------------------------- binary operations

fn binary_problem(op: Binary, sa: &Shape, sb: &Shape, batch: usize, r: &mut ChaCha8Rng) -> Problem {
    let mut p = Problem::new(batch);
    let (da, db) = (p.dims(sa), p.dims(sb));
    let (va, vb) = match op {
        Binary::Div => (uniform(r, &da, -2.0, 2.0), away(r, &db, 0.5, 2.0)),
        Binary::Max | Binary::Min => {
            let mut v = distinct(r, count(&da) + count(&db));
            let vb = v.split_off(count(&da));
            (array(&da, v), array(&db, vb))
        }
        _ => (uniform(r, &da, -2.0, 2.0), uniform(r, &db, -2.0, 2.0)),
    };
    let a = p.param("a", sa, va, true);
    let b = p.param("b", sb, vb, true);
    let y = p.builder().binary(op, a, b);
    p.weigh(y, r);
    p
}

#[test]
fn binary_with_broadcasting() {
    let mut r = rng(3);
    let mut f = Failures::default();
    let pairs = [
        (bt(&[3, 1]), fx(&[4])),
        (fx(&[4]), bt(&[3, 1])),
        (Shape::scalar(), bt(&[2, 3])),
        (bt(&[2, 3]), Shape::scalar()),
        (bt(&[1, 4]), fx(&[3, 1])),
        (fx(&[1, 3]), bt(&[1])),
        (bt(&[3, 4]), bt(&[1, 4])),
        (bt(&[2, 3]), bt(&[2, 3])),
        (fx(&[5, 1]), fx(&[1, 3])),
        (Shape::scalar(), fx(&[3])),
        (fx(&[1, 1]), bt(&[5])),
    ];
    for op in [
        Binary::Add,
        Binary::Sub,
        Binary::Mul,
        Binary::Div,
        Binary::Max,
        Binary::Min,
    ] {
        for (sa, sb) in &pairs {
            for batch in BATCHES {
                let p = binary_problem(op, sa, sb, batch, &mut r);
                f.check(&p, &format!("{op:?} {sa} with {sb} (batch {batch})"));
            }
        }
        // Random pairs: each dim of [N, d, e] kept, set to 1, or (leading) dropped.
        for _ in 0..4 {
            let full = [
                Dim::Batch,
                Dim::Fixed(size(&mut r)),
                Dim::Fixed(size(&mut r)),
            ];
            let mk = |r: &mut ChaCha8Rng| {
                let drop = r.gen_range(0..=2);
                Shape::new(
                    full[drop..]
                        .iter()
                        .map(|&d| if r.gen_bool(0.3) { Dim::Fixed(1) } else { d })
                        .collect(),
                )
            };
            let (sa, sb) = (mk(&mut r), mk(&mut r));
            let batch = *BATCHES.choose(&mut r).expect("nonempty");
            let p = binary_problem(op, &sa, &sb, batch, &mut r);
            f.check(&p, &format!("{op:?} {sa} with {sb} (batch {batch})"));
        }
    }
    f.done("binary");
}

/// A parameter used twice: the gradients of both uses add up.
#[test]
fn shared_operand_gradients_accumulate() {
    let mut r = rng(4);
    let mut f = Failures::default();
    for op in [Binary::Add, Binary::Sub, Binary::Mul, Binary::Div] {
        for batch in BATCHES {
            let mut p = Problem::new(batch);
            let s = bt(&[3]);
            let v = away(&mut r, &p.dims(&s), 0.5, 2.0);
            let x = p.param("x", &s, v, true);
            let e = p.builder().map(Func::of(Elem::Exp), x);
            let y = p.builder().binary(op, x, e);
            let z = p.builder().binary(op, y, x);
            p.weigh(z, &mut r);
            f.check(&p, &format!("{op:?} with a shared operand (batch {batch})"));
        }
    }
    f.done("shared operands");
}

// ---------------------------------------------------------------- matrix products

fn matmul_problem(
    sa: &Shape,
    sb: &Shape,
    ta: bool,
    tb: bool,
    batched: bool,
    batch: usize,
    r: &mut ChaCha8Rng,
) -> Problem {
    let mut p = Problem::new(batch);
    let va = uniform(r, &p.dims(sa), -1.5, 1.5);
    let vb = uniform(r, &p.dims(sb), -1.5, 1.5);
    let a = p.param("a", sa, va, true);
    let b = p.param("b", sb, vb, true);
    let y = if batched {
        p.builder().batch_matmul(a, b, ta, tb)
    } else {
        p.builder().matmul(a, b, ta, tb)
    };
    p.weigh(y, r);
    p
}

#[test]
fn matmul_dense_and_transposed() {
    let mut r = rng(5);
    let mut f = Failures::default();
    for batch in BATCHES {
        for _ in 0..2 {
            let (t, k, u, m) = (size(&mut r), size(&mut r), size(&mut r), size(&mut r));
            let cases = [
                // The dense layer: x [N, F] or [N, T, F] times W [F, U].
                (bt(&[k]), fx(&[k, u]), false, false),
                (bt(&[t, k]), fx(&[k, u]), false, false),
                (fx(&[m, k]), fx(&[k, u]), false, false),
                // The forms the backward pass uses.
                (bt(&[k]), fx(&[u, k]), false, true),
                (bt(&[t, k]), fx(&[u, k]), false, true),
                (bt(&[k]), bt(&[u]), true, false),
                (bt(&[t, k]), bt(&[t, u]), true, false),
                (fx(&[m, k]), fx(&[u, m]), true, true),
            ];
            for (sa, sb, ta, tb) in cases {
                let p = matmul_problem(&sa, &sb, ta, tb, false, batch, &mut r);
                f.check(
                    &p,
                    &format!("matmul ta={ta} tb={tb} {sa}·{sb} (batch {batch})"),
                );
            }
        }
    }
    f.done("matmul");
}

#[test]
fn batch_matmul_broadcast_and_transposed() {
    let mut r = rng(6);
    let mut f = Failures::default();
    for batch in BATCHES {
        let (m, k, n, l) = (size(&mut r), size(&mut r), size(&mut r), size(&mut r));
        let cases = [
            (bt(&[m, k]), fx(&[k, n]), false, false),
            (bt(&[m, k]), bt(&[k, n]), false, false),
            (fx(&[m, k]), bt(&[k, n]), false, false),
            (bt(&[1, m, k]), fx(&[l, k, n]), false, false),
            (fx(&[l, m, k]), fx(&[1, k, n]), false, false),
            (fx(&[1, m, k]), bt(&[k, n]), false, false),
            (bt(&[k, m]), fx(&[k, n]), true, false),
            (bt(&[m, k]), fx(&[n, k]), false, true),
            (bt(&[k, m]), bt(&[n, k]), true, true),
            (fx(&[l, k, m]), bt(&[l, n, k]), true, true),
            (bt(&[l, m, k]), fx(&[1, n, k]), false, true),
            (fx(&[k, m]), bt(&[l, k, n]), true, false),
        ];
        for (sa, sb, ta, tb) in cases {
            let p = matmul_problem(&sa, &sb, ta, tb, true, batch, &mut r);
            f.check(
                &p,
                &format!("batch_matmul ta={ta} tb={tb} {sa}·{sb} (batch {batch})"),
            );
        }
    }
    f.done("batch_matmul");
}

// ---------------------------------------------------------------- shape operations

/// `op` on one random parameter of shape `from`, giving shape `to`.
fn unary_problem(op: Op, from: &Shape, to: &Shape, batch: usize, r: &mut ChaCha8Rng) -> Problem {
    let mut p = Problem::new(batch);
    let v = uniform(r, &p.dims(from), -2.0, 2.0);
    let x = p.param("x", from, v, true);
    let y = p.builder().push(op, vec![x], to.clone());
    p.weigh(y, r);
    p
}

#[test]
fn reshape_broadcast_to_and_sum_to() {
    let mut r = rng(7);
    let mut f = Failures::default();
    let cases = [
        (Op::Reshape, bt(&[2, 3]), bt(&[6])),
        (Op::Reshape, bt(&[6]), bt(&[3, 2])),
        (Op::Reshape, bt(&[1]), bt(&[])),
        (Op::Reshape, fx(&[2, 3]), fx(&[6])),
        (Op::Reshape, fx(&[4]), fx(&[2, 1, 2])),
        (Op::BroadcastTo, fx(&[3]), bt(&[2, 3])),
        (Op::BroadcastTo, bt(&[1]), bt(&[4])),
        (Op::BroadcastTo, Shape::scalar(), fx(&[2, 3])),
        (Op::BroadcastTo, fx(&[1, 3]), fx(&[4, 3])),
        (Op::BroadcastTo, bt(&[1, 3]), bt(&[2, 3])),
        (Op::BroadcastTo, fx(&[1, 1]), bt(&[5])),
        (Op::SumTo, bt(&[2, 3]), fx(&[3])),
        (Op::SumTo, bt(&[2, 3]), fx(&[2, 3])),
        (Op::SumTo, bt(&[2, 3]), bt(&[1, 3])),
        (Op::SumTo, bt(&[2, 3]), Shape::scalar()),
        (Op::SumTo, fx(&[4, 3]), fx(&[1, 3])),
        (Op::SumTo, bt(&[3]), fx(&[1, 3])),
        (Op::SumTo, fx(&[4, 3, 2]), fx(&[3, 1])),
    ];
    for (op, from, to) in &cases {
        for batch in BATCHES {
            let p = unary_problem(op.clone(), from, to, batch, &mut r);
            f.check(&p, &format!("{op} {from} → {to} (batch {batch})"));
        }
    }
    f.done("reshape/broadcast_to/sum_to");
}

/// Every nonempty subset of `0..rank`.
fn subsets(rank: usize) -> Vec<Vec<usize>> {
    (1..1usize << rank)
        .map(|m| (0..rank).filter(|i| m >> i & 1 == 1).collect())
        .collect()
}

#[test]
fn reduce_every_kind_and_axes() {
    let mut r = rng(8);
    let mut f = Failures::default();
    let shapes = [bt(&[3, 4]), bt(&[5]), fx(&[2, 3, 4]), bt(&[1, 3]), bt(&[])];
    for shape in &shapes {
        for axes in subsets(shape.rank()) {
            for kind in [Reduce::Sum, Reduce::Mean, Reduce::Max, Reduce::Min] {
                for keepdims in [false, true] {
                    let batches: &[usize] = if shape.has_batch() { &BATCHES } else { &[1] };
                    for &batch in batches {
                        let mut p = Problem::new(batch);
                        let dims = p.dims(shape);
                        let v = array(&dims, distinct(&mut r, count(&dims)));
                        let x = p.param("x", shape, v, true);
                        let y = p.builder().reduce(kind, x, axes.clone(), keepdims);
                        p.weigh(y, &mut r);
                        f.check(
                            &p,
                            &format!(
                                "{kind:?} over {axes:?} of {shape} keepdims={keepdims} (batch {batch})"
                            ),
                        );
                    }
                }
            }
        }
    }
    f.done("reduce");
}

/// Mean over the batch divides by the run-time batch size: its value, then its gradient.
#[test]
fn mean_over_the_batch_divides_by_the_runtime_size() {
    let mut r = rng(9);
    for batch in BATCHES {
        let mut p = Problem::new(batch);
        let s = bt(&[2]);
        let v = uniform(&mut r, &p.dims(&s), -1.0, 1.0);
        let x = p.param("x", &s, v.clone(), true);
        let y = p.builder().reduce(Reduce::Mean, x, vec![0, 1], false);
        p.g.objective = Some(y);
        let got = p.objective(&p.params).expect("runs");
        let want = v.sum() / (2 * batch) as f64;
        assert!(tight(got, want), "batch {batch}: mean {got} vs {want}");
        let g = p.analytic().expect("differentiates")[0]
            .clone()
            .expect("grad");
        for v in g.iter() {
            assert!(tight(*v, 1.0 / (2 * batch) as f64), "batch {batch}: {g:?}");
        }
    }
}

#[test]
fn softmax_and_log_softmax_on_several_axes() {
    let mut r = rng(10);
    let mut f = Failures::default();
    let cases = [
        (bt(&[4]), 1),
        (bt(&[3, 5]), 1),
        (bt(&[3, 5]), 2),
        (fx(&[3, 4]), 0),
        (fx(&[3, 4]), 1),
        (bt(&[1]), 1),
        (bt(&[2, 3, 2]), 2),
        (bt(&[3]), 0),
    ];
    for (shape, axis) in &cases {
        for batch in BATCHES {
            for soft in [true, false] {
                let op = if soft {
                    Op::Softmax(*axis)
                } else {
                    Op::LogSoftmax(*axis)
                };
                let mut p = Problem::new(batch);
                let v = uniform(&mut r, &p.dims(shape), -3.0, 3.0);
                let x = p.param("x", shape, v, true);
                let y = p.builder().like(op.clone(), vec![x], x);
                p.weigh(y, &mut r);
                f.check(&p, &format!("{op} on {shape} (batch {batch})"));
            }
        }
    }
    f.done("softmax/log_softmax");
}

#[test]
fn concat_two_and_three_tensors() {
    let mut r = rng(11);
    let mut f = Failures::default();
    let cases: Vec<(Vec<Shape>, usize, Shape)> = vec![
        (vec![bt(&[2, 3]), bt(&[1, 3])], 1, bt(&[3, 3])),
        (vec![bt(&[3]), bt(&[4])], 1, bt(&[7])),
        (vec![bt(&[2, 3]), bt(&[2, 1]), bt(&[2, 2])], 2, bt(&[2, 6])),
        (vec![bt(&[1, 2]), bt(&[3, 2]), bt(&[1, 2])], 1, bt(&[5, 2])),
        (vec![fx(&[2, 3]), fx(&[4, 3]), fx(&[1, 3])], 0, fx(&[7, 3])),
        (vec![fx(&[2, 3]), fx(&[2, 5])], 1, fx(&[2, 8])),
    ];
    for (parts, axis, out) in &cases {
        for batch in BATCHES {
            let mut p = Problem::new(batch);
            let mut args = Vec::new();
            for (i, s) in parts.iter().enumerate() {
                let v = uniform(&mut r, &p.dims(s), -2.0, 2.0);
                args.push(p.param(&format!("x{i}"), s, v, true));
            }
            let y = p.builder().push(Op::Concat(*axis), args, out.clone());
            p.weigh(y, &mut r);
            let names: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
            f.check(
                &p,
                &format!("concat axis {axis} of {} (batch {batch})", names.join(", ")),
            );
        }
    }
    f.done("concat");
}

#[test]
fn slice_along_several_axes() {
    let mut r = rng(12);
    let mut f = Failures::default();
    let cases = [
        (bt(&[5, 3]), 1, 1, 3),
        (bt(&[5, 3]), 2, 2, 1),
        (bt(&[5, 3]), 1, 0, 5),
        (bt(&[4]), 1, 3, 1),
        (fx(&[6, 2]), 0, 2, 3),
        (bt(&[3, 4, 2]), 2, 0, 1),
    ];
    for (from, axis, start, len) in &cases {
        let mut dims = from.0.clone();
        dims[*axis] = Dim::Fixed(*len as u64);
        let to = Shape::new(dims);
        let op = Op::Slice {
            axis: *axis,
            start: *start,
            len: *len,
        };
        for batch in BATCHES {
            let p = unary_problem(op.clone(), from, &to, batch, &mut r);
            f.check(&p, &format!("{op} of {from} (batch {batch})"));
        }
    }
    f.done("slice");
}

// ---------------------------------------------------------------- layer operations

fn geom(stride: &[usize], pad: &[usize], dilation: &[usize]) -> ConvGeom {
    ConvGeom {
        stride: stride.to_vec(),
        pad: pad.to_vec(),
        dilation: dilation.to_vec(),
    }
}

/// `Σ conv(x, w)·R` with both x and w trainable: checks Conv and, through its VJP,
/// ConvGradInput (∂/∂x) and ConvGradWeight (∂/∂w).
fn conv_problem(sx: &Shape, sw: &Shape, g: ConvGeom, batch: usize, r: &mut ChaCha8Rng) -> Problem {
    let mut p = Problem::new(batch);
    let vx = uniform(r, &p.dims(sx), -1.5, 1.5);
    let vw = uniform(r, &p.dims(sw), -1.0, 1.0);
    let x = p.param("x", sx, vx, true);
    let w = p.param("w", sw, vw, true);
    let y = p.builder().conv(x, w, g);
    p.weigh(y, r);
    p
}

#[test]
fn conv_1d_and_2d_with_stride_padding_and_dilation() {
    let mut r = rng(40);
    let mut f = Failures::default();
    // (x [N, C, S..], w [O, C, K..], stride, pad, dilation)
    let cases: Vec<(Shape, Shape, ConvGeom)> = vec![
        (bt(&[2, 7]), fx(&[3, 2, 3]), geom(&[1], &[0], &[1])),
        (bt(&[2, 9]), fx(&[2, 2, 3]), geom(&[2], &[1], &[1])),
        (bt(&[1, 8]), fx(&[2, 1, 2]), geom(&[1], &[2], &[2])),
        (bt(&[2, 10]), fx(&[1, 2, 3]), geom(&[3], &[1], &[2])),
        (bt(&[3, 5]), fx(&[2, 3, 1]), geom(&[1], &[0], &[1])),
        (
            bt(&[2, 5, 5]),
            fx(&[3, 2, 3, 3]),
            geom(&[1, 1], &[1, 1], &[1, 1]),
        ),
        // Rectangular kernels and strides.
        (
            bt(&[1, 6, 7]),
            fx(&[2, 1, 2, 3]),
            geom(&[2, 1], &[0, 1], &[1, 1]),
        ),
        (
            bt(&[2, 7, 6]),
            fx(&[2, 2, 3, 2]),
            geom(&[1, 2], &[2, 0], &[2, 1]),
        ),
        // Stride 2 over 6 with a window of 3: the last row and column are read by no
        // window (zero gradient).
        (
            bt(&[2, 6, 6]),
            fx(&[2, 2, 3, 3]),
            geom(&[2, 2], &[0, 0], &[1, 1]),
        ),
        (
            bt(&[2, 5, 5]),
            fx(&[2, 2, 3, 3]),
            geom(&[2, 2], &[1, 1], &[1, 1]),
        ),
        // 1×1: a per-position channel mix.
        (
            bt(&[3, 4, 4]),
            fx(&[2, 3, 1, 1]),
            geom(&[1, 1], &[0, 0], &[1, 1]),
        ),
        (
            bt(&[3, 4, 4]),
            fx(&[2, 3, 1, 1]),
            geom(&[2, 2], &[1, 1], &[1, 1]),
        ),
    ];
    for (sx, sw, g) in &cases {
        for batch in BATCHES {
            let p = conv_problem(sx, sw, g.clone(), batch, &mut r);
            f.check(&p, &format!("conv {g} of {sx} by {sw} (batch {batch})"));
        }
    }
    f.done("conv");
}

/// `Σ pool(x)·R`; max pooling gets pairwise distinct values (no ties in a window).
fn pool_problem(pool: &Pool, sx: &Shape, batch: usize, r: &mut ChaCha8Rng) -> Problem {
    let mut p = Problem::new(batch);
    let d = p.dims(sx);
    let v = match pool.kind {
        PoolKind::Max => array(&d, distinct(r, count(&d))),
        PoolKind::Avg => uniform(r, &d, -2.0, 2.0),
    };
    let x = p.param("x", sx, v, true);
    let y = p.builder().pool(x, pool.clone());
    p.weigh(y, r);
    p
}

fn regular(k: &[usize], stride: &[usize], pad: &[usize], count_pad: bool) -> Windows {
    Windows::Regular {
        k: k.to_vec(),
        stride: stride.to_vec(),
        pad: pad.to_vec(),
        count_pad,
    }
}

#[test]
fn pool_max_and_avg_regular_windows() {
    let mut r = rng(41);
    let mut f = Failures::default();
    // (x, k, stride, pad): disjoint, overlapping (stride < k), padded, rectangular.
    type Case = (Shape, Vec<usize>, Vec<usize>, Vec<usize>);
    let cases: Vec<Case> = vec![
        (bt(&[2, 6]), vec![2], vec![2], vec![0]),
        (bt(&[2, 7]), vec![3], vec![1], vec![1]),
        (bt(&[1, 8]), vec![3], vec![2], vec![1]),
        (bt(&[2, 9]), vec![4], vec![3], vec![2]),
        (bt(&[2, 4, 4]), vec![2, 2], vec![2, 2], vec![0, 0]),
        (bt(&[2, 5, 5]), vec![3, 3], vec![1, 1], vec![1, 1]),
        (bt(&[1, 5, 6]), vec![3, 2], vec![2, 1], vec![1, 0]),
        (bt(&[2, 4, 5]), vec![2, 3], vec![1, 2], vec![1, 1]),
        (bt(&[1, 7, 7]), vec![3, 3], vec![2, 2], vec![0, 0]),
        // Padding above k/2 (allowed below k): edge windows hold one real element.
        (bt(&[2, 5]), vec![3], vec![1], vec![2]),
        (bt(&[1, 4, 4]), vec![3, 3], vec![2, 1], vec![2, 1]),
    ];
    for (sx, k, stride, pad) in &cases {
        for (kind, count_pad) in [
            (PoolKind::Max, false),
            (PoolKind::Avg, true),
            (PoolKind::Avg, false),
        ] {
            let pool = Pool {
                kind,
                windows: regular(k, stride, pad, count_pad),
            };
            for batch in BATCHES {
                let p = pool_problem(&pool, sx, batch, &mut r);
                f.check(&p, &format!("pool {pool} of {sx} (batch {batch})"));
            }
        }
    }
    f.done("regular pooling");
}

#[test]
fn pool_adaptive_bins_even_and_uneven() {
    let mut r = rng(42);
    let mut f = Failures::default();
    // Uneven bins overlap (5 → 3: 0..2, 1..4, 3..5); more bins than elements repeat them.
    let cases: Vec<(Shape, Vec<usize>)> = vec![
        (bt(&[2, 5]), vec![3]),
        (bt(&[2, 6]), vec![3]),
        (bt(&[1, 3]), vec![4]),
        (bt(&[2, 7]), vec![1]),
        (bt(&[2, 3, 3]), vec![2, 2]),
        (bt(&[1, 5, 4]), vec![3, 3]),
        (bt(&[2, 7, 5]), vec![3, 2]),
        (bt(&[1, 4, 4]), vec![4, 4]),
        (bt(&[2, 5, 5]), vec![1, 1]),
    ];
    for (sx, bins) in &cases {
        for kind in [PoolKind::Max, PoolKind::Avg] {
            let pool = Pool {
                kind,
                windows: Windows::Adaptive { bins: bins.clone() },
            };
            for batch in BATCHES {
                let p = pool_problem(&pool, sx, batch, &mut r);
                f.check(&p, &format!("pool {pool} of {sx} (batch {batch})"));
            }
        }
    }
    f.done("adaptive pooling");
}

/// Batch normalization in training mode as lowered: `BatchNorm(x, BatchStats(x), γ, β)`,
/// whose VJP is the closed form through the statistics, over `[N, C]` and `[N, C, S..]`.
#[test]
fn batchnorm_closed_form_through_the_batch_statistics() {
    let mut r = rng(48);
    let mut f = Failures::default();
    for sx in [bt(&[3]), bt(&[2, 4]), bt(&[2, 3, 3]), bt(&[1, 2, 5])] {
        for eps in [1e-5, 0.1] {
            for batch in BATCHES {
                let mut p = Problem::new(batch);
                let c = sx.fixed(1).expect("fixed channels");
                let vx = uniform(&mut r, &p.dims(&sx), -1.5, 1.5);
                let x = p.param("x", &sx, vx, true);
                let gamma = p.param(
                    "gamma",
                    &fx(&[c]),
                    away(&mut r, &[c as usize], 0.3, 1.5),
                    true,
                );
                let beta = p.param(
                    "beta",
                    &fx(&[c]),
                    uniform(&mut r, &[c as usize], -1.0, 1.0),
                    true,
                );
                let mut b = p.builder();
                let stats = b.batch_stats(x);
                let y = b.batchnorm(x, stats, gamma, beta, eps);
                p.weigh(y, &mut r);
                f.check(&p, &format!("batchnorm eps={eps} of {sx} (batch {batch})"));
            }
        }
    }
    f.done("batchnorm");
}

#[test]
fn gather_gradient_with_respect_to_the_table() {
    let mut r = rng(43);
    let mut f = Failures::default();
    // Ids drawn from fewer rows than the table has: ids repeat (their gradients add up)
    // and some rows are never read (zero gradient).
    let cases = [
        (bt(&[6]), 5, 3, 3),
        (bt(&[]), 4, 2, 2),
        (bt(&[2, 3]), 6, 4, 4),
    ];
    for (ids_shape, vocab, dim, used) in cases {
        for batch in BATCHES {
            let mut p = Problem::new(batch);
            let ids_v = labels(&mut r, &p.dims(&ids_shape), used);
            let ids = p.input("ids", &ids_shape, ids_v, DType::Class(vocab));
            let ts = fx(&[vocab, dim]);
            let tv = uniform(&mut r, &p.dims(&ts), -1.0, 1.0);
            let table = p.param("table", &ts, tv, true);
            let y = p.builder().gather(table, ids);
            p.weigh(y, &mut r);
            f.check(
                &p,
                &format!("gather [{vocab}, {dim}] by ids {ids_shape} (batch {batch})"),
            );
        }
    }
    f.done("gather");
    // Repeated ids really accumulate: with ids [0, 0, 2] and objective Σ y, row 0 of
    // the gradient is 2, row 2 is 1, row 1 is 0.
    let mut p = Problem::new(1);
    let s = bt(&[3]);
    let ids = p.input(
        "ids",
        &s,
        array(&[1, 3], vec![0.0, 0.0, 2.0]),
        DType::Class(3),
    );
    let table = p.param(
        "table",
        &fx(&[3, 2]),
        uniform(&mut r, &[3, 2], -1.0, 1.0),
        true,
    );
    let mut b = p.builder();
    let y = b.gather(table, ids);
    let o = b.sum_all(y);
    p.g.objective = Some(o);
    let g = p.analytic().expect("differentiates")[0]
        .clone()
        .expect("the table gets a gradient");
    assert_eq!(
        g.iter().copied().collect::<Vec<f64>>(),
        vec![2.0, 2.0, 0.0, 0.0, 1.0, 1.0]
    );
}

// ---------------------------------------------------------------- losses

/// `loss(pred, y)·R` with a random scalar R (so the loss's upstream gradient is not 1).
fn loss_problem(
    kind: LossKind,
    batch: usize,
    pred: (&Shape, ArrayD<f64>),
    target: (&Shape, ArrayD<f64>),
    r: &mut ChaCha8Rng,
) -> Problem {
    let mut p = Problem::new(batch);
    let x = p.param("pred", pred.0, pred.1, true);
    let t = p.target("y", target.0, target.1);
    let l = p.builder().loss(kind, x, t);
    p.weigh(l, r);
    p
}

/// Shapes of elementwise (regression-style) losses.
fn elementwise_shapes() -> Vec<Shape> {
    vec![bt(&[]), bt(&[3]), bt(&[2, 3]), fx(&[4])]
}

/// Drops the last dim: the shape of class labels for these logits.
fn without_last(s: &Shape) -> Shape {
    Shape::new(s.0[..s.rank() - 1].to_vec())
}

/// Runs `make(pred_dims) -> (pred, target)` for every elementwise shape and batch.
fn elementwise_loss_cases(
    f: &mut Failures,
    r: &mut ChaCha8Rng,
    kind: LossKind,
    what: &str,
    make: impl Fn(&mut ChaCha8Rng, &[usize]) -> (ArrayD<f64>, ArrayD<f64>),
) {
    for s in elementwise_shapes() {
        for batch in BATCHES {
            let dims = interp::dims(&s, batch);
            let (pv, tv) = make(r, &dims);
            let p = loss_problem(kind, batch, (&s, pv), (&s, tv), r);
            f.check(&p, &format!("{kind:?} {what} on {s} (batch {batch})"));
        }
    }
}

#[test]
fn regression_losses() {
    let mut r = rng(13);
    let mut f = Failures::default();
    elementwise_loss_cases(&mut f, &mut r, LossKind::Mae, "", |r, d| {
        let p = uniform(r, d, -2.0, 2.0);
        let t = &p + &away(r, d, 0.05, 1.0);
        (p, t)
    });
    elementwise_loss_cases(&mut f, &mut r, LossKind::Mse, "", |r, d| {
        (uniform(r, d, -2.0, 2.0), uniform(r, d, -2.0, 2.0))
    });
    for delta in [1.0, 0.3] {
        // Alternate elements in the quadratic and the linear region.
        elementwise_loss_cases(
            &mut f,
            &mut r,
            LossKind::Huber(delta),
            "both regions",
            |r, d| {
                let p = uniform(r, d, -2.0, 2.0);
                let n = count(d);
                let off: Vec<f64> = (0..n)
                    .map(|i| {
                        if i % 2 == 0 {
                            away_value(r, 0.05 * delta, 0.9 * delta)
                        } else {
                            away_value(r, 1.1 * delta, 3.0 * delta)
                        }
                    })
                    .collect();
                let t = &p + &array(d, off);
                (p, t)
            },
        );
    }
    f.done("regression losses");
}

#[test]
fn margin_losses_with_signed_targets() {
    let mut r = rng(14);
    let mut f = Failures::default();
    elementwise_loss_cases(&mut f, &mut r, LossKind::Exponential, "±1", |r, d| {
        (uniform(r, d, -1.5, 1.5), signs(r, d))
    });
    // Binary hinge: margins y·x − 1 away from 0, on both sides.
    elementwise_loss_cases(&mut f, &mut r, LossKind::Hinge, "±1", |r, d| {
        let t = signs(r, d);
        let m = away(r, d, 0.1, 1.5);
        let p = &t * &(m + 1.0);
        (p, t)
    });
    f.done("exponential/hinge");
}

/// Logits shapes with their labels' shapes: `[N, K]` with `[N]`, `[N, T, K]` with `[N, T]`.
fn class_shapes(r: &mut ChaCha8Rng) -> Vec<(Shape, usize)> {
    let t = size(r);
    vec![
        (bt(&[2]), 2),
        (bt(&[3]), 3),
        (bt(&[5]), 5),
        (bt(&[t, 3]), 3),
        (fx(&[4, 3]), 3),
    ]
}

#[test]
fn multiclass_hinge_with_labels() {
    let mut r = rng(15);
    let mut f = Failures::default();
    for (s, k) in class_shapes(&mut r) {
        for batch in BATCHES {
            let pd = interp::dims(&s, batch);
            let ls = without_last(&s);
            let y = labels(&mut r, &interp::dims(&ls, batch), k);
            // Resample rows until every margin 1 − x_c + x_j is away from 0.
            let mut rows = Vec::new();
            for &c in y.iter() {
                loop {
                    let row: Vec<f64> = (0..k).map(|_| r.gen_range(-2.0..2.0)).collect();
                    let c = c as usize;
                    if (0..k).all(|j| j == c || (1.0 - row[c] + row[j]).abs() > 0.05) {
                        rows.extend(row);
                        break;
                    }
                }
            }
            let p = loss_problem(
                LossKind::Hinge,
                batch,
                (&s, array(&pd, rows)),
                (&ls, y),
                &mut r,
            );
            f.check(&p, &format!("multi-class hinge on {s} (batch {batch})"));
        }
    }
    f.done("multi-class hinge");
}

/// Random probability rows of `k` over `dims` (rows sum to 1).
fn probabilities(r: &mut ChaCha8Rng, dims: &[usize], k: usize) -> ArrayD<f64> {
    let mut v = Vec::new();
    for _ in 0..count(dims) / k {
        let row: Vec<f64> = (0..k).map(|_| r.gen_range(0.05..1.0)).collect();
        let s: f64 = row.iter().sum();
        v.extend(row.iter().map(|x| x / s));
    }
    array(dims, v)
}

#[test]
fn cross_entropy_labels_and_probabilities_with_smoothing() {
    let mut r = rng(16);
    let mut f = Failures::default();
    for smoothing in [0.0, 0.1] {
        let kind = LossKind::CrossEntropy(smoothing);
        for (s, k) in class_shapes(&mut r) {
            for batch in BATCHES {
                let pd = interp::dims(&s, batch);
                let ls = without_last(&s);
                let y = labels(&mut r, &interp::dims(&ls, batch), k);
                let x = uniform(&mut r, &pd, -3.0, 3.0);
                let p = loss_problem(kind, batch, (&s, x), (&ls, y), &mut r);
                f.check(&p, &format!("{kind:?} labels on {s} (batch {batch})"));
                let q = probabilities(&mut r, &pd, k);
                let x = uniform(&mut r, &pd, -3.0, 3.0);
                let p = loss_problem(kind, batch, (&s, x), (&s, q), &mut r);
                f.check(
                    &p,
                    &format!("{kind:?} probabilities on {s} (batch {batch})"),
                );
            }
        }
    }
    f.done("cross-entropy");
}

#[test]
fn bce_with_binary_soft_and_label_targets() {
    let mut r = rng(17);
    let mut f = Failures::default();
    elementwise_loss_cases(&mut f, &mut r, LossKind::Bce, "0/1", |r, d| {
        (uniform(r, d, -4.0, 4.0), labels(r, d, 2))
    });
    elementwise_loss_cases(&mut f, &mut r, LossKind::Bce, "soft targets", |r, d| {
        (uniform(r, d, -4.0, 4.0), uniform(r, d, 0.0, 1.0))
    });
    // Class labels with 2 classes: logits [N] or [N, 1] with labels [N].
    for batch in BATCHES {
        let ls = bt(&[]);
        for s in [bt(&[]), bt(&[1])] {
            let x = uniform(&mut r, &interp::dims(&s, batch), -4.0, 4.0);
            let y = labels(&mut r, &[batch], 2);
            let p = loss_problem(LossKind::Bce, batch, (&s, x), (&ls, y), &mut r);
            f.check(
                &p,
                &format!("Bce logits {s} with labels {ls} (batch {batch})"),
            );
        }
    }
    f.done("bce");
}

const FOCALS: [LossKind; 4] = [
    LossKind::Focal(2.0, 0.25),
    LossKind::Focal(0.0, 0.5),
    LossKind::Focal(1.5, 0.75),
    LossKind::Focal(3.0, 1.0),
];

#[test]
fn focal_binary_and_multiclass() {
    let mut r = rng(18);
    let mut f = Failures::default();
    for kind in FOCALS {
        elementwise_loss_cases(&mut f, &mut r, kind, "0/1 targets", |r, d| {
            (uniform(r, d, -3.0, 3.0), labels(r, d, 2))
        });
        for (s, k) in class_shapes(&mut r) {
            for batch in BATCHES {
                let pd = interp::dims(&s, batch);
                let ls = without_last(&s);
                let y = labels(&mut r, &interp::dims(&ls, batch), k);
                let x = uniform(&mut r, &pd, -3.0, 3.0);
                let p = loss_problem(kind, batch, (&s, x), (&ls, y), &mut r);
                f.check(&p, &format!("{kind:?} labels on {s} (batch {batch})"));
            }
        }
    }
    f.done("focal");
}

/// The checker accepts `focal(logits, y)` with a float target of the logits' shape
/// (LANGUAGE.md §11: "operands as cross_entropy", i.e. probabilities); the interpreter
/// then computes the elementwise sigmoid focal loss, whose value uses the soft target.
#[test]
fn focal_with_soft_targets() {
    let mut r = rng(19);
    let mut f = Failures::default();
    for kind in FOCALS {
        elementwise_loss_cases(&mut f, &mut r, kind, "soft targets", |r, d| {
            (uniform(r, d, -3.0, 3.0), uniform(r, d, 0.05, 0.95))
        });
    }
    f.done("focal with soft targets");
}

/// Confident predictions (|logit| ≈ 40, where sigmoid and softmax round to exactly 0 or
/// 1 in f64), right and wrong: the gradients stay finite and match finite differences.
#[test]
fn classification_losses_at_saturated_logits() {
    let mut r = rng(23);
    let mut f = Failures::default();
    let kinds = [
        LossKind::CrossEntropy(0.0),
        LossKind::CrossEntropy(0.1),
        LossKind::Bce,
        LossKind::Focal(2.0, 0.25),
        LossKind::Focal(1.0, 0.25),
        LossKind::Focal(0.5, 0.25),
        LossKind::Focal(0.0, 0.25),
    ];
    for kind in kinds {
        for right in [true, false] {
            // Multi-class: the labelled class (or another one) leads by about 40.
            if !matches!(kind, LossKind::Bce) {
                let batch = 3;
                let (s, ls) = (bt(&[3]), bt(&[]));
                let y = labels(&mut r, &[batch], 3);
                let mut x = uniform(&mut r, &[batch, 3], -0.5, 0.5);
                for (i, &c) in y.iter().enumerate() {
                    let lead = if right {
                        c as usize
                    } else {
                        (c as usize + 1) % 3
                    };
                    x[[i, lead]] += 40.0;
                }
                let p = loss_problem(kind, batch, (&s, x), (&ls, y), &mut r);
                f.check(&p, &format!("{kind:?} labels, saturated, right={right}"));
            }
            // Binary (elementwise, 0/1 targets): |x| ≈ 40 with the sign of the target or not.
            if !matches!(kind, LossKind::CrossEntropy(_)) {
                let s = bt(&[2]);
                let t = labels(&mut r, &[3, 2], 2);
                let x = t.mapv(|t| {
                    let sign = if (t > 0.5) == right { 1.0 } else { -1.0 };
                    sign * 40.0
                }) + uniform(&mut r, &[3, 2], -0.5, 0.5);
                let p = loss_problem(kind, 3, (&s, x), (&s, t), &mut r);
                f.check(
                    &p,
                    &format!("{kind:?} 0/1 targets, saturated, right={right}"),
                );
            }
        }
    }
    f.done("saturated classification losses");
}

/// ZeroOne is a metric without gradient: its value on hand examples.
#[test]
fn zero_one_values() {
    let run = |pred: ArrayD<f64>, ps: Shape, y: ArrayD<f64>, ys: Shape, batch| {
        let mut p = Problem::new(batch);
        let x = p.param("pred", &ps, pred, true);
        let t = p.target("y", &ys, y);
        let l = p.builder().loss(LossKind::ZeroOne, x, t);
        p.g.objective = Some(l);
        let v = p.objective(&p.params).expect("runs");
        // The gradient is zero everywhere.
        let g = p.analytic().expect("differentiates");
        if let Some(g) = &g[0] {
            assert!(g.iter().all(|&v| v == 0.0), "zero_one gradient {g:?}");
        }
        v
    };
    // Labels: argmax of each row (the first on ties) against the label.
    let logits = array(
        &[4, 3],
        vec![
            0.1, 2.0, -1.0, // argmax 1, label 1: right
            3.0, 0.0, 1.0, // argmax 0, label 2: wrong
            0.0, 0.5, 0.2, // argmax 1, label 1: right
            1.0, 1.0, 0.0, // tie: argmax 0, label 0: right
        ],
    );
    let y = array(&[4], vec![1.0, 2.0, 1.0, 0.0]);
    let v = run(logits, bt(&[3]), y, bt(&[]), 4);
    assert!(tight(v, 0.25), "zero_one with labels: {v}");
    // Binary: score > 0 against target > 0.5.
    let score = array(&[3], vec![0.5, -0.2, 1.0]);
    let t = array(&[3], vec![1.0, 1.0, 0.0]);
    let v = run(score, bt(&[]), t, bt(&[]), 3);
    assert!(tight(v, 2.0 / 3.0), "binary zero_one: {v}");
}

// ---------------------------------------------------------------- frozen parameters

#[test]
fn frozen_parameters_get_no_gradient() {
    let mut r = rng(20);
    let mut p = Problem::new(3);
    let (sx, sw, sv) = (bt(&[4]), fx(&[4, 2]), fx(&[2]));
    let vx = uniform(&mut r, &p.dims(&sx), -1.0, 1.0);
    let vw = uniform(&mut r, &p.dims(&sw), -1.0, 1.0);
    let vv = uniform(&mut r, &p.dims(&sv), -1.0, 1.0);
    let x = p.param("x", &sx, vx, false);
    let w = p.param("w", &sw, vw, true);
    let v = p.param("v", &sv, vv, false);
    let mut b = p.builder();
    let h = b.matmul(x, w, false, false);
    let y = b.mul(h, v);
    let z = b.map(Func::of(Elem::Tanh), y);
    p.weigh(z, &mut r);
    let mut g = p.g.clone();
    differentiate(&mut g);
    let with: Vec<usize> = g.grads.iter().map(|&(k, _)| k).collect();
    assert_eq!(with, vec![1], "only the trainable `w` gets a gradient");
    let mut f = Failures::default();
    f.check(&p, "tanh((x·w)·v) with x and v frozen");
    f.done("frozen");
    // The training step updates only the trainable parameter.
    let opt = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    };
    let tg = training_graph(&p.g, &opt, None);
    let slots: Vec<Slot> = tg.updates.iter().map(|&(s, _)| s).collect();
    assert!(slots.contains(&Slot::Param(1)));
    assert!(!slots.contains(&Slot::Param(0)) && !slots.contains(&Slot::Param(2)));
    assert_eq!(tg.states.len(), 1, "one momentum buffer, for `w`");
}

// ---------------------------------------------------------------- whole models

fn checked_model(src: &str) -> CheckedModel {
    let mut sources = Sources::new();
    let id = sources.add("test.kiln", None, src.to_string());
    let c = check_file(&mut sources, id, &LintLevels::default());
    let errors: Vec<_> = c
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| (d.code, d.message.clone()))
        .collect();
    let p = c
        .program
        .unwrap_or_else(|| panic!("unexpected errors: {errors:?}"));
    p.models.into_iter().next().expect("one model")
}

/// A lowered model with random inputs, targets (class ids for labels) and parameters
/// (away from 0, for L1).
fn model_problem(src: &str, batch: usize, r: &mut ChaCha8Rng) -> Problem {
    let g = lower_model(&checked_model(src), Mode::Train { seed: SEED });
    assert!(g.objective.is_some(), "the model has a loss");
    let mut p = Problem::new(batch);
    for t in &g.inputs {
        let d = interp::dims(&t.shape, batch);
        p.inputs.push(match t.dtype {
            DType::Class(k) => labels(r, &d, k as usize),
            DType::F32 => uniform(r, &d, -1.5, 1.5),
        });
    }
    for t in &g.targets {
        let d = interp::dims(&t.shape, batch);
        p.targets.push(match t.dtype {
            DType::Class(k) => labels(r, &d, k as usize),
            DType::F32 => uniform(r, &d, -1.0, 1.0),
        });
    }
    for q in &g.params {
        p.params
            .push(away(r, &interp::dims(&q.tensor.shape, batch), 0.05, 0.8));
    }
    p.g = g;
    p
}

/// Checks every trainable parameter of the model at batch 1 and 5.
fn model_gradcheck(f: &mut Failures, name: &str, src: &str, r: &mut ChaCha8Rng) {
    for batch in [1, 5] {
        let p = model_problem(src, batch, r);
        let trainable = p.g.params.iter().filter(|q| q.trainable).count();
        let mut g = p.g.clone();
        differentiate(&mut g);
        if g.grads.len() != trainable {
            f.fail(format!(
                "{name}: {} gradients for {trainable} trainable parameters",
                g.grads.len()
            ));
        }
        f.check(&p, &format!("{name} (batch {batch})"));
    }
}

const CLASSIFIER: &str = "model cls {
  input x: [N, 4]
  target y: class[N] of 3
  h = x |> dense(5) |> relu
  t = h |> dense(4) |> tanh
  s = t |> dense(3) |> sigmoid
  logits = s |> dense(3)
  output probs = softmax(logits)
  loss cross_entropy(logits, y)
}";

const REGRESSION: &str = "model reg {
  input x: [N, 3]
  target y: [N, 2]
  h = x |> dense(4) |> gelu |> dense(3) |> silu
  out = h |> dense(2) |> dense(2, bias: false)
  output out
  loss mse(out, y)
}";

const SEQUENCE: &str = "model seq {
  input x: [N, 5, 3]
  target y: [N, 2]
  h = x |> dense(4) |> tanh
  q = last(h)
  s = h @ q
  m = mean(h, axis: 1)
  f = first(x)
  c = concat(m, f, s, axis: 1)
  out = c |> dense(2)
  output out
  loss mse(out, y)
}";

const MIXED: &str = "model mixed {
  input x: [N, 3]
  input u: [N, 3]
  input z: [N, 4, 3]
  target y: class[N] of 4
  target v: [N, 2]
  layer enc = dense(3)
  a = x |> enc |> softplus
  b = u |> enc |> elu
  e = z |> dense(3) |> leaky_relu(alpha: 0.1)
  w = e @ a
  p = concat(a, b, w, axis: 1)
  logits = p |> dense(4)
  reg = sum(e, axis: 1) |> dense(2)
  output logits
  loss cross_entropy(logits, y, smoothing: 0.1) + 0.5 * huber(reg, v, delta: 0.5)
}";

#[test]
fn whole_models_end_to_end() {
    let mut r = rng(21);
    let mut f = Failures::default();
    model_gradcheck(
        &mut f,
        "classifier (relu, tanh, sigmoid, cross_entropy)",
        CLASSIFIER,
        &mut r,
    );
    model_gradcheck(&mut f, "regression (gelu, silu, mse)", REGRESSION, &mut r);
    model_gradcheck(
        &mut f,
        "sequence (@, concat, mean, first, last)",
        SEQUENCE,
        &mut r,
    );
    model_gradcheck(
        &mut f,
        "mixed (shared layer, weighted losses)",
        MIXED,
        &mut r,
    );
    f.done("whole models");
}

const REGULARIZED: &str = "model reg {
  input x: [N, 3]
  target y: [N, 2]
  h = x |> dense(4) |> tanh
  out = h |> dense(2)
  output out
  loss mse(out, y)
  regularize l1(0.01)
  regularize l2(0.1)
}";

const REGULARIZED_ON: &str = "model reg {
  input x: [N, 3]
  target y: class[N] of 2
  h = x |> dense(4) |> tanh
  out = h |> dense(2) as head
  output out
  loss cross_entropy(out, y)
  regularize l1(0.05) on out
  regularize l2(0.2) on h
}";

#[test]
fn regularizers() {
    let mut r = rng(22);
    let mut f = Failures::default();
    model_gradcheck(&mut f, "l1(0.01) + l2(0.1)", REGULARIZED, &mut r);
    model_gradcheck(&mut f, "l1 on head + l2 on h", REGULARIZED_ON, &mut r);
    f.done("regularizers");
    // The objective is the loss plus λ₁Σ|W| + λ₂ΣW² over the weights (not the biases).
    let p = model_problem(REGULARIZED, 3, &mut r);
    let loss = p.value(p.g.loss.expect("loss"), &p.params).expect("runs")[[]];
    let obj = p.objective(&p.params).expect("runs");
    let mut penalty = 0.0;
    for (q, v) in p.g.params.iter().zip(&p.params) {
        if q.tensor.name.ends_with(".weight") {
            penalty += 0.01 * v.iter().map(|w| w.abs()).sum::<f64>();
            penalty += 0.1 * v.iter().map(|w| w * w).sum::<f64>();
        }
    }
    assert!(
        tight(obj, loss + penalty),
        "objective {obj} vs loss {loss} + penalty {penalty}"
    );
}

// ---------------------------------------------------------------- layers in whole models

/// Checks every trainable parameter of a model lowered in training mode at batch 1, 3
/// and 7, and that the training graph has as many gradients as trainable parameters.
fn layer_model_gradcheck(f: &mut Failures, name: &str, src: &str, r: &mut ChaCha8Rng) {
    for batch in BATCHES {
        let p = model_problem(src, batch, r);
        let trainable = p.g.params.iter().filter(|q| q.trainable).count();
        let mut g = p.g.clone();
        differentiate(&mut g);
        if g.grads.len() != trainable {
            f.fail(format!(
                "{name}: {} gradients for {trainable} trainable parameters",
                g.grads.len()
            ));
        }
        f.check(&p, &format!("{name} (batch {batch})"));
    }
}

/// A model whose hidden features `h` (`[N, F]` after the layers under test) feed
/// `dense(2)` and an mse loss.
fn layer_model(input: &str, layers: &str) -> String {
    format!(
        "model m {{
  input x: {input}
  target y: [N, 2]
  h = x |> {layers}
  out = h |> dense(2)
  output out
  loss mse(out, y)
}}"
    )
}

#[test]
fn convolution_and_pooling_models() {
    let mut r = rng(44);
    let mut f = Failures::default();
    let cases = [
        (
            "[N, 2, 9]",
            "conv1d(3, 3, stride: 2, pad: 1, dilation: 2) |> tanh |> maxpool1d(2, stride: 1) |> avgpool1d(2, pad: 1, count_pad: false) |> flatten",
        ),
        (
            "[N, 2, 6, 5]",
            "conv2d(3, (3, 2), pad: (1, 0), stride: (2, 1)) |> elu |> avgpool2d(2, stride: 1) |> conv2d(2, 1) |> global_maxpool",
        ),
        (
            "[N, 1, 5, 5]",
            "conv2d(2, 2, dilation: 2, bias: false) |> sigmoid |> spp(levels: [1, 2])",
        ),
        (
            "[N, 2, 5]",
            "conv1d(2, 1) |> tanh |> global_avgpool",
        ),
    ];
    for (input, layers) in cases {
        layer_model_gradcheck(&mut f, layers, &layer_model(input, layers), &mut r);
    }
    f.done("convolution and pooling models");
}

#[test]
fn normalization_models_in_training_mode() {
    let mut r = rng(45);
    let mut f = Failures::default();
    let cases = [
        // Batch statistics over [N, C]: the gradient flows through the mean and variance.
        ("[N, 4]", "dense(5) |> batchnorm |> tanh"),
        (
            "[N, 4]",
            "dense(3) |> batchnorm(momentum: 0.3, eps: 0.001) |> dense(3) |> sigmoid",
        ),
        // Over [N, C, H, W]: per channel over the batch and both spatial axes.
        (
            "[N, 2, 4, 4]",
            "conv2d(3, 3, pad: 1) |> batchnorm |> tanh |> global_avgpool",
        ),
        ("[N, 2, 5]", "conv1d(2, 2) |> batchnorm |> flatten"),
        ("[N, 3, 4]", "dense(5) |> layernorm |> tanh |> flatten"),
        ("[N, 4]", "dense(3) |> layernorm(eps: 0.01)"),
        ("[N, 4]", "dense(5) |> prelu"),
        ("[N, 2, 3, 3]", "conv2d(3, 2) |> prelu |> flatten"),
    ];
    for (input, layers) in cases {
        layer_model_gradcheck(&mut f, layers, &layer_model(input, layers), &mut r);
    }
    f.done("normalization models");
}

/// Dropout and rrelu draw their noise from the seed and the step: every evaluation of
/// the objective at step STEP sees the same mask and slopes, so finite differences hold.
#[test]
fn noise_models_with_fixed_seed_and_step() {
    let mut r = rng(46);
    let mut f = Failures::default();
    let cases = [
        ("[N, 5]", "dense(8) |> tanh |> dropout(0.5)"),
        ("[N, 2, 3, 3]", "conv2d(2, 2) |> dropout(0.3) |> flatten"),
        ("[N, 5]", "dense(6) |> rrelu(lower: 0.1, upper: 0.4)"),
        (
            "[N, 5]",
            "dense(6) |> rrelu |> dropout(0.2) |> dense(4) |> rrelu",
        ),
    ];
    for (input, layers) in cases {
        let src = layer_model(input, layers);
        let g = lower_model(&checked_model(&src), Mode::Train { seed: SEED });
        assert!(
            g.nodes.iter().any(|n| matches!(n.op, Op::Noise { .. })),
            "{layers}: the training graph draws noise"
        );
        layer_model_gradcheck(&mut f, layers, &src, &mut r);
    }
    f.done("noise models");
}

#[test]
fn embedding_models_trainable_and_frozen() {
    let mut r = rng(47);
    let mut f = Failures::default();
    let trainable = "model m {
  input ids: class[N, 4] of 6
  target y: [N, 2]
  e = ids |> embedding(6, 3) |> tanh |> flatten
  out = e |> dense(2)
  output out
  loss mse(out, y)
}";
    let frozen = "model m {
  input ids: class[N, 3] of 5
  input x: [N, 3, 2]
  target y: [N, 2]
  a = ids |> embedding(5, 2, frozen: true)
  b = ids |> embedding(5, 2)
  c = concat(a, b, x, axis: 2) |> dense(3) |> tanh |> flatten
  out = c |> dense(2)
  output out
  loss mse(out, y)
}";
    layer_model_gradcheck(&mut f, "embedding", trainable, &mut r);
    layer_model_gradcheck(&mut f, "frozen and trainable embeddings", frozen, &mut r);
    f.done("embedding models");
    // The frozen table gets no gradient (and no optimizer update); the other one does.
    let g = lower_model(&checked_model(frozen), Mode::Train { seed: SEED });
    let idx = |name: &str| {
        g.params
            .iter()
            .position(|q| q.tensor.name == name)
            .unwrap_or_else(|| panic!("no parameter `{name}`"))
    };
    let (a, b) = (idx("a.embedding.weight"), idx("b.embedding.weight"));
    assert!(!g.params[a].trainable && g.params[b].trainable);
    let opt = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    };
    let tg = training_graph(&g, &opt, None);
    assert!(
        tg.grads.iter().all(|&(k, _)| k != a),
        "frozen table has a gradient"
    );
    assert!(tg.grads.iter().any(|&(k, _)| k == b));
    assert!(!tg.updates.iter().any(|&(s, _)| s == Slot::Param(a)));
    assert!(tg.updates.iter().any(|&(s, _)| s == Slot::Param(b)));
}

#[test]
fn recurrent_models_every_cell_and_direction() {
    let mut r = rng(48);
    let mut f = Failures::default();
    let cases = [
        ("[N, 4, 3]", "rnn(3) |> flatten"),
        (
            "[N, 3, 2]",
            "rnn(3, activation: relu, bidirectional: true, sequence: false)",
        ),
        ("[N, 3, 3]", "lstm(3) |> last"),
        ("[N, 4, 2]", "lstm(2, sequence: false)"),
        ("[N, 3, 2]", "lstm(2, bidirectional: true) |> flatten"),
        ("[N, 3, 3]", "lstm(2, bidirectional: true, sequence: false)"),
        ("[N, 4, 3]", "gru(3) |> flatten"),
        ("[N, 3, 2]", "gru(3, sequence: false)"),
        ("[N, 3, 3]", "gru(2, bidirectional: true) |> first"),
        ("[N, 4, 2]", "gru(2, bidirectional: true, sequence: false)"),
    ];
    for (input, layers) in cases {
        layer_model_gradcheck(&mut f, layers, &layer_model(input, layers), &mut r);
    }
    f.done("recurrent models");
}

/// A sequence of one step: the state before it is zero, so `weight_hh`'s gradient is zero
/// — but it is a trainable parameter like any other, and PyTorch gives it a (zero)
/// gradient, so weight decay and the optimizer state apply to it as to the others.
#[test]
fn recurrent_models_of_one_time_step() {
    let mut r = rng(49);
    let mut f = Failures::default();
    let cases = [
        ("[N, 1, 3]", "rnn(2) |> flatten"),
        ("[N, 1, 3]", "lstm(2, bidirectional: true, sequence: false)"),
        ("[N, 1, 3]", "gru(2, bidirectional: true) |> flatten"),
    ];
    for (input, layers) in cases {
        layer_model_gradcheck(&mut f, layers, &layer_model(input, layers), &mut r);
    }
    f.done("recurrent models of one step");
}

/// The fused recurrence on its own, its three arguments trainable, the objective weighing
/// every block of the reserve (state, previous state, cell state, gates): the VJP of the
/// whole reserve, not only of the states a layer reads.
#[test]
fn recurrence_op_every_cell_direction_and_length() {
    let mut r = rng(50);
    let mut f = Failures::default();
    let hidden = 2;
    for cell in [Cell::RnnTanh, Cell::RnnRelu, Cell::Lstm, Cell::Gru] {
        for reverse in [false, true] {
            for t in [1, 3] {
                for batch in [1, 3] {
                    let rec = Recurrence {
                        cell,
                        hidden,
                        reverse,
                    };
                    let gh = (cell.gates() * hidden) as u64;
                    let mut p = Problem::new(batch);
                    let sx = bt(&[t, gh]);
                    let xv = uniform(&mut r, &p.dims(&sx), -1.5, 1.5);
                    let xw = p.param("xw", &sx, xv, true);
                    let sw = fx(&[gh, hidden as u64]);
                    let w = p.param("w_hh", &sw, uniform(&mut r, &p.dims(&sw), -0.8, 0.8), true);
                    let sb = fx(&[gh]);
                    let bias = p.param("b_hh", &sb, uniform(&mut r, &p.dims(&sb), -0.5, 0.5), true);
                    let y = p.builder().recurrence(rec, xw, w, bias);
                    p.weigh(y, &mut r);
                    f.check(
                        &p,
                        &format!("recurrence {rec} over {t} steps (batch {batch})"),
                    );
                }
            }
        }
    }
    f.done("recurrence");
}

/// The reserve's layout: each step's `h_prev` block is the `h` block of the step run
/// before it (zero at the first), and the layer's states are its `h` blocks.
#[test]
fn recurrence_reserve_chains_the_states() {
    let mut r = rng(51);
    let (t, hidden) = (4usize, 3usize);
    for cell in [Cell::RnnTanh, Cell::RnnRelu, Cell::Lstm, Cell::Gru] {
        for reverse in [false, true] {
            let rec = Recurrence {
                cell,
                hidden,
                reverse,
            };
            let gh = (cell.gates() * hidden) as u64;
            let mut p = Problem::new(2);
            let sx = bt(&[t as u64, gh]);
            let xv = uniform(&mut r, &p.dims(&sx), -1.5, 1.5);
            let xw = p.param("xw", &sx, xv, true);
            let sw = fx(&[gh, hidden as u64]);
            let w = p.param("w_hh", &sw, uniform(&mut r, &p.dims(&sw), -0.8, 0.8), true);
            let sb = fx(&[gh]);
            let bias = p.param("b_hh", &sb, uniform(&mut r, &p.dims(&sb), -0.5, 0.5), true);
            let y = p.builder().recurrence(rec, xw, w, bias);
            let v = p.value(y, &p.params).expect("runs");
            let rw = cell.reserve() * hidden;
            assert_eq!(v.shape(), &[2, t, rw], "{rec}");
            for b in 0..2 {
                for step in 0..t {
                    let before = if reverse {
                        step + 1
                    } else {
                        step.wrapping_sub(1)
                    };
                    for k in 0..hidden {
                        let hp = v[[b, step, hidden + k]];
                        let want = if before < t { v[[b, before, k]] } else { 0.0 };
                        assert_eq!(hp, want, "{rec}: h_prev of step {step}, row {b}");
                        if cell != Cell::RnnRelu {
                            assert!(v[[b, step, k]].abs() > 0.0, "{rec}: a state is exactly 0");
                        }
                    }
                }
            }
        }
    }
}

/// Layer models that lower to the fused recurrence in the combinations the other cases
/// leave out (relu sequences in both directions, single steps of every cell, odd
/// batches); and the lowering itself: one recurrence per direction whatever T, and one
/// VJP of it per direction in the training graph.
#[test]
fn recurrent_models_fused_one_op_per_direction() {
    let mut r = rng(52);
    let mut f = Failures::default();
    let cases = [
        (
            "[N, 3, 2]",
            "rnn(2, activation: relu, bidirectional: true) |> flatten",
            2,
        ),
        (
            "[N, 3, 3]",
            "rnn(3, bidirectional: true, sequence: false)",
            2,
        ),
        ("[N, 1, 3]", "rnn(2, activation: relu, sequence: false)", 1),
        ("[N, 1, 2]", "lstm(3) |> flatten", 1),
        ("[N, 1, 2]", "gru(3, sequence: false)", 1),
        (
            "[N, 3, 2]",
            "gru(2, bidirectional: true, sequence: false)",
            2,
        ),
    ];
    for (input, layers, dirs) in cases {
        let src = layer_model(input, layers);
        layer_model_gradcheck(&mut f, layers, &src, &mut r);
        let g = lower_model(&checked_model(&src), Mode::Train { seed: SEED });
        let count = |g: &Graph, grad: bool| {
            g.nodes
                .iter()
                .filter(|n| match n.op {
                    Op::Recurrence(_) => !grad,
                    Op::RecurrenceGrad(_) => grad,
                    _ => false,
                })
                .count()
        };
        assert_eq!(count(&g, false), dirs, "{layers}: recurrences");
        let mut tg = g.clone();
        differentiate(&mut tg);
        assert_eq!(count(&tg, true), dirs, "{layers}: recurrence VJPs");
        // The graph does not grow with the sequence: 3 steps or 40, the same nodes (one
        // step needs no time slice for the last state).
        if !input.contains(", 3, ") {
            continue;
        }
        let long = layer_model(&input.replace(", 3, ", ", 40, "), layers);
        let gl = lower_model(&checked_model(&long), Mode::Train { seed: SEED });
        assert_eq!(
            gl.nodes.len(),
            g.nodes.len(),
            "{layers}: nodes for 40 steps"
        );
    }
    f.done("fused recurrent models");
}

// ---------------------------------------------------------------- optimizer steps

/// The hyperparameters of a step, as `Env::hyper` wants them.
#[derive(Clone, Copy)]
struct Hp {
    lr: f64,
    momentum: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    wd: f64,
    alpha: f64,
    clip: f64,
}

const HP: Hp = Hp {
    lr: 0.1,
    momentum: 0.9,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    wd: 0.0,
    alpha: 0.99,
    clip: 1.0,
};

impl Hp {
    /// The map for step `t` (1-based): bias corrections 1 − βᵗ.
    fn map(&self, t: i32) -> HashMap<Hyper, f64> {
        HashMap::from([
            (Hyper::Lr, self.lr),
            (Hyper::Momentum, self.momentum),
            (Hyper::Beta1, self.beta1),
            (Hyper::Beta2, self.beta2),
            (Hyper::Bias1, 1.0 - self.beta1.powi(t)),
            (Hyper::Bias2, 1.0 - self.beta2.powi(t)),
            (Hyper::Eps, self.eps),
            (Hyper::WeightDecay, self.wd),
            (Hyper::Alpha, self.alpha),
            (Hyper::Clip, self.clip),
        ])
    }
}

/// A linear model `out = x·W (+ b)` with mse: its data and the hand gradient.
struct Linear {
    g: Graph,
    x: ArrayD<f64>,
    y: ArrayD<f64>,
    params: Vec<ArrayD<f64>>,
    batch: usize,
}

impl Linear {
    fn new(features: usize, bias: bool, r: &mut ChaCha8Rng) -> Self {
        let src = format!(
            "model lin {{
               input x: [N, {features}]
               target y: [N, 1]
               out = x |> dense(1, bias: {bias})
               output out
               loss mse(out, y)
             }}"
        );
        let g = lower_model(&checked_model(&src), Mode::Train { seed: SEED });
        let batch = 3;
        let x = uniform(r, &[batch, features], -1.0, 1.0);
        let y = uniform(r, &[batch, 1], -1.0, 1.0);
        let mut params = vec![uniform(r, &[features, 1], -1.0, 1.0)];
        if bias {
            params.push(uniform(r, &[1], -0.5, 0.5));
        }
        assert_eq!(g.params.len(), params.len());
        Linear {
            g,
            x,
            y,
            params,
            batch,
        }
    }

    /// ∂ mean((x·W + b − y)²) by hand: 2/N Σ rᵢ xᵢ and 2/N Σ rᵢ, flattened per parameter.
    fn hand_grad(&self, params: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let (n, f) = (self.x.shape()[0], self.x.shape()[1]);
        let w = &params[0];
        let b = params.get(1).map_or(0.0, |b| b[0]);
        let mut gw = vec![0.0; f];
        let mut gb = 0.0;
        for i in 0..n {
            let out: f64 = (0..f).map(|j| self.x[[i, j]] * w[j]).sum::<f64>() + b;
            let res = out - self.y[[i, 0]];
            for (j, g) in gw.iter_mut().enumerate() {
                *g += 2.0 * res * self.x[[i, j]] / n as f64;
            }
            gb += 2.0 * res / n as f64;
        }
        let mut out = vec![gw];
        if params.len() > 1 {
            out.push(vec![gb]);
        }
        out
    }

    /// Runs `steps` training steps through the interpreter; returns the parameters after
    /// each step, flattened.
    fn run(&self, opt: &Optimizer, clip: Option<Clip>, hp: Hp, steps: i32) -> Vec<Vec<Vec<f64>>> {
        let tg = training_graph(&self.g, opt, clip);
        let mut params = self.params.clone();
        let mut states: Vec<ArrayD<f64>> = tg
            .states
            .iter()
            .map(|s| ArrayD::zeros(IxDyn(&interp::dims(&s.shape, self.batch))))
            .collect();
        let mut history = Vec::new();
        for t in 1..=steps {
            let hyper = hp.map(t);
            let env = Env {
                inputs: std::slice::from_ref(&self.x),
                targets: std::slice::from_ref(&self.y),
                params: &params,
                states: &states,
                hyper: &hyper,
                batch: self.batch,
            };
            let vals = interp::run::<f64>(&tg, &env, &tg.step_roots()).expect("step runs");
            let (mut p2, mut s2) = (params.clone(), states.clone());
            for &(slot, n) in &tg.updates {
                let v = vals[n].clone().expect("update value");
                match slot {
                    Slot::Param(k) => p2[k] = v,
                    Slot::State(k) => s2[k] = v,
                }
            }
            params = p2;
            states = s2;
            history.push(params.iter().map(|a| a.iter().copied().collect()).collect());
        }
        history
    }

    fn flat_params(&self) -> Vec<Vec<f64>> {
        self.params
            .iter()
            .map(|a| a.iter().copied().collect())
            .collect()
    }
}

fn assert_params(what: &str, got: &[Vec<Vec<f64>>], want: &[Vec<Vec<f64>>]) {
    assert_eq!(got.len(), want.len(), "{what}: step count");
    for (t, (g, w)) in got.iter().zip(want).enumerate() {
        for (k, (gp, wp)) in g.iter().zip(w).enumerate() {
            for (i, (a, b)) in gp.iter().zip(wp).enumerate() {
                assert!(
                    tight(*a, *b),
                    "{what}: step {}, parameter {k}[{i}]: kiln {a} vs hand {b}\nkiln {g:?}\nhand {w:?}",
                    t + 1
                );
            }
        }
    }
}

/// Gradient clipping as torch.nn.utils: by the global norm (with 1e-6) or by value.
fn hand_clip(grads: &mut [Vec<f64>], clip: Option<Clip>, c: f64) {
    match clip {
        None => {}
        Some(Clip::Norm(_)) => {
            let norm = grads.iter().flatten().map(|g| g * g).sum::<f64>().sqrt();
            let scale = (c / (norm + 1e-6)).min(1.0);
            grads.iter_mut().flatten().for_each(|g| *g *= scale);
        }
        Some(Clip::Value(_)) => grads.iter_mut().flatten().for_each(|g| *g = g.clamp(-c, c)),
    }
}

/// torch.optim.SGD (dampening 0): d = g + wd·w; buf = d at step 1, else μ·buf + d;
/// nesterov: d + μ·buf, else buf; w ← w − lr·that.
fn hand_sgd(
    m: &Linear,
    hp: Hp,
    momentum: bool,
    nesterov: bool,
    clip: Option<Clip>,
    steps: i32,
) -> Vec<Vec<Vec<f64>>> {
    let mut w = m.flat_params();
    let mut buf: Option<Vec<Vec<f64>>> = None;
    let mut history = Vec::new();
    for _ in 0..steps {
        let mut g = m.hand_grad(&w);
        hand_clip(&mut g, clip, hp.clip);
        let d: Vec<Vec<f64>> = g
            .iter()
            .zip(&w)
            .map(|(g, w)| g.iter().zip(w).map(|(g, w)| g + hp.wd * w).collect())
            .collect();
        let step = if momentum {
            let b: Vec<Vec<f64>> = match &buf {
                None => d.clone(),
                Some(b) => b
                    .iter()
                    .zip(&d)
                    .map(|(b, d)| b.iter().zip(d).map(|(b, d)| hp.momentum * b + d).collect())
                    .collect(),
            };
            buf = Some(b.clone());
            if nesterov {
                d.iter()
                    .zip(&b)
                    .map(|(d, b)| d.iter().zip(b).map(|(d, b)| d + hp.momentum * b).collect())
                    .collect()
            } else {
                b
            }
        } else {
            d
        };
        for (w, s) in w.iter_mut().zip(&step) {
            for (w, s) in w.iter_mut().zip(s) {
                *w -= hp.lr * s;
            }
        }
        history.push(w.clone());
    }
    history
}

/// torch.optim.Adam / AdamW, single tensor: AdamW first shrinks w by (1 − lr·wd), Adam
/// adds wd·w to the gradient; m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g²;
/// w ← w − (lr / (1 − β₁ᵗ))·m / (√v / √(1 − β₂ᵗ) + ε).
fn hand_adam(m: &Linear, hp: Hp, decoupled: bool, steps: i32) -> Vec<Vec<Vec<f64>>> {
    let mut w = m.flat_params();
    let mut mom: Vec<Vec<f64>> = w.iter().map(|p| vec![0.0; p.len()]).collect();
    let mut vel = mom.clone();
    let mut history = Vec::new();
    for t in 1..=steps {
        let g = m.hand_grad(&w);
        let bc1 = 1.0 - hp.beta1.powi(t);
        let bc2 = 1.0 - hp.beta2.powi(t);
        for k in 0..w.len() {
            for i in 0..w[k].len() {
                let mut grad = g[k][i];
                if decoupled {
                    w[k][i] *= 1.0 - hp.lr * hp.wd;
                } else {
                    grad += hp.wd * w[k][i];
                }
                mom[k][i] = hp.beta1 * mom[k][i] + (1.0 - hp.beta1) * grad;
                vel[k][i] = hp.beta2 * vel[k][i] + (1.0 - hp.beta2) * grad * grad;
                let step_size = hp.lr / bc1;
                let denom = vel[k][i].sqrt() / bc2.sqrt() + hp.eps;
                w[k][i] -= step_size * mom[k][i] / denom;
            }
        }
        history.push(w.clone());
    }
    history
}

/// torch.optim.RMSprop: s ← αs + (1−α)g²; a = √s + ε; with momentum buf ← μ·buf + g/a and
/// w ← w − lr·buf, else w ← w − lr·g/a.
fn hand_rmsprop(m: &Linear, hp: Hp, momentum: bool, steps: i32) -> Vec<Vec<Vec<f64>>> {
    let mut w = m.flat_params();
    let mut sq: Vec<Vec<f64>> = w.iter().map(|p| vec![0.0; p.len()]).collect();
    let mut buf = sq.clone();
    let mut history = Vec::new();
    for _ in 0..steps {
        let g = m.hand_grad(&w);
        for k in 0..w.len() {
            for i in 0..w[k].len() {
                sq[k][i] = hp.alpha * sq[k][i] + (1.0 - hp.alpha) * g[k][i] * g[k][i];
                let avg = sq[k][i].sqrt() + hp.eps;
                if momentum {
                    buf[k][i] = hp.momentum * buf[k][i] + g[k][i] / avg;
                    w[k][i] -= hp.lr * buf[k][i];
                } else {
                    w[k][i] -= hp.lr * g[k][i] / avg;
                }
            }
        }
        history.push(w.clone());
    }
    history
}

#[test]
fn linear_model_gradient_matches_the_hand_formula() {
    let mut r = rng(30);
    let m = Linear::new(2, true, &mut r);
    let mut g = m.g.clone();
    differentiate(&mut g);
    let hyper = HashMap::new();
    let roots: Vec<NodeId> = g.grads.iter().map(|&(_, n)| n).collect();
    let env = Env {
        inputs: std::slice::from_ref(&m.x),
        targets: std::slice::from_ref(&m.y),
        params: &m.params,
        states: &[],
        hyper: &hyper,
        batch: m.batch,
    };
    let vals = interp::run::<f64>(&g, &env, &roots).expect("runs");
    let hand = m.hand_grad(&m.flat_params());
    for &(k, n) in &g.grads {
        let got: Vec<f64> = vals[n].as_ref().expect("grad").iter().copied().collect();
        for (a, b) in got.iter().zip(&hand[k]) {
            assert!(tight(*a, *b), "param {k}: {got:?} vs {:?}", hand[k]);
        }
    }
}

#[test]
fn sgd_with_momentum_two_steps() {
    let mut r = rng(31);
    let m = Linear::new(1, false, &mut r);
    let opt = Optimizer::Sgd {
        lr: HP.lr,
        momentum: HP.momentum,
        nesterov: false,
        weight_decay: 0.0,
    };
    let got = m.run(&opt, None, HP, 2);
    assert_params(
        "sgd momentum 0.9",
        &got,
        &hand_sgd(&m, HP, true, false, None, 2),
    );
}

#[test]
fn sgd_plain_nesterov_and_weight_decay() {
    let mut r = rng(32);
    let m = Linear::new(2, true, &mut r);
    let hp = Hp { wd: 0.05, ..HP };
    let plain = Optimizer::Sgd {
        lr: hp.lr,
        momentum: 0.0,
        nesterov: false,
        weight_decay: hp.wd,
    };
    let got = m.run(&plain, None, hp, 2);
    assert_params(
        "sgd, weight decay",
        &got,
        &hand_sgd(&m, hp, false, false, None, 2),
    );
    let nesterov = Optimizer::Sgd {
        lr: hp.lr,
        momentum: hp.momentum,
        nesterov: true,
        weight_decay: hp.wd,
    };
    let got = m.run(&nesterov, None, hp, 3);
    assert_params("sgd nesterov", &got, &hand_sgd(&m, hp, true, true, None, 3));
}

#[test]
fn adam_bias_corrected_steps() {
    let mut r = rng(33);
    let m = Linear::new(2, true, &mut r);
    let hp = Hp { lr: 0.01, ..HP };
    let adam = |wd| Optimizer::Adam {
        lr: hp.lr,
        beta1: hp.beta1,
        beta2: hp.beta2,
        eps: hp.eps,
        weight_decay: wd,
        decoupled: false,
    };
    let got = m.run(&adam(0.0), None, hp, 1);
    // Step 1 by hand: m̂ = g and v̂ = g², so each weight moves by lr·g/(|g| + ε).
    let g = m.hand_grad(&m.flat_params());
    let one: Vec<Vec<f64>> = m
        .flat_params()
        .iter()
        .zip(&g)
        .map(|(w, g)| {
            w.iter()
                .zip(g)
                .map(|(w, g)| w - hp.lr * g / (g.abs() + hp.eps))
                .collect()
        })
        .collect();
    assert_params("adam step 1 (closed form)", &got, &[one]);
    assert_params("adam step 1", &got, &hand_adam(&m, hp, false, 1));
    let got = m.run(&adam(0.0), None, hp, 3);
    assert_params("adam 3 steps", &got, &hand_adam(&m, hp, false, 3));
    let hp = Hp { wd: 0.1, ..hp };
    let got = m.run(&adam(hp.wd), None, hp, 2);
    assert_params(
        "adam, coupled weight decay",
        &got,
        &hand_adam(&m, hp, false, 2),
    );
}

#[test]
fn adamw_decoupled_weight_decay() {
    let mut r = rng(34);
    let m = Linear::new(2, true, &mut r);
    let hp = Hp {
        lr: 0.01,
        wd: 0.01,
        ..HP
    };
    let opt = Optimizer::Adam {
        lr: hp.lr,
        beta1: hp.beta1,
        beta2: hp.beta2,
        eps: hp.eps,
        weight_decay: hp.wd,
        decoupled: true,
    };
    let got = m.run(&opt, None, hp, 1);
    assert_params("adamw step 1", &got, &hand_adam(&m, hp, true, 1));
    let hp = Hp { wd: 0.5, ..hp };
    let got = m.run(&opt, None, hp, 3);
    assert_params("adamw 3 steps, wd 0.5", &got, &hand_adam(&m, hp, true, 3));
}

#[test]
fn rmsprop_with_and_without_momentum() {
    let mut r = rng(35);
    let m = Linear::new(2, true, &mut r);
    let hp = Hp { lr: 0.01, ..HP };
    for momentum in [false, true] {
        let opt = Optimizer::Rmsprop {
            lr: hp.lr,
            alpha: hp.alpha,
            eps: hp.eps,
            momentum: if momentum { hp.momentum } else { 0.0 },
        };
        let got = m.run(&opt, None, hp, 2);
        assert_params(
            &format!("rmsprop momentum={momentum}"),
            &got,
            &hand_rmsprop(&m, hp, momentum, 2),
        );
    }
}

#[test]
fn clipping_by_norm_and_by_value() {
    let mut r = rng(36);
    let m = Linear::new(3, true, &mut r);
    let g = m.hand_grad(&m.flat_params());
    let norm = g.iter().flatten().map(|v| v * v).sum::<f64>().sqrt();
    let largest = g.iter().flatten().fold(0.0f64, |a, v| a.max(v.abs()));
    let sgd = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    };
    // By norm: a threshold below the norm rescales, one above leaves the gradient alone.
    for c in [norm / 3.0, norm * 2.0] {
        let clip = Some(Clip::Norm(c));
        let hp = Hp { clip: c, ..HP };
        let got = m.run(&sgd, clip, hp, 2);
        assert_params(
            &format!("clip norm {c} (norm {norm})"),
            &got,
            &hand_sgd(&m, hp, false, false, clip, 2),
        );
    }
    // By value: a threshold that clamps some elements and not others.
    let c = largest / 2.0;
    assert!(g.iter().flatten().any(|v| v.abs() < c), "{g:?}");
    let clip = Some(Clip::Value(c));
    let hp = Hp { clip: c, ..HP };
    let got = m.run(&sgd, clip, hp, 2);
    assert_params(
        &format!("clip value {c}"),
        &got,
        &hand_sgd(&m, hp, false, false, clip, 2),
    );
    // Clipping composes with momentum.
    let mom = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    };
    let clip = Some(Clip::Norm(norm / 4.0));
    let hp = Hp {
        clip: norm / 4.0,
        ..HP
    };
    let got = m.run(&mom, clip, hp, 2);
    assert_params(
        "clip norm with momentum",
        &got,
        &hand_sgd(&m, hp, true, false, clip, 2),
    );
}
