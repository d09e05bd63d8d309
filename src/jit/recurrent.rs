//! The fused recurrence ([`Recurrence`]) and its VJP in f32. Per time step: one product
//! of the batch's states with `W_hh` (the `gemm` crate, on one thread, so the results do
//! not depend on the thread count), then, per batch row, short loops over the hidden
//! units for the cell equations, each over slices passed as separate arguments (so the
//! compiler knows they do not alias and vectorizes them), with branch-free sigmoid and
//! tanh. The reserve layout is [`Recurrence`]'s. Both directions are compiled three times,
//! for AVX-512 (sixteen lanes) and AVX2 (eight), both with fused multiply-adds, and for
//! the baseline, and chosen by the CPU at run time.

use super::gemm::{gemm, Builds, Isa};
use crate::interp::recurrent::steps;
use crate::ir::op::{Cell, Recurrence};

/// 1.5·2²³: adding it to an f32 below 2²² in magnitude rounds to an integer (ties to
/// even), which then sits in the low bits of the sum.
const ROUND: f32 = 12_582_912.0;

/// a·b + c, as one fused multiply-add when `FMA` (the [`builds`] with it run only where
/// the CPU has FMA), else as two operations (a fused one would be a library call).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// eˣ for x clamped to [−87.3, 88.3], as the generated code's: x = k·ln 2 + r with
/// |r| ≤ ln 2 / 2 (Cody–Waite), Cephes' degree-6 polynomial for eʳ, 2ᵏ built in the
/// exponent bits. Within 2 ulp; no branches, so loops over it vectorize.
#[inline(always)]
fn exp<const FMA: bool>(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let t = madd::<FMA>(x, std::f32::consts::LOG2_E, ROUND);
    let k = t - ROUND;
    let r = madd::<FMA>(k, -6.933_594e-1, x);
    let r = madd::<FMA>(k, 2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_6e-1,
        5.0e-1,
    ] {
        p = madd::<FMA>(p, r, c);
    }
    let y = madd::<FMA>(p, r * r, r) + 1.0;
    let bits = (t.to_bits() as i32).wrapping_sub(0x4B40_0000) + 127;
    y * f32::from_bits((bits << 23) as u32)
}

/// 1 / (1 + e⁻ˣ).
#[inline(always)]
fn sigmoid<const FMA: bool>(x: f32) -> f32 {
    1.0 / (1.0 + exp::<FMA>(-x))
}

/// Where tanh rounds to ±1 in f32.
const TANH_BOUND: f32 = 7.905_311;

/// tanh x: the odd rational minimax approximation of degrees 13/6 that Eigen, XLA and
/// ONNX Runtime's MLAS use (within 4·10⁻⁷ relative), on x clamped to ±7.905 (where tanh
/// rounds to ±1); x itself below |x| = 4·10⁻⁴. Half the work of the exp-based form.
#[inline(always)]
fn tanh<const FMA: bool>(x: f32) -> f32 {
    let c = x.clamp(-TANH_BOUND, TANH_BOUND);
    let z = c * c;
    let mut p = -2.760_768_5e-16;
    for a in [
        2.000_188e-13,
        -8.604_672e-11,
        5.122_297e-8,
        1.485_722_4e-5,
        6.372_619_3e-4,
        4.893_524_6e-3,
    ] {
        p = madd::<FMA>(p, z, a);
    }
    let mut q = 1.198_258_4e-6;
    for b in [1.185_347_1e-4, 2.268_434_6e-3, 4.893_525e-3] {
        q = madd::<FMA>(q, z, b);
    }
    // (At the bound itself the fused build rounds to a few ulp below 1.)
    if x.abs() < 4e-4 {
        x
    } else if x.abs() >= TANH_BOUND {
        1.0f32.copysign(x)
    } else {
        c * p / q
    }
}

/// Sizes of one call: batch, steps, hidden units, gate width G·H, reserve width R·H.
#[derive(Clone, Copy)]
struct Sizes {
    n: usize,
    t: usize,
    h: usize,
    gh: usize,
    rw: usize,
}

impl Sizes {
    fn new(r: &Recurrence, dims: &[usize]) -> Sizes {
        Sizes {
            n: dims[0],
            t: dims[1],
            h: r.hidden,
            gh: r.cell.gates() * r.hidden,
            rw: r.cell.reserve() * r.hidden,
        }
    }
}

/// The reserve `out` `[N, T, R·H]` of the recurrence over `xw` `[N, T, G·H]` (dims `xd`)
/// with `w_hh` `[G·H, H]` and `b_hh`.
pub fn forward(
    r: &Recurrence,
    xd: &[usize],
    xw: &[f32],
    w_hh: &[f32],
    b_hh: &[f32],
    out: &mut [f32],
) {
    builds().run(Isa::Avx512, (Pass::Forward, (r, xd, xw, w_hh, b_hh, out)));
}

/// The operands of [`forward`] and of [`backward`].
type Operands<'a> = (
    &'a Recurrence,
    &'a [usize],
    &'a [f32],
    &'a [f32],
    &'a [f32],
    &'a mut [f32],
);

/// Which kernel a build runs.
#[derive(Clone, Copy)]
enum Pass {
    Forward,
    Backward,
}

#[inline(always)]
fn run<const FMA: bool>(pass: Pass, args: Operands) {
    match pass {
        Pass::Forward => forward_body::<FMA>(args),
        Pass::Backward => backward_body::<FMA>(args),
    }
}

/// Both kernels' builds: AVX-512 (sixteen lanes), AVX2 (eight), both with fused
/// multiply-adds, and the baseline.
fn builds<'a>() -> Builds<(Pass, Operands<'a>)> {
    Builds {
        avx512: run_avx512,
        avx2: run_avx2,
        base: run_base,
    }
}

#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx2,fma"))]
fn run_avx512((pass, args): (Pass, Operands)) {
    run::<true>(pass, args);
}

#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
fn run_avx2((pass, args): (Pass, Operands)) {
    run::<true>(pass, args);
}

fn run_base((pass, args): (Pass, Operands)) {
    run::<false>(pass, args);
}

#[inline(always)]
fn forward_body<const FMA: bool>((r, xd, xw, w_hh, b_hh, out): Operands) {
    let Sizes { n, t, h, gh, rw } = Sizes::new(r, xd);
    // h_prev·W_hhᵀ of every row, and the state (h, c) between steps.
    let mut gates = vec![0.0f32; n * gh];
    let mut hs = vec![0.0f32; n * h];
    let mut cs = vec![0.0f32; n * h];
    // W_hhᵀ `[H, G·H]` row-major: the GEMM is faster on it than on W_hh's transposed
    // view (lstm training: 42.3k against 38.1k samples/s with the AVX-512 kernels; a
    // quarter faster with the AVX2 ones). A single row (batch 1) is a matrix-vector
    // product, faster on W_hh as it is: the `gemm` crate then takes dot products of its
    // rows, where on W_hhᵀ it would add one scaled row at a time into the output, each
    // addition reading back the last one's stores (lstm inference at batch 1: 23k → 32k
    // samples/s with AVX-512).
    let one_row = n == 1;
    let mut wt = vec![0.0f32; if t > 1 && !one_row { gh * h } else { 0 }];
    if !wt.is_empty() {
        transpose(w_hh, gh, h, &mut wt);
    }
    let (wb, wb_rs, wb_cs) = if one_row {
        (w_hh, 1, h)
    } else {
        (&wt[..], gh, 1)
    };
    for (s, step) in steps(t, r.reverse).into_iter().enumerate() {
        if s > 0 {
            // (The state is zero before the first step.)
            gemm(n, gh, h, &mut gates, &hs, h, 1, wb, wb_rs, wb_cs, 1);
        }
        for b in 0..n {
            let at = (b * t + step) * gh;
            let row = Row {
                x: &xw[at..at + gh],
                hh: &gates[b * gh..(b + 1) * gh],
                bias: b_hh,
            };
            let o = &mut out[(b * t + step) * rw..][..rw];
            let hp = &mut hs[b * h..(b + 1) * h];
            let cp = &mut cs[b * h..(b + 1) * h];
            cell_forward::<FMA>(r.cell, h, &row, o, hp, cp);
        }
    }
}

/// `out` `[cols, rows]` = `a` `[rows, cols]` transposed, in bands of 16 rows: a band's
/// 16 lines of `a` stay in L1 while each column of it becomes one line of `out`. (Read
/// down whole columns, the 256-byte stride of the recurrent weights maps every line to
/// a quarter of L1's sets, which thrash.)
#[inline(always)]
fn transpose(a: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    const BAND: usize = 16;
    for r0 in (0..rows).step_by(BAND) {
        let band = &a[r0 * cols..(r0 + BAND).min(rows) * cols];
        for (c, column) in out.chunks_exact_mut(rows).enumerate() {
            for (o, row) in column[r0..].iter_mut().zip(band.chunks_exact(cols)) {
                *o = row[c];
            }
        }
    }
}

/// The pre-activations of one row of one step: `x + hh + bias`, each `[G·H]`.
struct Row<'a> {
    x: &'a [f32],
    hh: &'a [f32],
    bias: &'a [f32],
}

/// `out = f(a + b + c)` elementwise. Each loop of the cells reads and writes separate
/// slices given as arguments, so the compiler knows they do not alias and vectorizes it.
#[inline(always)]
fn map3(out: &mut [f32], a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32) -> f32) {
    for (((o, &x), &y), &z) in out.iter_mut().zip(a).zip(b).zip(c) {
        *o = f(x + y + z);
    }
}

/// The K consecutive blocks of `h` elements of `s`.
#[inline(always)]
fn blocks<const K: usize>(s: &mut [f32], h: usize) -> [&mut [f32]; K] {
    let mut it = s.chunks_exact_mut(h);
    std::array::from_fn(|_| it.next().expect("a block per gate"))
}

/// Read-only [`blocks`].
#[inline(always)]
fn parts<const K: usize>(s: &[f32], h: usize) -> [&[f32]; K] {
    let mut it = s.chunks_exact(h);
    std::array::from_fn(|_| it.next().expect("a block per gate"))
}

/// One row of one step: its pre-activations and the state `hp`, `cp` before the step
/// (replaced by the one after it) → the step's reserve `o`.
#[inline(always)]
fn cell_forward<const FMA: bool>(
    cell: Cell,
    h: usize,
    row: &Row,
    o: &mut [f32],
    hp: &mut [f32],
    cp: &mut [f32],
) {
    match cell {
        Cell::RnnTanh | Cell::RnnRelu => {
            let [oh, ohp] = blocks(o, h);
            ohp.copy_from_slice(hp);
            if cell == Cell::RnnRelu {
                map3(oh, row.x, row.hh, row.bias, |z| z.max(0.0));
            } else {
                map3(oh, row.x, row.hh, row.bias, tanh::<FMA>);
            }
            hp.copy_from_slice(oh);
        }
        Cell::Lstm => {
            let [oh, ohp, oc, oi, of, og, oo] = blocks(o, h);
            let [xi, xf, xg, xo] = parts(row.x, h);
            let [hi, hf, hg, ho] = parts(row.hh, h);
            let [bi, bf, bg, bo] = parts(row.bias, h);
            ohp.copy_from_slice(hp);
            map3(oi, xi, hi, bi, sigmoid::<FMA>);
            map3(of, xf, hf, bf, sigmoid::<FMA>);
            map3(og, xg, hg, bg, tanh::<FMA>);
            map3(oo, xo, ho, bo, sigmoid::<FMA>);
            lstm_state(oc, of, cp, oi, og);
            cp.copy_from_slice(oc);
            lstm_output::<FMA>(oh, oo, oc);
            hp.copy_from_slice(oh);
        }
        Cell::Gru => {
            let [oh, ohp, or, oz, on, ohn] = blocks(o, h);
            let [xr, xz, xn] = parts(row.x, h);
            let [hr, hz, hn] = parts(row.hh, h);
            let [br, bz, bn] = parts(row.bias, h);
            ohp.copy_from_slice(hp);
            map3(or, xr, hr, br, sigmoid::<FMA>);
            map3(oz, xz, hz, bz, sigmoid::<FMA>);
            for ((o, &a), &b) in ohn.iter_mut().zip(hn).zip(bn) {
                *o = a + b;
            }
            gru_candidate::<FMA>(on, xn, or, ohn);
            gru_state(oh, on, oz, hp);
            hp.copy_from_slice(oh);
        }
    }
}

/// c = f·c_prev + i·g.
#[inline(always)]
fn lstm_state(c: &mut [f32], f: &[f32], cp: &[f32], i: &[f32], g: &[f32]) {
    for ((((c, &f), &cp), &i), &g) in c.iter_mut().zip(f).zip(cp).zip(i).zip(g) {
        *c = f * cp + i * g;
    }
}

/// h = o·tanh(c).
#[inline(always)]
fn lstm_output<const FMA: bool>(h: &mut [f32], o: &[f32], c: &[f32]) {
    for ((h, &o), &c) in h.iter_mut().zip(o).zip(c) {
        *h = o * tanh::<FMA>(c);
    }
}

/// n = tanh(xₙ + r·hn).
#[inline(always)]
fn gru_candidate<const FMA: bool>(n: &mut [f32], xn: &[f32], r: &[f32], hn: &[f32]) {
    for (((n, &x), &r), &hn) in n.iter_mut().zip(xn).zip(r).zip(hn) {
        *n = tanh::<FMA>(madd::<FMA>(r, hn, x));
    }
}

/// h = n + z·(h_prev − n).
#[inline(always)]
fn gru_state(h: &mut [f32], n: &[f32], z: &[f32], hp: &[f32]) {
    for (((h, &n), &z), &hp) in h.iter_mut().zip(n).zip(z).zip(hp) {
        *h = n + z * (hp - n);
    }
}

/// The gradient of the gate pre-activations `out` (dims `od`, `[N, T, S·G·H]`) from the
/// `reserve`, `w_hh` and the reserve's gradient `g`: backpropagation through time.
pub fn backward(
    r: &Recurrence,
    od: &[usize],
    reserve: &[f32],
    w_hh: &[f32],
    g: &[f32],
    out: &mut [f32],
) {
    builds().run(
        Isa::Avx512,
        (Pass::Backward, (r, od, reserve, w_hh, g, out)),
    );
}

#[inline(always)]
fn backward_body<const FMA: bool>((r, od, reserve, w_hh, g, out): Operands) {
    let Sizes { n, t, h, gh, rw } = Sizes::new(r, od);
    let ow = od[2];
    let side = (r.cell.grad_sides() - 1) * gh;
    // ∂/∂(h, c) handed back from the later step, and h_prev's gradient other than
    // through the product.
    let mut carry_h = vec![0.0f32; n * h];
    let mut carry_c = vec![0.0f32; n * h];
    let mut direct = vec![0.0f32; n * h];
    let zeros = vec![0.0f32; h];
    let mut tmp = vec![0.0f32; 2 * h];
    // The gradient's width: the whole reserve's, or the h block's (the rest zero: a
    // step's row is then copied into the start of `wide`, whose other blocks stay zero).
    let gw = g.len().checked_div(n * t).unwrap_or(rw);
    let mut wide = vec![0.0f32; if gw < rw { rw } else { 0 }];
    let order = steps(t, r.reverse);
    for (s, &step) in order.iter().enumerate().rev() {
        for b in 0..n {
            let gs = &g[(b * t + step) * gw..][..gw];
            let gs = if gw < rw {
                wide[..gw].copy_from_slice(gs);
                &wide[..]
            } else {
                gs
            };
            // The cell state before the step (an LSTM's).
            let cp = match s {
                0 => &zeros[..],
                _ if r.cell != Cell::Lstm => &zeros[..],
                _ => &reserve[(b * t + order[s - 1]) * rw + 2 * h..][..h],
            };
            let row = Back {
                o: &reserve[(b * t + step) * rw..][..rw],
                g: gs,
                ch: &carry_h[b * h..(b + 1) * h],
                cp,
            };
            let d = &mut out[(b * t + step) * ow..][..ow];
            let cc = &mut carry_c[b * h..(b + 1) * h];
            let dp = &mut direct[b * h..(b + 1) * h];
            cell_backward::<FMA>(r.cell, h, &row, [d, cc, dp, &mut tmp]);
        }
        if s == 0 {
            break;
        }
        // ∂/∂h_prev = (hidden side)·W_hh + the direct part; the step's rows are T·S·G·H
        // apart.
        let a = &out[step * ow + side..];
        gemm(n, h, gh, &mut carry_h, a, t * ow, 1, w_hh, h, 1, 1);
        for (c, dv) in carry_h.iter_mut().zip(&direct) {
            *c += dv;
        }
    }
}

/// What one row of one step backwards reads: its reserve `o`, the reserve's gradient
/// `g`, the gradient `ch` of the state it handed to the next step, and the cell state
/// `cp` before it.
struct Back<'a> {
    o: &'a [f32],
    g: &'a [f32],
    ch: &'a [f32],
    cp: &'a [f32],
}

/// One row of one step backwards → the pre-activations' gradient `d`; `cc` (the cell
/// state's carried gradient) is updated, `dp` set to h_prev's gradient other than
/// through h_prev·W_hhᵀ; `tmp` is scratch of 2·H.
#[inline(always)]
fn cell_backward<const FMA: bool>(
    cell: Cell,
    h: usize,
    row: &Back,
    [d, cc, dp, tmp]: [&mut [f32]; 4],
) {
    let (dh, dc) = tmp.split_at_mut(h);
    let gs = row.g;
    add(dh, &gs[..h], row.ch);
    match cell {
        Cell::RnnTanh => {
            tanh_back(d, dh, &row.o[..h]);
            dp.copy_from_slice(&gs[h..2 * h]);
        }
        Cell::RnnRelu => {
            relu_back(d, dh, &row.o[..h]);
            dp.copy_from_slice(&gs[h..2 * h]);
        }
        Cell::Lstm => {
            let [_, _, c, i, f, g, o] = parts(row.o, h);
            let [_, ghp, gc, gi, gf, gg, go] = parts(gs, h);
            let [di, df, dg, dout] = blocks(d, h);
            lstm_cell_back::<FMA>(dc, dout, dh, c, o, gc, go, cc);
            lstm_gate_back(di, dc, g, gi, i, true);
            lstm_gate_back(df, dc, row.cp, gf, f, true);
            lstm_gate_back(dg, dc, i, gg, g, false);
            for ((c, &d), &f) in cc.iter_mut().zip(&*dc).zip(f) {
                *c = d * f;
            }
            dp.copy_from_slice(ghp);
        }
        Cell::Gru => {
            let [_, hp, r, z, n, hn] = parts(row.o, h);
            let [_, ghp, gr, gz, gn, ghn] = parts(gs, h);
            let [dxr, dxz, dxn, dhr, dhz, dhn] = blocks(d, h);
            gru_back_n(dxn, dh, z, n, gn);
            gru_back_z(dxz, dp, dh, hp, z, n, gz, ghp);
            gru_back_r(dxr, dhn, dxn, hn, r, gr, ghn);
            dhr.copy_from_slice(dxr);
            dhz.copy_from_slice(dxz);
        }
    }
}

/// out = a + b.
#[inline(always)]
fn add(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = a + b;
    }
}

/// dz = dh·(1 − y²) for y = tanh z.
#[inline(always)]
fn tanh_back(dz: &mut [f32], dh: &[f32], y: &[f32]) {
    for ((d, &g), &y) in dz.iter_mut().zip(dh).zip(y) {
        *d = g * (1.0 - y * y);
    }
}

/// dz = dh where y = relu z > 0, else 0.
#[inline(always)]
fn relu_back(dz: &mut [f32], dh: &[f32], y: &[f32]) {
    for ((d, &g), &y) in dz.iter_mut().zip(dh).zip(y) {
        *d = if y > 0.0 { g } else { 0.0 };
    }
}

/// The LSTM's output side: dc = dh·o·(1 − tanh²c) + gc + cc (the gradient of c from
/// its reserve block and from the next step), and o's pre-activation gradient
/// dout = (dh·tanh c + go)·o·(1 − o).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn lstm_cell_back<const FMA: bool>(
    dc: &mut [f32],
    dout: &mut [f32],
    dh: &[f32],
    c: &[f32],
    o: &[f32],
    gc: &[f32],
    go: &[f32],
    cc: &[f32],
) {
    let len = dc.len();
    let (dout, dh, c, o) = (&mut dout[..len], &dh[..len], &c[..len], &o[..len]);
    let (gc, go, cc) = (&gc[..len], &go[..len], &cc[..len]);
    for k in 0..len {
        let tc = tanh::<FMA>(c[k]);
        dc[k] = dh[k] * o[k] * (1.0 - tc * tc) + gc[k] + cc[k];
        dout[k] = (dh[k] * tc + go[k]) * o[k] * (1.0 - o[k]);
    }
}

/// An LSTM gate's pre-activation gradient: (dc·other + grad)·σ'(y) for a sigmoid gate
/// of value `y`, else ·tanh'(y) (the g gate); `other` is the gate's factor in c and
/// `grad` its reserve block's gradient.
#[inline(always)]
fn lstm_gate_back(
    d: &mut [f32],
    dc: &[f32],
    other: &[f32],
    grad: &[f32],
    y: &[f32],
    sigmoid: bool,
) {
    let len = d.len();
    let (dc, other, grad, y) = (&dc[..len], &other[..len], &grad[..len], &y[..len]);
    if sigmoid {
        for k in 0..len {
            d[k] = (dc[k] * other[k] + grad[k]) * y[k] * (1.0 - y[k]);
        }
    } else {
        for k in 0..len {
            d[k] = (dc[k] * other[k] + grad[k]) * (1.0 - y[k] * y[k]);
        }
    }
}

/// The GRU's n pre-activation gradient: (dh·(1 − z) + gn)·(1 − n²).
#[inline(always)]
fn gru_back_n(dn: &mut [f32], dh: &[f32], z: &[f32], n: &[f32], gn: &[f32]) {
    let len = dn.len();
    let (dh, z, n, gn) = (&dh[..len], &z[..len], &n[..len], &gn[..len]);
    for k in 0..len {
        dn[k] = (dh[k] * (1.0 - z[k]) + gn[k]) * (1.0 - n[k] * n[k]);
    }
}

/// The GRU's z pre-activation gradient and h_prev's direct one (through
/// h = n + z·(h_prev − n), and its reserve block).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gru_back_z(
    dz: &mut [f32],
    dp: &mut [f32],
    dh: &[f32],
    hp: &[f32],
    z: &[f32],
    n: &[f32],
    gz: &[f32],
    ghp: &[f32],
) {
    let len = dz.len();
    let dp = &mut dp[..len];
    let (dh, hp, z, n, gz, ghp) = (
        &dh[..len],
        &hp[..len],
        &z[..len],
        &n[..len],
        &gz[..len],
        &ghp[..len],
    );
    for k in 0..len {
        dz[k] = (dh[k] * (hp[k] - n[k]) + gz[k]) * z[k] * (1.0 - z[k]);
        dp[k] = ghp[k] + dh[k] * z[k];
    }
}

/// The GRU's r pre-activation gradient and that of hn (n's hidden side), from n's.
#[inline(always)]
fn gru_back_r(
    dr: &mut [f32],
    dhn: &mut [f32],
    dn: &[f32],
    hn: &[f32],
    r: &[f32],
    gr: &[f32],
    ghn: &[f32],
) {
    let len = dr.len();
    let dhn = &mut dhn[..len];
    let (dn, hn, r, gr, ghn) = (&dn[..len], &hn[..len], &r[..len], &gr[..len], &ghn[..len]);
    for k in 0..len {
        dr[k] = (dn[k] * hn[k] + gr[k]) * r[k] * (1.0 - r[k]);
        dhn[k] = dn[k] * r[k] + ghn[k];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::recurrent as reference;
    use ndarray::{ArrayD, IxDyn};

    /// Deterministic values in [−1.5, 1.5).
    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 3000) as f32 / 1000.0 - 1.5
            })
            .collect()
    }

    fn arr(d: &[usize], v: &[f32]) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(d), v.to_vec()).expect("sized")
    }

    fn close(what: &str, a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let tol = 2e-5 * x.abs().max(y.abs()).max(1.0);
            assert!(
                (x - y).abs() <= tol,
                "{what}[{i}]: kernel {x} vs reference {y}"
            );
        }
    }

    /// The builds narrower than the widest this CPU runs.
    fn narrower() -> Vec<Isa> {
        [Isa::Base, Isa::Avx2]
            .into_iter()
            .filter(|&isa| isa < Isa::detected())
            .collect()
    }

    #[test]
    fn kernels_match_the_reference() {
        let cells = [Cell::RnnTanh, Cell::RnnRelu, Cell::Lstm, Cell::Gru];
        for (seed, (cell, n, t, h)) in cells
            .iter()
            .flat_map(|&c| [(c, 1, 3, 5), (c, 7, 4, 9), (c, 2, 1, 3)])
            .enumerate()
        {
            for reverse in [false, true] {
                let r = Recurrence {
                    cell,
                    hidden: h,
                    reverse,
                };
                let (gh, rw) = (cell.gates() * h, cell.reserve() * h);
                let ow = cell.grad_sides() * gh;
                let xw = values(n * t * gh, seed as u32);
                let w: Vec<f32> = values(gh * h, 100 + seed as u32);
                let bias = values(gh, 200 + seed as u32);
                let g = values(n * t * rw, 300 + seed as u32);
                let mut res = vec![0.0f32; n * t * rw];
                forward(&r, &[n, t, gh], &xw, &w, &bias, &mut res);
                let want = reference::recurrence::<f32>(
                    &arr(&[n, t, gh], &xw),
                    &arr(&[gh, h], &w),
                    &arr(&[gh], &bias),
                    &[n, t, rw],
                    &r,
                )
                .expect("runs");
                let what = format!("{r} n={n} t={t}");
                close(&what, &res, want.as_slice().expect("contiguous"));
                // The narrower builds too (the dispatch above picks the widest).
                for isa in narrower() {
                    let mut o = vec![0.0f32; n * t * rw];
                    let args = (&r, &[n, t, gh][..], &xw[..], &w[..], &bias[..], &mut o[..]);
                    builds().run(isa, (Pass::Forward, args));
                    close(&format!("{what} {isa:?}"), &o, &res);
                }
                // The gradient for `gr` (width `gw`) against the reference's.
                let grad = |gr: &[f32], gw: usize, what: &str| {
                    let mut d = vec![0.0f32; n * t * ow];
                    backward(&r, &[n, t, ow], &res, &w, gr, &mut d);
                    let want = reference::recurrence_grad::<f32>(
                        &arr(&[n, t, rw], &res),
                        &arr(&[gh, h], &w),
                        &arr(&[n, t, gw], gr),
                        &[n, t, ow],
                        &r,
                    )
                    .expect("runs");
                    close(what, &d, want.as_slice().expect("contiguous"));
                    d
                };
                let d = grad(&g, rw, &format!("{what} grad"));
                for isa in narrower() {
                    let mut o = vec![0.0f32; n * t * ow];
                    let args = (&r, &[n, t, ow][..], &res[..], &w[..], &g[..], &mut o[..]);
                    builds().run(isa, (Pass::Backward, args));
                    close(&format!("{what} {isa:?} grad"), &o, &d);
                }
                // The h block's gradient alone: as the reserve's with zeros elsewhere.
                let g_h = values(n * t * h, 400 + seed as u32);
                let mut padded = vec![0.0f32; n * t * rw];
                for (row, src) in padded.chunks_exact_mut(rw).zip(g_h.chunks_exact(h)) {
                    row[..h].copy_from_slice(src);
                }
                let d_h = grad(&g_h, h, &format!("{what} h block's gradient"));
                let d_padded = grad(&padded, rw, &format!("{what} padded gradient"));
                assert_eq!(d_h, d_padded, "{what}: h block's gradient");
            }
        }
    }

    #[test]
    fn exp_sigmoid_and_tanh_are_accurate() {
        accurate::<false>();
        accurate::<true>();
    }

    /// Both builds (with and without fused multiply-adds) of exp, sigmoid and tanh.
    fn accurate<const FMA: bool>() {
        let rel = |got: f32, want: f64| (f64::from(got) - want).abs() / want.abs().max(1e-30);
        let (exp, sigmoid, tanh) = (exp::<FMA>, sigmoid::<FMA>, tanh::<FMA>);
        for i in -20000..=20000 {
            let x = i as f32 * 0.001;
            let e = exp(x);
            assert!(rel(e, f64::from(x).exp()) < 3e-7, "exp({x}) = {e}");
            let s = sigmoid(x);
            let want = 1.0 / (1.0 + (-f64::from(x)).exp());
            assert!(rel(s, want) < 5e-7, "sigmoid({x}) = {s}");
            let th = tanh(x);
            assert!(rel(th, f64::from(x).tanh()) < 4e-7, "tanh({x}) = {th}");
        }
        for x in [1e-30f32, 1e-6, 3.9e-4, 4.1e-4] {
            assert!(rel(tanh(x), f64::from(x).tanh()) < 4e-7, "tanh({x})");
            assert_eq!(tanh(-x), -tanh(x));
        }
        assert_eq!(exp(-200.0), exp(-87.3));
        assert_eq!((tanh(30.0), tanh(-30.0)), (1.0, -1.0));
        assert_eq!((sigmoid(100.0), sigmoid(-100.0) > 0.0), (1.0, true));
    }
}
