//! What one server accepts ([`Limits`]) and how many requests run the models at once
//! ([`Admission`]): model work is CPU- (or GPU-) bound, so a few slots run it and a short queue
//! waits; a request that finds the queue full is turned away at once (429) rather than
//! waiting behind work it cannot overtake.

use crate::ApiError;
use axum::extract::Request;
use axum::http::header::CONTENT_LENGTH;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The body's declared length, if any.
pub(crate) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The body-size middleware of the upload endpoints: `refusal` (a 413) before reading a body
/// whose declared length is over `limit`, so that the client learns at once and nothing is
/// buffered; bodies without a length are cut off as they arrive (axum's `DefaultBodyLimit`).
pub(crate) async fn refuse_declared_over(
    limit: usize,
    refusal: impl FnOnce() -> ApiError,
    request: Request,
    next: Next,
) -> Response {
    match declared_length(request.headers()) {
        Some(length) if length > limit as u64 => refusal().into_response(),
        _ => next.run(request).await,
    }
}

/// The limits of `voxide serve`'s flags.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Requests running a model at once (`--max-concurrency`).
    pub max_concurrency: usize,
    /// Requests waiting for a slot beyond those (`--max-queue`); more get 429.
    pub max_queue: usize,
    /// Largest audio upload in bytes (`--max-upload-mb`); larger gets 413.
    pub max_upload_bytes: usize,
    /// Longest audio, in seconds, to transcribe or to synthesise (`--max-audio-s`).
    pub max_audio_s: f64,
    /// Time from a request's start to its end, and the longest silence of a realtime
    /// client; `None`: no limit (`--request-timeout-s`).
    pub request_timeout: Option<Duration>,
    /// Realtime WebSocket sessions at once (`--max-realtime-sessions`); more get 429.
    pub max_realtime_sessions: usize,
}

impl Default for Limits {
    /// One slot (a model already uses every core), a queue of 16, OpenAI's 25 MB uploads, an
    /// hour of audio, ten minutes a request, eight realtime sessions.
    fn default() -> Self {
        Self {
            max_concurrency: 1,
            max_queue: 16,
            max_upload_bytes: 25 * 1024 * 1024,
            max_audio_s: 3600.0,
            request_timeout: Some(Duration::from_secs(600)),
            max_realtime_sessions: 8,
        }
    }
}

/// The most slots, queue places or sessions a flag may ask for: far beyond what a machine
/// runs, and within what a semaphore counts (their sum too).
const MAX_SLOTS: usize = 1 << 20;

impl Limits {
    /// Checks that the limits can serve anything at all.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_concurrency == 0 {
            anyhow::bail!("--max-concurrency must be at least 1");
        }
        if self.max_realtime_sessions == 0 {
            anyhow::bail!("--max-realtime-sessions must be at least 1");
        }
        for (flag, value) in [
            ("--max-concurrency", self.max_concurrency),
            ("--max-queue", self.max_queue),
            ("--max-realtime-sessions", self.max_realtime_sessions),
        ] {
            if value > MAX_SLOTS {
                anyhow::bail!("{flag} takes at most {MAX_SLOTS}");
            }
        }
        if self.max_upload_bytes == 0 {
            anyhow::bail!("--max-upload-mb must be positive");
        }
        if !(self.max_audio_s > 0.0 && self.max_audio_s.is_finite()) {
            anyhow::bail!("--max-audio-s must be a positive number of seconds");
        }
        Ok(())
    }
}

/// The slots that run models and the queue in front of them; clones share both.
#[derive(Clone, Debug)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    slots: Arc<Semaphore>,
    slots_total: usize,
    waiting: AtomicUsize,
    max_queue: usize,
}

/// A slot to run a model, held until the work ends (dropped: the next request in the queue
/// gets it).
#[derive(Debug)]
pub struct Permit {
    _slot: OwnedSemaphorePermit,
}

/// Every slot is busy and the queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Busy;

/// Leaves the queue when dropped: on admission, or when the waiting request is cancelled (its
/// client went away, or it timed out).
struct InQueue<'a>(&'a AtomicUsize);

impl Drop for InQueue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admission {
    /// `slots` requests at once, `max_queue` more waiting.
    pub fn new(slots: usize, max_queue: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(slots)),
                slots_total: slots,
                waiting: AtomicUsize::new(0),
                max_queue,
            }),
        }
    }

    /// A slot: at once when one is free, after the requests ahead when the queue has room,
    /// [`Busy`] otherwise. Waiters are served first come, first served.
    pub async fn enter(&self) -> Result<Permit, Busy> {
        let inner = &self.inner;
        if let Ok(slot) = inner.slots.clone().try_acquire_owned() {
            return Ok(Permit { _slot: slot });
        }
        inner
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < inner.max_queue).then_some(n + 1)
            })
            .map_err(|_| Busy)?;
        let _queued = InQueue(&inner.waiting);
        // The semaphore is never closed.
        let slot = inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Busy)?;
        Ok(Permit { _slot: slot })
    }

    /// Requests holding a slot now.
    pub fn running(&self) -> usize {
        self.inner.slots_total - self.inner.slots.available_permits()
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::SeqCst)
    }

    /// Free slots now.
    pub fn available(&self) -> usize {
        self.inner.slots.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_turns_requests_away_and_a_freed_slot_admits_the_next() {
        let admission = Admission::new(1, 1);
        let first = admission.enter().await.unwrap();
        let waiter = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.enter().await.map(|_| ()) })
        };
        while admission.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(admission.enter().await.unwrap_err(), Busy);
        drop(first);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!((admission.waiting(), admission.available()), (0, 1));
    }

    #[tokio::test]
    async fn a_cancelled_waiter_leaves_the_queue() {
        let admission = Admission::new(1, 1);
        let _held = admission.enter().await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(10), admission.enter()).await;
        assert!(waited.is_err());
        assert_eq!(admission.waiting(), 0);
        let no_queue = Admission::new(1, 0);
        let _held = no_queue.enter().await.unwrap();
        assert_eq!(no_queue.enter().await.unwrap_err(), Busy);
    }
}
