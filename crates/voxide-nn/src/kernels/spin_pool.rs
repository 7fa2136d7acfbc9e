//! A fork-join for the many short parallel loops of a decoder step, whose helpers stay awake
//! between them.
//!
//! A decoder step runs hundreds of GEMVs of tens of µs each (a Qwen3-TTS 0.6B frame ~330),
//! with a little single-threaded work between them (norms, attention, sampling). rayon's idle
//! workers go to sleep within tens of µs, and waking one costs ~20 µs on a VM, about a cached
//! GEMV's whole time: measured on Zen 5, a 3072×1024 int8 GEMV on 2 threads took 25.6 µs back
//! to back and 46–48 µs after 30 µs of other work (PERFORMANCE.md, end of "Four lines per
//! pass"; with this pool 26–31 µs, #109). The helpers here spin for `SPIN` after each loop
//! before they park, as ggml's thread pool polls before it waits (`ggml-cpu.c`, credited in
//! the README).
//!
//! The pool serves one caller at a time; a second caller (another request on a server), a
//! caller inside a rayon pool of another size, or a nested call takes rayon instead.
//!
//! While they spin, the helpers can pull a region the caller names into their caches
//! ([`warm`]): the next weight matrix, read while the caller runs the serial work before it
//! (see `super::next_matrix`).

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::{Condvar, Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long a helper waits for the next loop, spinning, before it parks. Longer than the gaps
/// inside a step (norms, attention, a sampling: µs to tens of µs), short enough that a
/// helper's spin takes little from the threads of the work between steps (GEMMs on rayon).
const SPIN: Duration = Duration::from_micros(300);

/// Spins between two reads of the clock.
const SPINS_PER_CLOCK_READ: u32 = 64;

/// Runs `task(i)` for every i in 0..tasks, on the calling thread and the pool's helpers (or on
/// rayon, see the module notes), and returns when all have run.
pub fn for_each_task(tasks: usize, task: &(dyn Fn(usize) + Sync)) {
    let threads = rayon::current_num_threads();
    if tasks > 1 && threads > 1 {
        let pool = pool();
        if pool.helpers + 1 == threads {
            // A loop that panicked left the pool consistent (closed, no helper inside).
            let busy = match pool.busy.try_lock() {
                Ok(guard) => Some(guard),
                Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            if let Some(_busy) = busy {
                pool.shared.run(tasks, task);
                return;
            }
        }
    }
    (0..tasks).into_par_iter().for_each(task);
}

/// A region of memory the pool's idle helpers prefetch into their caches, each helper its own
/// share. Only prefetched, never loaded: a prefetch does not fault, so a region that is no
/// longer mapped costs nothing but the attempt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Warm {
    pub start: usize,
    pub len: usize,
}

/// Asks the pool's helpers, while they wait for the next loop, to prefetch `region`; a new
/// loop, or a newer region, ends the warming. Nothing happens where the pool has no helpers
/// or they are parked.
pub fn warm(region: Warm) {
    let Some(pool) = POOL.get() else {
        return;
    };
    if pool.helpers == 0 || region.len == 0 {
        return;
    }
    *pool.shared.warm.lock().unwrap_or_else(|e| e.into_inner()) = region;
    pool.shared.warm_posted.fetch_add(1, SeqCst);
}

/// Bytes a helper prefetches between two looks at whether a loop has started (64 lines).
const WARM_CHUNK: usize = 4096;

/// Runs `task(r0, r1)` over 0..n in ranges of `per_task` (the last may be shorter), as
/// [`for_each_task`] runs tasks.
pub fn for_each_range(n: usize, per_task: usize, task: &(dyn Fn(usize, usize) + Sync)) {
    assert!(per_task > 0, "ranges of 0 elements");
    for_each_task(n.div_ceil(per_task), &|t| {
        task(t * per_task, ((t + 1) * per_task).min(n))
    });
}

/// The ranges of [`for_each_range_tail_halved`] over 0..n on `threads` threads: ranges of
/// `per_task` up to the last `threads · per_task` rows, which go in ranges of half as many
/// (each range's end capped at its part's). Returns how many ranges there are and range `t`.
fn tail_halved(
    n: usize,
    per_task: usize,
    threads: usize,
) -> (usize, impl Fn(usize) -> (usize, usize)) {
    let tail = (threads * per_task).min(n);
    let body = n - tail;
    let body_ranges = body.div_ceil(per_task);
    let half = per_task.div_ceil(2);
    let range = move |t: usize| {
        if t < body_ranges {
            (t * per_task, ((t + 1) * per_task).min(body))
        } else {
            let i = t - body_ranges;
            (body + i * half, (body + (i + 1) * half).min(n))
        }
    };
    (body_ranges + tail.div_ceil(half), range)
}

/// Runs `task(r0, r1)` over 0..n as [`for_each_range`], but with the rows of the last ranges
/// (one per thread) in ranges of half as many: the shrinking tail of OpenMP's guided schedule.
/// The threads take ranges as they finish the ones before, so they end within half a range of
/// each other instead of a whole one. A streamed GEMV's ranges are long (≥ 512 KB of weights,
/// to amortise each stream's start), and at each matrix's end one thread waited for the
/// other's last: a Qwen3-TTS 0.6B int8 frame's GEMVs read 1–6 % faster (median 4 %) on 2
/// cores of an Emerald Rapids, a Voxtral Realtime bf16 step's 2 % (PERFORMANCE.md #192).
pub fn for_each_range_tail_halved(n: usize, per_task: usize, task: &(dyn Fn(usize, usize) + Sync)) {
    assert!(per_task > 0, "ranges of 0 elements");
    let (ranges, range) = tail_halved(n, per_task, rayon::current_num_threads());
    for_each_task(ranges, &|t| {
        let (r0, r1) = range(t);
        task(r0, r1)
    });
}

/// Runs `f(i, chunk)` for every `chunk`-long piece of `data` (the last may be shorter), as
/// [`for_each_task`] runs tasks.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    if data.is_empty() {
        return;
    }
    assert!(chunk > 0, "chunks of 0 elements");
    let (len, base) = (data.len(), SendPtr(data.as_mut_ptr()));
    for_each_task(len.div_ceil(chunk), &|i| {
        let start = i * chunk;
        // SAFETY: each task index runs once, so the chunks handed out are disjoint, and all
        // lie within `data`, which stays borrowed until every task has run.
        let piece =
            unsafe { std::slice::from_raw_parts_mut(base.at(start), chunk.min(len - start)) };
        f(i, piece)
    });
}

/// A pointer tasks may share: they write disjoint parts of what it points to.
struct SendPtr<T>(*mut T);

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SendPtr<T> {}

// SAFETY: see `for_each_chunk_mut`: the parts written are disjoint.
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// # Safety
    /// `offset` must lie within the allocation.
    unsafe fn at(self, offset: usize) -> *mut T {
        self.0.add(offset)
    }
}

struct Pool {
    helpers: usize,
    /// Held by the caller of a loop.
    busy: Mutex<()>,
    shared: &'static Shared,
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// The pool of the process, sized to the calling thread's rayon pool on first use (the CLI
/// sizes rayon's global pool before it loads a model).
fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let helpers = rayon::current_num_threads().saturating_sub(1);
        let shared: &'static Shared = Box::leak(Box::default());
        for i in 0..helpers {
            std::thread::Builder::new()
                .name(format!("voxide-spin-{i}"))
                .spawn(move || shared.help(i, helpers))
                .expect("spawning a helper thread");
        }
        Pool {
            helpers,
            busy: Mutex::new(()),
            shared,
        }
    })
}

/// The loop being run, as the caller lent it: valid from the epoch's start until the caller
/// has closed the epoch and seen no helper inside it.
#[derive(Clone, Copy)]
struct Job {
    tasks: usize,
    task: *const (dyn Fn(usize) + Sync),
}

/// State shared by the caller and the helpers.
///
/// Protocol: the caller writes the job, bumps `epoch`, runs tasks (taken from `next`) until
/// none is left, stores the epoch in `closed`, then waits for `active` to reach 0. A helper
/// that sees a new epoch increments `active` and only then checks that the epoch is not yet
/// closed before it reads the job. Both sides use sequentially consistent operations, so
/// either the caller sees the helper in `active` and waits for it, or the helper sees the
/// epoch closed and leaves the job alone.
#[derive(Default)]
struct Shared {
    job: UnsafeCell<Option<Job>>,
    epoch: AtomicUsize,
    closed: AtomicUsize,
    next: AtomicUsize,
    active: AtomicUsize,
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    /// The region to warm ([`warm`]), and how many have been posted.
    warm: Mutex<Warm>,
    warm_posted: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the caller holding `Pool::busy` while no helper reads it
// (see the protocol above); everything else is atomic or locked.
unsafe impl Sync for Shared {}

impl Shared {
    fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        // SAFETY: no helper reads the job: the last epoch is closed and `active` was 0 when
        // its caller returned. The lifetime is erased for the helpers; `run` does not return
        // before they are done with it.
        unsafe {
            let task: &'static (dyn Fn(usize) + Sync) = std::mem::transmute(task);
            *self.job.get() = Some(Job { tasks, task });
        }
        self.next.store(0, Relaxed);
        let epoch = self.epoch.fetch_add(1, SeqCst) + 1;
        if self.sleepers.load(SeqCst) > 0 {
            let _parked = self.park.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
        let own = catch_unwind(AssertUnwindSafe(|| self.take_tasks(tasks, task)));
        self.closed.store(epoch, SeqCst);
        while self.active.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
        if let Err(panic) = own {
            resume_unwind(panic);
        }
        if self.panicked.swap(false, Relaxed) {
            panic!("a task panicked on a helper thread");
        }
    }

    fn take_tasks(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        loop {
            let i = self.next.fetch_add(1, Relaxed);
            if i >= tasks {
                break;
            }
            task(i);
        }
    }

    /// A helper's life (helper `index` of `helpers`): wait for an epoch, join it if still
    /// open, repeat.
    fn help(&self, index: usize, helpers: usize) {
        let mut seen = self.epoch.load(SeqCst);
        let mut warmed = self.warm_posted.load(SeqCst);
        loop {
            seen = self.next_epoch(seen, &mut warmed, index, helpers);
            self.active.fetch_add(1, SeqCst);
            if self.closed.load(SeqCst) < seen {
                // SAFETY: the epoch is open and we are counted in `active`, so the caller
                // neither returns nor writes the next job until we leave.
                let job = unsafe { (*self.job.get()).expect("an open epoch has a job") };
                let task = unsafe { &*job.task };
                if catch_unwind(AssertUnwindSafe(|| self.take_tasks(job.tasks, task))).is_err() {
                    self.panicked.store(true, Relaxed);
                }
            }
            self.active.fetch_sub(1, SeqCst);
        }
    }

    /// Waits for an epoch after `seen`: spinning for [`SPIN`], then parked. While spinning,
    /// warms its share of each region posted after the `warmed`-th.
    fn next_epoch(&self, seen: usize, warmed: &mut usize, index: usize, helpers: usize) -> usize {
        let deadline = Instant::now() + SPIN;
        let mut spins = 0u32;
        loop {
            let epoch = self.epoch.load(SeqCst);
            if epoch != seen {
                return epoch;
            }
            let posted = self.warm_posted.load(SeqCst);
            if posted != *warmed {
                *warmed = posted;
                let region = *self.warm.lock().unwrap_or_else(|e| e.into_inner());
                self.warm_share(region, index, helpers, seen);
                continue;
            }
            spins += 1;
            if spins.is_multiple_of(SPINS_PER_CLOCK_READ) && Instant::now() >= deadline {
                break;
            }
            std::hint::spin_loop();
        }
        let mut parked = self.park.lock().unwrap_or_else(|e| e.into_inner());
        self.sleepers.fetch_add(1, SeqCst);
        let mut epoch = self.epoch.load(SeqCst);
        while epoch == seen {
            parked = self.wake.wait(parked).unwrap_or_else(|e| e.into_inner());
            epoch = self.epoch.load(SeqCst);
        }
        self.sleepers.fetch_sub(1, SeqCst);
        epoch
    }

    /// Prefetches share `index` of `helpers` of `region` in chunks, until done or until an
    /// epoch after `seen` starts.
    fn warm_share(&self, region: Warm, index: usize, helpers: usize, seen: usize) {
        let share = region.len.div_ceil(helpers);
        let start = region.start + index * share;
        let end = (start + share).min(region.start + region.len);
        for chunk in (start..end).step_by(WARM_CHUNK) {
            for line in (chunk..(chunk + WARM_CHUNK).min(end)).step_by(64) {
                prefetch(line);
            }
            if self.epoch.load(SeqCst) != seen {
                return;
            }
        }
    }
}

/// Prefetches the cache line at `addr` into all levels (a hint: it never faults).
#[inline(always)]
fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 reads nothing architecturally and does not fault on any address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(addr as *const i8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// The ranges cover 0..n once, in order; those of the last `threads` ranges' rows are
    /// halves, the rest whole (but for a short last one).
    #[test]
    fn tails_are_halved_ranges_that_cover_the_rows_once() {
        for (n, per_task, threads) in [
            (4096, 512, 2),
            (1000, 64, 2),
            (1000, 64, 3),
            (130, 64, 2),
            (7, 4, 2),
            (100, 1, 2),
            (9, 10, 2),
        ] {
            let (count, range) = tail_halved(n, per_task, threads);
            let ranges: Vec<(usize, usize)> = (0..count).map(&range).collect();
            let mut next = 0;
            for &(r0, r1) in &ranges {
                assert_eq!(r0, next, "{n} {per_task} {threads}: {ranges:?}");
                assert!(r1 > r0 && r1 - r0 <= per_task, "{ranges:?}");
                next = r1;
            }
            assert_eq!(next, n, "{ranges:?}");
            let tail = (threads * per_task).min(n);
            for &(r0, r1) in &ranges {
                let limit = if r0 >= n - tail {
                    per_task.div_ceil(2)
                } else {
                    per_task
                };
                assert!(r1 - r0 <= limit, "{n} {per_task} {threads}: {ranges:?}");
            }
        }
        // 4096 rows in tasks of 512 on 2 threads: 6 whole, then 4 halves.
        let (count, range) = tail_halved(4096, 512, 2);
        assert_eq!(count, 10);
        assert_eq!(range(5), (2560, 3072));
        assert_eq!(range(6), (3072, 3328));
        assert_eq!(range(9), (3840, 4096));
        let seen = std::sync::Mutex::new(Vec::new());
        for_each_range_tail_halved(1000, 64, &|r0, r1| seen.lock().unwrap().push((r0, r1)));
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(seen.first().map(|r| r.0), Some(0));
        assert!(seen.windows(2).all(|w| w[0].1 == w[1].0));
        assert_eq!(seen.last().map(|r| r.1), Some(1000));
    }

    fn sum_of_squares(tasks: usize) -> u64 {
        let sum = AtomicU64::new(0);
        for_each_task(tasks, &|i| {
            sum.fetch_add((i * i) as u64, Relaxed);
        });
        sum.into_inner()
    }

    #[test]
    fn every_task_runs_once() {
        for tasks in [0, 1, 2, 3, 17, 1000] {
            let expected: u64 = (0..tasks as u64).map(|i| i * i).sum();
            assert_eq!(sum_of_squares(tasks), expected, "{tasks} tasks");
        }
    }

    #[test]
    fn ranges_cover_0_to_n_once_each() {
        for (n, per_task) in [(0, 4), (1, 4), (9, 4), (12, 4), (1000, 7)] {
            let seen: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
            for_each_range(n, per_task, &|r0, r1| {
                assert!(r0 < r1 && r1 - r0 <= per_task, "{r0}..{r1}");
                (r0..r1).for_each(|i| {
                    seen[i].fetch_add(1, Relaxed);
                })
            });
            assert!(
                seen.iter().all(|s| s.load(Relaxed) == 1),
                "{n} in ranges of {per_task}"
            );
        }
    }

    #[test]
    fn chunks_cover_the_slice_once_each() {
        for (len, chunk) in [(0, 3), (1, 3), (10, 3), (12, 3), (1000, 7)] {
            let mut data = vec![0usize; len];
            for_each_chunk_mut(&mut data, chunk, &|i, piece| {
                for (j, v) in piece.iter_mut().enumerate() {
                    *v += i * chunk + j + 1;
                }
            });
            assert_eq!(
                data,
                (1..=len).collect::<Vec<_>>(),
                "{len} in chunks of {chunk}"
            );
        }
    }

    #[test]
    fn loops_run_every_task_while_the_helpers_warm_a_region() {
        let expected: u64 = (0..100u64).map(|i| i * i).sum();
        assert_eq!(sum_of_squares(100), expected);
        let buffer = vec![1u8; 8 << 20];
        let region = Warm {
            start: buffer.as_ptr() as usize,
            len: buffer.len(),
        };
        for _ in 0..20 {
            warm(region);
            assert_eq!(sum_of_squares(100), expected);
        }
        // A region freed since it was posted is prefetched without a fault.
        drop(buffer);
        warm(region);
        std::thread::sleep(Duration::from_millis(1));
        assert_eq!(sum_of_squares(100), expected);
    }

    #[test]
    fn loops_after_the_helpers_parked_still_run_every_task() {
        for _ in 0..3 {
            assert_eq!(sum_of_squares(100), (0..100u64).map(|i| i * i).sum::<u64>());
            std::thread::sleep(SPIN * 3);
        }
    }

    #[test]
    fn concurrent_callers_each_run_all_their_tasks() {
        std::thread::scope(|s| {
            let runs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..200).map(|_| sum_of_squares(64)).collect::<Vec<_>>()))
                .collect();
            let expected: u64 = (0..64u64).map(|i| i * i).sum();
            for run in runs {
                assert!(run.join().unwrap().iter().all(|&s| s == expected));
            }
        });
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_leaves_the_pool_usable() {
        let pool2 = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool2.install(|| {
            let caught = catch_unwind(|| {
                for_each_task(64, &|i| assert!(i != 40, "task 40"));
            });
            assert!(caught.is_err());
            assert_eq!(sum_of_squares(10), 285);
        });
    }
}
