//! ONNX export: a checked model's evaluation graph — no dropout, batch normalization with
//! its running statistics, rrelu at its mean slope — with its weights as an ONNX model.
//! Inputs and outputs keep the model's names, the batch axis is symbolic, parameters are
//! initializers under Kiln's names, and the standardization a checkpoint carries is done
//! by the first nodes (and undone after a regression output), so a runtime fed raw inputs
//! returns what `kiln predict` returns. docs/EXPORT.md has the mapping of every construct.

mod elementwise;
mod emit;
mod layers;
mod proto;

use crate::check::graph::{CheckedModel, NodeId, Op, PoolKind, ReduceKind, Ty};
use crate::diag::{Code, Diagnostic};
use crate::ir::{Dim, Shape};
use crate::lower::matmul_operands;
use crate::ops::elementwise::Binary;
use crate::runtime::data::{scale_of, Standardizer};
use crate::runtime::program::Program;
use crate::syntax::ast::BinOp;
use emit::{i64s, int, ints, Emit};
use ndarray::ArrayD;
use prost::Message;
use proto::tensor_proto::DataType;
use proto::tensor_shape_proto::{dimension, Dimension};
use proto::{
    type_proto, GraphProto, ModelProto, OperatorSetIdProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use std::ops::RangeInclusive;

/// The opsets Kiln writes. Every construct of the language exports at each of them: where
/// ONNX added an operator later than the opset asked for (Gelu, Mish, HardSwish,
/// LayerNormalization), it is composed from older ones.
pub const OPSETS: RangeInclusive<u32> = 13..=28;

/// The opset written by default: the newest that ONNX Runtime (1.32) runs.
pub const DEFAULT_OPSET: u32 = 28;

/// The ONNX IR version that goes with an opset (ONNX's versioning table).
fn ir_version(opset: u32) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        21..=22 => 10,
        23 => 11,
        24 => 12,
        25..=27 => 13,
        _ => 14,
    }
}

/// The serialized ONNX model of `p` with parameters `params` (in the model's order) and
/// the standardization `st`, at `opset` (in [`OPSETS`]). An output that needs a target
/// (a loss, or a target itself) has no place in an inference graph: that is an error.
pub fn export(
    p: &Program,
    params: &[ArrayD<f32>],
    st: Option<&Standardizer>,
    opset: u32,
) -> Result<Vec<u8>, Diagnostic> {
    let m = &p.model;
    let needed = needed(m)?;
    let reserved = m
        .inputs
        .iter()
        .chain(&m.outputs)
        .map(|port| port.name.clone());
    let mut e = Emit::new(opset, reserved);
    let mut vals: Vec<String> = vec![String::new(); m.nodes.len()];
    let mut param_done = vec![false; m.params.len()];
    for (id, node) in m.nodes.iter().enumerate() {
        if !needed[id] {
            continue;
        }
        let a: Vec<&str> = node.inputs.iter().map(|&i| vals[i].as_str()).collect();
        let in_shape = node
            .inputs
            .first()
            .and_then(|&i| m.nodes[i].ty.shape().cloned())
            .unwrap_or_default();
        let hint = node.label.as_str();
        let out_shape = node.ty.shape().cloned().unwrap_or_default();
        vals[id] = match &node.op {
            Op::Input(i) => {
                let name = m.inputs[*i].name.clone();
                match st {
                    Some(s)
                        if node.ty.shape().is_some() && !matches!(node.ty, Ty::Labels { .. }) =>
                    {
                        standardize(&mut e, &name, &out_shape, s.mean.get(*i), s.std.get(*i))
                    }
                    _ => name,
                }
            }
            Op::Target(_) | Op::Loss(_) => unreachable!("outputs that need a target are refused"),
            Op::Const(v) => e.scalar(*v as f32),
            Op::Layer(l) => {
                let layer = &m.layers[*l];
                let names: Vec<String> = layer
                    .params
                    .iter()
                    .map(|&k| {
                        let spec = &m.params[k];
                        if !param_done[k] {
                            param_done[k] = true;
                            let values: Vec<f32> = params[k].iter().copied().collect();
                            e.param(&spec.name, &spec.shape, &values);
                        }
                        spec.name.clone()
                    })
                    .collect();
                layers::layer(&mut e, &layer.kind, a[0], &in_shape, &names, hint)
            }
            Op::Activation(f) if f.def().f == crate::ops::elementwise::Expr::X => a[0].to_string(),
            Op::Activation(f) => elementwise::apply(&mut e, *f, a[0], hint),
            Op::Softmax(ax) => e.node("Softmax", &[a[0]], vec![int("axis", *ax as i64)], hint),
            Op::LogSoftmax(ax) => {
                e.node("LogSoftmax", &[a[0]], vec![int("axis", *ax as i64)], hint)
            }
            Op::Dropout(_) => a[0].to_string(),
            Op::Pool {
                kind,
                kernel,
                stride,
                pad,
                count_pad,
            } => {
                let mut attrs = vec![
                    ints("kernel_shape", &i64s(kernel)),
                    ints("strides", &i64s(stride)),
                    ints("pads", &[i64s(pad), i64s(pad)].concat()),
                ];
                let op = match kind {
                    PoolKind::Max => "MaxPool",
                    PoolKind::Avg => {
                        attrs.push(int("count_include_pad", i64::from(*count_pad)));
                        "AveragePool"
                    }
                };
                e.node(op, &[a[0]], attrs, hint)
            }
            Op::GlobalPool(kind) => {
                let op = match kind {
                    PoolKind::Max => "GlobalMaxPool",
                    PoolKind::Avg => "GlobalAveragePool",
                };
                let pooled = e.node(op, &[a[0]], vec![], hint);
                e.node("Flatten", &[&pooled], vec![int("axis", 1)], hint)
            }
            Op::Spp(levels) => spp(&mut e, a[0], &in_shape, levels, hint),
            Op::Flatten => e.node("Flatten", &[a[0]], vec![int("axis", 1)], hint),
            Op::Reshape => e.reshape(a[0], &dims_of(&out_shape), hint),
            Op::Last | Op::First => {
                let t = in_shape.fixed(1).unwrap_or(1) as i64;
                let step = if node.op == Op::Last { t - 1 } else { 0 };
                let index = e.ints("step", &[], &[step]);
                e.node("Gather", &[a[0], &index], vec![int("axis", 1)], hint)
            }
            Op::Binary(BinOp::MatMul) => {
                let rhs = m.nodes[node.inputs[1]]
                    .ty
                    .shape()
                    .cloned()
                    .unwrap_or_default();
                matmul(&mut e, a[0], &in_shape, a[1], &rhs, &out_shape, hint)
            }
            Op::Binary(op) => {
                let f = match op {
                    BinOp::Add => Binary::Add,
                    BinOp::Sub => Binary::Sub,
                    BinOp::Mul => Binary::Mul,
                    BinOp::Div => Binary::Div,
                    BinOp::MatMul => unreachable!("`@` is matched above"),
                };
                elementwise::binary(&mut e, f, a[0], a[1], hint)
            }
            Op::Neg => e.node("Neg", &[a[0]], vec![], hint),
            Op::Reduce {
                kind,
                axes,
                keepdims,
            } => {
                let op = match kind {
                    ReduceKind::Sum => "ReduceSum",
                    ReduceKind::Mean => "ReduceMean",
                    ReduceKind::Max => "ReduceMax",
                    ReduceKind::Min => "ReduceMin",
                };
                let axes: Vec<i64> = axes.iter().map(|&x| x as i64).collect();
                e.reduce(op, a[0], &axes, *keepdims, hint)
            }
            Op::Concat(ax) => {
                let parts: Vec<String> = a.iter().map(|s| s.to_string()).collect();
                e.concat(&parts, *ax as i64, hint)
            }
        };
    }
    let mut outputs = Vec::new();
    for (k, port) in m.outputs.iter().enumerate() {
        let mut v = vals[port.node].clone();
        let regression = p.regressor.as_ref().zip(p.forward.outputs.get(k));
        if let (Some((r, (_, node))), Some(s)) = (regression, st) {
            if *node == r.predictions {
                if let Some(t) = &s.target {
                    let shape = m.nodes[port.node].ty.shape().cloned().unwrap_or_default();
                    let target = &m.targets[r.target].name;
                    v = unstandardize(&mut e, &v, &shape, &t.mean, &t.std, target);
                }
            }
        }
        // An output that is an input (`output x`) is the graph input itself; standardized,
        // it would need the input's name for a second value.
        if v != port.name {
            if m.inputs.iter().any(|i| i.name == port.name) {
                return Err(Diagnostic::error(
                    Code::E0701,
                    format!("output `{}` is the standardized input `{}`, and an ONNX model cannot give both the same name", port.name, port.name),
                    port.span,
                )
                .primary_label("exported output")
                .with_help(format!("name the output: `output {0}_standardized = {0} * 1`", port.name)));
            }
            e.node_into("Identity", &[&v], vec![port.name.clone()], vec![]);
        }
        outputs.push(value_info(
            &port.name,
            &m.nodes[port.node].ty,
            &m.batch_symbol,
        ));
    }
    let inputs = m
        .inputs
        .iter()
        .map(|port| value_info(&port.name, &m.nodes[port.node].ty, &m.batch_symbol))
        .collect();
    let graph = GraphProto {
        node: e.nodes,
        name: Some(m.name.clone()),
        initializer: e.inits,
        input: inputs,
        output: outputs,
        ..GraphProto::default()
    };
    let model = ModelProto {
        ir_version: Some(ir_version(opset)),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(i64::from(opset)),
        }],
        producer_name: Some("kiln".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(graph),
        ..ModelProto::default()
    };
    Ok(model.encode_to_vec())
}

/// Which nodes the outputs need; an error when one of them needs a target.
fn needed(m: &CheckedModel) -> Result<Vec<bool>, Diagnostic> {
    let mut needed = vec![false; m.nodes.len()];
    for port in &m.outputs {
        let mut stack: Vec<NodeId> = vec![port.node];
        while let Some(n) = stack.pop() {
            if needed[n] {
                continue;
            }
            let node = &m.nodes[n];
            if matches!(node.op, Op::Target(_) | Op::Loss(_)) {
                let what = if let Op::Loss(_) = node.op {
                    "a loss"
                } else {
                    "a target"
                };
                return Err(Diagnostic::error(
                    Code::E0700,
                    format!("output `{}` needs {what}, which an exported model does not have", port.name),
                    port.span,
                )
                .primary_label("exported output")
                .with_label(node.span, format!("{what} here"))
                .with_help("an ONNX model computes predictions from the inputs: output the prediction, not what is compared with a target"));
            }
            needed[n] = true;
            stack.extend(&node.inputs);
        }
    }
    Ok(needed)
}

/// The dims of a reshape target: the batch axis copied from the input (ONNX's 0).
fn dims_of(s: &Shape) -> Vec<i64> {
    s.0.iter()
        .map(|d| match d {
            Dim::Batch => 0,
            Dim::Fixed(v) => *v as i64,
        })
        .collect()
}

/// Per-sample statistics as a constant shaped like one sample (the batch broadcasts).
fn sample_const(e: &mut Emit, hint: &str, shape: &Shape, values: &[f32]) -> String {
    let dims: Vec<u64> = shape
        .0
        .iter()
        .skip(1)
        .map(|d| match d {
            Dim::Batch => 1,
            Dim::Fixed(v) => *v,
        })
        .collect();
    e.floats(hint, &dims, values)
}

/// The deviations the runtime divides by ([`scale_of`]).
fn scales(std: &[f32]) -> Vec<f32> {
    std.iter().map(|&s| scale_of(s) as f32).collect()
}

/// `(x − mean) / std` for the input `name`.
fn standardize(
    e: &mut Emit,
    name: &str,
    shape: &Shape,
    mean: Option<&Vec<f32>>,
    std: Option<&Vec<f32>>,
) -> String {
    let (Some(mean), Some(std)) = (mean, std) else {
        return name.to_string();
    };
    let mean = sample_const(e, &format!("standardize.{name}.mean"), shape, mean);
    let std = sample_const(e, &format!("standardize.{name}.std"), shape, &scales(std));
    let hint = format!("{name}_standardized");
    let centered = e.node("Sub", &[name, &mean], vec![], &hint);
    e.node("Div", &[&centered, &std], vec![], &hint)
}

/// `y · std + mean`: a regression output in the units of the target `target`.
fn unstandardize(
    e: &mut Emit,
    y: &str,
    shape: &Shape,
    mean: &[f32],
    std: &[f32],
    target: &str,
) -> String {
    let std = sample_const(e, &format!("standardize.{target}.std"), shape, &scales(std));
    let mean = sample_const(e, &format!("standardize.{target}.mean"), shape, mean);
    let hint = format!("{y}_in_{target}_units");
    let scaled = e.node("Mul", &[y, &std], vec![], &hint);
    e.node("Add", &[&scaled, &mean], vec![], &hint)
}

/// `a @ b` with Kiln's per-sample meaning ([`matmul_operands`]): the operands reshaped,
/// ONNX's MatMul, the result reshaped to the node's shape.
fn matmul(
    e: &mut Emit,
    a: &str,
    sa: &Shape,
    b: &str,
    sb: &Shape,
    out: &Shape,
    hint: &str,
) -> String {
    let (ta, tb) = matmul_operands(sa, sb);
    let lhs = if ta == *sa {
        a.to_string()
    } else {
        e.reshape(a, &dims_of(&ta), hint)
    };
    let rhs = if tb == *sb {
        b.to_string()
    } else {
        e.reshape(b, &dims_of(&tb), hint)
    };
    let y = e.node("MatMul", &[&lhs, &rhs], vec![], hint);
    e.reshape(&y, &dims_of(out), hint)
}

/// Spatial pyramid pooling: per level `l`, max pooling to `l` bins per spatial axis with
/// PyTorch's adaptive bins (bin i spans floor(i·L/l) to ceil((i+1)·L/l)), flattened; the
/// levels concatenated. A level that divides every spatial size is one MaxPool; another is
/// a max over each bin's slice.
fn spp(e: &mut Emit, x: &str, shape: &Shape, levels: &[u64], hint: &str) -> String {
    let c = shape.fixed(1).unwrap_or(1) as i64;
    let sizes: Vec<u64> = (2..shape.rank())
        .map(|i| shape.fixed(i).unwrap_or(1))
        .collect();
    let axes: Vec<i64> = (2..shape.rank() as i64).collect();
    let mut parts = Vec::new();
    for &l in levels {
        let pooled = if sizes.iter().all(|&s| s % l == 0) {
            let k: Vec<i64> = sizes.iter().map(|&s| (s / l) as i64).collect();
            e.node(
                "MaxPool",
                &[x],
                vec![ints("kernel_shape", &k), ints("strides", &k)],
                hint,
            )
        } else {
            bins(e, x, &sizes, &axes, l, 0, &mut Vec::new(), hint)
        };
        let per = (l as i64).pow(sizes.len() as u32);
        parts.push(e.reshape(&pooled, &[0, c * per], hint));
    }
    e.concat(&parts, 1, hint)
}

/// The adaptive max-pooling bins of spatial axes `axis..` (the earlier ones fixed to the
/// bins in `at`), concatenated along each axis in order.
#[allow(clippy::too_many_arguments)]
fn bins(
    e: &mut Emit,
    x: &str,
    sizes: &[u64],
    axes: &[i64],
    l: u64,
    axis: usize,
    at: &mut Vec<u64>,
    hint: &str,
) -> String {
    if axis == sizes.len() {
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        for (&i, &len) in at.iter().zip(sizes) {
            starts.push((i * len / l) as i64);
            ends.push(((i + 1) * len).div_ceil(l) as i64);
        }
        let s = e.int_list("starts", &starts);
        let en = e.int_list("ends", &ends);
        let ax = e.int_list("axes", axes);
        let slice = e.node("Slice", &[x, &s, &en, &ax], vec![], hint);
        return e.reduce("ReduceMax", &slice, axes, true, hint);
    }
    let mut row = Vec::new();
    for i in 0..l {
        at.push(i);
        row.push(bins(e, x, sizes, axes, l, axis + 1, at, hint));
        at.pop();
    }
    e.concat(&row, 2 + axis as i64, hint)
}

/// A graph input's or output's name, element type and shape (the batch axis symbolic).
fn value_info(name: &str, ty: &Ty, batch: &str) -> ValueInfoProto {
    let elem = match ty {
        Ty::Labels { .. } => DataType::Int64,
        _ => DataType::Float,
    };
    let dims = ty
        .shape()
        .map(|s| {
            s.0.iter()
                .map(|d| Dimension {
                    value: Some(match d {
                        Dim::Batch => dimension::Value::DimParam(batch.to_string()),
                        Dim::Fixed(v) => dimension::Value::DimValue(*v as i64),
                    }),
                    ..Dimension::default()
                })
                .collect()
        })
        .unwrap_or_default();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto { dim: dims }),
            })),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}
