//! The Voxtral Mini 3B network, composed from parts that exist elsewhere: Whisper's audio
//! encoder (its own weights), a two-layer projector, and the Mistral stack that Voxtral
//! Realtime's decoder runs on (here without delay conditioning or sliding window).
//!
//! Shapes (real model), per 30 s window: mel (k, 128, 3000) → encoder (k, 1500, 1280) →
//! stack 4 frames (375·k, 5120) → projector (375·k, 3072) → replaces the `[AUDIO]` rows of the
//! prompt's token embeddings (1, T, 3072) → decoder (1, T, 3072) → head (131 072).

use super::config::{Config, Layout};
use crate::batching::RowDecoder;
use crate::mistral_stack::{DecoderNames, Extras, StackNames, TextDecoder, MISTRAL_LAYER};
use crate::whisper::model::{Encoder, EncoderTrace};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use voxide_nn::activation::gelu_erf;
use voxide_nn::kernels::machine::CycleBytes;
use voxide_nn::linear::WeightFormat;
use voxide_nn::transformer::{LayerNames, StackState};
use voxide_nn::{Linear, RopeLayout};

/// Tensor names of one checkpoint layout (spec §8).
struct Names {
    /// The audio encoder's prefix.
    encoder: &'static str,
    projector: [&'static str; 2],
    decoder: DecoderNames,
    rope: RopeLayout,
}

impl Layout {
    fn voxtral_names(self) -> Names {
        match self {
            Layout::Mistral => Names {
                encoder: MISTRAL_ENCODER,
                projector: [
                    "mm_whisper_embeddings.audio_language_projection.0",
                    "mm_whisper_embeddings.audio_language_projection.2",
                ],
                decoder: DecoderNames {
                    embeddings: "tok_embeddings",
                    head: "output",
                    stack: StackNames {
                        layers: "layers",
                        norm: "norm",
                        layer: MISTRAL_LAYER,
                    },
                },
                rope: RopeLayout::Interleaved,
            },
            Layout::Hf => Names {
                encoder: "audio_tower",
                projector: [
                    "multi_modal_projector.linear_1",
                    "multi_modal_projector.linear_2",
                ],
                decoder: DecoderNames {
                    embeddings: "language_model.model.embed_tokens",
                    head: "language_model.lm_head",
                    stack: StackNames {
                        layers: "language_model.model.layers",
                        norm: "language_model.model.norm",
                        layer: LayerNames::HF,
                    },
                },
                rope: RopeLayout::RotateHalf,
            },
        }
    }
}

const MISTRAL_ENCODER: &str = "mm_whisper_embeddings.whisper_encoder";

/// The Mistral name of an audio-encoder tensor given its Whisper (HF) name under
/// [`MISTRAL_ENCODER`] (transformers' `convert_voxtral_weights_to_hf.py`, inverted):
/// `conv1` → `conv_layers.0`, `layers.N.self_attn.q_proj` → `transformer.layers.N.attention.wq`,
/// `fc1` → `feed_forward.w1`, `self_attn_layer_norm` → `attention_norm`, `final_layer_norm` →
/// `ffn_norm`, `layer_norm` → `transformer.norm`. Other names pass through.
fn mistral_encoder_name(name: &str) -> String {
    let Some(rest) = name
        .strip_prefix(MISTRAL_ENCODER)
        .and_then(|r| r.strip_prefix('.'))
    else {
        return name.to_string();
    };
    let renamed = if let Some(r) = rest.strip_prefix("conv1.") {
        format!("conv_layers.0.{r}")
    } else if let Some(r) = rest.strip_prefix("conv2.") {
        format!("conv_layers.1.{r}")
    } else if let Some(r) = rest.strip_prefix("layer_norm.") {
        format!("transformer.norm.{r}")
    } else if let Some(r) = rest.strip_prefix("layers.") {
        let (layer, inner) = r.split_once('.').unwrap_or((r, ""));
        let inner = [
            ("self_attn.q_proj.", "attention.wq."),
            ("self_attn.k_proj.", "attention.wk."),
            ("self_attn.v_proj.", "attention.wv."),
            ("self_attn.out_proj.", "attention.wo."),
            ("self_attn_layer_norm.", "attention_norm."),
            ("final_layer_norm.", "ffn_norm."),
            ("fc1.", "feed_forward.w1."),
            ("fc2.", "feed_forward.w2."),
        ]
        .iter()
        .find_map(|(hf, mistral)| inner.strip_prefix(hf).map(|r| format!("{mistral}{r}")))
        .unwrap_or_else(|| inner.to_string());
        format!("transformer.layers.{layer}.{inner}")
    } else {
        rest.to_string()
    };
    format!("{MISTRAL_ENCODER}.{renamed}")
}

/// Weights of Voxtral Mini 3B (immutable; each request keeps its own `StackState`).
#[derive(Clone, Debug)]
pub struct VoxtralModel {
    config: Config,
    encoder: Encoder,
    projector: [Linear; 2],
    /// Token embeddings, the stack and the head (the checkpoint's, else tied: the spec
    /// reports tying inconsistently).
    decoder: TextDecoder,
    device: Device,
}

impl VoxtralModel {
    /// Builds the model from `vb` (matrices in `vb`'s dtype; norms, biases, convolutions and
    /// the positional table in f32), with the RoPE pairing of the checkpoint's layout.
    pub fn load(vb: VarBuilder, config: Config) -> Result<Self> {
        Self::load_in_format(vb, config, None)
    }

    /// [`Self::load`] with the decoder's matrices and output head stored as `format` (int8
    /// halves what a step reads), each layer converted as it is read: loading holds one
    /// layer in the stored precision, not the whole decoder beside its quantized copy. int8
    /// quantizes the encoder's matrices too: its window products run in integers (VNNI, or
    /// AVX2's `vpmaddubsw`), and it holds half the bytes (PERFORMANCE.md #153); the ggml block
    /// formats, whose kernels serve decoder steps, leave it in the checkpoint's precision.
    pub fn load_in_format(
        vb: VarBuilder,
        config: Config,
        format: Option<WeightFormat>,
    ) -> Result<Self> {
        let rope = config.layout.voxtral_names().rope;
        Self::load_with_rope(vb, config, rope, format)
    }

    /// [`Self::load`] with an explicit RoPE pairing for the decoder (a checkpoint whose q/k
    /// rows do not match its names gives wrong attention and no error), and `format` as
    /// in [`Self::load_in_format`].
    pub fn load_with_rope(
        vb: VarBuilder,
        config: Config,
        rope: RopeLayout,
        format: Option<WeightFormat>,
    ) -> Result<Self> {
        let names = config.layout.voxtral_names();
        let encoder_vb = match config.layout {
            Layout::Hf => vb.pp(names.encoder),
            Layout::Mistral => vb.clone().rename_f(mistral_encoder_name).pp(names.encoder),
        };
        let encoder = Encoder::load(encoder_vb, &config.audio)?;
        let mut encoder = match format {
            Some(WeightFormat::Int8) => encoder.into_format(WeightFormat::Int8)?,
            _ => encoder,
        };
        let stacked = config.audio.d_model * config.downsample_factor;
        let dim = config.text.dim;
        let mut projector = [
            Linear::load(vb.pp(names.projector[0]), stacked, dim, false)?,
            Linear::load(vb.pp(names.projector[1]), dim, dim, false)?,
        ];
        // The audio tower multiplies whole windows: bf16 on bf16 dot products where the CPU
        // has them (PERFORMANCE.md #161).
        encoder.set_chunk_invariant();
        projector.iter_mut().for_each(Linear::set_chunk_invariant);
        let decoder = TextDecoder::load(
            vb.clone(),
            &config.text,
            config.vocab_size,
            &names.decoder,
            Extras::None,
            rope,
            format,
        )?;
        Ok(Self {
            device: vb.device().clone(),
            config,
            encoder,
            projector,
            decoder,
        })
    }

    /// Bytes of weights one decoder step reads, by residency: every layer's matrices and the
    /// output head.
    pub fn decoder_step_bytes(&self) -> CycleBytes {
        self.decoder.step_bytes()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Encoder on windows of mel (k, n_mels, 3000) → (k, 1500, d) and, with `keep_all`, every
    /// intermediate (transformers' `hidden_states`).
    pub fn encode(&self, mel: &Tensor, keep_all: bool) -> Result<EncoderTrace> {
        self.encoder.forward(mel, keep_all)
    }

    /// Projector on encoder frames (k, 1500, d): groups of `downsample_factor` consecutive
    /// frames, concatenated (375·k, 4·d) → linear_1 → GELU → linear_2 → (375·k, dim).
    pub fn project(&self, frames: &Tensor) -> Result<Tensor> {
        let (k, t, d) = frames.dims3()?;
        let factor = self.config.downsample_factor;
        let stacked = frames.reshape((k * t / factor, d * factor))?;
        self.projector[1].forward(&gelu_erf(&self.projector[0].forward(&stacked)?)?)
    }

    /// The decoder input for `ids`: token embeddings (1, T, dim) in f32 whose `[AUDIO]` rows
    /// are replaced, in order, by the rows of `audio` (n, dim) (transformers'
    /// `masked_scatter`; audio and text are not summed). The counts must agree.
    pub fn merge(&self, ids: &[u32], audio: &Tensor) -> Result<Tensor> {
        let placeholder = self.config.audio_token_id;
        let slots = ids.iter().filter(|&&id| id == placeholder).count();
        let (n, _) = audio.dims2()?;
        if slots != n {
            candle_core::bail!(
                "the prompt has {slots} audio placeholders for {n} audio embeddings"
            );
        }
        let text = self.embed(ids)?.squeeze(0)?;
        if n == 0 {
            return text.unsqueeze(0);
        }
        // One gather over [text rows; audio rows]: position i takes its own text row, or the
        // next audio row when it holds the placeholder.
        let mut next_audio = ids.len() as u32;
        let rows: Vec<u32> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                if id == placeholder {
                    next_audio += 1;
                    next_audio - 1
                } else {
                    i as u32
                }
            })
            .collect();
        let both = Tensor::cat(&[&text, &audio.to_dtype(DType::F32)?], 0)?;
        both.index_select(&Tensor::new(rows, &self.device)?, 0)?
            .unsqueeze(0)
    }

    /// Token embeddings (1, t, dim) in f32.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        self.decoder.embed(ids)
    }

    /// The KV caches' precision when a request names none (f16 beside narrow or quantized
    /// weights, f32 beside f32 ones).
    pub fn default_kv_dtype(&self) -> DType {
        self.decoder.default_kv_dtype()
    }

    /// A fresh decoder state for `batch` sequences of up to `positions` positions each (prompt
    /// and generated tokens), caches in `kv_dtype`; they grow as the sequences do.
    pub fn new_state(&self, batch: usize, positions: usize, kv_dtype: DType) -> Result<StackState> {
        self.decoder
            .stack
            .new_state(batch, positions, kv_dtype, &self.device)
    }

    /// Decoder on embeddings (1, t, dim) at the state's position → final-norm hidden states;
    /// `hidden` collects each layer's output.
    pub fn decode(
        &self,
        state: &mut StackState,
        x: &Tensor,
        hidden: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        self.decoder.stack.forward(x, state, None, hidden)
    }

    /// Logits (…, vocab) of final-norm hidden states (…, dim).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.decoder.logits(hidden)
    }
}

impl RowDecoder for VoxtralModel {
    type State = StackState;

    /// One step of each of several requests, x (rows, 1, dim), row i continuing `states[i]`
    /// (each of batch 1, at its own position) → logits (rows, 1, vocab).
    fn step_rows(&self, states: &mut [&mut StackState], x: &Tensor) -> Result<Tensor> {
        self.logits(&self.decoder.stack.forward_rows(x, states, None)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistral_encoder_names_invert_the_converter() {
        let cases = [
            ("conv1.weight", "conv_layers.0.weight"),
            ("conv2.bias", "conv_layers.1.bias"),
            ("layer_norm.weight", "transformer.norm.weight"),
            (
                "layers.7.self_attn.q_proj.bias",
                "transformer.layers.7.attention.wq.bias",
            ),
            (
                "layers.0.self_attn.out_proj.weight",
                "transformer.layers.0.attention.wo.weight",
            ),
            (
                "layers.31.self_attn_layer_norm.bias",
                "transformer.layers.31.attention_norm.bias",
            ),
            (
                "layers.2.final_layer_norm.weight",
                "transformer.layers.2.ffn_norm.weight",
            ),
            (
                "layers.3.fc2.weight",
                "transformer.layers.3.feed_forward.w2.weight",
            ),
            ("embed_positions.weight", "embed_positions.weight"),
        ];
        for (hf, mistral) in cases {
            assert_eq!(
                mistral_encoder_name(&format!("{MISTRAL_ENCODER}.{hf}")),
                format!("{MISTRAL_ENCODER}.{mistral}")
            );
        }
        assert_eq!(
            mistral_encoder_name("layers.0.attention.wq.weight"),
            "layers.0.attention.wq.weight"
        );
    }
}
