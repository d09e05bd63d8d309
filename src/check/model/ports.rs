//! Ports and type annotations: the declared types of inputs, outputs and bindings.

use super::{Elab, Scope, Val};
use crate::check::graph::*;
use crate::diag::{Code, Diagnostic};
use crate::ir::shape::{Dim, Shape, MAX_DIM};
use crate::span::Span;
use crate::syntax::ast::{self, TypeExpr};

impl Elab<'_> {
    pub(super) fn port(
        &mut self,
        scope: &mut Scope,
        name: &ast::Ident,
        ty: &TypeExpr,
        span: Span,
        is_input: bool,
    ) {
        let checked = self.port_type(ty);
        let idx = if is_input {
            self.m.inputs.len()
        } else {
            self.m.targets.len()
        };
        let op = if is_input {
            Op::Input(idx)
        } else {
            Op::Target(idx)
        };
        let node = self.node(op, vec![], checked, name.span, name.name.clone());
        if self.define(scope, name, Val::Node(node)) {
            let port = Port {
                name: name.name.clone(),
                node,
                span,
            };
            if is_input {
                self.m.inputs.push(port);
            } else {
                self.m.targets.push(port);
            }
        }
    }

    /// The type of an input or target: the batch symbol first, then sizes.
    fn port_type(&mut self, ty: &TypeExpr) -> Ty {
        let (shape_expr, classes) = match ty {
            TypeExpr::Tensor(s) => (s, None),
            TypeExpr::Class { shape, classes, .. } => (shape, Some(classes)),
        };
        let mut dims = Vec::new();
        let mut ok = true;
        for (i, d) in shape_expr.dims.iter().enumerate() {
            match (&d.kind, i) {
                (ast::DimKind::Sym(s), 0) => {
                    if self.m.batch_symbol.is_empty() {
                        self.m.batch_symbol = s.clone();
                        self.batch_span = Some(d.span);
                    } else if *s != self.m.batch_symbol {
                        let mut diag = Diagnostic::error(
                            Code::E0311,
                            format!(
                                "the batch dimension is `{}`, found `{s}`",
                                self.m.batch_symbol
                            ),
                            d.span,
                        )
                        .primary_label("every input and target starts with the same batch symbol");
                        if let Some(b) = self.batch_span {
                            diag = diag.with_label(b, "batch symbol declared here");
                        }
                        self.diags.push(diag);
                        ok = false;
                    }
                    dims.push(Dim::Batch);
                }
                (ast::DimKind::Size(n), 0) if self.unbatched => match self.size_dim(*n, d.span) {
                    Some(n) => dims.push(Dim::Fixed(n)),
                    None => ok = false,
                },
                (ast::DimKind::Size(_), 0) => {
                    self.diags.push(
                        Diagnostic::error(
                            Code::E0311,
                            "the first dimension must be the batch symbol",
                            d.span,
                        )
                        .primary_label("a fixed size here")
                        .with_help("write the batch dimension as a symbol: `[N, ...]`"),
                    );
                    ok = false;
                }
                (ast::DimKind::Sym(s), _) => {
                    self.diags.push(
                        Diagnostic::error(
                            Code::E0311,
                            format!("dimension `{s}` is not known at compile time"),
                            d.span,
                        )
                        .primary_label("only the first (batch) dimension may be a symbol")
                        .with_help("give the size as a number"),
                    );
                    ok = false;
                }
                (ast::DimKind::Size(n), _) => match self.size_dim(*n, d.span) {
                    Some(n) => dims.push(Dim::Fixed(n)),
                    None => ok = false,
                },
            }
        }
        if shape_expr.dims.is_empty() && !self.unbatched {
            self.diags.push(
                Diagnostic::error(
                    Code::E0311,
                    "an input or target needs at least the batch dimension",
                    shape_expr.span,
                )
                .with_help("write `[N]` for one value per sample"),
            );
            ok = false;
        }
        let classes = match classes {
            Some(c) => match &c.kind {
                ast::DimKind::Size(n) => match self.size_dim(*n, c.span) {
                    Some(n) => Some(n),
                    None => return Ty::Error,
                },
                ast::DimKind::Sym(s) => {
                    self.diags.push(
                        Diagnostic::error(
                            Code::E0311,
                            format!("the class count `{s}` is not a number"),
                            c.span,
                        )
                        .with_help("write the number of classes: `class[N] of 10`"),
                    );
                    return Ty::Error;
                }
            },
            None => None,
        };
        if !ok {
            return Ty::Error;
        }
        let shape = Shape::new(dims);
        match classes {
            Some(classes) => Ty::Labels { shape, classes },
            None => Ty::Tensor(shape),
        }
    }

    fn size_dim(&mut self, n: u64, span: Span) -> Option<u64> {
        if n == 0 || n > MAX_DIM {
            self.diags.push(
                Diagnostic::error(Code::E0311, format!("dimension {n} is out of range"), span)
                    .primary_label("sizes are between 1 and 2^31 − 1"),
            );
            None
        } else {
            Some(n)
        }
    }

    pub(super) fn annotation_type(&mut self, scope: &Scope, ann: &TypeExpr) -> Option<Ty> {
        let (shape, classes) = match ann {
            TypeExpr::Tensor(s) => (s, None),
            TypeExpr::Class { shape, classes, .. } => (shape, Some(classes)),
        };
        let resolve = |d: &ast::Dim, this: &mut Self| -> Option<Dim> {
            match &d.kind {
                ast::DimKind::Size(n) => Some(Dim::Fixed(*n)),
                ast::DimKind::Sym(s) if *s == this.m.batch_symbol && scope.prefix.is_empty() => {
                    Some(Dim::Batch)
                }
                ast::DimKind::Sym(s) => match scope.syms.get(s) {
                    Some(d) => Some(*d),
                    None => {
                        this.diags.push(
                            Diagnostic::error(
                                Code::E0311,
                                format!("unknown dimension `{s}`"),
                                d.span,
                            )
                            .primary_label("not the batch symbol or a block symbol"),
                        );
                        None
                    }
                },
            }
        };
        let dims: Option<Vec<Dim>> = shape.dims.iter().map(|d| resolve(d, self)).collect();
        let shape = Shape::new(dims?);
        match classes {
            None => Some(Ty::Tensor(shape)),
            Some(c) => match resolve(c, self)? {
                Dim::Fixed(classes) => Some(Ty::Labels { shape, classes }),
                Dim::Batch => None,
            },
        }
    }
}
