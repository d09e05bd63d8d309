//! The Cranelift JIT backend (the only module that names Cranelift): a graph and the nodes
//! a call needs become one native function, compiled once and called for every batch of
//! any size. `plan` decides what is fused, `emit` writes the code, `kernel` holds the
//! operations the code calls, `abi` is the boundary (and all the `unsafe`).

mod abi;
mod emit;
mod kernel;
mod layers;
pub mod plan;

use crate::interp::dims;
use crate::ir::{Graph, Hyper, NodeId, Op, Slot};
use crate::runtime::exec::{
    batch_of, gradient_roots, loss_nodes, scalar, write_back, Backend, LossAndGrads, RunError,
    State, StepResult,
};
use ndarray::{ArrayD, IxDyn};
use plan::{Kind, Plan};
use std::collections::HashMap;

/// A compiled entry point.
struct Entry {
    /// The graph's address and size, and the roots: what this entry was compiled for.
    key: (usize, usize),
    plan: Plan,
    code: emit::Compiled,
    roots: Vec<NodeId>,
    /// Buffer layouts by batch size.
    layouts: HashMap<usize, Layout>,
    /// Updates written straight into the parameter or state they update.
    inplace: Vec<(NodeId, Slot)>,
}

/// Where each node's values live for one batch size.
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
        for (i, k) in plan.kinds.iter().enumerate() {
            if matches!(
                (k, &g.nodes[i].op),
                (
                    Kind::External | Kind::Const,
                    Op::Hyper(_) | Op::BatchSize | Op::Const(_)
                )
            ) {
                offsets[i] = total;
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
    /// Threads the kernels may use (at least 1).
    threads: usize,
}

/// Identifies a graph in the cache: its address and size. Graphs are owned by the run
/// that calls the backend and are not changed while it runs.
fn key(g: &Graph) -> (usize, usize) {
    (g as *const Graph as usize, g.nodes.len())
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
            threads: threads.max(1),
        }
    }

    /// The number of native functions compiled so far (one per graph and entry point).
    pub fn compiled(&self) -> usize {
        self.cache.len()
    }

    fn entry(&mut self, g: &Graph, roots: &[NodeId], batch: usize) -> Result<&Entry, RunError> {
        let k = key(g);
        let at = match self
            .cache
            .iter()
            .position(|e| e.key == k && e.roots == roots)
        {
            Some(at) => at,
            None => {
                let plan = plan::plan(g, roots);
                let code = emit::compile(g, &plan)
                    .map_err(|e| RunError(format!("JIT compilation failed: {}", e.0)))?;
                let inplace = inplace_updates(g, &plan, roots);
                self.cache.push(Entry {
                    key: k,
                    plan,
                    code,
                    roots: roots.to_vec(),
                    layouts: HashMap::new(),
                    inplace,
                });
                self.cache.len() - 1
            }
        };
        let e = &mut self.cache[at];
        if !e.layouts.contains_key(&batch) {
            if e.layouts.len() >= 8 {
                e.layouts.clear();
            }
            let layout = Layout::new(g, &e.plan, roots, &e.inplace, batch);
            e.layouts.insert(batch, layout);
        }
        Ok(&self.cache[at])
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
    ) -> Result<Vec<Option<ArrayD<f32>>>, RunError> {
        let batch = batch_of(inputs);
        check_shapes(g, inputs, targets, batch)?;
        let mut arena = std::mem::take(&mut self.arena);
        let result = self.run_with(g, state, inputs, targets, hyper, roots, batch, &mut arena);
        self.arena = arena;
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn run_with(
        &mut self,
        g: &Graph,
        state: Slots,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        hyper: &HashMap<Hyper, f64>,
        roots: &[NodeId],
        batch: usize,
        arena: &mut Vec<f32>,
    ) -> Result<Vec<Option<ArrayD<f32>>>, RunError> {
        let threads = self.threads;
        let entry = self.entry(g, roots, batch)?;
        let layout = &entry.layouts[&batch];
        let (sizes, offsets, total) = (&layout.sizes, &layout.offsets, layout.total);
        let node_dims = &layout.dims;
        if arena.len() < total {
            arena.resize(total, 0.0);
        }
        for (i, n) in g.nodes.iter().enumerate() {
            if offsets[i] == usize::MAX {
                continue;
            }
            let v = match &n.op {
                Op::Hyper(h) => *hyper
                    .get(h)
                    .ok_or_else(|| RunError(format!("hyperparameter {h:?} not set")))?
                    as f32,
                Op::BatchSize => batch as f32,
                Op::Const(c) => *c as f32,
                _ => continue,
            };
            arena[offsets[i]] = v;
        }
        let base = arena.as_mut_ptr();
        let mut bufs: Vec<*mut f32> = vec![std::ptr::null_mut(); g.nodes.len()];
        let contiguous = |a: &ArrayD<f32>, what: &str| -> Result<*mut f32, RunError> {
            a.as_slice()
                .map(|s| s.as_ptr().cast_mut())
                .ok_or_else(|| RunError(format!("{what} is not contiguous")))
        };
        for (i, n) in g.nodes.iter().enumerate() {
            if entry.plan.kinds[i] == Kind::Dead {
                continue;
            }
            bufs[i] = if offsets[i] != usize::MAX {
                base.wrapping_add(offsets[i])
            } else {
                match &n.op {
                    Op::Input(k) => contiguous(get(inputs, *k, "input")?, "an input")?,
                    Op::Target(k) => contiguous(get(targets, *k, "target")?, "a target")?,
                    Op::Param(k) => slot(&state.params, *k)?,
                    Op::State(k) => slot(&state.states, *k)?,
                    Op::Reshape => bufs[n.args[0]],
                    _ => std::ptr::null_mut(),
                }
            };
        }
        for (u, target) in &entry.inplace {
            bufs[*u] = match target {
                Slot::Param(p) => slot(&state.params, *p)?,
                Slot::State(k) => slot(&state.states, *k)?,
            };
        }
        let env = abi::KernelEnv {
            graph: g,
            sizes,
            dims: node_dims,
            error: Default::default(),
            threads,
        };
        abi::call(entry.code.func, &bufs, batch, &env);
        if let Some(e) = env.error.into_inner() {
            return Err(RunError(e));
        }
        let kinds = &entry.plan.kinds;
        entry
            .roots
            .iter()
            .map(|&r| {
                if entry.inplace.iter().any(|(u, _)| *u == r) {
                    return Ok(None);
                }
                // Follow reshapes to the node that owns the values.
                let mut src = r;
                while kinds[src] == Kind::Alias {
                    src = g.nodes[src].args[0];
                }
                let values: Vec<f32> = if offsets[src] != usize::MAX {
                    arena[offsets[src]..offsets[src] + sizes[src]].to_vec()
                } else {
                    match &g.nodes[src].op {
                        Op::Input(k) => get(inputs, *k, "input")?.iter().copied().collect(),
                        Op::Target(k) => get(targets, *k, "target")?.iter().copied().collect(),
                        op => return Err(RunError(format!("node %{r} ({op}) has no values"))),
                    }
                };
                ArrayD::from_shape_vec(IxDyn(&dims(&g.nodes[r].shape, batch)), values)
                    .map(Some)
                    .map_err(|e| RunError(e.to_string()))
            })
            .collect()
    }
}

/// Buffers of a model's parameters and state: mutable for a training step (whose
/// updates may be written in place), only read otherwise.
struct Slots {
    params: Vec<*mut f32>,
    states: Vec<*mut f32>,
}

impl Slots {
    /// Read-only buffers (never written: only training steps write in place).
    fn read(state: &State) -> Result<Slots, RunError> {
        let ptrs = |xs: &[ArrayD<f32>]| -> Result<Vec<*mut f32>, RunError> {
            xs.iter()
                .map(|a| {
                    a.as_slice()
                        .map(|s| s.as_ptr().cast_mut())
                        .ok_or_else(|| RunError("a parameter is not contiguous".into()))
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
        let ptrs = |xs: &mut [ArrayD<f32>]| -> Result<Vec<*mut f32>, RunError> {
            xs.iter_mut()
                .map(|a| {
                    a.as_slice_mut()
                        .map(|s| s.as_mut_ptr())
                        .ok_or_else(|| RunError("a parameter is not contiguous".into()))
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
        .ok_or_else(|| RunError(format!("missing parameter or state #{k}")))
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
            roots.contains(u)
                && plan.kinds[*u] == Kind::Loop
                && g.nodes[*u].shape == *shape
                && (*u + 1..g.nodes.len()).all(|j| {
                    !plan.owns_buffer(j)
                        || plan.reads(g, j).into_iter().all(|r| leaf(r) != Some(*slot))
                })
        })
        .map(|(slot, u)| (*u, *slot))
        .collect()
}

fn get<'a>(xs: &'a [ArrayD<f32>], k: usize, what: &str) -> Result<&'a ArrayD<f32>, RunError> {
    xs.get(k)
        .ok_or_else(|| RunError(format!("missing {what} #{k}")))
}

fn check_shapes(
    g: &Graph,
    inputs: &[ArrayD<f32>],
    targets: &[ArrayD<f32>],
    batch: usize,
) -> Result<(), RunError> {
    if inputs.len() != g.inputs.len() {
        return Err(RunError(format!(
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
        let want = dims(&t.shape, batch);
        if a.shape() != want.as_slice() {
            return Err(RunError(format!(
                "`{}` has shape {:?}, expected {:?}",
                t.name,
                a.shape(),
                want
            )));
        }
    }
    Ok(())
}

impl Backend for Jit {
    fn forward(
        &mut self,
        graph: &Graph,
        state: &State,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        roots: &[NodeId],
    ) -> Result<Vec<ArrayD<f32>>, RunError> {
        let vals = self.run(
            graph,
            Slots::read(state)?,
            inputs,
            targets,
            &HashMap::new(),
            roots,
        )?;
        vals.into_iter()
            .map(|v| v.ok_or_else(|| RunError("a root has no value".into())))
            .collect()
    }

    fn step(
        &mut self,
        graph: &Graph,
        state: &mut State,
        inputs: &[ArrayD<f32>],
        targets: &[ArrayD<f32>],
        hyper: &HashMap<Hyper, f64>,
    ) -> Result<StepResult, RunError> {
        let (loss, objective) = loss_nodes(graph)?;
        let mut roots = vec![loss, objective];
        roots.extend(graph.updates.iter().map(|(_, n)| *n));
        let vals = self.run(graph, Slots::write(state)?, inputs, targets, hyper, &roots)?;
        let value = |v: &Option<ArrayD<f32>>| v.as_ref().map_or(f64::NAN, scalar);
        let result = StepResult {
            loss: value(&vals[0]),
            objective: value(&vals[1]),
        };
        // Updates not written in place are copied back.
        for ((slot, _), v) in graph.updates.iter().zip(vals.into_iter().skip(2)) {
            if let Some(v) = v {
                write_back(state, *slot, v);
            }
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
        let vals = self.run(graph, Slots::read(state)?, inputs, targets, hyper, &roots)?;
        let vals: Vec<ArrayD<f32>> = vals
            .into_iter()
            .map(|v| v.ok_or_else(|| RunError("a root has no value".into())))
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
}
