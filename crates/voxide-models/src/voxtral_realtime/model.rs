//! The Voxtral Realtime network: causal conv stem and encoder (1280 wide, 32 layers, window
//! 750 frames), 4× adapter, and a 26-layer Ministral decoder whose FFN norm is conditioned on
//! the transcription delay. Blocks come from `voxide-nn`; this file only wires them.
//!
//! Shapes (real model): mel (1, 128, 8·N) → stem (1, 4·N, 1280) → encoder (1, 4·N, 1280) →
//! stack 4 frames (1, N, 5120) → adapter (1, N, 3072) → summed with token embeddings →
//! decoder (1, N, 3072) → tied head (131 072).

use super::config::{Config, Layout};
use crate::batching::RowDecoder;
use crate::mistral_stack::{DecoderNames, Extras, Stack, StackNames, TextDecoder, MISTRAL_LAYER};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use voxide_nn::activation::gelu_erf;
use voxide_nn::kernels::machine::CycleBytes;
use voxide_nn::linear::WeightFormat;
use voxide_nn::transformer::{LayerNames, StackState};
use voxide_nn::{ConvStem, ConvStemState, Linear, RopeLayout};

/// Encoder frames processed at once (bounds the attention scores and the KV-cache headroom:
/// voxtral.c keeps 750 + 256 encoder positions too).
pub const ENCODER_BLOCK: usize = 256;

/// Largest decoder block (the prompt prefill is 39 positions at the default delay, 63 at the
/// longest) and the decoder KV cache's headroom past its window.
pub const DECODER_BLOCK: usize = 256;

/// Tensor names of one checkpoint layout (spec §12.3 / §12.4).
struct Names {
    encoder: &'static str,
    conv: [&'static str; 2],
    /// Relative to `encoder`.
    encoder_stack: StackNames,
    adapter: [&'static str; 2],
    decoder: DecoderNames,
    /// The decoder's delay-conditioning module and its down and up projections.
    ada: [&'static str; 3],
    rope: RopeLayout,
}

impl Layout {
    fn names(self) -> Names {
        match self {
            Layout::Mistral => Names {
                encoder: "mm_streams_embeddings.embedding_module.whisper_encoder",
                conv: ["conv_layers.0.conv", "conv_layers.1.conv"],
                encoder_stack: StackNames {
                    layers: "transformer.layers",
                    norm: "transformer.norm",
                    layer: MISTRAL_LAYER,
                },
                adapter: [
                    "mm_streams_embeddings.embedding_module.audio_language_projection.0",
                    "mm_streams_embeddings.embedding_module.audio_language_projection.2",
                ],
                decoder: DecoderNames {
                    embeddings: "mm_streams_embeddings.embedding_module.tok_embeddings",
                    head: "output",
                    stack: StackNames {
                        layers: "layers",
                        norm: "norm",
                        layer: MISTRAL_LAYER,
                    },
                },
                ada: ["ada_rms_norm_t_cond", "0", "2"],
                rope: RopeLayout::Interleaved,
            },
            Layout::Hf => Names {
                encoder: "audio_tower",
                conv: ["embedder.conv1", "embedder.conv2"],
                encoder_stack: StackNames {
                    layers: "layers",
                    norm: "norm",
                    layer: LayerNames {
                        norms: ["self_attn_layer_norm", "final_layer_norm"],
                        ..LayerNames::HF
                    },
                },
                adapter: [
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
                ada: ["ada_rms_norm", "linear1", "linear2"],
                rope: RopeLayout::RotateHalf,
            },
        }
    }
}

/// Weights of Voxtral Mini 4B Realtime (immutable; streams keep their own state).
#[derive(Clone, Debug)]
pub struct VoxtralRealtimeModel {
    config: Config,
    stem: ConvStem,
    encoder: Stack,
    adapter: [Linear; 2],
    /// Token embeddings, the stack, and the head (tied to the embeddings).
    decoder: TextDecoder,
    device: Device,
}

/// Per-stream network state: conv stem, encoder and decoder caches, and the decoder's FFN
/// gains for this stream's delay (the default: none, a placeholder while the state is lent).
#[derive(Clone, Debug, Default)]
pub struct NetworkState {
    pub(crate) stem: ConvStemState,
    pub(crate) encoder: StackState,
    pub(crate) decoder: StackState,
    gains: Vec<Tensor>,
}

impl NetworkState {
    /// Decoder positions consumed so far.
    pub fn decoder_position(&self) -> usize {
        self.decoder.position()
    }

    /// Forgets the decoder's context (the audio side keeps going): a live stream starts a
    /// new prompt after end-of-stream.
    pub fn reset_decoder(&mut self) {
        self.decoder.reset();
    }

    /// Positions held by the largest encoder and decoder KV caches (bounded by their
    /// windows plus headroom, however long the stream runs).
    pub fn cached_positions(&self) -> (usize, usize) {
        (
            self.encoder.cached_positions(),
            self.decoder.cached_positions(),
        )
    }
}

impl VoxtralRealtimeModel {
    /// Builds the model from `vb` (matrices in `vb`'s dtype; norms, biases and convolutions
    /// in f32), with the RoPE pairing that belongs to the checkpoint's layout.
    pub fn load(vb: VarBuilder, config: Config) -> Result<Self> {
        Self::load_in_format(vb, config, None)
    }

    /// [`Self::load`] with the decoder's matrices and output head stored as `decoder_format`
    /// (int8 halves what a step reads), each layer converted as it is read: loading holds one
    /// layer in the stored precision, not the whole decoder beside its quantized copy.
    pub fn load_in_format(
        vb: VarBuilder,
        config: Config,
        decoder_format: Option<WeightFormat>,
    ) -> Result<Self> {
        let rope = config.layout.names().rope;
        Self::load_with_rope(vb, config, rope, decoder_format)
    }

    /// [`Self::load`] with an explicit RoPE pairing: a checkpoint whose q/k rows were not
    /// permuted to match its names (wrong pairing gives wrong attention and no error), and
    /// `decoder_format` as in [`Self::load_in_format`].
    pub fn load_with_rope(
        vb: VarBuilder,
        config: Config,
        rope: RopeLayout,
        decoder_format: Option<WeightFormat>,
    ) -> Result<Self> {
        let names = config.layout.names();
        let enc = vb.pp(names.encoder);
        let stem = ConvStem::load_causal(
            enc.pp(names.conv[0]),
            enc.pp(names.conv[1]),
            config.num_mel_bins,
            config.encoder.dim,
        )?;
        let mut encoder = Stack::load(
            enc,
            &config.encoder,
            &names.encoder_stack,
            Extras::Biases,
            rope,
            None,
        )?;
        let stacked = config.encoder.dim * config.downsample_factor;
        let mut adapter = [
            Linear::load(vb.pp(names.adapter[0]), stacked, config.decoder.dim, false)?,
            Linear::load(
                vb.pp(names.adapter[1]),
                config.decoder.dim,
                config.decoder.dim,
                false,
            )?,
        ];
        // A stream's chunks set how many positions each encoder pass takes: its products
        // compute a position alike in any block, so streaming keeps the offline ids.
        for layer in encoder.linears_mut().chain(&mut adapter) {
            layer.set_chunk_invariant();
        }
        let conditioning = Extras::DelayConditioning {
            names: names.ada,
            t_cond_dim: config.t_cond_dim,
        };
        let decoder = TextDecoder::load(
            vb.clone(),
            &config.decoder,
            config.vocab_size,
            &names.decoder,
            conditioning,
            rope,
            decoder_format,
        )?;
        Ok(Self {
            device: vb.device().clone(),
            config,
            stem,
            encoder,
            adapter,
            decoder,
        })
    }

    /// The model with the decoder's matrices and output head stored as `format` (int8 halves
    /// what a step reads; the encoder, compute-bound, keeps its precision). Token lookups keep
    /// the embeddings' own precision.
    pub fn with_decoder_format(self, format: WeightFormat) -> Result<Self> {
        Ok(Self {
            decoder: self.decoder.into_format(format)?,
            ..self
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

    /// The KV caches' precision when a request names none (f16 beside narrow or quantized
    /// decoder weights, f32 beside f32 ones), for the encoder's caches too.
    pub fn default_kv_dtype(&self) -> DType {
        self.decoder.default_kv_dtype()
    }

    /// Fresh state for a stream transcribed with `delay_tokens` tokens of delay, caches in
    /// `kv_dtype`.
    pub fn new_state(&self, delay_tokens: usize, kv_dtype: DType) -> Result<NetworkState> {
        let t_cond = self.t_cond(delay_tokens)?;
        let gains = self.decoder.stack.gains(&t_cond)?;
        Ok(NetworkState {
            stem: ConvStemState::default(),
            encoder: self
                .encoder
                .new_state(1, ENCODER_BLOCK, kv_dtype, &self.device)?,
            decoder: self
                .decoder
                .stack
                .new_state(1, DECODER_BLOCK, kv_dtype, &self.device)?,
            gains,
        })
    }

    /// Sinusoidal delay embedding (1, dim): cos(t·f) then sin(t·f), f_i = 10000^(−i/(dim/2)),
    /// in f32 like transformers' `VoxtralRealtimeTimeEmbedding`.
    pub fn t_cond(&self, delay_tokens: usize) -> Result<Tensor> {
        let half = self.config.decoder.dim / 2;
        let ln_theta = -(10_000f64.ln()) as f32;
        let angles: Vec<f32> = (0..half)
            .map(|i| delay_tokens as f32 * (ln_theta * i as f32 / half as f32).exp())
            .collect();
        let values: Vec<f32> = angles
            .iter()
            .map(|a| a.cos())
            .chain(angles.iter().map(|a| a.sin()))
            .collect();
        Tensor::from_vec(values, (1, 2 * half), &self.device)
    }

    /// Causal conv stem, streaming: mel (1, n_mels, t) -> the newly complete activations of
    /// conv1 (1, enc_dim, t1) and conv2 (1, enc_dim, t2), channel-major like HF's hooks.
    pub fn stem(&self, state: &mut NetworkState, mel: &Tensor) -> Result<[Tensor; 2]> {
        self.stem.push(&mut state.stem, mel)
    }

    /// Encoder on conv frames (1, t, enc_dim), in blocks of at most [`ENCODER_BLOCK`] ->
    /// (1, t, enc_dim) after the final norm. `hidden` collects each layer's output.
    pub fn encode(
        &self,
        state: &mut NetworkState,
        frames: &Tensor,
        mut hidden: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let t = frames.dim(1)?;
        let mut out = Vec::new();
        for start in (0..t).step_by(ENCODER_BLOCK) {
            let block = frames.narrow(1, start, ENCODER_BLOCK.min(t - start))?;
            out.push(self.encoder.forward(
                &block,
                &mut state.encoder,
                None,
                hidden.as_deref_mut(),
            )?);
        }
        match out.len() {
            0 => Tensor::zeros((1, 0, self.config.encoder.dim), DType::F32, &self.device),
            1 => Ok(out.pop().expect("one block")),
            _ => Tensor::cat(&out, 1),
        }
    }

    /// Adapter on groups of `downsample_factor` encoder frames: (1, 4·n, enc_dim) ->
    /// (1, n, dec_dim).
    pub fn adapt(&self, frames: &Tensor) -> Result<Tensor> {
        let (b, t, d) = frames.dims3()?;
        let stacked = frames.reshape((
            b,
            t / self.config.downsample_factor,
            d * self.config.downsample_factor,
        ))?;
        self.adapter[1].forward(&gelu_erf(&self.adapter[0].forward(&stacked)?)?)
    }

    /// Token embeddings (1, t, dec_dim) in f32.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        self.decoder.embed(ids)
    }

    /// Decoder on summed audio + token embeddings (1, t, dec_dim) -> final-norm hidden states.
    pub fn decode(
        &self,
        state: &mut NetworkState,
        x: &Tensor,
        hidden: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        self.decoder
            .stack
            .forward(x, &mut state.decoder, Some(&state.gains), hidden)
    }

    /// One decoder step of each of several streams, x (rows, 1, dec_dim) (summed audio +
    /// token embeddings), row i continuing `states[i]`, each with its own delay: the decoder's
    /// matrices read once for all rows → final-norm hidden states (rows, 1, dec_dim).
    pub fn decode_rows(&self, states: &mut [&mut NetworkState], x: &Tensor) -> Result<Tensor> {
        let rows = states.len();
        let layers = states.first().map_or(0, |s| s.gains.len());
        let gains = (0..layers)
            .map(|i| {
                let each: Vec<&Tensor> = states.iter().map(|s| &s.gains[i]).collect();
                Tensor::cat(&each, 0)?.reshape((rows, 1, self.config.decoder.dim))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut decoders: Vec<&mut StackState> =
            states.iter_mut().map(|s| &mut s.decoder).collect();
        self.decoder
            .stack
            .forward_rows(x, &mut decoders, (layers > 0).then_some(&gains[..]))
    }

    /// Logits (…, vocab) of final-norm hidden states (…, dec_dim).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.decoder.logits(hidden)
    }

    /// The decoder's FFN gains of a stream (1 + scale per layer), for tests.
    pub fn gains<'a>(&self, state: &'a NetworkState) -> &'a [Tensor] {
        &state.gains
    }
}

impl RowDecoder for VoxtralRealtimeModel {
    type State = NetworkState;

    fn step_rows(&self, states: &mut [&mut NetworkState], x: &Tensor) -> Result<Tensor> {
        self.logits(&self.decode_rows(states, x)?)
    }
}
