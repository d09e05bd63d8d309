//! GEMM dispatch: matrix products by the `gemm` crate (split in halves over two threads
//! when large, narrow outputs computed transposed), and the choice of a kernel's build
//! by the instruction sets the CPU has ([`Isa`], [`Builds`]). A leaf of the JIT: it
//! imports nothing else from it.

/// Products of at least this many multiply-adds, with both output sides at least
/// [`SPLIT_SIDE`], are computed as two halves, one per thread when there are two. Smaller
/// ones cost more to split than they save (lenet and mlp_bn_dropout ran slower on two
/// threads with 2¹⁸ and no side limit).
const SPLIT_MACS: usize = 1 << 21;
/// See [`SPLIT_MACS`].
const SPLIT_SIDE: usize = 32;

/// Outputs with fewer columns than this, at least twice as many rows, and `a` stored
/// column by column, are computed transposed (`dstᵀ = bᵀ·aᵀ`) into scratch and transposed
/// back. The `gemm` crate runs its vector lanes along the output's rows in memory, so a
/// narrow output (an LSTM's input weights' gradient, 256 × 16) would fill only 16 lanes
/// of its 64-deep AVX-512 tile (lstm training: 38.4k → 40.3k samples/s transposed).
/// Transposed, the lanes run along `a`'s columns, which the crate reads in place when
/// they are contiguous and packs into a copy otherwise; lenet's first convolution weight
/// gradient (25 × 6 over 37k-long rows) ran slower turned that way (lenet 44.2k against
/// 45.1k samples/s), hence the condition on `a`.
const NARROW: usize = 32;

/// One block of a product's output, computed on one thread: `rows × cols` of `dst` (row
/// stride `ld`) from the matching rows of `a` and columns of `b`.
struct Block {
    rows: usize,
    cols: usize,
    dst: *mut f32,
    a: *const f32,
    b: *const f32,
}

// SAFETY: a block is only sent into `rayon::join` by `gemm`, which waits for both blocks
// before returning: the pointers stay valid for the whole call, the two blocks write
// disjoint elements of the output, and both only read `a` and `b`.
unsafe impl Send for Block {}

/// `dst[m×n] = a · b` where `a` is m×k and `b` is k×n, each given as a slice with row and
/// column strides (so transposes cost nothing), computed by the `gemm` crate. Large
/// products are split into two halves of the output (along its longer side) that run on
/// two threads when `threads` > 1 and one after the other otherwise: the split does not
/// depend on the thread count, so neither do the results. Narrow outputs are computed
/// transposed ([`NARROW`]).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    threads: usize,
) {
    if n > 1 && n < NARROW && m >= 2 * n && a_rs == 1 {
        // (Transposed, the output is at least twice as wide as tall: no second turn.)
        let mut t = vec![0.0f32; m * n];
        gemm(n, m, k, &mut t, b, b_cs, b_rs, a, a_cs, a_rs, threads);
        for (j, row) in t.chunks_exact(m).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                dst[i * n + j] = v;
            }
        }
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        (rows.saturating_sub(1)) * rs + (cols.saturating_sub(1)) * cs + 1
    };
    assert!(
        dst.len() >= m * n
            && (m == 0 || k == 0 || a.len() >= last(m, k, a_rs, a_cs))
            && (k == 0 || n == 0 || b.len() >= last(k, n, b_rs, b_cs)),
        "gemm operands too short"
    );
    let whole = Block {
        rows: m,
        cols: n,
        dst: dst.as_mut_ptr(),
        a: a.as_ptr(),
        b: b.as_ptr(),
    };
    let run = |blk: Block| {
        // SAFETY: the assertion above keeps every element the strides address inside the
        // slices, and a block's rows and columns are inside the whole product's; `dst` is
        // a unique mutable borrow that cannot alias `a` or `b`.
        unsafe {
            gemm::gemm(
                blk.rows,
                blk.cols,
                k,
                blk.dst,
                1,
                n as isize,
                false,
                blk.a,
                a_cs as isize,
                a_rs as isize,
                blk.b,
                b_cs as isize,
                b_rs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    };
    if m * n * k < SPLIT_MACS || m.min(n) < SPLIT_SIDE {
        run(whole);
        return;
    }
    // The first half a multiple of 16 long, so both keep whole register tiles.
    let half = |len: usize| (len / 2).next_multiple_of(16).min(len);
    let (first, second) = if n >= m {
        let c = half(n);
        (
            Block { cols: c, ..whole },
            Block {
                cols: n - c,
                dst: whole.dst.wrapping_add(c),
                b: whole.b.wrapping_add(c * b_cs),
                ..whole
            },
        )
    } else {
        let r = half(m);
        (
            Block { rows: r, ..whole },
            Block {
                rows: m - r,
                dst: whole.dst.wrapping_add(r * n),
                a: whole.a.wrapping_add(r * a_rs),
                ..whole
            },
        )
    };
    if threads > 1 {
        rayon::join(|| run(first), || run(second));
    } else {
        run(first);
        run(second);
    }
}

/// The instruction sets a kernel is compiled for beside the baseline, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// The target's baseline (SSE2 on x86-64; every build off x86-64).
    Base,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512F with AVX2 and FMA.
    Avx512,
}

impl Isa {
    /// The widest set this CPU runs.
    pub fn detected() -> Isa {
        match x86_features() {
            (true, true) => Isa::Avx512,
            (true, false) => Isa::Avx2,
            (false, _) => Isa::Base,
        }
    }
}

/// Whether this CPU has AVX2 with FMA, and whether it has AVX-512F.
#[cfg(target_arch = "x86_64")]
fn x86_features() -> (bool, bool) {
    (
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
        std::arch::is_x86_feature_detected!("avx512f"),
    )
}

/// Off x86-64: neither.
#[cfg(not(target_arch = "x86_64"))]
fn x86_features() -> (bool, bool) {
    (false, false)
}

/// One kernel body compiled three times: `avx512` with
/// `#[target_feature(enable = "avx512f,avx2,fma")]`, `avx2` with
/// `#[target_feature(enable = "avx2,fma")]` (neither with any other requirement), and
/// `base` for the baseline.
pub struct Builds<A> {
    /// The AVX-512 build.
    pub avx512: unsafe fn(A),
    /// The AVX2 and FMA build.
    pub avx2: unsafe fn(A),
    /// The baseline build.
    pub base: fn(A),
}

impl<A> Builds<A> {
    /// Runs the widest build that this CPU runs and that is no wider than `at_most`.
    pub fn run(&self, at_most: Isa, args: A) {
        match at_most.min(Isa::detected()) {
            // SAFETY: `avx512` requires only AVX-512F, AVX2 and FMA, which `detected`
            // found on this CPU.
            Isa::Avx512 => unsafe { (self.avx512)(args) },
            // SAFETY: `avx2` requires only AVX2 and FMA, which `detected` found.
            Isa::Avx2 => unsafe { (self.avx2)(args) },
            Isa::Base => (self.base)(args),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [−1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        (0..len as u64)
            .map(|i| {
                let h = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ seed.wrapping_mul(0xBF58_476D_1CE4_E5B9);
                (h >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// `gemm` against a product summed in f64, for each layout of `a` and `b`, on one and
    /// two threads (which must agree bit for bit): narrow outputs (computed transposed),
    /// a single row or column, and products large enough to be split in halves.
    #[test]
    fn products_match_a_reference_in_every_layout() {
        let shapes = [
            (256, 16, 1024),
            (84, 10, 64),
            (128, 10, 256),
            (5, 3, 7),
            (1, 256, 64),
            (256, 1, 64),
            (40, 31, 9),
            (300, 200, 64),
        ];
        for (m, n, k) in shapes {
            let a = values(m * k, 1);
            let b = values(k * n, 2);
            for ta in [false, true] {
                for tb in [false, true] {
                    let (a_rs, a_cs) = if ta { (1, m) } else { (k, 1) };
                    let (b_rs, b_cs) = if tb { (1, k) } else { (n, 1) };
                    let mut one = vec![f32::NAN; m * n];
                    gemm(m, n, k, &mut one, &a, a_rs, a_cs, &b, b_rs, b_cs, 1);
                    for i in 0..m {
                        for j in 0..n {
                            let want: f64 = (0..k)
                                .map(|p| {
                                    f64::from(a[i * a_rs + p * a_cs])
                                        * f64::from(b[p * b_rs + j * b_cs])
                                })
                                .sum();
                            let got = f64::from(one[i * n + j]);
                            assert!(
                                (got - want).abs() <= 1e-5 * (k as f64).sqrt() * (1.0 + want.abs()),
                                "{m}×{n}×{k} ta={ta} tb={tb} at ({i}, {j}): {got} vs {want}"
                            );
                        }
                    }
                    let mut two = vec![f32::NAN; m * n];
                    gemm(m, n, k, &mut two, &a, a_rs, a_cs, &b, b_rs, b_cs, 2);
                    let same = one
                        .iter()
                        .zip(&two)
                        .all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{m}×{n}×{k} ta={ta} tb={tb}: threads disagree");
                }
            }
        }
    }
}
