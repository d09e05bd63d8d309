//! Gradient health (`kiln train --diagnose`, `kiln grad`): per layer the gradient norm,
//! the weight norm and the update-to-weight ratio; per activation the fraction of dead
//! ReLU units or saturated sigmoid/tanh units; and warnings, with the course notes'
//! remedies, when gradients vanish or explode.

use super::program::Program;
use crate::diag::{Code, Diagnostic};
use crate::exec::{Backend, RunError, State};
use crate::ir::{Binary, Func, Graph, Hyper, NodeId, Op};
use crate::ops::elementwise::Watch;
use crate::span::Span;
use ndarray::ArrayD;
use serde::Serialize;
use std::collections::HashMap;

/// First-to-last layer gradient-norm ratio below which gradients vanish.
pub const VANISHING_RATIO: f64 = 1e-3;
/// A layer gradient norm above this explodes.
pub const EXPLODING_NORM: f64 = 1e3;
/// Dead or saturated fractions above this are reported.
pub const UNIT_FRACTION: f64 = 0.5;

/// One layer's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerHealth {
    /// The layer (its parameters' name prefix, `h.dense`).
    pub layer: String,
    /// ‖∂loss/∂params‖ over the layer's trainable parameters.
    pub grad_norm: f64,
    /// ‖params‖.
    pub weight_norm: f64,
    /// ‖last update‖ / ‖params‖, when the weights before the last step are known.
    pub update_ratio: Option<f64>,
    /// Where the layer is written.
    #[serde(skip)]
    pub span: Option<Span>,
}

/// One activation's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UnitHealth {
    /// The binding the activation belongs to.
    pub name: String,
    /// `relu`, `sigmoid` or `tanh`.
    pub activation: String,
    /// ReLU: the fraction of units (features) whose input is ≤ 0 for every row of the
    /// batch; sigmoid/tanh: the fraction of outputs within 0.01 of their bounds.
    pub fraction: f64,
    /// Where the activation is written.
    #[serde(skip)]
    pub span: Option<Span>,
}

/// The health of a model on one batch.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Health {
    /// Layers in model order.
    pub layers: Vec<LayerHealth>,
    /// Activations in model order.
    pub units: Vec<UnitHealth>,
}

fn norm<'a>(xs: impl Iterator<Item = &'a ArrayD<f32>>) -> f64 {
    xs.flat_map(|a| a.iter())
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt()
}

/// The layer a parameter belongs to: its name without the last component.
fn layer_of(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(l, _)| l)
}

/// The activations to watch in a forward graph: (node, function). The ReLUs inside
/// leaky compositions (prelu, rrelu) are not activations of their own.
fn activations(g: &Graph) -> Vec<(NodeId, Func)> {
    g.nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| match n.op {
            Op::Map(f) if f.def().traits.watch != Watch::None => Some((i, f)),
            _ => None,
        })
        .filter(|&(i, f)| {
            f.def().traits.watch != Watch::Dead
                || !g
                    .nodes
                    .iter()
                    .any(|m| m.args.contains(&i) && matches!(m.op, Op::Binary(Binary::Sub)))
        })
        .collect()
}

/// Measures the health of `state` on one batch; `before` is the state before the last
/// step (for the update ratio).
#[allow(clippy::too_many_arguments)]
pub fn measure(
    program: &Program,
    train_graph: &Graph,
    backend: &mut dyn Backend,
    state: &State,
    before: Option<&State>,
    inputs: &[ArrayD<f32>],
    targets: &[ArrayD<f32>],
    hyper: &HashMap<Hyper, f64>,
) -> Result<Health, RunError> {
    let (_, grads) = backend.gradients(train_graph, state, inputs, targets, hyper)?;
    let spans: HashMap<&str, Span> = program
        .model
        .layers
        .iter()
        .map(|l| (l.name.as_str(), l.span))
        .collect();
    let mut layers: Vec<LayerHealth> = Vec::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for (p, _) in &grads {
        let layer = layer_of(&train_graph.params[*p].tensor.name);
        match layers.iter().position(|l| l.layer == layer) {
            Some(k) => members[k].push(*p),
            None => {
                layers.push(LayerHealth {
                    layer: layer.to_string(),
                    grad_norm: 0.0,
                    weight_norm: 0.0,
                    update_ratio: None,
                    span: spans.get(layer).copied(),
                });
                members.push(vec![*p]);
            }
        }
    }
    let grad_of: HashMap<usize, &ArrayD<f32>> = grads.iter().map(|(p, g)| (*p, g)).collect();
    for (l, ps) in layers.iter_mut().zip(&members) {
        l.grad_norm = norm(ps.iter().map(|p| grad_of[p]));
        l.weight_norm = norm(ps.iter().map(|&p| &state.params[p]));
        l.update_ratio = before.map(|b| {
            let delta: f64 = ps
                .iter()
                .flat_map(|&p| state.params[p].iter().zip(b.params[p].iter()))
                .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
                .sum::<f64>()
                .sqrt();
            delta / l.weight_norm.max(f64::MIN_POSITIVE)
        });
    }
    let g = &program.forward;
    let acts = activations(g);
    let roots: Vec<NodeId> = acts.iter().map(|&(n, _)| g.nodes[n].args[0]).collect();
    let values = backend.forward(g, state, inputs, targets, &roots)?;
    let units = acts
        .iter()
        .zip(&values)
        .map(|(&(n, f), x)| UnitHealth {
            name: g.nodes[n].name.clone(),
            activation: f.to_string(),
            fraction: match f.def().traits.watch {
                Watch::Dead => dead_fraction(x),
                Watch::Saturated(limit) => saturated(x, limit as f32),
                Watch::None => 0.0,
            },
            span: g.nodes[n].span,
        })
        .collect();
    Ok(Health { layers, units })
}

/// The fraction of units (everything but the batch axis) that are ≤ 0 in every row.
fn dead_fraction(x: &ArrayD<f32>) -> f64 {
    let rows = x.shape().first().copied().unwrap_or(1).max(1);
    let per = x.len() / rows;
    if per == 0 {
        return 0.0;
    }
    let flat: Vec<f32> = x.iter().copied().collect();
    let dead = (0..per)
        .filter(|&u| (0..rows).all(|r| flat[r * per + u] <= 0.0))
        .count();
    dead as f64 / per as f64
}

/// The fraction of pre-activations beyond `limit` in magnitude (the output within 0.01 of
/// its bounds).
fn saturated(x: &ArrayD<f32>, limit: f32) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    x.iter().filter(|v| v.abs() > limit).count() as f64 / x.len() as f64
}

const REMEDIES_VANISHING: &str = "remedies: ReLU-family activations instead of sigmoid/tanh, residual connections, batchnorm between layers, careful initialization (he for ReLU, xavier for tanh)";
const REMEDIES_EXPLODING: &str = "remedies: gradient clipping (`clip norm(1.0)`), a lower learning rate, batchnorm, careful initialization";

/// The warnings a health measurement gives; `fallback` is the span for layers without
/// one (the train block).
pub fn warnings(h: &Health, fallback: Span) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let weighted: Vec<&LayerHealth> = h
        .layers
        .iter()
        .filter(|l| l.grad_norm.is_finite())
        .collect();
    if let (Some(first), Some(last)) = (weighted.first(), weighted.last()) {
        let ratio = first.grad_norm / last.grad_norm.max(f64::MIN_POSITIVE);
        if weighted.len() >= 2 && ratio < VANISHING_RATIO {
            out.push(
                Diagnostic::warning(
                    Code::W0101,
                    format!(
                        "vanishing gradients: the first layer `{}` gets a gradient {ratio:.1e} times the last layer's `{}`",
                        first.layer, last.layer
                    ),
                    first.span.unwrap_or(fallback),
                )
                .primary_label(format!("gradient norm {:.2e}", first.grad_norm))
                .with_note(format!(
                    "`{}` has gradient norm {:.2e}; below a ratio of {VANISHING_RATIO:.0e} the first layers barely learn",
                    last.layer, last.grad_norm
                ))
                .with_help(REMEDIES_VANISHING),
            );
        }
    }
    for l in &h.layers {
        if l.grad_norm.is_nan() || l.grad_norm > EXPLODING_NORM {
            out.push(
                Diagnostic::warning(
                    Code::W0102,
                    format!(
                        "exploding gradients: layer `{}` has a gradient norm of {:.2e}",
                        l.layer, l.grad_norm
                    ),
                    l.span.unwrap_or(fallback),
                )
                .primary_label(format!("gradient norm above {EXPLODING_NORM:.0e}"))
                .with_help(REMEDIES_EXPLODING),
            );
        }
    }
    for u in &h.units {
        if u.fraction <= UNIT_FRACTION {
            continue;
        }
        let pct = u.fraction * 100.0;
        let d = if u.activation == "relu" {
            Diagnostic::warning(
                Code::W0103,
                format!("{pct:.0}% of the ReLU units of `{}` are dead", u.name),
                u.span.unwrap_or(fallback),
            )
            .primary_label(
                "their input is negative for every row of the batch, so their gradient is zero",
            )
            .with_help("a lower learning rate, leaky_relu or elu, or he initialization")
        } else {
            Diagnostic::warning(
                Code::W0104,
                format!("{pct:.0}% of the `{}` outputs of `{}` are saturated", u.activation, u.name),
                u.span.unwrap_or(fallback),
            )
            .primary_label("within 0.01 of their bounds, where the derivative is almost zero")
            .with_help("batchnorm before the activation, smaller initial weights, or a ReLU-family activation")
        };
        out.push(d);
    }
    out
}
