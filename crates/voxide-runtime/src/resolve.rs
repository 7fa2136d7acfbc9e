//! Model resolution: a local directory in Hugging Face layout, a whisper.cpp model file (legacy
//! ggml `.bin` or GGUF), or a hub id (`openai/whisper-tiny`) found in the standard Hugging Face
//! cache (`$HF_HOME/hub`) or downloaded into it.

use crate::error::{Error, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where a model came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A directory or a model file given by the user.
    Local(PathBuf),
    /// A hub repository, materialised in the cache snapshot directory.
    Hub {
        /// Repository id.
        id: String,
        /// Snapshot directory holding the files.
        dir: PathBuf,
    },
}

impl ModelSource {
    /// The directory holding the checkpoint files, or the single model file.
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::Local(path) | ModelSource::Hub { dir: path, .. } => path,
        }
    }
}

/// Files every checkpoint needs, then alternatives, then optional ones.
const REQUIRED: &[&str] = &["config.json"];
const WEIGHTS: &[&str] = &["model.safetensors", "model.safetensors.index.json"];
const TOKENIZER: &[&str] = &["tokenizer.json", "vocab.json"];
/// Mistral's native layout (Voxtral Realtime), fetched instead of the HF files when a repository
/// has both: it is all the engine needs, and half the download.
const MISTRAL: &[&str] = &["params.json", "consolidated.safetensors", "tekken.json"];
const OPTIONAL: &[&str] = &[
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "merges.txt",
    // Qwen3-TTS: the text tokenizer's added tokens and the codec.
    "tokenizer_config.json",
    "speech_tokenizer/config.json",
    "speech_tokenizer/model.safetensors",
];

fn looks_like_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !p.starts_with('.')
        })
}

/// Resolves `--model`: an existing directory is used as is, or the one ggml / GGUF file it
/// holds when it has no checkpoint; a ggml / GGUF file as is; `owner/name` is looked up in the
/// Hugging Face cache and downloaded when missing (unless `HF_HUB_OFFLINE=1`).
pub fn resolve_model(spec: &str) -> Result<ModelSource> {
    if spec.trim().is_empty() {
        return Err(Error::Resolve(
            "--model is empty: give a model directory, a whisper.cpp file or a hub id".into(),
        ));
    }
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(ModelSource::Local(
            single_model_file(path)?.unwrap_or_else(|| path.to_owned()),
        ));
    }
    if path.exists() {
        if is_ggml_file(path) {
            return Ok(ModelSource::Local(path.to_owned()));
        }
        return Err(Error::Resolve(format!(
            "--model {spec} is a file but not a whisper.cpp model (ggml .bin or GGUF); pass such a file, or the directory that holds config.json and model.safetensors (or params.json and consolidated.safetensors)"
        )));
    }
    if !looks_like_hub_id(spec) {
        return Err(Error::Resolve(format!(
            "model directory {spec} does not exist (and it is not a Hugging Face hub id such as openai/whisper-tiny)"
        )));
    }
    if let Some(dir) = cached_snapshot(spec) {
        return Ok(ModelSource::Hub {
            id: spec.into(),
            dir,
        });
    }
    if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1") {
        return Err(Error::Resolve(format!(
            "{spec} is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE=1 forbids downloading it; \
             unset HF_HUB_OFFLINE, or download it where the hub is reachable and pass its directory to --model",
            Cache::from_env().path().display()
        )));
    }
    download(spec).map(|dir| ModelSource::Hub {
        id: spec.into(),
        dir,
    })
}

/// Whether `path` starts with the magic of whisper.cpp's legacy ggml format or of GGUF.
fn is_ggml_file(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|_| &magic == b"lmgg" || &magic == b"GGUF")
}

/// The model file of a directory that holds no checkpoint (no config.json / params.json) but
/// one ggml or GGUF file; an error when it holds several.
fn single_model_file(dir: &Path) -> Result<Option<PathBuf>> {
    if ["config.json", "params.json"]
        .iter()
        .any(|f| dir.join(f).is_file())
    {
        return Ok(None);
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::Resolve(format!("cannot list {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_ggml_file(p))
        .collect();
    files.sort();
    match files.len() {
        0 | 1 => Ok(files.pop()),
        _ => Err(Error::Resolve(format!(
            "{} holds several model files ({}); pass one of them to --model",
            dir.display(),
            files
                .iter()
                .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The snapshot directory if the cache holds every file the model needs.
fn cached_snapshot(id: &str) -> Option<PathBuf> {
    let repo = Cache::from_env().repo(Repo::model(id.to_string()));
    if let Some(files) = MISTRAL
        .iter()
        .map(|n| repo.get(n))
        .collect::<Option<Vec<_>>>()
    {
        return files[0].parent().map(Path::to_owned);
    }
    let config = repo.get(REQUIRED[0])?;
    let dir = config.parent()?.to_owned();
    let has_any = |names: &[&str]| names.iter().any(|n| repo.get(n).is_some());
    (has_any(WEIGHTS) && has_any(TOKENIZER)).then_some(dir)
}

fn download(id: &str) -> Result<PathBuf> {
    let offline = |e: &dyn std::fmt::Display| {
        Error::Resolve(format!(
            "cannot download {id} from the Hugging Face hub ({e}); if this machine is offline, \
             download it elsewhere (`huggingface-cli download {id}`) and pass its directory to --model, \
             or copy it into the cache at {}",
            Cache::from_env().path().display()
        ))
    };
    let api = ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| offline(&e))?;
    let repo = api.model(id.to_string());
    if let Ok(params) = repo.get(MISTRAL[0]) {
        for name in &MISTRAL[1..] {
            repo.get(name).map_err(|e| offline(&e))?;
        }
        return Ok(params
            .parent()
            .expect("a downloaded file lives in a snapshot directory")
            .to_owned());
    }
    let config = repo.get(REQUIRED[0]).map_err(|e| offline(&e))?;
    let first_available = |names: &[&str]| names.iter().find_map(|n| repo.get(n).ok());
    let weights = first_available(WEIGHTS)
        .ok_or_else(|| Error::Resolve(format!("{id} on the hub has no model.safetensors")))?;
    if weights.ends_with("model.safetensors.index.json") {
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&weights).map_err(|e| offline(&e))?)
                .map_err(|e| offline(&e))?;
        let mut shards: Vec<&str> = index["weight_map"]
            .as_object()
            .map(|m| m.values().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        shards.sort_unstable();
        shards.dedup();
        for shard in shards {
            repo.get(shard).map_err(|e| offline(&e))?;
        }
    }
    first_available(TOKENIZER).ok_or_else(|| {
        Error::Resolve(format!(
            "{id} on the hub has no tokenizer.json or vocab.json"
        ))
    })?;
    for name in OPTIONAL {
        // Optional files: absence is fine.
        let _ = repo.get(name);
    }
    Ok(config
        .parent()
        .expect("a file in a snapshot directory")
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths_are_told_apart() {
        assert!(looks_like_hub_id("openai/whisper-tiny"));
        assert!(looks_like_hub_id("mistralai/Voxtral-Mini-3B-2507"));
        assert!(!looks_like_hub_id("./models/tiny"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("../x/y"));
        assert!(!looks_like_hub_id("tiny"));
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let err = resolve_model("./no/such/model-dir")
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
        let err = resolve_model("").unwrap_err().to_string();
        assert!(err.starts_with("--model is empty"), "{err}");
    }

    /// The Hugging Face cache is used offline: a cached snapshot resolves, an uncached id says
    /// what to do. (One test, because both set the process environment.)
    #[test]
    fn hub_ids_resolve_through_the_cache_offline() {
        let home = std::env::temp_dir().join(format!("voxide-hf-home-{}", std::process::id()));
        let repo = home.join("hub/models--voxide--tiny-random");
        let snapshot = repo.join("snapshots/0123abcd");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
        for name in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::write(snapshot.join(name), "{}").unwrap();
        }
        std::env::set_var("HF_HOME", &home);
        std::env::set_var("HF_HUB_OFFLINE", "1");
        let source = resolve_model("voxide/tiny-random").unwrap();
        assert_eq!(source.path(), snapshot.as_path());
        let err = resolve_model("openai/whisper-tiny")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not in the Hugging Face cache") && err.contains("HF_HUB_OFFLINE"),
            "{err}"
        );
        std::fs::remove_dir_all(&home).unwrap();
    }
}
