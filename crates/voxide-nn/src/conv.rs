//! 1-D convolutions (plain, causal and streaming, reflect-padded "same", transposed) and the
//! two-convolution audio stem shared by Whisper-style encoders.

use crate::activation::{gelu_erf, SnakeBeta};
use crate::kernels::conv_gemm::{ConvTaps, Pointwise, TransposedConvTaps};
use crate::kernels::panels::Panels;
use crate::kernels::winograd::{self, WinogradConv};
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

/// Geometry of a 1-D convolution.
#[derive(Clone, Copy, Debug)]
pub struct Conv1dSpec {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel width.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on both sides.
    pub padding: usize,
    /// Spacing of the kernel taps.
    pub dilation: usize,
    /// Channel groups (`in_channels` for a depthwise convolution).
    pub groups: usize,
}

impl Conv1dSpec {
    /// Stride 1, no padding, no dilation, one group.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
        }
    }

    /// Input frames one output reads: (kernel − 1) · dilation + 1.
    pub fn receptive_field(&self) -> usize {
        (self.kernel - 1) * self.dilation + 1
    }
}

/// Conv1d with `weight` `[out, in, kernel]` and `bias` `[out]`.
#[derive(Clone, Debug)]
pub struct Conv1d {
    kernel: ConvKernel,
    spec: Conv1dSpec,
}

/// A convolution's weights, kept once: tap-major for [`ConvTaps`] (one group or depthwise, on
/// the CPU: one GEMM per tap, no im2col copy; one multiply-add per tap and channel), packed in
/// panels for 1×1 ones ([`Pointwise`]), Winograd-transformed for long filters over many
/// channels (see [`Conv1d::load`]), else as stored for candle's convolution. Keeping both
/// doubled a codec's f32 convolutions (Qwen3-TTS: 59 M weights, 234 MB).
#[derive(Clone, Debug)]
enum ConvKernel {
    Taps { taps: Vec<f32>, bias: Vec<f32> },
    Pointwise { weight: Panels, bias: Vec<f32> },
    Winograd(Box<WinogradConv>),
    Candle { weight: Tensor, bias: Tensor },
}

/// Filters from this many taps, over at least [`WINOGRAD_MIN_CHANNELS`] input and output
/// channels, run as Winograd F(4, r): ≥ 2.5× fewer multiply-adds (k7: 2.8×), for O(α²) transforms
/// per tile and channel that many channels amortise, and α / r times the weights.
const WINOGRAD_MIN_TAPS: usize = 5;
const WINOGRAD_MIN_CHANNELS: usize = 16;

/// The device of tap-major kernels.
static CPU: candle_core::Device = candle_core::Device::Cpu;

impl Conv1d {
    /// Loads `weight` and `bias` from `vb`.
    pub fn load(vb: VarBuilder, spec: Conv1dSpec) -> Result<Self> {
        // Conv kernels stay f32 whatever the matrices' dtype: they are small and candle's
        // conv needs one dtype.
        let weight = vb.get_with_hints_dtype(
            (
                spec.out_channels,
                spec.in_channels / spec.groups,
                spec.kernel,
            ),
            "weight",
            candle_nn::Init::Const(0.),
            candle_core::DType::F32,
        )?;
        let bias = vb.get_with_hints_dtype(
            spec.out_channels,
            "bias",
            candle_nn::Init::Const(0.),
            candle_core::DType::F32,
        )?;
        let depthwise =
            spec.groups == spec.in_channels && spec.groups == spec.out_channels && spec.groups > 1;
        let winograd = spec.groups == 1
            && spec.stride == 1
            && spec.padding == 0
            && (WINOGRAD_MIN_TAPS..=winograd::MAX_TAPS).contains(&spec.kernel)
            && spec.in_channels.min(spec.out_channels) >= WINOGRAD_MIN_CHANNELS;
        let kernel = if (spec.groups == 1 || depthwise) && weight.device().is_cpu() {
            let w = weight.flatten_all()?.to_vec1::<f32>()?;
            let taps = ConvTaps::taps_of(
                &w,
                spec.out_channels,
                spec.in_channels / spec.groups,
                spec.kernel,
            );
            let bias = bias.to_vec1::<f32>()?;
            let pointwise =
                spec.kernel == 1 && spec.groups == 1 && spec.stride == 1 && spec.padding == 0;
            if pointwise {
                let weight = Panels::pack(&taps, 1, spec.out_channels, spec.in_channels);
                return Ok(Self {
                    kernel: ConvKernel::Pointwise { weight, bias },
                    spec,
                });
            }
            match winograd
                .then(|| {
                    WinogradConv::new(
                        &taps,
                        &bias,
                        spec.out_channels,
                        spec.in_channels,
                        spec.kernel,
                        spec.dilation,
                    )
                })
                .flatten()
            {
                Some(conv) => ConvKernel::Winograd(Box::new(conv)),
                None => ConvKernel::Taps { taps, bias },
            }
        } else {
            ConvKernel::Candle { weight, bias }
        };
        Ok(Self { kernel, spec })
    }

    /// x: (batch, in, t) -> (batch, out, (t + 2·padding − receptive field) / stride + 1).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = &self.spec;
        match &self.kernel {
            ConvKernel::Taps { taps, bias } => {
                let op = ConvTaps {
                    taps,
                    bias,
                    out_channels: s.out_channels,
                    in_channels: s.in_channels,
                    groups: s.groups,
                    kernel: s.kernel,
                    dilation: s.dilation,
                    stride: s.stride,
                    padding: s.padding,
                };
                // The kernels are f32 (see `load`): other inputs convert on the way.
                x.to_dtype(DType::F32)?
                    .contiguous()?
                    .apply_op1_no_bwd(&op)?
                    .to_dtype(x.dtype())
            }
            ConvKernel::Pointwise { weight, bias } => {
                let op = Pointwise {
                    weight,
                    bias,
                    snake: None,
                };
                x.to_dtype(DType::F32)?
                    .contiguous()?
                    .apply_op1_no_bwd(&op)?
                    .to_dtype(x.dtype())
            }
            ConvKernel::Winograd(conv) => x
                .to_dtype(DType::F32)?
                .contiguous()?
                .apply_op1_no_bwd(conv.as_ref())?
                .to_dtype(x.dtype()),
            ConvKernel::Candle { weight, bias } => {
                let y = x.conv1d(weight, s.padding, s.stride, s.dilation, s.groups)?;
                y.broadcast_add(&bias.reshape((1, (), 1))?)
            }
        }
    }

    /// `residual + self(act(x))` for a 1×1 convolution (no streaming state): a codec residual
    /// unit's second half, on the CPU in one pass (`kernels::conv_gemm::Pointwise`).
    pub fn forward_snake_residual(
        &self,
        act: &SnakeBeta,
        x: &Tensor,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let s = &self.spec;
        if s.kernel != 1 || s.stride != 1 || s.padding != 0 || s.groups != 1 {
            candle_core::bail!("forward_snake_residual takes a 1x1 convolution");
        }
        match &self.kernel {
            ConvKernel::Pointwise { weight, bias }
                if x.dtype() == DType::F32 && residual.dtype() == DType::F32 =>
            {
                let op = Pointwise {
                    weight,
                    bias,
                    snake: Some(act.params()),
                };
                x.contiguous()?
                    .apply_op2_no_bwd(&residual.contiguous()?, &op)
            }
            _ => residual + self.forward(&act.forward(x)?)?,
        }
    }

    pub fn device(&self) -> &candle_core::Device {
        match &self.kernel {
            ConvKernel::Taps { .. } | ConvKernel::Pointwise { .. } | ConvKernel::Winograd(_) => {
                &CPU
            }
            ConvKernel::Candle { weight, .. } => weight.device(),
        }
    }

    /// Causal convolution, streaming: runs over `pending ++ x` (a fresh stream starts with
    /// `receptive field − stride` zero frames of left padding), emits every output whose
    /// window is complete and keeps in `pending` the inputs later outputs still need. Any split
    /// of the input into chunks gives the outputs of one pass.
    pub fn push_causal(&self, pending: &mut Option<Tensor>, x: &Tensor) -> Result<Tensor> {
        self.push_causal_after(pending, x, None)
    }

    /// [`Self::push_causal`] of `act(x)`: the activated frames are written once, straight
    /// after the pending ones in the buffer the convolution reads (`pending` holds activated
    /// frames).
    pub fn push_causal_after(
        &self,
        pending: &mut Option<Tensor>,
        x: &Tensor,
        act: Option<&SnakeBeta>,
    ) -> Result<Tensor> {
        let (field, stride) = (self.spec.receptive_field(), self.spec.stride);
        let (batch, channels, frames) = x.dims3()?;
        let nothing_pending = pending
            .as_ref()
            .is_none_or(|p| p.dim(2).is_ok_and(|n| n == 0));
        if field == stride && frames.is_multiple_of(stride) && nothing_pending {
            // Windows of one stride (a 1×1 convolution) never reach back: no copy of x.
            *pending = None;
            return match act {
                Some(act) => self.forward(&act.forward(x)?),
                None => self.forward(x),
            };
        }
        let before = match pending.take() {
            Some(p) => p,
            None => Tensor::zeros((batch, channels, field - stride), x.dtype(), x.device())?,
        };
        let buffered = match act {
            Some(act) => act.forward_after(&before, x)?,
            None => Tensor::cat(&[&before, x], 2)?,
        };
        let len = buffered.dim(2)?;
        let outputs = if len >= field {
            (len - field) / stride + 1
        } else {
            0
        };
        let used = outputs * stride;
        *pending = Some(buffered.narrow(2, used, len - used)?.contiguous()?);
        if outputs == 0 {
            return Tensor::zeros((batch, self.spec.out_channels, 0), x.dtype(), x.device());
        }
        self.forward(&buffered.narrow(2, 0, (outputs - 1) * stride + field)?)
    }
}

/// Stride-1 convolution with PyTorch's `padding="same", padding_mode="reflect"`: the input is
/// reflect-padded (edge frame not repeated) by `(kernel − 1) · dilation / 2` frames on the left
/// and the rest on the right, so the output keeps the input's length. ECAPA-TDNN (the Qwen3-TTS
/// speaker encoder) pads every convolution this way.
#[derive(Clone, Debug)]
pub struct ReflectSameConv1d {
    conv: Conv1d,
    left: usize,
    right: usize,
}

impl ReflectSameConv1d {
    /// Loads `weight` `[out, in, kernel]` and `bias` `[out]` from `vb`.
    pub fn load(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        dilation: usize,
    ) -> Result<Self> {
        let spec = Conv1dSpec {
            dilation,
            ..Conv1dSpec::new(in_channels, out_channels, kernel)
        };
        // torch: total = dilation · (kernel − 1), left = total / 2 (rounded down).
        let total = spec.receptive_field() - 1;
        Ok(Self {
            conv: Conv1d::load(vb, spec)?,
            left: total / 2,
            right: total - total / 2,
        })
    }

    /// Frames the input needs at least: torch's reflect padding must be shorter than the input.
    pub fn min_frames(&self) -> usize {
        self.right + 1
    }

    /// x: (batch, in, t) → (batch, out, t); an error unless t ≥ [`Self::min_frames`].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.right == 0 {
            return self.conv.forward(x);
        }
        self.conv.forward(&pad_reflect(x, self.left, self.right)?)
    }
}

/// `F.pad(x, (left, right), mode="reflect")` on the last dimension of x (batch, channels, t):
/// one gather, an error unless both pads are shorter than t (as in torch).
fn pad_reflect(x: &Tensor, left: usize, right: usize) -> Result<Tensor> {
    let t = x.dim(2)?;
    if left >= t || right >= t {
        candle_core::bail!(
            "reflect padding of {left} + {right} frames needs more than that many frames, got {t}"
        );
    }
    let index: Vec<u32> = (0..left + t + right)
        .map(|j| {
            let i = j.abs_diff(left); // |j − left| reflects the left edge
            (if i < t { i } else { 2 * (t - 1) - i }) as u32
        })
        .collect();
    let index = Tensor::from_vec(index, left + t + right, x.device())?;
    x.index_select(&index, 2)
}

/// Transposed convolution with `weight` `[in, out, kernel]` and `bias` `[out]`, made causal by
/// dropping the last `kernel − stride` outputs: t inputs give exactly t · stride outputs.
///
/// On the CPU one product per output phase, all phases in one call of the panel kernel
/// (`kernels::conv_gemm::TransposedConvTaps`);
/// elsewhere one GEMM and shifted adds (candle's CPU `conv_transpose1d` is a direct loop, ~40
/// ms for a 1024 → 1024 k2 layer on one frame): with the kernel zero-padded to
/// `blocks · stride` taps, z = x · W (t × taps·out) holds every tap's contribution, and tap
/// block q lands q · stride outputs after block 0, so y = Σ_q shift(z_q, q · stride).
#[derive(Clone, Debug)]
pub struct CausalConvTranspose1d {
    kernel: TransposedKernel,
    in_channels: usize,
    out_channels: usize,
    taps: usize,
    stride: usize,
}

/// A transposed convolution's weights, kept once (as [`ConvKernel`]).
#[derive(Clone, Debug)]
enum TransposedKernel {
    /// Phase matrices [blocks · out, in], packed, for [`TransposedConvTaps`].
    Taps { taps: Panels, bias: Vec<f32> },
    /// (in, blocks · stride · out): column (q · stride + r) · out + o is weight[:, o, q · stride + r].
    Candle { taps: Tensor, bias: Tensor },
}

impl CausalConvTranspose1d {
    pub fn load(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
    ) -> Result<Self> {
        if stride == 0 || kernel < stride {
            candle_core::bail!(
                "a causal transposed convolution needs kernel ≥ stride ≥ 1, got kernel {kernel}, stride {stride}"
            );
        }
        let f32 = candle_core::DType::F32;
        let init = candle_nn::Init::Const(0.);
        let weight =
            vb.get_with_hints_dtype((in_channels, out_channels, kernel), "weight", init, f32)?;
        let bias = vb.get_with_hints_dtype(out_channels, "bias", init, f32)?;
        let kernel_weights = if weight.device().is_cpu() {
            TransposedKernel::Taps {
                taps: TransposedConvTaps::pack(
                    &weight.flatten_all()?.to_vec1()?,
                    in_channels,
                    out_channels,
                    kernel,
                    stride,
                ),
                bias: bias.to_vec1()?,
            }
        } else {
            let blocks = kernel.div_ceil(stride);
            let weight = weight.pad_with_zeros(2, 0, blocks * stride - kernel)?;
            // (in, out, taps) → (in, taps, out) → (in, taps · out)
            let taps = weight
                .transpose(1, 2)?
                .contiguous()?
                .reshape((in_channels, blocks * stride * out_channels))?;
            TransposedKernel::Candle { taps, bias }
        };
        Ok(Self {
            kernel: kernel_weights,
            in_channels,
            out_channels,
            taps: kernel,
            stride,
        })
    }

    /// Streaming: x (batch, in, t) → (batch, out, t · stride). `tail` carries the overlap
    /// (`(blocks − 1) · stride` outputs, without bias) that the next inputs add to; a fresh
    /// stream starts with none. Any split of the input gives the outputs of one pass.
    pub fn push(&self, tail: &mut Option<Tensor>, x: &Tensor) -> Result<Tensor> {
        let (batch, _, t) = x.dims3()?;
        let (s, out) = (self.stride, self.out_channels);
        if t == 0 {
            return Tensor::zeros((batch, out, 0), x.dtype(), x.device());
        }
        match &self.kernel {
            TransposedKernel::Taps { taps, bias } => {
                let op = TransposedConvTaps {
                    taps,
                    bias,
                    out_channels: out,
                    in_channels: self.in_channels,
                    kernel: self.taps,
                    stride: s,
                };
                let overlap = op.overlap();
                let mut carried = match tail.take() {
                    Some(prev) => prev.flatten_all()?.to_vec1::<f32>()?,
                    None => vec![0f32; batch * out * overlap],
                };
                // x's values read where they lie (f32 and contiguous, as the codec's are).
                let x = x.to_dtype(DType::F32)?.contiguous()?;
                let (storage, layout) = x.storage_and_layout();
                let (candle_core::Storage::Cpu(cpu), Some((start, end))) =
                    (&*storage, layout.contiguous_offsets())
                else {
                    candle_core::bail!("a transposed convolution with CPU weights needs CPU input");
                };
                let x = &cpu.as_slice::<f32>()?[start..end];
                let mut y = vec![0f32; batch * out * t * s];
                let per_item = out * overlap;
                for (b, (xb, yb)) in x
                    .chunks(self.in_channels * t)
                    .zip(y.chunks_mut(out * t * s))
                    .enumerate()
                {
                    op.push(xb, t, &mut carried[b * per_item..(b + 1) * per_item], yb);
                }
                if overlap > 0 {
                    *tail = Some(Tensor::from_vec(carried, (batch, out, overlap), &CPU)?);
                }
                Tensor::from_vec(y, (batch, out, t * s), &CPU)
            }
            TransposedKernel::Candle { taps, bias } => {
                let blocks = self.taps.div_ceil(s);
                // (batch, t, in) · (in, taps · out) → (batch, t, blocks, stride, out)
                let z = x
                    .transpose(1, 2)?
                    .contiguous()?
                    .broadcast_matmul(taps)?
                    .reshape((batch, t, blocks, s, out))?;
                // Block q as (batch, out, t · stride), shifted right by q · stride: the full
                // output of length (t + blocks − 1) · stride.
                let mut y: Option<Tensor> = None;
                for q in 0..blocks {
                    let block = z
                        .narrow(2, q, 1)?
                        .squeeze(2)?
                        .permute((0, 3, 1, 2))?
                        .reshape((batch, out, t * s))?
                        .pad_with_zeros(2, q * s, (blocks - 1 - q) * s)?;
                    y = Some(match y {
                        Some(y) => (y + block)?,
                        None => block,
                    });
                }
                let mut y = y.expect("at least one block");
                let overlap = (blocks - 1) * s;
                if let Some(prev) = tail.take() {
                    let head = (y.narrow(2, 0, overlap)? + prev)?;
                    y = Tensor::cat(&[head, y.narrow(2, overlap, t * s)?], 2)?;
                }
                if overlap > 0 {
                    *tail = Some(y.narrow(2, t * s, overlap)?.contiguous()?);
                }
                y.narrow(2, 0, t * s)?
                    .broadcast_add(&bias.reshape((1, (), 1))?)
            }
        }
    }
}

/// `gelu(conv2(gelu(conv1(x))))`: conv1 keeps the frame rate (k 3, s 1), conv2 halves it
/// (k 3, s 2). Whisper's encoder and Voxtral's audio encoders start this way: Whisper pads one
/// frame on both sides, Voxtral Realtime's causal stem pads `k − s` frames on the left only.
#[derive(Clone, Debug)]
pub struct ConvStem {
    conv1: Conv1d,
    conv2: Conv1d,
    causal: bool,
}

/// Streaming state of a causal [`ConvStem`]: the input frames each convolution has not used
/// up yet, (1, channels, n), starting with its left padding. Any split of the input into
/// chunks gives the same frames as one pass, and the stride-2 phase is kept by construction.
#[derive(Clone, Debug, Default)]
pub struct ConvStemState {
    pending: [Option<Tensor>; 2],
}

impl ConvStem {
    /// Loads `conv1` (n_mels → dim) and `conv2` (dim → dim) from `vb`.
    pub fn load(vb: VarBuilder, n_mels: usize, dim: usize) -> Result<Self> {
        let spec = |in_channels, stride| Conv1dSpec {
            stride,
            padding: 1,
            ..Conv1dSpec::new(in_channels, dim, 3)
        };
        Ok(Self {
            conv1: Conv1d::load(vb.pp("conv1"), spec(n_mels, 1))?,
            conv2: Conv1d::load(vb.pp("conv2"), spec(dim, 2))?,
            causal: false,
        })
    }

    /// The causal stem: `conv1` and `conv2` loaded from their own prefixes (checkpoints name
    /// them differently), padded on the left only.
    pub fn load_causal(
        conv1: VarBuilder,
        conv2: VarBuilder,
        n_mels: usize,
        dim: usize,
    ) -> Result<Self> {
        let spec = |in_channels, stride| Conv1dSpec {
            stride,
            ..Conv1dSpec::new(in_channels, dim, 3)
        };
        Ok(Self {
            conv1: Conv1d::load(conv1, spec(n_mels, 1))?,
            conv2: Conv1d::load(conv2, spec(dim, 2))?,
            causal: true,
        })
    }

    /// mel (batch, n_mels, frames) -> both activations: (batch, dim, frames) after conv1 and
    /// (batch, dim, frames / 2) after conv2.
    pub fn forward_stages(&self, mel: &Tensor) -> Result<[Tensor; 2]> {
        if self.causal {
            return self.push(&mut ConvStemState::default(), mel);
        }
        let a1 = gelu_erf(&self.conv1.forward(mel)?)?;
        let a2 = gelu_erf(&self.conv2.forward(&a1)?)?;
        Ok([a1, a2])
    }

    /// Causal stem, streaming: feeds mel frames (1, n_mels, t) and returns the activations
    /// that became computable, (1, dim, n1) after conv1 and (1, dim, n2) after conv2 (n2 may
    /// be 0).
    pub fn push(&self, state: &mut ConvStemState, mel: &Tensor) -> Result<[Tensor; 2]> {
        debug_assert!(self.causal, "push is for the causal stem");
        let a1 = causal_step(&self.conv1, &mut state.pending[0], mel)?;
        let a2 = causal_step(&self.conv2, &mut state.pending[1], &a1)?;
        Ok([a1, a2])
    }

    /// mel (batch, n_mels, frames) -> (batch, dim, frames / 2).
    pub fn forward(&self, mel: &Tensor) -> Result<Tensor> {
        let [_, out] = self.forward_stages(mel)?;
        Ok(out)
    }
}

/// One causal convolution over `pending ++ x`, then GELU.
fn causal_step(conv: &Conv1d, pending: &mut Option<Tensor>, x: &Tensor) -> Result<Tensor> {
    gelu_erf(&conv.push_causal(pending, x)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    /// Reflect padding as numpy/torch (edge not repeated), refused when a pad reaches the
    /// length; the "same" convolution keeps the length and splits an odd total pad
    /// left-short, as torch does.
    #[test]
    fn reflect_same_padding() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 5., &dev)?.reshape((1, 1, 5))?;
        // np.pad(np.arange(5), (3, 2), mode="reflect")
        let want = [3f32, 2., 1., 0., 1., 2., 3., 4., 3., 2.];
        assert_eq!(
            pad_reflect(&x, 3, 2)?.flatten_all()?.to_vec1::<f32>()?,
            want
        );
        assert!(pad_reflect(&x, 5, 0).is_err() && pad_reflect(&x, 0, 5).is_err());
        // kernel 2: total pad 1 goes right; weights [1, 10] read x[i] and x[i + 1].
        let mut ts = HashMap::new();
        ts.insert(
            "weight".into(),
            Tensor::new(&[[[1f32, 10.]]], &dev)?.reshape((1, 1, 2))?,
        );
        ts.insert("bias".into(), Tensor::new(&[0.5f32], &dev)?);
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        let conv = ReflectSameConv1d::load(vb, 1, 1, 2, 1)?;
        assert_eq!(conv.min_frames(), 2);
        let y = conv.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(y, [10.5, 21.5, 32.5, 43.5, 34.5]);
        assert!(conv.forward(&x.narrow(2, 0, 1)?).is_err());
        Ok(())
    }

    /// Every path `Conv1d::load` picks equals candle's convolution, in one pass and fed in
    /// chunks: a long filter over many channels (Winograd), a short one (one GEMM per tap),
    /// a depthwise one, strided ones, 1×1, batches of two.
    #[test]
    fn every_convolution_path_equals_candles() -> Result<()> {
        let dev = Device::Cpu;
        let val = |i: usize| ((i * 7919 % 101) as f32 / 50.0) - 1.0;
        for (cin, cout, kernel, dilation, groups, stride) in [
            (24, 32, 7, 3, 1, 1),
            (24, 32, 3, 1, 1, 1),
            (24, 24, 7, 1, 24, 1),
            (24, 32, 4, 1, 1, 2),
            // Windows of one stride: streamed without copying the input while chunks allow.
            (24, 32, 1, 1, 1, 1),
            (24, 32, 2, 1, 1, 2),
        ] {
            let spec = Conv1dSpec {
                dilation,
                groups,
                stride,
                ..Conv1dSpec::new(cin, cout, kernel)
            };
            let shape = (cout, cin / groups, kernel);
            let w: Vec<f32> = (0..cout * cin / groups * kernel)
                .map(|i| val(i) * 0.2)
                .collect();
            let mut ts = HashMap::new();
            ts.insert("weight".into(), Tensor::from_vec(w, shape, &dev)?);
            let b: Vec<f32> = (0..cout).map(|i| val(i + 7)).collect();
            ts.insert("bias".into(), Tensor::from_vec(b, cout, &dev)?);
            let conv = Conv1d::load(VarBuilder::from_tensors(ts.clone(), DType::F32, &dev), spec)?;
            let frames = 61;
            let x: Vec<f32> = (0..2 * cin * frames).map(|i| val(i + 3)).collect();
            let x = Tensor::from_vec(x, (2, cin, frames), &dev)?;
            let want = x
                .conv1d(&ts["weight"], 0, stride, dilation, groups)?
                .broadcast_add(&ts["bias"].reshape((1, cout, 1))?)?;
            let diff = |got: &Tensor| -> Result<f32> {
                assert_eq!(got.dims(), want.dims());
                (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()
            };
            let what = format!("k{kernel} d{dilation} g{groups} s{stride}");
            let d = diff(&conv.forward(&x)?)?;
            assert!(d < 1e-4, "{what}: {d}");
            // Causal streaming over the input with its left padding cut off again.
            let pad = spec.receptive_field() - stride;
            let mut pending = Some(x.narrow(2, 0, pad)?);
            let mut parts = Vec::new();
            for start in (pad..frames).step_by(9) {
                let n = 9.min(frames - start);
                parts.push(conv.push_causal(&mut pending, &x.narrow(2, start, n)?)?);
            }
            let d = diff(&Tensor::cat(&parts, 2)?)?;
            assert!(d < 1e-4, "{what}, streamed: {d}");
        }
        Ok(())
    }

    /// A SnakeBeta over `channels` with varied α and β.
    fn test_snake(channels: usize) -> Result<SnakeBeta> {
        let dev = Device::Cpu;
        let val = |i: usize| ((i * 7919 % 101) as f32 / 50.0) - 1.0;
        let mut params = HashMap::new();
        let alpha: Vec<f32> = (0..channels).map(|i| val(i + 1) * 0.5).collect();
        let beta: Vec<f32> = (0..channels).map(|i| val(i + 2) * 0.5).collect();
        params.insert("alpha".into(), Tensor::from_vec(alpha, channels, &dev)?);
        params.insert("beta".into(), Tensor::from_vec(beta, channels, &dev)?);
        SnakeBeta::load(VarBuilder::from_tensors(params, DType::F32, &dev), channels)
    }

    /// A causal convolution of SnakeBeta(x), streamed with the activation written into its
    /// input buffer, gives the bits of the activation then the plain streamed convolution,
    /// chunk by chunk from a fresh stream (empty chunks too): a long dilated filter, a short
    /// one, and a 1×1 one (its no-copy path).
    #[test]
    fn causal_push_after_an_activation_equals_the_two_ops() -> Result<()> {
        let dev = Device::Cpu;
        let val = |i: usize| ((i * 7919 % 101) as f32 / 50.0) - 1.0;
        let (cin, cout) = (24, 20);
        let act = test_snake(cin)?;
        for (kernel, dilation) in [(7, 3), (3, 1), (1, 1)] {
            let mut ts = HashMap::new();
            let w: Vec<f32> = (0..cout * cin * kernel).map(|i| val(i) * 0.2).collect();
            ts.insert(
                "weight".into(),
                Tensor::from_vec(w, (cout, cin, kernel), &dev)?,
            );
            let b: Vec<f32> = (0..cout).map(|i| val(i + 7)).collect();
            ts.insert("bias".into(), Tensor::from_vec(b, cout, &dev)?);
            let spec = Conv1dSpec {
                dilation,
                ..Conv1dSpec::new(cin, cout, kernel)
            };
            let conv = Conv1d::load(VarBuilder::from_tensors(ts, DType::F32, &dev), spec)?;
            let frames = 50;
            let x: Vec<f32> = (0..2 * cin * frames).map(|i| val(i + 3) * 3.0).collect();
            let x = Tensor::from_vec(x, (2, cin, frames), &dev)?;
            let (mut fused, mut plain) = (None, None);
            let mut start = 0;
            for n in [4, 0, 1, 13, 32] {
                let chunk = x.narrow(2, start, n)?;
                start += n;
                let got = conv.push_causal_after(&mut fused, &chunk, Some(&act))?;
                let want = conv.push_causal(&mut plain, &act.forward(&chunk)?)?;
                assert_eq!(got.dims(), want.dims(), "k{kernel} d{dilation}");
                let (got, want) = (got.flatten_all()?, want.flatten_all()?);
                assert_eq!(
                    got.to_vec1::<f32>()?,
                    want.to_vec1::<f32>()?,
                    "k{kernel} d{dilation}, chunk of {n}"
                );
            }
        }
        Ok(())
    }

    /// residual + conv(SnakeBeta(x)) in one pass equals the three ops, for lengths below,
    /// at and across time blocks (96 channels: blocks of 352 samples; a short input's panels
    /// shared out across tasks) and a batch of two; a filter wider than 1×1 is refused.
    #[test]
    fn snake_pointwise_residual_equals_the_three_ops() -> Result<()> {
        let dev = Device::Cpu;
        let val = |i: usize| ((i * 7919 % 101) as f32 / 50.0) - 1.0;
        let (cin, cout) = (96, 40);
        let mut ts = HashMap::new();
        let w: Vec<f32> = (0..cout * cin).map(|i| val(i) * 0.1).collect();
        ts.insert("weight".into(), Tensor::from_vec(w, (cout, cin, 1), &dev)?);
        let b: Vec<f32> = (0..cout).map(|i| val(i + 7)).collect();
        ts.insert("bias".into(), Tensor::from_vec(b, cout, &dev)?);
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        let conv = Conv1d::load(vb, Conv1dSpec::new(cin, cout, 1))?;
        let act = test_snake(cin)?;
        for frames in [1, 17, 352, 700] {
            let x: Vec<f32> = (0..2 * cin * frames).map(|i| val(i + 3) * 3.0).collect();
            let x = Tensor::from_vec(x, (2, cin, frames), &dev)?;
            let r: Vec<f32> = (0..2 * cout * frames).map(|i| val(i + 5)).collect();
            let residual = Tensor::from_vec(r, (2, cout, frames), &dev)?;
            let want = (&residual + conv.forward(&act.forward(&x)?)?)?;
            let got = conv.forward_snake_residual(&act, &x, &residual)?;
            assert_eq!(got.dims(), want.dims());
            let d = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "{frames} frames: {d}");
        }
        let wide = Conv1d::load(
            VarBuilder::zeros(DType::F32, &dev),
            Conv1dSpec::new(cin, cout, 3),
        )?;
        let x = Tensor::zeros((1, cin, 8), DType::F32, &dev)?;
        let residual = Tensor::zeros((1, cout, 6), DType::F32, &dev)?;
        assert!(wide.forward_snake_residual(&act, &x, &residual).is_err());
        Ok(())
    }

    /// The GEMM form equals candle's `conv_transpose1d` with the last `kernel − stride`
    /// outputs dropped, in one pass and fed in chunks, for kernels that are and are not a
    /// multiple of the stride, and for one large enough to run on several threads.
    #[test]
    fn causal_transposed_conv_equals_the_definition() -> Result<()> {
        let dev = Device::Cpu;
        let val = |i: usize| ((i * 7919 % 101) as f32 / 50.0) - 1.0;
        for (cin, cout, frames, kernel, stride) in [
            (3, 4, 9, 2, 2),
            (3, 4, 9, 4, 2),
            (3, 4, 9, 5, 2),
            (3, 4, 9, 3, 1),
            (3, 4, 9, 16, 8),
            (64, 48, 40, 10, 5),
        ] {
            let w: Vec<f32> = (0..cin * cout * kernel).map(val).collect();
            let b: Vec<f32> = (0..cout).map(|i| val(i + 50)).collect();
            let mut ts = HashMap::new();
            ts.insert(
                "weight".into(),
                Tensor::from_vec(w, (cin, cout, kernel), &dev)?,
            );
            ts.insert("bias".into(), Tensor::from_vec(b, cout, &dev)?);
            let vb = VarBuilder::from_tensors(ts.clone(), DType::F32, &dev);
            let conv = CausalConvTranspose1d::load(vb, cin, cout, kernel, stride)?;
            let x: Vec<f32> = (0..cin * frames).map(|i| val(i + 99)).collect();
            let x = Tensor::from_vec(x, (1, cin, frames), &dev)?;
            let want = x
                .conv_transpose1d(&ts["weight"], 0, 0, stride, 1, 1)?
                .narrow(2, 0, frames * stride)?
                .broadcast_add(&ts["bias"].reshape((1, cout, 1))?)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for split in [frames, 1, 4] {
                let mut tail = None;
                let mut parts = Vec::new();
                for start in (0..frames).step_by(split) {
                    let n = split.min(frames - start);
                    parts.push(conv.push(&mut tail, &x.narrow(2, start, n)?)?);
                }
                let got = Tensor::cat(&parts, 2)?.flatten_all()?.to_vec1::<f32>()?;
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() < 1e-4,
                        "k{kernel} s{stride} split {split}: {g} vs {w}"
                    );
                }
            }
        }
        Ok(())
    }

    /// The causal stem fed in chunks of any size equals one pass, which equals the
    /// definition: left padding only and stride-2 outputs at even conv1 frames.
    #[test]
    fn causal_stem_chunks_equal_one_pass() -> Result<()> {
        let dev = Device::Cpu;
        let (mels, dim, frames) = (3, 4, 23);
        let val = |i: usize| ((i * 7919 % 101) as f32 / 50.0) - 1.0;
        let mut ts = HashMap::new();
        let tensor = |n: usize, shape: &[usize], off: usize| {
            Tensor::from_vec((0..n).map(|i| val(i + off)).collect(), shape, &dev)
        };
        ts.insert(
            "a.weight".into(),
            tensor(dim * mels * 3, &[dim, mels, 3], 0)?,
        );
        ts.insert("a.bias".into(), tensor(dim, &[dim], 5)?);
        ts.insert("b.weight".into(), tensor(dim * dim * 3, &[dim, dim, 3], 9)?);
        ts.insert("b.bias".into(), tensor(dim, &[dim], 13)?);
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        let stem = ConvStem::load_causal(vb.pp("a"), vb.pp("b"), mels, dim)?;
        let mel = tensor(mels * frames, &[1, mels, frames], 17)?;
        let [a1, a2] = stem.forward_stages(&mel)?;
        assert_eq!(a1.dims(), &[1, dim, frames]);
        assert_eq!(a2.dims(), &[1, dim, frames / 2]);
        // Definition: a1 from left-padded mel, a2 from left-padded a1 with stride 2.
        let padded = Tensor::cat(&[&Tensor::zeros((1, mels, 2), DType::F32, &dev)?, &mel], 2)?;
        let want1 = gelu_erf(&stem.conv1.forward(&padded)?)?;
        let padded1 = Tensor::cat(&[&Tensor::zeros((1, dim, 1), DType::F32, &dev)?, &want1], 2)?;
        let want2 = gelu_erf(&stem.conv2.forward(&padded1)?)?;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        assert!(diff(&a1, &want1)? < 1e-6);
        assert!(diff(&a2, &want2)? < 1e-6);
        for sizes in [[1, 1, 1, 20], [5, 2, 7, 9], [2, 3, 18, 0]] {
            let mut state = ConvStemState::default();
            let (mut parts1, mut parts2, mut at) = (Vec::new(), Vec::new(), 0);
            for n in sizes {
                let [p1, p2] = stem.push(&mut state, &mel.narrow(2, at, n)?)?;
                parts1.push(p1);
                parts2.push(p2);
                at += n;
            }
            assert!(diff(&Tensor::cat(&parts1, 2)?, &a1)? < 1e-6, "{sizes:?}");
            assert!(diff(&Tensor::cat(&parts2, 2)?, &a2)? < 1e-6, "{sizes:?}");
        }
        Ok(())
    }
}
