//! The web page at `/` in a real headless Chromium, driven over the DevTools protocol: Ask
//! streams the answer about a chosen file, Speak plays the synthesised WAV, and hold-to-talk,
//! with Chromium's fake microphone playing jfk.wav, shows a transcript. Skipped, with a message, where no Chromium is installed.

use super::{jfk, root, TestServer};
use base64::Engine as _;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, ErrorKind};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};
use voxide_models::voxtral::{self, GenerateOptions, Role};
use voxide_server::ServerConfig;

/// The longest any single DevTools command may take to answer.
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// Chromium from `VOXIDE_CHROMIUM`, else the first of the usual names on `PATH`.
fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("VOXIDE_CHROMIUM") {
        return Some(path.into());
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
    .find(|candidate| candidate.is_file())
}

/// A headless Chromium, killed when dropped so that a failing test leaves none behind (and
/// so that the server's graceful shutdown does not wait on its connections).
struct Chromium {
    child: Child,
    /// Its browser-wide DevTools WebSocket address.
    devtools: String,
    _profile: tempfile::TempDir,
}

impl Chromium {
    fn launch(binary: &Path) -> Self {
        let profile = tempfile::tempdir().unwrap();
        // Chromium refuses to read a path through `..`.
        let microphone = jfk().canonicalize().expect("jfk.wav");
        let mut child = Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--window-size=1000,1200",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                &format!("--use-file-for-fake-audio-capture={}", microphone.display()),
                "--autoplay-policy=no-user-gesture-required",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        // Read stderr to its end on a thread: a full pipe would block Chromium.
        let stderr = child.stderr.take().unwrap();
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        // Owned from here on, so that a panic below kills it.
        let mut chromium = Self {
            child,
            devtools: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        chromium.devtools = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => match line.split_once("DevTools listening on ") {
                    Some((_, url)) => break url.to_string(),
                    None => seen.push(line),
                },
                Err(_) => panic!(
                    "Chromium printed no DevTools address within 30 s; its stderr:\n{}",
                    seen.join("\n")
                ),
            }
        };
        chromium
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new tab, driven over the browser's DevTools connection (one session, flattened into it).
struct Page {
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    last_id: u64,
    /// The tab's session; commands without one go to the browser.
    session: Option<String>,
}

impl Page {
    fn open(chromium: &Chromium) -> Self {
        let (socket, _) =
            tungstenite::connect(chromium.devtools.as_str()).expect("a DevTools connection");
        // Reads wake up this often, so that a silent browser cannot outlast a deadline.
        if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
            stream
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
        }
        let mut page = Self {
            socket,
            last_id: 0,
            session: None,
        };
        let target = page.call("Target.createTarget", json!({ "url": "about:blank" }));
        let attached = page.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        page.session = Some(attached["sessionId"].as_str().unwrap().to_string());
        // The page's console, exceptions and network errors (a failed WebSocket) are logged
        // as they come, so that a failure shows what the page saw.
        for domain in ["Page", "Runtime", "Log"] {
            page.call(&format!("{domain}.enable"), json!({}));
        }
        page
    }

    /// Sends a command and returns its result, logging the events that come before it.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.last_id += 1;
        let id = self.last_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            command["sessionId"] = session.as_str().into();
        }
        self.socket
            .send(Message::text(command.to_string()))
            .expect("DevTools takes a command");
        let deadline = Instant::now() + CALL_LIMIT;
        let reply = loop {
            let text = match self.socket.read() {
                Ok(Message::Text(text)) => text,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    assert!(
                        Instant::now() < deadline,
                        "{method} got no answer within {CALL_LIMIT:?}"
                    );
                    continue;
                }
                Err(e) => panic!("the DevTools connection failed: {e}"),
            };
            let message: Value = serde_json::from_str(&text).unwrap();
            if message["id"] == id {
                break message;
            }
            log_event(&message);
        };
        if let Some(error) = reply.get("error") {
            panic!("{method} failed: {error}");
        }
        reply["result"].clone()
    }

    /// The value of a JavaScript expression in the page, awaited if it is a promise.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("`{expression}` threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is truthy, then returns it; after `limit`, an error
    /// that tells the page's status and transcript.
    /// The Ask panel's answer, once it is done (a failure panics with what the page shows).
    fn answer(&mut self) -> String {
        let answer = self.poll(
            "(a => /done|error/.test(a.className) && { class: a.className, text: a.textContent })\
             (document.getElementById('answer'))",
            Duration::from_secs(60),
        );
        let answer = answer.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(answer["class"], "done", "{answer}");
        answer["text"]
            .as_str()
            .expect("the answer's text")
            .to_string()
    }

    fn poll(&mut self, expression: &str, limit: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.eval(expression);
            if !matches!(value, Value::Null | Value::Bool(false)) && value != 0 && value != "" {
                return Ok(value);
            }
            if Instant::now() > deadline {
                let page = self.eval(
                    "`status: ${document.getElementById('status').textContent}\n\
                     transcript: ${document.getElementById('transcript').textContent}`",
                );
                return Err(format!(
                    "`{expression}` still false after {limit:?}\n{}",
                    page.as_str().unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// [`Page::poll`], panicking when it runs out of time.
    fn wait_for(&mut self, expression: &str, limit: Duration) -> Value {
        self.poll(expression, limit)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Saves a screenshot of the page to `path`.
    fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

/// Prints what the page reported: console calls, uncaught exceptions, log entries.
fn log_event(event: &Value) {
    let params = &event["params"];
    match event["method"].as_str() {
        Some("Runtime.consoleAPICalled") => {
            let args: Vec<String> = params["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| match &a["value"] {
                    Value::String(s) => s.clone(),
                    Value::Null => a["description"].as_str().unwrap_or("?").to_string(),
                    v => v.to_string(),
                })
                .collect();
            let kind = params["type"].as_str().unwrap_or("log");
            eprintln!("page console.{kind}: {}", args.join(" "));
        }
        Some("Runtime.exceptionThrown") => {
            let details = &params["exceptionDetails"];
            let description = details["exception"]["description"]
                .as_str()
                .or(details["text"].as_str())
                .unwrap_or("?");
            eprintln!("page exception: {description}");
        }
        // Verbose entries are Chrome's advice (a password field outside a form).
        Some("Log.entryAdded") if params["entry"]["level"] != "verbose" => {
            let entry = &params["entry"];
            let text = |field: &str| entry[field].as_str().unwrap_or("?").to_string();
            eprintln!(
                "page log ({} {}): {}",
                text("level"),
                text("source"),
                text("text")
            );
        }
        _ => {}
    }
}

#[test]
fn page_speaks_and_transcribes_in_chromium() {
    let Some(binary) = find_chromium() else {
        eprintln!(
            "no Chromium found (install Debian's chromium or set VOXIDE_CHROMIUM); skipping the browser test"
        );
        return;
    };
    // The random-weight TTS fixture rarely ends a sentence; 12 s of audio caps its babble
    // (and leaves room for jfk.wav's 11 s in a question).
    let server = TestServer::with(ServerConfig::default(), |c| c.limits.max_audio_s = 12.0);
    // Declared after the server, so dropped (killed) before the server shuts down.
    let chromium = Chromium::launch(&binary);
    let mut page = Page::open(&chromium);
    let url = format!("http://{}/?model=whisper-1&speech_model=tts-1", server.addr);
    page.call("Page.navigate", json!({ "url": url }));
    // The pickers hold the models that serve each panel (`capabilities`): one chats.
    page.wait_for(
        "document.readyState === 'complete' && \
         document.getElementById('stt-model').value === 'whisper-1' && \
         document.getElementById('tts-model').value === 'tts-1' && \
         document.getElementById('chat-model').value === 'voxtral-mini'",
        Duration::from_secs(20),
    );
    let pickers = page.eval(
        "['stt-model', 'tts-model', 'chat-model'].map(id => \
         [...document.getElementById(id).options].map(o => o.value))",
    );
    assert_eq!(
        pickers,
        json!([
            ["whisper-1", "voxtral", "voxtral-mini"],
            ["tts-1", "tts-clone"],
            ["voxtral-mini"]
        ])
    );

    // Ask without audio: the library's greedy answer to the text alone, streamed in.
    let hello = voxtral::Message::text(Role::User, "Say hello.");
    let (want, _) = super::chat::library_text_answer(&[hello], &GenerateOptions::default());
    page.eval(
        "document.getElementById('question').value = 'Say hello.';\
         document.getElementById('ask').click()",
    );
    assert_eq!(page.answer(), want);
    page.eval("document.getElementById('question').value = 'What is said in this recording?'");

    // Ask about jfk.wav, chosen in the file input: the library's greedy answer, streamed in.
    let (want, _) = super::chat::library_answer(&GenerateOptions::default());
    let document = page.call("DOM.getDocument", json!({}));
    let input = page.call(
        "DOM.querySelector",
        json!({ "nodeId": document["root"]["nodeId"], "selector": "#chat-audio" }),
    );
    page.call(
        "DOM.setFileInputFiles",
        json!({ "nodeId": input["nodeId"], "files": [jfk().canonicalize().unwrap()] }),
    );
    page.eval("document.getElementById('ask').click()");
    assert_eq!(page.answer(), want);

    // Speak: the fixture's voices are `tester` and `dylan`, not the page's default.
    page.eval(
        "document.getElementById('voice').value = 'tester';\
         document.getElementById('text').value = 'Hello from the browser test.';\
         document.getElementById('speak').click()",
    );
    let duration = page.wait_for(
        "(a => a.src.startsWith('blob:') && isFinite(a.duration) && a.duration)\
         (document.getElementById('speech'))",
        Duration::from_secs(60),
    );
    assert!(duration.as_f64().unwrap() > 0.0, "{duration}");

    // Hold-to-talk, with the fake microphone playing jfk.wav.
    page.eval("voxide.startTalking()");
    std::thread::sleep(Duration::from_secs(3));
    page.eval("voxide.stopTalking()");
    // The first item, or the first error: a failure need not wait out the deadline.
    let first = page.poll(
        "(e => e && { class: e.className, text: e.textContent })\
         (document.querySelector('#transcript .done, #transcript .failed, #transcript .error'))",
        Duration::from_secs(60),
    );
    // Taken before the verdict: it shows what went wrong too.
    page.screenshot(&root().join("target/test-artifacts/browser.png"));
    let first = first.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first["class"], "item done", "{first}");
    assert!(
        !first["text"].as_str().unwrap().trim().is_empty(),
        "an empty transcript: {first}"
    );
}
