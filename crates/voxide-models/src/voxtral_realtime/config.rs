//! Configuration of Voxtral Mini 4B Realtime, read from either published layout:
//! Mistral's `params.json` (next to `consolidated.safetensors`) or Hugging Face's
//! `config.json` (next to `model.safetensors`). Both become one [`Config`].

use crate::error::{read_json, require};
use crate::{Error, Result};
use serde::Deserialize;
use std::path::Path;

use crate::mistral_stack::HfStack;
pub use crate::mistral_stack::{Layout, StackConfig};

/// The whole model.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub layout: Layout,
    /// Audio encoder (1280 wide, 32 layers, window 750 frames).
    pub encoder: StackConfig,
    /// Text decoder (3072 wide, 26 layers, GQA 32/8, window 8192 positions).
    pub decoder: StackConfig,
    pub vocab_size: usize,
    pub num_mel_bins: usize,
    /// Encoder frames stacked into one adapter input (4).
    pub downsample_factor: usize,
    /// Width of the delay-conditioning bottleneck (32).
    pub t_cond_dim: usize,
    /// Fixed maximum of the log-mel clamp (1.5).
    pub global_log_mel_max: f32,
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
    sliding_window: Option<usize>,
    #[serde(default)]
    tied_embeddings: Option<bool>,
    #[serde(default)]
    ada_rms_norm_t_cond: bool,
    #[serde(default)]
    ada_rms_norm_t_cond_dim: Option<usize>,
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
    /// Some files keep the audio arguments here rather than inside `encoder_args`.
    #[serde(default)]
    audio_encoding_args: Option<AudioEncodingArgs>,
}

#[derive(Deserialize)]
struct EncoderArgs {
    dim: usize,
    n_layers: usize,
    head_dim: usize,
    hidden_dim: usize,
    n_heads: usize,
    #[serde(default)]
    n_kv_heads: Option<usize>,
    rope_theta: f64,
    norm_eps: f64,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    audio_encoding_args: Option<AudioEncodingArgs>,
}

#[derive(Deserialize)]
struct AudioEncodingArgs {
    num_mel_bins: usize,
    #[serde(default)]
    global_log_mel_max: Option<f32>,
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
    #[serde(default = "default_downsample")]
    downsample_factor: usize,
}

fn default_downsample() -> usize {
    4
}

/// The feature extractor's settings: `preprocessor_config.json` holds them at its top level,
/// `processor_config.json` (what transformers 5 saves) under `feature_extractor`.
#[derive(Deserialize)]
struct HfPreprocessor {
    #[serde(default)]
    global_log_mel_max: Option<f32>,
    #[serde(default)]
    feature_extractor: Option<Box<HfPreprocessor>>,
}

impl HfPreprocessor {
    fn global_log_mel_max(&self) -> Option<f32> {
        self.global_log_mel_max.or_else(|| {
            self.feature_extractor
                .as_ref()
                .and_then(|f| f.global_log_mel_max())
        })
    }
}

/// The checkpoint's `global_log_mel_max` from the first of its processor files that names it.
fn hf_global_log_mel_max(dir: &Path) -> Result<Option<f32>> {
    for name in ["preprocessor_config.json", "processor_config.json"] {
        let path = dir.join(name);
        if path.exists() {
            if let Some(max) = read_json::<HfPreprocessor>(&path)?.global_log_mel_max() {
                return Ok(Some(max));
            }
        }
    }
    Ok(None)
}

/// transformers hard-codes the ada-norm bottleneck at 32.
const HF_T_COND_DIM: usize = 32;

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
            let config = Self::from_hf(read_json(&path)?, hf_global_log_mel_max(dir)?);
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
        let w = p.multimodal.whisper_model_args;
        let audio = w
            .encoder_args
            .audio_encoding_args
            .as_ref()
            .or(w.audio_encoding_args.as_ref())
            .ok_or("no audio_encoding_args")?;
        if p.tied_embeddings == Some(false) {
            return Err("Voxtral Realtime ties its output head to the embeddings".into());
        }
        if !p.ada_rms_norm_t_cond {
            return Err("not a Voxtral Realtime checkpoint (no ada_rms_norm_t_cond)".into());
        }
        let e = &w.encoder_args;
        Ok(Self {
            layout: Layout::Mistral,
            encoder: StackConfig {
                dim: e.dim,
                n_layers: e.n_layers,
                n_heads: e.n_heads,
                n_kv_heads: e.n_kv_heads.unwrap_or(e.n_heads),
                head_dim: e.head_dim,
                hidden_dim: e.hidden_dim,
                rope_theta: e.rope_theta,
                norm_eps: e.norm_eps,
                sliding_window: Some(e.sliding_window.unwrap_or(750)),
            },
            decoder: StackConfig {
                dim: p.dim,
                n_layers: p.n_layers,
                n_heads: p.n_heads,
                n_kv_heads: p.n_kv_heads,
                head_dim: p.head_dim,
                hidden_dim: p.hidden_dim,
                rope_theta: p.rope_theta,
                norm_eps: p.norm_eps,
                sliding_window: Some(p.sliding_window.unwrap_or(8192)),
            },
            vocab_size: p.vocab_size,
            num_mel_bins: audio.num_mel_bins,
            downsample_factor: w.downsample_args.map_or(4, |d| d.downsample_factor),
            t_cond_dim: p.ada_rms_norm_t_cond_dim.unwrap_or(32),
            global_log_mel_max: audio.global_log_mel_max.unwrap_or(1.5),
        })
    }

    fn from_hf(hf: HfConfig, global_log_mel_max: Option<f32>) -> std::result::Result<Self, String> {
        if hf.model_type != "voxtral_realtime" {
            return Err(format!(
                "model_type {:?} is not voxtral_realtime",
                hf.model_type
            ));
        }
        let stack = |s: &HfStack, what: &str, window: usize| {
            s.stack_config(what, Some(s.sliding_window.unwrap_or(window)))
        };
        Ok(Self {
            layout: Layout::Hf,
            encoder: stack(&hf.audio_config, "audio_config", 750)?,
            decoder: stack(&hf.text_config, "text_config", 8192)?,
            vocab_size: hf.text_config.vocab_size.unwrap_or(131_072),
            num_mel_bins: hf.audio_config.num_mel_bins.unwrap_or(128),
            downsample_factor: hf.downsample_factor,
            t_cond_dim: HF_T_COND_DIM,
            global_log_mel_max: global_log_mel_max.unwrap_or(1.5),
        })
    }

    fn validate(&self) -> std::result::Result<(), String> {
        self.encoder.validate("encoder")?;
        self.decoder.validate("decoder")?;
        if self.vocab_size == 0 || self.num_mel_bins == 0 || self.downsample_factor == 0 {
            return Err("vocab_size, num_mel_bins and downsample_factor must be positive".into());
        }
        Ok(())
    }
}
