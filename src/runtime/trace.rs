//! NaN/Inf tracing: when a training step's loss is not finite, the step is replayed on
//! the reference interpreter from the state before it, and the first operation whose
//! result is not finite though its operands are is named with its place in the model
//! file.

use crate::diag::{Code, Diagnostic};
use crate::exec::State;
use crate::interp::{self, Env};
use crate::ir::{Graph, Hyper, LossKind, NodeId, Op};
use crate::ops::Elem;
use crate::span::Span;
use ndarray::ArrayD;
use std::collections::HashMap;

/// Where the first non-finite value of a step came from.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    /// An operation produced it from finite operands.
    Op(NodeId),
    /// A parameter was already not finite before the step (an earlier update overflowed).
    Param(usize),
    /// The input data holds it.
    Input(usize),
    /// Nothing in the replay was non-finite (the backends disagree): unknown.
    Unknown,
}

/// Replays one step of training graph `g` and finds the origin of its first non-finite
/// value.
pub fn trace(
    g: &Graph,
    state: &State,
    inputs: &[ArrayD<f32>],
    targets: &[ArrayD<f32>],
    hyper: &HashMap<Hyper, f64>,
) -> Origin {
    let batch = inputs
        .first()
        .map_or(1, |a| a.shape().first().copied().unwrap_or(1));
    let env = Env {
        inputs,
        targets,
        params: &state.params,
        states: &state.states,
        hyper,
        batch,
    };
    let roots: Vec<NodeId> = {
        let live = g.live(&g.step_roots());
        (0..g.nodes.len()).filter(|&i| live[i]).collect()
    };
    let Ok(vals) = interp::run::<f32>(g, &env, &roots) else {
        return Origin::Unknown;
    };
    let finite = |n: NodeId| {
        vals[n]
            .as_ref()
            .is_none_or(|v| v.iter().all(|x| x.is_finite()))
    };
    for (i, node) in g.nodes.iter().enumerate() {
        if finite(i) {
            continue;
        }
        match node.op {
            Op::Param(p) => return Origin::Param(p),
            Op::Input(k) | Op::Target(k) => return Origin::Input(k),
            _ if node.args.iter().all(|&a| finite(a)) => return Origin::Op(i),
            _ => {}
        }
    }
    Origin::Unknown
}

/// What operation `op` is, in words, for the diagnostic.
fn describe(op: &Op) -> String {
    match op {
        Op::Map(f) => format!("`{}`", f),
        Op::MapGrad(f) => format!("the derivative of `{}`", f),
        Op::Binary(b) => format!("`{}`", format!("{b:?}").to_lowercase()),
        Op::MatMul { .. } | Op::BatchMatMul { .. } => "a matrix product".into(),
        Op::Conv(_) => "a convolution".into(),
        Op::Loss(k) | Op::LossGrad(k) => format!("the loss `{k:?}`").to_lowercase(),
        other => format!("`{other}`"),
    }
}

/// The likely causes of a non-finite value at `origin`, as the course notes list them.
fn causes(g: &Graph, origin: &Origin, lr: f64, clipped: bool) -> Vec<String> {
    let mut c = Vec::new();
    let op = match origin {
        Origin::Op(n) => Some(&g.nodes[*n].op),
        _ => None,
    };
    let hazard = match op {
        Some(Op::Map(f)) => f.def().traits.hazard,
        Some(Op::Loss(LossKind::CrossEntropy(_))) => Elem::Log.def().traits.hazard,
        Some(Op::Loss(LossKind::Exponential)) => Elem::Exp.def().traits.hazard,
        Some(Op::Binary(crate::ir::Binary::Div)) => Some("division by zero"),
        _ => None,
    };
    c.extend(hazard.map(String::from));
    if matches!(origin, Origin::Input(_)) {
        c.push("bad input values: the data holds NaN or infinite numbers".into());
    } else {
        c.push(format!(
            "the learning rate ({lr}) is too high: the weights grew until they overflowed; try a smaller `lr`"
        ));
        if !clipped {
            c.push("gradients exploded: add `clip norm(1.0)` to the train block".into());
        }
    }
    c
}

/// The diagnostic of a run stopped at `step` of `epoch` because the loss became `loss`.
#[allow(clippy::too_many_arguments)]
pub fn diverged(
    g: &Graph,
    origin: &Origin,
    loss: f64,
    epoch: u64,
    step: u64,
    lr: f64,
    clipped: bool,
    fallback: Span,
    kept: Option<&std::path::Path>,
) -> Diagnostic {
    let message = format!("the loss became {loss} at epoch {epoch}, step {step}");
    let (span, label) = match origin {
        Origin::Op(n) => {
            let node = &g.nodes[*n];
            let span = node.span.unwrap_or(fallback);
            (
                span,
                format!(
                    "{} produced the first non-finite value from finite operands",
                    describe(&node.op)
                ),
            )
        }
        Origin::Param(p) => (
            fallback,
            format!(
                "parameter `{}` was already not finite: the optimizer update of step {} overflowed",
                g.params[*p].tensor.name,
                step.saturating_sub(1)
            ),
        ),
        Origin::Input(k) => (
            fallback,
            format!("input `{}` holds non-finite values", g.inputs[*k].name),
        ),
        Origin::Unknown => (fallback, "the loss is not finite".into()),
    };
    let mut d = Diagnostic::error(Code::E0601, message, span).primary_label(label);
    for c in causes(g, origin, lr, clipped) {
        d = d.with_note(format!("likely cause: {c}"));
    }
    d.with_help(match kept {
        Some(p) => format!(
            "training stopped; the last good checkpoint `{}` is kept",
            p.display()
        ),
        None => "training stopped".into(),
    })
}
