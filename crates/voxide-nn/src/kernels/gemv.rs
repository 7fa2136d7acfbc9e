//! Matrix × few-vectors products with narrow weights: `y[m][n] = Σ_k x[m][k] · w[n][k]` (+ bias),
//! with w in f16, bf16 or int8 (per-row scale) in the checkpoint's `[n][k]` layout, x and y in
//! f32, m ≤ [`MAX_ROWS`].
//!
//! A decoder step is bandwidth-bound: each weight is read once per token, so the kernel
//! streams w exactly once for all m rows, widening it to f32 in registers and accumulating
//! with FMA, on all threads for large matrices. candle converts narrow weights to f32 on every
//! call instead (f16 ~25 GB/s, bf16 ~0.9 GB/s against ~33 GB/s of read bandwidth here).
//!
//! One generic body ([`WeightElem`] × `Simd`) serves every element type and instruction set
//! (AVX-512F, AVX2+FMA+F16C, NEON, portable); int8 takes an integer path
//! ([`super::gemv_int8`]), and bf16 native dot products where the CPU has AVX512-BF16
//! ([`super::gemv_bf16`]).

use super::bandwidth::{median, Prefetch};
use super::gemv_bf16::{self, SplitX};
use super::gemv_int8::{self, QuantizedX};
#[cfg(target_arch = "x86_64")]
use super::machine::huge_page_vec;
use super::machine::{machine, weight_prefetch, Residency};
use super::next_matrix::{read_then_warm_next, warmable};
use super::simd::{deinterleave_pairs, isa_entries, Isa, Simd, WeightElem, WEIGHT_KINDS};
use super::spin_pool::{for_each_range, for_each_range_tail_halved};
use std::cell::Cell;
use std::sync::OnceLock;

/// Most rows (tokens × beams) the kernel takes; larger batches go through
/// [`super::small_m`] or GEMM.
pub const MAX_ROWS: usize = 8;

/// Smallest matrix read on all threads: below it one thread reads it before the pool's
/// helpers would have joined (a 64 KB matrix takes ~2 µs from L3 on one core).
const PARALLEL_MIN_BYTES: usize = 64 << 10;

/// Whether a matrix of `bytes` is read on all threads: every matrix worth a hand-off to the
/// spin pool's helpers, whatever the caches. A decoder reads each matrix once per step, after
/// the rest of the step's matrices and K/V, far more than a core's L2, so even one that
/// would fit an L2 comes from L3 or DRAM, where a second core's loads add bandwidth: Zen 4
/// (1 MB L2), Whisper tiny's 24 layer matrices (288 KB to 1.2 MB, from L3) took 0.28–0.30 ms
/// a step with each read by one thread, 0.23 ms with each read by both (PERFORMANCE.md #124).
/// Was: only matrices larger than a core's L2 (#39), measured with rayon's fork-join, which
/// cost more than the second core saved on an f16 384×384 (8 µs on one thread, 18 µs on two).
pub fn runs_parallel(bytes: usize) -> bool {
    bytes >= PARALLEL_MIN_BYTES
}

/// How far ahead of the loads the prefetches of a cached matrix run (from L3; 2 / 4 / 8 KB
/// measured on Zen 3: 4 KB best or equal). Streamed matrices take the distance measured on
/// the machine for their kernel ([`streamed_read_ahead`]).
const PREFETCH_BYTES: usize = 4096;

/// Distances a streamed matrix's prefetches may run ahead of the loads, and the one taken
/// unless another clearly reads faster: on Zen 5 with both cores reading, 2 KB was the
/// fastest or within 1 % of it for the int8 and bf16 kernels alike. 0 is no software
/// prefetch at all, the hardware's prefetchers alone (ggml's GEMV has none): on Zen 4 the
/// f16 kernel read 5–7.5 % faster without hints than with NTA hints 2 KB ahead
/// (PERFORMANCE.md #126).
// Measured on x86-64; elsewhere only the tests read the list.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const STREAMED_PREFETCH_CANDIDATES: [usize; 5] = [0, 1024, 2048, 4096, 8192];
const STREAMED_PREFETCH_DEFAULT: usize = 2048;

/// How much faster than [`STREAMED_PREFETCH_DEFAULT`] another distance must read to be chosen:
/// above the noise of a one-core measurement (a candidate's passes move by 2–3 % from round to
/// round on Zen 4). Was 8 % while the measurement ran on both cores, where a slow memory
/// regime let candidates win by 5–9 % that lost by 10 % once it was fast (Zen 5's int8
/// kernel 1 KB ahead).
const STREAMED_PREFETCH_MIN_GAIN: f64 = 1.04;

/// Bytes of the matrix the distance is measured on (a pass of ~1–1.5 ms from memory on 2
/// cores: shorter passes favoured short distances that lose on long reads), and rounds of
/// passes over the candidates.
#[cfg(target_arch = "x86_64")]
const STREAMED_PREFETCH_PROBE_BYTES: usize = 64 << 20;
#[cfg(target_arch = "x86_64")]
const STREAMED_PREFETCH_ROUNDS: usize = 5;

/// Rounds a measurement may take where the first ones leave the choice close
/// ([`read_ahead_is_close`]): one start-up of Voxtral Realtime in six read no hints with 2 rows
/// at 0.97 of the default over 5 rounds, where every other start-up read it 1.09–1.36 ahead
/// (PERFORMANCE.md #146).
#[cfg(target_arch = "x86_64")]
const STREAMED_PREFETCH_MAX_ROUNDS: usize = 15;

/// Weight rows a pass of a streamed m = 1 GEMV reads side by side: the kernels' own count,
/// and the fewer rows the bf16 kernel reads where it runs without software prefetch (where x
/// fits: `gemv_bf16::x_fits_l1`). Each of those rows is a stream from DRAM, and each load of x
/// serves them all. The core's own prefetchers keep fewer streams fed: on the Zen 4 kind a C
/// loop of the kernel's shape without hints read 1.00 of the plain reader in passes of 2 rows
/// and 0.79 in passes of 4 when the memory was fast, and a synthetic Voxtral Realtime bf16
/// step read 10 % faster with 2 rows and no hints than with 4 rows and NTA hints 2 KB ahead.
/// Software prefetches feed four streams, and four rows share each load of x: on the Intel
/// kind, 4 rows with T0 hints 4 KB ahead read 1.05 of the probe, 2 rows with hints 1.00,
/// 2 rows without 0.76–0.79 (PERFORMANCE.md #143, #144). So the rows follow the measured
/// distance (`read_ahead_candidates`).
pub const ROWS_PER_PASS: usize = 4;
pub const FEWER_ROWS_PER_PASS: usize = 2;

pub(crate) const PREFETCH_NONE: u8 = Prefetch::None as u8;
pub(crate) const PREFETCH_KEEP: u8 = Prefetch::Keep as u8;
pub(crate) const PREFETCH_STREAM: u8 = Prefetch::Stream as u8;

/// Evaluates `$body` with `$pf` a const of the prefetch mode `$mode` (a [`ReadAhead`]'s
/// `prefetch`): how the kernels turn the runtime mode into their const parameter.
macro_rules! with_prefetch {
    ($mode:expr, $pf:ident => $body:expr) => {
        match $mode {
            $crate::kernels::gemv::PREFETCH_STREAM => {
                const $pf: u8 = $crate::kernels::gemv::PREFETCH_STREAM;
                $body
            }
            $crate::kernels::gemv::PREFETCH_KEEP => {
                const $pf: u8 = $crate::kernels::gemv::PREFETCH_KEEP;
                $body
            }
            _ => {
                const $pf: u8 = $crate::kernels::gemv::PREFETCH_NONE;
                $body
            }
        }
    };
}
pub(crate) use with_prefetch;

/// Weight bytes per parallel task of a streamed matrix (which still gets
/// [`MIN_TASKS_PER_THREAD`] tasks per thread). A task reads its rows as R streams side by side
/// ([`in_row_blocks`]), and from DRAM longer streams amortise each stream's start (the
/// hardware prefetcher's training, the first misses): in the synthetic Voxtral step, 512 KB
/// tasks read 2–7 % faster than 64-row tasks, 256 KB and 1 MB in between (PERFORMANCE.md #78).
pub(crate) const TASK_BYTES: usize = 512 << 10;

/// Streamed matrices of at least [`LONG_TASKS_FROM`] bytes take tasks of up to this many:
/// Voxtral Realtime's bf16 step (25–113 MB matrices) read 5–15 % faster in them when two cores
/// could read faster than they do, and level otherwise, while the Qwen3-TTS steps' 6 MB
/// matrices read 5–8 % slower in fewer, longer tasks (PERFORMANCE.md #141).
const LONG_TASK_BYTES: usize = 8 << 20;

/// See [`LONG_TASK_BYTES`].
const LONG_TASKS_FROM: usize = 16 << 20;

/// Output rows per task of a cached matrix: its reads hit the caches, so there is no stream
/// start to amortise and smaller tasks balance better (Whisper base's cached layers read ~7 %
/// slower in 512 KB tasks).
const CACHED_ROWS_PER_TASK: usize = 64;

/// Fewest tasks per thread: a matrix of a few MB still splits evenly over the threads (and
/// over a neighbour's interruptions).
const MIN_TASKS_PER_THREAD: usize = 4;

/// A weight matrix as the kernels read it: `rows` × `cols` elements, row-major (the
/// checkpoint's `[out][in]` layout), and for int8 one f32 scale per row (w = q · scale).
#[derive(Clone, Copy, Debug)]
pub struct WeightMatrix<'a, E> {
    pub data: &'a [E],
    pub scales: Option<&'a [f32]>,
    pub rows: usize,
    pub cols: usize,
    /// How the GEMV reads it ([`super::machine::plan_residency`]); by default streamed only
    /// when the matrix alone exceeds the cache budget.
    pub residency: Residency,
}

impl<'a, E: WeightElem> WeightMatrix<'a, E> {
    /// A matrix without scales (f16, bf16).
    pub fn new(data: &'a [E], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "weight matrix of {rows}×{cols}");
        let bytes = std::mem::size_of_val(data);
        Self {
            data,
            scales: None,
            rows,
            cols,
            residency: Residency::unplanned(bytes),
        }
    }

    /// The matrix read as `residency` says (a model's plan for its decoder step).
    pub fn with_residency(self, residency: Residency) -> Self {
        Self { residency, ..self }
    }

    /// A matrix with one scale per row (int8).
    pub fn with_scales(data: &'a [E], scales: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(scales.len(), rows, "one scale per row");
        Self {
            scales: Some(scales),
            ..Self::new(data, rows, cols)
        }
    }

    /// Bytes of weight data.
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(self.data)
    }

    /// The same matrix over `data`, its elements as another type sees them (the int8 or bf16
    /// view a kernel's specialised path takes, [`WeightElem::as_int8`], [`WeightElem::as_bf16`]).
    pub fn as_elements<F>(&self, data: &'a [F]) -> WeightMatrix<'a, F> {
        WeightMatrix {
            data,
            scales: self.scales,
            rows: self.rows,
            cols: self.cols,
            residency: self.residency,
        }
    }
}

/// Panics unless x is m × k, y is m × n and the bias (if any) has n values for w (n × k): the
/// contract of every product kernel.
pub(crate) fn check_operands<E>(
    x: &[f32],
    w: &WeightMatrix<E>,
    bias: Option<&[f32]>,
    y: &[f32],
    m: usize,
) {
    let (n, k) = (w.rows, w.cols);
    assert!(
        x.len() == m * k && y.len() == m * n,
        "x, y and w do not fit"
    );
    assert!(bias.is_none_or(|b| b.len() == n), "one bias per output");
}

/// Output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub *mut f32);
// SAFETY: tasks write disjoint elements of the buffer, which outlives them.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer `count` elements further (taking `self` whole keeps closures from capturing
    /// the bare, non-`Send` pointer field).
    ///
    /// # Safety
    /// The result must stay within the buffer.
    pub(crate) unsafe fn add(self, count: usize) -> Self {
        Self(self.0.add(count))
    }
}

/// y (m × n) = x (m × k) · wᵀ (+ bias), on the best instruction set of this CPU.
pub fn gemv<E: WeightElem>(
    x: &[f32],
    w: &WeightMatrix<E>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    gemv_on(Isa::detect(), x, w, bias, y, m)
}

/// [`gemv`] on a given instruction set (panics if this CPU lacks it).
pub fn gemv_on<E: WeightElem>(
    isa: Isa,
    x: &[f32],
    w: &WeightMatrix<E>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    let n = w.rows;
    assert!(m <= MAX_ROWS, "gemv takes at most {MAX_ROWS} rows");
    check_operands(x, w, bias, y, m);
    if m == 0 || n == 0 {
        return;
    }
    // Streamed matrices bypass the caches (where that keeps pace) so that the rest of the
    // step's weights stay cached between tokens.
    let prefetch = weight_prefetch(w.residency, w.bytes());
    let ahead = match w.residency {
        Residency::Streamed => {
            let measured = streamed_read_ahead::<E>();
            ReadAhead::streamed(prefetch, measured.bytes, measured.rows_per_pass)
        }
        Residency::Cached => ReadAhead {
            prefetch: prefetch as u8,
            bytes: PREFETCH_BYTES,
            rows_per_pass: ROWS_PER_PASS,
        },
    };
    match parallel_rows(n, w.bytes(), w.residency) {
        Some(per_task) if w.residency == Residency::Streamed => {
            // The helpers will warm the next streamed matrix while the caller runs what lies
            // between (`next_matrix`): its second task on, per helper as much as its L2 and
            // as much again spilled to L3 (0.5 to 4 MB read alike on Zen 5's 1 MB L2s).
            let helpers = rayon::current_num_threads() - 1;
            let start = w.data.as_ptr() as usize;
            let row_bytes = w.cols * std::mem::size_of::<E>();
            let cap = 2 * machine().caches.l2_per_core * helpers;
            let region = warmable(start, n, row_bytes, per_task, cap);
            read_then_warm_next(start, region, || gemv_ahead(isa, x, w, bias, y, m, ahead));
        }
        _ => gemv_ahead(isa, x, w, bias, y, m, ahead),
    }
}

/// [`gemv_on`] with its weights read `ahead` (operands checked by the caller).
fn gemv_ahead<E: WeightElem>(
    isa: Isa,
    x: &[f32],
    w: &WeightMatrix<E>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
    ahead: ReadAhead,
) {
    let n = w.rows;
    let out = OutPtr(y.as_mut_ptr());
    if let Some(data) = E::as_int8(w.data) {
        // int8 takes the integer path: x quantized once, to int16 (see `gemv_int8`).
        let w = w.as_elements(data);
        let xq = QuantizedX::new(x, m, w.cols);
        for_rows(n, w.bytes(), w.residency, |r0, r1| {
            gemv_int8::rows(isa, &xq, w, bias, out, m, r0, r1, ahead)
        });
        xq.recycle();
    } else if let Some(data) = E::as_bf16(w.data).filter(|_| gemv_bf16::runs(isa, m)) {
        // bf16 on AVX512-BF16: native dot products with x split in two (see `gemv_bf16`).
        let w = w.as_elements(data);
        let xs = SplitX::new(&x[..m * w.cols]);
        for_rows(n, w.bytes(), w.residency, |r0, r1| {
            gemv_bf16::rows(&xs, x, w, bias, out, m, r0, r1, ahead)
        });
        xs.recycle();
    } else if isa.splits_pairs::<E>() {
        // x in the order the weights widen (even and odd elements of each block), in this
        // thread's spare buffer so that a decoder step allocates nothing.
        let mut paired = PAIRED_X.take();
        deinterleave_pairs(&x[..m * w.cols], w.cols, isa.lanes(), &mut paired);
        for_rows(n, w.bytes(), w.residency, |r0, r1| {
            rows_on(isa, x, &paired, *w, bias, out, m, r0, r1, ahead)
        });
        PAIRED_X.set(paired);
    } else {
        for_rows(n, w.bytes(), w.residency, |r0, r1| {
            rows_on(isa, x, x, *w, bias, out, m, r0, r1, ahead)
        });
    }
}

thread_local! {
    /// The last call's deinterleaved x. Taken, not borrowed: a rayon thread that runs another
    /// GEMV while waiting finds it empty.
    static PAIRED_X: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `task` over output rows 0..n: in tasks of [`parallel_rows`] on all threads, or at once.
/// A streamed matrix's last tasks are halves ([`for_each_range_tail_halved`]).
fn for_rows(n: usize, bytes: usize, residency: Residency, task: impl Fn(usize, usize) + Sync) {
    match (parallel_rows(n, bytes, residency), residency) {
        (Some(rows), Residency::Streamed) => for_each_range_tail_halved(n, rows, &task),
        (Some(rows), Residency::Cached) => for_each_range(n, rows, &task),
        (None, _) => task(0, n),
    }
}

/// Output rows per parallel task of a matrix of n rows and `bytes` read as `residency`
/// ([`rows_per_task`] when streamed), or `None` where it is read at once on the calling thread
/// (one thread, or a matrix not worth the fork: [`runs_parallel`]).
fn parallel_rows(n: usize, bytes: usize, residency: Residency) -> Option<usize> {
    let threads = rayon::current_num_threads();
    if threads == 1 || !runs_parallel(bytes) {
        return None;
    }
    Some(match residency {
        Residency::Streamed => rows_per_task(n, bytes, threads),
        Residency::Cached => CACHED_ROWS_PER_TASK,
    })
}

/// Output rows per task for a streamed matrix of n rows and `bytes` on `threads` threads:
/// about [`TASK_BYTES`] of weights ([`LONG_TASK_BYTES`] from [`LONG_TASKS_FROM`]), but at least
/// [`MIN_TASKS_PER_THREAD`] tasks per thread.
fn rows_per_task(n: usize, bytes: usize, threads: usize) -> usize {
    let row_bytes = (bytes / n.max(1)).max(1);
    let task_bytes = if bytes >= LONG_TASKS_FROM {
        LONG_TASK_BYTES
    } else {
        TASK_BYTES
    };
    (task_bytes / row_bytes)
        .min(n.div_ceil(threads * MIN_TASKS_PER_THREAD))
        .max(1)
}

/// How a GEMV reads its weights ahead of the loads: the software prefetch (a [`Prefetch`] as
/// the kernels' const parameter), how many bytes ahead of the loads it runs, and the weight
/// rows an m = 1 pass reads side by side where the kernel takes the choice
/// ([`ROWS_PER_PASS`] or [`FEWER_ROWS_PER_PASS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReadAhead {
    pub(crate) prefetch: u8,
    pub(crate) bytes: usize,
    pub(crate) rows_per_pass: usize,
}

impl ReadAhead {
    /// A streamed matrix's reads: `prefetch` hints `bytes` ahead, or none at all for a
    /// distance of 0 (see [`STREAMED_PREFETCH_CANDIDATES`]).
    fn streamed(prefetch: Prefetch, bytes: usize, rows_per_pass: usize) -> Self {
        let prefetch = if bytes == 0 { Prefetch::None } else { prefetch };
        Self {
            prefetch: prefetch as u8,
            bytes,
            rows_per_pass,
        }
    }
}

/// How streamed matrices of one weight type are read on this machine, and what each
/// candidate read.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamedReadAhead {
    /// The prefetch distance (0: no software prefetch).
    pub bytes: usize,
    /// Weight rows an m = 1 pass reads side by side ([`ROWS_PER_PASS`] or
    /// [`FEWER_ROWS_PER_PASS`]).
    pub rows_per_pass: usize,
    /// (distance, rows per pass, median GB/s of its passes) per candidate; empty where it
    /// was not measured.
    pub measured: Vec<(usize, usize, f64)>,
}

/// The candidate (a distance, or a distance and rows per pass) to take given each
/// candidate's GB/s in each round (rounds in the same order for all): the one whose median
/// ratio to `default`'s pass of the same round is highest, if that beats
/// `STREAMED_PREFETCH_MIN_GAIN`, else the default. Ratios within a round, not rates across
/// rounds, because a shared machine's bandwidth moves between rounds (Zen 5's host switches
/// between ~45 and ~75 GB/s within seconds).
pub fn choose_read_ahead<K: Copy + PartialEq>(passes: &[(K, Vec<f64>)], default: K) -> K {
    ratios_to_default(passes, default)
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .filter(|(_, ratio)| *ratio > STREAMED_PREFETCH_MIN_GAIN)
        .map_or(default, |(key, _)| key)
}

/// Whether the passes so far leave the choice open: the best candidate other than `default`
/// reads within [`STREAMED_PREFETCH_MIN_GAIN`] of it, faster or slower, so that a few rounds
/// that went the other way would have decided it.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn read_ahead_is_close<K: Copy + PartialEq>(passes: &[(K, Vec<f64>)], default: K) -> bool {
    let gain = STREAMED_PREFETCH_MIN_GAIN;
    ratios_to_default(passes, default)
        .into_iter()
        .filter(|(key, _)| *key != default)
        .map(|(_, ratio)| ratio)
        .max_by(f64::total_cmp)
        .is_some_and(|r| (1.0 / gain..=gain).contains(&r))
}

/// Each candidate's median over rounds of its rate over the default's in the same round (the
/// default itself at 1); candidates with a failed pass left out, none without a default.
fn ratios_to_default<K: Copy + PartialEq>(passes: &[(K, Vec<f64>)], default: K) -> Vec<(K, f64)> {
    let Some((_, default_gbps)) = passes.iter().find(|(key, _)| *key == default) else {
        return Vec::new();
    };
    passes
        .iter()
        .filter_map(|(key, gbps)| {
            let ratios: Vec<f64> = gbps.iter().zip(default_gbps).map(|(g, d)| g / d).collect();
            if ratios.is_empty() || ratios.iter().any(|r| !r.is_finite()) {
                return None;
            }
            Some((*key, median(ratios)))
        })
        .collect()
}

/// The [`StreamedReadAhead`] of `E`'s kernel on this machine, measured on its first use.
///
/// How far ahead the prefetches must run depends on the core and on the kernel, not on the
/// bandwidth alone: on Zen 5 with both cores reading, the int8 kernel reads 12 % faster 2 KB
/// ahead than 4 KB ahead and 10 % slower 1 KB ahead, the bf16 kernel is as fast 1 KB and
/// 2 KB ahead and 5 % slower at 4 KB (the probe's plain reader is fastest 4 KB ahead), while
/// 4 KB was best on Zen 3. So each kernel is timed on a matrix flushed from the caches before
/// each pass, at each candidate of `read_ahead_candidates` (no prefetch in passes of
/// [`FEWER_ROWS_PER_PASS`] rows where the kernel takes them: bf16 on AVX512-BF16), for 5
/// rounds, or up to 15 while the choice is close (`read_ahead_is_close`), after one untimed
/// pass and in an order that rotates round by round (`round_order`).
///
/// On one core, not on the pool that decodes: a shared host's memory switches between a slow
/// regime, where the threads together saturate it and every candidate reads within a few
/// percent (the choice then followed the noise: on Zen 4, 9 of 13 measurements on both cores
/// kept the default, the other 4 took four different candidates), and a fast one, where each core is at its own limit of lines in flight and
/// the candidates part by 10–25 %. One core is at that limit in both regimes, so the
/// candidates part alike whatever the neighbours do (on Zen 4, 10 of 10 one-core
/// measurements took 2 rows without hints, 15–24 % ahead of the default; PERFORMANCE.md
/// #144).
pub fn streamed_read_ahead<E: WeightElem>() -> &'static StreamedReadAhead {
    &READ_AHEAD[E::KIND]
        .get_or_init(|| (E::NAME, measure_streamed_read_ahead::<E>()))
        .1
}

/// Each weight type's [`StreamedReadAhead`], once measured.
static READ_AHEAD: [OnceLock<(&str, StreamedReadAhead)>; WEIGHT_KINDS] =
    [const { OnceLock::new() }; WEIGHT_KINDS];

/// The distances measured so far in this process, by weight type name.
pub fn measured_read_aheads() -> Vec<(&'static str, &'static StreamedReadAhead)> {
    READ_AHEAD
        .iter()
        .filter_map(|m| m.get().map(|(name, ahead)| (*name, ahead)))
        .collect()
}

/// The (distance, rows per pass) pairs a kernel's streamed reads are measured at: every
/// distance at [`ROWS_PER_PASS`], but no prefetch at [`FEWER_ROWS_PER_PASS`] where the kernel
/// takes fewer rows (`fewer`).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn read_ahead_candidates(fewer: bool) -> impl Iterator<Item = (usize, usize)> {
    STREAMED_PREFETCH_CANDIDATES.into_iter().map(move |bytes| {
        let rows = if fewer && bytes == 0 {
            FEWER_ROWS_PER_PASS
        } else {
            ROWS_PER_PASS
        };
        (bytes, rows)
    })
}

/// The order in which `round` times `count` candidates: each round starts one candidate
/// later, so that over `count` rounds each candidate takes each place once, and whatever
/// slows one place of a round (the pass after another's, the first after a pause) falls on
/// all of them alike.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn round_order(round: usize, count: usize) -> impl Iterator<Item = usize> {
    (0..count).map(move |i| (round + i) % count)
}

// E picks the measured weights' format; elsewhere the defaults stand, whatever the format.
#[cfg_attr(
    not(target_arch = "x86_64"),
    allow(clippy::extra_unused_type_parameters)
)]
fn measure_streamed_read_ahead<E: WeightElem>() -> StreamedReadAhead {
    #[cfg(target_arch = "x86_64")]
    {
        use super::bandwidth::flush_caches;
        use std::time::Instant;
        // Voxtral's model width: its x (12 KB split in bf16 halves) fits the L1 share that
        // passes of fewer rows need on a 32 KB L1 (`gemv_bf16::x_fits_l1`).
        let k = 3072;
        let n = STREAMED_PREFETCH_PROBE_BYTES / (std::mem::size_of::<E>() * k);
        // On huge pages, as the model's weights.
        let mut data: Vec<E> = huge_page_vec(n * k);
        data.resize(n * k, E::ZERO);
        let w = WeightMatrix::new(&data, n, k).with_residency(Residency::Streamed);
        let x = vec![1.0f32; k];
        let mut y = vec![0f32; n];
        let isa = Isa::detect();
        let prefetch = weight_prefetch(Residency::Streamed, w.bytes());
        let fewer = E::as_bf16(&data).is_some() && gemv_bf16::runs(isa, 1);
        let mut passes: Vec<((usize, usize), Vec<f64>)> = read_ahead_candidates(fewer)
            .map(|candidate| (candidate, Vec::new()))
            .collect();
        let default = (STREAMED_PREFETCH_DEFAULT, ROWS_PER_PASS);
        let mut time_passes = || {
            // One untimed pass first: the first timed pass read 2–24 % below its candidate's
            // median in four start-ups of the int8 measurement on Zen 4, always the same
            // candidate's (PERFORMANCE.md #148).
            flush_caches(&data);
            let (bytes, rows) = default;
            gemv_ahead(
                isa,
                &x,
                &w,
                None,
                &mut y,
                1,
                ReadAhead::streamed(prefetch, bytes, rows),
            );
            for round in 0..STREAMED_PREFETCH_MAX_ROUNDS {
                if round >= STREAMED_PREFETCH_ROUNDS && !read_ahead_is_close(&passes, default) {
                    break;
                }
                for i in round_order(round, passes.len()) {
                    let ((bytes, rows), gbps) = &mut passes[i];
                    flush_caches(&data);
                    let t = Instant::now();
                    let ahead = ReadAhead::streamed(prefetch, *bytes, *rows);
                    gemv_ahead(isa, &x, &w, None, &mut y, 1, ahead);
                    gbps.push(w.bytes() as f64 / t.elapsed().as_secs_f64() / 1e9);
                }
            }
        };
        // On a pool of one thread, where `for_rows` reads the whole matrix on the caller.
        match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
            Ok(one_core) => one_core.install(time_passes),
            Err(_) => time_passes(),
        }
        std::hint::black_box(&y);
        let measured = passes
            .iter()
            .map(|((bytes, rows), gbps)| (*bytes, *rows, median(gbps.clone())))
            .collect();
        let (bytes, rows_per_pass) = choose_read_ahead(&passes, default);
        StreamedReadAhead {
            bytes,
            rows_per_pass,
            measured,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    StreamedReadAhead {
        bytes: STREAMED_PREFETCH_DEFAULT,
        rows_per_pass: ROWS_PER_PASS,
        measured: Vec::new(),
    }
}

isa_entries! {
    /// Rows r0..r1 of the output for all m rows of x (`x_load`: x in the order the vector
    /// loop widens the weights, [`Isa::splits_pairs`]; the tail of each row reads `x`).
    fn rows_on<E: WeightElem>(
        x: &[f32],
        x_load: &[f32],
        w: WeightMatrix<E>,
        bias: Option<&[f32]>,
        y: OutPtr,
        m: usize,
        r0: usize,
        r1: usize,
        ahead: ReadAhead,
    ) => rows_body
}

/// Dispatches to the body for m rows of x: weight rows per pass (R, sharing each load of x),
/// accumulators per x row and weight row (U vectors, so that short batches still have
/// independent FMA chains: R · M · U ≥ 8 where registers allow) and the prefetch mode.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_body<S: Simd, E: WeightElem>(
    x: &[f32],
    x_load: &[f32],
    w: WeightMatrix<E>,
    bias: Option<&[f32]>,
    y: OutPtr,
    m: usize,
    r0: usize,
    r1: usize,
    ahead: ReadAhead,
) {
    let a = ahead.bytes;
    macro_rules! go {
        ($m:literal, $r:literal, $u:literal) => {
            with_prefetch!(ahead.prefetch, PF => {
                rows_m::<S, E, $m, $r, $u, PF>(x, x_load, w, bias, y, r0, r1, a)
            })
        };
    }
    // One-byte weights (int8) take twice the vectors per row (U) at half the rows (R): each
    // pass then reads as many bytes of every row as a 2-byte type's, and the prefetches and
    // loads of x per byte halve (one thread from DRAM, 9216 × 3072: 8.5 → 12.4 GB/s).
    // From 3 rows of x on, two weight rows a pass where 32 registers hold R · M · U sums:
    // each load of x serves both (bf16 9216 × 3072, Zen 5, 2 threads, m = 4: 3.2 → 2.0 ms,
    // m = 8: 4.4 → 2.3; PERFORMANCE.md #179); one with 16.
    let one_byte = std::mem::size_of::<E>() == 1;
    let two = S::REGISTERS >= 32;
    match (m, two) {
        (1, _) if one_byte => go!(1, 2, 4),
        (2, _) if one_byte => go!(2, 1, 4),
        (1, _) => go!(1, 4, 2),
        (2, _) => go!(2, 2, 2),
        (3, true) => go!(3, 2, 2),
        (4, true) => go!(4, 2, 2),
        (5, true) => go!(5, 2, 1),
        (6, true) => go!(6, 2, 1),
        (7, true) => go!(7, 2, 1),
        (8, true) => go!(8, 2, 1),
        (3, false) => go!(3, 1, 2),
        (4, false) => go!(4, 1, 2),
        (5, false) => go!(5, 1, 1),
        (6, false) => go!(6, 1, 1),
        (7, false) => go!(7, 1, 1),
        (8, false) => go!(8, 1, 1),
        _ => unreachable!("gemv takes at most {MAX_ROWS} rows"),
    }
}

/// Rows r0..r1 of the output, `R` weight rows at a time (the rest one by one).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_m<
    S: Simd,
    E: WeightElem,
    const M: usize,
    const R: usize,
    const U: usize,
    const PF: u8,
>(
    x: &[f32],
    x_load: &[f32],
    w: WeightMatrix<E>,
    bias: Option<&[f32]>,
    y: OutPtr,
    r0: usize,
    r1: usize,
    ahead: usize,
) {
    in_row_blocks::<R>(
        r0,
        r1,
        |r, gap| row_block::<S, E, M, R, U, PF>(x, x_load, w, bias, y, r, gap, ahead),
        |r| row_block::<S, E, M, 1, U, PF>(x, x_load, w, bias, y, r, 0, ahead),
    );
}

/// Rows r0..r1 in passes of R rows read side by side, `block(r, gap)` reading rows r + q · gap
/// (q < R), the rest one by one (`single(r)`). The R rows of a pass lie `gap` = (r1 − r0) / R
/// rows apart, so that each of the R read streams runs through a contiguous span of its own:
/// from DRAM, R streams of adjacent rows (a few kB apart) read 15–30 % slower than streams
/// tens of kB apart on Zen 3, whatever the arithmetic (PERFORMANCE.md #69).
#[inline(always)]
pub(crate) fn in_row_blocks<const R: usize>(
    r0: usize,
    r1: usize,
    mut block: impl FnMut(usize, usize),
    mut single: impl FnMut(usize),
) {
    let gap = (r1 - r0) / R;
    for r in r0..r0 + gap {
        block(r, gap);
    }
    for r in r0 + R * gap..r1 {
        single(r);
    }
}

/// Weight rows r + q · gap (q < R) against every row of x, `U` accumulators each. Each vector
/// of x is loaded once for the R rows: at m = 1 the loads of x, not of w, would otherwise fill
/// the load ports (one x load per weight load).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // u and i index the inner dimensions of `sums`
#[allow(clippy::too_many_arguments)]
unsafe fn row_block<
    S: Simd,
    E: WeightElem,
    const M: usize,
    const R: usize,
    const U: usize,
    const PF: u8,
>(
    x: &[f32],
    x_load: &[f32],
    w: WeightMatrix<E>,
    bias: Option<&[f32]>,
    y: OutPtr,
    r: usize,
    gap: usize,
    ahead: usize,
) {
    let (n, k) = (w.rows, w.cols);
    let (xp, xl) = (x.as_ptr(), x_load.as_ptr());
    let row_of: [usize; R] = std::array::from_fn(|ri| r + ri * gap);
    let wp: [*const E; R] = row_of.map(|row| w.data.as_ptr().add(row * k));
    let mut sums = [[[S::zero(); U]; M]; R];
    let mut j = 0;
    // Blocks of 2 · LANES weights: two vectors per load pair, in order or, where the type
    // splits pairs, its even and odd elements against x in that order (`x_load`). The two
    // vectors go to two accumulators (the same one where U = 1).
    let pairs = U.div_ceil(2);
    let step = 2 * pairs * S::LANES;
    while j + step <= k {
        prefetch_rows::<S, E, R, PF>(&wp, j, step, ahead);
        for p in 0..pairs {
            let at = j + 2 * p * S::LANES;
            let xe: [S::V; M] = std::array::from_fn(|i| S::load(xl.add(i * k + at)));
            let xo: [S::V; M] = std::array::from_fn(|i| S::load(xl.add(i * k + at + S::LANES)));
            let (ue, uo) = ((2 * p) % U, (2 * p + 1) % U);
            for (ri, row) in wp.iter().enumerate() {
                let (we, wo) = S::load_w2(row.add(at));
                for i in 0..M {
                    sums[ri][i][ue] = S::fma(xe[i], we, sums[ri][i][ue]);
                    sums[ri][i][uo] = S::fma(xo[i], wo, sums[ri][i][uo]);
                }
            }
        }
        j += step;
    }
    for (ri, row) in wp.iter().enumerate() {
        for (i, s) in sums[ri].iter().enumerate() {
            let mut v = s[0];
            for su in &s[1..] {
                v = S::add(v, *su);
            }
            let mut total = S::sum(v);
            for jj in j..k {
                total += *xp.add(i * k + jj) * (*row.add(jj)).to_f32();
            }
            store_output(y, n, i, row_of[ri], total, w.scales, bias);
        }
    }
}

/// Writes output `row` for row `i` of x (y: m × n): the dot product `total`, times the row's
/// scale (int8), plus its bias.
///
/// # Safety
/// y must hold row `i` of n outputs.
#[inline(always)]
pub(crate) unsafe fn store_output(
    y: OutPtr,
    n: usize,
    i: usize,
    row: usize,
    mut total: f32,
    scales: Option<&[f32]>,
    bias: Option<&[f32]>,
) {
    if let Some(sc) = scales {
        total *= sc[row];
    }
    if let Some(b) = bias {
        total += b[row];
    }
    *y.0.add(i * n + row) = total;
}

/// Prefetches (mode `PF`) the bytes that rows `wp` (read side by side, each the start of a
/// contiguous span of rows: [`in_row_blocks`]) will need `ahead` bytes after the `step`
/// elements from column `j`: past a row's end that is the next row of the same span.
#[inline(always)]
pub(crate) unsafe fn prefetch_rows<S: Simd, E, const R: usize, const PF: u8>(
    wp: &[*const E; R],
    j: usize,
    step: usize,
    ahead: usize,
) {
    if PF == PREFETCH_NONE {
        return;
    }
    let size = std::mem::size_of::<E>();
    for row in wp {
        // wrapping: near the end the hint points past the slice (a prefetch never faults).
        let p = (*row as *const u8).wrapping_add(j * size + ahead);
        let mut off = 0;
        while off < step * size {
            if PF == PREFETCH_STREAM {
                S::prefetch_stream(p.wrapping_add(off));
            } else {
                S::prefetch_keep(p.wrapping_add(off));
            }
            off += 64;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use half::{bf16, f16};

    /// Deterministic values in [-1, 1).
    pub(crate) fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let h = (i as u32 ^ seed.wrapping_mul(0x9e3779b9)).wrapping_mul(2654435761);
                ((h >> 8) % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Σ_k x·w in f64 on the weights as the kernel sees them (rounded, dequantized).
    pub(crate) fn reference(
        x: &[f32],
        wf: &[f32],
        bias: Option<&[f32]>,
        m: usize,
        k: usize,
    ) -> Vec<f64> {
        let n = wf.len() / k;
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for r in 0..n {
                let dot: f64 = (0..k)
                    .map(|j| x[i * k + j] as f64 * wf[r * k + j] as f64)
                    .sum();
                y[i * n + r] = dot + bias.map_or(0.0, |b| b[r] as f64);
            }
        }
        y
    }

    /// Relative tolerance of f32 accumulation against the f64 reference: scaled by the sum of
    /// |x·w| (what rounding errors are proportional to), not by the possibly cancelling result.
    pub(crate) fn check(
        got: &[f32],
        want: &[f64],
        x: &[f32],
        wf: &[f32],
        m: usize,
        k: usize,
        what: &str,
    ) {
        let n = wf.len() / k;
        for i in 0..m {
            for r in 0..n {
                let mag: f64 = (0..k)
                    .map(|j| (x[i * k + j] as f64 * wf[r * k + j] as f64).abs())
                    .sum();
                let (g, w) = (got[i * n + r] as f64, want[i * n + r]);
                assert!(
                    (g - w).abs() <= 2e-6 * (1.0 + mag),
                    "{what} [{i},{r}]: {g} vs {w} (|x·w| sum {mag})"
                );
            }
        }
    }

    /// Panics unless each y[i][r] is within what rounding x to `levels` steps of each block's
    /// largest |x| (blocks of `block` values of a row) allows: Σ_j |w[r][j]| · step / 2, plus
    /// f32 rounding. The integer int8 paths quantize x so (`gemv_int8`: 32767 steps per
    /// block of 256; `small_m_int8`: 127 per block of 128).
    pub(crate) fn check_rounded_x(
        got: &[f32],
        want: &[f64],
        x: &[f32],
        wf: &[f32],
        m: usize,
        (block, levels): (usize, f64),
        what: &str,
    ) {
        let k = x.len() / m;
        let n = wf.len() / k;
        for i in 0..m {
            let row = &x[i * k..][..k];
            let steps: Vec<f64> = row
                .chunks(block)
                .map(|b| b.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / levels)
                .collect();
            for r in 0..n {
                let (mut bound, mut mag) = (0f64, 0f64);
                for (j, &v) in row.iter().enumerate() {
                    let w = wf[r * k + j].abs() as f64;
                    bound += w * steps[j / block] * 0.5;
                    mag += w * v.abs() as f64;
                }
                let err = (got[i * n + r] as f64 - want[i * n + r]).abs();
                assert!(
                    err <= bound * (1.0 + 1e-3) + 2e-6 * (1.0 + mag),
                    "{what} [{i},{r}]: error {err}, bound {bound}"
                );
            }
        }
    }

    /// Weight rows as the three element types, plus their f32 values (what the kernels see).
    pub(crate) struct TestWeights {
        pub f16: Vec<f16>,
        pub bf16: Vec<bf16>,
        pub i8: Vec<i8>,
        pub scales: Vec<f32>,
        pub f16_f32: Vec<f32>,
        pub bf16_f32: Vec<f32>,
        pub i8_f32: Vec<f32>,
    }

    pub(crate) fn weights(n: usize, k: usize, seed: u32) -> TestWeights {
        let w = data(n * k, seed);
        let f16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let bf16: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let i8: Vec<i8> = w
            .iter()
            .enumerate()
            .map(|(i, &v)| ((v * 127.0).round() as i32 + (i % 3) as i32 - 1).clamp(-127, 127) as i8)
            .collect();
        let scales: Vec<f32> = (0..n).map(|r| 0.01 + (r % 7) as f32 * 0.003).collect();
        TestWeights {
            f16_f32: f16.iter().map(|v| v.to_f32()).collect(),
            bf16_f32: bf16.iter().map(|v| v.to_f32()).collect(),
            i8_f32: i8
                .iter()
                .enumerate()
                .map(|(i, &q)| q as f32 * scales[i / k])
                .collect(),
            f16,
            bf16,
            i8,
            scales,
        }
    }

    #[test]
    fn tasks_hold_a_fixed_share_of_bytes_and_split_every_matrix() {
        // Voxtral's head in int8 (3 KB rows) and bf16 (6 KB rows): ~8 MB per task.
        assert_eq!(rows_per_task(131072, 131072 * 3072, 2), 2730);
        assert_eq!(rows_per_task(131072, 131072 * 3072 * 2, 2), 1365);
        // Its w1 (28 / 57 MB): four tasks per thread, under 8 MB each.
        assert_eq!(rows_per_task(9216, 9216 * 3072, 2), 1152);
        assert_eq!(rows_per_task(9216, 9216 * 3072 * 2, 2), 1152);
        // Under 16 MB (a Qwen3-TTS gate/up, 6 MB of int8): ~512 KB per task.
        assert_eq!(rows_per_task(6144, 6144 * 1024, 2), 512);
        assert_eq!(rows_per_task(8191, 8191 * 2048, 2), 256);
        assert_eq!(rows_per_task(8192, 8192 * 2048, 2), 1024);
        // A 3 MB matrix still gives every thread four tasks.
        assert_eq!(rows_per_task(1024, 1024 * 3072, 2), 128);
        assert_eq!(rows_per_task(1024, 1024 * 3072, 16), 16);
        // Rows longer than a task, and fewer rows than tasks: one row each.
        assert_eq!(rows_per_task(6, 6 << 20, 2), 1);
        assert_eq!(rows_per_task(3, 3 << 10, 8), 1);
    }

    #[test]
    fn row_blocks_read_each_row_once_in_spans_a_gap_apart() {
        fn visits<const R: usize>(r0: usize, r1: usize) -> (Vec<usize>, Vec<usize>) {
            let (mut rows, mut gaps, mut singles) = (vec![], vec![], vec![]);
            let mut blocks = vec![];
            in_row_blocks::<R>(
                r0,
                r1,
                |r, gap| {
                    blocks.push(r);
                    gaps.push(gap);
                    rows.extend((0..R).map(|q| r + q * gap));
                },
                |r| singles.push(r),
            );
            rows.extend(singles);
            // Consecutive passes start on consecutive rows: every stream reads one span.
            assert!(blocks.windows(2).all(|b| b[1] == b[0] + 1), "{blocks:?}");
            (rows, gaps)
        }
        for (r0, r1) in [(0, 0), (0, 3), (5, 69), (64, 128), (0, 4100)] {
            let (mut rows, gaps) = visits::<4>(r0, r1);
            assert!(gaps.iter().all(|&g| g == (r1 - r0) / 4));
            rows.sort_unstable();
            assert_eq!(rows, (r0..r1).collect::<Vec<_>>(), "{r0}..{r1}");
            let (rows, _) = visits::<1>(r0, r1);
            assert_eq!(rows, (r0..r1).collect::<Vec<_>>());
        }
    }

    /// Every element type × every instruction set of this CPU × row counts × odd widths (the
    /// scalar tail) × matrices large enough to run on several threads and to stream.
    #[test]
    fn matches_the_f64_reference() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        // (k, n): odd width with a tail; a wide one to run on several threads (≥ 2 MB of f16);
        // a 16 MB one to stream; tiny ones; one whose rows end in whole passes of lines, single
        // lines and a tail (200 = 128 + 2 · 32 + 8).
        let shapes = [
            (37, 70),
            (16, 1),
            (200, 33),
            (384, 51),
            (1031, 1100),
            (2048, 4100),
        ];
        for &(k, n) in &shapes {
            let tw = weights(n, k, 7);
            let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
            for &m in &[1usize, 2, 3, 4, 5, 8] {
                if k * n > 1 << 21 && !matches!(m, 1 | 8) {
                    continue;
                }
                let x = data(m * k, m as u32);
                let want_f16 = reference(&x, &tw.f16_f32, Some(&bias), m, k);
                let want_bf16 = reference(&x, &tw.bf16_f32, Some(&bias), m, k);
                // bf16 on AVX512-BF16 multiplies x split in two bf16 halves (`gemv_bf16`).
                let xs = SplitX::new(&x).joined();
                let want_bf16_split = reference(&xs, &tw.bf16_f32, Some(&bias), m, k);
                // int8 multiplies x as its int16 codes stand for it (`gemv_int8`).
                let xq = QuantizedX::new(&x, m, k).dequantized();
                let want_i8 = reference(&xq, &tw.i8_f32, Some(&bias), m, k);
                for isa in Isa::available() {
                    let what = format!("{isa:?} m{m} k{k} n{n}");
                    let mut y = vec![0f32; m * n];
                    pool.install(|| {
                        gemv_on(
                            isa,
                            &x,
                            &WeightMatrix::new(&tw.f16, n, k),
                            Some(&bias),
                            &mut y,
                            m,
                        )
                    });
                    check(&y, &want_f16, &x, &tw.f16_f32, m, k, &format!("f16 {what}"));
                    pool.install(|| {
                        gemv_on(
                            isa,
                            &x,
                            &WeightMatrix::new(&tw.bf16, n, k),
                            Some(&bias),
                            &mut y,
                            m,
                        )
                    });
                    let (want, xk) = if gemv_bf16::runs(isa, m) {
                        (&want_bf16_split, &xs)
                    } else {
                        (&want_bf16, &x)
                    };
                    check(&y, want, xk, &tw.bf16_f32, m, k, &format!("bf16 {what}"));
                    // The dot-product kernel wherever it can run, taken here or not
                    // (`gemv_bf16::runs`), in both of its passes.
                    if gemv_bf16::can_run(isa, m) {
                        for rows in [ROWS_PER_PASS, FEWER_ROWS_PER_PASS] {
                            y.fill(f32::NAN);
                            let split = SplitX::new(&x);
                            let w = WeightMatrix::new(&tw.bf16, n, k);
                            let ahead = ReadAhead::streamed(Prefetch::Keep, PREFETCH_BYTES, rows);
                            let out = OutPtr(y.as_mut_ptr());
                            gemv_bf16::rows(&split, &x, w, Some(&bias), out, m, 0, n, ahead);
                            split.recycle();
                            let what = format!("bf16 dots, {rows} rows a pass, {what}");
                            check(&y, &want_bf16_split, &xs, &tw.bf16_f32, m, k, &what);
                        }
                    }
                    let wi = WeightMatrix::with_scales(&tw.i8, &tw.scales, n, k);
                    pool.install(|| gemv_on(isa, &x, &wi, Some(&bias), &mut y, m));
                    check(&y, &want_i8, &xq, &tw.i8_f32, m, k, &format!("int8 {what}"));
                }
            }
        }
    }

    #[test]
    fn matrices_worth_a_hand_off_run_parallel() {
        // Whisper tiny's smallest matrix, 384×384 f16 (288 KB), fits any core's L2 and still
        // runs on all threads: a decoder step reads it from L3.
        assert!(runs_parallel(384 * 384 * 2));
        assert!(runs_parallel(PARALLEL_MIN_BYTES));
        assert!(!runs_parallel(PARALLEL_MIN_BYTES - 1));
        assert!(!runs_parallel(64 * 64 * 2));
    }

    #[test]
    fn read_ahead_is_the_distance_that_clearly_beats_the_default_round_by_round() {
        let choose =
            |passes: &[(usize, Vec<f64>)]| choose_read_ahead(passes, STREAMED_PREFETCH_DEFAULT);
        let one = |rates: &[(usize, f64)]| -> Vec<(usize, Vec<f64>)> {
            rates.iter().map(|&(b, g)| (b, vec![g])).collect()
        };
        // Zen 5's int8 kernel on both cores, fast memory (GB/s): 2 KB, the default, wins.
        let zen5 = one(&[(1024, 61.3), (2048, 72.3), (4096, 61.8), (8192, 56.9)]);
        assert_eq!(choose(&zen5), 2048);
        // Zen 4's f16 kernel, slow memory: no software prefetch clearly reads fastest (one
        // start-up's medians); at 1.037 over the default it would not switch.
        let zen4 = one(&[
            (0, 40.0),
            (1024, 38.3),
            (2048, 35.8),
            (4096, 36.1),
            (8192, 35.0),
        ]);
        assert_eq!(choose(&zen4), 0);
        let near = one(&[(0, 39.5), (1024, 39.3), (2048, 38.1), (4096, 36.9)]);
        assert_eq!(choose(&near), STREAMED_PREFETCH_DEFAULT);
        // A distance of 0 reads without prefetch hints, whatever hint streaming takes.
        for hint in [Prefetch::Stream, Prefetch::Keep] {
            assert_eq!(
                ReadAhead::streamed(hint, 0, ROWS_PER_PASS).prefetch,
                PREFETCH_NONE
            );
            assert_eq!(
                ReadAhead::streamed(hint, 2048, ROWS_PER_PASS).prefetch,
                hint as u8
            );
        }
        // Within the noise of the default: the default stays.
        let flat = one(&[(1024, 33.7), (2048, 32.6), (4096, 32.3), (8192, 32.8)]);
        assert_eq!(choose(&flat), STREAMED_PREFETCH_DEFAULT);
        // Further ahead where that wins (a longer memory latency).
        assert_eq!(
            choose(&one(&[(2048, 10.0), (4096, 12.0), (8192, 14.0)])),
            8192
        );
        // A faster round does not make its candidate win: 1 KB read 70 GB/s in a round where
        // the default read 68, and lost the other rounds.
        let rounds = [
            (1024, vec![70.0, 40.0, 41.0]),
            (2048, vec![68.0, 44.0, 45.0]),
            (4096, vec![60.0, 45.0, 44.5]),
        ];
        assert_eq!(choose(&rounds), 2048);
        // A candidate ahead in most rounds wins, whatever one bad round says.
        let rounds = [
            (2048, vec![40.0, 40.0, 70.0]),
            (4096, vec![44.0, 45.0, 50.0]),
        ];
        assert_eq!(choose(&rounds), 4096);
        // Nothing measured, or a pass that failed: the default.
        assert_eq!(choose(&[]), STREAMED_PREFETCH_DEFAULT);
        assert_eq!(
            choose(&[(2048, vec![f64::NAN]), (4096, vec![20.0])]),
            STREAMED_PREFETCH_DEFAULT
        );
        assert_eq!(
            choose(&[(2048, vec![20.0]), (4096, vec![f64::NAN])]),
            STREAMED_PREFETCH_DEFAULT
        );
    }

    #[test]
    fn a_close_measurement_takes_more_rounds() {
        let one = |rates: &[(usize, f64)]| -> Vec<(usize, Vec<f64>)> {
            rates.iter().map(|&(b, g)| (b, vec![g])).collect()
        };
        let close = |rates: &[(usize, f64)]| read_ahead_is_close(&one(rates), 2048);
        // The best other candidate within 4 % of the default, ahead or behind: open.
        assert!(close(&[(0, 40.0), (2048, 39.0)]));
        assert!(close(&[(0, 38.0), (2048, 39.0)]));
        // Clearly ahead or clearly behind: decided.
        assert!(!close(&[(0, 45.0), (2048, 39.0)]));
        assert!(!close(&[(0, 30.0), (2048, 39.0)]));
        // The best of the others decides, not a close one beside it.
        assert!(!close(&[(0, 45.0), (1024, 39.5), (2048, 39.0)]));
        assert!(close(&[(0, 30.0), (1024, 39.5), (2048, 39.0)]));
        // The default alone, or no default: nothing to decide.
        assert!(!close(&[(2048, 39.0)]));
        assert!(!close(&[(0, 39.0)]));
        // Over rounds, the median of the per-round ratios.
        let rounds = [(0, vec![40.0, 45.0, 45.0]), (2048, vec![39.0, 39.0, 39.0])];
        assert!(!read_ahead_is_close(&rounds, 2048));
    }

    #[test]
    fn each_candidate_takes_each_place_of_a_round_in_turn() {
        let orders: Vec<Vec<usize>> = (0..7).map(|r| round_order(r, 5).collect()).collect();
        assert_eq!(orders[0], [0, 1, 2, 3, 4]);
        assert_eq!(orders[1], [1, 2, 3, 4, 0]);
        assert_eq!(orders[5], orders[0]);
        for place in 0..5 {
            let mut at_place: Vec<usize> = orders[..5].iter().map(|o| o[place]).collect();
            at_place.sort_unstable();
            assert_eq!(at_place, [0, 1, 2, 3, 4], "place {place}");
        }
        assert_eq!(round_order(3, 1).collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn rows_per_pass_follow_the_distance() {
        let default = (STREAMED_PREFETCH_DEFAULT, ROWS_PER_PASS);
        let rounds = |rates: &[((usize, usize), [f64; 3])]| -> Vec<((usize, usize), Vec<f64>)> {
            rates.iter().map(|(key, g)| (*key, g.to_vec())).collect()
        };
        // The candidates: no prefetch in passes of fewer rows where the kernel takes them,
        // every distance in passes of the kernel's own rows.
        let with_fewer: Vec<_> = read_ahead_candidates(true).collect();
        assert_eq!(
            with_fewer,
            [
                (0, FEWER_ROWS_PER_PASS),
                (1024, ROWS_PER_PASS),
                (2048, ROWS_PER_PASS),
                (4096, ROWS_PER_PASS),
                (8192, ROWS_PER_PASS)
            ]
        );
        assert!(read_ahead_candidates(false).all(|(_, r)| r == ROWS_PER_PASS));
        assert!(with_fewer.contains(&default));
        // Zen 4's bf16 kernel on one core (GB/s, three rounds of one start-up): two rows
        // with no software prefetch win every round.
        let zen4 = rounds(&[
            ((0, FEWER_ROWS_PER_PASS), [32.2, 31.8, 30.1]),
            ((1024, ROWS_PER_PASS), [28.8, 29.7, 30.4]),
            ((2048, ROWS_PER_PASS), [27.8, 27.7, 28.4]),
            ((4096, ROWS_PER_PASS), [24.8, 24.6, 24.6]),
        ]);
        assert_eq!(choose_read_ahead(&zen4, default), (0, FEWER_ROWS_PER_PASS));
        // The Intel kind: four rows 4 KB ahead; fewer rows without hints lose.
        let intel = rounds(&[
            ((0, FEWER_ROWS_PER_PASS), [21.0, 20.5, 21.2]),
            ((2048, ROWS_PER_PASS), [27.0, 26.5, 27.5]),
            ((4096, ROWS_PER_PASS), [30.1, 29.8, 30.5]),
        ]);
        assert_eq!(choose_read_ahead(&intel, default), (4096, ROWS_PER_PASS));
        // Fewer rows within the noise of the default: the default stays.
        let level = rounds(&[
            ((0, FEWER_ROWS_PER_PASS), [41.0, 42.0, 40.0]),
            ((2048, ROWS_PER_PASS), [40.0, 41.0, 39.0]),
        ]);
        assert_eq!(choose_read_ahead(&level, default), default);
    }

    #[test]
    fn each_kernel_measures_its_distance_among_the_candidates() {
        fn check<E: WeightElem>() {
            let ahead = streamed_read_ahead::<E>();
            assert!(STREAMED_PREFETCH_CANDIDATES.contains(&ahead.bytes));
            assert!([ROWS_PER_PASS, FEWER_ROWS_PER_PASS].contains(&ahead.rows_per_pass));
            if cfg!(target_arch = "x86_64") {
                // Fewer rows a pass where the kernel takes them (bf16 on AVX512-BF16).
                let fewer = E::as_bf16(&[]).is_some() && gemv_bf16::runs(Isa::detect(), 1);
                let tried: Vec<(usize, usize)> =
                    ahead.measured.iter().map(|m| (m.0, m.1)).collect();
                let expected: Vec<(usize, usize)> = read_ahead_candidates(fewer).collect();
                assert_eq!(tried, expected);
                assert!(expected.contains(&(ahead.bytes, ahead.rows_per_pass)));
                assert!(ahead.measured.iter().all(|m| m.2 > 0.0), "{ahead:?}");
                if !fewer {
                    assert_eq!(ahead.rows_per_pass, ROWS_PER_PASS);
                }
            }
            let listed = measured_read_aheads();
            assert!(
                listed
                    .iter()
                    .any(|(name, a)| *name == E::NAME && *a == ahead),
                "{} listed: {listed:?}",
                E::NAME
            );
        }
        check::<i8>();
        check::<half::bf16>();
        // Each weight type has a slot of its own in the per-type table.
        let mut kinds = [f32::KIND, half::f16::KIND, half::bf16::KIND, i8::KIND];
        kinds.sort_unstable();
        assert_eq!(kinds, [0, 1, 2, 3]);
        assert_eq!(WEIGHT_KINDS, kinds.len());
    }

    /// The prefetches are hints: a streamed matrix, read at the measured distance with
    /// streaming prefetches, gives the same bits as the same matrix read as cached.
    #[test]
    fn streamed_and_cached_reads_agree_bit_for_bit() {
        let (k, n) = (1031, 1100);
        let tw = weights(n, k, 5);
        for m in [1usize, 2, 8] {
            let x = data(m * k, 11);
            let (mut cached, mut streamed) = (vec![0f32; m * n], vec![0f32; m * n]);
            for residency in [Residency::Cached, Residency::Streamed] {
                let y = match residency {
                    Residency::Cached => &mut cached,
                    Residency::Streamed => &mut streamed,
                };
                let w = WeightMatrix::new(&tw.bf16, n, k).with_residency(residency);
                gemv(&x, &w, None, y, m);
            }
            assert_eq!(cached, streamed, "bf16 m{m}");
            for residency in [Residency::Cached, Residency::Streamed] {
                let y = match residency {
                    Residency::Cached => &mut cached,
                    Residency::Streamed => &mut streamed,
                };
                let w =
                    WeightMatrix::with_scales(&tw.i8, &tw.scales, n, k).with_residency(residency);
                gemv(&x, &w, None, y, m);
            }
            assert_eq!(cached, streamed, "int8 m{m}");
        }
    }

    /// Rows per pass change which rows a pass reads together, never a row's sum: passes of 2
    /// and 4 rows give the same bits, for an x that fits half of L1 and one that does not.
    #[test]
    fn fewer_rows_per_pass_give_the_same_bits() {
        let n = 1100;
        let l1_cols = machine().caches.l1d_per_core / 8;
        for k in [1031, l1_cols + 97] {
            let tw = weights(n, k, 7);
            let x = data(k, 13);
            let w = WeightMatrix::new(&tw.bf16, n, k).with_residency(Residency::Streamed);
            let read = |rows| {
                let mut y = vec![0f32; n];
                let ahead = ReadAhead::streamed(Prefetch::None, 0, rows);
                gemv_ahead(Isa::detect(), &x, &w, None, &mut y, 1, ahead);
                y
            };
            let fewer = read(FEWER_ROWS_PER_PASS);
            assert_eq!(fewer, read(ROWS_PER_PASS), "k = {k}");
            check(
                &fewer,
                &reference(&x, &tw.bf16_f32, None, 1, k),
                &x,
                &tw.bf16_f32,
                1,
                k,
                "bf16",
            );
        }
    }

    #[test]
    fn without_bias_and_empty() {
        let (k, n) = (33, 5);
        let tw = weights(n, k, 3);
        let x = data(2 * k, 9);
        let mut y = vec![0f32; 2 * n];
        gemv(&x, &WeightMatrix::new(&tw.bf16, n, k), None, &mut y, 2);
        let want = reference(&x, &tw.bf16_f32, None, 2, k);
        check(&y, &want, &x, &tw.bf16_f32, 2, k, "bf16 no bias");
        gemv(&[], &WeightMatrix::new(&tw.bf16, n, k), None, &mut [], 0);
    }
}
