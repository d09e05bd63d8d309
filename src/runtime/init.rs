//! Parameter initialization (LANGUAGE.md §6), each parameter from its own random stream.

use crate::check::graph::{CheckedModel, Init, LayerKind};
use crate::exec::rng::{stream, Purpose};
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

/// Initial values of every parameter and state of `m`, drawn from `seed`.
pub fn init_params(m: &CheckedModel, seed: u64) -> Vec<ArrayD<f32>> {
    m.params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let dims: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
            let n: usize = dims.iter().product();
            let kind = &m.layers[p.layer].kind;
            let (fan_in, fan_out) = fans(kind, &p.shape);
            let mut rng = stream(seed, Purpose::Init, i as u64);
            let values: Vec<f32> = match p.init {
                Init::Constant(v) => vec![v as f32; n],
                Init::He => sample_normal((2.0 / fan_in).sqrt(), n, &mut rng),
                Init::Normal(std) => sample_normal(std, n, &mut rng),
                Init::Xavier => sample_uniform((6.0 / (fan_in + fan_out)).sqrt(), n, &mut rng),
                Init::Uniform(a) => sample_uniform(a, n, &mut rng),
                Init::RecurrentUniform => {
                    let hidden = match kind {
                        LayerKind::Recurrent { hidden, .. } => *hidden as f64,
                        _ => fan_in,
                    };
                    sample_uniform(1.0 / hidden.sqrt(), n, &mut rng)
                }
            };
            ArrayD::from_shape_vec(IxDyn(&dims), values).expect("element count matches the shape")
        })
        .collect()
}

fn sample_normal(std: f64, n: usize, rng: &mut impl rand::Rng) -> Vec<f32> {
    match Normal::new(0.0, std) {
        Ok(d) => (0..n).map(|_| d.sample(rng) as f32).collect(),
        Err(_) => vec![0.0; n],
    }
}

fn sample_uniform(a: f64, n: usize, rng: &mut impl rand::Rng) -> Vec<f32> {
    if a <= 0.0 {
        return vec![0.0; n];
    }
    let d = Uniform::new_inclusive(-a, a);
    (0..n).map(|_| d.sample(rng) as f32).collect()
}
