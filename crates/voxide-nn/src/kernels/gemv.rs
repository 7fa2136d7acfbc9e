//! Half-precision matrix × few-vectors products: y[m][n] = Σ_k x[m][k] · w[n][k], with w in
//! f16 [n][k] (checkpoint layout), x and y in f32, m ≤ [`MAX_ROWS`].
//!
//! A decoder step is bandwidth-bound: each weight is read once per token, so the kernel
//! streams w exactly once for all m rows, converting with F16C and accumulating with FMA
//! (AVX2), on all threads for large matrices. candle converts f16 weights on every call
//! instead (~25 GB/s against ~33 GB/s of read bandwidth here).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape};
use half::f16;
use rayon::prelude::*;

/// Most rows (tokens × beams) the kernel takes; larger batches go through GEMM.
pub const MAX_ROWS: usize = 8;

/// Below this many weights (2 MB of f16) a matrix is done on one thread: it is cache-resident
/// between tokens and rayon's fork-join costs more than it saves (measured: 384×384 in 8 µs on
/// one thread, 18 µs on two).
const PARALLEL_MIN: usize = 1 << 20;

/// From this many weights (16 MB of f16) reads bypass the caches (non-temporal prefetch).
const STREAM_MIN: usize = 8 << 20;

/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// y (m × n) = x (m × k) · wᵀ (+ bias), w (n × k) in f16.
pub fn gemv_f16(
    x: &[f32],
    w: &[f16],
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    assert!(m <= MAX_ROWS && x.len() == m * k && w.len() == n * k && y.len() == m * n);
    // Tasks own consecutive weight rows and write outputs as [row][m]; for m > 1 that is
    // transposed into y afterwards (m × n is tiny next to the weights).
    // Matrices too big for the cache are streamed past it, so the rest of the step's weights
    // stay cached between tokens.
    let stream = n * k >= STREAM_MIN;
    let compute = |first: usize, out: &mut [f32]| {
        for (r, o) in out.chunks_mut(m).enumerate() {
            dot_rows(x, &w[(first + r) * k..(first + r + 1) * k], o, k, stream);
            if let Some(b) = bias {
                o.iter_mut().for_each(|v| *v += b[first + r]);
            }
        }
    };
    let mut transposed = (m > 1).then(|| vec![0f32; m * n]);
    let out: &mut [f32] = match transposed.as_deref_mut() {
        Some(t) => t,
        None => y,
    };
    if n * k < PARALLEL_MIN || rayon::current_num_threads() == 1 {
        compute(0, out);
    } else {
        out.par_chunks_mut(ROWS_PER_TASK * m)
            .enumerate()
            .for_each(|(t, chunk)| compute(t * ROWS_PER_TASK, chunk));
    }
    if let Some(t) = transposed {
        for (r, row) in t.chunks(m).enumerate() {
            for (i, v) in row.iter().enumerate() {
                y[i * n + r] = *v;
            }
        }
    }
}

/// acc[i] = x[i] · w for each of the m rows of x.
fn dot_rows(x: &[f32], w: &[f16], acc: &mut [f32], k: usize, stream: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && k.is_multiple_of(32) {
            // SAFETY: the feature was detected at run time.
            unsafe {
                if stream {
                    x86::dot_rows_avx512::<true>(x, w, acc, k)
                } else {
                    x86::dot_rows_avx512::<false>(x, w, acc, k)
                }
            };
            return;
        }
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features were detected at run time.
            unsafe { x86::dot_rows_avx2(x, w, acc, k) };
            return;
        }
    }
    for (i, a) in acc.iter_mut().enumerate() {
        let xi = &x[i * k..(i + 1) * k];
        *a = xi.iter().zip(w).map(|(x, w)| x * w.to_f32()).sum();
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;

    /// 32 weights per iteration (two 16-wide conversions), every row of x against them;
    /// `k` must be a multiple of 32.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_rows_avx512<const STREAM: bool>(
        x: &[f32],
        w: &[f16],
        acc: &mut [f32],
        k: usize,
    ) {
        let m = acc.len();
        let mut sums = [[_mm512_setzero_ps(); 2]; super::MAX_ROWS];
        let wp = w.as_ptr() as *const u16;
        let xp = x.as_ptr();
        let mut j = 0;
        while j < k {
            if STREAM {
                // wrapping: near the end the hint points past the slice (a prefetch never faults).
                _mm_prefetch::<_MM_HINT_NTA>(wp.wrapping_add(j + 2048) as *const i8);
            }
            let w0 = _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(j) as *const __m256i));
            let w1 = _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(j + 16) as *const __m256i));
            for (i, s) in sums.iter_mut().enumerate().take(m) {
                let xr = xp.add(i * k + j);
                s[0] = _mm512_fmadd_ps(_mm512_loadu_ps(xr), w0, s[0]);
                s[1] = _mm512_fmadd_ps(_mm512_loadu_ps(xr.add(16)), w1, s[1]);
            }
            j += 32;
        }
        for (i, a) in acc.iter_mut().enumerate() {
            *a = _mm512_reduce_add_ps(_mm512_add_ps(sums[i][0], sums[i][1]));
        }
    }

    /// 16 weights per iteration (two F16C conversions), every row of x against them.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_rows_avx2(x: &[f32], w: &[f16], acc: &mut [f32], k: usize) {
        let m = acc.len();
        let mut sums = [[_mm256_setzero_ps(); 2]; super::MAX_ROWS];
        let wp = w.as_ptr() as *const u16;
        let xp = x.as_ptr();
        let mut j = 0;
        while j + 16 <= k {
            let w0 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(j) as *const __m128i));
            let w1 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(j + 8) as *const __m128i));
            for (i, s) in sums.iter_mut().enumerate().take(m) {
                let xr = xp.add(i * k + j);
                s[0] = _mm256_fmadd_ps(_mm256_loadu_ps(xr), w0, s[0]);
                s[1] = _mm256_fmadd_ps(_mm256_loadu_ps(xr.add(8)), w1, s[1]);
            }
            j += 16;
        }
        for (i, a) in acc.iter_mut().enumerate() {
            let v = _mm256_add_ps(sums[i][0], sums[i][1]);
            let hi = _mm256_extractf128_ps(v, 1);
            let q = _mm_add_ps(_mm256_castps256_ps128(v), hi);
            let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
            let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
            let mut total = _mm_cvtss_f32(q);
            for (jj, wv) in w.iter().enumerate().skip(j) {
                total += *xp.add(i * k + jj) * wv.to_f32();
            }
            *a = total;
        }
    }
}

/// candle op: x (rows, k) f32 × w (n, k) f16 (+ bias (n) f32, as the third operand) →
/// (rows, n) f32.
pub struct GemvF16;

type Operand<'a> = (&'a CpuStorage, &'a Layout);

impl GemvF16 {
    fn run(&self, x: Operand, w: Operand, bias: Option<Operand>) -> Result<(CpuStorage, Shape)> {
        let (m, k) = x.1.shape().dims2()?;
        let (n, k2) = w.1.shape().dims2()?;
        if k != k2 || m > MAX_ROWS {
            candle_core::bail!(
                "gemv-f16: x {:?} and w {:?} do not fit",
                x.1.shape(),
                w.1.shape()
            );
        }
        let (Some((x0, x1)), Some((w0, w1))) = (x.1.contiguous_offsets(), w.1.contiguous_offsets())
        else {
            candle_core::bail!("gemv-f16 needs contiguous inputs");
        };
        let (CpuStorage::F32(xs), CpuStorage::F16(ws)) = (x.0, w.0) else {
            candle_core::bail!("gemv-f16 takes f32 activations and f16 weights");
        };
        let bias = match bias {
            None => None,
            Some((CpuStorage::F32(b), l)) if l.shape().elem_count() == n => {
                match l.contiguous_offsets() {
                    Some((b0, b1)) => Some(&b[b0..b1]),
                    None => candle_core::bail!("gemv-f16 needs a contiguous bias"),
                }
            }
            Some(_) => candle_core::bail!("gemv-f16 takes an f32 bias of {n} values"),
        };
        let mut y = vec![0f32; m * n];
        gemv_f16(&xs[x0..x1], &ws[w0..w1], bias, &mut y, m, k, n);
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }
}

impl CustomOp2 for GemvF16 {
    fn name(&self) -> &'static str {
        "gemv-f16"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }
}

impl CustomOp3 for GemvF16 {
    fn name(&self) -> &'static str {
        "gemv-f16-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), Some((s3, l3)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2000) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// Against an f64 reference on the same f16-rounded weights, for every row count, odd
    /// widths (the scalar tail) and matrices large enough to run on several threads.
    #[test]
    fn matches_the_f32_product() {
        for &(m, k, n) in &[
            (1, 384, 51865),
            (3, 384, 384),
            (5, 1536, 384),
            (8, 37, 70),
            (2, 16, 1),
        ] {
            let x = data(m * k, 1);
            let w: Vec<f16> = data(n * k, 2).into_iter().map(f16::from_f32).collect();
            let mut y = vec![0f32; m * n];
            let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
            gemv_f16(&x, &w, Some(&bias), &mut y, m, k, n);
            for i in 0..m {
                for r in (0..n).step_by(1 + n / 97) {
                    let want: f64 = (0..k)
                        .map(|j| x[i * k + j] as f64 * w[r * k + j].to_f64())
                        .sum::<f64>()
                        + bias[r] as f64;
                    let got = y[i * n + r] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "m{m} k{k} n{n} [{i},{r}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}
