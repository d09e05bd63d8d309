//! What the code generator emits for each node: fused elementwise loops, kernel calls,
//! aliases and external buffers. Named IR pass `fuse` (`kiln ir --after fuse` prints it).

use crate::ir::{Graph, NodeId, Op, Shape};
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
    /// Elementwise, computed by its own loop (with its fused operands) into a buffer.
    Loop,
    /// Computed by a runtime kernel into a buffer.
    Kernel,
    /// The same buffer as its argument (a reshape).
    Alias,
}

/// The plan of a graph for a set of roots.
#[derive(Clone, Debug)]
pub struct Plan {
    /// One kind per node.
    pub kinds: Vec<Kind>,
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
                    if single && !roots.contains(&i) {
                        Kind::Fused
                    } else {
                        Kind::Loop
                    }
                }
                _ => Kind::Kernel,
            }
        };
        kinds.push(kind);
    }
    Plan { kinds }
}

impl Plan {
    /// True when node `n` has a buffer of its own (computed by the generated code).
    pub fn owns_buffer(&self, n: NodeId) -> bool {
        matches!(self.kinds[n], Kind::Loop | Kind::Kernel)
    }

    /// The plan as text: every loop with the nodes fused into it.
    pub fn print(&self, g: &Graph) -> String {
        let mut out = String::new();
        for (i, k) in self.kinds.iter().enumerate() {
            if matches!(k, Kind::Dead | Kind::Fused) {
                continue;
            }
            let n = &g.nodes[i];
            let _ = write!(out, "%{i}: {} = {:?} {}", n.shape, k, n.op);
            if *k == Kind::Loop {
                let fused = self.fused_into(g, i);
                if !fused.is_empty() {
                    let list: Vec<String> = fused
                        .iter()
                        .map(|f| format!("%{f} {}", g.nodes[*f].op))
                        .collect();
                    let _ = write!(out, "  ⟵ fused: {}", list.join(", "));
                }
            }
            let _ = writeln!(out);
        }
        out
    }

    /// The buffers node `n` reads when it runs: its arguments, or for a loop the
    /// arguments of every node fused into it.
    pub fn reads(&self, g: &Graph, n: NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut stack = g.nodes[n].args.clone();
        while let Some(a) = stack.pop() {
            if self.kinds[a] == Kind::Fused {
                stack.extend(&g.nodes[a].args);
            } else if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }

    /// The nodes computed inside the loop of `root`.
    pub fn fused_into(&self, g: &Graph, root: NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut stack = g.nodes[root].args.clone();
        while let Some(a) = stack.pop() {
            if self.kinds[a] == Kind::Fused && !out.contains(&a) {
                out.push(a);
                stack.extend(&g.nodes[a].args);
            }
        }
        out.sort_unstable();
        out
    }
}

/// Number of elements of a shape for batch size `batch`.
pub fn numel(s: &Shape, batch: usize) -> usize {
    crate::interp::dims(s, batch).iter().product()
}
