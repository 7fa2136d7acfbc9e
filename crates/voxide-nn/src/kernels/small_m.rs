//! Narrow-weight products for more rows of x than the GEMV takes (a streaming encoder chunk, a
//! decoder prefill, a whole encoder window): y[m][n] = Σ_k x[m][k] · w[n][k] (+ bias), w in
//! f16, bf16 or int8, without converting the whole matrix to f32 first.
//!
//! Tasks own tiles of 64 output rows (on one thread too). A task widens [`Simd::NR`] weight
//! rows (one block of columns at a time) into a small f32 buffer, so each weight is read from
//! DRAM once and widened once per panel of 64 x rows, then runs a register-blocked
//! micro-kernel of [`Simd::MR`] x rows × [`Simd::NR`] weight rows (4 × 4 on AVX-512: 16
//! accumulators, 8 loads per 16 FMAs) over the panel from that buffer (L1-resident). The
//! column blocks (≤ 2048) keep the x panel in L2 and the tile's weights stay in L2 across
//! panels. It beats widening the matrix for candle's f32 GEMM at every size measured.

use super::convert::convert_row;
use super::gemv::{check_operands, OutPtr, WeightMatrix};
use super::simd::{isa_entries, Isa, Simd, WeightElem};
use rayon::prelude::*;

/// Most rows of x the dispatch in [`crate::Linear`] sends here; beyond, the weight is widened
/// to f32 for one candle GEMM. With AVX-512's 32 registers (4 × 4 register block) measured
/// (PERFORMANCE.md #21–23) faster than widen + GEMM at every size tried, m = 9…1500 on Voxtral
/// and Whisper shapes, 1 and 2 threads (1.1–2.4×; it also allocates no f32 copy of the weight);
/// the cap only keeps untried sizes on the GEMM.
pub const SMALL_M_MAX_ROWS: usize = 4096;

/// The cap on an instruction set whose register block is small (AVX2's 16 registers hold a
/// 4 × 2 block: 6 loads per 8 FMAs): measured on AMD EPYC Zen 3, 2 threads, f16 Whisper shapes,
/// small-M is faster at m = 64 (1.1–1.3×), even at m = 256 and slower at m = 1500 (62–90
/// against 91–134 GFLOP/s for widen + GEMM; PERFORMANCE.md #38).
const SMALL_BLOCK_MAX_ROWS: usize = 128;

/// Most rows of x the small-M kernel takes on this CPU (see [`SMALL_M_MAX_ROWS`]).
pub fn small_m_max_rows() -> usize {
    match Isa::detect() {
        Isa::Avx2 => SMALL_BLOCK_MAX_ROWS,
        Isa::Avx512 | Isa::Neon | Isa::Scalar => SMALL_M_MAX_ROWS,
    }
}

/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// Widest column block; wider matrices are cut into equal blocks (x panel ≤ 512 KB at m = 64).
const MAX_BLOCK: usize = 2048;

/// Rows of x per panel (x panel ≤ 512 KB in L2 with the widest block).
const PANEL_ROWS: usize = 64;

/// Below this many multiply-adds the product runs on one thread.
const PARALLEL_MIN_MACS: usize = 1 << 21;

/// y (m × n) = x (m × k) · wᵀ (+ bias), on the best instruction set of this CPU. Any m works;
/// for m ≤ [`super::gemv::MAX_ROWS`] the GEMV is faster.
pub fn matmul_small<E: WeightElem>(
    x: &[f32],
    w: &WeightMatrix<E>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    matmul_small_on(Isa::detect(), x, w, bias, y, m)
}

/// [`matmul_small`] on a given instruction set (panics if this CPU lacks it).
pub fn matmul_small_on<E: WeightElem>(
    isa: Isa,
    x: &[f32],
    w: &WeightMatrix<E>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    let (n, k) = (w.rows, w.cols);
    check_operands(x, w, bias, y, m);
    if m == 0 || n == 0 {
        return;
    }
    let block = if k <= MAX_BLOCK {
        k
    } else {
        k.div_ceil(k.div_ceil(MAX_BLOCK)).next_multiple_of(64)
    };
    let out = OutPtr(y.as_mut_ptr());
    // Tiles of output rows even on one thread: the tile's weights stay in L2 across the
    // panels of x.
    let tiles = n.div_ceil(ROWS_PER_TASK);
    let tile = |t: usize, pack: &mut Vec<f32>| {
        let (r0, r1) = (t * ROWS_PER_TASK, ((t + 1) * ROWS_PER_TASK).min(n));
        task_on(isa, x, *w, bias, out, m, r0, r1, block, pack);
    };
    let pack = || vec![0f32; 4 * block];
    if m * n * k < PARALLEL_MIN_MACS || rayon::current_num_threads() == 1 {
        let mut p = pack();
        (0..tiles).for_each(|t| tile(t, &mut p));
    } else {
        (0..tiles)
            .into_par_iter()
            .for_each_init(pack, |p, t| tile(t, p));
    }
}

isa_entries! {
    /// Output rows r0..r1 for all m rows of x.
    fn task_on<E: WeightElem>(
        x: &[f32],
        w: WeightMatrix<E>,
        bias: Option<&[f32]>,
        y: OutPtr,
        m: usize,
        r0: usize,
        r1: usize,
        block: usize,
        pack: &mut [f32],
    ) => task_body
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn task_body<S: Simd, E: WeightElem>(
    x: &[f32],
    w: WeightMatrix<E>,
    bias: Option<&[f32]>,
    y: OutPtr,
    m: usize,
    r0: usize,
    r1: usize,
    block: usize,
    pack: &mut [f32],
) {
    let (n, k) = (w.rows, w.cols);
    assert!(S::NR <= 4 && S::MR <= 4 && pack.len() >= S::NR * block);
    for i in 0..m {
        for r in r0..r1 {
            *y.0.add(i * n + r) = bias.map_or(0.0, |b| b[r]);
        }
    }
    let mut c0 = 0;
    while c0 < k {
        let len = block.min(k - c0);
        // Panels of x rows, so that the panel (≤ PANEL_ROWS × block) stays in L2; the task's
        // weight tile is re-read from L2 for each panel, widened again (amortised over the
        // panel's rows).
        let mut p0 = 0;
        while p0 < m {
            let p1 = (p0 + PANEL_ROWS).min(m);
            let mut rg = r0;
            while rg < r1 {
                let nr = S::NR.min(r1 - rg);
                for t in 0..nr {
                    let r = rg + t;
                    convert_row::<S, E>(
                        w.data.as_ptr().add(r * k + c0),
                        len,
                        w.scales.map(|s| s[r]),
                        pack.as_mut_ptr().add(t * len),
                    );
                }
                let mut ib = p0;
                while ib < p1 {
                    let mr = S::MR.min(p1 - ib);
                    let xp = x.as_ptr().add(ib * k + c0);
                    let yp = y.0.add(ib * n + rg);
                    let wp = pack.as_ptr();
                    macro_rules! micro {
                        ($($mr:literal, $nr:literal);*) => {
                            match (mr, nr) {
                                $(($mr, $nr) => micro::<S, $mr, $nr>(xp, k, wp, len, yp, n),)*
                                _ => unreachable!(),
                            }
                        };
                    }
                    micro!(1, 1; 1, 2; 1, 3; 1, 4; 2, 1; 2, 2; 2, 3; 2, 4;
                           3, 1; 3, 2; 3, 3; 3, 4; 4, 1; 4, 2; 4, 3; 4, 4);
                    ib += mr;
                }
                rg += nr;
            }
            p0 = p1;
        }
        c0 += len;
    }
}

/// y[i][t] += Σ_j x[i][j] · w[t][j] for MR rows of x (stride `xs`) and NR rows of widened
/// weights (stride `len`), j < len; y rows of stride `ys`.
#[inline(always)]
unsafe fn micro<S: Simd, const MR: usize, const NR: usize>(
    xp: *const f32,
    xs: usize,
    wp: *const f32,
    len: usize,
    yp: *mut f32,
    ys: usize,
) {
    let mut acc = [[S::zero(); NR]; MR];
    let mut j = 0;
    while j + S::LANES <= len {
        let mut wv = [S::zero(); NR];
        for (t, v) in wv.iter_mut().enumerate() {
            *v = S::load(wp.add(t * len + j));
        }
        for (i, a) in acc.iter_mut().enumerate() {
            let xv = S::load(xp.add(i * xs + j));
            for t in 0..NR {
                a[t] = S::fma(xv, wv[t], a[t]);
            }
        }
        j += S::LANES;
    }
    for (i, a) in acc.iter().enumerate() {
        for (t, v) in a.iter().enumerate() {
            let mut s = S::sum(*v);
            for jj in j..len {
                s += *xp.add(i * xs + jj) * *wp.add(t * len + jj);
            }
            *yp.add(i * ys + t) += s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemv::tests::{check, data, reference, weights};

    /// Every element type × instruction set × the row counts around the register blocks and
    /// the dispatch limits × odd widths, multi-block widths and multithreaded sizes.
    #[test]
    fn matches_the_f64_reference() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let shapes = [(37, 70), (16, 3), (5000, 131), (1031, 517)];
        for &(k, n) in &shapes {
            let tw = weights(n, k, 11);
            let bias: Vec<f32> = (0..n).map(|i| 0.5 - i as f32 * 0.01).collect();
            for &m in &[1usize, 3, 8, 9, 17, 39, 64] {
                let x = data(m * k, 100 + m as u32);
                let want_f16 = reference(&x, &tw.f16_f32, Some(&bias), m, k);
                let want_bf16 = reference(&x, &tw.bf16_f32, Some(&bias), m, k);
                let want_i8 = reference(&x, &tw.i8_f32, Some(&bias), m, k);
                for isa in Isa::available() {
                    let what = format!("{isa:?} m{m} k{k} n{n}");
                    let mut y = vec![0f32; m * n];
                    let wf = WeightMatrix::new(&tw.f16, n, k);
                    pool.install(|| matmul_small_on(isa, &x, &wf, Some(&bias), &mut y, m));
                    check(&y, &want_f16, &x, &tw.f16_f32, m, k, &format!("f16 {what}"));
                    let wb = WeightMatrix::new(&tw.bf16, n, k);
                    pool.install(|| matmul_small_on(isa, &x, &wb, Some(&bias), &mut y, m));
                    check(
                        &y,
                        &want_bf16,
                        &x,
                        &tw.bf16_f32,
                        m,
                        k,
                        &format!("bf16 {what}"),
                    );
                    let wi = WeightMatrix::with_scales(&tw.i8, &tw.scales, n, k);
                    pool.install(|| matmul_small_on(isa, &x, &wi, Some(&bias), &mut y, m));
                    check(&y, &want_i8, &x, &tw.i8_f32, m, k, &format!("int8 {what}"));
                }
            }
        }
    }

    #[test]
    fn without_bias() {
        let (m, k, n) = (13, 100, 9);
        let tw = weights(n, k, 5);
        let x = data(m * k, 1);
        let mut y = vec![0f32; m * n];
        matmul_small(&x, &WeightMatrix::new(&tw.bf16, n, k), None, &mut y, m);
        let want = reference(&x, &tw.bf16_f32, None, m, k);
        check(&y, &want, &x, &tw.bf16_f32, m, k, "bf16 no bias");
    }
}
