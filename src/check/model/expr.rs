//! Expressions: constants, names, arithmetic, pipelines, and the routing of calls to
//! layers, blocks, functions and losses.

use super::functions::Fun;
use super::{is_tensor_expr, Elab, Naming, Scope, Val};
use crate::check::args::{bind, eval, Bound};
use crate::check::catalog::{self, Id, MANY};
use crate::check::graph::*;
use crate::diag::{Code, Diagnostic};
use crate::ir::shape::{broadcast, matmul, Dim, Shape};
use crate::span::Span;
use crate::syntax::ast::{self, BinOp, Expr, ExprKind};

impl Elab<'_> {
    pub(super) fn expr(&mut self, scope: &mut Scope, naming: &mut Naming, e: &Expr) -> Val {
        match &e.kind {
            ExprKind::Number { value, .. } => Val::Node(self.node(
                Op::Const(*value),
                vec![],
                Ty::Tensor(Shape::scalar()),
                e.span,
                format!("{value}"),
            )),
            ExprKind::Name(id) => self.lookup(scope, id),
            ExprKind::Call(call) => self.call(scope, naming, call, None),
            ExprKind::Pipe { head, stages } => {
                let mut v = self.expr(scope, naming, head);
                let mut span = head.span;
                for stage in stages {
                    v = self.call(scope, naming, stage, Some((v, span)));
                    span = span.to(stage.span);
                }
                v
            }
            ExprKind::Binary {
                op,
                op_span,
                lhs,
                rhs,
            } => {
                let a = self.expr(scope, naming, lhs);
                let b = self.expr(scope, naming, rhs);
                let lhs_name = match &lhs.kind {
                    ExprKind::Name(id) => Some(id.name.as_str()),
                    _ => None,
                };
                self.binary(
                    *op,
                    *op_span,
                    (a, lhs.span, lhs_name),
                    (b, rhs.span),
                    e.span,
                )
            }
            ExprKind::Neg(x) => {
                let v = self.expr(scope, naming, x);
                match self.arith_operand(v, x.span) {
                    Some(n) => {
                        let ty = self.m.nodes[n].ty.clone();
                        Val::Node(self.node(Op::Neg, vec![n], ty, e.span, "-".into()))
                    }
                    None => Val::Error,
                }
            }
            ExprKind::Str(_) => self.err(
                Diagnostic::error(Code::E0206, "a string is not a tensor", e.span)
                    .with_note("strings are only used for paths in `use` and `data`"),
            ),
            ExprKind::Tuple(_) | ExprKind::List(_) => self.err(
                Diagnostic::error(Code::E0206, "a tuple or list is not a tensor", e.span)
                    .with_note(
                    "tuples and lists are arguments: `conv2d(16, (3, 3))`, `spp(levels: [1, 2])`",
                ),
            ),
            ExprKind::Then(_) => self.err(Diagnostic::error(
                Code::E0209,
                "`then` is only allowed in a `schedule`",
                e.span,
            )),
        }
    }

    /// A tensor operand of arithmetic (labels and layers are errors).
    fn arith_operand(&mut self, v: Val, span: Span) -> Option<NodeId> {
        match v {
            Val::Node(n) => match &self.m.nodes[n].ty {
                Ty::Tensor(_) => Some(n),
                Ty::Labels { .. } => {
                    self.err(
                        Diagnostic::error(Code::E0207, "class labels cannot be used in arithmetic", span)
                            .primary_label(format!("{}", self.m.nodes[n].ty))
                            .with_help("labels are integers for classification losses; declare a float target `[N, 1]` for regression"),
                    );
                    None
                }
                Ty::Error => None,
            },
            Val::Layer => {
                self.not_a_tensor(span);
                None
            }
            Val::Error => None,
        }
    }

    fn binary(
        &mut self,
        op: BinOp,
        op_span: Span,
        (a, sa, lhs_name): (Val, Span, Option<&str>),
        (b, sb): (Val, Span),
        span: Span,
    ) -> Val {
        let (na, nb) = (self.arith_operand(a, sa), self.arith_operand(b, sb));
        let (Some(na), Some(nb)) = (na, nb) else {
            return Val::Error;
        };
        let ta = shape_of(&self.m.nodes[na].ty).cloned().unwrap_or_default();
        let tb = shape_of(&self.m.nodes[nb].ty).cloned().unwrap_or_default();
        let out = if op == BinOp::MatMul {
            match matmul(&ta, &tb) {
                Some(s) => s,
                None => {
                    return self.err(
                        Diagnostic::error(Code::E0306, format!("cannot multiply matrices of shapes {ta} and {tb}"), op_span)
                            .with_label(sa, format!("{ta}"))
                            .with_label(sb, format!("{tb}"))
                            .with_note("`a @ b` contracts the last dimension of `a` with the second-to-last of `b` (per sample)"),
                    )
                }
            }
        } else {
            match broadcast(&ta, &tb) {
                Some(s) => s,
                None => {
                    let verb = match op {
                        BinOp::Add => "add",
                        BinOp::Sub => "subtract",
                        BinOp::Mul => "multiply",
                        _ => "divide",
                    };
                    let mut d = Diagnostic::error(
                        Code::E0301,
                        format!("cannot {verb} tensors of shapes {ta} and {tb}"),
                        sa,
                    )
                    .primary_label(format!("{ta}"))
                    .with_label(sb, format!("{tb}"));
                    if let Some(h) = lhs_name.and_then(|n| projection_help(&ta, &tb, n)) {
                        d = d.with_help(h);
                    } else if ta.has_batch() && tb.has_batch() && ta.rank() != tb.rank() {
                        d = d
                            .with_note("broadcasting aligns shapes at the right, so the batch axes would not meet and every sample would pair with every other")
                            .with_help("give both the same rank: `keepdims: true` on a reduction, or `reshape([N, 1])`");
                    }
                    return self.err(d);
                }
            }
        };
        Val::Node(self.node(
            Op::Binary(op),
            vec![na, nb],
            Ty::Tensor(out),
            span,
            op.symbol().into(),
        ))
    }

    /// Evaluates constant arguments and binds them.
    pub(super) fn const_args(
        &mut self,
        scope: &Scope,
        what: &str,
        params: &'static [(&'static str, catalog::Def)],
        args: &[ast::Arg],
        span: Span,
    ) -> Result<Bound, Diagnostic> {
        let mut syms = scope.syms.clone();
        if !self.m.batch_symbol.is_empty() && scope.prefix.is_empty() {
            syms.insert(self.m.batch_symbol.clone(), Dim::Batch);
        }
        let mut positional = Vec::new();
        let mut named = Vec::new();
        for a in args {
            let c = eval(&a.value, &syms)?;
            match &a.name {
                Some(n) => named.push((n.clone(), c)),
                None => {
                    if let Some((n, _)) = named.last() {
                        return Err(Diagnostic::error(
                            Code::E0205,
                            "positional argument after a named one",
                            a.span,
                        )
                        .with_label(n.span, "named argument here"));
                    }
                    positional.push(c)
                }
            }
        }
        bind(what, params, positional, named, span)
    }

    fn call(
        &mut self,
        scope: &mut Scope,
        naming: &mut Naming,
        call: &ast::Call,
        piped: Option<(Val, Span)>,
    ) -> Val {
        let name = call.callee.name.as_str();
        if let Some(&lv) = scope.layer_vals.get(name) {
            return self.apply_layer_val(scope, naming, lv, call, piped);
        }
        if self.blocks.contains_key(name) {
            return self.apply_block(scope, naming, call, piped, None);
        }
        let Some(sig) = catalog::lookup(name) else {
            return self.unknown_callee(scope, &call.callee);
        };
        let what = match sig.id {
            Id::Layer(l) => Ok(Route::Layer(l)),
            Id::Loss(l) => Ok(Route::Loss(l)),
            Id::Shaping(s) => Ok(Route::Fun(Fun::Shaping(s))),
            Id::Function(f) => Ok(Route::Fun(Fun::Function(f))),
            Id::Elementwise(e) => Ok(Route::Fun(Fun::Elementwise(e))),
            Id::Init(_) => Err("an initializer (`init: ...`)"),
            Id::Regularizer(_) => Err("a regularizer (`regularize ...`)"),
        };
        let route = match what {
            Ok(route) => route,
            Err(what) => {
                return self.err(
                    Diagnostic::error(
                        Code::E0207,
                        format!("`{name}` is {what}, not a layer or function"),
                        call.callee.span,
                    )
                    .primary_label("used in an expression"),
                )
            }
        };
        if let (Some(alias), false) = (&call.alias, matches!(route, Route::Layer(_))) {
            return self.err(
                Diagnostic::error(
                    Code::E0207,
                    format!("`as` names a layer with parameters; `{name}` has none"),
                    alias.span,
                )
                .primary_label("nothing to name"),
            );
        }
        // Tensor operands: the piped value, then leading positional non-constant arguments.
        let mut operands: Vec<(Val, Span)> = piped.into_iter().collect();
        let mut rest: Vec<ast::Arg> = Vec::new();
        for a in call.args() {
            let tensor_slot = sig.tensors == MANY || operands.len() < sig.tensors;
            if a.name.is_none() && rest.is_empty() && tensor_slot && is_tensor_expr(&a.value, scope)
            {
                let v = self.expr(scope, naming, &a.value);
                operands.push((v, a.value.span));
            } else {
                rest.push(a.clone());
            }
        }
        let needed = if sig.tensors == MANY { 2 } else { sig.tensors };
        if operands.len() < needed || (sig.tensors != MANY && operands.len() > sig.tensors) {
            let what = match needed {
                1 => "an input tensor".to_string(),
                n if sig.tensors == MANY => format!("at least {n} tensors"),
                n => format!("{n} tensors"),
            };
            let help = if needed == 1 {
                format!("pipe a tensor into it: `x |> {}`", display_call(call))
            } else {
                format!("pass the tensors first: `{name}(a, b, ...)`")
            };
            return self.err(
                Diagnostic::error(
                    Code::E0205,
                    format!("`{name}` needs {what}, found {}", operands.len()),
                    call.span,
                )
                .primary_label(format!(
                    "{} tensor operand{}",
                    operands.len(),
                    if operands.len() == 1 { "" } else { "s" }
                ))
                .with_help(help),
            );
        }
        let bound = match self.const_args(scope, name, sig.params, &rest, call.span) {
            Ok(b) => b,
            Err(d) => return self.err(d),
        };
        // Operands that failed stay silent.
        let mut nodes = Vec::new();
        for (v, span) in &operands {
            match v {
                Val::Node(n) if self.m.nodes[*n].ty != Ty::Error => nodes.push(*n),
                Val::Node(_) | Val::Error => return Val::Error,
                Val::Layer => return self.not_a_tensor(*span),
            }
        }
        let spans: Vec<Span> = operands.iter().map(|(_, s)| *s).collect();
        let label = match route {
            Route::Layer(_) => String::new(),
            Route::Loss(_) | Route::Fun(_) => self.layer_name(scope, naming, name, None),
        };
        let result = match route {
            Route::Layer(layer) => {
                let lname = self.layer_name(scope, naming, name, call.alias.as_ref());
                self.apply_builtin_layer(
                    sig,
                    layer,
                    &bound,
                    nodes[0],
                    spans[0],
                    call,
                    lname,
                    scope.shared,
                    Some(naming),
                )
            }
            Route::Loss(loss) => self.loss(sig, loss, &bound, &nodes, &spans, call.span),
            Route::Fun(fun) => self.function(sig, fun, &bound, &nodes, &spans, call.span),
        };
        match result {
            Ok((op, ty)) => {
                let label = match &op {
                    Op::Layer(l) => self.m.layers[*l].name.clone(),
                    _ => label,
                };
                Val::Node(self.node(op, nodes, ty, call.span, label))
            }
            Err(d) => self.err(d),
        }
    }
}

/// Shorthand for a node's type.
fn shape_of(ty: &Ty) -> Option<&Shape> {
    ty.shape()
}

/// How a call to a built-in (other than a regularizer or initializer) is checked.
#[derive(Clone, Copy)]
enum Route {
    Layer(catalog::Layer),
    Loss(catalog::Loss),
    Fun(Fun),
}

fn display_call(call: &ast::Call) -> String {
    if call.args().is_empty() {
        call.callee.name.clone()
    } else {
        format!("{}(...)", call.callee.name)
    }
}

/// A help line for a broadcast failure that a projection would fix.
fn projection_help(a: &Shape, b: &Shape, name: &str) -> Option<String> {
    if a.rank() != b.rank() || a.rank() < 2 {
        return None;
    }
    let diff: Vec<usize> = (0..a.rank()).filter(|&i| a.0[i] != b.0[i]).collect();
    let target = b.fixed(diff[0])?;
    match diff.as_slice() {
        [1] if a.rank() == 3 => Some(format!("a 1-wide convolution projects {name} to {target} channels: {name} |> conv1d({target}, 1)")),
        [1] if a.rank() == 4 => Some(format!("a 1×1 convolution projects {name} to {target} channels: {name} |> conv2d({target}, 1)")),
        [i] if *i == a.rank() - 1 => Some(format!("a dense layer projects {name} to {target} features: {name} |> dense({target})")),
        _ => None,
    }
}
