//! The bf16 GEMV on CPUs with AVX512-BF16: `vdpbf16ps` multiplies 32 bf16 weights by 32 bf16
//! values of x and adds them in pairs into 16 f32 lanes, one instruction per 64-byte line of
//! weights where the widening path takes four (a shift and a mask to widen, two FMAs).
//!
//! x in bf16 alone would keep 8 bits. Split as x_hi = bf16(x) and x_lo = bf16(x − x_hi) it
//! keeps ~16 (|x − x_hi − x_lo| ≤ 2⁻¹⁶ |x|, far below the weights' own 2⁻⁸ rounding), at two
//! instructions per line: y = Σ w · x_hi + Σ w · x_lo. The products of two bf16 values are
//! exact in f32 and accumulate in f32 as the FMAs do (the instruction flushes subnormal
//! inputs and outputs to zero: values below 1e-38, which no checkpoint's weights reach).
//!
//! Fewer instructions per byte pay where the arithmetic, not the memory, sets the pace: on one
//! Zen 5 core, cache-resident rows read 127–141 → 163 GB/s. From memory a step reads about as
//! fast as with the widening kernel (PERFORMANCE.md #105). The split is the "bf16x2" scheme of
//! Henry, Tang & Heinecke (ARITH 2019).
//!
//! Taken only where the dot products pay (`runs`): a CPU that issues them at half its FMAs'
//! rate reads a step's bf16 weights faster through the widening kernel.

#[cfg(target_arch = "x86_64")]
use super::gemv::{in_row_blocks, prefetch_rows, store_output, with_prefetch, FEWER_ROWS_PER_PASS};
use super::gemv::{OutPtr, ReadAhead, WeightMatrix};
#[cfg(target_arch = "x86_64")]
use super::machine::machine;
use super::small_m::bf16_dots_pay;
use half::bf16;
use std::cell::Cell;

#[cfg(not(target_arch = "x86_64"))]
use super::simd::Isa;
#[cfg(target_arch = "x86_64")]
use super::simd::{Avx512, Isa};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Values of x per `vdpbf16ps`.
#[cfg(target_arch = "x86_64")]
const LANES: usize = 32;

/// 64-byte lines of each weight row per pass of the loop. From memory, what holds a core back
/// is how many lines it keeps in flight, and the loop's own instructions (the x loads, the
/// counter) share the window that the weight loads wait in: a synthetic step on 2 Zen 5 cores
/// read 66 GB/s at one line per pass and 70 at four, where a plain summing loop read 79
/// (PERFORMANCE.md #107).
#[cfg(target_arch = "x86_64")]
const LINES_PER_PASS: usize = 4;

/// The m rows of x split into high and low bf16 halves (each m × k).
pub(crate) struct SplitX {
    hi: Vec<bf16>,
    lo: Vec<bf16>,
}

thread_local! {
    /// The last call's buffers, reused so that a decoder step allocates nothing. Taken, not
    /// borrowed: a rayon thread that runs another GEMV while waiting finds it empty.
    static SPARE: Cell<Option<SplitX>> = const { Cell::new(None) };
}

impl SplitX {
    /// x split into this thread's spare buffers.
    pub(crate) fn new(x: &[f32]) -> Self {
        let mut s = SPARE.take().unwrap_or(SplitX {
            hi: Vec::new(),
            lo: Vec::new(),
        });
        s.hi.clear();
        s.lo.clear();
        s.hi.resize(x.len(), bf16::ZERO);
        s.lo.resize(x.len(), bf16::ZERO);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the instructions are available; the buffers hold x.len() values.
        let done = if available() {
            unsafe { split_avx512(x, &mut s.hi, &mut s.lo) }
        } else {
            0
        };
        #[cfg(not(target_arch = "x86_64"))]
        let done = 0;
        for (j, &v) in x.iter().enumerate().skip(done) {
            let hi = bf16::from_f32(v);
            s.hi[j] = hi;
            // x − x_hi is exact in f32; inf and NaN carry over through x_hi alone.
            s.lo[j] = bf16::from_f32(if v.is_finite() { v - hi.to_f32() } else { 0.0 });
        }
        s
    }

    /// Returns the buffers for the next call on this thread.
    pub(crate) fn recycle(self) {
        SPARE.set(Some(self));
    }

    /// x as the kernel multiplies it (x_hi + x_lo), for tests.
    #[cfg(test)]
    pub(crate) fn joined(&self) -> Vec<f32> {
        self.hi
            .iter()
            .zip(&self.lo)
            .map(|(h, l)| h.to_f32() + l.to_f32())
            .collect()
    }
}

/// Most rows of x the kernel takes: at m = 1 and 2 it reads 9216×3072 faster than the
/// widening kernel (Zen 5, 2 threads: 58–65 → 69–75 and 43 → 51 GB/s), at m = 4 slower
/// (25–30 → 19), at m = 8 alike (PERFORMANCE.md #105).
const MAX_ROWS: usize = 2;

/// Whether a GEMV of m rows of x on `isa` takes this kernel: where it can run
/// ([`can_run`]) and the CPU's bf16 dot products multiply-add fast enough against its f32
/// FMAs ([`bf16_dots_pay`]). Elsewhere the widening kernel reads bf16 weights faster: on
/// Intel Xeon Emerald Rapids, which issues one `vdpbf16ps` every other cycle against two FMAs
/// a cycle, the synthetic Voxtral Realtime bf16 step took 0.93–0.95× the time with the
/// widening kernel, 55 rounds alternated with this one (PERFORMANCE.md #191).
pub(crate) fn runs(isa: Isa, m: usize) -> bool {
    can_run(isa, m) && bf16_dots_pay()
}

/// Whether this CPU can run the kernel for m rows of x on `isa`, paying or not.
pub(crate) fn can_run(isa: Isa, m: usize) -> bool {
    m <= MAX_ROWS && isa == Isa::Avx512 && available()
}

/// Whether this CPU runs the kernel (AVX-512F and AVX512-BF16).
fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        Isa::Avx512.is_available() && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Splits the whole blocks of 16 values of x (as [`SplitX::new`]); returns how many it did.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn split_avx512(x: &[f32], hi: &mut [bf16], lo: &mut [bf16]) -> usize {
    let mut j = 0;
    while j + 16 <= x.len() {
        let v = _mm512_loadu_ps(x.as_ptr().add(j));
        let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
        let h_f32 = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)));
        let rest = _mm512_sub_ps(v, h_f32);
        // NaN where x is not finite: x_hi alone carries it.
        let finite = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(rest, rest);
        let l: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_maskz_mov_ps(finite, rest)));
        _mm256_storeu_si256(hi.as_mut_ptr().add(j) as *mut __m256i, h);
        _mm256_storeu_si256(lo.as_mut_ptr().add(j) as *mut __m256i, l);
        j += 16;
    }
    j
}

/// Output rows r0..r1 of y (m × n) = x · wᵀ (+ bias) for bf16 `w` (`xs`: x split; `x`: x
/// itself, for the columns past the last whole block of [`LANES`]).
///
/// # Panics
/// Where it cannot run ([`can_run`]: more than [`MAX_ROWS`] rows, a CPU without the
/// instructions).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows(
    xs: &SplitX,
    x: &[f32],
    w: WeightMatrix<bf16>,
    bias: Option<&[f32]>,
    y: OutPtr,
    m: usize,
    r0: usize,
    r1: usize,
    ahead: ReadAhead,
) {
    assert!(
        m <= MAX_ROWS && available(),
        "the bf16 kernel does not run here"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the instructions are available (checked above); y holds m × n.
    unsafe {
        rows_avx512(xs, x, w, bias, y, m, r0, r1, ahead)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (xs, x, w, bias, y, m, r0, r1, ahead);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_avx512(
    xs: &SplitX,
    x: &[f32],
    w: WeightMatrix<bf16>,
    bias: Option<&[f32]>,
    y: OutPtr,
    m: usize,
    r0: usize,
    r1: usize,
    ahead: ReadAhead,
) {
    let a = ahead.bytes;
    // R weight rows at a time (the rest one by one), spans as the widening kernel reads them.
    macro_rules! go {
        ($m:literal, $r:literal) => {
            with_prefetch!(ahead.prefetch, PF => in_row_blocks::<$r>(
                r0,
                r1,
                |r, gap| row_block::<$m, $r, PF>(xs, x, w, bias, y, r, gap, a),
                |r| row_block::<$m, 1, PF>(xs, x, w, bias, y, r, 0, a),
            ))
        };
    }
    // As the widening kernel: each load of x serves R weight rows; R · M · 2 accumulators.
    match m {
        1 if ahead.rows_per_pass == FEWER_ROWS_PER_PASS && x_fits_l1(w.cols) => go!(1, 2),
        1 => go!(1, 4),
        2 => go!(2, 2),
        _ => unreachable!("the bf16 kernel takes at most {MAX_ROWS} rows"),
    }
}

/// Whether one row of x, split ([`SplitX`]: 4 bytes per column), fills at most 3/8 of a
/// core's L1 data cache. Passes of [`FEWER_ROWS_PER_PASS`] rows load x twice as often per
/// weight byte as passes of 4: from L1 that costs nothing, while an x that spills to L2 takes
/// L1 misses from the weight streams. On Zen 4 (32 KB L1), in the host's fast bandwidth
/// regime, passes of 2 rows without prefetch hints read 12 % faster than passes of 4 at k =
/// 3072 (x: 12 KB), 10 % slower at k = 4096 (16 KB) and ~25 % slower at 9216 (36 KB)
/// (PERFORMANCE.md #143).
#[cfg(target_arch = "x86_64")]
fn x_fits_l1(k: usize) -> bool {
    x_fits(k, machine().caches.l1d_per_core)
}

/// [`x_fits_l1`] for an L1 data cache of `l1d` bytes (0: unknown, nothing fits).
#[cfg(target_arch = "x86_64")]
fn x_fits(k: usize, l1d: usize) -> bool {
    4 * k <= l1d / 8 * 3
}

/// Most column panels a matrix is stored in ([`column_panels`]).
#[cfg(target_arch = "x86_64")]
const MAX_COLUMN_PANELS: usize = 8;

/// How many column panels a streamed bf16 matrix of `cols` columns is stored in, each panel's
/// rows contiguous (1: rows whole). Where this machine reads streamed bf16 matrices in passes
/// of [`FEWER_ROWS_PER_PASS`] rows, a matrix whose x does not fit L1 (`x_fits_l1`) would be
/// read in passes of 4 instead; as panels narrow enough for x to fit, each read in passes of 2
/// and their products summed, it keeps the fewer streams. Synthetic Voxtral Realtime bf16
/// step on Zen 4 (o: 4096 columns in 2 panels, down: 9216 in 3), fast memory regime: 0.842 →
/// 0.883 of the probe, slow regime level (PERFORMANCE.md #145); Voxtral Mini 3B's o (4096
/// columns in 2 panels) and down (8192 in 4) alone, slow regime: 5 % faster than whole rows.
/// Panels cut from the matrix in place were slower (0.42–0.57, #143): each row's piece is a
/// short stream of its own.
pub fn column_panels(cols: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if runs(Isa::detect(), 1)
        && super::gemv::streamed_read_ahead::<bf16>().rows_per_pass == FEWER_ROWS_PER_PASS
    {
        return panels_for(cols, machine().caches.l1d_per_core);
    }
    let _ = cols;
    1
}

/// [`column_panels`] for an L1 data cache of `l1d` bytes: the fewest panels of equal width, a
/// multiple of 32 columns (whole vectors of bf16 pairs), for which x fits.
#[cfg(target_arch = "x86_64")]
fn panels_for(cols: usize, l1d: usize) -> usize {
    if x_fits(cols, l1d) {
        return 1;
    }
    (2..=MAX_COLUMN_PANELS)
        .find(|&p| cols.is_multiple_of(p) && (cols / p).is_multiple_of(32) && x_fits(cols / p, l1d))
        .unwrap_or(1)
}

/// Weight rows r + q · gap (q < R) against every row of x: per 64-byte line of each row, one
/// `vdpbf16ps` with x_hi and one with x_lo, into two accumulators.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn row_block<const M: usize, const R: usize, const PF: u8>(
    xs: &SplitX,
    x: &[f32],
    w: WeightMatrix<bf16>,
    bias: Option<&[f32]>,
    y: OutPtr,
    r: usize,
    gap: usize,
    ahead: usize,
) {
    let (n, k) = (w.rows, w.cols);
    let row_of: [usize; R] = std::array::from_fn(|ri| r + ri * gap);
    let wp: [*const bf16; R] = row_of.map(|row| w.data.as_ptr().add(row * k));
    let (hp, lp) = (xs.hi.as_ptr(), xs.lo.as_ptr());
    // 32 bf16 values at p as the instruction's operand type.
    macro_rules! load {
        ($p:expr) => {
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512($p as *const _))
        };
    }
    let mut hi = [[_mm512_setzero_ps(); M]; R];
    let mut lo = [[_mm512_setzero_ps(); M]; R];
    // One 64-byte line of each row from column `$at` (a macro: a closure is not sure to be
    // inlined into the instruction set's entry, and its intrinsics would become calls).
    macro_rules! line {
        ($at:expr) => {{
            let at = $at;
            let xh: [__m512bh; M] = std::array::from_fn(|i| load!(hp.add(i * k + at)));
            let xl: [__m512bh; M] = std::array::from_fn(|i| load!(lp.add(i * k + at)));
            for ri in 0..R {
                let wv = load!(wp[ri].add(at));
                for i in 0..M {
                    hi[ri][i] = _mm512_dpbf16_ps(hi[ri][i], xh[i], wv);
                    lo[ri][i] = _mm512_dpbf16_ps(lo[ri][i], xl[i], wv);
                }
            }
        }};
    }
    let mut j = 0;
    while j + LINES_PER_PASS * LANES <= k {
        prefetch_rows::<Avx512, bf16, R, PF>(&wp, j, LINES_PER_PASS * LANES, ahead);
        for c in 0..LINES_PER_PASS {
            line!(j + c * LANES);
        }
        j += LINES_PER_PASS * LANES;
    }
    while j + LANES <= k {
        prefetch_rows::<Avx512, bf16, R, PF>(&wp, j, LANES, ahead);
        line!(j);
        j += LANES;
    }
    for ri in 0..R {
        for i in 0..M {
            let mut total = _mm512_reduce_add_ps(_mm512_add_ps(hi[ri][i], lo[ri][i]));
            for jj in j..k {
                total += x[i * k + jj] * (*wp[ri].add(jj)).to_f32();
            }
            store_output(y, n, i, row_of[ri], total, None, bias);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_halves_keep_x_to_sixteen_bits() {
        let x: Vec<f32> = (0..1000)
            .map(|i| (i as f32 * 0.618).sin() * 10f32.powi(i % 7 - 3))
            .collect();
        let xs = SplitX::new(&x);
        for (v, j) in x.iter().zip(xs.joined()) {
            assert!(
                (v - j).abs() <= v.abs() * 2f32.powi(-17),
                "{v} split as {j}"
            );
        }
        xs.recycle();
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn fewer_rows_per_pass_only_where_x_leaves_most_of_l1_to_the_weights() {
        const KB: usize = 1 << 10;
        // Zen 4's 32 KB: Voxtral's 3072 columns fit, its 4096 (o) and 9216 (down) do not.
        assert!(x_fits(3072, 32 * KB));
        assert!(!x_fits(4096, 32 * KB));
        assert!(!x_fits(9216, 32 * KB));
        // Intel's 48 KB L1 takes 4096 columns.
        assert!(x_fits(4096, 48 * KB));
        assert!(!x_fits(6144, 48 * KB));
        // An L1 of unknown size holds nothing.
        assert!(!x_fits(16, 0));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn columns_split_into_the_fewest_panels_whose_x_fits_l1() {
        const KB: usize = 1 << 10;
        // Zen 4's 32 KB: Voxtral's o (4096 columns) in 2 panels, its down projection (9216)
        // in 3, Voxtral Mini 3B's (8192) in 4, Qwen3-TTS 1.7B's (6144) in 2; 3072 stays whole.
        assert_eq!(panels_for(3072, 32 * KB), 1);
        assert_eq!(panels_for(4096, 32 * KB), 2);
        assert_eq!(panels_for(9216, 32 * KB), 3);
        assert_eq!(panels_for(8192, 32 * KB), 4);
        assert_eq!(panels_for(6144, 32 * KB), 2);
        // Intel's 48 KB: 4096 columns whole, 9216 in 2.
        assert_eq!(panels_for(4096, 48 * KB), 1);
        assert_eq!(panels_for(9216, 48 * KB), 2);
        // No equal split into whole vectors: the matrix stays whole.
        assert_eq!(panels_for(9217, 32 * KB), 1);
        assert_eq!(panels_for(3104 * 2, 32 * KB), 1);
        // Too wide for 8 panels.
        assert_eq!(panels_for(64 * 1024, 32 * KB), 1);
        // An L1 of unknown size: x never fits, the matrix stays whole.
        assert_eq!(panels_for(4096, 0), 1);
    }

    #[test]
    fn infinite_and_nan_x_pass_through_the_high_half() {
        let mut x = vec![0.5f32; 40];
        x[3] = f32::INFINITY;
        x[20] = f32::NEG_INFINITY;
        x[37] = f32::NAN;
        let xs = SplitX::new(&x);
        let joined = xs.joined();
        assert_eq!(joined[3], f32::INFINITY);
        assert_eq!(joined[20], f32::NEG_INFINITY);
        assert!(joined[37].is_nan());
        assert_eq!(joined[4], 0.5);
    }
}
