//! Attention for decoder steps: a few query rows per key/value head against a cache or a
//! cross-attention source, softmax(q·Kᵀ)·V computed directly.
//!
//! At one query per head the product is a matrix-vector walk over K and V; candle runs it
//! through a general GEMM whose per-call set-up and thread hand-offs cost more than the
//! arithmetic (measured ~1/5 of a Whisper-tiny decoder step).
//!
//! The walk has to keep up with the memory that feeds it (a Voxtral Mini 3B step reads 60–120
//! MB of K/V at its ~475-position prompt). A dot product per key is one chain of dependent
//! FMAs, latency-bound at a quarter of the FMA rate: here `KEYS_PER_PASS` keys run side by
//! side (independent chains; their rows are re-read from L1 by the other query rows of the
//! head), and each output row keeps `OUT_VECTORS` vectors of its sum in registers over a
//! block of values instead of a load, an FMA and a store per value and vector.

use super::simd::{isa_entries, Isa, Simd, WeightElem};
use super::softmax::exp_shifted_in_place;
use super::spin_pool::for_each_chunk_mut;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use std::cell::Cell;

/// At most this many query rows per head take the kernel.
pub const MAX_QUERY_ROWS: usize = 8;

/// Below this many K/V elements per call, heads run on one thread.
const PARALLEL_MIN: usize = 1 << 16;

/// Keys whose dot products with a query row run side by side.
const KEYS_PER_PASS: usize = 4;

/// Keys ahead of the q·Kᵀ pass whose K and V rows are prefetched. A step's K/V come from
/// memory, the step's streamed weights having pushed them out of the caches since the last,
/// and a head's walk (tens of KB) ends before the hardware prefetcher has ramped up: with the
/// caches flushed between layers, 16 keys ahead read a Voxtral Realtime layer's K/V
/// (140 positions, f16) in ~2/3 of the time (PERFORMANCE.md #119).
const KEYS_AHEAD: usize = 16;

/// Keys per block of the value pass: the block's V rows (64 × 128 f32 = 32 KB) stay in the
/// near caches while every query row of the head reads them.
const VALUE_BLOCK: usize = 64;

/// Vectors of an output row summed in registers at once.
const OUT_VECTORS: usize = 8;

thread_local! {
    /// The scores of the head being computed (rows × s), reused so that a step allocates only
    /// its output. Taken, not borrowed.
    static SCORES: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// candle op: q (b, h, rows, d) f32 contiguous, pre-scaled; k, v (b, h, s, d) f32, f16 or bf16 with
/// unit stride along d (cache views allowed) → (b, h, rows, d) f32.
pub struct DecodeAttention;

/// Element offset of (b, h, j, 0) in a 4-D layout.
fn offset(l: &Layout, b: usize, h: usize, j: usize) -> usize {
    let st = l.stride();
    l.start_offset() + b * st[0] + h * st[1] + j * st[2]
}

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "decode-attention"
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
        if (kb, kh, kd) != (b, h, d) || vl.shape() != kl.shape() || rows > MAX_QUERY_ROWS {
            candle_core::bail!(
                "decode-attention: q {:?}, k {:?}, v {:?}",
                ql.shape(),
                kl.shape(),
                vl.shape()
            );
        }
        if kl.stride()[3] != 1 || vl.stride()[3] != 1 || !ql.is_contiguous() {
            candle_core::bail!("decode-attention needs unit stride along the head dimension");
        }
        let CpuStorage::F32(q) = qs else {
            candle_core::bail!("decode-attention takes f32 queries");
        };
        let q = &q[ql.start_offset()..];
        let dims = Dims { b, h, rows, d, s };
        let isa = Isa::detect();
        let out = match (ks, vs) {
            (CpuStorage::F32(k), CpuStorage::F32(v)) => attend(isa, q, k, kl, v, vl, dims),
            (CpuStorage::F16(k), CpuStorage::F16(v)) => attend(isa, q, k, kl, v, vl, dims),
            (CpuStorage::BF16(k), CpuStorage::BF16(v)) => attend(isa, q, k, kl, v, vl, dims),
            _ => candle_core::bail!("decode-attention takes f32, f16 or bf16 keys and values"),
        };
        Ok((CpuStorage::F32(out), Shape::from((b, h, rows, d))))
    }
}

/// One head's keys and values: the storage and where each row starts.
#[derive(Clone, Copy)]
struct HeadKv<'a, T> {
    k: &'a [T],
    v: &'a [T],
    at: Walk,
}

/// Where row j of one head's keys and values starts.
#[derive(Clone, Copy)]
struct Walk {
    k0: usize,
    k_step: usize,
    v0: usize,
    v_step: usize,
}

impl Walk {
    #[inline(always)]
    fn key(&self, j: usize) -> usize {
        self.k0 + j * self.k_step
    }
    #[inline(always)]
    fn value(&self, j: usize) -> usize {
        self.v0 + j * self.v_step
    }
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    rows: usize,
    d: usize,
    s: usize,
}

isa_entries! {
    /// out (rows × d, zeroed) = softmax(q·Kᵀ)·V for one head; `scores` is scratch of rows × s.
    fn head_on<E: WeightElem>(
        q: &[f32],
        kv: HeadKv<'_, E>,
        dims: Dims,
        out: &mut [f32],
        scores: &mut [f32],
    ) => head_body
}

/// Keys and values of any element type (f32, or f16 / bf16 to halve the bytes a step reads),
/// widened to f32 as they are read; q, the scores and the sums stay f32.
#[inline(always)]
unsafe fn head_body<S: Simd, E: WeightElem>(
    q: &[f32],
    kv: HeadKv<'_, E>,
    dims: Dims,
    out: &mut [f32],
    scores: &mut [f32],
) {
    let Dims { rows, d, s, .. } = dims;
    let full = d - d % S::LANES;
    let (k, v) = (kv.k.as_ptr(), kv.v.as_ptr());
    let row_bytes = d * std::mem::size_of::<E>();
    // The V rows come in beside the K rows: the value pass then reads them from L2.
    let prefetch = |keys: std::ops::Range<usize>| {
        for j in keys {
            let (kr, vr) = (
                k.add(kv.at.key(j)) as *const u8,
                v.add(kv.at.value(j)) as *const u8,
            );
            for line in (0..row_bytes).step_by(64) {
                S::prefetch_keep(kr.add(line));
                S::prefetch_keep(vr.add(line));
            }
        }
    };
    prefetch(0..KEYS_AHEAD.min(s));
    // q·Kᵀ, KEYS_PER_PASS keys at a time (a last pass of fewer repeats its last key), the
    // query rows in groups that share each widened key vector.
    for j in (0..s).step_by(KEYS_PER_PASS) {
        let n = KEYS_PER_PASS.min(s - j);
        prefetch((j + KEYS_AHEAD).min(s)..(j + KEYS_AHEAD + KEYS_PER_PASS).min(s));
        let keys: [*const E; KEYS_PER_PASS] =
            std::array::from_fn(|i| k.add(kv.at.key(j + i.min(n - 1))));
        let pass = KeyPass {
            q: q.as_ptr(),
            keys,
            n,
            d,
            full,
            scores: scores.as_mut_ptr().add(j),
            s,
        };
        in_row_groups::<S>(rows, |r, g| match g {
            4 => pass.rows::<S, 4>(r),
            2 => pass.rows::<S, 2>(r),
            _ => pass.rows::<S, 1>(r),
        });
    }
    for row in scores.chunks_exact_mut(s) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let inv = (1.0 / exp_shifted_in_place(row, max)) as f32;
        row.iter_mut().for_each(|p| *p *= inv);
    }
    // Σ_j p_j · V_j, a block of keys at a time, each row's sum in registers along the block,
    // each widened value vector serving a group of rows.
    for j0 in (0..s).step_by(VALUE_BLOCK) {
        let block = ValueBlock {
            p: scores.as_ptr().add(j0),
            s,
            v,
            at: kv.at,
            j0,
            len: VALUE_BLOCK.min(s - j0),
            out: out.as_mut_ptr(),
            d,
        };
        in_row_groups::<S>(rows, |r, g| {
            let mut c = 0;
            macro_rules! columns {
                ($g:literal, $n:expr) => {
                    while c + $n * S::LANES <= full {
                        block.accumulate::<S, $g, { $n }>(r, c);
                        c += $n * S::LANES;
                    }
                };
            }
            match g {
                4 => columns!(4, 4),
                2 => columns!(2, 4),
                _ => {
                    columns!(1, OUT_VECTORS);
                    columns!(1, 4);
                }
            }
            match g {
                4 => columns!(4, 1),
                2 => columns!(2, 1),
                _ => columns!(1, 1),
            }
            for row in r..r + g {
                block.tail(row, full);
            }
        });
    }
}

/// Calls `f(r, g)` for groups of g query rows from row r: groups of four on 16-lane vectors
/// (AVX-512's 32 registers hold the 16 sums, 4 keys or values and q), else of two (AVX2's 16
/// registers), then single rows for the rest.
#[inline(always)]
fn in_row_groups<S: Simd>(rows: usize, mut f: impl FnMut(usize, usize)) {
    let widest = if S::LANES >= 16 { 4 } else { 2 };
    let mut r = 0;
    for g in [4, 2, 1] {
        if g > widest {
            continue;
        }
        while r + g <= rows {
            f(r, g);
            r += g;
        }
    }
}

/// One pass of the q·Kᵀ walk: up to KEYS_PER_PASS keys against the query rows.
#[derive(Clone, Copy)]
struct KeyPass<E> {
    q: *const f32,
    keys: [*const E; KEYS_PER_PASS],
    /// Keys of this pass that count (the others repeat the last).
    n: usize,
    d: usize,
    /// Columns in whole vectors.
    full: usize,
    /// The scores of this pass's first key, row 0 (rows s apart).
    scores: *mut f32,
    s: usize,
}

impl<E: WeightElem> KeyPass<E> {
    /// The scores of query rows r..r + G: each key vector widened once for the G rows, G ·
    /// KEYS_PER_PASS independent FMA chains.
    #[inline(always)]
    unsafe fn rows<S: Simd, const G: usize>(&self, r: usize) {
        let mut acc = [[S::zero(); KEYS_PER_PASS]; G];
        let mut c = 0;
        while c < self.full {
            let kv: [S::V; KEYS_PER_PASS] = std::array::from_fn(|i| S::load_w(self.keys[i].add(c)));
            for (g, acc) in acc.iter_mut().enumerate() {
                let qv = S::load(self.q.add((r + g) * self.d + c));
                for (a, key) in acc.iter_mut().zip(kv) {
                    *a = S::fma(qv, key, *a);
                }
            }
            c += S::LANES;
        }
        for (g, acc) in acc.iter().enumerate() {
            // Every key's accumulator summed by constant index: read only up to the pass's
            // run-time `n`, they lived on the stack and the loop above stored them each time.
            let sums: [f32; KEYS_PER_PASS] = std::array::from_fn(|i| S::sum(acc[i]));
            let qr = self.q.add((r + g) * self.d);
            for (i, (sum, key)) in sums.iter().zip(&self.keys).take(self.n).enumerate() {
                let tail: f32 = (self.full..self.d)
                    .map(|c| *qr.add(c) * (*key.add(c)).to_f32())
                    .sum();
                *self.scores.add((r + g) * self.s + i) = sum + tail;
            }
        }
    }
}

/// One block of the value pass: keys j0..j0 + len of a head, their probabilities in the
/// scores (rows s apart), summed into the output rows (d apart).
#[derive(Clone, Copy)]
struct ValueBlock<E> {
    p: *const f32,
    s: usize,
    v: *const E,
    at: Walk,
    j0: usize,
    len: usize,
    out: *mut f32,
    d: usize,
}

impl<E: WeightElem> ValueBlock<E> {
    /// Output rows r..r + G, columns c..c + N · LANES += Σ_jj p[jj] · V[j0 + jj]: the G × N
    /// sums held in registers along the block, each value vector widened once for the G rows.
    #[inline(always)]
    unsafe fn accumulate<S: Simd, const G: usize, const N: usize>(&self, r: usize, c: usize) {
        let o = |g: usize| self.out.add((r + g) * self.d + c);
        let mut acc: [[S::V; N]; G] =
            std::array::from_fn(|g| std::array::from_fn(|i| S::load(o(g).add(i * S::LANES))));
        for jj in 0..self.len {
            let row = self.v.add(self.at.value(self.j0 + jj) + c);
            let vv: [S::V; N] = std::array::from_fn(|i| S::load_w(row.add(i * S::LANES)));
            for (g, acc) in acc.iter_mut().enumerate() {
                let pv = S::splat(*self.p.add((r + g) * self.s + jj));
                for (a, value) in acc.iter_mut().zip(vv) {
                    *a = S::fma(pv, value, *a);
                }
            }
        }
        for (g, acc) in acc.iter().enumerate() {
            for (i, a) in acc.iter().enumerate() {
                S::store(o(g).add(i * S::LANES), *a);
            }
        }
    }

    /// Output row `row`'s columns past the whole vectors.
    #[inline(always)]
    unsafe fn tail(&self, row: usize, full: usize) {
        for c in full..self.d {
            let sum: f32 = (0..self.len)
                .map(|jj| {
                    *self.p.add(row * self.s + jj)
                        * (*self.v.add(self.at.value(self.j0 + jj) + c)).to_f32()
                })
                .sum();
            *self.out.add(row * self.d + c) += sum;
        }
    }
}

/// softmax(q·Kᵀ)·V for every (batch, head), heads in parallel when the walk is long.
fn attend<T: WeightElem>(
    isa: Isa,
    q: &[f32],
    k: &[T],
    kl: &Layout,
    v: &[T],
    vl: &Layout,
    dims: Dims,
) -> Vec<f32> {
    let Dims { h, rows, d, s, .. } = dims;
    let mut out = vec![0f32; dims.b * h * rows * d];
    let head = |bh: usize, out: &mut [f32]| {
        let (bi, hi) = (bh / h, bh % h);
        let at = Walk {
            k0: offset(kl, bi, hi, 0),
            k_step: kl.stride()[2],
            v0: offset(vl, bi, hi, 0),
            v_step: vl.stride()[2],
        };
        let mut scores = SCORES.take();
        scores.resize(rows * s, 0.0);
        head_on(
            isa,
            &q[bh * rows * d..(bh + 1) * rows * d],
            HeadKv { k, v, at },
            dims,
            out,
            &mut scores,
        );
        SCORES.set(scores);
    };
    if dims.b * h * s * d < PARALLEL_MIN {
        out.chunks_mut(rows * d)
            .enumerate()
            .for_each(|(bh, o)| head(bh, o));
    } else {
        for_each_chunk_mut(&mut out, rows * d, &|bh, o| head(bh, o));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemv::tests::data;
    use candle_core::{Device, Tensor};
    use half::{bf16, f16};

    /// softmax(q·Kᵀ)·V in f64 for one head, K and V rows as f32 values.
    fn reference(q: &[f32], k: &[Vec<f32>], v: &[Vec<f32>]) -> Vec<f64> {
        let scores: Vec<f64> = k
            .iter()
            .map(|k| q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum())
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        (0..q.len())
            .map(|c| e.iter().zip(v).map(|(p, v)| p / sum * v[c] as f64).sum())
            .collect()
    }

    /// Every instruction set, element type, head width (vector multiples and tails) and key
    /// count (partial key passes and value blocks) against the f64 reference, with K and V
    /// as views into longer caches (row stride ≠ d, start offset ≠ 0).
    fn check<T: WeightElem + candle_core::WithDType>(from_f32: fn(f32) -> T) -> Result<()> {
        let (b, h, cap) = (2, 3, 140);
        let mut seed = 0;
        let mut values = |len: usize| {
            seed += 1;
            data(len, seed)
        };
        for isa in Isa::available() {
            for d in [4, 64, 72, 128, 136] {
                for (s, rows) in [(1, 1), (3, 4), (5, 8), (70, 1), (131, 3), (133, 4)] {
                    let dims = Dims { b, h, rows, d, s };
                    let q = values(b * h * rows * d);
                    let mut cache = || -> Result<(Vec<T>, Tensor)> {
                        let data: Vec<T> =
                            values(b * h * cap * d).into_iter().map(from_f32).collect();
                        let view = Tensor::from_vec(data.clone(), (b, h, cap, d), &Device::Cpu)?
                            .narrow(2, cap - s - 2, s)?;
                        Ok((data, view))
                    };
                    let (k, kt) = cache()?;
                    let (v, vt) = cache()?;
                    let out = attend(isa, &q, &k, kt.layout(), &v, vt.layout(), dims);
                    for bh in 0..b * h {
                        let (bi, hi) = (bh / h, bh % h);
                        let row_of = |data: &[T], l: &Layout, j| -> Vec<f32> {
                            let at = offset(l, bi, hi, j);
                            data[at..at + d].iter().map(|x| x.to_f32()).collect()
                        };
                        let ks: Vec<_> = (0..s).map(|j| row_of(&k, kt.layout(), j)).collect();
                        let vs: Vec<_> = (0..s).map(|j| row_of(&v, vt.layout(), j)).collect();
                        for r in 0..rows {
                            let at = (bh * rows + r) * d;
                            let want = reference(&q[at..at + d], &ks, &vs);
                            for (c, w) in want.iter().enumerate() {
                                let got = out[at + c] as f64;
                                assert!(
                                    (got - w).abs() < 1e-5,
                                    "{isa:?} {} d {d} s {s} rows {rows}: head {bh} row {r} [{c}] {got} vs {w}",
                                    T::NAME
                                );
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn decode_attention_matches_f64_for_every_isa_and_kv_type() -> Result<()> {
        check::<f32>(|x| x)?;
        check::<f16>(f16::from_f32)?;
        check::<bf16>(bf16::from_f32)
    }
}
