//! Multi-head attention with grouped-query heads, used for encoder self-attention, cached
//! decoder self-attention and cross-attention.

use crate::kernels::attention::{DecodeAttention, MAX_QUERY_ROWS};
#[cfg(target_arch = "x86_64")]
use crate::kernels::attention_many_rows::{ManyRowsAttention, Products};
use crate::kernels::machine::CycleBytes;
use crate::kernels::ops::{to_dtype_contiguous, SoftmaxLastDimInPlace};
#[cfg(target_arch = "x86_64")]
use crate::kernels::small_m::bf16_dots_pay;
use crate::kernels::step_heads::{QkNorm, StepHeads, WriteHeads, MAX_HEAD_DIM};
use crate::kv_cache::KvCache;
use crate::linear::{Linear, LinearStack, WeightFormat};
use crate::norm::RmsNorm;
use crate::rope::RotaryEmbedding;
use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;

/// Shape and checkpoint naming of one attention layer.
#[derive(Clone, Copy, Debug)]
pub struct AttentionConfig {
    /// Model width (input and output of the layer).
    pub dim: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (equal to `n_heads` without GQA).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Which of q, k, v, out carry a bias (Whisper: q, v, out; Llama: none).
    pub bias: [bool; 4],
    /// Checkpoint names of the q, k, v and output projections.
    pub names: [&'static str; 4],
    /// Qwen3's per-head RMSNorm of queries and keys (`q_norm`, `k_norm`, `[head_dim]`) before
    /// RoPE, with this epsilon; `None` for Whisper, Llama, Mistral.
    pub qk_norm_eps: Option<f64>,
}

/// Cross-attention keys and values, computed once per encoder output:
/// (batch_enc, kv_heads, source_len, head_dim) each.
#[derive(Clone, Debug)]
pub struct CrossKv {
    k: Tensor,
    v: Tensor,
}

/// Where the keys and values of a call come from.
pub enum KvSource<'a> {
    /// Keys/values of `x` itself, no cache (encoders).
    Own,
    /// Keys/values of `x` appended to a cache (autoregressive decoders).
    Cached(&'a mut KvCache),
    /// Precomputed cross-attention keys/values.
    Cross(&'a CrossKv),
}

impl CrossKv {
    /// The same keys and values stored as `dtype` (f16 halves what each decoder step reads).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            k: self.k.to_dtype(dtype)?,
            v: self.v.to_dtype(dtype)?,
        })
    }
}

/// One attention layer: projections plus the scaled-dot-product core.
#[derive(Clone, Debug)]
pub struct Attention {
    input: InputProjections,
    o: Linear,
    /// Per-head query and key norms (Qwen3), the query's carrying the softmax scale.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    /// Loaded from bf16 weights: the checkpoint's own runtime, or the precision asked for,
    /// computes in bf16 (whatever format the matrices take afterwards, int8 included).
    bf16_checkpoint: bool,
    /// Products of many query rows without a mask (an encoder's window) on bf16 dot products
    /// where the CPU has them ([`Attention::set_chunk_invariant`] on a bf16 layer; the kernel
    /// is x86-64's).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    bf16_products: bool,
}

/// The q, k and v projections, stacked ([`LinearStack`]) as the layer's inputs are used:
/// self-attention projects one input to all three in one product; cross-attention projects
/// the decoder's token to q on every step and the encoder output to k and v once.
#[derive(Clone, Debug)]
enum InputProjections {
    /// [q; k; v].
    Own(LinearStack),
    /// q, and [k; v].
    Cross { q: Linear, kv: LinearStack },
}

impl InputProjections {
    fn linears(&self) -> Vec<&Linear> {
        match self {
            Self::Own(qkv) => qkv.linears().iter().collect(),
            Self::Cross { q, kv } => std::iter::once(q).chain(kv.linears()).collect(),
        }
    }

    fn into_format(self, format: WeightFormat) -> Result<Self> {
        Ok(match self {
            Self::Own(qkv) => Self::Own(qkv.to_format(format)?),
            Self::Cross { q, kv } => Self::Cross {
                q: q.to_format(format)?,
                kv: kv.to_format(format)?,
            },
        })
    }
}

impl Attention {
    /// Loads the four projections named in `cfg` from `vb`, for self-attention.
    pub fn load(vb: VarBuilder, cfg: AttentionConfig) -> Result<Self> {
        Self::load_as(vb, cfg, false)
    }

    /// Loads a cross-attention layer: its keys and values come from another sequence
    /// ([`Attention::cross_kv`]).
    pub fn load_cross(vb: VarBuilder, cfg: AttentionConfig) -> Result<Self> {
        Self::load_as(vb, cfg, true)
    }

    fn load_as(vb: VarBuilder, cfg: AttentionConfig, cross: bool) -> Result<Self> {
        let [qn, kn, vn, on] = cfg.names;
        let [qb, kb, vb_, ob] = cfg.bias;
        let q_dim = cfg.n_heads * cfg.head_dim;
        let kv_dim = cfg.n_kv_heads * cfg.head_dim;
        // The softmax scale 1/√head_dim is folded into whatever produces the queries last:
        // the query norm's weight where there is one (a scale before an RMSNorm would cancel),
        // else the query projection (exact for the power-of-two scales of 64- and 256-wide
        // heads).
        let scale = 1.0 / (cfg.head_dim as f64).sqrt();
        let q = Linear::load(vb.pp(qn), cfg.dim, q_dim, qb)?;
        let (q, qk_norm) = match cfg.qk_norm_eps {
            Some(eps) => (
                q,
                Some((
                    RmsNorm::load(vb.pp("q_norm"), cfg.head_dim, eps)?.scaled(scale)?,
                    RmsNorm::load(vb.pp("k_norm"), cfg.head_dim, eps)?,
                )),
            ),
            None => (q.scaled(scale)?, None),
        };
        let k = Linear::load(vb.pp(kn), cfg.dim, kv_dim, kb)?;
        let v = Linear::load(vb.pp(vn), cfg.dim, kv_dim, vb_)?;
        let input = if cross {
            InputProjections::Cross {
                q,
                kv: LinearStack::new(vec![k, v])?,
            }
        } else {
            InputProjections::Own(LinearStack::new(vec![q, k, v])?)
        };
        Ok(Self {
            input,
            o: Linear::load(vb.pp(on), q_dim, cfg.dim, ob)?,
            qk_norm,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            bf16_checkpoint: vb.dtype() == DType::BF16,
            bf16_products: false,
        })
    }

    /// Makes every product of the layer compute a row alike in a block of any size (an
    /// encoder's: [`Linear::set_chunk_invariant`] for the projections), and a bf16 layer (loaded
    /// from bf16 weights, or holding them) also run its attention of many rows on bf16 dot
    /// products where the CPU has them (`kernels::attention_many_rows`: q, K, V and the
    /// probabilities rounded to bf16, as a bf16 runtime rounds them). Call it once the matrices
    /// have their final format.
    pub fn set_chunk_invariant(&mut self) {
        for layer in self.step_projections_mut() {
            layer.set_chunk_invariant();
        }
        self.bf16_products = self.bf16_checkpoint || self.o.weight_format() == WeightFormat::Bf16;
    }

    /// The kernel an attention of many rows (a window, a causal prompt) takes
    /// (`kernels::attention_many_rows`): bf16 dot products where the layer computes in bf16
    /// and the CPU takes them (`bf16_dots_pay`: not AMX's tiles), else f32 where the CPU has AVX-512 or AVX2;
    /// none (candle's f32 GEMMs) elsewhere.
    #[cfg(target_arch = "x86_64")]
    fn many_rows_kernel(&self, head_dim: usize) -> Option<ManyRowsAttention> {
        let bf16 = (self.bf16_products && bf16_dots_pay()).then_some(Products::Bf16);
        bf16.into_iter()
            .chain([Products::F32])
            .find_map(|products| ManyRowsAttention::new(products, head_dim))
    }

    /// The layer with its four projections stored as `format` (e.g. int8 for a decoder whose
    /// steps are bound by the bytes they read).
    pub fn to_format(self, format: WeightFormat) -> Result<Self> {
        Ok(Self {
            input: self.input.into_format(format)?,
            o: self.o.to_format(format)?,
            ..self
        })
    }

    /// The matrices one decoder step multiplies (for a model to count what its steps read):
    /// all of them for self-attention; q and the output for cross-attention, whose keys and
    /// values are projected once per source.
    pub fn step_projections(&self) -> Vec<&Linear> {
        match &self.input {
            InputProjections::Own(qkv) => qkv.linears().iter().chain([&self.o]).collect(),
            InputProjections::Cross { q, .. } => vec![q, &self.o],
        }
    }

    /// The same, mutably (for a model to plan how its steps read them).
    pub fn step_projections_mut(&mut self) -> Vec<&mut Linear> {
        match &mut self.input {
            InputProjections::Own(qkv) => {
                qkv.linears_mut().iter_mut().chain([&mut self.o]).collect()
            }
            InputProjections::Cross { q, .. } => vec![q, &mut self.o],
        }
    }

    /// What a pass over all projection matrices reads, by residency.
    pub fn read_bytes(&self) -> CycleBytes {
        self.input
            .linears()
            .into_iter()
            .chain([&self.o])
            .map(Linear::read_bytes)
            .sum()
    }

    /// The query and key/value projections of a cross-attention layer
    /// ([`Attention::load_cross`]); a self-attention layer has no source to attend to.
    fn cross_projections(&self) -> Result<(&Linear, &LinearStack)> {
        match &self.input {
            InputProjections::Cross { q, kv } => Ok((q, kv)),
            InputProjections::Own(_) => candle_core::bail!(
                "a self-attention layer attends to no other sequence (load it with Attention::load_cross)"
            ),
        }
    }

    /// x (batch, t, dim) → queries, keys and values (batch, t, width) each.
    fn queries_keys_values(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (q_dim, kv_dim) = (
            self.n_heads * self.head_dim,
            self.n_kv_heads * self.head_dim,
        );
        let (q, kv, kv_offset) = match &self.input {
            InputProjections::Own(qkv) => {
                let all = qkv.forward(x)?;
                (all.narrow(D::Minus1, 0, q_dim)?, all, q_dim)
            }
            InputProjections::Cross { q, kv } => (q.forward(x)?, kv.forward(x)?, 0),
        };
        Ok((
            q,
            kv.narrow(D::Minus1, kv_offset, kv_dim)?,
            kv.narrow(D::Minus1, kv_offset + kv_dim, kv_dim)?,
        ))
    }

    /// Projects an encoder output (batch, source_len, dim) to cross-attention keys/values.
    pub fn cross_kv(&self, source: &Tensor) -> Result<CrossKv> {
        let kv_dim = self.n_kv_heads * self.head_dim;
        let kv = self.cross_projections()?.1.forward(source)?;
        Ok(CrossKv {
            k: self.heads(&kv.narrow(D::Minus1, 0, kv_dim)?, self.n_kv_heads)?,
            v: self.heads(&kv.narrow(D::Minus1, kv_dim, kv_dim)?, self.n_kv_heads)?,
        })
    }

    /// x: (batch, t, dim) -> (batch, t, dim).
    ///
    /// `rope` rotates queries and keys at positions `offset..offset + t`; `causal` masks keys
    /// after each query's position (the cached prefix is visible, within the cache's sliding
    /// window if it has one). With
    /// [`KvSource::Cross`] a cross-attention output of batch 1 serves every row of `x` (beams).
    pub fn forward(
        &self,
        x: &Tensor,
        mut source: KvSource<'_>,
        causal: bool,
        rope: Option<(&RotaryEmbedding, usize)>,
    ) -> Result<Tensor> {
        let (batch, t, _) = x.dims3()?;
        if batch == 1 && t == 1 && self.takes_step_kernel(x, &source, rope.is_some()) {
            match &mut source {
                KvSource::Cached(cache) => return self.forward_step(x, cache, rope),
                KvSource::Cross(kv) => return self.forward_cross_step(x, kv),
                KvSource::Own => {}
            }
        }
        self.forward_blocks(x, source, causal, rope)
    }

    /// Whether a decoder step of x (one position of one sequence) runs the step kernels: f32
    /// on the CPU, heads within the kernels' limits, and either a self-attention layer with its
    /// cache (rotated or not; Qwen3's q/k norms only come with RoPE) or a cross-attention
    /// layer over one source.
    fn takes_step_kernel(&self, x: &Tensor, source: &KvSource<'_>, rope: bool) -> bool {
        x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.n_heads / self.n_kv_heads <= MAX_QUERY_ROWS
            && self.head_dim <= MAX_HEAD_DIM
            && match (&self.input, source) {
                (InputProjections::Own(_), KvSource::Cached(_)) => rope || self.qk_norm.is_none(),
                (InputProjections::Cross { .. }, KvSource::Cross(kv)) => {
                    kv.k.dim(0).is_ok_and(|b| b == 1)
                }
                _ => false,
            }
    }

    /// One position of each of several sequences, x (rows, 1, dim), row i at position
    /// `offsets[i]` of its own cache `caches[i]` (the steps of concurrent streams decoded
    /// together): the projections read their weights once for all rows, each row's attention
    /// is its own. A row gets what [`Self::forward`] gives it alone, up to the projections'
    /// summation order for rows beyond the first.
    pub fn forward_rows(
        &self,
        x: &Tensor,
        caches: &mut [&mut KvCache],
        rope: Option<&RotaryEmbedding>,
        offsets: &[usize],
    ) -> Result<Tensor> {
        let (rows, t, _) = x.dims3()?;
        if t != 1 || rows != caches.len() || rows != offsets.len() {
            candle_core::bail!(
                "attention over rows: x {:?} for {} caches and {} offsets",
                x.shape(),
                caches.len(),
                offsets.len()
            );
        }
        let with_rope = |i: usize| rope.map(|r| (r, offsets[i]));
        let probe = x.narrow(0, 0, 1)?;
        if rows == 1
            || !self.takes_step_kernel(&probe, &KvSource::Cached(&mut *caches[0]), rope.is_some())
        {
            // The general path, one sequence at a time.
            let outs = caches
                .iter_mut()
                .enumerate()
                .map(|(i, cache)| {
                    self.forward(
                        &x.narrow(0, i, 1)?,
                        KvSource::Cached(cache),
                        true,
                        with_rope(i),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            return Tensor::cat(&outs, 0);
        }
        let projected = self.project_steps(x)?;
        let outs = caches
            .iter_mut()
            .enumerate()
            .map(|(i, cache)| self.attend_row(&projected.narrow(0, i, 1)?, cache, with_rope(i)))
            .collect::<Result<Vec<_>>>()?;
        self.output(&Tensor::cat(&outs, 0)?)
    }

    /// One position of one sequence, x (1, 1, dim) at the cache's next position, against
    /// `cache`: the step kernels ([`StepHeads`] where there is a rotation, [`WriteHeads`],
    /// [`DecodeAttention`]) in place of the general path's tensor operations; the same
    /// arithmetic.
    fn forward_step(
        &self,
        x: &Tensor,
        cache: &mut KvCache,
        rope: Option<(&RotaryEmbedding, usize)>,
    ) -> Result<Tensor> {
        self.output(&self.attend_row(&self.project_steps(x)?, cache, rope)?)
    }

    /// The output projection of attention rows (rows, heads · head_dim): (rows, 1, dim).
    fn output(&self, rows: &Tensor) -> Result<Tensor> {
        self.o
            .forward(&rows.reshape((rows.dim(0)?, 1, self.n_heads * self.head_dim))?)
    }

    /// x (rows, 1, dim) → each row's [q; k; v] (rows, q_dim + 2 · kv_dim), in one product.
    fn project_steps(&self, x: &Tensor) -> Result<Tensor> {
        let InputProjections::Own(qkv) = &self.input else {
            candle_core::bail!("a decoder step projects its own keys and values");
        };
        let width = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim;
        qkv.forward(x)?.reshape((x.dim(0)?, width))
    }

    /// One sequence's step from its projected row [q; k; v] (1, q_dim + 2 · kv_dim), prepared
    /// in place (rotated, normed) and its k, v appended to `cache`: the attention's output
    /// (1, heads · head_dim), before the output projection.
    fn attend_row(
        &self,
        row: &Tensor,
        cache: &mut KvCache,
        rope: Option<(&RotaryEmbedding, usize)>,
    ) -> Result<Tensor> {
        let (q_dim, kv_dim) = (
            self.n_heads * self.head_dim,
            self.n_kv_heads * self.head_dim,
        );
        if let Some((rope, offset)) = rope {
            let (cos, sin) = rope.tables(offset, 1)?;
            let heads = StepHeads {
                heads: self.n_heads,
                kv_heads: self.n_kv_heads,
                head_dim: self.head_dim,
                layout: rope.layout(),
                qk_norm: None,
            };
            match &self.qk_norm {
                Some((q_norm, k_norm)) => q_norm.with_values(|q, eps| {
                    k_norm.with_values(|k, _| {
                        row.inplace_op3(&cos, &sin, &heads.with_norm(QkNorm { q, k, eps }))
                    })
                })?,
                None => row.inplace_op3(&cos, &sin, &heads)?,
            }
        }
        let view = cache.append_in_place(1, |k, v, at| {
            k.inplace_op2(row, &WriteHeads { column: q_dim, at })?;
            v.inplace_op2(
                row,
                &WriteHeads {
                    column: q_dim + kv_dim,
                    at,
                },
            )
        })?;
        self.attention_of_row(&row.narrow(1, 0, q_dim)?, &view.k, &view.v)
    }

    /// Cross-attention for one position of one sequence, x (1, 1, dim), over a source of
    /// batch 1: the query row straight into [`DecodeAttention`], without the general path's
    /// head transposes.
    fn forward_cross_step(&self, x: &Tensor, kv: &CrossKv) -> Result<Tensor> {
        let q = self.cross_projections()?.0.forward(x)?;
        let q = q.reshape((1, self.n_heads * self.head_dim))?;
        self.output(&self.attention_of_row(&q, &kv.k, &kv.v)?)
    }

    /// The attention of one query row (1, heads · head_dim) over k, v (1, kv_heads, s,
    /// head_dim): (1, heads · head_dim), before the output projection. Query heads are in
    /// order, so the heads sharing a key/value head (the GQA group) are adjacent: the row is
    /// already the kernel's (1, kv_heads, group, head_dim).
    fn attention_of_row(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let group = self.n_heads / self.n_kv_heads;
        let q = q.reshape((1, self.n_kv_heads, group, self.head_dim))?;
        q.apply_op3_no_bwd(k, v, &DecodeAttention)?
            .reshape((1, self.n_heads * self.head_dim))
    }

    /// [`Self::forward`] on the general path: any batch and block of positions.
    fn forward_blocks(
        &self,
        x: &Tensor,
        source: KvSource<'_>,
        causal: bool,
        rope: Option<(&RotaryEmbedding, usize)>,
    ) -> Result<Tensor> {
        let (batch, t, _) = x.dims3()?;
        let (q, k, v, past, window) = match source {
            KvSource::Cross(kv) => (
                self.heads(&self.cross_projections()?.0.forward(x)?, self.n_heads)?,
                kv.k.clone(),
                kv.v.clone(),
                0,
                None,
            ),
            own_or_cached => {
                let (q, k, v) = self.queries_keys_values(x)?;
                let mut q = self.heads(&q, self.n_heads)?;
                let mut k = self.heads(&k, self.n_kv_heads)?;
                let v = self.heads(&v, self.n_kv_heads)?;
                if let Some((q_norm, k_norm)) = &self.qk_norm {
                    q = q_norm.forward(&q)?;
                    k = k_norm.forward(&k)?;
                }
                if let Some((rope, offset)) = rope {
                    q = rope.apply(&q, offset)?;
                    k = rope.apply(&k, offset)?;
                }
                match own_or_cached {
                    KvSource::Cached(cache) => {
                        let view = cache.append(&k, &v)?;
                        (q, view.k, view.v, view.past, view.window)
                    }
                    _ => (q, k, v, 0, None),
                }
            }
        };
        let causal = (causal && t > 1).then_some(Causal { past, window });
        let out = self.attend(&q, &k, &v, causal)?;
        // (batch, heads, t, head_dim) -> (batch, t, heads * head_dim)
        let out = out
            .transpose(1, 2)?
            .reshape((batch, t, self.n_heads * self.head_dim))?;
        self.o.forward(&out)
    }

    /// Cross-attention scores before the softmax, q·k / √head_dim, of the query heads `heads`
    /// for x (1, t, dim) over `kv`: (heads.len(), t, source_len), f32. What word-level
    /// alignment reads from a model's alignment heads; not on any decoding path.
    pub fn cross_scores(&self, x: &Tensor, kv: &CrossKv, heads: &[usize]) -> Result<Tensor> {
        // The queries carry the softmax scale (see `load`).
        let q = self
            .heads(&self.cross_projections()?.0.forward(x)?, self.n_heads)?
            .squeeze(0)?;
        let rep = self.n_heads / self.n_kv_heads;
        let kv_heads: Vec<u32> = heads.iter().map(|&h| (h / rep) as u32).collect();
        let kv_heads = Tensor::new(kv_heads.as_slice(), x.device())?;
        let heads = Tensor::new(
            heads
                .iter()
                .map(|&h| h as u32)
                .collect::<Vec<_>>()
                .as_slice(),
            x.device(),
        )?;
        let q = q.index_select(&heads, 0)?.to_dtype(DType::F32)?;
        let k =
            kv.k.squeeze(0)?
                .index_select(&kv_heads, 0)?
                .to_dtype(DType::F32)?;
        q.matmul(&k.transpose(1, 2)?)
    }

    /// (batch, t, heads * head_dim) -> (batch, heads, t, head_dim), contiguous.
    fn heads(&self, x: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Scaled dot-product attention.
    ///
    /// q: (batch, heads, t, hd); k, v: (batch_kv, kv_heads, s, hd) with batch_kv = batch or 1;
    /// `causal`: the rows are positions past … past + t − 1 of s = past + t keys, each seeing
    /// those up to it (within the window), else every row sees every key. The query rows that
    /// share a key/value head (GQA groups, and beams sharing one cross-attention source) are
    /// folded into one matrix so each kv head is read once: q -> (batch_kv, kv_heads, group ·
    /// t, hd).
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, causal: Option<Causal>) -> Result<Tensor> {
        let (batch, heads, t, hd) = q.dims4()?;
        let (batch_kv, kv_heads, _, _) = k.dims4()?;
        let beams = batch / batch_kv;
        let rep = heads / kv_heads;
        let rows = beams * rep * t;
        let q = q
            .reshape((batch_kv, beams, kv_heads, rep * t * hd))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch_kv, kv_heads, rows, hd))?;
        // The folded rows back to (batch, heads, t, hd).
        let unfold = |out: Tensor| {
            out.reshape((batch_kv, kv_heads, beams, rep * t * hd))?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((batch, heads, t, hd))
        };
        let cpu_f32 = q.device().is_cpu() && q.dtype() == DType::F32;
        if causal.is_none() && rows <= MAX_QUERY_ROWS && cpu_f32 {
            // Decoder steps: a matrix-vector walk per head, no GEMM set-up.
            return unfold(q.apply_op3_no_bwd(k, v, &DecodeAttention)?);
        }
        let k = to_dtype_contiguous(k, q.dtype())?;
        let v = to_dtype_contiguous(v, q.dtype())?;
        #[cfg(target_arch = "x86_64")]
        if cpu_f32 {
            let kernel = self.many_rows_kernel(hd).and_then(|kernel| match causal {
                None => Some(kernel),
                Some(Causal { past, window: None }) => Some(kernel.causal(past, t)),
                // A sliding window's rows keep the GEMMs.
                Some(_) => None,
            });
            if let Some(kernel) = kernel {
                // An encoder's window or a prompt: both products in the kernel, row by row.
                return unfold(q.apply_op3_no_bwd(&k, &v, &kernel)?);
            }
        }
        let mask = match causal {
            Some(Causal { past, window }) => {
                Some(causal_mask(t, past, window, q.device())?.to_dtype(q.dtype())?)
            }
            None => None,
        };
        unfold(attend_on_gemms(
            &q,
            &k,
            &v,
            (beams * rep, t),
            mask.as_ref(),
        )?)
    }
}

/// Which keys the rows of a causal block see: positions past … past + t − 1 after `past`
/// cached ones, each the keys up to it within `window`.
#[derive(Clone, Copy, Debug)]
struct Causal {
    past: usize,
    window: Option<usize>,
}

/// softmax(q·Kᵀ + mask)·V on candle's GEMMs, in chunks of heads (and of rows without a mask):
/// q (batch_kv, kv_heads, rows, hd) with its rows `folded` = (group, t) runs of t positions;
/// k, v (batch_kv, kv_heads, s, hd) in q's dtype; mask (t, s) additive.
fn attend_on_gemms(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (group, t): (usize, usize),
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (batch_kv, kv_heads, rows, _) = q.dims4()?;
    let s = k.dim(2)?;
    // Long sequences (encoders: 1500 × 1500 per head) take a few heads at a time, so the
    // scores never exist for all heads at once.
    let heads_per_chunk = (SCORES_PER_CHUNK / (rows * s).max(1)).clamp(1, kv_heads);
    // Without a mask, one head's rows can also be split (an encoder window's 1500 × 1500).
    let rows_per_chunk = match mask {
        None => (SCORES_PER_CHUNK / s.max(1)).clamp(1, rows),
        Some(_) => rows,
    };
    let mut chunks = Vec::new();
    for h0 in (0..kv_heads).step_by(heads_per_chunk) {
        let n = heads_per_chunk.min(kv_heads - h0);
        let (k, v) = (k.narrow(1, h0, n)?, v.narrow(1, h0, n)?);
        let kt = k.transpose(2, 3)?;
        let mut blocks = Vec::new();
        for r0 in (0..rows).step_by(rows_per_chunk) {
            let q = q
                .narrow(1, h0, n)?
                .narrow(2, r0, rows_per_chunk.min(rows - r0))?;
            let scores = q.matmul(&kt)?;
            let scores = match mask {
                Some(mask) => scores
                    .reshape((batch_kv, n, group, t, s))?
                    .broadcast_add(mask)?
                    .reshape((batch_kv, n, rows, s))?,
                None => scores,
            };
            let probs = softmax_last_dim(scores)?;
            blocks.push(probs.matmul(&v)?); // (batch_kv, n, block rows, hd)
        }
        chunks.push(if blocks.len() == 1 {
            blocks.pop().expect("one block")
        } else {
            Tensor::cat(&blocks, 2)?
        });
    }
    if chunks.len() == 1 {
        Ok(chunks.pop().expect("one chunk"))
    } else {
        Tensor::cat(&chunks, 1)
    }
}

/// Softmax over the last dimension: in place with the crate's vectorised kernel for the
/// contiguous f32 scores of CPU attention (the scores are a fresh tensor, used once), candle's
/// otherwise.
fn softmax_last_dim(scores: Tensor) -> Result<Tensor> {
    if scores.device().is_cpu() && scores.dtype() == DType::F32 && scores.is_contiguous() {
        scores.inplace_op1(&SoftmaxLastDimInPlace)?;
        Ok(scores)
    } else {
        candle_nn::ops::softmax_last_dim(&scores)
    }
}

/// Attention scores computed at once at most (1 M f32 = 4 MB; the probabilities take as much).
const SCORES_PER_CHUNK: usize = 1 << 20;

/// Additive mask (t, past + t): query i sees keys 0..=past + i, and with a sliding window
/// only the last `window` of them (HF: `q - window < k <= q`).
fn causal_mask(t: usize, past: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let s = past + t;
    let window = window.unwrap_or(usize::MAX);
    // Row i (position q = past + i) sees keys q − window < j ≤ q. Filled by ranges: built per
    // layer, element by element it was ~6 % of Voxtral Realtime's encoder (perf).
    let mut mask = vec![f32::NEG_INFINITY; t * s];
    for (i, row) in mask.chunks_exact_mut(s).enumerate() {
        let q = past + i;
        row[(q + 1).saturating_sub(window)..=q].fill(0.0);
    }
    Tensor::from_vec(mask, (t, s), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn random(shape: &[usize], seed: u64, dev: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(data, shape, dev)
    }

    fn layer(dim: usize, heads: usize, kv_heads: usize, dev: &Device) -> Result<Attention> {
        layer_as(dim, heads, kv_heads, false, false, DType::F32, dev)
    }

    /// A cross-attention layer of the same shapes.
    fn cross_layer(dim: usize, heads: usize, kv_heads: usize, dev: &Device) -> Result<Attention> {
        layer_as(dim, heads, kv_heads, true, false, DType::F32, dev)
    }

    fn layer_as(
        dim: usize,
        heads: usize,
        kv_heads: usize,
        cross: bool,
        qk_norm: bool,
        dtype: DType,
        dev: &Device,
    ) -> Result<Attention> {
        let hd = dim / heads;
        let mut ts = HashMap::new();
        for (i, (name, out)) in [
            ("q", heads * hd),
            ("k", kv_heads * hd),
            ("v", kv_heads * hd),
        ]
        .into_iter()
        .enumerate()
        {
            ts.insert(
                format!("{name}.weight"),
                random(&[out, dim], i as u64, dev)?,
            );
        }
        ts.insert("o.weight".into(), random(&[dim, heads * hd], 9, dev)?);
        if qk_norm {
            for (i, name) in ["q_norm", "k_norm"].into_iter().enumerate() {
                let w = (random(&[hd], 20 + i as u64, dev)? + 1.0)?;
                ts.insert(format!("{name}.weight"), w);
            }
        }
        let vb = VarBuilder::from_tensors(ts, dtype, dev);
        let cfg = AttentionConfig {
            dim,
            n_heads: heads,
            n_kv_heads: kv_heads,
            head_dim: hd,
            bias: [false; 4],
            names: ["q", "k", "v", "o"],
            qk_norm_eps: qk_norm.then_some(1e-6),
        };
        if cross {
            Attention::load_cross(vb, cfg)
        } else {
            Attention::load(vb, cfg)
        }
    }

    /// A chunk-invariant layer of bf16 weights attends over an encoder's window (no mask) on
    /// bf16 dot products where the CPU has them: within bf16's rounding of the same layer's
    /// f32 attention and moved from it, GQA heads included; elsewhere the f32 attention. A
    /// bf16 checkpoint's int8 layer takes them too, an f32 layer or f32 checkpoint's does not.
    #[test]
    fn chunk_invariant_bf16_layers_attend_on_bf16_products() -> Result<()> {
        let dev = Device::Cpu;
        let x = random(&[2, 40, 64], 7, &dev)?;
        let mut bf16_layer = layer(64, 4, 2, &dev)?.to_format(WeightFormat::Bf16)?;
        bf16_layer.set_chunk_invariant();
        assert!(bf16_layer.bf16_products);
        let got = bf16_layer.forward(&x, KvSource::Own, false, None)?;
        let mut f32_attention = bf16_layer.clone();
        f32_attention.bf16_products = false;
        let want = f32_attention.forward(&x, KvSource::Own, false, None)?;
        let range = want.abs()?.max_all()?.to_scalar::<f32>()?;
        let moved = ((&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()? / range) as f64;
        println!("bf16 attention against f32 attention: {moved:.3e} of the range");
        if crate::kernels::small_m::bf16_dots_pay() {
            assert!(moved > 1e-4 && moved < 2e-2, "{moved}");
        } else {
            assert_eq!(moved, 0.0);
        }
        // Int8 matrices of a bf16 checkpoint attend in bf16, of an f32 one in f32.
        for (dtype, bf16) in [(DType::BF16, true), (DType::F32, false)] {
            let mut int8 =
                layer_as(64, 4, 2, false, false, dtype, &dev)?.to_format(WeightFormat::Int8)?;
            int8.set_chunk_invariant();
            assert_eq!(int8.bf16_products, bf16, "{dtype:?}");
        }
        let mut f32_layer = layer(64, 4, 2, &dev)?;
        f32_layer.set_chunk_invariant();
        assert!(!f32_layer.bf16_products);
        Ok(())
    }

    /// An attention of many rows (a window, a causal block) runs in the kernel the CPU takes:
    /// bf16 dot products for a chunk-invariant bf16 layer where the CPU takes them, else f32
    /// where it has AVX-512 or AVX2, else candle's GEMMs; an f32 layer's equals the GEMM
    /// path's within f32's sums, GQA heads included, whole and causal.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn windows_attend_in_the_kernel_the_cpu_takes() -> Result<()> {
        use crate::kernels::simd::Isa;
        let dev = Device::Cpu;
        let products = |layer: &Attention, hd| layer.many_rows_kernel(hd).map(|k| k.products());
        let f32_layer = layer(64, 4, 2, &dev)?;
        let vectors = Isa::Avx512.is_available() || Isa::Avx2.is_available();
        let f32_kernel = vectors.then_some(Products::F32);
        assert_eq!(products(&f32_layer, 16), f32_kernel);
        let mut bf16_layer = layer(64, 4, 2, &dev)?.to_format(WeightFormat::Bf16)?;
        assert_eq!(products(&bf16_layer, 16), f32_kernel);
        bf16_layer.set_chunk_invariant();
        let bf16_kernel = if bf16_dots_pay() {
            Some(Products::Bf16)
        } else {
            f32_kernel
        };
        assert_eq!(products(&bf16_layer, 16), bf16_kernel);
        // Heads that are not whole vectors of 16 keep the GEMMs.
        assert_eq!(products(&f32_layer, 24), None);
        // Whole windows and causal blocks (a prompt, and one after 20 cached positions).
        let (k, v) = (
            random(&[1, 2, 50, 16], 2, &dev)?,
            random(&[1, 2, 50, 16], 3, &dev)?,
        );
        for (t, causal) in [
            (40, None),
            (
                50,
                Some(Causal {
                    past: 0,
                    window: None,
                }),
            ),
            (
                30,
                Some(Causal {
                    past: 20,
                    window: None,
                }),
            ),
        ] {
            let q = random(&[1, 4, t, 16], 1, &dev)?;
            let kernel = f32_layer.attend(&q, &k, &v, causal)?;
            let mask = match causal {
                Some(c) => Some(causal_mask(t, c.past, None, &dev)?),
                None => None,
            };
            let rows = q.reshape((1, 2, 2 * t, 16))?;
            let gemms =
                attend_on_gemms(&rows, &k, &v, (2, t), mask.as_ref())?.reshape((1, 4, t, 16))?;
            let diff = (kernel - gemms)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-6, "t {t} {causal:?}: {diff}");
        }
        Ok(())
    }

    /// Row i (position past + i) sees exactly the keys j ≤ past + i within the window.
    #[test]
    fn causal_mask_follows_its_rule() -> Result<()> {
        for (t, past, window) in [
            (1, 0, None),
            (4, 0, None),
            (3, 5, None),
            (6, 2, Some(3)),
            (5, 9, Some(1)),
        ] {
            let mask = causal_mask(t, past, window, &Device::Cpu)?.to_vec2::<f32>()?;
            for (i, row) in mask.iter().enumerate() {
                assert_eq!(row.len(), past + t);
                for (j, &m) in row.iter().enumerate() {
                    let q = past + i;
                    let seen = j <= q && q - j < window.unwrap_or(usize::MAX);
                    assert_eq!(
                        m,
                        if seen { 0.0 } else { f32::NEG_INFINITY },
                        "{t} {past} {window:?} ({i}, {j})"
                    );
                }
            }
        }
        Ok(())
    }

    /// Decoding token by token through the cache equals one causal pass over the sequence,
    /// with grouped-query heads.
    #[test]
    fn cached_steps_equal_causal_prefill_with_gqa() -> Result<()> {
        let dev = Device::Cpu;
        let attn = layer(16, 4, 2, &dev)?;
        let x = random(&[1, 5, 16], 42, &dev)?;
        let full = attn.forward(&x, KvSource::Own, true, None)?;
        let mut cache = KvCache::new(1, 2, 8, 4, DType::F32, &dev)?;
        let head = attn.forward(
            &x.narrow(1, 0, 2)?,
            KvSource::Cached(&mut cache),
            true,
            None,
        )?;
        let mut steps = vec![head];
        for i in 2..5 {
            let xi = x.narrow(1, i, 1)?;
            steps.push(attn.forward(&xi, KvSource::Cached(&mut cache), true, None)?);
        }
        let stepped = Tensor::cat(&steps, 1)?;
        let diff = (full - stepped)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max diff {diff}");
        Ok(())
    }

    /// Blocks of any size through a sliding-window cache equal one masked pass.
    #[test]
    fn sliding_window_blocks_equal_one_masked_pass() -> Result<()> {
        let dev = Device::Cpu;
        let attn = layer(16, 4, 2, &dev)?;
        let x = random(&[1, 13, 16], 7, &dev)?;
        let mut whole = KvCache::sliding(2, 4, 13, 4, DType::F32, &dev)?;
        let full = attn.forward(&x, KvSource::Cached(&mut whole), true, None)?;
        let mut cache = KvCache::sliding(2, 4, 5, 4, DType::F32, &dev)?;
        let mut parts = Vec::new();
        let mut at = 0;
        for n in [3, 1, 1, 4, 2, 1, 1] {
            let xi = x.narrow(1, at, n)?;
            parts.push(attn.forward(&xi, KvSource::Cached(&mut cache), true, None)?);
            at += n;
        }
        let diff = (full - Tensor::cat(&parts, 1)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max diff {diff}");
        // And the window matters: a plain causal pass differs.
        let plain = attn.forward(&x, KvSource::Own, true, None)?;
        let full = attn.forward(
            &x,
            KvSource::Cached(&mut KvCache::sliding(2, 4, 13, 4, DType::F32, &dev)?),
            true,
            None,
        )?;
        let diff = (plain - full)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff > 1e-3, "window had no effect");
        Ok(())
    }

    /// Steps of several sequences taken together, each at its own position of its own cache
    /// (bf16 and int8 weights, Qwen3's q/k norms, an f16 cache among them), give each what its
    /// step alone gives: the products read the weights once, the attentions stay apart.
    #[test]
    fn steps_of_several_sequences_equal_each_alone() -> Result<()> {
        let dev = Device::Cpu;
        for (dtype, qk_norm, int8) in [
            (DType::F32, false, false),
            (DType::BF16, true, false),
            (DType::BF16, false, true),
        ] {
            let mut attn = layer_as(32, 4, 2, false, qk_norm, dtype, &dev)?;
            if int8 {
                attn = attn.to_format(WeightFormat::Int8)?;
            }
            let rope =
                RotaryEmbedding::new(8, 64, 10000.0, crate::rope::RopeLayout::Interleaved, &dev)?;
            // Three sequences with 5, 0 and 9 positions cached; one cache in f16.
            let mut caches = Vec::new();
            for (i, (past, kv_dtype)) in [(5, DType::F32), (0, DType::F16), (9, DType::F32)]
                .into_iter()
                .enumerate()
            {
                let mut cache = KvCache::growable(1, 2, 16, 8, kv_dtype, &dev)?;
                if past > 0 {
                    let x = random(&[1, past, 32], 30 + i as u64, &dev)?;
                    attn.forward(&x, KvSource::Cached(&mut cache), true, Some((&rope, 0)))?;
                }
                caches.push(cache);
            }
            let offsets = [5, 0, 9];
            let mut alone = Vec::new();
            for (i, cache) in caches.iter().enumerate() {
                let mut cache = cache.fork()?;
                let x = random(&[1, 1, 32], 40 + i as u64, &dev)?;
                let out = attn.forward(
                    &x,
                    KvSource::Cached(&mut cache),
                    true,
                    Some((&rope, offsets[i])),
                )?;
                alone.push((out, cache));
            }
            let x = Tensor::cat(
                &(0..3)
                    .map(|i| random(&[1, 1, 32], 40 + i, &dev))
                    .collect::<Result<Vec<_>>>()?,
                0,
            )?;
            let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
            let together = attn.forward_rows(&x, &mut refs, Some(&rope), &offsets)?;
            for (i, (out, cache)) in alone.iter().enumerate() {
                let max_diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
                    (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
                        .abs()?
                        .max_all()?
                        .to_scalar::<f32>()
                };
                let diff = max_diff(&together.narrow(0, i, 1)?, out)?;
                assert!(diff < 1e-5, "{dtype:?} int8 {int8}, row {i}: {diff}");
                assert_eq!(caches[i].len(), offsets[i] + 1);
                let ((k, v), (k_alone, v_alone)) = (caches[i].snapshot()?, cache.snapshot()?);
                assert!(max_diff(&k, &k_alone)? < 1e-5 && max_diff(&v, &v_alone)? < 1e-5);
            }
            // A row short of a cache is refused.
            let mut two: Vec<&mut KvCache> = caches.iter_mut().take(2).collect();
            assert!(attn
                .forward_rows(&x, &mut two, Some(&rope), &offsets[..2])
                .is_err());
        }
        Ok(())
    }

    /// A cross-attention source of batch 1 shared by several beams gives each beam the same
    /// result as attending alone.
    #[test]
    fn shared_cross_source_equals_per_row_attention() -> Result<()> {
        let dev = Device::Cpu;
        let attn = cross_layer(16, 4, 4, &dev)?;
        let src = random(&[1, 7, 16], 3, &dev)?;
        let kv = attn.cross_kv(&src)?;
        // A self-attention layer has no cross-attention source.
        assert!(layer(16, 4, 4, &dev)?.cross_kv(&src).is_err());
        let x = random(&[3, 2, 16], 4, &dev)?;
        let together = attn.forward(&x, KvSource::Cross(&kv), false, None)?;
        for b in 0..3 {
            let alone = attn.forward(&x.narrow(0, b, 1)?, KvSource::Cross(&kv), false, None)?;
            let diff = (together.narrow(0, b, 1)? - alone)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-6, "row {b}: {diff}");
        }
        Ok(())
    }

    /// f16 and bf16 cross-attention keys/values (decode-step kernel and GEMM path) stay
    /// within their rounding of the f32 result.
    #[test]
    fn f16_cross_source_matches_f32() -> Result<()> {
        let dev = Device::Cpu;
        let attn = cross_layer(16, 4, 4, &dev)?;
        let kv = attn.cross_kv(&random(&[1, 7, 16], 3, &dev)?)?;
        for (dtype, tol) in [(DType::F16, 5e-3), (DType::BF16, 3e-2)] {
            let half = kv.to_dtype(dtype)?;
            for t in [1, 12] {
                let x = random(&[1, t, 16], 5, &dev)?;
                let want = attn.forward(&x, KvSource::Cross(&kv), false, None)?;
                let got = attn.forward(&x, KvSource::Cross(&half), false, None)?;
                let diff = (want - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < tol, "{dtype:?} t={t}: {diff}");
            }
        }
        Ok(())
    }

    /// Bits of a tensor, as f32.
    fn bits(t: &Tensor) -> Result<Vec<u32>> {
        let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok(v.iter().map(|v| v.to_bits()).collect())
    }

    /// A decoder step through the step kernels gives the general path's bits, and leaves the
    /// same keys and values in the cache: with and without Qwen3's q/k norms, both RoPE
    /// layouts and none (Whisper), f32 / f16 / bf16 caches, full and sliding, positions inside
    /// the RoPE table and past it.
    #[test]
    fn step_kernels_equal_the_general_path() -> Result<()> {
        use crate::rope::RopeLayout;
        let dev = Device::Cpu;
        let x = random(&[1, 14, 32], 11, &dev)?;
        for qk_norm in [false, true] {
            let attn = layer_as(32, 4, 2, false, qk_norm, DType::F32, &dev)?;
            let mut probe = KvCache::new(1, 2, 16, 8, DType::F32, &dev)?;
            let layouts = [
                Some(RopeLayout::Interleaved),
                Some(RopeLayout::RotateHalf),
                None,
            ];
            for layout in layouts {
                // Qwen3's norms come only with a rotation; without one the general path runs.
                let unrotated = layout.is_none();
                let rope = layout
                    .map(|l| RotaryEmbedding::new(8, 9, 10000.0, l, &dev))
                    .transpose()?;
                let probe_x = x.narrow(1, 0, 1)?;
                let takes =
                    attn.takes_step_kernel(&probe_x, &KvSource::Cached(&mut probe), rope.is_some());
                assert_eq!(takes, !(unrotated && qk_norm), "{qk_norm} {layout:?}");
                if !takes {
                    // Both sides would be the general path.
                    continue;
                }
                for dtype in [DType::F32, DType::F16, DType::BF16] {
                    for window in [None, Some(4)] {
                        let cache = || match window {
                            None => KvCache::new(1, 2, 16, 8, dtype, &dev),
                            Some(w) => KvCache::sliding(2, w, 3, 8, dtype, &dev),
                        };
                        let (mut fused, mut general) = (cache()?, cache()?);
                        let prompt = x.narrow(1, 0, 3)?;
                        let at_0 = rope.as_ref().map(|r| (r, 0));
                        for c in [&mut fused, &mut general] {
                            attn.forward(&prompt, KvSource::Cached(c), true, at_0)?;
                        }
                        for at in 3..14 {
                            let case = format!("{qk_norm} {layout:?} {dtype:?} {window:?} {at}");
                            let xi = x.narrow(1, at, 1)?;
                            let rope = rope.as_ref().map(|r| (r, at));
                            let got =
                                attn.forward(&xi, KvSource::Cached(&mut fused), true, rope)?;
                            let want = attn.forward_blocks(
                                &xi,
                                KvSource::Cached(&mut general),
                                true,
                                rope,
                            )?;
                            assert_eq!(bits(&got)?, bits(&want)?, "{case}");
                            // What the cache holds: the view of one more (zero) position,
                            // appended to a copy.
                            let cached = |c: &KvCache| -> Result<(Vec<u32>, Vec<u32>)> {
                                let zero = Tensor::zeros((1, 2, 1, 8), DType::F32, &dev)?;
                                let view = c.fork()?.append(&zero, &zero)?;
                                Ok((bits(&view.k)?, bits(&view.v)?))
                            };
                            assert_eq!(cached(&fused)?, cached(&general)?, "cache: {case}");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A cross-attention step over a source of batch 1 takes the step path and gives the
    /// general path's bits, for f32 and f16 keys and values.
    #[test]
    fn cross_step_equals_the_general_path() -> Result<()> {
        let dev = Device::Cpu;
        let attn = cross_layer(32, 4, 2, &dev)?;
        let source = random(&[1, 7, 32], 5, &dev)?;
        let x = random(&[1, 3, 32], 6, &dev)?;
        for dtype in [DType::F32, DType::F16] {
            let kv = attn.cross_kv(&source)?.to_dtype(dtype)?;
            for at in 0..3 {
                let xi = x.narrow(1, at, 1)?;
                assert!(attn.takes_step_kernel(&xi, &KvSource::Cross(&kv), false));
                let got = attn.forward(&xi, KvSource::Cross(&kv), false, None)?;
                let want = attn.forward_blocks(&xi, KvSource::Cross(&kv), false, None)?;
                assert_eq!(bits(&got)?, bits(&want)?, "{dtype:?} {at}");
            }
        }
        Ok(())
    }
}
