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
    fails(
        server.get("/v1/nothing"),
        404,
        "unknown endpoint GET /v1/nothing",
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
        speech(with("response_format", "mp3".into())),
        400,
        "use wav or pcm",
    );
    assert_eq!(error["param"], "response_format");
    fails(
        speech(with("speed", 1.5.into())),
        400,
        "speed 1.5 is not supported",
    );
    fails(
        speech(with("stream_format", "ws".into())),
        400,
        "use audio or sse",
    );
    fails(speech(with("voice", "nobody".into())), 400, "tester");
    fails(speech(with("input", "  ".into())), 400, "no `input`");
    fails(
        speech(with("model", "whisper-1".into())),
        400,
        "speech-to-text model",
    );
    fails(speech(with("model", "tts-9".into())), 404, "tts-9");
    fails(speech(with("max_frames", 0.into())), 400, "max_frames");
    fails(
        request(server.addr, "POST", "/v1/audio/speech", &[], b"{not json"),
        400,
        "not the JSON expected",
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
