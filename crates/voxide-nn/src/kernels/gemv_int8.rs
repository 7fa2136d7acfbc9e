//! The int8 GEMV's integer path: x is quantized to int16 per block of [`X_BLOCK`] values
//! (x ≈ d_b · q, d_b = max|x_b| / 32767), and each block's products accumulate exactly in
//! int32 (AVX2 `vpmovsxbw` + `vpmaddwd`: 16 weights per multiply; AVX-512BW: 32), then once
//! per block in f32:
//! y = scale_row · Σ_b d_b · Σ_{j∈b} q_j · w_j.
//!
//! Widening every int8 weight to f32 (sign extension, integer conversion, FMA: three
//! operations per 8 weights) capped one Zen 3 core at ~17.5 GB/s of weights from L2 (bf16:
//! ~37); the integer products, one multiply per 16 weights, read 33.5 (PERFORMANCE.md #65:
//! from DRAM the Zen 3 step is no faster, the gain is for CPUs and caches where the
//! arithmetic was the limit). The int16 activations keep ~15 bits per block (relative error
//! ≤ 1.6e-5 of the block's largest |x|), far below the weights' own 8-bit rounding;
//! llama.cpp's q8_0 × q8_0 scheme rounds x to 8 bits instead.
//!
//! NEON (`vmovl_s8` + `vmlal_s16`) and the portable body compute the same block sums.

use super::gemv::{
    in_row_blocks, prefetch_rows, store_output, with_prefetch, OutPtr, ReadAhead, WeightMatrix,
};
use super::simd::{Isa, Scalar, Simd};
use std::cell::Cell;

#[cfg(target_arch = "x86_64")]
use super::simd::{Avx2, Avx512};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "aarch64")]
use super::simd::Neon;
#[cfg(target_arch = "aarch64")]
use std::arch::aarch64::*;

/// Values of x per int16 scale. 256 products of |w| ≤ 127 and |q| ≤ 32767 stay below 2^31
/// in one lane's sum (16 multiplies of 2 products), so a block never overflows.
pub const X_BLOCK: usize = 256;

/// The m rows of x, quantized: `codes` m × k, `scales` m × ⌈k / X_BLOCK⌉.
pub(crate) struct QuantizedX {
    codes: Vec<i16>,
    scales: Vec<f32>,
    k: usize,
}

thread_local! {
    /// The last call's buffers, reused so that a decoder step allocates nothing. Taken, not
    /// borrowed: a rayon thread that runs another GEMV while waiting finds it empty.
    static SPARE: Cell<Option<QuantizedX>> = const { Cell::new(None) };
}

impl QuantizedX {
    /// x (m × k) quantized into this thread's spare buffers.
    pub(crate) fn new(x: &[f32], m: usize, k: usize) -> Self {
        let mut q = SPARE.take().unwrap_or(QuantizedX {
            codes: Vec::new(),
            scales: Vec::new(),
            k,
        });
        q.k = k;
        q.codes.clear();
        q.codes.resize(m * k, 0);
        q.scales.clear();
        let (x, codes) = (&x[..m * k], &mut q.codes);
        #[cfg(target_arch = "x86_64")]
        if Isa::Avx2.is_available() {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn avx2(x: &[f32], k: usize, codes: &mut [i16], scales: &mut Vec<f32>) {
                quantize(x, k, codes, scales)
            }
            // SAFETY: AVX2, FMA and F16C are available (checked above).
            unsafe { avx2(x, k, codes, &mut q.scales) };
            return q;
        }
        quantize(x, k, codes, &mut q.scales);
        q
    }

    /// Hands the buffers back to this thread for the next call.
    pub(crate) fn recycle(self) {
        SPARE.set(Some(self));
    }

    /// The f32 value each code stands for (tests).
    #[cfg(test)]
    pub(crate) fn dequantized(&self) -> Vec<f32> {
        let per_row = self.k.div_ceil(X_BLOCK);
        self.codes
            .iter()
            .enumerate()
            .map(|(e, &c)| {
                let (i, j) = (e / self.k, e % self.k);
                c as f32 * self.scales[i * per_row + j / X_BLOCK]
            })
            .collect()
    }
}

/// Quantizes each row of x (k values) per [`X_BLOCK`]: written so that it vectorises (the
/// largest |x| as the maximum of the magnitude bits, which order like the values; rounding
/// half away from zero by truncation, as `round` is a libm call on baseline x86-64).
#[inline(always)]
fn quantize(x: &[f32], k: usize, codes: &mut [i16], scales: &mut Vec<f32>) {
    for (row, out) in x
        .chunks_exact(k.max(1))
        .zip(codes.chunks_exact_mut(k.max(1)))
    {
        for (block, out) in row.chunks(X_BLOCK).zip(out.chunks_mut(X_BLOCK)) {
            let bits = block
                .iter()
                .fold(0u32, |a, v| a.max(v.to_bits() & 0x7fff_ffff));
            if bits >= 0x7f80_0000 {
                // A NaN or infinite x reaches y through its block's scale.
                out.fill(0);
                scales.push(f32::NAN);
                continue;
            }
            let d = f32::from_bits(bits) / 32767.0;
            // A subnormal d (all |x| below ~1e-34) would overflow 1/d: such x count as 0.
            let inv = if d.is_normal() { 1.0 / d } else { 0.0 };
            for (o, v) in out.iter_mut().zip(block) {
                // SAFETY: |v · inv| ≤ 32767 (v is finite, at most the block's largest), so
                // the rounded value fits i32. The unchecked conversion vectorises; `as`, which
                // saturates and maps NaN to 0, compiled to a scalar conversion per value.
                *o = unsafe { (v * inv + 0.5f32.copysign(*v)).to_int_unchecked::<i32>() } as i16;
            }
            scales.push(d);
        }
    }
}

/// Output rows r0..r1 of y (m × n) = x · wᵀ (+ bias) for int8 `w`, on the integer path of
/// `isa` (for `Isa::Avx512`, AVX-512BW where the CPU has it, else AVX2; portable where
/// neither runs).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows(
    isa: Isa,
    x: &QuantizedX,
    w: WeightMatrix<i8>,
    bias: Option<&[f32]>,
    y: OutPtr,
    m: usize,
    r0: usize,
    r1: usize,
    ahead: ReadAhead,
) {
    /// Runs the body compiled for `$features` as `$simd` (the caller checked the features).
    #[cfg(target_arch = "x86_64")]
    macro_rules! x86_entry {
        ($features:literal, $simd:ty) => {{
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn entry(
                x: &QuantizedX,
                w: WeightMatrix<i8>,
                bias: Option<&[f32]>,
                y: OutPtr,
                m: usize,
                r0: usize,
                r1: usize,
                ahead: ReadAhead,
            ) {
                // SAFETY: forwarded from the caller.
                unsafe { rows_body::<$simd>(x, w, bias, y, m, r0, r1, ahead) }
            }
            // SAFETY: the features are available (checked by the caller); y holds m × n.
            return unsafe { entry(x, w, bias, y, m, r0, r1, ahead) };
        }};
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && avx512_int_dot() {
        // One row of x is bound by the weights' bytes either way.
        if m > 1 && std::is_x86_feature_detected!("avx512vnni") {
            x86_entry!("avx2,fma,f16c,avx512f,avx512bw,avx512vnni", Avx512Vnni);
        }
        x86_entry!("avx2,fma,f16c,avx512f,avx512bw", Avx512);
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512) && Isa::Avx2.is_available() {
        x86_entry!("avx2,fma,f16c", Avx2);
    }
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::Neon {
        // SAFETY: Advanced SIMD is part of AArch64; y holds m × n.
        return unsafe { rows_body::<Neon>(x, w, bias, y, m, r0, r1, ahead) };
    }
    let _ = isa;
    // SAFETY: the portable body needs no instruction set; y holds m × n.
    unsafe { rows_body::<Scalar>(x, w, bias, y, m, r0, r1, ahead) }
}

/// Integer products on one instruction set: `PAIRS` int8 weights against as many int16 codes
/// of x per multiply, summed in pairs into int32 lanes; f32 on `S`.
trait IntDot {
    type S: Simd;
    /// int32 sums, one per f32 lane of [`Simd::V`].
    type I: Copy;
    /// `PAIRS` codes of x.
    type X: Copy;
    /// Weights per multiply (two per int32 lane).
    const PAIRS: usize;
    unsafe fn izero() -> Self::I;
    unsafe fn load_x(p: *const i16) -> Self::X;
    /// acc + pairwise sums of w[..PAIRS] · x.
    unsafe fn madd(acc: Self::I, w: *const i8, x: Self::X) -> Self::I;
    unsafe fn to_f32(v: Self::I) -> <Self::S as Simd>::V;
}

impl IntDot for Scalar {
    type S = Scalar;
    type I = [i32; 8];
    type X = [i16; 16];
    const PAIRS: usize = 16;
    #[inline(always)]
    unsafe fn izero() -> Self::I {
        [0; 8]
    }
    #[inline(always)]
    unsafe fn load_x(p: *const i16) -> Self::X {
        (p as *const [i16; 16]).read_unaligned()
    }
    #[inline(always)]
    unsafe fn madd(acc: Self::I, w: *const i8, x: Self::X) -> Self::I {
        let w = (w as *const [i8; 16]).read_unaligned();
        // Lanes l and l + 8 share a sum (contiguous halves vectorise; the pairing is free, as
        // only each block's total matters).
        std::array::from_fn(|l| {
            acc[l] + w[l] as i32 * x[l] as i32 + w[l + 8] as i32 * x[l + 8] as i32
        })
    }
    #[inline(always)]
    unsafe fn to_f32(v: Self::I) -> <Self::S as Simd>::V {
        v.map(|s| s as f32)
    }
}

#[cfg(target_arch = "x86_64")]
impl IntDot for Avx2 {
    type S = Avx2;
    type I = __m256i;
    type X = __m256i;
    const PAIRS: usize = 16;
    #[inline(always)]
    unsafe fn izero() -> Self::I {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn load_x(p: *const i16) -> Self::X {
        _mm256_loadu_si256(p as *const __m256i)
    }
    #[inline(always)]
    unsafe fn madd(acc: Self::I, w: *const i8, x: Self::X) -> Self::I {
        let w16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(w as *const __m128i));
        _mm256_add_epi32(acc, _mm256_madd_epi16(w16, x))
    }
    #[inline(always)]
    unsafe fn to_f32(v: Self::I) -> <Self::S as Simd>::V {
        _mm256_cvtepi32_ps(v)
    }
}

/// Whether the 512-bit integer products can run: AVX-512BW's byte/word forms beside F.
#[cfg(target_arch = "x86_64")]
fn avx512_int_dot() -> bool {
    Isa::Avx512.is_available() && std::is_x86_feature_detected!("avx512bw")
}

/// 32 weights per multiply: half the instructions per byte of AVX2's, which on CPUs with
/// full-width 512-bit units (Zen 5, Intel) is what kept cached int8 rows at ~30 GB/s a core.
#[cfg(target_arch = "x86_64")]
impl IntDot for Avx512 {
    type S = Avx512;
    type I = __m512i;
    type X = __m512i;
    const PAIRS: usize = 32;
    #[inline(always)]
    unsafe fn izero() -> Self::I {
        _mm512_setzero_si512()
    }
    #[inline(always)]
    unsafe fn load_x(p: *const i16) -> Self::X {
        _mm512_loadu_si512(p as *const __m512i)
    }
    #[inline(always)]
    unsafe fn madd(acc: Self::I, w: *const i8, x: Self::X) -> Self::I {
        let w16 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(w as *const __m256i));
        _mm512_add_epi32(acc, _mm512_madd_epi16(w16, x))
    }
    #[inline(always)]
    unsafe fn to_f32(v: Self::I) -> <Self::S as Simd>::V {
        _mm512_cvtepi32_ps(v)
    }
}

/// AVX-512 VNNI: `vpdpwssd` multiplies, sums in pairs and accumulates in one instruction, where
/// `vpmaddwd` + `vpaddd` take two — the same int32 sums exactly (no pair sum of |w| ≤ 128
/// products wraps, and integer adds do not round). Half the arithmetic per row of x: a step's
/// GEMV of several rows (concurrent streams' steps taken together) stays bound by the weights'
/// bytes where the two-instruction form is bound by its multiplies from m ≈ 3 on (9216 × 3072
/// from L3 on Zen 5, 2 threads, m = 4: PERFORMANCE.md #179).
#[cfg(target_arch = "x86_64")]
struct Avx512Vnni;

#[cfg(target_arch = "x86_64")]
impl IntDot for Avx512Vnni {
    type S = Avx512;
    type I = __m512i;
    type X = __m512i;
    const PAIRS: usize = 32;
    #[inline(always)]
    unsafe fn izero() -> Self::I {
        Avx512::izero()
    }
    #[inline(always)]
    unsafe fn load_x(p: *const i16) -> Self::X {
        Avx512::load_x(p)
    }
    #[inline(always)]
    unsafe fn madd(acc: Self::I, w: *const i8, x: Self::X) -> Self::I {
        let w16 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(w as *const __m256i));
        _mm512_dpwssd_epi32(acc, w16, x)
    }
    #[inline(always)]
    unsafe fn to_f32(v: Self::I) -> <Self::S as Simd>::V {
        Avx512::to_f32(v)
    }
}

#[cfg(target_arch = "aarch64")]
impl IntDot for Neon {
    type S = Neon;
    type I = int32x4_t;
    type X = int16x8_t;
    const PAIRS: usize = 8;
    #[inline(always)]
    unsafe fn izero() -> Self::I {
        vdupq_n_s32(0)
    }
    #[inline(always)]
    unsafe fn load_x(p: *const i16) -> Self::X {
        vld1q_s16(p)
    }
    #[inline(always)]
    unsafe fn madd(acc: Self::I, w: *const i8, x: Self::X) -> Self::I {
        let w16 = vmovl_s8(vld1_s8(w));
        vmlal_high_s16(vmlal_s16(acc, vget_low_s16(w16), vget_low_s16(x)), w16, x)
    }
    #[inline(always)]
    unsafe fn to_f32(v: Self::I) -> <Self::S as Simd>::V {
        vcvtq_f32_s32(v)
    }
}

/// Dispatches on the rows of x to the body with its weight rows per pass (R: each load of x
/// serves R rows; R · M int32 and f32 accumulators must fit the registers).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_body<S: IntDot>(
    x: &QuantizedX,
    w: WeightMatrix<i8>,
    bias: Option<&[f32]>,
    y: OutPtr,
    m: usize,
    r0: usize,
    r1: usize,
    ahead: ReadAhead,
) {
    let a = ahead.bytes;
    macro_rules! go {
        ($m:literal, $r:literal) => {
            with_prefetch!(ahead.prefetch, PF => rows_m::<S, $m, $r, PF>(x, w, bias, y, r0, r1, a))
        };
    }
    // Two weight rows a pass for every row count where 2 · m sums, m codes of x and the
    // weights fit the vector registers: each load of x serves both (9216 × 3072 int8 from L3,
    // Zen 5, 2 threads, m = 4: 0.84 → 0.60 ms; PERFORMANCE.md #179). With 16 registers up to
    // m = 4 (Zen 3, from DRAM, paired with one row a pass: m = 3 0.80–0.87×, m = 4 0.90–0.95×;
    // #200), one row a pass beyond.
    let two = S::S::REGISTERS >= 32;
    match (m, two) {
        (1, _) => go!(1, 4),
        (2, _) => go!(2, 2),
        (3, _) => go!(3, 2),
        (4, _) => go!(4, 2),
        (5, true) => go!(5, 2),
        (6, true) => go!(6, 2),
        (7, true) => go!(7, 2),
        (8, true) => go!(8, 2),
        (5, false) => go!(5, 1),
        (6, false) => go!(6, 1),
        (7, false) => go!(7, 1),
        (8, false) => go!(8, 1),
        _ => unreachable!("gemv takes at most 8 rows"),
    }
}

/// Rows r0..r1, `R` weight rows at a time (the rest one by one).
#[inline(always)]
unsafe fn rows_m<S: IntDot, const M: usize, const R: usize, const PF: u8>(
    x: &QuantizedX,
    w: WeightMatrix<i8>,
    bias: Option<&[f32]>,
    y: OutPtr,
    r0: usize,
    r1: usize,
    ahead: usize,
) {
    in_row_blocks::<R>(
        r0,
        r1,
        |r, gap| row_block::<S, M, R, PF>(x, w, bias, y, r, gap, ahead),
        |r| row_block::<S, M, 1, PF>(x, w, bias, y, r, 0, ahead),
    );
}

/// Multiplies per pass over a row: one 64-byte cache line of int8 weights.
const UNROLL: usize = 4;

/// Weight rows r + q · gap (q < R) against every row of x.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // ri and i index the inner dimensions of the sums
unsafe fn row_block<S: IntDot, const M: usize, const R: usize, const PF: u8>(
    x: &QuantizedX,
    w: WeightMatrix<i8>,
    bias: Option<&[f32]>,
    y: OutPtr,
    r: usize,
    gap: usize,
    ahead: usize,
) {
    let (n, k) = (w.rows, w.cols);
    let per_row = k.div_ceil(X_BLOCK);
    let row_of: [usize; R] = std::array::from_fn(|ri| r + ri * gap);
    let wp: [*const i8; R] = row_of.map(|row| w.data.as_ptr().add(row * k));
    let xp: [*const i16; M] = std::array::from_fn(|i| x.codes.as_ptr().add(i * k));
    let mut sums = [[S::S::zero(); M]; R];
    let mut tails = [[0f32; M]; R];
    for b in 0..per_row {
        let (j0, j1) = (b * X_BLOCK, ((b + 1) * X_BLOCK).min(k));
        let d: [f32; M] = std::array::from_fn(|i| x.scales[i * per_row + b]);
        let mut acc = [[S::izero(); M]; R];
        let mut j = j0;
        while j + UNROLL * S::PAIRS <= j1 {
            prefetch_rows::<S::S, i8, R, PF>(&wp, j, UNROLL * S::PAIRS, ahead);
            for u in 0..UNROLL {
                let xv: [S::X; M] = std::array::from_fn(|i| S::load_x(xp[i].add(j + u * S::PAIRS)));
                for ri in 0..R {
                    for i in 0..M {
                        acc[ri][i] = S::madd(acc[ri][i], wp[ri].add(j + u * S::PAIRS), xv[i]);
                    }
                }
            }
            j += UNROLL * S::PAIRS;
        }
        while j + S::PAIRS <= j1 {
            let xv: [S::X; M] = std::array::from_fn(|i| S::load_x(xp[i].add(j)));
            for ri in 0..R {
                for i in 0..M {
                    acc[ri][i] = S::madd(acc[ri][i], wp[ri].add(j), xv[i]);
                }
            }
            j += S::PAIRS;
        }
        for ri in 0..R {
            for i in 0..M {
                sums[ri][i] = S::S::fma(S::to_f32(acc[ri][i]), S::S::splat(d[i]), sums[ri][i]);
                if j < j1 {
                    let tail: i32 = (j..j1)
                        .map(|jj| *wp[ri].add(jj) as i32 * *xp[i].add(jj) as i32)
                        .sum();
                    tails[ri][i] += tail as f32 * d[i];
                }
            }
        }
    }
    for ri in 0..R {
        for i in 0..M {
            let total = S::S::sum(sums[ri][i]) + tails[ri][i];
            store_output(y, n, i, row_of[ri], total, w.scales, bias);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemv::tests::{check_rounded_x, data, reference, weights};
    use crate::kernels::gemv::{gemv, gemv_on};

    #[test]
    fn codes_stand_for_x_within_half_a_step() {
        // A block with an outlier, a zero block, a tail block of 44 values.
        let k = 2 * X_BLOCK + 44;
        let mut x = data(2 * k, 5);
        x[3] = 1000.0;
        x[X_BLOCK..2 * X_BLOCK].fill(0.0);
        let q = QuantizedX::new(&x, 2, k);
        assert_eq!(q.scales.len(), 2 * 3);
        assert_eq!(q.scales[1], 0.0, "a zero block");
        assert_eq!(
            q.scales[0],
            1000.0 / 32767.0,
            "the outlier sets its block's step"
        );
        for (e, (&v, d)) in x.iter().zip(q.dequantized()).enumerate() {
            let step = q.scales[(e / k) * 3 + (e % k) / X_BLOCK];
            assert!(
                (v - d).abs() <= step * 0.5 * (1.0 + 1e-5),
                "x[{e}] = {v} as {d}"
            );
        }
        assert!(q.codes.iter().all(|c| c.unsigned_abs() <= 32767));
        assert_eq!(q.codes[3], 32767, "the outlier takes the largest code");
    }

    /// Against the product of the unquantized x: the error is what x's rounding allows,
    /// Σ_j |w_j| · step_b / 2, plus f32 accumulation, on every path.
    #[test]
    fn error_is_bounded_by_the_rounding_of_x() {
        let (n, k) = (37, 3 * X_BLOCK + 19);
        let tw = weights(n, k, 11);
        for m in [1usize, 2, 4, 8] {
            let mut x = data(m * k, 40 + m as u32);
            x[k / 2] = -250.0; // an outlier in row 0's second block
            let want = reference(&x, &tw.i8_f32, None, m, k);
            for isa in Isa::available() {
                let mut y = vec![0f32; m * n];
                gemv_on(
                    isa,
                    &x,
                    &WeightMatrix::with_scales(&tw.i8, &tw.scales, n, k),
                    None,
                    &mut y,
                    m,
                );
                let what = format!("{isa:?} m{m}");
                check_rounded_x(&y, &want, &x, &tw.i8_f32, m, (X_BLOCK, 32767.0), &what);
            }
        }
    }

    /// Each row of x in a product of several (the steps of concurrent streams) gets bit for
    /// bit what it gets alone, on every path: the VNNI form's sums equal the two-instruction
    /// form's, and two weight rows a pass keep each output's order.
    #[test]
    fn rows_of_x_together_equal_each_alone() {
        let (n, k) = (13, 2 * X_BLOCK + 70);
        let tw = weights(n, k, 21);
        let w = WeightMatrix::with_scales(&tw.i8, &tw.scales, n, k);
        for isa in Isa::available() {
            for m in 2..=8 {
                let x = data(m * k, 60 + m as u32);
                let mut together = vec![0f32; m * n];
                gemv_on(isa, &x, &w, None, &mut together, m);
                for i in 0..m {
                    let mut alone = vec![0f32; n];
                    gemv_on(isa, &x[i * k..(i + 1) * k], &w, None, &mut alone, 1);
                    assert_eq!(
                        &together[i * n..(i + 1) * n],
                        &alone[..],
                        "{isa:?} m{m} row {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_nan_or_infinite_x_reaches_its_outputs() {
        let (n, k) = (5, 300);
        let tw = weights(n, k, 2);
        for bad in [f32::NAN, f32::INFINITY] {
            let mut x = data(2 * k, 1);
            x[k + 7] = bad;
            let mut y = vec![0f32; 2 * n];
            let w = WeightMatrix::with_scales(&tw.i8, &tw.scales, n, k);
            gemv(&x, &w, None, &mut y, 2);
            assert!(y[..n].iter().all(|v| v.is_finite()), "row 0 is clean");
            assert!(y[n..].iter().all(|v| v.is_nan()), "row 1 has {bad}");
        }
    }

    #[test]
    fn tiny_values_count_as_zero_instead_of_overflowing() {
        let (n, k) = (3, 40);
        let tw = weights(n, k, 4);
        let x = vec![1e-40f32; k];
        let mut y = vec![1f32; n];
        gemv(
            &x,
            &WeightMatrix::with_scales(&tw.i8, &tw.scales, n, k),
            None,
            &mut y,
            1,
        );
        assert!(y.iter().all(|&v| v == 0.0), "{y:?}");
    }
}
