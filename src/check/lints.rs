//! Lints: the practice of the course notes as warnings (W0001–W0007).

use super::graph::*;
use crate::diag::{Code, Diagnostic};
use crate::span::Span;

/// Saturating activations in a row (without normalization or a residual path) that
/// trigger W0005.
pub const SATURATING_DEPTH: usize = 5;

/// Runs every lint over a checked model.
pub fn lint_model(
    m: &CheckedModel,
    unused_layers: &[(String, Span)],
    block_bindings: &[BlockBinding],
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    symmetric_init(m, &mut out);
    loss_inputs(m, &mut out);
    saturating_stack(m, &mut out);
    dropout_before_batchnorm(m, &mut out);
    unused(m, unused_layers, block_bindings, &mut out);
    out
}

fn symmetric_init(m: &CheckedModel, out: &mut Vec<Diagnostic>) {
    for layer in &m.layers {
        let constant = layer.params.iter().map(|&p| &m.params[p]).find(|p| {
            p.role == ParamRole::Weight && matches!(p.init, Init::Constant(_)) && p.numel() > 1
        });
        if let Some(p) = constant {
            let Init::Constant(v) = p.init else { continue };
            out.push(
                Diagnostic::warning(Code::W0001, format!("every weight of `{}` starts at {v}", layer.name), layer.span)
                    .primary_label("symmetric initialization")
                    .with_note("units that start equal get equal gradients and stay equal: the layer acts as one unit")
                    .with_help("use a random initializer: `init: he` or `init: xavier`"),
            );
        }
    }
}

fn is_squashing(op: &Op) -> bool {
    match op {
        Op::Activation(f) => f.def().traits.squashing,
        Op::Softmax(_) => true,
        _ => false,
    }
}

fn op_word(node: &Node) -> &'static str {
    node.op.word()
}

fn loss_inputs(m: &CheckedModel, out: &mut Vec<Diagnostic>) {
    for node in &m.nodes {
        let Op::Loss(kind) = node.op else { continue };
        let pred = &m.nodes[node.inputs[0]];
        let target = &m.nodes[node.inputs[1]];
        let regression = matches!(kind, LossKind::Mse | LossKind::Mae | LossKind::Huber(_));
        if regression && is_squashing(&pred.op) {
            let w = op_word(pred);
            out.push(
                Diagnostic::warning(Code::W0002, format!("`{w}` directly before a regression loss"), pred.span)
                    .primary_label(format!("`{w}` limits the predictions' range"))
                    .with_label(node.span, "regression loss")
                    .with_help("regression outputs are usually linear: remove the activation, or use `bce`/`cross_entropy` for probabilities"),
            );
        }
        if matches!(kind, LossKind::CrossEntropy(_) | LossKind::Focal(..))
            && matches!(pred.op, Op::Softmax(_) | Op::LogSoftmax(_))
        {
            out.push(
                Diagnostic::warning(Code::W0003, "softmax is applied twice", pred.span)
                    .primary_label("probabilities, not logits")
                    .with_label(node.span, "this loss applies softmax itself")
                    .with_help("pass the logits to the loss and keep softmax for an `output`"),
            );
        }
        if regression && matches!(target.ty, Ty::Labels { .. }) {
            out.push(
                Diagnostic::warning(
                    Code::W0004,
                    "squared or absolute error against class labels",
                    node.span,
                )
                .primary_label("treats class ids as numbers on a line")
                .with_label(target.span, format!("{}", target.ty))
                .with_help("use `cross_entropy(logits, labels)` with logits of shape [N, K]"),
            );
        }
    }
}

fn saturating_stack(m: &CheckedModel, out: &mut Vec<Diagnostic>) {
    let mut depth = vec![0usize; m.nodes.len()];
    for (i, node) in m.nodes.iter().enumerate() {
        let inherited = node.inputs.iter().map(|&j| depth[j]).max().unwrap_or(0);
        depth[i] = match &node.op {
            Op::Activation(f) if f.def().traits.saturating => inherited + 1,
            Op::Layer(l)
                if matches!(
                    m.layers[*l].kind,
                    LayerKind::BatchNorm { .. } | LayerKind::LayerNorm { .. }
                ) =>
            {
                0
            }
            Op::Binary(crate::syntax::ast::BinOp::Add)
                if node
                    .inputs
                    .iter()
                    .all(|&j| !matches!(m.nodes[j].op, Op::Const(_))) =>
            {
                node.inputs.iter().map(|&j| depth[j]).min().unwrap_or(0)
            }
            _ => inherited,
        };
        if depth[i] == SATURATING_DEPTH && inherited < SATURATING_DEPTH {
            out.push(
                Diagnostic::warning(Code::W0005, format!("{SATURATING_DEPTH} saturating activations in a row"), node.span)
                    .primary_label(format!("the {SATURATING_DEPTH}th sigmoid/tanh without normalization or a residual path"))
                    .with_note("sigmoid's derivative is at most 0.25: the gradient reaching the first layers vanishes")
                    .with_help("use relu (or gelu, silu), add batchnorm/layernorm between layers, or residual connections"),
            );
            break;
        }
    }
}

fn dropout_before_batchnorm(m: &CheckedModel, out: &mut Vec<Diagnostic>) {
    for node in &m.nodes {
        let Op::Layer(l) = node.op else { continue };
        if !matches!(m.layers[l].kind, LayerKind::BatchNorm { .. }) {
            continue;
        }
        let input = &m.nodes[node.inputs[0]];
        if matches!(input.op, Op::Dropout(_)) {
            out.push(
                Diagnostic::warning(Code::W0006, "dropout directly before batchnorm", input.span)
                    .primary_label("dropout changes the variance between training and evaluation")
                    .with_label(
                        node.span,
                        "batchnorm learns running statistics from the training variance",
                    )
                    .with_help("put dropout after batchnorm and its activation"),
            );
        }
    }
}

fn unused(
    m: &CheckedModel,
    unused_layers: &[(String, Span)],
    block_bindings: &[BlockBinding],
    out: &mut Vec<Diagnostic>,
) {
    let mut live = vec![false; m.nodes.len()];
    let mut stack: Vec<NodeId> = m.outputs.iter().map(|o| o.node).chain(m.loss).collect();
    while let Some(n) = stack.pop() {
        if !std::mem::replace(&mut live[n], true) {
            stack.extend(&m.nodes[n].inputs);
        }
    }
    for (what, ports) in [("input", &m.inputs), ("target", &m.targets)] {
        for p in ports.iter().filter(|p| !live[p.node]) {
            let help = if what == "target" && m.loss.is_none() {
                "a target is only used by a `loss`".to_string()
            } else {
                format!("remove the {what} or use it")
            };
            out.push(
                Diagnostic::warning(
                    Code::W0007,
                    format!("{what} `{}` does not reach the loss or an output", p.name),
                    m.nodes[p.node].span,
                )
                .primary_label("never used")
                .with_help(help),
            );
        }
    }
    let outputs: Vec<&str> = m.outputs.iter().map(|o| o.name.as_str()).collect();
    for b in m
        .bindings
        .iter()
        .filter(|b| !live[b.node] && !outputs.contains(&b.name.as_str()))
    {
        out.push(
            Diagnostic::warning(
                Code::W0007,
                format!("`{}` does not reach the loss or an output", b.name),
                b.span,
            )
            .primary_label("computed but never used")
            .with_help(format!(
                "remove it, or name it as a result: `output {}`",
                b.name
            )),
        );
    }
    // Inside a block: dead in an instance whose result is used (a dead result is
    // reported where the block is used).
    for b in block_bindings
        .iter()
        .filter(|b| live[b.ret] && !live[b.node])
    {
        out.push(
            Diagnostic::warning(
                Code::W0007,
                format!("`{}` does not reach the block's result", b.name),
                b.span,
            )
            .primary_label("computed but never used")
            .with_help("remove it, or use it in the block's `return`"),
        );
    }
    for (name, span) in unused_layers {
        out.push(
            Diagnostic::warning(
                Code::W0007,
                format!("layer `{name}` is never applied"),
                *span,
            )
            .primary_label("declared here")
            .with_help(format!("apply it (`x |> {name}`) or remove it")),
        );
    }
}
