//! Probes and metrics, open to the load balancer and Prometheus (no API key):
//! `/healthz` (liveness), `/readyz` (readiness) and `/metrics`; plus the [`Lifecycle`]
//! flags readiness reads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::inference::PoolStatus;
use crate::metrics::{Format, Observed};

/// Start-up and shutdown state that readiness depends on.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// One warm-up generation has finished (the first real request does not pay for
    /// lazy allocations and page faults).
    warmed_up: AtomicBool,
    /// SIGTERM arrived: readiness turns false first, then new stories are refused.
    shutting_down: AtomicBool,
}

impl Lifecycle {
    pub fn warmed_up(&self) -> bool {
        self.warmed_up.load(Ordering::SeqCst)
    }

    pub fn set_warmed_up(&self) {
        self.warmed_up.store(true, Ordering::SeqCst);
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    /// The served model (its id says "random weights" for a stand-in model).
    pub model: String,
    /// The model's weights are random: its stories are noise.
    pub random_weights: bool,
}

/// Liveness: the process answers; and which model it serves.
#[utoipa::path(get, path = "/healthz", tag = "probes", responses((status = 200, body = Health)))]
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
        model: state.model.to_string(),
        random_weights: state.random_weights,
    })
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// The served model (its id says "random weights" for a stand-in model).
    pub model: String,
    /// A warm-up generation has finished.
    pub warmed_up: bool,
    pub shutting_down: bool,
    #[schema(value_type = Object)]
    pub inference: PoolStatus,
    /// Trends in the ranking.
    pub trends: usize,
}

/// Readiness: a worker has its model loaded and warmed up, trends are present, and the
/// server is not shutting down.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "probes",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready (same body)", body = Readiness),
    )
)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let trends = state.trends.snapshot().trends.len();
    let warmed_up = state.lifecycle.warmed_up();
    let shutting_down = state.lifecycle.shutting_down();
    let body = Readiness {
        ready: ready(&state, trends),
        model: state.model.to_string(),
        warmed_up,
        shutting_down,
        inference: state.inference.status(),
        trends,
    };
    if body.ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// What `/readyz` answers, given the number of trends.
fn ready(state: &AppState, trends: usize) -> bool {
    state.inference.ready()
        && trends > 0
        && state.lifecycle.warmed_up()
        && !state.lifecycle.shutting_down()
}

/// Prometheus metrics: OpenMetrics text when the `Accept` header asks for it (as
/// Prometheus does), else the Prometheus text format 0.0.4.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "probes",
    responses((
        status = 200,
        description = "The Prometheus text format 0.0.4, or OpenMetrics 1.0 text when `Accept` names `application/openmetrics-text` (as Prometheus does)",
        content(("text/plain"), ("application/openmetrics-text"))
    ))
)]
pub async fn metrics(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let format = Format::negotiate(
        request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    let trends = state.trends.snapshot();
    let observed = Observed {
        pool: &state.inference.status(),
        trends: &trends,
        cache: state.stories.cache().usage(),
        variants_ready: &state.stories.variants_ready(),
        ready: ready(&state, trends.trends.len()),
        now: SystemTime::now(),
    };
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, format.content_type()))
        .body(state.metrics.render(&observed, format))
}
