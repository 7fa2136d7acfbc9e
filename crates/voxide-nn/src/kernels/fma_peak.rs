//! The machine's f32 FMA rate, the floor of compute-bound work (an encoder window's FLOPs /
//! peak), measured like the bandwidth: a floor is stated for the machine that ran.

use super::simd::{isa_entries, Isa, Simd};
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

#[cfg(test)]
mod tests {
    use super::*;

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
