//! One error shape for every response: `{"error": {"code", "message", "request_id"}}`.
//!
//! Handlers and extractors fail with [`ApiError`]; only this file picks HTTP statuses.
//! [`finish_response`] (run by the middleware in `api::mod` on every response) stamps the
//! `x-request-id` header, fills the request id into `ApiError` bodies, and turns any other
//! error response (actix's own 404/405, a payload error) into the same JSON shape, so no
//! client ever sees an HTML or empty error page.

use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::error::JsonPayloadError;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::inference::InferError;
use crate::stories::{StoryError, ValidationError};

/// The header carrying each request's id (also in every log line of the request).
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Every way an API request can fail.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Story(#[from] StoryError),
    #[error("{0}")]
    BadRequest(String),
    /// A body field or query parameter of the wrong type or form; `rule` is what the field
    /// accepts, in the words its range check uses.
    #[error("`{field}` must be {rule}, got {value}")]
    InvalidField {
        field: &'static str,
        rule: String,
        value: String,
    },
    /// `kind` is "field" (JSON body) or "query parameter".
    #[error("unknown {kind} `{name}`: the accepted ones are {accepted}")]
    UnknownField {
        kind: &'static str,
        name: String,
        accepted: String,
    },
    #[error("request body larger than the {limit} byte limit")]
    PayloadTooLarge { limit: usize },
    #[error("unsupported content type: send application/json")]
    UnsupportedMediaType,
    #[error("missing or invalid API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("rate limit exceeded; retry after {}s", retry_after.as_secs())]
    RateLimited { retry_after: Duration },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("no route for this path")]
    NotFound,
    /// A method the path has no route for; `allow` lists those it has.
    #[error("method not allowed on this path; it accepts {allow}")]
    MethodNotAllowed { allow: String },
    #[error("the URL is {length} bytes, over the {limit} byte limit")]
    UriTooLong { length: usize, limit: usize },
    #[error("the request headers are {length} bytes, over the {limit} byte limit")]
    HeadersTooLarge { length: usize, limit: usize },
    #[error("{0}")]
    Other(String),
}

impl ApiError {
    /// Stable machine-readable name: the body's `code` and the failure metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Story(e) => e.code(),
            Self::BadRequest(_) | Self::InvalidField { .. } | Self::UnknownField { .. } => {
                "invalid_request"
            }
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unauthorized => "unauthorized",
            Self::RateLimited { .. } => "rate_limited",
            Self::ShuttingDown => "shutting_down",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::UriTooLong { .. } => "uri_too_long",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::Other(_) => "internal",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after }
            | Self::Story(StoryError::Inference(InferError::Overloaded { retry_after })) => {
                Some(*retry_after)
            }
            Self::Story(StoryError::Inference(InferError::NotReady { .. }))
            | Self::ShuttingDown => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Story(e) => match e {
                StoryError::Invalid(_) => StatusCode::BAD_REQUEST,
                StoryError::Inference(InferError::Overloaded { .. }) => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                StoryError::Inference(InferError::NotReady { .. })
                | StoryError::NoTrends
                | StoryError::Preempted => StatusCode::SERVICE_UNAVAILABLE,
                StoryError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                StoryError::Inference(_) | StoryError::Cancelled => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
            Self::BadRequest(_) | Self::InvalidField { .. } | Self::UnknownField { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Other(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The body without the request id; [`finish_response`] adds it.
    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(after) = self.retry_after() {
            response.insert_header((header::RETRY_AFTER, after.as_secs().max(1).to_string()));
        }
        match self {
            Self::Unauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            Self::MethodNotAllowed { allow } => {
                response.insert_header((header::ALLOW, allow.as_str()));
            }
            _ => {}
        }
        response.json(ErrorBody::new(self.code(), self.to_string(), None))
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::Story(e.into())
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        Self::Story(e.into())
    }
}

/// The JSON error body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable name (`out_of_range`, `overloaded`, `not_found`, ...).
    pub code: String,
    /// What went wrong, naming the field and the limit where there is one.
    pub message: String,
    /// The request's id, as in the `x-request-id` header and the server's logs.
    pub request_id: Option<String>,
}

impl ErrorBody {
    pub fn new(code: &str, message: String, request_id: Option<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message,
                request_id,
            },
        }
    }
}

/// `web::JsonConfig` error handler: body errors as [`ApiError`]s with their own statuses.
pub fn json_error(error: JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    let api = match &error {
        JsonPayloadError::OverflowKnownLength { limit, .. }
        | JsonPayloadError::Overflow { limit } => ApiError::PayloadTooLarge { limit: *limit },
        JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
        // The body is read as raw JSON first (`extract::Body`), so this is its syntax.
        JsonPayloadError::Deserialize(e) => {
            ApiError::BadRequest(format!("the request body is not valid JSON: {e}"))
        }
        other => ApiError::BadRequest(format!("cannot read the request body: {other}")),
    };
    api.into()
}

/// The default service: unknown paths.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

/// A resource's default service: the methods it has no route for.
pub fn method_not_allowed(allow: String) -> actix_web::Route {
    actix_web::web::to(move || {
        let allow = allow.clone();
        async move { Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow }) }
    })
}

/// Stamps the request id header on every response and gives every error response the
/// one JSON shape with the request id in it.
pub fn finish_response<B: MessageBody + 'static>(
    response: ServiceResponse<B>,
    request_id: Option<String>,
) -> ServiceResponse<BoxBody> {
    let mut response = response.map_into_boxed_body();
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        let body = match response.response().error() {
            Some(error) => Some(match error.as_error::<ApiError>() {
                Some(api) => ErrorBody::new(api.code(), api.to_string(), request_id.clone()),
                None => ErrorBody::new(
                    &status_code_name(status),
                    error.to_string(),
                    request_id.clone(),
                ),
            }),
            // A handler's own JSON answer (`/readyz` when not ready) stays as it is.
            None if is_json(&response) => None,
            None => Some(ErrorBody::new(
                &status_code_name(status),
                status
                    .canonical_reason()
                    .unwrap_or("request failed")
                    .to_string(),
                request_id.clone(),
            )),
        };
        if let Some(body) = body {
            response = replace_body(response, &body);
        }
    }
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    response
}

fn is_json<B>(response: &ServiceResponse<B>) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// `Method Not Allowed` -> `method_not_allowed`.
fn status_code_name(status: StatusCode) -> String {
    status
        .canonical_reason()
        .unwrap_or("error")
        .to_lowercase()
        .replace([' ', '-'], "_")
        .replace('\'', "")
}

/// Keeps status and headers, swaps in the JSON body.
fn replace_body(response: ServiceResponse<BoxBody>, body: &ErrorBody) -> ServiceResponse<BoxBody> {
    let (request, old) = response.into_parts();
    let mut new = HttpResponse::build(old.status());
    for (name, value) in old.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            new.append_header((name.clone(), value.clone()));
        }
    }
    let new = new.json(body);
    ServiceResponse::new(request, new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_error() {
        let cases: [(ApiError, u16); 11] = [
            (ValidationError::EmptyTopic.into(), 400),
            (
                InferError::Overloaded {
                    retry_after: Duration::from_secs(2),
                }
                .into(),
                429,
            ),
            (
                InferError::NotReady {
                    reason: "loading".into(),
                }
                .into(),
                503,
            ),
            (
                ApiError::Story(StoryError::Timeout(Duration::from_secs(5))),
                504,
            ),
            (ApiError::PayloadTooLarge { limit: 16 }, 413),
            (ApiError::UnsupportedMediaType, 415),
            (ApiError::Unauthorized, 401),
            (ApiError::NotFound, 404),
            (
                ApiError::MethodNotAllowed {
                    allow: "GET".into(),
                },
                405,
            ),
            (
                ApiError::UriTooLong {
                    length: 9000,
                    limit: 8192,
                },
                414,
            ),
            (
                ApiError::HeadersTooLarge {
                    length: 20_000,
                    limit: 16_384,
                },
                431,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(error.status_code().as_u16(), status, "{error:?}");
        }
    }

    #[test]
    fn overload_says_when_to_retry() {
        let response = ApiError::from(InferError::Overloaded {
            retry_after: Duration::from_secs(3),
        })
        .error_response();
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "3");
    }

    #[test]
    fn method_not_allowed_lists_the_allowed_methods() {
        let response = ApiError::MethodNotAllowed {
            allow: "GET, POST".into(),
        }
        .error_response();
        assert_eq!(response.headers().get(header::ALLOW).unwrap(), "GET, POST");
    }

    #[test]
    fn status_names_are_snake_case() {
        assert_eq!(
            status_code_name(StatusCode::METHOD_NOT_ALLOWED),
            "method_not_allowed"
        );
        assert_eq!(status_code_name(StatusCode::URI_TOO_LONG), "uri_too_long");
    }
}
