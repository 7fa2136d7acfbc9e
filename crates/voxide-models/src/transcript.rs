//! A transcription result common to every speech-to-text family; the front ends format it.

use serde::Serialize;

/// One timed stretch of text.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Segment {
    /// Index in the transcript.
    pub id: usize,
    /// Position (in 10 ms mel frames) of the window that produced it.
    pub seek: usize,
    /// Start, seconds.
    pub start: f64,
    /// End, seconds.
    pub end: f64,
    /// Text.
    pub text: String,
    /// Token ids of the segment (timestamps included).
    pub tokens: Vec<u32>,
    /// Sampling temperature of the window's accepted decode.
    pub temperature: f32,
    /// Mean log-probability per token of the window's decode.
    pub avg_logprob: f32,
    /// UTF-8 length / zlib-compressed length of the window's text.
    pub compression_ratio: f32,
    /// Probability that the window holds no speech.
    pub no_speech_prob: f32,
}

/// The result of transcribing one input.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Transcript {
    /// Language code (detected or requested).
    pub language: String,
    /// Length of the audio, seconds.
    pub duration: f64,
    /// Full text.
    pub text: String,
    /// Timed segments.
    pub segments: Vec<Segment>,
    /// Every generated token id in order, special tokens included, forced prompts excluded.
    pub token_ids: Vec<u32>,
}

/// Where the time of one transcription went.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Timings {
    /// Feature extraction, ms.
    pub mel_ms: f64,
    /// Encoder passes, ms.
    pub encoder_ms: f64,
    /// Decoding (decoder passes, logit rules, search), ms.
    pub decode_ms: f64,
    /// Decoder forward passes (one prefill per decode plus one per sampled token).
    pub decoder_calls: usize,
    /// Encoder passes (windows, language detection and fallbacks included).
    pub encoder_calls: usize,
}
