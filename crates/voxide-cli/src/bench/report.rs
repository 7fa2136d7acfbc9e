//! Benchmark statistics and reports: medians with min and max over repeats, totals in the
//! protocol of antirez/voxtral.c's benchmark, and the comparison with a saved baseline.

use serde::{Deserialize, Serialize};
use voxide_nn::kernels::machine::CycleBytes;

/// Median, min and max of one metric over the repeats.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Stat {
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

impl Stat {
    /// Statistics of `values` (all zero when empty).
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }
}

/// The measurements of one run over one input.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Run {
    /// Whole transcription, ms.
    pub wall_ms: f64,
    /// Log-mel, ms.
    pub mel_ms: f64,
    /// Encoder, ms.
    pub encoder_ms: f64,
    /// Prefills, ms.
    pub prefill_ms: f64,
    /// Decoder steps.
    pub steps: usize,
    /// Decoder steps, ms.
    pub steps_ms: f64,
    /// Bytes of keys and values the steps' attention read, summed over the steps.
    pub kv_bytes: usize,
    /// Start to first sampled token, ms.
    pub first_token_ms: f64,
    /// Word alignment, ms (with --word-timestamps).
    pub alignment_ms: f64,
    /// Windows aligned.
    pub alignments: usize,
}

/// Per-input results.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileReport {
    /// Input name.
    pub name: String,
    /// Audio length, s.
    pub audio_s: f64,
    /// Wall time, ms.
    pub wall_ms: Stat,
    /// Wall / audio.
    pub rtf: Stat,
    /// Log-mel, ms.
    pub mel_ms: Stat,
    /// Encoder, ms.
    pub encoder_ms: Stat,
    /// Prefills, ms.
    pub prefill_ms: Stat,
    /// Decoder steps per run (median).
    pub steps: f64,
    /// Decoder steps, ms (median run).
    pub steps_ms: Stat,
    /// ms per decoder step.
    pub ms_per_step: Stat,
    /// Decoded tokens per second of decoder-step time.
    pub tokens_per_s: Stat,
    /// Start to first token, ms.
    pub first_token_ms: Stat,
    /// Peak resident memory of the process while this input ran, MB.
    pub peak_rss_mb: f64,
    /// Word alignment, ms (zero without --word-timestamps).
    #[serde(default)]
    pub alignment_ms: Stat,
    /// Windows aligned per run (median).
    #[serde(default)]
    pub alignments: f64,
    /// Bytes of keys and values a decoder step's attention read (median run's mean).
    #[serde(default)]
    pub kv_bytes_per_step: f64,
}

impl FileReport {
    /// Summarises the runs over one input.
    pub fn new(name: &str, audio_s: f64, runs: &[Run], peak_rss_mb: f64) -> Self {
        let stat = |f: &dyn Fn(&Run) -> f64| Stat::of(&runs.iter().map(f).collect::<Vec<_>>());
        let per_step = |r: &Run| {
            if r.steps == 0 {
                0.0
            } else {
                r.steps_ms / r.steps as f64
            }
        };
        Self {
            name: name.to_string(),
            audio_s,
            wall_ms: stat(&|r| r.wall_ms),
            rtf: stat(&|r| r.wall_ms / 1e3 / audio_s),
            mel_ms: stat(&|r| r.mel_ms),
            encoder_ms: stat(&|r| r.encoder_ms),
            prefill_ms: stat(&|r| r.prefill_ms),
            steps: stat(&|r| r.steps as f64).median,
            steps_ms: stat(&|r| r.steps_ms),
            ms_per_step: stat(&per_step),
            tokens_per_s: stat(&|r| {
                if r.steps_ms > 0.0 {
                    r.steps as f64 * 1e3 / r.steps_ms
                } else {
                    0.0
                }
            }),
            first_token_ms: stat(&|r| r.first_token_ms),
            peak_rss_mb,
            alignment_ms: stat(&|r| r.alignment_ms),
            alignments: stat(&|r| r.alignments as f64).median,
            kv_bytes_per_step: stat(&|r| r.kv_bytes as f64 / r.steps.max(1) as f64).median,
        }
    }
}

/// Totals over all inputs, from the per-input medians (antirez/voxtral.c's protocol).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    /// Audio, s.
    pub audio_s: f64,
    /// Wall, ms.
    pub wall_ms: f64,
    /// Total wall / total audio.
    pub rtf: f64,
    /// Log-mel, ms.
    pub mel_ms: f64,
    /// Encoder, ms.
    pub encoder_ms: f64,
    /// Prefills, ms.
    pub prefill_ms: f64,
    /// Total decoder-step time / total steps.
    pub weighted_ms_per_step: f64,
    /// Mean ms/step over clips shorter than 60 s.
    pub short_ms_per_step: Option<f64>,
    /// Mean ms/step over clips of 59 s or more.
    pub long_ms_per_step: Option<f64>,
    /// Highest peak resident memory, MB.
    pub peak_rss_mb: f64,
    /// Bytes of keys and values a decoder step's attention read, over all steps.
    #[serde(default)]
    pub kv_bytes_per_step: f64,
    /// The decoder step's bandwidth floor, for models that report their step's bytes.
    #[serde(default)]
    pub floor: Option<Floor>,
}

/// What a decoder step (a TTS frame) reads: `bytes` in all (weights and K/V), of which
/// `cached_bytes` are weights its plan keeps in the caches, read there at `cache_gbps`: the
/// rate the plan's cached set was re-read at after a stream went past it
/// ([`RetentionReport::kept_gbps`], measured at load). Everything else comes from memory.
/// `reread_bytes` are weights the cycle reads again before anything else has gone through the
/// caches (a TTS frame's code predictor passes after the first), read at `reread_gbps`
/// ([`voxide_nn::kernels::bandwidth::reread_gbps`]), whatever their plan.
/// A floor is the least time, so the cached bytes count at the faster of the two rates (on a
/// host whose memory switches to a fast regime, the caches' rate measured at load can be the
/// slower), and so do the re-read ones.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepReads {
    pub bytes: f64,
    pub cached_bytes: f64,
    pub cache_gbps: f64,
    pub reread_bytes: f64,
    pub reread_gbps: f64,
}

impl StepReads {
    /// The weights of a step, by residency, and `other_bytes` (K/V) read from memory. Cached
    /// weights count at `cache_gbps` where it was measured, else at the memory's rate.
    pub fn new(weights: CycleBytes, other_bytes: f64, cache_gbps: Option<f64>) -> Self {
        let cache_gbps = cache_gbps.filter(|g| *g > 0.0);
        Self {
            bytes: weights.total() as f64 + other_bytes,
            cached_bytes: cache_gbps.map_or(0.0, |_| weights.cached as f64),
            cache_gbps: cache_gbps.unwrap_or(0.0),
            ..Self::default()
        }
    }

    /// These reads with `rereads` (a part of the weights, by residency) counted at
    /// `reread_gbps` where it was measured, instead of the rate their residency gave them.
    pub fn with_rereads(self, rereads: CycleBytes, reread_gbps: Option<f64>) -> Self {
        let Some(reread_gbps) = reread_gbps.filter(|g| *g > 0.0) else {
            return self;
        };
        let counted_cached = if self.cache_gbps > 0.0 {
            rereads.cached as f64
        } else {
            0.0
        };
        Self {
            cached_bytes: self.cached_bytes - counted_cached,
            reread_bytes: rereads.total() as f64,
            reread_gbps,
            ..self
        }
    }

    /// The least time, ms, to read them with the memory reading `gbps`.
    pub fn floor_ms(&self, gbps: f64) -> f64 {
        let cached_s = self.cached_bytes / (self.cache_gbps.max(gbps) * 1e9);
        let reread_s = self.reread_bytes / (self.reread_gbps.max(gbps) * 1e9);
        let from_memory = self.bytes - self.cached_bytes - self.reread_bytes;
        (from_memory / (gbps * 1e9) + cached_s + reread_s) * 1e3
    }
}

/// A decoder step against the memory-bandwidth limit.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Floor {
    /// Bytes of weights one step reads.
    pub step_bytes: usize,
    /// Bytes of keys and values one step reads on average (models whose caches grow with the
    /// sequence: they are part of what a step must read).
    #[serde(default)]
    pub kv_bytes: usize,
    /// Of the weights, bytes the plan keeps cached, read at `cache_gbps` (0: none, or the
    /// caches' rate was not measured and every byte counts at the memory's).
    #[serde(default)]
    pub cached_bytes: usize,
    #[serde(default)]
    pub cache_gbps: f64,
    /// Measured read bandwidth, GB/s.
    pub read_gbps: f64,
    /// The least time to read the step: (step_bytes + kv_bytes − cached_bytes) / read_gbps +
    /// cached_bytes / max(cache_gbps, read_gbps), ms ([`StepReads`]).
    pub floor_ms: f64,
    /// Weighted ms/step over the floor; `None` when the step measured faster than its floor,
    /// which cannot be: a measurement error (the probe under-reads, or the step's bytes are
    /// wrong), not a figure to report.
    pub ratio: Option<f64>,
    /// Each measured run's steps against the probes taken just before and after it.
    #[serde(default)]
    pub runs: Vec<RunFloor>,
    /// The runs' windows between probes taken while decoding (`bench::windows`), each
    /// against the probes at its ends.
    #[serde(default)]
    pub windows: Vec<RunFloor>,
}

/// The least share of the faster of two probes around a run that the slower must read for the
/// run to count as steady: on a shared machine whose memory switches between regimes (Zen 5
/// here: ~50 or ~80 GB/s for minutes at a time), a run between probes that disagree may have
/// run in either.
pub const STEADY_PROBE_SHARE: f64 = 0.9;

/// One measured run's decoder steps and the read bandwidth probed just before and after it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunFloor {
    /// ms per decoder step (per frame of a TTS run: a talker step and the predictor's steps).
    pub ms_per_step: f64,
    /// What that step reads: weights and mean K/V bytes (a TTS frame's weights).
    pub bytes_per_step: f64,
    /// Of those, weights read from the caches at `cache_gbps` ([`StepReads`]).
    #[serde(default)]
    pub cached_bytes_per_step: f64,
    #[serde(default)]
    pub cache_gbps: f64,
    /// Of those, weights read again within the step at `reread_gbps` ([`StepReads`]).
    #[serde(default)]
    pub reread_bytes_per_step: f64,
    #[serde(default)]
    pub reread_gbps: f64,
    pub gbps_before: f64,
    pub gbps_after: f64,
}

/// How a run compares with the floor of the probes around it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RunVerdict {
    /// The probes disagree: the memory's bandwidth moved during the run.
    Unsteady,
    /// ms/step over the floor at the faster of the two probes (≥ 1).
    Ratio(f64),
    /// Faster than that floor: a measurement error, not a figure.
    BelowFloor,
}

impl RunFloor {
    /// A run that read `reads` per step at `ms_per_step`, between the last two of `probes`
    /// (GB/s, in the order taken).
    pub fn between_last_probes(ms_per_step: f64, reads: StepReads, probes: &[f64]) -> Self {
        let (before, after) = match probes {
            [.., before, after] => (*before, *after),
            _ => (0.0, 0.0),
        };
        Self {
            ms_per_step,
            bytes_per_step: reads.bytes,
            cached_bytes_per_step: reads.cached_bytes,
            cache_gbps: reads.cache_gbps,
            reread_bytes_per_step: reads.reread_bytes,
            reread_gbps: reads.reread_gbps,
            gbps_before: before,
            gbps_after: after,
        }
    }

    pub fn verdict(&self) -> RunVerdict {
        let (slow, fast) = (
            self.gbps_before.min(self.gbps_after),
            self.gbps_before.max(self.gbps_after),
        );
        if !(slow > 0.0 && slow >= fast * STEADY_PROBE_SHARE) {
            return RunVerdict::Unsteady;
        }
        let reads = StepReads {
            bytes: self.bytes_per_step,
            cached_bytes: self.cached_bytes_per_step,
            cache_gbps: self.cache_gbps,
            reread_bytes: self.reread_bytes_per_step,
            reread_gbps: self.reread_gbps,
        };
        match self.ms_per_step / reads.floor_ms(fast) {
            r if r >= 1.0 => RunVerdict::Ratio(r),
            _ => RunVerdict::BelowFloor,
        }
    }
}

/// The machine a report was measured on, and its limits measured in the same run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MachineReport {
    /// CPU model name.
    pub cpu_model: String,
    /// Usable cores (affinity, cgroup quota).
    pub cores: usize,
    /// Instruction set of the kernels.
    pub isa: String,
    /// Private L1 data cache per core, bytes.
    #[serde(default)]
    pub l1d_bytes: usize,
    /// Private L2 per core, bytes.
    pub l2_bytes: usize,
    /// Last-level cache of the usable cores, bytes.
    pub l3_bytes: usize,
    /// What a decoder step may keep cached ([`voxide_nn::kernels::machine::cache_budget`]).
    pub cache_budget_bytes: usize,
    /// Read bandwidth with the bench's threads, GB/s: the fastest pass of the fastest variant
    /// over the probes just before the first measured run and after each.
    pub read_gbps: f64,
    /// Each of those probes' fastest pass, GB/s, in order: how far the machine's bandwidth
    /// moved during the command (a floor taken in a quiet moment overstates a ratio measured
    /// in a busy one).
    #[serde(default)]
    pub read_probes_gbps: Vec<f64>,
    /// Every variant the probe tried at start, fastest first: (description, GB/s).
    pub read_variants: Vec<(String, f64)>,
    /// f32 FMA peak with the bench's threads, GFLOP/s.
    pub fma_gflops: f64,
    /// f32 FMA peak of one thread alone, GFLOP/s ([`MachineReport::cores_held`]).
    #[serde(default)]
    pub fma_one_core_gflops: f64,
    /// Physical cores among the usable ones (SMT siblings once).
    #[serde(default)]
    pub physical_cores: usize,
    /// One core's bf16 dot products against its f32 FMAs and whether the bf16 kernels were
    /// taken ([`voxide_nn::kernels::fma_peak::bf16_dots`]); `None` where the CPU has none.
    #[serde(default)]
    pub bf16_dots: Option<Bf16DotsReport>,
    /// Whether bf16 products of many rows (encoders, prompts) ran on AMX tiles
    /// ([`voxide_nn::kernels::small_m::amx_bf16_tiles`]).
    #[serde(default)]
    pub amx_bf16: bool,
    /// One core's rate of the tiles' bf16 products, GFLOP/s
    /// ([`voxide_nn::kernels::fma_peak::amx_bf16_gflops`]): the ceiling of the products built
    /// on them; `None` where they do not run.
    #[serde(default)]
    pub amx_bf16_gflops: Option<f64>,
    /// Whether int8 products of many rows ran on AMX tiles
    /// ([`voxide_nn::kernels::small_m::amx_int8_tiles`]).
    #[serde(default)]
    pub amx_int8: bool,
    /// How streamed matrices were read: from memory with non-temporal prefetches against plain
    /// ones ([`voxide_nn::kernels::bandwidth::StreamingReads`]); `None` where not measured.
    #[serde(default)]
    pub streaming: Option<StreamingReport>,
}

/// One core's rate of bf16 dot products against its f32 FMAs, and the choice it made.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Bf16DotsReport {
    /// f32 FMAs on one core, GFLOP/s.
    pub f32_gflops: f64,
    /// bf16 dot products on one core, GFLOP/s (a multiply-add is 2 FLOPs in both).
    pub bf16_gflops: f64,
    /// Whether the bf16 kernels were taken (bf16 ≥ `BF16_DOTS_MIN_GAIN` × f32).
    pub taken: bool,
}

/// The streaming reads measured at start and the prefetch streamed matrices took.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StreamingReport {
    /// GB/s with non-temporal (NTA) prefetches.
    pub nontemporal_gbps: f64,
    /// GB/s with plain (T0) prefetches.
    pub keep_gbps: f64,
    /// Whether streamed matrices took the non-temporal prefetches.
    pub nontemporal: bool,
    /// How far ahead of the loads each weight type's GEMV prefetched streamed matrices.
    #[serde(default)]
    pub read_ahead: Vec<ReadAheadReport>,
    /// Whether cached weights survived the streamed ones ([`voxide_nn::kernels::bandwidth::Retention`]);
    /// `None` where no plan asked (nothing both kept and streamed) or it cannot be measured.
    #[serde(default)]
    pub retention: Option<RetentionReport>,
}

/// The cached set re-read after a stream went past it, against the same set from memory.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RetentionReport {
    pub kept_bytes: usize,
    pub streamed_bytes: usize,
    pub kept_gbps: f64,
    pub cold_gbps: f64,
    /// Median per-round kept / cold.
    pub gain: f64,
    /// Whether plans kept matrices cached.
    pub holds: bool,
}

/// How one weight type's GEMV reads streamed matrices: its prefetch distance and rows per pass.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ReadAheadReport {
    /// The weight type (`bf16`, `int8`, ...).
    pub weights: String,
    /// The distance taken, bytes.
    pub bytes: usize,
    /// Weight rows a pass reads side by side (m = 1).
    #[serde(default)]
    pub rows_per_pass: usize,
    /// (distance, GB/s) for each distance tried: the GEMV from memory on one core, at the
    /// kernel's own rows per pass.
    pub gbps: Vec<(usize, f64)>,
    /// The same at fewer rows per pass, where the kernel takes that choice (since #144 only
    /// without software prefetch; else empty).
    #[serde(default)]
    pub gbps_fewer_rows: Vec<(usize, f64)>,
}

/// Each run against the floor of the probes just before and after it (where they agree within
/// [`STEADY_PROBE_SHARE`]): on a machine whose bandwidth switches regimes, the floor of the
/// run's own moment.
pub fn run_floors_line(runs: &[RunFloor]) -> String {
    let each: Vec<String> = runs
        .iter()
        .map(|r| match r.verdict() {
            RunVerdict::Ratio(ratio) => format!("{ratio:.2}x"),
            RunVerdict::Unsteady => format!(
                "unsteady ({:.1} -> {:.1} GB/s)",
                r.gbps_before, r.gbps_after
            ),
            RunVerdict::BelowFloor => {
                "FASTER THAN ITS FLOOR (the probes missed the bandwidth of the run's moment, or a measurement error)".into()
            }
        })
        .collect();
    format!(
        "each run against the probes just before and after it (steady where they agree within {:.0} %): {}",
        (1.0 - STEADY_PROBE_SHARE) * 100.0,
        each.join(", ")
    )
}

/// The windows between probes taken while decoding (`bench::windows`): how many were steady,
/// and the median and range of their ratios to the floor. `None` where there were none.
pub fn windows_line(windows: &[RunFloor]) -> Option<String> {
    if windows.is_empty() {
        return None;
    }
    let (mut ratios, mut below) = (Vec::new(), 0);
    for w in windows {
        match w.verdict() {
            RunVerdict::Ratio(r) => ratios.push(r),
            RunVerdict::BelowFloor => below += 1,
            RunVerdict::Unsteady => {}
        }
    }
    let steady = ratios.len() + below;
    let mut line = format!(
        "windows of the runs between probes taken while decoding (each >= {} s, the step after a probe left out): {steady} of {} steady",
        super::windows::WINDOW.as_secs(),
        windows.len()
    );
    if !ratios.is_empty() {
        let s = Stat::of(&ratios);
        line += &format!(
            ", ratio to the floor median {:.2}x ({:.2}x-{:.2}x)",
            s.median, s.min, s.max
        );
    }
    if below > 0 {
        line += &format!(
            ", {below} FASTER THAN THEIR FLOOR (the probes missed the bandwidth of the window's moment, or a measurement error)"
        );
    }
    Some(line)
}

impl Totals {
    /// Adds the bandwidth floor of a step reading `weights` and its mean K/V bytes, with the
    /// memory at `read_gbps` and the cached weights at `cache_gbps` where measured.
    pub fn set_floor(&mut self, weights: CycleBytes, read_gbps: f64, cache_gbps: Option<f64>) {
        let kv_bytes = self.kv_bytes_per_step.round() as usize;
        let reads = StepReads::new(weights, kv_bytes as f64, cache_gbps);
        let floor_ms = reads.floor_ms(read_gbps);
        self.floor = Some(Floor {
            step_bytes: weights.total(),
            kv_bytes,
            cached_bytes: reads.cached_bytes as usize,
            cache_gbps: reads.cache_gbps,
            read_gbps,
            floor_ms,
            ratio: Some(self.weighted_ms_per_step / floor_ms).filter(|r| *r >= 1.0),
            runs: Vec::new(),
            windows: Vec::new(),
        });
    }

    /// Totals of the per-input reports.
    pub fn of(files: &[FileReport]) -> Self {
        let sum = |f: &dyn Fn(&FileReport) -> f64| files.iter().map(f).sum::<f64>();
        let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        let audio_s = sum(&|f| f.audio_s);
        let wall_ms = sum(&|f| f.wall_ms.median);
        let steps = sum(&|f| f.steps);
        Self {
            audio_s,
            wall_ms,
            rtf: if audio_s > 0.0 {
                wall_ms / 1e3 / audio_s
            } else {
                0.0
            },
            mel_ms: sum(&|f| f.mel_ms.median),
            encoder_ms: sum(&|f| f.encoder_ms.median),
            prefill_ms: sum(&|f| f.prefill_ms.median),
            weighted_ms_per_step: if steps > 0.0 {
                sum(&|f| f.steps_ms.median) / steps
            } else {
                0.0
            },
            short_ms_per_step: mean(
                files
                    .iter()
                    .filter(|f| f.audio_s < 60.0)
                    .map(|f| f.ms_per_step.median)
                    .collect(),
            ),
            long_ms_per_step: mean(
                files
                    .iter()
                    .filter(|f| f.audio_s >= 59.0)
                    .map(|f| f.ms_per_step.median)
                    .collect(),
            ),
            peak_rss_mb: files.iter().map(|f| f.peak_rss_mb).fold(0.0, f64::max),
            kv_bytes_per_step: if steps > 0.0 {
                sum(&|f| f.kv_bytes_per_step * f.steps) / steps
            } else {
                0.0
            },
            floor: None,
        }
    }
}

/// Below this share of one core's FMA rate per physical core in use, the bench's threads did
/// not have their cores. All-core clocks stay above it (the Zen 3 VM ran 2 cores at 1.0× one
/// core's rate each; laptops' all-core turbo is ~0.75× their one-core clock); a core held by
/// another process halves it (PERFORMANCE.md, stop 88: 0.51× in a whole command, 0.58× beside
/// a busy loop on the other core).
pub const FMA_SCALING_MIN: f64 = 0.6;

impl MachineReport {
    /// The physical cores `threads` threads run on: SMT siblings share a core's FMAs.
    pub fn fma_cores(&self, threads: usize) -> usize {
        threads.min(self.physical_cores).max(1)
    }

    /// The bench's threads' FMA rate against one core's times [`Self::fma_cores`], where it
    /// fell below [`FMA_SCALING_MIN`]: another process held cores while the command measured,
    /// and its figures are not the machine's own. `None` when the threads scaled, or where a
    /// rate was not measured.
    pub fn cores_held(&self, threads: usize) -> Option<f64> {
        if self.fma_one_core_gflops <= 0.0 || self.fma_gflops <= 0.0 {
            return None;
        }
        let expected = self.fma_cores(threads) as f64 * self.fma_one_core_gflops;
        let scaling = self.fma_gflops / expected;
        (scaling < FMA_SCALING_MIN).then_some(scaling)
    }
}

/// A whole benchmark: what ran, per input and in total.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Model directory.
    pub model: String,
    /// CPU threads.
    pub threads: usize,
    /// Measured runs per input.
    pub repeats: usize,
    /// Unmeasured runs per input.
    pub warmup: usize,
    /// Decoder steps per window when fixed.
    pub fixed_steps: Option<usize>,
    /// Model load, ms.
    pub load_ms: f64,
    /// The machine and its measured limits.
    #[serde(default)]
    pub machine: MachineReport,
    /// Per input.
    pub files: Vec<FileReport>,
    /// Totals.
    pub totals: Totals,
}

/// Outcome of a comparison with a baseline.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Within bounds.
    Pass,
    /// The total is more than 10 % slower.
    Warn(Vec<String>),
    /// A component is more than 20 % slower.
    Fail(Vec<String>),
}

/// A component must be slower by more than this fraction (and than its noise floor) to fail.
const COMPONENT_LIMIT: f64 = 0.20;
/// The total must be slower by more than this fraction to warn.
const TOTAL_LIMIT: f64 = 0.10;

/// Compares `now` with `baseline` component by component (log-mel, encoder, prefill,
/// ms/step) and in total (wall).
pub fn compare(now: &Totals, baseline: &Totals) -> Verdict {
    // (name, now, baseline, noise floor in ms: differences below it pass whatever their ratio;
    // a 5 s clip's log-mel takes ~2 ms).
    let components = [
        ("mel", now.mel_ms, baseline.mel_ms, 1.0),
        ("encoder", now.encoder_ms, baseline.encoder_ms, 1.0),
        ("prefill", now.prefill_ms, baseline.prefill_ms, 1.0),
        (
            "decoder ms/step",
            now.weighted_ms_per_step,
            baseline.weighted_ms_per_step,
            0.05,
        ),
    ];
    let slower = |now: f64, base: f64, limit: f64, floor: f64| {
        now > base * (1.0 + limit) && now - base > floor
    };
    let failures: Vec<String> = components
        .iter()
        .filter(|(_, n, b, floor)| slower(*n, *b, COMPONENT_LIMIT, *floor))
        .map(|(name, n, b, _)| {
            format!(
                "{name} {n:.2} ms vs baseline {b:.2} ms (+{:.0} %)",
                (n / b - 1.0) * 100.0
            )
        })
        .collect();
    if !failures.is_empty() {
        return Verdict::Fail(failures);
    }
    if slower(now.wall_ms, baseline.wall_ms, TOTAL_LIMIT, 1.0) {
        return Verdict::Warn(vec![format!(
            "total {:.0} ms vs baseline {:.0} ms (+{:.0} %)",
            now.wall_ms,
            baseline.wall_ms,
            (now.wall_ms / baseline.wall_ms - 1.0) * 100.0
        )]);
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_the_median() {
        assert_eq!(
            Stat::of(&[3.0, 1.0, 2.0]),
            Stat {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        assert_eq!(Stat::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }

    /// Two threads at twice one core's rate scaled; at one core's rate (a core held: the
    /// Zen 3 command of stop 88, 103 against 101 GFLOP/s a core) they did not. Threads past
    /// the physical cores (SMT siblings share a core's FMAs) expect no more than those cores;
    /// a rate not measured (a baseline written before the field) says nothing.
    #[test]
    fn a_held_core_shows_in_the_fma_rates() {
        let report = |all, one, physical_cores| MachineReport {
            fma_gflops: all,
            fma_one_core_gflops: one,
            physical_cores,
            ..Default::default()
        };
        assert_eq!(report(201.6, 101.0, 2).cores_held(2), None);
        let held = report(103.0, 101.0, 2).cores_held(2).unwrap();
        assert!((held - 0.51).abs() < 0.01, "{held}");
        assert_eq!(report(103.0, 101.0, 2).cores_held(1), None);
        assert_eq!(report(400.0, 110.0, 4).cores_held(8), None);
        assert!(report(200.0, 110.0, 4).cores_held(8).is_some());
        assert_eq!(report(200.0, 110.0, 4).fma_cores(2), 2);
        assert_eq!(report(103.0, 0.0, 2).cores_held(2), None);
    }

    fn file(name: &str, audio_s: f64, wall: f64, steps: f64, steps_ms: f64) -> FileReport {
        let run = Run {
            wall_ms: wall,
            steps: steps as usize,
            steps_ms,
            ..Default::default()
        };
        FileReport::new(name, audio_s, &[run], 100.0)
    }

    #[test]
    fn totals_follow_the_voxtral_c_protocol() {
        let files = [
            file("a", 5.0, 1000.0, 10.0, 100.0),
            file("b", 120.0, 9000.0, 90.0, 1800.0),
        ];
        let t = Totals::of(&files);
        assert_eq!(t.audio_s, 125.0);
        assert_eq!(t.rtf, 10.0 / 125.0);
        assert_eq!(
            t.weighted_ms_per_step,
            1900.0 / 100.0,
            "total step time / total steps"
        );
        assert_eq!(t.short_ms_per_step, Some(10.0));
        assert_eq!(t.long_ms_per_step, Some(20.0));
    }

    #[test]
    fn a_step_faster_than_its_floor_has_no_ratio() {
        let mut t = Totals {
            weighted_ms_per_step: 150.0,
            ..Default::default()
        };
        // 3 GB at 20 GB/s: 150 ms.
        t.set_floor(streamed(3_000_000_000), 20.0, None);
        let f = t.floor.clone().unwrap();
        assert!((f.floor_ms - 150.0).abs() < 1e-9);
        assert_eq!(f.ratio, Some(1.0));
        // At a probed 10 GB/s the floor is 300 ms: 150 ms/step is a measurement error.
        t.set_floor(streamed(3_000_000_000), 10.0, None);
        assert_eq!(t.floor.unwrap().ratio, None);
    }

    #[test]
    fn a_run_counts_against_its_own_probes_only_where_they_agree() {
        // 3 GB per step: 100 ms at 30 GB/s.
        let run = |ms_per_step, gbps_before, gbps_after| RunFloor {
            ms_per_step,
            bytes_per_step: 3e9,
            cached_bytes_per_step: 0.0,
            cache_gbps: 0.0,
            reread_bytes_per_step: 0.0,
            reread_gbps: 0.0,
            gbps_before,
            gbps_after,
        };
        // Probes within 10 %: the faster one sets the floor.
        match run(110.0, 29.0, 30.0).verdict() {
            RunVerdict::Ratio(r) => assert!((r - 1.1).abs() < 1e-9, "{r}"),
            v => panic!("{v:?}"),
        }
        // The memory switched regimes around the run: no ratio either way.
        assert_eq!(run(110.0, 50.0, 80.0).verdict(), RunVerdict::Unsteady);
        assert_eq!(run(110.0, 0.0, 0.0).verdict(), RunVerdict::Unsteady);
        // Fewer than two probes: nothing to judge the run by.
        let three_gb = StepReads::new(streamed(3_000_000_000), 0.0, None);
        let lone = RunFloor::between_last_probes(110.0, three_gb, &[30.0]);
        assert_eq!(lone.verdict(), RunVerdict::Unsteady);
        let last_two = RunFloor::between_last_probes(110.0, three_gb, &[80.0, 29.0, 30.0]);
        assert_eq!((last_two.gbps_before, last_two.gbps_after), (29.0, 30.0));
        // Faster than the floor of steady probes: a measurement error, not a ratio below 1.
        assert_eq!(run(90.0, 30.0, 30.0).verdict(), RunVerdict::BelowFloor);

        // Windows: the steady ones counted, their ratios' median and range, errors named.
        assert_eq!(windows_line(&[]), None);
        let line = windows_line(&[
            run(110.0, 29.0, 30.0),
            run(130.0, 30.0, 30.0),
            run(120.0, 30.0, 29.5),
            run(110.0, 50.0, 80.0),
            run(90.0, 30.0, 30.0),
        ])
        .unwrap();
        assert!(line.contains("4 of 5 steady"), "{line}");
        assert!(line.contains("median 1.20x (1.10x-1.30x)"), "{line}");
        assert!(line.contains("1 FASTER THAN THEIR FLOOR"), "{line}");
        let unsteady = windows_line(&[run(110.0, 50.0, 80.0)]).unwrap();
        assert!(unsteady.contains("0 of 1 steady") && !unsteady.contains("median"));
    }

    fn streamed(bytes: usize) -> CycleBytes {
        CycleBytes {
            streamed: bytes,
            cached: 0,
        }
    }

    #[test]
    fn cached_weights_count_at_the_rate_the_caches_gave_them() {
        // 2 GB streamed + 1 GB kept cached + 0.1 GB of K/V; memory at 20 GB/s, caches at 100.
        let weights = CycleBytes {
            streamed: 2_000_000_000,
            cached: 1_000_000_000,
        };
        let reads = StepReads::new(weights, 1e8, Some(100.0));
        // 2.1 GB / 20 + 1 GB / 100: 105 + 10 ms.
        assert!((reads.floor_ms(20.0) - 115.0).abs() < 1e-9);
        // Where the caches' rate was not measured, every byte counts at the memory's.
        let unmeasured = StepReads::new(weights, 1e8, None);
        assert!((unmeasured.floor_ms(20.0) - 155.0).abs() < 1e-9);
        // Memory faster than the caches' rate: the cached bytes count at the memory's.
        assert!((reads.floor_ms(200.0) - 3.1e9 / 200e9 * 1e3).abs() < 1e-9);
        // A run of 130 ms/step: faster than reading it all from memory, slower than the floor
        // with the cached part at the caches' rate.
        let run = |reads| RunFloor::between_last_probes(130.0, reads, &[20.0, 20.0]);
        match run(reads).verdict() {
            RunVerdict::Ratio(r) => assert!((r - 130.0 / 115.0).abs() < 1e-9, "{r}"),
            v => panic!("{v:?}"),
        }
        assert_eq!(run(unmeasured).verdict(), RunVerdict::BelowFloor);
        // The totals' floor as well.
        let mut t = Totals {
            weighted_ms_per_step: 130.0,
            kv_bytes_per_step: 1e8,
            ..Default::default()
        };
        t.set_floor(weights, 20.0, Some(100.0));
        let f = t.floor.unwrap();
        assert_eq!(
            (f.step_bytes, f.cached_bytes),
            (3_000_000_000, 1_000_000_000)
        );
        assert!((f.floor_ms - 115.0).abs() < 1e-9, "{}", f.floor_ms);
        assert!((f.ratio.unwrap() - 130.0 / 115.0).abs() < 1e-9);
    }

    #[test]
    fn rereads_count_at_the_rate_a_set_read_again_comes_back() {
        // A frame of 3 GB streamed, 1 GB of it read again (planned streamed): memory at 20
        // GB/s, the re-reads at 50.
        let reads = StepReads::new(streamed(3_000_000_000), 0.0, None)
            .with_rereads(streamed(1_000_000_000), Some(50.0));
        // 2 GB / 20 + 1 GB / 50: 100 + 20 ms.
        assert!((reads.floor_ms(20.0) - 120.0).abs() < 1e-9);
        // Memory faster than the re-reads: they count at the memory's rate.
        assert!((reads.floor_ms(100.0) - 30.0).abs() < 1e-9);
        // Not measured: as before.
        let plain = StepReads::new(streamed(3_000_000_000), 0.0, None);
        assert_eq!(plain.with_rereads(streamed(1_000_000_000), None), plain);
        // Re-reads the plan keeps cached leave the cached share, which keeps the rest.
        let weights = CycleBytes {
            streamed: 2_000_000_000,
            cached: 1_500_000_000,
        };
        let rereads = CycleBytes {
            streamed: 0,
            cached: 1_000_000_000,
        };
        let reads = StepReads::new(weights, 0.0, Some(25.0)).with_rereads(rereads, Some(50.0));
        assert_eq!((reads.cached_bytes, reads.reread_bytes), (5e8, 1e9));
        // 2 GB / 20 + 0.5 GB / 25 + 1 GB / 50: 100 + 20 + 20 ms.
        assert!((reads.floor_ms(20.0) - 140.0).abs() < 1e-9);
        // A run judged by it: 168 ms against 140.
        let run = RunFloor::between_last_probes(168.0, reads, &[20.0, 20.0]);
        match run.verdict() {
            RunVerdict::Ratio(r) => assert!((r - 1.2).abs() < 1e-9, "{r}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn the_floor_counts_the_steps_kv_bytes() {
        // 10 steps reading 20 MB of K/V each, 90 steps reading 40 MB each: 38 MB per step.
        let runs = |steps: usize, kv: usize| Run {
            steps,
            steps_ms: steps as f64 * 160.0,
            kv_bytes: steps * kv,
            ..Default::default()
        };
        let files = [
            FileReport::new("a", 5.0, &[runs(10, 20_000_000)], 100.0),
            FileReport::new("b", 60.0, &[runs(90, 40_000_000)], 100.0),
        ];
        let mut t = Totals::of(&files);
        assert_eq!(t.kv_bytes_per_step, 38_000_000.0);
        // (3 GB + 38 MB) at 20 GB/s: 151.9 ms.
        t.set_floor(streamed(3_000_000_000), 20.0, None);
        let f = t.floor.unwrap();
        assert_eq!(f.kv_bytes, 38_000_000);
        assert!((f.floor_ms - 151.9).abs() < 1e-9, "{}", f.floor_ms);
    }

    #[test]
    fn a_planted_regression_fails_and_noise_passes() {
        let base = Totals {
            mel_ms: 50.0,
            encoder_ms: 700.0,
            prefill_ms: 30.0,
            weighted_ms_per_step: 3.0,
            wall_ms: 2000.0,
            ..Default::default()
        };
        assert_eq!(compare(&base, &base), Verdict::Pass);
        let noisy = Totals {
            encoder_ms: 770.0,
            wall_ms: 2100.0,
            ..base.clone()
        };
        assert_eq!(compare(&noisy, &base), Verdict::Pass);
        let slow_step = Totals {
            weighted_ms_per_step: 3.9,
            ..base.clone()
        };
        assert!(
            matches!(compare(&slow_step, &base), Verdict::Fail(v) if v[0].starts_with("decoder ms/step"))
        );
        let slow_total = Totals {
            wall_ms: 2300.0,
            ..base.clone()
        };
        assert!(matches!(compare(&slow_total, &base), Verdict::Warn(_)));
    }
}
