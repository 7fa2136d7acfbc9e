//! Voxtral Mini 3B (Mistral, 2507): offline transcription, translation and questions about
//! audio.
//!
//! * [`config`]: `params.json` (Mistral layout) or `config.json` (HF layout) → [`Config`];
//! * [`model`]: the network — Whisper's encoder, the projector, the shared Mistral decoder;
//! * [`prompt`]: transcription and chat prompts as mistral-common builds them.
//!
//! [`Voxtral`] is the loaded model (weights, tokenizer, mel tables), shared by any number of
//! requests; each [`Voxtral::generate`] call keeps its own decoder state.

pub mod config;
pub mod model;
pub mod prompt;

pub use config::{Config, Layout};
pub use model::VoxtralModel;
pub use prompt::{Content, Message, Role};
pub use voxide_nn::sampling::TokenLogprobs;

use crate::batching::{away, BatchStats, StepBatcher, StepMember};
use crate::error::{require, Error};
use crate::mistral_stack::load_network;
use crate::tekken::{Tekken, TekkenDecoder};
use crate::whisper::model::weight_files;
use crate::{Progress, Result, Segment, Timings, Transcript};
use candle_core::{DType, Device, Tensor};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use voxide_audio::WhisperMel;
use voxide_nn::linear::WeightFormat;
use voxide_nn::sampling::{argmax, FrequencyPresencePenalties, Sampler, SamplingParams};
use voxide_nn::transformer::StackState;

/// Input sample rate.
pub const SAMPLE_RATE: u32 = 16_000;

/// Samples per encoder window (30 s).
pub const WINDOW_SAMPLES: usize = 30 * SAMPLE_RATE as usize;

/// Mel frames per encoder window.
const WINDOW_FRAMES: usize = 3000;

/// Prompt positions run through the decoder at once: a block is a GEMM, and the attention
/// scores of a block stay small however long the prompt (30 min of audio is 22 500 tokens).
pub const PREFILL_BLOCK: usize = 512;

/// Default token budget for a clip of `seconds`: speech runs at 2–5 tokens per second, so
/// 10 per second (plus a margin for short clips) never cuts a transcript short.
pub fn default_max_new_tokens(seconds: f64) -> usize {
    64 + (10.0 * seconds).ceil() as usize
}

/// How tokens are chosen.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Tokens generated at most (the prompt excluded).
    pub max_new_tokens: usize,
    /// 0 = greedy; otherwise softmax temperature.
    pub temperature: f32,
    /// Nucleus sampling (1.0 = off).
    pub top_p: f32,
    /// OpenAI's penalties over the generated ids (0 = off; greedy decoding takes them too).
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub seed: u64,
    /// Keep going past end-of-sequence (benchmarks on random weights).
    pub ignore_eos: bool,
    /// Precision of the KV cache (`None`: the model's, [`VoxtralModel::default_kv_dtype`]).
    pub kv_dtype: Option<DType>,
    /// Each generated token's log-probability with this many most likely alternatives
    /// ([`Generation::logprobs`]); `None` computes none.
    pub logprobs: Option<usize>,
    /// Set from another thread to stop the work where it stands (a server's client gone):
    /// checked before each 30 s window of a clip's encoder, between prefill blocks and at each
    /// token ([`Stop::Cancelled`]). A long prompt's prefill runs for minutes otherwise.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl GenerateOptions {
    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 1024,
            temperature: 0.0,
            top_p: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 0,
            ignore_eos: false,
            kv_dtype: None,
            logprobs: None,
            cancel: None,
        }
    }
}

/// What [`Voxtral::generate`] reports as it goes.
#[derive(Clone, Copy, Debug)]
pub enum Decoding<'a> {
    /// A block of the prompt is prefilled (each block but the last).
    Prefilled,
    /// A generated id, with its log-probabilities where [`GenerateOptions::logprobs`] asks.
    Token(u32, Option<&'a TokenLogprobs>),
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stop {
    /// The model said end-of-sequence.
    #[default]
    Eos,
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The token callback asked to stop.
    Cancelled,
}

/// What [`Voxtral::generate`] produced.
#[derive(Clone, Debug, Default)]
pub struct Generation {
    /// Generated ids, the prompt excluded (end-of-sequence excluded too).
    pub ids: Vec<u32>,
    /// Positions of the prompt, its audio tokens included.
    pub prompt_tokens: usize,
    pub stop: Stop,
    pub timings: Timings,
    /// With [`GenerateOptions::logprobs`]: one entry per id of `ids`, from the model's raw
    /// logits (before temperature and penalties, as vLLM's default `raw_logprobs`).
    pub logprobs: Vec<TokenLogprobs>,
}

/// One sequence of a batched generation ([`Voxtral::generate_batch`]).
struct Sequence {
    generation: Generation,
    penalties: FrequencyPresencePenalties,
    /// New tokens at most.
    budget: usize,
    /// Neither ended, cancelled nor at its budget.
    going: bool,
}

/// A loaded Voxtral Mini 3B.
pub struct Voxtral {
    network: VoxtralModel,
    tokenizer: Tekken,
    mel: WhisperMel,
    /// Where concurrent requests' decoder steps are taken together
    /// ([`Self::batch_concurrent_steps`]).
    batcher: Option<StepBatcher<StackState>>,
}

impl Voxtral {
    /// Loads a checkpoint directory in either layout: `consolidated.safetensors` +
    /// `params.json` + `tekken.json` (Mistral) or `model.safetensors` (or shards) +
    /// `config.json` + `tekken.json` (HF). Matrices stay in the checkpoint's precision unless
    /// `weights` says otherwise (int8: the decoder's and the encoder's matrices and the head,
    /// quantized per row at load; a ggml block format: the decoder's); norms, biases,
    /// convolutions and positions are f32.
    pub fn from_dir(dir: &Path, device: &Device, weights: Option<WeightFormat>) -> Result<Self> {
        let config = Config::from_dir(dir)?;
        let files = match config.layout {
            Layout::Mistral => vec![require(dir, "consolidated.safetensors")?],
            Layout::Hf => weight_files(dir)?,
        };
        let tokenizer = Tekken::from_file(require(dir, "tekken.json")?)?;
        let probe = match config.layout {
            Layout::Mistral => "tok_embeddings.weight",
            Layout::Hf => "language_model.model.embed_tokens.weight",
        };
        let network = load_network(&files, probe, weights, device, |vb, quantize| {
            VoxtralModel::load_in_format(vb, config, quantize)
        })?;
        Self::new(network, tokenizer)
    }

    /// Pairs a network with its tokenizer, checking they agree.
    pub fn new(network: VoxtralModel, tokenizer: Tekken) -> Result<Self> {
        let invalid = |message: String| Error::Tokenizer {
            path: tokenizer.path().to_owned(),
            message,
        };
        tokenizer.require_vocab_size(network.config().vocab_size)?;
        let audio = tokenizer.require_special("[AUDIO]")?;
        if audio != network.config().audio_token_id {
            return Err(invalid(format!(
                "[AUDIO] is token {audio}, but the model's audio_token_id is {}",
                network.config().audio_token_id
            )));
        }
        for name in ["[INST]", "[/INST]", "[BEGIN_AUDIO]", "[TRANSCRIBE]"] {
            tokenizer.require_special(name)?;
        }
        // mistral-common prompts `frame_rate · chunk_length_s` audio tokens per window; the
        // network makes `max_source_positions / downsample_factor` (transformers refuses a
        // mismatch when it merges them).
        if let Some(a) = tokenizer.audio() {
            let window_s = a.chunk_length_s.unwrap_or(30.0);
            let tokens = a.frame_rate * window_s;
            let made = network.config().tokens_per_window();
            if a.sampling_rate != SAMPLE_RATE || tokens != made as f64 {
                return Err(invalid(format!(
                    "audio at {} Hz and {} tokens a second make {tokens} tokens per {window_s} s \
                     window; the network makes {made} from 16000 Hz",
                    a.sampling_rate, a.frame_rate
                )));
            }
        }
        let mel = WhisperMel::new(network.config().audio.num_mel_bins);
        Ok(Self {
            network,
            tokenizer,
            mel,
            batcher: None,
        })
    }

    /// Takes the decoder steps of concurrent requests (one audio each) together, up to
    /// `max_rows` a batch ([`StepBatcher`]: each matrix read once for all, each request at its
    /// own position with its own prompt, each generating what it generates alone); their
    /// encoders and prompts run one at a time. 1 turns it off. Set before the model is shared.
    pub fn batch_concurrent_steps(&mut self, max_rows: usize) {
        self.batcher = (max_rows > 1).then(|| StepBatcher::new(max_rows));
    }

    /// What concurrent requests have decoded together, when batching is on.
    pub fn batch_stats(&self) -> Option<BatchStats> {
        self.batcher.as_ref().map(StepBatcher::stats)
    }

    /// Runs `f` where no batch of steps runs, if requests batch.
    fn alone<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.batcher {
            Some(batcher) => batcher.alone(f),
            None => f(),
        }
    }

    pub fn network(&self) -> &VoxtralModel {
        &self.network
    }

    pub fn tokenizer(&self) -> &Tekken {
        &self.tokenizer
    }

    /// Audio tokens per 30 s window (375).
    pub fn tokens_per_window(&self) -> usize {
        self.network.config().tokens_per_window()
    }

    /// Encoder windows a clip of `samples` takes (at least one).
    pub fn windows(samples: usize) -> usize {
        samples.div_ceil(WINDOW_SAMPLES).max(1)
    }

    /// Log-mel windows (k, n_mels, 3000) of 16 kHz `samples`, as transformers' processor
    /// computes them: the clip is zero-padded to whole 30 s windows, the spectrogram is taken
    /// over the whole padded clip (one clamp at its maximum − 8) and cut into windows.
    pub fn features(&self, samples: &[f32]) -> Result<Tensor> {
        if samples.is_empty() {
            return Err(Error::InvalidRequest("the audio is empty".into()));
        }
        let windows = Self::windows(samples.len());
        let mel = self
            .mel
            .log_mel(samples, windows * WINDOW_SAMPLES - samples.len());
        let mut data = Vec::with_capacity(windows * mel.n_mels * WINDOW_FRAMES);
        for w in 0..windows {
            data.extend(mel.window(w * WINDOW_FRAMES, WINDOW_FRAMES).data);
        }
        Ok(Tensor::from_vec(
            data,
            (windows, mel.n_mels, WINDOW_FRAMES),
            self.network.device(),
        )?)
    }

    /// Audio embeddings (375·k, dim) of 16 kHz `samples`: features, encoder, projector, a
    /// 30 s window at a time; `go_on` is asked before each ([`Error::Cancelled`] if it says
    /// no: a long clip's encoder runs for minutes at full size).
    pub fn audio_embeddings(
        &self,
        samples: &[f32],
        timings: &mut Timings,
        go_on: &mut dyn FnMut() -> bool,
    ) -> Result<Tensor> {
        let t0 = Instant::now();
        let features = self.features(samples)?;
        timings.mel_ms += ms(t0);
        let mut embeds = Vec::with_capacity(features.dim(0)?);
        for w in 0..features.dim(0)? {
            if !go_on() {
                return Err(Error::Cancelled);
            }
            let t0 = Instant::now();
            let window = features.narrow(0, w, 1)?;
            let projected = self.alone(|| -> Result<Tensor> {
                let mut trace = self.network.encode(&window, false)?;
                let frames = trace
                    .hidden_states
                    .pop()
                    .expect("the encoder yields its output");
                Ok(self.network.project(&frames)?)
            })?;
            embeds.push(projected);
            timings.encoder_ms += ms(t0);
            timings.encoder_calls += 1;
        }
        Ok(Tensor::cat(&embeds, 0)?)
    }

    /// Generates after `prompt`, whose `[AUDIO]` placeholders take the rows of `audio`
    /// (375·k, dim) in order. The prompt is prefilled in blocks of [`PREFILL_BLOCK`], each
    /// reported to `on_event` ([`Decoding::Prefilled`]); each generated id goes to it as soon
    /// as it exists ([`Decoding::Token`]). `on_event` returns `false` to stop there:
    /// [`Stop::Cancelled`], with the ids so far.
    pub fn generate(
        &self,
        prompt: &[u32],
        audio: &Tensor,
        options: &GenerateOptions,
        on_event: &mut dyn FnMut(Decoding<'_>) -> bool,
    ) -> Result<Generation> {
        self.generate_as(self.join().as_ref(), prompt, audio, options, on_event)
    }

    /// [`Self::generate`] as `member` of the requests whose steps batch.
    fn generate_as(
        &self,
        member: Option<&StepMember<'_, StackState>>,
        prompt: &[u32],
        audio: &Tensor,
        options: &GenerateOptions,
        on_event: &mut dyn FnMut(Decoding<'_>) -> bool,
    ) -> Result<Generation> {
        let mut generations = self.generate_sequences(
            member,
            prompt,
            std::slice::from_ref(audio),
            &[options.max_new_tokens],
            options,
            &mut |_, event| on_event(event),
        )?;
        Ok(generations.pop().expect("one audio, one generation"))
    }

    /// Counts a request of one audio in where requests batch, for the whole of it (encoders,
    /// prompt, steps): batches wait for its steps while it is at work.
    fn join(&self) -> Option<StepMember<'_, StackState>> {
        self.batcher.as_ref().map(StepBatcher::join)
    }

    /// [`Self::generate`] for several audios after one `prompt`, side by side, each with its
    /// own budget of new tokens (`budgets`, in place of `options.max_new_tokens`): one decoder
    /// step runs every sequence still going (the weights read once for all), and each gets the
    /// ids it gets alone (greedy; sampling draws from one generator for all). `on_event` hears
    /// each sequence's tokens with its index, and the prefill's blocks as sequence 0's; a
    /// sequence whose token it refuses stops there ([`Stop::Cancelled`]), a refused block stops
    /// them all. The batch's timings go with the first generation.
    pub fn generate_batch(
        &self,
        prompt: &[u32],
        audios: &[Tensor],
        budgets: &[usize],
        options: &GenerateOptions,
        on_event: &mut dyn FnMut(usize, Decoding<'_>) -> bool,
    ) -> Result<Vec<Generation>> {
        self.generate_sequences(None, prompt, audios, budgets, options, on_event)
    }

    /// [`Self::generate_batch`]; a batch of one audio takes its steps with other requests'
    /// as `member`.
    fn generate_sequences(
        &self,
        member: Option<&StepMember<'_, StackState>>,
        prompt: &[u32],
        audios: &[Tensor],
        budgets: &[usize],
        options: &GenerateOptions,
        on_event: &mut dyn FnMut(usize, Decoding<'_>) -> bool,
    ) -> Result<Vec<Generation>> {
        let started = Instant::now();
        if audios.is_empty() || budgets.len() != audios.len() {
            return Err(Error::InvalidRequest(format!(
                "{} token budgets for {} audios",
                budgets.len(),
                audios.len()
            )));
        }
        let limit = self.network.config().max_positions;
        let budget = budgets.iter().copied().max().unwrap_or(0);
        // Saturating: a budget near usize::MAX (from a request) must fail the check, not wrap.
        let positions = prompt.len().saturating_add(budget);
        if positions > limit {
            return Err(Error::InvalidRequest(format!(
                "the prompt ({} tokens, {} of them audio at 12.5 per second) plus {budget} new \
                 tokens exceed the model's context of {limit} positions; shorten the audio or ask for fewer new tokens",
                prompt.len(),
                audios[0].dim(0)?,
            )));
        }
        let network = &self.network;
        let batch = audios.len();
        // A request of one audio, where requests batch, takes its steps with the others'
        // (its events heard away from the model: a slow client holds no batch up).
        let member = self.batcher.as_ref().zip(member.filter(|_| batch == 1));
        let mut on_event =
            |b: usize, event: Decoding<'_>| away(member.map(|m| m.1), || on_event(b, event));
        let embeds = audios
            .iter()
            .map(|audio| network.merge(prompt, audio))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let embeds = Tensor::cat(&embeds, 0)?;
        let kv_dtype = options
            .kv_dtype
            .unwrap_or_else(|| network.default_kv_dtype());
        let mut state = network.new_state(batch, positions, kv_dtype)?;
        let mut timings = Timings::default();
        let t0 = Instant::now();
        let mut last = None;
        // Blocks of the positions that hold, over the batch, the rows one sequence's blocks
        // hold: the prompt's products stay on the kernels of a few hundred rows.
        let block = (PREFILL_BLOCK / batch).max(1);
        for start in (0..prompt.len()).step_by(block) {
            // The blocks done so far reported before the next one.
            if options.cancelled() || (start > 0 && !on_event(0, Decoding::Prefilled)) {
                let cancelled = Generation {
                    prompt_tokens: prompt.len(),
                    stop: Stop::Cancelled,
                    ..Generation::default()
                };
                return Ok(vec![cancelled; batch]);
            }
            let len = block.min(prompt.len() - start);
            let block = embeds.narrow(1, start, len)?;
            last = Some(self.alone(|| network.decode(&mut state, &block, None))?);
        }
        let last = last.ok_or_else(|| Error::InvalidRequest("the prompt is empty".into()))?;
        let hidden = last.narrow(1, last.dim(1)? - 1, 1)?;
        let mut logits = network.logits(&hidden)?.squeeze(1)?.to_vec2::<f32>()?;
        timings.prefill_ms = ms(t0);
        timings.prefills = 1;
        let sampling = (options.temperature > 0.0).then_some(SamplingParams {
            temperature: options.temperature,
            top_k: 0,
            top_p: options.top_p,
        });
        let mut sampler = Sampler::new(options.seed);
        let eos = self.tokenizer.eos();
        let mut sequences: Vec<Sequence> = budgets
            .iter()
            .map(|&budget| Sequence {
                generation: Generation {
                    prompt_tokens: prompt.len(),
                    stop: Stop::MaxTokens,
                    ..Generation::default()
                },
                penalties: FrequencyPresencePenalties::new(
                    options.frequency_penalty,
                    options.presence_penalty,
                ),
                budget,
                going: budget > 0,
            })
            .collect();
        while sequences.iter().any(|s| s.going) {
            // Around the timed part, as Whisper's steps (`whisper::decoding`).
            let step = sequences[0].generation.ids.len();
            let _span = tracing::trace_span!("decoder_step", step).entered();
            let t0 = Instant::now();
            let mut next = Vec::with_capacity(batch);
            let rows = std::mem::take(&mut logits);
            for (b, (sequence, mut logits)) in sequences.iter_mut().zip(rows).enumerate() {
                if !sequence.going {
                    // A finished sequence keeps its row (its output is not read).
                    next.push(eos);
                    continue;
                }
                // The raw row, before the penalties change it (only when asked: 512 KB a step).
                let raw = options.logprobs.map(|top| (logits.clone(), top));
                sequence.penalties.apply(&mut logits);
                let id = match sampling {
                    Some(p) => sampler.sample(&logits, p) as u32,
                    None => argmax(&logits) as u32,
                };
                if timings.first_token_ms.is_none() {
                    timings.first_token_ms = Some(ms(started));
                }
                next.push(id);
                let generation = &mut sequence.generation;
                if id == eos && !options.ignore_eos {
                    generation.stop = Stop::Eos;
                    sequence.going = false;
                    continue;
                }
                generation.ids.push(id);
                sequence.penalties.push(id);
                let entry = raw.map(|(raw, top)| TokenLogprobs::of(&raw, id, top));
                let go_on =
                    on_event(b, Decoding::Token(id, entry.as_ref())) && !options.cancelled();
                generation.logprobs.extend(entry);
                if !go_on {
                    generation.stop = Stop::Cancelled;
                    sequence.going = false;
                } else if generation.ids.len() == sequence.budget {
                    sequence.going = false;
                }
            }
            if !sequences.iter().any(|s| s.going) {
                break;
            }
            let x = network.embed(&next)?.reshape((batch, 1, ()))?;
            logits = match &member {
                Some((batcher, member)) => vec![batcher.step(member, network, &mut state, x)?],
                None => {
                    let hidden = network.decode(&mut state, &x, None)?;
                    network.logits(&hidden)?.squeeze(1)?.to_vec2::<f32>()?
                }
            };
            timings.steps_ms += ms(t0);
            timings.steps += 1;
            timings.steps_kv_bytes += state.attended_bytes();
        }
        let mut generations: Vec<Generation> =
            sequences.into_iter().map(|s| s.generation).collect();
        generations[0].timings = timings;
        Ok(generations)
    }

    /// Transcribes 16 kHz `samples` in `language` (ISO 639-1) or the language spoken (`None`).
    /// The model emits no timestamps, so the transcript is one segment spanning the clip.
    pub fn transcribe(
        &self,
        samples: &[f32],
        language: Option<&str>,
        options: &GenerateOptions,
        progress: &mut dyn FnMut(Progress<'_>) -> bool,
    ) -> Result<(Transcript, Timings)> {
        let windows = Self::windows(samples.len());
        let prompt =
            prompt::transcription(&self.tokenizer, windows, self.tokens_per_window(), language)?;
        self.transcript(
            samples,
            &prompt,
            language.unwrap_or_default(),
            options,
            progress,
        )
    }

    /// Translates the speech in `samples` into `target` (ISO 639-1) through the chat prompt
    /// `[INST][BEGIN_AUDIO][AUDIO]… Translate this audio into {Language}.[/INST]`.
    pub fn translate(
        &self,
        samples: &[f32],
        target: &str,
        options: &GenerateOptions,
        progress: &mut dyn FnMut(Progress<'_>) -> bool,
    ) -> Result<(Transcript, Timings)> {
        let prompt = self.translation_prompt(Self::windows(samples.len()), target)?;
        self.transcript(samples, &prompt, target, options, progress)
    }

    /// Transcribes each of `clips` (16 kHz samples, all of one number of 30 s windows) on its
    /// own — in `language` or the one spoken, or translated into `target` — all side by side
    /// ([`Self::generate_batch`]), each with its budget of new tokens (`budgets`): what
    /// [`Self::transcribe`] (or [`Self::translate`]) gives each alone, greedy. `progress`
    /// hears of each window and prefill block and each token (with no text: the clips' texts
    /// come at the end); the batch's timings go with the first transcript.
    pub fn transcribe_batch(
        &self,
        clips: &[&[f32]],
        language: Option<&str>,
        target: Option<&str>,
        budgets: &[usize],
        options: &GenerateOptions,
        progress: &mut dyn FnMut(Progress<'_>) -> bool,
    ) -> Result<Vec<(Transcript, Timings)>> {
        let windows = Self::windows(clips.first().map_or(0, |c| c.len()));
        if clips.iter().any(|c| Self::windows(c.len()) != windows) {
            return Err(Error::InvalidRequest(
                "the clips of a batch need one number of 30 s windows (one prompt)".into(),
            ));
        }
        let prompt = match target {
            None => {
                prompt::transcription(&self.tokenizer, windows, self.tokens_per_window(), language)?
            }
            Some(target) => self.translation_prompt(windows, target)?,
        };
        let mut timings = Timings::default();
        let audios = clips
            .iter()
            .map(|clip| {
                self.audio_embeddings(clip, &mut timings, &mut || progress(Progress::NOTHING_YET))
            })
            .collect::<Result<Vec<_>>>()?;
        let generations =
            self.generate_batch(&prompt, &audios, budgets, options, &mut |_, _| {
                progress(Progress::NOTHING_YET)
            })?;
        if generations.iter().any(|g| g.stop == Stop::Cancelled) {
            return Err(Error::Cancelled);
        }
        let said = target.or(language).unwrap_or_default();
        Ok(clips
            .iter()
            .zip(generations)
            .enumerate()
            .map(|(i, (clip, generation))| {
                let timings = match i {
                    0 => with_audio_timings(generation.timings.clone(), &timings),
                    _ => Timings::default(),
                };
                (
                    self.as_transcript(clip.len(), generation.ids, said, options),
                    timings,
                )
            })
            .collect())
    }

    /// The chat prompt that translates `windows` of audio into `target`.
    fn translation_prompt(&self, windows: usize, target: &str) -> Result<Vec<u32>> {
        let messages = [Message {
            role: Role::User,
            content: vec![
                Content::Audio { windows },
                Content::Text(prompt::translation_instruction(target)?),
            ],
        }];
        prompt::chat(&self.tokenizer, &messages, self.tokens_per_window())
    }

    /// Generated `ids` for a clip of `samples` samples as a transcript: one segment spanning
    /// the clip (none without text).
    fn as_transcript(
        &self,
        samples: usize,
        ids: Vec<u32>,
        language: &str,
        options: &GenerateOptions,
    ) -> Transcript {
        let duration = samples as f64 / SAMPLE_RATE as f64;
        let text = self.tokenizer.decode(&ids).trim().to_string();
        let segments = if text.is_empty() {
            Vec::new()
        } else {
            vec![Segment {
                id: 0,
                seek: 0,
                start: 0.0,
                end: duration,
                text: text.clone(),
                tokens: ids.clone(),
                temperature: options.temperature,
                avg_logprob: 0.0,
                compression_ratio: 0.0,
                no_speech_prob: 0.0,
                words: None,
            }]
        };
        Transcript {
            language: language.to_string(),
            duration,
            text,
            segments,
            token_ids: ids,
        }
    }

    /// Runs `prompt` over the clip's audio and wraps the answer as a transcript.
    fn transcript(
        &self,
        samples: &[f32],
        prompt: &[u32],
        language: &str,
        options: &GenerateOptions,
        progress: &mut dyn FnMut(Progress<'_>) -> bool,
    ) -> Result<(Transcript, Timings)> {
        let mut timings = Timings::default();
        let member = self.join();
        // Before the first token, `progress` hears of each window and prefill block, so that
        // a caller gone stops the work there.
        let audio = self.audio_embeddings(samples, &mut timings, &mut || {
            away(member.as_ref(), || progress(Progress::NOTHING_YET))
        })?;
        // The answer's length is unknown until `</s>`: progress counts against the budget.
        let mut generated = 0;
        let mut decoder = TekkenDecoder::new(&self.tokenizer);
        let mut said = String::new();
        let generation = self.generate_as(
            member.as_ref(),
            prompt,
            &audio,
            options,
            &mut |event| match event {
                Decoding::Prefilled => progress(Progress::NOTHING_YET),
                Decoding::Token(id, _) => {
                    generated += 1;
                    said.push_str(&decoder.push(id));
                    progress(Progress {
                        fraction: generated as f64 / options.max_new_tokens.max(1) as f64,
                        segments: &[],
                        pending: said.trim_start(),
                    })
                }
            },
        )?;
        if generation.stop == Stop::Cancelled {
            return Err(Error::Cancelled);
        }
        let timings = with_audio_timings(generation.timings, &timings);
        let transcript = self.as_transcript(samples.len(), generation.ids, language, options);
        Ok((transcript, timings))
    }

    /// Answers the conversation `messages`, whose audio chunks take `clips` (16 kHz samples)
    /// in order (none: a conversation of text alone). The answer goes to `on_text` as it
    /// decodes: per generated token the text it completes (empty while a character's bytes
    /// are incomplete, or for a token without text) with the token's log-probabilities where
    /// [`GenerateOptions::logprobs`] asks for them, then any bytes held at the end (return
    /// `false` to stop there: [`Stop::Cancelled`], the answer so far returned).
    pub fn ask(
        &self,
        messages: &[Message],
        clips: &[Vec<f32>],
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str, Option<&TokenLogprobs>) -> bool,
    ) -> Result<(String, Generation)> {
        let mut timings = Timings::default();
        let member = self.join();
        let mut audio = Vec::new();
        let mut messages = messages.to_vec();
        let mut clip = clips.iter();
        for content in messages.iter_mut().flat_map(|m| m.content.iter_mut()) {
            if let Content::Audio { windows } = content {
                let samples = clip.next().ok_or_else(|| {
                    Error::InvalidRequest(
                        "the conversation has more audio chunks than clips".into(),
                    )
                })?;
                *windows = Self::windows(samples.len());
                audio.push(
                    self.audio_embeddings(samples, &mut timings, &mut || !options.cancelled())?,
                );
            }
        }
        if clip.next().is_some() {
            return Err(Error::InvalidRequest(
                "more clips than audio chunks in the conversation".into(),
            ));
        }
        let prompt = prompt::chat(&self.tokenizer, &messages, self.tokens_per_window())?;
        // Without audio the prompt is text alone: Voxtral answers as its language model.
        let audio = match audio.is_empty() {
            true => Tensor::zeros((0, 1), DType::F32, self.network.device())?,
            false => Tensor::cat(&audio, 0)?,
        };
        let mut decoder = TekkenDecoder::new(&self.tokenizer);
        let mut generation = self.generate_as(
            member.as_ref(),
            &prompt,
            &audio,
            options,
            &mut |event| match event {
                Decoding::Prefilled => true,
                Decoding::Token(id, logprobs) => on_text(&decoder.push(id), logprobs),
            },
        )?;
        let rest = decoder.finish();
        if !rest.is_empty() && generation.stop != Stop::Cancelled {
            on_text(&rest, None);
        }
        generation.timings = with_audio_timings(generation.timings, &timings);
        Ok((self.tokenizer.decode(&generation.ids), generation))
    }
}

/// A generation's timings with the audio's (mel, encoder) added: the first token then
/// counts from the start of the request.
fn with_audio_timings(generation: Timings, audio: &Timings) -> Timings {
    let before = audio.mel_ms + audio.encoder_ms;
    Timings {
        mel_ms: audio.mel_ms,
        encoder_ms: audio.encoder_ms,
        encoder_calls: audio.encoder_calls,
        first_token_ms: generation.first_token_ms.map(|t| t + before),
        ..generation
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
