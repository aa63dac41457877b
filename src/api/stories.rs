//! Story endpoints: `POST /v1/stories`, `GET /v1/stories` (the same request as a URL, for
//! hash routing and HTTP caches) and `GET /v1/stories/trending`. Handlers stay thin: the
//! story service does the work; the answer is one JSON document or Server-Sent Events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{self, CacheControl, CacheDirective};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::errors::{ApiError, ErrorBody};
use super::extract::{Body, Fields, Query};
use super::request_log::StoryNote;
use super::story_response::StoryResponse;
use super::{sse, AppState};
use crate::stories::validate::{field_rule, FIELDS};
use crate::stories::{Story, StoryRequest};

/// Writes a story. Without a topic: the top current trend.
#[utoipa::path(
    post,
    path = "/v1/stories",
    tag = "stories",
    request_body = StoryRequest,
    responses(
        (status = 200, description = "The story (JSON), or Server-Sent Events with `\"stream\": true` or `Accept: text/event-stream`", body = StoryResponse),
        (status = 400, description = "Invalid JSON, unknown field, wrong type or out-of-range value", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 413, description = "Body over `api.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 429, description = "Inference queue full or rate limited (see Retry-After)", body = ErrorBody),
        (status = 500, description = "The generation failed", body = ErrorBody),
        (status = 503, description = "Not ready, no trends, or shutting down (see Retry-After)", body = ErrorBody),
        (status = 504, description = "Not finished within `inference.request_timeout_secs`", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn post_story(
    request: HttpRequest,
    state: web::Data<AppState>,
    body: Body<StoryRequest>,
) -> Result<HttpResponse, ApiError> {
    serve(&request, &state, body.0, false).await
}

/// The same request as a URL: a load balancer can route a topic to one replica by
/// hashing `topic`, and any HTTP cache may keep the answer for the story cache's TTL. Its
/// query parameters are `StoryRequest`'s fields (the document copies them from it).
#[utoipa::path(
    get,
    path = "/v1/stories",
    tag = "stories",
    responses(
        (status = 200, description = "As POST /v1/stories; `Cache-Control: public, max-age=<story cache TTL>` when the story may be shared", body = StoryResponse),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 429, description = "Inference queue full or rate limited (see Retry-After)", body = ErrorBody),
        (status = 500, description = "The generation failed", body = ErrorBody),
        (status = 503, description = "Not ready, no trends, or shutting down (see Retry-After)", body = ErrorBody),
        (status = 504, description = "Not finished within `inference.request_timeout_secs`", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn get_story(
    request: HttpRequest,
    state: web::Data<AppState>,
    query: Query<StoryRequest>,
) -> Result<HttpResponse, ApiError> {
    serve(&request, &state, query.0, true).await
}

impl Fields for StoryRequest {
    const NAMES: &'static [&'static str] = &FIELDS;

    fn rule(field: &str, state: &AppState) -> String {
        field_rule(field, state.stories.max_new_tokens())
    }
}

/// One code path for both story endpoints.
async fn serve(
    request: &HttpRequest,
    state: &AppState,
    story_request: StoryRequest,
    http_cacheable: bool,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    if state.lifecycle.shutting_down() {
        return Err(ApiError::ShuttingDown);
    }
    let valid = state.stories.validate(story_request)?;
    let trend_lookup = started.elapsed();
    let stream = valid.stream || sse::accepts_event_stream(request);
    let story = state.stories.start(&valid)?;
    let note = StoryNote::of(request);
    note.set_cache(story.cache_outcome());
    if stream {
        let request_id = super::request_id(request);
        return Ok(sse::respond(story, trend_lookup, started, request_id, note));
    }
    let variant = story.variant();
    let (story, cached) = story.finish().await?;
    note.set_tokens(story.prompt_tokens, story.tokens);
    let body = StoryResponse::new(&story, cached, trend_lookup, started).with_variant(variant);
    let mut response = HttpResponse::Ok();
    if http_cacheable && valid.cacheable {
        let ttl = state.stories.cache().ttl().as_secs();
        response.insert_header(CacheControl(vec![
            CacheDirective::Public,
            CacheDirective::MaxAge(ttl as u32),
        ]));
    } else {
        response.insert_header(CacheControl(vec![CacheDirective::NoStore]));
    }
    Ok(response.json(body))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TrendingQuery {
    /// How many of the top trends (default `stories.trending.top_k`, at most `trends.max_trends`).
    limit: Option<usize>,
}

impl Fields for TrendingQuery {
    const NAMES: &'static [&'static str] = &["limit"];

    fn rule(_: &str, state: &AppState) -> String {
        state.limit_rule()
    }
}

/// The stories of the top trends, as pre-generation keeps them.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrendingStories {
    pub stories: Vec<TrendingStory>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrendingStory {
    pub rank: usize,
    pub topic: String,
    /// `ready` (story below), `pending` (among the `stories.trending.top_k` that
    /// pre-generation writes, not written yet; never waited for) or `not_scheduled`
    /// (beyond them, or pre-generation is off: written only when someone asks for it).
    pub status: TrendingStatus,
    pub story: Option<StoryResponse>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrendingStatus {
    Ready,
    Pending,
    NotScheduled,
}

/// Stories for the top trends, from the story cache. Entries pre-generation will write are
/// `pending` until written; those beyond `stories.trending.top_k` are `not_scheduled`.
#[utoipa::path(
    get,
    path = "/v1/stories/trending",
    tag = "stories",
    operation_id = "trending_stories",
    params(TrendingQuery),
    responses(
        (status = 200, body = TrendingStories),
        (status = 400, description = "Invalid limit", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn trending(
    state: web::Data<AppState>,
    Query(query): Query<TrendingQuery>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let limit = state.trend_limit(
        query
            .limit
            .unwrap_or(state.stories.config().trending.top_k.max(1)),
    )?;
    let pregen = &state.stories.config().trending;
    let scheduled = if pregen.enabled { pregen.top_k } else { 0 };
    let stories = state
        .stories
        .top_trends(limit)
        .into_iter()
        .enumerate()
        .map(|(index, trend)| {
            let story = state.stories.default_story(&trend.topic);
            TrendingStory {
                rank: trend.rank,
                topic: trend.topic,
                status: match &story {
                    Some(_) => TrendingStatus::Ready,
                    None if index < scheduled => TrendingStatus::Pending,
                    None => TrendingStatus::NotScheduled,
                },
                story: story
                    .map(|s: Arc<Story>| StoryResponse::new(&s, true, Duration::ZERO, started)),
            }
        })
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .json(TrendingStories { stories }))
}
