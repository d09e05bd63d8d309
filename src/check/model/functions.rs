//! Functions, activations and shaping layers: their shape rules, axes, reshape.

use super::Elab;
use crate::check::args::{every, Bound, CVal, Const};
use crate::check::catalog::{self, Sig};
use crate::check::graph::*;
use crate::diag::{Code, Diagnostic};
use crate::ir::shape::{Dim, Shape, MAX_DIM};
use crate::ops::elementwise::{self, Choice, Elem};
use crate::span::Span;

impl Elab<'_> {
    fn axis(&self, a: &Bound, key: &str, shape: &Shape, what: &str) -> Result<usize, Diagnostic> {
        let raw = a.int(key, i64::MIN)?;
        match shape.axis(raw) {
            Some(0) if shape.has_batch() => Err(Diagnostic::error(
                Code::E0309,
                format!("`{what}` cannot work along the batch axis"),
                a.span_of(key),
            )
            .primary_label("axis 0 is the batch")
            .with_help("use axis 1 or a negative axis counted from the end")),
            Some(ax) => Ok(ax),
            None => Err(Diagnostic::error(
                Code::E0309,
                format!("axis {raw} is out of range for {shape}"),
                a.span_of(key),
            )
            .primary_label(format!("rank {}", shape.rank()))),
        }
    }

    pub(super) fn function(
        &mut self,
        sig: &Sig,
        fun: Fun,
        a: &Bound,
        nodes: &[NodeId],
        spans: &[Span],
        call_span: Span,
    ) -> Result<(Op, Ty), Diagnostic> {
        let name = sig.name;
        let in_ty = self.m.nodes[nodes[0]].ty.clone();
        let Ty::Tensor(shape) = in_ty.clone() else {
            return Err(Diagnostic::error(
                Code::E0207,
                format!("`{name}` takes a tensor, found {in_ty}"),
                spans[0],
            )
            .primary_label(format!("{in_ty}"))
            .with_help("class labels feed `embedding` or a classification loss"));
        };
        let same = Ty::Tensor(shape.clone());
        let batched = self.batched(&shape);
        let need_rank = |r: usize, want: &str| -> Result<(), Diagnostic> {
            if shape.rank() != r || !batched {
                Err(Diagnostic::error(
                    Code::E0302,
                    format!("`{name}` expects {want}, found {shape}"),
                    spans[0],
                )
                .primary_label(format!("{shape}")))
            } else {
                Ok(())
            }
        };
        use catalog::{Function as F, Shaping as S};
        match fun {
            Fun::Elementwise(base) => {
                let choice = elementwise::by_word(name).and_then(|(_, choice)| choice);
                Ok((Op::Activation(elementwise_call(base, choice, a)?), same))
            }
            Fun::Function(f @ (F::Softmax | F::LogSoftmax)) => {
                let ax = self.axis(a, "axis", &shape, name)?;
                let op = if f == F::Softmax {
                    Op::Softmax(ax)
                } else {
                    Op::LogSoftmax(ax)
                };
                Ok((op, same))
            }
            Fun::Shaping(S::Dropout) => {
                let p = a.float_in("p", |v| (0.0..1.0).contains(&v), "must be in [0, 1)")?;
                Ok((Op::Dropout(p), same))
            }
            Fun::Shaping(S::Flatten) => {
                if shape.rank() < 2 || !self.batched(&shape) {
                    return Err(Diagnostic::error(
                        Code::E0302,
                        format!("`flatten` expects `[N, ...]`, found {shape}"),
                        spans[0],
                    ));
                }
                let n = Shape::new(shape.0[1..].to_vec())
                    .per_sample()
                    .ok_or_else(|| too_large(spans[0]))?;
                check_size(n, spans[0])?;
                Ok((
                    Op::Flatten,
                    Ty::Tensor(Shape::new(vec![shape.0[0], Dim::Fixed(n)])),
                ))
            }
            Fun::Shaping(S::Reshape) => self
                .reshape(a, &shape, spans[0])
                .map(|s| (Op::Reshape, Ty::Tensor(s))),
            Fun::Shaping(s @ (S::Last | S::First)) => {
                need_rank(3, "`[N, T, F]`")?;
                let op = if s == S::Last { Op::Last } else { Op::First };
                Ok((
                    op,
                    Ty::Tensor(Shape::new(vec![
                        shape.0[0],
                        Dim::Fixed(shape.fixed(2).unwrap_or(1)),
                    ])),
                ))
            }
            Fun::Shaping(s @ (S::Maxpool1d | S::Maxpool2d | S::Avgpool1d | S::Avgpool2d)) => {
                let nd = if matches!(s, S::Maxpool1d | S::Avgpool1d) {
                    1
                } else {
                    2
                };
                if nd == 1 {
                    need_rank(3, "`[N, C, L]`")?;
                } else {
                    need_rank(4, "`[N, C, H, W]`")?;
                }
                let is_max = matches!(s, S::Maxpool1d | S::Maxpool2d);
                let reads = (
                    a.ints("k", nd, 1),
                    a.get("stride").map(|_| a.ints("stride", nd, 1)).transpose(),
                    a.ints("pad", nd, 0),
                    if is_max {
                        Ok(true)
                    } else {
                        a.boolean("count_pad")
                    },
                );
                let (k, stride, pad, count_pad) = every(reads, &mut self.diags)?;
                let stride = stride.unwrap_or_else(|| k.clone());
                if let Some(i) = (0..nd).find(|&i| pad[i] >= k[i]) {
                    return Err(Diagnostic::error(
                        Code::E0313,
                        format!(
                            "pooling padding {} must be smaller than the window {}",
                            pad[i], k[i]
                        ),
                        a.span_of("pad"),
                    )
                    .primary_label("padding too large"));
                }
                let mut dims = vec![shape.0[0], shape.0[1]];
                for i in 0..nd {
                    let len = shape.fixed(2 + i).unwrap_or(1);
                    dims.push(Dim::Fixed(
                        self.window(len, k[i], stride[i], pad[i], 1, a, spans[0], &shape)?,
                    ));
                }
                let kind = if is_max { PoolKind::Max } else { PoolKind::Avg };
                Ok((
                    Op::Pool {
                        kind,
                        kernel: k,
                        stride,
                        pad,
                        count_pad,
                    },
                    Ty::Tensor(Shape::new(dims)),
                ))
            }
            Fun::Shaping(s @ (S::GlobalAvgpool | S::GlobalMaxpool)) => {
                if shape.rank() < 3 || !self.batched(&shape) {
                    return Err(Diagnostic::error(
                        Code::E0302,
                        format!("`{name}` expects `[N, C, ...]` with spatial axes, found {shape}"),
                        spans[0],
                    )
                    .primary_label(format!("{shape}")));
                }
                let kind = if s == S::GlobalAvgpool {
                    PoolKind::Avg
                } else {
                    PoolKind::Max
                };
                Ok((
                    Op::GlobalPool(kind),
                    Ty::Tensor(Shape::new(vec![shape.0[0], shape.0[1]])),
                ))
            }
            Fun::Shaping(S::Spp) => {
                need_rank(4, "`[N, C, H, W]`")?;
                let levels_c = a.get("levels").cloned();
                let levels: Vec<u64> = match levels_c.as_ref().map(|c| &c.v) {
                    Some(CVal::List(xs)) | Some(CVal::Tuple(xs)) if !xs.is_empty() => xs
                        .iter()
                        .map(|x| match crate::check::args::as_int(x) {
                            Some(v) if (1..=1024).contains(&v) => Ok(v as u64),
                            _ => Err(Diagnostic::error(
                                Code::E0313,
                                "pyramid levels are integers from 1 to 1024",
                                x.span,
                            )),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => {
                        return Err(Diagnostic::error(
                            Code::E0206,
                            "`levels` must be a list of integers like `[1, 2, 4]`",
                            a.span_of("levels"),
                        ))
                    }
                };
                let c = shape.fixed(1).unwrap_or(1);
                let bins: u64 = levels.iter().map(|l| l * l).sum();
                Ok((
                    Op::Spp(levels),
                    Ty::Tensor(Shape::new(vec![shape.0[0], Dim::Fixed(c * bins)])),
                ))
            }
            Fun::Function(f @ (F::Sum | F::Mean | F::Max | F::Min)) => {
                let keepdims = a.boolean("keepdims")?;
                let axes: Vec<usize> = match a.get("axis") {
                    // Without an axis: every non-batch axis (every axis in unbatched mode).
                    None => (usize::from(!self.unbatched)..shape.rank()).collect(),
                    Some(c) => {
                        let items: Vec<Const> = match &c.v {
                            CVal::List(xs) | CVal::Tuple(xs) => xs.clone(),
                            _ => vec![c.clone()],
                        };
                        let mut axes = Vec::new();
                        for it in items {
                            let raw = crate::check::args::as_int(&it).ok_or_else(|| {
                                Diagnostic::error(Code::E0206, "`axis` must be an integer", it.span)
                            })?;
                            match shape.axis(raw) {
                                Some(0) if shape.has_batch() => {
                                    return Err(Diagnostic::error(
                                        Code::E0309,
                                        format!("`{name}` cannot reduce the batch axis"),
                                        it.span,
                                    )
                                    .primary_label("axis 0 is the batch")
                                    .with_help("losses average over the batch themselves"))
                                }
                                Some(ax) => axes.push(ax),
                                None => {
                                    return Err(Diagnostic::error(
                                        Code::E0309,
                                        format!("axis {raw} is out of range for {shape}"),
                                        it.span,
                                    ))
                                }
                            }
                        }
                        axes.sort_unstable();
                        axes.dedup();
                        axes
                    }
                };
                let dims = shape
                    .0
                    .iter()
                    .enumerate()
                    .filter_map(|(i, d)| match (axes.contains(&i), keepdims) {
                        (false, _) => Some(*d),
                        (true, true) => Some(Dim::Fixed(1)),
                        (true, false) => None,
                    })
                    .collect();
                let kind = match f {
                    F::Sum => ReduceKind::Sum,
                    F::Mean => ReduceKind::Mean,
                    F::Max => ReduceKind::Max,
                    F::Min => ReduceKind::Min,
                    F::Softmax | F::LogSoftmax | F::Concat => {
                        unreachable!("matched as a reduction")
                    }
                };
                Ok((
                    Op::Reduce {
                        kind,
                        axes,
                        keepdims,
                    },
                    Ty::Tensor(Shape::new(dims)),
                ))
            }
            Fun::Function(F::Concat) => {
                let ax = self.axis(a, "axis", &shape, "concat")?;
                let mut total = 0u64;
                for (n, span) in nodes.iter().zip(spans) {
                    let ty = self.m.nodes[*n].ty.clone();
                    let Ty::Tensor(s) = &ty else {
                        return Err(Diagnostic::error(
                            Code::E0207,
                            format!("`concat` takes tensors, found {ty}"),
                            *span,
                        ));
                    };
                    let compatible = s.rank() == shape.rank()
                        && (0..s.rank()).all(|i| i == ax || s.0[i] == shape.0[i]);
                    if !compatible {
                        return Err(Diagnostic::error(
                            Code::E0315,
                            format!("cannot concatenate {shape} and {s} along axis {ax}"),
                            *span,
                        )
                        .primary_label(format!("{s}"))
                        .with_label(spans[0], format!("{shape}"))
                        .with_note("all axes except the joined one must be equal"));
                    }
                    total = total.saturating_add(s.fixed(ax).unwrap_or(0));
                }
                check_size(total, call_span)?;
                let mut out = shape.clone();
                out.0[ax] = Dim::Fixed(total);
                Ok((Op::Concat(ax), Ty::Tensor(out)))
            }
        }
    }

    fn reshape(&self, a: &Bound, shape: &Shape, in_span: Span) -> Result<Shape, Diagnostic> {
        let c = a.get("shape").expect("required argument");
        let CVal::List(items) = &c.v else {
            return Err(Diagnostic::error(
                Code::E0206,
                "`reshape` takes a list of dimensions like `[N, 1, 8, 8]`",
                c.span,
            ));
        };
        let mut dims = Vec::new();
        let mut infer = None;
        for (i, it) in items.iter().enumerate() {
            match (&it.v, i) {
                (CVal::Dim(Dim::Batch), 0) => dims.push(Dim::Batch),
                (CVal::Dim(Dim::Batch), _) => {
                    return Err(Diagnostic::error(
                        Code::E0310,
                        "the batch dimension must stay first",
                        it.span,
                    ))
                }
                (_, 0) if !self.unbatched => {
                    return Err(Diagnostic::error(
                        Code::E0310,
                        "`reshape` must keep the batch dimension first",
                        it.span,
                    )
                    .with_help("start the shape with the batch symbol: `reshape([N, ...])`"))
                }
                (CVal::Num { v, int: true }, _) if *v == -1.0 => {
                    if infer.is_some() {
                        return Err(Diagnostic::error(
                            Code::E0310,
                            "only one dimension may be -1",
                            it.span,
                        ));
                    }
                    infer = Some(i);
                    dims.push(Dim::Fixed(1));
                }
                (CVal::Num { v, int: true }, _) if *v >= 1.0 && *v <= MAX_DIM as f64 => {
                    dims.push(Dim::Fixed(*v as u64))
                }
                _ => {
                    return Err(Diagnostic::error(
                        Code::E0206,
                        "a reshape dimension is a positive integer, -1, or the batch symbol first",
                        it.span,
                    ))
                }
            }
        }
        let have = shape.per_sample().ok_or_else(|| too_large(in_span))?;
        let mut out = Shape::new(dims);
        let want = out.per_sample().ok_or_else(|| too_large(c.span))?;
        if let Some(i) = infer {
            if want == 0 || have % want != 0 {
                return Err(Diagnostic::error(
                    Code::E0310,
                    format!(
                        "cannot reshape {shape} ({have} values per sample) so that -1 is whole"
                    ),
                    c.span,
                )
                .with_label(in_span, format!("{shape}")));
            }
            out.0[i] = Dim::Fixed(have / want);
        } else if want != have {
            return Err(Diagnostic::error(
                Code::E0310,
                format!(
                    "cannot reshape {shape} into {out}: {have} values per sample become {want}"
                ),
                c.span,
            )
            .primary_label(format!("{want} values per sample"))
            .with_label(in_span, format!("{shape}: {have} values per sample")));
        }
        Ok(out)
    }
}

/// The function an elementwise call applies: the variant its word argument chooses, with
/// its parameters bound and checked against their bounds.
fn elementwise_call(base: Elem, choice: Option<Choice>, a: &Bound) -> Result<Func, Diagnostic> {
    let mut elem = base;
    if let Some(choice) = choice {
        let words: Vec<&'static str> = choice.options.iter().map(|o| o.0).collect();
        let chosen = a.choice(choice.arg, &words)?;
        if let Some(o) = choice.options.iter().find(|o| o.0 == chosen) {
            elem = o.1;
        }
    }
    let mut p = [0.0; 2];
    for (k, param) in elem.def().params.iter().enumerate() {
        p[k] = match param.min {
            elementwise::Bound::Value(min) => {
                a.float_in(param.name, |v| v >= min, &format!("must be at least {min}"))?
            }
            elementwise::Bound::Param(j) => {
                let (lower, name) = (p[j], elem.def().params[j].name);
                a.float_in(
                    param.name,
                    |v| v >= lower,
                    &format!("must be at least `{name}`"),
                )?
            }
        };
    }
    Ok(Func::with(elem, p))
}

/// The built-ins checked by the `function` rule.
#[derive(Clone, Copy)]
pub(super) enum Fun {
    Shaping(catalog::Shaping),
    Function(catalog::Function),
    Elementwise(Elem),
}

fn too_large(span: Span) -> Diagnostic {
    Diagnostic::error(
        Code::E0311,
        "the tensor has too many elements per sample",
        span,
    )
    .primary_label("more than 2^63 values")
}

fn check_size(n: u64, span: Span) -> Result<(), Diagnostic> {
    if n > MAX_DIM {
        Err(
            Diagnostic::error(Code::E0311, format!("dimension {n} is out of range"), span)
                .primary_label("sizes are below 2^31"),
        )
    } else {
        Ok(())
    }
}
