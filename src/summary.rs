//! `kiln summary`: a Keras-style table of a checked model.

use crate::check::graph::{CheckedModel, Op, ParamRole, Ty};
pub use crate::diag::thousands;
use crate::ir::shape::matmul;
use crate::syntax::ast::BinOp;
use std::collections::HashSet;
use std::fmt::Write;

/// One row of the summary.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Parameter-name prefix or binding label.
    pub name: String,
    /// The operation's word (`dense`, `relu`, `input`, `+`).
    pub kind: String,
    /// Output type.
    pub output: String,
    /// Parameters introduced by this row (shared layers count once).
    pub params: u64,
    /// Forward multiply-adds per sample.
    pub macs: u64,
}

/// Totals of a model.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Totals {
    /// Trained parameter values.
    pub trainable: u64,
    /// Frozen parameter values (e.g. `embedding(frozen: true)`).
    pub frozen: u64,
    /// State values (batchnorm running statistics).
    pub state: u64,
    /// Forward multiply-adds per sample.
    pub macs: u64,
}

/// The rows and totals of a model's summary; the parameters named in `frozen` (its train
/// block's `freeze`) count as frozen.
pub fn summarize(m: &CheckedModel, frozen: &[String]) -> (Vec<Row>, Totals) {
    let mut rows = Vec::new();
    let mut seen_layers = HashSet::new();
    let mut totals = Totals::default();
    for node in &m.nodes {
        let (kind, params, macs) = match &node.op {
            Op::Const(_) => continue,
            Op::Layer(l) => {
                let layer = &m.layers[*l];
                let params = if seen_layers.insert(*l) {
                    layer.params.iter().map(|&p| m.params[p].numel()).sum()
                } else {
                    0
                };
                (layer.kind.word(), params, layer.macs)
            }
            Op::Binary(BinOp::MatMul) => {
                let macs = match (&m.nodes[node.inputs[0]].ty, &m.nodes[node.inputs[1]].ty) {
                    (Ty::Tensor(a), Ty::Tensor(b)) => matmul(a, b)
                        .and_then(|s| s.per_sample())
                        .unwrap_or(0)
                        .saturating_mul(a.last().unwrap_or(1)),
                    _ => 0,
                };
                ("@", 0, macs)
            }
            op => (op.word(), 0, 0),
        };
        totals.macs = totals.macs.saturating_add(macs);
        rows.push(Row {
            name: node.label.clone(),
            kind: kind.to_string(),
            output: node.ty.to_string(),
            params,
            macs,
        });
    }
    for p in &m.params {
        match (p.role, p.trainable && !frozen.contains(&p.name)) {
            (ParamRole::State, _) => totals.state += p.numel(),
            (_, true) => totals.trainable += p.numel(),
            (_, false) => totals.frozen += p.numel(),
        }
    }
    (rows, totals)
}

/// Renders the summary table; the parameters named in `frozen` (its train block's
/// `freeze`) count as frozen.
pub fn render_summary(m: &CheckedModel, frozen: &[String]) -> String {
    let (rows, totals) = summarize(m, frozen);
    let headers = ["Layer", "Kind", "Output shape", "Params", "MACs/sample"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.kind.clone(),
                r.output.clone(),
                thousands(r.params),
                if r.macs == 0 {
                    String::new()
                } else {
                    thousands(r.macs)
                },
            ]
        })
        .collect();
    let mut w = headers.map(|h| h.chars().count());
    for c in &cells {
        for i in 0..5 {
            w[i] = w[i].max(c[i].chars().count());
        }
    }
    let total_width: usize = w.iter().sum::<usize>() + 8;
    let mut out = String::new();
    let _ = writeln!(out, "Model: {}", m.name);
    let rule = "─".repeat(total_width);
    let line = |out: &mut String, c: &[String; 5]| {
        let row = format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {:>w4$}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4]
        );
        let _ = writeln!(out, "{}", row.trim_end());
    };
    let _ = writeln!(out, "{rule}");
    line(&mut out, &headers.map(String::from));
    let _ = writeln!(out, "{}", "═".repeat(total_width));
    for c in &cells {
        line(&mut out, c);
    }
    let _ = writeln!(out, "{rule}");
    let _ = writeln!(out, "Trainable params: {}", thousands(totals.trainable));
    let _ = writeln!(out, "Frozen params:    {}", thousands(totals.frozen));
    let _ = writeln!(out, "State values:     {}", thousands(totals.state));
    let _ = writeln!(
        out,
        "Forward multiply-adds per sample: {}",
        thousands(totals.macs)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
