//! Loading a model by its checkpoint's kind (`model_type` of config.json, or Mistral's
//! params.json), and refusing, in one line, a checkpoint that cannot do what was asked.

use crate::error::{Error, Result};
use crate::resolve::ModelSource;
use crate::transcriber::{Transcriber, WeightFormat};
use candle_core::Device;
use std::path::Path;
use std::sync::Arc;
use voxide_models::qwen3_tts::Synthesizer;
use voxide_models::voxtral::Voxtral;
use voxide_models::voxtral_realtime::VoxtralRealtime;
use voxide_models::whisper::WhisperPipeline;

/// What kind of checkpoint a directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Whisper,
    /// A whisper.cpp model file (legacy ggml or GGUF).
    WhisperGgml,
    VoxtralRealtime,
    Voxtral,
    Qwen3Tts,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Whisper | Family::WhisperGgml => "a Whisper model",
            Family::VoxtralRealtime => "Voxtral Mini 4B Realtime",
            Family::Voxtral => "Voxtral Mini 3B",
            Family::Qwen3Tts => "Qwen3-TTS",
        }
    }
}

fn family(dir: &Path) -> Result<Family> {
    // resolve_model passes files only when they carry the ggml or GGUF magic.
    if dir.is_file() {
        return Ok(Family::WhisperGgml);
    }
    // Mistral's native layout: consolidated.safetensors + params.json.
    if dir.join("consolidated.safetensors").is_file() {
        let params = dir.join("params.json");
        let json = read_json(&params)?;
        return if json["ada_rms_norm_t_cond"].as_bool() == Some(true) {
            Ok(Family::VoxtralRealtime)
        } else if json["multimodal"]["whisper_model_args"].is_object() {
            Ok(Family::Voxtral)
        } else {
            Err(Error::Resolve(format!(
                "{}: this Mistral checkpoint is not supported (supported: Voxtral Mini 3B, Voxtral Mini 4B Realtime)",
                params.display()
            )))
        };
    }
    let config = dir.join("config.json");
    if !config.exists() && dir.join("params.json").is_file() {
        return Err(Error::Resolve(format!(
            "{}: params.json without consolidated.safetensors (the weights of Mistral's layout)",
            dir.display()
        )));
    }
    let json = read_json(&config)?;
    match json["model_type"].as_str() {
        Some("whisper") => Ok(Family::Whisper),
        Some("voxtral_realtime") => Ok(Family::VoxtralRealtime),
        Some("voxtral") => Ok(Family::Voxtral),
        Some("qwen3_tts") => Ok(Family::Qwen3Tts),
        Some(other) => Err(Error::Resolve(format!(
            "{}: model_type {other:?} is not supported yet (supported: whisper, voxtral, voxtral_realtime, qwen3_tts)",
            config.display()
        ))),
        None => Err(Error::Resolve(format!(
            "{}: no model_type field",
            config.display()
        ))),
    }
}

/// Whether the checkpoint at `source` clones voices (a Base Qwen3-TTS model), read from its
/// config alone: a server checks its `--voice` flags before loading anything.
pub fn clones_voices(source: &ModelSource) -> Result<bool> {
    let dir = source.path();
    Ok(family(dir)? == Family::Qwen3Tts
        && voxide_models::qwen3_tts::Config::from_file(&dir.join("config.json"))?.tts_model_type
            == voxide_models::qwen3_tts::ModelType::Base)
}

/// The error for a text-to-speech checkpoint given where speech is to be transcribed.
fn speaks_only(dir: &Path) -> Error {
    Error::Resolve(format!(
        "{} is {}, a text-to-speech model: use `voxide speak`",
        dir.display(),
        Family::Qwen3Tts.name()
    ))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Resolve(format!("{} is not readable: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Resolve(format!("invalid {}: {e}", path.display())))
}

/// Loads the speech-to-text model in `source` by its checkpoint's kind. `weights` sets how
/// the weight matrices are stored (default: the checkpoint's precision).
pub fn load_transcriber(
    source: &ModelSource,
    device: &Device,
    weights: Option<WeightFormat>,
) -> Result<Box<dyn Transcriber>> {
    let dir = source.path();
    transcriber_of(family(dir)?, dir, device, weights)
}

/// The speech-to-text model of `family` in `dir`.
fn transcriber_of(
    family: Family,
    dir: &Path,
    device: &Device,
    weights: Option<WeightFormat>,
) -> Result<Box<dyn Transcriber>> {
    Ok(match family {
        Family::Whisper => Box::new(WhisperPipeline::from_dir(dir, device, weights)?),
        Family::WhisperGgml => Box::new(WhisperPipeline::from_ggml(dir, device, weights)?),
        Family::VoxtralRealtime => Box::new(VoxtralRealtime::from_dir(dir, device, weights)?),
        Family::Voxtral => Box::new(Voxtral::from_dir(dir, device, weights)?),
        Family::Qwen3Tts => return Err(speaks_only(dir)),
    })
}

/// Checks that `dir` holds a `wanted` checkpoint; another kind is refused in a line naming
/// it: `which` says what that kind does not do and what to use instead.
fn require(dir: &Path, wanted: Family, which: &str) -> Result<()> {
    match family(dir)? {
        found if found == wanted => Ok(()),
        Family::Qwen3Tts => Err(speaks_only(dir)),
        other => Err(Error::Resolve(format!(
            "{} is {}, {which}",
            dir.display(),
            other.name()
        ))),
    }
}

/// Loads a model that answers questions about audio (Voxtral Mini 3B); other kinds are an
/// error.
pub fn load_voxtral(
    source: &ModelSource,
    device: &Device,
    weights: Option<WeightFormat>,
) -> Result<Voxtral> {
    let dir = source.path();
    require(
        dir,
        Family::Voxtral,
        "which only transcribes; `voxide ask` needs Voxtral Mini 3B (mistralai/Voxtral-Mini-3B-2507)",
    )?;
    Ok(Voxtral::from_dir(dir, device, weights)?)
}

/// Loads a streaming model (Voxtral Realtime); other kinds are an error.
pub fn load_streaming(
    source: &ModelSource,
    device: &Device,
    weights: Option<WeightFormat>,
) -> Result<VoxtralRealtime> {
    let dir = source.path();
    require(
        dir,
        Family::VoxtralRealtime,
        "which does not stream; use `voxide transcribe`, or a Voxtral Realtime model",
    )?;
    Ok(VoxtralRealtime::from_dir(dir, device, weights)?)
}

/// Loads a text-to-speech model (Qwen3-TTS); a speech-to-text checkpoint is an error.
pub fn load_synthesizer(
    source: &ModelSource,
    device: &Device,
    weights: Option<WeightFormat>,
) -> Result<Synthesizer> {
    let dir = source.path();
    require(
        dir,
        Family::Qwen3Tts,
        "a speech-to-text model: use `voxide transcribe`; `voxide speak` needs Qwen3-TTS (e.g. Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice)",
    )?;
    Ok(Synthesizer::from_dir(dir, device, weights)?)
}

/// A loaded checkpoint of either direction, shared by the requests it serves.
pub enum Model {
    Transcriber(Arc<dyn Transcriber>),
    Synthesizer(Arc<Synthesizer>),
}

/// Loads whatever `source` holds: speech to text or text to speech.
pub fn load_model(
    source: &ModelSource,
    device: &Device,
    weights: Option<WeightFormat>,
) -> Result<Model> {
    // The kind read once, then loaded as that kind.
    let dir = source.path();
    Ok(match family(dir)? {
        Family::Qwen3Tts => {
            Model::Synthesizer(Arc::new(Synthesizer::from_dir(dir, device, weights)?))
        }
        stt => Model::Transcriber(Arc::from(transcriber_of(stt, dir, device, weights)?)),
    })
}
