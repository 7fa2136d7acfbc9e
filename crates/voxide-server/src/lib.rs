//! `voxide serve`: the loaded models behind OpenAI's audio API, so that the official clients
//! (and anything speaking their protocol) work against a local server.
//!
//! - `GET /health`, `GET /metrics` (Prometheus text, `metrics`), `GET /v1/models`,
//!   `GET /v1/models/{id}` (ids may hold slashes);
//! - `POST /v1/audio/transcriptions` and `/v1/audio/translations`:
//!   a multipart upload in, text, JSON or subtitles out (exactly `voxide transcribe`'s), or
//!   server-sent text events;
//! - `POST /v1/audio/speech` ([`speech`]): JSON in, WAV or PCM streamed out as it is
//!   synthesised, or server-sent audio events;
//! - `POST /v1/chat/completions` (`chat`): questions about audio or text (Voxtral Mini 3B)
//!   in OpenAI's Chat Completions shape, the answer whole or streamed as chunks;
//! - `GET /v1/realtime?intent=transcription` (`realtime`): OpenAI's Realtime transcription
//!   sessions over a WebSocket, with server VAD (Silero) or client commits;
//! - `GET /`: a page to try it all from a browser.
//!
//! Model work runs on blocking threads, a few requests at a time ([`limits`]); errors are
//! OpenAI's error objects ([`error`]).

mod auth;
mod chat;
pub mod error;
pub mod limits;
mod metrics;
pub mod models;
mod realtime;
pub mod speech;
mod transcriptions;
mod web;

use anyhow::{anyhow, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{Method, Uri};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use serde_json::{json, Value};
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub use error::ApiError;
pub use limits::{Admission, Limits};
pub use models::{Engine, LoadedModel, ModelSpec, Registry, VoiceSpec};

/// Where to listen and what to accept.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address or host name to listen on.
    pub host: String,
    /// Port; 0 picks a free one ([`Server::local_addr`] tells which).
    pub port: u16,
    /// When set, `/v1` requests must send `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Concurrency, sizes and time limits.
    pub limits: Limits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            api_key: None,
            limits: Limits::default(),
        }
    }
}

/// What every handler shares.
pub(crate) struct Shared {
    pub models: Registry,
    pub metrics: metrics::Metrics,
    pub admission: Admission,
    pub limits: Limits,
    pub api_key: Option<String>,
    /// Realtime session slots (`--max-realtime-sessions`).
    pub sessions: Arc<tokio::sync::Semaphore>,
    /// Uploads held at once: as many as run and wait (`--max-concurrency` + `--max-queue`).
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// Turns true when the server begins to shut down (realtime sessions then close).
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

pub(crate) type AppState = Arc<Shared>;

impl Shared {
    /// When a request starting now must end.
    pub fn deadline(&self) -> Option<Instant> {
        // A timeout past what the clock can hold is none.
        self.limits
            .request_timeout
            .and_then(|t| Instant::now().checked_add(t))
    }

    /// Runs `work` until `deadline` (504 after it).
    pub async fn until<T>(
        &self,
        deadline: Option<Instant>,
        work: impl Future<Output = T>,
    ) -> Result<T, ApiError> {
        match deadline {
            Some(at) => tokio::time::timeout_at(at, work)
                .await
                .map_err(|_| ApiError::timeout(self.limits.request_timeout.unwrap_or_default())),
            None => Ok(work.await),
        }
    }

    /// A slot to run a model: at once, after the queue (504 past the deadline), or 429.
    pub async fn admit(&self, deadline: Option<Instant>) -> Result<limits::Permit, ApiError> {
        self.until(deadline, self.admission.enter())
            .await?
            .map_err(|_| ApiError::busy())
    }

    /// The model a request's `model` field names: 400 without one, 404 for an unknown id.
    pub fn requested_model(&self, field: Option<&str>) -> Result<&Arc<LoadedModel>, ApiError> {
        let id = field
            .filter(|m| !m.is_empty())
            .ok_or_else(|| ApiError::invalid_param("model", "no `model` field: name the model"))?;
        self.model(id)
    }

    /// The model served as `id`, or 404.
    pub fn model(&self, id: &str) -> Result<&Arc<LoadedModel>, ApiError> {
        self.models
            .get(id)
            .ok_or_else(|| ApiError::unknown_model(id, &self.models.ids()))
    }
}

/// Room for a multipart form's fields and boundaries besides the audio file itself.
const FORM_OVERHEAD_BYTES: usize = 64 * 1024;

/// The application: every route, on `models`, with `config`'s key and limits.
fn router(
    config: &ServerConfig,
    models: Registry,
    admission: Admission,
    sessions: Arc<tokio::sync::Semaphore>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Router {
    let state: AppState = Arc::new(Shared {
        models,
        metrics: metrics::Metrics::default(),
        admission,
        limits: config.limits.clone(),
        api_key: config.api_key.clone(),
        sessions,
        uploads: Arc::new(tokio::sync::Semaphore::new(
            config.limits.max_concurrency + config.limits.max_queue,
        )),
        stopping,
    });
    let uploads = Router::new()
        .route(
            "/v1/audio/transcriptions",
            post(transcriptions::transcriptions),
        )
        .route("/v1/audio/translations", post(transcriptions::translations))
        .layer(DefaultBodyLimit::max(
            config.limits.max_upload_bytes + FORM_OVERHEAD_BYTES,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            transcriptions::refuse_large_uploads,
        ));
    let speech = Router::new()
        .route("/v1/audio/speech", post(speech::speech))
        .layer(DefaultBodyLimit::max(speech::MAX_BODY_BYTES))
        .route_layer(middleware::from_fn(speech::refuse_large_bodies));
    let chat = Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .layer(DefaultBodyLimit::max(chat::max_body_bytes(
            config.limits.max_upload_bytes,
        )))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            chat::refuse_large_bodies,
        ));
    let v1 = Router::new()
        .route("/v1/models", get(list_models))
        // Hub ids (`openai/whisper-tiny`, the default id of a hub model) hold a slash.
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/realtime", get(realtime::realtime))
        .merge(speech)
        .merge(chat)
        .merge(uploads)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    Router::new()
        .route("/", get(web::index))
        .route("/health", get(health))
        .route("/metrics", get(metrics::metrics))
        .merge(v1)
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::record,
        ))
        .with_state(state)
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// OpenAI's model object, and what the model serves (`capabilities`: voxide's field, which
/// OpenAI's clients keep as an extra).
fn model_object(model: &LoadedModel) -> Value {
    json!({
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": "voxide",
        "capabilities": model.engine.capabilities(),
    })
}

async fn list_models(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state.models.iter().map(|m| model_object(m)).collect();
    Json(json!({ "object": "list", "data": data }))
}

async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(model_object(state.model(&id)?)))
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "unknown endpoint {method} {}; this server has / (its web page), /health, /metrics, /v1/models, /v1/audio/transcriptions, /v1/audio/translations, /v1/audio/speech, /v1/chat/completions and /v1/realtime (WebSocket)",
        uri.path()
    ))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(format!("{} does not take {method}", uri.path()))
}

/// One server-sent event carrying `value` as its data.
pub(crate) fn sse_event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// A stream of server-sent events: `first` (its message `done` when it was the last), then
/// each message of `rx` as `event` renders it (with whether it was the last) until the last
/// or the channel's end; an error, or the deadline, is rendered by `error` and ends it.
pub(crate) fn event_stream<T: Send + 'static>(
    first: Bytes,
    done: bool,
    rx: tokio::sync::mpsc::Receiver<Result<T, ApiError>>,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    event: impl Fn(&T) -> (Bytes, bool) + Send + Sync + 'static,
    error: impl Fn(ApiError) -> Bytes + Send + Sync + 'static,
) -> axum::response::Response {
    use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
    use axum::response::IntoResponse;
    let render = Arc::new((event, error));
    let first = futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) });
    let rest = futures_util::stream::unfold((rx, done), move |(mut rx, done)| {
        let render = render.clone();
        async move {
            if done {
                return None;
            }
            let next = match deadline {
                Some(at) => tokio::time::timeout_at(at, rx.recv())
                    .await
                    .unwrap_or_else(|_| Some(Err(ApiError::timeout(timeout.unwrap_or_default())))),
                None => rx.recv().await,
            };
            Some(match next? {
                Ok(message) => {
                    let (bytes, done) = (render.0)(&message);
                    (Ok(bytes), (rx, done))
                }
                Err(e) => (Ok((render.1)(e)), (rx, true)),
            })
        }
    });
    (
        [
            (CONTENT_TYPE, "text/event-stream"),
            (CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(futures_util::StreamExt::chain(first, rest)),
    )
        .into_response()
}

/// The text deltas of a streamed transcription: each new segment's text, and the text of
/// models that segment only at the end (`Progress::pending`) as it grows — without its
/// trailing whitespace, which the finished segment may trim — so that a segment that
/// completes streamed text sends only what it adds.
#[derive(Default)]
pub(crate) struct Deltas {
    /// Segments sent.
    segments: usize,
    /// Pending text sent since the last segment.
    streamed: String,
}

impl Deltas {
    pub(crate) fn next(
        &mut self,
        segments: &[voxide_runtime::Segment],
        pending: &str,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for segment in segments.get(self.segments..).unwrap_or_default() {
            let text = segment.text.trim_start();
            if self.streamed.is_empty() {
                out.push(segment.text.clone());
            } else if let Some(rest) = text.strip_prefix(self.streamed.as_str()) {
                // The segment completes the streamed text.
                out.push(rest.to_string());
                self.streamed.clear();
            } else if let Some(later) = self.streamed.strip_prefix(text) {
                // The streamed text covers the segment and goes on into the next ones.
                self.streamed = later.trim_start().to_string();
            } else {
                // Text the segment does not continue: the segment whole, rather than lost.
                out.push(segment.text.clone());
                self.streamed.clear();
            }
        }
        out.retain(|delta| !delta.is_empty());
        self.segments = self.segments.max(segments.len());
        let pending = pending.trim_end();
        if let Some(new) = pending.strip_prefix(self.streamed.as_str()) {
            if !new.is_empty() {
                out.push(new.to_string());
                self.streamed = pending.to_string();
            }
        }
        out
    }
}

/// A JSON request body as `T`, or a 400: a field of the wrong type is named with what it must
/// be (`expected` maps a field's path to that; serde's own message names the Rust type:
/// "expected usize"), a body of the wrong shape gets `shape`.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    expected: impl Fn(&str) -> Option<&'static str>,
    shape: &str,
) -> Result<T, ApiError> {
    let json = &mut serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut *json).map_err(|e| {
        let field = e.path().to_string();
        match expected(&field) {
            Some(what) => ApiError::invalid_param(&field, format!("`{field}` must be {what}")),
            // A key given twice is named, not taken for a wrong shape.
            None if e.inner().to_string().starts_with("duplicate field") => {
                let what = e.inner().to_string();
                let key = what.split('`').nth(1).unwrap_or_default().to_string();
                ApiError::invalid_param(&key, format!("`{key}` is given twice: send each key once"))
            }
            None if e.inner().is_data() => ApiError::bad_request(shape),
            None => ApiError::bad_request(format!("the body is not JSON: {}", e.inner())),
        }
    })?;
    // One JSON value and nothing after it (whitespace aside).
    json.end()
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    Ok(value)
}

/// Sets its flag when dropped: a handler's future dropped with its connection tells the
/// model's thread that nobody waits for the answer.
pub(crate) struct SetOnDrop(pub Arc<std::sync::atomic::AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How long a shutdown waits for realtime sessions to close.
const SESSIONS_CLOSING: Duration = Duration::from_secs(5);

/// A bound server, ready to run.
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
    admission: Admission,
    stopping: tokio::sync::watch::Sender<bool>,
    /// The realtime session slots, and how many there are.
    sessions: (Arc<tokio::sync::Semaphore>, usize),
}

/// Checks `config` and listens on its address: what a front end does before it loads models
/// for minutes, so that a port in use or a bad flag fails at once.
pub fn listen(config: &ServerConfig) -> Result<std::net::TcpListener> {
    config.limits.validate()?;
    if config.api_key.as_deref().is_some_and(str::is_empty) {
        anyhow::bail!("--api-key must not be empty");
    }
    let listener = std::net::TcpListener::bind((config.host.as_str(), config.port))
        .map_err(|e| anyhow!("cannot listen on {}:{}: {e}", config.host, config.port))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| anyhow!("cannot listen on {}:{}: {e}", config.host, config.port))?;
    Ok(listener)
}

impl Server {
    /// Listens on `config`'s address, serving `models`.
    pub async fn bind(config: &ServerConfig, models: Registry) -> Result<Self> {
        Self::on(listen(config)?, config, models)
    }

    /// Serves `models` on a `listener` from [`listen`].
    pub fn on(
        listener: std::net::TcpListener,
        config: &ServerConfig,
        models: Registry,
    ) -> Result<Self> {
        if models.is_empty() {
            anyhow::bail!("no model to serve; pass --model DIR (or a hub id) at least once");
        }
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| anyhow!("cannot listen on {}:{}: {e}", config.host, config.port))?;
        let admission = Admission::new(config.limits.max_concurrency, config.limits.max_queue);
        let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
        let max_sessions = config.limits.max_realtime_sessions;
        let sessions = Arc::new(tokio::sync::Semaphore::new(max_sessions));
        let router = router(
            config,
            models,
            admission.clone(),
            sessions.clone(),
            stopping_rx,
        );
        Ok(Self {
            listener,
            router,
            admission,
            stopping,
            sessions: (sessions, max_sessions),
        })
    }

    /// The address it listens on (the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| anyhow!("cannot read the listening address: {e}"))
    }

    /// The slots and queue its requests go through (to watch, or to hold a slot in tests).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Serves until `shutdown` resolves, then lets the requests in flight finish (realtime
    /// sessions are told and closed).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let stopping = self.stopping;
        let shutdown = async move {
            shutdown.await;
            stopping.send_replace(true);
        };
        // HTTP/1 half-close stays off (hyper's default): a client's EOF reads the same whether
        // it shut only its write side after the request (`nc -N`) or left, and a client that
        // left must stop its request's model work (tried with half-close on: the requests of
        // departed clients ran to the end, holding their slots).
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| anyhow!("the server failed: {e}"))?;
        // Upgraded connections outlive the HTTP server: give the sessions a moment to send
        // their closing events (a session in the middle of a transcription may not make it).
        let (sessions, all) = self.sessions;
        let _ = tokio::time::timeout(
            SESSIONS_CLOSING,
            sessions.acquire_many(u32::try_from(all).unwrap_or(u32::MAX)),
        )
        .await;
        Ok(())
    }
}

/// Runs a server on `listener` (from [`listen`]) on its own runtime until SIGINT or SIGTERM,
/// printing `listening on http://ADDR` to stderr.
pub fn serve(
    listener: std::net::TcpListener,
    config: ServerConfig,
    models: Registry,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("voxide-serve")
        .build()
        .map_err(|e| anyhow!("cannot start the server's runtime: {e}"))?;
    let result = runtime.block_on(async {
        let server = Server::on(listener, &config, models)?;
        // Status lines go where stderr lets them: a server outlives a closed terminal.
        let _ = writeln!(
            std::io::stderr(),
            "listening on http://{}",
            server.local_addr()?
        );
        server.run_until(shutdown_signal()).await
    });
    // Work stops at its next window or chunk once its client is gone; do not wait for it.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    let _ = writeln!(
        std::io::stderr(),
        "shutting down: finishing the requests in flight"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use voxide_runtime::Segment;

    fn segment(text: &str) -> Segment {
        Segment {
            id: 0,
            seek: 0,
            start: 0.0,
            end: 1.0,
            text: text.into(),
            tokens: Vec::new(),
            temperature: 0.0,
            avg_logprob: 0.0,
            compression_ratio: 0.0,
            no_speech_prob: 0.0,
            words: None,
        }
    }

    /// Segments whole (Whisper), pending text as it grows then its segment's rest (Voxtral),
    /// and both in turn (stretches): the deltas add up to the segments' text.
    #[test]
    fn deltas_add_up_to_the_text() {
        let mut d = Deltas::default();
        let both = [segment(" Hello."), segment(" World.")];
        assert_eq!(d.next(&[], ""), Vec::<String>::new());
        assert_eq!(d.next(&both[..1], ""), [" Hello."]);
        assert_eq!(d.next(&both, ""), [" World."]);
        assert!(d.next(&both, "").is_empty(), "nothing twice");

        let mut d = Deltas::default();
        let mut out = Vec::new();
        for pending in ["", "The", "The cat ", "The cat sat", "The cat sat\n"] {
            out.extend(d.next(&[], pending));
        }
        assert_eq!(out, ["The", " cat", " sat"]);
        let done = [segment("The cat sat."), segment("Then")];
        assert_eq!(d.next(&done[..1], "Th"), [".", "Th"]);
        assert_eq!(d.next(&done, ""), ["en"]);
        // Text the segment does not continue is sent whole rather than lost.
        let mut d = Deltas::default();
        d.next(&[], "abc");
        assert_eq!(d.next(&[segment("xyz")], ""), ["xyz"]);
        // Streamed text that spans several segments (Voxtral Realtime's sentences): nothing
        // twice, the rest of the last one.
        let mut d = Deltas::default();
        assert_eq!(d.next(&[], "One. Two th"), ["One. Two th"]);
        let sentences = [segment(" One."), segment(" Two three."), segment(" Four.")];
        assert_eq!(d.next(&sentences, ""), ["ree.", " Four."]);
    }
}
