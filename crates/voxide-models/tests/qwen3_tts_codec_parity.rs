//! Parity of the Qwen3-TTS 12 Hz codec decoder with qwen-tts' `Qwen3TTSTokenizerV2Decoder`,
//! on the seeded random decoder in tests/fixtures/qwen3-tts/tiny-random/speech_tokenizer (BF16
//! weights, F32
//! codebooks, sliding window 8 so 23 frames exercise it) made by
//! tools/reference/qwen3_tts_codec_fixtures.py, and the exactness of incremental decoding.

use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};
use voxide_models::qwen3_tts::codec::{load_codec, CodecDecoder};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen3-tts")
}

fn reference(key: &str) -> Tensor {
    let mut r = candle_core::safetensors::load(
        fixtures().join("codec.reference.safetensors"),
        &Device::Cpu,
    )
    .expect("reference tensors");
    r.remove(key)
        .unwrap_or_else(|| panic!("reference has no {key}"))
}

fn decoder() -> CodecDecoder {
    load_codec(
        &fixtures().join("tiny-random/speech_tokenizer"),
        &Device::Cpu,
    )
    .expect("codec loads")
    .1
}

/// The reference codes (1, 16, T) as frames of 16 codes.
fn frames() -> Vec<Vec<u32>> {
    let codes = reference("codes").squeeze(0).unwrap().t().unwrap();
    codes
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|f| f.into_iter().map(|c| c as u32).collect())
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn decodes_like_qwen_tts() {
    let codec = decoder();
    assert_eq!(codec.config().samples_per_frame(), 1920);
    let frames = frames();
    let wav = codec.decode(&frames).unwrap();
    let want = reference("wav")
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = max_abs_diff(&wav, &want);
    // The waveform peaks at ~0.07: 1e-5 of it is far below any audible difference and far
    // above f32 rounding through ~20 layers.
    assert!(
        d < 1e-5 * scale.max(1.0),
        "waveform differs by {d} (peak {scale})"
    );
    // A prefix decodes to the prefix of the samples (every stage is causal).
    let prefix = codec.decode(&frames[..11]).unwrap();
    let want = reference("wav_prefix11")
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(max_abs_diff(&prefix, &want) < 1e-5 * scale.max(1.0));
}

#[test]
fn any_split_into_chunks_equals_one_pass() {
    let codec = decoder();
    let frames = frames();
    let offline = codec.decode(&frames).unwrap();
    for chunks in [vec![1; 23], vec![5, 7, 11], vec![8, 15], vec![22, 1]] {
        let mut state = codec.new_state(&Device::Cpu).unwrap();
        let mut streamed = Vec::new();
        let mut at = 0;
        for n in &chunks {
            streamed.extend(codec.push(&mut state, &frames[at..at + n]).unwrap());
            at += n;
        }
        let d = max_abs_diff(&streamed, &offline);
        assert!(
            d < 1e-6,
            "chunks {chunks:?}: streamed samples differ by {d}"
        );
    }
}

#[test]
fn bad_codes_are_clear_errors() {
    let codec = decoder();
    let err = codec.decode(&[vec![0; 15]]).unwrap_err().to_string();
    assert!(err.contains("16 codes per frame"), "{err}");
    let mut frame = vec![0; 16];
    frame[3] = 2048;
    let err = codec.decode(&[frame]).unwrap_err().to_string();
    assert!(err.contains("2048"), "{err}");
    assert!(codec.decode(&[]).unwrap().is_empty());
}
