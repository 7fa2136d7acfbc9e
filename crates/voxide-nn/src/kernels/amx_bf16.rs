//! bf16 products on Intel's AMX tiles (Sapphire Rapids and later): `tdpbf16ps` multiplies a
//! 16 × 32 tile of bf16 x by a 32 × 16 tile of bf16 weights into 16 × 16 f32 sums, 16 384
//! multiply-adds per instruction — where AVX-512 BF16's `vdpbf16ps` on the same cores issues at
//! half the f32 FMA rate (PERFORMANCE.md #167), so that bf16 weights were widened to f32 there.
//!
//! For bf16 weights x is rounded to bf16 once (to nearest even, as [`super::small_m_bf16`]
//! does), products are exact and sum in f32. Each output element sums its k products in the
//! same order whatever the number of rows (tiles of 32 columns in order, zero rows padding a
//! partial tile), so rows come out alike in a block of any size, as chunk-invariant layers need.
//!
//! f16 weights (Whisper's) have three more significand bits than bf16 and no tile of their own
//! before AMX-FP16, so each splits exactly into two bf16 parts, w = w_hi + w_lo, and x into
//! x_hi + x_lo (x to 16 significand bits, where whisper.cpp rounds x to f16's 11): every tile of
//! k runs three products, x_hi·w_hi + x_lo·w_hi + x_hi·w_lo, leaving out x_lo·w_lo (≤ 2⁻¹⁸ of
//! |x·w|). Three times the tiles' work still ran 0.95–2.4× the better f32 kernel's rate on
//! the same cores, Whisper large-v3-turbo's encoder 1.3–1.5× faster (PERFORMANCE.md #184).
//! This is the split of "bf16x3" GEMMs (Henry, Tang and Heinecke, "Leveraging the bfloat16
//! artificial intelligence datatype for higher-precision computations", ARITH 2019), with the
//! weights' split exact.
//!
//! Layout as `kernels::amx` lays out the tiles; with parts (f16), each 32 columns of k become
//! `TileWeights::PARTS` tiles' depth in both operands, x's parts against the weights' in the
//! order above. C stores straight into y where the block is whole and y's rows start on cache
//! lines.

use super::amx::{self, Plan, TileOps, TileWords, BLOCK, TILE_WORDS};
use super::gemv::{OutPtr, WeightMatrix};
use half::{bf16, f16};
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// bf16 values along k per tile row (64 bytes).
pub const TILE_K: usize = 2 * TILE_WORDS;

/// Whether this CPU and OS run the tiles' bf16 products (AMX-BF16, see `amx::has`).
pub fn runs() -> bool {
    static RUNS: OnceLock<bool> = OnceLock::new();
    *RUNS.get_or_init(|| amx::has(TileOps::Bf16))
}

/// GFLOP/s of this core's `tdpbf16ps` with its operands in L1 (32 × 32 blocks over four tile
/// steps, the products' own loop), the best of `passes` timed passes after a warm-up: the
/// ceiling of every product built on the tiles on this machine. On a 2-vCPU KVM guest of an
/// Emerald Rapids it read 507–590 in four start-ups (~3.5× a core's f32 FMAs) and 2096 — one
/// instruction per 16 cycles — in a fifth: the tile unit is the physical core's, shared with
/// whatever runs beside (PERFORMANCE.md #190). `None` where the tiles do not run.
pub fn measure_peak_gflops(passes: usize) -> Option<f64> {
    use std::time::Instant;
    if !runs() {
        return None;
    }
    const WORDS: usize = 4 * TILE_WORDS;
    const CALLS: usize = 20_000;
    // bf16 pairs of 1.0: the sums grow by 128 a call and stay exact.
    const ONES: u32 = 0x3f80_3f80;
    let (mut a_buf, mut b_buf) = (Vec::new(), Vec::new());
    let a: &[u32] = {
        let a = amx::lines(&mut a_buf, BLOCK * WORDS);
        a.fill(ONES);
        a
    };
    let b: &[u32] = {
        let b = amx::lines(&mut b_buf, BLOCK * WORDS);
        b.fill(ONES);
        b
    };
    let mut sums = Edge([0f32; BLOCK * BLOCK]);
    // Four tiles' products a step, 16 × 16 × 32 multiply-adds each.
    let flops = (CALLS * WORDS / TILE_WORDS * 4 * 16 * 16 * 32 * 2) as f64;
    let mut pass = || {
        let t = Instant::now();
        // SAFETY: the tiles run (checked above); both operands hold 32 rows of WORDS words on
        // cache lines; the sums' block holds 32 × 32.
        unsafe {
            amx::configure();
            amx::zero_sums();
            for _ in 0..CALLS {
                amx::multiply::<false>(a.as_ptr(), b.as_ptr(), WORDS, (0, WORDS));
            }
            amx::store_sums(sums.0.as_mut_ptr(), BLOCK);
            amx::release();
        }
        std::hint::black_box(&sums);
        flops / t.elapsed().as_secs_f64() / 1e9
    };
    pass();
    Some((0..passes.max(1)).map(|_| pass()).fold(0.0, f64::max))
}

/// Whether a product of k columns fits the tiles (whole tile rows along k; the rest take the
/// other kernels).
pub fn fits(k: usize) -> bool {
    k > 0 && k.is_multiple_of(TILE_K)
}

/// Weights the tiles multiply in f32 sums: bf16 as they are, f16 in two exact bf16 parts (see
/// the module), with x rounded to match.
pub(crate) trait TileWeights: TileWords {
    /// A row of x as the A tiles' pairs, per 32 columns the parts' 16 pairs each.
    ///
    /// # Safety
    /// The CPU has AVX512-BF16; `row.len()` is a multiple of 32; `out` holds PARTS · len / 2.
    unsafe fn round_x(row: &[f32], out: &mut [u32]);
}

impl TileWeights for bf16 {
    #[inline(always)]
    unsafe fn round_x(row: &[f32], out: &mut [u32]) {
        super::small_m_bf16::round_pairs(row, out)
    }
}

impl TileWeights for f16 {
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn round_x(row: &[f32], out: &mut [u32]) {
        for (j, out) in out.chunks_exact_mut(3 * TILE_WORDS).enumerate() {
            let lo = _mm512_loadu_ps(row.as_ptr().add(j * TILE_K));
            let hi = _mm512_loadu_ps(row.as_ptr().add(j * TILE_K + TILE_K / 2));
            let [x_hi, x_lo] = split(lo, hi);
            for (part, v) in [x_hi, x_lo, x_hi].into_iter().enumerate() {
                _mm512_storeu_si512(out.as_mut_ptr().add(part * TILE_WORDS) as *mut _, v);
            }
        }
    }
}

/// f16 weight pairs as their bf16 parts w_hi, w_hi, w_lo (against x_hi, x_lo, x_hi).
impl TileWords for f16 {
    const PARTS: usize = 3;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn parts(pairs: __m512i) -> [__m512i; 3] {
        let lo = _mm512_cvtph_ps(_mm512_castsi512_si256(pairs));
        let hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(pairs));
        let [w_hi, w_lo] = split(lo, hi);
        [w_hi, w_hi, w_lo]
    }

    fn parts_of(pair: u32) -> [u32; 3] {
        let part = |v: f32| {
            let hi = bf16::from_f32(v);
            (
                hi.to_bits() as u32,
                bf16::from_f32(v - hi.to_f32()).to_bits() as u32,
            )
        };
        let (a_hi, a_lo) = part(f16::from_bits(pair as u16).to_f32());
        let (b_hi, b_lo) = part(f16::from_bits((pair >> 16) as u16).to_f32());
        let (hi, lo) = (a_hi | b_hi << 16, a_lo | b_lo << 16);
        [hi, hi, lo]
    }
}

/// 32 values (the first 16 in `lo`) as bf16 pairs of their high parts (rounded to nearest
/// even) and of what those leave (x − hi is exact in f32; rounded again).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn split(lo: __m512, hi: __m512) -> [__m512i; 2] {
    let high = _mm512_cvtne2ps_pbh(hi, lo);
    let bits = std::mem::transmute::<__m512bh, __m512i>(high);
    // A bf16 is the upper half of its f32.
    let widen =
        |half: __m256i| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(half)));
    let rest = _mm512_cvtne2ps_pbh(
        _mm512_sub_ps(hi, widen(_mm512_extracti64x4_epi64::<1>(bits))),
        _mm512_sub_ps(lo, widen(_mm512_castsi512_si256(bits))),
    );
    [bits, std::mem::transmute::<__m512bh, __m512i>(rest)]
}

/// y (m × n) = x (m × k) · wᵀ (+ bias) for bf16 or f16 `w` ([`TileWeights`]); the caller
/// checked the operands, that the tiles [run] and that k [fits].
///
/// [run]: runs
pub(crate) fn matmul<W: TileWeights>(
    x: &[f32],
    w: &WeightMatrix<W>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    let (n, k) = (w.rows, w.cols);
    debug_assert!(runs() && fits(k) && super::small_m_bf16::runs());
    // x rounded (in parts), row-major, zero rows up to a whole block.
    let pairs = W::PARTS * k / 2;
    amx::with_x_tiles(m, pairs, |xb| {
        xb.par_chunks_mut(pairs)
            .zip(x[..m * k].par_chunks(k))
            // SAFETY: AMX CPUs have AVX512-BF16 (asserted above); k is a multiple of 32 and
            // each row holds its pairs.
            .for_each(|(out, row)| unsafe { W::round_x(row, out) });
        let plan = Plan::new(n, pairs);
        let out = OutPtr(y.as_mut_ptr());
        let rounded = &*xb;
        plan.for_each_task(n, pairs, |r0, r1, packed| {
            // SAFETY: the tiles run (the caller's check); x holds whole blocks of rows; the
            // packed buffer holds the task's rows; tasks write disjoint columns of y.
            unsafe { task(rounded, w, bias, out, m, (r0, r1), plan.chunk_rows, packed) };
        });
    });
}

/// A block's sums where y's rows do not start on a cache line (stored, then copied).
#[repr(C, align(64))]
struct Edge([f32; BLOCK * BLOCK]);

/// Output columns r0..r1 (weight rows) for all m rows of x.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn task<W: TileWeights>(
    xb: &[u32],
    w: &WeightMatrix<W>,
    bias: Option<&[f32]>,
    y: OutPtr,
    m: usize,
    (r0, r1): (usize, usize),
    chunk_rows: usize,
    packed: &mut [u32],
) {
    let n = w.rows;
    let pairs = W::PARTS * w.cols / 2;
    let blocks = (r1 - r0).div_ceil(BLOCK);
    amx::pack_weights(w, r0, r1, &mut packed[..blocks * BLOCK * pairs]);
    amx::configure();
    let mut edge = Edge([0f32; BLOCK * BLOCK]);
    // Tile rows straight into y only where each starts on a cache line (see `amx::lines`).
    let y_lines = (y.0 as usize).is_multiple_of(64) && n.is_multiple_of(16);
    for c0 in (0..m).step_by(chunk_rows) {
        for b in 0..blocks {
            let n0 = r0 + b * BLOCK;
            // B tiles: the block's weight rows n0..n0 + 16 and n0 + 16..n0 + 32, [pair][row].
            let wb = packed.as_ptr().add(b * BLOCK * pairs);
            for m0 in (c0..(c0 + chunk_rows).min(m)).step_by(BLOCK) {
                amx::zero_sums();
                amx::multiply::<false>(xb.as_ptr().add(m0 * pairs), wb, pairs, (0, pairs));
                let direct = y_lines && m0 + BLOCK <= m && n0 + BLOCK <= r1;
                let (dst, stride) = if direct {
                    (y.0.add(m0 * n + n0), n)
                } else {
                    (edge.0.as_mut_ptr(), BLOCK)
                };
                amx::store_sums(dst, stride);
                if !direct {
                    for i in 0..BLOCK.min(m - m0) {
                        let cols = BLOCK.min(r1 - n0);
                        std::ptr::copy_nonoverlapping(
                            edge.0.as_ptr().add(i * BLOCK),
                            y.0.add((m0 + i) * n + n0),
                            cols,
                        );
                    }
                }
            }
        }
    }
    amx::release();
    if let Some(bias) = bias {
        for i in 0..m {
            let row = std::slice::from_raw_parts_mut(y.0.add(i * n + r0), r1 - r0);
            for (v, b) in row.iter_mut().zip(&bias[r0..r1]) {
                *v += b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemv::tests::{check, data, reference};

    /// Where the tiles run their rate is measured, and it is above a core's f32 FMAs (3.5× on
    /// the slowest guest seen); elsewhere there is none.
    #[test]
    fn the_tiles_peak_is_measured_where_they_run() {
        match measure_peak_gflops(3) {
            Some(tiles) => {
                let fma = crate::kernels::fma_peak::measure_fma_gflops(1, 3);
                assert!(
                    tiles.is_finite() && tiles > fma,
                    "tiles {tiles}, FMAs {fma}"
                );
            }
            None => assert!(!runs()),
        }
    }

    /// Every shape edge (rows of x and weight rows short of a block, one tile along k, k longer
    /// than a chunk's share), with and without bias: each output within f32 summation of the
    /// f64 product of bf16(x) and the weights, and each row of x bit for bit what it gets alone.
    #[test]
    fn tiles_multiply_bf16_x_and_rows_come_out_alike() {
        if !(runs() && super::super::small_m_bf16::runs()) {
            println!("no AMX tiles on this CPU: nothing to check");
            return;
        }
        for (m, n, k) in [
            (1, 16, 32),
            (33, 45, 64),
            (100, 96, 1280),
            (7, 200, 4096),
            (64, 32, 96),
        ] {
            let w: Vec<bf16> = data(n * k, 1).into_iter().map(bf16::from_f32).collect();
            let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            let wm = WeightMatrix::new(&w, n, k);
            let x = data(m * k, 2);
            let rounded: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
            let bias = data(n, 3);
            for bias in [None, Some(&bias[..])] {
                let what = format!("{m}×{n}×{k}, bias {}", bias.is_some());
                let mut y = vec![f32::NAN; m * n];
                matmul(&x, &wm, bias, &mut y, m);
                let want = reference(&rounded, &wf, bias, m, k);
                check(&y, &want, &rounded, &wf, m, k, &what);
                rows_alone(&x, &wm, bias, &y, m, &what);
            }
        }
    }

    /// Each row of x through the tiles alone: the same bits as in the block.
    fn rows_alone<W: TileWeights>(
        x: &[f32],
        w: &WeightMatrix<W>,
        bias: Option<&[f32]>,
        y: &[f32],
        m: usize,
        what: &str,
    ) {
        let (n, k) = (w.rows, w.cols);
        for i in 0..m {
            let mut alone = vec![0f32; n];
            matmul(&x[i * k..(i + 1) * k], w, bias, &mut alone, 1);
            assert_eq!(alone, y[i * n..(i + 1) * n], "{what}: row {i} alone");
        }
    }

    /// f16 weights in parts: each output within f32 summation of the f64 sum of the three
    /// products of parts (x_hi·w_hi + x_lo·w_hi + x_hi·w_lo), within 2⁻¹⁶ of Σ|x·w| of the
    /// exact product of x and the f16 weights, and each row alike alone; the parts are exact
    /// (w_hi + w_lo = w) and x_hi + x_lo is x to 2⁻¹⁷.
    #[test]
    fn f16_weights_multiply_in_bf16_parts_to_16_bits_of_x() {
        if !(runs() && super::super::small_m_bf16::runs()) {
            println!("no AMX tiles on this CPU: nothing to check");
            return;
        }
        let part = |v: f32| {
            let hi = bf16::from_f32(v).to_f32();
            (hi, bf16::from_f32(v - hi).to_f32())
        };
        for (m, n, k) in [(1, 16, 32), (33, 45, 64), (100, 96, 1280), (40, 70, 384)] {
            // Weights over f16's range of exponents, so that the parts are not just bf16's.
            let w: Vec<f16> = data(n * k, 1)
                .iter()
                .enumerate()
                .map(|(i, v)| f16::from_f32(v * (1 << (i % 7)) as f32 / 8.0))
                .collect();
            let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            let wm = WeightMatrix::new(&w, n, k);
            let x = data(m * k, 2);
            // The parts laid out as the kernel multiplies them: per 32 columns x_hi, x_lo,
            // x_hi against w_hi, w_hi, w_lo.
            let in_parts = |v: &[f32], rows: usize, order: [bool; 3]| -> Vec<f32> {
                let mut out = Vec::with_capacity(3 * v.len());
                for r in 0..rows {
                    for block in v[r * k..(r + 1) * k].chunks(TILE_K) {
                        for high in order {
                            out.extend(block.iter().map(|&e| {
                                let (hi, lo) = part(e);
                                if high {
                                    hi
                                } else {
                                    lo
                                }
                            }));
                        }
                    }
                }
                out
            };
            let (x3, w3) = (
                in_parts(&x, m, [true, false, true]),
                in_parts(&wf, n, [true, true, false]),
            );
            for (&v, &f) in w.iter().zip(&wf) {
                let (hi, lo) = part(f);
                assert_eq!(hi + lo, v.to_f32(), "the weight's parts are exact");
            }
            let bias = data(n, 3);
            for bias in [None, Some(&bias[..])] {
                let what = format!("f16 {m}×{n}×{k}, bias {}", bias.is_some());
                let mut y = vec![f32::NAN; m * n];
                matmul(&x, &wm, bias, &mut y, m);
                check(
                    &y,
                    &reference(&x3, &w3, bias, m, 3 * k),
                    &x3,
                    &w3,
                    m,
                    3 * k,
                    &what,
                );
                let exact = reference(&x, &wf, bias, m, k);
                for i in 0..m {
                    for r in 0..n {
                        let mag: f64 = (0..k)
                            .map(|j| (x[i * k + j] as f64 * wf[r * k + j] as f64).abs())
                            .sum();
                        let err = (y[i * n + r] as f64 - exact[i * n + r]).abs();
                        assert!(
                            err <= (1.0 + mag) / 65536.0,
                            "{what} [{i},{r}]: {err} off the exact product (|x·w| sum {mag})"
                        );
                    }
                }
                rows_alone(&x, &wm, bias, &y, m, &what);
            }
        }
    }
}
