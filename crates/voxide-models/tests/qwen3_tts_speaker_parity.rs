//! Parity of the Qwen3-TTS Base speaker encoder (ECAPA-TDNN) and its mel front end with
//! qwen-tts' `extract_speaker_embedding`, on the seeded random encoder in
//! tests/fixtures/qwen3-tts/speaker-encoder (BF16 weights, the real 128-bin mel, channels
//! [32, 32, 32, 32, 96]) fed 3 s of LibriSpeech speech resampled to 24 kHz, made by
//! tools/reference/qwen3_tts_speaker_fixtures.py.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use voxide_models::error::Error;
use voxide_models::qwen3_tts::speaker_encoder::{SpeakerEncoder, SpeakerEncoderConfig};
use voxide_nn::weights::SafetensorsFiles;

/// Log-mel vs torch's f32 STFT: reference-parity.md §3's 5e-5 is in Whisper's units,
/// log10(x) / 4; in this mel's natural-log units that is 5e-5 · 4 · ln 10 = 4.6e-4. The largest
/// differences sit in the quietest bins (near the 1e-5 floor), where torch's f32 FFT rounding
/// is large relative to the bin: torch itself is 2.3e-4 from the exact (f64) value there.
const MEL_TOL: f32 = 4.6e-4;
/// Mean |diff| vs torch's mel (torch vs the exact value: 6.9e-7).
const MEL_MEAN_TOL: f64 = 5e-6;
/// Max |diff| vs the same formula in float64 (`mel_f64`): only our f32 Hann window (one ulp
/// off torch's in 34 of 1024 taps) and the final rounding remain.
const MEL_F64_TOL: f32 = 3e-5;
/// Stages fed the reference mel: max |diff| relative to the stage's max |value|
/// (reference-parity.md §3, hidden states 1e-4 to 1e-5). The f32 rounding floor is ~1e-6
/// (reference f32 vs f64, `checks.stage_f32_vs_f64_max_abs`).
const STAGE_TOL: f32 = 1e-5;
/// x-vector from the samples (our mel, then the network) vs qwen-tts': relative L2 error
/// (measured 2.9e-7: the mel's differences in the quietest bins barely reach it).
const XVECTOR_TOL: f32 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen3-tts")
}

fn reference() -> &'static HashMap<String, Tensor> {
    static REF: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    REF.get_or_init(|| {
        candle_core::safetensors::load(
            fixtures().join("speaker.reference.safetensors"),
            &Device::Cpu,
        )
        .expect("reference tensors")
    })
}

fn tensor(key: &str) -> &'static Tensor {
    reference()
        .get(key)
        .unwrap_or_else(|| panic!("reference has no {key}"))
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn config() -> SpeakerEncoderConfig {
    let path = fixtures().join("speaker-encoder/config.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::from_value(json["speaker_encoder_config"].clone()).unwrap()
}

fn load(cfg: &SpeakerEncoderConfig) -> candle_core::Result<SpeakerEncoder> {
    let path = fixtures().join("speaker-encoder/model.safetensors");
    let files = SafetensorsFiles::open(&[path])?;
    let vb = VarBuilder::from_backend(Box::new(files), DType::F32, Device::Cpu);
    SpeakerEncoder::load(vb, cfg)
}

fn encoder() -> SpeakerEncoder {
    load(&config()).expect("speaker encoder loads")
}

/// (max |a − b|, mean |a − b|).
fn diffs(a: &[f32], b: &[f32]) -> (f32, f64) {
    assert_eq!(a.len(), b.len(), "sizes differ");
    let max = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let sum: f64 = a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).sum();
    (max, sum / a.len() as f64)
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

#[test]
fn mel_matches_qwen_tts() {
    let enc = encoder();
    let mel = enc.mel(&values(tensor("wav24k"))).unwrap();
    assert_eq!(mel.dims(), tensor("mel").dims());
    let got = values(&mel);
    let (max, mean) = diffs(&got, &values(tensor("mel")));
    let (max_f64, _) = diffs(&got, &values(tensor("mel_f64")));
    eprintln!("mel vs torch: max {max:e}, mean {mean:e}; vs f64: max {max_f64:e}");
    assert!(max < MEL_TOL, "mel differs from torch's by {max}");
    assert!(
        mean < MEL_MEAN_TOL,
        "mel differs from torch's by {mean} on average"
    );
    assert!(
        max_f64 < MEL_F64_TOL,
        "mel differs from the f64 value by {max_f64}"
    );
}

#[test]
fn every_stage_matches_qwen_tts() {
    let enc = encoder();
    let stages = enc.forward_stages(tensor("mel")).unwrap();
    assert_eq!(stages.blocks.len(), 4);
    let named = stages
        .blocks
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("blocks.{i}"), t))
        .chain([
            ("mfa".to_string(), &stages.mfa),
            ("asp".to_string(), &stages.asp),
            ("xvector".to_string(), &stages.xvector),
        ]);
    for (name, got) in named {
        let want = tensor(&name);
        assert_eq!(got.dims(), want.dims(), "{name}");
        let want = values(want);
        let (max, _) = diffs(&values(got), &want);
        let rel = max / max_abs(&want);
        eprintln!("{name}: max |diff| {max:e}, relative to max |value| {rel:e}");
        assert!(rel < STAGE_TOL, "{name} differs by {max} ({rel} relative)");
    }
}

#[test]
fn embeds_like_qwen_tts() {
    let enc = encoder();
    let got = enc.embed(&values(tensor("wav24k"))).unwrap();
    let want = values(tensor("xvector"));
    assert_eq!(got.len(), enc.config().enc_dim);
    let (max, _) = diffs(&got, &want);
    let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| x * x).sum::<f32>().sqrt();
    let rel =
        norm(&mut got.iter().zip(&want).map(|(a, b)| a - b)) / norm(&mut want.iter().copied());
    eprintln!("x-vector from samples: max |diff| {max:e}, relative L2 {rel:e}");
    assert!(rel < XVECTOR_TOL, "x-vector differs by {rel} (relative L2)");
}

/// Reflect padding needs more frames than its pad (4 for kernel 3, dilation 4) and the mel more
/// samples than its pad: 5 frames = 1280 samples is the shortest clip.
#[test]
fn short_clips_are_clear_errors() {
    let enc = encoder();
    let wav = values(tensor("wav24k"));
    let xvector = enc.embed(&wav[..1280]).unwrap();
    assert!(xvector.iter().all(|v| v.is_finite()));
    for n in [1279, 300, 0] {
        match enc.embed(&wav[..n]) {
            Err(Error::InvalidRequest(message)) => {
                assert!(message.contains("too short"), "{message}");
                assert!(message.contains("1280"), "{message}");
            }
            other => panic!("{n} samples: {other:?}"),
        }
    }
}

#[test]
fn inconsistent_configs_do_not_load() {
    let mut cfg = config();
    cfg.enc_dilations.pop();
    let err = load(&cfg).unwrap_err().to_string();
    assert!(err.contains("lengths 5, 5, 4"), "{err}");
    // A shape that does not match the weights names the tensor.
    let mut cfg = config();
    cfg.enc_dim = 64;
    let err = load(&cfg).unwrap_err().to_string();
    assert!(err.contains("fc"), "{err}");
}
