//! [`WorkerShared`]: one worker's state as the router, the streams and the status read it,
//! in atomics its actor and engine thread update, so routing never waits on a busy actor.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::engine::EngineSnapshot;

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

    pub(super) fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
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

    pub(super) fn set_last_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}
