//! The small-M product for int8 weights in integers on x86: x is quantized to 8 bits per block
//! of `X8_BLOCK` values of a row (as llama.cpp quantizes activations for its Q8_0 products,
//! and vLLM's W8A8 per token), and each block's products sum exactly in int32, four bytes per
//! 32-bit lane; once per block the sums meet x's scales in f32. Three kernels ([`Kernel`]):
//! - VNNI, 512-bit (AVX-512 VNNI: Zen 4 and 5, Intel Xeon from Ice Lake) or 256-bit (AVX-VNNI:
//!   Intel cores from Alder Lake, which have no AVX-512): `vpdpbusd`, 64 multiply-adds per
//!   instruction (4× the f32 path's FMA, [`super::small_m`]; 2× the int16 pairs of `vpdpwssd`
//!   this kernel used before). Its first operand is unsigned, so x is stored as q + 128 and
//!   each block's sums lose 128 · Σ w of the block:
//!   `y[i][r] = scale_r · Σ_b d[i][b] · (Σ_{j∈b} (q[i][j] + 128) · w[r][j]
//!   − 128 · Σ_{j∈b} w[r][j])`.
//! - AVX2 without VNNI: `vpmaddubsw` on |w| and x with w's sign (`vpsignb`), then `vpmaddwd`
//!   by ones into int32, as llama.cpp's AVX2 `mul_sum_i8_pairs` does. With x and w in
//!   [-127, 127] (w = -128 too) a pair of products is at most 2 · 128 · 127 < 2¹⁵, so the
//!   int16 sums never saturate, and the block sums equal VNNI's exactly. Four instructions per
//!   32 multiply-adds against four FMAs for the f32 path: on AMD Zen 3, which issues ~3 of
//!   these integer instructions a cycle against 2 FMAs, 1.3–1.4× the f32 rate in registers
//!   and in the kernel (PERFORMANCE.md #152). |w| is stored beside each strip row when the
//!   row is copied to L1, and broadcast like w, instead of an absolute value per weight
//!   broadcast and panel of x (#196: ~6 % on Zen 3). x in 7 bits (q + 64, unsigned) would
//!   drop the sign too, at twice the rounding of x: not taken.
//!
//! The decoder steps' GEMV keeps ~15 bits of x ([`super::gemv_int8`]); 8 bits per block of 128
//! add a rounding of the order of the weights' own.
//!
//! The register blocking is [`super::small_m`]'s: panels of 2 vectors of rows of x, as 4 bytes
//! (x[i][4j..4j + 4]) per 32-bit lane, against strips of 6 weight rows copied to L1 with their
//! block sums, one broadcast of 4 weights per row: 12 int32 accumulators (AVX2's 16 registers
//! hold them with the 2 x vectors and the broadcast), added into the f32 tile once per block.

use super::amx_int8;
use super::convert::{abs_max, round_row};
use super::gemv::{check_operands, OutPtr, WeightMatrix};
use super::simd::Isa;
use super::small_m::{
    copy_strip_row, for_each_task, run_task, with_blocking, Scratch, StripKernel, MAX_BLOCK,
    M_CHUNK, PASS_ROWS, W_ROWS, X_VECS,
};
use std::arch::x86_64::*;

/// An integer small-M kernel, by its instructions and vector width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// `tdpbssd` on AMX tiles ([`super::amx_int8`]: the same block sums, in the same order),
    /// for k a multiple of 64; other shapes as [`Kernel::Avx512Vnni`].
    Amx,
    /// `vpdpbusd` on 512-bit vectors.
    Avx512Vnni,
    /// `vpdpbusd` on 256-bit vectors.
    AvxVnni,
    /// `vpsignb` + `vpmaddubsw` + `vpmaddwd` on 256-bit vectors.
    Avx2,
}

impl Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Kernel; 4] = [
        Kernel::Amx,
        Kernel::Avx512Vnni,
        Kernel::AvxVnni,
        Kernel::Avx2,
    ];

    /// The kernels this CPU runs, fastest first.
    pub fn on_this_cpu() -> Vec<Kernel> {
        Self::ALL.into_iter().filter(|k| k.runs()).collect()
    }

    /// Whether this CPU runs the kernel.
    pub fn runs(self) -> bool {
        match self {
            Kernel::Amx => Kernel::Avx512Vnni.runs() && amx_int8::runs(),
            Kernel::Avx512Vnni => {
                Isa::Avx512.is_available()
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vnni")
            }
            Kernel::AvxVnni => Isa::Avx2.is_available() && std::is_x86_feature_detected!("avxvnni"),
            Kernel::Avx2 => Isa::Avx2.is_available(),
        }
    }

    /// The fastest kernel on vectors no wider than `isa`'s, if this CPU runs one.
    pub fn for_isa(isa: Isa) -> Option<Kernel> {
        let candidates: &[Kernel] = match isa {
            Isa::Avx512 => &Self::ALL,
            Isa::Avx2 => &[Kernel::AvxVnni, Kernel::Avx2],
            _ => &[],
        };
        candidates.iter().copied().find(|k| k.runs())
    }

    /// x's rows per panel: 2 vectors of them.
    fn width(self) -> usize {
        X_VECS
            * match self {
                Kernel::Amx | Kernel::Avx512Vnni => Avx512Vnni::LANES,
                Kernel::AvxVnni => AvxVnni::LANES,
                Kernel::Avx2 => Avx2Sign::LANES,
            }
    }

    /// What x's codes are stored as: q + `offset` in a byte.
    fn offset(self) -> i32 {
        match self {
            Kernel::Amx | Kernel::Avx512Vnni => Avx512Vnni::OFFSET,
            Kernel::AvxVnni => AvxVnni::OFFSET,
            Kernel::Avx2 => Avx2Sign::OFFSET,
        }
    }
}

/// The vector operations of a kernel.
trait ByteDot {
    /// int32 lanes per vector.
    const LANES: usize;
    /// x's codes are stored as q + OFFSET (0 or 128) in a byte.
    const OFFSET: i32;
    /// Weight rows per pass of the micro-kernel: the accumulators of [`W_ROWS`] rows where a
    /// product needs no registers of its own.
    const ROWS_PER_PASS: usize;
    type I: Copy;
    unsafe fn zero() -> Self::I;
    unsafe fn load(p: *const i32) -> Self::I;
    unsafe fn splat(v: i32) -> Self::I;
    /// Whether a product takes |w| as well as w: then each strip row's |w| is stored once
    /// beside the strip ([`IntStrips::widen`]) instead of computed for every panel of x.
    const ABS_WEIGHTS: bool;
    /// acc + the sums of 4 products of the bytes of a (x's codes: q + OFFSET) and the signed
    /// bytes of b (weights), whose magnitudes are b_abs where [`Self::ABS_WEIGHTS`].
    unsafe fn dot(acc: Self::I, a: Self::I, b: Self::I, b_abs: Self::I) -> Self::I;
    /// out[l] += (sums[l] − c) · d[l] for the LANES lanes.
    unsafe fn scale_add(out: *mut f32, sums: Self::I, c: i32, d: *const f32);
}

struct Avx512Vnni;

impl ByteDot for Avx512Vnni {
    const LANES: usize = 16;
    const OFFSET: i32 = 128;
    const ROWS_PER_PASS: usize = W_ROWS;
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
    const ABS_WEIGHTS: bool = false;
    #[inline(always)]
    unsafe fn dot(acc: Self::I, a: Self::I, b: Self::I, _: Self::I) -> Self::I {
        _mm512_dpbusd_epi32(acc, a, b)
    }
    #[inline(always)]
    unsafe fn scale_add(out: *mut f32, sums: Self::I, c: i32, d: *const f32) {
        let sums = _mm512_sub_epi32(sums, _mm512_set1_epi32(c));
        let v = _mm512_fmadd_ps(
            _mm512_cvtepi32_ps(sums),
            _mm512_loadu_ps(d),
            _mm512_loadu_ps(out),
        );
        _mm512_storeu_ps(out, v);
    }
}

/// 256-bit vectors: `vpdpbusd` (AVX-VNNI) where `VNNI`, else AVX2's sign trick.
struct Avx256<const VNNI: bool>;

/// The AVX-VNNI kernel.
type AvxVnni = Avx256<true>;
/// The AVX2 kernel.
type Avx2Sign = Avx256<false>;

impl<const VNNI: bool> ByteDot for Avx256<VNNI> {
    const LANES: usize = 8;
    const OFFSET: i32 = if VNNI { 128 } else { 0 };
    /// Without VNNI a product takes three registers besides the accumulators (|w|, x with w's
    /// sign, the pair sums): with 12 accumulators AVX2's 16 registers spilled them to the stack
    /// in the loop, so the rows go in two passes of ≤ 3 over the same x (from L1).
    const ROWS_PER_PASS: usize = if VNNI { W_ROWS } else { 3 };
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
    const ABS_WEIGHTS: bool = !VNNI;
    #[inline(always)]
    unsafe fn dot(acc: Self::I, a: Self::I, b: Self::I, b_abs: Self::I) -> Self::I {
        if VNNI {
            return _mm256_dpbusd_avx_epi32(acc, a, b);
        }
        // |w| · (x with w's sign) = w · x.
        let pairs = _mm256_maddubs_epi16(b_abs, _mm256_sign_epi8(a, b));
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }
    #[inline(always)]
    unsafe fn scale_add(out: *mut f32, sums: Self::I, c: i32, d: *const f32) {
        let sums = _mm256_sub_epi32(sums, _mm256_set1_epi32(c));
        let v = _mm256_fmadd_ps(
            _mm256_cvtepi32_ps(sums),
            _mm256_loadu_ps(d),
            _mm256_loadu_ps(out),
        );
        _mm256_storeu_ps(out, v);
    }
}

/// Values of a row of x per 8-bit scale: a multiple of 4 (the bytes of a lane) dividing
/// [`MAX_BLOCK`], so that no block straddles a column block. 128 · 255 · 128 stays far below
/// 2³¹ in a lane's sum.
pub(crate) const X8_BLOCK: usize = 128;

/// x quantized and packed for the micro-kernel, `PASS_ROWS` rows at most.
struct Panels {
    /// `[panel][quad][lane]`: four codes q + the kernel's offset of x per 32-bit lane (q = 0
    /// past the last row and past k).
    codes: Vec<u32>,
    /// `[panel][block][lane]`: the scale of each row's block (its largest |x| / 127), zero past
    /// the last row, NaN where the block holds a NaN or infinite value.
    scales: Vec<f32>,
}

impl Panels {
    /// x (m × k) in panels of `kernel`'s width.
    fn pack(x: &[f32], m: usize, k: usize, kernel: Kernel) -> Self {
        let (quads, blocks) = (k.div_ceil(4), k.div_ceil(X8_BLOCK));
        let width = kernel.width();
        let panels = m.div_ceil(width);
        // q + 128 as a byte is q's two's complement with its top bit flipped.
        let flip = if kernel.offset() == 128 {
            0x8080_8080
        } else {
            0
        };
        let mut codes = vec![flip; panels * quads * width];
        let mut scales = vec![0f32; panels * blocks * width];
        let isa = Isa::detect();
        // One row's codes q (0 past k) and block scales.
        let mut row_codes = vec![0i8; quads * 4];
        let mut row_scales = vec![0f32; blocks];
        for i in 0..m {
            let (p, l) = (i / width, i % width);
            quantize_x_row(isa, &x[i * k..][..k], &mut row_codes, &mut row_scales);
            for (b, &d) in row_scales.iter().enumerate() {
                scales[(p * blocks + b) * width + l] = d;
            }
            for (j, quad) in row_codes.chunks(4).enumerate() {
                codes[(p * quads + j) * width + l] =
                    u32::from_le_bytes([0, 1, 2, 3].map(|b| quad[b] as u8)) ^ flip;
            }
        }
        Self { codes, scales }
    }
}

/// A row of x in 8 bits: per block of [`X8_BLOCK`] values its codes q in `codes` (rounded as
/// the weights are at load) and its scale d (the largest |x| / 127) in `scales`, so that
/// x ≈ d · q; a block of zeros has d = 0, one holding a NaN or infinite value d = NaN (and
/// codes 0), which carries to its row's outputs.
pub(crate) fn quantize_x_row(isa: Isa, row: &[f32], codes: &mut [i8], scales: &mut [f32]) {
    for ((part, dst), d) in row
        .chunks(X8_BLOCK)
        .zip(codes.chunks_mut(X8_BLOCK))
        .zip(scales.iter_mut())
    {
        let finite = part.iter().all(|v| v.is_finite());
        let max = abs_max(isa, part);
        let dst = &mut dst[..part.len()];
        if finite && max > 0.0 {
            round_row(isa, part, 127.0 / max, dst);
        } else {
            dst.fill(0);
        }
        *d = if finite { max / 127.0 } else { f32::NAN };
    }
}

/// y (m × n) = x (m × k) · wᵀ (+ bias) for int8 `w` with its row scales, by `kernel`.
///
/// # Panics
/// If the operands do not fit, or the kernel does not [run](Kernel::runs) here.
pub fn matmul(
    kernel: Kernel,
    x: &[f32],
    w: &WeightMatrix<i8>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    check_operands(x, w, bias, y, m);
    assert!(kernel.runs(), "the {kernel:?} kernel does not run here");
    let (n, k) = (w.rows, w.cols);
    if kernel == Kernel::Amx && amx_int8::fits(k) {
        return amx_int8::matmul(x, w, bias, y, m);
    }
    let block = k.min(MAX_BLOCK);
    let width = kernel.width();
    for (xs, ys) in x[..m * k]
        .chunks(PASS_ROWS * k)
        .zip(y.chunks_mut(PASS_ROWS * n))
    {
        let rows = xs.len() / k;
        let panels = Panels::pack(xs, rows, k, kernel);
        let out = OutPtr(ys.as_mut_ptr());
        for_each_task(
            n,
            rows * n * k,
            // Room for a strip and its magnitudes (`IntStrips::strip`).
            || Scratch::<i8>::new(2 * block.next_multiple_of(4), width),
            // SAFETY: the caller checked that the kernel runs; the buffers fit (asserted in the
            // task).
            |r0, r1, scratch| unsafe {
                let task = match kernel {
                    Kernel::Amx | Kernel::Avx512Vnni => task_avx512_vnni,
                    Kernel::AvxVnni => task_avx_vnni,
                    Kernel::Avx2 => task_avx2,
                };
                task(&panels, *w, bias, out, rows, r0, r1, block, scratch)
            },
        );
    }
}

/// [`task`] on AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn task_avx512_vnni(
    panels: &Panels,
    w: WeightMatrix<i8>,
    bias: Option<&[f32]>,
    y: OutPtr,
    m: usize,
    r0: usize,
    r1: usize,
    block: usize,
    scratch: &mut Scratch<i8>,
) {
    // SAFETY: forwarded from the caller; the features are enabled here.
    unsafe { task::<Avx512Vnni>(panels, w, bias, y, m, r0, r1, block, scratch) }
}

/// [`task`] on AVX-VNNI.
#[target_feature(enable = "avx2,fma,avxvnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn task_avx_vnni(
    panels: &Panels,
    w: WeightMatrix<i8>,
    bias: Option<&[f32]>,
    y: OutPtr,
    m: usize,
    r0: usize,
    r1: usize,
    block: usize,
    scratch: &mut Scratch<i8>,
) {
    // SAFETY: forwarded from the caller; the features are enabled here.
    unsafe { task::<AvxVnni>(panels, w, bias, y, m, r0, r1, block, scratch) }
}

/// [`task`] on AVX2.
#[target_feature(enable = "avx2,fma")]
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
    scratch: &mut Scratch<i8>,
) {
    // SAFETY: forwarded from the caller; the features are enabled here.
    unsafe { task::<Avx2Sign>(panels, w, bias, y, m, r0, r1, block, scratch) }
}

/// Output rows r0..r1 for all m rows of x.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn task<V: ByteDot>(
    panels: &Panels,
    w: WeightMatrix<i8>,
    bias: Option<&[f32]>,
    y: OutPtr,
    m: usize,
    r0: usize,
    r1: usize,
    block: usize,
    scratch: &mut Scratch<i8>,
) {
    let k = w.cols;
    let width = X_VECS * V::LANES;
    let (quads, blocks) = (k.div_ceil(4), k.div_ceil(X8_BLOCK));
    let stride = block.next_multiple_of(4);
    assert!(
        scratch.strip.len() >= 2 * W_ROWS * stride
            && scratch.tile.len() >= (r1 - r0) * M_CHUNK.next_multiple_of(width)
            && panels.codes.len() >= m.div_ceil(width) * quads * width
            && panels.scales.len() >= m.div_ceil(width) * blocks * width
            && (block.is_multiple_of(X8_BLOCK) || block == k)
    );
    let scales = w.scales.expect("int8 weights carry row scales");
    let mut strips = IntStrips::<V> {
        panels,
        w,
        strip: scratch.strip.as_mut_ptr(),
        stride,
        sums: [[0; MAX_BLOCK / X8_BLOCK]; W_ROWS],
        _kernel: std::marker::PhantomData,
    };
    let tile = scratch.tile.as_mut_ptr();
    run_task(&mut strips, m, (r0, r1), block, tile, y, Some(scales), bias);
}

/// The integer kernel's strips: int8 weights copied to L1, unscaled, with the codes' offset ·
/// the sum of each x block's weights (taken off once per block).
struct IntStrips<'a, V> {
    panels: &'a Panels,
    w: WeightMatrix<'a, i8>,
    /// [`W_ROWS`] rows of the current column block, `stride` apart, zero past its end; then,
    /// where the kernel takes |w| ([`ByteDot::ABS_WEIGHTS`]), their magnitudes as bytes
    /// (|−128| = 128 unsigned) in as many rows.
    strip: *mut i8,
    stride: usize,
    /// `sums[t][b]` = OFFSET · Σ of strip row t over the column block's x block b.
    sums: [[i32; MAX_BLOCK / X8_BLOCK]; W_ROWS],
    _kernel: std::marker::PhantomData<V>,
}

impl<V: ByteDot> StripKernel for IntStrips<'_, V> {
    const LANES: usize = V::LANES;
    type Elem = i8;

    #[inline(always)]
    fn weights(&self) -> WeightMatrix<'_, i8> {
        self.w
    }

    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
    }

    #[inline(always)]
    unsafe fn widen(&mut self, t: usize, r: usize, c0: usize, len: usize) {
        let dst = std::slice::from_raw_parts_mut(self.strip.add(t * self.stride), self.stride);
        let src = copy_strip_row(&self.w, r, (c0, len), dst);
        if V::ABS_WEIGHTS {
            let abs = std::slice::from_raw_parts_mut(
                self.strip.add((W_ROWS + t) * self.stride),
                self.stride,
            );
            for (a, &v) in abs.iter_mut().zip(dst.iter()) {
                *a = v.wrapping_abs();
            }
        }
        for (sum, part) in self.sums[t].iter_mut().zip(src.chunks(X8_BLOCK)) {
            *sum = V::OFFSET * part.iter().map(|&v| v as i32).sum::<i32>();
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
        let (quads, blocks) = (k.div_ceil(4), k.div_ceil(X8_BLOCK));
        let xp = self
            .panels
            .codes
            .as_ptr()
            .add((panel * quads + c0 / 4) * width) as *const i32;
        let sp = self
            .panels
            .scales
            .as_ptr()
            .add((panel * blocks + c0 / X8_BLOCK) * width);
        let wp = self.strip as *const i32;
        let (w_stride, quad_len) = (self.stride / 4, len.div_ceil(4));
        let mut t0 = 0;
        while t0 < strip_rows {
            let rows = (strip_rows - t0).min(V::ROWS_PER_PASS);
            let (wp, sums, yp) = (wp.add(t0 * w_stride), &self.sums[t0..], yp.add(t0 * width));
            with_blocking!(
                rows,
                vecs,
                micro::<V>(xp, sp, wp, w_stride, quad_len, sums, yp)
            );
            t0 += rows;
        }
    }
}

/// yp[t][i] += Σ_b d[i][b] · (Σ_{quads of b} x[i]·w[t] − sums[t][b]) for the VECS × LANES rows of
/// one panel (quad column jq at `xp + jq · width`, block scales at `sp + b · width`) and ROWS
/// weight rows (quad stride `w_stride`), over `quad_len` quads starting at an x block's start;
/// yp's rows have stride `width`.
#[inline(always)]
unsafe fn micro<V: ByteDot, const ROWS: usize, const VECS: usize>(
    xp: *const i32,
    sp: *const f32,
    wp: *const i32,
    w_stride: usize,
    quad_len: usize,
    offsets: &[[i32; MAX_BLOCK / X8_BLOCK]],
    yp: *mut f32,
) {
    let width = X_VECS * V::LANES;
    let mut jq0 = 0;
    let mut b = 0;
    while jq0 < quad_len {
        let jq1 = (jq0 + X8_BLOCK / 4).min(quad_len);
        let mut sums = [[V::zero(); VECS]; ROWS];
        for jq in jq0..jq1 {
            let mut xv = [V::zero(); VECS];
            for (v, x) in xv.iter_mut().enumerate() {
                *x = V::load(xp.add(jq * width + v * V::LANES));
            }
            for (t, s) in sums.iter_mut().enumerate() {
                let wv = V::splat(*wp.add(t * w_stride + jq));
                let wa = if V::ABS_WEIGHTS {
                    V::splat(*wp.add((W_ROWS + t) * w_stride + jq))
                } else {
                    wv
                };
                for v in 0..VECS {
                    s[v] = V::dot(s[v], xv[v], wv, wa);
                }
            }
        }
        for (t, s) in sums.iter().enumerate() {
            for (v, &s) in s.iter().enumerate() {
                let lane0 = v * V::LANES;
                V::scale_add(
                    yp.add(t * width + lane0),
                    s,
                    offsets[t][b],
                    sp.add(b * width + lane0),
                );
            }
        }
        jq0 = jq1;
        b += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemv::tests::{check_rounded_x, data, reference, weights};

    /// The kernels this CPU runs.
    fn kernels() -> Vec<Kernel> {
        let kernels = Kernel::on_this_cpu();
        if kernels.is_empty() {
            eprintln!("no AVX2: the integer small-M path does not run here");
        }
        kernels
    }

    #[test]
    fn the_fastest_kernel_that_runs_is_chosen() {
        assert_eq!(Kernel::for_isa(Isa::Scalar), None);
        assert_eq!(Kernel::for_isa(Isa::Neon), None);
        for isa in [Isa::Avx512, Isa::Avx2] {
            let chosen = Kernel::for_isa(isa);
            if !isa.is_available() {
                continue;
            }
            let fastest = match isa {
                Isa::Avx512 if Kernel::Amx.runs() => Kernel::Amx,
                Isa::Avx512 if Kernel::Avx512Vnni.runs() => Kernel::Avx512Vnni,
                _ if Kernel::AvxVnni.runs() => Kernel::AvxVnni,
                _ => Kernel::Avx2,
            };
            assert_eq!(chosen, Some(fastest), "{isa:?}");
        }
    }

    /// Codes at the ends of their range (x at ±127 and weights at -128 and ±127, whose pairs of
    /// products come closest to int16's limit in `vpmaddubsw`) sum exactly on every kernel: x
    /// whose blocks reach 127 and weights of scale 1 make the product an exact integer. k of
    /// whole tiles too, for the AMX kernel.
    #[test]
    fn extreme_codes_sum_exactly() {
        for k in [2 * X8_BLOCK + 4, 3 * X8_BLOCK + 64] {
            extreme_codes_sum_exactly_at(19, 7, k);
        }
    }

    fn extreme_codes_sum_exactly_at(m: usize, n: usize, k: usize) {
        let x: Vec<f32> = (0..m * k)
            .map(|e| match ((e % k).is_multiple_of(X8_BLOCK), e % 5) {
                (true, _) | (_, 0 | 2) => 127.0,
                (_, 1 | 3) => -127.0,
                _ => (e % 255) as f32 - 127.0,
            })
            .collect();
        let w: Vec<i8> = (0..n * k)
            .map(|e| [-128, 127, -127, -128, 1, 0, 127][e % 7])
            .collect();
        let scales = vec![1f32; n];
        let want: Vec<f32> = (0..m * n)
            .map(|e| {
                let (i, r) = (e / n, e % n);
                (0..k)
                    .map(|j| x[i * k + j] as i64 * w[r * k + j] as i64)
                    .sum::<i64>() as f32
            })
            .collect();
        let wm = WeightMatrix::with_scales(&w, &scales, n, k);
        for kernel in kernels() {
            let mut y = vec![0f32; m * n];
            matmul(kernel, &x, &wm, None, &mut y, m);
            assert_eq!(y, want, "{kernel:?}");
        }
    }

    /// Against the product of the unquantized x, within what rounding x to 8 bits allows: odd
    /// and short widths, widths across x blocks and column blocks, rows around the panels,
    /// chunks and passes, tiles around the strips, on 2 threads.
    #[test]
    fn error_is_bounded_by_the_8_bit_rounding_of_x() {
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
            (X8_BLOCK, 49, &[32, 129]),
            (3 * X8_BLOCK + 2, 7, &[33]),
        ];
        for &(k, n, ms) in &shapes {
            let tw = weights(n, k, 11);
            let bias: Vec<f32> = (0..n).map(|i| 0.5 - i as f32 * 0.01).collect();
            for &m in ms {
                let mut x = data(m * k, 100 + m as u32);
                x[k / 2] = -250.0; // an outlier in one block of row 0
                let want = reference(&x, &tw.i8_f32, Some(&bias), m, k);
                let w = WeightMatrix::with_scales(&tw.i8, &tw.scales, n, k);
                let mut first: Option<(Kernel, Vec<f32>)> = None;
                for kernel in kernels() {
                    let mut y = vec![0f32; m * n];
                    pool.install(|| matmul(kernel, &x, &w, Some(&bias), &mut y, m));
                    let what = format!("{kernel:?} m{m} k{k} n{n}");
                    check_rounded_x(&y, &want, &x, &tw.i8_f32, m, (X8_BLOCK, 127.0), &what);
                    // The kernels' block sums are the same integers, summed in the same order.
                    match &first {
                        Some((k0, y0)) => assert_eq!(&y, y0, "{what} against {k0:?}"),
                        None => first = Some((kernel, y)),
                    }
                }
            }
        }
    }

    #[test]
    fn a_nan_or_infinite_x_reaches_only_its_row() {
        let (m, n, k) = (40, 13, 300);
        let tw = weights(n, k, 2);
        let w = WeightMatrix::with_scales(&tw.i8, &tw.scales, n, k);
        for (bad, kernel) in [f32::NAN, f32::INFINITY]
            .into_iter()
            .flat_map(|b| kernels().into_iter().map(move |k| (b, k)))
        {
            let mut x = data(m * k, 1);
            x[33 * k + 7] = bad;
            let mut y = vec![0f32; m * n];
            matmul(kernel, &x, &w, None, &mut y, m);
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
