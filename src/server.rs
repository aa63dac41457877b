//! The HTTP server: starts the trend cache and the inference pool once, then actix-web on
//! the given listener. `main` and the integration tests share this entry point.
//!
//! For now it serves the probes; the story API (`POST /v1/stories`) builds on the same two
//! handles.

use std::net::TcpListener;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::json;
use tracing_actix_web::TracingLogger;

use crate::config::Config;
use crate::engine::ModelInfo;
use crate::inference::{model_factory, InferenceHandle, InferencePool};
use crate::trends::{TrendsActor, TrendsHandle};

/// Checks what can be checked before binding, so a bad set-up fails at start with one clear
/// error instead of a server that never becomes ready: the model folder and the ONNX
/// Runtime library.
pub fn preflight(config: &Config) -> anyhow::Result<ModelInfo> {
    let info = ModelInfo::load(&config.model.dir)?;
    crate::runtime::environment(&config.runtime)?;
    if info.random_weights {
        tracing::warn!(
            model = %info.model_id,
            "serving a model with RANDOM weights: every story will be noise (benchmark stand-in; run scripts/fetch-model.sh for the real TinyLlama)"
        );
    }
    Ok(info)
}

/// Runs the server until it is stopped (SIGINT/SIGTERM: actix stops accepting and lets
/// requests in flight finish).
pub async fn run(config: Config, listener: TcpListener) -> std::io::Result<()> {
    // Shown by /readyz; a random-weights model says so in its id.
    let model_id = ModelInfo::load(&config.model.dir)
        .map(|info| info.model_id)
        .unwrap_or_else(|e| format!("unavailable: {e}"));
    let trends = TrendsActor::start(config.trends.clone());
    let pool = InferencePool::start(&config.inference, model_factory(&config));
    tracing::info!(address = %listener.local_addr()?, model = %config.model.dir.display(), "listening");
    HttpServer::new(move || {
        App::new()
            .wrap(TracingLogger::default())
            .app_data(web::Data::new(trends.clone()))
            .app_data(web::Data::new(pool.clone()))
            .app_data(web::Data::new(ModelId(model_id.clone())))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
    })
    .listen(listener)?
    .run()
    .await
}

/// The served model's display id.
struct ModelId(String);

/// Liveness: the process answers.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Readiness: an inference worker has its model loaded and trends are present.
async fn readyz(
    pool: web::Data<InferenceHandle>,
    trends: web::Data<TrendsHandle>,
    model: web::Data<ModelId>,
) -> HttpResponse {
    let status = pool.status();
    let snapshot = trends.snapshot();
    let ready = pool.ready() && !snapshot.trends.is_empty();
    let body = json!({
        "ready": ready,
        "model": model.0,
        "inference": status,
        "trends": snapshot.trends.len(),
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
