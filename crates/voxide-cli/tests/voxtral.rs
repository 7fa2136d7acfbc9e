//! End-to-end tests of Voxtral Mini 3B through the CLI, on the committed random-weight
//! checkpoints (both layouts): `voxide transcribe` prints transformers' greedy ids, `voxide
//! ask` streams the library's answer (one question, or a multi-turn --messages file), and bad
//! input is a one-line error with exit 1.

mod common;

use candle_core::Device;
use common::{error_line, root, s, stdout, voxide};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use voxide_models::voxtral::{Content, GenerateOptions, Message, Role, Voxtral};

fn fixture(layout: &str) -> PathBuf {
    root().join("tests/fixtures/voxtral").join(layout)
}

const LAYOUTS: [&str; 2] = ["tiny-random-hf", "tiny-random-mistral"];

fn reference() -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(
        root().join("tests/fixtures/voxtral/tiny-random.reference.safetensors"),
        &Device::Cpu,
    )
    .expect("reference tensors")
}

fn ids(t: &candle_core::Tensor) -> Vec<u32> {
    let values = t.flatten_all().unwrap().to_vec1::<i64>().unwrap();
    values.into_iter().map(|v| v as u32).collect()
}

/// The reference's 3 s clip as a 16-bit WAV: it lies on the 16-bit grid, so the file holds it
/// exactly.
fn short_clip(dir: &Path) -> (PathBuf, Vec<f32>) {
    let samples = reference()["short.audio"].to_vec1::<f32>().unwrap();
    let data: Vec<u8> = samples
        .iter()
        .flat_map(|&x| ((x * 32768.0).round() as i16).to_le_bytes())
        .collect();
    let mut wav = b"RIFF".to_vec();
    wav.extend((36 + data.len() as u32).to_le_bytes());
    wav.extend(b"WAVEfmt ");
    wav.extend(16u32.to_le_bytes());
    wav.extend(1u16.to_le_bytes());
    wav.extend(1u16.to_le_bytes());
    wav.extend(16_000u32.to_le_bytes());
    wav.extend(32_000u32.to_le_bytes());
    wav.extend(2u16.to_le_bytes());
    wav.extend(16u16.to_le_bytes());
    wav.extend(b"data");
    wav.extend((data.len() as u32).to_le_bytes());
    wav.extend(data);
    let path = dir.join("short.wav");
    std::fs::write(&path, wav).unwrap();
    (path, samples)
}

#[test]
fn transcribe_prints_the_reference_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (wav, _) = short_clip(dir.path());
    let want = ids(&reference()["short.transcribe.greedy_ids"]);
    for layout in LAYOUTS {
        let model = fixture(layout);
        let out = voxide(&[
            "transcribe",
            "-m",
            s(&model),
            "-l",
            "en",
            "--max-new-tokens",
            "24",
            "-f",
            "verbose_json",
            s(&wav),
        ]);
        let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
        let got: Vec<u32> = json["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(got, want, "{layout}");
        let library = Voxtral::from_dir(&model, &Device::Cpu, None).unwrap();
        assert_eq!(json["text"], library.tokenizer().decode(&want).trim());
    }
}

/// `ask` prints what the library answers, streamed, for a question and for a conversation.
#[test]
fn ask_prints_the_library_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (wav, samples) = short_clip(dir.path());
    let model = fixture(LAYOUTS[1]);
    let library = Voxtral::from_dir(&model, &Device::Cpu, None).unwrap();
    let options = GenerateOptions {
        max_new_tokens: 24,
        ..Default::default()
    };
    let answer = |messages: &[Message], clips: usize| {
        let clips = vec![samples.clone(); clips];
        let (text, _) = library
            .ask(messages, &clips, &options, &mut |_, _| true)
            .unwrap();
        text
    };
    let question = "What is said in this recording?";
    let one = [Message {
        role: Role::User,
        content: vec![
            Content::Audio { windows: 1 },
            Content::Text(question.into()),
        ],
    }];
    let want = answer(&one, 1);
    assert_eq!(
        want,
        library
            .tokenizer()
            .decode(&ids(&reference()["short.chat.greedy_ids"]))
    );
    let args = ["ask", "-m", s(&model), "--max-new-tokens", "24"];
    let out = voxide(&[&args[..], &["--audio", s(&wav), question]].concat());
    assert_eq!(stdout(&out), format!("{want}\n"));
    // OpenAI's penalties reach the library.
    let penalised = GenerateOptions {
        frequency_penalty: 1.5,
        presence_penalty: -0.5,
        ..options.clone()
    };
    let (want_penalised, _) = library
        .ask(
            &one,
            std::slice::from_ref(&samples),
            &penalised,
            &mut |_, _| true,
        )
        .unwrap();
    assert_ne!(want_penalised, want);
    let flags = ["--frequency-penalty", "1.5", "--presence-penalty", "-0.5"];
    let out = voxide(&[&args[..], &flags[..], &["--audio", s(&wav), question]].concat());
    assert_eq!(stdout(&out), format!("{want_penalised}\n"));

    let conversation = json!([
        {"role": "user", "content": [{"type": "audio", "path": "short.wav"}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": "A tone and a rising chirp."},
    ]);
    let file = dir.path().join("messages.json");
    std::fs::write(&file, conversation.to_string()).unwrap();
    let turns = [
        one[0].clone(),
        Message::text(Role::Assistant, "A tone and a rising chirp."),
        Message::text(Role::User, "Describe it in one word."),
    ];
    let out = voxide(
        &[
            &args[..],
            &["--messages", s(&file), "Describe it in one word."],
        ]
        .concat(),
    );
    assert_eq!(stdout(&out), format!("{}\n", answer(&turns, 1)));

    // Without audio the model answers the text alone, after a system prompt if given.
    let hello = "Say hello.";
    let text_only = |system: Option<&str>| {
        let mut messages: Vec<Message> = system
            .map(|text| Message::text(Role::System, text))
            .into_iter()
            .collect();
        messages.push(Message::text(Role::User, hello));
        answer(&messages, 0)
    };
    let (plain, briefed) = (text_only(None), text_only(Some("Be brief.")));
    assert_ne!(plain, briefed, "the system prompt reaches the model");
    let out = voxide(&[&args[..], &[hello]].concat());
    assert_eq!(stdout(&out), format!("{plain}\n"));
    let out = voxide(&[&args[..], &["--system", "Be brief.", hello]].concat());
    assert_eq!(stdout(&out), format!("{briefed}\n"));
}

#[test]
fn bad_input_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let (wav, _) = short_clip(dir.path());
    let model = fixture(LAYOUTS[0]);
    let ask =
        |model: &Path, extra: &[&str]| voxide(&[&["ask", "-m", s(model)][..], extra].concat());
    let e = error_line(&ask(
        &model,
        &["--system", "Be brief.", "--audio", s(&wav), "Hi?"],
    ));
    assert!(e.contains("no system message beside audio"), "{e}");
    let e = error_line(&ask(&model, &["--system", "Be brief."]));
    assert!(e.contains("the last message must be the user's"), "{e}");
    let e = error_line(&ask(&model, &[]));
    assert!(e.contains("nothing to ask"), "{e}");
    let e = error_line(&ask(&model, &["--audio", s(&wav)]));
    assert!(e.contains("needs a question"), "{e}");
    let realtime = root().join("tests/fixtures/voxtral-realtime/tiny-random-mistral");
    let e = error_line(&ask(&realtime, &["--audio", s(&wav), "Hi?"]));
    assert!(
        e.contains("Voxtral Mini 4B Realtime, which only transcribes"),
        "{e}"
    );
    let whisper = root().join("tests/fixtures/whisper/tiny-random");
    let e = error_line(&ask(&whisper, &["--audio", s(&wav), "Hi?"]));
    assert!(e.contains("a Whisper model"), "{e}");
    let e = error_line(&ask(
        &model,
        &["--audio", s(&wav), "--max-new-tokens", "200000", "Hi?"],
    ));
    assert!(e.contains("exceed the model's context of 131072"), "{e}");
    let e = error_line(&ask(
        &model,
        &["--audio", s(&wav), "--max-new-tokens", "0", "Hi?"],
    ));
    assert!(e.contains("--max-new-tokens must be at least 1"), "{e}");
    let e = error_line(&ask(&model, &["--audio", "-", "--audio", "-", "Hi?"]));
    assert!(e.contains("standard input can be read once"), "{e}");
    // Checked before the model loads: the missing model would be the error otherwise.
    let nowhere = Path::new("/no/such/model");
    let missing = dir.path().join("missing.wav");
    let e = error_line(&ask(nowhere, &["--audio", s(&missing), "Hi?"]));
    assert!(e.contains("missing.wav: cannot read"), "{e}");
    let e = error_line(&ask(
        nowhere,
        &["--audio", s(&wav), "--temperature", "3", "Hi?"],
    ));
    assert!(e.ends_with("--temperature 3 must lie in [0, 2]"), "{e}");
    let e = error_line(&ask(nowhere, &["--audio", s(&wav), "--top-p", "0", "Hi?"]));
    assert!(e.ends_with("--top-p 0 must lie in (0, 1]"), "{e}");
    let e = error_line(&ask(
        nowhere,
        &["--audio", s(&wav), "--presence-penalty", "-3", "Hi?"],
    ));
    assert!(e.contains("--presence-penalty must lie in [-2, 2]"), "{e}");
    // --messages files: each fault named without Rust's debug formatting.
    let messages = dir.path().join("messages.json");
    for (json, expect) in [
        (
            r#"[{"role": "user", "content": [{"type": "video"}]}]"#,
            r#"chunk type "video" (text or audio)"#,
        ),
        (
            r#"[{"role": "user", "content": [{"text": "hi"}]}]"#,
            r#"a chunk without a "type""#,
        ),
        (
            r#"[{"role": "user", "content": 5}]"#,
            "content must be a string or a list of chunks",
        ),
        // The conversation's shape is checked before its audio is asked for.
        (
            r#"[{"role": "assistant", "content": "Hello."}]"#,
            "the last message must be the user's",
        ),
        (
            r#"[{"role": "user", "content": []}]"#,
            "a user message has no content",
        ),
        (
            r#"[{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "audio", "path": "a.wav"}]}]"#,
            "Voxtral takes no system message beside audio",
        ),
        (
            r#"[{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}, {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]"#,
            "a system message cannot follow an answer",
        ),
        (
            r#"[{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": ""}, {"role": "user", "content": "Hi?"}]"#,
            "an assistant message has no text",
        ),
    ] {
        std::fs::write(&messages, json).unwrap();
        let e = error_line(&ask(&model, &["--messages", s(&messages)]));
        assert!(e.contains(expect), "{json}: {e}");
    }
    let missing = dir.path().join("missing.json");
    let e = error_line(&ask(&model, &["--messages", s(&missing)]));
    assert!(e.contains("No such file or directory"), "{e}");

    // Broken checkpoints: a copy of the Mistral layout, damaged one file at a time.
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for name in ["consolidated.safetensors", "params.json", "tekken.json"] {
        std::fs::copy(fixture(LAYOUTS[1]).join(name), broken.join(name)).unwrap();
    }
    let transcribe = || voxide(&["transcribe", "-m", s(&broken), s(&wav)]);
    let params = std::fs::read_to_string(broken.join("params.json")).unwrap();
    std::fs::write(broken.join("params.json"), "{\"dim\": 64").unwrap();
    let e = error_line(&transcribe());
    assert!(e.contains("params.json"), "{e}");
    let mut wrong: Value = serde_json::from_str(&params).unwrap();
    wrong["n_layers"] = json!(3);
    std::fs::write(broken.join("params.json"), wrong.to_string()).unwrap();
    let e = error_line(&transcribe());
    assert!(e.contains("layers.2."), "names the missing tensor: {e}");
    std::fs::write(broken.join("params.json"), &params).unwrap();
    // A tokenizer whose frame rate prompts other than the network's 375 tokens a window.
    let tekken = std::fs::read_to_string(broken.join("tekken.json")).unwrap();
    let mut wrong: Value = serde_json::from_str(&tekken).unwrap();
    wrong["audio"]["frame_rate"] = json!(25.0);
    std::fs::write(broken.join("tekken.json"), wrong.to_string()).unwrap();
    let e = error_line(&transcribe());
    assert!(e.contains("750 tokens per 30 s window"), "{e}");
    std::fs::remove_file(broken.join("tekken.json")).unwrap();
    let e = error_line(&transcribe());
    assert!(e.contains("tekken.json"), "{e}");
}

/// Stretches transcribed alone: each a segment at its times in the clip, with the text and
/// ids of the model's transcription of exactly those samples.
#[test]
fn stretches_are_transcribed_alone_at_their_times() {
    use voxide_runtime::{transcribe_stretches, TranscribeRequest, Transcriber};
    let model = Voxtral::from_dir(&fixture(LAYOUTS[1]), &Device::Cpu, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_, clip) = short_clip(dir.path());
    let samples: Vec<f32> = [&clip[..], &[0.0; 8000][..], &clip[..]].concat();
    let stretches = [0..20_000, 24_000..40_000, 50_000..samples.len()];
    let request = TranscribeRequest {
        language: Some("en".into()),
        max_new_tokens: Some(6),
        ..TranscribeRequest::default()
    };
    let (got, timings) =
        transcribe_stretches(&model, &samples, &stretches, &request, &mut |_| true).unwrap();
    assert!(!model.times_segments());
    assert_eq!(got.segments.len(), 3);
    assert_eq!(got.duration, samples.len() as f64 / 16_000.0);
    let mut ids = Vec::new();
    for (segment, range) in got.segments.iter().zip(&stretches) {
        let part = &samples[range.clone()];
        let (alone, _) = Transcriber::transcribe(&model, part, &request, &mut |_| true).unwrap();
        assert_eq!(segment.tokens, alone.token_ids);
        assert_eq!(segment.text, alone.text);
        assert_eq!(segment.start, range.start as f64 / 16_000.0);
        assert_eq!(segment.end, range.end as f64 / 16_000.0);
        ids.extend(alone.token_ids);
    }
    assert_eq!(got.token_ids, ids);
    let texts: Vec<&str> = got.segments.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(got.text, texts.join(" "));
    assert_eq!(timings.encoder_calls, 3);
}

/// `--vad` gives Voxtral Mini 3B, which has no times of its own, a segment per stretch of
/// speech of at most 30 s, in order, inside the file.
#[test]
fn vad_gives_a_segment_per_stretch_of_speech() {
    let vad = root().join("../shared/assets/silero-vad/for-tests-silero-v6.2.0-ggml.bin");
    let file = root().join("../shared/corpus/longform/en_concat_jfk_librispeech_fleurs.wav");
    let model = fixture(LAYOUTS[1]);
    let out = stdout(&voxide(&[
        "transcribe",
        "-m",
        s(&model),
        "--vad",
        "--vad-model",
        s(&vad),
        "--max-new-tokens",
        "4",
        "--format",
        "verbose_json",
        s(&file),
    ]));
    let v: Value = serde_json::from_str(&out).unwrap();
    let duration = v["duration"].as_f64().unwrap();
    assert!(duration > 150.0, "{duration}");
    let segments = v["segments"].as_array().unwrap();
    // Speech with pauses in it over 2.5 minutes: several stretches, none past 30 s.
    assert!(segments.len() >= 5, "{v}");
    let mut previous_end = 0.0;
    let mut ids = Vec::new();
    for segment in segments {
        let (start, end) = (
            segment["start"].as_f64().unwrap(),
            segment["end"].as_f64().unwrap(),
        );
        assert!(
            previous_end <= start && start < end && end <= duration,
            "{segment}"
        );
        assert!(end - start <= 30.0, "{segment}");
        previous_end = end;
        ids.extend(segment["tokens"].as_array().unwrap().clone());
    }
    assert_eq!(v["token_ids"], Value::Array(ids));
}
