//! [`ResponseStream`]: one admitted request's events, as the HTTP layer consumes them.
//!
//! The stream owns the request's admission permit and its share of the worker's load, in
//! an `Admission` released as soon as the stream ends or is dropped. Dropping it also drops the
//! receiver, which the engine sees as a cancellation at its next step. Engine events map
//! onto `Result<StreamEvent, InferError>`; a bad ending is `WorkerRestarted` when the
//! worker went down since submission, else `Generation` or `Incomplete`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::stream::{Stream, StreamExt};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::OwnedSemaphorePermit;

use super::worker_shared::WorkerShared;
use super::{InferError, StreamEvent};
use crate::engine::{GenerationEvent, GenerationStats};

/// Capacity held by one request: a budget permit and a count in its worker's load.
#[derive(Debug)]
pub(super) struct Admission {
    /// Released (dropped) with the admission: frees one unit of the pool's in-flight budget.
    _permit: OwnedSemaphorePermit,
    worker: Arc<WorkerShared>,
}

impl Admission {
    /// Counts the request in `worker`'s load until the admission drops.
    pub(super) fn new(permit: OwnedSemaphorePermit, worker: Arc<WorkerShared>) -> Self {
        worker.add_in_flight();
        Self {
            _permit: permit,
            worker,
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.worker.remove_in_flight();
    }
}

/// The events of one request; see the module doc. Ends after `Done` or one error.
#[derive(Debug)]
pub struct ResponseStream {
    events: UnboundedReceiver<GenerationEvent>,
    /// `None` once the stream has ended (capacity already given back).
    admission: Option<Admission>,
    /// The worker's epoch when the request was routed to it.
    epoch: u64,
    /// The worker serving the request, to detect a restart since submission.
    worker: Arc<WorkerShared>,
}

impl ResponseStream {
    pub(super) fn new(
        events: UnboundedReceiver<GenerationEvent>,
        admission: Admission,
        epoch: u64,
    ) -> Self {
        Self {
            events,
            worker: Arc::clone(&admission.worker),
            admission: Some(admission),
            epoch,
        }
    }

    /// Drains the stream into the whole text and the final stats (the non-streaming path).
    ///
    /// # Errors
    /// The first error the stream yields (see [`InferError`]).
    pub async fn collect(mut self) -> Result<(String, GenerationStats), InferError> {
        let mut text = String::new();
        while let Some(event) = self.next().await {
            match event? {
                StreamEvent::Token { text: delta, .. } => text.push_str(&delta),
                StreamEvent::Done(stats) => return Ok((text, stats)),
            }
        }
        Err(InferError::Incomplete)
    }

    fn finish(&mut self) {
        self.admission = None;
        self.events.close();
    }

    fn restarted(&self) -> bool {
        self.worker.epoch() != self.epoch
    }
}

impl Stream for ResponseStream {
    type Item = Result<StreamEvent, InferError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.admission.is_none() {
            return Poll::Ready(None);
        }
        let item = match self.events.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(GenerationEvent::Token { token_id, text, .. })) => {
                return Poll::Ready(Some(Ok(StreamEvent::Token { token_id, text })));
            }
            Poll::Ready(Some(GenerationEvent::Done(stats))) => Ok(StreamEvent::Done(stats)),
            Poll::Ready(Some(GenerationEvent::Error(_))) if self.restarted() => {
                Err(InferError::WorkerRestarted)
            }
            Poll::Ready(Some(GenerationEvent::Error(message))) => {
                Err(InferError::Generation(message))
            }
            Poll::Ready(None) if self.restarted() => Err(InferError::WorkerRestarted),
            Poll::Ready(None) => Err(InferError::Incomplete),
        };
        self.finish();
        Poll::Ready(Some(item))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;
    use crate::engine::{event_channel, FinishReason};

    fn stats() -> GenerationStats {
        GenerationStats {
            finish_reason: FinishReason::Length,
            prompt_tokens: 1,
            generated_tokens: 2,
            queue_time: Duration::ZERO,
            prefill_time: Duration::ZERO,
            time_to_first_token: None,
            decode_time: Duration::ZERO,
            decode_tokens_per_second: 0.0,
        }
    }

    fn token(id: u32, text: &str) -> GenerationEvent {
        GenerationEvent::Token {
            token_id: id,
            text: text.into(),
            logit: 0.0,
        }
    }

    /// A stream over a fresh channel, with a budget of one and its worker.
    fn stream() -> (
        tokio::sync::mpsc::UnboundedSender<GenerationEvent>,
        ResponseStream,
        Arc<Semaphore>,
        Arc<WorkerShared>,
    ) {
        let budget = Arc::new(Semaphore::new(1));
        let worker = Arc::new(WorkerShared::default());
        let permit = Arc::clone(&budget).try_acquire_owned().unwrap();
        let (tx, rx) = event_channel();
        let admission = Admission::new(permit, Arc::clone(&worker));
        (
            tx,
            ResponseStream::new(rx, admission, worker.epoch()),
            budget,
            worker,
        )
    }

    #[tokio::test]
    async fn tokens_then_done_end_the_stream_and_free_the_slot() {
        let (tx, mut s, budget, worker) = stream();
        assert_eq!((budget.available_permits(), worker.in_flight()), (0, 1));
        tx.send(token(7, "a")).unwrap();
        tx.send(GenerationEvent::Done(stats())).unwrap();
        let first = s.next().await.unwrap().unwrap();
        assert_eq!(
            first,
            StreamEvent::Token {
                token_id: 7,
                text: "a".into()
            }
        );
        assert_eq!(s.next().await, Some(Ok(StreamEvent::Done(stats()))));
        assert_eq!((budget.available_permits(), worker.in_flight()), (1, 0));
        assert_eq!(s.next().await, None);
    }

    #[tokio::test]
    async fn collect_concatenates_the_deltas() {
        let (tx, s, _, _) = stream();
        for event in [token(1, "Once "), token(2, ""), token(3, "upon")] {
            tx.send(event).unwrap();
        }
        tx.send(GenerationEvent::Done(stats())).unwrap();
        assert_eq!(s.collect().await, Ok(("Once upon".to_string(), stats())));
    }

    #[tokio::test]
    async fn an_error_event_is_a_generation_error() {
        let (tx, s, budget, _) = stream();
        tx.send(token(1, "x")).unwrap();
        tx.send(GenerationEvent::Error("prompt too long".into()))
            .unwrap();
        assert_eq!(
            s.collect().await,
            Err(InferError::Generation("prompt too long".into()))
        );
        assert_eq!(budget.available_permits(), 1);
    }

    #[tokio::test]
    async fn closing_without_done_is_incomplete() {
        let (tx, s, _, _) = stream();
        tx.send(token(1, "x")).unwrap();
        drop(tx);
        assert_eq!(s.collect().await, Err(InferError::Incomplete));
    }

    #[tokio::test]
    async fn a_bad_ending_after_the_worker_went_down_is_a_restart() {
        let (tx, s, _, worker) = stream();
        worker.mark_down();
        tx.send(GenerationEvent::Error("engine panicked".into()))
            .unwrap();
        assert_eq!(s.collect().await, Err(InferError::WorkerRestarted));

        let (tx, s, _, worker) = stream();
        worker.mark_down();
        drop(tx);
        assert_eq!(s.collect().await, Err(InferError::WorkerRestarted));
    }

    #[tokio::test]
    async fn dropping_the_stream_frees_the_slot_and_closes_the_channel() {
        let (tx, s, budget, worker) = stream();
        drop(s);
        assert_eq!((budget.available_permits(), worker.in_flight()), (1, 0));
        assert!(tx.is_closed(), "the engine sees the client gone");
    }
}
