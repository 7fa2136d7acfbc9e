//! Qwen3-TTS 12 Hz (specs/qwen3-tts.md): text → 16 codes per 80 ms frame → 24 kHz audio.
//!
//! - `config`: the checkpoint's `config.json` (variant, talker, code predictor, special ids);
//! - `talker`: the talker and code predictor networks (Qwen3 layers from `voxide-nn`);
//! - `prompt`: the dual-track prompt for preset voices, instructions and speaker embeddings;
//! - `generate`: the frame loop with qwen-tts' sampling and stopping rules;
//! - `codec`: the 12 Hz speech tokenizer's decoder, frames → 24 kHz samples, incremental;
//! - `codec_encoder`: its encoder (Mimi), a reference clip → frames of codes (voice clone);
//! - `speaker_encoder`: ECAPA-TDNN, a reference clip → x-vector (voice clone);
//! - `tokenizer`: Qwen2's BPE text tokenizer;
//! - `synthesizer`: text → PCM chunks for one request, on a shared loaded checkpoint.
//!
//! Proven against the official `qwen-tts` package on seeded random weights
//! (`tools/reference/qwen3_tts_fixtures.py`).

pub mod codec;
pub mod codec_encoder;
pub mod config;
pub mod generate;
pub mod prefix_cache;
pub mod prompt;
pub mod speaker_encoder;
pub mod synthesizer;
pub mod talker;
pub mod text_parts;
pub mod tokenizer;

pub use config::{Config, ModelType};
pub use generate::{generate, Generated, GenerationParams, Stop};
pub use prefix_cache::PrefixCache;
pub use prompt::{Prompt, PromptRequest, Reference, Voice};
pub use speaker_encoder::SpeakerEncoder;
pub use synthesizer::{ClonedVoice, SpeechRequest, SpeechStats, Synthesizer, VoiceReference};
pub use talker::Talker;
pub use text_parts::{text_parts, DEFAULT_PART_CHARS};

use crate::error::{require, Error, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::path::Path;
use voxide_nn::linear::WeightFormat;
use voxide_nn::weights::SafetensorsFiles;

/// A loaded Qwen3-TTS checkpoint (talker and code predictor, and the speaker encoder of Base
/// checkpoints); requests keep their own state.
#[derive(Clone, Debug)]
pub struct Qwen3Tts {
    config: Config,
    talker: Talker,
    speaker_encoder: Option<SpeakerEncoder>,
}

impl Qwen3Tts {
    /// Loads `config.json` and `model.safetensors` from a checkpoint directory; matrices stay
    /// in the checkpoint's precision unless `format` says otherwise (int8: quantized per row at
    /// load), norms and biases are f32.
    pub fn from_dir(dir: &Path, device: &Device, format: Option<WeightFormat>) -> Result<Self> {
        let config = Config::from_file(&require(dir, "config.json")?)?;
        let weights = require(dir, "model.safetensors")?;
        let weights_error = |e: candle_core::Error| Error::Weights {
            path: weights.clone(),
            message: e.to_string().lines().next().unwrap_or_default().to_string(),
        };
        let tensors =
            SafetensorsFiles::open(std::slice::from_ref(&weights)).map_err(weights_error)?;
        let dtype = tensors
            .dtype("talker.codec_head.weight")
            .unwrap_or(DType::F32);
        let t = &config.talker_config;
        let text_embedding = tensors
            .row_table(
                "talker.model.text_embedding.weight",
                (t.text_vocab_size, t.text_hidden_size),
            )
            .map_err(weights_error)?;
        let vb = VarBuilder::from_backend(Box::new(tensors), dtype, device.clone());
        let speaker_encoder = match (config.tts_model_type, &config.speaker_encoder_config) {
            (ModelType::Base, Some(cfg)) => {
                Some(SpeakerEncoder::load(vb.clone(), cfg).map_err(weights_error)?)
            }
            _ => None,
        };
        let talker = Talker::load(vb, &config.talker_config, text_embedding, format)
            .map_err(weights_error)?;
        Ok(Self {
            config,
            talker,
            speaker_encoder,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn talker(&self) -> &Talker {
        &self.talker
    }

    /// The x-vector network of a Base checkpoint.
    pub fn speaker_encoder(&self) -> Option<&SpeakerEncoder> {
        self.speaker_encoder.as_ref()
    }
}
