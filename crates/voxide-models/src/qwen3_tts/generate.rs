//! The frame loop (qwen-tts `generate` with its defaults, specs/qwen3-tts.md §4, §8): per
//! 80 ms frame one talker step gives code 0 (repetition penalty, the control ids ≥ vocab − 1024
//! suppressed but EOS, EOS barred before `min_frames`), then the code predictor, its cache
//! reset, gives codes 1..15 from [talker hidden state, embedding of code 0], one group per
//! step. The next talker input is the sum of the 16 code embeddings plus the next text-track
//! embedding.

use super::config::TalkerConfig;
use super::prefix_cache::{PrefixCache, PrefixKey};
use super::prompt::Prompt;
use super::talker::Talker;
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use std::time::Instant;
use voxide_nn::sampling::{apply_repetition_penalty, argmax, Sampler, SamplingParams};

/// How codes are chosen (`None` sampling parameters mean greedy) and how the caches keep
/// what was generated.
#[derive(Clone, Copy, Debug)]
pub struct GenerationParams {
    pub talker: Option<SamplingParams>,
    pub predictor: Option<SamplingParams>,
    /// On code 0 over the codes generated so far (1.0 = none).
    pub repetition_penalty: f32,
    /// Most frames produced (80 ms each).
    pub max_frames: usize,
    /// Frames before EOS is allowed (qwen-tts: 2).
    pub min_frames: usize,
    /// Precision of the talker's and code predictor's KV caches (`None`:
    /// [`Talker::default_kv_dtype`]: f16 beside quantized weights, else f32).
    pub kv_dtype: Option<DType>,
}

impl Default for GenerationParams {
    /// qwen-tts' defaults: sampling at T 0.9, top-k 50, top-p 1.0 for both, penalty 1.05.
    fn default() -> Self {
        let sampling = SamplingParams {
            temperature: 0.9,
            top_k: 50,
            top_p: 1.0,
        };
        Self {
            talker: Some(sampling),
            predictor: Some(sampling),
            repetition_penalty: 1.05,
            max_frames: 2048,
            min_frames: 2,
            kv_dtype: None,
        }
    }
}

/// What a generation produced and where its time went.
#[derive(Clone, Debug)]
pub struct Generated {
    /// Frames of `num_code_groups` codes.
    pub frames: Vec<Vec<u32>>,
    pub stop: Stop,
    /// The talker's pass over the prompt, with the first frame's codec head.
    pub prompt_ms: f64,
    /// Prompt positions whose state came from the prefix cache instead of the talker.
    pub cached_positions: usize,
    /// The talker's steps after the prompt (one per frame after the first), with the codec head.
    pub talker_ms: f64,
    /// Bytes of keys and values those steps' attention read, in all.
    pub talker_kv_bytes: usize,
    /// Code-predictor passes with their heads.
    pub predictor_ms: f64,
    /// Logit rules and code choice, both models.
    pub sampling_ms: f64,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The talker produced codec EOS.
    Eos,
    /// `max_frames` frames were produced.
    MaxFrames,
    /// The frame callback asked to stop.
    Cancelled,
}

/// Checks that a prompt of `prompt_positions` and up to `max_frames` frames fit the talker's
/// `max_position_embeddings`, before the KV caches for them are allocated.
pub fn check_positions(
    config: &TalkerConfig,
    prompt_positions: usize,
    max_frames: usize,
) -> Result<()> {
    let limit = config.max_position_embeddings;
    let Some(room) = limit.checked_sub(max_frames).filter(|&room| room > 0) else {
        return Err(Error::InvalidRequest(format!(
            "cannot generate {max_frames} frames: this model takes at most {limit} positions, the text's included (ask for fewer frames)"
        )));
    };
    if prompt_positions > room {
        return Err(Error::InvalidRequest(format!(
            "text too long: {prompt_positions} tokens, this model takes at most {room} beside {max_frames} frames of audio (split the text)"
        )));
    }
    Ok(())
}

fn pick(logits: &[f32], params: Option<SamplingParams>, sampler: &mut Sampler) -> u32 {
    match params {
        Some(p) if p.temperature > 0.0 => sampler.sample(logits, p) as u32,
        _ => argmax(logits) as u32,
    }
}

/// Generates frames of `num_code_groups` codes for `prompt`, handing each to `on_frame` as
/// soon as it exists (return `false` to stop; its own time is not counted). The prompt's
/// voice positions come from `prefixes` where it holds them, and go there where it does not.
pub fn generate(
    talker: &Talker,
    prompt: &Prompt,
    params: &GenerationParams,
    prefixes: Option<&PrefixCache>,
    sampler: &mut Sampler,
    on_frame: &mut dyn FnMut(&[u32]) -> Result<bool>,
) -> Result<Generated> {
    if params.max_frames == 0 {
        return Err(Error::InvalidRequest(
            "at least one frame must be allowed".into(),
        ));
    }
    let cfg = talker.config();
    let predictor = talker.predictor();
    let device = talker.device();
    let eos = cfg.codec_eos_token_id as usize;
    let suppressed = cfg.dims.vocab_size.saturating_sub(1024)..cfg.dims.vocab_size;
    let prefill_len = prompt.prefill.dim(1)?;
    let trailing = prompt.trailing_text.dim(1)?;
    check_positions(cfg, prefill_len, params.max_frames)?;

    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let mut out = Generated {
        frames: Vec::new(),
        stop: Stop::MaxFrames,
        prompt_ms: 0.0,
        cached_positions: 0,
        talker_ms: 0.0,
        talker_kv_bytes: 0,
        predictor_ms: 0.0,
        sampling_ms: 0.0,
    };
    // Started before each talker pass, read once its logits are on the host.
    let mut talker_clock = Instant::now();
    let kv_dtype = params.kv_dtype.unwrap_or_else(|| talker.default_kv_dtype());
    let mut state = talker.new_state(prefill_len + params.max_frames, kv_dtype)?;
    let mut predictor_state = predictor.new_state(kv_dtype, device)?;
    // The talker pass under way, up to its logits on the host.
    let mut talker_span =
        Some(tracing::trace_span!("talker_prompt", positions = prefill_len).entered());
    // The voice positions run as a pass of their own, cached or not, so that a request's
    // numbers never depend on the requests before it (one pass over all positions would
    // take other kernels, and so other roundings, than two).
    let shared = prompt.voice_positions.min(prefill_len - 1);
    if shared > 0 {
        let rows = prompt.prefill.narrow(1, 0, shared)?;
        let cached = match prefixes {
            Some(cache) => Some((cache, PrefixKey::new(&rows, kv_dtype)?)),
            None => None,
        };
        match cached.as_ref().and_then(|(cache, key)| cache.get(key)) {
            Some(prefix) => {
                state.restore(&prefix)?;
                out.cached_positions = shared;
            }
            None => {
                talker.forward(&rows, &mut state)?;
                if let Some((cache, key)) = cached {
                    cache.insert(key, state.snapshot()?);
                }
            }
        }
    }
    let rest = prompt.prefill.narrow(1, shared, prefill_len - shared)?;
    let mut hidden = talker.forward(&rest, &mut state)?;
    hidden = hidden.narrow(1, prefill_len - shared - 1, 1)?;
    let mut history: Vec<u32> = Vec::new();
    let mut frame = vec![0u32; predictor.groups() + 1];
    for index in 0..params.max_frames {
        let mut logits = talker.logits(&hidden)?.flatten_all()?.to_vec1::<f32>()?;
        if index == 0 {
            out.prompt_ms = ms(talker_clock);
        } else {
            out.talker_ms += ms(talker_clock);
        }
        // Left after the clock is read, entered before it starts: what a subscriber does
        // there (the bench's bandwidth probes) stays out of the talker's time.
        drop(talker_span.take());
        let clock = Instant::now();
        apply_repetition_penalty(&mut logits, &history, params.repetition_penalty);
        for id in suppressed.clone().filter(|&id| id != eos) {
            logits[id] = f32::NEG_INFINITY;
        }
        if index < params.min_frames {
            logits[eos] = f32::NEG_INFINITY;
        }
        let code0 = pick(&logits, params.talker, sampler);
        out.sampling_ms += ms(clock);
        history.push(code0);
        if code0 as usize == eos {
            out.stop = Stop::Eos;
            return Ok(out);
        }
        frame[0] = code0;

        // Codes 1..G−1: prefill [hidden, embed(code 0)], then one step per group.
        let predictor_span = tracing::trace_span!("code_predictor", frame = index).entered();
        predictor_state.reset();
        let code0_embedding = talker.embed_codec(&[code0])?;
        let mut input = Tensor::cat(&[&hidden, &code0_embedding], 1)?;
        let mut sum = code0_embedding;
        for (group, slot) in frame.iter_mut().enumerate().skip(1) {
            let clock = Instant::now();
            let logits = predictor
                .step(&input, &mut predictor_state, group)?
                .to_vec1::<f32>()?;
            out.predictor_ms += ms(clock);
            let clock = Instant::now();
            let code = pick(&logits, params.predictor, sampler);
            out.sampling_ms += ms(clock);
            *slot = code;
            input = predictor.embed(group, &[code])?;
            sum = (sum + &input)?;
        }
        drop(predictor_span);
        out.frames.push(frame.clone());
        if !on_frame(&frame)? {
            out.stop = Stop::Cancelled;
            return Ok(out);
        }
        if index + 1 == params.max_frames {
            break;
        }
        let text = if index < trailing {
            prompt.trailing_text.narrow(1, index, 1)?
        } else {
            prompt.tts_pad.clone()
        };
        talker_span = Some(tracing::trace_span!("talker_step", frame = index + 1).entered());
        talker_clock = Instant::now();
        hidden = talker.forward(&(sum + text)?, &mut state)?;
        out.talker_kv_bytes += state.attended_bytes();
    }
    Ok(out)
}
