//! [`Router`]: admission and worker choice for each new request, without waiting.
//!
//! Admission is a `try_acquire` on an owned semaphore permit; the budget is
//! `workers × max_batch_size + max_queue`. When none is left the request is refused at once
//! as `Overloaded` (429 with Retry-After), never queued behind an await. The worker is the
//! live one with the fewest requests in flight, read from [`WorkerShared`] atomics the
//! streams keep up to date, so a busy worker cannot delay routing. The request then travels
//! to the worker actor as a `Submit` message, its deadline set from `request_timeout_secs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use tokio::sync::Semaphore;

use super::stream::{Admission, ResponseStream};
use super::worker::{Submit, WorkerActor};
use super::worker_shared::WorkerShared;
use super::InferError;
use crate::config::InferenceConfig;
use crate::engine::{event_channel, GenerationRequest, Priority, SamplingParams};

/// One worker as the router sees it.
pub(super) struct Route {
    pub addr: Addr<WorkerActor>,
    pub shared: Arc<WorkerShared>,
}

/// Shared by every clone of the handle; see the module doc.
pub struct Router {
    routes: Vec<Route>,
    /// Permits left in the in-flight budget.
    budget: Arc<Semaphore>,
    /// Background (pre-generation) requests have their own small budget, so they never
    /// take a user's place in admission.
    background_budget: Arc<Semaphore>,
    /// The budget's size, for status.
    capacity: usize,
    retry_after: Duration,
    request_timeout: Duration,
    /// Source of request ids, unique across the pool.
    next_id: AtomicU64,
}

impl Router {
    pub(super) fn new(config: &InferenceConfig, routes: Vec<Route>) -> Self {
        let capacity = budget(config);
        Self {
            routes,
            budget: Arc::new(Semaphore::new(capacity)),
            background_budget: Arc::new(Semaphore::new(config.max_background)),
            capacity,
            retry_after: Duration::from_secs(config.retry_after_secs),
            request_timeout: Duration::from_secs(config.request_timeout_secs),
            next_id: AtomicU64::new(0),
        }
    }

    /// Admits the request and sends it to the least-loaded live worker.
    ///
    /// # Errors
    /// `NotReady` when no worker has an engine loaded, `Overloaded` when the budget of the
    /// request's priority is full.
    pub fn submit(
        &self,
        prompt_ids: Vec<u32>,
        shared_prefix: usize,
        params: SamplingParams,
        priority: Priority,
    ) -> Result<ResponseStream, InferError> {
        let received_at = Instant::now();
        if !self.routes.iter().any(|r| r.shared.is_live()) {
            return Err(self.not_ready());
        }
        let budget = match priority {
            Priority::Interactive => &self.budget,
            Priority::Background => &self.background_budget,
        };
        let permit =
            Arc::clone(budget)
                .try_acquire_owned()
                .map_err(|_| InferError::Overloaded {
                    retry_after: self.retry_after,
                })?;
        // Epochs are read before liveness: if a worker goes down after this, its epoch
        // moves (see `WorkerShared::mark_down`) and the stream reports the restart.
        let loads: Vec<WorkerLoad> = self
            .routes
            .iter()
            .map(|r| {
                let epoch = r.shared.epoch();
                WorkerLoad {
                    epoch,
                    live: r.shared.is_live(),
                    load: r.shared.in_flight(),
                }
            })
            .collect();
        let index = least_loaded(&loads).ok_or_else(|| self.not_ready())?;
        let route = &self.routes[index];
        let (events, receiver) = event_channel();
        let request = GenerationRequest {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            priority,
            prompt_ids,
            shared_prefix,
            params,
            // `None` only if the timeout is too large to add to a clock reading.
            deadline: received_at.checked_add(self.request_timeout),
            received_at,
            events,
            span: tracing::Span::current(),
        };
        let stream = ResponseStream::new(
            receiver,
            Admission::new(permit, Arc::clone(&route.shared)),
            loads[index].epoch,
        );
        route.addr.do_send(Submit(request));
        Ok(stream)
    }

    pub(super) fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Admitted user requests whose stream has not ended.
    pub(super) fn in_flight(&self) -> usize {
        self.capacity - self.budget.available_permits()
    }

    fn not_ready(&self) -> InferError {
        let reason = self
            .routes
            .iter()
            .find_map(|r| r.shared.last_error())
            .unwrap_or_else(|| "workers are still loading the model".into());
        InferError::NotReady { reason }
    }
}

/// Requests the pool holds at most: workers × max_batch_size + max_queue.
pub fn budget(config: &InferenceConfig) -> usize {
    config
        .workers
        .saturating_mul(config.max_batch_size)
        .saturating_add(config.max_queue)
}

/// One worker's routing figures, read once per decision.
#[derive(Debug, Clone, Copy)]
struct WorkerLoad {
    epoch: u64,
    live: bool,
    load: usize,
}

/// The live candidate with the least load; ties go to the lowest index.
fn least_loaded(loads: &[WorkerLoad]) -> Option<usize> {
    loads
        .iter()
        .enumerate()
        .filter(|(_, c)| c.live)
        .min_by_key(|(index, c)| (c.load, *index))
        .map(|(index, _)| index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(figures: &[(bool, usize)]) -> Vec<WorkerLoad> {
        figures
            .iter()
            .map(|&(live, load)| WorkerLoad {
                epoch: 0,
                live,
                load,
            })
            .collect()
    }

    #[test]
    fn picks_the_live_worker_with_the_least_load() {
        assert_eq!(
            least_loaded(&loads(&[(true, 3), (true, 1), (true, 2)])),
            Some(1)
        );
        assert_eq!(
            least_loaded(&loads(&[(false, 0), (true, 5), (true, 5)])),
            Some(1),
            "a down worker is skipped even when idle; ties go to the lowest index"
        );
        assert_eq!(least_loaded(&loads(&[(false, 0), (false, 0)])), None);
        assert_eq!(least_loaded(&[]), None);
    }

    #[test]
    fn budget_is_batch_slots_plus_queue() {
        let config = InferenceConfig {
            workers: 3,
            max_batch_size: 4,
            max_queue: 5,
            ..InferenceConfig::default()
        };
        assert_eq!(budget(&config), 17);
    }
}
