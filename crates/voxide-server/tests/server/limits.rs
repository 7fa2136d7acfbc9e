//! Concurrency: with every slot busy, a request waits in the queue while it has room and is
//! answered 429 at once when it has none; one that waits past the deadline gets 504, and a
//! stream still going at the deadline is cut off. The tests hold the slot themselves (as a
//! long request would), so the overlap is deterministic.

use super::{start_post, wait_until, Form, TestServer};
use serde_json::json;
use std::time::{Duration, Instant};
use voxide_server::ServerConfig;

fn speech() -> serde_json::Value {
    json!({"model": "tts-1", "input": "Hi.", "voice": "tester", "max_frames": 2})
}

#[test]
fn a_full_queue_answers_429_at_once() {
    let server = TestServer::with(ServerConfig::default(), |c| {
        c.limits.max_concurrency = 1;
        c.limits.max_queue = 0;
    });
    let slot = server.hold_slot();
    let clock = Instant::now();
    let error = server.post_json("/v1/audio/speech", &speech()).error(429);
    assert_eq!(error["code"], "rate_limit_exceeded");
    server
        .post_form("/v1/audio/transcriptions", &Form::jfk())
        .error(429);
    assert!(clock.elapsed() < Duration::from_secs(5), "answered at once");
    // Model-free routes do not queue.
    assert_eq!(server.get("/v1/models").status, 200);
    drop(slot);
    assert_eq!(server.post_json("/v1/audio/speech", &speech()).status, 200);
}

#[test]
fn a_queued_request_runs_when_the_slot_frees() {
    let server = TestServer::with(ServerConfig::default(), |c| {
        c.limits.max_concurrency = 1;
        c.limits.max_queue = 1;
    });
    let slot = server.hold_slot();
    let addr = server.addr;
    let queued = std::thread::spawn(move || {
        super::request(
            addr,
            "POST",
            "/v1/audio/speech",
            &[("Content-Type", "application/json")],
            speech().to_string().as_bytes(),
        )
    });
    let clock = Instant::now();
    while server.admission.waiting() == 0 {
        assert!(clock.elapsed() < Duration::from_secs(30), "never queued");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Slot busy, queue full: the second overlapping request is turned away.
    server.post_json("/v1/audio/speech", &speech()).error(429);
    drop(slot);
    let reply = queued.join().unwrap();
    // The default, MP3: MPEG-2 Layer III frames from the first byte.
    assert_eq!((reply.status, &reply.body[..2]), (200, &[0xFF, 0xF3][..]));
}

#[test]
fn waiting_past_the_deadline_answers_504() {
    let server = TestServer::with(ServerConfig::default(), |c| {
        c.limits.max_queue = 4;
        c.limits.request_timeout = Some(Duration::from_millis(300));
    });
    let _slot = server.hold_slot();
    let error = server.post_json("/v1/audio/speech", &speech()).error(504);
    assert_eq!(error["code"], "timeout");
    server
        .post_form("/v1/audio/transcriptions", &Form::jfk())
        .error(504);
    assert_eq!(
        server.admission.waiting(),
        0,
        "timed-out requests left the queue"
    );
}

/// A client that stalls inside its upload is answered 504 at the deadline, and its upload
/// slot is free again: stalled uploads cannot lock the endpoint.
#[test]
fn an_upload_that_stalls_ends_at_the_deadline() {
    // One upload slot: a slot to run, no queue.
    let server = TestServer::with(ServerConfig::default(), |c| {
        c.limits.max_queue = 0;
        c.limits.request_timeout = Some(Duration::from_secs(2));
    });
    let form = Form::jfk();
    let body = form.body();
    let held = |n: usize| {
        let metrics = server.get("/metrics").text();
        metrics.contains(&format!("voxide_uploads_held {n}\n"))
    };
    // The second finds the slot free again (a held slot would answer 429 at once).
    for _ in 0..2 {
        let mut stream = start_post(
            &server,
            "/v1/audio/transcriptions",
            &form.content_type(),
            &body,
            body.len() / 2,
        );
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        // /metrics shows the upload while its body is still arriving.
        wait_until("the upload is not shown", || held(1));
        let mut raw = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut raw);
        let reply = String::from_utf8_lossy(&raw);
        assert!(reply.starts_with("HTTP/1.1 504"), "{reply}");
        wait_until("the slot is given back", || held(0));
    }
}

#[test]
fn a_stream_past_the_deadline_is_cut_off() {
    let server = TestServer::with(ServerConfig::default(), |c| {
        c.limits.request_timeout = Some(Duration::from_millis(800));
    });
    // The random model never ends on its own: 20 000 frames would take minutes.
    let body = json!({"model": "tts-1", "input": "A long text.", "voice": "tester",
        "response_format": "pcm", "max_frames": 20_000})
    .to_string();
    let mut stream = start_post(
        &server,
        "/v1/audio/speech",
        "application/json",
        body.as_bytes(),
        body.len(),
    );
    let clock = Instant::now();
    let mut raw = Vec::new();
    // The server aborts the connection: the read ends, cleanly or with a reset.
    let _ = std::io::Read::read_to_end(&mut stream, &mut raw);
    assert!(clock.elapsed() < Duration::from_secs(30));
    assert!(raw.starts_with(b"HTTP/1.1 200"));
    assert!(
        !raw.ends_with(b"\r\n0\r\n\r\n"),
        "the chunked body must not end as if complete"
    );
    while server.admission.available() == 0 {
        assert!(
            clock.elapsed() < Duration::from_secs(30),
            "the slot stays taken"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `seconds` of jfk.wav repeated, as a 16-bit 16 kHz mono WAV file.
fn long_wav(seconds: usize) -> Vec<u8> {
    let raw = std::fs::read(super::jfk()).unwrap();
    // jfk.wav: a 44-byte header, then 16-bit 16 kHz mono samples.
    let clip = &raw[44..];
    let data: Vec<u8> = clip.iter().copied().cycle().take(seconds * 32000).collect();
    let mut wav = Vec::with_capacity(44 + data.len());
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    for field in [16u32, 1 | (1 << 16), 16000, 32000, 2 | (16 << 16)] {
        wav.extend_from_slice(&field.to_le_bytes());
    }
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
    wav.extend_from_slice(&data);
    wav
}

/// Sends a whole transcription request without reading the answer.
fn start_transcription(server: &TestServer, form: &Form) -> std::net::TcpStream {
    let body = form.body();
    start_post(
        server,
        "/v1/audio/transcriptions",
        &form.content_type(),
        &body,
        body.len(),
    )
}

#[test]
fn a_transcription_whose_client_leaves_stops_at_its_next_window() {
    let server = TestServer::start();
    let stream = start_transcription(&server, &Form::new("whisper-1", "long.wav", long_wav(600)));
    wait_until("never started", || server.admission.running() == 1);
    drop(stream);
    wait_until("the slot stays taken", || server.admission.available() == 1);
    // It stopped before its end: no transcription was counted.
    let metrics = server.get("/metrics").text();
    assert!(
        !metrics.contains("voxide_audio_seconds_total{work=\"transcription\"}"),
        "{metrics}"
    );
}

#[test]
fn uploads_beyond_those_running_and_waiting_are_refused_before_their_body() {
    let server = TestServer::with(ServerConfig::default(), |c| {
        c.limits.max_concurrency = 1;
        c.limits.max_queue = 1;
    });
    let long = Form::new("whisper-1", "long.wav", long_wav(600));
    let running = start_transcription(&server, &long);
    wait_until("the first never started", || {
        server.admission.running() == 1
    });
    let waiting = start_transcription(&server, &long);
    wait_until("the second never queued", || {
        server.admission.waiting() == 1
    });
    // A third sends its head and a few bytes of its body: the answer comes without the rest.
    let mut third = start_post(
        &server,
        "/v1/audio/transcriptions",
        &long.content_type(),
        &long.body(),
        1000,
    );
    third
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut third, &mut head).expect("an answer before the body");
    assert_eq!(&head, b"HTTP/1.1 429");
    drop((running, waiting));
    wait_until("the slots stay taken", || server.admission.available() == 1);
}

/// A timeout past what the clock holds (`--request-timeout-s 18446744073709551615`) is no
/// deadline: requests are served (its addition to the clock once panicked each request).
#[test]
fn a_timeout_beyond_the_clock_is_none() {
    let server = TestServer::with(ServerConfig::default(), |c| {
        c.limits.request_timeout = Some(Duration::from_secs(u64::MAX));
    });
    assert_eq!(server.post_json("/v1/audio/speech", &speech()).status, 200);
}
