//! The HTTP API: routes, the middleware every response passes, and the shared state.
//!
//! - `stories`: `POST`/`GET /v1/stories`, `GET /v1/stories/trending`; `sse` streams them;
//!   `story_response`: the story answer they both return.
//! - `trends`: `GET /v1/trends`.
//! - `probes`: `/healthz`, `/readyz`, `/metrics` and the [`probes::Lifecycle`] flags.
//! - `openapi`: `/openapi.json`, generated from the handlers' own types.
//! - `page`: the web page at `/`, its files under `/static/` and its settings at
//!   `/page.json` (not in the API document).
//! - `access`: API keys and rate limiting on `/v1/*`; `config`: `[api]`.
//! - `errors`: [`errors::ApiError`], the one JSON error shape, the request id header.
//! - `extract`: body and query extractors whose 400s name the field and what it accepts.
//! - `request_log`: one log line per request, written once its response has gone out.
//! - `connections`: what one client connection may cost (send limits, slow heads).
//!
//! Every response passes [`finish`]: it refuses a request head over `api.max_url_bytes` or
//! `api.max_header_bytes`, times the request for the duration histogram (labelled with the
//! route pattern, never the raw path), sets `x-request-id`, gives error responses the JSON
//! error shape, keeps the request in progress on its connection until the answer is sent,
//! and writes the request's log line (`request_log`) once the response has gone out.
//! Every API path answers a method it has no route for with 405 and `Allow`.

pub mod access;
pub mod config;
pub mod connections;
pub mod errors;
pub mod extract;
pub mod openapi;
pub mod page;
pub mod probes;
pub mod request_log;
pub mod sse;
pub mod stories;
pub mod story_response;
pub mod trends;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use actix_cors::Cors;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Condition;
use actix_web::web::Bytes;
use actix_web::{web, HttpMessage, HttpRequest, Resource, Route};
use tracing_actix_web::RequestId;

pub use config::ApiConfig;

use crate::inference::InferenceHandle;
use crate::metrics::Metrics;
use crate::stories::StoryService;
use crate::trends::TrendsHandle;
use access::Access;
use connections::InProgress;
use errors::ApiError;
use openapi::DocumentLimits;
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
    /// The limits the handlers check and the OpenAPI document publishes (one copy of each;
    /// the request head's are checked by [`finish`]).
    pub limits: DocumentLimits,
    /// The OpenAPI document, rendered at start-up with `limits`.
    pub openapi: Bytes,
}

impl AppState {
    /// What a list endpoint's `limit` accepts.
    pub fn limit_rule(&self) -> String {
        format!("a whole number between 1 and {}", self.limits.max_trends)
    }

    /// A list endpoint's `limit`, checked against `trends.max_trends`.
    ///
    /// # Errors
    /// `InvalidField` naming the bounds when it is 0 or above them.
    pub fn trend_limit(&self, limit: usize) -> Result<usize, errors::ApiError> {
        if limit == 0 || limit > self.limits.max_trends {
            return Err(errors::ApiError::InvalidField {
                field: "limit",
                rule: self.limit_rule(),
                value: limit.to_string(),
            });
        }
        Ok(limit)
    }

    /// The request head against `api.max_url_bytes` and `api.max_header_bytes` (the HTTP
    /// codec's own, larger limits answer before any of this runs).
    ///
    /// # Errors
    /// `UriTooLong` or `HeadersTooLarge` with the size and the limit.
    fn check_head(&self, request: &ServiceRequest) -> Result<(), ApiError> {
        let url = request
            .uri()
            .path_and_query()
            .map_or(0, |p| p.as_str().len());
        if url > self.limits.max_url_bytes {
            return Err(ApiError::UriTooLong {
                length: url,
                limit: self.limits.max_url_bytes,
            });
        }
        // As sent: `name: value` and CRLF.
        let headers: usize = request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        if headers > self.limits.max_header_bytes {
            return Err(ApiError::HeadersTooLarge {
                length: headers,
                limit: self.limits.max_header_bytes,
            });
        }
        Ok(())
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
                .service(resource(
                    "/stories",
                    [
                        (Method::POST, web::route().to(stories::post_story)),
                        (Method::GET, web::route().to(stories::get_story)),
                    ],
                ))
                .service(resource(
                    "/stories/trending",
                    [(Method::GET, web::route().to(stories::trending))],
                ))
                .service(resource(
                    "/trends",
                    [(Method::GET, web::route().to(trends::list))],
                )),
        )
        .service(resource(
            "/healthz",
            [(Method::GET, web::route().to(probes::healthz))],
        ))
        .service(resource(
            "/readyz",
            [(Method::GET, web::route().to(probes::readyz))],
        ))
        .service(resource(
            "/metrics",
            [(Method::GET, web::route().to(probes::metrics))],
        ))
        .service(resource(
            "/openapi.json",
            [(Method::GET, web::route().to(openapi::serve))],
        ))
        .configure(page::configure)
        .default_service(web::to(errors::not_found));
}

/// A path with a route per method; any other method gets 405 with `Allow` naming these
/// (actix's own 405 has no `Allow`, and a route added with `App::route` answers 404).
fn resource<const N: usize>(path: &str, routes: [(Method, Route); N]) -> Resource {
    let allow: Vec<&str> = routes.iter().map(|(method, _)| method.as_str()).collect();
    let allow = allow.join(", ");
    routes
        .into_iter()
        .fold(web::resource(path), |resource, (method, route)| {
            resource.route(route.method(method))
        })
        .default_service(errors::method_not_allowed(allow))
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
    let state = request.app_data::<web::Data<AppState>>().cloned();
    let client = state
        .as_ref()
        .map_or_else(String::new, |state| state.access.client_ip(&request));
    let mut line = RequestLine::new(request.method().to_string(), client, started);
    line.request_id = id.clone();
    let in_progress = InProgress::start(request.request());
    let outcome = match state.as_ref().map(|s| s.check_head(&request)) {
        Some(Err(error)) => Err(request.error_response(error)),
        _ => Ok(service.call(request)),
    };
    async move {
        let response = match outcome {
            Ok(call) => match call.await {
                Ok(response) => response.map_into_boxed_body(),
                Err(error) => {
                    line.end(error.as_response_error().status_code().as_u16());
                    return Err(error);
                }
            },
            Err(refused) => refused,
        };
        let response = errors::finish_response(response, id);
        let route = response
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".into());
        if let Some(state) = state {
            state.metrics.observe_http(
                &route,
                response.request().method().as_str(),
                response.status().as_u16(),
                started.elapsed(),
            );
        }
        line.route = route;
        line.status = response.status().as_u16();
        line.story = response.request().extensions().get::<StoryNote>().cloned();
        Ok(response.map_body(|_, body| BoxBody::new(LoggedBody::new(body, line, in_progress))))
    }
}
