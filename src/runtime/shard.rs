//! Data-parallel training steps (docs/SCALING.md): a batch split into a fixed number of
//! shards of consecutive rows, whatever the number of threads. Each shard's gradient is
//! computed on its own (in parallel, one back end per thread), weighted by its share of
//! the rows and combined with the others in a fixed pairwise tree; clipping and the
//! optimizer update then run once on the combined gradient. The result depends on the
//! batch and the number of shards, never on the number of threads that computed it.

use super::cluster::{self, Peers};
use crate::autodiff::{gradient_graph, update_graph};
use crate::exec::{copy_rows, Backend, RunError, State, StepResult};
use crate::ir::{Binary, Clip, Graph, Hyper, NodeId, Op, Optimizer, Reduce, Slot};
use crate::ops::Elem;
use ndarray::{ArrayD, Dimension, IxDyn};
use std::collections::HashMap;
use std::sync::Mutex;

/// The shards of a batch of this many rows or more when the run does not say: two
/// shards of at least 16 rows (docs/SCALING.md).
const AUTO_ROWS: u64 = 32;

/// The same for a model with batch statistics, which each shard computes on its own
/// rows: two shards of at least 64 rows.
const AUTO_ROWS_STATISTICS: u64 = 128;

/// The number of shards a step of batch `batch` is split into: `requested` (a power of
/// two), or two for a batch of [`AUTO_ROWS`] rows or more ([`AUTO_ROWS_STATISTICS`] when
/// the model has batch `statistics`), else one.
pub fn shards_for(requested: Option<u64>, batch: u64, statistics: bool) -> usize {
    let auto = if statistics {
        AUTO_ROWS_STATISTICS
    } else {
        AUTO_ROWS
    };
    match requested {
        Some(s) => s.max(1) as usize,
        None if batch >= auto => 2,
        None => 1,
    }
}

/// Whether a graph computes batch statistics (batch normalization's, in training).
pub fn has_statistics(g: &Graph) -> bool {
    g.nodes.iter().any(|n| matches!(n.op, Op::BatchStats))
}

/// Values that combine a shard's rows and that its per-row values use: batch
/// normalization's statistics and the sums of its backward pass, each shard's own (as
/// every replica's in PyTorch's DistributedDataParallel).
fn per_shard(op: &Op) -> bool {
    matches!(op, Op::BatchStats | Op::BatchNormSums { .. })
}

/// Whether a training-mode forward graph's step can be split by rows: no value that
/// combines rows flows back into per-row values but the shard's own batch statistics
/// ([`per_shard`]), only parameters are updated but by gradients (batch normalization's
/// running statistics, averaged over the shards), and every value that combines rows
/// does so linearly (sums, means, products contracting the batch, losses, and sums and
/// differences of those), so that the weighted sum of the shards' values is the batch's.
pub fn separable(g: &Graph) -> bool {
    if g.updates
        .iter()
        .any(|(slot, _)| !matches!(slot, Slot::Param(_)))
    {
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
            if node
                .args
                .iter()
                .any(|&a| combined[a] && !per_shard(&g.nodes[a].op))
            {
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
            | Op::Reshape
            | Op::Slice { .. }
            | Op::BatchStats
            | Op::BatchNormSums { .. } => true,
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
    /// A part as it travels between processes ([`Part::pack`]).
    wire: Vec<f32>,
    /// How many values at the end of a part are averaged, not gradients.
    averaged: usize,
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
    /// Makes its value buffers (zeros) when it has none.
    fn allocate(&mut self, shapes: &[IxDyn]) {
        if self.values.is_empty() {
            self.values = shapes.iter().cloned().map(ArrayD::zeros).collect();
        }
    }

    /// The length of a part on the wire: a flag (1: it has rows), then its values.
    fn wire_len(shapes: &[IxDyn]) -> usize {
        1 + shapes.iter().map(|s| s.size()).sum::<usize>()
    }

    /// Writes the part into `wire` as [`Part::wire_len`] describes.
    fn pack(&self, wire: &mut Vec<f32>, shapes: &[IxDyn]) {
        wire.clear();
        wire.push(if self.empty { 0.0 } else { 1.0 });
        if self.empty {
            wire.resize(Part::wire_len(shapes), 0.0);
            return;
        }
        for v in &self.values {
            wire.extend(v.iter());
        }
    }

    /// Adds a part read from `wire` (as [`Part::pack`] wrote it) to this one.
    fn add_wire(&mut self, wire: &[f32], shapes: &[IxDyn]) {
        if wire.first() != Some(&1.0) {
            return;
        }
        let was_empty = self.empty;
        self.allocate(shapes);
        self.empty = false;
        let mut at = 1;
        for v in &mut self.values {
            let n = v.len();
            let from = &wire[at..at + n];
            for (a, &b) in v.iter_mut().zip(from) {
                *a = if was_empty { b } else { *a + b };
            }
            at += n;
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
        let averaged: Vec<_> = grads
            .averaged
            .iter()
            .map(|&(slot, n)| (slot, grads.nodes[n].shape.clone()))
            .collect();
        let update = update_graph(&grads.params, &grads.grads, &averaged, opt, clip);
        if update.states != train.states {
            return None;
        }
        Sharded::from_graphs(grads, update, shards)
    }

    /// The roots a shard computes of a gradient graph: loss, objective, each trainable
    /// parameter's gradient, then the values it averages.
    pub fn roots(grads: &Graph) -> Option<Vec<NodeId>> {
        let mut roots = vec![grads.loss?, grads.objective?];
        roots.extend(grads.grads.iter().map(|(_, n)| *n));
        roots.extend(grads.averaged.iter().map(|(_, n)| *n));
        Some(roots)
    }

    /// A step split into `shards` shards from its gradient graph and update graph (as
    /// [`Sharded::new`] makes them; a built library reads them back).
    pub fn from_graphs(grads: Graph, update: Graph, shards: usize) -> Option<Sharded> {
        let roots = Sharded::roots(&grads)?;
        // The shapes of each shard's loss, objective, gradients and averaged values.
        let shapes = [IxDyn(&[]), IxDyn(&[])]
            .into_iter()
            .chain(
                grads
                    .grads
                    .iter()
                    .map(|(p, _)| IxDyn(&crate::interp::dims(&grads.params[*p].tensor.shape, 1))),
            )
            .chain(
                grads
                    .averaged
                    .iter()
                    .map(|(_, n)| IxDyn(&crate::interp::dims(&grads.nodes[*n].shape, 1))),
            )
            .collect();
        let averaged = grads.averaged.len();
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
            wire: Vec::new(),
            averaged,
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
    /// itself with one thread), then the update on `backend`. With `peers`, this
    /// process computes only its block of the shards ([`cluster::block`]): `inputs` and
    /// `targets` hold that block's rows of a batch of `rows` rows, and the blocks' sums
    /// meet up the same tree.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        backend: &mut dyn Backend,
        state: &mut State,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        rows: usize,
        hyper: &HashMap<Hyper, f64>,
        peers: Option<&dyn Peers>,
    ) -> Result<StepResult, RunError> {
        let shards = self.shards;
        let mine = peers.map_or(0..shards, |p| cluster::block(p.rank(), p.size(), shards));
        // The first row of this process's block.
        let base = mine.start * rows / shards;
        let threads = backend.threads().max(1);
        let parallel = threads.min(mine.len());
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
        let averaged = self.averaged;
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
            part.allocate(shapes);
            copy_rows(&mut part.inputs, inputs, lo - base, hi - base);
            copy_rows(&mut part.targets, targets, lo - base, hi - base);
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
            // The loss and objective are the shard's means, and the averaged values its
            // own: weighted here.
            let n = part.values.len();
            for (k, v) in part.values.iter_mut().enumerate() {
                if k < 2 || k >= n - averaged {
                    v.mapv_inplace(|x| (f64::from(x) * w) as f32);
                }
            }
            Ok(())
        };
        if parallel <= 1 {
            for k in mine.clone() {
                shard(backend, k)?;
            }
        } else {
            // Shard k on worker k mod `parallel`, each with its share of the threads (the
            // caller's back end, with all of them, runs the update).
            let errors: Mutex<Vec<(usize, RunError)>> = Mutex::new(Vec::new());
            let (errors_ref, shard_ref, mine_ref) = (&errors, &shard, &mine);
            let run = |w: usize, worker: &Mutex<Box<dyn Backend + Send>>| {
                let mut b = lock(worker);
                for k in mine_ref.clone().skip(w).step_by(parallel) {
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
        let at = tree(&self.parts, &self.shapes, peers, &mut self.wire)
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
/// part adds nothing). The same sums in the same order for any number of threads, or of
/// processes each holding an aligned block of the parts (`peers`): a pair held by two
/// processes is summed by the left one's, which receives the right one's part. Every
/// process ends with the sum (process 0 broadcasts it); returns which part holds it
/// (None when all are empty). The loss and objective are summed as the gradients are.
fn tree(
    parts: &[Mutex<Part>],
    shapes: &[IxDyn],
    peers: Option<&dyn Peers>,
    wire: &mut Vec<f32>,
) -> Option<usize> {
    let (me, size) = peers.map_or((0, 1), |p| (p.rank(), p.size()));
    let own = |k: usize| cluster::owner(k, size, parts.len());
    let (mut width, mut level) = (1, 0u16);
    while width < parts.len() {
        for i in (0..parts.len()).step_by(2 * width) {
            let j = i + width;
            if j >= parts.len() {
                continue;
            }
            match (peers, own(i) == me, own(j) == me) {
                (_, true, true) => {
                    let (mut left, mut right) = (lock(&parts[i]), lock(&parts[j]));
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
                (Some(p), false, true) => {
                    lock(&parts[j]).pack(wire, shapes);
                    p.send(own(i), level, wire);
                }
                (Some(p), true, false) => {
                    wire.resize(Part::wire_len(shapes), 0.0);
                    p.receive(own(j), level, wire);
                    lock(&parts[i]).add_wire(wire, shapes);
                }
                _ => {}
            }
        }
        width *= 2;
        level += 1;
    }
    let mut at = 0;
    if let Some(p) = peers.filter(|p| p.size() > 1) {
        if me == 0 {
            lock(&parts[0]).pack(wire, shapes);
        } else {
            wire.resize(Part::wire_len(shapes), 0.0);
            at = cluster::block(me, size, parts.len()).start;
        }
        p.broadcast(wire);
        if me != 0 {
            let mut sum = lock(&parts[at]);
            sum.empty = true;
            sum.add_wire(wire, shapes);
        }
    }
    (!lock(&parts[at]).empty).then_some(at)
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
        tree(&parts, &[IxDyn(&[1])], None, &mut Vec::new()).map(|at| lock(&parts[at]).values[0][0])
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
    fn automatic_shards_need_sixteen_rows_each_or_sixty_four_with_statistics() {
        assert_eq!(shards_for(None, 31, false), 1);
        assert_eq!(shards_for(None, 32, false), 2);
        assert_eq!(shards_for(Some(8), 32, false), 8);
        assert_eq!(shards_for(Some(1), 128, false), 1);
        // Batch statistics want 64 rows a shard.
        assert_eq!(shards_for(None, 127, true), 1);
        assert_eq!(shards_for(None, 128, true), 2);
        assert_eq!(shards_for(Some(4), 32, true), 4);
    }
}
