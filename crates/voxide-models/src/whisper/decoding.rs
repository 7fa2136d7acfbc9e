//! Decoding one 30 s window, as openai-whisper's `DecodingTask` does: the initial tokens
//! (previous-text prompt, SOT sequence, prefix), the logit filters in order (suppress blank,
//! suppress tokens, timestamp rules), greedy / sampled / beam search, and ranking.

use super::model::{DecoderState, Whisper};
use super::timing::{self, Matrix, WordTiming, MEDIAN_FILTER_WIDTH};
use super::tokenizer::{SpecialTokens, Tokenizer};
use crate::error::{Error, Result};
use candle_core::{IndexOp, Tensor};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;
use voxide_nn::sampling::{argmax, log_softmax, log_sum_exp, Sampler, SamplingParams};

/// What the decoder writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Task {
    /// Text in the spoken language.
    #[default]
    Transcribe,
    /// English text.
    Translate,
}

/// Options of one window's decode (openai-whisper `DecodingOptions`).
#[derive(Clone, Debug, PartialEq)]
pub struct DecodingOptions {
    /// Transcribe or translate.
    pub task: Task,
    /// Language code; `None` detects it (multilingual models).
    pub language: Option<String>,
    /// 0 = greedy (or beam search); > 0 samples.
    pub temperature: f32,
    /// Maximum tokens to sample (default: half the text context, 224).
    pub sample_len: Option<usize>,
    /// Independent samples at temperature > 0, best one kept.
    pub best_of: Option<usize>,
    /// Beams at temperature 0.
    pub beam_size: Option<usize>,
    /// Beam-search patience (finished candidates = round(beam_size × patience)).
    pub patience: Option<f32>,
    /// Ranking length penalty α: score = logprob / ((5 + len) / 6)^α; `None` divides by length.
    pub length_penalty: Option<f32>,
    /// Previous-text tokens, placed after `<|startofprev|>`.
    pub prompt: Vec<u32>,
    /// Tokens forced after the SOT sequence.
    pub prefix: Vec<u32>,
    /// Forbid a blank or end-of-text as the first sampled token.
    pub suppress_blank: bool,
    /// Tokens never sampled (openai-whisper's `suppress_tokens`, default `"-1"`); `None`
    /// forbids none, not even the special tokens (its `""`).
    pub suppress_tokens: Option<Suppress>,
    /// Decode text only (`<|notimestamps|>`).
    pub without_timestamps: bool,
    /// Latest first timestamp, seconds.
    pub max_initial_timestamp: Option<f32>,
    /// Seed of the sampler used at temperature > 0.
    pub seed: u64,
    /// Never sample end-of-text, so every decode runs `sample_len` steps (benchmarks).
    pub ignore_eot: bool,
}

impl DecodingOptions {
    /// Whether windows decoded with `self` and `other` can share a batch
    /// ([`WindowDecoder::decode_batch`]): the same options but for their prompts (each window's
    /// previous text), their `language` field (each window's language is given apart) and
    /// their seed (the decoder's sampler is seeded once).
    pub fn batches_with(&self, other: &Self) -> bool {
        let key = |o: &Self| Self {
            prompt: Vec::new(),
            language: None,
            seed: 0,
            ..o.clone()
        };
        key(self) == key(other)
    }
}

impl Default for DecodingOptions {
    fn default() -> Self {
        Self {
            task: Task::Transcribe,
            language: None,
            temperature: 0.0,
            sample_len: None,
            best_of: None,
            beam_size: None,
            patience: None,
            length_penalty: None,
            prompt: Vec::new(),
            prefix: Vec::new(),
            suppress_blank: true,
            suppress_tokens: Some(Suppress::default()),
            without_timestamps: false,
            max_initial_timestamp: Some(1.0),
            seed: 0,
            ignore_eot: false,
        }
    }
}

/// `list` with the special tokens every suppression forbids (openai-whisper's
/// `_get_suppress_tokens`), sorted, without repeats and without ids outside the vocabulary
/// (a special token a vocabulary of `n_vocab` lacks).
fn with_specials(mut list: Vec<u32>, s: &SpecialTokens, n_vocab: usize) -> Vec<u32> {
    list.extend([
        s.transcribe,
        s.translate,
        s.sot,
        s.sot_prev,
        s.sot_lm,
        s.no_speech,
    ]);
    list.retain(|&t| (t as usize) < n_vocab);
    list.sort_unstable();
    list.dedup();
    list
}

/// Tokens a decode forbids besides the task, SOT, prompt and no-speech tokens, which are
/// always forbidden with them (openai-whisper's `suppress_tokens` as a list).
#[derive(Clone, Debug, PartialEq)]
pub struct Suppress {
    /// The non-speech symbol set (openai-whisper's `-1`; with the checkpoint's
    /// `suppress_tokens`).
    pub non_speech: bool,
    /// More token ids.
    pub ids: Vec<u32>,
}

impl Suppress {
    /// openai-whisper's string form: comma-separated ids, `-1` for the non-speech set; an
    /// empty string is `None`, nothing suppressed.
    pub fn parse(list: &str) -> std::result::Result<Option<Self>, String> {
        if list.trim().is_empty() {
            return Ok(None);
        }
        let mut suppress = Suppress {
            non_speech: false,
            ids: Vec::new(),
        };
        for t in list.split(',') {
            match t.trim().parse::<i64>() {
                Ok(-1) => suppress.non_speech = true,
                Ok(id) if (0..=u32::MAX as i64).contains(&id) => suppress.ids.push(id as u32),
                _ => return Err(format!("`{t}` is not a token id (-1: the non-speech set)")),
            }
        }
        Ok(Some(suppress))
    }
}

impl Default for Suppress {
    /// openai-whisper's default, `"-1"`.
    fn default() -> Self {
        Self {
            non_speech: true,
            ids: Vec::new(),
        }
    }
}

/// Result of one window's decode (openai-whisper `DecodingResult`).
#[derive(Clone, Debug, PartialEq)]
pub struct DecodingResult {
    /// Language used.
    pub language: String,
    /// Sampled tokens, end-of-text excluded.
    pub tokens: Vec<u32>,
    /// Whether the decode stopped on end-of-text (rather than on the length limit).
    pub ended_with_eot: bool,
    /// Decoded text (timestamps dropped), trimmed.
    pub text: String,
    /// Sum of token log-probabilities / (tokens + 1).
    pub avg_logprob: f32,
    /// Probability of `<|nospeech|>` at the SOT position.
    pub no_speech_prob: f32,
    /// Temperature of this decode.
    pub temperature: f32,
    /// UTF-8 bytes / zlib-compressed bytes of `text`.
    pub compression_ratio: f32,
    /// Time of the prefill (all initial tokens, up to the first sampled token), ms.
    pub prefill_ms: f64,
    /// When the first token was sampled.
    pub first_token_at: Option<Instant>,
    /// Single-token decoder steps after the prefill.
    pub steps: usize,
    /// Time of those steps (decoder, logit rules, search), ms.
    pub steps_ms: f64,
}

/// UTF-8 length over zlib-compressed length, as openai-whisper's `compression_ratio`.
pub fn compression_ratio(text: &str) -> f32 {
    let bytes = text.as_bytes();
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    enc.write_all(bytes).expect("writing to memory");
    let compressed = enc.finish().expect("writing to memory");
    bytes.len() as f32 / compressed.len() as f32
}

/// The decode-time constants of a model + tokenizer, computed once and shared by requests.
#[derive(Clone, Debug)]
pub struct LogitRules {
    special: SpecialTokens,
    /// The non-speech set (with the checkpoint's list).
    non_speech: Vec<u32>,
    /// Suppressed by default: the non-speech set and the task/SOT/prompt/no-speech tokens.
    suppress: Vec<u32>,
    /// Suppressed at the first sampled position: " " and end-of-text.
    begin_suppress: Vec<u32>,
    n_text_ctx: usize,
    n_vocab: usize,
}

impl LogitRules {
    /// Builds the suppress lists: openai-whisper's non-speech set computed from the tokenizer,
    /// united with the checkpoint's `suppress_tokens`, plus the special tokens it always
    /// forbids.
    pub fn new(
        model: &Whisper,
        tokenizer: &Tokenizer,
        checkpoint_suppress: &[u32],
        begin_suppress: Option<&[u32]>,
    ) -> Result<Self> {
        let s = *tokenizer.special();
        let n_vocab = model.config().vocab_size;
        let mut non_speech = tokenizer.non_speech_tokens()?;
        non_speech.extend_from_slice(checkpoint_suppress);
        let suppress = with_specials(non_speech.clone(), &s, n_vocab);
        let begin_suppress = match begin_suppress {
            Some(list) => list.to_vec(),
            None => {
                let mut list = tokenizer.encode(" ")?;
                list.push(s.eot);
                list
            }
        };
        Ok(Self {
            special: s,
            non_speech,
            suppress,
            begin_suppress,
            n_text_ctx: model.config().max_target_positions,
            n_vocab,
        })
    }

    /// The special-token layout.
    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    /// The tokens `suppress` forbids, sorted; refuses ids outside the vocabulary.
    pub fn suppressed(&self, suppress: Option<&Suppress>) -> Result<Cow<'_, [u32]>> {
        let Some(suppress) = suppress else {
            return Ok(Cow::Borrowed(&[]));
        };
        if suppress.non_speech && suppress.ids.is_empty() {
            return Ok(Cow::Borrowed(&self.suppress));
        }
        let n_vocab = self.n_vocab;
        if let Some(bad) = suppress.ids.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Error::InvalidRequest(format!(
                "suppress token {bad} is outside the vocabulary ({n_vocab} tokens)"
            )));
        }
        let mut list = if suppress.non_speech {
            self.non_speech.clone()
        } else {
            Vec::new()
        };
        list.extend_from_slice(&suppress.ids);
        Ok(Cow::Owned(with_specials(list, &self.special, n_vocab)))
    }

    /// Applies the filters to one row of logits; `sampled` are the tokens after the initial
    /// ones, `suppress` the tokens never sampled.
    fn apply(&self, logits: &mut [f32], sampled: &[u32], opts: &DecodingOptions, suppress: &[u32]) {
        let s = &self.special;
        let first = sampled.is_empty();
        if opts.suppress_blank && first {
            for &t in &self.begin_suppress {
                logits[t as usize] = f32::NEG_INFINITY;
            }
        }
        for &t in suppress {
            logits[t as usize] = f32::NEG_INFINITY;
        }
        if opts.without_timestamps {
            return;
        }
        let ts = s.timestamp_begin as usize;
        logits[s.no_timestamps as usize] = f32::NEG_INFINITY;
        let is_ts = |t: u32| t >= s.timestamp_begin;
        let n = sampled.len();
        let last_was_ts = n >= 1 && is_ts(sampled[n - 1]);
        let penultimate_was_ts = n < 2 || is_ts(sampled[n - 2]);
        if last_was_ts {
            if penultimate_was_ts {
                logits[ts..].fill(f32::NEG_INFINITY);
            } else {
                logits[..s.eot as usize].fill(f32::NEG_INFINITY);
            }
        }
        if let Some(&last_ts) = sampled.iter().rev().find(|&&t| is_ts(t)) {
            // Timestamps never decrease, and a segment has a nonzero length.
            let bound = if last_was_ts && !penultimate_was_ts {
                last_ts
            } else {
                last_ts + 1
            };
            logits[ts..bound as usize].fill(f32::NEG_INFINITY);
        }
        if first {
            logits[..ts].fill(f32::NEG_INFINITY);
            if let Some(max_t) = opts.max_initial_timestamp {
                let last_allowed = ts + (max_t / 0.02).round() as usize;
                if last_allowed + 1 < logits.len() {
                    logits[last_allowed + 1..].fill(f32::NEG_INFINITY);
                }
            }
        }
        // If the timestamps together are likelier than any text token, sample a timestamp.
        // (openai-whisper compares log-probabilities; both sides share the normaliser, so
        // comparing the timestamps' log-sum-exp with the best text logit is the same test
        // without a log-softmax over the whole vocabulary.)
        let timestamp_lse = log_sum_exp(&logits[ts..]);
        let max_text = logits[..ts]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        if timestamp_lse > max_text {
            logits[..ts].fill(f32::NEG_INFINITY);
        }
    }
}

/// Beam-search bookkeeping for one audio (openai-whisper `BeamSearchDecoder`).
struct BeamSearch {
    beam_size: usize,
    max_candidates: usize,
    /// Finished sequences with their sum log-probability, in insertion order.
    finished: Vec<(Vec<u32>, f32)>,
}

impl BeamSearch {
    /// One step: expands each beam by its beam_size + 1 best tokens, keeps the best beam_size
    /// unfinished sequences and collects finished ones. Returns (new rows, source rows, done).
    fn update(
        &mut self,
        rows: &[Vec<u32>],
        logprobs: &[Vec<f32>],
        sum_logprobs: &mut [f32],
        eot: u32,
    ) -> (Vec<Vec<u32>>, Vec<u32>, bool) {
        // Candidates in first-seen order; a repeated sequence keeps its place but takes the
        // later score and source, exactly as the reference's dict updates do.
        let mut candidates: Vec<(Vec<u32>, f32, u32)> = Vec::new();
        let mut index: HashMap<Vec<u32>, usize> = HashMap::new();
        for (j, (prefix, lp)) in rows.iter().zip(logprobs).enumerate() {
            for token in top_k(lp, self.beam_size + 1) {
                let mut seq = prefix.clone();
                seq.push(token as u32);
                let score = sum_logprobs[j] + lp[token];
                match index.get(&seq) {
                    Some(&k) => {
                        candidates[k].1 = score;
                        candidates[k].2 = j as u32;
                    }
                    None => {
                        index.insert(seq.clone(), candidates.len());
                        candidates.push((seq, score, j as u32));
                    }
                }
            }
        }
        // Stable sort, best first (Python's sorted(..., reverse=True) keeps ties in order).
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut next = Vec::new();
        let mut sources = Vec::new();
        let mut newly_finished = Vec::new();
        for (seq, score, source) in candidates {
            if *seq.last().expect("non-empty") == eot {
                newly_finished.push((seq, score));
            } else {
                sum_logprobs[next.len()] = score;
                next.push(seq);
                sources.push(source);
                if next.len() == self.beam_size {
                    break;
                }
            }
        }
        for (seq, score) in newly_finished {
            if self.finished.len() >= self.max_candidates {
                break;
            }
            if let Some(existing) = self.finished.iter_mut().find(|(s, _)| *s == seq) {
                existing.1 = score;
            } else {
                self.finished.push((seq, score));
            }
        }
        let done = self.finished.len() >= self.max_candidates;
        (next, sources, done)
    }

    /// Adds the best unfinished beams when too few sequences finished. Returns (sequence,
    /// sum log-probability, ended on a sampled end-of-text); added beams get a synthetic one.
    fn finalize(
        mut self,
        rows: &[Vec<u32>],
        sum_logprobs: &[f32],
        eot: u32,
    ) -> Vec<(Vec<u32>, f32, bool)> {
        let mut out: Vec<(Vec<u32>, f32, bool)> = self
            .finished
            .drain(..)
            .map(|(seq, score)| (seq, score, true))
            .collect();
        if out.len() < self.beam_size {
            let mut order: Vec<usize> = (0..rows.len()).collect();
            // np.argsort(...)[::-1]: descending, ties in reverse index order.
            order.sort_by(|&a, &b| sum_logprobs[a].total_cmp(&sum_logprobs[b]).then(a.cmp(&b)));
            for j in order.into_iter().rev() {
                let mut seq = rows[j].clone();
                seq.push(eot);
                if let Some(existing) = out.iter_mut().find(|(s, _, _)| *s == seq) {
                    existing.1 = sum_logprobs[j];
                } else {
                    out.push((seq, sum_logprobs[j], false));
                }
                if out.len() >= self.beam_size {
                    break;
                }
            }
        }
        out
    }
}

/// The decoder state for `rows` rows over `audio` (whose windows the rows divide into equal
/// groups), created on first use, with no tokens; its cross-attention K/V computed where the
/// audio changed since it last decoded. A new state replaces the others of more than
/// one row: each holds its rows' caches for the whole context.
fn state_for<'s>(
    states: &'s mut HashMap<usize, DecoderState>,
    model: &Whisper,
    audio: Option<&Tensor>,
    rows: usize,
) -> Result<&'s mut DecoderState> {
    let audio = audio.ok_or_else(|| Error::InvalidRequest("no audio set".into()))?;
    let windows = audio.dim(0)?;
    if !rows.is_multiple_of(windows) {
        return Err(Error::InvalidRequest(format!(
            "{rows} decoder rows do not divide among {windows} windows of audio"
        )));
    }
    if !states.contains_key(&rows) {
        states.retain(|&r, _| r == 1);
        states.insert(rows, model.new_state(rows)?);
    }
    let state = states.get_mut(&rows).expect("inserted above");
    if state.has_audio() {
        state.reset_tokens();
    } else {
        model.set_audio(state, audio)?;
    }
    Ok(state)
}

/// Indices of the k largest values, largest first.
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    for (i, &v) in values.iter().enumerate() {
        if best.len() == k && values[best[k - 1]] >= v {
            continue;
        }
        let pos = best.partition_point(|&b| values[b] >= v);
        best.insert(pos, i);
        best.truncate(k);
    }
    best
}

/// Decodes windows of one model; holds a decoder state per batch size so that decoding
/// many windows allocates no new caches.
pub struct WindowDecoder<'a> {
    model: &'a Whisper,
    tokenizer: &'a Tokenizer,
    rules: &'a LogitRules,
    states: HashMap<usize, DecoderState>,
    audio: Option<Tensor>,
    sampler: Sampler,
}

impl<'a> WindowDecoder<'a> {
    /// A decoder over `model`; call [`Self::set_audio`] before decoding.
    pub fn new(
        model: &'a Whisper,
        tokenizer: &'a Tokenizer,
        rules: &'a LogitRules,
        seed: u64,
    ) -> Self {
        Self {
            model,
            tokenizer,
            rules,
            states: HashMap::new(),
            audio: None,
            sampler: Sampler::new(seed),
        }
    }

    /// Releases the current window's audio features and cross-attention K/V; call it before
    /// encoding the next window so its activations do not stack on top of them.
    pub fn clear_audio(&mut self) {
        self.audio = None;
        self.states.values_mut().for_each(DecoderState::clear_audio);
    }

    /// Sets the encoder output (windows, 1500, d) of the window (or the windows of a batch,
    /// [`Self::decode_batch`]) to decode.
    pub fn set_audio(&mut self, audio_features: Tensor) -> Result<()> {
        // (windows, positions, d): refused here, not at the next decode.
        audio_features.dims3()?;
        // The caches are kept; each state's cross-attention K/V are computed when it next
        // decodes (a window decoded in a batch elsewhere needs none here).
        self.states.values_mut().for_each(DecoderState::clear_audio);
        self.audio = Some(audio_features);
        Ok(())
    }

    /// Language probabilities from one decoder step on `[sot]` (openai `detect_language`):
    /// returns (code, probability) sorted by token id.
    pub fn detect_language(&mut self) -> Result<Vec<(&'static str, f32)>> {
        let s = *self.rules.special();
        if !s.multilingual {
            return Err(Error::InvalidRequest(
                "language detection needs a multilingual model; this one is English-only".into(),
            ));
        }
        let model = self.model;
        let state = state_for(&mut self.states, model, self.audio.as_ref(), 1)?;
        let sot = Tensor::new(&[[s.sot]], model.device())?;
        let hidden = model.decode(&sot, state, None)?;
        let logits = model.logits(&hidden)?.flatten_all()?.to_vec1::<f32>()?;
        let langs = s.language_tokens();
        let max = langs
            .clone()
            .map(|t| logits[t as usize])
            .fold(f32::NEG_INFINITY, f32::max);
        let total: f64 = langs
            .clone()
            .map(|t| ((logits[t as usize] - max) as f64).exp())
            .sum();
        Ok(langs
            .map(|t| {
                let p = ((logits[t as usize] - max) as f64).exp() / total;
                (s.language_of(t).expect("language token"), p as f32)
            })
            .collect())
    }

    /// The tokens that start the decode: `[<|startofprev|> prompt…] sot [lang task] [notimestamps] prefix…`.
    pub fn initial_tokens(&self, opts: &DecodingOptions, language: &str) -> Result<Vec<u32>> {
        let s = self.rules.special();
        let mut tokens = Vec::new();
        if !opts.prompt.is_empty() {
            let keep = self.rules.n_text_ctx / 2 - 1;
            let start = opts.prompt.len().saturating_sub(keep);
            tokens.push(s.sot_prev);
            tokens.extend_from_slice(&opts.prompt[start..]);
        }
        tokens.push(s.sot);
        if s.multilingual {
            let lang = s.language_token(language).ok_or_else(|| {
                Error::InvalidRequest(format!("unknown language code {language:?}"))
            })?;
            tokens.push(lang);
            tokens.push(match opts.task {
                Task::Transcribe => s.transcribe,
                Task::Translate => s.translate,
            });
        }
        if opts.without_timestamps {
            tokens.push(s.no_timestamps);
        }
        if !opts.prefix.is_empty() {
            let keep = self.rules.n_text_ctx / 2;
            let start = opts.prefix.len().saturating_sub(keep);
            tokens.extend_from_slice(&opts.prefix[start..]);
        }
        Ok(tokens)
    }

    /// Word timings of `text_tokens` in the current window, as openai-whisper's
    /// `find_alignment`: one teacher-forced pass over `sot sequence, <|notimestamps|>, text,
    /// <|endoftext|>` (no previous-text prompt) keeps the cross-attention scores of `heads`
    /// ([layer, head]) over the first `frames / 2` audio positions (`frames`: mel frames of the
    /// window's content) and each text token's probability; see [`super::timing`].
    pub fn align(
        &mut self,
        text_tokens: &[u32],
        language: &str,
        task: Task,
        frames: usize,
        heads: &[[usize; 2]],
    ) -> Result<Vec<WordTiming>> {
        if text_tokens.is_empty() {
            return Ok(Vec::new());
        }
        let s = *self.rules.special();
        let opts = DecodingOptions {
            task,
            without_timestamps: true,
            ..DecodingOptions::default()
        };
        let mut tokens = self.initial_tokens(&opts, language)?;
        // The row of <|notimestamps|>, which predicts the first text token.
        let first_row = tokens.len() - 1;
        tokens.extend_from_slice(text_tokens);
        tokens.push(s.eot);
        let model = self.model;
        let state = state_for(&mut self.states, model, self.audio.as_ref(), 1)?;
        let input = Tensor::new(tokens.as_slice(), model.device())?.unsqueeze(0)?;
        let (hidden, scores) = model.decode_with_cross_scores(&input, state, heads)?;

        // Probability of each text token among the text tokens (openai: logits[:, :eot]).
        let rows = hidden.narrow(1, first_row, text_tokens.len())?;
        let logits = model.logits(&rows)?.squeeze(0)?.to_vec2::<f32>()?;
        let probs: Vec<f32> = logits
            .iter()
            .zip(text_tokens)
            .map(|(row, &t)| {
                let text = &row[..s.eot as usize];
                let max = text.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f64 = text.iter().map(|&l| ((l - max) as f64).exp()).sum();
                (((row[t as usize] - max) as f64).exp() / sum) as f32
            })
            .collect();

        let heads: Vec<Matrix> = scores
            .to_vec3::<f32>()?
            .into_iter()
            .map(|rows| Matrix {
                rows: rows.len(),
                cols: rows.first().map_or(0, Vec::len),
                data: rows.concat(),
            })
            .collect();
        let cost = timing::alignment_cost(&heads, frames / 2, first_row, MEDIAN_FILTER_WIDTH);
        let mut with_eot = text_tokens.to_vec();
        with_eot.push(s.eot);
        let words = self.tokenizer.split_to_word_tokens(&with_eot, language);
        Ok(timing::words_from_cost(&cost, words, &probs))
    }

    /// Decodes the current window with `opts`; `language` must be resolved.
    pub fn decode(&mut self, opts: &DecodingOptions, language: &str) -> Result<DecodingResult> {
        let mut results = self.decode_batch(&[(opts, language)], None)?;
        Ok(results.pop().expect("one window, one result"))
    }

    /// The sampler decodes at temperature > 0 draw from (seeded at [`Self::new`]); a batch
    /// decoded elsewhere may draw from it in this decoder's stead.
    pub fn sampler_mut(&mut self) -> &mut Sampler {
        &mut self.sampler
    }

    /// Decodes the current windows — the audio set holds one per entry of `windows`, each
    /// with its options and its resolved language — in one batch: every decoder step runs all
    /// windows' candidates at once (the weights read once for all), and each window gets what
    /// [`Self::decode`] gives it alone (greedy and beam search: the same tokens; sampling
    /// too where `samplers` gives each window the sampler it would draw from alone, else all
    /// draw from this decoder's). The windows' options must agree but for their prompts
    /// ([`DecodingOptions::batches_with`]), and their initial tokens must be equally long.
    /// The batch's timings go with the first result; the others carry none.
    pub fn decode_batch(
        &mut self,
        windows: &[(&DecodingOptions, &str)],
        mut samplers: Option<&mut [Sampler]>,
    ) -> Result<Vec<DecodingResult>> {
        let s = *self.rules.special();
        let Some(audio) = &self.audio else {
            return Err(Error::InvalidRequest("no audio set".into()));
        };
        let n_windows = audio.dim(0)?;
        let Some(&(opts, _)) = windows.first().filter(|_| windows.len() == n_windows) else {
            return Err(Error::InvalidRequest(format!(
                "{} windows' options for {n_windows} windows of audio",
                windows.len()
            )));
        };
        if samplers.as_ref().is_some_and(|s| s.len() != windows.len()) {
            return Err(Error::InvalidRequest(
                "a batch needs one sampler a window".into(),
            ));
        }
        if windows.iter().any(|(o, _)| !o.batches_with(opts)) {
            return Err(Error::InvalidRequest(
                "the windows of a batch need the same decoding options but for their prompts"
                    .into(),
            ));
        }
        let initial: Vec<Vec<u32>> = windows
            .iter()
            .map(|(o, language)| self.initial_tokens(o, language))
            .collect::<Result<_>>()?;
        let sample_begin = initial[0].len();
        if initial.iter().any(|tokens| tokens.len() != sample_begin) {
            return Err(Error::InvalidRequest(
                "the windows of a batch need initial tokens of one length".into(),
            ));
        }
        let sot_index = initial[0]
            .iter()
            .position(|&t| t == s.sot)
            .expect("sot is always present");
        let sample_len = opts.sample_len.unwrap_or(self.rules.n_text_ctx / 2);
        if sample_begin >= self.rules.n_text_ctx {
            return Err(Error::InvalidRequest(format!(
                "the prompt ({sample_begin} tokens) leaves no room in the {}-token context",
                self.rules.n_text_ctx
            )));
        }
        let beam_size = if opts.temperature == 0.0 {
            opts.beam_size
        } else {
            None
        };
        let best_of = if opts.temperature > 0.0 {
            opts.best_of
        } else {
            None
        };
        // Candidates per window; the rows of window w are w·n_group … (w + 1)·n_group − 1.
        let n_group = beam_size.or(best_of).unwrap_or(1).max(1);
        let mut groups: Vec<Candidates> = initial
            .into_iter()
            .map(|tokens| Candidates {
                rows: vec![tokens; n_group],
                sum_logprobs: vec![0f32; n_group],
                beam: beam_size.map(|b| BeamSearch {
                    beam_size: b,
                    max_candidates: (b as f32 * opts.patience.unwrap_or(1.0)).round() as usize,
                    finished: Vec::new(),
                }),
                no_speech_prob: f32::NAN,
                done: false,
            })
            .collect();
        let model = self.model;
        let rules = self.rules;
        let suppress = rules.suppressed(opts.suppress_tokens.as_ref())?;
        let n_rows = groups.len() * n_group;
        let (mut prefill_ms, mut steps_ms, mut steps) = (0.0, 0.0, 0);
        let mut first_token_at = None;
        let device = model.device().clone();
        let shared_sampler = &mut self.sampler;
        let state = state_for(&mut self.states, model, self.audio.as_ref(), n_rows)?;
        for i in 0..sample_len {
            // Entered before the clock starts and left after it is read: what a subscriber
            // does on entering (the bench's bandwidth probes) stays out of the step's time.
            let _span = if i == 0 {
                tracing::trace_span!("prefill", tokens = sample_begin * n_rows)
            } else {
                tracing::trace_span!("decoder_step", step = i)
            }
            .entered();
            let clock = Instant::now();
            // A settled window's rows keep running (end-of-text where a beam search left
            // fewer) so that the batch keeps its shape; what they compute is not read.
            let input: Vec<u32> = if i == 0 {
                groups
                    .iter()
                    .flat_map(|g| g.rows.iter().flatten())
                    .copied()
                    .collect()
            } else {
                groups
                    .iter()
                    .flat_map(|g| {
                        let last = g.rows.iter().map(|r| *r.last().expect("non-empty"));
                        last.chain(std::iter::repeat(s.eot)).take(n_group)
                    })
                    .collect()
            };
            let t = if i == 0 { sample_begin } else { 1 };
            let input = Tensor::from_vec(input, (n_rows, t), &device)?;
            let hidden = model.decode(&input, state, None)?;
            if i == 0 {
                for (w, group) in groups.iter_mut().enumerate() {
                    let at_sot = model
                        .logits(&hidden.i((w * n_group, sot_index))?)?
                        .to_vec1::<f32>()?;
                    if at_sot.iter().any(|v| v.is_nan()) {
                        // Greedy decoding would pick token 0 ('!') forever and call it text.
                        return Err(Error::InvalidRequest(
                            "the model's logits are not numbers (NaN): its weights hold NaN or infinite values".into(),
                        ));
                    }
                    let lse = log_sum_exp(&at_sot);
                    group.no_speech_prob = (at_sot[s.no_speech as usize] - lse).exp();
                }
            }
            let last = hidden.narrow(1, t - 1, 1)?;
            let mut logits = model.logits(&last)?.squeeze(1)?.to_vec2::<f32>()?;
            let _sampling = tracing::trace_span!("sampling").entered();
            // Where each row's cache comes from after a beam search's step (none: in place).
            let mut sources: Option<Vec<u32>> = None;
            for (w, (group, logits)) in groups
                .iter_mut()
                .zip(logits.chunks_mut(n_group))
                .enumerate()
            {
                if group.done {
                    continue;
                }
                for (row, l) in group.rows.iter().zip(logits.iter_mut()) {
                    if opts.ignore_eot {
                        l[s.eot as usize] = f32::NEG_INFINITY;
                    }
                    rules.apply(l, &row[sample_begin..], opts, &suppress);
                }
                match group.beam.as_mut() {
                    None => {
                        let sampler = match samplers.as_deref_mut() {
                            Some(own) => &mut own[w],
                            None => &mut *shared_sampler,
                        };
                        for (k, l) in logits.iter().enumerate() {
                            let prev = *group.rows[k].last().expect("non-empty");
                            let next = if prev == s.eot {
                                s.eot
                            } else if opts.temperature == 0.0 {
                                argmax(l) as u32
                            } else {
                                sampler.sample(
                                    l,
                                    SamplingParams {
                                        temperature: opts.temperature,
                                        top_k: 0,
                                        top_p: 1.0,
                                    },
                                ) as u32
                            };
                            if prev != s.eot {
                                group.sum_logprobs[k] += l[next as usize] - log_sum_exp(l);
                            }
                            group.rows[k].push(next);
                        }
                        group.done = group
                            .rows
                            .iter()
                            .all(|r| *r.last().expect("non-empty") == s.eot);
                    }
                    Some(search) => {
                        let logprobs: Vec<Vec<f32>> = logits
                            .iter()
                            .map(|l| {
                                let mut lp = vec![0f32; l.len()];
                                log_softmax(l, &mut lp);
                                lp
                            })
                            .collect();
                        let (next, from, done) =
                            search.update(&group.rows, &logprobs, &mut group.sum_logprobs, s.eot);
                        // Every candidate ended: nothing left to extend (the rows, fewer
                        // than the window's, are kept for the ranking).
                        group.done = done || next.len() < n_group;
                        if next.len() == n_group {
                            let sources =
                                sources.get_or_insert_with(|| (0..n_rows as u32).collect());
                            for (k, src) in from.into_iter().enumerate() {
                                sources[w * n_group + k] = (w * n_group) as u32 + src;
                            }
                        }
                        group.rows = next;
                    }
                }
            }
            if let Some(sources) = sources {
                state.reorder(&sources)?;
            }
            let elapsed = clock.elapsed().as_secs_f64() * 1e3;
            if i == 0 {
                prefill_ms = elapsed;
                first_token_at = Some(Instant::now());
            } else {
                steps_ms += elapsed;
                steps += 1;
            }
            // Every row grows by one token a step until its window is done.
            if groups.iter().all(|g| g.done) || sample_begin + i + 1 > rules.n_text_ctx {
                break;
            }
        }
        let mut results = Vec::with_capacity(groups.len());
        for (group, (_, language)) in groups.into_iter().zip(windows) {
            let mut result = self.best_candidate(group, sample_begin, opts, language)?;
            if results.is_empty() {
                (result.prefill_ms, result.first_token_at) = (prefill_ms, first_token_at);
                (result.steps, result.steps_ms) = (steps, steps_ms);
            }
            results.push(result);
        }
        Ok(results)
    }

    /// A window's result: its candidates, each cut at its first end-of-text, ranked by sum
    /// log-probability over the length penalty.
    fn best_candidate(
        &self,
        group: Candidates,
        sample_begin: usize,
        opts: &DecodingOptions,
        language: &str,
    ) -> Result<DecodingResult> {
        let eot = self.rules.special().eot;
        let candidates: Vec<(Vec<u32>, f32, bool)> = match group.beam {
            None => group
                .rows
                .into_iter()
                .zip(group.sum_logprobs)
                .map(|(seq, lp)| (seq, lp, true))
                .collect(),
            Some(search) => search.finalize(&group.rows, &group.sum_logprobs, eot),
        };
        let cut = |seq: &[u32], sampled_eot: bool| -> (Vec<u32>, bool) {
            let sampled = &seq[sample_begin.min(seq.len())..];
            match sampled.iter().position(|&t| t == eot) {
                Some(p) => (sampled[..p].to_vec(), sampled_eot),
                None => (sampled.to_vec(), false),
            }
        };
        let mut best: Option<(f32, Vec<u32>, bool, f32)> = None;
        for (seq, logprob, sampled_eot) in &candidates {
            let (tokens, eot) = cut(seq, *sampled_eot);
            let penalty = match opts.length_penalty {
                None => tokens.len() as f32,
                Some(alpha) => ((5.0 + tokens.len() as f32) / 6.0).powf(alpha),
            };
            let score = logprob / penalty;
            if best.as_ref().is_none_or(|b| score > b.0) {
                best = Some((score, tokens, eot, *logprob));
            }
        }
        let (_, tokens, ended_with_eot, sum_logprob) = best.expect("at least one candidate");
        let text = self
            .tokenizer
            .decode_with_specials(&tokens)?
            .trim()
            .to_string();
        Ok(DecodingResult {
            language: language.to_string(),
            avg_logprob: sum_logprob / (tokens.len() as f32 + 1.0),
            compression_ratio: compression_ratio(&text),
            text,
            tokens,
            ended_with_eot,
            no_speech_prob: group.no_speech_prob,
            temperature: opts.temperature,
            prefill_ms: 0.0,
            first_token_at: None,
            steps: 0,
            steps_ms: 0.0,
        })
    }
}

/// One window's candidates in a batched decode: its rows (the beams, or the samples), their
/// sum log-probabilities, its beam search.
struct Candidates {
    rows: Vec<Vec<u32>>,
    sum_logprobs: Vec<f32>,
    beam: Option<BeamSearch>,
    no_speech_prob: f32,
    /// Settled: every row ended, or the beam search has its candidates.
    done: bool,
}
