//! [`InferencePool::start`] spawns the supervised workers once per process, and
//! [`InferenceHandle`] is what handlers keep: submit, readiness and status.
//!
//! Sizing comes from [`InferenceConfig`]: `workers` engines (default one), each built by the
//! factory on its own thread; the factory should give each session
//! [`InferenceConfig::resolved_threads_per_worker`] intra-op threads (default: all cores
//! split evenly between workers, so one worker uses every core). Workers start loading at
//! once; `ready()` turns true when the first engine has loaded.

use std::sync::Arc;
use std::time::Duration;

use actix::Supervisor;

use super::router::{Route, Router};
use super::worker::WorkerActor;
use super::worker_shared::WorkerShared;
use super::{EngineFactory, InferError, ResponseStream};
use crate::config::InferenceConfig;
use crate::engine::{EngineSnapshot, Priority, SamplingParams};

/// Starts the inference workers.
pub struct InferencePool;

impl InferencePool {
    /// Starts `config.workers` supervised workers on the current actix system and returns
    /// the handle. Call once, inside the system and before `HttpServer::new`, then clone
    /// the handle into each HTTP worker. The workers live while any handle does.
    ///
    /// # Panics
    /// Outside an actix system (the supervisors are spawned on the current one).
    pub fn start(config: &InferenceConfig, factory: EngineFactory) -> InferenceHandle {
        let restart_delay = Duration::from_millis(config.restart_delay_ms);
        let routes = (0..config.workers)
            .map(|index| {
                let shared = Arc::new(WorkerShared::default());
                let actor_shared = Arc::clone(&shared);
                let factory = Arc::clone(&factory);
                let addr = Supervisor::start(move |_| {
                    WorkerActor::new(index, factory, actor_shared, restart_delay)
                });
                Route { addr, shared }
            })
            .collect();
        tracing::info!(
            workers = config.workers,
            threads_per_worker = config.resolved_threads_per_worker(),
            budget = super::router::budget(config),
            "inference pool started"
        );
        InferenceHandle {
            router: Arc::new(Router::new(config, routes)),
        }
    }
}

/// The cheap, cloneable (`Send + Sync`) side of the pool that handlers use.
#[derive(Clone)]
pub struct InferenceHandle {
    router: Arc<Router>,
}

impl InferenceHandle {
    /// Admits a tokenized prompt and routes it to the least-loaded live worker; never
    /// waits. The request is cancelled when the returned stream is dropped, or when
    /// `request_timeout_secs` have passed since this call.
    ///
    /// # Errors
    /// `NotReady` (no engine loaded: 503), `Overloaded` with the Retry-After hint (429).
    pub fn submit(
        &self,
        prompt_ids: Vec<u32>,
        params: SamplingParams,
    ) -> Result<ResponseStream, InferError> {
        self.submit_prompt(prompt_ids, 0, params, Priority::Interactive)
    }

    /// As [`InferenceHandle::submit`], with the number of leading prompt ids that are a
    /// prefix many requests share (the engines keep its KV), and a priority. `Background`
    /// work (story pre-generation) has its own budget of `max_background` requests, is
    /// admitted by the engines only in capacity no user request wants, and ends as
    /// `Preempted` when a user needs its slot.
    ///
    /// # Errors
    /// As `submit`; `Overloaded` also when the budget of the priority is used up.
    pub fn submit_prompt(
        &self,
        prompt_ids: Vec<u32>,
        shared_prefix: usize,
        params: SamplingParams,
        priority: Priority,
    ) -> Result<ResponseStream, InferError> {
        self.router
            .submit(prompt_ids, shared_prefix, params, priority)
    }

    /// True when at least one worker has an engine loaded (for `/readyz`).
    pub fn ready(&self) -> bool {
        self.router.routes().iter().any(|r| r.shared.is_live())
    }

    /// A point-in-time view of the pool (for `/metrics` and `/readyz` bodies).
    pub fn status(&self) -> PoolStatus {
        let engines: Vec<EngineSnapshot> = self
            .router
            .routes()
            .iter()
            .map(|r| r.shared.engine())
            .collect();
        let workers: Vec<WorkerStatus> = self
            .router
            .routes()
            .iter()
            .zip(&engines)
            .enumerate()
            .map(|(index, (r, engine))| WorkerStatus {
                index,
                ready: r.shared.is_live(),
                in_flight: r.shared.in_flight(),
                batch_size: engine.running,
                restarts: r.shared.restarts(),
                last_error: r.shared.last_error(),
            })
            .collect();
        let engine = engines
            .iter()
            .fold(EngineSnapshot::default(), |sum, &e| sum + e);
        PoolStatus {
            workers_up: workers.iter().filter(|w| w.ready).count(),
            restarts: workers.iter().map(|w| w.restarts).sum(),
            in_flight: self.router.in_flight(),
            queued: engine.waiting_user,
            capacity: self.router.capacity(),
            batch_size: engine.running,
            engine,
            workers,
        }
    }
}

/// The pool as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStatus {
    /// Workers with an engine loaded.
    pub workers_up: usize,
    /// Restarts over all workers since start.
    pub restarts: u64,
    /// Admitted requests whose stream has not ended.
    pub in_flight: usize,
    /// User requests the engines hold without a batch slot: waiting for one, or held back
    /// by the KV-token budget.
    pub queued: usize,
    /// The in-flight budget: workers × max_batch_size + max_queue.
    pub capacity: usize,
    /// Sequences in the engines' batches after their last step, over all workers.
    pub batch_size: usize,
    /// The engines' own numbers summed over the workers, for `/metrics`.
    #[serde(skip)]
    pub engine: EngineSnapshot,
    pub workers: Vec<WorkerStatus>,
}

/// One worker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WorkerStatus {
    pub index: usize,
    /// An engine is loaded and takes requests.
    pub ready: bool,
    /// Requests routed here whose stream has not ended.
    pub in_flight: usize,
    /// Sequences in the engine's batch after its last step.
    pub batch_size: usize,
    /// Supervisor restarts (after crashes and failed loads).
    pub restarts: u64,
    /// Why the worker last went down; cleared once an engine loads.
    pub last_error: Option<String>,
}
