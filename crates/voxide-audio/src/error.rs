//! The one error type of this crate.
//!
//! Every message is a single line that starts with the name of the input (a
//! file path, `<stdin>` or `<memory>`) so that a CLI can print it as is.

use std::io;

/// Everything that can go wrong while turning an input into samples.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AudioError {
    /// The input could not be opened or read (missing file, permissions, I/O).
    #[error("{name}: cannot read: {source}")]
    Unreadable {
        /// Input name (path, `<stdin>` or `<memory>`).
        name: String,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The bytes are not in any audio format we recognise (e.g. a text file
    /// named `.wav`).
    #[error("{name}: not an audio file (no known audio format signature)")]
    NotAudio {
        /// Input name.
        name: String,
    },
    /// The container or codec data is damaged or cut short.
    #[error("{name}: corrupt or truncated audio data: {detail}")]
    Corrupt {
        /// Input name.
        name: String,
        /// What was wrong, in a few words.
        detail: String,
    },
    /// A recognised container holding a codec we cannot decode.
    #[error("{name}: unsupported codec: {codec}")]
    UnsupportedCodec {
        /// Input name.
        name: String,
        /// The codec, named as precisely as the container allows.
        codec: String,
    },
    /// The input decodes to zero samples (includes zero-byte files).
    #[error("{name}: contains no audio (zero length)")]
    Empty {
        /// Input name.
        name: String,
    },
    /// Every decoded sample is exactly 0.0.
    #[error("{name}: contains only digital silence; nothing to transcribe")]
    DigitalSilence {
        /// Input name.
        name: String,
    },
    /// A sample-rate conversion was asked for with a zero rate.
    #[error("invalid sample rate conversion: {from} Hz -> {to} Hz")]
    InvalidRate {
        /// Source rate in Hz.
        from: u32,
        /// Target rate in Hz.
        to: u32,
    },
    /// A live PCM stream (stdin) is malformed: wrong rate or format, truncated.
    #[error("stdin: {0}")]
    Stream(String),
}

impl AudioError {
    /// The input name the error refers to, if it refers to one.
    pub fn input_name(&self) -> Option<&str> {
        match self {
            AudioError::Unreadable { name, .. }
            | AudioError::NotAudio { name }
            | AudioError::Corrupt { name, .. }
            | AudioError::UnsupportedCodec { name, .. }
            | AudioError::Empty { name }
            | AudioError::DigitalSilence { name } => Some(name),
            AudioError::InvalidRate { .. } | AudioError::Stream(_) => None,
        }
    }
}
