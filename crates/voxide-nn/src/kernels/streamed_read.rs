//! How the GEMV reads a streamed matrix, chosen while decoding.
//!
//! Two ways of reading weights from memory win on the same machine at different moments. On
//! Zen 5 the host's memory switches between a slow regime (~45–53 GB/s) and a fast one
//! (~70–82) within minutes. In the slow regime, leaving the reads to the hardware prefetchers
//! over one long span per thread (OpenMP's static schedule) reads the int8 step 4–6 % faster
//! than prefetching 2 KB ahead in 512 KB tasks. In the fast regime it reads 6 % slower
//! (PERFORMANCE.md, "What a streamed int8 step loses to the probe"). A choice measured once at
//! start-up would be wrong whenever the regime moved. So every streamed GEMV is timed, and
//! every [`TRY_OTHER_EVERY`]th one reads the way not taken. Its cost per byte is compared with
//! the same matrix's last read the current way: matrices of one step read at rates some 15 %
//! apart (the output head slower than the layers), so only reads of the same matrix compare.
//! The ratios average over the last [`HORIZON`] of streamed reading, and the other way takes
//! over when it reads clearly faster.
//!
//! The spans' plain loads go through the caches, which the non-temporal prefetches of the
//! other way spare. The chooser times only the streamed GEMV, not the cached matrices it would
//! evict, so spans are tried only where decoding keeps little cached (see [`note_cycle`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How the threads read a streamed matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamedRead {
    /// Software prefetches a measured distance ahead of the loads
    /// ([`super::gemv::streamed_read_ahead`]), in tasks of about 512 KB handed to threads as
    /// they free up.
    Ahead,
    /// No software prefetch, one contiguous span of rows per thread: long runs for the
    /// hardware prefetchers.
    Spans,
}

impl StreamedRead {
    const ALL: [StreamedRead; 2] = [StreamedRead::Ahead, StreamedRead::Spans];

    /// The name `voxide bench` prints.
    pub fn name(self) -> &'static str {
        match self {
            StreamedRead::Ahead => "prefetched ahead, 512 KB tasks",
            StreamedRead::Spans => "one span per thread, no prefetch",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn other(self) -> Self {
        match self {
            StreamedRead::Ahead => StreamedRead::Spans,
            StreamedRead::Spans => StreamedRead::Ahead,
        }
    }
}

/// One streamed GEMV in this many reads the way not taken. That costs ~0.7 % when the other
/// way is 6 % slower. At ~100 streamed GEMVs per step, the other way is tried about 12 times a
/// step.
pub const TRY_OTHER_EVERY: usize = 8;

/// How much faster the other way must read, on average over the horizon, to take over.
pub const SWITCH_BELOW: f64 = 0.97;

/// The stretch of streamed reading (time inside streamed GEMVs) the comparison averages over,
/// as an exponential decay: a dozen Voxtral Realtime steps, where the memory's regime holds
/// for minutes.
pub const HORIZON: Duration = Duration::from_secs(1);

/// Matrices remembered at most (a server that loads model after model forgets them all and
/// starts again).
const MAX_MATRICES: usize = 4096;

/// A streamed matrix, as the GEMV sees it: where its weights lie.
pub type MatrixId = usize;

/// The running choice.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadChooser {
    current: StreamedRead,
    calls: usize,
    /// ns per byte of each matrix's last read the current way.
    last: HashMap<MatrixId, f64>,
    /// Decaying sums of ln(other way's cost / current way's) and of their weights (bytes).
    log_ratio: f64,
    weight: f64,
    totals: [WayTotals; 2],
}

/// What one way read over the whole process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WayTotals {
    pub calls: usize,
    pub bytes: f64,
    pub seconds: f64,
}

impl Default for ReadChooser {
    fn default() -> Self {
        Self {
            current: StreamedRead::Ahead,
            calls: 0,
            last: HashMap::new(),
            log_ratio: 0.0,
            weight: 0.0,
            totals: [WayTotals::default(); 2],
        }
    }
}

impl ReadChooser {
    /// The way the next streamed GEMV reads: the current one, except every
    /// [`TRY_OTHER_EVERY`]th call.
    pub fn pick(&mut self) -> StreamedRead {
        self.calls += 1;
        if self.calls.is_multiple_of(TRY_OTHER_EVERY) {
            self.current.other()
        } else {
            self.current
        }
    }

    /// Records that `way` read `bytes` of `matrix` in `elapsed`; the other way takes over
    /// when its reads averaged below [`SWITCH_BELOW`] times the current way's.
    pub fn record(&mut self, matrix: MatrixId, way: StreamedRead, bytes: usize, elapsed: Duration) {
        let total = &mut self.totals[way.index()];
        total.calls += 1;
        total.bytes += bytes as f64;
        total.seconds += elapsed.as_secs_f64();
        if bytes == 0 {
            return;
        }
        let keep = (-elapsed.as_secs_f64() / HORIZON.as_secs_f64()).exp();
        self.log_ratio *= keep;
        self.weight *= keep;
        let cost = elapsed.as_secs_f64() * 1e9 / bytes as f64;
        if way == self.current {
            if self.last.len() >= MAX_MATRICES {
                self.last.clear();
            }
            self.last.insert(matrix, cost);
            return;
        }
        let Some(&current) = self.last.get(&matrix) else {
            return;
        };
        if cost > 0.0 && current > 0.0 {
            self.log_ratio += bytes as f64 * (cost / current).ln();
            self.weight += bytes as f64;
        }
        if self.weight > 0.0 && (self.log_ratio / self.weight).exp() < SWITCH_BELOW {
            // The ratios now compare the old way with the new one.
            self.current = way;
            self.log_ratio = -self.log_ratio;
            self.last.clear();
        }
    }

    /// The way that reads now.
    pub fn current(&self) -> StreamedRead {
        self.current
    }

    /// Each way's totals.
    pub fn totals(&self) -> [(StreamedRead, WayTotals); 2] {
        StreamedRead::ALL.map(|way| (way, self.totals[way.index()]))
    }
}

/// The process's chooser: streamed GEMVs of every model and request share the memory, so they
/// share the choice.
static CHOOSER: Mutex<Option<ReadChooser>> = Mutex::new(None);

fn with_chooser<T>(f: impl FnOnce(&mut ReadChooser) -> T) -> T {
    // A panic inside cannot leave the chooser inconsistent enough to matter: keep using it.
    let mut guard = CHOOSER.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(ReadChooser::default))
}

/// The largest share of a decoding cycle's reads that may be cached where spans are tried.
/// Whisper tiny's step keeps ~40 % cached beside its streamed output head, Qwen3-TTS its code
/// predictor read 15 times a frame; Voxtral's int8 steps well under 1 %. Spans gain 4–6 % of
/// the streamed reads where they win, and evicting the cached share costs about half of it
/// again in reads from memory.
pub const SPANS_MAX_CACHED_SHARE: f64 = 0.05;

/// Whether a cycle that reads `cached` of its `total` bytes from the caches leaves the spans
/// to be tried.
pub fn spans_may_read(cached: usize, total: usize) -> bool {
    cached as f64 <= SPANS_MAX_CACHED_SHARE * total as f64
}

/// Whether spans are tried in this process: until a model plans a cycle that keeps more than
/// [`SPANS_MAX_CACHED_SHARE`] cached.
static SPANS_ALLOWED: AtomicBool = AtomicBool::new(true);

/// Notes a decoding cycle's plan (called where the residency is planned): a cycle with a
/// sizeable cached share turns the spans off for the process, as its streamed matrices share
/// the chooser with every other model's.
pub fn note_cycle(cached: usize, total: usize) {
    if !spans_may_read(cached, total) {
        SPANS_ALLOWED.store(false, Ordering::Relaxed);
    }
}

/// [`ReadChooser::pick`] on the process's chooser; always [`StreamedRead::Ahead`] where
/// [`note_cycle`] turned the spans off.
pub fn pick() -> StreamedRead {
    if !SPANS_ALLOWED.load(Ordering::Relaxed) {
        return StreamedRead::Ahead;
    }
    with_chooser(ReadChooser::pick)
}

/// [`ReadChooser::record`] on the process's chooser.
pub fn record(matrix: MatrixId, way: StreamedRead, bytes: usize, elapsed: Duration) {
    with_chooser(|c| c.record(matrix, way, bytes, elapsed))
}

/// Each way's totals so far in this process.
pub fn totals() -> [(StreamedRead, WayTotals); 2] {
    with_chooser(|c| c.totals())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `calls` picks, each read at `ns_per_byte(way)` over 16 MB (16 ms at 1 ns per byte:
    /// [`HORIZON`] spans ~60 calls); returns the ways read.
    fn run(
        chooser: &mut ReadChooser,
        calls: usize,
        ns_per_byte: impl Fn(StreamedRead) -> f64,
    ) -> Vec<StreamedRead> {
        (0..calls)
            .map(|_| {
                let way = chooser.pick();
                let bytes = 16 << 20;
                let ns = ns_per_byte(way) * bytes as f64;
                chooser.record(7, way, bytes, Duration::from_nanos(ns as u64));
                way
            })
            .collect()
    }

    fn share(ways: &[StreamedRead], way: StreamedRead) -> f64 {
        ways.iter().filter(|w| **w == way).count() as f64 / ways.len() as f64
    }

    #[test]
    fn reads_the_cheaper_way_and_tries_the_other_now_and_then() {
        let mut c = ReadChooser::default();
        // Ahead first; every TRY_OTHER_EVERY-th call the other way.
        let first = run(&mut c, TRY_OTHER_EVERY, |_| 1.0);
        assert!(first[..TRY_OTHER_EVERY - 1]
            .iter()
            .all(|w| *w == StreamedRead::Ahead));
        assert_eq!(first[TRY_OTHER_EVERY - 1], StreamedRead::Spans);
        // Spans 6 % cheaper: it takes over, Ahead is still read one call in TRY_OTHER_EVERY.
        let ways = run(&mut c, 800, |w| match w {
            StreamedRead::Ahead => 1.0,
            StreamedRead::Spans => 0.94,
        });
        assert_eq!(c.current(), StreamedRead::Spans);
        let tried = share(&ways[200..], StreamedRead::Ahead);
        assert!(
            (tried - 1.0 / TRY_OTHER_EVERY as f64).abs() < 0.01,
            "{tried}"
        );
        // The regime turns: Ahead 6 % cheaper, and it takes back over.
        let ways = run(&mut c, 800, |w| match w {
            StreamedRead::Ahead => 0.94,
            StreamedRead::Spans => 1.0,
        });
        assert_eq!(c.current(), StreamedRead::Ahead);
        assert!(share(&ways[200..], StreamedRead::Ahead) > 0.85);
    }

    #[test]
    fn a_difference_inside_the_margin_does_not_switch() {
        let mut c = ReadChooser::default();
        run(&mut c, 500, |w| match w {
            StreamedRead::Ahead => 1.0,
            StreamedRead::Spans => 0.985,
        });
        assert_eq!(c.current(), StreamedRead::Ahead);
    }

    #[test]
    fn a_mix_of_matrices_alone_does_not_switch() {
        // Voxtral Realtime's int8 step: 104 matrices of ~33 MB, then the 400 MB head, which
        // reads 15 % slower per byte than the rest; both ways read alike.
        let mut c = ReadChooser::default();
        for _ in 0..50 {
            for call in 0..105 {
                let (bytes, ns_per_byte) = if call == 104 {
                    (400 << 20, 1.15)
                } else {
                    (33 << 20, 1.0)
                };
                let way = c.pick();
                let ns = (bytes as f64 * ns_per_byte) as u64;
                c.record(call, way, bytes, Duration::from_nanos(ns));
                assert_eq!(c.current(), StreamedRead::Ahead);
            }
        }
    }

    #[test]
    fn spans_only_where_little_is_cached() {
        // Voxtral Realtime int8: ~25 MB cached of a 3.4 GB step.
        assert!(spans_may_read(25 << 20, 3433 << 20));
        // Whisper tiny f16: the layers cached beside the streamed head.
        assert!(!spans_may_read(26 << 20, 66 << 20));
        assert!(spans_may_read(0, 0));
    }

    #[test]
    fn totals_count_each_way() {
        let mut c = ReadChooser::default();
        run(&mut c, 80, |_| 2.0);
        let [(ahead_way, ahead), (spans_way, spans)] = c.totals();
        assert_eq!(
            (ahead_way, spans_way),
            (StreamedRead::Ahead, StreamedRead::Spans)
        );
        assert_eq!(ahead.calls + spans.calls, 80);
        assert_eq!(spans.calls, 80 / TRY_OTHER_EVERY);
        // 2 ns per byte: 0.5 GB/s.
        assert!((ahead.bytes / ahead.seconds / 1e9 - 0.5).abs() < 1e-3);
    }
}
