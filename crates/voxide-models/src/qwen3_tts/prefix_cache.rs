//! The talker's state after prompt prefixes that requests share, as vLLM's automatic prefix
//! caching keeps them: a prompt's positions before the text (instruction, role, codec tags,
//! speaker; [`super::Prompt::voice_positions`]) depend only on the voice, language and
//! instruction, so a server that speaks many texts in one voice runs them once.
//!
//! An entry is keyed by the prefix's embeddings bit for bit and by the caches' dtype, so a hit
//! is exactly the state the request would have computed ([`super::generate`] always runs the
//! prefix as a pass of its own, cached or not). Past the byte budget the least recently used
//! entries go first.

use super::talker::StackPrefix;
use candle_core::{DType, Result, Tensor};
use std::sync::{Mutex, PoisonError};

/// What a server keeps by default: a 0.6B talker's prefix of ~10 positions is ~1 MB in f16,
/// a VoiceDesign instruction of 60 tokens ~8 MB.
pub const DEFAULT_BUDGET: usize = 64 << 20;

/// Talker prefixes by their embeddings, within a byte budget.
#[derive(Debug)]
pub struct PrefixCache {
    budget: usize,
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    list: Vec<Entry>,
    /// Advances on every lookup and insert; an entry's last one orders evictions.
    clock: u64,
}

#[derive(Debug)]
struct Entry {
    /// The prefix's embeddings (1, positions, H) as f32 bits.
    key: Vec<u32>,
    kv_dtype: DType,
    prefix: StackPrefix,
    bytes: usize,
    last_used: u64,
}

/// `rows` (1, positions, H) as the bits of its f32 values.
fn key_of(rows: &Tensor) -> Result<Vec<u32>> {
    Ok(rows
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f32::to_bits)
        .collect())
}

impl PrefixCache {
    /// An empty cache that holds up to `budget` bytes of keys, values and embeddings.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            entries: Mutex::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        // An entry is inserted whole or not at all, so a panicking holder left no half-made one.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state after the prefix whose embeddings are `rows`, with caches in `kv_dtype`.
    pub fn get(&self, rows: &Tensor, kv_dtype: DType) -> Result<Option<StackPrefix>> {
        let key = key_of(rows)?;
        let mut entries = self.entries();
        entries.clock += 1;
        let now = entries.clock;
        Ok(entries
            .list
            .iter_mut()
            .find(|e| e.kv_dtype == kv_dtype && e.key == key)
            .map(|e| {
                e.last_used = now;
                e.prefix.clone()
            }))
    }

    /// Keeps `prefix`, the state after the positions `rows`, evicting the least recently used
    /// entries past the budget (a prefix larger than the budget is not kept).
    pub fn insert(&self, rows: &Tensor, kv_dtype: DType, prefix: StackPrefix) -> Result<()> {
        let key = key_of(rows)?;
        let bytes = prefix.bytes() + 4 * key.len();
        if bytes > self.budget {
            return Ok(());
        }
        let mut entries = self.entries();
        entries.clock += 1;
        let now = entries.clock;
        entries
            .list
            .retain(|e| !(e.kv_dtype == kv_dtype && e.key == key));
        while entries.list.iter().map(|e| e.bytes).sum::<usize>() + bytes > self.budget {
            let oldest = (0..entries.list.len())
                .min_by_key(|&i| entries.list[i].last_used)
                .expect("a non-empty cache past its budget");
            entries.list.swap_remove(oldest);
        }
        entries.list.push(Entry {
            key,
            kv_dtype,
            prefix,
            bytes,
            last_used: now,
        });
        Ok(())
    }

    /// Number of prefixes held.
    pub fn len(&self) -> usize {
        self.entries().list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every prefix.
    pub fn clear(&self) {
        self.entries().list.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A prefix of `positions` positions in one layer of 1 head × 4, f16 (16 bytes each).
    fn prefix(positions: usize) -> StackPrefix {
        let kv = Tensor::zeros((1, 1, positions, 4), DType::F16, &Device::Cpu).unwrap();
        StackPrefix {
            layers: vec![(kv.clone(), kv)],
            positions,
        }
    }

    /// Embeddings of `positions` rows of width 2 whose values start at `first`.
    fn rows(positions: usize, first: f32) -> Tensor {
        let values: Vec<f32> = (0..2 * positions).map(|i| first + i as f32).collect();
        Tensor::from_vec(values, (1, positions, 2), &Device::Cpu).unwrap()
    }

    #[test]
    fn a_prefix_is_found_by_its_embeddings_and_kv_dtype() -> Result<()> {
        let cache = PrefixCache::new(1 << 20);
        cache.insert(&rows(3, 0.0), DType::F16, prefix(3))?;
        let hit = cache.get(&rows(3, 0.0), DType::F16)?.expect("a hit");
        assert_eq!(hit.positions(), 3);
        assert!(cache.get(&rows(3, 0.0), DType::F32)?.is_none());
        assert!(cache.get(&rows(3, 1.0), DType::F16)?.is_none());
        assert!(cache.get(&rows(2, 0.0), DType::F16)?.is_none());
        // -0.0 and 0.0 are other bits: other embeddings.
        let negative_zero = (rows(3, 0.0) * -1.0)?.abs()?.neg()?;
        assert!(cache.get(&negative_zero, DType::F16)?.is_none());
        // Inserted again: replaced, not duplicated.
        cache.insert(&rows(3, 0.0), DType::F16, prefix(3))?;
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert!(cache.is_empty());
        Ok(())
    }

    #[test]
    fn the_least_recently_used_go_first_past_the_budget() -> Result<()> {
        // Each entry: 2 · 4 positions · 4 values · 2 bytes + 4 · 8 values of key = 96 bytes.
        let cache = PrefixCache::new(3 * 96);
        for first in [0.0, 100.0, 200.0] {
            cache.insert(&rows(4, first), DType::F16, prefix(4))?;
        }
        assert_eq!(cache.len(), 3);
        // The first is used again, so the second is the oldest when a fourth comes.
        assert!(cache.get(&rows(4, 0.0), DType::F16)?.is_some());
        cache.insert(&rows(4, 300.0), DType::F16, prefix(4))?;
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&rows(4, 100.0), DType::F16)?.is_none());
        for first in [0.0, 200.0, 300.0] {
            assert!(cache.get(&rows(4, first), DType::F16)?.is_some(), "{first}");
        }
        // Larger than the whole budget: not kept, nothing evicted.
        cache.insert(&rows(40, 0.0), DType::F16, prefix(40))?;
        assert_eq!(cache.len(), 3);
        Ok(())
    }
}
