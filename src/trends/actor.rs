//! [`TrendsActor`]: owns the per-source lists and refreshes them in the background, and
//! [`TrendsHandle`]: the cheap, cloneable read side the HTTP layer keeps in `app_data`.
//!
//! Readers never talk to the actor: every change is published as a new
//! `Arc<TrendSnapshot>` behind a `RwLock` held only for the pointer swap, so a slow refresh
//! cannot starve a request. Each due source is fetched in its own local task that reports
//! back with a message, so one slow or failing upstream never delays the others. The awc
//! client is `!Send` and lives on the actor's thread.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::{join_all, FutureExt, LocalBoxFuture, Shared};

use super::clock::{Clock, SystemClock};
use super::config::TrendsConfig;
use super::fetch::Fetcher;
use super::sources::{self, SourceResult};
use super::state::TrendsState;
use super::{SourceKind, TrendSnapshot, TrendsError};

type Published = Arc<RwLock<Arc<TrendSnapshot>>>;
type Pending = Shared<LocalBoxFuture<'static, ()>>;

/// Fetch every due source now (those backing off or behind an open breaker are skipped),
/// and answer with the snapshot once these and any fetches already running have reported.
#[derive(Message)]
#[rtype(result = "Arc<TrendSnapshot>")]
pub struct Refresh;

/// One source's fetch finished (sent by the fetch task to the actor).
#[derive(Message)]
#[rtype(result = "()")]
struct SourceFetched(SourceResult);

/// Owns the trend state; see the module doc.
pub struct TrendsActor {
    state: TrendsState,
    config: Rc<TrendsConfig>,
    fetcher: Fetcher,
    clock: Arc<dyn Clock>,
    published: Published,
    in_flight: HashMap<SourceKind, Pending>,
}

impl TrendsActor {
    /// Starts the actor on the current actix system with the wall clock; call once, before
    /// `HttpServer::new`, and clone the handle into each worker.
    pub fn start(config: TrendsConfig) -> TrendsHandle {
        Self::start_with_clock(config, Arc::new(SystemClock))
    }

    /// As [`TrendsActor::start`], with an injected clock (tests move it by hand).
    pub fn start_with_clock(config: TrendsConfig, clock: Arc<dyn Clock>) -> TrendsHandle {
        let mut state = TrendsState::new(config.clone());
        let published = Arc::new(RwLock::new(Arc::new(state.snapshot(clock.now()))));
        let actor = TrendsActor {
            state,
            fetcher: Fetcher::new(&config),
            config: Rc::new(config),
            clock,
            published: published.clone(),
            in_flight: HashMap::new(),
        };
        TrendsHandle {
            published,
            addr: actor.start(),
        }
    }

    /// Spawns a fetch for each due source not already in flight, then republishes (so TTL
    /// and staleness follow the clock even when nothing is fetched).
    fn start_due(&mut self, ctx: &mut Context<Self>) {
        let now = self.clock.now();
        for source in self.state.due(now) {
            if self.in_flight.contains_key(&source) {
                continue;
            }
            let fetcher = self.fetcher.clone();
            let config = Rc::clone(&self.config);
            let addr = ctx.address();
            let task = actix::spawn(async move {
                let result = sources::fetch(source, &fetcher, &config, now).await;
                // Fails only when the actor has stopped; the result has nowhere to go then.
                if addr.send(SourceFetched(result)).await.is_err() {
                    tracing::debug!(%source, "trends actor gone before the fetch finished");
                }
            });
            let pending: Pending = task.map(|_| ()).boxed_local().shared();
            self.in_flight.insert(source, pending);
        }
        self.publish();
    }

    fn publish(&mut self) {
        let snapshot = Arc::new(self.state.snapshot(self.clock.now()));
        tracing::debug!(
            trends = snapshot.trends.len(),
            freshness = ?snapshot.freshness,
            "trend snapshot published"
        );
        *self.published.write().unwrap_or_else(|e| e.into_inner()) = snapshot;
    }
}

impl Actor for TrendsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let interval = Duration::from_secs(self.config.refresh_interval_secs);
        tracing::info!(
            refresh_interval_secs = interval.as_secs(),
            "trends actor started"
        );
        self.start_due(ctx);
        ctx.run_interval(interval, |actor, ctx| actor.start_due(ctx));
    }
}

impl Handler<Refresh> for TrendsActor {
    type Result = ResponseFuture<Arc<TrendSnapshot>>;

    fn handle(&mut self, _: Refresh, ctx: &mut Self::Context) -> Self::Result {
        self.start_due(ctx);
        let pending: Vec<Pending> = self.in_flight.values().cloned().collect();
        let published = Arc::clone(&self.published);
        Box::pin(async move {
            join_all(pending).await;
            let snapshot = published.read().unwrap_or_else(|e| e.into_inner());
            Arc::clone(&snapshot)
        })
    }
}

impl Handler<SourceFetched> for TrendsActor {
    type Result = ();

    fn handle(&mut self, SourceFetched(result): SourceFetched, _: &mut Self::Context) {
        self.in_flight.remove(&result.source);
        let jitter = rand::random_range(0.5..=1.0);
        self.state.apply(result, self.clock.now(), jitter);
        self.publish();
    }
}

/// The read side: clone it freely (it is `Send + Sync`); reading never waits on a fetch.
#[derive(Clone)]
pub struct TrendsHandle {
    published: Published,
    addr: Addr<TrendsActor>,
}

impl TrendsHandle {
    /// The current ranking and per-source status (for `/metrics` and `/readyz`).
    pub fn snapshot(&self) -> Arc<TrendSnapshot> {
        Arc::clone(&self.published.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Fetches every due source now and waits for the result (operators, tests).
    ///
    /// # Errors
    /// `ActorGone` if the actor has stopped.
    pub async fn refresh(&self) -> Result<Arc<TrendSnapshot>, TrendsError> {
        self.addr
            .send(Refresh)
            .await
            .map_err(|_| TrendsError::ActorGone)
    }
}
