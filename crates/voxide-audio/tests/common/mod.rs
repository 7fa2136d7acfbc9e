//! Shared helpers for the voxide-audio integration tests: where the shared
//! corpus and the committed fixtures live, and fixture loading.
#![allow(dead_code)]

pub mod wav;

use std::collections::HashMap;
use std::path::PathBuf;

/// `../shared` relative to the repository root (never copied into the repo).
pub fn shared_dir() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    assert!(
        p.join("corpus/transcripts.tsv").exists(),
        "shared data not found at {} (expected ../shared next to the repository)",
        p.display()
    );
    p
}

/// The corpus directory.
pub fn corpus(rel: &str) -> PathBuf {
    shared_dir().join("corpus").join(rel)
}

/// `tests/fixtures/audio/` at the repository root.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/audio")
}

/// Read a JSON fixture.
pub fn json(name: &str) -> serde_json::Value {
    let p = fixtures_dir().join(name);
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap()
}

/// A float32 tensor: shape and values.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Read every F32 tensor of a safetensors fixture.
pub fn tensors(name: &str) -> HashMap<String, Tensor> {
    let p = fixtures_dir().join(name);
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32, "{k}");
            let data = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (
                k,
                Tensor {
                    shape: v.shape().to_vec(),
                    data,
                },
            )
        })
        .collect()
}

/// Signal-to-noise ratio in dB of `y` against the reference `r`.
pub fn snr_db(y: &[f32], r: &[f32]) -> f64 {
    assert_eq!(y.len(), r.len());
    let (mut s, mut e) = (0f64, 0f64);
    for (&a, &b) in y.iter().zip(r) {
        s += (b as f64).powi(2);
        e += (a as f64 - b as f64).powi(2);
    }
    if e == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (s / e).log10()
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
