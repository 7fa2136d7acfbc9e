//! Activations: SnakeBeta (learned parameters) and the ELU of SEANet encoders, each one fused
//! CPU pass.

use crate::kernels::ops::{contiguous_f32, GeluErf, SnakeBetaOp};
use crate::kernels::softmax::exp_non_positive;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};
use candle_nn::VarBuilder;

/// SnakeBeta (BigVGAN): `x + sin²(x · eᵅ) / (eᵝ + 1e-9)` per channel of (batch, channels,
/// time), with `alpha` and `beta` stored in log scale. On CPU one fused pass with a
/// polynomial sin² ([`crate::kernels::ops::sin_squared`]): codec decoders apply it to
/// millions of samples per second of audio.
#[derive(Clone, Debug)]
pub struct SnakeBeta {
    /// eᵅ and 1 / (eᵝ + 1e-9), on the host for the fused kernel and as (1, C, 1) tensors.
    a: Vec<f32>,
    b: Vec<f32>,
    a_t: Tensor,
    b_t: Tensor,
}

impl SnakeBeta {
    /// Loads `alpha` and `beta` `[channels]`.
    pub fn load(vb: VarBuilder, channels: usize) -> Result<Self> {
        let get =
            |name| vb.get_with_hints_dtype(channels, name, candle_nn::Init::Const(0.), DType::F32);
        let a_t = get("alpha")?.exp()?;
        let b_t = (get("beta")?.exp()? + 1e-9)?.recip()?;
        Ok(Self {
            a: a_t.to_vec1()?,
            b: b_t.to_vec1()?,
            a_t: a_t.reshape((1, channels, 1))?,
            b_t: b_t.reshape((1, channels, 1))?,
        })
    }

    /// eᵅ and 1 / (eᵝ + ε) per channel, for kernels that fuse the activation.
    pub(crate) fn params(&self) -> (&[f32], &[f32]) {
        (&self.a, &self.b)
    }

    /// x: (batch, channels, time) → the same shape.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let x = x.contiguous()?;
            return x.apply_op1_no_bwd(&SnakeBetaOp {
                a: &self.a,
                b: &self.b,
                prefix: None,
            });
        }
        let s = x.broadcast_mul(&self.a_t)?.sin()?.sqr()?;
        x + s.broadcast_mul(&self.b_t)?
    }

    /// `cat([prefix, self(x)], 2)`: prefix (batch, channels, p) as it is, then the activated x
    /// (batch, channels, time). On the CPU in one pass, for a streaming convolution's input
    /// buffer (its pending frames, then the new ones).
    pub fn forward_after(&self, prefix: &Tensor, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 && prefix.dtype() == DType::F32 {
            let (batch, channels, _) = x.dims3()?;
            let (pb, pc, _) = prefix.dims3()?;
            if (pb, pc) != (batch, channels) {
                candle_core::bail!(
                    "snake-beta: a prefix of shape {:?} before x of shape {:?}",
                    prefix.dims(),
                    x.dims()
                );
            }
            let prefix = prefix.flatten_all()?.to_vec1::<f32>()?;
            return x.contiguous()?.apply_op1_no_bwd(&SnakeBetaOp {
                a: &self.a,
                b: &self.b,
                prefix: Some(&prefix),
            });
        }
        Tensor::cat(&[prefix, &self.forward(x)?], 2)
    }
}

/// Exact (erf) GELU, `x · (1 + erf(x / √2)) / 2`: on the CPU in f32 one parallel pass with a
/// vectorised erf (|error| ≤ 1.5e-7, the form of PyTorch's CPU kernel), elsewhere candle's.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1_no_bwd(&GeluErf);
    }
    x.gelu_erf()
}

/// ELU (α = 1, `torch.nn.ELU()`: x for x > 0, eˣ − 1 otherwise) of x (batch, channels, time)
/// with `left` and `right` zero frames added on the time axis: the input of a zero-padded
/// convolution after an ELU (ELU(0) = 0, so padding before or after is the same). On CPU one
/// parallel pass with a polynomial eˣ that vectorises (|error| ≤ 2e-7): Mimi's encoder applies
/// it to 15 M values per second of audio, where candle's scalar ELU and a separate padding copy
/// took most of the encoder's time.
pub fn elu_padded(x: &Tensor, left: usize, right: usize) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1_no_bwd(&EluPadded { left, right });
    }
    x.pad_with_zeros(D::Minus1, left, right)?.elu(1.0)
}

struct EluPadded {
    left: usize,
    right: usize,
}

impl CustomOp1 for EluPadded {
    fn name(&self) -> &'static str {
        "elu-padded"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let x = contiguous_f32("elu-padded", s, l)?;
        let mut dims = l.dims().to_vec();
        let time = dims.pop().unwrap_or(1);
        let width = self.left + time + self.right;
        let mut y = vec![0f32; x.len() / time.max(1) * width];
        if time > 0 {
            y.par_chunks_mut(width)
                .zip(x.par_chunks(time))
                .with_min_len((1 << 14) / time + 1)
                .for_each(|(y, x)| {
                    for (y, &x) in y[self.left..self.left + time].iter_mut().zip(x) {
                        *y = if x > 0.0 {
                            x
                        } else {
                            exp_non_positive(x) - 1.0
                        };
                    }
                });
        }
        dims.push(width);
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::ops::sin_squared;
    use candle_core::Device;
    use std::collections::HashMap;

    #[test]
    fn sin_squared_matches_f64() {
        for i in -600_000..=600_000 {
            let x = i as f32 * 1e-4;
            let want = (x as f64).sin().powi(2);
            let got = sin_squared(x) as f64;
            assert!((got - want).abs() < 3e-7, "sin²({x}) = {got}, want {want}");
        }
    }

    #[test]
    fn padded_elu_equals_candles() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0u32, 2 * 3 * 37, &dev)?
            .to_dtype(DType::F32)?
            .affine(0.173, -9.0)?
            .sin()?
            .affine(12.0, 0.0)?
            .reshape((2, 3, 37))?;
        for (left, right) in [(0, 0), (2, 0), (5, 3)] {
            let got = elu_padded(&x, left, right)?;
            let want = x.pad_with_zeros(2, left, right)?.elu(1.0)?;
            assert_eq!(got.dims(), want.dims());
            let d = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 3e-7, "({left}, {right}): {d}");
        }
        Ok(())
    }

    #[test]
    fn fused_kernel_equals_the_definition() -> Result<()> {
        let dev = Device::Cpu;
        let (c, t) = (5, 37);
        let mut ts = HashMap::new();
        ts.insert(
            "alpha".to_string(),
            Tensor::new(&[0.0f32, 0.5, -0.3, 1.2, -1.0], &dev)?,
        );
        ts.insert(
            "beta".to_string(),
            Tensor::new(&[0.1f32, -0.2, 0.0, 0.7, -1.5], &dev)?,
        );
        let act = SnakeBeta::load(VarBuilder::from_tensors(ts, DType::F32, &dev), c)?;
        let x = Tensor::arange(0u32, (2 * c * t) as u32, &dev)?
            .to_dtype(DType::F32)?
            .affine(0.013, -2.4)?
            .reshape((2, c, t))?;
        let got = act.forward(&x)?;
        let s = x.broadcast_mul(&act.a_t)?.sin()?.sqr()?;
        let want = (&x + s.broadcast_mul(&act.b_t)?)?;
        let d = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "fused SnakeBeta differs by {d}");
        Ok(())
    }
}
