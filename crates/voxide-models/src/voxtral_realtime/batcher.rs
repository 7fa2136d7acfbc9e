//! The decoder steps of concurrent streams taken together (Kyutai's streaming server batches
//! its streams' steps likewise): each stream runs its own stages ([`RealtimeStream`]) and hands
//! every decoder step after its prompt to the model's [`StepBatcher`] ([`crate::batching`]);
//! once every stream at work on the model waits on a step, the last to arrive takes them all
//! at once, up to [`MAX_ROWS`] a batch — each matrix of the decoder read once for all of them,
//! each stream's attention over its own caches at its own position, with its own delay. Rows
//! stay within the GEMV's, which keeps x whole, so that each stream decodes the ids it would
//! alone. A stream is at work only inside its `push` / `finish` calls: a live stream waiting
//! for audio holds no batch up.
//!
//! [`RealtimeStream`]: super::RealtimeStream

use super::model::{NetworkState, VoxtralRealtimeModel};
use crate::batching::{BatchStats, Deliver, Rendezvous};
use crate::error::{Error, Result};
use candle_core::Tensor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use voxide_nn::kernels::gemv::MAX_ROWS;
use voxide_nn::sampling::argmax;

/// A step's result: the next token id, and the stream's state back.
type Stepped = (Result<u32>, NetworkState);

/// Decoder steps of concurrent streams of one model, taken in batches of at most `max_rows`.
#[derive(Debug)]
pub struct StepBatcher {
    max_rows: usize,
    rendezvous: Rendezvous<Step, Stepped>,
}

/// A stream's step waiting: its decoder input and its state, lent for the step.
#[derive(Debug)]
pub(crate) struct Step {
    /// Summed token and audio embeddings, (1, 1, dim).
    x: Tensor,
    net: NetworkState,
}

/// A stream at work, counted in by [`StepBatcher::join`].
pub(crate) type Member<'b> = crate::batching::Member<'b, Step, Stepped>;

impl StepBatcher {
    /// A batcher of at most `max_rows` steps a batch (1 to [`MAX_ROWS`]).
    pub fn new(max_rows: usize) -> Self {
        Self {
            max_rows: max_rows.clamp(1, MAX_ROWS),
            rendezvous: Rendezvous::default(),
        }
    }

    /// What it has decoded so far.
    pub fn stats(&self) -> BatchStats {
        self.rendezvous.stats()
    }

    /// Counts a stream in until the member is dropped: batches wait for its steps meanwhile.
    pub(crate) fn join(&self) -> Member<'_> {
        self.rendezvous.join()
    }

    /// One decoder step of the stream whose state is `net`, on x (1, 1, dim), with the steps of
    /// the other streams that wait meanwhile: the greedy next token id. After an error the
    /// stream's state is not to be used again.
    pub(crate) fn step(
        &self,
        member: &Member<'_>,
        model: &VoxtralRealtimeModel,
        net: &mut NetworkState,
        x: &Tensor,
    ) -> Result<u32> {
        let step = Step {
            x: x.clone(),
            net: std::mem::take(net),
        };
        let run = |steps, deliver: Deliver<'_, Stepped>| self.run(model, steps, deliver);
        match member.submit(step, run) {
            Some((id, back)) => {
                *net = back;
                id
            }
            None => Err(lost()),
        }
    }

    /// Takes `steps` in batches of at most `max_rows`, handing each batch's ids out as it ends.
    fn run(
        &self,
        model: &VoxtralRealtimeModel,
        mut steps: Vec<(u64, Step)>,
        deliver: Deliver<'_, Stepped>,
    ) {
        while !steps.is_empty() {
            let rest = steps.split_off(self.max_rows.min(steps.len()));
            let (ids, mut batch): (Vec<u64>, Vec<Step>) = steps.into_iter().unzip();
            let decoded = catch_unwind(AssertUnwindSafe(|| decode_rows(model, &mut batch)))
                .unwrap_or_else(|_| Err(lost()));
            let results: Vec<Result<u32>> = match decoded {
                Ok(next) => next.into_iter().map(Ok).collect(),
                Err(e) => {
                    let message = e.to_string();
                    batch
                        .iter()
                        .map(|_| Err(Error::InvalidRequest(message.clone())))
                        .collect()
                }
            };
            let nets = batch.into_iter().map(|s| s.net);
            deliver(ids.into_iter().zip(results.into_iter().zip(nets)).collect());
            steps = rest;
        }
    }
}

/// One step of each of `batch`'s streams: their greedy next ids.
fn decode_rows(model: &VoxtralRealtimeModel, batch: &mut [Step]) -> Result<Vec<u32>> {
    let xs: Vec<&Tensor> = batch.iter().map(|s| &s.x).collect();
    let x = Tensor::cat(&xs, 0)?;
    let mut nets: Vec<&mut NetworkState> = batch.iter_mut().map(|s| &mut s.net).collect();
    let hidden = model.decode_rows(&mut nets, &x)?;
    let logits = model.logits(&hidden)?.squeeze(1)?.to_vec2::<f32>()?;
    Ok(logits.iter().map(|l| argmax(l) as u32).collect())
}

fn lost() -> Error {
    Error::InvalidRequest("a batch of decoder steps failed (a panic)".into())
}
