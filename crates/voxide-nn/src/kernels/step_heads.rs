//! A decoder step's queries, keys and values, taken from the stacked q/k/v projection of one
//! position: the per-head q/k RMSNorm where the model has one (Qwen3) and RoPE, in one pass
//! over the row, in place ([`StepHeads`]), and the new key and value written straight into
//! the KV cache's buffers in the cache's dtype ([`WriteHeads`]).
//!
//! The general path of [`crate::Attention`] takes about fifteen candle operations for this per
//! layer and step (three narrows and head transposes, two norms, two rotations, each with its
//! cos/sin narrows and a rayon loop over the heads, two conversions and two slice copies),
//! each with its own allocation; these take none. The arithmetic here is the same, in the same order (candle's
//! rotation formulas, [`super::ops::RmsNormOp`]'s row), so both paths give the same bits.

use super::ops::{contiguous_f32, contiguous_f32_mut, rms_norm_row};
use super::simd::Isa;
use crate::rope::RopeLayout;
use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result};
use half::slice::HalfFloatSliceExt;

/// Qwen3's per-head norms of queries and keys: their weights (`[head_dim]` each, the query's
/// carrying the softmax scale) and epsilon.
#[derive(Clone, Copy, Debug)]
pub struct QkNorm<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub eps: f32,
}

/// candle in-place op on the stacked projection of one position, qkv (1, [q; k; v]) f32 (a
/// fresh product, owned by the step), with the cos and sin of its position (1, head_dim / 2)
/// each: every query and key head normed (with `qk_norm`) and rotated, the values left.
#[derive(Clone, Copy, Debug)]
pub struct StepHeads<'a> {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub layout: RopeLayout,
    pub qk_norm: Option<QkNorm<'a>>,
}

/// Widest head the step kernels take (Voxtral's and Qwen3's are 128 wide).
pub const MAX_HEAD_DIM: usize = 256;

impl StepHeads<'_> {
    /// The same heads, normed by `qk_norm`.
    pub fn with_norm(self, qk_norm: QkNorm<'_>) -> StepHeads<'_> {
        StepHeads {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            layout: self.layout,
            qk_norm: Some(qk_norm),
        }
    }

    /// One head in place: normed with `norm` (its weights), then rotated by (cos, sin).
    fn head(&self, isa: Isa, y: &mut [f32], norm: Option<(&[f32], f32)>, cos: &[f32], sin: &[f32]) {
        if let Some((alpha, eps)) = norm {
            let mut x = [0f32; MAX_HEAD_DIM];
            x[..y.len()].copy_from_slice(y);
            rms_norm_row(isa, &x[..y.len()], alpha, eps, y);
        }
        let half = y.len() / 2;
        for i in 0..half {
            let (p, q) = match self.layout {
                RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                RopeLayout::RotateHalf => (i, i + half),
            };
            // candle's rope / rope_i, term for term.
            let (a, b) = (y[p], y[q]);
            y[p] = a * cos[i] - b * sin[i];
            y[q] = a * sin[i] + b * cos[i];
        }
    }
}

impl InplaceOp3 for StepHeads<'_> {
    fn name(&self) -> &'static str {
        "step-heads"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        const NAME: &str = "step-heads";
        let d = self.head_dim;
        let (q_dim, kv_dim) = (self.heads * d, self.kv_heads * d);
        let qkv = contiguous_f32_mut(NAME, s1, l1)?;
        let (cos, sin) = (contiguous_f32(NAME, s2, l2)?, contiguous_f32(NAME, s3, l3)?);
        if qkv.len() != q_dim + 2 * kv_dim
            || cos.len() != d / 2
            || sin.len() != d / 2
            || d % 2 == 1
            || d > MAX_HEAD_DIM
            || self
                .qk_norm
                .is_some_and(|n| n.q.len() != d || n.k.len() != d)
        {
            candle_core::bail!(
                "{NAME}: {} values, cos/sin {} / {}, for {} + 2 × {} heads of {d}",
                qkv.len(),
                cos.len(),
                sin.len(),
                self.heads,
                self.kv_heads
            );
        }
        let isa = Isa::detect();
        let (q, kv) = qkv.split_at_mut(q_dim);
        for head in q.chunks_exact_mut(d) {
            self.head(isa, head, self.qk_norm.map(|n| (n.q, n.eps)), cos, sin);
        }
        for head in kv[..kv_dim].chunks_exact_mut(d) {
            self.head(isa, head, self.qk_norm.map(|n| (n.k, n.eps)), cos, sin);
        }
        Ok(())
    }
}

/// candle in-place op on a KV cache buffer (1, kv_heads, capacity, head_dim), f32, f16 or bf16
/// with unit stride along the head: writes the heads of one position, found in a
/// row prepared by [`StepHeads`] from value `column` on, at position `at`.
#[derive(Clone, Copy, Debug)]
pub struct WriteHeads {
    pub column: usize,
    pub at: usize,
}

impl InplaceOp2 for WriteHeads {
    fn name(&self) -> &'static str {
        "write-heads"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        const NAME: &str = "write-heads";
        let (b, heads, capacity, d) = l1.shape().dims4()?;
        let src = contiguous_f32(NAME, s2, l2)?;
        if b != 1
            || self.at >= capacity
            || l1.stride()[3] != 1
            || src.len() < self.column + heads * d
        {
            candle_core::bail!(
                "{NAME}: buffer {:?} at {}, {} source values from {}",
                l1.shape(),
                self.at,
                src.len(),
                self.column
            );
        }
        let src = &src[self.column..self.column + heads * d];
        let start = |h: usize| l1.start_offset() + h * l1.stride()[1] + self.at * l1.stride()[2];
        for (h, src) in src.chunks_exact(d).enumerate() {
            let at = start(h);
            match s1 {
                CpuStorage::F32(dst) => dst[at..at + d].copy_from_slice(src),
                CpuStorage::F16(dst) => dst[at..at + d].convert_from_f32_slice(src),
                CpuStorage::BF16(dst) => dst[at..at + d].convert_from_f32_slice(src),
                _ => candle_core::bail!("{NAME}: takes an f32, f16 or bf16 cache"),
            }
        }
        Ok(())
    }
}
