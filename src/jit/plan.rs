//! What the code generator emits for each node: fused elementwise loops, kernel calls,
//! aliases and external buffers. Named IR pass `fuse` (`kiln ir --after fuse` prints it).

use crate::ir::{Dim, Graph, NodeId, Op, Shape, Slot};
use std::fmt::Write;

/// How one node is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Not needed by the requested roots.
    Dead,
    /// Its buffer comes from the caller: inputs, targets, parameters, state, hyperparameters,
    /// the batch size.
    External,
    /// A constant, emitted as an immediate where used.
    Const,
    /// Elementwise and used only inside one consumer's loop: no buffer.
    Fused,
    /// Like [`Kind::Fused`], but also a requested root (an optimizer's state update, say):
    /// computed inside its consumer's loop, which also stores it into its buffer. So the
    /// three updates of an Adam step (both moments and the weight) are one pass over
    /// memory instead of three.
    Stored,
    /// Elementwise, computed by its own loop (with its fused operands) into a buffer.
    Loop,
    /// Computed by a runtime kernel into a buffer.
    Kernel,
    /// A matrix product small enough to be computed by generated loops (no call).
    Product,
    /// A matrix product whose rows depend on the batch size: generated loops (tiles of
    /// 1×24 columns) when the call has at most [`GEMV_ROWS`] rows, else the kernel.
    Gemv,
    /// A sum over the leading dimensions into a few fixed columns (the bias gradient of a
    /// narrow layer), computed by generated loops with the columns in registers.
    ColumnSum,
    /// An elementwise loop computed row by row inside the loops of the product it reads
    /// (see [`Plan::epilogues`]), while the product's row is in cache.
    Epilogue,
    /// The same buffer as its argument (a reshape).
    Alias,
}

/// The plan of a graph for a set of roots.
#[derive(Clone, Debug)]
pub struct Plan {
    /// One kind per node.
    pub kinds: Vec<Kind>,
    /// (product, loop) pairs: the loop is the product's epilogue.
    pub epilogues: Vec<(NodeId, NodeId)>,
}

/// Products whose rows depend on the batch run as generated loops up to this many rows;
/// the kernel, too, skips the GEMM (whose packing of the whole weight matrix dominates a
/// batch of one) for a row-times-matrix loop up to this many rows.
pub const GEMV_ROWS: usize = 4;

/// GEMV-like products whose right operand has more elements than this (1 MiB of f32,
/// an L2 cache) are left to the kernel: the generated loops walk the operand in tiles of
/// 24 columns, one row of a tile at a time, a stride the prefetchers do not follow across
/// pages once the operand outgrows the cache, where the kernel streams it row by row.
pub const GEMV_WEIGHTS: u64 = 1 << 18;

/// Products of at most this many multiply-adds (per row, when the rows depend on the
/// batch: this many per 16 rows) are generated loops; the kernel computes products this
/// small (at a batch size the plan could not know) by textbook loops.
pub const TINY_MACS: usize = 4096;

/// Columns summed into by [`Kind::ColumnSum`]: at most this many.
pub const SUM_COLUMNS: u64 = 24;

/// When `SumTo` node `n` only sums its operand's leading dimensions away (its shape,
/// leading 1s aside, is the operand's trailing dimensions; a bias gradient): that shape.
pub fn leading_sum(g: &Graph, n: NodeId) -> Option<Vec<Dim>> {
    let node = &g.nodes[n];
    let core: Vec<Dim> = node
        .shape
        .0
        .iter()
        .copied()
        .skip_while(|d| *d == Dim::Fixed(1))
        .collect();
    let src = &g.nodes[*node.args.first()?].shape.0;
    (core.len() <= src.len() && src[src.len() - core.len()..] == core[..]).then_some(core)
}

/// The number of columns of a [`Kind::ColumnSum`]: a [`leading_sum`] into at most
/// [`SUM_COLUMNS`] fixed values.
pub fn column_sum(g: &Graph, n: NodeId) -> Option<u64> {
    let cols: u64 = leading_sum(g, n)?
        .iter()
        .map(|d| d.size())
        .product::<Option<u64>>()?;
    (cols <= SUM_COLUMNS).then_some(cols)
}

/// How matrix product `n` is computed, chosen from its shape: generated loops for tiny
/// products, a run-time choice for GEMV-like ones (rows from the batch, fixed columns and
/// inner size), the library GEMM otherwise. Leading dimensions of the operands are rows.
fn product_kind(g: &Graph, n: NodeId) -> Kind {
    let node = &g.nodes[n];
    let Op::MatMul { ta, tb } = node.op else {
        return Kind::Kernel;
    };
    let (a, b) = (&g.nodes[node.args[0]].shape, &g.nodes[node.args[1]].shape);
    let last = |s: &Shape| s.0.last().and_then(|d| d.size());
    let rows = |s: &Shape| -> Option<u64> {
        s.0[..s.rank().saturating_sub(1)]
            .iter()
            .map(|d| d.size())
            .product()
    };
    let (Some(a_cols), Some(b_cols)) = (last(a), last(b)) else {
        return Kind::Kernel;
    };
    if a.rank() < 2 || b.rank() < 2 {
        return Kind::Kernel;
    }
    let (m, k) = if ta {
        (Some(a_cols), rows(a))
    } else {
        (rows(a), Some(a_cols))
    };
    let cols = if tb { rows(b) } else { Some(b_cols) };
    match (m, k, cols) {
        (Some(m), Some(k), Some(c)) if m * k * c <= TINY_MACS as u64 => Kind::Product,
        (None, Some(k), Some(c)) if k * c * 16 <= TINY_MACS as u64 => Kind::Product,
        (Some(m), None, Some(c)) if m * c * 16 <= TINY_MACS as u64 => Kind::Product,
        (None, Some(k), Some(c)) if !ta && k * c <= GEMV_WEIGHTS => Kind::Gemv,
        _ => Kind::Kernel,
    }
}

/// Elementwise operations the code generator writes inline.
pub fn elementwise(op: &Op) -> bool {
    matches!(op, Op::Map(_) | Op::MapGrad(_) | Op::Binary(_))
}

/// Plans `g` for computing `roots`.
pub fn plan(g: &Graph, roots: &[NodeId]) -> Plan {
    let live = g.live(roots);
    let mut uses: Vec<Vec<NodeId>> = vec![Vec::new(); g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        if live[i] {
            for &a in &n.args {
                uses[a].push(i);
            }
        }
    }
    let mut kinds = Vec::with_capacity(g.nodes.len());
    for (i, n) in g.nodes.iter().enumerate() {
        let kind = if !live[i] {
            Kind::Dead
        } else {
            match &n.op {
                Op::Input(_)
                | Op::Target(_)
                | Op::Param(_)
                | Op::State(_)
                | Op::Hyper(_)
                | Op::BatchSize => Kind::External,
                Op::Const(_) => Kind::Const,
                Op::Reshape => Kind::Alias,
                op if elementwise(op) => {
                    // Fused into its only consumer when that consumer is an elementwise loop
                    // over the same shape; otherwise it needs its own buffer.
                    let single = match uses[i].as_slice() {
                        [u] => elementwise(&g.nodes[*u].op) && g.nodes[*u].shape == n.shape,
                        _ => false,
                    };
                    match (single, roots.contains(&i)) {
                        (true, false) => Kind::Fused,
                        (true, true) => Kind::Stored,
                        (false, _) => Kind::Loop,
                    }
                }
                Op::MatMul { .. } => product_kind(g, i),
                Op::SumTo if column_sum(g, i).is_some() => Kind::ColumnSum,
                _ => Kind::Kernel,
            }
        };
        kinds.push(kind);
    }
    let epilogues = epilogues(g, &mut kinds, &uses, roots);
    Plan { kinds, epilogues }
}

/// Marks the loops that can run as the epilogue of the generated product they read: the
/// loop of the product's only reader (directly or through nodes fused into it), over the
/// same shape, and the next node computed after it (so no
/// buffer it writes can be one a node in between still reads). An update written in place
/// (the loop's own or one stored inside it) must not overwrite an operand of the product
/// while the product still reads it.
fn epilogues(
    g: &Graph,
    kinds: &mut [Kind],
    uses: &[Vec<NodeId>],
    roots: &[NodeId],
) -> Vec<(NodeId, NodeId)> {
    let mut out = Vec::new();
    for n in 0..g.nodes.len() {
        if !matches!(kinds[n], Kind::Product | Kind::Gemv) || roots.contains(&n) {
            continue;
        }
        let [mut u] = uses[n].as_slice() else {
            continue;
        };
        // Through the nodes fused into a loop (each has that one reader).
        while kinds[u] == Kind::Fused {
            match uses[u].as_slice() {
                [next] => u = *next,
                _ => break,
            }
        }
        let next = (n + 1..g.nodes.len()).find(|&j| {
            matches!(
                kinds[j],
                Kind::Loop | Kind::Kernel | Kind::Product | Kind::Gemv | Kind::ColumnSum
            )
        });
        // The loop's own update and those stored inside it.
        let inside = computed_in(g, kinds, u);
        let updated_operand = g.updates.iter().any(|(slot, up)| {
            (*up == u || inside.contains(up))
                && g.nodes[n].args.iter().any(|&a| match g.nodes[a].op {
                    Op::Param(p) => *slot == Slot::Param(p),
                    Op::State(s) => *slot == Slot::State(s),
                    _ => false,
                })
        });
        if next == Some(u)
            && kinds[u] == Kind::Loop
            && g.nodes[u].shape == g.nodes[n].shape
            && !updated_operand
        {
            kinds[u] = Kind::Epilogue;
            out.push((n, u));
        }
    }
    out
}

impl Plan {
    /// True when node `n` has a buffer of its own (computed by the generated code).
    pub fn owns_buffer(&self, n: NodeId) -> bool {
        matches!(
            self.kinds[n],
            Kind::Loop
                | Kind::Kernel
                | Kind::Product
                | Kind::Gemv
                | Kind::ColumnSum
                | Kind::Epilogue
                | Kind::Stored
        )
    }

    /// True when node `n` is computed inside another node's loop.
    pub fn inside(&self, n: NodeId) -> bool {
        self.kinds[n].inside()
    }

    /// The epilogue loop of product `n`, if it has one.
    pub fn epilogue(&self, n: NodeId) -> Option<NodeId> {
        self.epilogues
            .iter()
            .find(|(p, _)| *p == n)
            .map(|(_, u)| *u)
    }

    /// The plan as text: every loop with the nodes fused into it.
    pub fn print(&self, g: &Graph) -> String {
        let mut out = String::new();
        for (i, k) in self.kinds.iter().enumerate() {
            if matches!(k, Kind::Dead | Kind::Fused | Kind::Stored) {
                continue;
            }
            let n = &g.nodes[i];
            let _ = write!(out, "%{i}: {} = {:?} {}", n.shape, k, n.op);
            if let Some(u) = self.epilogue(i) {
                let _ = write!(out, "  ⟶ epilogue: %{u}");
            }
            if matches!(k, Kind::Loop | Kind::Epilogue) {
                let fused = self.fused_into(g, i);
                if !fused.is_empty() {
                    let list: Vec<String> = fused
                        .iter()
                        .map(|f| match self.kinds[*f] {
                            Kind::Stored => format!("%{f} {} (stored)", g.nodes[*f].op),
                            _ => format!("%{f} {}", g.nodes[*f].op),
                        })
                        .collect();
                    let _ = write!(out, "  ⟵ fused: {}", list.join(", "));
                }
            }
            let _ = writeln!(out);
        }
        out
    }

    /// The buffers node `n` reads when it runs: its arguments, or for a loop the
    /// arguments of every node computed inside it.
    pub fn reads(&self, g: &Graph, n: NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut stack = g.nodes[n].args.clone();
        while let Some(a) = stack.pop() {
            if self.inside(a) {
                stack.extend(&g.nodes[a].args);
            } else if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }

    /// The nodes computed inside the loop of `root`.
    pub fn fused_into(&self, g: &Graph, root: NodeId) -> Vec<NodeId> {
        computed_in(g, &self.kinds, root)
    }
}

impl Kind {
    /// True for nodes computed inside another node's loop.
    fn inside(self) -> bool {
        matches!(self, Kind::Fused | Kind::Stored)
    }
}

/// The nodes computed inside the loop of `root` (sorted), by their kinds.
fn computed_in(g: &Graph, kinds: &[Kind], root: NodeId) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut stack = g.nodes[root].args.clone();
    while let Some(a) = stack.pop() {
        if kinds[a].inside() && !out.contains(&a) {
            out.push(a);
            stack.extend(&g.nodes[a].args);
        }
    }
    out.sort_unstable();
    out
}

/// Number of elements of a shape for batch size `batch`.
pub fn numel(s: &Shape, batch: usize) -> usize {
    crate::interp::dims(s, batch).iter().product()
}
