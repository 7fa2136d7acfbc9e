//! Whisper's encoder and decoder, composed from voxide-nn blocks; weight names are the
//! Hugging Face checkpoint names (`model.encoder.layers.N.self_attn.q_proj.weight`, ...).
//!
//! The model handle is immutable and can serve many requests; everything a request changes
//! (self-attention caches, cross-attention K/V, position) lives in a [`DecoderState`].

use super::config::Config;
use super::ggml::{GgmlWeights, ModelFile};
use crate::error::{Error, Result};
use crate::ggml::GgmlType;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::path::{Path, PathBuf};
use voxide_nn::attention::KvSource;
use voxide_nn::conv::ConvStem;
use voxide_nn::kernels::machine::{CycleBytes, Residency};
use voxide_nn::kv_cache::default_kv_dtype;
use voxide_nn::linear::WeightFormat;
use voxide_nn::transformer::check_layer_count;
use voxide_nn::weights::SafetensorsFiles;
use voxide_nn::{Attention, AttentionConfig, CrossKv, GeluMlp, KvCache, LayerNorm, Linear};

const LN_EPS: f64 = 1e-5;

fn attention_config(d_model: usize, heads: usize) -> AttentionConfig {
    AttentionConfig {
        dim: d_model,
        n_heads: heads,
        n_kv_heads: heads,
        head_dim: d_model / heads,
        // Whisper's key projection has no bias.
        bias: [true, false, true, true],
        names: ["q_proj", "k_proj", "v_proj", "out_proj"],
        qk_norm_eps: None,
    }
}

/// Pre-LN residual block (openai-whisper's `ResidualAttentionBlock`): self-attention, then, in
/// the decoder, cross-attention over the audio, then the MLP, each with a residual.
#[derive(Clone, Debug)]
struct Block {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    /// `encoder_attn` and `encoder_attn_layer_norm` (decoder blocks only).
    cross: Option<(Attention, LayerNorm)>,
    mlp: GeluMlp,
    final_layer_norm: LayerNorm,
}

impl Block {
    fn load(
        vb: VarBuilder,
        d_model: usize,
        heads: usize,
        ffn_dim: usize,
        cross: bool,
    ) -> candle_core::Result<Self> {
        let attn = attention_config(d_model, heads);
        let norm = |name: &str| LayerNorm::load(vb.pp(name), d_model, LN_EPS);
        Ok(Self {
            self_attn: Attention::load(vb.pp("self_attn"), attn)?,
            self_attn_layer_norm: norm("self_attn_layer_norm")?,
            cross: if cross {
                Some((
                    Attention::load_cross(vb.pp("encoder_attn"), attn)?,
                    norm("encoder_attn_layer_norm")?,
                ))
            } else {
                None
            },
            mlp: GeluMlp::load(vb.clone(), d_model, ffn_dim)?,
            final_layer_norm: norm("final_layer_norm")?,
        })
    }

    /// The block with its matrices stored as `format`.
    fn into_format(self, format: WeightFormat) -> candle_core::Result<Self> {
        Ok(Self {
            self_attn: self.self_attn.to_format(format)?,
            cross: self
                .cross
                .map(|(attn, norm)| Ok::<_, candle_core::Error>((attn.to_format(format)?, norm)))
                .transpose()?,
            mlp: self.mlp.to_format(format)?,
            ..self
        })
    }

    /// x (batch, t, d) -> (batch, t, d). Decoder blocks attend causally through their cache and
    /// then over `audio`; with `cross_heads`, they also return those heads' cross-attention
    /// scores (see [`Attention::cross_scores`]).
    fn forward(
        &self,
        x: &Tensor,
        source: KvSource<'_>,
        audio: Option<&CrossKv>,
        cross_heads: &[usize],
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let causal = matches!(source, KvSource::Cached(_));
        let h = self.self_attn_layer_norm.forward(x)?;
        let mut x = (x + self.self_attn.forward(&h, source, causal, None)?)?;
        let mut scores = None;
        if let (Some((attn, norm)), Some(audio)) = (&self.cross, audio) {
            let h = norm.forward(&x)?;
            if !cross_heads.is_empty() {
                scores = Some(attn.cross_scores(&h, audio, cross_heads)?);
            }
            x = (&x + attn.forward(&h, KvSource::Cross(audio), false, None)?)?;
        }
        let h = self.final_layer_norm.forward(&x)?;
        Ok(((&x + self.mlp.forward(&h)?)?, scores))
    }
}

/// Every intermediate of one encoder pass, for parity tests against the reference dumps.
#[derive(Debug)]
pub struct EncoderTrace {
    /// After conv1 + GELU: (batch, d, 3000).
    pub conv1: Tensor,
    /// After conv2 + GELU: (batch, d, 1500).
    pub conv2: Tensor,
    /// transformers' `hidden_states`: [after positions, after layer 0, ..., after ln_post].
    pub hidden_states: Vec<Tensor>,
}

/// Shape of Whisper's audio encoder (also Voxtral Mini 3B's audio tower).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncoderConfig {
    pub num_mel_bins: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn_dim: usize,
    /// Output frames of one 30 s window (1500).
    pub max_source_positions: usize,
}

impl Config {
    /// The encoder's part of the configuration.
    pub fn encoder(&self) -> EncoderConfig {
        EncoderConfig {
            num_mel_bins: self.num_mel_bins,
            d_model: self.d_model,
            layers: self.encoder_layers,
            heads: self.encoder_attention_heads,
            ffn_dim: self.encoder_ffn_dim,
            max_source_positions: self.max_source_positions,
        }
    }
}

/// Whisper's positional table (openai-whisper's `sinusoids`): row p is
/// [sin(p·inv), cos(p·inv)] with inv_i = exp(−i·ln(10000)/(channels/2 − 1)), in f32.
pub fn sinusoids(length: usize, channels: usize, device: &Device) -> candle_core::Result<Tensor> {
    let half = channels / 2;
    let step = 10_000f64.ln() / (half.max(2) - 1) as f64;
    let inv: Vec<f32> = (0..half).map(|i| (-step * i as f64).exp() as f32).collect();
    let mut table = Vec::with_capacity(length * channels);
    for p in 0..length {
        let angles = inv.iter().map(|&f| p as f32 * f);
        table.extend(angles.clone().map(f32::sin));
        table.extend(angles.map(f32::cos));
    }
    Tensor::from_vec(table, (length, channels), device)
}

/// Audio encoder: conv stem, sinusoidal positions, pre-LN blocks, final LayerNorm.
#[derive(Clone, Debug)]
pub struct Encoder {
    stem: ConvStem,
    embed_positions: Tensor,
    layers: Vec<Block>,
    layer_norm: LayerNorm,
}

impl Encoder {
    /// Loads `conv1`, `conv2`, `layers.N.*` and `layer_norm` from `vb`, and the positional
    /// table `embed_positions.weight` where the checkpoint stores it (Mistral's Voxtral files
    /// do not; it is then computed, as transformers' converter does).
    pub fn load(vb: VarBuilder, cfg: &EncoderConfig) -> candle_core::Result<Self> {
        let shape = (cfg.max_source_positions, cfg.d_model);
        let embed_positions = if vb.contains_tensor("embed_positions.weight") {
            vb.get_with_hints_dtype(
                shape,
                "embed_positions.weight",
                candle_nn::Init::Const(0.),
                DType::F32,
            )?
        } else {
            sinusoids(shape.0, shape.1, vb.device())?
        };
        check_layer_count(&vb.pp("layers"), cfg.layers, LAYER_PROBE)?;
        Ok(Self {
            stem: ConvStem::load(vb.clone(), cfg.num_mel_bins, cfg.d_model)?,
            embed_positions,
            layers: (0..cfg.layers)
                .map(|i| {
                    let vb = vb.pp(format!("layers.{i}"));
                    Block::load(vb, cfg.d_model, cfg.heads, cfg.ffn_dim, false)
                })
                .collect::<candle_core::Result<_>>()?,
            layer_norm: LayerNorm::load(vb.pp("layer_norm"), cfg.d_model, LN_EPS)?,
        })
    }

    /// Every block matrix multiplies on the kernels of many rows at any size
    /// ([`Linear::set_chunk_invariant`]): bf16 matrices (Voxtral Mini 3B's tower, Whisper with
    /// `--precision bf16`) then take bf16 dot products where the CPU has them, and so does the
    /// window's attention of such blocks ([`Attention::set_chunk_invariant`]). Call it once the
    /// matrices have their final format.
    pub fn set_chunk_invariant(&mut self) {
        for block in &mut self.layers {
            block.self_attn.set_chunk_invariant();
            for layer in block.mlp.linears_mut() {
                layer.set_chunk_invariant();
            }
        }
    }

    /// The encoder with its block matrices stored as `format`.
    pub fn into_format(self, format: WeightFormat) -> candle_core::Result<Self> {
        Ok(Self {
            layers: self
                .layers
                .into_iter()
                .map(|b| b.into_format(format))
                .collect::<candle_core::Result<_>>()?,
            ..self
        })
    }

    /// mel (batch, n_mels, 3000) -> trace whose last hidden state is (batch, 1500, d); with
    /// `keep_all`, every intermediate.
    pub fn forward(&self, mel: &Tensor, keep_all: bool) -> candle_core::Result<EncoderTrace> {
        let [conv1, conv2] = self.stem.forward_stages(mel)?;
        let frames = conv2.dim(2)?;
        let mut x = conv2
            .transpose(1, 2)?
            .broadcast_add(&self.embed_positions.narrow(0, 0, frames)?)?;
        let mut hidden_states = Vec::new();
        for layer in &self.layers {
            if keep_all {
                hidden_states.push(x.clone());
            }
            x = layer.forward(&x, KvSource::Own, None, &[])?.0;
        }
        hidden_states.push(self.layer_norm.forward(&x)?);
        Ok(EncoderTrace {
            conv1,
            conv2,
            hidden_states,
        })
    }
}

/// A tensor every encoder and decoder block holds (the layer-count check looks for it).
const LAYER_PROBE: &str = "self_attn_layer_norm.weight";

/// Text decoder: token + learned positional embeddings, blocks, final LayerNorm, tied head.
#[derive(Clone, Debug)]
pub struct Decoder {
    /// `embed_tokens` [vocab, d]: the output head, and the token table its rows are read from.
    head: Linear,
    embed_positions: Tensor,
    layers: Vec<Block>,
    layer_norm: LayerNorm,
}

impl Decoder {
    fn load(vb: VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
        check_layer_count(&vb.pp("layers"), cfg.decoder_layers, LAYER_PROBE)?;
        // The token table is also the output head: it keeps the matrices' format.
        let mut decoder = Self {
            head: Linear::load(vb.pp("embed_tokens"), cfg.d_model, cfg.vocab_size, false)?,
            embed_positions: vb.get_with_hints_dtype(
                (cfg.max_target_positions, cfg.d_model),
                "embed_positions.weight",
                candle_nn::Init::Const(0.),
                DType::F32,
            )?,
            layers: (0..cfg.decoder_layers)
                .map(|i| {
                    let vb = vb.pp(format!("layers.{i}"));
                    Block::load(
                        vb,
                        cfg.d_model,
                        cfg.decoder_attention_heads,
                        cfg.decoder_ffn_dim,
                        true,
                    )
                })
                .collect::<candle_core::Result<_>>()?,
            layer_norm: LayerNorm::load(vb.pp("layer_norm"), cfg.d_model, LN_EPS)?,
        };
        decoder.plan_residency(cfg, vb.dtype());
        Ok(decoder)
    }

    /// The decoder with its matrices (head included) stored as `format`, its residency planned
    /// again; cross-attention K/V stay in `kv_dtype`.
    fn into_format(
        self,
        format: WeightFormat,
        cfg: &Config,
        kv_dtype: DType,
    ) -> candle_core::Result<Self> {
        let mut decoder = Self {
            head: self.head.to_format(format)?,
            layers: self
                .layers
                .into_iter()
                .map(|b| b.into_format(format))
                .collect::<candle_core::Result<_>>()?,
            ..self
        };
        decoder.plan_residency(cfg, kv_dtype);
        Ok(decoder)
    }

    /// Decides which matrices a step streams past the cache and which stay cached between
    /// tokens: a step reads the head, each layer's self-attention projections, the
    /// cross-attention q and out projections and the MLP, plus the window's cross-attention
    /// K/V (in the matrices' dtype) and the self-attention cache (f32, half full on average).
    fn plan_residency(&mut self, cfg: &Config, dtype: DType) {
        let d = cfg.d_model;
        let layers = cfg.decoder_layers;
        let cross_kv = layers * 2 * cfg.max_source_positions * d * dtype.size_in_bytes();
        let self_kv = layers * 2 * (cfg.max_target_positions / 2) * d * 4;
        let mut step: Vec<&mut Linear> = vec![&mut self.head];
        for block in &mut self.layers {
            step.extend(block.self_attn.step_projections_mut());
            if let Some((attn, _)) = &mut block.cross {
                step.extend(attn.step_projections_mut());
            }
            step.extend(block.mlp.linears_mut());
        }
        Linear::plan_residency(step, cross_kv + self_kv);
    }
}

/// Per-request decoder state: one self-attention cache per layer (preallocated for the full
/// 448-token context) and the cross-attention K/V of the current audio window.
#[derive(Debug)]
pub struct DecoderState {
    caches: Vec<KvCache>,
    cross: Vec<CrossKv>,
}

impl DecoderState {
    /// Tokens consumed since the last reset.
    pub fn position(&self) -> usize {
        self.caches.first().map_or(0, KvCache::len)
    }

    /// Keeps the caches of the given rows (beam search).
    pub fn reorder(&mut self, rows: &[u32]) -> Result<()> {
        for cache in &mut self.caches {
            cache.reorder(rows)?;
        }
        Ok(())
    }

    /// Drops the cross-attention K/V of the current window (before the next window is encoded,
    /// so the two never coexist).
    pub fn clear_audio(&mut self) {
        self.cross = Vec::new();
    }

    /// Whether the cross-attention K/V of a window are set ([`Whisper::set_audio`]).
    pub fn has_audio(&self) -> bool {
        !self.cross.is_empty()
    }

    /// Forgets every decoded token; the audio stays.
    pub fn reset_tokens(&mut self) {
        self.caches.iter_mut().for_each(KvCache::reset);
    }
}

/// A loaded Whisper model (immutable; share it between requests).
#[derive(Clone, Debug)]
pub struct Whisper {
    config: Config,
    /// Dtype of the float weight matrices and of the cross-attention keys/values (f16 beside
    /// quantized matrices from an f32 checkpoint: [`Self::into_format`]).
    dtype: DType,
    encoder: Encoder,
    decoder: Decoder,
    device: Device,
}

/// The safetensors files of a checkpoint directory: `model.safetensors`, or the shards listed
/// in `model.safetensors.index.json`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let json: serde_json::Value = crate::error::read_json(&index)?;
        let mut files: Vec<PathBuf> = json["weight_map"]
            .as_object()
            .ok_or_else(|| Error::InvalidJson {
                path: index.clone(),
                message: "no weight_map object".into(),
            })?
            .values()
            .filter_map(|v| v.as_str().map(|f| dir.join(f)))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    Err(Error::MissingFile {
        dir: dir.to_owned(),
        file: "model.safetensors".into(),
        hint: " (nor model.safetensors.index.json); expected a Hugging Face checkpoint directory"
            .into(),
    })
}

impl Whisper {
    /// Builds the model from tensors named as in the Hugging Face checkpoint. Weight matrices
    /// are held in `dtype` (f16 halves the bytes each decoder step reads and the memory);
    /// activations, norms, biases and convolutions are f32, and the encoder's GEMMs convert an
    /// f16 matrix to f32 per call (they are compute-bound).
    pub fn load(vb: VarBuilder, config: Config, dtype: DType) -> candle_core::Result<Self> {
        let device = vb.device().clone();
        let vb = vb.pp("model");
        Ok(Self {
            encoder: Encoder::load(vb.pp("encoder").set_dtype(dtype), &config.encoder())?,
            decoder: Decoder::load(vb.pp("decoder").set_dtype(dtype), &config)?,
            dtype,
            config,
            device,
        }
        .with_bf16_encoder())
    }

    /// bf16 encoder matrices (`--precision bf16`) on bf16 dot products where the CPU has them
    /// ([`Encoder::set_chunk_invariant`]: x rounded to bf16, as a bf16 run of the reference
    /// does; ~1.8× the f32 rate). f32, f16 and quantized matrices take their kernels as before.
    fn with_bf16_encoder(mut self) -> Self {
        self.encoder.set_chunk_invariant();
        self
    }

    /// Loads `config.json` and the safetensors weights of a checkpoint directory. Weight
    /// matrices take `precision`, or by default the checkpoint's own precision (f16 for f16 and
    /// bf16 checkpoints, f32 for f32 ones).
    pub fn from_dir(dir: &Path, device: &Device, precision: Option<WeightFormat>) -> Result<Self> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(Error::MissingFile {
                dir: dir.to_owned(),
                file: "config.json".into(),
                hint: String::new(),
            });
        }
        let config = Config::from_file(&config_path)?;
        let files = weight_files(dir)?;
        let weights_error = |e: candle_core::Error| Error::Weights {
            path: files[0].clone(),
            message: e.to_string().lines().next().unwrap_or_default().to_string(),
        };
        let tensors = SafetensorsFiles::open(&files).map_err(weights_error)?;
        let stored = match tensors.dtype("model.decoder.embed_tokens.weight") {
            Some(DType::F16 | DType::BF16) => DType::F16,
            _ => DType::F32,
        };
        let vb = VarBuilder::from_backend(Box::new(tensors), DType::F32, device.clone());
        Self::load_as(vb, config, stored, precision).map_err(weights_error)
    }

    /// Loads a whisper.cpp model file (legacy ggml `.bin`, GGUF). Quantized matrices stay in
    /// their blocks and f16 ones in f16, unless `precision` says otherwise.
    pub fn from_ggml(
        file: &ModelFile,
        device: &Device,
        precision: Option<WeightFormat>,
    ) -> Result<Self> {
        let config = Config::from_hparams(file.hparams(), file.path())?;
        let stored = match file.weight_type() {
            GgmlType::F32 => DType::F32,
            _ => DType::F16,
        };
        let vb = VarBuilder::from_backend(
            Box::new(GgmlWeights::new(file.clone())),
            DType::F32,
            device.clone(),
        );
        Self::load_as(vb, config, stored, precision).map_err(|e| Error::Weights {
            path: file.path().to_owned(),
            message: e.to_string().lines().next().unwrap_or_default().to_string(),
        })
    }

    /// Loads with float matrices in `stored` (or `precision` when it is a float type), then
    /// converts them to `precision` when it is not.
    fn load_as(
        vb: VarBuilder,
        config: Config,
        stored: DType,
        precision: Option<WeightFormat>,
    ) -> candle_core::Result<Self> {
        let dtype = match precision {
            Some(WeightFormat::F32) => DType::F32,
            Some(WeightFormat::F16) => DType::F16,
            Some(WeightFormat::Bf16) => DType::BF16,
            _ => stored,
        };
        let model = Self::load(vb, config, dtype)?;
        match precision {
            Some(format) if format.dtype().is_none() => model.into_format(format),
            _ => Ok(model),
        }
    }

    /// The model with its encoder and decoder matrices stored as `format`; quantized matrices
    /// from an f32 checkpoint keep their cross-attention K/V in f16 (whisper.cpp's layout),
    /// half of what a decoder step reads of them.
    pub fn into_format(self, format: WeightFormat) -> candle_core::Result<Self> {
        let dtype = match format.dtype() {
            None if self.dtype == DType::F32 => default_kv_dtype(format),
            _ => self.dtype,
        };
        Ok(Self {
            encoder: self.encoder.into_format(format)?,
            decoder: self.decoder.into_format(format, &self.config, dtype)?,
            dtype,
            ..self
        }
        .with_bf16_encoder())
    }

    /// The dtype the cross-attention keys and values are kept in.
    pub fn kv_dtype(&self) -> DType {
        self.dtype
    }

    /// The checkpoint's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The device holding the weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// mel (batch, n_mels, 3000) -> audio features (batch, 1500, d).
    pub fn encode(&self, mel: &Tensor) -> Result<Tensor> {
        let mut trace = self.encoder.forward(mel, false)?;
        Ok(trace
            .hidden_states
            .pop()
            .expect("the encoder always yields its output"))
    }

    /// Like [`Self::encode`] but keeps every intermediate.
    pub fn encode_traced(&self, mel: &Tensor) -> Result<EncoderTrace> {
        Ok(self.encoder.forward(mel, true)?)
    }

    /// A fresh decoder state for `batch` rows (1, or the beam size).
    pub fn new_state(&self, batch: usize) -> Result<DecoderState> {
        let cfg = &self.config;
        let caches = (0..cfg.decoder_layers)
            .map(|_| {
                KvCache::new(
                    batch,
                    cfg.decoder_attention_heads,
                    cfg.max_target_positions,
                    cfg.head_dim(),
                    DType::F32,
                    &self.device,
                )
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(DecoderState {
            caches,
            cross: Vec::new(),
        })
    }

    /// Computes the cross-attention K/V of one window's audio features (1, 1500, d), once per
    /// window, and forgets previously decoded tokens.
    pub fn set_audio(&self, state: &mut DecoderState, audio_features: &Tensor) -> Result<()> {
        state.cross = self
            .decoder
            .layers
            .iter()
            .map(|l| match &l.cross {
                Some((attn, _)) => attn.cross_kv(audio_features)?.to_dtype(self.dtype),
                None => candle_core::bail!("decoder block without cross-attention"),
            })
            .collect::<candle_core::Result<_>>()?;
        state.reset_tokens();
        Ok(())
    }

    /// Runs tokens (batch, t) through the decoder at the state's position and returns the hidden
    /// states after the final LayerNorm, (batch, t, d). With `trace`, also collects transformers'
    /// `hidden_states` list (embeddings, each layer but the last, final).
    pub fn decode(
        &self,
        tokens: &Tensor,
        state: &mut DecoderState,
        trace: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        Ok(self.run_decoder(tokens, state, trace, &[])?.0)
    }

    /// Like [`Self::decode`] for one row, and also returns the cross-attention scores of the
    /// `heads` ([layer, head] pairs) before their softmax: (heads.len(), t, 1500), layer by
    /// layer (within a layer in the order asked). Word-level timestamps average them
    /// (openai-whisper's `find_alignment`).
    pub fn decode_with_cross_scores(
        &self,
        tokens: &Tensor,
        state: &mut DecoderState,
        heads: &[[usize; 2]],
    ) -> Result<(Tensor, Tensor)> {
        let (hidden, by_layer) = self.run_decoder(tokens, state, None, heads)?;
        let scores: Vec<Tensor> = by_layer.into_iter().map(|(_, s)| s).collect();
        Ok((hidden, Tensor::cat(&scores, 0)?))
    }

    fn run_decoder(
        &self,
        tokens: &Tensor,
        state: &mut DecoderState,
        mut trace: Option<&mut Vec<Tensor>>,
        cross_heads: &[[usize; 2]],
    ) -> Result<(Tensor, Vec<(usize, Tensor)>)> {
        let (_, t) = tokens.dims2()?;
        let position = state.position();
        if position + t > self.config.max_target_positions {
            return Err(Error::InvalidRequest(format!(
                "decoder context exceeded: {position} + {t} tokens > {}",
                self.config.max_target_positions
            )));
        }
        if state.cross.is_empty() {
            return Err(Error::InvalidRequest(
                "decode called before set_audio".into(),
            ));
        }
        let d = &self.decoder;
        let tok = d.head.rows(&tokens.flatten_all()?)?.reshape((
            tokens.dim(0)?,
            t,
            self.config.d_model,
        ))?;
        let mut x = tok.broadcast_add(&d.embed_positions.narrow(0, position, t)?)?;
        // Filled only for requested heads: a decoder step allocates nothing here.
        let mut scores = Vec::new();
        for (i, layer) in d.layers.iter().enumerate() {
            if let Some(trace) = trace.as_deref_mut() {
                trace.push(x.clone());
            }
            let heads: Vec<usize> = cross_heads
                .iter()
                .filter(|h| h[0] == i)
                .map(|h| h[1])
                .collect();
            let (out, layer_scores) = layer.forward(
                &x,
                KvSource::Cached(&mut state.caches[i]),
                Some(&state.cross[i]),
                &heads,
            )?;
            x = out;
            if let Some(layer_scores) = layer_scores {
                scores.push((i, layer_scores));
            }
        }
        let out = d.layer_norm.forward(&x)?;
        if let Some(trace) = trace {
            trace.push(out.clone());
        }
        Ok((out, scores))
    }

    /// Bytes one decoder step reads, by residency: the head, each layer's self-attention
    /// projections, cross-attention q and out projections and MLP, and the window's
    /// cross-attention K/V (counted as streamed, at the memory's rate: the plan leaves them room
    /// in the cache budget, but it plans weights, not activations).
    pub fn decoder_step_bytes(&self) -> CycleBytes {
        let d = &self.decoder;
        let layers: CycleBytes = d
            .layers
            .iter()
            .map(|b| {
                let cross = b.cross.as_ref().map_or(CycleBytes::default(), |(attn, _)| {
                    attn.step_projections().iter().map(|l| l.read_bytes()).sum()
                });
                b.self_attn.read_bytes() + cross + b.mlp.read_bytes()
            })
            .sum();
        let cfg = &self.config;
        let cross_kv = d.layers.len() * 2 * cfg.max_source_positions * cfg.d_model;
        let cross_kv = CycleBytes::read(cross_kv * self.dtype.size_in_bytes(), Residency::Streamed);
        d.head.read_bytes() + layers + cross_kv
    }

    /// hidden (..., d) -> logits (..., vocab) through the tied token embedding.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.decoder.head.forward(hidden)?)
    }
}
