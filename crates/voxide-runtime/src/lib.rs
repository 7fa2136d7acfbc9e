//! voxide's runtime: finding a model (local directory or Hugging Face hub), loading it as a
//! shared [`Transcriber`] or [`Synthesizer`](voxide_models::qwen3_tts::Synthesizer), and
//! formatting results. The CLI and the server are thin layers on
//! top of this crate.
//!
//! ```no_run
//! use voxide_runtime::{load_transcriber, resolve_model, TranscribeRequest};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let source = resolve_model("openai/whisper-tiny")?;
//! let model = load_transcriber(&source, &candle_core::Device::Cpu, None)?;
//! let input = voxide_audio::AudioInput::from_arg("talk.wav");
//! let samples = voxide_audio::load_mono(&input, model.sample_rate())?;
//! // The closure hears of each window decoded; `false` cancels.
//! let (transcript, timings) =
//!     model.transcribe(&samples, &TranscribeRequest::default(), &mut |_progress| true)?;
//! // openai-whisper's long-form options: the first minute and 2:00–2:30, the prompt kept.
//! let request = TranscribeRequest {
//!     prompt: Some("Voxide, Whisper".into()),
//!     carry_initial_prompt: true,
//!     clip_timestamps: vec![0.0, 60.0, 120.0, 150.0],
//!     ..TranscribeRequest::default()
//! };
//! let (clipped, _) = model.transcribe(&samples, &request, &mut |_| true)?;
//! // faster-whisper's batched pipeline: the speech Silero finds, in 30 s chunks, 8 at a time.
//! let vad = voxide_models::silero_vad::SileroVad::load("silero_vad_v6.onnx".as_ref())?;
//! let batched = TranscribeRequest {
//!     batch_size: Some(8),
//!     ..TranscribeRequest::default()
//! };
//! let params = voxide_runtime::request_vad_params(model.as_ref(), &batched);
//! let (fast, _) = voxide_runtime::transcribe_speech(
//!     model.as_ref(),
//!     &vad,
//!     &params,
//!     &samples,
//!     &batched,
//!     &mut |_| true,
//! )?;
//! # Ok(())
//! # }
//! ```

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
pub use vad::{request_vad_params, transcribe_speech, transcribe_stretches, vad_params};
pub use voxide_models::{Progress, Segment, Timings, Transcript};
