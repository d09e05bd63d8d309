//! Convolution as im2col + GEMM over chunks of the batch: the forward pass and both
//! VJPs (input and weight), with the column matrix kept in per-thread scratch. Each
//! computes what the interpreter's version computes (the differential tests hold it to
//! it); summation order differs.

use super::gemm::gemm;
use crate::interp::layers::{ConvSizes, Plane};
use crate::ir::ConvGeom;
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
