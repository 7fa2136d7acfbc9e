//! What the kernels need to know about the machine they run on: its cache sizes and usable
//! cores (read once: sysfs, else `cpuid`), and the rule that turns them into a per-matrix
//! choice between reading a decoder step's weights through the caches or streaming them past.
//!
//! Why it matters: a decoder step reads every weight once per token. When the whole step fits
//! in the last-level cache (tiny and base Whisper on a CPU with a 480 MB L3), cached re-reads
//! run at cache speed and streaming anything is a loss; when it does not (the same models on a
//! 32 MB L3, any Voxtral), a cyclic sweep through more bytes than the cache evicts everything
//! before its reuse, so the best policy is to keep a subset resident and stream the rest past
//! the cache (non-temporal loads) so that they do not evict it. No constant fits both. Nor does
//! one fit how to stream: an Intel Xeon's non-temporal prefetches read a third as fast as plain
//! ones, an AMD EPYC's as fast, so that is measured too ([`weight_prefetch`]).

use super::bandwidth::{streaming_reads, Prefetch};
use std::sync::OnceLock;

/// Cache sizes in bytes, for the cores this process may run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSizes {
    /// Private L1 data cache of one core (0 if unknown).
    pub l1d_per_core: usize,
    /// Private L2 of one core (0 if unknown).
    pub l2_per_core: usize,
    /// Last-level cache reachable by this process's cores: the sum over the distinct L3
    /// instances they sit on (0 if none).
    pub l3: usize,
}

/// The machine as the kernels see it.
#[derive(Clone, Debug)]
pub struct Machine {
    /// CPU model name (`/proc/cpuinfo`) with its x86 family and model numbers, or the
    /// architecture when unknown.
    pub cpu_model: String,
    pub caches: CacheSizes,
    /// Cores this process may use (affinity mask and cgroup CPU quota).
    pub cores: usize,
    /// Physical cores under the CPUs of its affinity mask: each set of SMT siblings counts
    /// once (as many as `cores` where the topology is unknown).
    pub physical_cores: usize,
}

/// The machine this process runs on, detected on first use.
pub fn machine() -> &'static Machine {
    static MACHINE: OnceLock<Machine> = OnceLock::new();
    MACHINE.get_or_init(Machine::detect)
}

impl Machine {
    fn detect() -> Self {
        // Honours sched_getaffinity and the cgroup v1/v2 CPU quota.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let caches = sysfs_caches(cores)
            .or_else(cpuid_caches)
            .unwrap_or(CacheSizes {
                l1d_per_core: 0,
                l2_per_core: 0,
                l3: 0,
            });
        let physical_cores = physical_cores().map_or(cores, |p| p.min(cores));
        Self {
            cpu_model: cpu_model().unwrap_or_else(|| std::env::consts::ARCH.to_string()),
            caches,
            cores,
            physical_cores,
        }
    }

    /// The bytes of a decoder step that can stay cache-resident between tokens.
    pub fn cache_budget(&self) -> usize {
        cache_budget(&self.caches, self.cores)
    }
}

/// The share of the caches a decoder step can count on keeping between tokens: three quarters
/// of the last-level cache plus the cores' L2s (AMD's L3 is a victim cache of the L2s, Intel's
/// server L3 is non-inclusive: both hold L2 + L3 distinct lines); the rest is left to
/// activations, code, the KV writes and other processes on the same cache.
pub fn cache_budget(caches: &CacheSizes, cores: usize) -> usize {
    (caches.l3 + caches.l2_per_core * cores) / 4 * 3
}

/// How a decoder step reads one weight matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Residency {
    /// Plain loads (and prefetches into the caches): the matrix stays cached for the next token.
    Cached,
    /// Non-temporal prefetches: read once from memory without evicting the cached rest.
    Streamed,
}

impl Residency {
    /// How a matrix no model planned is read: streamed only when it alone exceeds this
    /// machine's cache budget.
    pub fn unplanned(bytes: usize) -> Self {
        if bytes > machine().cache_budget() {
            Residency::Streamed
        } else {
            Residency::Cached
        }
    }
}

/// The software prefetch a GEMV reads a matrix of `bytes` with. A streamed matrix takes
/// non-temporal prefetches where they keep pace with plain ones (`nontemporal_pays`,
/// [`streaming_reads`]); elsewhere it is read like a large cached matrix, at the memory's pace,
/// though it then evicts cached weights. Cached matrices larger than a core's L2 come from L3 or
/// memory, so their rows are prefetched ahead of the loads (more reads in flight; harmless when
/// they hit); smaller ones need no prefetch.
pub fn prefetch_for(
    residency: Residency,
    bytes: usize,
    l2_per_core: usize,
    nontemporal_pays: impl FnOnce() -> bool,
) -> Prefetch {
    match residency {
        Residency::Streamed if nontemporal_pays() => Prefetch::Stream,
        Residency::Streamed => Prefetch::Keep,
        Residency::Cached if bytes > l2_per_core => Prefetch::Keep,
        Residency::Cached => Prefetch::None,
    }
}

/// [`prefetch_for`] on this machine (measuring its streaming reads on the first streamed
/// matrix; where they cannot be measured, non-temporal prefetches are used).
pub fn weight_prefetch(residency: Residency, bytes: usize) -> Prefetch {
    prefetch_for(residency, bytes, machine().caches.l2_per_core, || {
        streaming_reads().is_none_or(|r| r.nontemporal_pays())
    })
}

/// One matrix of a decoding cycle (a token's step; a TTS frame: one talker step and 15 code
/// predictor steps): its size and how many times the cycle reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CycleRead {
    pub bytes: usize,
    pub reads: usize,
}

impl CycleRead {
    /// A matrix read once per cycle (every matrix of a plain decoder step).
    pub fn once(bytes: usize) -> Self {
        Self { bytes, reads: 1 }
    }
}

/// Bytes of weights a decoding cycle reads, by how its plan reads them: the floor of a cycle
/// takes the streamed bytes at the memory's rate and the cached ones at the caches'.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CycleBytes {
    pub streamed: usize,
    pub cached: usize,
}

impl CycleBytes {
    /// `bytes` read as `residency`.
    pub fn read(bytes: usize, residency: Residency) -> Self {
        match residency {
            Residency::Streamed => Self {
                streamed: bytes,
                cached: 0,
            },
            Residency::Cached => Self {
                streamed: 0,
                cached: bytes,
            },
        }
    }

    pub fn total(&self) -> usize {
        self.streamed + self.cached
    }
}

impl std::ops::Add for CycleBytes {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self {
            streamed: self.streamed + other.streamed,
            cached: self.cached + other.cached,
        }
    }
}

impl std::ops::Mul<usize> for CycleBytes {
    type Output = Self;
    /// The bytes of `reads` passes.
    fn mul(self, reads: usize) -> Self {
        Self {
            streamed: self.streamed * reads,
            cached: self.cached * reads,
        }
    }
}

impl std::iter::Sum for CycleBytes {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), |a, b| a + b)
    }
}

/// Chooses, for each matrix a decoding cycle reads (`matrices`, in any order) plus
/// `other_bytes` it must keep cached as well (K/V caches), which matrices stay cached within
/// `budget` bytes of cache and which are streamed past it. Everything stays cached when the
/// whole cycle fits. Otherwise the matrices read most often per cycle are kept first (a code
/// predictor read 15 times per frame saves 14 reads from memory for each byte it keeps cached,
/// a matrix read once saves one read per cycle), and among equals the smallest (the most
/// matrices in the budget; long streams are what non-temporal reads do best).
pub fn plan_residency(matrices: &[CycleRead], other_bytes: usize, budget: usize) -> Vec<Residency> {
    let total = matrices.iter().map(|m| m.bytes).sum::<usize>() + other_bytes;
    if total <= budget {
        return vec![Residency::Cached; matrices.len()];
    }
    let mut plan = vec![Residency::Streamed; matrices.len()];
    let mut room = budget.saturating_sub(other_bytes);
    let mut order: Vec<usize> = (0..matrices.len()).collect();
    // Most reads first, then smallest, then in their given order (deterministic).
    order.sort_by_key(|&i| (std::cmp::Reverse(matrices[i].reads), matrices[i].bytes, i));
    for i in order {
        if matrices[i].bytes <= room {
            plan[i] = Residency::Cached;
            room -= matrices[i].bytes;
        }
    }
    plan
}

/// [`plan_residency`], kept only where the machine keeps cached weights between their reads
/// (`retains`, asked only when the plan both keeps and streams): otherwise every matrix is
/// streamed, since the "cached" ones would come from memory anyway and the streamed reads take
/// it faster (see [`super::bandwidth::Retention`]).
pub fn plan_residency_retained(
    matrices: &[CycleRead],
    other_bytes: usize,
    budget: usize,
    retains: impl FnOnce() -> bool,
) -> Vec<Residency> {
    let mut plan = plan_residency(matrices, other_bytes, budget);
    if plan.contains(&Residency::Cached) && plan.contains(&Residency::Streamed) && !retains() {
        plan.fill(Residency::Streamed);
    }
    plan
}

/// Asks Linux for transparent huge pages (or, with `huge` false, for none) on a large fresh
/// buffer before its first touch. With huge pages the first touch costs one fault per 2 MB
/// instead of per 4 kB (measured: 4 GB in 1.6 s instead of 10.8 s) and streaming reads take
/// fewer TLB misses. A hint; failures are ignored.
pub(crate) fn advise_pages(ptr: *mut u8, len: usize, huge: bool) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (ptr as usize).div_ceil(HUGE) * HUGE;
        let end = (ptr as usize + len) / HUGE * HUGE;
        let advice = if huge {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        if end > start {
            // SAFETY: the range lies inside the caller's allocation; the advice only changes
            // how the kernel backs it.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, advice);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len, huge);
}

/// An empty vector with room for `len` values, on transparent huge pages where Linux grants
/// them: for weights, which the decoder streams (a matrix built at load, by stacking or
/// quantizing, would otherwise lie on the 4 kB pages of a plain allocation, where the probe's
/// streaming reads run up to 15–20 % slower on Zen 5).
pub(crate) fn huge_page_vec<T>(len: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    advise_pages(
        v.as_mut_ptr() as *mut u8,
        len * std::mem::size_of::<T>(),
        true,
    );
    v
}

/// Below this many bytes [`huge_page_vec_filled`] fills on the calling thread: a few pages
/// fault in faster than rayon hands out a loop (a decoder's row lookups come here per token).
const PARALLEL_FILL_BYTES: usize = 2 << 20;

/// `len` copies of `value` on huge pages ([`huge_page_vec`]), written on all threads where
/// large: the kernel faults in and zeroes a fresh page at its first write, which one thread's
/// fill takes page after page (PERFORMANCE.md #159: on a VM, 0.6–4 GB/s on one thread, 3.7–19
/// on two).
pub(crate) fn huge_page_vec_filled<T: Copy + Send + Sync>(len: usize, value: T) -> Vec<T> {
    use rayon::prelude::*;
    let mut v = huge_page_vec(len);
    if len * std::mem::size_of::<T>() < PARALLEL_FILL_BYTES {
        v.resize(len, value);
    } else {
        v.par_extend(rayon::iter::repeat_n(value, len));
    }
    v
}

/// Size strings of sysfs (`32768K`, `1M`, `512`) in bytes.
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    };
    let n: usize = digits.parse().ok()?;
    let mul = match unit {
        "" | "B" => 1,
        "K" | "KB" | "KiB" => 1 << 10,
        "M" | "MB" | "MiB" => 1 << 20,
        "G" | "GB" | "GiB" => 1 << 30,
        _ => return None,
    };
    Some(n * mul)
}

/// One cache of `/sys/devices/system/cpu/cpuN/cache/indexM`.
#[derive(Debug, PartialEq, Eq)]
struct SysfsCache {
    level: u32,
    size: usize,
    /// `shared_cpu_list`: identifies the instance.
    shared: String,
}

/// Cache sizes from sysfs over the first `cores` CPUs this process may run on.
fn sysfs_caches(cores: usize) -> Option<CacheSizes> {
    let cpus = allowed_cpus().unwrap_or_else(|| (0..cores).collect());
    let mut caches = Vec::new();
    for cpu in cpus {
        let dir = format!("/sys/devices/system/cpu/cpu{cpu}/cache");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let read = |f: &str| std::fs::read_to_string(e.path().join(f)).ok();
            let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
            else {
                continue;
            };
            if kind.trim() == "Instruction" {
                continue;
            }
            if let (Ok(level), Some(size)) = (level.trim().parse(), parse_size(&size)) {
                let shared = read("shared_cpu_list").unwrap_or_else(|| format!("cpu{cpu}"));
                caches.push(SysfsCache {
                    level,
                    size,
                    shared: shared.trim().to_string(),
                });
            }
        }
    }
    sizes_of(caches)
}

/// Per-core L1 data and L2 caches and the total of distinct L3 instances.
fn sizes_of(mut caches: Vec<SysfsCache>) -> Option<CacheSizes> {
    if caches.is_empty() {
        return None;
    }
    caches.sort_by(|a, b| (a.level, &a.shared).cmp(&(b.level, &b.shared)));
    caches.dedup_by(|a, b| a.level == b.level && a.shared == b.shared);
    let per_core = |level| {
        caches
            .iter()
            .filter(|c| c.level == level)
            .map(|c| c.size)
            .min()
            .unwrap_or(0)
    };
    let l3 = caches.iter().filter(|c| c.level >= 3).map(|c| c.size).sum();
    Some(CacheSizes {
        l1d_per_core: per_core(1),
        l2_per_core: per_core(2),
        l3,
    })
}

/// CPUs in this process's affinity mask.
fn allowed_cpus() -> Option<Vec<usize>> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to a cpu_set_t of the given size.
        let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
        if r != 0 {
            return None;
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: cpu < CPU_SETSIZE.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect();
        (!cpus.is_empty()).then_some(cpus)
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// Physical cores under the CPUs this process may run on: the distinct sets of SMT siblings
/// of sysfs' `topology/thread_siblings_list`.
fn physical_cores() -> Option<usize> {
    let siblings: Vec<String> = allowed_cpus()?
        .into_iter()
        .filter_map(|cpu| {
            let path = format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list");
            std::fs::read_to_string(path).ok()
        })
        .collect();
    distinct_sibling_sets(&siblings)
}

/// How many distinct sets of siblings the CPUs' lists name (`None` for no lists).
fn distinct_sibling_sets(lists: &[String]) -> Option<usize> {
    let sets: std::collections::HashSet<&str> = lists.iter().map(|l| l.trim()).collect();
    (!sets.is_empty()).then_some(sets.len())
}

/// Cache sizes from `cpuid` (Intel leaf 4, AMD leaf 0x8000001D) where sysfs is missing. The
/// L3 reported is the instance of the calling core.
fn cpuid_caches() -> Option<CacheSizes> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid_count;
        // cpuid is available on every x86-64 CPU (a safe intrinsic since Rust 1.87).
        let vendor = __cpuid_count(0, 0);
        let amd = vendor.ebx == u32::from_le_bytes(*b"Auth");
        let leaf = if amd { 0x8000_001D } else { 4 };
        let mut sizes = CacheSizes {
            l1d_per_core: 0,
            l2_per_core: 0,
            l3: 0,
        };
        for sub in 0..16 {
            // Unsupported sub-leaves report type 0.
            let r = __cpuid_count(leaf, sub);
            let kind = r.eax & 0x1f;
            if kind == 0 {
                break;
            }
            if kind == 2 {
                continue; // instruction cache
            }
            let level = (r.eax >> 5) & 0x7;
            let ways = ((r.ebx >> 22) & 0x3ff) as usize + 1;
            let partitions = ((r.ebx >> 12) & 0x3ff) as usize + 1;
            let line = (r.ebx & 0xfff) as usize + 1;
            let sets = r.ecx as usize + 1;
            let size = ways * partitions * line * sets;
            match level {
                1 => sizes.l1d_per_core = size,
                2 => sizes.l2_per_core = size,
                3 => sizes.l3 = size,
                _ => {}
            }
        }
        (sizes.l2_per_core > 0 || sizes.l3 > 0).then_some(sizes)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

fn cpu_model() -> Option<String> {
    cpu_model_in(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

/// The model name a `/proc/cpuinfo` text gives first, with the first CPU's x86 family and
/// model numbers where given: a VM's name alone can hide the generation ("AMD EPYC" has been
/// Zen 3, Zen 4 and Zen 5 here), which decides what the kernels can do.
fn cpu_model_in(info: &str) -> Option<String> {
    let field = |text: &str, key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    // aarch64 boards name the machine in a block of its own, after the CPUs'.
    let name = field(info, "model name").or_else(|| field(info, "Model"))?;
    let first_cpu = info.split_once("\n\n").map_or(info, |(first, _)| first);
    Some(
        match (field(first_cpu, "cpu family"), field(first_cpu, "model")) {
            (Some(family), Some(model)) => format!("{name} (family {family} model {model})"),
            _ => name,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::bandwidth::{Retention, StreamingReads};
    use Residency::{Cached, Streamed};

    const MB: usize = 1 << 20;
    const KB: usize = 1 << 10;

    /// The name with the x86 family and model of the first CPU; other architectures' names
    /// as they are; none without a name.
    #[test]
    fn cpu_model_names_the_x86_family_and_model() {
        let x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n\
                   model name\t: AMD EPYC\nstepping\t: 1\n\nprocessor\t: 1\ncpu family\t: 25\n\
                   model\t\t: 17\nmodel name\t: other\n";
        assert_eq!(
            cpu_model_in(x86).as_deref(),
            Some("AMD EPYC (family 26 model 2)")
        );
        let arm =
            "processor\t: 0\nBogoMIPS\t: 108.00\nCPU part\t: 0xd08\n\nModel\t\t: Raspberry Pi 4\n";
        assert_eq!(cpu_model_in(arm).as_deref(), Some("Raspberry Pi 4"));
        assert_eq!(cpu_model_in("processor\t: 0\n"), None);
    }

    /// SMT siblings count once: 4 CPUs on 2 cores with 2 threads each, 2 VM CPUs of a core
    /// each; no topology, no count.
    #[test]
    fn sibling_sets_count_physical_cores() {
        let lists = |l: &[&str]| l.iter().map(|s| format!("{s}\n")).collect::<Vec<_>>();
        assert_eq!(
            distinct_sibling_sets(&lists(&["0,2", "1,3", "0,2", "1,3"])),
            Some(2)
        );
        assert_eq!(distinct_sibling_sets(&lists(&["0-1", "0-1"])), Some(1));
        assert_eq!(distinct_sibling_sets(&lists(&["0", "1"])), Some(2));
        assert_eq!(distinct_sibling_sets(&[]), None);
        let here = machine();
        assert!((1..=here.cores).contains(&here.physical_cores), "{here:?}");
    }

    /// Small (one thread) and large (all threads) fills: every value in place, no more.
    #[test]
    fn filled_huge_page_vectors_hold_len_copies() {
        for len in [
            0,
            5,
            PARALLEL_FILL_BYTES / 4 - 1,
            PARALLEL_FILL_BYTES / 4 + 3,
        ] {
            let v = huge_page_vec_filled(len, 1.5f32);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 1.5), "{len}");
        }
    }

    /// Whisper tiny's decoder step in f16: the 51865×384 head (38 MB), 4 layers of 4 self- and
    /// 2 cross-attention projections (288 KB each) and fc1/fc2 (1.1 MB each), 9 MB of K/V.
    fn tiny_step() -> (Vec<CycleRead>, usize) {
        let mut m = vec![51865 * 384 * 2];
        for _ in 0..4 {
            m.extend([384 * 384 * 2; 6]);
            m.extend([384 * 1536 * 2; 2]);
        }
        (once(&m), 4 * 2 * 1500 * 384 * 2)
    }

    fn once(bytes: &[usize]) -> Vec<CycleRead> {
        bytes.iter().map(|&b| CycleRead::once(b)).collect()
    }

    #[test]
    fn a_step_that_fits_the_cache_is_never_streamed() {
        // Intel Xeon kind: 480 MB L3, 2 MB L2 per core, 2 cores.
        let xeon = CacheSizes {
            l1d_per_core: 48 * KB,
            l2_per_core: 2 * MB,
            l3: 480 * MB,
        };
        let (m, kv) = tiny_step();
        let plan = plan_residency(&m, kv, cache_budget(&xeon, 2));
        assert!(plan.iter().all(|&r| r == Cached), "{plan:?}");
    }

    #[test]
    fn the_head_is_streamed_when_the_step_outgrows_the_cache() {
        // AMD EPYC kind: 32 MB L3 per CCD, 1 MB L2 (Zen 4) or 512 KB (Zen 3).
        for l2 in [MB, MB / 2] {
            let epyc = CacheSizes {
                l1d_per_core: 32 * KB,
                l2_per_core: l2,
                l3: 32 * MB,
            };
            let (m, kv) = tiny_step();
            let plan = plan_residency(&m, kv, cache_budget(&epyc, 2));
            assert_eq!(plan[0], Streamed, "the 38 MB head");
            // What stays cached fits the budget, and only what must go is streamed.
            let cached: usize = m
                .iter()
                .zip(&plan)
                .filter(|(_, &r)| r == Cached)
                .map(|(m, _)| m.bytes)
                .sum();
            assert!(cached + kv <= cache_budget(&epyc, 2));
            let streamed_small = plan[1..].iter().filter(|&&r| r == Streamed).count();
            assert!(streamed_small <= 2, "{plan:?}");
        }
    }

    #[test]
    fn the_smallest_matrices_stay_cached_when_all_are_read_once() {
        let plan = plan_residency(&once(&[10, 50, 20, 50, 5]), 0, 40);
        // 135 bytes: 5, 10, 20 stay (35 ≤ 40), both 50s stream.
        assert_eq!(plan, [Cached, Streamed, Cached, Streamed, Cached]);
        let plan = plan_residency(&once(&[10, 50, 20, 50, 5]), 30, 40);
        // 10 bytes of room beside the K/V: only the 5.
        assert_eq!(plan, [Streamed, Streamed, Streamed, Streamed, Cached]);
        // Nothing fits: everything streams.
        assert!(plan_residency(&once(&[10, 20]), 50, 40)
            .iter()
            .all(|&r| r == Streamed));
        // No cache known: everything streams (DRAM-bound either way, and nothing is evicted).
        assert!(plan_residency(&once(&[10, 20]), 0, 0)
            .iter()
            .all(|&r| r == Streamed));
        assert!(plan_residency(&[], 0, 0).is_empty());
    }

    #[test]
    fn a_plan_keeps_matrices_cached_only_where_the_machine_retains_them() {
        let m = once(&[10, 50, 20, 50, 5]);
        let mixed = [Cached, Streamed, Cached, Streamed, Cached];
        assert_eq!(plan_residency_retained(&m, 0, 40, || true), mixed);
        assert!(plan_residency_retained(&m, 0, 40, || false)
            .iter()
            .all(|&r| r == Streamed));
        // A step that fits, or one that streams everything anyway, does not ask.
        let never = || -> bool { panic!("only a plan that keeps and streams asks") };
        assert!(plan_residency_retained(&m, 0, 200, never)
            .iter()
            .all(|&r| r == Cached));
        assert!(plan_residency_retained(&m, 50, 40, never)
            .iter()
            .all(|&r| r == Streamed));
        // The decision from measured rates (Zen 4, shared 32 MB L3: a 25 MB set re-read after
        // 68 MB streamed as from memory, or kept in part; a cache that keeps it whole reads it
        // at twice the memory's rate).
        let measured = |kept_gbps: f64, cold_gbps: f64| Retention {
            kept_bytes: 25 * MB,
            streamed_bytes: 68 * MB,
            kept_gbps,
            cold_gbps,
            gain: kept_gbps / cold_gbps,
        };
        assert!(!measured(30.0, 29.0).holds());
        assert!(measured(58.0, 28.0).holds());
        assert!(!measured(37.0, 27.0).holds());
        assert!(measured(150.0, 100.0).holds() && !measured(149.0, 100.0).holds());
    }

    #[test]
    fn streamed_matrices_take_non_temporal_prefetches_only_where_they_keep_pace() {
        let l2 = 2 << 20;
        let never = || -> bool { panic!("a cached matrix must not measure the streaming reads") };
        assert_eq!(prefetch_for(Cached, 1 << 20, l2, never), Prefetch::None);
        assert_eq!(prefetch_for(Cached, 8 << 20, l2, never), Prefetch::Keep);
        assert_eq!(
            prefetch_for(Streamed, 8 << 20, l2, || true),
            Prefetch::Stream
        );
        assert_eq!(
            prefetch_for(Streamed, 8 << 20, l2, || false),
            Prefetch::Keep
        );
        // The decision from measured rates: an Intel Xeon's NTA reads (10.2 against 30.2 GB/s
        // with T0, measured) fall behind; an AMD EPYC's keep pace within the noise.
        let xeon = StreamingReads {
            nontemporal_gbps: 10.2,
            keep_gbps: 30.2,
        };
        let epyc = StreamingReads {
            nontemporal_gbps: 36.1,
            keep_gbps: 37.4,
        };
        assert!(!xeon.nontemporal_pays() && epyc.nontemporal_pays());
        let edge = |nt: f64| StreamingReads {
            nontemporal_gbps: nt,
            keep_gbps: 100.0,
        };
        assert!(edge(90.0).nontemporal_pays() && !edge(89.0).nontemporal_pays());
    }

    #[test]
    fn the_matrices_read_most_often_stay_cached_first() {
        // A Qwen3-TTS 0.6B frame in int8 on a 32 MB L3: 28 talker layers (qkv 4 MB, o 2 MB,
        // gate/up 6 MB, down 3 MB) and a 3 MB head read once; 5 predictor layers of the same
        // shapes read 15 times; 15 predictor heads of 2 MB, each read once.
        let layer = [4 * MB, 2 * MB, 6 * MB, 3 * MB];
        let mut m = vec![CycleRead::once(3 * MB)];
        for _ in 0..28 {
            m.extend(once(&layer));
        }
        let predictor = m.len()..m.len() + 5 * layer.len();
        for _ in 0..5 {
            m.extend(layer.iter().map(|&bytes| CycleRead { bytes, reads: 15 }));
        }
        m.extend(once(&[2 * MB; 15]));
        let budget = cache_budget(
            &CacheSizes {
                l1d_per_core: 32 * KB,
                l2_per_core: MB / 2,
                l3: 32 * MB,
            },
            2,
        );
        let plan = plan_residency(&m, 0, budget);
        let cached = |plan: &[Residency], range: std::ops::Range<usize>| {
            range
                .filter(|&i| plan[i] == Cached)
                .map(|i| m[i].bytes)
                .sum::<usize>()
        };
        // The budget (24.75 MB) goes to the predictor first: its five o (10 MB) and four of its
        // down projections (12 MB); one 2 MB matrix read once fills the rest.
        assert_eq!(cached(&plan, predictor.clone()), 22 * MB);
        assert_eq!(cached(&plan, 0..m.len()), 24 * MB);
        assert!(budget - 24 * MB < 2 * MB);
        // On the Intel kind (300 MB L3, 2 MB L2 per core) the whole predictor stays cached,
        // its 6 MB gate/up projections included, and read-once matrices fill the rest.
        let xeon = cache_budget(
            &CacheSizes {
                l1d_per_core: 48 * KB,
                l2_per_core: 2 * MB,
                l3: 300 * MB,
            },
            2,
        );
        let plan = plan_residency(&m, 0, xeon);
        assert!(predictor.clone().all(|i| plan[i] == Cached));
        assert!(cached(&plan, 0..m.len()) > cached(&plan, predictor.clone()));
        assert!(cached(&plan, 0..m.len()) <= xeon);
        let total: usize = m.iter().map(|m| m.bytes).sum();
        assert!(plan.contains(&Streamed) && total > xeon);
    }

    #[test]
    fn budget_counts_l3_and_the_l2s() {
        let c = CacheSizes {
            l1d_per_core: 32 * KB,
            l2_per_core: MB,
            l3: 32 * MB,
        };
        assert_eq!(cache_budget(&c, 2), 34 * MB / 4 * 3);
        let none = CacheSizes {
            l1d_per_core: 0,
            l2_per_core: 0,
            l3: 0,
        };
        assert_eq!(cache_budget(&none, 8), 0);
    }

    #[test]
    fn sysfs_sizes_and_instances() {
        assert_eq!(parse_size("32768K\n"), Some(32 * MB));
        assert_eq!(parse_size("1M"), Some(MB));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("x"), None);
        let c = |level, size, shared: &str| SysfsCache {
            level,
            size,
            shared: shared.into(),
        };
        // Two cores on one L3 instance (listed once per core) and their own L2s.
        let one_ccd = vec![
            c(1, 48 * KB, "0"),
            c(1, 32 * KB, "1"),
            c(2, MB, "0"),
            c(2, MB, "1"),
            c(3, 32 * MB, "0-7"),
            c(3, 32 * MB, "0-7"),
        ];
        assert_eq!(
            sizes_of(one_ccd),
            Some(CacheSizes {
                l1d_per_core: 32 * KB,
                l2_per_core: MB,
                l3: 32 * MB
            })
        );
        // Cores spread over two CCDs reach two L3 instances.
        let two_ccds = vec![c(2, MB, "0"), c(3, 32 * MB, "0-7"), c(3, 32 * MB, "8-15")];
        assert_eq!(sizes_of(two_ccds).unwrap().l3, 64 * MB);
        assert_eq!(sizes_of(vec![]), None);
    }

    #[test]
    fn detects_this_machine() {
        let m = machine();
        assert!(m.cores >= 1);
        assert!(!m.cpu_model.is_empty());
    }
}
