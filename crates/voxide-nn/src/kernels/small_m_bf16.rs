//! The small-M product for bf16 weights on CPUs with AVX512-BF16 (AMD Zen 4 and 5, Intel Xeon
//! from Cooper Lake): `vdpbf16ps` multiplies 32 bf16 pairs into 16 f32 lanes per instruction,
//! twice the multiply-adds of an f32 FMA, and the weights need no widening.
//!
//! x is rounded to bf16 once (to nearest even; |x − bf16(x)| ≤ 2⁻⁸ |x|), as every bf16 runtime
//! rounds activations before its products (PyTorch's bf16 matmul in transformers, vLLM). The
//! products of two bf16 values are exact in f32 and sum in f32, and y stays f32: one rounding
//! of x per product, where a checkpoint run in its own bf16 also rounds every output.
//! Chunk-invariant layers (the Voxtral encoders) take it at any row count, the Voxtral
//! decoders for their prompts ([`super::ops::ManyRows`], through
//! [`super::small_m::matmul_rows_alike`]); decoder steps keep x whole (the GEMV:
//! [`super::gemv_bf16`]), as does Qwen3-TTS everywhere, and `--precision f32` keeps it
//! everywhere.
//!
//! The register blocking is [`super::small_m`]'s: panels of 2 vectors of rows of x, as bf16
//! pairs `(x[i][2j], x[i][2j + 1])` per 32-bit lane, against strips of 6 weight rows copied to L1,
//! one broadcast of a weight pair per row: 12 f32 accumulators.

use super::gemv::{OutPtr, WeightMatrix};
use super::simd::Isa;
use super::small_m::{
    copy_strip_row, for_each_task, run_task, with_blocking, Scratch, StripKernel, MAX_BLOCK,
    M_CHUNK, PASS_ROWS, W_ROWS, X_VECS,
};
use half::bf16;
use rayon::prelude::*;
use std::arch::x86_64::*;

/// f32 lanes per vector.
const LANES: usize = 16;

/// Rows of x per panel.
const WIDTH: usize = X_VECS * LANES;

/// Whether this CPU runs the kernel (AVX-512F/BW and AVX512-BF16).
pub fn runs() -> bool {
    Isa::Avx512.is_available()
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512bf16")
}

/// x rounded to bf16 and packed for the micro-kernel: `[panel][pair][lane]`, the pair
/// (x[i][2j], x[i][2j + 1]) in one 32-bit lane, low half first (zero past the last row and
/// past k).
struct Panels(Vec<u32>);

impl Panels {
    /// x (m × k) in panels; the caller checked that the kernel [runs].
    fn pack(x: &[f32], m: usize, k: usize) -> Self {
        let pairs = k.div_ceil(2);
        let mut panels = vec![0u32; m.div_ceil(WIDTH) * pairs * WIDTH];
        let pack = |(p, panel): (usize, &mut [u32])| {
            let mut row = vec![0u32; pairs];
            for l in 0..WIDTH.min(m - p * WIDTH) {
                // SAFETY: the kernel runs (the caller's check); `row` holds k.div_ceil(2) pairs.
                unsafe { round_pairs(&x[(p * WIDTH + l) * k..][..k], &mut row) };
                for (j, &pair) in row.iter().enumerate() {
                    panel[j * WIDTH + l] = pair;
                }
            }
        };
        if m * k < 1 << 16 {
            panels.chunks_mut(pairs * WIDTH).enumerate().for_each(pack);
        } else {
            panels
                .par_chunks_mut(pairs * WIDTH)
                .enumerate()
                .for_each(pack);
        }
        Self(panels)
    }
}

/// `pairs[j]` = bf16(row[2j]) | bf16(row[2j + 1]) << 16, zero past the row's end.
///
/// # Safety
/// The CPU has AVX512-BF16; `pairs` holds row.len().div_ceil(2) values.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn round_pairs(row: &[f32], pairs: &mut [u32]) {
    let mut j = 0;
    while j + 32 <= row.len() {
        // vcvtne2ps2bf16 puts its second operand's 16 values in the low half.
        let v = _mm512_cvtne2ps_pbh(
            _mm512_loadu_ps(row.as_ptr().add(j + 16)),
            _mm512_loadu_ps(row.as_ptr().add(j)),
        );
        _mm512_storeu_si512(
            pairs.as_mut_ptr().add(j / 2) as *mut _,
            std::mem::transmute::<__m512bh, __m512i>(v),
        );
        j += 32;
    }
    for (jp, pair) in pairs.iter_mut().enumerate().skip(j / 2) {
        let half = |c: usize| {
            row.get(c)
                .map_or(0, |&v| bf16::from_f32(v).to_bits() as u32)
        };
        *pair = half(2 * jp) | half(2 * jp + 1) << 16;
    }
}

/// y (m × n) = x (m × k) · wᵀ (+ bias) for bf16 `w`, x rounded to bf16; the caller checked
/// the operands and that the kernel [runs].
pub(crate) fn matmul(
    x: &[f32],
    w: &WeightMatrix<bf16>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    let (n, k) = (w.rows, w.cols);
    // Equal column blocks of an even width: a pair never straddles two.
    let block = if k <= MAX_BLOCK {
        k
    } else {
        k.div_ceil(k.div_ceil(MAX_BLOCK)).next_multiple_of(16)
    };
    for (xs, ys) in x[..m * k]
        .chunks(PASS_ROWS * k)
        .zip(y.chunks_mut(PASS_ROWS * n))
    {
        let rows = xs.len() / k;
        let panels = Panels::pack(xs, rows, k);
        let out = OutPtr(ys.as_mut_ptr());
        for_each_task(
            n,
            rows * n * k,
            || Scratch::<bf16>::new(block.next_multiple_of(2), WIDTH),
            // SAFETY: the caller checked that the kernel runs; the buffers fit (asserted in the
            // task).
            |r0, r1, scratch| unsafe { task(&panels, *w, bias, out, rows, r0, r1, block, scratch) },
        );
    }
}

/// Output rows r0..r1 for all m rows of x.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn task(
    panels: &Panels,
    w: WeightMatrix<bf16>,
    bias: Option<&[f32]>,
    y: OutPtr,
    m: usize,
    r0: usize,
    r1: usize,
    block: usize,
    scratch: &mut Scratch<bf16>,
) {
    let stride = block.next_multiple_of(2);
    assert!(
        scratch.strip.len() >= W_ROWS * stride
            && scratch.tile.len() >= (r1 - r0) * M_CHUNK.next_multiple_of(WIDTH)
            && panels.0.len() >= m.div_ceil(WIDTH) * w.cols.div_ceil(2) * WIDTH
            && (block.is_multiple_of(2) || block == w.cols)
    );
    let mut strips = PairStrips {
        panels,
        w,
        strip: scratch.strip.as_mut_ptr(),
        stride,
    };
    let tile = scratch.tile.as_mut_ptr();
    run_task(&mut strips, m, (r0, r1), block, tile, y, None, bias);
}

/// The kernel's strips: bf16 weights copied to L1 as they are.
struct PairStrips<'a> {
    panels: &'a Panels,
    w: WeightMatrix<'a, bf16>,
    /// [`W_ROWS`] rows of the current column block, `stride` apart, zero past its end.
    strip: *mut bf16,
    stride: usize,
}

impl StripKernel for PairStrips<'_> {
    const LANES: usize = LANES;
    type Elem = bf16;

    #[inline(always)]
    fn weights(&self) -> WeightMatrix<'_, bf16> {
        self.w
    }

    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
    }

    #[inline(always)]
    unsafe fn widen(&mut self, t: usize, r: usize, c0: usize, len: usize) {
        let dst = std::slice::from_raw_parts_mut(self.strip.add(t * self.stride), self.stride);
        copy_strip_row(&self.w, r, (c0, len), dst);
    }

    #[inline(always)]
    unsafe fn multiply(
        &self,
        panel: usize,
        (c0, len): (usize, usize),
        strip_rows: usize,
        vecs: usize,
        yp: *mut f32,
    ) {
        let pairs = self.w.cols.div_ceil(2);
        let xp = self.panels.0.as_ptr().add((panel * pairs + c0 / 2) * WIDTH);
        let wp = self.strip as *const u32;
        let (w_stride, pair_len) = (self.stride / 2, len.div_ceil(2));
        with_blocking!(strip_rows, vecs, micro(xp, wp, w_stride, pair_len, yp));
    }
}

/// yp[t][i] += Σ_j x[i][j] · w[t][j] for the VECS × LANES rows of one panel (pair column j at
/// `xp + j · WIDTH`) and ROWS strip rows (pair stride `w_stride`), over `pair_len` pairs; yp's
/// rows have stride WIDTH.
#[inline(always)]
unsafe fn micro<const ROWS: usize, const VECS: usize>(
    xp: *const u32,
    wp: *const u32,
    w_stride: usize,
    pair_len: usize,
    yp: *mut f32,
) {
    // 32 bf16 as the instruction's operand type (the same 512 bits).
    let bh = |v: __m512i| std::mem::transmute::<__m512i, __m512bh>(v);
    let mut acc = [[_mm512_setzero_ps(); VECS]; ROWS];
    for j in 0..pair_len {
        let mut xv = [bh(_mm512_setzero_si512()); VECS];
        for (v, x) in xv.iter_mut().enumerate() {
            *x = bh(_mm512_loadu_si512(xp.add(j * WIDTH + v * LANES) as *const _));
        }
        for (t, a) in acc.iter_mut().enumerate() {
            let wv = bh(_mm512_set1_epi32(*wp.add(t * w_stride + j) as i32));
            for v in 0..VECS {
                a[v] = _mm512_dpbf16_ps(a[v], xv[v], wv);
            }
        }
    }
    for (t, a) in acc.iter().enumerate() {
        for (v, &acc) in a.iter().enumerate() {
            let out = yp.add(t * WIDTH + v * LANES);
            _mm512_storeu_ps(out, _mm512_add_ps(_mm512_loadu_ps(out), acc));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemv::tests::{check, data, reference, weights};

    /// x as the kernel multiplies it: each value rounded to bf16.
    fn rounded(x: &[f32]) -> Vec<f32> {
        x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
    }

    /// The f64 product of bf16(x) and the weights, to f32's rounding: odd and short widths,
    /// widths across column blocks, rows around the panels, chunks and passes, strips around
    /// the tiles, on 2 threads.
    #[test]
    fn equals_the_product_of_x_rounded_to_bf16() {
        if !runs() {
            eprintln!("no AVX512-BF16: the bf16 small-M kernel does not run here");
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let shapes = [
            (37, 70, &[1usize, 3, 16, 17, 33, 130, 300][..]),
            (16, 3, &[1, 17, 300]),
            (1, 5, &[2, 40]),
            (1031, 20, &[9, 130, 300]),
            (5000, 131, &[17, 39, 64]),
            (1031, 517, &[9, 39, 64]),
            (MAX_BLOCK + 1, 49, &[32, 129]),
        ];
        for &(k, n, ms) in &shapes {
            let tw = weights(n, k, 11);
            let bias: Vec<f32> = (0..n).map(|i| 0.5 - i as f32 * 0.01).collect();
            for &m in ms {
                let mut x = data(m * k, 100 + m as u32);
                x[k / 2] = -250.0;
                let xr = rounded(&x);
                assert_ne!(xr, x, "the data must need rounding");
                let want = reference(&xr, &tw.bf16_f32, Some(&bias), m, k);
                let w = WeightMatrix::new(&tw.bf16, n, k);
                let mut y = vec![0f32; m * n];
                pool.install(|| matmul(&x, &w, Some(&bias), &mut y, m));
                check(
                    &y,
                    &want,
                    &xr,
                    &tw.bf16_f32,
                    m,
                    k,
                    &format!("m{m} k{k} n{n}"),
                );
            }
        }
    }

    /// NaN and infinite values of x reach their own row's outputs only.
    #[test]
    fn non_finite_x_stays_in_its_row() {
        if !runs() {
            return;
        }
        let (m, n, k) = (40, 9, 70);
        let tw = weights(n, k, 3);
        let mut x = data(m * k, 5);
        x[3 * k + 10] = f32::NAN;
        x[35 * k + 69] = f32::INFINITY;
        let mut y = vec![0f32; m * n];
        matmul(&x, &WeightMatrix::new(&tw.bf16, n, k), None, &mut y, m);
        for (i, row) in y.chunks(n).enumerate() {
            match i {
                3 => assert!(row.iter().all(|v| v.is_nan()), "row {i}: {row:?}"),
                35 => assert!(row.iter().all(|v| !v.is_finite()), "row {i}: {row:?}"),
                _ => assert!(row.iter().all(|v| v.is_finite()), "row {i}: {row:?}"),
            }
        }
    }
}
