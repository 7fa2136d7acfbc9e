//! Runtime errors: one line each, naming what failed and what to do.

/// Why a model could not be found, loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model could not be located or fetched.
    #[error("{0}")]
    Resolve(String),
    /// The model files are invalid or inference failed.
    #[error(transparent)]
    Model(#[from] voxide_models::Error),
    /// The audio could not be used.
    #[error(transparent)]
    Audio(#[from] voxide_audio::AudioError),
    /// A request option is invalid.
    #[error("{0}")]
    InvalidRequest(String),
}

/// Result of runtime operations.
pub type Result<T> = std::result::Result<T, Error>;
