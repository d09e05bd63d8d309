//! The contract both back ends implement: a [`Backend`] runs graphs on a model's
//! [`State`] (the reference interpreter and the Cranelift JIT implement it; the runtime
//! owns the state and hands it to a backend for each batch), and [`rng`] holds the
//! seeded random streams every stage draws from.

pub mod rng;

use crate::ir::{Graph, Hyper, NodeId, Slot};
use ndarray::ArrayD;
use smallvec::SmallVec;
use std::collections::HashMap;
use std::fmt;

/// The mutable tensors of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    /// Parameters, in the graph's order.
    pub params: Vec<ArrayD<f32>>,
    /// State tensors (optimizer state), in the training graph's order.
    pub states: Vec<ArrayD<f32>>,
}

/// A model's parameters and state tensors borrowed, or ranges of their elements (a
/// split step updates a range of every tensor on each thread: `runtime::shard`).
pub struct Slices<'a> {
    /// Each parameter's elements (or its range of them), in the graph's order.
    pub params: Vec<&'a mut [f32]>,
    /// Each state tensor's.
    pub states: Vec<&'a mut [f32]>,
}

/// A violated invariant of Kiln: a bug in Kiln, never a mistake in a model or its data.
/// Its `Display` says so and asks for a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bug(String);

impl Bug {
    /// A bug; `what` says which invariant failed.
    pub fn new(what: impl Into<String>) -> Bug {
        Bug(what.into())
    }
}

impl fmt::Display for Bug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "internal error: {} (this is a bug in Kiln; please report it)",
            self.0
        )
    }
}

impl std::error::Error for Bug {}

/// Why a graph could not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// The caller's values do not fit the graph: an input, target, parameter or state of
    /// the wrong count, shape or layout, a graph without a loss where one is needed, or
    /// data values no model accepts (a class label or an id outside its range). A
    /// message for the user.
    Input(String),
    /// Kiln's bug.
    Internal(Bug),
}

impl RunError {
    /// The caller's mistake, described by `message`.
    pub fn input(message: impl Into<String>) -> RunError {
        RunError::Input(message.into())
    }

    /// Kiln's bug: `what` says which invariant failed.
    pub fn bug(what: impl Into<String>) -> RunError {
        RunError::Internal(Bug::new(what))
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Input(m) => f.write_str(m),
            RunError::Internal(b) => write!(f, "{b}"),
        }
    }
}

impl std::error::Error for RunError {}

/// What a training step returns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepResult {
    /// The model's loss on the batch (before the update).
    pub loss: f64,
    /// The differentiated objective (loss plus regularization).
    pub objective: f64,
}

/// The loss and objective nodes of a training graph.
pub fn loss_nodes(graph: &Graph) -> Result<(NodeId, NodeId), RunError> {
    match (graph.loss, graph.objective) {
        (Some(l), Some(o)) => Ok((l, o)),
        _ => Err(RunError::input("the graph has no loss")),
    }
}

/// The roots of a training step's call: the loss, the objective, then every update.
pub fn step_roots(graph: &Graph) -> Result<SmallVec<[NodeId; 32]>, RunError> {
    let (loss, objective) = loss_nodes(graph)?;
    let mut roots: SmallVec<[NodeId; 32]> = SmallVec::from_slice(&[loss, objective]);
    roots.extend(graph.updates.iter().map(|(_, n)| *n));
    Ok(roots)
}

/// The roots of an update's call (a graph without a loss, such as
/// `autodiff::update_graph`'s): its updates.
pub fn update_roots(graph: &Graph) -> SmallVec<[NodeId; 32]> {
    graph.updates.iter().map(|(_, n)| *n).collect()
}

/// The roots of a gradients call: the loss, then every trainable parameter's gradient.
pub fn gradient_roots(graph: &Graph) -> Result<Vec<NodeId>, RunError> {
    let (loss, _) = loss_nodes(graph)?;
    Ok(std::iter::once(loss)
        .chain(graph.grads.iter().map(|(_, n)| *n))
        .collect())
}

/// Copies rows `lo..hi` (axis 0) of each array of `from` into `to`, reusing its arrays
/// when they fit.
pub fn copy_rows(to: &mut Vec<ArrayD<f32>>, from: &[ArrayD<f32>], lo: usize, hi: usize) {
    to.truncate(from.len());
    for (k, a) in from.iter().enumerate() {
        let rows = a.slice_axis(ndarray::Axis(0), ndarray::Slice::from(lo..hi));
        match to.get_mut(k) {
            Some(t) if t.shape() == rows.shape() => t.assign(&rows),
            Some(t) => *t = rows.to_owned(),
            None => to.push(rows.to_owned()),
        }
    }
}

/// Stores the new value of an updated slot.
pub fn write_back(state: &mut State, slot: Slot, v: ArrayD<f32>) {
    match slot {
        Slot::Param(p) => state.params[p] = v,
        Slot::State(s) => state.states[s] = v,
    }
}

/// A loss and the gradient of each trainable parameter (by parameter index).
pub type LossAndGrads = (f64, Vec<(usize, ArrayD<f32>)>);

/// A way to run graphs.
pub trait Backend {
    /// The values of `roots` of `graph` (a forward graph) for one batch.
    fn forward(
        &mut self,
        graph: &Graph,
        state: &State,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        roots: &[NodeId],
    ) -> Result<Vec<ArrayD<f32>>, RunError> {
        self.evaluate(graph, state, inputs, targets, &HashMap::new(), roots)
    }

    /// One training step of `graph` (a training graph): forward, backward, update of
    /// `state` in place.
    fn step(
        &mut self,
        graph: &Graph,
        state: &mut State,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        hyper: &HashMap<Hyper, f64>,
    ) -> Result<StepResult, RunError>;

    /// The loss and every trainable parameter's gradient for one batch, without updating.
    fn gradients(
        &mut self,
        graph: &Graph,
        state: &State,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        hyper: &HashMap<Hyper, f64>,
    ) -> Result<LossAndGrads, RunError>;

    /// The values of `roots` of any graph for one batch, with hyperparameters `hyper`,
    /// updating nothing.
    fn evaluate(
        &mut self,
        graph: &Graph,
        state: &State,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        hyper: &HashMap<Hyper, f64>,
        roots: &[NodeId],
    ) -> Result<Vec<ArrayD<f32>>, RunError>;

    /// [`Backend::evaluate`], writing the values of the first `outputs.len()` roots into
    /// `outputs` (each of its root's size) instead of returning them.
    #[allow(clippy::too_many_arguments)]
    fn evaluate_into(
        &mut self,
        graph: &Graph,
        state: &State,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        hyper: &HashMap<Hyper, f64>,
        roots: &[NodeId],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), RunError> {
        let vals = self.evaluate(graph, state, inputs, targets, hyper, roots)?;
        for (out, v) in outputs.iter_mut().zip(&vals) {
            match v.as_slice() {
                Some(v) if v.len() == out.len() => out.copy_from_slice(v),
                _ => return Err(RunError::bug("a root does not fit its buffer")),
            }
        }
        Ok(())
    }

    /// Computes `graph`'s updates (a graph without a loss, such as
    /// `autodiff::update_graph`) from `inputs` and writes them into `state`.
    fn update(
        &mut self,
        graph: &Graph,
        state: &mut State,
        inputs: &[ArrayD<f32>],
        hyper: &HashMap<Hyper, f64>,
    ) -> Result<(), RunError>;

    /// [`Backend::update`] on borrowed buffers: `slices` holds each parameter's and
    /// state's elements, `inputs` each input's, as many as the graph's shapes say.
    fn update_slices(
        &mut self,
        graph: &Graph,
        slices: &mut Slices,
        inputs: &[&[f32]],
        hyper: &HashMap<Hyper, f64>,
    ) -> Result<(), RunError>;

    /// Prepares a call of `roots` of `graph` without making it: the JIT compiles its
    /// code (a back end that compiles nothing has nothing to do).
    fn prepare(&mut self, _graph: &Graph, _roots: &[NodeId]) -> Result<(), RunError> {
        Ok(())
    }

    /// The threads its kernels may use.
    fn threads(&self) -> usize;

    /// A new back end of the same kind whose kernels use `threads` threads (for one of
    /// several calls running at once).
    fn fork(&self, threads: usize) -> Box<dyn Backend + Send>;
}

/// The batch size of a call: the first dimension of the first input.
pub fn batch_of(inputs: &[ArrayD<f32>]) -> usize {
    inputs
        .first()
        .and_then(|a| a.shape().first().copied())
        .unwrap_or(1)
}

/// The value of a one-element array (NaN when empty).
pub fn scalar(a: &ArrayD<f32>) -> f64 {
    a.iter().next().map_or(f64::NAN, |v| f64::from(*v))
}

#[cfg(test)]
mod tests {
    use super::RunError;

    #[test]
    fn a_bug_says_it_is_kilns_and_a_user_error_is_the_message_alone() {
        assert_eq!(
            RunError::bug("a root has no value").to_string(),
            "internal error: a root has no value (this is a bug in Kiln; please report it)"
        );
        assert_eq!(
            RunError::input("class label 7 is not in 0..3").to_string(),
            "class label 7 is not in 0..3"
        );
    }
}
