//! `GET /v1/trends`: the merged ranking with its freshness and each trend's context.

use std::time::SystemTime;

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::errors::{ApiError, ErrorBody};
use super::extract::{Fields, Query};
use super::AppState;
use crate::trends::{format_time, SourceKind, Trend};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TrendsQuery {
    /// At most this many trends (1..=`trends.max_trends`); default all.
    limit: Option<usize>,
    /// Only trends listed by this source: `hackernews`, `reddit`, `google_trends`,
    /// `wikipedia` or `file`.
    source: Option<String>,
}

impl Fields for TrendsQuery {
    const NAMES: &'static [&'static str] = &["limit", "source"];

    fn rule(field: &str, state: &AppState) -> String {
        match field {
            "source" => source_rule(),
            _ => state.limit_rule(),
        }
    }
}

/// What `source` accepts.
fn source_rule() -> String {
    let names: Vec<&str> = SourceKind::ALL.iter().map(|s| s.as_str()).collect();
    format!("one of {}", names.join(", "))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrendsResponse {
    /// `default` (embedded list, no source ever answered), `fresh`, `stale` (some
    /// sources failed; their last good trends are served) or `expired`.
    pub freshness: String,
    /// When this ranking was built (RFC 3339).
    pub built_at: String,
    /// Age in seconds of the oldest trend served (null for the embedded list).
    pub age_secs: Option<u64>,
    pub trends: Vec<TrendView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrendView {
    pub topic: String,
    pub rank: usize,
    pub score: f64,
    pub sources: Vec<String>,
    pub url: Option<String>,
    /// Why it trends, as the source tells (news headline, article description, subreddit,
    /// site); put into story prompts.
    pub context: Option<String>,
    pub first_seen: String,
    pub last_seen: String,
    /// The latest fetch attempt of its sources.
    pub fetched_at: String,
    /// Seconds since a successful fetch last listed it.
    pub age_secs: u64,
    /// Every source listing it failed its latest attempt.
    pub stale: bool,
}

impl TrendView {
    fn new(trend: &Trend, now: SystemTime) -> Self {
        Self {
            topic: trend.topic.clone(),
            rank: trend.rank,
            score: trend.score,
            sources: trend
                .sources
                .iter()
                .map(|s| s.as_str().to_string())
                .collect(),
            url: trend.url.clone(),
            context: trend.context.clone(),
            first_seen: format_time(trend.first_seen),
            last_seen: format_time(trend.last_seen),
            fetched_at: format_time(trend.fetched_at),
            age_secs: trend.age(now).as_secs(),
            stale: trend.stale,
        }
    }
}

/// The current trend ranking.
#[utoipa::path(
    get,
    path = "/v1/trends",
    tag = "trends",
    operation_id = "list_trends",
    params(TrendsQuery),
    responses(
        (status = 200, body = TrendsResponse),
        (status = 400, description = "Invalid limit or unknown source", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn list(
    state: web::Data<AppState>,
    Query(query): Query<TrendsQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = state.trend_limit(query.limit.unwrap_or(state.limits.max_trends))?;
    let source = match &query.source {
        Some(name) => Some(
            SourceKind::ALL
                .into_iter()
                .find(|s| s.as_str() == name)
                .ok_or_else(|| ApiError::InvalidField {
                    field: "source",
                    rule: source_rule(),
                    value: serde_json::Value::from(name.as_str()).to_string(),
                })?,
        ),
        None => None,
    };
    let snapshot = state.trends.snapshot();
    let now = SystemTime::now();
    let trends = snapshot
        .trends
        .iter()
        .filter(|t| source.is_none_or(|s| t.sources.contains(&s)))
        .take(limit)
        .map(|t| TrendView::new(t, now))
        .collect();
    let freshness = snapshot.freshness.as_str();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .json(TrendsResponse {
            freshness: freshness.into(),
            built_at: format_time(snapshot.built_at),
            age_secs: snapshot.age(now).map(|a| a.as_secs()),
            trends,
        }))
}
