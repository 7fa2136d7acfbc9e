//! Parity of the Qwen3-TTS 12 Hz codec encoder (Mimi) with qwen-tts' `Qwen3TTSTokenizer.encode`,
//! on the seeded random encoder in tests/fixtures/qwen3-tts/codec-encoder (BF16 weights, F32
//! codebooks, 32 quantizers of which 16 are kept) and 2.4 s of real speech at 24 kHz (57 755
//! samples: 31 frames, the last one partial), made by
//! tools/reference/qwen3_tts_codec_encoder_fixtures.py: every stage, and identical codes.

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use voxide_models::qwen3_tts::codec_encoder::{load_codec_encoder, CodecEncoder};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen3-tts")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures().join("codec-encoder.reference.safetensors"),
        &Device::Cpu,
    )
    .expect("reference tensors")
}

fn encoder() -> CodecEncoder {
    load_codec_encoder(&fixtures().join("codec-encoder"), &Device::Cpu).expect("encoder loads")
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// (max |a − b|, max |b|).
fn diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let (a, b) = (flat(a), flat(b));
    let d = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    (d, b.iter().fold(0f32, |m, v| m.max(v.abs())))
}

/// Every stage the reference dumps, in order; the last two are the quantizer inputs.
const STAGES: [&str; 15] = [
    "encoder.layers.0",
    "encoder.layers.1",
    "encoder.layers.3",
    "encoder.layers.4",
    "encoder.layers.6",
    "encoder.layers.7",
    "encoder.layers.9",
    "encoder.layers.10",
    "encoder.layers.12",
    "encoder.layers.14",
    "encoder_transformer.layers.0",
    "encoder_transformer.layers.1",
    "downsample",
    "quantizer.semantic_residual_vector_quantizer.input_proj",
    "quantizer.acoustic_residual_vector_quantizer.input_proj",
];

#[test]
fn encodes_like_qwen_tts() {
    let reference = reference();
    let codec = encoder();
    assert_eq!(codec.config().frame_size(), 1920);
    let wav = flat(&reference["wav24k"]);
    let mut stages = HashMap::new();
    let codes = codec
        .encode_traced(&wav, &mut |name, t| {
            assert!(
                stages.insert(name.to_string(), t.clone()).is_none(),
                "{name} twice"
            );
        })
        .unwrap();
    assert_eq!(stages.len(), STAGES.len(), "{:?}", stages.keys());
    for name in STAGES {
        let (d, peak) = diff(&stages[name], &reference[name]);
        println!("{name:58} max |diff| {d:.3e} (peak {peak:.2})");
        // 1e-5 of the stage's peak: f32 rounding through up to ~20 layers, far below anything
        // that could move a code (see the margins below).
        assert!(d <= 1e-5 * peak.max(1.0), "{name}: {d} (peak {peak})");
    }

    // Identical codes: T = ⌈57755 / 1920⌉ = 31 frames of the first 16 quantizers.
    let want: Vec<Vec<u32>> = reference["codes"]
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|f| f.into_iter().map(|c| c as u32).collect())
        .collect();
    let frames = reference["frames"].to_vec1::<i64>().unwrap()[0] as usize;
    assert_eq!(frames, wav.len().div_ceil(1920));
    assert_eq!(want.len(), frames);
    assert_eq!(want[0].len(), 16);
    assert_eq!(codes, want);
    let all = reference["codes_all"].squeeze(0).unwrap();
    let all = all.narrow(0, 0, 16).unwrap().t().unwrap();
    assert_eq!(
        all.to_vec2::<i64>().unwrap(),
        reference["codes"].to_vec2::<i64>().unwrap()
    );

    // Not near ties: a quantizer input off by δ per element moves every distance by at most
    // ‖δ‖₂ ≤ √D · max|δ|, so codes are safe while every chosen entry beats the runner-up by
    // more than twice that. The fixture's codebooks leave every kept code a margin of ≥ 1 % of
    // its distance (7e-3 at least), > 10× that bound.
    let dim = codec.config().codebook_dim as f32;
    let delta = STAGES[STAGES.len() - 2..]
        .iter()
        .map(|&n| diff(&stages[n], &reference[n]).0)
        .fold(0f32, f32::max);
    let margins = reference["code_margin"].narrow(0, 0, 16).unwrap();
    let margin = flat(&margins).into_iter().fold(f32::MAX, f32::min);
    println!(
        "min code margin {margin:.3e} vs 2·√D·δ = {:.3e}",
        2.0 * dim.sqrt() * delta
    );
    assert!(margin > 10.0 * 2.0 * dim.sqrt() * delta.max(1e-7));
}

#[test]
fn clear_errors() {
    let codec = encoder();
    let err = codec.encode(&[]).unwrap_err().to_string();
    assert!(err.contains("empty clip"), "{err}");
    // A shorter clip still encodes: one partial frame.
    assert_eq!(codec.encode(&[0.1; 100]).unwrap().len(), 1);
    // The decoder-only speech tokenizer of the talker fixture has encoder_config (MimiConfig's
    // defaults) but no encoder weights.
    let err = load_codec_encoder(
        &fixtures().join("tiny-random/speech_tokenizer"),
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("decoder-only"), "{err}");
}
