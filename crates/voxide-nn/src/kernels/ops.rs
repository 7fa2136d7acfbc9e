//! candle operations over the narrow-weight and block-quantized kernels: the products
//! ([`super::gemv`], [`super::small_m`], [`super::quant_matmul`], [`super::quant_gemm`],
//! [`super::widen_gemm`]) and
//! the widening to f32 ([`super::convert`], [`crate::quant::dequantize_row`]).
//!
//! Narrow weights are candle tensors of dtype F16, BF16, or U8 holding the bytes of int8
//! values (candle has no i8 dtype) with a separate F32 tensor of per-row scales.
//! Block-quantized weights are U8 tensors (n, row bytes) holding ggml blocks as stored in
//! GGUF / ggml files, their [`GgmlType`] a parameter of the op.

use super::gemv::{gemv, WeightMatrix, MAX_ROWS};
use super::machine::Residency;
use super::quant_gemm::{has_gemm_kernel, quant_gemm};
use super::quant_matmul::{quant_gemv, QuantMatrix};
use super::simd::{isa_entries, Isa, Simd, WeightElem};
use super::small_m::{
    amx_int8_tiles, f16_tiles, f16_tiles_fit, integer_int8, integer_int8_on_512_bits,
    matmul_f16_tiles, matmul_rows_alike, matmul_small, native_bf16, small_m_max_rows,
};
use super::softmax::exp_non_positive;
use super::widen_gemm::{matmul_widened, WidenRows};
use crate::quant::GgmlType;
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};

type Operand<'a> = (&'a CpuStorage, &'a Layout);

pub(crate) fn contiguous<'a, T>(name: &str, v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{name}: needs contiguous inputs"),
    }
}

/// The bytes of an int8 matrix stored as U8.
fn as_i8(v: &[u8]) -> &[i8] {
    // SAFETY: u8 and i8 have the same size and alignment, and every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const i8, v.len()) }
}

/// The f32 activations x (m, k) of a product, with m and k.
fn activations<'a>(name: &str, x: Operand<'a>) -> Result<(&'a [f32], usize, usize)> {
    let (m, k) = x.1.shape().dims2()?;
    let CpuStorage::F32(xs) = x.0 else {
        candle_core::bail!("{name}: takes f32 activations");
    };
    Ok((contiguous(name, xs, x.1)?, m, k))
}

/// A product's F32 epilogue operand: `parts` vectors of n values (none without the operand).
fn epilogue<'a>(name: &str, e: Option<Operand<'a>>, parts: usize, n: usize) -> Result<&'a [f32]> {
    match e {
        None if parts == 0 => Ok(&[]),
        Some((CpuStorage::F32(v), l)) if l.shape().elem_count() == parts * n => {
            contiguous(name, v, l)
        }
        _ => candle_core::bail!("{name}: needs an f32 epilogue of {parts} × {n} values"),
    }
}

/// The whole of w as an f32 (n, k) tensor.
fn widened(w: &impl WidenRows) -> (CpuStorage, Shape) {
    // On huge pages where large: weights widened at load are streamed by the decoder.
    let mut out = super::machine::huge_page_vec_filled(w.rows() * w.cols(), 0f32);
    w.widen(0, w.rows(), &mut out);
    (CpuStorage::F32(out), Shape::from((w.rows(), w.cols())))
}

/// A narrow weight operand as the kernels read it.
enum Narrow<'a> {
    F16(WeightMatrix<'a, half::f16>),
    Bf16(WeightMatrix<'a, half::bf16>),
    I8(WeightMatrix<'a, i8>),
}

impl<'a> Narrow<'a> {
    fn new(name: &str, w: Operand<'a>, scales: Option<&'a [f32]>) -> Result<Self> {
        let (n, k) = w.1.shape().dims2()?;
        Ok(match (w.0, scales) {
            (CpuStorage::F16(v), None) => Narrow::F16(WeightMatrix::new(contiguous(name, v, w.1)?, n, k)),
            (CpuStorage::BF16(v), None) => {
                Narrow::Bf16(WeightMatrix::new(contiguous(name, v, w.1)?, n, k))
            }
            (CpuStorage::U8(v), Some(s)) if s.len() == n => Narrow::I8(WeightMatrix::with_scales(
                as_i8(contiguous(name, v, w.1)?),
                s,
                n,
                k,
            )),
            _ => candle_core::bail!(
                "{name}: weights must be f16, bf16, or u8 (int8 bytes) with {n} f32 scales, got {:?}",
                w.0.dtype()
            ),
        })
    }
}

/// Most rows of x an int8 product runs through the GEMV, in chunks of [`MAX_ROWS`]. The integer
/// GEMV's cost grows with the rows (x's int16 codes against each widened weight) and the
/// small-M kernel's with its panels of 2 vectors of rows (16 on AVX2, 32 on AVX-512), so a
/// prompt of 9–16 positions is mostly padding there: AMD EPYC Zen 3, 2 threads, int8 9216 ×
/// 3072 at m = 9: 3.8 ms in chunks against 7.0 ms (3072 × 1024: 0.45 against 0.72), level at
/// m = 16–24, small-M ahead from m = 32 (PERFORMANCE.md #72). With the integer small-M kernel
/// on AVX2 (#152) the crossover stays here: on the same kind, Qwen3-TTS and Voxtral shapes, the
/// GEMV in chunks ahead at m = 9–13, level at 14–15, the integer kernel 1.0–1.4× ahead at 16.
pub const INT8_GEMV_MAX_ROWS: usize = 2 * MAX_ROWS;

/// The same cap where the small-M kernel multiplies int8 in integers on 512-bit vectors
/// ([`integer_int8_on_512_bits`]), from m = 12 on as fast or faster than the GEMV in chunks:
/// AMD EPYC Zen 5, 2 threads, 9216 × 3072 at m = 12: 1.80–1.90 against 2.27–2.37 ms, at
/// m = 16: 1.89 against 3.11; 1024 × 3072 at m = 12: 0.26 against 0.28; at m = 9–11 level or
/// behind. On 256-bit AVX-VNNI the crossover stays at ~16 rows (the same machine on its AVX2
/// paths: m = 12 2.90 against 2.53 ms, m = 16 2.96 against 3.23; PERFORMANCE.md #115, #117).
const INT8_GEMV_MAX_ROWS_INTEGER_SMALL_M: usize = 11;

/// Most rows of x an int8 product runs through the GEMV on this CPU. On AMX tiles
/// ([`amx_int8_tiles`]) the integer product overtakes the GEMV in chunks at fewer rows still:
/// Emerald Rapids, 2 threads, 9216 × 3072 at m = 9: 1.46–1.59 ms against 2.95–3.59, 3072 ×
/// 1024 0.17–0.27 against 0.34–0.91 (PERFORMANCE.md #187), so there the GEMV keeps only the
/// rows it reads in one pass ([`MAX_ROWS`]), which a decoder's steps need (x to ~15 bits).
pub fn int8_gemv_max_rows() -> usize {
    if amx_int8_tiles() {
        MAX_ROWS
    } else if integer_int8_on_512_bits() {
        INT8_GEMV_MAX_ROWS_INTEGER_SMALL_M
    } else {
        INT8_GEMV_MAX_ROWS
    }
}

/// candle op: x (m, k) f32 × w (n, k) narrow → (m, n) f32, any m: the GEMV up to
/// [`MAX_ROWS`] (int8: [`int8_gemv_max_rows`]), the small-M kernel up to
/// [`small_m_max_rows`] (int8 on the integer kernel: any m), beyond a GEMM on blocks of widened
/// weight rows ([`matmul_widened`]); where the layer's [`ManyRows`] lets them, on
/// [`matmul_rows_alike`] (bf16 dot products).
/// With a third operand, an F32 epilogue tensor: `[scales (n) if int8][bias (n) if biased]`.
/// f32 weights are taken too, for a decoder step's few rows ([`Linear`](crate::Linear) sends
/// them here only then): the GEMV's planned residency and streamed reads serve them as they
/// serve narrow ones, where candle's matmul reads an f32 matrix × one vector at ~half the
/// bandwidth (PERFORMANCE.md #108).
#[derive(Clone, Copy, Debug)]
pub struct NarrowMatmul {
    pub int8: bool,
    pub bias: bool,
    /// How the GEMV reads the weight (None: the matrix's own default).
    pub residency: Option<Residency>,
    /// Which kernels products of several rows may take.
    pub rows: ManyRows,
}

/// How a layer's products of several rows may round x: set by the model, from what its
/// reference computes and how its inputs come ([`Linear`](crate::Linear)'s setters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ManyRows {
    /// bf16 weights multiply x whole at any row count (Qwen3-TTS, whose reference computes
    /// in f32 and whose parity is on bf16 weights).
    #[default]
    KeepX,
    /// Products of more rows than a decoder step's (a prompt) take bf16 dot products where the
    /// CPU has them (x rounded to bf16, as the bf16 reference's matmuls do; ~1.8× the f32
    /// rate, PERFORMANCE.md #162); a step's rows keep x whole on the GEMV, which memory bounds.
    Bf16Prompts,
    /// Every product on the kernels of many rows, at any row count, so that a row's result
    /// does not depend on the block it came in (an encoder's, whose blocks a stream's chunking
    /// sets): bf16 dot products, int8's integer kernel.
    Alike,
}

impl NarrowMatmul {
    /// y = x · wᵀ (+ bias) on the kernel for m rows of x (see the type's documentation).
    fn product<E: WeightElem>(
        &self,
        x: &[f32],
        w: &WeightMatrix<E>,
        bias: Option<&[f32]>,
        y: &mut [f32],
        m: usize,
    ) {
        // Rows alike in a block of any size: the kernels of many rows that round x otherwise
        // than the GEMV (int8 on the integer kernel, bf16 on bf16 dot products) take any m;
        // a prompt's rows, bf16 dot products. (Checked only for such layers: a plain decoder
        // step's products skip it.)
        let int8 = E::as_int8(w.data).is_some();
        let bf16_dot = || E::as_bf16(w.data).is_some() && native_bf16();
        let rows_alike = match self.rows {
            ManyRows::KeepX => false,
            ManyRows::Bf16Prompts => m > MAX_ROWS && bf16_dot(),
            ManyRows::Alike => {
                (int8 && integer_int8())
                    || bf16_dot()
                    || (E::as_f16(w.data).is_some() && f16_tiles_fit(w.cols))
            }
        };
        let w_gemv = self.residency.map_or(*w, |r| w.with_residency(r));
        if rows_alike {
            matmul_rows_alike(x, w, bias, y, m)
        } else if m <= MAX_ROWS {
            gemv(x, &w_gemv, bias, y, m)
        } else if m <= int8_gemv_max_rows() && int8 {
            let (n, k) = (w.rows, w.cols);
            for (xc, yc) in x.chunks(MAX_ROWS * k).zip(y.chunks_mut(MAX_ROWS * n)) {
                gemv(xc, &w_gemv, bias, yc, xc.len() / k)
            }
        } else if let Some(data) = E::as_f16(w.data).filter(|_| f16_tiles(m, w.cols)) {
            matmul_f16_tiles(x, &w.as_elements(data), bias, y, m)
        } else if m <= small_m_max_rows() || (int8 && integer_int8()) {
            matmul_small(x, w, bias, y, m)
        } else {
            matmul_widened(x, w, bias, y, m)
        }
    }

    fn run(
        &self,
        x: Operand,
        w: Operand,
        epilogue_op: Option<Operand>,
    ) -> Result<(CpuStorage, Shape)> {
        const NAME: &str = "narrow-matmul";
        let (xs, m, k) = activations(NAME, x)?;
        let (n, k2) = w.1.shape().dims2()?;
        if k != k2 {
            candle_core::bail!(
                "{NAME}: x {:?} and w {:?} do not fit",
                x.1.shape(),
                w.1.shape()
            );
        }
        let parts = self.int8 as usize + self.bias as usize;
        let epi = epilogue(NAME, epilogue_op, parts, n)?;
        let scales = self.int8.then(|| &epi[..n]);
        let bias = self.bias.then(|| &epi[epi.len() - n..]);
        let mut y = vec![0f32; m * n];
        match (w.0, scales) {
            (CpuStorage::F32(v), None) => {
                let w = WeightMatrix::new(contiguous(NAME, v, w.1)?, n, k);
                self.product(xs, &w, bias, &mut y, m)
            }
            _ => match Narrow::new(NAME, w, scales)? {
                Narrow::F16(w) => self.product(xs, &w, bias, &mut y, m),
                Narrow::Bf16(w) => self.product(xs, &w, bias, &mut y, m),
                Narrow::I8(w) => self.product(xs, &w, bias, &mut y, m),
            },
        }
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }
}

impl CustomOp2 for NarrowMatmul {
    fn name(&self) -> &'static str {
        "narrow-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }
}

impl CustomOp3 for NarrowMatmul {
    fn name(&self) -> &'static str {
        "narrow-matmul-epilogue"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), Some((s3, l3)))
    }
}

/// `t` as `dtype`, contiguous. On the CPU, f16 and bf16 to f32 by the crate's widening kernel
/// on all threads ([`WidenToF32`]), and f32 to f16 or bf16 by half's slice conversions (F16C
/// where the CPU has it, detected at run time; `narrowed`); the rest by candle, which
/// converts one element at a time, f16 in software unless built with F16C (a K/V window
/// widened per layer was ~3 % of Voxtral Realtime's encoder, the new K/V narrowed for the
/// cache ~1.5 %; at load, Whisper small's f16 from its f32 checkpoint took 0.35 s,
/// PERFORMANCE.md #142).
pub fn to_dtype_contiguous(t: &Tensor, dtype: DType) -> Result<Tensor> {
    use half::slice::HalfFloatSliceExt;
    match (t.dtype(), dtype) {
        _ if !t.device().is_cpu() => t.to_dtype(dtype)?.contiguous(),
        (DType::F32, DType::F16) => {
            narrowed(t, |s, d: &mut [half::f16]| d.convert_from_f32_slice(s))
        }
        (DType::F32, DType::BF16) => {
            narrowed(t, |s, d: &mut [half::bf16]| d.convert_from_f32_slice(s))
        }
        (DType::F16 | DType::BF16, DType::F32) => {
            let dims = t.dims().to_vec();
            let cols = dims.last().copied().unwrap_or(1).max(1);
            t.contiguous()?
                .reshape((t.elem_count() / cols, cols))?
                .apply_op1_no_bwd(&WidenToF32)?
                .reshape(dims)
        }
        _ => t.to_dtype(dtype)?.contiguous(),
    }
}

/// The f32 tensor `t` narrowed to D by `convert` (equal-length slices) into a contiguous
/// tensor: in parallel chunks of [`NARROW_CHUNK`] values where there is more than one (a
/// checkpoint's matrices at load), each through a small buffer in L1 into the uninitialised
/// output, on huge pages where it is large; a K/V step's few values on the calling thread.
fn narrowed<D>(t: &Tensor, convert: impl Fn(&[f32], &mut [D]) + Sync) -> Result<Tensor>
where
    D: candle_core::WithDType + Default,
{
    use rayon::prelude::*;
    const BUFFER: usize = 1024;
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("narrowed: a CPU tensor expected");
    };
    let src = contiguous_f32("narrowed", cpu, layout)?;
    let mut dst: Vec<D> = super::machine::huge_page_vec(src.len());
    let fill = |dst: &mut [std::mem::MaybeUninit<D>], src: &[f32]| {
        let mut buf = [D::default(); BUFFER];
        for (dst, src) in dst.chunks_mut(BUFFER).zip(src.chunks(BUFFER)) {
            let buf = &mut buf[..src.len()];
            convert(src, buf);
            for (out, v) in dst.iter_mut().zip(buf.iter()) {
                out.write(*v);
            }
        }
    };
    let out = &mut dst.spare_capacity_mut()[..src.len()];
    if src.len() > NARROW_CHUNK {
        out.par_chunks_mut(NARROW_CHUNK)
            .zip(src.par_chunks(NARROW_CHUNK))
            .for_each(|(dst, src)| fill(dst, src));
    } else {
        fill(out, src);
    }
    // SAFETY: `fill` wrote each of the first src.len() elements once.
    unsafe { dst.set_len(src.len()) };
    Tensor::from_vec(dst, t.shape(), t.device())
}

/// Values per parallel task of [`narrowed`].
const NARROW_CHUNK: usize = 1 << 16;

/// candle op: a narrow weight (n, k) → f32 (n, k), on all threads; int8 takes its scales (n)
/// as the second operand.
#[derive(Clone, Copy, Debug)]
pub struct WidenToF32;

impl WidenToF32 {
    fn run(&self, w: Operand, scales: Option<Operand>) -> Result<(CpuStorage, Shape)> {
        const NAME: &str = "widen-to-f32";
        let scales = match scales {
            None => None,
            Some((CpuStorage::F32(s), l)) => Some(contiguous(NAME, s, l)?),
            Some(_) => candle_core::bail!("{NAME}: scales must be f32"),
        };
        Ok(match Narrow::new(NAME, w, scales)? {
            Narrow::F16(w) => widened(&w),
            Narrow::Bf16(w) => widened(&w),
            Narrow::I8(w) => widened(&w),
        })
    }
}

impl CustomOp1 for WidenToF32 {
    fn name(&self) -> &'static str {
        "widen-to-f32"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run((s, l), None)
    }
}

impl CustomOp2 for WidenToF32 {
    fn name(&self) -> &'static str {
        "dequantize-int8"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), Some((s2, l2)))
    }
}

/// A U8 tensor (n, row bytes) of ggml blocks of `ty` as a matrix of n rows of `cols` values.
fn quant_operand<'a>(
    name: &str,
    ty: GgmlType,
    w: Operand<'a>,
    cols: usize,
) -> Result<QuantMatrix<'a>> {
    let (n, row_bytes) = w.1.shape().dims2()?;
    let CpuStorage::U8(v) = w.0 else {
        candle_core::bail!(
            "{name}: {ty} weights must be u8 bytes, got {:?}",
            w.0.dtype()
        );
    };
    if ty.row_bytes(cols) != Some(row_bytes) {
        candle_core::bail!("{name}: rows of {row_bytes} bytes are not {cols} {ty} values");
    }
    QuantMatrix::new(contiguous(name, v, w.1)?, ty, n, cols)
        .map_err(|e| candle_core::Error::Msg(format!("{name}: {e}")))
}

/// candle op: x (m, k) f32 × w (n, row bytes) U8 of ggml blocks of `ty` → (m, n) f32: the
/// integer GEMV ([`quant_gemv`]) up to [`MAX_ROWS`], beyond the integer GEMM on repacked
/// weights ([`quant_gemm`]) where this CPU has its SIMD kernel for the type
/// ([`has_gemm_kernel`]), else a GEMM on blocks of dequantized weight rows
/// ([`matmul_widened`]). With a third operand, the F32 bias (n).
#[derive(Clone, Copy, Debug)]
pub struct QuantMatmul {
    pub ty: GgmlType,
    pub bias: bool,
    /// How the GEMV reads the weight (None: the matrix's own default).
    pub residency: Option<Residency>,
}

impl QuantMatmul {
    fn run(&self, x: Operand, w: Operand, bias: Option<Operand>) -> Result<(CpuStorage, Shape)> {
        const NAME: &str = "quant-matmul";
        let (xs, m, k) = activations(NAME, x)?;
        let w = quant_operand(NAME, self.ty, w, k)?;
        let n = w.rows;
        let bias = self
            .bias
            .then_some(epilogue(NAME, bias, self.bias as usize, n)?);
        let mut y = vec![0f32; m * n];
        if m <= MAX_ROWS {
            let w = self.residency.map_or(w, |r| w.with_residency(r));
            quant_gemv(xs, &w, bias, &mut y, m)
        } else if has_gemm_kernel(self.ty) {
            quant_gemm(xs, &w, bias, &mut y, m)
        } else {
            matmul_widened(xs, &w, bias, &mut y, m)
        }
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }
}

impl CustomOp2 for QuantMatmul {
    fn name(&self) -> &'static str {
        "quant-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }
}

impl CustomOp3 for QuantMatmul {
    fn name(&self) -> &'static str {
        "quant-matmul-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), Some((s3, l3)))
    }
}

/// candle op: a U8 tensor (n, row bytes) of ggml blocks of `ty` → its values as f32 (n, k),
/// on all threads (exactly ggml's dequantization).
#[derive(Clone, Copy, Debug)]
pub struct DequantizeToF32 {
    pub ty: GgmlType,
}

impl CustomOp1 for DequantizeToF32 {
    fn name(&self) -> &'static str {
        "dequantize-to-f32"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, row_bytes) = l.shape().dims2()?;
        let (values, bytes) = (self.ty.block_size(), self.ty.block_bytes());
        if row_bytes % bytes != 0 {
            candle_core::bail!(
                "{}: rows of {row_bytes} bytes are not whole {} blocks",
                self.name(),
                self.ty
            );
        }
        let cols = row_bytes / bytes * values;
        Ok(widened(&quant_operand(self.name(), self.ty, (s, l), cols)?))
    }
}

/// The elements of a contiguous f32 tensor.
pub(crate) fn contiguous_f32<'a>(name: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match s {
        CpuStorage::F32(v) => contiguous(name, v, l),
        _ => candle_core::bail!("{name}: takes f32, got {:?}", s.dtype()),
    }
}

/// The elements of a contiguous f32 tensor, for an in-place op.
pub(crate) fn contiguous_f32_mut<'a>(
    name: &str,
    s: &'a mut CpuStorage,
    l: &Layout,
) -> Result<&'a mut [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{name}: needs a contiguous tensor");
    };
    match s {
        CpuStorage::F32(v) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("{name}: takes f32, got {:?}", s.dtype()),
    }
}

/// candle op: softmax over the last dimension of a contiguous f32 tensor, in place, with the
/// vectorised exponential ([`super::softmax`]).
#[derive(Clone, Copy, Debug)]
pub struct SoftmaxLastDimInPlace;

impl candle_core::InplaceOp1 for SoftmaxLastDimInPlace {
    fn name(&self) -> &'static str {
        "softmax-last-dim-in-place"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let cols = l.dims().last().copied().unwrap_or(1);
        super::softmax::softmax_rows(contiguous_f32_mut(self.name(), s, l)?, cols);
        Ok(())
    }
}

/// candle op: exact (erf) GELU of a contiguous f32 tensor, in place (an encoder MLP's hidden
/// activations are the largest tensor of its pass: 1500 × 1536 f32 for Whisper tiny; a second
/// copy for the GELU output was the pass's peak memory), on all threads with a branch-free erf
/// that vectorises (`gelu_erf_row`).
#[derive(Clone, Copy, Debug)]
pub struct GeluErfInPlace;

impl candle_core::InplaceOp1 for GeluErfInPlace {
    fn name(&self) -> &'static str {
        "gelu-erf-in-place"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        /// Elements per parallel task.
        const CHUNK: usize = 1 << 14;
        use rayon::prelude::*;
        let isa = Isa::detect();
        contiguous_f32_mut(self.name(), s, l)?
            .par_chunks_mut(CHUNK)
            .for_each(|c| gelu_erf_row(isa, c));
        Ok(())
    }
}

/// candle op: exact (erf) GELU of a contiguous f32 tensor into a new one, on all threads with
/// the vectorised erf (`gelu_erf_row`).
#[derive(Clone, Copy, Debug)]
pub struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        /// Elements per parallel task.
        const CHUNK: usize = 1 << 14;
        use rayon::prelude::*;
        let mut y = contiguous_f32(self.name(), s, l)?.to_vec();
        let isa = Isa::detect();
        y.par_chunks_mut(CHUNK).for_each(|c| gelu_erf_row(isa, c));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7): 1 − t·p(t)·exp(−x²) with
/// t = 1 / (1 + 0.3275911·|x|), the sign restored. PyTorch's vectorised CPU `erf` (ATen's
/// `Vectorized<float>::erf`) takes the same form, so the references' GELU rounds alike. It has
/// no branch and no call, so loops over it vectorise; libm's `erff` (candle's `gelu_erf`)
/// branches by magnitude and took 8–9 ns a value on two Zen 4 cores where |x| > 0.84.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        1.061_405_4,
        -1.453_152,
        1.421_413_7,
        -0.284_496_74,
        0.254_829_6,
    ];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = A[1..].iter().fold(A[0], |p, &c| p * t + c) * t;
    (1.0 - poly * exp_non_positive(-a * a)).copysign(x)
}

isa_entries! {
    /// x ← x · (1 + erf(x / √2)) / 2 over a row.
    pub(crate) fn gelu_erf_row<>(x: &mut [f32]) => gelu_erf_body
}

#[inline(always)]
unsafe fn gelu_erf_body<S: Simd>(x: &mut [f32]) {
    for x in x.iter_mut() {
        *x = (erf(*x * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * *x;
    }
}

/// Runs `row(y, x)` for each row of `y` (`y_width` values) and the matching row of `x`
/// (`x_width`), on rayon in tasks of at least 16 K output values, so that a decoder step's
/// rows run at once on the calling thread.
fn rows_in_parallel(
    y: &mut [f32],
    y_width: usize,
    x: &[f32],
    x_width: usize,
    row: impl Fn(&mut [f32], &[f32]) + Sync + Send,
) {
    use rayon::prelude::*;
    const TASK_VALUES: usize = 1 << 14;
    if y_width == 0 || x_width == 0 {
        return;
    }
    y.par_chunks_mut(y_width)
        .zip(x.par_chunks(x_width))
        .with_min_len(TASK_VALUES / y_width + 1)
        .for_each(|(y, x)| row(y, x));
}

/// candle op: the SwiGLU product silu(g) · u of a contiguous f32 (..., 2h) tensor holding
/// [gate; up] side by side ([`crate::linear::LinearStack`]) → (..., h), in one vectorised pass
/// with the crate's polynomial eˣ (relative error ~2e-7). candle's SiLU calls libm's expf per
/// element (~9 µs for a 3072-wide decoder step, ten times the rest of the product), then the
/// multiply is a second pass.
#[derive(Clone, Copy, Debug)]
pub struct SiluMul;

isa_entries! {
    /// One row: y[j] = silu(g[j]) · u[j].
    fn silu_mul_row<>(g: &[f32], u: &[f32], y: &mut [f32]) => silu_mul_body
}

#[inline(always)]
unsafe fn silu_mul_body<S: Simd>(g: &[f32], u: &[f32], y: &mut [f32]) {
    for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
        // σ(g) from e^(−|g|) ≤ 1, which never overflows: 1 / (1 + e) for g ≥ 0, e / (1 + e) below.
        let e = exp_non_positive(-g.abs());
        let s = 1.0 / (1.0 + e);
        let sigma = if g >= 0.0 { s } else { e * s };
        *y = g * sigma * u;
    }
}

impl CustomOp1 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("silu-mul", s, l)?;
        let mut dims = l.dims().to_vec();
        let width = dims.pop().unwrap_or(0);
        if !width.is_multiple_of(2) {
            candle_core::bail!("silu-mul: the last dimension ({width}) must hold gate and up");
        }
        let h = width / 2;
        dims.push(h);
        let mut y = vec![0f32; x.len() / 2];
        let isa = Isa::detect();
        rows_in_parallel(&mut y, h, x, width, |y, x| {
            let (g, u) = x.split_at(h);
            silu_mul_row(isa, g, u, y);
        });
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}

/// candle op: RMSNorm over the last dimension of a contiguous f32 tensor, y = x / √(mean(x²) +
/// ε) · α (candle's formula), with the sum of squares in 16 independent lanes. candle's own op
/// sums each row in one dependent chain (~1 µs for a 1024-wide row); a Qwen3-TTS 0.6B talker
/// step runs 112 norms, 2.4 % of the step (PERFORMANCE.md, "The next matrix warmed").
#[derive(Clone, Copy, Debug)]
pub struct RmsNormOp {
    pub eps: f32,
}

/// Lanes of the sum of squares: independent chains the compiler vectorises.
const RMS_LANES: usize = 16;

isa_entries! {
    /// One row: y = x / √(mean(x²) + ε) · α.
    pub(crate) fn rms_norm_row<>(x: &[f32], alpha: &[f32], eps: f32, y: &mut [f32]) => rms_norm_body
}

#[inline(always)]
unsafe fn rms_norm_body<S: Simd>(x: &[f32], alpha: &[f32], eps: f32, y: &mut [f32]) {
    let mut lanes = [0f32; RMS_LANES];
    let blocks = x.chunks_exact(RMS_LANES);
    let tail = blocks.remainder();
    for block in blocks {
        for (acc, &v) in lanes.iter_mut().zip(block) {
            *acc += v * v;
        }
    }
    for (acc, &v) in lanes.iter_mut().zip(tail) {
        *acc += v * v;
    }
    let sum: f32 = lanes.iter().sum();
    let m = (sum / x.len() as f32 + eps).sqrt();
    for ((y, &x), &a) in y.iter_mut().zip(x).zip(alpha) {
        *y = x / m * a;
    }
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("rms-norm", s1, l1)?;
        let alpha = contiguous_f32("rms-norm", s2, l2)?;
        let width = l1.dims().last().copied().unwrap_or(0);
        if alpha.len() != width {
            candle_core::bail!("rms-norm: {} weights for rows of {width}", alpha.len());
        }
        let mut y = vec![0f32; x.len()];
        let isa = Isa::detect();
        rows_in_parallel(&mut y, width, x, width, |y, x| {
            rms_norm_row(isa, x, alpha, self.eps, y)
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
}

/// sin²(x) in f32 without libm (its sign is not needed): Cody-Waite reduction by π in three
/// parts (the first two exact for |x / π| < 2¹²), then an odd minimax polynomial on
/// [−π/2, π/2]. |error| ≤ 2.6e-7 for |x| ≤ 60 (measured against f64); branch-free and
/// call-free, so loops of it vectorise.
#[inline(always)]
pub fn sin_squared(x: f32) -> f32 {
    const PI_A: f32 = 3.140625;
    const PI_B: f32 = 9.675_026e-4;
    const PI_C: f32 = 1.509_958e-7;
    const S: [f32; 5] = [
        -0.166_666_67,
        0.008_333_333,
        -1.984_108_7e-4,
        2.753_647_8e-6,
        -2.408_046e-8,
    ];
    // Round to nearest by adding and removing 1.5 · 2²³ (exact for |x / π| < 2²²; `round`
    // is a libm call that keeps the loop scalar).
    const ROUND: f32 = 12_582_912.0;
    let k = (x * std::f32::consts::FRAC_1_PI + ROUND) - ROUND;
    let r = ((x - k * PI_A) - k * PI_B) - k * PI_C;
    let z = r * r;
    let p = (((S[4] * z + S[3]) * z + S[2]) * z + S[1]) * z + S[0];
    let s = r + r * z * p;
    s * s
}

isa_entries! {
    /// SnakeBeta over one channel's samples: y = x + sin²(x · a) · b.
    pub(crate) fn snake_row<>(x: &[f32], a: f32, b: f32, y: &mut [f32]) => snake_row_body
}

/// The plain loop, compiled per instruction set so that it vectorises at the widest (the
/// crate's baseline, SSE2, takes 4 lanes; AVX2 8). No FMA contraction: the same bits on each.
#[inline(always)]
unsafe fn snake_row_body<S: Simd>(x: &[f32], a: f32, b: f32, y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x + sin_squared(x * a) * b;
    }
}

isa_entries! {
    /// y[j] = x[j] + b: a convolution's output row started from its residual and bias.
    pub(crate) fn add_scalar_row<>(x: &[f32], b: f32, y: &mut [f32]) => add_scalar_row_body
}

#[inline(always)]
unsafe fn add_scalar_row_body<S: Simd>(x: &[f32], b: f32, y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x + b;
    }
}

/// candle op: SnakeBeta, `x + sin²(x · a[c]) · b[c]` per channel of a contiguous f32
/// (batch, channels, time) tensor, in one pass into a new tensor (the input stays: it is the
/// residual). `a` and `b` are the activation's eᵅ and 1 / (eᵝ + ε). With a `prefix` (batch,
/// channels, p), each output row starts with the prefix's row, unchanged, then the activated
/// row: a streaming convolution's pending inputs and the new ones in the buffer it reads,
/// without a second copy of the activations.
#[derive(Clone, Debug)]
pub struct SnakeBetaOp<'a> {
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub prefix: Option<&'a [f32]>,
}

impl candle_core::CustomOp1 for SnakeBetaOp<'_> {
    fn name(&self) -> &'static str {
        "snake-beta"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let x = contiguous_f32("snake-beta", s, l)?;
        let (batch, channels, time) = l.shape().dims3()?;
        if channels != self.a.len() || channels != self.b.len() {
            candle_core::bail!(
                "snake-beta: {channels} channels but {} parameters",
                self.a.len()
            );
        }
        let rows = batch * channels;
        let prefix = self.prefix.unwrap_or(&[]);
        let p = prefix.len().checked_div(rows).unwrap_or(0);
        if p * rows != prefix.len() {
            candle_core::bail!(
                "snake-beta: a prefix of {} values for {rows} rows",
                prefix.len()
            );
        }
        let width = p + time;
        let mut y = vec![0f32; rows * width];
        if width > 0 {
            let isa = Isa::detect();
            // Rows of one channel; enough of them per task to pay for the fork.
            y.par_chunks_mut(width)
                .enumerate()
                .with_min_len((1 << 14) / width)
                .for_each(|(row, y)| {
                    let ch = row % channels;
                    let (head, tail) = y.split_at_mut(p);
                    head.copy_from_slice(&prefix[row * p..(row + 1) * p]);
                    let x = &x[row * time..(row + 1) * time];
                    snake_row(isa, x, self.a[ch], self.b[ch], tail);
                });
        }
        Ok((CpuStorage::F32(y), Shape::from((batch, channels, width))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Every conversion it speeds up gives candle's result bit for bit, strided inputs too.
    #[test]
    fn to_dtype_contiguous_equals_candles_conversion() -> Result<()> {
        let values: Vec<f32> = (0..2 * 3 * 37)
            .map(|i| ((i as f32) * 0.731).sin() * 1e3_f32.powf((i % 7) as f32 / 3.0 - 1.0))
            .collect();
        let x = Tensor::from_vec(values, (2, 3, 37), &Device::Cpu)?;
        for from in [DType::F32, DType::F16, DType::BF16] {
            for input in [x.to_dtype(from)?, x.to_dtype(from)?.transpose(0, 1)?] {
                for to in [DType::F32, DType::F16, DType::BF16] {
                    let got = to_dtype_contiguous(&input, to)?;
                    assert!(got.is_contiguous());
                    let want = input.to_dtype(to)?;
                    assert_eq!(got.dims(), want.dims());
                    let bits = |t: &Tensor| -> Result<Vec<u32>> {
                        Ok(t.to_dtype(DType::F32)?
                            .flatten_all()?
                            .to_vec1::<f32>()?
                            .iter()
                            .map(|v| v.to_bits())
                            .collect())
                    };
                    assert_eq!(bits(&got)?, bits(&want)?, "{from:?} -> {to:?}");
                }
            }
        }
        Ok(())
    }
}
