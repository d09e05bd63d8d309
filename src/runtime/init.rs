//! Parameter initialization (LANGUAGE.md §6), each parameter from its own random stream.

use crate::check::graph::{CheckedModel, Init, LayerKind};
use crate::exec::rng::{stream, Purpose};
use crate::exec::RunError;
use ndarray::{ArrayD, IxDyn};
use rand_distr::{Distribution, Normal, Uniform};

/// Fan-in and fan-out of a weight of `shape` in layer `kind`, as PyTorch computes them
/// for its own layouts (Kiln's dense weight is `[in, out]`, the transpose of PyTorch's).
pub fn fans(kind: &LayerKind, shape: &[u64]) -> (f64, f64) {
    let s: Vec<f64> = shape.iter().map(|&d| d as f64).collect();
    match (kind, s.as_slice()) {
        (LayerKind::Dense { .. }, [fan_in, fan_out]) => (*fan_in, *fan_out),
        (_, [out, inp, rest @ ..]) => {
            let field: f64 = rest.iter().product();
            (inp * field, out * field)
        }
        (_, [n]) => (*n, *n),
        _ => (1.0, 1.0),
    }
}

/// Initial values of every parameter and state of `m`, drawn from `seed`; an error
/// (the model is too large) instead of an abort when they do not fit in memory.
pub fn init_params(m: &CheckedModel, seed: u64) -> Result<Vec<ArrayD<f32>>, RunError> {
    let values = m
        .params
        .iter()
        .map(|p| p.shape.iter().map(|&d| u128::from(d)).product::<u128>());
    fits_memory(values.sum(), &format!("`{}`'s parameters", m.name))?;
    m.params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let dims: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
            let n: usize = dims.iter().product();
            let mut values = Vec::new();
            values.try_reserve_exact(n).map_err(|_| {
                RunError::input(format!(
                    "parameter `{}` needs {} and this machine could not allocate them",
                    p.name,
                    size(n as u128 * 4)
                ))
            })?;
            let kind = &m.layers[p.layer].kind;
            let (fan_in, fan_out) = fans(kind, &p.shape);
            let mut rng = stream(seed, Purpose::Init, i as u64);
            match p.init {
                Init::Constant(v) => values.resize(n, v as f32),
                Init::He => sample_normal((2.0 / fan_in).sqrt(), n, &mut rng, &mut values),
                Init::Normal(std) => sample_normal(std, n, &mut rng, &mut values),
                Init::Xavier => {
                    sample_uniform((6.0 / (fan_in + fan_out)).sqrt(), n, &mut rng, &mut values)
                }
                Init::Uniform(a) => sample_uniform(a, n, &mut rng, &mut values),
                Init::RecurrentUniform => {
                    let hidden = match kind {
                        LayerKind::Recurrent { hidden, .. } => *hidden as f64,
                        _ => fan_in,
                    };
                    sample_uniform(1.0 / hidden.sqrt(), n, &mut rng, &mut values)
                }
            }
            ArrayD::from_shape_vec(IxDyn(&dims), values)
                .map_err(|e| RunError::bug(format!("parameter `{}`: {e}", p.name)))
        })
        .collect()
}

/// An error when `values` f32 values (`what`) need more bytes than this machine's
/// memory (`MemTotal` of /proc/meminfo; no limit where that cannot be read), before
/// anything is allocated: the allocation would abort the process, or the system would
/// kill it while the values are written.
pub fn fits_memory(values: u128, what: &str) -> Result<(), RunError> {
    let bytes = values * 4;
    match memory_total() {
        Some(total) if bytes > total => Err(RunError::input(format!(
            "{what} hold {} values, {} as f32, more than this machine's memory ({})",
            crate::diag::thousands(u64::try_from(values).unwrap_or(u64::MAX)),
            size(bytes),
            size(total)
        ))),
        _ => Ok(()),
    }
}

/// Bytes of memory this machine has, from /proc/meminfo.
fn memory_total() -> Option<u128> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `bytes` in GB or MB, as a person reads them.
fn size(bytes: u128) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else {
        format!("{:.1} MB", b / 1e6)
    }
}

fn sample_normal(std: f64, n: usize, rng: &mut impl rand::Rng, out: &mut Vec<f32>) {
    match Normal::new(0.0, std) {
        Ok(d) => out.extend((0..n).map(|_| d.sample(rng) as f32)),
        Err(_) => out.resize(n, 0.0),
    }
}

fn sample_uniform(a: f64, n: usize, rng: &mut impl rand::Rng, out: &mut Vec<f32>) {
    if a <= 0.0 {
        out.resize(n, 0.0);
        return;
    }
    let d = Uniform::new_inclusive(-a, a);
    out.extend((0..n).map(|_| d.sample(rng) as f32));
}
