//! Rotary position embeddings in both published layouts.

use candle_core::{DType, Device, Result, Tensor};

/// How the two halves of each rotated pair are laid out in a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs are adjacent elements (2i, 2i+1): Mistral's native checkpoints, Meta's Llama.
    Interleaved,
    /// Pairs are (i, i + d/2): Hugging Face checkpoints ("rotate_half").
    RotateHalf,
}

/// Precomputed cos/sin tables, (max_positions, head_dim / 2).
#[derive(Clone, Debug)]
pub struct RotaryEmbedding {
    cos: Tensor,
    sin: Tensor,
    /// θ^(−2i/d) in f32, for positions past the table (an endless stream keeps counting).
    inv_freq: Vec<f32>,
    layout: RopeLayout,
}

impl RotaryEmbedding {
    /// Tables for `max_positions` positions with frequencies theta^(-2i/head_dim).
    pub fn new(
        head_dim: usize,
        max_positions: usize,
        theta: f64,
        layout: RopeLayout,
        device: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| (1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)) as f32)
            .collect();
        let inv_freq = inv.clone();
        let inv = Tensor::new(inv.as_slice(), device)?.reshape((1, half))?;
        let pos = Tensor::arange(0u32, max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_positions, 1))?;
        let angles = pos.broadcast_mul(&inv)?;
        Ok(Self {
            cos: angles.cos()?,
            sin: angles.sin()?,
            inv_freq,
            layout,
        })
    }

    /// How the rotated pairs lie in a head.
    pub fn layout(&self) -> RopeLayout {
        self.layout
    }

    /// cos and sin of positions offset..offset+t: (t, head_dim / 2) each, f32.
    pub fn tables(&self, offset: usize, t: usize) -> Result<(Tensor, Tensor)> {
        if offset + t <= self.cos.dim(0)? {
            return Ok((
                self.cos.narrow(0, offset, t)?,
                self.sin.narrow(0, offset, t)?,
            ));
        }
        // Same f32 arithmetic as the table: angle = position · inv_freq.
        let angles: Vec<f32> = (offset..offset + t)
            .flat_map(|p| self.inv_freq.iter().map(move |f| p as f32 * f))
            .collect();
        let shape = (t, self.inv_freq.len());
        let device = self.cos.device();
        Ok((
            Tensor::from_vec(angles.iter().map(|a| a.cos()).collect(), shape, device)?,
            Tensor::from_vec(angles.iter().map(|a| a.sin()).collect(), shape, device)?,
        ))
    }

    /// Rotates x: (batch, heads, t, head_dim) for positions offset..offset+t.
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (cos, sin) = self.tables(offset, x.dim(2)?)?;
        let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
        let x = x.contiguous()?;
        match self.layout {
            RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(&x, &cos, &sin),
            RopeLayout::RotateHalf => candle_nn::rotary_emb::rope(&x, &cos, &sin),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotate(x: &[f32], pos: usize, theta: f64, interleaved: bool) -> Vec<f32> {
        let d = x.len();
        let mut out = x.to_vec();
        for i in 0..d / 2 {
            let a = pos as f64 / theta.powf(2.0 * i as f64 / d as f64);
            let (c, s) = (a.cos() as f32, a.sin() as f32);
            let (p, q) = if interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + d / 2)
            };
            out[p] = x[p] * c - x[q] * s;
            out[q] = x[q] * c + x[p] * s;
        }
        out
    }

    #[test]
    fn both_layouts_match_the_definition() -> Result<()> {
        let dev = Device::Cpu;
        let x: Vec<f32> = (0..8).map(|i| (i as f32 * 0.37).sin()).collect();
        for (layout, interleaved) in [
            (RopeLayout::Interleaved, true),
            (RopeLayout::RotateHalf, false),
        ] {
            let rope = RotaryEmbedding::new(8, 16, 10000.0, layout, &dev)?;
            let xt = Tensor::new(x.as_slice(), &dev)?.reshape((1, 1, 1, 8))?;
            // Inside the table and past it.
            for pos in [5, 40] {
                let got = rope.apply(&xt, pos)?.flatten_all()?.to_vec1::<f32>()?;
                let want = rotate(&x, pos, 10000.0, interleaved);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-5, "{layout:?} at {pos}: {g} vs {w}");
                }
            }
        }
        Ok(())
    }
}
