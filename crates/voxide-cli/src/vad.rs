//! `voxide vad`: the speech segments of audio files (Silero VAD v6), as text or JSON.

use anyhow::{anyhow, bail, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use voxide_audio::{mono_at_rate, AudioError, AudioInput};
use voxide_models::silero_vad::{speech_segments, SileroVad, SpeechSegment, VadParams};

/// Where the model is looked for when `--model` is not given (relative to the working
/// directory: the shared tree next to a checkout).
const DEFAULT_MODEL: &str = "../shared/assets/silero-vad/for-tests-silero-v6.2.0-ggml.bin";

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// One `start --> end` line (seconds) per segment.
    Txt,
    /// One line per file: `{"file": .., "duration": .., "segments": [{"start": .., "end": ..}]}`.
    Json,
}

#[derive(Args, Debug)]
pub struct VadArgs {
    /// Audio files (WAV, FLAC, MP3, Ogg Vorbis or Opus, M4A/AAC/ALAC, WebM, MP2, AIFF, CAF);
    /// `-` reads standard input.
    #[arg(required = true)]
    files: Vec<String>,
    /// Silero VAD weights: whisper.cpp's ggml file (ggml-silero-v6.2.0.bin) or an ONNX file
    /// (faster-whisper's silero_vad_v6.onnx). Default, where it exists:
    /// ../shared/assets/silero-vad/for-tests-silero-v6.2.0-ggml.bin
    #[arg(short, long, env = "VOXIDE_VAD_MODEL")]
    model: Option<PathBuf>,
    /// Windows with a speech probability at or above this are speech.
    #[arg(long, default_value_t = 0.5)]
    threshold: f64,
    /// While in speech, probabilities below this are silence (default: threshold − 0.15).
    #[arg(long)]
    neg_threshold: Option<f64>,
    /// Drop speech shorter than this.
    #[arg(long, value_name = "MS", default_value_t = 250)]
    min_speech_ms: u32,
    /// Silence shorter than this does not end a segment.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    min_silence_ms: u32,
    /// Widen each segment by this on both sides.
    #[arg(long, value_name = "MS", default_value_t = 30)]
    speech_pad_ms: u32,
    /// Split speech longer than this (at its longest silence where possible).
    #[arg(long, value_name = "SECONDS")]
    max_speech_s: Option<f64>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Txt)]
    format: Format,
    /// Print timings to standard error.
    #[arg(short, long)]
    verbose: bool,
}

impl VadArgs {
    fn params(&self) -> Result<VadParams> {
        let probability = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(anyhow!("--{name} must be between 0 and 1, got {v}"))
            }
        };
        probability("threshold", self.threshold)?;
        if let Some(v) = self.neg_threshold {
            probability("neg-threshold", v)?;
            if v > self.threshold {
                // Speech would end above the level that starts it.
                bail!(
                    "--neg-threshold {v} must not exceed --threshold {}",
                    self.threshold
                );
            }
        }
        if let Some(v) = self.max_speech_s {
            if v.is_nan() || v <= 0.0 {
                bail!("--max-speech-s must be positive, got {v}");
            }
        }
        Ok(VadParams {
            threshold: self.threshold,
            neg_threshold: self.neg_threshold,
            min_speech_duration_ms: self.min_speech_ms,
            max_speech_duration_s: self.max_speech_s.unwrap_or(f64::INFINITY),
            min_silence_duration_ms: self.min_silence_ms,
            speech_pad_ms: self.speech_pad_ms,
            ..VadParams::default()
        })
    }
}

/// The Silero weights to load: `given`, else `$VOXIDE_VAD_MODEL`, else the default file
/// beside the repository.
pub fn model_path(given: Option<&Path>, flag: &str) -> Result<PathBuf> {
    let from_env = std::env::var_os("VOXIDE_VAD_MODEL").filter(|p| !p.is_empty());
    match (given, from_env) {
        (Some(path), _) => Ok(path.to_path_buf()),
        (None, Some(path)) => Ok(path.into()),
        (None, None) if Path::new(DEFAULT_MODEL).is_file() => Ok(PathBuf::from(DEFAULT_MODEL)),
        (None, None) => bail!(
            "no Silero VAD model: pass {flag} PATH or set VOXIDE_VAD_MODEL (whisper.cpp's \
             ggml-silero-v6.2.0.bin or an .onnx file); the default {DEFAULT_MODEL} does not \
             exist"
        ),
    }
}

pub fn run(args: VadArgs) -> Result<()> {
    let params = args.params()?;
    let path = model_path(args.model.as_deref(), "--model")?;
    let clock = Instant::now();
    let vad = SileroVad::load(&path)?;
    if args.verbose {
        note!(
            "model: {} ({}) loaded in {:.0} ms",
            vad.description(),
            path.display(),
            clock.elapsed().as_secs_f64() * 1e3
        );
    }
    let single = args.files.len() == 1;
    crate::transcribe::for_each_input(&args.files, |input| {
        let clock = Instant::now();
        let samples = load_16k(input)?;
        let decode_ms = clock.elapsed().as_secs_f64() * 1e3;
        let clock = Instant::now();
        let probs = vad.probabilities(&samples)?;
        let segments = speech_segments(&probs, samples.len(), &params);
        let vad_s = clock.elapsed().as_secs_f64();
        let duration = samples.len() as f64 / 16_000.0;
        let text = render(&input.name(), duration, &segments, args.format, single);
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| anyhow!("cannot write to stdout: {e}"))?;
        if args.verbose {
            note!(
                "{}: {duration:.2} s audio | decode {decode_ms:.0} ms | vad {:.0} ms ({:.0}× real time) | {} segments",
                input.name(),
                vad_s * 1e3,
                duration / vad_s.max(1e-9),
                segments.len()
            );
        }
        Ok(())
    })
}

/// Mono 16 kHz samples. Digital silence is no error here (it is audio without speech):
/// it becomes zeros of the right length.
fn load_16k(input: &AudioInput) -> Result<Vec<f32>> {
    let audio = input.decode()?;
    let (frames, rate) = (audio.n_frames(), audio.sample_rate);
    match mono_at_rate(audio, 16_000, &input.name()) {
        Err(AudioError::DigitalSilence { .. }) => {
            Ok(vec![0.0; voxide_audio::resampled_len(frames, rate, 16_000)])
        }
        other => Ok(other?),
    }
}

/// `--format json`, fields in this order.
#[derive(Serialize)]
struct JsonOutput<'a> {
    file: &'a str,
    /// Seconds of audio.
    duration: f64,
    segments: Vec<JsonSegment>,
}

#[derive(Serialize)]
struct JsonSegment {
    start: f64,
    end: f64,
}

fn render(
    name: &str,
    duration: f64,
    segments: &[SpeechSegment],
    format: Format,
    single: bool,
) -> String {
    match format {
        Format::Txt => {
            let mut text = if single {
                String::new()
            } else {
                format!("# {name}\n")
            };
            for s in segments {
                text += &format!("{:.3} --> {:.3}\n", s.start_s(), s.end_s());
            }
            text
        }
        Format::Json => {
            let output = JsonOutput {
                file: name,
                duration,
                segments: segments
                    .iter()
                    .map(|s| JsonSegment {
                        start: s.start_s(),
                        end: s.end_s(),
                    })
                    .collect(),
            };
            // Serialising plain structs and floats cannot fail.
            serde_json::to_string(&output).unwrap_or_default() + "\n"
        }
    }
}
