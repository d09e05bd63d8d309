//! The parameterized layers as IR: dense, convolution, normalization, PReLU, embedding
//! and the recurrent cells (unrolled over time, so backpropagation through time is the
//! ordinary reverse pass over the unrolled graph).

use super::Mode;
use crate::check::graph::{Activation, Cell, LayerKind, PoolKind as CPool};
use crate::ir::build::Builder;
use crate::ir::{Binary, ConvGeom, Dim, Func, NodeId, Op, Pool, PoolKind, Reduce, Shape, Windows};

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
            let rnn = Recurrent {
                cell: *cell,
                hidden: *hidden as usize,
                activation: *activation,
            };
            let dirs = if *bidirectional { 2 } else { 1 };
            let runs: Vec<(NodeId, Vec<NodeId>)> = (0..dirs)
                .map(|d| rnn.run(b, x, &p[4 * d..4 * d + 4], d == 1))
                .collect();
            let y = if *sequence {
                let seqs: Vec<NodeId> =
                    runs.iter().map(|(_, steps)| stack_time(b, steps)).collect();
                concat(b, seqs, 2)
            } else {
                let lasts = runs.iter().map(|(last, _)| *last).collect();
                concat(b, lasts, 1)
            };
            (y, vec![])
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
    let pos = b.map(Func::Relu, x);
    let nx = b.map(Func::Neg, x);
    let neg = b.map(Func::Relu, nx);
    let scaled = b.mul(slope, neg);
    b.sub(pos, scaled)
}

/// `x − mean(x)` over `axes` and the (biased) variance, both keeping the reduced axes.
fn centered(b: &mut Builder, x: NodeId, axes: Vec<usize>) -> (NodeId, NodeId) {
    let mean = b.reduce(Reduce::Mean, x, axes.clone(), true);
    let xc = b.sub(x, mean);
    let sq = b.map(Func::Square, xc);
    let var = b.reduce(Reduce::Mean, sq, axes, true);
    (xc, var)
}

/// `xc / √(var + eps)`.
fn normalize(b: &mut Builder, xc: NodeId, var: NodeId, eps: f64) -> NodeId {
    let e = b.constant(eps);
    let v = b.add(var, e);
    let sd = b.map(Func::Sqrt, v);
    b.div(xc, sd)
}

/// Batch normalization over axis 1 (parameters γ, β, running mean, running variance).
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
    let (gamma, beta) = (per_channel(b, p[0], rank), per_channel(b, p[1], rank));
    let (rm, rv) = (per_channel(b, p[2], rank), per_channel(b, p[3], rank));
    let (y, updates) = match mode {
        Mode::Eval => {
            let xc = b.sub(x, rm);
            (normalize(b, xc, rv, eps), vec![])
        }
        Mode::Train { .. } => {
            let axes: Vec<usize> = std::iter::once(0).chain(2..rank).collect();
            let mean = b.reduce(Reduce::Mean, x, axes.clone(), true);
            let xc = b.sub(x, mean);
            let sq = b.map(Func::Square, xc);
            let var = b.reduce(Reduce::Mean, sq, axes, true);
            let y = normalize(b, xc, var, eps);
            // running ← (1 − m)·running + m·statistic, with the unbiased variance
            // n/(n − 1)·var as PyTorch (n/1 for a batch of one element per channel).
            let spatial: u64 = (2..rank).filter_map(|i| shape.fixed(i)).product();
            let per = b.constant(spatial as f64);
            let bs = b.batch_size();
            let n = b.mul(bs, per);
            let one = b.constant(1.0);
            let n1 = b.sub(n, one);
            let n1 = b.binary(Binary::Max, n1, one);
            let factor = b.div(n, n1);
            let unbiased = b.mul(var, factor);
            let stat_shape = b.shape(p[2]).clone();
            let ema = |b: &mut Builder, running: NodeId, stat: NodeId| {
                let stat = b.reshape(stat, stat_shape.clone());
                let keep = b.scale(1.0 - momentum, running);
                let new = b.scale(momentum, stat);
                b.add(keep, new)
            };
            let new_mean = ema(b, p[2], mean);
            let new_var = ema(b, p[3], unbiased);
            (y, vec![(2, new_mean), (3, new_var)])
        }
    };
    let scaled = b.mul(y, gamma);
    (b.add(scaled, beta), updates)
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

/// `[N, H]` states in time order stacked to `[N, T, H]`.
fn stack_time(b: &mut Builder, steps: &[NodeId]) -> NodeId {
    let parts = steps
        .iter()
        .map(|&h| {
            let s = b.shape(h).clone();
            b.reshape(h, Shape::new(vec![s.0[0], Dim::Fixed(1), s.0[1]]))
        })
        .collect();
    concat(b, parts, 1)
}

/// A recurrent cell with PyTorch's equations and gate order.
struct Recurrent {
    cell: Cell,
    hidden: usize,
    activation: Activation,
}

impl Recurrent {
    /// Gate `k` (`[.., H]`) of pre-activations `[.., G·H]`.
    fn gate(&self, b: &mut Builder, v: NodeId, k: usize) -> NodeId {
        let mut dims = b.shape(v).0.clone();
        let axis = dims.len() - 1;
        dims[axis] = Dim::Fixed(self.hidden as u64);
        b.push(
            Op::Slice {
                axis,
                start: k * self.hidden,
                len: self.hidden,
            },
            vec![v],
            Shape::new(dims),
        )
    }

    /// Runs over `x` `[N, T, F]` with parameters (w_ih, w_hh, b_ih, b_hh), backwards when
    /// `reverse`: the final state and the state after each time step (in time order).
    fn run(
        &self,
        b: &mut Builder,
        x: NodeId,
        p: &[NodeId],
        reverse: bool,
    ) -> (NodeId, Vec<NodeId>) {
        let s = b.shape(x).clone();
        let t = s.fixed(1).unwrap_or(1) as usize;
        // The input projections of every step in one product: [N, T, G·H].
        let xw = b.matmul(x, p[0], false, true);
        let xw = b.add(xw, p[2]);
        let gh = b.shape(xw).fixed(2).unwrap_or(1);
        // The state starts at zero, and its product with W_hh is left out — except for a
        // single step, where W_hh would otherwise not be in the graph at all (PyTorch gives
        // it a zero gradient, so weight decay and optimizer state still apply).
        let mut h: Option<NodeId> = (t == 1).then(|| {
            let zero = b.constant(0.0);
            let shape = Shape::new(vec![s.0[0], Dim::Fixed(self.hidden as u64)]);
            b.broadcast_to(zero, shape)
        });
        let mut c: Option<NodeId> = None;
        let mut states = vec![0; t];
        let order: Vec<usize> = if reverse {
            (0..t).rev().collect()
        } else {
            (0..t).collect()
        };
        for step in order {
            let xt = b.push(
                Op::Slice {
                    axis: 1,
                    start: step,
                    len: 1,
                },
                vec![xw],
                Shape::new(vec![s.0[0], Dim::Fixed(1), Dim::Fixed(gh)]),
            );
            let xt = b.reshape(xt, Shape::new(vec![s.0[0], Dim::Fixed(gh)]));
            // h·W_hhᵀ + b_hh (just b_hh while the state is zero).
            let hh = match h {
                Some(h) => {
                    let r = b.matmul(h, p[1], false, true);
                    b.add(r, p[3])
                }
                None => p[3],
            };
            let next = match self.cell {
                Cell::Rnn => {
                    let z = b.add(xt, hh);
                    match self.activation {
                        Activation::Relu => b.map(Func::Relu, z),
                        _ => b.map(Func::Tanh, z),
                    }
                }
                Cell::Lstm => {
                    let z = b.add(xt, hh);
                    let act = |b: &mut Builder, k: usize, f: Func| {
                        let g = self.gate(b, z, k);
                        b.map(f, g)
                    };
                    let i = act(b, 0, Func::Sigmoid);
                    let f = act(b, 1, Func::Sigmoid);
                    let g = act(b, 2, Func::Tanh);
                    let o = act(b, 3, Func::Sigmoid);
                    let ig = b.mul(i, g);
                    let c2 = match c {
                        Some(c) => {
                            let fc = b.mul(f, c);
                            b.add(fc, ig)
                        }
                        None => ig,
                    };
                    c = Some(c2);
                    let tc = b.map(Func::Tanh, c2);
                    b.mul(o, tc)
                }
                Cell::Gru => {
                    let sum_gate = |b: &mut Builder, k: usize| {
                        let (xg, hg) = (self.gate(b, xt, k), self.gate(b, hh, k));
                        let z = b.add(xg, hg);
                        b.map(Func::Sigmoid, z)
                    };
                    let r = sum_gate(b, 0);
                    let z = sum_gate(b, 1);
                    let (xn, hn) = (self.gate(b, xt, 2), self.gate(b, hh, 2));
                    let rh = b.mul(r, hn);
                    let pre = b.add(xn, rh);
                    let n = b.map(Func::Tanh, pre);
                    // h' = (1 − z)·n + z·h = n + z·(h − n)
                    match h {
                        Some(h) => {
                            let d = b.sub(h, n);
                            let zd = b.mul(z, d);
                            b.add(n, zd)
                        }
                        None => {
                            let zn = b.mul(z, n);
                            b.sub(n, zn)
                        }
                    }
                }
            };
            h = Some(next);
            states[step] = next;
        }
        (h.unwrap_or(xw), states)
    }
}
