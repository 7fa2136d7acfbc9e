//! Normalisation layers, computed in f32 like the references.

use crate::kernels::ops::RmsNormOp;
use candle_core::{CpuStorage, DType, Result, Storage, Tensor};
use candle_nn::{Init, VarBuilder};

/// Norm parameters are vectors: always f32, whatever the dtype of the matrices.
fn vector(vb: &VarBuilder, dim: usize, name: &str) -> Result<Tensor> {
    vb.get_with_hints_dtype(dim, name, Init::Const(1.), DType::F32)
}

/// LayerNorm with `weight` and `bias` `[dim]` (Whisper: eps 1e-5).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of shape `[dim]`.
    pub fn load(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vector(&vb, dim, "weight")?,
            bias: vector(&vb, dim, "bias")?,
            eps: eps as f32,
        })
    }

    /// x: (..., dim) -> (..., dim).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps)
    }
}

/// RMSNorm with a learned scale `weight` `[dim]` (Llama-style decoders).
#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// Loads `weight` of shape `[dim]`.
    pub fn load(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vector(&vb, dim, "weight")?,
            eps: eps as f32,
        })
    }

    /// The norm with its output multiplied by `factor` (folded into the weight).
    pub fn scaled(self, factor: f64) -> Result<Self> {
        Ok(Self {
            weight: (self.weight * factor)?,
            ..self
        })
    }

    /// Runs `f` on the weights as plain values (CPU), with epsilon, for a kernel that norms
    /// inside a larger pass.
    pub fn with_values<R>(&self, f: impl FnOnce(&[f32], f32) -> Result<R>) -> Result<R> {
        let (storage, layout) = self.weight.storage_and_layout();
        match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(w)), Some((a, b))) => f(&w[a..b], self.eps),
            _ => candle_core::bail!("RmsNorm::with_values: the weights are not f32 on the CPU"),
        }
    }

    /// x: (..., dim) -> (..., dim).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            x.contiguous()?
                .apply_op2_no_bwd(&self.weight, &RmsNormOp { eps: self.eps })
        } else {
            candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn layer_norm_matches_definition() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1.0f32, 2.0, 4.0, 8.0], [-1.0, 0.5, 0.0, 3.0]], &dev)?;
        let w = Tensor::new(&[1.0f32, 0.5, 2.0, -1.0], &dev)?;
        let b = Tensor::new(&[0.1f32, 0.2, 0.3, 0.4], &dev)?;
        let ln = LayerNorm {
            weight: w.clone(),
            bias: b.clone(),
            eps: 1e-5,
        };
        let got = ln.forward(&x)?.to_vec2::<f32>()?;
        for (row, out) in x.to_vec2::<f32>()?.iter().zip(&got) {
            let mean = row.iter().sum::<f32>() / 4.0;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 4.0;
            for i in 0..4 {
                let want = (row[i] - mean) / (var + 1e-5).sqrt() * w.to_vec1::<f32>()?[i]
                    + b.to_vec1::<f32>()?[i];
                assert!((out[i] - want).abs() < 1e-5, "{} vs {want}", out[i]);
            }
        }
        Ok(())
    }

    #[test]
    fn rms_norm_matches_definition() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1.0f32, -2.0, 3.0, 0.5]], &dev)?;
        let w = Tensor::new(&[2.0f32, 1.0, 0.5, 1.5], &dev)?;
        let got = RmsNorm {
            weight: w.clone(),
            eps: 1e-6,
        }
        .forward(&x)?
        .to_vec2::<f32>()?;
        let row = [1.0f32, -2.0, 3.0, 0.5];
        let rms = (row.iter().map(|v| v * v).sum::<f32>() / 4.0 + 1e-6).sqrt();
        for i in 0..4 {
            let want = row[i] / rms * w.to_vec1::<f32>()?[i];
            assert!((got[0][i] - want).abs() < 1e-5);
        }
        Ok(())
    }

    #[test]
    fn rms_norm_of_every_width_and_row_count_matches_f64() -> Result<()> {
        let dev = Device::Cpu;
        for (rows, width) in [(1, 1), (3, 17), (16, 128), (1, 1024), (40, 3072), (700, 64)] {
            let x: Vec<f32> = (0..rows * width)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 97.0)
                .collect();
            let alpha: Vec<f32> = (0..width).map(|j| 0.5 + (j % 13) as f32 / 8.0).collect();
            let norm = RmsNorm {
                weight: Tensor::new(alpha.as_slice(), &dev)?,
                eps: 1e-6,
            };
            let got = norm
                .forward(&Tensor::from_vec(x.clone(), (1, rows, width), &dev)?)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for (r, row) in x.chunks(width).enumerate() {
                let mean = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / width as f64;
                let rms = (mean + 1e-6).sqrt();
                for (j, &v) in row.iter().enumerate() {
                    let want = v as f64 / rms * alpha[j] as f64;
                    let got = got[r * width + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                        "{rows}×{width} [{r}][{j}]: {got} vs {want}"
                    );
                }
            }
        }
        Ok(())
    }
}
