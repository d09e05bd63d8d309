//! Pooling and its VJP: over precomputed windows in general, and in vector blocks for
//! 2×2 max pooling and windows that tile the input. The window chosen is the
//! interpreter's (the first NaN, else the first largest).

use crate::interp::layers::pool_windows;
use crate::ir::{Pool, PoolKind, Windows};

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
