//! The parameterized layers as ONNX operators: Gemm or MatMul, Conv,
//! BatchNormalization, LayerNormalization, PRelu, Gather and RNN, LSTM or GRU.

use super::emit::{float, i64s, int, ints, string, strings, Emit};
use crate::check::graph::{Cell, LayerKind, RnnActivation};
use crate::ir::Shape;

/// A layer applied to `x` of shape `shape`, with its parameters' value names `p`.
pub fn layer(
    e: &mut Emit,
    kind: &LayerKind,
    x: &str,
    shape: &Shape,
    p: &[String],
    hint: &str,
) -> String {
    let rank = shape.rank() as i64;
    match kind {
        LayerKind::Dense { bias, .. } => {
            if rank == 2 {
                let mut args = vec![x, p[0].as_str()];
                if *bias {
                    args.push(&p[1]);
                }
                return e.node("Gemm", &args, vec![], hint);
            }
            let y = e.node("MatMul", &[x, &p[0]], vec![], hint);
            if *bias {
                e.node("Add", &[&y, &p[1]], vec![], hint)
            } else {
                y
            }
        }
        LayerKind::Conv {
            kernel,
            stride,
            pad,
            dilation,
            bias,
            ..
        } => {
            let mut args = vec![x, p[0].as_str()];
            if *bias {
                args.push(&p[1]);
            }
            let pads = [i64s(pad), i64s(pad)].concat();
            let attrs = vec![
                ints("kernel_shape", &i64s(kernel)),
                ints("strides", &i64s(stride)),
                ints("pads", &pads),
                ints("dilations", &i64s(dilation)),
            ];
            e.node("Conv", &args, attrs, hint)
        }
        LayerKind::BatchNorm { eps, .. } => e.node(
            "BatchNormalization",
            &[x, &p[0], &p[1], &p[2], &p[3]],
            vec![float("epsilon", *eps as f32)],
            hint,
        ),
        LayerKind::LayerNorm { eps } => layernorm(e, x, &p[0], &p[1], *eps, hint),
        LayerKind::Prelu => {
            // ONNX broadcasts the slope from the right: `[C]` becomes `[C, 1, ...]` for
            // a channel axis followed by others.
            let slope = if rank > 2 {
                let mut dims = vec![-1];
                dims.extend(std::iter::repeat_n(1, rank as usize - 2));
                e.reshape(&p[0], &dims, hint)
            } else {
                p[0].clone()
            };
            e.node("PRelu", &[x, &slope], vec![], hint)
        }
        LayerKind::Embedding { .. } => e.node("Gather", &[&p[0], x], vec![int("axis", 0)], hint),
        LayerKind::Recurrent {
            cell,
            hidden,
            activation,
            bidirectional,
            sequence,
        } => recurrent(
            e,
            *cell,
            *hidden,
            *activation,
            *bidirectional,
            *sequence,
            x,
            shape,
            p,
            hint,
        ),
        LayerKind::Block => unreachable!("blocks are inlined by the checker"),
    }
}

/// Layer normalization over the last axis: ONNX's operator from opset 17, composed before.
fn layernorm(e: &mut Emit, x: &str, gamma: &str, beta: &str, eps: f64, hint: &str) -> String {
    if e.opset >= 17 {
        let attrs = vec![int("axis", -1), float("epsilon", eps as f32)];
        return e.node("LayerNormalization", &[x, gamma, beta], attrs, hint);
    }
    let mean = e.reduce("ReduceMean", x, &[-1], true, hint);
    let xc = e.node("Sub", &[x, &mean], vec![], hint);
    let sq = e.node("Mul", &[&xc, &xc], vec![], hint);
    let var = e.reduce("ReduceMean", &sq, &[-1], true, hint);
    let eps = e.scalar(eps as f32);
    let v = e.node("Add", &[&var, &eps], vec![], hint);
    let sd = e.node("Sqrt", &[&v], vec![], hint);
    let y = e.node("Div", &[&xc, &sd], vec![], hint);
    let scaled = e.node("Mul", &[&y, gamma], vec![], hint);
    e.node("Add", &[&scaled, beta], vec![], hint)
}

/// Kiln's gates (PyTorch's order) in ONNX's order: LSTM i f g o → i o f c, GRU r z n →
/// z r h.
fn onnx_gate_order(cell: Cell) -> &'static [usize] {
    match cell {
        Cell::Rnn => &[0],
        Cell::Lstm => &[0, 3, 1, 2],
        Cell::Gru => &[1, 0, 2],
    }
}

/// `rnn`, `lstm` or `gru` over `x` `[N, T, F]`: ONNX's RNN, LSTM or GRU on the
/// time-major sequence. Per direction Kiln's parameters are (w_ih, w_hh, b_ih, b_hh) with
/// PyTorch's gate order; the ONNX inputs W, R and B are built from them by nodes (folded
/// by runtimes), so the initializers keep Kiln's names and layout.
#[allow(clippy::too_many_arguments)]
fn recurrent(
    e: &mut Emit,
    cell: Cell,
    hidden: u64,
    activation: RnnActivation,
    bidirectional: bool,
    sequence: bool,
    x: &str,
    shape: &Shape,
    p: &[String],
    hint: &str,
) -> String {
    let gates = cell.gates() as usize;
    let order = onnx_gate_order(cell);
    let dirs = if bidirectional { 2 } else { 1 };
    let reorder = |e: &mut Emit, v: &str| -> String {
        let parts = e.split(v, gates, hint);
        let ordered: Vec<String> = order.iter().map(|&g| parts[g].clone()).collect();
        e.concat(&ordered, 0, hint)
    };
    let (mut w, mut r, mut b) = (Vec::new(), Vec::new(), Vec::new());
    for d in 0..dirs {
        let q = &p[4 * d..4 * d + 4];
        let wd = reorder(e, &q[0]);
        w.push(e.unsqueeze(&wd, &[0], hint));
        let rd = reorder(e, &q[1]);
        r.push(e.unsqueeze(&rd, &[0], hint));
        let bi = reorder(e, &q[2]);
        let bh = reorder(e, &q[3]);
        let bd = e.concat(&[bi, bh], 0, hint);
        b.push(e.unsqueeze(&bd, &[0], hint));
    }
    let (w, r, b) = (
        e.concat(&w, 0, hint),
        e.concat(&r, 0, hint),
        e.concat(&b, 0, hint),
    );
    let seq = e.transpose(x, &[1, 0, 2], hint);
    let mut attrs = vec![
        int("hidden_size", hidden as i64),
        string(
            "direction",
            if bidirectional {
                "bidirectional"
            } else {
                "forward"
            },
        ),
    ];
    let op = match cell {
        Cell::Rnn => {
            if activation == RnnActivation::Relu {
                attrs.push(strings("activations", &vec!["Relu"; dirs]));
            }
            "RNN"
        }
        Cell::Lstm => "LSTM",
        Cell::Gru => {
            // Kiln's (PyTorch's) candidate applies the reset gate after the product.
            attrs.push(int("linear_before_reset", 1));
            "GRU"
        }
    };
    let out = e.node_n(op, &[&seq, &w, &r, &b], 2, attrs, hint);
    let width = hidden as i64 * dirs as i64;
    if sequence {
        // Y `[T, D, N, H]` → `[N, T, D, H]` → `[N, T, D·H]`.
        let t = shape.fixed(1).unwrap_or(1) as i64;
        let y = e.transpose(&out[0], &[2, 0, 1, 3], hint);
        e.reshape(&y, &[0, t, width], hint)
    } else {
        // Y_h `[D, N, H]` (the forward state after the last step, the backward one after
        // the first) → `[N, D, H]` → `[N, D·H]`.
        let h = e.transpose(&out[1], &[1, 0, 2], hint);
        e.reshape(&h, &[0, width], hint)
    }
}
