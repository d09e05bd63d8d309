//! Batched evaluation split by rows across threads (docs/SCALING.md): when every root's
//! row depends on that row of the inputs alone (inference), a batch of at least
//! `2 · ROWS` rows is cut into consecutive blocks, one per thread, each evaluated by a
//! back end of its own sharing the compiled code, and the blocks' values written into
//! their rows of the outputs. A row's values are computed by the same kernels in the
//! same order whatever block holds it, so the results are the same for any thread count.

use super::{Entry, Jit};
use crate::exec::{batch_of, copy_rows, Backend, RunError, State};
use crate::interp::dims;
use crate::ir::{Graph, Hyper, NodeId, Op};
use ndarray::{ArrayD, IxDyn};
use std::collections::HashMap;
use std::sync::Mutex;

/// The fewest rows a thread's block holds.
const ROWS: usize = 16;

/// The back ends of the blocks and their reused rows.
#[derive(Default)]
pub(super) struct Workers {
    blocks: Vec<Block>,
}

/// One block's back end, inputs and targets.
struct Block {
    jit: Jit,
    inputs: Vec<ArrayD<f32>>,
    targets: Vec<ArrayD<f32>>,
}

/// Whether every root of `roots` has the batch dimension and its rows depend each on
/// the same row of the inputs alone: no value they need combines rows (a loss, a batch
/// statistic) or draws noise (whose stream follows the row's place in the batch).
pub fn rows_independent(g: &Graph, roots: &[NodeId]) -> bool {
    if roots.iter().any(|&r| !g.nodes[r].shape.has_batch()) {
        return false;
    }
    let mut needed = vec![false; g.nodes.len()];
    for &r in roots {
        needed[r] = true;
    }
    // Depends on rows: has the batch dimension or is computed from a value that has.
    let mut rows = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        rows[i] = n.shape.has_batch() || n.args.iter().any(|&a| rows[a]);
    }
    for i in (0..g.nodes.len()).rev() {
        if !needed[i] {
            continue;
        }
        let n = &g.nodes[i];
        if matches!(n.op, Op::Noise { .. }) || (rows[i] && !n.shape.has_batch()) {
            return false;
        }
        for &a in &n.args {
            needed[a] = true;
        }
    }
    true
}

impl Jit {
    /// Into how many blocks [`Jit::evaluate_rows`] cuts a batch of `roots` of `g`: one
    /// (no split) with one thread, a small batch, or rows that depend on each other.
    pub(super) fn row_blocks(&self, g: &Graph, roots: &[NodeId], batch: usize) -> usize {
        if self.threads < 2 || batch < 2 * ROWS || !rows_independent(g, roots) {
            return 1;
        }
        self.threads.min(batch / ROWS)
    }

    /// `roots` of `g` for a batch cut into `blocks` blocks of consecutive rows (rows
    /// ⌊kN/B⌋ to ⌊(k+1)N/B⌋), evaluated in parallel, written into `outputs` (each its
    /// root's size for the whole batch).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn evaluate_rows(
        &mut self,
        blocks: usize,
        g: &Graph,
        state: &State,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        hyper: &HashMap<Hyper, f64>,
        roots: &[NodeId],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), RunError> {
        let batch = batch_of(inputs);
        // Compiled here once; every block's back end runs the same code.
        self.entry(g, roots, batch)?;
        let entry = self
            .cache
            .iter()
            .find(|e| e.key == g.id() && e.roots == roots)
            .cloned()
            .ok_or_else(|| RunError::bug("an entry just compiled is missing"))?;
        let mut w = std::mem::take(&mut self.workers);
        while w.blocks.len() < blocks {
            w.blocks.push(Block {
                jit: Jit::with_threads(1),
                inputs: Vec::new(),
                targets: Vec::new(),
            });
        }
        // Each block's rows of every output.
        let bounds: Vec<(usize, usize)> = (0..blocks)
            .map(|k| (k * batch / blocks, (k + 1) * batch / blocks))
            .collect();
        let mut parts: Vec<Vec<&mut [f32]>> = (0..blocks).map(|_| Vec::new()).collect();
        for out in outputs.iter_mut() {
            let width = out.len() / batch.max(1);
            let mut rest: &mut [f32] = out;
            for (k, &(lo, hi)) in bounds.iter().enumerate() {
                let (part, tail) = std::mem::take(&mut rest).split_at_mut((hi - lo) * width);
                parts[k].push(part);
                rest = tail;
            }
        }
        let results: Vec<Mutex<Result<(), RunError>>> = (0..blocks)
            .map(|_| Mutex::new(Err(RunError::bug("a block did not run"))))
            .collect();
        rayon::in_place_scope(|s| {
            let jobs = w.blocks.iter_mut().zip(parts).zip(&bounds).zip(&results);
            for (((b, mut outs), &(lo, hi)), result) in jobs {
                share(&mut b.jit, &entry);
                s.spawn(move |_| {
                    copy_rows(&mut b.inputs, inputs, lo, hi);
                    copy_rows(&mut b.targets, targets, lo, hi);
                    let r = b
                        .jit
                        .evaluate_into(g, state, &b.inputs, &b.targets, hyper, roots, &mut outs);
                    *result.lock().unwrap_or_else(|e| e.into_inner()) = r;
                });
            }
        });
        self.workers = w;
        results
            .into_iter()
            .try_for_each(|r| r.into_inner().unwrap_or_else(|e| e.into_inner()))
    }

    /// [`Jit::evaluate_rows`] into new arrays.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn evaluate_rows_owned(
        &mut self,
        blocks: usize,
        g: &Graph,
        state: &State,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        hyper: &HashMap<Hyper, f64>,
        roots: &[NodeId],
    ) -> Result<Vec<ArrayD<f32>>, RunError> {
        let batch = batch_of(inputs);
        let mut vals: Vec<ArrayD<f32>> = roots
            .iter()
            .map(|&r| ArrayD::zeros(IxDyn(&dims(&g.nodes[r].shape, batch))))
            .collect();
        let mut outs: Vec<&mut [f32]> = Vec::with_capacity(vals.len());
        for v in &mut vals {
            outs.push(
                v.as_slice_mut()
                    .ok_or_else(|| RunError::bug("a new array is not contiguous"))?,
            );
        }
        self.evaluate_rows(blocks, g, state, inputs, targets, hyper, roots, &mut outs)?;
        Ok(vals)
    }
}

/// Gives `jit` the compiled `entry` unless it has it already.
fn share(jit: &mut Jit, entry: &Entry) {
    if !jit
        .cache
        .iter()
        .any(|e| e.key == entry.key && e.roots == entry.roots)
    {
        jit.cache.push(entry.clone());
    }
}
