//! `config.json` of a Qwen3-TTS checkpoint (qwen-tts `Qwen3TTSConfig`), field for field.
//!
//! The Python defaults are placeholders (20 layers, 32 code groups, codec EOS 4198): every
//! value is read from the checkpoint; only fields the real configs may omit have defaults.

use super::speaker_encoder::SpeakerEncoderConfig;
use crate::error::{read_json, Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use voxide_nn::transformer::LayerConfig;

/// Which conditioning a checkpoint was trained for (`tts_model_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelType {
    /// Voice clone from a reference clip (has a speaker encoder).
    Base,
    /// Preset speakers (`spk_id`), optional instruction.
    CustomVoice,
    /// A voice described by an instruction; no speaker slot.
    VoiceDesign,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub talker_config: TalkerConfig,
    pub tts_model_type: ModelType,
    #[serde(default)]
    pub tts_model_size: Option<String>,
    #[serde(default)]
    pub tokenizer_type: Option<String>,
    pub im_start_token_id: u32,
    pub im_end_token_id: u32,
    pub tts_pad_token_id: u32,
    pub tts_bos_token_id: u32,
    pub tts_eos_token_id: u32,
    /// The x-vector network (Base checkpoints; qwen-tts writes defaults into every config).
    #[serde(default)]
    pub speaker_encoder_config: Option<SpeakerEncoderConfig>,
}

/// A dialect flag of `spk_is_dialect`: `false`, or the language key that replaces the
/// requested language for that speaker.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Dialect {
    None(bool),
    Language(String),
}

/// The fields the talker and the code predictor configs share: a Qwen3 decoder's shape.
#[derive(Clone, Debug, Deserialize)]
pub struct DecoderDims {
    /// Talker: the codec vocabulary (codes 0..2048, then control, language and speaker ids);
    /// code predictor: entries per acoustic codebook (2048).
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub hidden_act: candle_nn::Activation,
    #[serde(default)]
    pub attention_bias: bool,
    pub num_code_groups: usize,
    /// Sliding-window attention (qwen-tts: every talker layer; the code predictor's layers from
    /// `max_window_layers` on). No Qwen3-TTS checkpoint uses it; a config that does is refused.
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default = "default_max_window_layers")]
    pub max_window_layers: usize,
}

/// qwen-tts' `Qwen3TTSTalkerCodePredictorConfig` default.
fn default_max_window_layers() -> usize {
    28
}

/// The code predictor's head width where its config names none: qwen-tts'
/// `Qwen3TTSTalkerCodePredictorConfig` default (the talker's is hidden / heads).
const CODE_PREDICTOR_HEAD_DIM: usize = 128;

#[derive(Clone, Debug, Deserialize)]
pub struct TalkerConfig {
    #[serde(flatten)]
    pub dims: DecoderDims,
    pub text_hidden_size: usize,
    pub text_vocab_size: usize,
    /// Positions the talker was trained for: a request's prompt plus its frames must fit.
    pub max_position_embeddings: usize,
    pub codec_eos_token_id: u32,
    pub codec_think_id: u32,
    pub codec_nothink_id: u32,
    pub codec_think_bos_id: u32,
    pub codec_think_eos_id: u32,
    pub codec_pad_id: u32,
    pub codec_bos_id: u32,
    #[serde(default)]
    pub spk_id: BTreeMap<String, u32>,
    #[serde(default)]
    pub spk_is_dialect: BTreeMap<String, Dialect>,
    #[serde(default)]
    pub codec_language_id: BTreeMap<String, u32>,
    pub code_predictor_config: CodePredictorConfig,
}

#[derive(Clone, Debug, Deserialize)]
pub struct CodePredictorConfig {
    #[serde(flatten)]
    pub dims: DecoderDims,
}

impl DecoderDims {
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// One layer of the stack: Qwen3's (per-head q/k norm, no MLP bias).
    pub fn layer(&self) -> LayerConfig {
        LayerConfig {
            dim: self.hidden_size,
            hidden_dim: self.intermediate_size,
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim(),
            norm_eps: self.rms_norm_eps,
            attention_bias: [self.attention_bias; 4],
            down_bias: false,
            qk_norm: true,
            layer_scale: false,
        }
    }
}

impl Config {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut config: Config = read_json(path)?;
        let predictor = &mut config.talker_config.code_predictor_config.dims;
        predictor.head_dim.get_or_insert(CODE_PREDICTOR_HEAD_DIM);
        config.validate().map_err(|message| Error::InvalidJson {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// Shapes the model code relies on; the message says what is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.talker_config;
        let (td, p) = (&t.dims, &t.code_predictor_config.dims);
        let bad = Err;
        if td.num_code_groups < 2 || p.num_code_groups != td.num_code_groups {
            return bad(format!(
                "talker has {} code groups, code predictor {}",
                td.num_code_groups, p.num_code_groups
            ));
        }
        for (what, heads, kv, hidden) in [
            (
                "talker",
                td.num_attention_heads,
                td.num_key_value_heads,
                td.hidden_size,
            ),
            (
                "code predictor",
                p.num_attention_heads,
                p.num_key_value_heads,
                p.hidden_size,
            ),
        ] {
            if heads == 0 || kv == 0 || heads % kv != 0 || hidden == 0 {
                return bad(format!(
                    "{what}: {heads} heads over {kv} key/value heads, hidden {hidden}"
                ));
            }
        }
        for (what, dims, sliding) in [
            ("talker", td, td.use_sliding_window),
            (
                "code predictor",
                p,
                p.use_sliding_window && p.max_window_layers < p.num_hidden_layers,
            ),
        ] {
            // qwen-tts applies `hidden_act` in every decoder MLP; voxide's are SwiGLU.
            if dims.hidden_act != candle_nn::Activation::Silu {
                return bad(format!(
                    "{what}: hidden_act {:?} is not supported (Qwen3-TTS decoders use silu)",
                    dims.hidden_act
                ));
            }
            if sliding {
                return bad(format!(
                    "{what}: sliding-window attention (use_sliding_window) is not supported"
                ));
            }
        }
        let codec_ids = [
            t.codec_eos_token_id,
            t.codec_think_id,
            t.codec_nothink_id,
            t.codec_think_bos_id,
            t.codec_think_eos_id,
            t.codec_pad_id,
            t.codec_bos_id,
        ];
        let all = codec_ids
            .iter()
            .chain(t.spk_id.values())
            .chain(t.codec_language_id.values());
        if let Some(id) = all.into_iter().find(|&&id| id as usize >= td.vocab_size) {
            return bad(format!(
                "codec id {id} outside the vocabulary of {}",
                td.vocab_size
            ));
        }
        if self.tts_model_type == ModelType::Base {
            match &self.speaker_encoder_config {
                None => return bad("a Base model needs speaker_encoder_config".into()),
                Some(s) if s.enc_dim != td.hidden_size => {
                    return bad(format!(
                        "speaker embedding of {} values for a talker of width {}",
                        s.enc_dim, td.hidden_size
                    ))
                }
                Some(s) => s.validate()?,
            }
        }
        if p.vocab_size > td.vocab_size {
            return bad(format!(
                "codebook of {} entries exceeds the codec vocabulary {}",
                p.vocab_size, td.vocab_size
            ));
        }
        let text_ids = [
            self.im_start_token_id,
            self.im_end_token_id,
            self.tts_pad_token_id,
            self.tts_bos_token_id,
            self.tts_eos_token_id,
        ];
        if let Some(id) = text_ids
            .iter()
            .find(|&&id| id as usize >= t.text_vocab_size)
        {
            return bad(format!(
                "text id {id} outside the text vocabulary of {}",
                t.text_vocab_size
            ));
        }
        Ok(())
    }

    /// Checks what a request asks of this checkpoint's variant: a preset voice (CustomVoice
    /// needs one of `spk_id`), a reference clip to clone (Base needs one; the others take
    /// none), or neither (VoiceDesign describes the voice in its instruction). From
    /// config.json alone, so that a front end refuses a request before the weights load.
    pub fn check_voice(&self, voice: Option<&str>, reference_clip: bool) -> Result<()> {
        let model_type = self.tts_model_type;
        let voices = || list(self.talker_config.spk_id.keys().cloned().collect());
        if reference_clip && model_type != ModelType::Base {
            return Err(Error::InvalidRequest(format!(
                "this {model_type:?} model cannot clone a voice from a reference clip (a Base model can); its voices: {}",
                voices()
            )));
        }
        let message = match (model_type, voice) {
            (ModelType::CustomVoice, Some(name)) => return self.speaker_id(name).map(drop),
            (ModelType::VoiceDesign, None) => return Ok(()),
            (ModelType::Base, None) if reference_clip => return Ok(()),
            (ModelType::Base, None) => {
                return Err(Error::InvalidRequest(
                    "this Base (voice clone) model needs a reference clip of the voice".into(),
                ))
            }
            (ModelType::CustomVoice, None) => {
                format!("this CustomVoice model needs a voice: {}", voices())
            }
            (ModelType::VoiceDesign, Some(_)) => "this VoiceDesign model has no preset voices; \
                 describe the voice with an instruction"
                .into(),
            (ModelType::Base, Some(_)) => {
                "this Base model has no preset voices; give a reference clip to clone".into()
            }
        };
        Err(Error::InvalidField {
            field: "voice",
            message,
        })
    }

    /// The codec id of the preset speaker `name` (any case).
    pub fn speaker_id(&self, name: &str) -> Result<u32> {
        let ids = &self.talker_config.spk_id;
        ids.get(&name.to_lowercase())
            .copied()
            .ok_or_else(|| Error::InvalidField {
                field: "voice",
                message: if ids.is_empty() {
                    format!("unknown voice {name:?}; this model has no preset voices")
                } else {
                    let voices = list(ids.keys().cloned().collect());
                    format!("unknown voice {name:?}; this model has: {voices}")
                },
            })
    }

    /// The codec id of `language` (a key of `codec_language_id`, any case); `None` for auto
    /// (no language, or "auto").
    pub fn language_id(&self, language: Option<&str>) -> Result<Option<u32>> {
        let Some(lang) = language.filter(|l| !l.eq_ignore_ascii_case("auto")) else {
            return Ok(None);
        };
        let id = self
            .talker_config
            .codec_language_id
            .get(&lang.to_lowercase());
        id.copied().map(Some).ok_or_else(|| Error::InvalidField {
            field: "language",
            message: format!(
                "unknown language {lang:?}; this model has: auto, {}",
                self.languages().join(", ")
            ),
        })
    }

    /// Languages besides auto, sorted (dialects are spoken through their preset speakers).
    pub fn languages(&self) -> Vec<String> {
        let ids = &self.talker_config.codec_language_id;
        ids.keys()
            .filter(|k| !k.contains("dialect"))
            .cloned()
            .collect()
    }
}

/// Names for a message: "none", or the names joined.
fn list(names: Vec<String>) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// The committed CustomVoice fixture's config.json with `edit` applied, read as voxide
    /// reads a checkpoint's.
    fn read_edited(edit: impl FnOnce(&mut Value)) -> Result<Config> {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/qwen3-tts/tiny-random/config.json");
        let mut v: Value = serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
        edit(&mut v);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        Config::from_file(&path)
    }

    /// Each variant takes the voice its conditioning was trained for and refuses the others;
    /// names and languages in any case, "auto" as no language.
    #[test]
    fn each_variant_takes_its_own_kind_of_voice() {
        let mut config = read_edited(|_| {}).unwrap();
        let voice = |config: &Config, voice: Option<&str>, clip: bool| {
            config
                .check_voice(voice, clip)
                .map_err(|e| e.to_string())
                .err()
                .unwrap_or_default()
        };
        assert_eq!(config.tts_model_type, ModelType::CustomVoice);
        assert_eq!(voice(&config, Some("Tester"), false), "");
        assert!(voice(&config, Some("nobody"), false).contains("has: dylan, tester"));
        assert!(voice(&config, None, false).contains("needs a voice: dylan, tester"));
        assert!(voice(&config, Some("tester"), true).contains("cannot clone"));
        config.tts_model_type = ModelType::VoiceDesign;
        assert_eq!(voice(&config, None, false), "");
        assert!(voice(&config, Some("tester"), false).contains("describe the voice"));
        assert!(voice(&config, None, true).contains("cannot clone"));
        config.tts_model_type = ModelType::Base;
        assert_eq!(voice(&config, None, true), "");
        assert!(voice(&config, None, false).contains("needs a reference clip"));
        assert!(voice(&config, Some("tester"), true).contains("give a reference clip"));

        let english = config.talker_config.codec_language_id["english"];
        assert_eq!(config.language_id(Some("English")).unwrap(), Some(english));
        assert_eq!(config.language_id(Some("AUTO")).unwrap(), None);
        assert_eq!(config.language_id(None).unwrap(), None);
        let err = config.language_id(Some("klingon")).unwrap_err().to_string();
        assert!(err.contains("this model has: auto, "), "{err}");
    }

    /// Head widths as qwen-tts takes them: the config's, else hidden / heads for the talker
    /// and 128 for the code predictor (its config class's default).
    #[test]
    fn head_widths_default_as_qwen_tts_does() {
        let config = read_edited(|_| {}).unwrap();
        let t = &config.talker_config;
        assert_eq!(t.dims.head_dim(), 16);
        assert_eq!(t.code_predictor_config.dims.head_dim(), 16);
        let config = read_edited(|v| {
            let talker = &mut v["talker_config"];
            talker.as_object_mut().unwrap().remove("head_dim");
            let predictor = talker["code_predictor_config"].as_object_mut().unwrap();
            predictor.remove("head_dim");
        })
        .unwrap();
        let t = &config.talker_config;
        assert_eq!(
            t.dims.head_dim(),
            t.dims.hidden_size / t.dims.num_attention_heads
        );
        assert_eq!(t.code_predictor_config.dims.head_dim(), 128);
    }

    /// What voxide's decoders do not implement is refused by name instead of run otherwise:
    /// another MLP activation, sliding-window attention.
    #[test]
    fn unsupported_decoder_settings_are_refused() {
        let refused = |edit: &dyn Fn(&mut Value), what: &str| {
            let err = read_edited(edit).unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
        };
        refused(
            &|v| v["talker_config"]["hidden_act"] = json!("gelu"),
            "talker: hidden_act",
        );
        refused(
            &|v| v["talker_config"]["code_predictor_config"]["hidden_act"] = json!("relu"),
            "code predictor: hidden_act",
        );
        refused(
            &|v| v["talker_config"]["use_sliding_window"] = json!(true),
            "talker: sliding-window",
        );
        let predictor_window = |layers: usize| {
            move |v: &mut Value| {
                let p = &mut v["talker_config"]["code_predictor_config"];
                p["use_sliding_window"] = json!(true);
                p["max_window_layers"] = json!(layers);
            }
        };
        refused(&predictor_window(1), "code predictor: sliding-window");
        // From layer 28 on, as qwen-tts' default: no layer of a 2-layer predictor slides.
        read_edited(|v| predictor_window(28)(v)).unwrap();
    }
}
