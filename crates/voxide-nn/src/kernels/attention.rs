//! Attention for decoder steps: a few query rows per key/value head against a cache or a
//! cross-attention source, softmax(q·Kᵀ)·V computed directly.
//!
//! At one query per head the product is a matrix-vector walk over K and V; candle runs it
//! through a general GEMM whose per-call set-up and thread hand-offs cost more than the
//! arithmetic (measured ~1/5 of a Whisper-tiny decoder step).

use super::simd::dot;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use half::{bf16, f16};
use rayon::prelude::*;

/// At most this many query rows per head take the kernel.
pub const MAX_QUERY_ROWS: usize = 8;

/// Below this many K/V elements per call, heads run on one thread.
const PARALLEL_MIN: usize = 1 << 16;

/// candle op: q (b, h, rows, d) f32 contiguous, pre-scaled; k, v (b, h, s, d) f32, f16 or bf16 with
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
            (CpuStorage::BF16(k), CpuStorage::BF16(v)) => attend(q, k, kl, v, vl, dims),
            _ => candle_core::bail!("decode-attention takes f32, f16 or bf16 keys and values"),
        };
        Ok((CpuStorage::F32(out), Shape::from((b, h, rows, d))))
    }
}

/// One head's keys and values: the storage and where each row starts.
#[derive(Clone, Copy)]
struct HeadKv<'a, T> {
    k: &'a [T],
    v: &'a [T],
    at: Walk,
}

/// Where row j of one head's keys and values starts.
#[derive(Clone, Copy)]
struct Walk {
    k0: usize,
    k_step: usize,
    v0: usize,
    v_step: usize,
}

impl Walk {
    #[inline(always)]
    fn key(&self, j: usize) -> usize {
        self.k0 + j * self.k_step
    }
    #[inline(always)]
    fn value(&self, j: usize) -> usize {
        self.v0 + j * self.v_step
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

/// Keys and values are stored as f32, or as f16 / bf16 (halving the bytes each step reads).
trait KvElement: Copy + Send + Sync + Sized {
    /// out (rows × d) = softmax(q·Kᵀ)·V for one head; `scores` is scratch of length s.
    fn head(q: &[f32], kv: HeadKv<'_, Self>, dims: Dims, out: &mut [f32], scores: &mut [f32]);
}

/// The per-head loop, written once; `dot` and `axpy` read one key / value row.
#[inline(always)]
fn head_with<T>(
    q: &[f32],
    kv: HeadKv<'_, T>,
    dims: Dims,
    out: &mut [f32],
    scores: &mut [f32],
    dot: impl Fn(&[f32], &[T]) -> f32,
    axpy: impl Fn(f32, &[T], &mut [f32]),
) {
    let Dims { rows, d, .. } = dims;
    for r in 0..rows {
        let qr = &q[r * d..(r + 1) * d];
        for (j, score) in scores.iter_mut().enumerate() {
            *score = dot(qr, &kv.k[kv.at.key(j)..][..d]);
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
            axpy(p * inv, &kv.v[kv.at.value(j)..][..d], o);
        }
    }
}

impl KvElement for f32 {
    fn head(q: &[f32], kv: HeadKv<'_, f32>, dims: Dims, out: &mut [f32], scores: &mut [f32]) {
        head_with(q, kv, dims, out, scores, dot, |p, v, o| {
            for (o, v) in o.iter_mut().zip(v) {
                *o += p * v;
            }
        });
    }
}

/// Half-precision keys and values: the SIMD loop where AVX2/FMA exist, else scalar.
macro_rules! half_kv_element {
    ($t:ty, $simd:ident) => {
        impl KvElement for $t {
            fn head(
                q: &[f32],
                kv: HeadKv<'_, $t>,
                dims: Dims,
                out: &mut [f32],
                scores: &mut [f32],
            ) {
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("f16c")
                {
                    // SAFETY: the features were detected at run time.
                    return unsafe { x86::$simd(q, kv, dims, out, scores) };
                }
                head_with(
                    q,
                    kv,
                    dims,
                    out,
                    scores,
                    |q, k| q.iter().zip(k).map(|(q, k)| q * k.to_f32()).sum(),
                    |p, v, o| {
                        for (o, v) in o.iter_mut().zip(v) {
                            *o += p * v.to_f32();
                        }
                    },
                );
            }
        }
    };
}

half_kv_element!(f16, head_f16);
half_kv_element!(bf16, head_bf16);

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{head_with, Dims, HeadKv};
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    /// The per-head loop compiled with AVX2/FMA, so the row reads inline into it; `load8`
    /// widens 8 stored values to f32 (`d` is a multiple of 8 in every model voxide runs; a
    /// tail is handled anyway).
    #[inline(always)]
    unsafe fn head_simd<T: Copy>(
        q: &[f32],
        kv: HeadKv<'_, T>,
        dims: Dims,
        out: &mut [f32],
        scores: &mut [f32],
        load8: impl Fn(*const u16) -> __m256,
        to_f32: impl Fn(T) -> f32,
    ) {
        let dot = |q: &[f32], k: &[T]| {
            let n = q.len();
            let (qp, kp) = (q.as_ptr(), k.as_ptr() as *const u16);
            let mut acc = _mm256_setzero_ps();
            let mut j = 0;
            while j + 8 <= n {
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(j)), load8(kp.add(j)), acc);
                j += 8;
            }
            let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let mut total = _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
            for jj in j..n {
                total += q[jj] * to_f32(k[jj]);
            }
            total
        };
        let axpy = |p: f32, v: &[T], out: &mut [f32]| {
            let n = out.len();
            let (vp, op) = (v.as_ptr() as *const u16, out.as_mut_ptr());
            let pv = _mm256_set1_ps(p);
            let mut j = 0;
            while j + 8 <= n {
                _mm256_storeu_ps(
                    op.add(j),
                    _mm256_fmadd_ps(pv, load8(vp.add(j)), _mm256_loadu_ps(op.add(j))),
                );
                j += 8;
            }
            for jj in j..n {
                out[jj] += p * to_f32(v[jj]);
            }
        };
        head_with(q, kv, dims, out, scores, dot, axpy);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn head_f16(
        q: &[f32],
        kv: HeadKv<'_, f16>,
        dims: Dims,
        out: &mut [f32],
        scores: &mut [f32],
    ) {
        head_simd(
            q,
            kv,
            dims,
            out,
            scores,
            |p| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
            f16::to_f32,
        )
    }

    /// bf16 is the top half of an f32: widen and shift.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn head_bf16(
        q: &[f32],
        kv: HeadKv<'_, bf16>,
        dims: Dims,
        out: &mut [f32],
        scores: &mut [f32],
    ) {
        head_simd(
            q,
            kv,
            dims,
            out,
            scores,
            |p| {
                let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))
            },
            bf16::to_f32,
        )
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
    let Dims { h, rows, d, s, .. } = dims;
    let mut out = vec![0f32; dims.b * h * rows * d];
    let head = |bh: usize, out: &mut [f32]| {
        let (bi, hi) = (bh / h, bh % h);
        let at = Walk {
            k0: offset(kl, bi, hi, 0),
            k_step: kl.stride()[2],
            v0: offset(vl, bi, hi, 0),
            v_step: vl.stride()[2],
        };
        let mut scores = vec![0f32; s];
        T::head(
            &q[bh * rows * d..(bh + 1) * rows * d],
            HeadKv { k, v, at },
            dims,
            out,
            &mut scores,
        );
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
