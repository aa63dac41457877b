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
    /// The engine's numbers after its last step.
    engine: Mutex<EngineNumbers>,
    /// Why the worker last went down; cleared once an engine loads.
    last_error: Mutex<Option<String>>,
}

/// The current engine's latest snapshot, and the counters of the engines this worker loaded
/// before it, so the worker's counters never go back after a restart.
#[derive(Debug, Default)]
struct EngineNumbers {
    current: EngineSnapshot,
    earlier: EngineSnapshot,
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

    /// The engine's gauges, and its counters summed over every engine this worker loaded.
    pub fn engine(&self) -> EngineSnapshot {
        let numbers = self.numbers();
        numbers.earlier + numbers.current
    }

    /// Takes the current engine's latest snapshot.
    pub(super) fn publish(&self, snapshot: EngineSnapshot) {
        self.numbers().current = snapshot;
    }

    fn numbers(&self) -> std::sync::MutexGuard<'_, EngineNumbers> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut numbers = self.numbers();
        let gone = std::mem::take(&mut numbers.current);
        numbers.earlier = numbers.earlier + gone.counters();
    }

    pub(super) fn set_last_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}
