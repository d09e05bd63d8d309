//! Lowering: a [`CheckedModel`] becomes the forward IR [`Graph`] — layers become matrix
//! products, convolutions, poolings, additions and elementwise maps; the model's loss and
//! its regularizers form the objective that autodiff differentiates. Training and
//! evaluation lower to different graphs: only the training graph draws dropout and rrelu
//! noise and normalizes with batch statistics (updating the running ones).

mod layers;

use crate::check::graph::{CheckedModel, Op as COp, ParamRole, Ty};
use crate::ir::build::Builder;
use crate::ir::{DType, Dim, Func, Graph, NodeId, Noise, Op, Param, Reduce, Shape, Tensor};
use crate::ops::elementwise::Expr;
use crate::ops::Elem;
use crate::syntax::ast::BinOp;

/// Which behaviour a graph has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Evaluation and prediction: no noise, running statistics.
    Eval,
    /// Training: dropout and rrelu noise from this seed, batch statistics.
    Train {
        /// The run's seed.
        seed: u64,
    },
}

/// The IR element type of a checked type.
fn dtype(ty: &Ty) -> DType {
    match ty {
        Ty::Labels { classes, .. } => DType::Class(*classes),
        _ => DType::F32,
    }
}

fn shape(ty: &Ty) -> Shape {
    ty.shape().cloned().unwrap_or_default()
}

/// The shapes the operands of `a @ b` take for a NumPy batch matrix product with Kiln's
/// per-sample meaning. A batched vector `[N, K]` is a row `[N, 1, K]` on the left and a
/// column `[N, K, 1]` on the right; without a batch (the REPL's unbatched mode) a vector
/// is as in NumPy. A batched operand with fewer per-sample axes than the other gets 1s
/// after its batch axis, so that the batch axes meet (NumPy would align them from the
/// right): `[N, 3, 4] @ [5, 4, 2]` is `[N, 1, 3, 4] @ [5, 4, 2]`.
pub fn matmul_operands(sa: &Shape, sb: &Shape) -> (Shape, Shape) {
    let vector = |s: &Shape, left: bool| -> Shape {
        let mut d = s.0.clone();
        match (s.rank(), s.has_batch(), left) {
            (2, true, true) => d.insert(1, Dim::Fixed(1)),
            (2, true, false) => d.push(Dim::Fixed(1)),
            (1, false, true) => d.insert(0, Dim::Fixed(1)),
            (1, false, false) => d.push(Dim::Fixed(1)),
            _ => {}
        }
        Shape::new(d)
    };
    let (a, b) = (vector(sa, true), vector(sb, false));
    let per_sample = |s: &Shape| s.rank() - usize::from(s.has_batch());
    let axes = per_sample(&a).max(per_sample(&b));
    let pad = |s: Shape| -> Shape {
        if !s.has_batch() {
            return s;
        }
        let mut d = s.0;
        let missing = axes + 1 - d.len();
        d.splice(1..1, std::iter::repeat_n(Dim::Fixed(1), missing));
        Shape::new(d)
    };
    (pad(a), pad(b))
}

/// Lowers a checked model to its forward graph with the behaviour of `mode`.
pub fn lower_model(m: &CheckedModel, mode: Mode) -> Graph {
    let mut g = Graph::default();
    let port = |p: &crate::check::graph::Port| {
        let ty = &m.nodes[p.node].ty;
        Tensor {
            name: p.name.clone(),
            shape: shape(ty),
            dtype: dtype(ty),
        }
    };
    g.inputs = m.inputs.iter().map(port).collect();
    g.targets = m.targets.iter().map(port).collect();
    for p in &m.params {
        g.params.push(Param {
            tensor: Tensor {
                name: p.name.clone(),
                shape: Shape::new(p.shape.iter().map(|&d| Dim::Fixed(d)).collect()),
                dtype: DType::F32,
            },
            trainable: p.trainable && p.role != ParamRole::State,
        });
    }
    let mut b = Builder::new(&mut g);
    let mut param_nodes: Vec<Option<NodeId>> = vec![None; m.params.len()];
    let mut map: Vec<NodeId> = Vec::with_capacity(m.nodes.len());
    for node in &m.nodes {
        b.span = Some(node.span);
        b.name = node.label.clone();
        let args: Vec<NodeId> = node.inputs.iter().map(|&i| map[i]).collect();
        let out = shape(&node.ty);
        let id = match &node.op {
            COp::Input(i) => b.g.push(
                Op::Input(*i),
                vec![],
                out,
                dtype(&node.ty),
                Some(node.span),
                node.label.clone(),
            ),
            COp::Target(i) => b.g.push(
                Op::Target(*i),
                vec![],
                out,
                dtype(&node.ty),
                Some(node.span),
                node.label.clone(),
            ),
            COp::Const(v) => b.constant(*v),
            COp::Layer(l) => {
                let layer = &m.layers[*l];
                let mut param = |b: &mut Builder, k: usize| -> NodeId {
                    let p = layer.params[k];
                    *param_nodes[p].get_or_insert_with(|| {
                        let s = b.g.params[p].tensor.shape.clone();
                        b.g.push(
                            Op::Param(p),
                            vec![],
                            s,
                            DType::F32,
                            None,
                            m.params[p].name.clone(),
                        )
                    })
                };
                let ps: Vec<NodeId> = (0..layer.params.len()).map(|k| param(&mut b, k)).collect();
                let (y, updates) = layers::layer(&mut b, &layer.kind, args[0], &ps, mode);
                for (k, v) in updates {
                    b.g.updates
                        .push((crate::ir::Slot::Param(layer.params[k]), v));
                }
                y
            }
            COp::Activation(f) => match mode {
                _ if f.def().f == Expr::X => args[0],
                Mode::Train { seed } if f.def().traits.random_slope => {
                    let slope = b.noise(Noise::Uniform(f.p[0], f.p[1]), seed, args[0]);
                    layers::leaky(&mut b, args[0], slope)
                }
                _ => b.map(*f, args[0]),
            },
            COp::Softmax(ax) => b.like(Op::Softmax(*ax), args.clone(), args[0]),
            COp::LogSoftmax(ax) => b.like(Op::LogSoftmax(*ax), args.clone(), args[0]),
            COp::Flatten | COp::Reshape => b.reshape(args[0], out),
            COp::Last | COp::First => {
                let s = b.shape(args[0]).clone();
                let t = s.fixed(1).unwrap_or(1) as usize;
                let start = if node.op == COp::Last { t - 1 } else { 0 };
                let mut dims = s.0.clone();
                dims[1] = Dim::Fixed(1);
                let sl = b.push(
                    Op::Slice {
                        axis: 1,
                        start,
                        len: 1,
                    },
                    args.clone(),
                    Shape::new(dims),
                );
                b.reshape(sl, out)
            }
            COp::Binary(op) => match op {
                BinOp::Add => b.add(args[0], args[1]),
                BinOp::Sub => b.sub(args[0], args[1]),
                BinOp::Mul => b.mul(args[0], args[1]),
                BinOp::Div => b.div(args[0], args[1]),
                BinOp::MatMul => {
                    let (sa, sb) = (b.shape(args[0]).clone(), b.shape(args[1]).clone());
                    let (ta, tb) = matmul_operands(&sa, &sb);
                    let x = b.reshape(args[0], ta);
                    let w = b.reshape(args[1], tb);
                    let y = b.batch_matmul(x, w, false, false);
                    b.reshape(y, out)
                }
            },
            COp::Neg => b.map(Func::of(Elem::Neg), args[0]),
            COp::Reduce {
                kind,
                axes,
                keepdims,
            } => {
                let kind = match kind {
                    crate::check::graph::ReduceKind::Sum => Reduce::Sum,
                    crate::check::graph::ReduceKind::Mean => Reduce::Mean,
                    crate::check::graph::ReduceKind::Max => Reduce::Max,
                    crate::check::graph::ReduceKind::Min => Reduce::Min,
                };
                b.reduce(kind, args[0], axes.clone(), *keepdims)
            }
            COp::Concat(ax) => b.push(Op::Concat(*ax), args.clone(), out),
            COp::Loss(kind) => b.loss(*kind, args[0], args[1]),
            COp::Dropout(p) => match mode {
                Mode::Train { seed } if *p > 0.0 => {
                    let mask = b.noise(Noise::Dropout(*p), seed, args[0]);
                    b.mul(args[0], mask)
                }
                _ => args[0],
            },
            COp::Pool {
                kind,
                kernel,
                stride,
                pad,
                count_pad,
            } => {
                let usizes = |v: &[u64]| v.iter().map(|&d| d as usize).collect();
                let windows = crate::ir::Windows::Regular {
                    k: usizes(kernel),
                    stride: usizes(stride),
                    pad: usizes(pad),
                    count_pad: *count_pad,
                };
                b.pool(args[0], layers::pool(*kind, windows))
            }
            COp::GlobalPool(kind) => {
                let axes = (2..b.shape(args[0]).rank()).collect();
                let r = match kind {
                    crate::check::graph::PoolKind::Max => Reduce::Max,
                    crate::check::graph::PoolKind::Avg => Reduce::Mean,
                };
                b.reduce(r, args[0], axes, false)
            }
            COp::Spp(levels) => layers::spp(&mut b, args[0], levels),
        };
        map.push(id);
    }
    let mut b = Builder::new(&mut g);
    for o in &m.outputs {
        b.g.outputs.push((o.name.clone(), map[o.node]));
    }
    if let Some(l) = m.loss {
        b.span = Some(m.nodes[l].span);
        b.name = "loss".into();
        let mut loss = map[l];
        if b.shape(loss).rank() == 1 {
            loss = b.reduce(Reduce::Mean, loss, vec![0], false);
        }
        b.g.loss = Some(loss);
        // The objective adds λ·Σ|w| or λ·Σw² per regularizer.
        let mut objective = loss;
        for r in &m.regularizers {
            b.span = Some(r.span);
            b.name = if r.l1 { "l1" } else { "l2" }.into();
            for &p in &r.params {
                let Some(w) = param_nodes[p] else { continue };
                let f = if r.l1 {
                    Func::of(Elem::Abs)
                } else {
                    Func::of(Elem::Square)
                };
                let t = b.map(f, w);
                let s = b.sum_all(t);
                let term = b.scale(r.lambda, s);
                objective = b.add(objective, term);
            }
        }
        b.g.objective = Some(objective);
    }
    g
}
