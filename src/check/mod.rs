//! Checking: name resolution, shapes, train blocks and lints over the AST, producing
//! [`CheckedModel`]s and [`TrainConfig`]s, or diagnostics.

pub mod args;
pub use crate::ops::catalog;
pub mod graph;
pub mod lints;
mod model;

pub mod train;

pub use graph::CheckedModel;
pub use train::TrainConfig;

use crate::diag::{Code, Diagnostic, Severity};
use crate::span::{FileId, Sources, Span};
use crate::syntax::{ast, parse_source};
use graph::{Init, LayerKind, LossKind, Op, ParamRole};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// How lints are reported: `--allow CODE`, `--deny CODE`, `--deny warnings`.
#[derive(Clone, Debug, Default)]
pub struct LintLevels {
    /// Codes (or lint names) silenced.
    pub allow: Vec<String>,
    /// Codes (or lint names) turned into errors; `warnings` denies all.
    pub deny: Vec<String>,
}

impl LintLevels {
    fn matches(list: &[String], code: Code) -> bool {
        list.iter().any(|x| {
            x.eq_ignore_ascii_case(code.as_str())
                || x == "warnings"
                || crate::diag::lookup(x).is_some_and(|c| c.code == code)
        })
    }
}

/// Everything a file declares, checked.
#[derive(Clone, Debug, Default)]
pub struct Program {
    /// Models in source order.
    pub models: Vec<CheckedModel>,
    /// Train blocks in source order.
    pub trains: Vec<TrainConfig>,
}

impl Program {
    /// The model called `name`, or the only/first one.
    pub fn model(&self, name: Option<&str>) -> Option<&CheckedModel> {
        match name {
            Some(n) => self.models.iter().find(|m| m.name == n),
            None => self.models.first(),
        }
    }

    /// The first train block of model `name`.
    pub fn train(&self, name: &str) -> Option<&TrainConfig> {
        self.trains.iter().find(|t| t.model == name)
    }
}

/// The result of checking: the program (when there are no errors) and all diagnostics.
#[derive(Debug)]
pub struct Checked {
    /// Present when no error was found.
    pub program: Option<Program>,
    /// Errors and warnings in source order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    /// True when any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Options of a check beyond the lint levels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// The REPL's mode (`kiln repl`): an input's first dimension may be a fixed size
    /// (`input x: [4, 3]`, or a scalar `[]`), layers take any first dimension as the
    /// batch, `reshape` may change it, and reductions without `axis` reduce every axis.
    pub unbatched: bool,
}

/// Parses and checks file `file` of `sources` (loading files it `use`s into `sources`).
pub fn check_file(sources: &mut Sources, file: FileId, levels: &LintLevels) -> Checked {
    check_file_with(sources, file, levels, CheckOptions::default())
}

/// [`check_file`] with options.
pub fn check_file_with(
    sources: &mut Sources,
    file: FileId,
    levels: &LintLevels,
    options: CheckOptions,
) -> Checked {
    let mut diags = Vec::new();
    let text = sources.get(file).text.clone();
    let parsed = match parse_source(&text, file) {
        Ok(f) => f,
        Err(d) => {
            return Checked {
                program: None,
                diagnostics: vec![d],
            }
        }
    };
    if parsed.items.is_empty() {
        return Checked {
            program: None,
            diagnostics: vec![declares_nothing(sources, file)],
        };
    }
    let base = sources
        .get(file)
        .path
        .as_ref()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let mut blocks: HashMap<String, ast::BlockDecl> = HashMap::new();
    let main_path = sources.get(file).path.clone().unwrap_or_default();
    let mut stack = vec![main_path.canonicalize().unwrap_or(main_path)];
    collect_blocks(
        sources,
        &parsed,
        base.as_deref(),
        &mut blocks,
        &mut stack,
        &mut diags,
    );
    // A block that failed to import is reported once, at its `use`, not at every call.
    let import_failed = diags.iter().any(|d| d.code != Code::E0204);

    let mut program = Program::default();
    let mut model_spans: HashMap<String, Span> = HashMap::new();
    // Models whose `loss` statement failed: its error is reported, E0404 would repeat it.
    let mut failed_losses: HashSet<String> = HashSet::new();
    for item in &parsed.items {
        let ast::Item::Model(decl) = item else {
            continue;
        };
        if let Some(prev) = model_spans.insert(decl.name.name.clone(), decl.name.span) {
            diags.push(
                Diagnostic::error(
                    Code::E0204,
                    format!("model `{}` is declared twice", decl.name.name),
                    decl.name.span,
                )
                .with_label(prev, "first declared here"),
            );
            continue;
        }
        let r = model::check_model(decl, &blocks, options.unbatched);
        let failed = r.errors.iter().any(Diagnostic::is_error);
        diags.extend(
            r.errors
                .into_iter()
                .filter(|d| !(import_failed && d.code == Code::E0202)),
        );
        let mut m = r.model;
        if m.loss.is_none()
            && decl
                .body
                .iter()
                .any(|s| matches!(s, ast::Stmt::Loss { .. }))
        {
            failed_losses.insert(m.name.clone());
        }
        if !failed {
            diags.extend(zero_one_loss(&m));
            he_before_relu(&mut m);
            for w in lints::lint_model(&m, &r.unused_layers, &r.block_bindings) {
                if !r.allowed.contains(&w.code) {
                    diags.push(w);
                }
            }
        }
        program.models.push(m);
    }
    for item in &parsed.items {
        let ast::Item::Train(decl) = item else {
            continue;
        };
        let model = program.models.iter().find(|m| m.name == decl.model.name);
        let task = model.and_then(train::Task::of);
        let params = model.map_or(&[][..], |m| m.params.as_slice());
        let cfg = train::check_train(decl, base.as_deref(), task, params, &mut diags);
        match model {
            None => {
                let names: Vec<&str> = program.models.iter().map(|m| m.name.as_str()).collect();
                let mut d = Diagnostic::error(
                    Code::E0208,
                    format!("no model named `{}`", cfg.model),
                    decl.model.span,
                )
                .primary_label("unknown model");
                if let Some(s) = crate::diag::did_you_mean(&cfg.model, names) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                }
                diags.push(d);
            }
            Some(m) if failed_losses.contains(&m.name) => {}
            Some(m) => {
                if let Some(d) = trainable(m, decl.model.span) {
                    diags.push(d);
                }
            }
        }
        program.trains.push(cfg);
    }
    finish(diags, program, levels)
}

/// The error for a file without a single declaration (empty, only comments or blank
/// lines), pointing where its text ends.
fn declares_nothing(sources: &Sources, file: FileId) -> Diagnostic {
    let f = sources.get(file);
    let name = Path::new(&f.name)
        .file_name()
        .map_or(f.name.clone(), |n| n.to_string_lossy().into_owned());
    let end = f.text.trim_end().len();
    Diagnostic::error(
        Code::E0211,
        format!("`{name}` declares nothing"),
        Span::new(file, end, end),
    )
    .primary_label("the file ends here")
    .with_help("a model file declares at least one `model NAME { ... }`, or `block`s for other files to `use`")
}

/// Why a model cannot be trained, if it cannot: it has no loss. (A `zero_one` in the loss
/// is an error in the model itself, found by the check: see [`zero_one_loss`].)
pub fn trainable(m: &CheckedModel, at: Span) -> Option<Diagnostic> {
    if m.loss.is_some() {
        return None;
    }
    Some(
        Diagnostic::error(
            Code::E0404,
            format!("model `{}` has no `loss` to train", m.name),
            at,
        )
        .with_label(m.span, "declared here")
        .with_help("add a loss to the model, e.g. `loss cross_entropy(logits, label)`"),
    )
}

/// A `zero_one` in the model's loss: a metric whose gradient is zero almost everywhere,
/// so nothing could ever minimize the loss (E0404, with or without a train block).
fn zero_one_loss(m: &CheckedModel) -> Option<Diagnostic> {
    let mut stack: Vec<usize> = m.loss.into_iter().collect();
    let mut seen = HashSet::new();
    while let Some(n) = stack.pop() {
        if !seen.insert(n) {
            continue;
        }
        let node = &m.nodes[n];
        if node.op == Op::Loss(LossKind::ZeroOne) {
            return Some(
                Diagnostic::error(Code::E0404, "`zero_one` cannot be trained", node.span)
                    .primary_label("its gradient is zero almost everywhere")
                    .with_help(
                        "train with `cross_entropy` and report accuracy with `metrics accuracy`",
                    ),
            );
        }
        stack.extend(&node.inputs);
    }
    None
}

fn collect_blocks(
    sources: &mut Sources,
    file: &ast::File,
    base: Option<&Path>,
    blocks: &mut HashMap<String, ast::BlockDecl>,
    stack: &mut Vec<PathBuf>,
    diags: &mut Vec<Diagnostic>,
) {
    for item in &file.items {
        match item {
            ast::Item::Block(b) => {
                if let Some(prev) = blocks.get(&b.name.name) {
                    diags.push(
                        Diagnostic::error(
                            Code::E0204,
                            format!("block `{}` is declared twice", b.name.name),
                            b.name.span,
                        )
                        .with_label(prev.name.span, "first declared here"),
                    );
                } else {
                    blocks.insert(b.name.name.clone(), b.clone());
                }
            }
            ast::Item::Use(u) => {
                let path = base.map_or_else(|| PathBuf::from(&u.path), |b| b.join(&u.path));
                let canon = path.canonicalize().unwrap_or_else(|_| path.clone());
                if stack.contains(&canon) {
                    let chain: Vec<String> = stack
                        .iter()
                        .skip(1)
                        .map(|p| format!("`{}`", p.display()))
                        .collect();
                    let mut d = Diagnostic::error(
                        Code::E0210,
                        format!("importing `{}` forms a cycle", u.path),
                        u.span,
                    )
                    .primary_label("this file is already being imported");
                    if !chain.is_empty() {
                        d = d.with_note(format!("import chain: {}", chain.join(" → ")));
                    }
                    diags.push(d);
                    continue;
                }
                if stack.len() > MAX_IMPORT_DEPTH {
                    diags.push(
                        Diagnostic::error(
                            Code::E0210,
                            format!("imports are nested more than {MAX_IMPORT_DEPTH} files deep"),
                            u.span,
                        )
                        .primary_label("one import too many")
                        .with_help("import the blocks from fewer levels of files"),
                    );
                    continue;
                }
                if sources.find_path(&canon).is_some() {
                    // Already imported through another path: its blocks are known.
                    continue;
                }
                let text = match read_source(&path) {
                    Ok(bytes) => match String::from_utf8(bytes) {
                        Ok(t) => t,
                        Err(e) => {
                            diags.push(
                                Diagnostic::error(
                                    Code::E0104,
                                    format!("`{}` is not valid UTF-8", u.path),
                                    u.span,
                                )
                                .primary_label(format!(
                                    "invalid byte at offset {}",
                                    e.utf8_error().valid_up_to()
                                ))
                                .with_help("save the file as UTF-8"),
                            );
                            continue;
                        }
                    },
                    Err(e) => {
                        diags.push(
                            Diagnostic::error(
                                Code::E0210,
                                format!("cannot read `{}`", u.path),
                                u.span,
                            )
                            .primary_label(format!("{e}: {}", path.display()))
                            .with_note("paths in `use` are relative to the importing file"),
                        );
                        continue;
                    }
                };
                let id = sources.add(path.display().to_string(), Some(&path), text.clone());
                match parse_source(&text, id) {
                    Ok(f) => {
                        stack.push(canon.clone());
                        let sub_base = path.parent().map(Path::to_path_buf);
                        collect_blocks(sources, &f, sub_base.as_deref(), blocks, stack, diags);
                        stack.pop();
                    }
                    Err(d) => diags.push(d),
                }
            }
            _ => {}
        }
    }
}

/// Layers with default initialization followed by a ReLU-family activation (possibly
/// through normalization or dropout) start with He initialization; others keep Xavier.
fn he_before_relu(m: &mut CheckedModel) {
    let mut users: Vec<Vec<usize>> = vec![vec![]; m.nodes.len()];
    for (i, n) in m.nodes.iter().enumerate() {
        for &j in &n.inputs {
            users[j].push(i);
        }
    }
    let relu_family = |op: &Op| matches!(op, Op::Activation(f) if f.def().traits.relu_like);
    for i in 0..m.nodes.len() {
        let Op::Layer(l) = m.nodes[i].op else {
            continue;
        };
        let layer = &m.layers[l];
        if !layer.default_init
            || !matches!(layer.kind, LayerKind::Dense { .. } | LayerKind::Conv { .. })
        {
            continue;
        }
        let mut cur = i;
        let feeds_relu = loop {
            let [next] = users[cur].as_slice() else {
                break false;
            };
            let op = &m.nodes[*next].op;
            if relu_family(op)
                || matches!(op, Op::Layer(p) if m.layers[*p].kind == LayerKind::Prelu)
            {
                break true;
            }
            let passes = matches!(op, Op::Dropout(_))
                || matches!(op, Op::Layer(p) if matches!(m.layers[*p].kind, LayerKind::BatchNorm { .. } | LayerKind::LayerNorm { .. }));
            if !passes {
                break false;
            }
            cur = *next;
        };
        if feeds_relu {
            for &p in &m.layers[l].params {
                if m.params[p].role == ParamRole::Weight {
                    m.params[p].init = Init::He;
                }
            }
        }
    }
}

fn finish(mut diags: Vec<Diagnostic>, program: Program, levels: &LintLevels) -> Checked {
    let mut seen = HashSet::new();
    diags.retain(|d| seen.insert((d.code, d.span(), d.message.clone())));
    diags.retain(|d| d.is_error() || !LintLevels::matches(&levels.allow, d.code));
    for d in &mut diags {
        if d.severity == Severity::Warning && LintLevels::matches(&levels.deny, d.code) {
            d.severity = Severity::Error;
            d.notes
                .push(format!("`{}` is denied on the command line", d.code));
        }
    }
    diags.sort_by_key(|d| (d.span().file, d.span().start));
    let failed = diags.iter().any(Diagnostic::is_error);
    Checked {
        program: (!failed).then_some(program),
        diagnostics: diags,
    }
}

/// Model files larger than this are refused (a `use "/dev/zero"` must not eat memory).
pub const MAX_SOURCE_BYTES: u64 = 16 << 20;

/// Imports nest at most this deep.
pub const MAX_IMPORT_DEPTH: usize = 32;

/// Reads a source file of at most [`MAX_SOURCE_BYTES`].
fn read_source(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_SOURCE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SOURCE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB, the limit for model files",
            MAX_SOURCE_BYTES >> 20
        )));
    }
    Ok(bytes)
}

/// Reads a model file into `sources`. Non-UTF-8 bytes become an E0104 diagnostic (the
/// text is kept with replacement characters so the diagnostic can point at them).
pub fn load_file(
    sources: &mut Sources,
    path: &Path,
) -> std::io::Result<(FileId, Option<Diagnostic>)> {
    let bytes = read_source(path)?;
    let name = path.display().to_string();
    Ok(match String::from_utf8(bytes) {
        Ok(text) => (sources.add(name, Some(path), text), None),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let id = sources.add(name, Some(path), text);
            let d = Diagnostic::error(
                Code::E0104,
                "the file is not valid UTF-8",
                Span::new(id, at, at + 1),
            )
            .primary_label("invalid byte here")
            .with_help("save the file as UTF-8");
            (id, Some(d))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, unbatched: bool) -> Checked {
        let mut sources = Sources::new();
        let id = sources.add("t.kiln", None, text.to_string());
        check_file_with(
            &mut sources,
            id,
            &LintLevels::default(),
            CheckOptions { unbatched },
        )
    }

    /// The REPL's unbatched mode accepts fixed first dimensions (E0311 otherwise) and
    /// layers take them as the batch; normal checking is unchanged.
    #[test]
    fn unbatched_mode() {
        let src = "model m {\n  input x: [4, 3]\n  input w: [3, 2]\n  y = x @ w |> dense(5) |> relu\n  output y\n}\n";
        let normal = check(src, false);
        assert!(normal.diagnostics.iter().any(|d| d.code == Code::E0311));
        let repl = check(src, true);
        assert!(!repl.has_errors(), "{:?}", repl.diagnostics);
        let m = &repl.program.unwrap().models[0];
        let out = m.outputs[0].node;
        assert_eq!(m.nodes[out].ty.to_string(), "[4, 5]");
        // Reductions without an axis reduce everything; reshape may change the first axis.
        let src = "model m {\n  input x: [4, 3]\n  s = sum(x)\n  r = x |> reshape([2, 6])\n  output s\n  output r\n}\n";
        let repl = check(src, true);
        assert!(!repl.has_errors(), "{:?}", repl.diagnostics);
        let m = &repl.program.unwrap().models[0];
        let tys: Vec<String> = m
            .outputs
            .iter()
            .map(|o| m.nodes[o.node].ty.to_string())
            .collect();
        assert_eq!(tys, ["[]", "[2, 6]"]);
        assert!(check(src, false).has_errors());
    }
}
