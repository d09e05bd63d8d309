//! The vector-Jacobian product of every differentiable operation, in one table: given a
//! node and the gradient `g` of the objective with respect to its result, the gradients
//! with respect to its arguments (None where an argument gets none, e.g. targets).

use crate::ir::build::{reduced, Builder};
use crate::ir::{Binary, Dim, Func, NodeId, Op, Reduce, Shape};
use crate::ops::Elem;

/// The VJP of node `n` for upstream gradient `g`. Panics only on operations that never
/// appear in a forward graph (gradient operations themselves): an internal error.
pub fn vjp(b: &mut Builder, n: NodeId, g: NodeId) -> Vec<Option<NodeId>> {
    let node = b.g.nodes[n].clone();
    let a = &node.args;
    let shape_of = |b: &Builder, i: usize| b.shape(a[i]).clone();
    match &node.op {
        Op::Input(_)
        | Op::Target(_)
        | Op::Param(_)
        | Op::State(_)
        | Op::Hyper(_)
        | Op::BatchSize
        | Op::Const(_) => vec![],
        Op::Map(f) => vec![Some(match f {
            f if f.elem == Elem::Neg => b.map(*f, g),
            _ => b.map_grad(*f, a[0], g),
        })],
        Op::Binary(op) => {
            let (sa, sb) = (shape_of(b, 0), shape_of(b, 1));
            let (da, db) = match op {
                Binary::Add => (g, g),
                Binary::Sub => (g, b.map(Func::of(Elem::Neg), g)),
                Binary::Mul => (b.mul(g, a[1]), b.mul(g, a[0])),
                Binary::Div => {
                    // d(a/b)/db = −(a/b)/b
                    let da = b.div(g, a[1]);
                    let q = b.div(da, a[1]);
                    let t = b.mul(q, a[0]);
                    (da, b.map(Func::of(Elem::Neg), t))
                }
                Binary::Max | Binary::Min => {
                    // The gradient goes to the argument that was chosen (to both on ties).
                    let ma = b.binary(Binary::Eq, a[0], n);
                    let mb = b.binary(Binary::Eq, a[1], n);
                    (b.mul(g, ma), b.mul(g, mb))
                }
                Binary::Eq => return vec![None, None],
            };
            vec![Some(b.sum_to(da, sa)), Some(b.sum_to(db, sb))]
        }
        Op::MatMul { ta, tb } => {
            let (da, db) = match (ta, tb) {
                (false, false) => (
                    b.matmul(g, a[1], false, true),
                    b.matmul(a[0], g, true, false),
                ),
                (false, true) => (
                    b.matmul(g, a[1], false, false),
                    b.matmul(g, a[0], true, false),
                ),
                (true, false) => (
                    b.matmul(a[1], g, false, true),
                    b.matmul(a[0], g, false, false),
                ),
                (true, true) => (b.matmul(a[1], g, true, true), b.matmul(g, a[0], true, true)),
            };
            let (sa, sb) = (shape_of(b, 0), shape_of(b, 1));
            vec![Some(b.reshape(da, sa)), Some(b.reshape(db, sb))]
        }
        Op::BatchMatMul { ta, tb } => {
            let (da, db) = match (ta, tb) {
                (false, false) => (
                    b.batch_matmul(g, a[1], false, true),
                    b.batch_matmul(a[0], g, true, false),
                ),
                (false, true) => (
                    b.batch_matmul(g, a[1], false, false),
                    b.batch_matmul(g, a[0], true, false),
                ),
                (true, false) => (
                    b.batch_matmul(a[1], g, false, true),
                    b.batch_matmul(a[0], g, false, false),
                ),
                (true, true) => (
                    b.batch_matmul(a[1], g, true, true),
                    b.batch_matmul(g, a[0], true, true),
                ),
            };
            let (sa, sb) = (shape_of(b, 0), shape_of(b, 1));
            vec![Some(b.sum_to(da, sa)), Some(b.sum_to(db, sb))]
        }
        Op::Reshape => {
            let s = shape_of(b, 0);
            vec![Some(b.reshape(g, s))]
        }
        Op::BroadcastTo => {
            let s = shape_of(b, 0);
            vec![Some(b.sum_to(g, s))]
        }
        Op::SumTo => {
            let s = shape_of(b, 0);
            vec![Some(b.broadcast_to(g, s))]
        }
        Op::Reduce {
            kind,
            axes,
            keepdims,
        } => {
            let s = shape_of(b, 0);
            let kept = reduced(&s, axes, true);
            let gk = if *keepdims {
                g
            } else {
                b.reshape(g, kept.clone())
            };
            let gb = b.broadcast_to(gk, s.clone());
            vec![Some(match kind {
                Reduce::Sum => gb,
                Reduce::Mean => {
                    let count = count(b, &s, axes);
                    b.div(gb, count)
                }
                Reduce::Max | Reduce::Min => {
                    // Ties share the gradient equally.
                    let yk = if *keepdims { n } else { b.reshape(n, kept) };
                    let yb = b.broadcast_to(yk, s.clone());
                    let mask = b.binary(Binary::Eq, a[0], yb);
                    let ties = b.reduce(Reduce::Sum, mask, axes.clone(), true);
                    let share = b.div(mask, ties);
                    b.mul(gb, share)
                }
            })]
        }
        Op::Softmax(ax) => vec![Some(b.like(Op::SoftmaxGrad(*ax), vec![n, g], n))],
        Op::LogSoftmax(ax) => vec![Some(b.like(Op::LogSoftmaxGrad(*ax), vec![n, g], n))],
        Op::Concat(axis) => {
            let mut start = 0;
            let mut out = Vec::new();
            for i in 0..a.len() {
                let s = shape_of(b, i);
                let len = s.fixed(*axis).unwrap_or(1) as usize;
                out.push(Some(b.push(
                    Op::Slice {
                        axis: *axis,
                        start,
                        len,
                    },
                    vec![g],
                    s,
                )));
                start += len;
            }
            out
        }
        Op::Slice { axis, start, .. } => {
            let s = shape_of(b, 0);
            vec![Some(b.push(
                Op::SliceGrad {
                    axis: *axis,
                    start: *start,
                },
                vec![g],
                s,
            ))]
        }
        Op::Loss(kind) => vec![
            Some(b.like(Op::LossGrad(*kind), vec![a[0], a[1], g], a[0])),
            None,
        ],
        Op::Conv(geom) => {
            let (sx, sw) = (shape_of(b, 0), shape_of(b, 1));
            let dx = b.push(Op::ConvGradInput(geom.clone()), vec![g, a[1]], sx);
            let dw = b.push(Op::ConvGradWeight(geom.clone()), vec![a[0], g], sw);
            vec![Some(dx), Some(dw)]
        }
        Op::Pool(p) => {
            let s = shape_of(b, 0);
            vec![Some(b.push(Op::PoolGrad(p.clone()), vec![a[0], g], s))]
        }
        Op::Gather => {
            let s = shape_of(b, 0);
            vec![Some(b.push(Op::GatherGrad, vec![a[1], g], s)), None]
        }
        Op::Recurrence(r) => {
            // Backpropagation through time gives the gate pre-activations' gradient; the
            // weights' follow from it by one product and one sum over every step
            // (h_prev is zero at the first step, which then adds nothing).
            let g = h_block(b, g, r.hidden).unwrap_or(g);
            let d = b.recurrence_grad(*r, n, a[1], g);
            let gh = r.cell.gates() * r.hidden;
            let (dxw, dhh) = if r.cell.grad_sides() == 2 {
                (b.slice(d, 2, 0, gh), b.slice(d, 2, gh, gh))
            } else {
                (d, d)
            };
            let h_prev = b.slice(n, 2, r.hidden, r.hidden);
            let dw = b.matmul(dhh, h_prev, true, false);
            let s = shape_of(b, 2);
            vec![Some(dxw), Some(dw), Some(b.sum_to(dhh, s))]
        }
        Op::BatchStats => {
            unreachable!("batch statistics are differentiated with their batchnorm")
        }
        Op::BatchNorm { eps } => {
            // The closed form through the statistics (a[1] = BatchStats(a[0])): one pass
            // for the two sums per channel, one for dx.
            let c = shape_of(b, 2);
            let eps = *eps;
            let stats = b.g.nodes[a[1]].shape.clone();
            let sums = b.push(Op::BatchNormSums { eps }, vec![a[0], a[1], g], stats);
            let dx = b.like(
                Op::BatchNormGrad { eps },
                vec![a[0], a[1], a[2], sums, g],
                a[0],
            );
            let mut row = |k: usize| {
                let r = b.slice(sums, 0, k, 1);
                b.reshape(r, c.clone())
            };
            let (dgamma, dbeta) = (row(0), row(1));
            vec![Some(dx), None, Some(dgamma), Some(dbeta)]
        }
        Op::Noise { .. } => vec![None],
        Op::MapGrad(_)
        | Op::ConvGradInput(_)
        | Op::ConvGradWeight(_)
        | Op::PoolGrad(_)
        | Op::GatherGrad
        | Op::BatchNormSums { .. }
        | Op::BatchNormGrad { .. }
        | Op::RecurrenceGrad(_)
        | Op::SoftmaxGrad(_)
        | Op::LogSoftmaxGrad(_)
        | Op::SliceGrad { .. }
        | Op::LossGrad(_) => {
            unreachable!("gradient operations are not differentiated: {}", node.op)
        }
    }
}

/// The number of elements a reduction over `axes` of `s` averages, as a node (the batch
/// dimension contributes the run-time batch size).
fn count(b: &mut Builder, s: &Shape, axes: &[usize]) -> NodeId {
    let fixed: u64 = axes.iter().filter_map(|&i| s.fixed(i)).product();
    let c = b.constant(fixed as f64);
    if axes.iter().any(|&i| s.0[i] == Dim::Batch) {
        let n = b.batch_size();
        b.mul(c, n)
    } else {
        c
    }
}

/// When gradient `g` of a recurrence's reserve `[N, T, R·H]` only places a gradient of
/// its h block (the states, all the layer's outputs read; the slices' VJPs padded it with
/// zeros): that gradient, `[N, T, H]`, so that the reserve-wide zeros are never written.
/// Slices along other axes are rebuilt around the h block.
fn h_block(b: &mut Builder, g: NodeId, hidden: usize) -> Option<NodeId> {
    let node = b.g.nodes[g].clone();
    let Op::SliceGrad { axis, start } = node.op else {
        return None;
    };
    let inner = node.args[0];
    if axis == 2 {
        return (start == 0 && b.shape(inner).fixed(2) == Some(hidden as u64)).then_some(inner);
    }
    let inner = h_block(b, inner, hidden)?;
    let mut dims = node.shape.0.clone();
    dims[2] = Dim::Fixed(hidden as u64);
    Some(b.push(Op::SliceGrad { axis, start }, vec![inner], Shape::new(dims)))
}
