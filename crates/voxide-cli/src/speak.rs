//! `voxide speak`: text to speech with Qwen3-TTS. Audio is written as each chunk is decoded,
//! so `voxide speak … | aplay` (or `| ffplay -`) starts playing before synthesis ends.

use crate::output::OutputFile;
use crate::transcribe::{kv_precision, precision, set_threads};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use voxide_audio::stretch::SPEED_RANGE;
use voxide_audio::{AudioInput, AudioOutFormat, AudioWriter};
use voxide_models::qwen3_tts::{
    ClonedVoice, Config, GenerationParams, SpeechRequest, SpeechStats, Synthesizer, VoiceReference,
    DEFAULT_PART_CHARS,
};
use voxide_nn::sampling::SamplingParams;
use voxide_runtime::{resolve_model, ModelSource};

#[derive(Args, Debug)]
pub struct SpeakArgs {
    /// Text to say; `-` or nothing reads standard input.
    text: Option<String>,
    /// Qwen3-TTS checkpoint directory (with `speech_tokenizer/`) or hub id.
    #[arg(short, long, env = "VOXIDE_TTS_MODEL")]
    model: String,
    /// Preset speaker (CustomVoice checkpoints); `--list-voices` shows them.
    #[arg(long)]
    voice: Option<String>,
    /// How to speak, or (VoiceDesign) the voice itself, in words.
    #[arg(long)]
    instruct: Option<String>,
    /// Reference clip whose voice to clone (Base checkpoints), any format voxide reads.
    #[arg(long, value_name = "FILE")]
    ref_audio: Option<PathBuf>,
    /// Transcript of the reference clip: clones in context (the clip's codes join the prompt);
    /// without it only the speaker embedding is used.
    #[arg(long, requires = "ref_audio")]
    ref_text: Option<String>,
    /// With --ref-text: decode only the clip's last N frames (80 ms each) as the left context
    /// of the generated audio (faster to start; default: all, exactly qwen-tts' audio).
    #[arg(long, value_name = "N", requires = "ref_text")]
    ref_context_frames: Option<usize>,
    /// Language of the text: auto or one of the checkpoint's (`--list-voices`).
    #[arg(short, long, default_value = "auto")]
    language: String,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sampling temperature for every code; 0 is greedy.
    #[arg(long, default_value_t = 0.9)]
    temperature: f32,
    /// Keep the K most likely codes (0: all).
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    /// Keep the most likely codes up to probability P.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Penalty on first codes already generated (1: none).
    #[arg(long, default_value_t = 1.05)]
    repetition_penalty: f32,
    /// Most frames (80 ms each) to generate, for each part (`--part-chars`).
    #[arg(long, default_value_t = 2048)]
    max_frames: usize,
    /// Feed the text alongside the frames (on) or all in the prompt (off); auto: as qwen-tts
    /// per variant (off for CustomVoice and VoiceDesign, on for voice clone).
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    text_streaming: String,
    /// Speak a longer text in parts of at most N characters, cut after sentences (else
    /// clauses, else spaces), one after another in the same voice: qwen-tts stops at 2048
    /// frames (164 s), and one long generation drifts. 0: the whole text at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PART_CHARS)]
    part_chars: usize,
    /// Play the speech this many times as fast, at the same pitch (0.25 to 4; time-stretched
    /// with WSOLA after synthesis, as OpenAI's `speed`).
    #[arg(long, default_value_t = 1.0)]
    speed: f32,
    /// Most frames decoded to audio at a time (80 ms each): the first chunk is one frame, then
    /// chunks double up to this (longer chunks decode faster).
    #[arg(long, default_value_t = 16)]
    chunk_frames: usize,
    /// Output file, encoded as its extension says (.wav, .mp3, .flac, .opus or .ogg for Ogg
    /// Opus, .pcm or .raw for raw PCM; others: WAV) unless `--output-format` says otherwise;
    /// without it, audio goes to standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// The audio's encoding, in the file or on standard output: wav (16-bit), pcm (raw 16-bit
    /// little endian), mp3 (64 kbit/s), flac, or opus (Ogg Opus, 32 kbit/s). Default: the
    /// output file's extension, else wav.
    #[arg(long, value_parser = AudioOutFormat::NAMES)]
    output_format: Option<String>,
    /// Print the checkpoint's voices and languages and exit.
    #[arg(long)]
    list_voices: bool,
    /// Weight precision of the talker and code predictor: auto (the checkpoint's), f32, f16,
    /// bf16, int8 (a scale per row), or a ggml block type (q8_0, q5_1, q4_k, ...), quantized
    /// at load.
    #[arg(long, default_value = "auto", value_parser = crate::transcribe::PRECISIONS)]
    precision: String,
    /// KV-cache precision of the talker and code predictor: auto (f16 beside quantized
    /// weights, f32 beside float ones, which keeps qwen-tts' greedy codes), f32, f16 or bf16.
    #[arg(long, default_value = "auto", value_parser = crate::transcribe::KV_PRECISIONS)]
    kv_precision: String,
    /// CPU threads (default: all cores).
    #[arg(short, long)]
    threads: Option<usize>,
    /// Print time to first audio, frames/s, RTF and peak memory to stderr.
    #[arg(short, long)]
    verbose: bool,
}

fn read_text(arg: Option<String>) -> Result<String> {
    match arg.as_deref() {
        Some(t) if t != "-" => Ok(t.to_string()),
        _ => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the text from standard input")?;
            Ok(text)
        }
    }
}

/// Resolves `--model` and loads the checkpoint on the CPU at `--precision`.
pub fn load_synthesizer(model: &str, precision_arg: &str) -> Result<Synthesizer> {
    load_resolved(&resolve_model(model)?, precision_arg)
}

/// Loads the resolved checkpoint on the CPU at `--precision`.
fn load_resolved(source: &ModelSource, precision_arg: &str) -> Result<Synthesizer> {
    let synthesizer = voxide_runtime::load_synthesizer(
        source,
        &candle_core::Device::Cpu,
        precision(precision_arg),
    )?;
    crate::release_freed_memory();
    crate::reuse_freed_memory();
    Ok(synthesizer)
}

/// Refuses from the checkpoint's config.json alone, before its weights load, a voice or
/// language it does not have, or a reference clip it cannot clone from. A directory that is
/// not a Qwen3-TTS checkpoint passes: loading it says what it is.
fn check_voice_before_load(source: &ModelSource, args: &SpeakArgs) -> Result<()> {
    let Ok(config) = Config::from_file(&source.path().join("config.json")) else {
        return Ok(());
    };
    config.check_voice(args.voice.as_deref(), args.ref_audio.is_some())?;
    config.language_id(Some(&args.language))?;
    Ok(())
}

pub fn run(args: SpeakArgs) -> Result<()> {
    set_threads(args.threads)?;
    // Checked before the model loads: a path that cannot be written, a reference clip that
    // cannot be read or a sampling setting out of range fails at once.
    let format = output_format(args.output_format.as_deref(), args.output.as_deref())?;
    let output = match &args.output {
        Some(path) if !args.list_voices => Some(OutputFile::new(path)?),
        _ => None,
    };
    if let Some(path) = &args.ref_audio {
        AudioInput::File(path.clone())
            .check_readable()
            .map_err(|e| anyhow!("reference clip {e}"))?;
    }
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        bail!("--temperature {} must be a number ≥ 0", args.temperature);
    }
    crate::check_top_p(args.top_p)?;
    if !(args.repetition_penalty > 0.0 && args.repetition_penalty.is_finite()) {
        bail!("--repetition-penalty must be a positive number");
    }
    if !SPEED_RANGE.contains(&args.speed) {
        bail!("--speed must be between 0.25 and 4");
    }
    let source = resolve_model(&args.model)?;
    if !args.list_voices {
        check_voice_before_load(&source, &args)?;
    }
    let synthesizer = load_resolved(&source, &args.precision)?;
    if args.list_voices {
        let list = |v: Vec<String>| {
            if v.is_empty() {
                "none".into()
            } else {
                v.join(", ")
            }
        };
        let text = format!(
            "model type: {:?}\nvoices: {}\nlanguages: auto, {}\n",
            synthesizer.model_type(),
            list(synthesizer.voices()),
            list(synthesizer.languages())
        );
        let mut stdout = std::io::stdout().lock();
        return unless_closed(
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush()),
        )
        .map(drop)
        .map_err(|e| anyhow!("cannot write to stdout: {e}"));
    }
    let sampling = (args.temperature > 0.0).then_some(SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
    });
    let cloned_voice = args
        .ref_audio
        .map(|path| -> Result<Arc<ClonedVoice>> {
            let input = AudioInput::File(path);
            let mut reference =
                VoiceReference::from_clip(&input, synthesizer.sample_rate(), args.ref_text)?;
            reference.context_frames = args.ref_context_frames;
            let cloned = synthesizer.clone_voice(&reference)?;
            if args.verbose {
                note!(
                    "voice cloned in {:.0} ms: speaker encoder {:.0}, codec encoder {:.0}, codec decoder {:.0} ({} reference frames in context)",
                    cloned.clone_ms(),
                    cloned.speaker_encoder_ms,
                    cloned.codec_encoder_ms,
                    cloned.codec_decoder_ms,
                    cloned.reference_frames()
                );
            }
            Ok(Arc::new(cloned))
        })
        .transpose()?;
    let request = SpeechRequest {
        text: read_text(args.text)?,
        voice: args.voice,
        instruct: args.instruct,
        cloned_voice,
        language: Some(args.language),
        params: GenerationParams {
            talker: sampling,
            predictor: sampling,
            repetition_penalty: args.repetition_penalty,
            max_frames: args.max_frames,
            min_frames: GenerationParams::default().min_frames,
            kv_dtype: kv_precision(&args.kv_precision),
        },
        seed: args.seed,
        non_streaming_text: match args.text_streaming.as_str() {
            "on" => Some(false),
            "off" => Some(true),
            _ => None,
        },
        chunk_frames: args.chunk_frames,
    };
    let rate = synthesizer.sample_rate();
    let (stats, closed) = match output {
        Some(output) => {
            let file = output.open()?;
            // Only a regular file (or a link to one) can seek back to put the real sizes in the
            // header; a FIFO or a device keeps the stream's "unknown length" ones.
            let seekable = file.metadata().is_ok_and(|m| m.is_file());
            let mut writer =
                AudioWriter::new(BufWriter::new(file), format, rate)?.with_speed(args.speed);
            if seekable {
                writer = writer.for_file();
            }
            let (stats, written) =
                synthesize_to(&synthesizer, &request, args.part_chars, &mut writer)?;
            let written = written.and_then(|()| {
                if seekable {
                    writer.finish_seekable().map(drop)
                } else {
                    writer.finish().map(drop)
                }
            });
            let closed = unless_closed(written).map_err(|e| output.error(e))?;
            output.commit()?;
            (stats, closed)
        }
        None => {
            let mut writer =
                AudioWriter::new(std::io::stdout().lock(), format, rate)?.with_speed(args.speed);
            let (stats, written) =
                synthesize_to(&synthesizer, &request, args.part_chars, &mut writer)?;
            let closed = unless_closed(written.and_then(|()| writer.finish().map(drop)))
                .map_err(|e| anyhow!("cannot write to stdout: {e}"))?;
            (stats, closed)
        }
    };
    if args.verbose {
        let frames_per_s = stats.frames as f64 / (stats.wall_ms / 1e3).max(1e-9);
        note!(
            "{} frames, {:.2} s of audio in {:.0} ms: {:.1} frames/s, RTF {:.3}, first audio {:.0} ms, {}, peak RSS {:.0} MB",
            stats.frames,
            stats.audio_s,
            stats.wall_ms,
            frames_per_s,
            stats.wall_ms / 1e3 / stats.audio_s.max(1e-9),
            stats.first_audio_ms.unwrap_or(0.0),
            match (stats.finished, closed) {
                (true, _) => "ended on end of speech",
                (false, true) => "stopped: the output was closed",
                (false, false) => "stopped at the frame limit",
            },
            crate::bench::peak_rss_mb(),
        );
        if args.speed != 1.0 {
            note!(
                "at speed {}: {:.2} s of audio written",
                args.speed,
                stats.audio_s / f64::from(args.speed)
            );
        }
        note!(
            "time by part: talker prompt {:.0} ms ({} positions), talker steps {:.0} ms, code predictor {:.0} ms, sampling {:.0} ms, codec decoder {:.0} ms",
            stats.prompt_ms, stats.prompt_positions, stats.talker_ms, stats.predictor_ms, stats.sampling_ms, stats.codec_ms
        );
    }
    Ok(())
}

/// The output's encoding: `--output-format`, else the output file's extension, else WAV. An
/// extension naming a format voxide does not write (`speech.m4a`) is refused rather than
/// filled with WAV bytes.
fn output_format(flag: Option<&str>, output: Option<&std::path::Path>) -> Result<AudioOutFormat> {
    if let Some(name) = flag {
        return AudioOutFormat::from_name(name)
            .ok_or_else(|| anyhow!("unknown --output-format {name}"));
    }
    let extension = output
        .and_then(|path| path.extension())
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    if let Some(format) = AudioOutFormat::from_extension(extension) {
        return Ok(format);
    }
    const NOT_WRITTEN: [&str; 6] = ["m4a", "mp4", "aac", "webm", "aiff", "wma"];
    if NOT_WRITTEN.contains(&extension.to_ascii_lowercase().as_str()) {
        bail!(
            "cannot write {}: voxide writes WAV, MP3, FLAC, Ogg Opus and raw PCM, not {extension} (name the file .wav, .mp3, .flac, .opus or .pcm, or set --output-format)",
            output.map(|p| p.display().to_string()).unwrap_or_default()
        );
    }
    Ok(AudioOutFormat::Wav)
}

/// Synthesises into `writer`, stopping at the first write error, which comes back beside the
/// statistics.
fn synthesize_to<W: Write>(
    synthesizer: &Synthesizer,
    request: &SpeechRequest,
    part_chars: usize,
    writer: &mut AudioWriter<W>,
) -> Result<(SpeechStats, std::io::Result<()>)> {
    let mut written = Ok(());
    let stats = synthesizer.synthesize_in_parts(request, part_chars, None, &mut |pcm| {
        written = writer.write(pcm);
        Ok(written.is_ok())
    })?;
    Ok((stats, written))
}

/// A write's outcome with a closed pipe counted as success (`true`: it was closed): the
/// reader (a player, `| head`) quitting early ends the audio there, as `voxide ask` ends its
/// answer.
fn unless_closed(written: std::io::Result<()>) -> std::io::Result<bool> {
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(true),
        written => written.map(|()| false),
    }
}
