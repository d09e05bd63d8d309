//! Losses over flat buffers: the value (a mean over predictions or rows) and its gradient
//! with respect to the prediction, in f64. The interpreter and the JIT's kernels share
//! this code, so both backends compute every loss the same way.

use super::{sigmoid, Real, RunError};
use crate::ir::{Func, LossKind};
use crate::ops::Elem;

/// A loss's two operands, flat, with what their shapes say.
pub struct Operands<'a, T> {
    pred: &'a [T],
    target: &'a [T],
    /// The prediction's last dimension.
    classes: usize,
    /// The target holds class ids: one dimension less than the prediction.
    labels: bool,
}

impl<'a, T: Real> Operands<'a, T> {
    /// The prediction and target values (row-major) with their dimensions.
    pub fn new(pred: &'a [T], pred_dims: &[usize], target: &'a [T], target_dims: &[usize]) -> Self {
        let classes = *pred_dims.last().unwrap_or(&1);
        let labels = target.len() * classes == pred.len()
            && target_dims.len() + 1 == pred_dims.len()
            && classes > 0;
        Operands {
            pred,
            target,
            classes,
            labels,
        }
    }
}

/// The loss's value.
pub fn value<T: Real>(kind: LossKind, ops: &Operands<T>) -> Result<f64, RunError> {
    run::<T, T>(kind, ops, None)
}

/// Writes `scale` × the loss's gradient with respect to the prediction into `out` (one
/// value per prediction).
pub fn gradient<T: Real, G: Real>(
    kind: LossKind,
    ops: &Operands<T>,
    scale: f64,
    out: &mut [G],
) -> Result<(), RunError> {
    if out.len() != ops.pred.len() {
        return Err(RunError::bug(format!(
            "loss gradient has {} values for {} predictions",
            out.len(),
            ops.pred.len()
        )));
    }
    out.fill(G::of(0.0));
    run(kind, ops, Some((out, scale))).map(|_| ())
}

/// Where a gradient goes: the buffer and the factor applied to every value.
type Sink<'s, G> = Option<(&'s mut [G], f64)>;

fn put<G: Real>(sink: &mut Sink<G>, i: usize, d: f64) {
    if let Some((out, scale)) = sink {
        out[i] = G::of(d * *scale);
    }
}

fn run<T: Real, G: Real>(
    kind: LossKind,
    ops: &Operands<T>,
    mut grad: Sink<G>,
) -> Result<f64, RunError> {
    let (p, y, classes, labels) = (ops.pred, ops.target, ops.classes, ops.labels);
    let grad = &mut grad;
    Ok(match kind {
        LossKind::CrossEntropy(eps) => classify(
            p,
            y,
            classes,
            labels,
            grad,
            |lp, q, gr| {
                // −Σ q log softmax; gradient softmax·Σq − q.
                let sq: f64 = q.iter().sum();
                let mut l = 0.0;
                for j in 0..lp.len() {
                    l -= q[j] * lp[j];
                    gr[j] = lp[j].exp() * sq - q[j];
                }
                l
            },
            eps,
        )?,
        LossKind::Focal(gamma, alpha) if labels => classify(
            p,
            y,
            classes,
            true,
            grad,
            |lp, q, gr| {
                let c = q.iter().position(|&v| v > 0.5).unwrap_or(0);
                let (lt, t) = (lp[c], lp[c].exp());
                let w = (1.0 - t).max(0.0);
                let l = -alpha * w.powf(gamma) * lt;
                // dL/dz_j = t·dL/dt · (δ_jc − p_j), since dt/dz_j = t(δ_jc − p_j), and
                // t·dL/dt = −α·w^γ·(1 − γ·t·log t / w) with log t / w → −1 as w → 0:
                // no NaN for confident predictions, whatever γ.
                let ratio = if w > 0.0 { lt / w } else { -1.0 };
                let t_dldt = -alpha * w.powf(gamma) * (1.0 - gamma * t * ratio);
                for j in 0..lp.len() {
                    let delta = if j == c { 1.0 } else { 0.0 };
                    gr[j] = t_dldt * (delta - lp[j].exp());
                }
                l
            },
            0.0,
        )?,
        LossKind::Hinge if labels => classify(
            p,
            y,
            classes,
            true,
            grad,
            |lp, q, gr| {
                // PyTorch MultiMarginLoss: Σ_{j≠c} max(0, 1 − x_c + x_j) / K, on raw scores.
                let c = q.iter().position(|&v| v > 0.5).unwrap_or(0);
                let k = lp.len() as f64;
                let mut l = 0.0;
                for j in 0..lp.len() {
                    if j != c {
                        let m = 1.0 - lp[c] + lp[j];
                        if m > 0.0 {
                            l += m / k;
                            gr[j] += 1.0 / k;
                            gr[c] -= 1.0 / k;
                        }
                    }
                }
                l
            },
            f64::NAN,
        )?,
        LossKind::ZeroOne if labels => {
            let rows = p.len() / classes;
            let wrong = (0..rows)
                .filter(|&r| {
                    let row = &p[r * classes..(r + 1) * classes];
                    let best = row
                        .iter()
                        .enumerate()
                        .fold(0, |b, (j, v)| if *v > row[b] { j } else { b });
                    best as f64 != y[r].f()
                })
                .count();
            wrong as f64 / rows.max(1) as f64
        }
        _ => {
            if y.len() != p.len() {
                return Err(RunError::bug(format!(
                    "loss target has {} values for {} predictions",
                    y.len(),
                    p.len()
                )));
            }
            let n = p.len().max(1) as f64;
            let mut total = 0.0;
            for i in 0..p.len() {
                let (l, d) = elementwise_loss(kind, p[i].f(), y[i].f());
                total += l;
                put(grad, i, d / n);
            }
            total / n
        }
    })
}

/// A per-row classification loss over log-probabilities `lp` and target distribution `q`
/// (one-hot with `smoothing` for labels); the closure returns the row's loss and writes
/// ∂loss/∂logits. The mean is over rows. For hinge, `smoothing` is NaN: scores are passed raw.
fn classify<T: Real, G: Real>(
    p: &[T],
    y: &[T],
    k: usize,
    labels: bool,
    grad: &mut Sink<G>,
    row_loss: impl Fn(&[f64], &[f64], &mut [f64]) -> f64,
    smoothing: f64,
) -> Result<f64, RunError> {
    let rows = p.len() / k.max(1);
    let raw = smoothing.is_nan();
    let eps = if raw { 0.0 } else { smoothing };
    let (mut lp, mut q, mut gr) = (vec![0.0; k], vec![0.0; k], vec![0.0; k]);
    let mut total = 0.0;
    for r in 0..rows {
        let z = &p[r * k..(r + 1) * k];
        if raw {
            for (l, v) in lp.iter_mut().zip(z) {
                *l = v.f();
            }
        } else {
            let m = z.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.f()));
            let lse = m + z.iter().map(|v| (v.f() - m).exp()).sum::<f64>().ln();
            for (l, v) in lp.iter_mut().zip(z) {
                *l = v.f() - lse;
            }
        }
        if labels {
            let c = y[r].f();
            if c < 0.0 || c >= k as f64 || c.fract() != 0.0 {
                return Err(RunError::input(format!("class label {c} is not in 0..{k}")));
            }
            for (j, qj) in q.iter_mut().enumerate() {
                *qj = (1.0 - eps) * f64::from(u8::from(j == c as usize)) + eps / k as f64;
            }
        } else {
            for (qj, t) in q.iter_mut().zip(&y[r * k..(r + 1) * k]) {
                *qj = (1.0 - eps) * t.f() + eps / k as f64;
            }
        }
        gr.fill(0.0);
        total += row_loss(&lp, &q, &mut gr);
        for (j, d) in gr.iter().enumerate() {
            put(grad, r * k + j, d / rows as f64);
        }
    }
    Ok(total / rows.max(1) as f64)
}

/// Loss and derivative of one prediction `x` against target `t`.
fn elementwise_loss(kind: LossKind, x: f64, t: f64) -> (f64, f64) {
    match kind {
        LossKind::Mae => ((x - t).abs(), Func::of(Elem::Sign).apply(x - t)),
        LossKind::Mse => ((x - t).powi(2), 2.0 * (x - t)),
        LossKind::Huber(delta) => {
            let d = x - t;
            if d.abs() <= delta {
                (0.5 * d * d, d)
            } else {
                (delta * (d.abs() - 0.5 * delta), delta * d.signum())
            }
        }
        LossKind::Exponential => {
            let e = (-t * x).exp();
            (e, -t * e)
        }
        LossKind::Hinge => {
            let m = 1.0 - t * x;
            if m > 0.0 {
                (m, -t)
            } else {
                (0.0, 0.0)
            }
        }
        LossKind::Bce => {
            // max(x, 0) − x·t + log(1 + e^−|x|): stable for any x.
            let l = x.max(0.0) - x * t + (-x.abs()).exp().ln_1p();
            (l, sigmoid(x) - t)
        }
        LossKind::Focal(gamma, alpha) => {
            // torchvision's sigmoid focal loss.
            let p = sigmoid(x);
            let pt = p * t + (1.0 - p) * (1.0 - t);
            let at = alpha * t + (1.0 - alpha) * (1.0 - t);
            let log_pt = t * log_sigmoid(x) + (1.0 - t) * log_sigmoid(-x);
            let w = (1.0 - pt).max(0.0);
            let l = -at * w.powf(gamma) * log_pt;
            // d log_pt/dx = t − p; the modulating factor's derivative vanishes at w = 0.
            let dptdx = (2.0 * t - 1.0) * p * (1.0 - p);
            let modulating = if w > 0.0 {
                gamma * w.powf(gamma - 1.0) * dptdx * log_pt
            } else {
                0.0
            };
            (l, -at * (w.powf(gamma) * (t - p) - modulating))
        }
        LossKind::ZeroOne => (f64::from(u8::from((x > 0.0) != (t > 0.5))), 0.0),
        LossKind::CrossEntropy(_) => unreachable!("cross-entropy is computed per row"),
    }
}

fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}
