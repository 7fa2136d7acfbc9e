//! Intel's AMX tiles (Xeon from Sapphire Rapids), what their products share: the permission
//! Linux grants, the tile configuration, buffers on cache lines, weights packed as B tiles,
//! and the loop of tile products along k. The products themselves: [`super::amx_bf16`] (bf16
//! and f16 weights on `tdpbf16ps`) and [`super::amx_int8`] (int8 weights and x in 8 bits on
//! `tdpbssd`).
//!
//! Layout, per output block of 32 rows of x × 32 weight rows (four C tiles, tmm0–3):
//! A tiles (tmm4, tmm5) are 16 rows of x × 64 bytes straight from x's row-major copy (32 bf16
//! or 64 int8 codes a row); B tiles (tmm6, tmm7) are 16 words of k × 16 weight rows, a 32-bit
//! word holding one weight row's 2 bf16 or 4 int8 values of those columns ("VNNI" layout),
//! packed once per call and task from the row-major weights.
//!
//! Linux hands out the tiles' 8 KB of state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`, once per process); [`has`] asks.

use super::gemv::WeightMatrix;
use half::bf16;
use rayon::prelude::*;
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;
use std::sync::OnceLock;

/// Rows (of x, or weight rows) per tile.
pub(super) const TILE_ROWS: usize = 16;

/// 32-bit words of k per tile row (64 bytes: 32 bf16 or 64 int8 values).
pub(super) const TILE_WORDS: usize = 16;

/// Rows of x and weight rows per output block (two tiles each way).
pub(super) const BLOCK: usize = 2 * TILE_ROWS;

/// Bytes of x (in tile form) per chunk of rows that stays in L2 while a task's weights pass
/// over it.
const X_CHUNK_BYTES: usize = 1 << 20;

/// Tile steps (of [`TILE_WORDS`]) that the tiles' lines are prefetched ahead.
pub(super) const PREFETCH_STEPS: usize = 2;

/// Weight rows per task at most (packed bf16: 128 × k, 320 KB at k = 1280, in L2 beside x).
const MAX_TASK_ROWS: usize = 4 * BLOCK;

/// Bytes of a task's packed weights at most (f16's three parts take fewer rows than
/// [`MAX_TASK_ROWS`]; a block's at least).
const MAX_TASK_BYTES: usize = 512 << 10;

/// The tile instructions of a product, by their CPUID bit (leaf 7, EDX).
#[derive(Clone, Copy, Debug)]
pub(super) enum TileOps {
    /// AMX-BF16: `tdpbf16ps`.
    Bf16 = 22,
    /// AMX-INT8: `tdpbssd` and its kin.
    Int8 = 25,
}

/// Whether this CPU has `ops` and the tiles, and the kernel granted this process the tile
/// data state; `VOXIDE_AMX=0` in the environment turns the tiles off (the products then take
/// the kernels of CPUs without them). Asks CPUID: callers keep the answer.
pub(super) fn has(ops: TileOps) -> bool {
    const AMX_TILE: u32 = 24;
    let leaf7 = __cpuid(0).eax >= 7 && {
        let edx = __cpuid_count(7, 0).edx;
        (edx >> AMX_TILE) & 1 == 1 && (edx >> ops as u32) & 1 == 1
    };
    leaf7 && granted()
}

/// The tile state, asked of Linux once (other systems are not asked and do not run the tiles).
fn granted() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        if std::env::var_os("VOXIDE_AMX").is_some_and(|v| v == "0") {
            return false;
        }
        #[cfg(target_os = "linux")]
        {
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: arch_prctl with this request only changes the process's permitted state.
            unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                ) == 0
            }
        }
        #[cfg(not(target_os = "linux"))]
        false
    })
}

/// The tile configuration: palette 1, all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = {
    let mut bytes_per_row = [0u16; 16];
    let mut rows = [0u8; 16];
    let mut t = 0;
    while t < 8 {
        bytes_per_row[t] = 64;
        rows[t] = TILE_ROWS as u8;
        t += 1;
    }
    TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row,
        rows,
    }
};

/// Loads [`CONFIG`] into this core's tiles.
///
/// # Safety
/// The tiles run here ([`has`]).
#[inline(always)]
pub(super) unsafe fn configure() {
    asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly));
}

/// Frees this core's tile state.
///
/// # Safety
/// The tiles run here ([`has`]).
#[inline(always)]
pub(super) unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem));
}

/// How a product's work is cut: chunks of `chunk_rows` rows of x, whose tile form stays in L2,
/// and tasks of `task_rows` weight rows (each packed by its task).
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    pub chunk_rows: usize,
    pub task_rows: usize,
}

impl Plan {
    /// The plan for n weight rows, `words` 32-bit words a row of x and of packed weights.
    pub(super) fn new(n: usize, words: usize) -> Self {
        let bytes = 4 * words;
        let threads = rayon::current_num_threads();
        let most_rows = (MAX_TASK_BYTES / bytes / BLOCK * BLOCK).clamp(BLOCK, MAX_TASK_ROWS);
        Self {
            chunk_rows: (X_CHUNK_BYTES / bytes / BLOCK * BLOCK).clamp(BLOCK, 16 * BLOCK),
            task_rows: (n.div_ceil(2 * threads).next_multiple_of(BLOCK)).clamp(BLOCK, most_rows),
        }
    }

    /// Runs `task(r0, r1, packed)` for every task's weight rows r0..r1 of n on all threads,
    /// `packed` room for the task's weights on cache lines (`words` a row).
    pub(super) fn for_each_task(
        &self,
        n: usize,
        words: usize,
        task: impl Fn(usize, usize, &mut [u32]) + Sync,
    ) {
        let rows = self.task_rows;
        (0..n.div_ceil(rows)).into_par_iter().for_each(|t| {
            let mut packed_buf = PACKED.take();
            let packed = lines(&mut packed_buf, rows * words);
            task(t * rows, ((t + 1) * rows).min(n), packed);
            PACKED.set(packed_buf);
        });
    }
}

thread_local! {
    /// The last call's x in tile form and each thread's packed weights, reused so that a call
    /// faults in no fresh pages. Taken, not borrowed, as [`super::gemv_int8`]'s buffers.
    static X_TILES: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    static PACKED: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on room for m rows of x in tile form (`words` a row, on cache lines), rows past m
/// up to a whole block zeroed, which `f` fills.
pub(super) fn with_x_tiles<R>(m: usize, words: usize, f: impl FnOnce(&mut [u32]) -> R) -> R {
    let mut buf = X_TILES.take();
    let tiles = lines(&mut buf, m.next_multiple_of(BLOCK) * words);
    tiles[m * words..].fill(0);
    let r = f(tiles);
    X_TILES.set(buf);
    r
}

/// `len` elements of `buf` from a cache line's start: a tile row that straddles two lines
/// loads ~6× slower (3.3 → 21 ns a tile from L1 on Emerald Rapids, 16 bytes off a line as
/// large `malloc` blocks are), so every tile's rows start on a line.
pub(super) fn lines(buf: &mut Vec<u32>, len: usize) -> &mut [u32] {
    const LINE: usize = 64 / 4;
    if buf.len() < len + LINE {
        buf.resize(len + LINE, 0);
    }
    let start = buf.as_ptr().align_offset(64);
    &mut buf[start..start + len]
}

/// Weights as B tiles: their 32-bit words of k (2 bf16 or 4 int8 values of one row) as they
/// are, or (f16) split into bf16 parts, each part a tile's depth (see [`super::amx_bf16`]).
pub(crate) trait TileWords: Copy + Send + Sync {
    /// Tiles' depth per tile row's worth of k: the parts of the weights multiplied.
    const PARTS: usize = 1;

    /// The parts of 16 words (one per lane).
    ///
    /// # Safety
    /// The CPU has AVX512-BF16.
    #[inline(always)]
    unsafe fn parts(words: __m512i) -> [__m512i; 3] {
        [words; 3]
    }

    /// [`Self::parts`] of one word, for rows short of a tile.
    fn parts_of(word: u32) -> [u32; 3] {
        [word; 3]
    }
}

impl TileWords for bf16 {}

impl TileWords for i8 {}

/// Weight rows r0..r1 as B tiles: per block of 32 rows, its two halves of 16, each
/// `[word][row]` (with parts, per tile row's worth of k the parts' 16 words each), zero rows
/// past r1.
///
/// # Safety
/// The CPU has AVX512-BF16; a row's bytes are a whole number of words; `packed` holds the
/// blocks' rows.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn pack_weights<W: TileWords>(
    w: &WeightMatrix<W>,
    r0: usize,
    r1: usize,
    packed: &mut [u32],
) {
    let words = w.cols * std::mem::size_of::<W>() / 4;
    let src = w.data.as_ptr() as *const i32;
    // Word p's part q in a tile's packed order.
    let at = |p: usize, q: usize| {
        ((p / TILE_WORDS * W::PARTS + q) * TILE_WORDS + p % TILE_WORDS) * TILE_ROWS
    };
    for (h, tile) in packed
        .chunks_exact_mut(TILE_ROWS * words * W::PARTS)
        .enumerate()
    {
        let n0 = r0 + h * TILE_ROWS;
        let rows = r1.saturating_sub(n0).min(TILE_ROWS);
        if rows == TILE_ROWS {
            // 16 × 16 words at a time: 16 rows' 64 bytes loaded, transposed in registers
            // (gathering each word's 16 rows took twice as long).
            let base = src.add(n0 * words);
            for p0 in (0..words).step_by(TILE_WORDS) {
                let rows: [__m512i; TILE_ROWS] = std::array::from_fn(|i| {
                    _mm512_loadu_si512(base.add(i * words + p0) as *const _)
                });
                for (j, column) in transpose(rows).into_iter().enumerate() {
                    let parts = W::parts(column);
                    for (q, v) in parts.into_iter().take(W::PARTS).enumerate() {
                        _mm512_storeu_si512(tile.as_mut_ptr().add(at(p0 + j, q)) as *mut _, v);
                    }
                }
            }
        } else {
            tile.fill(0);
            for i in 0..rows {
                for p in 0..words {
                    let parts = W::parts_of(*src.add((n0 + i) * words + p) as u32);
                    for (q, v) in parts.into_iter().take(W::PARTS).enumerate() {
                        tile[at(p, q) + i] = v;
                    }
                }
            }
        }
    }
}

/// The 16 × 16 words of `rows` transposed: word j of every row in the j-th vector. 32-bit,
/// then 64-bit interleaves give each 128-bit lane four rows' words; two rounds of lane shuffles
/// gather the lanes.
#[inline(always)]
unsafe fn transpose(rows: [__m512i; 16]) -> [__m512i; 16] {
    // pairs[2g + h]: rows 2g, 2g + 1 interleaved, words 0–1 (h = 0) or 2–3 (h = 1) of each lane.
    let pairs: [__m512i; 16] = std::array::from_fn(|i| {
        let (a, b) = (rows[i & !1], rows[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_epi32(a, b)
        } else {
            _mm512_unpackhi_epi32(a, b)
        }
    });
    // quads[4g + c]: in lane L, word 4L + c of rows 4g..4g + 4.
    let quads: [__m512i; 16] = std::array::from_fn(|i| {
        let (g, c) = (i / 4, i % 4);
        let (a, b) = (pairs[4 * g + c / 2], pairs[4 * g + 2 + c / 2]);
        if c % 2 == 0 {
            _mm512_unpacklo_epi64(a, b)
        } else {
            _mm512_unpackhi_epi64(a, b)
        }
    });
    let mut out = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        let [b0, b1, b2, b3] = [0, 1, 2, 3].map(|g| quads[4 * g + c]);
        let (u0, u1) = (
            _mm512_shuffle_i32x4::<0x44>(b0, b1),
            _mm512_shuffle_i32x4::<0xEE>(b0, b1),
        );
        let (u2, u3) = (
            _mm512_shuffle_i32x4::<0x44>(b2, b3),
            _mm512_shuffle_i32x4::<0xEE>(b2, b3),
        );
        // Word 4L + c of all 16 rows: lane L of b0..b3.
        out[c] = _mm512_shuffle_i32x4::<0x88>(u0, u2);
        out[4 + c] = _mm512_shuffle_i32x4::<0xDD>(u0, u2);
        out[8 + c] = _mm512_shuffle_i32x4::<0x88>(u1, u3);
        out[12 + c] = _mm512_shuffle_i32x4::<0xDD>(u1, u3);
    }
    out
}

/// Zeroes the block's sums (tmm0–3).
///
/// # Safety
/// The tiles are configured ([`configure`]).
#[inline(always)]
pub(super) unsafe fn zero_sums() {
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
}

/// Adds to tmm0–3 the products of one 32 × 32 block over words p0..p1 of k (whole tile steps):
/// rows of x at `xa` (`words` apart), weights at `wb` (two B tiles' columns, `words` × 16 each);
/// signed bytes into int32 sums (`tdpbssd`) where `INT8`, else bf16 pairs into f32 sums
/// (`tdpbf16ps`).
///
/// # Safety
/// The tiles are configured; both operands hold `words` words a row, p1 ≤ words.
#[inline(always)]
pub(super) unsafe fn multiply<const INT8: bool>(
    xa: *const u32,
    wb: *const u32,
    words: usize,
    (p0, p1): (usize, usize),
) {
    let x_stride = words * 4;
    let mut p = p0;
    while p < p1 {
        let a0 = xa.add(p);
        let a1 = xa.add(TILE_ROWS * words + p);
        let b0 = wb.add(p * TILE_ROWS);
        let b1 = wb.add((words + p) * TILE_ROWS);
        // The next steps' 64 lines into L1 while these multiply: a tile load waits on each of
        // its 16 lines that misses L1.
        let ahead = PREFETCH_STEPS * TILE_WORDS;
        if p + ahead < words {
            for r in 0..TILE_ROWS {
                _mm_prefetch::<_MM_HINT_T0>(a0.add(r * words + ahead) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(a1.add(r * words + ahead) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b0.add((ahead + r) * TILE_ROWS) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b1.add((ahead + r) * TILE_ROWS) as *const i8);
            }
        }
        macro_rules! step {
            ($dot:literal) => {
                asm!(
                    "tileloadd tmm4, [{a0} + {xs} * 1]",
                    "tileloadd tmm5, [{a1} + {xs} * 1]",
                    "tileloadd tmm6, [{b0} + {ws} * 1]",
                    "tileloadd tmm7, [{b1} + {ws} * 1]",
                    concat!($dot, " tmm0, tmm4, tmm6"),
                    concat!($dot, " tmm1, tmm4, tmm7"),
                    concat!($dot, " tmm2, tmm5, tmm6"),
                    concat!($dot, " tmm3, tmm5, tmm7"),
                    a0 = in(reg) a0,
                    a1 = in(reg) a1,
                    b0 = in(reg) b0,
                    b1 = in(reg) b1,
                    xs = in(reg) x_stride,
                    ws = in(reg) 64usize,
                    options(nostack, readonly)
                )
            };
        }
        if INT8 {
            step!("tdpbssd");
        } else {
            step!("tdpbf16ps");
        }
        p += TILE_WORDS;
    }
}

/// Stores tmm0–3 (f32 or int32 sums) as the 32 × 32 block at `dst` (rows `stride` elements
/// apart).
///
/// # Safety
/// The tiles are configured; `dst` holds the block's 32 rows of 32 four-byte elements.
#[inline(always)]
pub(super) unsafe fn store_sums<T>(dst: *mut T, stride: usize) {
    debug_assert_eq!(std::mem::size_of::<T>(), 4);
    let (bytes, half) = (stride * 4, TILE_ROWS);
    asm!(
        "tilestored [{c00} + {s} * 1], tmm0",
        "tilestored [{c01} + {s} * 1], tmm1",
        "tilestored [{c10} + {s} * 1], tmm2",
        "tilestored [{c11} + {s} * 1], tmm3",
        c00 = in(reg) dst,
        c01 = in(reg) dst.add(half),
        c10 = in(reg) dst.add(half * stride),
        c11 = in(reg) dst.add(half * stride + half),
        s = in(reg) bytes,
        options(nostack)
    );
}
