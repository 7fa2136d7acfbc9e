//! Streaming transcription: feed 16 kHz samples in chunks of any size, get text as soon as it
//! is decoded. Every stage is incremental (as in antirez/voxtral.c): mel frames are computed
//! when their window is complete, the causal conv stem keeps its left context, the encoder
//! runs on new frames against its sliding KV cache, leftover encoder frames wait for their
//! group of four, and the decoder takes one step per adapter vector (80 ms of audio).
//!
//! Schedule (mistral-common / transformers, spec §9): the stream starts with 32 tokens of
//! silence (40 960 samples); positions 0 … 38 are the prompt `[BOS] + [STREAMING_PAD] × 38`
//! plus their audio vectors; from position 38 on each position yields one token, fed back
//! with the next audio vector. [`RealtimeStream::finish`] pads the audio to a whole token and
//! adds `delay + 1 + 10` tokens of silence; the last position is never fed (transformers'
//! `max_length` is the number of audio positions). Chunking never changes the result.

use super::model::NetworkState;
use super::VoxtralRealtime;
use crate::batching::{alone, StepMember};
use crate::tekken::TekkenDecoder;
use crate::{Result, Timings};
use candle_core::{DType, Tensor};
use std::time::Instant;
use voxide_audio::MelStream;
use voxide_nn::sampling::argmax;

/// Silence tokens transformers appends after the delay (`OFFLINE_STREAMING_BUFFER_TOKENS`).
const RIGHT_PAD_BUFFER_TOKENS: usize = 10;

/// Options of one stream.
#[derive(Clone, Copy, Debug)]
pub struct StreamOptions {
    /// Transcription delay in ms: 80 … 2400 in steps of 80 (the model was trained at 480).
    pub delay_ms: u32,
    /// Precision of the encoder and decoder KV caches (f32, f16 or bf16; `None`: the model's,
    /// [`default_kv_dtype`](super::model::VoxtralRealtimeModel::default_kv_dtype)).
    pub kv_dtype: Option<DType>,
    /// Run the encoder once this many conv frames (20 ms each) are waiting: larger batches
    /// read the encoder weights fewer times (each pass reads all of them).
    pub encoder_min_frames: usize,
    /// Live streams: after end-of-stream, start a new prompt on the following audio instead
    /// of stopping (voxtral.c restarts its decoder the same way). Offline transcription
    /// stops, as transformers does.
    pub restart_on_eos: bool,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            delay_ms: 480,
            kv_dtype: None,
            encoder_min_frames: 48,
            restart_on_eos: false,
        }
    }
}

/// A token the decoder produced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StreamToken {
    pub id: u32,
    /// Audio position (80 ms each, left padding included) that produced it; the first
    /// output comes from position 38.
    pub position: usize,
    /// Audio time it covers up to, seconds from the start of the input.
    pub time: f64,
}

/// One transcription stream over a loaded [`VoxtralRealtime`].
pub struct RealtimeStream<'m> {
    model: &'m VoxtralRealtime,
    options: StreamOptions,
    delay_tokens: usize,
    mel: MelStream,
    net: NetworkState,
    /// Conv frames (1, t, enc_dim) waiting for the encoder.
    conv_pending: Vec<Tensor>,
    conv_pending_frames: usize,
    /// Encoder frames (1, r < 4, enc_dim) waiting for their group of four.
    encoder_leftover: Option<Tensor>,
    /// Adapter vectors (1, n, dec_dim) not yet consumed by the decoder.
    vectors: Option<Tensor>,
    /// The prompt `[BOS] + [STREAMING_PAD] × (left pad + delay)`.
    prompt: Vec<u32>,
    tokens: Vec<StreamToken>,
    text: TekkenDecoder,
    /// Real samples pushed (without padding).
    samples: usize,
    /// Audio vectors the decoder consumed before its current prompt (restarts).
    vectors_before: usize,
    /// Audio vectors in all (set by `finish`); the last one is never fed.
    vector_limit: Option<usize>,
    stopped: bool,
    timings: Timings,
    started: Instant,
}

impl<'m> RealtimeStream<'m> {
    pub(crate) fn new(model: &'m VoxtralRealtime, options: StreamOptions) -> Result<Self> {
        let delay_tokens = model.delay_tokens(options.delay_ms)?;
        let started = Instant::now();
        let network = model.network();
        let kv_dtype = options
            .kv_dtype
            .unwrap_or_else(|| network.default_kv_dtype());
        let net = network.new_state(delay_tokens, kv_dtype)?;
        let left = model.schedule().left_pad_tokens;
        let mut prompt = vec![model.tokenizer().bos()];
        prompt.extend(std::iter::repeat_n(
            model.streaming_pad(),
            left + delay_tokens,
        ));
        let mut stream = Self {
            model,
            options,
            delay_tokens,
            mel: MelStream::new(model.mel(), network.config().global_log_mel_max),
            net,
            conv_pending: Vec::new(),
            conv_pending_frames: 0,
            encoder_leftover: None,
            vectors: None,
            prompt,
            tokens: Vec::new(),
            text: model.tokenizer().stream_decoder(),
            samples: 0,
            vectors_before: 0,
            vector_limit: None,
            stopped: false,
            timings: Timings::default(),
            started,
        };
        let silence = vec![0f32; left * model.schedule().samples_per_token];
        stream.feed(&silence, false)?;
        Ok(stream)
    }

    /// Appends 16 kHz mono samples; returns the text decoded because of them (often empty).
    pub fn push(&mut self, samples: &[f32]) -> Result<String> {
        self.samples += samples.len();
        self.feed(samples, false)
    }

    /// Ends the input: pads it as the offline schedule does, decodes the rest and returns the
    /// remaining text (including any incomplete UTF-8 held back).
    pub fn finish(&mut self) -> Result<String> {
        let per_token = self.model.schedule().samples_per_token;
        let real_tokens = self.samples.div_ceil(per_token);
        let pad_to_token = real_tokens * per_token - self.samples;
        let right = (self.delay_tokens + 1 + RIGHT_PAD_BUFFER_TOKENS) * per_token;
        let vectors = self.model.schedule().left_pad_tokens
            + real_tokens
            + self.delay_tokens
            + 1
            + RIGHT_PAD_BUFFER_TOKENS;
        self.vector_limit = Some(vectors - 1);
        let mut text = self.feed(&vec![0f32; pad_to_token + right], true)?;
        text.push_str(&self.text.finish());
        self.stopped = true;
        Ok(text)
    }

    /// Tokens produced so far (special tokens included; EOS ends the list unless the stream
    /// restarts after it).
    pub fn tokens(&self) -> &[StreamToken] {
        &self.tokens
    }

    /// Where the time went so far.
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// Audio vectors (80 ms positions) the decoder consumed so far.
    pub fn positions(&self) -> usize {
        self.vectors_before + self.net.decoder_position()
    }

    /// Positions held by the largest encoder and decoder KV caches.
    pub fn cached_positions(&self) -> (usize, usize) {
        self.net.cached_positions()
    }

    fn feed(&mut self, samples: &[f32], last: bool) -> Result<String> {
        if self.stopped {
            // After end-of-stream nothing more is decoded; the audio is dropped.
            return Ok(String::new());
        }
        // At work on the model until this call returns, where its steps batch with other
        // streams' ([`crate::batching::StepBatcher`]).
        let member = self.model.batcher().map(|b| b.join());
        let model = self.model.network();
        let n_mels = model.config().num_mel_bins;
        let t0 = Instant::now();
        let mut frames = self.mel.push(self.model.mel(), samples);
        if last {
            frames.extend(self.mel.finish(self.model.mel()));
        }
        self.timings.mel_ms += ms(t0);
        let t = frames.len() / n_mels;
        if t > 0 {
            // (t, n_mels) -> (1, n_mels, t)
            let mel = Tensor::from_vec(frames, (t, n_mels), model.device())?
                .t()?
                .unsqueeze(0)?;
            let t0 = Instant::now();
            let [_, conv] = alone(member.as_ref(), || model.stem(&mut self.net, &mel))?;
            let n = conv.dim(2)?;
            if n > 0 {
                self.conv_pending.push(conv.transpose(1, 2)?.contiguous()?);
                self.conv_pending_frames += n;
            }
            self.timings.encoder_ms += ms(t0);
        }
        let prefilled = self.net.decoder_position() > 0;
        let needed = if prefilled {
            self.options.encoder_min_frames
        } else {
            // The prompt prefill needs all its vectors at once.
            (self.prompt.len() * model.config().downsample_factor)
                .saturating_sub(self.buffered_encoder_frames())
        };
        if self.conv_pending_frames > 0 && (last || self.conv_pending_frames >= needed.max(1)) {
            alone(member.as_ref(), || self.run_encoder())?;
        }
        self.run_decoder(member.as_ref())
    }

    /// Encoder frames already computed but not yet consumed by the decoder (leftovers and
    /// vectors, in encoder-frame units).
    fn buffered_encoder_frames(&self) -> usize {
        let factor = self.model.network().config().downsample_factor;
        let leftover = self
            .encoder_leftover
            .as_ref()
            .map_or(0, |t| t.dim(1).unwrap_or(0));
        let vectors = self.vectors.as_ref().map_or(0, |t| t.dim(1).unwrap_or(0));
        leftover + vectors * factor
    }

    fn run_encoder(&mut self) -> Result<()> {
        let model = self.model.network();
        let t0 = Instant::now();
        let conv = Tensor::cat(&std::mem::take(&mut self.conv_pending), 1)?;
        self.conv_pending_frames = 0;
        let encoded = model.encode(&mut self.net, &conv, None)?;
        self.timings.encoder_calls += 1;
        let encoded = match self.encoder_leftover.take() {
            Some(prev) => Tensor::cat(&[&prev, &encoded], 1)?,
            None => encoded,
        };
        let factor = model.config().downsample_factor;
        let total = encoded.dim(1)?;
        let groups = total / factor;
        if groups * factor < total {
            self.encoder_leftover =
                Some(encoded.narrow(1, groups * factor, total - groups * factor)?);
        }
        if groups > 0 {
            let vectors = model.adapt(&encoded.narrow(1, 0, groups * factor)?)?;
            self.vectors = Some(match self.vectors.take() {
                Some(prev) => Tensor::cat(&[&prev, &vectors], 1)?,
                None => vectors,
            });
        }
        self.timings.encoder_ms += ms(t0);
        Ok(())
    }

    /// Takes the next `n` adapter vectors, if there are that many.
    fn take_vectors(&mut self, n: usize) -> Result<Option<Tensor>> {
        let Some(all) = self.vectors.take() else {
            return Ok(None);
        };
        let have = all.dim(1)?;
        if have < n {
            self.vectors = Some(all);
            return Ok(None);
        }
        if have > n {
            self.vectors = Some(all.narrow(1, n, have - n)?);
        }
        Ok(Some(all.narrow(1, 0, n)?))
    }

    /// Decodes every position whose audio vector is there; with `member`, the prefill runs
    /// alone and each step in a batch with other streams'.
    fn run_decoder(&mut self, member: Option<&StepMember<'_, NetworkState>>) -> Result<String> {
        let model = self.model.network();
        let mut text = String::new();
        while !self.stopped {
            let position = self.net.decoder_position();
            let vector = self.vectors_before + position;
            if self.vector_limit.is_some_and(|limit| vector >= limit) {
                self.stopped = true;
                break;
            }
            let prefill = position == 0;
            let n = if prefill { self.prompt.len() } else { 1 };
            let Some(audio) = self.take_vectors(n)? else {
                break;
            };
            // Around the timed part, as Whisper's steps (`whisper::decoding`).
            let span = if prefill {
                tracing::trace_span!("prefill", tokens = n)
            } else {
                tracing::trace_span!("decoder_step", step = position)
            }
            .entered();
            let t0 = Instant::now();
            let ids: Vec<u32> = if prefill {
                self.prompt.clone()
            } else {
                vec![self.tokens.last().expect("a token follows the prefill").id]
            };
            let x = (model.embed(&ids)? + audio)?;
            let id = match (member, self.model.batcher()) {
                (Some(member), Some(batcher)) if !prefill => {
                    let stepped = batcher.step(member, model, &mut self.net, x);
                    // A failed batch may keep the stream's state: it decodes no more.
                    self.stopped |= stepped.is_err();
                    argmax(&stepped?) as u32
                }
                _ => alone(member, || self.next_id(&x, n))?,
            };
            let elapsed = ms(t0);
            if prefill {
                self.timings.prefill_ms += elapsed;
                self.timings.prefills += 1;
                self.timings.first_token_ms = Some(ms(self.started));
            } else {
                self.timings.steps_ms += elapsed;
                self.timings.steps += 1;
                self.timings.steps_kv_bytes += self.net.decoder.attended_bytes();
            }
            drop(span);
            let produced_at = vector + n - 1;
            self.tokens.push(StreamToken {
                id,
                position: produced_at,
                time: self.model.token_end_time(produced_at, self.delay_tokens),
            });
            if id == self.model.tokenizer().eos() {
                if !self.options.restart_on_eos || self.vector_limit.is_some() {
                    self.stopped = true;
                    break;
                }
                self.vectors_before += position + n;
                self.net.reset_decoder();
            }
            text.push_str(&self.text.push(id));
        }
        Ok(text)
    }
}

impl RealtimeStream<'_> {
    /// The greedy id after the last of x's n positions (1, n, dim), decoded on this thread.
    fn next_id(&mut self, x: &Tensor, n: usize) -> Result<u32> {
        let model = self.model.network();
        let hidden = model.decode(&mut self.net, x, None)?;
        let last = hidden.narrow(1, n - 1, 1)?;
        let logits = model.logits(&last)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(argmax(&logits) as u32)
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}
