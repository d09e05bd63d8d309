//! What `kiln train` shows while it runs: a progress bar per epoch on a terminal (batches,
//! ETA, running loss, samples/s), one summary line per epoch, gradient-health tables with
//! `--diagnose`, and warnings rendered like compiler diagnostics. Piped output gets the
//! plain lines only, with no terminal control characters.

use crate::stdout::{out, outln};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln::diag::{self, ColorChoice, Diagnostic};
use kiln::runtime::health::Health;
use kiln::runtime::sanity::DataWarning;
use kiln::runtime::train::{EpochRecord, Observer, StepProgress};
use kiln::runtime::verdict::number;
use kiln::span::Sources;
use std::io::{IsTerminal, Write};

/// The console observer of a training run.
pub struct Console<'s> {
    quiet: bool,
    /// Draw a bar (stdout is a terminal and not quiet).
    bars: bool,
    bar: Option<ProgressBar>,
    sources: &'s Sources,
    color: ColorChoice,
    /// Warnings silenced with `--allow` (codes or lint names).
    allowed: Vec<String>,
    /// Data warning codes whose help has been shown.
    helped: Vec<diag::Code>,
    /// Epochs of the run (from the first step).
    epochs: u64,
}

impl<'s> Console<'s> {
    /// A console printing to stdout (diagnostics to stderr).
    pub fn new(
        quiet: bool,
        sources: &'s Sources,
        color: ColorChoice,
        allowed: Vec<String>,
    ) -> Console<'s> {
        Console {
            quiet,
            bars: !quiet && std::io::stdout().is_terminal(),
            bar: None,
            sources,
            color,
            allowed,
            helped: Vec::new(),
            epochs: 0,
        }
    }

    /// True when `--allow` names the code or its lint name.
    fn allows(&self, code: diag::Code) -> bool {
        let name = diag::lookup(code.as_str()).map(|c| c.lint);
        self.allowed
            .iter()
            .any(|a| a == code.as_str() || a == "warnings" || Some(a.as_str()) == name)
    }

    fn eprint(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprint!("{text}")),
            None => eprint!("{text}"),
        }
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Console<'_> {
    fn step(&mut self, p: &StepProgress) {
        self.epochs = p.epochs;
        if !self.bars {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar =
                ProgressBar::with_draw_target(Some(p.batches as u64), ProgressDrawTarget::stdout());
            let style = ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} batches  ETA {eta}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(format!("{:>3}/{}", p.epoch, p.epochs));
            bar
        });
        bar.set_position(p.batch as u64);
        bar.set_message(format!(
            "loss {}  {:.0} samples/s",
            number(p.loss),
            p.samples_per_s
        ));
    }

    fn epoch(&mut self, r: &EpochRecord) {
        self.clear();
        if self.quiet {
            return;
        }
        let mut line = format!(
            "epoch {:>3}/{}  loss {}",
            r.epoch,
            self.epochs,
            number(r.train_loss)
        );
        if let Some(v) = r.val_loss {
            line += &format!("  val_loss {}", number(v));
        }
        if let Some(acc) = r.val_accuracy {
            line += &format!("  val_accuracy {:.2}%", acc * 100.0);
        }
        line += &format!(
            "  lr {:.3e}  {:.0} samples/s  {:.2}s",
            r.lr, r.samples_per_s, r.seconds
        );
        outln!("{line}");
        if let Some(h) = &r.health {
            out!("{}", health_table(h));
        }
        let _ = std::io::stdout().flush();
    }

    fn warning(&mut self, d: &Diagnostic) {
        if !self.allows(d.code) {
            self.eprint(&diag::render(
                self.sources,
                std::slice::from_ref(d),
                self.color,
            ));
        }
    }

    fn data_warning(&mut self, w: &DataWarning) {
        if self.allows(w.code) {
            return;
        }
        // The help of a kind of warning once.
        let mut w = w.clone();
        if self.helped.contains(&w.code) {
            w.help = None;
        } else {
            self.helped.push(w.code);
        }
        self.eprint(&w.render(self.color));
    }
}

/// The gradient-health table of one measurement.
pub fn health_table(h: &Health) -> String {
    let mut out = String::new();
    let width = h
        .layers
        .iter()
        .map(|l| l.layer.len())
        .chain(
            h.units
                .iter()
                .map(|u| u.name.len() + u.activation.len() + 3),
        )
        .chain([5])
        .max()
        .unwrap_or(5);
    out += &format!(
        "  {:<width$}  {:>10}  {:>10}  {:>13}\n",
        "layer", "grad norm", "weight norm", "update/weight"
    );
    for l in &h.layers {
        let ratio = l
            .update_ratio
            .map_or_else(|| "-".to_string(), |r| format!("{r:.2e}"));
        out += &format!(
            "  {:<width$}  {:>10.3e}  {:>10.3e}  {:>13}\n",
            l.layer, l.grad_norm, l.weight_norm, ratio
        );
    }
    for u in &h.units {
        let what = if u.activation == "relu" {
            "dead"
        } else {
            "saturated"
        };
        out += &format!(
            "  {:<width$}  {:>5.1}% {what}\n",
            format!("{} ({})", u.name, u.activation),
            u.fraction * 100.0
        );
    }
    out
}
