//! The small-M product for int8 weights on CPUs with VNNI, 512-bit (AVX-512 VNNI: Zen 4 and 5,
//! Intel Xeon from Ice Lake) or 256-bit (AVX-VNNI: Intel cores from Alder Lake, which have no
//! AVX-512): x is quantized to int16 per block of [`X_BLOCK`] values, as the int8 GEMV does
//! ([`super::gemv_int8`]: ~15 bits of each block's largest |x|, far finer than the weights'
//! 8), and each block's products sum exactly in int32 by `vpdpwssd`, 32 multiply-adds per
//! instruction where the f32 path ([`super::small_m`]) widens the weights and runs 16 per FMA;
//! once per block the sums meet x's scales in f32:
//! y[i][r] = scale_r · Σ_b d[i][b] · Σ_{j∈b} q[i][j] · w[r][j].
//!
//! The register blocking is [`super::small_m`]'s: panels of 2 vectors of rows of x, now as int16
//! pairs (x[i][2j], x[i][2j + 1]) per 32-bit lane, against strips of 6 weight rows widened to
//! int16 in L1, one broadcast pair per row: 12 int32 accumulators (AVX2's 16 registers hold
//! them with the 2 x vectors and the broadcast), added into the f32 tile once per block.

use super::gemv::{OutPtr, WeightMatrix};
use super::gemv_int8::{QuantizedX, X_BLOCK};
use super::simd::Isa;
use super::small_m::{
    for_each_task, run_task, with_blocking, Scratch, StripKernel, MAX_BLOCK, M_CHUNK, PASS_ROWS,
    W_ROWS, X_VECS,
};
use std::arch::x86_64::*;

/// Whether this CPU runs the integer small-M product on `isa`'s vectors.
pub fn available(isa: Isa) -> bool {
    match isa {
        Isa::Avx512 => {
            isa.is_available()
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vnni")
        }
        Isa::Avx2 => isa.is_available() && std::is_x86_feature_detected!("avxvnni"),
        _ => false,
    }
}

/// The vector operations of the kernel on one instruction set.
trait Vnni {
    /// int32 lanes per vector.
    const LANES: usize;
    type I: Copy;
    unsafe fn zero() -> Self::I;
    unsafe fn load(p: *const i32) -> Self::I;
    unsafe fn splat(v: i32) -> Self::I;
    /// acc + pairwise products of the int16 halves of a and b.
    unsafe fn dot(acc: Self::I, a: Self::I, b: Self::I) -> Self::I;
    /// `LANES` · 2 int8 values at src widened to int16 at dst.
    unsafe fn widen(src: *const i8, dst: *mut i16);
    /// out[l] += sums[l] · d[l] for the LANES lanes.
    unsafe fn scale_add(out: *mut f32, sums: Self::I, d: *const f32);
}

struct Avx512Vnni;

impl Vnni for Avx512Vnni {
    const LANES: usize = 16;
    type I = __m512i;
    #[inline(always)]
    unsafe fn zero() -> Self::I {
        _mm512_setzero_si512()
    }
    #[inline(always)]
    unsafe fn load(p: *const i32) -> Self::I {
        _mm512_loadu_si512(p as *const _)
    }
    #[inline(always)]
    unsafe fn splat(v: i32) -> Self::I {
        _mm512_set1_epi32(v)
    }
    #[inline(always)]
    unsafe fn dot(acc: Self::I, a: Self::I, b: Self::I) -> Self::I {
        _mm512_dpwssd_epi32(acc, a, b)
    }
    #[inline(always)]
    unsafe fn widen(src: *const i8, dst: *mut i16) {
        let v = _mm512_cvtepi8_epi16(_mm256_loadu_si256(src as *const _));
        _mm512_storeu_si512(dst as *mut _, v);
    }
    #[inline(always)]
    unsafe fn scale_add(out: *mut f32, sums: Self::I, d: *const f32) {
        let v = _mm512_fmadd_ps(
            _mm512_cvtepi32_ps(sums),
            _mm512_loadu_ps(d),
            _mm512_loadu_ps(out),
        );
        _mm512_storeu_ps(out, v);
    }
}

struct AvxVnni;

impl Vnni for AvxVnni {
    const LANES: usize = 8;
    type I = __m256i;
    #[inline(always)]
    unsafe fn zero() -> Self::I {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn load(p: *const i32) -> Self::I {
        _mm256_loadu_si256(p as *const _)
    }
    #[inline(always)]
    unsafe fn splat(v: i32) -> Self::I {
        _mm256_set1_epi32(v)
    }
    #[inline(always)]
    unsafe fn dot(acc: Self::I, a: Self::I, b: Self::I) -> Self::I {
        _mm256_dpwssd_avx_epi32(acc, a, b)
    }
    #[inline(always)]
    unsafe fn widen(src: *const i8, dst: *mut i16) {
        let v = _mm256_cvtepi8_epi16(_mm_loadu_si128(src as *const _));
        _mm256_storeu_si256(dst as *mut _, v);
    }
    #[inline(always)]
    unsafe fn scale_add(out: *mut f32, sums: Self::I, d: *const f32) {
        let v = _mm256_fmadd_ps(
            _mm256_cvtepi32_ps(sums),
            _mm256_loadu_ps(d),
            _mm256_loadu_ps(out),
        );
        _mm256_storeu_ps(out, v);
    }
}

/// x quantized and packed for the micro-kernel, `PASS_ROWS` rows at most.
struct Panels {
    /// `[panel][pair][lane]`: two int16 codes of x per 32-bit lane, zero past the last row
    /// and (k odd) in the last pair's upper half.
    codes: Vec<i16>,
    /// `[panel][block][lane]`: the scale of each row's block, zero past the last row.
    scales: Vec<f32>,
}

impl Panels {
    /// x (m × k) in panels of `width` rows.
    fn pack(x: &[f32], m: usize, k: usize, width: usize) -> Self {
        let (pairs, blocks) = (k.div_ceil(2), k.div_ceil(X_BLOCK));
        let panels = m.div_ceil(width);
        let q = QuantizedX::new(x, m, k);
        let mut codes = vec![0i16; panels * pairs * width * 2];
        let mut scales = vec![0f32; panels * blocks * width];
        for i in 0..m {
            let (p, l) = (i / width, i % width);
            let row = &q.codes()[i * k..][..k];
            for (j, &c) in row.iter().enumerate() {
                codes[((p * pairs + j / 2) * width + l) * 2 + j % 2] = c;
            }
            for b in 0..blocks {
                scales[(p * blocks + b) * width + l] = q.scales()[i * blocks + b];
            }
        }
        q.recycle();
        Self { codes, scales }
    }
}

/// y (m × n) = x (m × k) · wᵀ (+ bias) for int8 `w` with its row scales, on `isa`'s vectors;
/// the caller checked the operands and [`available`].
pub(crate) fn matmul(
    isa: Isa,
    x: &[f32],
    w: &WeightMatrix<i8>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    let (n, k) = (w.rows, w.cols);
    let block = k.min(MAX_BLOCK);
    let width = X_VECS
        * if isa == Isa::Avx512 {
            Avx512Vnni::LANES
        } else {
            AvxVnni::LANES
        };
    for (xs, ys) in x[..m * k]
        .chunks(PASS_ROWS * k)
        .zip(y.chunks_mut(PASS_ROWS * n))
    {
        let rows = xs.len() / k;
        let panels = Panels::pack(xs, rows, k, width);
        let out = OutPtr(ys.as_mut_ptr());
        for_each_task(
            n,
            rows * n * k,
            || Scratch::<i16>::new(block.next_multiple_of(2), width),
            // SAFETY: `available` was checked by the caller; the buffers fit (asserted in the
            // task).
            |r0, r1, scratch| unsafe {
                match isa {
                    Isa::Avx512 => {
                        task_avx512(&panels, *w, bias, out, rows, r0, r1, block, scratch)
                    }
                    _ => task_avx2(&panels, *w, bias, out, rows, r0, r1, block, scratch),
                }
            },
        );
    }
}

/// [`task`] on AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn task_avx512(
    panels: &Panels,
    w: WeightMatrix<i8>,
    bias: Option<&[f32]>,
    y: OutPtr,
    m: usize,
    r0: usize,
    r1: usize,
    block: usize,
    scratch: &mut Scratch<i16>,
) {
    // SAFETY: forwarded from the caller; the features are enabled here.
    unsafe { task::<Avx512Vnni>(panels, w, bias, y, m, r0, r1, block, scratch) }
}

/// [`task`] on AVX-VNNI.
#[target_feature(enable = "avx2,fma,avxvnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn task_avx2(
    panels: &Panels,
    w: WeightMatrix<i8>,
    bias: Option<&[f32]>,
    y: OutPtr,
    m: usize,
    r0: usize,
    r1: usize,
    block: usize,
    scratch: &mut Scratch<i16>,
) {
    // SAFETY: forwarded from the caller; the features are enabled here.
    unsafe { task::<AvxVnni>(panels, w, bias, y, m, r0, r1, block, scratch) }
}

/// Output rows r0..r1 for all m rows of x.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn task<V: Vnni>(
    panels: &Panels,
    w: WeightMatrix<i8>,
    bias: Option<&[f32]>,
    y: OutPtr,
    m: usize,
    r0: usize,
    r1: usize,
    block: usize,
    scratch: &mut Scratch<i16>,
) {
    let k = w.cols;
    let width = X_VECS * V::LANES;
    let (pairs, blocks) = (k.div_ceil(2), k.div_ceil(X_BLOCK));
    let stride = block.next_multiple_of(2);
    assert!(
        scratch.strip.len() >= W_ROWS * stride
            && scratch.tile.len() >= (r1 - r0) * M_CHUNK.next_multiple_of(width)
            && panels.codes.len() >= m.div_ceil(width) * pairs * width * 2
            && panels.scales.len() >= m.div_ceil(width) * blocks * width
    );
    let scales = w.scales.expect("int8 weights carry row scales");
    let mut strips = IntStrips::<V> {
        panels,
        w,
        strip: scratch.strip.as_mut_ptr(),
        stride,
        _vnni: std::marker::PhantomData,
    };
    let tile = scratch.tile.as_mut_ptr();
    run_task(&mut strips, m, (r0, r1), block, tile, y, Some(scales), bias);
}

/// The integer kernel's strips: int8 weights widened to int16, unscaled.
struct IntStrips<'a, V> {
    panels: &'a Panels,
    w: WeightMatrix<'a, i8>,
    /// [`W_ROWS`] rows of the current column block, `stride` apart, zero past its end.
    strip: *mut i16,
    stride: usize,
    _vnni: std::marker::PhantomData<V>,
}

impl<V: Vnni> StripKernel for IntStrips<'_, V> {
    const LANES: usize = V::LANES;

    #[inline(always)]
    fn dims(&self) -> (usize, usize) {
        (self.w.rows, self.w.cols)
    }

    #[inline(always)]
    fn weight_bytes(&self) -> (*const u8, usize) {
        (self.w.data.as_ptr() as *const u8, 1)
    }

    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
    }

    #[inline(always)]
    unsafe fn widen(&mut self, t: usize, r: usize, c0: usize, len: usize) {
        let src = self.w.data.as_ptr().add(r * self.w.cols + c0);
        let dst = self.strip.add(t * self.stride);
        let mut j = 0;
        while j + 2 * V::LANES <= len {
            V::widen(src.add(j), dst.add(j));
            j += 2 * V::LANES;
        }
        for jj in j..self.stride {
            *dst.add(jj) = if jj < len { *src.add(jj) as i16 } else { 0 };
        }
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
        let k = self.w.cols;
        let width = X_VECS * V::LANES;
        let (pairs, blocks) = (k.div_ceil(2), k.div_ceil(X_BLOCK));
        let codes = self.panels.codes.as_ptr();
        let xp = codes.add((panel * pairs + c0 / 2) * width * 2) as *const i32;
        let sp = self
            .panels
            .scales
            .as_ptr()
            .add((panel * blocks + c0 / X_BLOCK) * width);
        let wp = self.strip as *const i32;
        let (w_stride, pair_len) = (self.stride / 2, len.div_ceil(2));
        with_blocking!(
            strip_rows,
            vecs,
            micro::<V>(xp, sp, wp, w_stride, pair_len, yp)
        );
    }
}

/// yp[t][i] += Σ_b d[i][b] · Σ_{pairs of b} x[i]·w[t] for the VECS × LANES rows of one panel
/// (pair column jp at `xp + jp · width`, block scales at `sp + b · width`) and ROWS widened
/// weight rows (pair stride `w_stride`), over `pair_len` pairs starting at an x block's start;
/// yp's rows have stride `width`.
#[inline(always)]
unsafe fn micro<V: Vnni, const ROWS: usize, const VECS: usize>(
    xp: *const i32,
    sp: *const f32,
    wp: *const i32,
    w_stride: usize,
    pair_len: usize,
    yp: *mut f32,
) {
    let width = X_VECS * V::LANES;
    let mut jp0 = 0;
    let mut b = 0;
    while jp0 < pair_len {
        let jp1 = (jp0 + X_BLOCK / 2).min(pair_len);
        let mut sums = [[V::zero(); VECS]; ROWS];
        for jp in jp0..jp1 {
            let mut xv = [V::zero(); VECS];
            for (v, x) in xv.iter_mut().enumerate() {
                *x = V::load(xp.add(jp * width + v * V::LANES));
            }
            for (t, s) in sums.iter_mut().enumerate() {
                let wv = V::splat(*wp.add(t * w_stride + jp));
                for v in 0..VECS {
                    s[v] = V::dot(s[v], xv[v], wv);
                }
            }
        }
        for (t, s) in sums.iter().enumerate() {
            for (v, &s) in s.iter().enumerate() {
                let lane0 = v * V::LANES;
                V::scale_add(yp.add(t * width + lane0), s, sp.add(b * width + lane0));
            }
        }
        jp0 = jp1;
        b += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemv::tests::{check_quantized_x, data, reference, weights};

    /// Against the product of the unquantized x, within what x's rounding allows: odd and
    /// short widths, widths across x blocks and column blocks, rows around the panels, chunks
    /// and passes, tiles around the strips, on 2 threads.
    /// The instruction sets whose integer path runs on this CPU.
    fn isas() -> Vec<Isa> {
        let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .filter(|&i| available(i))
            .collect();
        if isas.is_empty() {
            eprintln!("no VNNI: the integer small-M path does not run here");
        }
        isas
    }

    #[test]
    fn error_is_bounded_by_the_rounding_of_x() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let shapes = [
            (37, 70, &[1usize, 16, 17, 33, 130, 300][..]),
            (16, 3, &[1, 17, 300]),
            (1031, 20, &[9, 130, 300]),
            (5000, 131, &[17, 39, 64]),
            (1031, 517, &[9, 39, 64]),
            (X_BLOCK, 49, &[32, 129]),
        ];
        for &(k, n, ms) in &shapes {
            let tw = weights(n, k, 11);
            let bias: Vec<f32> = (0..n).map(|i| 0.5 - i as f32 * 0.01).collect();
            for &m in ms {
                let mut x = data(m * k, 100 + m as u32);
                x[k / 2] = -250.0; // an outlier in one block of row 0
                let want = reference(&x, &tw.i8_f32, Some(&bias), m, k);
                let w = WeightMatrix::with_scales(&tw.i8, &tw.scales, n, k);
                for isa in isas() {
                    let mut y = vec![0f32; m * n];
                    pool.install(|| matmul(isa, &x, &w, Some(&bias), &mut y, m));
                    let what = format!("{isa:?} m{m} k{k} n{n}");
                    check_quantized_x(&y, &want, &x, &tw.i8_f32, m, k, &what);
                }
            }
        }
    }

    #[test]
    fn a_nan_or_infinite_x_reaches_only_its_row() {
        let (m, n, k) = (40, 13, 300);
        let tw = weights(n, k, 2);
        let w = WeightMatrix::with_scales(&tw.i8, &tw.scales, n, k);
        for (bad, isa) in [f32::NAN, f32::INFINITY]
            .into_iter()
            .flat_map(|b| isas().into_iter().map(move |i| (b, i)))
        {
            let mut x = data(m * k, 1);
            x[33 * k + 7] = bad;
            let mut y = vec![0f32; m * n];
            matmul(isa, &x, &w, None, &mut y, m);
            for (i, row) in y.chunks(n).enumerate() {
                if i == 33 {
                    assert!(row.iter().all(|v| v.is_nan()), "row 33 has {bad}");
                } else {
                    assert!(row.iter().all(|v| v.is_finite()), "row {i} is clean");
                }
            }
        }
    }
}
