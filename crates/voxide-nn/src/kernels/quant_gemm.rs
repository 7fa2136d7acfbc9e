//! Matrix × many-rows products with ggml block-quantized weights (the encoder of a quantized
//! Whisper, a prompt's prefill): `y[m][n] = Σ_k x[m][k] · w[n][k]` (+ bias), w n × k in a
//! 32-value block format ([`QuantMatrix`]), x m × k and y m × n in f32, for m above
//! [`super::gemv::MAX_ROWS`] (below it [`super::quant_matmul::quant_gemv`] is the kernel).
//!
//! The technique is ggml's "repacked" GEMM (credit to its authors: `ggml_gemm_q4_0_8x8_q8_0`
//! and its siblings in `ggml-cpu/repack.cpp` and `ggml-cpu/arch/x86/repack.cpp`). The GEMV
//! reads one weight row at a time and so ends each output with a horizontal sum; here the
//! weight is repacked, once per call, into panels of `NR` = 8 rows (output columns)
//! interleaved so that each 32-bit lane of a vector belongs to one column:
//!
//! - per panel and 32-block, 8 groups of 4 consecutive k values; per group one 32-byte
//!   vector holding the 8 columns' 4 codes side by side (`codes`), then the 8 columns' f32
//!   scales d and minimums (`scales`);
//! - how the codes meet x's in `vpmaddubsw` (unsigned × signed bytes) is the format's
//!   `Mode`. Offset formats (Q4_0: w = d · (q − 8), Q5_0: q − 16) store the signed codes
//!   q − 8 / q − 16 and meet x's codes + 128 (unsigned); the resulting 128 · Σ codes, a
//!   constant of the column and block, is subtracted from the i32 sum (`sums`), so the offset
//!   costs one integer subtraction per block, row and 8 columns (the GEMV's `Corr::Offset`
//!   costs an FMA there). Minimum formats (Q4_1, Q5_1: w = d · q + m) keep unsigned codes,
//!   signed x, and add m · d_x · Σq_x per block as the GEMV does.
//!
//! x is quantized once per call as in the GEMV (8-bit codes per 32-block, d_x = max|x| / 127,
//! and d_x · Σq_x), row-major, its rows padded to a multiple of `MR` with zeros.
//!
//! The AVX2 microkernel computes a tile of `MR` = 4 rows of x × 8 columns in registers. Per
//! group it loads the weights' vector once and, for each row, broadcasts x's 4 codes
//! (`vpbroadcastd`) into a `vpmaddubsw`; the i16 pair sums of a block's groups add up in i16
//! as far as they cannot overflow (`Format::SUM_GROUPS`: all 8 groups for Q4_0 and Q4_1, 4
//! for the 5-bit formats), then `vpmaddwd` with ones gives an i32 per column, and
//! one conversion and FMA (scale d_w · d_x) per block and row add it to the f32 accumulators;
//! no horizontal sums. About 2.5 vector instructions per 32 multiply-adds against 1 FMA per 8
//! in an f32 GEMM: on Zen 3 (AVX2) the Q4_0 encoder products run 1.5–2× the widened f32
//! GEMM's rate.
//!
//! Work: tasks of a chunk of rows of x (`X_CHUNK_BYTES` of codes, cache-resident while its
//! tiles meet every panel of the task) × a range of panels, on rayon.
//!
//! Precision: the contract of the GEMV. Integer products are exact; the only approximation is
//! x's 8-bit quantization per 32-block (see [`super::quant_matmul`]). The portable kernel
//! checks the integer bounds and does the same f32 operations in the same order (fused
//! multiply-adds), so its outputs are bit-identical to the AVX2 kernel's.
//!
//! Types: Q4_0, Q4_1, Q5_0, Q5_1 ([`has_gemm_kernel`]). Q8_0's signed codes would take
//! ggml's sign trick (|w| × x with w's sign) and, their pair sums filling i16, a `vpmaddwd`
//! per group: twice the multiplies per 32 products, no faster than the f32 GEMM (measured:
//! 0.9–1.2× on Zen 3), which is exact. So Q8_0, the k-quants (256-value blocks with 6-bit
//! sub-scales) and the other types widen blocks of rows to f32 for a float GEMM
//! ([`super::widen_gemm::matmul_widened`]), as do all types on CPUs without a SIMD kernel
//! here (the portable kernel is a correct reference, not a fast path).

use super::gemv::OutPtr;
use super::quant_matmul::{Job, Lanes, Path, QuantMatrix, QX};
#[cfg(target_arch = "x86_64")]
use super::simd::Isa;
use crate::quant::GgmlType;
use half::f16;
use rayon::prelude::*;

/// f32 / i32 lanes of an AVX2 vector: the columns of one vector of a panel.
const LANES: usize = 8;

/// Vectors per panel: one, [`NR`] = 8 columns. (Two would let each broadcast of x serve two
/// products, but their 2 · [`MR`] sums and accumulators exceed AVX2's 16 registers: spills.)
const NV: usize = 1;

/// Output columns (weight rows) per panel.
const NR: usize = NV * LANES;

/// Rows of x per tile: each vector of weights serves [`MR`] products. The tile's 4 f32
/// accumulators and 4 i16 sums, the weights, a broadcast and a product fit AVX2's 16
/// registers; 6 rows spill.
const MR: usize = 4;

/// k values per group: one broadcast i32 of x's codes, one i32 lane per column.
const GROUP: usize = 4;

/// Groups per 32-block.
const GROUPS: usize = QX / GROUP;

/// Bytes of codes per panel and 32-block.
const PANEL_BLOCK: usize = NR * QX;

/// f32 per panel and 32-block: the [`NR`] scales d, then the [`NR`] minimums.
const PANEL_SCALES: usize = 2 * NR;

/// Bytes of x's codes per chunk of rows (a task's rows): they stay in L2 while the task's
/// panels pass, each panel's blocks in L1 while the chunk's tiles meet it.
const X_CHUNK_BYTES: usize = 128 << 10;

/// Parallel tasks per thread (enough to balance uneven tasks).
const TASKS_PER_THREAD: usize = 4;

/// Whether `ty` has a GEMM kernel here that is fast on this CPU: a 32-value block format
/// (`Format`) and a SIMD microkernel (AVX2). Elsewhere [`super::widen_gemm::matmul_widened`]
/// is faster.
pub fn has_gemm_kernel(ty: GgmlType) -> bool {
    has_format(ty) && Kernel::best() != Kernel::Portable
}

fn has_format(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1
    )
}

/// y (m × n) = x (m × k) · wᵀ (+ bias) for any m, on the best kernel of this CPU (panics for
/// a type without a `Format`; see [`has_gemm_kernel`]).
pub fn quant_gemm(x: &[f32], w: &QuantMatrix, bias: Option<&[f32]>, y: &mut [f32], m: usize) {
    gemm_on(Kernel::best(), x, w, bias, y, m)
}

/// A microkernel implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Portable,
    /// AVX2 `vpmaddubsw` + `vpmaddwd`, FMA.
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    fn best() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if Isa::Avx2.is_available() {
            return Kernel::Avx2;
        }
        Kernel::Portable
    }

    /// The path that quantizes x (the same values on every path).
    fn quantize_path(self) -> Path {
        match self {
            Kernel::Portable => Path::Portable,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => Path::Avx2,
        }
    }
}

fn gemm_on(
    kernel: Kernel,
    x: &[f32],
    w: &QuantMatrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    match w.ty {
        GgmlType::Q4_0 => gemm::<fmt::Q4_0>(kernel, x, w, bias, y, m),
        GgmlType::Q4_1 => gemm::<fmt::Q4_1>(kernel, x, w, bias, y, m),
        GgmlType::Q5_0 => gemm::<fmt::Q5_0>(kernel, x, w, bias, y, m),
        GgmlType::Q5_1 => gemm::<fmt::Q5_1>(kernel, x, w, bias, y, m),
        ty => panic!("{ty} has no GEMM kernel"),
    }
}

fn gemm<F: Format>(
    kernel: Kernel,
    x: &[f32],
    w: &QuantMatrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
    m: usize,
) {
    let (n, k) = (w.rows, w.cols);
    w.check_product(x, y, bias, m);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for row in y.chunks_mut(n) {
            match bias {
                Some(b) => row.copy_from_slice(b),
                None => row.fill(0.0),
            }
        }
        return;
    }
    let packed = Packed::new::<F>(w);
    let xq = QuantX::new(kernel.quantize_path(), x, m, k, F::MODE == Mode::Biased);
    let chunk_rows = (X_CHUNK_BYTES / k).max(MR) / MR * MR;
    let row_chunks = m.div_ceil(chunk_rows);
    let panels = packed.panels;
    let col_groups = (TASKS_PER_THREAD * rayon::current_num_threads())
        .div_ceil(row_chunks)
        .clamp(1, panels);
    let panels_per_group = panels.div_ceil(col_groups);
    let out = OutPtr(y.as_mut_ptr());
    (0..row_chunks * panels.div_ceil(panels_per_group))
        .into_par_iter()
        .for_each(|t| {
            let (chunk, group) = (t % row_chunks, t / row_chunks);
            let task = Task {
                xq: &xq,
                w: &packed,
                bias,
                y: out,
                m,
                n,
                rows: chunk * chunk_rows..(chunk * chunk_rows + chunk_rows).min(m),
                panels: group * panels_per_group..((group + 1) * panels_per_group).min(panels),
            };
            // SAFETY: the task's rows and panels are in bounds of x, the packed weight and y
            // (m × n); tasks write disjoint tiles of y.
            unsafe {
                match kernel {
                    Kernel::Portable => task_body::<Portable, F>(&task),
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx2 => task_avx2::<F>(&task),
                }
            }
        });
}

/// The weight repacked in panels of [`NR`] rows (see the module documentation); rows past n
/// in the last panel are zeros.
struct Packed {
    /// Panel p, block b, group g, column c = 8v + l, value j: byte
    /// ((p · blocks + b) · GROUPS + g) · NR · 4 + 32v + 4l + j.
    codes: Vec<u8>,
    /// Panel p, block b: the columns' d at (p · blocks + b) · 2 · NR, their minimums at + NR.
    scales: Vec<f32>,
    /// Panel p, block b ([`Mode::Biased`]): 128 · Σ codes per column at (p · blocks + b) · NR.
    sums: Vec<i32>,
    blocks: usize,
    panels: usize,
}

impl Packed {
    /// Repacks `w` (a format with 32-value blocks), a panel per parallel task.
    fn new<F: Format>(w: &QuantMatrix) -> Packed {
        let (n, blocks) = (w.rows, w.cols / QX);
        let panels = n.div_ceil(NR);
        let mut codes = vec![0u8; panels * blocks * PANEL_BLOCK];
        let mut scales = vec![0f32; panels * blocks * PANEL_SCALES];
        let mut sums = vec![0i32; panels * blocks * NR];
        let (rb, bb) = (w.row_bytes(), F::TYPE.block_bytes());
        codes
            .par_chunks_mut(blocks * PANEL_BLOCK)
            .zip(scales.par_chunks_mut(blocks * PANEL_SCALES))
            .zip(sums.par_chunks_mut(blocks * NR))
            .enumerate()
            .for_each(|(p, ((codes, scales), sums))| {
                for c in 0..NR.min(n - p * NR) {
                    let row = &w.data[(p * NR + c) * rb..][..rb];
                    let at = c / LANES * LANES * GROUP + c % LANES * GROUP;
                    for (b, block) in row.chunks_exact(bb).enumerate() {
                        let mut q = [0i8; QX];
                        let (d, min) = F::decode(block, &mut q);
                        let dst = &mut codes[b * PANEL_BLOCK..][..PANEL_BLOCK];
                        for (g, four) in q.chunks_exact(GROUP).enumerate() {
                            for (j, &v) in four.iter().enumerate() {
                                dst[g * NR * GROUP + at + j] = v as u8;
                            }
                        }
                        scales[b * PANEL_SCALES + c] = d;
                        scales[b * PANEL_SCALES + NR + c] = min;
                        sums[b * NR + c] = 128 * q.iter().map(|&v| v as i32).sum::<i32>();
                    }
                }
            });
        Packed {
            codes,
            scales,
            sums,
            blocks,
            panels,
        }
    }
}

/// x quantized to 8-bit codes per 32-block, rows padded to a multiple of [`MR`] with zeros.
struct QuantX {
    /// Row i's codes at i · k, in k order: q as i8, or q + 128 as u8 ([`Mode::Biased`]).
    codes: Vec<u8>,
    /// Row i, block b: d_x at (i · blocks + b) · 2, d_x · Σq_x at + 1.
    scales: Vec<f32>,
    k: usize,
}

/// Rows of x per parallel task of the quantization.
const QUANTIZE_ROWS: usize = 16;

impl QuantX {
    fn new(path: Path, x: &[f32], m: usize, k: usize, biased: bool) -> QuantX {
        let (rows, blocks) = (m.div_ceil(MR) * MR, k / QX);
        let mut codes = vec![0u8; rows * k];
        let mut scales = vec![0f32; rows * blocks * 2];
        codes[..m * k]
            .par_chunks_mut(QUANTIZE_ROWS * k)
            .zip(scales.par_chunks_mut(QUANTIZE_ROWS * blocks * 2))
            .zip(x.par_chunks(QUANTIZE_ROWS * k))
            .for_each(|((codes, scales), x)| {
                path.run(QuantizeRows {
                    x,
                    codes,
                    scales,
                    biased,
                })
            });
        QuantX { codes, scales, k }
    }
}

/// Quantizes rows of x (whole 32-blocks) with [`Lanes::quantize`], on a [`Path`].
struct QuantizeRows<'a> {
    x: &'a [f32],
    codes: &'a mut [u8],
    scales: &'a mut [f32],
    /// Store q + 128 ([`Mode::Biased`]).
    biased: bool,
}

impl Job for QuantizeRows<'_> {
    type Out = ();

    #[inline(always)]
    unsafe fn run<L: Lanes>(self) {
        let blocks = self.x.len() / QX;
        assert!(self.codes.len() >= blocks * QX && self.scales.len() >= 2 * blocks);
        let (x, q) = (self.x.as_ptr(), self.codes.as_mut_ptr() as *mut i8);
        for b in 0..blocks {
            let at = b * QX;
            let (d, sum) = L::quantize(x.add(at), q.add(at), q.add(at + QX / 2));
            self.scales[2 * b] = d;
            self.scales[2 * b + 1] = d * sum as f32;
        }
        if self.biased {
            self.codes[..blocks * QX]
                .iter_mut()
                .for_each(|c| *c ^= 0x80);
        }
    }
}

/// A task: rows `rows` of x (a chunk; whole tiles, the last possibly past m into the padding)
/// × panels `panels`.
struct Task<'a> {
    xq: &'a QuantX,
    w: &'a Packed,
    bias: Option<&'a [f32]>,
    y: OutPtr,
    m: usize,
    n: usize,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
}

/// One panel's blocks, as the microkernels read them.
#[derive(Clone, Copy)]
struct PanelPtr {
    codes: *const u8,
    scales: *const f32,
    sums: *const i32,
}

/// A microkernel: a tile of [`MR`] rows of x × one panel.
trait Micro {
    /// Σ over the blocks of x's rows (codes at `x`, row stride k; scales at `xs`, row stride
    /// 2 · blocks) times the panel, per row and column.
    ///
    /// # Safety
    /// The pointers hold [`MR`] rows of x and a panel of `blocks` blocks; the instruction set
    /// of the implementation is available.
    unsafe fn tile<F: Format>(
        x: *const u8,
        xs: *const f32,
        k: usize,
        w: PanelPtr,
        blocks: usize,
    ) -> [[f32; NR]; MR];
}

/// A task's panels, each meeting every tile of its rows while it is in L1.
///
/// # Safety
/// As [`Micro::tile`]; the task is in bounds and owns its tiles of y.
#[inline(always)]
unsafe fn task_body<K: Micro, F: Format>(t: &Task) {
    let (xq, w) = (t.xq, t.w);
    let (k, blocks) = (xq.k, w.blocks);
    for p in t.panels.clone() {
        let panel = PanelPtr {
            codes: w.codes.as_ptr().add(p * blocks * PANEL_BLOCK),
            scales: w.scales.as_ptr().add(p * blocks * PANEL_SCALES),
            sums: w.sums.as_ptr().add(p * blocks * NR),
        };
        let cols = NR.min(t.n - p * NR);
        for i in t.rows.clone().step_by(MR) {
            let x = xq.codes.as_ptr().add(i * k);
            let xs = xq.scales.as_ptr().add(i * blocks * 2);
            let tile = K::tile::<F>(x, xs, k, panel, blocks);
            for (r, row) in tile.iter().enumerate().take(t.m.saturating_sub(i)) {
                let y = t.y.add((i + r) * t.n + p * NR).0;
                for (c, v) in row.iter().enumerate().take(cols) {
                    *y.add(c) = v + t.bias.map_or(0.0, |b| b[p * NR + c]);
                }
            }
        }
    }
}

/// [`task_body`] compiled for AVX2 + FMA.
///
/// # Safety
/// As [`task_body`]; the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn task_avx2<F: Format>(t: &Task) {
    // SAFETY: forwarded from the caller.
    unsafe { task_body::<Avx2, F>(t) }
}

/// How a format's codes meet x's in the byte products (`vpmaddubsw`: unsigned × signed).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Unsigned codes (with a block minimum) × x's signed codes.
    Unsigned,
    /// Signed codes (ggml's q − offset) × x's codes + 128 (unsigned); 128 · Σ codes, a
    /// column's constant per block, is subtracted from the i32 sum. This removes the offset
    /// in the integers, where a term d_x · Σq_x per row would cost an FMA per block.
    Biased,
}

/// A 32-value block format's codes and block terms.
trait Format {
    const TYPE: GgmlType;
    const MODE: Mode;
    /// Largest code magnitude.
    const MAX: usize;
    /// Whether blocks have a minimum: w = d · code + min.
    const MIN: bool;
    /// Groups whose `vpmaddubsw` pair sums (each at most 2 · MAX · max|x code| in magnitude)
    /// add up in i16 without overflow before the widening to i32; divides [`GROUPS`].
    const SUM_GROUPS: usize = {
        let x = if matches!(Self::MODE, Mode::Biased) {
            255
        } else {
            127
        };
        let g = i16::MAX as usize / (2 * Self::MAX * x);
        let g = if g > GROUPS { GROUPS } else { g };
        assert!(g > 0 && GROUPS.is_multiple_of(g));
        g
    };
    /// The codes of a block (ggml's layout) in k order and its (d, min).
    fn decode(block: &[u8], codes: &mut [i8; QX]) -> (f32, f32);
}

/// The formats' block layouts (`ggml-common.h`; see [`GgmlType`]).
mod fmt {
    use super::*;

    pub(super) struct Q4_0;
    pub(super) struct Q4_1;
    pub(super) struct Q5_0;
    pub(super) struct Q5_1;

    fn f16_at(b: &[u8], at: usize) -> f32 {
        f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
    }

    /// Value j < 16: the low nibble of byte j, less `offset`; value j + 16: its high nibble.
    fn nibbles(qs: &[u8], offset: i8, codes: &mut [i8; QX]) {
        for (j, &q) in qs[..QX / 2].iter().enumerate() {
            codes[j] = (q & 15) as i8 - offset;
            codes[j + QX / 2] = (q >> 4) as i8 - offset;
        }
    }

    /// Nibbles plus the 5th bits (bit j of the word at qh for value j), less `offset`.
    fn fives(qh: &[u8], qs: &[u8], offset: i8, codes: &mut [i8; QX]) {
        nibbles(qs, 0, codes);
        let h = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
        for (j, c) in codes.iter_mut().enumerate() {
            *c = (*c | ((h >> j) as i8 & 1) << 4) - offset;
        }
    }

    /// d (f16), 16 bytes of nibbles; w = d · (q − 8).
    impl Format for Q4_0 {
        const TYPE: GgmlType = GgmlType::Q4_0;
        const MODE: Mode = Mode::Biased;
        const MAX: usize = 8;
        const MIN: bool = false;
        fn decode(b: &[u8], codes: &mut [i8; QX]) -> (f32, f32) {
            nibbles(&b[2..], 8, codes);
            (f16_at(b, 0), 0.0)
        }
    }

    /// d, m (f16), nibbles; w = d · q + m.
    impl Format for Q4_1 {
        const TYPE: GgmlType = GgmlType::Q4_1;
        const MODE: Mode = Mode::Unsigned;
        const MAX: usize = 15;
        const MIN: bool = true;
        fn decode(b: &[u8], codes: &mut [i8; QX]) -> (f32, f32) {
            nibbles(&b[4..], 0, codes);
            (f16_at(b, 0), f16_at(b, 2))
        }
    }

    /// d (f16), the 5th bits (u32), nibbles; w = d · (q − 16).
    impl Format for Q5_0 {
        const TYPE: GgmlType = GgmlType::Q5_0;
        const MODE: Mode = Mode::Biased;
        const MAX: usize = 16;
        const MIN: bool = false;
        fn decode(b: &[u8], codes: &mut [i8; QX]) -> (f32, f32) {
            fives(&b[2..], &b[6..], 16, codes);
            (f16_at(b, 0), 0.0)
        }
    }

    /// d, m (f16), the 5th bits, nibbles; w = d · q + m.
    impl Format for Q5_1 {
        const TYPE: GgmlType = GgmlType::Q5_1;
        const MODE: Mode = Mode::Unsigned;
        const MAX: usize = 31;
        const MIN: bool = true;
        fn decode(b: &[u8], codes: &mut [i8; QX]) -> (f32, f32) {
            fives(&b[4..], &b[8..], 0, codes);
            (f16_at(b, 0), f16_at(b, 2))
        }
    }
}

/// The reference microkernel: the AVX2 kernel's integer arithmetic, a column at a time, with
/// its bounds checked: each `vpmaddubsw` pair must fit i16 (the instruction would saturate)
/// and so must each [`Format::SUM_GROUPS`] groups' sum (it would wrap). Then the same f32
/// operations (fused), so its outputs are bit-identical to the AVX2 kernel's.
struct Portable;

impl Portable {
    /// The operands of a byte product as `vpmaddubsw` takes them: (unsigned, signed).
    #[inline(always)]
    fn operands<F: Format>(code: u8, x: u8) -> (i32, i32) {
        match F::MODE {
            Mode::Unsigned => (code as i32, x as i8 as i32),
            Mode::Biased => (x as i32, code as i8 as i32),
        }
    }
}

impl Micro for Portable {
    #[inline(always)]
    unsafe fn tile<F: Format>(
        x: *const u8,
        xs: *const f32,
        k: usize,
        w: PanelPtr,
        blocks: usize,
    ) -> [[f32; NR]; MR] {
        let mut acc = [[0f32; NR]; MR];
        for b in 0..blocks {
            let wq = std::slice::from_raw_parts(w.codes.add(b * PANEL_BLOCK), PANEL_BLOCK);
            let s = std::slice::from_raw_parts(w.scales.add(b * PANEL_SCALES), PANEL_SCALES);
            let sums = std::slice::from_raw_parts(w.sums.add(b * NR), NR);
            for (r, acc) in acc.iter_mut().enumerate() {
                let xq = std::slice::from_raw_parts(x.add(r * k + b * QX), QX);
                let (d, ds) = (
                    *xs.add((r * blocks + b) * 2),
                    *xs.add((r * blocks + b) * 2 + 1),
                );
                for (c, acc) in acc.iter_mut().enumerate() {
                    let at = c / LANES * LANES * GROUP + c % LANES * GROUP;
                    let mut dot = 0i32;
                    for h in 0..GROUPS / F::SUM_GROUPS {
                        // The column's two i16 lanes: values 0, 1 and 2, 3 of each group.
                        let mut lanes = [0i16; 2];
                        for g in h * F::SUM_GROUPS..(h + 1) * F::SUM_GROUPS {
                            for (half, lane) in lanes.iter_mut().enumerate() {
                                let pair: i32 = (2 * half..2 * half + 2)
                                    .map(|j| {
                                        let code = wq[g * NR * GROUP + at + j];
                                        let (u, s) = Self::operands::<F>(code, xq[g * GROUP + j]);
                                        u * s
                                    })
                                    .sum();
                                let pair = i16::try_from(pair).expect("vpmaddubsw saturates");
                                *lane = lane.checked_add(pair).expect("i16 sums overflow");
                            }
                        }
                        dot += lanes[0] as i32 + lanes[1] as i32;
                    }
                    if F::MODE == Mode::Biased {
                        dot -= sums[c];
                    }
                    *acc = (dot as f32).mul_add(s[c] * d, *acc);
                    if F::MIN {
                        *acc = s[NR + c].mul_add(ds, *acc);
                    }
                }
            }
        }
        acc
    }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// AVX2: the tile's [`MR`] × [`NV`] vectors of accumulators in registers.
#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Micro for Avx2 {
    #[inline(always)]
    unsafe fn tile<F: Format>(
        x: *const u8,
        xs: *const f32,
        k: usize,
        w: PanelPtr,
        blocks: usize,
    ) -> [[f32; NR]; MR] {
        tile_avx2::<F>(x, xs, k, w, blocks)
    }
}

/// [`Micro::tile`] on AVX2.
///
/// # Safety
/// As [`Micro::tile`]; the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile_avx2<F: Format>(
    x: *const u8,
    xs: *const f32,
    k: usize,
    w: PanelPtr,
    blocks: usize,
) -> [[f32; NR]; MR] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); NV]; MR];
    for b in 0..blocks {
        let (wq, xb) = (w.codes.add(b * PANEL_BLOCK), x.add(b * QX));
        let mut dot = [[_mm256_setzero_si256(); NV]; MR];
        for h in 0..GROUPS / F::SUM_GROUPS {
            let mut pairs = [[_mm256_setzero_si256(); NV]; MR];
            for g in h * F::SUM_GROUPS..(h + 1) * F::SUM_GROUPS {
                let wv: [__m256i; NV] = std::array::from_fn(|v| {
                    _mm256_loadu_si256(wq.add((g * NV + v) * 32) as *const __m256i)
                });
                for (r, pairs) in pairs.iter_mut().enumerate() {
                    let four = (xb.add(r * k + g * GROUP) as *const i32).read_unaligned();
                    let xv = _mm256_set1_epi32(four);
                    for (pairs, &wv) in pairs.iter_mut().zip(&wv) {
                        // No saturation: |pair| ≤ 2 · MAX · max|x code| ≤ i16::MAX.
                        let p = match F::MODE {
                            Mode::Unsigned => _mm256_maddubs_epi16(wv, xv),
                            Mode::Biased => _mm256_maddubs_epi16(xv, wv),
                        };
                        *pairs = _mm256_add_epi16(*pairs, p);
                    }
                }
            }
            for (dot, pairs) in dot.iter_mut().zip(pairs) {
                for (dot, pairs) in dot.iter_mut().zip(pairs) {
                    *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(pairs, ones));
                }
            }
        }
        let s = w.scales.add(b * PANEL_SCALES);
        for (r, (acc, dot)) in acc.iter_mut().zip(dot).enumerate() {
            let xs = xs.add((r * blocks + b) * 2);
            let dx = _mm256_broadcast_ss(&*xs);
            for (v, (acc, mut dot)) in acc.iter_mut().zip(dot).enumerate() {
                if F::MODE == Mode::Biased {
                    let sums = w.sums.add(b * NR + v * LANES) as *const __m256i;
                    dot = _mm256_sub_epi32(dot, _mm256_loadu_si256(sums));
                }
                let scale = _mm256_mul_ps(_mm256_loadu_ps(s.add(v * LANES)), dx);
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, *acc);
                if F::MIN {
                    let min = _mm256_loadu_ps(s.add(NR + v * LANES));
                    *acc = _mm256_fmadd_ps(min, _mm256_broadcast_ss(&*xs.add(1)), *acc);
                }
            }
        }
    }
    acc.map(|a| std::mem::transmute::<[__m256; NV], [f32; NR]>(a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemv::tests::{data, reference};
    use crate::kernels::quant_matmul::tests::{check_bound, quantized};

    fn kernels() -> Vec<Kernel> {
        let mut all = vec![Kernel::Portable, Kernel::best()];
        all.dedup();
        all
    }

    /// Every type × kernel × shapes with ragged m (not a multiple of the tile's rows) and n
    /// (not of the panel's columns), odd block counts, several tasks: within the GEMV's error
    /// bound of the exact product, and the kernels bit-identical.
    #[test]
    fn matches_the_f64_reference_within_the_activation_bound() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
        ] {
            let mut worst = 0f64;
            for &(m, n, k) in &[
                (1usize, 1usize, 32usize),
                (9, 8, 32),
                (13, 21, 96),
                (40, 70, 160),
                (67, 19, 1024),
            ] {
                let (q, wf) = quantized(ty, n, k, 11);
                let w = QuantMatrix::new(&q, ty, n, k).unwrap();
                let bias: Vec<f32> = (0..n).map(|i| 0.3 - i as f32 * 0.01).collect();
                let x = data(m * k, m as u32 + 3);
                let want = reference(&x, &wf, Some(&bias), m, k);
                let mut first: Option<Vec<f32>> = None;
                for kernel in kernels() {
                    let mut y = vec![f32::NAN; m * n];
                    pool.install(|| gemm_on(kernel, &x, &w, Some(&bias), &mut y, m));
                    let what = format!("{ty} {kernel:?} m{m} n{n} k{k}");
                    worst = worst.max(check_bound(&y, &want, &x, &wf, m, k, &what));
                    match &first {
                        None => first = Some(y),
                        Some(f) => assert!(
                            f.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{what}: differs from the portable kernel"
                        ),
                    }
                }
            }
            println!("{ty}: largest error / Σ|x·w| {worst:.2e}");
        }
    }

    /// Blocks of extreme codes (all 0, all 15 / 31, and mixed bits) against x at ±max
    /// (codes ±127): the portable kernel checks that no product saturates and no i16 sum
    /// overflows; both kernels stay within the bound.
    #[test]
    fn extreme_codes_neither_saturate_nor_overflow() {
        let (m, k) = (5, 64);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
        ] {
            let (bb, rb) = (ty.block_bytes(), ty.row_bytes(k).unwrap());
            let fills = [0x00u8, 0xff, 0x80, 0x7f];
            let mut q = vec![0u8; fills.len() * rb];
            for (row, &fill) in q.chunks_mut(rb).zip(&fills) {
                for block in row.chunks_mut(bb) {
                    block.fill(fill);
                    // d = 1 and, where present, m = 1 (f16), so the codes are the weights.
                    block[..4].copy_from_slice(&[0x00, 0x3c, 0x00, 0x3c]);
                }
            }
            let n = fills.len();
            let mut wf = vec![0f32; n * k];
            for (src, dst) in q.chunks(rb).zip(wf.chunks_mut(k)) {
                crate::quant::dequantize_row(ty, src, dst);
            }
            let w = QuantMatrix::new(&q, ty, n, k).unwrap();
            let x: Vec<f32> = (0..m * k)
                .map(|i| match i / k {
                    0 => 1.0,
                    1 => -1.0,
                    _ => [1.0, -1.0][i % 2] * (i / k) as f32,
                })
                .collect();
            let want = reference(&x, &wf, None, m, k);
            for kernel in kernels() {
                let mut y = vec![0f32; m * n];
                gemm_on(kernel, &x, &w, None, &mut y, m);
                check_bound(&y, &want, &x, &wf, m, k, &format!("{ty} {kernel:?}"));
            }
        }
    }

    /// Without bias, the public entry; empty products.
    #[test]
    fn public_entry_without_bias_and_empty_products() {
        let (m, n, k) = (20, 16, 64);
        let (q, wf) = quantized(GgmlType::Q4_0, n, k, 4);
        let w = QuantMatrix::new(&q, GgmlType::Q4_0, n, k).unwrap();
        let x = data(m * k, 2);
        let mut y = vec![0f32; m * n];
        quant_gemm(&x, &w, None, &mut y, m);
        check_bound(
            &y,
            &reference(&x, &wf, None, m, k),
            &x,
            &wf,
            m,
            k,
            "no bias",
        );
        quant_gemm(&[], &w, None, &mut [], 0);
        let w = QuantMatrix::new(&[], GgmlType::Q4_1, 0, 64).unwrap();
        quant_gemm(&x[..64], &w, None, &mut [], 1);
    }

    #[test]
    fn non_finite_activations_poison_their_rows() {
        let (m, n, k) = (6, 9, 64);
        for ty in [GgmlType::Q4_0, GgmlType::Q5_1] {
            let (q, _) = quantized(ty, n, k, 1);
            let w = QuantMatrix::new(&q, ty, n, k).unwrap();
            for bad in [f32::NAN, f32::INFINITY] {
                let mut x = data(m * k, 2);
                x[4 * k + 3] = bad;
                for kernel in kernels() {
                    let mut y = vec![0f32; m * n];
                    gemm_on(kernel, &x, &w, None, &mut y, m);
                    for (i, row) in y.chunks(n).enumerate() {
                        let poisoned = row.iter().all(|v| !v.is_finite());
                        assert_eq!(poisoned, i == 4, "{ty} {kernel:?} row {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_fast_types_are_the_formats() {
        for ty in GgmlType::ALL {
            assert!(!has_gemm_kernel(ty) || has_format(ty), "{ty}");
        }
    }
}
