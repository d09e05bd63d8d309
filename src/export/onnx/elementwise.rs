//! Elementwise functions: ONNX's operator where the registry names one for the opset
//! written, else the function's expression `f` composed from ONNX operators, one per
//! primitive. Parts of an expression without the argument are computed here, in f64.

use super::emit::{float, int, string, Emit};
use super::proto::tensor_proto::DataType;
use crate::ops::elementwise::{Binary, Expr, Onnx, OnnxAttr, Prim};
use crate::ops::Func;

/// `f(x)`.
pub fn apply(e: &mut Emit, f: Func, x: &str, hint: &str) -> String {
    let def = f.def();
    match def.onnx {
        Onnx::Op { op, since, attrs } if since <= e.opset => {
            let attrs = attrs
                .iter()
                .map(|a| match *a {
                    OnnxAttr::Param(k, name) => float(name, f.p[k] as f32),
                    OnnxAttr::Str(name, value) => string(name, value),
                })
                .collect();
            e.node(op, &[x], attrs, hint)
        }
        _ => compose(e, &def.f, x, &f.p, hint),
    }
}

fn has_x(expr: &Expr) -> bool {
    match expr {
        Expr::X => true,
        Expr::K(_) | Expr::P(_) => false,
        Expr::Un(_, a) => has_x(a),
        Expr::Bin(_, a, b) => has_x(a) || has_x(b),
        Expr::IfPos(c, a, b) => has_x(c) || has_x(a) || has_x(b),
    }
}

/// `expr` at `x` as ONNX nodes.
fn compose(e: &mut Emit, expr: &Expr, x: &str, p: &[f64], hint: &str) -> String {
    if !has_x(expr) {
        return e.scalar(expr.eval(0.0, p) as f32);
    }
    match expr {
        Expr::Un(f, a) => {
            let a = compose(e, a, x, p, hint);
            prim(e, *f, &a, hint)
        }
        Expr::Bin(f, a, b) => {
            let a = compose(e, a, x, p, hint);
            let b = compose(e, b, x, p, hint);
            binary(e, *f, &a, &b, hint)
        }
        Expr::IfPos(c, a, b) => {
            let c = compose(e, c, x, p, hint);
            let a = compose(e, a, x, p, hint);
            let b = compose(e, b, x, p, hint);
            let zero = e.scalar(0.0);
            let positive = e.node("Greater", &[&c, &zero], vec![], hint);
            e.node("Where", &[&positive, &a, &b], vec![], hint)
        }
        // The constants were computed above.
        Expr::X | Expr::K(_) | Expr::P(_) => x.to_string(),
    }
}

/// A primitive of one argument.
fn prim(e: &mut Emit, f: Prim, a: &str, hint: &str) -> String {
    let op = match f {
        Prim::Neg => "Neg",
        Prim::Abs => "Abs",
        Prim::Sqrt => "Sqrt",
        Prim::Recip => "Reciprocal",
        Prim::Exp => "Exp",
        Prim::Expm1 => {
            let ex = e.node("Exp", &[a], vec![], hint);
            let one = e.scalar(1.0);
            return e.node("Sub", &[&ex, &one], vec![], hint);
        }
        Prim::Log => "Log",
        Prim::Log1p => {
            let one = e.scalar(1.0);
            let sum = e.node("Add", &[a, &one], vec![], hint);
            return e.node("Log", &[&sum], vec![], hint);
        }
        Prim::Tanh => "Tanh",
        Prim::Sigmoid => "Sigmoid",
        Prim::Erf => "Erf",
    };
    e.node(op, &[a], vec![], hint)
}

/// A primitive of two arguments, broadcasting as NumPy (and Kiln) do.
pub fn binary(e: &mut Emit, f: Binary, a: &str, b: &str, hint: &str) -> String {
    let op = match f {
        Binary::Add => "Add",
        Binary::Sub => "Sub",
        Binary::Mul => "Mul",
        Binary::Div => "Div",
        Binary::Max => "Max",
        Binary::Min => "Min",
        Binary::Eq => {
            let eq = e.node("Equal", &[a, b], vec![], hint);
            return e.node(
                "Cast",
                &[&eq],
                vec![int("to", DataType::Float as i64)],
                hint,
            );
        }
    };
    e.node(op, &[a, b], vec![], hint)
}
