//! Row (de)quantization of every [`GgmlType`]: the float types and ggml's 32-value block
//! formats here, the k-quants in `kquants.rs`.
//!
//! Dequantization is bit-exact with ggml's `dequantize_row_*` and quantization byte-identical
//! with its `quantize_row_*_ref` (ggml/src/ggml-quants.c, credited to the ggml authors): same
//! layouts, same float operations in the same order, so weights we write read back in
//! whisper.cpp / llama.cpp exactly as ggml's own quantizer would have written them, and
//! weights we read are the values ggml computes with. Checked against ggml's C code and
//! gguf-py by the fixtures of `tools/reference/ggml_quant_fixtures.py`.

use half::{f16, slice::HalfFloatSliceExt};

use super::{kquants, GgmlType};

/// ggml's f32 → f16 (`ggml_compute_fp32_to_fp16`): round to nearest even, every NaN to the
/// canonical quiet NaN with the input's sign.
#[inline]
fn f32_to_f16(x: f32) -> u16 {
    if x.is_nan() {
        ((x.to_bits() >> 16) as u16 & 0x8000) | 0x7e00
    } else {
        f16::from_f32(x).to_bits()
    }
}

/// ggml's f32 → bf16 (`ggml_compute_fp32_to_bf16`): round to nearest even on the raw bits,
/// NaNs truncated and forced quiet.
#[inline]
fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        ((u >> 16) | 64) as u16
    } else {
        ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
    }
}

/// The little-endian f16 at `b[at..at + 2]`, widened as ggml does (exactly; NaNs come out
/// quiet, as from ggml's software conversion).
#[inline]
pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Stores `x` rounded to f16 at `b[at..at + 2]`, little-endian.
#[inline]
pub(super) fn put_f16(b: &mut [u8], at: usize, x: f32) {
    b[at..at + 2].copy_from_slice(&f32_to_f16(x).to_le_bytes());
}

/// Dequantizes one row: `dst.len()` values from `src`, which must be exactly
/// `ty.row_bytes(dst.len())` bytes (callers validate tensor sizes first; a mismatch panics).
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    assert_eq!(
        ty.row_bytes(dst.len()),
        Some(src.len()),
        "{ty}: {} bytes are not a row of {} values",
        src.len(),
        dst.len()
    );
    match ty {
        GgmlType::F32 => dequantize_blocks(ty, src, dst, |b: &[u8; 4], y: &mut [f32; 1]| {
            y[0] = f32::from_le_bytes(*b)
        }),
        GgmlType::F16 => {
            // half's slice conversion uses F16C where the CPU has it (exact either way).
            let mut buf = [f16::ZERO; 64];
            for (src, dst) in src.chunks(128).zip(dst.chunks_mut(64)) {
                let buf = &mut buf[..dst.len()];
                for (h, b) in buf.iter_mut().zip(src.as_chunks::<2>().0) {
                    *h = f16::from_le_bytes(*b);
                }
                buf.convert_to_f32_slice(dst);
            }
        }
        GgmlType::Bf16 => dequantize_blocks(ty, src, dst, |b: &[u8; 2], y: &mut [f32; 1]| {
            y[0] = f32::from_bits((u16::from_le_bytes(*b) as u32) << 16)
        }),
        GgmlType::Q4_0 => dequantize_blocks(ty, src, dst, dequantize_q4_0),
        GgmlType::Q4_1 => dequantize_blocks(ty, src, dst, dequantize_q4_1),
        GgmlType::Q5_0 => dequantize_blocks(ty, src, dst, dequantize_q5_0),
        GgmlType::Q5_1 => dequantize_blocks(ty, src, dst, dequantize_q5_1),
        GgmlType::Q8_0 => dequantize_blocks(ty, src, dst, dequantize_q8_0),
        GgmlType::Q8_1 => dequantize_blocks(ty, src, dst, dequantize_q8_1),
        GgmlType::Q2K => dequantize_blocks(ty, src, dst, kquants::dequantize_q2_k),
        GgmlType::Q3K => dequantize_blocks(ty, src, dst, kquants::dequantize_q3_k),
        GgmlType::Q4K => dequantize_blocks(ty, src, dst, kquants::dequantize_q4_k),
        GgmlType::Q5K => dequantize_blocks(ty, src, dst, kquants::dequantize_q5_k),
        GgmlType::Q6K => dequantize_blocks(ty, src, dst, kquants::dequantize_q6_k),
        GgmlType::Q8K => dequantize_blocks(ty, src, dst, kquants::dequantize_q8_k),
    }
}

/// Quantizes one row with ggml's reference quantizer (`quantize_row_*_ref`; for f16 / bf16
/// ggml's conversions, for f32 a copy): `src.len()` values into `dst`, which must be exactly
/// `ty.row_bytes(src.len())` bytes (a mismatch panics).
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    assert_eq!(
        ty.row_bytes(src.len()),
        Some(dst.len()),
        "{ty}: {} bytes are not a row of {} values",
        dst.len(),
        src.len()
    );
    match ty {
        GgmlType::F32 => quantize_blocks(ty, src, dst, |x: &[f32; 1], y: &mut [u8; 4]| {
            *y = x[0].to_le_bytes()
        }),
        GgmlType::F16 => quantize_blocks(ty, src, dst, |x: &[f32; 1], y: &mut [u8; 2]| {
            *y = f32_to_f16(x[0]).to_le_bytes()
        }),
        GgmlType::Bf16 => quantize_blocks(ty, src, dst, |x: &[f32; 1], y: &mut [u8; 2]| {
            *y = f32_to_bf16(x[0]).to_le_bytes()
        }),
        GgmlType::Q4_0 => quantize_blocks(ty, src, dst, quantize_q4_0),
        GgmlType::Q4_1 => quantize_blocks(ty, src, dst, quantize_q4_1),
        GgmlType::Q5_0 => quantize_blocks(ty, src, dst, quantize_q5_0),
        GgmlType::Q5_1 => quantize_blocks(ty, src, dst, quantize_q5_1),
        GgmlType::Q8_0 => quantize_blocks(ty, src, dst, quantize_q8_0),
        GgmlType::Q8_1 => quantize_blocks(ty, src, dst, quantize_q8_1),
        GgmlType::Q2K => quantize_blocks(ty, src, dst, kquants::quantize_q2_k),
        GgmlType::Q3K => quantize_blocks(ty, src, dst, kquants::quantize_q3_k),
        GgmlType::Q4K => quantize_blocks(ty, src, dst, kquants::quantize_q4_k),
        GgmlType::Q5K => quantize_blocks(ty, src, dst, kquants::quantize_q5_k),
        GgmlType::Q6K => quantize_blocks(ty, src, dst, kquants::quantize_q6_k),
        GgmlType::Q8K => quantize_blocks(ty, src, dst, kquants::quantize_q8_k),
    }
}

/// Runs a block dequantizer over a row; fixed-size blocks let the compiler drop bounds checks.
#[inline]
fn dequantize_blocks<const B: usize, const N: usize>(
    ty: GgmlType,
    src: &[u8],
    dst: &mut [f32],
    f: impl Fn(&[u8; B], &mut [f32; N]),
) {
    debug_assert_eq!((B, N), (ty.block_bytes(), ty.block_size()), "{ty}");
    let (blocks, _) = src.as_chunks::<B>();
    for (b, y) in blocks.iter().zip(dst.as_chunks_mut::<N>().0) {
        f(b, y);
    }
}

/// Runs a block quantizer over a row.
#[inline]
fn quantize_blocks<const N: usize, const B: usize>(
    ty: GgmlType,
    src: &[f32],
    dst: &mut [u8],
    f: impl Fn(&[f32; N], &mut [u8; B]),
) {
    debug_assert_eq!((B, N), (ty.block_bytes(), ty.block_size()), "{ty}");
    let (blocks, _) = src.as_chunks::<N>();
    for (x, y) in blocks.iter().zip(dst.as_chunks_mut::<B>().0) {
        f(x, y);
    }
}

/// The value of greatest magnitude (the first one on ties; +0 when all are ±0) and that
/// magnitude, as ggml's quantizers find them.
#[inline]
pub(super) fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

/// Minimum and maximum as ggml's q4_1 / q5_1 find them.
#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// The scale's inverse, 0 for a zero scale.
#[inline]
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

// ---- q4_0: d, qs[16] (value j in the low nibble of byte j, j + 16 in the high one) ----------

fn dequantize_q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let (lo, hi) = y.split_at_mut(16);
    for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(&b[2..]) {
        *lo = ((q & 0xf) as i32 - 8) as f32 * d;
        *hi = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

fn quantize_q4_0(x: &[f32; 32], y: &mut [u8; 18]) {
    let d = signed_absmax(x).0 / -8.0;
    let id = inverse(d);
    put_f16(y, 0, d);
    let (lo, hi) = x.split_at(16);
    for ((q, &x0), &x1) in y[2..].iter_mut().zip(lo).zip(hi) {
        let q0 = ((x0 * id + 8.5) as i8).min(15) as u8;
        let q1 = ((x1 * id + 8.5) as i8).min(15) as u8;
        *q = q0 | (q1 << 4);
    }
}

// ---- q4_1: d, m, qs[16] ----------------------------------------------------------------------

fn dequantize_q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let (lo, hi) = y.split_at_mut(16);
    for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(&b[4..]) {
        *lo = (q & 0xf) as f32 * d + m;
        *hi = (q >> 4) as f32 * d + m;
    }
}

fn quantize_q4_1(x: &[f32; 32], y: &mut [u8; 20]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    put_f16(y, 0, d);
    put_f16(y, 2, min);
    let (lo, hi) = x.split_at(16);
    for ((q, &x0), &x1) in y[4..].iter_mut().zip(lo).zip(hi) {
        let q0 = (((x0 - min) * id + 0.5) as i8).min(15) as u8;
        let q1 = (((x1 - min) * id + 0.5) as i8).min(15) as u8;
        *q = q0 | (q1 << 4);
    }
}

// ---- q5_0 / q5_1: d[, m], qh (u32: 5th bit of value j at bit j), qs[16] ---------------------

/// The 5-bit values of a q5 block from its high-bit word and nibbles.
#[inline]
fn q5_values(qh: u32, qs: &[u8]) -> [u8; 32] {
    let mut v = [0u8; 32];
    for (j, &q) in qs.iter().enumerate() {
        v[j] = (q & 0xf) | ((((qh >> j) << 4) & 0x10) as u8);
        v[j + 16] = (q >> 4) | (((qh >> (j + 12)) & 0x10) as u8);
    }
    v
}

/// Packs 5-bit values into the high-bit word and nibbles of a q5 block.
#[inline]
fn pack_q5(v: &[u8; 32], qs: &mut [u8]) -> u32 {
    let mut qh = 0u32;
    for (j, q) in qs.iter_mut().enumerate() {
        let (v0, v1) = (v[j], v[j + 16]);
        *q = (v0 & 0xf) | ((v1 & 0xf) << 4);
        qh |= (((v0 & 0x10) >> 4) as u32) << j;
        qh |= (((v1 & 0x10) >> 4) as u32) << (j + 16);
    }
    qh
}

fn dequantize_q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let v = q5_values(u32::from_le_bytes([b[2], b[3], b[4], b[5]]), &b[6..]);
    for (y, &v) in y.iter_mut().zip(&v) {
        *y = (v as i32 - 16) as f32 * d;
    }
}

fn quantize_q5_0(x: &[f32; 32], y: &mut [u8; 22]) {
    let d = signed_absmax(x).0 / -16.0;
    let id = inverse(d);
    put_f16(y, 0, d);
    let v = x.map(|x| ((x * id + 16.5) as i8).min(31) as u8);
    let qh = pack_q5(&v, &mut y[6..]);
    y[2..6].copy_from_slice(&qh.to_le_bytes());
}

fn dequantize_q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let v = q5_values(u32::from_le_bytes([b[4], b[5], b[6], b[7]]), &b[8..]);
    for (y, &v) in y.iter_mut().zip(&v) {
        *y = v as f32 * d + m;
    }
}

fn quantize_q5_1(x: &[f32; 32], y: &mut [u8; 24]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    put_f16(y, 0, d);
    put_f16(y, 2, min);
    // ggml does not clamp here: the values are at most 31.5 before truncation.
    let v = x.map(|x| ((x - min) * id + 0.5) as u8);
    let qh = pack_q5(&v, &mut y[8..]);
    y[4..8].copy_from_slice(&qh.to_le_bytes());
}

// ---- q8_0: d, qs[32] (i8); q8_1 (activations): d, s = d * sum(qs), qs[32] ------------------

fn dequantize_q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..]) {
        *y = q as i8 as f32 * d;
    }
}

/// The scale `amax / 127` of q8_0 / q8_1 and the values rounded half away from zero
/// (`roundf`), as ggml computes them.
#[inline]
fn q8_scale_values(x: &[f32; 32]) -> (f32, [i8; 32]) {
    let mut amax = 0.0f32;
    for &v in x {
        amax = if amax > v.abs() { amax } else { v.abs() };
    }
    let d = amax / 127.0;
    let id = inverse(d);
    (d, x.map(|v| (v * id).round() as i8))
}

fn quantize_q8_0(x: &[f32; 32], y: &mut [u8; 34]) {
    let (d, qs) = q8_scale_values(x);
    put_f16(y, 0, d);
    for (y, q) in y[2..].iter_mut().zip(qs) {
        *y = q as u8;
    }
}

/// ggml has no `dequantize_row_q8_1` (q8_1 only feeds dot products); this is q8_0's `q * d`,
/// the sum field unused.
fn dequantize_q8_1(b: &[u8; 36], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[4..]) {
        *y = q as i8 as f32 * d;
    }
}

fn quantize_q8_1(x: &[f32; 32], y: &mut [u8; 36]) {
    let (d, qs) = q8_scale_values(x);
    put_f16(y, 0, d);
    let sum: i32 = qs.iter().map(|&q| q as i32).sum();
    put_f16(y, 2, sum as f32 * d);
    for (y, q) in y[4..].iter_mut().zip(qs) {
        *y = q as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/ggml-quants/"
    );
    const N_PER_ROW: usize = 512;

    fn read(name: &str) -> Vec<u8> {
        std::fs::read(format!("{DIR}{name}")).unwrap_or_else(|e| panic!("{DIR}{name}: {e}"))
    }

    fn read_f32(name: &str) -> Vec<f32> {
        read(name)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    fn input(ty: GgmlType) -> Vec<f32> {
        read_f32(if ty.is_quantized() {
            "input.f32"
        } else {
            "input-float.f32"
        })
    }

    /// Dequantizes `bytes` a `n`-value row at a time.
    fn dequantize_rows(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
        let row = ty.row_bytes(n).unwrap();
        let mut out = vec![0.0; bytes.len() / row * n];
        for (src, dst) in bytes.chunks_exact(row).zip(out.chunks_exact_mut(n)) {
            dequantize_row(ty, src, dst);
        }
        out
    }

    fn quantize_rows(ty: GgmlType, x: &[f32]) -> Vec<u8> {
        let row = ty.row_bytes(N_PER_ROW).unwrap();
        let mut out = vec![0; x.len() / N_PER_ROW * row];
        for (src, dst) in x.chunks_exact(N_PER_ROW).zip(out.chunks_exact_mut(row)) {
            quantize_row(ty, src, dst);
        }
        out
    }

    fn assert_same_bits(ty: GgmlType, what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{ty} {what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{ty} {what}: value {i} is {g:e}, ggml has {w:e}"
            );
        }
    }

    /// Dequantization of ggml-quantized rows equals ggml's / gguf-py's, bit for bit.
    #[test]
    fn dequantize_matches_ggml_bit_exactly() {
        for ty in GgmlType::ALL {
            let got = dequantize_rows(ty, &read(&format!("{ty}.quant.bin")), N_PER_ROW);
            assert_same_bits(ty, "dequant", &got, &read_f32(&format!("{ty}.dequant.f32")));
        }
    }

    /// Random blocks (every bit pattern, random finite scales) dequantize as in ggml.
    #[test]
    fn dequantize_random_blocks_matches_ggml_bit_exactly() {
        for ty in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
            let bytes = read(&format!("{ty}.random.bin"));
            let want = read_f32(&format!("{ty}.random.dequant.f32"));
            // Whole rows of varying length: one block, then the rest.
            let n = ty.block_size();
            let mut got = dequantize_rows(ty, &bytes[..ty.block_bytes()], n);
            got.extend(dequantize_rows(
                ty,
                &bytes[ty.block_bytes()..],
                want.len() - n,
            ));
            assert_same_bits(ty, "random dequant", &got, &want);
        }
    }

    /// `quantize_row` writes the bytes of ggml's reference quantizers (cross-checked with
    /// gguf-py's for the types it implements).
    #[test]
    fn quantize_matches_ggml_reference_bytes() {
        for ty in GgmlType::ALL {
            let got = quantize_rows(ty, &input(ty));
            let want = read(&format!("{ty}.quant.bin"));
            assert_eq!(got.len(), want.len(), "{ty}");
            if let Some(i) = got.iter().zip(&want).position(|(g, w)| g != w) {
                let block = i / ty.block_bytes();
                panic!(
                    "{ty}: byte {i} (block {block}, offset {}) is {:#04x}, ggml wrote {:#04x}",
                    i % ty.block_bytes(),
                    got[i],
                    want[i]
                );
            }
        }
    }

    /// Quantize → dequantize stays close to the input: relative RMS error per row within
    /// what each format's bit width allows (the worst row is the structured one, whose exact
    /// ties next to a 127 leave little precision for the small values).
    #[test]
    fn round_trip_error_is_small() {
        let x = read_f32("input.f32");
        let tolerances = [
            (GgmlType::Q4_0, 0.25),
            (GgmlType::Q4_1, 0.16),
            (GgmlType::Q5_0, 0.12),
            (GgmlType::Q5_1, 0.08),
            (GgmlType::Q8_0, 0.03),
            (GgmlType::Q8_1, 0.03),
            (GgmlType::Q2K, 0.55),
            (GgmlType::Q3K, 0.32),
            (GgmlType::Q4K, 0.15),
            (GgmlType::Q5K, 0.08),
            (GgmlType::Q6K, 0.04),
            (GgmlType::Q8K, 0.035),
        ];
        for (ty, tol) in tolerances {
            let y = dequantize_rows(ty, &quantize_rows(ty, &x), N_PER_ROW);
            for (r, (x, y)) in x.chunks(N_PER_ROW).zip(y.chunks(N_PER_ROW)).enumerate() {
                let norm: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
                let err: f64 = x
                    .iter()
                    .zip(y)
                    .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                    .sum();
                if norm == 0.0 {
                    assert_eq!(err, 0.0, "{ty} row {r}");
                } else {
                    let rel = (err / norm).sqrt();
                    assert!(rel < tol, "{ty} row {r}: relative RMS error {rel} >= {tol}");
                }
            }
        }
        // The float types: f32 exact, f16 / bf16 within half an ulp of their precision.
        let x: Vec<f32> = x.into_iter().filter(|v| v.abs() < 6e4).collect();
        for (ty, rel) in [
            (GgmlType::F32, 0.0),
            (GgmlType::F16, 4.9e-4),
            (GgmlType::Bf16, 3.9e-3),
        ] {
            let mut bytes = vec![0; ty.row_bytes(x.len()).unwrap()];
            quantize_row(ty, &x, &mut bytes);
            let mut y = vec![0.0; x.len()];
            dequantize_row(ty, &bytes, &mut y);
            for (&a, &b) in x.iter().zip(&y) {
                assert!((a - b).abs() <= rel * a.abs() + 6e-8, "{ty}: {a} -> {b}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "not a row of")]
    fn dequantize_rejects_wrong_length() {
        let mut dst = [0.0; 32];
        dequantize_row(GgmlType::Q4_0, &[0; 17], &mut dst);
    }

    #[test]
    #[should_panic(expected = "not a row of")]
    fn dequantize_rejects_partial_block() {
        let mut dst = [0.0; 48];
        dequantize_row(GgmlType::Q8_0, &[0; 34], &mut dst);
    }

    #[test]
    #[should_panic(expected = "not a row of")]
    fn quantize_rejects_wrong_length() {
        let mut dst = [0; 143];
        quantize_row(GgmlType::Q4K, &[0.0; 256], &mut dst);
    }
}
