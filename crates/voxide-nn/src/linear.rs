//! Linear layer `y = x Wᵀ + b` with checkpoint-style `weight` [out, in] and optional `bias` [out].

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// A dense layer. Inputs of any rank are flattened to one GEMM: a batched matmul against a
/// broadcast weight is several times slower on CPU.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` [out_dim, in_dim] and, when `bias` is set, `bias` [out_dim] from `vb`.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// Builds a layer from existing tensors (e.g. a tied embedding used as the output head).
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The weight, [out, in].
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// x: (..., in) -> (..., out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims
            .last()
            .expect("linear input has at least one dimension");
        let rows = x.elem_count() / in_dim;
        let y = x
            .contiguous()?
            .reshape((rows, in_dim))?
            .matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty") = self.weight.dim(0)?;
        y.reshape(out_dims)
    }
}
