//! `POST /v1/audio/transcriptions` and `/v1/audio/translations`: OpenAI's multipart form
//! (`file`, `model`, `language`, `prompt`, `response_format`, `temperature`,
//! `timestamp_granularities[]`, `stream`, `chunking_strategy`) in; the transcript out,
//! rendered exactly as `voxide transcribe --format …` writes it (same decoding settings:
//! greedy at the given temperature without fallback, segment timestamps; with
//! `chunking_strategy`, only the speech the server's VAD finds, as `--vad`), or as
//! server-sent `transcript.text.delta` events, one per segment as soon as it is decoded, and
//! a `transcript.text.done`.

use crate::limits::{declared_length, refuse_declared_over};
use crate::{event_stream, sse_event, ApiError, AppState, Engine};
use axum::body::Bytes;
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Multipart, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;
use voxide_audio::{decode_bytes, mono_at_rate};
use voxide_models::silero_vad::{SileroVad, VadParams};
use voxide_runtime::{
    render, transcribe_speech, vad_params, OutputFormat, Progress, Segment, TranscribeRequest,
    Transcriber, Transcript,
};

/// The name audio errors use when the upload has no file name.
const UPLOAD_NAME: &str = "<upload>";

/// `POST /v1/audio/transcriptions`.
pub(crate) async fn transcriptions(
    state: State<AppState>,
    headers: HeaderMap,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    handle(state, &headers, form, false).await
}

/// `POST /v1/audio/translations`: the speech translated into English.
pub(crate) async fn translations(
    state: State<AppState>,
    headers: HeaderMap,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    handle(state, &headers, form, true).await
}

/// 413 before reading an upload whose declared length is over `--max-upload-mb` (plus the
/// form's overhead).
pub(crate) async fn refuse_large_uploads(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let limit = state.limits.max_upload_bytes;
    let refusal = || too_large(limit);
    refuse_declared_over(limit + crate::FORM_OVERHEAD_BYTES, refusal, request, next).await
}

fn too_large(limit: usize) -> ApiError {
    ApiError::too_large(format!(
        "the upload is larger than this server accepts: {} (--max-upload-mb)",
        megabytes(limit)
    ))
    .with_param("file")
}

fn megabytes(bytes: usize) -> String {
    format!("{:.0} MB", bytes as f64 / (1024.0 * 1024.0))
}

/// The uploaded audio file.
struct Upload {
    /// Its file name, for messages.
    name: String,
    bytes: Vec<u8>,
}

/// The form's fields, as sent.
#[derive(Default)]
struct Form {
    file: Option<Upload>,
    model: Option<String>,
    language: Option<String>,
    prompt: Option<String>,
    response_format: Option<String>,
    temperature: Option<String>,
    timestamp_granularities: Vec<String>,
    stream: Option<String>,
    chunking_strategy: Option<String>,
    /// `chunking_strategy[KEY]` fields, as the Python client sends an object.
    chunking_fields: Vec<(String, String)>,
}

/// A request, checked.
struct Options {
    request: TranscribeRequest,
    format: OutputFormat,
    stream: bool,
    chunking: Option<Chunking>,
}

/// `chunking_strategy`: transcribe only the speech that the server's VAD finds, as `voxide
/// transcribe --vad` (its defaults for `auto`); a `server_vad` object sets OpenAI's three
/// knobs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Chunking {
    threshold: Option<f64>,
    prefix_padding_ms: Option<u32>,
    silence_duration_ms: Option<u32>,
}

impl Chunking {
    /// The VAD's parameters for `model`: `voxide transcribe --vad`'s, with the request's knobs
    /// (`prefix_padding_ms` pads each stretch of speech, `silence_duration_ms` is the shortest
    /// silence that ends one).
    fn params(&self, model: &dyn Transcriber) -> VadParams {
        let defaults = vad_params(model);
        VadParams {
            threshold: self.threshold.unwrap_or(defaults.threshold),
            speech_pad_ms: self.prefix_padding_ms.unwrap_or(defaults.speech_pad_ms),
            min_silence_duration_ms: self
                .silence_duration_ms
                .unwrap_or(defaults.min_silence_duration_ms),
            ..defaults
        }
    }

    /// `chunking_strategy` as sent: `auto`, a JSON object, or bracketed fields.
    fn from_form(form: &Form) -> Result<Option<Self>, ApiError> {
        let invalid = |m: String| ApiError::invalid_param("chunking_strategy", m);
        let mut fields = form.chunking_fields.clone();
        match form.chunking_strategy.as_deref().map(str::trim) {
            None | Some("") if fields.is_empty() => return Ok(None),
            None | Some("") => {}
            Some("auto") if fields.is_empty() => return Ok(Some(Self::default())),
            Some(json) => {
                let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)
                    .map_err(|_| {
                        invalid(format!(
                            "chunking_strategy {json:?} must be \"auto\" or a server_vad object"
                        ))
                    })?;
                for (key, value) in object {
                    let value = match value {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    fields.push((key, value));
                }
            }
        }
        let mut chunking = Self::default();
        let mut kind = None;
        for (key, value) in &fields {
            let number = || {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| {
                        invalid(format!(
                            "chunking_strategy.{key} {value:?} must be a number"
                        ))
                    })
            };
            let ms = || {
                number()
                    .ok()
                    .filter(|v| (0.0..=10_000.0).contains(v))
                    .map(|v| v as u32)
                    .ok_or_else(|| {
                        invalid(format!(
                            "chunking_strategy.{key} {value:?} must be milliseconds from 0 to 10000"
                        ))
                    })
            };
            match key.as_str() {
                "type" => kind = Some(value.as_str()),
                "threshold" => {
                    let t = number()?;
                    if !(t > 0.0 && t < 1.0) {
                        return Err(invalid(format!(
                            "chunking_strategy.threshold {t} must lie between 0 and 1"
                        )));
                    }
                    chunking.threshold = Some(t);
                }
                "prefix_padding_ms" => chunking.prefix_padding_ms = Some(ms()?),
                "silence_duration_ms" => chunking.silence_duration_ms = Some(ms()?),
                other => {
                    return Err(invalid(format!(
                        "chunking_strategy has no field {other:?} (type, threshold, prefix_padding_ms, silence_duration_ms)"
                    )))
                }
            }
        }
        match kind {
            Some("server_vad") => Ok(Some(chunking)),
            other => Err(invalid(format!(
                "chunking_strategy type {:?} is not supported; use \"auto\" or type server_vad",
                other.unwrap_or("")
            ))),
        }
    }
}

async fn handle(
    State(state): State<AppState>,
    headers: &HeaderMap,
    form: Result<Multipart, MultipartRejection>,
    translate: bool,
) -> Result<Response, ApiError> {
    let form = form.map_err(|e| {
        ApiError::bad_request(format!(
            "expected a multipart/form-data body with the audio in `file`: {}",
            e.body_text()
        ))
    })?;
    // The request's time runs from its arrival: a client that stalls inside its body gets
    // the 504 and frees its upload slot like any other.
    let deadline = state.deadline();
    // At most as many uploads are held in memory as can run or wait: a request beyond them
    // is turned away before its body is read.
    let upload_slot = state
        .uploads
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::busy())?;
    // The file takes most of the body: room for it at once, not by doubling (a 25 MB upload
    // would otherwise peak at 16 + 32 MB while its buffer grows).
    let max_upload = state.limits.max_upload_bytes;
    let expected = declared_length(headers).map_or(0, |n| (n as usize).min(max_upload));
    let mut form = state
        .until(deadline, read_form(form, max_upload, expected))
        .await??;
    let upload = form.file.take().ok_or_else(|| {
        ApiError::invalid_param("file", "no `file` field: upload the audio as `file`")
    })?;
    if upload.bytes.is_empty() {
        return Err(ApiError::invalid_param(
            "file",
            format!("{}: the uploaded file is empty", upload.name),
        ));
    }
    let model = state.requested_model(form.model.as_deref())?;
    let Engine::Transcriber(transcriber) = &model.engine else {
        return Err(ApiError::invalid_param(
            "model",
            format!(
                "{} is a {} model; POST /v1/audio/speech to use it",
                model.id,
                model.engine.kind()
            ),
        ));
    };
    let options = options(&form, translate)?;
    if options.chunking.is_some() && state.models.vad().is_none() {
        return Err(ApiError::invalid_param(
            "chunking_strategy",
            "this server has no voice activity detector: start it with --vad-model",
        ));
    }
    let task = if translate { "translate" } else { "transcribe" };

    let permit = state.admit(deadline).await?;
    let transcriber = transcriber.clone();
    let max_audio_s = state.limits.max_audio_s;
    let request = options.request;
    let chunking = options.chunking;
    let shared = state.clone();
    // Segments go out as they are decoded when streaming; the transcript comes at the end.
    let (tx, mut rx) = mpsc::channel::<Result<Piece, ApiError>>(PIECES);
    let stream = options.stream;
    // A client that goes away stops the decoding at its next window: a streamed reply's
    // receiver is dropped with the body, a plain one's handler future with this guard.
    let client_gone = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = crate::SetOnDrop(client_gone.clone());
    tokio::task::spawn_blocking(move || {
        let _slots = (permit, upload_slot);
        let clock = std::time::Instant::now();
        let mut deltas = crate::Deltas::default();
        let mut send_new = |segments: &[Segment], pending: &str| {
            if !stream {
                return !client_gone.load(Ordering::Relaxed);
            }
            deltas
                .next(segments, pending)
                .into_iter()
                .all(|delta| tx.blocking_send(Ok(Piece::Delta(delta))).is_ok())
        };
        let vad = chunking.and_then(|c| {
            let params = c.params(transcriber.as_ref());
            shared.models.vad().map(|vad| (vad, params))
        });
        let result = transcribe(
            transcriber.as_ref(),
            &upload,
            &request,
            vad,
            max_audio_s,
            &mut |p| send_new(p.segments, p.pending),
        );
        let piece = result.map(|transcript| {
            if stream {
                send_new(&transcript.segments, "");
            }
            let wall_s = clock.elapsed().as_secs_f64();
            shared
                .metrics
                .add_audio("transcription", transcript.duration, wall_s);
            Piece::Done(transcript)
        });
        let _ = tx.blocking_send(piece);
    });
    // Errors before the first piece (bad audio, …) are answered with their status; past the
    // deadline the answer is 504 (and the decoding stops at its next window).
    let first = match state.until(deadline, rx.recv()).await? {
        Some(piece) => piece?,
        None => return Err(ApiError::internal("the transcription stopped unexpectedly")),
    };
    Ok(match first {
        Piece::Done(transcript) if !stream => {
            let content_type = match options.format {
                OutputFormat::Json | OutputFormat::VerboseJson => "application/json",
                _ => "text/plain; charset=utf-8",
            };
            (
                [(CONTENT_TYPE, content_type)],
                render(&transcript, options.format, task),
            )
                .into_response()
        }
        first => events(first, rx, deadline, state.limits.request_timeout),
    })
}

/// Pieces waiting for a streamed reply.
const PIECES: usize = 64;

/// What the decoding thread hands the reply.
enum Piece {
    /// New text (streaming).
    Delta(String),
    /// The whole transcript.
    Done(Transcript),
}

impl Piece {
    /// The server-sent event of OpenAI's transcription stream.
    fn event(&self) -> Bytes {
        sse_event(&match self {
            Piece::Delta(text) => json!({ "type": "transcript.text.delta", "delta": text }),
            Piece::Done(transcript) => {
                json!({ "type": "transcript.text.done", "text": transcript.text })
            }
        })
    }
}

/// OpenAI's stream: a delta per segment as it is decoded, then the whole text; an error
/// (or the deadline) after the first event ends it with an `error` event.
fn events(
    first: Piece,
    rx: mpsc::Receiver<Result<Piece, ApiError>>,
    deadline: Option<Instant>,
    timeout: Option<std::time::Duration>,
) -> Response {
    let done = matches!(first, Piece::Done(_));
    event_stream(
        first.event(),
        done,
        rx,
        deadline,
        timeout,
        |piece| (piece.event(), matches!(piece, Piece::Done(_))),
        |e| {
            let mut event = e.body();
            event["type"] = "error".into();
            sse_event(&event)
        },
    )
}

/// Most fields a transcription form may have: OpenAI's has a dozen; tens of thousands of tiny
/// fields in an upload's bytes would only cost time.
const MAX_FORM_FIELDS: usize = 256;

/// Reads every field; the file is cut off at `max_upload` bytes (413); `expected`: the room
/// to make for it.
async fn read_form(
    mut form: Multipart,
    max_upload: usize,
    expected: usize,
) -> Result<Form, ApiError> {
    let mut out = Form::default();
    let mut seen = std::collections::HashSet::new();
    let mut fields = 0usize;
    while let Some(field) = form.next_field().await.map_err(form_error)? {
        fields += 1;
        if fields > MAX_FORM_FIELDS {
            return Err(ApiError::bad_request(format!(
                "the form has more than {MAX_FORM_FIELDS} fields"
            )));
        }
        let name = field.name().unwrap_or_default().to_string();
        // Which of two values was meant is not ours to guess (list fields aside).
        let single = !(name.ends_with("[]") || name == "timestamp_granularities");
        if !seen.insert(name.clone()) && single {
            return Err(ApiError::invalid_param(
                &name,
                format!("`{name}` is given twice: send each field once"),
            ));
        }
        match name.as_str() {
            "file" => {
                let file_name = field
                    .file_name()
                    .filter(|n| !n.is_empty())
                    .unwrap_or(UPLOAD_NAME)
                    .to_string();
                out.file = Some(Upload {
                    name: file_name,
                    bytes: read_file(field, max_upload, expected).await?,
                });
            }
            "model" => out.model = Some(text(field).await?),
            "language" => out.language = Some(text(field).await?),
            "prompt" => out.prompt = Some(text(field).await?),
            "response_format" => out.response_format = Some(text(field).await?),
            "temperature" => out.temperature = Some(text(field).await?),
            "timestamp_granularities[]" | "timestamp_granularities" => {
                out.timestamp_granularities.push(text(field).await?)
            }
            "stream" => out.stream = Some(text(field).await?),
            "chunking_strategy" => out.chunking_strategy = Some(text(field).await?),
            _ if name.starts_with("chunking_strategy[") && name.ends_with(']') => {
                let key = name["chunking_strategy[".len()..name.len() - 1].to_string();
                out.chunking_fields.push((key, text(field).await?));
            }
            // Fields of other models (`include[]`, …) do not apply.
            _ => {}
        }
    }
    Ok(out)
}

async fn read_file(
    mut field: Field<'_>,
    max_upload: usize,
    expected: usize,
) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::with_capacity(expected);
    while let Some(chunk) = field.chunk().await.map_err(form_error)? {
        if bytes.len() + chunk.len() > max_upload {
            return Err(too_large(max_upload));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

async fn text(field: Field<'_>) -> Result<String, ApiError> {
    Ok(field.text().await.map_err(form_error)?.trim().to_string())
}

fn form_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(format!(
            "the upload is larger than this server accepts (--max-upload-mb): {}",
            e.body_text()
        ))
    } else {
        ApiError::bad_request(format!("cannot read the multipart form: {}", e.body_text()))
    }
}

/// Checks the form's options and turns them into the CLI's request.
fn options(form: &Form, translate: bool) -> Result<Options, ApiError> {
    let format = match form.response_format.as_deref().unwrap_or("json") {
        "json" | "" => OutputFormat::Json,
        "text" => OutputFormat::Txt,
        "srt" => OutputFormat::Srt,
        "vtt" => OutputFormat::Vtt,
        "verbose_json" => OutputFormat::VerboseJson,
        other => {
            return Err(ApiError::invalid_param(
                "response_format",
                format!(
                    "response_format {other:?} is not supported; use json, text, srt, vtt or verbose_json"
                ),
            ))
        }
    };
    let temperature = match form.temperature.as_deref() {
        None | Some("") => 0.0,
        Some(t) => t
            .parse::<f32>()
            .ok()
            .filter(|t| (0.0..=1.0).contains(t))
            .ok_or_else(|| {
                ApiError::invalid_param(
                    "temperature",
                    format!("temperature {t:?} must be a number from 0 to 1"),
                )
            })?,
    };
    let mut word_timestamps = false;
    for granularity in &form.timestamp_granularities {
        match granularity.as_str() {
            "segment" => {}
            "word" => word_timestamps = true,
            other => {
                return Err(ApiError::invalid_param(
                    "timestamp_granularities",
                    format!("unknown timestamp granularity {other:?}; use segment or word"),
                ))
            }
        }
    }
    if word_timestamps && format != OutputFormat::VerboseJson {
        return Err(ApiError::invalid_param(
            "timestamp_granularities",
            "word timestamps come in verbose_json: set response_format=verbose_json",
        ));
    }
    let stream = match form.stream.as_deref() {
        None | Some("") => false,
        Some(s) if s.eq_ignore_ascii_case("true") || s == "1" => true,
        Some(s) if s.eq_ignore_ascii_case("false") || s == "0" => false,
        Some(s) => {
            return Err(ApiError::invalid_param(
                "stream",
                format!("stream {s:?} must be true or false"),
            ))
        }
    };
    if stream && !matches!(format, OutputFormat::Json | OutputFormat::Txt) {
        return Err(ApiError::invalid_param(
            "response_format",
            "stream=true sends text events; use response_format json or text with it",
        ));
    }
    let language = form
        .language
        .clone()
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "auto".into());
    let request = TranscribeRequest {
        language: Some(language),
        translate,
        prompt: form.prompt.clone().filter(|p| !p.is_empty()),
        temperature,
        word_timestamps,
        ..TranscribeRequest::default()
    };
    Ok(Options {
        request,
        format,
        stream,
        chunking: Chunking::from_form(form)?,
    })
}

/// Decodes the upload and transcribes it (on a blocking thread); with `vad`, only the speech
/// it finds.
fn transcribe(
    model: &dyn Transcriber,
    upload: &Upload,
    request: &TranscribeRequest,
    vad: Option<(&SileroVad, VadParams)>,
    max_audio_s: f64,
    progress: &mut dyn FnMut(Progress<'_>) -> bool,
) -> Result<Transcript, ApiError> {
    let audio = decode_bytes(&upload.bytes, &upload.name)?;
    let duration = audio.duration_s();
    if duration > max_audio_s {
        return Err(ApiError::invalid_param(
            "file",
            format!(
                "{}: {duration:.1} s of audio; this server transcribes at most {max_audio_s} s (--max-audio-s)",
                upload.name
            ),
        ));
    }
    let samples = mono_at_rate(audio, model.sample_rate(), &upload.name)?;
    let (transcript, _) = match vad {
        Some((vad, params)) => transcribe_speech(model, vad, &params, &samples, request, progress)?,
        None => model.transcribe(&samples, request, progress)?,
    };
    Ok(transcript)
}
