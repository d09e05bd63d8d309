//! Every built-in callable of the model language with its arguments and defaults: the
//! table name resolution, argument binding, "did you mean" and the REPL's completion
//! read. Elementwise functions come from [`elementwise`](super::elementwise); the others
//! are listed here, and their shape rules and lowerings live in the stages.

use super::elementwise::{Elem, Spelling};
use std::sync::OnceLock;

/// What a built-in is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A layer with parameters (dense, conv2d, ...).
    Layer,
    /// A layer without parameters (pooling, dropout, flatten, ...).
    Shaping,
    /// An elementwise activation.
    Activation,
    /// Elementwise math, reductions, concat.
    Function,
    /// A loss.
    Loss,
    /// A regularizer (only after `regularize`).
    Regularizer,
    /// A weight initializer (only as `init:`).
    Init,
}

/// Which built-in a [`Sig`] is. Every stage that gives built-ins their meaning matches
/// on this exhaustively, so a new catalog entry does not compile until it has a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Id {
    /// A layer with parameters.
    Layer(Layer),
    /// A layer without parameters.
    Shaping(Shaping),
    /// An elementwise function of [`elementwise`](super::elementwise).
    Elementwise(Elem),
    /// Softmax, reductions, concat.
    Function(Function),
    /// A loss.
    Loss(Loss),
    /// A regularizer.
    Regularizer(Regularizer),
    /// A weight initializer.
    Init(Init),
}

/// The layers with parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Layer {
    Dense,
    Conv1d,
    Conv2d,
    Batchnorm,
    Layernorm,
    Embedding,
    Rnn,
    Lstm,
    Gru,
    Prelu,
}

/// The layers without parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Shaping {
    Maxpool1d,
    Maxpool2d,
    Avgpool1d,
    Avgpool2d,
    GlobalAvgpool,
    GlobalMaxpool,
    Spp,
    Dropout,
    Flatten,
    Reshape,
    Last,
    First,
}

/// The functions that are not elementwise (softmax and log_softmax are spelled as
/// activations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Function {
    Softmax,
    LogSoftmax,
    Sum,
    Mean,
    Max,
    Min,
    Concat,
}

/// The losses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Loss {
    Mae,
    L1Loss,
    Mse,
    Huber,
    Exponential,
    Hinge,
    CrossEntropy,
    Bce,
    Focal,
    ZeroOne,
}

/// The regularizers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Regularizer {
    L1,
    L2,
}

/// The weight initializers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Init {
    He,
    Xavier,
    Normal,
    Uniform,
    Zeros,
    Ones,
    Constant,
}

/// An argument's default.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Def {
    /// Must be given.
    Required,
    /// May be left out (no value).
    Optional,
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A word (`tanh`, `max`).
    Word(&'static str),
    /// A list of integers.
    Ints(&'static [i64]),
}

/// One built-in's signature.
#[derive(Clone, Debug)]
pub struct Sig {
    /// The DSL word.
    pub name: &'static str,
    /// What it is.
    pub kind: Kind,
    /// Which built-in it is: the checker dispatches on this, exhaustively.
    pub id: Id,
    /// Tensor operands taken before the other arguments (`usize::MAX`: two or more).
    pub tensors: usize,
    /// The other arguments in positional order.
    pub params: &'static [(&'static str, Def)],
}

/// Variadic tensor operands (concat).
pub const MANY: usize = usize::MAX;

use Def::*;

const SLIDE: &[(&str, Def)] = &[
    ("out", Required),
    ("k", Required),
    ("stride", Int(1)),
    ("pad", Int(0)),
    ("dilation", Int(1)),
    ("bias", Bool(true)),
    ("init", Optional),
];
const MAXPOOL: &[(&str, Def)] = &[("k", Required), ("stride", Optional), ("pad", Int(0))];
const AVGPOOL: &[(&str, Def)] = &[
    ("k", Required),
    ("stride", Optional),
    ("pad", Int(0)),
    ("count_pad", Bool(true)),
];
const RECURRENT: &[(&str, Def)] = &[
    ("h", Required),
    ("bidirectional", Bool(false)),
    ("sequence", Bool(true)),
];
const REDUCE: &[(&str, Def)] = &[("axis", Optional), ("keepdims", Bool(false))];
const CLASSIFY: &[(&str, Def)] = &[];

/// The built-ins other than elementwise functions.
static BUILTINS: &[Sig] = &[
    Sig {
        name: "dense",
        kind: Kind::Layer,
        id: Id::Layer(Layer::Dense),
        tensors: 1,
        params: &[
            ("units", Required),
            ("bias", Bool(true)),
            ("init", Optional),
        ],
    },
    Sig {
        name: "conv1d",
        kind: Kind::Layer,
        id: Id::Layer(Layer::Conv1d),
        tensors: 1,
        params: SLIDE,
    },
    Sig {
        name: "conv2d",
        kind: Kind::Layer,
        id: Id::Layer(Layer::Conv2d),
        tensors: 1,
        params: SLIDE,
    },
    Sig {
        name: "batchnorm",
        kind: Kind::Layer,
        id: Id::Layer(Layer::Batchnorm),
        tensors: 1,
        params: &[("momentum", Float(0.1)), ("eps", Float(1e-5))],
    },
    Sig {
        name: "layernorm",
        kind: Kind::Layer,
        id: Id::Layer(Layer::Layernorm),
        tensors: 1,
        params: &[("eps", Float(1e-5))],
    },
    Sig {
        name: "embedding",
        kind: Kind::Layer,
        id: Id::Layer(Layer::Embedding),
        tensors: 1,
        params: &[
            ("vocab", Required),
            ("dim", Required),
            ("frozen", Bool(false)),
            ("init", Optional),
        ],
    },
    Sig {
        name: "rnn",
        kind: Kind::Layer,
        id: Id::Layer(Layer::Rnn),
        tensors: 1,
        params: &[
            ("h", Required),
            ("activation", Word("tanh")),
            ("bidirectional", Bool(false)),
            ("sequence", Bool(true)),
        ],
    },
    Sig {
        name: "lstm",
        kind: Kind::Layer,
        id: Id::Layer(Layer::Lstm),
        tensors: 1,
        params: RECURRENT,
    },
    Sig {
        name: "gru",
        kind: Kind::Layer,
        id: Id::Layer(Layer::Gru),
        tensors: 1,
        params: RECURRENT,
    },
    Sig {
        name: "prelu",
        kind: Kind::Layer,
        id: Id::Layer(Layer::Prelu),
        tensors: 1,
        params: &[("init", Optional)],
    },
    Sig {
        name: "maxpool1d",
        kind: Kind::Shaping,
        id: Id::Shaping(Shaping::Maxpool1d),
        tensors: 1,
        params: MAXPOOL,
    },
    Sig {
        name: "maxpool2d",
        kind: Kind::Shaping,
        id: Id::Shaping(Shaping::Maxpool2d),
        tensors: 1,
        params: MAXPOOL,
    },
    Sig {
        name: "avgpool1d",
        kind: Kind::Shaping,
        id: Id::Shaping(Shaping::Avgpool1d),
        tensors: 1,
        params: AVGPOOL,
    },
    Sig {
        name: "avgpool2d",
        kind: Kind::Shaping,
        id: Id::Shaping(Shaping::Avgpool2d),
        tensors: 1,
        params: AVGPOOL,
    },
    Sig {
        name: "global_avgpool",
        kind: Kind::Shaping,
        id: Id::Shaping(Shaping::GlobalAvgpool),
        tensors: 1,
        params: &[],
    },
    Sig {
        name: "global_maxpool",
        kind: Kind::Shaping,
        id: Id::Shaping(Shaping::GlobalMaxpool),
        tensors: 1,
        params: &[],
    },
    Sig {
        name: "spp",
        kind: Kind::Shaping,
        id: Id::Shaping(Shaping::Spp),
        tensors: 1,
        params: &[("levels", Ints(&[1, 2, 4]))],
    },
    Sig {
        name: "dropout",
        kind: Kind::Shaping,
        id: Id::Shaping(Shaping::Dropout),
        tensors: 1,
        params: &[("p", Required)],
    },
    Sig {
        name: "flatten",
        kind: Kind::Shaping,
        id: Id::Shaping(Shaping::Flatten),
        tensors: 1,
        params: &[],
    },
    Sig {
        name: "reshape",
        kind: Kind::Shaping,
        id: Id::Shaping(Shaping::Reshape),
        tensors: 1,
        params: &[("shape", Required)],
    },
    Sig {
        name: "last",
        kind: Kind::Shaping,
        id: Id::Shaping(Shaping::Last),
        tensors: 1,
        params: &[],
    },
    Sig {
        name: "first",
        kind: Kind::Shaping,
        id: Id::Shaping(Shaping::First),
        tensors: 1,
        params: &[],
    },
    Sig {
        name: "softmax",
        kind: Kind::Activation,
        id: Id::Function(Function::Softmax),
        tensors: 1,
        params: &[("axis", Int(-1))],
    },
    Sig {
        name: "log_softmax",
        kind: Kind::Activation,
        id: Id::Function(Function::LogSoftmax),
        tensors: 1,
        params: &[("axis", Int(-1))],
    },
    Sig {
        name: "sum",
        kind: Kind::Function,
        id: Id::Function(Function::Sum),
        tensors: 1,
        params: REDUCE,
    },
    Sig {
        name: "mean",
        kind: Kind::Function,
        id: Id::Function(Function::Mean),
        tensors: 1,
        params: REDUCE,
    },
    Sig {
        name: "max",
        kind: Kind::Function,
        id: Id::Function(Function::Max),
        tensors: 1,
        params: REDUCE,
    },
    Sig {
        name: "min",
        kind: Kind::Function,
        id: Id::Function(Function::Min),
        tensors: 1,
        params: REDUCE,
    },
    Sig {
        name: "concat",
        kind: Kind::Function,
        id: Id::Function(Function::Concat),
        tensors: MANY,
        params: &[("axis", Int(-1))],
    },
    Sig {
        name: "mae",
        kind: Kind::Loss,
        id: Id::Loss(Loss::Mae),
        tensors: 2,
        params: &[],
    },
    Sig {
        name: "l1_loss",
        kind: Kind::Loss,
        id: Id::Loss(Loss::L1Loss),
        tensors: 2,
        params: &[],
    },
    Sig {
        name: "mse",
        kind: Kind::Loss,
        id: Id::Loss(Loss::Mse),
        tensors: 2,
        params: &[],
    },
    Sig {
        name: "huber",
        kind: Kind::Loss,
        id: Id::Loss(Loss::Huber),
        tensors: 2,
        params: &[("delta", Float(1.0))],
    },
    Sig {
        name: "exponential",
        kind: Kind::Loss,
        id: Id::Loss(Loss::Exponential),
        tensors: 2,
        params: &[],
    },
    Sig {
        name: "hinge",
        kind: Kind::Loss,
        id: Id::Loss(Loss::Hinge),
        tensors: 2,
        params: CLASSIFY,
    },
    Sig {
        name: "cross_entropy",
        kind: Kind::Loss,
        id: Id::Loss(Loss::CrossEntropy),
        tensors: 2,
        params: &[("smoothing", Float(0.0))],
    },
    Sig {
        name: "bce",
        kind: Kind::Loss,
        id: Id::Loss(Loss::Bce),
        tensors: 2,
        params: &[],
    },
    Sig {
        name: "focal",
        kind: Kind::Loss,
        id: Id::Loss(Loss::Focal),
        tensors: 2,
        params: &[("gamma", Float(2.0)), ("alpha", Float(0.25))],
    },
    Sig {
        name: "zero_one",
        kind: Kind::Loss,
        id: Id::Loss(Loss::ZeroOne),
        tensors: 2,
        params: &[],
    },
    Sig {
        name: "l1",
        kind: Kind::Regularizer,
        id: Id::Regularizer(Regularizer::L1),
        tensors: 0,
        params: &[("lambda", Required)],
    },
    Sig {
        name: "l2",
        kind: Kind::Regularizer,
        id: Id::Regularizer(Regularizer::L2),
        tensors: 0,
        params: &[("lambda", Required)],
    },
    Sig {
        name: "he",
        kind: Kind::Init,
        id: Id::Init(Init::He),
        tensors: 0,
        params: &[],
    },
    Sig {
        name: "xavier",
        kind: Kind::Init,
        id: Id::Init(Init::Xavier),
        tensors: 0,
        params: &[],
    },
    Sig {
        name: "normal",
        kind: Kind::Init,
        id: Id::Init(Init::Normal),
        tensors: 0,
        params: &[("std", Required)],
    },
    Sig {
        name: "uniform",
        kind: Kind::Init,
        id: Id::Init(Init::Uniform),
        tensors: 0,
        params: &[("a", Required)],
    },
    Sig {
        name: "zeros",
        kind: Kind::Init,
        id: Id::Init(Init::Zeros),
        tensors: 0,
        params: &[],
    },
    Sig {
        name: "ones",
        kind: Kind::Init,
        id: Id::Init(Init::Ones),
        tensors: 0,
        params: &[],
    },
    Sig {
        name: "constant",
        kind: Kind::Init,
        id: Id::Init(Init::Constant),
        tensors: 0,
        params: &[("v", Required)],
    },
];

/// Every built-in: the table above, then the elementwise functions of the model
/// language with their parameters (and the word argument that chooses a variant).
pub fn all() -> &'static [Sig] {
    static ALL: OnceLock<Vec<Sig>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut v: Vec<Sig> = BUILTINS.iter().map(Sig::clone).collect();
        for e in Elem::ALL {
            let d = e.def();
            let kind = match d.traits.dsl {
                Some(Spelling::Activation) => Kind::Activation,
                Some(Spelling::Function) => Kind::Function,
                Some(Spelling::Variant { .. }) | None => continue,
            };
            let mut params: Vec<(&'static str, Def)> = d
                .params
                .iter()
                .map(|p| (p.name, Float(p.default)))
                .collect();
            for v in Elem::ALL {
                if let Some(Spelling::Variant { of, arg, base, .. }) = v.def().traits.dsl {
                    if of == d.name && !params.iter().any(|(n, _)| *n == arg) {
                        params.push((arg, Word(base)));
                    }
                }
            }
            v.push(Sig {
                name: d.name,
                kind,
                id: Id::Elementwise(*e),
                tensors: 1,
                params: Box::leak(params.into_boxed_slice()),
            });
        }
        v
    })
}

/// The built-in called `name`.
pub fn lookup(name: &str) -> Option<&'static Sig> {
    all().iter().find(|s| s.name == name)
}

/// Built-ins usable in a model expression (not regularizers or initializers).
pub fn expression_names() -> impl Iterator<Item = &'static str> {
    all()
        .iter()
        .filter(|s| !matches!(s.kind, Kind::Regularizer | Kind::Init))
        .map(|s| s.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_agrees_with_id() {
        for s in all() {
            let ok = match s.id {
                Id::Layer(_) => s.kind == Kind::Layer,
                Id::Shaping(_) => s.kind == Kind::Shaping,
                Id::Elementwise(_) => matches!(s.kind, Kind::Activation | Kind::Function),
                Id::Function(Function::Softmax | Function::LogSoftmax) => {
                    s.kind == Kind::Activation
                }
                Id::Function(_) => s.kind == Kind::Function,
                Id::Loss(_) => s.kind == Kind::Loss,
                Id::Regularizer(_) => s.kind == Kind::Regularizer,
                Id::Init(_) => s.kind == Kind::Init,
            };
            assert!(ok, "`{}`: {:?} with {:?}", s.name, s.kind, s.id);
        }
    }

    #[test]
    fn ids_are_unique() {
        let ids: Vec<Id> = all().iter().map(|s| s.id).collect();
        for (i, a) in ids.iter().enumerate() {
            assert!(!ids[i + 1..].contains(a), "{a:?} twice");
        }
    }
}
