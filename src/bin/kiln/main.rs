//! The `kiln` command line.
#![deny(unsafe_code)]

use crate::stdout::{out, outln};
use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use kiln::check::{self, Checked, LintLevels};
use kiln::diag::{self, ColorChoice, Diagnostic};
use kiln::span::Sources;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod bench;
mod build;
mod export;
mod plot;
mod progress;
mod repl;
mod run;
mod stdout;

/// Kiln: a declarative model-definition compiler.
#[derive(Parser)]
#[command(name = "kiln", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// rustc-style text.
    Human,
    /// A JSON array of diagnostics.
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Color {
    /// Color when stderr is a terminal.
    Auto,
    /// Always color.
    Always,
    /// Never color.
    Never,
}

#[derive(clap::Args, Clone)]
pub(crate) struct LintArgs {
    /// Silence a lint (code like W0007, or its name like `unused`); repeatable.
    #[arg(long = "allow", value_name = "LINT", value_parser = lint)]
    pub(crate) allow: Vec<String>,
    /// Turn a lint into an error; `--deny warnings` denies all; repeatable.
    #[arg(long = "deny", value_name = "LINT", value_parser = lint)]
    pub(crate) deny: Vec<String>,
    /// When to color diagnostics.
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) color: Color,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check model files: shapes, names, train blocks, lints.
    Check {
        /// Model files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output format of diagnostics.
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
        #[command(flatten)]
        lints: LintArgs,
    },
    /// Print a table of a model's layers, shapes, parameters and multiply-adds.
    Summary {
        /// Model file.
        file: PathBuf,
        /// Which model of the file (default: the first).
        #[arg(long)]
        model: Option<String>,
        #[command(flatten)]
        lints: LintArgs,
    },
    /// Train a model: its train block's settings, overridden by flags.
    Train(run::TrainArgs),
    /// Loss and metrics of trained weights on a data set.
    Eval(run::EvalArgs),
    /// The model's outputs (and classes, for classifiers) on a data set.
    Predict(run::PredictArgs),
    /// Write the model's evaluation graph and weights as ONNX.
    Export(export::ExportArgs),
    /// Compile the model's evaluation graph and weights into a static library with a C API.
    Build(build::BuildArgs),
    /// The loss and every parameter's gradient on one batch.
    Grad(run::GradArgs),
    /// Print the IR of a model after a pass.
    Ir(run::IrArgs),
    /// Compile time and training/inference throughput on synthetic data.
    Bench(bench::BenchArgs),
    /// Draw the loss and accuracy curves of a `--report` file to SVG or PNG.
    Plot(plot::PlotArgs),
    /// An interactive session: evaluate tensors, layers and models as you type them.
    Repl {
        /// A model file to load first.
        file: Option<PathBuf>,
    },
    /// Explain a diagnostic code (`kiln explain E0301`); without a code, list them all.
    Explain {
        /// A code like E0301 or W0003, or a lint name.
        code: Option<String>,
    },
}

/// Exit codes: 0 success, 1 the input is wrong, 2 usage or I/O error.
pub(crate) const EXIT_INPUT: u8 = 1;
pub(crate) const EXIT_IO: u8 = 2;

fn main() -> ExitCode {
    // Deeply nested (but accepted) input recurses; give the checker room.
    let worker = std::thread::Builder::new().stack_size(256 << 20).spawn(|| {
        let cli = Cli::parse();
        match run(cli) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                EXIT_IO
            }
        }
    });
    match worker.map(|h| h.join()) {
        Ok(Ok(code)) => ExitCode::from(code),
        _ => ExitCode::from(101),
    }
}

/// A clap value parser for `--allow`/`--deny`: a lint's code or name, or `warnings`. An
/// unknown one is a usage error, as `allow` of an unknown lint in a file is W0008.
fn lint(s: &str) -> Result<String, String> {
    let known = s == "warnings" || diag::lookup(s).is_some_and(|c| !c.lint.is_empty());
    if known {
        return Ok(s.to_string());
    }
    let names = diag::CODES
        .iter()
        .filter(|c| !c.lint.is_empty())
        .flat_map(|c| [c.code.as_str(), c.lint]);
    let hint =
        diag::did_you_mean(s, names).map_or(String::new(), |n| format!(" (did you mean `{n}`?)"));
    Err(format!(
        "not a lint code or name{hint}; `kiln explain` lists the lints"
    ))
}

fn levels(l: &LintArgs) -> LintLevels {
    LintLevels {
        allow: l.allow.clone(),
        deny: l.deny.clone(),
    }
}

pub(crate) fn color(c: Color) -> ColorChoice {
    match c {
        Color::Always => ColorChoice::Always,
        Color::Never => ColorChoice::Never,
        Color::Auto if std::io::stderr().is_terminal() => ColorChoice::Always,
        Color::Auto => ColorChoice::Never,
    }
}

/// Loads and checks one file.
pub(crate) fn check_one(
    sources: &mut Sources,
    path: &Path,
    levels: &LintLevels,
) -> anyhow::Result<Checked> {
    let (id, bad_utf8) = check::load_file(sources, path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    if let Some(d) = bad_utf8 {
        return Ok(Checked {
            program: None,
            diagnostics: vec![d],
        });
    }
    Ok(check::check_file(sources, id, levels))
}

pub(crate) fn print_diags(sources: &Sources, diags: &[Diagnostic], c: Color) {
    let text = diag::render(sources, diags, color(c));
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    if errors > 0 {
        let _ = writeln!(
            err,
            "error: found {errors} error{} and {warnings} warning{}",
            plural(errors),
            plural(warnings)
        );
    } else if warnings > 0 {
        let _ = writeln!(
            err,
            "warning: {warnings} warning{} emitted",
            plural(warnings)
        );
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Train(a) => run::train(a),
        Command::Eval(a) => run::eval(a),
        Command::Predict(a) => run::predict(a),
        Command::Export(a) => export::export(a),
        Command::Build(a) => build::build(a),
        Command::Grad(a) => run::grad(a),
        Command::Ir(a) => run::ir(a),
        Command::Bench(a) => bench::bench(a),
        Command::Plot(a) => plot::run(a),
        Command::Repl { file } => repl::run(file),
        Command::Check {
            files,
            format,
            lints,
        } => {
            let levels = levels(&lints);
            let mut sources = Sources::new();
            let mut all = Vec::new();
            for f in &files {
                all.extend(check_one(&mut sources, f, &levels)?.diagnostics);
            }
            match format {
                Format::Json => outln!("{}", diag::render_json(&sources, &all)),
                Format::Human => print_diags(&sources, &all, lints.color),
            }
            Ok(if all.iter().any(Diagnostic::is_error) {
                EXIT_INPUT
            } else {
                0
            })
        }
        Command::Summary { file, model, lints } => {
            let mut sources = Sources::new();
            let checked = check_one(&mut sources, &file, &levels(&lints))?;
            print_diags(&sources, &checked.diagnostics, lints.color);
            let Some(program) = checked.program else {
                return Ok(EXIT_INPUT);
            };
            let Some(m) = program.model(model.as_deref()) else {
                let names: Vec<&str> = program.models.iter().map(|m| m.name.as_str()).collect();
                match &model {
                    Some(n) => eprintln!(
                        "error[E0208]: no model named `{n}` in {} (models: {})",
                        file.display(),
                        names.join(", ")
                    ),
                    None => eprintln!("error[E0211]: {} declares no model", file.display()),
                }
                return Ok(EXIT_INPUT);
            };
            let frozen = program
                .train(&m.name)
                .map_or(&[][..], |c| c.freeze.as_slice());
            out!("{}", kiln::summary::render_summary(m, frozen));
            Ok(0)
        }
        Command::Explain { code } => {
            match code {
                None => {
                    for c in diag::CODES {
                        let name = if c.lint.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", c.lint)
                        };
                        outln!("{}{name}: {}", c.code, c.title);
                    }
                    Ok(0)
                }
                Some(code) => match diag::lookup(&code) {
                    Some(c) => {
                        let name = if c.lint.is_empty() {
                            String::new()
                        } else {
                            format!(" (lint `{}`)", c.lint)
                        };
                        outln!("{}{name}: {}\n\n{}", c.code, c.title, c.explanation);
                        Ok(0)
                    }
                    None => {
                        eprintln!("error: `{code}` is not a Kiln diagnostic code; `kiln explain` lists them");
                        Ok(EXIT_IO)
                    }
                },
            }
        }
    }
}
