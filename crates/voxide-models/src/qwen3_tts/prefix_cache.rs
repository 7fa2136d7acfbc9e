//! The talker's state after prompt prefixes that requests share, as vLLM's automatic prefix
//! caching keeps them: a prompt's positions before the text ([`super::Prompt::voice_positions`]:
//! instruction, role, codec tags, speaker, a cloned reference's transcript) depend only on the
//! voice, language and instruction, so a server that speaks many texts in one voice runs them
//! once.
//!
//! An entry is keyed by the prefix's embeddings bit for bit and by the caches' dtype, so a hit
//! is exactly the state the request would have computed ([`super::generate()`] always runs the
//! prefix as a pass of its own, cached or not). Past the byte budget the least recently used
//! entries go first.

use candle_core::{DType, Result, Tensor};
use std::sync::{Mutex, PoisonError};
use voxide_nn::transformer::StackPrefix;

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

/// What identifies a prefix: its embeddings bit for bit and the precision of the caches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixKey {
    /// The prefix's embeddings (1, positions, H) as f32 bits.
    bits: Vec<u32>,
    kv_dtype: DType,
}

impl PrefixKey {
    /// The key of the positions whose embeddings are `rows` (1, positions, H), with caches in
    /// `kv_dtype`.
    pub fn new(rows: &Tensor, kv_dtype: DType) -> Result<Self> {
        let bits = rows
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(f32::to_bits)
            .collect();
        Ok(Self { bits, kv_dtype })
    }
}

#[derive(Debug)]
struct Entry {
    key: PrefixKey,
    prefix: StackPrefix,
    bytes: usize,
    last_used: u64,
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

    /// The state after the prefix `key`.
    pub fn get(&self, key: &PrefixKey) -> Option<StackPrefix> {
        let mut entries = self.entries();
        entries.clock += 1;
        let now = entries.clock;
        entries.list.iter_mut().find(|e| e.key == *key).map(|e| {
            e.last_used = now;
            e.prefix.clone()
        })
    }

    /// Keeps `prefix`, the state after the prefix `key`, evicting the least recently used
    /// entries past the budget (a prefix larger than the budget is not kept).
    pub fn insert(&self, key: PrefixKey, prefix: StackPrefix) {
        let bytes = prefix.bytes() + 4 * key.bits.len();
        if bytes > self.budget {
            return;
        }
        let mut entries = self.entries();
        entries.clock += 1;
        let now = entries.clock;
        entries.list.retain(|e| e.key != key);
        while entries.list.iter().map(|e| e.bytes).sum::<usize>() + bytes > self.budget {
            let oldest = (0..entries.list.len())
                .min_by_key(|&i| entries.list[i].last_used)
                .expect("a non-empty cache past its budget");
            entries.list.swap_remove(oldest);
        }
        entries.list.push(Entry {
            key,
            prefix,
            bytes,
            last_used: now,
        });
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
        StackPrefix::new(vec![(kv.clone(), kv)], positions).unwrap()
    }

    /// The F16-cache key of `positions` rows of width 2 whose values start at `first`.
    fn key(positions: usize, first: f32) -> PrefixKey {
        key_of(
            (0..2 * positions).map(|i| first + i as f32).collect(),
            DType::F16,
        )
    }

    fn key_of(values: Vec<f32>, kv_dtype: DType) -> PrefixKey {
        let positions = values.len() / 2;
        let rows = Tensor::from_vec(values, (1, positions, 2), &Device::Cpu).unwrap();
        PrefixKey::new(&rows, kv_dtype).unwrap()
    }

    #[test]
    fn a_prefix_is_found_by_its_embeddings_and_kv_dtype() {
        let cache = PrefixCache::new(1 << 20);
        cache.insert(key(3, 0.0), prefix(3));
        let hit = cache.get(&key(3, 0.0)).expect("a hit");
        assert_eq!(hit.positions(), 3);
        let values: Vec<f32> = (0..6).map(|i| i as f32).collect();
        assert!(cache.get(&key_of(values.clone(), DType::F32)).is_none());
        assert!(cache.get(&key(3, 1.0)).is_none());
        assert!(cache.get(&key(2, 0.0)).is_none());
        // The same values but a -0.0 for the 0.0: other bits, another prefix.
        let mut negative_zero = values;
        negative_zero[0] = -0.0;
        assert!(cache.get(&key_of(negative_zero, DType::F16)).is_none());
        // Inserted again: replaced, not duplicated.
        cache.insert(key(3, 0.0), prefix(3));
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn the_least_recently_used_go_first_past_the_budget() {
        // Each entry: 2 · 4 positions · 4 values · 2 bytes + 4 · 8 values of key = 96 bytes.
        let cache = PrefixCache::new(3 * 96);
        for first in [0.0, 100.0, 200.0] {
            cache.insert(key(4, first), prefix(4));
        }
        assert_eq!(cache.len(), 3);
        // The first is used again, so the second is the oldest when a fourth comes.
        assert!(cache.get(&key(4, 0.0)).is_some());
        cache.insert(key(4, 300.0), prefix(4));
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&key(4, 100.0)).is_none());
        for first in [0.0, 200.0, 300.0] {
            assert!(cache.get(&key(4, first)).is_some(), "{first}");
        }
        // Larger than the whole budget: not kept, nothing evicted.
        cache.insert(key(40, 0.0), prefix(40));
        assert_eq!(cache.len(), 3);
    }
}
