//! Linear layer `y = x Wᵀ + b` with checkpoint-style `weight` [out, in] and optional `bias` [out].

use crate::kernels::gemv::{GemvF16, MAX_ROWS};
use candle_core::{DType, Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// A dense layer. Inputs of any rank are flattened to one GEMM: a batched matmul against a
/// broadcast weight is several times slower on CPU.
///
/// The weight keeps the dtype of its VarBuilder (f32, or f16 to halve the bytes a decoder step
/// reads); the bias and the activations are f32. An f16 weight times at most [`MAX_ROWS`] rows
/// (a decoder step) runs the f16 GEMV kernel; larger inputs convert the weight for one GEMM.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` [out_dim, in_dim] in `vb`'s dtype and, when `bias` is set, `bias`
    /// [out_dim] in f32.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get_with_hints_dtype(out_dim, "bias", Init::Const(0.), DType::F32)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// Builds a layer from existing tensors (e.g. a tied embedding used as the output head).
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// Multiplies weight and bias by `factor` (folding a constant scale into the layer).
    pub fn scaled(self, factor: f64) -> Result<Self> {
        Ok(Self {
            weight: (self.weight * factor)?,
            bias: self.bias.map(|b| b * factor).transpose()?,
        })
    }

    /// x: (..., in) -> (..., out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims
            .last()
            .expect("linear input has at least one dimension");
        let rows = x.elem_count() / in_dim;
        let x = x.contiguous()?.reshape((rows, in_dim))?;
        let y = if self.weight.dtype() == DType::F16
            && x.dtype() == DType::F32
            && x.device().is_cpu()
            && rows <= MAX_ROWS
        {
            match &self.bias {
                Some(b) => x.apply_op3_no_bwd(&self.weight, b, &GemvF16)?,
                None => x.apply_op2_no_bwd(&self.weight, &GemvF16)?,
            }
        } else {
            let y = if self.weight.dtype() != x.dtype() {
                x.matmul(&self.weight.to_dtype(x.dtype())?.t()?)?
            } else {
                x.matmul(&self.weight.t()?)?
            };
            match &self.bias {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            }
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty") = self.weight.dim(0)?;
        y.reshape(out_dims)
    }
}
