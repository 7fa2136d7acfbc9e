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
use crate::error::{Error, Result};
use candle_core::Tensor;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use voxide_nn::sampling::Sampler;

/// Windows of concurrent transcriptions of one model, decoded in batches of at most
/// `max_windows`.
#[derive(Debug)]
pub struct WindowBatcher {
    max_windows: usize,
    queue: Mutex<Queue>,
    changed: Condvar,
    /// Held by the transcription whose encoder runs.
    encoder: Mutex<()>,
}

#[derive(Debug, Default)]
struct Queue {
    /// Transcriptions at work on the model: neither waiting for a decode nor away
    /// ([`Member::away`]).
    working: usize,
    /// Windows waiting, each with its transcription's sampler, lent for the decode.
    pending: Vec<(Job, Sampler)>,
    /// Each decoded window's result, and its transcription's sampler back.
    done: HashMap<u64, (Result<DecodingResult>, Sampler)>,
    next_id: u64,
    stats: BatchStats,
}

/// A window waiting to be decoded.
#[derive(Debug)]
struct Job {
    id: u64,
    /// Its encoder output, (1, positions, d).
    audio: Tensor,
    opts: DecodingOptions,
    language: String,
}

/// What a [`WindowBatcher`] has decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Windows decoded.
    pub windows: usize,
    /// Batches run (each one decoder pass over its windows).
    pub batches: usize,
    /// Windows of the largest batch.
    pub largest: usize,
}

impl WindowBatcher {
    /// A batcher of at most `max_windows` (≥ 1) windows a batch.
    pub fn new(max_windows: usize) -> Self {
        Self {
            max_windows: max_windows.max(1),
            queue: Mutex::default(),
            changed: Condvar::new(),
            encoder: Mutex::new(()),
        }
    }

    /// What it has decoded so far.
    pub fn stats(&self) -> BatchStats {
        self.lock().stats
    }

    /// Counts a transcription in until the member is dropped: batches wait for its windows
    /// while it works on the model.
    pub fn join(&self) -> Member<'_> {
        self.lock().working += 1;
        Member { batcher: self }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while the lock is held leaves the queue consistent: each step below
        // completes before anything that could panic runs.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decodes `jobs` in batches of windows that can share one, handing each batch's results
    /// out as it ends.
    fn run(&self, pipeline: &WhisperPipeline, jobs: Vec<(Job, Sampler)>) {
        let mut decoder = pipeline.window_decoder(0);
        // Windows whose initial tokens cannot be built share a batch only with each other,
        // which fails as each would alone.
        let length = |job: &Job| {
            decoder
                .initial_tokens(&job.opts, &job.language)
                .map_or(0, |t| t.len())
        };
        let mut groups: Vec<(usize, Vec<(Job, Sampler)>)> = Vec::new();
        for (job, sampler) in jobs {
            let n = length(&job);
            match groups.iter_mut().find(|(len, g)| {
                *len == n && g.len() < self.max_windows && g[0].0.opts.batches_with(&job.opts)
            }) {
                Some((_, group)) => group.push((job, sampler)),
                None => groups.push((n, vec![(job, sampler)])),
            }
        }
        for (_, group) in groups {
            let (jobs, mut samplers): (Vec<Job>, Vec<Sampler>) = group.into_iter().unzip();
            let decoded = catch_unwind(AssertUnwindSafe(|| {
                decode_group(&mut decoder, &jobs, &mut samplers)
            }))
            .unwrap_or_else(|_| {
                Err(Error::InvalidRequest(
                    "a batch of windows failed to decode (a panic)".into(),
                ))
            });
            let mut queue = self.lock();
            queue.stats.windows += jobs.len();
            queue.stats.batches += 1;
            queue.stats.largest = queue.stats.largest.max(jobs.len());
            let results: Vec<Result<DecodingResult>> = match decoded {
                Ok(results) => results.into_iter().map(Ok).collect(),
                Err(e) => {
                    let message = e.to_string();
                    jobs.iter()
                        .map(|_| Err(Error::InvalidRequest(message.clone())))
                        .collect()
                }
            };
            for ((job, result), sampler) in jobs.iter().zip(results).zip(samplers) {
                queue.done.insert(job.id, (result, sampler));
            }
            drop(queue);
            self.changed.notify_all();
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

/// A transcription counted in by [`WindowBatcher::join`]; counted out when dropped.
#[derive(Debug)]
pub struct Member<'b> {
    batcher: &'b WindowBatcher,
}

impl Member<'_> {
    /// Runs `f` away from the model (a caller's progress callback, which may block): no batch
    /// waits for this transcription meanwhile.
    pub fn away<T>(&self, f: impl FnOnce() -> T) -> T {
        /// Counts the member back in, however `f` ends (a panic too: the member's drop then
        /// counts it out once).
        struct Back<'b>(&'b WindowBatcher);
        impl Drop for Back<'_> {
            fn drop(&mut self) {
                self.0.lock().working += 1;
            }
        }
        self.batcher.lock().working -= 1;
        self.batcher.changed.notify_all();
        let _back = Back(self.batcher);
        f()
    }

    /// Runs `encode` (a window's encoder) when no other member's encoder runs.
    pub fn encode<T>(&self, encode: impl FnOnce() -> T) -> T {
        let _alone = self
            .batcher
            .encoder
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        encode()
    }

    /// Decodes the window whose encoder output is `audio` (1, positions, d) with `opts` in
    /// `language`, drawing from `sampler` at temperature > 0, in a batch with the windows of
    /// the other members that wait meanwhile; this member's thread decodes the batch where it
    /// is the last to arrive.
    pub fn decode(
        &self,
        pipeline: &WhisperPipeline,
        audio: &Tensor,
        opts: &DecodingOptions,
        language: &str,
        sampler: &mut Sampler,
    ) -> Result<DecodingResult> {
        let batcher = self.batcher;
        let mut queue = batcher.lock();
        let id = queue.next_id;
        queue.next_id += 1;
        let job = Job {
            id,
            audio: audio.clone(),
            opts: opts.clone(),
            language: language.to_string(),
        };
        queue
            .pending
            .push((job, std::mem::replace(sampler, Sampler::new(0))));
        queue.working -= 1;
        loop {
            if let Some((result, lent)) = queue.done.remove(&id) {
                queue.working += 1;
                *sampler = lent;
                return result;
            }
            if queue.working == 0 && !queue.pending.is_empty() {
                // Everyone at work waits: decode what they wait for (this one's window
                // among them), as one of those at work meanwhile.
                let jobs = std::mem::take(&mut queue.pending);
                queue.working += 1;
                drop(queue);
                batcher.run(pipeline, jobs);
                queue = batcher.lock();
                queue.working -= 1;
                continue;
            }
            queue = batcher
                .changed
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Member<'_> {
    fn drop(&mut self) {
        self.batcher.lock().working -= 1;
        // The others may now be all that is left at work.
        self.batcher.changed.notify_all();
    }
}
