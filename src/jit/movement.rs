//! Data movement kernels: slices, concatenation, broadcasts and reductions (sums in f64,
//! their VJPs included).

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
