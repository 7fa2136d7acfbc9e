//! Audio front end of voxide: decode any supported input, downmix, resample,
//! and compute Whisper's log-mel features.
//!
//! Stages (one module each):
//! * [`decode`]: file / bytes / stdin -> planar f32 PCM at the file's rate
//!   (WAV, FLAC, MP3, Ogg Vorbis, M4A, WebM and more via symphonia; Opus via
//!   `unsafe-libopus`), sample-exact with python-soundfile for WAV/FLAC;
//! * [`mod@resample`]: mono downmix and band-limited, delay-compensated
//!   resampling, whole or streamed ([`StreamResampler`]);
//! * [`g711`]: μ-law and A-law telephone samples to linear;
//! * [`stretch`]: speech faster or slower at the same pitch (WSOLA), streamed;
//! * [`load_mono`]: the runtime's one-call entry point;
//! * [`mel`]: openai-whisper's `log_mel_spectrogram`, Voxtral's fixed-max, streaming one, and
//!   qwen-tts' log-magnitude mel (the Qwen3-TTS speaker encoder's input);
//! * [`PcmStream`]: live 16 kHz PCM from a pipe (raw s16le or WAV);
//! * [`AudioWriter`]: WAV, s16le, FLAC or Ogg Opus output, written chunk by chunk (speech
//!   synthesis).
//!
//! All errors are [`AudioError`]; nothing here panics on bad input.
#![deny(missing_docs)]

pub mod decode;
mod encode;
mod error;
pub mod g711;
mod load;
pub mod mel;
mod pcm_stream;
pub mod resample;
pub mod stretch;

pub use decode::{decode_bytes, decode_file, decode_stdin, inside_decoder, DecodedAudio};
pub use encode::{AudioOutFormat, AudioWriter};
pub use error::AudioError;
pub use load::{load_mono, mono_at_rate, AudioInput};
pub use mel::{
    mel_filters, slaney_mel_filters, LogMagnitudeMel, LogMel, MelGeometry, MelStream, MelWindows,
    WhisperMel, HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE,
};
pub use pcm_stream::{PcmFormat, PcmStream};
pub use resample::{downmix_mono, resample, resampled_len, StreamResampler};
