//! Bad requests get OpenAI's error object with the right status and a message that says what
//! to change.

use super::{request, Form, TestServer};
use serde_json::json;
use voxide_server::ServerConfig;

/// Asserts the error's status and that its message contains `expect`; returns the error.
fn fails(reply: super::Reply, status: u16, expect: &str) -> serde_json::Value {
    let error = reply.error(status);
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(expect),
        "expected {expect:?} in {message:?}"
    );
    assert!(!message.contains('\n'), "one line: {message:?}");
    error
}

#[test]
fn bad_uploads_and_parameters() {
    let server = TestServer::start();
    let post = |form: &Form| server.post_form("/v1/audio/transcriptions", form);
    let error = fails(
        post(&Form::new(
            "whisper-1",
            "notes.wav",
            b"not audio at all".to_vec(),
        )),
        400,
        "notes.wav: not an audio file",
    );
    assert_eq!(error["param"], "file");
    fails(
        post(&Form::new("whisper-1", "empty.wav", Vec::new())),
        400,
        "empty.wav: the uploaded file is empty",
    );
    fails(post(&Form::jfk().without_file()), 400, "no `file` field");
    let error = fails(
        post(&Form::new("whisper-9", "a.wav", vec![1])),
        404,
        "whisper-9",
    );
    assert_eq!(
        (error["code"].as_str(), error["param"].as_str()),
        (Some("model_not_found"), Some("model"))
    );
    fails(
        post(&Form::jfk().field("response_format", "xml")),
        400,
        "json, text, srt, vtt or verbose_json",
    );
    fails(
        post(&Form::jfk().field("timestamp_granularities[]", "word")),
        400,
        "set response_format=verbose_json",
    );
    fails(
        post(&Form::jfk().field("timestamp_granularities[]", "phoneme")),
        400,
        "unknown timestamp granularity",
    );
    fails(
        post(&Form::jfk().field("temperature", "hot")),
        400,
        "temperature",
    );
    // What a model refuses names the form's field.
    let voxtral = || Form::new("voxtral", "jfk.wav", std::fs::read(super::jfk()).unwrap());
    for (field, value, expect) in [
        ("prompt", "Names.", "does not support prompts"),
        (
            "temperature",
            "0.5",
            "does not support beam search or sampling",
        ),
    ] {
        let error = fails(post(&voxtral().field(field, value)), 400, expect);
        assert_eq!(error["param"], field);
    }
    let error = fails(
        post(&Form::jfk().field("language", "klingon")),
        400,
        "unknown language \"klingon\"",
    );
    assert_eq!(error["param"], "language");
    let error = fails(
        post(&Form::jfk().field("model", "whisper-1")),
        400,
        "`model` is given twice",
    );
    assert_eq!(error["param"], "model");
    fails(
        post(
            &Form::jfk()
                .field("stream", "true")
                .field("response_format", "srt"),
        ),
        400,
        "stream=true",
    );
    fails(
        post(&Form::new("tts-1", "jfk.wav", vec![1])),
        400,
        "text-to-speech model",
    );
    let not_a_form = request(
        server.addr,
        "POST",
        "/v1/audio/transcriptions",
        &[("Content-Type", "application/json")],
        b"{}",
    );
    fails(not_a_form, 400, "multipart/form-data");
    let error = fails(
        server.get("/v1/nothing"),
        404,
        "unknown endpoint GET /v1/nothing",
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("/v1/chat/completions"),
        "{error}"
    );
    fails(server.get("/v1/audio/speech"), 405, "does not take GET");

    let speech = |body: serde_json::Value| server.post_json("/v1/audio/speech", &body);
    let base = json!({"model": "tts-1", "input": "Hi.", "voice": "tester", "max_frames": 2});
    let with = |key: &str, value: serde_json::Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    let error = fails(
        speech(with("response_format", "aac".into())),
        400,
        "use mp3, opus, flac, wav or pcm (16-bit mono, 24 kHz)",
    );
    assert_eq!(error["param"], "response_format");
    for (speed, message) in [
        (4.5, "speed 4.5 is out of range: 0.25 to 4"),
        (0.2, "speed 0.2 is out of range"),
        (-1.0, "speed -1.0 is out of range"),
        (1e308, "speed 1e308 is out of range"),
    ] {
        let error = fails(speech(with("speed", speed.into())), 400, message);
        assert_eq!(error["param"], "speed");
    }
    fails(
        speech(with("stream_format", "ws".into())),
        400,
        "use audio or sse",
    );
    let error = fails(speech(with("voice", "nobody".into())), 400, "tester");
    assert_eq!(error["param"], "voice");
    let error = fails(speech(with("language", "klingon".into())), 400, "klingon");
    assert_eq!(error["param"], "language");
    // A field of the wrong type is named, with what it takes (not serde's Rust types).
    for (field, value, expect) in [
        (
            "max_frames",
            json!(1.5),
            "`max_frames` must be a whole number ≥ 0",
        ),
        ("seed", json!(-1), "`seed` must be a whole number ≥ 0"),
        ("speed", json!("fast"), "`speed` must be a number"),
        ("input", json!(5), "`input` must be a string"),
    ] {
        let error = fails(speech(with(field, value)), 400, expect);
        assert_eq!(error["param"], field);
    }
    fails(
        request(server.addr, "POST", "/v1/audio/speech", &[], b"[1]"),
        400,
        "the body must be a JSON object",
    );
    fails(speech(with("input", "  ".into())), 400, "no `input`");
    fails(
        speech(with("model", "whisper-1".into())),
        400,
        "speech-to-text model",
    );
    fails(speech(with("model", "tts-9".into())), 404, "tts-9");
    let error = fails(
        speech(with("model", "tts-clone".into())),
        400,
        "voice \"tester\" is not one cloned for tts-clone: alice",
    );
    assert_eq!(error["param"], "voice");
    fails(speech(with("max_frames", 0.into())), 400, "max_frames");
    fails(
        request(server.addr, "POST", "/v1/audio/speech", &[], b"{not json"),
        400,
        "the body is not JSON",
    );
    // A key given twice is named.
    let twice = br#"{"model": "tts-1", "model": "tts-1", "input": "Hi.", "voice": "tester"}"#;
    let error = fails(
        request(server.addr, "POST", "/v1/audio/speech", &[], twice),
        400,
        "`model` is given twice",
    );
    assert_eq!(error["param"], "model");
    // A whole request followed by more is not one JSON body.
    let trailing = format!(
        "{} xyz",
        json!({"model": "tts-1", "input": "Hi.", "voice": "tester"})
    );
    fails(
        request(
            server.addr,
            "POST",
            "/v1/audio/speech",
            &[],
            trailing.as_bytes(),
        ),
        400,
        "the body is not JSON: trailing characters",
    );
    // A form of thousands of fields is refused (each once cost a look through all before it).
    let many = (0..300).fold(Form::jfk(), |form, i| form.field(&format!("f{i}"), "x"));
    fails(
        server.post_form("/v1/audio/transcriptions", &many),
        400,
        "more than 256 fields",
    );
}

#[test]
fn uploads_over_the_limit_get_413() {
    let server = TestServer::with(ServerConfig::default(), |c| {
        c.limits.max_upload_bytes = 100_000;
    });
    // A file over the limit in a body within the form's allowance: cut off while read.
    let error = fails(
        server.post_form(
            "/v1/audio/transcriptions",
            &Form::new("whisper-1", "big.wav", vec![7; 100_001]),
        ),
        413,
        "--max-upload-mb",
    );
    assert_eq!(error["param"], "file");
    // A body declared too large: refused before it is sent.
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    let form = Form::jfk();
    std::io::Write::write_all(
        &mut stream,
        &super::head(
            "POST",
            "/v1/audio/transcriptions",
            &[("Content-Type", &form.content_type())],
            50_000_000,
        ),
    )
    .unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut raw).unwrap();
    fails(super::parse(&raw), 413, "--max-upload-mb");
    // Within the limit, the same route works.
    let small = server.post_form(
        "/v1/audio/transcriptions",
        &Form::new("whisper-1", "x.wav", b"not audio".to_vec()),
    );
    assert_eq!(small.status, 400);
}

#[test]
fn audio_longer_than_the_limit_is_refused() {
    let server = TestServer::with(ServerConfig::default(), |c| c.limits.max_audio_s = 5.0);
    let error = fails(
        server.post_form("/v1/audio/transcriptions", &Form::jfk()),
        400,
        "jfk.wav: 11.0 s of audio; this server transcribes at most 5 s",
    );
    assert_eq!(error["param"], "file");
    // 5 s make 62 frames of speech at most.
    fails(
        server.post_json(
            "/v1/audio/speech",
            &json!({"model": "tts-1", "input": "Hi.", "voice": "tester", "max_frames": 63}),
        ),
        400,
        "at most 62 frames",
    );
}

#[test]
fn an_api_key_guards_v1_but_not_health() {
    let server = TestServer::with(ServerConfig::default(), |c| {
        c.api_key = Some("sk-test".into());
    });
    let error = fails(server.get("/v1/models"), 401, "missing API key");
    assert_eq!(error["code"], "invalid_api_key");
    let get = |auth: &str| {
        request(
            server.addr,
            "GET",
            "/v1/models",
            &[("Authorization", auth)],
            b"",
        )
    };
    fails(get("Bearer sk-wrong"), 401, "incorrect API key");
    fails(get("sk-test"), 401, "Bearer KEY");
    assert_eq!(get("Bearer sk-test").status, 200);
    assert_eq!(get("bearer sk-test").status, 200);
    // Checked before the upload is looked at.
    fails(
        server.post_form("/v1/audio/transcriptions", &Form::jfk()),
        401,
        "missing API key",
    );
    let ok = server.post_form_with(
        "/v1/audio/transcriptions",
        &Form::new("whisper-1", "x.wav", b"junk".to_vec()),
        &[("Authorization", "Bearer sk-test")],
    );
    assert_eq!(ok.status, 400, "past the key check");
    assert_eq!(server.get("/health").status, 200);
}

/// `input` takes OpenAI's 4096 characters at most, and the text with its frames must fit the
/// model's positions (32 768 for the fixture): over either, a 400 before any synthesis; a
/// megabyte of text once took the whole server down.
#[test]
fn speech_text_over_the_limits_gets_400() {
    let server = TestServer::start();
    let speech = |input: String, max_frames: usize| {
        server.post_json(
            "/v1/audio/speech",
            &json!({"model": "tts-1", "input": input, "voice": "tester", "max_frames": max_frames}),
        )
    };
    let error = fails(
        speech("a".repeat(1 << 20), 2),
        400,
        "`input` is 1048576 characters long; this endpoint takes at most 4096",
    );
    assert_eq!(error["param"], "input");
    // Characters, not bytes.
    fails(speech("é".repeat(4097), 2), 400, "4097 characters long");
    let reply = speech("é".repeat(4096), 1);
    // The default, MP3: MPEG-2 Layer III frames from the first byte.
    assert_eq!((reply.status, &reply.body[..2]), (200, &[0xFF, 0xF3][..]));
    // The text is spoken in parts of 500 characters, each checked: 500 tokens of text and 26
    // of the template, where 32 300 frames leave room for 468.
    fails(
        speech("a".repeat(4000), 32_300),
        400,
        "text too long: 526 tokens, this model takes at most 468",
    );
    fails(
        speech("Hi.".into(), 40_000),
        400,
        "cannot generate 40000 frames",
    );
}

/// A speech body over the limit gets the JSON error: at once when its declared length says so,
/// when cut off otherwise (chunked).
#[test]
fn speech_bodies_over_the_limit_get_413() {
    let server = TestServer::start();
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    std::io::Write::write_all(
        &mut stream,
        &super::head(
            "POST",
            "/v1/audio/speech",
            &[("Content-Type", "application/json")],
            40_000_000,
        ),
    )
    .unwrap();
    // Only against a server that waits for the body would this expire.
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut raw).expect("an answer before the body");
    let error = fails(
        super::parse(&raw),
        413,
        "larger than this endpoint accepts: 2 MB",
    );
    assert_eq!(error["param"], serde_json::Value::Null);

    // One chunk declared larger than the limit, sent up to one byte past it: the server reads
    // all that was sent before it answers.
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    let sent = voxide_server::speech::MAX_BODY_BYTES + 1;
    let head = "POST /v1/audio/speech HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
                Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut body = format!("{head}{:x}\r\n", 2 * sent).into_bytes();
    body.resize(body.len() + sent, b' ');
    std::io::Write::write_all(&mut stream, &body).unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut raw).unwrap();
    fails(super::parse(&raw), 413, "larger than this endpoint accepts");
}

/// Failing to listen or to load the VAD says why, in the OS's words.
#[test]
fn bind_and_vad_errors_give_their_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bind = |host: &str, port: u16| {
        let config = ServerConfig {
            host: host.into(),
            port,
            ..ServerConfig::default()
        };
        match runtime.block_on(voxide_server::Server::bind(&config, super::models())) {
            Ok(_) => panic!("{host}:{port} should not bind"),
            Err(e) => e.to_string(),
        }
    };
    let error = bind("127.0.0.1", port);
    assert!(
        error.starts_with(&format!("cannot listen on 127.0.0.1:{port}: ")),
        "{error}"
    );
    assert!(error.contains("in use"), "{error}");
    let error = bind("999.1.1.1", 0);
    let reason = error
        .strip_prefix("cannot listen on 999.1.1.1:0: ")
        .unwrap_or_else(|| panic!("{error}"));
    assert!(!reason.is_empty() && !error.contains('\n'), "{error}");

    let error = voxide_server::Registry::new()
        .load_vad(std::path::Path::new("/no/such/vad.bin"))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("--vad-model /no/such/vad.bin: ") && error.contains("No such file"),
        "{error}"
    );
}
