//! The reference implementations of the layer operations: convolution, pooling, gather,
//! batch normalization and noise, with their VJPs. Written as the textbook loops over every
//! output element, accumulating in f64; one and two spatial axes share the code (a 1-d
//! axis is a 2-d one of height 1).

use super::{Real, RunError};
use crate::exec::rng::{stream, Purpose};
use crate::ir::{ConvGeom, Noise, Pool, PoolKind, Windows};
use ndarray::{ArrayD, IxDyn};
use rand::Rng;

/// Noise nodes per graph are numbered below this; the step takes the bits above.
pub const MAX_NOISE_NODES: u64 = 1 << 16;

/// Sizes of a 2-d spatial problem: `[n, c, h, w]` and per-axis settings `(y, x)`.
#[derive(Clone, Copy, Debug)]
pub struct Plane {
    /// Batch.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Input height and width.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

/// The (height, width) of the spatial axes of `dims` (`[N, C, S..]`, one or two axes).
fn hw(dims: &[usize]) -> (usize, usize) {
    match dims.len() {
        3 => (1, dims[2]),
        _ => (dims[2], dims[3]),
    }
}

/// A per-axis setting as (height, width); `one` fills the height of a 1-d problem.
fn pair(v: &[usize], one: usize) -> (usize, usize) {
    match v.len() {
        1 => (one, v[0]),
        _ => (v[0], v[1]),
    }
}

/// A convolution's sizes: input plane, output channels and kernel size.
#[derive(Clone, Copy, Debug)]
pub struct ConvSizes {
    /// Input and output plane.
    pub p: Plane,
    /// Output channels.
    pub o: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (y, x).
    pub s: (usize, usize),
    /// Padding (y, x).
    pub pad: (usize, usize),
    /// Dilation (y, x).
    pub d: (usize, usize),
}

impl ConvSizes {
    /// The sizes of a convolution of x `xd` with w `wd` giving `od`.
    pub fn new(xd: &[usize], wd: &[usize], od: &[usize], g: &ConvGeom) -> ConvSizes {
        let (h, w) = hw(xd);
        let (oh, ow) = hw(od);
        let (kh, kw) = hw(wd);
        ConvSizes {
            p: Plane {
                n: xd[0],
                c: xd[1],
                h,
                w,
                oh,
                ow,
            },
            o: wd[0],
            kh,
            kw,
            s: pair(&g.stride, 1),
            pad: pair(&g.pad, 0),
            d: pair(&g.dilation, 1),
        }
    }

    /// The input row read by output row `oy` at kernel row `ky` (None: padding).
    pub fn iy(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.s.0 + ky * self.d.0)
            .checked_sub(self.pad.0)
            .filter(|&y| y < self.p.h)
    }

    /// The input column read by output column `ox` at kernel column `kx` (None: padding).
    pub fn ix(&self, ox: usize, kx: usize) -> Option<usize> {
        (ox * self.s.1 + kx * self.d.1)
            .checked_sub(self.pad.1)
            .filter(|&x| x < self.p.w)
    }

    /// Calls `f(x index, w index, out index)` for every multiply-add of the convolution.
    fn each(&self, mut f: impl FnMut(usize, usize, usize)) {
        let ConvSizes { p, o, kh, kw, .. } = *self;
        for n in 0..p.n {
            for oc in 0..o {
                for oy in 0..p.oh {
                    for ox in 0..p.ow {
                        let out = ((n * o + oc) * p.oh + oy) * p.ow + ox;
                        for c in 0..p.c {
                            for ky in 0..kh {
                                let Some(iy) = self.iy(oy, ky) else { continue };
                                for kx in 0..kw {
                                    let Some(ix) = self.ix(ox, kx) else { continue };
                                    let xi = ((n * p.c + c) * p.h + iy) * p.w + ix;
                                    let wi = ((oc * p.c + c) * kh + ky) * kw + kx;
                                    f(xi, wi, out);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn slice<T>(a: &ArrayD<T>) -> Result<std::borrow::Cow<'_, [T]>, RunError>
where
    T: Clone,
{
    match a.as_slice() {
        Some(s) => Ok(std::borrow::Cow::Borrowed(s)),
        None => Ok(std::borrow::Cow::Owned(a.iter().cloned().collect())),
    }
}

fn array<T: Real>(out: &[usize], acc: Vec<f64>) -> Result<ArrayD<T>, RunError> {
    ArrayD::from_shape_vec(IxDyn(out), acc.into_iter().map(T::of).collect())
        .map_err(|e| RunError::bug(e.to_string()))
}

/// `conv(x, w)`.
pub fn conv<T: Real>(
    x: &ArrayD<T>,
    w: &ArrayD<T>,
    out: &[usize],
    g: &ConvGeom,
) -> Result<ArrayD<T>, RunError> {
    let s = ConvSizes::new(x.shape(), w.shape(), out, g);
    let (xs, ws) = (slice(x)?, slice(w)?);
    let mut acc = vec![0.0f64; out.iter().product()];
    s.each(|xi, wi, oi| acc[oi] += xs[xi].f() * ws[wi].f());
    array(out, acc)
}

/// The convolution's VJP w.r.t. its input: `gy` `[N, O, ..]`, `w`, into x's dims `out`.
pub fn conv_grad_input<T: Real>(
    gy: &ArrayD<T>,
    w: &ArrayD<T>,
    out: &[usize],
    g: &ConvGeom,
) -> Result<ArrayD<T>, RunError> {
    let s = ConvSizes::new(out, w.shape(), gy.shape(), g);
    let (gs, ws) = (slice(gy)?, slice(w)?);
    let mut acc = vec![0.0f64; out.iter().product()];
    s.each(|xi, wi, oi| acc[xi] += gs[oi].f() * ws[wi].f());
    array(out, acc)
}

/// The convolution's VJP w.r.t. its weights: `x`, `gy`, into w's dims `out`.
pub fn conv_grad_weight<T: Real>(
    x: &ArrayD<T>,
    gy: &ArrayD<T>,
    out: &[usize],
    g: &ConvGeom,
) -> Result<ArrayD<T>, RunError> {
    let s = ConvSizes::new(x.shape(), out, gy.shape(), g);
    let (xs, gs) = (slice(x)?, slice(gy)?);
    let mut acc = vec![0.0f64; out.iter().product()];
    s.each(|xi, wi, oi| acc[wi] += xs[xi].f() * gs[oi].f());
    array(out, acc)
}

/// One window along an axis: the real elements `start..end` and the divisor of an
/// average that counts padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First real element.
    pub start: usize,
    /// One past the last real element.
    pub end: usize,
    /// The window's full size, padding included.
    pub full: usize,
}

/// The windows along one axis of length `len` (axis `i` of the pooling), `out` of them.
pub fn windows(w: &Windows, i: usize, len: usize, out: usize) -> Vec<Window> {
    (0..out)
        .map(|o| match w {
            Windows::Regular { k, stride, pad, .. } => {
                let (k, s, p) = (k[i], stride[i], pad[i]);
                let lo = o * s;
                Window {
                    start: lo.saturating_sub(p).min(len),
                    end: (lo + k).saturating_sub(p).min(len),
                    full: k,
                }
            }
            Windows::Adaptive { bins } => {
                let n = bins[i];
                let start = o * len / n;
                let end = ((o + 1) * len).div_ceil(n);
                Window {
                    start,
                    end,
                    full: end - start,
                }
            }
        })
        .collect()
}

/// The windows of a pooling of input dims `xd` to output dims `od`: (rows, columns).
pub fn pool_windows(p: &Pool, xd: &[usize], od: &[usize]) -> (Vec<Window>, Vec<Window>) {
    let (h, w) = hw(xd);
    let (oh, ow) = hw(od);
    if xd.len() == 3 {
        let one = vec![Window {
            start: 0,
            end: 1,
            full: 1,
        }];
        (one, windows(&p.windows, 0, w, ow))
    } else {
        (windows(&p.windows, 0, h, oh), windows(&p.windows, 1, w, ow))
    }
}

/// Calls `f(out index, window's input indices, divisor)` for every output element.
fn each_window(p: &Pool, xd: &[usize], od: &[usize], mut f: impl FnMut(usize, &[usize], f64)) {
    let (rows, cols) = pool_windows(p, xd, od);
    let (h, w) = hw(xd);
    let planes = xd[0] * xd[1];
    let count_pad = matches!(
        p.windows,
        Windows::Regular {
            count_pad: true,
            ..
        }
    );
    let mut idx = Vec::new();
    let mut out = 0;
    for plane in 0..planes {
        for r in &rows {
            for c in &cols {
                idx.clear();
                for y in r.start..r.end {
                    for x in c.start..c.end {
                        idx.push((plane * h + y) * w + x);
                    }
                }
                let div = if count_pad {
                    (r.full * c.full) as f64
                } else {
                    idx.len() as f64
                };
                f(out, &idx, div);
                out += 1;
            }
        }
    }
}

/// The index (into `idx`) of the first largest element.
fn argmax(xs: &[f64], idx: &[usize]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (j, &i) in idx.iter().enumerate() {
        let v = xs[i];
        if best.is_none_or(|b| v > xs[idx[b]] || v.is_nan()) {
            best = Some(j);
            if v.is_nan() {
                break;
            }
        }
    }
    best
}

/// `pool(x)`.
pub fn pool<T: Real>(x: &ArrayD<T>, out: &[usize], p: &Pool) -> Result<ArrayD<T>, RunError> {
    let xs: Vec<f64> = x.iter().map(|v| v.f()).collect();
    let mut acc = vec![0.0f64; out.iter().product()];
    each_window(p, x.shape(), out, |o, idx, div| {
        acc[o] = match p.kind {
            PoolKind::Max => argmax(&xs, idx).map_or(f64::NEG_INFINITY, |j| xs[idx[j]]),
            PoolKind::Avg => idx.iter().map(|&i| xs[i]).sum::<f64>() / div,
        }
    });
    array(out, acc)
}

/// The pooling's VJP: `g` sent back to the window elements of `x` (dims `out`).
pub fn pool_grad<T: Real>(
    x: &ArrayD<T>,
    gy: &ArrayD<T>,
    out: &[usize],
    p: &Pool,
) -> Result<ArrayD<T>, RunError> {
    let xs: Vec<f64> = x.iter().map(|v| v.f()).collect();
    let gs: Vec<f64> = gy.iter().map(|v| v.f()).collect();
    let mut acc = vec![0.0f64; out.iter().product()];
    each_window(p, out, gy.shape(), |o, idx, div| match p.kind {
        PoolKind::Max => {
            if let Some(j) = argmax(&xs, idx) {
                acc[idx[j]] += gs[o];
            }
        }
        PoolKind::Avg => {
            for &i in idx {
                acc[i] += gs[o] / div;
            }
        }
    });
    array(out, acc)
}

/// The row of a `vocab`-row table for id value `v`.
fn row(v: f64, vocab: usize) -> Result<usize, RunError> {
    if v >= 0.0 && v.fract() == 0.0 && (v as usize) < vocab {
        Ok(v as usize)
    } else {
        Err(RunError::input(format!(
            "id {v} is not a class id below {vocab}"
        )))
    }
}

/// `table[ids]`: rows of `[V, D]`.
pub fn gather<T: Real>(
    table: &ArrayD<T>,
    ids: &ArrayD<T>,
    out: &[usize],
) -> Result<ArrayD<T>, RunError> {
    let (vocab, d) = (table.shape()[0], table.shape()[1]);
    let t = slice(table)?;
    let mut acc = Vec::with_capacity(out.iter().product());
    for id in ids.iter() {
        let r = row(id.f(), vocab)?;
        acc.extend(t[r * d..(r + 1) * d].iter().map(|v| v.f()));
    }
    array(out, acc)
}

/// Gather's VJP: the rows of `gy` `[.., D]` summed into a `[V, D]` table by id.
pub fn gather_grad<T: Real>(
    ids: &ArrayD<T>,
    gy: &ArrayD<T>,
    out: &[usize],
) -> Result<ArrayD<T>, RunError> {
    let (vocab, d) = (out[0], out[1]);
    let gs = slice(gy)?;
    let mut acc = vec![0.0f64; vocab * d];
    for (k, id) in ids.iter().enumerate() {
        let r = row(id.f(), vocab)?;
        for j in 0..d {
            acc[r * d + j] += gs[k * d + j].f();
        }
    }
    array(out, acc)
}

/// Draws per block of [`noise_each`].
const NOISE_BLOCK: usize = 512;

/// Calls `f(i, value)` for each of the `len` values of a noise node at training step
/// `step`, starting at value `offset` of the node's stream (a shard's first row's first
/// value): draw `offset + i` of the run's stream for this step and node is a uniform `u` in
/// `[0, 1)` from the high 24 bits of a u32 (exactly `rand`'s `Standard` f32, a step of
/// 2⁻²⁴ between values), then the distribution. The u32s come a block at a time (the
/// same sequence as one by one); half the generator's work of 64-bit draws.
pub fn noise_each(
    dist: Noise,
    seed: u64,
    salt: u64,
    step: f64,
    offset: u64,
    len: usize,
    mut f: impl FnMut(usize, f64),
) {
    let step = step.max(0.0) as u64;
    let mut rng = stream(
        seed,
        Purpose::Noise,
        step.wrapping_mul(MAX_NOISE_NODES) + salt % MAX_NOISE_NODES,
    );
    // One 32-bit word of the stream per value.
    rng.set_word_pos(u128::from(offset));
    let mut bits = [0u32; NOISE_BLOCK];
    for start in (0..len).step_by(NOISE_BLOCK) {
        let block = &mut bits[..NOISE_BLOCK.min(len - start)];
        rng.fill(block);
        for (j, &b) in block.iter().enumerate() {
            let u = f64::from(b >> 8) * (1.0 / f64::from(1u32 << 24));
            f(
                start + j,
                match dist {
                    Noise::Dropout(p) => {
                        if u < p {
                            0.0
                        } else {
                            1.0 / (1.0 - p)
                        }
                    }
                    Noise::Uniform(lo, hi) => lo + (hi - lo) * u,
                },
            );
        }
    }
}

/// The values of a noise node at training step `step` from value `offset` of its stream
/// (see [`noise_each`]).
pub fn noise_values(
    dist: Noise,
    seed: u64,
    salt: u64,
    step: f64,
    offset: u64,
    len: usize,
) -> Vec<f64> {
    let mut v = vec![0.0; len];
    noise_each(dist, seed, salt, step, offset, len, |i, x| v[i] = x);
    v
}

/// Where a noise node's values start in its stream: `rows` (its first dimension) rows
/// from `row_offset` on, for a node with a row offset, else 0.
pub fn noise_offset(row_offset: Option<f64>, len: usize, rows: usize) -> u64 {
    match row_offset {
        Some(r) if rows > 0 => r.max(0.0) as u64 * (len / rows) as u64,
        _ => 0,
    }
}

/// A noise node's value: `args` are the step and, for per-row noise, the row offset.
pub fn noise<T: Real>(
    dist: Noise,
    seed: u64,
    salt: u64,
    args: &[&ArrayD<T>],
    out: &[usize],
) -> Result<ArrayD<T>, RunError> {
    let scalar = |k: usize| args.get(k).and_then(|a| a.iter().next()).map(|v| v.f());
    let len = out.iter().product();
    let offset = noise_offset(scalar(1), len, out.first().copied().unwrap_or(0));
    array(
        out,
        noise_values(dist, seed, salt, scalar(0).unwrap_or(0.0), offset, len),
    )
}

/// (N, C, P) of batch normalization's input dims `[N, C, S..]`: P elements per sample and
/// channel, contiguous.
pub fn channels(dims: &[usize]) -> (usize, usize, usize) {
    (dims[0], dims[1], dims[2..].iter().product())
}

/// The channel of every element of x (dims `[N, C, S..]`), in order.
fn channel_of(dims: &[usize]) -> impl Iterator<Item = usize> {
    let (n, c, p) = channels(dims);
    (0..n * c * p).map(move |i| i / p % c)
}

/// Batch statistics `[2, C]`: each channel's mean, then its biased variance.
pub fn batch_stats<T: Real>(x: &ArrayD<T>, out: &[usize]) -> Result<ArrayD<T>, RunError> {
    let (n, c, p) = channels(x.shape());
    let m = (n * p) as f64;
    let mut mean = vec![0.0f64; c];
    for (k, v) in channel_of(x.shape()).zip(x.iter()) {
        mean[k] += v.f();
    }
    mean.iter_mut().for_each(|s| *s /= m);
    let mut var = vec![0.0f64; c];
    for (k, v) in channel_of(x.shape()).zip(x.iter()) {
        var[k] += (v.f() - mean[k]).powi(2);
    }
    var.iter_mut().for_each(|s| *s /= m);
    mean.extend(var);
    array(out, mean)
}

/// Each channel's (mean, 1/√(var + eps)) from batch statistics `[2, C]`.
fn moments<T: Real>(stats: &ArrayD<T>, eps: f64) -> Vec<(f64, f64)> {
    let s: Vec<f64> = stats.iter().map(|v| v.f()).collect();
    let c = s.len() / 2;
    (0..c)
        .map(|k| (s[k], 1.0 / (s[c + k] + eps).sqrt()))
        .collect()
}

/// `γ·(x − mean)/√(var + eps) + β` per channel, with the statistics given.
pub fn batchnorm<T: Real>(
    a: [&ArrayD<T>; 4],
    eps: f64,
    out: &[usize],
) -> Result<ArrayD<T>, RunError> {
    let [x, stats, gamma, beta] = a;
    let mo = moments(stats, eps);
    let (gamma, beta) = (slice(gamma)?, slice(beta)?);
    let y = channel_of(x.shape())
        .zip(x.iter())
        .map(|(k, v)| gamma[k].f() * (v.f() - mo[k].0) * mo[k].1 + beta[k].f())
        .collect();
    array(out, y)
}

/// The sums of batch normalization's VJP `[2, C]`: Σ g·x̂, then Σ g, per channel.
pub fn batchnorm_sums<T: Real>(
    a: [&ArrayD<T>; 3],
    eps: f64,
    out: &[usize],
) -> Result<ArrayD<T>, RunError> {
    let [x, stats, g] = a;
    let mo = moments(stats, eps);
    let c = mo.len();
    let mut sums = vec![0.0f64; 2 * c];
    for ((k, v), gv) in channel_of(x.shape()).zip(x.iter()).zip(g.iter()) {
        sums[k] += gv.f() * (v.f() - mo[k].0) * mo[k].1;
        sums[c + k] += gv.f();
    }
    array(out, sums)
}

/// Batch normalization's VJP w.r.t. x: `γ/√(var + eps)·(g − Σg/M − x̂·Σg·x̂/M)`.
pub fn batchnorm_grad<T: Real>(
    a: [&ArrayD<T>; 5],
    eps: f64,
    out: &[usize],
) -> Result<ArrayD<T>, RunError> {
    let [x, stats, gamma, sums, g] = a;
    let mo = moments(stats, eps);
    let (n, c, p) = channels(x.shape());
    let m = (n * p) as f64;
    let (gamma, sums) = (slice(gamma)?, slice(sums)?);
    let dx = channel_of(x.shape())
        .zip(x.iter())
        .zip(g.iter())
        .map(|((k, v), gv)| {
            let xhat = (v.f() - mo[k].0) * mo[k].1;
            let (sgx, sg) = (sums[k].f() / m, sums[c + k].f() / m);
            gamma[k].f() * mo[k].1 * (gv.f() - sg - xhat * sgx)
        })
        .collect();
    array(out, dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block draws are the draws of `rng.gen::<f32>()` one at a time.
    #[test]
    fn noise_draws_are_rands_standard_f32_in_order() {
        for (len, salt) in [(0, 0), (1, 1), (511, 2), (512, 3), (1500, 70000)] {
            let dist = Noise::Uniform(-1.0, 3.0);
            let got = noise_values(dist, 9, salt, 4.0, 0, len);
            let mut rng = stream(
                9,
                Purpose::Noise,
                4 * MAX_NOISE_NODES + salt % MAX_NOISE_NODES,
            );
            let want: Vec<f64> = (0..len)
                .map(|_| -1.0 + 4.0 * f64::from(rng.gen::<f32>()))
                .collect();
            assert_eq!(got, want, "len {len}");
        }
    }

    /// Values from an offset are the stream's values there: a shard's rows get the noise
    /// the whole batch would give them.
    #[test]
    fn noise_from_an_offset_continues_the_stream() {
        let dist = Noise::Dropout(0.5);
        let whole = noise_values(dist, 9, 1, 4.0, 0, 1500);
        for offset in [1, 511, 512, 700] {
            let tail = noise_values(dist, 9, 1, 4.0, offset, 1500 - offset as usize);
            assert_eq!(tail, whole[offset as usize..], "offset {offset}");
        }
        assert_eq!(noise_offset(Some(3.0), 40, 8), 15);
        assert_eq!(noise_offset(None, 40, 8), 0);
    }
}
