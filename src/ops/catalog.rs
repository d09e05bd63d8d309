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
    /// Tensor operands taken before the other arguments (`usize::MAX`: two or more).
    pub tensors: usize,
    /// The other arguments in positional order.
    pub params: &'static [(&'static str, Def)],
}

/// Variadic tensor operands (concat).
pub const MANY: usize = usize::MAX;

use Def::*;
use Kind::*;

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
        kind: Layer,
        tensors: 1,
        params: &[
            ("units", Required),
            ("bias", Bool(true)),
            ("init", Optional),
        ],
    },
    Sig {
        name: "conv1d",
        kind: Layer,
        tensors: 1,
        params: SLIDE,
    },
    Sig {
        name: "conv2d",
        kind: Layer,
        tensors: 1,
        params: SLIDE,
    },
    Sig {
        name: "batchnorm",
        kind: Layer,
        tensors: 1,
        params: &[("momentum", Float(0.1)), ("eps", Float(1e-5))],
    },
    Sig {
        name: "layernorm",
        kind: Layer,
        tensors: 1,
        params: &[("eps", Float(1e-5))],
    },
    Sig {
        name: "embedding",
        kind: Layer,
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
        kind: Layer,
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
        kind: Layer,
        tensors: 1,
        params: RECURRENT,
    },
    Sig {
        name: "gru",
        kind: Layer,
        tensors: 1,
        params: RECURRENT,
    },
    Sig {
        name: "prelu",
        kind: Layer,
        tensors: 1,
        params: &[("init", Optional)],
    },
    Sig {
        name: "maxpool1d",
        kind: Shaping,
        tensors: 1,
        params: MAXPOOL,
    },
    Sig {
        name: "maxpool2d",
        kind: Shaping,
        tensors: 1,
        params: MAXPOOL,
    },
    Sig {
        name: "avgpool1d",
        kind: Shaping,
        tensors: 1,
        params: AVGPOOL,
    },
    Sig {
        name: "avgpool2d",
        kind: Shaping,
        tensors: 1,
        params: AVGPOOL,
    },
    Sig {
        name: "global_avgpool",
        kind: Shaping,
        tensors: 1,
        params: &[],
    },
    Sig {
        name: "global_maxpool",
        kind: Shaping,
        tensors: 1,
        params: &[],
    },
    Sig {
        name: "spp",
        kind: Shaping,
        tensors: 1,
        params: &[("levels", Ints(&[1, 2, 4]))],
    },
    Sig {
        name: "dropout",
        kind: Shaping,
        tensors: 1,
        params: &[("p", Required)],
    },
    Sig {
        name: "flatten",
        kind: Shaping,
        tensors: 1,
        params: &[],
    },
    Sig {
        name: "reshape",
        kind: Shaping,
        tensors: 1,
        params: &[("shape", Required)],
    },
    Sig {
        name: "last",
        kind: Shaping,
        tensors: 1,
        params: &[],
    },
    Sig {
        name: "first",
        kind: Shaping,
        tensors: 1,
        params: &[],
    },
    Sig {
        name: "softmax",
        kind: Activation,
        tensors: 1,
        params: &[("axis", Int(-1))],
    },
    Sig {
        name: "log_softmax",
        kind: Activation,
        tensors: 1,
        params: &[("axis", Int(-1))],
    },
    Sig {
        name: "sum",
        kind: Function,
        tensors: 1,
        params: REDUCE,
    },
    Sig {
        name: "mean",
        kind: Function,
        tensors: 1,
        params: REDUCE,
    },
    Sig {
        name: "max",
        kind: Function,
        tensors: 1,
        params: REDUCE,
    },
    Sig {
        name: "min",
        kind: Function,
        tensors: 1,
        params: REDUCE,
    },
    Sig {
        name: "concat",
        kind: Function,
        tensors: MANY,
        params: &[("axis", Int(-1))],
    },
    Sig {
        name: "mae",
        kind: Loss,
        tensors: 2,
        params: &[],
    },
    Sig {
        name: "l1_loss",
        kind: Loss,
        tensors: 2,
        params: &[],
    },
    Sig {
        name: "mse",
        kind: Loss,
        tensors: 2,
        params: &[],
    },
    Sig {
        name: "huber",
        kind: Loss,
        tensors: 2,
        params: &[("delta", Float(1.0))],
    },
    Sig {
        name: "exponential",
        kind: Loss,
        tensors: 2,
        params: &[],
    },
    Sig {
        name: "hinge",
        kind: Loss,
        tensors: 2,
        params: CLASSIFY,
    },
    Sig {
        name: "cross_entropy",
        kind: Loss,
        tensors: 2,
        params: &[("smoothing", Float(0.0))],
    },
    Sig {
        name: "bce",
        kind: Loss,
        tensors: 2,
        params: &[],
    },
    Sig {
        name: "focal",
        kind: Loss,
        tensors: 2,
        params: &[("gamma", Float(2.0)), ("alpha", Float(0.25))],
    },
    Sig {
        name: "zero_one",
        kind: Loss,
        tensors: 2,
        params: &[],
    },
    Sig {
        name: "l1",
        kind: Regularizer,
        tensors: 0,
        params: &[("lambda", Required)],
    },
    Sig {
        name: "l2",
        kind: Regularizer,
        tensors: 0,
        params: &[("lambda", Required)],
    },
    Sig {
        name: "he",
        kind: Init,
        tensors: 0,
        params: &[],
    },
    Sig {
        name: "xavier",
        kind: Init,
        tensors: 0,
        params: &[],
    },
    Sig {
        name: "normal",
        kind: Init,
        tensors: 0,
        params: &[("std", Required)],
    },
    Sig {
        name: "uniform",
        kind: Init,
        tensors: 0,
        params: &[("a", Required)],
    },
    Sig {
        name: "zeros",
        kind: Init,
        tensors: 0,
        params: &[],
    },
    Sig {
        name: "ones",
        kind: Init,
        tensors: 0,
        params: &[],
    },
    Sig {
        name: "constant",
        kind: Init,
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
                Some(Spelling::Activation) => Activation,
                Some(Spelling::Function) => Function,
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
