//! Building nodes with their shapes computed: lowering and autodiff add nodes only
//! through these methods, so every node's shape follows one rule per operation.

use super::op::Recurrence;
use super::shape::{broadcast, Dim, Shape};
use super::{
    Binary, ConvGeom, DType, Func, Graph, Hyper, LossKind, NodeId, Noise, Op, Pool, Reduce, Windows,
};
use crate::span::Span;

/// Adds nodes to a graph, labelling them with the current source span and name.
pub struct Builder<'g> {
    /// The graph being extended.
    pub g: &'g mut Graph,
    /// Span given to new nodes.
    pub span: Option<Span>,
    /// Name given to new nodes.
    pub name: String,
}

impl<'g> Builder<'g> {
    /// A builder adding to `g` with no span.
    pub fn new(g: &'g mut Graph) -> Self {
        Builder {
            g,
            span: None,
            name: String::new(),
        }
    }

    /// The shape of node `n`.
    pub fn shape(&self, n: NodeId) -> &Shape {
        &self.g.nodes[n].shape
    }

    /// Adds a node with an explicit shape.
    pub fn push(&mut self, op: Op, args: Vec<NodeId>, shape: Shape) -> NodeId {
        let (span, name) = (self.span, self.name.clone());
        self.g.push(op, args, shape, DType::F32, span, name)
    }

    /// A scalar constant.
    pub fn constant(&mut self, v: f64) -> NodeId {
        self.push(Op::Const(v), vec![], Shape::scalar())
    }

    /// A run-time hyperparameter.
    pub fn hyper(&mut self, h: Hyper) -> NodeId {
        self.push(Op::Hyper(h), vec![], Shape::scalar())
    }

    /// The run-time batch size.
    pub fn batch_size(&mut self) -> NodeId {
        self.push(Op::BatchSize, vec![], Shape::scalar())
    }

    /// `f(x)`.
    pub fn map(&mut self, f: Func, x: NodeId) -> NodeId {
        let s = self.shape(x).clone();
        self.push(Op::Map(f), vec![x], s)
    }

    /// `g · f'(x)`.
    pub fn map_grad(&mut self, f: Func, x: NodeId, g: NodeId) -> NodeId {
        let s = self.shape(x).clone();
        self.push(Op::MapGrad(f), vec![x, g], s)
    }

    /// Elementwise `a op b` with broadcasting.
    pub fn binary(&mut self, op: Binary, a: NodeId, b: NodeId) -> NodeId {
        let s = broadcast(self.shape(a), self.shape(b)).expect("checked shapes broadcast");
        self.push(Op::Binary(op), vec![a, b], s)
    }

    /// `a + b`.
    pub fn add(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.binary(Binary::Add, a, b)
    }

    /// `a · b`.
    pub fn mul(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.binary(Binary::Mul, a, b)
    }

    /// `a − b`.
    pub fn sub(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.binary(Binary::Sub, a, b)
    }

    /// `a / b`.
    pub fn div(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.binary(Binary::Div, a, b)
    }

    /// `c · x` for a constant c.
    pub fn scale(&mut self, c: f64, x: NodeId) -> NodeId {
        let k = self.constant(c);
        self.mul(k, x)
    }

    /// The matrix product of a and b seen as matrices (see [`Op::MatMul`]).
    pub fn matmul(&mut self, a: NodeId, b: NodeId, ta: bool, tb: bool) -> NodeId {
        let (sa, sb) = (self.shape(a).clone(), self.shape(b).clone());
        let cols = |s: &Shape| s.0.last().copied().unwrap_or(Dim::Fixed(1));
        let n = if tb {
            Dim::Fixed(leading(&sb))
        } else {
            cols(&sb)
        };
        let dims = if ta {
            vec![cols(&sa), n]
        } else {
            let mut d = sa.0[..sa.rank() - 1].to_vec();
            d.push(n);
            d
        };
        self.push(Op::MatMul { ta, tb }, vec![a, b], Shape::new(dims))
    }

    /// NumPy `matmul` on the last two dimensions with broadcast leading dimensions.
    pub fn batch_matmul(&mut self, a: NodeId, b: NodeId, ta: bool, tb: bool) -> NodeId {
        let (sa, sb) = (self.shape(a).clone(), self.shape(b).clone());
        let (ra, rb) = (sa.rank(), sb.rank());
        let m = if ta { sa.0[ra - 1] } else { sa.0[ra - 2] };
        let n = if tb { sb.0[rb - 2] } else { sb.0[rb - 1] };
        let lead = broadcast(
            &Shape::new(sa.0[..ra - 2].to_vec()),
            &Shape::new(sb.0[..rb - 2].to_vec()),
        )
        .expect("checked shapes broadcast");
        let mut dims = lead.0;
        dims.extend([m, n]);
        self.push(Op::BatchMatMul { ta, tb }, vec![a, b], Shape::new(dims))
    }

    /// `x` with shape `s` (same elements).
    pub fn reshape(&mut self, x: NodeId, s: Shape) -> NodeId {
        if *self.shape(x) == s {
            return x;
        }
        self.push(Op::Reshape, vec![x], s)
    }

    /// `x` broadcast to `s`.
    pub fn broadcast_to(&mut self, x: NodeId, s: Shape) -> NodeId {
        if *self.shape(x) == s {
            return x;
        }
        self.push(Op::BroadcastTo, vec![x], s)
    }

    /// `x` summed down to `s` (the VJP of broadcasting).
    pub fn sum_to(&mut self, x: NodeId, s: Shape) -> NodeId {
        if *self.shape(x) == s {
            return x;
        }
        self.push(Op::SumTo, vec![x], s)
    }

    /// A reduction.
    pub fn reduce(&mut self, kind: Reduce, x: NodeId, axes: Vec<usize>, keepdims: bool) -> NodeId {
        let s = reduced(self.shape(x), &axes, keepdims);
        self.push(
            Op::Reduce {
                kind,
                axes,
                keepdims,
            },
            vec![x],
            s,
        )
    }

    /// Σ over every axis: a scalar.
    pub fn sum_all(&mut self, x: NodeId) -> NodeId {
        let axes = (0..self.shape(x).rank()).collect();
        self.reduce(Reduce::Sum, x, axes, false)
    }

    /// A node whose shape is that of `like` with the operation `op` on `args`.
    pub fn like(&mut self, op: Op, args: Vec<NodeId>, like: NodeId) -> NodeId {
        let s = self.shape(like).clone();
        self.push(op, args, s)
    }

    /// The convolution of `x` `[N, C, S..]` with `w` `[O, C, K..]`.
    pub fn conv(&mut self, x: NodeId, w: NodeId, geom: ConvGeom) -> NodeId {
        let (sx, sw) = (self.shape(x).clone(), self.shape(w).clone());
        let mut dims = vec![sx.0[0], sw.0[0]];
        for i in 0..sx.rank() - 2 {
            let len = sx.fixed(2 + i).unwrap_or(1) as usize;
            let k = sw.fixed(2 + i).unwrap_or(1) as usize;
            let span = geom.dilation[i] * (k - 1) + 1;
            let out = (len + 2 * geom.pad[i] - span) / geom.stride[i] + 1;
            dims.push(Dim::Fixed(out as u64));
        }
        self.push(Op::Conv(geom), vec![x, w], Shape::new(dims))
    }

    /// A pooling of `x` `[N, C, S..]`.
    pub fn pool(&mut self, x: NodeId, pool: Pool) -> NodeId {
        let sx = self.shape(x).clone();
        let mut dims = sx.0[..2].to_vec();
        for i in 0..sx.rank() - 2 {
            let len = sx.fixed(2 + i).unwrap_or(1) as usize;
            let out = match &pool.windows {
                Windows::Regular { k, stride, pad, .. } => {
                    (len + 2 * pad[i] - k[i]) / stride[i] + 1
                }
                Windows::Adaptive { bins } => bins[i],
            };
            dims.push(Dim::Fixed(out as u64));
        }
        self.push(Op::Pool(pool), vec![x], Shape::new(dims))
    }

    /// Rows of `table` `[V, D]` for `ids`: `[.., D]`.
    pub fn gather(&mut self, table: NodeId, ids: NodeId) -> NodeId {
        let mut dims = self.shape(ids).0.clone();
        dims.push(self.shape(table).0[1]);
        self.push(Op::Gather, vec![table, ids], Shape::new(dims))
    }

    /// The batch statistics `[2, C]` of `x` `[N, C, S..]` (see [`Op::BatchStats`]).
    pub fn batch_stats(&mut self, x: NodeId) -> NodeId {
        let c = self.shape(x).0[1];
        self.push(Op::BatchStats, vec![x], Shape::new(vec![Dim::Fixed(2), c]))
    }

    /// Batch normalization of `x` with its batch statistics `stats` (see [`Op::BatchNorm`]).
    pub fn batchnorm(
        &mut self,
        x: NodeId,
        stats: NodeId,
        gamma: NodeId,
        beta: NodeId,
        eps: f64,
    ) -> NodeId {
        self.like(Op::BatchNorm { eps }, vec![x, stats, gamma, beta], x)
    }

    /// `len` elements of `x` from `start` along `axis`.
    pub fn slice(&mut self, x: NodeId, axis: usize, start: usize, len: usize) -> NodeId {
        let mut dims = self.shape(x).0.clone();
        if dims[axis] == Dim::Fixed(len as u64) {
            return x;
        }
        dims[axis] = Dim::Fixed(len as u64);
        self.push(Op::Slice { axis, start, len }, vec![x], Shape::new(dims))
    }

    /// One direction of a recurrent layer over the input projections `xw` `[N, T, G·H]`:
    /// the reserve `[N, T, R·H]` (see [`Recurrence`]).
    pub fn recurrence(&mut self, r: Recurrence, xw: NodeId, w_hh: NodeId, b_hh: NodeId) -> NodeId {
        let mut dims = self.shape(xw).0.clone();
        dims[2] = Dim::Fixed((r.cell.reserve() * r.hidden) as u64);
        self.push(Op::Recurrence(r), vec![xw, w_hh, b_hh], Shape::new(dims))
    }

    /// The recurrence's VJP for the gradient `g` of its `reserve`: the gradient of the
    /// gate pre-activations `[N, T, S·G·H]` (S = [`super::op::Cell::grad_sides`]).
    pub fn recurrence_grad(
        &mut self,
        r: Recurrence,
        reserve: NodeId,
        w_hh: NodeId,
        g: NodeId,
    ) -> NodeId {
        let mut dims = self.shape(reserve).0.clone();
        let width = r.cell.grad_sides() * r.cell.gates() * r.hidden;
        dims[2] = Dim::Fixed(width as u64);
        self.push(
            Op::RecurrenceGrad(r),
            vec![reserve, w_hh, g],
            Shape::new(dims),
        )
    }

    /// Random values shaped like `like`, drawn afresh at every training step.
    pub fn noise(&mut self, dist: Noise, seed: u64, like: NodeId) -> NodeId {
        let salt = self
            .g
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Noise { .. }))
            .count() as u64;
        let step = self.hyper(Hyper::Step);
        let s = self.shape(like).clone();
        // Per-row noise starts at the row's place in the batch's stream.
        let mut args = vec![step];
        if s.0.first() == Some(&Dim::Batch) {
            args.push(self.hyper(Hyper::RowOffset));
        }
        self.push(Op::Noise { dist, seed, salt }, args, s)
    }

    /// A loss: a scalar.
    pub fn loss(&mut self, kind: LossKind, pred: NodeId, target: NodeId) -> NodeId {
        self.push(Op::Loss(kind), vec![pred, target], Shape::scalar())
    }
}

/// Product of all dimensions but the last (fixed ones; the batch counts as 1 here and is
/// only used for shapes that have none).
fn leading(s: &Shape) -> u64 {
    s.0[..s.rank().saturating_sub(1)]
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => *n,
            Dim::Batch => 1,
        })
        .product()
}

/// The shape of a reduction.
pub fn reduced(s: &Shape, axes: &[usize], keepdims: bool) -> Shape {
    Shape::new(
        s.0.iter()
            .enumerate()
            .filter_map(|(i, d)| match (axes.contains(&i), keepdims) {
                (false, _) => Some(*d),
                (true, true) => Some(Dim::Fixed(1)),
                (true, false) => None,
            })
            .collect(),
    )
}
