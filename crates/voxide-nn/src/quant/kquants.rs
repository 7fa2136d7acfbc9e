//! ggml's k-quants (super-blocks of [`QK_K`] values): exact dequantization and the reference
//! quantizers `quantize_row_q{2..6}_K_ref` / `quantize_row_q8_K_ref`.
//!
//! Layouts, scale packings and the quantization search (`make_qx_quants`, `make_q3_quants`,
//! `make_qkx2_quants`, `nearest_int`) are ggml's (`ggml/src/ggml-quants.c`, `ggml-common.h`),
//! credited to the ggml authors. Every float operation is kept in ggml's order (no fused
//! multiply-add, no reassociation) so that output is bit- and byte-identical to ggml's C code
//! compiled without FMA contraction, which is how model files are made and read.

use super::blocks::{f16_at, put_f16, signed_absmax};
use super::QK_K;

/// Below this a group is all zeros (`GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round half to even through the float-add trick (adding 1.5 * 2^23
/// leaves the rounded integer in the low mantissa bits). For |x| > 2^22 - 1 the result is
/// garbage in the same way as ggml's, which only asserts the range in debug builds.
#[inline]
fn nearest_int(x: f32) -> i32 {
    let val = x + 12_582_912.0;
    (val.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// ggml's `make_qx_quants` as q6_K's reference quantizer calls it (`rmse_type` 1, no
/// importance weights, so the weights are x²): symmetric levels `l + nmax` in `0..2*nmax`,
/// scale refined by a least-squares fit over 19 trial inverse scales. Returns the scale.
fn make_qx_quants(nmax: i32, x: &[f32], levels: &mut [u8]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let fit = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let assign = |iscale: f32, levels: &mut [u8]| {
        for (l, &v) in levels.iter_mut().zip(x) {
            *l = (nmax + nearest_int(iscale * v).clamp(-nmax, nmax - 1)) as u8;
        }
    };
    let iscale = -nmaxf / max;
    assign(iscale, levels);
    let (sumlx, suml2) = fit(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmaxf + 0.1 * is as f32) / max;
        let (sumlx, suml2) = fit(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            assign(iscale, levels);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_q3_quants` with `do_rmse` (as q3_K's reference quantizer calls it): start
/// from the max-based levels, then up to 5 passes of coordinate descent on the x²-weighted
/// least-squares error. Levels are `l + nmax`; returns the scale.
fn make_q3_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (l, &v) in levels.iter_mut().zip(x) {
        let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *l = q as i8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (l, &v) in levels.iter_mut().zip(x) {
            let w = v * v;
            let old = *l as f32;
            let mut slx = sumlx - w * v * old;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * old * old;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != *l as i32 {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *l = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for l in levels.iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// The trial inverse scales `(rmin + rdelta * is + nmax) / (max - min)`, `is` in `0..=nstep`,
/// of [`make_qkx2_quants`], and whether the error is absolute (`use_mad`) or squared.
struct Qkx2Search {
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
}

/// ggml's `make_qkx2_quants`: asymmetric levels `0..=nmax` with `x ≈ scale * l - min`; the
/// scale and min of each trial are a weighted least-squares fit, kept when the weighted error
/// drops. Returns `(scale, min)` (min ≥ 0, subtracted).
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
    search: &Qkx2Search,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let err = |diff: f32| {
        if search.use_mad {
            diff.abs()
        } else {
            diff * diff
        }
    };
    let nmaxf = nmax as f32;
    let iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax) as u8;
        levels[i] = l;
        best_error += weights[i] * err(scale * l as f32 + min - x[i]);
    }
    if search.nstep < 1 {
        return (scale, -min);
    }
    let mut trial = [0u8; 32];
    let trial = &mut trial[..n];
    for is in 0..=search.nstep {
        let iscale = (search.rmin + search.rdelta * is as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            trial[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                cur_error += weights[i] * err(this_scale * trial[i] as f32 + this_min - x[i]);
            }
            if cur_error < best_error {
                levels.copy_from_slice(trial);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Sub-block `j`'s 6-bit scale and min in the 12 packed bytes of q4_K / q5_K
/// (`get_scale_min_k4`): sub-blocks 0..4 in the low 6 bits of bytes 0..8, 4..8 split into the
/// nibbles of bytes 8..12 and the top 2 bits of bytes 0..8.
#[inline]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Sub-block `j`'s signed 6-bit scale in the 12 packed bytes of q3_K: low nibble in bytes
/// 0..8 (low then high nibbles), top 2 bits in bytes 8..12.
#[inline]
fn q3k_scale(j: usize, scales: &[u8]) -> i32 {
    let low = if j < 8 {
        scales[j] & 0xf
    } else {
        scales[j - 8] >> 4
    };
    let high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    (low | (high << 4)) as i32 - 32
}

/// Packs 2-bit levels as q2_K / q3_K store them: in each half of the block, byte `l` holds
/// values `l`, `l + 32`, `l + 64`, `l + 96` in bits 0-1, 2-3, 4-5, 6-7.
fn pack_2bit(levels: &[u8; QK_K], qs: &mut [u8]) {
    for (half, q) in levels.chunks_exact(128).zip(qs.chunks_exact_mut(32)) {
        for (l, q) in q.iter_mut().enumerate() {
            *q = half[l] | (half[l + 32] << 2) | (half[l + 64] << 4) | (half[l + 96] << 6);
        }
    }
}

/// The 6-bit scales and mins of q4_K / q5_K, quantized against their maxima as
/// `quantize_row_q{4,5}_K_ref` does, packed into `y[4..16]`, and `d` / `dmin` into `y[0..4]`.
fn pack_scales_mins_k4(scales: &[f32; 8], mins: &[f32; 8], y: &mut [u8]) {
    let max_scale = scales
        .iter()
        .fold(0.0f32, |m, &s| if s > m { s } else { m });
    let max_min = mins.iter().fold(0.0f32, |m, &s| if s > m { s } else { m });
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let packed = &mut y[4..16];
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    put_f16(y, 0, max_scale / 63.0);
    put_f16(y, 2, max_min / 63.0);
}

/// q4_K / q5_K's search for 32-value sub-blocks: weights `sqrt(mean(x²)) + |x|`.
fn sub_block_scales_mins(
    x: &[f32; QK_K],
    nmax: i32,
    search: &Qkx2Search,
    levels: &mut [u8; QK_K],
) -> ([f32; 8], [f32; 8]) {
    let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
    let mut weights = [0.0f32; 32];
    for (j, (x, l)) in x
        .chunks_exact(32)
        .zip(levels.chunks_exact_mut(32))
        .enumerate()
    {
        let mut sum_x2 = 0.0f32;
        for &v in x {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(x) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(nmax, x, &weights, l, search);
    }
    (scales, mins)
}

/// Re-derives q4_K / q5_K levels from the stored (rounded) scales and mins.
fn requantize_k4(x: &[f32; QK_K], y: &[u8], nmax: i32, levels: &mut [u8; QK_K]) {
    let (d, dmin) = (f16_at(y, 0), f16_at(y, 2));
    for (j, (x, l)) in x
        .chunks_exact(32)
        .zip(levels.chunks_exact_mut(32))
        .enumerate()
    {
        let (sc, m) = scale_min_k4(j, &y[4..16]);
        let d = d * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for (l, &v) in l.iter_mut().zip(x) {
            *l = nearest_int((v + dm) / d).clamp(0, nmax) as u8;
        }
    }
}

// ---- q2_K: scales[16] (4-bit scale | 4-bit min << 4), qs[64], d, dmin -----------------------

pub(super) fn dequantize_q2_k(b: &[u8; 84], y: &mut [f32; QK_K]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (g, y) in y.chunks_exact_mut(16).enumerate() {
        let (n, shift, half) = (g / 8, 2 * ((g / 2) % 4), g % 2);
        let q = &qs[32 * n + 16 * half..][..16];
        let sc = scales[g];
        let dl = d * (sc & 0xf) as f32;
        let ml = dmin * (sc >> 4) as f32;
        for (y, &q) in y.iter_mut().zip(q) {
            *y = dl * ((q >> shift) & 3) as f32 - ml;
        }
    }
}

const Q2K_SEARCH: Qkx2Search = Qkx2Search {
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: true,
};

pub(super) fn quantize_q2_k(x: &[f32; QK_K], y: &mut [u8; 84]) {
    const Q4SCALE: f32 = 15.0;
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins) = ([0.0f32; 16], [0.0f32; 16]);
    let mut weights = [0.0f32; 16];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for (j, (x, l)) in x
        .chunks_exact(16)
        .zip(levels.chunks_exact_mut(16))
        .enumerate()
    {
        for (w, &v) in weights.iter_mut().zip(x) {
            *w = v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(3, x, &weights, l, &Q2K_SEARCH);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    y.fill(0);
    if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for (s, &scale) in y[..16].iter_mut().zip(&scales) {
            *s = nearest_int(iscale * scale) as u8;
        }
        put_f16(y, 80, max_scale / Q4SCALE);
    }
    if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for (s, &min) in y[..16].iter_mut().zip(&mins) {
            *s |= (nearest_int(iscale * min) << 4) as u8;
        }
        put_f16(y, 82, max_min / Q4SCALE);
    }
    let (d, dmin) = (f16_at(y, 80), f16_at(y, 82));
    for (j, (x, l)) in x
        .chunks_exact(16)
        .zip(levels.chunks_exact_mut(16))
        .enumerate()
    {
        let d = d * (y[j] & 0xf) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin * (y[j] >> 4) as f32;
        for (l, &v) in l.iter_mut().zip(x) {
            *l = nearest_int((v + dm) / d).clamp(0, 3) as u8;
        }
    }
    pack_2bit(&levels, &mut y[16..80]);
}

// ---- q3_K: hmask[32], qs[64] (low 2 bits), scales[12] (6-bit, signed by -32), d -------------

pub(super) fn dequantize_q3_k(b: &[u8; 110], y: &mut [f32; QK_K]) {
    let (hmask, qs, scales) = (&b[..32], &b[32..96], &b[96..108]);
    let d_all = f16_at(b, 108);
    for (g, y) in y.chunks_exact_mut(16).enumerate() {
        let (n, s, half) = (g / 8, (g / 2) % 4, g % 2);
        let q = &qs[32 * n + 16 * half..][..16];
        let hm = &hmask[16 * half..][..16];
        let m = 1u8 << (4 * n + s);
        let dl = d_all * q3k_scale(g, scales) as f32;
        for ((y, &q), &h) in y.iter_mut().zip(q).zip(hm) {
            let low = ((q >> (2 * s)) & 3) as i32;
            *y = dl * (low - if h & m != 0 { 0 } else { 4 }) as f32;
        }
    }
}

pub(super) fn quantize_q3_k(x: &[f32; QK_K], y: &mut [u8; 110]) {
    let mut levels = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
    for (j, (x, l)) in x
        .chunks_exact(16)
        .zip(levels.chunks_exact_mut(16))
        .enumerate()
    {
        scales[j] = make_q3_quants(4, x, l);
        if scales[j].abs() > amax {
            amax = scales[j].abs();
            max_scale = scales[j];
        }
    }
    y.fill(0);
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        let packed = &mut y[96..108];
        for (j, &scale) in scales.iter().enumerate() {
            // ggml narrows to int8 before clamping.
            let l = ((nearest_int(iscale * scale) as i8).clamp(-32, 31) + 32) as u8;
            if j < 8 {
                packed[j] = l & 0xf;
            } else {
                packed[j - 8] |= (l & 0xf) << 4;
            }
            packed[8 + j % 4] |= (l >> 4) << (2 * (j / 4));
        }
        put_f16(y, 108, 1.0 / iscale);
    }
    let d_all = f16_at(y, 108);
    for (j, (x, l)) in x
        .chunks_exact(16)
        .zip(levels.chunks_exact_mut(16))
        .enumerate()
    {
        let d = d_all * q3k_scale(j, &y[96..108]) as f32;
        if d == 0.0 {
            continue;
        }
        for (l, &v) in l.iter_mut().zip(x) {
            *l = (nearest_int(v / d).clamp(-4, 3) + 4) as i8;
        }
    }
    // The high bit of value j goes to bit j / 32 of hmask[j % 32].
    let mut low = [0u8; QK_K];
    for (j, (&l, low)) in levels.iter().zip(&mut low).enumerate() {
        let mut l = l as u8;
        if l > 3 {
            y[j % 32] |= 1 << (j / 32);
            l -= 4;
        }
        *low = l;
    }
    pack_2bit(&low, &mut y[32..96]);
}

// ---- q4_K: d, dmin, scales[12] (6-bit scales and mins), qs[128] -----------------------------

pub(super) fn dequantize_q4_k(b: &[u8; 144], y: &mut [f32; QK_K]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..]);
    for (j, (y, q)) in y.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
        let (sc, m) = scale_min_k4(2 * j, scales);
        let (d1, m1) = (d * sc as f32, dmin * m as f32);
        let (sc, m) = scale_min_k4(2 * j + 1, scales);
        let (d2, m2) = (d * sc as f32, dmin * m as f32);
        let (lo, hi) = y.split_at_mut(32);
        for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(q) {
            *lo = d1 * (q & 0xf) as f32 - m1;
            *hi = d2 * (q >> 4) as f32 - m2;
        }
    }
}

const Q4K_SEARCH: Qkx2Search = Qkx2Search {
    rmin: -1.0,
    rdelta: 0.1,
    nstep: 20,
    use_mad: false,
};

pub(super) fn quantize_q4_k(x: &[f32; QK_K], y: &mut [u8; 144]) {
    let mut levels = [0u8; QK_K];
    let (scales, mins) = sub_block_scales_mins(x, 15, &Q4K_SEARCH, &mut levels);
    y.fill(0);
    pack_scales_mins_k4(&scales, &mins, y);
    requantize_k4(x, y, 15, &mut levels);
    for (half, q) in levels.chunks_exact(64).zip(y[16..].chunks_exact_mut(32)) {
        for (l, q) in q.iter_mut().enumerate() {
            *q = half[l] | (half[l + 32] << 4);
        }
    }
}

// ---- q5_K: d, dmin, scales[12], qh[32] (5th bits), qs[128] ---------------------------------

pub(super) fn dequantize_q5_k(b: &[u8; 176], y: &mut [f32; QK_K]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..]);
    for (j, (y, ql)) in y.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
        let (sc, m) = scale_min_k4(2 * j, scales);
        let (d1, m1) = (d * sc as f32, dmin * m as f32);
        let (sc, m) = scale_min_k4(2 * j + 1, scales);
        let (d2, m2) = (d * sc as f32, dmin * m as f32);
        let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
        let (lo, hi) = y.split_at_mut(32);
        for (((lo, hi), &q), &h) in lo.iter_mut().zip(hi).zip(ql).zip(qh) {
            *lo = d1 * ((q & 0xf) + if h & u1 != 0 { 16 } else { 0 }) as f32 - m1;
            *hi = d2 * ((q >> 4) + if h & u2 != 0 { 16 } else { 0 }) as f32 - m2;
        }
    }
}

const Q5K_SEARCH: Qkx2Search = Qkx2Search {
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: false,
};

pub(super) fn quantize_q5_k(x: &[f32; QK_K], y: &mut [u8; 176]) {
    let mut levels = [0u8; QK_K];
    let (scales, mins) = sub_block_scales_mins(x, 31, &Q5K_SEARCH, &mut levels);
    y.fill(0);
    pack_scales_mins_k4(&scales, &mins, y);
    requantize_k4(x, y, 31, &mut levels);
    let (qh, ql) = y[16..].split_at_mut(32);
    for (j, (half, ql)) in levels
        .chunks_exact(64)
        .zip(ql.chunks_exact_mut(32))
        .enumerate()
    {
        let (m1, m2) = (1u8 << (2 * j), 2u8 << (2 * j));
        for (l, (ql, qh)) in ql.iter_mut().zip(qh.iter_mut()).enumerate() {
            let (mut l1, mut l2) = (half[l], half[l + 32]);
            if l1 > 15 {
                l1 -= 16;
                *qh |= m1;
            }
            if l2 > 15 {
                l2 -= 16;
                *qh |= m2;
            }
            *ql = l1 | (l2 << 4);
        }
    }
}

// ---- q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (i8), d ------------------

pub(super) fn dequantize_q6_k(b: &[u8; 210], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 208);
    for (n, y) in y.chunks_exact_mut(128).enumerate() {
        let ql = &b[64 * n..][..64];
        let qh = &b[128 + 32 * n..][..32];
        let sc = |i: usize| b[192 + 8 * n + i] as i8 as f32;
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * sc(is) * q1 as f32;
            y[l + 32] = d * sc(is + 2) * q2 as f32;
            y[l + 64] = d * sc(is + 4) * q3 as f32;
            y[l + 96] = d * sc(is + 6) * q4 as f32;
        }
    }
}

pub(super) fn quantize_q6_k(x: &[f32; QK_K], y: &mut [u8; 210]) {
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for (j, (x, l)) in x
        .chunks_exact(16)
        .zip(levels.chunks_exact_mut(16))
        .enumerate()
    {
        scales[j] = make_qx_quants(32, x, l);
        if scales[j].abs() > max_abs_scale {
            max_abs_scale = scales[j].abs();
            max_scale = scales[j];
        }
    }
    y.fill(0);
    if max_abs_scale < GROUP_MAX_EPS {
        return;
    }
    let iscale = -128.0 / max_scale;
    put_f16(y, 208, 1.0 / iscale);
    for (s, &scale) in y[192..208].iter_mut().zip(&scales) {
        *s = nearest_int(iscale * scale).min(127) as i8 as u8;
    }
    let d_all = f16_at(y, 208);
    for (j, (x, l)) in x
        .chunks_exact(16)
        .zip(levels.chunks_exact_mut(16))
        .enumerate()
    {
        let d = d_all * y[192 + j] as i8 as f32;
        if d == 0.0 {
            continue;
        }
        for (l, &v) in l.iter_mut().zip(x) {
            *l = (nearest_int(v / d).clamp(-32, 31) + 32) as u8;
        }
    }
    let (ql, qh) = y[..192].split_at_mut(128);
    for ((half, ql), qh) in levels
        .chunks_exact(128)
        .zip(ql.chunks_exact_mut(64))
        .zip(qh.chunks_exact_mut(32))
    {
        for l in 0..32 {
            let (a, b, c, e) = (half[l], half[l + 32], half[l + 64], half[l + 96]);
            ql[l] = (a & 0xf) | ((c & 0xf) << 4);
            ql[l + 32] = (b & 0xf) | ((e & 0xf) << 4);
            qh[l] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
        }
    }
}

// ---- q8_K (activations): d (f32), qs[256] (i8), bsums[16] (i16 sums of 16 qs) ---------------

pub(super) fn dequantize_q8_k(b: &[u8; 292], y: &mut [f32; QK_K]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (y, &q) in y.iter_mut().zip(&b[4..260]) {
        *y = d * q as i8 as f32;
    }
}

/// `quantize_row_q8_K_ref`. ggml leaves bsums of an all-zero block unwritten; they are 0 here.
pub(super) fn quantize_q8_k(x: &[f32; QK_K], y: &mut [u8; 292]) {
    y.fill(0);
    let (max, amax) = signed_absmax(x);
    if amax == 0.0 {
        return;
    }
    let iscale = -127.0 / max;
    for (q, &v) in y[4..260].iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let sum: i32 = y[4 + 16 * j..][..16].iter().map(|&q| q as i8 as i32).sum();
        y[260 + 2 * j..][..2].copy_from_slice(&(sum as i16).to_le_bytes());
    }
    y[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}
