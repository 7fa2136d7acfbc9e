//! `voxide serve`: loads each `--model` once and serves them over HTTP with OpenAI's audio API
//! (voxide-server), until SIGINT or SIGTERM.

use crate::transcribe::{cap_threads, precision};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use voxide_audio::AudioInput;
use voxide_runtime::transcriber::MAX_BATCH_SIZE;
use voxide_server::{Limits, ModelSpec, Registry, ServerConfig, VoiceSpec};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A model to serve: a checkpoint directory or a hub id, served under the directory's name
    /// (a hub model under its id); `ID=MODEL` serves it as ID (e.g. whisper-1=openai/whisper-tiny).
    /// Repeat for more models: speech-to-text (Whisper, Voxtral Realtime, Voxtral Mini 3B, which
    /// also answers chat completions about audio) and text-to-speech (Qwen3-TTS) alike.
    #[arg(short, long = "model", value_name = "[ID=]MODEL", required = true)]
    models: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the address is printed once listening).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1 requests (OpenAI clients send their api_key).
    #[arg(long, env = "VOXIDE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Requests running a model at once (each already uses every core; default 1, or
    /// --max-batch-size).
    #[arg(long, value_name = "N")]
    max_concurrency: Option<usize>,
    /// Decode up to N concurrent requests together (Whisper: their 30 s windows; the Voxtrals:
    /// their decoder steps, realtime sessions' too; Qwen3-TTS: their frames; at most 8 a
    /// step): each decoder step reads the weights once for all of them, for more throughput
    /// under load and each transcript or voice the same as alone. Lets N requests run at once unless --max-concurrency says otherwise
    /// (at least N).
    #[arg(long, value_name = "N", default_value_t = 1)]
    max_batch_size: usize,
    /// Requests waiting for a slot; more are answered 429 at once.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_queue)]
    max_queue: usize,
    /// Largest audio upload, in MB (2^20 bytes); larger is answered 413.
    #[arg(long, value_name = "N", default_value_t = 25)]
    max_upload_mb: usize,
    /// Longest audio to transcribe, and to synthesise, in seconds.
    #[arg(long, value_name = "N", default_value_t = 3600.0)]
    max_audio_s: f64,
    /// Seconds a request may take from its arrival to its end, queue included (504 after; a
    /// stream already started is cut off); 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 600)]
    request_timeout_s: u64,
    /// Realtime WebSocket sessions at once; more are answered 429.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_realtime_sessions)]
    max_realtime_sessions: usize,
    /// Silero VAD weights for server VAD in realtime sessions: whisper.cpp's ggml file or an
    /// ONNX file (default, where it exists: ../shared/assets/silero-vad/for-tests-silero-v6.2.0-ggml.bin;
    /// without one, realtime clients commit their audio themselves).
    #[arg(long, value_name = "PATH", env = "VOXIDE_VAD_MODEL")]
    vad_model: Option<PathBuf>,
    /// A voice for the Base (voice clone) Qwen3-TTS models: cloned from the clip (any format
    /// voxide reads; a few seconds of clear speech) at start-up, then spoken by speech requests
    /// that name it as their `voice`. Repeat for more voices.
    #[arg(long = "voice", value_name = "NAME=CLIP")]
    voices: Vec<String>,
    /// What a `--voice` clip says, `NAME=TRANSCRIPT`: the voice is then cloned in context (the
    /// clip's codes join every prompt), as `voxide speak --ref-text`.
    #[arg(long = "voice-text", value_name = "NAME=TEXT")]
    voice_texts: Vec<String>,
    /// Weight precision of every model: auto (the checkpoint's), f32, f16, bf16, or int8
    /// (Voxtral Realtime's decoder and Qwen3-TTS' talker and code predictor).
    #[arg(long, default_value = "auto", value_parser = crate::transcribe::PRECISIONS)]
    precision: String,
    /// CPU threads (default: all cores).
    #[arg(short, long)]
    threads: Option<usize>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    cap_threads(args.threads)?;
    let max_concurrency = concurrency(args.max_concurrency, args.max_batch_size)?;
    if args.max_batch_size > 1 {
        crate::share_heaps();
    }
    let config = ServerConfig {
        host: args.host,
        port: args.port,
        api_key: args.api_key,
        limits: Limits {
            max_concurrency,
            max_queue: args.max_queue,
            max_upload_bytes: args.max_upload_mb.saturating_mul(1024 * 1024),
            max_audio_s: args.max_audio_s,
            request_timeout: (args.request_timeout_s > 0)
                .then(|| Duration::from_secs(args.request_timeout_s)),
            max_realtime_sessions: args.max_realtime_sessions,
        },
    };
    // Flags and the address first: a typo or a port in use should not wait for the models.
    let listener = voxide_server::listen(&config)?;
    let specs = args
        .models
        .iter()
        .map(|m| m.parse::<ModelSpec>())
        .collect::<Result<Vec<_>>>()?;
    ModelSpec::check_ids(&specs)?;
    let mut voices = args
        .voices
        .iter()
        .map(|v| v.parse::<VoiceSpec>())
        .collect::<Result<Vec<_>>>()?;
    for entry in &args.voice_texts {
        let (name, text) = entry.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("--voice-text {entry}: use --voice-text NAME=TRANSCRIPT")
        })?;
        let voice = voices.iter_mut().find(|v| v.name == name).ok_or_else(|| {
            anyhow::anyhow!("--voice-text {name}=…: no --voice {name}=CLIP to go with it")
        })?;
        voice.text = Some(text.to_string());
    }
    for voice in &voices {
        AudioInput::File(voice.clip.clone())
            .check_readable()
            .map_err(|e| anyhow::anyhow!("--voice {}: {e}", voice.name))?;
    }
    VoiceSpec::check_before_loading(&voices, &specs)?;
    let mut models = Registry::new();
    match crate::vad::model_path(args.vad_model.as_deref(), "--vad-model") {
        Ok(path) => {
            let vad = models.load_vad(&path)?;
            note!("server VAD: {} ({})", vad.description(), path.display());
        }
        Err(_) => {
            note!(
                "no Silero VAD model (--vad-model): realtime sessions run without server VAD, and transcriptions refuse chunking_strategy"
            )
        }
    }
    for spec in &specs {
        let clock = Instant::now();
        let model = models
            .load(spec, precision(&args.precision))
            .map_err(|e| anyhow::anyhow!("--model {}: {e}", spec.source))?;
        note!(
            "model {} ({}): {} loaded in {:.0} ms",
            model.id,
            model.engine.kind(),
            model.dir.display(),
            clock.elapsed().as_secs_f64() * 1e3
        );
        crate::release_freed_memory();
    }
    if args.max_batch_size > 1 {
        let ids = models.batch_concurrent_decodes(args.max_batch_size)?;
        note!(
            "{}: the windows, decoder steps or speech frames of up to {} concurrent requests decoded together",
            ids.join(", "),
            args.max_batch_size
        );
    }
    for voice in &voices {
        let clock = Instant::now();
        let ids = models.clone_voice(voice)?;
        note!(
            "voice {} cloned from {} for {} in {:.0} ms",
            voice.name,
            voice.clip.display(),
            ids.join(", "),
            clock.elapsed().as_secs_f64() * 1e3
        );
    }
    voxide_server::serve(listener, config, models)
}

/// Requests that may run at once: `--max-concurrency`, else one per window of a batch
/// (`--max-batch-size`, which takes 1 to [`MAX_BATCH_SIZE`] and needs that many).
fn concurrency(max_concurrency: Option<usize>, max_batch_size: usize) -> Result<usize> {
    if !(1..=MAX_BATCH_SIZE).contains(&max_batch_size) {
        anyhow::bail!("--max-batch-size takes 1 to {MAX_BATCH_SIZE}");
    }
    match max_concurrency {
        // (0 is refused with the other limits.)
        Some(n) if max_batch_size > 1 && n < max_batch_size => anyhow::bail!(
            "--max-batch-size {max_batch_size} needs --max-concurrency of at least {max_batch_size} \
             (a batch holds the windows of requests running at once)"
        ),
        Some(n) => Ok(n),
        None => Ok(max_batch_size.max(Limits::default().max_concurrency)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_size_lets_as_many_requests_run() {
        assert_eq!(concurrency(None, 1).unwrap(), 1);
        assert_eq!(concurrency(None, 8).unwrap(), 8);
        assert_eq!(concurrency(Some(12), 8).unwrap(), 12);
        assert_eq!(concurrency(Some(3), 1).unwrap(), 3);
        assert_eq!(concurrency(Some(0), 1).unwrap(), 0);
        for (given, batch, refusal) in [
            (Some(4), 8, "needs --max-concurrency of at least 8"),
            (None, 0, "takes 1 to"),
            (None, MAX_BATCH_SIZE + 1, "takes 1 to"),
        ] {
            let err = concurrency(given, batch).unwrap_err().to_string();
            assert!(err.contains(refusal), "{err}");
        }
    }
}
