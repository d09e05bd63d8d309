//! The session behind `kiln repl`: tensors, layer values, declarations and commands,
//! evaluated one input at a time, with no terminal I/O (the binary owns the line editor).
//!
//! An expression is evaluated by synthesizing a model from the session: every stored
//! tensor it mentions becomes an `input NAME: [d0, d1, …]` of its concrete shape, the
//! session's blocks and the `layer` values it uses are included, and the expression
//! becomes `__it = EXPR` with `output __it`. The model is checked in the checker's
//! unbatched mode ([`CheckOptions::unbatched`]), lowered, and run by the JIT. Diagnostic
//! spans are mapped back onto the typed text, which is a file `<repl:N>` of
//! [`Session::sources`], so errors render exactly like `kiln check`'s.

pub mod format;
pub mod synth;
pub mod values;

use crate::autodiff::differentiate;
use crate::check::train::TrainConfig;
use crate::check::{self, catalog, CheckOptions, LintLevels};
use crate::diag::Diagnostic;
use crate::ir::{DType, NodeId, Op, Param, Tensor};
use crate::jit::Jit;
use crate::runtime::data::{self, Standardizer};
use crate::runtime::exec::{Backend, State};
use crate::runtime::init::init_params;
use crate::runtime::train::{self as rt, Program, Run, RunPaths};
use crate::span::{FileId, Sources, Span};
use crate::syntax::ast::{self, Expr, ExprKind, Item, Stmt};
use crate::syntax::parse_source;
use ndarray::{ArrayD, IxDyn};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use synth::Synth;

/// The commands, with their arguments and what they do (`:help` prints this).
pub const COMMANDS: &[(&str, &str, &str)] = &[
    (
        ":load",
        "FILE",
        "load a model file's models, blocks and train blocks",
    ),
    (":reload", "", "load the last file again"),
    (
        ":type",
        "EXPR",
        "the shape of an expression, without running it",
    ),
    (
        ":summary",
        "MODEL",
        "a model's layers, shapes and parameters",
    ),
    (
        ":train",
        "MODEL [EPOCHS]",
        "train a model with its train block",
    ),
    (
        ":eval",
        "MODEL",
        "loss and metrics of the trained model on its data",
    ),
    (
        ":predict",
        "MODEL EXPR",
        "the trained model's outputs for a tensor",
    ),
    (
        ":grad",
        "EXPR wrt NAME",
        "the gradient of a scalar with respect to a tensor or parameter",
    ),
    (":ir", "EXPR", "the IR of an expression"),
    (
        ":save",
        "NAME FILE",
        "save a tensor, a layer's or a model's parameters (.npy, .safetensors)",
    ),
    (
        ":params",
        "",
        "the layer parameters and trained models of the session",
    ),
    (
        ":seed",
        "N",
        "the seed of layer values and of randn without `seed:`",
    ),
    (":help", "", "this help"),
    (":quit", "", "leave (also Ctrl-D)"),
];

/// What an input produced.
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// Text for standard output (ends with a newline when not empty).
    pub text: String,
    /// Warnings about the input (spans into [`Session::sources`]).
    pub warnings: Vec<Diagnostic>,
    /// `:quit` was given.
    pub quit: bool,
}

/// Why an input failed. The session is unchanged by a failed input.
#[derive(Clone, Debug)]
pub enum ReplError {
    /// Diagnostics, with spans into [`Session::sources`] (at least one error).
    Diagnostics(Vec<Diagnostic>),
    /// Any other failure (a command's usage, a data or I/O error).
    Message(String),
}

impl ReplError {
    fn msg(m: impl Into<String>) -> ReplError {
        ReplError::Message(m.into())
    }
}

impl From<Diagnostic> for ReplError {
    fn from(d: Diagnostic) -> Self {
        ReplError::Diagnostics(vec![d])
    }
}

impl From<rt::RuntimeError> for ReplError {
    fn from(e: rt::RuntimeError) -> Self {
        match e {
            rt::RuntimeError::Diverged(d) => ReplError::Diagnostics(vec![*d]),
            other => ReplError::Message(other.to_string()),
        }
    }
}

/// A piece of a source file.
#[derive(Clone, Copy, Debug)]
struct Seg {
    file: FileId,
    start: usize,
    end: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Model,
    Block,
    Train,
    Use,
}

/// A declaration of the session (typed or loaded).
#[derive(Clone, Debug)]
struct Decl {
    kind: Kind,
    /// The model, block or (for a train block) model name; the path of a `use`.
    name: String,
    seg: Seg,
}

/// A trained model.
struct Trained {
    program: Program,
    state: State,
    standardizer: Option<Standardizer>,
    cfg: TrainConfig,
}

/// A REPL session.
pub struct Session {
    sources: Sources,
    values: BTreeMap<String, ArrayD<f32>>,
    /// `layer` values: name and the text of the layer call.
    layers: Vec<(String, Seg)>,
    /// Parameters of layer values, by full name.
    params: BTreeMap<String, ArrayD<f32>>,
    decls: Vec<Decl>,
    trained: BTreeMap<String, Trained>,
    loaded: Option<PathBuf>,
    seed: u64,
    draws: u64,
    inputs: usize,
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

/// A compiled expression, ready to run.
struct Compiled {
    program: Program,
    inputs: Vec<ArrayD<f32>>,
    params: Vec<ArrayD<f32>>,
    /// Parameters of layer values seen for the first time.
    fresh: Vec<(String, ArrayD<f32>)>,
    out: NodeId,
    warnings: Vec<Diagnostic>,
}

/// How a typed statement is evaluated.
struct Typed<'a> {
    /// The text the parser saw (the typed text inside a wrapper).
    wrapped: &'a str,
    /// Offset of the typed text in `wrapped`.
    off: usize,
    /// The typed text's file.
    file: FileId,
}

impl Typed<'_> {
    /// A parser span as a span of the typed file.
    fn span(&self, s: Span) -> Span {
        let len = self.wrapped.len().saturating_sub(self.off);
        let start = s.start.saturating_sub(self.off).min(len);
        let end = s.end.saturating_sub(self.off).clamp(start, len);
        Span::new(self.file, start, end)
    }

    fn diag(&self, mut d: Diagnostic) -> Diagnostic {
        for l in &mut d.labels {
            if l.span.file == self.file {
                l.span = self.span(l.span);
            }
        }
        d
    }
}

impl Session {
    /// An empty session with seed 0.
    pub fn new() -> Session {
        Session {
            sources: Sources::new(),
            values: BTreeMap::new(),
            layers: Vec::new(),
            params: BTreeMap::new(),
            decls: Vec::new(),
            trained: BTreeMap::new(),
            loaded: None,
            seed: 0,
            draws: 0,
            inputs: 0,
        }
    }

    /// The sources every diagnostic refers to.
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    /// A stored tensor.
    pub fn value(&self, name: &str) -> Option<&ArrayD<f32>> {
        self.values.get(name)
    }

    /// A stored layer parameter.
    pub fn param(&self, name: &str) -> Option<&ArrayD<f32>> {
        self.params.get(name)
    }

    /// Names to complete: bindings, layer values, models and blocks.
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = self.values.keys().filter(|k| *k != "_").cloned().collect();
        out.extend(self.layers.iter().map(|(n, _)| n.clone()));
        out.extend(
            self.decls
                .iter()
                .filter(|d| matches!(d.kind, Kind::Model | Kind::Block))
                .map(|d| d.name.clone()),
        );
        out.sort();
        out.dedup();
        out
    }

    /// Evaluates one complete input (a statement, declaration or command; it may span
    /// several lines).
    pub fn eval(&mut self, input: &str) -> Result<Output, ReplError> {
        let trimmed = input.trim();
        if trimmed.is_empty()
            || trimmed
                .lines()
                .all(|l| l.trim().is_empty() || l.trim().starts_with('#'))
        {
            return Ok(Output::default());
        }
        if let Some(cmd) = trimmed.strip_prefix(':') {
            return self.command(cmd);
        }
        let file = self.typed_file(input);
        let first = trimmed
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("");
        match first {
            "model" | "block" | "train" | "use" => self.declare(file),
            _ => self.statements(file),
        }
    }

    fn typed_file(&mut self, text: &str) -> FileId {
        self.inputs += 1;
        self.sources
            .add(format!("<repl:{}>", self.inputs), None, text.to_string())
    }

    fn text(&self, s: Seg) -> &str {
        self.sources
            .get(s.file)
            .text
            .get(s.start..s.end)
            .unwrap_or("")
    }

    fn base_dir(&self) -> Option<PathBuf> {
        self.loaded
            .as_ref()
            .and_then(|p| p.parent().map(Path::to_path_buf))
    }

    // ---- statements and expressions ----

    fn statements(&mut self, file: FileId) -> Result<Output, ReplError> {
        let text = self.sources.get(file).text.clone();
        let head = "model __repl {\n";
        let as_stmts = format!("{head}{text}\n}}\n");
        let (wrapped, off, body, expr) = match parse_source(&as_stmts, file) {
            Ok(f) => (as_stmts, head.len(), f, false),
            Err(d1) => {
                let head2 = "model __repl {\n__it = ";
                let as_expr = format!("{head2}{text}\n}}\n");
                match parse_source(&as_expr, file) {
                    Ok(f) => (as_expr, head2.len(), f, true),
                    Err(d2) => {
                        let (d, off) = if looks_like_statement(&text) {
                            (d1, head.len())
                        } else {
                            (d2, head2.len())
                        };
                        let t = Typed {
                            wrapped: if off == head.len() {
                                &as_stmts
                            } else {
                                &as_expr
                            },
                            off,
                            file,
                        };
                        return Err(t.diag(d).into());
                    }
                }
            }
        };
        let t = Typed {
            wrapped: &wrapped,
            off,
            file,
        };
        let stmts = match body.items.as_slice() {
            [Item::Model(m)] => m.body.clone(),
            _ => {
                return Err(ReplError::msg(
                    "expected a statement, an expression or a declaration",
                ))
            }
        };
        let mut out = Output::default();
        for stmt in &stmts {
            self.statement(&t, stmt, expr, &mut out)?;
        }
        Ok(out)
    }

    fn statement(
        &mut self,
        t: &Typed,
        stmt: &Stmt,
        expr: bool,
        out: &mut Output,
    ) -> Result<(), ReplError> {
        match stmt {
            Stmt::Let {
                name,
                annotation,
                value,
                ..
            } => {
                if !expr && name.name.starts_with("__") {
                    return Err(Diagnostic::error(
                        "E0209",
                        "names starting with `__` are reserved at the prompt",
                        t.span(name.span),
                    )
                    .into());
                }
                let ann = annotation.as_ref().map(|a| t.span(a.span()));
                let c = self.compile(t.file, t.span(value.span), value, t, ann, true)?;
                out.warnings.extend(c.warnings.iter().cloned());
                let v = self.run(&c)?;
                for (n, p) in c.fresh {
                    self.params.insert(n, p);
                }
                if expr {
                    let _ = writeln!(out.text, "{}", describe(&v));
                    self.values.insert("_".into(), v);
                } else {
                    let _ = writeln!(
                        out.text,
                        "{}: {}\n{}",
                        name.name,
                        shape_text(v.shape()),
                        format::format_tensor(&v)
                    );
                    self.values.insert(name.name.clone(), v);
                }
                Ok(())
            }
            Stmt::Layer { name, value, span } => {
                let seg = t.span(value.span);
                self.check_layer(t, &name.name, seg, t.span(*span))?;
                self.layers.retain(|(n, _)| *n != name.name);
                let prefix = format!("{}.", name.name);
                self.params.retain(|k, _| !k.starts_with(&prefix));
                self.layers.push((
                    name.name.clone(),
                    Seg {
                        file: seg.file,
                        start: seg.start,
                        end: seg.end,
                    },
                ));
                let _ = writeln!(
                    out.text,
                    "layer {} = {}",
                    name.name,
                    self.sources.slice(seg)
                );
                Ok(())
            }
            other => Err(Diagnostic::error(
                "E0209",
                "this statement belongs in a model",
                t.span(other.span()),
            )
            .primary_label("not available at the prompt")
            .with_help("type a binding (`y = x |> relu`), a `layer`, or a whole `model { ... }`")
            .into()),
        }
    }

    /// Checks a `layer` declaration by using it nowhere: unknown or parameterless
    /// callees are reported.
    fn check_layer(
        &mut self,
        t: &Typed,
        name: &str,
        seg: Span,
        fallback: Span,
    ) -> Result<(), ReplError> {
        let mut s = Synth::new();
        self.push_blocks(&mut s);
        s.raw("model __repl {\n  input __unit: [1]\n  layer ");
        s.raw(name);
        s.raw(" = ");
        s.copied(
            self.sources.slice(seg).to_string().as_str(),
            seg.file,
            seg.start,
        );
        s.raw("\n  output __unit\n}\n");
        let _ = t;
        self.check_synth(&s, fallback, true, seg.file).map(|_| ())
    }

    /// The session's blocks and imports, copied into `s`.
    fn push_blocks(&self, s: &mut Synth) {
        for d in &self.decls {
            if matches!(d.kind, Kind::Block | Kind::Use) {
                let text = self.text(d.seg).to_string();
                s.copied(&text, d.seg.file, d.seg.start);
                s.raw("\n");
            }
        }
    }

    /// Checks synthesized text; returns the program and the warnings about `typed`.
    fn check_synth(
        &mut self,
        s: &Synth,
        fallback: Span,
        unbatched: bool,
        typed: FileId,
    ) -> Result<(check::Program, Vec<Diagnostic>), ReplError> {
        let path = self.loaded.clone();
        let id = self.sources.add("<repl>", path.as_deref(), s.text.clone());
        let checked = check::check_file_with(
            &mut self.sources,
            id,
            &LintLevels::default(),
            CheckOptions { unbatched },
        );
        let diags: Vec<Diagnostic> = checked
            .diagnostics
            .into_iter()
            .map(|d| s.map_diagnostic(id, d, fallback))
            .collect();
        if diags.iter().any(Diagnostic::is_error) {
            let mut seen = HashSet::new();
            let errors: Vec<Diagnostic> = diags
                .into_iter()
                .filter(|d| d.is_error())
                .filter(|d| seen.insert((d.code, d.span(), d.message.clone())))
                .collect();
            return Err(ReplError::Diagnostics(errors));
        }
        let warnings = diags
            .into_iter()
            .filter(|d| d.span().file == typed && d.code != "W0007")
            .collect();
        Ok((checked.program.unwrap_or_default(), warnings))
    }

    /// Synthesizes, checks and lowers `__it = value` (with the annotation, if any).
    fn compile(
        &mut self,
        file: FileId,
        fallback: Span,
        value: &Expr,
        t: &Typed,
        annotation: Option<Span>,
        draw: bool,
    ) -> Result<Compiled, ReplError> {
        let blocks: HashSet<String> = self
            .decls
            .iter()
            .filter(|d| d.kind == Kind::Block)
            .map(|d| d.name.clone())
            .collect();
        let mut temps = Vec::new();
        let saved = self.draws;
        let base = self.base_dir();
        let mut ctx = values::Ctx {
            seed: self.seed,
            draws: &mut self.draws,
            base: base.as_deref(),
            blocks: &blocks,
        };
        let collected = values::collect(value, &mut ctx, &mut temps);
        if !draw {
            self.draws = saved;
        }
        collected.map_err(|d| t.diag(d))?;
        let mut temps: Vec<(Span, ArrayD<f32>)> = temps
            .into_iter()
            .map(|x| (t.span(x.span), x.value))
            .collect();
        temps.sort_by_key(|(s, _)| s.start);
        // Nested constructors (a literal inside `load(...)`) never happen; overlapping
        // spans would mean one: keep the outer.
        temps.dedup_by(|b, a| b.0.start < a.0.end);

        let mut names = HashSet::new();
        idents(value, &mut names);
        let typed_text = self.sources.get(file).text.clone();

        let mut s = Synth::new();
        self.push_blocks(&mut s);
        s.raw("model __repl {\n");
        let mut inputs: Vec<(String, ArrayD<f32>)> = Vec::new();
        for (n, v) in &self.values {
            if names.contains(n) {
                inputs.push((n.clone(), v.clone()));
            }
        }
        for (i, (_, v)) in temps.iter().enumerate() {
            inputs.push((format!("__{i}"), v.clone()));
        }
        if inputs.is_empty() {
            inputs.push(("__unit".into(), ArrayD::zeros(IxDyn(&[1]))));
        }
        for (n, v) in &inputs {
            let _ = writeln!(s.text, "  input {n}: {}", shape_text(v.shape()));
        }
        let mut used_layers = Vec::new();
        for (n, seg) in &self.layers {
            if names.contains(n) {
                let _ = write!(s.text, "  layer {n} = ");
                let text = self.text(*seg).to_string();
                s.copied(&text, seg.file, seg.start);
                s.raw("\n");
                used_layers.push(n.clone());
            }
        }
        s.raw("  __it");
        if let Some(a) = annotation {
            s.raw(": ");
            s.copied(&typed_text[a.range()], file, a.start);
        }
        s.raw(" = ");
        let vs = t.span(value.span);
        let mut cur = vs.start;
        for (i, (sp, _)) in temps.iter().enumerate() {
            s.copied(&typed_text[cur..sp.start], file, cur);
            s.stands_for(&format!("__{i}"), file, sp.start, sp.end - sp.start);
            cur = sp.end;
        }
        s.copied(&typed_text[cur..vs.end], file, cur);
        s.raw("\n  output __it\n}\n");

        let (program, warnings) = self.check_synth(&s, fallback, true, file)?;
        let Some(model) = program.models.into_iter().next() else {
            return Err(ReplError::msg("internal error: no model was synthesized"));
        };
        let program = rt::prepare(&model);
        let Some(&(_, out)) = program.forward.outputs.first() else {
            return Err(ReplError::msg(
                "internal error: the expression has no output",
            ));
        };
        let init = init_params(&program.model, self.seed);
        let mut params = Vec::new();
        let mut fresh = Vec::new();
        for (p, v) in program.forward.params.iter().zip(init) {
            let name = &p.tensor.name;
            let shared = used_layers
                .iter()
                .any(|l| name.starts_with(&format!("{l}.")));
            if !shared {
                params.push(v);
                continue;
            }
            match self.params.get(name) {
                Some(old) if old.shape() == v.shape() => params.push(old.clone()),
                Some(old) => {
                    return Err(Diagnostic::error(
                        "E0314",
                        format!(
                            "`{name}` was created as {} and is now used as {}",
                            shape_text(old.shape()),
                            shape_text(v.shape())
                        ),
                        fallback,
                    )
                    .primary_label("a layer value keeps the shapes of its first use")
                    .with_help("declare the layer again to start with fresh parameters")
                    .into())
                }
                None => {
                    fresh.push((name.clone(), v.clone()));
                    params.push(v);
                }
            }
        }
        let by_name: HashMap<String, ArrayD<f32>> = inputs.into_iter().collect();
        let inputs = program
            .forward
            .inputs
            .iter()
            .map(|t| by_name.get(&t.name).cloned().unwrap_or_default())
            .collect();
        Ok(Compiled {
            program,
            inputs,
            params,
            fresh,
            out,
            warnings,
        })
    }

    fn run(&self, c: &Compiled) -> Result<ArrayD<f32>, ReplError> {
        let state = State {
            params: c.params.clone(),
            states: vec![],
        };
        // A fresh JIT: its cache is keyed by graph address, and graphs here are temporary.
        let mut jit = Jit::new();
        let mut vals = jit
            .forward(&c.program.forward, &state, &c.inputs, &[], &[c.out])
            .map_err(|e| ReplError::msg(format!("error: {e}")))?;
        vals.pop()
            .ok_or_else(|| ReplError::msg("internal error: no value"))
    }

    /// Parses a command's expression argument as a typed input.
    fn expr_arg(&mut self, text: &str) -> Result<(String, FileId, Expr), ReplError> {
        let file = self.typed_file(text);
        let head = "model __repl {\n__it = ";
        let wrapped = format!("{head}{text}\n}}\n");
        let t = Typed {
            wrapped: &wrapped,
            off: head.len(),
            file,
        };
        let f = parse_source(&wrapped, file).map_err(|d| ReplError::from(t.diag(d)))?;
        let value = match f.items.as_slice() {
            [Item::Model(m)] => match m.body.as_slice() {
                [Stmt::Let { value, .. }] => value.clone(),
                _ => return Err(ReplError::msg("expected one expression")),
            },
            _ => return Err(ReplError::msg("expected one expression")),
        };
        Ok((wrapped, file, value))
    }

    fn compile_arg(&mut self, text: &str, draw: bool) -> Result<Compiled, ReplError> {
        let (wrapped, file, value) = self.expr_arg(text)?;
        let t = Typed {
            wrapped: &wrapped,
            off: "model __repl {\n__it = ".len(),
            file,
        };
        let fallback = t.span(value.span);
        self.compile(file, fallback, &value, &t, None, draw)
    }

    fn eval_arg(&mut self, text: &str) -> Result<ArrayD<f32>, ReplError> {
        let c = self.compile_arg(text, true)?;
        let v = self.run(&c)?;
        for (n, p) in c.fresh {
            self.params.insert(n, p);
        }
        Ok(v)
    }

    // ---- declarations ----

    fn declare(&mut self, file: FileId) -> Result<Output, ReplError> {
        let text = self.sources.get(file).text.clone();
        let parsed = parse_source(&text, file)?;
        let new = decls_of(&parsed, file);
        self.add_decls(new, None)
    }

    /// Adds declarations (replacing same-named ones) if the session still checks.
    fn add_decls(&mut self, new: Vec<Decl>, origin: Option<&Path>) -> Result<Output, ReplError> {
        let saved = self.decls.clone();
        for d in &new {
            self.decls
                .retain(|o| !(o.kind == d.kind && o.name == d.name && d.kind != Kind::Use));
        }
        self.decls.extend(new.iter().cloned());
        let fallback = new.first().map_or(Span::default(), |d| {
            Span::new(d.seg.file, d.seg.start, d.seg.start)
        });
        let typed = new.first().map_or(0, |d| d.seg.file);
        let checked = self.check_session(fallback, typed);
        match checked {
            Ok((_, warnings)) => {
                for d in &new {
                    if matches!(d.kind, Kind::Model | Kind::Train) {
                        self.trained.remove(&d.name);
                    }
                }
                let mut out = Output {
                    warnings,
                    ..Output::default()
                };
                let list = |k: Kind| -> Vec<String> {
                    new.iter()
                        .filter(|d| d.kind == k)
                        .map(|d| d.name.clone())
                        .collect()
                };
                let mut parts = Vec::new();
                for (k, what) in [
                    (Kind::Model, "model"),
                    (Kind::Block, "block"),
                    (Kind::Train, "train"),
                ] {
                    let names = list(k);
                    if !names.is_empty() {
                        parts.push(format!("{what} {}", names.join(", ")));
                    }
                }
                match origin {
                    Some(p) => {
                        let _ = writeln!(out.text, "loaded {}: {}", p.display(), parts.join("; "));
                    }
                    None if !parts.is_empty() => {
                        let _ = writeln!(out.text, "defined {}", parts.join("; "));
                    }
                    None => {}
                }
                Ok(out)
            }
            Err(e) => {
                self.decls = saved;
                Err(e)
            }
        }
    }

    /// Checks all declarations of the session (normal mode).
    fn check_session(
        &mut self,
        fallback: Span,
        typed: FileId,
    ) -> Result<(check::Program, Vec<Diagnostic>), ReplError> {
        let mut s = Synth::new();
        for d in &self.decls {
            let text = self.text(d.seg).to_string();
            s.copied(&text, d.seg.file, d.seg.start);
            s.raw("\n");
        }
        self.check_synth(&s, fallback, false, typed)
    }

    fn load(&mut self, path: &Path) -> Result<Output, ReplError> {
        let (id, bad) = check::load_file(&mut self.sources, path)
            .map_err(|e| ReplError::msg(format!("error: cannot read `{}`: {e}", path.display())))?;
        if let Some(d) = bad {
            return Err(d.into());
        }
        let checked = check::check_file(&mut self.sources, id, &LintLevels::default());
        if checked.has_errors() {
            return Err(ReplError::Diagnostics(
                checked
                    .diagnostics
                    .into_iter()
                    .filter(Diagnostic::is_error)
                    .collect(),
            ));
        }
        let text = self.sources.get(id).text.clone();
        let parsed = parse_source(&text, id)?;
        let new = decls_of(&parsed, id);
        // The file's earlier version goes away.
        let canon = path.canonicalize().ok();
        let old_files: HashSet<FileId> = self
            .decls
            .iter()
            .map(|d| d.seg.file)
            .filter(|f| {
                let p = self.sources.get(*f).path.as_ref();
                p.and_then(|p| p.canonicalize().ok()).is_some()
                    && p.and_then(|p| p.canonicalize().ok()) == canon
            })
            .collect();
        let saved = (self.decls.clone(), self.loaded.clone());
        self.decls.retain(|d| !old_files.contains(&d.seg.file));
        self.loaded = Some(path.to_path_buf());
        match self.add_decls(new, Some(path)) {
            Ok(mut out) => {
                out.warnings = checked.diagnostics;
                Ok(out)
            }
            Err(e) => {
                (self.decls, self.loaded) = saved;
                Err(e)
            }
        }
    }

    /// The checked model `name` and its train configuration.
    fn model(&mut self, name: &str) -> Result<(Program, TrainConfig), ReplError> {
        if !self
            .decls
            .iter()
            .any(|d| d.kind == Kind::Model && d.name == name)
        {
            let models: Vec<&str> = self
                .decls
                .iter()
                .filter(|d| d.kind == Kind::Model)
                .map(|d| d.name.as_str())
                .collect();
            return Err(ReplError::msg(if models.is_empty() {
                format!("error: no model named `{name}`: the session has no models (type one, or `:load FILE`)")
            } else {
                format!(
                    "error: no model named `{name}` (models: {})",
                    models.join(", ")
                )
            }));
        }
        // Train data paths are relative to the file that declares the train block.
        let train_file = self
            .decls
            .iter()
            .find(|d| d.kind == Kind::Train && d.name == name)
            .and_then(|d| self.sources.get(d.seg.file).path.clone());
        let saved = self.loaded.clone();
        if train_file.is_some() {
            self.loaded = train_file;
        }
        let checked = self.check_session(Span::default(), usize::MAX);
        self.loaded = saved;
        let (program, _) = checked?;
        let m = program
            .model(Some(name))
            .ok_or_else(|| ReplError::msg(format!("error: no model named `{name}`")))?;
        let cfg = program
            .train(name)
            .cloned()
            .unwrap_or_else(|| TrainConfig::defaults(name, m.span));
        Ok((rt::prepare(m), cfg))
    }

    // ---- commands ----

    fn command(&mut self, cmd: &str) -> Result<Output, ReplError> {
        let (name, rest) = match cmd.find(char::is_whitespace) {
            Some(i) => (&cmd[..i], cmd[i..].trim()),
            None => (cmd, ""),
        };
        let mut out = Output::default();
        let needs = |what: &str| -> Result<(), ReplError> {
            if rest.is_empty() {
                Err(ReplError::msg(format!("error: usage: :{name} {what}")))
            } else {
                Ok(())
            }
        };
        match name {
            "q" | "quit" | "exit" => out.quit = true,
            "h" | "help" | "?" => out.text = help(),
            "load" | "l" => {
                needs("FILE")?;
                return self.load(Path::new(rest.trim_matches('"')));
            }
            "reload" | "r" => {
                let Some(p) = self.loaded.clone() else {
                    return Err(ReplError::msg(
                        "error: no file was loaded: use `:load FILE`",
                    ));
                };
                return self.load(&p);
            }
            "type" | "t" => {
                needs("EXPR")?;
                let c = self.compile_arg(rest, false)?;
                out.warnings = c.warnings;
                let _ = writeln!(out.text, "{}", c.program.forward.nodes[c.out].shape);
            }
            "ir" => {
                needs("EXPR")?;
                let c = self.compile_arg(rest, false)?;
                out.text = c.program.forward.print(None);
            }
            "summary" => {
                needs("MODEL")?;
                let (p, _) = self.model(rest)?;
                out.text = crate::summary::render_summary(&p.model);
            }
            "train" => {
                needs("MODEL [EPOCHS]")?;
                let mut words = rest.split_whitespace();
                let model = words.next().unwrap_or("");
                let epochs = match words.next() {
                    Some(e) => match e.parse::<u64>() {
                        Ok(n) if n >= 1 => Some(n),
                        _ => {
                            return Err(ReplError::msg(format!(
                                "error: `{e}` is not a number of epochs"
                            )))
                        }
                    },
                    None => None,
                };
                out.text = self.train(model, epochs)?;
            }
            "eval" => {
                needs("MODEL")?;
                out.text = self.evaluate(rest)?;
            }
            "predict" => {
                needs("MODEL EXPR")?;
                let (model, expr) = rest
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| ReplError::msg("error: usage: :predict MODEL EXPR"))?;
                out.text = self.predict(model, expr.trim())?;
            }
            "grad" => {
                needs("EXPR wrt NAME")?;
                let (expr, wrt) = rest
                    .rsplit_once(" wrt ")
                    .ok_or_else(|| ReplError::msg("error: usage: :grad EXPR wrt NAME"))?;
                out.text = self.grad(expr.trim(), wrt.trim())?;
            }
            "save" => {
                needs("NAME FILE")?;
                let (n, f) = rest
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| ReplError::msg("error: usage: :save NAME FILE"))?;
                out.text = self.save(n, Path::new(f.trim().trim_matches('"')))?;
            }
            "params" => out.text = self.params_text(),
            "seed" => {
                needs("N")?;
                self.seed = rest
                    .parse()
                    .map_err(|_| ReplError::msg(format!("error: `{rest}` is not a seed")))?;
                self.draws = 0;
            }
            other => {
                let names: Vec<&str> = COMMANDS.iter().map(|c| &c.0[1..]).collect();
                let hint = crate::diag::did_you_mean(other, names)
                    .map_or(String::new(), |s| format!(": did you mean `:{s}`?"));
                return Err(ReplError::msg(format!(
                    "error: unknown command `:{other}`{hint} (`:help` lists them)"
                )));
            }
        }
        Ok(out)
    }

    fn train(&mut self, model: &str, epochs: Option<u64>) -> Result<String, ReplError> {
        let (program, mut cfg) = self.model(model)?;
        if let Some(d) = check::trainable(&program.model, program.model.span) {
            return Err(d.into());
        }
        if let Some(e) = epochs {
            cfg.epochs = e;
        }
        let Some(train) = cfg.train_data.clone() else {
            return Err(ReplError::msg(format!(
                "error: model `{model}` has no training data: name it in its train block (`data train: \"file.csv\"`)"
            )));
        };
        let paths = RunPaths {
            train,
            test: cfg.test_data.clone(),
            save: None,
            resume: None,
        };
        let mut text = String::new();
        let _ = writeln!(
            text,
            "training `{model}`: {} parameters, {} epochs, batch {}, seed {}",
            crate::summary::thousands(program.model.trainable_count()),
            cfg.epochs,
            cfg.batch,
            cfg.seed
        );
        let mut records = Vec::new();
        let mut run = Run::new(&program, &cfg);
        let report = {
            let mut jit = Jit::new();
            let mut observe = |r: &rt::EpochRecord| records.push(r.clone());
            run.train(&mut jit, &paths, &mut observe)?
        };
        let state = run.state.clone();
        let standardizer = run.standardizer().cloned();
        let every = (records.len() / 10).max(1);
        for (i, r) in records.iter().enumerate() {
            if i == 0 || (i + 1) % every == 0 || i + 1 == records.len() {
                let mut line = format!(
                    "epoch {:>4}/{}  loss {:.5}",
                    r.epoch, cfg.epochs, r.train_loss
                );
                if let Some(v) = r.val_loss {
                    let _ = write!(line, "  val_loss {v:.5}");
                }
                if let Some(a) = r.val_accuracy {
                    let _ = write!(line, "  val_accuracy {:.2}%", a * 100.0);
                }
                let _ = writeln!(text, "{line}");
            }
        }
        if let Some(reason) = &report.stopped_early {
            let _ = writeln!(text, "stopped early: {reason}");
        }
        let _ = writeln!(text, "{}", eval_line("train", &report.train));
        if let Some(t) = &report.test {
            let _ = writeln!(text, "{}", eval_line("test", t));
        }
        self.trained.insert(
            model.to_string(),
            Trained {
                program,
                state,
                standardizer,
                cfg,
            },
        );
        Ok(text)
    }

    /// The trained model, or the model with its initial parameters (and a note).
    fn ready(&mut self, model: &str) -> Result<(&Trained, String), ReplError> {
        let mut note = String::new();
        if !self.trained.contains_key(model) {
            let (program, cfg) = self.model(model)?;
            let params = init_params(&program.model, cfg.seed);
            note = format!("note: `{model}` is not trained: its parameters are the initial ones (`:train {model}`)\n");
            self.trained.insert(
                model.to_string(),
                Trained {
                    program,
                    state: State {
                        params,
                        states: vec![],
                    },
                    standardizer: None,
                    cfg,
                },
            );
        }
        Ok((&self.trained[model], note))
    }

    fn evaluate(&mut self, model: &str) -> Result<String, ReplError> {
        let (t, mut text) = self.ready(model)?;
        let Some(path) = t.cfg.test_data.clone().or(t.cfg.train_data.clone()) else {
            return Err(ReplError::msg(format!(
                "error: model `{model}` has no data to evaluate on: name it in its train block"
            )));
        };
        let spec = rt::data_spec(&t.program.forward);
        let mut d = data::load(&path, &spec, true).map_err(rt::RuntimeError::from)?;
        crate::runtime::sanity::check(&d, &spec, &path).map_err(rt::RuntimeError::from)?;
        if let Some(s) = &t.standardizer {
            s.apply(&mut d);
        }
        let e = rt::evaluate(
            &t.program,
            &mut Jit::new(),
            &t.state,
            &d,
            t.cfg.batch as usize,
        )?;
        let _ = writeln!(text, "{}: {} rows", path.display(), e.rows);
        if let Some(l) = e.loss {
            let _ = writeln!(text, "loss: {l:.6}");
        }
        if let Some(c) = &e.classification {
            text.push_str(&c.render());
        }
        Ok(text)
    }

    fn predict(&mut self, model: &str, expr: &str) -> Result<String, ReplError> {
        self.ready(model)?;
        let x = self.eval_arg(expr)?;
        let (t, mut text) = self.ready(model)?;
        let g = &t.program.forward;
        let [input] = g.inputs.as_slice() else {
            return Err(ReplError::msg(format!(
                "error: `:predict` needs a model with one input; `{model}` has {}",
                g.inputs.len()
            )));
        };
        let want: Vec<usize> = input.shape.0[1..]
            .iter()
            .map(|d| d.size().unwrap_or(1) as usize)
            .collect();
        let x = if x.shape() == want.as_slice() {
            x.insert_axis(ndarray::Axis(0))
        } else {
            x
        };
        if x.ndim() == 0 || x.shape()[1..] != want[..] {
            return Err(ReplError::msg(format!(
                "error: `{}` of `{model}` is {}, the value is {}",
                input.name,
                input.shape,
                shape_text(x.shape())
            )));
        }
        let rows = x.shape()[0];
        let mut d = data::Dataset {
            inputs: vec![x],
            targets: vec![],
            rows,
        };
        if let Some(s) = &t.standardizer {
            s.apply(&mut d);
        }
        let (outs, classes) = rt::predict(
            &t.program,
            &mut Jit::new(),
            &t.state,
            &d,
            t.cfg.batch as usize,
        )?;
        for ((name, _), v) in g.outputs.iter().zip(&outs) {
            let _ = writeln!(
                text,
                "{name}: {}\n{}",
                shape_text(v.shape()),
                format::format_tensor(v)
            );
        }
        if let Some(cs) = classes {
            let cs: Vec<String> = cs.iter().map(usize::to_string).collect();
            let _ = writeln!(text, "classes: [{}]", cs.join(", "));
        }
        Ok(text)
    }

    fn grad(&mut self, expr: &str, wrt: &str) -> Result<String, ReplError> {
        let c = self.compile_arg(expr, false)?;
        let mut g = c.program.forward.clone();
        let out_shape = &g.nodes[c.out].shape;
        if out_shape.per_sample() != Some(1) || out_shape.0.iter().any(|d| d.size().is_none()) {
            return Err(ReplError::msg(format!(
                "error: `:grad` needs a scalar expression; this one is {out_shape} (try `sum(...)`)"
            )));
        }
        let mut params = c.params.clone();
        for p in &mut g.params {
            p.trainable = p.tensor.name == wrt;
        }
        let input = g.inputs.iter().position(|t| t.name == wrt);
        match input {
            Some(i) => {
                let p = g.params.len();
                let shape = g.inputs[i].shape.clone();
                g.params.push(Param {
                    tensor: Tensor {
                        name: wrt.to_string(),
                        shape,
                        dtype: DType::F32,
                    },
                    trainable: true,
                });
                params.push(c.inputs[i].clone());
                for n in &mut g.nodes {
                    if n.op == Op::Input(i) {
                        n.op = Op::Param(p);
                    }
                }
            }
            None if g.params.iter().any(|p| p.trainable) => {}
            None => {
                let known = self.values.contains_key(wrt) || self.params.contains_key(wrt);
                return match self.values.get(wrt).or(self.params.get(wrt)) {
                    Some(v) if known => Ok(format!(
                        "∂/∂{wrt}: {} (the expression does not use `{wrt}`)\n{}\n",
                        shape_text(v.shape()),
                        format::format_tensor(&ArrayD::zeros(v.raw_dim()))
                    )),
                    _ => Err(ReplError::msg(format!(
                        "error: `{wrt}` is not a tensor or parameter of the session (`:params` lists parameters)"
                    ))),
                };
            }
        }
        g.loss = Some(c.out);
        g.objective = Some(c.out);
        differentiate(&mut g);
        let state = State {
            params,
            states: vec![],
        };
        let (value, grads) = Jit::new()
            .gradients(&g, &state, &c.inputs, &[], &HashMap::new())
            .map_err(|e| ReplError::msg(format!("error: {e}")))?;
        let Some((_, gr)) = grads.into_iter().next() else {
            return Err(ReplError::msg("internal error: no gradient"));
        };
        Ok(format!(
            "value: {}\n∂/∂{wrt}: {}\n{}\n",
            format::format_scalar(value as f32),
            shape_text(gr.shape()),
            format::format_tensor(&gr)
        ))
    }

    fn save(&self, name: &str, path: &Path) -> Result<String, ReplError> {
        let mut tensors: BTreeMap<String, ArrayD<f32>> = BTreeMap::new();
        if let Some(v) = self.values.get(name).or(self.params.get(name)) {
            tensors.insert(name.to_string(), v.clone());
        } else if let Some(t) = self.trained.get(name) {
            for (p, v) in t.program.forward.params.iter().zip(&t.state.params) {
                tensors.insert(p.tensor.name.clone(), v.clone());
            }
        } else if self.layers.iter().any(|(n, _)| n == name) {
            let prefix = format!("{name}.");
            for (k, v) in &self.params {
                if k.starts_with(&prefix) {
                    tensors.insert(k.clone(), v.clone());
                }
            }
            if tensors.is_empty() {
                return Err(ReplError::msg(format!(
                    "error: layer `{name}` has no parameters yet: use it in an expression first"
                )));
            }
        } else {
            return Err(ReplError::msg(format!(
                "error: `{name}` is not a tensor, parameter, layer or trained model of the session"
            )));
        }
        let ext = values::extension(path);
        match ext.as_str() {
            "npy" => {
                let [(_, v)] = tensors.iter().collect::<Vec<_>>()[..] else {
                    return Err(ReplError::msg(format!(
                        "error: `{name}` holds {} tensors: save it as .safetensors",
                        tensors.len()
                    )));
                };
                ndarray_npy::write_npy(path, v).map_err(|e| {
                    ReplError::msg(format!("error: cannot write `{}`: {e}", path.display()))
                })?;
            }
            "safetensors" => rt::save_tensors(path, tensors.clone())?,
            _ => {
                return Err(ReplError::msg(
                    "error: save to a `.npy` or `.safetensors` file",
                ))
            }
        }
        Ok(format!(
            "saved {} tensor{} to {}\n",
            tensors.len(),
            if tensors.len() == 1 { "" } else { "s" },
            path.display()
        ))
    }

    fn params_text(&self) -> String {
        let mut text = String::new();
        for (n, v) in &self.values {
            if n != "_" {
                let _ = writeln!(text, "{n:<24} {}  tensor", shape_text(v.shape()));
            }
        }
        for (n, v) in &self.params {
            let _ = writeln!(text, "{n:<24} {}", shape_text(v.shape()));
        }
        for (l, _) in &self.layers {
            let prefix = format!("{l}.");
            if !self.params.keys().any(|k| k.starts_with(&prefix)) {
                let _ = writeln!(text, "{l:<24} (layer, not used yet)");
            }
        }
        for (m, t) in &self.trained {
            let count: usize = t.state.params.iter().map(|p| p.len()).sum();
            let _ = writeln!(text, "model {m}: {count} parameters");
            for (p, v) in t.program.forward.params.iter().zip(&t.state.params) {
                let _ = writeln!(text, "  {:<22} {}", p.tensor.name, shape_text(v.shape()));
            }
        }
        if text.is_empty() {
            text = "no tensors, parameters or trained models yet\n".into();
        }
        text
    }
}

fn eval_line(what: &str, e: &rt::Evaluation) -> String {
    let mut line = format!("{what}: {} rows", e.rows);
    if let Some(l) = e.loss {
        let _ = write!(line, "  loss {l:.5}");
    }
    if let Some(c) = &e.classification {
        let _ = write!(line, "  accuracy {:.2}%", c.accuracy * 100.0);
    }
    line
}

/// The declarations of a parsed input.
fn decls_of(f: &ast::File, file: FileId) -> Vec<Decl> {
    f.items
        .iter()
        .map(|it| {
            let (kind, name, span) = match it {
                Item::Model(m) => (Kind::Model, m.name.name.clone(), m.span),
                Item::Block(b) => (Kind::Block, b.name.name.clone(), b.span),
                Item::Train(t) => (Kind::Train, t.model.name.clone(), t.span),
                Item::Use(u) => (Kind::Use, u.path.clone(), u.span),
            };
            Decl {
                kind,
                name,
                seg: Seg {
                    file,
                    start: span.start,
                    end: span.end,
                },
            }
        })
        .collect()
}

/// `[4, 3]`.
pub fn shape_text(s: &[usize]) -> String {
    let d: Vec<String> = s.iter().map(usize::to_string).collect();
    format!("[{}]", d.join(", "))
}

/// A value with its shape: the shape line, then the values.
pub fn describe(v: &ArrayD<f32>) -> String {
    format!("{}\n{}", shape_text(v.shape()), format::format_tensor(v))
}

/// Every name an expression mentions (values, callees, pipeline stages).
fn idents(e: &Expr, out: &mut HashSet<String>) {
    let call = |c: &ast::Call, out: &mut HashSet<String>| {
        out.insert(c.callee.name.clone());
        for a in c.args() {
            idents(&a.value, out);
        }
    };
    match &e.kind {
        ExprKind::Name(i) => {
            out.insert(i.name.clone());
        }
        ExprKind::Call(c) => call(c, out),
        ExprKind::Pipe { head, stages } => {
            idents(head, out);
            for s in stages {
                call(s, out);
            }
        }
        ExprKind::Binary { lhs, rhs, .. } => {
            idents(lhs, out);
            idents(rhs, out);
        }
        ExprKind::Neg(x) => idents(x, out),
        ExprKind::Tuple(xs) | ExprKind::List(xs) | ExprKind::Then(xs) => {
            for x in xs {
                idents(x, out);
            }
        }
        ExprKind::Number { .. } | ExprKind::Str(_) => {}
    }
}

/// Whether a line that failed to parse was meant as a statement (`x = ...`,
/// `layer ...`) rather than an expression.
fn looks_like_statement(text: &str) -> bool {
    let t = text.trim_start();
    let word: String = t
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if [
        "layer",
        "input",
        "target",
        "output",
        "loss",
        "regularize",
        "return",
        "allow",
    ]
    .contains(&word.as_str())
    {
        return true;
    }
    let rest = t[word.len()..].trim_start();
    !word.is_empty()
        && (rest.starts_with(':') || (rest.starts_with('=') && !rest.starts_with("==")))
}

/// True when `text` has unclosed brackets or braces: the line editor keeps reading.
pub fn needs_more(text: &str) -> bool {
    let mut depth: i64 = 0;
    let mut in_str = false;
    for line in text.lines() {
        for c in line.chars() {
            match c {
                '"' => in_str = !in_str,
                '#' if !in_str => break,
                '(' | '[' | '{' if !in_str => depth += 1,
                ')' | ']' | '}' if !in_str => depth -= 1,
                _ => {}
            }
        }
        in_str = false;
    }
    depth > 0 || text.trim_end().ends_with("|>")
}

/// Words to complete: commands, keywords, built-ins and constructors.
pub fn vocabulary() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = COMMANDS.iter().map(|c| c.0).collect();
    v.extend([
        "model",
        "block",
        "train",
        "use",
        "input",
        "target",
        "layer",
        "output",
        "loss",
        "regularize",
        "return",
        "allow",
        "class",
        "wrt",
    ]);
    v.extend(catalog::BUILTINS.iter().map(|s| s.name));
    v.extend(values::CONSTRUCTORS);
    v.sort_unstable();
    v.dedup();
    v
}

/// `:help`.
pub fn help() -> String {
    let mut s = String::from(
        "Type an expression to evaluate it (`[[0, 1], [1, 0]] @ randn([2, 3], seed: 1)`),\n\
         a binding (`h = x |> dense(4) |> relu`), a shared layer (`layer enc = dense(4)`),\n\
         or a `model`, `block` or `train` declaration. Tensors: literals, randn, rand,\n\
         zeros, ones, full, eye, arange, load(\"x.npy\"), load(\"d.csv\", columns: (0, 4)).\n\n",
    );
    for (c, args, what) in COMMANDS {
        let usage = format!("{c} {args}");
        let _ = writeln!(s, "  {usage:<24} {what}");
    }
    s
}

#[cfg(test)]
mod tests;
