//! Long-form transcription as openai-whisper's `transcribe()`: the log-mel of the whole input
//! (plus 30 s of padding), language detection on the first window, 30 s windows that seek on
//! the decoded timestamps, temperature fallback on repetitive or improbable output, the
//! no-speech skip, and previous-text conditioning.

use super::config::GenerationConfig;
use super::decoding::{DecodingOptions, DecodingResult, LogitRules, WindowDecoder};
use super::ggml::ModelFile;
use super::model::Whisper;
use super::timing::{self, TimedSegment, APPEND_PUNCTUATIONS, PREPEND_PUNCTUATIONS};
use super::tokenizer::Tokenizer;
use super::{HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE};
use crate::error::{Error, Result};
use crate::transcript::{Progress, Segment, Timings, Transcript};
use candle_core::{Device, Tensor};
use std::path::Path;
use std::time::Instant;
use voxide_audio::{MelWindows, WhisperMel};
use voxide_nn::linear::WeightFormat;

/// Options of a whole transcription (openai-whisper `transcribe` keyword arguments).
#[derive(Clone, Debug)]
pub struct TranscribeOptions {
    /// Per-window decoding options (their `temperature` and `prompt` are set per window).
    pub decode: DecodingOptions,
    /// Temperatures tried in order until a decode passes the thresholds.
    pub temperatures: Vec<f32>,
    /// Retry when the text's gzip compression ratio is above this (too repetitive).
    pub compression_ratio_threshold: Option<f32>,
    /// Retry when the mean token log-probability is below this.
    pub logprob_threshold: Option<f32>,
    /// Skip a window as silence when `<|nospeech|>` is likelier than this and the log-probability
    /// is below `logprob_threshold`.
    pub no_speech_threshold: Option<f32>,
    /// Feed the previous windows' text as the prompt of the next.
    pub condition_on_previous_text: bool,
    /// Text placed before the first window's tokens (spelling, style, vocabulary hints).
    pub initial_prompt: Option<String>,
    /// Time every word ([`super::timing`]); windows then seek to the last word's end.
    pub word_timestamps: bool,
    /// With word timestamps: punctuation merged into the following word.
    pub prepend_punctuations: String,
    /// With word timestamps: punctuation merged into the preceding word.
    pub append_punctuations: String,
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        Self {
            decode: DecodingOptions::default(),
            temperatures: vec![0.0],
            compression_ratio_threshold: Some(2.4),
            logprob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
            condition_on_previous_text: true,
            initial_prompt: None,
            word_timestamps: false,
            prepend_punctuations: PREPEND_PUNCTUATIONS.into(),
            append_punctuations: APPEND_PUNCTUATIONS.into(),
        }
    }
}

/// A loaded Whisper checkpoint ready to transcribe: model, tokenizer, feature extractor and
/// logit rules. Immutable; one pipeline serves any number of concurrent requests.
pub struct WhisperPipeline {
    model: Whisper,
    tokenizer: Tokenizer,
    rules: LogitRules,
    mel: WhisperMel,
    /// [layer, head] pairs whose cross-attention follows the audio (word timestamps).
    alignment_heads: Vec<[usize; 2]>,
}

impl WhisperPipeline {
    /// Loads a Hugging Face checkpoint directory (config.json, model.safetensors, tokenizer,
    /// optional generation_config.json); `precision` as [`Whisper::from_dir`].
    pub fn from_dir(dir: &Path, device: &Device, precision: Option<WeightFormat>) -> Result<Self> {
        let model = Whisper::from_dir(dir, device, precision)?;
        let tokenizer = Tokenizer::from_dir(dir, model.config().vocab_size)?;
        Self::new(model, tokenizer, &GenerationConfig::from_dir(dir)?)
    }

    /// Loads a whisper.cpp model file (legacy ggml `.bin` or GGUF): the tokenizer comes from
    /// a `tokenizer.json` (or vocab.json + merges.txt) beside it, else from the file's token
    /// bytes; the suppress lists from the vocabulary (openai-whisper's defaults).
    pub fn from_ggml(
        path: &Path,
        device: &Device,
        precision: Option<WeightFormat>,
    ) -> Result<Self> {
        let file = ModelFile::open(path)?;
        let model = Whisper::from_ggml(&file, device, precision)?;
        let n_vocab = model.config().vocab_size;
        // whisper.cpp's vocabularies are lossy (see from_token_bytes): a Hugging Face
        // tokenizer beside the file is exact, and a generation_config.json there names the
        // alignment heads.
        let dir = path.parent().unwrap_or(Path::new("."));
        let tokenizer = match Tokenizer::from_dir(dir, n_vocab) {
            Ok(exact) => exact,
            Err(_) => Tokenizer::from_token_bytes(file.vocab(), n_vocab, path)?,
        };
        Self::new(model, tokenizer, &GenerationConfig::from_dir(dir)?)
    }

    fn new(model: Whisper, tokenizer: Tokenizer, generation: &GenerationConfig) -> Result<Self> {
        let cfg = model.config();
        let suppress = generation
            .suppress_tokens
            .as_ref()
            .or(cfg.suppress_tokens.as_ref())
            .cloned()
            .unwrap_or_default();
        let begin = generation
            .begin_suppress_tokens
            .as_ref()
            .or(cfg.begin_suppress_tokens.as_ref())
            .cloned();
        let rules = LogitRules::new(&model, &tokenizer, &suppress, begin.as_deref())?;
        let mel = WhisperMel::new(cfg.num_mel_bins);
        // openai-whisper's default without a list: every head of the second half of the
        // decoder layers.
        let (layers, heads) = (cfg.decoder_layers, cfg.decoder_attention_heads);
        let alignment_heads = match &generation.alignment_heads {
            Some(list) => {
                if let Some(bad) = list.iter().find(|[l, h]| *l >= layers || *h >= heads) {
                    return Err(Error::InvalidRequest(format!(
                        "generation_config.json: alignment head {bad:?} is outside the decoder \
                         ({layers} layers of {heads} heads)"
                    )));
                }
                list.clone()
            }
            None => (layers / 2..layers)
                .flat_map(|l| (0..heads).map(move |h| [l, h]))
                .collect(),
        };
        Ok(Self {
            model,
            tokenizer,
            rules,
            mel,
            alignment_heads,
        })
    }

    /// The model.
    pub fn model(&self) -> &Whisper {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The [layer, head] pairs word timestamps align with.
    pub fn alignment_heads(&self) -> &[[usize; 2]] {
        &self.alignment_heads
    }

    /// The logit rules (suppress lists and special tokens).
    pub fn rules(&self) -> &LogitRules {
        &self.rules
    }

    /// A decoder over this pipeline's model, for window-level work (tests, benchmarks).
    pub fn window_decoder(&self, seed: u64) -> WindowDecoder<'_> {
        WindowDecoder::new(&self.model, &self.tokenizer, &self.rules, seed)
    }

    /// The encoder input for `frames` mel frames from `start`, zero-padded (in the normalised
    /// domain, as openai-whisper's `pad_or_trim`) to a 30 s window: (1, n_mels, 3000), built
    /// in one buffer that the tensor takes over.
    pub fn window_tensor(&self, mel: &MelWindows, start: usize, frames: usize) -> Result<Tensor> {
        let n_mels = self.mel.n_mels();
        let mut data = vec![0f32; n_mels * N_FRAMES];
        mel.write(start, frames.min(N_FRAMES), &mut data, N_FRAMES);
        Ok(Tensor::from_vec(
            data,
            (1, n_mels, N_FRAMES),
            self.model.device(),
        )?)
    }

    /// Transcribes 16 kHz mono samples. `progress` hears of each window decoded.
    pub fn transcribe(
        &self,
        samples: &[f32],
        opts: &TranscribeOptions,
        progress: &mut dyn FnMut(Progress<'_>) -> bool,
    ) -> Result<(Transcript, Timings)> {
        let mut timings = Timings::default();
        let start = Instant::now();
        let mel = {
            let _span = tracing::trace_span!("mel", samples = samples.len()).entered();
            self.mel.log_mel_windows(samples, N_SAMPLES)
        };
        timings.mel_ms = ms(start);
        let content_frames = mel.n_frames() - N_FRAMES;
        let special = *self.rules.special();
        let mut decoder = self.window_decoder(opts.decode.seed);

        let encode = |start: usize, frames: usize, timings: &mut Timings| -> Result<Tensor> {
            // The window's frames are computed here (the first pass only found the maximum):
            // their time counts as the mel's.
            let clock = Instant::now();
            let window = {
                let _span = tracing::trace_span!("mel_window").entered();
                self.window_tensor(&mel, start, frames)?
            };
            timings.mel_ms += ms(clock);
            let clock = Instant::now();
            let _span = tracing::trace_span!("encoder").entered();
            let features = self.model.encode(&window)?;
            timings.encoder_ms += ms(clock);
            timings.encoder_calls += 1;
            Ok(features)
        };

        let language = match &opts.decode.language {
            Some(code) => code.clone(),
            None if !special.multilingual => "en".to_string(),
            None => {
                // As openai-whisper: the first 3000 frames of the padded log-mel, not a
                // zero-padded segment.
                decoder.set_audio(encode(0, N_FRAMES, &mut timings)?)?;
                let clock = Instant::now();
                let probs = decoder.detect_language()?;
                timings.language_ms += ms(clock);
                let best = probs
                    .iter()
                    .fold(None::<(&str, f32)>, |b, &(c, p)| match b {
                        Some((_, bp)) if bp >= p => b,
                        _ => Some((c, p)),
                    })
                    .expect("at least one language");
                best.0.to_string()
            }
        };

        let initial_prompt = match &opts.initial_prompt {
            Some(text) => self.tokenizer.encode(&format!(" {}", text.trim()))?,
            None => Vec::new(),
        };
        let mut all_tokens: Vec<u32> = initial_prompt.clone();
        let mut token_ids = Vec::new();
        let mut segments: Vec<Segment> = Vec::new();
        let mut prompt_reset_since = 0;
        let mut seek = 0usize;
        let mut last_speech_timestamp = 0.0;
        let input_stride = N_FRAMES / self.model.config().max_source_positions;
        let time_precision = (input_stride * HOP_LENGTH) as f64 / SAMPLE_RATE as f64;

        while seek < content_frames {
            let window_seek = seek;
            let time_offset = (seek * HOP_LENGTH) as f64 / SAMPLE_RATE as f64;
            let segment_size = N_FRAMES.min(content_frames - seek);
            let segment_duration = (segment_size * HOP_LENGTH) as f64 / SAMPLE_RATE as f64;
            decoder.clear_audio();
            decoder.set_audio(encode(seek, segment_size, &mut timings)?)?;

            let mut window_opts = opts.decode.clone();
            window_opts.prompt = all_tokens[prompt_reset_since..].to_vec();
            let result = self.decode_with_fallback(
                &mut decoder,
                &mut window_opts,
                opts,
                &language,
                &mut timings,
            )?;
            if timings.first_token_ms.is_none() {
                timings.first_token_ms = result
                    .first_token_at
                    .map(|t| t.duration_since(start).as_secs_f64() * 1e3);
            }

            if let Some(threshold) = opts.no_speech_threshold {
                let mut skip = result.no_speech_prob > threshold;
                if opts
                    .logprob_threshold
                    .is_some_and(|lp| result.avg_logprob > lp)
                {
                    skip = false;
                }
                if skip {
                    seek += segment_size;
                    if !progress(Progress {
                        fraction: seek.min(content_frames) as f64 / content_frames as f64,
                        segments: &segments,
                        pending: "",
                    }) {
                        return Err(Error::Cancelled);
                    }
                    continue;
                }
            }

            token_ids.extend_from_slice(&result.tokens);
            if result.ended_with_eot {
                token_ids.push(special.eot);
            }
            let tokens = &result.tokens;
            let is_ts: Vec<bool> = tokens
                .iter()
                .map(|&t| t >= special.timestamp_begin)
                .collect();
            let n = tokens.len();
            let single_timestamp_ending = n >= 2 && !is_ts[n - 2] && is_ts[n - 1];
            let consecutive: Vec<usize> = (1..n).filter(|&i| is_ts[i - 1] && is_ts[i]).collect();
            let ts_pos = |t: u32| (t - special.timestamp_begin) as f64;
            // Each segment's span and all its tokens (timestamps included).
            let mut spans: Vec<(f64, f64, &[u32])> = Vec::new();
            if !consecutive.is_empty() {
                let mut slices = consecutive.clone();
                if single_timestamp_ending {
                    slices.push(n);
                }
                let mut last_slice = 0;
                for &slice in &slices {
                    let part = &tokens[last_slice..slice];
                    let start = time_offset + ts_pos(part[0]) * time_precision;
                    let end =
                        time_offset + ts_pos(*part.last().expect("non-empty")) * time_precision;
                    spans.push((start, end, part));
                    last_slice = slice;
                }
                if single_timestamp_ending {
                    seek += segment_size;
                } else {
                    let last_timestamp_pos = tokens[last_slice - 1] - special.timestamp_begin;
                    seek += last_timestamp_pos as usize * input_stride;
                }
            } else {
                let mut duration = segment_duration;
                if let Some(&last) = tokens.iter().rev().find(|&&t| t >= special.timestamp_begin) {
                    if last != special.timestamp_begin {
                        duration = ts_pos(last) * time_precision;
                    }
                }
                spans.push((time_offset, time_offset + duration, tokens));
                seek += segment_size;
            }
            let (mut current, parts): (Vec<TimedSegment>, Vec<&[u32]>) = spans
                .into_iter()
                .map(|(start, end, part)| {
                    let text_tokens = part.iter().copied().filter(|&t| t < special.eot).collect();
                    let segment = TimedSegment {
                        start,
                        end,
                        text_tokens,
                        words: Vec::new(),
                    };
                    (segment, part)
                })
                .unzip();

            if opts.word_timestamps {
                let clock = Instant::now();
                let _span = tracing::trace_span!("alignment").entered();
                let text_tokens: Vec<u32> = current
                    .iter()
                    .flat_map(|s| s.text_tokens.iter().copied())
                    .collect();
                let alignment = decoder.align(
                    &text_tokens,
                    &language,
                    opts.decode.task,
                    segment_size,
                    &self.alignment_heads,
                )?;
                timing::add_word_timestamps(
                    &mut current,
                    alignment,
                    time_offset,
                    last_speech_timestamp,
                    &opts.prepend_punctuations,
                    &opts.append_punctuations,
                );
                let last_word_end = timing::last_end(&current);
                if let Some(end) = last_word_end.filter(|_| !single_timestamp_ending) {
                    if end > time_offset {
                        // Python's round(): halves to even.
                        seek = (end * FRAMES_PER_SECOND).round_ties_even() as usize;
                    }
                }
                if let Some(end) = last_word_end {
                    last_speech_timestamp = end;
                }
                timings.alignment_ms += ms(clock);
                timings.alignments += 1;
            }

            for (segment, part) in current.into_iter().zip(parts) {
                let mut text = self.tokenizer.decode(part)?;
                let mut part = part.to_vec();
                let mut words = opts.word_timestamps.then_some(segment.words);
                if segment.start == segment.end || text.trim().is_empty() {
                    text.clear();
                    part.clear();
                    words = words.map(|_| Vec::new());
                }
                all_tokens.extend_from_slice(&part);
                segments.push(Segment {
                    id: segments.len(),
                    seek: window_seek,
                    start: segment.start,
                    end: segment.end,
                    text,
                    tokens: part,
                    temperature: result.temperature,
                    avg_logprob: result.avg_logprob,
                    compression_ratio: result.compression_ratio,
                    no_speech_prob: result.no_speech_prob,
                    words,
                });
            }
            if !opts.condition_on_previous_text || result.temperature > 0.5 {
                prompt_reset_since = all_tokens.len();
            }
            if !progress(Progress {
                fraction: seek.min(content_frames) as f64 / content_frames as f64,
                segments: &segments,
                pending: "",
            }) {
                return Err(Error::Cancelled);
            }
        }

        let text = self
            .tokenizer
            .decode_with_specials(&all_tokens[initial_prompt.len()..])?;
        Ok((
            Transcript {
                language,
                duration: samples.len() as f64 / SAMPLE_RATE as f64,
                text,
                segments,
                token_ids,
            },
            timings,
        ))
    }

    /// Decodes the current window at each temperature in turn until the result is neither too
    /// repetitive nor too improbable (or looks like silence).
    fn decode_with_fallback(
        &self,
        decoder: &mut WindowDecoder<'_>,
        window_opts: &mut DecodingOptions,
        opts: &TranscribeOptions,
        language: &str,
        timings: &mut Timings,
    ) -> Result<DecodingResult> {
        if opts.temperatures.is_empty() {
            return Err(crate::Error::InvalidRequest(
                "no decoding temperature given".into(),
            ));
        }
        let mut result = None;
        for &t in &opts.temperatures {
            window_opts.temperature = t;
            let r = decoder.decode(window_opts, language)?;
            timings.prefills += 1;
            timings.prefill_ms += r.prefill_ms;
            timings.steps += r.steps;
            timings.steps_ms += r.steps_ms;
            let mut needs_fallback = opts
                .compression_ratio_threshold
                .is_some_and(|c| r.compression_ratio > c)
                || opts.logprob_threshold.is_some_and(|lp| r.avg_logprob < lp);
            if opts
                .no_speech_threshold
                .is_some_and(|ns| r.no_speech_prob > ns)
                && opts.logprob_threshold.is_some_and(|lp| r.avg_logprob < lp)
            {
                needs_fallback = false;
            }
            result = Some(r);
            if !needs_fallback {
                break;
            }
        }
        Ok(result.expect("at least one temperature"))
    }
}

/// Mel frames per second (openai-whisper's `FRAMES_PER_SECOND`).
const FRAMES_PER_SECOND: f64 = (SAMPLE_RATE as usize / HOP_LENGTH) as f64;

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}
