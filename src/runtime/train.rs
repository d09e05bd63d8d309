//! The training loop: a [`Run`] of a program, its observer, its history and report, and
//! its checkpoints.

use super::checkpoint::Checkpoint;
use super::cluster::{self, Peers};
use super::data::{self, Dataset, Standardizer};
use super::error::RuntimeError;
use super::eval::{evaluate, Evaluation};
use super::health::{self, Health};
use super::identity;
use super::init::{fits_memory, init_params};
use super::program::{data_spec, Program};
use super::sanity::{self, DataWarning};
use super::schedule::{hyper, learning_rate};
use super::shard::{has_statistics, shards_for, Sharded};
use super::trace;
use super::verdict;
use super::weights::{get_standardizer, load_for, params_from, pretrained, Pretrained};
use crate::check::train::TrainConfig;
use crate::diag::{Code, Diagnostic};
use crate::exec::{batch_of, copy_rows, step_roots, Backend, RunError, State, StepResult};
use crate::ir::Graph;
use ndarray::{ArrayD, IxDyn};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// One epoch of the history.
#[derive(Clone, Debug, Serialize)]
pub struct EpochRecord {
    /// Epoch number, from 1.
    pub epoch: u64,
    /// Learning rate used.
    pub lr: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Validation loss, when there is a validation split.
    pub val_loss: Option<f64>,
    /// Validation accuracy (classifiers).
    pub val_accuracy: Option<f64>,
    /// Wall time of the epoch in seconds.
    pub seconds: f64,
    /// Training samples per second over the epoch's steps.
    pub samples_per_s: f64,
    /// Gradient health on the epoch's last batch (`--diagnose`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

/// Progress within an epoch, after each step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepProgress {
    /// The epoch, from 1.
    pub epoch: u64,
    /// Epochs of the run.
    pub epochs: u64,
    /// Batches done in this epoch.
    pub batch: usize,
    /// Batches in the epoch.
    pub batches: usize,
    /// Mean loss over the epoch's samples so far.
    pub loss: f64,
    /// Samples per second so far in the epoch.
    pub samples_per_s: f64,
}

/// What a training run tells its caller while it runs.
pub trait Observer {
    /// After every training step.
    fn step(&mut self, _progress: &StepProgress) {}
    /// At the end of every epoch.
    fn epoch(&mut self, _record: &EpochRecord) {}
    /// A warning about the run (gradient health with `diagnose`), once per kind and place.
    fn warning(&mut self, _warning: &Diagnostic) {}
    /// A warning about the training or test data (constant columns, class imbalance).
    fn data_warning(&mut self, _warning: &DataWarning) {}
}

/// A closure sees each epoch's record.
impl<F: FnMut(&EpochRecord)> Observer for F {
    fn epoch(&mut self, record: &EpochRecord) {
        self(record)
    }
}

/// The result of a training run (`--report` writes it as JSON).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The model.
    pub model: String,
    /// Epochs run in total (including those of a resumed run).
    pub epochs: u64,
    /// Optimizer steps in total.
    pub steps: u64,
    /// Per-epoch history.
    pub history: Vec<EpochRecord>,
    /// The epoch whose weights were kept (early stopping with restore).
    pub best_epoch: Option<u64>,
    /// Why training stopped early, if it did.
    pub stopped_early: Option<String>,
    /// Evaluation on the test data.
    pub test: Option<Evaluation>,
    /// Evaluation on the training data at the end.
    pub train: Evaluation,
    /// Where the checkpoint was written.
    pub checkpoint: Option<PathBuf>,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Where a run reads and writes.
#[derive(Clone, Debug, Default)]
pub struct RunPaths {
    /// Training data.
    pub train: PathBuf,
    /// Test data.
    pub test: Option<PathBuf>,
    /// Checkpoint to write after every epoch.
    pub save: Option<PathBuf>,
    /// Checkpoint to continue from.
    pub resume: Option<PathBuf>,
}

/// Early-stopping bookkeeping.
#[derive(Clone, Debug, Default)]
struct Early {
    best: Option<f64>,
    best_epoch: Option<u64>,
    wait: u64,
    best_params: Option<Vec<ArrayD<f32>>>,
}

/// A training run in progress.
pub struct Run {
    program: Arc<Program>,
    train_graph: Arc<Graph>,
    cfg: TrainConfig,
    /// The model's state.
    pub state: State,
    standardizer: Option<Standardizer>,
    epoch: u64,
    step: u64,
    early: Early,
    history: Vec<EpochRecord>,
    /// Measure gradient health at the end of every epoch.
    pub diagnose: bool,
    /// Warnings given so far (code and place), each once.
    warned: Vec<(Code, crate::span::Span)>,
    /// The state before the last step (to replay a step whose loss is not finite).
    prev: Option<State>,
    /// Where the run's checkpoint is written (named when a step diverges).
    checkpoint: Option<PathBuf>,
    /// The step split into shards, when it is (docs/SCALING.md).
    sharded: Option<Sharded>,
    /// The other processes training this model with this one, if any.
    peers: Option<Box<dyn Peers>>,
}

impl Run {
    /// A fresh run: parameters initialized from the seed, optimizer state zero; an error
    /// when they do not fit in this machine's memory.
    pub fn new(program: &Program, cfg: &TrainConfig) -> Result<Run, RunError> {
        Run::shared(
            Arc::new(program.clone()),
            Arc::new(program.training_graph(cfg)),
            cfg,
        )
    }

    /// A fresh run of a program whose training graph for `cfg` (`Program::training_graph`)
    /// is already built: runs of one model share the graph, and so the JIT's code for it.
    pub fn shared(
        program: Arc<Program>,
        train_graph: Arc<Graph>,
        cfg: &TrainConfig,
    ) -> Result<Run, RunError> {
        let params = init_params(&program.model, cfg.seed)?;
        Run::with_params(program, train_graph, cfg, params)
    }

    /// [`Run::shared`] from parameters initialized already (`init::init_params`: `kiln
    /// bench` times it apart).
    pub fn with_params(
        program: Arc<Program>,
        train_graph: Arc<Graph>,
        cfg: &TrainConfig,
        params: Vec<ArrayD<f32>>,
    ) -> Result<Run, RunError> {
        let dims: Vec<Vec<usize>> = train_graph
            .states
            .iter()
            .map(|t| crate::interp::dims(&t.shape, 1))
            .collect();
        let values = params
            .iter()
            .map(|p| p.len())
            .chain(dims.iter().map(|d| d.iter().product()));
        fits_memory(
            values.map(|n| n as u128).sum(),
            &format!("`{}`'s parameters and optimizer state", program.model.name),
        )?;
        let states = dims.iter().map(|d| ArrayD::zeros(IxDyn(d))).collect();
        let mut run = Run {
            program,
            train_graph,
            cfg: cfg.clone(),
            state: State { params, states },
            standardizer: None,
            epoch: 0,
            step: 0,
            early: Early::default(),
            history: Vec::new(),
            diagnose: false,
            warned: Vec::new(),
            prev: None,
            checkpoint: None,
            sharded: None,
            peers: None,
        };
        run.reshard();
        Ok(run)
    }

    /// Splits the step into the shards the configuration asks for (or none); at least
    /// one shard per process (the next power of two) when there are peers.
    fn reshard(&mut self) {
        let processes = self.processes().next_power_of_two();
        // The training graph holds the forward pass's batch statistics, if any.
        let statistics = has_statistics(&self.train_graph);
        let shards = shards_for(self.cfg.shards, self.cfg.batch, statistics).max(processes);
        if self.sharded.as_ref().map_or(1, Sharded::shards) == shards {
            return;
        }
        self.sharded = Sharded::new(
            &self.program.step_forward(&self.cfg),
            &self.train_graph,
            &self.cfg.optimizer,
            self.cfg.clip,
            shards,
        );
    }

    /// Trains with `peers`, the processes of a data-parallel job: each step's shards are
    /// divided among them ([`super::cluster`]). An error when the step cannot be split
    /// (docs/SCALING.md says which models).
    pub fn set_peers(&mut self, peers: Box<dyn Peers>) -> Result<(), RuntimeError> {
        self.peers = Some(peers);
        self.reshard();
        if self.processes() > 1 && self.sharded.is_none() {
            return Err(RuntimeError::Run(RunError::input(format!(
                "`{}` cannot be trained by {} processes: its training step cannot be split into shards",
                self.program.model.name,
                self.processes()
            ))));
        }
        Ok(())
    }

    /// Compiles the functions a training step runs on `backend`, running none (a first
    /// step then only runs them).
    pub fn prepare(&mut self, backend: &mut dyn Backend) -> Result<(), RunError> {
        let peers = self.peers.as_deref();
        match &mut self.sharded {
            Some(s) => s.prepare(backend, peers),
            None => backend.prepare(&self.train_graph, &step_roots(&self.train_graph)?),
        }
    }

    /// The number of processes training this model together (1 without peers).
    pub fn processes(&self) -> usize {
        self.peers.as_ref().map_or(1, |p| p.size())
    }

    /// Whether this process leads the run: it prints, evaluates and writes checkpoints
    /// (always, without peers).
    pub fn leads(&self) -> bool {
        self.peers.as_ref().is_none_or(|p| p.rank() == 0)
    }

    /// The number of shards each step is split into (1: not split).
    pub fn shards(&self) -> usize {
        self.sharded.as_ref().map_or(1, Sharded::shards)
    }

    /// The split step, when steps are split.
    pub fn sharded(&self) -> Option<&Sharded> {
        self.sharded.as_ref()
    }

    /// The program being trained.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Sets the learning rate of the following steps (before the schedule).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.cfg.optimizer = self.cfg.optimizer.with_lr(lr);
    }

    /// Sets the batch size of [`Run::fit`].
    pub fn set_batch_size(&mut self, batch: u64) {
        self.cfg.batch = batch.max(1);
        self.reshard();
    }

    /// Sets the number of epochs [`Run::fit`] trains to (counting those done).
    pub fn set_epochs(&mut self, epochs: u64) {
        self.cfg.epochs = epochs;
    }

    /// The standardization the run applies to inputs (and to a regression model's
    /// target), once fitted or restored.
    pub fn standardizer(&self) -> Option<&Standardizer> {
        self.standardizer.as_ref()
    }

    /// Epochs and steps done.
    pub fn progress(&self) -> (u64, u64) {
        (self.epoch, self.step)
    }

    /// One training step on a batch (standardized already, if the run standardizes) at
    /// the learning rate of the current epoch. A loss that is not finite rolls the state
    /// back to before the step and returns the diagnostic naming the operation (this keeps
    /// a copy of the state from before each step; [`Run::fit`] keeps one per epoch).
    pub fn step_batch(
        &mut self,
        backend: &mut dyn Backend,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
    ) -> Result<StepResult, RuntimeError> {
        self.snapshot();
        let r = self.raw_step(backend, inputs, targets)?;
        if r.objective.is_finite() {
            return Ok(r);
        }
        self.step -= 1;
        self.restore_snapshot();
        Err(self.diverged(inputs, targets, r.objective))
    }

    /// A step without any check (a loss that is not finite is returned, not undone). With
    /// peers, every process passes the whole batch and computes its rows.
    pub fn raw_step(
        &mut self,
        backend: &mut dyn Backend,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
    ) -> Result<StepResult, RuntimeError> {
        let rows = batch_of(inputs);
        let mine = self.rows(rows);
        if mine == (0..rows) {
            return self.part_step(backend, inputs, targets, rows);
        }
        let (mut x, mut y) = (Vec::new(), Vec::new());
        copy_rows(&mut x, inputs, mine.start, mine.end);
        copy_rows(&mut y, targets, mine.start, mine.end);
        self.part_step(backend, &x, &y, rows)
    }

    /// A step of a batch of `rows` rows of which `inputs` and `targets` hold this
    /// process's ([`Run::rows`]; all of them without peers).
    fn part_step(
        &mut self,
        backend: &mut dyn Backend,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        rows: usize,
    ) -> Result<StepResult, RuntimeError> {
        let lr = self.learning_rate();
        self.step += 1;
        let h = hyper(&self.cfg.optimizer, self.cfg.clip, lr, self.step);
        let peers = self.peers.as_deref();
        Ok(match &mut self.sharded {
            Some(s) => s.step(backend, &mut self.state, inputs, targets, rows, &h, peers)?,
            None => backend.step(&self.train_graph, &mut self.state, inputs, targets, &h)?,
        })
    }

    /// Which of a batch's `rows` rows this process computes: its block of the shards'.
    fn rows(&self, rows: usize) -> std::ops::Range<usize> {
        match (&self.peers, &self.sharded) {
            (Some(p), Some(s)) => {
                let b = cluster::block(p.rank(), p.size(), s.shards());
                b.start * rows / s.shards()..b.end * rows / s.shards()
            }
            _ => 0..rows,
        }
    }

    /// Process 0's decision, on every process.
    fn agree(&self, value: u8) -> u8 {
        self.peers.as_ref().map_or(value, |p| p.agree(value))
    }

    /// Copies the state into the snapshot (reusing its allocation).
    fn snapshot(&mut self) {
        match &mut self.prev {
            Some(p) => p.clone_from(&self.state),
            None => self.prev = Some(self.state.clone()),
        }
    }

    fn restore_snapshot(&mut self) {
        if let Some(p) = &self.prev {
            self.state.clone_from(p);
        }
    }

    /// The diagnostic of the step after `self.step`, whose loss was `loss`, replayed on
    /// the interpreter from the current state (the state before that step).
    fn diverged(&self, inputs: &[ArrayD<f32>], targets: &[ArrayD<f32>], loss: f64) -> RuntimeError {
        let lr = self.learning_rate();
        let h = hyper(&self.cfg.optimizer, self.cfg.clip, lr, self.step + 1);
        let origin = trace::trace(&self.train_graph, &self.state, inputs, targets, &h);
        RuntimeError::Diverged(Box::new(trace::diverged(
            &self.train_graph,
            &origin,
            loss,
            self.epoch + 1,
            self.step + 1,
            lr,
            self.cfg.clip.is_some(),
            self.cfg.span,
            self.checkpoint.as_deref().filter(|p| p.exists()),
        )))
    }

    /// The learning rate of the current epoch (after the schedule).
    pub fn learning_rate(&self) -> f64 {
        learning_rate(
            &self.cfg.schedule,
            self.cfg.optimizer.lr(),
            self.epoch,
            self.cfg.epochs,
        )
    }

    /// The training graph.
    pub fn graph(&self) -> &Graph {
        &self.train_graph
    }

    /// Runs the whole training, telling `observer` about each step and epoch.
    pub fn train(
        &mut self,
        backend: &mut dyn Backend,
        paths: &RunPaths,
        observer: &mut dyn Observer,
    ) -> Result<Report, RuntimeError> {
        let spec = data_spec(&self.program.forward);
        let all = data::load(&paths.train, &spec, true)?;
        for w in sanity::check(&all, &spec, &paths.train)? {
            if self.leads() {
                observer.data_warning(&w);
            }
        }
        let test = match &paths.test {
            Some(t) => {
                // Test data is checked for errors; its warnings would repeat the training
                // data's.
                let d = data::load(t, &spec, true)?;
                sanity::check(&d, &spec, t)?;
                Some(d)
            }
            None => None,
        };
        if let Some(r) = &paths.resume {
            self.restore(r)?;
        }
        self.checkpoint = paths.save.clone();
        self.fit(backend, &all, test, observer)
    }

    /// Trains on data in memory from the current epoch to the configured number of
    /// epochs: a validation split of `all` as the train block asks, standardization
    /// fitted on the training rows (unless restored), a checkpoint after every epoch when
    /// the run has a checkpoint path, early stopping, and the final evaluations.
    pub fn fit(
        &mut self,
        backend: &mut dyn Backend,
        all: &Dataset,
        mut test: Option<Dataset>,
        observer: &mut dyn Observer,
    ) -> Result<Report, RuntimeError> {
        let start = Instant::now();
        let spec = data_spec(&self.program.forward);
        let (mut train, mut val) = all.split(self.cfg.validation, self.cfg.seed);
        if self.standardizer.is_none() && self.cfg.standardize && self.step == 0 {
            let mut st = Standardizer::fit(&train);
            // Class ids (embedding inputs) are indices, not measurements: left as they are.
            for (i, port) in spec.inputs.iter().enumerate() {
                if port.classes.is_some() {
                    st.mean[i].iter_mut().for_each(|m| *m = 0.0);
                    st.std[i].iter_mut().for_each(|s| *s = 1.0);
                }
            }
            if let Some(r) = &self.program.regressor {
                st.fit_target(&train, r.target);
            }
            self.standardizer = Some(st);
        }
        if let Some(s) = &self.standardizer {
            s.apply(&mut train);
            s.apply(&mut val);
            if let Some(t) = test.as_mut() {
                s.apply(t);
            }
        }
        let mut stopped_early = None;
        let batch = self.cfg.batch as usize;
        let save = self.checkpoint.clone();
        while self.epoch < self.cfg.epochs {
            let t0 = Instant::now();
            let lr = self.learning_rate();
            let order = data::epoch_order(train.rows, self.cfg.seed, self.epoch);
            let mut total = 0.0;
            let batches = order.len().div_ceil(batch.max(1));
            let mut seen = 0;
            let mut last = None;
            // One copy of the state per epoch: a step whose loss is not finite is found
            // again by replaying the epoch's steps from it (they are deterministic).
            self.snapshot();
            let first_step = self.step;
            let mut before_last = None;
            for (k, chunk) in order.chunks(batch.max(1)).enumerate() {
                // This process's rows of the batch (all of them without peers).
                let b = train.select(&chunk[self.rows(chunk.len())]);
                if self.diagnose && k + 1 == batches {
                    before_last = Some(self.state.clone());
                }
                let r = self.part_step(backend, &b.inputs, &b.targets, chunk.len())?;
                if !r.objective.is_finite() {
                    self.restore_snapshot();
                    self.step = first_step;
                    for c in order.chunks(batch.max(1)).take(k) {
                        let replay = train.select(&c[self.rows(c.len())]);
                        self.part_step(backend, &replay.inputs, &replay.targets, c.len())?;
                    }
                    let whole = train.select(chunk);
                    return Err(self.diverged(&whole.inputs, &whole.targets, r.objective));
                }
                total += r.loss * chunk.len() as f64;
                seen += chunk.len();
                observer.step(&StepProgress {
                    epoch: self.epoch + 1,
                    epochs: self.cfg.epochs,
                    batch: k + 1,
                    batches,
                    loss: total / seen as f64,
                    samples_per_s: seen as f64 / t0.elapsed().as_secs_f64().max(1e-9),
                });
                last = Some(chunk);
            }
            let steps_seconds = t0.elapsed().as_secs_f64();
            let health = match (last, self.diagnose && self.leads()) {
                (Some(chunk), true) => {
                    let b = train.select(chunk);
                    let h = hyper(&self.cfg.optimizer, self.cfg.clip, lr, self.step);
                    let m = health::measure(
                        &self.program,
                        &self.train_graph,
                        backend,
                        &self.state,
                        before_last.as_ref(),
                        &b.inputs,
                        &b.targets,
                        &h,
                    )?;
                    for w in health::warnings(&m, self.cfg.span) {
                        let key = (w.code, w.span());
                        if !self.warned.contains(&key) {
                            self.warned.push(key);
                            observer.warning(&w);
                        }
                    }
                    Some(m)
                }
                _ => None,
            };
            self.epoch += 1;
            let ev = if val.rows > 0 && self.leads() {
                Some(evaluate(
                    &self.program,
                    backend,
                    &self.state,
                    self.standardizer.as_ref(),
                    &val,
                    batch,
                )?)
            } else {
                None
            };
            let rec = EpochRecord {
                epoch: self.epoch,
                lr,
                train_loss: total / train.rows.max(1) as f64,
                val_loss: ev.as_ref().and_then(|e| e.loss),
                val_accuracy: ev
                    .as_ref()
                    .and_then(|e| e.classification.as_ref().map(|c| c.accuracy)),
                seconds: t0.elapsed().as_secs_f64(),
                samples_per_s: train.rows as f64 / steps_seconds.max(1e-9),
                health,
            };
            observer.epoch(&rec);
            self.history.push(rec.clone());
            if self.early_stop(&rec, backend, &train)? {
                stopped_early = Some(format!(
                    "no improvement of `{}` for {} epochs",
                    self.cfg.early_stop.as_ref().map_or("", |e| &e.monitor),
                    self.early.wait
                ));
                self.save_led(save.as_deref())?;
                break;
            }
            self.save_led(save.as_deref())?;
        }
        let restore = self.cfg.early_stop.as_ref().is_some_and(|e| e.restore_best);
        if let (true, Some(best)) = (restore, self.early.best_params.clone()) {
            self.state.params = best;
            self.save_led(save.as_deref())?;
        }
        if !self.leads() {
            // Process 0 evaluates and reports.
            return Ok(self.report(start, None, Evaluation::default(), stopped_early, save));
        }
        let test_eval = match &test {
            Some(t) => Some(evaluate(
                &self.program,
                backend,
                &self.state,
                self.standardizer.as_ref(),
                t,
                batch,
            )?),
            None => None,
        };
        let train_eval = evaluate(
            &self.program,
            backend,
            &self.state,
            self.standardizer.as_ref(),
            &train,
            batch,
        )?;
        let final_eval = test_eval.as_ref().unwrap_or(&train_eval);
        let losses: Vec<(u64, f64)> = self
            .history
            .iter()
            .map(|r| (r.epoch, r.train_loss))
            .collect();
        if let Some(w) = verdict::learned_nothing(
            self.program.model.span,
            final_eval,
            test_eval.is_some(),
            &losses,
        ) {
            observer.warning(&w);
        }
        Ok(self.report(start, test_eval, train_eval, stopped_early, save))
    }

    fn report(
        &self,
        start: Instant,
        test: Option<Evaluation>,
        train: Evaluation,
        stopped_early: Option<String>,
        checkpoint: Option<PathBuf>,
    ) -> Report {
        let restore = self.cfg.early_stop.as_ref().is_some_and(|e| e.restore_best);
        Report {
            model: self.program.model.name.clone(),
            epochs: self.epoch,
            steps: self.step,
            history: self.history.clone(),
            best_epoch: self.early.best_epoch.filter(|_| restore),
            stopped_early,
            test,
            train,
            checkpoint,
            seconds: start.elapsed().as_secs_f64(),
        }
    }

    /// Writes the checkpoint to `path`, if any, when this process leads the run.
    fn save_led(&self, path: Option<&Path>) -> Result<(), RuntimeError> {
        match path {
            Some(p) if self.leads() => self.save(p),
            _ => Ok(()),
        }
    }

    /// Updates early stopping; true when training should stop.
    fn early_stop(
        &mut self,
        rec: &EpochRecord,
        backend: &mut dyn Backend,
        train: &Dataset,
    ) -> Result<bool, RuntimeError> {
        let Some(es) = self.cfg.early_stop.clone() else {
            return Ok(false);
        };
        // Process 0 evaluates and decides; every process keeps the same best weights.
        const NO_VALUE: u8 = 0;
        const IMPROVED: u8 = 1;
        const NOT: u8 = 2;
        let mut verdict = NO_VALUE;
        if self.leads() {
            verdict = match self.improved(&es, rec, backend, train)? {
                None => NO_VALUE,
                Some(true) => IMPROVED,
                Some(false) => NOT,
            };
        }
        match self.agree(verdict) {
            IMPROVED => {
                self.early.best_epoch = Some(rec.epoch);
                self.early.wait = 0;
                self.early.best_params = Some(self.state.params.clone());
                Ok(false)
            }
            NOT => {
                self.early.wait += 1;
                Ok(self.early.wait >= es.patience.max(1))
            }
            _ => Ok(false),
        }
    }

    /// Whether the monitored value improved this epoch (None: there is none), keeping
    /// the best value.
    fn improved(
        &mut self,
        es: &crate::check::train::EarlyStop,
        rec: &EpochRecord,
        backend: &mut dyn Backend,
        train: &Dataset,
    ) -> Result<Option<bool>, RuntimeError> {
        let (value, higher_better) = match es.monitor.as_str() {
            "val_loss" => (rec.val_loss, false),
            "val_accuracy" => (rec.val_accuracy, true),
            "loss" => (Some(rec.train_loss), false),
            _ => {
                let ev = evaluate(
                    &self.program,
                    backend,
                    &self.state,
                    self.standardizer.as_ref(),
                    train,
                    self.cfg.batch as usize,
                )?;
                (ev.classification.map(|c| c.accuracy), true)
            }
        };
        let Some(v) = value else { return Ok(None) };
        let improved = match self.early.best {
            None => true,
            Some(b) if higher_better => v > b + es.min_delta,
            Some(b) => v < b - es.min_delta,
        };
        if improved {
            self.early.best = Some(v);
        }
        Ok(Some(improved))
    }

    /// Writes the run's checkpoint atomically.
    pub fn save(&self, path: &Path) -> Result<(), RuntimeError> {
        let mut c = Checkpoint::new();
        for (p, v) in self.program.forward.params.iter().zip(&self.state.params) {
            c.tensors.insert(p.tensor.name.clone(), v.clone());
        }
        for (s, v) in self.train_graph.states.iter().zip(&self.state.states) {
            c.tensors.insert(format!("optimizer.{}", s.name), v.clone());
        }
        if let Some(best) = &self.early.best_params {
            for (p, v) in self.program.forward.params.iter().zip(best) {
                c.tensors
                    .insert(format!("best.{}", p.tensor.name), v.clone());
            }
        }
        if let Some(st) = &self.standardizer {
            put_standardizer(&mut c, &self.program.forward, st);
        }
        let meta = &mut c.meta;
        meta.insert("format".into(), "kiln-checkpoint-1".into());
        meta.insert("model".into(), self.program.model.name.clone());
        meta.insert(identity::DIGEST_KEY.into(), self.program.hash.clone());
        meta.insert(identity::SCHEME_KEY.into(), identity::SCHEME.into());
        meta.insert("epoch".into(), self.epoch.to_string());
        meta.insert("step".into(), self.step.to_string());
        meta.insert("seed".into(), self.cfg.seed.to_string());
        meta.insert("optimizer".into(), format!("{:?}", self.cfg.optimizer));
        if let Some(b) = self.early.best {
            meta.insert("early_stop.best".into(), format!("{b:e}"));
        }
        if let Some(e) = self.early.best_epoch {
            meta.insert("early_stop.best_epoch".into(), e.to_string());
        }
        meta.insert("early_stop.wait".into(), self.early.wait.to_string());
        c.save(path).map_err(|e| {
            RuntimeError::Io(format!("cannot write checkpoint `{}`: {e}", path.display()))
        })
    }

    /// Continues from a checkpoint written by [`Run::save`] for the same model.
    pub fn restore(&mut self, path: &Path) -> Result<(), RuntimeError> {
        match self.restore_weights(path)? {
            None => Ok(()),
            Some(key) => Err(RuntimeError::Checkpoint(format!(
                "`{}` holds no optimizer state `{key}` for this optimizer: it cannot be resumed with this train block",
                path.display()
            ))),
        }
    }

    /// Starts from the parameters of `path` whose names and shapes are this model's
    /// (`pretrained`, [`pretrained`]): a fresh run's, the others kept as
    /// initialized.
    pub fn load_pretrained(&mut self, path: &Path) -> Result<Pretrained, RuntimeError> {
        pretrained(&self.program, &mut self.state.params, path)
    }

    /// Starts from the parameters (and standardization) of a checkpoint or weights file
    /// of this model; when it also holds this train block's optimizer state, from that
    /// state and the checkpoint's epoch and step too, as [`Run::restore`]. Otherwise the
    /// optimizer state stays as it is and the first tensor missing is returned.
    pub fn restore_weights(&mut self, path: &Path) -> Result<Option<String>, RuntimeError> {
        let c = load_for(&self.program, path)?;
        self.state.params = params_from(&self.program, &c, path, "")?;
        self.standardizer = get_standardizer(&c, &self.program);
        let mut states = Vec::with_capacity(self.state.states.len());
        for (s, now) in self.train_graph.states.iter().zip(&self.state.states) {
            let key = format!("optimizer.{}", s.name);
            match c.tensors.get(&key) {
                Some(v) if v.shape() == now.shape() => states.push(v.clone()),
                _ => return Ok(Some(key)),
            }
        }
        self.state.states = states;
        let num = |k: &str| c.meta.get(k).and_then(|v| v.parse::<u64>().ok());
        self.epoch = num("epoch").unwrap_or(0);
        self.step = num("step").unwrap_or(0);
        self.early.wait = num("early_stop.wait").unwrap_or(0);
        self.early.best_epoch = num("early_stop.best_epoch");
        self.early.best = c.meta.get("early_stop.best").and_then(|v| v.parse().ok());
        if self.early.best.is_some() {
            self.early.best_params = params_from(&self.program, &c, path, "best.").ok();
        }
        Ok(None)
    }
}

fn put_standardizer(c: &mut Checkpoint, g: &Graph, st: &Standardizer) {
    for (i, t) in g.inputs.iter().enumerate() {
        if let (Some(m), Some(s)) = (st.mean.get(i), st.std.get(i)) {
            c.tensors.insert(
                format!("standardize.{}.mean", t.name),
                ArrayD::from_shape_vec(IxDyn(&[m.len()]), m.clone()).expect("1-D"),
            );
            c.tensors.insert(
                format!("standardize.{}.std", t.name),
                ArrayD::from_shape_vec(IxDyn(&[s.len()]), s.clone()).expect("1-D"),
            );
        }
    }
    if let Some(t) = &st.target {
        if let Some(target) = g.targets.get(t.target) {
            c.tensors.insert(
                format!("standardize.{}.mean", target.name),
                ArrayD::from_shape_vec(IxDyn(&[t.mean.len()]), t.mean.clone()).expect("1-D"),
            );
            c.tensors.insert(
                format!("standardize.{}.std", target.name),
                ArrayD::from_shape_vec(IxDyn(&[t.std.len()]), t.std.clone()).expect("1-D"),
            );
        }
    }
}
