//! Attention for decoder steps: a few query rows per key/value head against a cache or a
//! cross-attention source, softmax(q·Kᵀ)·V computed directly.
//!
//! At one query per head the product is a matrix-vector walk over K and V; candle runs it
//! through a general GEMM whose per-call set-up and thread hand-offs cost more than the
//! arithmetic (measured ~1/5 of a Whisper-tiny decoder step).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use half::f16;
use rayon::prelude::*;

/// At most this many query rows per head take the kernel.
pub const MAX_QUERY_ROWS: usize = 8;

/// Below this many K/V elements per call, heads run on one thread.
const PARALLEL_MIN: usize = 1 << 16;

/// candle op: q (b, h, rows, d) f32 contiguous, pre-scaled; k, v (b, h, s, d) f32 or f16 with
/// unit stride along d (cache views allowed) → (b, h, rows, d) f32.
pub struct DecodeAttention;

/// Element offset of (b, h, j, 0) in a 4-D layout.
fn offset(l: &Layout, b: usize, h: usize, j: usize) -> usize {
    let st = l.stride();
    l.start_offset() + b * st[0] + h * st[1] + j * st[2]
}

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "decode-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, h, rows, d) = ql.shape().dims4()?;
        let (kb, kh, s, kd) = kl.shape().dims4()?;
        if (kb, kh, kd) != (b, h, d) || vl.shape() != kl.shape() || rows > MAX_QUERY_ROWS {
            candle_core::bail!(
                "decode-attention: q {:?}, k {:?}, v {:?}",
                ql.shape(),
                kl.shape(),
                vl.shape()
            );
        }
        if kl.stride()[3] != 1 || vl.stride()[3] != 1 || !ql.is_contiguous() {
            candle_core::bail!("decode-attention needs unit stride along the head dimension");
        }
        let CpuStorage::F32(q) = qs else {
            candle_core::bail!("decode-attention takes f32 queries");
        };
        let q = &q[ql.start_offset()..];
        let dims = Dims { b, h, rows, d, s };
        let out = match (ks, vs) {
            (CpuStorage::F32(k), CpuStorage::F32(v)) => attend(q, k, kl, v, vl, dims),
            (CpuStorage::F16(k), CpuStorage::F16(v)) => attend(q, k, kl, v, vl, dims),
            _ => candle_core::bail!("decode-attention takes f32 or f16 keys and values"),
        };
        Ok((CpuStorage::F32(out), Shape::from((b, h, rows, d))))
    }
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    rows: usize,
    d: usize,
    s: usize,
}

/// Keys and values are stored as f32, or as f16 (halving the bytes each step reads).
trait KvElement: Copy + Send + Sync {
    /// q · k.
    fn dot(q: &[f32], k: &[Self]) -> f32;
    /// out += p · v.
    fn axpy(p: f32, v: &[Self], out: &mut [f32]);
}

impl KvElement for f32 {
    fn dot(q: &[f32], k: &[f32]) -> f32 {
        dot(q, k)
    }
    fn axpy(p: f32, v: &[f32], out: &mut [f32]) {
        for (o, v) in out.iter_mut().zip(v) {
            *o += p * v;
        }
    }
}

impl KvElement for f16 {
    fn dot(q: &[f32], k: &[f16]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if has_f16c() {
            // SAFETY: the features were detected at run time.
            return unsafe { x86::dot_f16(q, k) };
        }
        q.iter().zip(k).map(|(q, k)| q * k.to_f32()).sum()
    }
    fn axpy(p: f32, v: &[f16], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_f16c() {
            // SAFETY: the features were detected at run time.
            return unsafe { x86::axpy_f16(p, v, out) };
        }
        for (o, v) in out.iter_mut().zip(v) {
            *o += p * v.to_f32();
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn has_f16c() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(q: &[f32], k: &[f16]) -> f32 {
        let n = q.len().min(k.len());
        let (qp, kp) = (q.as_ptr(), k.as_ptr() as *const u16);
        let mut acc = _mm256_setzero_ps();
        let mut j = 0;
        while j + 8 <= n {
            let kv = _mm256_cvtph_ps(_mm_loadu_si128(kp.add(j) as *const __m128i));
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(j)), kv, acc);
            j += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let mut total: f32 = lanes.iter().sum();
        for jj in j..n {
            total += q[jj] * k[jj].to_f32();
        }
        total
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy_f16(p: f32, v: &[f16], out: &mut [f32]) {
        let n = out.len().min(v.len());
        let (vp, op) = (v.as_ptr() as *const u16, out.as_mut_ptr());
        let pv = _mm256_set1_ps(p);
        let mut j = 0;
        while j + 8 <= n {
            let vv = _mm256_cvtph_ps(_mm_loadu_si128(vp.add(j) as *const __m128i));
            _mm256_storeu_ps(
                op.add(j),
                _mm256_fmadd_ps(pv, vv, _mm256_loadu_ps(op.add(j))),
            );
            j += 8;
        }
        for jj in j..n {
            out[jj] += p * v[jj].to_f32();
        }
    }
}

/// softmax(q·Kᵀ)·V for every (batch, head), heads in parallel when the walk is long.
fn attend<T: KvElement>(
    q: &[f32],
    k: &[T],
    kl: &Layout,
    v: &[T],
    vl: &Layout,
    dims: Dims,
) -> Vec<f32> {
    let Dims {
        b: _,
        h,
        rows,
        d,
        s,
    } = dims;
    let mut out = vec![0f32; dims.b * h * rows * d];
    let head = |bh: usize, out: &mut [f32]| {
        let (bi, hi) = (bh / h, bh % h);
        let mut scores = vec![0f32; s];
        for r in 0..rows {
            let qr = &q[(bh * rows + r) * d..][..d];
            for (j, score) in scores.iter_mut().enumerate() {
                *score = T::dot(qr, &k[offset(kl, bi, hi, j)..][..d]);
            }
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for x in scores.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            let inv = 1.0 / sum;
            let o = &mut out[r * d..(r + 1) * d];
            for (j, p) in scores.iter().enumerate() {
                T::axpy(p * inv, &v[offset(vl, bi, hi, j)..][..d], o);
            }
        }
    };
    if dims.b * h * s * d < PARALLEL_MIN {
        out.chunks_mut(rows * d)
            .enumerate()
            .for_each(|(bh, o)| head(bh, o));
    } else {
        out.par_chunks_mut(rows * d)
            .enumerate()
            .for_each(|(bh, o)| head(bh, o));
    }
    out
}

/// Dot product in 8 lanes (auto-vectorised).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
