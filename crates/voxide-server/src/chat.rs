//! `POST /v1/chat/completions`: questions about audio, or text alone, for models that answer
//! them (Voxtral Mini 3B), in OpenAI's Chat Completions shape as vLLM serves Voxtral — so that
//! the official clients' `chat.completions.create` works against a local server.
//!
//! A message's `content` is a string or a list of parts: `text`, `input_audio` (OpenAI's
//! `{"data": base64, "format": …}`, or Mistral's bare base64 string) and `audio_url` (vLLM's;
//! `data:` URLs only: the server fetches nothing). Audio in any format voxide reads, at most
//! `--max-audio-s` in all; the conversation is prompted as mistral-common builds it
//! (`voxtral::prompt::chat`). Roles `user`, `assistant`, `system` (and `developer`, OpenAI's
//! name for it); a system message is refused beside audio, as mistral-common refuses one for
//! Voxtral's tokenizer.
//!
//! Sampling: `temperature` (0–2, OpenAI's default 1; 0 is greedy), `top_p`, `seed` (default
//! 0: the same request gives the same answer, as `/v1/audio/speech`), `max_completion_tokens`
//! or `max_tokens` (default 1024, as `voxide ask`), `stop` (up to 4 strings, cut from the
//! answer, as OpenAI), `frequency_penalty` and `presence_penalty` (−2–2, over the generated
//! tokens, as vLLM applies them). `stream: true` sends `chat.completion.chunk` events as the answer
//! decodes, then `data: [DONE]`; `stream_options.include_usage` adds the usage chunk. What
//! the model cannot do (`n` > 1, tools, audio or JSON output) is refused by name rather than
//! ignored. `logprobs` (with `top_logprobs` up to 20) gives each answer token's
//! log-probability under the model's raw logits, as vLLM's default, whole or streamed.

use crate::limits::refuse_declared_over;
use crate::{event_stream, json_body, sse_event, ApiError, AppState, Engine};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use voxide_audio::{decode_bytes, mono_at_rate};
use voxide_models::tekken::Tekken;
use voxide_models::voxtral::{self, Content, GenerateOptions, Message, Role, Stop, TokenLogprobs};

/// Answer tokens when the request does not say (as `voxide ask`).
pub const DEFAULT_MAX_TOKENS: usize = 1024;
/// Most `stop` strings (OpenAI's limit).
const MAX_STOPS: usize = 4;
/// Most alternatives per token in `top_logprobs` (OpenAI's limit).
const MAX_TOP_LOGPROBS: usize = 20;
/// Pieces of an answer buffered between decoding and a slow client.
const PIECES: usize = 64;

/// Largest body (axum's limit, and the declared length refused before reading): the audio
/// of the largest upload (`--max-upload-mb`) in base64, and the conversation's text around it.
pub(crate) fn max_body_bytes(max_upload_bytes: usize) -> usize {
    max_upload_bytes.div_ceil(3) * 4 + crate::FORM_OVERHEAD_BYTES
}

/// 413 before reading a body whose declared length is over [`max_body_bytes`].
pub(crate) async fn refuse_large_bodies(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let limit = max_body_bytes(state.limits.max_upload_bytes);
    refuse_declared_over(limit, || too_large(limit), request, next).await
}

fn too_large(limit: usize) -> ApiError {
    ApiError::body_too_large(format!(
        "the request body is larger than this server accepts: {:.0} MB (the audio of --max-upload-mb in base64)",
        limit as f64 / (1024.0 * 1024.0)
    ))
}

/// The request body as OpenAI's clients send it.
#[derive(Deserialize)]
struct ChatBody {
    model: Option<String>,
    messages: Option<Vec<Value>>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<i64>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    stop: Option<Value>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<usize>,
    logprobs: Option<bool>,
    top_logprobs: Option<usize>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    tools: Option<Vec<Value>>,
    response_format: Option<Value>,
    modalities: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// The body, or a 400 that names the field of the wrong type.
fn parse_body(body: &[u8]) -> Result<ChatBody, ApiError> {
    let expected = |field: &str| match field {
        "model" => Some("a string"),
        "messages" => Some("a list of messages"),
        "temperature" | "top_p" | "frequency_penalty" | "presence_penalty" => Some("a number"),
        "seed" => Some("a whole number"),
        "max_tokens" | "max_completion_tokens" | "n" | "top_logprobs" => Some("a whole number ≥ 0"),
        "stream" | "logprobs" | "stream_options.include_usage" => Some("true or false"),
        "tools" | "modalities" => Some("a list"),
        _ => None,
    };
    json_body(
        body,
        expected,
        "the body must be a JSON object with `model` and `messages`",
    )
}

/// A request, checked: the conversation with its clips still encoded, and how to answer.
struct Chat {
    messages: Vec<Message>,
    clips: Vec<Clip>,
    options: GenerateOptions,
    stops: Vec<String>,
    stream: bool,
    include_usage: bool,
}

/// One audio part: where it is (for messages) and its encoded bytes.
struct Clip {
    name: String,
    bytes: Vec<u8>,
}

/// `POST /v1/chat/completions`.
pub(crate) async fn completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(max_body_bytes(state.limits.max_upload_bytes)),
        _ => ApiError::bad_request(format!("cannot read the body: {}", e.body_text())),
    })?;
    let body = parse_body(&body)?;
    let model = state.requested_model(body.model.as_deref())?;
    let transcriber = match &model.engine {
        Engine::Transcriber(t) if t.chat().is_some() => t.clone(),
        engine => {
            return Err(ApiError::invalid_param(
                "model",
                format!(
                    "{} is a {} model that answers no questions; chat completions need Voxtral Mini 3B (mistralai/Voxtral-Mini-3B-2507)",
                    model.id,
                    engine.kind()
                ),
            ))
        }
    };
    let mut chat = checked(body)?;
    let deadline = state.deadline();
    let permit = state.admit(deadline).await?;
    let (tx, mut rx) = mpsc::channel::<Result<Piece, ApiError>>(PIECES);
    let client_gone = Arc::new(AtomicBool::new(false));
    let cancel_on_drop = crate::SetOnDrop(client_gone.clone());
    // A client gone (or a request past its deadline) stops the work where it stands, a long
    // prompt's prefill included.
    chat.options.cancel = Some(client_gone.clone());
    let max_audio_s = state.limits.max_audio_s;
    let shared = state.clone();
    let (stream, include_usage) = (chat.stream, chat.include_usage);
    tokio::task::spawn_blocking(move || {
        let _slot = permit;
        let clock = std::time::Instant::now();
        let model = transcriber.chat().expect("checked above");
        let result = answer(model, chat, max_audio_s, &mut |piece| {
            if stream {
                tx.blocking_send(Ok(Piece::Text(piece))).is_ok()
            } else {
                !client_gone.load(Ordering::Relaxed)
            }
        });
        if let Ok(answer) = &result {
            let wall_s = clock.elapsed().as_secs_f64();
            shared.metrics.add_audio("chat", answer.audio_s, wall_s);
        }
        let _ = tx.blocking_send(result.map(Piece::Done));
    });
    let id = completion_id();
    let created = unix_time();
    let model_id = model.id.clone();
    // Errors before the first piece (bad audio, a prompt over the context, …) are answered
    // with their status; past the deadline the answer is 504.
    let first = match state.until(deadline, rx.recv()).await? {
        Some(piece) => piece?,
        None => return Err(ApiError::internal("the answer stopped unexpectedly")),
    };
    let head = Head {
        id,
        created,
        model: model_id,
    };
    Ok(match first {
        Piece::Done(answer) if !stream => Json(head.completion(&answer)).into_response(),
        first => events(
            head,
            first,
            rx,
            include_usage,
            deadline,
            state.limits.request_timeout,
            cancel_on_drop,
        ),
    })
}

/// Checks everything that needs no model and no audio decoding.
fn checked(body: ChatBody) -> Result<Chat, ApiError> {
    let refuse = |field: &str, what: &str| {
        ApiError::invalid_param(field, format!("{what} is not supported by this server"))
    };
    if body.n == Some(0) {
        return Err(ApiError::invalid_param("n", "n must be 1 (one choice)"));
    }
    if body.n.is_some_and(|n| n != 1) {
        return Err(refuse("n", "more than one choice (`n` > 1)"));
    }
    let logprobs = body.logprobs.unwrap_or(false);
    if let Some(top) = body.top_logprobs {
        if !logprobs {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            ));
        }
        if top > MAX_TOP_LOGPROBS {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                format!("top_logprobs {top} must lie in [0, {MAX_TOP_LOGPROBS}]"),
            ));
        }
    }
    for (field, value) in [
        ("frequency_penalty", body.frequency_penalty),
        ("presence_penalty", body.presence_penalty),
    ] {
        if value.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
            return Err(ApiError::invalid_param(
                field,
                format!("{field} must lie in [-2, 2]"),
            ));
        }
    }
    if body.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(refuse("tools", "tool calling"));
    }
    match body.response_format.as_ref().map(|f| &f["type"]) {
        None => {}
        Some(Value::String(kind)) if kind == "text" => {}
        Some(_) => {
            return Err(refuse(
                "response_format",
                "a response format other than text",
            ))
        }
    }
    if let Some(other) = body.modalities.iter().flatten().find(|m| *m != "text") {
        return Err(refuse("modalities", &format!("output modality {other:?}")));
    }
    let temperature = body.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid_param(
            "temperature",
            format!("temperature {temperature} must lie in [0, 2]"),
        ));
    }
    let top_p = body.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid_param(
            "top_p",
            format!("top_p {top_p} must lie in (0, 1]"),
        ));
    }
    let (field, max_tokens) = match (body.max_completion_tokens, body.max_tokens) {
        (Some(n), _) => ("max_completion_tokens", n),
        (None, Some(n)) => ("max_tokens", n),
        (None, None) => ("max_completion_tokens", DEFAULT_MAX_TOKENS),
    };
    if max_tokens == 0 {
        return Err(ApiError::invalid_param(
            field,
            format!("{field} must be at least 1"),
        ));
    }
    let stops = stop_strings(body.stop.as_ref())?;
    let (messages, clips) = conversation(body.messages.as_deref().unwrap_or_default())?;
    Ok(Chat {
        messages,
        clips,
        options: GenerateOptions {
            max_new_tokens: max_tokens,
            temperature,
            top_p,
            frequency_penalty: body.frequency_penalty.unwrap_or(0.0),
            presence_penalty: body.presence_penalty.unwrap_or(0.0),
            // OpenAI's seeds are signed; any value picks a sequence.
            seed: body.seed.unwrap_or(0) as u64,
            logprobs: logprobs.then_some(body.top_logprobs.unwrap_or(0)),
            ..GenerateOptions::default()
        },
        stops,
        stream: body.stream.unwrap_or(false),
        include_usage: body
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    })
}

/// `stop`: a string or a list of at most [`MAX_STOPS`] non-empty strings.
fn stop_strings(stop: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let invalid = |m: String| ApiError::invalid_param("stop", m);
    let stops: Vec<String> = match stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| invalid("`stop` must be a string or a list of strings".into()))?,
        Some(_) => {
            return Err(invalid(
                "`stop` must be a string or a list of strings".into(),
            ))
        }
    };
    if stops.len() > MAX_STOPS {
        return Err(invalid(format!(
            "`stop` takes at most {MAX_STOPS} strings, got {}",
            stops.len()
        )));
    }
    if stops.iter().any(String::is_empty) {
        return Err(invalid("a `stop` string is empty".into()));
    }
    Ok(stops)
}

/// The messages as the prompt builder takes them, and their audio parts in order.
fn conversation(json: &[Value]) -> Result<(Vec<Message>, Vec<Clip>), ApiError> {
    let invalid = |m: String| ApiError::invalid_param("messages", m);
    if json.is_empty() {
        return Err(invalid("no `messages`: give the conversation".into()));
    }
    let mut messages = Vec::new();
    let mut clips = Vec::new();
    for (i, message) in json.iter().enumerate() {
        let role = match message["role"].as_str() {
            Some(name) => Role::from_name(name).ok_or_else(|| {
                invalid(format!(
                    "messages[{i}]: role {name:?} is not supported (user, assistant, system, developer)"
                ))
            })?,
            None => return Err(invalid(format!("messages[{i}] has no `role`"))),
        };
        let content = match &message["content"] {
            Value::String(text) => vec![Content::Text(text.clone())],
            Value::Array(parts) => parts
                .iter()
                .enumerate()
                .map(|(j, part)| {
                    let at = format!("messages[{i}].content[{j}]");
                    Ok(match part["type"].as_str() {
                        Some("text") => Content::Text(
                            part["text"]
                                .as_str()
                                .ok_or_else(|| invalid(format!("{at}: a text part without `text`")))?
                                .to_string(),
                        ),
                        Some(kind @ ("input_audio" | "audio_url")) => {
                            clips.push(Clip {
                                bytes: audio_bytes(kind, &part[kind], &at)?,
                                name: at,
                            });
                            Content::Audio { windows: 1 }
                        }
                        Some(other) => {
                            return Err(invalid(format!(
                                "{at}: part type {other:?} is not supported (text, input_audio, audio_url)"
                            )))
                        }
                        None => return Err(invalid(format!("{at} has no `type`"))),
                    })
                })
                .collect::<Result<_, ApiError>>()?,
            Value::Null if message.get("tool_calls").is_some() => {
                return Err(invalid(format!("messages[{i}]: tool calls are not supported")))
            }
            Value::Null => return Err(invalid(format!("messages[{i}] has no `content`"))),
            _ => {
                return Err(invalid(format!(
                    "messages[{i}].content must be a string or a list of parts"
                )))
            }
        };
        messages.push(Message { role, content });
    }
    voxtral::prompt::check_conversation(&messages).map_err(|e| match e {
        voxide_models::Error::InvalidRequest(m) => invalid(m),
        e => ApiError::from(e),
    })?;
    Ok((messages, clips))
}

/// The encoded bytes of an `input_audio` part (`{"data": base64, "format": …}`, or the base64
/// itself as Mistral's API sends it) or an `audio_url` part (`{"url": "data:…;base64,…"}`, or
/// the URL itself).
fn audio_bytes(kind: &str, value: &Value, at: &str) -> Result<Vec<u8>, ApiError> {
    let invalid = |m: String| ApiError::invalid_param("messages", format!("{at}: {m}"));
    // The part's value: the string itself, or the string in its object's `field`.
    let text_of = |field: &str, what: &str| match value {
        Value::String(text) => Ok(text.as_str()),
        Value::Object(audio) => audio
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("{kind} needs {what}"))),
        _ => Err(invalid(format!("{kind} must hold {what}"))),
    };
    let base64_text = if kind == "input_audio" {
        text_of("data", "its base64 `data`")?
    } else {
        let url = text_of("url", "a `url`")?;
        let Some(data) = url.strip_prefix("data:") else {
            return Err(invalid(
                "only data: URLs are taken (this server fetches nothing): send the audio inline, base64 in a data: URL or an input_audio part"
                    .into(),
            ));
        };
        let (header, payload) = data
            .split_once(',')
            .ok_or_else(|| invalid("a data: URL without its `,`".into()))?;
        if !header.ends_with(";base64") {
            return Err(invalid(
                "the data: URL must be base64 (`data:audio/…;base64,…`)".into(),
            ));
        }
        payload
    };
    base64::engine::general_purpose::STANDARD
        .decode(base64_text.trim())
        .map_err(|e| invalid(format!("the audio is not valid base64: {e}")))
}

/// What a finished answer carries.
struct Answer {
    text: String,
    finish_reason: &'static str,
    prompt_tokens: usize,
    completion_tokens: usize,
    audio_s: f64,
    /// OpenAI's `logprobs` object where they were asked for.
    logprobs: Option<Value>,
}

/// What the decoding thread hands the reply.
enum Piece {
    /// A piece of the answer (streaming).
    Text(Said),
    Done(Answer),
}

/// A piece of the answer as it goes out: its text (`stop` strings already cut) and, where
/// they were asked for, the `logprobs` entries of the tokens whose text starts in it.
struct Said {
    text: String,
    logprobs: Option<Vec<Value>>,
}

/// Decodes the clips and answers (on a blocking thread); `send` takes each piece of the
/// answer as it decodes (false: nobody listens, stop).
fn answer(
    model: &voxtral::Voxtral,
    chat: Chat,
    max_audio_s: f64,
    send: &mut dyn FnMut(Said) -> bool,
) -> Result<Answer, ApiError> {
    let mut clips = Vec::with_capacity(chat.clips.len());
    let mut audio_s = 0.0;
    for clip in &chat.clips {
        let audio_error =
            |e: voxide_audio::AudioError| ApiError::invalid_param("messages", e.to_string());
        let audio = decode_bytes(&clip.bytes, &clip.name).map_err(audio_error)?;
        audio_s += audio.duration_s();
        if audio_s > max_audio_s {
            return Err(ApiError::invalid_param(
                "messages",
                format!("the conversation holds more than {max_audio_s} s of audio, the most this server takes (--max-audio-s)"),
            ));
        }
        clips.push(mono_at_rate(audio, voxtral::SAMPLE_RATE, &clip.name).map_err(audio_error)?);
    }
    let mut stops = StopMatcher::new(chat.stops);
    let mut reply = Reply {
        said: String::new(),
        logprobs: chat.options.logprobs.map(|_| Vec::new()),
        listening: true,
        send,
    };
    // Each token's entry waits, with where its text starts in the decoded answer, until the
    // text it starts is said (text that may begin a stop string is held back).
    let mut tokens = VecDeque::new();
    let mut decoded = 0;
    let tekken = model.tokenizer();
    let (_, generation) = model.ask(
        &chat.messages,
        &clips,
        &chat.options,
        &mut |piece, logprobs| {
            if let Some(token) = logprobs {
                tokens.push_back((decoded, logprobs_entry(tekken, token)));
            }
            decoded += piece.len();
            let (text, stopped) = stops.push(piece);
            let said = reply.said.len() + text.len();
            let entries = take_started(&mut tokens, said);
            reply.say(text, entries);
            reply.listening && !stopped
        },
    )?;
    let rest = stops.finish();
    // Where a stop string cut the answer, the tokens after the cut are left out with it.
    let entries = match stops.stopped {
        true => take_started(&mut tokens, reply.said.len() + rest.len()),
        false => tokens.drain(..).map(|(_, entry)| entry).collect(),
    };
    reply.say(rest, entries);
    let finish_reason = match generation.stop {
        Stop::MaxTokens if !stops.stopped => "length",
        _ => "stop",
    };
    let logprobs = reply
        .logprobs
        .map(|content| json!({ "content": content, "refusal": null }));
    Ok(Answer {
        text: reply.said,
        finish_reason,
        prompt_tokens: generation.prompt_tokens,
        // The end-of-sequence token counts, as vLLM counts it.
        completion_tokens: generation.ids.len() + usize::from(generation.stop == Stop::Eos),
        audio_s,
        logprobs,
    })
}

/// One token's entry in OpenAI's `logprobs.content`, with its `top_logprobs`.
fn logprobs_entry(tekken: &Tekken, token: &TokenLogprobs) -> Value {
    let entry = |id: u32, logprob: f32| {
        // A special token (an alternative may be one) shows its name.
        let piece = tekken.piece(id);
        let bytes = match tekken.is_text(id) {
            true => tekken.token_bytes(id).to_vec(),
            false => piece.as_bytes().to_vec(),
        };
        json!({ "token": piece, "logprob": logprob, "bytes": bytes })
    };
    let mut e = entry(token.id, token.logprob);
    let top = token.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
    e["top_logprobs"] = Value::Array(top);
    e
}

/// The waiting entries whose text starts before byte `said` of the answer.
fn take_started(tokens: &mut VecDeque<(usize, Value)>, said: usize) -> Vec<Value> {
    let started = tokens.iter().take_while(|(start, _)| *start < said).count();
    tokens.drain(..started).map(|(_, entry)| entry).collect()
}

/// The answer as it goes out: all of it so far (with its tokens' `logprobs` entries where
/// they were asked for), and whether anyone still listens.
struct Reply<'a> {
    said: String,
    logprobs: Option<Vec<Value>>,
    listening: bool,
    send: &'a mut dyn FnMut(Said) -> bool,
}

impl Reply<'_> {
    fn say(&mut self, text: String, entries: Vec<Value>) {
        if (text.is_empty() && entries.is_empty()) || !self.listening {
            return;
        }
        self.said.push_str(&text);
        let logprobs = self.logprobs.as_mut().map(|all| {
            all.extend(entries.iter().cloned());
            entries
        });
        self.listening = (self.send)(Said { text, logprobs });
    }
}

/// Cuts an answer at the first of its `stop` strings, piece by piece: text that may be the
/// start of one is held back until the next piece tells.
struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    /// A stop string was found: the answer ends before it.
    stopped: bool,
}

impl StopMatcher {
    fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            pending: String::new(),
            stopped: false,
        }
    }

    /// Takes the next piece; returns the text that can go out now, and whether a stop string
    /// ended the answer (nothing after it goes out).
    fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.pending.push_str(piece);
        let found = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = found {
            self.stopped = true;
            self.pending.truncate(at);
            return (std::mem::take(&mut self.pending), true);
        }
        // The longest end of the pending text that a stop string begins with stays.
        let held = self
            .stops
            .iter()
            .flat_map(|stop| {
                stop.char_indices()
                    .skip(1)
                    .map(|(i, _)| &stop[..i])
                    .filter(|prefix| self.pending.ends_with(prefix))
                    .map(str::len)
            })
            .max()
            .unwrap_or(0);
        let out = self.pending.len() - held;
        (self.pending.drain(..out).collect(), false)
    }

    /// The text held back when the answer ended without a stop string.
    fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// What every object of one completion shares.
struct Head {
    id: String,
    created: u64,
    model: String,
}

impl Head {
    fn usage(answer: &Answer) -> Value {
        json!({
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        })
    }

    /// The whole answer: OpenAI's `chat.completion`.
    fn completion(&self, answer: &Answer) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": answer.text },
                "logprobs": answer.logprobs,
                "finish_reason": answer.finish_reason,
            }],
            "usage": Self::usage(answer),
        })
    }

    /// One `chat.completion.chunk` with `choices`; with `include_usage` every chunk carries
    /// `usage`, null but in the last (OpenAI's stream).
    fn chunk(&self, choices: Value, usage: Option<Value>, include_usage: bool) -> Bytes {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        sse_event(&chunk)
    }

    fn delta(
        &self,
        delta: Value,
        logprobs: Option<&[Value]>,
        finish_reason: Option<&str>,
        include_usage: bool,
    ) -> Bytes {
        let logprobs = logprobs.map(|content| json!({ "content": content, "refusal": null }));
        let choice = json!([{ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason }]);
        self.chunk(choice, None, include_usage)
    }

    /// The events of one piece: its text, or the end (finish reason, usage, `[DONE]`).
    fn events(&self, piece: &Piece, include_usage: bool) -> Bytes {
        match piece {
            Piece::Text(said) => self.delta(
                json!({ "content": said.text }),
                said.logprobs.as_deref(),
                None,
                include_usage,
            ),
            Piece::Done(answer) => {
                let mut out = self
                    .delta(json!({}), None, Some(answer.finish_reason), include_usage)
                    .to_vec();
                if include_usage {
                    out.extend_from_slice(&self.chunk(json!([]), Some(Self::usage(answer)), true));
                }
                out.extend_from_slice(DONE);
                Bytes::from(out)
            }
        }
    }
}

/// The stream's last event.
const DONE: &[u8] = b"data: [DONE]\n\n";

/// OpenAI's stream: the assistant's role, a chunk per piece of text as it decodes, the finish
/// reason (and usage), `[DONE]`; an error (or the deadline) after the first event is sent as
/// an `error` object, then `[DONE]`, as vLLM ends a failed stream.
fn events(
    head: Head,
    first: Piece,
    rx: mpsc::Receiver<Result<Piece, ApiError>>,
    include_usage: bool,
    deadline: Option<tokio::time::Instant>,
    timeout: Option<std::time::Duration>,
    cancel_on_drop: crate::SetOnDrop,
) -> Response {
    let mut opening = head
        .delta(
            json!({ "role": "assistant", "content": "" }),
            None,
            None,
            include_usage,
        )
        .to_vec();
    opening.extend_from_slice(&head.events(&first, include_usage));
    let done = matches!(first, Piece::Done(_));
    event_stream(
        Bytes::from(opening),
        done,
        rx,
        deadline,
        timeout,
        move |piece| {
            // Held by the stream: the work stops when the stream is dropped, not before.
            let _ = &cancel_on_drop;
            let done = matches!(piece, Piece::Done(_));
            (head.events(piece, include_usage), done)
        },
        |e| {
            let mut out = sse_event(&e.body()).to_vec();
            out.extend_from_slice(DONE);
            Bytes::from(out)
        },
    )
}

/// A new completion's id: `chatcmpl-` and a number unique to this server's run.
fn completion_id() -> String {
    static COMPLETIONS: AtomicU64 = AtomicU64::new(0);
    format!(
        "chatcmpl-{:x}{:06}",
        unix_time(),
        COMPLETIONS.fetch_add(1, Ordering::Relaxed) + 1
    )
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` through a matcher of `stops`; returns what went out and whether a stop
    /// string ended it.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for piece in pieces {
            let (text, stopped) = m.push(piece);
            out.push_str(&text);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_strings_cut_the_answer_wherever_the_pieces_split_them() {
        let text = "The answer is: yes. END and more";
        // Every way of cutting the text into two or three pieces gives the same answer.
        for a in 0..=text.len() {
            for b in a..=text.len() {
                let pieces = [&text[..a], &text[a..b], &text[b..]];
                assert_eq!(
                    run(&["END"], &pieces),
                    ("The answer is: yes. ".into(), true)
                );
                assert_eq!(run(&["ENDS"], &pieces), (text.into(), false), "no match");
            }
        }
        // The earliest of several, however long.
        assert_eq!(run(&["more", "is:"], &[text]), ("The answer ".into(), true));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn held_text_goes_out_as_soon_as_it_cannot_start_a_stop_string() {
        let mut m = StopMatcher::new(vec!["\n\nUser:".into()]);
        assert_eq!(m.push("Hi.\n"), ("Hi.".into(), false));
        assert_eq!(m.push("\nUs"), ("".into(), false));
        assert_eq!(m.push("ually"), ("\n\nUsually".into(), false));
        // Multi-byte characters are held and cut whole.
        let mut m = StopMatcher::new(vec!["日本語".into()]);
        assert_eq!(m.push("これは日本"), ("これは".into(), false));
        assert_eq!(m.push("人"), ("日本人".into(), false));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn stop_lists_are_checked() {
        assert!(stop_strings(None).unwrap().is_empty());
        assert_eq!(stop_strings(Some(&json!("x"))).unwrap(), ["x"]);
        assert_eq!(stop_strings(Some(&json!(["a", "b"]))).unwrap(), ["a", "b"]);
        for bad in [
            json!(["a", "b", "c", "d", "e"]),
            json!([""]),
            json!(3),
            json!([1]),
        ] {
            assert!(stop_strings(Some(&bad)).is_err(), "{bad}");
        }
    }
}
