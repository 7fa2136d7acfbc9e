//! Long-form transcription as openai-whisper's `transcribe()`: the log-mel of the whole input
//! (plus 30 s of padding), language detection on the first window, 30 s windows that seek on
//! the decoded timestamps, temperature fallback on repetitive or improbable output, the
//! no-speech skip, and previous-text conditioning.

use super::batcher::{Member, WindowBatcher};
use super::config::GenerationConfig;
use super::decoding::{DecodingOptions, DecodingResult, LogitRules, WindowDecoder};
use super::ggml::ModelFile;
use super::model::Whisper;
use super::timing::{self, TimedSegment, APPEND_PUNCTUATIONS, PREPEND_PUNCTUATIONS};
use super::tokenizer::Tokenizer;
use super::{HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE};
use crate::batching::{alone, away, BatchStats};
use crate::error::{Error, Result};
use crate::transcript::{clip_stretches, Progress, Segment, Timings, Transcript};
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
    /// The stretches to transcribe, in seconds: start, end, start, end, … (openai-whisper's
    /// `clip_timestamps`); the last stretch of an odd count runs to the end. Empty: all of it.
    pub clip_timestamps: Vec<f64>,
    /// Put `initial_prompt` at the head of every window's prompt, not only the first's
    /// (openai-whisper's `carry_initial_prompt`).
    pub carry_initial_prompt: bool,
    /// With word timestamps: skip silences longer than this (s) before and after segments
    /// that look like hallucinations (openai-whisper's `hallucination_silence_threshold`).
    pub hallucination_silence_threshold: Option<f64>,
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
            clip_timestamps: Vec::new(),
            carry_initial_prompt: false,
            hallucination_silence_threshold: None,
        }
    }
}

/// Refuses the long-form options openai-whisper would misread: clip times that are not
/// seconds ≥ 0 or a stretch that ends before it starts (openai-whisper transcribes nothing of
/// it), and a hallucination silence threshold that is not > 0 s or comes without word
/// timestamps (openai-whisper ignores it then).
pub fn check_long_form_options(
    clip_timestamps: &[f64],
    hallucination_silence_threshold: Option<f64>,
    word_timestamps: bool,
) -> Result<()> {
    if let Some(t) = clip_timestamps
        .iter()
        .find(|t| !(t.is_finite() && **t >= 0.0))
    {
        return Err(Error::InvalidRequest(format!(
            "clip timestamps are seconds ≥ 0; got {t}"
        )));
    }
    for (i, pair) in clip_timestamps.chunks_exact(2).enumerate() {
        if pair[1] <= pair[0] {
            return Err(Error::InvalidRequest(format!(
                "clip {} ends ({} s) before it starts ({} s)",
                i + 1,
                pair[1],
                pair[0]
            )));
        }
    }
    if let Some(threshold) = hallucination_silence_threshold {
        if !(threshold.is_finite() && threshold > 0.0) {
            return Err(Error::InvalidRequest(format!(
                "the hallucination silence threshold is seconds > 0; got {threshold}"
            )));
        }
        if !word_timestamps {
            return Err(Error::InvalidRequest(
                "the hallucination silence threshold needs word timestamps (it judges \
                 segments by their words)"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// openai-whisper's `frames * HOP_LENGTH / SAMPLE_RATE`.
fn frames_to_seconds(frames: usize) -> f64 {
    (frames * HOP_LENGTH) as f64 / SAMPLE_RATE as f64
}

/// Python's `round(seconds * FRAMES_PER_SECOND)` (halves to even), for seconds ≥ 0.
fn seconds_to_frames(seconds: f64) -> usize {
    (seconds * FRAMES_PER_SECOND).round_ties_even() as usize
}

/// Python's `s[-n:]`: the last `n` for n > 0, and the n ≤ 0 cases that openai-whisper's
/// carried prompt reaches when the initial prompt fills half the context or more: all of `s`
/// for n = 0, all but the first −n for n < 0.
fn python_tail(s: &[u32], n: isize) -> &[u32] {
    let from = if n > 0 {
        s.len().saturating_sub(n.unsigned_abs())
    } else {
        n.unsigned_abs().min(s.len())
    };
    &s[from..]
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
    /// Where concurrent transcriptions decode their windows together
    /// ([`Self::batch_concurrent_windows`]).
    batcher: Option<WindowBatcher>,
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
            batcher: None,
        })
    }

    /// Decodes the windows of concurrent [`Self::transcribe`] calls together, up to
    /// `max_windows` a batch ([`super::batcher`]): a server's throughput under load, each
    /// transcript the same as alone. 1 (or 0) turns it off.
    pub fn batch_concurrent_windows(&mut self, max_windows: usize) {
        self.batcher = (max_windows > 1).then(|| WindowBatcher::new(max_windows));
    }

    /// What concurrent transcriptions have decoded together, where they do.
    pub fn batch_stats(&self) -> Option<BatchStats> {
        self.batcher.as_ref().map(WindowBatcher::stats)
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

    /// A chunk's encoder input in a batched transcription ([`Self::transcribe_chunks`]), as
    /// faster-whisper's batched pipeline builds it: the chunk's own log-mel (its feature
    /// extractor is openai-whisper's with 160 samples of padding), the last frame dropped,
    /// zero-padded or cut to a 30 s window: `[n_mels][3000]` values and the chunk's frames.
    pub fn chunk_features(&self, chunk: &[f32]) -> (Vec<f32>, usize) {
        let mel = self.mel.log_mel_windows(chunk, HOP_LENGTH);
        let frames = mel.n_frames().saturating_sub(1);
        let mut window = vec![0f32; self.mel.n_mels() * N_FRAMES];
        mel.write(0, frames.min(N_FRAMES), &mut window, N_FRAMES);
        (window, frames)
    }

    /// The spoken language of 16 kHz mono samples, as [`Self::transcribe`] detects it: every
    /// language's probability from the first 30 s (openai-whisper's `detect_language`), the
    /// most likely first (the lower token id first among equals).
    pub fn detect_language(&self, samples: &[f32]) -> Result<Vec<(&'static str, f32)>> {
        let mel = self.mel.log_mel_windows(samples, N_SAMPLES);
        let mut decoder = self.window_decoder(0);
        let window = self.window_tensor(&mel, 0, N_FRAMES)?;
        decoder.set_audio(self.model.encode(&window)?)?;
        Ok(most_likely_first(decoder.detect_language()?))
    }

    /// Transcribes 16 kHz mono samples. `progress` hears of each window decoded.
    pub fn transcribe(
        &self,
        samples: &[f32],
        opts: &TranscribeOptions,
        progress: &mut dyn FnMut(Progress<'_>) -> bool,
    ) -> Result<(Transcript, Timings)> {
        check_long_form_options(
            &opts.clip_timestamps,
            opts.hallucination_silence_threshold,
            opts.word_timestamps,
        )?;
        let member = self.batcher.as_ref().map(WindowBatcher::join);
        // The caller's callback may block (a slow client): no batch waits for it.
        let mut told = |p: Progress<'_>| away(member.as_ref(), || progress(p));
        let progress: &mut dyn FnMut(Progress<'_>) -> bool = &mut told;
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
            let _span = tracing::trace_span!("encoder").entered();
            let timed = || {
                let clock = Instant::now();
                (self.model.encode(&window), ms(clock))
            };
            // Where encoders take turns, timed once this one's turn has come.
            let (features, encoder_ms) = alone(member.as_ref(), timed);
            let features = features?;
            timings.encoder_ms += encoder_ms;
            timings.encoder_calls += 1;
            Ok(features)
        };

        // As openai-whisper: the first 3000 frames of the padded log-mel, not a zero-padded
        // segment.
        let language = self.language(&mut decoder, opts, &mut timings, |timings| {
            encode(0, N_FRAMES, timings)
        })?;
        let initial_prompt = self.initial_prompt(opts)?;
        let mut all_tokens: Vec<u32> = initial_prompt.clone();
        let mut token_ids = Vec::new();
        let mut segments: Vec<Segment> = Vec::new();
        let mut prompt_reset_since = 0;
        // What a carried prompt keeps of the text before it (negative where the initial prompt
        // fills half the context: see `python_tail`).
        let remaining_prompt_length = (self.model.config().max_target_positions / 2) as isize
            - 1
            - initial_prompt.len() as isize;
        // openai-whisper's `seek_clips`.
        let clips = clip_stretches(&opts.clip_timestamps, FRAMES_PER_SECOND, content_frames);
        let mut clip_index = 0;
        let mut seek = clips[0].start;
        let mut last_speech_timestamp = 0.0;

        // openai-whisper's loop over the clips' windows, flattened as there: a window starts
        // where the last one's text ended, or at the next clip.
        while let Some(clip) = clips.get(clip_index) {
            seek = seek.max(clip.start);
            if seek >= clip.end {
                clip_index += 1;
                if let Some(next) = clips.get(clip_index) {
                    seek = next.start;
                }
                continue;
            }
            let segment_size = N_FRAMES.min(content_frames - seek).min(clip.end - seek);
            let window = WindowSpan {
                seek,
                size: segment_size,
                time_offset: frames_to_seconds(seek),
                end_time: frames_to_seconds(seek + N_FRAMES),
                duration: frames_to_seconds(segment_size),
            };
            let window_seek = window.seek;
            decoder.clear_audio();
            let audio = encode(seek, segment_size, &mut timings)?;
            decoder.set_audio(audio.clone())?;

            let mut window_opts = opts.decode.clone();
            window_opts.prompt = if opts.carry_initial_prompt {
                let carried = initial_prompt.len().max(prompt_reset_since);
                [
                    initial_prompt.as_slice(),
                    python_tail(&all_tokens[carried..], remaining_prompt_length),
                ]
                .concat()
            } else {
                all_tokens[prompt_reset_since..].to_vec()
            };
            let result = self.decode_with_fallback(
                &mut decoder,
                self.batcher
                    .as_ref()
                    .zip(member.as_ref())
                    .map(|(b, m)| (b, m, &audio)),
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

            if is_silence(&result, opts) {
                seek += segment_size;
                report(progress, seek, content_frames, &segments)?;
                continue;
            }

            token_ids.extend_from_slice(&result.tokens);
            if result.ended_with_eot {
                token_ids.push(special.eot);
            }
            let Split {
                segments: mut current,
                mut parts,
                single_timestamp_ending,
                consumed,
            } = self.split_at_timestamps(&result.tokens, &window);
            seek += consumed;

            if opts.word_timestamps {
                self.time_words(
                    &mut decoder,
                    &mut current,
                    &language,
                    &window,
                    last_speech_timestamp,
                    opts,
                    &mut timings,
                )?;
                if let Some(end) = timing::last_end(&current).filter(|_| !single_timestamp_ending) {
                    if end > window.time_offset {
                        seek = seconds_to_frames(end);
                    }
                }
                if let Some(threshold) = opts.hallucination_silence_threshold {
                    let (next_seek, keep) = skip_hallucinations(
                        &current,
                        &window,
                        threshold,
                        last_speech_timestamp,
                        single_timestamp_ending,
                        content_frames,
                        seek,
                    );
                    seek = next_seek;
                    let Some(keep) = keep else {
                        report(progress, seek, content_frames, &segments)?;
                        continue;
                    };
                    current.truncate(keep);
                    parts.truncate(keep);
                }
                if let Some(end) = timing::last_end(&current) {
                    last_speech_timestamp = end;
                }
            }

            self.push_segments(
                current,
                parts,
                &result,
                window_seek,
                opts.word_timestamps,
                &mut segments,
                &mut all_tokens,
            )?;
            if !opts.condition_on_previous_text || result.temperature > 0.5 {
                prompt_reset_since = all_tokens.len();
            }
            report(progress, seek, content_frames, &segments)?;
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

    /// Transcribes each of `chunks` (ranges of 16 kHz mono `samples`, at most 30 s heard of
    /// each) on its own, `batch_size` at a time, as faster-whisper's
    /// `BatchedInferencePipeline` does with the chunks its VAD cut: each chunk's log-mel
    /// alone (padded by 160 samples, its last frame dropped), one window per chunk, every
    /// decoder step running the batch's windows together ([`WindowDecoder::decode_batch`]),
    /// the segments split at their timestamps (an unfinished one at the end dropped) at the
    /// chunk's times in `samples`. No previous text: each chunk's prompt is the initial prompt
    /// alone. The language, where not given, is detected on the first 30 s of the chunks'
    /// features joined. Unlike faster-whisper, which decodes a batch at its first temperature
    /// only and keeps every chunk, each chunk falls back through the temperatures and is
    /// skipped as silence as openai-whisper's windows are (the thresholds of `opts`).
    pub fn transcribe_chunks(
        &self,
        samples: &[f32],
        chunks: &[std::ops::Range<usize>],
        opts: &TranscribeOptions,
        batch_size: usize,
        progress: &mut dyn FnMut(Progress<'_>) -> bool,
    ) -> Result<(Transcript, Timings)> {
        if batch_size == 0 {
            return Err(Error::InvalidRequest("the batch size is at least 1".into()));
        }
        if !opts.clip_timestamps.is_empty() || opts.hallucination_silence_threshold.is_some() {
            return Err(Error::InvalidRequest(
                "chunks transcribed in batches take neither clip timestamps nor a hallucination \
                 silence threshold (both follow one window after another)"
                    .into(),
            ));
        }
        if opts.temperatures.is_empty() {
            return Err(Error::InvalidRequest(
                "no decoding temperature given".into(),
            ));
        }
        if let Some(bad) = chunks
            .iter()
            .find(|c| c.start >= c.end || c.end > samples.len())
        {
            return Err(Error::InvalidRequest(format!(
                "chunk {}..{} is not a stretch of the {} samples",
                bad.start,
                bad.end,
                samples.len()
            )));
        }
        let mut timings = Timings::default();
        let start = Instant::now();
        let n_mels = self.mel.n_mels();
        let features: Vec<(Vec<f32>, usize)> = {
            let _span = tracing::trace_span!("mel", chunks = chunks.len()).entered();
            chunks
                .iter()
                .map(|c| self.chunk_features(&samples[c.clone()]))
                .collect()
        };
        timings.mel_ms = ms(start);
        let device = self.model.device();
        let special = *self.rules.special();
        let mut decoder = self.window_decoder(opts.decode.seed);
        // faster-whisper's: the chunks' features joined, with one frame of −1.5 after them
        // (for an input without any), their first 30 s.
        let language = self.language(&mut decoder, opts, &mut timings, |timings| {
            let clock = Instant::now();
            let mut joined = vec![0f32; n_mels * N_FRAMES];
            let mut at = 0;
            for (window, frames) in &features {
                let take = (*frames).min(N_FRAMES - at);
                for m in 0..n_mels {
                    joined[m * N_FRAMES + at..][..take]
                        .copy_from_slice(&window[m * N_FRAMES..][..take]);
                }
                at += take;
                if at == N_FRAMES {
                    break;
                }
            }
            if at < N_FRAMES {
                (0..n_mels).for_each(|m| joined[m * N_FRAMES + at] = -1.5);
            }
            timings.mel_ms += ms(clock);
            let clock = Instant::now();
            let window = Tensor::from_vec(joined, (1, n_mels, N_FRAMES), device)?;
            let encoded = self.model.encode(&window)?;
            timings.encoder_ms += ms(clock);
            timings.encoder_calls += 1;
            Ok(encoded)
        })?;
        let mut base = opts.decode.clone();
        base.prompt = self.initial_prompt(opts)?;

        let mut segments: Vec<Segment> = Vec::new();
        let mut token_ids = Vec::new();
        let mut all_tokens = Vec::new();
        let mut last_speech_timestamp = 0.0;
        let indices: Vec<usize> = (0..chunks.len()).collect();
        for batch in indices.chunks(batch_size) {
            decoder.clear_audio();
            let clock = Instant::now();
            let encoded = {
                let _span = tracing::trace_span!("encoder", windows = batch.len()).entered();
                batch
                    .iter()
                    .map(|&i| {
                        let window =
                            Tensor::from_slice(&features[i].0, (1, n_mels, N_FRAMES), device)?;
                        self.model.encode(&window)
                    })
                    .collect::<Result<Vec<_>>>()?
            };
            timings.encoder_ms += ms(clock);
            timings.encoder_calls += batch.len();
            // Each chunk through the temperatures until its decode passes (or they run out).
            let mut results: Vec<Option<DecodingResult>> = vec![None; batch.len()];
            let mut pending: Vec<usize> = (0..batch.len()).collect();
            for &temperature in &opts.temperatures {
                if pending.is_empty() {
                    break;
                }
                let audio: Vec<Tensor> = pending.iter().map(|&p| encoded[p].clone()).collect();
                decoder.clear_audio();
                decoder.set_audio(Tensor::cat(&audio, 0)?)?;
                let mut window_opts = base.clone();
                window_opts.temperature = temperature;
                let windows = vec![(&window_opts, language.as_str()); pending.len()];
                let decoded = decoder.decode_batch(&windows, None)?;
                if timings.first_token_ms.is_none() {
                    timings.first_token_ms = decoded[0]
                        .first_token_at
                        .map(|t| t.duration_since(start).as_secs_f64() * 1e3);
                }
                timings.prefills += 1;
                timings.prefill_ms += decoded[0].prefill_ms;
                timings.steps += decoded[0].steps;
                timings.steps_ms += decoded[0].steps_ms;
                let mut retry = Vec::new();
                for (p, r) in pending.into_iter().zip(decoded) {
                    if needs_fallback(&r, opts) {
                        retry.push(p);
                    }
                    results[p] = Some(r);
                }
                pending = retry;
            }
            for ((&i, result), audio) in batch.iter().zip(results).zip(encoded) {
                let result = result.expect("every chunk decoded at least once");
                let chunk = &chunks[i];
                let time_offset = chunk.start as f64 / SAMPLE_RATE as f64;
                let window = WindowSpan {
                    // faster-whisper's `int(offset * frames_per_second)`.
                    seek: (time_offset * FRAMES_PER_SECOND) as usize,
                    size: features[i].1.min(N_FRAMES),
                    time_offset,
                    end_time: time_offset + frames_to_seconds(N_FRAMES),
                    duration: chunk.len() as f64 / SAMPLE_RATE as f64,
                };
                if is_silence(&result, opts) {
                    continue;
                }
                token_ids.extend_from_slice(&result.tokens);
                if result.ended_with_eot {
                    token_ids.push(special.eot);
                }
                let Split {
                    segments: mut timed,
                    parts,
                    ..
                } = self.split_at_timestamps(&result.tokens, &window);
                if opts.word_timestamps {
                    decoder.clear_audio();
                    decoder.set_audio(audio)?;
                    self.time_words(
                        &mut decoder,
                        &mut timed,
                        &language,
                        &window,
                        last_speech_timestamp,
                        opts,
                        &mut timings,
                    )?;
                    if let Some(end) = timing::last_end(&timed) {
                        last_speech_timestamp = end;
                    }
                }
                self.push_segments(
                    timed,
                    parts,
                    &result,
                    window.seek,
                    opts.word_timestamps,
                    &mut segments,
                    &mut all_tokens,
                )?;
            }
            let done = batch.last().map_or(0, |&i| i + 1);
            report(progress, done, chunks.len(), &segments)?;
        }
        let text = self.tokenizer.decode_with_specials(&all_tokens)?;
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
    /// repetitive nor too improbable (or looks like silence); in a batch with other
    /// transcriptions' windows where `batch` names the batcher, this one's membership and its
    /// encoder output.
    fn decode_with_fallback(
        &self,
        decoder: &mut WindowDecoder<'_>,
        batch: Option<(&WindowBatcher, &Member<'_>, &Tensor)>,
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
            let r = match batch {
                Some((batcher, member, audio)) => batcher.decode(
                    member,
                    self,
                    audio,
                    window_opts,
                    language,
                    decoder.sampler_mut(),
                )?,
                None => decoder.decode(window_opts, language)?,
            };
            timings.prefills += 1;
            timings.prefill_ms += r.prefill_ms;
            timings.steps += r.steps;
            timings.steps_ms += r.steps_ms;
            let retry = needs_fallback(&r, opts);
            result = Some(r);
            if !retry {
                break;
            }
        }
        Ok(result.expect("at least one temperature"))
    }

    /// The language to decode in: the one asked for, English for an English-only model, else
    /// the most likely one on the encoder output that `window` gives (counting its time).
    fn language(
        &self,
        decoder: &mut WindowDecoder<'_>,
        opts: &TranscribeOptions,
        timings: &mut Timings,
        window: impl FnOnce(&mut Timings) -> Result<Tensor>,
    ) -> Result<String> {
        match &opts.decode.language {
            Some(code) => Ok(code.clone()),
            None if !self.rules.special().multilingual => Ok("en".to_string()),
            None => {
                decoder.set_audio(window(timings)?)?;
                let clock = Instant::now();
                let probs = most_likely_first(decoder.detect_language()?);
                timings.language_ms += ms(clock);
                Ok(probs[0].0.to_string())
            }
        }
    }

    /// The initial prompt's tokens, as openai-whisper encodes it: " " + the prompt stripped.
    fn initial_prompt(&self, opts: &TranscribeOptions) -> Result<Vec<u32>> {
        match &opts.initial_prompt {
            Some(text) => Ok(self.tokenizer.encode(&format!(" {}", text.trim()))?),
            None => Ok(Vec::new()),
        }
    }

    /// Mel frames per decoder (cross-attention) position: 2.
    fn input_stride(&self) -> usize {
        N_FRAMES / self.model.config().max_source_positions
    }

    /// `tokens` of the window `window` cut into segments at their timestamps (openai-whisper's
    /// split, which faster-whisper's `_split_segments_by_timestamps` repeats): at each pair of
    /// consecutive timestamps, and at the end after a lone one; tokens after the last
    /// complete segment are dropped. Without such a pair, one segment for the whole window
    /// (to its last timestamp, if one is past zero).
    fn split_at_timestamps<'t>(&self, tokens: &'t [u32], window: &WindowSpan) -> Split<'t> {
        let special = self.rules.special();
        let input_stride = self.input_stride();
        let time_precision = frames_to_seconds(input_stride);
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
        let consumed = if !consecutive.is_empty() {
            let mut slices = consecutive.clone();
            if single_timestamp_ending {
                slices.push(n);
            }
            let mut last_slice = 0;
            for &slice in &slices {
                let part = &tokens[last_slice..slice];
                let start = window.time_offset + ts_pos(part[0]) * time_precision;
                let end =
                    window.time_offset + ts_pos(*part.last().expect("non-empty")) * time_precision;
                spans.push((start, end, part));
                last_slice = slice;
            }
            if single_timestamp_ending {
                window.size
            } else {
                let last_timestamp_pos = tokens[last_slice - 1] - special.timestamp_begin;
                last_timestamp_pos as usize * input_stride
            }
        } else {
            let mut duration = window.duration;
            if let Some(&last) = tokens.iter().rev().find(|&&t| t >= special.timestamp_begin) {
                if last != special.timestamp_begin {
                    duration = ts_pos(last) * time_precision;
                }
            }
            spans.push((window.time_offset, window.time_offset + duration, tokens));
            window.size
        };
        let (segments, parts) = spans
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
        Split {
            segments,
            parts,
            single_timestamp_ending,
            consumed,
        }
    }

    /// Times the words of `segments`, the current window's (`window`) text, from the decoder's
    /// cross-attention over its audio ([`WindowDecoder::align`], [`timing::add_word_timestamps`]).
    #[allow(clippy::too_many_arguments)]
    fn time_words(
        &self,
        decoder: &mut WindowDecoder<'_>,
        segments: &mut [TimedSegment],
        language: &str,
        window: &WindowSpan,
        last_speech_timestamp: f64,
        opts: &TranscribeOptions,
        timings: &mut Timings,
    ) -> Result<()> {
        let clock = Instant::now();
        let _span = tracing::trace_span!("alignment").entered();
        let text_tokens: Vec<u32> = segments
            .iter()
            .flat_map(|s| s.text_tokens.iter().copied())
            .collect();
        let alignment = decoder.align(
            &text_tokens,
            language,
            opts.decode.task,
            window.size,
            &self.alignment_heads,
        )?;
        timing::add_word_timestamps(
            segments,
            alignment,
            window.time_offset,
            last_speech_timestamp,
            &opts.prepend_punctuations,
            &opts.append_punctuations,
        );
        timings.alignment_ms += ms(clock);
        timings.alignments += 1;
        Ok(())
    }

    /// Appends a window's segments (`timed`, with their tokens `parts`) decoded as `result`
    /// from the window at `seek` to `segments`, and their tokens to `all_tokens`; a segment
    /// without length or text keeps its place with neither text nor tokens (nor words), as
    /// openai-whisper clears it.
    #[allow(clippy::too_many_arguments)]
    fn push_segments(
        &self,
        timed: Vec<TimedSegment>,
        parts: Vec<&[u32]>,
        result: &DecodingResult,
        seek: usize,
        word_timestamps: bool,
        segments: &mut Vec<Segment>,
        all_tokens: &mut Vec<u32>,
    ) -> Result<()> {
        for (segment, part) in timed.into_iter().zip(parts) {
            let mut text = self.tokenizer.decode(part)?;
            let mut part = part.to_vec();
            let mut words = word_timestamps.then_some(segment.words);
            if segment.start == segment.end || text.trim().is_empty() {
                text.clear();
                part.clear();
                words = words.map(|_| Vec::new());
            }
            all_tokens.extend_from_slice(&part);
            segments.push(Segment {
                id: segments.len(),
                seek,
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
        Ok(())
    }
}

/// Language probabilities (in token order) most likely first; a stable sort, so equals keep
/// token order and the first is the one Python's `max` picks.
fn most_likely_first(mut probs: Vec<(&'static str, f32)>) -> Vec<(&'static str, f32)> {
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    probs
}

/// Tells `progress` how far the windows got (`done` of `total`: mel frames, or chunks);
/// `Err(Cancelled)` where it says stop.
fn report(
    progress: &mut dyn FnMut(Progress<'_>) -> bool,
    done: usize,
    total: usize,
    segments: &[Segment],
) -> Result<()> {
    let fraction = done.min(total) as f64 / total as f64;
    if progress(Progress {
        fraction,
        segments,
        pending: "",
    }) {
        Ok(())
    } else {
        Err(Error::Cancelled)
    }
}

/// Whether openai-whisper's `decode_with_fallback` tries the next temperature after `r`: too
/// repetitive or too improbable, unless it looks like silence.
fn needs_fallback(r: &DecodingResult, opts: &TranscribeOptions) -> bool {
    let failed = opts
        .compression_ratio_threshold
        .is_some_and(|c| r.compression_ratio > c)
        || opts.logprob_threshold.is_some_and(|lp| r.avg_logprob < lp);
    let silence = opts
        .no_speech_threshold
        .is_some_and(|ns| r.no_speech_prob > ns)
        && opts.logprob_threshold.is_some_and(|lp| r.avg_logprob < lp);
    failed && !silence
}

/// Whether openai-whisper skips a window decoded as `r` as silence: `<|nospeech|>` likelier
/// than the threshold, and the text no likelier than the log-probability threshold.
fn is_silence(r: &DecodingResult, opts: &TranscribeOptions) -> bool {
    opts.no_speech_threshold
        .is_some_and(|ns| r.no_speech_prob > ns)
        && !opts.logprob_threshold.is_some_and(|lp| r.avg_logprob > lp)
}

/// A window's decoded tokens cut into segments ([`WhisperPipeline::split_at_timestamps`]).
struct Split<'t> {
    /// The segments' spans, their words not yet timed.
    segments: Vec<TimedSegment>,
    /// Each segment's tokens, timestamps included.
    parts: Vec<&'t [u32]>,
    /// The window ended on a lone timestamp: nothing is said after its last segment.
    single_timestamp_ending: bool,
    /// Frames of the window its segments account for: all, or up to the last timestamp
    /// where an unfinished segment after it was dropped (where the next window starts).
    consumed: usize,
}

/// A window's place in the input.
struct WindowSpan {
    /// First mel frame.
    seek: usize,
    /// Mel frames decoded (at most 3000; fewer at the end of the input or of a clip).
    size: usize,
    /// Start and end of a full 30 s window from `seek`, and the decoded frames' length (s).
    time_offset: f64,
    end_time: f64,
    duration: f64,
}

/// openai-whisper's `hallucination_silence_threshold` on a window whose words are timed:
/// where to seek next (`seek`: where the word-timestamp rule would) and how many of the
/// window's segments to keep. A segment that looks like a hallucination
/// ([`timing::is_segment_anomaly`]) with silence (or more hallucination) on both sides is
/// dropped with all after it, and the next window starts at it (or a second into this one);
/// `None`: the window's first segment is one after a long silence, so nothing is kept and the
/// next window starts past that silence.
fn skip_hallucinations(
    segments: &[TimedSegment],
    window: &WindowSpan,
    threshold: f64,
    last_speech_timestamp: f64,
    single_timestamp_ending: bool,
    content_frames: usize,
    mut seek: usize,
) -> (usize, Option<usize>) {
    if !single_timestamp_ending {
        if let Some(end) = timing::last_end(segments).filter(|&e| e > window.time_offset) {
            seek = if window.end_time - end > threshold {
                seconds_to_frames(end)
            } else {
                window.seek + window.size
            };
        }
    }
    let first = timing::next_words_segment(segments);
    if let Some(first) = first.filter(|s| timing::is_segment_anomaly(Some(s))) {
        let gap = first.start - window.time_offset;
        if gap > threshold {
            // At least a frame on: a gap under half of one (float noise under a tiny
            // threshold) would decode this window again and again.
            return (window.seek + seconds_to_frames(gap).max(1), None);
        }
    }
    let content_duration = frames_to_seconds(content_frames);
    let mut last_end = last_speech_timestamp;
    for (i, segment) in segments.iter().enumerate() {
        if segment.words.is_empty() {
            continue;
        }
        if timing::is_segment_anomaly(Some(segment)) {
            let next = timing::next_words_segment(&segments[i + 1..]);
            let next_start =
                next.map_or(window.time_offset + window.duration, |s| s.words[0].start);
            let silence_before = segment.start - last_end > threshold
                || segment.start < threshold
                || segment.start - window.time_offset < 2.0;
            let silence_after = next_start - segment.end > threshold
                || timing::is_segment_anomaly(next)
                || window.end_time - segment.end < 2.0;
            if silence_before && silence_after {
                let seek = if content_duration - segment.end < threshold {
                    content_frames
                } else {
                    seconds_to_frames((window.time_offset + 1.0).max(segment.start))
                };
                return (seek, Some(i));
            }
        }
        last_end = segment.end;
    }
    (seek, Some(segments.len()))
}

/// Mel frames per second (openai-whisper's `FRAMES_PER_SECOND`).
const FRAMES_PER_SECOND: f64 = (SAMPLE_RATE as usize / HOP_LENGTH) as f64;

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcript::Word;

    #[test]
    fn seconds_round_to_frames_as_python_rounds() {
        // 0.125 s is 12.5 frames, rounded to 12.
        assert_eq!(seconds_to_frames(0.125), 12);
    }

    #[test]
    fn a_carried_prompt_keeps_what_python_slicing_keeps() {
        let s = [1, 2, 3, 4, 5];
        assert_eq!(python_tail(&s, 2), [4, 5]);
        assert_eq!(python_tail(&s, 9), s);
        assert_eq!(python_tail(&s, 0), s);
        assert_eq!(python_tail(&s, -2), [3, 4, 5]);
        assert_eq!(python_tail(&s, -9), [] as [u32; 0]);
    }

    #[test]
    fn long_form_options_openai_whisper_would_misread_are_refused() {
        let error = |clips: &[f64], threshold, words| {
            check_long_form_options(clips, threshold, words)
                .unwrap_err()
                .to_string()
        };
        assert!(check_long_form_options(&[0.0, 10.0, 20.0], Some(2.0), true).is_ok());
        assert!(error(&[-1.0], None, false).contains("seconds ≥ 0; got -1"));
        assert!(error(&[f64::NAN], None, false).contains("got NaN"));
        let e = error(&[0.0, 10.0, 30.0, 20.0], None, false);
        assert!(
            e.contains("clip 2 ends (20 s) before it starts (30 s)"),
            "{e}"
        );
        assert!(error(&[], Some(0.0), true).contains("seconds > 0; got 0"));
        assert!(error(&[], Some(2.0), false).contains("needs word timestamps"));
    }

    /// A word of 0.5 s: probable (not an anomaly) or not (an anomaly on its own).
    fn word(start: f64, probable: bool) -> Word {
        Word {
            word: " w".into(),
            start,
            end: start + 0.5,
            probability: if probable { 0.9 } else { 0.01 },
        }
    }

    /// A segment of words starting at `starts`.
    fn segment(starts: &[f64], probable: bool) -> TimedSegment {
        let words: Vec<Word> = starts.iter().map(|&s| word(s, probable)).collect();
        TimedSegment {
            start: words[0].start,
            end: words.last().unwrap().end,
            text_tokens: vec![1; words.len()],
            words,
        }
    }

    /// The window at 10 s of an input of `content_s` seconds.
    fn window(content_s: f64) -> (WindowSpan, usize) {
        let content_frames = (content_s * 100.0) as usize;
        let size = N_FRAMES.min(content_frames - 1000);
        let span = WindowSpan {
            seek: 1000,
            size,
            time_offset: 10.0,
            end_time: 40.0,
            duration: size as f64 / 100.0,
        };
        (span, content_frames)
    }

    /// `skip_hallucinations` on the window at 10 s of a 100 s input, after speech that
    /// ended at 10 s, with the word rule's seek at the last word's end.
    fn skip(segments: &[TimedSegment], threshold: f64) -> (usize, Option<usize>) {
        let (span, content_frames) = window(100.0);
        let seek = seconds_to_frames(timing::last_end(segments).unwrap());
        skip_hallucinations(
            segments,
            &span,
            threshold,
            10.0,
            false,
            content_frames,
            seek,
        )
    }

    #[test]
    fn after_speech_the_next_window_starts_at_its_end_or_at_the_window_end() {
        let speech = [segment(&[10.0, 12.0, 14.5], true)];
        // 25 s of the window left after the last word: longer than the threshold.
        assert_eq!(skip(&speech, 2.0), (1500, Some(1)));
        // Not longer: the window's end.
        assert_eq!(skip(&speech, 30.0), (4000, Some(1)));
        // A window whose text ended with a single timestamp keeps its seek (the window's end).
        let (span, frames) = window(100.0);
        assert_eq!(
            skip_hallucinations(&speech, &span, 2.0, 10.0, true, frames, 4000),
            (4000, Some(1))
        );
    }

    #[test]
    fn a_hallucination_after_a_long_silence_skips_the_silence_and_the_window() {
        let late = [segment(&[13.0], false), segment(&[15.0], true)];
        assert_eq!(skip(&late, 2.0), (1300, None));
        // Within the threshold of the window's start it is judged with its neighbours: 3 s
        // after speech is no silence at a threshold of 5 s, so it stays.
        assert_eq!(skip(&late, 5.0), (1550, Some(2)));
    }

    #[test]
    fn a_hallucination_between_silences_is_dropped_with_what_follows() {
        // Before: within 2 s of the window's start (its only silence); after: nothing else
        // in the window. Dropped, and the next window starts a second into this one or at it.
        assert_eq!(skip(&[segment(&[11.5], false)], 2.0), (1150, Some(0)));
        // Before: 2.5 s after speech; after: 2.5 s before speech.
        let between = [
            segment(&[10.0, 11.5], true),
            segment(&[14.5], false),
            segment(&[17.5], true),
        ];
        assert_eq!(skip(&between, 2.0), (1450, Some(1)));
        // Speech 1 s after it: kept.
        let followed = [
            segment(&[10.0, 11.5], true),
            segment(&[14.5], false),
            segment(&[16.0], true),
        ];
        assert_eq!(skip(&followed, 2.0), (1650, Some(3)));
        // Before: 0.5 s after the speech just before it (not the speech before the window):
        // kept.
        let close = [segment(&[10.0, 19.5], true), segment(&[20.5], false)];
        assert_eq!(skip(&close, 2.0), (2100, Some(2)));
        // After: under 2 s before the window's end.
        let at_end = [segment(&[10.0, 35.5], true), segment(&[38.5], false)];
        assert_eq!(skip(&at_end, 2.0), (3850, Some(1)));
        // After: another hallucination.
        let two = [
            segment(&[10.0, 11.5], true),
            segment(&[14.5], false),
            segment(&[15.5], false),
        ];
        assert_eq!(skip(&two, 2.0), (1450, Some(1)));
    }

    #[test]
    fn a_hallucination_near_the_end_of_the_input_ends_the_transcription() {
        // The last window of a 39.5 s input; the hallucination ends 1 s before the input.
        let (span, content_frames) = window(39.5);
        let segments = [segment(&[10.0, 30.0], true), segment(&[38.0], false)];
        assert_eq!(
            skip_hallucinations(&segments, &span, 2.0, 10.0, false, content_frames, 3850),
            (3950, Some(1))
        );
    }
}
