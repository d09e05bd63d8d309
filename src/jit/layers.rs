//! Fast f32 kernels for the layer operations and the data movement around them:
//! convolution as im2col + one GEMM per call (forward and both VJPs), pooling over
//! precomputed windows, gather, noise, slices, concatenation, reductions and broadcasts.
//! Each computes what the interpreter's version computes (the differential tests hold
//! them to it); summation order differs, accumulation of reductions is in f64.

use super::abi::gemm;
use crate::interp::layers::{noise_values, pool_windows, ConvSizes};
use crate::ir::{ConvGeom, Noise, Pool, PoolKind, Windows};
use std::cell::RefCell;

thread_local! {
    /// Scratch reused across kernel calls: the column matrix and a transposed gradient.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The output columns `lo..hi` whose input column `ox·stride + off − pad` is inside
/// `0..len`, and the input column of `lo`.
fn valid(out: usize, len: usize, stride: usize, pad: usize, off: usize) -> (usize, usize, usize) {
    let lo = if off >= pad {
        0
    } else {
        (pad - off).div_ceil(stride)
    };
    let hi = if len + pad > off {
        ((len - 1 + pad - off) / stride + 1).min(out)
    } else {
        0
    };
    let lo = lo.min(hi);
    (lo, hi, (lo * stride + off).saturating_sub(pad))
}

/// `cols[(c, ky, kx), (n, oy, ox)]` of input `x`: row length `n·oh·ow`, zeros for padding.
fn im2col(s: &ConvSizes, x: &[f32], cols: &mut Vec<f32>) {
    let p = s.p;
    let np = p.n * p.oh * p.ow;
    cols.clear();
    cols.resize(p.c * s.kh * s.kw * np, 0.0);
    for c in 0..p.c {
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let row = ((c * s.kh + ky) * s.kw + kx) * np;
                let (lo, hi, first) = valid(p.ow, p.w, s.s.1, s.pad.1, kx * s.d.1);
                if lo == hi {
                    continue;
                }
                for n in 0..p.n {
                    let plane = &x[(n * p.c + c) * p.h * p.w..][..p.h * p.w];
                    for oy in 0..p.oh {
                        let Some(iy) = s.iy(oy, ky) else { continue };
                        let dst = &mut cols[row + (n * p.oh + oy) * p.ow..][lo..hi];
                        let src = &plane[iy * p.w + first..];
                        if s.s.1 == 1 {
                            dst.copy_from_slice(&src[..hi - lo]);
                        } else {
                            for (d, v) in dst.iter_mut().zip(src.iter().step_by(s.s.1)) {
                                *d = *v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: columns added back into `dx` (zeroed first).
fn col2im(s: &ConvSizes, cols: &[f32], dx: &mut [f32]) {
    let p = s.p;
    let np = p.n * p.oh * p.ow;
    dx.fill(0.0);
    for c in 0..p.c {
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let row = ((c * s.kh + ky) * s.kw + kx) * np;
                let (lo, hi, first) = valid(p.ow, p.w, s.s.1, s.pad.1, kx * s.d.1);
                if lo == hi {
                    continue;
                }
                for n in 0..p.n {
                    let plane = &mut dx[(n * p.c + c) * p.h * p.w..][..p.h * p.w];
                    for oy in 0..p.oh {
                        let Some(iy) = s.iy(oy, ky) else { continue };
                        let src = &cols[row + (n * p.oh + oy) * p.ow..][lo..hi];
                        let dst = &mut plane[iy * p.w + first..];
                        for (d, v) in dst.iter_mut().step_by(s.s.1).zip(src) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}

/// `[N, O, P]` ↔ `[O, N·P]`: `to_onp` chooses the direction.
fn swap_batch(src: &[f32], dst: &mut [f32], n: usize, o: usize, p: usize, to_onp: bool) {
    for i in 0..n {
        for c in 0..o {
            let a = (i * o + c) * p;
            let b = (c * n + i) * p;
            let (from, to) = if to_onp { (a, b) } else { (b, a) };
            dst[to..to + p].copy_from_slice(&src[from..from + p]);
        }
    }
}

/// The three convolution operations, by which argument is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPart {
    /// `y = conv(x, w)`; args (x, w).
    Forward,
    /// `dx`; args (g, w).
    Input,
    /// `dw`; args (x, g).
    Weight,
}

/// Runs one convolution operation; `dims` are (x, w, y) dims.
pub fn conv(
    part: ConvPart,
    geom: &ConvGeom,
    dims: [&[usize]; 3],
    args: [&[f32]; 2],
    out: &mut [f32],
    threads: usize,
) {
    let s = ConvSizes::new(dims[0], dims[1], dims[2], geom);
    let (n, o) = (s.p.n, s.o);
    let p = s.p.oh * s.p.ow;
    let ckk = s.p.c * s.kh * s.kw;
    let np = n * p;
    SCRATCH.with(|scratch| {
        let (cols, t) = &mut *scratch.borrow_mut();
        t.clear();
        t.resize(o * np, 0.0);
        match part {
            ConvPart::Forward => {
                // y[O, N·P] = w[O, CKK] · cols[CKK, N·P], then to [N, O, P].
                im2col(&s, args[0], cols);
                gemm(o, np, ckk, t, args[1], ckk, 1, cols, np, 1, threads);
                swap_batch(t, out, n, o, p, false);
            }
            ConvPart::Weight => {
                // dw[O, CKK] = g[O, N·P] · cols[CKK, N·P]ᵀ.
                im2col(&s, args[0], cols);
                swap_batch(args[1], t, n, o, p, true);
                gemm(o, ckk, np, out, t, np, 1, cols, 1, np, threads);
            }
            ConvPart::Input => {
                // dcols[CKK, N·P] = w[O, CKK]ᵀ · g[O, N·P], then back onto the input.
                swap_batch(args[0], t, n, o, p, true);
                cols.clear();
                cols.resize(ckk * np, 0.0);
                gemm(ckk, np, o, cols, args[1], 1, ckk, t, np, 1, threads);
                col2im(&s, cols, out);
            }
        }
    });
}

/// Pooling (`grad`: None) or its VJP (`grad`: Some(g), written into `out` shaped like x).
pub fn pool(
    p: &Pool,
    xd: &[usize],
    yd: &[usize],
    x: &[f32],
    grad: Option<&[f32]>,
    out: &mut [f32],
) {
    if let (PoolKind::Max, [n, c, h, w], [_, _, oh, ow], Windows::Regular { k, stride, pad, .. }) =
        (p.kind, xd, yd, &p.windows)
    {
        if k == stride && pad.iter().all(|&q| q == 0) {
            let plane = Tiling {
                h: *h,
                w: *w,
                oh: *oh,
                ow: *ow,
                kh: k[0],
                kw: k[1],
            };
            return max_tiles(&plane, n * c, x, grad, out);
        }
    }
    let (rows, cols) = pool_windows(p, xd, yd);
    let (h, w) = match xd {
        [_, _, w] => (1, *w),
        _ => (xd[2], xd[3]),
    };
    let planes = xd[0] * xd[1];
    let count_pad = matches!(
        p.windows,
        Windows::Regular {
            count_pad: true,
            ..
        }
    );
    if grad.is_some() {
        out.fill(0.0);
    }
    let mut o = 0;
    for plane in 0..planes {
        let base = plane * h * w;
        for r in &rows {
            for c in &cols {
                let div = if count_pad {
                    (r.full * c.full) as f32
                } else {
                    ((r.end - r.start) * (c.end - c.start)) as f32
                };
                match p.kind {
                    PoolKind::Max if grad.is_none() => {
                        // The first NaN, else the largest: the same value as the
                        // interpreter's first largest element.
                        let mut m = f32::NEG_INFINITY;
                        for y in r.start..r.end {
                            let at = base + y * w;
                            for &v in &x[at + c.start..at + c.end] {
                                m = if v > m || (v.is_nan() && !m.is_nan()) {
                                    v
                                } else {
                                    m
                                };
                            }
                        }
                        out[o] = m;
                    }
                    PoolKind::Max => {
                        let mut best = usize::MAX;
                        let mut m = f32::NEG_INFINITY;
                        'window: for y in r.start..r.end {
                            let at = base + y * w + c.start;
                            for (j, &v) in x[at..at + c.end - c.start].iter().enumerate() {
                                if best == usize::MAX || v > m || v.is_nan() {
                                    best = at + j;
                                    m = v;
                                    if v.is_nan() {
                                        break 'window;
                                    }
                                }
                            }
                        }
                        match grad {
                            None => out[o] = m,
                            Some(g) if best != usize::MAX => out[best] += g[o],
                            Some(_) => {}
                        }
                    }
                    PoolKind::Avg => match grad {
                        None => {
                            let mut sum = 0.0f32;
                            for y in r.start..r.end {
                                for v in &x[base + y * w + c.start..base + y * w + c.end] {
                                    sum += v;
                                }
                            }
                            out[o] = sum / div;
                        }
                        Some(g) => {
                            let share = g[o] / div;
                            for y in r.start..r.end {
                                for v in &mut out[base + y * w + c.start..base + y * w + c.end] {
                                    *v += share;
                                }
                            }
                        }
                    },
                }
                o += 1;
            }
        }
    }
}

/// A 2-d max pooling whose windows tile the input (stride = window, no padding).
struct Tiling {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
}

/// Max pooling over non-overlapping windows, one output row at a time (or its VJP when
/// `grad` is given): the same first-NaN-else-first-largest choice as the general code.
fn max_tiles(t: &Tiling, planes: usize, x: &[f32], grad: Option<&[f32]>, out: &mut [f32]) {
    let mut best = vec![f32::NEG_INFINITY; t.ow];
    let mut at = vec![usize::MAX; t.ow];
    if grad.is_some() {
        out.fill(0.0);
    }
    for plane in 0..planes {
        let base = plane * t.h * t.w;
        for oy in 0..t.oh {
            // Each window starts at its first element; the others replace it without
            // branches (relu outputs make the comparisons unpredictable).
            let first = base + oy * t.kh * t.w;
            for ox in 0..t.ow {
                best[ox] = x[first + ox * t.kw];
                at[ox] = first + ox * t.kw;
            }
            for ky in 0..t.kh {
                let start = base + (oy * t.kh + ky) * t.w;
                let row = &x[start..start + t.ow * t.kw];
                for (ox, window) in row.chunks_exact(t.kw).enumerate() {
                    for (kx, &v) in window.iter().enumerate().skip(usize::from(ky == 0)) {
                        let m = best[ox];
                        let take = (v > m) | (v.is_nan() & !m.is_nan());
                        best[ox] = if take { v } else { m };
                        if grad.is_some() {
                            let i = start + ox * t.kw + kx;
                            at[ox] = if take { i } else { at[ox] };
                        }
                    }
                }
            }
            let o = (plane * t.oh + oy) * t.ow;
            match grad {
                None => out[o..o + t.ow].copy_from_slice(&best),
                Some(g) => {
                    for (&i, &gv) in at.iter().zip(&g[o..o + t.ow]) {
                        out[i] += gv;
                    }
                }
            }
        }
    }
}

/// `table[ids]` (`grad`: None) or the VJP (`grad`: g, into `out` shaped like the table).
/// Ids outside the table are an error, never an out-of-bounds access.
pub fn gather(
    table_rows: usize,
    d: usize,
    ids: &[f32],
    src: &[f32],
    grad: bool,
    out: &mut [f32],
) -> Result<(), String> {
    if grad {
        out.fill(0.0);
    }
    for (k, &id) in ids.iter().enumerate() {
        if !(id >= 0.0 && id.fract() == 0.0 && (id as usize) < table_rows) {
            return Err(format!("id {id} is not a class id below {table_rows}"));
        }
        let r = id as usize;
        if grad {
            for (o, v) in out[r * d..(r + 1) * d]
                .iter_mut()
                .zip(&src[k * d..(k + 1) * d])
            {
                *o += v;
            }
        } else {
            out[k * d..(k + 1) * d].copy_from_slice(&src[r * d..(r + 1) * d]);
        }
    }
    Ok(())
}

/// A noise node's values: the interpreter's draws, rounded to f32.
pub fn noise(dist: Noise, seed: u64, salt: u64, step: f32, out: &mut [f32]) {
    let v = noise_values(dist, seed, salt, f64::from(step), out.len());
    for (o, x) in out.iter_mut().zip(v) {
        *o = x as f32;
    }
}

/// (outer, axis length, inner) of `dims` around `axis`.
fn split(dims: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = dims[..axis].iter().product();
    let inner = dims[axis + 1..].iter().product();
    (outer, dims[axis], inner)
}

/// `len` entries from `start` along `axis` of `src` (dims `sd`).
pub fn slice(sd: &[usize], axis: usize, start: usize, len: usize, src: &[f32], out: &mut [f32]) {
    let (outer, n, inner) = split(sd, axis);
    for i in 0..outer {
        let from = (i * n + start) * inner;
        out[i * len * inner..(i + 1) * len * inner].copy_from_slice(&src[from..from + len * inner]);
    }
}

/// The slice's VJP: `g` (length `len` along `axis`) placed at `start` in zeros of `od`.
pub fn slice_grad(od: &[usize], axis: usize, start: usize, g: &[f32], out: &mut [f32]) {
    let (outer, n, inner) = split(od, axis);
    let len = g.len() / (outer * inner).max(1);
    out.fill(0.0);
    for i in 0..outer {
        let to = (i * n + start) * inner;
        out[to..to + len * inner].copy_from_slice(&g[i * len * inner..(i + 1) * len * inner]);
    }
}

/// Concatenation along `axis` of parts with dims `pd`, into dims `od`.
pub fn concat(pd: &[&[usize]], axis: usize, parts: &[&[f32]], od: &[usize], out: &mut [f32]) {
    let (outer, n, inner) = split(od, axis);
    let mut start = 0;
    for (d, src) in pd.iter().zip(parts) {
        let len = d[axis];
        for i in 0..outer {
            let to = (i * n + start) * inner;
            out[to..to + len * inner].copy_from_slice(&src[i * len * inner..(i + 1) * len * inner]);
        }
        start += len;
    }
}

/// For each element of dims `big`, the index of the element of `small` (same rank, each
/// dim equal or 1) it corresponds to under broadcasting, in row-major order.
fn broadcast_index(big: &[usize], small: &[usize], mut f: impl FnMut(usize, usize)) {
    let rank = big.len();
    let mut strides = vec![0usize; rank];
    let mut s = 1;
    for i in (0..rank).rev() {
        strides[i] = if small[i] == 1 { 0 } else { s };
        s *= small[i];
    }
    let mut idx = vec![0usize; rank];
    let mut j = 0usize;
    let total: usize = big.iter().product();
    for i in 0..total {
        f(i, j);
        for a in (0..rank).rev() {
            idx[a] += 1;
            j += strides[a];
            if idx[a] < big[a] {
                break;
            }
            j -= strides[a] * big[a];
            idx[a] = 0;
        }
    }
}

/// `small` (right-aligned, ones where broadcast) as dims of `big`'s rank.
fn align(big: &[usize], small: &[usize]) -> Vec<usize> {
    let mut v = vec![1; big.len() - small.len()];
    v.extend(small);
    v
}

/// Broadcasts `src` (dims `sd`) to dims `od`.
pub fn broadcast(sd: &[usize], src: &[f32], od: &[usize], out: &mut [f32]) {
    let small = align(od, sd);
    broadcast_index(od, &small, |i, j| out[i] = src[j]);
}

/// A reduction of `src` (dims `sd`) over `axes` into `out`; `mean` divides by the count,
/// `max`/`min` select (Some(true) max, Some(false) min, None sum).
pub fn reduce(
    sd: &[usize],
    axes: &[usize],
    src: &[f32],
    mean: bool,
    select: Option<bool>,
    out: &mut [f32],
) {
    let small: Vec<usize> = sd
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect();
    let count: usize = axes.iter().map(|&a| sd[a]).product();
    match select {
        None => {
            let mut acc = vec![0.0f64; out.len()];
            broadcast_index(sd, &small, |i, j| acc[j] += f64::from(src[i]));
            let div = if mean { count.max(1) as f64 } else { 1.0 };
            for (o, a) in out.iter_mut().zip(acc) {
                *o = (a / div) as f32;
            }
        }
        Some(max) => {
            out.fill(if max {
                f32::NEG_INFINITY
            } else {
                f32::INFINITY
            });
            broadcast_index(sd, &small, |i, j| {
                let v = src[i];
                if v.is_nan() || (max && v > out[j]) || (!max && v < out[j]) {
                    out[j] = v;
                }
            });
        }
    }
}

/// Sums `src` (dims `sd`) down to dims `od` (right-aligned, the VJP of broadcasting).
pub fn sum_to(sd: &[usize], src: &[f32], od: &[usize], out: &mut [f32]) {
    let small = align(sd, od);
    let mut acc = vec![0.0f64; out.len()];
    broadcast_index(sd, &small, |i, j| acc[j] += f64::from(src[i]));
    for (o, a) in out.iter_mut().zip(acc) {
        *o = a as f32;
    }
}
