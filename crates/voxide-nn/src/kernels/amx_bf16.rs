//! bf16 products on Intel's AMX tiles (Sapphire Rapids and later): `tdpbf16ps` multiplies a
//! 16 × 32 tile of bf16 x by a 32 × 16 tile of bf16 weights into 16 × 16 f32 sums, 16 384
//! multiply-adds per instruction — where AVX-512 BF16's `vdpbf16ps` on the same cores issues at
//! half the f32 FMA rate (PERFORMANCE.md #167), so that bf16 weights were widened to f32 there.
//!
//! For bf16 weights x is rounded to bf16 once (to nearest even, as [`super::small_m_bf16`]
//! does), products are exact and sum in f32. Each output element sums its k products in the
//! same order whatever the number of rows (tiles of 32 columns in order, zero rows padding a
//! partial tile), so rows come out alike in a block of any size, as chunk-invariant layers need.
//!
//! f16 weights (Whisper's) have three more significand bits than bf16 and no tile of their own
//! before AMX-FP16, so each splits exactly into two bf16 parts, w = w_hi + w_lo, and x into
//! x_hi + x_lo (x to 16 significand bits, where whisper.cpp rounds x to f16's 11): every tile of
//! k runs three products, x_hi·w_hi + x_lo·w_hi + x_hi·w_lo, leaving out x_lo·w_lo (≤ 2⁻¹⁸ of
//! |x·w|). Three times the tiles' work still ran 0.95–2.4× the better f32 kernel's rate on
//! the same cores, Whisper large-v3-turbo's encoder 1.3–1.5× faster (PERFORMANCE.md #184).
//! This is the split of "bf16x3" GEMMs (Henry, Tang and Heinecke, "Leveraging the bfloat16
//! artificial intelligence datatype for higher-precision computations", ARITH 2019), with the
//! weights' split exact.
//!
//! Layout, per output block of 32 rows of x × 32 weight rows (four C tiles, tmm0–3):
//! A tiles (tmm4, tmm5) are 16 rows of x × 32 bf16 (64 bytes) straight from x rounded row-major;
//! B tiles (tmm6, tmm7) are 16 pairs of k × 16 weight rows, the pair `(w[n][2p], w[n][2p + 1])`
//! in one 32-bit element ("VNNI" layout), packed once per call and task from the row-major
//! weights. With parts (f16), each 32 columns of k become `TileWeights::PARTS` tiles' depth
//! in both, x's parts against the weights' in the order above. C stores straight into y where
//! the block is whole and y's rows start on cache lines.
//!
//! Linux hands out the tiles' 8 KB of state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`, once per process); [`runs`] asks.

use super::gemv::{OutPtr, WeightMatrix};
use half::{bf16, f16};
use rayon::prelude::*;
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;
use std::sync::OnceLock;

/// bf16 values along k per tile row (64 bytes).
pub const TILE_K: usize = 32;

/// Rows (of x, or weight rows) per tile.
const TILE_ROWS: usize = 16;

/// Rows of x and weight rows per output block (two tiles each way).
const BLOCK: usize = 2 * TILE_ROWS;

/// Bytes of x (rounded) per chunk of rows that stays in L2 while a task's weights pass over it.
const X_CHUNK_BYTES: usize = 1 << 20;

/// k steps (of [`TILE_K`]) that the tiles' lines are prefetched ahead.
const PREFETCH_STEPS: usize = 2;

/// Weight rows per task at most (packed: 128 × k bf16, 320 KB at k = 1280, in L2 beside x).
const MAX_TASK_ROWS: usize = 4 * BLOCK;

/// Bytes of a task's packed weights at most (f16's three parts take fewer rows than
/// [`MAX_TASK_ROWS`]; a block's at least).
const MAX_TASK_BYTES: usize = 512 << 10;

/// Whether this CPU and OS run the tiles: CPUID's AMX-TILE and AMX-BF16, and the kernel granted
/// this process the tile data state; `VOXIDE_AMX=0` in the environment turns them off (the
/// products then take the kernels of CPUs without them).
pub fn runs() -> bool {
    static RUNS: OnceLock<bool> = OnceLock::new();
    *RUNS.get_or_init(|| {
        if std::env::var_os("VOXIDE_AMX").is_some_and(|v| v == "0") {
            return false;
        }
        let leaf7 = __cpuid(0).eax >= 7 && (__cpuid_count(7, 0).edx >> 22) & 0b101 == 0b101;
        leaf7 && request_tile_state()
    })
}

/// Asks Linux for the tile data state (XFEATURE 18); other systems are not asked and do not run
/// the tiles.
fn request_tile_state() -> bool {
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
}

/// Whether a product of k columns fits the tiles (whole tile rows along k; the rest take the
/// other kernels).
pub fn fits(k: usize) -> bool {
    k > 0 && k.is_multiple_of(TILE_K)
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

/// Weights the tiles multiply: bf16 as they are, f16 in two exact bf16 parts (see the module).
pub(crate) trait TileWeights: Copy + Send + Sync {
    /// Tiles' depth per 32 columns of k: the products of x's parts and the weights' parts.
    const PARTS: usize;

    /// A row of x as the A tiles' pairs, per 32 columns the parts' 16 pairs each.
    ///
    /// # Safety
    /// The CPU has AVX512-BF16; `row.len()` is a multiple of 32; `out` holds PARTS · len / 2.
    unsafe fn round_x(row: &[f32], out: &mut [u32]);

    /// The parts of 16 weight pairs (a lane's two weights in one u32) as bf16 pairs.
    ///
    /// # Safety
    /// The CPU has AVX512-BF16.
    unsafe fn parts(pairs: __m512i) -> [__m512i; 3];

    /// [`Self::parts`] of one pair, for rows short of a tile.
    fn parts_of(pair: u32) -> [u32; 3];
}

impl TileWeights for bf16 {
    const PARTS: usize = 1;

    #[inline(always)]
    unsafe fn round_x(row: &[f32], out: &mut [u32]) {
        super::small_m_bf16::round_pairs(row, out)
    }

    #[inline(always)]
    unsafe fn parts(pairs: __m512i) -> [__m512i; 3] {
        [pairs; 3]
    }

    fn parts_of(pair: u32) -> [u32; 3] {
        [pair; 3]
    }
}

impl TileWeights for f16 {
    const PARTS: usize = 3;

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn round_x(row: &[f32], out: &mut [u32]) {
        for (j, out) in out.chunks_exact_mut(3 * TILE_K / 2).enumerate() {
            let lo = _mm512_loadu_ps(row.as_ptr().add(j * TILE_K));
            let hi = _mm512_loadu_ps(row.as_ptr().add(j * TILE_K + TILE_K / 2));
            let [x_hi, x_lo] = split(lo, hi);
            for (part, v) in [x_hi, x_lo, x_hi].into_iter().enumerate() {
                _mm512_storeu_si512(out.as_mut_ptr().add(part * TILE_K / 2) as *mut _, v);
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn parts(pairs: __m512i) -> [__m512i; 3] {
        let lo = _mm512_cvtph_ps(_mm512_castsi512_si256(pairs));
        let hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(pairs));
        let [w_hi, w_lo] = split(lo, hi);
        [w_hi, w_hi, w_lo]
    }

    fn parts_of(pair: u32) -> [u32; 3] {
        let part = |v: f32| {
            let hi = bf16::from_f32(v);
            (
                hi.to_bits() as u32,
                bf16::from_f32(v - hi.to_f32()).to_bits() as u32,
            )
        };
        let (a_hi, a_lo) = part(f16::from_bits(pair as u16).to_f32());
        let (b_hi, b_lo) = part(f16::from_bits((pair >> 16) as u16).to_f32());
        let (hi, lo) = (a_hi | b_hi << 16, a_lo | b_lo << 16);
        [hi, hi, lo]
    }
}

/// 32 values (the first 16 in `lo`) as bf16 pairs of their high parts (rounded to nearest
/// even) and of what those leave (x − hi is exact in f32; rounded again).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn split(lo: __m512, hi: __m512) -> [__m512i; 2] {
    let high = _mm512_cvtne2ps_pbh(hi, lo);
    let bits = std::mem::transmute::<__m512bh, __m512i>(high);
    // A bf16 is the upper half of its f32.
    let widen =
        |half: __m256i| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(half)));
    let rest = _mm512_cvtne2ps_pbh(
        _mm512_sub_ps(hi, widen(_mm512_extracti64x4_epi64::<1>(bits))),
        _mm512_sub_ps(lo, widen(_mm512_castsi512_si256(bits))),
    );
    [bits, std::mem::transmute::<__m512bh, __m512i>(rest)]
}

/// y (m × n) = x (m × k) · wᵀ (+ bias) for bf16 or f16 `w` ([`TileWeights`]); the caller
/// checked the operands, that the tiles [run] and that k [fits].
///
/// [run]: runs
pub(crate) fn matmul<W: TileWeights>(
    x: &[f32],
    w: &WeightMatrix<W>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    let (n, k) = (w.rows, w.cols);
    debug_assert!(runs() && fits(k) && super::small_m_bf16::runs());
    // x rounded (in parts), row-major, zero rows up to a whole block.
    let pairs = W::PARTS * k / 2;
    let mut rounded_buf = ROUNDED.take();
    let xb = lines(&mut rounded_buf, m.next_multiple_of(BLOCK) * pairs);
    xb[m * pairs..].fill(0);
    xb.par_chunks_mut(pairs)
        .zip(x[..m * k].par_chunks(k))
        // SAFETY: AMX CPUs have AVX512-BF16 (asserted above); k is a multiple of 32 and each
        // row holds its pairs.
        .for_each(|(out, row)| unsafe { W::round_x(row, out) });
    let chunk_rows = (X_CHUNK_BYTES / (4 * pairs) / BLOCK * BLOCK).clamp(BLOCK, 16 * BLOCK);
    let threads = rayon::current_num_threads();
    let most_rows = (MAX_TASK_BYTES / (4 * pairs) / BLOCK * BLOCK).clamp(BLOCK, MAX_TASK_ROWS);
    let task_rows = (n.div_ceil(2 * threads).next_multiple_of(BLOCK)).clamp(BLOCK, most_rows);
    let out = OutPtr(y.as_mut_ptr());
    let rounded = &*xb;
    (0..n.div_ceil(task_rows)).into_par_iter().for_each(|t| {
        let (r0, r1) = (t * task_rows, ((t + 1) * task_rows).min(n));
        let mut packed_buf = PACKED.take();
        let packed = lines(&mut packed_buf, task_rows * pairs);
        // SAFETY: the tiles run (the caller's check); x holds whole blocks of rows; the packed
        // buffer holds the task's rows; tasks write disjoint columns of y.
        unsafe { task(rounded, w, bias, out, m, r0, r1, chunk_rows, packed) };
        PACKED.set(packed_buf);
    });
    ROUNDED.set(rounded_buf);
}

/// `len` elements of `buf` from a cache line's start: a tile row that straddles two lines
/// loads ~6× slower (3.3 → 21 ns a tile from L1 on Emerald Rapids, 16 bytes off a line as
/// large `malloc` blocks are), so every tile's rows start on a line.
fn lines(buf: &mut Vec<u32>, len: usize) -> &mut [u32] {
    const LINE: usize = 64 / 4;
    if buf.len() < len + LINE {
        buf.resize(len + LINE, 0);
    }
    let start = buf.as_ptr().align_offset(64);
    &mut buf[start..start + len]
}

/// A block's sums where y's rows do not start on a cache line (stored, then copied).
#[repr(C, align(64))]
struct Edge([f32; BLOCK * BLOCK]);

thread_local! {
    /// The last call's rounded x and each thread's packed weights, reused so that a call
    /// faults in no fresh pages. Taken, not borrowed, as [`super::gemv_int8`]'s buffers.
    static ROUNDED: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    static PACKED: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
}

/// Output columns r0..r1 (weight rows) for all m rows of x.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn task<W: TileWeights>(
    xb: &[u32],
    w: &WeightMatrix<W>,
    bias: Option<&[f32]>,
    y: OutPtr,
    m: usize,
    r0: usize,
    r1: usize,
    chunk_rows: usize,
    packed: &mut [u32],
) {
    let n = w.rows;
    let pairs = W::PARTS * w.cols / 2;
    let blocks = (r1 - r0).div_ceil(BLOCK);
    pack_weights(w, r0, r1, &mut packed[..blocks * BLOCK * pairs]);
    asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly));
    let mut edge = Edge([0f32; BLOCK * BLOCK]);
    // Tile rows straight into y only where each starts on a cache line (see `lines`).
    let y_lines = (y.0 as usize).is_multiple_of(64) && n.is_multiple_of(16);
    for c0 in (0..m).step_by(chunk_rows) {
        for b in 0..blocks {
            let n0 = r0 + b * BLOCK;
            // B tiles: the block's weight rows n0..n0 + 16 and n0 + 16..n0 + 32, [pair][row].
            let wb = packed.as_ptr().add(b * BLOCK * pairs);
            for m0 in (c0..(c0 + chunk_rows).min(m)).step_by(BLOCK) {
                let xa = xb.as_ptr().add(m0 * pairs);
                block(xa, wb, pairs);
                let direct = y_lines && m0 + BLOCK <= m && n0 + BLOCK <= r1;
                let (dst, stride) = if direct {
                    (y.0.add(m0 * n + n0), n)
                } else {
                    (edge.0.as_mut_ptr(), BLOCK)
                };
                store(dst, stride);
                if !direct {
                    for i in 0..BLOCK.min(m - m0) {
                        let cols = BLOCK.min(r1 - n0);
                        std::ptr::copy_nonoverlapping(
                            edge.0.as_ptr().add(i * BLOCK),
                            y.0.add((m0 + i) * n + n0),
                            cols,
                        );
                    }
                }
            }
        }
    }
    asm!("tilerelease", options(nostack, nomem));
    if let Some(bias) = bias {
        for i in 0..m {
            let row = std::slice::from_raw_parts_mut(y.0.add(i * n + r0), r1 - r0);
            for (v, b) in row.iter_mut().zip(&bias[r0..r1]) {
                *v += b;
            }
        }
    }
}

/// The sums of one 32 × 32 block over all k into tmm0–3: rows of x at `xa` (k / 2 pairs
/// apart), weights at `wb` (two B tiles' columns, `pairs` × 16 each).
#[inline(always)]
unsafe fn block(xa: *const u32, wb: *const u32, pairs: usize) {
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
    let x_stride = pairs * 4;
    let mut p = 0;
    while p < pairs {
        let a0 = xa.add(p);
        let a1 = xa.add(TILE_ROWS * pairs + p);
        let b0 = wb.add(p * TILE_ROWS);
        let b1 = wb.add((pairs + p) * TILE_ROWS);
        // The next step's 64 lines into L1 while these multiply: a tile load waits on each of
        // its 16 lines that misses L1.
        let ahead = PREFETCH_STEPS * TILE_K / 2;
        if p + ahead < pairs {
            for r in 0..TILE_ROWS {
                _mm_prefetch::<_MM_HINT_T0>(a0.add(r * pairs + ahead) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(a1.add(r * pairs + ahead) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b0.add((ahead + r) * TILE_ROWS) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b1.add((ahead + r) * TILE_ROWS) as *const i8);
            }
        }
        asm!(
            "tileloadd tmm4, [{a0} + {xs} * 1]",
            "tileloadd tmm5, [{a1} + {xs} * 1]",
            "tileloadd tmm6, [{b0} + {ws} * 1]",
            "tileloadd tmm7, [{b1} + {ws} * 1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0,
            a1 = in(reg) a1,
            b0 = in(reg) b0,
            b1 = in(reg) b1,
            xs = in(reg) x_stride,
            ws = in(reg) 64usize,
            options(nostack, readonly)
        );
        p += TILE_K / 2;
    }
}

/// Stores tmm0–3 as the 32 × 32 block at `dst` (rows `stride` floats apart).
#[inline(always)]
unsafe fn store(dst: *mut f32, stride: usize) {
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

/// Weight rows r0..r1 as B tiles: per block of 32 rows, its two halves of 16, each `[pair][row]`
/// (the pair `(w[n][2p], w[n][2p + 1])` as one u32; with parts, per 32 columns the parts' 16
/// pairs each), zero rows past r1.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_weights<W: TileWeights>(
    w: &WeightMatrix<W>,
    r0: usize,
    r1: usize,
    packed: &mut [u32],
) {
    let pairs = w.cols / 2;
    let src = w.data.as_ptr() as *const i32;
    let lanes = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(pairs as i32),
    );
    // Pair p's part q in a tile's packed order.
    let at = |p: usize, q: usize| {
        let per = TILE_K / 2;
        ((p / per * W::PARTS + q) * per + p % per) * TILE_ROWS
    };
    for (h, tile) in packed
        .chunks_exact_mut(TILE_ROWS * pairs * W::PARTS)
        .enumerate()
    {
        let n0 = r0 + h * TILE_ROWS;
        let rows = r1.saturating_sub(n0).min(TILE_ROWS);
        if rows == TILE_ROWS {
            // One gather per pair: element i from weight row n0 + i.
            let base = src.add(n0 * pairs);
            for p in 0..pairs {
                let parts = W::parts(_mm512_i32gather_epi32::<4>(lanes, base.add(p)));
                for (q, v) in parts.into_iter().take(W::PARTS).enumerate() {
                    _mm512_storeu_si512(tile.as_mut_ptr().add(at(p, q)) as *mut _, v);
                }
            }
        } else {
            tile.fill(0);
            for i in 0..rows {
                for p in 0..pairs {
                    let parts = W::parts_of(*src.add((n0 + i) * pairs + p) as u32);
                    for (q, v) in parts.into_iter().take(W::PARTS).enumerate() {
                        tile[at(p, q) + i] = v;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemv::tests::{check, data, reference};

    /// Every shape edge (rows of x and weight rows short of a block, one tile along k, k longer
    /// than a chunk's share), with and without bias: each output within f32 summation of the
    /// f64 product of bf16(x) and the weights, and each row of x bit for bit what it gets alone.
    #[test]
    fn tiles_multiply_bf16_x_and_rows_come_out_alike() {
        if !(runs() && super::super::small_m_bf16::runs()) {
            println!("no AMX tiles on this CPU: nothing to check");
            return;
        }
        for (m, n, k) in [
            (1, 16, 32),
            (33, 45, 64),
            (100, 96, 1280),
            (7, 200, 4096),
            (64, 32, 96),
        ] {
            let w: Vec<bf16> = data(n * k, 1).into_iter().map(bf16::from_f32).collect();
            let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            let wm = WeightMatrix::new(&w, n, k);
            let x = data(m * k, 2);
            let rounded: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
            let bias = data(n, 3);
            for bias in [None, Some(&bias[..])] {
                let what = format!("{m}×{n}×{k}, bias {}", bias.is_some());
                let mut y = vec![f32::NAN; m * n];
                matmul(&x, &wm, bias, &mut y, m);
                let want = reference(&rounded, &wf, bias, m, k);
                check(&y, &want, &rounded, &wf, m, k, &what);
                rows_alone(&x, &wm, bias, &y, m, &what);
            }
        }
    }

    /// Each row of x through the tiles alone: the same bits as in the block.
    fn rows_alone<W: TileWeights>(
        x: &[f32],
        w: &WeightMatrix<W>,
        bias: Option<&[f32]>,
        y: &[f32],
        m: usize,
        what: &str,
    ) {
        let (n, k) = (w.rows, w.cols);
        for i in 0..m {
            let mut alone = vec![0f32; n];
            matmul(&x[i * k..(i + 1) * k], w, bias, &mut alone, 1);
            assert_eq!(alone, y[i * n..(i + 1) * n], "{what}: row {i} alone");
        }
    }

    /// f16 weights in parts: each output within f32 summation of the f64 sum of the three
    /// products of parts (x_hi·w_hi + x_lo·w_hi + x_hi·w_lo), within 2⁻¹⁶ of Σ|x·w| of the
    /// exact product of x and the f16 weights, and each row alike alone; the parts are exact
    /// (w_hi + w_lo = w) and x_hi + x_lo is x to 2⁻¹⁷.
    #[test]
    fn f16_weights_multiply_in_bf16_parts_to_16_bits_of_x() {
        if !(runs() && super::super::small_m_bf16::runs()) {
            println!("no AMX tiles on this CPU: nothing to check");
            return;
        }
        let part = |v: f32| {
            let hi = bf16::from_f32(v).to_f32();
            (hi, bf16::from_f32(v - hi).to_f32())
        };
        for (m, n, k) in [(1, 16, 32), (33, 45, 64), (100, 96, 1280), (40, 70, 384)] {
            // Weights over f16's range of exponents, so that the parts are not just bf16's.
            let w: Vec<f16> = data(n * k, 1)
                .iter()
                .enumerate()
                .map(|(i, v)| f16::from_f32(v * (1 << (i % 7)) as f32 / 8.0))
                .collect();
            let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            let wm = WeightMatrix::new(&w, n, k);
            let x = data(m * k, 2);
            // The parts laid out as the kernel multiplies them: per 32 columns x_hi, x_lo,
            // x_hi against w_hi, w_hi, w_lo.
            let in_parts = |v: &[f32], rows: usize, order: [bool; 3]| -> Vec<f32> {
                let mut out = Vec::with_capacity(3 * v.len());
                for r in 0..rows {
                    for block in v[r * k..(r + 1) * k].chunks(TILE_K) {
                        for high in order {
                            out.extend(block.iter().map(|&e| {
                                let (hi, lo) = part(e);
                                if high {
                                    hi
                                } else {
                                    lo
                                }
                            }));
                        }
                    }
                }
                out
            };
            let (x3, w3) = (
                in_parts(&x, m, [true, false, true]),
                in_parts(&wf, n, [true, true, false]),
            );
            for (&v, &f) in w.iter().zip(&wf) {
                let (hi, lo) = part(f);
                assert_eq!(hi + lo, v.to_f32(), "the weight's parts are exact");
            }
            let bias = data(n, 3);
            for bias in [None, Some(&bias[..])] {
                let what = format!("f16 {m}×{n}×{k}, bias {}", bias.is_some());
                let mut y = vec![f32::NAN; m * n];
                matmul(&x, &wm, bias, &mut y, m);
                check(
                    &y,
                    &reference(&x3, &w3, bias, m, 3 * k),
                    &x3,
                    &w3,
                    m,
                    3 * k,
                    &what,
                );
                let exact = reference(&x, &wf, bias, m, k);
                for i in 0..m {
                    for r in 0..n {
                        let mag: f64 = (0..k)
                            .map(|j| (x[i * k + j] as f64 * wf[r * k + j] as f64).abs())
                            .sum();
                        let err = (y[i * n + r] as f64 - exact[i * n + r]).abs();
                        assert!(
                            err <= (1.0 + mag) / 65536.0,
                            "{what} [{i},{r}]: {err} off the exact product (|x·w| sum {mag})"
                        );
                    }
                }
                rows_alone(&x, &wm, bias, &y, m, &what);
            }
        }
    }
}
