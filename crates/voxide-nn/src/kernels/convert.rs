//! Weight conversions: narrow weights widened to f32 for a GEMM (large batches), and int8
//! quantization at load time.
//!
//! candle's CPU `to_dtype` widens one element at a time on one thread; this widens with the
//! same SIMD loads as the GEMV kernels, on all threads.

use super::gemv::{OutPtr, WeightMatrix};
use super::machine::huge_page_vec_filled;
use super::simd::{isa_entries, Isa, Simd, WeightElem};
use rayon::prelude::*;

/// Weights per parallel conversion task.
const CONVERT_CHUNK: usize = 1 << 18;

/// dst[j] = src[j] (· scale) as f32 for j < len.
#[inline(always)]
pub(crate) unsafe fn convert_row<S: Simd, E: WeightElem>(
    src: *const E,
    len: usize,
    scale: Option<f32>,
    dst: *mut f32,
) {
    let mut j = 0;
    match scale {
        Some(s) => {
            let sv = S::splat(s);
            while j + S::LANES <= len {
                S::store(dst.add(j), S::mul(S::load_w(src.add(j)), sv));
                j += S::LANES;
            }
            for jj in j..len {
                *dst.add(jj) = (*src.add(jj)).to_f32() * s;
            }
        }
        None => {
            while j + S::LANES <= len {
                S::store(dst.add(j), S::load_w(src.add(j)));
                j += S::LANES;
            }
            for jj in j..len {
                *dst.add(jj) = (*src.add(jj)).to_f32();
            }
        }
    }
}

/// out = w as f32 (int8: dequantized, q · scale), row-major like w, on all threads.
pub fn to_f32<E: WeightElem>(w: &WeightMatrix<E>, out: &mut [f32]) {
    to_f32_on(Isa::detect(), w, out)
}

/// [`to_f32`] on a given instruction set (panics if this CPU lacks it).
pub fn to_f32_on<E: WeightElem>(isa: Isa, w: &WeightMatrix<E>, out: &mut [f32]) {
    assert_eq!(out.len(), w.rows * w.cols);
    if out.is_empty() {
        return;
    }
    // Whole rows per task, about CONVERT_CHUNK weights each.
    let rows_per_task = (CONVERT_CHUNK / w.cols.max(1)).max(1);
    let dst = OutPtr(out.as_mut_ptr());
    (0..w.rows.div_ceil(rows_per_task))
        .into_par_iter()
        .for_each(|t| {
            let r0 = t * rows_per_task;
            let r1 = (r0 + rows_per_task).min(w.rows);
            convert_on(isa, *w, dst, r0, r1);
        });
}

isa_entries! {
    fn convert_on<E: WeightElem>(w: WeightMatrix<E>, dst: OutPtr, r0: usize, r1: usize)
        => convert_body
}

#[inline(always)]
unsafe fn convert_body<S: Simd, E: WeightElem>(
    w: WeightMatrix<E>,
    dst: OutPtr,
    r0: usize,
    r1: usize,
) {
    let k = w.cols;
    match w.scales {
        // Scaled rows one by one; unscaled ones as one run.
        Some(sc) => {
            for (r, &s) in sc.iter().enumerate().take(r1).skip(r0) {
                convert_row::<S, E>(w.data.as_ptr().add(r * k), k, Some(s), dst.0.add(r * k))
            }
        }
        None => convert_row::<S, E>(
            w.data.as_ptr().add(r0 * k),
            (r1 - r0) * k,
            None,
            dst.0.add(r0 * k),
        ),
    }
}

/// Symmetric per-row int8 quantization of a `rows` × `cols` matrix given as f32 values
/// (`value(i)` of element i): scale = max|w| / 127 per row, q = round(w / scale) (ties to
/// even). Returns (q, scales); an all-zero row gets scale 0.
pub fn quantize_int8<F>(rows: usize, cols: usize, value: F) -> (Vec<i8>, Vec<f32>)
where
    F: Fn(usize) -> f32 + Sync,
{
    quantize_rows(rows, cols, |r, row| {
        for (j, v) in row.iter_mut().enumerate() {
            *v = value(r * cols + j);
        }
    })
}

/// [`quantize_int8`] of a row-major matrix of f32, f16 or bf16 weights, each row widened with
/// the GEMV kernels' SIMD loads: the same result, without an indexed, per-element conversion
/// (bf16 through `half`'s software path: most of an int8 load's time).
pub fn quantize_int8_rows<E: WeightElem>(
    data: &[E],
    rows: usize,
    cols: usize,
) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(data.len(), rows * cols, "{rows}×{cols} weights");
    let isa = Isa::detect();
    quantize_rows(rows, cols, |r, row| {
        widen_row(isa, &data[r * cols..(r + 1) * cols], row)
    })
}

isa_entries! {
    fn widen_row<E: WeightElem>(src: &[E], dst: &mut [f32]) => widen_row_body
}

#[inline(always)]
unsafe fn widen_row_body<S: Simd, E: WeightElem>(src: &[E], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    // SAFETY: both slices hold src.len() values.
    unsafe { convert_row::<S, E>(src.as_ptr(), src.len(), None, dst.as_mut_ptr()) }
}

/// The quantization of [`quantize_int8`], each row's f32 values written by `fill(row, values)`.
fn quantize_rows<F>(rows: usize, cols: usize, fill: F) -> (Vec<i8>, Vec<f32>)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let mut q = huge_page_vec_filled(rows * cols, 0i8);
    let mut scales = vec![0f32; rows];
    if cols == 0 {
        return (q, scales);
    }
    let isa = Isa::detect();
    q.par_chunks_mut(cols)
        .zip(scales.par_iter_mut())
        .enumerate()
        .for_each_init(Vec::new, |buf: &mut Vec<f32>, (r, (qr, s))| {
            buf.resize(cols, 0.0);
            fill(r, buf);
            let max = abs_max(isa, buf);
            if max == 0.0 || !max.is_finite() {
                *s = if max.is_finite() { 0.0 } else { f32::NAN };
                return;
            }
            *s = max / 127.0;
            round_row(isa, buf, 127.0 / max, qr);
        });
    (q, scales)
}

isa_entries! {
    /// The largest |v[j]|, NaNs skipped (as `f32::max` skips them), 0 for none.
    pub(crate) fn abs_max<>(v: &[f32]) -> f32 => abs_max_body
}

#[inline(always)]
unsafe fn abs_max_body<S: Simd>(v: &[f32]) -> f32 {
    // Lane-wise maxima, so that the loop vectorises (one running maximum is a serial chain).
    let mut lanes = [0f32; 16];
    let mut chunks = v.chunks_exact(lanes.len());
    for chunk in &mut chunks {
        for (m, x) in lanes.iter_mut().zip(chunk) {
            *m = m.max(x.abs());
        }
    }
    let tail = chunks.remainder().iter().fold(0f32, |a, x| a.max(x.abs()));
    lanes.iter().fold(tail, |a, &m| a.max(m))
}

isa_entries! {
    /// q[j] = round(v[j] · inv) clamped to ±127, to nearest even; a NaN becomes 0, as a
    /// saturating `as` would make it. Compiled per instruction set: the crate's baseline ran it
    /// on 4-lane SSE2, ~8 % of a 0.6B TTS model's int8 load.
    pub(crate) fn round_row<>(v: &[f32], inv: f32, q: &mut [i8]) => round_row_body
}

#[inline(always)]
unsafe fn round_row_body<S: Simd>(v: &[f32], inv: f32, q: &mut [i8]) {
    for (qv, v) in q.iter_mut().zip(v) {
        // Round to nearest even via the 1.5·2²³ trick (vectorises without SSE4.1).
        let t = (v * inv).clamp(-127.0, 127.0);
        let t = if t.is_nan() { 0.0 } else { t };
        // SAFETY: t rounds to a whole number in [-127, 127], so the unchecked conversion is
        // exact; `as`'s saturating one does not vectorise.
        *qv = unsafe { ((t + 12582912.0) - 12582912.0).to_int_unchecked::<i32>() } as i8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemv::tests::{data, weights};
    use half::{bf16, f16};

    #[test]
    fn widens_exactly_on_every_path() {
        for &(n, k) in &[(3usize, 37usize), (300, 1031), (1, 16)] {
            let tw = weights(n, k, 4);
            for isa in Isa::available() {
                let mut out = vec![0f32; n * k];
                to_f32_on(isa, &WeightMatrix::new(&tw.f16, n, k), &mut out);
                assert_eq!(out, tw.f16_f32, "f16 {isa:?}");
                to_f32_on(isa, &WeightMatrix::new(&tw.bf16, n, k), &mut out);
                assert_eq!(out, tw.bf16_f32, "bf16 {isa:?}");
                let wi = WeightMatrix::with_scales(&tw.i8, &tw.scales, n, k);
                to_f32_on(isa, &wi, &mut out);
                assert_eq!(out, tw.i8_f32, "int8 {isa:?}");
            }
        }
    }

    #[test]
    fn quantizes_symmetrically_per_row() {
        let (rows, cols) = (5, 301);
        let mut w = data(rows * cols, 3);
        w[cols..2 * cols].iter_mut().for_each(|v| *v = 0.0);
        w[2 * cols + 7] = 4.0;
        // A NaN among finite weights quantizes to 0 (the row keeps its finite scale).
        w[3 * cols + 11] = f32::NAN;
        let (q, s) = quantize_int8(rows, cols, |i| w[i]);
        assert_eq!(q[3 * cols + 11], 0);
        w[3 * cols + 11] = 0.0;
        assert_eq!(s[1], 0.0);
        assert_eq!(s[2], 4.0 / 127.0);
        assert_eq!(q[2 * cols + 7], 127);
        for r in 0..rows {
            let max = w[r * cols..(r + 1) * cols]
                .iter()
                .fold(0f32, |a, v| a.max(v.abs()));
            assert!(q[r * cols..(r + 1) * cols].iter().any(|v| v.abs() == 127) || max == 0.0);
            for j in 0..cols {
                let err = (q[r * cols + j] as f32 * s[r] - w[r * cols + j]).abs();
                assert!(err <= s[r] * 0.5 + 1e-6, "row {r} col {j}: error {err}");
            }
        }
    }

    /// Rows widened with SIMD loads quantize exactly as the per-element conversion does, on
    /// row lengths that end inside a vector, with NaN and infinite weights among them.
    #[test]
    fn quantizing_narrow_rows_equals_the_per_element_conversion() {
        for &(n, k) in &[(3usize, 37usize), (40, 1031), (2, 16)] {
            let mut tw = weights(n, k, 5);
            tw.bf16[k + 3] = bf16::NAN;
            tw.f16[2 * k - 1] = f16::INFINITY;
            let want = quantize_int8(n, k, |i| tw.bf16[i].to_f32());
            assert_eq!(quantize_int8_rows(&tw.bf16, n, k), want, "bf16 {n}×{k}");
            let want = quantize_int8(n, k, |i| tw.f16[i].to_f32());
            let got = quantize_int8_rows(&tw.f16, n, k);
            // A row with an infinite weight has a NaN scale: compare its bits.
            assert_eq!(got.0, want.0, "f16 {n}×{k}");
            let bits = |s: &[f32]| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got.1), bits(&want.1), "f16 {n}×{k}");
            let want = quantize_int8(n, k, |i| tw.f16_f32[i]);
            assert_eq!(quantize_int8_rows(&tw.f16_f32, n, k), want, "f32 {n}×{k}");
        }
    }

    /// Deterministic standard normal values (Box–Muller over a 64-bit LCG).
    fn normal(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut uniform = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..len)
            .map(|_| {
                let (u, v) = (uniform(), uniform());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            })
            .collect()
    }

    /// Relative L2 error of y = x·wᵀ with int8 weights (per-row scales, through the GEMV
    /// kernel) against the f32 product, on Gaussian weights and on weights with outliers
    /// (0.1 % at 10σ, as trained matrices have); per-block-of-32 scales and bf16 rounding
    /// computed alongside for comparison. Prints the figures (`-- --nocapture`).
    #[test]
    fn int8_drift_against_f32() {
        use crate::kernels::gemv::gemv;
        let (n, k, m) = (512, 3072, 4);
        let x = normal(m * k, 1);
        for (case, outliers) in [("gaussian", false), ("outliers", true)] {
            let mut w = normal(n * k, 2);
            if outliers {
                for (i, v) in w.iter_mut().enumerate() {
                    if i % 997 == 0 {
                        *v *= 10.0;
                    }
                }
            }
            let exact: Vec<f64> = (0..m * n)
                .map(|o| {
                    let (i, r) = (o / n, o % n);
                    (0..k)
                        .map(|j| x[i * k + j] as f64 * w[r * k + j] as f64)
                        .sum()
                })
                .collect();
            let rel = |y: &[f64]| {
                let num: f64 = y.iter().zip(&exact).map(|(a, b)| (a - b).powi(2)).sum();
                let den: f64 = exact.iter().map(|b| b * b).sum();
                (num / den).sqrt()
            };
            let (q, s) = quantize_int8(n, k, |i| w[i]);
            let mut y = vec![0f32; m * n];
            gemv(
                &x,
                &WeightMatrix::with_scales(&q, &s, n, k),
                None,
                &mut y,
                m,
            );
            let per_row = rel(&y.iter().map(|&v| v as f64).collect::<Vec<_>>());
            // Per block of 32: each block its own scale (reference arithmetic in f64).
            let blocked: Vec<f32> = w
                .chunks(32)
                .flat_map(|b| {
                    let (qb, sb) = quantize_int8(1, b.len(), |i| b[i]);
                    qb.into_iter()
                        .map(move |q| q as f32 * sb[0])
                        .collect::<Vec<_>>()
                })
                .collect();
            let bf: Vec<f32> = w
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_f32())
                .collect();
            let via = |wq: &[f32]| -> Vec<f64> {
                (0..m * n)
                    .map(|o| {
                        let (i, r) = (o / n, o % n);
                        (0..k)
                            .map(|j| x[i * k + j] as f64 * wq[r * k + j] as f64)
                            .sum()
                    })
                    .collect()
            };
            let per_block = rel(&via(&blocked));
            let bf16 = rel(&via(&bf));
            println!(
                "int8 drift, {case}: per-row scales {:.3} %, per-32-block scales {:.3} %, bf16 {:.3} %",
                per_row * 100.0,
                per_block * 100.0,
                bf16 * 100.0
            );
            assert!(
                per_row < if outliers { 0.05 } else { 0.02 },
                "{case}: {per_row}"
            );
            assert!(bf16 < 0.01);
        }
    }
}
