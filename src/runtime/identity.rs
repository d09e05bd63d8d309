//! A model's identity in its checkpoints: a canonical text describing what a checkpoint
//! depends on, and its digest.
//!
//! The text is written here field by field from the checked model, in the DSL's own
//! words, and never from a `Debug` printout or the IR: renaming a Rust type, reordering
//! the checker's tables or changing how a layer is lowered leaves it unchanged, so saved
//! checkpoints stay loadable across such refactors. Changing the format is deliberate: a
//! new format gets a new [`SCHEME`], and `tests/checkpoint.rs` pins the digest of every
//! example model so that no change goes unnoticed.
//!
//! Scheme `kiln-model-1`, one item per line, `\n`-terminated; for `examples/iris.kiln`:
//!
//! ```text
//! kiln-model-1
//! input features: [N, 4]
//! target label: class[N] of 3
//! output logits: [N, 3]
//! layer h.dense: dense(units: 16, bias: true) [N, 4] -> [N, 16]
//!   param h.dense.bias: f32[16]
//!   param h.dense.weight: f32[4, 16]
//! layer logits.dense: dense(units: 3, bias: true) [N, 16] -> [N, 3]
//!   param logits.dense.bias: f32[3]
//!   param logits.dense.weight: f32[16, 3]
//! ```
//!
//! - the scheme tag;
//! - inputs, then targets, then outputs, each in declaration order with its declared
//!   type: a shape `[N, 4]`, or class labels `class[N] of 3`. The batch dimension is
//!   always written `N`, whatever symbol the model uses;
//! - every parameterized layer, sorted by name: its DSL word, the arguments that decide
//!   what it computes from its tensors (not `init`, `frozen` or batchnorm's `momentum`,
//!   which only affect training) in the DSL's spelling, and its input and output types;
//!   below it, its parameters and state tensors sorted by name, each with its dtype and
//!   shape (without the batch dimension).
//!
//! Numbers are written in Rust's shortest round-trip form (`0.00001`). The model's name,
//! the layers between parameterized ones (activations, pooling, dropout), the loss,
//! regularizers and the train block are not part of the identity: a checkpoint's tensors
//! keep their meaning when they change.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::checkpoint;
use crate::check::graph::{Cell, CheckedModel, LayerKind, Ty};
use crate::ir::shape::{Dim, Shape};

/// The format of the canonical text, stored beside the digest in checkpoint metadata.
pub const SCHEME: &str = "kiln-model-1";

/// The metadata key of the model digest.
pub const DIGEST_KEY: &str = "model_hash";

/// The metadata key of the digest's scheme.
pub const SCHEME_KEY: &str = "model_hash.scheme";

/// The canonical text of `model` (see the module documentation for the format).
pub fn describe(model: &CheckedModel) -> String {
    let mut text = format!("{SCHEME}\n");
    let ports = [
        ("input", &model.inputs),
        ("target", &model.targets),
        ("output", &model.outputs),
    ];
    for (word, list) in ports {
        for port in list {
            let ty = &model.nodes[port.node].ty;
            writeln!(text, "{word} {}: {}", port.name, ty_text(ty)).expect("a String");
        }
    }
    let mut layers: Vec<_> = model.layers.iter().enumerate().collect();
    layers.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    for (id, layer) in layers {
        writeln!(
            text,
            "layer {}: {}({}) {} -> {}",
            layer.name,
            layer.kind.word(),
            arguments(&layer.kind),
            ty_text(&layer.input),
            ty_text(&layer.output)
        )
        .expect("a String");
        let mut params: Vec<_> = model.params.iter().filter(|p| p.layer == id).collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        for param in params {
            writeln!(text, "  param {}: f32{}", param.name, list(&param.shape)).expect("a String");
        }
    }
    text
}

/// The SHA-256 of [`describe`] in lowercase hex: the `model_hash` of its checkpoints.
pub fn digest(model: &CheckedModel) -> String {
    checkpoint::digest(&describe(model))
}

/// Whether checkpoint metadata names a model other than the one whose digest is `hash`.
///
/// Only a digest of this [`SCHEME`] is compared. Checkpoints written before schemes
/// existed carry a `model_hash` of the forward IR graph's printout (node numbers, IR op
/// names, partly `Debug` output), which changes with the compiler and cannot be
/// recomputed as it was; a digest of another scheme comes from another version of Kiln. Neither is
/// evidence either way, so both are ignored, and such a checkpoint is accepted on the
/// same terms as a plain safetensors file: every parameter must be present under its
/// name with its shape (the loader converts every tensor to f32, the only dtype Kiln's
/// parameters have), and a resumed run finds its optimizer state by name and shape.
pub fn names_another_model(meta: &BTreeMap<String, String>, hash: &str) -> bool {
    meta.get(SCHEME_KEY).map(String::as_str) == Some(SCHEME)
        && meta.get(DIGEST_KEY).is_some_and(|h| h != hash)
}

/// The arguments of a layer, in the DSL's spelling and order.
fn arguments(kind: &LayerKind) -> String {
    match kind {
        LayerKind::Dense { units, bias } => format!("units: {units}, bias: {bias}"),
        LayerKind::Conv {
            out,
            kernel,
            stride,
            pad,
            dilation,
            bias,
        } => format!(
            "out: {out}, k: {}, stride: {}, pad: {}, dilation: {}, bias: {bias}",
            list(kernel),
            list(stride),
            list(pad),
            list(dilation)
        ),
        LayerKind::BatchNorm { eps, .. } | LayerKind::LayerNorm { eps } => format!("eps: {eps}"),
        LayerKind::Prelu | LayerKind::Block => String::new(),
        LayerKind::Embedding { vocab, dim } => format!("vocab: {vocab}, dim: {dim}"),
        LayerKind::Recurrent {
            cell,
            hidden,
            activation,
            bidirectional,
            sequence,
        } => {
            // Only the Elman RNN takes an activation; the gated cells' are fixed.
            let activation = match cell {
                Cell::Rnn => format!(", activation: {}", activation.word()),
                Cell::Lstm | Cell::Gru => String::new(),
            };
            format!("h: {hidden}{activation}, bidirectional: {bidirectional}, sequence: {sequence}")
        }
    }
}

/// A declared type: `[N, 4]`, or `class[N] of 3`.
fn ty_text(ty: &Ty) -> String {
    match ty {
        Ty::Tensor(shape) => shape_text(shape),
        Ty::Labels { shape, classes } => format!("class{} of {classes}", shape_text(shape)),
        Ty::Error => "error".to_string(),
    }
}

/// `[N, 4]`: the batch dimension is `N`.
fn shape_text(shape: &Shape) -> String {
    let dims: Vec<String> = shape
        .dims()
        .iter()
        .map(|d| match d {
            Dim::Batch => "N".to_string(),
            Dim::Fixed(n) => n.to_string(),
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

/// `[3, 3]`.
fn list(values: &[u64]) -> String {
    let values: Vec<String> = values.iter().map(u64::to_string).collect();
    format!("[{}]", values.join(", "))
}
