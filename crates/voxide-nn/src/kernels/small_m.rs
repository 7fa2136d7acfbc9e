//! Narrow-weight products for more rows of x than the GEMV takes (a streaming encoder chunk, a
//! decoder prefill, a whole encoder window): `y[m][n] = Σ_k x[m][k] · w[n][k]` (+ bias), w in
//! f16, bf16 or int8, without converting the whole matrix to f32 first.
//!
//! Tasks own tiles of 48 output rows (on one thread too); see [`matmul_small_on`] for the
//! register blocking.

use super::convert::convert_row;
use super::fma_peak;
use super::gemv::{check_operands, OutPtr, WeightMatrix};
use super::simd::{isa_entries, Isa, Simd, WeightElem};
#[cfg(target_arch = "x86_64")]
use super::{amx_bf16, small_m_bf16, small_m_int8};
use rayon::prelude::*;

/// Most rows of x the dispatch in [`crate::Linear`] sends here on NEON and the portable path;
/// beyond, the weight is widened to f32 for one candle GEMM. The cap only keeps untried sizes
/// on the GEMM.
pub const SMALL_M_MAX_ROWS: usize = 4096;

/// The cap on x86 (AVX2 and AVX-512): beyond it widen + GEMM (the `gemm` crate) is as fast or
/// faster on the shapes tried.
/// - AVX-512: against gemm's 256-bit kernels small-M was faster at every size tried, m = 9…1500
///   on Voxtral and Whisper shapes (PERFORMANCE.md #21–23, #56); against its 512-bit ones (#99)
///   widen + GEMM wins from here on: AMD Zen 5, 2 threads, Whisper f16 shapes, 1.05–1.45× at
///   m = 768, 1.16–1.52× at m = 1500, mixed at 512, small-M ahead below (PERFORMANCE.md #103).
/// - AVX2 (16 registers): AMD EPYC Zen 3, 2 threads, small-M ahead at m = 256–512 on every
///   Voxtral shape (bf16 and int8, 1.10–1.58×) and the Whisper shapes of 768 columns and more
///   (f16, 1.02–1.42×), level or behind only on Whisper tiny's 384 × 384 and 384 × 1536 (0.89–
///   0.96); at m = 1500 mixed, 0.71–1.66× (PERFORMANCE.md #151; the cap was 128 from #38, #56).
const X86_MAX_ROWS: usize = 512;

/// Most rows of x the small-M kernel takes on this CPU (see [`SMALL_M_MAX_ROWS`]).
pub fn small_m_max_rows() -> usize {
    match Isa::detect() {
        Isa::Avx2 | Isa::Avx512 => X86_MAX_ROWS,
        Isa::Neon | Isa::Scalar => SMALL_M_MAX_ROWS,
    }
}

/// Whether int8 weights take the integer small-M kernel on this CPU (x86 with AVX2,
/// [`small_m_int8`]): x in 8 bits; with VNNI ~2.9× the f32 path's rate (m = 39, 9216 × 3072,
/// Zen 4), on AVX2 alone 1.2–1.4× (Zen 3, PERFORMANCE.md #152); ahead of widen + GEMM at any
/// size.
pub fn integer_int8() -> bool {
    #[cfg(target_arch = "x86_64")]
    return small_m_int8::Kernel::for_isa(Isa::detect()).is_some();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this CPU multiplies bf16 weights in bf16 ([`matmul_rows_alike`] takes it): on AMX
/// tiles where it has them ([`amx_bf16_tiles`]), else on the bf16 dot-product kernel
/// ([`small_m_bf16`]) where it has AVX512-BF16 and the dot products multiply-add fast enough
/// against its f32 FMAs to pay for rounding and packing x ([`bf16_dots_pay`]).
pub fn native_bf16() -> bool {
    amx_bf16_tiles() || bf16_dots_pay()
}

/// Whether bf16 products of many rows run on AMX tiles ([`amx_bf16`]; Intel Xeon from Sapphire
/// Rapids), with the AVX-512 BF16 kernel for shapes the tiles do not fit.
pub fn amx_bf16_tiles() -> bool {
    #[cfg(target_arch = "x86_64")]
    return amx_bf16::runs() && small_m_bf16::runs();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Fewest rows of x an f16 product takes the tiles for ([`f16_tiles`]): at 64 rows they ran
/// 1.1–3.3× the small-M kernel on Whisper's shapes (Emerald Rapids, 2 threads; PERFORMANCE.md
/// #184); fewer rows were not measured, and the weights' parts are packed per call.
pub const F16_TILES_MIN_ROWS: usize = 64;

/// Whether f16 weights times m rows of x run on AMX tiles, each weight split exactly into two
/// bf16 parts and x into two (16 significand bits: whisper.cpp rounds x to f16's 11); see
/// [`amx_bf16`]. Only where the CPU has the tiles, k fits them and m ≥ [`F16_TILES_MIN_ROWS`].
pub fn f16_tiles(m: usize, k: usize) -> bool {
    m >= F16_TILES_MIN_ROWS && f16_tiles_fit(k)
}

/// Whether the tiles take f16 products of k columns at all: a chunk-invariant layer's at any
/// row count ([`matmul_rows_alike`]), so that a row's result does not depend on its block.
pub fn f16_tiles_fit(k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return amx_bf16_tiles() && amx_bf16::fits(k);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = k;
        false
    }
}

/// y (m × n) = x (m × k) · wᵀ (+ bias) on the tiles, for products where [`f16_tiles`] holds.
///
/// # Panics
/// Where it does not, or if the operands do not fit.
pub fn matmul_f16_tiles(
    x: &[f32],
    w: &WeightMatrix<half::f16>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    check_operands(x, w, bias, y, m);
    assert!(
        f16_tiles(m, w.cols),
        "f16 products of {m} rows do not run on tiles here"
    );
    #[cfg(target_arch = "x86_64")]
    amx_bf16::matmul(x, w, bias, y, m)
}

/// Whether bf16 dot products (`vdpbf16ps`) multiply-add fast enough against this CPU's f32 FMAs
/// to pay for rounding and packing x ([`fma_peak::bf16_dots`]): the bf16 form of the attention
/// of many rows takes them only then, AMX or not.
pub fn bf16_dots_pay() -> bool {
    fma_peak::bf16_dots().is_some_and(|d| d.pay())
}

/// [`matmul_small`] for products whose rows must come out alike in a block of any size (an
/// encoder's, [`Linear::set_chunk_invariant`](crate::Linear::set_chunk_invariant)), any m, and
/// for a bf16 decoder's prompts ([`Linear::set_bf16_prompts`](crate::Linear::set_bf16_prompts)):
/// bf16 weights on bf16 dot products where the CPU takes them ([`native_bf16`]: x rounded to
/// bf16), f16 weights on AMX tiles in parts where they fit ([`f16_tiles_fit`]), the rest as
/// [`matmul_small`] does.
pub fn matmul_rows_alike<E: WeightElem>(
    x: &[f32],
    w: &WeightMatrix<E>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(data) = E::as_bf16(w.data).filter(|_| native_bf16()) {
        check_operands(x, w, bias, y, m);
        let w = w.as_elements(data);
        if amx_bf16::runs() && amx_bf16::fits(w.cols) {
            return amx_bf16::matmul(x, &w, bias, y, m);
        }
        return small_m_bf16::matmul(x, &w, bias, y, m);
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(data) = E::as_f16(w.data).filter(|_| f16_tiles_fit(w.cols)) {
        check_operands(x, w, bias, y, m);
        return amx_bf16::matmul(x, &w.as_elements(data), bias, y, m);
    }
    matmul_small(x, w, bias, y, m)
}

/// Whether int8 products of many rows run on AMX tiles ([`super::amx_int8`]: the integer
/// kernel's bits, 1.1–3.5× its rate with AVX-512 VNNI on Emerald Rapids, PERFORMANCE.md #185).
pub fn amx_int8_tiles() -> bool {
    #[cfg(target_arch = "x86_64")]
    return small_m_int8::Kernel::for_isa(Isa::detect()) == Some(small_m_int8::Kernel::Amx);
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether that integer kernel is AVX-512 VNNI's, which overtakes the GEMV at fewer rows than
/// the 256-bit ones ([`super::ops::int8_gemv_max_rows`]).
pub fn integer_int8_on_512_bits() -> bool {
    #[cfg(target_arch = "x86_64")]
    return matches!(
        small_m_int8::Kernel::for_isa(Isa::detect()),
        Some(small_m_int8::Kernel::Amx | small_m_int8::Kernel::Avx512Vnni)
    );
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Output rows per parallel task (a multiple of [`W_ROWS`]).
const ROWS_PER_TASK: usize = 48;

/// Widest column block; wider matrices are cut into equal blocks, so that a strip of widened
/// weights (≤ 6 × 512 f32, 12 KB) stays in L1 and the block's x panels in L2.
pub(super) const MAX_BLOCK: usize = 512;

/// Rows of x packed at a time (≤ 256 × k f32).
pub(super) const PASS_ROWS: usize = 256;

/// Rows of x per chunk: a column block of the chunk's panels (≤ 128 × 512 f32, 256 KB) stays
/// in L2 while every strip of the task passes over it.
pub(super) const M_CHUNK: usize = 128;

/// Weight rows per micro-kernel call (one broadcast each per column).
pub(super) const W_ROWS: usize = 6;

/// Vectors of x rows per micro-kernel call: 2 × 6 accumulators + 2 x vectors + 1 broadcast
/// fill AVX2's 16 registers.
pub(super) const X_VECS: usize = 2;

/// Below this many multiply-adds the product runs on one thread.
const PARALLEL_MIN_MACS: usize = 1 << 21;

/// y (m × n) = x (m × k) · wᵀ (+ bias), on the best instruction set of this CPU. Any m works;
/// for m ≤ [`super::gemv::MAX_ROWS`] the GEMV is faster.
pub fn matmul_small<E: WeightElem>(
    x: &[f32],
    w: &WeightMatrix<E>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    matmul_small_on(Isa::detect(), x, w, bias, y, m)
}

/// [`matmul_small`] on a given instruction set (panics if this CPU lacks it).
///
/// An outer-product kernel, as BLIS-style GEMMs are built: x is repacked once per call into
/// column-major panels of `X_VECS × LANES` rows, each task widens its weights a strip of
/// `W_ROWS` rows at a time (L1), and the micro-kernel multiplies one panel column (vectors
/// of x rows, from L2) by one broadcast weight per strip row. Each 12 FMAs need 2 vector loads
/// from L2 and 6 broadcasts from L1, and no horizontal sums (the earlier dot-product kernel
/// needed 4 loads of x from L2 per 8 FMAs and ran at ~45 % of the FMA peak; PERFORMANCE.md #56).
pub fn matmul_small_on<E: WeightElem>(
    isa: Isa,
    x: &[f32],
    w: &WeightMatrix<E>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    let (n, k) = (w.rows, w.cols);
    check_operands(x, w, bias, y, m);
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let (Some(data), Some(kernel)) = (E::as_int8(w.data), small_m_int8::Kernel::for_isa(isa)) {
        // int8 in integers (see `small_m_int8`).
        return small_m_int8::matmul(kernel, x, &w.as_elements(data), bias, y, m);
    }
    let block = if k <= MAX_BLOCK {
        k
    } else {
        k.div_ceil(k.div_ceil(MAX_BLOCK)).next_multiple_of(16)
    };
    let width = X_VECS * isa.lanes();
    // Passes of PASS_ROWS rows of x, so that the packed copy of x stays small (an encoder
    // window's fc2 input would be 9–30 MB at once).
    let mut panels = vec![0f32; m.min(PASS_ROWS).div_ceil(width) * k * width];
    for (xs, ys) in x[..m * k]
        .chunks(PASS_ROWS * k)
        .zip(y.chunks_mut(PASS_ROWS * n))
    {
        let rows = xs.len() / k;
        pack_x(xs, rows, k, width, &mut panels);
        let out = OutPtr(ys.as_mut_ptr());
        for_each_task(
            n,
            rows * n * k,
            || Scratch::<f32>::new(block, width),
            |r0, r1, scratch| task_on(isa, &panels, *w, bias, out, rows, r0, r1, block, scratch),
        );
    }
}

/// Runs `task(r0, r1, scratch)` for every [`ROWS_PER_TASK`] output rows of n, on all threads
/// when the product's `macs` multiply-adds are worth it; each thread reuses one scratch.
pub(super) fn for_each_task<S>(
    n: usize,
    macs: usize,
    scratch: impl Fn() -> S + Sync + Send,
    task: impl Fn(usize, usize, &mut S) + Sync + Send,
) {
    let run = |t: usize, s: &mut S| task(t * ROWS_PER_TASK, ((t + 1) * ROWS_PER_TASK).min(n), s);
    let tasks = n.div_ceil(ROWS_PER_TASK);
    if macs < PARALLEL_MIN_MACS || rayon::current_num_threads() == 1 {
        let mut s = scratch();
        (0..tasks).for_each(|t| run(t, &mut s));
    } else {
        (0..tasks)
            .into_par_iter()
            .for_each_init(scratch, |s, t| run(t, s));
    }
}

/// Prefetches the strip after the one at rows r0 + rs, columns c0..c0 + len of a task's rows
/// r0..r1 (the next rows, or the task's first rows in the next column block): short runs of
/// each row, which the hardware prefetcher would not start on, arrive while this strip
/// multiplies.
///
/// # Safety
/// `data` holds the weights, `elem` bytes each, rows of k.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn prefetch_next_strip(
    data: *const u8,
    elem: usize,
    k: usize,
    (r0, rs, r1): (usize, usize, usize),
    (c0, len, block): (usize, usize, usize),
    prefetch: impl Fn(*const u8),
) {
    let (next_r, next_c0) = if r0 + rs + W_ROWS < r1 {
        (r0 + rs + W_ROWS, c0)
    } else {
        (r0, c0 + len)
    };
    if next_c0 < k {
        let next_len = block.min(k - next_c0) * elem;
        for r in next_r..(next_r + W_ROWS).min(r1) {
            let row = data.add((r * k + next_c0) * elem);
            for b in (0..next_len).step_by(64) {
                prefetch(row.add(b));
            }
        }
    }
}

/// Copies weight row `r`, columns c0..c0 + len, to the start of `dst` as stored and zeroes
/// the rest (a strip row of the kernels that multiply the weights without widening them);
/// returns the row's part.
///
/// # Safety
/// Row r holds columns c0..c0 + len; `dst` holds at least len elements.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn copy_strip_row<'a, E: Copy + Default>(
    w: &WeightMatrix<'a, E>,
    r: usize,
    (c0, len): (usize, usize),
    dst: &mut [E],
) -> &'a [E] {
    let src = w.data.get_unchecked(r * w.cols + c0..r * w.cols + c0 + len);
    dst[..len].copy_from_slice(src);
    dst[len..].fill(E::default());
    src
}

/// A chunk's results (rows m0..m1 of x against a task's output rows r0..r0 + rows), kept as
/// `[panel][row][width]`, transposed into y (rows of n) once: · `scales[r]` where the weights
/// carry row scales the kernel did not apply, + bias.
///
/// # Safety
/// The tile holds the chunk; y holds m1 rows of n.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn write_tile(
    tile: *const f32,
    y: OutPtr,
    n: usize,
    (m0, m1, width): (usize, usize, usize),
    (r0, rows): (usize, usize),
    scales: Option<&[f32]>,
    bias: Option<&[f32]>,
) {
    for i in m0..m1 {
        let (p, l) = ((i - m0) / width, (i - m0) % width);
        for t in 0..rows {
            let r = r0 + t;
            let v = *tile.add((p * rows + t) * width + l);
            *y.0.add(i * n + r) = scales.map_or(v, |s| v * s[r]) + bias.map_or(0.0, |b| b[r]);
        }
    }
}

/// A task's working memory, reused across the tasks a thread runs.
pub(super) struct Scratch<T> {
    /// [`W_ROWS`] weight rows of one column block, widened (to f32, or int16 for the integer
    /// kernel).
    pub(super) strip: Vec<T>,
    /// The task's output for one chunk of x rows, panel by panel: `[panel][row][width]`.
    pub(super) tile: Vec<f32>,
}

impl<T: Clone + Default> Scratch<T> {
    /// Room for strips of `block` columns and a task's tile of panels `width` rows wide.
    pub(super) fn new(block: usize, width: usize) -> Self {
        Self {
            strip: vec![T::default(); W_ROWS * block],
            tile: vec![0f32; ROWS_PER_TASK * M_CHUNK.next_multiple_of(width)],
        }
    }
}

/// x (m × k, row-major) into `panels` as panels of `width` rows, each column-major:
/// `panels[(p · k + j) · width + l] = x[p · width + l][j]`, zero past row m.
fn pack_x(x: &[f32], m: usize, k: usize, width: usize, panels: &mut [f32]) {
    let pack = |(p, panel): (usize, &mut [f32])| {
        let rows = width.min(m - p * width);
        for l in 0..rows {
            let row = &x[(p * width + l) * k..][..k];
            for (j, &v) in row.iter().enumerate() {
                panel[j * width + l] = v;
            }
        }
        if rows < width {
            for column in panel.chunks_mut(width) {
                column[rows..].fill(0.0);
            }
        }
    };
    let used = &mut panels[..m.div_ceil(width) * k * width];
    if m * k < PARALLEL_MIN_MACS {
        used.chunks_mut(k * width).enumerate().for_each(pack);
    } else {
        used.par_chunks_mut(k * width).enumerate().for_each(pack);
    }
}

isa_entries! {
    /// Output rows r0..r1 for all m rows of x.
    fn task_on<E: WeightElem>(
        panels: &[f32],
        w: WeightMatrix<E>,
        bias: Option<&[f32]>,
        y: OutPtr,
        m: usize,
        r0: usize,
        r1: usize,
        block: usize,
        scratch: &mut Scratch<f32>,
    ) => task_body
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn task_body<S: Simd, E: WeightElem>(
    panels: &[f32],
    w: WeightMatrix<E>,
    bias: Option<&[f32]>,
    y: OutPtr,
    m: usize,
    r0: usize,
    r1: usize,
    block: usize,
    scratch: &mut Scratch<f32>,
) {
    let k = w.cols;
    let width = X_VECS * S::LANES;
    assert!(
        scratch.strip.len() >= W_ROWS * block
            && scratch.tile.len() >= (r1 - r0) * M_CHUNK.next_multiple_of(width)
            && panels.len() >= m.div_ceil(width) * k * width
    );
    let mut strips = FloatStrips::<S, E> {
        panels,
        w,
        strip: scratch.strip.as_mut_ptr(),
        _simd: std::marker::PhantomData,
    };
    // The weights were scaled as they were widened.
    run_task(
        &mut strips,
        m,
        (r0, r1),
        block,
        scratch.tile.as_mut_ptr(),
        y,
        None,
        bias,
    );
}

/// What a small-M kernel does inside the loops of [`run_task`]: widen a strip of weight rows
/// for a column block, and multiply it against a panel of x.
pub(super) trait StripKernel {
    /// Rows of x per vector (a panel holds [`X_VECS`] vectors).
    const LANES: usize;
    /// The weights' element type.
    type Elem;
    /// The weights.
    fn weights(&self) -> WeightMatrix<'_, Self::Elem>;
    /// (rows, cols) of the weights.
    #[inline(always)]
    fn dims(&self) -> (usize, usize) {
        let w = self.weights();
        (w.rows, w.cols)
    }
    /// The weights' bytes and the bytes per weight, for prefetching.
    #[inline(always)]
    fn weight_bytes(&self) -> (*const u8, usize) {
        let w = self.weights();
        (
            w.data.as_ptr() as *const u8,
            std::mem::size_of::<Self::Elem>(),
        )
    }
    /// A prefetch that keeps the line in the caches.
    unsafe fn prefetch(p: *const u8);
    /// Widens weight row `r`, columns c0..c0 + len, into strip row `t`.
    unsafe fn widen(&mut self, t: usize, r: usize, c0: usize, len: usize);
    /// The tile's rows at `yp` (stride: the panel width) += panel `panel` of x (`vecs`
    /// vectors) times the strip's first `strip_rows` rows, over `columns` (c0, len).
    unsafe fn multiply(
        &self,
        panel: usize,
        columns: (usize, usize),
        strip_rows: usize,
        vecs: usize,
        yp: *mut f32,
    );
}

/// Output rows r0..r1 for all m rows of x: chunks of [`M_CHUNK`] rows of x (their panels stay
/// in L2), column blocks of `block`, strips of [`W_ROWS`] weight rows (in L1), the next strip
/// prefetched while one multiplies, each chunk's tile written to y once (· `scales`, + bias).
///
/// # Safety
/// The kernel's buffers fit these sizes; `tile` holds (r1 − r0) × the chunk's rows; y holds
/// m rows of the weights' n.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn run_task<K: StripKernel>(
    kernel: &mut K,
    m: usize,
    (r0, r1): (usize, usize),
    block: usize,
    tile: *mut f32,
    y: OutPtr,
    scales: Option<&[f32]>,
    bias: Option<&[f32]>,
) {
    let (n, k) = kernel.dims();
    let (bytes, elem) = kernel.weight_bytes();
    let width = X_VECS * K::LANES;
    let chunk = M_CHUNK.next_multiple_of(width);
    let rows = r1 - r0;
    let mut m0 = 0;
    while m0 < m {
        let m1 = (m0 + chunk).min(m);
        let panels_here = (m1 - m0).div_ceil(width);
        std::ptr::write_bytes(tile, 0, panels_here * rows * width);
        let mut c0 = 0;
        while c0 < k {
            let len = block.min(k - c0);
            let mut rs = 0;
            while rs < rows {
                let strip_rows = W_ROWS.min(rows - rs);
                for t in 0..strip_rows {
                    kernel.widen(t, r0 + rs + t, c0, len);
                }
                prefetch_next_strip(bytes, elem, k, (r0, rs, r1), (c0, len, block), |p| {
                    K::prefetch(p)
                });
                for p in 0..panels_here {
                    let i0 = m0 + p * width;
                    let vecs = (m1 - i0).div_ceil(K::LANES).min(X_VECS);
                    let yp = tile.add((p * rows + rs) * width);
                    kernel.multiply(i0 / width, (c0, len), strip_rows, vecs, yp);
                }
                rs += strip_rows;
            }
            c0 += len;
        }
        write_tile(tile, y, n, (m0, m1, width), (r0, rows), scales, bias);
        m0 = m1;
    }
}

/// Calls `$f::<$t…, ROWS, VECS>($args)` for the register blocking (strip rows 1–6 × vectors
/// of x 1–2) given at run time.
macro_rules! with_blocking {
    ($rows:expr, $vecs:expr, $f:ident$(::<$($t:ty),*>)?($($arg:expr),*)) => {
        match ($rows, $vecs) {
            (1, 1) => $f::<$($($t,)*)? 1, 1>($($arg),*),
            (2, 1) => $f::<$($($t,)*)? 2, 1>($($arg),*),
            (3, 1) => $f::<$($($t,)*)? 3, 1>($($arg),*),
            (4, 1) => $f::<$($($t,)*)? 4, 1>($($arg),*),
            (5, 1) => $f::<$($($t,)*)? 5, 1>($($arg),*),
            (6, 1) => $f::<$($($t,)*)? 6, 1>($($arg),*),
            (1, 2) => $f::<$($($t,)*)? 1, 2>($($arg),*),
            (2, 2) => $f::<$($($t,)*)? 2, 2>($($arg),*),
            (3, 2) => $f::<$($($t,)*)? 3, 2>($($arg),*),
            (4, 2) => $f::<$($($t,)*)? 4, 2>($($arg),*),
            (5, 2) => $f::<$($($t,)*)? 5, 2>($($arg),*),
            (6, 2) => $f::<$($($t,)*)? 6, 2>($($arg),*),
            _ => unreachable!("blocking beyond 6 × 2"),
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(super) use with_blocking;

/// The f32 kernel's strips: narrow weights widened to f32 (scaled, for int8).
struct FloatStrips<'a, S, E> {
    panels: &'a [f32],
    w: WeightMatrix<'a, E>,
    /// [`W_ROWS`] rows of the current column block, `len` apart.
    strip: *mut f32,
    _simd: std::marker::PhantomData<S>,
}

impl<S: Simd, E: WeightElem> StripKernel for FloatStrips<'_, S, E> {
    const LANES: usize = S::LANES;
    type Elem = E;

    #[inline(always)]
    fn weights(&self) -> WeightMatrix<'_, E> {
        self.w
    }

    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        S::prefetch_keep(p)
    }

    #[inline(always)]
    unsafe fn widen(&mut self, t: usize, r: usize, c0: usize, len: usize) {
        convert_row::<S, E>(
            self.w.data.as_ptr().add(r * self.w.cols + c0),
            len,
            self.w.scales.map(|s| s[r]),
            self.strip.add(t * len),
        );
    }

    #[inline(always)]
    unsafe fn multiply(
        &self,
        panel: usize,
        (c0, len): (usize, usize),
        strip_rows: usize,
        vecs: usize,
        yp: *mut f32,
    ) {
        let width = X_VECS * S::LANES;
        let xp = self.panels.as_ptr().add((panel * self.w.cols + c0) * width);
        with_blocking!(strip_rows, vecs, micro::<S>(xp, width, self.strip, len, yp));
    }
}

/// yp[t][i] += Σ_j x[i][j] · w[t][j] for the VECS × LANES rows of x in one panel (column j at
/// `xp + j · width`) and ROWS rows of widened weights (stride `len`), j < len; yp's rows have
/// stride `width`.
#[inline(always)]
unsafe fn micro<S: Simd, const ROWS: usize, const VECS: usize>(
    xp: *const f32,
    width: usize,
    wp: *const f32,
    len: usize,
    yp: *mut f32,
) {
    let mut acc = [[S::zero(); VECS]; ROWS];
    for j in 0..len {
        let mut xv = [S::zero(); VECS];
        for (v, x) in xv.iter_mut().enumerate() {
            *x = S::load(xp.add(j * width + v * S::LANES));
        }
        for (t, a) in acc.iter_mut().enumerate() {
            let b = S::splat(*wp.add(t * len + j));
            for v in 0..VECS {
                a[v] = S::fma(xv[v], b, a[v]);
            }
        }
    }
    for (t, a) in acc.iter().enumerate() {
        for (v, &acc) in a.iter().enumerate() {
            let out = yp.add(t * width + v * S::LANES);
            S::store(out, S::add(S::load(out), acc));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "x86_64")]
    use crate::kernels::gemv::tests::check_rounded_x;
    use crate::kernels::gemv::tests::{check, data, reference, weights};

    /// Every element type × instruction set × the row counts around the register blocks,
    /// chunks and passes × odd widths, multi-block widths and multithreaded sizes.
    #[test]
    fn matches_the_f64_reference() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        // (k, n, rows of x): more rows than a chunk and a pass only on the narrow shapes.
        let shapes = [
            (37, 70, &[1usize, 3, 8, 9, 17, 39, 64, 130, 300][..]),
            (16, 3, &[1, 17, 300]),
            (1031, 20, &[130, 300]),
            (5000, 131, &[1, 3, 8, 9, 17, 39, 64]),
            (1031, 517, &[1, 9, 39, 64]),
        ];
        for &(k, n, ms) in &shapes {
            let tw = weights(n, k, 11);
            let bias: Vec<f32> = (0..n).map(|i| 0.5 - i as f32 * 0.01).collect();
            for &m in ms {
                let x = data(m * k, 100 + m as u32);
                let want_f16 = reference(&x, &tw.f16_f32, Some(&bias), m, k);
                let want_bf16 = reference(&x, &tw.bf16_f32, Some(&bias), m, k);
                let want_i8 = reference(&x, &tw.i8_f32, Some(&bias), m, k);
                for isa in Isa::available() {
                    let what = format!("{isa:?} m{m} k{k} n{n}");
                    let mut y = vec![0f32; m * n];
                    let wf = WeightMatrix::new(&tw.f16, n, k);
                    pool.install(|| matmul_small_on(isa, &x, &wf, Some(&bias), &mut y, m));
                    check(&y, &want_f16, &x, &tw.f16_f32, m, k, &format!("f16 {what}"));
                    let wb = WeightMatrix::new(&tw.bf16, n, k);
                    pool.install(|| matmul_small_on(isa, &x, &wb, Some(&bias), &mut y, m));
                    check(
                        &y,
                        &want_bf16,
                        &x,
                        &tw.bf16_f32,
                        m,
                        k,
                        &format!("bf16 {what}"),
                    );
                    let wi = WeightMatrix::with_scales(&tw.i8, &tw.scales, n, k);
                    pool.install(|| matmul_small_on(isa, &x, &wi, Some(&bias), &mut y, m));
                    // Where the integer path runs, it rounds x to 8 bits per block.
                    let what = format!("int8 {what}");
                    #[cfg(target_arch = "x86_64")]
                    if small_m_int8::Kernel::for_isa(isa).is_some() {
                        let rounding = (small_m_int8::X8_BLOCK, 127.0);
                        check_rounded_x(&y, &want_i8, &x, &tw.i8_f32, m, rounding, &what);
                        continue;
                    }
                    check(&y, &want_i8, &x, &tw.i8_f32, m, k, &what);
                }
            }
        }
    }

    #[test]
    fn without_bias() {
        let (m, k, n) = (13, 100, 9);
        let tw = weights(n, k, 5);
        let x = data(m * k, 1);
        let mut y = vec![0f32; m * n];
        matmul_small(&x, &WeightMatrix::new(&tw.bf16, n, k), None, &mut y, m);
        let want = reference(&x, &tw.bf16_f32, None, m, k);
        check(&y, &want, &x, &tw.bf16_f32, m, k, "bf16 no bias");
    }
}
