//! The machine's f32 FMA rate, the floor of compute-bound work (an encoder window's FLOPs /
//! peak), measured like the bandwidth: a floor is stated for the machine that ran. And the
//! rate of its bf16 dot products against it, which decides whether the kernels built on them
//! pay on this CPU ([`bf16_dots`]), and the rate of its AMX tiles ([`amx_bf16_gflops`]), the
//! ceiling of the products built on them.

use super::simd::{isa_entries, Isa, Simd};
use std::sync::OnceLock;
use std::time::Instant;

/// Independent accumulator chains per thread: enough to cover the FMA latency on both ports of
/// current x86 cores (2 × 4–5 cycles), and with the two constants within AVX2's 16 registers.
const CHAINS: usize = 12;

/// FMAs per chain per timed call.
const ITERS: usize = 1 << 20;

isa_entries! {
    /// `iters` rounds of CHAINS independent FMAs; returns a value that depends on all of them.
    fn fma_loop<>(seed: f32, iters: usize) -> f32 => fma_body
}

#[inline(always)]
unsafe fn fma_body<S: Simd>(seed: f32, iters: usize) -> f32 {
    let mut acc = [S::splat(seed); CHAINS];
    let a = S::splat(0.999_999);
    let b = S::splat(1e-7);
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = S::fma(*v, a, b);
        }
    }
    let mut s = acc[0];
    for v in &acc[1..] {
        s = S::add(s, *v);
    }
    S::sum(s)
}

/// FLOPs of one [`fma_loop`] call on `isa`.
fn flops_per_call(isa: Isa) -> f64 {
    (2 * isa.lanes() * CHAINS * ITERS) as f64
}

/// f32 GFLOP/s of `threads` threads running FMAs on the widest instruction set (best of
/// `passes` timed passes after a warm-up: the peak is a maximum, noise only lowers it).
pub fn measure_fma_gflops(threads: usize, passes: usize) -> f64 {
    let threads = threads.max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("fma thread pool");
    let isa = Isa::detect();
    let pass = || {
        let t = Instant::now();
        let sums = pool.broadcast(|ctx| fma_loop(isa, ctx.index() as f32, ITERS));
        std::hint::black_box(sums);
        flops_per_call(isa) * threads as f64 / t.elapsed().as_secs_f64() / 1e9
    };
    pass();
    (0..passes.max(1)).map(|_| pass()).fold(0.0, f64::max)
}

/// How much faster than f32 FMAs bf16 dot products must multiply-add for the kernels built on
/// them (`small_m_bf16`, the bf16 form of `attention_many_rows`, the GEMV's `gemv_bf16`) to
/// be taken. Those kernels round and pack x into bf16 pairs besides, so at the same rate they
/// lose. Measured on one core: Zen 4 2.0× (one 512-bit instruction of either kind a cycle, a
/// dot product doing twice the multiply-adds), Zen 5 1.85–1.87× (two of either kind a
/// cycle), Intel Xeon Emerald Rapids 0.49× (one dot product every other cycle against two
/// FMAs a cycle), where the bf16 kernels ran at 0.55–0.75× the f32 ones (PERFORMANCE.md #167)
/// and the bf16 GEMV's dot kernel read a step at 1.06–1.08× the widening one's time (#191).
pub const BF16_DOTS_MIN_GAIN: f64 = 1.5;

/// One core's rate of bf16 dot products (`vdpbf16ps`) against its f32 FMAs, in GFLOP/s (a
/// multiply-add is 2 FLOPs in both).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bf16Dots {
    pub f32_gflops: f64,
    pub bf16_gflops: f64,
}

impl Bf16Dots {
    /// Whether bf16 dot products are fast enough here to take ([`BF16_DOTS_MIN_GAIN`]).
    pub fn pay(&self) -> bool {
        self.bf16_gflops >= BF16_DOTS_MIN_GAIN * self.f32_gflops
    }

    /// Both rates on the calling thread (best of a few alternating passes after a warm-up of
    /// each: a few ms); `None` where the CPU has no bf16 dot products (AVX512-BF16).
    pub fn measure() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if super::small_m_bf16::runs() {
            const PASS_ITERS: usize = 1 << 16;
            const PASSES: usize = 4;
            let isa = Isa::Avx512;
            let rate = |flops: f64, run: &dyn Fn() -> f32| {
                let t = Instant::now();
                std::hint::black_box(run());
                flops / t.elapsed().as_secs_f64() / 1e9
            };
            // Per instruction 16 lanes' multiply-adds as FMAs, twice that as dot products.
            let f32_flops = (2 * isa.lanes() * CHAINS * PASS_ITERS) as f64;
            let f32_pass = || rate(f32_flops, &|| fma_loop(isa, 1.0, PASS_ITERS));
            // SAFETY: the CPU runs AVX-512F and AVX512-BF16 (`small_m_bf16::runs`).
            let bf16_pass = || {
                rate(2.0 * f32_flops, &|| unsafe {
                    bf16_dot_loop(1.0, PASS_ITERS)
                })
            };
            let (mut f32_gflops, mut bf16_gflops) = (0f64, 0f64);
            for pass in 0..=PASSES {
                let (f, b) = (f32_pass(), bf16_pass());
                if pass > 0 {
                    (f32_gflops, bf16_gflops) = (f32_gflops.max(f), bf16_gflops.max(b));
                }
            }
            return Some(Self {
                f32_gflops,
                bf16_gflops,
            });
        }
        None
    }
}

/// This machine's [`Bf16Dots`], measured on first use; `None` where it has no bf16 dot
/// products.
pub fn bf16_dots() -> Option<Bf16Dots> {
    static DOTS: OnceLock<Option<Bf16Dots>> = OnceLock::new();
    *DOTS.get_or_init(Bf16Dots::measure)
}

/// One core's rate of AMX tiles' bf16 products (`tdpbf16ps`) in GFLOP/s, measured on first
/// use (`amx_bf16::measure_peak_gflops`); `None` where the tiles do not run.
pub fn amx_bf16_gflops() -> Option<f64> {
    static TILES: OnceLock<Option<f64>> = OnceLock::new();
    #[cfg(target_arch = "x86_64")]
    return *TILES.get_or_init(|| super::amx_bf16::measure_peak_gflops(3));
    #[cfg(not(target_arch = "x86_64"))]
    *TILES.get_or_init(|| None)
}

/// [`fma_loop`]'s chains as bf16 dot products: each `vdpbf16ps` adds 16 lanes' products of
/// two bf16 pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_dot_loop(seed: f32, iters: usize) -> f32 {
    use std::arch::x86_64::*;
    // Pairs of bf16 0.5 and 1e-7-ish: the sums grow slowly and stay finite.
    let a = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3f00_3f00));
    let b = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x33d6_33d6));
    let mut acc = [_mm512_set1_ps(seed); CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_dpbf16_ps(*v, a, b);
        }
    }
    let mut s = acc[0];
    for v in &acc[1..] {
        s = _mm512_add_ps(s, *v);
    }
    _mm512_reduce_add_ps(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_dots_pay_from_the_gain_up() {
        let dots = |bf16_gflops| Bf16Dots {
            f32_gflops: 100.0,
            bf16_gflops,
        };
        // Zen 4 (256-bit FMAs, ~2×) takes them; Emerald Rapids (~1×) does not.
        assert!(dots(200.0).pay());
        assert!(dots(150.0).pay());
        assert!(!dots(149.0).pay());
        assert!(!dots(100.0).pay());
    }

    #[test]
    fn bf16_dots_are_measured_where_the_cpu_has_them() {
        let dots = Bf16Dots::measure();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(dots.is_some(), crate::kernels::small_m_bf16::runs());
        #[cfg(not(target_arch = "x86_64"))]
        assert!(dots.is_none());
        if let Some(d) = dots {
            assert!(d.f32_gflops > 0.0 && d.bf16_gflops > 0.0, "{d:?}");
            assert!(
                d.bf16_gflops.is_finite() && d.f32_gflops.is_finite(),
                "{d:?}"
            );
        }
    }

    #[test]
    fn measures_a_positive_finite_rate() {
        let g = measure_fma_gflops(2, 1);
        assert!(g.is_finite() && g > 0.0, "{g}");
    }

    #[test]
    fn every_path_computes_the_same_chains() {
        // The result sums every lane: compare per lane (AVX-512 has twice the portable lanes).
        let per_lane = |isa: Isa| fma_loop(isa, 1.0, 1000) / isa.lanes() as f32;
        let want = per_lane(Isa::Scalar);
        for isa in Isa::available() {
            let got = per_lane(isa);
            assert!(
                (got - want).abs() <= 1e-3 * want.abs(),
                "{isa:?}: {got} vs {want}"
            );
        }
    }
}
