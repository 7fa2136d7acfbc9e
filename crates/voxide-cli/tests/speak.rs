//! End-to-end tests of `voxide speak` on a checkpoint assembled from the committed random
//! Qwen3-TTS fixtures (talker `tiny-random`, codec `codec`) and a byte-level tokenizer written
//! here whose `<|im_start|>` / `<|im_end|>` carry the fixture config's ids: the WAV and PCM
//! outputs agree sample for sample, any chunking gives the same audio, and bad requests get a
//! one-line error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// GPT-2's byte → printable character map (byte-level BPE alphabet).
fn byte_alphabet() -> Vec<char> {
    let mut n = 0;
    (0u32..256)
        .map(|b| {
            let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
            if printable {
                char::from_u32(b).unwrap()
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap()
            }
        })
        .collect()
}

/// A Qwen3-TTS checkpoint directory in a fresh temp dir.
fn checkpoint(name: &str) -> PathBuf {
    let fixtures = root().join("tests/fixtures/qwen3-tts");
    let dir = std::env::temp_dir().join(format!("voxide-speak-{name}-{}", std::process::id()));
    let speech = dir.join("speech_tokenizer");
    std::fs::create_dir_all(&speech).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures.join("tiny-random").join(f), dir.join(f)).unwrap();
        std::fs::copy(fixtures.join("codec").join(f), speech.join(f)).unwrap();
    }
    let vocab: serde_json::Map<String, serde_json::Value> = byte_alphabet()
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i.into()))
        .collect();
    std::fs::write(
        dir.join("vocab.json"),
        serde_json::to_string(&vocab).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\n").unwrap();
    let config = serde_json::json!({"added_tokens_decoder": {
        "1010": {"content": "<|im_start|>", "special": true},
        "1011": {"content": "<|im_end|>", "special": true},
    }});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    dir
}

fn voxide(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_voxide"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("voxide runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const GREEDY: [&str; 8] = [
    "--voice",
    "tester",
    "--language",
    "english",
    "--temperature",
    "0",
    "--max-frames",
    "5",
];

#[test]
fn wav_file_pcm_stream_and_chunking_agree() {
    let dir = checkpoint("agree");
    let wav = dir.join("out.wav");
    let mut args = vec!["speak", "--model", s(&dir), "-o", s(&wav), "-v"];
    args.extend(GREEDY);
    args.push("Hello there.");
    let out = voxide(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("frames/s") && stderr.contains("first audio"),
        "{stderr}"
    );
    let bytes = std::fs::read(&wav).unwrap();
    assert_eq!(&bytes[..4], b"RIFF");
    assert_eq!(
        u32::from_le_bytes(bytes[24..28].try_into().unwrap()),
        24_000
    );
    let data = &bytes[44..];
    assert_eq!(
        u32::from_le_bytes(bytes[40..44].try_into().unwrap()) as usize,
        data.len()
    );
    // Whole frames of 1920 samples, at most 5 of them, not silence.
    assert!(!data.is_empty() && data.len().is_multiple_of(1920 * 2) && data.len() <= 5 * 1920 * 2);
    assert!(data.iter().any(|&b| b != 0));

    for chunk in ["1", "3"] {
        let mut args = vec!["speak", "--model", s(&dir), "--output-format", "pcm"];
        args.extend(GREEDY);
        args.extend(["--chunk-frames", chunk, "Hello there."]);
        let out = voxide(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.stdout, data,
            "chunks of {chunk} frames differ from the file"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_requests_get_a_one_line_error() {
    let dir = checkpoint("errors");
    let model = s(&dir).to_string();
    let fails = |extra: &[&str], expect: &str| {
        let mut args = vec!["speak", "--model", &model, "--max-frames", "2"];
        args.extend(extra);
        let out = voxide(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
        assert!(!out.status.success(), "{extra:?} should fail");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expect), "{extra:?}: {stderr}");
    };
    fails(&["--voice", "nobody", "hi"], "tester");
    fails(&["hi"], "needs a voice: dylan, tester");
    fails(
        &["--voice", "tester", "--language", "klingon", "hi"],
        "klingon",
    );
    fails(&["--voice", "tester", "   "], "empty");
    fails(
        &["--voice", "tester", "--ref-audio", "x.wav", "hi"],
        "not implemented",
    );
    fails(&["--voice", "tester", "--top-p", "0", "hi"], "--top-p");
    let out = voxide(&["speak", "--model", &model, "--list-voices"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("voices: dylan, tester") && stdout.contains("english"),
        "{stdout}"
    );
    std::fs::remove_dir(dir.join("speech_tokenizer")).ok();
    std::fs::remove_dir_all(dir.join("speech_tokenizer")).ok();
    let out = voxide(&["speak", "--model", &model, "--voice", "tester", "hi"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("speech_tokenizer"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).ok();
}
