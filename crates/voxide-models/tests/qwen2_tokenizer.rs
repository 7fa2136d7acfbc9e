//! The Qwen2 text tokenizer of Qwen3-TTS against transformers' `Qwen2TokenizerFast` (which
//! equals the slow `Qwen2Tokenizer` on every case): the shared GPT-2-style vocabulary
//! (`../shared/assets/whisper/hf-vocab/multilingual`) with the committed
//! `tokenizer_config.json` (added tokens), cases from tools/reference/qwen2_tokenizer_fixtures.py
//! (NFC, digits one by one, contractions, CJK, look-ahead whitespace, special tokens).

use serde_json::Value;
use std::path::{Path, PathBuf};
use voxide_models::qwen3_tts::tokenizer::TextTokenizer;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A checkpoint-like directory: the shared vocabulary and merges next to the fixture's config
/// (one per test, `name`: the tests run at once in one process).
fn tokenizer_dir(name: &str) -> PathBuf {
    let fixture = root().join("tests/fixtures/qwen3-tts/qwen2-tokenizer");
    let shared = root().join("../shared/assets/whisper/hf-vocab/multilingual");
    let dir = std::env::temp_dir().join(format!("voxide-qwen2-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (from, name) in [
        (shared.join("vocab.json"), "vocab.json"),
        (shared.join("merges.txt"), "merges.txt"),
        (
            fixture.join("tokenizer_config.json"),
            "tokenizer_config.json",
        ),
    ] {
        std::fs::copy(&from, dir.join(name)).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
    dir
}

#[test]
fn ids_and_decoding_equal_transformers() {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(
            root().join("tests/fixtures/qwen3-tts/qwen2-tokenizer/reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let dir = tokenizer_dir("ids");
    let tok = TextTokenizer::from_dir(&dir).expect("tokenizer loads");
    for (name, id) in reference["special"].as_object().unwrap() {
        assert_eq!(
            tok.token_id(name),
            Some(id.as_u64().unwrap() as u32),
            "{name}"
        );
    }
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() > 20);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, want, "{text:?}");
        assert_eq!(
            tok.decode(&ids).unwrap(),
            case["decoded"].as_str().unwrap(),
            "{text:?}"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn missing_files_are_named() {
    let dir = std::env::temp_dir().join(format!("voxide-qwen2-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = TextTokenizer::from_dir(&dir).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("vocab.json"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// Only a vocabulary of the 256 bytes (the tiny fixture's, as `tools/random_weights.py` writes
/// without Qwen's ranks) counts as bytes-only; a real BPE vocabulary with its merges does not.
#[test]
fn a_vocabulary_of_bytes_alone_is_told_apart() {
    let fixture = root().join("tests/fixtures/qwen3-tts/tiny-random");
    let bytes = TextTokenizer::from_dir(&fixture).expect("fixture tokenizer loads");
    assert!(bytes.bytes_only());
    assert_eq!(bytes.encode("the").unwrap().len(), 3);
    let dir = tokenizer_dir("bytes-only");
    let real = TextTokenizer::from_dir(&dir).expect("tokenizer loads");
    std::fs::remove_dir_all(&dir).ok();
    assert!(!real.bytes_only());
    assert_eq!(real.encode("the").unwrap().len(), 1);
}
