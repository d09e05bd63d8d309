//! The reference interpreter as a [`Backend`] (f32).

use crate::exec::{
    batch_of, gradient_roots, loss_nodes, scalar, write_back, Backend, LossAndGrads, RunError,
    Slices, State, StepResult,
};
use crate::interp::{self, dims, Env};
use crate::ir::{Graph, Hyper, NodeId, Shape, Slot};
use ndarray::{ArrayD, IxDyn};
use std::collections::HashMap;

/// The reference interpreter as a backend (f32).
#[derive(Clone, Copy, Debug, Default)]
pub struct Interpreter;

fn run(
    graph: &Graph,
    state: &State,
    inputs: &[ArrayD<f32>],
    targets: &[ArrayD<f32>],
    hyper: &HashMap<Hyper, f64>,
    roots: &[NodeId],
) -> Result<Vec<Option<ArrayD<f32>>>, RunError> {
    let env = Env {
        inputs,
        targets,
        params: &state.params,
        states: &state.states,
        hyper,
        batch: batch_of(inputs),
    };
    interp::run(graph, &env, roots)
}

fn take(vals: &mut [Option<ArrayD<f32>>], n: NodeId) -> Result<ArrayD<f32>, RunError> {
    vals[n]
        .clone()
        .ok_or_else(|| RunError::bug(format!("node %{n} was not computed")))
}

impl Backend for Interpreter {
    fn step(
        &mut self,
        graph: &Graph,
        state: &mut State,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        hyper: &HashMap<Hyper, f64>,
    ) -> Result<StepResult, RunError> {
        let (loss, objective) = loss_nodes(graph)?;
        let mut vals = run(graph, state, inputs, targets, hyper, &graph.step_roots())?;
        let result = StepResult {
            loss: scalar(&take(&mut vals, loss)?),
            objective: scalar(&take(&mut vals, objective)?),
        };
        for (slot, n) in &graph.updates {
            write_back(state, *slot, take(&mut vals, *n)?);
        }
        Ok(result)
    }

    fn gradients(
        &mut self,
        graph: &Graph,
        state: &State,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        hyper: &HashMap<Hyper, f64>,
    ) -> Result<LossAndGrads, RunError> {
        let roots = gradient_roots(graph)?;
        let loss = roots[0];
        let mut vals = run(graph, state, inputs, targets, hyper, &roots)?;
        let l = scalar(&take(&mut vals, loss)?);
        let grads = graph
            .grads
            .iter()
            .map(|(p, n)| Ok((*p, take(&mut vals, *n)?)))
            .collect::<Result<_, RunError>>()?;
        Ok((l, grads))
    }

    fn evaluate(
        &mut self,
        graph: &Graph,
        state: &State,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        hyper: &HashMap<Hyper, f64>,
        roots: &[NodeId],
    ) -> Result<Vec<ArrayD<f32>>, RunError> {
        let mut vals = run(graph, state, inputs, targets, hyper, roots)?;
        roots.iter().map(|&r| take(&mut vals, r)).collect()
    }

    fn update(
        &mut self,
        graph: &Graph,
        state: &mut State,
        inputs: &[ArrayD<f32>],
        hyper: &HashMap<Hyper, f64>,
    ) -> Result<(), RunError> {
        let roots: Vec<NodeId> = graph.updates.iter().map(|(_, n)| *n).collect();
        let mut vals = run(graph, state, inputs, &[], hyper, &roots)?;
        for (slot, n) in &graph.updates {
            write_back(state, *slot, take(&mut vals, *n)?);
        }
        Ok(())
    }

    /// Copies the slices into arrays, updates them and copies the updates back.
    fn update_slices(
        &mut self,
        graph: &Graph,
        slices: &mut Slices,
        inputs: &[&[f32]],
        hyper: &HashMap<Hyper, f64>,
    ) -> Result<(), RunError> {
        fn arrays<'a>(
            shapes: impl Iterator<Item = &'a Shape>,
            xs: impl Iterator<Item = &'a [f32]>,
        ) -> Result<Vec<ArrayD<f32>>, RunError> {
            shapes
                .zip(xs)
                .map(|(s, x)| {
                    ArrayD::from_shape_vec(IxDyn(&dims(s, 1)), x.to_vec())
                        .map_err(|e| RunError::input(format!("a slice of the wrong size: {e}")))
                })
                .collect()
        }
        let mut state = State {
            params: arrays(
                graph.params.iter().map(|p| &p.tensor.shape),
                slices.params.iter().map(|x| &**x),
            )?,
            states: arrays(
                graph.states.iter().map(|t| &t.shape),
                slices.states.iter().map(|x| &**x),
            )?,
        };
        let inputs = arrays(
            graph.inputs.iter().map(|t| &t.shape),
            inputs.iter().copied(),
        )?;
        self.update(graph, &mut state, &inputs, hyper)?;
        for (slot, _) in &graph.updates {
            let (to, from) = match *slot {
                Slot::Param(p) => (slices.params.get_mut(p), state.params.get(p)),
                Slot::State(s) => (slices.states.get_mut(s), state.states.get(s)),
            };
            match (to, from.and_then(|a| a.as_slice())) {
                (Some(to), Some(from)) if to.len() == from.len() => to.copy_from_slice(from),
                _ => {
                    return Err(RunError::bug(format!(
                        "no buffer for the update of {slot:?}"
                    )))
                }
            }
        }
        Ok(())
    }

    fn threads(&self) -> usize {
        1
    }

    fn fork(&self, _threads: usize) -> Box<dyn Backend + Send> {
        Box::new(Interpreter)
    }
}
