//! Attention of many query rows without a mask (an encoder's window: 1500 × 1500 per head) on
//! bf16 dot products, for CPUs with AVX512-BF16 (AMD Zen 4 and 5, Intel from Cooper Lake).
//!
//! q, K and V are rounded to bf16 (to nearest even) and both products run on `vdpbf16ps`
//! with f32 sums; the softmax runs in f32 on the scores and its probabilities are rounded to
//! bf16 for P·V: the roundings of PyTorch's CPU flash attention on bf16 tensors (its q·Kᵀ and
//! P·V GEMMs take bf16 operands and accumulate in f32), which is how the bf16 checkpoints'
//! own runtime computes their encoders. Was (and is, for f16 and f32 layers, int8 ones of an
//! f32 checkpoint, and masked windows): candle's f32 GEMM for q·Kᵀ, the softmax, a second GEMM
//! for P·V, in chunks of heads and rows.
//!
//! Each query row is computed alone — its scores in one pass over the keys, its softmax, its
//! output in one pass over the values, in an order that does not depend on the rows around
//! it — so a row's result is the same whatever block of rows it comes in (chunk-invariant,
//! as the encoders' products, [`crate::Linear::set_chunk_invariant`]).
//!
//! Layout: per (batch, head), the keys packed in blocks of 16, `[block][pair][key]` (the pair
//! (k[2p], k[2p + 1]) of one key in a 32-bit lane, so one vector holds one pair of 16 keys),
//! and the values by pairs of keys, `[key pair][dim]` (the pair (v[2j][d], v[2j + 1][d])),
//! so that both products broadcast one bf16 pair of the row (q's dims, P's keys) against a
//! vector of 16 outputs (keys, dims). A register tile is [`TILE_ROWS`] rows × [`TILE_VECS`]
//! vectors: 24 accumulators.

use super::small_m_bf16::{round_pairs, runs};
use super::softmax::x86::exp_neg_16;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;
use std::arch::x86_64::*;

/// f32 lanes per vector.
const LANES: usize = 16;

/// Query rows per register tile.
const TILE_ROWS: usize = 6;

/// Vectors of 16 outputs (keys in the score pass, dims in the value pass) per register tile.
const TILE_VECS: usize = 4;

/// Query rows per parallel task: 8 tiles (a 1500-row window: 32 tasks per head).
const TASK_ROWS: usize = 8 * TILE_ROWS;

/// Widest head the kernel takes.
pub const MAX_HEAD_DIM: usize = 256;

/// Whether the kernel takes heads of `head_dim`: the CPU has AVX512-BF16 and the head is whole
/// vectors of 16 wide, at most [`MAX_HEAD_DIM`].
pub fn takes(head_dim: usize) -> bool {
    head_dim > 0 && head_dim.is_multiple_of(LANES) && head_dim <= MAX_HEAD_DIM && runs()
}

/// candle op: q (b, h, rows, d), k, v (b, h, s, d), all f32 with unit stride along d, q
/// pre-scaled → softmax(q·Kᵀ)·V (b, h, rows, d) f32 on bf16 dot products. The caller checked
/// that the kernel [`takes`] d.
pub struct ManyRowsBf16Attention;

impl CustomOp3 for ManyRowsBf16Attention {
    fn name(&self) -> &'static str {
        "many-rows-bf16-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, h, rows, d) = ql.shape().dims4()?;
        let (kb, kh, s, kd) = kl.shape().dims4()?;
        if (kb, kh, kd) != (b, h, d) || vl.shape() != kl.shape() || !takes(d) {
            candle_core::bail!(
                "many-rows-bf16-attention: q {:?}, k {:?}, v {:?}",
                ql.shape(),
                kl.shape(),
                vl.shape()
            );
        }
        if [ql, kl, vl].iter().any(|l| l.stride()[3] != 1) {
            candle_core::bail!("many-rows-bf16-attention needs unit stride along the head");
        }
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (qs, ks, vs) else {
            candle_core::bail!("many-rows-bf16-attention takes f32 queries, keys and values");
        };
        let heads = Heads { b, h, rows, d, s };
        let out = attend(heads, (q, ql), (k, kl), (v, vl));
        Ok((CpuStorage::F32(out), Shape::from((b, h, rows, d))))
    }
}

/// The shapes of one call.
#[derive(Clone, Copy)]
struct Heads {
    b: usize,
    h: usize,
    rows: usize,
    d: usize,
    s: usize,
}

impl Heads {
    /// bf16 pairs per head row.
    fn pairs(&self) -> usize {
        self.d / 2
    }

    /// Blocks of 16 keys.
    fn key_blocks(&self) -> usize {
        self.s.div_ceil(LANES)
    }

    /// Pairs of keys (the last one padded with a zero key where s is odd).
    fn key_pairs(&self) -> usize {
        self.s.div_ceil(2)
    }
}

/// Row j of head `bh` (b · h + head) of a 4-D layout: its first element.
fn row_at(l: &Layout, heads: Heads, bh: usize, j: usize) -> usize {
    let st = l.stride();
    l.start_offset() + (bh / heads.h) * st[0] + (bh % heads.h) * st[1] + j * st[2]
}

/// One head's keys and values in the kernel's layouts (see the module notes), bf16 pairs.
struct PackedHead {
    keys: Vec<u32>,
    values: Vec<u32>,
}

impl PackedHead {
    fn pack(
        heads: Heads,
        bh: usize,
        (k, kl): (&[f32], &Layout),
        (v, vl): (&[f32], &Layout),
    ) -> Self {
        let (d, pairs) = (heads.d, heads.pairs());
        let mut keys = vec![0u32; heads.key_blocks() * pairs * LANES];
        let mut row = vec![0u32; pairs];
        for j in 0..heads.s {
            let at = row_at(kl, heads, bh, j);
            // SAFETY: the caller checked that the kernel runs; `row` holds d / 2 pairs.
            unsafe { round_pairs(&k[at..at + d], &mut row) };
            let block = &mut keys[(j / LANES) * pairs * LANES..];
            for (p, &pair) in row.iter().enumerate() {
                block[p * LANES + j % LANES] = pair;
            }
        }
        let mut values = vec![0u32; heads.key_pairs() * d];
        let value = |j: usize| &v[row_at(vl, heads, bh, j)..][..d];
        for (jp, out) in values.chunks_exact_mut(d).enumerate() {
            // The second key of the last pair is missing where s is odd.
            let second = (2 * jp + 1 < heads.s).then(|| value(2 * jp + 1));
            // SAFETY: as above; `out` and both rows hold d values, a multiple of 16.
            unsafe { interleave_rows(value(2 * jp), second, out) };
        }
        Self { keys, values }
    }
}

/// `out[c]` = bf16(a[c]) | bf16(b[c]) << 16 (b absent: 0), rounded to nearest even.
///
/// # Safety
/// The CPU has AVX512-BF16; a, b and out hold the same multiple of 16 values.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn interleave_rows(a: &[f32], b: Option<&[f32]>, out: &mut [u32]) {
    let half = |row: &[f32], c: usize| {
        let h: __m256bh = _mm512_cvtneps_pbh(_mm512_loadu_ps(row.as_ptr().add(c)));
        _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(h))
    };
    for c in (0..out.len()).step_by(LANES) {
        let lo = half(a, c);
        let pair = match b {
            Some(b) => _mm512_or_si512(lo, _mm512_slli_epi32::<16>(half(b, c))),
            None => lo,
        };
        _mm512_storeu_si512(out.as_mut_ptr().add(c) as *mut _, pair);
    }
}

/// softmax(q·Kᵀ)·V for every head, in tasks of [`TASK_ROWS`] query rows.
fn attend(
    heads: Heads,
    (q, ql): (&[f32], &Layout),
    k: (&[f32], &Layout),
    v: (&[f32], &Layout),
) -> Vec<f32> {
    let Heads { b, h, rows, d, .. } = heads;
    let mut out = vec![0f32; b * h * rows * d];
    if out.is_empty() {
        return out;
    }
    let packed: Vec<PackedHead> = (0..b * h)
        .into_par_iter()
        .map(|bh| PackedHead::pack(heads, bh, k, v))
        .collect();
    out.par_chunks_mut(rows * d)
        .enumerate()
        .flat_map(|(bh, head)| {
            head.par_chunks_mut(TASK_ROWS * d)
                .enumerate()
                .map(move |(t, o)| (bh, t * TASK_ROWS, o))
        })
        .for_each(|(bh, r0, out)| {
            let queries: Vec<&[f32]> = (r0..r0 + out.len() / d)
                .map(|r| &q[row_at(ql, heads, bh, r)..][..d])
                .collect();
            // SAFETY: the caller checked that the kernel runs; `out` holds the task's rows.
            unsafe { rows_of_head(heads, &packed[bh], &queries, out) };
        });
    out
}

/// The output rows (d apart in `out`) of `queries` against one packed head, a tile of rows
/// at a time.
///
/// # Safety
/// The CPU has AVX512-BF16; `out` holds queries.len() · d values.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn rows_of_head(heads: Heads, head: &PackedHead, queries: &[&[f32]], out: &mut [f32]) {
    let (d, s, pairs) = (heads.d, heads.s, heads.pairs());
    let (scores_width, key_pairs) = (heads.key_blocks() * LANES, heads.key_pairs());
    let mut q_pairs = vec![0u32; TILE_ROWS * pairs];
    let mut scores = vec![0f32; TILE_ROWS * scores_width];
    let mut p_pairs = vec![0u32; TILE_ROWS * key_pairs];
    for (tile, out) in queries.chunks(TILE_ROWS).zip(out.chunks_mut(TILE_ROWS * d)) {
        for (query, qp) in tile.iter().zip(q_pairs.chunks_exact_mut(pairs)) {
            round_pairs(query, qp);
        }
        // Scores: q's pairs against blocks of 16 keys; rows scores_width apart.
        let (q_at, scores_at) = (q_pairs.as_ptr(), scores.as_mut_ptr());
        let scores_of = |row: usize| PairProduct {
            rows: q_at.add(row * pairs),
            steps: pairs,
            vectors: head.keys.as_ptr(),
            vector_stride: pairs * LANES,
            step_stride: LANES,
            outputs: heads.key_blocks(),
            out: scores_at.add(row * scores_width),
            out_stride: scores_width,
        };
        each_row_of(tile.len(), scores_of);
        for (row, pp) in scores
            .chunks_exact_mut(scores_width)
            .zip(p_pairs.chunks_exact_mut(key_pairs))
            .take(tile.len())
        {
            probabilities(&mut row[..s], pp);
        }
        // Outputs: P's pairs of keys against vectors of 16 dims; rows d apart.
        let (p_at, out_at) = (p_pairs.as_ptr(), out.as_mut_ptr());
        let outputs_of = |row: usize| PairProduct {
            rows: p_at.add(row * key_pairs),
            steps: key_pairs,
            vectors: head.values.as_ptr(),
            vector_stride: LANES,
            step_stride: d,
            outputs: d / LANES,
            out: out_at.add(row * d),
            out_stride: d,
        };
        each_row_of(tile.len(), outputs_of);
    }
}

/// Runs `product(r)` (the product from row r of a tile of `rows`) for every row: a whole tile
/// at once, a partial one row by row.
///
/// # Safety
/// The CPU has AVX512-BF16; the products' pointers are valid for the tile's rows.
unsafe fn each_row_of(rows: usize, product: impl Fn(usize) -> PairProduct) {
    match rows {
        TILE_ROWS => product(0).rows::<TILE_ROWS>(),
        n => (0..n).for_each(|r| product(r).rows::<1>()),
    }
}

/// softmax(row) rounded to bf16 pairs into `pairs` (zero past the row's end), in f32 (the
/// sum of the exponentials too: the probabilities keep 8 bits); `row` is left holding
/// e^(x − max). A NaN score makes the row's probabilities NaN.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn probabilities(row: &mut [f32], pairs: &mut [u32]) {
    let len = row.len();
    let x = row.as_mut_ptr();
    // Lanes of the vector at j that lie in the row.
    let lanes = |j: usize| lanes_of(len - j);
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    for j in (0..len).step_by(LANES) {
        let v = _mm512_mask_loadu_ps(max, lanes(j), x.add(j));
        max = _mm512_max_ps(max, v);
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
    let mut sum = _mm512_setzero_ps();
    for j in (0..len).step_by(LANES) {
        let d = _mm512_sub_ps(_mm512_maskz_loadu_ps(lanes(j), x.add(j)), max);
        let e = exp_neg_16(d);
        let e = _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(d, d), d);
        _mm512_mask_storeu_ps(x.add(j), lanes(j), e);
        sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(lanes(j), e));
    }
    let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
    for (jp, pair) in pairs.chunks_mut(LANES).enumerate() {
        let j = 2 * jp * LANES;
        let half = |j: usize| {
            if j < len {
                _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes(j), x.add(j)), inv)
            } else {
                _mm512_setzero_ps()
            }
        };
        let packed = _mm512_cvtne2ps_pbh(half(j + LANES), half(j));
        let packed = std::mem::transmute::<__m512bh, __m512i>(packed);
        _mm512_mask_storeu_epi32(pair.as_mut_ptr() as *mut _, lanes_of(pair.len()), packed);
    }
}

/// A mask of the first `n` (≤ 16) lanes.
fn lanes_of(n: usize) -> __mmask16 {
    ((1u32 << n.min(LANES)) - 1) as __mmask16
}

/// One of the two products as a tile sees it: rows of bf16 pairs (q's dims, P's keys), each
/// pair broadcast against vectors of 16 pairs of the other operand (16 keys, 16 dims), summed
/// over the rows' pairs into vectors of 16 f32 outputs.
#[derive(Clone, Copy)]
struct PairProduct {
    /// Row r's i-th pair at `rows[r · steps + i]`.
    rows: *const u32,
    /// Pairs per row: the length of each sum.
    steps: usize,
    /// Output vector n's i-th pair vector at `vectors[n · vector_stride + i · step_stride]`.
    vectors: *const u32,
    vector_stride: usize,
    step_stride: usize,
    /// Output vectors per row.
    outputs: usize,
    /// Row r's output vector n at `out[r · out_stride + 16 n]`.
    out: *mut f32,
    out_stride: usize,
}

impl PairProduct {
    /// Every output of R rows: tiles of [`TILE_VECS`] vectors, then single vectors.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn rows<const R: usize>(self) {
        let mut n = 0;
        while n + TILE_VECS <= self.outputs {
            self.tile::<R, TILE_VECS>(n);
            n += TILE_VECS;
        }
        while n < self.outputs {
            self.tile::<R, 1>(n);
            n += 1;
        }
    }

    /// R rows × N output vectors from vector n0: R · N accumulators along the sums.
    #[inline(always)]
    unsafe fn tile<const R: usize, const N: usize>(self, n0: usize) {
        let mut acc = [[_mm512_setzero_ps(); N]; R];
        for i in 0..self.steps {
            let b: [__m512bh; N] = std::array::from_fn(|n| {
                let at = (n0 + n) * self.vector_stride + i * self.step_stride;
                bh(_mm512_loadu_si512(self.vectors.add(at) as *const _))
            });
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = bh(_mm512_set1_epi32(*self.rows.add(r * self.steps + i) as i32));
                for (sum, b) in acc.iter_mut().zip(b) {
                    *sum = _mm512_dpbf16_ps(*sum, a, b);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (n, sum) in acc.iter().enumerate() {
                let at = r * self.out_stride + (n0 + n) * LANES;
                _mm512_storeu_ps(self.out.add(at), *sum);
            }
        }
    }
}

/// A vector of 32 bf16 values as the dot-product instruction takes it.
#[inline(always)]
fn bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 512 bits of plain data.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemv::tests::data;
    use candle_core::{Device, Tensor};
    use half::bf16;

    /// bf16(x), rounded to nearest even as the kernel rounds.
    fn bf16_round(x: f32) -> f64 {
        bf16::from_f32(x).to_f64()
    }

    /// softmax(bf16(q)·bf16(K)ᵀ)·bf16(V) in f64 for one head (the probabilities not rounded).
    fn reference(q: &[f32], k: &[&[f32]], v: &[&[f32]]) -> Vec<f64> {
        let scores: Vec<f64> = k
            .iter()
            .map(|k| {
                q.iter()
                    .zip(*k)
                    .map(|(a, b)| bf16_round(*a) * bf16_round(*b))
                    .sum()
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        (0..q.len())
            .map(|c| {
                e.iter()
                    .zip(v)
                    .map(|(p, v)| p / sum * bf16_round(v[c]))
                    .sum()
            })
            .collect()
    }

    /// (b, h, n, d) f32 of seeded values, as a view into a longer buffer (row stride ≠ d where
    /// `wide`, start offset ≠ 0).
    fn tensor(b: usize, h: usize, n: usize, d: usize, seed: u32, wide: bool) -> Result<Tensor> {
        let cols = if wide { d + 16 } else { d };
        let t = Tensor::from_vec(
            data(b * h * n * cols + 5, seed),
            b * h * n * cols + 5,
            &Device::Cpu,
        )?;
        t.narrow(0, 5, b * h * n * cols)?
            .reshape((b, h, n, cols))?
            .narrow(3, 0, d)
    }

    /// The rows of head `bh` (b · h + head).
    fn rows_of(t: &Tensor, bh: usize) -> Result<Vec<Vec<f32>>> {
        let (_, h, _, _) = t.dims4()?;
        t.get(bh / h)?.get(bh % h)?.to_vec2()
    }

    /// Head widths of one, several and a partial tile of vectors, key counts of partial
    /// blocks and an odd count (a padded key pair), row counts of partial tiles and tasks:
    /// within the bf16 probabilities' rounding (2⁻⁸ of the largest |v|) of the reference.
    #[test]
    fn matches_the_bf16_reference_in_every_shape() -> Result<()> {
        if !runs() {
            eprintln!("skipped: no AVX512-BF16 on this CPU");
            return Ok(());
        }
        for d in [16, 64, 80, 128] {
            for (rows, s) in [(1, 1), (5, 3), (6, 17), (13, 64), (50, 131), (7, 1500)] {
                let q = (tensor(1, 2, rows, d, 1, true)? * 0.3)?;
                let (k, v) = (tensor(1, 2, s, d, 2, false)?, tensor(1, 2, s, d, 3, true)?);
                let out = q.apply_op3_no_bwd(&k, &v, &ManyRowsBf16Attention)?;
                for bh in 0..2 {
                    let (qs, ks, vs, os) = (
                        rows_of(&q, bh)?,
                        rows_of(&k, bh)?,
                        rows_of(&v, bh)?,
                        rows_of(&out, bh)?,
                    );
                    let (ks, vs): (Vec<&[f32]>, Vec<&[f32]>) = (
                        ks.iter().map(Vec::as_slice).collect(),
                        vs.iter().map(Vec::as_slice).collect(),
                    );
                    let bound = 2f64.powi(-8)
                        * vs.iter()
                            .flat_map(|v| v.iter())
                            .fold(0f64, |m, x| m.max(x.abs() as f64))
                        + 1e-6;
                    for (r, (q, o)) in qs.iter().zip(&os).enumerate() {
                        for (c, (got, want)) in o.iter().zip(reference(q, &ks, &vs)).enumerate() {
                            assert!(
                                (*got as f64 - want).abs() <= bound,
                                "d {d} rows {rows} s {s} head {bh} row {r} [{c}]: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A row's output is the same bits whatever block of rows it comes in.
    #[test]
    fn every_row_comes_out_alike_in_any_block() -> Result<()> {
        if !runs() {
            eprintln!("skipped: no AVX512-BF16 on this CPU");
            return Ok(());
        }
        let (rows, s, d) = (61, 150, 64);
        let q = tensor(1, 3, rows, d, 4, false)?;
        let (k, v) = (tensor(1, 3, s, d, 5, false)?, tensor(1, 3, s, d, 6, false)?);
        let whole = q
            .apply_op3_no_bwd(&k, &v, &ManyRowsBf16Attention)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for block in [1, 2, 5, 7, 13, 48] {
            let mut parts = Vec::new();
            for r0 in (0..rows).step_by(block) {
                let part = q.narrow(2, r0, block.min(rows - r0))?;
                parts.push(part.apply_op3_no_bwd(&k, &v, &ManyRowsBf16Attention)?);
            }
            let blocks = Tensor::cat(&parts, 2)?.flatten_all()?.to_vec1::<f32>()?;
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&blocks), bits(&whole), "blocks of {block} rows");
        }
        Ok(())
    }
}
