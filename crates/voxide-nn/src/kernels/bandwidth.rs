//! Sustained memory read bandwidth, the floor a decoder step is measured against (bytes of
//! weights read per token / bandwidth).
//!
//! A floor must be one the code cannot beat, so the probe reads the way the best simple reader
//! on the machine does: it tries several ways ([`ReadVariant`]: with and without software
//! prefetch, cache-bypassing or not, on huge pages or 4 kB pages, each thread on one contiguous
//! part or on interleaved chunks, one stream or four side by side as the GEMV reads weight
//! rows) and keeps the fastest. Which one wins depends on the CPU: on
//! an Intel Xeon non-temporal prefetches read ~40 % slower than plain loads (they skip the L2
//! streamer), on AMD EPYC they do not.
//!
//! On a shared virtual machine the bandwidth moves with the neighbours' load (measured between
//! 13 and 67 GB/s with 2 threads within minutes), so a floor is only meaningful when measured
//! next to the run it judges: [`ReadProbe`] keeps its buffers so that passes can alternate with
//! the timed work.

#[cfg(target_arch = "x86_64")]
use super::gemv::TASK_BYTES;
use super::machine::{advise_pages, machine, weight_prefetch, Residency};
use super::simd::{isa_entries, Isa, Simd};
use rayon::prelude::*;
use std::sync::OnceLock;
use std::time::Instant;

/// Bytes per task of the interleaved layout: small enough to balance threads on a noisy
/// machine, large enough to amortise the hand-off.
const CHUNK_BYTES: usize = 8 << 20;

/// How far ahead of the loads the reader prefetches (as the GEMV kernels do).
const PREFETCH_BYTES: usize = 4096;

/// Smallest buffer of [`ReadProbe::for_machine`]; it is also at least 4× the last-level cache
/// (a 480 MB L3 would otherwise serve part of a 1 GiB pass).
const MIN_PROBE_BYTES: usize = 1 << 30;

/// Software prefetch ahead of the loads (the discriminants are the GEMV kernels' const
/// parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Prefetch {
    None,
    /// Into every cache level (T0).
    Keep,
    /// Non-temporal (NTA): bypassing the caches where the CPU can.
    Stream,
}

/// How the threads split the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// Chunks of `CHUNK_BYTES` handed out by the thread pool (as the GEMV's row tasks).
    Chunks,
    /// One contiguous part per thread (OpenMP's static schedule).
    Contiguous,
}

/// One way of reading the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReadVariant {
    pub prefetch: Prefetch,
    pub huge_pages: bool,
    pub split: Split,
    /// Parts of each task read side by side, as the GEMV reads [`SIDE_BY_SIDE`] weight rows
    /// at once (more misses in flight than one stream).
    pub side_by_side: bool,
}

/// Streams a side-by-side reader interleaves.
pub const SIDE_BY_SIDE: usize = 4;

impl std::fmt::Display for ReadVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefetch = match self.prefetch {
            Prefetch::None => "no prefetch",
            Prefetch::Keep => "prefetch T0",
            Prefetch::Stream => "prefetch NTA",
        };
        let pages = if self.huge_pages { "2 MB" } else { "4 kB" };
        let split = match self.split {
            Split::Chunks => "8 MB chunks",
            Split::Contiguous => "contiguous",
        };
        let streams = if self.side_by_side { ", 4 streams" } else { "" };
        write!(f, "{prefetch}, {pages} pages, {split}{streams}")
    }
}

impl ReadVariant {
    /// Every variant the probe tries.
    pub fn all() -> Vec<ReadVariant> {
        let mut v = Vec::new();
        for prefetch in [Prefetch::None, Prefetch::Keep, Prefetch::Stream] {
            for huge_pages in [true, false] {
                for split in [Split::Contiguous, Split::Chunks] {
                    for side_by_side in [false, true] {
                        v.push(ReadVariant {
                            prefetch,
                            huge_pages,
                            split,
                            side_by_side,
                        });
                    }
                }
            }
        }
        v
    }
}

/// A buffer on huge pages and one on 4 kB pages, a thread pool, and the variant that read
/// fastest when the probe was made.
pub struct ReadProbe {
    pool: rayon::ThreadPool,
    threads: usize,
    huge: Vec<f32>,
    small: Vec<f32>,
    isa: Isa,
    /// Every variant's GB/s at construction ([`rank_variants`]), fastest first.
    variants: Vec<(ReadVariant, f64)>,
}

impl ReadProbe {
    /// `threads` threads over two buffers of `bytes` each (touched by those threads); tries
    /// every variant (in rounds over all of them, forward then backward) and keeps the fastest.
    pub fn new(threads: usize, bytes: usize) -> Self {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("bandwidth thread pool");
        let floats = (bytes / 4).max(16);
        let alloc = |huge: bool| {
            pool.install(|| {
                let mut buf: Vec<f32> = Vec::with_capacity(floats);
                advise_pages(buf.as_mut_ptr() as *mut u8, floats * 4, huge);
                // First touch by the reading threads (page placement).
                buf.resize(floats, 0.0);
                let per = floats.div_ceil(threads);
                buf.par_chunks_mut(per).for_each(|c| c.fill(1.0));
                buf
            })
        };
        let mut probe = Self {
            huge: alloc(true),
            small: alloc(false),
            pool,
            threads,
            isa: Isa::detect(),
            variants: Vec::new(),
        };
        // A warm-up pass over each buffer (its page tables), then the timed rounds.
        for huge_pages in [true, false] {
            probe.pass_gbps(ReadVariant {
                huge_pages,
                ..ReadVariant::all()[0]
            });
        }
        probe.variants = rank_variants(&ReadVariant::all(), RANKING_ROUNDS, |v| probe.pass_gbps(v));
        probe
    }

    /// A probe with all usable cores' worth of `threads` over buffers of at least 1 GiB and 4×
    /// the last-level cache.
    pub fn for_machine(threads: usize) -> Self {
        Self::new(threads, MIN_PROBE_BYTES.max(4 * machine().caches.l3))
    }

    /// Bytes of the probe's (resident) buffers.
    pub fn bytes(&self) -> usize {
        (self.huge.len() + self.small.len()) * 4
    }

    /// Threads the probe reads with.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Every variant's GB/s when the probe was made (the mean of its middle passes of four, taken
    /// in rounds over all the variants), fastest first.
    pub fn variants(&self) -> &[(ReadVariant, f64)] {
        &self.variants
    }

    /// The fastest variant.
    pub fn best(&self) -> ReadVariant {
        self.variants[0].0
    }

    /// GB/s of one pass of `variant`.
    pub fn pass_gbps(&self, variant: ReadVariant) -> f64 {
        let buf = if variant.huge_pages {
            &self.huge
        } else {
            &self.small
        };
        let chunk = match variant.split {
            Split::Chunks => (CHUNK_BYTES / 4).min(buf.len().div_ceil(self.threads)),
            Split::Contiguous => buf.len().div_ceil(self.threads),
        };
        let (prefetch, streams) = (
            variant.prefetch,
            if variant.side_by_side {
                SIDE_BY_SIDE
            } else {
                1
            },
        );
        let t = Instant::now();
        let total: f32 = self.pool.install(|| {
            buf.par_chunks(chunk)
                .with_max_len(1)
                .map(|c| read_on(self.isa, c, prefetch, streams))
                .sum()
        });
        std::hint::black_box(total);
        (buf.len() * 4) as f64 / t.elapsed().as_secs_f64() / 1e9
    }

    /// Median GB/s of `passes` passes of the fastest variant.
    pub fn median_gbps(&self, passes: usize) -> f64 {
        median(
            (0..passes.max(1))
                .map(|_| self.pass_gbps(self.best()))
                .collect(),
        )
    }

    /// Fastest of `passes` passes of the fastest variant: what a bandwidth floor divides by,
    /// so that a run during a quieter moment of a shared machine cannot read faster than it.
    pub fn fastest_gbps(&self, passes: usize) -> f64 {
        (0..passes.max(1))
            .map(|_| self.pass_gbps(self.best()))
            .fold(0.0, f64::max)
    }
}

/// Timed passes of each variant when a probe ranks them: rounds in pairs, one forward over the
/// variants and one backward.
const RANKING_ROUNDS: usize = 4;

/// Every variant's GB/s by `pass`, fastest first. The passes go round the variants, forward
/// then backward (ABBA), not one variant after another: on a shared machine the memory's rate
/// drifts by 1.5× within the seconds a scan takes, and a scan in order ranked the variants by
/// when they ran — one command on an AMD EPYC Zen 3 ranked a single stream per thread first,
/// then 8 of its 12 windows read faster than the probes of that variant (PERFORMANCE.md #195).
/// A variant's rate is the mean of its middle two passes of four, in which a drift linear in
/// the passes' order cancels (in time where the passes take alike) and one outlier pass at
/// either end is dropped.
fn rank_variants(
    variants: &[ReadVariant],
    rounds: usize,
    mut pass: impl FnMut(ReadVariant) -> f64,
) -> Vec<(ReadVariant, f64)> {
    let mut samples = vec![Vec::with_capacity(rounds); variants.len()];
    for round in 0..rounds {
        for k in 0..variants.len() {
            let i = if round % 2 == 0 {
                k
            } else {
                variants.len() - 1 - k
            };
            samples[i].push(pass(variants[i]));
        }
    }
    let mut ranked: Vec<(ReadVariant, f64)> = variants
        .iter()
        .copied()
        .zip(samples.into_iter().map(middle_mean))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked
}

/// The mean of the middle one or two of a non-empty set of rates.
fn middle_mean(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    (values[(n - 1) / 2] + values[n / 2]) / 2.0
}

/// The median of a non-empty set of rates (the upper one of an even count).
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Bytes [`StreamingReads::measure`] reads per pass. The buffer is flushed from the caches
/// before each pass, so this size reads from memory whatever the cache (1–3 ms a pass).
#[cfg(target_arch = "x86_64")]
const STREAMING_PROBE_BYTES: usize = 32 << 20;

/// The share of plain prefetches' read rate that non-temporal prefetches must reach to be used
/// for streamed matrices. What they buy is that the cached rest of a step survives the stream
/// (at best the cached share of the step's reads: 5–10 % of a Whisper tiny step on a 32 MB L3,
/// PERFORMANCE.md #10); reading the streamed bytes more slowly than that costs more.
pub const NONTEMPORAL_MIN_SHARE: f64 = 0.9;

/// How fast this machine reads weights from memory with non-temporal prefetches (NTA) against
/// plain ones (T0), on the thread pool that decodes. On an Intel Xeon (Sapphire Rapids) NTA
/// reads 10 GB/s where T0 reads 30 (they skip the L2 streamer); on AMD EPYC both read alike.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StreamingReads {
    pub nontemporal_gbps: f64,
    pub keep_gbps: f64,
}

impl StreamingReads {
    /// Whether streamed matrices should be read with non-temporal prefetches.
    pub fn nontemporal_pays(&self) -> bool {
        self.nontemporal_gbps >= NONTEMPORAL_MIN_SHARE * self.keep_gbps
    }

    /// Three alternating passes of each prefetch over a buffer flushed from the caches before
    /// every pass (4 streams side by side per task, as the GEMV reads rows), the fastest of
    /// each kept. `None` where user code cannot flush the caches (not x86-64).
    pub fn measure() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            let buf = huge_page_buffer(STREAMING_PROBE_BYTES);
            let pass = |prefetch: Prefetch| {
                flush_caches(&buf);
                timed_read(&buf, prefetch)
            };
            let (mut nontemporal_gbps, mut keep_gbps) = (0.0f64, 0.0f64);
            for _ in 0..3 {
                nontemporal_gbps = nontemporal_gbps.max(pass(Prefetch::Stream));
                keep_gbps = keep_gbps.max(pass(Prefetch::Keep));
            }
            Some(Self {
                nontemporal_gbps,
                keep_gbps,
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        None
    }
}

/// How much faster than from memory a step's cached weights must read after the step's
/// streamed ones went past them for the residency plan to keep any cached. Kept whole, a set
/// reads ~2× as fast as from memory (Zen 4: 55–60 against 28 GB/s from L3, one thread); kept
/// in part, not enough to pay for the cached reads' prefetch and tasks, which read memory more
/// slowly than the streamed path (a 0.6B TTS frame's GEMVs ~5 % slower with a quarter of its
/// bytes planned cached and not retained; PERFORMANCE.md #128). On that host the measure
/// varied between processes from 0.97× to 1.37×.
pub const RETENTION_MIN_GAIN: f64 = 1.5;

/// Most bytes [`Retention::measure`] streams past the kept set: twice a 32 MB L3 with room to
/// spare, without allocating a gigabyte for a 480 MB one.
const RETENTION_MAX_STREAM_BYTES: usize = 256 << 20;

/// Whether weights read through the caches are still there after a decoder step has streamed
/// its other weights past them: what a residency plan that keeps some matrices cached assumes.
///
/// It does not hold everywhere. On a shared virtual machine (AMD EPYC Zen 4, 32 MB L3 shared
/// with the neighbours' cores) a 16 MB set re-read after 64 MB streamed with non-temporal
/// prefetches read at 29–32 GB/s, as from memory (28), against 55–60 when nothing came between
/// (PERFORMANCE.md #128): the L2 streamer pulls the streamed lines in beside the prefetches and
/// they evict the set on their way through the victim L3. There a plan that keeps matrices
/// "cached" only reads them with the cached reads' prefetches, from memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Retention {
    /// The set kept cached (the machine's step cache budget) and the bytes streamed past it.
    pub kept_bytes: usize,
    pub streamed_bytes: usize,
    /// Medians over the rounds: the set re-read after the stream, and read from memory.
    pub kept_gbps: f64,
    pub cold_gbps: f64,
    /// Median over the rounds of kept / cold within each round (the bandwidth moves between
    /// rounds on a shared machine).
    pub gain: f64,
}

impl Retention {
    /// Whether a plan may keep matrices cached.
    pub fn holds(&self) -> bool {
        self.gain >= RETENTION_MIN_GAIN
    }

    /// Three rounds on the calling thread's pool of: the kept set read twice (cached), the
    /// stream read as streamed weights are (`prefetch`), the kept set timed, then flushed and
    /// timed from memory. `None` where user code cannot flush the caches (not x86-64) or
    /// there is nothing to keep.
    pub fn measure(kept_bytes: usize, streamed_bytes: usize, prefetch: Prefetch) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if kept_bytes == 0 {
                return None;
            }
            let (kept, stream) = (
                huge_page_buffer(kept_bytes),
                huge_page_buffer(streamed_bytes),
            );
            let (mut kept_gbps, mut cold_gbps, mut gain) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..3 {
                timed_read(&kept, Prefetch::Keep);
                timed_read(&kept, Prefetch::Keep);
                timed_read(&stream, prefetch);
                let after = timed_read(&kept, Prefetch::Keep);
                flush_caches(&kept);
                let cold = timed_read(&kept, Prefetch::Keep);
                kept_gbps.push(after);
                cold_gbps.push(cold);
                gain.push(after / cold);
            }
            Some(Self {
                kept_bytes: kept.len() * 4,
                streamed_bytes: stream.len() * 4,
                kept_gbps: median(kept_gbps),
                cold_gbps: median(cold_gbps),
                gain: median(gain),
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (kept_bytes, streamed_bytes, prefetch);
            None
        }
    }
}

/// This machine's [`Retention`] of its step cache budget past twice its caches (L3 and L2s;
/// at most `RETENTION_MAX_STREAM_BYTES`) streamed as weights are, measured on first use;
/// `None` where it cannot be measured (a plan is then trusted).
pub fn retention() -> Option<Retention> {
    *RETENTION.get_or_init(|| {
        let m = machine();
        let caches = m.caches.l3 + m.caches.l2_per_core * m.cores;
        let streamed = (2 * caches).min(RETENTION_MAX_STREAM_BYTES);
        let prefetch = weight_prefetch(Residency::Streamed, streamed);
        Retention::measure(m.cache_budget(), streamed, prefetch)
    })
}

/// The [`Retention`] measured so far in this process, if any (for reports).
pub fn measured_retention() -> Option<Retention> {
    RETENTION.get().copied().flatten()
}

static RETENTION: OnceLock<Option<Retention>> = OnceLock::new();

/// Timed passes of [`reread_gbps`] after its two untimed ones.
#[cfg(target_arch = "x86_64")]
const REREAD_PASSES: usize = 5;

/// How fast a set of `bytes` comes back when it is read again with nothing read in between:
/// the fastest of a few passes over a buffer of that size already read twice, on the calling
/// thread's pool, read as cached weights are. It is the rate of a decoding cycle's re-reads,
/// such as a Qwen3-TTS frame's code predictor, which reads its stack once per acoustic group:
/// where the set fits the caches, every pass after the first comes from them, whatever the
/// residency plan calls its matrices (on an Emerald Rapids guest with a 300 MB L3, a 79 MB set
/// re-read at 44–47 GB/s while memory read 25–44; PERFORMANCE.md #194). The fastest pass,
/// since a floor is the least time. `None` for an empty set, and where the probe's reader does
/// not run (not x86-64).
pub fn reread_gbps(bytes: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if bytes == 0 {
            return None;
        }
        let buf = huge_page_buffer(bytes);
        let pass = || timed_read(&buf, Prefetch::Keep);
        pass();
        pass();
        Some((0..REREAD_PASSES).map(|_| pass()).fold(0.0, f64::max))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = bytes;
        None
    }
}

/// A buffer of `bytes` (at least 64) of ones, on huge pages where Linux grants them, as the
/// model's weights lie.
#[cfg(target_arch = "x86_64")]
fn huge_page_buffer(bytes: usize) -> Vec<f32> {
    let floats = (bytes / 4).max(16);
    let mut buf: Vec<f32> = Vec::with_capacity(floats);
    advise_pages(buf.as_mut_ptr() as *mut u8, floats * 4, true);
    buf.resize(floats, 1.0);
    buf
}

/// GB/s of one pass over `buf` on the calling thread's pool, in the GEMV's tasks, 4 streams
/// side by side per task.
#[cfg(target_arch = "x86_64")]
fn timed_read(buf: &[f32], prefetch: Prefetch) -> f64 {
    let isa = Isa::detect();
    let t = Instant::now();
    let total: f32 = buf
        .par_chunks(TASK_BYTES / 4)
        .map(|c| read_on(isa, c, prefetch, SIDE_BY_SIDE))
        .sum();
    std::hint::black_box(total);
    (buf.len() * 4) as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// Evicts `buf` from every cache level (a flush per line), in parallel: `clflushopt` where the
/// CPU has it, else `clflush`, whose flushes are ordered among themselves — on an Emerald
/// Rapids guest 64 MB took 150–167 ms with `clflush` and 3–5 ms with `clflushopt`, and the
/// start-up measurements that flush ([`StreamingReads`], [`Retention`], the GEMV's read-ahead)
/// took seconds of every model load there (PERFORMANCE.md #188).
#[cfg(target_arch = "x86_64")]
pub(crate) fn flush_caches<T: Sync>(buf: &[T]) {
    use std::arch::x86_64::{_mm_clflush, _mm_mfence};
    static OPT: OnceLock<bool> = OnceLock::new();
    // CPUID leaf 7, EBX bit 23: CLFLUSHOPT.
    let opt = *OPT.get_or_init(|| {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        __cpuid(0).eax >= 7 && (__cpuid_count(7, 0).ebx >> 23) & 1 == 1
    });
    let line = (64 / std::mem::size_of::<T>().max(1)).max(1);
    buf.par_chunks((TASK_BYTES / std::mem::size_of::<T>().max(1)).max(1))
        .for_each(|c| {
            for line in c.chunks(line) {
                let p = line.as_ptr() as *const u8;
                // SAFETY: the pointer is inside `buf`; `clflushopt` only where the CPU has it,
                // `clflush` is part of SSE2 and so of x86-64.
                unsafe {
                    if opt {
                        std::arch::asm!("clflushopt [{}]", in(reg) p, options(nostack, preserves_flags));
                    } else {
                        _mm_clflush(p);
                    }
                }
            }
        });
    // SAFETY: as above; the fence orders the flushes (either kind) before what follows.
    unsafe { _mm_mfence() };
}

/// This machine's [`StreamingReads`], measured on first use (on the calling thread's pool).
pub fn streaming_reads() -> Option<StreamingReads> {
    static READS: OnceLock<Option<StreamingReads>> = OnceLock::new();
    *READS.get_or_init(StreamingReads::measure)
}

isa_entries! {
    /// Sum of the slice (so that the loads are not optimised away), read as `streams` parts
    /// side by side.
    fn read_on<>(c: &[f32], prefetch: Prefetch, streams: usize) -> f32 => read_streams
}

#[inline(always)]
unsafe fn read_streams<S: Simd>(c: &[f32], prefetch: Prefetch, streams: usize) -> f32 {
    if streams == SIDE_BY_SIDE {
        read_body::<S, SIDE_BY_SIDE>(c, prefetch)
    } else {
        read_body::<S, 1>(c, prefetch)
    }
}

/// `N` equal parts of `c` read side by side (8 accumulators in all), the rest after them.
#[inline(always)]
unsafe fn read_body<S: Simd, const N: usize>(c: &[f32], prefetch: Prefetch) -> f32 {
    let part = c.len() / N;
    let parts: [*const f32; N] = std::array::from_fn(|s| c.as_ptr().add(s * part));
    let mut acc = [S::zero(); 8];
    let per = acc.len() / N;
    let step = per * S::LANES;
    let mut j = 0;
    while j + step <= part {
        for p in parts {
            if prefetch != Prefetch::None {
                let a = (p.add(j) as *const u8).wrapping_add(PREFETCH_BYTES);
                let mut off = 0;
                while off < step * 4 {
                    if prefetch == Prefetch::Stream {
                        S::prefetch_stream(a.wrapping_add(off));
                    } else {
                        S::prefetch_keep(a.wrapping_add(off));
                    }
                    off += 64;
                }
            }
        }
        for (s, p) in parts.iter().enumerate() {
            for u in 0..per {
                acc[s * per + u] = S::add(acc[s * per + u], S::load(p.add(j + u * S::LANES)));
            }
        }
        j += step;
    }
    let mut v = acc[0];
    for a in &acc[1..] {
        v = S::add(v, *a);
    }
    let rest: f32 = (0..N)
        .map(|s| c[s * part + j..(s + 1) * part].iter().sum::<f32>())
        .sum();
    S::sum(v) + rest + c[N * part..].iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tries_every_variant_and_keeps_the_fastest() {
        for threads in [1, 2] {
            let probe = ReadProbe::new(threads, 4 << 20);
            assert_eq!(probe.variants().len(), ReadVariant::all().len());
            assert!(probe
                .variants()
                .iter()
                .all(|(_, g)| g.is_finite() && *g > 0.0));
            assert!(probe.variants().windows(2).all(|w| w[0].1 >= w[1].1));
            assert_eq!(probe.best(), probe.variants()[0].0);
            let gbps = probe.median_gbps(2);
            assert!(gbps.is_finite() && gbps > 0.0, "{threads} threads: {gbps}");
        }
    }

    #[test]
    fn variants_are_ranked_by_their_rate_not_by_when_they_ran() {
        // Four variants 4 GB/s apart, fastest first, under a drift of +3 GB/s per pass: a scan
        // one variant after another (3 passes each, median) ranked them slowest first.
        let variants: Vec<ReadVariant> = ReadVariant::all().into_iter().take(4).collect();
        let base =
            |v: ReadVariant| 100.0 - 4.0 * variants.iter().position(|&w| w == v).unwrap() as f64;
        let mut passes = 0;
        let ranked = rank_variants(&variants, RANKING_ROUNDS, |v| {
            passes += 1;
            base(v) + 3.0 * passes as f64
        });
        assert_eq!(passes, RANKING_ROUNDS * variants.len());
        assert_eq!(
            ranked.iter().map(|r| r.0).collect::<Vec<_>>(),
            variants,
            "{ranked:?}"
        );
        // The drift cancels: each rate is its base plus the same offset.
        let offset = ranked[0].1 - base(ranked[0].0);
        for (v, g) in &ranked {
            assert!((g - base(*v) - offset).abs() < 1e-9, "{ranked:?}");
        }
        // One outlier pass leaves a variant's rate where its other passes put it.
        let mut calls = 0;
        let ranked = rank_variants(&variants[..1], RANKING_ROUNDS, |_| {
            calls += 1;
            if calls == 2 {
                1000.0
            } else {
                50.0
            }
        });
        assert_eq!(ranked[0].1, 50.0);
    }

    #[test]
    fn streaming_reads_are_measured_from_memory_where_the_caches_can_be_flushed() {
        let reads = StreamingReads::measure();
        assert_eq!(reads.is_some(), cfg!(target_arch = "x86_64"));
        if let Some(r) = reads {
            for gbps in [r.nontemporal_gbps, r.keep_gbps] {
                assert!(gbps.is_finite() && gbps > 0.0, "{r:?}");
            }
        }
    }

    #[test]
    fn retention_is_measured_where_the_caches_can_be_flushed() {
        let r = Retention::measure(1 << 20, 4 << 20, Prefetch::Stream);
        assert_eq!(r.is_some(), cfg!(target_arch = "x86_64"));
        if let Some(r) = r {
            assert_eq!((r.kept_bytes, r.streamed_bytes), (1 << 20, 4 << 20));
            for gbps in [r.kept_gbps, r.cold_gbps, r.gain] {
                assert!(gbps.is_finite() && gbps > 0.0, "{r:?}");
            }
        }
        assert_eq!(Retention::measure(0, 4 << 20, Prefetch::Stream), None);
    }

    #[test]
    fn a_set_read_again_is_timed_where_the_reader_runs() {
        let measured = reread_gbps(1 << 20);
        assert_eq!(measured.is_some(), cfg!(target_arch = "x86_64"));
        if let Some(gbps) = measured {
            assert!(gbps.is_finite() && gbps > 0.0, "{gbps}");
        }
        assert_eq!(reread_gbps(0), None);
    }

    #[test]
    fn reads_every_element() {
        let v: Vec<f32> = (0..1000).map(|i| (i % 7) as f32).collect();
        let want: f32 = v.iter().sum();
        for isa in Isa::available() {
            for prefetch in [Prefetch::None, Prefetch::Keep, Prefetch::Stream] {
                for streams in [1, SIDE_BY_SIDE] {
                    let got = read_on(isa, &v, prefetch, streams);
                    assert_eq!(got, want, "{isa:?} {prefetch:?} {streams}");
                }
            }
        }
    }
}
