//! Evaluating typed input: statements and expressions become a synthesized model that
//! is checked, lowered, compiled and run; `layer` values keep their parameters.

use super::synth::Synth;
use super::{
    describe, format, idents, looks_like_statement, shape_text, values, Compiled, Kind, Output,
    ReplError, Seg, Session, Typed,
};
use crate::check::{self, CheckOptions, LintLevels};
use crate::diag::{Code, Diagnostic};
use crate::exec::{Backend, Bug, State};
use crate::jit::Jit;
use crate::runtime::init::init_params;
use crate::runtime::program;
use crate::span::{FileId, Span};
use crate::syntax::ast::{Expr, Item, Stmt};
use crate::syntax::parse_source;
use ndarray::{ArrayD, IxDyn};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

impl Session {
    pub(super) fn statements(&mut self, file: FileId) -> Result<Output, ReplError> {
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
                        Code::E0209,
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
                Code::E0209,
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
    pub(super) fn check_synth(
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
            .filter(|d| d.span().file == typed && d.code != Code::W0007)
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
            return Err(ReplError::Internal(Bug::new("no model was synthesized")));
        };
        let program = program::prepare(&model);
        let Some(&(_, out)) = program.forward.outputs.first() else {
            return Err(ReplError::Internal(Bug::new(
                "the expression has no output",
            )));
        };
        let init = init_params(&program.model, self.seed)?;
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
                        Code::E0314,
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
        let mut vals = jit.forward(&c.program.forward, &state, &c.inputs, &[], &[c.out])?;
        vals.pop()
            .ok_or_else(|| ReplError::Internal(Bug::new("no value")))
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

    pub(super) fn compile_arg(&mut self, text: &str, draw: bool) -> Result<Compiled, ReplError> {
        let (wrapped, file, value) = self.expr_arg(text)?;
        let t = Typed {
            wrapped: &wrapped,
            off: "model __repl {\n__it = ".len(),
            file,
        };
        let fallback = t.span(value.span);
        self.compile(file, fallback, &value, &t, None, draw)
    }

    pub(super) fn eval_arg(&mut self, text: &str) -> Result<ArrayD<f32>, ReplError> {
        let c = self.compile_arg(text, true)?;
        let v = self.run(&c)?;
        for (n, p) in c.fresh {
            self.params.insert(n, p);
        }
        Ok(v)
    }

    // ---- declarations ----
}
