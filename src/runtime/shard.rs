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
use ndarray::{ArrayD, Axis, IxDyn, Slice};
use std::collections::HashMap;
use std::sync::Mutex;

/// The shards of a batch of this many rows or more when the run does not say: two
/// shards of at least 16 rows (docs/SCALING.md).
const AUTO_ROWS: u64 = 32;

/// The number of shards a step of batch `batch` is split into: `requested` (a power of
/// two), or two for a batch of [`AUTO_ROWS`] rows or more, else one.
pub fn shards_for(requested: Option<u64>, batch: u64) -> usize {
    match requested {
        Some(s) => s.max(1) as usize,
        None if batch >= AUTO_ROWS => 2,
        None => 1,
    }
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
    /// Each shard's rows and results, reused from step to step (allocated by its first
    /// step: a run that never steps, as `kiln build`'s, allocates nothing).
    parts: Vec<Mutex<Part>>,
    /// The shapes of a part's `values`.
    shapes: Vec<IxDyn>,
}

/// One shard's rows and what it computes: its loss, objective and gradients, each
/// weighted by the shard's share of the rows (the gradients by the gradient graph
/// itself). Empty when the shard has no rows.
#[derive(Default)]
struct Part {
    inputs: Vec<ArrayD<f32>>,
    targets: Vec<ArrayD<f32>>,
    /// Loss and objective (one value each), then the gradients.
    values: Vec<ArrayD<f32>>,
    empty: bool,
}

impl Part {
    /// Copies rows `lo..hi` of `from` into `to`, reusing its arrays when they fit.
    fn rows(to: &mut Vec<ArrayD<f32>>, from: &[ArrayD<f32>], lo: usize, hi: usize) {
        to.truncate(from.len());
        for (k, a) in from.iter().enumerate() {
            let rows = a.slice_axis(Axis(0), Slice::from(lo..hi));
            match to.get_mut(k) {
                Some(t) if t.shape() == rows.shape() => t.assign(&rows),
                Some(t) => *t = rows.to_owned(),
                None => to.push(rows.to_owned()),
            }
        }
    }

    /// The weighted loss and objective.
    fn scalars(&self) -> (f64, f64) {
        let v = |k: usize| {
            self.values
                .get(k)
                .and_then(|a| a.iter().next())
                .map_or(f64::NAN, |&x| f64::from(x))
        };
        (v(0), v(1))
    }
}

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
        let update = update_graph(&grads.params, &grads.grads, opt, clip);
        if update.states != train.states {
            return None;
        }
        Sharded::from_graphs(grads, update, shards)
    }

    /// The roots a shard computes of a gradient graph: loss, objective, then each
    /// trainable parameter's gradient.
    pub fn roots(grads: &Graph) -> Option<Vec<NodeId>> {
        let mut roots = vec![grads.loss?, grads.objective?];
        roots.extend(grads.grads.iter().map(|(_, n)| *n));
        Some(roots)
    }

    /// A step split into `shards` shards from its gradient graph and update graph (as
    /// [`Sharded::new`] makes them; a built library reads them back).
    pub fn from_graphs(grads: Graph, update: Graph, shards: usize) -> Option<Sharded> {
        let roots = Sharded::roots(&grads)?;
        // The shapes of each shard's loss, objective and gradients.
        let shapes = [IxDyn(&[]), IxDyn(&[])]
            .into_iter()
            .chain(
                grads
                    .grads
                    .iter()
                    .map(|(p, _)| IxDyn(&crate::interp::dims(&grads.params[*p].tensor.shape, 1))),
            )
            .collect();
        let parts = (0..shards).map(|_| Mutex::new(Part::default())).collect();
        Some(Sharded {
            shapes,
            shards,
            grads,
            roots,
            update,
            workers: Vec::new(),
            pool: None,
            parts,
        })
    }

    /// The number of shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The gradient graph and the update graph.
    pub fn graphs(&self) -> (&Graph, &Graph) {
        (&self.grads, &self.update)
    }

    /// One training step on a batch, updating `state`: each shard's gradient on a
    /// back end of its own (forked from `backend`, as many as its threads, or `backend`
    /// itself with one thread), then the update on `backend`.
    pub fn step(
        &mut self,
        backend: &mut dyn Backend,
        state: &mut State,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        hyper: &HashMap<Hyper, f64>,
    ) -> Result<StepResult, RunError> {
        let (rows, shards) = (batch_of(inputs), self.shards);
        let threads = backend.threads().max(1);
        let parallel = threads.min(shards);
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
        let (grads, roots, parts, shapes) = (&self.grads, &self.roots, &self.parts, &self.shapes);
        let read: &State = state;
        // Shard k: rows ⌊kN/S⌋ to ⌊(k+1)N/S⌋.
        let shard = |b: &mut dyn Backend, k: usize| -> Result<(), RunError> {
            let (lo, hi) = (k * rows / shards, (k + 1) * rows / shards);
            let mut part = lock(&parts[k]);
            let part = &mut *part;
            part.empty = hi == lo;
            if part.empty {
                return Ok(());
            }
            if part.values.is_empty() {
                part.values = shapes.iter().cloned().map(ArrayD::zeros).collect();
            }
            Part::rows(&mut part.inputs, inputs, lo, hi);
            Part::rows(&mut part.targets, targets, lo, hi);
            let w = (hi - lo) as f64 / rows as f64;
            let mut h = hyper.clone();
            h.insert(Hyper::RowOffset, lo as f64);
            h.insert(Hyper::ShardWeight, w);
            let mut outs: Vec<&mut [f32]> = Vec::with_capacity(part.values.len());
            for v in &mut part.values {
                outs.push(
                    v.as_slice_mut()
                        .ok_or_else(|| RunError::bug("a part's buffer"))?,
                );
            }
            b.evaluate_into(
                grads,
                read,
                &part.inputs,
                &part.targets,
                &h,
                roots,
                &mut outs,
            )?;
            // The loss and objective are the shard's means: weighted here.
            for v in part.values.iter_mut().take(2) {
                v.mapv_inplace(|x| (f64::from(x) * w) as f32);
            }
            Ok(())
        };
        if parallel <= 1 {
            for k in 0..shards {
                shard(backend, k)?;
            }
        } else {
            // Shard k on worker k mod `parallel`, each with its share of the threads (the
            // caller's back end, with all of them, runs the update).
            let errors: Mutex<Vec<(usize, RunError)>> = Mutex::new(Vec::new());
            let (errors_ref, shard_ref) = (&errors, &shard);
            let run = |w: usize, worker: &Mutex<Box<dyn Backend + Send>>| {
                let mut b = lock(worker);
                for k in (w..shards).step_by(parallel) {
                    if let Err(e) = shard_ref(&mut **b, k) {
                        lock(errors_ref).push((k, e));
                    }
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
            let mut errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
            errors.sort_by_key(|(k, _)| *k);
            if let Some((_, e)) = errors.into_iter().next() {
                return Err(e);
            }
        }
        let at = tree(&self.parts)
            .ok_or_else(|| RunError::input("a training step needs at least one row"))?;
        let sum = lock(&self.parts[at]);
        let (loss, objective) = sum.scalars();
        backend.update(&self.update, state, &sum.values[2..], hyper)?;
        Ok(StepResult { loss, objective })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sums the parts in a fixed pairwise tree: 0+1, 2+3, … then (0+1)+(2+3), … (an empty
/// part adds nothing); returns which part holds the sum (None when all are empty). The
/// same sums in the same order for any number of threads (or processes holding aligned
/// blocks of shards). The loss and objective are summed as the gradients are.
fn tree(parts: &[Mutex<Part>]) -> Option<usize> {
    let mut width = 1;
    while width < parts.len() {
        for i in (0..parts.len()).step_by(2 * width) {
            let Some(r) = parts.get(i + width) else {
                continue;
            };
            let (mut left, mut right) = (lock(&parts[i]), lock(r));
            if right.empty {
                continue;
            }
            if left.empty {
                std::mem::swap(&mut *left, &mut *right);
                right.empty = true;
                continue;
            }
            for (a, b) in left.values.iter_mut().zip(&right.values) {
                *a += b;
            }
        }
        width *= 2;
    }
    (!lock(&parts[0]).empty).then_some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(v: Option<f32>) -> Mutex<Part> {
        Mutex::new(Part {
            values: vec![ArrayD::from_elem(IxDyn(&[1]), v.unwrap_or(0.0))],
            empty: v.is_none(),
            ..Part::default()
        })
    }

    fn sum(values: &[Option<f32>]) -> Option<f32> {
        let parts: Vec<_> = values.iter().map(|&v| part(v)).collect();
        tree(&parts).map(|at| lock(&parts[at]).values[0][0])
    }

    #[test]
    fn the_tree_sums_pairs_first() {
        // ((a + b) + (c + d)), not (((a + b) + c) + d): they differ here.
        let got = sum(&[Some(1e8), Some(1.0), Some(-1e8), Some(1.0)]);
        assert_eq!(got, Some((1e8f32 + 1.0) + (-1e8f32 + 1.0)));
        assert_ne!(got, Some(((1e8f32 + 1.0) + -1e8f32) + 1.0));
        assert_eq!(sum(&[None, Some(2.0), None, Some(3.0)]), Some(5.0));
        assert_eq!(sum(&[None, None]), None);
    }

    #[test]
    fn automatic_shards_need_sixteen_rows_each() {
        assert_eq!(shards_for(None, 31), 1);
        assert_eq!(shards_for(None, 32), 2);
        assert_eq!(shards_for(Some(8), 32), 8);
        assert_eq!(shards_for(Some(1), 128), 1);
    }
}
