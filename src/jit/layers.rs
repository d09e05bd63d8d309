//! Fast f32 kernels for the layer operations and the data movement around them:
//! convolution as im2col + GEMM over chunks of the batch (forward and both VJPs), pooling
//! over precomputed windows (2×2 max pooling in vector blocks), batch normalization,
//! gather, noise, slices, concatenation, reductions and broadcasts.
//! Each computes what the interpreter's version computes (the differential tests hold
//! them to it); summation order differs, accumulation of reductions is in f64.

use super::gemm::gemm;
use crate::interp::layers::{noise_each, pool_windows, ConvSizes, Plane};
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

/// `dst ← src` for the short rows of an im2col (a few to a few dozen elements): fixed-size
/// chunks the compiler inlines, where `copy_from_slice` calls `memmove` for each row.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    let src = &src[..n];
    if n >= 8 {
        let mut i = 0;
        while i + 8 <= n {
            dst[i..i + 8].copy_from_slice(&src[i..i + 8]);
            i += 8;
        }
        if i < n {
            dst[n - 8..].copy_from_slice(&src[n - 8..]);
        }
    } else if n >= 4 {
        dst[..4].copy_from_slice(&src[..4]);
        dst[n - 4..].copy_from_slice(&src[n - 4..]);
    } else {
        for (d, v) in dst.iter_mut().zip(src) {
            *d = *v;
        }
    }
}

/// `dst += src` for the short rows of a col2im: eight at a time on arrays (inlined and
/// vectorized), then the rest.
#[inline(always)]
fn add_short(dst: &mut [f32], src: &[f32]) {
    let src = &src[..dst.len()];
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, v) in (&mut d8).zip(&mut s8) {
        for (d, v) in d.iter_mut().zip(v).take(8) {
            *d += v;
        }
    }
    for (d, v) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
        *d += v;
    }
}

/// `cols[(c, ky, kx), (n, oy, ox)]` of input `x`: row length `n·oh·ow`, zeros for padding.
/// Every element is written (`cols` holds exactly the matrix).
fn im2col(s: &ConvSizes, x: &[f32], cols: &mut [f32]) {
    let p = s.p;
    let np = p.n * p.oh * p.ow;
    if s.s == (1, 1) && s.d == (1, 1) && s.pad == (0, 0) {
        return im2col_valid(s, x, cols);
    }
    for c in 0..p.c {
        for ky in 0..s.kh {
            // The output rows that read an input row (the others read padding).
            let (ylo, yhi, _) = valid(p.oh, p.h, s.s.0, s.pad.0, ky * s.d.0);
            for kx in 0..s.kw {
                let row = ((c * s.kh + ky) * s.kw + kx) * np;
                let (lo, hi, first) = valid(p.ow, p.w, s.s.1, s.pad.1, kx * s.d.1);
                for n in 0..p.n {
                    let plane = &x[(n * p.c + c) * p.h * p.w..][..p.h * p.w];
                    let block = &mut cols[row + n * p.oh * p.ow..][..p.oh * p.ow];
                    if lo == hi {
                        block.fill(0.0);
                        continue;
                    }
                    block[..ylo * p.ow].fill(0.0);
                    block[yhi * p.ow..].fill(0.0);
                    for oy in ylo..yhi {
                        let dst = &mut block[oy * p.ow..][..p.ow];
                        let iy = oy * s.s.0 + ky * s.d.0 - s.pad.0;
                        // Zero-length fills would still call memset: skipped.
                        if lo > 0 {
                            dst[..lo].fill(0.0);
                        }
                        if hi < p.ow {
                            dst[hi..].fill(0.0);
                        }
                        let src = &plane[iy * p.w + first..];
                        if s.s.1 == 1 {
                            copy_short(&mut dst[lo..hi], src);
                        } else {
                            for (d, v) in dst[lo..hi].iter_mut().zip(src.iter().step_by(s.s.1)) {
                                *d = *v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// [`im2col`] of the common convolution without stride, dilation or padding: each row of
/// a column block is input row `oy + ky` from column `kx`, with no bounds to work out.
fn im2col_valid(s: &ConvSizes, x: &[f32], cols: &mut [f32]) {
    let p = s.p;
    let (w, oh, ow) = (p.w, p.oh, p.ow);
    let np = p.n * oh * ow;
    for c in 0..p.c {
        for ky in 0..s.kh {
            for kx in 0..s.kw {
                let row = ((c * s.kh + ky) * s.kw + kx) * np;
                for n in 0..p.n {
                    let plane = &x[(n * p.c + c) * p.h * w..][..p.h * w];
                    let block = &mut cols[row + n * oh * ow..][..oh * ow];
                    let rows = plane[ky * w + kx..].chunks(w);
                    for (dst, src) in block.chunks_exact_mut(ow).zip(rows) {
                        copy_short(dst, &src[..ow]);
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: columns added back into `dx` (zeroed first). Kept out of
/// line: inlined into the convolution kernel (which the compiler decided once the GEMM
/// wrapper changed) it ran twice as slow, and lenet trained 7 % slower.
#[inline(never)]
fn col2im(s: &ConvSizes, cols: &[f32], dx: &mut [f32]) {
    let p = s.p;
    let np = p.n * p.oh * p.ow;
    dx.fill(0.0);
    if s.s == (1, 1) && s.d == (1, 1) && s.pad == (0, 0) {
        return col2im_valid(s, cols, dx);
    }
    for n in 0..p.n {
        for c in 0..p.c {
            let plane = &mut dx[(n * p.c + c) * p.h * p.w..][..p.h * p.w];
            for ky in 0..s.kh {
                for kx in 0..s.kw {
                    let row = ((c * s.kh + ky) * s.kw + kx) * np;
                    let (lo, hi, first) = valid(p.ow, p.w, s.s.1, s.pad.1, kx * s.d.1);
                    if lo == hi {
                        continue;
                    }
                    for oy in 0..p.oh {
                        let Some(iy) = s.iy(oy, ky) else { continue };
                        let src = &cols[row + (n * p.oh + oy) * p.ow..][lo..hi];
                        let dst = &mut plane[iy * p.w + first..];
                        if s.s.1 == 1 {
                            add_short(&mut dst[..hi - lo], src);
                        } else {
                            for (d, v) in dst.iter_mut().step_by(s.s.1).zip(src) {
                                *d += v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// [`col2im`] (into zeros) of the convolution without stride, dilation or padding: row `oy`
/// of a column block is added to input row `oy + ky` from column `kx`.
fn col2im_valid(s: &ConvSizes, cols: &[f32], dx: &mut [f32]) {
    let p = s.p;
    let (w, oh, ow) = (p.w, p.oh, p.ow);
    let np = p.n * oh * ow;
    for n in 0..p.n {
        for c in 0..p.c {
            let plane = &mut dx[(n * p.c + c) * p.h * w..][..p.h * w];
            for ky in 0..s.kh {
                for kx in 0..s.kw {
                    let row = ((c * s.kh + ky) * s.kw + kx) * np;
                    let block = &cols[row + n * oh * ow..][..oh * ow];
                    let rows = plane[ky * w + kx..].chunks_mut(w);
                    for (src, dst) in block.chunks_exact(ow).zip(rows) {
                        add_short(&mut dst[..ow], src);
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

/// Convolutions run over chunks of samples whose column matrix has at most this many
/// elements (256 KiB), so that it is still in the L2 cache when the GEMM reads it.
const COLS_CHUNK: usize = 1 << 16;

/// `v` grown to at least `len` elements (never shrunk, never cleared), and its first `len`.
fn at_least(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
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
    // Elements per sample of x and of y.
    let (xs, ys) = (s.p.c * s.p.h * s.p.w, o * p);
    let chunk = (COLS_CHUNK / (ckk * p).max(1)).clamp(1, n.max(1));
    SCRATCH.with(|scratch| {
        let (cols, t) = &mut *scratch.borrow_mut();
        for n0 in (0..n).step_by(chunk) {
            let m = chunk.min(n - n0);
            let c = ConvSizes {
                p: Plane { n: m, ..s.p },
                ..s
            };
            let np = m * p;
            let (xr, yr) = (n0 * xs..(n0 + m) * xs, n0 * ys..(n0 + m) * ys);
            let t = at_least(t, o * np);
            let cols = at_least(cols, ckk * np);
            match part {
                ConvPart::Forward => {
                    // y[O, m·P] = w[O, CKK] · cols[CKK, m·P], then to [m, O, P].
                    im2col(&c, &args[0][xr], cols);
                    gemm(o, np, ckk, t, args[1], ckk, 1, cols, np, 1, threads);
                    swap_batch(t, &mut out[yr], m, o, p, false);
                }
                ConvPart::Weight => {
                    // dw += g[O, m·P] · cols[CKK, m·P]ᵀ.
                    im2col(&c, &args[0][xr], cols);
                    swap_batch(&args[1][yr], t, m, o, p, true);
                    weight_grad(cols, t, (o, ckk, np), out, n0 > 0, threads);
                }
                ConvPart::Input => {
                    // dcols[CKK, m·P] = w[O, CKK]ᵀ · g[O, m·P], then back onto the input.
                    swap_batch(&args[0][yr], t, m, o, p, true);
                    gemm(ckk, np, o, cols, args[1], 1, ckk, t, np, 1, threads);
                    col2im(&c, cols, &mut out[xr]);
                }
            }
        }
    });
    if n == 0 && part == ConvPart::Weight {
        out.fill(0.0);
    }
}

/// `dw[O, CKK] = g[O, m·P] · cols[CKK, m·P]ᵀ` (`t` is g), written or (`add`) added to
/// `out`. When CKK > O it is computed as `dwᵀ = cols · gᵀ` and the small result
/// transposed after: the `gemm` crate copies (packs) the operand its vector lanes run
/// along, the output's columns, and for `dwᵀ` that is g (O rows, m·P long) rather than
/// cols (CKK rows as long). Measured: lenet 45.1k against 44.2k samples/s with `dw`
/// computed directly (medians of 4 alternating runs).
fn weight_grad(
    cols: &[f32],
    t: &[f32],
    (o, ckk, np): (usize, usize, usize),
    out: &mut [f32],
    add: bool,
    threads: usize,
) {
    let mut dw = vec![0.0f32; ckk * o];
    let transposed = ckk > o;
    if transposed {
        gemm(ckk, o, np, &mut dw, cols, np, 1, t, 1, np, threads);
    } else {
        gemm(o, ckk, np, &mut dw, t, np, 1, cols, 1, np, threads);
    }
    let mut put = |at: usize, v: f32| out[at] = if add { out[at] + v } else { v };
    if transposed {
        // dwᵀ[CKK, O]: element (i, j) is dw[j, i].
        for (i, row) in dw.chunks_exact(o).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                put(j * ckk + i, v);
            }
        }
    } else {
        for (k, &v) in dw.iter().enumerate() {
            put(k, v);
        }
    }
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
            if k[..] == [2, 2] {
                return max_2x2([n * c, *h, *w, *oh, *ow], x, grad, out);
            }
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

/// Windows per block of the 2×2 pooling: one SSE vector.
const POOL_LANES: usize = 4;

/// A 2×2 window `[top left, top right, bottom left, bottom right]`: its value and, per
/// element, all ones at the choice (the first NaN, else the first largest in row-major
/// order, as the general code). In bit masks and selects, so that a block of windows
/// compiles to vector compares without branches: `v` replaces `m` when `!(v ≤ m) ∧ m = m`.
#[inline(always)]
fn window(a: [f32; 4]) -> (f32, [u32; 4]) {
    let mut m = a[0];
    let mut at = [u32::MAX, 0, 0, 0];
    for j in 1..4 {
        #[allow(clippy::neg_cmp_op_on_partial_ord, clippy::eq_op)]
        let take = !(a[j] <= m) & (m == m);
        let mask = u32::from(take).wrapping_neg();
        m = f32::from_bits((a[j].to_bits() & mask) | (m.to_bits() & !mask));
        for q in at.iter_mut().take(j) {
            *q &= !mask;
        }
        at[j] = mask;
    }
    (m, at)
}

/// Window `i` of two input rows (`r0` above `r1`).
#[inline(always)]
fn window_at(r0: &[f32], r1: &[f32], i: usize) -> (f32, [u32; 4]) {
    window([r0[2 * i], r0[2 * i + 1], r1[2 * i], r1[2 * i + 1]])
}

/// The VJP of window `i` into rows `d0` above `d1`: `g` at the choice, zeros elsewhere.
#[inline(always)]
fn window_grad(d0: &mut [f32], d1: &mut [f32], i: usize, g: f32, at: [u32; 4]) {
    let g = g.to_bits();
    d0[2 * i] = f32::from_bits(g & at[0]);
    d0[2 * i + 1] = f32::from_bits(g & at[1]);
    d1[2 * i] = f32::from_bits(g & at[2]);
    d1[2 * i + 1] = f32::from_bits(g & at[3]);
}

/// [`window_grad`] over one block of windows, lane by lane on arrays: the windows'
/// elements de-interleaved, the replacement masks of the scan, each element's gradient
/// (`g` where it is the choice: taken, and not replaced after), interleaved back. Written
/// so (not through [`window`] per window) it compiles to vector code.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn block_grad(
    r: [&[f32; 2 * POOL_LANES]; 2],
    g: &[f32; POOL_LANES],
    d0: &mut [f32; 2 * POOL_LANES],
    d1: &mut [f32; 2 * POOL_LANES],
) {
    const L: usize = POOL_LANES;
    let lane =
        |row: &[f32; 2 * L], k: usize| -> [f32; L] { std::array::from_fn(|i| row[2 * i + k]) };
    let a = [lane(r[0], 0), lane(r[0], 1), lane(r[1], 0), lane(r[1], 1)];
    let mut m = a[0];
    let mut take = [[0u32; L]; 4];
    for j in 1..4 {
        for i in 0..L {
            #[allow(clippy::neg_cmp_op_on_partial_ord, clippy::eq_op)]
            let t = !(a[j][i] <= m[i]) & (m[i] == m[i]);
            let mask = u32::from(t).wrapping_neg();
            take[j][i] = mask;
            m[i] = f32::from_bits((a[j][i].to_bits() & mask) | (m[i].to_bits() & !mask));
        }
    }
    let mut out = [[0u32; L]; 4];
    for i in 0..L {
        let (t1, t2, t3) = (take[1][i], take[2][i], take[3][i]);
        let gb = g[i].to_bits();
        out[3][i] = gb & t3;
        out[2][i] = gb & t2 & !t3;
        out[1][i] = gb & t1 & !t2 & !t3;
        out[0][i] = gb & !t1 & !t2 & !t3;
    }
    for i in 0..L {
        d0[2 * i] = f32::from_bits(out[0][i]);
        d0[2 * i + 1] = f32::from_bits(out[1][i]);
        d1[2 * i] = f32::from_bits(out[2][i]);
        d1[2 * i + 1] = f32::from_bits(out[3][i]);
    }
}

/// Max pooling over 2×2 windows with stride 2 (the common case), or its VJP: a block of
/// [`POOL_LANES`] windows at a time from two input rows. The VJP writes every input
/// element (the gradient at the window's choice, zeros elsewhere), so nothing is cleared
/// first. `sizes` are (planes, h, w, oh, ow).
fn max_2x2(sizes: [usize; 5], x: &[f32], grad: Option<&[f32]>, out: &mut [f32]) {
    const L: usize = POOL_LANES;
    let [planes, h, w, oh, ow] = sizes;
    let blocks = ow / L * L;
    for plane in 0..planes {
        let xp = &x[plane * h * w..][..h * w];
        for oy in 0..oh {
            let r0 = &xp[2 * oy * w..][..2 * ow];
            let r1 = &xp[(2 * oy + 1) * w..][..2 * ow];
            let o = (plane * oh + oy) * ow;
            let Some(g) = grad else {
                let y = &mut out[o..o + ow];
                for start in (0..blocks).step_by(L) {
                    let (r0, r1) = (&r0[2 * start..][..2 * L], &r1[2 * start..][..2 * L]);
                    for (i, y) in y[start..start + L].iter_mut().enumerate() {
                        *y = window_at(r0, r1, i).0;
                    }
                }
                for (i, y) in y.iter_mut().enumerate().skip(blocks) {
                    *y = window_at(r0, r1, i).0;
                }
                continue;
            };
            let g = &g[o..o + ow];
            let (top, bottom) = out[plane * h * w..][..h * w].split_at_mut((2 * oy + 1) * w);
            let (d0, d1) = (&mut top[2 * oy * w..][..w], &mut bottom[..w]);
            for start in (0..blocks).step_by(L) {
                let fixed = "a block is 2·POOL_LANES elements";
                block_grad(
                    [
                        r0[2 * start..][..2 * L].try_into().expect(fixed),
                        r1[2 * start..][..2 * L].try_into().expect(fixed),
                    ],
                    g[start..][..L].try_into().expect(fixed),
                    (&mut d0[2 * start..][..2 * L]).try_into().expect(fixed),
                    (&mut d1[2 * start..][..2 * L]).try_into().expect(fixed),
                );
            }
            for (i, &gv) in g.iter().enumerate().skip(blocks) {
                window_grad(d0, d1, i, gv, window_at(r0, r1, i).1);
            }
            // An odd width leaves a last column no window reads.
            d0[2 * ow..].fill(0.0);
            d1[2 * ow..].fill(0.0);
        }
        if grad.is_some() {
            // An odd height leaves a last row no window reads.
            out[plane * h * w..][2 * oh * w..h * w].fill(0.0);
        }
    }
}

/// Per-channel f64 sums over x `(n, c, p)` (p elements per sample and channel,
/// contiguous) of `f(channel, element index)`, into `acc` (length c, zeroed here). For
/// `[N, C]` (p = 1) the rows run over the channels, so the inner loop vectorizes.
#[inline(always)]
fn channel_sums(
    (n, c, p): (usize, usize, usize),
    acc: &mut [f64],
    f: impl Fn(usize, usize) -> f64,
) {
    acc.fill(0.0);
    if p == 1 {
        for r in 0..n {
            for (k, a) in acc.iter_mut().enumerate() {
                *a += f(k, r * c + k);
            }
        }
    } else {
        for run in 0..n * c {
            let k = run % c;
            let mut part = [0.0f64; 4];
            let base = run * p;
            let full = p / 4 * 4;
            for i in (0..full).step_by(4) {
                for (l, q) in part.iter_mut().enumerate() {
                    *q += f(k, base + i + l);
                }
            }
            let tail: f64 = (full..p).map(|i| f(k, base + i)).sum();
            acc[k] += part.iter().sum::<f64>() + tail;
        }
    }
}

/// Each channel's (mean, 1/√(var + eps)) from batch statistics `[2, C]`, in f64.
fn moments(stats: &[f32], eps: f64) -> (Vec<f64>, Vec<f64>) {
    let c = stats.len() / 2;
    let mean = stats[..c].iter().map(|&m| f64::from(m)).collect();
    let inv = stats[c..]
        .iter()
        .map(|&v| 1.0 / (f64::from(v) + eps).sqrt())
        .collect();
    (mean, inv)
}

/// Writes `f(channel, element index)` to every element of `out` (dims `(n, c, p)`).
#[inline(always)]
fn per_channel((n, c, p): (usize, usize, usize), out: &mut [f32], f: impl Fn(usize, usize) -> f32) {
    if p == 1 {
        for (r, row) in out.chunks_exact_mut(c.max(1)).take(n).enumerate() {
            for (k, y) in row.iter_mut().enumerate() {
                *y = f(k, r * c + k);
            }
        }
    } else {
        for (run, ys) in out.chunks_exact_mut(p).enumerate() {
            let k = run % c;
            for (i, y) in ys.iter_mut().enumerate() {
                *y = f(k, run * p + i);
            }
        }
    }
}

/// Batch statistics `[2, C]` of x `(n, c, p)`: the mean, then the biased variance (two
/// passes, f64 sums).
pub fn batch_stats(dims: (usize, usize, usize), x: &[f32], out: &mut [f32]) {
    let (n, c, p) = dims;
    let m = (n * p) as f64;
    let mut acc = vec![0.0f64; c];
    channel_sums(dims, &mut acc, |_, i| f64::from(x[i]));
    let mean: Vec<f64> = acc.iter().map(|s| s / m).collect();
    channel_sums(dims, &mut acc, |k, i| (f64::from(x[i]) - mean[k]).powi(2));
    for k in 0..c {
        out[k] = mean[k] as f32;
        out[c + k] = (acc[k] / m) as f32;
    }
}

/// Batch normalization of x `(n, c, p)` with its statistics: `(x − μ)·γ/√(σ² + eps) + β`.
pub fn batchnorm(
    dims: (usize, usize, usize),
    [x, stats, gamma, beta]: [&[f32]; 4],
    eps: f64,
    out: &mut [f32],
) {
    let (mean, inv) = moments(stats, eps);
    let mu: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let scale: Vec<f32> = inv
        .iter()
        .zip(gamma)
        .map(|(&i, &g)| (i * f64::from(g)) as f32)
        .collect();
    per_channel(dims, out, |k, i| (x[i] - mu[k]) * scale[k] + beta[k]);
}

/// The sums of batch normalization's VJP `[2, C]`: Σ g·x̂, then Σ g.
pub fn batchnorm_sums(
    dims: (usize, usize, usize),
    [x, stats, g]: [&[f32]; 3],
    eps: f64,
    out: &mut [f32],
) {
    let c = dims.1;
    let (mean, inv) = moments(stats, eps);
    let mut acc = vec![0.0f64; c];
    channel_sums(dims, &mut acc, |k, i| {
        f64::from(g[i]) * (f64::from(x[i]) - mean[k])
    });
    for k in 0..c {
        out[k] = (acc[k] * inv[k]) as f32;
    }
    channel_sums(dims, &mut acc, |_, i| f64::from(g[i]));
    for k in 0..c {
        out[c + k] = acc[k] as f32;
    }
}

/// Batch normalization's VJP w.r.t. x: `γ/√(σ² + eps)·(g − Σg/M − x̂·Σg·x̂/M)`, as
/// `a·g − (x − μ)·b − d` with per-channel constants.
pub fn batchnorm_grad(
    dims: (usize, usize, usize),
    [x, stats, gamma, sums, g]: [&[f32]; 5],
    eps: f64,
    out: &mut [f32],
) {
    let (n, c, p) = dims;
    let m = (n * p) as f64;
    let (mean, inv) = moments(stats, eps);
    let mu: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
    let (mut a, mut b, mut d) = (vec![0.0f32; c], vec![0.0f32; c], vec![0.0f32; c]);
    for k in 0..c {
        let ak = f64::from(gamma[k]) * inv[k];
        a[k] = ak as f32;
        b[k] = (ak * inv[k] * f64::from(sums[k]) / m) as f32;
        d[k] = (ak * f64::from(sums[c + k]) / m) as f32;
    }
    per_channel(dims, out, |k, i| {
        a[k] * g[i] - ((x[i] - mu[k]) * b[k] + d[k])
    });
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
    noise_each(dist, seed, salt, f64::from(step), out.len(), |i, x| {
        out[i] = x as f32
    });
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

/// A sum of dims `sd` down to `small` (same rank, each dim equal or 1) as
/// (outer, kept, inner) when the kept axes are contiguous: `out[j] = Σ_o Σ_i
/// src[(o·kept + j)·inner + i]` (a bias gradient `[N, F] → [F]`, a per-channel one
/// `[N, C, H, W] → [C, 1, 1]`). None for other patterns.
fn runs(sd: &[usize], small: &[usize]) -> Option<(usize, usize, usize)> {
    let (mut outer, mut kept, mut inner) = (1, 1, 1);
    // 0: leading summed axes, 1: kept axes, 2: trailing summed axes.
    let mut phase = 0;
    for (&d, &k) in sd.iter().zip(small) {
        if d == 1 {
            continue;
        }
        let summed = k == 1;
        phase = match (phase, summed) {
            (0, true) => 0,
            (0 | 1, false) => 1,
            (_, true) => 2,
            (2, false) => return None,
            _ => unreachable!(),
        };
        match phase {
            0 => outer *= d,
            1 => kept *= d,
            _ => inner *= d,
        }
    }
    Some((outer, kept, inner))
}

/// `Σ` of `xs` in f64 with eight partial sums (so the loop vectorizes).
fn sum_f64(xs: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| f64::from(v)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f64::from(v);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// The sums of [`runs`] accumulated in f64 into `acc` (length `kept`, zeroed here).
fn sum_runs(src: &[f32], (outer, kept, inner): (usize, usize, usize), acc: &mut [f64]) {
    acc.fill(0.0);
    if kept * inner == 0 {
        return;
    }
    for block in src.chunks_exact(kept * inner).take(outer) {
        if inner == 1 {
            for (a, &v) in acc.iter_mut().zip(block) {
                *a += f64::from(v);
            }
        } else {
            for (a, run) in acc.iter_mut().zip(block.chunks_exact(inner)) {
                *a += sum_f64(run);
            }
        }
    }
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
            match runs(sd, &small) {
                Some(r) => sum_runs(src, r, &mut acc),
                None => broadcast_index(sd, &small, |i, j| acc[j] += f64::from(src[i])),
            }
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
    match runs(sd, &small) {
        Some(r) => sum_runs(src, r, &mut acc),
        None => broadcast_index(sd, &small, |i, j| acc[j] += f64::from(src[i])),
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = a as f32;
    }
}
