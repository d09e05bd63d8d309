//! The reference implementation of the fused recurrence and its VJP (backpropagation
//! through time): PyTorch's cell equations written per batch row and time step, in f64.
//! The reserve layout is [`Recurrence`]'s.

use super::{sigmoid, Real, RunError};
use crate::ir::op::{Cell, Recurrence};
use ndarray::{ArrayD, IxDyn};

fn values<T: Real>(a: &ArrayD<T>) -> Vec<f64> {
    a.iter().map(|v| v.f()).collect()
}

fn array<T: Real>(out: &[usize], acc: Vec<f64>) -> Result<ArrayD<T>, RunError> {
    ArrayD::from_shape_vec(IxDyn(out), acc.into_iter().map(T::of).collect())
        .map_err(|e| RunError::bug(e.to_string()))
}

/// The time steps of `t` in the order a direction runs them.
pub fn steps(t: usize, reverse: bool) -> Vec<usize> {
    if reverse {
        (0..t).rev().collect()
    } else {
        (0..t).collect()
    }
}

/// `recurrence(xw, w_hh, b_hh)`: the reserve, dims `out` `[N, T, R·H]`.
pub fn recurrence<T: Real>(
    xw: &ArrayD<T>,
    w_hh: &ArrayD<T>,
    b_hh: &ArrayD<T>,
    out: &[usize],
    r: &Recurrence,
) -> Result<ArrayD<T>, RunError> {
    let (n, t, h) = (out[0], out[1], r.hidden);
    let (gh, rw) = (r.cell.gates() * h, r.cell.reserve() * h);
    let (xw, w, bias) = (values(xw), values(w_hh), values(b_hh));
    let mut res = vec![0.0f64; n * t * rw];
    for b in 0..n {
        let mut hp = vec![0.0f64; h];
        let mut cp = vec![0.0f64; h];
        for step in steps(t, r.reverse) {
            let x = &xw[(b * t + step) * gh..][..gh];
            // h_prev·W_hhᵀ + b_hh
            let hh: Vec<f64> = (0..gh)
                .map(|j| bias[j] + (0..h).map(|k| w[j * h + k] * hp[k]).sum::<f64>())
                .collect();
            let o = &mut res[(b * t + step) * rw..][..rw];
            o[h..2 * h].copy_from_slice(&hp);
            for k in 0..h {
                let pre = |gate: usize| x[gate * h + k] + hh[gate * h + k];
                match r.cell {
                    Cell::RnnTanh => o[k] = pre(0).tanh(),
                    Cell::RnnRelu => o[k] = pre(0).max(0.0),
                    Cell::Lstm => {
                        let (i, f, g, og) = (
                            sigmoid(pre(0)),
                            sigmoid(pre(1)),
                            pre(2).tanh(),
                            sigmoid(pre(3)),
                        );
                        let c = f * cp[k] + i * g;
                        o[k] = og * c.tanh();
                        for (slot, v) in [c, i, f, g, og].into_iter().enumerate() {
                            o[(2 + slot) * h + k] = v;
                        }
                    }
                    Cell::Gru => {
                        let (rg, z) = (sigmoid(pre(0)), sigmoid(pre(1)));
                        let hn = hh[2 * h + k];
                        let nn = (x[2 * h + k] + rg * hn).tanh();
                        o[k] = (1.0 - z) * nn + z * hp[k];
                        for (slot, v) in [rg, z, nn, hn].into_iter().enumerate() {
                            o[(2 + slot) * h + k] = v;
                        }
                    }
                }
            }
            hp.copy_from_slice(&o[..h]);
            if r.cell == Cell::Lstm {
                cp.copy_from_slice(&o[2 * h..3 * h]);
            }
        }
    }
    array(out, res)
}

/// The recurrence's VJP: `reserve`, `w_hh` and the reserve's gradient `g` give the gate
/// pre-activations' gradient, dims `out` `[N, T, S·G·H]`.
pub fn recurrence_grad<T: Real>(
    reserve: &ArrayD<T>,
    w_hh: &ArrayD<T>,
    g: &ArrayD<T>,
    out: &[usize],
    r: &Recurrence,
) -> Result<ArrayD<T>, RunError> {
    let (n, t, h) = (out[0], out[1], r.hidden);
    let (gh, rw, ow) = (r.cell.gates() * h, r.cell.reserve() * h, out[2]);
    // The gradient's width: the whole reserve's, or the h block's (the rest zero).
    let gw = g.shape().get(2).copied().unwrap_or(rw);
    // Where the hidden side's gradient starts in a step's output.
    let side = (r.cell.grad_sides() - 1) * gh;
    let (res, w, gr) = (values(reserve), values(w_hh), values(g));
    let mut acc = vec![0.0f64; n * t * ow];
    let order = steps(t, r.reverse);
    for b in 0..n {
        // ∂/∂h and ∂/∂c of the state a step hands to the next one.
        let mut carry_h = vec![0.0f64; h];
        let mut carry_c = vec![0.0f64; h];
        for (s, &step) in order.iter().enumerate().rev() {
            let o = &res[(b * t + step) * rw..][..rw];
            let gs = &gr[(b * t + step) * gw..][..gw];
            let d = &mut acc[(b * t + step) * ow..][..ow];
            let gat = |slot: usize, k: usize| gs.get(slot * h + k).copied().unwrap_or(0.0);
            // ∂/∂h_prev other than through h_prev·W_hhᵀ.
            let mut direct: Vec<f64> = (0..h).map(|k| gat(1, k)).collect();
            for k in 0..h {
                let dh = gs[k] + carry_h[k];
                let at = |slot: usize| o[slot * h + k];
                let gat = |slot: usize| gat(slot, k);
                match r.cell {
                    Cell::RnnTanh => d[k] = dh * (1.0 - at(0) * at(0)),
                    Cell::RnnRelu => d[k] = if at(0) > 0.0 { dh } else { 0.0 },
                    Cell::Lstm => {
                        let (c, i, f, g, og) = (at(2), at(3), at(4), at(5), at(6));
                        let cp = match s {
                            0 => 0.0,
                            _ => res[(b * t + order[s - 1]) * rw + 2 * h + k],
                        };
                        let tc = c.tanh();
                        let dc = dh * og * (1.0 - tc * tc) + gat(2) + carry_c[k];
                        let (di, df) = (dc * g + gat(3), dc * cp + gat(4));
                        let (dg, dog) = (dc * i + gat(5), dh * tc + gat(6));
                        d[k] = di * i * (1.0 - i);
                        d[h + k] = df * f * (1.0 - f);
                        d[2 * h + k] = dg * (1.0 - g * g);
                        d[3 * h + k] = dog * og * (1.0 - og);
                        carry_c[k] = dc * f;
                    }
                    Cell::Gru => {
                        let (hp, rg, z, nn, hn) = (at(1), at(2), at(3), at(4), at(5));
                        let dn = dh * (1.0 - z) + gat(4);
                        let dz = dh * (hp - nn) + gat(3);
                        direct[k] += dh * z;
                        let dnp = dn * (1.0 - nn * nn);
                        let dr = dnp * hn + gat(2);
                        let dhn = dnp * rg + gat(5);
                        d[k] = dr * rg * (1.0 - rg);
                        d[h + k] = dz * z * (1.0 - z);
                        d[2 * h + k] = dnp;
                        d[gh + k] = d[k];
                        d[gh + h + k] = d[h + k];
                        d[gh + 2 * h + k] = dhn;
                    }
                }
            }
            // ∂/∂h_prev = (hidden-side gradient)·W_hh + the direct part.
            for (k, ch) in carry_h.iter_mut().enumerate() {
                *ch = direct[k] + (0..gh).map(|j| d[side + j] * w[j * h + k]).sum::<f64>();
            }
        }
    }
    array(out, acc)
}
