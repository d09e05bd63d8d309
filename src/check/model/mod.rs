//! Name resolution and shape checking of one model: elaborates the body (pipelines,
//! blocks, shared layers) into a [`CheckedModel`], reporting every independent error.

use super::args::{bind, bind_call, eval, Bound, CVal, Const};
use super::catalog::{self, Id, Kind, Sig, MANY};
use super::graph::*;
use crate::diag::{did_you_mean, Code, Diagnostic};
use crate::ir::shape::{broadcast, matmul, window_out, Dim, Shape, MAX_DIM};
use crate::ops::elementwise::{self, Choice, Elem};
use crate::span::Span;
use crate::syntax::ast::{self, BinOp, Expr, ExprKind, Stmt, TypeExpr};
use std::collections::{HashMap, HashSet};

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

/// Shorthand for a node's type.
fn shape_of(ty: &Ty) -> Option<&Shape> {
    ty.shape()
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

    // ---- declarations ----

    fn port(
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

    /// Defines a name; false (and an error) when it exists already.
    fn define(&mut self, scope: &mut Scope, name: &ast::Ident, v: Val) -> bool {
        if scope.values.contains_key(&name.name) || scope.layer_vals.contains_key(&name.name) {
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

    fn annotation_type(&mut self, scope: &Scope, ann: &TypeExpr) -> Option<Ty> {
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

    fn layer_decl(&mut self, scope: &mut Scope, name: &ast::Ident, value: &Expr, span: Span) {
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

    fn regularize(&mut self, scope: &Scope, value: &Expr, on: &[ast::Ident], span: Span) {
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

    // ---- names ----

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

    // ---- naming of parameters ----

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

    // ---- expressions ----

    fn expr(&mut self, scope: &mut Scope, naming: &mut Naming, e: &Expr) -> Val {
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
    fn const_args(
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

    fn apply_layer_val(
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

    fn apply_block(
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

    // ---- built-in layers ----

    #[allow(clippy::too_many_arguments)]
    fn apply_builtin_layer(
        &mut self,
        sig: &Sig,
        layer: catalog::Layer,
        a: &Bound,
        input: NodeId,
        in_span: Span,
        call: &ast::Call,
        name: String,
        shared: bool,
        naming: Option<&mut Naming>,
    ) -> Result<(Op, Ty), Diagnostic> {
        let in_ty = self.m.nodes[input].ty.clone();
        if let Some(&existing) = self.layers_by_name.get(&name) {
            if !shared {
                return Err(Diagnostic::error(
                    Code::E0204,
                    format!("two layers are named `{name}`"),
                    call.span,
                )
                .primary_label("second layer with this name")
                .with_label(self.m.layers[existing].span, "first one here")
                .with_help("give each a different `as` name"));
            }
            let l = &self.m.layers[existing];
            if l.input != in_ty {
                return Err(Diagnostic::error(
                    Code::E0314,
                    format!(
                        "shared layer `{name}` is applied to {in_ty}, but earlier to {}",
                        l.input
                    ),
                    in_span,
                )
                .primary_label(format!("{in_ty}"))
                .with_label(l.span, format!("first applied to {}", l.input))
                .with_help("declare a second layer for inputs of this shape"));
            }
            return Ok((Op::Layer(existing), l.output.clone()));
        }
        let (kind, out, params, macs) = self.layer_rule(sig, layer, a, &in_ty, in_span)?;
        let id = self.m.layers.len();
        let mut ids = Vec::new();
        for (pname, shape, init, role, trainable) in params {
            ids.push(self.m.params.len());
            self.m.params.push(ParamSpec {
                name: format!("{name}.{pname}"),
                shape,
                init,
                role,
                trainable,
                layer: id,
            });
        }
        self.m.layers.push(LayerInst {
            name: name.clone(),
            kind,
            input: in_ty,
            output: out.clone(),
            params: ids,
            span: call.span,
            macs,
            default_init: a.get("init").is_none(),
        });
        self.layers_by_name.insert(name, id);
        if let Some(n) = naming {
            n.created.push(id);
        }
        Ok((Op::Layer(id), out))
    }

    /// Kind, output type, parameters and MACs per sample of a built-in layer.
    fn layer_rule(
        &mut self,
        sig: &Sig,
        layer: catalog::Layer,
        a: &Bound,
        in_ty: &Ty,
        in_span: Span,
    ) -> Result<LayerRule, Diagnostic> {
        use catalog::Layer as L;
        let name = sig.name;
        // Every layer but `embedding` reads a tensor.
        let tensor = || match in_ty {
            Ty::Tensor(s) => Ok(s.clone()),
            _ => Err(Diagnostic::error(
                Code::E0207,
                format!("`{name}` takes a tensor, found {in_ty}"),
                in_span,
            )
            .primary_label(format!("{in_ty}"))
            .with_help("class labels feed `embedding` or a classification loss")),
        };
        let rank_err = |shape: &Shape, want: &str, example: &str| {
            Diagnostic::error(
                Code::E0302,
                format!("`{name}` expects {want}, found {shape}"),
                in_span,
            )
            .primary_label(format!("{shape}"))
            .with_help(example.to_string())
        };
        let per_sample_rest = |s: &Shape, skip_last: bool| -> u64 {
            let end = if skip_last { s.rank() - 1 } else { s.rank() };
            (1..end).filter_map(|i| s.fixed(i)).product()
        };
        match layer {
            L::Embedding => {
                let Ty::Labels { shape, classes } = in_ty else {
                    return Err(Diagnostic::error(
                        Code::E0207,
                        format!("`embedding` takes class ids, found {in_ty}"),
                        in_span,
                    )
                    .primary_label(format!("{in_ty}"))
                    .with_help("declare the input as `class[N, T] of VOCAB`"));
                };
                let vocab = a.size("vocab")?;
                let dim = a.size("dim")?;
                if vocab != *classes {
                    return Err(Diagnostic::error(Code::E0307, format!("`embedding` has a vocabulary of {vocab} but its input has {classes} classes"), a.span_of("vocab"))
                    .primary_label(format!("vocab {vocab}"))
                    .with_label(in_span, format!("{in_ty}")));
                }
                let frozen = a.boolean("frozen")?;
                let init = self.init(a, Init::Normal(1.0))?;
                let mut out = shape.clone();
                out.0.push(Dim::Fixed(dim));
                let kind = LayerKind::Embedding { vocab, dim };
                Ok((
                    kind,
                    Ty::Tensor(out),
                    vec![("weight", vec![vocab, dim], init, ParamRole::Weight, !frozen)],
                    0,
                ))
            }
            L::Dense => {
                let shape = tensor()?;
                if shape.rank() < 2 || !self.batched(&shape) {
                    return Err(rank_err(
                        &shape,
                        "`[N, ..., F]`",
                        "add a feature axis: `reshape([N, 1])`",
                    ));
                }
                let f = shape.last().unwrap_or(1);
                let units = a.size("units")?;
                let bias = a.boolean("bias")?;
                let init = self.init(a, Init::Xavier)?;
                let mut ps = vec![("weight", vec![f, units], init, ParamRole::Weight, true)];
                if bias {
                    ps.push((
                        "bias",
                        vec![units],
                        Init::Constant(0.0),
                        ParamRole::Bias,
                        true,
                    ));
                }
                let macs = per_sample_rest(&shape, true)
                    .saturating_mul(f)
                    .saturating_mul(units);
                Ok((
                    LayerKind::Dense { units, bias },
                    Ty::Tensor(shape.with_last(units)),
                    ps,
                    macs,
                ))
            }
            L::Conv1d | L::Conv2d => {
                let shape = tensor()?;
                let nd = if layer == L::Conv1d { 1 } else { 2 };
                if shape.rank() != nd + 2 || !self.batched(&shape) {
                    return Err(if nd == 1 {
                        rank_err(
                            &shape,
                            "`[N, C, L]`",
                            "reshape the input: `reshape([N, 1, L])`",
                        )
                    } else {
                        rank_err(
                            &shape,
                            "`[N, C, H, W]`",
                            "reshape the input: `reshape([N, 1, H, W])`",
                        )
                    });
                }
                let c = shape.fixed(1).unwrap_or(1);
                let out = a.size("out")?;
                let k = a.ints("k", nd, 1)?;
                let stride = a.ints("stride", nd, 1)?;
                let pad = a.ints("pad", nd, 0)?;
                let dil = a.ints("dilation", nd, 1)?;
                let bias = a.boolean("bias")?;
                let init = self.init(a, Init::Xavier)?;
                let mut dims = vec![shape.0[0], Dim::Fixed(out)];
                for i in 0..nd {
                    let len = shape.fixed(2 + i).unwrap_or(1);
                    dims.push(Dim::Fixed(self.window(
                        len, k[i], stride[i], pad[i], dil[i], a, in_span, &shape,
                    )?));
                }
                let out_shape = Shape::new(dims);
                let mut wshape = vec![out, c];
                wshape.extend(&k);
                let mut ps = vec![("weight", wshape, init, ParamRole::Weight, true)];
                if bias {
                    ps.push((
                        "bias",
                        vec![out],
                        Init::Constant(0.0),
                        ParamRole::Bias,
                        true,
                    ));
                }
                let positions = out_shape.per_sample().unwrap_or(0);
                let macs = positions
                    .saturating_mul(c)
                    .saturating_mul(k.iter().product());
                let kind = LayerKind::Conv {
                    out,
                    kernel: k,
                    stride,
                    pad,
                    dilation: dil,
                    bias,
                };
                Ok((kind, Ty::Tensor(out_shape), ps, macs))
            }
            L::Batchnorm => {
                let shape = tensor()?;
                if shape.rank() < 2 || !self.batched(&shape) {
                    return Err(rank_err(
                        &shape,
                        "`[N, C]` or `[N, C, ...]`",
                        "batchnorm normalizes axis 1 over the batch",
                    ));
                }
                let c = shape.fixed(1).unwrap_or(1);
                let momentum = a.float_in(
                    "momentum",
                    |v| (0.0..=1.0).contains(&v),
                    "must be in [0, 1]",
                )?;
                let eps = a.float_in("eps", |v| v > 0.0, "must be positive")?;
                let mut ps = scale_shift(c);
                ps.extend([
                    (
                        "running_mean",
                        vec![c],
                        Init::Constant(0.0),
                        ParamRole::State,
                        false,
                    ),
                    (
                        "running_var",
                        vec![c],
                        Init::Constant(1.0),
                        ParamRole::State,
                        false,
                    ),
                ]);
                Ok((
                    LayerKind::BatchNorm { momentum, eps },
                    Ty::Tensor(shape),
                    ps,
                    0,
                ))
            }
            L::Layernorm => {
                let shape = tensor()?;
                if shape.rank() < 2 {
                    return Err(rank_err(
                        &shape,
                        "`[N, ..., F]`",
                        "layernorm normalizes the last axis",
                    ));
                }
                let f = shape.last().unwrap_or(1);
                let eps = a.float_in("eps", |v| v > 0.0, "must be positive")?;
                Ok((
                    LayerKind::LayerNorm { eps },
                    Ty::Tensor(shape),
                    scale_shift(f),
                    0,
                ))
            }
            L::Prelu => {
                let shape = tensor()?;
                let c = if shape.rank() >= 2 {
                    shape.fixed(1).unwrap_or(1)
                } else {
                    1
                };
                let init = self.init(a, Init::Constant(0.25))?;
                Ok((
                    LayerKind::Prelu,
                    Ty::Tensor(shape),
                    vec![("weight", vec![c], init, ParamRole::Norm, true)],
                    0,
                ))
            }
            L::Rnn => self.recurrent_rule(Cell::Rnn, a, tensor()?, &rank_err),
            L::Lstm => self.recurrent_rule(Cell::Lstm, a, tensor()?, &rank_err),
            L::Gru => self.recurrent_rule(Cell::Gru, a, tensor()?, &rank_err),
        }
    }

    /// The rule of `rnn`, `lstm` and `gru`.
    fn recurrent_rule(
        &self,
        cell: Cell,
        a: &Bound,
        shape: Shape,
        rank_err: &dyn Fn(&Shape, &str, &str) -> Diagnostic,
    ) -> Result<LayerRule, Diagnostic> {
        if shape.rank() != 3 || !self.batched(&shape) {
            return Err(rank_err(
                &shape,
                "`[N, T, F]`",
                "recurrent layers read a sequence of T steps of F features",
            ));
        }
        let t = shape.fixed(1).unwrap_or(1);
        let f = shape.fixed(2).unwrap_or(1);
        let h = a.size("h")?;
        let activation = if cell == Cell::Rnn {
            match a.choice("activation", &["tanh", "relu"])? {
                "relu" => RnnActivation::Relu,
                _ => RnnActivation::Tanh,
            }
        } else {
            RnnActivation::Tanh
        };
        let bidirectional = a.boolean("bidirectional")?;
        let sequence = a.boolean("sequence")?;
        let g = cell.gates();
        let dirs: &[&'static str] = if bidirectional {
            &["", "_reverse"]
        } else {
            &[""]
        };
        let mut ps = Vec::new();
        for d in dirs {
            let names: [&'static str; 4] = if d.is_empty() {
                ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
            } else {
                [
                    "weight_ih_reverse",
                    "weight_hh_reverse",
                    "bias_ih_reverse",
                    "bias_hh_reverse",
                ]
            };
            ps.push((
                names[0],
                vec![g * h, f],
                Init::RecurrentUniform,
                ParamRole::Weight,
                true,
            ));
            ps.push((
                names[1],
                vec![g * h, h],
                Init::RecurrentUniform,
                ParamRole::Weight,
                true,
            ));
            ps.push((
                names[2],
                vec![g * h],
                Init::RecurrentUniform,
                ParamRole::Bias,
                true,
            ));
            ps.push((
                names[3],
                vec![g * h],
                Init::RecurrentUniform,
                ParamRole::Bias,
                true,
            ));
        }
        let width = h * dirs.len() as u64;
        let out = if sequence {
            Shape::new(vec![shape.0[0], Dim::Fixed(t), Dim::Fixed(width)])
        } else {
            Shape::new(vec![shape.0[0], Dim::Fixed(width)])
        };
        let macs = t
            .saturating_mul(g * h)
            .saturating_mul(f + h)
            .saturating_mul(dirs.len() as u64);
        let kind = LayerKind::Recurrent {
            cell,
            hidden: h,
            activation,
            bidirectional,
            sequence,
        };
        Ok((kind, Ty::Tensor(out), ps, macs))
    }

    #[allow(clippy::too_many_arguments)]
    fn window(
        &self,
        len: u64,
        k: u64,
        stride: u64,
        pad: u64,
        dil: u64,
        a: &Bound,
        in_span: Span,
        shape: &Shape,
    ) -> Result<u64, Diagnostic> {
        window_out(len, k, stride, pad, dil).ok_or_else(|| {
            let covered = dil * (k - 1) + 1;
            Diagnostic::error(Code::E0303, format!("a window of {covered} does not fit in an input of size {len} with padding {pad}"), a.span_of("k"))
                .primary_label(format!("window {covered}"))
                .with_label(in_span, format!("{shape}"))
                .with_note("output size = floor((L + 2·pad − dilation·(k − 1) − 1) / stride) + 1 must be at least 1")
                .with_help("use a smaller kernel or add padding (`pad: 1`)")
        })
    }

    fn init(&mut self, a: &Bound, default: Init) -> Result<Init, Diagnostic> {
        let Some(c) = a.get("init") else {
            return Ok(default);
        };
        let (name, args) = match &c.v {
            CVal::Word(w) => (w.as_str(), vec![]),
            CVal::Call(n, args) => (n.as_str(), args.clone()),
            _ => return Err(
                Diagnostic::error(Code::E0206, "`init` takes an initializer", c.span).with_note(
                    "initializers: he, xavier, normal(std), uniform(a), zeros, ones, constant(v)",
                ),
            ),
        };
        let inits = [
            "he", "xavier", "normal", "uniform", "zeros", "ones", "constant",
        ];
        let Some((sig, init)) = catalog::lookup(name).and_then(|s| match s.id {
            Id::Init(i) => Some((s, i)),
            _ => None,
        }) else {
            let mut d =
                Diagnostic::error(Code::E0202, format!("unknown initializer `{name}`"), c.span)
                    .primary_label("not an initializer");
            d = match did_you_mean(name, inits) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d.with_note(
                    "initializers: he, xavier, normal(std), uniform(a), zeros, ones, constant(v)",
                ),
            };
            return Err(d);
        };
        let b = bind_call(name, sig.params, args, c.span)?;
        use catalog::Init as I;
        Ok(match init {
            I::He => Init::He,
            I::Xavier => Init::Xavier,
            I::Normal => Init::Normal(b.float_in("std", |v| v >= 0.0, "must be at least 0")?),
            I::Uniform => Init::Uniform(b.float_in("a", |v| v >= 0.0, "must be at least 0")?),
            I::Zeros => Init::Constant(0.0),
            I::Ones => Init::Constant(1.0),
            I::Constant => Init::Constant(b.float("v")?),
        })
    }

    // ---- functions, activations, shaping layers ----

    fn axis(&self, a: &Bound, key: &str, shape: &Shape, what: &str) -> Result<usize, Diagnostic> {
        let raw = a.int(key, i64::MIN)?;
        match shape.axis(raw) {
            Some(0) if shape.has_batch() => Err(Diagnostic::error(
                Code::E0309,
                format!("`{what}` cannot work along the batch axis"),
                a.span_of(key),
            )
            .primary_label("axis 0 is the batch")
            .with_help("use axis 1 or a negative axis counted from the end")),
            Some(ax) => Ok(ax),
            None => Err(Diagnostic::error(
                Code::E0309,
                format!("axis {raw} is out of range for {shape}"),
                a.span_of(key),
            )
            .primary_label(format!("rank {}", shape.rank()))),
        }
    }

    fn function(
        &mut self,
        sig: &Sig,
        fun: Fun,
        a: &Bound,
        nodes: &[NodeId],
        spans: &[Span],
        call_span: Span,
    ) -> Result<(Op, Ty), Diagnostic> {
        let name = sig.name;
        let in_ty = self.m.nodes[nodes[0]].ty.clone();
        let Ty::Tensor(shape) = in_ty.clone() else {
            return Err(Diagnostic::error(
                Code::E0207,
                format!("`{name}` takes a tensor, found {in_ty}"),
                spans[0],
            )
            .primary_label(format!("{in_ty}"))
            .with_help("class labels feed `embedding` or a classification loss"));
        };
        let same = Ty::Tensor(shape.clone());
        let batched = self.batched(&shape);
        let need_rank = |r: usize, want: &str| -> Result<(), Diagnostic> {
            if shape.rank() != r || !batched {
                Err(Diagnostic::error(
                    Code::E0302,
                    format!("`{name}` expects {want}, found {shape}"),
                    spans[0],
                )
                .primary_label(format!("{shape}")))
            } else {
                Ok(())
            }
        };
        use catalog::{Function as F, Shaping as S};
        match fun {
            Fun::Elementwise(base) => {
                let choice = elementwise::by_word(name).and_then(|(_, choice)| choice);
                Ok((Op::Activation(elementwise_call(base, choice, a)?), same))
            }
            Fun::Function(f @ (F::Softmax | F::LogSoftmax)) => {
                let ax = self.axis(a, "axis", &shape, name)?;
                let op = if f == F::Softmax {
                    Op::Softmax(ax)
                } else {
                    Op::LogSoftmax(ax)
                };
                Ok((op, same))
            }
            Fun::Shaping(S::Dropout) => {
                let p = a.float_in("p", |v| (0.0..1.0).contains(&v), "must be in [0, 1)")?;
                Ok((Op::Dropout(p), same))
            }
            Fun::Shaping(S::Flatten) => {
                if shape.rank() < 2 || !self.batched(&shape) {
                    return Err(Diagnostic::error(
                        Code::E0302,
                        format!("`flatten` expects `[N, ...]`, found {shape}"),
                        spans[0],
                    ));
                }
                let n = Shape::new(shape.0[1..].to_vec())
                    .per_sample()
                    .ok_or_else(|| too_large(spans[0]))?;
                check_size(n, spans[0])?;
                Ok((
                    Op::Flatten,
                    Ty::Tensor(Shape::new(vec![shape.0[0], Dim::Fixed(n)])),
                ))
            }
            Fun::Shaping(S::Reshape) => self
                .reshape(a, &shape, spans[0])
                .map(|s| (Op::Reshape, Ty::Tensor(s))),
            Fun::Shaping(s @ (S::Last | S::First)) => {
                need_rank(3, "`[N, T, F]`")?;
                let op = if s == S::Last { Op::Last } else { Op::First };
                Ok((
                    op,
                    Ty::Tensor(Shape::new(vec![
                        shape.0[0],
                        Dim::Fixed(shape.fixed(2).unwrap_or(1)),
                    ])),
                ))
            }
            Fun::Shaping(s @ (S::Maxpool1d | S::Maxpool2d | S::Avgpool1d | S::Avgpool2d)) => {
                let nd = if matches!(s, S::Maxpool1d | S::Avgpool1d) {
                    1
                } else {
                    2
                };
                if nd == 1 {
                    need_rank(3, "`[N, C, L]`")?;
                } else {
                    need_rank(4, "`[N, C, H, W]`")?;
                }
                let k = a.ints("k", nd, 1)?;
                let stride = if a.get("stride").is_some() {
                    a.ints("stride", nd, 1)?
                } else {
                    k.clone()
                };
                let pad = a.ints("pad", nd, 0)?;
                if let Some(i) = (0..nd).find(|&i| pad[i] >= k[i]) {
                    return Err(Diagnostic::error(
                        Code::E0313,
                        format!(
                            "pooling padding {} must be smaller than the window {}",
                            pad[i], k[i]
                        ),
                        a.span_of("pad"),
                    )
                    .primary_label("padding too large"));
                }
                let mut dims = vec![shape.0[0], shape.0[1]];
                for i in 0..nd {
                    let len = shape.fixed(2 + i).unwrap_or(1);
                    dims.push(Dim::Fixed(
                        self.window(len, k[i], stride[i], pad[i], 1, a, spans[0], &shape)?,
                    ));
                }
                let (kind, count_pad) = if matches!(s, S::Maxpool1d | S::Maxpool2d) {
                    (PoolKind::Max, true)
                } else {
                    (PoolKind::Avg, a.boolean("count_pad")?)
                };
                Ok((
                    Op::Pool {
                        kind,
                        kernel: k,
                        stride,
                        pad,
                        count_pad,
                    },
                    Ty::Tensor(Shape::new(dims)),
                ))
            }
            Fun::Shaping(s @ (S::GlobalAvgpool | S::GlobalMaxpool)) => {
                if shape.rank() < 3 || !self.batched(&shape) {
                    return Err(Diagnostic::error(
                        Code::E0302,
                        format!("`{name}` expects `[N, C, ...]` with spatial axes, found {shape}"),
                        spans[0],
                    )
                    .primary_label(format!("{shape}")));
                }
                let kind = if s == S::GlobalAvgpool {
                    PoolKind::Avg
                } else {
                    PoolKind::Max
                };
                Ok((
                    Op::GlobalPool(kind),
                    Ty::Tensor(Shape::new(vec![shape.0[0], shape.0[1]])),
                ))
            }
            Fun::Shaping(S::Spp) => {
                need_rank(4, "`[N, C, H, W]`")?;
                let levels_c = a.get("levels").cloned();
                let levels: Vec<u64> = match levels_c.as_ref().map(|c| &c.v) {
                    Some(CVal::List(xs)) | Some(CVal::Tuple(xs)) if !xs.is_empty() => xs
                        .iter()
                        .map(|x| match super::args::as_int(x) {
                            Some(v) if (1..=1024).contains(&v) => Ok(v as u64),
                            _ => Err(Diagnostic::error(
                                Code::E0313,
                                "pyramid levels are integers from 1 to 1024",
                                x.span,
                            )),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => {
                        return Err(Diagnostic::error(
                            Code::E0206,
                            "`levels` must be a list of integers like `[1, 2, 4]`",
                            a.span_of("levels"),
                        ))
                    }
                };
                let c = shape.fixed(1).unwrap_or(1);
                let bins: u64 = levels.iter().map(|l| l * l).sum();
                Ok((
                    Op::Spp(levels),
                    Ty::Tensor(Shape::new(vec![shape.0[0], Dim::Fixed(c * bins)])),
                ))
            }
            Fun::Function(f @ (F::Sum | F::Mean | F::Max | F::Min)) => {
                let keepdims = a.boolean("keepdims")?;
                let axes: Vec<usize> = match a.get("axis") {
                    // Without an axis: every non-batch axis (every axis in unbatched mode).
                    None => (usize::from(!self.unbatched)..shape.rank()).collect(),
                    Some(c) => {
                        let items: Vec<Const> = match &c.v {
                            CVal::List(xs) | CVal::Tuple(xs) => xs.clone(),
                            _ => vec![c.clone()],
                        };
                        let mut axes = Vec::new();
                        for it in items {
                            let raw = super::args::as_int(&it).ok_or_else(|| {
                                Diagnostic::error(Code::E0206, "`axis` must be an integer", it.span)
                            })?;
                            match shape.axis(raw) {
                                Some(0) if shape.has_batch() => {
                                    return Err(Diagnostic::error(
                                        Code::E0309,
                                        format!("`{name}` cannot reduce the batch axis"),
                                        it.span,
                                    )
                                    .primary_label("axis 0 is the batch")
                                    .with_help("losses average over the batch themselves"))
                                }
                                Some(ax) => axes.push(ax),
                                None => {
                                    return Err(Diagnostic::error(
                                        Code::E0309,
                                        format!("axis {raw} is out of range for {shape}"),
                                        it.span,
                                    ))
                                }
                            }
                        }
                        axes.sort_unstable();
                        axes.dedup();
                        axes
                    }
                };
                let dims = shape
                    .0
                    .iter()
                    .enumerate()
                    .filter_map(|(i, d)| match (axes.contains(&i), keepdims) {
                        (false, _) => Some(*d),
                        (true, true) => Some(Dim::Fixed(1)),
                        (true, false) => None,
                    })
                    .collect();
                let kind = match f {
                    F::Sum => ReduceKind::Sum,
                    F::Mean => ReduceKind::Mean,
                    F::Max => ReduceKind::Max,
                    F::Min => ReduceKind::Min,
                    F::Softmax | F::LogSoftmax | F::Concat => {
                        unreachable!("matched as a reduction")
                    }
                };
                Ok((
                    Op::Reduce {
                        kind,
                        axes,
                        keepdims,
                    },
                    Ty::Tensor(Shape::new(dims)),
                ))
            }
            Fun::Function(F::Concat) => {
                let ax = self.axis(a, "axis", &shape, "concat")?;
                let mut total = 0u64;
                for (n, span) in nodes.iter().zip(spans) {
                    let ty = self.m.nodes[*n].ty.clone();
                    let Ty::Tensor(s) = &ty else {
                        return Err(Diagnostic::error(
                            Code::E0207,
                            format!("`concat` takes tensors, found {ty}"),
                            *span,
                        ));
                    };
                    let compatible = s.rank() == shape.rank()
                        && (0..s.rank()).all(|i| i == ax || s.0[i] == shape.0[i]);
                    if !compatible {
                        return Err(Diagnostic::error(
                            Code::E0315,
                            format!("cannot concatenate {shape} and {s} along axis {ax}"),
                            *span,
                        )
                        .primary_label(format!("{s}"))
                        .with_label(spans[0], format!("{shape}"))
                        .with_note("all axes except the joined one must be equal"));
                    }
                    total = total.saturating_add(s.fixed(ax).unwrap_or(0));
                }
                check_size(total, call_span)?;
                let mut out = shape.clone();
                out.0[ax] = Dim::Fixed(total);
                Ok((Op::Concat(ax), Ty::Tensor(out)))
            }
        }
    }

    fn reshape(&self, a: &Bound, shape: &Shape, in_span: Span) -> Result<Shape, Diagnostic> {
        let c = a.get("shape").expect("required argument");
        let CVal::List(items) = &c.v else {
            return Err(Diagnostic::error(
                Code::E0206,
                "`reshape` takes a list of dimensions like `[N, 1, 8, 8]`",
                c.span,
            ));
        };
        let mut dims = Vec::new();
        let mut infer = None;
        for (i, it) in items.iter().enumerate() {
            match (&it.v, i) {
                (CVal::Dim(Dim::Batch), 0) => dims.push(Dim::Batch),
                (CVal::Dim(Dim::Batch), _) => {
                    return Err(Diagnostic::error(
                        Code::E0310,
                        "the batch dimension must stay first",
                        it.span,
                    ))
                }
                (_, 0) if !self.unbatched => {
                    return Err(Diagnostic::error(
                        Code::E0310,
                        "`reshape` must keep the batch dimension first",
                        it.span,
                    )
                    .with_help("start the shape with the batch symbol: `reshape([N, ...])`"))
                }
                (CVal::Num { v, int: true }, _) if *v == -1.0 => {
                    if infer.is_some() {
                        return Err(Diagnostic::error(
                            Code::E0310,
                            "only one dimension may be -1",
                            it.span,
                        ));
                    }
                    infer = Some(i);
                    dims.push(Dim::Fixed(1));
                }
                (CVal::Num { v, int: true }, _) if *v >= 1.0 && *v <= MAX_DIM as f64 => {
                    dims.push(Dim::Fixed(*v as u64))
                }
                _ => {
                    return Err(Diagnostic::error(
                        Code::E0206,
                        "a reshape dimension is a positive integer, -1, or the batch symbol first",
                        it.span,
                    ))
                }
            }
        }
        let have = shape.per_sample().ok_or_else(|| too_large(in_span))?;
        let mut out = Shape::new(dims);
        let want = out.per_sample().ok_or_else(|| too_large(c.span))?;
        if let Some(i) = infer {
            if want == 0 || have % want != 0 {
                return Err(Diagnostic::error(
                    Code::E0310,
                    format!(
                        "cannot reshape {shape} ({have} values per sample) so that -1 is whole"
                    ),
                    c.span,
                )
                .with_label(in_span, format!("{shape}")));
            }
            out.0[i] = Dim::Fixed(have / want);
        } else if want != have {
            return Err(Diagnostic::error(
                Code::E0310,
                format!(
                    "cannot reshape {shape} into {out}: {have} values per sample become {want}"
                ),
                c.span,
            )
            .primary_label(format!("{want} values per sample"))
            .with_label(in_span, format!("{shape}: {have} values per sample")));
        }
        Ok(out)
    }

    // ---- losses ----

    fn loss(
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
                    L::Focal => LossKind::Focal(
                        a.float_in("gamma", |v| v >= 0.0, "must be at least 0")?,
                        a.float_in("alpha", |v| (0.0..=1.0).contains(&v), "must be in [0, 1]")?,
                    ),
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

/// The function an elementwise call applies: the variant its word argument chooses, with
/// its parameters bound and checked against their bounds.
fn elementwise_call(base: Elem, choice: Option<Choice>, a: &Bound) -> Result<Func, Diagnostic> {
    let mut elem = base;
    if let Some(choice) = choice {
        let words: Vec<&'static str> = choice.options.iter().map(|o| o.0).collect();
        let chosen = a.choice(choice.arg, &words)?;
        if let Some(o) = choice.options.iter().find(|o| o.0 == chosen) {
            elem = o.1;
        }
    }
    let mut p = [0.0; 2];
    for (k, param) in elem.def().params.iter().enumerate() {
        p[k] = match param.min {
            elementwise::Bound::Value(min) => {
                a.float_in(param.name, |v| v >= min, &format!("must be at least {min}"))?
            }
            elementwise::Bound::Param(j) => {
                let (lower, name) = (p[j], elem.def().params[j].name);
                a.float_in(
                    param.name,
                    |v| v >= lower,
                    &format!("must be at least `{name}`"),
                )?
            }
        };
    }
    Ok(Func::with(elem, p))
}

/// A parameter of a layer: name, shape, initializer, role, trainable.
type ParamDef = (&'static str, Vec<u64>, Init, ParamRole, bool);

/// What a layer rule computes: kind, output type, parameters, MACs per sample.
/// How a call to a built-in (other than a regularizer or initializer) is checked.
#[derive(Clone, Copy)]
enum Route {
    Layer(catalog::Layer),
    Loss(catalog::Loss),
    Fun(Fun),
}

/// The built-ins checked by the `function` rule.
#[derive(Clone, Copy)]
enum Fun {
    Shaping(catalog::Shaping),
    Function(catalog::Function),
    Elementwise(Elem),
}

type LayerRule = (LayerKind, Ty, Vec<ParamDef>, u64);

/// The scale (γ, ones) and shift (β, zeros) of a normalization over `c` features.
fn scale_shift(c: u64) -> Vec<ParamDef> {
    vec![
        (
            "weight",
            vec![c],
            Init::Constant(1.0),
            ParamRole::Norm,
            true,
        ),
        ("bias", vec![c], Init::Constant(0.0), ParamRole::Norm, true),
    ]
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

fn display_call(call: &ast::Call) -> String {
    if call.args().is_empty() {
        call.callee.name.clone()
    } else {
        format!("{}(...)", call.callee.name)
    }
}

fn too_large(span: Span) -> Diagnostic {
    Diagnostic::error(
        Code::E0311,
        "the tensor has too many elements per sample",
        span,
    )
    .primary_label("more than 2^63 values")
}

fn check_size(n: u64, span: Span) -> Result<(), Diagnostic> {
    if n > MAX_DIM {
        Err(
            Diagnostic::error(Code::E0311, format!("dimension {n} is out of range"), span)
                .primary_label("sizes are below 2^31"),
        )
    } else {
        Ok(())
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
