//! Opt-in: the official `openai` Python client (tests/openai_client.py) against the server.
//! Runs when `VOXIDE_OPENAI_PYTHON` names a Python that has the `openai` package, e.g.
//! `VOXIDE_OPENAI_PYTHON=/work/venv/openai/bin/python cargo test -p voxide-server openai`.

use super::speech::library_audio;
use super::transcriptions::library_transcript;
use super::{jfk, TestServer};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use voxide_audio::AudioOutFormat;
use voxide_audio::{load_mono, AudioInput};
use voxide_models::silero_vad::VadParams;
use voxide_models::voxtral::{GenerateOptions, Message, Role};
use voxide_runtime::{render, transcribe_speech, vad_params, OutputFormat, TranscribeRequest};
use voxide_server::Engine;
use voxide_server::ServerConfig;

#[test]
fn the_official_python_client_works() {
    let Some(python) = std::env::var_os("VOXIDE_OPENAI_PYTHON") else {
        eprintln!("skipped: set VOXIDE_OPENAI_PYTHON to a Python with the openai package");
        return;
    };
    let server = TestServer::with(ServerConfig::default(), |c| {
        c.api_key = Some("sk-voxide".into());
    });
    let out = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let run = Command::new(python)
        .arg(script)
        .arg(format!("http://{}/v1", server.addr))
        .arg("sk-voxide")
        .arg(jfk())
        .arg(out.path())
        .output()
        .expect("python runs");
    assert!(
        run.status.success(),
        "the client failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got: Value = serde_json::from_slice(&run.stdout).unwrap();
    eprintln!("openai client: {got}");
    let want = library_transcript();
    assert_eq!(
        got["models"],
        serde_json::json!(["whisper-1", "tts-1", "voxtral", "voxtral-mini", "tts-clone"])
    );
    assert_eq!(got["json"], want.text.as_str());
    assert_eq!(
        got["srt"],
        render(want, OutputFormat::Srt, "transcribe").as_str()
    );
    assert_eq!(
        got["text"],
        render(want, OutputFormat::Txt, "transcribe").as_str()
    );
    assert_eq!(
        got["vtt"],
        render(want, OutputFormat::Vtt, "transcribe").as_str()
    );
    assert!(got["translation"].is_string());
    assert_eq!(got["verbose_segments"], want.segments.len());
    assert_eq!(got["verbose_duration"], 11.0);
    let stream = got["stream"].as_array().unwrap();
    assert_eq!(stream.len(), want.segments.len() + 1);
    assert_eq!(
        stream.last().unwrap(),
        &serde_json::json!(["transcript.text.done", want.text])
    );
    assert_eq!(got["speech_content_type"], "audio/wav");
    let wav = std::fs::read(out.path().join("speech.wav")).unwrap();
    let pcm = std::fs::read(out.path().join("speech.pcm")).unwrap();
    let offline = library_audio(AudioOutFormat::Wav, 3, 6);
    assert!(
        wav == offline,
        "the client's WAV differs from the offline synthesis"
    );
    assert!(pcm == offline[44..], "the client's PCM differs");
    for (format, content_type) in [
        ("flac", "audio/flac"),
        ("opus", "audio/ogg"),
        ("mp3", "audio/mpeg"),
    ] {
        assert_eq!(got[format!("{format}_content_type")], content_type);
        let file = std::fs::read(out.path().join(format!("speech.{format}"))).unwrap();
        let offline = library_audio(AudioOutFormat::from_name(format).unwrap(), 3, 6);
        assert!(file == offline, "the client's {format} differs");
    }
    // chunking_strategy as the client sends an object (bracketed form fields).
    let models = super::models();
    let Engine::Transcriber(voxtral) = &models.get("voxtral-mini").unwrap().engine else {
        panic!("voxtral-mini is a transcriber");
    };
    let samples = load_mono(&AudioInput::File(jfk()), 16_000).unwrap();
    let params = VadParams {
        min_silence_duration_ms: 500,
        ..vad_params(voxtral.as_ref())
    };
    let vad = models.vad().unwrap();
    let request = TranscribeRequest {
        language: Some("auto".into()),
        ..TranscribeRequest::default()
    };
    let (chunked, _) = transcribe_speech(
        voxtral.as_ref(),
        vad,
        &params,
        &samples,
        &request,
        &mut |_| true,
    )
    .unwrap();
    assert_eq!(
        got["chunked"]["text"],
        chunked.text.as_str(),
        "{}",
        got["chunked"]
    );
    // Chat completions: the library's greedy answer, whole and streamed, with its usage.
    let chat = &got["chat"];
    let (answer, generation) = super::chat::library_answer(&GenerateOptions {
        max_new_tokens: 12,
        ..GenerateOptions::default()
    });
    assert_eq!(chat["content"], answer.as_str(), "{chat}");
    assert_eq!(chat["streamed"], answer.as_str(), "{chat}");
    assert_eq!(chat["usage"]["prompt_tokens"], generation.prompt_tokens);
    assert_eq!(chat["usage"], chat["streamed_usage"]);
    assert!(chat["finish_reason"] == "length" || chat["finish_reason"] == "stop");
    let (briefed, briefed_generation) = super::chat::library_text_answer(
        &[
            Message::text(Role::System, "Be brief."),
            Message::text(Role::User, "Say hello."),
        ],
        &GenerateOptions {
            max_new_tokens: 12,
            logprobs: Some(2),
            ..GenerateOptions::default()
        },
    );
    let generation_logprobs = briefed_generation.logprobs;
    assert_eq!(chat["text_alone"], briefed.as_str(), "{chat}");
    // Each token's log-probability (as f32: Python re-prints the JSON number) and its two
    // alternatives.
    let got_logprobs: Vec<(f32, u64)> = chat["text_alone_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t[0].as_f64().unwrap() as f32, t[1].as_u64().unwrap()))
        .collect();
    let want_logprobs: Vec<(f32, u64)> =
        generation_logprobs.iter().map(|t| (t.logprob, 2)).collect();
    assert_eq!(got_logprobs, want_logprobs);
    let errors = &got["errors"];
    assert_eq!(errors["aac"][0], 400);
    assert_eq!(
        errors["unknown_model"],
        serde_json::json!([404, "model_not_found"])
    );
    assert_eq!(
        errors["bad_key"],
        serde_json::json!([401, "invalid_api_key"])
    );
    // The whole file committed as one item: the same text as the transcription route's.
    let realtime = &got["realtime"];
    assert_eq!(realtime["transcript"], want.text.trim(), "{realtime}");
    // A delta per segment as the window is decoded, then the whole transcript.
    let types: Vec<&str> = realtime["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let deltas = types.len() - 5;
    assert!(deltas >= 1, "{types:?}");
    assert_eq!(
        [&types[..4], &types[4 + deltas..]].concat(),
        [
            "session.created",
            "session.updated",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.input_audio_transcription.completed"
        ]
    );
    assert!(types[4..4 + deltas]
        .iter()
        .all(|t| *t == "conversation.item.input_audio_transcription.delta"));
}
