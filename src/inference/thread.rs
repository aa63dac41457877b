//! The blocking half of a worker: the loop on its own std thread that owns the engine.
//!
//! Every ONNX call (model load, prefill, decode) happens here, never on an actix or
//! actix-web event loop. The loop blocks on the job channel while the engine is idle, drains
//! newcomers without blocking between steps, and steps while the engine has work. A panic or
//! a failed step marks the worker down first (so the router stops choosing it and streams
//! can tell a restart), then fails every request in flight, so none is left hanging.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use actix::{Message, WeakRecipient};

use super::worker_shared::WorkerShared;
use super::EngineFactory;
use crate::engine::{Engine, EngineError, GenerationEvent, GenerationRequest};

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

/// Everything the engine thread needs; built by the actor at each (re)start.
pub(super) struct EngineThread {
    pub factory: EngineFactory,
    pub shared: Arc<WorkerShared>,
    pub jobs: Receiver<GenerationRequest>,
    /// Weak, so a running thread does not keep a stopped pool's actor alive.
    pub report: WeakRecipient<ThreadReport>,
}

/// What one turn of the loop found.
enum Tick {
    /// Keep going.
    Continue,
    /// The job channel closed and no work is left: the pool is shutting down.
    Closed,
}

impl EngineThread {
    /// Loads the engine and serves requests until the pool goes away or the engine fails.
    pub fn run(self) {
        let mut engine = match catch_unwind(AssertUnwindSafe(|| (self.factory)())) {
            Ok(Ok(engine)) => engine,
            Ok(Err(err)) => return self.down(DownKind::LoadFailed, err.to_string(), None),
            Err(panic) => {
                let reason = format!("engine factory panicked: {}", panic_message(&*panic));
                return self.down(DownKind::LoadFailed, reason, None);
            }
        };
        self.shared.mark_live();
        self.send(ThreadReport::Ready);
        loop {
            match catch_unwind(AssertUnwindSafe(|| tick(engine.as_mut(), &self.jobs))) {
                Ok(Ok(Tick::Continue)) => self.shared.publish(engine.snapshot()),
                Ok(Ok(Tick::Closed)) => {
                    self.shared.mark_down();
                    tracing::debug!("inference pool gone; engine thread exits");
                    return;
                }
                Ok(Err(err)) => {
                    let reason = format!("engine step failed: {err}");
                    return self.down(DownKind::Crashed, reason, Some(engine));
                }
                Err(panic) => {
                    let reason = format!("engine panicked: {}", panic_message(&*panic));
                    return self.down(DownKind::Crashed, reason, Some(engine));
                }
            }
        }
    }

    /// Marks the worker down, fails what is in flight, and tells the actor.
    fn down(self, kind: DownKind, reason: String, engine: Option<Box<dyn Engine>>) {
        self.shared.mark_down();
        let client_reason = format!("inference worker restarted: {reason}");
        if let Some(mut engine) = engine {
            // After a panic the engine may be inconsistent, so `fail_all` may panic too;
            // the engine is dropped either way, which closes every request's channel.
            let told = &client_reason;
            let failed = catch_unwind(AssertUnwindSafe(move || {
                engine.fail_all(told);
                drop(engine);
            }));
            if failed.is_err() {
                tracing::error!("fail_all panicked; in-flight channels were closed instead");
            }
        }
        // Requests queued here but never submitted to the engine get the same answer.
        while let Ok(request) = self.jobs.try_recv() {
            // A closed receiver means the client already left; nothing to tell.
            let _ = request
                .events
                .send(GenerationEvent::Error(client_reason.clone()));
        }
        self.send(ThreadReport::Down { kind, reason });
    }

    fn send(&self, report: ThreadReport) {
        match self.report.upgrade() {
            Some(actor) => actor.do_send(report),
            None => tracing::debug!(?report, "worker actor gone; report dropped"),
        }
    }
}

/// One turn: wait for work when idle, take every newcomer, run one step.
fn tick(engine: &mut dyn Engine, jobs: &Receiver<GenerationRequest>) -> Result<Tick, EngineError> {
    if !engine.has_work() {
        match jobs.recv() {
            Ok(request) => engine.submit(request),
            Err(_) => return Ok(Tick::Closed),
        }
    }
    // A disconnected channel with work left: finish it; the next idle `recv` ends the loop.
    while let Ok(request) = jobs.try_recv() {
        engine.submit(request);
    }
    engine.step()?;
    Ok(Tick::Continue)
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "non-string panic payload"
    }
}
