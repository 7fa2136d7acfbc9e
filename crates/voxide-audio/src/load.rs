//! The runtime's entry point: any input -> mono f32 at the model's rate.

use std::path::PathBuf;

use crate::decode::{
    decode_file, decode_owned, decode_stdin, DecodedAudio, MEMORY_NAME, STDIN_NAME,
};
use crate::resample::{downmix_mono, resample};
use crate::AudioError;

/// Where audio comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioInput {
    /// A file on disk (any supported format; the extension is ignored).
    File(PathBuf),
    /// All of standard input (the CLI's `-`).
    Stdin,
    /// An encoded file already in memory (e.g. an HTTP upload).
    Bytes(Vec<u8>),
}

impl AudioInput {
    /// `-` means standard input; anything else is a file path.
    pub fn from_arg(arg: &str) -> Self {
        if arg == "-" {
            AudioInput::Stdin
        } else {
            AudioInput::File(PathBuf::from(arg))
        }
    }

    /// The name used in error messages: the path, `<stdin>` or `<memory>`.
    pub fn name(&self) -> String {
        match self {
            AudioInput::File(p) => p.display().to_string(),
            AudioInput::Stdin => STDIN_NAME.to_string(),
            AudioInput::Bytes(_) => MEMORY_NAME.to_string(),
        }
    }

    /// Whether the input can be read, checked without reading it: a file must open and be
    /// no directory (the error [`AudioInput::decode`] would give); standard input and bytes
    /// pass. A front end calls it before loading a model of several GB, so that a mistyped
    /// path fails at once.
    pub fn check_readable(&self) -> Result<(), AudioError> {
        let AudioInput::File(path) = self else {
            return Ok(());
        };
        let unreadable = |source| AudioError::Unreadable {
            name: self.name(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(unreadable)?;
        // Opening a directory succeeds on Unix; reading from it fails as `decode` would.
        std::io::Read::read(&mut file, &mut [0u8; 1]).map_err(unreadable)?;
        Ok(())
    }

    /// Decode to planar PCM at the input's own rate.
    pub fn decode(&self) -> Result<DecodedAudio, AudioError> {
        match self {
            AudioInput::File(p) => decode_file(p),
            AudioInput::Stdin => decode_stdin(),
            AudioInput::Bytes(b) => decode_owned(b.clone(), MEMORY_NAME),
        }
    }
}

/// Decode `input`, average its channels, and resample to `target_rate` Hz.
///
/// Returns `round(frames * target_rate / file_rate)` samples. Errors (each a
/// one-line message naming the input): unreadable, not audio, corrupt,
/// unsupported codec, zero-length audio, and audio whose samples are all
/// exactly 0.0 ([`AudioError::DigitalSilence`]) since there is nothing to
/// transcribe.
pub fn load_mono(input: &AudioInput, target_rate: u32) -> Result<Vec<f32>, AudioError> {
    let audio = input.decode()?;
    mono_at_rate(audio, target_rate, &input.name())
}

/// The part of [`load_mono`] after decoding: downmix, silence check,
/// resample. `name` is used in error messages.
pub fn mono_at_rate(
    audio: DecodedAudio,
    target_rate: u32,
    name: &str,
) -> Result<Vec<f32>, AudioError> {
    if audio.n_frames() == 0 {
        return Err(AudioError::Empty {
            name: name.to_string(),
        });
    }
    if audio.channels.iter().all(|c| c.iter().all(|&v| v == 0.0)) {
        return Err(AudioError::DigitalSilence {
            name: name.to_string(),
        });
    }
    // Long inputs are tens of MB: move rather than copy where nothing changes.
    let rate = audio.sample_rate;
    let mono = match audio.channels.len() {
        1 => audio.channels.into_iter().next().expect("one channel"),
        _ => downmix_mono(&audio.channels),
    };
    if rate == target_rate {
        return Ok(mono);
    }
    resample(&mono, rate, target_rate)
}
