//! Text in, 24 kHz PCM out, chunk by chunk: the loaded checkpoint ([`Synthesizer`], shared by
//! any number of requests) and one request ([`SpeechRequest`]).
//!
//! The text is wrapped in Qwen's chat template as qwen-tts does
//! (`<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n`, the instruction as
//! `<|im_start|>user\n{instruction}<|im_end|>\n`). Frames are decoded as they are generated,
//! in chunks of 1, 2, 4, … up to `chunk_frames`, by the incremental codec: the concatenated chunks are exactly the
//! whole clip decoded at once (qwen-tts re-decodes 25 frames of left context per 300-frame
//! chunk instead, which equals a whole-clip decode only up to 300 frames).
//!
//! Voice clone (Base checkpoints): [`Synthesizer::clone_voice`] turns a reference clip into a
//! [`ClonedVoice`] that any number of requests share (qwen-tts' `create_voice_clone_prompt`):
//! the clip's x-vector from the speaker encoder fills the speaker slot; with its transcript,
//! the clip's codes from the codec encoder go into the prompt too (in-context), and the codec
//! decoder's state after decoding them is kept, so each request's audio continues from the
//! clip's — qwen-tts decodes reference and generated codes as one clip and cuts the
//! reference's samples off.

use super::codec::CodecState;
use super::codec::{load_codec, CodecConfig, CodecDecoder};
use super::codec_encoder::{load_codec_encoder, CodecEncoder};
use super::config::ModelType;
use super::generate::{check_positions, generate, FrameBatcher, GenerationParams, Stop};
use super::prefix_cache::{self, PrefixCache};
use super::prompt::{Prompt, PromptRequest, Reference, Voice};
use super::text_parts::text_parts;
use super::tokenizer::TextTokenizer;
use super::Qwen3Tts;
use crate::batching::{alone, away, BatchStats};
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use voxide_audio::{load_mono, AudioError, AudioInput};
use voxide_nn::kernels::machine::CycleBytes;
use voxide_nn::linear::WeightFormat;
use voxide_nn::sampling::Sampler;

/// One synthesis request.
#[derive(Clone, Debug)]
pub struct SpeechRequest {
    pub text: String,
    /// A preset speaker (CustomVoice checkpoints).
    pub voice: Option<String>,
    /// A description of the voice or the delivery (VoiceDesign; 1.7B CustomVoice).
    pub instruct: Option<String>,
    /// A voice cloned from a reference clip (Base checkpoints; [`Synthesizer::clone_voice`]).
    pub cloned_voice: Option<Arc<ClonedVoice>>,
    /// A language of the checkpoint, or `None` for auto.
    pub language: Option<String>,
    pub params: GenerationParams,
    pub seed: u64,
    /// The whole text in the prompt (`true`) or streamed alongside the frames (`false`);
    /// `None`: as qwen-tts' `Qwen3TTSModel` per variant (whole text for CustomVoice and
    /// VoiceDesign, streamed for voice clone).
    pub non_streaming_text: Option<bool>,
    /// Most frames decoded to audio at a time (1 frame = 80 ms). The first chunk is one frame
    /// (the earliest sound), then chunks double up to this: the codec's convolutions run far
    /// faster on long inputs (0.6B codec, 2 cores of an AMD Zen 4: ~43 ms per frame in chunks
    /// of 1, ~33 in chunks of 2, ~22 in chunks of 16).
    pub chunk_frames: usize,
}

/// A voice to clone: a clip of it and, optionally, what it says.
#[derive(Clone, Debug)]
pub struct VoiceReference {
    /// Mono samples at [`Synthesizer::sample_rate`] (24 kHz).
    pub samples: Vec<f32>,
    /// The clip's transcript. With it the clip's codes join the prompt (in-context cloning);
    /// without it only the speaker embedding (x-vector) is used.
    pub text: Option<String>,
    /// In context, how many of the clip's last frames the codec decoder runs through as the
    /// left context of the generated audio: `None`, all of them (the audio is exactly
    /// qwen-tts' whole-clip decode); fewer is faster to clone (qwen-tts' own chunked decode
    /// keeps 25 frames of left context between chunks).
    pub context_frames: Option<usize>,
}

impl VoiceReference {
    /// The clip `input` mixed to mono at `sample_rate` ([`Synthesizer::sample_rate`]), with
    /// its transcript if given, all of it in context. A clip that cannot be read, or holds
    /// only digital silence, is refused in a line naming it.
    pub fn from_clip(input: &AudioInput, sample_rate: u32, text: Option<String>) -> Result<Self> {
        let samples = load_mono(input, sample_rate).map_err(|e| {
            Error::InvalidRequest(match e {
                AudioError::DigitalSilence { name } => {
                    format!("reference clip {name}: only digital silence, no voice to clone")
                }
                e => format!("reference clip {e}"),
            })
        })?;
        Ok(Self {
            samples,
            text,
            context_frames: None,
        })
    }
}

/// Longest reference clip: qwen-tts takes any length, but its codes and the codec's state grow
/// with it (a 20-minute clip took 2.3 GB), while a voice is cloned from seconds of speech.
pub const MAX_REFERENCE_S: f64 = 60.0;

/// A voice cloned from a reference clip, ready for any number of requests.
#[derive(Debug)]
pub struct ClonedVoice {
    /// The speaker encoder's x-vector (H,).
    xvector: Tensor,
    in_context: Option<InContext>,
    /// What cloning took: the speaker encoder, the codec encoder, decoding the clip's codes.
    pub speaker_encoder_ms: f64,
    pub codec_encoder_ms: f64,
    pub codec_decoder_ms: f64,
}

/// The in-context part of a cloned voice.
#[derive(Debug)]
struct InContext {
    /// `<|im_start|>assistant\n{transcript}<|im_end|>\n`, tokenised.
    text_ids: Vec<u32>,
    /// The clip's frames of codes.
    codes: Vec<Vec<u32>>,
    /// The codec decoder after the clip's frames: each request forks it.
    codec_state: CodecState,
}

impl ClonedVoice {
    /// What cloning took in all.
    pub fn clone_ms(&self) -> f64 {
        self.speaker_encoder_ms + self.codec_encoder_ms + self.codec_decoder_ms
    }

    /// Frames of the reference clip in the prompt (0 without a transcript).
    pub fn reference_frames(&self) -> usize {
        self.in_context.as_ref().map_or(0, |c| c.codes.len())
    }
}

/// What one request took.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpeechStats {
    pub frames: usize,
    pub audio_s: f64,
    pub wall_ms: f64,
    /// Time to the first audio chunk.
    pub first_audio_ms: Option<f64>,
    /// Ended on the model's end of speech (not on the frame limit or a cancel).
    pub finished: bool,
    /// Where the time went: the talker's pass over the prompt, its steps (one per frame after
    /// the first), code-predictor passes, sampling, codec decoding.
    pub prompt_ms: f64,
    pub talker_ms: f64,
    pub predictor_ms: f64,
    pub sampling_ms: f64,
    pub codec_ms: f64,
    /// Bytes of keys and values the talker's steps (after the prompt) read, in all.
    pub talker_kv_bytes: usize,
    /// The prompt's positions, and how many of them the prefix cache gave
    /// ([`Synthesizer::prefix_cache`]).
    pub prompt_positions: usize,
    pub cached_positions: usize,
}

/// A loaded Qwen3-TTS checkpoint: talker, code predictor, text tokenizer and codec decoder;
/// for Base checkpoints also the codec encoder (the speaker encoder is in [`Qwen3Tts`]).
#[derive(Debug)]
pub struct Synthesizer {
    model: Qwen3Tts,
    tokenizer: TextTokenizer,
    codec_config: CodecConfig,
    codec: CodecDecoder,
    codec_encoder: Option<CodecEncoder>,
    /// The talker's state after the voice positions of earlier requests.
    prefixes: PrefixCache,
    /// Where concurrent requests' frames are taken together.
    batcher: Option<FrameBatcher>,
}

impl Synthesizer {
    /// Loads a checkpoint directory: `config.json`, `model.safetensors`, the text tokenizer
    /// and the codec in `speech_tokenizer/`; `format` converts the talker's and predictor's
    /// matrices (e.g. int8).
    pub fn from_dir(dir: &Path, device: &Device, format: Option<WeightFormat>) -> Result<Self> {
        let model = Qwen3Tts::from_dir(dir, device, format)?;
        let tokenizer = TextTokenizer::from_dir(dir)?;
        let speech = dir.join("speech_tokenizer");
        if !speech.is_dir() {
            return Err(Error::MissingFile {
                dir: dir.to_owned(),
                file: "speech_tokenizer/".into(),
                hint: " (the codec: Qwen/Qwen3-TTS-Tokenizer-12Hz)".into(),
            });
        }
        let (codec_config, codec) = load_codec(&speech, device)?;
        let (groups, quantizers) = (
            model.config().talker_config.dims.num_code_groups,
            codec_config.decoder_config.num_quantizers,
        );
        if groups != quantizers {
            return Err(Error::InvalidJson {
                path: speech.join("config.json"),
                message: format!(
                    "the codec decodes {quantizers} codebooks a frame, the talker writes {groups}"
                ),
            });
        }
        let codec_encoder = match model.config().tts_model_type {
            ModelType::Base => Some(load_codec_encoder(&speech, device)?),
            _ => None,
        };
        let synthesizer = Self {
            model,
            tokenizer,
            codec_config,
            codec,
            codec_encoder,
            prefixes: PrefixCache::new(prefix_cache::DEFAULT_BUDGET),
            batcher: None,
        };
        synthesizer.check_tokenizer()?;
        Ok(synthesizer)
    }

    /// The tokenizer's template tokens must be the ids the model was trained with.
    fn check_tokenizer(&self) -> Result<()> {
        let c = self.model.config();
        for (token, id) in [
            ("<|im_start|>", c.im_start_token_id),
            ("<|im_end|>", c.im_end_token_id),
        ] {
            if self.tokenizer.token_id(token) != Some(id) {
                return Err(Error::Tokenizer {
                    path: self.tokenizer.path().to_owned(),
                    message: format!(
                        "{token} is {:?} here but {id} in the model's config: not this model's tokenizer",
                        self.tokenizer.token_id(token)
                    ),
                });
            }
        }
        Ok(())
    }

    /// Takes the frames of concurrent requests together, up to `max_rows` a batch
    /// ([`FrameBatcher`]: the talker's and the code predictor's matrices read once for all,
    /// each request with its own caches, sampler and prompt, generating what it generates
    /// alone); their prompts and codec decoding run one at a time. 1 turns it off. Set
    /// before the synthesizer is shared.
    pub fn batch_concurrent_frames(&mut self, max_rows: usize) {
        self.batcher = (max_rows > 1).then(|| FrameBatcher::new(max_rows));
    }

    /// What concurrent requests have generated together, when batching is on (`decodes`:
    /// frames).
    pub fn batch_stats(&self) -> Option<BatchStats> {
        self.batcher.as_ref().map(FrameBatcher::stats)
    }

    /// The talker's states after the voice positions ([`Prompt::voice_positions`]) of earlier
    /// requests, which later requests in the same voice start from.
    pub fn prefix_cache(&self) -> &PrefixCache {
        &self.prefixes
    }

    /// Bytes of weights one frame reads, by residency: a talker step and the code predictor's
    /// steps.
    pub fn frame_bytes(&self) -> CycleBytes {
        let talker = self.model.talker();
        talker.step_bytes() + talker.predictor().frame_bytes()
    }

    /// Bytes of weights a talker step reads, by residency (its layers and codec head).
    pub fn talker_step_bytes(&self) -> CycleBytes {
        self.model.talker().step_bytes()
    }

    /// Bytes of weights the code predictor's steps of one frame read, by residency.
    pub fn predictor_frame_bytes(&self) -> CycleBytes {
        self.model.talker().predictor().frame_bytes()
    }

    /// What the code predictor reads again within a frame: the weights each of its steps
    /// reads besides its head (by residency), and how many steps after the first read them.
    pub fn predictor_rereads(&self) -> (CycleBytes, usize) {
        let predictor = self.model.talker().predictor();
        (predictor.pass_bytes(), predictor.groups().saturating_sub(1))
    }

    pub fn sample_rate(&self) -> u32 {
        self.codec_config.output_sample_rate
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    pub fn model_type(&self) -> ModelType {
        self.model.config().tts_model_type
    }

    /// Preset speakers (CustomVoice), sorted.
    pub fn voices(&self) -> Vec<String> {
        self.model
            .config()
            .talker_config
            .spk_id
            .keys()
            .cloned()
            .collect()
    }

    /// Languages besides auto, sorted.
    pub fn languages(&self) -> Vec<String> {
        self.model.config().languages()
    }

    fn voice(&self, request: &SpeechRequest) -> Result<Voice> {
        let config = self.model.config();
        config.check_voice(request.voice.as_deref(), request.cloned_voice.is_some())?;
        Ok(match (&request.voice, &request.cloned_voice) {
            (Some(name), _) => Voice::Preset(name.clone()),
            (None, Some(cloned)) => Voice::Embedding(cloned.xvector.clone()),
            (None, None) => Voice::Unspecified,
        })
    }

    /// Clones the voice of `reference` (Base checkpoints): its x-vector and, when its
    /// transcript is given, its codes and the codec decoder's state after them.
    pub fn clone_voice(&self, reference: &VoiceReference) -> Result<ClonedVoice> {
        let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
        let clock = Instant::now();
        let (Some(speaker_encoder), Some(codec_encoder)) =
            (self.model.speaker_encoder(), &self.codec_encoder)
        else {
            return Err(Error::InvalidRequest(format!(
                "this {:?} model cannot clone a voice from a reference clip (a Base model can)",
                self.model_type()
            )));
        };
        let seconds = reference.samples.len() as f64 / self.sample_rate() as f64;
        if seconds > MAX_REFERENCE_S {
            return Err(Error::InvalidRequest(format!(
                "the reference clip is {seconds:.1} s long; cloning takes at most \
                 {MAX_REFERENCE_S:.0} s (a few seconds of clear speech is what it needs: trim it)"
            )));
        }
        let xvector = {
            let _span = tracing::trace_span!("speaker_encoder").entered();
            speaker_encoder.embed(&reference.samples)?
        };
        let n = xvector.len();
        let device = self.model.talker().device();
        let xvector = Tensor::from_vec(xvector, n, device)?;
        let speaker_encoder_ms = ms(clock);
        let (mut codec_encoder_ms, mut codec_decoder_ms) = (0.0, 0.0);
        let in_context = match reference.text.as_deref().map(str::trim) {
            Some(text) if !text.is_empty() => {
                let text_ids = self
                    .tokenizer
                    .encode(&format!("<|im_start|>assistant\n{text}<|im_end|>\n"))?;
                self.check_text_ids(&text_ids)?;
                let clock = Instant::now();
                let codes = {
                    let _span = tracing::trace_span!("codec_encoder").entered();
                    codec_encoder.encode(&reference.samples)?
                };
                codec_encoder_ms = ms(clock);
                let clock = Instant::now();
                let mut codec_state = self.codec.new_state(device)?;
                let skip = reference
                    .context_frames
                    .map_or(0, |n| codes.len().saturating_sub(n));
                {
                    let _span =
                        tracing::trace_span!("codec_decode", frames = codes.len() - skip).entered();
                    self.codec.push(&mut codec_state, &codes[skip..])?;
                }
                codec_decoder_ms = ms(clock);
                Some(InContext {
                    text_ids,
                    codes,
                    codec_state,
                })
            }
            _ => None,
        };
        Ok(ClonedVoice {
            xvector,
            in_context,
            speaker_encoder_ms,
            codec_encoder_ms,
            codec_decoder_ms,
        })
    }

    /// Every id must index the talker's text embedding.
    fn check_text_ids(&self, ids: &[u32]) -> Result<()> {
        let text_vocab = self.model.config().talker_config.text_vocab_size;
        match ids.iter().find(|&&id| id as usize >= text_vocab) {
            Some(id) => Err(Error::InvalidRequest(format!(
                "token {id} is outside the model's text vocabulary of {text_vocab}: wrong tokenizer"
            ))),
            None => Ok(()),
        }
    }

    /// Synthesises `request`, handing each chunk of PCM (mono, [−1, 1], [`Self::sample_rate`])
    /// to `on_audio` as soon as it is decoded; `on_audio` returns `false` to stop.
    pub fn synthesize(
        &self,
        request: &SpeechRequest,
        on_audio: &mut dyn FnMut(&[f32]) -> Result<bool>,
    ) -> Result<SpeechStats> {
        let start = Instant::now();
        let text = request.text.trim();
        if text.is_empty() {
            return Err(Error::InvalidRequest(
                "nothing to say: the text is empty".into(),
            ));
        }
        if request.chunk_frames == 0 {
            return Err(Error::InvalidRequest(
                "chunks must hold at least one frame".into(),
            ));
        }
        if self.model_type() == ModelType::Base
            && request
                .instruct
                .as_deref()
                .is_some_and(|i| !i.trim().is_empty())
        {
            return Err(Error::InvalidRequest(
                "a Base (voice clone) model takes no instruction".into(),
            ));
        }
        let voice = self.voice(request)?;
        let in_context = request
            .cloned_voice
            .as_ref()
            .and_then(|c| c.in_context.as_ref());
        let text_ids = self.tokenizer.encode(&format!(
            "<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n"
        ))?;
        // As qwen-tts: the 0.6B CustomVoice model takes no instruction.
        let instruct = match (
            &request.instruct,
            self.model.config().tts_model_size.as_deref(),
        ) {
            (Some(_), Some("0b6")) if self.model_type() == ModelType::CustomVoice => None,
            (Some(i), _) if !i.trim().is_empty() => Some(i.trim()),
            _ => None,
        };
        let instruct_ids = instruct
            .map(|i| {
                self.tokenizer
                    .encode(&format!("<|im_start|>user\n{i}<|im_end|>\n"))
            })
            .transpose()?;
        self.check_text_ids(&text_ids)?;
        self.check_text_ids(instruct_ids.as_deref().unwrap_or_default())?;
        let prompt_request = PromptRequest {
            text_ids: &text_ids,
            instruct_ids: instruct_ids.as_deref(),
            language: request.language.as_deref(),
            voice,
            reference: in_context.map(|c| Reference {
                text_ids: &c.text_ids,
                codes: &c.codes,
            }),
            non_streaming: request
                .non_streaming_text
                .unwrap_or(self.model_type() != ModelType::Base),
        };
        // Before the text is embedded: a long one would take gigabytes to be refused later.
        check_positions(
            &self.model.config().talker_config,
            prompt_request.positions(self.model.config())?,
            request.params.max_frames,
        )?;
        let prompt = {
            let _span =
                tracing::trace_span!("prompt_build", text_tokens = text_ids.len()).entered();
            Prompt::build(self.model.talker(), self.model.config(), &prompt_request)?
        };

        let device = self.model.talker().device().clone();
        // In context, the reference clip's audio is the left context of this request's.
        let mut codec_state = match in_context {
            Some(c) => c.codec_state.fork()?,
            None => self.codec.new_state(&device)?,
        };
        let mut stats = SpeechStats::default();
        // Grown as frames come: `chunk_frames` is a cap, and may be far above any clip.
        let mut pending: Vec<Vec<u32>> = Vec::new();
        let mut chunk = 1;
        let mut cancelled = false;
        // Where requests batch, this one is at work on the model throughout but while its
        // audio goes out (a slow listener holds no batch up); its codec runs alone.
        let batch = self.batcher.as_ref().map(|b| (b, b.join()));
        let member = batch.as_ref().map(|(_, m)| m);
        let mut emit = |frames: &[Vec<u32>], stats: &mut SpeechStats| -> Result<bool> {
            let clock = Instant::now();
            let pcm = alone(member, || {
                let _span = tracing::trace_span!("codec_decode", frames = frames.len()).entered();
                self.codec.push(&mut codec_state, frames)
            })?;
            stats.codec_ms += clock.elapsed().as_secs_f64() * 1e3;
            stats
                .first_audio_ms
                .get_or_insert_with(|| start.elapsed().as_secs_f64() * 1e3);
            stats.frames += frames.len();
            away(member, || on_audio(&pcm))
        };
        let generated = generate(
            self.model.talker(),
            &prompt,
            &request.params,
            Some(&self.prefixes),
            Sampler::new(request.seed),
            batch.as_ref().map(|(b, m)| (*b, m)),
            &mut |frame: &[u32]| {
                pending.push(frame.to_vec());
                if pending.len() == chunk {
                    let go_on = emit(&pending, &mut stats)?;
                    pending.clear();
                    chunk = (2 * chunk).min(request.chunk_frames);
                    cancelled = !go_on;
                    return Ok(go_on);
                }
                Ok(true)
            },
        )?;
        if !cancelled && !pending.is_empty() {
            emit(&pending, &mut stats)?;
        }
        stats.finished = generated.stop == Stop::Eos;
        stats.prompt_ms = generated.prompt_ms;
        stats.prompt_positions = prompt.prefill.dim(1)?;
        stats.cached_positions = generated.cached_positions;
        stats.talker_ms = generated.talker_ms;
        stats.talker_kv_bytes = generated.talker_kv_bytes;
        stats.predictor_ms = generated.predictor_ms;
        stats.sampling_ms = generated.sampling_ms;
        stats.audio_s = (stats.frames * self.codec.config().samples_per_frame()) as f64
            / self.sample_rate() as f64;
        stats.wall_ms = start.elapsed().as_secs_f64() * 1e3;
        Ok(stats)
    }

    /// [`Self::synthesize`] for a text of any length: cut into parts of at most `max_chars`
    /// characters ([`text_parts`]; `0`: one part) spoken one after another in the same voice,
    /// their audio handed on as one stream. `max_frames` bounds each part; `max_total_frames`,
    /// if given, all of them together.
    pub fn synthesize_in_parts(
        &self,
        request: &SpeechRequest,
        max_chars: usize,
        max_total_frames: Option<usize>,
        on_audio: &mut dyn FnMut(&[f32]) -> Result<bool>,
    ) -> Result<SpeechStats> {
        let start = Instant::now();
        let parts = text_parts(&request.text, max_chars);
        if parts.is_empty() {
            // The empty text's own error.
            return self.synthesize(request, on_audio);
        }
        let mut total = SpeechStats {
            finished: true,
            ..SpeechStats::default()
        };
        for part in parts {
            let budget =
                max_total_frames.map_or(usize::MAX, |cap| cap.saturating_sub(total.frames));
            if budget == 0 {
                total.finished = false;
                break;
            }
            let mut part_request = request.clone();
            part_request.text = part.to_string();
            part_request.params.max_frames = request.params.max_frames.min(budget);
            let part_start_ms = start.elapsed().as_secs_f64() * 1e3;
            let mut go_on = true;
            let stats = self.synthesize(&part_request, &mut |pcm| {
                go_on = on_audio(pcm)?;
                Ok(go_on)
            })?;
            if total.first_audio_ms.is_none() {
                total.first_audio_ms = stats.first_audio_ms.map(|ms| part_start_ms + ms);
            }
            total.add(&stats);
            if !go_on {
                break;
            }
        }
        total.wall_ms = start.elapsed().as_secs_f64() * 1e3;
        Ok(total)
    }
}

impl SpeechStats {
    /// Adds a later part's counts and times (not its wall time or first audio).
    fn add(&mut self, part: &SpeechStats) {
        self.frames += part.frames;
        self.audio_s += part.audio_s;
        self.finished &= part.finished;
        self.prompt_ms += part.prompt_ms;
        self.talker_ms += part.talker_ms;
        self.predictor_ms += part.predictor_ms;
        self.sampling_ms += part.sampling_ms;
        self.codec_ms += part.codec_ms;
        self.talker_kv_bytes += part.talker_kv_bytes;
        self.prompt_positions += part.prompt_positions;
        self.cached_positions += part.cached_positions;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture (a byte-level tokenizer: a token per ASCII letter) with its talker taking
    /// `limit` positions, from a copy in a temp dir.
    fn fixture_with_limit(limit: usize) -> (tempfile::TempDir, Synthesizer) {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/qwen3-tts/tiny-random");
        let dir = tempfile::tempdir().unwrap();
        for sub in ["", "speech_tokenizer"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            for entry in std::fs::read_dir(fixture.join(sub)).unwrap() {
                let path = entry.unwrap().path();
                if path.is_file() {
                    let to = dir.path().join(sub).join(path.file_name().unwrap());
                    std::fs::copy(&path, to).unwrap();
                }
            }
        }
        let config = dir.path().join("config.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        json["talker_config"]["max_position_embeddings"] = limit.into();
        std::fs::write(&config, json.to_string()).unwrap();
        let synthesizer = Synthesizer::from_dir(dir.path(), &Device::Cpu, None).unwrap();
        (dir, synthesizer)
    }

    fn request(text: String, max_frames: usize) -> SpeechRequest {
        SpeechRequest {
            text,
            voice: Some("tester".into()),
            instruct: None,
            cloned_voice: None,
            language: Some("english".into()),
            params: GenerationParams {
                talker: None,
                predictor: None,
                max_frames,
                ..GenerationParams::default()
            },
            seed: 0,
            non_streaming_text: None,
            chunk_frames: 4,
        }
    }

    /// Requests in one voice start from the state the first left after its voice positions,
    /// and speak as they would have alone, sample for sample (sampled codes included); another
    /// voice or language is computed and kept beside it.
    #[test]
    fn requests_in_one_voice_share_the_voice_positions_exactly() {
        let (_dir, synthesizer) = fixture_with_limit(700);
        let speak = |text: &str, language: &str, non_streaming: bool| {
            let mut r = request(text.into(), 4);
            r.language = Some(language.into());
            r.non_streaming_text = Some(non_streaming);
            r.params.talker = GenerationParams::default().talker;
            r.seed = 7;
            let mut pcm = Vec::new();
            let stats = synthesizer
                .synthesize(&r, &mut |chunk| {
                    pcm.extend_from_slice(chunk);
                    Ok(true)
                })
                .unwrap();
            (pcm, stats)
        };
        let (alone, stats) = speak("Good morning.", "english", true);
        assert_eq!(stats.cached_positions, 0);
        assert_eq!(synthesizer.prefix_cache().len(), 1);
        let (other_text, stats) = speak("Hello there.", "english", false);
        let voice_positions = stats.cached_positions;
        assert!(voice_positions > 0 && voice_positions < stats.prompt_positions);
        let (again, stats) = speak("Good morning.", "english", true);
        assert_eq!(stats.cached_positions, voice_positions);
        assert_eq!(again, alone, "the cached prefix changed the audio");
        let (_, stats) = speak("Good morning.", "auto", true);
        assert_eq!(
            stats.cached_positions, 0,
            "another language, other positions"
        );
        assert_eq!(synthesizer.prefix_cache().len(), 2);
        synthesizer.prefix_cache().clear();
        let (fresh, stats) = speak("Hello there.", "english", false);
        assert_eq!(stats.cached_positions, 0);
        assert_eq!(fresh, other_text);
    }

    /// The prompt and the frames must fit the talker's positions: a text that fills them
    /// exactly is spoken (its prefill spans several blocks), one token more is refused before
    /// synthesis with the numbers; so are more frames than positions.
    #[test]
    fn text_and_frames_must_fit_the_talkers_positions() {
        let (_dir, synthesizer) = fixture_with_limit(700);
        // Non-streaming, English, a preset speaker: 27 positions besides the text (the
        // template's two `assistant` are 9 tokens each for this tokenizer).
        let fits = "a".repeat(700 - 3 - 27);
        let mut samples = 0;
        let stats = synthesizer
            .synthesize(&request(fits.clone(), 3), &mut |pcm| {
                samples += pcm.len();
                Ok(true)
            })
            .unwrap();
        assert_eq!((stats.frames, samples), (3, 3 * 1920));
        let mut called = false;
        let mut on_audio = |_: &[f32]| {
            called = true;
            Ok(true)
        };
        let err = synthesizer
            .synthesize(&request(fits + "a", 3), &mut on_audio)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "text too long: 698 tokens, this model takes at most 697 beside 3 frames of audio (split the text)"
        );
        let err = synthesizer
            .synthesize(&request("Hi.".into(), 700), &mut on_audio)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot generate 700 frames"), "{err}");
        assert!(!called);
    }

    /// A text in parts is its parts spoken one after another, sample for sample; a total frame
    /// budget stops it where it runs out; a text too long for the positions in one part is
    /// spoken in several.
    #[test]
    fn a_long_text_is_spoken_in_parts() {
        let (_dir, synthesizer) = fixture_with_limit(700);
        /// The audio a synthesis call hands out, and its statistics.
        fn collect(run: impl FnOnce(OnAudio) -> SpeechStats) -> (Vec<f32>, SpeechStats) {
            let mut pcm = Vec::new();
            let stats = run(&mut |chunk| {
                pcm.extend_from_slice(chunk);
                Ok(true)
            });
            (pcm, stats)
        }
        type OnAudio<'a> = &'a mut dyn FnMut(&[f32]) -> Result<bool>;
        let text = "Hello there. How are you? Fine.";
        let whole = request(text.into(), 3);
        let (parted, stats) = collect(|on| {
            synthesizer
                .synthesize_in_parts(&whole, 13, None, on)
                .unwrap()
        });
        let mut want = Vec::new();
        for part in ["Hello there.", "How are you?", "Fine."] {
            let (pcm, _) = collect(|on| {
                synthesizer
                    .synthesize(&request(part.into(), 3), on)
                    .unwrap()
            });
            want.extend(pcm);
        }
        assert!(parted == want, "the parts differ from their own synthesis");
        assert_eq!((stats.frames, stats.audio_s), (9, 9.0 * 0.08));
        assert!(stats.first_audio_ms.is_some() && !stats.finished);
        // Within the limit: one part, exactly `synthesize`.
        let (one, _) = collect(|on| {
            synthesizer
                .synthesize_in_parts(&whole, 500, None, on)
                .unwrap()
        });
        let (direct, _) = collect(|on| synthesizer.synthesize(&whole, on).unwrap());
        assert!(one == direct);
        // A budget of 5 frames: 3, then 2.
        let (capped, stats) = collect(|on| {
            synthesizer
                .synthesize_in_parts(&whole, 13, Some(5), on)
                .unwrap()
        });
        assert_eq!((stats.frames, capped.len()), (5, 5 * 1920));
        // The same codes; the codec's chunks differ (the last two frames one by one), which
        // moves its Winograd tiles: within the 2.7e-7 of any chunking.
        let worst = capped
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-6, "{worst}");
        // 1000 letters do not fit 700 positions in one prompt; in parts of 300 they do.
        let long = ["a"; 100].join(" ").repeat(5);
        let err = synthesizer.synthesize(&request(long.clone(), 2), &mut |_| Ok(true));
        assert!(err.unwrap_err().to_string().starts_with("text too long"));
        let (_, stats) = collect(|on| {
            synthesizer
                .synthesize_in_parts(&request(long.clone(), 2), 300, None, on)
                .unwrap()
        });
        assert_eq!(stats.frames, 2 * text_parts(&long, 300).len());
        // No text: the same error as `synthesize`'s.
        let err =
            synthesizer.synthesize_in_parts(&request(" ".into(), 2), 13, None, &mut |_| Ok(true));
        assert!(err.unwrap_err().to_string().contains("the text is empty"));
    }
}
