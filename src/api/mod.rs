//! The HTTP API: routes, the middleware every response passes, and the shared state.
//!
//! - `stories`: `POST`/`GET /v1/stories`, `GET /v1/stories/trending`; `sse` streams them.
//! - `trends`: `GET /v1/trends`.
//! - `probes`: `/healthz`, `/readyz`, `/metrics` and the [`probes::Lifecycle`] flags.
//! - `openapi`: `/openapi.json`, generated from the handlers' own types.
//! - `page`: the web page at `/`, its files under `/static/` and its settings at
//!   `/page.json` (not in the API document).
//! - `access`: API keys and rate limiting on `/v1/*`; `config`: `[api]`.
//! - `errors`: [`errors::ApiError`], the one JSON error shape, the request id header.
//! - `extract`: body and query extractors whose 400s name the field and what it accepts.
//! - `request_log`: one log line per request, written once its response has gone out.
//!
//! Every response passes [`finish`]: it times the request for the duration histogram
//! (labelled with the route pattern, never the raw path), sets `x-request-id`, gives
//! error responses the JSON error shape, and writes the request's log line
//! (`request_log`) once the response has gone out.

pub mod access;
pub mod config;
pub mod errors;
pub mod extract;
pub mod openapi;
pub mod page;
pub mod probes;
pub mod request_log;
pub mod sse;
pub mod stories;
pub mod trends;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use actix_cors::Cors;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Condition;
use actix_web::{web, HttpMessage, HttpRequest};
use tracing_actix_web::RequestId;

pub use config::ApiConfig;

use crate::inference::InferenceHandle;
use crate::metrics::Metrics;
use crate::stories::StoryService;
use crate::trends::TrendsHandle;
use access::Access;
use probes::Lifecycle;
use request_log::{LoggedBody, RequestLine, StoryNote};

/// What every handler can reach; one per server, shared by its HTTP workers.
pub struct AppState {
    pub stories: Arc<StoryService>,
    pub inference: InferenceHandle,
    pub trends: TrendsHandle,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
    pub access: Access,
    /// The served model's display id.
    pub model: Arc<str>,
    /// The model's weights are random (a benchmark stand-in): its stories are noise.
    pub random_weights: bool,
    /// `trends.max_trends`: the largest `limit` of the list endpoints.
    pub max_trends: usize,
}

impl AppState {
    /// What a list endpoint's `limit` accepts.
    pub fn limit_rule(&self) -> String {
        format!("a whole number between 1 and {}", self.max_trends)
    }

    /// A list endpoint's `limit`, checked against `trends.max_trends`.
    ///
    /// # Errors
    /// `InvalidField` naming the bounds when it is 0 or above them.
    pub fn trend_limit(&self, limit: usize) -> Result<usize, errors::ApiError> {
        if limit == 0 || limit > self.max_trends {
            return Err(errors::ApiError::InvalidField {
                field: "limit",
                rule: self.limit_rule(),
                value: limit.to_string(),
            });
        }
        Ok(limit)
    }
}

/// The request's id (set by `TracingLogger`, also in its log lines).
pub fn request_id(request: &HttpRequest) -> Option<String> {
    request
        .extensions()
        .get::<RequestId>()
        .map(|id| id.to_string())
}

/// Registers every route, with the body and query rules, on an app.
pub fn configure(config: &mut web::ServiceConfig, api: &ApiConfig) {
    config
        .app_data(
            web::JsonConfig::default()
                .limit(api.max_body_bytes)
                .error_handler(errors::json_error),
        )
        .service(
            web::scope("/v1")
                .wrap_fn(|request, service| {
                    let denied = request
                        .app_data::<web::Data<AppState>>()
                        .and_then(|state| state.access.check(&request).err());
                    let outcome = match denied {
                        None => Ok(service.call(request)),
                        Some(error) => Err(request.error_response(error)),
                    };
                    async move {
                        match outcome {
                            Ok(call) => call.await.map(ServiceResponse::map_into_boxed_body),
                            Err(refused) => Ok(refused),
                        }
                    }
                })
                .service(
                    web::resource("/stories")
                        .route(web::post().to(stories::post_story))
                        .route(web::get().to(stories::get_story)),
                )
                .service(web::resource("/stories/trending").route(web::get().to(stories::trending)))
                .service(web::resource("/trends").route(web::get().to(trends::list))),
        )
        .route("/healthz", web::get().to(probes::healthz))
        .route("/readyz", web::get().to(probes::readyz))
        .route("/metrics", web::get().to(probes::metrics))
        .route("/openapi.json", web::get().to(openapi::document))
        .configure(page::configure)
        .default_service(web::to(errors::not_found));
}

/// CORS for the configured origins; off (no CORS headers) when none are.
pub fn cors(api: &ApiConfig) -> Condition<Cors> {
    let origins = &api.cors_allowed_origins;
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST"])
        .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT])
        .expose_headers([errors::REQUEST_ID_HEADER, header::RETRY_AFTER])
        .max_age(3600);
    if origins.iter().any(|o| o == "*") {
        cors = cors.allow_any_origin();
    } else {
        for origin in origins {
            cors = cors.allowed_origin(origin);
        }
    }
    Condition::new(!origins.is_empty(), cors)
}

/// The outermost handling of every response; see the module doc. Use it as
/// `App::wrap_fn(api::finish)`, inside `TracingLogger` (which sets the request id).
pub fn finish<S, B>(
    request: ServiceRequest,
    service: &S,
) -> impl Future<Output = Result<ServiceResponse<BoxBody>, actix_web::Error>> + 'static
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    let started = Instant::now();
    let id = request
        .extensions()
        .get::<RequestId>()
        .map(|id| id.to_string());
    let state = request.app_data::<web::Data<AppState>>();
    let metrics = state.map(|state| Arc::clone(&state.metrics));
    let client = state.map_or_else(String::new, |state| state.access.client_ip(&request));
    let mut line = RequestLine::new(request.method().to_string(), client, started);
    line.request_id = id.clone();
    let call = service.call(request);
    async move {
        let response = match call.await {
            Ok(response) => errors::finish_response(response, id),
            Err(error) => {
                line.end(error.as_response_error().status_code().as_u16());
                return Err(error);
            }
        };
        let route = response
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".into());
        if let Some(metrics) = metrics {
            metrics.observe_http(
                &route,
                response.request().method().as_str(),
                response.status().as_u16(),
                started.elapsed(),
            );
        }
        line.route = route;
        line.status = response.status().as_u16();
        line.story = response.request().extensions().get::<StoryNote>().cloned();
        Ok(response.map_body(|_, body| BoxBody::new(LoggedBody::new(body, line))))
    }
}
