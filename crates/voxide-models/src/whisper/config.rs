//! `config.json` and `generation_config.json` of a Hugging Face Whisper checkpoint.

use crate::error::{read_json, Error, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

/// Model hyper-parameters, mirroring transformers' `WhisperConfig` (names as in config.json).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Config {
    /// Vocabulary size: 51864 (.en), 51865 (v1/v2), 51866 (v3, turbo).
    pub vocab_size: usize,
    /// Mel bins: 80, or 128 for large-v3 and turbo.
    pub num_mel_bins: usize,
    /// Width of encoder and decoder.
    pub d_model: usize,
    /// Encoder blocks.
    pub encoder_layers: usize,
    /// Encoder heads.
    pub encoder_attention_heads: usize,
    /// Encoder MLP width.
    pub encoder_ffn_dim: usize,
    /// Decoder blocks.
    pub decoder_layers: usize,
    /// Decoder heads.
    pub decoder_attention_heads: usize,
    /// Decoder MLP width.
    pub decoder_ffn_dim: usize,
    /// Encoder positions: 1500 (30 s of audio after the stride-2 conv).
    pub max_source_positions: usize,
    /// Decoder positions: 448.
    pub max_target_positions: usize,
    /// Activation; Whisper uses the exact-erf "gelu".
    #[serde(default = "default_activation")]
    pub activation_function: String,
    /// Suppressed token ids (older checkpoints keep them here rather than in the generation config).
    #[serde(default)]
    pub suppress_tokens: Option<Vec<u32>>,
    /// Tokens suppressed at the first sampled position.
    #[serde(default)]
    pub begin_suppress_tokens: Option<Vec<u32>>,
}

fn default_activation() -> String {
    "gelu".into()
}

impl Config {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = read_json(path)?;
        config.validate().map_err(|message| Error::InvalidJson {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    pub(super) fn validate(&self) -> std::result::Result<(), String> {
        for (name, heads) in [
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("decoder_attention_heads", self.decoder_attention_heads),
        ] {
            if heads == 0 || !self.d_model.is_multiple_of(heads) {
                return Err(format!(
                    "d_model {} is not divisible by {name} {heads}",
                    self.d_model
                ));
            }
        }
        if !(51864..=51866).contains(&self.vocab_size) {
            return Err(format!(
                "vocab_size {} is not a Whisper vocabulary (51864, 51865 or 51866)",
                self.vocab_size
            ));
        }
        if self.activation_function != "gelu" {
            return Err(format!(
                "activation_function {:?} is not supported (Whisper uses \"gelu\")",
                self.activation_function
            ));
        }
        if self.max_source_positions * 2 != super::N_FRAMES {
            return Err(format!(
                "max_source_positions {} does not cover a 30 s window (1500 expected)",
                self.max_source_positions
            ));
        }
        Ok(())
    }

    /// Head width of the decoder (64 in every released size).
    pub fn head_dim(&self) -> usize {
        self.d_model / self.decoder_attention_heads
    }
}

/// The decoding-related part of `generation_config.json`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct GenerationConfig {
    /// Tokens never sampled (the non-speech symbol set).
    #[serde(default)]
    pub suppress_tokens: Option<Vec<u32>>,
    /// Tokens not sampled at the first position (space and end-of-text).
    #[serde(default)]
    pub begin_suppress_tokens: Option<Vec<u32>>,
    /// `<|xx|>` → id.
    #[serde(default)]
    pub lang_to_id: Option<HashMap<String, u32>>,
    /// Latest allowed first timestamp, in 20 ms steps (50 = 1.0 s).
    #[serde(default)]
    pub max_initial_timestamp_index: Option<usize>,
    /// `[layer, head]` pairs whose cross-attention aligns with time.
    #[serde(default)]
    pub alignment_heads: Option<Vec<[usize; 2]>>,
}

impl GenerationConfig {
    /// Reads `generation_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_json(path)
    }

    /// The `generation_config.json` of a directory, or the defaults where there is none.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        if path.is_file() {
            Self::from_file(&path)
        } else {
            Ok(Self::default())
        }
    }
}
