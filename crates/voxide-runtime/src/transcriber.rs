//! The speech-to-text interface shared by model families.

use crate::error::{Error, Result};
use candle_core::DType;
use voxide_models::batching::BatchStats;
use voxide_models::voxtral::{self, GenerateOptions, Voxtral};
use voxide_models::voxtral_realtime::{RealtimeStream, StreamOptions, VoxtralRealtime};
use voxide_models::whisper::decoding::{DecodingOptions, Suppress, Task};
use voxide_models::whisper::tokenizer::language_code;
use voxide_models::whisper::{TranscribeOptions, WhisperPipeline};
use voxide_models::{clip_stretches, Progress, Timings, Transcript};
use voxide_nn::kernels::machine::CycleBytes;
pub use voxide_nn::linear::WeightFormat;

/// A transcription request, independent of the model family.
#[derive(Clone, Debug)]
pub struct TranscribeRequest {
    /// Language code or English name; `None` detects it.
    pub language: Option<String>,
    /// Translate into English instead of transcribing.
    pub translate: bool,
    /// Produce segment timestamps.
    pub timestamps: bool,
    /// Time every word (Whisper; openai-whisper's `word_timestamps`).
    pub word_timestamps: bool,
    /// With word timestamps: punctuation merged into the following word (default
    /// openai-whisper's).
    pub prepend_punctuations: Option<String>,
    /// With word timestamps: punctuation merged into the preceding word.
    pub append_punctuations: Option<String>,
    /// Initial prompt (vocabulary, spelling, style).
    pub prompt: Option<String>,
    /// Whisper: the prompt at the head of every window's, not only the first's
    /// (openai-whisper's `carry_initial_prompt`).
    pub carry_initial_prompt: bool,
    /// The stretches to transcribe, in seconds: start, end, start, end, … (the last stretch of
    /// an odd count runs to the end; openai-whisper's `clip_timestamps`). Whisper carries its
    /// text from one into the next; Voxtral transcribes each alone, in order.
    pub clip_timestamps: Vec<f64>,
    /// Whisper, with word timestamps: skip silences longer than this (s) around segments that
    /// look like hallucinations (openai-whisper's `hallucination_silence_threshold`).
    pub hallucination_silence_threshold: Option<f64>,
    /// Whisper: tokens never sampled (openai-whisper's `suppress_tokens`; default its `"-1"`,
    /// `None` its `""`).
    pub suppress_tokens: Option<Suppress>,
    /// Beam search width at temperature 0 (`None` = greedy).
    pub beam_size: Option<usize>,
    /// Candidates sampled at temperature > 0.
    pub best_of: Option<usize>,
    /// Beam-search patience.
    pub patience: Option<f32>,
    /// Ranking length penalty.
    pub length_penalty: Option<f32>,
    /// First decoding temperature.
    pub temperature: f32,
    /// Fallback step: temperatures are `temperature, +inc, …, ≤ 1.0`; 0 disables fallback.
    pub temperature_increment: f32,
    /// Fallback when the compression ratio exceeds this.
    pub compression_ratio_threshold: Option<f32>,
    /// Fallback when the mean log-probability is below this.
    pub logprob_threshold: Option<f32>,
    /// Treat a window as silence above this no-speech probability.
    pub no_speech_threshold: Option<f32>,
    /// Condition each window on the text of the previous ones.
    pub condition_on_previous_text: bool,
    /// Maximum tokens per window (default: the model's limit).
    pub max_new_tokens: Option<usize>,
    /// Seed for sampling at temperature > 0.
    pub seed: u64,
    /// Never stop on end-of-text: decode `max_new_tokens` per window (benchmarks).
    pub ignore_eot: bool,
    /// Streaming models: transcription delay in ms (default: the model's, 480 for Voxtral
    /// Realtime).
    pub delay_ms: Option<u32>,
    /// Voxtral models: precision of the KV caches (default: the model's, f16 beside narrow or
    /// quantized weights, f32 beside f32 ones).
    pub kv_dtype: Option<DType>,
    /// Transcribe chunks each on its own, this many at a time, side by side
    /// ([`Transcriber::transcribe_chunks`]): with voice activity detection
    /// ([`crate::transcribe_speech`]) Whisper's chunks of up to 30 s of the speech joined
    /// (faster-whisper's `BatchedInferencePipeline`) and Voxtral Mini 3B's stretches, or the
    /// stretches of `clip_timestamps`. `None`: Whisper hears the speech (or the clips) window
    /// after window, Voxtral Mini 3B one stretch after another.
    pub batch_size: Option<usize>,
}

impl Default for TranscribeRequest {
    fn default() -> Self {
        Self {
            language: None,
            translate: false,
            timestamps: true,
            word_timestamps: false,
            prepend_punctuations: None,
            append_punctuations: None,
            prompt: None,
            carry_initial_prompt: false,
            clip_timestamps: Vec::new(),
            hallucination_silence_threshold: None,
            suppress_tokens: Some(Suppress::default()),
            beam_size: None,
            best_of: None,
            patience: None,
            length_penalty: None,
            temperature: 0.0,
            temperature_increment: 0.0,
            compression_ratio_threshold: Some(2.4),
            logprob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
            condition_on_previous_text: true,
            max_new_tokens: None,
            seed: 0,
            ignore_eot: false,
            delay_ms: None,
            kv_dtype: None,
            batch_size: None,
        }
    }
}

/// Most chunks a batched transcription decodes at once: each holds its window's
/// cross-attention keys and values and its candidates' caches (large-v3: ~250 MB a chunk).
pub const MAX_BATCH_SIZE: usize = 64;

/// Most fallback temperatures a schedule may hold (openai-whisper's default increment of 0.2
/// makes 5): an increment of 1e-30 would make 10^30, and one below f32's resolution at the
/// temperature none that reach 1.0.
pub const MAX_FALLBACK_TEMPERATURES: usize = 100;

impl TranscribeRequest {
    /// The temperature schedule: `temperature` then steps of `temperature_increment` up to 1.0
    /// (at most [`MAX_FALLBACK_TEMPERATURES`] steps; `check` refuses increments that need more).
    pub fn temperatures(&self) -> Vec<f32> {
        let mut out = vec![self.temperature];
        if self.temperature_increment > 0.0 {
            for i in 1..=MAX_FALLBACK_TEMPERATURES {
                let t = self.temperature + i as f32 * self.temperature_increment;
                if t > 1.0 + 1e-6 {
                    break;
                }
                out.push((t * 1e4).round() / 1e4);
            }
        }
        out
    }

    /// The numbers any model would refuse, checked without one (a front end's flags before a
    /// model of several GB loads): candidates, the fallback's increment and steps, and the
    /// decoding thresholds. Each model's `check` adds its own rules.
    pub fn check_numbers(&self) -> Result<()> {
        if self.beam_size == Some(0) || self.best_of == Some(0) {
            return Err(Error::InvalidRequest(
                "--beam-size and --best-of must be at least 1".into(),
            ));
        }
        if self.beam_size.max(self.best_of) > Some(MAX_CANDIDATES) {
            return Err(Error::InvalidRequest(format!(
                "--beam-size and --best-of take at most {MAX_CANDIDATES} (each candidate holds its own KV cache)"
            )));
        }
        self.check_batch()?;
        if !(self.temperature_increment.is_finite() && self.temperature_increment >= 0.0) {
            return Err(Error::InvalidRequest(
                "--temperature-increment must be a number ≥ 0".into(),
            ));
        }
        self.check_fallbacks()?;
        voxide_models::whisper::transcribe::check_long_form_options(
            &self.clip_timestamps,
            self.hallucination_silence_threshold,
            self.word_timestamps,
        )?;
        check_decoding_numbers(self)
    }

    /// A batch size of 1 to [`MAX_BATCH_SIZE`], without the options that follow one window
    /// after another.
    fn check_batch(&self) -> Result<()> {
        if let Some(batch) = self.batch_size {
            if !(1..=MAX_BATCH_SIZE).contains(&batch) {
                return Err(Error::InvalidRequest(format!(
                    "--batch-size takes 1 to {MAX_BATCH_SIZE} chunks (each holds its own audio's \
                     keys and values)"
                )));
            }
            if self.hallucination_silence_threshold.is_some() {
                return Err(Error::InvalidRequest(
                    "--batch-size does not take --hallucination-silence-threshold (it follows \
                     one window after another)"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// The fallback temperatures `temperature_increment` asks for, refused above
    /// [`MAX_FALLBACK_TEMPERATURES`].
    fn check_fallbacks(&self) -> Result<()> {
        let steps = if self.temperature_increment > 0.0 {
            ((1.0 + 1e-6 - self.temperature) / self.temperature_increment).floor()
        } else {
            0.0
        };
        if steps > MAX_FALLBACK_TEMPERATURES as f32 {
            return Err(Error::InvalidRequest(format!(
                "--temperature-increment {} makes {steps:.0} fallback temperatures; at most \
                 {MAX_FALLBACK_TEMPERATURES} (0.2, openai-whisper's default, makes 5)",
                self.temperature_increment
            )));
        }
        Ok(())
    }

    /// Options only Whisper's decoding takes, refused by name for `model`.
    fn refuse_whisper_options(&self, model: &str) -> Result<()> {
        let asked = [
            (
                self.temperature_increment > 0.0,
                "no temperature fallback",
                "--temperature-increment",
            ),
            (
                self.carry_initial_prompt,
                "no carried prompt",
                "--carry-initial-prompt",
            ),
            (
                self.hallucination_silence_threshold.is_some(),
                "no hallucination skipping",
                "--hallucination-silence-threshold",
            ),
            (
                self.suppress_tokens != Some(Suppress::default()),
                "no list of suppressed tokens",
                "--suppress-tokens",
            ),
        ];
        match asked.into_iter().find(|(asked, ..)| *asked) {
            Some((_, what, flag)) => Err(Error::InvalidRequest(format!(
                "{model} has {what} ({flag}: Whisper's)"
            ))),
            None => Ok(()),
        }
    }
}

/// A loaded speech-to-text model. Immutable and thread-safe: one instance serves any number
/// of requests; each call keeps its own decoding state.
pub trait Transcriber: Send + Sync {
    /// Sample rate the model's input must have.
    fn sample_rate(&self) -> u32;
    /// Refuses a request this model cannot serve, before any audio: what `transcribe` and
    /// `stream` would refuse (a server checks a realtime session's settings with it).
    fn check(&self, request: &TranscribeRequest) -> Result<()>;
    /// Transcribes mono samples at [`Self::sample_rate`]; `progress` hears how far it got.
    fn transcribe(
        &self,
        samples: &[f32],
        request: &TranscribeRequest,
        progress: &mut dyn FnMut(Progress<'_>) -> bool,
    ) -> Result<(Transcript, Timings)>;

    /// Bytes of weights one decoder step reads, by residency, where the model knows it (the
    /// bandwidth floor of a step: the streamed bytes over the memory's read bandwidth, the
    /// cached ones over the caches').
    fn decoder_step_bytes(&self) -> Option<CycleBytes> {
        None
    }

    /// A live stream that decodes as audio arrives, for models that stream natively
    /// (Voxtral Realtime); `None` for models that need the whole clip (Whisper).
    fn stream(&self, _request: &TranscribeRequest) -> Option<Result<Box<dyn SpeechStream + '_>>> {
        None
    }

    /// The model that also answers questions about audio (Voxtral Mini 3B: `voxide ask`, a
    /// server's chat completions); `None` for models that only transcribe.
    fn chat(&self) -> Option<&Voxtral> {
        None
    }

    /// Every language's probability, the most likely first, from the first 30 s of mono samples
    /// at [`Self::sample_rate`] (Whisper's language detection); `None` for models that do not
    /// detect a language.
    fn detect_language(&self, _samples: &[f32]) -> Option<Result<Vec<(&'static str, f32)>>> {
        None
    }

    /// Transcribes each of `chunks` (ranges of `samples`) on its own, `request.batch_size` of
    /// them at a time, one transcript at the times of `samples` (Whisper: faster-whisper's
    /// batched pipeline, at most 30 s heard of each; Voxtral Mini 3B: each chunk's prompt, side
    /// by side); refused by models that do not batch.
    fn transcribe_chunks(
        &self,
        _samples: &[f32],
        _chunks: &[std::ops::Range<usize>],
        _request: &TranscribeRequest,
        _progress: &mut dyn FnMut(Progress<'_>) -> bool,
    ) -> Result<(Transcript, Timings)> {
        Err(Error::InvalidRequest(
            "this model does not transcribe in batches (--batch-size: Whisper's and Voxtral \
             Mini 3B's)"
                .into(),
        ))
    }

    /// Whether its segments carry times of their own within the audio (Whisper's timestamp
    /// tokens, Voxtral Realtime's steps); Voxtral Mini 3B's one segment spans the clip.
    fn times_segments(&self) -> bool {
        true
    }

    /// Decodes concurrent [`Self::transcribe`] calls and streams together, up to `max` a batch
    /// (a server's throughput under load; each transcript the same as alone; 1 turns it off):
    /// Whisper their windows, the Voxtrals their decoder steps (at most 8 a batch; Voxtral Mini
    /// 3B's chat requests too).
    fn batch_concurrent_decodes(&mut self, max: usize);

    /// What concurrent calls have decoded together, where [`Self::batch_concurrent_decodes`]
    /// is on.
    fn batch_stats(&self) -> Option<BatchStats>;
}

/// Live transcription of one stretch of audio (see [`Transcriber::stream`]).
pub trait SpeechStream: Send {
    /// Appends mono samples at the model's rate; returns the text decoded because of them
    /// (often empty).
    fn push(&mut self, samples: &[f32]) -> Result<String>;
    /// Ends the input and returns the rest of the text.
    fn finish(&mut self) -> Result<String>;
    /// Seconds of the input that the text so far covers.
    fn decoded_until_s(&self) -> f64;
}

impl SpeechStream for RealtimeStream<'_> {
    fn push(&mut self, samples: &[f32]) -> Result<String> {
        Ok(RealtimeStream::push(self, samples)?)
    }

    fn finish(&mut self) -> Result<String> {
        Ok(RealtimeStream::finish(self)?)
    }

    fn decoded_until_s(&self) -> f64 {
        self.tokens().last().map_or(0.0, |t| t.time)
    }
}

/// A request field the model cannot take, named as the API's field (`language`, `prompt`,
/// …) so that a server can point at it.
fn field_error(field: &'static str, message: String) -> Error {
    Error::Model(voxide_models::Error::InvalidField { field, message })
}

/// Voxtral Mini 3B's `lang:xx`: an ISO 639-1 code, as mistral-common validates it (Whisper's
/// language names taken too); `None` (or `auto`) leaves the language to the model.
fn voxtral_language(request: &TranscribeRequest) -> Result<Option<&'static str>> {
    match request.language.as_deref() {
        None | Some("auto") => Ok(None),
        Some(lang) => voxtral::prompt::transcription_language(lang, language_code(lang))
            .map(Some)
            .ok_or_else(|| {
                field_error(
                    "language",
                    format!("unknown language {lang:?}; use an ISO 639-1 code such as en, de, fr, or auto"),
                )
            }),
    }
}

/// The request's language as an ISO 639-1 code; `None` (or `auto`) detects it.
fn requested_language(request: &TranscribeRequest) -> Result<Option<&'static str>> {
    match request.language.as_deref() {
        None | Some("auto") => Ok(None),
        Some(lang) => language_code(lang).map(Some).ok_or_else(|| {
            field_error(
                "language",
                format!("unknown language {lang:?}; use a code such as en, de, fr, or auto"),
            )
        }),
    }
}

impl Transcriber for WhisperPipeline {
    fn sample_rate(&self) -> u32 {
        voxide_models::whisper::SAMPLE_RATE
    }

    fn batch_concurrent_decodes(&mut self, max_windows: usize) {
        WhisperPipeline::batch_concurrent_windows(self, max_windows);
    }

    fn batch_stats(&self) -> Option<BatchStats> {
        WhisperPipeline::batch_stats(self)
    }

    fn decoder_step_bytes(&self) -> Option<CycleBytes> {
        Some(self.model().decoder_step_bytes())
    }

    fn detect_language(&self, samples: &[f32]) -> Option<Result<Vec<(&'static str, f32)>>> {
        Some(WhisperPipeline::detect_language(self, samples).map_err(Error::from))
    }

    fn check(&self, request: &TranscribeRequest) -> Result<()> {
        let special = *self.rules().special();
        if let Some(code) = requested_language(request)? {
            if special.language_token(code).is_none() {
                return Err(field_error(
                    "language",
                    format!("this model has no language {code:?}"),
                ));
            }
            if !special.multilingual && code != "en" {
                return Err(field_error(
                    "language",
                    format!("this model is English-only; it cannot transcribe {code:?}"),
                ));
            }
        }
        if request.translate && !special.multilingual {
            return Err(Error::InvalidRequest(
                "this model is English-only; it cannot translate".into(),
            ));
        }
        request.check_numbers()?;
        if !(0.0..=1.0).contains(&request.temperature) {
            return Err(Error::InvalidRequest(
                "temperatures must lie in [0, 1]".into(),
            ));
        }
        if request.delay_ms.is_some() || request.kv_dtype.is_some() {
            return Err(Error::InvalidRequest(
                "Whisper takes neither --delay-ms nor --kv-precision (Voxtral's options; Whisper's KV caches follow its weights)".into(),
            ));
        }
        Ok(())
    }

    fn transcribe(
        &self,
        samples: &[f32],
        request: &TranscribeRequest,
        progress: &mut dyn FnMut(Progress<'_>) -> bool,
    ) -> Result<(Transcript, Timings)> {
        if request.batch_size.is_some() {
            // faster-whisper's batched pipeline with clip timestamps: each clip a chunk (the
            // request checked there).
            return transcribe_clips(self, samples, request, progress);
        }
        self.check(request)?;
        let opts = whisper_options(request)?;
        Ok(WhisperPipeline::transcribe(self, samples, &opts, progress)?)
    }

    fn transcribe_chunks(
        &self,
        samples: &[f32],
        chunks: &[std::ops::Range<usize>],
        request: &TranscribeRequest,
        progress: &mut dyn FnMut(Progress<'_>) -> bool,
    ) -> Result<(Transcript, Timings)> {
        self.check(request)?;
        let opts = whisper_options(request)?;
        let batch = request.batch_size.unwrap_or(1);
        Ok(WhisperPipeline::transcribe_chunks(
            self, samples, chunks, &opts, batch, progress,
        )?)
    }
}

/// A Whisper request as openai-whisper's `transcribe` options.
fn whisper_options(request: &TranscribeRequest) -> Result<TranscribeOptions> {
    let language = requested_language(request)?.map(str::to_string);
    let mut opts = TranscribeOptions {
        decode: DecodingOptions {
            task: if request.translate {
                Task::Translate
            } else {
                Task::Transcribe
            },
            language,
            sample_len: request.max_new_tokens,
            beam_size: request.beam_size,
            best_of: request.best_of,
            patience: request.patience,
            length_penalty: request.length_penalty,
            without_timestamps: !request.timestamps,
            suppress_tokens: request.suppress_tokens.clone(),
            seed: request.seed,
            ignore_eot: request.ignore_eot,
            ..Default::default()
        },
        temperatures: request.temperatures(),
        compression_ratio_threshold: request.compression_ratio_threshold,
        logprob_threshold: request.logprob_threshold,
        no_speech_threshold: request.no_speech_threshold,
        condition_on_previous_text: request.condition_on_previous_text,
        initial_prompt: request.prompt.clone(),
        carry_initial_prompt: request.carry_initial_prompt,
        word_timestamps: request.word_timestamps,
        clip_timestamps: request.clip_timestamps.clone(),
        hallucination_silence_threshold: request.hallucination_silence_threshold,
        ..TranscribeOptions::default()
    };
    if let Some(p) = &request.prepend_punctuations {
        opts.prepend_punctuations = p.clone();
    }
    if let Some(p) = &request.append_punctuations {
        opts.append_punctuations = p.clone();
    }
    Ok(opts)
}

/// Voxtral Mini 3B's decoding options for a request, the token budget aside.
fn voxtral_options(request: &TranscribeRequest) -> GenerateOptions {
    GenerateOptions {
        temperature: request.temperature,
        seed: request.seed,
        ignore_eos: request.ignore_eot,
        kv_dtype: request.kv_dtype,
        ..GenerateOptions::default()
    }
}

/// Voxtral Mini 3B's budget of new tokens for a clip of `samples`: the request's, else the
/// clip's default.
fn voxtral_budget(request: &TranscribeRequest, samples: usize) -> usize {
    let seconds = samples as f64 / voxtral::SAMPLE_RATE as f64;
    request
        .max_new_tokens
        .unwrap_or_else(|| voxtral::default_max_new_tokens(seconds))
}

/// Most beams or sampled candidates a Whisper request may ask for: each holds a KV cache and
/// decodes beside the others (openai-whisper suggests 5; whisper.cpp takes at most 8).
pub const MAX_CANDIDATES: usize = 16;

/// The numbers of a Whisper request that openai-whisper reads as given: each must be a finite
/// value in its range, or a NaN would silently switch a rule off (a NaN threshold never fires).
fn check_decoding_numbers(request: &TranscribeRequest) -> Result<()> {
    let bad =
        |what: &str, range: &str| Err(Error::InvalidRequest(format!("{what} must be {range}")));
    if request
        .patience
        .is_some_and(|p| !(p.is_finite() && p > 0.0))
    {
        return bad("--patience", "a number above 0");
    }
    if request
        .length_penalty
        .is_some_and(|a| !(a.is_finite() && a >= 0.0))
    {
        return bad("--length-penalty", "a number of at least 0");
    }
    if request
        .compression_ratio_threshold
        .is_some_and(|r| !(r.is_finite() && r > 0.0))
    {
        return bad("--compression-ratio-threshold", "a number above 0");
    }
    if request.logprob_threshold.is_some_and(|l| !l.is_finite()) {
        return bad("--logprob-threshold", "a finite number");
    }
    if request
        .no_speech_threshold
        .is_some_and(|p| !(0.0..=1.0).contains(&p))
    {
        return bad("--no-speech-threshold", "a probability in [0, 1]");
    }
    Ok(())
}

impl Transcriber for VoxtralRealtime {
    fn sample_rate(&self) -> u32 {
        voxide_models::voxtral_realtime::SAMPLE_RATE
    }

    fn transcribe(
        &self,
        samples: &[f32],
        request: &TranscribeRequest,
        progress: &mut dyn FnMut(Progress<'_>) -> bool,
    ) -> Result<(Transcript, Timings)> {
        if !request.clip_timestamps.is_empty() {
            return transcribe_clips(self, samples, request, progress);
        }
        let options = realtime_options(self, request)?;
        Ok(VoxtralRealtime::transcribe(
            self, samples, options, progress,
        )?)
    }

    fn check(&self, request: &TranscribeRequest) -> Result<()> {
        let unsupported = |field, what: &str| {
            Err(field_error(field, format!(
                "Voxtral Realtime does not support {what}: it transcribes greedily, in the language spoken (a language hint is ignored)"
            )))
        };
        if request.translate {
            return Err(Error::InvalidRequest(
                "Voxtral Realtime does not support translation: it transcribes in the language spoken".into(),
            ));
        }
        if request.word_timestamps {
            return unsupported(
                "timestamp_granularities",
                "word timestamps (Whisper models do)",
            );
        }
        if request.prompt.is_some() {
            return unsupported("prompt", "prompts");
        }
        if request.beam_size.is_some() || request.best_of.is_some() || request.temperature > 0.0 {
            return unsupported("temperature", "beam search or sampling");
        }
        if request.max_new_tokens.is_some() || request.ignore_eot {
            return Err(Error::InvalidRequest(
                "Voxtral Realtime takes no token limit (--max-new-tokens, bench's --fixed-steps): it transcribes the whole stream".into(),
            ));
        }
        request.refuse_whisper_options("Voxtral Realtime")?;
        if request.batch_size.is_some() {
            return Err(Error::InvalidRequest(
                "Voxtral Realtime has no batched transcription (--batch-size: Whisper's and \
                 Voxtral Mini 3B's)"
                    .into(),
            ));
        }
        // Ignored, but a code no model knows is a mistake worth saying.
        requested_language(request)?;
        Ok(())
    }

    fn decoder_step_bytes(&self) -> Option<CycleBytes> {
        Some(self.network().decoder_step_bytes())
    }

    fn batch_concurrent_decodes(&mut self, max_rows: usize) {
        VoxtralRealtime::batch_concurrent_steps(self, max_rows);
    }

    fn batch_stats(&self) -> Option<BatchStats> {
        VoxtralRealtime::batch_stats(self)
    }

    /// As `voxide stream`: greedy, restarting after end-of-stream on the audio that follows.
    fn stream(&self, request: &TranscribeRequest) -> Option<Result<Box<dyn SpeechStream + '_>>> {
        let options = match realtime_options(self, request) {
            Ok(options) => StreamOptions {
                restart_on_eos: true,
                ..options
            },
            Err(e) => return Some(Err(e)),
        };
        Some(
            VoxtralRealtime::stream(self, options)
                .map(|s| Box::new(s) as Box<dyn SpeechStream + '_>)
                .map_err(Error::from),
        )
    }
}

/// `request.clip_timestamps` for a model that transcribes each stretch alone (both Voxtrals,
/// and any model with a batch size): the stretches of `samples` they name, in order, each
/// transcribed on its own with its times those of `samples` ([`crate::transcribe_stretches`],
/// or [`Transcriber::transcribe_chunks`] in batches). Whisper's windows without a batch size
/// instead carry their text from one clip into the next, as openai-whisper's.
fn transcribe_clips(
    model: &dyn Transcriber,
    samples: &[f32],
    request: &TranscribeRequest,
    progress: &mut dyn FnMut(Progress<'_>) -> bool,
) -> Result<(Transcript, Timings)> {
    model.check(request)?;
    let clips = &request.clip_timestamps;
    if clips.is_empty() {
        return Err(Error::InvalidRequest(
            "--batch-size transcribes chunks (the speech that --vad finds, or the stretches of \
             --clip-timestamps) or several files at once"
                .into(),
        ));
    }
    // Each clip's start against the end before it.
    for (i, pair) in clips.windows(2).enumerate().skip(1).step_by(2) {
        if pair[1] < pair[0] {
            return Err(Error::InvalidRequest(format!(
                "clips are transcribed in order: clip {} starts ({} s) before clip {} ends ({} s)",
                i / 2 + 2,
                pair[1],
                i / 2 + 1,
                pair[0]
            )));
        }
    }
    let rate = model.sample_rate() as f64;
    let stretches: Vec<_> = clip_stretches(clips, rate, samples.len())
        .into_iter()
        .filter(|stretch| !stretch.is_empty())
        .collect();
    let whole = TranscribeRequest {
        clip_timestamps: Vec::new(),
        ..request.clone()
    };
    match request.batch_size {
        Some(_) => model.transcribe_chunks(samples, &stretches, &whole, progress),
        None => crate::transcribe_stretches(model, samples, &stretches, &whole, progress),
    }
}

/// The model's default stream options with the request's delay and KV precision, once the
/// model has accepted the request.
fn realtime_options(model: &VoxtralRealtime, request: &TranscribeRequest) -> Result<StreamOptions> {
    model.check(request)?;
    let defaults = model.default_options();
    Ok(StreamOptions {
        delay_ms: request.delay_ms.unwrap_or(defaults.delay_ms),
        kv_dtype: request.kv_dtype.or(defaults.kv_dtype),
        ..defaults
    })
}

/// Voxtral Mini 3B: one prompt for the whole clip (30 s windows encoded separately), greedy
/// or sampled. Translation goes through the chat prompt: "Translate this audio into
/// {language}." with `language` the target (default English).
impl Transcriber for Voxtral {
    fn sample_rate(&self) -> u32 {
        voxtral::SAMPLE_RATE
    }

    fn chat(&self) -> Option<&Voxtral> {
        Some(self)
    }

    fn times_segments(&self) -> bool {
        false
    }

    fn transcribe(
        &self,
        samples: &[f32],
        request: &TranscribeRequest,
        progress: &mut dyn FnMut(Progress<'_>) -> bool,
    ) -> Result<(Transcript, Timings)> {
        if !request.clip_timestamps.is_empty() || request.batch_size.is_some() {
            return transcribe_clips(self, samples, request, progress);
        }
        self.check(request)?;
        let language = voxtral_language(request)?;
        let options = GenerateOptions {
            max_new_tokens: voxtral_budget(request, samples.len()),
            ..voxtral_options(request)
        };
        let result = if request.translate {
            Voxtral::translate(self, samples, language.unwrap_or("en"), &options, progress)
        } else {
            Voxtral::transcribe(self, samples, language, &options, progress)
        };
        Ok(result?)
    }

    /// Runs of consecutive chunks of one window count, `request.batch_size` at most, each
    /// run's chunks transcribed side by side ([`Voxtral::transcribe_batch`]).
    fn transcribe_chunks(
        &self,
        samples: &[f32],
        chunks: &[std::ops::Range<usize>],
        request: &TranscribeRequest,
        progress: &mut dyn FnMut(Progress<'_>) -> bool,
    ) -> Result<(Transcript, Timings)> {
        self.check(request)?;
        let language = voxtral_language(request)?;
        let target = request.translate.then(|| language.unwrap_or("en"));
        let options = voxtral_options(request);
        let batch = request.batch_size.unwrap_or(1);
        let mut transcript = Transcript {
            duration: samples.len() as f64 / voxtral::SAMPLE_RATE as f64,
            ..Transcript::default()
        };
        let mut timings = Timings::default();
        let mut done = 0;
        while done < chunks.len() {
            let windows = Voxtral::windows(chunks[done].len());
            let run = chunks[done..]
                .iter()
                .take(batch)
                .take_while(|c| Voxtral::windows(c.len()) == windows)
                .count();
            let part = &chunks[done..done + run];
            let clips: Vec<&[f32]> = part.iter().map(|c| &samples[c.clone()]).collect();
            let budgets: Vec<usize> = part
                .iter()
                .map(|c| voxtral_budget(request, c.len()))
                .collect();
            let said = {
                let so_far = &transcript.segments;
                let fraction = done as f64 / chunks.len() as f64;
                self.transcribe_batch(&clips, language, target, &budgets, &options, &mut |_| {
                    progress(Progress {
                        fraction,
                        segments: so_far,
                        pending: "",
                    })
                })?
            };
            for (stretch, (said, t)) in part.iter().zip(said) {
                timings.add(&t);
                crate::vad::append_stretch(&mut transcript, said, stretch, self.sample_rate());
            }
            done += run;
            let go_on = progress(Progress {
                fraction: done as f64 / chunks.len() as f64,
                segments: &transcript.segments,
                pending: "",
            });
            if !go_on {
                return Err(Error::Model(voxide_models::Error::Cancelled));
            }
        }
        crate::vad::join_texts(&mut transcript);
        Ok((transcript, timings))
    }

    fn check(&self, request: &TranscribeRequest) -> Result<()> {
        let unsupported = |field, what: &str| {
            Err(field_error(
                field,
                format!("Voxtral Mini 3B does not support {what}"),
            ))
        };
        if request.prompt.is_some() {
            return unsupported("prompt", "prompts (ask it questions with `voxide ask`)");
        }
        if request.word_timestamps {
            return unsupported(
                "timestamp_granularities",
                "word timestamps (Whisper models do)",
            );
        }
        if request.beam_size.is_some() || request.best_of.is_some() {
            return unsupported("beam_size", "beam search or best-of sampling");
        }
        if !(0.0..=2.0).contains(&request.temperature) {
            return Err(field_error(
                "temperature",
                "temperature must lie in [0, 2]".into(),
            ));
        }
        if request.delay_ms.is_some() {
            return unsupported(
                "delay_ms",
                "a transcription delay (--delay-ms: Voxtral Realtime's)",
            );
        }
        request.refuse_whisper_options("Voxtral Mini 3B")?;
        request.check_batch()?;
        voxtral_language(request)?;
        Ok(())
    }

    fn decoder_step_bytes(&self) -> Option<CycleBytes> {
        Some(self.network().decoder_step_bytes())
    }

    fn batch_concurrent_decodes(&mut self, max_rows: usize) {
        Voxtral::batch_concurrent_steps(self, max_rows);
    }

    fn batch_stats(&self) -> Option<BatchStats> {
        Voxtral::batch_stats(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_schedule_matches_openai_whisper() {
        let r = TranscribeRequest {
            temperature_increment: 0.2,
            ..Default::default()
        };
        assert_eq!(r.temperatures(), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(TranscribeRequest::default().temperatures(), vec![0.0]);
        assert!(r.check_fallbacks().is_ok());
    }

    /// An increment too small to reach 1.0 in [`MAX_FALLBACK_TEMPERATURES`] steps is refused
    /// (1e-30 once looped until memory ran out; 1e-9 above 0.5 never moved the temperature).
    #[test]
    fn tiny_temperature_increments_are_refused() {
        let with = |temperature, temperature_increment| TranscribeRequest {
            temperature,
            temperature_increment,
            ..Default::default()
        };
        assert!(with(0.0, 0.01).check_fallbacks().is_ok());
        assert_eq!(with(0.0, 0.01).temperatures().len(), 101);
        for (t, inc) in [(0.0, 0.0099), (0.0, 1e-30), (0.5, 1e-9)] {
            let err = with(t, inc).check_fallbacks().unwrap_err().to_string();
            assert!(err.contains("fallback temperatures; at most 100"), "{err}");
            assert!(with(t, inc).temperatures().len() <= MAX_FALLBACK_TEMPERATURES + 1);
        }
    }

    #[test]
    fn decoding_numbers_outside_their_ranges_are_refused() {
        assert!(check_decoding_numbers(&TranscribeRequest::default()).is_ok());
        let base = TranscribeRequest::default;
        let refused = [
            (
                "--patience",
                TranscribeRequest {
                    patience: Some(0.0),
                    ..base()
                },
            ),
            (
                "--patience",
                TranscribeRequest {
                    patience: Some(f32::NAN),
                    ..base()
                },
            ),
            (
                "--length-penalty",
                TranscribeRequest {
                    length_penalty: Some(-0.5),
                    ..base()
                },
            ),
            (
                "--compression-ratio-threshold",
                TranscribeRequest {
                    compression_ratio_threshold: Some(f32::NAN),
                    ..base()
                },
            ),
            (
                "--logprob-threshold",
                TranscribeRequest {
                    logprob_threshold: Some(f32::NEG_INFINITY),
                    ..base()
                },
            ),
            (
                "--no-speech-threshold",
                TranscribeRequest {
                    no_speech_threshold: Some(5.0),
                    ..base()
                },
            ),
        ];
        for (option, request) in refused {
            let e = check_decoding_numbers(&request).unwrap_err().to_string();
            assert!(e.contains(option), "{e}");
        }
        let fine = TranscribeRequest {
            patience: Some(2.0),
            length_penalty: Some(0.6),
            no_speech_threshold: None,
            ..base()
        };
        assert!(check_decoding_numbers(&fine).is_ok());
    }
}
