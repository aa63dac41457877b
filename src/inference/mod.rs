//! The inference pool: N supervised workers, each driving one [`Engine`] on its own thread,
//! behind one cheap, cloneable [`InferenceHandle`] that HTTP handlers keep.
//!
//! - `pool`: [`InferencePool::start`] spawns the workers; [`InferenceHandle`] submits and
//!   reports readiness and [`PoolStatus`] for `/readyz` and `/metrics`.
//! - `router`: admission (a bounded in-flight budget, refused at once when full) and the
//!   choice of the least-loaded live worker, from shared atomics (no actor round trip).
//! - `worker`: the supervised actor per worker; it forwards `Submit` to its engine thread
//!   and restarts it (fresh engine from the factory) after a crash or a failed load.
//! - `thread`: the blocking loop on the worker's own named thread: submit, step, repeat.
//! - `worker_shared`: `WorkerShared`, one worker's state in atomics: live,
//!   epoch, restarts, in flight and the engine's numbers, read by the router, streams and status.
//! - `stream`: [`ResponseStream`], one request's events; it carries the admission permit,
//!   so dropping it (client gone) frees capacity and the engine cancels the sequence.
//!
//! Errors are [`InferError`]; each has a stable [`InferError::code`] from which HTTP bodies
//! and metric labels both derive.

mod pool;
mod router;
mod stream;
mod thread;
mod worker;
mod worker_shared;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, InferenceConfig};
use crate::engine::{
    BatchEngine, Engine, EngineError, EngineLimits, GenerationStats, SessionOptions,
};
use crate::runtime::RuntimeError;

pub use pool::{InferenceHandle, InferencePool, PoolStatus, WorkerStatus};
pub use stream::ResponseStream;

/// Builds one engine. Called on the worker's own thread, once per (re)start, so a slow model
/// load never blocks an event loop and a crashed worker always gets a fresh engine.
pub type EngineFactory = Arc<dyn Fn() -> Result<Box<dyn Engine>, LoadError> + Send + Sync>;

/// Why a worker could not build its engine.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The production factory: each worker loads `config.model.dir` into a [`BatchEngine`]
/// with the configured limits and threads.
pub fn model_factory(config: &Config) -> EngineFactory {
    let dir = config.model.dir.clone();
    let runtime = config.runtime.clone();
    let limits = engine_limits(&config.inference);
    let options = session_options(&config.inference);
    Arc::new(move || {
        let env = crate::runtime::environment(&runtime)?;
        let engine = BatchEngine::load(&dir, &env, limits.clone(), &options)?;
        Ok(Box::new(engine) as Box<dyn Engine>)
    })
}

/// The limits each worker's engine enforces, from the inference section.
pub fn engine_limits(config: &InferenceConfig) -> EngineLimits {
    EngineLimits {
        max_batch_size: config.max_batch_size,
        max_prompt_tokens: config.max_prompt_tokens,
        max_new_tokens: config.max_new_tokens,
        max_total_kv_tokens: config.max_total_kv_tokens,
        step_token_budget: config.step_token_budget,
        background_max_users: config.background_max_users,
    }
}

/// The session settings the inference section asks for.
pub fn session_options(config: &InferenceConfig) -> SessionOptions {
    SessionOptions {
        intra_threads: config.resolved_threads_per_worker(),
        spin_threads: config.spin_threads,
        profile_prefix: None,
    }
}

/// What a [`ResponseStream`] yields on success.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// New text; may be empty while a multi-byte character or stop string is pending.
    Token { token_id: u32, text: String },
    /// The last event: why generation ended, token counts and stage timings.
    Done(GenerationStats),
}

/// Why a request could not be served, or stopped before its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    /// The in-flight budget (workers × max_batch_size + max_queue) is used up.
    #[error("inference pool is overloaded; retry after {}s", retry_after.as_secs())]
    Overloaded {
        /// The hint for the Retry-After header (`inference.retry_after_secs`).
        retry_after: Duration,
    },
    /// No worker has a loaded engine: still loading, or restarting after a failure.
    #[error("no inference worker is ready: {reason}")]
    NotReady { reason: String },
    /// The worker serving the request crashed (or failed to load) while it was in flight.
    #[error("the inference worker restarted while the request was in flight")]
    WorkerRestarted,
    /// The engine ended the request with an error event.
    #[error("generation failed: {0}")]
    Generation(String),
    /// The event channel closed without a final event.
    #[error("generation ended without a final event")]
    Incomplete,
}

impl InferError {
    /// Stable machine-readable name, used both as the HTTP error `code` and the metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Overloaded { .. } => "overloaded",
            Self::NotReady { .. } => "not_ready",
            Self::WorkerRestarted => "worker_restarted",
            Self::Generation(_) => "generation_failed",
            Self::Incomplete => "incomplete_generation",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_distinct() {
        let all = [
            InferError::Overloaded {
                retry_after: Duration::from_secs(1),
            },
            InferError::NotReady {
                reason: "loading".into(),
            },
            InferError::WorkerRestarted,
            InferError::Generation("boom".into()),
            InferError::Incomplete,
        ];
        let codes: Vec<&str> = all.iter().map(InferError::code).collect();
        assert_eq!(
            codes,
            [
                "overloaded",
                "not_ready",
                "worker_restarted",
                "generation_failed",
                "incomplete_generation"
            ]
        );
        assert_eq!(
            all[0].to_string(),
            "inference pool is overloaded; retry after 1s"
        );
    }
}
