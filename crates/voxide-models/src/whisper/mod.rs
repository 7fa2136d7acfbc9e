//! Whisper (OpenAI): every size from tiny to large-v3 and turbo, configured by the checkpoint.
//!
//! Pipeline: log-mel (voxide-audio) → [`model::Encoder`] → [`model::Decoder`] with a preallocated
//! self-attention cache and per-window cross-attention K/V → [`decoding`] (openai-whisper's
//! logit rules, greedy and beam search) → [`transcribe`] (30 s windows, seek on timestamps,
//! temperature fallback) → [`tokenizer`]; [`timing`] aligns words to the audio.

pub mod batcher;
pub mod config;
pub mod convert;
pub mod decoding;
pub mod ggml;
pub mod model;
pub mod timing;
pub mod tokenizer;
pub mod transcribe;

pub use batcher::WindowBatcher;
pub use config::{Config, GenerationConfig};
pub use decoding::{DecodingOptions, DecodingResult, Suppress, Task};
pub use model::{DecoderState, Whisper};
pub use tokenizer::{SpecialTokens, Tokenizer};
pub use transcribe::{TranscribeOptions, WhisperPipeline};

pub use voxide_audio::{HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE};
