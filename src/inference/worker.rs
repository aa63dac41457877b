//! [`WorkerActor`]: one supervised actor per inference worker.
//!
//! The actor never runs the model. Each (re)start creates a job channel and spawns a named
//! std thread (`inference-worker-N`) that builds the engine with the factory and drives it;
//! the actor forwards `Submit` into that channel and hears back through `ThreadReport`.
//! When the thread reports it went down (panic, failed step, failed load) the actor stops
//! and the actix `Supervisor` restarts it on the same address, so handles stay valid: the
//! new start waits `restart_delay_ms` after a crash, or a growing backoff after failed loads.
//! Readiness, load and restart counts live in [`WorkerShared`] atomics, so routing never
//! waits on a busy actor.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use actix::prelude::*;

use super::thread::{DownKind, EngineThread, ThreadReport};
use super::worker_shared::WorkerShared;
use super::EngineFactory;
use crate::engine::GenerationRequest;

/// Failed loads are retried no faster than this, even with `restart_delay_ms = 0`.
const MIN_LOAD_RETRY: Duration = Duration::from_millis(100);
/// The load retry backoff stops growing here.
const MAX_LOAD_RETRY: Duration = Duration::from_secs(30);

/// Name of worker `index`'s engine thread (seen in logs, profilers and tests).
fn thread_name(index: usize) -> String {
    format!("inference-worker-{index}")
}

/// Queue one request on this worker's engine thread.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Submit(pub GenerationRequest);

/// Supervises one engine thread; see the module doc.
pub struct WorkerActor {
    index: usize,
    factory: EngineFactory,
    shared: Arc<WorkerShared>,
    restart_delay: Duration,
    /// Sender into the current thread's job channel; `None` between a stop and the restart.
    jobs: Option<mpsc::Sender<GenerationRequest>>,
    /// Why the previous thread ended; decides the delay before the next one starts.
    last_down: Option<DownKind>,
    /// Failed loads in a row, for the backoff; reset when an engine loads.
    load_failures: u32,
}

impl WorkerActor {
    pub(super) fn new(
        index: usize,
        factory: EngineFactory,
        shared: Arc<WorkerShared>,
        restart_delay: Duration,
    ) -> Self {
        Self {
            index,
            factory,
            shared,
            restart_delay,
            jobs: None,
            last_down: None,
            load_failures: 0,
        }
    }

    fn start_delay(&self) -> Duration {
        match self.last_down {
            None => Duration::ZERO,
            Some(DownKind::Crashed) => self.restart_delay,
            Some(DownKind::LoadFailed) => load_retry_delay(self.restart_delay, self.load_failures),
        }
    }

    fn spawn_thread(&mut self, jobs: mpsc::Receiver<GenerationRequest>, ctx: &mut Context<Self>) {
        let engine_thread = EngineThread {
            factory: Arc::clone(&self.factory),
            shared: Arc::clone(&self.shared),
            jobs,
            report: ctx.address().downgrade().recipient(),
        };
        let spawned = std::thread::Builder::new()
            .name(thread_name(self.index))
            .spawn(move || engine_thread.run());
        // The thread is detached: it reports back by message, and ends when its job
        // channel closes (the actor stopped) or the engine fails.
        if let Err(err) = spawned {
            let reason = format!("cannot spawn the worker thread: {err}");
            self.went_down(DownKind::LoadFailed, reason, ctx);
        }
    }

    fn went_down(&mut self, kind: DownKind, reason: String, ctx: &mut Context<Self>) {
        match kind {
            DownKind::LoadFailed => {
                self.load_failures = self.load_failures.saturating_add(1);
                tracing::error!(
                    worker = self.index,
                    failures = self.load_failures,
                    %reason,
                    "inference worker could not load its engine"
                );
            }
            DownKind::Crashed => {
                tracing::error!(
                    worker = self.index,
                    %reason,
                    "inference worker crashed; in-flight requests failed"
                );
            }
        }
        self.shared.set_last_error(Some(reason));
        self.last_down = Some(kind);
        // The supervisor calls `restarting`, then `started` again on the same mailbox.
        ctx.stop();
    }
}

impl Actor for WorkerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The channel exists before the thread, so `Submit`s that arrive while a restart
        // waits out its delay are queued for the new engine rather than lost.
        let (sender, receiver) = mpsc::channel();
        self.jobs = Some(sender);
        let delay = self.start_delay();
        tracing::info!(
            worker = self.index,
            delay_ms = delay.as_millis() as u64,
            "inference worker starting"
        );
        if delay.is_zero() {
            self.spawn_thread(receiver, ctx);
        } else {
            ctx.run_later(delay, move |actor, ctx| actor.spawn_thread(receiver, ctx));
        }
    }
}

impl Supervised for WorkerActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        // The struct survives a restart: drop the old channel so the old thread (if still
        // draining) sees it closed, and count the restart.
        self.jobs = None;
        self.shared.count_restart();
    }
}

impl Handler<Submit> for WorkerActor {
    type Result = ();

    fn handle(&mut self, Submit(request): Submit, _: &mut Self::Context) {
        let Some(jobs) = &self.jobs else {
            // Dropping the request closes its channel; the stream reports the restart.
            return;
        };
        if let Err(mpsc::SendError(request)) = jobs.send(request) {
            tracing::debug!(
                worker = self.index,
                id = request.id,
                "engine thread gone; request dropped"
            );
        }
    }
}

impl Handler<ThreadReport> for WorkerActor {
    type Result = ();

    fn handle(&mut self, report: ThreadReport, ctx: &mut Self::Context) {
        match report {
            ThreadReport::Ready => {
                self.load_failures = 0;
                tracing::info!(worker = self.index, "inference worker ready");
            }
            ThreadReport::Down { kind, reason } => self.went_down(kind, reason, ctx),
        }
    }
}

/// Delay before load attempt `failures + 1`: the base doubled per failure, capped.
fn load_retry_delay(base: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    base.max(MIN_LOAD_RETRY)
        .saturating_mul(1 << doublings)
        .min(MAX_LOAD_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_retries_back_off_from_the_restart_delay_up_to_the_cap() {
        let base = Duration::from_millis(500);
        let delays: Vec<u64> = (1..=8)
            .map(|n| load_retry_delay(base, n).as_millis() as u64)
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(load_retry_delay(Duration::ZERO, 1), MIN_LOAD_RETRY);
        assert_eq!(load_retry_delay(base, u32::MAX), MAX_LOAD_RETRY);
    }

    #[test]
    fn going_down_stops_routing_before_the_epoch_moves() {
        let shared = WorkerShared::default();
        shared.mark_live();
        assert!(shared.is_live());
        shared.mark_down();
        assert!(!shared.is_live());
        assert_eq!(shared.epoch(), 1);
    }
}
