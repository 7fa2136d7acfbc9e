//! Model families of voxide.
//!
//! Each family lives in its own module (`config`, `model`, `tokenizer`, decoding) and is built
//! from the shared blocks in `voxide-nn`. Voxtral is composed from parts that already exist:
//! Whisper's audio encoder, and the Mistral stack (`mistral_stack`) that Voxtral Realtime's
//! encoder and decoder also run on.

pub mod batching;
pub mod error;
pub mod ggml;
mod mistral_stack;
pub mod qwen3_tts;
pub mod silero_vad;
pub mod tekken;
pub mod transcript;
pub mod voxtral;
pub mod voxtral_realtime;
pub mod whisper;

pub use error::{Error, Result};
pub use transcript::{clip_stretches, Progress, Segment, Timings, Transcript, Word};
