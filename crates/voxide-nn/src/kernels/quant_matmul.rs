//! Matrix × few-vectors products with ggml block-quantized weights (the decoder step of a
//! quantized Whisper or Voxtral): `y[m][n] = Σ_k x[m][k] · w[n][k]` (+ bias), w in a
//! [`GgmlType`] block format row by row as ggml stores it, x and y in f32, m ≤ [`MAX_ROWS`].
//!
//! A Q4_0 block is 18 bytes for 32 weights. Widening each weight to f32 for an FMA, as
//! [`super::gemv`] does for f16 / bf16 / int8, costs more instructions per byte than two cores
//! retire at memory speed. So this kernel uses the integer-dot technique of llama.cpp / ggml
//! (credit to their authors: `ggml_vec_dot_q4_0_q8_0` and its siblings in
//! `ggml-cpu/arch/*/quants.c`). Each row of x is quantized once per call to 8-bit blocks of 32
//! values with an f32 scale each. Then each 32-weight block meets its block of x in an exact
//! integer dot product, followed by an f32 FMA with the product of the two scales.
//!
//! The integer products per instruction set: AVX2 `vpmaddubsw` (unsigned × signed bytes, pairs
//! summed to i16) then `vpmaddwd` (to i32); AVX-512 VNNI `vpdpbusd` (both in one, on 256-bit
//! vectors); NEON `sdot` where the CPU has it, else `smull` + `sadalp`; a portable path.
//! Blocks go two at a time, with x laid out so that each 128-bit lane (NEON register) holds
//! one block (`XPair`): one `vpaddw` + `vpmaddwd` + conversion + FMA then serve both, and
//! the loop runs at ~12 instructions per Q4_0 block on AVX2.
//!
//! Weights stored with an offset (Q4_0: w = d · (q − 8), Q5_0: q − 16) enter the products as
//! their unsigned codes q; the offset term −8 · d · Σx is added per block from x's
//! d_x · Σq_x, as are the minimum terms of Q4_1, Q5_1, Q4_K, Q5_K (w = d · q + m). That costs
//! one FMA on two lanes per pair of blocks where ggml's sign trick costs three instructions
//! per block. Signed codes (Q8_0, and Q6_K after its offset) use the sign trick: |w| · x with
//! w's sign.
//!
//! Integer paths: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K ([`has_integer_path`]). The
//! other types (Q2_K, Q3_K, Q8_1, Q8_K, and f32 / f16 / bf16 stored this way) are correct
//! but not fast: each chunk of a row is dequantized into an f32 stack buffer
//! ([`dequantize_row`]) and dotted with x.
//!
//! Precision: the products are exact integers; scales, offset and minimum terms, and the
//! accumulation are f32. The one approximation is x's quantization: each value moves by at
//! most half its block's step d_x = max|x_block| / 127. So |y − Σ x · w| ≤ Σ_blocks d_x / 2 ·
//! Σ_block |w| (plus f32 rounding). Relative to Σ |x · w| that is at most ~1/127 per block in
//! the worst case; on test data the largest relative error seen is ~2·10⁻³ (the test checks
//! the bound).

use super::bandwidth::Prefetch;
use super::gemv::{runs_parallel, OutPtr, MAX_ROWS};
use super::machine::{weight_prefetch, Residency};
use super::simd::{self, Isa, Simd};
use super::spin_pool::for_each_range;
use super::widen_gemm::{check_product, WidenRows};
use crate::quant::{dequantize_row, GgmlType};
use rayon::prelude::*;
use std::marker::PhantomData;

/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// Most rows of x the kernel takes at once ([`rows_of`]).
const GROUP_ROWS: usize = 4;

/// Weight bytes per block of rows that two groups of rows of x read in turn ([`rows_of`]).
const GROUP_BYTES: usize = 64 << 10;

/// How far ahead of the loads the prefetches run (as in the f16 / bf16 GEMV).
const PREFETCH_BYTES: usize = 4096;

/// Values per block of quantized x (and per integer dot product).
pub(super) const QX: usize = 32;

/// Weights per stack buffer of the dequantizing path: one k-quant block, eight 32-blocks.
const DEQUANT_CHUNK: usize = 256;

/// A block-quantized weight matrix: `rows` × `cols` values, row r in ggml's blocks at
/// `r * ty.row_bytes(cols)` of `data` (a GGUF / ggml tensor's bytes as stored).
#[derive(Clone, Copy, Debug)]
pub struct QuantMatrix<'a> {
    pub data: &'a [u8],
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// How the GEMV reads it ([`super::machine::plan_residency`]); by default streamed only
    /// when the matrix alone exceeds the cache budget.
    pub residency: Residency,
}

impl<'a> QuantMatrix<'a> {
    /// The matrix in `data`, which must hold exactly `rows` rows of `cols` values of `ty`
    /// (`cols` a whole number of blocks).
    pub fn new(data: &'a [u8], ty: GgmlType, rows: usize, cols: usize) -> Result<Self, String> {
        let Some(row_bytes) = ty.row_bytes(cols) else {
            return Err(format!(
                "{cols} columns are not whole {ty} blocks of {}",
                ty.block_size()
            ));
        };
        if data.len() != rows * row_bytes {
            return Err(format!(
                "{rows}×{cols} {ty} takes {} bytes, got {}",
                rows * row_bytes,
                data.len()
            ));
        }
        Ok(Self {
            data,
            ty,
            rows,
            cols,
            residency: Residency::unplanned(data.len()),
        })
    }

    /// The matrix read as `residency` says (a model's plan for its decoder step).
    pub fn with_residency(self, residency: Residency) -> Self {
        Self { residency, ..self }
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.ty
            .row_bytes(self.cols)
            .expect("columns are whole blocks (checked by new)")
    }

    /// Bytes of weight data.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Panics unless x (m × cols), y (m × rows) and the bias fit this matrix, and its data
    /// holds exactly its rows (the fields are public; the kernels read rows by offset).
    pub(super) fn check_product(&self, x: &[f32], y: &[f32], bias: Option<&[f32]>, m: usize) {
        check_product(x, y, bias, m, self.rows, self.cols);
        assert_eq!(
            self.data.len(),
            self.rows * self.row_bytes(),
            "{} rows of {} bytes",
            self.rows,
            self.row_bytes()
        );
    }

    fn row(&self, r: usize) -> &'a [u8] {
        let b = self.row_bytes();
        &self.data[r * b..(r + 1) * b]
    }
}

impl WidenRows for QuantMatrix<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn widen(&self, r0: usize, r1: usize, out: &mut [f32]) {
        assert_eq!(out.len(), (r1 - r0) * self.cols);
        if self.cols == 0 {
            return;
        }
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(i, dst)| dequantize_row(self.ty, self.row(r0 + i), dst));
    }
}

/// Whether `ty` has an integer path (fast); the other types are dequantized a chunk at a time.
pub fn has_integer_path(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
    )
}

/// y (m × n) = x (m × k) · wᵀ (+ bias), on the best instruction set of this CPU.
pub fn quant_gemv(x: &[f32], w: &QuantMatrix, bias: Option<&[f32]>, y: &mut [f32], m: usize) {
    quant_gemv_on(Isa::detect(), x, w, bias, y, m)
}

/// [`quant_gemv`] on a given instruction set (panics if this CPU lacks it). `Isa::Avx512`
/// runs the AVX-512 VNNI path where the CPU has VNNI, else the AVX2 one; `Isa::Neon` uses
/// `sdot` where the CPU has it.
pub fn quant_gemv_on(
    isa: Isa,
    x: &[f32],
    w: &QuantMatrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    assert!(isa.is_available(), "{isa:?} is not available on this CPU");
    gemv_path(Path::of(isa), x, w, bias, y, m)
}

fn gemv_path(
    path: Path,
    x: &[f32],
    w: &QuantMatrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    let n = w.rows;
    assert!(m <= MAX_ROWS, "quant_gemv takes at most {MAX_ROWS} rows");
    w.check_product(x, y, bias, m);
    if m == 0 || n == 0 {
        return;
    }
    let prefetch = weight_prefetch(w.residency, w.bytes());
    let integer = has_integer_path(w.ty);
    let xq = if integer {
        path.run(QuantizeX { x, k: w.cols })
    } else {
        Vec::new()
    };
    let out = OutPtr(y.as_mut_ptr());
    let task = |r0: usize, r1: usize| {
        let t = Task {
            x,
            xq: &xq,
            w: *w,
            bias,
            y: out,
            m,
            r0,
            r1,
            prefetch,
        };
        rows_of_type(path, t)
    };
    if !runs_parallel(w.bytes()) || rayon::current_num_threads() == 1 {
        task(0, n);
    } else {
        for_each_range(n, ROWS_PER_TASK, &task);
    }
}

/// A task's output rows for its weight type.
fn rows_of_type(path: Path, t: Task) {
    match t.w.ty {
        GgmlType::Q4_0 => rows_of::<fmt::Q4_0>(path, t),
        GgmlType::Q4_1 => rows_of::<fmt::Q4_1>(path, t),
        GgmlType::Q5_0 => rows_of::<fmt::Q5_0>(path, t),
        GgmlType::Q5_1 => rows_of::<fmt::Q5_1>(path, t),
        GgmlType::Q8_0 => rows_of::<fmt::Q8_0>(path, t),
        GgmlType::Q4K => rows_of::<fmt::Q4K>(path, t),
        GgmlType::Q5K => rows_of::<fmt::Q5K>(path, t),
        GgmlType::Q6K => rows_of::<fmt::Q6K>(path, t),
        _ => rows_dequantized(t),
    }
}

/// What a task of output rows reads and writes.
#[derive(Clone, Copy)]
struct Task<'a> {
    x: &'a [f32],
    /// x quantized (integer paths): `m` rows of `cols.div_ceil(64)` pairs of blocks.
    xq: &'a [XPair],
    w: QuantMatrix<'a>,
    bias: Option<&'a [f32]>,
    y: OutPtr,
    m: usize,
    r0: usize,
    r1: usize,
    prefetch: Prefetch,
}

impl Task<'_> {
    /// y[i][r] = total (+ bias[r]).
    ///
    /// # Safety
    /// i < m and r < n (y is m × n), and no other task writes element (i, r).
    #[inline(always)]
    unsafe fn store(&self, i: usize, r: usize, total: f32) {
        *self.y.0.add(i * self.w.rows + r) = total + self.bias.map_or(0.0, |b| b[r]);
    }
}

/// Two consecutive 32-blocks A and B of a row of x as d · q, in the order the kernels read
/// them: the first 16 values of A, of B, then the last 16 of A, of B. So each 128-bit lane of
/// an AVX2 register (each NEON register) holds values of one block, and one `vpmaddwd` +
/// conversion + FMA serves both. The steps d and d · Σq (for offsets and minimums) alongside;
/// a row with an odd number of blocks ends with B all zeros.
#[derive(Clone, Copy)]
struct XPair {
    q: [i8; 2 * QX],
    d: [f32; 2],
    ds: [f32; 2],
}

/// Quantizes x (m rows of k values, whole 32-blocks) into pairs, on the path's instruction
/// set ([`Lanes::quantize`]).
struct QuantizeX<'a> {
    x: &'a [f32],
    k: usize,
}

impl Job for QuantizeX<'_> {
    type Out = Vec<XPair>;

    #[inline(always)]
    unsafe fn run<L: Lanes>(self) -> Vec<XPair> {
        let k = self.k;
        if k == 0 {
            return Vec::new();
        }
        let pairs = k.div_ceil(2 * QX);
        let zero = XPair {
            q: [0; 2 * QX],
            d: [0.0; 2],
            ds: [0.0; 2],
        };
        let mut out = vec![zero; self.x.len() / k * pairs];
        for (r, xp) in out.chunks_exact_mut(pairs).enumerate() {
            let row = self.x.as_ptr().add(r * k);
            for (g, p) in xp.iter_mut().enumerate() {
                let q = p.q.as_mut_ptr();
                for h in 0..2 {
                    let at = (2 * g + h) * QX;
                    if at < k {
                        let (d, sum) = L::quantize(row.add(at), q.add(16 * h), q.add(QX + 16 * h));
                        p.d[h] = d;
                        p.ds[h] = d * sum as f32;
                    }
                }
            }
        }
        out
    }
}

/// The rows of a task for an integer format, on `path`. Up to [`GROUP_ROWS`] rows of x go
/// through the kernel at once (its row count a constant); more in two groups over each
/// [`GROUP_BYTES`] of weight rows, which the second group reads from L2. That halves the
/// kernel's instances (build time), and a group's accumulators fit AVX2's 16 registers.
fn rows_of<F: Format>(path: Path, t: Task) {
    let run = |t: Task| match t.m {
        1 => path.run(Rows::<F, 1>(t, PhantomData)),
        2 => path.run(Rows::<F, 2>(t, PhantomData)),
        3 => path.run(Rows::<F, 3>(t, PhantomData)),
        4 => path.run(Rows::<F, 4>(t, PhantomData)),
        _ => unreachable!("groups of at most {GROUP_ROWS} rows"),
    };
    if t.m <= GROUP_ROWS {
        return run(t);
    }
    let (n, pairs) = (t.w.rows, t.w.cols.div_ceil(2 * QX));
    let (m1, m2) = (t.m.div_ceil(2), t.m / 2);
    let block = (GROUP_BYTES / t.w.row_bytes().max(1)).max(1);
    for r0 in (t.r0..t.r1).step_by(block) {
        let r1 = (r0 + block).min(t.r1);
        run(Task { m: m1, r0, r1, ..t });
        run(Task {
            m: m2,
            r0,
            r1,
            xq: &t.xq[m1 * pairs..],
            // SAFETY: row m1 of y (m × n) is in bounds.
            y: OutPtr(unsafe { t.y.0.add(m1 * n) }),
            prefetch: Prefetch::None,
            ..t
        });
    }
}

struct Rows<'a, F, const M: usize>(Task<'a>, PhantomData<F>);

impl<F: Format, const M: usize> Job for Rows<'_, F, M> {
    type Out = ();

    #[inline(always)]
    unsafe fn run<L: Lanes>(self) {
        const STREAM: u8 = Prefetch::Stream as u8;
        const KEEP: u8 = Prefetch::Keep as u8;
        const NONE: u8 = Prefetch::None as u8;
        match self.0.prefetch {
            // (The portable path has no prefetches: one instance will do.)
            _ if !L::PREFETCHES => rows_body::<L, F, M, NONE>(self.0),
            Prefetch::Stream => rows_body::<L, F, M, STREAM>(self.0),
            Prefetch::Keep => rows_body::<L, F, M, KEEP>(self.0),
            Prefetch::None => rows_body::<L, F, M, NONE>(self.0),
        }
    }
}

/// Rows r0..r1 of the output for the M rows of x, one weight row at a time (a row's blocks are
/// contiguous, so the reads are one sequential stream per task), a pair of 32-blocks at a
/// time.
#[inline(always)]
unsafe fn rows_body<L: Lanes, F: Format, const M: usize, const PF: u8>(t: Task) {
    let k = t.w.cols;
    let bb = F::TYPE.block_bytes();
    let blocks = k / F::TYPE.block_size();
    let row_bytes = blocks * bb;
    let pairs = k.div_ceil(2 * QX);
    let xs: [*const XPair; M] = std::array::from_fn(|i| t.xq.as_ptr().add(i * pairs));
    for r in t.r0..t.r1 {
        let row = t.w.data.as_ptr().add(r * row_bytes);
        let mut acc = Acc::<L, M>::new();
        if F::TYPE.block_size() == QX {
            for g in 0..blocks / 2 {
                let a = row.add(2 * g * bb);
                prefetch::<L::S, PF>(a, 2 * bb);
                acc.add::<F>(F::pair::<L, 0>(a, a.add(bb), &F::head::<L>(a)), &xs, g);
            }
            if blocks % 2 == 1 {
                // The odd last block pairs with itself, against zeros in x.
                let a = row.add((blocks - 1) * bb);
                acc.add::<F>(F::pair::<L, 0>(a, a, &F::head::<L>(a)), &xs, pairs - 1);
            }
        } else {
            // k-quants: four pairs of 32-blocks per 256-value block.
            debug_assert_eq!(F::TYPE.block_size(), 8 * QX);
            for blk in 0..blocks {
                let p = row.add(blk * bb);
                prefetch::<L::S, PF>(p, bb);
                let (h, g) = (F::head::<L>(p), 4 * blk);
                acc.add::<F>(F::pair::<L, 0>(p, p, &h), &xs, g);
                acc.add::<F>(F::pair::<L, 2>(p, p, &h), &xs, g + 1);
                acc.add::<F>(F::pair::<L, 4>(p, p, &h), &xs, g + 2);
                acc.add::<F>(F::pair::<L, 6>(p, p, &h), &xs, g + 3);
            }
        }
        for i in 0..M {
            t.store(i, r, acc.total::<F>(i));
        }
    }
}

/// Prefetches the `bytes` at p + [`PREFETCH_BYTES`], a cache line at a time, as `PF` (a
/// [`Prefetch`]) says.
#[inline(always)]
unsafe fn prefetch<S: Simd, const PF: u8>(p: *const u8, bytes: usize) {
    // wrapping: near the end the hint points past the matrix (a prefetch never faults).
    let ahead = p.wrapping_add(PREFETCH_BYTES);
    for off in (0..bytes).step_by(64) {
        if PF == Prefetch::Stream as u8 {
            S::prefetch_stream(ahead.wrapping_add(off))
        } else if PF == Prefetch::Keep as u8 {
            S::prefetch_keep(ahead.wrapping_add(off))
        }
    }
}

/// The accumulators of one weight row against M rows of x: the scaled integer dot products
/// (a vector each) and the offset or minimum terms (a pair of lanes each).
struct Acc<L: Lanes, const M: usize> {
    v: [<L::S as Simd>::V; M],
    corr: [L::P; M],
}

impl<L: Lanes, const M: usize> Acc<L, M> {
    #[inline(always)]
    unsafe fn new() -> Self {
        Self {
            v: [L::S::zero(); M],
            corr: [L::pzero(); M],
        }
    }

    /// Adds a decoded pair of weight blocks times pair `g` of each row of x.
    #[inline(always)]
    unsafe fn add<F: Format>(&mut self, w: Pair<L>, xs: &[*const XPair; M], g: usize) {
        for (i, x) in xs.iter().enumerate() {
            let x = &*x.add(g);
            let dot = match F::DOT {
                Dot::Unsigned => L::dot(w.q, &x.q),
                Dot::Signed => L::dot_signed(w.q, &x.q),
                Dot::SignedHalves => L::dot_halves(w.q, &x.q, w.halves),
            };
            self.v[i] = L::fma(self.v[i], dot, L::pmul(w.scale, L::pload(&x.d)));
            if F::CORR != Corr::None {
                self.corr[i] = L::pfma(w.corr, L::pload(&x.ds), self.corr[i]);
            }
        }
    }

    #[inline(always)]
    unsafe fn total<F: Format>(&self, i: usize) -> f32 {
        let corr = match F::CORR {
            Corr::None => 0.0,
            Corr::Offset(o) => -(o as f32) * L::psum(self.corr[i]),
            Corr::Min => L::psum(self.corr[i]),
        };
        L::S::sum(self.v[i]) + corr
    }
}

/// How a format's decoded codes meet x in the integer dot product.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dot {
    /// Codes in [0, 63].
    Unsigned,
    /// Signed codes.
    Signed,
    /// Signed codes, each 16 with its own integer scale ([`Pair::halves`]).
    SignedHalves,
}

/// The term a format adds to scale · Σ code · x per block ([`Pair::corr`] times d_x · Σq_x).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Corr {
    None,
    /// Codes carry an offset: w = scale · (code − offset); `corr` is the scale.
    Offset(i32),
    /// w = scale · code + min; `corr` is the min.
    Min,
}

/// Two blocks of 32 weights, decoded: the codes in [`XPair`]'s order (two registers: the
/// first and the last 16 of A and of B) and, per block, what turns them into weights.
struct Pair<L: Lanes> {
    q: [L::B; 2],
    scale: L::P,
    corr: L::P,
    /// Integer scales of each register's A and B halves ([`Dot::SignedHalves`]).
    halves: [[i16; 2]; 2],
}

impl<L: Lanes> Pair<L> {
    #[inline(always)]
    unsafe fn new(q: [L::B; 2], scale: L::P) -> Self {
        Self {
            q,
            scale,
            corr: scale,
            halves: [[1; 2]; 2],
        }
    }
}

/// A ggml block format with an integer path: how its blocks decode into pairs of 32-weight
/// blocks.
trait Format {
    /// Its type: 32-value blocks, or 256-value k-quant blocks of four pairs.
    const TYPE: GgmlType;
    const DOT: Dot;
    const CORR: Corr;
    /// What a k-quant block's pairs share (decoded scales).
    type Head;
    /// # Safety
    /// `p` points at a whole block.
    unsafe fn head<L: Lanes>(p: *const u8) -> Self::Head;
    /// 32-value blocks: blocks `a` and `b`. k-quants: 32-blocks S and S + 1 of block `a`
    /// (`b` = `a`).
    ///
    /// # Safety
    /// `a` and `b` point at whole blocks.
    unsafe fn pair<L: Lanes, const S: usize>(
        a: *const u8,
        b: *const u8,
        head: &Self::Head,
    ) -> Pair<L>;
}

/// The little-endian u32 at p.
#[inline(always)]
unsafe fn u32_at(p: *const u8) -> u32 {
    u32::from_le((p as *const u32).read_unaligned())
}

/// The formats' block layouts (`ggml-common.h`; see [`GgmlType`]).
mod fmt {
    use super::*;

    pub(super) struct Q4_0;
    pub(super) struct Q4_1;
    pub(super) struct Q5_0;
    pub(super) struct Q5_1;
    pub(super) struct Q8_0;
    pub(super) struct Q4K;
    pub(super) struct Q5K;
    pub(super) struct Q6K;

    /// d (f16), 16 bytes of nibbles; w = d · (q − 8).
    impl Format for Q4_0 {
        const TYPE: GgmlType = GgmlType::Q4_0;
        const DOT: Dot = Dot::Unsigned;
        const CORR: Corr = Corr::Offset(8);
        type Head = ();
        #[inline(always)]
        unsafe fn head<L: Lanes>(_: *const u8) {}
        #[inline(always)]
        unsafe fn pair<L: Lanes, const S: usize>(a: *const u8, b: *const u8, _: &()) -> Pair<L> {
            let q = L::two(a.add(2), b.add(2));
            Pair::new([L::low4(q), L::high4(q)], L::pf16(a, b))
        }
    }

    /// d, m (f16), nibbles; w = d · q + m.
    impl Format for Q4_1 {
        const TYPE: GgmlType = GgmlType::Q4_1;
        const DOT: Dot = Dot::Unsigned;
        const CORR: Corr = Corr::Min;
        type Head = ();
        #[inline(always)]
        unsafe fn head<L: Lanes>(_: *const u8) {}
        #[inline(always)]
        unsafe fn pair<L: Lanes, const S: usize>(a: *const u8, b: *const u8, _: &()) -> Pair<L> {
            let q = L::two(a.add(4), b.add(4));
            let [d, m] = L::pf16x2(a, b);
            Pair {
                corr: m,
                ..Pair::new([L::low4(q), L::high4(q)], d)
            }
        }
    }

    /// d (f16), the 5th bits (u32: bit j for value j), nibbles; w = d · (q − 16).
    impl Format for Q5_0 {
        const TYPE: GgmlType = GgmlType::Q5_0;
        const DOT: Dot = Dot::Unsigned;
        const CORR: Corr = Corr::Offset(16);
        type Head = ();
        #[inline(always)]
        unsafe fn head<L: Lanes>(_: *const u8) {}
        #[inline(always)]
        unsafe fn pair<L: Lanes, const S: usize>(a: *const u8, b: *const u8, _: &()) -> Pair<L> {
            let q = L::two(a.add(6), b.add(6));
            let h = L::bits(u32_at(a.add(2)), u32_at(b.add(2)));
            let q = [L::or(L::low4(q), h[0]), L::or(L::high4(q), h[1])];
            Pair::new(q, L::pf16(a, b))
        }
    }

    /// d, m (f16), the 5th bits, nibbles; w = d · q + m.
    impl Format for Q5_1 {
        const TYPE: GgmlType = GgmlType::Q5_1;
        const DOT: Dot = Dot::Unsigned;
        const CORR: Corr = Corr::Min;
        type Head = ();
        #[inline(always)]
        unsafe fn head<L: Lanes>(_: *const u8) {}
        #[inline(always)]
        unsafe fn pair<L: Lanes, const S: usize>(a: *const u8, b: *const u8, _: &()) -> Pair<L> {
            let q = L::two(a.add(8), b.add(8));
            let h = L::bits(u32_at(a.add(4)), u32_at(b.add(4)));
            let q = [L::or(L::low4(q), h[0]), L::or(L::high4(q), h[1])];
            let [d, m] = L::pf16x2(a, b);
            Pair {
                corr: m,
                ..Pair::new(q, d)
            }
        }
    }

    /// d (f16), 32 signed bytes; w = d · q.
    impl Format for Q8_0 {
        const TYPE: GgmlType = GgmlType::Q8_0;
        const DOT: Dot = Dot::Signed;
        const CORR: Corr = Corr::None;
        type Head = ();
        #[inline(always)]
        unsafe fn head<L: Lanes>(_: *const u8) {}
        #[inline(always)]
        unsafe fn pair<L: Lanes, const S: usize>(a: *const u8, b: *const u8, _: &()) -> Pair<L> {
            let q = [L::two(a.add(2), b.add(2)), L::two(a.add(18), b.add(18))];
            Pair::new(q, L::pf16(a, b))
        }
    }

    /// The per-32-block scales and minimums of a Q4_K / Q5_K block: d · sc and −dmin · m.
    pub(super) struct KHead {
        scale: [f32; 8],
        min: [f32; 8],
    }

    /// Decodes d, dmin (f16) and the 12 bytes of 6-bit scales and minimums at p
    /// (`get_scale_min_k4`: the first four in the low 6 bits of bytes 0–3 / 4–7, the last four
    /// in nibbles of bytes 8–11 with their top 2 bits in the top bits of bytes 0–7), four at a
    /// time in u32 words.
    #[inline(always)]
    unsafe fn k_head<L: Lanes>(p: *const u8) -> KHead {
        let (d, dmin) = (L::f16(p), L::f16(p.add(2)));
        let [w0, w1, w2] = [0, 4, 8].map(|at| u32_at(p.add(4 + at)));
        const LOW6: u32 = 0x3f3f3f3f;
        const LOW4: u32 = 0x0f0f0f0f;
        const TOP2: u32 = 0x03030303;
        let scales = [w0 & LOW6, (w2 & LOW4) | ((w0 >> 6) & TOP2) << 4];
        let mins = [w1 & LOW6, ((w2 >> 4) & LOW4) | ((w1 >> 6) & TOP2) << 4];
        KHead {
            scale: widen8::<L::S>(scales, d),
            min: widen8::<L::S>(mins, -dmin),
        }
    }

    /// The 8 bytes of two little-endian words (each < 128), times f.
    #[inline(always)]
    unsafe fn widen8<S: Simd>(words: [u32; 2], f: f32) -> [f32; 8] {
        let bytes: [i8; 8] = std::mem::transmute([words[0].to_le(), words[1].to_le()]);
        let mut out = [0f32; 8];
        for c in (0..8).step_by(S::LANES) {
            let v = S::mul(S::load_w(bytes.as_ptr().add(c)), S::splat(f));
            S::store(out.as_mut_ptr().add(c), v);
        }
        out
    }

    /// Entries s and s + 1 of a head's scales or minimums.
    #[inline(always)]
    fn two_at(v: &[f32; 8], s: usize) -> &[f32; 2] {
        v[s..s + 2].try_into().expect("s < 7")
    }

    /// Lanes A and B: the low and the high nibbles of the 16 bytes at p.
    #[inline(always)]
    unsafe fn nibble_pair<L: Lanes>(p: *const u8) -> L::B {
        L::fields(L::one(p), [0, 4], 0xF, 0)
    }

    /// d, dmin, 12 scale bytes, 128 bytes of nibbles: 32-blocks 2j and 2j + 1 are the low and
    /// high nibbles of bytes 32j..32j + 32; w = d · sc · q − dmin · m.
    impl Format for Q4K {
        const TYPE: GgmlType = GgmlType::Q4K;
        const DOT: Dot = Dot::Unsigned;
        const CORR: Corr = Corr::Min;
        type Head = KHead;
        #[inline(always)]
        unsafe fn head<L: Lanes>(p: *const u8) -> KHead {
            k_head::<L>(p)
        }
        #[inline(always)]
        unsafe fn pair<L: Lanes, const S: usize>(p: *const u8, _: *const u8, h: &KHead) -> Pair<L> {
            let q = p.add(16 + 16 * S);
            Pair {
                corr: L::pload(two_at(&h.min, S)),
                ..Pair::new(
                    [nibble_pair::<L>(q), nibble_pair::<L>(q.add(16))],
                    L::pload(two_at(&h.scale, S)),
                )
            }
        }
    }

    /// Q4_K's layout with 32 bytes of 5th bits after the scales (bit s of byte j: value j of
    /// 32-block s); nibbles from byte 48.
    impl Format for Q5K {
        const TYPE: GgmlType = GgmlType::Q5K;
        const DOT: Dot = Dot::Unsigned;
        const CORR: Corr = Corr::Min;
        type Head = KHead;
        #[inline(always)]
        unsafe fn head<L: Lanes>(p: *const u8) -> KHead {
            k_head::<L>(p)
        }
        #[inline(always)]
        unsafe fn pair<L: Lanes, const S: usize>(p: *const u8, _: *const u8, h: &KHead) -> Pair<L> {
            let (q, qh) = (p.add(48 + 16 * S), p.add(16));
            let shifts = [S as u32, S as u32 + 1];
            let code = [
                L::or(nibble_pair::<L>(q), L::fields(L::one(qh), shifts, 1, 4)),
                L::or(
                    nibble_pair::<L>(q.add(16)),
                    L::fields(L::one(qh.add(16)), shifts, 1, 4),
                ),
            ];
            Pair {
                corr: L::pload(two_at(&h.min, S)),
                ..Pair::new(code, L::pload(two_at(&h.scale, S)))
            }
        }
    }

    /// One register of Q6_K codes of pair S (see [`Q6K`]): low nibbles from ql and ql + 32,
    /// 2-bit high parts from qh, less the offset 32.
    #[inline(always)]
    unsafe fn q6_code<L: Lanes, const S: usize>(ql: *const u8, qh: *const u8) -> L::B {
        let g = S % 4;
        let q = L::two(ql, ql.add(32));
        let low = if g == 0 { L::low4(q) } else { L::high4(q) };
        let high = L::fields(L::one(qh), [2 * g as u32, 2 * g as u32 + 2], 3, 4);
        L::sub(L::or(low, high), 32)
    }

    /// Two halves of 128 values, each 64 bytes of low nibbles (at 0), 32 bytes of 2-bit high
    /// parts (at 128), 8 signed scales of 16 values (at 192); d (f16) at 208. 32-block g of a
    /// half: nibbles of bytes 32 · (g % 2).. (low for g < 2), bits 2g.. of its qh bytes,
    /// scales 2g and 2g + 1; w = d · sc · (q − 32).
    impl Format for Q6K {
        const TYPE: GgmlType = GgmlType::Q6K;
        const DOT: Dot = Dot::SignedHalves;
        const CORR: Corr = Corr::None;
        type Head = f32;
        #[inline(always)]
        unsafe fn head<L: Lanes>(p: *const u8) -> f32 {
            L::f16(p.add(208))
        }
        #[inline(always)]
        unsafe fn pair<L: Lanes, const S: usize>(p: *const u8, _: *const u8, d: &f32) -> Pair<L> {
            // 32-blocks g and g + 1 of half S / 4.
            let (half, g) = (S / 4, S % 4);
            let (ql, qh) = (p.add(64 * half), p.add(128 + 32 * half));
            let sc = (*(p.add(192 + 8 * half + 2 * g) as *const [i8; 4])).map(i16::from);
            Pair {
                halves: [[sc[0], sc[2]], [sc[1], sc[3]]],
                ..Pair::new(
                    [
                        q6_code::<L, S>(ql, qh),
                        q6_code::<L, S>(ql.add(16), qh.add(16)),
                    ],
                    L::psplat(*d),
                )
            }
        }
    }
}

/// Rows r0..r1 for the types without an integer path: each chunk of a weight row is
/// dequantized into a stack buffer and dotted with every row of x in f32.
fn rows_dequantized(t: Task) {
    let (k, ty) = (t.w.cols, t.w.ty);
    let (bs, bb) = (ty.block_size(), ty.block_bytes());
    let mut buf = [0f32; DEQUANT_CHUNK];
    for r in t.r0..t.r1 {
        let row = t.w.row(r);
        let mut sums = [0f32; MAX_ROWS];
        // Every block size divides the chunk, so chunks are whole blocks.
        for c0 in (0..k).step_by(DEQUANT_CHUNK) {
            let len = DEQUANT_CHUNK.min(k - c0);
            let wb = &mut buf[..len];
            dequantize_row(ty, &row[c0 / bs * bb..(c0 + len) / bs * bb], wb);
            for (i, s) in sums[..t.m].iter_mut().enumerate() {
                *s += simd::dot(wb, &t.x[i * k + c0..i * k + c0 + len]);
            }
        }
        for (i, &s) in sums[..t.m].iter().enumerate() {
            // SAFETY: i < m, r < n, and the task owns row r of the output.
            unsafe { t.store(i, r, s) };
        }
    }
}

/// The integer operations of one instruction set on a pair of 32-blocks (see [`XPair`]):
/// `B` holds 32 codes, 16 of block A then 16 of block B; `I` a dot product's partial sums,
/// A's in the first half of the lanes and B's in the second; `P` one f32 per block. The f32
/// vector operations of [`Simd`] serve the accumulators. Every function is `unsafe`: callers
/// run inside the [`Path`]'s `#[target_feature]` entry, with pointers valid for what they
/// read.
pub(super) trait Lanes {
    type S: Simd;
    /// Whether [`Simd::prefetch_stream`] / [`Simd::prefetch_keep`] of `S` do anything.
    const PREFETCHES: bool = true;
    type B: Copy;
    type I: Copy;
    type P: Copy;
    /// The 16 bytes at a, then the 16 at b.
    unsafe fn two(a: *const u8, b: *const u8) -> Self::B;
    /// The 16 bytes at p, twice.
    unsafe fn one(p: *const u8) -> Self::B {
        Self::two(p, p)
    }
    /// Each byte's low nibble.
    unsafe fn low4(b: Self::B) -> Self::B;
    /// Each byte's high nibble.
    unsafe fn high4(b: Self::B) -> Self::B;
    /// Each byte of half h: ((byte >> shift[h]) & mask) << up (mask << up and mask << shift
    /// within a byte).
    unsafe fn fields(b: Self::B, shift: [u32; 2], mask: u8, up: u32) -> Self::B;
    /// The 5th bits of blocks A and B (bit j of a / b for value j) as 16 or 0 per byte, in
    /// the order of the two registers of a pair.
    unsafe fn bits(a: u32, b: u32) -> [Self::B; 2];
    unsafe fn or(a: Self::B, b: Self::B) -> Self::B;
    /// Each byte minus c.
    unsafe fn sub(a: Self::B, c: i8) -> Self::B;
    /// Σ w_j · x_j over the pair, codes w_j in [0, 63].
    unsafe fn dot(w: [Self::B; 2], x: &[i8; 2 * QX]) -> Self::I;
    /// Σ w_j · x_j over the pair, signed codes.
    unsafe fn dot_signed(w: [Self::B; 2], x: &[i8; 2 * QX]) -> Self::I;
    /// Σ s[r][h] · w_j · x_j, for signed codes w_j of register r, half h.
    unsafe fn dot_halves(w: [Self::B; 2], x: &[i8; 2 * QX], s: [[i16; 2]; 2]) -> Self::I;
    /// acc + i · s, i's A lanes scaled by s's A and its B lanes by s's B.
    unsafe fn fma(acc: <Self::S as Simd>::V, i: Self::I, s: Self::P) -> <Self::S as Simd>::V;
    /// Quantizes the 32 values at v to d · q with d = max|v| / 127, q = round(v / d) (ties to
    /// even): the first 16 codes to `lo`, the last 16 to `hi`. Returns d and Σq; d is NaN if
    /// a value is not finite, so that the block poisons its outputs as it would in f32.
    unsafe fn quantize(v: *const f32, lo: *mut i8, hi: *mut i8) -> (f32, i32);
    /// The little-endian f16 at p as f32.
    unsafe fn f16(p: *const u8) -> f32;
    /// The f16s at a and b (both at least 4 bytes before the end of their block).
    unsafe fn pf16(a: *const u8, b: *const u8) -> Self::P;
    /// The f16s at a and b, and at a + 2 and b + 2 (a block's d and m).
    unsafe fn pf16x2(a: *const u8, b: *const u8) -> [Self::P; 2];
    unsafe fn pload(v: &[f32; 2]) -> Self::P;
    unsafe fn psplat(v: f32) -> Self::P;
    unsafe fn pzero() -> Self::P;
    unsafe fn pmul(a: Self::P, b: Self::P) -> Self::P;
    /// a · b + c
    unsafe fn pfma(a: Self::P, b: Self::P, c: Self::P) -> Self::P;
    /// A + B.
    unsafe fn psum(p: Self::P) -> f32;
}

/// Work generic over the integer instruction set, run by [`Path::run`] inside a function
/// compiled for it (everything it calls must be `#[inline(always)]`).
pub(super) trait Job {
    type Out;
    /// # Safety
    /// The instruction set of `L` is available (the caller's `#[target_feature]`).
    unsafe fn run<L: Lanes>(self) -> Self::Out;
}

/// An integer code path: an [`Isa`] refined by the integer extensions it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Path {
    Portable,
    /// AVX2 `vpmaddubsw` + `vpmaddwd`.
    Avx2,
    /// AVX-512 VNNI `vpdpbusd` on 256-bit vectors (with AVX-512VL / BW).
    Vnni,
    /// NEON `smull` + `sadalp`.
    Neon,
    /// NEON `sdot` (ARMv8.2 dot product).
    NeonDot,
}

impl Path {
    /// Every path, portable first.
    #[cfg(test)]
    const ALL: [Path; 5] = [
        Path::Portable,
        Path::Avx2,
        Path::Vnni,
        Path::Neon,
        Path::NeonDot,
    ];

    fn is_available(self) -> bool {
        match self {
            Path::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => Isa::Avx2.is_available(),
            #[cfg(target_arch = "x86_64")]
            Path::Vnni => {
                Isa::Avx2.is_available()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Path::Neon => true,
            #[cfg(target_arch = "aarch64")]
            Path::NeonDot => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The path for an instruction set (available where `isa` is).
    fn of(isa: Isa) -> Path {
        let best = |fast: Path, base: Path| if fast.is_available() { fast } else { base };
        match isa {
            Isa::Scalar => Path::Portable,
            Isa::Avx2 => Path::Avx2,
            Isa::Avx512 => best(Path::Vnni, Path::Avx2),
            Isa::Neon => best(Path::NeonDot, Path::Neon),
        }
    }

    /// Runs `job` on this path (panics if this CPU lacks it).
    pub(super) fn run<J: Job>(self, job: J) -> J::Out {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn avx2<J: Job>(job: J) -> J::Out {
            // SAFETY: forwarded from the caller.
            unsafe { job.run::<X86<false>>() }
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn vnni<J: Job>(job: J) -> J::Out {
            // SAFETY: forwarded from the caller.
            unsafe { job.run::<X86<true>>() }
        }
        #[cfg(target_arch = "aarch64")]
        #[target_feature(enable = "neon")]
        unsafe fn neon<J: Job>(job: J) -> J::Out {
            // SAFETY: forwarded from the caller.
            unsafe { job.run::<Arm<false>>() }
        }
        #[cfg(target_arch = "aarch64")]
        #[target_feature(enable = "neon,dotprod")]
        unsafe fn neon_dot<J: Job>(job: J) -> J::Out {
            // SAFETY: forwarded from the caller.
            unsafe { job.run::<Arm<true>>() }
        }
        assert!(self.is_available(), "{self:?} is not available on this CPU");
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the instruction set is available (checked above).
            Path::Avx2 => unsafe { avx2(job) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Path::Vnni => unsafe { vnni(job) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above.
            Path::Neon => unsafe { neon(job) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above.
            Path::NeonDot => unsafe { neon_dot(job) },
            // SAFETY: the portable body needs no instruction set.
            _ => unsafe { job.run::<Portable>() },
        }
    }
}

/// Portable: byte and lane arrays the compiler may vectorise.
struct Portable;

impl Lanes for Portable {
    type S = simd::Scalar;
    const PREFETCHES: bool = false;
    type B = [u8; QX];
    type I = [i32; 8];
    type P = [f32; 2];

    #[inline(always)]
    unsafe fn two(a: *const u8, b: *const u8) -> Self::B {
        std::array::from_fn(|j| if j < 16 { *a.add(j) } else { *b.add(j - 16) })
    }
    #[inline(always)]
    unsafe fn low4(b: Self::B) -> Self::B {
        b.map(|v| v & 15)
    }
    #[inline(always)]
    unsafe fn high4(b: Self::B) -> Self::B {
        b.map(|v| v >> 4)
    }
    #[inline(always)]
    unsafe fn fields(b: Self::B, shift: [u32; 2], mask: u8, up: u32) -> Self::B {
        std::array::from_fn(|j| ((b[j] >> shift[j / 16]) & mask) << up)
    }
    #[inline(always)]
    unsafe fn bits(a: u32, b: u32) -> [Self::B; 2] {
        let bit = |w: u32, j: usize| ((w >> j) as u8 & 1) << 4;
        [
            std::array::from_fn(|j| if j < 16 { bit(a, j) } else { bit(b, j - 16) }),
            std::array::from_fn(|j| if j < 16 { bit(a, j + 16) } else { bit(b, j) }),
        ]
    }
    #[inline(always)]
    unsafe fn or(a: Self::B, b: Self::B) -> Self::B {
        std::array::from_fn(|j| a[j] | b[j])
    }
    #[inline(always)]
    unsafe fn sub(a: Self::B, c: i8) -> Self::B {
        a.map(|v| v.wrapping_sub(c as u8))
    }
    #[inline(always)]
    unsafe fn dot(w: [Self::B; 2], x: &[i8; 2 * QX]) -> Self::I {
        // Lane l: bytes 4l..4l + 4 of both registers (lanes 0–3 block A, 4–7 block B).
        std::array::from_fn(|l| {
            (4 * l..4 * l + 4)
                .map(|j| w[0][j] as i32 * x[j] as i32 + w[1][j] as i32 * x[QX + j] as i32)
                .sum()
        })
    }
    #[inline(always)]
    unsafe fn dot_signed(w: [Self::B; 2], x: &[i8; 2 * QX]) -> Self::I {
        Self::dot_halves(w, x, [[1; 2]; 2])
    }
    #[inline(always)]
    unsafe fn dot_halves(w: [Self::B; 2], x: &[i8; 2 * QX], s: [[i16; 2]; 2]) -> Self::I {
        std::array::from_fn(|l| {
            let part = |r: usize| -> i32 {
                (4 * l..4 * l + 4)
                    .map(|j| w[r][j] as i8 as i32 * x[QX * r + j] as i32)
                    .sum()
            };
            part(0) * s[0][l / 4] as i32 + part(1) * s[1][l / 4] as i32
        })
    }
    #[inline(always)]
    unsafe fn fma(acc: [f32; 8], i: Self::I, s: [f32; 2]) -> [f32; 8] {
        std::array::from_fn(|l| i[l] as f32 * s[l / 4] + acc[l])
    }
    #[inline(always)]
    unsafe fn quantize(v: *const f32, lo: *mut i8, hi: *mut i8) -> (f32, i32) {
        let v = &*(v as *const [f32; QX]);
        let amax = v.iter().fold(0f32, |a, x| a.max(x.abs()));
        let finite = v.iter().fold(true, |a, x| a & x.is_finite());
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0;
        for (j, &x) in v.iter().enumerate() {
            // Round to nearest even via the 1.5 · 2²³ trick (vectorises without SSE4.1).
            let t = (x * inv).clamp(-127.0, 127.0);
            let t = if t.is_nan() { 0.0 } else { t };
            // SAFETY: t rounds to a whole number in [-127, 127]; `as`'s saturating conversion
            // compiles lane by lane.
            let q = ((t + 12582912.0) - 12582912.0).to_int_unchecked::<i32>() as i8;
            *if j < 16 { lo.add(j) } else { hi.add(j - 16) } = q;
            sum += q as i32;
        }
        (if finite { amax / 127.0 } else { f32::NAN }, sum)
    }
    #[inline(always)]
    unsafe fn f16(p: *const u8) -> f32 {
        half::f16::from_bits(u16::from_le_bytes([*p, *p.add(1)])).to_f32()
    }
    #[inline(always)]
    unsafe fn pf16(a: *const u8, b: *const u8) -> [f32; 2] {
        [Self::f16(a), Self::f16(b)]
    }
    #[inline(always)]
    unsafe fn pf16x2(a: *const u8, b: *const u8) -> [[f32; 2]; 2] {
        [Self::pf16(a, b), Self::pf16(a.add(2), b.add(2))]
    }
    #[inline(always)]
    unsafe fn pload(v: &[f32; 2]) -> [f32; 2] {
        *v
    }
    #[inline(always)]
    unsafe fn psplat(v: f32) -> [f32; 2] {
        [v; 2]
    }
    #[inline(always)]
    unsafe fn pzero() -> [f32; 2] {
        [0.0; 2]
    }
    #[inline(always)]
    unsafe fn pmul(a: [f32; 2], b: [f32; 2]) -> [f32; 2] {
        [a[0] * b[0], a[1] * b[1]]
    }
    #[inline(always)]
    unsafe fn pfma(a: [f32; 2], b: [f32; 2], c: [f32; 2]) -> [f32; 2] {
        [a[0] * b[0] + c[0], a[1] * b[1] + c[1]]
    }
    #[inline(always)]
    unsafe fn psum(p: [f32; 2]) -> f32 {
        p[0] + p[1]
    }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// x86-64 AVX2 (+ FMA, F16C), with `vpdpbusd` for the unsigned × signed byte products when
/// `VNNI` (an entry compiled for AVX-512 VNNI / VL). One 128-bit lane per block of a pair.
#[cfg(target_arch = "x86_64")]
struct X86<const VNNI: bool>;

#[cfg(target_arch = "x86_64")]
impl<const VNNI: bool> X86<VNNI> {
    #[inline(always)]
    unsafe fn abs(x: __m256) -> __m256 {
        _mm256_andnot_ps(_mm256_set1_ps(-0.0), x)
    }

    /// The two registers of x.
    #[inline(always)]
    unsafe fn x(x: &[i8; 2 * QX]) -> [__m256i; 2] {
        let p = x.as_ptr() as *const __m256i;
        [_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1))]
    }

    /// Σ u_j · x_j in eight partial sums (by 128-bit lane), u unsigned: `vpdpbusd`, or
    /// `vpmaddubsw` + `vpmaddwd` (the i16 pairs cannot saturate: u ≤ 128, |x| ≤ 127).
    #[inline(always)]
    unsafe fn products(u: __m256i, x: __m256i) -> __m256i {
        if VNNI {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x)
        } else {
            _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1))
        }
    }

    /// The sign trick: |w| · (x with w's sign), an unsigned × signed product in i16 pairs.
    #[inline(always)]
    unsafe fn signed_pairs(w: __m256i, x: __m256i) -> __m256i {
        _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
    }

    /// Σ w_j · x_j in eight partial sums (by 128-bit lane), w signed.
    #[inline(always)]
    unsafe fn signed_products(w: __m256i, x: __m256i) -> __m256i {
        Self::products(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
    }

    /// s₀ · Σ w_j · x_j over the low 128-bit lane plus s₁ · over the high one, w signed.
    #[inline(always)]
    unsafe fn scaled_products(w: __m256i, x: __m256i, s: [i16; 2]) -> __m256i {
        let scales = _mm256_set_m128i(_mm_set1_epi16(s[1]), _mm_set1_epi16(s[0]));
        _mm256_madd_epi16(Self::signed_pairs(w, x), scales)
    }

    /// 16 or 0 per byte: the byte of w that `select` picks, tested for bit j % 8 (byte j):
    /// all its other bits are set, so it is all ones exactly when that bit was.
    #[inline(always)]
    unsafe fn expand(w: __m256i, select: __m256i) -> __m256i {
        let spread = _mm256_shuffle_epi8(w, select);
        let set = _mm256_cmpeq_epi8(
            _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)),
            _mm256_set1_epi64x(-1),
        );
        _mm256_and_si256(set, _mm256_set1_epi8(16))
    }
}

#[cfg(target_arch = "x86_64")]
impl<const VNNI: bool> Lanes for X86<VNNI> {
    type S = simd::Avx2;
    type B = __m256i;
    type I = __m256i;
    type P = __m128;

    #[inline(always)]
    unsafe fn two(a: *const u8, b: *const u8) -> __m256i {
        _mm256_set_m128i(
            _mm_loadu_si128(b as *const __m128i),
            _mm_loadu_si128(a as *const __m128i),
        )
    }
    #[inline(always)]
    unsafe fn one(p: *const u8) -> __m256i {
        _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn low4(b: __m256i) -> __m256i {
        _mm256_and_si256(b, _mm256_set1_epi8(15))
    }
    #[inline(always)]
    unsafe fn high4(b: __m256i) -> __m256i {
        _mm256_and_si256(_mm256_srli_epi16::<4>(b), _mm256_set1_epi8(15))
    }
    #[inline(always)]
    unsafe fn fields(b: __m256i, shift: [u32; 2], mask: u8, up: u32) -> __m256i {
        // Bits shifted in from the next byte are masked off; masked values shifted up stay
        // within their byte.
        let counts = _mm256_set_m128i(
            _mm_set1_epi32(shift[1] as i32),
            _mm_set1_epi32(shift[0] as i32),
        );
        let f = _mm256_and_si256(_mm256_srlv_epi32(b, counts), _mm256_set1_epi8(mask as i8));
        _mm256_sll_epi16(f, _mm_cvtsi32_si128(up as i32))
    }
    #[inline(always)]
    unsafe fn bits(a: u32, b: u32) -> [__m256i; 2] {
        // ggml's bytes_from_bits_32, for two words at once.
        let w = _mm256_set1_epi64x((a as u64 | (b as u64) << 32) as i64);
        const fn bytes(i: i64) -> i64 {
            i * 0x0101010101010101
        }
        [
            Self::expand(w, _mm256_set_epi64x(bytes(5), bytes(4), bytes(1), bytes(0))),
            Self::expand(w, _mm256_set_epi64x(bytes(7), bytes(6), bytes(3), bytes(2))),
        ]
    }
    #[inline(always)]
    unsafe fn or(a: __m256i, b: __m256i) -> __m256i {
        _mm256_or_si256(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m256i, c: i8) -> __m256i {
        _mm256_sub_epi8(a, _mm256_set1_epi8(c))
    }
    #[inline(always)]
    unsafe fn dot(w: [__m256i; 2], x: &[i8; 2 * QX]) -> __m256i {
        let x = Self::x(x);
        if VNNI {
            _mm256_dpbusd_epi32(Self::products(w[0], x[0]), w[1], x[1])
        } else {
            // Codes ≤ 63: the sum of the two registers' i16 pairs stays below 2¹⁵.
            let pairs = _mm256_add_epi16(
                _mm256_maddubs_epi16(w[0], x[0]),
                _mm256_maddubs_epi16(w[1], x[1]),
            );
            _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
        }
    }
    #[inline(always)]
    unsafe fn dot_signed(w: [__m256i; 2], x: &[i8; 2 * QX]) -> __m256i {
        let x = Self::x(x);
        _mm256_add_epi32(
            Self::signed_products(w[0], x[0]),
            Self::signed_products(w[1], x[1]),
        )
    }
    #[inline(always)]
    unsafe fn dot_halves(w: [__m256i; 2], x: &[i8; 2 * QX], s: [[i16; 2]; 2]) -> __m256i {
        let x = Self::x(x);
        _mm256_add_epi32(
            Self::scaled_products(w[0], x[0], s[0]),
            Self::scaled_products(w[1], x[1], s[1]),
        )
    }
    #[inline(always)]
    unsafe fn fma(acc: __m256, i: __m256i, s: __m128) -> __m256 {
        let s = _mm256_permutevar8x32_ps(
            _mm256_castps128_ps256(s),
            _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1),
        );
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), s, acc)
    }
    #[inline(always)]
    unsafe fn quantize(v: *const f32, lo: *mut i8, hi: *mut i8) -> (f32, i32) {
        // As ggml's quantize_row_q8_0 does on AVX2, with the scale kept in f32.
        let (x0, x1) = (_mm256_loadu_ps(v), _mm256_loadu_ps(v.add(8)));
        let (x2, x3) = (_mm256_loadu_ps(v.add(16)), _mm256_loadu_ps(v.add(24)));
        let m = _mm256_max_ps(
            _mm256_max_ps(Self::abs(x0), Self::abs(x1)),
            _mm256_max_ps(Self::abs(x2), Self::abs(x3)),
        );
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        // x − x is 0 for finite x, NaN for ±∞ and NaN.
        let z = _mm256_add_ps(
            _mm256_add_ps(_mm256_sub_ps(x0, x0), _mm256_sub_ps(x1, x1)),
            _mm256_add_ps(_mm256_sub_ps(x2, x2), _mm256_sub_ps(x3, x3)),
        );
        let finite = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(z, z)) == 0;
        let inv = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
        // Nearest, ties to even: the default rounding mode.
        let i0 = _mm256_cvtps_epi32(_mm256_mul_ps(x0, inv));
        let i1 = _mm256_cvtps_epi32(_mm256_mul_ps(x1, inv));
        let i2 = _mm256_cvtps_epi32(_mm256_mul_ps(x2, inv));
        let i3 = _mm256_cvtps_epi32(_mm256_mul_ps(x3, inv));
        let s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0x4e>(s));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0xb1>(s)));
        // The packs interleave 128-bit lanes; a permutation restores the order.
        let q = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        let q = _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm_storeu_si128(lo as *mut __m128i, _mm256_castsi256_si128(q));
        _mm_storeu_si128(hi as *mut __m128i, _mm256_extracti128_si256::<1>(q));
        (if finite { amax / 127.0 } else { f32::NAN }, sum)
    }
    #[inline(always)]
    unsafe fn f16(p: *const u8) -> f32 {
        let h = (p as *const u16).read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
    }
    #[inline(always)]
    unsafe fn pf16(a: *const u8, b: *const u8) -> __m128 {
        // a's word and the next (don't-care lanes 2, 3: every block has more bytes), b's
        // word into lane 1.
        let v = _mm_cvtsi32_si128((a as *const i32).read_unaligned());
        let v = _mm_insert_epi16::<1>(v, (b as *const u16).read_unaligned() as i32);
        _mm_cvtph_ps(v)
    }
    #[inline(always)]
    unsafe fn pf16x2(a: *const u8, b: *const u8) -> [__m128; 2] {
        // [d_a, m_a, d_b, m_b] → [d_a, d_b, m_a, m_b]: lanes 0, 1 and 2, 3.
        let v = _mm_cvtsi32_si128((a as *const i32).read_unaligned());
        let v = _mm_insert_epi32::<1>(v, (b as *const i32).read_unaligned());
        let v = _mm_cvtph_ps(v);
        let v = _mm_permute_ps::<0b11_01_10_00>(v);
        [v, _mm_movehl_ps(v, v)]
    }
    #[inline(always)]
    unsafe fn pload(v: &[f32; 2]) -> __m128 {
        _mm_castsi128_ps(_mm_loadl_epi64(v.as_ptr() as *const __m128i))
    }
    #[inline(always)]
    unsafe fn psplat(v: f32) -> __m128 {
        _mm_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn pzero() -> __m128 {
        _mm_setzero_ps()
    }
    #[inline(always)]
    unsafe fn pmul(a: __m128, b: __m128) -> __m128 {
        _mm_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn pfma(a: __m128, b: __m128, c: __m128) -> __m128 {
        _mm_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn psum(p: __m128) -> f32 {
        _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)))
    }
}

#[cfg(target_arch = "aarch64")]
use std::arch::aarch64::*;

/// AArch64 NEON, one register per block of a pair; `sdot` for the byte products when
/// `DOTPROD` (an entry compiled for it).
#[cfg(target_arch = "aarch64")]
struct Arm<const DOTPROD: bool>;

#[cfg(target_arch = "aarch64")]
impl<const DOTPROD: bool> Arm<DOTPROD> {
    /// acc plus the four partial sums of 16 byte products.
    #[inline(always)]
    unsafe fn dot16(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
        if DOTPROD {
            // `vdotq_s32` is not stable on the crate's minimum Rust: one instruction of
            // assembly.
            let mut acc = acc;
            core::arch::asm!(
                "sdot {acc:v}.4s, {w:v}.16b, {x:v}.16b",
                acc = inout(vreg) acc,
                w = in(vreg) w,
                x = in(vreg) x,
                options(pure, nomem, nostack, preserves_flags)
            );
            acc
        } else {
            // Byte products fit i16 exactly; pairs of them are summed into i32.
            let lo = vmull_s8(vget_low_s8(w), vget_low_s8(x));
            vpadalq_s16(vpadalq_s16(acc, lo), vmull_high_s8(w, x))
        }
    }

    /// x's registers: [first 16 of A, of B], [last 16 of A, of B].
    #[inline(always)]
    unsafe fn x(x: &[i8; 2 * QX]) -> [[int8x16_t; 2]; 2] {
        let p = x.as_ptr();
        [
            [vld1q_s8(p), vld1q_s8(p.add(16))],
            [vld1q_s8(p.add(32)), vld1q_s8(p.add(48))],
        ]
    }

    /// ((byte >> shift) & mask) << up, per byte.
    #[inline(always)]
    unsafe fn field(h: int8x16_t, shift: u32, mask: u8, up: u32) -> int8x16_t {
        let down = vshlq_u8(vreinterpretq_u8_s8(h), vdupq_n_s8(-(shift as i8)));
        let field = vandq_u8(down, vdupq_n_u8(mask));
        vreinterpretq_s8_u8(vshlq_u8(field, vdupq_n_s8(up as i8)))
    }

    /// Block h's s[0][h] · Σ (first register) + s[1][h] · Σ (second), in four partial sums.
    #[inline(always)]
    unsafe fn scaled16(
        w: [[int8x16_t; 2]; 2],
        x: [[int8x16_t; 2]; 2],
        s: [[i16; 2]; 2],
        h: usize,
    ) -> int32x4_t {
        let zero = vdupq_n_s32(0);
        let first = vmulq_n_s32(Self::dot16(zero, w[0][h], x[0][h]), s[0][h] as i32);
        vmlaq_n_s32(first, Self::dot16(zero, w[1][h], x[1][h]), s[1][h] as i32)
    }

    /// The little-endian f16 bits at p.
    #[inline(always)]
    unsafe fn h16(p: *const u8) -> u64 {
        u16::from_le_bytes([*p, *p.add(1)]) as u64
    }

    /// Four f16 as f32.
    #[inline(always)]
    unsafe fn widen4(h: uint16x4_t) -> float32x4_t {
        // `fcvtl` (half → single) is base ARMv8 floating point; the f16 vector types of the
        // intrinsics are not stable, hence the one instruction of assembly.
        let out: float32x4_t;
        core::arch::asm!(
            "fcvtl {out:v}.4s, {h:v}.4h",
            out = lateout(vreg) out,
            h = in(vreg) h,
            options(pure, nomem, nostack, preserves_flags)
        );
        out
    }

    /// Four vectors of i16 as 16 bytes (saturating).
    #[inline(always)]
    unsafe fn narrow16(q: &[int16x4_t]) -> int8x16_t {
        vcombine_s8(
            vqmovn_s16(vcombine_s16(q[0], q[1])),
            vqmovn_s16(vcombine_s16(q[2], q[3])),
        )
    }

    /// 16 bits as 16 or 0 per byte.
    #[inline(always)]
    unsafe fn bits16(lo: u8, hi: u8) -> int8x16_t {
        const BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
        let set = vtstq_u8(
            vcombine_u8(vdup_n_u8(lo), vdup_n_u8(hi)),
            vld1q_u8(BIT.as_ptr()),
        );
        vreinterpretq_s8_u8(vandq_u8(set, vdupq_n_u8(16)))
    }
}

#[cfg(target_arch = "aarch64")]
impl<const DOTPROD: bool> Lanes for Arm<DOTPROD> {
    type S = simd::Neon;
    type B = [int8x16_t; 2];
    type I = int32x4_t;
    type P = float32x2_t;

    #[inline(always)]
    unsafe fn two(a: *const u8, b: *const u8) -> Self::B {
        [vld1q_s8(a as *const i8), vld1q_s8(b as *const i8)]
    }
    #[inline(always)]
    unsafe fn low4(b: Self::B) -> Self::B {
        b.map(|h| vandq_s8(h, vdupq_n_s8(15)))
    }
    #[inline(always)]
    unsafe fn high4(b: Self::B) -> Self::B {
        b.map(|h| vreinterpretq_s8_u8(vshrq_n_u8::<4>(vreinterpretq_u8_s8(h))))
    }
    #[inline(always)]
    unsafe fn fields(b: Self::B, shift: [u32; 2], mask: u8, up: u32) -> Self::B {
        [
            Self::field(b[0], shift[0], mask, up),
            Self::field(b[1], shift[1], mask, up),
        ]
    }
    #[inline(always)]
    unsafe fn bits(a: u32, b: u32) -> [Self::B; 2] {
        let (a, b) = (a.to_le_bytes(), b.to_le_bytes());
        [
            [Self::bits16(a[0], a[1]), Self::bits16(b[0], b[1])],
            [Self::bits16(a[2], a[3]), Self::bits16(b[2], b[3])],
        ]
    }
    #[inline(always)]
    unsafe fn or(a: Self::B, b: Self::B) -> Self::B {
        [vorrq_s8(a[0], b[0]), vorrq_s8(a[1], b[1])]
    }
    #[inline(always)]
    unsafe fn sub(a: Self::B, c: i8) -> Self::B {
        a.map(|h| vsubq_s8(h, vdupq_n_s8(c)))
    }
    #[inline(always)]
    unsafe fn dot(w: [Self::B; 2], x: &[i8; 2 * QX]) -> int32x4_t {
        Self::dot_signed(w, x)
    }
    #[inline(always)]
    unsafe fn dot_signed(w: [Self::B; 2], x: &[i8; 2 * QX]) -> int32x4_t {
        let x = Self::x(x);
        let zero = vdupq_n_s32(0);
        let a = Self::dot16(Self::dot16(zero, w[0][0], x[0][0]), w[1][0], x[1][0]);
        let b = Self::dot16(Self::dot16(zero, w[0][1], x[0][1]), w[1][1], x[1][1]);
        // [A, A, B, B]
        vpaddq_s32(a, b)
    }
    #[inline(always)]
    unsafe fn dot_halves(w: [Self::B; 2], x: &[i8; 2 * QX], s: [[i16; 2]; 2]) -> int32x4_t {
        let x = Self::x(x);
        let a = Self::scaled16(w, x, s, 0);
        let b = Self::scaled16(w, x, s, 1);
        vpaddq_s32(a, b)
    }
    #[inline(always)]
    unsafe fn fma(acc: float32x4_t, i: int32x4_t, s: float32x2_t) -> float32x4_t {
        let s = vcombine_f32(vdup_lane_f32::<0>(s), vdup_lane_f32::<1>(s));
        vfmaq_f32(acc, vcvtq_f32_s32(i), s)
    }
    #[inline(always)]
    unsafe fn quantize(v: *const f32, lo: *mut i8, hi: *mut i8) -> (f32, i32) {
        let mut x = [vdupq_n_f32(0.0); 8];
        for (i, x) in x.iter_mut().enumerate() {
            *x = vld1q_f32(v.add(4 * i));
        }
        // x − x is 0 for finite x, NaN for ±∞ and NaN.
        let (mut m, mut z) = (vabsq_f32(x[0]), vsubq_f32(x[0], x[0]));
        for &x in &x[1..] {
            m = vmaxq_f32(m, vabsq_f32(x));
            z = vaddq_f32(z, vsubq_f32(x, x));
        }
        let (amax, finite) = (vmaxvq_f32(m), vaddvq_f32(z) == 0.0);
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = vdupq_n_s32(0);
        let mut q = [vdup_n_s16(0); 8];
        for (q, &x) in q.iter_mut().zip(&x) {
            // Nearest, ties to even.
            let i = vcvtnq_s32_f32(vmulq_n_f32(x, inv));
            sum = vaddq_s32(sum, i);
            *q = vqmovn_s32(i);
        }
        vst1q_s8(lo, Self::narrow16(&q[..4]));
        vst1q_s8(hi, Self::narrow16(&q[4..]));
        let d = if finite { amax / 127.0 } else { f32::NAN };
        (d, vaddvq_s32(sum))
    }
    #[inline(always)]
    unsafe fn f16(p: *const u8) -> f32 {
        vget_lane_f32::<0>(Self::pf16(p, p))
    }
    #[inline(always)]
    unsafe fn pf16(a: *const u8, b: *const u8) -> float32x2_t {
        vget_low_f32(Self::widen4(vcreate_u16(Self::h16(a) | Self::h16(b) << 16)))
    }
    #[inline(always)]
    unsafe fn pf16x2(a: *const u8, b: *const u8) -> [float32x2_t; 2] {
        let (a2, b2) = (Self::h16(a.add(2)), Self::h16(b.add(2)));
        let h = vcreate_u16(Self::h16(a) | Self::h16(b) << 16 | a2 << 32 | b2 << 48);
        let out = Self::widen4(h);
        [vget_low_f32(out), vget_high_f32(out)]
    }
    #[inline(always)]
    unsafe fn pload(v: &[f32; 2]) -> float32x2_t {
        vld1_f32(v.as_ptr())
    }
    #[inline(always)]
    unsafe fn psplat(v: f32) -> float32x2_t {
        vdup_n_f32(v)
    }
    #[inline(always)]
    unsafe fn pzero() -> float32x2_t {
        vdup_n_f32(0.0)
    }
    #[inline(always)]
    unsafe fn pmul(a: float32x2_t, b: float32x2_t) -> float32x2_t {
        vmul_f32(a, b)
    }
    #[inline(always)]
    unsafe fn pfma(a: float32x2_t, b: float32x2_t, c: float32x2_t) -> float32x2_t {
        vfma_f32(c, a, b)
    }
    #[inline(always)]
    unsafe fn psum(p: float32x2_t) -> f32 {
        vpadds_f32(p)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernels::gemv::tests::{check, data, reference};
    use crate::kernels::widen_gemm::matmul_widened;
    use crate::quant::quantize_row;

    /// n × k weights quantized to `ty` by ggml's reference quantizer, and their exact values.
    /// Rows and blocks get different magnitudes, so that the scales differ.
    pub(crate) fn quantized(ty: GgmlType, n: usize, k: usize, seed: u32) -> (Vec<u8>, Vec<f32>) {
        let mut w = data(n * k, seed);
        for (i, v) in w.iter_mut().enumerate() {
            *v *= 0.05 + ((i / 32) % 7) as f32 * 0.3 + (i / k % 3) as f32;
        }
        let rb = ty.row_bytes(k).unwrap();
        let mut q = vec![0u8; n * rb];
        let mut wf = vec![0f32; n * k];
        if k > 0 {
            for ((src, dst), back) in w.chunks(k).zip(q.chunks_mut(rb)).zip(wf.chunks_mut(k)) {
                quantize_row(ty, src, dst);
                dequantize_row(ty, dst, back);
            }
        }
        (q, wf)
    }

    /// The error bound of the integer paths (and far above that of the dequantizing one): x is
    /// quantized per block of 32 with step d = max|x| / 127, each value rounded to the nearest
    /// step, so
    ///
    ///   |y − Σ x·w| ≤ Σ_blocks d / 2 · Σ_block |w|  +  f32 rounding (≤ 4·10⁻⁶ · Σ |x·w|)
    ///
    /// against the exact product of x and the dequantized weights. Returns the largest error
    /// relative to Σ |x·w| (for the report).
    pub(crate) fn check_bound(
        got: &[f32],
        want: &[f64],
        x: &[f32],
        wf: &[f32],
        m: usize,
        k: usize,
        what: &str,
    ) -> f64 {
        let n = wf.len() / k.max(1);
        let mut worst = 0f64;
        for i in 0..m {
            let xr = &x[i * k..(i + 1) * k];
            let steps: Vec<f64> = xr
                .chunks(QX)
                .map(|b| b.iter().fold(0f64, |a, v| a.max(v.abs() as f64)) / 127.0)
                .collect();
            for r in 0..n {
                let wr = &wf[r * k..(r + 1) * k];
                let (mut quant, mut mag) = (0f64, 0f64);
                for j in 0..k {
                    quant += steps[j / QX] / 2.0 * (wr[j] as f64).abs();
                    mag += (xr[j] as f64 * wr[j] as f64).abs();
                }
                let (g, w) = (got[i * n + r] as f64, want[i * n + r]);
                let err = (g - w).abs();
                assert!(
                    err <= quant * (1.0 + 1e-5) + 4e-6 * mag + 1e-6 * w.abs(),
                    "{what} [{i},{r}]: {g} vs {w} (bound {quant}, |x·w| sum {mag})"
                );
                worst = worst.max(err / mag.max(f64::MIN_POSITIVE));
            }
        }
        worst
    }

    fn paths() -> Vec<Path> {
        Path::ALL.into_iter().filter(|p| p.is_available()).collect()
    }

    /// Every type × every path of this CPU × row counts × shapes: one block, rows not a
    /// multiple of the task, a matrix large enough to run on several threads (streamed).
    #[test]
    fn matches_the_f64_reference_within_the_activation_bound() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for ty in GgmlType::ALL {
            let b = ty.block_size().max(QX);
            let mut worst = 0f64;
            for &(k, n) in &[(b, 3), (3 * b, 70), (2048, 1100)] {
                let (q, wf) = quantized(ty, n, k, 7);
                let mut w = QuantMatrix::new(&q, ty, n, k).unwrap();
                if n > 1000 {
                    assert!(runs_parallel(w.bytes()), "{ty} {n}x{k}");
                    w = w.with_residency(Residency::Streamed);
                }
                let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
                for &m in &[1usize, 2, 3, 5, 8] {
                    if n > 1000 && !matches!(m, 1 | 8) {
                        continue;
                    }
                    let x = data(m * k, m as u32 + 1);
                    let want = reference(&x, &wf, Some(&bias), m, k);
                    for path in paths() {
                        let mut y = vec![f32::NAN; m * n];
                        pool.install(|| gemv_path(path, &x, &w, Some(&bias), &mut y, m));
                        let what = format!("{ty} {path:?} m{m} k{k} n{n}");
                        worst = worst.max(check_bound(&y, &want, &x, &wf, m, k, &what));
                    }
                }
            }
            println!("{ty}: largest error / Σ|x·w| {worst:.2e}");
            if !has_integer_path(ty) {
                assert!(worst < 1e-5, "{ty}: {worst}");
            }
        }
    }

    /// The public entry on every instruction set of this CPU, without a bias.
    #[test]
    fn every_isa_runs_without_bias() {
        let (k, n, m) = (512, 40, 2);
        for ty in [GgmlType::Q4_0, GgmlType::Q6K] {
            let (q, wf) = quantized(ty, n, k, 3);
            let w = QuantMatrix::new(&q, ty, n, k).unwrap();
            let x = data(m * k, 5);
            let want = reference(&x, &wf, None, m, k);
            for isa in Isa::available() {
                let mut y = vec![0f32; m * n];
                quant_gemv_on(isa, &x, &w, None, &mut y, m);
                check_bound(&y, &want, &x, &wf, m, k, &format!("{ty} {isa:?}"));
            }
        }
    }

    #[test]
    fn non_finite_activations_poison_their_outputs() {
        let (k, n) = (64, 5);
        for ty in [GgmlType::Q4_0, GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q2K] {
            let k = k.max(ty.block_size());
            let (q, _) = quantized(ty, n, k, 1);
            let w = QuantMatrix::new(&q, ty, n, k).unwrap();
            for bad in [f32::NAN, f32::INFINITY] {
                let mut x = data(2 * k, 2);
                x[k + 3] = bad;
                for path in paths() {
                    let mut y = vec![0f32; 2 * n];
                    gemv_path(path, &x, &w, None, &mut y, 2);
                    assert!(y[..n].iter().all(|v| v.is_finite()), "{ty} {path:?}");
                    assert!(y[n..].iter().all(|v| !v.is_finite()), "{ty} {path:?}");
                }
            }
        }
    }

    #[test]
    fn sizes_are_validated_and_empty_products_work() {
        assert!(QuantMatrix::new(&[0; 18], GgmlType::Q4_0, 1, 32).is_ok());
        assert!(QuantMatrix::new(&[0; 18], GgmlType::Q4_0, 1, 48).is_err());
        assert!(QuantMatrix::new(&[0; 17], GgmlType::Q4_0, 1, 32).is_err());
        let w = QuantMatrix::new(&[], GgmlType::Q4K, 0, 256).unwrap();
        quant_gemv(&[0.0; 256], &w, None, &mut [], 1);
        let w = QuantMatrix::new(&[0; 18], GgmlType::Q4_0, 1, 32).unwrap();
        quant_gemv(&[], &w, None, &mut [], 0);
    }

    /// Many rows (the GEMM on widened blocks): the product of x and the dequantized weights to
    /// f32 accuracy.
    #[test]
    fn widened_products_match_the_f64_reference() {
        // k = 4096: 256 rows per 4 MB block, so n = 600 takes three blocks (the last partial).
        for &(ty, k, n, m) in &[
            (GgmlType::Q4_0, 4096usize, 600usize, 9usize),
            (GgmlType::Q5_1, 96, 70, 40),
            (GgmlType::Q4K, 512, 33, 17),
            (GgmlType::Q6K, 256, 5, 12),
            (GgmlType::Q2K, 256, 9, 9),
        ] {
            let (q, wf) = quantized(ty, n, k, 9);
            let w = QuantMatrix::new(&q, ty, n, k).unwrap();
            let bias: Vec<f32> = (0..n).map(|i| 0.5 - i as f32 * 0.01).collect();
            let x = data(m * k, 4);
            let mut y = vec![0f32; m * n];
            matmul_widened(&x, &w, Some(&bias), &mut y, m);
            let want = reference(&x, &wf, Some(&bias), m, k);
            check(&y, &want, &x, &wf, m, k, &format!("{ty} m{m}"));
        }
    }

    /// The candle ops: the GEMV and the GEMM by row count, with and without bias, and the
    /// dequantization to f32.
    #[test]
    fn candle_ops() -> candle_core::Result<()> {
        use crate::kernels::ops::{DequantizeToF32, QuantMatmul};
        use candle_core::{Device, Tensor};
        let dev = Device::Cpu;
        let (ty, k, n) = (GgmlType::Q5_0, 128, 24);
        let (q, wf) = quantized(ty, n, k, 6);
        let rb = ty.row_bytes(k).unwrap();
        let wt = Tensor::from_vec(q.clone(), (n, rb), &dev)?;
        let deq = wt.apply_op1_no_bwd(&DequantizeToF32 { ty })?;
        assert_eq!(deq.dims(), [n, k]);
        assert_eq!(deq.flatten_all()?.to_vec1::<f32>()?, wf);
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
        let bt = Tensor::from_vec(bias.clone(), n, &dev)?;
        for m in [1usize, 8, 9, 30] {
            let x = data(m * k, 8);
            let xt = Tensor::from_vec(x.clone(), (m, k), &dev)?;
            let op = QuantMatmul {
                ty,
                bias: true,
                residency: Some(Residency::Cached),
            };
            let y = xt.apply_op3_no_bwd(&wt, &bt, &op)?;
            assert_eq!(y.dims(), [m, n]);
            let y = y.flatten_all()?.to_vec1::<f32>()?;
            let want = reference(&x, &wf, Some(&bias), m, k);
            check_bound(&y, &want, &x, &wf, m, k, &format!("op m{m}"));
            let op = QuantMatmul {
                bias: false,
                residency: None,
                ..op
            };
            let y = xt
                .apply_op2_no_bwd(&wt, &op)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let want = reference(&x, &wf, None, m, k);
            check_bound(&y, &want, &x, &wf, m, k, &format!("op m{m} no bias"));
        }
        // Mismatched shapes are errors, not panics.
        let x = Tensor::zeros((1, 96), candle_core::DType::F32, &dev)?;
        let op = QuantMatmul {
            ty,
            bias: false,
            residency: None,
        };
        assert!(x.apply_op2_no_bwd(&wt, &op).is_err());
        assert!(wt
            .apply_op1_no_bwd(&DequantizeToF32 { ty: GgmlType::Q8_0 })
            .is_err());
        Ok(())
    }
}
