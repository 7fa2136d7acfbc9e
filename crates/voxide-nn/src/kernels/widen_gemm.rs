//! Weight products for many rows of x where a GEMM beats the small-M kernel: the weight
//! (narrow, [`WeightMatrix`], or block-quantized, [`super::quant_matmul::QuantMatrix`]) is
//! widened to f32 a block of rows at a time (≤ `BLOCK_BYTES`) and each block's product is
//! written by the `gemm` crate (candle's CPU GEMM) straight into its columns of y.
//!
//! Widening the whole matrix first (what candle's `to_dtype` + matmul does) holds a second,
//! f32 copy of it: 26 MB for a Whisper large-v3-turbo MLP matrix, the encoder's peak memory. A
//! block stays cache-resident between its widening and its product.

use super::convert::to_f32;
use super::gemv::WeightMatrix;
use super::simd::WeightElem;

/// A weight matrix (n × k, the checkpoint's `[out][in]` layout) that can be widened to f32 a
/// range of rows at a time: what [`matmul_widened`] needs of a weight format.
pub trait WidenRows: Sync {
    /// Output features (n).
    fn rows(&self) -> usize;
    /// Input features (k).
    fn cols(&self) -> usize;
    /// Rows r0..r1 as f32 (dequantized), row-major into `out` ((r1 − r0) · k values), on all
    /// threads.
    fn widen(&self, r0: usize, r1: usize, out: &mut [f32]);
}

impl<E: WeightElem> WidenRows for WeightMatrix<'_, E> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn widen(&self, r0: usize, r1: usize, out: &mut [f32]) {
        let k = self.cols;
        let part = WeightMatrix {
            data: &self.data[r0 * k..r1 * k],
            scales: self.scales.map(|s| &s[r0..r1]),
            rows: r1 - r0,
            cols: k,
            residency: self.residency,
        };
        to_f32(&part, out)
    }
}

/// Panics unless x is m × k, y is m × n and the bias (if any) has n values: the contract of
/// the product kernels.
pub(crate) fn check_product(
    x: &[f32],
    y: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) {
    assert!(
        x.len() == m * k && y.len() == m * n,
        "x, y and w do not fit"
    );
    assert!(bias.is_none_or(|b| b.len() == n), "one bias per output");
}

/// Widened weight rows per block (f32 bytes).
const BLOCK_BYTES: usize = 4 << 20;

/// y (m × n) = x (m × k) · wᵀ (+ bias) for any m.
pub fn matmul_widened<W: WidenRows + ?Sized>(
    x: &[f32],
    w: &W,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    let (n, k) = (w.rows(), w.cols());
    check_product(x, y, bias, m, n, k);
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let rows_per_block = (BLOCK_BYTES / (4 * k.max(1))).max(16).min(n);
    let mut block = vec![0f32; rows_per_block * k];
    for r0 in (0..n).step_by(rows_per_block) {
        let nb = rows_per_block.min(n - r0);
        let wb = &mut block[..nb * k];
        w.widen(r0, r0 + nb, wb);
        // SAFETY: dst is y's columns r0..r0 + nb (row stride n) for m rows; lhs is x (m × k,
        // row-major); rhs is the block read as k × nb (element (kk, j) at j·k + kk). All in
        // bounds of their slices.
        unsafe {
            super::gemm_f32(
                (m, nb, k),
                y.as_mut_ptr().add(r0),
                n,
                false,
                x.as_ptr(),
                k,
                wb.as_ptr(),
                (1, k),
                parallelism,
            );
        }
    }
    if let Some(b) = bias {
        for row in y.chunks_mut(n) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemv::tests::{check, data, reference, weights};

    #[test]
    fn matches_the_f64_reference_across_blocks() {
        // k = 4096: 256 rows per 4 MB block, so n = 600 takes three blocks (the last partial).
        for &(k, n, m) in &[(4096usize, 600usize, 3usize), (37, 70, 5), (300, 1, 2)] {
            let tw = weights(n, k, 11);
            let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
            let x = data(m * k, 5);
            let mut y = vec![0f32; m * n];
            matmul_widened(
                &x,
                &WeightMatrix::new(&tw.f16, n, k),
                Some(&bias),
                &mut y,
                m,
            );
            let want = reference(&x, &tw.f16_f32, Some(&bias), m, k);
            check(&y, &want, &x, &tw.f16_f32, m, k, "f16");
            let wi = WeightMatrix::with_scales(&tw.i8, &tw.scales, n, k);
            matmul_widened(&x, &wi, None, &mut y, m);
            let want = reference(&x, &tw.i8_f32, None, m, k);
            check(&y, &want, &x, &tw.i8_f32, m, k, "int8");
        }
    }
}
