//! Fast f32 kernels for batch normalization (statistics, normalization and its VJP),
//! gather (embeddings) and noise. Each computes what the interpreter's version computes
//! (the differential tests hold them to it); summation order differs, accumulation is in
//! f64.

use crate::exec::RunError;
use crate::interp::layers::noise_each;
use crate::ir::Noise;

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
) -> Result<(), RunError> {
    if grad {
        out.fill(0.0);
    }
    for (k, &id) in ids.iter().enumerate() {
        if !(id >= 0.0 && id.fract() == 0.0 && (id as usize) < table_rows) {
            return Err(RunError::input(format!(
                "id {id} is not a class id below {table_rows}"
            )));
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
pub fn noise(dist: Noise, seed: u64, salt: u64, step: f32, offset: u64, out: &mut [f32]) {
    noise_each(
        dist,
        seed,
        salt,
        f64::from(step),
        offset,
        out.len(),
        |i, x| out[i] = x as f32,
    );
}
