//! Name resolution and shape checking of one model: elaborates the body (pipelines,
//! blocks, shared layers) into a [`CheckedModel`], reporting every independent error.
//! This file owns the elaboration state, scopes, definitions and name resolution; the
//! submodules own ports, expressions, blocks, layer and function rules, and losses.

use super::catalog::{self, Kind};
use super::graph::*;
use crate::diag::{did_you_mean, Code, Diagnostic};
use crate::ir::shape::{Dim, Shape};
use crate::span::Span;
use crate::syntax::ast::{self, Expr, ExprKind, Stmt, TypeExpr};
use std::collections::HashMap;

mod blocks;
mod expr;
mod functions;
mod layers;
mod loss;
mod ports;

/// Blocks may call blocks at most this deep.
pub const MAX_BLOCK_DEPTH: usize = 32;

/// A model expands to at most this many block instances: a block that uses another
/// twice doubles at every level.
pub const MAX_BLOCK_USES: usize = 10_000;

/// A value in scope.
#[derive(Clone, Debug)]
enum Val {
    /// A tensor or labels.
    Node(NodeId),
    /// A `layer` value (applied by calling it, never a tensor).
    Layer,
    /// Checking it failed: silent from here on.
    Error,
}

/// A `layer NAME = call` declaration.
#[derive(Clone, Debug)]
struct LayerVal {
    /// Full parameter prefix.
    prefix: String,
    callee: ast::Ident,
    args: Vec<ast::Arg>,
    span: Span,
    /// The bare name's span (for lints).
    name_span: Span,
    used: bool,
    /// Layer instances created by its uses.
    layers: Vec<LayerId>,
    /// For a shared block: the input type and span of its first use.
    block_input: Option<(Ty, Span)>,
}

/// What is visible while elaborating a model or block body.
struct Scope {
    values: HashMap<String, Val>,
    /// Definition order, for "did you mean" and errors.
    syms: HashMap<String, Dim>,
    /// Prefix of parameter names (`r1.residual.`), empty at model level.
    prefix: String,
    /// Inside a shared block instance: layers with an existing name are reused.
    shared: bool,
    /// Layer values declared in this body.
    layer_vals: HashMap<String, usize>,
    /// Every name the body defines, with where, to explain uses before definitions.
    later: HashMap<String, Span>,
}

/// The names a body defines and where.
fn definitions(body: &[Stmt]) -> HashMap<String, Span> {
    let mut out = HashMap::new();
    for stmt in body {
        let name = match stmt {
            Stmt::Input { name, .. }
            | Stmt::Target { name, .. }
            | Stmt::Let { name, .. }
            | Stmt::Layer { name, .. } => name,
            Stmt::Output {
                name,
                value: Some(_),
                ..
            } => name,
            _ => continue,
        };
        out.entry(name.name.clone()).or_insert(name.span);
    }
    out
}

/// Naming of the layers created by one statement.
struct Naming {
    binding: String,
    totals: HashMap<String, usize>,
    next: HashMap<String, usize>,
    /// Layer instances created by this statement.
    created: Vec<LayerId>,
}

/// The result of checking one model.
pub struct ModelResult {
    /// The model (with error nodes where checking failed).
    pub model: CheckedModel,
    /// Lints silenced by `allow` statements.
    pub allowed: Vec<Code>,
    /// Spans of `layer` values never used (name, span).
    pub unused_layers: Vec<(String, Span)>,
    /// Bindings inside block instances.
    pub block_bindings: Vec<BlockBinding>,
    /// Nodes created inside block bodies (not model-level bindings).
    pub errors: Vec<Diagnostic>,
}

/// Checks one model declaration.
pub fn check_model(
    decl: &ast::ModelDecl,
    blocks: &HashMap<String, ast::BlockDecl>,
    unbatched: bool,
) -> ModelResult {
    let mut e = Elab {
        blocks,
        unbatched,
        m: CheckedModel {
            name: decl.name.name.clone(),
            span: decl.name.span,
            batch_symbol: String::new(),
            inputs: vec![],
            targets: vec![],
            nodes: vec![],
            layers: vec![],
            params: vec![],
            outputs: vec![],
            loss: None,
            regularizers: vec![],
            bindings: vec![],
        },
        diags: vec![],
        layers_by_name: HashMap::new(),
        layer_vals: vec![],
        block_stack: vec![],
        block_uses: 0,
        block_bindings: vec![],
        binding_layers: HashMap::new(),
        allowed: vec![],
        batch_span: None,
    };
    let mut scope = Scope {
        values: HashMap::new(),
        syms: HashMap::new(),
        prefix: String::new(),
        shared: false,
        layer_vals: HashMap::new(),
        later: definitions(&decl.body),
    };
    let mut regularizers = Vec::new();
    let mut loss_span: Option<Span> = None;
    for stmt in &decl.body {
        match stmt {
            Stmt::Input { name, ty, span } | Stmt::Target { name, ty, span } => {
                let is_input = matches!(stmt, Stmt::Input { .. });
                e.port(&mut scope, name, ty, *span, is_input);
            }
            Stmt::Let {
                name,
                annotation,
                value,
                ..
            } => {
                e.binding(&mut scope, name, annotation.as_ref(), value, true);
            }
            Stmt::Layer { name, value, span } => e.layer_decl(&mut scope, name, value, *span),
            Stmt::Output { name, value, span } => {
                let v = match value {
                    Some(v) => e.binding(&mut scope, name, None, v, true),
                    None => e.lookup(&scope, name),
                };
                let prev = e.m.outputs.iter().find(|o| o.name == name.name);
                if let (Some(prev), None) = (prev, value) {
                    let d = Diagnostic::error(
                        Code::E0204,
                        format!("output `{}` is declared twice", name.name),
                        name.span,
                    )
                    .with_label(prev.span, "first declared here");
                    e.diags.push(d);
                }
                if let Some(node) = e.tensor_or_labels(v, name.span) {
                    e.m.outputs.push(Port {
                        name: name.name.clone(),
                        node,
                        span: *span,
                    });
                }
            }
            Stmt::Loss { value, span } => {
                if let Some(prev) = loss_span {
                    e.diags.push(
                        Diagnostic::error(Code::E0204, "a model has at most one `loss`", *span)
                            .with_label(prev, "first loss here")
                            .with_help("add the terms into one loss: `loss a + 0.1 * b`"),
                    );
                    continue;
                }
                loss_span = Some(*span);
                let mut naming = e.naming("loss", value);
                let v = e.expr(&mut scope, &mut naming, value);
                if let Val::Node(n) = v {
                    match &e.m.nodes[n].ty {
                        Ty::Tensor(s) if s.rank() == 0 || (s.rank() == 1 && s.has_batch()) => {
                            e.m.loss = Some(n)
                        }
                        Ty::Error => {}
                        ty => {
                            let msg = format!("the loss must be a scalar, found {ty}");
                            e.diags.push(
                                Diagnostic::error(Code::E0312, msg, value.span)
                                    .primary_label(format!("{ty}"))
                                    .with_help("use a loss function (`mse(pred, y)`) or `mean(...)` of per-sample values"),
                            );
                        }
                    }
                } else if let Val::Layer = v {
                    e.not_a_tensor(value.span);
                }
            }
            Stmt::Regularize { value, on, span } => regularizers.push((value, on, *span)),
            Stmt::Return { span, .. } => e.diags.push(
                Diagnostic::error(Code::E0209, "`return` is only allowed in a block", *span)
                    .with_help("a model names its results with `output`"),
            ),
            Stmt::Allow { lints, .. } => e.allow(lints),
        }
    }
    for (value, on, span) in regularizers {
        e.regularize(&scope, value, on, span);
    }
    if e.m.inputs.is_empty() {
        e.diags.push(
            Diagnostic::error(
                Code::E0211,
                format!("model `{}` has no `input`", decl.name.name),
                decl.name.span,
            )
            .with_help("declare one: `input x: [N, 4]`"),
        );
    } else if !decl.body.iter().any(|s| matches!(s, Stmt::Output { .. })) && loss_span.is_none() {
        e.diags.push(
            Diagnostic::error(
                Code::E0211,
                format!("model `{}` has no `output` and no `loss`", decl.name.name),
                decl.name.span,
            )
            .with_help("name a result with `output out` or add a `loss`"),
        );
    }
    let unused_layers = e
        .layer_vals
        .iter()
        .filter(|l| !l.used)
        .map(|l| (l.prefix.clone(), l.name_span))
        .collect();
    ModelResult {
        model: e.m,
        allowed: e.allowed,
        unused_layers,
        block_bindings: e.block_bindings,
        errors: e.diags,
    }
}

struct Elab<'a> {
    blocks: &'a HashMap<String, ast::BlockDecl>,
    /// The REPL's mode ([`super::CheckOptions::unbatched`]): inputs have fixed sizes and
    /// layers take their first dimension as the batch.
    unbatched: bool,
    m: CheckedModel,
    diags: Vec<Diagnostic>,
    layers_by_name: HashMap<String, LayerId>,
    layer_vals: Vec<LayerVal>,
    block_stack: Vec<String>,
    /// Block instances created so far (bounded by [`MAX_BLOCK_USES`]).
    block_uses: usize,
    /// Bindings inside block instances, for the unused-value lint.
    block_bindings: Vec<BlockBinding>,
    binding_layers: HashMap<String, Vec<LayerId>>,
    allowed: Vec<Code>,
    batch_span: Option<Span>,
}

impl Elab<'_> {
    /// True when the first axis of `shape` is the batch: the batch symbol, or in
    /// unbatched mode any first dimension.
    fn batched(&self, shape: &Shape) -> bool {
        shape.has_batch() || (self.unbatched && shape.rank() > 0)
    }

    fn node(&mut self, op: Op, inputs: Vec<NodeId>, ty: Ty, span: Span, label: String) -> NodeId {
        self.m.nodes.push(Node {
            op,
            inputs,
            ty,
            span,
            label,
        });
        self.m.nodes.len() - 1
    }

    fn err(&mut self, d: Diagnostic) -> Val {
        self.diags.push(d);
        Val::Error
    }

    fn allow(&mut self, lints: &[ast::Ident]) {
        for l in lints {
            match crate::diag::lookup(&l.name) {
                Some(info) if info.code.is_warning() => self.allowed.push(info.code),
                _ => {
                    let lint_names = crate::diag::CODES.iter().filter(|c| !c.lint.is_empty());
                    let mut d = Diagnostic::warning(
                        Code::W0008,
                        format!("unknown lint `{}`", l.name),
                        l.span,
                    )
                    .primary_label("not a lint code or name");
                    if let Some(s) = did_you_mean(&l.name, lint_names.map(|c| c.lint)) {
                        d = d.with_help(format!("did you mean `{s}`?"));
                    } else {
                        d = d.with_help("`kiln explain` lists the lints");
                    }
                    self.diags.push(d);
                }
            }
        }
    }

    /// Defines a name; false (and an error) when it exists already. Uses after a
    /// redefinition meant its value, which is not checked: the name is an error from here
    /// on, silent downstream, rather than the first definition's value.
    fn define(&mut self, scope: &mut Scope, name: &ast::Ident, v: Val) -> bool {
        if scope.values.contains_key(&name.name) || scope.layer_vals.contains_key(&name.name) {
            scope.values.insert(name.name.clone(), Val::Error);
            self.diags.push(
                Diagnostic::error(
                    Code::E0204,
                    format!("`{}` is defined twice", name.name),
                    name.span,
                )
                .primary_label("redefined here")
                .with_help("bindings are immutable: choose a new name"),
            );
            return false;
        }
        scope.values.insert(name.name.clone(), v);
        true
    }

    fn binding(
        &mut self,
        scope: &mut Scope,
        name: &ast::Ident,
        annotation: Option<&TypeExpr>,
        value: &Expr,
        top: bool,
    ) -> Val {
        if !self.define(scope, name, Val::Error) {
            return Val::Error;
        }
        scope.values.remove(&name.name);
        let mut naming = self.naming(&name.name, value);
        let mut v = self.expr(scope, &mut naming, value);
        let created = naming.created;
        if top {
            self.binding_layers
                .entry(name.name.clone())
                .or_default()
                .extend(created);
        }
        if let (Some(ann), Val::Node(n)) = (annotation, &v) {
            if let Some(expected) = self.annotation_type(scope, ann) {
                let got = &self.m.nodes[*n].ty;
                if *got != Ty::Error && *got != expected {
                    let msg = format!(
                        "`{}` is annotated {expected} but its value is {got}",
                        name.name
                    );
                    let d = Diagnostic::error(Code::E0304, msg, ann.span())
                        .primary_label(format!("annotated {expected}"))
                        .with_label(value.span, format!("{got}"));
                    self.diags.push(d);
                    v = Val::Error;
                }
            }
        }
        if let Val::Layer = v {
            self.diags.push(
                Diagnostic::error(
                    Code::E0207,
                    format!("`{}` would bind a layer, not a tensor", name.name),
                    value.span,
                )
                .with_help(format!(
                    "declare a shared layer with `layer {} = ...`",
                    name.name
                )),
            );
            v = Val::Error;
        }
        if top {
            if let Val::Node(n) = v {
                self.m.bindings.push(Binding {
                    name: name.name.clone(),
                    node: n,
                    span: name.span,
                });
            }
        }
        self.define(scope, name, v.clone());
        v
    }

    fn lookup(&mut self, scope: &Scope, name: &ast::Ident) -> Val {
        if let Some(v) = scope.values.get(&name.name) {
            return v.clone();
        }
        if scope.layer_vals.contains_key(&name.name) {
            return Val::Layer;
        }
        if let Some(sig) = catalog::lookup(&name.name) {
            let help = if sig.tensors == 1 {
                format!("apply it to a tensor: `x |> {0}` or `{0}(x)`", sig.name)
            } else {
                format!("call it with its operands: `{}(a, b)`", sig.name)
            };
            return self.err(
                Diagnostic::error(
                    Code::E0207,
                    format!("`{}` is a function, not a tensor", sig.name),
                    name.span,
                )
                .primary_label("used as a value")
                .with_help(help),
            );
        }
        if self.blocks.contains_key(&name.name) {
            return self.err(
                Diagnostic::error(
                    Code::E0207,
                    format!("`{}` is a block, not a tensor", name.name),
                    name.span,
                )
                .with_help(format!("apply it: `x |> {}`", name.name)),
            );
        }
        if let Some(&def) = scope.later.get(&name.name) {
            return self.err(
                Diagnostic::error(
                    Code::E0201,
                    format!("`{}` is used before it is defined", name.name),
                    name.span,
                )
                .primary_label("used here")
                .with_label(def, "defined later here")
                .with_help("statements run in order: move the definition above this use"),
            );
        }
        let mut d = Diagnostic::error(
            Code::E0201,
            format!("cannot find `{}` in this scope", name.name),
            name.span,
        )
        .primary_label("not defined before this point");
        let names: Vec<&str> = scope
            .values
            .keys()
            .chain(scope.layer_vals.keys())
            .map(String::as_str)
            .collect();
        if let Some(s) = did_you_mean(&name.name, names) {
            d = d.with_help(format!("did you mean `{s}`?"));
        }
        self.err(d)
    }

    fn unknown_callee(&mut self, scope: &Scope, callee: &ast::Ident) -> Val {
        if let Some(Val::Error) = scope.values.get(&callee.name) {
            return Val::Error;
        }
        if scope.values.contains_key(&callee.name) {
            return self.err(
                Diagnostic::error(Code::E0207, format!("`{}` is a tensor, not a layer", callee.name), callee.span)
                    .primary_label("called here")
                    .with_help("declare a shared layer with `layer NAME = dense(...)` to apply it in several places"),
            );
        }
        let mut d = Diagnostic::error(
            Code::E0202,
            format!("unknown layer or function `{}`", callee.name),
            callee.span,
        )
        .primary_label("not a layer, function or block");
        let mut candidates: Vec<&str> = catalog::expression_names().collect();
        candidates.extend(self.blocks.keys().map(String::as_str));
        candidates.extend(scope.layer_vals.keys().map(String::as_str));
        if let Some(s) = did_you_mean(&callee.name, candidates) {
            d = d.with_help(format!("did you mean `{s}`?"));
        }
        self.err(d)
    }

    fn not_a_tensor(&mut self, span: Span) -> Val {
        self.err(
            Diagnostic::error(Code::E0207, "expected a tensor, found a layer", span)
                .with_help("apply the layer to an input: `x |> layer_name`"),
        )
    }

    /// The node of a tensor or labels value (None for errors, which are reported).
    fn tensor_or_labels(&mut self, v: Val, span: Span) -> Option<NodeId> {
        match v {
            Val::Node(n) if self.m.nodes[n].ty != Ty::Error => Some(n),
            Val::Layer => {
                self.not_a_tensor(span);
                None
            }
            _ => None,
        }
    }

    fn naming(&self, binding: &str, value: &Expr) -> Naming {
        let mut totals = HashMap::new();
        self.count_layers(value, &mut totals);
        Naming {
            binding: binding.to_string(),
            totals,
            next: HashMap::new(),
            created: vec![],
        }
    }

    fn count_call(&self, call: &ast::Call, totals: &mut HashMap<String, usize>) {
        let name = &call.callee.name;
        let counted = call.alias.is_none();
        for a in call.args() {
            self.count_layers(&a.value, totals);
        }
        if counted {
            *totals.entry(name.clone()).or_default() += 1;
        }
    }

    fn count_layers(&self, e: &Expr, totals: &mut HashMap<String, usize>) {
        match &e.kind {
            ExprKind::Call(c) => self.count_call(c, totals),
            ExprKind::Pipe { head, stages } => {
                self.count_layers(head, totals);
                for s in stages {
                    self.count_call(s, totals);
                }
            }
            ExprKind::Binary { lhs, rhs, .. } => {
                self.count_layers(lhs, totals);
                self.count_layers(rhs, totals);
            }
            ExprKind::Neg(x) => self.count_layers(x, totals),
            ExprKind::Tuple(xs) | ExprKind::List(xs) | ExprKind::Then(xs) => {
                xs.iter().for_each(|x| self.count_layers(x, totals))
            }
            _ => {}
        }
    }

    /// The name of the next layer (or operation, for labels) of kind `word` in this
    /// statement: `<binding>.<word>[.<k>]`, `k` counting uses of `word` in the statement.
    fn layer_name(
        &self,
        scope: &Scope,
        naming: &mut Naming,
        word: &str,
        alias: Option<&ast::Ident>,
    ) -> String {
        if let Some(a) = alias {
            return format!("{}{}", scope.prefix, a.name);
        }
        let total = naming.totals.get(word).copied().unwrap_or(1);
        let k = naming.next.entry(word.to_string()).or_default();
        let name = if total > 1 {
            format!("{}{}.{word}.{k}", scope.prefix, naming.binding)
        } else {
            format!("{}{}.{word}", scope.prefix, naming.binding)
        };
        *k += 1;
        name
    }
}

/// Is this argument a tensor expression (not a constant)?
fn is_tensor_expr(e: &Expr, scope: &Scope) -> bool {
    match &e.kind {
        ExprKind::Number { .. } | ExprKind::Tuple(_) | ExprKind::List(_) | ExprKind::Then(_) => {
            false
        }
        ExprKind::Str(_) => true,
        ExprKind::Name(id) => {
            !scope.syms.contains_key(&id.name)
                && !matches!(id.name.as_str(), "true" | "false")
                && (scope.values.contains_key(&id.name)
                    || catalog::lookup(&id.name).is_none_or(|s| s.kind != Kind::Init)
                        && !is_word_choice(&id.name))
        }
        ExprKind::Neg(x) => is_tensor_expr(x, scope),
        ExprKind::Binary { lhs, rhs, .. } => {
            is_tensor_expr(lhs, scope) || is_tensor_expr(rhs, scope)
        }
        ExprKind::Call(c) => catalog::lookup(&c.callee.name).is_none_or(|s| s.kind != Kind::Init),
        ExprKind::Pipe { .. } => true,
    }
}

/// Words that are argument values, never tensors.
fn is_word_choice(w: &str) -> bool {
    matches!(w, "tanh" | "relu" | "none")
}
