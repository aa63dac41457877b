//! [`WorkerActor`]: one supervised actor per inference worker, and [`WorkerShared`], the
//! atomics it shares with the router and the streams.
//!
//! The actor never runs the model. Each (re)start creates a job channel and spawns a named
//! std thread (`inference-worker-N`) that builds the engine with the factory and drives it;
//! the actor forwards `Submit` into that channel and hears back through `ThreadReport`.
//! When the thread reports it went down (panic, failed step, failed load) the actor stops
//! and the actix `Supervisor` restarts it on the same address, so handles stay valid: the
//! new start waits `restart_delay_ms` after a crash, or a growing backoff after failed loads.
//! Readiness, load and restart counts live in [`WorkerShared`] atomics, so routing never
//! waits on a busy actor.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;

use super::thread::EngineThread;
use super::EngineFactory;
use crate::engine::{EngineSnapshot, GenerationRequest};

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

/// Why an engine thread ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DownKind {
    /// The factory failed or panicked (e.g. model folder missing): retry with backoff.
    LoadFailed,
    /// A step panicked or returned an error; in-flight requests were failed.
    Crashed,
}

/// Sent by the engine thread to its actor.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(super) enum ThreadReport {
    /// The engine loaded; the worker takes requests.
    Ready,
    /// The thread ended and the worker needs a restart.
    Down { kind: DownKind, reason: String },
}

/// One worker's state as seen from outside its actor (router, streams, status).
#[derive(Debug, Default)]
pub struct WorkerShared {
    /// True while an engine is loaded and its thread takes requests.
    live: AtomicBool,
    /// Bumped each time the worker goes down, before in-flight requests are failed; a
    /// stream that ends badly compares it with its submit-time value to tell
    /// `WorkerRestarted` from other failures.
    epoch: AtomicU64,
    /// How many times the supervisor restarted this worker (crashes and load retries).
    restarts: AtomicU64,
    /// Requests admitted to this worker whose stream has not ended yet.
    in_flight: AtomicUsize,
    /// The engine's numbers after its last step: its gauges, and its counters summed over
    /// every engine this worker has loaded (so they never go back after a restart).
    engine: Mutex<EngineSnapshot>,
    /// Why the worker last went down; cleared once an engine loads.
    last_error: Mutex<Option<String>>,
}

impl WorkerShared {
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn engine(&self) -> EngineSnapshot {
        *self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the engine's `now` snapshot: its gauges, and its counters since `before`
    /// (its previous snapshot; the default one for a new engine).
    pub(super) fn publish(&self, now: &EngineSnapshot, before: &EngineSnapshot) {
        let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        *engine = EngineSnapshot {
            waiting_user: now.waiting_user,
            waiting_background: now.waiting_background,
            running: now.running,
            ..*engine + now.counters_since(before)
        };
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn add_in_flight(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn remove_in_flight(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// An engine loaded: clear the last error, then take requests.
    pub(super) fn mark_live(&self) {
        self.set_last_error(None);
        self.live.store(true, Ordering::SeqCst);
    }

    /// Stops routing here, then moves the epoch; the order matters (see `Router::submit`).
    pub(super) fn mark_down(&self) {
        self.live.store(false, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.publish(&EngineSnapshot::default(), &EngineSnapshot::default());
    }

    fn set_last_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}

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
        self.shared.restarts.fetch_add(1, Ordering::Relaxed);
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
