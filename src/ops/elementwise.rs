//! Elementwise functions, each defined once: its value and its derivative as expressions
//! over a few [primitives](Prim) that every back end implements. The interpreter evaluates
//! the expressions in f64 ([`Expr::eval`]); the JIT emits them inside its fused loops; a
//! new function needs one entry in [`elementwise!`] and a line in docs/LANGUAGE.md, and the
//! tests that iterate [`Elem::ALL`] check its derivative and its code.

use std::fmt;

/// A primitive function of one argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prim {
    /// −x.
    Neg,
    /// |x|.
    Abs,
    /// √x.
    Sqrt,
    /// 1/x.
    Recip,
    /// eˣ.
    Exp,
    /// eˣ − 1, accurate near 0.
    Expm1,
    /// ln x.
    Log,
    /// ln(1 + x), accurate near 0.
    Log1p,
    /// tanh x.
    Tanh,
    /// 1 / (1 + e⁻ˣ), without overflow for either sign.
    Sigmoid,
    /// The error function.
    Erf,
}

/// A primitive function of two arguments; also the IR's elementwise binary operation
/// (with broadcasting there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Binary {
    /// a + b.
    Add,
    /// a − b.
    Sub,
    /// a · b.
    Mul,
    /// a / b.
    Div,
    /// max(a, b); a NaN operand yields the other.
    Max,
    /// min(a, b); a NaN operand yields the other.
    Min,
    /// 1 where a = b, else 0.
    Eq,
}

/// An expression in the argument `x` and the function's parameters.
#[derive(Debug, PartialEq)]
pub enum Expr {
    /// The argument.
    X,
    /// A constant.
    K(f64),
    /// Parameter `k` of the function.
    P(usize),
    /// A primitive of one argument.
    Un(Prim, &'static Expr),
    /// A primitive of two arguments.
    Bin(Binary, &'static Expr, &'static Expr),
    /// `if c > 0 { a } else { b }` (a NaN `c` takes `b`).
    IfPos(&'static Expr, &'static Expr, &'static Expr),
}

impl Expr {
    /// The value at `x` with parameters `p`, in f64 from the textbook formulas: the
    /// reference the back ends are compared with.
    pub fn eval(&self, x: f64, p: &[f64]) -> f64 {
        match self {
            Expr::X => x,
            Expr::K(c) => *c,
            Expr::P(k) => p[*k],
            Expr::Un(f, a) => prim(*f, a.eval(x, p)),
            Expr::Bin(f, a, b) => binary(*f, a.eval(x, p), b.eval(x, p)),
            Expr::IfPos(c, a, b) => {
                if c.eval(x, p) > 0.0 {
                    a.eval(x, p)
                } else {
                    b.eval(x, p)
                }
            }
        }
    }

    /// Whether the expression applies `f` anywhere.
    pub fn uses(&self, f: Prim) -> bool {
        match self {
            Expr::X | Expr::K(_) | Expr::P(_) => false,
            Expr::Un(g, a) => *g == f || a.uses(f),
            Expr::Bin(_, a, b) => a.uses(f) || b.uses(f),
            Expr::IfPos(c, a, b) => c.uses(f) || a.uses(f) || b.uses(f),
        }
    }
}

/// A primitive of one argument in f64.
pub fn prim(f: Prim, x: f64) -> f64 {
    match f {
        Prim::Neg => -x,
        Prim::Abs => x.abs(),
        Prim::Sqrt => x.sqrt(),
        Prim::Recip => 1.0 / x,
        Prim::Exp => x.exp(),
        Prim::Expm1 => x.exp_m1(),
        Prim::Log => x.ln(),
        Prim::Log1p => x.ln_1p(),
        Prim::Tanh => x.tanh(),
        Prim::Sigmoid => sigmoid(x),
        Prim::Erf => libm::erf(x),
    }
}

/// A primitive of two arguments in f64.
pub fn binary(f: Binary, a: f64, b: f64) -> f64 {
    match f {
        Binary::Add => a + b,
        Binary::Sub => a - b,
        Binary::Mul => a * b,
        Binary::Div => a / b,
        Binary::Max => a.max(b),
        Binary::Min => a.min(b),
        Binary::Eq => f64::from(u8::from(a == b)),
    }
}

/// 1 / (1 + e⁻ˣ) without overflow for large |x|.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// A numeric parameter of a function, as the model language spells it.
#[derive(Debug)]
pub struct Param {
    /// The argument's name.
    pub name: &'static str,
    /// Its default.
    pub default: f64,
    /// The smallest value allowed: a number, or another parameter (`upper ≥ lower`).
    pub min: Bound,
}

/// A parameter's lower bound.
#[derive(Clone, Copy, Debug)]
pub enum Bound {
    /// At least this value.
    Value(f64),
    /// At least the value of parameter `k`.
    Param(usize),
}

/// What the model language and the tools know about a function.
#[derive(Clone, Copy, Debug, Default)]
pub struct Traits {
    /// A word of the model language (else only the compiler uses it).
    pub dsl: Option<Spelling>,
    /// ReLU-like: layers before it start with He initialization.
    pub relu_like: bool,
    /// Squashes or clips its output: a regression loss after it is suspicious (W0004).
    pub squashing: bool,
    /// Saturates at both ends: stacks of it vanish gradients (W0005).
    pub saturating: bool,
    /// What `--diagnose` watches in its outputs.
    pub watch: Watch,
    /// Why its result may be NaN or infinite, for the NaN trace.
    pub hazard: Option<&'static str>,
    /// Training draws the parameters' value per element uniformly between parameter 0
    /// and parameter 1 (rrelu); `f` is the evaluation form.
    pub random_slope: bool,
}

/// How a function is spelled in the model language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spelling {
    /// An activation (`x |> relu`).
    Activation,
    /// Elementwise math (`exp(x)`).
    Function,
    /// The variant of another function chosen by a word argument:
    /// `gelu(approximate: "tanh")`.
    Variant {
        /// The function's word.
        of: &'static str,
        /// The argument that chooses.
        arg: &'static str,
        /// The value that chooses this variant.
        value: &'static str,
        /// The value (the default) that chooses the base function.
        base: &'static str,
    },
}

/// What `--diagnose` measures in an activation's outputs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Watch {
    /// Nothing.
    #[default]
    None,
    /// The fraction of outputs that are exactly zero (dead ReLUs).
    Dead,
    /// The fraction of inputs beyond ± this value (saturated units).
    Saturated(f64),
}

/// Inputs at which a function's derivative is checked: a range, avoiding its kinks.
#[derive(Clone, Copy, Debug)]
pub struct Domain {
    /// The smallest input.
    pub lo: f64,
    /// The largest input.
    pub hi: f64,
    /// Points where the derivative jumps; inputs stay 0.1 away.
    pub kinks: &'static [f64],
}

/// How ONNX export writes a function: the back end's column of the table.
#[derive(Clone, Copy, Debug)]
pub enum Onnx {
    /// ONNX's operator `op`, which exists from opset `since` on, with `attrs`; at older
    /// opsets the function is composed from `f`.
    Op {
        /// The ONNX operator.
        op: &'static str,
        /// The first opset that has it.
        since: u32,
        /// Its attributes.
        attrs: &'static [OnnxAttr],
    },
    /// Composed from the primitives of `f` (ONNX has no operator with this meaning).
    Composed,
}

impl Onnx {
    /// An ONNX operator without attributes.
    const fn op(op: &'static str, since: u32) -> Onnx {
        Onnx::Op {
            op,
            since,
            attrs: &[],
        }
    }
}

/// An attribute of an ONNX operator that writes a function.
#[derive(Clone, Copy, Debug)]
pub enum OnnxAttr {
    /// The function's parameter `k` as the float attribute of this name.
    Param(usize, &'static str),
    /// A string attribute.
    Str(&'static str, &'static str),
}

/// One elementwise function.
#[derive(Debug)]
pub struct Def {
    /// The word (in the model language and in IR printouts).
    pub name: &'static str,
    /// Its math, for the docs and the reader.
    pub doc: &'static str,
    /// Its numeric parameters.
    pub params: &'static [Param],
    /// f(x).
    pub f: Expr,
    /// f′(x).
    pub df: Expr,
    /// How ONNX export writes it.
    pub onnx: Onnx,
    /// What the language and the tools know about it.
    pub traits: Traits,
    /// Where its derivative is checked.
    pub domain: Domain,
}

const ANY: Domain = Domain {
    lo: -3.0,
    hi: 3.0,
    kinks: &[],
};
const KINK0: Domain = Domain {
    lo: -2.5,
    hi: 2.5,
    kinks: &[0.0],
};
const POSITIVE: Domain = Domain {
    lo: 0.2,
    hi: 3.0,
    kinks: &[],
};
const ALPHA: &[Param] = &[Param {
    name: "alpha",
    default: 0.01,
    min: Bound::Value(0.0),
}];
const ACTIVATION: Traits = Traits {
    dsl: Some(Spelling::Activation),
    relu_like: false,
    squashing: false,
    saturating: false,
    watch: Watch::None,
    hazard: None,
    random_slope: false,
};
const FUNCTION: Traits = Traits {
    dsl: Some(Spelling::Function),
    ..ACTIVATION
};
const INTERNAL: Traits = Traits {
    dsl: None,
    ..ACTIVATION
};
const RELU_LIKE: Traits = Traits {
    relu_like: true,
    squashing: true,
    ..ACTIVATION
};

use Binary::{Add, Div, Max, Min, Mul, Sub};
use Expr::{Bin, IfPos, Un, K, P, X};

/// σ(x)·σ(−x) = σ′(x), without the cancellation of σ(1 − σ).
const SIGMOID_DX: Expr = Bin(
    Mul,
    &Un(Prim::Sigmoid, &X),
    &Un(Prim::Sigmoid, &Un(Prim::Neg, &X)),
);
/// ln(1 + eˣ), equal to x (in f64) beyond 20.
const SOFTPLUS: Expr = IfPos(
    &Bin(Sub, &X, &K(20.0)),
    &X,
    &Un(Prim::Log1p, &Un(Prim::Exp, &X)),
);
/// −1, 0 or 1.
const SIGN: Expr = IfPos(&X, &K(1.0), &IfPos(&Un(Prim::Neg, &X), &K(-1.0), &K(0.0)));
/// tanh′(u) = 4·σ(2u)·σ(−2u) at u = softplus(x).
const TANH_DX_SOFTPLUS: Expr = Bin(
    Mul,
    &K(4.0),
    &Bin(
        Mul,
        &Un(Prim::Sigmoid, &Bin(Mul, &K(2.0), &SOFTPLUS)),
        &Un(Prim::Sigmoid, &Bin(Mul, &K(-2.0), &SOFTPLUS)),
    ),
);
/// √(2/π), of the tanh approximation of GELU.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
/// u = √(2/π)·(x + 0.044715·x³).
const GELU_U: Expr = Bin(
    Mul,
    &K(SQRT_2_OVER_PI),
    &Bin(
        Add,
        &X,
        &Bin(Mul, &K(0.044715), &Bin(Mul, &X, &Bin(Mul, &X, &X))),
    ),
);
/// Φ(x) = (1 + erf(x/√2))/2.
const NORMAL_CDF: Expr = Bin(
    Mul,
    &K(0.5),
    &Bin(
        Add,
        &K(1.0),
        &Un(
            Prim::Erf,
            &Bin(Mul, &X, &K(std::f64::consts::FRAC_1_SQRT_2)),
        ),
    ),
);

/// Declares the functions: the [`Elem`] enum, [`Elem::ALL`] and [`Elem::def`].
macro_rules! elementwise {
    ($($(#[$doc:meta])* $id:ident => $def:expr,)*) => {
        /// An elementwise function of the registry.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum Elem {
            $($(#[$doc])* $id,)*
        }

        impl Elem {
            /// Every function, in declaration order.
            pub const ALL: &'static [Elem] = &[$(Elem::$id,)*];

            /// The function's definition.
            pub fn def(self) -> &'static Def {
                match self {
                    $(Elem::$id => {
                        const DEF: Def = $def;
                        &DEF
                    })*
                }
            }
        }
    };
}

elementwise! {
    /// −x.
    Neg => Def {
        name: "neg",
        doc: "−x",
        params: &[],
        f: Un(Prim::Neg, &X),
        df: K(-1.0),
        onnx: Onnx::op("Neg", 6),
        traits: INTERNAL,
        domain: ANY,
    },
    /// x² (norms, variances, l2).
    Square => Def {
        name: "square",
        doc: "x²",
        params: &[],
        f: Bin(Mul, &X, &X),
        df: Bin(Mul, &K(2.0), &X),
        onnx: Onnx::Composed,
        traits: INTERNAL,
        domain: ANY,
    },
    /// 1/x.
    Recip => Def {
        name: "recip",
        doc: "1/x",
        params: &[],
        f: Un(Prim::Recip, &X),
        df: Un(Prim::Neg, &Un(Prim::Recip, &Bin(Mul, &X, &X))),
        onnx: Onnx::op("Reciprocal", 6),
        traits: INTERNAL,
        domain: KINK0,
    },
    /// −1, 0 or 1.
    Sign => Def {
        name: "sign",
        doc: "−1, 0 or 1",
        params: &[],
        f: SIGN,
        df: K(0.0),
        onnx: Onnx::Composed,
        traits: INTERNAL,
        domain: KINK0,
    },
    /// 1 for x > 0, else 0.
    Step => Def {
        name: "step",
        doc: "1 for x > 0, else 0",
        params: &[],
        f: IfPos(&X, &K(1.0), &K(0.0)),
        df: K(0.0),
        onnx: Onnx::Composed,
        traits: INTERNAL,
        domain: KINK0,
    },
    /// eˣ.
    Exp => Def {
        name: "exp",
        doc: "eˣ",
        params: &[],
        f: Un(Prim::Exp, &X),
        df: Un(Prim::Exp, &X),
        onnx: Onnx::op("Exp", 6),
        traits: Traits {
            hazard: Some("exp of a large value overflowed"),
            ..FUNCTION
        },
        domain: Domain { lo: -2.0, hi: 2.0, kinks: &[] },
    },
    /// ln x.
    Log => Def {
        name: "log",
        doc: "ln x",
        params: &[],
        f: Un(Prim::Log, &X),
        df: Un(Prim::Recip, &X),
        onnx: Onnx::op("Log", 6),
        traits: Traits {
            hazard: Some("log of zero: a probability or input reached 0 (pass logits to `cross_entropy`, or add a small epsilon)"),
            ..FUNCTION
        },
        domain: POSITIVE,
    },
    /// √x.
    Sqrt => Def {
        name: "sqrt",
        doc: "√x",
        params: &[],
        f: Un(Prim::Sqrt, &X),
        df: Bin(Div, &K(0.5), &Un(Prim::Sqrt, &X)),
        onnx: Onnx::op("Sqrt", 6),
        traits: Traits {
            hazard: Some("square root of a negative number"),
            ..FUNCTION
        },
        domain: POSITIVE,
    },
    /// |x|.
    Abs => Def {
        name: "abs",
        doc: "|x|",
        params: &[],
        f: Un(Prim::Abs, &X),
        df: SIGN,
        onnx: Onnx::op("Abs", 6),
        traits: FUNCTION,
        domain: KINK0,
    },
    /// x.
    Identity => Def {
        name: "identity",
        doc: "x",
        params: &[],
        f: X,
        df: K(1.0),
        onnx: Onnx::op("Identity", 1),
        traits: ACTIVATION,
        domain: ANY,
    },
    /// max(0, x).
    Relu => Def {
        name: "relu",
        doc: "max(0, x)",
        params: &[],
        f: IfPos(&X, &X, &K(0.0)),
        df: IfPos(&X, &K(1.0), &K(0.0)),
        onnx: Onnx::op("Relu", 6),
        traits: Traits { watch: Watch::Dead, ..RELU_LIKE },
        domain: KINK0,
    },
    /// x, or α·x below 0.
    LeakyRelu => Def {
        name: "leaky_relu",
        doc: "x for x > 0, else alpha·x",
        params: ALPHA,
        f: IfPos(&X, &X, &Bin(Mul, &P(0), &X)),
        df: IfPos(&X, &K(1.0), &P(0)),
        onnx: Onnx::Op { op: "LeakyRelu", since: 6, attrs: &[OnnxAttr::Param(0, "alpha")] },
        traits: RELU_LIKE,
        domain: KINK0,
    },
    /// Leaky ReLU with a random slope per element in training, the mean slope in
    /// evaluation.
    Rrelu => Def {
        name: "rrelu",
        doc: "x for x > 0, else a·x with a uniform in [lower, upper] in training, (lower + upper)/2 in evaluation",
        params: &[
            Param { name: "lower", default: 0.125, min: Bound::Value(0.0) },
            Param { name: "upper", default: 1.0 / 3.0, min: Bound::Param(0) },
        ],
        f: IfPos(&X, &X, &Bin(Mul, &Bin(Mul, &K(0.5), &Bin(Add, &P(0), &P(1))), &X)),
        df: IfPos(&X, &K(1.0), &Bin(Mul, &K(0.5), &Bin(Add, &P(0), &P(1)))),
        onnx: Onnx::Composed,
        traits: Traits { random_slope: true, ..RELU_LIKE },
        domain: KINK0,
    },
    /// x, or α·(eˣ − 1) below 0.
    Elu => Def {
        name: "elu",
        doc: "x for x > 0, else alpha·(eˣ − 1)",
        params: &[Param { name: "alpha", default: 1.0, min: Bound::Value(0.0) }],
        f: IfPos(&X, &X, &Bin(Mul, &P(0), &Un(Prim::Expm1, &X))),
        df: IfPos(&X, &K(1.0), &Bin(Mul, &P(0), &Un(Prim::Exp, &X))),
        onnx: Onnx::Op { op: "Elu", since: 6, attrs: &[OnnxAttr::Param(0, "alpha")] },
        traits: RELU_LIKE,
        domain: KINK0,
    },
    /// 1 / (1 + e⁻ˣ).
    Sigmoid => Def {
        name: "sigmoid",
        doc: "1 / (1 + e⁻ˣ)",
        params: &[],
        f: Un(Prim::Sigmoid, &X),
        df: SIGMOID_DX,
        onnx: Onnx::op("Sigmoid", 6),
        traits: Traits {
            squashing: true,
            saturating: true,
            watch: Watch::Saturated(4.595),
            ..ACTIVATION
        },
        domain: ANY,
    },
    /// tanh x.
    Tanh => Def {
        name: "tanh",
        doc: "tanh x",
        params: &[],
        f: Un(Prim::Tanh, &X),
        df: Bin(
            Mul,
            &K(4.0),
            &Bin(
                Mul,
                &Un(Prim::Sigmoid, &Bin(Mul, &K(2.0), &X)),
                &Un(Prim::Sigmoid, &Bin(Mul, &K(-2.0), &X)),
            ),
        ),
        onnx: Onnx::op("Tanh", 6),
        traits: Traits {
            squashing: true,
            saturating: true,
            watch: Watch::Saturated(2.647),
            ..ACTIVATION
        },
        domain: ANY,
    },
    /// x·Φ(x).
    Gelu => Def {
        name: "gelu",
        doc: "x·Φ(x), Φ the standard normal CDF",
        params: &[],
        f: Bin(Mul, &X, &NORMAL_CDF),
        df: Bin(
            Add,
            &NORMAL_CDF,
            &Bin(
                Mul,
                &Bin(Mul, &X, &K(0.398_942_280_401_432_7)),
                &Un(Prim::Exp, &Bin(Mul, &K(-0.5), &Bin(Mul, &X, &X))),
            ),
        ),
        onnx: Onnx::op("Gelu", 20),
        traits: Traits {
            relu_like: true,
            ..ACTIVATION
        },
        domain: ANY,
    },
    /// The tanh approximation of GELU.
    GeluTanh => Def {
        name: "gelu_tanh",
        doc: "x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))/2",
        params: &[],
        f: Bin(Mul, &Bin(Mul, &K(0.5), &X), &Bin(Add, &K(1.0), &Un(Prim::Tanh, &GELU_U))),
        df: Bin(
            Add,
            &Bin(Mul, &K(0.5), &Bin(Add, &K(1.0), &Un(Prim::Tanh, &GELU_U))),
            &Bin(
                Mul,
                &Bin(Mul, &K(0.5), &X),
                &Bin(
                    Mul,
                    &Bin(
                        Sub,
                        &K(1.0),
                        &Bin(Mul, &Un(Prim::Tanh, &GELU_U), &Un(Prim::Tanh, &GELU_U)),
                    ),
                    &Bin(
                        Mul,
                        &K(SQRT_2_OVER_PI),
                        &Bin(Add, &K(1.0), &Bin(Mul, &K(3.0 * 0.044715), &Bin(Mul, &X, &X))),
                    ),
                ),
            ),
        ),
        onnx: Onnx::Op { op: "Gelu", since: 20, attrs: &[OnnxAttr::Str("approximate", "tanh")] },
        traits: Traits {
            dsl: Some(Spelling::Variant { of: "gelu", arg: "approximate", value: "tanh", base: "none" }),
            relu_like: true,
            ..ACTIVATION
        },
        domain: ANY,
    },
    /// x·σ(x).
    Silu => Def {
        name: "silu",
        doc: "x·σ(x)",
        params: &[],
        f: Bin(Mul, &X, &Un(Prim::Sigmoid, &X)),
        df: Bin(
            Mul,
            &Un(Prim::Sigmoid, &X),
            &Bin(Add, &K(1.0), &Bin(Mul, &X, &Un(Prim::Sigmoid, &Un(Prim::Neg, &X)))),
        ),
        onnx: Onnx::Composed,
        traits: Traits {
            relu_like: true,
            ..ACTIVATION
        },
        domain: ANY,
    },
    /// ln(1 + eˣ).
    Softplus => Def {
        name: "softplus",
        doc: "ln(1 + eˣ)",
        params: &[],
        f: SOFTPLUS,
        df: Un(Prim::Sigmoid, &X),
        onnx: Onnx::op("Softplus", 1),
        traits: Traits {
            squashing: true,
            ..ACTIVATION
        },
        domain: ANY,
    },
    /// x·tanh(softplus(x)).
    Mish => Def {
        name: "mish",
        doc: "x·tanh(ln(1 + eˣ))",
        params: &[],
        f: Bin(Mul, &X, &Un(Prim::Tanh, &SOFTPLUS)),
        df: Bin(
            Add,
            &Un(Prim::Tanh, &SOFTPLUS),
            &Bin(Mul, &Bin(Mul, &X, &TANH_DX_SOFTPLUS), &Un(Prim::Sigmoid, &X)),
        ),
        onnx: Onnx::op("Mish", 18),
        traits: Traits {
            relu_like: true,
            ..ACTIVATION
        },
        domain: ANY,
    },
    /// x·min(max(x + 3, 0), 6)/6.
    Hardswish => Def {
        name: "hardswish",
        doc: "x·min(max(x + 3, 0), 6)/6",
        params: &[],
        f: Bin(
            Mul,
            &X,
            &Bin(Div, &Bin(Min, &Bin(Max, &Bin(Add, &X, &K(3.0)), &K(0.0)), &K(6.0)), &K(6.0)),
        ),
        df: IfPos(
            &Bin(Sub, &X, &K(3.0)),
            &K(1.0),
            &IfPos(
                &Bin(Add, &X, &K(3.0)),
                &Bin(Add, &Bin(Div, &X, &K(3.0)), &K(0.5)),
                &K(0.0),
            ),
        ),
        onnx: Onnx::op("HardSwish", 14),
        traits: Traits {
            relu_like: true,
            ..ACTIVATION
        },
        domain: Domain { lo: -5.0, hi: 5.0, kinks: &[-3.0, 3.0] },
    },
}

impl Def {
    /// The word of the model language that calls it (a variant's base word).
    pub fn word(&self) -> &'static str {
        match self.traits.dsl {
            Some(Spelling::Variant { of, .. }) => of,
            _ => self.name,
        }
    }
}

/// An elementwise function with its parameters' values: what an IR node applies.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Func {
    /// Which function.
    pub elem: Elem,
    /// Its parameters (as many as the definition declares; the rest 0).
    pub p: [f64; 2],
}

impl Func {
    /// `elem` with no parameters.
    pub const fn of(elem: Elem) -> Func {
        Func { elem, p: [0.0; 2] }
    }

    /// `elem` with parameters.
    pub const fn with(elem: Elem, p: [f64; 2]) -> Func {
        Func { elem, p }
    }

    /// The definition.
    pub fn def(self) -> &'static Def {
        self.elem.def()
    }

    /// f(x) in f64.
    pub fn apply(self, x: f64) -> f64 {
        self.def().f.eval(x, &self.p)
    }

    /// f′(x) in f64.
    pub fn derivative(self, x: f64) -> f64 {
        self.def().df.eval(x, &self.p)
    }
}

impl fmt::Display for Func {
    /// The name, with the parameters in parentheses when it has any: `leaky_relu(0.2)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let def = self.def();
        write!(f, "{}", def.name)?;
        if !def.params.is_empty() {
            let p: Vec<String> = self.p[..def.params.len()]
                .iter()
                .map(|v| v.to_string())
                .collect();
            write!(f, "({})", p.join(", "))?;
        }
        Ok(())
    }
}

/// A word argument that chooses between a function and its variants:
/// `gelu(approximate: "tanh")`.
#[derive(Debug)]
pub struct Choice {
    /// The argument.
    pub arg: &'static str,
    /// Each value with the function it chooses, the base function's (the default) first.
    pub options: Vec<(&'static str, Elem)>,
}

/// The function a word of the model language names, with the word argument that chooses
/// its variants, if it has any.
pub fn by_word(word: &str) -> Option<(Elem, Option<Choice>)> {
    let base = Elem::ALL.iter().copied().find(|e| {
        let d = e.def();
        d.name == word
            && matches!(
                d.traits.dsl,
                Some(Spelling::Activation | Spelling::Function)
            )
    })?;
    let mut choice: Option<Choice> = None;
    for e in Elem::ALL {
        if let Some(Spelling::Variant {
            of,
            arg,
            value,
            base: default,
        }) = e.def().traits.dsl
        {
            if of == word {
                choice
                    .get_or_insert_with(|| Choice {
                        arg,
                        options: vec![(default, base)],
                    })
                    .options
                    .push((value, *e));
            }
        }
    }
    Some((base, choice))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every derivative matches central differences of its function at points across its
    /// domain, away from its kinks.
    #[test]
    fn every_derivative_matches_finite_differences() {
        for &e in Elem::ALL {
            let d = e.def();
            let p: Vec<f64> = match d.params.len() {
                0 => vec![],
                1 => vec![0.3],
                _ => vec![0.2, 0.4],
            };
            for k in 0..=40 {
                let x = d.domain.lo + (d.domain.hi - d.domain.lo) * f64::from(k) / 40.0;
                if d.domain.kinks.iter().any(|c| (x - c).abs() < 0.1) {
                    continue;
                }
                let h = 1e-6;
                let fd = (d.f.eval(x + h, &p) - d.f.eval(x - h, &p)) / (2.0 * h);
                let an = d.df.eval(x, &p);
                assert!(
                    (fd - an).abs() <= 1e-6 * an.abs().max(1.0),
                    "{} at {x}: {an} vs finite differences {fd}",
                    d.name
                );
            }
        }
    }

    #[test]
    fn names_are_unique_and_variants_name_their_base() {
        for (i, a) in Elem::ALL.iter().enumerate() {
            for b in &Elem::ALL[i + 1..] {
                assert_ne!(a.def().name, b.def().name);
            }
            if let Some(Spelling::Variant { of, .. }) = a.def().traits.dsl {
                let (_, choice) = by_word(of).expect("the base is a word");
                assert!(choice.is_some_and(|c| c.options.iter().any(|o| o.1 == *a)));
            }
        }
    }

    #[test]
    fn functions_have_their_textbook_values() {
        let at = |e: Elem, p: [f64; 2], x: f64| Func::with(e, p).apply(x);
        assert_eq!(at(Elem::Relu, [0.0; 2], -2.0), 0.0);
        assert_eq!(at(Elem::LeakyRelu, [0.1, 0.0], -2.0), -0.2);
        assert!((at(Elem::Softplus, [0.0; 2], 0.0) - 2f64.ln()).abs() < 1e-15);
        assert_eq!(at(Elem::Softplus, [0.0; 2], 30.0), 30.0);
        assert!((at(Elem::Gelu, [0.0; 2], 1.0) - 0.841_344_746_068_543).abs() < 1e-12);
        assert!((at(Elem::Mish, [0.0; 2], 1.0) - 0.865_098_388_267_310_3).abs() < 1e-12);
        assert_eq!(at(Elem::Hardswish, [0.0; 2], 1.0), 4.0 / 6.0);
        assert_eq!(at(Elem::Hardswish, [0.0; 2], -4.0), 0.0);
        assert_eq!(at(Elem::Rrelu, [0.1, 0.3], -1.0), -0.2);
        assert_eq!(Func::with(Elem::Elu, [0.5, 0.0]).to_string(), "elu(0.5)");
        assert_eq!(Func::of(Elem::Relu).to_string(), "relu");
    }
}
