//! f32 products by matrices of bf16 values packed at load ([`super::panels`]: the codec's 1×1
//! and transposed convolutions, whose checkpoints store bf16 weights) on Intel's AMX tiles, at
//! f32's precision: each value of B (the activations) splits exactly into three bf16 parts
//! when its block is packed, x = x₀ + x₁ + x₂ (8 significand bits each: x₀ rounded to
//! nearest even, then what each part leaves), and the tiles multiply each part by the weights
//! exactly into f32 sums. This is the "bf16x3" split of B alone (Henry, Tang and Heinecke,
//! "Leveraging the bfloat16 artificial intelligence datatype for higher-precision
//! computations", ARITH 2019): with weights exact in one part, nothing is left out.
//!
//! Layout, as [`super::amx`] lays out tiles, the roles turned round: the weights are the A
//! tiles, packed at load row-major in blocks of 32 rows (rows past the matrix and k past its
//! columns zero), each loaded once per step of 32 values of k for all three parts; a block of
//! 32 columns of B is packed per call as two B tiles' columns:
//!
//! ```text
//! A (weights): [batch][row block][row 0..32][step][16 words: w(k), w(k + 1)]
//! B (per call): [column block][half][step][part 0..3][k pair 0..16][16 columns: x_part(k), x_part(k + 1)]
//! ```
//!
//! Each output element sums its products in the same order whatever the columns around it,
//! so a chunk's columns come out as they would in any other chunk (the codec's streaming
//! equals its offline decode). Infinite inputs give NaN where f32 gives ±inf (their parts'
//! remainders are inf − inf): a codec whose activations overflowed has no waveform either way.

use super::amx::{self, BLOCK, PREFETCH_STEPS, TILE_ROWS, TILE_WORDS};
use super::panels::Product;
use half::bf16;
use std::arch::x86_64::*;
use std::cell::Cell;
use std::ops::Range;

/// Values of k per tile step (32 bf16 a tile row).
const STEP_K: usize = 2 * TILE_WORDS;

/// A cache line of packed words: tile rows start on lines (see `amx::lines`), and a clone
/// keeps them there.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Line([u32; TILE_WORDS]);

/// Parts of each value of B.
const PARTS: usize = 3;

/// `batches` matrices of `rows` × `cols` bf16 values as A tiles (see the module).
#[derive(Clone, Debug)]
pub(crate) struct TilePanels {
    data: Vec<Line>,
    /// ⌈cols / 32⌉.
    steps: usize,
    batches: usize,
    rows: usize,
    cols: usize,
}

impl TilePanels {
    /// From row-major matrices `w[batch][row][col]`, where every weight is a bf16 value
    /// (None otherwise: those take the registers' kernel).
    pub(crate) fn pack(w: &[f32], batches: usize, rows: usize, cols: usize) -> Option<Self> {
        assert_eq!(
            w.len(),
            batches * rows * cols,
            "tiles: weights of another shape"
        );
        if !w.iter().all(|&v| bf16::from_f32(v).to_f32() == v) {
            return None;
        }
        let steps = cols.div_ceil(STEP_K);
        let blocks = rows.div_ceil(BLOCK);
        let mut data = vec![Line::default(); batches * blocks * BLOCK * steps];
        for (g, matrix) in w.chunks(rows * cols.max(1)).enumerate().take(batches) {
            for (r, row) in matrix.chunks(cols.max(1)).enumerate().take(rows) {
                let dst = &mut data[(g * blocks * BLOCK + r) * steps..][..steps];
                for (k, &value) in row.iter().enumerate() {
                    let bits = bf16::from_f32(value).to_bits() as u32;
                    dst[k / STEP_K].0[k % STEP_K / 2] |= bits << (16 * (k % 2));
                }
            }
        }
        Some(Self {
            data,
            steps,
            batches,
            rows,
            cols,
        })
    }

    /// (batches, rows, cols).
    pub(crate) fn shape(&self) -> (usize, usize, usize) {
        (self.batches, self.rows, self.cols)
    }

    /// Row blocks of one matrix.
    fn blocks(&self) -> usize {
        self.rows.div_ceil(BLOCK)
    }

    /// Bytes of the packed weights.
    pub(crate) fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<Line>()
    }

    /// `job`'s (batch, row block) pairs `pairs` (of ⌈rows / 32⌉ per batch) on this thread,
    /// in blocks of B's columns and groups of row blocks of at most `budget` bytes each
    /// (as the panels' kernel cuts them).
    ///
    /// # Safety
    /// The tiles run (`small_m::amx_bf16_tiles`); `job.w` is these panels; `out` holds every
    /// element the pairs write and no other thread writes those; b holds its extent.
    pub(crate) unsafe fn products(&self, job: &Product, pairs: Range<usize>, budget: usize) {
        let mut strips = STRIPS.take();
        amx::configure();
        self.products_on(job, pairs, budget, &mut strips);
        amx::release();
        STRIPS.set(strips);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn products_on(
        &self,
        job: &Product,
        pairs: Range<usize>,
        budget: usize,
        strips: &mut Vec<Line>,
    ) {
        let blocks = self.blocks();
        let column_blocks = job.n.div_ceil(BLOCK);
        // Lines of a packed column block and of a row block.
        let (b_lines, a_lines) = (BLOCK * PARTS * self.steps, BLOCK * self.steps);
        let line = std::mem::size_of::<Line>();
        let per_pack = (budget / (b_lines * line)).max(1);
        let group = (budget / (a_lines * line)).max(1);
        let mut edge = Edge([0.0; BLOCK * BLOCK]);
        let mut g = pairs.start;
        while g < pairs.end {
            let batch = g / blocks;
            let end = pairs.end.min((batch + 1) * blocks);
            for first in (0..column_blocks).step_by(per_pack) {
                let count = per_pack.min(column_blocks - first);
                if strips.len() < count * b_lines {
                    strips.resize(count * b_lines, Line::default());
                }
                self.pack_columns(job, batch, first * BLOCK, count, strips);
                for group_start in (g..end).step_by(group) {
                    for cb in 0..count {
                        let b = strips.as_ptr().add(cb * b_lines);
                        for pair in group_start..end.min(group_start + group) {
                            let a = self.data.as_ptr().add(pair * a_lines);
                            amx::zero_sums();
                            multiply(a, b, self.steps);
                            amx::store_sums(edge.0.as_mut_ptr(), BLOCK);
                            let row0 = (pair - batch * blocks) * BLOCK;
                            self.write(job, &edge, batch, row0, (first + cb) * BLOCK);
                        }
                    }
                }
            }
            g = end;
        }
    }

    /// Columns j0..j0 + 32 · count of batch `batch`'s B as B tiles' parts into `strips`
    /// (columns past n and rows past the matrix's columns zero), k pair by k pair so that B's
    /// rows are read in order.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pack_columns(
        &self,
        job: &Product,
        batch: usize,
        j0: usize,
        count: usize,
        strips: &mut [Line],
    ) {
        let cols = self.cols;
        let b = job.b.as_ptr().add(batch * job.b_step);
        let out = strips.as_mut_ptr() as *mut u32;
        let half_words = PARTS * self.steps * TILE_WORDS * TILE_ROWS;
        for s in 0..self.steps {
            for kk in 0..TILE_WORDS {
                let k = s * STEP_K + 2 * kk;
                for half in 0..2 * count {
                    let col0 = j0 + half * TILE_ROWS;
                    let valid = job.n.saturating_sub(col0).min(TILE_ROWS);
                    let even = split(load_row(b, job.b_stride, k, cols, col0, valid));
                    let odd = split(load_row(b, job.b_stride, k + 1, cols, col0, valid));
                    // The half's tile columns: [half][step][part][k pair][16].
                    let base = out.add(half * half_words);
                    for p in 0..PARTS {
                        let word = _mm512_or_si512(_mm512_srli_epi32::<16>(even[p]), odd[p]);
                        let at = ((s * PARTS + p) * TILE_WORDS + kk) * TILE_ROWS;
                        _mm512_store_si512(base.add(at) as *mut _, word);
                    }
                }
            }
        }
    }

    /// A 32 × 32 block of sums into rows `rows`.. and columns j0.. of batch `batch`'s output
    /// (stored or added, as the job asks; rows past the matrix's and columns past n left).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn write(&self, job: &Product, edge: &Edge, batch: usize, row0: usize, j0: usize) {
        let valid = job.n.saturating_sub(j0).min(BLOCK);
        let masks = [0, TILE_ROWS].map(|h| {
            let v = valid.saturating_sub(h).min(TILE_ROWS);
            ((1u32 << v) - 1) as u16
        });
        for i in 0..BLOCK.min(self.rows - row0) {
            let out = job
                .out
                .add(batch * job.out_step + (row0 + i) * job.out_stride + j0)
                .0;
            for (h, &mask) in masks.iter().enumerate() {
                let sums = _mm512_load_ps(edge.0.as_ptr().add(i * BLOCK + h * TILE_ROWS));
                let o = out.add(h * TILE_ROWS);
                let value = if job.accumulate {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask, o), sums)
                } else {
                    sums
                };
                _mm512_mask_storeu_ps(o, mask, value);
            }
        }
    }
}

/// Columns col0..col0 + `valid` (≤ 16) of B's row k (zero past `cols` rows and past valid).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn load_row(
    b: *const f32,
    stride: usize,
    k: usize,
    cols: usize,
    col0: usize,
    valid: usize,
) -> __m512 {
    if k >= cols || valid == 0 {
        return _mm512_setzero_ps();
    }
    let at = b.add(k * stride + col0);
    if valid == TILE_ROWS {
        _mm512_loadu_ps(at)
    } else {
        _mm512_maskz_loadu_ps(((1u32 << valid) - 1) as u16, at)
    }
}

/// Adds to tmm0–3 the products of one 32 × 32 block over all `steps`: the weights' two A
/// tiles (rows at `a`, `steps` lines apart) loaded once a step for B's three parts (two B
/// tiles each, the second half `PARTS · steps` tiles on).
///
/// # Safety
/// The tiles are configured; both operands hold `steps` steps.
#[inline(always)]
unsafe fn multiply(a: *const Line, b: *const Line, steps: usize) {
    let a_stride = steps * std::mem::size_of::<Line>();
    let b_half = PARTS * steps * TILE_ROWS;
    for s in 0..steps {
        let (a0, a1) = (a.add(s), a.add(TILE_ROWS * steps + s));
        let b0 = b.add(s * PARTS * TILE_ROWS);
        if s + PREFETCH_STEPS < steps {
            // The steps ahead into L1 while these multiply, as `amx::multiply` does.
            let ahead = PREFETCH_STEPS;
            for r in 0..TILE_ROWS {
                _mm_prefetch::<_MM_HINT_T0>(a0.add(r * steps + ahead) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(a1.add(r * steps + ahead) as *const i8);
            }
            let next = b0.add(ahead * PARTS * TILE_ROWS);
            for r in 0..PARTS * TILE_ROWS {
                _mm_prefetch::<_MM_HINT_T0>(next.add(r) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(next.add(b_half + r) as *const i8);
            }
        }
        std::arch::asm!(
            "tileloadd tmm4, [{a0} + {as} * 1]",
            "tileloadd tmm5, [{a1} + {as} * 1]",
            a0 = in(reg) a0,
            a1 = in(reg) a1,
            as = in(reg) a_stride,
            options(nostack, readonly)
        );
        for p in 0..PARTS {
            std::arch::asm!(
                "tileloadd tmm6, [{b0} + {bs} * 1]",
                "tileloadd tmm7, [{b1} + {bs} * 1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                b0 = in(reg) b0.add(p * TILE_ROWS),
                b1 = in(reg) b0.add(b_half + p * TILE_ROWS),
                bs = in(reg) 64usize,
                options(nostack, readonly)
            );
        }
    }
}

/// A block's sums, stored by the tiles, then written where the job asks.
#[repr(C, align(64))]
struct Edge([f32; BLOCK * BLOCK]);

thread_local! {
    /// The last call's packed columns, reused: the codec runs dozens of products per chunk.
    static STRIPS: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
}

/// x's three bf16 parts, each as f32 bits whose low half is zero (the bf16 in the high half):
/// x₀ rounded to nearest even, then what each leaves (exact in f32) rounded again.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn split(x: __m512) -> [__m512i; 3] {
    let widen = |v: __m256bh| {
        _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(std::mem::transmute::<
            __m256bh,
            __m256i,
        >(v)))
    };
    let p0 = widen(_mm512_cvtneps_pbh(x));
    let r1 = _mm512_sub_ps(x, _mm512_castsi512_ps(p0));
    let p1 = widen(_mm512_cvtneps_pbh(r1));
    let r2 = _mm512_sub_ps(r1, _mm512_castsi512_ps(p1));
    [p0, p1, widen(_mm512_cvtneps_pbh(r2))]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::panels::tests::{check_products, val, Case};
    use crate::kernels::panels::Panels;

    /// The tiles against the f64 product within f32's rounding (`panels::tests::check_products`):
    /// k short of a tile step and across several, rows short of a block,
    /// columns ending inside a tile. Weights that are not all bf16 values are not packed.
    /// Leaving out x's third part fails it.
    #[test]
    fn tiles_multiply_at_f32_precision() {
        if !crate::kernels::small_m::amx_bf16_tiles() {
            println!("no AMX tiles on this CPU: nothing to check");
            return;
        }
        assert!(TilePanels::pack(&[0.5, 1.0 + 1.0 / 256.0], 1, 1, 2).is_none());
        for (batches, rows, cols) in [(3, 14, 5), (2, 40, 33), (1, 70, 96), (1, 100, 200)] {
            let w: Vec<f32> = (0..batches * rows * cols)
                .map(|i| bf16::from_f32(val(i + 5)).to_f32())
                .collect();
            let tiles = TilePanels::pack(&w, batches, rows, cols).expect("bf16 weights");
            check_products(Case {
                w: &w,
                packed: &Panels::tiles(tiles.clone()),
                ns: &[1, 16, 31, 32, 33, 70, 100],
                // SAFETY: the tiles run; out holds every pair's rows and columns; one thread.
                run: &|job, range, budget| unsafe { tiles.products(job, range, budget) },
            });
        }
    }
}
