//! voxide's runtime: finding a model (local directory or Hugging Face hub), loading it as a
//! shared [`Transcriber`] or [`Synthesizer`](voxide_models::qwen3_tts::Synthesizer), and
//! formatting results. The CLI and the server are thin layers on
//! top of this crate.

pub mod error;
pub mod format;
pub mod load;
pub mod resolve;
pub mod transcriber;
pub mod vad;

pub use error::{Error, Result};
pub use format::{render, render_with, txt_lines, OutputFormat, SubtitleOptions};
pub use load::{
    clones_voices, load_model, load_streaming, load_synthesizer, load_transcriber, load_voxtral,
    Model,
};
pub use resolve::{resolve_model, ModelSource};
pub use transcriber::{SpeechStream, TranscribeRequest, Transcriber, WeightFormat};
pub use vad::{transcribe_speech, transcribe_stretches, vad_params};
pub use voxide_models::{Progress, Segment, Timings, Transcript};
