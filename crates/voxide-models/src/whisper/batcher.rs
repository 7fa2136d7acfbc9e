//! The windows of concurrent transcriptions decoded together: a server's dynamic batching
//! (vLLM batches the steps of concurrent requests; here the unit is a 30 s window). Each
//! transcription runs its own window loop ([`WhisperPipeline::transcribe`]) and hands every
//! decode to the model's [`WindowBatcher`]. Once every transcription at work on the model
//! waits on one, the last to arrive decodes them all: the windows whose options agree (all
//! but their prompts, [`DecodingOptions::batches_with`]; a fallback's temperature among
//! them) and whose prompts are equally long share each decoder step
//! ([`WindowDecoder::decode_batch`]), each sampling from its own transcription's seeded
//! sampler, so that each window gets what it would have decoded alone and a transcription's
//! result never depends on what else ran beside it. The transcriptions' encoders run one at
//! a time (each takes every core already): their activations do not pile up.

use super::decoding::{DecodingOptions, DecodingResult, WindowDecoder};
use super::transcribe::WhisperPipeline;
use crate::batching::{BatchStats, Deliver, Rendezvous};
use crate::error::{Error, Result};
use candle_core::Tensor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use voxide_nn::sampling::Sampler;

/// Windows of concurrent transcriptions of one model, decoded in batches of at most
/// `max_windows`.
#[derive(Debug)]
pub struct WindowBatcher {
    max_windows: usize,
    /// Each window with its transcription's sampler, lent for the decode; each result with the
    /// sampler back.
    rendezvous: Rendezvous<(Job, Sampler), (Result<DecodingResult>, Sampler)>,
}

/// A window waiting to be decoded.
#[derive(Debug)]
pub(crate) struct Job {
    /// Its encoder output, (1, positions, d).
    audio: Tensor,
    opts: DecodingOptions,
    language: String,
}

/// A transcription counted in by [`WindowBatcher::join`].
pub(crate) type Member<'b> =
    crate::batching::Member<'b, (Job, Sampler), (Result<DecodingResult>, Sampler)>;

impl WindowBatcher {
    /// A batcher of at most `max_windows` (≥ 1) windows a batch.
    pub fn new(max_windows: usize) -> Self {
        Self {
            max_windows: max_windows.max(1),
            rendezvous: Rendezvous::default(),
        }
    }

    /// What it has decoded so far.
    pub fn stats(&self) -> BatchStats {
        self.rendezvous.stats()
    }

    /// Counts a transcription in until the member is dropped: batches wait for its windows
    /// while it works on the model. Its encoders run [`alone`](Member::alone).
    pub(crate) fn join(&self) -> Member<'_> {
        self.rendezvous.join()
    }

    /// Decodes the window whose encoder output is `audio` (1, positions, d) with `opts` in
    /// `language`, drawing from `sampler` at temperature > 0, in a batch with the windows of
    /// the other members that wait meanwhile; `member`'s thread decodes the batch where it is
    /// the last to arrive.
    pub(crate) fn decode(
        &self,
        member: &Member<'_>,
        pipeline: &WhisperPipeline,
        audio: &Tensor,
        opts: &DecodingOptions,
        language: &str,
        sampler: &mut Sampler,
    ) -> Result<DecodingResult> {
        let job = Job {
            audio: audio.clone(),
            opts: opts.clone(),
            language: language.to_string(),
        };
        let lent = std::mem::replace(sampler, Sampler::new(0));
        let run = |jobs, deliver: Deliver<'_, _>| self.run(pipeline, jobs, deliver);
        match member.submit((job, lent), run) {
            Some((result, lent)) => {
                *sampler = lent;
                result
            }
            None => Err(Error::InvalidRequest(
                "a batch of windows failed to decode (a panic)".into(),
            )),
        }
    }

    /// Decodes `jobs` in batches of windows that can share one, handing each batch's results
    /// out as it ends.
    fn run(
        &self,
        pipeline: &WhisperPipeline,
        jobs: Vec<(u64, (Job, Sampler))>,
        deliver: Deliver<'_, (Result<DecodingResult>, Sampler)>,
    ) {
        let mut decoder = pipeline.window_decoder(0);
        // Windows whose initial tokens cannot be built share a batch only with each other,
        // which fails as each would alone.
        let length = |job: &Job| {
            decoder
                .initial_tokens(&job.opts, &job.language)
                .map_or(0, |t| t.len())
        };
        type Group = (usize, Vec<(u64, Job, Sampler)>);
        let mut groups: Vec<Group> = Vec::new();
        for (id, (job, sampler)) in jobs {
            let n = length(&job);
            match groups.iter_mut().find(|(len, g)| {
                *len == n && g.len() < self.max_windows && g[0].1.opts.batches_with(&job.opts)
            }) {
                Some((_, group)) => group.push((id, job, sampler)),
                None => groups.push((n, vec![(id, job, sampler)])),
            }
        }
        for (_, group) in groups {
            let mut ids = Vec::with_capacity(group.len());
            let mut jobs = Vec::with_capacity(group.len());
            let mut samplers = Vec::with_capacity(group.len());
            for (id, job, sampler) in group {
                ids.push(id);
                jobs.push(job);
                samplers.push(sampler);
            }
            let decoded = catch_unwind(AssertUnwindSafe(|| {
                decode_group(&mut decoder, &jobs, &mut samplers)
            }))
            .unwrap_or_else(|_| {
                Err(Error::InvalidRequest(
                    "a batch of windows failed to decode (a panic)".into(),
                ))
            });
            let results: Vec<Result<DecodingResult>> = match decoded {
                Ok(results) => results.into_iter().map(Ok).collect(),
                Err(e) => {
                    let message = e.to_string();
                    jobs.iter()
                        .map(|_| Err(Error::InvalidRequest(message.clone())))
                        .collect()
                }
            };
            deliver(
                ids.into_iter()
                    .zip(results.into_iter().zip(samplers))
                    .collect(),
            );
        }
    }
}

/// One batch's windows decoded together, each drawing from its sampler; every result carries
/// the batch's timings (each of its transcriptions waited for all of its steps).
fn decode_group(
    decoder: &mut WindowDecoder<'_>,
    group: &[Job],
    samplers: &mut [Sampler],
) -> Result<Vec<DecodingResult>> {
    let audio: Vec<Tensor> = group.iter().map(|j| j.audio.clone()).collect();
    decoder.clear_audio();
    decoder.set_audio(Tensor::cat(&audio, 0)?)?;
    let windows: Vec<(&DecodingOptions, &str)> = group
        .iter()
        .map(|j| (&j.opts, j.language.as_str()))
        .collect();
    let mut results = decoder.decode_batch(&windows, Some(samplers))?;
    let first = &results[0];
    let timings = (
        first.prefill_ms,
        first.first_token_at,
        first.steps,
        first.steps_ms,
    );
    for r in &mut results[1..] {
        (r.prefill_ms, r.first_token_at, r.steps, r.steps_ms) = timings;
    }
    Ok(results)
}
