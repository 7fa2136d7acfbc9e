//! Errors of model loading and inference, each a one-line message for the user.

use std::path::{Path, PathBuf};

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required file is missing from the model directory.
    #[error("model directory {dir} has no {file}{hint}")]
    MissingFile {
        /// The model directory.
        dir: PathBuf,
        /// What is missing.
        file: String,
        /// How to fix it (may be empty).
        hint: String,
    },
    /// A file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file being written (a converted or quantized model) could not be.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A JSON file does not parse or lacks a field.
    #[error("invalid {path}: {message}")]
    InvalidJson {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The weights do not load: corrupt or truncated file, missing tensor, or a shape that does
    /// not match the configuration.
    #[error("cannot load weights from {path}: {message}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer files do not load.
    #[error("cannot load tokenizer from {path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A request the model cannot serve (prompt too long, ...).
    #[error("{0}")]
    InvalidRequest(String),
    /// A request field the model cannot take (`voice`, `language`), named so that an API can
    /// point at it.
    #[error("{message}")]
    InvalidField {
        field: &'static str,
        message: String,
    },
    /// The caller stopped the work (its progress callback returned `false`).
    #[error("cancelled")]
    Cancelled,
    /// A tensor operation failed during inference.
    #[error("inference failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// Result of model operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Reads and parses a JSON file into `T`, with file-named errors.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let json = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(json).map_err(|e| Error::InvalidJson {
        path: path.to_owned(),
        message: json_problem(&e),
    })
}

/// A parse error in a user's words: the field it is in, and "an object" where serde names the
/// Rust struct it expected ("expected struct CodecConfig with 6 elements").
fn json_problem(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let mut message = e.inner().to_string();
    if let Some(at) = message.find("expected struct ") {
        let end = message[at..]
            .find(" at line ")
            .map_or(message.len(), |n| at + n);
        message.replace_range(at..end, "expected an object");
    }
    match e.path().to_string().as_str() {
        "." => message,
        field => format!("`{field}`: {message}"),
    }
}

/// `dir/file`, or a missing-file error naming the directory.
pub(crate) fn require(dir: &Path, file: &str) -> Result<std::path::PathBuf> {
    let path = dir.join(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingFile {
            dir: dir.to_owned(),
            file: file.into(),
            hint: String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)] // only parsed
    struct Outer {
        inner: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        n: usize,
    }

    #[test]
    fn json_errors_name_the_field_and_no_rust_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let problem = |json: &str| {
            std::fs::write(&path, json).unwrap();
            match read_json::<Outer>(&path).unwrap_err() {
                Error::InvalidJson { message, .. } => message,
                e => panic!("{e}"),
            }
        };
        assert_eq!(
            problem(r#"{"inner": 5}"#),
            "`inner`: invalid type: integer `5`, expected an object at line 1 column 11"
        );
        assert!(problem(r#"{"inner": {"n": "x"}}"#).starts_with("`inner.n`: invalid type"));
        assert_eq!(
            problem("[]"),
            "invalid length 0, expected an object at line 1 column 2"
        );
    }
}
