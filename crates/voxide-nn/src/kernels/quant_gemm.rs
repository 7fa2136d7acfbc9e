//! Matrix × many-rows products with ggml block-quantized weights (the encoder of a quantized
//! Whisper, a prompt's prefill): y[m][n] = Σ_k x[m][k] · w[n][k] (+ bias), w n × k in a
//! 32-value block format ([`QuantMatrix`]), x m × k and y m × n in f32, for m above
//! [`super::gemv::MAX_ROWS`] (below it [`super::quant_matmul::quant_gemv`] is the kernel).
//!
//! The technique is ggml's "repacked" GEMM (credit to its authors: `ggml_gemm_q4_0_8x8_q8_0`
//! and its siblings in `ggml-cpu/repack.cpp` and `ggml-cpu/arch/x86/repack.cpp`). The GEMV
//! reads one weight row at a time and so ends each output with a horizontal sum; here the
//! weight is repacked, once per call, into panels of [`NR`] = 8 rows (output columns)
//! interleaved so that each 32-bit lane of a vector belongs to one column:
//!
//! - per panel and 32-block, 8 groups of 4 consecutive k values; per group one 32-byte
//!   vector holding the 8 columns' 4 codes side by side (`codes`), then the 8 columns' f32
//!   block scales d and correction terms c (`scales`);
//! - codes are unsigned (Q4_0 0..15, Q5_0 0..31, Q4_1 / Q5_1 likewise) except Q8_0's signed
//!   bytes. An offset (Q4_0: w = d · (q − 8)) or a minimum (Q4_1: w = d · q + m) is the block
//!   term c · d_x · Σq_x with c = −8 · d or m, as in the GEMV.
//!
//! x is quantized once per call as in the GEMV (8-bit codes per 32-block, d_x = max|x| / 127,
//! and d_x · Σq_x), row-major, its rows padded to a multiple of [`MR`] with zeros.
//!
//! The AVX2 microkernel computes a tile of [`MR`] = 4 rows of x × 8 columns in registers. Per
//! group it loads the weights' vector once and, for each row, broadcasts x's 4 codes
//! (`vpbroadcastd`) into a `vpmaddubsw` (unsigned weight codes × signed x codes, pairs summed
//! to i16); the i16 sums of a block's groups add up in i16 as far as they cannot overflow
//! ([`Format::SUM_GROUPS`]: all 8 groups for 4-bit codes), then one `vpmaddwd` with ones
//! gives an i32 per column, and one conversion and FMA (scale d_w · d_x) per block and row
//! add it to the f32 accumulators; no horizontal sums. Q8_0's signed codes use ggml's sign
//! trick (|w| × x with w's sign), one group per i16 sum.
//!
//! Work: tasks of a chunk of rows of x ([`X_CHUNK_BYTES`] of codes, cache-resident while its
//! tiles meet every panel of the task) × a range of panels, on rayon.
//!
//! Precision: the contract of the GEMV. Integer products are exact; the only approximation is
//! x's 8-bit quantization per 32-block (see [`super::quant_matmul`]). The portable kernel does
//! the same f32 operations in the same order (fused multiply-adds), so its outputs are
//! bit-identical to the AVX2 kernel's.
//!
//! Types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 ([`has_gemm_kernel`]). The k-quants (256-value blocks
//! with 6-bit sub-scales) and the other types widen blocks of rows to f32 for a float GEMM
//! ([`super::widen_gemm::matmul_widened`]), as do all types on CPUs without a SIMD kernel
//! here (the portable kernel is a correct reference, not a fast path).

use super::gemv::OutPtr;
use super::quant_matmul::{Job, Lanes, Path, QuantMatrix, QX};
#[cfg(target_arch = "x86_64")]
use super::simd::Isa;
use super::widen_gemm::check_product;
use crate::quant::GgmlType;
use half::f16;
use rayon::prelude::*;

/// Output columns (weight rows) per panel: one i32 / f32 lane each in an AVX2 vector.
const NR: usize = 8;

/// Rows of x per tile of the microkernel: 4 f32 accumulators and 4 i16 / i32 sums, with the
/// weights, a broadcast and a product, fit AVX2's 16 registers.
const MR: usize = 4;

/// k values per group: one broadcast i32 of x's codes, one i32 lane per column.
const GROUP: usize = 4;

/// Groups per 32-block.
const GROUPS: usize = QX / GROUP;

/// Bytes of codes per panel and 32-block.
const PANEL_BLOCK: usize = NR * QX;

/// f32 per panel and 32-block: the 8 scales d, then the 8 terms c.
const PANEL_SCALES: usize = 2 * NR;

/// Bytes of x's codes per chunk of rows (a task's rows): they stay in L2 while the task's
/// panels pass, each panel's blocks in L1 while the chunk's tiles meet it.
const X_CHUNK_BYTES: usize = 128 << 10;

/// Parallel tasks per thread (enough to balance uneven tasks).
const TASKS_PER_THREAD: usize = 4;

/// Whether `ty` has a GEMM kernel here that is fast on this CPU: a 32-value block format
/// ([`Format`]) and a SIMD microkernel (AVX2). Elsewhere [`super::widen_gemm::matmul_widened`]
/// is faster.
pub fn has_gemm_kernel(ty: GgmlType) -> bool {
    has_format(ty) && Kernel::best() != Kernel::Portable
}

fn has_format(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0
    )
}

/// y (m × n) = x (m × k) · wᵀ (+ bias) for any m, on the best kernel of this CPU (panics for
/// a type without a [`Format`]; see [`has_gemm_kernel`]).
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
        GgmlType::Q8_0 => gemm::<fmt::Q8_0>(kernel, x, w, bias, y, m),
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
    check_product(x, y, bias, m, n, k);
    // The fields are public: the repacking reads rows by offset, so the size must hold.
    assert_eq!(w.data.len(), n * w.row_bytes(), "{n} rows of {} bytes", w.row_bytes());
    if m == 0 || n == 0 {
        return;
    }
    let blocks = k / QX;
    if blocks == 0 {
        for row in y.chunks_mut(n) {
            match bias {
                Some(b) => row.copy_from_slice(b),
                None => row.fill(0.0),
            }
        }
        return;
    }
    let packed = Packed::new::<F>(w);
    let xq = QuantX::new(kernel.quantize_path(), x, m, k);
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
    /// Panel p, block b, group g, column c, value j at ((p · blocks + b) · GROUPS + g) · 32 +
    /// 4c + j.
    codes: Vec<u8>,
    /// Panel p, block b: d of the 8 columns at (p · blocks + b) · 16, their c at + 8.
    scales: Vec<f32>,
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
        let (rb, bb) = (w.row_bytes(), F::TYPE.block_bytes());
        codes
            .par_chunks_mut(blocks * PANEL_BLOCK)
            .zip(scales.par_chunks_mut(blocks * PANEL_SCALES))
            .enumerate()
            .for_each(|(p, (codes, scales))| {
                for c in 0..NR.min(n - p * NR) {
                    let row = &w.data[(p * NR + c) * rb..][..rb];
                    for (b, block) in row.chunks_exact(bb).enumerate() {
                        let mut q = [0u8; QX];
                        let (d, corr) = F::decode(block, &mut q);
                        let dst = &mut codes[b * PANEL_BLOCK..][..PANEL_BLOCK];
                        for (g, four) in q.chunks_exact(GROUP).enumerate() {
                            dst[g * NR * GROUP + c * GROUP..][..GROUP].copy_from_slice(four);
                        }
                        scales[b * PANEL_SCALES + c] = d;
                        scales[b * PANEL_SCALES + NR + c] = corr;
                    }
                }
            });
        Packed {
            codes,
            scales,
            blocks,
            panels,
        }
    }
}

/// x quantized to 8-bit codes per 32-block, rows padded to a multiple of [`MR`] with zeros.
struct QuantX {
    /// Row i's codes at i · k, in k order.
    codes: Vec<i8>,
    /// Row i, block b: d_x at (i · blocks + b) · 2, d_x · Σq_x at + 1.
    scales: Vec<f32>,
    k: usize,
}

/// Rows of x per parallel task of the quantization.
const QUANTIZE_ROWS: usize = 16;

impl QuantX {
    fn new(path: Path, x: &[f32], m: usize, k: usize) -> QuantX {
        let (rows, blocks) = (m.div_ceil(MR) * MR, k / QX);
        let mut codes = vec![0i8; rows * k];
        let mut scales = vec![0f32; rows * blocks * 2];
        codes[..m * k]
            .par_chunks_mut(QUANTIZE_ROWS * k)
            .zip(scales.par_chunks_mut(QUANTIZE_ROWS * blocks * 2))
            .zip(x.par_chunks(QUANTIZE_ROWS * k))
            .for_each(|((codes, scales), x)| {
                path.run(QuantizeRows { x, codes, scales })
            });
        QuantX { codes, scales, k }
    }
}

/// Quantizes rows of x (whole 32-blocks) with [`Lanes::quantize`], on a [`Path`].
struct QuantizeRows<'a> {
    x: &'a [f32],
    codes: &'a mut [i8],
    scales: &'a mut [f32],
}

impl Job for QuantizeRows<'_> {
    type Out = ();

    #[inline(always)]
    unsafe fn run<L: Lanes>(self) {
        let blocks = self.x.len() / QX;
        let (x, q) = (self.x.as_ptr(), self.codes.as_mut_ptr());
        debug_assert!(self.codes.len() >= blocks * QX && self.scales.len() >= 2 * blocks);
        for b in 0..blocks {
            let at = b * QX;
            let (d, sum) = L::quantize(x.add(at), q.add(at), q.add(at + QX / 2));
            self.scales[2 * b] = d;
            self.scales[2 * b + 1] = d * sum as f32;
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

/// A microkernel: a tile of [`MR`] rows of x × one panel.
trait Micro {
    /// Σ over the blocks of x rows (codes at `x`, row stride k; scales at `xs`, row stride
    /// 2 · blocks) times the panel (codes at `w`, scales at `ws`), per row and column.
    ///
    /// # Safety
    /// The pointers hold [`MR`] rows of x and a panel of `blocks` blocks; the instruction set
    /// of the implementation is available.
    unsafe fn tile<F: Format>(
        x: *const i8,
        xs: *const f32,
        k: usize,
        w: *const u8,
        ws: *const f32,
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
        let wc = w.codes.as_ptr().add(p * blocks * PANEL_BLOCK);
        let ws = w.scales.as_ptr().add(p * blocks * PANEL_SCALES);
        let cols = NR.min(t.n - p * NR);
        for i in t.rows.clone().step_by(MR) {
            let x = xq.codes.as_ptr().add(i * k);
            let xs = xq.scales.as_ptr().add(i * blocks * 2);
            let tile = K::tile::<F>(x, xs, k, wc, ws, blocks);
            for (r, row) in tile.iter().enumerate().take(t.m.saturating_sub(i)) {
                let y = t.y.0.add((i + r) * t.n + p * NR);
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

/// A 32-value block format's codes and block terms.
trait Format {
    const TYPE: GgmlType;
    /// Signed codes (Q8_0), multiplied with the sign trick; else codes in 0..=[`Self::MAX`].
    const SIGNED: bool;
    /// Largest code magnitude.
    const MAX: usize;
    /// Whether blocks have a term c · d_x · Σq_x (an offset or a minimum).
    const CORR: bool;
    /// Groups whose `vpmaddubsw` pair sums (each at most 2 · MAX · 127 in magnitude) add up
    /// in i16 without overflow before the widening to i32; divides [`GROUPS`].
    const SUM_GROUPS: usize = {
        let g = i16::MAX as usize / (2 * Self::MAX * 127);
        let g = if g > GROUPS { GROUPS } else { g };
        assert!(g > 0 && GROUPS % g == 0);
        g
    };
    /// The codes of a block (ggml's layout) in k order and its (d, c): w = d · code + c.
    fn decode(block: &[u8], codes: &mut [u8; QX]) -> (f32, f32);
}

/// The formats' block layouts (`ggml-common.h`; see [`GgmlType`]).
mod fmt {
    use super::*;

    pub(super) struct Q4_0;
    pub(super) struct Q4_1;
    pub(super) struct Q5_0;
    pub(super) struct Q5_1;
    pub(super) struct Q8_0;

    fn f16_at(b: &[u8], at: usize) -> f32 {
        f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
    }

    /// Value j < 16: the low nibble of byte j; value j + 16: its high nibble.
    fn nibbles(qs: &[u8], codes: &mut [u8; QX]) {
        for (j, &q) in qs[..QX / 2].iter().enumerate() {
            codes[j] = q & 15;
            codes[j + QX / 2] = q >> 4;
        }
    }

    /// Nibbles plus the 5th bits (bit j of the word for value j).
    fn fives(qh: &[u8], qs: &[u8], codes: &mut [u8; QX]) {
        nibbles(qs, codes);
        let h = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
        for (j, c) in codes.iter_mut().enumerate() {
            *c |= ((h >> j) as u8 & 1) << 4;
        }
    }

    /// d (f16), 16 bytes of nibbles; w = d · (q − 8).
    impl Format for Q4_0 {
        const TYPE: GgmlType = GgmlType::Q4_0;
        const SIGNED: bool = false;
        const MAX: usize = 15;
        const CORR: bool = true;
        fn decode(b: &[u8], codes: &mut [u8; QX]) -> (f32, f32) {
            nibbles(&b[2..], codes);
            let d = f16_at(b, 0);
            (d, -8.0 * d)
        }
    }

    /// d, m (f16), nibbles; w = d · q + m.
    impl Format for Q4_1 {
        const TYPE: GgmlType = GgmlType::Q4_1;
        const SIGNED: bool = false;
        const MAX: usize = 15;
        const CORR: bool = true;
        fn decode(b: &[u8], codes: &mut [u8; QX]) -> (f32, f32) {
            nibbles(&b[4..], codes);
            (f16_at(b, 0), f16_at(b, 2))
        }
    }

    /// d (f16), the 5th bits (u32), nibbles; w = d · (q − 16).
    impl Format for Q5_0 {
        const TYPE: GgmlType = GgmlType::Q5_0;
        const SIGNED: bool = false;
        const MAX: usize = 31;
        const CORR: bool = true;
        fn decode(b: &[u8], codes: &mut [u8; QX]) -> (f32, f32) {
            fives(&b[2..], &b[6..], codes);
            let d = f16_at(b, 0);
            (d, -16.0 * d)
        }
    }

    /// d, m (f16), the 5th bits, nibbles; w = d · q + m.
    impl Format for Q5_1 {
        const TYPE: GgmlType = GgmlType::Q5_1;
        const SIGNED: bool = false;
        const MAX: usize = 31;
        const CORR: bool = true;
        fn decode(b: &[u8], codes: &mut [u8; QX]) -> (f32, f32) {
            fives(&b[4..], &b[8..], codes);
            (f16_at(b, 0), f16_at(b, 2))
        }
    }

    /// d (f16), 32 signed bytes; w = d · q. |q| ≤ 128 (the sign trick's unsigned |q|).
    impl Format for Q8_0 {
        const TYPE: GgmlType = GgmlType::Q8_0;
        const SIGNED: bool = true;
        const MAX: usize = 128;
        const CORR: bool = false;
        fn decode(b: &[u8], codes: &mut [u8; QX]) -> (f32, f32) {
            codes.copy_from_slice(&b[2..2 + QX]);
            (f16_at(b, 0), 0.0)
        }
    }
}

/// The reference microkernel: the AVX2 kernel's arithmetic, an element at a time.
struct Portable;

impl Micro for Portable {
    #[inline(always)]
    unsafe fn tile<F: Format>(
        x: *const i8,
        xs: *const f32,
        k: usize,
        w: *const u8,
        ws: *const f32,
        blocks: usize,
    ) -> [[f32; NR]; MR] {
        let mut acc = [[0f32; NR]; MR];
        for b in 0..blocks {
            let wq = std::slice::from_raw_parts(w.add(b * PANEL_BLOCK), PANEL_BLOCK);
            let s = std::slice::from_raw_parts(ws.add(b * PANEL_SCALES), PANEL_SCALES);
            for (r, acc) in acc.iter_mut().enumerate() {
                let xq = std::slice::from_raw_parts(x.add(r * k + b * QX), QX);
                let (d, ds) = (*xs.add((r * blocks + b) * 2), *xs.add((r * blocks + b) * 2 + 1));
                for (c, acc) in acc.iter_mut().enumerate() {
                    let dot: i32 = xq
                        .iter()
                        .enumerate()
                        .map(|(j, &q)| {
                            let code = wq[j / GROUP * NR * GROUP + c * GROUP + j % GROUP];
                            let code = if F::SIGNED { code as i8 as i32 } else { code as i32 };
                            code * q as i32
                        })
                        .sum();
                    *acc = (dot as f32).mul_add(s[c] * d, *acc);
                    if F::CORR {
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

/// AVX2: the tile's 4 × 8 accumulators in 4 registers.
#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Micro for Avx2 {
    #[inline(always)]
    unsafe fn tile<F: Format>(
        x: *const i8,
        xs: *const f32,
        k: usize,
        w: *const u8,
        ws: *const f32,
        blocks: usize,
    ) -> [[f32; NR]; MR] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); MR];
        for b in 0..blocks {
            let (wq, xb) = (w.add(b * PANEL_BLOCK), x.add(b * QX));
            let mut dot = [_mm256_setzero_si256(); MR];
            for h in 0..GROUPS / F::SUM_GROUPS {
                let mut pairs = [_mm256_setzero_si256(); MR];
                for g in h * F::SUM_GROUPS..(h + 1) * F::SUM_GROUPS {
                    let wv = _mm256_loadu_si256(wq.add(g * NR * GROUP) as *const __m256i);
                    let wu = if F::SIGNED {
                        _mm256_sign_epi8(wv, wv)
                    } else {
                        wv
                    };
                    for (r, pairs) in pairs.iter_mut().enumerate() {
                        let four = (xb.add(r * k + g * GROUP) as *const i32).read_unaligned();
                        let xv = _mm256_set1_epi32(four);
                        let xv = if F::SIGNED {
                            _mm256_sign_epi8(xv, wv)
                        } else {
                            xv
                        };
                        // No saturation: |pair| ≤ 2 · MAX · 127 ≤ i16::MAX.
                        *pairs = _mm256_add_epi16(*pairs, _mm256_maddubs_epi16(wu, xv));
                    }
                }
                for (dot, pairs) in dot.iter_mut().zip(pairs) {
                    *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(pairs, ones));
                }
            }
            let s = ws.add(b * PANEL_SCALES);
            let (d, corr) = (_mm256_loadu_ps(s), _mm256_loadu_ps(s.add(NR)));
            for (r, (acc, dot)) in acc.iter_mut().zip(dot).enumerate() {
                let xs = xs.add((r * blocks + b) * 2);
                let scale = _mm256_mul_ps(d, _mm256_broadcast_ss(&*xs));
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, *acc);
                if F::CORR {
                    *acc = _mm256_fmadd_ps(corr, _mm256_broadcast_ss(&*xs.add(1)), *acc);
                }
            }
        }
        acc.map(|a| std::mem::transmute::<__m256, [f32; NR]>(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemv::tests::{data, reference};
    use crate::kernels::quant_matmul::tests::{check_bound, quantized};

    fn kernels() -> Vec<Kernel> {
        let mut all = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        if Isa::Avx2.is_available() {
            all.push(Kernel::Avx2);
        }
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
            GgmlType::Q8_0,
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

    /// Without bias, the public entry; empty products.
    #[test]
    fn public_entry_without_bias_and_empty_products() {
        let (m, n, k) = (20, 16, 64);
        let (q, wf) = quantized(GgmlType::Q4_0, n, k, 4);
        let w = QuantMatrix::new(&q, GgmlType::Q4_0, n, k).unwrap();
        let x = data(m * k, 2);
        let mut y = vec![0f32; m * n];
        quant_gemm(&x, &w, None, &mut y, m);
        check_bound(&y, &reference(&x, &wf, None, m, k), &x, &wf, m, k, "no bias");
        quant_gemm(&[], &w, None, &mut [], 0);
        let w = QuantMatrix::new(&[], GgmlType::Q8_0, 0, 64).unwrap();
        quant_gemm(&x[..64], &w, None, &mut [], 1);
    }

    #[test]
    fn non_finite_activations_poison_their_rows() {
        let (m, n, k) = (6, 9, 64);
        for ty in [GgmlType::Q4_0, GgmlType::Q8_0] {
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
