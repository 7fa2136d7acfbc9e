//! `voxide bench`: timed transcriptions of files or named suites, with medians over repeats,
//! totals in antirez/voxtral.c's protocol, baselines, and Chrome traces.

mod report;
mod suite;
mod tts;
mod windows;

use crate::transcribe::{precision, set_threads};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use report::{
    compare, run_floors_line, windows_line, Bf16DotsReport, FileReport, MachineReport,
    ReadAheadReport, Report, RetentionReport, Run, RunFloor, Stat, StepReads, StreamingReport,
    Totals, Verdict,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use suite::{suite, BenchInput, SUITES};
use voxide_audio::{load_mono, AudioInput};
use voxide_nn::kernels::bandwidth::{measured_retention, streaming_reads, ReadProbe};
use voxide_nn::kernels::fma_peak::{amx_bf16_gflops, bf16_dots, measure_fma_gflops};
use voxide_nn::kernels::gemv::{measured_read_aheads, FEWER_ROWS_PER_PASS, ROWS_PER_PASS};
use voxide_nn::kernels::machine::machine;
use voxide_nn::kernels::simd::Isa;
use voxide_nn::kernels::small_m::{amx_bf16_tiles, amx_int8_tiles};
use voxide_runtime::{load_transcriber, resolve_model, TranscribeRequest};
use windows::{StepWindows, STT_PARTS, TTS_PARTS, WINDOW};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Audio files to time (or use --suite).
    files: Vec<String>,
    /// Model: a checkpoint directory or hub id.
    #[arg(short, long, env = "VOXIDE_MODEL")]
    model: String,
    /// A named suite of corpus files: jfk, mini (5, 45 and 60 s clips), full (the long-form files).
    #[arg(long)]
    suite: Option<String>,
    /// The shared corpus (for --suite).
    #[arg(long, default_value = "../shared/corpus")]
    corpus: PathBuf,
    /// Measured runs per input.
    #[arg(short = 'n', long, default_value_t = 3)]
    repeats: usize,
    /// Unmeasured runs per input first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// CPU threads (default: all cores).
    #[arg(short, long)]
    threads: Option<usize>,
    /// Weight precision: auto (the checkpoint's), f32, f16, bf16, int8 or a ggml block type
    /// (q8_0, q5_1, q4_k, ...), as `voxide transcribe --precision`.
    #[arg(long, default_value = "auto", value_parser = crate::transcribe::PRECISIONS)]
    precision: String,
    /// Decode exactly N tokens per 30 s window, end-of-text ignored (random weights never
    /// emit it; fixed counts make timings comparable).
    #[arg(long, value_name = "N")]
    fixed_steps: Option<usize>,
    /// Language (detection costs an extra encoder pass).
    #[arg(short, long, default_value = "en")]
    language: String,
    /// Decode text only (as whisper.cpp's `no_timestamps`): every window runs its full steps.
    #[arg(long)]
    without_timestamps: bool,
    /// Do not prompt each window with the previous text (whisper.cpp's `no_context`).
    #[arg(long)]
    no_condition_on_previous_text: bool,
    /// Whisper: also time every word, and report what the alignment adds per window.
    #[arg(long)]
    word_timestamps: bool,
    /// Write the report as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Save the report as a baseline for --compare.
    #[arg(long, value_name = "FILE")]
    save_baseline: Option<PathBuf>,
    /// Compare with a baseline: a component more than 20 % slower fails (exit 1), a total more
    /// than 10 % slower warns.
    #[arg(long, value_name = "FILE")]
    compare: Option<PathBuf>,
    /// Time text-to-speech (Qwen3-TTS) on short, medium and long texts instead of
    /// transcriptions.
    #[arg(long)]
    tts: bool,
    /// Write a Chrome trace (open in Perfetto or chrome://tracing).
    #[arg(long, value_name = "FILE.json")]
    trace: Option<PathBuf>,
}

/// Peak resident memory since the last reset, MB (Linux; 0 elsewhere).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Restarts the peak-RSS counter (Linux ≥ 4.0), so each input reports its own peak.
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub fn run(args: BenchArgs) -> Result<()> {
    set_threads(args.threads)?;
    if args.repeats == 0 || args.fixed_steps == Some(0) {
        bail!("--repeats and --fixed-steps must be at least 1");
    }
    if args.tts && (args.compare.is_some() || args.save_baseline.is_some()) {
        bail!("--compare and --save-baseline are for speech-to-text benches, not --tts");
    }
    // Where the results go: writable before the run, not after it.
    for path in [&args.json, &args.save_baseline, &args.trace]
        .into_iter()
        .flatten()
    {
        check_writable(path)?;
    }
    // The bandwidth probe, made once the model has loaded, shared with the layer that probes
    // between decoding steps.
    let shared_probe = SharedProbe::default();
    let (layer, windows) =
        StepWindows::new(if args.tts { TTS_PARTS } else { STT_PARTS }, WINDOW, {
            let shared = shared_probe.clone();
            move || shared.fastest_gbps()
        });
    let _trace = install_subscriber(args.trace.as_deref(), layer)?;
    if args.tts {
        return tts::run(&args, &shared_probe, &windows);
    }
    let mut inputs: Vec<BenchInput> = args.files.iter().map(|f| BenchInput::file(f)).collect();
    if let Some(name) = &args.suite {
        inputs.extend(suite(name, &args.corpus)?);
    }
    if inputs.is_empty() {
        bail!(
            "nothing to benchmark: give audio files or --suite ({})",
            SUITES.join(", ")
        );
    }
    // Every input is needed: checked before the model loads.
    for input in &inputs {
        AudioInput::File(input.path.clone()).check_readable()?;
    }
    let baseline = match &args.compare {
        Some(path) => {
            let baseline = read_report(path)?;
            check_comparable(&baseline, &args, &inputs)
                .map_err(|why| anyhow!("--compare {}: {why}", path.display()))?;
            Some(baseline)
        }
        None => None,
    };

    let clock = Instant::now();
    let model = {
        let _span = tracing::info_span!("load").entered();
        let source = resolve_model(&args.model)?;
        load_transcriber(
            &source,
            &candle_core::Device::Cpu,
            precision(&args.precision),
        )?
    };
    crate::release_freed_memory();
    let load_ms = clock.elapsed().as_secs_f64() * 1e3;
    let request = TranscribeRequest {
        language: Some(args.language.clone()),
        max_new_tokens: args.fixed_steps,
        ignore_eot: args.fixed_steps.is_some(),
        timestamps: !args.without_timestamps,
        word_timestamps: args.word_timestamps,
        condition_on_previous_text: !args.no_condition_on_previous_text,
        ..Default::default()
    };
    let rate = model.sample_rate();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // The machine's limits, measured with the bench's threads: read bandwidth (the floor of a
    // decoder step: its bytes over the bandwidth, probed again around the runs, since a shared
    // machine's bandwidth moves with its neighbours) and the FMA peak.
    let probe = shared_probe.make(threads);
    let fma = FmaRates::measure(threads);
    let step_bytes = model.decoder_step_bytes();
    let mut bandwidth = Vec::new();
    // Each measured run's steps against the probes around it, and its windows against the
    // probes taken while it decoded.
    let mut run_floors = Vec::new();
    let mut window_floors = Vec::new();
    let mut files = Vec::new();
    for input in &inputs {
        let samples = {
            let _span = tracing::info_span!("decode_audio", file = %input.name).entered();
            input.cut(
                load_mono(&AudioInput::File(input.path.clone()), rate)?,
                rate,
            )?
        };
        let audio_s = samples.len() as f64 / rate as f64;
        reset_peak_rss();
        let mut runs = Vec::new();
        for i in 0..args.warmup + args.repeats {
            // Probed just before the first measured run and after each: the floor of the runs.
            if i == args.warmup && step_bytes.is_some() {
                bandwidth.push(probe.fastest_gbps(3));
            }
            let _span = tracing::info_span!("transcribe", file = %input.name, run = i).entered();
            if let (true, Some(&before)) = (i >= args.warmup, bandwidth.last()) {
                windows.start_run(before);
            }
            let clock = Instant::now();
            let (_, t) = model.transcribe(&samples, &request, &mut |_| true)?;
            let mut run = Run {
                wall_ms: clock.elapsed().as_secs_f64() * 1e3,
                mel_ms: t.mel_ms,
                encoder_ms: t.encoder_ms,
                prefill_ms: t.prefill_ms,
                steps: t.steps,
                steps_ms: t.steps_ms,
                kv_bytes: t.steps_kv_bytes,
                first_token_ms: t.first_token_ms.unwrap_or(0.0),
                alignment_ms: t.alignment_ms,
                alignments: t.alignments,
            };
            if i >= args.warmup {
                if let Some(bytes) = step_bytes {
                    let after = probe.fastest_gbps(3);
                    bandwidth.push(after);
                    let in_run = windows.finish_run(after);
                    run.wall_ms -= in_run.probe_ms;
                    if run.steps > 0 {
                        let steps = run.steps as f64;
                        // A window's K/V: the run's mean per step.
                        let reads =
                            StepReads::new(bytes, run.kv_bytes as f64 / steps, cache_gbps());
                        run_floors.push(RunFloor::between_last_probes(
                            run.steps_ms / steps,
                            reads,
                            &bandwidth,
                        ));
                        window_floors.extend(
                            in_run
                                .windows
                                .iter()
                                .filter_map(|w| Some(w.floor(w.ms_per_step(0)?, reads))),
                        );
                    }
                }
                runs.push(run);
            }
        }
        // The probe's buffers stay resident through the runs: not the model's memory.
        let probe_mb = probe.bytes() as f64 / (1 << 20) as f64;
        files.push(FileReport::new(
            &input.name,
            audio_s,
            &runs,
            peak_rss_mb() - probe_mb,
        ));
    }
    if bandwidth.is_empty() {
        bandwidth.push(probe.fastest_gbps(3));
    }
    let read_gbps = Stat::of(&bandwidth).max;
    let mut totals = Totals::of(&files);
    if let Some(bytes) = step_bytes {
        totals.set_floor(bytes, read_gbps, cache_gbps());
        if let Some(floor) = &mut totals.floor {
            floor.runs = run_floors;
            floor.windows = window_floors;
        }
    }
    let machine = machine_report(&probe, &bandwidth, fma.max(FmaRates::measure(threads)));
    drop(probe);
    shared_probe.release();
    let report = Report {
        model: args.model.clone(),
        threads,
        repeats: args.repeats,
        warmup: args.warmup,
        fixed_steps: args.fixed_steps,
        load_ms,
        machine,
        files,
        totals,
    };
    print_table(&report);
    let json = serde_json::to_string_pretty(&report)? + "\n";
    for path in [&args.json, &args.save_baseline].into_iter().flatten() {
        std::fs::write(path, &json).map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(baseline) = baseline {
        match compare(&report.totals, &baseline.totals) {
            Verdict::Pass => {
                say!("compare: PASS (no component > 20 % slower, total within 10 %)")
            }
            Verdict::Warn(why) => say!("compare: WARN: {}", why.join("; ")),
            Verdict::Fail(why) => bail!("compare: FAIL: {}", why.join("; ")),
        }
    }
    Ok(())
}

/// f32 FMA peaks in GFLOP/s, best of 5 passes: with the bench's threads (the floor of
/// compute-bound work) and on one thread (what each core should add).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FmaRates {
    threads: f64,
    one_core: f64,
}

impl FmaRates {
    pub(crate) fn measure(threads: usize) -> Self {
        Self {
            threads: measure_fma_gflops(threads, 5),
            one_core: measure_fma_gflops(1, 5),
        }
    }

    /// Peaks: probed again after the runs and the larger kept (a neighbour that took a core
    /// during one probe only lowers it).
    pub(crate) fn max(self, other: Self) -> Self {
        Self {
            threads: self.threads.max(other.threads),
            one_core: self.one_core.max(other.one_core),
        }
    }
}

/// The machine and its limits measured with the bench's threads; `bandwidth`: the fastest pass
/// of each probe during the command (the floor uses the fastest).
fn machine_report(probe: &ReadProbe, bandwidth: &[f64], fma: FmaRates) -> MachineReport {
    let m = machine();
    MachineReport {
        cpu_model: m.cpu_model.clone(),
        cores: m.cores,
        isa: format!("{:?}", Isa::detect()),
        l1d_bytes: m.caches.l1d_per_core,
        l2_bytes: m.caches.l2_per_core,
        l3_bytes: m.caches.l3,
        cache_budget_bytes: m.cache_budget(),
        read_gbps: Stat::of(bandwidth).max,
        read_probes_gbps: bandwidth.to_vec(),
        read_variants: probe
            .variants()
            .iter()
            .map(|(v, g)| (v.to_string(), *g))
            .collect(),
        fma_gflops: fma.threads,
        fma_one_core_gflops: fma.one_core,
        physical_cores: m.physical_cores,
        bf16_dots: bf16_dots().map(|d| Bf16DotsReport {
            f32_gflops: d.f32_gflops,
            bf16_gflops: d.bf16_gflops,
            taken: d.pay(),
        }),
        amx_bf16: amx_bf16_tiles(),
        amx_bf16_gflops: amx_bf16_gflops(),
        amx_int8: amx_int8_tiles(),
        streaming: streaming_reads().map(|r| StreamingReport {
            nontemporal_gbps: r.nontemporal_gbps,
            keep_gbps: r.keep_gbps,
            nontemporal: r.nontemporal_pays(),
            read_ahead: measured_read_aheads()
                .into_iter()
                .map(|(weights, ahead)| {
                    let at = |rows| {
                        ahead
                            .measured
                            .iter()
                            .filter(|m| m.1 == rows)
                            .map(|m| (m.0, m.2))
                            .collect()
                    };
                    ReadAheadReport {
                        weights: weights.to_string(),
                        bytes: ahead.bytes,
                        rows_per_pass: ahead.rows_per_pass,
                        gbps: at(ROWS_PER_PASS),
                        gbps_fewer_rows: at(FEWER_ROWS_PER_PASS),
                    }
                })
                .collect(),
            retention: measured_retention().map(|r| RetentionReport {
                kept_bytes: r.kept_bytes,
                streamed_bytes: r.streamed_bytes,
                kept_gbps: r.kept_gbps,
                cold_gbps: r.cold_gbps,
                gain: r.gain,
                holds: r.holds(),
            }),
        }),
    }
}

/// The rate weights that a plan keeps cached are read at: the cached set re-read at load after
/// a stream went past it, where a plan kept any (`None`: not measured, or the machine did not
/// keep them and the plans stream every matrix).
pub(crate) fn cache_gbps() -> Option<f64> {
    measured_retention()
        .filter(|r| r.holds())
        .map(|r| r.kept_gbps)
}

fn read_report(path: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("cannot read baseline {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow!("{} is not a voxide bench report: {e}", path.display()))
}

/// That a file can be written at `path` (the directory exists, the path is no directory), found
/// by opening it for writing; a file made by the check is removed again.
fn check_writable(path: &Path) -> Result<()> {
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// A baseline is compared only with a bench of the same model, inputs and fixed steps: a
/// verdict across them would compare different work.
fn check_comparable(
    baseline: &Report,
    args: &BenchArgs,
    inputs: &[BenchInput],
) -> std::result::Result<(), String> {
    if baseline.model != args.model {
        return Err(format!(
            "the baseline ran model {}, this bench {}",
            baseline.model, args.model
        ));
    }
    let names = |v: Vec<&str>| v.join(", ");
    let (was, now) = (
        names(baseline.files.iter().map(|f| f.name.as_str()).collect()),
        names(inputs.iter().map(|i| i.name.as_str()).collect()),
    );
    if was != now {
        return Err(format!("the baseline ran {was}, this bench {now}"));
    }
    if baseline.fixed_steps != args.fixed_steps {
        return Err(format!(
            "the baseline ran with fixed steps {:?}, this bench {:?}",
            baseline.fixed_steps, args.fixed_steps
        ));
    }
    Ok(())
}

/// Installs the subscriber of a bench: the layer that probes between decoding steps (on the
/// spans it times only) and, for `--trace`, a Chrome-trace writer, whose guard writes the file
/// when dropped. Without `--trace`, a subscriber installed before (a second bench in one
/// process) leaves the runs without windows.
fn install_subscriber(
    trace: Option<&Path>,
    windows: StepWindows,
) -> Result<Option<tracing_chrome::FlushGuard>> {
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    let names = windows.names();
    let windows = windows.with_filter(filter_fn(move |meta| {
        StepWindows::tracks(names, meta.name())
    }));
    let (chrome, guard) = match trace {
        Some(path) => {
            let (layer, guard) = tracing_chrome::ChromeLayerBuilder::new()
                .file(path)
                .include_args(true)
                .build();
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    let installed = tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(windows).with(chrome),
    );
    if let (Err(e), Some(_)) = (installed, trace) {
        bail!("cannot install the trace writer: {e}");
    }
    Ok(guard)
}

/// The bench's bandwidth probe, made after the model loads, and shared with the
/// [`StepWindows`] layer, which reads 0 GB/s (no window's verdict) while there is none.
#[derive(Clone, Default)]
struct SharedProbe(Arc<Mutex<Option<Arc<ReadProbe>>>>);

impl SharedProbe {
    /// Makes the probe with `threads` threads ([`ReadProbe::for_machine`]).
    fn make(&self, threads: usize) -> Arc<ReadProbe> {
        let probe = Arc::new(ReadProbe::for_machine(threads));
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(probe.clone());
        probe
    }

    /// The fastest of three passes, as around the runs.
    fn fastest_gbps(&self) -> f64 {
        let probe = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        probe.map_or(0.0, |p| p.fastest_gbps(3))
    }

    /// Drops the layer's reference, so that the probe's buffers are freed with the bench's.
    fn release(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

/// How a floor counts the weights a plan keeps cached, for its line ("" where none count so).
fn cached_part(cached_bytes: usize, cache_gbps: f64) -> String {
    if cached_bytes == 0 {
        return String::new();
    }
    format!(
        ", the {:.3} GB kept cached at {:.1} GB/s (their re-read at load; the memory's rate where faster)",
        cached_bytes as f64 / 1e9,
        cache_gbps
    )
}

/// The machine line and every probe variant.
fn print_machine(m: &MachineReport, threads: usize) {
    say!(
        "machine: {} | {} cores | {} | L1d {} KB, L2 {} KB per core, L3 {} MB (step cache budget {} MB) | f32 FMA peak {:.0} GFLOP/s (one core {:.0})",
        m.cpu_model,
        m.cores,
        m.isa,
        m.l1d_bytes >> 10,
        m.l2_bytes >> 10,
        m.l3_bytes >> 20,
        m.cache_budget_bytes >> 20,
        m.fma_gflops,
        m.fma_one_core_gflops
    );
    if let Some(scaling) = m.cores_held(threads) {
        say!(
            "warning: the {threads} threads on {} physical cores multiplied at {:.2}x one \
             core's FMA rate per core: another process held cores while this command measured, \
             so its figures are not this machine's own",
            m.fma_cores(threads),
            scaling
        );
    }
    if let Some(d) = &m.bf16_dots {
        say!(
            "bf16 dot products on one core: {:.0} GFLOP/s against f32 FMAs' {:.0} ({:.2}x): {}",
            d.bf16_gflops,
            d.f32_gflops,
            d.bf16_gflops / d.f32_gflops,
            match (d.taken, m.amx_bf16) {
                (true, _) => "taken for bf16 products of many rows and the decoders' GEMVs",
                (false, true) => {
                    "not taken (the attention of many rows in f32, GEMVs widen bf16 to f32)"
                }
                (false, false) => "not taken (f32 products instead, GEMVs widen bf16 to f32)",
            }
        );
    }
    if m.amx_bf16 {
        say!(
            "AMX tiles{}: bf16 products of many rows (encoders, prompts) on tdpbf16ps; f16 ones \
             (Whisper's windows) in exact bf16 parts, x to 16 bits; the codec's convolutions by \
             bf16 weights at f32 precision, x in three bf16 parts{}",
            m.amx_bf16_gflops
                .map(|g| format!(" (tdpbf16ps {g:.0} GFLOP/s on one core)"))
                .unwrap_or_default(),
            if m.amx_int8 {
                "; int8 ones on tdpbssd, the VNNI kernel's bits"
            } else {
                ""
            }
        );
    }
    let slowest = m
        .read_probes_gbps
        .iter()
        .copied()
        .fold(m.read_gbps, f64::min);
    say!(
        "read bandwidth, {threads} threads: {:.1} GB/s (fastest probe variant, fastest pass of the probes before and after the runs; the slowest of those probes read {slowest:.1}); variants at start:",
        m.read_gbps
    );
    for (v, gbps) in &m.read_variants {
        say!("  {gbps:6.1} GB/s  {v}");
    }
    if let Some(s) = &m.streaming {
        say!(
            "streamed matrices read with {} prefetches (from memory: non-temporal {:.1} GB/s, plain {:.1} GB/s)",
            if s.nontemporal { "non-temporal" } else { "plain" },
            s.nontemporal_gbps,
            s.keep_gbps
        );
        for ahead in &s.read_ahead {
            let tried = |gbps: &[(usize, f64)]| {
                gbps.iter()
                    .map(|(bytes, gbps)| format!("{} {gbps:.1}", read_ahead_name(*bytes)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mut tried_all = tried(&ahead.gbps);
            if !ahead.gbps_fewer_rows.is_empty() {
                tried_all = format!(
                    "{ROWS_PER_PASS} rows a pass: {tried_all}; {FEWER_ROWS_PER_PASS} rows: {}",
                    tried(&ahead.gbps_fewer_rows)
                );
            }
            say!(
                "  {}: {}, {} rows a pass (the GEMV from memory on one core, GB/s: {tried_all})",
                ahead.weights,
                match ahead.bytes {
                    0 => "no software prefetch".to_string(),
                    b => format!("{} ahead of the loads", read_ahead_name(b)),
                },
                ahead.rows_per_pass,
            );
        }
        if let Some(r) = &s.retention {
            say!(
                "cached weights {} the streamed ones: a {:.0} MB set re-read at {:.1} GB/s after {:.0} MB streamed past it, {:.1} GB/s from memory ({:.2}x){}",
                if r.holds { "survive" } else { "do not survive" },
                r.kept_bytes as f64 / 1e6,
                r.kept_gbps,
                r.streamed_bytes as f64 / 1e6,
                r.cold_gbps,
                r.gain,
                if r.holds { "" } else { ": every matrix streamed" }
            );
        }
    }
}

/// A streamed read distance as the bench prints it (0: no software prefetch).
fn read_ahead_name(bytes: usize) -> String {
    match bytes {
        0 => "none".to_string(),
        b => format!("{} KB", b / 1024),
    }
}

fn print_table(r: &Report) {
    say!(
        "model {} | {} threads | {} runs after {} warm-up | fixed steps {} | load {:.0} ms",
        r.model,
        r.threads,
        r.repeats,
        r.warmup,
        r.fixed_steps.map_or("no".into(), |n| n.to_string()),
        r.load_ms
    );
    say!(
        "{:<28} {:>7} {:>9} {:>6} {:>7} {:>8} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8}",
        "input",
        "audio s",
        "wall ms",
        "RTF",
        "mel ms",
        "enc ms",
        "prefill",
        "steps",
        "ms/step",
        "tok/s",
        "1st tok",
        "RSS MB"
    );
    for f in &r.files {
        say!(
            "{:<28} {:>7.1} {:>9.0} {:>6.3} {:>7.1} {:>8.0} {:>8.1} {:>6.0} {:>8.2} {:>8.0} {:>8.0} {:>8.0}",
            f.name, f.audio_s, f.wall_ms.median, f.rtf.median, f.mel_ms.median, f.encoder_ms.median,
            f.prefill_ms.median, f.steps, f.ms_per_step.median, f.tokens_per_s.median,
            f.first_token_ms.median, f.peak_rss_mb
        );
        say!(
            "{:<28} {:>7} {:>9} {:>6} {:>7} {:>8} {:>8} {:>6} {:>8}",
            "  (min..max)",
            "",
            format!("{:.0}..{:.0}", f.wall_ms.min, f.wall_ms.max),
            "",
            "",
            format!("{:.0}..{:.0}", f.encoder_ms.min, f.encoder_ms.max),
            "",
            "",
            format!("{:.2}..{:.2}", f.ms_per_step.min, f.ms_per_step.max)
        );
    }
    for f in r.files.iter().filter(|f| f.alignments > 0.0) {
        let decode_ms = f.prefill_ms.median + f.steps_ms.median;
        say!(
            "{}: word timestamps add {:.1} ms per window ({:.0} windows): {:.1} % of the windows' decoding (prefill + steps {:.0} ms), {:.1} % with the encoder",
            f.name,
            f.alignment_ms.median / f.alignments,
            f.alignments,
            100.0 * f.alignment_ms.median / decode_ms.max(1e-9),
            decode_ms,
            100.0 * f.alignment_ms.median / (decode_ms + f.encoder_ms.median).max(1e-9),
        );
    }
    let t = &r.totals;
    let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    say!(
        "total: audio {:.1} s | wall {:.0} ms | RTF {:.3} | encoder {:.0} ms ({:.0} ms per audio s) | weighted ms/step {:.2} | short-clip ms/step {} | long-clip ms/step {} | peak RSS {:.0} MB",
        t.audio_s, t.wall_ms, t.rtf, t.encoder_ms, t.encoder_ms / t.audio_s.max(1e-9), t.weighted_ms_per_step, opt(t.short_ms_per_step), opt(t.long_ms_per_step), t.peak_rss_mb
    );
    print_machine(&r.machine, r.threads);
    if let Some(f) = &t.floor {
        let budget = voxide_nn::kernels::machine::machine().cache_budget();
        let verdict = match f.ratio {
            Some(ratio) => format!("{ratio:.2}x the floor"),
            // A step that stays in the caches between tokens is not bounded by DRAM.
            None if f.step_bytes <= budget => format!(
                "below the DRAM floor: the step fits the caches ({:.0} MB of budget), no ratio reported",
                budget as f64 / 1e6
            ),
            None => "FASTER THAN THE FLOOR: a measurement error (the probe under-reads or the step's bytes are wrong), no ratio reported".into(),
        };
        let kv = if f.kv_bytes > 0 {
            format!(" of weights + {:.3} GB of K/V", f.kv_bytes as f64 / 1e9)
        } else {
            String::new()
        };
        let cached = cached_part(f.cached_bytes, f.cache_gbps);
        say!(
            "decoder floor: a step reads {:.3} GB{kv}; at {:.1} GB/s{cached} -> {:.1} ms; measured {:.1} ms/step = {verdict}",
            f.step_bytes as f64 / 1e9, f.read_gbps, f.floor_ms, t.weighted_ms_per_step
        );
        if !f.runs.is_empty() {
            say!("{}", run_floors_line(&f.runs));
        }
        if let Some(line) = windows_line(&f.windows) {
            say!("{line}");
        }
    }
}
