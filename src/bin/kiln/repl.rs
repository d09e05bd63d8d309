//! `kiln repl`: the line editor (rustyline: history, multi-line input, completion) and
//! printing around the library's [`kiln::repl::Session`].

use crate::stdout::outln;
use kiln::diag::{self, ColorChoice, Severity};
use kiln::repl::{self, ReplError, Session};
use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Editor, Helper};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Completion of commands, keywords, built-ins and the session's names; file names
/// after `:load` and `:save NAME`.
struct KilnHelper {
    words: Vec<String>,
    files: FilenameCompleter,
}

impl Completer for KilnHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let wants_file = before.starts_with(":load ")
            || (before.starts_with(":save ") && before.split_whitespace().count() >= 3)
            || (before.starts_with(":save ")
                && before.ends_with(' ')
                && before.split_whitespace().count() == 2);
        if wants_file {
            return self.files.complete(line, pos, ctx);
        }
        let start = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '.'))
            .map_or(0, |i| i + 1);
        let word = &before[start..];
        if word.is_empty() {
            return Ok((pos, Vec::new()));
        }
        let found = self
            .words
            .iter()
            .filter(|w| w.starts_with(word))
            .map(|w| Pair {
                display: w.clone(),
                replacement: w.clone(),
            })
            .collect();
        Ok((start, found))
    }
}

impl Hinter for KilnHelper {
    type Hint = String;
}

impl Highlighter for KilnHelper {}

impl Validator for KilnHelper {
    fn validate(&self, ctx: &mut ValidationContext<'_>) -> rustyline::Result<ValidationResult> {
        Ok(if repl::needs_more(ctx.input()) {
            ValidationResult::Incomplete
        } else {
            ValidationResult::Valid(None)
        })
    }
}

impl Helper for KilnHelper {}

/// Where history is kept: `$KILN_HISTORY`, else `~/.kiln_history`.
fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_HISTORY") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".kiln_history"))
}

/// Prints an input's result; true when it was an error.
fn show(session: &Session, r: &Result<repl::Output, ReplError>, color: ColorChoice) -> bool {
    let mut err = std::io::stderr().lock();
    match r {
        Ok(out) => {
            if !out.warnings.is_empty() {
                let _ =
                    err.write_all(diag::render(session.sources(), &out.warnings, color).as_bytes());
            }
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(out.text.as_bytes());
            let _ = o.flush();
            false
        }
        Err(ReplError::Diagnostics(ds)) => {
            let _ = err.write_all(diag::render(session.sources(), ds, color).as_bytes());
            true
        }
        Err(ReplError::Data(d)) => {
            let _ = err.write_all(d.render(color).as_bytes());
            true
        }
        Err(ReplError::Message(m)) => {
            let _ = err.write_all(unplaced(m, color).as_bytes());
            true
        }
        Err(ReplError::Internal(b)) => {
            let _ = err.write_all(unplaced(&b.to_string(), color).as_bytes());
            true
        }
    }
}

/// An error that points into no source, rendered like the diagnostics.
fn unplaced(message: &str, color: ColorChoice) -> String {
    diag::render_unplaced(Severity::Error, None, message, None, color)
}

fn color() -> ColorChoice {
    if std::io::stderr().is_terminal() {
        ColorChoice::Always
    } else {
        ColorChoice::Never
    }
}

/// `kiln repl [FILE]`.
pub fn run(file: Option<PathBuf>) -> anyhow::Result<u8> {
    let mut session = Session::new();
    let color = color();
    let interactive = std::io::stdin().is_terminal();
    if let Some(f) = &file {
        let r = session.eval(&format!(":load {}", f.display()));
        if show(&session, &r, color) && !interactive {
            return Ok(crate::EXIT_INPUT);
        }
    }
    if interactive {
        interactive_loop(session, color)
    } else {
        script(session, color)
    }
}

/// Reads a script from standard input; stops at the first error (exit status 1).
fn script(mut session: Session, color: ColorChoice) -> anyhow::Result<u8> {
    let mut buf = String::new();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        buf.push_str(&line);
        buf.push('\n');
        if repl::needs_more(&buf) {
            continue;
        }
        let r = session.eval(&buf);
        buf.clear();
        if show(&session, &r, color) {
            return Ok(crate::EXIT_INPUT);
        }
        if r.is_ok_and(|o| o.quit) {
            return Ok(0);
        }
    }
    if !buf.trim().is_empty() {
        let r = session.eval(&buf);
        if show(&session, &r, color) {
            return Ok(crate::EXIT_INPUT);
        }
    }
    Ok(0)
}

fn interactive_loop(mut session: Session, color: ColorChoice) -> anyhow::Result<u8> {
    let mut rl: Editor<KilnHelper, rustyline::history::DefaultHistory> = Editor::new()?;
    let history = history_path();
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    outln!("kiln repl — `:help` for commands, `:quit` or Ctrl-D to leave");
    loop {
        let mut words: Vec<String> = repl::vocabulary().iter().map(|w| w.to_string()).collect();
        words.extend(session.names());
        rl.set_helper(Some(KilnHelper {
            words,
            files: FilenameCompleter::new(),
        }));
        match rl.readline("kiln> ") {
            Ok(line) => {
                if line.trim().is_empty() {
                    continue;
                }
                let _ = rl.add_history_entry(line.as_str());
                if let Some(h) = &history {
                    let _ = rl.save_history(h);
                }
                let r = session.eval(&line);
                show(&session, &r, color);
                if r.is_ok_and(|o| o.quit) {
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(h) = &history {
        let _ = rl.save_history(h);
    }
    Ok(0)
}
