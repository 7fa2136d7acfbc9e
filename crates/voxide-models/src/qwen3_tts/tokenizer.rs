//! Qwen2's byte-level BPE text tokenizer (Qwen3-TTS checkpoints ship `vocab.json`,
//! `merges.txt` and `tokenizer_config.json`; `tokenizer.json` is used when present).
//!
//! Without `tokenizer.json` the tokenizer is assembled exactly as transformers' converter
//! builds `Qwen2TokenizerFast`: NFC normalisation, Qwen2's split regex (isolated pieces), byte
//! level without prefix space, BPE without unknown token, and the added tokens of
//! `tokenizer_config.json`'s `added_tokens_decoder` at their own ids (entered into the BPE
//! vocabulary, so that gaps between them keep every id).

use crate::error::{Error, Result};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Qwen2's pre-tokenizer pattern (transformers `Qwen2Tokenizer.PRETOKENIZE_REGEX`).
const PRETOKENIZE_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The text tokenizer of a Qwen3-TTS checkpoint.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .finish()
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, or `vocab.json` + `merges.txt` + `tokenizer_config.json`, from
    /// a checkpoint directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let (text, path) = if json.is_file() {
            (read(&json)?, json)
        } else {
            let vocab = dir.join("vocab.json");
            let merges = dir.join("merges.txt");
            let config = dir.join("tokenizer_config.json");
            for f in [&vocab, &merges, &config] {
                if !f.is_file() {
                    return Err(Error::MissingFile {
                        dir: dir.to_owned(),
                        file: "tokenizer.json".into(),
                        hint: " (nor vocab.json + merges.txt + tokenizer_config.json)".into(),
                    });
                }
            }
            (assemble(&vocab, &merges, &config)?, vocab)
        };
        let inner = tokenizers::Tokenizer::from_str(&text).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Self { inner, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token ids of `text`; added tokens (`<|im_start|>`, …) written in it are single ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| self.error(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids` (invalid UTF-8 becomes U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| self.error(e.to_string()))
    }

    /// Id of an added or vocabulary token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Whether the vocabulary is the 256 bytes alone (besides the added tokens): the
    /// byte-level tokenizer of the random-weight checkpoints that `tools/random_weights.py`
    /// writes without Qwen's ranks, where every UTF-8 byte is a token, so that a text takes
    /// ~4 times the real model's positions.
    pub fn bytes_only(&self) -> bool {
        let added = self.inner.get_added_tokens_decoder().len();
        self.inner.get_vocab_size(false).saturating_sub(added) <= 256
    }

    fn error(&self, message: String) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            message,
        }
    }
}

/// The `tokenizer.json` transformers' converter writes for `Qwen2TokenizerFast`.
fn assemble(vocab: &Path, merges: &Path, config: &Path) -> Result<String> {
    let invalid = |path: &Path, message: String| Error::InvalidJson {
        path: path.to_owned(),
        message,
    };
    let mut vocab_json: Value =
        serde_json::from_str(&read(vocab)?).map_err(|e| invalid(vocab, e.to_string()))?;
    let Some(vocab_map) = vocab_json.as_object_mut() else {
        return Err(invalid(vocab, "not a token → id map".into()));
    };
    let merges_list: Vec<Value> = read(merges)?
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .map(|l| Value::String(l.to_string()))
        .collect();
    let config_json: Value =
        serde_json::from_str(&read(config)?).map_err(|e| invalid(config, e.to_string()))?;
    let empty = Map::new();
    let decoder = config_json
        .get("added_tokens_decoder")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut added = Vec::new();
    for (id, token) in decoder {
        let id: u32 = id
            .parse()
            .map_err(|_| invalid(config, format!("added token id {id:?} is not a number")))?;
        let flag =
            |name: &str, default: bool| token.get(name).and_then(Value::as_bool).unwrap_or(default);
        let content = token
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(config, format!("added token {id} has no content")))?;
        // The model's vocabulary holds each added token at its id: the `tokenizers` crate
        // numbers added tokens it does not find there consecutively after the vocabulary,
        // which would shift every id after a gap.
        vocab_map
            .entry(content.to_string())
            .or_insert_with(|| Value::from(id));
        added.push(json!({
            "id": id,
            "content": content,
            "single_word": flag("single_word", false),
            "lstrip": flag("lstrip", false),
            "rstrip": flag("rstrip", false),
            "normalized": flag("normalized", false),
            "special": flag("special", true),
        }));
    }
    added.sort_by_key(|t| t["id"].as_u64());
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PRETOKENIZE_REGEX}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab_json, "merges": merges_list
        }
    });
    Ok(tokenizer.to_string())
}
