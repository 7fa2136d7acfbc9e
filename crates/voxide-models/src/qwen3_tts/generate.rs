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
use crate::batching::{RowStep, StepBatcher, StepMember};
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use std::time::Instant;
use voxide_nn::sampling::{apply_repetition_penalty, argmax, Sampler, SamplingParams};
use voxide_nn::transformer::StackState;

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

fn ms(clock: Instant) -> f64 {
    clock.elapsed().as_secs_f64() * 1e3
}

/// One request's frame loop between two frames: its caches, its sampler, what it generated.
/// [`next_frames`] advances it by a frame, alone or beside other requests' (a server's
/// concurrent requests, [`FrameBatcher`]).
#[derive(Debug)]
pub struct FrameLoop {
    params: GenerationParams,
    talker: StackState,
    predictor: StackState,
    sampler: Sampler,
    /// The talker's last final-norm hidden state (1, 1, H): the code predictor's first input.
    hidden: Tensor,
    /// The codec head's logits over `hidden`: the next frame's code 0, before its rules.
    /// `None` while the talker has yet to run over `input`.
    logits: Option<Vec<f32>>,
    /// The talker's next input (1, 1, H): the last frame's summed code embeddings plus the
    /// next text-track embedding.
    input: Option<Tensor>,
    /// Text-track embeddings after the prompt's (1, n, H), one per frame, then `tts_pad`.
    trailing_text: Tensor,
    tts_pad: Tensor,
    /// Code 0 of every frame so far (the repetition penalty's history).
    history: Vec<u32>,
    out: Generated,
}

impl FrameLoop {
    /// The talker's pass over `prompt` and its codec head's logits for the first frame; the
    /// prompt's voice positions come from `prefixes` where it holds them, and go there where
    /// it does not.
    pub fn start(
        talker: &Talker,
        prompt: &Prompt,
        params: &GenerationParams,
        prefixes: Option<&PrefixCache>,
        sampler: Sampler,
    ) -> Result<Self> {
        if params.max_frames == 0 {
            return Err(Error::InvalidRequest(
                "at least one frame must be allowed".into(),
            ));
        }
        let clock = Instant::now();
        let cfg = talker.config();
        let prefill_len = prompt.prefill.dim(1)?;
        check_positions(cfg, prefill_len, params.max_frames)?;
        let kv_dtype = params.kv_dtype.unwrap_or_else(|| talker.default_kv_dtype());
        let mut state = talker.new_state(prefill_len + params.max_frames, kv_dtype)?;
        let predictor = talker.predictor().new_state(kv_dtype, talker.device())?;
        let _span = tracing::trace_span!("talker_prompt", positions = prefill_len).entered();
        let mut cached_positions = 0;
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
                    cached_positions = shared;
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
        let hidden = talker.forward(&rest, &mut state)?;
        let hidden = hidden.narrow(1, prefill_len - shared - 1, 1)?;
        let logits = talker.logits(&hidden)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self {
            params: *params,
            talker: state,
            predictor,
            sampler,
            hidden,
            logits: Some(logits),
            input: None,
            trailing_text: prompt.trailing_text.clone(),
            tts_pad: prompt.tts_pad.clone(),
            history: Vec::new(),
            out: Generated {
                frames: Vec::new(),
                stop: Stop::MaxFrames,
                prompt_ms: ms(clock),
                cached_positions,
                talker_ms: 0.0,
                talker_kv_bytes: 0,
                predictor_ms: 0.0,
                sampling_ms: 0.0,
            },
        })
    }

    /// What was generated so far, and where the time went.
    pub fn generated(&self) -> &Generated {
        &self.out
    }

    /// Whether it has ended: on EOS, or with its last frame.
    pub fn ended(&self) -> bool {
        self.out.stop == Stop::Eos || self.out.frames.len() >= self.params.max_frames
    }

    /// Code 0 of the next frame from its logits (repetition penalty, the control ids ≥
    /// vocab − 1024 barred but EOS, EOS barred before `min_frames`).
    fn pick_code0(&mut self, talker: &Talker, mut logits: Vec<f32>) -> u32 {
        let cfg = talker.config();
        let eos = cfg.codec_eos_token_id as usize;
        let vocab = cfg.dims.vocab_size;
        apply_repetition_penalty(&mut logits, &self.history, self.params.repetition_penalty);
        for id in (vocab.saturating_sub(1024)..vocab).filter(|&id| id != eos) {
            logits[id] = f32::NEG_INFINITY;
        }
        if self.out.frames.len() < self.params.min_frames {
            logits[eos] = f32::NEG_INFINITY;
        }
        let code0 = pick(&logits, self.params.talker, &mut self.sampler);
        self.history.push(code0);
        code0
    }
}

/// Advances each request's loop by one frame, the rows together: the talker's step over the
/// last frame (where a loop has one), code 0, then the code predictor's codes 1..G−1, one
/// group per pass. Each matrix is read once for all rows, each row attends over its own
/// caches; a loop's numbers are those it gets alone (int8: bit for bit). Gives each row's
/// frame, or `None` where the talker ended (EOS).
pub fn next_frames(talker: &Talker, loops: &mut [&mut FrameLoop]) -> Result<Vec<Option<Vec<u32>>>> {
    if let Some(done) = loops.iter().find(|l| l.ended()) {
        return Err(Error::InvalidRequest(format!(
            "a frame asked of a generation that ended after {} frames",
            done.out.frames.len()
        )));
    }
    // The talker over each last frame, and its codec head.
    let stepping: Vec<usize> = (0..loops.len())
        .filter(|&i| loops[i].logits.is_none())
        .collect();
    if let Some(&first) = stepping.first() {
        let frame = loops[first].out.frames.len();
        let _span = tracing::trace_span!("talker_step", frame).entered();
        let clock = Instant::now();
        let inputs = stepping
            .iter()
            .map(|&i| {
                loops[i]
                    .input
                    .take()
                    .expect("a talker input after each frame")
            })
            .collect::<Vec<_>>();
        let mut states: Vec<&mut StackState> = loops
            .iter_mut()
            .filter(|l| l.logits.is_none())
            .map(|l| &mut l.talker)
            .collect();
        let hidden = talker.forward_rows(&Tensor::cat(&inputs, 0)?, &mut states)?;
        let logits = talker.logits(&hidden)?.squeeze(1)?.to_vec2::<f32>()?;
        let elapsed = ms(clock);
        for ((row, &i), logits) in stepping.iter().enumerate().zip(logits) {
            let l = &mut *loops[i];
            l.hidden = hidden.narrow(0, row, 1)?;
            l.logits = Some(logits);
            l.out.talker_ms += elapsed;
            l.out.talker_kv_bytes += l.talker.attended_bytes();
        }
    }

    let clock = Instant::now();
    let mut codes0 = Vec::with_capacity(loops.len());
    for l in loops.iter_mut() {
        let logits = l.logits.take().expect("the talker ran for every row");
        codes0.push(l.pick_code0(talker, logits));
    }
    let eos = talker.config().codec_eos_token_id;
    let sampling = ms(clock);
    let mut going: Vec<&mut FrameLoop> = Vec::with_capacity(loops.len());
    let mut going_codes0 = Vec::with_capacity(loops.len());
    for (l, &code0) in loops.iter_mut().zip(&codes0) {
        l.out.sampling_ms += sampling;
        if code0 == eos {
            l.out.stop = Stop::Eos;
        } else {
            going.push(&mut **l);
            going_codes0.push(code0);
        }
    }
    let frames = predict_codes(talker, &mut going, &going_codes0)?;
    let mut frames = frames.into_iter();
    Ok(codes0
        .iter()
        .map(|&code0| (code0 != eos).then(|| frames.next().expect("a frame per row going")))
        .collect())
}

/// The code predictor's codes 1..G−1 after each row's code 0 (`codes0`, none of them EOS),
/// the rows' frames recorded in their loops and given back, and each loop's next talker
/// input made.
fn predict_codes(
    talker: &Talker,
    loops: &mut [&mut FrameLoop],
    codes0: &[u32],
) -> Result<Vec<Vec<u32>>> {
    if loops.is_empty() {
        return Ok(Vec::new());
    }
    let predictor = talker.predictor();
    let frame_index = loops[0].out.frames.len();
    let _span = tracing::trace_span!("code_predictor", frame = frame_index).entered();
    let mut frames: Vec<Vec<u32>> = codes0.iter().map(|&c| vec![c]).collect();
    let mut sums = Vec::with_capacity(loops.len());
    let mut inputs = Vec::with_capacity(loops.len());
    let (mut predicting, mut sampling) = (0.0, 0.0);
    // Group 1 over each row's two positions [hidden, embed(code 0)], a row at a time (the
    // prompt of each frame's fresh cache), then one pass per group over all rows.
    for ((l, &code0), frame) in loops.iter_mut().zip(codes0).zip(&mut frames) {
        let clock = Instant::now();
        l.predictor.reset();
        let code0_embedding = talker.embed_codec(&[code0])?;
        let first = Tensor::cat(&[&l.hidden, &code0_embedding], 1)?;
        let logits = predictor
            .step(&first, &mut l.predictor, 1)?
            .to_vec1::<f32>()?;
        predicting += ms(clock);
        let clock = Instant::now();
        let code = pick(&logits, l.params.predictor, &mut l.sampler);
        sampling += ms(clock);
        frame.push(code);
        let embedding = predictor.embed(1, &[code])?;
        sums.push((code0_embedding + &embedding)?);
        inputs.push(embedding);
    }
    for group in 2..=predictor.groups() {
        let clock = Instant::now();
        let mut states: Vec<&mut StackState> = loops.iter_mut().map(|l| &mut l.predictor).collect();
        let logits = predictor
            .step_rows(&Tensor::cat(&inputs, 0)?, &mut states, group)?
            .to_vec2::<f32>()?;
        predicting += ms(clock);
        for (row, (l, logits)) in loops.iter_mut().zip(logits).enumerate() {
            let clock = Instant::now();
            let code = pick(&logits, l.params.predictor, &mut l.sampler);
            sampling += ms(clock);
            frames[row].push(code);
            inputs[row] = predictor.embed(group, &[code])?;
            sums[row] = (&sums[row] + &inputs[row])?;
        }
    }
    for ((l, frame), sum) in loops.iter_mut().zip(&frames).zip(sums) {
        l.out.predictor_ms += predicting;
        l.out.sampling_ms += sampling;
        l.out.frames.push(frame.clone());
        let index = l.out.frames.len() - 1;
        if !l.ended() {
            let text = if index < l.trailing_text.dim(1)? {
                l.trailing_text.narrow(1, index, 1)?
            } else {
                l.tts_pad.clone()
            };
            l.input = Some((sum + text)?);
        }
    }
    Ok(frames)
}

/// The frames of concurrent requests of one model taken together ([`StepBatcher`]: a frame
/// of each request waiting, up to `max_rows` a batch; each request's prompt and codec run
/// alone).
pub type FrameBatcher = StepBatcher<Option<FrameLoop>, (), Option<Vec<u32>>>;

/// A request at work on a [`FrameBatcher`].
pub type FrameMember<'b> = StepMember<'b, Option<FrameLoop>, (), Option<Vec<u32>>>;

impl RowStep for Talker {
    type State = Option<FrameLoop>;
    type Input = ();
    /// The frame, or `None` on EOS.
    type Output = Option<Vec<u32>>;

    fn step_rows(
        &self,
        states: &mut [&mut Option<FrameLoop>],
        _: Vec<()>,
    ) -> Result<Vec<Option<Vec<u32>>>> {
        let mut loops = states
            .iter_mut()
            .map(|s| {
                s.as_mut()
                    .ok_or_else(|| Error::InvalidRequest("a frame of no generation".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        next_frames(self, &mut loops)
    }
}

/// Generates frames of `num_code_groups` codes for `prompt`, handing each to `on_frame` as
/// soon as it exists (return `false` to stop; its own time is not counted). The prompt's
/// voice positions come from `prefixes` where it holds them, and go there where it does not.
/// With `batch`, the frames are taken with those of the batcher's other requests (the
/// prompt's pass alone; `on_frame` as the caller runs it).
pub fn generate(
    talker: &Talker,
    prompt: &Prompt,
    params: &GenerationParams,
    prefixes: Option<&PrefixCache>,
    sampler: Sampler,
    batch: Option<(&FrameBatcher, &FrameMember<'_>)>,
    on_frame: &mut dyn FnMut(&[u32]) -> Result<bool>,
) -> Result<Generated> {
    let start = || FrameLoop::start(talker, prompt, params, prefixes, sampler);
    let mut frame_loop = match batch {
        Some((_, member)) => member.alone(start)?,
        None => start()?,
    };
    while !frame_loop.ended() {
        let frame = match batch {
            Some((batcher, member)) => {
                let mut lent = Some(frame_loop);
                let frame = batcher.step(member, talker, &mut lent, ());
                frame_loop = lent.ok_or_else(|| {
                    Error::InvalidRequest("a frame batch kept a request's state".into())
                })?;
                frame?
            }
            None => next_frames(talker, &mut [&mut frame_loop])?.pop().flatten(),
        };
        let Some(frame) = frame else { break };
        if !on_frame(&frame)? {
            frame_loop.out.stop = Stop::Cancelled;
            break;
        }
    }
    Ok(frame_loop.out)
}
