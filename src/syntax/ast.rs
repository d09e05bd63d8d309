//! The abstract syntax tree. Every node carries the [`Span`] it was parsed from.

use crate::span::Span;

/// A name as written, with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    /// The name.
    pub name: String,
    /// Where it was written.
    pub span: Span,
}

/// A parsed file.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct File {
    /// Top-level items in source order.
    pub items: Vec<Item>,
}

/// A top-level item.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `model NAME { ... }`.
    Model(ModelDecl),
    /// `block NAME(args) { ... }`.
    Block(BlockDecl),
    /// `train NAME { ... }`.
    Train(TrainDecl),
    /// `use "file.kiln"`.
    Use(UseDecl),
}

/// `model NAME { body }`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDecl {
    /// The model's name.
    pub name: Ident,
    /// Statements in order.
    pub body: Vec<Stmt>,
    /// The whole declaration.
    pub span: Span,
}

/// `block NAME(param: shape, ...) { body }`.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockDecl {
    /// The block's name.
    pub name: Ident,
    /// Parameters with their shape patterns.
    pub params: Vec<BlockParam>,
    /// Statements in order (the last is normally `return`).
    pub body: Vec<Stmt>,
    /// The whole declaration.
    pub span: Span,
}

/// One block parameter: `x: [N, C, H, W]`.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockParam {
    /// The parameter's name.
    pub name: Ident,
    /// Its shape pattern.
    pub ty: TypeExpr,
}

/// `train NAME { settings }`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainDecl {
    /// The model it trains.
    pub model: Ident,
    /// Settings in order.
    pub settings: Vec<Setting>,
    /// The whole declaration.
    pub span: Span,
}

/// One train setting: `optimizer sgd(lr: 0.1)`, `batch 64`, `early_stop(patience: 3)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    /// The setting's keyword.
    pub key: Ident,
    /// Its values (positional or named).
    pub args: Vec<Arg>,
    /// The whole setting.
    pub span: Span,
}

/// `use "path"`.
#[derive(Clone, Debug, PartialEq)]
pub struct UseDecl {
    /// The path as written (without quotes).
    pub path: String,
    /// The whole declaration.
    pub span: Span,
}

/// A tensor type or class labels.
#[derive(Clone, Debug, PartialEq)]
pub enum TypeExpr {
    /// `[N, 784]`.
    Tensor(ShapeExpr),
    /// `class[N] of K`.
    Class {
        /// The labels' shape.
        shape: ShapeExpr,
        /// The number of classes.
        classes: Dim,
        /// The whole type.
        span: Span,
    },
}

impl TypeExpr {
    /// Where the type was written.
    pub fn span(&self) -> Span {
        match self {
            TypeExpr::Tensor(s) => s.span,
            TypeExpr::Class { span, .. } => *span,
        }
    }
}

/// `[N, 1, 28, 28]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapeExpr {
    /// The dimensions.
    pub dims: Vec<Dim>,
    /// Brackets included.
    pub span: Span,
}

/// One dimension as written.
#[derive(Clone, Debug, PartialEq)]
pub struct Dim {
    /// A number or a symbol.
    pub kind: DimKind,
    /// Where it was written.
    pub span: Span,
}

/// A dimension: a size or a symbol.
#[derive(Clone, Debug, PartialEq)]
pub enum DimKind {
    /// A fixed size.
    Size(u64),
    /// A symbol (`N`, `C`).
    Sym(String),
}

/// A statement of a model or block body.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `input x: [N, 2]`.
    Input {
        /// The input's name.
        name: Ident,
        /// Its type.
        ty: TypeExpr,
        /// The whole statement.
        span: Span,
    },
    /// `target y: class[N] of 10`.
    Target {
        /// The target's name.
        name: Ident,
        /// Its type.
        ty: TypeExpr,
        /// The whole statement.
        span: Span,
    },
    /// `h: [N, 256] = expr`.
    Let {
        /// The bound name.
        name: Ident,
        /// An optional shape annotation to verify.
        annotation: Option<TypeExpr>,
        /// The value.
        value: Expr,
        /// The whole statement.
        span: Span,
    },
    /// `layer enc = dense(64)`.
    Layer {
        /// The layer's name.
        name: Ident,
        /// The layer call (without input).
        value: Expr,
        /// The whole statement.
        span: Span,
    },
    /// `output name` or `output name = expr`.
    Output {
        /// The output's name.
        name: Ident,
        /// The value, when it is defined here.
        value: Option<Expr>,
        /// The whole statement.
        span: Span,
    },
    /// `loss expr`.
    Loss {
        /// The scalar loss.
        value: Expr,
        /// The whole statement.
        span: Span,
    },
    /// `regularize l2(1e-4) on a, b`.
    Regularize {
        /// The regularizer call.
        value: Expr,
        /// Bindings or layers it applies to (all weights when empty).
        on: Vec<Ident>,
        /// The whole statement.
        span: Span,
    },
    /// `return expr` (blocks only).
    Return {
        /// The returned value.
        value: Expr,
        /// The whole statement.
        span: Span,
    },
    /// `allow W0007, unused` (silences lints in this model).
    Allow {
        /// Codes or lint names.
        lints: Vec<Ident>,
        /// The whole statement.
        span: Span,
    },
}

impl Stmt {
    /// Where the statement was written.
    pub fn span(&self) -> Span {
        match self {
            Stmt::Input { span, .. }
            | Stmt::Target { span, .. }
            | Stmt::Let { span, .. }
            | Stmt::Layer { span, .. }
            | Stmt::Output { span, .. }
            | Stmt::Loss { span, .. }
            | Stmt::Regularize { span, .. }
            | Stmt::Return { span, .. }
            | Stmt::Allow { span, .. } => *span,
        }
    }
}

/// An expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where it was written.
    pub span: Span,
}

/// Binary operators, by precedence: `+ -` < `* / @`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `+`.
    Add,
    /// `-`.
    Sub,
    /// `*`.
    Mul,
    /// `/`.
    Div,
    /// `@`.
    MatMul,
}

impl BinOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::MatMul => "@",
        }
    }
}

/// The kinds of expression.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// A number; `is_int` when written without `.` or exponent.
    Number {
        /// The value.
        value: f64,
        /// Written as an integer.
        is_int: bool,
    },
    /// A string literal (without quotes).
    Str(String),
    /// A name.
    Name(Ident),
    /// A call `f(args)`, or a bare stage of a pipeline (`|> relu`).
    Call(Call),
    /// `head |> stage |> stage`.
    Pipe {
        /// The piped value.
        head: Box<Expr>,
        /// The stages, each a call (possibly without parentheses).
        stages: Vec<Call>,
    },
    /// `a + b`.
    Binary {
        /// The operator.
        op: BinOp,
        /// Where the operator was written.
        op_span: Span,
        /// Left operand.
        lhs: Box<Expr>,
        /// Right operand.
        rhs: Box<Expr>,
    },
    /// `-x`.
    Neg(Box<Expr>),
    /// `(a, b)`.
    Tuple(Vec<Expr>),
    /// `[a, b]`.
    List(Vec<Expr>),
    /// `warmup(2) then cosine(0)` (train blocks only).
    Then(Vec<Expr>),
}

/// A call: `dense(256, bias: false) as head`.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// The called name.
    pub callee: Ident,
    /// The arguments; `None` for a bare pipeline stage written without parentheses.
    pub args: Option<Vec<Arg>>,
    /// `as name`.
    pub alias: Option<Ident>,
    /// The whole call, alias included.
    pub span: Span,
}

impl Call {
    /// The arguments (empty for a bare stage).
    pub fn args(&self) -> &[Arg] {
        self.args.as_deref().unwrap_or(&[])
    }
}

/// One argument: positional or `name: value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// The name of a named argument.
    pub name: Option<Ident>,
    /// The value.
    pub value: Expr,
    /// The whole argument.
    pub span: Span,
}
