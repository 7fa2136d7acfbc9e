//! Helpers shared by the voxide-models parity tests: comparing tensors with the reference
//! dumps, reading ids and samples out of them.
#![allow(dead_code)]

use candle_core::Tensor;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shared corpus and assets beside the repository (`VOXIDE_SHARED` overrides).
pub fn shared() -> PathBuf {
    std::env::var_os("VOXIDE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared"))
}

/// A JSON array of token ids.
pub fn json_ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an id array")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest |value| (tolerances scale with it: the fixtures' weights are large, logits ~30).
pub fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `|a − b| ≤ tol · (1 + max|b|)`, printed for the closing note.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let diff = max_abs_diff(got, want);
    let scale = 1.0 + max_abs(want);
    println!("{what}: max |diff| {diff:.3e} (scale {scale:.1})");
    assert!(diff <= tol * scale, "{what}: {diff} > {tol} · {scale}");
}

/// Token ids stored as i64.
pub fn ids(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

/// Samples stored as f32.
pub fn samples(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// `f` of each item, each on a thread of its own, all started at once (concurrent calls on one
/// model): the results in the items' order.
pub fn at_once<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let start = std::sync::Barrier::new(items.len());
    std::thread::scope(|s| {
        let runs: Vec<_> = items
            .iter()
            .map(|item| {
                let (start, f) = (&start, &f);
                s.spawn(move || {
                    start.wait();
                    f(item)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    })
}
