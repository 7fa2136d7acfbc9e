//! Linear layer `y = x Wᵀ + b` with checkpoint-style `weight` `[out, in]` and optional
//! `bias` `[out]`.

use crate::kernels::bandwidth::{retention, streaming_reads};
use crate::kernels::convert::{quantize_int8, quantize_int8_rows};
use crate::kernels::gemv::{streamed_read_ahead, MAX_ROWS};
use crate::kernels::gemv_bf16::column_panels;
use crate::kernels::machine::{
    huge_page_vec, huge_page_vec_filled, machine, plan_residency_retained, CycleBytes, CycleRead,
    Residency,
};
use crate::kernels::ops::{DequantizeToF32, ManyRows, NarrowMatmul, QuantMatmul, WidenToF32};
use crate::quant::{quantize_row, scale_blocks_exactly, GgmlType, BLOCKS_SUFFIX};
use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor, WithDType};
use candle_nn::{Init, VarBuilder};
use half::{bf16, f16};
use rayon::prelude::*;

/// How a layer stores its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    F16,
    Bf16,
    /// Symmetric int8 with one f32 scale per output row (w ≈ q · scale): half the bytes of
    /// bf16, ~1 % relative error per product on Gaussian-like weights.
    Int8,
    /// A ggml block format (q8_0, q5_1, q4_K, ...): as whisper.cpp / llama.cpp files store
    /// matrices, with a scale per block of 32 or 256 values.
    Ggml(GgmlType),
}

impl WeightFormat {
    /// Measures how far ahead of its loads the GEMV of this format reads a streamed matrix
    /// ([`streamed_read_ahead`]; once per format and process). The ggml formats' kernels
    /// prefetch a fixed distance.
    pub fn measure_read_ahead(self) {
        match self {
            WeightFormat::F32 => _ = streamed_read_ahead::<f32>(),
            WeightFormat::F16 => _ = streamed_read_ahead::<half::f16>(),
            WeightFormat::Bf16 => _ = streamed_read_ahead::<half::bf16>(),
            WeightFormat::Int8 => _ = streamed_read_ahead::<i8>(),
            WeightFormat::Ggml(_) => {}
        }
    }

    /// The candle dtype of a plain float format; `None` for the quantized ones.
    pub fn dtype(self) -> Option<DType> {
        match self {
            WeightFormat::F32 => Some(DType::F32),
            WeightFormat::F16 => Some(DType::F16),
            WeightFormat::Bf16 => Some(DType::BF16),
            WeightFormat::Int8 | WeightFormat::Ggml(_) => None,
        }
    }

    /// The format called `name`: f32, f16, bf16, int8, or a ggml type name (q8_0, q4_K, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "f32" => WeightFormat::F32,
            "f16" => WeightFormat::F16,
            "bf16" => WeightFormat::Bf16,
            "int8" => WeightFormat::Int8,
            other => match GgmlType::from_name(other)? {
                t if t.is_quantized() => WeightFormat::Ggml(t),
                _ => return None,
            },
        })
    }
}

/// `w · factor` for an f16 or bf16 weight on the CPU, on all threads (the product rounded once,
/// from f32); `None` for other weights. candle's affine takes one element at a time through
/// half's arithmetic, with the factor itself rounded to the weight's type: 3.1 s of Voxtral
/// Realtime's load went to its q projections (PERFORMANCE.md #111).
fn scale_narrow(w: &Tensor, factor: f64) -> Result<Option<Tensor>> {
    fn scaled<E: WithDType>(w: &Tensor, product: impl Fn(E) -> E + Sync) -> Result<Tensor> {
        let mut values = w.flatten_all()?.to_vec1::<E>()?;
        values
            .par_chunks_mut(1 << 16)
            .for_each(|c| c.iter_mut().for_each(|v| *v = product(*v)));
        Tensor::from_vec(values, w.shape(), w.device())
    }
    if !w.device().is_cpu() {
        return Ok(None);
    }
    let factor = factor as f32;
    Ok(match w.dtype() {
        DType::BF16 => Some(scaled(w, |v: bf16| bf16::from_f32(v.to_f32() * factor))?),
        DType::F16 => Some(scaled(w, |v: f16| f16::from_f32(v.to_f32() * factor))?),
        _ => None,
    })
}

/// A dense layer. Inputs of any rank are flattened to one GEMM: a batched matmul against a
/// broadcast weight is several times slower on CPU.
///
/// The weight keeps the dtype of its VarBuilder (f32, f16 or bf16) or is quantized to int8
/// ([`Linear::quantize_int8`]); the bias and the activations are f32. On CPU, narrow weights
/// (f16, bf16, int8) times f32 inputs run the crate's kernels: at most [`MAX_ROWS`] rows (a
/// decoder step) the streaming GEMV, at most
/// [`small_m_max_rows`](crate::kernels::small_m::small_m_max_rows) the small-M kernel (int8
/// on x86: the integer small-M kernel at any size), larger inputs a GEMM on blocks of widened
/// weight rows (no f32 copy of the whole matrix); a chunk-invariant layer's every product on
/// the kernels of many rows ([`Linear::set_chunk_invariant`]: bf16 on AVX512-BF16's dot
/// products, x rounded to bf16), a bf16 decoder's prompts too where the model asks
/// ([`Linear::set_bf16_prompts`]). f32
/// weights take the same GEMV for at most [`MAX_ROWS`] rows and candle's GEMM beyond.
#[derive(Clone, Debug)]
pub struct Linear {
    /// [out, in]: F32, F16, BF16, or U8 holding int8 bytes when `scales` is set; with `blocks`,
    /// U8 [out, row bytes] holding each row's ggml blocks.
    weight: Tensor,
    /// The ggml block type of `weight`, when block-quantized.
    blocks: Option<GgmlType>,
    /// Int8 per-row scales [out], F32.
    scales: Option<Tensor>,
    bias: Option<Tensor>,
    /// What the CPU kernels take besides x and w: `[scales][bias]` (f32), each part when present
    /// (the bias only when it is f32).
    epilogue: Option<Tensor>,
    /// How a decoder step reads the weight, when a model planned it ([`Linear::plan_residency`]).
    residency: Option<Residency>,
    /// Column panels the weight's memory holds, one after another, each [out, in / panels]
    /// with its rows contiguous (1: rows whole). A streamed bf16 matrix too wide for x to fit
    /// L1 is stored so where the plan reads it in passes of fewer rows
    /// ([`column_panels`](crate::kernels::gemv_bf16::column_panels)).
    panels: usize,
    /// Which kernels products of several rows may take ([`Linear::set_chunk_invariant`],
    /// [`Linear::set_bf16_prompts`]).
    rows: ManyRows,
}

/// Matrices of one dtype concatenated by rows, on the CPU into a buffer on huge pages
/// ([`huge_page_vec`]: `Tensor::cat`'s own buffer lies on 4 kB pages); elsewhere, and for
/// dtypes no weight has, `Tensor::cat`.
fn cat_rows(parts: &[&Tensor]) -> Result<Tensor> {
    fn typed<T: candle_core::WithDType>(parts: &[&Tensor], shape: Vec<usize>) -> Result<Tensor> {
        let mut data: Vec<T> = huge_page_vec(shape.iter().product());
        for part in parts {
            let part = part.contiguous()?;
            let (storage, layout) = part.storage_and_layout();
            let (Storage::Cpu(cpu), Some((a, b))) = (&*storage, layout.contiguous_offsets()) else {
                candle_core::bail!("cat_rows: a part not contiguous on the CPU");
            };
            // Copied on all threads: each fresh page faults in at its first write (#159).
            data.par_extend(cpu.as_slice::<T>()?[a..b].par_iter().copied());
        }
        Tensor::from_vec(data, shape, &Device::Cpu)
    }
    let Some(first) = parts.first() else {
        candle_core::bail!("cat_rows: no parts");
    };
    let same = parts.iter().all(|p| {
        p.device().is_cpu()
            && p.dtype() == first.dtype()
            && p.dims().get(1..) == first.dims().get(1..)
    });
    if !same || first.rank() == 0 {
        return Tensor::cat(parts, 0);
    }
    let mut shape = first.dims().to_vec();
    shape[0] = parts.iter().map(|p| p.dims()[0]).sum();
    match first.dtype() {
        DType::F32 => typed::<f32>(parts, shape),
        DType::F16 => typed::<half::f16>(parts, shape),
        DType::BF16 => typed::<half::bf16>(parts, shape),
        DType::U8 => typed::<u8>(parts, shape),
        _ => Tensor::cat(parts, 0),
    }
}

/// A row-major [n, k] matrix rearranged into `panels` column panels, one after another, each
/// [n, k / panels] with its rows contiguous (`panels` divides k).
fn in_column_panels<T: Copy + Default + Send + Sync>(
    w: &[T],
    n: usize,
    k: usize,
    panels: usize,
) -> Vec<T> {
    let width = k / panels;
    let mut out = huge_page_vec_filled(n * k, T::default());
    if width > 0 {
        // Piece i is row i % n of panel i / n.
        out.par_chunks_mut(width)
            .enumerate()
            .for_each(|(i, piece)| {
                let (panel, row) = (i / n, i % n);
                piece.copy_from_slice(&w[row * k + panel * width..][..width]);
            });
    }
    out
}

impl Linear {
    /// Loads `weight` `[out_dim, in_dim]` in `vb`'s dtype and, when `bias` is set, `bias`
    /// `[out_dim]` in f32. A backend that holds the weight in ggml blocks (it answers
    /// `weight` + [`BLOCKS_SUFFIX`]) hands them over as they are.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let bias = if bias {
            Some(vb.get_with_hints_dtype(out_dim, "bias", Init::Const(0.), DType::F32)?)
        } else {
            None
        };
        let blocks_name = format!("weight{BLOCKS_SUFFIX}");
        if vb.contains_tensor(&blocks_name) {
            let raw = vb.get_unchecked_dtype(&blocks_name, DType::U8)?;
            let (rows, n_blocks, block_bytes) = raw.dims3()?;
            let ty = GgmlType::ALL
                .into_iter()
                .find(|t| t.is_quantized() && t.block_bytes() == block_bytes)
                .filter(|t| rows == out_dim && n_blocks * t.block_size() == in_dim)
                .ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "{}: blocks {:?} do not hold a {out_dim}×{in_dim} matrix",
                        vb.prefix(),
                        raw.dims()
                    ))
                })?;
            return Self::ggml(raw.reshape((rows, n_blocks * block_bytes))?, ty, bias);
        }
        Ok(Self::from_weights(
            vb.get((out_dim, in_dim), "weight")?,
            bias,
        ))
    }

    /// Builds a layer from existing tensors (e.g. a tied embedding used as the output head).
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Self {
        let epilogue = bias
            .as_ref()
            .filter(|b| b.dtype() == DType::F32)
            .map(|b| b.flatten_all())
            .transpose()
            .ok()
            .flatten();
        Self {
            weight,
            blocks: None,
            scales: None,
            bias,
            epilogue,
            residency: None,
            panels: 1,
            rows: ManyRows::KeepX,
        }
    }

    /// One layer computing `parts` side by side, their weights stacked by rows (biases too,
    /// zeros where a part has none). The parts share one weight format ([`LinearStack::new`]
    /// stacks only those) and must share the input width.
    fn stacked(parts: &[Linear]) -> Result<Self> {
        let Some(first) = parts.first() else {
            candle_core::bail!("stacked: no layers");
        };
        let (format, in_dim) = (first.weight_format(), first.weight_dims()?.1);
        let mut rows = Vec::with_capacity(parts.len());
        for part in parts {
            let (out, cols) = part.weight_dims()?;
            if cols != in_dim {
                candle_core::bail!("stacked: a {out}×{cols} matrix beside one of {in_dim} columns");
            }
            rows.push(out);
        }
        let weights = parts
            .iter()
            .map(Linear::row_major_weight)
            .collect::<Result<Vec<_>>>()?;
        let weight = cat_rows(&weights.iter().collect::<Vec<_>>())?;
        let bias = if parts.iter().any(|p| p.bias.is_some()) {
            let biases = parts
                .iter()
                .zip(&rows)
                .map(|(p, &n)| match &p.bias {
                    Some(b) => b.to_dtype(DType::F32)?.flatten_all(),
                    None => Tensor::zeros(n, DType::F32, p.weight.device()),
                })
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        match (format, first.scales.is_some()) {
            (WeightFormat::Ggml(ty), _) => Self::ggml(weight, ty, bias),
            (_, true) => {
                let scales = parts
                    .iter()
                    .map(|p| p.scales.clone().expect("int8 layers have scales"))
                    .collect::<Vec<_>>();
                Self::int8(weight, Tensor::cat(&scales, 0)?, bias)
            }
            _ => Ok(Self::from_weights(weight, bias)),
        }
    }

    /// An int8 layer from its parts.
    fn int8(weight: Tensor, scales: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let epilogue = match bias.as_ref().filter(|b| b.dtype() == DType::F32) {
            Some(b) => Tensor::cat(&[&scales, &b.flatten_all()?], 0)?,
            None => scales.clone(),
        };
        Ok(Self {
            weight,
            blocks: None,
            scales: Some(scales),
            bias,
            epilogue: Some(epilogue),
            residency: None,
            panels: 1,
            rows: ManyRows::KeepX,
        })
    }

    /// A layer whose weight is U8 [out, row bytes] of `ty` blocks.
    fn ggml(weight: Tensor, ty: GgmlType, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self {
            blocks: Some(ty),
            ..Self::from_weights(weight, bias)
        })
    }

    /// Plans how a decoder step reads `layers` (every matrix it multiplies once per token) when
    /// it must also keep `other_bytes` cached (K/V): [`plan_residency_retained`] against this
    /// machine's cache budget and what its caches keep. Call it once the layers have their
    /// final format.
    pub fn plan_residency(layers: Vec<&mut Linear>, other_bytes: usize) {
        Self::plan_cycle_residency(layers.into_iter().map(|l| (l, 1)).collect(), other_bytes);
    }

    /// The same for a cycle that reads some matrices more than once: `(layer, reads per cycle)`.
    pub fn plan_cycle_residency(layers: Vec<(&mut Linear, usize)>, other_bytes: usize) {
        let reads: Vec<CycleRead> = layers
            .iter()
            .map(|(l, reads)| CycleRead {
                bytes: l.weight_bytes(),
                reads: *reads,
            })
            .collect();
        let plan = plan_residency_retained(&reads, other_bytes, machine().cache_budget(), || {
            retention().is_none_or(|r| r.holds())
        });
        if plan.contains(&Residency::Streamed) {
            // Measured here, at load, rather than inside the first decoder step.
            streaming_reads();
            for ((layer, _), r) in layers.iter().zip(&plan) {
                if *r == Residency::Streamed {
                    layer.weight_format().measure_read_ahead();
                }
            }
        }
        for ((layer, _), r) in layers.into_iter().zip(plan) {
            layer.residency = Some(r);
            if r == Residency::Streamed {
                layer.store_in_column_panels();
            }
        }
    }

    /// Stores a streamed bf16 weight in the column panels this machine reads it in
    /// ([`column_panels`]), where that is more than one; the layout is a speed matter only, so
    /// a weight that cannot be laid out again keeps its rows whole.
    fn store_in_column_panels(&mut self) {
        let Ok((_, k)) = self.weight_dims() else {
            return;
        };
        if self.weight_format() == WeightFormat::Bf16 && self.weight.device().is_cpu() {
            self.store_in_panels(column_panels(k));
        }
    }

    /// Stores a bf16 CPU weight with its rows whole in `panels` column panels (unchanged if
    /// it is not one).
    fn store_in_panels(&mut self, panels: usize) {
        let Ok((n, k)) = self.weight_dims() else {
            return;
        };
        if self.panels != 1 || panels <= 1 || k % panels != 0 {
            return;
        }
        let laid_out = self.weight.contiguous().and_then(|w| {
            let (storage, layout) = w.storage_and_layout();
            let (Storage::Cpu(CpuStorage::BF16(v)), Some((a, b))) =
                (&*storage, layout.contiguous_offsets())
            else {
                candle_core::bail!("column panels: a contiguous bf16 CPU weight expected");
            };
            let data = in_column_panels(&v[a..b], n, k, panels);
            Tensor::from_vec(data, (n, k), w.device())
        });
        if let Ok(weight) = laid_out {
            self.weight = weight;
            self.panels = panels;
        }
    }

    /// The weight with its rows whole (a copy where it is stored in column panels).
    fn row_major_weight(&self) -> Result<Tensor> {
        if self.panels == 1 {
            return Ok(self.weight.clone());
        }
        Tensor::cat(&self.panel_weights()?, 1)
    }

    /// The same layer with its weight's rows whole.
    fn row_major(self) -> Result<Self> {
        if self.panels == 1 {
            return Ok(self);
        }
        Ok(Self {
            weight: self.row_major_weight()?,
            panels: 1,
            ..self
        })
    }

    /// Each column panel's weight, [out, in / panels] (views, no copies; the weight itself
    /// where its rows are whole).
    fn panel_weights(&self) -> Result<Vec<Tensor>> {
        if self.panels == 1 {
            return Ok(vec![self.weight.clone()]);
        }
        let (n, k) = self.weight_dims()?;
        let width = k / self.panels;
        let flat = self.weight.flatten_all()?;
        (0..self.panels)
            .map(|p| {
                flat.narrow(0, p * n * width, n * width)?
                    .reshape((n, width))
            })
            .collect()
    }

    /// How the weight is stored.
    pub fn weight_format(&self) -> WeightFormat {
        if let Some(ty) = self.blocks {
            return WeightFormat::Ggml(ty);
        }
        match (self.scales.is_some(), self.weight.dtype()) {
            (true, _) => WeightFormat::Int8,
            (false, DType::F16) => WeightFormat::F16,
            (false, DType::BF16) => WeightFormat::Bf16,
            _ => WeightFormat::F32,
        }
    }

    /// Bytes of weights a forward pass reads: the weight matrix and, for int8, its scales (not
    /// the bias).
    /// Makes every product of the layer take the kernels of many rows, so that a row's result
    /// does not depend on how many rows came with it: for a weight that only blocks of
    /// positions multiply (an encoder's), whose size a stream's chunking sets. There bf16
    /// weights take bf16 dot products where the CPU has them (AVX512-BF16: x rounded to bf16,
    /// ~1.8× the f32 rate, PERFORMANCE.md #161) and int8 the integer kernel (x in 8 bits), at
    /// any row count, so a streamed block of a few positions computes what the same positions
    /// do inside an offline pass's larger block. Other layers keep x whole for bf16 (a decoder's
    /// steps; prompts unless [`Linear::set_bf16_prompts`]). Call it once the layer has its
    /// final format (as residency planning).
    pub fn set_chunk_invariant(&mut self) {
        self.rows = ManyRows::Alike;
    }

    /// Makes a bf16 decoder layer's products of more rows than a step's (a prompt) take bf16
    /// dot products where the CPU has them (x rounded to bf16, as the matmuls of a bf16
    /// reference — transformers, vLLM — do), its steps the GEMV with x whole: for models whose
    /// checkpoints are bf16 and whose references compute in bf16 (the Voxtrals), not for
    /// those proven against f32 arithmetic on bf16 weights (Qwen3-TTS).
    pub fn set_bf16_prompts(&mut self) {
        self.rows = ManyRows::Bf16Prompts;
    }

    pub fn weight_bytes(&self) -> usize {
        let w = self.weight.elem_count() * self.weight.dtype().size_in_bytes();
        w + self.scales.as_ref().map_or(0, |s| s.elem_count() * 4)
    }

    /// What one forward pass reads of the weight ([`Self::weight_bytes`]), by how the plan reads
    /// it (a layer no model planned: by its size, as the kernels read it).
    pub fn read_bytes(&self) -> CycleBytes {
        let bytes = self.weight_bytes();
        CycleBytes::read(
            bytes,
            self.residency
                .unwrap_or_else(|| Residency::unplanned(bytes)),
        )
    }

    /// The layer with its weight stored as `format` (int8: quantized per output row; a ggml
    /// type: with ggml's reference quantizer; from a quantized format: dequantized first). The
    /// bias is unchanged. A matrix whose rows are not whole blocks of the ggml type keeps its
    /// format (as whisper.cpp's `quantize` leaves such tensors).
    pub fn to_format(self, format: WeightFormat) -> Result<Self> {
        if format == self.weight_format() {
            return Ok(self);
        }
        if self.panels > 1 {
            return self.row_major()?.to_format(format);
        }
        let dtype = match format {
            // Float weights are quantized as stored (no f32 copy of the matrix first).
            WeightFormat::Int8 => {
                return match self.weight_format() {
                    WeightFormat::Ggml(_) => self.to_format(WeightFormat::F32)?.quantize_int8(),
                    _ => self.quantize_int8(),
                }
            }
            WeightFormat::Ggml(ty) => return self.quantize_ggml(ty),
            float => float.dtype().expect("a float format"),
        };
        let weight = match self.weight_format() {
            WeightFormat::Int8 | WeightFormat::Ggml(_) => self.dequantized(DType::F32)?,
            _ => self.weight,
        };
        Ok(Self::from_weights(weight.to_dtype(dtype)?, self.bias))
    }

    /// The weight quantized to `ty` row by row with ggml's reference quantizer.
    fn quantize_ggml(self, ty: GgmlType) -> Result<Self> {
        let (n, k) = self.weight_dims()?;
        let Some(row_bytes) = ty.row_bytes(k) else {
            return Ok(self);
        };
        let device = self.weight.device().clone();
        let w = self.dequantized(DType::F32)?.to_device(&Device::Cpu)?;
        let values = w.flatten_all()?.to_vec1::<f32>()?;
        let mut bytes = vec![0u8; n * row_bytes];
        if k > 0 {
            // ggml's k-quant searches run at ~10 M values/s per core: rows in parallel.
            values
                .par_chunks_exact(k)
                .zip(bytes.par_chunks_exact_mut(row_bytes))
                .for_each(|(src, dst)| quantize_row(ty, src, dst));
        }
        let weight = Tensor::from_vec(bytes, (n, row_bytes), &device)?;
        Self::ggml(weight, ty, self.bias)
    }

    /// (out, in) of the matrix, whatever its storage.
    fn weight_dims(&self) -> Result<(usize, usize)> {
        let (n, cols) = self.weight.dims2()?;
        Ok(match self.blocks {
            Some(ty) => (n, cols / ty.block_bytes() * ty.block_size()),
            None => (n, cols),
        })
    }

    /// Rows `ids` (u32, any shape flattened) of the weight as f32 (len, in): a tied output
    /// head read as the token table, without a second copy of it.
    pub fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        let ids = ids.flatten_all()?;
        // From each column panel its pieces of the rows: no copy of the whole matrix.
        let picked = self
            .panel_weights()?
            .iter()
            .map(|w| w.embedding(&ids))
            .collect::<Result<Vec<_>>>()?;
        let picked = Tensor::cat(&picked, 1)?;
        match (&self.scales, self.blocks) {
            (_, Some(ty)) if picked.device().is_cpu() => {
                picked.apply_op1_no_bwd(&DequantizeToF32 { ty })
            }
            (Some(s), _) => {
                Self::int8(picked, s.index_select(&ids, 0)?, None)?.dequantized(DType::F32)
            }
            (None, Some(_)) => candle_core::bail!("ggml blocks are read on the CPU only"),
            (None, None) => picked.to_dtype(DType::F32),
        }
    }

    /// Quantizes the weight to symmetric int8 with an f32 scale per output row
    /// (scale = max|w| / 127), stored as a U8 tensor of the int8 bytes and an F32 tensor of
    /// scales on the weight's device. Idempotent.
    pub fn quantize_int8(self) -> Result<Self> {
        if self.scales.is_some() {
            return Ok(self);
        }
        if self.panels > 1 {
            return self.row_major()?.quantize_int8();
        }
        let device = self.weight.device().clone();
        let (n, k) = self.weight.dims2()?;
        let w = self.weight.to_device(&Device::Cpu)?.contiguous()?;
        let (q, scales) = {
            let (storage, layout) = w.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else {
                candle_core::bail!("quantize-int8: weight not on the CPU");
            };
            let Some((a, b)) = layout.contiguous_offsets() else {
                candle_core::bail!("quantize-int8: weight not contiguous");
            };
            match cpu {
                CpuStorage::F32(v) => quantize_int8_rows(&v[a..b], n, k),
                CpuStorage::F16(v) => quantize_int8_rows(&v[a..b], n, k),
                CpuStorage::BF16(v) => quantize_int8_rows(&v[a..b], n, k),
                CpuStorage::F64(v) => {
                    let v = &v[a..b];
                    quantize_int8(n, k, |i| v[i] as f32)
                }
                _ => candle_core::bail!("quantize-int8: {:?} weights", w.dtype()),
            }
        };
        // In place (same size and alignment): no second copy of a large matrix.
        let bytes: Vec<u8> = q.into_iter().map(|v| v as u8).collect();
        let weight = Tensor::from_vec(bytes, (n, k), &device)?;
        let scales = Tensor::from_vec(scales, n, &device)?;
        Self::int8(weight, scales, self.bias)
    }

    /// Multiplies weight and bias by `factor` (folding a constant scale into the layer). Int8
    /// layers scale their per-row scales (exact up to one f32 rounding).
    pub fn scaled(self, factor: f64) -> Result<Self> {
        if self.panels > 1 {
            return self.row_major()?.scaled(factor);
        }
        let bias = self.bias.as_ref().map(|b| b * factor).transpose()?;
        if let Some(ty) = self.blocks {
            // Exact through the block scales for powers of two (Whisper's 1/√64); otherwise
            // the values are quantized again after scaling.
            let mut bytes = self.weight.flatten_all()?.to_vec1::<u8>()?;
            if scale_blocks_exactly(ty, &mut bytes, factor as f32) {
                let weight = Tensor::from_vec(bytes, self.weight.shape(), self.weight.device())?;
                return Self::ggml(weight, ty, bias);
            }
            let w = (self.dequantized(DType::F32)? * factor)?;
            return Self::from_weights(w, bias).quantize_ggml(ty);
        }
        match self.scales {
            Some(s) => Self::int8(self.weight, (s * factor)?, bias),
            None => {
                let weight = match scale_narrow(&self.weight, factor)? {
                    Some(w) => w,
                    None => (self.weight * factor)?,
                };
                Ok(Self::from_weights(weight, bias))
            }
        }
    }

    /// The weight as f32 (int8: q · scale; ggml blocks: dequantized), widened by the crate's
    /// kernels on CPU.
    fn widened(&self) -> Result<Tensor> {
        if let Some(ty) = self.blocks {
            return self
                .weight
                .to_device(&Device::Cpu)?
                .apply_op1_no_bwd(&DequantizeToF32 { ty })?
                .to_device(self.weight.device());
        }
        let weight = self.row_major_weight()?;
        match (&self.scales, weight.device().is_cpu()) {
            (Some(s), true) => weight.apply_op2_no_bwd(s, &WidenToF32),
            (None, true) if matches!(weight.dtype(), DType::F16 | DType::BF16) => {
                weight.apply_op1_no_bwd(&WidenToF32)
            }
            (Some(_), false) => self.dequantized(DType::F32),
            (None, _) => weight.to_dtype(DType::F32),
        }
    }

    /// The weight as `dtype` (int8 with candle ops on any device: bytes ≥ 128 are negative).
    fn dequantized(&self, dtype: DType) -> Result<Tensor> {
        let Some(scales) = self.scales.as_ref() else {
            return self.widened()?.to_dtype(dtype);
        };
        if self.weight.device().is_cpu() {
            return self.widened()?.to_dtype(dtype);
        }
        let v = self.weight.to_dtype(DType::F32)?;
        let negative = v.ge(128f64)?.to_dtype(DType::F32)?;
        let q = (v - (negative * 256f64)?)?;
        q.broadcast_mul(&scales.unsqueeze(1)?)?.to_dtype(dtype)
    }

    /// x: (..., in) -> (..., out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims
            .last()
            .expect("linear input has at least one dimension");
        let rows = x.elem_count() / in_dim;
        let x = x.contiguous()?.reshape((rows, in_dim))?;
        let narrow = self.weight_format() != WeightFormat::F32;
        let cpu_f32 = x.dtype() == DType::F32 && x.device().is_cpu();
        // f32 weights take the GEMV for a decoder step's few rows, candle's GEMM beyond.
        let f32_gemv = self.weight.dtype() == DType::F32 && rows <= MAX_ROWS;
        let y = if let (Some(ty), true) = (self.blocks, cpu_f32) {
            let op = QuantMatmul {
                ty,
                bias: self.bias_fused(),
                residency: self.residency,
            };
            match (&self.epilogue, &self.bias) {
                (Some(e), _) => x.apply_op3_no_bwd(&self.weight, e, &op)?,
                (None, Some(b)) => x.apply_op2_no_bwd(&self.weight, &op)?.broadcast_add(b)?,
                (None, None) => x.apply_op2_no_bwd(&self.weight, &op)?,
            }
        } else if (narrow || f32_gemv) && cpu_f32 {
            let fused_bias = self.bias.is_some() && self.bias_fused();
            let op = NarrowMatmul {
                int8: self.scales.is_some(),
                bias: fused_bias,
                residency: self.residency,
                rows: self.rows,
            };
            let y = if self.panels > 1 {
                self.panel_products(&x, op)?
            } else {
                match &self.epilogue {
                    Some(e) => x.apply_op3_no_bwd(&self.weight, e, &op)?,
                    None => x.apply_op2_no_bwd(&self.weight, &op)?,
                }
            };
            match &self.bias {
                Some(b) if !fused_bias => y.broadcast_add(b)?,
                _ => y,
            }
        } else {
            let w = match self.weight_format() {
                WeightFormat::Int8 | WeightFormat::Ggml(_) => self.dequantized(x.dtype())?,
                _ => self.row_major_weight()?.to_dtype(x.dtype())?,
            };
            self.add_bias(x.matmul(&w.t()?)?)?
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty") = self.weight.dim(0)?;
        y.reshape(out_dims)
    }

    /// x (rows, in) times a weight stored in column panels: each panel's product with its
    /// columns of x, summed (the first panel's adds the fused bias). Only bf16 weights are
    /// stored so, whose epilogue is the bias alone.
    fn panel_products(&self, x: &Tensor, op: NarrowMatmul) -> Result<Tensor> {
        let mut y: Option<Tensor> = None;
        let mut start = 0;
        for w in self.panel_weights()? {
            let width = w.dim(1)?;
            let xp = x.narrow(1, start, width)?.contiguous()?;
            let product = match (&self.epilogue, &y) {
                (Some(e), None) => xp.apply_op3_no_bwd(&w, e, &op)?,
                _ => xp.apply_op2_no_bwd(&w, &NarrowMatmul { bias: false, ..op })?,
            };
            y = Some(match y {
                Some(y) => (y + product)?,
                None => product,
            });
            start += width;
        }
        y.ok_or_else(|| candle_core::Error::Msg("a weight of no column panels".into()))
    }

    /// Whether the CPU kernels add the bias (f32 bias in the epilogue).
    fn bias_fused(&self) -> bool {
        self.bias.as_ref().is_some_and(|b| b.dtype() == DType::F32) && self.epilogue.is_some()
    }

    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Projections of one input computed side by side (q, k and v; gate and up), as one matrix
/// of their rows stacked when they share a format, so that a decoder step reads them in one
/// product: each GEMV call pays a fork-join and the ramp-up of fresh memory streams (the
/// Qwen3-TTS code predictor's seven matrices per layer read from DRAM at 27–30 GB/s, the four
/// of its stacked layout at 31–32). Parts of different formats (a file may store one in a
/// wider type) stay apart and their outputs are concatenated.
#[derive(Clone, Debug)]
pub struct LinearStack {
    /// One stacked layer, or the parts apart.
    layers: Vec<Linear>,
}

impl LinearStack {
    pub fn new(parts: Vec<Linear>) -> Result<Self> {
        let format = parts.first().map(|p| p.weight_format());
        let layers = if parts.len() > 1 && parts.iter().all(|p| Some(p.weight_format()) == format) {
            vec![Linear::stacked(&parts)?]
        } else {
            parts
        };
        Ok(Self { layers })
    }

    /// x: (..., in) → (..., Σ out of the parts), the parts' outputs in their order.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.layers.as_slice() {
            [one] => one.forward(x),
            parts => {
                let outputs = parts
                    .iter()
                    .map(|p| p.forward(x))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&outputs, candle_core::D::Minus1)
            }
        }
    }

    /// The stack with its weights stored as `format` (parts that then share it are stacked).
    pub fn to_format(self, format: WeightFormat) -> Result<Self> {
        Self::new(
            self.layers
                .into_iter()
                .map(|l| l.to_format(format))
                .collect::<Result<_>>()?,
        )
    }

    /// The matrices a forward pass multiplies.
    pub fn linears(&self) -> &[Linear] {
        &self.layers
    }

    /// The same, mutably (for residency planning).
    pub fn linears_mut(&mut self) -> &mut [Linear] {
        &mut self.layers
    }

    /// What a pass over the matrices reads, by residency.
    pub fn read_bytes(&self) -> CycleBytes {
        self.layers.iter().map(Linear::read_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::ops::{int8_gemv_max_rows, INT8_GEMV_MAX_ROWS};
    use crate::kernels::small_m::{
        f16_tiles_fit, integer_int8, native_bf16, small_m_max_rows, SMALL_M_MAX_ROWS,
    };

    fn det(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let h = (i as u32 ^ seed.wrapping_mul(0x9e3779b9)).wrapping_mul(2654435761);
                ((h >> 8) % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let m = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        d / m
    }

    /// Every format × every dispatch branch (GEMV, small-M, widen + GEMM) against the f32
    /// layer on the same rounded weights; inputs of rank 3.
    #[test]
    fn rows_concatenate_as_tensor_cat_does() -> Result<()> {
        let a = Tensor::arange(0f32, 12.0, &Device::Cpu)?.reshape((3, 4))?;
        let b = Tensor::arange(100f32, 108.0, &Device::Cpu)?
            .reshape((4, 2))?
            .t()?; // strided
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::U8] {
            let (a, b) = (a.to_dtype(dtype)?, b.to_dtype(dtype)?);
            let got = cat_rows(&[&a, &b])?;
            let want = Tensor::cat(&[&a, &b], 0)?;
            assert_eq!(got.dims(), &[5, 4]);
            assert_eq!(
                got.to_dtype(DType::F32)?.to_vec2::<f32>()?,
                want.to_dtype(DType::F32)?.to_vec2::<f32>()?,
                "{dtype:?}"
            );
        }
        // Widths that differ: Tensor::cat's own error.
        let c = Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?;
        assert!(cat_rows(&[&a, &c]).is_err());
        Ok(())
    }

    #[test]
    fn formats_and_branches_match_f32() -> Result<()> {
        let dev = Device::Cpu;
        let (k, n) = (67, 45);
        let w = Tensor::from_vec(det(n * k, 1), (n, k), &dev)?;
        let b = Tensor::from_vec(det(n, 2), n, &dev)?;
        for fmt in [
            WeightFormat::F32,
            WeightFormat::F16,
            WeightFormat::Bf16,
            WeightFormat::Int8,
        ] {
            for bias in [None, Some(b.clone())] {
                let layer = Linear::from_weights(w.clone(), bias.clone()).to_format(fmt)?;
                assert_eq!(layer.weight_format(), fmt);
                // candle's matmul of the widened weight (f32 layers take the GEMV for few rows).
                let widened_t = layer.widened()?.t()?;
                let reference = |x: &Tensor| -> Result<Tensor> {
                    let y = x.squeeze(0)?.matmul(&widened_t)?.unsqueeze(0)?;
                    match &bias {
                        Some(b) => y.broadcast_add(b),
                        None => Ok(y),
                    }
                };
                for rows in [
                    1,
                    5,
                    8,
                    9,
                    int8_gemv_max_rows(),
                    int8_gemv_max_rows() + 1,
                    INT8_GEMV_MAX_ROWS,
                    INT8_GEMV_MAX_ROWS + 1,
                    39,
                    64,
                    65,
                    130,
                    small_m_max_rows() + 1,
                    SMALL_M_MAX_ROWS + 1,
                ] {
                    let x = Tensor::from_vec(det(rows * k, rows as u32), (1, rows, k), &dev)?;
                    let got = layer.forward(&x)?;
                    let want = reference(&x)?;
                    assert_eq!(got.dims(), &[1, rows, n]);
                    let err = max_rel(&got, &want);
                    // Where int8 runs on the GEMV, it multiplies x's int16 codes (`gemv_int8`):
                    // each value within 1.5e-5 of its block's largest; on the integer small-M
                    // kernel (x86), x's 8-bit codes: within 1 / 254 of its block's largest.
                    let tol = match fmt {
                        WeightFormat::Int8 if rows <= int8_gemv_max_rows() => 1e-4,
                        WeightFormat::Int8 if integer_int8() => 1e-2,
                        _ => 1e-5,
                    };
                    assert!(
                        err < tol,
                        "{fmt:?} rows {rows} bias {}: {err}",
                        bias.is_some()
                    );
                }
            }
        }
        Ok(())
    }

    /// bf16(x) (1, m, k) times the layer's weight, in f32, plus b: what bf16 dot products give.
    fn bf16_x_product(x: &Tensor, layer: &Linear, b: &Tensor) -> Result<Tensor> {
        x.to_dtype(DType::BF16)?
            .to_dtype(DType::F32)?
            .squeeze(0)?
            .matmul(&layer.widened()?.t()?)?
            .broadcast_add(b)?
            .unsqueeze(0)
    }

    /// A chunk-invariant layer computes each row alike whatever block it comes in: bf16, int8
    /// and f16 weights, whose kernels of many rows round x otherwise than the GEMV does for a few
    /// (bit for bit where those kernels run, else within f32's summation order); the bf16 dot
    /// products multiply bf16(x) (a plain layer's few rows do not: the control).
    #[test]
    fn chunk_invariant_rows_come_out_alike_in_any_block() -> Result<()> {
        let dev = Device::Cpu;
        let (n, m) = (45, 70);
        let b = Tensor::from_vec(det(n, 2), n, &dev)?;
        // f16 on AMX tiles (k a multiple of 32) at any row count, though a plain layer takes
        // them from 64 rows on.
        for (fmt, k, rounds_x) in [
            (WeightFormat::Bf16, 67, native_bf16()),
            (WeightFormat::Int8, 67, integer_int8()),
            (WeightFormat::F16, 64, f16_tiles_fit(64)),
        ] {
            let w = Tensor::from_vec(det(n * k, 1), (n, k), &dev)?;
            let x = Tensor::from_vec(det(m * k, 3), (1, m, k), &dev)?;
            let plain = Linear::from_weights(w.clone(), Some(b.clone())).to_format(fmt)?;
            let mut layer = plain.clone();
            layer.set_chunk_invariant();
            let whole = layer.forward(&x)?;
            for block in [1, 2, 5, 8, 9, 13] {
                let parts = (0..m)
                    .step_by(block)
                    .map(|start| layer.forward(&x.narrow(1, start, block.min(m - start))?))
                    .collect::<Result<Vec<_>>>()?;
                let blocked = Tensor::cat(&parts, 1)?;
                let what = format!("{fmt:?} blocks of {block}");
                if rounds_x {
                    assert_eq!(
                        blocked.flatten_all()?.to_vec1::<f32>()?,
                        whole.flatten_all()?.to_vec1::<f32>()?,
                        "{what}"
                    );
                } else {
                    assert!(max_rel(&blocked, &whole) < 1e-5, "{what}");
                }
            }
            if fmt == WeightFormat::Bf16 && rounds_x {
                let want = bf16_x_product(&x, &plain, &b)?;
                assert!(max_rel(&whole, &want) < 1e-5, "bf16(x)");
                let one_row = x.narrow(1, 0, 1)?;
                let (plain_row, row) = (plain.forward(&one_row)?, layer.forward(&one_row)?);
                assert!(
                    max_rel(&plain_row, &row) > 1e-5,
                    "a plain layer's row keeps x whole"
                );
            }
        }
        Ok(())
    }

    /// A layer with bf16 prompts: more rows than a step's multiply bf16(x) where the CPU has
    /// bf16 dot products (x whole elsewhere); a step's rows, and every row of f32 and int8
    /// weights, compute as a plain layer's, bit for bit.
    #[test]
    fn bf16_prompts_round_x_and_steps_keep_it_whole() -> Result<()> {
        let dev = Device::Cpu;
        let (k, n) = (67, 45);
        let w = Tensor::from_vec(det(n * k, 4), (n, k), &dev)?;
        let b = Tensor::from_vec(det(n, 5), n, &dev)?;
        for fmt in [WeightFormat::Bf16, WeightFormat::Int8, WeightFormat::F32] {
            let plain = Linear::from_weights(w.clone(), Some(b.clone())).to_format(fmt)?;
            let mut layer = plain.clone();
            layer.set_bf16_prompts();
            for m in [1, MAX_ROWS, MAX_ROWS + 1, 40] {
                let x = Tensor::from_vec(det(m * k, 6), (1, m, k), &dev)?;
                let (got, kept) = (layer.forward(&x)?, plain.forward(&x)?);
                let what = format!("{fmt:?}, {m} rows");
                if fmt == WeightFormat::Bf16 && m > MAX_ROWS && native_bf16() {
                    let want = bf16_x_product(&x, &plain, &b)?;
                    assert!(max_rel(&got, &want) < 1e-5, "{what}: bf16(x)");
                    assert!(max_rel(&got, &kept) > 1e-5, "{what}: x rounded");
                } else {
                    assert_eq!(
                        got.flatten_all()?.to_vec1::<f32>()?,
                        kept.flatten_all()?.to_vec1::<f32>()?,
                        "{what}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn column_panels_lie_one_after_another() {
        // 2 × 6 in 3 panels of 2 columns: panel 0 (both rows), panel 1, panel 2.
        let w: Vec<u32> = (0..12).collect();
        assert_eq!(
            in_column_panels(&w, 2, 6, 3),
            [0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11]
        );
        assert_eq!(in_column_panels(&w, 2, 6, 1), w);
    }

    /// A bf16 weight stored in column panels gives the products, rows, conversions and stacks
    /// of the same weight with its rows whole, through every dispatch branch.
    #[test]
    fn a_weight_in_column_panels_computes_as_its_whole_rows() -> Result<()> {
        let dev = Device::Cpu;
        let (n, k, panels) = (37, 4 * 96, 4);
        let w = Tensor::from_vec(det(n * k, 11), (n, k), &dev)?.to_dtype(DType::BF16)?;
        let b = Tensor::from_vec(det(n, 12), n, &dev)?;
        for bias in [None, Some(b)] {
            let whole = Linear::from_weights(w.clone(), bias.clone());
            let mut paneled = whole.clone();
            paneled.store_in_panels(panels);
            assert_eq!(paneled.panels, panels);
            let what = format!("bias {}", bias.is_some());
            for rows in [1, 2, 8, 9, 39, small_m_max_rows() + 1] {
                let x = Tensor::from_vec(det(rows * k, rows as u32), (1, rows, k), &dev)?;
                let (got, want) = (paneled.forward(&x)?, whole.forward(&x)?);
                assert_eq!(got.dims(), &[1, rows, n]);
                let err = max_rel(&got, &want);
                assert!(err < 1e-5, "{what} rows {rows}: {err}");
            }
            let ids = Tensor::new(&[5u32, 0, 36], &dev)?;
            assert_eq!(
                paneled.rows(&ids)?.to_vec2::<f32>()?,
                whole.rows(&ids)?.to_vec2::<f32>()?
            );
            assert_eq!(
                paneled.row_major_weight()?.to_vec2::<bf16>()?,
                w.to_vec2::<bf16>()?
            );
            for fmt in [WeightFormat::F32, WeightFormat::Int8] {
                let (a, b) = (
                    paneled.clone().to_format(fmt)?,
                    whole.clone().to_format(fmt)?,
                );
                assert_eq!(a.panels, 1);
                assert_eq!(
                    a.widened()?.to_vec2::<f32>()?,
                    b.widened()?.to_vec2::<f32>()?,
                    "{what} {fmt:?}"
                );
            }
            let (a, b) = (paneled.clone().scaled(0.5)?, whole.clone().scaled(0.5)?);
            assert_eq!(
                a.widened()?.to_vec2::<f32>()?,
                b.widened()?.to_vec2::<f32>()?
            );
            let stack = LinearStack::new(vec![paneled.clone(), whole.clone()])?;
            let x = Tensor::from_vec(det(k, 3), (1, 1, k), &dev)?;
            let got = stack.forward(&x)?;
            let want = Tensor::cat(&[whole.forward(&x)?, whole.forward(&x)?], 2)?;
            assert!(max_rel(&got, &want) < 1e-6, "{what}: stacked");
        }
        Ok(())
    }

    /// A tied head read as a token table (Whisper's `embed_tokens`) gives the rows of its
    /// matrix as the kernels see it, in every format (int8 picks each row's scale too).
    #[test]
    fn rows_are_the_matrix_rows_in_every_format() -> Result<()> {
        let dev = Device::Cpu;
        let (n, k) = (45, 64);
        let w = Tensor::from_vec(det(n * k, 7), (n, k), &dev)?;
        let ids = Tensor::new(&[[3u32, 0], [44, 3]], &dev)?;
        for fmt in [
            WeightFormat::F32,
            WeightFormat::F16,
            WeightFormat::Bf16,
            WeightFormat::Int8,
            WeightFormat::Ggml(crate::quant::GgmlType::Q8_0),
        ] {
            let layer = Linear::from_weights(w.clone(), None).to_format(fmt)?;
            let got = layer.rows(&ids)?;
            let want = layer.widened()?.index_select(&ids.flatten_all()?, 0)?;
            assert_eq!(got.dims(), &[4, k], "{fmt:?}");
            assert_eq!(got.to_vec2::<f32>()?, want.to_vec2::<f32>()?, "{fmt:?}");
        }
        Ok(())
    }

    /// A stack computes its parts' outputs side by side: stacked into one matrix when the
    /// formats agree (biases zero where a part has none; int8 keeps each row's scale), apart
    /// when they differ, and stacked once a conversion makes them agree.
    #[test]
    fn a_stack_equals_its_parts() -> Result<()> {
        let dev = Device::Cpu;
        let k = 40;
        let part = |n: usize, seed: u32, bias: bool| -> Result<Linear> {
            let w = Tensor::from_vec(det(n * k, seed), (n, k), &dev)?;
            let b = bias
                .then(|| Tensor::from_vec(det(n, seed + 1), n, &dev))
                .transpose()?;
            Ok(Linear::from_weights(w, b))
        };
        let parts = [part(24, 1, true)?, part(8, 3, false)?, part(8, 5, true)?];
        let formats = [
            [WeightFormat::F32; 3],
            [WeightFormat::Int8; 3],
            [WeightFormat::Bf16, WeightFormat::F16, WeightFormat::Bf16],
        ];
        for fmts in formats {
            let converted = parts
                .iter()
                .zip(fmts)
                .map(|(p, f)| p.clone().to_format(f))
                .collect::<Result<Vec<_>>>()?;
            let stack = LinearStack::new(converted.clone())?;
            let apart = fmts.iter().any(|&f| f != fmts[0]);
            assert_eq!(stack.linears().len(), if apart { 3 } else { 1 });
            for rows in [1, 3, 70] {
                let x = Tensor::from_vec(det(rows * k, rows as u32), (1, rows, k), &dev)?;
                let want = Tensor::cat(
                    &converted
                        .iter()
                        .map(|p| p.forward(&x))
                        .collect::<Result<Vec<_>>>()?,
                    2,
                )?;
                let got = stack.forward(&x)?;
                assert_eq!(got.dims(), &[1, rows, 40]);
                let err = max_rel(&got, &want);
                assert!(err < 1e-6, "{fmts:?} rows {rows}: {err}");
            }
            let as_int8 = stack.to_format(WeightFormat::Int8)?;
            assert_eq!(as_int8.linears().len(), 1);
            assert_eq!(as_int8.linears()[0].weight_format(), WeightFormat::Int8);
        }
        Ok(())
    }

    #[test]
    fn what_a_layer_reads_follows_its_plan() -> Result<()> {
        let dev = Device::Cpu;
        let layer = |n: usize, format| -> Result<Linear> {
            Linear::from_weights(Tensor::from_vec(det(n * 40, 7), (n, 40), &dev)?, None)
                .to_format(format)
        };
        // 24 × 40 f32; 8 × 40 int8 and its 8 scales.
        let (mut a, mut b) = (layer(24, WeightFormat::F32)?, layer(8, WeightFormat::Int8)?);
        assert_eq!((a.weight_bytes(), b.weight_bytes()), (3840, 352));
        // Unplanned, a matrix this small is read as cached, as the kernels would read it.
        assert_eq!(a.read_bytes(), CycleBytes::read(3840, Residency::Cached));
        a.residency = Some(Residency::Streamed);
        b.residency = Some(Residency::Cached);
        assert_eq!(a.read_bytes(), CycleBytes::read(3840, Residency::Streamed));
        let apart = LinearStack::new(vec![a, b])?;
        assert_eq!(apart.linears().len(), 2);
        let want = CycleBytes {
            streamed: 3840,
            cached: 352,
        };
        assert_eq!(apart.read_bytes(), want);
        assert_eq!(
            [want, want * 14].into_iter().sum::<CycleBytes>(),
            CycleBytes {
                streamed: 15 * 3840,
                cached: 15 * 352
            }
        );
        assert_eq!((want * 15).total(), 15 * 4192);
        Ok(())
    }

    /// Scaling folds into every format; int8 round-trips to within its quantization error.
    #[test]
    fn scaled_and_quantized() -> Result<()> {
        let dev = Device::Cpu;
        let (k, n) = (300, 40);
        let w = Tensor::from_vec(det(n * k, 5), (n, k), &dev)?;
        let b = Tensor::from_vec(det(n, 6), n, &dev)?;
        let x = Tensor::from_vec(det(3 * k, 7), (3, k), &dev)?;
        let want = Linear::from_weights(w.clone(), Some(b.clone()))
            .scaled(0.5)?
            .forward(&x)?;
        for dtype in [DType::F16, DType::BF16] {
            let layer = Linear::from_weights(w.to_dtype(dtype)?, Some(b.clone())).scaled(0.5)?;
            let err = max_rel(&layer.forward(&x)?, &want);
            assert!(err < 1e-2, "{dtype:?}: {err}");
        }
        let q = Linear::from_weights(w.clone(), Some(b.clone())).quantize_int8()?;
        let q = q.quantize_int8()?.scaled(0.5)?;
        assert_eq!(q.weight_format(), WeightFormat::Int8);
        let err = max_rel(&q.forward(&x)?, &want);
        assert!(err < 2e-2, "int8: {err}");
        let back = q.to_format(WeightFormat::F32)?;
        let err = max_rel(&back.forward(&x)?, &want);
        assert!(err < 2e-2, "int8 → f32: {err}");
        Ok(())
    }
}
