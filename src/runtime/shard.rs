//! Data-parallel training steps (docs/SCALING.md): a batch split into a fixed number of
//! shards of consecutive rows, whatever the number of threads. Each shard's gradient is
//! computed on its own (in parallel, one back end per thread), weighted by its share of
//! the rows and combined with the others in a fixed pairwise tree; clipping and the
//! optimizer update then run once on the combined gradient. The result depends on the
//! batch and the number of shards, never on the number of threads that computed it.

use super::cluster::{self, Peers};
use crate::autodiff::{gradient_graph, update_graph};
use crate::exec::{copy_rows, update_roots, Backend, RunError, Slices, State, StepResult};
use crate::ir::{
    Binary, Clip, Dim, Graph, GraphData, Hyper, NodeId, Op, Optimizer, Reduce, Shape, Slot,
};
use crate::ops::Elem;
use ndarray::{ArrayD, Dimension, IxDyn};
use std::collections::HashMap;
use std::ops::Range;
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

/// Tensors of fewer elements than this are updated whole, by the first range.
const SMALL: usize = 4096;

/// The elements of a tensor of `n` that range `j` of `r` holds: the first range holds a
/// small tensor whole; a larger one is cut into `r` nearly equal ranges whose bounds are
/// multiples of 16 elements (64 bytes, a cache line).
fn range(n: usize, j: usize, r: usize) -> Range<usize> {
    let at = |j: usize| match j {
        0 => 0,
        j if j >= r || n < SMALL => n,
        j => (j * n / r) & !15,
    };
    at(j)..at(j + 1)
}

/// The number of elements of a shape without a batch dimension.
fn elements_of(shape: &Shape) -> Option<usize> {
    shape
        .dims()
        .iter()
        .try_fold(1usize, |n, d| Some(n * d.size()? as usize))
}

/// Each node's number of elements, when an update graph computes every tensor element
/// by element from the same elements of the tensors it reads, and scalars (as every
/// optimizer does, and clipping by value; clipping by norm does not): then every element
/// gets the same bits however the tensors are cut into ranges. None for a node of
/// scalars only.
fn elementwise(g: &Graph) -> Option<Vec<Option<usize>>> {
    let mut elements: Vec<Option<usize>> = Vec::with_capacity(g.nodes.len());
    for node in &g.nodes {
        let e = match node.op {
            Op::Param(_) | Op::State(_) | Op::Input(_) => Some(elements_of(&node.shape)?),
            Op::Hyper(_) | Op::Const(_) => None,
            Op::Map(_) | Op::Binary(_) => {
                let tensors: Vec<NodeId> = node
                    .args
                    .iter()
                    .copied()
                    .filter(|&a| elements[a].is_some())
                    .collect();
                if tensors.iter().any(|&a| g.nodes[a].shape != node.shape) {
                    return None;
                }
                tensors.first().and_then(|&a| elements[a])
            }
            _ => return None,
        };
        elements.push(e);
    }
    Some(elements)
}

/// Range `j` of `r` of an elementwise update graph (`elements` as [`elementwise`] gives
/// them): every parameter, state, input and tensor node flattened to its range's
/// elements; only the updates of non-empty ranges.
fn range_graph(g: &Graph, elements: &[Option<usize>], j: usize, r: usize) -> Graph {
    let flat = |n: usize| Shape::new(vec![Dim::Fixed(range(n, j, r).len() as u64)]);
    let mut data = GraphData::clone(g);
    for (node, e) in data.nodes.iter_mut().zip(elements) {
        if let Some(n) = e {
            node.shape = flat(*n);
        }
    }
    let tensors = data.params.iter_mut().map(|p| &mut p.tensor);
    for t in tensors.chain(&mut data.states).chain(&mut data.inputs) {
        t.shape = flat(elements_of(&t.shape).unwrap_or(0));
    }
    data.updates
        .retain(|(_, u)| elements[*u].is_some_and(|n| !range(n, j, r).is_empty()));
    Graph::from(data)
}

/// Each buffer cut into the `r` ranges [`range`] says: `cut(..)[j][k]` is range `j` of
/// buffer `k`.
fn cut<'a>(buffers: impl Iterator<Item = &'a mut [f32]>, r: usize) -> Vec<Vec<&'a mut [f32]>> {
    let mut out: Vec<Vec<&mut [f32]>> = (0..r).map(|_| Vec::new()).collect();
    for mut rest in buffers {
        let n = rest.len();
        for (j, ranges) in out.iter_mut().enumerate() {
            let (head, tail) = rest.split_at_mut(range(n, j, r).len());
            ranges.push(head);
            rest = tail;
        }
    }
    out
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
    /// The update's nodes' numbers of elements when it may be split into ranges of every
    /// tensor, one per worker ([`elementwise`]).
    elements: Option<Vec<Option<usize>>>,
    /// The update's graph for each range, as many as the workers.
    ranges: Vec<Graph>,
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
        let mut split = Sharded::from_graphs(grads, update, shards)?;
        split.elements = elementwise(&split.update);
        Some(split)
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
    /// [`Sharded::new`] makes them; a built library reads them back, and runs the update
    /// it compiled, whole).
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
            elements: None,
            ranges: Vec::new(),
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

    /// The shards this process computes: all of them, or its block of them.
    fn mine(&self, peers: Option<&dyn Peers>) -> Range<usize> {
        peers.map_or(0..self.shards, |p| {
            cluster::block(p.rank(), p.size(), self.shards)
        })
    }

    /// How many back ends compute this process's shards, and the ranges of the update,
    /// with `threads` threads.
    fn parallel(&self, threads: usize, peers: Option<&dyn Peers>) -> usize {
        threads.max(1).min(self.mine(peers).len())
    }

    /// Makes the update's graph for each of `parallel` ranges, when it is elementwise
    /// and there is more than one.
    fn cut_update(&mut self, parallel: usize) {
        if let Some(elements) = self.elements.as_ref().filter(|_| parallel > 1) {
            if self.ranges.len() != parallel {
                self.ranges = (0..parallel)
                    .map(|j| range_graph(&self.update, elements, j, parallel))
                    .collect();
            }
        }
    }

    /// The update's graphs for `parallel` back ends ([`Sharded::cut_update`]): one per
    /// range, or the whole update.
    fn update_graphs(&self, parallel: usize) -> &[Graph] {
        if parallel > 1 && self.ranges.len() == parallel {
            &self.ranges
        } else {
            std::slice::from_ref(&self.update)
        }
    }

    /// Compiles what a step on `backend` (in a process of `peers`) runs, running
    /// nothing: the shards' gradient graph and the update's graphs.
    pub fn prepare(
        &mut self,
        backend: &mut dyn Backend,
        peers: Option<&dyn Peers>,
    ) -> Result<(), RunError> {
        backend.prepare(&self.grads, &self.roots)?;
        let parallel = self.parallel(backend.threads(), peers);
        self.cut_update(parallel);
        for g in self.update_graphs(parallel) {
            backend.prepare(g, &update_roots(g))?;
        }
        Ok(())
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
        let mine = self.mine(peers);
        // The first row of this process's block.
        let base = mine.start * rows / shards;
        let threads = backend.threads().max(1);
        let parallel = self.parallel(threads, peers);
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
            first_error(errors)?;
        }
        self.cut_update(parallel);
        // What the update's tasks sum: every part in one process; the tree's sum across
        // processes.
        let mut parts: Vec<_> = match peers.filter(|p| p.size() > 1) {
            Some(p) => match tree(&self.parts, &self.shapes, p, &mut self.wire) {
                Some(at) => vec![lock(&self.parts[at])],
                None => Vec::new(),
            },
            None => self.parts.iter().map(lock).collect(),
        };
        let empty: Vec<bool> = parts.iter().map(|p| p.empty).collect();
        if empty.iter().all(|&e| e) {
            return Err(RunError::input("a training step needs at least one row"));
        }
        for part in &mut parts {
            part.allocate(&self.shapes);
        }
        let values = parts
            .iter_mut()
            .map(|p| contiguous(p.values.iter_mut()))
            .collect::<Result<_, _>>()?;
        let workers = (&self.workers[..], self.pool.as_ref());
        let graphs = self.update_graphs(parallel);
        update_ranges(backend, workers, graphs, state, values, &empty, hyper)?;
        // The first part holds the sum.
        for (k, part) in parts.iter_mut().enumerate() {
            part.empty = k > 0;
        }
        let (loss, objective) = parts[0].scalars();
        Ok(StepResult { loss, objective })
    }
}

/// The back ends computing shards beside the caller's, and the threads that run them.
type Workers<'a> = (
    &'a [Mutex<Box<dyn Backend + Send>>],
    Option<&'a rayon::ThreadPool>,
);

/// Sums the parts and updates the state, by ranges of every tensor ([`range`]): range
/// `j` on the caller's back end (`j = 0`) or worker `j`, all at once, each summing its
/// range of the parts ([`sum_local`]) and running `graphs[j]` on the sum. `parts[k]` is
/// part `k`'s values (loss, objective, then the update's inputs), `empty` which parts
/// have none.
fn update_ranges(
    backend: &mut dyn Backend,
    (workers, pool): Workers,
    graphs: &[Graph],
    state: &mut State,
    parts: Vec<Vec<&mut [f32]>>,
    empty: &[bool],
    hyper: &HashMap<Hyper, f64>,
) -> Result<(), RunError> {
    let r = graphs.len();
    let params = cut(contiguous(state.params.iter_mut())?.into_iter(), r);
    let states = cut(contiguous(state.states.iter_mut())?.into_iter(), r);
    let mut ranges: Vec<Vec<Vec<&mut [f32]>>> = (0..r).map(|_| Vec::new()).collect();
    for part in parts {
        for (range, values) in ranges.iter_mut().zip(cut(part.into_iter(), r)) {
            range.push(values);
        }
    }
    let mut tasks: Vec<_> = params
        .into_iter()
        .zip(states)
        .map(|(params, states)| Slices { params, states })
        .zip(ranges)
        .collect();
    let task =
        |b: &mut dyn Backend, j: usize, (slices, parts): &mut (Slices, Vec<Vec<&mut [f32]>>)| {
            sum_local(parts, empty);
            let inputs: Vec<&[f32]> = parts[0].iter().skip(2).map(|x| &**x).collect();
            b.update_slices(&graphs[j], slices, &inputs, hyper)
        };
    let mut tasks = tasks.iter_mut().enumerate();
    let Some((_, first)) = tasks.next() else {
        return Ok(());
    };
    if r == 1 {
        return task(backend, 0, first);
    }
    let pool = pool.ok_or_else(|| RunError::bug("no thread pool"))?;
    let errors: Mutex<Vec<(usize, RunError)>> = Mutex::new(Vec::new());
    let (task, errors_ref) = (&task, &errors);
    let mut result = Ok(());
    pool.in_place_scope(|s| {
        for (j, t) in tasks {
            let worker = workers
                .get(j)
                .ok_or_else(|| RunError::bug(format!("no worker for range {j}")));
            s.spawn(move |_| {
                if let Err(e) = worker.and_then(|w| task(&mut **lock(w), j, t)) {
                    lock(errors_ref).push((j, e));
                }
            });
        }
        result = task(backend, 0, first);
    });
    result?;
    first_error(errors)
}

/// Sums the parts in [`tree`]'s pairwise order when one process holds them all, in
/// place: `parts[k]` is part `k`'s values (or the same range of each of them), `empty`
/// says which parts have none. The first part ends with the sum.
fn sum_local(parts: &mut [Vec<&mut [f32]>], empty: &[bool]) {
    let mut empty = empty.to_vec();
    let mut width = 1;
    while width < parts.len() {
        for i in (0..parts.len()).step_by(2 * width) {
            let j = i + width;
            if j >= parts.len() || empty[j] {
                continue;
            }
            let (head, tail) = parts.split_at_mut(j);
            for (a, b) in head[i].iter_mut().zip(&tail[0]) {
                if empty[i] {
                    a.copy_from_slice(b);
                } else {
                    a.iter_mut().zip(b.iter()).for_each(|(x, y)| *x += *y);
                }
            }
            (empty[i], empty[j]) = (false, true);
        }
        width *= 2;
    }
}

/// The elements of each array.
fn contiguous<'a>(
    arrays: impl Iterator<Item = &'a mut ArrayD<f32>>,
) -> Result<Vec<&'a mut [f32]>, RunError> {
    arrays
        .map(|a| {
            a.as_slice_mut()
                .ok_or_else(|| RunError::bug("a tensor is not contiguous"))
        })
        .collect()
}

/// The error of the lowest-numbered task that failed.
fn first_error(errors: Mutex<Vec<(usize, RunError)>>) -> Result<(), RunError> {
    let mut errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
    errors.sort_by_key(|(k, _)| *k);
    errors.into_iter().next().map_or(Ok(()), |(_, e)| Err(e))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sums the parts in a fixed pairwise tree: 0+1, 2+3, … then (0+1)+(2+3), … (an empty
/// part adds nothing). The same sums in the same order for any number of threads (one
/// process: [`sum_local`]), or of processes each holding an aligned block of the parts
/// (`peers`): a pair held by two processes is summed by the left one's, which receives
/// the right one's part. Every process ends with the sum (process 0 broadcasts it);
/// returns which part holds it (None when all are empty). The loss and objective are
/// summed as the gradients are.
fn tree(
    parts: &[Mutex<Part>],
    shapes: &[IxDyn],
    peers: &dyn Peers,
    wire: &mut Vec<f32>,
) -> Option<usize> {
    let (me, size) = (peers.rank(), peers.size());
    let own = |k: usize| cluster::owner(k, size, parts.len());
    let (mut width, mut level) = (1, 0u16);
    while width < parts.len() {
        for i in (0..parts.len()).step_by(2 * width) {
            let j = i + width;
            if j >= parts.len() {
                continue;
            }
            match (own(i) == me, own(j) == me) {
                (true, true) => {
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
                (false, true) => {
                    lock(&parts[j]).pack(wire, shapes);
                    peers.send(own(i), level, wire);
                }
                (true, false) => {
                    wire.resize(Part::wire_len(shapes), 0.0);
                    peers.receive(own(j), level, wire);
                    lock(&parts[i]).add_wire(wire, shapes);
                }
                (false, false) => {}
            }
        }
        width *= 2;
        level += 1;
    }
    let mut at = 0;
    if me == 0 {
        lock(&parts[0]).pack(wire, shapes);
    } else {
        wire.resize(Part::wire_len(shapes), 0.0);
        at = cluster::block(me, size, parts.len()).start;
    }
    peers.broadcast(wire);
    if me != 0 {
        let mut sum = lock(&parts[at]);
        sum.empty = true;
        sum.add_wire(wire, shapes);
    }
    (!lock(&parts[at]).empty).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(values: &[Option<f32>]) -> Option<f32> {
        let mut buffers: Vec<[f32; 1]> = values.iter().map(|v| [v.unwrap_or(0.0)]).collect();
        let empty: Vec<bool> = values.iter().map(Option::is_none).collect();
        let mut parts: Vec<Vec<&mut [f32]>> =
            buffers.iter_mut().map(|b| vec![&mut b[..]]).collect();
        sum_local(&mut parts, &empty);
        (!empty.iter().all(|&e| e)).then_some(parts[0][0][0])
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
    fn ranges_cut_every_tensor_once_on_cache_lines() {
        for n in [0, 1, 17, 4095, 4096, 4097, 10_000, 123_457] {
            for r in 1..=5 {
                let ranges: Vec<_> = (0..r).map(|j| range(n, j, r)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[r - 1].end, n);
                for pair in ranges.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start, "{n} in {r}: {ranges:?}");
                    assert_eq!(pair[0].end % 16, usize::from(n < SMALL) * n % 16);
                }
                if n < SMALL {
                    assert_eq!(ranges[0], 0..n);
                } else {
                    // Nearly equal: within a cache line of n / r.
                    assert!(ranges.iter().all(|x| x.len().abs_diff(n / r) < 16 + r));
                }
            }
        }
        let mut a: Vec<f32> = (0..5000).map(|i| i as f32).collect();
        let mut b = [7.0; 3];
        let cuts = cut([&mut a[..], &mut b[..]].into_iter(), 2);
        assert_eq!(cuts[0][0].len(), 2496);
        assert_eq!((cuts[1][0][0], cuts[1][0].len()), (2496.0, 2504));
        assert_eq!((cuts[0][1].len(), cuts[1][1].len()), (3, 0));
    }

    #[test]
    fn updates_are_elementwise_unless_clipped_by_norm() {
        let f = |n: u64| crate::ir::Dim::Fixed(n);
        let param = |name: &str, dims: Vec<Dim>| crate::ir::Param {
            tensor: crate::ir::Tensor {
                name: name.into(),
                shape: Shape::new(dims),
                dtype: crate::ir::DType::F32,
            },
            trainable: true,
        };
        let params = [param("w", vec![f(64), f(100)]), param("b", vec![f(100)])];
        let adam = Optimizer::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            decoupled: false,
        };
        let update = |clip| update_graph(&params, &[(0, 0), (1, 0)], &[], &adam, clip);
        assert!(elementwise(&update(Some(Clip::Norm(1.0)))).is_none());
        for clip in [None, Some(Clip::Value(1.0))] {
            let g = update(clip);
            let elements = elementwise(&g).expect("elementwise");
            for (node, e) in g.nodes.iter().zip(&elements) {
                assert_eq!(e.is_some(), node.shape.rank() > 0, "{node:?}");
            }
            // The first range of two holds half of w and all of b; the second the rest
            // of w: every state and update but b's.
            let (a, b) = (
                range_graph(&g, &elements, 0, 2),
                range_graph(&g, &elements, 1, 2),
            );
            assert_eq!(a.updates.len(), g.updates.len());
            assert_eq!(b.updates.len(), g.updates.len() / 2);
            assert_eq!(a.params[0].tensor.shape.dims(), &[f(3200)]);
            assert_eq!(b.states[0].shape.dims(), &[f(3200)]);
            assert_eq!(b.params[1].tensor.shape.dims(), &[f(0)]);
        }
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
