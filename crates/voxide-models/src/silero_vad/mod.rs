//! Silero VAD v6 (snakers4/silero-vad): voice activity detection on 16 kHz audio, one speech
//! probability per 512-sample window (32 ms), and speech segments from them.
//!
//! - [`model`]: the network in plain f32 loops (~310 k parameters, far faster than real time
//!   on one core), loaded from whisper.cpp's ggml file or an ONNX file; [`SileroVad`] holds
//!   the weights, [`VadState`] one stream's LSTM state and context.
//! - [`segments`]: the silero-vad package's `get_speech_timestamps` on the probabilities.
//! - [`turns`]: turns of a live stream (OpenAI Realtime's `server_vad`).
//! - [`chunks`]: the speech joined for transcription and its times mapped back
//!   (faster-whisper's `vad_filter`).
//!
//! Only the 16 kHz branch: the available checkpoints (faster-whisper's `silero_vad_v6.onnx`,
//! whisper.cpp's `ggml-silero-v6.2.0.bin`) hold no 8 kHz weights.

pub mod chunks;
mod ggml;
pub mod model;
mod onnx;
pub mod segments;
pub mod turns;

pub use chunks::{merge_into_stretches, SpeechChunks};
pub use model::{SileroVad, VadState};
pub use segments::{speech_segments, SpeechSegment, VadParams};
pub use turns::{TurnDetector, TurnEvent, TurnParams};

/// The only sample rate of the model.
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples per window (32 ms).
pub const WINDOW: usize = 512;
/// Samples of the previous window prepended to each window.
pub const CONTEXT: usize = 64;

/// A weight tensor as read from a file: PyTorch shape, f32 values in C order.
struct RawTensor {
    dims: Vec<usize>,
    data: Vec<f32>,
}

/// Speech segments of 16 kHz `samples`: probabilities of every window from a fresh stream,
/// then [`speech_segments`].
pub fn detect_speech(
    vad: &SileroVad,
    samples: &[f32],
    params: &VadParams,
) -> crate::Result<Vec<SpeechSegment>> {
    Ok(speech_segments(
        &vad.probabilities(samples)?,
        samples.len(),
        params,
    ))
}
