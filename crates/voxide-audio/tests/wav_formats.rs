//! WAV sample formats decode to the values libsndfile gives (integer PCM
//! divided by 2^(bits-1), 8-bit unsigned centred at 128, floats as stored),
//! for any rate and channel count, as planar channels.

mod common;

use common::wav::wav;
use voxide_audio::decode_bytes;

/// 3 channels x 4 frames of test values in [-1, 1).
fn values() -> Vec<[f64; 3]> {
    vec![
        [0.0, 0.5, -0.5],
        [0.25, -1.0, 0.75],
        [-0.125, 0.0625, 0.99],
        [0.5, -0.25, -0.75],
    ]
}

fn check(bytes: Vec<u8>, rate: u32, want: impl Fn(f64) -> f64, tol: f32, what: &str) {
    let a = decode_bytes(&bytes, what).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(a.sample_rate, rate, "{what}");
    assert_eq!(a.n_channels(), 3, "{what}");
    assert_eq!(a.n_frames(), 4, "{what}");
    for (t, frame) in values().iter().enumerate() {
        for (c, &v) in frame.iter().enumerate() {
            let w = want(v) as f32;
            let g = a.channels[c][t];
            assert!((g - w).abs() <= tol, "{what} ch{c} t{t}: {g} vs {w}");
        }
    }
}

#[test]
fn integer_and_float_formats() {
    let vals = values();
    let flat = || vals.iter().flat_map(|f| f.iter().copied());
    // 8-bit unsigned.
    let q8 = |v: f64| (v * 128.0).round().clamp(-128.0, 127.0);
    let d: Vec<u8> = flat().map(|v| (q8(v) + 128.0) as u8).collect();
    check(
        wav(1, 3, 11025, 8, &d, false),
        11025,
        |v| q8(v) / 128.0,
        0.0,
        "u8",
    );
    // 16-bit.
    let q16 = |v: f64| (v * 32768.0).round().clamp(-32768.0, 32767.0);
    let d: Vec<u8> = flat().flat_map(|v| (q16(v) as i16).to_le_bytes()).collect();
    check(
        wav(1, 3, 22050, 16, &d, false),
        22050,
        |v| q16(v) / 32768.0,
        0.0,
        "s16",
    );
    // 24-bit.
    let q24 = |v: f64| (v * 8388608.0).round().clamp(-8388608.0, 8388607.0);
    let d: Vec<u8> = flat()
        .flat_map(|v| {
            let b = (q24(v) as i32).to_le_bytes();
            [b[0], b[1], b[2]]
        })
        .collect();
    check(
        wav(1, 3, 44100, 24, &d, false),
        44100,
        |v| q24(v) / 8388608.0,
        0.0,
        "s24",
    );
    // 32-bit integer (extensible header).
    let q32 = |v: f64| {
        (v * 2147483648.0)
            .round()
            .clamp(-2147483648.0, 2147483647.0)
    };
    let d: Vec<u8> = flat().flat_map(|v| (q32(v) as i32).to_le_bytes()).collect();
    check(
        wav(1, 3, 7350, 32, &d, true),
        7350,
        |v| q32(v) / 2147483648.0,
        1e-7,
        "s32",
    );
    // 32-bit float.
    let d: Vec<u8> = flat().flat_map(|v| (v as f32).to_le_bytes()).collect();
    check(
        wav(3, 3, 48000, 32, &d, false),
        48000,
        |v| v as f32 as f64,
        0.0,
        "f32",
    );
    // 64-bit float.
    let d: Vec<u8> = flat().flat_map(|v| v.to_le_bytes()).collect();
    check(wav(3, 3, 96000, 64, &d, false), 96000, |v| v, 0.0, "f64");
}
