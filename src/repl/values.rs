//! Tensor values typed at the prompt: literals `[[0, 1], [1, 0]]` and the constructors
//! `randn`, `rand`, `zeros`, `ones`, `full`, `eye`, `arange` and `load`. They are
//! evaluated before checking; each becomes an input of the synthesized model.

use crate::check::catalog;
use crate::diag::{Code, Diagnostic};
use crate::span::Span;
use crate::syntax::ast::{Arg, Call, Expr, ExprKind};
use ndarray::{ArrayD, IxDyn};
use rand::SeedableRng;
use rand_distr::Distribution;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Tensors built at the prompt may have at most this many elements.
pub const MAX_ELEMENTS: usize = 1 << 26;

/// The constructors' names.
pub const CONSTRUCTORS: &[&str] = &[
    "randn", "rand", "zeros", "ones", "full", "eye", "arange", "load",
];

/// A literal or constructor call, evaluated: `span` is where it was written.
#[derive(Clone, Debug)]
pub struct Temp {
    /// Where it was written (the parser's span).
    pub span: Span,
    /// Its value.
    pub value: ArrayD<f32>,
}

/// What constructors need from the session.
pub struct Ctx<'a> {
    /// The session seed (for `randn` without `seed:`).
    pub seed: u64,
    /// Random draws so far (each unseeded `randn` gets its own stream).
    pub draws: &'a mut u64,
    /// Directory of the loaded file: relative paths not found in the current directory
    /// are looked up there.
    pub base: Option<&'a Path>,
    /// Names of the session's blocks (all their positional arguments are tensors).
    pub blocks: &'a HashSet<String>,
}

/// Evaluates every literal and constructor of `e` that stands for a tensor.
pub fn collect(e: &Expr, ctx: &mut Ctx, out: &mut Vec<Temp>) -> Result<(), Diagnostic> {
    walk(e, true, ctx, out)
}

fn walk(e: &Expr, tensor: bool, ctx: &mut Ctx, out: &mut Vec<Temp>) -> Result<(), Diagnostic> {
    match &e.kind {
        ExprKind::List(_) if tensor => out.push(Temp {
            span: e.span,
            value: literal(e)?,
        }),
        ExprKind::Call(c) if CONSTRUCTORS.contains(&c.callee.name.as_str()) && c.args.is_some() => {
            out.push(Temp {
                span: e.span,
                value: construct(c, ctx)?,
            })
        }
        ExprKind::Call(c) => walk_call(c, false, ctx, out)?,
        ExprKind::Pipe { head, stages } => {
            walk(head, true, ctx, out)?;
            for s in stages {
                walk_call(s, true, ctx, out)?;
            }
        }
        ExprKind::Binary { lhs, rhs, .. } => {
            walk(lhs, true, ctx, out)?;
            walk(rhs, true, ctx, out)?;
        }
        ExprKind::Neg(x) => walk(x, true, ctx, out)?,
        ExprKind::Tuple(xs) | ExprKind::List(xs) | ExprKind::Then(xs) => {
            for x in xs {
                walk(x, false, ctx, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn walk_call(c: &Call, piped: bool, ctx: &mut Ctx, out: &mut Vec<Temp>) -> Result<(), Diagnostic> {
    let tensors = match catalog::lookup(&c.callee.name) {
        Some(sig) => sig.tensors,
        None if ctx.blocks.contains(&c.callee.name) => catalog::MANY,
        None => 1,
    };
    let tensors = if piped && tensors != catalog::MANY {
        tensors.saturating_sub(1)
    } else {
        tensors
    };
    let mut k = 0;
    for a in c.args() {
        let is_tensor = a.name.is_none() && k < tensors;
        if a.name.is_none() {
            k += 1;
        }
        walk(&a.value, is_tensor, ctx, out)?;
    }
    Ok(())
}

/// A constant argument: a number, or nested lists of them.
fn number(e: &Expr) -> Option<f64> {
    match &e.kind {
        ExprKind::Number { value, .. } => Some(*value),
        ExprKind::Neg(x) => number(x).map(|v| -v),
        _ => None,
    }
}

/// A nested list of numbers as a tensor.
pub fn literal(e: &Expr) -> Result<ArrayD<f32>, Diagnostic> {
    fn go(
        e: &Expr,
        depth: usize,
        shape: &mut Vec<usize>,
        data: &mut Vec<f32>,
    ) -> Result<(), Diagnostic> {
        if let Some(v) = number(e) {
            if depth != shape.len() {
                return Err(ragged(e.span));
            }
            data.push(v as f32);
            return Ok(());
        }
        let ExprKind::List(items) = &e.kind else {
            return Err(Diagnostic::error(
                Code::E0206,
                "a tensor literal holds numbers and lists of numbers",
                e.span,
            )
            .primary_label("not a number")
            .with_help("bind the value first (`y = ...`) and combine tensors with operators"));
        };
        if items.is_empty() {
            return Err(
                Diagnostic::error(Code::E0206, "a tensor literal cannot be empty", e.span)
                    .primary_label("no elements")
                    .with_help("use `zeros([n])` for a tensor of zeros"),
            );
        }
        if depth == shape.len() {
            if data.is_empty() {
                shape.push(items.len());
            } else {
                return Err(ragged(e.span));
            }
        } else if shape[depth] != items.len() {
            return Err(ragged(e.span));
        }
        if data.len() + items.len() > MAX_ELEMENTS {
            return Err(too_many(e.span));
        }
        for it in items {
            go(it, depth + 1, shape, data)?;
        }
        Ok(())
    }
    let mut shape = Vec::new();
    let mut data = Vec::new();
    go(e, 0, &mut shape, &mut data)?;
    ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|_| ragged(e.span))
}

fn ragged(span: Span) -> Diagnostic {
    Diagnostic::error(
        Code::E0305,
        "the rows of a tensor literal differ in length",
        span,
    )
    .primary_label("every row must have the same shape")
}

fn too_many(span: Span) -> Diagnostic {
    Diagnostic::error(
        Code::E0311,
        format!("a tensor built at the prompt holds at most {MAX_ELEMENTS} elements"),
        span,
    )
    .primary_label("too large")
}

/// The arguments of a constructor call, by position and name.
struct Args<'a> {
    call: &'a Call,
}

impl<'a> Args<'a> {
    /// Checks the names against `allowed` (positional order) and returns the argument
    /// for each, in order.
    fn bind(&self, allowed: &[&str]) -> Result<Vec<Option<&'a Arg>>, Diagnostic> {
        let mut out: Vec<Option<&Arg>> = vec![None; allowed.len()];
        let mut pos = 0;
        for a in self.call.args() {
            let slot = match &a.name {
                Some(n) => allowed.iter().position(|x| *x == n.name).ok_or_else(|| {
                    Diagnostic::error(
                        Code::E0203,
                        format!("`{}` has no argument `{}`", self.call.callee.name, n.name),
                        n.span,
                    )
                    .primary_label("unknown argument")
                    .with_help(format!("its arguments: {}", allowed.join(", ")))
                })?,
                None => {
                    pos += 1;
                    pos - 1
                }
            };
            if slot >= allowed.len() {
                return Err(Diagnostic::error(
                    Code::E0205,
                    format!(
                        "`{}` takes at most {} arguments",
                        self.call.callee.name,
                        allowed.len()
                    ),
                    a.span,
                )
                .primary_label("one too many"));
            }
            if out[slot].is_some() {
                return Err(Diagnostic::error(
                    Code::E0204,
                    format!("argument `{}` is given twice", allowed[slot]),
                    a.span,
                ));
            }
            out[slot] = Some(a);
        }
        Ok(out)
    }

    fn missing(&self, what: &str) -> Diagnostic {
        Diagnostic::error(
            Code::E0205,
            format!("`{}` needs {what}", self.call.callee.name),
            self.call.span,
        )
        .primary_label("missing argument")
    }
}

fn int(e: &Expr, what: &str) -> Result<i64, Diagnostic> {
    match number(e) {
        Some(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => Ok(v as i64),
        _ => Err(Diagnostic::error(
            Code::E0206,
            format!("{what} must be an integer"),
            e.span,
        )),
    }
}

fn float(e: &Expr, what: &str) -> Result<f64, Diagnostic> {
    number(e)
        .ok_or_else(|| Diagnostic::error(Code::E0206, format!("{what} must be a number"), e.span))
}

/// A shape: `4` or `[4, 3]` or `(4, 3)`.
fn shape(e: &Expr) -> Result<Vec<usize>, Diagnostic> {
    let items: Vec<&Expr> = match &e.kind {
        ExprKind::List(xs) | ExprKind::Tuple(xs) => xs.iter().collect(),
        _ => vec![e],
    };
    let mut dims = Vec::new();
    let mut total: usize = 1;
    for it in items {
        let d = int(it, "a dimension")?;
        if d < 1 || d > crate::ir::shape::MAX_DIM as i64 {
            return Err(Diagnostic::error(
                Code::E0311,
                format!("dimension {d} is out of range"),
                it.span,
            )
            .primary_label("sizes are at least 1"));
        }
        total = total.saturating_mul(d as usize);
        dims.push(d as usize);
    }
    if total > MAX_ELEMENTS {
        return Err(too_many(e.span));
    }
    Ok(dims)
}

fn construct(c: &Call, ctx: &mut Ctx) -> Result<ArrayD<f32>, Diagnostic> {
    let a = Args { call: c };
    let name = c.callee.name.as_str();
    match name {
        "zeros" | "ones" | "full" => {
            let b = a.bind(&["shape", "value"])?;
            let s = shape(&b[0].ok_or_else(|| a.missing("a shape"))?.value)?;
            let v = match (name, b[1]) {
                ("zeros", None) => 0.0,
                ("ones", None) => 1.0,
                (_, None) => return Err(a.missing("a value: `full([2, 2], 7)`")),
                (_, Some(v)) => float(&v.value, "the value")?,
            };
            Ok(ArrayD::from_elem(IxDyn(&s), v as f32))
        }
        "randn" | "rand" => {
            let b = a.bind(&["shape", "seed"])?;
            let s = shape(&b[0].ok_or_else(|| a.missing("a shape"))?.value)?;
            let seed = match b[1] {
                Some(x) => int(&x.value, "the seed")? as u64,
                None => {
                    *ctx.draws += 1;
                    ctx.seed
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        .wrapping_add(*ctx.draws)
                }
            };
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let n: usize = s.iter().product();
            let data: Vec<f32> = if name == "randn" {
                (0..n)
                    .map(|_| rand_distr::StandardNormal.sample(&mut rng))
                    .collect()
            } else {
                let u = rand_distr::Uniform::new(0f32, 1f32);
                (0..n).map(|_| u.sample(&mut rng)).collect()
            };
            Ok(ArrayD::from_shape_vec(IxDyn(&s), data).expect("sizes match"))
        }
        "eye" => {
            let b = a.bind(&["n"])?;
            let e = b[0].ok_or_else(|| a.missing("a size"))?;
            let n = int(&e.value, "the size")?;
            if !(1..=4096).contains(&n) {
                return Err(Diagnostic::error(
                    Code::E0311,
                    "`eye` takes a size from 1 to 4096",
                    e.span,
                ));
            }
            let n = n as usize;
            let mut m = ArrayD::zeros(IxDyn(&[n, n]));
            for i in 0..n {
                m[[i, i]] = 1.0;
            }
            Ok(m)
        }
        "arange" => {
            let b = a.bind(&["start", "stop", "step"])?;
            let first = float(
                &b[0].ok_or_else(|| a.missing("a stop: `arange(5)`"))?.value,
                "`start`",
            )?;
            let (start, stop) = match b[1] {
                Some(s) => (first, float(&s.value, "`stop`")?),
                None => (0.0, first),
            };
            let step = match b[2] {
                Some(s) => float(&s.value, "`step`")?,
                None => 1.0,
            };
            let n = ((stop - start) / step).ceil();
            if step == 0.0 || !n.is_finite() {
                return Err(Diagnostic::error(
                    Code::E0313,
                    "`arange` needs a non-zero step",
                    c.span,
                ));
            }
            if n < 1.0 {
                return Err(
                    Diagnostic::error(Code::E0313, "`arange` would be empty", c.span)
                        .primary_label(format!("no values from {start} to {stop}")),
                );
            }
            if n > MAX_ELEMENTS as f64 {
                return Err(too_many(c.span));
            }
            let data: Vec<f32> = (0..n as usize)
                .map(|i| (start + step * i as f64) as f32)
                .collect();
            Ok(ArrayD::from_shape_vec(IxDyn(&[data.len()]), data).expect("1-D"))
        }
        _ => load(c, &a, ctx),
    }
}

fn load(c: &Call, a: &Args, ctx: &Ctx) -> Result<ArrayD<f32>, Diagnostic> {
    let b = a.bind(&["path", "columns"])?;
    let p = b[0].ok_or_else(|| a.missing("a file: `load(\"x.npy\")`"))?;
    let ExprKind::Str(path) = &p.value.kind else {
        return Err(Diagnostic::error(
            Code::E0206,
            "the file name is a string",
            p.value.span,
        ));
    };
    let mut file = PathBuf::from(path);
    if !file.exists() {
        if let Some(base) = ctx.base {
            if base.join(path).exists() {
                file = base.join(path);
            }
        }
    }
    let fail = |msg: String| {
        Diagnostic::error(Code::E0500, format!("cannot read `{path}`"), p.value.span)
            .primary_label(msg)
    };
    let ext = extension(&file);
    match ext.as_str() {
        "npy" => {
            if b[1].is_some() {
                return Err(Diagnostic::error(
                    Code::E0203,
                    "`columns` applies to CSV files",
                    c.span,
                ));
            }
            let bytes = std::fs::read(&file).map_err(|e| fail(e.to_string()))?;
            read_npy(&bytes).map_err(|e| fail(e.to_string()))
        }
        "csv" => read_csv(&file, b[1].map(|x| &x.value)).map_err(|e| match e {
            CsvError::Io(m) => fail(m),
            CsvError::Arg(d) => d,
        }),
        _ => Err(fail("a `.npy` or `.csv` file is expected".into())),
    }
}

/// The array of the bytes of a `.npy` file, of any float or integer element type.
fn read_npy(bytes: &[u8]) -> Result<ArrayD<f32>, ndarray_npy::ReadNpyError> {
    use ndarray_npy::ReadNpyExt;
    if let Ok(a) = ArrayD::<f32>::read_npy(bytes) {
        return Ok(a);
    }
    if let Ok(a) = ArrayD::<f64>::read_npy(bytes) {
        return Ok(a.mapv(|v| v as f32));
    }
    if let Ok(a) = ArrayD::<i64>::read_npy(bytes) {
        return Ok(a.mapv(|v| v as f32));
    }
    ArrayD::<i32>::read_npy(bytes).map(|a| a.mapv(|v| v as f32))
}

enum CsvError {
    Io(String),
    Arg(Diagnostic),
}

/// The selected columns of a CSV file with a header: `columns: (a, b)` is the range
/// `a..b`, a list selects columns by index or by name.
fn read_csv(path: &Path, columns: Option<&Expr>) -> Result<ArrayD<f32>, CsvError> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| CsvError::Io(e.to_string()))?;
    let header: Vec<String> = r
        .headers()
        .map_err(|e| CsvError::Io(e.to_string()))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let width = header.len();
    let arg =
        |e: &Expr, m: &str| CsvError::Arg(Diagnostic::error(Code::E0206, m.to_string(), e.span));
    let index = |e: &Expr| -> Result<usize, CsvError> {
        if let ExprKind::Str(s) = &e.kind {
            return header.iter().position(|h| h == s).ok_or_else(|| {
                CsvError::Arg(
                    Diagnostic::error(Code::E0201, format!("no column `{s}`"), e.span)
                        .with_note(format!("the columns: {}", header.join(", "))),
                )
            });
        }
        match int(e, "a column").map_err(CsvError::Arg)? {
            i if i >= 0 && (i as usize) < width => Ok(i as usize),
            i => Err(arg(
                e,
                &format!("column {i} is out of range: the file has {width}"),
            )),
        }
    };
    let cols: Vec<usize> = match columns.map(|c| (&c.kind, c)) {
        None => (0..width).collect(),
        Some((ExprKind::Tuple(xs), c)) => {
            let [lo, hi] = xs.as_slice() else {
                return Err(arg(c, "a column range is `(first, end)`"));
            };
            let lo = index(lo)?;
            let end = match int(hi, "a column").map_err(CsvError::Arg)? {
                e if e as usize > lo && e as usize <= width => e as usize,
                _ => {
                    return Err(arg(
                        hi,
                        &format!("the range end must be in {}..={width}", lo + 1),
                    ))
                }
            };
            (lo..end).collect()
        }
        Some((ExprKind::List(xs), _)) => xs.iter().map(index).collect::<Result<_, _>>()?,
        Some((_, c)) => vec![index(c)?],
    };
    let mut data = Vec::new();
    let mut rows = 0;
    for (line, rec) in r.records().enumerate() {
        let rec = rec.map_err(|e| CsvError::Io(e.to_string()))?;
        for &c in &cols {
            let field = rec.get(c).unwrap_or("").trim();
            let v: f32 = field.parse().map_err(|_| {
                CsvError::Io(format!(
                    "line {}, column {}: `{field}` is not a number",
                    line + 2,
                    c + 1
                ))
            })?;
            data.push(v);
        }
        rows += 1;
        if data.len() > MAX_ELEMENTS {
            return Err(CsvError::Io("the file is too large for the prompt".into()));
        }
    }
    if rows == 0 {
        return Err(CsvError::Io("the file has no rows".into()));
    }
    Ok(ArrayD::from_shape_vec(IxDyn(&[rows, cols.len()]), data).expect("rows × columns"))
}

/// A file's extension in lower case (empty when it has none).
pub fn extension(path: &std::path::Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}
