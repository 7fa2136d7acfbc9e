//! Transcriptions: every response format equals `voxide transcribe --format …` on the same
//! file (the library call with the CLI's default settings), and the stream carries the same
//! text.

use super::{jfk, models, root, Form, TestServer};
use serde_json::Value;
use std::sync::OnceLock;
use voxide_audio::{load_mono, AudioInput};
use voxide_runtime::{render, OutputFormat, TranscribeRequest, Transcript};
use voxide_server::Engine;

/// `voxide transcribe --model tests/fixtures/whisper/tiny-random jfk.wav`'s request: its
/// flags' defaults.
fn cli_request() -> TranscribeRequest {
    TranscribeRequest {
        language: Some("auto".into()),
        ..TranscribeRequest::default()
    }
}

/// The library's transcript of jfk.wav, as the CLI computes it.
pub fn library_transcript() -> &'static Transcript {
    static TRANSCRIPT: OnceLock<Transcript> = OnceLock::new();
    TRANSCRIPT.get_or_init(|| {
        let models = models();
        let Engine::Transcriber(model) = &models.get("whisper-1").unwrap().engine else {
            panic!("whisper-1 is a transcriber");
        };
        let samples = load_mono(&AudioInput::File(jfk()), model.sample_rate()).unwrap();
        model
            .transcribe(&samples, &cli_request(), &mut |_| true)
            .unwrap()
            .0
    })
}

#[test]
fn every_format_equals_the_cli_output() {
    let want = library_transcript();
    // The CLI's own test pins these token ids to openai-whisper's.
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/whisper/tiny-random.reference.json"))
            .unwrap(),
    )
    .unwrap();
    let reference_ids: Vec<u32> = reference["transcribe_jfk"]["windows"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["tokens"].as_array().unwrap().clone())
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(want.token_ids, reference_ids);

    let server = TestServer::start();
    for (format, rendered, content_type) in [
        ("json", OutputFormat::Json, "application/json"),
        ("text", OutputFormat::Txt, "text/plain; charset=utf-8"),
        (
            "verbose_json",
            OutputFormat::VerboseJson,
            "application/json",
        ),
        ("srt", OutputFormat::Srt, "text/plain; charset=utf-8"),
    ] {
        let mut form = Form::jfk().field("response_format", format);
        if format == "verbose_json" {
            form = form.field("timestamp_granularities[]", "segment");
        }
        let reply = server.post_form("/v1/audio/transcriptions", &form);
        assert_eq!(reply.status, 200, "{format}: {}", reply.text());
        assert_eq!(reply.header("content-type"), Some(content_type), "{format}");
        assert_eq!(
            reply.text(),
            render(want, rendered, "transcribe"),
            "{format}"
        );
    }
    // The form's defaults are the CLI's; json is OpenAI's default format.
    let reply = server.post_form(
        "/v1/audio/transcriptions",
        &Form::jfk().field("language", ""),
    );
    assert_eq!(reply.json(), serde_json::json!({ "text": want.text }));
    let verbose = server.post_form(
        "/v1/audio/transcriptions",
        &Form::jfk().field("response_format", "verbose_json"),
    );
    let verbose = verbose.json();
    assert_eq!(verbose["token_ids"], serde_json::json!(reference_ids));
    assert_eq!(verbose["task"], "transcribe");
    assert_eq!(verbose["duration"], 11.0);
}

/// A browser's recording (MediaRecorder's WebM/Opus, uploaded as a nameless blob) and a
/// phone's voice memo (M4A/AAC) are transcribed as the library transcribes the same files.
#[test]
fn browser_and_phone_recordings_are_transcribed() {
    let models = models();
    let Engine::Transcriber(model) = &models.get("whisper-1").unwrap().engine else {
        panic!("whisper-1 is a transcriber");
    };
    let server = TestServer::start();
    for name in ["synth_opus_48k_stereo.webm", "synth_aac_44k_stereo.m4a"] {
        let path = root().join("tests/fixtures/audio").join(name);
        let samples = load_mono(&AudioInput::File(path.clone()), model.sample_rate()).unwrap();
        let want = model
            .transcribe(&samples, &cli_request(), &mut |_| true)
            .unwrap()
            .0;
        let form = Form::new("whisper-1", "blob", std::fs::read(&path).unwrap());
        let reply = server.post_form("/v1/audio/transcriptions", &form);
        assert_eq!(reply.status, 200, "{name}: {}", reply.text());
        assert_eq!(
            reply.json(),
            serde_json::json!({ "text": want.text }),
            "{name}"
        );
    }
}

/// `timestamp_granularities[]=word` returns the words of `--word-timestamps`, per segment and
/// in OpenAI's top-level `words`.
#[test]
fn word_granularity_returns_the_cli_words() {
    let models = models();
    let Engine::Transcriber(model) = &models.get("whisper-1").unwrap().engine else {
        panic!("whisper-1 is a transcriber");
    };
    let samples = load_mono(&AudioInput::File(jfk()), model.sample_rate()).unwrap();
    let request = TranscribeRequest {
        word_timestamps: true,
        ..cli_request()
    };
    let (want, _) = model.transcribe(&samples, &request, &mut |_| true).unwrap();
    assert!(want
        .segments
        .iter()
        .any(|s| !s.words.as_ref().unwrap().is_empty()));
    let server = TestServer::start();
    let form = Form::jfk()
        .field("response_format", "verbose_json")
        .field("timestamp_granularities[]", "word")
        .field("timestamp_granularities[]", "segment");
    let reply = server.post_form("/v1/audio/transcriptions", &form);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.text(),
        render(&want, OutputFormat::VerboseJson, "transcribe")
    );
    let got = reply.json();
    let words: usize = want
        .segments
        .iter()
        .map(|s| s.words.as_ref().unwrap().len())
        .sum();
    assert_eq!(got["words"].as_array().unwrap().len(), words);
}

/// Voxtral Mini 3B is served like any transcription model: the reply equals the library's
/// transcript with the CLI's defaults, and translation goes through its chat prompt.
#[test]
fn voxtral_mini_is_served_like_the_cli() {
    let models = models();
    let Engine::Transcriber(model) = &models.get("voxtral-mini").unwrap().engine else {
        panic!("voxtral-mini is a transcriber");
    };
    let samples = load_mono(&AudioInput::File(jfk()), model.sample_rate()).unwrap();
    let server = TestServer::start();
    for (path, translate) in [
        ("/v1/audio/transcriptions", false),
        ("/v1/audio/translations", true),
    ] {
        let request = TranscribeRequest {
            translate,
            ..cli_request()
        };
        let (want, _) = model.transcribe(&samples, &request, &mut |_| true).unwrap();
        assert!(!want.token_ids.is_empty());
        let form = Form::new("voxtral-mini", "jfk.wav", std::fs::read(jfk()).unwrap())
            .field("response_format", "verbose_json");
        let reply = server.post_form(path, &form);
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        let got = reply.json();
        assert_eq!(got["text"], want.text.as_str(), "{path}");
        assert_eq!(
            got["token_ids"],
            serde_json::json!(want.token_ids),
            "{path}"
        );
    }
}

#[test]
fn streamed_events_carry_the_segments_then_the_text() {
    let want = library_transcript();
    let server = TestServer::start();
    let reply = server.post_form(
        "/v1/audio/transcriptions",
        &Form::jfk().field("stream", "true"),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let events = reply.events();
    let (done, deltas) = events.split_last().unwrap();
    assert_eq!(deltas.len(), want.segments.len());
    for (event, segment) in deltas.iter().zip(&want.segments) {
        assert_eq!(event["type"], "transcript.text.delta");
        assert_eq!(event["delta"], segment.text.as_str());
    }
    assert_eq!(done["type"], "transcript.text.done");
    assert_eq!(done["text"], want.text.as_str());
}

#[test]
fn translations_take_the_same_form() {
    let server = TestServer::start();
    let reply = server.post_form(
        "/v1/audio/translations",
        &Form::jfk().field("response_format", "verbose_json"),
    );
    // The random Whisper fixture is multilingual: it translates (into noise).
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["task"], "translate");
    // /metrics counts the 11 s of audio and the model time they took.
    let metrics = server.get("/metrics").text();
    let seconds = |name: &str| -> f64 {
        let prefix = format!("{name}{{work=\"transcription\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in:\n{metrics}"))
    };
    assert!(
        (seconds("voxide_audio_seconds_total") - 11.0).abs() < 0.01,
        "{metrics}"
    );
    assert!(seconds("voxide_model_seconds_total") > 0.0, "{metrics}");
}

/// `chunking_strategy` transcribes only the speech the server's VAD finds, as `voxide
/// transcribe --vad`: `auto` with its defaults (Voxtral Mini 3B: a segment per stretch of
/// speech; Whisper: the speech joined, times mapped back), a `server_vad` object (as JSON or
/// as the Python client's bracketed fields) with OpenAI's knobs.
#[test]
fn chunking_strategy_transcribes_the_speech_the_vad_finds() {
    use voxide_models::silero_vad::VadParams;
    use voxide_runtime::{transcribe_speech, vad_params};
    let models = models();
    let vad = models.vad().expect("the test server has its VAD");
    let file = root().join("../shared/corpus/longform/en_concat_jfk_librispeech_fleurs.wav");
    let bytes = std::fs::read(&file).unwrap();
    let server = TestServer::start();
    let request = cli_request();
    for id in ["voxtral-mini", "whisper-1"] {
        let Engine::Transcriber(model) = &models.get(id).unwrap().engine else {
            panic!("{id} is a transcriber");
        };
        let samples = load_mono(&AudioInput::File(file.clone()), model.sample_rate()).unwrap();
        let knobs = VadParams {
            threshold: 0.6,
            speech_pad_ms: 300,
            min_silence_duration_ms: 500,
            ..vad_params(model.as_ref())
        };
        // Clips are times of the input, which the VAD's joined speech no longer has.
        let clipped = TranscribeRequest {
            clip_timestamps: vec![1.0],
            ..request.clone()
        };
        let refused =
            transcribe_speech(model.as_ref(), vad, &knobs, &samples, &clipped, &mut |_| {
                true
            })
            .unwrap_err();
        assert!(refused.to_string().contains("do not combine"), "{refused}");
        for (params, fields) in [
            (
                vad_params(model.as_ref()),
                vec![("chunking_strategy", "auto")],
            ),
            (
                knobs,
                vec![(
                    "chunking_strategy",
                    r#"{"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 300, "silence_duration_ms": 500}"#,
                )],
            ),
            (
                knobs,
                vec![
                    ("chunking_strategy[type]", "server_vad"),
                    ("chunking_strategy[threshold]", "0.6"),
                    ("chunking_strategy[prefix_padding_ms]", "300"),
                    ("chunking_strategy[silence_duration_ms]", "500"),
                ],
            ),
        ] {
            let (want, _) = transcribe_speech(
                model.as_ref(),
                vad,
                &params,
                &samples,
                &request,
                &mut |_| true,
            )
            .unwrap();
            let mut form =
                Form::new(id, "long.wav", bytes.clone()).field("response_format", "verbose_json");
            for (name, value) in &fields {
                form = form.field(name, value);
            }
            let reply = server.post_form("/v1/audio/transcriptions", &form);
            assert_eq!(reply.status, 200, "{id}: {}", reply.text());
            let got = reply.json();
            assert_eq!(
                got,
                serde_json::from_str::<Value>(&render(
                    &want,
                    OutputFormat::VerboseJson,
                    "transcribe"
                ))
                .unwrap(),
                "{id} {fields:?}"
            );
            if id == "voxtral-mini" {
                assert!(want.segments.len() >= 5, "a segment per stretch");
            }
        }
    }
    for (value, message) in [
        ("manual", "must be \"auto\" or a server_vad object"),
        (r#"{"type": "semantic_vad"}"#, "not supported"),
        (
            r#"{"type": "server_vad", "threshold": 2}"#,
            "between 0 and 1",
        ),
        (
            r#"{"type": "server_vad", "eagerness": "low"}"#,
            "no field \"eagerness\"",
        ),
        (
            r#"{"type": "server_vad", "silence_duration_ms": -5}"#,
            "milliseconds from 0 to 10000",
        ),
    ] {
        let form = Form::jfk().field("chunking_strategy", value);
        let error = server
            .post_form("/v1/audio/transcriptions", &form)
            .error(400);
        assert_eq!(error["param"], "chunking_strategy");
        assert!(
            error["message"].as_str().unwrap().contains(message),
            "{error}"
        );
    }
}

/// Models that segment only at the end stream their text as it decodes, and their deltas
/// add up to the final text: Voxtral Mini 3B a delta per piece of text, Voxtral Realtime the
/// text of each 30 s of audio, then what its sentence segments add.
#[test]
fn voxtral_models_stream_their_text_as_it_decodes() {
    let server = TestServer::start();
    for (id, least) in [("voxtral-mini", 4), ("voxtral", 1)] {
        let form = Form::new(id, "jfk.wav", std::fs::read(jfk()).unwrap()).field("stream", "true");
        let events = server.post_form("/v1/audio/transcriptions", &form).events();
        let (done, deltas) = events.split_last().unwrap();
        assert_eq!(done["type"], "transcript.text.done");
        assert!(deltas.len() >= least, "{id}: {events:?}");
        let text: String = deltas
            .iter()
            .map(|e| {
                assert_eq!(e["type"], "transcript.text.delta");
                e["delta"].as_str().unwrap()
            })
            .collect();
        assert_eq!(text.trim(), done["text"].as_str().unwrap(), "{id}");
    }
}

/// `voxide serve --max-batch-size 4`: requests that run at once have their windows (Whisper)
/// or decoder steps (Voxtral Realtime) decoded together, each answer the same as the request
/// alone, and /metrics counts the batches.
#[test]
fn concurrent_requests_are_decoded_in_batches_and_answer_as_alone() {
    let mut models = voxide_server::Registry::new();
    for (id, fixture) in [
        ("whisper-1", "tests/fixtures/whisper/tiny-random"),
        (
            "realtime",
            "tests/fixtures/voxtral-realtime/tiny-random-mistral",
        ),
    ] {
        let spec = format!("{id}={}", root().join(fixture).display());
        models.load(&spec.parse().unwrap(), None).unwrap();
    }
    assert_eq!(
        models.batch_concurrent_decodes(4).unwrap(),
        ["whisper-1", "realtime"]
    );
    let server = TestServer::serving(models, voxide_server::ServerConfig::default(), |c| {
        c.limits.max_concurrency = 4;
    });
    let clips = [
        jfk(),
        root().join("../shared/corpus/longform/fleurs_en_concat.wav"),
        root().join("../shared/corpus/longform/en_concat_jfk_librispeech_fleurs.wav"),
    ]
    .map(|path| std::fs::read(path).unwrap());
    for model in ["whisper-1", "realtime"] {
        let forms: Vec<Form> = clips
            .iter()
            .map(|clip| {
                let form = Form::new(model, "clip.wav", clip.clone())
                    .field("response_format", "verbose_json");
                match model {
                    "whisper-1" => form.field("language", "en"),
                    _ => form,
                }
            })
            .collect();
        let post = |form: &Form| {
            let reply = server.post_form("/v1/audio/transcriptions", form);
            assert_eq!(reply.status, 200, "{}", reply.text());
            reply.json()
        };
        let batched = || server.batch_counters(model);
        let alone: Vec<Value> = forms.iter().map(post).collect();
        let (decodes, batches) = batched();
        // One at a time, each decode is a batch of its own.
        assert!(
            decodes > forms.len() && batches == decodes,
            "{model}: {decodes} {batches}"
        );

        let together = crate::at_once(&forms, post);
        for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
            // Whisper's windows carry timestamps; the fixture's Realtime ids, some text.
            let segments = a["segments"].as_array().unwrap().len();
            assert!(
                segments > 1 || (model == "realtime" && segments > 0),
                "{model}: clip {i}: {a}"
            );
            assert_eq!(t, a, "{model}: clip {i}");
        }
        let (all_decodes, all_batches) = batched();
        let (decodes, batches) = (all_decodes - decodes, all_batches - batches);
        assert!(
            batches < decodes,
            "{model}: {decodes} decodes in {batches} batches"
        );
    }
}
