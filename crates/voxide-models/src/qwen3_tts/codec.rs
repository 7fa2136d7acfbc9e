//! The 12 Hz speech tokenizer's decoder (qwen-tts `Qwen3TTSTokenizerV2Decoder`,
//! specs/qwen3-tts.md §5.2): 16 codes per 80 ms frame → 1920 samples at 24 kHz.
//!
//! ```text
//! codes (16, T) ─split RVQ─▶ (codebook_dim, T) ─pre_conv (causal k3)─▶ (latent, T)
//!   ─pre_transformer (input_proj, sliding-window layers with layer scale, output_proj)─▶
//!   ─2 × [causal transposed conv ×2, ConvNeXt]─▶ (latent, 4T)
//!   ─causal conv k7 → decoder_dim, 4 × [SnakeBeta, transposed conv ×r, 3 residual units]─▶
//!   ─SnakeBeta, causal conv k7 → 1─▶ clamp[−1, 1]: (1, 1920 · T)
//! ```
//!
//! Every convolution is causal and the transformer attends over a sliding window, so decoding
//! is incremental and exact: [`CodecState`] keeps each convolution's pending inputs (or a
//! transposed convolution's overlap) and the transformer's windowed KV caches, and any split
//! of the frames into chunks gives the samples of one pass (no re-decoded left context, unlike
//! the reference's `chunked_decode`, which is exact only while its context covers the stacked
//! receptive field).

use super::codec_encoder::CodecEncoderConfig;
use crate::error::{read_json, require, Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::Path;
use voxide_nn::activation::{gelu_erf, SnakeBeta};
use voxide_nn::conv::{CausalConvTranspose1d, Conv1d, Conv1dSpec};
use voxide_nn::transformer::{LayerConfig, LayerNames, PreNormLayer, StackState};
use voxide_nn::weights::SafetensorsFiles;
use voxide_nn::{KvCache, LayerNorm, Linear, RmsNorm, RopeLayout, RotaryEmbedding};

/// `decoder_config` of the speech tokenizer's `config.json`.
#[derive(Clone, Debug, Deserialize)]
pub struct CodecDecoderConfig {
    pub codebook_size: usize,
    pub codebook_dim: usize,
    pub num_quantizers: usize,
    pub hidden_size: usize,
    pub latent_dim: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub sliding_window: usize,
    #[serde(default)]
    pub attention_bias: bool,
    pub upsample_rates: Vec<usize>,
    pub upsampling_ratios: Vec<usize>,
    pub decoder_dim: usize,
    /// The transformer MLPs' activation; voxide's are SwiGLU, so only qwen-tts' default.
    #[serde(default = "default_decoder_act")]
    pub hidden_act: String,
}

fn default_decoder_act() -> String {
    "silu".into()
}

/// The speech tokenizer's `config.json` (`Qwen3TTSTokenizerV2Config`; the encoder fields
/// default to the package's values, so decoder-only files read too).
#[derive(Clone, Debug, Deserialize)]
pub struct CodecConfig {
    pub decoder_config: CodecDecoderConfig,
    #[serde(default = "default_rate")]
    pub output_sample_rate: u32,
    /// The encoder's `MimiConfig` (absent: decoding only).
    #[serde(default)]
    pub encoder_config: Option<CodecEncoderConfig>,
    /// Quantizers of the encoder kept per frame (the first 16 of Mimi's 32).
    #[serde(default = "default_valid_quantizers")]
    pub encoder_valid_num_quantizers: usize,
    #[serde(default = "default_rate")]
    pub input_sample_rate: u32,
    /// Input samples per code frame (the encoder's output is cut to ceil(samples / rate)).
    #[serde(default = "default_hop")]
    pub encode_downsample_rate: usize,
    /// Output samples per code frame, as qwen-tts cuts a decoded clip: the decoder's
    /// upsampling must give exactly this many.
    #[serde(default)]
    pub decode_upsample_rate: Option<usize>,
}

impl CodecConfig {
    /// What the decoder relies on; the message says what is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.decoder_config.validate()?;
        let samples = self.decoder_config.samples_per_frame();
        match self.decode_upsample_rate {
            Some(rate) if rate != samples => Err(format!(
                "decode_upsample_rate {rate} disagrees with the decoder's upsampling ({samples} samples a frame)"
            )),
            _ => Ok(()),
        }
    }
}

fn default_rate() -> u32 {
    24_000
}

fn default_valid_quantizers() -> usize {
    16
}

fn default_hop() -> usize {
    1920
}

impl CodecDecoderConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Output samples per frame (1920 for the real model).
    pub fn samples_per_frame(&self) -> usize {
        self.upsampling_ratios
            .iter()
            .chain(&self.upsample_rates)
            .product()
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let blocks = self.upsample_rates.len() as u32;
        if self.num_quantizers < 2 || !self.codebook_dim.is_multiple_of(2) {
            return Err(format!(
                "{} quantizers of dimension {}: need ≥ 2 and an even dimension",
                self.num_quantizers, self.codebook_dim
            ));
        }
        if self.decoder_dim >> blocks == 0 || self.sliding_window == 0 {
            return Err(format!(
                "decoder_dim {} must halve {blocks} times; sliding_window {} must be positive",
                self.decoder_dim, self.sliding_window
            ));
        }
        let heads = (self.num_attention_heads, self.num_key_value_heads);
        if heads.0 == 0 || heads.1 == 0 || !heads.0.is_multiple_of(heads.1) {
            return Err(format!(
                "{} heads over {} key/value heads",
                heads.0, heads.1
            ));
        }
        if self.hidden_act != "silu" {
            return Err(format!(
                "decoder hidden_act {:?} is not supported (takes \"silu\")",
                self.hidden_act
            ));
        }
        Ok(())
    }
}

/// Causal convolution with stride 1 (`….conv`).
fn causal_conv(vb: VarBuilder, spec: Conv1dSpec) -> candle_core::Result<Conv1d> {
    Conv1d::load(vb.pp("conv"), spec)
}

/// The positions of one [`Decoder`]'s streaming state: a slot per convolution, in order.
#[derive(Clone, Debug, Default)]
struct Slots {
    slots: Vec<Option<Tensor>>,
    next: usize,
}

impl Slots {
    fn take(&mut self) -> &mut Option<Tensor> {
        if self.next == self.slots.len() {
            self.slots.push(None);
        }
        self.next += 1;
        &mut self.slots[self.next - 1]
    }
}

/// ConvNeXt block: depthwise causal conv k7, LayerNorm over channels, pointwise 4× MLP with
/// exact GELU, per-channel γ, residual.
#[derive(Clone, Debug)]
struct ConvNeXt {
    dwconv: Conv1d,
    norm: LayerNorm,
    pwconv1: Linear,
    pwconv2: Linear,
    gamma: Tensor,
}

impl ConvNeXt {
    fn load(vb: VarBuilder, dim: usize) -> candle_core::Result<Self> {
        Ok(Self {
            dwconv: causal_conv(
                vb.pp("dwconv"),
                Conv1dSpec {
                    groups: dim,
                    ..Conv1dSpec::new(dim, dim, 7)
                },
            )?,
            norm: LayerNorm::load(vb.pp("norm"), dim, 1e-6)?,
            pwconv1: Linear::load(vb.pp("pwconv1"), dim, 4 * dim, true)?,
            pwconv2: Linear::load(vb.pp("pwconv2"), 4 * dim, dim, true)?,
            gamma: vb.get_with_hints_dtype(dim, "gamma", candle_nn::Init::Const(0.), DType::F32)?,
        })
    }

    fn push(&self, slots: &mut Slots, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.dwconv.push_causal(slots.take(), x)?.transpose(1, 2)?;
        let h = gelu_erf(&self.pwconv1.forward(&self.norm.forward(&h)?)?)?;
        let h = self.pwconv2.forward(&h)?.broadcast_mul(&self.gamma)?;
        x + h.transpose(1, 2)?
    }
}

/// SnakeBeta → causal conv k7 (dilated) → SnakeBeta → conv k1, residual.
#[derive(Clone, Debug)]
struct ResidualUnit {
    act1: SnakeBeta,
    conv1: Conv1d,
    act2: SnakeBeta,
    conv2: Conv1d,
}

impl ResidualUnit {
    fn load(vb: VarBuilder, dim: usize, dilation: usize) -> candle_core::Result<Self> {
        Ok(Self {
            act1: SnakeBeta::load(vb.pp("act1"), dim)?,
            conv1: causal_conv(
                vb.pp("conv1"),
                Conv1dSpec {
                    dilation,
                    ..Conv1dSpec::new(dim, dim, 7)
                },
            )?,
            act2: SnakeBeta::load(vb.pp("act2"), dim)?,
            conv2: causal_conv(vb.pp("conv2"), Conv1dSpec::new(dim, dim, 1))?,
        })
    }

    fn push(&self, slots: &mut Slots, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self
            .conv1
            .push_causal_after(slots.take(), x, Some(&self.act1))?;
        // conv2 is 1×1: it keeps no stream state.
        self.conv2.forward_snake_residual(&self.act2, &h, x)
    }
}

/// SnakeBeta → causal transposed conv (×rate) → residual units with dilations 1, 3, 9.
#[derive(Clone, Debug)]
struct DecoderBlock {
    act: SnakeBeta,
    upsample: CausalConvTranspose1d,
    units: Vec<ResidualUnit>,
}

impl DecoderBlock {
    fn load(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        rate: usize,
    ) -> candle_core::Result<Self> {
        let vb = vb.pp("block");
        Ok(Self {
            act: SnakeBeta::load(vb.pp(0), in_dim)?,
            upsample: CausalConvTranspose1d::load(
                vb.pp(1).pp("conv"),
                in_dim,
                out_dim,
                2 * rate,
                rate,
            )?,
            units: [1, 3, 9]
                .iter()
                .enumerate()
                .map(|(i, &d)| ResidualUnit::load(vb.pp(2 + i), out_dim, d))
                .collect::<candle_core::Result<_>>()?,
        })
    }

    fn push(&self, slots: &mut Slots, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.upsample.push(slots.take(), &self.act.forward(x)?)?;
        for unit in &self.units {
            h = unit.push(slots, &h)?;
        }
        Ok(h)
    }
}

/// A Euclidean codebook's entries (size, dim) in f32: `sum` / max(`cluster_usage`, 1e-5) per
/// row (the decoder names the sum `embedding_sum`, Mimi's encoder `embed_sum`).
pub(crate) fn codebook_vectors(
    vb: VarBuilder,
    sum: &str,
    size: usize,
    dim: usize,
) -> candle_core::Result<Tensor> {
    let f32 = |name: &str, shape: &[usize]| {
        vb.get_with_hints_dtype(shape, name, candle_nn::Init::Const(1.), DType::F32)
    };
    let usage = f32("cluster_usage", &[size])?.clamp(1e-5, f32::MAX)?;
    f32(sum, &[size, dim])?.broadcast_div(&usage.unsqueeze(1)?)
}

/// One split-RVQ group (`rvq_first` or `rvq_rest`): codebooks (embedding_sum / usage) summed,
/// then a 1×1 projection to codebook_dim.
#[derive(Clone, Debug)]
struct RvqGroup {
    codebooks: Vec<Tensor>,
    output_proj: Tensor,
}

impl RvqGroup {
    fn load(vb: VarBuilder, layers: usize, cfg: &CodecDecoderConfig) -> candle_core::Result<Self> {
        let dim = cfg.codebook_dim / 2;
        let codebooks = (0..layers)
            .map(|i| {
                let cb = vb.pp("vq").pp("layers").pp(i).pp("_codebook");
                codebook_vectors(cb, "embedding_sum", cfg.codebook_size, dim)
            })
            .collect::<candle_core::Result<_>>()?;
        let output_proj = vb
            .pp("output_proj")
            .get_with_hints_dtype(
                (cfg.codebook_dim, dim, 1),
                "weight",
                candle_nn::Init::Const(0.),
                DType::F32,
            )?
            .squeeze(2)?
            .t()?;
        Ok(Self {
            codebooks,
            output_proj,
        })
    }

    /// codes (layers, T) → (T, codebook_dim).
    fn decode(&self, codes: &Tensor) -> candle_core::Result<Tensor> {
        let mut sum: Option<Tensor> = None;
        for (i, table) in self.codebooks.iter().enumerate() {
            let q = table.index_select(&codes.get(i)?, 0)?;
            sum = Some(match sum {
                Some(s) => (s + q)?,
                None => q,
            });
        }
        sum.expect("at least one codebook")
            .matmul(&self.output_proj)
    }
}

/// The codec decoder's weights (immutable; streams keep a [`CodecState`]).
#[derive(Clone, Debug)]
pub struct CodecDecoder {
    config: CodecDecoderConfig,
    rvq_first: RvqGroup,
    rvq_rest: RvqGroup,
    pre_conv: Conv1d,
    input_proj: Linear,
    layers: Vec<PreNormLayer>,
    norm: RmsNorm,
    output_proj: Linear,
    rope: RotaryEmbedding,
    upsample: Vec<(CausalConvTranspose1d, ConvNeXt)>,
    first_conv: Conv1d,
    blocks: Vec<DecoderBlock>,
    final_act: SnakeBeta,
    final_conv: Conv1d,
}

/// One stream's decoding state: every convolution's pending inputs, the transformer's
/// windowed caches and its next position.
#[derive(Debug)]
pub struct CodecState {
    slots: Slots,
    transformer: StackState,
}

impl CodecState {
    /// An independent copy that continues from here (e.g. after a cloned voice's reference
    /// frames): the pending inputs are replaced, never written, so they are shared.
    pub fn fork(&self) -> candle_core::Result<Self> {
        Ok(Self {
            slots: self.slots.clone(),
            transformer: self.transformer.fork()?,
        })
    }
}

/// Frames the transformer takes at once (the KV caches' headroom past the window).
const FRAME_BLOCK: usize = 64;

/// RoPE table length; later positions are computed on the fly.
const ROPE_TABLE: usize = 8192;

impl CodecDecoder {
    /// Loads `decoder.*` (`vb` at the checkpoint root).
    pub fn load(vb: VarBuilder, cfg: &CodecDecoderConfig) -> candle_core::Result<Self> {
        let vb = vb.pp("decoder");
        let q = vb.pp("quantizer");
        let t = vb.pp("pre_transformer");
        let head_dim = cfg.head_dim();
        let layer = LayerConfig {
            dim: cfg.hidden_size,
            hidden_dim: cfg.intermediate_size,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim,
            norm_eps: cfg.rms_norm_eps,
            attention_bias: [cfg.attention_bias; 4],
            down_bias: false,
            qk_norm: false,
            layer_scale: true,
        };
        let latent = cfg.latent_dim;
        let upsample = cfg
            .upsampling_ratios
            .iter()
            .enumerate()
            .map(|(i, &f)| {
                let vb = vb.pp("upsample").pp(i);
                Ok((
                    CausalConvTranspose1d::load(vb.pp(0).pp("conv"), latent, latent, f, f)?,
                    ConvNeXt::load(vb.pp(1), latent)?,
                ))
            })
            .collect::<candle_core::Result<_>>()?;
        let d = vb.pp("decoder");
        let blocks = (0..cfg.upsample_rates.len())
            .map(|i| {
                DecoderBlock::load(
                    d.pp(1 + i),
                    cfg.decoder_dim >> i,
                    cfg.decoder_dim >> (i + 1),
                    cfg.upsample_rates[i],
                )
            })
            .collect::<candle_core::Result<_>>()?;
        let n = cfg.upsample_rates.len();
        let out_dim = cfg.decoder_dim >> n;
        Ok(Self {
            rvq_first: RvqGroup::load(q.pp("rvq_first"), 1, cfg)?,
            rvq_rest: RvqGroup::load(q.pp("rvq_rest"), cfg.num_quantizers - 1, cfg)?,
            pre_conv: causal_conv(
                vb.pp("pre_conv"),
                Conv1dSpec::new(cfg.codebook_dim, latent, 3),
            )?,
            input_proj: Linear::load(t.pp("input_proj"), latent, cfg.hidden_size, true)?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| PreNormLayer::load(t.pp("layers").pp(i), &layer, &LayerNames::HF))
                .collect::<candle_core::Result<_>>()?,
            norm: RmsNorm::load(t.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            output_proj: Linear::load(t.pp("output_proj"), cfg.hidden_size, latent, true)?,
            rope: RotaryEmbedding::new(
                head_dim,
                ROPE_TABLE,
                cfg.rope_theta,
                RopeLayout::RotateHalf,
                vb.device(),
            )?,
            upsample,
            first_conv: causal_conv(d.pp(0), Conv1dSpec::new(latent, cfg.decoder_dim, 7))?,
            blocks,
            final_act: SnakeBeta::load(d.pp(1 + n), out_dim)?,
            final_conv: causal_conv(d.pp(2 + n), Conv1dSpec::new(out_dim, 1, 7))?,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &CodecDecoderConfig {
        &self.config
    }

    /// A fresh stream.
    pub fn new_state(&self, device: &Device) -> candle_core::Result<CodecState> {
        let cfg = &self.config;
        let head_dim = cfg.head_dim();
        let caches = (0..cfg.num_hidden_layers)
            .map(|_| {
                KvCache::sliding(
                    cfg.num_key_value_heads,
                    cfg.sliding_window,
                    FRAME_BLOCK,
                    head_dim,
                    DType::F32,
                    device,
                )
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(CodecState {
            slots: Slots::default(),
            transformer: StackState::new(caches),
        })
    }

    /// Decodes the next frames of a stream (each `num_quantizers` codes) into
    /// `frames × samples_per_frame` samples in [−1, 1]. Split the frames any way: the samples
    /// equal one pass over all of them.
    pub fn push(&self, state: &mut CodecState, frames: &[Vec<u32>]) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let groups = cfg.num_quantizers;
        if let Some(f) = frames.iter().find(|f| f.len() != groups) {
            return Err(Error::InvalidRequest(format!(
                "the codec takes {groups} codes per frame, got {}",
                f.len()
            )));
        }
        if let Some(&c) = frames
            .iter()
            .flatten()
            .find(|&&c| c as usize >= cfg.codebook_size)
        {
            return Err(Error::InvalidRequest(format!(
                "code {c} is outside the codebooks of {} entries",
                cfg.codebook_size
            )));
        }
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        let device = self.device();
        // (frames, groups) → (groups, frames)
        let codes = Tensor::new(frames.concat(), device)?
            .reshape((frames.len(), groups))?
            .t()?
            .contiguous()?;
        let frames = frames.len();
        let stage = |name: &'static str| tracing::trace_span!("codec_stage", name).entered();
        let span = stage("rvq_pre_conv");
        // (T, codebook_dim) → (1, codebook_dim, T)
        let q = (self.rvq_first.decode(&codes.narrow(0, 0, 1)?)?
            + self.rvq_rest.decode(&codes.narrow(0, 1, groups - 1)?)?)?;
        let q = q.t()?.unsqueeze(0)?.contiguous()?;
        state.slots.next = 0;
        let h = self
            .pre_conv
            .push_causal(state.slots.take(), &q)?
            .transpose(1, 2)?;
        let mut h = self.input_proj.forward(&h.contiguous()?)?;
        drop(span);
        let span = stage("pre_transformer");
        let mut outs = Vec::new();
        for start in (0..frames).step_by(FRAME_BLOCK) {
            let n = FRAME_BLOCK.min(frames - start);
            let x = h.narrow(1, start, n)?;
            outs.push(
                state
                    .transformer
                    .forward(&self.layers, &x, &self.rope, None, None)?,
            );
        }
        h = Tensor::cat(&outs, 1)?;
        let h = self.output_proj.forward(&self.norm.forward(&h)?)?;
        let mut h = h.transpose(1, 2)?.contiguous()?;
        drop(span);
        let span = stage("upsample");
        for (conv, convnext) in &self.upsample {
            h = conv.push(state.slots.take(), &h)?;
            h = convnext.push(&mut state.slots, &h)?;
        }
        h = self.first_conv.push_causal(state.slots.take(), &h)?;
        drop(span);
        for block in &self.blocks {
            let _span = stage("decoder_block");
            h = block.push(&mut state.slots, &h)?;
        }
        let _span = stage("final_conv");
        let wav =
            self.final_conv
                .push_causal_after(state.slots.take(), &h, Some(&self.final_act))?;
        Ok(wav.clamp(-1f32, 1f32)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// All frames at once.
    pub fn decode(&self, frames: &[Vec<u32>]) -> Result<Vec<f32>> {
        let mut state = self.new_state(self.device())?;
        self.push(&mut state, frames)
    }

    fn device(&self) -> &Device {
        self.pre_conv.device()
    }
}

/// The speech tokenizer directory (`speech_tokenizer/` of a Qwen3-TTS checkpoint, or
/// `Qwen/Qwen3-TTS-Tokenizer-12Hz`): `config.json` + `model.safetensors`, decoder only.
pub fn load_codec(dir: &Path, device: &Device) -> Result<(CodecConfig, CodecDecoder)> {
    let config_path = require(dir, "config.json")?;
    let config: CodecConfig = read_json(&config_path)?;
    config.validate().map_err(|message| Error::InvalidJson {
        path: config_path.clone(),
        message,
    })?;
    let weights = require(dir, "model.safetensors")?;
    let weights_error = |e: candle_core::Error| Error::Weights {
        path: weights.clone(),
        message: e.to_string().lines().next().unwrap_or_default().to_string(),
    };
    let tensors = SafetensorsFiles::open(std::slice::from_ref(&weights)).map_err(weights_error)?;
    let dtype = tensors
        .dtype("decoder.pre_transformer.input_proj.weight")
        .unwrap_or(DType::F32);
    let vb = VarBuilder::from_backend(Box::new(tensors), dtype, device.clone());
    let decoder = CodecDecoder::load(vb, &config.decoder_config).map_err(weights_error)?;
    Ok((config, decoder))
}
