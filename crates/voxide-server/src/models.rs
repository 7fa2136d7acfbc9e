//! The models a server holds: each `--model` is loaded once, by the kind of its checkpoint
//! (Qwen3-TTS: text to speech; Whisper, Voxtral Realtime: speech to text), and served under an
//! id that requests name in their `model` field.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use voxide_audio::AudioInput;
use voxide_models::qwen3_tts::{ClonedVoice, ModelType, Synthesizer, VoiceReference};
use voxide_models::silero_vad::SileroVad;
use voxide_runtime::{
    clones_voices, load_model, resolve_model, Model, ModelSource, TranscribeRequest, Transcriber,
    WeightFormat,
};

/// One `--model` argument: `PATH`, `HUB_ID`, or `ID=PATH` / `ID=HUB_ID` to choose the id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    /// The id requests use; `None`: the directory's name (a hub id for hub models).
    pub id: Option<String>,
    /// A checkpoint directory or a Hugging Face hub id.
    pub source: String,
}

impl FromStr for ModelSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        // `ID=…` renames, unless the whole argument is an existing path (which may hold `=`).
        match s.split_once('=') {
            Some((id, source)) if !Path::new(s).exists() => {
                check_id(id)?;
                if source.is_empty() {
                    bail!("--model {s}: nothing after `=`; use --model ID=PATH");
                }
                Ok(Self {
                    id: Some(id.to_string()),
                    source: source.to_string(),
                })
            }
            _ if s.is_empty() => bail!("--model needs a checkpoint directory or a hub id"),
            _ => Ok(Self {
                id: None,
                source: s.to_string(),
            }),
        }
    }
}

impl ModelSpec {
    /// The id requests will use: the one given, else a local model's name (as resolving it
    /// names it), else the hub id — known without loading or downloading anything.
    pub fn served_id(&self) -> Result<String> {
        match &self.id {
            Some(id) => Ok(id.clone()),
            None if Path::new(&self.source).exists() => default_id(&resolve_model(&self.source)?),
            None => Ok(self.source.clone()),
        }
    }

    /// Refuses specs that two models would be served under the same id, before any loads
    /// (a real model takes minutes).
    pub fn check_ids(specs: &[ModelSpec]) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for spec in specs {
            let id = spec.served_id()?;
            if !seen.insert(id.clone()) {
                return Err(duplicate_id(&id, spec));
            }
        }
        Ok(())
    }
}

/// The error for a second model of an id.
fn duplicate_id(id: &str, spec: &ModelSpec) -> anyhow::Error {
    anyhow::anyhow!(
        "two models would be served as {id:?}; name one with --model ID={}",
        spec.source
    )
}

/// One `--voice` argument, `NAME=CLIP`: a voice cloned from the clip, which speech requests
/// to a Base (voice clone) model name as their `voice`; with a transcript of the clip it is
/// cloned in context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoiceSpec {
    pub name: String,
    pub clip: PathBuf,
    pub text: Option<String>,
}

impl FromStr for VoiceSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let Some((name, clip)) = s.split_once('=').filter(|(_, clip)| !clip.is_empty()) else {
            bail!("--voice {s}: give a name and a clip of the voice, --voice NAME=CLIP");
        };
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("--voice {s}: the name {name:?} must be a non-empty word without spaces");
        }
        Ok(Self {
            name: name.to_string(),
            clip: PathBuf::from(clip),
            text: None,
        })
    }
}

impl VoiceSpec {
    /// Refuses, before any model loads, two voices of one name and voices that no model
    /// would clone: where every model is a local checkpoint, their configs say whether one
    /// is a Base model (a hub model is known once resolved: [`Registry::clone_voice`]).
    pub fn check_before_loading(voices: &[VoiceSpec], models: &[ModelSpec]) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        for voice in voices {
            if !names.insert(voice.name.as_str()) {
                bail!("--voice {}: two voices of that name", voice.name);
            }
        }
        let Some(voice) = voices.first() else {
            return Ok(());
        };
        if !models.iter().all(|m| Path::new(&m.source).exists()) {
            return Ok(());
        }
        for model in models {
            let clones = resolve_model(&model.source)
                .and_then(|source| clones_voices(&source))
                .map_err(|e| anyhow::anyhow!("--model {}: {e}", model.source))?;
            if clones {
                return Ok(());
            }
        }
        Err(no_base_model(&voice.name))
    }
}

/// The error for a `--voice` that no served model clones.
fn no_base_model(voice: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "--voice {voice}: no Base (voice clone) Qwen3-TTS model is served to clone it with (e.g. Qwen/Qwen3-TTS-12Hz-0.6B-Base)"
    )
}

fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("model id {id:?} must be a non-empty name without spaces (--model ID=PATH)");
    }
    Ok(())
}

/// What a loaded model does.
#[derive(Clone)]
pub enum Engine {
    /// Speech to text (`/v1/audio/transcriptions`, `/v1/audio/translations`); Voxtral Mini
    /// 3B also chat (`/v1/chat/completions`).
    Transcriber(Arc<dyn Transcriber>),
    /// Text to speech (`/v1/audio/speech`).
    Synthesizer(Arc<Synthesizer>),
}

impl Engine {
    /// What it serves, by route: `transcription` (and `realtime` sessions), `translation`
    /// where the model translates, `chat` (Voxtral Mini 3B), `speech`. `/v1/models` lists
    /// them, so that a client (the web page) need not guess from an id.
    pub fn capabilities(&self) -> Vec<&'static str> {
        match self {
            Engine::Transcriber(t) => {
                let translate = TranscribeRequest {
                    translate: true,
                    ..TranscribeRequest::default()
                };
                let mut served = vec!["transcription"];
                if t.check(&translate).is_ok() {
                    served.push("translation");
                }
                if t.chat().is_some() {
                    served.push("chat");
                }
                served.push("realtime");
                served
            }
            Engine::Synthesizer(_) => vec!["speech"],
        }
    }

    /// In words, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Engine::Transcriber(t) if t.chat().is_some() => "speech-to-text and chat",
            Engine::Transcriber(_) => "speech-to-text",
            Engine::Synthesizer(_) => "text-to-speech",
        }
    }
}

/// A model as served.
#[derive(Clone)]
pub struct LoadedModel {
    /// The id requests name.
    pub id: String,
    /// Unix time of its loading (`created` in `/v1/models`).
    pub created: u64,
    /// The checkpoint directory.
    pub dir: std::path::PathBuf,
    /// The loaded model.
    pub engine: Engine,
    /// Base (voice clone) models: the voices cloned for it (`--voice`), by name.
    pub voices: BTreeMap<String, Arc<ClonedVoice>>,
}

/// The models of one server, in `--model` order, and the voice activity detector of its
/// realtime sessions; clones share the models.
#[derive(Clone, Default)]
pub struct Registry {
    models: Vec<Arc<LoadedModel>>,
    vad: Option<Arc<SileroVad>>,
}

impl Registry {
    /// No models yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves and loads `spec` (on the CPU; `precision` converts the weight matrices) and
    /// serves it under its id, which must be new.
    pub fn load(
        &mut self,
        spec: &ModelSpec,
        precision: Option<WeightFormat>,
    ) -> Result<&LoadedModel> {
        let id = spec.served_id()?;
        if self.get(&id).is_some() {
            return Err(duplicate_id(&id, spec));
        }
        let source = resolve_model(&spec.source)?;
        let dir = source.path();
        let device = candle_core::Device::Cpu;
        let engine = match load_model(&source, &device, precision)? {
            Model::Synthesizer(synthesizer) => Engine::Synthesizer(synthesizer),
            Model::Transcriber(transcriber) => Engine::Transcriber(transcriber),
        };
        self.add(id, dir, engine);
        Ok(self.models.last().expect("just added"))
    }

    fn add(&mut self, id: String, dir: &Path, engine: Engine) {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.models.push(Arc::new(LoadedModel {
            id,
            created,
            dir: dir.to_owned(),
            engine,
            voices: BTreeMap::new(),
        }));
    }

    /// Clones `voice` for every Base (voice clone) model served so far, from its clip mixed
    /// to mono at the model's rate; returns their ids. Before serving: the models are not
    /// shared yet.
    pub fn clone_voice(&mut self, voice: &VoiceSpec) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for model in &mut self.models {
            let Engine::Synthesizer(synthesizer) = &model.engine else {
                continue;
            };
            if synthesizer.model_type() != ModelType::Base {
                continue;
            }
            let input = AudioInput::File(voice.clip.clone());
            let cloned =
                VoiceReference::from_clip(&input, synthesizer.sample_rate(), voice.text.clone())
                    .and_then(|reference| synthesizer.clone_voice(&reference))
                    .map_err(|e| anyhow::anyhow!("--voice {}: {e}", voice.name))?;
            let model = Arc::get_mut(model).context("voices are cloned before serving")?;
            if model.voices.contains_key(&voice.name) {
                bail!("--voice {}: two voices of that name", voice.name);
            }
            model.voices.insert(voice.name.clone(), Arc::new(cloned));
            ids.push(model.id.clone());
        }
        if ids.is_empty() {
            return Err(no_base_model(&voice.name));
        }
        Ok(ids)
    }

    /// Decodes concurrent requests together, up to `max` a batch, in every model (Whisper:
    /// their windows; the Voxtrals: their decoder steps, realtime sessions' and chat requests'
    /// included; Qwen3-TTS: their frames); returns their ids. Before serving: the models are
    /// not shared yet.
    pub fn batch_concurrent_decodes(&mut self, max: usize) -> Result<Vec<String>> {
        const UNSHARED: &str = "batching is set before serving";
        let mut ids = Vec::new();
        for model in &mut self.models {
            let model = Arc::get_mut(model).context(UNSHARED)?;
            match &mut model.engine {
                Engine::Transcriber(transcriber) => {
                    Arc::get_mut(transcriber)
                        .context(UNSHARED)?
                        .batch_concurrent_decodes(max);
                }
                Engine::Synthesizer(synthesizer) => {
                    Arc::get_mut(synthesizer)
                        .context(UNSHARED)?
                        .batch_concurrent_frames(max);
                }
            }
            ids.push(model.id.clone());
        }
        Ok(ids)
    }

    /// The model served as `id`.
    pub fn get(&self, id: &str) -> Option<&Arc<LoadedModel>> {
        self.models.iter().find(|m| m.id == id)
    }

    /// Every model, in loading order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<LoadedModel>> {
        self.models.iter()
    }

    /// The ids served.
    pub fn ids(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.id.as_str()).collect()
    }

    /// No model at all.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Loads Silero VAD weights (ggml or ONNX) for server VAD in realtime sessions.
    pub fn load_vad(&mut self, path: &Path) -> Result<&SileroVad> {
        let vad = SileroVad::load(path)
            .map_err(|e| anyhow::anyhow!("--vad-model {}: {e}", path.display()))?;
        Ok(self.vad.insert(Arc::new(vad)))
    }

    /// The voice activity detector, when one is loaded.
    pub fn vad(&self) -> Option<&SileroVad> {
        self.vad.as_deref()
    }
}

/// A hub model's id as given; a directory's name otherwise.
fn default_id(source: &ModelSource) -> Result<String> {
    match source {
        ModelSource::Hub { id, .. } => Ok(id.clone()),
        ModelSource::Local(dir) => {
            let dir = dir
                .canonicalize()
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.display()))?;
            // A model file is named without its extension (ggml-base.en.bin → ggml-base.en).
            let name = if dir.is_file() {
                dir.file_stem()
            } else {
                dir.file_name()
            }
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
            check_id(&name).with_context(|| {
                format!(
                    "{} gives no usable model id; name it with --model ID={}",
                    dir.display(),
                    dir.display()
                )
            })?;
            Ok(name)
        }
    }
}

/// Qwen3-TTS checkpoints say `"model_type": "qwen3_tts"` in config.json; anything else is
/// left to the speech-to-text loader (which names what it does not support).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_take_an_optional_id() {
        let spec: ModelSpec = "whisper-1=openai/whisper-tiny".parse().unwrap();
        assert_eq!(spec.id.as_deref(), Some("whisper-1"));
        assert_eq!(spec.source, "openai/whisper-tiny");
        let spec: ModelSpec = "models/tiny".parse().unwrap();
        assert_eq!((spec.id, spec.source.as_str()), (None, "models/tiny"));
        assert!("=models/tiny".parse::<ModelSpec>().is_err());
        assert!("tiny=".parse::<ModelSpec>().is_err());
        assert!("my model=x".parse::<ModelSpec>().is_err());
    }
}
