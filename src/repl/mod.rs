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

mod commands;
mod decls;
pub mod format;
mod statements;
pub mod synth;
pub mod values;

use crate::check::catalog;
use crate::check::train::TrainConfig;
use crate::diag::Diagnostic;
use crate::exec::{Bug, RunError, State};
use crate::ir::NodeId;
use crate::runtime::data::{DataError, Standardizer};
use crate::runtime::error::RuntimeError;
use crate::runtime::program::Program;
use crate::span::{FileId, Sources, Span};
use crate::syntax::ast::{self, Expr, ExprKind, Item};
use ndarray::ArrayD;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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
        "MODEL [EPOCHS] [x: X, y: Y]",
        "train a model with its train block, on its data files or the session's tensors",
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
    /// A data file the session read is wrong.
    Data(DataError),
    /// Any other failure (a command's usage, an I/O error): the message alone, which
    /// renders as `error: MESSAGE`.
    Message(String),
    /// Kiln's bug.
    Internal(Bug),
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

impl From<RuntimeError> for ReplError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Diverged(d) => ReplError::Diagnostics(vec![*d]),
            RuntimeError::Run(RunError::Internal(b)) => ReplError::Internal(b),
            RuntimeError::Data(d) => ReplError::Data(d),
            other => ReplError::Message(other.to_string()),
        }
    }
}

impl From<RunError> for ReplError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Input(m) => ReplError::Message(m),
            RunError::Internal(b) => ReplError::Internal(b),
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
    v.extend(catalog::all().iter().map(|s| s.name));
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
