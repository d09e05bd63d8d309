//! Constant arguments: evaluation of argument expressions (numbers, words, tuples, lists,
//! initializer calls, block symbols) and binding them to a signature.

use super::catalog::Def;
use crate::diag::{did_you_mean, Code, Diagnostic};
use crate::ir::shape::{Dim, MAX_DIM};
use crate::span::Span;
use crate::syntax::ast::{BinOp, Expr, ExprKind, Ident};
use std::collections::HashMap;

/// A constant value.
#[derive(Clone, Debug, PartialEq)]
pub enum CVal {
    /// A number; `int` when it is an integer.
    Num {
        /// The value.
        v: f64,
        /// Integral.
        int: bool,
    },
    /// A string.
    Str(String),
    /// A bare word (`tanh`, `true`, `val_loss`).
    Word(String),
    /// `(a, b)`.
    Tuple(Vec<Const>),
    /// `[a, b]`.
    List(Vec<Const>),
    /// `normal(0.02)`.
    Call(String, Vec<(Option<Ident>, Const)>),
    /// A dimension symbol (the batch, or a block symbol bound to a size).
    Dim(Dim),
    /// `a then b`.
    Then(Vec<Const>),
}

/// A constant with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Const {
    /// The value.
    pub v: CVal,
    /// Where it was written.
    pub span: Span,
}

/// How a constant reads in messages.
pub fn describe(v: &CVal) -> &'static str {
    match v {
        CVal::Num { int: true, .. } => "an integer",
        CVal::Num { .. } => "a number",
        CVal::Str(_) => "a string",
        CVal::Word(_) => "a name",
        CVal::Tuple(_) => "a tuple",
        CVal::List(_) => "a list",
        CVal::Call(..) => "a call",
        CVal::Dim(Dim::Batch) => "the batch dimension",
        CVal::Dim(_) => "a dimension",
        CVal::Then(_) => "a schedule chain",
    }
}

/// Evaluates a constant expression. `syms` maps block symbols and the batch symbol to
/// their dims; `tensor_name` says whether a name is a tensor (an error here).
pub fn eval(e: &Expr, syms: &HashMap<String, Dim>) -> Result<Const, Diagnostic> {
    let span = e.span;
    let v = match &e.kind {
        ExprKind::Number { value, is_int } => CVal::Num {
            v: *value,
            int: *is_int,
        },
        ExprKind::Str(s) => CVal::Str(s.clone()),
        ExprKind::Name(id) => match syms.get(&id.name) {
            Some(Dim::Fixed(n)) => CVal::Num {
                v: *n as f64,
                int: true,
            },
            Some(d) => CVal::Dim(*d),
            None => CVal::Word(id.name.clone()),
        },
        ExprKind::Neg(inner) => match eval(inner, syms)?.v {
            CVal::Num { v, int } => CVal::Num { v: -v, int },
            other => {
                return Err(Diagnostic::error(
                    Code::E0206,
                    format!("cannot negate {}", describe(&other)),
                    span,
                )
                .primary_label("expected a number"))
            }
        },
        ExprKind::Binary {
            op,
            lhs,
            rhs,
            op_span,
        } => {
            let (a, b) = (eval(lhs, syms)?, eval(rhs, syms)?);
            match (&a.v, &b.v) {
                (CVal::Num { v: x, int: ix }, CVal::Num { v: y, int: iy }) => {
                    let int = *ix && *iy && !matches!(op, BinOp::Div);
                    let v = match op {
                        BinOp::Add => x + y,
                        BinOp::Sub => x - y,
                        BinOp::Mul => x * y,
                        BinOp::Div => x / y,
                        BinOp::MatMul => {
                            return Err(Diagnostic::error(
                                Code::E0206,
                                "`@` needs tensors, found numbers",
                                *op_span,
                            )
                            .primary_label("matrix product of two numbers"))
                        }
                    };
                    if !v.is_finite() {
                        return Err(Diagnostic::error(
                            Code::E0102,
                            "constant arithmetic overflows or divides by zero",
                            span,
                        )
                        .primary_label("not a finite number"));
                    }
                    CVal::Num { v, int }
                }
                _ => {
                    let bad = if matches!(a.v, CVal::Num { .. }) {
                        &b
                    } else {
                        &a
                    };
                    return Err(Diagnostic::error(
                        Code::E0206,
                        format!("arithmetic on {} in an argument", describe(&bad.v)),
                        bad.span,
                    )
                    .primary_label("expected a number"));
                }
            }
        }
        ExprKind::Tuple(items) => CVal::Tuple(
            items
                .iter()
                .map(|i| eval(i, syms))
                .collect::<Result<_, _>>()?,
        ),
        ExprKind::List(items) => CVal::List(
            items
                .iter()
                .map(|i| eval(i, syms))
                .collect::<Result<_, _>>()?,
        ),
        ExprKind::Then(items) => CVal::Then(
            items
                .iter()
                .map(|i| eval(i, syms))
                .collect::<Result<_, _>>()?,
        ),
        ExprKind::Call(c) => {
            if let Some(alias) = &c.alias {
                return Err(Diagnostic::error(
                    Code::E0207,
                    "`as` names a layer, not an argument",
                    alias.span,
                ));
            }
            let args = c
                .args()
                .iter()
                .map(|a| Ok((a.name.clone(), eval(&a.value, syms)?)))
                .collect::<Result<_, Diagnostic>>()?;
            CVal::Call(c.callee.name.clone(), args)
        }
        ExprKind::Pipe { .. } => {
            return Err(Diagnostic::error(
                Code::E0206,
                "a pipeline is not a constant argument",
                span,
            )
            .primary_label("expected a number, a name or a list"))
        }
    };
    Ok(Const { v, span })
}

/// Arguments bound to a signature's parameter names.
#[derive(Debug)]
pub struct Bound {
    /// Name → value (absent when optional and not given).
    values: HashMap<&'static str, Const>,
    /// The call's span, for defaults.
    span: Span,
}

/// Binds positional and named constants to `params`. `what` names the callee in messages.
pub fn bind(
    what: &str,
    params: &'static [(&'static str, Def)],
    positional: Vec<Const>,
    named: Vec<(crate::syntax::ast::Ident, Const)>,
    call_span: Span,
) -> Result<Bound, Diagnostic> {
    let mut values: HashMap<&'static str, Const> = HashMap::new();
    if positional.len() > params.len() {
        let extra = &positional[params.len()];
        let msg = if params.is_empty() {
            format!("`{what}` takes no arguments")
        } else {
            format!(
                "`{what}` takes at most {} argument{}",
                params.len(),
                plural(params.len())
            )
        };
        return Err(Diagnostic::error(Code::E0205, msg, extra.span)
            .primary_label("unexpected argument")
            .with_note(format!("`{what}` takes: {}", param_list(params))));
    }
    for (i, c) in positional.into_iter().enumerate() {
        values.insert(params[i].0, c);
    }
    let unknown: Vec<&crate::syntax::ast::Ident> = named
        .iter()
        .map(|(name, _)| name)
        .filter(|name| !params.iter().any(|(p, _)| *p == name.name))
        .collect();
    if !unknown.is_empty() {
        return Err(unknown_arguments(what, params, &unknown));
    }
    for (name, c) in named {
        let Some(&(key, _)) = params.iter().find(|(p, _)| *p == name.name) else {
            continue;
        };
        if let Some(prev) = values.get(key) {
            return Err(Diagnostic::error(
                Code::E0205,
                format!("argument `{key}` is given twice"),
                name.span,
            )
            .primary_label("second value")
            .with_label(prev.span, "first value"));
        }
        values.insert(key, c);
    }
    for (p, def) in params {
        if values.contains_key(p) {
            continue;
        }
        let v = match def {
            Def::Required => {
                return Err(Diagnostic::error(
                    Code::E0205,
                    format!("`{what}` needs the argument `{p}`"),
                    call_span,
                )
                .primary_label(format!("`{p}` missing"))
                .with_note(format!("`{what}` takes: {}", param_list(params))))
            }
            Def::Optional => continue,
            Def::Int(i) => CVal::Num {
                v: *i as f64,
                int: true,
            },
            Def::Float(f) => CVal::Num { v: *f, int: false },
            Def::Bool(b) => CVal::Word(b.to_string()),
            Def::Word(w) => CVal::Word(w.to_string()),
            Def::Ints(xs) => CVal::List(
                xs.iter()
                    .map(|x| Const {
                        v: CVal::Num {
                            v: *x as f64,
                            int: true,
                        },
                        span: call_span,
                    })
                    .collect(),
            ),
        };
        values.insert(p, Const { v, span: call_span });
    }
    Ok(Bound {
        values,
        span: call_span,
    })
}

/// E0203 for the named arguments a callee does not take: one diagnostic naming every
/// one, each labelled, with a suggestion for each near miss.
fn unknown_arguments(
    what: &str,
    params: &'static [(&'static str, Def)],
    unknown: &[&crate::syntax::ast::Ident],
) -> Diagnostic {
    let suggest = |name: &str| did_you_mean(name, params.iter().map(|(p, _)| *p));
    if let [name] = unknown {
        let d = Diagnostic::error(
            Code::E0203,
            format!("`{what}` has no argument `{}`", name.name),
            name.span,
        )
        .primary_label("unknown argument");
        return match suggest(&name.name) {
            Some(s) => d.with_help(format!("did you mean `{s}`?")),
            None if !params.is_empty() => {
                d.with_note(format!("`{what}` takes: {}", param_list(params)))
            }
            None => d,
        };
    }
    let names: Vec<String> = unknown.iter().map(|n| format!("`{}`", n.name)).collect();
    let mut d = Diagnostic::error(
        Code::E0203,
        format!("`{what}` has no arguments {}", names.join(", ")),
        unknown[0].span,
    )
    .primary_label("unknown argument");
    for name in &unknown[1..] {
        d = d.with_label(name.span, "unknown argument");
    }
    let fixes: Vec<String> = unknown
        .iter()
        .filter_map(|n| suggest(&n.name).map(|s| format!("`{s}` for `{}`", n.name)))
        .collect();
    if !fixes.is_empty() {
        d = d.with_help(format!("did you mean {}?", fixes.join(", ")));
    }
    if params.is_empty() {
        d
    } else {
        d.with_note(format!("`{what}` takes: {}", param_list(params)))
    }
}

/// Binds the arguments of a constant call such as `normal(0.02)` or `sgd(lr: 0.1)`.
pub fn bind_call(
    what: &str,
    params: &'static [(&'static str, Def)],
    args: Vec<(Option<Ident>, Const)>,
    call_span: Span,
) -> Result<Bound, Diagnostic> {
    let mut positional = Vec::new();
    let mut named = Vec::new();
    for (n, v) in args {
        match n {
            Some(name) => named.push((name, v)),
            None => positional.push(v),
        }
    }
    bind(what, params, positional, named, call_span)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn param_list(params: &[(&str, Def)]) -> String {
    params
        .iter()
        .map(|(p, d)| match d {
            Def::Required => p.to_string(),
            _ => format!("{p}: …"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn type_error(c: &Const, name: &str, expected: &str) -> Diagnostic {
    Diagnostic::error(
        Code::E0206,
        format!("`{name}` must be {expected}, found {}", describe(&c.v)),
        c.span,
    )
    .primary_label(format!("expected {expected}"))
}

fn range_error(c: &Const, name: &str, rule: &str) -> Diagnostic {
    Diagnostic::error(Code::E0313, format!("`{name}` {rule}"), c.span).primary_label("out of range")
}

impl Bound {
    /// The raw constant, when given or defaulted.
    pub fn get(&self, name: &str) -> Option<&Const> {
        self.values.get(name)
    }

    /// The span of an argument, or of the call when defaulted.
    pub fn span_of(&self, name: &str) -> Span {
        self.values.get(name).map_or(self.span, |c| c.span)
    }

    /// An integer argument ≥ `min`.
    pub fn int(&self, name: &str, min: i64) -> Result<i64, Diagnostic> {
        let c = self.values.get(name).ok_or_else(|| self.missing(name))?;
        let v = as_int(c).ok_or_else(|| type_error(c, name, "an integer"))?;
        if v < min {
            return Err(range_error(
                c,
                name,
                &format!("must be at least {min}, found {v}"),
            ));
        }
        Ok(v)
    }

    /// A size argument (1 ≤ v < 2^31).
    pub fn size(&self, name: &str) -> Result<u64, Diagnostic> {
        let v = self.int(name, 1)?;
        if v as u64 > MAX_DIM {
            let c = &self.values[name];
            return Err(range_error(
                c,
                name,
                &format!("must be below 2^31, found {v}"),
            ));
        }
        Ok(v as u64)
    }

    /// A float argument.
    pub fn float(&self, name: &str) -> Result<f64, Diagnostic> {
        let c = self.values.get(name).ok_or_else(|| self.missing(name))?;
        match c.v {
            CVal::Num { v, .. } => Ok(v),
            _ => Err(type_error(c, name, "a number")),
        }
    }

    /// A float argument checked against a range; `rule` words the range for the message.
    pub fn float_in(
        &self,
        name: &str,
        ok: impl Fn(f64) -> bool,
        rule: &str,
    ) -> Result<f64, Diagnostic> {
        let v = self.float(name)?;
        if !ok(v) {
            return Err(range_error(
                &self.values[name],
                name,
                &format!("{rule}, found {v}"),
            ));
        }
        Ok(v)
    }

    /// A boolean argument (`true`/`false`).
    pub fn boolean(&self, name: &str) -> Result<bool, Diagnostic> {
        let c = self.values.get(name).ok_or_else(|| self.missing(name))?;
        match &c.v {
            CVal::Word(w) if w == "true" => Ok(true),
            CVal::Word(w) if w == "false" => Ok(false),
            _ => Err(type_error(c, name, "`true` or `false`")),
        }
    }

    /// One of `choices` (a bare word).
    pub fn choice(&self, name: &str, choices: &[&'static str]) -> Result<&'static str, Diagnostic> {
        let c = self.values.get(name).ok_or_else(|| self.missing(name))?;
        let list = choices
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ");
        if let CVal::Word(w) = &c.v {
            if let Some(found) = choices.iter().find(|x| *x == w) {
                return Ok(found);
            }
            let mut d = Diagnostic::error(
                Code::E0206,
                format!("`{name}` must be one of {list}, found `{w}`"),
                c.span,
            )
            .primary_label("unknown choice");
            if let Some(s) = did_you_mean(w, choices.iter().copied()) {
                d = d.with_help(format!("did you mean `{s}`?"));
            }
            return Err(d);
        }
        Err(type_error(c, name, &format!("one of {list}")))
    }

    /// `n` sizes from an int or a tuple of `n` ints, each ≥ `min`.
    pub fn ints(&self, name: &str, n: usize, min: i64) -> Result<Vec<u64>, Diagnostic> {
        let c = self.values.get(name).ok_or_else(|| self.missing(name))?;
        let items: Vec<&Const> = match &c.v {
            CVal::Tuple(xs) | CVal::List(xs) => xs.iter().collect(),
            _ => vec![c; n],
        };
        let expected = if n == 1 {
            "an integer".to_string()
        } else {
            format!("an integer or a pair `({name}_h, {name}_w)`")
        };
        if items.len() != n {
            return Err(type_error(c, name, &expected));
        }
        items
            .into_iter()
            .map(|x| {
                let v = as_int(x).ok_or_else(|| type_error(x, name, &expected))?;
                if v < min || v as u64 > MAX_DIM {
                    return Err(range_error(
                        x,
                        name,
                        &format!("must be at least {min} and below 2^31, found {v}"),
                    ));
                }
                Ok(v as u64)
            })
            .collect()
    }

    fn missing(&self, name: &str) -> Diagnostic {
        Diagnostic::error(Code::E0205, format!("missing argument `{name}`"), self.span)
    }
}

/// The integer value of a constant, if it is one.
pub fn as_int(c: &Const) -> Option<i64> {
    match c.v {
        CVal::Num { v, int: true } if v.abs() < 9.0e15 => Some(v as i64),
        _ => None,
    }
}

/// Several argument reads of one call taken together, so that every bad argument is
/// reported and not only the first (see [`every`]).
pub trait Reads {
    /// The values read, in order.
    type Values;
    /// The values, or every read's error.
    fn all(self) -> Result<Self::Values, Vec<Diagnostic>>;
}

macro_rules! reads_tuple {
    ($($t:ident $v:ident),+) => {
        impl<$($t),+> Reads for ($(Result<$t, Diagnostic>,)+) {
            type Values = ($($t,)+);
            fn all(self) -> Result<Self::Values, Vec<Diagnostic>> {
                let ($($v,)+) = self;
                match ($($v,)+) {
                    ($(Ok($v),)+) => Ok(($($v,)+)),
                    ($($v,)+) => Err([$($v.err()),+].into_iter().flatten().collect()),
                }
            }
        }
    };
}

reads_tuple!(A a, B b);
reads_tuple!(A a, B b, C c);
reads_tuple!(A a, B b, C c, D d);
reads_tuple!(A a, B b, C c, D d, E e);
reads_tuple!(A a, B b, C c, D d, E e, F f);
reads_tuple!(A a, B b, C c, D d, E e, F f, G g);

/// The values of several reads, or the first bad argument's error with the others added
/// to `sink` (diagnostics are ordered by position when printed):
/// `let (units, bias) = every((a.size("units"), a.boolean("bias")), sink)?`.
pub fn every<R: Reads>(reads: R, sink: &mut Vec<Diagnostic>) -> Result<R::Values, Diagnostic> {
    reads.all().map_err(|mut errors| {
        let first = errors.remove(0);
        sink.extend(errors);
        first
    })
}
