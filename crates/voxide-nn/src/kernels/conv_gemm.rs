//! 1-D convolution (one group) as one GEMM per kernel tap, accumulated in place:
//! y (O × T) = bias + Σₖ Wₖ (O × C) · x[:, k·d + s·t] (C × T, a strided view of the input);
//! depthwise (one group per channel) as one multiply-add per tap and channel row; 1×1 and
//! transposed (causal, streaming: one product per output phase) on the panel kernel, their
//! weights packed at load.
//!
//! candle's CPU convolution copies the input into an im2col matrix K times its size, multiplies,
//! and transposes the product back to channels-first; here each tap reads a strided window of
//! the input in place and the product lands in channels-first order. Codec decoders run
//! millions of such output samples per second of audio. candle runs a depthwise convolution
//! as one convolution per group: ~80 ms for Qwen3-TTS's 1024-channel ConvNeXt on one frame.

use super::gemv::OutPtr;
use super::machine::{machine, CacheSizes};
use super::ops::{add_scalar_row, contiguous_f32, snake_row};
use super::panels::{Panels, Product, STRIP_COLUMNS, UNKNOWN_L2};
use super::simd::Isa;
use super::{gemm_f32, gemm_parallelism};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape};
use std::cell::Cell;

/// candle op over a contiguous f32 (batch, C, L) input.
#[derive(Clone, Copy, Debug)]
pub struct ConvTaps<'a> {
    /// Kernel taps, tap-major: `taps[k][o][c]` = `weight[o][c][k]`.
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
/// Tap k = q·s + r sends input frame j to output (j + q)·s + r. Per phase r, one product of
/// the phase's taps stacked (blocks·O × C, blocks = ⌈K / s⌉, packed at load) by x (C × t)
/// gives every contribution to the outputs ≡ r mod s, all phases in one call of the panel
/// kernel ([`super::panels`]) per block of x's columns, then one pass adds the block's into y
/// while they are in the caches ([`phase_block_columns`]). Was: one GEMM per phase by the
/// `gemm` crate, which packed the taps again on every call; before that one GEMM into a
/// (t, taps · O) buffer, then a shuffle, pad and add per block of taps; then one GEMM per tap
/// written through a strided view of y, which ran at half the GEMM rate. Outputs past t·s
/// go to the tail, which the next step adds to its first outputs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TransposedConvTaps<'a> {
    /// Kernel taps as s matrices of (blocks · O) × C: row q·O + o of phase r is
    /// weight[·][o][q·s + r] (zero past the kernel), see [`Self::pack`].
    pub taps: &'a Panels,
    pub bias: &'a [f32],
    pub out_channels: usize,
    pub in_channels: usize,
    pub kernel: usize,
    pub stride: usize,
}

thread_local! {
    /// The last call's phase products, reused: a fresh buffer of a few MB costs a page fault
    /// per 4 kB on every chunk.
    static PHASES: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Columns of x a transposed convolution's phase products take at once, for `values` of them
/// per column and taps of `tap_bytes`: as many as fill an eighth of the last-level cache (half
/// of L2 where there is none), in whole strips of the panel kernel ([`STRIP_COLUMNS`]) and at
/// least two of them; all `t` where the taps do not fit that budget themselves, since each
/// block reads them again. All at once, the products of a 16-frame codec chunk's 192 → 96
/// upsampling (24 MB) went through memory between the product and the adds (PERFORMANCE.md
/// #158).
fn phase_block_columns(values: usize, tap_bytes: usize, t: usize, caches: &CacheSizes) -> usize {
    let budget = match (caches.l3, caches.l2_per_core) {
        (0, 0) => UNKNOWN_L2 / 2,
        (0, l2) => l2 / 2,
        (l3, _) => l3 / 8,
    };
    if tap_bytes > budget {
        return t.max(1);
    }
    let column_bytes = values.max(1) * std::mem::size_of::<f32>();
    let columns = budget / column_bytes / STRIP_COLUMNS * STRIP_COLUMNS;
    columns.max(2 * STRIP_COLUMNS).min(t.max(1))
}

impl TransposedConvTaps<'_> {
    /// weight [C, O, K] (row-major) → s phase matrices [⌈K / s⌉ · O, C], zero-padded, packed.
    pub fn pack(
        weight: &[f32],
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
    ) -> Panels {
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
        Panels::pack(&taps, stride, blocks * out_channels, in_channels)
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
        let values = self.stride * self.blocks() * self.out_channels;
        let columns = phase_block_columns(values, self.taps.bytes(), t, &machine().caches);
        self.push_in_blocks(x, t, tail, y, columns);
    }

    /// [`Self::push`] taking x's columns `columns` at a time.
    fn push_in_blocks(&self, x: &[f32], t: usize, tail: &mut [f32], y: &mut [f32], columns: usize) {
        use rayon::prelude::*;
        let (o, c, s, blocks) = (
            self.out_channels,
            self.in_channels,
            self.stride,
            self.blocks(),
        );
        let (len, overlap) = (t * s, self.overlap());
        assert!(x.len() == c * t && y.len() == o * len && tail.len() == o * overlap);
        assert!(self.taps.rows() == blocks * o && self.taps.cols() == c);
        assert_eq!(self.taps.pairs() % s, 0);
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
        // Column block by column block, so that the block's phase products are added into y
        // from the caches: z[r][q][o][jj] for columns j0 + jj; every element is written by
        // the product.
        let mut z = PHASES.take();
        z.resize(s * blocks * o * columns.min(t), 0.0);
        for j0 in (0..t).step_by(columns) {
            let n = columns.min(t - j0);
            let product = Product {
                w: self.taps,
                b: &x[j0..],
                b_stride: t,
                b_step: 0,
                n,
                out: OutPtr(z.as_mut_ptr()),
                out_stride: n,
                out_step: blocks * o * n,
                accumulate: false,
            };
            // SAFETY: z holds s matrices of blocks·o rows of n values; the pairs write
            // disjoint rows.
            unsafe { product.run_split() };
            // z[r][q][o][jj] lands at output (j0 + jj + q)·s + r: in y, or past it in the
            // tail; per output, the phases' blocks in order q within a column block.
            let z = &z;
            let add = |(channel, (yr, tr)): (usize, (&mut [f32], &mut [f32]))| {
                for r in 0..s {
                    for q in 0..blocks {
                        let zr = &z[((r * blocks + q) * o + channel) * n..][..n];
                        let inside = (t - j0).saturating_sub(q).min(n);
                        if inside > 0 {
                            let outputs = yr[(j0 + q) * s + r..].iter_mut().step_by(s);
                            for (yv, &zv) in outputs.zip(&zr[..inside]) {
                                *yv += zv;
                            }
                        }
                        for (jj, &zv) in zr.iter().enumerate().skip(inside) {
                            tr[(j0 + jj + q) * s + r - len] += zv;
                        }
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
        PHASES.set(z);
    }
}

/// Bytes of a block of [`Pointwise`]'s input columns, so that the block (activated and
/// packed into strips) and its slice of y stay in a core's L2.
const POINTWISE_BLOCK_BYTES: usize = 128 << 10;

/// y = [residual +] bias + W · act(x) for a 1×1 convolution (W: O × C, packed at load; act:
/// SnakeBeta or none), in one pass over blocks of columns that stay in L2: with SnakeBeta and
/// the residual, the second half of a codec residual unit. Run as three ops (activation,
/// convolution, add) it made five passes over tensors of many MB, each freshly allocated (the
/// Qwen3-TTS codec's last block: 96 channels × 1920 samples per frame), and ran at a third of
/// the GEMM rate. Each task starts its rows of y from the residual and bias, then the panel
/// kernel adds the product.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pointwise<'a> {
    pub weight: &'a Panels,
    pub bias: &'a [f32],
    /// SnakeBeta's eᵅ and 1 / (eᵝ + ε) per input channel, applied to x first.
    pub snake: Option<(&'a [f32], &'a [f32])>,
}

impl Pointwise<'_> {
    /// x (batch, C, t) [and the residual (batch, O, t)], contiguous → y (batch, O, t).
    fn run(
        &self,
        x: &[f32],
        residual: Option<&[f32]>,
        (batch, c, t): (usize, usize, usize),
    ) -> Vec<f32> {
        use rayon::prelude::*;
        let o = self.weight.rows();
        let mut y = vec![0f32; batch * o * t];
        if y.is_empty() {
            return y;
        }
        // Whole strips of the panel kernel, so that only the last block ends inside one;
        // rounded up, as W is read once a block.
        let block = (POINTWISE_BLOCK_BYTES / 4 / c.max(1)).next_multiple_of(STRIP_COLUMNS);
        let blocks = t.div_ceil(block);
        // One matrix: pair p is panel p, rows p·P.. of y.
        let pairs = self.weight.pairs();
        debug_assert_eq!(pairs, o.div_ceil(self.weight.panel()));
        // Few blocks (a short chunk): each block's panels shared out too, so that every
        // thread has work.
        let threads = rayon::current_num_threads();
        let shares = (2 * threads)
            .div_ceil(batch * blocks)
            .clamp(1, pairs.max(1));
        let per_share = pairs.div_ceil(shares);
        let out = OutPtr(y.as_mut_ptr());
        let isa = Isa::detect();
        (0..batch * blocks * shares).into_par_iter().for_each_init(
            Vec::new,
            |act: &mut Vec<f32>, task| {
                let (item, share) = (task / shares, task % shares);
                let (b, t0) = (item / blocks, item % blocks * block);
                let n = block.min(t - t0);
                let x0 = b * c * t + t0;
                let (columns, stride) = match self.snake {
                    Some((alpha, inv_beta)) => {
                        act.resize(c * n, 0.0);
                        for (ch, dst) in act.chunks_mut(n).enumerate() {
                            snake_row(isa, &x[x0 + ch * t..][..n], alpha[ch], inv_beta[ch], dst);
                        }
                        (&act[..], n)
                    }
                    None => (&x[x0..], t),
                };
                let y0 = b * o * t + t0;
                let panels = share * per_share..pairs.min((share + 1) * per_share);
                // This task's rows of y started from the residual and bias, row by row (read
                // by the kernel only as it stores its sums, they stalled it), then the product
                // added.
                let first_row = panels.start * self.weight.panel();
                let last_row = o.min(panels.end * self.weight.panel());
                for row in first_row..last_row {
                    // SAFETY: as below; row < o.
                    let yr = unsafe { std::slice::from_raw_parts_mut(out.add(y0 + row * t).0, n) };
                    match residual {
                        Some(r) => add_scalar_row(isa, &r[y0 + row * t..][..n], self.bias[row], yr),
                        None => yr.fill(self.bias[row]),
                    }
                }
                let product = Product {
                    w: self.weight,
                    b: columns,
                    b_stride: stride,
                    b_step: 0,
                    n,
                    // SAFETY: y0 lies inside y.
                    out: unsafe { out.add(y0) },
                    out_stride: t,
                    out_step: 0,
                    accumulate: true,
                };
                // SAFETY: this task alone writes columns t0..t0 + n of its share of batch b's
                // rows of y (o rows of stride t), all inside y.
                unsafe { product.run(panels) };
            },
        );
        y
    }

    fn check(&self, c: usize) -> Result<()> {
        let (o, snake_ok) = (
            self.weight.rows(),
            self.snake.is_none_or(|(a, b)| a.len() == c && b.len() == c),
        );
        if self.weight.cols() != c || self.bias.len() != o || !snake_ok {
            candle_core::bail!(
                "pointwise conv: {c} input channels do not fit a {o} x {} filter",
                self.weight.cols()
            );
        }
        Ok(())
    }
}

impl CustomOp1 for Pointwise<'_> {
    fn name(&self) -> &'static str {
        "pointwise-conv"
    }

    /// x (batch, C, T), contiguous f32 → (batch, O, T).
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("pointwise-conv", s, l)?;
        let (batch, c, t) = l.shape().dims3()?;
        self.check(c)?;
        let y = self.run(x, None, (batch, c, t));
        Ok((
            CpuStorage::F32(y),
            Shape::from((batch, self.weight.rows(), t)),
        ))
    }
}

impl CustomOp2 for Pointwise<'_> {
    fn name(&self) -> &'static str {
        "pointwise-conv-residual"
    }

    /// x (batch, C, T) and residual (batch, O, T), both contiguous f32 → (batch, O, T).
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("pointwise-conv-residual", xs, xl)?;
        let residual = contiguous_f32("pointwise-conv-residual", rs, rl)?;
        let (batch, c, t) = xl.shape().dims3()?;
        self.check(c)?;
        let o = self.weight.rows();
        if rl.shape().dims3()? != (batch, o, t) {
            candle_core::bail!(
                "pointwise-conv-residual: x {:?} and residual {:?} do not fit a {o} x {c} filter",
                xl.dims(),
                rl.dims()
            );
        }
        let y = self.run(x, Some(residual), (batch, c, t));
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

    /// A transposed convolution's phase products in column blocks give what one block gives,
    /// y and the tail handed on (the adds of an output only change order), for kernels that
    /// are and are not a multiple of the stride and blocks that do not divide the columns.
    #[test]
    fn transposed_taps_in_column_blocks_equal_one_block() {
        let val = |i: usize| ((i * 7919 % 101) as f32 / 50.0) - 1.0;
        for (c, o, t, kernel, stride) in [(8, 6, 200, 6, 3), (5, 4, 150, 5, 2), (7, 3, 97, 2, 2)] {
            let w: Vec<f32> = (0..c * o * kernel).map(val).collect();
            let bias: Vec<f32> = (0..o).map(|i| val(i + 7)).collect();
            let taps = TransposedConvTaps::pack(&w, c, o, kernel, stride);
            let op = TransposedConvTaps {
                taps: &taps,
                bias: &bias,
                out_channels: o,
                in_channels: c,
                kernel,
                stride,
            };
            let x: Vec<f32> = (0..c * t).map(|i| val(i + 31)).collect();
            let tail_in: Vec<f32> = (0..o * op.overlap()).map(|i| val(i + 57)).collect();
            let run = |columns: usize| {
                let (mut tail, mut y) = (tail_in.clone(), vec![0f32; o * t * stride]);
                op.push_in_blocks(&x, t, &mut tail, &mut y, columns);
                (y, tail)
            };
            let (want_y, want_tail) = run(t);
            for columns in [64, 96] {
                let (y, tail) = run(columns);
                for (got, want) in y.iter().chain(&tail).zip(want_y.iter().chain(&want_tail)) {
                    assert!(
                        (got - want).abs() < 1e-5,
                        "k{kernel} s{stride} by {columns}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn phase_blocks_fill_an_eighth_of_the_last_level_cache() {
        let caches = |l2_per_core, l3| CacheSizes {
            l1d_per_core: 32 << 10,
            l2_per_core,
            l3,
        };
        let zen4 = caches(1 << 20, 32 << 20);
        // 192 → 96, k6 s3: 576 values (2304 bytes) a column; 4 MB of a 32 MB L3.
        assert_eq!(phase_block_columns(576, 442 << 10, 10240, &zen4), 1792);
        assert_eq!(phase_block_columns(576, 442 << 10, 1000, &zen4), 1000);
        // Taps over the budget: every column at once.
        assert_eq!(phase_block_columns(3840, 11 << 20, 10240, &zen4), 10240);
        // No L3: half of L2; nothing known: half of the default L2.
        assert_eq!(
            phase_block_columns(576, 64 << 10, 10240, &caches(1 << 20, 0)),
            224
        );
        assert_eq!(phase_block_columns(576, 64 << 10, 10240, &caches(0, 0)), 96);
        // Wide blocks of values still take two strips.
        assert_eq!(phase_block_columns(1 << 20, 0, 10240, &zen4), 64);
        assert_eq!(phase_block_columns(1 << 20, 0, 10, &zen4), 10);
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
