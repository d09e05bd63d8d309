//! Blocks and layer values: `layer` declarations, applying them, expanding block
//! instances and unifying their parameter types with arguments.

use super::{
    definitions, is_tensor_expr, Elab, LayerVal, Naming, Scope, Val, MAX_BLOCK_DEPTH,
    MAX_BLOCK_USES,
};
use crate::check::catalog::{self, Id, Kind, Sig};
use crate::check::graph::*;
use crate::diag::{did_you_mean, Code, Diagnostic};
use crate::ir::shape::Dim;
use crate::span::Span;
use crate::syntax::ast::{self, Expr, ExprKind, Stmt, TypeExpr};
use std::collections::{HashMap, HashSet};

impl Elab<'_> {
    pub(super) fn layer_decl(
        &mut self,
        scope: &mut Scope,
        name: &ast::Ident,
        value: &Expr,
        span: Span,
    ) {
        let (callee, args) = match &value.kind {
            ExprKind::Call(c) => (c.callee.clone(), c.args().to_vec()),
            ExprKind::Name(id) => (id.clone(), vec![]),
            _ => {
                self.diags.push(
                    Diagnostic::error(Code::E0207, "`layer` takes a layer call", value.span)
                        .primary_label("not a layer")
                        .with_help("for example `layer enc = dense(64)`"),
                );
                scope.values.entry(name.name.clone()).or_insert(Val::Error);
                return;
            }
        };
        let is_block = self.blocks.contains_key(&callee.name);
        match catalog::lookup(&callee.name) {
            _ if is_block => {}
            Some(sig) if sig.kind == Kind::Layer => {}
            Some(sig) => {
                self.diags.push(
                    Diagnostic::error(
                        Code::E0207,
                        format!("`{}` has no parameters to share", sig.name),
                        callee.span,
                    )
                    .primary_label("not a layer with parameters")
                    .with_help(format!("use `{}` directly where it is needed", sig.name)),
                );
                scope.values.entry(name.name.clone()).or_insert(Val::Error);
                return;
            }
            None => {
                self.unknown_callee(scope, &callee);
                scope.values.entry(name.name.clone()).or_insert(Val::Error);
                return;
            }
        }
        if scope.values.contains_key(&name.name) || scope.layer_vals.contains_key(&name.name) {
            self.define(scope, name, Val::Error);
            return;
        }
        self.layer_vals.push(LayerVal {
            prefix: format!("{}{}", scope.prefix, name.name),
            callee,
            args,
            span,
            name_span: name.span,
            used: false,
            layers: vec![],
            block_input: None,
        });
        scope
            .layer_vals
            .insert(name.name.clone(), self.layer_vals.len() - 1);
    }

    pub(super) fn apply_layer_val(
        &mut self,
        scope: &mut Scope,
        naming: &mut Naming,
        lv: usize,
        call: &ast::Call,
        piped: Option<(Val, Span)>,
    ) -> Val {
        self.layer_vals[lv].used = true;
        let decl = self.layer_vals[lv].clone();
        let mut operands: Vec<(Val, Span)> = piped.into_iter().collect();
        for a in call.args() {
            if a.name.is_some() || !is_tensor_expr(&a.value, scope) {
                return self.err(
                    Diagnostic::error(
                        Code::E0205,
                        format!(
                            "`{}` is a configured layer; it takes only its input",
                            call.callee.name
                        ),
                        a.span,
                    )
                    .with_label(decl.span, "configured here"),
                );
            }
            let v = self.expr(scope, naming, &a.value);
            operands.push((v, a.value.span));
        }
        if let Some(alias) = &call.alias {
            return self.err(
                Diagnostic::error(
                    Code::E0207,
                    "a `layer` value already has a name",
                    alias.span,
                )
                .with_label(decl.span, format!("named `{}` here", decl.prefix)),
            );
        }
        if self.blocks.contains_key(&decl.callee.name) {
            let fake = ast::Call {
                callee: decl.callee.clone(),
                args: Some(vec![]),
                alias: None,
                span: call.span,
            };
            let mut args = operands.into_iter();
            let first = args.next();
            if args.next().is_some() {
                return self.err(Diagnostic::error(
                    Code::E0205,
                    "a shared block takes its inputs by pipeline",
                    call.span,
                ));
            }
            // One set of parameters: every use must see the same input type.
            if let Some((Val::Node(n), span)) = &first {
                let ty = self.m.nodes[*n].ty.clone();
                match &self.layer_vals[lv].block_input {
                    Some((first_ty, first_span)) if *first_ty != ty && ty != Ty::Error => {
                        let msg = format!(
                            "shared block `{}` is applied to {ty}, but earlier to {first_ty}",
                            decl.prefix
                        );
                        return self.err(
                            Diagnostic::error(Code::E0314, msg, *span)
                                .primary_label(format!("{ty}"))
                                .with_label(*first_span, format!("first applied to {first_ty}"))
                                .with_help("declare a second `layer` for inputs of this shape"),
                        );
                    }
                    Some(_) => {}
                    None => self.layer_vals[lv].block_input = Some((ty, *span)),
                }
            }
            return self.apply_block(scope, naming, &fake, first, Some(decl.prefix.clone()));
        }
        if operands.len() != 1 {
            return self.err(
                Diagnostic::error(
                    Code::E0205,
                    format!("`{}` takes exactly one input", call.callee.name),
                    call.span,
                )
                .with_help(format!("`x |> {}`", call.callee.name)),
            );
        }
        let (v, span) = operands.pop().expect("one operand");
        let node = match v {
            Val::Node(n) if self.m.nodes[n].ty != Ty::Error => n,
            Val::Layer => return self.not_a_tensor(span),
            _ => return Val::Error,
        };
        let (sig, layer) = match catalog::lookup(&decl.callee.name) {
            Some(
                sig @ Sig {
                    id: Id::Layer(layer),
                    ..
                },
            ) => (sig, *layer),
            _ => unreachable!("layer values name catalog layers or blocks"),
        };
        let bound = match self.const_args(scope, sig.name, sig.params, &decl.args, decl.span) {
            Ok(b) => b,
            Err(d) => return self.err(d),
        };
        match self.apply_builtin_layer(
            sig,
            layer,
            &bound,
            node,
            span,
            call,
            decl.prefix.clone(),
            true,
            None,
        ) {
            Ok((op, ty)) => {
                if let Op::Layer(l) = op {
                    if !self.layer_vals[lv].layers.contains(&l) {
                        self.layer_vals[lv].layers.push(l);
                    }
                    naming.created.push(l);
                }
                let label = decl.prefix.clone();
                Val::Node(self.node(op, vec![node], ty, call.span, label))
            }
            Err(d) => self.err(d),
        }
    }

    pub(super) fn apply_block(
        &mut self,
        scope: &mut Scope,
        naming: &mut Naming,
        call: &ast::Call,
        piped: Option<(Val, Span)>,
        shared_prefix: Option<String>,
    ) -> Val {
        let block = &self.blocks[&call.callee.name];
        let name = block.name.name.clone();
        self.block_uses += 1;
        if self.block_stack.len() >= MAX_BLOCK_DEPTH || self.block_uses > MAX_BLOCK_USES {
            if self.block_uses > MAX_BLOCK_USES + 1 {
                return Val::Error;
            }
            let msg = if self.block_stack.len() >= MAX_BLOCK_DEPTH {
                format!("blocks call each other more than {MAX_BLOCK_DEPTH} deep")
            } else {
                format!("blocks expand to more than {MAX_BLOCK_USES} instances")
            };
            self.block_uses = MAX_BLOCK_USES + 1;
            return self.err(
                Diagnostic::error(Code::E0212, msg, call.callee.span)
                    .primary_label("expanded here")
                    .with_note("each use of a block creates its own copy of its layers")
                    .with_help(
                        "share one instance with `layer NAME = block`, or flatten the nesting",
                    ),
            );
        }
        if self.block_stack.contains(&name) {
            let chain = self.block_stack.join("` → `");
            return self.err(
                Diagnostic::error(
                    Code::E0212,
                    format!("block `{name}` uses itself"),
                    call.callee.span,
                )
                .primary_label("recursive use")
                .with_note(format!("through `{chain}` → `{name}`")),
            );
        }
        // Operands: the piped value, then positional tensor arguments; named ones by parameter name.
        let mut operands: Vec<Option<(Val, Span)>> = vec![None; block.params.len()];
        let mut pos = 0;
        if let Some(p) = piped {
            if !operands.is_empty() {
                operands[0] = Some(p);
            }
            pos = 1;
        }
        for a in call.args() {
            let slot = match &a.name {
                None => {
                    pos += 1;
                    pos - 1
                }
                Some(n) => match block.params.iter().position(|p| p.name.name == n.name) {
                    Some(i) => i,
                    None => {
                        let mut d = Diagnostic::error(
                            Code::E0203,
                            format!("block `{name}` has no argument `{}`", n.name),
                            n.span,
                        );
                        if let Some(s) =
                            did_you_mean(&n.name, block.params.iter().map(|p| p.name.name.as_str()))
                        {
                            d = d.with_help(format!("did you mean `{s}`?"));
                        }
                        return self.err(d);
                    }
                },
            };
            if slot >= operands.len() {
                return self.err(
                    Diagnostic::error(
                        Code::E0205,
                        format!(
                            "block `{name}` takes {} argument{}",
                            operands.len(),
                            if operands.len() == 1 { "" } else { "s" }
                        ),
                        a.span,
                    )
                    .primary_label("extra argument")
                    .with_label(block.name.span, "declared here"),
                );
            }
            let v = self.expr(scope, naming, &a.value);
            operands[slot] = Some((v, a.value.span));
        }
        let block = &self.blocks[&call.callee.name];
        let mut syms: HashMap<String, Dim> = HashMap::new();
        let mut values = HashMap::new();
        let mut failed = false;
        for (param, operand) in block.params.iter().zip(&operands) {
            let Some((v, span)) = operand else {
                return self.err(
                    Diagnostic::error(
                        Code::E0205,
                        format!("block `{name}` needs the argument `{}`", param.name.name),
                        call.span,
                    )
                    .with_label(param.name.span, "declared here"),
                );
            };
            let node = match v {
                Val::Node(n) if self.m.nodes[*n].ty != Ty::Error => *n,
                Val::Layer => return self.not_a_tensor(*span),
                _ => {
                    failed = true;
                    continue;
                }
            };
            let ty = self.m.nodes[node].ty.clone();
            if let Err(d) = unify(&param.ty, &ty, &mut syms, *span) {
                self.diags.push(d);
                failed = true;
                continue;
            }
            values.insert(param.name.name.clone(), Val::Node(node));
        }
        if failed {
            return Val::Error;
        }
        let (prefix, shared) = match &shared_prefix {
            Some(p) => (format!("{p}."), true),
            None => (
                format!(
                    "{}.",
                    self.layer_name(scope, naming, &name, call.alias.as_ref())
                ),
                scope.shared,
            ),
        };
        let block = self.blocks[&call.callee.name].clone();
        let mut inner = Scope {
            values,
            syms,
            prefix,
            shared,
            layer_vals: HashMap::new(),
            later: definitions(&block.body),
        };
        self.block_stack.push(name.clone());
        let first_layer = self.m.layers.len();
        let mut result = None;
        let mut inner_bindings = Vec::new();
        for stmt in &block.body {
            match stmt {
                Stmt::Let {
                    name,
                    annotation,
                    value,
                    ..
                } => {
                    let v = self.binding(&mut inner, name, annotation.as_ref(), value, false);
                    if let Val::Node(n) = v {
                        inner_bindings.push((name.name.clone(), n, name.span));
                    }
                }
                Stmt::Layer { name, value, span } => {
                    self.layer_decl(&mut inner, name, value, *span)
                }
                Stmt::Return { value, span } => {
                    if result.is_some() {
                        self.diags.push(Diagnostic::error(
                            Code::E0204,
                            "a block returns once",
                            *span,
                        ));
                        continue;
                    }
                    let mut nm = self.naming("return", value);
                    let v = self.expr(&mut inner, &mut nm, value);
                    naming.created.extend(nm.created);
                    result = Some(v);
                }
                Stmt::Allow { lints, .. } => self.allow(lints),
                other => {
                    let word = match other {
                        Stmt::Input { .. } => "input",
                        Stmt::Target { .. } => "target",
                        Stmt::Output { .. } => "output",
                        Stmt::Loss { .. } => "loss",
                        _ => "regularize",
                    };
                    self.diags.push(
                        Diagnostic::error(
                            Code::E0209,
                            format!("`{word}` is not allowed in a block"),
                            other.span(),
                        )
                        .primary_label("only in a model")
                        .with_help("a block takes its inputs as arguments and ends with `return`"),
                    );
                }
            }
        }
        self.block_stack.pop();
        naming.created.extend(first_layer..self.m.layers.len());
        if let Some(Val::Node(ret)) = result {
            for (name, node, span) in inner_bindings {
                self.block_bindings.push(BlockBinding {
                    name,
                    node,
                    span,
                    ret,
                });
            }
        }
        match result {
            Some(v) => v,
            None => self.err(
                Diagnostic::error(
                    Code::E0211,
                    format!("block `{name}` has no `return`"),
                    block.name.span,
                )
                .with_help("end the block with `return <expression>`"),
            ),
        }
    }
}

/// Unifies a block parameter's declared type with an argument's type.
fn unify(
    param: &TypeExpr,
    arg: &Ty,
    syms: &mut HashMap<String, Dim>,
    span: Span,
) -> Result<(), Diagnostic> {
    let (pshape, pclasses) = match param {
        TypeExpr::Tensor(s) => (s, None),
        TypeExpr::Class { shape, classes, .. } => (shape, Some(classes)),
    };
    let (shape, classes) = match (arg, pclasses) {
        (Ty::Tensor(s), None) => (s, None),
        (Ty::Labels { shape, classes }, Some(_)) => (shape, Some(*classes)),
        _ => {
            return Err(Diagnostic::error(
                Code::E0305,
                format!("the block expects {}, found {arg}", describe_param(param)),
                span,
            )
            .primary_label(format!("{arg}"))
            .with_label(param.span(), "declared here"))
        }
    };
    if pshape.dims.len() != shape.rank() {
        return Err(Diagnostic::error(
            Code::E0305,
            format!(
                "the block expects a rank-{} tensor, found {arg}",
                pshape.dims.len()
            ),
            span,
        )
        .primary_label(format!("{arg}"))
        .with_label(pshape.span, "declared here"));
    }
    let mut pairs: Vec<(&ast::Dim, Dim)> =
        pshape.dims.iter().zip(shape.0.iter().copied()).collect();
    if let (Some(pc), Some(c)) = (pclasses, classes) {
        pairs.push((pc, Dim::Fixed(c)));
    }
    let mut seen: HashSet<String> = HashSet::new();
    for (pd, d) in pairs {
        match &pd.kind {
            ast::DimKind::Size(n) if Dim::Fixed(*n) == d => {}
            ast::DimKind::Size(n) => {
                return Err(Diagnostic::error(
                    Code::E0305,
                    format!("the block expects size {n} here, found {d} in {arg}"),
                    span,
                )
                .primary_label(format!("{arg}"))
                .with_label(pd.span, format!("expects {n}")))
            }
            ast::DimKind::Sym(s) => match syms.get(s) {
                Some(prev) if *prev != d => {
                    return Err(Diagnostic::error(
                        Code::E0305,
                        format!("`{s}` would be both {prev} and {d}"),
                        span,
                    )
                    .primary_label(format!("{arg}"))
                    .with_label(
                        pd.span,
                        format!("`{s}` is {prev} from an earlier dimension"),
                    ))
                }
                Some(_) => {}
                None => {
                    syms.insert(s.clone(), d);
                    seen.insert(s.clone());
                }
            },
        }
    }
    Ok(())
}

fn describe_param(t: &TypeExpr) -> &'static str {
    match t {
        TypeExpr::Tensor(_) => "a tensor",
        TypeExpr::Class { .. } => "class labels",
    }
}
