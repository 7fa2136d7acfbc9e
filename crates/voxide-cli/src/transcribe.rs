//! `voxide transcribe`: files (or stdin) in, text, JSON or subtitles out.

use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use voxide_audio::{load_mono, AudioInput};
use voxide_models::silero_vad::{SileroVad, SAMPLE_RATE};
use voxide_models::whisper::Suppress;
use voxide_models::Progress;
use voxide_runtime::{
    load_transcriber, render_with, request_vad_params, resolve_model, transcribe_speech, txt_lines,
    OutputFormat, Segment, SubtitleOptions, Timings, TranscribeRequest, Transcriber, Transcript,
    WeightFormat,
};

/// Inputs longer than this get a progress bar.
const PROGRESS_MIN_SECONDS: f64 = 30.0;

#[derive(Args, Debug)]
pub struct TranscribeArgs {
    /// Audio files (WAV, FLAC, MP3, Ogg Vorbis or Opus, M4A/AAC/ALAC, WebM, MP2, AIFF, CAF);
    /// `-` reads standard input.
    #[arg(required = true)]
    files: Vec<String>,
    /// Model: a local Hugging Face checkpoint directory, or a hub id such as openai/whisper-tiny.
    #[arg(short, long, env = "VOXIDE_MODEL")]
    model: String,
    /// Spoken language: a code (en, de, …), an English name, or `auto` to detect it.
    #[arg(short, long, default_value = "auto")]
    language: String,
    /// `transcribe`, or `translate` into English (Voxtral Mini 3B: into --language, default
    /// English, through its chat prompt).
    #[arg(long, default_value = "transcribe", value_parser = ["transcribe", "translate"])]
    task: String,
    /// Decode text only, without segment timestamps.
    #[arg(long)]
    without_timestamps: bool,
    /// Whisper: only detect the spoken language, from the first 30 s (whisper.cpp's
    /// `--detect-language`): each file's language code and probability; `-f json` gives every
    /// language's, the most likely first.
    #[arg(long, conflicts_with_all = ["output_dir", "vad", "clip_timestamps"])]
    detect_language: bool,
    /// Whisper: time every word (openai-whisper's `--word_timestamps`): verbose_json gets
    /// `words`, subtitles can break lines and highlight words; windows seek to the last word.
    #[arg(long)]
    word_timestamps: bool,
    /// With --word-timestamps: punctuation merged into the following word.
    #[arg(long, value_name = "CHARS", requires = "word_timestamps")]
    prepend_punctuations: Option<String>,
    /// With --word-timestamps: punctuation merged into the preceding word.
    #[arg(long, value_name = "CHARS", requires = "word_timestamps")]
    append_punctuations: Option<String>,
    /// Subtitles: at most N characters per line (needs --word-timestamps).
    #[arg(long, value_name = "N", requires = "word_timestamps")]
    max_line_width: Option<usize>,
    /// Subtitles: at most N lines per cue (needs --word-timestamps).
    #[arg(long, value_name = "N", requires = "word_timestamps")]
    max_line_count: Option<usize>,
    /// Subtitles: at most N words per line (needs --word-timestamps; ignored with
    /// --max-line-width, as openai-whisper).
    #[arg(long, value_name = "N", requires = "word_timestamps")]
    max_words_per_line: Option<usize>,
    /// Subtitles: underline each word as it is spoken (needs --word-timestamps).
    #[arg(long, requires = "word_timestamps")]
    highlight_words: bool,
    /// Transcribe only the speech Silero VAD finds (faster-whisper's `vad_filter`, its
    /// defaults: silences under 2 s kept, 400 ms padding); times stay those of the file.
    /// Voxtral Mini 3B, which gives no times, transcribes each stretch of speech of up to
    /// 30 s alone: a timed segment each.
    #[arg(long)]
    vad: bool,
    /// Whisper, with --vad: cut the speech into chunks of up to 30 s and transcribe each on
    /// its own, N chunks at a time, every decoder step running them together
    /// (faster-whisper's `BatchedInferencePipeline` and its VAD options: 30 s chunks, 160 ms
    /// silences); with --clip-timestamps, each stretch a chunk (the first 30 s of it heard).
    /// Faster on long files; no text is carried from one chunk into the next. Voxtral Mini 3B
    /// decodes its stretches (of --vad or --clip-timestamps) N at a time, each as alone.
    /// Several files without either: N files at a time, their windows (Whisper) or decoder
    /// steps (the Voxtrals, at most 8 a step) decoded together, each transcript the same as
    /// alone (printed in the files' order).
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// Silero VAD weights for --vad (ggml or ONNX; default: $VOXIDE_VAD_MODEL, else
    /// ../shared/assets/silero-vad's where it exists).
    #[arg(long, value_name = "PATH", requires = "vad")]
    vad_model: Option<PathBuf>,
    /// Initial prompt: spelling, vocabulary or style to follow.
    #[arg(long)]
    prompt: Option<String>,
    /// Whisper: put --prompt at the head of every 30 s window's prompt, not only the first's
    /// (openai-whisper's `--carry_initial_prompt`).
    #[arg(long, requires = "prompt")]
    carry_initial_prompt: bool,
    /// Transcribe only these stretches, in seconds: start,end,start,end,… (the last stretch of
    /// an odd count runs to the end: `60` is from the first minute on; openai-whisper's
    /// `--clip_timestamps`). Times stay those of the file. Whisper carries its text from one
    /// stretch into the next; Voxtral transcribes each alone.
    #[arg(long, value_name = "S,S,…", conflicts_with = "vad")]
    clip_timestamps: Option<ClipTimestamps>,
    /// Whisper, with --word-timestamps: skip silences longer than S seconds before and after
    /// segments that look like hallucinations (openai-whisper's
    /// `--hallucination_silence_threshold`).
    #[arg(long, value_name = "S", requires = "word_timestamps")]
    hallucination_silence_threshold: Option<f64>,
    /// Whisper: token ids never sampled, comma-separated: -1 is the non-speech symbol set (the
    /// default), an empty list forbids none, not even the special tokens (openai-whisper's
    /// `--suppress_tokens`).
    #[arg(
        long,
        value_name = "IDS",
        default_value = "-1",
        allow_hyphen_values = true
    )]
    suppress_tokens: SuppressTokens,
    /// Beam search with N beams at temperature 0 (default: greedy).
    #[arg(long, value_name = "N")]
    beam_size: Option<usize>,
    /// Candidates sampled at temperature > 0 (openai-whisper's CLI uses 5).
    #[arg(long, value_name = "N")]
    best_of: Option<usize>,
    /// Beam-search patience.
    #[arg(long)]
    patience: Option<f32>,
    /// Length penalty α for ranking candidates (default: divide by length).
    #[arg(long)]
    length_penalty: Option<f32>,
    /// First decoding temperature.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Temperature fallback step: retry a window at +INC up to 1.0 when its output is too
    /// repetitive or improbable. 0 (the default) keeps decoding deterministic; openai-whisper and
    /// whisper.cpp use 0.2.
    #[arg(long, value_name = "INC", default_value_t = 0.0)]
    temperature_increment: f32,
    /// Fallback when the text's compression ratio is above this.
    #[arg(long, default_value_t = 2.4)]
    compression_ratio_threshold: f32,
    /// Fallback when the mean token log-probability is below this.
    #[arg(long, default_value_t = -1.0, allow_hyphen_values = true)]
    logprob_threshold: f32,
    /// Skip a window as silence when the no-speech probability is above this (and the
    /// log-probability below its threshold).
    #[arg(long, default_value_t = 0.6)]
    no_speech_threshold: f32,
    /// Do not prompt each window with the text of the previous ones.
    #[arg(long)]
    no_condition_on_previous_text: bool,
    /// At most N tokens per 30 s window (Voxtral Mini 3B: in all; default 64 + 10 per second).
    #[arg(long, value_name = "N")]
    max_new_tokens: Option<usize>,
    /// Seed for sampling at temperature > 0.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output format: txt, json, verbose_json, srt, vtt, tsv (openai-whisper's: start and end
    /// in milliseconds, text), lrc and csv (whisper.cpp's `-olrc`, `-ocsv`), or all (openai-whisper's set: txt, vtt, srt, tsv and json, the
    /// verbose object; into --output-dir, default the current directory).
    #[arg(short, long, default_value = "txt")]
    format: Formats,
    /// Write each transcript here (the audio file's name with the format's extension)
    /// instead of printing to stdout.
    #[arg(short, long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// CPU threads (default: all cores).
    #[arg(short, long)]
    threads: Option<usize>,
    /// Weight precision: auto (the checkpoint's), f32, f16, bf16, int8 (per-row scales), or a
    /// ggml block type (q8_0, q5_1, q4_k, ...). Whisper: every matrix; Voxtral: the decoder's.
    /// Quantized types are applied at load.
    #[arg(long, default_value = "auto", value_parser = crate::transcribe::PRECISIONS)]
    precision: String,
    /// Streaming models (Voxtral Realtime): transcription delay in ms, 80 to 2400 in steps
    /// of 80 (default: the model's, 480).
    #[arg(long)]
    delay_ms: Option<u32>,
    /// Voxtral: KV-cache precision: auto (f16 beside bf16, f16 or quantized weights, f32 beside
    /// f32 ones), f32, f16 or bf16.
    #[arg(long, default_value = "auto", value_parser = crate::transcribe::KV_PRECISIONS)]
    kv_precision: String,
    /// Print timings (mel, encoder, decoder ms/step, real-time factor) to stderr.
    #[arg(short, long)]
    verbose: bool,
}

/// `--format`: one format, or every one openai-whisper's `--output_format all` writes.
#[derive(Clone, Copy, Debug)]
enum Formats {
    One(OutputFormat),
    All,
}

impl std::str::FromStr for Formats {
    type Err = voxide_runtime::Error;
    fn from_str(s: &str) -> voxide_runtime::Result<Self> {
        match s {
            "all" => Ok(Formats::All),
            one => one.parse().map(Formats::One),
        }
    }
}

/// `--clip-timestamps`: comma-separated seconds, as openai-whisper's `--clip_timestamps`.
#[derive(Clone, Debug)]
struct ClipTimestamps(Vec<f64>);

impl std::str::FromStr for ClipTimestamps {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .filter(|_| !s.is_empty())
            .map(|t| {
                t.trim()
                    .parse()
                    .map_err(|_| format!("`{t}` is not a number of seconds"))
            })
            .collect::<Result<_, _>>()
            .map(ClipTimestamps)
    }
}

/// `--suppress-tokens`: openai-whisper's `--suppress_tokens` list.
#[derive(Clone, Debug)]
struct SuppressTokens(Option<Suppress>);

impl std::str::FromStr for SuppressTokens {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Suppress::parse(s).map(SuppressTokens)
    }
}

impl Formats {
    fn list(self) -> Vec<OutputFormat> {
        match self {
            Formats::One(format) => vec![format],
            // openai-whisper's writers, in its order; its json is the whole result.
            Formats::All => vec![
                OutputFormat::Txt,
                OutputFormat::Vtt,
                OutputFormat::Srt,
                OutputFormat::Tsv,
                OutputFormat::VerboseJson,
            ],
        }
    }
}

impl TranscribeArgs {
    /// Where transcripts are written: `--output-dir`, or for `--format all` (several files a
    /// file) the current directory, as openai-whisper's; `None`: standard output.
    fn output_dir(&self) -> Option<PathBuf> {
        match (&self.output_dir, self.format) {
            (Some(dir), _) => Some(dir.clone()),
            (None, Formats::All) => Some(PathBuf::from(".")),
            (None, Formats::One(_)) => None,
        }
    }

    fn request(&self) -> TranscribeRequest {
        TranscribeRequest {
            language: Some(self.language.clone()),
            translate: self.task == "translate",
            timestamps: !self.without_timestamps,
            word_timestamps: self.word_timestamps,
            prepend_punctuations: self.prepend_punctuations.clone(),
            append_punctuations: self.append_punctuations.clone(),
            prompt: self.prompt.clone(),
            carry_initial_prompt: self.carry_initial_prompt,
            clip_timestamps: self
                .clip_timestamps
                .as_ref()
                .map_or_else(Vec::new, |c| c.0.clone()),
            hallucination_silence_threshold: self.hallucination_silence_threshold,
            suppress_tokens: self.suppress_tokens.0.clone(),
            beam_size: self.beam_size,
            best_of: self.best_of,
            patience: self.patience,
            length_penalty: self.length_penalty,
            temperature: self.temperature,
            temperature_increment: self.temperature_increment,
            compression_ratio_threshold: Some(self.compression_ratio_threshold),
            logprob_threshold: Some(self.logprob_threshold),
            no_speech_threshold: Some(self.no_speech_threshold),
            condition_on_previous_text: !self.no_condition_on_previous_text,
            max_new_tokens: self.max_new_tokens,
            seed: self.seed,
            ignore_eot: false,
            delay_ms: self.delay_ms,
            kv_dtype: kv_precision(&self.kv_precision),
            batch_size: self.batch_size,
        }
    }

    fn subtitles(&self) -> SubtitleOptions {
        SubtitleOptions {
            max_line_width: self.max_line_width,
            max_line_count: self.max_line_count,
            max_words_per_line: self.max_words_per_line,
            highlight_words: self.highlight_words,
        }
    }
}

/// The `--precision` values: the checkpoint's, float types, int8 per row, ggml block types.
pub const PRECISIONS: [&str; 15] = [
    "auto", "f32", "f16", "bf16", "int8", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "q6_k", "q5_k",
    "q4_k", "q3_k", "q2_k",
];

/// The `--precision` value (`None`: the checkpoint's).
pub fn precision(value: &str) -> Option<WeightFormat> {
    WeightFormat::from_name(value)
}

/// The values `--kv-precision` takes.
pub const KV_PRECISIONS: [&str; 4] = ["auto", "f32", "f16", "bf16"];

/// The `--kv-precision` value as a dtype (`None`: the model's default).
pub fn kv_precision(value: &str) -> Option<candle_core::DType> {
    match value {
        "f32" => Some(candle_core::DType::F32),
        "f16" => Some(candle_core::DType::F16),
        "bf16" => Some(candle_core::DType::BF16),
        _ => None,
    }
}

/// Caps the threads of candle's matmuls (read from RAYON_NUM_THREADS) and of rayon's pool, and
/// makes the calling (main) thread one of the pool's, for the commands that run the models on
/// it. A kernel's fork-join from outside the pool injects a job and sleeps until a pool thread
/// has run it (two wake-ups per call); from a pool thread it pushes half the work to its own
/// deque and runs the other half. The calls are short in a decoder step (Qwen3-TTS 0.6B int8
/// reads 1–3 MB per GEMV, ~230 per frame): RTF 8 % lower on Zen 3 (PERFORMANCE.md #73).
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    cap_threads(threads)?;
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Fails only when the pool already runs (a library caller's): then it is used as it is.
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .use_current_thread()
        .build_global()
        .ok();
    Ok(())
}

/// Caps the threads as [`set_threads`] does, leaving the calling thread out of the pool (the
/// server runs requests on other threads).
///
/// Without `threads` the variable is set to candle's own default, computed once: unset, candle
/// recomputes it on every matmul, and on Linux that reads and parses /proc/cpuinfo (perf: in
/// each attention of a Qwen3-TTS code-predictor step that takes candle's matmul).
pub fn cap_threads(threads: Option<usize>) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = match threads {
        Some(0) => bail!("--threads must be at least 1"),
        // More threads than CPUs only take turns: the kernels' helpers spin between loops, so
        // 1000 threads on 2 CPUs ran 200× slower.
        Some(n) if n > cpus => {
            bail!("--threads {n}: this process can use {cpus} CPUs; ask for at most {cpus}")
        }
        Some(n) => n,
        None if std::env::var_os("RAYON_NUM_THREADS").is_some() => return Ok(()),
        None => candle_core::utils::get_num_threads(),
    };
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    Ok(())
}

pub fn run(args: TranscribeArgs) -> Result<()> {
    // Several files N at a time: each on a thread of its own, the model's kernels on the pool
    // (a thread of the pool that waited for a file's turn would leave its core idle).
    let files_at_once = args
        .batch_size
        .filter(|_| !args.vad && args.clip_timestamps.is_none() && args.files.len() > 1);
    match files_at_once {
        Some(_) => {
            cap_threads(args.threads)?;
            crate::share_heaps();
        }
        None => set_threads(args.threads)?,
    }
    if args.max_new_tokens == Some(0) {
        bail!("--max-new-tokens must be at least 1");
    }
    if args.files.iter().filter(|f| *f == "-").count() > 1 {
        bail!("standard input can be read once: give `-` at most once");
    }
    if args.detect_language {
        if args.language != "auto" {
            bail!("--detect-language detects the language: leave out --language");
        }
        if !matches!(
            args.format,
            Formats::One(OutputFormat::Txt | OutputFormat::Json)
        ) {
            bail!("--detect-language prints txt or json");
        }
    }
    check_some_input_opens(&args.files)?;
    let output_dir = args.output_dir();
    if let Some(dir) = &output_dir {
        let mut written = std::collections::HashMap::new();
        for file in &args.files {
            let input = AudioInput::from_arg(file);
            if let Some(other) = written.insert(output_stem(&input), file) {
                let path = output_path(dir, &input, args.format.list()[0].extension());
                bail!(
                    "{other} and {file} would both be written to {}; transcribe them into different directories",
                    path.display()
                );
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("cannot create output directory {}: {e}", dir.display())
        })?;
    }
    let request = args.request();
    // What no model would take fails before one loads (once, not once per file).
    request.check_numbers()?;
    let clock = Instant::now();
    let source = resolve_model(&args.model)?;
    let device = candle_core::Device::Cpu;
    let mut model = load_transcriber(&source, &device, precision(&args.precision))?;
    crate::release_freed_memory();
    let load_ms = clock.elapsed().as_secs_f64() * 1e3;
    if args.verbose {
        note!(
            "model: {} loaded in {load_ms:.0} ms",
            source.path().display()
        );
    }
    if let Some(n) = files_at_once.filter(|_| !args.detect_language) {
        model.batch_concurrent_decodes(n);
        let request = TranscribeRequest {
            batch_size: None,
            ..request
        };
        let written =
            transcribe_files_at_once(model.as_ref(), &args.files, &request, n, |input, file| {
                write_transcript(&args, output_dir.as_deref(), input, &file, false)
            });
        if args.verbose {
            if let Some(stats) = model.batch_stats() {
                note!(
                    "decoded together: {} windows or steps in {} batches (at most {} a batch)",
                    stats.decodes,
                    stats.batches,
                    stats.largest
                );
            }
        }
        return written;
    }
    let vad = if args.vad {
        if model.sample_rate() != SAMPLE_RATE {
            bail!("--vad needs a 16 kHz model");
        }
        Some(SileroVad::load(&crate::vad::model_path(
            args.vad_model.as_deref(),
            "--vad-model",
        )?)?)
    } else {
        None
    };
    // Text to stdout goes out as each window is decoded, as whisper.cpp and openai-whisper's
    // verbose mode print it: the same lines the txt format writes at the end.
    let live_text = output_dir.is_none() && args.format.list() == [OutputFormat::Txt];
    for_each_input(&args.files, |input| {
        let clock = Instant::now();
        let samples = load_mono(input, model.sample_rate())?;
        if args.detect_language {
            let probs = model.detect_language(&samples).ok_or_else(|| {
                anyhow::anyhow!("this model does not detect a language (Whisper models do)")
            })??;
            let json = matches!(args.format, Formats::One(OutputFormat::Json));
            return print_languages(&probs, json);
        }
        let decode_ms = clock.elapsed().as_secs_f64() * 1e3;
        let duration = samples.len() as f64 / model.sample_rate() as f64;
        let bar = progress_bar(duration);
        let clock = Instant::now();
        let mut live = live_text.then(LiveText::default);
        let mut on_progress = |done: Progress<'_>| {
            if let Some(bar) = &bar {
                bar.set_position((done.fraction * 1000.0) as u64);
            }
            match &mut live {
                Some(live) => live.print(done.segments, bar.as_ref()),
                None => true,
            }
        };
        let transcribed = match &vad {
            Some(vad) => {
                let params = request_vad_params(model.as_ref(), &request);
                transcribe_speech(
                    model.as_ref(),
                    vad,
                    &params,
                    &samples,
                    &request,
                    &mut on_progress,
                )
            }
            None => model.transcribe(&samples, &request, &mut on_progress),
        };
        // A closed stdout stopped the transcription: that, not the stop, is the error.
        if let Some(live) = &mut live {
            live.result()?;
        }
        let (transcript, timings) = transcribed?;
        if let Some(live) = &mut live {
            live.print(&transcript.segments, bar.as_ref());
            live.result()?;
        }
        let wall_s = clock.elapsed().as_secs_f64();
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let file = Transcribed {
            transcript,
            timings,
            duration,
            decode_ms,
            wall_s,
        };
        write_transcript(&args, output_dir.as_deref(), input, &file, live.is_some())
    })
}

/// A file's transcript and what it took.
struct Transcribed {
    transcript: Transcript,
    timings: Timings,
    /// Seconds of audio.
    duration: f64,
    /// Reading and resampling the file.
    decode_ms: f64,
    /// Transcribing it.
    wall_s: f64,
}

/// Writes a file's transcript in each format — into `output_dir`, else to stdout where its
/// text was not printed live already — and, with `-v`, what it took.
fn write_transcript(
    args: &TranscribeArgs,
    output_dir: Option<&Path>,
    input: &AudioInput,
    file: &Transcribed,
    printed_live: bool,
) -> Result<()> {
    let Transcribed {
        transcript,
        timings,
        duration,
        decode_ms,
        wall_s,
    } = file;
    let task = if args.task == "translate" {
        "translate"
    } else {
        "transcribe"
    };
    for format in args.format.list().into_iter().filter(|_| !printed_live) {
        let text = render_with(transcript, format, task, &args.subtitles());
        match output_dir {
            Some(dir) => {
                let path = output_path(dir, input, format.extension());
                std::fs::write(&path, text)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            }
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes())
                    .and_then(|_| out.flush())
                    .map_err(|e| anyhow::anyhow!("cannot write to stdout: {e}"))?;
            }
        }
    }
    if args.verbose {
        note!(
            "{}: {duration:.2} s audio | decode {decode_ms:.0} ms | mel {:.0} ms | encoder {:.0} ms ({} passes) | prefill {:.0} ms ({}) | decoder {:.2} ms/step ({} steps) | first token {:.0} ms | wall {:.0} ms | RTF {:.3}",
            input.name(),
            timings.mel_ms,
            timings.encoder_ms,
            timings.encoder_calls,
            timings.prefill_ms,
            timings.prefills,
            timings.ms_per_step(),
            timings.steps,
            timings.first_token_ms.unwrap_or(0.0),
            wall_s * 1e3,
            wall_s / duration.max(1e-9),
        );
    }
    Ok(())
}

/// Transcribes `files` `workers` at a time, each on a thread of its own (the model decodes
/// their windows together where it batches concurrent calls), and hands each file's
/// transcript to `write` in the files' order as soon as it and those before it are done.
/// Failures, of a file or of its `write`, are reported as [`for_each_input`] reports them.
fn transcribe_files_at_once(
    model: &dyn Transcriber,
    files: &[String],
    request: &TranscribeRequest,
    workers: usize,
    mut write: impl FnMut(&AudioInput, Transcribed) -> Result<()>,
) -> Result<()> {
    let inputs: Vec<AudioInput> = files.iter().map(|f| AudioInput::from_arg(f)).collect();
    let next = AtomicUsize::new(0);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..workers.min(inputs.len()) {
            let (next, done, inputs) = (&next, done.clone(), &inputs);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(input) = inputs.get(i) else {
                    break;
                };
                let transcribe = || -> Result<Transcribed> {
                    let clock = Instant::now();
                    let samples = load_mono(input, model.sample_rate())?;
                    let decode_ms = clock.elapsed().as_secs_f64() * 1e3;
                    let clock = Instant::now();
                    let (transcript, timings) =
                        model.transcribe(&samples, request, &mut |_| true)?;
                    Ok(Transcribed {
                        transcript,
                        timings,
                        duration: samples.len() as f64 / model.sample_rate() as f64,
                        decode_ms,
                        wall_s: clock.elapsed().as_secs_f64(),
                    })
                };
                if done.send((i, transcribe())).is_err() {
                    break;
                }
            });
        }
        drop(done);
        // Each file in order, once it and those before it are done.
        let mut waiting = std::collections::BTreeMap::new();
        let mut written = 0;
        let mut index = 0;
        for (i, result) in finished {
            waiting.insert(i, result);
            while let Some(result) = waiting.remove(&index) {
                let input = &inputs[index];
                index += 1;
                match result.and_then(|file| write(input, file)) {
                    Ok(()) => written += 1,
                    Err(e) => note!("error: {}", named(input, &e)),
                }
            }
        }
        let failures = index - written;
        if failures > 0 {
            bail!("{failures} of {} inputs failed", inputs.len());
        }
        Ok(())
    })
}

/// Prints a transcript's txt lines to stdout as its segments are found.
#[derive(Default)]
struct LiveText {
    /// Segments printed.
    printed: usize,
    /// Why stdout stopped taking the text.
    failed: Option<std::io::Error>,
}

impl LiveText {
    /// Prints the lines of the segments past those printed (above the progress bar); false
    /// once stdout fails (a closed pipe), which stops the transcription.
    fn print(&mut self, segments: &[Segment], bar: Option<&ProgressBar>) -> bool {
        let new = segments.get(self.printed..).unwrap_or_default();
        self.printed = self.printed.max(segments.len());
        let mut text = String::new();
        for line in txt_lines(new) {
            text.push_str(line);
            text.push('\n');
        }
        if !text.is_empty() && self.failed.is_none() {
            let write = || {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|_| out.flush())
            };
            let written = match bar {
                Some(bar) => bar.suspend(write),
                None => write(),
            };
            self.failed = written.err();
        }
        self.failed.is_none()
    }

    /// The write error that stopped the text, if one did.
    fn result(&mut self) -> Result<()> {
        match self.failed.take() {
            Some(e) => bail!("cannot write to stdout: {e}"),
            None => Ok(()),
        }
    }
}

/// Where `--output-dir` puts the transcript of `input`: its [`output_stem`] with the format's
/// extension.
fn output_path(dir: &Path, input: &AudioInput, extension: &str) -> PathBuf {
    dir.join(format!("{}.{extension}", output_stem(input)))
}

/// The name of `input`'s transcripts before their extension: the file name's stem, `stdin`
/// for standard input.
fn output_stem(input: &AudioInput) -> String {
    match input {
        AudioInput::File(path) => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "audio".into()),
        _ => "stdin".into(),
    }
}

/// Fails before the model loads when not one of `files` can be read: a mistyped path should
/// not wait for a load of several GB. Where some can, the others are reported in turn after
/// it, as [`for_each_input`] reports any input that fails.
fn check_some_input_opens(files: &[String]) -> Result<()> {
    let readable = |file: &String| AudioInput::from_arg(file).check_readable().is_ok();
    if files.iter().any(readable) {
        return Ok(());
    }
    for_each_input(files, |input| Ok(input.check_readable()?))
}

/// `--detect-language`'s answer: the most likely language and its probability, as a line or
/// as JSON with every language's.
fn print_languages(probs: &[(&str, f32)], json: bool) -> Result<()> {
    let (language, probability) = probs[0];
    let text = if json {
        let all: Vec<_> = probs
            .iter()
            .map(|(l, p)| serde_json::json!({ "language": l, "probability": p }))
            .collect();
        serde_json::json!({ "language": language, "probability": probability, "probabilities": all })
            .to_string()
    } else {
        format!("{language} {probability:.4}")
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|_| out.flush())
        .map_err(|e| anyhow::anyhow!("cannot write to stdout: {e}"))
}

/// Runs `work` on each input in turn: with one input its error is the command's; with several
/// each failure is printed (naming its input) and the others still run, then the command
/// fails if any did.
pub fn for_each_input(
    files: &[String],
    mut work: impl FnMut(&AudioInput) -> Result<()>,
) -> Result<()> {
    let mut failures = 0;
    for file in files {
        let input = AudioInput::from_arg(file);
        if let Err(e) = work(&input) {
            let message = named(&input, &e);
            if files.len() == 1 {
                bail!(message);
            }
            note!("error: {message}");
            failures += 1;
        }
    }
    if failures > 0 {
        bail!("{failures} of {} inputs failed", files.len());
    }
    Ok(())
}

/// An error of `input` as one line that names it: audio errors name their input already,
/// others get it prefixed.
fn named(input: &AudioInput, e: &anyhow::Error) -> String {
    let name = input.name();
    let message = e.to_string();
    if message.contains(&name) {
        message
    } else {
        format!("{name}: {message}")
    }
}

fn progress_bar(duration: f64) -> Option<ProgressBar> {
    if duration < PROGRESS_MIN_SECONDS {
        return None;
    }
    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {percent:>3}% (eta {eta})",
        )
        .expect("valid template"),
    );
    Some(bar)
}
