//! Preallocated key/value cache for autoregressive self-attention.
//!
//! Layout (batch, kv_heads, capacity, head_dim), allocated once per session; appending writes
//! in place, so a decoder step allocates nothing large (whisper.cpp does the same with its
//! `kv_self` buffers).

use candle_core::{DType, Device, Result, Tensor};

/// Keys and values of one attention layer for up to `capacity` positions.
#[derive(Clone, Debug)]
pub struct KvCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvCache {
    /// Allocates a zeroed cache of shape (batch, kv_heads, capacity, head_dim).
    pub fn new(
        batch: usize,
        kv_heads: usize,
        capacity: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = (batch, kv_heads, capacity, head_dim);
        Ok(Self {
            k: Tensor::zeros(shape, dtype, device)?,
            v: Tensor::zeros(shape, dtype, device)?,
            len: 0,
        })
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of positions.
    pub fn capacity(&self) -> usize {
        self.k.dim(2).unwrap_or(0)
    }

    /// Forgets every cached position (the buffers are kept).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Appends k, v of shape (batch, kv_heads, t, head_dim) and returns views of all cached
    /// positions, (batch, kv_heads, len, head_dim).
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        if self.len + t > self.capacity() {
            candle_core::bail!(
                "KV cache overflow: {} cached + {t} new positions exceed its capacity of {}",
                self.len,
                self.capacity()
            );
        }
        self.k
            .slice_set(&k.to_dtype(self.k.dtype())?, 2, self.len)?;
        self.v
            .slice_set(&v.to_dtype(self.v.dtype())?, 2, self.len)?;
        self.len += t;
        Ok((
            self.k.narrow(2, 0, self.len)?,
            self.v.narrow(2, 0, self.len)?,
        ))
    }

    /// Reorders the batch rows (beam search keeps the caches of the surviving beams).
    /// `rows[i]` is the old row that becomes row i.
    pub fn reorder(&mut self, rows: &[u32]) -> Result<()> {
        let idx = Tensor::new(rows, self.k.device())?;
        self.k = self.k.index_select(&idx, 0)?;
        self.v = self.v.index_select(&idx, 0)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_returns_all_positions_and_rejects_overflow() -> Result<()> {
        let dev = Device::Cpu;
        let mut cache = KvCache::new(1, 2, 3, 4, DType::F32, &dev)?;
        let a = Tensor::ones((1, 2, 2, 4), DType::F32, &dev)?;
        let b = (Tensor::ones((1, 2, 1, 4), DType::F32, &dev)? * 2.0)?;
        cache.append(&a, &a)?;
        let (k, _) = cache.append(&b, &b)?;
        assert_eq!(k.dims(), &[1, 2, 3, 4]);
        let first_head = k.narrow(1, 0, 1)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(
            first_head,
            vec![1., 1., 1., 1., 1., 1., 1., 1., 2., 2., 2., 2.]
        );
        assert!(cache.append(&b, &b).is_err());
        Ok(())
    }

    #[test]
    fn reorder_moves_rows() -> Result<()> {
        let dev = Device::Cpu;
        let mut cache = KvCache::new(2, 1, 2, 1, DType::F32, &dev)?;
        let k = Tensor::new(&[10f32, 20.], &dev)?.reshape((2, 1, 1, 1))?;
        cache.append(&k, &k)?;
        cache.reorder(&[1, 1])?;
        let (k, _) = cache.append(&k, &k)?;
        assert_eq!(k.flatten_all()?.to_vec1::<f32>()?, vec![20., 10., 20., 20.]);
        Ok(())
    }
}
