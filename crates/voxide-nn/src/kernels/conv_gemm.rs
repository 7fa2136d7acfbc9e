//! 1-D convolution (one group) as one GEMM per kernel tap, accumulated in place:
//! y (O × T) = bias + Σₖ Wₖ (O × C) · x[:, k·d + s·t] (C × T, a strided view of the input);
//! depthwise (one group per channel) as one multiply-add per tap and channel row; transposed
//! (causal, streaming) as one GEMM per output phase.
//!
//! candle's CPU convolution copies the input into an im2col matrix K times its size, multiplies,
//! and transposes the product back to channels-first; here each tap reads a strided window of
//! the input in place and the product lands in channels-first order. Codec decoders run
//! millions of such output samples per second of audio. candle runs a depthwise convolution
//! as one convolution per group: ~80 ms for Qwen3-TTS's 1024-channel ConvNeXt on one frame.

use super::ops::{add_scalar_row, contiguous_f32, snake_row};
use super::simd::Isa;
use super::{gemm_f32, gemm_parallelism};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape};

/// candle op over a contiguous f32 (batch, C, L) input.
#[derive(Clone, Copy, Debug)]
pub struct ConvTaps<'a> {
    /// Kernel taps, tap-major: `taps[k][o][c]` = weight[o][c][k].
    pub taps: &'a [f32],
    pub bias: &'a [f32],
    pub out_channels: usize,
    pub in_channels: usize,
    /// 1, or `in_channels` = `out_channels` (depthwise: taps `[K][C]`, one per channel).
    pub groups: usize,
    pub kernel: usize,
    pub dilation: usize,
    pub stride: usize,
    /// Zeros on both sides of the input.
    pub padding: usize,
}

impl ConvTaps<'_> {
    /// weight [O, C, K] (row-major) → tap-major [K, O, C].
    pub fn taps_of(
        weight: &[f32],
        out_channels: usize,
        in_channels: usize,
        kernel: usize,
    ) -> Vec<f32> {
        let mut taps = vec![0f32; weight.len()];
        for o in 0..out_channels {
            for c in 0..in_channels {
                for k in 0..kernel {
                    taps[(k * out_channels + o) * in_channels + c] =
                        weight[(o * in_channels + c) * kernel + k];
                }
            }
        }
        taps
    }
}

impl CustomOp1 for ConvTaps<'_> {
    fn name(&self) -> &'static str {
        "conv1d-taps"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let v = contiguous_f32("conv1d-taps", s, l)?;
        let (batch, c, unpadded) = l.shape().dims3()?;
        let (o, k, d, stride, pad) = (
            self.out_channels,
            self.kernel,
            self.dilation,
            self.stride.max(1),
            self.padding,
        );
        let depthwise = self.groups != 1;
        if c != self.in_channels
            || self.taps.len() != k * o * c / self.groups
            || self.bias.len() != o
            || (depthwise && (self.groups != c || o != c))
        {
            candle_core::bail!("conv1d-taps: shapes do not match the kernel");
        }
        let field = (k - 1) * d + 1;
        let len = unpadded + 2 * pad;
        let t = if len >= field {
            (len - field) / stride + 1
        } else {
            0
        };
        // Padding: one zero-bordered copy of the input (not a K-fold im2col matrix).
        let padded;
        let x = if pad == 0 {
            v
        } else {
            let mut p = vec![0f32; batch * c * len];
            for (dst, src) in p.chunks_mut(len).zip(v.chunks(unpadded)) {
                dst[pad..pad + unpadded].copy_from_slice(src);
            }
            padded = p;
            &padded[..]
        };
        let mut y = vec![0f32; batch * o * t];
        if t > 0 && depthwise {
            let row = |(r, yr): (usize, &mut [f32])| {
                let ch = r % c;
                let xr = &x[r * len..(r + 1) * len];
                yr.fill(self.bias[ch]);
                for tap in 0..k {
                    let w = self.taps[tap * c + ch];
                    let xs = &xr[tap * d..];
                    if stride == 1 {
                        for (yv, &xv) in yr.iter_mut().zip(xs) {
                            *yv += w * xv;
                        }
                    } else {
                        for (yv, &xv) in yr.iter_mut().zip(xs.iter().step_by(stride)) {
                            *yv += w * xv;
                        }
                    }
                }
            };
            if batch * c * t * k >= 1 << 18 {
                use rayon::prelude::*;
                y.par_chunks_mut(t).enumerate().for_each(row);
            } else {
                y.chunks_mut(t).enumerate().for_each(row);
            }
        } else if t > 0 {
            let parallelism = gemm_parallelism(o * c * t);
            for (yb, xb) in y.chunks_mut(o * t).zip(x.chunks(c * len)) {
                for (row, &b) in yb.chunks_mut(t).zip(self.bias) {
                    row.fill(b);
                }
                for tap in 0..k {
                    let w = &self.taps[tap * o * c..(tap + 1) * o * c];
                    // SAFETY: dst is yb (o × t, row stride t); lhs is the tap (o × c, row
                    // stride c); rhs is xb's columns tap·d + stride·j (j < t) of each of its c
                    // rows (row stride len), in bounds since the last one is
                    // (k − 1)·d + stride·(t − 1) ≤ len − 1.
                    unsafe {
                        gemm_f32(
                            (o, t, c),
                            yb.as_mut_ptr(),
                            t,
                            true,
                            w.as_ptr(),
                            c,
                            xb.as_ptr().add(tap * d),
                            (len, stride),
                            parallelism,
                        );
                    }
                }
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((batch, o, t))))
    }
}

/// One step of a causal transposed convolution (stride s, weight [C, O, K]) over a stream.
///
/// Tap k = q·s + r sends input frame j to output (j + q)·s + r. Per phase r, one GEMM of the
/// phase's taps stacked (blocks·O × C, blocks = ⌈K / s⌉) by x (C × t) gives every
/// contribution to the outputs ≡ r mod s in a contiguous scratch, and one pass adds them into
/// y (was: one GEMM into a (t, taps · O) buffer, then a shuffle, pad and add per block of taps;
/// then one GEMM per tap written through a strided view of y, which ran at half the GEMM rate).
/// Outputs past t·s go to the tail, which the next step adds to its first outputs.
#[derive(Clone, Copy, Debug)]
pub struct TransposedConvTaps<'a> {
    /// Kernel taps, phase-major: `taps[r][q][o][c]` = weight[c][o][q·s + r] (zero past the
    /// kernel), see [`Self::taps_of`].
    pub taps: &'a [f32],
    pub bias: &'a [f32],
    pub out_channels: usize,
    pub in_channels: usize,
    pub kernel: usize,
    pub stride: usize,
}

impl TransposedConvTaps<'_> {
    /// weight [C, O, K] (row-major) → phase-major [s, ⌈K / s⌉, O, C], zero-padded.
    pub fn taps_of(
        weight: &[f32],
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
    ) -> Vec<f32> {
        let blocks = kernel.div_ceil(stride);
        let mut taps = vec![0f32; stride * blocks * out_channels * in_channels];
        for c in 0..in_channels {
            for o in 0..out_channels {
                for k in 0..kernel {
                    let (q, r) = (k / stride, k % stride);
                    taps[((r * blocks + q) * out_channels + o) * in_channels + c] =
                        weight[(c * out_channels + o) * kernel + k];
                }
            }
        }
        taps
    }

    fn blocks(&self) -> usize {
        self.kernel.div_ceil(self.stride)
    }

    /// Outputs one step hands to the next: (⌈K / s⌉ − 1) · s.
    pub fn overlap(&self) -> usize {
        (self.blocks() - 1) * self.stride
    }

    /// x (C × t, row-major) → y (O × t·s) = bias + the tail's share + this step's. `tail`
    /// (O × [`Self::overlap`]) comes in with the previous step's overflow and leaves with this
    /// one's (zeros for a fresh stream).
    pub fn push(&self, x: &[f32], t: usize, tail: &mut [f32], y: &mut [f32]) {
        use rayon::prelude::*;
        let (o, c, s, blocks) = (
            self.out_channels,
            self.in_channels,
            self.stride,
            self.blocks(),
        );
        let (len, overlap) = (t * s, self.overlap());
        assert!(x.len() == c * t && y.len() == o * len && tail.len() == o * overlap);
        assert_eq!(self.taps.len(), s * blocks * o * c);
        if len == 0 {
            return;
        }
        for (row, &b) in y.chunks_mut(len).zip(self.bias) {
            row.fill(b);
        }
        if overlap > 0 {
            // The old tail's first outputs are y's; the rest stays in the tail, moved left.
            let n = overlap.min(len);
            for (yr, tr) in y.chunks_mut(len).zip(tail.chunks_mut(overlap)) {
                for (a, b) in yr.iter_mut().zip(&tr[..n]) {
                    *a += b;
                }
                tr.copy_within(n.., 0);
                tr[overlap - n..].fill(0.0);
            }
        }
        let parallelism = gemm_parallelism(blocks * o * c * t);
        let mut z = vec![0f32; blocks * o * t];
        for r in 0..s {
            let w = &self.taps[r * blocks * o * c..(r + 1) * blocks * o * c];
            // SAFETY: dst is z (blocks·o × t, row stride t); lhs is the phase's taps
            // (blocks·o × c, row stride c); rhs is x (c × t, row stride t).
            unsafe {
                gemm_f32(
                    (blocks * o, t, c),
                    z.as_mut_ptr(),
                    t,
                    false,
                    w.as_ptr(),
                    c,
                    x.as_ptr(),
                    (t, 1),
                    parallelism,
                );
            }
            // z[q][o][j] lands at output (j + q)·s + r: in y, or past it in the tail.
            let add = |(channel, (yr, tr)): (usize, (&mut [f32], &mut [f32]))| {
                for q in 0..blocks {
                    let zr = &z[(q * o + channel) * t..(q * o + channel + 1) * t];
                    let inside = t.saturating_sub(q);
                    if inside > 0 {
                        let outputs = yr[q * s + r..].iter_mut().step_by(s);
                        for (yv, &zv) in outputs.zip(&zr[..inside]) {
                            *yv += zv;
                        }
                    }
                    for (j, &zv) in zr.iter().enumerate().skip(inside) {
                        tr[(j + q) * s + r - len] += zv;
                    }
                }
            };
            if overlap == 0 {
                y.par_chunks_mut(len)
                    .enumerate()
                    .with_min_len(8)
                    .for_each(|(ch, yr)| add((ch, (yr, &mut []))));
            } else {
                y.par_chunks_mut(len)
                    .zip(tail.par_chunks_mut(overlap))
                    .enumerate()
                    .with_min_len(8)
                    .for_each(add);
            }
        }
    }
}

/// Bytes of activated input per block of [`SnakePointwiseResidual`], so that the block and
/// its slice of y stay in a core's L2; blocks keep at least [`POINTWISE_MIN_BLOCK`] samples
/// (narrower GEMMs run below their rate: 768 channels take 768 KB blocks).
const POINTWISE_BLOCK_BYTES: usize = 128 << 10;
const POINTWISE_MIN_BLOCK: usize = 256;

/// y = residual + bias + W · SnakeBeta(x) for a 1×1 convolution (W: O × C): the second half of
/// a codec residual unit in one pass over time blocks that stay in L2. Run as three ops
/// (activation, convolution, add) it made five passes over tensors of many MB, each freshly
/// allocated (the Qwen3-TTS codec's last block: 96 channels × 1920 samples per frame), and
/// ran at a third of the GEMM rate.
#[derive(Clone, Copy, Debug)]
pub struct SnakePointwiseResidual<'a> {
    /// W, row-major O × C.
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    /// SnakeBeta's eᵅ and 1 / (eᵝ + ε) per input channel.
    pub alpha: &'a [f32],
    pub inv_beta: &'a [f32],
}

impl CustomOp2 for SnakePointwiseResidual<'_> {
    fn name(&self) -> &'static str {
        "snake-pointwise-residual"
    }

    /// x (batch, C, T) and residual (batch, O, T), both contiguous f32 → (batch, O, T).
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (Some((x0, x1)), CpuStorage::F32(x), Some((r0, r1)), CpuStorage::F32(r)) =
            (xl.contiguous_offsets(), xs, rl.contiguous_offsets(), rs)
        else {
            candle_core::bail!("snake-pointwise-residual: takes contiguous f32 tensors");
        };
        let (batch, c, t) = xl.shape().dims3()?;
        let o = self.bias.len();
        if rl.shape().dims3()? != (batch, o, t)
            || self.weight.len() != o * c
            || self.alpha.len() != c
            || self.inv_beta.len() != c
        {
            candle_core::bail!(
                "snake-pointwise-residual: x {:?} and residual {:?} do not fit a {o} x {c} \
                 filter",
                xl.dims(),
                rl.dims()
            );
        }
        let (x, residual) = (&x[x0..x1], &r[r0..r1]);
        let mut y = vec![0f32; batch * o * t];
        let block = (POINTWISE_BLOCK_BYTES / 4 / c.max(1))
            .clamp(POINTWISE_MIN_BLOCK, t.max(POINTWISE_MIN_BLOCK));
        let blocks = t.div_ceil(block);
        let out = super::gemv::OutPtr(y.as_mut_ptr());
        let isa = Isa::detect();
        (0..batch * blocks)
            .into_par_iter()
            .for_each_init(Vec::new, |act: &mut Vec<f32>, task| {
                let (b, t0) = (task / blocks, task % blocks * block);
                let n = block.min(t - t0);
                act.resize(c * n, 0.0);
                for (ch, dst) in act.chunks_mut(n).enumerate() {
                    let row = &x[(b * c + ch) * t + t0..][..n];
                    snake_row(isa, row, self.alpha[ch], self.inv_beta[ch], dst);
                }
                let y0 = b * o * t + t0;
                // SAFETY: this task alone writes columns t0..t0 + n of batch b's rows of y
                // (o rows of stride t), all inside y; lhs is W (o × c) and rhs the activated
                // block (c × n, row stride n).
                unsafe {
                    let dst = out.add(y0).0;
                    for (row, &bias) in self.bias.iter().enumerate() {
                        let res = &residual[y0 + row * t..][..n];
                        let yr = std::slice::from_raw_parts_mut(dst.add(row * t), n);
                        add_scalar_row(isa, res, bias, yr);
                    }
                    gemm_f32(
                        (o, n, c),
                        dst,
                        t,
                        true,
                        self.weight.as_ptr(),
                        c,
                        act.as_ptr(),
                        (n, 1),
                        gemm::Parallelism::None,
                    );
                }
            });
        Ok((CpuStorage::F32(y), Shape::from((batch, o, t))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Against candle's convolution: batches, dilation, a kernel of one tap, an input shorter
    /// than the receptive field (no output), sizes large enough to run in parallel.
    #[test]
    fn equals_candles_convolution() -> Result<()> {
        let dev = Device::Cpu;
        for &(batch, c, o, k, d, stride, pad, len) in &[
            (2, 5, 3, 7, 3, 1, 0, 40),
            (1, 64, 96, 7, 1, 1, 0, 700),
            (1, 8, 4, 1, 1, 1, 0, 9),
            (1, 4, 4, 7, 9, 1, 0, 20),
            (2, 6, 5, 3, 1, 1, 1, 31),
            (1, 6, 5, 3, 1, 2, 1, 31),
            (1, 6, 5, 4, 2, 3, 2, 30),
        ] {
            let x = Tensor::arange(0u32, (batch * c * len) as u32, &dev)?
                .to_dtype(candle_core::DType::F32)?
                .affine(0.37, 0.0)?
                .sin()?
                .reshape((batch, c, len))?;
            let w = Tensor::arange(0u32, (o * c * k) as u32, &dev)?
                .to_dtype(candle_core::DType::F32)?
                .affine(0.11, 1.0)?
                .cos()?
                .reshape((o, c, k))?;
            let bias: Vec<f32> = (0..o).map(|i| i as f32 * 0.1 - 0.2).collect();
            let taps = ConvTaps::taps_of(&w.flatten_all()?.to_vec1()?, o, c, k);
            let got = x.apply_op1_no_bwd(&ConvTaps {
                taps: &taps,
                bias: &bias,
                out_channels: o,
                in_channels: c,
                groups: 1,
                kernel: k,
                dilation: d,
                stride,
                padding: pad,
            })?;
            let field = (k - 1) * d + 1;
            if len + 2 * pad < field {
                assert_eq!(got.dims(), &[batch, o, 0]);
                continue;
            }
            let want = x
                .conv1d(&w, pad, stride, d, 1)?
                .broadcast_add(&Tensor::new(bias.as_slice(), &dev)?.reshape((1, o, 1))?)?;
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                diff < 1e-4,
                "({batch}, {c}, {o}, {k}, {d}, {stride}, {pad}, {len}): {diff}"
            );
        }
        Ok(())
    }

    /// Depthwise (groups = channels) against candle's grouped convolution: batches, dilation,
    /// stride, padding, sizes that run in parallel.
    #[test]
    fn depthwise_equals_candles_grouped_convolution() -> Result<()> {
        let dev = Device::Cpu;
        for &(batch, c, k, d, stride, pad, len) in &[
            (2, 5, 7, 1, 1, 0, 40),
            (1, 64, 7, 1, 1, 0, 700),
            (1, 6, 3, 2, 2, 1, 31),
            (1, 3, 7, 1, 1, 0, 4),
        ] {
            let x = Tensor::arange(0u32, (batch * c * len) as u32, &dev)?
                .to_dtype(candle_core::DType::F32)?
                .affine(0.37, 0.0)?
                .sin()?
                .reshape((batch, c, len))?;
            let w = Tensor::arange(0u32, (c * k) as u32, &dev)?
                .to_dtype(candle_core::DType::F32)?
                .affine(0.11, 1.0)?
                .cos()?
                .reshape((c, 1, k))?;
            let bias: Vec<f32> = (0..c).map(|i| i as f32 * 0.1 - 0.2).collect();
            let taps = ConvTaps::taps_of(&w.flatten_all()?.to_vec1()?, c, 1, k);
            let got = x.apply_op1_no_bwd(&ConvTaps {
                taps: &taps,
                bias: &bias,
                out_channels: c,
                in_channels: c,
                groups: c,
                kernel: k,
                dilation: d,
                stride,
                padding: pad,
            })?;
            if len + 2 * pad < (k - 1) * d + 1 {
                assert_eq!(got.dims(), &[batch, c, 0]);
                continue;
            }
            let want = x
                .conv1d(&w, pad, stride, d, c)?
                .broadcast_add(&Tensor::new(bias.as_slice(), &dev)?.reshape((1, c, 1))?)?;
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                diff < 1e-5,
                "({batch}, {c}, {k}, {d}, {stride}, {pad}, {len}): {diff}"
            );
        }
        Ok(())
    }
}
