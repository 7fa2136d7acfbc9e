//! voxide's runtime: finding a model (local directory or Hugging Face hub), loading it as a
//! shared [`Transcriber`], and formatting results. The CLI and the server are thin layers on
//! top of this crate.

pub mod error;
pub mod format;
pub mod resolve;
pub mod transcriber;

pub use error::{Error, Result};
pub use format::{render, render_with, OutputFormat, SubtitleOptions};
pub use resolve::{resolve_model, ModelSource};
pub use transcriber::{
    load_streaming, load_transcriber, load_voxtral, SpeechStream, TranscribeRequest, Transcriber,
    WeightFormat,
};
pub use voxide_models::{Progress, Segment, Timings, Transcript};
