//! The Mistral transformer stack, written once for both Voxtrals: pre-norm layers (RMSNorm,
//! GQA attention with RoPE, SwiGLU) under a final RMSNorm. Voxtral Realtime runs its causal
//! audio encoder (biases, sliding window) and its decoder (delay-conditioned FFN norm) on it;
//! Voxtral Mini 3B its Llama decoder (no biases, full attention). [`TextDecoder`] adds the
//! token embeddings and the output head; [`load_network`] opens either checkpoint.

use crate::error::Error;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use std::path::PathBuf;
use voxide_nn::activation::gelu_erf;
use voxide_nn::kernels::machine::CycleBytes;
use voxide_nn::kv_cache::default_kv_dtype;
use voxide_nn::linear::WeightFormat;
use voxide_nn::transformer::{
    check_layer_count, LayerConfig, LayerNames, PreNormLayer, StackState,
};
use voxide_nn::weights::SafetensorsFiles;
use voxide_nn::{KvCache, Linear, RmsNorm, RopeLayout, RotaryEmbedding};

/// RoPE table length; later positions are computed on the fly.
const ROPE_TABLE: usize = 4096;

/// Which checkpoint layout a directory holds; it fixes the tensor names and the RoPE pairing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `consolidated.safetensors` + `params.json`: Mistral names, RoPE on interleaved pairs.
    Mistral,
    /// `model.safetensors` + `config.json`: HF names, q/k rows permuted for rotate-half RoPE.
    Hf,
}

/// Mistral's names inside a layer (`layers.N.attention.wq`, `feed_forward.w1`, ...).
pub(crate) const MISTRAL_LAYER: LayerNames = LayerNames {
    norms: ["attention_norm", "ffn_norm"],
    attention: "attention",
    qkvo: ["wq", "wk", "wv", "wo"],
    mlp: "feed_forward",
    gate_up_down: ["w1", "w3", "w2"],
};

/// Shape of one stack.
#[derive(Clone, Debug, PartialEq)]
pub struct StackConfig {
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// SwiGLU hidden width.
    pub hidden_dim: usize,
    pub rope_theta: f64,
    pub norm_eps: f64,
    /// A query sees the last `sliding_window` positions, itself included; `None`: all of them.
    pub sliding_window: Option<usize>,
}

impl StackConfig {
    /// Rejects shapes the layers cannot be built with.
    pub(crate) fn validate(&self, what: &str) -> std::result::Result<(), String> {
        let dims = [
            ("dim", Some(self.dim)),
            ("layers", Some(self.n_layers)),
            ("heads", Some(self.n_heads)),
            ("key/value heads", Some(self.n_kv_heads)),
            ("head width", Some(self.head_dim)),
            ("hidden", Some(self.hidden_dim)),
            ("sliding window", self.sliding_window),
        ];
        if let Some((name, _)) = dims.iter().find(|(_, v)| *v == Some(0)) {
            return Err(format!("{what}: {name} is 0"));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) || !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "{what}: {} heads cannot share {} key/value heads of width {}",
                self.n_heads, self.n_kv_heads, self.head_dim
            ));
        }
        // A rotary base or norm epsilon that is not positive runs, into NaN or garbage.
        for (name, value) in [("rope_theta", self.rope_theta), ("norm_eps", self.norm_eps)] {
            if !(value > 0.0 && value.is_finite()) {
                return Err(format!("{what}: {name} {value} is not a positive number"));
            }
        }
        Ok(())
    }
}

/// One stack's section of an HF `config.json` (`audio_config`, `text_config`); the fields a
/// model does not have are absent.
#[derive(serde::Deserialize)]
pub(crate) struct HfStack {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default)]
    pub rms_norm_eps: Option<f64>,
    /// transformers 4 writes `rope_theta`, transformers 5 `rope_parameters.rope_theta`.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<HfRope>,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub vocab_size: Option<usize>,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub num_mel_bins: Option<usize>,
    #[serde(default)]
    pub max_source_positions: Option<usize>,
}

#[derive(serde::Deserialize)]
pub(crate) struct HfRope {
    pub rope_theta: f64,
}

impl HfStack {
    /// The stack's shape, with `sliding_window` (`what` names the section in errors).
    pub(crate) fn stack_config(
        &self,
        what: &str,
        sliding_window: Option<usize>,
    ) -> std::result::Result<StackConfig, String> {
        let rope_theta = self
            .rope_parameters
            .as_ref()
            .map(|r| r.rope_theta)
            .or(self.rope_theta)
            .ok_or_else(|| format!("{what} has no rope_theta"))?;
        Ok(StackConfig {
            dim: self.hidden_size,
            n_layers: self.num_hidden_layers,
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads.max(1)),
            hidden_dim: self.intermediate_size,
            rope_theta,
            norm_eps: self.rms_norm_eps.unwrap_or(1e-5),
            sliding_window,
        })
    }
}

/// Checkpoint names of a stack.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StackNames {
    /// The layers' prefix (`layers`, `language_model.model.layers`).
    pub layers: &'static str,
    /// The final norm (`norm`, `language_model.model.norm`).
    pub norm: &'static str,
    pub layer: LayerNames,
}

/// What a stack's layers carry beyond the Llama layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Extras {
    None,
    /// Biases on q, v and out (not k) and on the MLP's down projection (Realtime's encoder).
    Biases,
    /// An FFN-norm gain computed from the transcription delay (Realtime's decoder): the
    /// module's name, its down and up projections, and the bottleneck width.
    DelayConditioning {
        names: [&'static str; 3],
        t_cond_dim: usize,
    },
}

/// `1 + up(gelu(down(t_cond)))`: the per-layer FFN-norm gain for a given delay.
#[derive(Clone, Debug)]
struct AdaNorm {
    down: Linear,
    up: Linear,
}

impl AdaNorm {
    fn gain(&self, t_cond: &Tensor) -> Result<Tensor> {
        self.up.forward(&gelu_erf(&self.down.forward(t_cond)?)?)? + 1.0
    }
}

/// A pre-norm transformer layer, with the delay conditioning where the stack has it.
#[derive(Clone, Debug)]
struct Block {
    layer: PreNormLayer,
    ada: Option<AdaNorm>,
}

impl Block {
    fn load(vb: VarBuilder, s: &StackConfig, names: &StackNames, extras: Extras) -> Result<Self> {
        let ada = match extras {
            Extras::DelayConditioning { names, t_cond_dim } => {
                let [prefix, down, up] = names;
                let ada = vb.pp(prefix);
                Some(AdaNorm {
                    down: Linear::load(ada.pp(down), s.dim, t_cond_dim, false)?,
                    up: Linear::load(ada.pp(up), t_cond_dim, s.dim, false)?,
                })
            }
            Extras::None | Extras::Biases => None,
        };
        let biases = extras == Extras::Biases;
        let layer = LayerConfig {
            dim: s.dim,
            hidden_dim: s.hidden_dim,
            n_heads: s.n_heads,
            n_kv_heads: s.n_kv_heads,
            head_dim: s.head_dim,
            norm_eps: s.norm_eps,
            attention_bias: [biases, false, biases, biases],
            down_bias: biases,
            qk_norm: false,
            layer_scale: false,
        };
        Ok(Self {
            layer: PreNormLayer::load(vb, &layer, &names.layer)?,
            ada,
        })
    }

    /// The block with its attention and MLP matrices stored as `format`.
    fn into_format(self, format: WeightFormat) -> Result<Self> {
        Ok(Self {
            layer: self.layer.into_format(format)?,
            ..self
        })
    }
}

/// A stack of layers with its final norm and rotary table.
#[derive(Clone, Debug)]
pub(crate) struct Stack {
    blocks: Vec<Block>,
    norm: RmsNorm,
    rope: RotaryEmbedding,
    config: StackConfig,
}

impl Stack {
    /// Loads the stack under `vb` (the checkpoint root, or the encoder's prefix); with
    /// `quantize`, each layer's matrices are converted as soon as the layer is read, so that
    /// loading never holds more than one layer in the stored precision.
    pub(crate) fn load(
        vb: VarBuilder,
        s: &StackConfig,
        names: &StackNames,
        extras: Extras,
        rope: RopeLayout,
        quantize: Option<WeightFormat>,
    ) -> Result<Self> {
        let layers = vb.pp(names.layers);
        check_layer_count(
            &layers,
            s.n_layers,
            &format!("{}.weight", names.layer.norms[0]),
        )?;
        let blocks = (0..s.n_layers)
            .map(|i| {
                let block = Block::load(layers.pp(i), s, names, extras)?;
                match quantize {
                    Some(format) => block.into_format(format),
                    None => Ok(block),
                }
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            blocks,
            norm: RmsNorm::load(vb.pp(names.norm), s.dim, s.norm_eps)?,
            rope: RotaryEmbedding::new(s.head_dim, ROPE_TABLE, s.rope_theta, rope, vb.device())?,
            config: s.clone(),
        })
    }

    /// Fresh state for `batch` sequences decoded side by side. A sliding-window stack (one
    /// sequence) takes blocks of up to `block` positions at once; a full-attention one holds
    /// up to `block` positions in all (its caches grow to that).
    pub(crate) fn new_state(
        &self,
        batch: usize,
        block: usize,
        kv_dtype: DType,
        device: &Device,
    ) -> Result<StackState> {
        let s = &self.config;
        if s.sliding_window.is_some() && batch != 1 {
            candle_core::bail!("a sliding-window stack decodes one sequence at a time");
        }
        let caches = (0..s.n_layers)
            .map(|_| match s.sliding_window {
                Some(window) => {
                    KvCache::sliding(s.n_kv_heads, window, block, s.head_dim, kv_dtype, device)
                }
                None => KvCache::growable(batch, s.n_kv_heads, block, s.head_dim, kv_dtype, device),
            })
            .collect::<Result<_>>()?;
        Ok(StackState::new(caches))
    }

    /// The FFN gains of each layer for the delay embedding `t_cond` (1, dim); empty when the
    /// stack has no delay conditioning.
    pub(crate) fn gains(&self, t_cond: &Tensor) -> Result<Vec<Tensor>> {
        self.blocks
            .iter()
            .filter_map(|b| b.ada.as_ref())
            .map(|ada| ada.gain(t_cond))
            .collect()
    }

    /// x: (1, t, dim) -> final-norm output (1, t, dim); every layer's output is pushed to
    /// `hidden` when given (HF's `hidden_states[1..]`, before the final norm).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        state: &mut StackState,
        gains: Option<&[Tensor]>,
        hidden: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let layers = self.blocks.iter().map(|b| &b.layer);
        let x = state.forward(layers, x, &self.rope, gains, hidden)?;
        self.norm.forward(&x)
    }

    /// One position of each of several sequences, x (rows, 1, dim), row i continuing
    /// `states[i]` (the steps of concurrent streams: each matrix read once for all rows) →
    /// final-norm output (rows, 1, dim); `gains` per layer (rows, 1, dim), each row's own.
    pub(crate) fn forward_rows(
        &self,
        x: &Tensor,
        states: &mut [&mut StackState],
        gains: Option<&[Tensor]>,
    ) -> Result<Tensor> {
        let layers = self.blocks.iter().map(|b| &b.layer);
        let x = StackState::forward_rows(states, layers, x, &self.rope, gains)?;
        self.norm.forward(&x)
    }

    /// The stack with its attention and MLP matrices stored as `format`.
    pub(crate) fn into_format(self, format: WeightFormat) -> Result<Self> {
        let blocks = self
            .blocks
            .into_iter()
            .map(|b| b.into_format(format))
            .collect::<Result<_>>()?;
        Ok(Self { blocks, ..self })
    }

    /// Every matrix a step reads, for residency planning.
    pub(crate) fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.blocks.iter_mut().flat_map(|b| b.layer.linears_mut())
    }

    /// What a pass over the layers' matrices reads, by residency.
    pub(crate) fn read_bytes(&self) -> CycleBytes {
        self.blocks.iter().map(|b| b.layer.read_bytes()).sum()
    }
}

/// Checkpoint names of a text decoder.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DecoderNames {
    /// Token embeddings (`tok_embeddings`, `language_model.model.embed_tokens`).
    pub embeddings: &'static str,
    /// The output head (`output`, `language_model.lm_head`), used when stored.
    pub head: &'static str,
    pub stack: StackNames,
}

/// A text decoder: token embeddings, the stack, and the output head — the checkpoint's own, or
/// the embeddings when it stores none (tied).
#[derive(Clone, Debug)]
pub(crate) struct TextDecoder {
    /// (vocab, dim), in the checkpoint's precision.
    embeddings: Tensor,
    head: Linear,
    pub stack: Stack,
}

impl TextDecoder {
    /// Loads the decoder; with `quantize`, its layers' matrices and head are stored as that
    /// format, each converted as it is read ([`Stack::load`]).
    pub(crate) fn load(
        vb: VarBuilder,
        config: &StackConfig,
        vocab_size: usize,
        names: &DecoderNames,
        extras: Extras,
        rope: RopeLayout,
        quantize: Option<WeightFormat>,
    ) -> Result<Self> {
        let embeddings = vb
            .pp(names.embeddings)
            .get((vocab_size, config.dim), "weight")?;
        let head = if vb.pp(names.head).contains_tensor("weight") {
            Linear::load(vb.pp(names.head), config.dim, vocab_size, false)?
        } else {
            Linear::from_weights(embeddings.clone(), None)
        };
        let head = match quantize {
            Some(format) => head.to_format(format)?,
            None => head,
        };
        let stack = Stack::load(vb, config, &names.stack, extras, rope, quantize)?;
        Ok(Self {
            embeddings,
            head,
            stack,
        }
        .with_planned_residency()
        .with_bf16_prompts())
    }

    /// Decides which matrices a step streams past the cache and which stay cached between
    /// tokens (a multi-GB step fits no cache: the plan keeps the smallest matrices that fit and
    /// streams the rest). The KV caches, which grow with the sequence, are not counted.
    fn with_planned_residency(mut self) -> Self {
        let mut step: Vec<&mut Linear> = vec![&mut self.head];
        step.extend(self.stack.linears_mut());
        Linear::plan_residency(step, 0);
        self
    }

    /// The decoder with its layers' matrices and head stored as `format` (int8 halves what a
    /// step reads). Token lookups keep the embeddings' own precision.
    pub(crate) fn into_format(self, format: WeightFormat) -> Result<Self> {
        Ok(Self {
            stack: self.stack.into_format(format)?,
            head: self.head.to_format(format)?,
            ..self
        }
        .with_planned_residency()
        .with_bf16_prompts())
    }

    /// A prompt's products on bf16 dot products where the CPU has them, x rounded to bf16 as
    /// in the references' bf16 matmuls (Mistral's checkpoints are bf16): Voxtral Mini 3B's
    /// 375 audio positions a window prefill in ~0.6× the time (PERFORMANCE.md #162). Steps
    /// keep x whole ([`Linear::set_bf16_prompts`]).
    fn with_bf16_prompts(mut self) -> Self {
        self.head.set_bf16_prompts();
        self.stack.linears_mut().for_each(Linear::set_bf16_prompts);
        self
    }

    /// The precision of the KV caches when a request names none ([`default_kv_dtype`]).
    pub(crate) fn default_kv_dtype(&self) -> DType {
        default_kv_dtype(self.head.weight_format())
    }

    /// Bytes of weights one step reads, by residency: every layer's matrices and the head.
    pub(crate) fn step_bytes(&self) -> CycleBytes {
        self.stack.read_bytes() + self.head.read_bytes()
    }

    /// Token embeddings (1, t, dim) in f32.
    pub(crate) fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(ids, self.embeddings.device())?;
        self.embeddings
            .index_select(&ids, 0)?
            .to_dtype(DType::F32)?
            .unsqueeze(0)
    }

    /// Logits (…, vocab) of final-norm hidden states (…, dim).
    pub(crate) fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.head.forward(hidden)
    }
}

/// Loads a network from safetensors `files`: matrices in the precision `format` names, or in
/// the one `probe` (the token embeddings) is stored in; with a quantized format (int8, a ggml
/// block type), `load` receives it and converts what the network quantizes as it reads it.
/// Errors name the file and the tensor.
pub(crate) fn load_network<M>(
    files: &[PathBuf],
    probe: &str,
    format: Option<WeightFormat>,
    device: &Device,
    load: impl FnOnce(VarBuilder<'static>, Option<WeightFormat>) -> Result<M>,
) -> crate::Result<M> {
    let weights_error = |e: candle_core::Error| Error::Weights {
        path: files[0].clone(),
        message: e.to_string().lines().next().unwrap_or_default().to_string(),
    };
    let tensors = SafetensorsFiles::open(files).map_err(weights_error)?;
    let dtype = format
        .and_then(WeightFormat::dtype)
        .unwrap_or_else(|| tensors.dtype(probe).unwrap_or(DType::F32));
    let vb = VarBuilder::from_backend(Box::new(tensors), dtype, device.clone());
    let quantize = format.filter(|f| f.dtype().is_none());
    load(vb, quantize).map_err(weights_error)
}
