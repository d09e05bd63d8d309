//! The session's declarations: models, blocks, train blocks and `use`s, typed or loaded
//! from a file, each checked with the rest of the session.

use super::synth::Synth;
use super::{decls_of, Decl, Kind, Output, ReplError, Session};
use crate::check::train::TrainConfig;
use crate::check::{self, LintLevels};
use crate::diag::Diagnostic;
use crate::runtime::program::{self, Program};
use crate::span::{FileId, Span};
use crate::syntax::parse_source;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

impl Session {
    pub(super) fn declare(&mut self, file: FileId) -> Result<Output, ReplError> {
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

    pub(super) fn load(&mut self, path: &Path) -> Result<Output, ReplError> {
        let (id, bad) = check::load_file(&mut self.sources, path)
            .map_err(|e| ReplError::msg(format!("cannot read `{}`: {e}", path.display())))?;
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
    pub(super) fn model(&mut self, name: &str) -> Result<(Program, TrainConfig), ReplError> {
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
                format!("no model named `{name}`: the session has no models (type one, or `:load FILE`)")
            } else {
                format!("no model named `{name}` (models: {})", models.join(", "))
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
            .ok_or_else(|| ReplError::msg(format!("no model named `{name}`")))?;
        let cfg = program
            .train(name)
            .cloned()
            .unwrap_or_else(|| TrainConfig::defaults(name, m.span));
        Ok((program::prepare(m), cfg))
    }

    // ---- commands ----
}
