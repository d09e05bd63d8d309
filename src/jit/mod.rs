//! The Cranelift JIT backend (the only module that names Cranelift): a graph and the nodes
//! a call needs become one native function, compiled once and called for every batch of
//! any size. `plan` decides what is fused, `emit` writes the code, `kernel` holds the
//! operations the code calls (over `conv`, `pool`, `layers`, `movement` and
//! `recurrent`), `abi` is the boundary and `gemm` the matrix-product dispatch (the only
//! two modules allowed `unsafe`).

#[allow(unsafe_code)]
mod abi;
mod conv;
mod emit;
#[allow(unsafe_code)]
mod gemm;
mod kernel;
mod layers;
mod movement;
pub mod object;
pub use rows::rows_independent;
pub mod plan;
mod pool;
mod recurrent;
mod rows;

pub use abi::{kiln_kernel, kiln_prim, Ctx, Precompiled};

use crate::exec::{
    batch_of, gradient_roots, scalar, step_roots, update_roots, write_back, Backend, LossAndGrads,
    RunError, Slices, State, StepResult,
};
use crate::interp::dims;
use crate::ir::{Dim, Graph, GraphId, Hyper, NodeId, Op, Slot};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use plan::{Kind, Plan};
use smallvec::SmallVec;
use std::collections::HashMap;
use std::sync::Arc;

/// What a call is given: inputs, targets, hyperparameters, the roots wanted, the batch
/// size.
type Call<'a> = (
    &'a [ArrayViewD<'a, f32>],
    &'a [ArrayViewD<'a, f32>],
    &'a HashMap<Hyper, f64>,
    &'a [NodeId],
    usize,
);

/// A compiled entry point.
#[derive(Clone)]
struct Entry {
    /// The graph's id and the roots: what this entry was compiled for.
    key: GraphId,
    plan: Plan,
    /// The code, shared by the back ends forked from the one that compiled it.
    code: Arc<emit::Compiled>,
    roots: Vec<NodeId>,
    /// Buffer layouts by batch size (a few; searched in order).
    layouts: Vec<(usize, Layout)>,
    /// Updates written straight into the parameter or state they update.
    inplace: Vec<(NodeId, Slot)>,
    /// Where each node's buffer comes from in a call.
    sources: Vec<Source>,
    /// The scalar nodes the caller writes into the arena before a call.
    scalars: Vec<NodeId>,
}

impl Entry {
    /// The entry point computing `roots` of `g` with `code`, compiled as `plan` says.
    fn new(g: &Graph, roots: &[NodeId], plan: Plan, code: emit::Compiled) -> Entry {
        let inplace = inplace_updates(g, &plan, roots);
        let sources = sources(g, &plan, &inplace);
        let scalars = (0..g.nodes.len())
            .filter(|&i| is_scalar(g, &plan, i))
            .collect();
        Entry {
            key: g.id(),
            plan,
            code: Arc::new(code),
            roots: roots.to_vec(),
            layouts: Vec::new(),
            inplace,
            sources,
            scalars,
        }
    }
}

/// Where a node's buffer comes from in a call (decided once per entry point).
#[derive(Clone, Copy, PartialEq)]
enum Source {
    /// No buffer: the node is not computed.
    Nothing,
    /// The arena, at the layout's offset: computed values, and the scalars the caller
    /// writes there (hyperparameters, the batch size, constants; see [`Layout::new`]).
    Arena,
    Input(usize),
    Target(usize),
    /// A parameter or state: read, or updated in place.
    Slot(Slot),
    /// The buffer of another node (a reshape's source).
    Alias(NodeId),
}

/// Whether node `i` is a scalar the caller writes into the arena (a hyperparameter, the
/// batch size, or a constant the generated code does not inline).
fn is_scalar(g: &Graph, plan: &Plan, i: NodeId) -> bool {
    matches!(
        (plan.kinds[i], &g.nodes[i].op),
        (
            Kind::External | Kind::Const,
            Op::Hyper(_) | Op::BatchSize | Op::Const(_)
        )
    )
}

/// Decides each node's [`Source`].
fn sources(g: &Graph, plan: &Plan, inplace: &[(NodeId, Slot)]) -> Vec<Source> {
    g.nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if let Some((_, slot)) = inplace.iter().find(|(u, _)| *u == i) {
                return Source::Slot(*slot);
            }
            match (plan.kinds[i], &n.op) {
                (Kind::Dead, _) => Source::Nothing,
                (_, Op::Input(k)) => Source::Input(*k),
                (_, Op::Target(k)) => Source::Target(*k),
                (_, Op::Param(k)) => Source::Slot(Slot::Param(*k)),
                (_, Op::State(k)) => Source::Slot(Slot::State(*k)),
                (Kind::Alias, _) => Source::Alias(n.args[0]),
                _ if plan.owns_buffer(i) || is_scalar(g, plan, i) => Source::Arena,
                _ => Source::Nothing,
            }
        })
        .collect()
}

/// Where each node's values live for one batch size.
#[derive(Clone)]
struct Layout {
    /// Dimensions of every node.
    dims: Vec<Vec<usize>>,
    /// Element count of every node.
    sizes: Vec<usize>,
    /// Arena offset of every node that has its own buffer (usize::MAX otherwise).
    offsets: Vec<usize>,
    /// Arena size.
    total: usize,
}

impl Layout {
    /// Plans the arena: the scalars the caller supplies first, then every computed
    /// buffer, reusing the space of buffers whose last reader has run. A node's output
    /// never shares space with what it reads; the requested roots are never reused.
    fn new(
        g: &Graph,
        plan: &Plan,
        roots: &[NodeId],
        inplace: &[(NodeId, Slot)],
        batch: usize,
    ) -> Layout {
        let n = g.nodes.len();
        let all: Vec<Vec<usize>> = g
            .nodes
            .iter()
            .map(|node| dims(&node.shape, batch))
            .collect();
        let sizes: Vec<usize> = all.iter().map(|d| d.iter().product()).collect();
        let mut offsets = vec![usize::MAX; n];
        let mut total = 0usize;
        for (i, offset) in offsets.iter_mut().enumerate() {
            if is_scalar(g, plan, i) {
                *offset = total;
                total += 1;
            }
        }
        // The node whose buffer holds each node's values (reshapes share their source's).
        let mut owner: Vec<usize> = (0..n).collect();
        for i in 0..n {
            if plan.kinds[i] == Kind::Alias {
                owner[i] = owner[g.nodes[i].args[0]];
            }
        }
        // The last node that reads each buffer.
        let mut last = vec![0usize; n];
        for i in 0..n {
            if plan.owns_buffer(i) {
                for r in plan.reads(g, i) {
                    last[owner[r]] = last[owner[r]].max(i);
                }
            }
        }
        // An epilogue runs row by row inside its product's loops: whatever the product
        // reads stays live until the epilogue's buffer is placed.
        for &(p, u) in &plan.epilogues {
            for r in plan.reads(g, p) {
                last[owner[r]] = last[owner[r]].max(u);
            }
        }
        for &r in roots {
            last[owner[r]] = usize::MAX;
        }
        let mut free: Vec<(usize, usize)> = Vec::new();
        let mut dying: Vec<Vec<usize>> = vec![Vec::new(); n];
        for i in 0..n {
            if !plan.owns_buffer(i) || inplace.iter().any(|(u, _)| *u == i) {
                continue;
            }
            let size = sizes[i].max(1);
            offsets[i] = match free
                .iter()
                .enumerate()
                .filter(|(_, (_, s))| *s >= size)
                .min_by_key(|(_, (_, s))| *s)
            {
                Some((at, _)) => free.swap_remove(at).0,
                None => {
                    total += size;
                    total - size
                }
            };
            if last[i] != usize::MAX && last[i] > i {
                dying[last[i]].push(i);
            }
            for d in std::mem::take(&mut dying[i]) {
                free.push((offsets[d], sizes[d].max(1)));
            }
        }
        Layout {
            dims: all,
            sizes,
            offsets,
            total,
        }
    }
}

/// The JIT backend: compiles each (graph, entry point) on first use.
pub struct Jit {
    cache: Vec<Entry>,
    /// The buffers of the last call, reused (every buffer is written before it is read).
    arena: Vec<f32>,
    /// Each node's buffer pointer for the last call (reused to save an allocation).
    bufs: abi::Pointers,
    /// Threads the kernels may use (at least 1).
    threads: usize,
    /// The back ends of a batch evaluated by rows on several threads ([`rows`]).
    workers: rows::Workers,
}

impl Default for Jit {
    fn default() -> Jit {
        Jit::new()
    }
}

impl Jit {
    /// A backend with an empty cache.
    pub fn new() -> Jit {
        Jit::with_threads(1)
    }

    /// A JIT whose matrix products and convolutions use up to `threads` threads. Results
    /// are the same for every thread count.
    pub fn with_threads(threads: usize) -> Jit {
        Jit {
            cache: Vec::new(),
            arena: Vec::new(),
            bufs: abi::Pointers::default(),
            threads: threads.max(1),
            workers: rows::Workers::default(),
        }
    }

    /// A JIT that runs `roots` of `g` with `func`, a function `kiln build` compiled ahead
    /// of time for them ([`object`]) and linked into this program, instead of compiling
    /// one; other graphs or roots are compiled as usual.
    pub fn precompiled(g: &Graph, roots: &[NodeId], func: Precompiled, threads: usize) -> Jit {
        let mut jit = Jit::with_threads(threads);
        jit.link(g, roots, func);
        jit
    }

    /// Runs `roots` of `g` with `func` (as [`Jit::precompiled`]) from now on.
    pub fn link(&mut self, g: &Graph, roots: &[NodeId], func: Precompiled) {
        let plan = plan::plan(g, roots);
        self.cache
            .push(Entry::new(g, roots, plan, emit::Compiled::linked(func)));
    }

    /// The number of native functions compiled so far (one per graph and entry point).
    pub fn compiled(&self) -> usize {
        self.cache.len()
    }

    /// The entry point computing `roots` of `g`, compiled on first use, and its layout for
    /// `batch`.
    fn entry(
        &mut self,
        g: &Graph,
        roots: &[NodeId],
        batch: usize,
    ) -> Result<(&Entry, &Layout), RunError> {
        let k = g.id();
        let at = match self
            .cache
            .iter()
            .position(|e| e.key == k && e.roots == roots)
        {
            Some(at) => at,
            None => {
                let plan = plan::plan(g, roots);
                let code = emit::compile(g, &plan).map_err(RunError::Internal)?;
                self.cache.push(Entry::new(g, roots, plan, code));
                self.cache.len() - 1
            }
        };
        let e = &mut self.cache[at];
        let layout = match e.layouts.iter().position(|(b, _)| *b == batch) {
            Some(l) => l,
            None => {
                if e.layouts.len() >= 8 {
                    e.layouts.clear();
                }
                let layout = Layout::new(g, &e.plan, roots, &e.inplace, batch);
                e.layouts.push((batch, layout));
                e.layouts.len() - 1
            }
        };
        let e = &self.cache[at];
        Ok((e, &e.layouts[layout].1))
    }

    /// Runs `roots` of `g`; returns their values.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        g: &Graph,
        state: Slots,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        hyper: &HashMap<Hyper, f64>,
        roots: &[NodeId],
    ) -> Result<Vec<Value>, RunError> {
        let batch = batch_of(inputs);
        let mut values = Vec::with_capacity(roots.len());
        let (inputs, targets) = (views(inputs), views(targets));
        self.call(
            g,
            state,
            (&inputs, &targets, hyper, roots, batch),
            &mut |r, root| {
                values.push(match root {
                    Root::InPlace => Value::InPlace,
                    Root::Values(v) if g.nodes[r].shape.rank() == 0 && v.len() == 1 => {
                        Value::Scalar(v[0])
                    }
                    Root::Values(v) => {
                        ArrayD::from_shape_vec(IxDyn(&dims(&g.nodes[r].shape, batch)), v.to_vec())
                            .map(Value::Array)
                            .map_err(|e| RunError::bug(e.to_string()))?
                    }
                });
                Ok(())
            },
        )?;
        Ok(values)
    }

    /// Runs a call, handing each root's values to `sink` in order (with the arena and
    /// pointer buffers taken from `self` for the call and put back after).
    fn call(
        &mut self,
        g: &Graph,
        state: Slots,
        call: Call,
        sink: &mut dyn FnMut(NodeId, Root) -> Result<(), RunError>,
    ) -> Result<(), RunError> {
        check_shapes(g, call.0, call.1, call.4)?;
        let mut arena = std::mem::take(&mut self.arena);
        let mut bufs = std::mem::take(&mut self.bufs);
        let result = self.run_with(g, state, call, &mut arena, &mut bufs.0, sink);
        self.arena = arena;
        self.bufs = bufs;
        result
    }

    fn run_with(
        &mut self,
        g: &Graph,
        state: Slots,
        (inputs, targets, hyper, roots, batch): Call,
        arena: &mut Vec<f32>,
        bufs: &mut Vec<*mut f32>,
        sink: &mut dyn FnMut(NodeId, Root) -> Result<(), RunError>,
    ) -> Result<(), RunError> {
        let threads = self.threads;
        let (entry, layout) = self.entry(g, roots, batch)?;
        let (sizes, offsets, total) = (&layout.sizes, &layout.offsets, layout.total);
        let node_dims = &layout.dims;
        if arena.len() < total {
            arena.resize(total, 0.0);
        }
        for &i in &entry.scalars {
            arena[offsets[i]] = match &g.nodes[i].op {
                Op::Hyper(h) => *hyper
                    .get(h)
                    .ok_or_else(|| RunError::bug(format!("hyperparameter {h:?} not set")))?
                    as f32,
                Op::BatchSize => batch as f32,
                Op::Const(c) => *c as f32,
                op => return Err(RunError::bug(format!("{op} is not a scalar"))),
            };
        }
        let base = arena.as_mut_ptr();
        let contiguous = |a: &ArrayViewD<f32>, what: &str| -> Result<*mut f32, RunError> {
            a.as_slice()
                .map(|s| s.as_ptr().cast_mut())
                .ok_or_else(|| RunError::input(format!("{what} is not contiguous")))
        };
        bufs.clear();
        for (i, source) in entry.sources.iter().enumerate() {
            let p = if offsets[i] != usize::MAX && *source != Source::Nothing {
                base.wrapping_add(offsets[i])
            } else {
                match *source {
                    Source::Nothing | Source::Arena => std::ptr::null_mut(),
                    Source::Input(k) => contiguous(get(inputs, k, "input")?, "an input")?,
                    Source::Target(k) => contiguous(get(targets, k, "target")?, "a target")?,
                    Source::Slot(Slot::Param(k)) => slot(&state.params, k)?,
                    Source::Slot(Slot::State(k)) => slot(&state.states, k)?,
                    Source::Alias(a) => bufs[a],
                }
            };
            bufs.push(p);
        }
        let env = abi::KernelEnv {
            graph: g,
            sizes,
            dims: node_dims,
            error: Default::default(),
            threads,
        };
        abi::call(entry.code.func, bufs, batch, &env);
        if let Some(e) = env.error.into_inner() {
            return Err(e);
        }
        let kinds = &entry.plan.kinds;
        for &r in &entry.roots {
            if entry.inplace.iter().any(|(u, _)| *u == r) {
                sink(r, Root::InPlace)?;
                continue;
            }
            // Follow reshapes to the node that owns the values.
            let mut src = r;
            while kinds[src] == Kind::Alias {
                src = g.nodes[src].args[0];
            }
            let values: &[f32] = if offsets[src] != usize::MAX {
                let n = if g.nodes[r].shape.rank() == 0 {
                    1
                } else {
                    sizes[src]
                };
                &arena[offsets[src]..offsets[src] + n]
            } else {
                let a = match &g.nodes[src].op {
                    Op::Input(k) => get(inputs, *k, "input")?,
                    Op::Target(k) => get(targets, *k, "target")?,
                    op => return Err(RunError::bug(format!("node %{r} ({op}) has no values"))),
                };
                a.as_slice()
                    .ok_or_else(|| RunError::input("an input is not contiguous"))?
            };
            sink(r, Root::Values(values))?;
        }
        Ok(())
    }
}

/// A root's values as a call leaves them.
enum Root<'a> {
    /// An update written into its parameter or state.
    InPlace,
    /// The values, row-major.
    Values(&'a [f32]),
}

/// A root's value after a call.
enum Value {
    /// An update written into its parameter or state.
    InPlace,
    /// A rank-0 value (a loss).
    Scalar(f32),
    Array(ArrayD<f32>),
}

impl Value {
    /// The value as an array; errors for an update written in place.
    fn into_array(self) -> Result<ArrayD<f32>, RunError> {
        match self {
            Value::InPlace => Err(RunError::bug("a root has no value")),
            Value::Scalar(v) => Ok(ArrayD::from_elem(IxDyn(&[]), v)),
            Value::Array(a) => Ok(a),
        }
    }

    /// A rank-0 value as f64 (NaN otherwise).
    fn scalar(&self) -> f64 {
        match self {
            Value::Scalar(v) => f64::from(*v),
            Value::Array(a) => scalar(a),
            Value::InPlace => f64::NAN,
        }
    }
}

/// Pointers to a model's parameters or states.
type Pointers = SmallVec<[*mut f32; 16]>;

/// Buffers of a model's parameters and state: mutable for a training step (whose
/// updates may be written in place), only read otherwise.
struct Slots {
    params: Pointers,
    states: Pointers,
}

impl Slots {
    /// Read-only buffers (never written: only training steps write in place).
    fn read(state: &State) -> Result<Slots, RunError> {
        let ptrs = |xs: &[ArrayD<f32>]| -> Result<Pointers, RunError> {
            xs.iter()
                .map(|a| {
                    a.as_slice()
                        .map(|s| s.as_ptr().cast_mut())
                        .ok_or_else(|| RunError::input("a parameter is not contiguous"))
                })
                .collect()
        };
        Ok(Slots {
            params: ptrs(&state.params)?,
            states: ptrs(&state.states)?,
        })
    }

    /// Buffers the step may update in place.
    fn write(state: &mut State) -> Result<Slots, RunError> {
        let ptrs = |xs: &mut [ArrayD<f32>]| -> Result<Pointers, RunError> {
            xs.iter_mut()
                .map(|a| {
                    a.as_slice_mut()
                        .map(|s| s.as_mut_ptr())
                        .ok_or_else(|| RunError::input("a parameter is not contiguous"))
                })
                .collect()
        };
        Ok(Slots {
            params: ptrs(&mut state.params)?,
            states: ptrs(&mut state.states)?,
        })
    }
}

fn slot(xs: &[*mut f32], k: usize) -> Result<*mut f32, RunError> {
    xs.get(k)
        .copied()
        .ok_or_else(|| RunError::input(format!("missing parameter or state #{k}")))
}

/// Updates that can write straight into their parameter or state: elementwise loops of
/// the slot's shape after which nothing reads the slot's old value.
fn inplace_updates(g: &Graph, plan: &Plan, roots: &[NodeId]) -> Vec<(NodeId, Slot)> {
    let leaf = |mut r: NodeId| {
        while plan.kinds[r] == Kind::Alias {
            r = g.nodes[r].args[0];
        }
        match g.nodes[r].op {
            Op::Param(p) => Some(Slot::Param(p)),
            Op::State(s) => Some(Slot::State(s)),
            _ => None,
        }
    };
    g.updates
        .iter()
        .filter(|(slot, u)| {
            let shape = match slot {
                Slot::Param(p) => &g.params[*p].tensor.shape,
                Slot::State(s) => &g.states[*s].shape,
            };
            // The loop computing a stored update reads the slot at the element it writes,
            // before writing it.
            roots.contains(u)
                && matches!(plan.kinds[*u], Kind::Loop | Kind::Epilogue | Kind::Stored)
                && g.nodes[*u].shape == *shape
                && (*u + 1..g.nodes.len()).all(|j| {
                    !plan.owns_buffer(j)
                        || plan.kinds[j] == Kind::Stored
                        || plan.reads(g, j).into_iter().all(|r| leaf(r) != Some(*slot))
                        || (plan.kinds[*u] == Kind::Stored && plan.fused_into(g, j).contains(u))
                })
        })
        .map(|(slot, u)| (*u, *slot))
        .collect()
}

fn get<'a, 'v>(
    xs: &'a [ArrayViewD<'v, f32>],
    k: usize,
    what: &str,
) -> Result<&'a ArrayViewD<'v, f32>, RunError> {
    xs.get(k)
        .ok_or_else(|| RunError::input(format!("missing {what} #{k}")))
}

/// Arrays as a call reads them.
fn views(xs: &[ArrayD<f32>]) -> SmallVec<[ArrayViewD<'_, f32>; 4]> {
    xs.iter().map(|a| a.view()).collect()
}

fn check_shapes(
    g: &Graph,
    inputs: &[ArrayViewD<f32>],
    targets: &[ArrayViewD<f32>],
    batch: usize,
) -> Result<(), RunError> {
    if inputs.len() != g.inputs.len() {
        return Err(RunError::input(format!(
            "{} inputs given, the model has {}",
            inputs.len(),
            g.inputs.len()
        )));
    }
    let ports = g
        .inputs
        .iter()
        .zip(inputs)
        .chain(g.targets.iter().zip(targets));
    for (t, a) in ports {
        let same = a.ndim() == t.shape.rank()
            && t.shape.0.iter().zip(a.shape()).all(|(d, &n)| match d {
                Dim::Batch => n == batch,
                Dim::Fixed(k) => n as u64 == *k,
            });
        if !same {
            return Err(RunError::input(format!(
                "`{}` has shape {:?}, expected {:?}",
                t.name,
                a.shape(),
                dims(&t.shape, batch)
            )));
        }
    }
    Ok(())
}

impl Jit {
    /// Runs `roots` of `graph`, whose last `graph.updates.len()` are its updates, and
    /// writes the updates into `state` (copying those not written in place); returns the
    /// other roots' values.
    fn apply(
        &mut self,
        graph: &Graph,
        state: &mut State,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        hyper: &HashMap<Hyper, f64>,
        roots: &[NodeId],
    ) -> Result<Vec<Value>, RunError> {
        let mut vals = self.run(graph, Slots::write(state)?, inputs, targets, hyper, roots)?;
        let updates = vals.split_off(roots.len() - graph.updates.len());
        for ((slot, _), v) in graph.updates.iter().zip(updates) {
            if let Value::Array(v) = v {
                write_back(state, *slot, v);
            }
        }
        Ok(vals)
    }
}

impl Backend for Jit {
    fn step(
        &mut self,
        graph: &Graph,
        state: &mut State,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        hyper: &HashMap<Hyper, f64>,
    ) -> Result<StepResult, RunError> {
        let roots = step_roots(graph)?;
        let vals = self.apply(graph, state, inputs, targets, hyper, &roots)?;
        Ok(StepResult {
            loss: vals[0].scalar(),
            objective: vals[1].scalar(),
        })
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
        let vals = self.run(graph, Slots::read(state)?, inputs, targets, hyper, &roots)?;
        let vals: Vec<ArrayD<f32>> = vals
            .into_iter()
            .map(Value::into_array)
            .collect::<Result<_, _>>()?;
        Ok((
            scalar(&vals[0]),
            graph
                .grads
                .iter()
                .map(|(p, _)| *p)
                .zip(vals[1..].iter().cloned())
                .collect(),
        ))
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
        let blocks = self.row_blocks(graph, roots, batch_of(inputs));
        if blocks > 1 {
            return self.evaluate_rows_owned(blocks, graph, state, inputs, targets, hyper, roots);
        }
        let vals = self.run(graph, Slots::read(state)?, inputs, targets, hyper, roots)?;
        vals.into_iter().map(Value::into_array).collect()
    }

    /// Copies the roots' values from the back end's buffers straight into `outputs`:
    /// allocates nothing once the buffers have grown to the batch.
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
        let blocks = self.row_blocks(graph, roots, batch_of(inputs));
        if blocks > 1 && outputs.len() == roots.len() {
            return self
                .evaluate_rows(blocks, graph, state, inputs, targets, hyper, roots, outputs);
        }
        let (batch, inputs, targets) = (batch_of(inputs), views(inputs), views(targets));
        let call = (&inputs[..], &targets[..], hyper, roots, batch);
        let mut k = 0;
        self.call(graph, Slots::read(state)?, call, &mut |r, root| {
            let out = outputs.get_mut(k);
            k += 1;
            match (out, root) {
                (None, _) => Ok(()),
                (Some(out), Root::Values(v)) if out.len() == v.len() => {
                    out.copy_from_slice(v);
                    Ok(())
                }
                _ => Err(RunError::bug(format!("root %{r} does not fit its buffer"))),
            }
        })
    }

    fn update(
        &mut self,
        graph: &Graph,
        state: &mut State,
        inputs: &[ArrayD<f32>],
        hyper: &HashMap<Hyper, f64>,
    ) -> Result<(), RunError> {
        let roots = update_roots(graph);
        self.apply(graph, state, inputs, &[], hyper, &roots)?;
        Ok(())
    }

    /// Runs the update on the slices themselves: writes in place what it can, copies
    /// the rest.
    fn update_slices(
        &mut self,
        graph: &Graph,
        slices: &mut Slices,
        inputs: &[&[f32]],
        hyper: &HashMap<Hyper, f64>,
    ) -> Result<(), RunError> {
        let roots = update_roots(graph);
        let views = graph
            .inputs
            .iter()
            .zip(inputs)
            .map(|(t, x)| {
                ArrayViewD::from_shape(IxDyn(&dims(&t.shape, 1)), x)
                    .map_err(|e| RunError::input(format!("a slice of the wrong size: {e}")))
            })
            .collect::<Result<SmallVec<[_; 16]>, _>>()?;
        let state = Slots {
            params: slices.params.iter_mut().map(|x| x.as_mut_ptr()).collect(),
            states: slices.states.iter_mut().map(|x| x.as_mut_ptr()).collect(),
        };
        let mut k = 0;
        self.call(
            graph,
            state,
            (&views, &[], hyper, &roots, 1),
            &mut |_, root| {
                let slot = graph.updates.get(k).map(|(s, _)| *s);
                k += 1;
                let Root::Values(v) = root else {
                    return Ok(());
                };
                let to = match slot {
                    Some(Slot::Param(p)) => slices.params.get_mut(p),
                    Some(Slot::State(s)) => slices.states.get_mut(s),
                    None => None,
                };
                match to {
                    Some(to) if to.len() == v.len() => {
                        to.copy_from_slice(v);
                        Ok(())
                    }
                    _ => Err(RunError::bug(format!(
                        "no buffer for the update of {slot:?}"
                    ))),
                }
            },
        )
    }

    /// Compiles the entry point of the call (its layout for one row).
    fn prepare(&mut self, graph: &Graph, roots: &[NodeId]) -> Result<(), RunError> {
        self.entry(graph, roots, 1).map(|_| ())
    }

    fn threads(&self) -> usize {
        self.threads
    }

    /// Shares the code compiled (or linked) so far: a fork compiles nothing again.
    fn fork(&self, threads: usize) -> Box<dyn Backend + Send> {
        let mut jit = Jit::with_threads(threads);
        jit.cache.clone_from(&self.cache);
        Box::new(jit)
    }
}
