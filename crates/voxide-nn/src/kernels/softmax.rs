//! Softmax over rows and the vectorised exponential it runs on (also behind the decoder's
//! log-sum-exp over the vocabulary).
//!
//! An encoder window's attention takes exp of heads × 1500 × 1500 scores per layer (54 M for
//! Whisper tiny): libm's scalar `expf` made that ~15 % of the encoder. Here e^x is computed 8
//! lanes at a time (AVX2 + FMA) with a Cephes-style polynomial, relative error ~2e-7 (as
//! `expf`), elsewhere with `f32::exp`; `exp_non_positive` is the same polynomial in scalar
//! code that loops vectorise (the SEANet ELU).

use rayon::prelude::*;

/// Rows per parallel task (scores rows are 1500 wide for Whisper: ~400 KB per task).
const ROWS_PER_TASK: usize = 64;

/// Below this many elements the rows run on one thread.
const PARALLEL_MIN: usize = 1 << 16;

/// Replaces each row of `x` (`cols` wide) by its softmax: e^(x − max) / Σ e^(x − max). A row
/// of −∞ only becomes NaN, as in candle and PyTorch.
pub fn softmax_rows(x: &mut [f32], cols: usize) {
    if cols == 0 {
        return;
    }
    assert_eq!(x.len() % cols, 0, "rows of {cols}");
    if x.len() < PARALLEL_MIN {
        x.chunks_mut(cols).for_each(softmax_row);
    } else {
        x.par_chunks_mut(cols * ROWS_PER_TASK)
            .for_each(|rows| rows.chunks_mut(cols).for_each(softmax_row));
    }
}

fn softmax_row(row: &mut [f32]) {
    let max = row_max(row);
    let sum = exp_shifted_in_place(row, max);
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// The largest element of x, NaN ignored as `f32::max` ignores it (−∞ for an empty x).
pub(crate) fn row_max(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the features were detected at run time.
        return unsafe { x86::max(x) };
    }
    x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// x ← e^(x − max) for every element (max ≥ every element), returning Σ in f64.
pub(crate) fn exp_shifted_in_place(x: &mut [f32], max: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the features were detected at run time; x is valid for writes.
        return unsafe { x86::exp_shifted(x.as_mut_ptr(), x.len(), max, true) };
    }
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    sum
}

/// Σ e^(x − max) in f64 without writing (max ≥ every element).
pub fn sum_exp_shifted(x: &[f32], max: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the features were detected at run time; without `write` x is only read.
        return unsafe { x86::exp_shifted(x.as_ptr() as *mut f32, x.len(), max, false) };
    }
    x.iter().map(|&v| (v - max).exp() as f64).sum()
}

/// Cephes' expf polynomial for eʳ, |r| ≤ ln 2 / 2: eʳ ≈ 1 + r + r² · P(r), P's coefficients
/// from the highest degree down (shared by the scalar and the AVX2 forms).
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// eˣ in f32 for x ≤ 0 without libm (Cephes' expf): x = n·ln 2 + r with |r| ≤ ln 2 / 2 (ln 2 in
/// two parts), eʳ by a degree-6 polynomial, 2ⁿ through the exponent bits; clamped at −87
/// (e⁻⁸⁷ ≈ 1.6e-38). Relative error ~2e-7; branch-free and call-free, so loops vectorise.
#[inline(always)]
pub(crate) fn exp_non_positive(x: f32) -> f32 {
    const LN2_A: f32 = 0.693_359_4;
    const LN2_B: f32 = -2.121_944_4e-4;
    // Round to nearest by adding and removing 1.5 · 2²³ (`round` is a libm call).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_A) - n * LN2_B;
    let p = EXP_POLY[1..].iter().fold(EXP_POLY[0], |p, &c| p * r + c);
    let e = p * r * r + r + 1.0;
    // n (−126…0) is the difference of the shifted value's bits from ROUND's, in integers:
    // `n as i32` saturates and maps NaN to 0, which LLVM compiles lane by lane (a scalar
    // conversion and two conditional moves per value).
    let biased = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    e * f32::from_bits(biased << 23)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// ln 2 in two parts for the vector forms' range reduction (r = x − n·HI − n·LO).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;

    /// Below this the vector forms give 0 (e⁻⁸⁷ ≈ 1.6e-38).
    const EXP_MIN: f32 = -87.0;

    /// e^x for x ≤ 0, 8 lanes: x = n·ln2 + r with |r| ≤ ln2/2, e^r by a degree-6 polynomial
    /// (relative error ~2e-7, as Cephes' expf), 2^n through the exponent bits; below −87 → 0.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp_neg(x: __m256) -> __m256 {
        let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(EXP_MIN));
        let x = _mm256_max_ps(x, _mm256_set1_ps(EXP_MIN));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(super::EXP_POLY[0]);
        for &c in &super::EXP_POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let p = _mm256_fmadd_ps(
            _mm256_mul_ps(p, r),
            r,
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        _mm256_andnot_ps(tiny, _mm256_mul_ps(p, scale))
    }

    /// [`exp_neg`] in 16 lanes (AVX-512F): the same steps and constants.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn exp_neg_16(x: __m512) -> __m512 {
        let kept = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(EXP_MIN));
        let x = _mm512_max_ps(x, _mm512_set1_ps(EXP_MIN));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(super::EXP_POLY[0]);
        for &c in &super::EXP_POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let p = _mm512_fmadd_ps(
            _mm512_mul_ps(p, r),
            r,
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            _mm512_cvtps_epi32(n),
            _mm512_set1_epi32(127),
        )));
        _mm512_maskz_mul_ps(kept, p, scale)
    }

    /// [`super::row_max`] 8 lanes at a time.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn max(x: &[f32]) -> f32 {
        let mut max = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut chunks = x.chunks_exact(8);
        for c in &mut chunks {
            // `maxps` returns its second operand where either is NaN: the running max.
            max = _mm256_max_ps(_mm256_loadu_ps(c.as_ptr()), max);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), max);
        lanes
            .iter()
            .chain(chunks.remainder())
            .copied()
            .fold(f32::NEG_INFINITY, f32::max)
    }

    /// e^(x − max) for the `len` elements at `x`, written back when `write` (then `x` must be
    /// valid for writes); returns the sum in f64. NaN inputs (a row of −∞ shifted by −∞) give
    /// NaN, as `f32::exp` does.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted(x: *mut f32, len: usize, max: f32, write: bool) -> f64 {
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_pd();
        let mut j = 0;
        while j + 8 <= len {
            let d = _mm256_sub_ps(_mm256_loadu_ps(x.add(j)), m);
            // exp_neg maps NaN to a number (max/min drop it): keep NaN lanes NaN.
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(d, d);
            let e = _mm256_or_ps(exp_neg(d), nan);
            if write {
                _mm256_storeu_ps(x.add(j), e);
            }
            acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
            acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
            j += 8;
        }
        let mut tail = 0f64;
        for i in j..len {
            let e = (*x.add(i) - max).exp();
            if write {
                *x.add(i) = e;
            }
            tail += e as f64;
        }
        let mut lanes = [0f64; 4];
        _mm256_storeu_pd(lanes.as_mut_ptr(), acc);
        lanes.iter().sum::<f64>() + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_f64() {
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let want = (x as f64).exp();
            let got = exp_non_positive(x) as f64;
            assert!(
                (got - want).abs() <= 2.5e-7 * want,
                "e^{x} = {got}, want {want}"
            );
        }
        assert!(exp_non_positive(-200.0) < 1e-37);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sixteen_lane_exp_matches_f64() {
        use std::arch::x86_64::*;
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: no AVX-512 on this CPU");
            return;
        }
        let mut lanes = [0f32; 16];
        for i in (0..=880_000).step_by(16) {
            let x: [f32; 16] = std::array::from_fn(|l| -((i + l) as f32) * 1e-4);
            // SAFETY: AVX-512F was detected; both arrays hold 16 values.
            unsafe {
                let e = x86::exp_neg_16(_mm512_loadu_ps(x.as_ptr()));
                _mm512_storeu_ps(lanes.as_mut_ptr(), e);
            }
            for (x, got) in x.iter().zip(lanes) {
                let want = (*x as f64).exp();
                let tolerance = if *x < -87.0 { 1e-37 } else { 2.5e-7 * want };
                assert!(
                    (got as f64 - want).abs() <= tolerance,
                    "e^{x} = {got}, want {want}"
                );
            }
        }
    }

    fn want(row: &[f32]) -> Vec<f64> {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    #[test]
    fn rows_match_f64_softmax() {
        for cols in [1usize, 7, 8, 13, 1500] {
            for rows in [1usize, 3, 70] {
                let x: Vec<f32> = (0..rows * cols)
                    .map(|i| ((i * 7919) % 4001) as f32 / 100.0 - 20.0)
                    .collect();
                let mut y = x.clone();
                softmax_rows(&mut y, cols);
                for (r, row) in x.chunks(cols).enumerate() {
                    for (j, w) in want(row).iter().enumerate() {
                        let g = y[r * cols + j] as f64;
                        assert!(
                            (g - w).abs() <= 1e-6 * w + 1e-12,
                            "{rows}×{cols} [{r},{j}]: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn masked_and_empty_rows() {
        let mut x = vec![0.0, f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY];
        softmax_rows(&mut x, 4);
        assert_eq!(x, [0.5, 0.0, 0.5, 0.0]);
        let mut all_masked = vec![f32::NEG_INFINITY; 9];
        softmax_rows(&mut all_masked, 9);
        assert!(all_masked.iter().all(|v| v.is_nan()));
        softmax_rows(&mut [], 0);
    }

    #[test]
    fn row_max_is_the_largest_with_nan_ignored() {
        // Falling and rising rows: the largest element first or last, so that a NaN in the
        // same lane after it (or before it) would lose it if the vector max kept NaN.
        for len in [0usize, 1, 7, 8, 9, 16, 21] {
            for sign in [-1.0f32, 1.0] {
                let x: Vec<f32> = (0..len).map(|i| sign * i as f32).collect();
                let want = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(row_max(&x), want, "{len}");
                for at in 0..len {
                    let mut y = x.clone();
                    y[at] = f32::NAN;
                    let want = y.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    assert_eq!(row_max(&y), want, "{len} × {sign}, NaN at {at}");
                }
            }
        }
    }

    #[test]
    fn sum_of_exponentials() {
        let x: Vec<f32> = (0..1003).map(|i| (i % 50) as f32 * -0.5).collect();
        let want: f64 = x.iter().map(|&v| (v as f64).exp()).sum();
        let got = sum_exp_shifted(&x, 0.0);
        assert!((got - want).abs() < 1e-6 * want, "{got} vs {want}");
    }
}
