//! Voxtral Mini 4B Realtime (Mistral, 2602): streaming speech-to-text, one decoder step per
//! 80 ms of audio.
//!
//! * [`config`]: `params.json` (Mistral layout) or `config.json` (HF layout) → [`Config`];
//! * [`model`]: the network (causal conv stem, sliding-window encoder, adapter, delay-
//!   conditioned decoder with tied head), built from `voxide-nn` blocks;
//! * [`stream`]: the incremental engine ([`RealtimeStream`]); offline transcription is one
//!   stream fed the whole input.
//!
//! [`VoxtralRealtime`] is the loaded model (weights, tokenizer, mel tables), shared by any
//! number of streams, each with its own [`RealtimeStream`] state (whisper.cpp's split of
//! `whisper_context` and `whisper_state`).

pub mod config;
pub mod model;
pub mod stream;

pub use config::{Config, Layout};
pub use model::VoxtralRealtimeModel;
pub use stream::{RealtimeStream, StreamOptions, StreamToken};

use crate::batching::{BatchStats, StepBatcher};
use crate::error::require;
use crate::error::Error;
use crate::mistral_stack::load_network;
use crate::tekken::{AudioSection, Tekken};
use crate::{Progress, Result, Segment, Timings, Transcript};
use candle_core::Device;
use model::NetworkState;
use std::path::Path;
use voxide_audio::WhisperMel;
use voxide_nn::linear::WeightFormat;

/// Input sample rate.
pub const SAMPLE_RATE: u32 = 16_000;

/// Seconds of audio per decoder position.
pub const SECONDS_PER_TOKEN: f64 = 0.08;

/// Token arithmetic of the streaming schedule (tekken.json's `audio` section).
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Silence tokens before the audio (32).
    pub left_pad_tokens: usize,
    /// Samples per decoder position (1280).
    pub samples_per_token: usize,
    /// Default delay, ms (480).
    pub default_delay_ms: u32,
}

/// A loaded Voxtral Realtime model.
pub struct VoxtralRealtime {
    network: VoxtralRealtimeModel,
    tokenizer: Tekken,
    streaming_pad: u32,
    mel: WhisperMel,
    schedule: Schedule,
    /// tekken.json's audio section (mistral-common's token arithmetic).
    audio: AudioSection,
    /// Where concurrent streams' decoder steps are taken together
    /// ([`Self::batch_concurrent_steps`]).
    batcher: Option<StepBatcher<NetworkState>>,
}

impl VoxtralRealtime {
    /// Loads a checkpoint directory in either layout: `consolidated.safetensors` +
    /// `params.json` + `tekken.json` (Mistral) or `model.safetensors` + `config.json` +
    /// `tekken.json` (HF). Matrices stay in the checkpoint's precision unless `weights` says
    /// otherwise (int8: the decoder's matrices and head, quantized per row at load); norms,
    /// biases and convolutions are f32.
    pub fn from_dir(dir: &Path, device: &Device, weights: Option<WeightFormat>) -> Result<Self> {
        let config = Config::from_dir(dir)?;
        let format = weights;
        let weights = match config.layout {
            Layout::Mistral => require(dir, "consolidated.safetensors")?,
            Layout::Hf => require(dir, "model.safetensors")?,
        };
        let tokenizer = Tekken::from_file(require(dir, "tekken.json")?)?;
        let probe = match config.layout {
            Layout::Mistral => "mm_streams_embeddings.embedding_module.tok_embeddings.weight",
            Layout::Hf => "language_model.model.embed_tokens.weight",
        };
        let network = load_network(
            std::slice::from_ref(&weights),
            probe,
            format,
            device,
            |vb, quantize| VoxtralRealtimeModel::load_in_format(vb, config, quantize),
        )?;
        Self::new(network, tokenizer)
    }

    /// Pairs a network with its tokenizer, checking they agree.
    pub fn new(network: VoxtralRealtimeModel, tokenizer: Tekken) -> Result<Self> {
        let invalid = |message: String| Error::Tokenizer {
            path: tokenizer.path().to_owned(),
            message,
        };
        tokenizer.require_vocab_size(network.config().vocab_size)?;
        let streaming_pad = tokenizer.streaming_pad()?;
        let audio = tokenizer
            .audio()
            .ok_or_else(|| invalid("no audio section: not a Voxtral tokenizer".into()))?
            .clone();
        // The checkpoint's config already says this is the realtime model; the tokenizer's
        // `transcription_format` is not required (third-party copies differ).
        if let Some(problem) = audio_geometry_problem(&audio, network.config().downsample_factor) {
            return Err(invalid(problem));
        }
        let schedule = Schedule {
            left_pad_tokens: audio.streaming_n_left_pad_tokens.unwrap_or(32) as usize,
            samples_per_token: audio.samples_per_token() as usize,
            default_delay_ms: audio.transcription_delay_ms.map_or(480, |ms| ms as u32),
        };
        let mel = WhisperMel::new(network.config().num_mel_bins);
        Ok(Self {
            network,
            tokenizer,
            streaming_pad,
            mel,
            schedule,
            audio,
            batcher: None,
        })
    }

    /// The default stream options, with the delay this model's tokenizer names.
    pub fn default_options(&self) -> StreamOptions {
        StreamOptions {
            delay_ms: self.schedule.default_delay_ms,
            ..StreamOptions::default()
        }
    }

    /// Starts a stream.
    pub fn stream(&self, options: StreamOptions) -> Result<RealtimeStream<'_>> {
        RealtimeStream::new(self, options)
    }

    /// Transcribes a whole input: one stream fed `samples` in chunks, then finished.
    /// Segments break at sentence ends and at pauses of a second or more; their times come
    /// from the positions of their tokens (80 ms each).
    pub fn transcribe(
        &self,
        samples: &[f32],
        options: StreamOptions,
        progress: &mut dyn FnMut(Progress<'_>) -> bool,
    ) -> Result<(Transcript, Timings)> {
        let mut stream = self.stream(options)?;
        // 30 s chunks keep the conv stem's activations small on long inputs.
        const CHUNK: usize = 30 * SAMPLE_RATE as usize;
        let mut said = String::new();
        for (i, chunk) in samples.chunks(CHUNK).enumerate() {
            said.push_str(&stream.push(chunk)?);
            let fraction =
                ((i + 1) * CHUNK).min(samples.len()) as f64 / samples.len().max(1) as f64;
            if !progress(Progress {
                fraction,
                segments: &[],
                pending: said.trim_start(),
            }) {
                return Err(Error::Cancelled);
            }
        }
        stream.finish()?;
        let tokens = stream.tokens().to_vec();
        let timings = stream.timings().clone();
        let duration = samples.len() as f64 / SAMPLE_RATE as f64;
        let segments = self.segments(&tokens, duration);
        let text = self
            .tokenizer
            .decode(&tokens.iter().map(|t| t.id).collect::<Vec<_>>());
        Ok((
            Transcript {
                language: String::new(),
                duration,
                text: text.trim().to_string(),
                segments,
                token_ids: tokens.iter().map(|t| t.id).collect(),
            },
            timings,
        ))
    }

    /// Groups tokens into timed segments.
    fn segments(&self, tokens: &[StreamToken], duration: f64) -> Vec<Segment> {
        const PAUSE_TOKENS: usize = 12; // ~1 s of streaming pads ends a segment
        let mut segments = Vec::new();
        let mut current: Vec<&StreamToken> = Vec::new();
        let mut silent = 0;
        let flush = |current: &mut Vec<&StreamToken>, segments: &mut Vec<Segment>| {
            let ids: Vec<u32> = current.iter().map(|t| t.id).collect();
            let text = self.tokenizer.decode(&ids);
            if let (Some(first), Some(last)) = (current.first(), current.last()) {
                if !text.trim().is_empty() {
                    segments.push(Segment {
                        id: segments.len(),
                        seek: 0,
                        start: round_ms((first.time - SECONDS_PER_TOKEN).clamp(0.0, duration)),
                        end: round_ms(last.time.min(duration)),
                        text,
                        tokens: ids,
                        temperature: 0.0,
                        avg_logprob: 0.0,
                        compression_ratio: 0.0,
                        no_speech_prob: 0.0,
                        words: None,
                    });
                }
            }
            current.clear();
        };
        for token in tokens {
            if self.tokenizer.is_text(token.id) {
                silent = 0;
                current.push(token);
                let piece = self.tokenizer.token_bytes(token.id);
                if matches!(piece.last(), Some(b'.' | b'?' | b'!')) {
                    flush(&mut current, &mut segments);
                }
            } else {
                silent += 1;
                if silent == PAUSE_TOKENS {
                    flush(&mut current, &mut segments);
                }
            }
        }
        flush(&mut current, &mut segments);
        segments
    }

    /// Decoder positions of delay for `delay_ms` (80 … 2400 ms in steps of 80).
    pub fn delay_tokens(&self, delay_ms: u32) -> Result<usize> {
        if !(80..=2400).contains(&delay_ms) || !delay_ms.is_multiple_of(80) {
            return Err(Error::InvalidRequest(format!(
                "delay {delay_ms} ms: use 80 to 2400 ms in steps of 80 (the model was trained at 480)"
            )));
        }
        Ok(self.audio.num_delay_tokens(delay_ms as f64) as usize)
    }

    /// Audio time (s from the input's start) that the token produced at `position` covers up
    /// to (vLLM's timestamp rule: (position + 1 − left pad − delay) · 80 ms).
    pub fn token_end_time(&self, position: usize, delay_tokens: usize) -> f64 {
        (position + 1) as f64 * SECONDS_PER_TOKEN
            - (self.schedule.left_pad_tokens + delay_tokens) as f64 * SECONDS_PER_TOKEN
    }

    /// Takes the decoder steps of concurrent streams (and [`Self::transcribe`] calls) together,
    /// up to `max_rows` a batch ([`StepBatcher`]: each matrix read once for all; each stream's ids
    /// the same as alone); 1 turns it off. Set before the model is shared.
    pub fn batch_concurrent_steps(&mut self, max_rows: usize) {
        self.batcher = (max_rows > 1).then(|| StepBatcher::new(max_rows));
    }

    /// What concurrent streams have decoded together, when batching is on.
    pub fn batch_stats(&self) -> Option<BatchStats> {
        self.batcher.as_ref().map(StepBatcher::stats)
    }

    pub(crate) fn batcher(&self) -> Option<&StepBatcher<NetworkState>> {
        self.batcher.as_ref()
    }

    pub fn network(&self) -> &VoxtralRealtimeModel {
        &self.network
    }

    pub fn tokenizer(&self) -> &Tekken {
        &self.tokenizer
    }

    pub fn mel(&self) -> &WhisperMel {
        &self.mel
    }

    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    fn streaming_pad(&self) -> u32 {
        self.streaming_pad
    }
}

/// Seconds rounded to whole milliseconds (token times are multiples of 80 ms).
fn round_ms(seconds: f64) -> f64 {
    (seconds * 1e3).round() / 1e3
}

/// What in the tokenizer's audio section the network cannot follow: another sample rate,
/// a token of other than 80 ms, a mel front end other than Whisper's (hop 160, window 400),
/// or a frame rate the network's stacking does not make (the stem halves the mel frames,
/// the adapter stacks `downsample_factor` of its outputs into one token).
fn audio_geometry_problem(audio: &AudioSection, downsample_factor: usize) -> Option<String> {
    let enc = &audio.audio_encoding_config;
    let (hop, window) = (voxide_audio::mel::HOP_LENGTH, voxide_audio::mel::N_FFT);
    if audio.sampling_rate != SAMPLE_RATE {
        Some(format!(
            "audio section is for {} Hz; Voxtral Realtime needs 16000 Hz",
            audio.sampling_rate
        ))
    } else if audio.samples_per_token() != 1280 {
        Some(format!(
            "{} samples per token; the model takes 1280 (80 ms)",
            audio.samples_per_token()
        ))
    } else if (enc.hop_length as usize, enc.window_size as usize) != (hop, window) {
        Some(format!(
            "mel hop_length {} and window_size {}; the model's mel takes {hop} and {window}",
            enc.hop_length, enc.window_size
        ))
    } else if audio.frames_per_token() as usize != 2 * downsample_factor {
        Some(format!(
            "a token is {} mel frames at frame_rate {}, but the network makes one of every {} \
             (downsample_factor {downsample_factor})",
            audio.frames_per_token(),
            audio.frame_rate,
            2 * downsample_factor
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real model's audio section, as its tekken.json has it.
    fn audio() -> AudioSection {
        serde_json::from_value(serde_json::json!({
            "sampling_rate": 16000,
            "frame_rate": 12.5,
            "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
            "transcription_delay_ms": 480,
            "transcription_format": "streaming"
        }))
        .unwrap()
    }

    #[test]
    fn the_tokenizers_audio_geometry_must_be_the_networks() {
        assert_eq!(audio_geometry_problem(&audio(), 4), None);
        let problem = |edit: &dyn Fn(&mut AudioSection), downsample: usize| {
            let mut a = audio();
            edit(&mut a);
            audio_geometry_problem(&a, downsample).expect("refused")
        };
        assert!(problem(&|a| a.sampling_rate = 24000, 4).contains("24000 Hz"));
        assert!(problem(&|a| a.frame_rate = 25.0, 4).contains("640 samples per token"));
        let p = problem(&|a| a.audio_encoding_config.hop_length = 320, 4);
        assert!(p.contains("hop_length 320"), "{p}");
        let p = problem(&|a| a.audio_encoding_config.window_size = 512, 4);
        assert!(p.contains("window_size 512"), "{p}");
        // A network that stacks 8 or 2 stem frames into a token, at 12.5 tokens a second.
        for downsample in [8, 2] {
            let p = problem(&|_| {}, downsample);
            assert!(
                p.contains(&format!("downsample_factor {downsample}")),
                "{p}"
            );
        }
    }
}
