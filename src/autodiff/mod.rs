//! Reverse-mode automatic differentiation and the training graph: the forward graph is
//! extended, in the same IR, with the backward pass, gradient clipping and the optimizer
//! update, so that a backend runs a whole training step as one function.

mod vjp;

pub use vjp::vjp;

use crate::ir::build::Builder;
use crate::ir::{
    Binary, Clip, DType, Func, Graph, GraphData, Hyper, NodeId, Op, Optimizer, Slot, Tensor,
};
use crate::ops::Elem;

/// Adds the gradient of `g.objective` with respect to every trainable parameter to
/// `g.grads`. Frozen parameters, inputs and targets get no gradient.
pub fn differentiate(g: &mut Graph) {
    differentiate_scaled(g, None);
}

/// [`differentiate`], the gradients multiplied by the run-time hyperparameter `scale`
/// when given (the objective's own gradient is `scale` instead of 1).
fn differentiate_scaled(g: &mut Graph, scale: Option<Hyper>) {
    let Some(objective) = g.objective else { return };
    // Which nodes depend on a trainable parameter.
    let mut requires = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        requires[i] = match n.op {
            Op::Param(p) => g.params[p].trainable,
            _ => n.args.iter().any(|&a| requires[a]),
        };
    }
    let mut grads: Vec<Option<NodeId>> = vec![None; g.nodes.len()];
    let mut b = Builder::new(g);
    b.name = "backward".into();
    grads[objective] = Some(match scale {
        Some(h) => b.hyper(h),
        None => b.constant(1.0),
    });
    for n in (0..=objective).rev() {
        let Some(gn) = grads[n] else { continue };
        if !requires[n] {
            continue;
        }
        b.span = b.g.nodes[n].span;
        b.name = format!("∂{}", b.g.nodes[n].name);
        let args = b.g.nodes[n].args.clone();
        for (arg, ga) in args.iter().zip(vjp(&mut b, n, gn)) {
            let Some(ga) = ga else { continue };
            if !requires[*arg] {
                continue;
            }
            grads[*arg] = Some(match grads[*arg] {
                Some(prev) => b.add(prev, ga),
                None => ga,
            });
        }
    }
    let g: &mut GraphData = g;
    for (i, node) in g.nodes.iter().enumerate().take(objective + 1) {
        if let (Op::Param(p), Some(gr)) = (&node.op, grads[i]) {
            g.grads.push((*p, gr));
        }
    }
    g.grads.sort_by_key(|(p, _)| *p);
}

/// Rescales (by norm) or clamps (by value) the gradients in `g.grads`; the threshold is
/// the run-time hyperparameter [`Hyper::Clip`].
pub fn clip(g: &mut Graph, clip: Clip) {
    let grads = g.grads.clone();
    let mut b = Builder::new(g);
    b.name = "clip".into();
    let c = b.hyper(Hyper::Clip);
    match clip {
        Clip::Norm(_) => {
            let mut total: Option<NodeId> = None;
            for (_, gr) in &grads {
                let sq = b.map(Func::of(Elem::Square), *gr);
                let s = b.sum_all(sq);
                total = Some(match total {
                    Some(t) => b.add(t, s),
                    None => s,
                });
            }
            let Some(total) = total else { return };
            // scale = min(1, c / (‖g‖ + 1e-6)), as torch.nn.utils.clip_grad_norm_.
            let norm = b.map(Func::of(Elem::Sqrt), total);
            let tiny = b.constant(1e-6);
            let denom = b.add(norm, tiny);
            let ratio = b.div(c, denom);
            let one = b.constant(1.0);
            let scale = b.binary(Binary::Min, ratio, one);
            for (p, gr) in &grads {
                let clipped = b.mul(*gr, scale);
                replace_grad(b.g, *p, clipped);
            }
        }
        Clip::Value(_) => {
            let neg = b.map(Func::of(Elem::Neg), c);
            for (p, gr) in &grads {
                let lo = b.binary(Binary::Min, *gr, c);
                let clipped = b.binary(Binary::Max, lo, neg);
                replace_grad(b.g, *p, clipped);
            }
        }
    }
}

fn replace_grad(g: &mut Graph, p: usize, node: NodeId) {
    if let Some(entry) = g.grads.iter_mut().find(|(q, _)| *q == p) {
        entry.1 = node;
    }
}

/// The optimizer-state tensors of each trainable parameter, with PyTorch's names.
pub fn state_names(opt: &Optimizer) -> &'static [&'static str] {
    match opt {
        Optimizer::Sgd { momentum, .. } if *momentum > 0.0 => &["momentum_buffer"],
        Optimizer::Sgd { .. } => &[],
        Optimizer::Adam { .. } => &["exp_avg", "exp_avg_sq"],
        Optimizer::Rmsprop { momentum, .. } if *momentum > 0.0 => {
            &["square_avg", "momentum_buffer"]
        }
        Optimizer::Rmsprop { .. } => &["square_avg"],
    }
}

/// Adds the optimizer update of every parameter that has a gradient to `g.updates`
/// (and its state tensors to `g.states`). The formulas are PyTorch's `torch.optim`
/// (single-tensor implementations); every coefficient is a run-time hyperparameter.
pub fn optimizer_update(g: &mut Graph, opt: &Optimizer) {
    let grads = g.grads.clone();
    let names = state_names(opt);
    for (p, grad) in grads {
        let pname = g.params[p].tensor.name.clone();
        let shape = g.params[p].tensor.shape.clone();
        let first_state = g.states.len();
        for s in names {
            g.states.push(Tensor {
                name: format!("{pname}.{s}"),
                shape: shape.clone(),
                dtype: DType::F32,
            });
        }
        let mut b = Builder::new(g);
        b.name = format!("{pname}.update");
        let w = b.push(Op::Param(p), vec![], shape.clone());
        let state =
            |b: &mut Builder, k: usize| b.push(Op::State(first_state + k), vec![], shape.clone());
        let lr = b.hyper(Hyper::Lr);
        let one = b.constant(1.0);
        // g' = g + wd·w (coupled weight decay), then the rule.
        let coupled = |b: &mut Builder, grad: NodeId| {
            let wd = b.hyper(Hyper::WeightDecay);
            let decay = b.mul(wd, w);
            b.add(grad, decay)
        };
        let mut updates = Vec::new();
        let step = match opt {
            Optimizer::Sgd {
                momentum, nesterov, ..
            } => {
                let d = coupled(&mut b, grad);
                if *momentum > 0.0 {
                    let mu = b.hyper(Hyper::Momentum);
                    let buf = state(&mut b, 0);
                    let kept = b.mul(mu, buf);
                    let buf2 = b.add(kept, d);
                    updates.push((Slot::State(first_state), buf2));
                    if *nesterov {
                        let ahead = b.mul(mu, buf2);
                        b.add(d, ahead)
                    } else {
                        buf2
                    }
                } else {
                    d
                }
            }
            Optimizer::Adam { decoupled, .. } => {
                // The decayed gradient is built once per moment, so that each is computed
                // inside its moment's loop instead of in a loop of its own.
                let mut d = || {
                    if *decoupled {
                        grad
                    } else {
                        coupled(&mut b, grad)
                    }
                };
                let (dm, dv) = (d(), d());
                let (b1, b2) = (b.hyper(Hyper::Beta1), b.hyper(Hyper::Beta2));
                let (m, v) = (state(&mut b, 0), state(&mut b, 1));
                let m_keep = b.mul(b1, m);
                let c1 = b.sub(one, b1);
                let m_new = b.mul(c1, dm);
                let m2 = b.add(m_keep, m_new);
                let v_keep = b.mul(b2, v);
                let c2 = b.sub(one, b2);
                let d2 = b.map(Func::of(Elem::Square), dv);
                let v_new = b.mul(c2, d2);
                let v2 = b.add(v_keep, v_new);
                updates.push((Slot::State(first_state), m2));
                updates.push((Slot::State(first_state + 1), v2));
                // step = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps), with the scalar divisions
                // as reciprocals computed once: one division per element, not three.
                let (bc1, bc2, eps) = (
                    b.hyper(Hyper::Bias1),
                    b.hyper(Hyper::Bias2),
                    b.hyper(Hyper::Eps),
                );
                let inv_bc1 = b.map(Func::of(Elem::Recip), bc1);
                let mhat = b.mul(m2, inv_bc1);
                let sv = b.map(Func::of(Elem::Sqrt), v2);
                let sbc = b.map(Func::of(Elem::Sqrt), bc2);
                let inv_sbc = b.map(Func::of(Elem::Recip), sbc);
                let vhat = b.mul(sv, inv_sbc);
                let denom = b.add(vhat, eps);
                b.div(mhat, denom)
            }
            Optimizer::Rmsprop { momentum, .. } => {
                let (alpha, eps) = (b.hyper(Hyper::Alpha), b.hyper(Hyper::Eps));
                let sq = state(&mut b, 0);
                let keep = b.mul(alpha, sq);
                let ca = b.sub(one, alpha);
                let g2 = b.map(Func::of(Elem::Square), grad);
                let new = b.mul(ca, g2);
                let sq2 = b.add(keep, new);
                updates.push((Slot::State(first_state), sq2));
                let root = b.map(Func::of(Elem::Sqrt), sq2);
                let denom = b.add(root, eps);
                let d = b.div(grad, denom);
                if *momentum > 0.0 {
                    let mu = b.hyper(Hyper::Momentum);
                    let buf = state(&mut b, 1);
                    let kept = b.mul(mu, buf);
                    let buf2 = b.add(kept, d);
                    updates.push((Slot::State(first_state + 1), buf2));
                    buf2
                } else {
                    d
                }
            }
        };
        // AdamW shrinks the weights before the step: w ← w − lr·wd·w.
        let base = match opt {
            Optimizer::Adam {
                decoupled: true, ..
            } => {
                let wd = b.hyper(Hyper::WeightDecay);
                let lw = b.mul(lr, wd);
                let shrink = b.mul(lw, w);
                b.sub(w, shrink)
            }
            _ => w,
        };
        let delta = b.mul(lr, step);
        let w2 = b.sub(base, delta);
        updates.push((Slot::Param(p), w2));
        g.updates.extend(updates);
    }
}

/// A forward graph with its backward pass: the objective's gradient with respect to
/// every trainable parameter (`g.grads`, not clipped) times the shard's share of the
/// batch ([`Hyper::ShardWeight`]), and no update. What one shard of a split training step
/// computes (docs/SCALING.md).
pub fn gradient_graph(forward: &Graph) -> Graph {
    let mut g = forward.clone();
    differentiate_scaled(&mut g, Some(Hyper::ShardWeight));
    // Nothing is written back by a shard: its running statistics are averaged.
    g.averaged = std::mem::take(&mut g.updates);
    g
}

/// The rest of a split training step: clipping and the optimizer update of `grads`'s
/// parameters (those of `params`), whose gradients are this graph's first inputs, in
/// order; then the values of `averaged` (a gradient graph's), the next inputs, written
/// into their slots. Its optimizer state is the training graph's, in the same order.
pub fn update_graph(
    params: &[crate::ir::Param],
    grads: &[(usize, NodeId)],
    averaged: &[(Slot, crate::ir::Shape)],
    opt: &Optimizer,
    clip_by: Option<Clip>,
) -> Graph {
    let mut g = Graph::default();
    g.params = params.to_vec();
    for &(p, _) in grads {
        let t = &g.params[p].tensor;
        let (name, shape) = (format!("∇{}", t.name), t.shape.clone());
        let k = g.inputs.len();
        g.inputs.push(Tensor {
            name,
            shape: shape.clone(),
            dtype: DType::F32,
        });
        let node = Builder::new(&mut g).push(Op::Input(k), vec![], shape);
        g.grads.push((p, node));
    }
    if let Some(c) = clip_by {
        clip(&mut g, c);
    }
    optimizer_update(&mut g, opt);
    for (slot, shape) in averaged {
        let k = g.inputs.len();
        g.inputs.push(Tensor {
            name: format!("{slot:?}"),
            shape: shape.clone(),
            dtype: DType::F32,
        });
        let node = Builder::new(&mut g).push(Op::Input(k), vec![], shape.clone());
        g.updates.push((*slot, node));
    }
    g
}

/// The training graph of a forward graph: backward, clipping, optimizer update.
pub fn training_graph(forward: &Graph, opt: &Optimizer, clip_by: Option<Clip>) -> Graph {
    let mut g = forward.clone();
    differentiate(&mut g);
    if let Some(c) = clip_by {
        clip(&mut g, c);
    }
    optimizer_update(&mut g, opt);
    g
}
