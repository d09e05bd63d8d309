//! Data-parallel training steps (docs/SCALING.md): a batch split into a fixed number of
//! shards of consecutive rows, whatever the number of threads. Each shard's gradient is
//! computed on its own (in parallel, one back end per thread), weighted by its share of
//! the rows and combined with the others in a fixed pairwise tree; clipping and the
//! optimizer update then run once on the combined gradient. The result depends on the
//! batch and the number of shards, never on the number of threads that computed it.

use crate::autodiff::{gradient_graph, update_graph};
use crate::exec::{batch_of, Backend, RunError, State, StepResult};
use crate::ir::{Binary, Clip, Graph, Hyper, NodeId, Op, Optimizer, Reduce};
use crate::ops::Elem;
use ndarray::{ArrayD, Axis, Slice};
use std::collections::HashMap;
use std::sync::Mutex;

/// The number of shards a step is split into: `requested` (a power of two), else one
/// (docs/SCALING.md says why, for now).
pub fn shards_for(requested: Option<u64>) -> usize {
    requested.map_or(1, |s| s.max(1) as usize)
}

/// Whether a training-mode forward graph's step can be split by rows: no value that
/// combines rows (a batch statistic) flows back into per-row values, nothing is updated
/// but by gradients (batch normalization's running statistics are), and every value that
/// combines rows does so linearly (sums, means, products contracting the batch, losses,
/// and sums and differences of those), so that the weighted sum of the shards' values is
/// the batch's.
pub fn separable(g: &Graph) -> bool {
    if !g.updates.is_empty() {
        return false;
    }
    let n = g.nodes.len();
    // Per row (has the batch dimension); combining rows (depends on rows, has none).
    let mut rows = vec![false; n];
    let mut combined = vec![false; n];
    for (i, node) in g.nodes.iter().enumerate() {
        let depends = node.args.iter().any(|&a| rows[a] || combined[a]);
        rows[i] = node.shape.has_batch();
        if rows[i] {
            if node.args.iter().any(|&a| combined[a]) {
                return false;
            }
            continue;
        }
        combined[i] = depends;
        if !depends {
            continue;
        }
        let dep = |k: usize| node.args.get(k).is_some_and(|&a| rows[a] || combined[a]);
        let linear = match &node.op {
            Op::Loss(_)
            | Op::MatMul { .. }
            | Op::ConvGradWeight(_)
            | Op::GatherGrad
            | Op::SumTo
            | Op::Reshape => true,
            Op::Reduce { kind, .. } => matches!(kind, Reduce::Sum | Reduce::Mean),
            Op::Binary(Binary::Add | Binary::Sub) => true,
            Op::Binary(Binary::Mul) => !(dep(0) && dep(1)),
            Op::Binary(Binary::Div) => !dep(1),
            Op::Map(f) => f.elem == Elem::Neg,
            _ => false,
        };
        if !linear {
            return false;
        }
    }
    true
}

/// A model's training step split into shards.
pub struct Sharded {
    shards: usize,
    /// The forward pass and backward pass of one shard ([`gradient_graph`]).
    grads: Graph,
    /// Its roots: loss, objective, then each trainable parameter's gradient.
    roots: Vec<NodeId>,
    /// Clipping and the optimizer update ([`update_graph`]).
    update: Graph,
    /// One back end per thread computing shards, made on first use.
    workers: Vec<Mutex<Box<dyn Backend + Send>>>,
    /// The threads beside the caller's that run them.
    pool: Option<rayon::ThreadPool>,
}

/// What a shard computes: its loss, objective and gradients, each weighted by the
/// shard's share of the rows (the gradients by the gradient graph itself).
type Part = (f64, f64, Vec<ArrayD<f32>>);

impl Sharded {
    /// The step of `forward` (a training-mode forward graph) split into `shards` shards,
    /// when that is more than one and the graph is [`separable`]; `train` is the
    /// training graph whose optimizer state the split step keeps.
    pub fn new(
        forward: &Graph,
        train: &Graph,
        opt: &Optimizer,
        clip: Option<Clip>,
        shards: usize,
    ) -> Option<Sharded> {
        if shards < 2 || !separable(forward) {
            return None;
        }
        let grads = gradient_graph(forward);
        let (loss, objective) = (grads.loss?, grads.objective?);
        let update = update_graph(&grads.params, &grads.grads, opt, clip);
        if update.states != train.states {
            return None;
        }
        let mut roots = vec![loss, objective];
        roots.extend(grads.grads.iter().map(|(_, n)| *n));
        Some(Sharded {
            shards,
            grads,
            roots,
            update,
            workers: Vec::new(),
            pool: None,
        })
    }

    /// The number of shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// One training step on a batch, updating `state`: each shard's gradient on a
    /// back end of its own (`backend` or one forked from it, as many as its threads),
    /// then the update on `backend`.
    pub fn step(
        &mut self,
        backend: &mut dyn Backend,
        state: &mut State,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        hyper: &HashMap<Hyper, f64>,
    ) -> Result<StepResult, RunError> {
        let rows = batch_of(inputs);
        let bounds: Vec<(usize, usize)> = (0..self.shards)
            .map(|k| (k * rows / self.shards, (k + 1) * rows / self.shards))
            .collect();
        let threads = backend.threads().max(1);
        let parallel = threads.min(self.shards);
        if parallel > 1 && self.workers.len() != parallel {
            self.workers = (0..parallel)
                .map(|_| Mutex::new(backend.fork((threads / parallel).max(1))))
                .collect();
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(parallel - 1)
                .thread_name(|i| format!("kiln-shard-{}", i + 1))
                .build()
                .map_err(|e| RunError::bug(format!("no threads for the shards: {e}")))?;
            self.pool = Some(pool);
        }
        let (grads, roots, shards) = (&self.grads, &self.roots, self.shards);
        let read: &State = state;
        let shard = |b: &mut dyn Backend, k: usize| -> Option<Result<Part, RunError>> {
            let (lo, hi) = bounds[k];
            (hi > lo).then(|| {
                let part = |a: &ArrayD<f32>| a.slice_axis(Axis(0), Slice::from(lo..hi)).to_owned();
                let ins: Vec<_> = inputs.iter().map(part).collect();
                let tgts: Vec<_> = targets.iter().map(part).collect();
                let w = (hi - lo) as f64 / rows as f64;
                let mut h = hyper.clone();
                h.insert(Hyper::RowOffset, lo as f64);
                h.insert(Hyper::ShardWeight, w);
                let mut vals = b.evaluate(grads, read, &ins, &tgts, &h, roots)?;
                let scalar = |a: &ArrayD<f32>| a.iter().next().map_or(f64::NAN, |&v| f64::from(v));
                let (loss, objective) = (scalar(&vals[0]) * w, scalar(&vals[1]) * w);
                Ok((loss, objective, vals.split_off(2)))
            })
        };
        let mut parts: Vec<Option<Result<Part, RunError>>> = Vec::with_capacity(self.shards);
        if parallel <= 1 {
            parts.extend((0..self.shards).map(|k| shard(backend, k)));
        } else {
            // Shard k on worker k mod `parallel`, each with its share of the threads (the
            // caller's back end, with all of them, runs the update).
            let slots: Vec<Mutex<Option<Result<Part, RunError>>>> =
                (0..self.shards).map(|_| Mutex::new(None)).collect();
            let (slots_ref, shard_ref) = (&slots, &shard);
            let run = |w: usize, worker: &Mutex<Box<dyn Backend + Send>>| {
                let mut b = lock(worker);
                for k in (w..shards).step_by(parallel) {
                    *lock(&slots_ref[k]) = shard_ref(&mut **b, k);
                }
            };
            let run = &run;
            let pool = self
                .pool
                .as_ref()
                .ok_or_else(|| RunError::bug("no thread pool"))?;
            // The calling thread runs worker 0; the pool's threads the others.
            pool.in_place_scope(|s| {
                for (w, worker) in self.workers.iter().enumerate().skip(1) {
                    s.spawn(move |_| run(w, worker));
                }
                run(0, &self.workers[0]);
            });
            parts.extend(slots.into_iter().map(|m| m.into_inner().unwrap_or(None)));
        }
        let mut present = Vec::with_capacity(parts.len());
        for p in parts {
            present.push(p.transpose()?);
        }
        let (loss, objective, grads) = tree(present)
            .ok_or_else(|| RunError::input("a training step needs at least one row"))?;
        backend.update(&self.update, state, &grads, hyper)?;
        Ok(StepResult { loss, objective })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The shards' parts summed in a fixed pairwise tree: 0+1, 2+3, … then (0+1)+(2+3), …
/// (a missing part, of an empty shard, adds nothing). The same sums in the same order
/// for any number of threads (or processes holding aligned blocks of shards).
fn tree(mut parts: Vec<Option<Part>>) -> Option<Part> {
    let mut width = 1;
    while width < parts.len() {
        for i in (0..parts.len()).step_by(2 * width) {
            let Some(right) = parts.get_mut(i + width).and_then(Option::take) else {
                continue;
            };
            parts[i] = Some(match parts[i].take() {
                None => right,
                Some((l, o, mut g)) => {
                    for (a, b) in g.iter_mut().zip(&right.2) {
                        *a += b;
                    }
                    (l + right.0, o + right.1, g)
                }
            });
        }
        width *= 2;
    }
    parts.into_iter().next().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn part(v: f32) -> Option<Part> {
        Some((f64::from(v), 0.0, vec![ArrayD::from_elem(IxDyn(&[1]), v)]))
    }

    #[test]
    fn the_tree_sums_pairs_first() {
        // ((a + b) + (c + d)), not (((a + b) + c) + d): 1e8 + 1 - 1e8 + 1 differs.
        let sum = tree(vec![part(1e8), part(1.0), part(-1e8), part(1.0)]).unwrap();
        assert_eq!(sum.2[0][0], (1e8f32 + 1.0) + (-1e8f32 + 1.0));
        assert_eq!(sum.2[0][0], 0.0);
        let empty = tree(vec![part(2.0), None, None, part(3.0)]).unwrap();
        assert_eq!(empty.0, 5.0);
        assert!(tree(vec![None, None]).is_none());
    }

    #[test]
    fn steps_are_whole_unless_asked() {
        assert_eq!(shards_for(None), 1);
        assert_eq!(shards_for(Some(8)), 8);
    }
}
