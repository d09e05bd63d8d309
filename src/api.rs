//! The embedding API: compile a model from source, then train and run it from Rust.
//!
//! [`compile_str`] / [`compile_file`] check and lower a model (or return the same
//! [`Diagnostics`] `kiln check` prints); [`Model::session`] starts a [`Session`] with
//! parameters initialized from a seed. Sessions of one model share its compiled code:
//! the second session of a model runs without compiling anything.

use crate::check::graph::CheckedModel;
use crate::check::train::TrainConfig;
use crate::check::{self, LintLevels};
use crate::diag::{self, Code, ColorChoice, Diagnostic};
use crate::exec::Backend;
use crate::interp::dims;
use crate::ir::{Graph, Tensor};
use crate::jit::Jit;
use crate::runtime::data::Dataset;
use crate::runtime::error::RuntimeError;
use crate::runtime::eval::{self, Evaluation};
use crate::runtime::program::{self, Program};
use crate::runtime::train::{EpochRecord, Observer, Report, Run};
pub use crate::runtime::weights::Pretrained;
use crate::span::Sources;
use ndarray::{ArrayD, ArrayViewD};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Why a model did not compile: the diagnostics, with the sources they point into.
/// `Display` renders them exactly as `kiln check` does (without color).
pub struct Diagnostics {
    sources: Sources,
    list: Vec<Diagnostic>,
    /// A failure before checking (an unreadable file).
    io: Option<String>,
}

impl Diagnostics {
    /// The diagnostics (errors and warnings), in source order.
    pub fn list(&self) -> &[Diagnostic] {
        &self.list
    }

    /// Renders them as `kiln check` does.
    pub fn render(&self, color: ColorChoice) -> String {
        match &self.io {
            Some(m) => format!("error: {m}\n"),
            None => diag::render(&self.sources, &self.list, color),
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(ColorChoice::Never))
    }
}

impl fmt::Debug for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Diagnostics {}

/// Why a session call failed.
#[derive(Debug)]
pub enum Error {
    /// An input or target the model does not have.
    UnknownTensor {
        /// `input` or `target`.
        kind: &'static str,
        /// The name given.
        name: String,
        /// The names the model has.
        expected: Vec<String>,
    },
    /// An input or target the model needs was not given.
    MissingTensor {
        /// `input` or `target`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A tensor of the wrong shape.
    Shape {
        /// What it is (`input `x``, `parameter `h.dense.weight``).
        what: String,
        /// The shape expected (`[N, 2]`).
        expected: String,
        /// The shape given.
        given: Vec<usize>,
    },
    /// A parameter the model does not have.
    UnknownParameter(String),
    /// Training, evaluation, data or checkpoint failures.
    Runtime(RuntimeError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownTensor {
                kind,
                name,
                expected,
            } => write!(
                f,
                "the model has no {kind} `{name}` (its {kind}s: {})",
                expected.join(", ")
            ),
            Error::MissingTensor { kind, name } => write!(f, "{kind} `{name}` is missing"),
            Error::Shape {
                what,
                expected,
                given,
            } => write!(f, "{what} has shape {given:?}, expected {expected}"),
            Error::UnknownParameter(p) => write!(f, "the model has no parameter `{p}`"),
            Error::Runtime(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<RuntimeError> for Error {
    fn from(e: RuntimeError) -> Self {
        Error::Runtime(e)
    }
}

/// Named tensors: `&[("x", &x)]`.
pub type Named<'a> = &'a [(&'a str, &'a ArrayD<f32>)];

/// What sessions of one model share.
struct Shared {
    program: Arc<Program>,
    cfg: TrainConfig,
    sources: Sources,
    /// Compiled code, shared by every session.
    jit: Mutex<Jit>,
    /// Training graphs by seed (the seed only matters with dropout or rrelu noise).
    graphs: Mutex<HashMap<u64, Arc<Graph>>>,
    /// The training graph draws noise, so it depends on the seed.
    noisy: bool,
}

/// A checked and lowered model, ready for sessions. Cheap to clone.
#[derive(Clone)]
pub struct Model {
    shared: Arc<Shared>,
}

/// Compiles the first model of `src` (with its `train` block, if any).
pub fn compile_str(src: &str) -> Result<Model, Diagnostics> {
    let mut sources = Sources::new();
    let id = sources.add("<string>", None, src.to_string());
    finish(sources, id)
}

/// Compiles the first model of the file at `path` (imports relative to it).
pub fn compile_file(path: impl AsRef<Path>) -> Result<Model, Diagnostics> {
    let path = path.as_ref();
    let mut sources = Sources::new();
    match check::load_file(&mut sources, path) {
        Ok((id, None)) => finish(sources, id),
        Ok((_, Some(d))) => Err(Diagnostics {
            sources,
            list: vec![d],
            io: None,
        }),
        Err(e) => Err(Diagnostics {
            sources,
            list: Vec::new(),
            io: Some(format!("cannot read `{}`: {e}", path.display())),
        }),
    }
}

fn finish(mut sources: Sources, id: crate::span::FileId) -> Result<Model, Diagnostics> {
    let checked = check::check_file(&mut sources, id, &LintLevels::default());
    let fail = |sources, list| Diagnostics {
        sources,
        list,
        io: None,
    };
    let Some(program) = checked.program else {
        return Err(fail(sources, checked.diagnostics));
    };
    let Some(m) = program.models.first() else {
        let d = Diagnostic::error(
            Code::E0211,
            "the source declares no model",
            program_span(id),
        );
        return Err(fail(sources, vec![d]));
    };
    let cfg = program
        .train(&m.name)
        .cloned()
        .unwrap_or_else(|| TrainConfig::defaults(&m.name, m.span));
    let program = program::prepare(m);
    let noisy = program
        .train_forward(cfg.seed)
        .nodes
        .iter()
        .any(|n| matches!(n.op, crate::ir::Op::Noise { .. }));
    Ok(Model {
        shared: Arc::new(Shared {
            program: Arc::new(program),
            noisy,
            cfg,
            sources,
            jit: Mutex::new(Jit::new()),
            graphs: Mutex::new(HashMap::new()),
        }),
    })
}

fn program_span(file: crate::span::FileId) -> crate::span::Span {
    crate::span::Span {
        file,
        start: 0,
        end: 0,
    }
}

impl Model {
    /// The model's name.
    pub fn name(&self) -> &str {
        &self.checked().name
    }

    fn checked(&self) -> &CheckedModel {
        &self.shared.program.model
    }

    /// The table `kiln summary` prints: layers, shapes, parameters, multiply-adds.
    pub fn summary(&self) -> String {
        crate::summary::render_summary(self.checked(), &self.shared.cfg.freeze)
    }

    /// The training configuration of the model's `train` block (or the defaults).
    pub fn train_config(&self) -> &TrainConfig {
        &self.shared.cfg
    }

    /// Input names and shapes (`None` for the batch dimension).
    pub fn inputs(&self) -> Vec<(String, Vec<Option<usize>>)> {
        ports(&self.shared.program.forward.inputs)
    }

    /// Target names and shapes.
    pub fn targets(&self) -> Vec<(String, Vec<Option<usize>>)> {
        ports(&self.shared.program.forward.targets)
    }

    /// Output names.
    pub fn outputs(&self) -> Vec<String> {
        let g = &self.shared.program.forward;
        g.outputs.iter().map(|(n, _)| n.clone()).collect()
    }

    /// How many native functions the model's sessions have compiled so far (one per
    /// entry point: forward, training step, …): sessions share them.
    pub fn compiled_functions(&self) -> usize {
        self.shared
            .jit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .compiled()
    }

    /// The sources diagnostics of this model point into (for rendering).
    pub fn sources(&self) -> &Sources {
        &self.shared.sources
    }

    /// A session with parameters initialized from `seed` and the model's train block
    /// (its seed replaced); an error when they do not fit in this machine's memory.
    pub fn session(&self, seed: u64) -> Result<Session, Error> {
        let mut cfg = self.shared.cfg.clone();
        cfg.seed = seed;
        let p = &self.shared.program;
        let graph = {
            // Without noise nodes the training graph does not depend on the seed.
            let key = if self.shared.noisy { seed } else { 0 };
            let mut graphs = self
                .shared
                .graphs
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            graphs
                .entry(key)
                .or_insert_with(|| Arc::new(p.training_graph(&cfg)))
                .clone()
        };
        let run = Run::shared(p.clone(), graph, &cfg).map_err(|e| Error::Runtime(e.into()))?;
        Ok(Session {
            model: self.clone(),
            run,
        })
    }
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model").field("name", &self.name()).finish()
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("model", &self.model.name())
            .field("progress", &self.progress())
            .finish()
    }
}

fn ports(ts: &[Tensor]) -> Vec<(String, Vec<Option<usize>>)> {
    ts.iter()
        .map(|t| {
            let dims = t.shape.0.iter().map(|d| d.size().map(|s| s as usize));
            (t.name.clone(), dims.collect())
        })
        .collect()
}

/// A model's parameters, optimizer state and training progress. `Send`: a session can
/// move to another thread; sessions of one model share its compiled code.
pub struct Session {
    model: Model,
    run: Run,
}

impl Session {
    /// The JIT backend shared by the model's sessions, locked for one call.
    fn jit(model: &Model) -> MutexGuard<'_, Jit> {
        model
            .shared
            .jit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn program(&self) -> &Program {
        &self.model.shared.program
    }

    /// The named tensors ordered as the graph's `ports`, with shapes checked and a
    /// common batch size.
    fn order(
        &self,
        kind: &'static str,
        ports: &[Tensor],
        given: Named,
        batch: &mut Option<usize>,
    ) -> Result<Vec<ArrayD<f32>>, Error> {
        for (name, _) in given {
            if !ports.iter().any(|t| t.name == *name) {
                return Err(Error::UnknownTensor {
                    kind,
                    name: name.to_string(),
                    expected: ports.iter().map(|t| t.name.clone()).collect(),
                });
            }
        }
        ports
            .iter()
            .map(|t| {
                let (_, a) = given.iter().find(|(n, _)| *n == t.name).ok_or_else(|| {
                    Error::MissingTensor {
                        kind,
                        name: t.name.clone(),
                    }
                })?;
                let n = *batch.get_or_insert_with(|| a.shape().first().copied().unwrap_or(1));
                if a.shape() != dims(&t.shape, n).as_slice() || n == 0 {
                    return Err(Error::Shape {
                        what: format!("{kind} `{}`", t.name),
                        expected: t.shape.to_string(),
                        given: a.shape().to_vec(),
                    });
                }
                Ok(a.as_standard_layout().into_owned())
            })
            .collect()
    }

    /// Inputs and targets (when given) as a data set, standardized as training was (a
    /// regression model's target too, when training standardized it).
    fn dataset(&self, inputs: Named, targets: Option<Named>) -> Result<Dataset, Error> {
        let g = &self.program().forward;
        let mut batch = None;
        let inputs = self.order("input", &g.inputs, inputs, &mut batch)?;
        let targets = match targets {
            Some(t) => self.order("target", &g.targets, t, &mut batch)?,
            None => Vec::new(),
        };
        let mut d = Dataset {
            inputs,
            targets,
            rows: batch.unwrap_or(0),
        };
        if let Some(st) = self.run.standardizer() {
            st.apply(&mut d);
        }
        Ok(d)
    }

    /// Every output of the model for a batch of inputs, by name (evaluation behaviour:
    /// no dropout, batchnorm's running statistics); a regression model's prediction in
    /// its target's units when training standardized the target.
    pub fn forward(&mut self, inputs: Named) -> Result<HashMap<String, ArrayD<f32>>, Error> {
        let d = self.dataset(inputs, None)?;
        let g = &self.program().forward;
        let roots: Vec<_> = g.outputs.iter().map(|(_, n)| *n).collect();
        let vals = Self::jit(&self.model)
            .forward(g, &self.run.state, &d.inputs, &[], &roots)
            .map_err(RuntimeError::Run)?;
        let vals = eval::unstandardize_outputs(self.program(), self.run.standardizer(), vals);
        Ok(g.outputs.iter().map(|(n, _)| n.clone()).zip(vals).collect())
    }

    /// The model's first output for a batch of inputs.
    pub fn predict(&mut self, inputs: Named) -> Result<ArrayD<f32>, Error> {
        let first = self.model.outputs().into_iter().next();
        let mut outs = self.forward(inputs)?;
        Ok(first.and_then(|n| outs.remove(&n)).unwrap_or_default())
    }

    /// The predicted class of each row, for classifiers (None otherwise).
    pub fn classify(&mut self, inputs: Named) -> Result<Option<Vec<usize>>, Error> {
        let Some(c) = self.program().classifier.clone() else {
            return Ok(None);
        };
        let d = self.dataset(inputs, None)?;
        let vals = Self::jit(&self.model)
            .forward(
                &self.program().forward,
                &self.run.state,
                &d.inputs,
                &[],
                &[c.scores],
            )
            .map_err(RuntimeError::Run)?;
        Ok(vals.first().map(|s| eval::classes_of(s, &c)))
    }

    /// One training step (forward, loss, backward, update) on a batch; returns the loss.
    pub fn train_step(&mut self, inputs: Named, targets: Named) -> Result<f64, Error> {
        let d = self.dataset(inputs, Some(targets))?;
        let r = self
            .run
            .step_batch(&mut *Self::jit(&self.model), &d.inputs, &d.targets)?;
        Ok(r.loss)
    }

    /// Trains on the given rows up to the model's `epochs` (see [`Session::set_epochs`]),
    /// as `kiln train` does (shuffling, validation split, standardization and early
    /// stopping from the train block); `on_epoch` sees each epoch's record.
    pub fn train(
        &mut self,
        inputs: Named,
        targets: Named,
        mut on_epoch: impl FnMut(&EpochRecord),
    ) -> Result<Report, Error> {
        let g = &self.program().forward;
        let mut batch = None;
        let d = Dataset {
            inputs: self.order("input", &g.inputs, inputs, &mut batch)?,
            targets: self.order("target", &g.targets, targets, &mut batch)?,
            rows: batch.unwrap_or(0),
        };
        let observer: &mut dyn Observer = &mut on_epoch;
        Ok(self
            .run
            .fit(&mut *Self::jit(&self.model), &d, None, observer)?)
    }

    /// Loss and metrics on the given rows.
    pub fn evaluate(&mut self, inputs: Named, targets: Named) -> Result<Evaluation, Error> {
        let d = self.dataset(inputs, Some(targets))?;
        let batch = self.run.config().batch as usize;
        Ok(eval::evaluate(
            self.program(),
            &mut *Self::jit(&self.model),
            &self.run.state,
            self.run.standardizer(),
            &d,
            batch,
        )?)
    }

    /// Writes a checkpoint (parameters, optimizer state, progress) atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        Ok(self.run.save(path.as_ref())?)
    }

    /// Continues from a checkpoint of this model written by [`Session::save`] or
    /// `kiln train`.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<(), Error> {
        Ok(self.run.restore(path.as_ref())?)
    }

    /// Replaces the parameters whose names and shapes are in the safetensors file at
    /// `path` (a checkpoint of any model, or weights written elsewhere under Kiln's
    /// names), as `kiln train --pretrained` does: what was loaded, what was not, and the
    /// file's tensors that name no parameter.
    pub fn load_pretrained(&mut self, path: impl AsRef<Path>) -> Result<Pretrained, Error> {
        Ok(self.run.load_pretrained(path.as_ref())?)
    }

    /// Parameter names, in the model's order.
    pub fn parameter_names(&self) -> Vec<String> {
        let g = &self.program().forward;
        g.params.iter().map(|p| p.tensor.name.clone()).collect()
    }

    fn index(&self, name: &str) -> Result<usize, Error> {
        let g = &self.program().forward;
        g.params
            .iter()
            .position(|p| p.tensor.name == name)
            .ok_or_else(|| Error::UnknownParameter(name.to_string()))
    }

    /// A parameter's values by name.
    pub fn parameter(&self, name: &str) -> Result<ArrayViewD<'_, f32>, Error> {
        Ok(self.run.state.params[self.index(name)?].view())
    }

    /// Sets a parameter's values (same shape).
    pub fn set_parameter(&mut self, name: &str, value: ArrayViewD<f32>) -> Result<(), Error> {
        let i = self.index(name)?;
        let slot = &mut self.run.state.params[i];
        if slot.shape() != value.shape() {
            return Err(Error::Shape {
                what: format!("parameter `{name}`"),
                expected: format!("{:?}", slot.shape()),
                given: value.shape().to_vec(),
            });
        }
        *slot = value.to_owned().into_dyn();
        Ok(())
    }

    /// Sets the learning rate (before the schedule).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.run.set_learning_rate(lr);
    }

    /// Sets the batch size of [`Session::train`] and [`Session::evaluate`].
    pub fn set_batch_size(&mut self, batch: u64) {
        self.run.set_batch_size(batch);
    }

    /// Sets the epoch [`Session::train`] trains up to.
    pub fn set_epochs(&mut self, epochs: u64) {
        self.run.set_epochs(epochs);
    }

    /// The training configuration in effect.
    pub fn config(&self) -> &TrainConfig {
        self.run.config()
    }

    /// Epochs and steps done.
    pub fn progress(&self) -> (u64, u64) {
        self.run.progress()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_models_are_send() {
        fn send<T: Send>() {}
        send::<Session>();
        send::<Model>();
    }
}
