//! The reference interpreter: runs any IR graph on ndarray. It is the oracle the JIT is
//! tested against, so it is written for clarity: every elementwise function, loss and
//! derivative is computed in f64 from its textbook formula and rounded to the element
//! type once. It runs in f32 for training and in f64 for gradient checks.

mod backend;
pub mod layers;
pub mod loss;
pub mod recurrent;

pub use backend::Interpreter;

use crate::exec::RunError;
use crate::ir::{Dim, Graph, Hyper, NodeId, Op, Reduce, Shape};
use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Slice, Zip};
use std::collections::HashMap;
use std::fmt;

/// Element types the interpreter runs on.
pub trait Real:
    num_traits::Float
    + ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// From f64 (rounding).
    fn of(v: f64) -> Self;
    /// To f64 (exact).
    fn f(self) -> f64;
}

impl Real for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
    fn f(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    fn of(v: f64) -> Self {
        v
    }
    fn f(self) -> f64 {
        self
    }
}

/// What a graph reads: tensors by slot, hyperparameters and the batch size.
pub struct Env<'a, T> {
    /// One array per graph input, `[batch, ...]`.
    pub inputs: &'a [ArrayD<T>],
    /// One array per target.
    pub targets: &'a [ArrayD<T>],
    /// One array per parameter.
    pub params: &'a [ArrayD<T>],
    /// One array per state tensor.
    pub states: &'a [ArrayD<T>],
    /// Hyperparameter values.
    pub hyper: &'a HashMap<Hyper, f64>,
    /// The batch size.
    pub batch: usize,
}

/// The concrete dims of a shape for batch size `n`.
pub fn dims(s: &Shape, n: usize) -> Vec<usize> {
    s.0.iter()
        .map(|d| match d {
            Dim::Batch => n,
            Dim::Fixed(k) => *k as usize,
        })
        .collect()
}

/// Runs the nodes `roots` depend on; returns every computed value by node id.
pub fn run<T: Real>(
    g: &Graph,
    env: &Env<T>,
    roots: &[NodeId],
) -> Result<Vec<Option<ArrayD<T>>>, RunError> {
    check_env(g, env)?;
    let live = g.live(roots);
    let mut vals: Vec<Option<ArrayD<T>>> = vec![None; g.nodes.len()];
    // Free a value after its last use among the live nodes, except the roots.
    let mut last_use = vec![0usize; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        if live[i] {
            for &a in &n.args {
                last_use[a] = i;
            }
        }
    }
    let keep: Vec<bool> = {
        let mut k = vec![false; g.nodes.len()];
        for &r in roots {
            k[r] = true;
        }
        k
    };
    for (i, node) in g.nodes.iter().enumerate() {
        if !live[i] {
            continue;
        }
        let args: Vec<&ArrayD<T>> = node
            .args
            .iter()
            .map(|&a| {
                vals[a]
                    .as_ref()
                    .ok_or_else(|| RunError::bug(format!("node %{a} has no value")))
            })
            .collect::<Result<_, _>>()?;
        let out = dims(&node.shape, env.batch);
        let v = eval(&node.op, &args, &out, env)?;
        if v.shape() != out.as_slice() {
            return Err(RunError::bug(format!(
                "node %{i} ({}) produced shape {:?}, expected {:?}",
                node.op,
                v.shape(),
                out
            )));
        }
        vals[i] = Some(v);
        for &a in &node.args {
            if last_use[a] == i && !keep[a] {
                vals[a] = None;
            }
        }
    }
    Ok(vals)
}

fn check_env<T: Real>(g: &Graph, env: &Env<T>) -> Result<(), RunError> {
    if env.inputs.len() != g.inputs.len() {
        return Err(RunError::input(format!(
            "{} inputs given, the model has {}",
            env.inputs.len(),
            g.inputs.len()
        )));
    }
    let ports = g.inputs.iter().zip(env.inputs).map(|p| ("input", p));
    let targets = g.targets.iter().zip(env.targets).map(|p| ("target", p));
    for (what, (t, a)) in ports.chain(targets) {
        let want = dims(&t.shape, env.batch);
        if a.shape() != want.as_slice() {
            return Err(RunError::input(format!(
                "{what} `{}` has shape {:?}, expected {:?}",
                t.name,
                a.shape(),
                want
            )));
        }
    }
    for (p, a) in g.params.iter().zip(env.params) {
        let want = dims(&p.tensor.shape, env.batch);
        if a.shape() != want.as_slice() {
            return Err(RunError::input(format!(
                "parameter `{}` has shape {:?}, expected {:?}",
                p.tensor.name,
                a.shape(),
                want
            )));
        }
    }
    Ok(())
}

fn get<'a, T>(xs: &'a [ArrayD<T>], k: usize, what: &str) -> Result<&'a ArrayD<T>, RunError> {
    xs.get(k)
        .ok_or_else(|| RunError::input(format!("missing {what} #{k}")))
}

fn scalar<T: Real>(v: f64) -> ArrayD<T> {
    ArrayD::from_elem(IxDyn(&[]), T::of(v))
}

/// The value of one operation on argument values, with output dims `out`.
pub fn eval<T: Real>(
    op: &Op,
    a: &[&ArrayD<T>],
    out: &[usize],
    env: &Env<T>,
) -> Result<ArrayD<T>, RunError> {
    Ok(match op {
        Op::Input(k) => get(env.inputs, *k, "input")?.clone(),
        Op::Target(k) => get(env.targets, *k, "target")?.clone(),
        Op::Param(k) => get(env.params, *k, "parameter")?.clone(),
        Op::State(k) => get(env.states, *k, "state")?.clone(),
        Op::Hyper(h) => scalar(
            *env.hyper
                .get(h)
                .ok_or_else(|| RunError::bug(format!("hyperparameter {h:?} not set")))?,
        ),
        Op::BatchSize => scalar(env.batch as f64),
        Op::Const(c) => scalar(*c),
        Op::Map(f) => a[0].mapv(|x| T::of(f.apply(x.f()))),
        Op::MapGrad(f) => {
            let mut r = a[1].clone();
            Zip::from(&mut r)
                .and(a[0])
                .for_each(|g, &x| *g = T::of(g.f() * f.derivative(x.f())));
            r
        }
        Op::Binary(op) => {
            let (x, y) = (bcast(a[0], out)?, bcast(a[1], out)?);
            let mut r = ArrayD::zeros(IxDyn(out));
            Zip::from(&mut r)
                .and(&x)
                .and(&y)
                .for_each(|r, &x, &y| *r = T::of(binary(*op, x.f(), y.f())));
            r
        }
        Op::MatMul { ta, tb } => {
            let m2 = |x: &ArrayD<T>| -> Result<ndarray::Array2<T>, RunError> {
                let cols = *x.shape().last().unwrap_or(&1);
                let rows = x.len() / cols.max(1);
                x.as_standard_layout()
                    .into_owned()
                    .into_shape_with_order((rows, cols))
                    .map_err(|e| RunError::bug(e.to_string()))
            };
            let (x, y) = (m2(a[0])?, m2(a[1])?);
            let x = if *ta { x.t().to_owned() } else { x };
            let y = if *tb { y.t().to_owned() } else { y };
            if x.ncols() != y.nrows() {
                return Err(RunError::bug(format!(
                    "matmul of {:?} and {:?}",
                    x.shape(),
                    y.shape()
                )));
            }
            reshape(x.dot(&y).into_dyn(), out)?
        }
        Op::BatchMatMul { ta, tb } => {
            let r = out.len();
            let lead: Vec<usize> = out[..r - 2].to_vec();
            let batch: usize = lead.iter().product();
            let stack = |x: &ArrayD<T>| -> Result<ndarray::Array3<T>, RunError> {
                let xr = x.ndim();
                let mut d = lead.clone();
                d.extend_from_slice(&x.shape()[xr - 2..]);
                let b = bcast(x, &d)?;
                let (p, q) = (d[d.len() - 2], d[d.len() - 1]);
                b.into_shape_with_order((batch, p, q))
                    .map_err(|e| RunError::bug(e.to_string()))
            };
            let (x, y) = (stack(a[0])?, stack(a[1])?);
            let mut res = ndarray::Array3::<T>::zeros((batch, out[r - 2], out[r - 1]));
            for i in 0..batch {
                let xi = x.index_axis(Axis(0), i);
                let yi = y.index_axis(Axis(0), i);
                let xi = if *ta { xi.t() } else { xi };
                let yi = if *tb { yi.t() } else { yi };
                res.index_axis_mut(Axis(0), i).assign(&xi.dot(&yi));
            }
            reshape(res.into_dyn(), out)?
        }
        Op::Reshape => reshape(a[0].clone(), out)?,
        Op::BroadcastTo => bcast(a[0], out)?,
        Op::SumTo => sum_to(a[0], out),
        Op::Reduce {
            kind,
            axes,
            keepdims,
        } => reduce(*kind, a[0], axes, *keepdims),
        Op::Softmax(ax) => softmax(a[0], *ax),
        Op::LogSoftmax(ax) => log_softmax(a[0], *ax),
        Op::SoftmaxGrad(ax) => {
            let (y, g) = (a[0], a[1]);
            let gy = g * y;
            let s = gy.sum_axis(Axis(*ax)).insert_axis(Axis(*ax));
            y * &(g - &s)
        }
        Op::LogSoftmaxGrad(ax) => {
            let (y, g) = (a[0], a[1]);
            let s = g.sum_axis(Axis(*ax)).insert_axis(Axis(*ax));
            g - &(y.mapv(|v| T::of(v.f().exp())) * &s)
        }
        Op::Concat(ax) => {
            let views: Vec<ArrayViewD<T>> = a.iter().map(|x| x.view()).collect();
            ndarray::concatenate(Axis(*ax), &views).map_err(|e| RunError::bug(e.to_string()))?
        }
        Op::Slice { axis, start, len } => a[0]
            .slice_axis(Axis(*axis), Slice::from(*start..start + len))
            .to_owned(),
        Op::SliceGrad { axis, start } => {
            let mut r = ArrayD::zeros(IxDyn(out));
            let len = a[0].shape()[*axis];
            r.slice_axis_mut(Axis(*axis), Slice::from(*start..start + len))
                .assign(a[0]);
            r
        }
        Op::Loss(kind) | Op::LossGrad(kind) => {
            let (p, y): (Vec<T>, Vec<T>) = (
                a[0].iter().copied().collect(),
                a[1].iter().copied().collect(),
            );
            let ops = loss::Operands::new(&p, a[0].shape(), &y, a[1].shape());
            if let Op::Loss(_) = op {
                scalar(loss::value(*kind, &ops)?)
            } else {
                let g = a[2].iter().next().map_or(1.0, |v| v.f());
                let mut grad = vec![T::zero(); p.len()];
                loss::gradient(*kind, &ops, g, &mut grad)?;
                ArrayD::from_shape_vec(IxDyn(out), grad)
                    .map_err(|e| RunError::bug(e.to_string()))?
            }
        }
        Op::Conv(geom) => layers::conv(a[0], a[1], out, geom)?,
        Op::ConvGradInput(geom) => layers::conv_grad_input(a[0], a[1], out, geom)?,
        Op::ConvGradWeight(geom) => layers::conv_grad_weight(a[0], a[1], out, geom)?,
        Op::Pool(p) => layers::pool(a[0], out, p)?,
        Op::PoolGrad(p) => layers::pool_grad(a[0], a[1], out, p)?,
        Op::Gather => layers::gather(a[0], a[1], out)?,
        Op::GatherGrad => layers::gather_grad(a[0], a[1], out)?,
        Op::BatchStats => layers::batch_stats(a[0], out)?,
        Op::BatchNorm { eps } => layers::batchnorm([a[0], a[1], a[2], a[3]], *eps, out)?,
        Op::BatchNormSums { eps } => layers::batchnorm_sums([a[0], a[1], a[2]], *eps, out)?,
        Op::BatchNormGrad { eps } => {
            layers::batchnorm_grad([a[0], a[1], a[2], a[3], a[4]], *eps, out)?
        }
        Op::Noise { dist, seed, salt } => layers::noise(*dist, *seed, *salt, a, out)?,
        Op::Recurrence(r) => recurrent::recurrence(a[0], a[1], a[2], out, r)?,
        Op::RecurrenceGrad(r) => recurrent::recurrence_grad(a[0], a[1], a[2], out, r)?,
    })
}

fn reshape<T: Real>(x: ArrayD<T>, out: &[usize]) -> Result<ArrayD<T>, RunError> {
    x.as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(out))
        .map_err(|e| RunError::bug(e.to_string()))
}

fn bcast<T: Real>(x: &ArrayD<T>, out: &[usize]) -> Result<ArrayD<T>, RunError> {
    x.broadcast(IxDyn(out))
        .map(|v| v.to_owned())
        .ok_or_else(|| RunError::bug(format!("cannot broadcast {:?} to {:?}", x.shape(), out)))
}

/// Sums `x` down to `out` (NumPy broadcasting in reverse).
fn sum_to<T: Real>(x: &ArrayD<T>, out: &[usize]) -> ArrayD<T> {
    let mut r = x.clone();
    while r.ndim() > out.len() {
        r = r.sum_axis(Axis(0));
    }
    for (i, &d) in out.iter().enumerate() {
        if d == 1 && r.shape()[i] != 1 {
            r = r.sum_axis(Axis(i)).insert_axis(Axis(i));
        }
    }
    r
}

fn reduce<T: Real>(kind: Reduce, x: &ArrayD<T>, axes: &[usize], keepdims: bool) -> ArrayD<T> {
    let mut r = x.clone();
    let mut count = 1usize;
    for &ax in axes.iter().rev() {
        count *= x.shape()[ax];
        r = match kind {
            Reduce::Sum | Reduce::Mean => r.sum_axis(Axis(ax)),
            Reduce::Max => r.fold_axis(Axis(ax), T::neg_infinity(), |&m, &v| {
                if v > m || v.is_nan() {
                    v
                } else {
                    m
                }
            }),
            Reduce::Min => r.fold_axis(Axis(ax), T::infinity(), |&m, &v| {
                if v < m || v.is_nan() {
                    v
                } else {
                    m
                }
            }),
        };
    }
    if kind == Reduce::Mean {
        r.mapv_inplace(|v| T::of(v.f() / count as f64));
    }
    if keepdims {
        for &ax in axes {
            r = r.insert_axis(Axis(ax));
        }
    }
    r
}

fn softmax<T: Real>(x: &ArrayD<T>, ax: usize) -> ArrayD<T> {
    log_softmax(x, ax).mapv(|v| T::of(v.f().exp()))
}

fn log_softmax<T: Real>(x: &ArrayD<T>, ax: usize) -> ArrayD<T> {
    let mut r = x.clone();
    for mut lane in r.lanes_mut(Axis(ax)) {
        let m = lane.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.f()));
        let lse = m + lane.iter().map(|v| (v.f() - m).exp()).sum::<f64>().ln();
        lane.mapv_inplace(|v| T::of(v.f() - lse));
    }
    r
}

use crate::ops::elementwise::binary;
pub(crate) use crate::ops::elementwise::sigmoid;
