//! int8 products on Intel's AMX tiles (Sapphire Rapids and later): `tdpbssd` multiplies a
//! 16 × 64 tile of signed bytes by a 64 × 16 tile into 16 × 16 int32 sums, 16 384
//! multiply-adds per instruction, where AVX-512 VNNI's `vpdpbusd` does 64.
//!
//! The arithmetic is [`super::small_m_int8`]'s, to the bit: x quantized to 8 bits per block of
//! `X8_BLOCK` values of a row (the same rounding, `quantize_x_row`), each block's products
//! summed exactly in int32 (here two tile steps of 64 columns), and once per block the sum
//! meets x's block scale in one f32 multiply-add, blocks in order along k; then · the weight
//! row's scale, + bias. Only the instructions differ, so that a product gives the same bits on
//! either kernel, and rows come out alike in a block of any size.
//!
//! Per output block of 32 × 32 and block of k, the four C tiles are stored (4 KB of int32) and
//! added into the block's f32 sums, which stay in L1 (see `kernels::amx` for the tiles'
//! layout); x's codes take the A tiles as they are (signed, where `vpdpbusd` needs them
//! offset by 128).

use super::amx::{self, Plan, TileOps, BLOCK};
use super::gemv::{OutPtr, WeightMatrix};
use super::simd::Isa;
use super::small_m_int8::{quantize_x_row, X8_BLOCK};
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// int8 values along k per tile row (64 bytes).
const TILE_K: usize = 64;

/// Whether this CPU and OS run the tiles' int8 products (AMX-INT8, see `amx::has`), with the
/// AVX-512 BF16 that the shared weight packing is compiled for (every AMX CPU has it).
pub fn runs() -> bool {
    static RUNS: OnceLock<bool> = OnceLock::new();
    *RUNS.get_or_init(|| {
        std::is_x86_feature_detected!("avx512bf16")
            && std::is_x86_feature_detected!("avx512bw")
            && amx::has(TileOps::Int8)
    })
}

/// Whether a product of k columns fits the tiles (whole tile rows along k).
pub fn fits(k: usize) -> bool {
    k > 0 && k.is_multiple_of(TILE_K)
}

/// y (m × n) = x (m × k) · wᵀ (+ bias) for int8 `w` with its row scales; the caller checked
/// the operands, that the tiles [run](runs) with AVX-512 VNNI and that k [fits].
pub(crate) fn matmul(
    x: &[f32],
    w: &WeightMatrix<i8>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    let (n, k) = (w.rows, w.cols);
    debug_assert!(runs() && fits(k));
    let (words, blocks) = (k / 4, k.div_ceil(X8_BLOCK));
    // Block scales of x, [row][block], zero for the rows padding a block.
    let mut scales = vec![0f32; m.next_multiple_of(BLOCK) * blocks];
    amx::with_x_tiles(m, words, |codes| {
        let isa = Isa::detect();
        codes
            .par_chunks_mut(words)
            .zip(scales.par_chunks_mut(blocks))
            .zip(x[..m * k].par_chunks(k))
            .for_each(|((codes, scales), row)| {
                // SAFETY: a row's k / 4 words are its k bytes.
                let bytes =
                    unsafe { std::slice::from_raw_parts_mut(codes.as_mut_ptr() as *mut i8, k) };
                quantize_x_row(isa, row, bytes, scales)
            });
        let plan = Plan::new(n, words);
        let out = OutPtr(y.as_mut_ptr());
        let (codes, scales) = (&*codes, &scales[..]);
        plan.for_each_task(n, words, |r0, r1, packed| {
            // SAFETY: the tiles run (the caller's check); x holds whole blocks of rows; the
            // packed buffer holds the task's rows; tasks write disjoint columns of y.
            unsafe {
                task(
                    (codes, scales),
                    w,
                    bias,
                    out,
                    m,
                    (r0, r1),
                    plan.chunk_rows,
                    packed,
                )
            };
        });
    });
}

/// A block's int32 sums over one block of k, and its f32 sums over the blocks so far.
#[repr(C, align(64))]
struct Sums {
    ints: [i32; BLOCK * BLOCK],
    floats: [f32; BLOCK * BLOCK],
}

/// Output columns r0..r1 (weight rows) for all m rows of x (`codes` in tile form, `scales`
/// per row and block).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn task(
    (codes, scales): (&[u32], &[f32]),
    w: &WeightMatrix<i8>,
    bias: Option<&[f32]>,
    y: OutPtr,
    m: usize,
    (r0, r1): (usize, usize),
    chunk_rows: usize,
    packed: &mut [u32],
) {
    let (n, k) = (w.rows, w.cols);
    let (words, blocks) = (k / 4, k.div_ceil(X8_BLOCK));
    let w_scales = w.scales.expect("int8 weights carry row scales");
    let weight_blocks = (r1 - r0).div_ceil(BLOCK);
    amx::pack_weights(w, r0, r1, &mut packed[..weight_blocks * BLOCK * words]);
    amx::configure();
    let mut sums = Sums {
        ints: [0; BLOCK * BLOCK],
        floats: [0.0; BLOCK * BLOCK],
    };
    for c0 in (0..m).step_by(chunk_rows) {
        for wb in 0..weight_blocks {
            let n0 = r0 + wb * BLOCK;
            let packed_block = packed.as_ptr().add(wb * BLOCK * words);
            for m0 in (c0..(c0 + chunk_rows).min(m)).step_by(BLOCK) {
                let xa = codes.as_ptr().add(m0 * words);
                sums.floats.fill(0.0);
                for b in 0..blocks {
                    let p0 = b * X8_BLOCK / 4;
                    amx::zero_sums();
                    amx::multiply::<true>(xa, packed_block, words, (p0, words.min(p0 + 32)));
                    amx::store_sums(sums.ints.as_mut_ptr(), BLOCK);
                    add_block(&mut sums, &scales[m0 * blocks + b..], blocks);
                }
                let cols = BLOCK.min(r1 - n0);
                write_block(
                    &sums.floats,
                    y.0.add(m0 * n + n0),
                    n,
                    (BLOCK.min(m - m0), cols),
                    &w_scales[n0..n0 + cols],
                    bias.map(|b| &b[n0..n0 + cols]),
                );
            }
        }
    }
    amx::release();
}

/// floats[i][j] += ints[i][j] · d_i for the block's 32 rows, d_i at `scales[i · stride]`, as
/// the vector kernel adds a block (one rounding).
#[inline(always)]
unsafe fn add_block(sums: &mut Sums, scales: &[f32], stride: usize) {
    for i in 0..BLOCK {
        let d = _mm512_set1_ps(*scales.get_unchecked(i * stride));
        for h in [0, 16] {
            let at = i * BLOCK + h;
            let ints = _mm512_load_si512(sums.ints.as_ptr().add(at) as *const _);
            let acc = sums.floats.as_mut_ptr().add(at);
            _mm512_store_ps(
                acc,
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(ints), d, _mm512_load_ps(acc)),
            );
        }
    }
}

/// y's `rows` × `cols` block at `dst` (rows n apart) = the block's sums · the weight rows'
/// scales + bias (or + 0, as the vector kernel writes them).
#[inline(always)]
unsafe fn write_block(
    floats: &[f32; BLOCK * BLOCK],
    dst: *mut f32,
    n: usize,
    (rows, cols): (usize, usize),
    w_scales: &[f32],
    bias: Option<&[f32]>,
) {
    for h in (0..cols).step_by(16) {
        let mask: __mmask16 = if cols - h >= 16 {
            0xffff
        } else {
            (1 << (cols - h)) - 1
        };
        let s = _mm512_maskz_loadu_ps(mask, w_scales.as_ptr().add(h));
        let b = match bias {
            Some(bias) => _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(h)),
            None => _mm512_setzero_ps(),
        };
        for i in 0..rows {
            let v = _mm512_load_ps(floats.as_ptr().add(i * BLOCK + h));
            _mm512_mask_storeu_ps(
                dst.add(i * n + h),
                mask,
                _mm512_add_ps(_mm512_mul_ps(v, s), b),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::small_m_int8::{matmul as vector_matmul, Kernel};
    use super::*;
    use crate::kernels::gemv::tests::{data, weights};

    /// The tiles give the vector kernel's bits: shapes around the blocks of x rows and of
    /// weight rows, k of one tile, of a block and a half, and long; bias or none; a NaN in
    /// one block of x, and outliers; each row of x alike alone.
    #[test]
    fn tiles_give_the_vnni_kernels_bits() {
        if !(runs() && Kernel::Avx512Vnni.runs()) {
            println!("no AMX-INT8 on this CPU: nothing to check");
            return;
        }
        for (m, n, k) in [
            (1, 16, 64),
            (33, 45, 192),
            (100, 96, 1280),
            (12, 200, 3072),
            (64, 32, 4096),
        ] {
            let tw = weights(n, k, 7);
            let w = WeightMatrix::with_scales(&tw.i8, &tw.scales, n, k);
            let mut x = data(m * k, 3);
            x[k / 3] = -300.0;
            if m > 5 {
                x[5 * k + k - 1] = f32::NAN;
            }
            let bias = data(n, 4);
            for bias in [None, Some(&bias[..])] {
                let what = format!("{m}×{n}×{k}, bias {}", bias.is_some());
                let mut want = vec![0f32; m * n];
                vector_matmul(Kernel::Avx512Vnni, &x, &w, bias, &mut want, m);
                let mut y = vec![f32::NAN; m * n];
                matmul(&x, &w, bias, &mut y, m);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y), bits(&want), "{what}");
                for i in [0, m / 2, m - 1] {
                    let mut alone = vec![0f32; n];
                    matmul(&x[i * k..(i + 1) * k], &w, bias, &mut alone, 1);
                    assert_eq!(
                        bits(&alone),
                        bits(&y[i * n..(i + 1) * n]),
                        "{what}: row {i}"
                    );
                }
            }
        }
    }
}
