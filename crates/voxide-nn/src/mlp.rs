//! Feed-forward blocks: the GELU MLP of Whisper-style encoders/decoders and the SwiGLU of
//! Llama-style decoders.

use crate::kernels::machine::CycleBytes;
use crate::kernels::ops::{GeluErfInPlace, SiluMul};
use crate::linear::{Linear, LinearStack, WeightFormat};
use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;

/// Most rows of x per pass through [`GeluMlp`]: fc1's output is then ≤ 256 × ffn (1.5 MB for
/// Whisper tiny, 5 MB for large-v3, against 9 and 30 MB for a whole window).
const ROWS_PER_PASS: usize = 256;

/// `fc2(gelu_erf(fc1(x)))` with biases (Whisper: fc1 [ffn, d], fc2 [d, ffn]).
#[derive(Clone, Debug)]
pub struct GeluMlp {
    fc1: Linear,
    fc2: Linear,
}

impl GeluMlp {
    /// Loads `fc1` and `fc2` (both with bias) from `vb`.
    pub fn load(vb: VarBuilder, dim: usize, ffn_dim: usize) -> Result<Self> {
        Self::load_with_bias(vb, dim, ffn_dim, true)
    }

    /// Loads `fc1` and `fc2`, both with or both without a bias (Mimi's transformer: without).
    pub fn load_with_bias(vb: VarBuilder, dim: usize, ffn_dim: usize, bias: bool) -> Result<Self> {
        Ok(Self {
            fc1: Linear::load(vb.pp("fc1"), dim, ffn_dim, bias)?,
            fc2: Linear::load(vb.pp("fc2"), ffn_dim, dim, bias)?,
        })
    }

    /// The block with its two matrices stored as `format`.
    pub fn to_format(self, format: WeightFormat) -> Result<Self> {
        Ok(Self {
            fc1: self.fc1.to_format(format)?,
            fc2: self.fc2.to_format(format)?,
        })
    }

    /// fc1 and fc2.
    pub fn linears_mut(&mut self) -> [&mut Linear; 2] {
        [&mut self.fc1, &mut self.fc2]
    }

    /// What one step reads of the two matrices, by residency.
    pub fn read_bytes(&self) -> CycleBytes {
        self.fc1.read_bytes() + self.fc2.read_bytes()
    }

    /// x: (..., d) -> (..., d). GELU is the exact erf form, as in the references; on CPU it
    /// runs in place on fc1's fresh output (no second copy of the widest activation). More than
    /// `ROWS_PER_PASS` rows run in passes, so that fc1's output, the widest activation of a
    /// layer (an encoder window's: 1500 × ffn), is never whole.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let rows = x.elem_count() / d.max(1);
        if rows <= ROWS_PER_PASS {
            return self.forward_rows(x);
        }
        let flat = x.reshape((rows, d))?;
        let passes = (0..rows)
            .step_by(ROWS_PER_PASS)
            .map(|r0| self.forward_rows(&flat.narrow(0, r0, ROWS_PER_PASS.min(rows - r0))?))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&passes, 0)?.reshape(x.shape())
    }

    fn forward_rows(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(x)?;
        let h = if h.device().is_cpu() && h.dtype() == DType::F32 && h.is_contiguous() {
            h.inplace_op1(&GeluErfInPlace)?;
            h
        } else {
            h.gelu_erf()?
        };
        self.fc2.forward(&h)
    }
}

/// `down(silu(gate(x)) * up(x))`: no biases in Llama / Mistral decoders; Voxtral's encoder has
/// one on `down` only. gate and up run as one product ([`LinearStack`]).
#[derive(Clone, Debug)]
pub struct SwiGlu {
    /// [gate; up].
    gate_up: LinearStack,
    down: Linear,
    hidden: usize,
}

impl SwiGlu {
    /// Loads the three projections under the given checkpoint names (e.g. `gate_proj`, `up_proj`,
    /// `down_proj` for HF layouts, `w1`, `w3`, `w2` for Mistral's), `down` with a bias if asked.
    pub fn load(
        vb: VarBuilder,
        dim: usize,
        hidden: usize,
        [gate, up, down]: [&str; 3],
        down_bias: bool,
    ) -> Result<Self> {
        let gate = Linear::load(vb.pp(gate), dim, hidden, false)?;
        let up = Linear::load(vb.pp(up), dim, hidden, false)?;
        Ok(Self {
            gate_up: LinearStack::new(vec![gate, up])?,
            down: Linear::load(vb.pp(down), hidden, dim, down_bias)?,
            hidden,
        })
    }

    /// The block with its matrices stored as `format`.
    pub fn to_format(self, format: WeightFormat) -> Result<Self> {
        Ok(Self {
            gate_up: self.gate_up.to_format(format)?,
            down: self.down.to_format(format)?,
            hidden: self.hidden,
        })
    }

    /// [gate; up] (one matrix, or two of different formats) and down.
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.gate_up
            .linears_mut()
            .iter_mut()
            .chain([&mut self.down])
    }

    /// What one step reads of the matrices, by residency.
    pub fn read_bytes(&self) -> CycleBytes {
        self.gate_up.read_bytes() + self.down.read_bytes()
    }

    /// x: (..., d) -> (..., d).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate_up = self.gate_up.forward(x)?;
        let h = if gate_up.device().is_cpu() && gate_up.dtype() == DType::F32 {
            gate_up.contiguous()?.apply_op1_no_bwd(&SiluMul)?
        } else {
            let gated = candle_nn::ops::silu(&gate_up.narrow(D::Minus1, 0, self.hidden)?)?;
            (gated * gate_up.narrow(D::Minus1, self.hidden, self.hidden)?)?
        };
        self.down.forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    /// The GELU ops, in place and out of place (their vectorised erf), against the definition
    /// in f64 over −7…7, and the row kernel on every instruction set's path (the tensor ops
    /// take the widest): within 1e-6 of |x| + 1e-7.
    #[test]
    fn gelu_ops_equal_the_definition() -> Result<()> {
        let dev = Device::Cpu;
        let v: Vec<f32> = (0..70_007).map(|i| (i as f32 - 35_000.0) * 2e-4).collect();
        let want: Vec<f64> = v
            .iter()
            .map(|&x| {
                let x = x as f64;
                x * 0.5 * (1.0 + candle_core::cpu::erf::erf_f64(x / std::f64::consts::SQRT_2))
            })
            .collect();
        let check = |got: &[f32], what: &str| {
            for ((&g, &w), &x) in got.iter().zip(&want).zip(&v) {
                let bound = 1e-6 * x.abs() as f64 + 1e-7;
                assert!(
                    (g as f64 - w).abs() <= bound,
                    "{what}: gelu({x}) = {g}, want {w}"
                );
            }
        };
        let x = Tensor::from_vec(v.clone(), (7, 10_001), &dev)?;
        let out_of_place = crate::activation::gelu_erf(&x)?;
        check(
            &out_of_place.flatten_all()?.to_vec1::<f32>()?,
            "out of place",
        );
        x.inplace_op1(&GeluErfInPlace)?;
        check(&x.flatten_all()?.to_vec1::<f32>()?, "in place");
        for isa in crate::kernels::simd::Isa::available() {
            let mut row = v.clone();
            crate::kernels::ops::gelu_erf_row(isa, &mut row);
            check(&row, &format!("{isa:?}"));
        }
        Ok(())
    }

    /// More rows than a pass (and a last, shorter pass): the same as all rows at once.
    #[test]
    fn gelu_mlp_in_passes_equals_one_pass() -> Result<()> {
        let dev = Device::Cpu;
        let (d, ffn, rows) = (8, 24, 2 * ROWS_PER_PASS + 37);
        let values = |n: usize, seed: f32| -> Vec<f32> {
            (0..n)
                .map(|i| ((i as f32 * 0.37 + seed).sin()) * 0.5)
                .collect()
        };
        let mut ts = HashMap::new();
        ts.insert(
            "fc1.weight".to_string(),
            Tensor::from_vec(values(ffn * d, 1.0), (ffn, d), &dev)?,
        );
        ts.insert(
            "fc1.bias".to_string(),
            Tensor::from_vec(values(ffn, 2.0), ffn, &dev)?,
        );
        ts.insert(
            "fc2.weight".to_string(),
            Tensor::from_vec(values(d * ffn, 3.0), (d, ffn), &dev)?,
        );
        ts.insert(
            "fc2.bias".to_string(),
            Tensor::from_vec(values(d, 4.0), d, &dev)?,
        );
        let mlp = GeluMlp::load(VarBuilder::from_tensors(ts, DType::F32, &dev), d, ffn)?;
        let x = Tensor::from_vec(values(rows * d, 5.0), (1, rows, d), &dev)?;
        let got = mlp.forward(&x)?;
        assert_eq!(got.dims(), &[1, rows, d]);
        let want = mlp.forward_rows(&x)?.flatten_all()?.to_vec1::<f32>()?;
        let got = got.flatten_all()?.to_vec1::<f32>()?;
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
        }
        Ok(())
    }

    /// The fused SiLU · up equals candle's silu and multiply over rows of several widths,
    /// values far in both tails included (e^(−|g|) never overflows).
    #[test]
    fn fused_silu_mul_equals_candles() -> Result<()> {
        let dev = Device::Cpu;
        for (rows, h) in [(1, 3072), (3, 5), (40, 700)] {
            let mut v: Vec<f32> = (0..rows * 2 * h)
                .map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 40.0)
                .collect();
            v[0] = -95.0;
            v[1] = 95.0;
            let x = Tensor::from_vec(v, (rows, 2 * h), &dev)?;
            let got = x.apply_op1_no_bwd(&SiluMul)?;
            let want = (candle_nn::ops::silu(&x.narrow(1, 0, h)?)? * x.narrow(1, h, h)?)?;
            let bound = (want.abs()? + 1.0)?.affine(1e-6, 0.0)?;
            let excess = ((got - &want)?.abs()? - bound)?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(excess <= 0.0, "rows {rows} h {h}: {excess}");
        }
        assert!(Tensor::zeros((2, 5), DType::F32, &dev)?
            .apply_op1_no_bwd(&SiluMul)
            .is_err());
        Ok(())
    }

    #[test]
    fn swiglu_matches_definition() -> Result<()> {
        let dev = Device::Cpu;
        let mut ts = HashMap::new();
        ts.insert(
            "w1.weight".to_string(),
            Tensor::new(&[[1.0f32, 0.0], [0.5, -1.0]], &dev)?,
        );
        ts.insert(
            "w3.weight".to_string(),
            Tensor::new(&[[2.0f32, 1.0], [0.0, 1.0]], &dev)?,
        );
        ts.insert(
            "w2.weight".to_string(),
            Tensor::new(&[[1.0f32, 1.0], [-1.0, 2.0]], &dev)?,
        );
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        let mlp = SwiGlu::load(vb, 2, 2, ["w1", "w3", "w2"], false)?;
        let x = [0.3f32, -0.7];
        let got = mlp.forward(&Tensor::new(&[x], &dev)?)?.to_vec2::<f32>()?;
        let silu = |v: f32| v / (1.0 + (-v).exp());
        let g = [silu(x[0]), silu(0.5 * x[0] - x[1])];
        let u = [2.0 * x[0] + x[1], x[1]];
        let h = [g[0] * u[0], g[1] * u[1]];
        let want = [h[0] + h[1], -h[0] + 2.0 * h[1]];
        for i in 0..2 {
            assert!((got[0][i] - want[i]).abs() < 1e-6);
        }
        Ok(())
    }
}
