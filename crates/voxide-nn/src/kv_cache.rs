//! Preallocated key/value cache for autoregressive self-attention.
//!
//! Layout (batch, kv_heads, capacity, head_dim), allocated once per session; appending writes
//! in place, so a decoder step allocates nothing large (whisper.cpp does the same with its
//! `kv_self` buffers).
//!
//! A sliding-window cache (Mistral-style attention, where a query sees only the last `window`
//! positions including itself) keeps counting positions forever in bounded memory: when the
//! buffer is full, the last `window - 1` entries move to the front (voxtral.c compacts its
//! encoder and decoder caches the same way), so the copy happens once every
//! `capacity - window + 1` positions instead of every step.

use crate::kernels::ops::to_dtype_contiguous;
use crate::linear::WeightFormat;
use candle_core::{DType, Device, Result, Tensor};
use half::vec::HalfBitsVecExt;
use half::{bf16, f16};

/// Positions a growing cache allocates before it first grows.
const INITIAL_CAPACITY: usize = 512;

/// The precision a decoder's KV caches take by default beside weights stored as `weights`: f32
/// beside f32 (the parity fixtures), else f16 — half the bytes attention reads per step at
/// every position (llama.cpp's default too; f16 keeps three more mantissa bits than bf16).
pub fn default_kv_dtype(weights: WeightFormat) -> DType {
    match weights {
        WeightFormat::F32 => DType::F32,
        _ => DType::F16,
    }
}

/// A zeroed buffer of `shape` that costs nothing until it is written: allocated zeroed
/// (calloc), a large block comes fresh from the OS, whose pages stay its shared zero page
/// until a position is first written, so a cache sized for its limit commits only what a
/// request writes. candle's `Tensor::zeros` writes every f16 and bf16 element
/// (`vec![f16::ZERO; n]`): a Qwen3-TTS talker sized for 2048 frames wrote 236 MB before its
/// first position, 70–150 ms of a request's first audio (PERFORMANCE.md #193). candle already
/// allocates f32 zeros zeroed, and other devices keep its zeros.
fn zeroed(shape: (usize, usize, usize, usize), dtype: DType, device: &Device) -> Result<Tensor> {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    match (device, dtype) {
        (Device::Cpu, DType::F16) => {
            Tensor::from_vec(vec![0u16; n].reinterpret_into::<f16>(), shape, device)
        }
        (Device::Cpu, DType::BF16) => {
            Tensor::from_vec(vec![0u16; n].reinterpret_into::<bf16>(), shape, device)
        }
        _ => Tensor::zeros(shape, dtype, device),
    }
}

/// Keys and values of one attention layer for up to `capacity` positions.
#[derive(Clone, Debug)]
pub struct KvCache {
    k: Tensor,
    v: Tensor,
    len: usize,
    window: Option<usize>,
    /// The buffers grow up to this many positions (sliding caches start small).
    max_capacity: usize,
}

/// What one [`KvCache::append`] call returns: the keys and values a query block attends to,
/// (batch, kv_heads, past + t, head_dim), and how many of them precede the new block.
#[derive(Clone, Debug)]
pub struct KvView {
    pub k: Tensor,
    pub v: Tensor,
    pub past: usize,
    /// The sliding window, when the cache has one: the caller masks keys older than it.
    pub window: Option<usize>,
}

impl KvCache {
    /// A cache of shape (batch, kv_heads, capacity, head_dim), zeros. On the CPU the zeros are
    /// allocated, not written: where the allocator takes them fresh from the OS, a page is
    /// committed only when a position in it is first written.
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
            k: zeroed(shape, dtype, device)?,
            v: zeroed(shape, dtype, device)?,
            len: 0,
            window: None,
            max_capacity: capacity,
        })
    }

    /// A cache whose queries see only the last `window` positions (themselves included),
    /// taking blocks of up to `headroom` positions. It starts small and grows up to
    /// `window − 1 + headroom` positions, so a short stream never allocates the whole window.
    pub fn sliding(
        kv_heads: usize,
        window: usize,
        headroom: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if window == 0 || headroom == 0 {
            candle_core::bail!("sliding KV cache: window {window} and headroom {headroom}");
        }
        let max_capacity = window - 1 + headroom;
        let mut cache = Self::new(
            1,
            kv_heads,
            max_capacity.min(INITIAL_CAPACITY),
            head_dim,
            dtype,
            device,
        )?;
        cache.window = Some(window);
        cache.max_capacity = max_capacity;
        Ok(cache)
    }

    /// A full-attention cache for `batch` sequences whose length is known only as it goes (a
    /// long prompt of audio tokens): it starts small and doubles up to `max_capacity`.
    pub fn growable(
        batch: usize,
        kv_heads: usize,
        max_capacity: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut cache = Self::new(
            batch,
            kv_heads,
            max_capacity.min(INITIAL_CAPACITY),
            head_dim,
            dtype,
            device,
        )?;
        cache.max_capacity = max_capacity;
        Ok(cache)
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of keys and values a query at the newest position reads: the positions it sees
    /// (all cached ones, or the last `window`), as stored.
    pub fn attended_bytes(&self) -> usize {
        let dims = self.k.dims();
        let visible = self.window.map_or(self.len, |w| self.len.min(w));
        2 * dims[0] * dims[1] * visible * dims[3] * self.k.dtype().size_in_bytes()
    }

    /// Maximum number of positions.
    pub fn capacity(&self) -> usize {
        self.k.dim(2).unwrap_or(0)
    }

    /// An independent copy: the buffers are written in place, so a `clone` would share them.
    pub fn fork(&self) -> Result<Self> {
        Ok(Self {
            k: self.k.copy()?,
            v: self.v.copy()?,
            ..self.clone()
        })
    }

    /// Copies of the cached keys and values, (batch, kv_heads, len, head_dim) each: a prompt
    /// prefix that later requests seed their caches with ([`Self::append`]). Sliding caches
    /// may have dropped their oldest positions, so they have no such prefix.
    pub fn snapshot(&self) -> Result<(Tensor, Tensor)> {
        if self.window.is_some() {
            candle_core::bail!("a sliding KV cache holds no prefix to copy");
        }
        // Always copied: the buffers are written in place.
        let copy = |t: &Tensor| t.narrow(2, 0, self.len)?.force_contiguous();
        Ok((copy(&self.k)?, copy(&self.v)?))
    }

    /// Forgets every cached position (the buffers are kept).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Appends k, v of shape (batch, kv_heads, t, head_dim) and returns the keys and values
    /// the new block attends to: all cached positions, or with a sliding window the last
    /// `window - 1` older ones plus the block.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<KvView> {
        self.append_in_place(k.dim(2)?, |k_buf, v_buf, at| {
            k_buf.slice_set(&to_dtype_contiguous(k, k_buf.dtype())?, 2, at)?;
            v_buf.slice_set(&to_dtype_contiguous(v, v_buf.dtype())?, 2, at)
        })
    }

    /// [`Self::append`] for `t` positions that `write(k_buffer, v_buffer, at)` writes into the
    /// buffers (batch, kv_heads, capacity, head_dim) itself, at positions at..at + t (a
    /// decoder step's kernel writes its key and value there directly).
    pub fn append_in_place(
        &mut self,
        t: usize,
        write: impl FnOnce(&Tensor, &Tensor, usize) -> Result<()>,
    ) -> Result<KvView> {
        if self.len + t > self.capacity() && self.capacity() < self.max_capacity {
            self.grow(
                (self.len + t)
                    .max(2 * self.capacity())
                    .min(self.max_capacity),
            )?;
        }
        if let Some(window) = self.window {
            if self.len + t > self.capacity() {
                self.compact(window - 1)?;
            }
        }
        if self.len + t > self.capacity() {
            candle_core::bail!(
                "KV cache overflow: {} cached + {t} new positions exceed its capacity of {}",
                self.len,
                self.capacity()
            );
        }
        write(&self.k, &self.v, self.len)?;
        self.len += t;
        let visible = match self.window {
            Some(window) => self.len.min(window - 1 + t),
            None => self.len,
        };
        let first = self.len - visible;
        Ok(KvView {
            k: self.k.narrow(2, first, visible)?,
            v: self.v.narrow(2, first, visible)?,
            past: visible - t,
            window: self.window,
        })
    }

    /// Reallocates the buffers for `capacity` positions, keeping what is cached.
    fn grow(&mut self, capacity: usize) -> Result<()> {
        let (b, h, _, d) = self.k.dims4()?;
        for buf in [&mut self.k, &mut self.v] {
            let bigger = zeroed((b, h, capacity, d), buf.dtype(), buf.device())?;
            bigger.slice_set(&buf.narrow(2, 0, self.len)?.force_contiguous()?, 2, 0)?;
            *buf = bigger;
        }
        Ok(())
    }

    /// Keeps only the newest `keep` positions, moved to the front of the buffers.
    fn compact(&mut self, keep: usize) -> Result<()> {
        let keep = keep.min(self.len);
        // Copied out first: source and destination ranges of the same buffer may overlap.
        let k = self
            .k
            .narrow(2, self.len - keep, keep)?
            .force_contiguous()?;
        let v = self
            .v
            .narrow(2, self.len - keep, keep)?
            .force_contiguous()?;
        self.k.slice_set(&k, 2, 0)?;
        self.v.slice_set(&v, 2, 0)?;
        self.len = keep;
        Ok(())
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
    fn caches_are_f32_only_beside_f32_weights() {
        assert_eq!(default_kv_dtype(WeightFormat::F32), DType::F32);
        for w in [
            WeightFormat::F16,
            WeightFormat::Bf16,
            WeightFormat::Int8,
            WeightFormat::Ggml(crate::quant::GgmlType::Q4_0),
        ] {
            assert_eq!(default_kv_dtype(w), DType::F16, "{w:?}");
        }
    }

    #[test]
    fn a_snapshot_is_the_cached_prefix_and_outlives_later_writes() -> Result<()> {
        let dev = Device::Cpu;
        let mut cache = KvCache::new(1, 2, 3, 4, DType::F16, &dev)?;
        let k = Tensor::arange(0f32, 16., &dev)?.reshape((1, 2, 2, 4))?;
        let v = (&k + 100.)?;
        cache.append(&k, &v)?;
        // Full, so that a view of the buffers would share them.
        cache.append(&k.narrow(2, 0, 1)?, &v.narrow(2, 0, 1)?)?;
        let (sk, sv) = cache.snapshot()?;
        cache.reset();
        cache.append(&v, &k)?;
        cache.append(&v.narrow(2, 0, 1)?, &k.narrow(2, 0, 1)?)?;
        let first_two = |t: &Tensor| -> Result<Vec<f32>> {
            t.narrow(2, 0, 2)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()
        };
        assert_eq!(sk.dims(), &[1, 2, 3, 4]);
        assert_eq!(first_two(&sk)?, k.flatten_all()?.to_vec1::<f32>()?);
        assert_eq!(first_two(&sv)?, v.flatten_all()?.to_vec1::<f32>()?);
        // Seeding another cache gives the same positions.
        let mut seeded = KvCache::new(1, 2, 5, 4, DType::F16, &dev)?;
        seeded.append(&sk, &sv)?;
        assert_eq!(seeded.len(), 3);
        let sliding = KvCache::sliding(2, 4, 1, 4, DType::F16, &dev)?;
        assert!(sliding.snapshot().is_err());
        Ok(())
    }

    #[test]
    fn append_returns_all_positions_and_rejects_overflow() -> Result<()> {
        let dev = Device::Cpu;
        let mut cache = KvCache::new(1, 2, 3, 4, DType::F32, &dev)?;
        let a = Tensor::ones((1, 2, 2, 4), DType::F32, &dev)?;
        let b = (Tensor::ones((1, 2, 1, 4), DType::F32, &dev)? * 2.0)?;
        cache.append(&a, &a)?;
        let k = cache.append(&b, &b)?.k;
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
        let k = cache.append(&k, &k)?.k;
        assert_eq!(k.flatten_all()?.to_vec1::<f32>()?, vec![20., 10., 20., 20.]);
        Ok(())
    }

    /// A sliding cache shows each block the last `window - 1` older positions, compacts when
    /// full (capacity window − 1 + headroom = 5) and keeps working forever.
    #[test]
    fn sliding_window_compacts_and_shows_the_window() -> Result<()> {
        let dev = Device::Cpu;
        let mut cache = KvCache::sliding(1, 3, 3, 1, DType::F32, &dev)?;
        let block = |from: usize, n: usize| {
            let vals: Vec<f32> = (from..from + n).map(|i| i as f32).collect();
            Tensor::from_vec(vals, (1, 1, n, 1), &dev)
        };
        let mut next = 0;
        for n in [2, 1, 2, 1, 1, 2, 1, 3, 1] {
            let b = block(next, n)?;
            let view = cache.append(&b, &b)?;
            let got = view.k.flatten_all()?.to_vec1::<f32>()?;
            let first = next.saturating_sub(2);
            let want: Vec<f32> = (first..next + n).map(|i| i as f32).collect();
            assert_eq!(got, want, "block at {next}");
            assert_eq!(view.past, next - first);
            // The newest position sees the window: K and V, 4 bytes each.
            assert_eq!(cache.attended_bytes(), 2 * (next + n).min(3) * 4);
            next += n;
        }
        assert!(cache.append(&block(0, 4)?, &block(0, 4)?).is_err());
        Ok(())
    }

    /// Fresh and grown buffers hold zeros of the cache's own dtype (f16 and bf16 ones are
    /// integer zeros reinterpreted), and growing keeps the cached positions.
    #[test]
    fn fresh_and_grown_buffers_are_zeros_of_their_dtype() -> Result<()> {
        let dev = Device::Cpu;
        for dtype in [DType::F16, DType::BF16, DType::F32] {
            let mut cache = KvCache::growable(1, 2, 1200, 3, dtype, &dev)?;
            let values = |t: &Tensor| -> Result<Vec<f32>> {
                assert_eq!(t.dtype(), dtype);
                t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
            };
            assert_eq!(cache.k.dims(), &[1, 2, INITIAL_CAPACITY, 3]);
            for buf in [&cache.k, &cache.v] {
                assert!(values(buf)?.iter().all(|&x| x == 0.0), "{dtype:?}");
            }
            let ones = Tensor::ones((1, 2, 600, 3), dtype, &dev)?;
            cache.append(&ones, &ones)?;
            assert_eq!(cache.capacity(), 1024);
            for buf in [&cache.k, &cache.v] {
                // Each head's 1024 positions: the 600 written, then zeros.
                for head in values(buf)?.chunks(1024 * 3) {
                    assert!(head[..600 * 3].iter().all(|&x| x == 1.0), "{dtype:?}");
                    assert!(head[600 * 3..].iter().all(|&x| x == 0.0), "{dtype:?}");
                }
            }
        }
        Ok(())
    }

    /// A growable cache keeps every position across reallocations and stops at its limit.
    #[test]
    fn growable_cache_keeps_everything_up_to_its_limit() -> Result<()> {
        let dev = Device::Cpu;
        let mut cache = KvCache::growable(1, 1, 1200, 1, DType::F32, &dev)?;
        assert_eq!(cache.capacity(), INITIAL_CAPACITY);
        let mut next = 0;
        for n in [300, 300, 1, 599] {
            let vals: Vec<f32> = (next..next + n).map(|i| i as f32).collect();
            let b = Tensor::from_vec(vals, (1, 1, n, 1), &dev)?;
            let view = cache.append(&b, &b)?;
            assert_eq!(view.past, next);
            let want: Vec<f32> = (0..next + n).map(|i| i as f32).collect();
            assert_eq!(view.v.flatten_all()?.to_vec1::<f32>()?, want);
            assert_eq!(cache.attended_bytes(), 2 * (next + n) * 4);
            next += n;
        }
        assert_eq!(cache.capacity(), 1200);
        let one = Tensor::zeros((1, 1, 1, 1), DType::F32, &dev)?;
        assert!(cache.append(&one, &one).is_err());
        Ok(())
    }
}
