//! The IR: a graph of tensor operations with static shapes except the batch dimension,
//! a source span on every node that comes from the model file, and the slots a training
//! step reads and writes. Lowering builds the forward graph, autodiff extends it into the
//! training graph, and every backend (the interpreter, the JIT) runs the same graph.

pub mod build;
pub mod op;
pub mod optim;
pub mod shape;

pub use op::{
    Binary, ConvGeom, Func, Hyper, LossKind, Noise, Op, Pool, PoolKind, Reduce, Slot, Windows,
};
pub use optim::{Clip, Optimizer};
pub use shape::{Dim, Shape};

use crate::span::Span;
use std::fmt::Write;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};

/// Index of a node in [`Graph::nodes`]; nodes only refer to earlier nodes.
pub type NodeId = usize;

/// Element types. Class labels travel as f32 holding integers; the IR keeps the
/// distinction so later back ends (int8, bf16) can use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DType {
    /// 32-bit floats.
    F32,
    /// Integer class ids in `0..classes`.
    Class(u64),
}

/// One operation with its operands and result shape.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    /// The operation.
    pub op: Op,
    /// Operands (earlier nodes).
    pub args: Vec<NodeId>,
    /// Result shape.
    pub shape: Shape,
    /// Result element type.
    pub dtype: DType,
    /// Where in the model file it comes from (None for nodes autodiff or the optimizer add
    /// without a source counterpart).
    pub span: Option<Span>,
    /// A readable name for printing (`h.dense.matmul`).
    pub name: String,
}

/// An input, target, parameter or state tensor of the graph.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tensor {
    /// Its name (the parameter name of LANGUAGE.md §5, or `<param>.exp_avg`, ...).
    pub name: String,
    /// Its shape (inputs and targets start with the batch).
    pub shape: Shape,
    /// Element type.
    pub dtype: DType,
}

/// A parameter of the graph.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Param {
    /// Name and shape.
    pub tensor: Tensor,
    /// Gets a gradient and an optimizer update.
    pub trainable: bool,
}

/// Identifies a graph's contents: given at construction, and anew by every mutable access
/// to them (see [`Graph`]). Two graphs with the same id have the same contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GraphId(u64);

impl GraphId {
    fn fresh() -> GraphId {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        GraphId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// A graph: the forward pass, and after autodiff the whole training step. Its fields are
/// those of [`GraphData`], reached through `Deref`; every mutable access goes through
/// `DerefMut`, which gives the graph a new [`GraphId`], so a back end that caches compiled
/// code by id never runs it for other contents. A clone keeps the id with the contents.
#[derive(Clone, Debug)]
pub struct Graph {
    id: GraphId,
    data: GraphData,
}

/// The contents of a [`Graph`].
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GraphData {
    /// Nodes in evaluation order.
    pub nodes: Vec<Node>,
    /// Data inputs.
    pub inputs: Vec<Tensor>,
    /// Targets.
    pub targets: Vec<Tensor>,
    /// Parameters.
    pub params: Vec<Param>,
    /// State tensors (optimizer state; later, normalization statistics).
    pub states: Vec<Tensor>,
    /// Named outputs.
    pub outputs: Vec<(String, NodeId)>,
    /// The loss the model declares (without regularization).
    pub loss: Option<NodeId>,
    /// The loss that is differentiated: `loss` plus regularization.
    pub objective: Option<NodeId>,
    /// Gradients of trainable parameters (after clipping).
    pub grads: Vec<(usize, NodeId)>,
    /// Values written back after a training step.
    pub updates: Vec<(Slot, NodeId)>,
    /// A split step's gradient graph: the values each shard computes for a slot that is
    /// not updated by a gradient (batch normalization's running statistics), written
    /// back, weighted by the shards' shares and summed, after the update
    /// (docs/SCALING.md).
    #[serde(default)]
    pub averaged: Vec<(Slot, NodeId)>,
}

impl From<GraphData> for Graph {
    fn from(data: GraphData) -> Graph {
        Graph {
            id: GraphId::fresh(),
            data,
        }
    }
}

impl Default for Graph {
    fn default() -> Graph {
        Graph::from(GraphData::default())
    }
}

/// Graphs are equal when their contents are (whatever their ids).
impl PartialEq for Graph {
    fn eq(&self, other: &Graph) -> bool {
        self.data == other.data
    }
}

impl Deref for Graph {
    type Target = GraphData;

    fn deref(&self) -> &GraphData {
        &self.data
    }
}

impl DerefMut for Graph {
    /// The contents, to change: the graph gets a new id.
    fn deref_mut(&mut self) -> &mut GraphData {
        self.id = GraphId::fresh();
        &mut self.data
    }
}

impl Graph {
    /// The id of the graph's current contents.
    pub fn id(&self) -> GraphId {
        self.id
    }

    /// The node `id`.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    /// Adds a node.
    pub fn push(
        &mut self,
        op: Op,
        args: Vec<NodeId>,
        shape: Shape,
        dtype: DType,
        span: Option<Span>,
        name: impl Into<String>,
    ) -> NodeId {
        self.nodes.push(Node {
            op,
            args,
            shape,
            dtype,
            span,
            name: name.into(),
        });
        self.nodes.len() - 1
    }

    /// The nodes the given roots depend on, as a mask.
    pub fn live(&self, roots: &[NodeId]) -> Vec<bool> {
        let mut live = vec![false; self.nodes.len()];
        let mut stack = roots.to_vec();
        while let Some(n) = stack.pop() {
            if !std::mem::replace(&mut live[n], true) {
                stack.extend(&self.nodes[n].args);
            }
        }
        live
    }

    /// Every node a training step needs: the loss, the gradients and the updates.
    pub fn step_roots(&self) -> Vec<NodeId> {
        let mut roots: Vec<NodeId> = self.loss.into_iter().chain(self.objective).collect();
        roots.extend(self.grads.iter().map(|(_, n)| *n));
        roots.extend(self.updates.iter().map(|(_, n)| *n));
        roots
    }

    /// The graph as text, one node a line: `%7: [N, 128] = add %5, %6    # h.dense  (line 4)`.
    pub fn print(&self, sources: Option<&crate::span::Sources>) -> String {
        let mut out = String::new();
        let tensors = |title: &str, ts: &[Tensor], out: &mut String| {
            for (i, t) in ts.iter().enumerate() {
                let _ = writeln!(out, "{title}#{i} {}: {}", t.name, t.shape);
            }
        };
        tensors("input", &self.inputs, &mut out);
        tensors("target", &self.targets, &mut out);
        for (i, p) in self.params.iter().enumerate() {
            let frozen = if p.trainable { "" } else { " (frozen)" };
            let _ = writeln!(
                out,
                "param#{i} {}: {}{frozen}",
                p.tensor.name, p.tensor.shape
            );
        }
        tensors("state", &self.states, &mut out);
        for (i, n) in self.nodes.iter().enumerate() {
            let args: Vec<String> = n.args.iter().map(|a| format!("%{a}")).collect();
            let mut line = format!("%{i}: {} = {}", n.shape, n.op);
            if !args.is_empty() {
                let _ = write!(line, " {}", args.join(", "));
            }
            let mut note = n.name.clone();
            if let (Some(span), Some(src)) = (n.span, sources) {
                let (l, c) = src.line_col(span.file, span.start);
                let _ = write!(note, " @{l}:{c}");
            }
            if note.is_empty() {
                let _ = writeln!(out, "{line}");
            } else {
                let _ = writeln!(out, "{line:<56} # {note}");
            }
        }
        for (name, n) in &self.outputs {
            let _ = writeln!(out, "output {name} = %{n}");
        }
        if let Some(l) = self.loss {
            let _ = writeln!(out, "loss = %{l}");
        }
        if let Some(o) = self.objective {
            let _ = writeln!(out, "objective = %{o}");
        }
        for (p, n) in &self.grads {
            let _ = writeln!(out, "grad {} = %{n}", self.params[*p].tensor.name);
        }
        for (slot, n) in &self.updates {
            let name = match slot {
                Slot::Param(p) => &self.params[*p].tensor.name,
                Slot::State(s) => &self.states[*s].name,
            };
            let _ = writeln!(out, "update {name} = %{n}");
        }
        out
    }
}
