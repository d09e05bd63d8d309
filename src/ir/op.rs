//! The IR's operations. Elementwise operations broadcast as NumPy does; shapes are the
//! node's own (`Node::shape`), so an operation only carries what its shape does not say.

use std::fmt;

/// Losses (LANGUAGE.md §8). Each is a mean over the batch and other non-class dims.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum LossKind {
    /// |pred − y|.
    Mae,
    /// (pred − y)².
    Mse,
    /// Huber with this delta.
    Huber(f64),
    /// exp(−y·score).
    Exponential,
    /// max(0, 1 − y·score), or multi-class hinge with labels.
    Hinge,
    /// Softmax cross-entropy with label smoothing.
    CrossEntropy(f64),
    /// Sigmoid binary cross-entropy.
    Bce,
    /// Focal loss (gamma, alpha).
    Focal(f64, f64),
    /// Fraction misclassified (a metric).
    ZeroOne,
}

pub use crate::ops::elementwise::Binary;
pub use crate::ops::Func;

/// Reductions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Reduce {
    /// Σ.
    Sum,
    /// Mean (over the batch too when axis 0 is reduced: divides by the run-time size).
    Mean,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
}

/// Scalars supplied at run time to every training step, so that a schedule or a new
/// hyperparameter never recompiles.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Hyper {
    /// The learning rate of this step (after the schedule).
    Lr,
    /// SGD/RMSprop momentum.
    Momentum,
    /// Adam β₁.
    Beta1,
    /// Adam β₂.
    Beta2,
    /// 1 − β₁ᵗ (bias correction at step t).
    Bias1,
    /// 1 − β₂ᵗ.
    Bias2,
    /// Denominator ε.
    Eps,
    /// Weight decay.
    WeightDecay,
    /// RMSprop α.
    Alpha,
    /// Clipping threshold (norm or value).
    Clip,
    /// The number of this training step (from 1): seeds dropout and rrelu noise.
    Step,
    /// The batch's first row in this call: 0, or a shard's offset in its batch when a
    /// step is split into shards (docs/SCALING.md). Noise for a row is drawn at the
    /// row's place in the batch's stream, so it does not depend on which shard computes
    /// it.
    RowOffset,
    /// A shard's share of its batch's rows: its gradient's weight in the batch's.
    ShardWeight,
}

/// The geometry of a convolution over 1 or 2 spatial axes (one entry per axis).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConvGeom {
    /// Stride per spatial axis.
    pub stride: Vec<usize>,
    /// Zero padding on both sides, per spatial axis.
    pub pad: Vec<usize>,
    /// Dilation per spatial axis.
    pub dilation: Vec<usize>,
}

/// Max or average pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PoolKind {
    /// The largest element of each window (padding counts as −∞).
    Max,
    /// The mean of each window.
    Avg,
}

/// The windows of a pooling over 1 or 2 spatial axes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Windows {
    /// Windows of `k` every `stride`, with `pad` on both sides, per spatial axis.
    Regular {
        /// Window per axis.
        k: Vec<usize>,
        /// Stride per axis.
        stride: Vec<usize>,
        /// Padding per axis.
        pad: Vec<usize>,
        /// An average divides by the whole window (padding included).
        count_pad: bool,
    },
    /// `bins` windows per axis covering the input, as PyTorch's adaptive pooling: bin `i`
    /// of `n` over `len` spans `⌊i·len/n⌋ .. ⌈(i+1)·len/n⌉`.
    Adaptive {
        /// Bins per axis.
        bins: Vec<usize>,
    },
}

/// A pooling: the kind and its windows.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pool {
    /// Max or average.
    pub kind: PoolKind,
    /// The windows.
    pub windows: Windows,
}

/// Random values drawn per element by [`Op::Noise`].
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Noise {
    /// Inverted dropout's mask: 0 with probability p, else 1/(1 − p).
    Dropout(f64),
    /// Uniform in [lower, upper] (rrelu's slopes).
    Uniform(f64, f64),
}

/// The cell of a fused recurrence, with PyTorch's equations and gate order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Cell {
    /// Elman cell: h = tanh(x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh).
    RnnTanh,
    /// Elman cell with relu instead of tanh.
    RnnRelu,
    /// LSTM, gates i, f, g, o: c = f·c + i·g, h = o·tanh(c).
    Lstm,
    /// GRU, gates r, z, n: n = tanh(xₙ + r·(h·W_hnᵀ + b_hn)), h = (1 − z)·n + z·h.
    Gru,
}

impl Cell {
    /// Gate count G: the pre-activations of a step are `[G·H]`.
    pub fn gates(self) -> usize {
        match self {
            Cell::RnnTanh | Cell::RnnRelu => 1,
            Cell::Lstm => 4,
            Cell::Gru => 3,
        }
    }

    /// Width of a step's reserve in units of H (see [`Recurrence`]).
    pub fn reserve(self) -> usize {
        match self {
            Cell::RnnTanh | Cell::RnnRelu => 2,
            Cell::Lstm => 7,
            Cell::Gru => 6,
        }
    }

    /// Width of a step's gradient in units of G·H (see [`Op::RecurrenceGrad`]): the GRU's
    /// input and hidden sides differ in the n gate.
    pub fn grad_sides(self) -> usize {
        match self {
            Cell::Gru => 2,
            _ => 1,
        }
    }
}

/// One direction of a recurrent layer over all its time steps, as one operation (the
/// cuDNN design). Each step of the result, the "reserve" `[R·H]`, holds the new state
/// and what the VJP needs, in blocks of H:
/// rnn `[h, h_prev]`; lstm `[h, h_prev, c, i, f, g, o]`; gru `[h, h_prev, r, z, n, hn]`
/// with `hn = h_prev·W_hnᵀ + b_hn`. The state before the first step is zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recurrence {
    /// The cell.
    pub cell: Cell,
    /// The state size H.
    pub hidden: usize,
    /// Steps run from t = T − 1 down to 0.
    pub reverse: bool,
}

/// A mutable slot the training step writes back.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Slot {
    /// A parameter.
    Param(usize),
    /// Optimizer state.
    State(usize),
}

/// An IR operation.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Op {
    /// Model input `k`.
    Input(usize),
    /// Model target `k`.
    Target(usize),
    /// Parameter `k`.
    Param(usize),
    /// Optimizer or layer state `k`.
    State(usize),
    /// A run-time scalar hyperparameter.
    Hyper(Hyper),
    /// The run-time batch size as a scalar.
    BatchSize,
    /// A scalar constant.
    Const(f64),
    /// `f(x)` elementwise.
    Map(Func),
    /// `g · f'(x)` elementwise; arguments (x, g).
    MapGrad(Func),
    /// Elementwise with broadcasting; arguments (a, b).
    Binary(Binary),
    /// Matrix product of the arguments seen as matrices (all leading dimensions
    /// collapsed into rows), each optionally transposed. Without `ta` the result keeps a's
    /// leading dimensions: `[.., m, k]·[k, n] → [.., m, n]`; with `ta` the leading
    /// dimensions are contracted: `[.., k]ᵀ·[.., n] → [k, n]`.
    MatMul {
        /// Transpose a.
        ta: bool,
        /// Transpose b.
        tb: bool,
    },
    /// NumPy `matmul` over the last two dimensions, leading ones broadcast.
    BatchMatMul {
        /// Transpose the last two dimensions of a.
        ta: bool,
        /// Transpose the last two dimensions of b.
        tb: bool,
    },
    /// Same elements, the node's shape.
    Reshape,
    /// Broadcast to the node's shape.
    BroadcastTo,
    /// Sum broadcast dimensions away, down to the node's shape.
    SumTo,
    /// A reduction over axes.
    Reduce {
        /// Which.
        kind: Reduce,
        /// Axes (sorted).
        axes: Vec<usize>,
        /// Reduced axes stay as size 1.
        keepdims: bool,
    },
    /// Softmax along an axis.
    Softmax(usize),
    /// Log-softmax along an axis.
    LogSoftmax(usize),
    /// Softmax's VJP; arguments (y, g): `y·(g − Σ g·y)`.
    SoftmaxGrad(usize),
    /// Log-softmax's VJP; arguments (y, g): `g − eʸ·Σ g`.
    LogSoftmaxGrad(usize),
    /// Concatenation along an axis.
    Concat(usize),
    /// `len` elements from `start` along `axis`.
    Slice {
        /// Axis.
        axis: usize,
        /// First index.
        start: usize,
        /// Count.
        len: usize,
    },
    /// The slice's VJP: `g` placed at `start` along `axis` in zeros of the node's shape.
    SliceGrad {
        /// Axis.
        axis: usize,
        /// First index.
        start: usize,
    },
    /// A loss of (prediction, target): a scalar mean over the batch.
    Loss(LossKind),
    /// The loss's VJP w.r.t. the prediction; arguments (prediction, target, g).
    LossGrad(LossKind),
    /// Cross-correlation of (x `[N, C, S..]`, w `[O, C, K..]`) as PyTorch's `conv1d/2d`.
    Conv(ConvGeom),
    /// The convolution's VJP w.r.t. x; arguments (g, w).
    ConvGradInput(ConvGeom),
    /// The convolution's VJP w.r.t. w; arguments (x, g).
    ConvGradWeight(ConvGeom),
    /// Pooling over the spatial axes of `[N, C, S..]`.
    Pool(Pool),
    /// The pooling's VJP; arguments (x, g). Max pooling sends each window's gradient to
    /// its first largest element, as PyTorch.
    PoolGrad(Pool),
    /// Rows of a table by id; arguments (table `[V, D]`, ids `[..]`) → `[.., D]`.
    Gather,
    /// Gather's VJP w.r.t. the table; arguments (ids, g): g's rows summed per id.
    GatherGrad,
    /// The batch statistics of batch normalization, per channel (axis 1) of x `[N, C, S..]`
    /// over the batch and the spatial axes (M = N·ΠS elements each) → `[2, C]`: the mean
    /// μ = Σx/M, then the biased variance σ² = Σ(x − μ)²/M.
    BatchStats,
    /// Batch normalization in training mode; arguments (x `[N, C, S..]`, stats `[2, C]`
    /// = `BatchStats(x)`, γ `[C]`, β `[C]`) → γ·x̂ + β with x̂ = (x − μ)/√(σ² + eps).
    /// Its VJP is the whole layer's, through the statistics too (so `stats` gets none):
    /// dx = γ/√(σ² + eps)·(g − Σg/M − x̂·Σg·x̂/M), dγ = Σg·x̂, dβ = Σg.
    BatchNorm {
        /// Added to the variance.
        eps: f64,
    },
    /// The sums of batch normalization's VJP; arguments (x, stats, g) → `[2, C]`: Σg·x̂,
    /// then Σg (dγ and dβ).
    BatchNormSums {
        /// Added to the variance.
        eps: f64,
    },
    /// Batch normalization's VJP w.r.t. x; arguments (x, stats, γ, sums, g), `sums` from
    /// [`Op::BatchNormSums`] → γ/√(σ² + eps)·(g − Σg/M − x̂·Σg·x̂/M).
    BatchNormGrad {
        /// Added to the variance.
        eps: f64,
    },
    /// A recurrent layer's direction over all steps; arguments (xw `[N, T, G·H]`, the input
    /// projections; w_hh `[G·H, H]`; the bias `[G·H]` added with `h·W_hhᵀ`) → the reserve
    /// `[N, T, R·H]` (see [`Recurrence`]). The lowering gives an LSTM or plain RNN
    /// `x·W_ihᵀ` and `b_ih + b_hh`, a GRU `x·W_ihᵀ + b_ih` and `b_hh`.
    Recurrence(Recurrence),
    /// The recurrence's VJP (backpropagation through time); arguments (reserve, w_hh, g)
    /// with g the gradient of the whole reserve `[N, T, R·H]`, or of its h block alone
    /// `[N, T, H]` (the other blocks' then zero) → the gradient of the gate pre-activations
    /// `[N, T, G·H]`, the same for xw and for `h_prev·W_hhᵀ + b_hh`; for the GRU
    /// `[N, T, 2·G·H]`, xw's then the hidden side's.
    RecurrenceGrad(Recurrence),
    /// Random values of the node's shape; argument: the step number. The same seed, salt
    /// and step give the same values on every backend.
    Noise {
        /// The distribution.
        dist: Noise,
        /// The run's seed.
        seed: u64,
        /// Distinguishes the noise nodes of one graph.
        salt: u64,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Input(k) => write!(f, "input#{k}"),
            Op::Target(k) => write!(f, "target#{k}"),
            Op::Param(k) => write!(f, "param#{k}"),
            Op::State(k) => write!(f, "state#{k}"),
            Op::Hyper(h) => write!(f, "hyper.{}", format!("{h:?}").to_lowercase()),
            Op::BatchSize => write!(f, "batch_size"),
            Op::Const(c) => write!(f, "const {c}"),
            Op::Map(func) => write!(f, "{func}"),
            Op::MapGrad(func) => write!(f, "{func}_grad"),
            Op::Binary(b) => write!(f, "{}", format!("{b:?}").to_lowercase()),
            Op::MatMul { ta, tb } => write!(
                f,
                "matmul{}{}",
                if *ta { " ta" } else { "" },
                if *tb { " tb" } else { "" }
            ),
            Op::BatchMatMul { ta, tb } => {
                write!(
                    f,
                    "batch_matmul{}{}",
                    if *ta { " ta" } else { "" },
                    if *tb { " tb" } else { "" }
                )
            }
            Op::Reshape => write!(f, "reshape"),
            Op::BroadcastTo => write!(f, "broadcast_to"),
            Op::SumTo => write!(f, "sum_to"),
            Op::Reduce {
                kind,
                axes,
                keepdims,
            } => {
                let kind = format!("{kind:?}").to_lowercase();
                write!(
                    f,
                    "reduce_{kind} axes={axes:?}{}",
                    if *keepdims { " keepdims" } else { "" }
                )
            }
            Op::Softmax(a) => write!(f, "softmax axis={a}"),
            Op::LogSoftmax(a) => write!(f, "log_softmax axis={a}"),
            Op::SoftmaxGrad(a) => write!(f, "softmax_grad axis={a}"),
            Op::LogSoftmaxGrad(a) => write!(f, "log_softmax_grad axis={a}"),
            Op::Concat(a) => write!(f, "concat axis={a}"),
            Op::Slice { axis, start, len } => {
                write!(f, "slice axis={axis} start={start} len={len}")
            }
            Op::SliceGrad { axis, start } => write!(f, "slice_grad axis={axis} start={start}"),
            Op::Loss(l) => write!(f, "loss {l:?}"),
            Op::LossGrad(l) => write!(f, "loss_grad {l:?}"),
            Op::Conv(c) => write!(f, "conv {c}"),
            Op::ConvGradInput(c) => write!(f, "conv_grad_input {c}"),
            Op::ConvGradWeight(c) => write!(f, "conv_grad_weight {c}"),
            Op::Pool(p) => write!(f, "pool {p}"),
            Op::PoolGrad(p) => write!(f, "pool_grad {p}"),
            Op::Gather => write!(f, "gather"),
            Op::GatherGrad => write!(f, "gather_grad"),
            Op::BatchStats => write!(f, "batch_stats"),
            Op::BatchNorm { eps } => write!(f, "batchnorm eps={eps}"),
            Op::BatchNormSums { eps } => write!(f, "batchnorm_sums eps={eps}"),
            Op::BatchNormGrad { eps } => write!(f, "batchnorm_grad eps={eps}"),
            Op::Recurrence(r) => write!(f, "recurrence {r}"),
            Op::RecurrenceGrad(r) => write!(f, "recurrence_grad {r}"),
            Op::Noise { dist, salt, .. } => write!(f, "noise {dist:?} salt={salt}"),
        }
    }
}

impl fmt::Display for ConvGeom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stride={:?} pad={:?} dilation={:?}",
            self.stride, self.pad, self.dilation
        )
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = format!("{:?}", self.kind).to_lowercase();
        match &self.windows {
            Windows::Regular {
                k,
                stride,
                pad,
                count_pad,
            } => write!(
                f,
                "{kind} k={k:?} stride={stride:?} pad={pad:?}{}",
                if *count_pad { " count_pad" } else { "" }
            ),
            Windows::Adaptive { bins } => write!(f, "{kind} adaptive bins={bins:?}"),
        }
    }
}

impl fmt::Display for Recurrence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cell = match self.cell {
            Cell::RnnTanh => "rnn tanh",
            Cell::RnnRelu => "rnn relu",
            Cell::Lstm => "lstm",
            Cell::Gru => "gru",
        };
        write!(
            f,
            "{cell} hidden={}{}",
            self.hidden,
            if self.reverse { " reverse" } else { "" }
        )
    }
}
