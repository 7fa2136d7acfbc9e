//! End-to-end tests of `voxide speak` on the committed random CustomVoice checkpoint
//! (tests/fixtures/qwen3-tts/tiny-random: talker, code predictor, a byte-level tokenizer with
//! the config's special ids, the codec in `speech_tokenizer/`): the WAV file and the stdout
//! stream agree sample for sample, any chunking gives the same audio, and bad requests get a
//! one-line error.

mod common;

#[cfg(unix)]
use common::entries;
use common::{assert_trace_has, error_line, root, s};
#[cfg(target_os = "linux")]
use common::{check_linked_outputs, read_fifo};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The committed random CustomVoice checkpoint: talker, code predictor, byte-level tokenizer
/// and codec (`speech_tokenizer/`).
fn fixture() -> PathBuf {
    root().join("tests/fixtures/qwen3-tts/tiny-random")
}

/// A copy of the fixture in a fresh temp dir (to break): its top-level files, and its codec
/// (`speech_tokenizer/`) when `with_codec`.
fn fixture_copy(name: &str, with_codec: bool) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("voxide-speak-{name}-{}", std::process::id()));
    let copy_files = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
            }
        }
    };
    copy_files(&fixture(), &dir);
    if with_codec {
        copy_files(
            &fixture().join("speech_tokenizer"),
            &dir.join("speech_tokenizer"),
        );
    }
    dir
}

/// `voxide ARGS`, offline, with nothing on standard input (`-` reads an empty text).
fn voxide(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_voxide"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("voxide runs")
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
    let dir = std::env::temp_dir().join(format!("voxide-speak-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("out.wav");
    let model = fixture();
    let mut args = vec!["speak", "--model", s(&model), "-o", s(&wav), "-v"];
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

    // Raw PCM into a file: the WAV's samples without the header.
    let raw = dir.join("out.pcm");
    let mut args = vec!["speak", "--model", s(&model), "-o", s(&raw)];
    args.extend(GREEDY);
    args.extend(["--output-format", "pcm", "Hello there."]);
    assert!(voxide(&args).status.success());
    assert_eq!(std::fs::read(&raw).unwrap(), data);

    // FLAC and Ogg Opus, named by the file's extension or by --output-format on standard output.
    let decode = |b: &[u8], name: &str| voxide_audio::decode_bytes(b, name).unwrap().channels;
    let wav_samples = decode(&bytes, "out.wav");
    let greedy = |output: &[&str]| {
        let out = voxide(
            &[
                &["speak", "--model", s(&model)],
                output,
                &GREEDY,
                &["Hello there."],
            ]
            .concat(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    // --speed 2: half the samples, the pitch kept (the library's time-stretch, tested there).
    let fast = greedy(&["--output-format", "pcm", "--speed", "2"]);
    assert_eq!(fast.len(), data.len() / 2);
    for format in ["flac", "opus", "mp3"] {
        let file = dir.join(format!("out.{format}"));
        greedy(&["-o", s(&file)]);
        let written = std::fs::read(&file).unwrap();
        let streamed = greedy(&["--output-format", format]);
        let name = format!("out.{format}");
        let samples = decode(&written, &name);
        match format {
            "flac" => {
                // Lossless: the WAV's samples; the file's header has its length and MD5, the
                // stream's says "unknown"; the same samples.
                assert_eq!(samples, wav_samples);
                assert!(written[26..42] != [0; 16] && streamed[26..42] == [0; 16]);
                assert_eq!(decode(&streamed, &name), samples);
            }
            "opus" => {
                assert_eq!(samples[0].len(), wav_samples[0].len());
                assert!(
                    written == streamed,
                    "an Ogg Opus stream is the same bytes as its file"
                );
            }
            _ => {
                // The file's LAME tag trims the codec's delay and padding: the WAV's length;
                // the stream is the file without its tag frame (192 bytes at 24 kHz, 64 kbit/s).
                assert_eq!(samples[0].len(), wav_samples[0].len());
                assert!(
                    written[192..] == streamed[..],
                    "an MP3 stream is its file untagged"
                );
            }
        }
    }

    // A cap far above any clip (it once sized a buffer: 2.4 TB) makes chunks as usual.
    for chunk in ["1", "3", "99999999999"] {
        let mut args = vec!["speak", "--model", s(&model), "--output-format", "pcm"];
        args.extend(GREEDY);
        args.extend(["--chunk-frames", chunk, "Hello there."]);
        let out = voxide(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The same samples: the float waveforms agree to ~1e-7, so a 16-bit value may round
        // the other way at a half step.
        let pcm = |b: &[u8]| -> Vec<i16> {
            b.chunks(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect()
        };
        let (got, want) = (pcm(&out.stdout), pcm(data));
        assert_eq!(got.len(), want.len(), "chunks of {chunk}: length");
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).max();
        assert!(
            worst <= Some(1),
            "chunks of {chunk} frames: {worst:?} steps from the file"
        );
    }
    // Beside the fixture's bf16 weights the KV caches default to f32: naming it changes
    // nothing; f16 caches synthesise too.
    for (kv, same) in [("f32", true), ("f16", false)] {
        let mut args = vec!["speak", "--model", s(&model), "--output-format", "pcm"];
        args.extend(GREEDY);
        args.extend(["--kv-precision", kv, "Hello there."]);
        let out = voxide(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.len().is_multiple_of(1920 * 2) && !out.stdout.is_empty());
        if same {
            assert!(out.stdout == data, "--kv-precision {kv}: other samples");
        }
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_requests_get_a_one_line_error() {
    let model = s(&fixture()).to_string();
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
        "reference clip x.wav: cannot read",
    );
    fails(
        &["--voice", "tester", "--top-p", "0", "hi"],
        "--top-p 0 must lie in (0, 1]",
    );
    fails(
        &["--voice", "tester", "--temperature", "inf", "hi"],
        "--temperature inf must be a number ≥ 0",
    );
    fails(
        &["--voice", "tester", "--repetition-penalty", "NaN", "hi"],
        "--repetition-penalty must be a positive number",
    );
    let out = voxide(&["speak", "--model", &model, "--list-voices"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("voices: dylan, tester") && stdout.contains("english"),
        "{stdout}"
    );
    // What the variant cannot serve is refused from config.json, before the weights load:
    // broken weights stay unread until the request is one the checkpoint can serve.
    let dir = fixture_copy("unread", false);
    std::fs::write(dir.join("model.safetensors"), b"not safetensors").unwrap();
    let broken = s(&dir).to_string();
    let config = s(&dir.join("config.json")).to_string();
    for (extra, expect) in [
        (
            &["--voice", "nobody"][..],
            "unknown voice \"nobody\"; this model has: dylan, tester",
        ),
        (
            &["--voice", "tester", "--language", "klingon"],
            "unknown language",
        ),
        (
            &["--voice", "tester", "--ref-audio", &config],
            "cannot clone a voice",
        ),
        (&[], "needs a voice"),
        (
            &["--voice", "Tester", "--language", "English"],
            "model.safetensors",
        ),
    ] {
        let mut args = vec!["speak", "--model", &broken];
        args.extend(extra);
        args.push("hi");
        let out = voxide(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} should fail");
        assert!(stderr.contains(expect), "{extra:?}: {stderr}");
    }
    std::fs::remove_dir_all(dir).ok();
    // A config that does not match the weights: the error names the tensor; no file is left.
    let dir = fixture_copy("mismatch", true);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config = config.replacen(
        "\"intermediate_size\": 128",
        "\"intermediate_size\": 130",
        1,
    );
    std::fs::write(dir.join("config.json"), config).unwrap();
    let wav = dir.join("out.wav");
    let out = voxide(&[
        "speak",
        "--model",
        s(&dir),
        "--voice",
        "tester",
        "-o",
        s(&wav),
        "hi",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("mlp.gate_proj"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    // Neither the file nor its `.partial` sibling.
    let names = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name());
    assert!(names
        .into_iter()
        .all(|n| !n.to_string_lossy().starts_with("out")));
    std::fs::remove_dir_all(dir).ok();
    // Codec configs voxide would decode otherwise than qwen-tts: refused, naming the field.
    for (what, from, to, message) in [
        (
            "act",
            "\"hidden_act\": \"silu\"",
            "\"hidden_act\": \"gelu\"",
            "decoder hidden_act",
        ),
        (
            "hop",
            "\"decode_upsample_rate\": 1920",
            "\"decode_upsample_rate\": 960",
            "decode_upsample_rate 960",
        ),
        (
            "quantizers",
            "\"num_quantizers\": 16",
            "\"num_quantizers\": 8",
            "the talker writes 16",
        ),
    ] {
        let dir = fixture_copy(&format!("codec-{what}"), true);
        let path = dir.join("speech_tokenizer/config.json");
        let config = std::fs::read_to_string(&path).unwrap();
        assert!(config.contains(from), "{from}");
        std::fs::write(&path, config.replacen(from, to, 1)).unwrap();
        let out = voxide(&["speak", "--model", s(&dir), "--voice", "tester", "hi"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(message),
            "{what}: {stderr}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        std::fs::remove_dir_all(dir).ok();
    }
    // Without its codec (the copy takes the top-level files only).
    let dir = fixture_copy("no-codec", false);
    let out = voxide(&["speak", "--model", s(&dir), "--voice", "tester", "hi"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("speech_tokenizer"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).ok();
    // A speech-to-text checkpoint: what it is and which command it takes.
    let whisper = root().join("tests/fixtures/whisper/tiny-random");
    let out = voxide(&["speak", "--model", s(&whisper), "--voice", "tester", "hi"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr
                .contains("is a Whisper model, a speech-to-text model: use `voxide transcribe`"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

/// The issue's own command, sampled with the checkpoint's defaults: a valid 24 kHz mono WAV,
/// and the same samples on standard output.
#[test]
fn sampled_speech_to_a_file_equals_stdout() {
    let dir = std::env::temp_dir().join(format!("voxide-speak-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("out.wav");
    let model = fixture();
    let base = [
        "speak",
        "--model",
        s(&model),
        "--voice",
        "tester",
        "--seed",
        "1",
    ];
    let out = voxide(&[&base[..], &["Hello world.", "-o", s(&wav)]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = std::fs::read(&wav).unwrap();
    assert_eq!(&file[..4], b"RIFF");
    assert_eq!(&file[8..16], b"WAVEfmt ");
    assert_eq!(u16::from_le_bytes([file[22], file[23]]), 1, "mono");
    assert_eq!(u32::from_le_bytes(file[24..28].try_into().unwrap()), 24_000);
    assert!(file.len() > 44 + 1920 * 2);
    let out = voxide(&[&base[..], &["Hello world."]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout[44..] == file[44..],
        "stdout samples differ from the file's"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// A VoiceDesign checkpoint (the fixture's weights under `tts_model_type: voice_design`): no
/// preset voices, the instruction describes the voice (qwen-tts' prompt without a speaker slot,
/// the `auto` case of the talker parity test).
#[test]
fn voice_design_takes_an_instruction_not_a_voice() {
    let dir = fixture_copy("design", true);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    assert!(config.contains("\"tts_model_type\": \"custom_voice\""));
    let config = config.replace(
        "\"tts_model_type\": \"custom_voice\"",
        "\"tts_model_type\": \"voice_design\"",
    );
    std::fs::write(dir.join("config.json"), config).unwrap();
    let out = voxide(&["speak", "--model", s(&dir), "--voice", "tester", "hi"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no preset voices"),
        "{stderr}"
    );
    let out = voxide(&[
        "speak",
        "--model",
        s(&dir),
        "--instruct",
        "A calm, low voice.",
        "--max-frames",
        "3",
        "--output-format",
        "pcm",
        "hi",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 3 * 1920 * 2);
    std::fs::remove_dir_all(dir).ok();
}

/// The committed random Base checkpoint (speaker encoder, codec encoder and decoder):
/// `--ref-audio` clones in context with `--ref-text` and from the x-vector alone without; the
/// file and the stream agree; what a Base model cannot do, or a clip that is no clip, is a
/// one-line error.
/// A 16-bit mono WAV at 24 kHz.
fn wav_24k(samples: &[i16]) -> Vec<u8> {
    let data_len = 2 * samples.len() as u32;
    let mut wav = b"RIFF".to_vec();
    wav.extend((36 + data_len).to_le_bytes());
    wav.extend(b"WAVEfmt ");
    wav.extend(16u32.to_le_bytes());
    wav.extend(1u16.to_le_bytes()); // PCM
    wav.extend(1u16.to_le_bytes()); // mono
    wav.extend(24_000u32.to_le_bytes());
    wav.extend(48_000u32.to_le_bytes());
    wav.extend(2u16.to_le_bytes());
    wav.extend(16u16.to_le_bytes());
    wav.extend(b"data");
    wav.extend(data_len.to_le_bytes());
    wav.extend(samples.iter().flat_map(|v| v.to_le_bytes()));
    wav
}

#[test]
fn voice_clone_from_a_reference_clip() {
    let dir = std::env::temp_dir().join(format!("voxide-speak-clone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = root().join("tests/fixtures/qwen3-tts/tiny-random-base");
    let clip = root().join("../shared/corpus/librispeech/1089-134686-0000.flac");
    let greedy = [
        "--temperature",
        "0",
        "--max-frames",
        "4",
        "--language",
        "english",
    ];
    let speak = |extra: &[&str]| {
        let mut args = vec!["speak", "--model", s(&base), "--ref-audio", s(&clip)];
        args.extend(greedy);
        args.extend(extra);
        voxide(&args)
    };
    let wav = dir.join("clone.wav");
    let out = speak(&[
        "--ref-text",
        "He hoped there would be stew.",
        "-o",
        s(&wav),
        "Hi.",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = std::fs::read(&wav).unwrap();
    assert_eq!(file.len(), 44 + 4 * 1920 * 2, "4 frames of 24 kHz s16");
    assert!(file[44..].iter().any(|&b| b != 0));
    let out = speak(&[
        "--ref-text",
        "He hoped there would be stew.",
        "--output-format",
        "pcm",
        "Hi.",
    ]);
    assert!(out.status.success());
    assert_eq!(
        out.stdout,
        file[44..],
        "stdout samples differ from the file's"
    );
    // x-vector only: another prompt, other audio.
    let out = speak(&["--output-format", "pcm", "Hi."]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 4 * 1920 * 2);
    assert_ne!(out.stdout, file[44..]);

    let one_line_error = |args: &[&str], expect: &str| {
        let out = voxide(args);
        let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
        assert!(!out.status.success(), "{args:?} should fail");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    };
    one_line_error(&["speak", "--model", s(&base), "Hi."], "reference clip");
    one_line_error(
        &[
            "speak",
            "--model",
            s(&base),
            "--ref-audio",
            s(&clip),
            "--voice",
            "tester",
            "Hi.",
        ],
        "no preset voices",
    );
    one_line_error(
        &[
            "speak",
            "--model",
            s(&fixture()),
            "--voice",
            "tester",
            "--ref-audio",
            s(&clip),
            "Hi.",
        ],
        "cannot clone",
    );
    let silent = dir.join("silent.wav");
    std::fs::write(&silent, wav_24k(&[0; 24_000])).unwrap();
    one_line_error(
        &[
            "speak",
            "--model",
            s(&base),
            "--ref-audio",
            s(&silent),
            "Hi.",
        ],
        "silence",
    );
    // 61 s of noise: over the limit, refused before any encoding.
    let long = dir.join("long.wav");
    let noise: Vec<i16> = (0..61 * 24_000i64)
        .map(|i| (i * 7919 % 2001) as i16 - 1000)
        .collect();
    std::fs::write(&long, wav_24k(&noise)).unwrap();
    one_line_error(
        &["speak", "--model", s(&base), "--ref-audio", s(&long), "Hi."],
        "the reference clip is 61.0 s long; cloning takes at most 60 s",
    );
    let garbage = dir.join("garbage.wav");
    std::fs::write(&garbage, b"not audio at all").unwrap();
    one_line_error(
        &[
            "speak",
            "--model",
            s(&base),
            "--ref-audio",
            s(&garbage),
            "Hi.",
        ],
        "garbage.wav",
    );
    std::fs::remove_dir_all(dir).ok();
}

/// `voxide bench --tts` on the Base fixture: the corpus clip is cloned once (its frames in
/// context), every text runs its fixed frame count, and the JSON report says so; the Chrome
/// trace holds every stage of cloning and synthesis.
#[test]
fn bench_tts_clones_a_voice_for_a_base_model() {
    let dir = std::env::temp_dir().join(format!("voxide-bench-tts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("tts.json");
    let trace = dir.join("trace.json");
    let base = root().join("tests/fixtures/qwen3-tts/tiny-random-base");
    let corpus = root().join("../shared/corpus");
    let out = voxide(&[
        "bench",
        "--tts",
        "--model",
        s(&base),
        "--corpus",
        s(&corpus),
        "-n",
        "1",
        "--warmup",
        "0",
        "--json",
        s(&json),
        "--trace",
        s(&trace),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("voice cloned from"), "{stdout}");
    assert_trace_has(
        &trace,
        &[
            "load",
            "speaker_encoder",
            "codec_encoder",
            "synthesize",
            "prompt_build",
            "talker_prompt",
            "talker_step",
            "code_predictor",
            "codec_decode",
            "codec_stage",
        ],
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // jfk.wav: 11.0 s → ⌈176 000 · 1.5 / 1920⌉ = 138 frames of codes.
    assert_eq!(report["cloning"]["reference_frames"], 138);
    let frames: Vec<u64> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["frames"].as_u64().unwrap())
        .collect();
    assert_eq!(frames, [16, 48, 96, 16, 16]);
    // The fourth row repeats the short text with the text streamed alongside the frames.
    assert_eq!(report["rows"][3]["text_streaming"], true);
    assert_eq!(report["rows"][0]["text_streaming"], serde_json::Value::Null);
    // Every row from an empty prefix cache but the last, whose voice positions were cached.
    let rows = report["rows"].as_array().unwrap();
    for row in &rows[..4] {
        assert_eq!(row["cached_positions"], 0, "{row}");
    }
    let cached = &rows[4];
    assert_eq!(cached["voice_cached"], true);
    let (positions, from_cache) = (
        cached["prompt_positions"].as_u64().unwrap(),
        cached["cached_positions"].as_u64().unwrap(),
    );
    assert!(from_cache > 0 && from_cache < positions, "{cached}");
    assert_eq!(positions, rows[0]["prompt_positions"].as_u64().unwrap());
    // The talker's pass over the prompt is reported apart from its later steps.
    for row in report["rows"].as_array().unwrap() {
        assert!(row["prompt_ms"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["talker_ms_per_step"].as_f64().unwrap() > 0.0, "{row}");
    }
    // Each run's frames in windows between probes (one per run where a run is shorter than
    // a window), a frame's and the talker step's ms alike.
    let windows = report["windows"].as_array().unwrap();
    let talker = report["talker_windows"].as_array().unwrap();
    assert!(windows.len() >= frames.len(), "{windows:?}");
    assert_eq!(windows.len(), talker.len());
    for (frame, talker) in windows.iter().zip(talker) {
        let (frame_ms, talker_ms) = (
            frame["ms_per_step"].as_f64().unwrap(),
            talker["ms_per_step"].as_f64().unwrap(),
        );
        assert!(talker_ms > 0.0 && frame_ms > talker_ms, "{frame} {talker}");
    }
    // The code predictor's ms per frame in the same windows: the frame's but the talker's.
    let predictor = report["predictor_windows"].as_array().unwrap();
    assert_eq!(predictor.len(), windows.len());
    for ((frame, talker), predictor) in windows.iter().zip(talker).zip(predictor) {
        let ms = |w: &serde_json::Value| w["ms_per_step"].as_f64().unwrap();
        assert!(
            (ms(talker) + ms(predictor) - ms(frame)).abs() < 1e-6 * ms(frame),
            "{frame} {talker} {predictor}"
        );
    }
    // This small model's predictor stack fits any known cache: its passes after a frame's
    // first count at the rate a set that size is re-read at (measured on x86-64).
    let rereads = report["frame_reread_bytes"].as_u64().unwrap();
    if cfg!(target_arch = "x86_64") {
        let pass = report["predictor_pass_bytes"].as_u64().unwrap();
        assert!(
            pass > 0 && rereads.is_multiple_of(pass) && rereads >= pass,
            "{rereads} {pass}"
        );
        assert!(rereads < report["predictor_frame_bytes"].as_u64().unwrap());
        assert!(report["reread_gbps"].as_f64().unwrap() > 0.0);
        assert!(
            report["predictor_windows"][0]["reread_bytes_per_step"]
                .as_f64()
                .unwrap()
                > 0.0
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

/// `voxide ARGS` with standard output on a device that takes nothing (opened, never replaced).
#[cfg(target_os = "linux")]
fn voxide_into_full_device(args: &[&str]) -> Output {
    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_voxide"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::null())
        .stdout(full)
        .output()
        .expect("voxide runs")
}

/// A full standard output is a one-line error; a closed one (the player quit, `| head`) ends
/// the run early and quietly.
#[cfg(target_os = "linux")]
#[test]
fn stdout_write_errors_fail_and_closed_pipes_stop() {
    let model = fixture();
    let speak = [&["speak", "--model", s(&model)][..], &GREEDY].concat();
    let list = ["speak", "--model", s(&model), "--list-voices"];
    for args in [
        [&speak[..], &["Hello"]].concat(),
        [&speak[..], &["--output-format", "pcm", "Hello"]].concat(),
        list.to_vec(),
    ] {
        let err = error_line(&voxide_into_full_device(&args));
        assert!(
            err.contains("cannot write to stdout: No space left on device"),
            "{args:?}: {err}"
        );
    }
    // The only read end closes before anything is written.
    let with_stdout_closed = |args: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_voxide"))
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    for args in [[&speak[..], &["Hello"]].concat(), list.to_vec()] {
        let stderr = with_stdout_closed(&args);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    // `-v` says why the audio stopped.
    let stderr = with_stdout_closed(&[&speak[..], &["-v", "Hello"]].concat());
    assert!(
        stderr.contains("stopped: the output was closed"),
        "{stderr}"
    );
}

/// `-o` paths that cannot be written fail before the model loads, naming the path as given.
#[cfg(unix)]
#[test]
fn unwritable_output_paths_fail_first() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let missing = dir.path().join("missing/o.wav");
    for (path, model, expect) in [
        // Checked first: the missing model would be the error otherwise.
        (&sub, Path::new("/nonexistent/model"), "it is a directory"),
        (&sub, &fixture(), "it is a directory"),
        (&missing, &fixture(), "No such file or directory"),
    ] {
        let mut args = vec!["speak", "--model", s(model), "-o", s(path)];
        args.extend(GREEDY);
        args.push("Hello");
        let err = error_line(&voxide(&args));
        assert!(
            err.contains(&format!("cannot write {}: {expect}", path.display())),
            "{err}"
        );
        assert!(!err.contains("partial"), "{err}");
    }
    assert_eq!(entries(dir.path()), ["sub"]);
    assert!(entries(&sub).is_empty());
}

/// A reference clip that cannot be read and sampling settings out of range fail before the
/// model loads: the missing model would be the error otherwise.
#[test]
fn bad_settings_fail_before_the_model_loads() {
    for (extra, expect) in [
        (
            &["--ref-audio", "x.wav"][..],
            "reference clip x.wav: cannot read",
        ),
        (&["--top-p", "0"], "error: --top-p 0 must lie in (0, 1]"),
        (&["--top-p", "1.5"], "error: --top-p 1.5 must lie in (0, 1]"),
        (&["--temperature", "inf"], "error: --temperature inf must be a number ≥ 0"),
        (
            &["--repetition-penalty", "NaN"],
            "--repetition-penalty must be a positive number",
        ),
        (&["--speed", "4.5"], "--speed must be between 0.25 and 4"),
        (
            &["-o", "/nonexistent/speech.m4a"],
            "cannot write /nonexistent/speech.m4a: voxide writes WAV, MP3, FLAC, Ogg Opus and raw PCM, not m4a",
        ),
    ] {
        let mut args = vec!["speak", "--model", "/nonexistent/model"];
        args.extend(extra);
        args.push("hi");
        let err = error_line(&voxide(&args));
        assert!(err.contains(expect), "{extra:?}: {err}");
    }
}

/// What is not a regular file (a FIFO, a symlink, a device) is written into: renaming the
/// finished `.partial` file over it would replace it with a regular file.
#[cfg(target_os = "linux")]
#[test]
fn non_regular_outputs_are_written_into() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let model = fixture();
    let speak = |to: &Path| {
        let mut args = vec!["speak", "--model", s(&model), "-o", s(to)];
        args.extend(GREEDY);
        args.push("Hello");
        voxide(&args)
    };
    let succeeds = |out: Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let plain = dir.path().join("plain.wav");
    succeeds(speak(&plain));
    let want = std::fs::read(&plain).unwrap();
    assert!(want.len() > 44);

    let fifo = dir.path().join("fifo.wav");
    let received = read_fifo(&fifo);
    succeeds(speak(&fifo));
    let got = received();
    // A stream cannot seek back: its header keeps the "unknown length" sizes.
    assert_eq!(got.len(), want.len(), "bytes through the FIFO");
    assert_eq!(&got[40..44], &u32::MAX.to_le_bytes());
    assert!(got[44..] == want[44..], "the FIFO's samples differ");
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());

    check_linked_outputs(dir.path(), "wav", speak, &want);
}

/// `voxide speak ARGS` with `text` on standard input.
fn speak_stdin(args: &[&str], text: &str) -> Output {
    let args: Vec<&str> = std::iter::once("speak")
        .chain(args.iter().copied())
        .collect();
    common::voxide_with_stdin(&args, text.as_bytes())
}

/// A text whose prompt and frames exceed the talker's positions (32 768 for the fixture, 2048
/// of them for the frames by default) is refused up front in one line, and leaves no file; it
/// once aborted trying to allocate 4 TB.
#[test]
fn text_too_long_for_the_model_is_refused_and_leaves_no_file() {
    let dir = std::env::temp_dir().join(format!("voxide-speak-long-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("o.wav");
    let model = fixture();
    // In one part (by default it would be spoken in 2080 parts).
    let args = [
        "-m",
        s(&model),
        "--voice",
        "tester",
        "-o",
        s(&wav),
        "--part-chars",
        "0",
    ];
    let out = speak_stdin(&args, &"Hello there. ".repeat(80_000));
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: text too long: 1040025 tokens, this model takes at most 30720 beside 2048 frames of audio (split the text)"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "no output and no partial file"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// A long text within the limit is spoken, its prompt run through the talker in blocks:
/// memory grows with the prompt, not with its square (20 000 positions at once took
/// gigabytes for attention's mask and scores alone).
#[test]
fn a_long_text_within_the_limit_is_spoken_in_bounded_memory() {
    let dir = std::env::temp_dir().join(format!("voxide-speak-longok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("o.wav");
    let model = fixture();
    let mut args = vec!["-m", s(&model), "-o", s(&wav), "-v", "--part-chars", "0"];
    args.extend(GREEDY);
    let out = speak_stdin(&args, &"Hello there. ".repeat(1600));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(std::fs::read(&wav).unwrap().len(), 44 + 5 * 1920 * 2);
    // By default in parts of at most 500 characters (38 sentences each), 5 frames each.
    args.truncate(args.len() - GREEDY.len() - 2);
    args.extend(GREEDY);
    let text = "Hello there. ".repeat(1600);
    let out = speak_stdin(&args, &text);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parts = voxide_models::qwen3_tts::text_parts(&text, 500);
    assert_eq!((parts.len(), parts[0].len()), (43, 38 * 13 - 1));
    assert_eq!(std::fs::read(&wav).unwrap().len(), 44 + 43 * 5 * 1920 * 2);
    let peak_mb: f64 = stderr
        .split("peak RSS ")
        .nth(1)
        .and_then(|rest| rest.split(" MB").next())
        .and_then(|mb| mb.parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {stderr}"));
    assert!(peak_mb < 1000.0, "peak RSS {peak_mb} MB");
    std::fs::remove_dir_all(dir).ok();
}
