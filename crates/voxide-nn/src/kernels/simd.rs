//! The vocabulary the matrix kernels are written in once: an instruction set ([`Isa`]), its
//! f32 vector operations (`Simd`), and how each weight element type is widened to f32 on
//! it ([`WeightElem`]).
//!
//! A kernel is an `#[inline(always)]` body generic over `S: Simd` and `E: WeightElem`, and a
//! thin `#[target_feature]` entry per instruction set instantiates it, so the intrinsics inline
//! into code compiled for that set (the pattern of the `memchr` crate). The instruction set is
//! chosen at run time ([`Isa::detect`]); tests and benches can force any available one.
//!
//! Weight widening is exact for every type: f16 → f32 (F16C / AVX-512F `vcvtph2ps`, NEON
//! `fcvtl`), bf16 → f32 (a 16-bit shift of the bits), i8 → f32 (sign extension and an integer
//! conversion). With f16 and bf16 weights, activations stay f32 and products accumulate in f32
//! with FMA: no operand is rounded to a narrower type (AVX-512 BF16's `vdpbf16ps` would round
//! x to bf16). The int8 GEMV is the exception: it rounds x to 16 bits per block and multiplies
//! in integers ([`super::gemv_int8`]); the small-M kernel widens int8 like the others.

use half::{bf16, f16};

/// An instruction set the kernels have a path for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust (auto-vectorised at the crate's baseline target features).
    Scalar,
    /// x86-64 AVX2 + FMA + F16C, 8 lanes.
    Avx2,
    /// x86-64 AVX-512F, 16 lanes.
    Avx512,
    /// AArch64 Advanced SIMD, 4 lanes.
    Neon,
}

impl Isa {
    /// The widest instruction set this CPU supports.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if Isa::Avx512.is_available() {
                return Isa::Avx512;
            }
            if Isa::Avx2.is_available() {
                return Isa::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            return Isa::Neon;
        }
        #[allow(unreachable_code)]
        Isa::Scalar
    }

    /// Whether this CPU can run the path.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// f32 lanes of one vector ([`Simd::LANES`] of the path).
    pub(crate) fn lanes(self) -> usize {
        match self {
            Isa::Scalar | Isa::Avx2 => 8,
            Isa::Avx512 => 16,
            Isa::Neon => 4,
        }
    }

    /// Whether this path's [`Simd::load_w2`] widens `E` weights as even and odd elements.
    pub(crate) fn splits_pairs<E: WeightElem>(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512) && E::SPLITS_PAIRS_X86
    }

    /// Every path this CPU can run, portable first.
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon]
            .into_iter()
            .filter(|i| i.is_available())
            .collect()
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for i8 {}
}

/// How many types implement [`WeightElem`].
pub const WEIGHT_KINDS: usize = 4;

/// An element type the kernels read: f16, bf16 or i8 weights (int8 weights carry an f32
/// scale per output row, applied by the kernels), or f32 (a KV cache kept in full precision).
///
/// The per-instruction-set loads widen consecutive elements to f32 exactly; they are
/// implementation details of the kernels (sealed trait).
pub trait WeightElem: Copy + Send + Sync + 'static + sealed::Sealed {
    /// Name for messages.
    const NAME: &'static str;

    /// The type's index among the [`WEIGHT_KINDS`] weight types (per-type tables).
    #[doc(hidden)]
    const KIND: usize;

    /// Zero (the read-distance measurement's matrix).
    #[doc(hidden)]
    const ZERO: Self;

    /// The element as f32 (exact).
    fn to_f32(self) -> f32;

    /// The elements as int8 codes, for the kernels' integer paths (int8 only).
    #[doc(hidden)]
    fn as_int8(data: &[Self]) -> Option<&[i8]> {
        let _ = data;
        None
    }

    /// The elements as bf16, for the kernels' native bf16 path (bf16 only).
    #[doc(hidden)]
    fn as_bf16(data: &[Self]) -> Option<&[half::bf16]> {
        let _ = data;
        None
    }

    /// The elements as f16, for the tiles' path (f16 only).
    #[doc(hidden)]
    fn as_f16(data: &[Self]) -> Option<&[half::f16]> {
        let _ = data;
        None
    }

    /// 16 elements at `p` as f32.
    ///
    /// # Safety
    /// AVX-512F must be available (callers are `#[target_feature(enable = "avx512f")]`) and
    /// `p` must be valid for 16 elements.
    #[doc(hidden)]
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16_avx512(p: *const Self) -> std::arch::x86_64::__m512;

    /// 8 elements at `p` as f32.
    ///
    /// # Safety
    /// AVX2 and F16C must be available and `p` valid for 8 elements.
    #[doc(hidden)]
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8_avx2(p: *const Self) -> std::arch::x86_64::__m256;

    /// 4 elements at `p` as f32.
    ///
    /// # Safety
    /// `p` must be valid for 4 elements.
    #[doc(hidden)]
    #[cfg(target_arch = "aarch64")]
    unsafe fn load4_neon(p: *const Self) -> std::arch::aarch64::float32x4_t;

    /// Whether the x86 pair loads return the even and the odd elements of a block rather than
    /// its two halves in order ([`Simd::load_w2`], [`Isa::splits_pairs`]).
    #[doc(hidden)]
    const SPLITS_PAIRS_X86: bool = false;

    /// 16 elements at `p` as two f32 vectors: its halves, or its even and odd elements where
    /// [`Self::SPLITS_PAIRS_X86`].
    ///
    /// # Safety
    /// As [`Self::load8_avx2`], `p` valid for 16 elements.
    #[doc(hidden)]
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16_pairs_avx2(
        p: *const Self,
    ) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
        (Self::load8_avx2(p), Self::load8_avx2(p.add(8)))
    }

    /// 32 elements at `p` as two f32 vectors, as [`Self::load16_pairs_avx2`].
    ///
    /// # Safety
    /// As [`Self::load16_avx512`], `p` valid for 32 elements.
    #[doc(hidden)]
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load32_pairs_avx512(
        p: *const Self,
    ) -> (std::arch::x86_64::__m512, std::arch::x86_64::__m512) {
        (Self::load16_avx512(p), Self::load16_avx512(p.add(16)))
    }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "aarch64")]
use std::arch::aarch64::*;

impl WeightElem for f32 {
    const NAME: &'static str = "f32";
    const KIND: usize = 0;
    const ZERO: Self = 0.0;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16_avx512(p: *const Self) -> __m512 {
        _mm512_loadu_ps(p)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8_avx2(p: *const Self) -> __m256 {
        _mm256_loadu_ps(p)
    }

    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    unsafe fn load4_neon(p: *const Self) -> float32x4_t {
        vld1q_f32(p)
    }
}

impl WeightElem for f16 {
    const NAME: &'static str = "f16";
    const KIND: usize = 1;
    const ZERO: Self = f16::ZERO;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    fn as_f16(data: &[Self]) -> Option<&[f16]> {
        Some(data)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16_avx512(p: *const Self) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8_avx2(p: *const Self) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    unsafe fn load4_neon(p: *const Self) -> float32x4_t {
        // `fcvtl` (half → single) is base ARMv8 floating point; the f16 vector types of the
        // intrinsics are not stable, hence the one instruction of assembly.
        let h = vld1_u16(p as *const u16);
        let out: float32x4_t;
        core::arch::asm!(
            "fcvtl {out:v}.4s, {h:v}.4h",
            out = lateout(vreg) out,
            h = in(vreg) h,
            options(pure, nomem, nostack, preserves_flags)
        );
        out
    }
}

impl WeightElem for bf16 {
    const NAME: &'static str = "bf16";
    const KIND: usize = 2;
    const ZERO: Self = bf16::ZERO;

    fn as_bf16(data: &[Self]) -> Option<&[bf16]> {
        Some(data)
    }

    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16_avx512(p: *const Self) -> __m512 {
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8_avx2(p: *const Self) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }

    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    unsafe fn load4_neon(p: *const Self) -> float32x4_t {
        vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p as *const u16)))
    }

    // A bf16 is the high half of its f32: in each 32-bit lane of a full-width load, the even
    // element (low half) widens with one shift and the odd one (high half) with one mask. In
    // order, every 8 elements take a zero-extending shuffle and a shift, which bound the GEMV
    // from cache at ~40 GB/s per Zen 3 core (the trick of llamafile's bf16 kernels).
    const SPLITS_PAIRS_X86: bool = true;

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16_pairs_avx2(p: *const Self) -> (__m256, __m256) {
        let h = _mm256_loadu_si256(p as *const __m256i);
        let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
        (
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h)),
            _mm256_castsi256_ps(_mm256_and_si256(h, high)),
        )
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load32_pairs_avx512(p: *const Self) -> (__m512, __m512) {
        let h = _mm512_loadu_si512(p as *const __m512i);
        let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
        (
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h)),
            _mm512_castsi512_ps(_mm512_and_si512(h, high)),
        )
    }
}

impl WeightElem for i8 {
    const NAME: &'static str = "int8";
    const KIND: usize = 3;
    const ZERO: Self = 0;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }

    fn as_int8(data: &[Self]) -> Option<&[i8]> {
        Some(data)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16_avx512(p: *const Self) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8_avx2(p: *const Self) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }

    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    unsafe fn load4_neon(p: *const Self) -> float32x4_t {
        // Exactly 4 bytes (an 8-byte load could cross the end of the matrix).
        let b = vreinterpret_s8_u32(vdup_n_u32((p as *const u32).read_unaligned()));
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(b))))
    }
}

/// Rows of x (`k` values each) into `out` in the order [`Simd::load_w2`] widens split pairs of
/// weights: in each whole block of 2 · `lanes` values the even ones, then the odd ones; the
/// rest of the row as it is.
pub(crate) fn deinterleave_pairs(x: &[f32], k: usize, lanes: usize, out: &mut Vec<f32>) {
    out.clear();
    let block = 2 * lanes;
    for row in x.chunks(k.max(1)) {
        let blocks = row.chunks_exact(block);
        let rest = blocks.remainder();
        for b in blocks {
            out.extend(b.iter().step_by(2));
            out.extend(b.iter().skip(1).step_by(2));
        }
        out.extend_from_slice(rest);
    }
}

/// `Σ a[i] · b[i]` with eight independent accumulators, which the compiler keeps in one vector
/// register at any baseline (a single running sum would serialise every add): for short dot
/// products where a dispatched kernel would not pay (small recurrent cells, block sums).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// f32 vector operations of one instruction set. Every function is `unsafe`: callers run
/// inside a `#[target_feature]` entry for that set, with pointers valid for `LANES` elements.
pub(crate) trait Simd: Copy {
    type V: Copy;
    const LANES: usize;
    /// Vector registers: how many accumulators a kernel may keep.
    const REGISTERS: usize;

    unsafe fn zero() -> Self::V;
    unsafe fn splat(v: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// a · b + c
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// Sum of the lanes.
    unsafe fn sum(v: Self::V) -> f32;
    /// `LANES` weights at `p` widened to f32.
    unsafe fn load_w<E: WeightElem>(p: *const E) -> Self::V;
    /// 2 · `LANES` weights at `p` widened to f32: the two halves in order, or the even and the
    /// odd elements where [`Isa::splits_pairs`] (x must then be read in that order:
    /// [`deinterleave_pairs`]).
    #[inline(always)]
    unsafe fn load_w2<E: WeightElem>(p: *const E) -> (Self::V, Self::V) {
        (Self::load_w(p), Self::load_w(p.add(Self::LANES)))
    }
    /// Prefetch a cache line that will be read once (bypassing the caches where possible).
    unsafe fn prefetch_stream(p: *const u8);
    /// Prefetch a cache line into all cache levels.
    unsafe fn prefetch_keep(p: *const u8);
}

/// Portable fallback: 8-lane arrays the compiler may vectorise at the baseline features.
#[derive(Clone, Copy)]
pub(crate) struct Scalar;

impl Simd for Scalar {
    type V = [f32; 8];
    const LANES: usize = 8;
    const REGISTERS: usize = 16;

    #[inline(always)]
    unsafe fn zero() -> Self::V {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self::V {
        [v; 8]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        (p as *const [f32; 8]).read_unaligned()
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        (p as *mut [f32; 8]).write_unaligned(v)
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] * b[i])
    }
    #[inline(always)]
    unsafe fn sum(v: Self::V) -> f32 {
        ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
    }
    #[inline(always)]
    unsafe fn load_w<E: WeightElem>(p: *const E) -> Self::V {
        std::array::from_fn(|i| p.add(i).read().to_f32())
    }
    #[inline(always)]
    unsafe fn prefetch_stream(_p: *const u8) {}
    #[inline(always)]
    unsafe fn prefetch_keep(_p: *const u8) {}
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    type V = __m256;
    const LANES: usize = 8;
    const REGISTERS: usize = 16;

    #[inline(always)]
    unsafe fn zero() -> Self::V {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self::V {
        _mm256_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sum(v: Self::V) -> f32 {
        let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let q = _mm_add_ss(q, _mm_shuffle_ps::<1>(q, q));
        _mm_cvtss_f32(q)
    }
    #[inline(always)]
    unsafe fn load_w<E: WeightElem>(p: *const E) -> Self::V {
        E::load8_avx2(p)
    }
    #[inline(always)]
    unsafe fn load_w2<E: WeightElem>(p: *const E) -> (Self::V, Self::V) {
        E::load16_pairs_avx2(p)
    }
    #[inline(always)]
    unsafe fn prefetch_stream(p: *const u8) {
        _mm_prefetch::<_MM_HINT_NTA>(p as *const i8)
    }
    #[inline(always)]
    unsafe fn prefetch_keep(p: *const u8) {
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
    }
}

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx512 {
    type V = __m512;
    const LANES: usize = 16;
    const REGISTERS: usize = 32;

    #[inline(always)]
    unsafe fn zero() -> Self::V {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self::V {
        _mm512_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sum(v: Self::V) -> f32 {
        _mm512_reduce_add_ps(v)
    }
    #[inline(always)]
    unsafe fn load_w<E: WeightElem>(p: *const E) -> Self::V {
        E::load16_avx512(p)
    }
    #[inline(always)]
    unsafe fn load_w2<E: WeightElem>(p: *const E) -> (Self::V, Self::V) {
        E::load32_pairs_avx512(p)
    }
    #[inline(always)]
    unsafe fn prefetch_stream(p: *const u8) {
        _mm_prefetch::<_MM_HINT_NTA>(p as *const i8)
    }
    #[inline(always)]
    unsafe fn prefetch_keep(p: *const u8) {
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
    }
}

#[cfg(target_arch = "aarch64")]
#[derive(Clone, Copy)]
pub(crate) struct Neon;

#[cfg(target_arch = "aarch64")]
impl Simd for Neon {
    type V = float32x4_t;
    const LANES: usize = 4;
    const REGISTERS: usize = 32;

    #[inline(always)]
    unsafe fn zero() -> Self::V {
        vdupq_n_f32(0.0)
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self::V {
        vdupq_n_f32(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        vld1q_f32(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        vst1q_f32(p, v)
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        vfmaq_f32(c, a, b)
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        vaddq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V {
        vmulq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn sum(v: Self::V) -> f32 {
        vaddvq_f32(v)
    }
    #[inline(always)]
    unsafe fn load_w<E: WeightElem>(p: *const E) -> Self::V {
        E::load4_neon(p)
    }
    #[inline(always)]
    unsafe fn prefetch_stream(p: *const u8) {
        core::arch::asm!(
            "prfm pldl1strm, [{p}]",
            p = in(reg) p,
            options(nostack, readonly, preserves_flags)
        );
    }
    #[inline(always)]
    unsafe fn prefetch_keep(p: *const u8) {
        core::arch::asm!(
            "prfm pldl1keep, [{p}]",
            p = in(reg) p,
            options(nostack, readonly, preserves_flags)
        );
    }
}

/// Instantiates `$body::<S, ...>($args)` for the instruction set `$isa` inside a function
/// compiled for it. `$body` must be `#[inline(always)]` so that the intrinsics inline. An
/// `unsafe fn` entry passes its caller's obligations on to `$body`.
macro_rules! isa_entries {
    (
        $(#[$meta:meta])*
        $vis:vis unsafe fn $($rest:tt)*
    ) => {
        $crate::kernels::simd::isa_entries!(@entry [unsafe] $(#[$meta])* $vis fn $($rest)*);
    };
    (
        $(#[$meta:meta])*
        $vis:vis fn $($rest:tt)*
    ) => {
        $crate::kernels::simd::isa_entries!(@entry [] $(#[$meta])* $vis fn $($rest)*);
    };
    (
        @entry [$($unsafety:tt)?]
        $(#[$meta:meta])*
        $vis:vis fn $name:ident<$($g:ident : $b:path),*>($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)?
        => $body:ident
    ) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis $($unsafety)? fn $name<$($g: $b),*>(isa: $crate::kernels::simd::Isa, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512<$($g: $b),*>($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: forwarded from the caller.
                unsafe { $body::<$crate::kernels::simd::Avx512, $($g),*>($($arg),*) }
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2<$($g: $b),*>($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: forwarded from the caller.
                unsafe { $body::<$crate::kernels::simd::Avx2, $($g),*>($($arg),*) }
            }
            #[cfg(target_arch = "aarch64")]
            #[target_feature(enable = "neon")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn neon<$($g: $b),*>($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: forwarded from the caller.
                unsafe { $body::<$crate::kernels::simd::Neon, $($g),*>($($arg),*) }
            }
            assert!(isa.is_available(), "{isa:?} is not available on this CPU");
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the instruction set is available (checked above).
                $crate::kernels::simd::Isa::Avx512 => unsafe { avx512::<$($g),*>($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                $crate::kernels::simd::Isa::Avx2 => unsafe { avx2::<$($g),*>($($arg),*) },
                #[cfg(target_arch = "aarch64")]
                // SAFETY: as above.
                $crate::kernels::simd::Isa::Neon => unsafe { neon::<$($g),*>($($arg),*) },
                // SAFETY: the portable body needs no instruction set.
                _ => unsafe { $body::<$crate::kernels::simd::Scalar, $($g),*>($($arg),*) },
            }
        }
    };
}
pub(crate) use isa_entries;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deinterleave_pairs_splits_whole_blocks_of_each_row() {
        let x: Vec<f32> = (0..22).map(|v| v as f32).collect();
        let mut out = vec![99.0];
        deinterleave_pairs(&x, 11, 2, &mut out);
        let row = |o: f32| -> Vec<f32> {
            [0., 2., 1., 3., 4., 6., 5., 7., 8., 9., 10.]
                .iter()
                .map(|v| v + o)
                .collect()
        };
        assert_eq!(out, [row(0.), row(11.)].concat());
    }
}
