//! Attention of many query rows (an encoder's window: 1500 × 1500 per head; a prompt's causal
//! block, [`ManyRowsAttention::causal`]) in one of two kinds of [`Products`]: f32 FMAs (AVX-512, or AVX2 + FMA), or bf16 dot products
//! where the CPU has AVX512-BF16 (AMD Zen 4 and 5, Intel from Cooper Lake).
//!
//! In bf16, q, K and V are rounded to bf16 (to nearest even) and both products run on
//! `vdpbf16ps` with f32 sums; the softmax runs in f32 on the scores and its probabilities are
//! rounded to bf16 for P·V: the roundings of PyTorch's CPU flash attention on bf16 tensors
//! (its q·Kᵀ and P·V GEMMs take bf16 operands and accumulate in f32), which is how the bf16
//! checkpoints' own runtime computes their encoders. In f32 nothing is rounded. Was (and is,
//! for masked windows, and on other CPUs): candle's f32 GEMM for q·Kᵀ, the softmax, a second
//! GEMM for P·V, in chunks of heads and rows (~125 GFLOP/s on these shapes, AMD Zen 4).
//!
//! Each query row is computed alone — its scores in one pass over the keys, its softmax, its
//! output in one pass over the values, in an order that does not depend on the rows around
//! it — so a row's result is the same whatever block of rows it comes in (chunk-invariant,
//! as the encoders' products, [`crate::Linear::set_chunk_invariant`]; a causal row's sums run
//! on over its tile's later keys with exact zeros).
//!
//! Layout: both products broadcast one 32-bit lane of the row (q's dims, P's keys) against a
//! vector of lanes of the other operand, giving a vector of outputs (keys, dims). A lane holds
//! one f32 value, or one bf16 pair: the pair `(k[2p], k[2p + 1])` of one key along the head, and
//! `(v[2j][d], v[2j + 1][d])` of two keys for P·V. Per (batch, head) the keys are packed in
//! blocks of a vector's width, `[block][lane][key]`, and the values `[lane of keys][dim]`. A
//! register tile is rows × vectors of accumulators: 6 × 4 with AVX-512's 32 registers, 6 × 2
//! with AVX2's 16 (4 × 3 spilled one; 4 × 2 leaves the FMAs' latency no slack).

use super::simd::{Avx2, Avx512, Isa, Simd};
use super::small_m_bf16::{round_pairs, runs as runs_bf16};
use super::softmax::x86::{exp_neg_16, exp_shifted, max as max_8};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::marker::PhantomData;

/// Register tiles per parallel task (a 1500-row window: 32 tasks per head with AVX-512).
const TASK_TILES: usize = 8;

/// Most bytes of packed keys and values at once (at least one head's): an encoder window's
/// heads are attended a few at a time, as the GEMM path bounds its scores.
const PACKED_BYTES: usize = 4 << 20;

/// Widest head the kernel takes.
pub const MAX_HEAD_DIM: usize = 256;

/// What the two products multiply: f32 values, or bf16 pairs with f32 sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Products {
    F32,
    Bf16,
}

/// candle op: q (b, h, rows, d), k, v (b, h, s, d), all f32 with unit stride along d, q
/// pre-scaled → softmax(q·Kᵀ)·V (b, h, rows, d) f32, every row seeing every key or, made
/// [`ManyRowsAttention::causal`], the keys up to its position. Made by
/// [`ManyRowsAttention::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManyRowsAttention {
    kernel: Kernel,
    causal: Option<Causal>,
}

/// A causal prompt's rows: row r of a head stands at position past + r mod t (a head's rows
/// are runs of the same t positions: query heads and beams folded onto their key head) and
/// sees the keys up to it, of s = past + t.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Causal {
    past: usize,
    t: usize,
}

/// The kernel's forms: its products on one instruction set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    F32Avx512,
    F32Avx2,
    Bf16Avx512,
}

impl Kernel {
    fn products(self) -> Products {
        match self {
            Kernel::F32Avx512 | Kernel::F32Avx2 => Products::F32,
            Kernel::Bf16Avx512 => Products::Bf16,
        }
    }

    fn runs(self) -> bool {
        match self {
            Kernel::F32Avx512 => Isa::Avx512.is_available(),
            Kernel::F32Avx2 => Isa::Avx2.is_available(),
            Kernel::Bf16Avx512 => runs_bf16(),
        }
    }
}

impl ManyRowsAttention {
    /// The kernel for heads of `head_dim` in `products`, where the CPU runs it (f32: AVX-512,
    /// else AVX2 + FMA; bf16: AVX512-BF16) and the head is whole vectors of 16 wide, at most
    /// [`MAX_HEAD_DIM`]; `None` elsewhere.
    pub fn new(products: Products, head_dim: usize) -> Option<Self> {
        Self::every_form(products, head_dim).first().copied()
    }

    /// Every form of the kernel the CPU runs for these heads, fastest first (benchmarks
    /// compare them).
    pub fn every_form(products: Products, head_dim: usize) -> Vec<Self> {
        let forms: &[Kernel] = match products {
            Products::F32 => &[Kernel::F32Avx512, Kernel::F32Avx2],
            Products::Bf16 => &[Kernel::Bf16Avx512],
        };
        let head = head_dim > 0 && head_dim.is_multiple_of(16) && head_dim <= MAX_HEAD_DIM;
        forms
            .iter()
            .filter(|k| head && k.runs())
            .map(|&kernel| Self {
                kernel,
                causal: None,
            })
            .collect()
    }

    /// The same kernel for a causal prompt of t positions after `past` cached ones: query row
    /// r of a head (runs of t rows: query heads and beams folded onto their key head) stands
    /// at position past + r mod t and sees the keys up to it, of past + t. The score and value
    /// passes of a tile of rows stop at its last row's keys: a prompt of its own (past 0)
    /// costs half the products of a full square.
    pub fn causal(self, past: usize, t: usize) -> Self {
        Self {
            causal: Some(Causal { past, t }),
            ..self
        }
    }

    /// What its products multiply.
    pub fn products(self) -> Products {
        self.kernel.products()
    }

    /// Keys row r of a head sees, of s.
    fn keys_seen(&self, r: usize, s: usize) -> usize {
        match self.causal {
            Some(Causal { past, t }) => past + r % t + 1,
            None => s,
        }
    }
}

/// The form, e.g. "f32 on AVX2", and "causal" where it is.
impl std::fmt::Display for ManyRowsAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let form = match self.kernel {
            Kernel::F32Avx512 => "f32 on AVX-512",
            Kernel::F32Avx2 => "f32 on AVX2",
            Kernel::Bf16Avx512 => "bf16 on AVX512-BF16",
        };
        let causal = if self.causal.is_some() {
            ", causal"
        } else {
            ""
        };
        write!(f, "{form}{causal}")
    }
}

impl CustomOp3 for ManyRowsAttention {
    fn name(&self) -> &'static str {
        "many-rows-attention"
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
        let form = Self {
            causal: None,
            ..*self
        };
        let causal_keys = self.causal.is_none_or(|c| c.t > 0 && c.past + c.t == s);
        if (kb, kh, kd) != (b, h, d)
            || vl.shape() != kl.shape()
            || !Self::every_form(self.products(), d).contains(&form)
            || !causal_keys
        {
            candle_core::bail!(
                "many-rows-attention ({self}, {:?}): q {:?}, k {:?}, v {:?}",
                self.causal,
                ql.shape(),
                kl.shape(),
                vl.shape()
            );
        }
        if [ql, kl, vl].iter().any(|l| l.stride()[3] != 1) {
            candle_core::bail!("many-rows-attention needs unit stride along the head");
        }
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (qs, ks, vs) else {
            candle_core::bail!("many-rows-attention takes f32 queries, keys and values");
        };
        let heads = Heads { b, h, rows, d, s };
        let (q, k, v) = ((q.as_slice(), ql), (k.as_slice(), kl), (v.as_slice(), vl));
        let out = match self.kernel {
            Kernel::F32Avx512 => attend::<F32<Avx512>>(self, heads, q, k, v),
            Kernel::F32Avx2 => attend::<F32<Avx2>>(self, heads, q, k, v),
            Kernel::Bf16Avx512 => attend::<Bf16x16>(self, heads, q, k, v),
        };
        Ok((CpuStorage::F32(out), Shape::from((b, h, rows, d))))
    }
}

/// What the kernel does differently per form (its products and vectors); the rest is generic
/// over it. Every function's safety condition: the CPU runs the form.
trait Operands {
    /// A vector of f32 sums, and one of lanes of the broadcast product's other operand.
    type Sums: Copy;
    type Lanes: Copy;
    /// f32 lanes per vector: keys per block, and dims per output vector.
    const LANES: usize;
    /// Values per 32-bit lane along a sum (q's dims, P's keys): 1 or 2.
    const PER_LANE: usize;
    /// Query rows per register tile.
    const TILE_ROWS: usize;

    unsafe fn zero() -> Self::Sums;
    unsafe fn load(p: *const u32) -> Self::Lanes;
    unsafe fn store(p: *mut f32, sums: Self::Sums);
    /// sums + the lane `a` (broadcast) times `b`, lane by lane.
    unsafe fn product(sums: Self::Sums, a: u32, b: Self::Lanes) -> Self::Sums;

    /// `product` for a whole tile of rows ([`Operands::TILE_ROWS`]), or for one row.
    unsafe fn tile(product: LaneProduct);
    unsafe fn row(product: LaneProduct);

    /// `row` (a multiple of 16 values) into `row.len() / PER_LANE` lanes: f32 values as
    /// their bits.
    unsafe fn pack(row: &[f32], lanes: &mut [u32]) {
        for (lane, x) in lanes.iter_mut().zip(row) {
            *lane = x.to_bits();
        }
    }

    /// The value rows of one lane's keys into d lanes, one per dim: `first`, and for bf16
    /// pairs `second` (absent past the last key: zero). The rows and `lanes` hold the same
    /// multiple of 16 values.
    unsafe fn pack_values(first: &[f32], _second: Option<&[f32]>, lanes: &mut [u32]) {
        Self::pack(first, lanes)
    }

    /// softmax(row) into the lanes (all of them: zero past the row's end), in f32 (the sum of
    /// the exponentials too); `row` may be left changed. A NaN score makes the row's
    /// probabilities NaN.
    unsafe fn probabilities(row: &mut [f32], lanes: &mut [u32]);

    /// [`rows_of_head`] compiled for the form's instructions.
    unsafe fn rows_of_head(
        heads: Heads,
        head: &PackedHead<'_>,
        queries: &[Query<'_>],
        out: &mut [f32],
    );
}

/// f32 lanes and FMAs on one of the crate's vector paths ([`Simd`]: AVX-512 or AVX2 + FMA).
struct F32<S>(PhantomData<S>);

/// What an f32 form adds to its path's vector operations: its register tile, its softmax and
/// its entry compiled for the path's instructions.
trait F32Form: Simd {
    const TILE_ROWS: usize;
    unsafe fn tile(product: LaneProduct);
    unsafe fn row(product: LaneProduct);
    unsafe fn probabilities(row: &mut [f32], lanes: &mut [u32]);
    unsafe fn rows_of_head(
        heads: Heads,
        head: &PackedHead<'_>,
        queries: &[Query<'_>],
        out: &mut [f32],
    );
}

impl<S: F32Form> Operands for F32<S> {
    type Sums = S::V;
    type Lanes = S::V;
    const LANES: usize = S::LANES;
    const PER_LANE: usize = 1;
    const TILE_ROWS: usize = S::TILE_ROWS;

    #[inline(always)]
    unsafe fn zero() -> S::V {
        S::zero()
    }

    #[inline(always)]
    unsafe fn load(p: *const u32) -> S::V {
        S::load(p as *const f32)
    }

    #[inline(always)]
    unsafe fn store(p: *mut f32, sums: S::V) {
        S::store(p, sums)
    }

    #[inline(always)]
    unsafe fn product(sums: S::V, a: u32, b: S::V) -> S::V {
        S::fma(S::splat(f32::from_bits(a)), b, sums)
    }

    #[inline(always)]
    unsafe fn tile(product: LaneProduct) {
        S::tile(product)
    }

    #[inline(always)]
    unsafe fn row(product: LaneProduct) {
        S::row(product)
    }

    #[inline(always)]
    unsafe fn probabilities(row: &mut [f32], lanes: &mut [u32]) {
        S::probabilities(row, lanes)
    }

    unsafe fn rows_of_head(
        heads: Heads,
        head: &PackedHead<'_>,
        queries: &[Query<'_>],
        out: &mut [f32],
    ) {
        S::rows_of_head(heads, head, queries, out)
    }
}

/// 16 lanes, 6 × 4 tiles, the fused 16-lane softmax.
impl F32Form for Avx512 {
    const TILE_ROWS: usize = 6;

    #[inline(always)]
    unsafe fn tile(product: LaneProduct) {
        product.rows::<F32<Self>, 6, 4>()
    }

    #[inline(always)]
    unsafe fn row(product: LaneProduct) {
        product.rows::<F32<Self>, 1, 4>()
    }

    #[inline(always)]
    unsafe fn probabilities(row: &mut [f32], lanes: &mut [u32]) {
        softmax_16(row, |x, len, inv| {
            for j in (0..lanes.len()).step_by(16) {
                let p = match len.checked_sub(j) {
                    Some(n) => _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes_of(n), x.add(j)), inv),
                    None => _mm512_setzero_ps(),
                };
                let at = lanes.as_mut_ptr().add(j) as *mut f32;
                _mm512_mask_storeu_ps(at, lanes_of(lanes.len() - j), p);
            }
        })
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn rows_of_head(
        heads: Heads,
        head: &PackedHead<'_>,
        queries: &[Query<'_>],
        out: &mut [f32],
    ) {
        rows_of_head::<F32<Self>>(heads, head, queries, out)
    }
}

/// 8 lanes, 6 × 2 tiles, the GEMM path's softmax steps.
impl F32Form for Avx2 {
    const TILE_ROWS: usize = 6;

    #[inline(always)]
    unsafe fn tile(product: LaneProduct) {
        product.rows::<F32<Self>, 6, 2>()
    }

    #[inline(always)]
    unsafe fn row(product: LaneProduct) {
        product.rows::<F32<Self>, 1, 2>()
    }

    #[inline(always)]
    unsafe fn probabilities(row: &mut [f32], lanes: &mut [u32]) {
        let max = max_8(row);
        let inv = (1.0 / exp_shifted(row.as_mut_ptr(), row.len(), max, true)) as f32;
        let (seen, rest) = lanes.split_at_mut(row.len());
        for (lane, e) in seen.iter_mut().zip(row.iter()) {
            *lane = (e * inv).to_bits();
        }
        rest.fill(0);
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_of_head(
        heads: Heads,
        head: &PackedHead<'_>,
        queries: &[Query<'_>],
        out: &mut [f32],
    ) {
        rows_of_head::<F32<Self>>(heads, head, queries, out)
    }
}

/// bf16 pairs in 16 lanes and `vdpbf16ps` (AVX512-BF16).
struct Bf16x16;

impl Operands for Bf16x16 {
    type Sums = __m512;
    type Lanes = __m512bh;
    const LANES: usize = 16;
    const PER_LANE: usize = 2;
    const TILE_ROWS: usize = 6;

    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }

    #[inline(always)]
    unsafe fn load(p: *const u32) -> __m512bh {
        bh(_mm512_loadu_si512(p as *const _))
    }

    #[inline(always)]
    unsafe fn store(p: *mut f32, sums: __m512) {
        _mm512_storeu_ps(p, sums)
    }

    #[inline(always)]
    unsafe fn product(sums: __m512, a: u32, b: __m512bh) -> __m512 {
        _mm512_dpbf16_ps(sums, bh(_mm512_set1_epi32(a as i32)), b)
    }

    #[inline(always)]
    unsafe fn tile(product: LaneProduct) {
        product.rows::<Self, 6, 4>()
    }

    #[inline(always)]
    unsafe fn row(product: LaneProduct) {
        product.rows::<Self, 1, 4>()
    }

    unsafe fn pack(row: &[f32], lanes: &mut [u32]) {
        round_pairs(row, lanes)
    }

    unsafe fn pack_values(first: &[f32], second: Option<&[f32]>, lanes: &mut [u32]) {
        interleave_rows(first, second, lanes)
    }

    /// The probabilities rounded to bf16 pairs (they keep 8 bits).
    #[inline(always)]
    unsafe fn probabilities(row: &mut [f32], lanes: &mut [u32]) {
        softmax_16(row, |x, len, inv| {
            for (jp, pair) in lanes.chunks_mut(16).enumerate() {
                let j = 32 * jp;
                let half = |j: usize| {
                    if j < len {
                        _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes_of(len - j), x.add(j)), inv)
                    } else {
                        _mm512_setzero_ps()
                    }
                };
                let packed = _mm512_cvtne2ps_pbh(half(j + 16), half(j));
                let packed = std::mem::transmute::<__m512bh, __m512i>(packed);
                let at = pair.as_mut_ptr() as *mut _;
                _mm512_mask_storeu_epi32(at, lanes_of(pair.len()), packed);
            }
        })
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn rows_of_head(
        heads: Heads,
        head: &PackedHead<'_>,
        queries: &[Query<'_>],
        out: &mut [f32],
    ) {
        rows_of_head::<Self>(heads, head, queries, out)
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
    /// Blocks of keys, a vector's lanes each.
    fn key_blocks<U: Operands>(&self) -> usize {
        self.s.div_ceil(U::LANES)
    }
}

/// Row j of head `bh` (b · h + head) of a 4-D layout: its first element.
fn row_at(l: &Layout, heads: Heads, bh: usize, j: usize) -> usize {
    let st = l.stride();
    l.start_offset() + (bh / heads.h) * st[0] + (bh % heads.h) * st[1] + j * st[2]
}

/// One head's keys and values in the kernel's layouts (see the module notes), in lanes of
/// one form's operands.
struct PackedHead<'a> {
    keys: &'a [u32],
    values: &'a [u32],
}

impl<'a> PackedHead<'a> {
    /// Lanes of one head's keys and values in U's operands.
    fn lanes<U: Operands>(heads: Heads) -> (usize, usize) {
        let (d, s) = (heads.d, heads.s);
        let keys = heads.key_blocks::<U>() * U::LANES * d / U::PER_LANE;
        (keys, s.div_ceil(U::PER_LANE) * d)
    }

    /// Packs head `bh` (b · h + head) into `lanes` (of [`PackedHead::lanes`]: keys, then
    /// values; the keys' lanes past the last key left as they are).
    ///
    /// # Safety
    /// The CPU runs U's form.
    unsafe fn pack<U: Operands>(
        heads: Heads,
        bh: usize,
        (k, kl): (&[f32], &Layout),
        (v, vl): (&[f32], &Layout),
        lanes: &'a mut [u32],
    ) -> Self {
        let (d, s, width) = (heads.d, heads.s, U::LANES);
        let per_row = d / U::PER_LANE;
        let (keys, values) = lanes.split_at_mut(Self::lanes::<U>(heads).0);
        let mut row = vec![0u32; per_row];
        for j in 0..s {
            let at = row_at(kl, heads, bh, j);
            U::pack(&k[at..at + d], &mut row);
            let block = &mut keys[(j / width) * per_row * width..];
            for (i, &lane) in row.iter().enumerate() {
                block[i * width + j % width] = lane;
            }
        }
        let value = |j: usize| &v[row_at(vl, heads, bh, j)..][..d];
        for (jl, out) in values.chunks_exact_mut(d).enumerate() {
            // A pair's second key is missing past the last key.
            let j = jl * U::PER_LANE;
            let second = (U::PER_LANE == 2 && j + 1 < s).then(|| value(j + 1));
            U::pack_values(value(j), second, out);
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
    for c in (0..out.len()).step_by(16) {
        let lo = half(a, c);
        let pair = match b {
            Some(b) => _mm512_or_si512(lo, _mm512_slli_epi32::<16>(half(b, c))),
            None => lo,
        };
        _mm512_storeu_si512(out.as_mut_ptr().add(c) as *mut _, pair);
    }
}

/// softmax(q·Kᵀ)·V for every head in U's form, in tasks of [`TASK_TILES`] tiles of query
/// rows, a group of heads at a time (their packed keys and values within [`PACKED_BYTES`]).
fn attend<U: Operands>(
    op: &ManyRowsAttention,
    heads: Heads,
    (q, ql): (&[f32], &Layout),
    k: (&[f32], &Layout),
    v: (&[f32], &Layout),
) -> Vec<f32> {
    let Heads { b, h, rows, d, s } = heads;
    let mut out = vec![0f32; b * h * rows * d];
    if out.is_empty() {
        return out;
    }
    // One buffer for a group's packed heads, reused group after group (fresh buffers per
    // head, taken from every worker's malloc arena, raised the peak RSS).
    let (key_lanes, value_lanes) = PackedHead::lanes::<U>(heads);
    let per_head = key_lanes + value_lanes;
    let group = (PACKED_BYTES / (4 * per_head)).clamp(1, b * h);
    let mut lanes = vec![0u32; group * per_head];
    let task_rows = TASK_TILES * U::TILE_ROWS;
    for (g, out) in out.chunks_mut(group * rows * d).enumerate() {
        let first = g * group;
        let packed: Vec<PackedHead> = lanes
            .par_chunks_mut(per_head)
            .zip(first..first + out.len() / (rows * d))
            // SAFETY: the caller checked that the CPU runs U's form.
            .map(|(lanes, bh)| unsafe { PackedHead::pack::<U>(heads, bh, k, v, lanes) })
            .collect();
        out.par_chunks_mut(rows * d)
            .zip(&packed)
            .enumerate()
            .flat_map(|(i, (head, packed))| {
                head.par_chunks_mut(task_rows * d)
                    .enumerate()
                    .map(move |(t, o)| (first + i, packed, t * task_rows, o))
            })
            .for_each(|(bh, packed, r0, out)| {
                let queries: Vec<Query> = (r0..r0 + out.len() / d)
                    .map(|r| Query {
                        row: &q[row_at(ql, heads, bh, r)..][..d],
                        keys: op.keys_seen(r, s),
                    })
                    .collect();
                // SAFETY: as above; `out` holds the task's rows.
                unsafe { U::rows_of_head(heads, packed, &queries, out) };
            });
    }
    out
}

/// A query row and the keys it sees (the first `keys` of the head's).
struct Query<'a> {
    row: &'a [f32],
    keys: usize,
}

/// The output rows (d apart in `out`) of `queries` against one packed head, a tile of rows
/// at a time; the tile's products stop at the keys its rows see.
///
/// # Safety
/// The CPU runs U's form, and the caller was compiled for its instructions; `out` holds
/// queries.len() · d values; every query sees 1 to s keys.
#[inline(always)]
unsafe fn rows_of_head<U: Operands>(
    heads: Heads,
    head: &PackedHead<'_>,
    queries: &[Query<'_>],
    out: &mut [f32],
) {
    let (d, s, tile_rows) = (heads.d, heads.s, U::TILE_ROWS);
    let (per_row, scores_width) = (d / U::PER_LANE, heads.key_blocks::<U>() * U::LANES);
    let key_lanes = s.div_ceil(U::PER_LANE);
    let mut q_lanes = vec![0u32; tile_rows * per_row];
    let mut scores = vec![0f32; tile_rows * scores_width];
    let mut p_lanes = vec![0u32; tile_rows * key_lanes];
    for (tile, out) in queries.chunks(tile_rows).zip(out.chunks_mut(tile_rows * d)) {
        for (query, ql) in tile.iter().zip(q_lanes.chunks_exact_mut(per_row)) {
            U::pack(query.row, ql);
        }
        let seen = tile.iter().map(|query| query.keys).max().unwrap_or(0);
        let seen_lanes = seen.div_ceil(U::PER_LANE);
        // Scores: q's lanes against the blocks of keys the tile sees; rows scores_width apart.
        let (q_at, scores_at) = (q_lanes.as_ptr(), scores.as_mut_ptr());
        let scores_of = |row: usize| LaneProduct {
            rows: q_at.add(row * per_row),
            row_stride: per_row,
            steps: per_row,
            vectors: head.keys.as_ptr(),
            vector_stride: per_row * U::LANES,
            step_stride: U::LANES,
            outputs: seen.div_ceil(U::LANES),
            out: scores_at.add(row * scores_width),
            out_stride: scores_width,
        };
        each_row_of::<U>(tile.len(), scores_of);
        for ((row, pl), query) in scores
            .chunks_exact_mut(scores_width)
            .zip(p_lanes.chunks_exact_mut(key_lanes))
            .zip(tile)
        {
            U::probabilities(&mut row[..query.keys], &mut pl[..seen_lanes]);
        }
        // Outputs: P's lanes of the keys the tile sees against vectors of dims; rows d apart.
        let (p_at, out_at) = (p_lanes.as_ptr(), out.as_mut_ptr());
        let outputs_of = |row: usize| LaneProduct {
            rows: p_at.add(row * key_lanes),
            row_stride: key_lanes,
            steps: seen_lanes,
            vectors: head.values.as_ptr(),
            vector_stride: U::LANES,
            step_stride: d,
            outputs: d / U::LANES,
            out: out_at.add(row * d),
            out_stride: d,
        };
        each_row_of::<U>(tile.len(), outputs_of);
    }
}

/// Runs `product(r)` (the product from row r of a tile of `rows`) for every row: a whole tile
/// at once, a partial one row by row.
///
/// # Safety
/// As [`rows_of_head`]; the products' pointers are valid for the tile's rows.
#[inline(always)]
unsafe fn each_row_of<U: Operands>(rows: usize, product: impl Fn(usize) -> LaneProduct) {
    if rows == U::TILE_ROWS {
        U::tile(product(0))
    } else {
        (0..rows).for_each(|r| U::row(product(r)))
    }
}

/// softmax(row) in 16 lanes (AVX-512F): max, e^(x − max) in place and its sum in f32, then
/// `pack(x, len, 1 / sum)` writes the probabilities out.
///
/// # Safety
/// The CPU has AVX-512F, and the caller was compiled for it.
#[inline(always)]
unsafe fn softmax_16(row: &mut [f32], pack: impl FnOnce(*const f32, usize, __m512)) {
    let len = row.len();
    let x = row.as_mut_ptr();
    // Lanes of the vector at j that lie in the row.
    let lanes_at = |j: usize| lanes_of(len - j);
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    for j in (0..len).step_by(16) {
        let v = _mm512_mask_loadu_ps(max, lanes_at(j), x.add(j));
        max = _mm512_max_ps(max, v);
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
    let mut sum = _mm512_setzero_ps();
    for j in (0..len).step_by(16) {
        let d = _mm512_sub_ps(_mm512_maskz_loadu_ps(lanes_at(j), x.add(j)), max);
        let e = exp_neg_16(d);
        let e = _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(d, d), d);
        _mm512_mask_storeu_ps(x.add(j), lanes_at(j), e);
        sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(lanes_at(j), e));
    }
    pack(x, len, _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum)));
}

/// A mask of the first `n` (≤ 16) lanes.
fn lanes_of(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}

/// One of the two products as a tile sees it: rows of lanes (q's dims, P's keys), each lane
/// broadcast against vectors of lanes of the other operand (keys, dims), summed over the
/// rows' lanes into vectors of f32 outputs.
#[derive(Clone, Copy)]
struct LaneProduct {
    /// Row r's i-th lane at `rows[r · row_stride + i]`.
    rows: *const u32,
    row_stride: usize,
    /// Lanes per row: the length of each sum.
    steps: usize,
    /// Output vector n's i-th vector of lanes at `vectors[n · vector_stride + i · step_stride]`.
    vectors: *const u32,
    vector_stride: usize,
    step_stride: usize,
    /// Output vectors per row.
    outputs: usize,
    /// Row r's output vector n at `out[r · out_stride + n · LANES]`.
    out: *mut f32,
    out_stride: usize,
}

impl LaneProduct {
    /// Every output of R rows: tiles of N vectors, then single vectors.
    #[inline(always)]
    unsafe fn rows<U: Operands, const R: usize, const N: usize>(self) {
        let mut n = 0;
        while n + N <= self.outputs {
            self.tile::<U, R, N>(n);
            n += N;
        }
        while n < self.outputs {
            self.tile::<U, R, 1>(n);
            n += 1;
        }
    }

    /// R rows × N output vectors from vector n0: R · N accumulators along the sums.
    #[inline(always)]
    unsafe fn tile<U: Operands, const R: usize, const N: usize>(self, n0: usize) {
        let mut acc = [[U::zero(); N]; R];
        for i in 0..self.steps {
            let b: [U::Lanes; N] = std::array::from_fn(|n| {
                U::load(
                    self.vectors
                        .add((n0 + n) * self.vector_stride + i * self.step_stride),
                )
            });
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = *self.rows.add(r * self.row_stride + i);
                for (sum, b) in acc.iter_mut().zip(b) {
                    *sum = U::product(*sum, a, b);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (n, sum) in acc.iter().enumerate() {
                U::store(
                    self.out.add(r * self.out_stride + (n0 + n) * U::LANES),
                    *sum,
                );
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

    /// Every form of the kernel this CPU runs.
    fn kernels_here() -> Vec<ManyRowsAttention> {
        let forms = |products| ManyRowsAttention::every_form(products, 64);
        [forms(Products::F32), forms(Products::Bf16)].concat()
    }

    /// x as the products see it: rounded to bf16 (to nearest even, as the kernel rounds) or
    /// whole.
    fn operand(products: Products, x: f32) -> f64 {
        match products {
            Products::F32 => x as f64,
            Products::Bf16 => bf16::from_f32(x).to_f64(),
        }
    }

    /// softmax(q·Kᵀ)·V in f64 for one head on the products' operands (the probabilities
    /// not rounded).
    fn reference(products: Products, q: &[f32], k: &[&[f32]], v: &[&[f32]]) -> Vec<f64> {
        let x = |x: &f32| operand(products, *x);
        let scores: Vec<f64> = k
            .iter()
            .map(|k| q.iter().zip(*k).map(|(a, b)| x(a) * x(b)).sum())
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        (0..q.len())
            .map(|c| e.iter().zip(v).map(|(p, v)| p / sum * x(&v[c])).sum())
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
    /// blocks and an odd count (a padded key pair in bf16), row counts of partial tiles and
    /// tasks, the widest heads (f32 with 1500 keys: one head per group of packed heads), in
    /// every form the CPU runs, every row seeing every key and causal (after cached positions,
    /// and with rows folded as runs of t positions): within 2⁻¹⁸ (f32: its sums and
    /// exponential) or 2⁻⁸ (bf16: the rounded probabilities) of the largest |v| of the
    /// reference over the keys the row sees.
    #[test]
    fn matches_the_reference_in_every_shape() -> Result<()> {
        for kernel in kernels_here() {
            let products = kernel.products();
            let tolerance = match products {
                Products::F32 => 2f64.powi(-18),
                Products::Bf16 => 2f64.powi(-8),
            };
            for d in [16, 64, 80, 128, MAX_HEAD_DIM] {
                for (rows, s) in [(1, 1), (5, 3), (6, 17), (13, 64), (50, 131), (7, 1500)] {
                    let q = (tensor(1, 2, rows, d, 1, true)? * 0.3)?;
                    let (k, v) = (tensor(1, 2, s, d, 2, false)?, tensor(1, 2, s, d, 3, true)?);
                    // (past, t): a causal block after `past` positions, rows in runs of t.
                    let mut causal = vec![None];
                    if s >= rows {
                        causal.push(Some((s - rows, rows)));
                    }
                    if rows % 2 == 0 && s >= rows / 2 {
                        causal.push(Some((s - rows / 2, rows / 2)));
                    }
                    for causal in causal {
                        let op = match causal {
                            Some((past, t)) => kernel.causal(past, t),
                            None => kernel,
                        };
                        let out = q.apply_op3_no_bwd(&k, &v, &op)?;
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
                            let bound = tolerance
                                * vs.iter()
                                    .flat_map(|v| v.iter())
                                    .fold(0f64, |m, x| m.max(x.abs() as f64))
                                + 1e-7;
                            for (r, (q, o)) in qs.iter().zip(&os).enumerate() {
                                let seen = causal.map_or(s, |(past, t)| past + r % t + 1);
                                let want = reference(products, q, &ks[..seen], &vs[..seen]);
                                for (c, (got, want)) in o.iter().zip(want).enumerate() {
                                    assert!(
                                        (*got as f64 - want).abs() <= bound,
                                        "{op:?} d {d} rows {rows} s {s} head {bh} row {r} \
                                         [{c}]: {got} vs {want}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A row's output is the same bits whatever block of rows it comes in, in every form.
    #[test]
    fn every_row_comes_out_alike_in_any_block() -> Result<()> {
        let (rows, s, d) = (61, 150, 64);
        let q = tensor(1, 3, rows, d, 4, false)?;
        let (k, v) = (tensor(1, 3, s, d, 5, false)?, tensor(1, 3, s, d, 6, false)?);
        for op in kernels_here() {
            let whole = q
                .apply_op3_no_bwd(&k, &v, &op)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for block in [1, 2, 5, 7, 13, 48] {
                let mut parts = Vec::new();
                for r0 in (0..rows).step_by(block) {
                    let part = q.narrow(2, r0, block.min(rows - r0))?;
                    parts.push(part.apply_op3_no_bwd(&k, &v, &op)?);
                }
                let blocks = Tensor::cat(&parts, 2)?.flatten_all()?.to_vec1::<f32>()?;
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&blocks), bits(&whole), "{op:?}, blocks of {block}");
            }
        }
        Ok(())
    }
}
