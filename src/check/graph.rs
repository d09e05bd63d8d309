//! The checked model: a typed graph of layer applications and tensor operations with a
//! span on every node, the parameter table, and the model's outputs, loss and
//! regularizers. This is what the checker produces and what lowering to the IR consumes.

use crate::ir::shape::Shape;
use crate::span::Span;

/// Index of a node in [`CheckedModel::nodes`].
pub type NodeId = usize;
/// Index of a layer instance in [`CheckedModel::layers`].
pub type LayerId = usize;
/// Index of a parameter in [`CheckedModel::params`].
pub type ParamId = usize;

/// The type of a value.
#[derive(Clone, Debug, PartialEq)]
pub enum Ty {
    /// An f32 tensor (rank 0 for scalars such as losses).
    Tensor(Shape),
    /// Integer class labels in `0..classes`.
    Labels {
        /// Their shape (batch first).
        shape: Shape,
        /// Number of classes.
        classes: u64,
    },
    /// A node whose checking failed; stays silent downstream.
    Error,
}

impl Ty {
    /// The shape, for tensors and labels.
    pub fn shape(&self) -> Option<&Shape> {
        match self {
            Ty::Tensor(s) | Ty::Labels { shape: s, .. } => Some(s),
            Ty::Error => None,
        }
    }
}

impl std::fmt::Display for Ty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ty::Tensor(s) => write!(f, "{s}"),
            Ty::Labels { shape, classes } => write!(f, "class{shape} of {classes}"),
            Ty::Error => write!(f, "{{error}}"),
        }
    }
}

/// Weight initializers (LANGUAGE.md §6).
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    /// He/Kaiming normal: std = sqrt(2 / fan_in).
    He,
    /// Xavier/Glorot uniform: a = sqrt(6 / (fan_in + fan_out)).
    Xavier,
    /// Normal with this std.
    Normal(f64),
    /// Uniform in [-a, a].
    Uniform(f64),
    /// A constant (zeros, ones, constant(v)).
    Constant(f64),
    /// PyTorch's default for recurrent layers: uniform in ±1/sqrt(hidden).
    RecurrentUniform,
}

/// What a parameter is, for regularization and reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamRole {
    /// A weight matrix or kernel: regularized by default.
    Weight,
    /// A bias.
    Bias,
    /// A normalization scale or shift, or a PReLU slope.
    Norm,
    /// Running statistics: not trained.
    State,
}

/// One parameter or state tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// Stable name (`logits.dense.2.weight`).
    pub name: String,
    /// Its shape (no batch dimension).
    pub shape: Vec<u64>,
    /// How it starts.
    pub init: Init,
    /// Its role.
    pub role: ParamRole,
    /// Trained by the optimizer (false for frozen and state values).
    pub trainable: bool,
    /// The layer that owns it.
    pub layer: LayerId,
}

impl ParamSpec {
    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// A recurrent cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    /// Elman RNN (gates: 1).
    Rnn,
    /// LSTM (gates i, f, g, o).
    Lstm,
    /// GRU (gates r, z, n).
    Gru,
}

impl Cell {
    /// Gate count G in the weight shapes `[G·h, F]`.
    pub fn gates(self) -> u64 {
        match self {
            Cell::Rnn => 1,
            Cell::Lstm => 4,
            Cell::Gru => 3,
        }
    }
}

/// A layer that owns parameters, with its configuration.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerKind {
    /// `dense(units, bias)`.
    Dense {
        /// Output features.
        units: u64,
        /// Has a bias.
        bias: bool,
    },
    /// `conv1d` / `conv2d`: all sizes per spatial axis.
    Conv {
        /// Output channels.
        out: u64,
        /// Kernel size per spatial axis.
        kernel: Vec<u64>,
        /// Stride per axis.
        stride: Vec<u64>,
        /// Padding per axis.
        pad: Vec<u64>,
        /// Dilation per axis.
        dilation: Vec<u64>,
        /// Has a bias.
        bias: bool,
    },
    /// `batchnorm`.
    BatchNorm {
        /// Running-average momentum.
        momentum: f64,
        /// Variance epsilon.
        eps: f64,
    },
    /// `layernorm`.
    LayerNorm {
        /// Variance epsilon.
        eps: f64,
    },
    /// `prelu`: a learnable slope per channel.
    Prelu,
    /// `embedding(vocab, dim)`.
    Embedding {
        /// Vocabulary size.
        vocab: u64,
        /// Embedding width.
        dim: u64,
    },
    /// `rnn`, `lstm`, `gru`.
    Recurrent {
        /// The cell.
        cell: Cell,
        /// Hidden size.
        hidden: u64,
        /// Activation of the Elman RNN (`tanh` or `relu`).
        activation: RnnActivation,
        /// Also run backwards and concatenate.
        bidirectional: bool,
        /// Return every step (`[N, T, h]`) rather than the last state.
        sequence: bool,
    },
    /// A block used as a shared `layer` value: its parameters belong to inner layers.
    Block,
}

impl LayerKind {
    /// The DSL word for this layer.
    pub fn word(&self) -> &'static str {
        match self {
            LayerKind::Dense { .. } => "dense",
            LayerKind::Conv { kernel, .. } if kernel.len() == 1 => "conv1d",
            LayerKind::Conv { .. } => "conv2d",
            LayerKind::BatchNorm { .. } => "batchnorm",
            LayerKind::LayerNorm { .. } => "layernorm",
            LayerKind::Prelu => "prelu",
            LayerKind::Embedding { .. } => "embedding",
            LayerKind::Recurrent {
                cell: Cell::Rnn, ..
            } => "rnn",
            LayerKind::Recurrent {
                cell: Cell::Lstm, ..
            } => "lstm",
            LayerKind::Recurrent {
                cell: Cell::Gru, ..
            } => "gru",
            LayerKind::Block => "block",
        }
    }
}

/// One instance of a parameterized layer (shared by all its uses).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerInst {
    /// Its name prefix (`logits.dense.2`).
    pub name: String,
    /// Its kind and configuration.
    pub kind: LayerKind,
    /// The input type it was instantiated for.
    pub input: Ty,
    /// Its output type.
    pub output: Ty,
    /// Its parameters and state.
    pub params: Vec<ParamId>,
    /// Where it was written.
    pub span: Span,
    /// Forward multiply-adds per sample of one application.
    pub macs: u64,
    /// The weights use the default initializer (he before the ReLU family, else xavier).
    pub default_init: bool,
}

/// The activation of an Elman RNN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RnnActivation {
    /// tanh.
    Tanh,
    /// max(0, x).
    Relu,
}

impl RnnActivation {
    /// The word of `rnn(activation: …)`.
    pub fn word(self) -> &'static str {
        match self {
            RnnActivation::Tanh => "tanh",
            RnnActivation::Relu => "relu",
        }
    }
}

/// Pooling kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// Maximum over the window.
    Max,
    /// Average over the window.
    Avg,
}

/// Reductions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceKind {
    /// Σ.
    Sum,
    /// Mean.
    Mean,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
}

pub use crate::ir::op::LossKind;
pub use crate::ops::Func;

/// A node's operation.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A model input (index into `CheckedModel::inputs`).
    Input(usize),
    /// A model target (index into `CheckedModel::targets`).
    Target(usize),
    /// A numeric constant (scalar).
    Const(f64),
    /// Apply a parameterized layer.
    Layer(LayerId),
    /// An elementwise function of the registry (activations and math).
    Activation(Func),
    /// Softmax along an axis.
    Softmax(usize),
    /// Log-softmax along an axis.
    LogSoftmax(usize),
    /// Inverted dropout with probability p.
    Dropout(f64),
    /// Sliding-window pooling.
    Pool {
        /// Max or average.
        kind: PoolKind,
        /// Window per spatial axis.
        kernel: Vec<u64>,
        /// Stride per axis.
        stride: Vec<u64>,
        /// Padding per axis.
        pad: Vec<u64>,
        /// Average pooling divides by the full window (true) or by the real elements.
        count_pad: bool,
    },
    /// Pooling over all spatial positions.
    GlobalPool(PoolKind),
    /// Spatial pyramid (max) pooling with these levels.
    Spp(Vec<u64>),
    /// `[N, ...] → [N, prod]`.
    Flatten,
    /// To the node's own shape.
    Reshape,
    /// Last time step `[N, T, F] → [N, F]`.
    Last,
    /// First time step.
    First,
    /// Elementwise binary operation with broadcasting, or `@`.
    Binary(crate::syntax::ast::BinOp),
    /// −x.
    Neg,
    /// A reduction over axes.
    Reduce {
        /// Which.
        kind: ReduceKind,
        /// Axes reduced (sorted).
        axes: Vec<usize>,
        /// Keep reduced axes as 1.
        keepdims: bool,
    },
    /// Concatenation along an axis.
    Concat(usize),
    /// A loss of (prediction, target).
    Loss(LossKind),
}

impl Op {
    /// The DSL word of a node that is not a parameterized layer (`relu`, `maxpool2d`,
    /// `+`); layers are named by [`LayerKind::word`].
    pub fn word(&self) -> &'static str {
        match self {
            Op::Input(_) => "input",
            Op::Target(_) => "target",
            Op::Const(_) => "constant",
            Op::Layer(_) => "layer",
            Op::Activation(f) => f.def().word(),
            Op::Softmax(_) => "softmax",
            Op::LogSoftmax(_) => "log_softmax",
            Op::Dropout(_) => "dropout",
            Op::Pool { kind, kernel, .. } => match (kind, kernel.len()) {
                (PoolKind::Max, 1) => "maxpool1d",
                (PoolKind::Max, _) => "maxpool2d",
                (PoolKind::Avg, 1) => "avgpool1d",
                (PoolKind::Avg, _) => "avgpool2d",
            },
            Op::GlobalPool(PoolKind::Max) => "global_maxpool",
            Op::GlobalPool(PoolKind::Avg) => "global_avgpool",
            Op::Spp(_) => "spp",
            Op::Flatten => "flatten",
            Op::Reshape => "reshape",
            Op::Last => "last",
            Op::First => "first",
            Op::Binary(op) => op.symbol(),
            Op::Neg => "-",
            Op::Reduce { kind, .. } => match kind {
                ReduceKind::Sum => "sum",
                ReduceKind::Mean => "mean",
                ReduceKind::Max => "max",
                ReduceKind::Min => "min",
            },
            Op::Concat(_) => "concat",
            Op::Loss(l) => match l {
                LossKind::Mae => "mae",
                LossKind::Mse => "mse",
                LossKind::Huber(_) => "huber",
                LossKind::Exponential => "exponential",
                LossKind::Hinge => "hinge",
                LossKind::CrossEntropy(_) => "cross_entropy",
                LossKind::Bce => "bce",
                LossKind::Focal(..) => "focal",
                LossKind::ZeroOne => "zero_one",
            },
        }
    }
}

/// One node of the checked graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The operation.
    pub op: Op,
    /// Its operands.
    pub inputs: Vec<NodeId>,
    /// Its type.
    pub ty: Ty,
    /// The source span of the expression it came from.
    pub span: Span,
    /// A readable name: `c1.conv2d`, `h.relu`, the input's name, or the operator.
    pub label: String,
}

/// A declared input or target.
#[derive(Clone, Debug, PartialEq)]
pub struct Port {
    /// Its name.
    pub name: String,
    /// Its node.
    pub node: NodeId,
    /// Where it was declared.
    pub span: Span,
}

/// A regularizer term.
#[derive(Clone, Debug, PartialEq)]
pub struct Regularizer {
    /// True for L1 (λ·Σ|w|), false for L2 (λ·Σw²).
    pub l1: bool,
    /// λ.
    pub lambda: f64,
    /// The parameters it covers.
    pub params: Vec<ParamId>,
    /// Where it was written.
    pub span: Span,
}

/// A named binding of the model body (for lints and reports).
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    /// The name.
    pub name: String,
    /// Its node.
    pub node: NodeId,
    /// The name's span.
    pub span: Span,
}

/// A binding inside one instance of a block.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockBinding {
    /// The name inside the block.
    pub name: String,
    /// Its node in this instance.
    pub node: NodeId,
    /// The name's span in the block body.
    pub span: Span,
    /// The node the instance returns.
    pub ret: NodeId,
}

/// A model after checking.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedModel {
    /// The model's name.
    pub name: String,
    /// The `model NAME` span.
    pub span: Span,
    /// The batch symbol as written (`N`).
    pub batch_symbol: String,
    /// Inputs in declaration order.
    pub inputs: Vec<Port>,
    /// Targets in declaration order.
    pub targets: Vec<Port>,
    /// All nodes, operands before users.
    pub nodes: Vec<Node>,
    /// Parameterized layer instances.
    pub layers: Vec<LayerInst>,
    /// Parameters and state, in creation order.
    pub params: Vec<ParamSpec>,
    /// Named outputs.
    pub outputs: Vec<Port>,
    /// The loss node, when the model has one.
    pub loss: Option<NodeId>,
    /// Regularizers.
    pub regularizers: Vec<Regularizer>,
    /// Model-level bindings in order.
    pub bindings: Vec<Binding>,
}

impl CheckedModel {
    /// Total number of trainable parameter values.
    pub fn trainable_count(&self) -> u64 {
        self.params
            .iter()
            .filter(|p| p.trainable)
            .map(ParamSpec::numel)
            .sum()
    }
}
