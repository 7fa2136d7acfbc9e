//! The next streamed matrix, pulled into the caches while the caller runs the serial work
//! before it.
//!
//! Between two GEMVs of a decoder step the caller runs serial work (norms, RoPE, the K/V
//! append, a head's sampling) while the pool's helpers spin and the memory idles: on a
//! Qwen3-TTS 0.6B int8 talker step, whose 113 matrices are 2–6 MB each, that is ~10 % of the
//! step. A decoder reads its streamed matrices in the same order every step, so each streamed
//! GEMV learns which streamed matrix came after it last time ([`Successors`]), and once it has
//! run, the idle helpers prefetch that matrix's rows past the first task
//! ([`super::spin_pool::warm`]). The caller, which starts the next loop, takes the first task
//! itself; the helpers take the tasks after it, so the rows they warmed sit in their own
//! caches (warming the first task as well, for the caller to read from a helper's L2, lost
//! the gain when the memory is fast). PERFORMANCE.md, "The next matrix warmed".
//!
//! A wrong guess (another model's GEMV in between, a matrix freed since) costs the bandwidth
//! of one region: the helpers only prefetch, and a prefetch never faults.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use super::spin_pool::{warm, Warm};

/// Most matrices remembered; past it the table starts over (a server that loads models in
/// turn would otherwise keep every matrix it ever read).
const MAX_MATRICES: usize = 4096;

/// Which region to warm after each streamed matrix: the one that followed it last time.
#[derive(Debug, Default)]
pub(crate) struct Successors {
    /// The matrix read last (its first byte's address), 0 before the first.
    last: usize,
    next: HashMap<usize, Warm>,
}

impl Successors {
    /// Records that the matrix at `key`, whose warmable rows are `region`, is read now.
    pub(crate) fn read(&mut self, key: usize, region: Warm) {
        if self.next.len() >= MAX_MATRICES {
            self.next.clear();
        }
        if self.last != 0 {
            self.next.insert(self.last, region);
        }
        self.last = key;
    }

    /// The region to warm once the matrix at `key` has been read.
    pub(crate) fn after(&self, key: usize) -> Option<Warm> {
        self.next.get(&key).copied()
    }
}

static SUCCESSORS: LazyLock<Mutex<Successors>> = LazyLock::new(Mutex::default);

/// What to warm of a matrix at `start` of `rows` rows of `row_bytes`, read in tasks of
/// `rows_per_task` rows: the rows past the first task, at most `cap` bytes.
pub(crate) fn warmable(
    start: usize,
    rows: usize,
    row_bytes: usize,
    rows_per_task: usize,
    cap: usize,
) -> Warm {
    let skip = rows_per_task.min(rows) * row_bytes;
    Warm {
        start: start + skip,
        len: (rows * row_bytes - skip).min(cap),
    }
}

/// Runs `gemv`, the product with the streamed matrix at `key` (warmable `region`), then has
/// the helpers warm the matrix that followed it last time.
pub(crate) fn read_then_warm_next(key: usize, region: Warm, gemv: impl FnOnce()) {
    let next = {
        let mut successors = SUCCESSORS.lock().unwrap_or_else(|e| e.into_inner());
        successors.read(key, region);
        successors.after(key)
    };
    gemv();
    if let Some(next) = next {
        warm(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(start: usize) -> Warm {
        Warm { start, len: 100 }
    }

    #[test]
    fn each_matrix_warms_the_one_read_after_it_last_time() {
        let mut s = Successors::default();
        // A step of three matrices, twice.
        for key in [1000, 2000, 3000, 1000, 2000, 3000] {
            s.read(key, region(key + 1));
        }
        assert_eq!(s.after(1000), Some(region(2001)));
        assert_eq!(s.after(2000), Some(region(3001)));
        // The step's last matrix warms the next step's first.
        assert_eq!(s.after(3000), Some(region(1001)));
        assert_eq!(s.after(4000), None);
        // The order changed: the latest successor wins.
        s.read(1000, region(1001));
        s.read(3000, region(3001));
        assert_eq!(s.after(1000), Some(region(3001)));
    }

    #[test]
    fn the_table_starts_over_when_full() {
        let mut s = Successors::default();
        // MAX_MATRICES + 1 successors, the last recorded after the table was cleared.
        for key in 1..=MAX_MATRICES + 2 {
            s.read(key * 64, region(key * 64));
        }
        assert_eq!(s.next.len(), 1);
        let last = (MAX_MATRICES + 1) * 64;
        assert_eq!(s.after(last), Some(region(last + 64)));
    }

    #[test]
    fn the_first_task_is_left_to_the_caller_and_the_rest_capped() {
        // 100 rows of 1 kB in tasks of 10 rows.
        assert_eq!(
            warmable(1 << 20, 100, 1024, 10, 1 << 20),
            Warm {
                start: (1 << 20) + 10 * 1024,
                len: 90 * 1024
            }
        );
        assert_eq!(warmable(0, 100, 1024, 10, 8192).len, 8192);
        // A matrix of one task has nothing for the helpers.
        assert_eq!(warmable(0, 8, 1024, 10, 8192).len, 0);
    }
}
