//! 1-D convolutions and the two-convolution audio stem shared by Whisper-style encoders.

use candle_core::{Result, Tensor};
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
}

/// Conv1d with `weight` [out, in, kernel] and `bias` [out].
#[derive(Clone, Debug)]
pub struct Conv1d {
    weight: Tensor,
    bias: Tensor,
    spec: Conv1dSpec,
}

impl Conv1d {
    /// Loads `weight` and `bias` from `vb`.
    pub fn load(vb: VarBuilder, spec: Conv1dSpec) -> Result<Self> {
        // Conv kernels stay f32 whatever the matrices' dtype: they are small and candle's
        // conv needs one dtype.
        let weight = vb.get_with_hints_dtype(
            (spec.out_channels, spec.in_channels, spec.kernel),
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
        Ok(Self { weight, bias, spec })
    }

    /// x: (batch, in, t) -> (batch, out, (t + 2·padding − kernel) / stride + 1).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv1d(&self.weight, self.spec.padding, self.spec.stride, 1, 1)?;
        y.broadcast_add(&self.bias.reshape((1, (), 1))?)
    }
}

/// `gelu(conv2(gelu(conv1(x))))`: conv1 keeps the frame rate (k 3, s 1, p 1), conv2 halves it
/// (k 3, s 2, p 1). Whisper's encoder and Voxtral's audio encoders start this way.
#[derive(Clone, Debug)]
pub struct ConvStem {
    conv1: Conv1d,
    conv2: Conv1d,
}

impl ConvStem {
    /// Loads `conv1` (n_mels → dim) and `conv2` (dim → dim) from `vb`.
    pub fn load(vb: VarBuilder, n_mels: usize, dim: usize) -> Result<Self> {
        let spec = |in_channels, stride| Conv1dSpec {
            in_channels,
            out_channels: dim,
            kernel: 3,
            stride,
            padding: 1,
        };
        Ok(Self {
            conv1: Conv1d::load(vb.pp("conv1"), spec(n_mels, 1))?,
            conv2: Conv1d::load(vb.pp("conv2"), spec(dim, 2))?,
        })
    }

    /// mel (batch, n_mels, frames) -> both activations: (batch, dim, frames) after conv1 and
    /// (batch, dim, frames / 2) after conv2.
    pub fn forward_stages(&self, mel: &Tensor) -> Result<[Tensor; 2]> {
        let a1 = self.conv1.forward(mel)?.gelu_erf()?;
        let a2 = self.conv2.forward(&a1)?.gelu_erf()?;
        Ok([a1, a2])
    }

    /// mel (batch, n_mels, frames) -> (batch, dim, frames / 2).
    pub fn forward(&self, mel: &Tensor) -> Result<Tensor> {
        let [_, out] = self.forward_stages(mel)?;
        Ok(out)
    }
}
