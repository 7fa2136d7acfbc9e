//! `/v1/realtime?intent=transcription` driven by a plain WebSocket client (tungstenite):
//! server-VAD turns on Whisper equal the VAD and the model run directly on the same audio,
//! Voxtral Realtime streams deltas that add up to the stream's own text, and bad events get
//! `error` events without closing the session.

use crate::{jfk, models, vad_model, TestServer};
use base64::Engine as _;
use serde_json::{json, Value};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::{HeaderName, HeaderValue};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};
use voxide_models::silero_vad::{SileroVad, TurnDetector, TurnEvent, TurnParams};
use voxide_runtime::{TranscribeRequest, Transcriber};
use voxide_server::{Engine, ServerConfig};

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// Waits at most this long for any event.
const EVENT_DEADLINE: Duration = Duration::from_secs(120);

fn connect(server: &TestServer, query: &str, headers: &[(&str, &str)]) -> Socket {
    try_connect(server, query, headers).expect("the upgrade succeeds")
}

fn try_connect(
    server: &TestServer,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Socket, tungstenite::Error> {
    let url = format!("ws://{}/v1/realtime{query}", server.addr);
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let (socket, _) = tungstenite::connect(request)?;
    if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
        stream.set_read_timeout(Some(EVENT_DEADLINE)).unwrap();
    }
    Ok(socket)
}

fn send(socket: &mut Socket, event: Value) {
    socket.send(Message::text(event.to_string())).unwrap();
}

/// The next server event.
fn next(socket: &mut Socket) -> Value {
    loop {
        match socket.read().expect("an event before the deadline") {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Close(frame) => panic!("the server closed the session: {frame:?}"),
            _ => {}
        }
    }
}

/// The close code the server ends the session with, after any events before it.
fn close_code(socket: &mut Socket) -> u16 {
    close_code_or_reset(socket).expect("a close frame, not a reset")
}

/// [`close_code`], or `None` where the connection was reset instead.
fn close_code_or_reset(socket: &mut Socket) -> Option<u16> {
    loop {
        match socket.read() {
            Ok(Message::Close(Some(frame))) => return Some(frame.code.into()),
            Ok(Message::Close(None)) => panic!("a close frame without a code"),
            Ok(Message::Text(text)) => println!("before the close: {text}"),
            Ok(_) => {}
            // The reset as the socket reports it, or as tungstenite names an end of the
            // stream before a close frame (both seen on this test's connection).
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return None
            }
            Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => return None,
            Err(e) => panic!("neither a close frame nor a reset: {e}"),
        }
    }
}

/// Events until one of type `last` (included).
fn until(socket: &mut Socket, last: &str) -> Vec<Value> {
    let start = Instant::now();
    let mut events = Vec::new();
    while start.elapsed() < EVENT_DEADLINE {
        let event = next(socket);
        let done = event["type"] == last;
        events.push(event);
        if done {
            return events;
        }
    }
    panic!("no {last} event within {EVENT_DEADLINE:?}: {events:?}");
}

fn pcm16(samples: &[f32]) -> String {
    let bytes: Vec<u8> = samples
        .iter()
        .flat_map(|&s| ((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Samples as the server decodes them from [`pcm16`].
fn quantized(samples: &[f32]) -> Vec<f32> {
    samples
        .iter()
        .map(|&s| (s.clamp(-1.0, 1.0) * 32767.0).round() / 32768.0)
        .collect()
}

fn append_all(socket: &mut Socket, samples: &[f32], chunk: usize) {
    for piece in samples.chunks(chunk) {
        send(
            socket,
            json!({"type": "input_audio_buffer.append", "audio": pcm16(piece)}),
        );
    }
}

fn jfk_16k() -> Vec<f32> {
    voxide_audio::load_mono(
        &voxide_audio::AudioInput::from_arg(jfk().to_str().unwrap()),
        16000,
    )
    .unwrap()
}

fn transcriber(id: &str) -> std::sync::Arc<dyn Transcriber> {
    match &models().get(id).unwrap().engine {
        Engine::Transcriber(t) => t.clone(),
        Engine::Synthesizer(_) => unreachable!("{id} is a speech-to-text fixture"),
    }
}

fn configure(socket: &mut Socket, session: Value) -> Value {
    send(
        socket,
        json!({"type": "transcription_session.update", "session": session}),
    );
    let updated = next(socket);
    assert_eq!(
        updated["type"], "transcription_session.updated",
        "{updated}"
    );
    updated
}

const BETA: (&str, &str) = ("OpenAI-Beta", "realtime=v1");

#[test]
fn server_vad_turns_on_whisper_equal_the_vad_and_the_model_on_the_same_audio() {
    let server = TestServer::start();
    let mut socket = connect(&server, "?intent=transcription", &[BETA]);
    let created = next(&mut socket);
    assert_eq!(created["type"], "transcription_session.created");
    assert_eq!(created["session"]["turn_detection"]["type"], "server_vad");
    configure(
        &mut socket,
        json!({
            "input_audio_format": {"type": "audio/pcm", "rate": 16000},
            "input_audio_transcription": {"model": "whisper-1", "language": "en"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
        }),
    );
    // Two stretches of speech with silence around them.
    let speech = jfk_16k();
    let silence = vec![0f32; 16000];
    let mut audio = silence.clone();
    audio.extend_from_slice(&speech[16000..48000]);
    audio.extend_from_slice(&silence);
    audio.extend_from_slice(&speech[64000..96000]);
    audio.extend_from_slice(&silence);
    append_all(&mut socket, &audio, 1600);

    // What the VAD and the turn rules find on the audio as the server decodes it.
    let heard = quantized(&audio);
    let vad = SileroVad::load(&vad_model()).unwrap();
    let probabilities = vad.probabilities(&heard).unwrap();
    let mut detector = TurnDetector::new(TurnParams::default());
    let expected: Vec<TurnEvent> = probabilities
        .iter()
        .enumerate()
        .filter_map(|(i, &p)| detector.push(i * 512, p))
        .collect();
    assert!(expected.len() >= 4, "{expected:?}");
    let turns: Vec<(usize, usize)> = expected
        .chunks_exact(2)
        .map(|pair| match pair {
            [TurnEvent::Started { start }, TurnEvent::Stopped { end }] => (*start, *end),
            other => panic!("{other:?}"),
        })
        .collect();

    let whisper = transcriber("whisper-1");
    let request = TranscribeRequest {
        language: Some("en".into()),
        ..TranscribeRequest::default()
    };
    // Turns keep being found while earlier ones are transcribed: the events of items may
    // interleave, each item's own come in order.
    let mut all = Vec::new();
    while all
        .iter()
        .filter(|e: &&Value| e["type"] == "conversation.item.input_audio_transcription.completed")
        .count()
        < turns.len()
    {
        all.push(next(&mut socket));
    }
    let started: Vec<&Value> = all
        .iter()
        .filter(|e| e["type"] == "input_audio_buffer.speech_started")
        .collect();
    assert_eq!(started.len(), turns.len());
    let mut previous = Value::Null;
    for (&(start, end), started) in turns.iter().zip(started) {
        let item = started["item_id"].clone();
        let events: Vec<&Value> = all
            .iter()
            .filter(|e| e["item_id"] == item || e["item"]["id"] == item)
            .collect();
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        let delta = "conversation.item.input_audio_transcription.delta";
        // A delta per segment, as each window is decoded.
        let deltas = kinds.len() - 5;
        assert!(deltas >= 1, "{kinds:?}");
        assert_eq!(
            [&kinds[..4], &kinds[4 + deltas..]].concat(),
            [
                "input_audio_buffer.speech_started",
                "input_audio_buffer.speech_stopped",
                "input_audio_buffer.committed",
                "conversation.item.created",
                "conversation.item.input_audio_transcription.completed",
            ]
        );
        assert!(
            kinds[4..4 + deltas].iter().all(|k| *k == delta),
            "{kinds:?}"
        );
        assert_eq!(events[0]["audio_start_ms"], start / 16);
        assert_eq!(events[1]["audio_end_ms"], end / 16);
        assert_eq!(events[2]["previous_item_id"], previous);
        let (text, _) = whisper
            .transcribe(&heard[start..end], &request, &mut |_| true)
            .unwrap();
        let completed = events[4 + deltas];
        assert_eq!(completed["transcript"], text.text.trim());
        // The deltas add up to the segments' text, the first without its leading space.
        let streamed: String = events[4..4 + deltas]
            .iter()
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        let segments: String = text.segments.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(streamed, segments.trim_start());
        assert_eq!(
            completed["usage"]["seconds"].as_f64().unwrap(),
            (end - start) as f64 / 16000.0
        );
        previous = item;
    }
    socket.close(None).unwrap();
}

#[test]
fn voxtral_streams_deltas_that_add_up_to_its_own_stream() {
    let server = TestServer::start();
    // The model named in the URL; the GA dialect (no beta header).
    let mut socket = connect(&server, "?intent=transcription&model=voxtral", &[]);
    let created = next(&mut socket);
    assert_eq!(created["type"], "session.created");
    assert_eq!(
        created["session"]["audio"]["input"]["transcription"]["model"],
        "voxtral"
    );
    send(
        &mut socket,
        json!({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": null}}}}),
    );
    assert_eq!(next(&mut socket)["type"], "session.updated");
    let audio = quantized(&jfk_16k()[..4 * 16000]);
    append_all(&mut socket, &audio, 1280);
    send(
        &mut socket,
        json!({"type": "input_audio_buffer.commit", "event_id": "c1"}),
    );
    let events = until(
        &mut socket,
        "conversation.item.input_audio_transcription.completed",
    );

    // The same audio through the model's own stream, in the server's 512-sample windows.
    let voxtral = transcriber("voxtral");
    let request = TranscribeRequest {
        ..TranscribeRequest::default()
    };
    let mut stream = voxtral.stream(&request).unwrap().unwrap();
    let mut streamed = String::new();
    for window in audio.chunks(512) {
        streamed.push_str(&stream.push(window).unwrap());
    }
    let before_commit = streamed.clone();
    streamed.push_str(&stream.finish().unwrap());

    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "conversation.item.input_audio_transcription.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, streamed);
    let completed = events.last().unwrap();
    assert_eq!(completed["transcript"], streamed.trim());
    assert!(!streamed.trim().is_empty());
    // Text decoded before the commit came before the commit's events.
    let committed_at = events
        .iter()
        .position(|e| e["type"] == "input_audio_buffer.committed")
        .unwrap();
    let early: String = events[..committed_at]
        .iter()
        .filter_map(|e| e["delta"].as_str())
        .collect();
    assert!(!before_commit.is_empty());
    assert_eq!(early, before_commit);
    assert!(events
        .iter()
        .any(|e| e["type"] == "conversation.item.added"));
}

#[test]
fn twenty_four_khz_pcm16_is_resampled_as_a_whole_file_would_be() {
    let server = TestServer::start();
    let mut socket = connect(&server, "?intent=transcription", &[BETA]);
    next(&mut socket);
    let updated = configure(
        &mut socket,
        json!({"input_audio_transcription": {"model": "whisper-1", "language": "en"},
               "turn_detection": null}),
    );
    assert_eq!(updated["session"]["input_audio_format"], "pcm16");
    let at_24k = quantized(&voxide_audio::resample(&jfk_16k()[..3 * 16000], 16000, 24000).unwrap());
    append_all(&mut socket, &at_24k, 2400);
    send(&mut socket, json!({"type": "input_audio_buffer.commit"}));
    let events = until(
        &mut socket,
        "conversation.item.input_audio_transcription.completed",
    );
    let completed = events.last().unwrap();
    // The commit takes what the resampler still holds (its look-ahead): all 3 s.
    assert_eq!(completed["usage"]["seconds"].as_f64(), Some(3.0));
    let heard = voxide_audio::resample(&at_24k, 24000, 16000).unwrap();
    let request = TranscribeRequest {
        language: Some("en".into()),
        ..TranscribeRequest::default()
    };
    let (text, _) = transcriber("whisper-1")
        .transcribe(&heard, &request, &mut |_| true)
        .unwrap();
    assert_eq!(completed["transcript"], text.text.trim());
    // Each item holds exactly its own audio: 100 ms (the least a commit takes), then 300 ms.
    for ms in [100, 300] {
        append_all(&mut socket, &at_24k[..24 * ms], 2400);
        send(&mut socket, json!({"type": "input_audio_buffer.commit"}));
        let events = until(
            &mut socket,
            "conversation.item.input_audio_transcription.completed",
        );
        let seconds = events.last().unwrap()["usage"]["seconds"].as_f64();
        assert_eq!(seconds, Some(ms as f64 / 1000.0), "{ms} ms");
    }
}

/// A committed item on Voxtral Mini 3B (no stream of its own) gets its text as it decodes:
/// many deltas, adding up to the transcript, which equals the model's on the same audio.
#[test]
fn voxtral_mini_items_get_their_text_as_it_decodes() {
    let server = TestServer::start();
    let mut socket = connect(&server, "?intent=transcription", &[BETA]);
    next(&mut socket);
    configure(
        &mut socket,
        json!({"input_audio_transcription": {"model": "voxtral-mini", "language": "en"},
               "turn_detection": null, "input_audio_format": {"type": "audio/pcm", "rate": 16000}}),
    );
    let clip = quantized(&jfk_16k()[..4 * 16000]);
    append_all(&mut socket, &clip, 1600);
    send(&mut socket, json!({"type": "input_audio_buffer.commit"}));
    let events = until(
        &mut socket,
        "conversation.item.input_audio_transcription.completed",
    );
    let deltas: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "conversation.item.input_audio_transcription.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert!(deltas.len() > 3, "{events:?}");
    let completed = events.last().unwrap();
    assert_eq!(completed["transcript"].as_str().unwrap(), deltas.concat());
    let request = TranscribeRequest {
        language: Some("en".into()),
        ..TranscribeRequest::default()
    };
    let (text, _) = transcriber("voxtral-mini")
        .transcribe(&clip, &request, &mut |_| true)
        .unwrap();
    assert_eq!(completed["transcript"], text.text.trim());
}

#[test]
fn bad_events_get_error_events_and_the_session_goes_on() {
    let server = TestServer::start();
    let mut socket = connect(&server, "?intent=transcription", &[BETA]);
    next(&mut socket);
    let expect_error = |socket: &mut Socket, event: Message, code: &str| {
        socket.send(event).unwrap();
        let error = next(socket);
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["error"]["code"], code, "{error}");
        assert!(!error["error"]["message"].as_str().unwrap().is_empty());
    };
    let text = |v: Value| Message::text(v.to_string());
    // Audio before any model is named.
    expect_error(
        &mut socket,
        text(json!({"type": "input_audio_buffer.append", "audio": pcm16(&[0.0; 160])})),
        "session_not_configured",
    );
    expect_error(&mut socket, Message::text("{not json"), "invalid_json");
    expect_error(
        &mut socket,
        text(json!({"type": "response.create"})),
        "unknown_event",
    );
    expect_error(
        &mut socket,
        text(json!({"type": "transcription_session.update",
                    "session": {"input_audio_transcription": {"model": "nope"}}})),
        "model_not_found",
    );
    expect_error(
        &mut socket,
        text(json!({"type": "transcription_session.update",
                    "session": {"input_audio_transcription": {"model": "tts-1"}}})),
        "invalid_value",
    );
    // What the model itself refuses is refused at the update, as over HTTP.
    send(
        &mut socket,
        json!({"type": "transcription_session.update",
               "session": {"input_audio_transcription": {"model": "voxtral", "prompt": "Names."}}}),
    );
    let error = next(&mut socket);
    assert_eq!(error["error"]["code"], "invalid_value", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("does not support prompts"), "{message}");
    expect_error(
        &mut socket,
        Message::binary(vec![1u8, 2, 3]),
        "invalid_message",
    );
    configure(
        &mut socket,
        json!({"input_audio_transcription": {"model": "whisper-1"}, "turn_detection": null}),
    );
    expect_error(
        &mut socket,
        text(json!({"type": "input_audio_buffer.append", "audio": "%%% not base64"})),
        "invalid_value",
    );
    expect_error(
        &mut socket,
        text(json!({"type": "input_audio_buffer.append",
                    "audio": base64::engine::general_purpose::STANDARD.encode([1u8, 2, 3])})),
        "invalid_value",
    );
    expect_error(
        &mut socket,
        text(json!({"type": "input_audio_buffer.commit", "event_id": "mine"})),
        "input_audio_buffer_commit_empty",
    );
    // Still serving: a clear is acknowledged.
    send(&mut socket, json!({"type": "input_audio_buffer.clear"}));
    assert_eq!(next(&mut socket)["type"], "input_audio_buffer.cleared");
    // Under server VAD, a commit with no speech heard says so (not "0 ms" of 300 sent).
    configure(
        &mut socket,
        json!({"input_audio_format": {"type": "audio/pcm", "rate": 16000},
               "input_audio_transcription": {"model": "whisper-1"},
               "turn_detection": {"type": "server_vad"}}),
    );
    append_all(&mut socket, &[0.0; 4800], 1600);
    send(&mut socket, json!({"type": "input_audio_buffer.commit"}));
    let error = next(&mut socket);
    assert_eq!(
        error["error"]["code"], "input_audio_buffer_commit_empty",
        "{error}"
    );
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("server VAD has heard no speech"),
        "{message}"
    );
}

/// Audio before a model is named is refused in the words of the client's dialect.
#[test]
fn an_unconfigured_session_is_told_how_in_its_own_dialect() {
    let server = TestServer::start();
    for (headers, how) in [
        (
            &[BETA][..],
            "send transcription_session.update with input_audio_transcription.model",
        ),
        (
            &[][..],
            "send session.update with audio.input.transcription.model",
        ),
    ] {
        let mut socket = connect(&server, "?intent=transcription", headers);
        next(&mut socket);
        send(
            &mut socket,
            json!({"type": "input_audio_buffer.append", "audio": pcm16(&[0.0; 160])}),
        );
        let error = next(&mut socket);
        assert_eq!(error["error"]["code"], "session_not_configured", "{error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(how), "{message}");
    }
}

/// A message over the connection's limit (twice `--max-upload-mb`) gets an error event that
/// says so before the session closes, not a bare close.
#[test]
fn a_message_over_the_limit_is_told_before_the_close() {
    let server = TestServer::with(ServerConfig::default(), |c| {
        c.limits.max_upload_bytes = 1 << 19
    });
    let mut socket = connect(&server, "?intent=transcription", &[BETA]);
    next(&mut socket);
    let audio = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 1 << 20]);
    // The server answers from the frame's header and closes while the 1.4 MB payload may still
    // be going out: a client that only read after its write had finished met a reset in that
    // write now and then. So the frame goes out from another thread while this one reads.
    let payload = json!({"type": "input_audio_buffer.append", "audio": audio}).to_string();
    let MaybeTlsStream::Plain(stream) = socket.get_ref() else {
        panic!("a plain TCP connection")
    };
    let mut stream = stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        // One text frame, masked as a client's must be (with a key of zeros: the payload as
        // it is); the write may meet the server's close.
        let mut frame = vec![0x81, 0x80 | 127];
        frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(payload.as_bytes());
        let _ = std::io::Write::write_all(&mut stream, &frame);
    });
    let error = next(&mut socket);
    assert_eq!(error["error"]["code"], "message_too_large", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("limit of 1048576 bytes"), "{message}");
    // The server closes with most of the frame unread, so its kernel may reset the
    // connection and drop the close frame on the way.
    if let Some(code) = close_code_or_reset(&mut socket) {
        assert_eq!(code, 1009, "message too big");
    }
    writer.join().unwrap();
}

#[test]
fn the_upgrade_checks_intent_key_and_session_slots() {
    let server = TestServer::with(ServerConfig::default(), |config| {
        config.api_key = Some("sk-test".into());
        config.limits.max_realtime_sessions = 1;
    });
    let status = |result: Result<Socket, tungstenite::Error>| match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{e}"),
        Ok(_) => 101,
    };
    assert_eq!(
        status(try_connect(&server, "?intent=transcription", &[])),
        401
    );
    let auth = ("Authorization", "Bearer sk-test");
    assert_eq!(
        status(try_connect(&server, "?intent=conversation", &[auth])),
        400
    );
    assert_eq!(
        status(try_connect(
            &server,
            "?intent=transcription&model=nope",
            &[auth]
        )),
        404
    );
    match try_connect(&server, "?model=a&model=b", &[auth]) {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 400);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
            assert!(body.contains("each at most once"), "{body}");
        }
        other => panic!("{other:?}"),
    }
    // A browser's way: the key as a subprotocol.
    let mut first = connect(
        &server,
        "?intent=transcription",
        &[(
            "Sec-WebSocket-Protocol",
            "realtime, openai-insecure-api-key.sk-test",
        )],
    );
    next(&mut first);
    assert_eq!(
        status(try_connect(&server, "?intent=transcription", &[auth])),
        429
    );
    let metrics = server.get("/metrics").text();
    assert!(metrics.contains("voxide_realtime_sessions 1"), "{metrics}");
    // An abandoned session (the socket dropped without a close) frees its slot.
    drop(first);
    let start = Instant::now();
    let mut second = loop {
        match try_connect(&server, "?intent=transcription", &[auth]) {
            Ok(socket) => break socket,
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("the slot was not freed: {e}"),
        }
    };
    assert_eq!(next(&mut second)["type"], "session.created");
}

#[test]
fn a_shutdown_tells_open_sessions_before_closing_them() {
    let server = TestServer::start();
    let mut socket = connect(&server, "?intent=transcription", &[]);
    next(&mut socket);
    drop(server);
    let event = next(&mut socket);
    assert_eq!(event["error"]["code"], "server_shutting_down", "{event}");
    assert_eq!(close_code(&mut socket), 1001, "going away");
}

#[test]
fn an_idle_session_is_told_before_it_is_closed() {
    let server = TestServer::with(ServerConfig::default(), |c| {
        c.limits.request_timeout = Some(Duration::from_millis(300));
    });
    let mut socket = connect(&server, "?intent=transcription", &[]);
    next(&mut socket);
    let event = next(&mut socket);
    assert_eq!(event["error"]["code"], "session_idle_timeout", "{event}");
    let message = event["error"]["message"].as_str().unwrap();
    assert!(message.contains("--request-timeout-s"), "{message}");
    assert_eq!(close_code(&mut socket), 1001, "going away");
}

/// `--max-batch-size 3`: three live Voxtral Realtime sessions at once, their steps taken
/// together, each send the deltas and transcript of the model's own stream alone.
#[test]
fn concurrent_voxtral_sessions_batched_stream_what_each_streams_alone() {
    let mut models = voxide_server::Registry::new();
    let spec = format!(
        "voxtral={}",
        crate::root()
            .join("tests/fixtures/voxtral-realtime/tiny-random-hf")
            .display()
    );
    models.load(&spec.parse().unwrap(), None).unwrap();
    assert_eq!(models.batch_concurrent_decodes(3).unwrap(), ["voxtral"]);
    let server = TestServer::serving(models, ServerConfig::default(), |c| {
        c.limits.max_concurrency = 3;
    });
    let jfk = jfk_16k();
    let clips: Vec<Vec<f32>> = [(0, 4), (3, 7), (6, 9)]
        .iter()
        .map(|&(from, to)| quantized(&jfk[from * 16000..to * 16000]))
        .collect();
    // Each clip alone, through the unbatched fixture's own stream.
    let voxtral = transcriber("voxtral");
    let alone: Vec<String> = clips
        .iter()
        .map(|clip| {
            let mut stream = voxtral
                .stream(&TranscribeRequest::default())
                .unwrap()
                .unwrap();
            let mut text: String = clip.chunks(512).map(|w| stream.push(w).unwrap()).collect();
            text.push_str(&stream.finish().unwrap());
            text
        })
        .collect();
    assert!(alone[0] != alone[1] && alone[1] != alone[2]);
    let session = |clip: &Vec<f32>| -> String {
        let mut socket = connect(&server, "?intent=transcription&model=voxtral", &[]);
        assert_eq!(next(&mut socket)["type"], "session.created");
        send(
            &mut socket,
            json!({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": null}}}}),
        );
        assert_eq!(next(&mut socket)["type"], "session.updated");
        append_all(&mut socket, clip, 1280);
        send(&mut socket, json!({"type": "input_audio_buffer.commit"}));
        until(
            &mut socket,
            "conversation.item.input_audio_transcription.completed",
        )
        .iter()
        .filter(|e| e["type"] == "conversation.item.input_audio_transcription.delta")
        .map(|e| e["delta"].as_str().unwrap().to_string())
        .collect()
    };
    let together = crate::at_once(&clips, session);
    assert_eq!(together, alone);
    let metrics = server.get("/metrics").text();
    let steps: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("voxide_batched_decodes_total{id=\"voxtral\"} "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    assert!(steps > 3 * 40, "{metrics}");
}
