//! Kernels: the operations generated code calls instead of writing them inline (matrix
//! products, reductions, softmax, losses, shape changes). Matrix products are chosen by
//! shape: a row-times-matrix loop for a few rows, textbook loops for tiny products, the
//! `gemm` crate on the buffers above; the others share the interpreter's implementation.

use super::conv::{self, ConvPart};
use super::layers;
use super::movement;
use super::plan::{leading_sum, GEMV_ROWS, TINY_MACS};
use super::pool;
use crate::exec::RunError;
use crate::interp::layers::{channels, noise_offset};
use crate::interp::{self, loss, Env};
use crate::ir::{Graph, Op, Reduce};
use ndarray::{ArrayD, IxDyn};
use smallvec::SmallVec;
use std::collections::HashMap;

/// `out = op(a) · op(b)` by the textbook triple loop, for tiny products. `a` is stored
/// `ad.0 × ad.1` and `b` `bd.0 × bd.1`, row-major.
fn tiny_matmul(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    ad: (usize, usize),
    bd: (usize, usize),
    ta: bool,
    tb: bool,
) {
    let (m, k) = if ta { (ad.1, ad.0) } else { ad };
    let n = if tb { bd.0 } else { bd.1 };
    let at = |i: usize, p: usize| if ta { a[p * ad.1 + i] } else { a[i * ad.1 + p] };
    let bt = |p: usize, j: usize| if tb { b[j * bd.1 + p] } else { b[p * bd.1 + j] };
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f32;
            for p in 0..k {
                acc += at(i, p) * bt(p, j);
            }
            out[i * n + j] = acc;
        }
    }
}

/// Sums `x` (rows × `cols`) over its rows into `out` (`cols`): the VJP of a broadcast
/// bias.
fn sum_rows(x: &[f32], out: &mut [f32], cols: usize) {
    out.fill(0.0);
    for row in x.chunks_exact(cols) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

/// `out[m×n] = x[m×k] · w[k×n]`, accumulating rows of `w` (contiguous, so the inner loop
/// vectorizes).
fn gemv_rows(x: &[f32], w: &[f32], out: &mut [f32], m: usize, k: usize, n: usize) {
    for r in 0..m {
        let o = &mut out[r * n..(r + 1) * n];
        o.fill(0.0);
        for (kk, &a) in x[r * k..(r + 1) * k].iter().enumerate() {
            for (dst, &wv) in o.iter_mut().zip(&w[kk * n..(kk + 1) * n]) {
                *dst += a * wv;
            }
        }
    }
}

/// Runs the native kernel of a layer or data-movement operation; false when the operation
/// has none (the interpreter's implementation runs instead).
fn layer_kernel(
    op: &Op,
    d: &[&[usize]],
    a: &[&[f32]],
    od: &[usize],
    out: &mut [f32],
    threads: usize,
) -> Result<bool, RunError> {
    let conv = |part, dims: [&[usize]; 3], out: &mut [f32], geom| {
        conv::conv(part, geom, dims, [a[0], a[1]], out, threads)
    };
    match op {
        Op::Conv(geom) => conv(ConvPart::Forward, [d[0], d[1], od], out, geom),
        Op::ConvGradInput(geom) => conv(ConvPart::Input, [od, d[1], d[0]], out, geom),
        Op::ConvGradWeight(geom) => conv(ConvPart::Weight, [d[0], od, d[1]], out, geom),
        Op::Pool(p) => pool::pool(p, d[0], od, a[0], None, out),
        Op::PoolGrad(p) => pool::pool(p, d[0], d[1], a[0], Some(a[1]), out),
        Op::Gather => layers::gather(d[0][0], d[0][1], a[1], a[0], false, out)?,
        Op::GatherGrad => layers::gather(od[0], od[1], a[0], a[1], true, out)?,
        Op::BatchStats => layers::batch_stats(channels(d[0]), a[0], out),
        Op::BatchNorm { eps } => {
            layers::batchnorm(channels(d[0]), [a[0], a[1], a[2], a[3]], *eps, out)
        }
        Op::BatchNormSums { eps } => {
            layers::batchnorm_sums(channels(d[0]), [a[0], a[1], a[2]], *eps, out)
        }
        Op::BatchNormGrad { eps } => {
            layers::batchnorm_grad(channels(d[0]), [a[0], a[1], a[2], a[3], a[4]], *eps, out)
        }
        Op::Noise { dist, seed, salt } => {
            let rows = od.first().copied().unwrap_or(0);
            let row = a.get(1).map(|r| f64::from(r[0]));
            let offset = noise_offset(row, out.len(), rows);
            layers::noise(*dist, *seed, *salt, a[0][0], offset, out)
        }
        Op::Recurrence(r) => super::recurrent::forward(r, d[0], a[0], a[1], a[2], out),
        Op::RecurrenceGrad(r) => super::recurrent::backward(r, od, a[0], a[1], a[2], out),
        Op::Slice { axis, start, len } => movement::slice(d[0], *axis, *start, *len, a[0], out),
        Op::SliceGrad { axis, start } => movement::slice_grad(od, *axis, *start, a[0], out),
        Op::Concat(axis) => movement::concat(d, *axis, a, od, out),
        Op::BroadcastTo => movement::broadcast(d[0], a[0], od, out),
        Op::Reduce { kind, axes, .. } => {
            let (mean, select) = match kind {
                Reduce::Sum => (false, None),
                Reduce::Mean => (true, None),
                Reduce::Max => (false, Some(true)),
                Reduce::Min => (false, Some(false)),
            };
            movement::reduce(d[0], axes, a[0], mean, select, out)
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// `Σ a·b` with eight partial sums, so the loop vectorizes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `out[m×n] = x[m×k] · w[n×k]ᵀ`: each output a dot product of two contiguous rows.
fn gemv_rows_t(x: &[f32], w: &[f32], out: &mut [f32], m: usize, k: usize, n: usize) {
    for r in 0..m {
        let xr = &x[r * k..(r + 1) * k];
        for (j, o) in out[r * n..(r + 1) * n].iter_mut().enumerate() {
            *o = dot(xr, &w[j * k..(j + 1) * k]);
        }
    }
}

/// Computes node `n` of `g` from its argument buffers into `out`.
pub fn run(
    g: &Graph,
    n: usize,
    args: &[&[f32]],
    out: &mut [f32],
    (batch, dims): (usize, &[Vec<usize>]),
    threads: usize,
) -> Result<(), RunError> {
    let node = &g.nodes[n];
    if let Op::MatMul { ta, tb } = node.op {
        // Operands as matrices: all leading dimensions are rows.
        let as2 = |k: usize| {
            let cols = g.nodes[node.args[k]].shape.last().unwrap_or(1) as usize;
            (args[k].len() / cols.max(1), cols)
        };
        let ((m, k), (k2, cols)) = (as2(0), as2(1));
        if !ta && !tb && m <= GEMV_ROWS && k == k2 {
            gemv_rows(args[0], args[1], out, m, k, cols);
            return Ok(());
        }
        if !ta && tb && m <= GEMV_ROWS && k == cols {
            gemv_rows_t(args[0], args[1], out, m, k, k2);
            return Ok(());
        }
        if m * k * cols <= TINY_MACS {
            tiny_matmul(args[0], args[1], out, (m, k), (k2, cols), ta, tb);
            return Ok(());
        }
        // Larger products: the gemm crate (AVX-512 where the CPU has it), reading the
        // buffers through strides, so transposes cost nothing. On this project's machine
        // it was 13 % faster than matrixmultiply on the mlp training step
        // (docs/PERFORMANCE.md).
        let (rows, inner) = if ta { (k, m) } else { (m, k) };
        let (a_rs, a_cs) = if ta { (1, k) } else { (k, 1) };
        let n_out = if tb { k2 } else { cols };
        let (b_rs, b_cs) = if tb { (1, cols) } else { (cols, 1) };
        super::gemm::gemm(
            rows, n_out, inner, out, args[0], a_rs, a_cs, args[1], b_rs, b_cs, threads,
        );
        return Ok(());
    }
    let arg_dims: SmallVec<[&[usize]; 4]> = node.args.iter().map(|&a| dims[a].as_slice()).collect();
    let out_dims = &dims[n];
    if layer_kernel(&node.op, &arg_dims, args, out_dims, out, threads)? {
        return Ok(());
    }
    match node.op {
        Op::Loss(kind) => {
            let ops = loss::Operands::new(args[0], arg_dims[0], args[1], arg_dims[1]);
            out[0] = loss::value(kind, &ops)? as f32;
            return Ok(());
        }
        Op::LossGrad(kind) => {
            let ops = loss::Operands::new(args[0], arg_dims[0], args[1], arg_dims[1]);
            let scale = args[2].first().map_or(1.0, |&g| f64::from(g));
            return loss::gradient(kind, &ops, scale, out);
        }
        _ => {}
    }
    if let Op::SumTo = node.op {
        // Summing leading dimensions away, the common case (bias gradients).
        if leading_sum(g, n).is_some() {
            sum_rows(args[0], out, out.len());
        } else {
            movement::sum_to(arg_dims[0], args[0], out_dims, out);
        }
        return Ok(());
    }
    let owned: Vec<ArrayD<f32>> = args
        .iter()
        .zip(&arg_dims)
        .map(|(a, d)| {
            ArrayD::from_shape_vec(IxDyn(d), a.to_vec()).map_err(|e| RunError::bug(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let refs: Vec<&ArrayD<f32>> = owned.iter().collect();
    let hyper = HashMap::new();
    let env = Env {
        inputs: &[],
        targets: &[],
        params: &[],
        states: &[],
        hyper: &hyper,
        batch,
    };
    let v = interp::eval(&node.op, &refs, out_dims, &env)?;
    let v = v.as_standard_layout();
    let src = v
        .as_slice()
        .ok_or_else(|| RunError::bug("non-contiguous kernel result"))?;
    if src.len() != out.len() {
        return Err(RunError::bug(format!(
            "kernel {} produced {} values for {}",
            node.op,
            src.len(),
            out.len()
        )));
    }
    out.copy_from_slice(src);
    Ok(())
}
