//! Configuration of Voxtral Mini 3B (2507), read from either published layout: Mistral's
//! `params.json` (next to `consolidated.safetensors`) or Hugging Face's `config.json` (next to
//! `model*.safetensors`). Both become one [`Config`].

use crate::error::{read_json, require};
use crate::whisper::model::EncoderConfig;
use crate::{Error, Result};
use serde::Deserialize;
use std::path::Path;

use crate::mistral_stack::HfStack;
pub use crate::mistral_stack::{Layout, StackConfig};

/// The whole model.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub layout: Layout,
    /// Whisper-style audio encoder (large-v3 shape: 1280 wide, 32 layers, 20 heads).
    pub audio: EncoderConfig,
    /// Llama text decoder (3072 wide, 30 layers, GQA 32/8, full attention).
    pub text: StackConfig,
    pub vocab_size: usize,
    /// Longest prompt plus generated tokens the decoder takes.
    pub max_positions: usize,
    /// Encoder frames stacked into one projector input (4).
    pub downsample_factor: usize,
    /// The `[AUDIO]` placeholder whose rows the projected audio replaces (24).
    pub audio_token_id: u32,
}

// --- params.json (Mistral) ---------------------------------------------------------------

#[derive(Deserialize)]
struct Params {
    dim: usize,
    n_layers: usize,
    head_dim: usize,
    hidden_dim: usize,
    n_heads: usize,
    n_kv_heads: usize,
    rope_theta: f64,
    norm_eps: f64,
    vocab_size: usize,
    #[serde(default)]
    max_seq_len: Option<usize>,
    #[serde(default)]
    ada_rms_norm_t_cond: bool,
    multimodal: Multimodal,
}

#[derive(Deserialize)]
struct Multimodal {
    whisper_model_args: WhisperModelArgs,
}

#[derive(Deserialize)]
struct WhisperModelArgs {
    encoder_args: EncoderArgs,
    #[serde(default)]
    downsample_args: Option<DownsampleArgs>,
}

#[derive(Deserialize)]
struct EncoderArgs {
    dim: usize,
    n_layers: usize,
    hidden_dim: usize,
    n_heads: usize,
    #[serde(default)]
    max_source_positions: Option<usize>,
    audio_encoding_args: AudioEncodingArgs,
}

#[derive(Deserialize)]
struct AudioEncodingArgs {
    num_mel_bins: usize,
}

#[derive(Deserialize)]
struct DownsampleArgs {
    downsample_factor: usize,
}

// --- config.json (HF) --------------------------------------------------------------------

#[derive(Deserialize)]
struct HfConfig {
    model_type: String,
    audio_config: HfStack,
    text_config: HfStack,
    #[serde(default)]
    audio_token_id: Option<u32>,
}

/// transformers' `VoxtralConfig` default for the placeholder id.
const AUDIO_TOKEN_ID: u32 = 24;

/// Encoder output frames per 30 s window (Whisper's 1500).
const SOURCE_POSITIONS: usize = 1500;

impl Config {
    /// Reads the configuration of the checkpoint in `dir`: `params.json` when the directory
    /// has `consolidated.safetensors`, else `config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let (path, config) = if dir.join("consolidated.safetensors").exists() {
            let path = require(dir, "params.json")?;
            let config = Self::from_params(read_json(&path)?);
            (path, config)
        } else {
            let path = require(dir, "config.json")?;
            let config = Self::from_hf(read_json(&path)?);
            (path, config)
        };
        let invalid = |message: String| Error::InvalidJson {
            path: path.clone(),
            message,
        };
        let config = config.map_err(invalid)?;
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    fn from_params(p: Params) -> std::result::Result<Self, String> {
        if p.ada_rms_norm_t_cond {
            return Err(
                "this is Voxtral Realtime (ada_rms_norm_t_cond), not Voxtral Mini 3B".into(),
            );
        }
        let w = p.multimodal.whisper_model_args;
        let e = &w.encoder_args;
        Ok(Self {
            layout: Layout::Mistral,
            audio: EncoderConfig {
                num_mel_bins: e.audio_encoding_args.num_mel_bins,
                d_model: e.dim,
                layers: e.n_layers,
                heads: e.n_heads,
                ffn_dim: e.hidden_dim,
                max_source_positions: e.max_source_positions.unwrap_or(SOURCE_POSITIONS),
            },
            text: StackConfig {
                dim: p.dim,
                n_layers: p.n_layers,
                n_heads: p.n_heads,
                n_kv_heads: p.n_kv_heads,
                head_dim: p.head_dim,
                hidden_dim: p.hidden_dim,
                rope_theta: p.rope_theta,
                norm_eps: p.norm_eps,
                sliding_window: None,
            },
            vocab_size: p.vocab_size,
            // transformers' converter reads `max_seq_len`, defaulting to 131 072.
            max_positions: p.max_seq_len.unwrap_or(131_072),
            downsample_factor: w.downsample_args.map_or(4, |d| d.downsample_factor),
            audio_token_id: AUDIO_TOKEN_ID,
        })
    }

    fn from_hf(hf: HfConfig) -> std::result::Result<Self, String> {
        if hf.model_type != "voxtral" {
            return Err(format!("model_type {:?} is not voxtral", hf.model_type));
        }
        let (a, t) = (&hf.audio_config, &hf.text_config);
        if t.sliding_window.is_some() {
            return Err("text_config.sliding_window: Voxtral Mini attends to all positions".into());
        }
        if a.hidden_size == 0 || a.intermediate_size % a.hidden_size != 0 {
            return Err(format!(
                "audio_config.intermediate_size {} is not a multiple of hidden_size {} \
                 (transformers stacks intermediate_size / hidden_size frames per audio token)",
                a.intermediate_size, a.hidden_size
            ));
        }
        Ok(Self {
            layout: Layout::Hf,
            audio: EncoderConfig {
                num_mel_bins: a.num_mel_bins.unwrap_or(128),
                d_model: a.hidden_size,
                layers: a.num_hidden_layers,
                heads: a.num_attention_heads,
                ffn_dim: a.intermediate_size,
                max_source_positions: a.max_source_positions.unwrap_or(SOURCE_POSITIONS),
            },
            text: t.stack_config("text_config", None)?,
            vocab_size: t.vocab_size.unwrap_or(131_072),
            max_positions: t.max_position_embeddings.unwrap_or(131_072),
            downsample_factor: a.intermediate_size / a.hidden_size,
            audio_token_id: hf.audio_token_id.unwrap_or(AUDIO_TOKEN_ID),
        })
    }

    fn validate(&self) -> std::result::Result<(), String> {
        self.text.validate("text decoder")?;
        let a = &self.audio;
        let dims = [
            ("num_mel_bins", a.num_mel_bins),
            ("width", a.d_model),
            ("layers", a.layers),
            ("heads", a.heads),
            ("hidden", a.ffn_dim),
        ];
        if let Some((name, _)) = dims.iter().find(|(_, v)| *v == 0) {
            return Err(format!("audio encoder: {name} is 0"));
        }
        if !a.d_model.is_multiple_of(a.heads) {
            return Err(format!(
                "audio encoder: width {} is not divisible by its {} heads",
                a.d_model, a.heads
            ));
        }
        // The encoder takes whole 30 s windows: 3000 mel frames, halved by its second conv.
        if a.max_source_positions != SOURCE_POSITIONS {
            return Err(format!(
                "audio encoder: max_source_positions {} does not cover a 30 s window \
                 ({SOURCE_POSITIONS} expected)",
                a.max_source_positions
            ));
        }
        if self.downsample_factor == 0
            || !a
                .max_source_positions
                .is_multiple_of(self.downsample_factor)
        {
            return Err(format!(
                "{} encoder frames per window cannot be stacked in groups of {}",
                a.max_source_positions, self.downsample_factor
            ));
        }
        if self.vocab_size == 0 || self.audio_token_id as usize >= self.vocab_size {
            return Err(format!(
                "audio token {} outside a vocabulary of {}",
                self.audio_token_id, self.vocab_size
            ));
        }
        Ok(())
    }

    /// Audio tokens per 30 s window (375).
    pub fn tokens_per_window(&self) -> usize {
        self.audio.max_source_positions / self.downsample_factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(layout: &str, file: &str) -> serde_json::Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/voxtral")
            .join(layout)
            .join(file);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn from_hf(json: serde_json::Value) -> std::result::Result<Config, String> {
        let config = Config::from_hf(serde_json::from_value(json).unwrap())?;
        config.validate().map(|_| config)
    }

    fn from_params(json: serde_json::Value) -> std::result::Result<Config, String> {
        let config = Config::from_params(serde_json::from_value(json).unwrap())?;
        config.validate().map(|_| config)
    }

    /// Both layouts of one checkpoint describe the same model.
    #[test]
    fn both_layouts_read_the_same_shapes() {
        let hf = from_hf(fixture("tiny-random-hf", "config.json")).unwrap();
        let mistral = from_params(fixture("tiny-random-mistral", "params.json")).unwrap();
        assert_eq!(
            Config {
                layout: Layout::Hf,
                ..mistral.clone()
            },
            hf
        );
        assert_eq!(hf.tokens_per_window(), 375);
        assert_eq!(hf.text.sliding_window, None);
        assert_eq!(hf.downsample_factor, 4);
    }

    /// Configurations the model cannot be built from are refused with the reason.
    #[test]
    fn inconsistent_configs_are_refused() {
        let mut hf = fixture("tiny-random-hf", "config.json");
        hf["audio_config"]["intermediate_size"] = 250.into();
        assert!(from_hf(hf)
            .unwrap_err()
            .contains("not a multiple of hidden_size"));
        let mut hf = fixture("tiny-random-hf", "config.json");
        hf["model_type"] = "voxtral_realtime".into();
        assert!(from_hf(hf).unwrap_err().contains("not voxtral"));
        let mut hf = fixture("tiny-random-hf", "config.json");
        hf["text_config"]["num_key_value_heads"] = 3.into();
        assert!(from_hf(hf).unwrap_err().contains("key/value heads"));
        let mut params = fixture("tiny-random-mistral", "params.json");
        params["ada_rms_norm_t_cond"] = true.into();
        assert!(from_params(params).unwrap_err().contains("Realtime"));
        let mut params = fixture("tiny-random-mistral", "params.json");
        params["multimodal"]["whisper_model_args"]["downsample_args"]["downsample_factor"] =
            7.into();
        assert!(from_params(params).unwrap_err().contains("groups of 7"));
        let mut params = fixture("tiny-random-mistral", "params.json");
        params["multimodal"]["whisper_model_args"]["encoder_args"]["max_source_positions"] =
            0.into();
        assert!(from_params(params)
            .unwrap_err()
            .contains("max_source_positions 0 does not cover a 30 s window"));
        let mut params = fixture("tiny-random-mistral", "params.json");
        params["rope_theta"] = (-1.0).into();
        let e = from_params(params).unwrap_err();
        assert!(e.contains("rope_theta -1 is not a positive number"), "{e}");
        let mut hf = fixture("tiny-random-hf", "config.json");
        hf["audio_config"]["num_attention_heads"] = 0.into();
        let e = from_hf(hf).unwrap_err();
        assert_eq!(e, "audio encoder: heads is 0");
    }
}
