//! The 12 Hz speech tokenizer's encoder (qwen-tts `Qwen3TTSTokenizerV2Encoder`: transformers'
//! `MimiModel` without its decoder, specs/qwen3-tts.md §5.1): a 24 kHz clip → 16 codes per
//! 80 ms frame, the reference codes of voice-clone prompts.
//!
//! ```text
//! samples (1, 1, N) ─SEANet: causal conv k7 → F, 4 × [residual block, ELU, conv k2r stride r]
//!   for r = 4, 5, 6, 8, ELU, conv k3 → hidden─▶ (1, hidden, ⌈N / 960⌉)
//!   ─transformer: LayerNorm, causal RoPE attention, GELU MLP, layer scale─▶
//!   ─downsample: conv k4 stride 2, replicate padding─▶ (1, hidden, T = ⌈N / 1920⌉)
//!   ─split RVQ: semantic (1 codebook) and acoustic (15 of 31) groups, each from its own
//!   input_proj; nearest entry, subtract, next codebook─▶ T frames × 16 codes
//! ```
//!
//! Every convolution is Mimi's causal one: `k_eff − stride` frames of left padding (zeros, or
//! copies of the first frame for the downsample) and enough on the right to make the length a
//! multiple of the stride; the first, widest SEANet layers run on chunks of the clip with
//! enough left context to give exactly one pass's values. The transformer attends over the whole causal prefix: transformers
//! 4.57's eager and sdpa attention build Mimi's mask without `sliding_window` (only
//! flash-attention applies it), and qwen-tts loads the tokenizer with the default sdpa, so the
//! configured window (250 frames, 10 s) is not applied, as in the reference.

use super::codec::{codebook_vectors, CodecConfig};
use crate::error::{read_json, require, Error, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use voxide_nn::activation::elu_padded;
use voxide_nn::conv::{Conv1d, Conv1dSpec};
use voxide_nn::transformer::{LayerConfig, LayerKind, LayerNames, PreNormLayer};
use voxide_nn::weights::SafetensorsFiles;
use voxide_nn::{KvCache, RopeLayout, RotaryEmbedding};

/// `encoder_config` of the speech tokenizer's `config.json` (a `MimiConfig`): the fields the
/// encoder reads, with `MimiConfig`'s defaults for omitted ones. `sliding_window` is not read
/// (see the module docs).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct CodecEncoderConfig {
    pub sampling_rate: usize,
    /// Code frames per second (12.5); `None`: sampling_rate / [`Self::frame_size`].
    #[serde(rename = "_frame_rate", alias = "frame_rate")]
    pub frame_rate: Option<f64>,
    pub audio_channels: usize,
    pub hidden_size: usize,
    pub num_filters: usize,
    pub num_residual_layers: usize,
    /// The decoder's upsampling ratios; the encoder downsamples by them in reverse order.
    pub upsampling_ratios: Vec<usize>,
    pub kernel_size: usize,
    pub last_kernel_size: usize,
    pub residual_kernel_size: usize,
    pub dilation_growth_rate: usize,
    pub use_causal_conv: bool,
    /// Padding of the SEANet convolutions: "constant" (zeros) or "replicate".
    pub pad_mode: String,
    pub compress: usize,
    pub use_conv_shortcut: bool,
    pub codebook_size: usize,
    pub codebook_dim: usize,
    pub num_quantizers: usize,
    pub num_semantic_quantizers: usize,
    pub vector_quantization_hidden_dimension: usize,
    pub num_hidden_layers: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: Option<usize>,
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub attention_bias: bool,
}

impl Default for CodecEncoderConfig {
    /// `MimiConfig()`'s values.
    fn default() -> Self {
        Self {
            sampling_rate: 24_000,
            frame_rate: None,
            audio_channels: 1,
            hidden_size: 512,
            num_filters: 64,
            num_residual_layers: 1,
            upsampling_ratios: vec![8, 6, 5, 4],
            kernel_size: 7,
            last_kernel_size: 3,
            residual_kernel_size: 3,
            dilation_growth_rate: 2,
            use_causal_conv: true,
            pad_mode: "constant".into(),
            compress: 2,
            use_conv_shortcut: false,
            codebook_size: 2048,
            codebook_dim: 256,
            num_quantizers: 32,
            num_semantic_quantizers: 1,
            vector_quantization_hidden_dimension: 256,
            num_hidden_layers: 8,
            intermediate_size: 2048,
            num_attention_heads: 8,
            num_key_value_heads: 8,
            head_dim: None,
            hidden_act: "gelu".into(),
            max_position_embeddings: 8000,
            norm_eps: 1e-5,
            rope_theta: 10_000.0,
            attention_bias: false,
        }
    }
}

impl CodecEncoderConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Input samples per code frame: the SEANet strides times the downsample's 2 (1920).
    pub fn frame_size(&self) -> usize {
        self.upsampling_ratios.iter().product::<usize>() * 2
    }

    /// Frame rate of the SEANet output (25 Hz): ⌈sampling_rate / Π ratios⌉.
    fn encodec_frame_rate(&self) -> usize {
        self.sampling_rate
            .div_ceil(self.upsampling_ratios.iter().product())
    }

    /// The downsample's kernel: 2 · ⌊encodec_frame_rate / frame_rate⌋ (4).
    fn downsample_kernel(&self) -> usize {
        let rate = self
            .frame_rate
            .unwrap_or(self.sampling_rate as f64 / self.frame_size() as f64);
        2 * (self.encodec_frame_rate() as f64 / rate) as usize
    }

    /// Whether this encoder can run with `valid_quantizers` codes kept per frame.
    fn validate(&self, valid_quantizers: usize) -> std::result::Result<(), String> {
        let unsupported = |what: String| Err(format!("unsupported encoder_config: {what}"));
        if self.audio_channels != 1 || !self.use_causal_conv || self.use_conv_shortcut {
            return unsupported(format!(
                "audio_channels {}, use_causal_conv {}, use_conv_shortcut {} (the encoder takes \
                 mono audio through causal convolutions with identity shortcuts)",
                self.audio_channels, self.use_causal_conv, self.use_conv_shortcut
            ));
        }
        if !matches!(self.pad_mode.as_str(), "constant" | "replicate") || self.hidden_act != "gelu"
        {
            return unsupported(format!(
                "pad_mode {:?}, hidden_act {:?} (takes \"constant\" or \"replicate\", \"gelu\")",
                self.pad_mode, self.hidden_act
            ));
        }
        if self.upsampling_ratios.is_empty()
            || self.upsampling_ratios.contains(&0)
            || self.compress == 0
            || self.downsample_kernel() < 2
        {
            return unsupported(format!(
                "upsampling_ratios {:?}, compress {}, frame_rate {:?}: the encoder needs strides \
                 and a frame rate below the convolutions' rate (a downsample)",
                self.upsampling_ratios, self.compress, self.frame_rate
            ));
        }
        let heads = (self.num_attention_heads, self.num_key_value_heads);
        if heads.0 == 0 || heads.1 == 0 || !heads.0.is_multiple_of(heads.1) {
            return Err(format!(
                "{} heads over {} key/value heads",
                heads.0, heads.1
            ));
        }
        // The codebooks live in the quantizers' input width (after input_proj, if any).
        if self.vector_quantization_hidden_dimension != self.codebook_dim {
            return Err(format!(
                "codebook_dim {} differs from vector_quantization_hidden_dimension {}",
                self.codebook_dim, self.vector_quantization_hidden_dimension
            ));
        }
        if valid_quantizers == 0
            || valid_quantizers > self.num_quantizers
            || self.num_semantic_quantizers >= self.num_quantizers
        {
            return Err(format!(
                "{valid_quantizers} kept quantizers of {} ({} semantic)",
                self.num_quantizers, self.num_semantic_quantizers
            ));
        }
        Ok(())
    }
}

/// `MimiConv1d` with `use_causal_conv` (`….conv`): `k_eff − stride` frames of left padding and,
/// on the right, enough to make the length a multiple of the stride, with zeros or copies of
/// the edge frames. (batch, in, t) → (batch, out, ⌈t / stride⌉).
#[derive(Clone, Debug)]
struct CausalConv {
    conv: Conv1d,
    left: usize,
    stride: usize,
    replicate: bool,
}

impl CausalConv {
    fn load(vb: VarBuilder, spec: Conv1dSpec, replicate: bool) -> candle_core::Result<Self> {
        Ok(Self {
            conv: Conv1d::load(vb.pp("conv"), spec)?,
            left: spec.receptive_field() - spec.stride,
            stride: spec.stride,
            replicate,
        })
    }

    /// The convolution of x, or with `elu` of ELU(x) (the ELU commutes with both paddings:
    /// ELU(0) = 0, and the ELU of a copied frame is the copied ELU).
    fn forward(&self, x: &Tensor, elu: bool) -> candle_core::Result<Tensor> {
        let t = x.dim(2)?;
        let right = t.div_ceil(self.stride) * self.stride - t;
        let x = match (self.replicate, elu) {
            (false, true) => elu_padded(x, self.left, right)?,
            (false, false) => x.pad_with_zeros(2, self.left, right)?,
            (true, _) => {
                let x = x.pad_with_same(2, self.left, right)?;
                if elu {
                    elu_padded(&x, 0, 0)?
                } else {
                    x
                }
            }
        };
        self.conv.forward(&x)
    }
}

/// SEANet residual block: x + conv k1(ELU(conv k3, dilated (dim → dim / compress)(ELU(x)))).
#[derive(Clone, Debug)]
struct ResidualBlock {
    convs: Vec<CausalConv>,
}

impl ResidualBlock {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for conv in &self.convs {
            h = conv.forward(&h, true)?;
        }
        x + h
    }
}

/// A module of the SEANet stack with weights; the ELU modules between them run inside the
/// convolution that follows.
#[derive(Clone, Debug)]
enum SeanetLayer {
    /// A convolution, after an ELU (all but the first).
    Conv(CausalConv, bool),
    Residual(ResidualBlock),
}

impl SeanetLayer {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Conv(conv, elu) => conv.forward(x, *elu),
            Self::Residual(block) => block.forward(x),
        }
    }

    fn stride(&self) -> usize {
        match self {
            Self::Conv(conv, _) => conv.stride,
            Self::Residual(_) => 1,
        }
    }

    /// Input frames before an output's own that it reads (its left padding, all convolutions).
    fn reach(&self) -> usize {
        match self {
            Self::Conv(conv, _) => conv.left,
            Self::Residual(block) => block.convs.iter().map(|c| c.left).sum(),
        }
    }
}

/// The first SEANet layers, run on chunks of the clip (see [`CHUNK`]): how many, and the left
/// context a chunk takes so that its kept outputs are exact (their reach in samples, rounded up
/// to a multiple of their total stride).
#[derive(Clone, Copy, Debug)]
struct Front {
    layers: usize,
    context: usize,
}

impl Front {
    /// The layers through the second strided convolution (24 kHz and 6 kHz at 64 and 128
    /// channels for the real model: the largest activations).
    fn of(seanet: &[(usize, SeanetLayer)]) -> Self {
        let (mut layers, mut stride, mut reach, mut strided) = (0, 1, 0, 0);
        for (_, layer) in seanet {
            if strided == 2 {
                break;
            }
            reach += layer.reach() * stride;
            stride *= layer.stride();
            strided += usize::from(layer.stride() > 1);
            layers += 1;
        }
        Self {
            layers,
            context: reach.div_ceil(stride) * stride,
        }
    }
}

/// One group of the split RVQ: `input_proj` (a 1×1 conv without bias) and its codebooks.
#[derive(Clone, Debug)]
struct RvqGroup {
    /// (hidden, codebook_dim): the input projection transposed; `None` when the widths match.
    input_proj: Option<Tensor>,
    /// Per codebook: the entries (size, codebook_dim) and their squared norms (1, size).
    codebooks: Vec<(Tensor, Tensor)>,
}

impl RvqGroup {
    fn load(vb: VarBuilder, layers: usize, cfg: &CodecEncoderConfig) -> candle_core::Result<Self> {
        let dim = cfg.codebook_dim;
        let input_proj = if cfg.vector_quantization_hidden_dimension == cfg.hidden_size {
            None
        } else {
            let w = vb.pp("input_proj").get_with_hints_dtype(
                (dim, cfg.hidden_size, 1),
                "weight",
                candle_nn::Init::Const(0.),
                DType::F32,
            )?;
            Some(w.squeeze(2)?.t()?.contiguous()?)
        };
        let codebooks = (0..layers)
            .map(|i| {
                let cb = vb.pp("layers").pp(i).pp("codebook");
                let entries = codebook_vectors(cb, "embed_sum", cfg.codebook_size, dim)?;
                let norms = entries.sqr()?.sum_keepdim(1)?.t()?.contiguous()?;
                Ok((entries, norms))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            input_proj,
            codebooks,
        })
    }

    /// x (T, hidden) → the codes of each codebook (T each); reports the projected input as
    /// (1, codebook_dim, T) under `{name}.input_proj`.
    fn encode(
        &self,
        x: &Tensor,
        name: &str,
        stage: &mut dyn FnMut(&str, &Tensor),
    ) -> candle_core::Result<Vec<Vec<u32>>> {
        let mut residual = match &self.input_proj {
            Some(w) => x.matmul(w)?,
            None => x.clone(),
        };
        stage(&format!("{name}.input_proj"), &residual.t()?.unsqueeze(0)?);
        let mut codes = Vec::with_capacity(self.codebooks.len());
        for (entries, norms) in &self.codebooks {
            // argmin ‖r − e‖² = argmin ‖e‖² − 2 r·e (torch.cdist's argmin; ties are rare).
            let scores = residual.matmul(&entries.t()?)?.affine(-2.0, 0.0)?;
            let picks = scores.broadcast_add(norms)?.argmin(D::Minus1)?;
            residual = (residual - entries.index_select(&picks, 0)?)?;
            codes.push(picks.to_vec1::<u32>()?);
        }
        Ok(codes)
    }
}

/// The codec encoder's weights.
#[derive(Clone, Debug)]
pub struct CodecEncoder {
    config: CodecEncoderConfig,
    /// With their module indices (`encoder.layers.{i}`).
    seanet: Vec<(usize, SeanetLayer)>,
    front: Front,
    layers: Vec<PreNormLayer>,
    rope: RotaryEmbedding,
    downsample: CausalConv,
    /// The semantic and the acoustic group, with the codebooks of the kept quantizers only.
    quantizer: [RvqGroup; 2],
}

/// Samples of the clip the first SEANet layers take at once (0.32 s, plus their left context):
/// their activations stay a few MB, which the allocator reuses and the caches hold, instead of
/// fresh ~60 MB tensors per layer for 10 s at 64 channels (whose page faults and cache misses
/// made the whole encoder ~40 % slower on 2 cores).
const CHUNK: usize = 7680;

/// Query frames the transformer takes at once (10 s): bounds the attention scores of a long
/// clip, and keeps the projections' GEMMs large.
const FRAME_BLOCK: usize = 256;

/// The quantizer groups' checkpoint prefixes, also their stage names (`<group>.input_proj`).
const GROUPS: [&str; 2] = [
    "quantizer.semantic_residual_vector_quantizer",
    "quantizer.acoustic_residual_vector_quantizer",
];

impl CodecEncoder {
    /// Loads `encoder.*` (`vb` at the root of the speech tokenizer's `model.safetensors`) in
    /// f32, with the codebooks of the first `valid_quantizers` quantizers
    /// (`encoder_valid_num_quantizers`, 16).
    pub fn load(
        vb: VarBuilder,
        cfg: &CodecEncoderConfig,
        valid_quantizers: usize,
    ) -> candle_core::Result<Self> {
        cfg.validate(valid_quantizers)
            .map_err(candle_core::Error::msg)?;
        let vb = vb.pp("encoder");
        let replicate = cfg.pad_mode == "replicate";
        let e = vb.pp("encoder").pp("layers");
        // Module indices count the ELUs: conv 0, then per ratio residual blocks, ELU, conv;
        // ELU, conv.
        let conv = |i: usize, spec: Conv1dSpec, elu: bool| {
            let conv = CausalConv::load(e.pp(i), spec, replicate)?;
            candle_core::Result::Ok((i, SeanetLayer::Conv(conv, elu)))
        };
        let first = Conv1dSpec::new(cfg.audio_channels, cfg.num_filters, cfg.kernel_size);
        let mut seanet = vec![conv(0, first, false)?];
        let mut index = 1;
        let mut dim = cfg.num_filters;
        for &ratio in cfg.upsampling_ratios.iter().rev() {
            for j in 0..cfg.num_residual_layers {
                let block = e.pp(index).pp("block");
                let hidden = dim / cfg.compress;
                let first = Conv1dSpec {
                    dilation: cfg.dilation_growth_rate.pow(j as u32),
                    ..Conv1dSpec::new(dim, hidden, cfg.residual_kernel_size)
                };
                let convs = vec![
                    CausalConv::load(block.pp(1), first, replicate)?,
                    CausalConv::load(block.pp(3), Conv1dSpec::new(hidden, dim, 1), replicate)?,
                ];
                seanet.push((index, SeanetLayer::Residual(ResidualBlock { convs })));
                index += 1;
            }
            let down = Conv1dSpec {
                stride: ratio,
                ..Conv1dSpec::new(dim, 2 * dim, 2 * ratio)
            };
            seanet.push(conv(index + 1, down, true)?);
            index += 2;
            dim *= 2;
        }
        let last = Conv1dSpec::new(dim, cfg.hidden_size, cfg.last_kernel_size);
        seanet.push(conv(index + 1, last, true)?);

        let head_dim = cfg.head_dim();
        let layer = LayerConfig {
            dim: cfg.hidden_size,
            hidden_dim: cfg.intermediate_size,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim,
            norm_eps: cfg.norm_eps,
            attention_bias: [cfg.attention_bias; 4],
            down_bias: false,
            qk_norm: false,
            layer_scale: true,
        };
        let t = vb.pp("encoder_transformer").pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                PreNormLayer::load_kind(t.pp(i), &layer, &LayerNames::HF, LayerKind::LayerNormGelu)
            })
            .collect::<candle_core::Result<_>>()?;

        // The downsample has no bias: Conv1d takes one, so it gets zeros.
        let hidden = cfg.hidden_size;
        let kernel = cfg.downsample_kernel();
        let weight = vb.pp("downsample").pp("conv").get_with_hints_dtype(
            (hidden, hidden, kernel),
            "weight",
            candle_nn::Init::Const(0.),
            DType::F32,
        )?;
        let parts = HashMap::from([
            ("conv.weight".to_string(), weight),
            (
                "conv.bias".to_string(),
                Tensor::zeros(hidden, DType::F32, vb.device())?,
            ),
        ]);
        let downsample = CausalConv::load(
            VarBuilder::from_tensors(parts, DType::F32, vb.device()),
            Conv1dSpec {
                stride: 2,
                ..Conv1dSpec::new(hidden, hidden, kernel)
            },
            true,
        )?;

        let semantic = cfg.num_semantic_quantizers.min(valid_quantizers);
        let group = |i: usize, layers: usize| RvqGroup::load(vb.pp(GROUPS[i]), layers, cfg);
        let quantizer = [group(0, semantic)?, group(1, valid_quantizers - semantic)?];
        Ok(Self {
            front: Front::of(&seanet),
            seanet,
            layers,
            rope: RotaryEmbedding::new(
                head_dim,
                cfg.max_position_embeddings,
                cfg.rope_theta,
                RopeLayout::RotateHalf,
                vb.device(),
            )?,
            downsample,
            quantizer,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &CodecEncoderConfig {
        &self.config
    }

    /// Encodes one clip of samples at `sampling_rate` (24 kHz) into ⌈samples / 1920⌉ frames of
    /// `valid_quantizers` codes, [semantic, acoustic…]: `Qwen3TTSTokenizerV2Model.encode`'s
    /// `audio_codes[0]` for the clip (qwen-tts' `Qwen3TTSTokenizer.encode` after resampling).
    pub fn encode(&self, samples_24k: &[f32]) -> Result<Vec<Vec<u32>>> {
        self.run(samples_24k, false, &mut |_, _| {})
    }

    /// [`Self::encode`], reporting every stage to `stage(name, tensor)` under the module path
    /// inside the reference encoder:
    /// - `encoder.layers.{i}` (not the ELUs): the SEANet convolutions and residual blocks,
    ///   (1, channels, frames);
    /// - `encoder_transformer.layers.{i}`: (1, frames, hidden) at ⌈N / 960⌉ frames (the last
    ///   one is the transformer's output);
    /// - `downsample`: (1, hidden, T);
    /// - `quantizer.{semantic,acoustic}_residual_vector_quantizer.input_proj`:
    ///   (1, codebook_dim, T), the inputs of the two RVQ groups.
    pub fn encode_traced(
        &self,
        samples_24k: &[f32],
        stage: &mut dyn FnMut(&str, &Tensor),
    ) -> Result<Vec<Vec<u32>>> {
        self.run(samples_24k, true, stage)
    }

    /// The encoder; with `trace`, the chunked SEANet layers' outputs are put together for
    /// `stage` too.
    fn run(
        &self,
        samples: &[f32],
        trace: bool,
        stage: &mut dyn FnMut(&str, &Tensor),
    ) -> Result<Vec<Vec<u32>>> {
        if samples.is_empty() {
            return Err(Error::InvalidRequest(
                "cannot encode an empty clip: the speech tokenizer needs at least one sample"
                    .into(),
            ));
        }
        let x = self.seanet(samples, trace, stage)?;
        let h = self.transformer(x.transpose(1, 2)?.contiguous()?, FRAME_BLOCK, stage)?;
        let down = self.downsample.forward(&h.transpose(1, 2)?, false)?;
        stage("downsample", &down);
        let down = down.squeeze(0)?.t()?.contiguous()?;
        let mut codes = Vec::new();
        for (group, name) in self.quantizer.iter().zip(GROUPS) {
            codes.extend(group.encode(&down, name, stage)?);
        }
        // (quantizers, T) → T frames of codes; T = ⌈N / frame_size⌉ already, the wrapper's cut.
        let t = down.dim(0)?;
        Ok((0..t)
            .map(|f| codes.iter().map(|q| q[f]).collect())
            .collect())
    }

    /// The SEANet stack: samples → (1, hidden, ⌈N / 960⌉). The front layers run on chunks of
    /// [`CHUNK`] samples, each with the front's context before it: every output they keep reads
    /// only samples of its window, and the chunks' padding on the right is the clip's (window
    /// starts are multiples of the front's stride), so the result is one pass's.
    fn seanet(
        &self,
        samples: &[f32],
        trace: bool,
        stage: &mut dyn FnMut(&str, &Tensor),
    ) -> candle_core::Result<Tensor> {
        let (front, back) = self.seanet.split_at(self.front.layers);
        let mut chunks = Vec::new();
        let mut traced = vec![Vec::new(); if trace { front.len() } else { 0 }];
        for start in (0..samples.len()).step_by(CHUNK) {
            let from = start.saturating_sub(self.front.context);
            let window = &samples[from..samples.len().min(start + CHUNK)];
            let mut x = Tensor::from_slice(window, (1, 1, window.len()), self.device())?;
            let mut stride = 1;
            for (k, (_, layer)) in front.iter().enumerate() {
                x = layer.forward(&x)?;
                stride *= layer.stride();
                if trace {
                    let skip = (start - from) / stride;
                    traced[k].push(x.narrow(2, skip, x.dim(2)? - skip)?);
                }
            }
            let skip = (start - from) / stride;
            chunks.push(x.narrow(2, skip, x.dim(2)? - skip)?);
        }
        for ((i, _), parts) in front.iter().zip(&traced) {
            stage(&format!("encoder.layers.{i}"), &Tensor::cat(parts, 2)?);
        }
        let mut x = Tensor::cat(&chunks, 2)?;
        for (i, layer) in back {
            x = layer.forward(&x)?;
            stage(&format!("encoder.layers.{i}"), &x);
        }
        Ok(x)
    }

    /// The transformer over h (1, frames, hidden): every layer attends over the whole causal
    /// prefix, `block` query frames at a time.
    fn transformer(
        &self,
        mut h: Tensor,
        block: usize,
        stage: &mut dyn FnMut(&str, &Tensor),
    ) -> candle_core::Result<Tensor> {
        let frames = h.dim(1)?;
        let cfg = &self.config;
        for (i, layer) in self.layers.iter().enumerate() {
            let mut cache = KvCache::new(
                1,
                cfg.num_key_value_heads,
                frames,
                cfg.head_dim(),
                DType::F32,
                h.device(),
            )?;
            let mut outs = Vec::new();
            for start in (0..frames).step_by(block) {
                let x = h.narrow(1, start, block.min(frames - start))?;
                outs.push(layer.forward(&x, &mut cache, &self.rope, start, None)?);
            }
            h = Tensor::cat(&outs, 1)?;
            stage(&format!("encoder_transformer.layers.{i}"), &h);
        }
        Ok(h)
    }

    fn device(&self) -> &Device {
        self.downsample.conv.device()
    }
}

/// Loads the encoder of a speech tokenizer directory (`speech_tokenizer/` of a Qwen3-TTS
/// checkpoint, or `Qwen/Qwen3-TTS-Tokenizer-12Hz`): `config.json` (`encoder_config`,
/// `encoder_valid_num_quantizers`) and the `encoder.*` tensors of `model.safetensors`.
pub fn load_codec_encoder(dir: &Path, device: &Device) -> Result<CodecEncoder> {
    let config_path = require(dir, "config.json")?;
    let config: CodecConfig = read_json(&config_path)?;
    let invalid = |message: String| Error::InvalidJson {
        path: config_path.clone(),
        message,
    };
    let cfg = config.encoder_config.as_ref().ok_or_else(|| {
        invalid("no encoder_config: this speech tokenizer can only decode".into())
    })?;
    cfg.validate(config.encoder_valid_num_quantizers)
        .map_err(&invalid)?;
    if config.encode_downsample_rate != cfg.frame_size()
        || config.input_sample_rate as usize != cfg.sampling_rate
    {
        return Err(invalid(format!(
            "encode_downsample_rate {} and input_sample_rate {} differ from the encoder's {} \
             samples per frame at {} Hz",
            config.encode_downsample_rate,
            config.input_sample_rate,
            cfg.frame_size(),
            cfg.sampling_rate
        )));
    }
    let weights = require(dir, "model.safetensors")?;
    let weights_error = |message: String| Error::Weights {
        path: weights.clone(),
        message,
    };
    let first_line = |e: candle_core::Error| {
        weights_error(e.to_string().lines().next().unwrap_or_default().to_string())
    };
    let tensors = SafetensorsFiles::open(std::slice::from_ref(&weights)).map_err(first_line)?;
    if tensors
        .dtype("encoder.encoder.layers.0.conv.weight")
        .is_none()
    {
        return Err(weights_error(
            "no encoder weights (encoder.*): this speech tokenizer checkpoint is decoder-only"
                .into(),
        ));
    }
    let vb = VarBuilder::from_backend(Box::new(tensors), DType::F32, device.clone());
    CodecEncoder::load(vb, cfg, config.encoder_valid_num_quantizers).map_err(first_line)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of queries of any size through the layers' caches equal one pass (the fixture's
    /// 61 frames are one block of [`FRAME_BLOCK`] in the parity test).
    #[test]
    fn transformer_blocks_equal_one_pass() -> candle_core::Result<()> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/qwen3-tts/codec-encoder");
        let encoder = load_codec_encoder(&dir, &Device::Cpu).expect("fixture encoder");
        let hidden = encoder.config().hidden_size;
        let h = Tensor::randn(0f32, 3.0, (1, 61, hidden), &Device::Cpu)?;
        let one = encoder.transformer(h.clone(), FRAME_BLOCK, &mut |_, _| {})?;
        for block in [1, 7, 32] {
            let blocked = encoder.transformer(h.clone(), block, &mut |_, _| {})?;
            let d = (&blocked - &one)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "blocks of {block}: {d}");
        }
        Ok(())
    }
}
