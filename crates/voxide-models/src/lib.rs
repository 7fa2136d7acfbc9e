//! Model families of voxide.
//!
//! Each family lives in its own module (`config`, `model`, `tokenizer`, decoding) and is built
//! from the shared blocks in `voxide-nn`; families never import each other.

pub mod error;
pub mod qwen3_tts;
pub mod silero_vad;
pub mod tekken;
pub mod transcript;
pub mod voxtral_realtime;
pub mod whisper;

pub use error::{Error, Result};
pub use transcript::{Progress, Segment, Timings, Transcript};
