//! The small-M product for int8 weights on CPUs with AVX-512 VNNI (Zen 4 and 5, Intel from Ice
//! Lake): x is quantized to int16 per block of [`X_BLOCK`] values, as the int8 GEMV does
//! ([`super::gemv_int8`]: ~15 bits of each block's largest |x|, far finer than the weights'
//! 8), and each block's products sum exactly in int32 by `vpdpwssd`, 32 multiply-adds per
//! instruction where the f32 path ([`super::small_m`]) widens the weights and runs 16 per FMA;
//! once per block the sums meet x's scales in f32:
//! y[i][r] = scale_r · Σ_b d[i][b] · Σ_{j∈b} q[i][j] · w[r][j].
//!
//! The register blocking is [`super::small_m`]'s: panels of 2 × 16 rows of x, now as int16
//! pairs (x[i][2j], x[i][2j + 1]) per 32-bit lane, against strips of 6 weight rows widened to
//! int16 in L1, one broadcast pair per row: 12 int32 and 12 f32 accumulators.

use super::gemv::{OutPtr, WeightMatrix};
use super::gemv_int8::{QuantizedX, X_BLOCK};
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Rows of x per panel: 2 vectors of 16 int32 lanes.
const WIDTH: usize = 32;

/// Output rows per parallel task (a multiple of [`W_ROWS`]).
const ROWS_PER_TASK: usize = 48;

/// Weight rows per micro-kernel call.
const W_ROWS: usize = 6;

/// Widest column block, a multiple of [`X_BLOCK`] (a strip of 6 × 512 int16, 6 KB, in L1).
const MAX_BLOCK: usize = 512;

/// Rows of x quantized and packed at a time.
const PASS_ROWS: usize = 256;

/// Rows of x per chunk: a column block of the chunk's panels (128 × 512 int16, 128 KB) stays
/// in L2 while every strip of the task passes over it.
const M_CHUNK: usize = 128;

/// Below this many multiply-adds the product runs on one thread.
const PARALLEL_MIN_MACS: usize = 1 << 21;

/// Whether this CPU runs the integer small-M product.
pub fn available() -> bool {
    super::simd::Isa::Avx512.is_available()
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vnni")
}

/// x quantized and packed for the micro-kernel, `PASS_ROWS` rows at most.
struct Panels {
    /// `[panel][pair][lane]`: two int16 codes of x per 32-bit lane, zero past the last row
    /// and (k odd) in the last pair's upper half.
    codes: Vec<i16>,
    /// `[panel][block][lane]`: the scale of each row's block, zero past the last row.
    scales: Vec<f32>,
}

impl Panels {
    fn pack(x: &[f32], m: usize, k: usize) -> Self {
        let (pairs, blocks) = (k.div_ceil(2), k.div_ceil(X_BLOCK));
        let panels = m.div_ceil(WIDTH);
        let q = QuantizedX::new(x, m, k);
        let mut codes = vec![0i16; panels * pairs * WIDTH * 2];
        let mut scales = vec![0f32; panels * blocks * WIDTH];
        for i in 0..m {
            let (p, l) = (i / WIDTH, i % WIDTH);
            let row = &q.codes()[i * k..][..k];
            for (j, &c) in row.iter().enumerate() {
                codes[((p * pairs + j / 2) * WIDTH + l) * 2 + j % 2] = c;
            }
            for b in 0..blocks {
                scales[(p * blocks + b) * WIDTH + l] = q.scales()[i * blocks + b];
            }
        }
        q.recycle();
        Self { codes, scales }
    }
}

/// y (m × n) = x (m × k) · wᵀ (+ bias) for int8 `w` with its row scales; the caller checked
/// the operands and [`available`].
pub(crate) fn matmul(
    x: &[f32],
    w: &WeightMatrix<i8>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    let (n, k) = (w.rows, w.cols);
    let block = k.min(MAX_BLOCK);
    for (xs, ys) in x[..m * k]
        .chunks(PASS_ROWS * k)
        .zip(y.chunks_mut(PASS_ROWS * n))
    {
        let rows = xs.len() / k;
        let panels = Panels::pack(xs, rows, k);
        let out = OutPtr(ys.as_mut_ptr());
        let tile = |t: usize, scratch: &mut Scratch| {
            let (r0, r1) = (t * ROWS_PER_TASK, ((t + 1) * ROWS_PER_TASK).min(n));
            // SAFETY: `available` was checked by the caller; the buffers fit (asserted in the
            // task).
            unsafe { task(&panels, *w, bias, out, rows, r0, r1, block, scratch) };
        };
        let scratch = || Scratch {
            strip: vec![0i16; W_ROWS * block.next_multiple_of(2)],
            tile: vec![0f32; ROWS_PER_TASK * M_CHUNK],
        };
        let tiles = n.div_ceil(ROWS_PER_TASK);
        if rows * n * k < PARALLEL_MIN_MACS || rayon::current_num_threads() == 1 {
            let mut s = scratch();
            (0..tiles).for_each(|t| tile(t, &mut s));
        } else {
            (0..tiles)
                .into_par_iter()
                .for_each_init(scratch, |s, t| tile(t, s));
        }
    }
}

/// A task's working memory, reused across the tasks a thread runs.
struct Scratch {
    /// [`W_ROWS`] weight rows of one column block, widened to int16 (an even count per row).
    strip: Vec<i16>,
    /// The task's output for one chunk of x rows, `[panel][row][WIDTH]`.
    tile: Vec<f32>,
}

/// Output rows r0..r1 for all m rows of x.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn task(
    panels: &Panels,
    w: WeightMatrix<i8>,
    bias: Option<&[f32]>,
    y: OutPtr,
    m: usize,
    r0: usize,
    r1: usize,
    block: usize,
    scratch: &mut Scratch,
) {
    let (n, k) = (w.rows, w.cols);
    let (pairs, blocks) = (k.div_ceil(2), k.div_ceil(X_BLOCK));
    let row_scales = w.scales.expect("int8 weights carry row scales");
    let rows = r1 - r0;
    let stride = block.next_multiple_of(2);
    assert!(
        scratch.strip.len() >= W_ROWS * stride
            && scratch.tile.len() >= rows * M_CHUNK
            && panels.codes.len() >= m.div_ceil(WIDTH) * pairs * WIDTH * 2
            && panels.scales.len() >= m.div_ceil(WIDTH) * blocks * WIDTH
    );
    let (strip, tile) = (scratch.strip.as_mut_ptr(), scratch.tile.as_mut_ptr());
    let mut m0 = 0;
    while m0 < m {
        let m1 = (m0 + M_CHUNK).min(m);
        let panels_here = (m1 - m0).div_ceil(WIDTH);
        std::ptr::write_bytes(tile, 0, panels_here * rows * WIDTH);
        let mut c0 = 0;
        while c0 < k {
            let len = block.min(k - c0);
            let mut rs = 0;
            while rs < rows {
                let strip_rows = W_ROWS.min(rows - rs);
                for t in 0..strip_rows {
                    let src = w.data.as_ptr().add((r0 + rs + t) * k + c0);
                    let dst = strip.add(t * stride);
                    let mut j = 0;
                    while j + 32 <= len {
                        let v = _mm512_cvtepi8_epi16(_mm256_loadu_si256(src.add(j) as *const _));
                        _mm512_storeu_si512(dst.add(j) as *mut _, v);
                        j += 32;
                    }
                    for jj in j..stride {
                        *dst.add(jj) = if jj < len { *src.add(jj) as i16 } else { 0 };
                    }
                }
                // The next strip's weights arrive while this one multiplies (as in small_m).
                let (next_r, next_c0) = if rs + W_ROWS < rows {
                    (r0 + rs + W_ROWS, c0)
                } else {
                    (r0, c0 + len)
                };
                if next_c0 < k {
                    let next_len = block.min(k - next_c0);
                    for r in next_r..(next_r + W_ROWS).min(r1) {
                        let row = w.data.as_ptr().add(r * k + next_c0);
                        for b in (0..next_len).step_by(64) {
                            _mm_prefetch::<_MM_HINT_T0>(row.add(b));
                        }
                    }
                }
                for p in 0..panels_here {
                    let panel = (m0 / WIDTH) + p;
                    let xp = panels
                        .codes
                        .as_ptr()
                        .add(((panel * pairs + c0 / 2) * WIDTH) * 2)
                        as *const i32;
                    let sp = panels
                        .scales
                        .as_ptr()
                        .add((panel * blocks + c0 / X_BLOCK) * WIDTH);
                    let yp = tile.add((p * rows + rs) * WIDTH);
                    let vecs = if m1 - (m0 + p * WIDTH) > 16 { 2 } else { 1 };
                    let wp = strip as *const i32;
                    let pair_len = len.div_ceil(2);
                    macro_rules! micro {
                        ($($rows:literal, $vecs:literal);*) => {
                            match (strip_rows, vecs) {
                                $(($rows, $vecs) => micro::<$rows, $vecs>(xp, sp, wp, stride / 2, pair_len, yp),)*
                                _ => unreachable!(),
                            }
                        };
                    }
                    micro!(1, 1; 2, 1; 3, 1; 4, 1; 5, 1; 6, 1; 1, 2; 2, 2; 3, 2; 4, 2; 5, 2; 6, 2);
                }
                rs += strip_rows;
            }
            c0 += len;
        }
        // The chunk's results, transposed into y once, with the weights' row scales.
        for i in m0..m1 {
            let (p, l) = ((i - m0) / WIDTH, (i - m0) % WIDTH);
            for t in 0..rows {
                let r = r0 + t;
                *y.0.add(i * n + r) = *tile.add((p * rows + t) * WIDTH + l) * row_scales[r]
                    + bias.map_or(0.0, |b| b[r]);
            }
        }
        m0 = m1;
    }
}

/// yp[t][i] += Σ_b d[i][b] · Σ_{pairs of b} x[i]·w[t] for the VECS × 16 rows of one panel
/// (pair column jp at `xp + jp · WIDTH`, block scales at `sp + b · WIDTH`) and ROWS widened
/// weight rows (pair stride `w_stride`), over `pair_len` pairs starting at an x block's start.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn micro<const ROWS: usize, const VECS: usize>(
    xp: *const i32,
    sp: *const f32,
    wp: *const i32,
    w_stride: usize,
    pair_len: usize,
    yp: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); VECS]; ROWS];
    let mut jp0 = 0;
    let mut b = 0;
    while jp0 < pair_len {
        let jp1 = (jp0 + X_BLOCK / 2).min(pair_len);
        let mut sums = [[_mm512_setzero_si512(); VECS]; ROWS];
        for jp in jp0..jp1 {
            let mut xv = [_mm512_setzero_si512(); VECS];
            for (v, x) in xv.iter_mut().enumerate() {
                *x = _mm512_loadu_si512(xp.add(jp * WIDTH + v * 16) as *const _);
            }
            for (t, s) in sums.iter_mut().enumerate() {
                let wv = _mm512_set1_epi32(*wp.add(t * w_stride + jp));
                for v in 0..VECS {
                    s[v] = _mm512_dpwssd_epi32(s[v], xv[v], wv);
                }
            }
        }
        for v in 0..VECS {
            let d = _mm512_loadu_ps(sp.add(b * WIDTH + v * 16));
            for t in 0..ROWS {
                acc[t][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[t][v]), d, acc[t][v]);
            }
        }
        jp0 = jp1;
        b += 1;
    }
    for (t, a) in acc.iter().enumerate() {
        for (v, &a) in a.iter().enumerate() {
            let out = yp.add(t * WIDTH + v * 16);
            _mm512_storeu_ps(out, _mm512_add_ps(_mm512_loadu_ps(out), a));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemv::tests::{check_quantized_x, data, reference, weights};

    /// Against the product of the unquantized x, within what x's rounding allows: odd and
    /// short widths, widths across x blocks and column blocks, rows around the panels, chunks
    /// and passes, tiles around the strips, on 2 threads.
    #[test]
    fn error_is_bounded_by_the_rounding_of_x() {
        if !available() {
            eprintln!("no AVX-512 VNNI: the integer small-M path does not run here");
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let shapes = [
            (37, 70, &[1usize, 16, 17, 33, 130, 300][..]),
            (16, 3, &[1, 17, 300]),
            (1031, 20, &[9, 130, 300]),
            (5000, 131, &[17, 39, 64]),
            (1031, 517, &[9, 39, 64]),
            (X_BLOCK, 49, &[32, 129]),
        ];
        for &(k, n, ms) in &shapes {
            let tw = weights(n, k, 11);
            let bias: Vec<f32> = (0..n).map(|i| 0.5 - i as f32 * 0.01).collect();
            for &m in ms {
                let mut x = data(m * k, 100 + m as u32);
                x[k / 2] = -250.0; // an outlier in one block of row 0
                let want = reference(&x, &tw.i8_f32, Some(&bias), m, k);
                let w = WeightMatrix::with_scales(&tw.i8, &tw.scales, n, k);
                let mut y = vec![0f32; m * n];
                pool.install(|| matmul(&x, &w, Some(&bias), &mut y, m));
                check_quantized_x(&y, &want, &x, &tw.i8_f32, m, k, &format!("m{m} k{k} n{n}"));
            }
        }
    }

    #[test]
    fn a_nan_or_infinite_x_reaches_only_its_row() {
        if !available() {
            return;
        }
        let (m, n, k) = (40, 13, 300);
        let tw = weights(n, k, 2);
        let w = WeightMatrix::with_scales(&tw.i8, &tw.scales, n, k);
        for bad in [f32::NAN, f32::INFINITY] {
            let mut x = data(m * k, 1);
            x[33 * k + 7] = bad;
            let mut y = vec![0f32; m * n];
            matmul(&x, &w, None, &mut y, m);
            for (i, row) in y.chunks(n).enumerate() {
                if i == 33 {
                    assert!(row.iter().all(|v| v.is_nan()), "row 33 has {bad}");
                } else {
                    assert!(row.iter().all(|v| v.is_finite()), "row {i} is clean");
                }
            }
        }
    }
}
