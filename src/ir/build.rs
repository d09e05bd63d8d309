//! Building nodes with their shapes computed: lowering and autodiff add nodes only
//! through these methods, so every node's shape follows one rule per operation.

use super::shape::{broadcast, Dim, Shape};
use super::{Binary, DType, Func, Graph, Hyper, LossKind, NodeId, Op, Reduce};
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
