//! Losses and regularizers.

use super::{Elab, Scope};
use crate::check::args::{every, Bound};
use crate::check::catalog::{self, Id, Sig};
use crate::check::graph::*;
use crate::diag::{did_you_mean, Code, Diagnostic};
use crate::ir::shape::{broadcast, Dim, Shape};
use crate::span::Span;
use crate::syntax::ast::{self, Expr, ExprKind};

impl Elab<'_> {
    pub(super) fn regularize(
        &mut self,
        scope: &Scope,
        value: &Expr,
        on: &[ast::Ident],
        span: Span,
    ) {
        let ExprKind::Call(call) = &value.kind else {
            self.diags.push(
                Diagnostic::error(
                    Code::E0206,
                    "`regularize` takes `l1(λ)` or `l2(λ)`",
                    value.span,
                )
                .with_help("for example `regularize l2(1e-4)`"),
            );
            return;
        };
        let other = call.callee.name.as_str();
        let (sig, l1) = match catalog::lookup(other) {
            Some(
                sig @ Sig {
                    id: Id::Regularizer(r),
                    ..
                },
            ) => (
                sig,
                match r {
                    catalog::Regularizer::L1 => true,
                    catalog::Regularizer::L2 => false,
                },
            ),
            _ => {
                let mut d = Diagnostic::error(
                    Code::E0202,
                    format!("unknown regularizer `{other}`"),
                    call.callee.span,
                )
                .primary_label("expected `l1` or `l2`");
                if let Some(s) = did_you_mean(other, ["l1", "l2"]) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                }
                self.diags.push(d);
                return;
            }
        };
        let bound = match self.const_args(scope, sig.name, sig.params, call.args(), call.span) {
            Ok(b) => b,
            Err(d) => {
                self.diags.push(d);
                return;
            }
        };
        let lambda = match bound.float_in("lambda", |v| v >= 0.0, "must be at least 0") {
            Ok(l) => l,
            Err(d) => {
                self.diags.push(d);
                return;
            }
        };
        let mut layers: Vec<LayerId> = Vec::new();
        for name in on {
            if let Some(ls) = self.binding_layers.get(&name.name) {
                layers.extend(ls);
            } else if let Some(&lv) = scope.layer_vals.get(&name.name) {
                layers.extend(self.layer_vals[lv].layers.iter().copied());
                self.layer_vals[lv].used = true;
            } else {
                let candidates: Vec<&str> =
                    self.binding_layers.keys().map(String::as_str).collect();
                let mut d = Diagnostic::error(
                    Code::E0201,
                    format!("`{}` is not a binding or layer of this model", name.name),
                    name.span,
                )
                .primary_label("unknown name");
                if let Some(s) = did_you_mean(&name.name, candidates) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                }
                self.diags.push(d);
            }
        }
        let params = self
            .m
            .params
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.role == ParamRole::Weight
                    && p.trainable
                    && (on.is_empty() || layers.contains(&p.layer))
            })
            .map(|(i, _)| i)
            .collect();
        self.m.regularizers.push(Regularizer {
            l1,
            lambda,
            params,
            span,
        });
    }

    pub(super) fn loss(
        &mut self,
        sig: &Sig,
        loss: catalog::Loss,
        a: &Bound,
        nodes: &[NodeId],
        spans: &[Span],
        call_span: Span,
    ) -> Result<(Op, Ty), Diagnostic> {
        let result = self.loss_shapes(sig, loss, a, nodes, spans, call_span);
        result.map_err(|d| self.trace_extra_axes(d, nodes[0], nodes[1]))
    }

    /// The E0308 of a prediction with more axes than its target, explained where the
    /// extra axes were introduced: a convolution or pooling whose spatial axes were never
    /// flattened, or a recurrent layer that returns every time step. `dense` works on the
    /// last axis of any rank, so such a mistake only shows at the loss.
    fn trace_extra_axes(&self, d: Diagnostic, pred: NodeId, target: NodeId) -> Diagnostic {
        let expected = match &self.m.nodes[target].ty {
            Ty::Labels { shape, .. } => shape.rank() + 1,
            Ty::Tensor(t) => t.rank(),
            Ty::Error => return d,
        };
        let Some(rank) = self.m.nodes[pred].ty.shape().map(Shape::rank) else {
            return d;
        };
        if d.code != Code::E0308 || rank <= expected {
            return d;
        }
        let mut n = pred;
        loop {
            let node = &self.m.nodes[n];
            let shape = match &node.ty {
                Ty::Tensor(s) if s.rank() == rank => s,
                _ => return d,
            };
            let passes = match &node.op {
                Op::Pool {
                    kind,
                    kernel,
                    stride,
                    pad,
                    ..
                } => {
                    let word = match kind {
                        PoolKind::Max => "maxpool",
                        PoolKind::Avg => "avgpool",
                    };
                    let simple = stride == kernel
                        && pad.iter().all(|&p| p == 0)
                        && kernel.iter().all(|&k| k == kernel[0]);
                    let args = if simple {
                        kernel[0].to_string()
                    } else {
                        "...".to_string()
                    };
                    let call = format!("{word}{}d({args})", kernel.len());
                    return spatial(d, node.span, shape, &call);
                }
                Op::Layer(l) => match &self.m.layers[*l].kind {
                    kind @ LayerKind::Conv { .. } => {
                        return spatial(d, node.span, shape, &format!("{}(...)", kind.word()));
                    }
                    kind @ LayerKind::Recurrent { sequence: true, .. } => {
                        return d
                            .with_label(
                                node.span,
                                format!("this returns every time step `{shape}`"),
                            )
                            .with_help(format!(
                                "add `|> last`, or pass `sequence: false` to `{}`",
                                kind.word()
                            ));
                    }
                    LayerKind::Dense { .. }
                    | LayerKind::BatchNorm { .. }
                    | LayerKind::LayerNorm { .. }
                    | LayerKind::Prelu => true,
                    LayerKind::Embedding { .. }
                    | LayerKind::Recurrent { .. }
                    | LayerKind::Block => false,
                },
                Op::Activation(_)
                | Op::Dropout(_)
                | Op::Softmax(_)
                | Op::LogSoftmax(_)
                | Op::Neg
                | Op::Binary(_) => true,
                _ => false,
            };
            let next = node
                .inputs
                .iter()
                .find(|&&i| self.m.nodes[i].ty.shape().is_some_and(|s| s.rank() == rank));
            match next {
                Some(&i) if passes => n = i,
                _ => return d,
            }
        }
    }

    fn loss_shapes(
        &mut self,
        sig: &Sig,
        loss: catalog::Loss,
        a: &Bound,
        nodes: &[NodeId],
        spans: &[Span],
        call_span: Span,
    ) -> Result<(Op, Ty), Diagnostic> {
        let name = sig.name;
        let pred_ty = self.m.nodes[nodes[0]].ty.clone();
        let tgt_ty = self.m.nodes[nodes[1]].ty.clone();
        let scalar = Ty::Tensor(Shape::scalar());
        let Ty::Tensor(pred) = &pred_ty else {
            return Err(Diagnostic::error(
                Code::E0207,
                format!(
                    "the first operand of `{name}` must be a prediction tensor, found {pred_ty}"
                ),
                spans[0],
            )
            .primary_label(format!("{pred_ty}"))
            .with_help(format!(
                "pass the model's output first: `{name}(logits, labels)`"
            )));
        };
        let mismatch = |help: &str| {
            Diagnostic::error(
                Code::E0308,
                format!("`{name}` compares {pred_ty} with {tgt_ty}"),
                spans[1],
            )
            .primary_label(format!("{tgt_ty}"))
            .with_label(spans[0], format!("{pred_ty}"))
            .with_help(help.to_string())
        };
        let classify = |kind: LossKind,
                        pred: &Shape,
                        shape: &Shape,
                        classes: u64|
         -> Result<(Op, Ty), Diagnostic> {
            let mut expect = shape.clone();
            expect.0.push(Dim::Fixed(classes));
            if pred.rank() == expect.rank()
                && pred.0[..pred.rank() - 1] == expect.0[..expect.rank() - 1]
            {
                if pred.last() != Some(classes) {
                    let k = pred.last().unwrap_or(0);
                    return Err(Diagnostic::error(
                        Code::E0307,
                        format!("`{name}` gets {k} logits per sample for {classes} classes"),
                        spans[0],
                    )
                    .primary_label(format!("{pred}: {k} logits"))
                    .with_label(spans[1], format!("{tgt_ty}"))
                    .with_help(format!(
                        "the last layer should have {classes} units: `dense({classes})`"
                    )));
                }
                return Ok((Op::Loss(kind), Ty::Tensor(Shape::scalar())));
            }
            Err(Diagnostic::error(
                Code::E0308,
                format!("`{name}` compares logits {pred} with labels {tgt_ty}"),
                spans[0],
            )
            .primary_label(format!("{pred}"))
            .with_label(spans[1], format!("{tgt_ty}"))
            .with_help(format!(
                "logits have the labels' shape plus a class axis: {expect}"
            )))
        };
        use catalog::Loss as L;
        match loss {
            L::CrossEntropy | L::Focal | L::Hinge | L::ZeroOne => {
                let kind = match loss {
                    L::CrossEntropy => LossKind::CrossEntropy(a.float_in(
                        "smoothing",
                        |v| (0.0..1.0).contains(&v),
                        "must be in [0, 1)",
                    )?),
                    L::Focal => {
                        let reads = (
                            a.float_in("gamma", |v| v >= 0.0, "must be at least 0"),
                            a.float_in("alpha", |v| (0.0..=1.0).contains(&v), "must be in [0, 1]"),
                        );
                        let (gamma, alpha) = every(reads, &mut self.diags)?;
                        LossKind::Focal(gamma, alpha)
                    }
                    L::Hinge => LossKind::Hinge,
                    L::ZeroOne => LossKind::ZeroOne,
                    L::Mae | L::L1Loss | L::Mse | L::Huber | L::Exponential | L::Bce => {
                        unreachable!("matched as a classification loss")
                    }
                };
                match &tgt_ty {
                    Ty::Labels { shape, classes } => classify(kind, pred, shape, *classes),
                    Ty::Tensor(t) if t == pred => Ok((Op::Loss(kind), scalar)),
                    _ => Err(mismatch("pass labels `class[N] of K` with logits `[N, K]`, or a target of the prediction's shape")),
                }
            }
            L::Mae | L::L1Loss | L::Mse | L::Huber | L::Exponential | L::Bce => {
                let kind = match loss {
                    L::Mae | L::L1Loss => LossKind::Mae,
                    L::Mse => LossKind::Mse,
                    L::Huber => {
                        LossKind::Huber(a.float_in("delta", |v| v > 0.0, "must be positive")?)
                    }
                    L::Exponential => LossKind::Exponential,
                    L::Bce => LossKind::Bce,
                    L::CrossEntropy | L::Focal | L::Hinge | L::ZeroOne => {
                        unreachable!("matched as a regression loss")
                    }
                };
                match &tgt_ty {
                    Ty::Labels { shape, classes } => {
                        // Labels as numbers: legal for bce with 2 classes, linted for mse.
                        let fits = pred == shape
                            || (pred.rank() == shape.rank() + 1 && pred.last() == Some(1));
                        if fits && (kind != LossKind::Bce || *classes == 2) {
                            Ok((Op::Loss(kind), scalar))
                        } else {
                            Err(mismatch("for classes use `cross_entropy(logits, labels)` with logits `[N, K]`"))
                        }
                    }
                    Ty::Tensor(t) if t == pred => Ok((Op::Loss(kind), scalar)),
                    Ty::Tensor(t) => {
                        let help = if broadcast(t, pred).is_some() {
                            format!("the shapes would broadcast to a different shape, which is almost always a bug; make the target {pred}")
                        } else {
                            format!("the prediction and the target need the same shape; the target is {t}")
                        };
                        let _ = call_span;
                        Err(mismatch(&help))
                    }
                    Ty::Error => Ok((Op::Loss(kind), scalar)),
                }
            }
        }
    }
}

/// Explains extra axes kept from a convolution or pooling (`call`) at `span`.
fn spatial(d: Diagnostic, span: Span, shape: &Shape, call: &str) -> Diagnostic {
    d.with_label(span, format!("this keeps the spatial axes `{shape}`"))
        .with_help(format!("add `|> flatten` after `{call}`"))
}
