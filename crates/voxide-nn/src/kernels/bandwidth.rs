//! Sustained memory read bandwidth, the floor a decoder step is measured against (bytes of
//! weights read per token / bandwidth).
//!
//! On a shared virtual machine the bandwidth moves with the neighbours' load (measured here
//! between 13 and 52 GB/s with 2 threads within minutes), so a floor is only meaningful
//! when measured next to the run it judges: [`ReadProbe`] keeps its buffer so that passes can
//! alternate with the timed work.

use super::simd::{isa_entries, Isa, Simd};
use rayon::prelude::*;
use std::time::Instant;

/// Bytes per task: small enough to balance threads on a noisy machine, large enough to
/// amortise the hand-off.
const CHUNK_BYTES: usize = 8 << 20;

/// How far ahead of the loads the reader prefetches (as the GEMV kernels do).
const PREFETCH_BYTES: usize = 4096;

/// Median read bandwidth in GB/s (10⁹ bytes per second) of `threads` threads streaming a
/// 1 GiB buffer with SIMD loads, over 5 passes after a warm-up pass.
pub fn measure_read_gbps(threads: usize) -> f64 {
    let probe = ReadProbe::new(threads, 1 << 30);
    probe.pass_gbps();
    probe.median_gbps(5)
}

/// [`measure_read_gbps`] over a buffer of `bytes` and `passes` timed passes.
pub fn measure_read_gbps_with(threads: usize, bytes: usize, passes: usize) -> f64 {
    let probe = ReadProbe::new(threads, bytes);
    probe.pass_gbps();
    probe.median_gbps(passes)
}

/// A buffer and a thread pool to measure read bandwidth with, pass by pass.
pub struct ReadProbe {
    pool: rayon::ThreadPool,
    buf: Vec<f32>,
    chunk: usize,
    isa: Isa,
    prefetch: bool,
}

impl ReadProbe {
    /// `threads` threads over a buffer of `bytes` (touched by those threads), reading with
    /// software prefetch like the GEMV kernels.
    pub fn new(threads: usize, bytes: usize) -> Self {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("bandwidth thread pool");
        let floats = (bytes / 4).max(16);
        let chunk = (CHUNK_BYTES / 4).min(floats.div_ceil(threads));
        let buf = pool.install(|| {
            // First touch by the reading threads (page placement).
            let mut buf = vec![0f32; floats];
            buf.par_chunks_mut(chunk).for_each(|c| c.fill(1.0));
            buf
        });
        Self {
            pool,
            buf,
            chunk,
            isa: Isa::detect(),
            prefetch: true,
        }
    }

    /// The same probe reading with plain loads only.
    pub fn without_prefetch(mut self) -> Self {
        self.prefetch = false;
        self
    }

    /// Bytes of the probe's (resident) buffer.
    pub fn bytes(&self) -> usize {
        self.buf.len() * 4
    }

    /// GB/s of one pass over the buffer.
    pub fn pass_gbps(&self) -> f64 {
        let t = Instant::now();
        let total: f32 = self.pool.install(|| {
            self.buf
                .par_chunks(self.chunk)
                .map(|c| read_on(self.isa, c, self.prefetch))
                .sum()
        });
        std::hint::black_box(total);
        (self.buf.len() * 4) as f64 / t.elapsed().as_secs_f64() / 1e9
    }

    /// Median GB/s of `passes` passes.
    pub fn median_gbps(&self, passes: usize) -> f64 {
        let mut r: Vec<f64> = (0..passes.max(1)).map(|_| self.pass_gbps()).collect();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    }
}

isa_entries! {
    /// Sum of the slice (so that the loads are not optimised away).
    fn read_on<>(c: &[f32], prefetch: bool) -> f32 => read_body
}

#[inline(always)]
unsafe fn read_body<S: Simd>(c: &[f32], prefetch: bool) -> f32 {
    let p = c.as_ptr();
    let mut acc = [S::zero(); 4];
    let step = 4 * S::LANES;
    let mut j = 0;
    while j + step <= c.len() {
        if prefetch {
            let a = (p.add(j) as *const u8).wrapping_add(PREFETCH_BYTES);
            let mut off = 0;
            while off < step * 4 {
                S::prefetch_stream(a.wrapping_add(off));
                off += 64;
            }
        }
        for (u, a) in acc.iter_mut().enumerate() {
            *a = S::add(*a, S::load(p.add(j + u * S::LANES)));
        }
        j += step;
    }
    let v = S::add(S::add(acc[0], acc[1]), S::add(acc[2], acc[3]));
    S::sum(v) + c[j..].iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_positive_finite_rate() {
        for threads in [1, 2] {
            let gbps = measure_read_gbps_with(threads, 4 << 20, 2);
            assert!(gbps.is_finite() && gbps > 0.0, "{threads} threads: {gbps}");
            let plain = ReadProbe::new(threads, 1 << 20)
                .without_prefetch()
                .median_gbps(1);
            assert!(plain.is_finite() && plain > 0.0);
        }
    }

    #[test]
    fn reads_every_element() {
        let v: Vec<f32> = (0..1000).map(|i| (i % 7) as f32).collect();
        let want: f32 = v.iter().sum();
        for isa in Isa::available() {
            assert_eq!(read_on(isa, &v, true), want, "{isa:?}");
            assert_eq!(read_on(isa, &v, false), want, "{isa:?}");
        }
    }
}
