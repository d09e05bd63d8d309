//! `kiln plot` and `kiln train --plot`: training curves from a report.

use crate::stdout::outln;
use crate::{EXIT_INPUT, EXIT_IO};
use clap::Args;
use kiln::runtime::plot::{self, EpochPoint, Format};
use kiln::runtime::train::EpochRecord;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `kiln plot`.
#[derive(Args, Clone)]
pub struct PlotArgs {
    /// A training report written by `kiln train --report`.
    pub report: PathBuf,
    /// Where to draw: .svg or .png (default: the report's name with .svg).
    #[arg(long, value_name = "FILE", value_parser = out_path)]
    pub out: Option<PathBuf>,
}

/// The fields of a saved report that a plot needs; any others are ignored.
#[derive(Deserialize)]
#[serde(expecting = "a training report")]
struct Saved {
    #[serde(default)]
    model: String,
    history: Vec<EpochPoint>,
}

/// A clap value parser for plot files: refuses an extension other than .svg or .png
/// before anything runs.
pub fn out_path(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    Format::of(&p).map_err(|e| e.to_string())?;
    Ok(p)
}

/// The title of a model's plot.
fn title(model: &str) -> String {
    if model.is_empty() {
        "training curves".into()
    } else {
        format!("{model}: training curves")
    }
}

/// Draws `history` to `path` (`kiln train --plot`).
pub fn write(history: &[EpochRecord], model: &str, path: &Path) -> anyhow::Result<()> {
    plot::plot(history, &title(model), path)?;
    outln!("plot: {}", path.display());
    Ok(())
}

/// `kiln plot`.
pub fn run(a: PlotArgs) -> anyhow::Result<u8> {
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.report.with_extension("svg"));
    if out == a.report {
        eprintln!(
            "error: the plot would overwrite the report `{}`: pass `--out FILE`",
            a.report.display()
        );
        return Ok(EXIT_IO);
    }
    let text = match std::fs::read_to_string(&a.report) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read `{}`: {e}", a.report.display());
            return Ok(EXIT_IO);
        }
    };
    let saved: Saved = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            // serde_json's message ends with " at line L column C"; say it up front.
            let msg = e.to_string();
            let msg = msg
                .rsplit_once(" at line ")
                .map_or(msg.as_str(), |(m, _)| m);
            eprintln!(
                "error: {}:{}:{}: not a training report: {msg}",
                a.report.display(),
                e.line(),
                e.column()
            );
            return Ok(EXIT_INPUT);
        }
    };
    if saved.history.is_empty() {
        eprintln!(
            "error: {}: the report's history has no epochs to plot",
            a.report.display()
        );
        return Ok(EXIT_INPUT);
    }
    match plot::plot_points(&saved.history, &title(&saved.model), &out) {
        Ok(()) => {
            outln!("plot: {}", out.display());
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(EXIT_IO)
        }
    }
}
