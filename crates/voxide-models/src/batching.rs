//! The work of concurrent calls on one model, run in batches: a server's dynamic batching
//! (vLLM batches the steps of concurrent requests). Each call joins the model's
//! [`Rendezvous`] and hands it every unit of work that batches (a Whisper window, a Voxtral
//! decoder step: [`StepBatcher`]); once every call at work on the model waits on one, the last to
//! arrive runs all that wait, in as many batches as the model makes of them, and hands each
//! result back. A call away from the model (waiting for audio, or in a caller's callback) holds
//! no batch up; the calls' unbatched work (encoders) runs one call at a time, and not beside
//! a batch ([`Member::alone`]): each takes every core already.

use crate::error::{Error, Result};
use candle_core::Tensor;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use voxide_nn::kernels::gemv::MAX_ROWS;

/// Units of work of concurrent calls, `J` in and `R` out, run together.
#[derive(Debug)]
pub struct Rendezvous<J, R> {
    queue: Mutex<Queue<J, R>>,
    changed: Condvar,
    /// Held by the call whose unbatched work runs.
    alone: Mutex<()>,
}

#[derive(Debug)]
struct Queue<J, R> {
    /// Calls at work on the model: neither waiting for a result nor away.
    working: usize,
    pending: Vec<(u64, J)>,
    /// Each result, or `None` where its batch was lost (a panic).
    done: HashMap<u64, Option<R>>,
    next_id: u64,
    stats: BatchStats,
}

/// What a rendezvous has run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Units of work run (windows, decoder steps).
    pub decodes: usize,
    /// Batches run.
    pub batches: usize,
    /// Units of the largest batch.
    pub largest: usize,
}

/// Hands the results of one batch out, as the batch ends ([`Member::submit`]'s runner).
pub type Deliver<'a, R> = &'a mut dyn FnMut(Vec<(u64, R)>);

impl<J, R> Default for Rendezvous<J, R> {
    fn default() -> Self {
        Self {
            queue: Mutex::new(Queue {
                working: 0,
                pending: Vec::new(),
                done: HashMap::new(),
                next_id: 0,
                stats: BatchStats::default(),
            }),
            changed: Condvar::new(),
            alone: Mutex::new(()),
        }
    }
}

impl<J, R> Rendezvous<J, R> {
    /// What it has run so far.
    pub fn stats(&self) -> BatchStats {
        self.lock().stats
    }

    /// Counts a call in until the member is dropped: batches wait for its work while it is at
    /// work on the model.
    pub fn join(&self) -> Member<'_, J, R> {
        self.lock().working += 1;
        Member { rendezvous: self }
    }

    /// Runs `f` (work that does not batch: an encoder) when no member's such work runs and no
    /// batch does; a caller need not be a member.
    pub fn alone<T>(&self, f: impl FnOnce() -> T) -> T {
        let _alone = self.alone.lock().unwrap_or_else(PoisonError::into_inner);
        f()
    }

    fn lock(&self) -> MutexGuard<'_, Queue<J, R>> {
        // A panic while the lock is held leaves the queue consistent: each step below
        // completes before anything that could panic runs.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `jobs` through `run`, handing out each batch's results as `run` delivers them;
    /// a job `run` gave no result (it panicked) is answered `None`.
    fn run(&self, jobs: Vec<(u64, J)>, run: impl FnOnce(Vec<(u64, J)>, Deliver<'_, R>)) {
        let ids: Vec<u64> = jobs.iter().map(|(id, _)| *id).collect();
        let mut deliver = |results: Vec<(u64, R)>| {
            let mut queue = self.lock();
            queue.stats.decodes += results.len();
            queue.stats.batches += 1;
            queue.stats.largest = queue.stats.largest.max(results.len());
            for (id, result) in results {
                queue.done.insert(id, Some(result));
            }
            drop(queue);
            self.changed.notify_all();
        };
        // One computation at a time: a member's unbatched work waits for the batch (each
        // takes every core; side by side, their thread pools would share them).
        let alone = self.alone.lock().unwrap_or_else(PoisonError::into_inner);
        // What a panic leaves unanswered is answered below.
        let _ = catch_unwind(AssertUnwindSafe(|| run(jobs, &mut deliver)));
        drop(alone);
        let mut queue = self.lock();
        for id in ids {
            queue.done.entry(id).or_insert(None);
        }
        drop(queue);
        self.changed.notify_all();
    }
}

/// A call counted in by [`Rendezvous::join`]; counted out when dropped.
#[derive(Debug)]
pub struct Member<'r, J, R> {
    rendezvous: &'r Rendezvous<J, R>,
}

impl<J, R> Member<'_, J, R> {
    /// Runs `f` away from the model (a caller's progress callback, which may block): no batch
    /// waits for this call meanwhile.
    pub fn away<T>(&self, f: impl FnOnce() -> T) -> T {
        /// Counts the member back in, however `f` ends (a panic too: the member's drop then
        /// counts it out once).
        struct Back<'a, J, R>(&'a Rendezvous<J, R>);
        impl<J, R> Drop for Back<'_, J, R> {
            fn drop(&mut self) {
                self.0.lock().working += 1;
            }
        }
        self.rendezvous.lock().working -= 1;
        self.rendezvous.changed.notify_all();
        let _back = Back(self.rendezvous);
        f()
    }

    /// Runs `f` (work that does not batch: an encoder) when no other member's runs and no
    /// batch does.
    pub fn alone<T>(&self, f: impl FnOnce() -> T) -> T {
        self.rendezvous.alone(f)
    }

    /// Hands `job` in and returns its result once run, with the jobs the other members hand
    /// in meanwhile: where this member is the last at work to arrive, `run` runs on its thread
    /// with every job waiting (each with its id), and gives each job's result to its
    /// [`Deliver`], one call a batch. `None`: the job's batch was lost (a panic in `run`).
    pub fn submit(&self, job: J, run: impl FnOnce(Vec<(u64, J)>, Deliver<'_, R>)) -> Option<R> {
        let rendezvous = self.rendezvous;
        let mut queue = rendezvous.lock();
        let id = queue.next_id;
        queue.next_id += 1;
        queue.pending.push((id, job));
        queue.working -= 1;
        let mut run = Some(run);
        loop {
            if let Some(result) = queue.done.remove(&id) {
                queue.working += 1;
                return result;
            }
            if queue.working == 0 && !queue.pending.is_empty() {
                // Everyone at work waits: run what they wait for (this member's job among
                // them, which this `run` therefore has not run before), as one of those at work
                // meanwhile.
                let jobs = std::mem::take(&mut queue.pending);
                queue.working += 1;
                drop(queue);
                let run = run
                    .take()
                    .expect("a member's job is run in its first batch");
                rendezvous.run(jobs, run);
                queue = rendezvous.lock();
                queue.working -= 1;
                continue;
            }
            queue = rendezvous
                .changed
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// [`Member::away`] where the call is a member, else `f` as it is.
pub fn away<T, J, R>(member: Option<&Member<'_, J, R>>, f: impl FnOnce() -> T) -> T {
    match member {
        Some(m) => m.away(f),
        None => f(),
    }
}

/// [`Member::alone`] where the call is a member, else `f` as it is.
pub fn alone<T, J, R>(member: Option<&Member<'_, J, R>>, f: impl FnOnce() -> T) -> T {
    match member {
        Some(m) => m.alone(f),
        None => f(),
    }
}

impl<J, R> Drop for Member<'_, J, R> {
    fn drop(&mut self) {
        self.rendezvous.lock().working -= 1;
        // The others may now be all that is left at work.
        self.rendezvous.changed.notify_all();
    }
}

/// A decoder whose steps of several sequences run as one: each matrix read once for all rows,
/// each sequence's attention over its own caches at its own position (the Voxtrals'
/// `Stack::forward_rows`).
pub trait RowDecoder {
    /// A sequence's state (caches, position); the default, a placeholder while it is lent.
    type State: Default;
    /// One step of each sequence, x (rows, 1, dim), row i continuing `states[i]` → logits
    /// (rows, 1, vocab).
    fn step_rows(&self, states: &mut [&mut Self::State], x: &Tensor)
        -> candle_core::Result<Tensor>;
}

/// What [`StepBatcher`] runs: one step of each of several sequences at once. A
/// [`RowDecoder`] is one (its input a token's embedding, its output the logits); a model
/// whose step is more than a decoder pass (Qwen3-TTS: a talker step, sampling, the code
/// predictor's passes) implements it directly.
pub trait RowStep {
    /// A sequence's state; the default, a placeholder while it is lent.
    type State: Default;
    /// What a sequence's step takes besides its state.
    type Input;
    /// What it gives.
    type Output;
    /// One step of each sequence, row i continuing `states[i]` on `inputs[i]`: each row's
    /// output, in order.
    fn step_rows(
        &self,
        states: &mut [&mut Self::State],
        inputs: Vec<Self::Input>,
    ) -> Result<Vec<Self::Output>>;
}

impl<D: RowDecoder> RowStep for D {
    type State = D::State;
    /// (1, 1, dim).
    type Input = Tensor;
    /// The next position's logits.
    type Output = Vec<f32>;
    fn step_rows(
        &self,
        states: &mut [&mut D::State],
        inputs: Vec<Tensor>,
    ) -> Result<Vec<Vec<f32>>> {
        let x = Tensor::cat(&inputs, 0)?;
        Ok(RowDecoder::step_rows(self, states, &x)?
            .squeeze(1)?
            .to_vec2::<f32>()?)
    }
}

/// A step's result, and the sequence's state back.
type Stepped<S, O> = (Result<O>, S);

/// The decoder steps of concurrent sequences (streams, requests) of one model, taken in
/// batches of at most `max_rows` (Kyutai's streaming server batches its streams' steps
/// likewise). Rows stay within the GEMV's ([`MAX_ROWS`]), which keeps x whole, so that each
/// sequence gets the logits it gets alone (int8: bit for bit; bf16 and f32: up to the
/// accumulators a row count takes). A sequence joins for its steps ([`StepBatcher::join`]);
/// its prompt runs [`alone`](Rendezvous::alone).
#[derive(Debug)]
pub struct StepBatcher<S, I = Tensor, O = Vec<f32>> {
    max_rows: usize,
    rendezvous: Rendezvous<Step<S, I>, Stepped<S, O>>,
}

/// A sequence's step waiting: its input and its state, lent for the step.
#[derive(Debug)]
pub struct Step<S, I> {
    input: I,
    state: S,
}

/// A sequence at work, counted in by [`StepBatcher::join`].
pub type StepMember<'b, S, I = Tensor, O = Vec<f32>> = Member<'b, Step<S, I>, Stepped<S, O>>;

impl<S: Default, I, O> StepBatcher<S, I, O> {
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

    /// Counts a sequence in until the member is dropped: batches wait for its steps meanwhile.
    pub fn join(&self) -> StepMember<'_, S, I, O> {
        self.rendezvous.join()
    }

    /// Runs `f` (a prompt, an encoder) when no batch and no other such work runs.
    pub fn alone<T>(&self, f: impl FnOnce() -> T) -> T {
        self.rendezvous.alone(f)
    }

    /// One step of the sequence whose state is `state`, on `input` (a decoder's: x (1, 1,
    /// dim)), with the steps of the other members that wait meanwhile: its output (a
    /// decoder's: the next position's logits). After an error the state is not to be used
    /// again.
    pub fn step<D: RowStep<State = S, Input = I, Output = O>>(
        &self,
        member: &StepMember<'_, S, I, O>,
        decoder: &D,
        state: &mut S,
        input: I,
    ) -> Result<O> {
        let step = Step {
            input,
            state: std::mem::take(state),
        };
        let run = |steps, deliver: Deliver<'_, Stepped<S, O>>| self.run(decoder, steps, deliver);
        match member.submit(step, run) {
            Some((output, back)) => {
                *state = back;
                output
            }
            None => Err(lost()),
        }
    }

    /// Takes `steps` in batches of at most `max_rows`, handing each batch's outputs out as it
    /// ends.
    fn run<D: RowStep<State = S, Input = I, Output = O>>(
        &self,
        decoder: &D,
        mut steps: Vec<(u64, Step<S, I>)>,
        deliver: Deliver<'_, Stepped<S, O>>,
    ) {
        while !steps.is_empty() {
            let rest = steps.split_off(self.max_rows.min(steps.len()));
            let (ids, batch): (Vec<u64>, Vec<Step<S, I>>) = steps.into_iter().unzip();
            let (inputs, mut states): (Vec<I>, Vec<S>) =
                batch.into_iter().map(|s| (s.input, s.state)).unzip();
            let stepped = catch_unwind(AssertUnwindSafe(|| {
                let mut lent: Vec<&mut S> = states.iter_mut().collect();
                decoder.step_rows(&mut lent, inputs)
            }))
            .unwrap_or_else(|_| Err(lost()));
            let results: Vec<Result<O>> = match stepped {
                Ok(outputs) if outputs.len() == states.len() => {
                    outputs.into_iter().map(Ok).collect()
                }
                Ok(outputs) => failed(
                    states.len(),
                    &format!("{} outputs for a batch of {}", outputs.len(), states.len()),
                ),
                Err(e) => failed(states.len(), &e.to_string()),
            };
            deliver(
                ids.into_iter()
                    .zip(results.into_iter().zip(states))
                    .collect(),
            );
            steps = rest;
        }
    }
}

/// The error each of a failed batch's `rows` gets.
fn failed<O>(rows: usize, message: &str) -> Vec<Result<O>> {
    (0..rows)
        .map(|_| Err(Error::InvalidRequest(message.to_string())))
        .collect()
}

fn lost() -> Error {
    Error::InvalidRequest("a batch of decoder steps failed (a panic)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    /// Jobs of calls that wait together run in one batch, each answered with its own result;
    /// a call away holds nothing up; a runner's panic answers its jobs `None`.
    #[test]
    fn waiting_calls_run_together_and_each_gets_its_own_result() {
        let rendezvous: Rendezvous<u32, u32> = Rendezvous::default();
        let doubled = |jobs: Vec<(u64, u32)>, deliver: Deliver<'_, u32>| {
            deliver(jobs.into_iter().map(|(id, x)| (id, 2 * x)).collect())
        };
        let joined = Barrier::new(3);
        std::thread::scope(|s| {
            let calls: Vec<_> = (0..3u32)
                .map(|i| {
                    let (rendezvous, joined) = (&rendezvous, &joined);
                    s.spawn(move || {
                        let member = rendezvous.join();
                        joined.wait();
                        member.submit(10 + i, doubled)
                    })
                })
                .collect();
            let results: Vec<_> = calls.into_iter().map(|c| c.join().unwrap()).collect();
            assert_eq!(results, [Some(20), Some(22), Some(24)]);
        });
        assert_eq!(
            rendezvous.stats(),
            BatchStats {
                decodes: 3,
                batches: 1,
                largest: 3
            }
        );
        // A member away does not hold up the other's job.
        let away = rendezvous.join();
        let got = away.away(|| rendezvous.join().submit(1, doubled));
        assert_eq!(got, Some(2));
        drop(away);
        // A runner that panics leaves its job answered, and the rendezvous usable.
        let member = rendezvous.join();
        assert_eq!(member.submit(5, |_, _| panic!("lost")), None);
        assert_eq!(member.submit(5, doubled), Some(10));
    }
}
