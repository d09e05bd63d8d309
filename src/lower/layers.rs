//! The parameterized layers as IR: dense, convolution, normalization, PReLU, embedding
//! and the recurrent cells (one fused [`Op::Recurrence`] per direction, whose VJP is
//! backpropagation through time).

use super::Mode;
use crate::check::graph::{Cell, LayerKind, PoolKind as CPool, RnnActivation};
use crate::ir::build::Builder;
use crate::ir::op::{self as ir_op, Recurrence};
use crate::ir::{Binary, ConvGeom, Dim, Func, NodeId, Op, Pool, PoolKind, Reduce, Shape, Windows};
use crate::ops::Elem;

/// A layer's output, and the new values of its state parameters (by the layer's own
/// parameter index) that a training step writes back.
pub type Lowered = (NodeId, Vec<(usize, NodeId)>);

/// Lowers one application of a layer to `x` with the layer's parameter nodes `p`.
pub fn layer(b: &mut Builder, kind: &LayerKind, x: NodeId, p: &[NodeId], mode: Mode) -> Lowered {
    match kind {
        LayerKind::Dense { bias, .. } => {
            let y = b.matmul(x, p[0], false, false);
            (if *bias { b.add(y, p[1]) } else { y }, vec![])
        }
        LayerKind::Conv {
            stride,
            pad,
            dilation,
            bias,
            ..
        } => {
            let usizes = |v: &[u64]| v.iter().map(|&d| d as usize).collect();
            let geom = ConvGeom {
                stride: usizes(stride),
                pad: usizes(pad),
                dilation: usizes(dilation),
            };
            let y = b.conv(x, p[0], geom);
            if *bias {
                let rank = b.shape(y).rank();
                let bias = per_channel(b, p[1], rank);
                (b.add(y, bias), vec![])
            } else {
                (y, vec![])
            }
        }
        LayerKind::BatchNorm { momentum, eps } => batchnorm(b, x, p, *momentum, *eps, mode),
        LayerKind::LayerNorm { eps } => {
            let last = b.shape(x).rank() - 1;
            let (xc, var) = centered(b, x, vec![last]);
            let y = normalize(b, xc, var, *eps);
            let scaled = b.mul(y, p[0]);
            (b.add(scaled, p[1]), vec![])
        }
        LayerKind::Prelu => {
            let rank = b.shape(x).rank();
            let slope = if rank > 2 {
                per_channel(b, p[0], rank)
            } else {
                p[0]
            };
            (leaky(b, x, slope), vec![])
        }
        LayerKind::Embedding { .. } => (b.gather(p[0], x), vec![]),
        LayerKind::Recurrent {
            cell,
            hidden,
            activation,
            bidirectional,
            sequence,
        } => {
            let cell = match (cell, activation) {
                (Cell::Rnn, RnnActivation::Relu) => ir_op::Cell::RnnRelu,
                (Cell::Rnn, RnnActivation::Tanh) => ir_op::Cell::RnnTanh,
                (Cell::Lstm, _) => ir_op::Cell::Lstm,
                (Cell::Gru, _) => ir_op::Cell::Gru,
            };
            let dirs = if *bidirectional { 2 } else { 1 };
            let outs = (0..dirs)
                .map(|d| {
                    let r = Recurrence {
                        cell,
                        hidden: *hidden as usize,
                        reverse: d == 1,
                    };
                    recurrent(b, r, x, &p[4 * d..4 * d + 4], *sequence)
                })
                .collect();
            (concat(b, outs, if *sequence { 2 } else { 1 }), vec![])
        }
        LayerKind::Block => unreachable!("blocks are inlined by the checker"),
    }
}

/// A `[C]` vector shaped `[C, 1, ..]` to broadcast over axis 1 of a rank-`rank` tensor.
fn per_channel(b: &mut Builder, v: NodeId, rank: usize) -> NodeId {
    let mut dims = b.shape(v).0.clone();
    dims.extend(std::iter::repeat_n(Dim::Fixed(1), rank.saturating_sub(2)));
    b.reshape(v, Shape::new(dims))
}

/// `x` for x ≥ 0 and `slope·x` below: `relu(x) − slope·relu(−x)`.
pub fn leaky(b: &mut Builder, x: NodeId, slope: NodeId) -> NodeId {
    let pos = b.map(Func::of(Elem::Relu), x);
    let nx = b.map(Func::of(Elem::Neg), x);
    let neg = b.map(Func::of(Elem::Relu), nx);
    let scaled = b.mul(slope, neg);
    b.sub(pos, scaled)
}

/// `x − mean(x)` over `axes` and the (biased) variance, both keeping the reduced axes.
fn centered(b: &mut Builder, x: NodeId, axes: Vec<usize>) -> (NodeId, NodeId) {
    let mean = b.reduce(Reduce::Mean, x, axes.clone(), true);
    let xc = b.sub(x, mean);
    let sq = b.map(Func::of(Elem::Square), xc);
    let var = b.reduce(Reduce::Mean, sq, axes, true);
    (xc, var)
}

/// `xc / √(var + eps)`.
fn normalize(b: &mut Builder, xc: NodeId, var: NodeId, eps: f64) -> NodeId {
    let e = b.constant(eps);
    let v = b.add(var, e);
    let sd = b.map(Func::of(Elem::Sqrt), v);
    b.div(xc, sd)
}

/// Batch normalization over axis 1 (parameters γ, β, running mean, running variance).
/// Training normalizes with the batch statistics in one fused operation (whose VJP is the
/// closed form) and updates the running ones; evaluation normalizes with the running
/// statistics, composed.
fn batchnorm(
    b: &mut Builder,
    x: NodeId,
    p: &[NodeId],
    momentum: f64,
    eps: f64,
    mode: Mode,
) -> Lowered {
    let shape = b.shape(x).clone();
    let rank = shape.rank();
    match mode {
        Mode::Eval => {
            let (gamma, beta) = (per_channel(b, p[0], rank), per_channel(b, p[1], rank));
            let (rm, rv) = (per_channel(b, p[2], rank), per_channel(b, p[3], rank));
            let xc = b.sub(x, rm);
            let y = normalize(b, xc, rv, eps);
            let scaled = b.mul(y, gamma);
            (b.add(scaled, beta), vec![])
        }
        Mode::Train { .. } => {
            let stats = b.batch_stats(x);
            let y = b.batchnorm(x, stats, p[0], p[1], eps);
            // running ← (1 − m)·running + m·statistic, with the unbiased variance
            // n/(n − 1)·var as PyTorch (n/1 for a batch of one element per channel).
            let stat_shape = b.shape(p[2]).clone();
            let mut stat = |k: usize| {
                let row = b.slice(stats, 0, k, 1);
                b.reshape(row, stat_shape.clone())
            };
            let (mean, var) = (stat(0), stat(1));
            let spatial: u64 = (2..rank).filter_map(|i| shape.fixed(i)).product();
            let per = b.constant(spatial as f64);
            let bs = b.batch_size();
            let n = b.mul(bs, per);
            let one = b.constant(1.0);
            let n1 = b.sub(n, one);
            let n1 = b.binary(Binary::Max, n1, one);
            let factor = b.div(n, n1);
            let unbiased = b.mul(var, factor);
            let ema = |b: &mut Builder, running: NodeId, stat: NodeId| {
                let keep = b.scale(1.0 - momentum, running);
                let new = b.scale(momentum, stat);
                b.add(keep, new)
            };
            let new_mean = ema(b, p[2], mean);
            let new_var = ema(b, p[3], unbiased);
            (y, vec![(2, new_mean), (3, new_var)])
        }
    }
}

/// The IR pooling of a checked pooling kind.
pub fn pool(kind: CPool, windows: Windows) -> Pool {
    Pool {
        kind: match kind {
            CPool::Max => PoolKind::Max,
            CPool::Avg => PoolKind::Avg,
        },
        windows,
    }
}

/// Spatial pyramid pooling: for each level `l`, max pooling to an `l × l` grid, flattened;
/// the levels concatenated.
pub fn spp(b: &mut Builder, x: NodeId, levels: &[u64]) -> NodeId {
    let s = b.shape(x).clone();
    let c = s.fixed(1).unwrap_or(1);
    let parts = levels
        .iter()
        .map(|&l| {
            let bins = vec![l as usize; s.rank() - 2];
            let p = pool(CPool::Max, Windows::Adaptive { bins });
            let y = b.pool(x, p);
            let per = l.pow((s.rank() - 2) as u32);
            b.reshape(y, Shape::new(vec![s.0[0], Dim::Fixed(c * per)]))
        })
        .collect();
    concat(b, parts, 1)
}

/// Concatenation along `axis` (the part itself when there is one).
fn concat(b: &mut Builder, parts: Vec<NodeId>, axis: usize) -> NodeId {
    if parts.len() == 1 {
        return parts[0];
    }
    let mut dims = b.shape(parts[0]).0.clone();
    dims[axis] = Dim::Fixed(
        parts
            .iter()
            .map(|&p| b.shape(p).fixed(axis).unwrap_or(1))
            .sum(),
    );
    b.push(Op::Concat(axis), parts, Shape::new(dims))
}

/// One direction of a recurrent layer over `x` `[N, T, F]` with its parameters (w_ih,
/// w_hh, b_ih, b_hh): the input projections of every step in one product, then the fused
/// recurrence. The states `[N, T, H]` in time order, or (not `sequence`) the final one
/// `[N, H]`: after t = T − 1, or after t = 0 when running backwards. An LSTM's and a
/// plain RNN's gates add both biases, so the recurrence adds their sum (a `[G·H]` add,
/// not one over every step's projections, and one bias gradient for both); a GRU's
/// candidate multiplies `b_hn` by its reset gate, so it adds `b_ih` to the projections.
fn recurrent(b: &mut Builder, r: Recurrence, x: NodeId, p: &[NodeId], sequence: bool) -> NodeId {
    let xw = b.matmul(x, p[0], false, true);
    let reserve = if r.cell == ir_op::Cell::Gru {
        let xw = b.add(xw, p[2]);
        b.recurrence(r, xw, p[1], p[3])
    } else {
        let bias = b.add(p[2], p[3]);
        b.recurrence(r, xw, p[1], bias)
    };
    if sequence {
        return b.slice(reserve, 2, 0, r.hidden);
    }
    let s = b.shape(x).clone();
    let t = s.fixed(1).unwrap_or(1) as usize;
    let last = b.slice(reserve, 1, if r.reverse { 0 } else { t - 1 }, 1);
    let h = b.slice(last, 2, 0, r.hidden);
    b.reshape(h, Shape::new(vec![s.0[0], Dim::Fixed(r.hidden as u64)]))
}
