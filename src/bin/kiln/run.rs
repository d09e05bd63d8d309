//! The commands that run models: `train`, `eval`, `predict`, `grad`, `ir`.

use crate::stdout::{out, outln};
use crate::{check_one, print_diags, Color, LintArgs, EXIT_INPUT};
use anyhow::Context as _;
use clap::{Args, ValueEnum};
use kiln::check::train::{Metric, TrainConfig};
use kiln::check::{CheckedModel, LintLevels, Program as Checked};
use kiln::diag::{self, ColorChoice, Severity};
use kiln::exec::Backend;
use kiln::interp::Interpreter;
use kiln::ir::shape::MAX_DIM;
use kiln::ir::Graph;
#[cfg(feature = "mpi")]
use kiln::runtime::cluster::Peers;
use kiln::runtime::data::{self, Dataset};
use kiln::runtime::error::RuntimeError;
use kiln::runtime::eval::{self, Evaluation};
use kiln::runtime::program::{self, Program};
use kiln::runtime::train::{Run, RunPaths};
use kiln::runtime::weights;
use kiln::span::Sources;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which backend runs the model.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BackendChoice {
    /// Native code compiled with Cranelift.
    Jit,
    /// The reference interpreter (ndarray).
    Interp,
}

/// Arguments every running command shares.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model file.
    pub file: PathBuf,
    /// Which model of the file (default: the first).
    #[arg(long)]
    pub model: Option<String>,
    /// Backend that runs the model.
    #[arg(long, value_enum, default_value = "jit")]
    pub backend: BackendChoice,
    /// Threads for the JIT's matrix products and convolutions (default: every core).
    /// Results are identical for any thread count.
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    #[command(flatten)]
    pub lints: LintArgs,
}

/// The model a command that does not run it reads (`export`, `build`).
#[derive(Args, Clone)]
pub struct ModelFile {
    /// Model file.
    pub file: PathBuf,
    /// Which model of the file (default: the first).
    #[arg(long)]
    pub model: Option<String>,
    #[command(flatten)]
    pub lints: LintArgs,
}

/// `kiln train`.
#[derive(Args, Clone)]
pub struct TrainArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// Training data (default: the train block's `data train:`).
    #[arg(long)]
    pub train: Option<PathBuf>,
    /// Measure gradient health every epoch: per-layer gradient and weight norms, update
    /// ratios, dead and saturated units, with warnings when gradients vanish or explode.
    #[arg(long)]
    pub diagnose: bool,
    /// Test data (default: the train block's `data test:`).
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Epochs.
    #[arg(long, allow_negative_numbers = true, value_parser = count())]
    pub epochs: Option<u64>,
    /// Batch size.
    #[arg(long, allow_negative_numbers = true, value_parser = count())]
    pub batch: Option<u64>,
    /// Base learning rate.
    #[arg(long, allow_negative_numbers = true, value_parser = positive)]
    pub lr: Option<f64>,
    /// Seed of all randomness.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Standardize inputs with the training set's mean and standard deviation.
    #[arg(long)]
    pub standardize: bool,
    /// Shards each training step is split into, computed in parallel by the threads (a
    /// power of two; default: 2 from a batch of 32, else 1). The weights depend on it,
    /// never on the threads (docs/SCALING.md).
    #[arg(long, value_parser = shards)]
    pub shards: Option<u64>,
    /// Checkpoint written after every epoch (default: MODEL.safetensors).
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Continue the run saved in this checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Start from the parameters of this safetensors file whose names and shapes are the
    /// model's (a checkpoint of another model, or weights written elsewhere under Kiln's
    /// names); the others start as initialized. Overrides the train block's `pretrained`.
    #[arg(long, value_name = "FILE")]
    pub pretrained: Option<PathBuf>,
    /// Write a JSON report: final metrics, per-epoch history, wall time.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Draw the loss and accuracy curves to FILE (.svg or .png) when training ends.
    #[arg(long, value_name = "FILE", value_parser = crate::plot::out_path)]
    pub plot: Option<PathBuf>,
    /// Print only the final summary.
    #[arg(long)]
    pub quiet: bool,
}

/// `kiln eval`.
#[derive(Args, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// Checkpoint or safetensors file with the parameters.
    #[arg(long)]
    pub weights: PathBuf,
    /// Data (default: the train block's test data, else its training data).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// `kiln predict`.
#[derive(Args, Clone)]
pub struct PredictArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// Checkpoint or safetensors file with the parameters.
    #[arg(long)]
    pub weights: PathBuf,
    /// Input data (targets in it are ignored).
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write: .csv, .npy or .npz (default: CSV on standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Rows per batch (default: the train block's batch size).
    #[arg(long, allow_negative_numbers = true, value_parser = count())]
    pub batch: Option<u64>,
}

/// `kiln grad`.
#[derive(Args, Clone)]
pub struct GradArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// Data; the first batch of it is used.
    #[arg(long)]
    pub data: PathBuf,
    /// Parameters (default: initialized from the seed).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Save the gradients as safetensors.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `kiln ir`.
#[derive(Args, Clone)]
pub struct IrArgs {
    /// Model file.
    pub file: PathBuf,
    /// Which model of the file (default: the first).
    #[arg(long)]
    pub model: Option<String>,
    /// The pass after which to print: `lower` (forward graph), `autodiff` (with the
    /// backward pass), `optimizer` (the whole training step).
    #[arg(long, value_enum, default_value = "lower")]
    pub after: Pass,
}

/// The passes `kiln ir --after` can stop after.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Pass {
    /// The forward graph.
    Lower,
    /// With the backward pass.
    Autodiff,
    /// The whole training step: backward, clipping, optimizer update.
    Optimizer,
    /// The JIT's plan for the training step (or the forward pass of a model without a
    /// loss): which elementwise operations fuse into one loop, which call kernels.
    Fuse,
}

/// A checked, lowered model with its train block.
pub struct Loaded {
    pub sources: Sources,
    pub program: Program,
    pub cfg: TrainConfig,
}

fn color(c: Color) -> ColorChoice {
    crate::color(c)
}

/// Checks the file, picks the model, lowers it; prints diagnostics. `Err(code)` to exit.
pub fn load(
    file: &Path,
    model: Option<&str>,
    lints: &LintArgs,
) -> anyhow::Result<Result<Loaded, u8>> {
    let mut sources = Sources::new();
    let levels = LintLevels {
        allow: lints.allow.clone(),
        deny: lints.deny.clone(),
    };
    let checked = check_one(&mut sources, file, &levels)?;
    print_diags(&sources, &checked.diagnostics, lints.color);
    let Some(program) = checked.program else {
        return Ok(Err(EXIT_INPUT));
    };
    let Some(m) = pick(&program, model, file) else {
        return Ok(Err(EXIT_INPUT));
    };
    let cfg = program
        .train(&m.name)
        .cloned()
        .unwrap_or_else(|| TrainConfig::defaults(&m.name, m.span));
    Ok(Ok(Loaded {
        sources,
        program: program::prepare(m),
        cfg,
    }))
}

fn pick<'a>(p: &'a Checked, name: Option<&str>, file: &Path) -> Option<&'a CheckedModel> {
    let found = p.model(name);
    if found.is_none() {
        let names: Vec<&str> = p.models.iter().map(|m| m.name.as_str()).collect();
        match name {
            Some(n) => eprintln!(
                "error[E0208]: no model named `{n}` in {} (models: {})",
                file.display(),
                names.join(", ")
            ),
            None => eprintln!("error[E0211]: {} declares no model", file.display()),
        }
    }
    found
}

impl ModelArgs {
    /// The thread count: `--threads`, else every core (shared among the processes an
    /// MPI launcher started on this machine).
    pub fn thread_count(&self) -> usize {
        self.threads.map_or_else(
            || {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                (cores / kiln::runtime::cluster::local_processes()).max(1)
            },
            |t| t as usize,
        )
    }

    /// The backend these arguments choose.
    pub fn backend(&self) -> Box<dyn Backend> {
        match self.backend {
            BackendChoice::Jit => Box::new(kiln::jit::Jit::with_threads(self.thread_count())),
            BackendChoice::Interp => Box::new(Interpreter),
        }
    }
}

/// Exit code for a runtime error, after printing it.
pub fn fail(e: &RuntimeError, sources: &Sources, color: ColorChoice) -> u8 {
    match e {
        RuntimeError::Data(d) => eprint!("{}", d.render(color)),
        RuntimeError::Diverged(d) => eprint!("{}", diag::render(sources, &[(**d).clone()], color)),
        other => eprint!(
            "{}",
            diag::render_unplaced(Severity::Error, None, &other.to_string(), None, color)
        ),
    }
    exit_code(e)
}

/// The exit code of a runtime error.
fn exit_code(e: &RuntimeError) -> u8 {
    match e {
        RuntimeError::Io(_) => crate::EXIT_IO,
        RuntimeError::Data(d) if d.code == diag::Code::E0500 => crate::EXIT_IO,
        _ => EXIT_INPUT,
    }
}

/// The processes of this `kiln train`: one, or (built with the `mpi` feature and started
/// by `mpirun`) those of an MPI job.
pub struct Job {
    #[cfg(feature = "mpi")]
    mpi: Option<std::sync::Arc<kiln::runtime::cluster::Mpi>>,
}

impl Job {
    pub fn start() -> Job {
        Job {
            #[cfg(feature = "mpi")]
            mpi: kiln::runtime::cluster::Mpi::launched().map(std::sync::Arc::new),
        }
    }

    /// The peers of a job of more than one process.
    pub fn peers(&self) -> Option<Box<dyn kiln::runtime::cluster::Peers>> {
        #[cfg(feature = "mpi")]
        if let Some(m) = self.mpi.as_ref().filter(|m| m.size() > 1) {
            return Some(Box::new(m.clone()));
        }
        None
    }

    /// Process 0's decision, on every process of the job.
    pub fn agree(&self, yes: bool) -> bool {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            return m.agree(u8::from(yes)) != 0;
        }
        yes
    }

    /// Prints a runtime error (process 0 in full, the others in one line naming their
    /// rank) and returns its exit code; in a job of several processes, ends them all
    /// with it, so that none waits for this one.
    fn fail(&self, e: &RuntimeError, sources: &Sources, color: ColorChoice) -> u8 {
        #[cfg(feature = "mpi")]
        if let Some(m) = self.mpi.as_ref().filter(|m| m.size() > 1) {
            let code = if m.rank() == 0 {
                fail(e, sources, color)
            } else {
                eprintln!("error: process {} of {}: {e}", m.rank(), m.size());
                exit_code(e)
            };
            m.abort(i32::from(code));
        }
        fail(e, sources, color)
    }
}

/// `kiln train`.
pub fn train(a: TrainArgs) -> anyhow::Result<u8> {
    let loaded = match load(&a.m.file, a.m.model.as_deref(), &a.m.lints)? {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let mut cfg = loaded.cfg.clone();
    if let Some(d) = kiln::check::trainable(&loaded.program.model, loaded.program.model.span) {
        eprint!(
            "{}",
            diag::render(&loaded.sources, &[d], color(a.m.lints.color))
        );
        return Ok(EXIT_INPUT);
    }
    apply_overrides(&mut cfg, &a);
    let Some(train_path) = a.train.clone().or(cfg.train_data.clone()) else {
        eprintln!("error: no training data: pass `--train FILE` or name it in the train block (`data train: \"file.csv\"`)");
        return Ok(crate::EXIT_IO);
    };
    let save = a
        .save
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.safetensors", loaded.program.model.name)));
    let paths = RunPaths {
        train: train_path,
        test: a.test.clone().or(cfg.test_data.clone()),
        save: Some(save),
        resume: a.resume.clone(),
    };
    let mut run = match Run::new(&loaded.program, &cfg) {
        Ok(run) => run,
        Err(e) => return Ok(fail(&e.into(), &loaded.sources, color(a.m.lints.color))),
    };
    let job = Job::start();
    if let Some(peers) = job.peers() {
        if let Err(e) = run.set_peers(peers) {
            // Every process finds it: process 0 says so, none waits for another.
            return Ok(match run.leads() {
                true => fail(&e, &loaded.sources, color(a.m.lints.color)),
                false => exit_code(&e),
            });
        }
    }
    let quiet = a.quiet || !run.leads();
    let mut be = a.m.backend();
    if !quiet {
        let shards = match run.shards() {
            1 => String::new(),
            s => format!(" in {s} shards"),
        };
        let (_, totals) = kiln::summary::summarize(&loaded.program.model, &cfg.freeze);
        let frozen = match totals.frozen {
            0 => String::new(),
            n => format!(" ({} frozen)", kiln::summary::thousands(n)),
        };
        outln!(
            "training `{}`: {} parameters{frozen}, {} epochs, batch {}{shards}, seed {}",
            loaded.program.model.name,
            kiln::summary::thousands(totals.trainable),
            cfg.epochs,
            cfg.batch,
            cfg.seed
        );
    }
    match (&cfg.pretrained, &a.resume) {
        (Some(_), Some(_)) if !quiet => {
            outln!("note: `--resume` continues its checkpoint's run; the pretrained weights are not read")
        }
        (Some(file), None) => match run.load_pretrained(file) {
            Ok(p) if !quiet => report_pretrained(&p, file, &loaded.program.model.name),
            Ok(_) => {}
            Err(e) => return Ok(job.fail(&e, &loaded.sources, color(a.m.lints.color))),
        },
        _ => {}
    }
    run.diagnose = a.diagnose;
    let mut console = crate::progress::Console::new(
        quiet,
        &loaded.sources,
        color(a.m.lints.color),
        a.m.lints.allow.clone(),
    );
    let report = run.train(be.as_mut(), &paths, &mut console);
    let report = match report {
        Ok(r) if run.leads() => r,
        Ok(_) => return Ok(0),
        Err(e) => return Ok(job.fail(&e, &loaded.sources, color(a.m.lints.color))),
    };
    if let Some(reason) = &report.stopped_early {
        outln!("stopped early: {reason}");
    }
    if let Some(best) = report.best_epoch {
        outln!(
            "kept the weights of epoch {best} (the best `{}`)",
            cfg.early_stop.as_ref().map_or("", |e| e.monitor.as_str())
        );
    }
    print_eval("train", &report.train, &cfg.metrics);
    if let Some(t) = &report.test {
        print_eval("test", t, &cfg.metrics);
    }
    // The metrics the train block asks for (all of them when it names none), on the test
    // data (else the training data).
    let all = cfg.metrics.is_empty();
    let scores = all
        || cfg
            .metrics
            .iter()
            .any(|m| matches!(m, Metric::Precision | Metric::Recall | Metric::F1));
    let confusion = all || cfg.metrics.contains(&Metric::Confusion);
    let shown = report.test.as_ref().unwrap_or(&report.train);
    if let (true, Some(c)) = (scores || confusion, &shown.classification) {
        outln!(
            "\n{} metrics:",
            if report.test.is_some() {
                "test"
            } else {
                "training"
            }
        );
        out!("{}", c.render_with(scores, confusion));
    }
    match (&report.checkpoint, report.best_epoch) {
        (Some(c), Some(best)) => outln!(
            "checkpoint: {} (the weights of epoch {best}, the best)",
            c.display()
        ),
        (Some(c), None) => outln!("checkpoint: {}", c.display()),
        _ => {}
    }
    outln!("time: {:.2}s", report.seconds);
    if let Some(path) = &a.report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("cannot write `{}`", path.display()))?;
    }
    if let Some(path) = &a.plot {
        crate::plot::write(&report.history, &report.model, path)?;
    }
    Ok(0)
}

/// A clap value parser for counts (epochs, batch sizes): 1 to [`MAX_DIM`], as in a train
/// block. Parsed as a signed number, so that `--epochs -3` is told its range.
pub fn count() -> clap::builder::RangedI64ValueParser<u64> {
    clap::builder::RangedI64ValueParser::<u64>::new().range(1..=MAX_DIM as i64)
}

/// A clap value parser for a shard count: a power of two from 1 to 1024.
pub fn shards(s: &str) -> Result<u64, String> {
    let v: u64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_power_of_two() && v <= 1024 {
        Ok(v)
    } else {
        Err("must be a power of two from 1 to 1024".into())
    }
}

/// A clap value parser for a learning rate or a duration: a positive finite number.
pub fn positive(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err("must be a positive finite number".into())
    }
}

fn apply_overrides(cfg: &mut TrainConfig, a: &TrainArgs) {
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    if let Some(b) = a.batch {
        cfg.batch = b;
    }
    if let Some(lr) = a.lr {
        cfg.optimizer = cfg.optimizer.with_lr(lr);
    }
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    if a.standardize {
        cfg.standardize = true;
    }
    if a.shards.is_some() {
        cfg.shards = a.shards;
    }
    if a.pretrained.is_some() {
        cfg.pretrained.clone_from(&a.pretrained);
    }
}

/// What starting from pretrained weights loaded, and the file's tensors it did not use.
fn report_pretrained(p: &weights::Pretrained, file: &Path, model: &str) {
    let total = p.loaded.len() + p.fresh.len();
    let fresh = if p.fresh.is_empty() {
        String::new()
    } else {
        format!("; initialized: {}", p.fresh.join(", "))
    };
    outln!(
        "pretrained: {} of {total} parameters ({} values) from {}{fresh}",
        p.loaded.len(),
        kiln::summary::thousands(p.values),
        file.display()
    );
    if !p.unused.is_empty() {
        eprintln!(
            "warning: `{}` holds tensors that name no parameter of `{model}` (a renamed layer?): {}",
            file.display(),
            p.unused.join(", ")
        );
    }
}

/// One line of loss and metrics; a regression model's are those of `metrics` (all three
/// when it names none).
fn print_eval(what: &str, e: &Evaluation, metrics: &[Metric]) {
    outln!("{}", e.line(what, metrics));
}

/// Loads data and applies the checkpoint's standardization.
fn load_data(
    p: &Program,
    path: &Path,
    with_targets: bool,
    st: Option<&data::Standardizer>,
) -> Result<Dataset, RuntimeError> {
    let spec = program::data_spec(&p.forward);
    let mut d = data::load(path, &spec, with_targets)?;
    // Non-finite values are errors here too; the warnings are for training.
    kiln::runtime::sanity::check(&d, &spec, path)?;
    if let Some(s) = st {
        s.apply(&mut d);
    }
    Ok(d)
}

/// `kiln eval`.
pub fn eval(a: EvalArgs) -> anyhow::Result<u8> {
    let loaded = match load(&a.m.file, a.m.model.as_deref(), &a.m.lints)? {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let p = &loaded.program;
    let Some(path) = a
        .data
        .clone()
        .or(loaded.cfg.test_data.clone())
        .or(loaded.cfg.train_data.clone())
    else {
        eprintln!("error: no data: pass `--data FILE`");
        return Ok(crate::EXIT_IO);
    };
    let result = weights::load_weights(p, &a.weights).and_then(|(state, st)| {
        let d = load_data(p, &path, true, st.as_ref())?;
        eval::evaluate(
            p,
            a.m.backend().as_mut(),
            &state,
            st.as_ref(),
            &d,
            loaded.cfg.batch as usize,
        )
    });
    match result {
        Ok(e) => {
            out!("{}", e.report(&path));
            Ok(0)
        }
        Err(e) => Ok(fail(&e, &loaded.sources, color(a.m.lints.color))),
    }
}

/// `kiln predict`.
pub fn predict(a: PredictArgs) -> anyhow::Result<u8> {
    let loaded = match load(&a.m.file, a.m.model.as_deref(), &a.m.lints)? {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let p = &loaded.program;
    let result = weights::load_weights(p, &a.weights).and_then(|(state, st)| {
        let d = load_data(p, &a.data, false, st.as_ref())?;
        let (outs, classes) = eval::predict(
            p,
            a.m.backend().as_mut(),
            &state,
            st.as_ref(),
            &d,
            a.batch.unwrap_or(loaded.cfg.batch) as usize,
        )?;
        write_predictions(&p.forward, &outs, classes.as_deref(), a.out.as_deref())
    });
    match result {
        Ok(()) => Ok(0),
        Err(e) => Ok(fail(&e, &loaded.sources, color(a.m.lints.color))),
    }
}

fn write_predictions(
    g: &Graph,
    outs: &[ndarray::ArrayD<f32>],
    classes: Option<&[usize]>,
    out: Option<&Path>,
) -> Result<(), RuntimeError> {
    let io = |e: std::io::Error, p: &Path| {
        RuntimeError::Io(format!("cannot write `{}`: {e}", p.display()))
    };
    let ext = out
        .and_then(|p| p.extension())
        .and_then(|e| e.to_str())
        .unwrap_or("csv");
    match (ext, out) {
        ("npy", Some(path)) => {
            let first = outs
                .first()
                .ok_or_else(|| RuntimeError::Io("the model has no output".into()))?;
            ndarray_npy::write_npy(path, first)
                .map_err(|e| RuntimeError::Io(format!("cannot write `{}`: {e}", path.display())))
        }
        ("npz", Some(path)) => {
            let f = std::fs::File::create(path).map_err(|e| io(e, path))?;
            let mut npz = ndarray_npy::NpzWriter::new(f);
            for ((name, _), v) in g.outputs.iter().zip(outs) {
                npz.add_array(name.as_str(), v)
                    .map_err(|e| RuntimeError::Io(e.to_string()))?;
            }
            if let Some(c) = classes {
                let arr = ndarray::Array1::from_iter(c.iter().map(|&v| v as i64));
                npz.add_array("class", &arr)
                    .map_err(|e| RuntimeError::Io(e.to_string()))?;
            }
            npz.finish()
                .map(|_| ())
                .map_err(|e| RuntimeError::Io(e.to_string()))
        }
        _ => {
            let text = predictions_csv(g, outs, classes);
            match out {
                Some(path) => std::fs::write(path, text).map_err(|e| io(e, path)),
                None => {
                    out!("{text}");
                    Ok(())
                }
            }
        }
    }
}

/// A CSV: the class column (classifiers) then every output flattened per row, with a
/// header `class,probs.0,probs.1,...`.
fn predictions_csv(g: &Graph, outs: &[ndarray::ArrayD<f32>], classes: Option<&[usize]>) -> String {
    let rows = outs.first().map_or(classes.map_or(0, <[usize]>::len), |o| {
        o.shape().first().copied().unwrap_or(0)
    });
    let mut header: Vec<String> = Vec::new();
    if classes.is_some() {
        header.push("class".into());
    }
    let mut flat = Vec::new();
    for ((name, _), v) in g.outputs.iter().zip(outs) {
        let width = v.len() / rows.max(1);
        if width == 1 {
            header.push(name.clone());
        } else {
            header.extend((0..width).map(|i| format!("{name}.{i}")));
        }
        let data: Vec<f32> = v.iter().copied().collect();
        flat.push((width, data));
    }
    let mut s = header.join(",") + "\n";
    for r in 0..rows {
        let mut cells: Vec<String> = Vec::new();
        if let Some(c) = classes {
            cells.push(c[r].to_string());
        }
        for (w, data) in &flat {
            cells.extend(data[r * w..(r + 1) * w].iter().map(|v| v.to_string()));
        }
        s += &cells.join(",");
        s.push('\n');
    }
    s
}

/// `kiln grad`.
pub fn grad(a: GradArgs) -> anyhow::Result<u8> {
    let loaded = match load(&a.m.file, a.m.model.as_deref(), &a.m.lints)? {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let p = &loaded.program;
    if let Some(d) = kiln::check::trainable(&p.model, p.model.span) {
        eprint!(
            "{}",
            diag::render(&loaded.sources, &[d], color(a.m.lints.color))
        );
        return Ok(EXIT_INPUT);
    }
    let cfg = &loaded.cfg;
    let result = (|| {
        let (state, st) = match &a.weights {
            Some(w) => weights::load_weights(p, w)?,
            None => (Run::new(p, cfg)?.state, None),
        };
        // Without a checkpoint's statistics, a train block that standardizes fits them on
        // this data, as training would.
        let mut d = load_data(p, &a.data, true, st.as_ref())?;
        if st.is_none() && cfg.standardize {
            let mut s = data::Standardizer::fit(&d);
            if let Some(r) = &p.regressor {
                s.fit_target(&d, r.target);
            }
            s.apply(&mut d);
        }
        let (loss, grads) = eval::gradients(
            p,
            cfg,
            a.m.backend().as_mut(),
            &state,
            &d,
            cfg.batch as usize,
        )?;
        outln!(
            "loss: {loss:.6} (first {} rows of {})",
            d.rows.min(cfg.batch as usize),
            a.data.display()
        );
        let width = grads
            .iter()
            .map(|(n, _, _)| n.len())
            .max()
            .unwrap_or(9)
            .max(9);
        outln!("{:<width$}  {:>12}", "parameter", "grad norm");
        for (name, _, norm) in &grads {
            outln!("{name:<width$}  {norm:>12.6e}");
        }
        let health = eval::gradient_health(
            p,
            cfg,
            a.m.backend().as_mut(),
            &state,
            &d,
            cfg.batch as usize,
        )?;
        outln!("\ngradient health:");
        out!("{}", crate::progress::health_table(&health));
        let c = color(a.m.lints.color);
        for w in kiln::runtime::health::warnings(&health, cfg.span) {
            eprint!("{}", diag::render(&loaded.sources, &[w], c));
        }
        if let Some(out) = &a.out {
            let map: BTreeMap<String, ndarray::ArrayD<f32>> =
                grads.into_iter().map(|(n, g, _)| (n, g)).collect();
            eval::save_tensors(out, map)?;
            outln!("gradients: {}", out.display());
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(0),
        Err(e) => Ok(fail(&e, &loaded.sources, color(a.m.lints.color))),
    }
}

/// `kiln ir`.
pub fn ir(a: IrArgs) -> anyhow::Result<u8> {
    let lints = LintArgs {
        allow: vec![],
        deny: vec![],
        color: Color::Auto,
    };
    let loaded = match load(&a.file, a.model.as_deref(), &lints)? {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let p = &loaded.program;
    let g = match a.after {
        Pass::Lower => p.forward.clone(),
        Pass::Autodiff => {
            let mut g = p.step_forward(&loaded.cfg);
            kiln::autodiff::differentiate(&mut g);
            g
        }
        Pass::Optimizer | Pass::Fuse => p.training_graph(&loaded.cfg),
    };
    if let Pass::Fuse = a.after {
        let roots = if g.loss.is_some() {
            g.step_roots()
        } else {
            g.outputs.iter().map(|(_, n)| *n).collect()
        };
        out!("{}", kiln::jit::plan::plan(&g, &roots).print(&g));
        return Ok(0);
    }
    out!("{}", g.print(Some(&loaded.sources)));
    Ok(0)
}
