//! `POST /v1/audio/speech`: OpenAI's JSON request (`model`, `input`, `voice`, `instructions`,
//! `response_format` mp3, opus, flac, wav or pcm, `speed` 0.25–4, `stream_format` audio or sse)
//! in; 24 kHz mono audio out as it is synthesised, in chunked transfer (the first sound arrives
//! after one frame, not the whole clip): MP3 at 64 kbit/s (OpenAI's default), Ogg Opus at
//! 32 kbit/s (a page per chunk), FLAC, 16-bit WAV with unknown sizes in its header, or raw
//! 16-bit PCM; or `speech.audio.delta` events carrying the same bytes in base64, then
//! `speech.audio.done`. `aac` is refused: no encoder for it is at hand in Rust.
//!
//! voxide's own fields: `seed` (sampling seed, default 0: the same request gives the same
//! audio), `language` (one of the checkpoint's, default auto) and `max_frames` (most 80 ms
//! frames of each part, default 2048; `--max-audio-s` bounds them all). Sampling follows
//! qwen-tts' defaults, as `voxide speak`.
//!
//! `input` takes at most 4096 characters (OpenAI's limit), spoken in parts of at most
//! [`DEFAULT_PART_CHARS`] cut at sentence ends ([`Synthesizer::synthesize_in_parts`]), as
//! `voxide speak` does; each part with its frames must fit the model's positions.
//!
//! A client that goes away stops synthesis at the next chunk; so does the deadline
//! (`--request-timeout-s`), after which the stream is cut off (the client sees an incomplete
//! response, not a short clip).

use crate::limits::refuse_declared_over;
use crate::{json_body, sse_event, ApiError, AppState, Engine};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;
use voxide_audio::stretch::SPEED_RANGE;
use voxide_audio::{AudioOutFormat, AudioWriter};
use voxide_models::qwen3_tts::{
    GenerationParams, ModelType, SpeechRequest, SpeechStats, Synthesizer, DEFAULT_PART_CHARS,
};

/// Most frames decoded to audio at a time (as `voxide speak`'s default): the first chunk is
/// one frame, then chunks double up to this.
pub const CHUNK_FRAMES: usize = 16;
/// Frames when the request does not say (as `voxide speak`).
pub const DEFAULT_MAX_FRAMES: usize = 2048;
/// Seconds of audio per frame (Qwen3-TTS 12 Hz: 1920 samples at 24 kHz).
const FRAME_S: f64 = 0.08;
/// Chunks of audio buffered between synthesis and a slow client.
const CHANNEL_CHUNKS: usize = 8;
/// Longest `input`, in characters: OpenAI's documented limit for this endpoint.
pub const MAX_INPUT_CHARS: usize = 4096;
/// Largest request body (axum's default): far more than an `input` of [`MAX_INPUT_CHARS`]
/// takes, even escaped.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// 413 before reading a body whose declared length is over [`MAX_BODY_BYTES`].
pub(crate) async fn refuse_large_bodies(request: Request, next: Next) -> Response {
    refuse_declared_over(MAX_BODY_BYTES, too_large, request, next).await
}

fn too_large() -> ApiError {
    ApiError::body_too_large(format!(
        "the request body is larger than this endpoint accepts: {} MB (`input` takes at most {MAX_INPUT_CHARS} characters)",
        MAX_BODY_BYTES / (1024 * 1024)
    ))
}

/// The request body as OpenAI's clients send it, plus voxide's fields.
#[derive(Deserialize)]
struct SpeechBody {
    model: Option<String>,
    input: Option<String>,
    voice: Option<Value>,
    instructions: Option<String>,
    response_format: Option<String>,
    speed: Option<f64>,
    stream_format: Option<String>,
    seed: Option<u64>,
    language: Option<String>,
    max_frames: Option<usize>,
}

/// The body, or a 400 that names the field of the wrong type.
fn parse_body(body: &[u8]) -> Result<SpeechBody, ApiError> {
    let expected = |field: &str| match field {
        "model" | "input" | "instructions" | "response_format" | "stream_format" | "language" => {
            Some("a string")
        }
        "speed" => Some("a number"),
        "seed" | "max_frames" => Some("a whole number ≥ 0"),
        _ => None,
    };
    json_body(
        body,
        expected,
        "the body must be a JSON object with `model`, `input` and `voice`",
    )
}

/// How the audio bytes travel.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// As the body itself.
    Audio,
    /// In server-sent events, base64.
    Sse,
}

/// `POST /v1/audio/speech`.
pub(crate) async fn speech(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        _ => ApiError::bad_request(format!("cannot read the body: {}", e.body_text())),
    })?;
    let body = parse_body(&body)?;
    let model = state.requested_model(body.model.as_deref())?;
    let Engine::Synthesizer(synthesizer) = &model.engine else {
        return Err(ApiError::invalid_param(
            "model",
            format!(
                "{} is a {} model; POST /v1/audio/transcriptions to use it",
                model.id,
                model.engine.kind()
            ),
        ));
    };
    if synthesizer.model_type() == ModelType::Base && model.voices.is_empty() {
        return Err(ApiError::invalid_param(
            "model",
            format!(
                "{} is a Base (voice clone) model with no voices cloned, and this endpoint takes no \
                 reference clip: start the server with --voice NAME=CLIP, or serve a CustomVoice \
                 or VoiceDesign model",
                model.id
            ),
        ));
    }
    let format = match body.response_format.as_deref() {
        // OpenAI's default.
        None => AudioOutFormat::Mp3,
        Some(name) => AudioOutFormat::from_name(name).ok_or_else(|| {
            ApiError::invalid_param(
                "response_format",
                format!(
                    "response_format {name:?} is not supported; use mp3, opus, flac, wav or pcm (16-bit mono, 24 kHz)"
                ),
            )
        })?,
    };
    let framing = match body.stream_format.as_deref() {
        None | Some("audio") => Framing::Audio,
        Some("sse") => Framing::Sse,
        Some(other) => {
            return Err(ApiError::invalid_param(
                "stream_format",
                format!("stream_format {other:?} is not supported; use audio or sse"),
            ))
        }
    };
    let speed = body.speed.unwrap_or(1.0);
    if !SPEED_RANGE.contains(&(speed as f32)) {
        return Err(ApiError::invalid_param(
            "speed",
            // `{:?}` writes 1e308 as such, where `{}` writes all 309 digits.
            format!("speed {speed:?} is out of range: 0.25 to 4"),
        ));
    }
    // Slower speech is longer: the frames are capped by the audio they become.
    let frame_cap = ((state.limits.max_audio_s * speed / FRAME_S).floor() as usize).max(1);
    let mut request = speech_request(&body, synthesizer, frame_cap)?;
    if synthesizer.model_type() == ModelType::Base {
        // A Base model speaks in the voices cloned for it at start-up, by name.
        let name = request.voice.take().unwrap_or_default();
        let cloned = model.voices.get(&name).ok_or_else(|| {
            let names: Vec<&str> = model.voices.keys().map(String::as_str).collect();
            ApiError::invalid_param(
                "voice",
                format!(
                    "voice {name:?} is not one cloned for {}: {}",
                    model.id,
                    names.join(", ")
                ),
            )
        })?;
        request.cloned_voice = Some(cloned.clone());
    }

    let deadline = state.deadline();
    let permit = state.admit(deadline).await?;
    let (tx, mut rx) = mpsc::channel(CHANNEL_CHUNKS);
    let completed = Arc::new(AtomicBool::new(false));
    let sink = Sink {
        tx,
        framing,
        buffer: Vec::new(),
        deadline,
        runtime: tokio::runtime::Handle::current(),
    };
    let writer = AudioWriter::new(sink, format, synthesizer.sample_rate())
        .map_err(|e| ApiError::invalid_param("response_format", e.to_string()))?
        .with_speed(speed as f32);
    {
        let synthesizer = synthesizer.clone();
        let completed = completed.clone();
        let timeout = state.limits.request_timeout.unwrap_or_default();
        let shared = state.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = permit;
            let stats = synthesize(
                &synthesizer,
                &request,
                frame_cap,
                writer,
                &completed,
                timeout,
            );
            if let Some(stats) = stats {
                shared
                    .metrics
                    .add_audio("speech", stats.audio_s, stats.wall_ms / 1e3);
                shared
                    .metrics
                    .add_speech_prompt(stats.prompt_positions, stats.cached_positions);
            }
        });
    }
    // Errors before the first sound (an unknown voice, …) are answered with their status.
    let first = state.until(deadline, rx.recv()).await?;
    let first = match first {
        Some(Ok(bytes)) => bytes,
        Some(Err(e)) => return Err(e),
        None if completed.load(Ordering::SeqCst) => Bytes::new(),
        None => return Err(ApiError::internal("synthesis stopped unexpectedly")),
    };
    let rest = futures_util::stream::unfold(
        (rx, completed, false),
        move |(mut rx, completed, ended)| async move {
            if ended {
                return None;
            }
            let item = match rx.recv().await {
                Some(Ok(bytes)) => Ok(bytes),
                Some(Err(e)) if framing == Framing::Sse => {
                    let mut event = e.body();
                    event["type"] = "error".into();
                    return Some((Ok(sse_event(&event)), (rx, completed, true)));
                }
                Some(Err(e)) => Err(std::io::Error::other(e.message)),
                None if completed.load(Ordering::SeqCst) => return None,
                None => Err(std::io::Error::other("synthesis stopped before its end")),
            };
            let ended = item.is_err();
            Some((item, (rx, completed, ended)))
        },
    );
    let stream =
        futures_util::StreamExt::chain(futures_util::stream::once(async { Ok(first) }), rest);
    let content_type = match framing {
        Framing::Audio => format.content_type(),
        Framing::Sse => "text/event-stream",
    };
    Ok((
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The synthesis request of `body`, checked.
fn speech_request(
    body: &SpeechBody,
    synthesizer: &Synthesizer,
    frame_cap: usize,
) -> Result<SpeechRequest, ApiError> {
    let text = body.input.as_deref().unwrap_or_default();
    if text.trim().is_empty() {
        return Err(ApiError::invalid_param(
            "input",
            "no `input`: give the text to say",
        ));
    }
    let chars = text.chars().count();
    if chars > MAX_INPUT_CHARS {
        return Err(ApiError::invalid_param(
            "input",
            format!(
                "`input` is {chars} characters long; this endpoint takes at most {MAX_INPUT_CHARS} (split the text)"
            ),
        ));
    }
    let voice = match &body.voice {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(name.clone()),
        Some(Value::Object(custom)) => match custom.get("id") {
            Some(Value::String(id)) => Some(id.clone()),
            _ => {
                return Err(ApiError::invalid_param(
                    "voice",
                    "a voice object needs a string `id`",
                ))
            }
        },
        Some(_) => {
            return Err(ApiError::invalid_param(
                "voice",
                "`voice` must be a voice name",
            ))
        }
    };
    // A VoiceDesign model's voice is its instruction; OpenAI's clients always send a name.
    let voice = voice.filter(|_| synthesizer.model_type() != ModelType::VoiceDesign);
    let max_frames = match body.max_frames {
        None => DEFAULT_MAX_FRAMES.min(frame_cap),
        Some(0) => {
            return Err(ApiError::invalid_param(
                "max_frames",
                "max_frames must be at least 1",
            ))
        }
        Some(n) if n > frame_cap => {
            return Err(ApiError::invalid_param(
                "max_frames",
                format!(
                    "max_frames {n} is more audio than this server makes: at most {frame_cap} frames of 80 ms (--max-audio-s)"
                ),
            ))
        }
        Some(n) => n,
    };
    Ok(SpeechRequest {
        text: text.to_string(),
        voice,
        instruct: body.instructions.clone().filter(|i| !i.trim().is_empty()),
        cloned_voice: None,
        language: Some(body.language.clone().unwrap_or_else(|| "auto".into())),
        params: GenerationParams {
            max_frames,
            ..GenerationParams::default()
        },
        seed: body.seed.unwrap_or(0),
        non_streaming_text: None,
        chunk_frames: CHUNK_FRAMES,
    })
}

/// Why synthesis stopped before its end.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    ClientGone,
    Deadline,
}

/// Runs one synthesis on a blocking thread, its audio encoded and sent by `writer`; marks
/// `completed` when all of it went out. Returns what it took when it ran to its end.
fn synthesize(
    synthesizer: &Synthesizer,
    request: &SpeechRequest,
    frame_cap: usize,
    mut writer: AudioWriter<Sink>,
    completed: &AtomicBool,
    timeout: std::time::Duration,
) -> Option<SpeechStats> {
    let sink = writer.get_ref();
    let (framing, tx, deadline) = (sink.framing, sink.tx.clone(), sink.deadline);
    let mut stop = None;
    let result =
        synthesizer.synthesize_in_parts(request, DEFAULT_PART_CHARS, Some(frame_cap), &mut |pcm| {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                stop = Some(Stop::Deadline);
                return Ok(false);
            }
            match writer.write(pcm) {
                Ok(()) => Ok(true),
                Err(e) => {
                    stop = Some(if e.kind() == std::io::ErrorKind::TimedOut {
                        Stop::Deadline
                    } else {
                        Stop::ClientGone
                    });
                    Ok(false)
                }
            }
        });
    let failure = match (result, stop) {
        (Err(e), _) => ApiError::from(e),
        (Ok(_), Some(Stop::ClientGone)) => return None,
        (Ok(_), Some(Stop::Deadline)) => ApiError::timeout(timeout),
        (Ok(stats), None) => {
            let ended = writer.finish().and_then(|mut sink| {
                if framing == Framing::Sse {
                    sink.buffer = sse_event(&json!({ "type": "speech.audio.done" })).to_vec();
                    sink.send_buffer()?;
                }
                Ok(())
            });
            if ended.is_ok() {
                completed.store(true, Ordering::SeqCst);
            }
            tracing::debug!(
                frames = stats.frames,
                wall_ms = stats.wall_ms,
                "speech done"
            );
            return Some(stats);
        }
    };
    // The client may no longer read; it then sees the stream cut off.
    let _ = tx.try_send(Err(failure));
    None
}

/// The audio's way to the response: what [`AudioWriter`] writes between two flushes (one chunk)
/// becomes one message, raw or as a `speech.audio.delta` event.
struct Sink {
    tx: mpsc::Sender<Result<Bytes, ApiError>>,
    framing: Framing,
    buffer: Vec<u8>,
    deadline: Option<Instant>,
    runtime: tokio::runtime::Handle,
}

impl Sink {
    /// Sends the buffer as it is, waiting for room up to the deadline.
    fn send_buffer(&mut self) -> std::io::Result<()> {
        let message = Ok(Bytes::from(std::mem::take(&mut self.buffer)));
        let sent = match self.deadline {
            Some(at) => self
                .runtime
                .block_on(tokio::time::timeout_at(at, self.tx.send(message)))
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?,
            None => self.runtime.block_on(self.tx.send(message)),
        };
        sent.map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if self.framing == Framing::Sse {
            let audio = base64::engine::general_purpose::STANDARD.encode(&self.buffer);
            self.buffer =
                sse_event(&json!({ "type": "speech.audio.delta", "audio": audio })).to_vec();
        }
        self.send_buffer()
    }
}
