//! `GET /v1/realtime?intent=transcription`: live transcription over a WebSocket, in the shape of
//! OpenAI's Realtime transcription sessions ([`protocol`]): the client appends base64 audio,
//! the server answers with turn, commit and transcript events as they happen ([`session`]).
//!
//! A connection has two halves: this module reads and checks the client's events and writes
//! the server's; the session's audio work runs on a blocking thread of its own, fed through a
//! bounded channel (a client sending faster than the model keeps up waits, its memory does
//! not grow). At most `--max-realtime-sessions` run at once; more are refused with 429 before
//! the upgrade.

mod protocol;
mod session;

use crate::{ApiError, AppState, Engine};
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use protocol::{error_event, event, Dialect, ProtocolError, Settings};
use serde::Deserialize;
use serde_json::{json, Value};
use session::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Server events waiting for the socket.
const OUTBOX_EVENTS: usize = 256;
/// Client commands waiting for the session's thread (each append is one).
const INBOX_COMMANDS: usize = 64;

/// The connection URL's query.
#[derive(Debug, Deserialize)]
pub(crate) struct RealtimeQuery {
    intent: Option<String>,
    /// Preselects the transcription model (as a session update would).
    model: Option<String>,
}

/// The upgrade: checks the query, takes a session slot (429 when none is free) and hands the
/// socket to [`connection`].
pub(crate) async fn realtime(
    State(state): State<AppState>,
    query: Result<Query<RealtimeQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|e| {
        ApiError::bad_request(format!(
            "/v1/realtime is a WebSocket endpoint (connect with ws://…/v1/realtime?intent=transcription): {}",
            e.body_text()
        ))
    })?;
    let Query(query) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "the query string takes intent=transcription and model=ID, each at most once: {}",
            e.body_text()
        ))
    })?;
    match query.intent.as_deref() {
        None | Some("transcription") => {}
        Some(other) => {
            return Err(ApiError::invalid_param(
                "intent",
                format!(
                    "this server runs transcription sessions only (intent {other:?}); connect to /v1/realtime?intent=transcription"
                ),
            ))
        }
    }
    if let Some(id) = &query.model {
        state.model(id)?;
        speech_to_text(&state, id).map_err(|e| ApiError::invalid_param("model", e.message))?;
    }
    let slot = state
        .sessions
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::sessions_full(state.limits.max_realtime_sessions))?;
    let beta = headers
        .get("openai-beta")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("realtime=v1"))
        || offered_protocols(&headers).any(|p| p == "openai-beta.realtime-v1");
    let dialect = if beta { Dialect::Beta } else { Dialect::Ga };
    let settings = Settings::new(query.model, state.models.vad().is_some());
    let max_message = state.limits.max_upload_bytes.saturating_mul(2).max(1 << 20);
    Ok(upgrade
        .protocols(["realtime"])
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| async move {
            connection(socket, state, settings, dialect).await;
            drop(slot);
        }))
}

/// The subprotocols a browser offers (`Sec-WebSocket-Protocol`), one by one.
pub(crate) fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The served speech-to-text model `id`.
fn speech_to_text<'a>(state: &'a AppState, id: &str) -> Result<&'a Engine, ProtocolError> {
    let model = state.model(id).map_err(|e| ProtocolError {
        param: Some("model".into()),
        ..ProtocolError::new("model_not_found", e.message)
    })?;
    match &model.engine {
        engine @ Engine::Transcriber(_) => Ok(engine),
        engine => Err(ProtocolError::invalid(
            "model",
            format!(
                "{id} is a {} model; a transcription session needs a speech-to-text one",
                engine.kind()
            ),
        )),
    }
}

/// The error event for a message larger than the connection takes, if `e` is that.
fn over_limit(e: axum::Error) -> Option<ProtocolError> {
    match *e.into_inner().downcast::<tungstenite::Error>().ok()? {
        tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong {
            size,
            max_size,
        }) => Some(ProtocolError::new(
            "message_too_large",
            format!(
                "a message of {size} bytes is over this server's limit of {max_size} bytes \
                 (twice --max-upload-mb): send the audio in smaller appends; closing the session"
            ),
        )),
        _ => None,
    }
}

/// Sends server events in order, numbering them; shared by both halves of a connection.
#[derive(Clone)]
pub(crate) struct Outbox {
    events: mpsc::Sender<Value>,
    next_id: Arc<AtomicU64>,
    dialect: Dialect,
    /// Set when the connection ends: the session's work stops at its next window.
    closed: Arc<AtomicBool>,
}

impl Outbox {
    fn event(&self, kind: &str, fields: Value) -> Value {
        event(kind, self.next_event_id(), fields)
    }

    fn next_event_id(&self) -> String {
        format!("event_{}", self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// From the connection's task. A closed socket drops the event.
    async fn send(&self, kind: &str, fields: Value) {
        let _ = self.events.send(self.event(kind, fields)).await;
    }

    async fn send_error(&self, error: &ProtocolError, client_event: Option<&str>) {
        let event = error_event(self.next_event_id(), error, client_event);
        let _ = self.events.send(event).await;
    }

    /// From the session's thread.
    fn send_blocking(&self, kind: &str, fields: Value) {
        let _ = self.events.blocking_send(self.event(kind, fields));
    }

    fn send_error_blocking(&self, error: &ProtocolError, client_event: Option<&str>) {
        let event = error_event(self.next_event_id(), error, client_event);
        let _ = self.events.blocking_send(event);
    }

    /// Text of an item, covering its audio up to `audio_end_ms` (a voxide field).
    fn delta(&self, item_id: &str, delta: &str, audio_end_ms: u64) {
        self.send_blocking(
            "conversation.item.input_audio_transcription.delta",
            json!({ "item_id": item_id, "content_index": 0, "delta": delta,
                    "audio_end_ms": audio_end_ms }),
        );
    }

    /// An item's whole transcript.
    fn completed(&self, item_id: &str, transcript: &str, seconds: f64) {
        self.send_blocking(
            "conversation.item.input_audio_transcription.completed",
            json!({
                "item_id": item_id, "content_index": 0,
                "transcript": transcript.trim(),
                "usage": { "type": "duration", "seconds": seconds },
            }),
        );
    }

    /// The model could not transcribe an item.
    fn failed(&self, item_id: &str, message: &str) {
        self.send_blocking(
            "conversation.item.input_audio_transcription.failed",
            json!({ "item_id": item_id, "content_index": 0, "error": {
                "type": "transcription_error", "code": null, "message": message, "param": null,
            }}),
        );
    }

    /// Whether the client is gone.
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// The event announcing a committed item.
    fn item_created(&self) -> &'static str {
        match self.dialect {
            Dialect::Beta => "conversation.item.created",
            Dialect::Ga => "conversation.item.added",
        }
    }
}

/// Ids of sessions since the server started.
static SESSIONS: AtomicU64 = AtomicU64::new(0);

/// One connection, until the client closes it, goes silent for `--request-timeout-s`, the
/// server shuts down, or the socket fails.
async fn connection(socket: WebSocket, state: AppState, settings: Settings, dialect: Dialect) {
    let (mut sink, mut source) = socket.split();
    let (events, mut outgoing) = mpsc::channel::<Value>(OUTBOX_EVENTS);
    // Why the server ends the connection, for the close frame after the last event (a client
    // that closes gets its own frame echoed).
    let closing: Arc<Mutex<Option<CloseFrame>>> = Arc::default();
    let writer = {
        let closing = closing.clone();
        tokio::spawn(async move {
            while let Some(event) = outgoing.recv().await {
                if sink
                    .send(Message::Text(event.to_string().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let frame = closing.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(frame) = frame {
                let _ = sink.send(Message::Close(Some(frame))).await;
            }
            let _ = sink.close().await;
        })
    };
    let close_with = |code: u16, reason: &'static str| {
        *closing.lock().unwrap_or_else(|e| e.into_inner()) = Some(CloseFrame {
            code,
            reason: reason.into(),
        });
    };
    let out = Outbox {
        events,
        next_id: Arc::new(AtomicU64::new(0)),
        dialect,
        closed: Arc::new(AtomicBool::new(false)),
    };
    let session_id = format!("sess_{:06}", SESSIONS.fetch_add(1, Ordering::Relaxed) + 1);
    let created = match dialect {
        Dialect::Beta => "transcription_session.created",
        Dialect::Ga => "session.created",
    };
    out.send(
        created,
        json!({ "session": settings.render(&session_id, dialect) }),
    )
    .await;
    let (commands, inbox) = mpsc::channel(INBOX_COMMANDS);
    let worker = {
        let (state, settings, out) = (state.clone(), settings.clone(), out.clone());
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || session::run(&state, settings, inbox, out, runtime))
    };
    let idle = state.limits.request_timeout;
    let mut client = Client {
        state,
        settings,
        session_id,
        out,
        commands,
    };
    let mut stopping = client.state.stopping.clone();
    loop {
        let message = async {
            match idle {
                Some(idle) => tokio::time::timeout(idle, source.next()).await.ok(),
                None => Some(source.next().await),
            }
        };
        let next = tokio::select! {
            next = message => match next {
                Some(next) => next,
                None => {
                    let message = format!(
                        "no message for {} s (--request-timeout-s): closing the session",
                        idle.unwrap_or_default().as_secs()
                    );
                    let error = ProtocolError::new("session_idle_timeout", message);
                    client.out.send_error(&error, None).await;
                    // As gateways close idle sockets ("going away").
                    close_with(close_code::AWAY, "idle timeout");
                    break;
                }
            },
            () = async {
                // An error: the server is gone already.
                let _ = stopping.wait_for(|&stop| stop).await;
            } => {
                let error = ProtocolError::new(
                    "server_shutting_down",
                    "the server is shutting down: closing the session",
                );
                client.out.send_error(&error, None).await;
                close_with(close_code::AWAY, "server shutting down");
                break;
            }
        };
        match next {
            Some(Ok(Message::Text(text))) => {
                if !client.handle(text.as_str()).await {
                    close_with(close_code::ERROR, "the session ended");
                    break;
                }
            }
            Some(Ok(Message::Binary(_))) => {
                let error = ProtocolError::new(
                    "invalid_message",
                    "binary frames are not part of the protocol: send JSON events as text",
                );
                client.out.send_error(&error, None).await;
            }
            Some(Err(e)) => {
                // The socket is unusable after any error; a message over the limit is the
                // client's to fix, so it learns why before the close.
                if let Some(error) = over_limit(e) {
                    client.out.send_error(&error, None).await;
                    close_with(close_code::SIZE, "message too big");
                }
                break;
            }
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => {}
        }
    }
    // Dropping the sender ends the session's thread (its work stops at the next window);
    // the writer ends with the last sender.
    client.out.closed.store(true, Ordering::Relaxed);
    drop(client);
    let _ = worker.await;
    let _ = writer.await;
}

/// The connection's view of the session: its settings, and the way to its thread.
struct Client {
    state: AppState,
    settings: Settings,
    session_id: String,
    out: Outbox,
    commands: mpsc::Sender<Command>,
}

impl Client {
    /// Handles one client event; `false` once the session's thread is gone.
    async fn handle(&mut self, text: &str) -> bool {
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(e) => {
                let error =
                    ProtocolError::new("invalid_json", format!("the event is not JSON: {e}"));
                self.out.send_error(&error, None).await;
                return true;
            }
        };
        let client_event = value.get("event_id").and_then(Value::as_str);
        match self.command(&value).await {
            Ok(Some(command)) => self.commands.send(command).await.is_ok(),
            Ok(None) => true,
            Err(error) => {
                self.out.send_error(&error, client_event).await;
                true
            }
        }
    }

    /// What an event asks of the session's thread (`None`: answered here).
    async fn command(&mut self, value: &Value) -> Result<Option<Command>, ProtocolError> {
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| ProtocolError::invalid("type", "every event needs a string `type`"))?;
        match kind {
            "transcription_session.update" | "session.update" => {
                let (dialect, updated) = if kind == "session.update" {
                    (Dialect::Ga, "session.updated")
                } else {
                    (Dialect::Beta, "transcription_session.updated")
                };
                let session = value.get("session").ok_or_else(|| {
                    ProtocolError::invalid("session", "the update has no `session` object")
                })?;
                let settings = self.settings.apply(session, dialect)?;
                self.check(&settings)?;
                self.settings = settings.clone();
                let rendered = settings.render(&self.session_id, dialect);
                self.out.send(updated, json!({ "session": rendered })).await;
                Ok(Some(Command::Configure(settings)))
            }
            "input_audio_buffer.append" => {
                if self.settings.model.is_none() {
                    // In the words of the client's own dialect.
                    let how = match self.out.dialect {
                        Dialect::Beta => {
                            "transcription_session.update with input_audio_transcription.model"
                        }
                        Dialect::Ga => "session.update with audio.input.transcription.model",
                    };
                    return Err(ProtocolError::new(
                        "session_not_configured",
                        format!(
                            "no transcription model yet: send {how} (or connect with ?model=ID) before audio"
                        ),
                    ));
                }
                let audio = value.get("audio").and_then(Value::as_str).ok_or_else(|| {
                    ProtocolError::invalid("audio", "`audio` must be a base64 string")
                })?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(audio)
                    .map_err(|e| {
                        ProtocolError::invalid("audio", format!("`audio` is not valid base64: {e}"))
                    })?;
                let format = self.settings.format;
                if bytes.len() % format.sample_bytes() != 0 {
                    return Err(ProtocolError::invalid(
                        "audio",
                        "pcm16 audio must be whole 16-bit samples (an even number of bytes)",
                    ));
                }
                Ok(Some(Command::Audio(format.decode(&bytes))))
            }
            "input_audio_buffer.commit" => Ok(Some(Command::Commit(
                value.get("event_id").and_then(Value::as_str).map(String::from),
            ))),
            "input_audio_buffer.clear" => Ok(Some(Command::Clear)),
            other => Err(ProtocolError::new(
                "unknown_event",
                format!(
                    "unknown event type {other:?}: a transcription session takes transcription_session.update (or session.update), input_audio_buffer.append, input_audio_buffer.commit and input_audio_buffer.clear"
                ),
            )),
        }
    }

    /// Settings this server can run: a served speech-to-text model, and a VAD model for
    /// server VAD.
    fn check(&self, settings: &Settings) -> Result<(), ProtocolError> {
        if let Some(id) = &settings.model {
            if let Engine::Transcriber(model) = speech_to_text(&self.state, id)? {
                // What the model would refuse at the first item (a prompt Voxtral Realtime
                // cannot take, …) is refused at the update.
                model
                    .check(&settings.request())
                    .map_err(|e| ProtocolError::new("invalid_value", e.to_string()))?;
            }
        }
        if settings.turn_detection.is_some() && self.state.models.vad().is_none() {
            return Err(ProtocolError::invalid(
                "turn_detection",
                "server VAD needs Silero VAD weights: start voxide serve with --vad-model PATH, or set turn_detection to null and commit",
            ));
        }
        Ok(())
    }
}
