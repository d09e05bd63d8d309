//! Built-in layers: the shape rules of layers and recurrent layers, windows,
//! initializers.

use super::{Elab, Naming};
use crate::check::args::{bind_call, every, Bound, CVal};
use crate::check::catalog::{self, Id, Sig};
use crate::check::graph::*;
use crate::diag::{did_you_mean, Code, Diagnostic};
use crate::ir::shape::{window_out, Dim, Shape};
use crate::span::Span;
use crate::syntax::ast;

impl Elab<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn apply_builtin_layer(
        &mut self,
        sig: &Sig,
        layer: catalog::Layer,
        a: &Bound,
        input: NodeId,
        in_span: Span,
        call: &ast::Call,
        name: String,
        shared: bool,
        naming: Option<&mut Naming>,
    ) -> Result<(Op, Ty), Diagnostic> {
        let in_ty = self.m.nodes[input].ty.clone();
        if let Some(&existing) = self.layers_by_name.get(&name) {
            if !shared {
                return Err(Diagnostic::error(
                    Code::E0204,
                    format!("two layers are named `{name}`"),
                    call.span,
                )
                .primary_label("second layer with this name")
                .with_label(self.m.layers[existing].span, "first one here")
                .with_help("give each a different `as` name"));
            }
            let l = &self.m.layers[existing];
            if l.input != in_ty {
                return Err(Diagnostic::error(
                    Code::E0314,
                    format!(
                        "shared layer `{name}` is applied to {in_ty}, but earlier to {}",
                        l.input
                    ),
                    in_span,
                )
                .primary_label(format!("{in_ty}"))
                .with_label(l.span, format!("first applied to {}", l.input))
                .with_help("declare a second layer for inputs of this shape"));
            }
            return Ok((Op::Layer(existing), l.output.clone()));
        }
        let (kind, out, params, macs) = self.layer_rule(sig, layer, a, &in_ty, in_span)?;
        let id = self.m.layers.len();
        let mut ids = Vec::new();
        for (pname, shape, init, role, trainable) in params {
            ids.push(self.m.params.len());
            self.m.params.push(ParamSpec {
                name: format!("{name}.{pname}"),
                shape,
                init,
                role,
                trainable,
                layer: id,
            });
        }
        self.m.layers.push(LayerInst {
            name: name.clone(),
            kind,
            input: in_ty,
            output: out.clone(),
            params: ids,
            span: call.span,
            macs,
            default_init: a.get("init").is_none(),
        });
        self.layers_by_name.insert(name, id);
        if let Some(n) = naming {
            n.created.push(id);
        }
        Ok((Op::Layer(id), out))
    }

    /// Kind, output type, parameters and MACs per sample of a built-in layer.
    fn layer_rule(
        &mut self,
        sig: &Sig,
        layer: catalog::Layer,
        a: &Bound,
        in_ty: &Ty,
        in_span: Span,
    ) -> Result<LayerRule, Diagnostic> {
        use catalog::Layer as L;
        let name = sig.name;
        // Every layer but `embedding` reads a tensor.
        let tensor = || match in_ty {
            Ty::Tensor(s) => Ok(s.clone()),
            _ => Err(Diagnostic::error(
                Code::E0207,
                format!("`{name}` takes a tensor, found {in_ty}"),
                in_span,
            )
            .primary_label(format!("{in_ty}"))
            .with_help("class labels feed `embedding` or a classification loss")),
        };
        let rank_err = |shape: &Shape, want: &str, example: &str| {
            Diagnostic::error(
                Code::E0302,
                format!("`{name}` expects {want}, found {shape}"),
                in_span,
            )
            .primary_label(format!("{shape}"))
            .with_help(example.to_string())
        };
        let per_sample_rest = |s: &Shape, skip_last: bool| -> u64 {
            let end = if skip_last { s.rank() - 1 } else { s.rank() };
            (1..end).filter_map(|i| s.fixed(i)).product()
        };
        match layer {
            L::Embedding => {
                let Ty::Labels { shape, classes } = in_ty else {
                    return Err(Diagnostic::error(
                        Code::E0207,
                        format!("`embedding` takes class ids, found {in_ty}"),
                        in_span,
                    )
                    .primary_label(format!("{in_ty}"))
                    .with_help("declare the input as `class[N, T] of VOCAB`"));
                };
                let reads = (
                    a.size("vocab"),
                    a.size("dim"),
                    a.boolean("frozen"),
                    self.init(a, Init::Normal(1.0)),
                );
                let (vocab, dim, frozen, init) = every(reads, &mut self.diags)?;
                if vocab != *classes {
                    return Err(Diagnostic::error(Code::E0307, format!("`embedding` has a vocabulary of {vocab} but its input has {classes} classes"), a.span_of("vocab"))
                    .primary_label(format!("vocab {vocab}"))
                    .with_label(in_span, format!("{in_ty}")));
                }
                let mut out = shape.clone();
                out.0.push(Dim::Fixed(dim));
                let kind = LayerKind::Embedding { vocab, dim };
                Ok((
                    kind,
                    Ty::Tensor(out),
                    vec![("weight", vec![vocab, dim], init, ParamRole::Weight, !frozen)],
                    0,
                ))
            }
            L::Dense => {
                let shape = tensor()?;
                if shape.rank() < 2 || !self.batched(&shape) {
                    return Err(rank_err(
                        &shape,
                        "`[N, ..., F]`",
                        "add a feature axis: `reshape([N, 1])`",
                    ));
                }
                let f = shape.last().unwrap_or(1);
                let reads = (
                    a.size("units"),
                    a.boolean("bias"),
                    self.init(a, Init::Xavier),
                );
                let (units, bias, init) = every(reads, &mut self.diags)?;
                let mut ps = vec![("weight", vec![f, units], init, ParamRole::Weight, true)];
                if bias {
                    ps.push((
                        "bias",
                        vec![units],
                        Init::Constant(0.0),
                        ParamRole::Bias,
                        true,
                    ));
                }
                let macs = per_sample_rest(&shape, true)
                    .saturating_mul(f)
                    .saturating_mul(units);
                Ok((
                    LayerKind::Dense { units, bias },
                    Ty::Tensor(shape.with_last(units)),
                    ps,
                    macs,
                ))
            }
            L::Conv1d | L::Conv2d => {
                let shape = tensor()?;
                let nd = if layer == L::Conv1d { 1 } else { 2 };
                if shape.rank() != nd + 2 || !self.batched(&shape) {
                    return Err(if nd == 1 {
                        rank_err(
                            &shape,
                            "`[N, C, L]`",
                            "reshape the input: `reshape([N, 1, L])`",
                        )
                    } else {
                        rank_err(
                            &shape,
                            "`[N, C, H, W]`",
                            "reshape the input: `reshape([N, 1, H, W])`",
                        )
                    });
                }
                let c = shape.fixed(1).unwrap_or(1);
                let reads = (
                    a.size("out"),
                    a.ints("k", nd, 1),
                    a.ints("stride", nd, 1),
                    a.ints("pad", nd, 0),
                    a.ints("dilation", nd, 1),
                    a.boolean("bias"),
                    self.init(a, Init::Xavier),
                );
                let (out, k, stride, pad, dil, bias, init) = every(reads, &mut self.diags)?;
                let mut dims = vec![shape.0[0], Dim::Fixed(out)];
                for i in 0..nd {
                    let len = shape.fixed(2 + i).unwrap_or(1);
                    let fits =
                        self.window(len, k[i], stride[i], pad[i], dil[i], a, in_span, &shape);
                    dims.push(Dim::Fixed(fits.map_err(|d| {
                        torch_order(d, sig.name, nd, out, c, &k, &stride, &pad)
                    })?));
                }
                let out_shape = Shape::new(dims);
                let mut wshape = vec![out, c];
                wshape.extend(&k);
                let mut ps = vec![("weight", wshape, init, ParamRole::Weight, true)];
                if bias {
                    ps.push((
                        "bias",
                        vec![out],
                        Init::Constant(0.0),
                        ParamRole::Bias,
                        true,
                    ));
                }
                let positions = out_shape.per_sample().unwrap_or(0);
                let macs = positions
                    .saturating_mul(c)
                    .saturating_mul(k.iter().product());
                let kind = LayerKind::Conv {
                    out,
                    kernel: k,
                    stride,
                    pad,
                    dilation: dil,
                    bias,
                };
                Ok((kind, Ty::Tensor(out_shape), ps, macs))
            }
            L::Batchnorm => {
                let shape = tensor()?;
                if shape.rank() < 2 || !self.batched(&shape) {
                    return Err(rank_err(
                        &shape,
                        "`[N, C]` or `[N, C, ...]`",
                        "batchnorm normalizes axis 1 over the batch",
                    ));
                }
                let c = shape.fixed(1).unwrap_or(1);
                let reads = (
                    a.float_in(
                        "momentum",
                        |v| (0.0..=1.0).contains(&v),
                        "must be in [0, 1]",
                    ),
                    a.float_in("eps", |v| v > 0.0, "must be positive"),
                );
                let (momentum, eps) = every(reads, &mut self.diags)?;
                let mut ps = scale_shift(c);
                ps.extend([
                    (
                        "running_mean",
                        vec![c],
                        Init::Constant(0.0),
                        ParamRole::State,
                        false,
                    ),
                    (
                        "running_var",
                        vec![c],
                        Init::Constant(1.0),
                        ParamRole::State,
                        false,
                    ),
                ]);
                Ok((
                    LayerKind::BatchNorm { momentum, eps },
                    Ty::Tensor(shape),
                    ps,
                    0,
                ))
            }
            L::Layernorm => {
                let shape = tensor()?;
                if shape.rank() < 2 {
                    return Err(rank_err(
                        &shape,
                        "`[N, ..., F]`",
                        "layernorm normalizes the last axis",
                    ));
                }
                let f = shape.last().unwrap_or(1);
                let eps = a.float_in("eps", |v| v > 0.0, "must be positive")?;
                Ok((
                    LayerKind::LayerNorm { eps },
                    Ty::Tensor(shape),
                    scale_shift(f),
                    0,
                ))
            }
            L::Prelu => {
                let shape = tensor()?;
                let c = if shape.rank() >= 2 {
                    shape.fixed(1).unwrap_or(1)
                } else {
                    1
                };
                let init = self.init(a, Init::Constant(0.25))?;
                Ok((
                    LayerKind::Prelu,
                    Ty::Tensor(shape),
                    vec![("weight", vec![c], init, ParamRole::Norm, true)],
                    0,
                ))
            }
            L::Rnn => self.recurrent_rule(Cell::Rnn, a, tensor()?, &rank_err),
            L::Lstm => self.recurrent_rule(Cell::Lstm, a, tensor()?, &rank_err),
            L::Gru => self.recurrent_rule(Cell::Gru, a, tensor()?, &rank_err),
        }
    }

    /// The rule of `rnn`, `lstm` and `gru`.
    fn recurrent_rule(
        &mut self,
        cell: Cell,
        a: &Bound,
        shape: Shape,
        rank_err: &dyn Fn(&Shape, &str, &str) -> Diagnostic,
    ) -> Result<LayerRule, Diagnostic> {
        if shape.rank() != 3 || !self.batched(&shape) {
            return Err(rank_err(
                &shape,
                "`[N, T, F]`",
                "recurrent layers read a sequence of T steps of F features",
            ));
        }
        let t = shape.fixed(1).unwrap_or(1);
        let f = shape.fixed(2).unwrap_or(1);
        let activation = if cell == Cell::Rnn {
            a.choice("activation", &["tanh", "relu"])
        } else {
            Ok("tanh")
        };
        let reads = (
            a.size("h"),
            activation,
            a.boolean("bidirectional"),
            a.boolean("sequence"),
        );
        let (h, activation, bidirectional, sequence) = every(reads, &mut self.diags)?;
        let activation = match activation {
            "relu" => RnnActivation::Relu,
            _ => RnnActivation::Tanh,
        };
        let g = cell.gates();
        let dirs: &[&'static str] = if bidirectional {
            &["", "_reverse"]
        } else {
            &[""]
        };
        let mut ps = Vec::new();
        for d in dirs {
            let names: [&'static str; 4] = if d.is_empty() {
                ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
            } else {
                [
                    "weight_ih_reverse",
                    "weight_hh_reverse",
                    "bias_ih_reverse",
                    "bias_hh_reverse",
                ]
            };
            ps.push((
                names[0],
                vec![g * h, f],
                Init::RecurrentUniform,
                ParamRole::Weight,
                true,
            ));
            ps.push((
                names[1],
                vec![g * h, h],
                Init::RecurrentUniform,
                ParamRole::Weight,
                true,
            ));
            ps.push((
                names[2],
                vec![g * h],
                Init::RecurrentUniform,
                ParamRole::Bias,
                true,
            ));
            ps.push((
                names[3],
                vec![g * h],
                Init::RecurrentUniform,
                ParamRole::Bias,
                true,
            ));
        }
        let width = h * dirs.len() as u64;
        let out = if sequence {
            Shape::new(vec![shape.0[0], Dim::Fixed(t), Dim::Fixed(width)])
        } else {
            Shape::new(vec![shape.0[0], Dim::Fixed(width)])
        };
        let macs = t
            .saturating_mul(g * h)
            .saturating_mul(f + h)
            .saturating_mul(dirs.len() as u64);
        let kind = LayerKind::Recurrent {
            cell,
            hidden: h,
            activation,
            bidirectional,
            sequence,
        };
        Ok((kind, Ty::Tensor(out), ps, macs))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn window(
        &self,
        len: u64,
        k: u64,
        stride: u64,
        pad: u64,
        dil: u64,
        a: &Bound,
        in_span: Span,
        shape: &Shape,
    ) -> Result<u64, Diagnostic> {
        window_out(len, k, stride, pad, dil).ok_or_else(|| {
            let covered = dil * (k - 1) + 1;
            Diagnostic::error(Code::E0303, format!("a window of {covered} does not fit in an input of size {len} with padding {pad}"), a.span_of("k"))
                .primary_label(format!("window {covered}"))
                .with_label(in_span, format!("{shape}"))
                .with_note("output size = floor((L + 2·pad − dilation·(k − 1) − 1) / stride) + 1 must be at least 1")
                .with_help(if pad == 0 {
                    "use a smaller kernel or add padding (`pad: 1`)".to_string()
                } else {
                    format!("use a smaller kernel or more padding than `pad: {pad}`")
                })
        })
    }

    fn init(&mut self, a: &Bound, default: Init) -> Result<Init, Diagnostic> {
        let Some(c) = a.get("init") else {
            return Ok(default);
        };
        let (name, args) = match &c.v {
            CVal::Word(w) => (w.as_str(), vec![]),
            CVal::Call(n, args) => (n.as_str(), args.clone()),
            _ => return Err(
                Diagnostic::error(Code::E0206, "`init` takes an initializer", c.span).with_note(
                    "initializers: he, xavier, normal(std), uniform(a), zeros, ones, constant(v)",
                ),
            ),
        };
        let inits = [
            "he", "xavier", "normal", "uniform", "zeros", "ones", "constant",
        ];
        let Some((sig, init)) = catalog::lookup(name).and_then(|s| match s.id {
            Id::Init(i) => Some((s, i)),
            _ => None,
        }) else {
            let mut d =
                Diagnostic::error(Code::E0202, format!("unknown initializer `{name}`"), c.span)
                    .primary_label("not an initializer");
            d = match did_you_mean(name, inits) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d.with_note(
                    "initializers: he, xavier, normal(std), uniform(a), zeros, ones, constant(v)",
                ),
            };
            return Err(d);
        };
        let b = bind_call(name, sig.params, args, c.span)?;
        use catalog::Init as I;
        Ok(match init {
            I::He => Init::He,
            I::Xavier => Init::Xavier,
            I::Normal => Init::Normal(b.float_in("std", |v| v >= 0.0, "must be at least 0")?),
            I::Uniform => Init::Uniform(b.float_in("a", |v| v >= 0.0, "must be at least 0")?),
            I::Zeros => Init::Constant(0.0),
            I::Ones => Init::Constant(1.0),
            I::Constant => Init::Constant(b.float("v")?),
        })
    }
}

/// A parameter of a layer: name, shape, initializer, role, trainable.
type ParamDef = (&'static str, Vec<u64>, Init, ParamRole, bool);

/// What a layer rule computes: kind, output type, parameters, MACs per sample.
type LayerRule = (LayerKind, Ty, Vec<ParamDef>, u64);

/// A convolution whose window does not fit, called with its output channels equal to the
/// input's channels: most likely PyTorch's order `Conv2d(in, out, k)`, read here as
/// `(out, k, stride)`. The help says so and gives the call in Kiln's order.
#[allow(clippy::too_many_arguments)]
fn torch_order(
    d: Diagnostic,
    name: &str,
    nd: usize,
    out: u64,
    c: u64,
    k: &[u64],
    stride: &[u64],
    pad: &[u64],
) -> Diagnostic {
    let single = |v: &[u64]| v.iter().all(|&x| x == v[0]);
    if out != c || !single(k) || !single(stride) {
        return d;
    }
    let torch = format!("Conv{nd}d");
    let pad = match pad.first() {
        Some(&p) if p > 0 => format!(", pad: {p}"),
        _ => String::new(),
    };
    let (k, s) = (k[0], stride[0]);
    d.with_help(format!(
        "`{name}({out}, {k}, {s}{pad})` reads as {out} output channel{}, a window of {k} and a stride of {s}: Kiln takes the input's channels ({c}) from its shape, so PyTorch's `{torch}({out}, {k}, {s})` is `{name}({k}, {s}{pad})` here",
        if out == 1 { "" } else { "s" }
    ))
}

/// The scale (γ, ones) and shift (β, zeros) of a normalization over `c` features.
fn scale_shift(c: u64) -> Vec<ParamDef> {
    vec![
        (
            "weight",
            vec![c],
            Init::Constant(1.0),
            ParamRole::Norm,
            true,
        ),
        ("bias", vec![c], Init::Constant(0.0), ParamRole::Norm, true),
    ]
}
