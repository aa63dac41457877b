//! Trending topics: fetched from upstream sources in the background, merged into one ranking.
//!
//! This module owns everything between the upstream APIs and the list a request handler reads:
//! the per-source fetchers and parsers (`sources`), fetch hygiene (`fetch`: timeout, size cap,
//! `Retry-After`; `health`: backoff with jitter and a circuit breaker), title cleaning and
//! ranking (`normalize`), the refresh bookkeeping (`state`) and the [`TrendsActor`] that runs it
//! on a timer and publishes an [`Arc<TrendSnapshot>`] that handlers read through a
//! [`TrendsHandle`] without ever waiting on an upstream.
//!
//! # Freshness and TTL
//! Every source keeps its last good list. A failed fetch never replaces it: the trends it
//! contributed are served marked `stale` until their `last_seen` is older than `ttl_secs`,
//! then they are dropped, unless no source has anything younger left, in which case the whole
//! last good list is served as [`Freshness::Expired`] rather than nothing. Until a source has
//! ever succeeded, the embedded default list is served ([`Freshness::Default`]), so the
//! server works offline out of the box.

pub mod actor;
pub mod cli;
pub mod clock;
pub mod config;
pub mod fetch;
pub mod health;
pub mod normalize;
pub mod sources;
pub mod state;

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

pub use actor::{TrendsActor, TrendsHandle};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::TrendsConfig;
pub use health::SourceStatus;

/// The upstreams TrendStory reads; the `as_str` name is the config key and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    HackerNews,
    Reddit,
    GoogleTrends,
    Wikipedia,
    File,
}

impl SourceKind {
    /// Every source, in the order they are reported.
    pub const ALL: [SourceKind; 5] = [
        SourceKind::HackerNews,
        SourceKind::Reddit,
        SourceKind::GoogleTrends,
        SourceKind::Wikipedia,
        SourceKind::File,
    ];

    /// Stable lower-case name, as used in `trends.sources.<name>` and the `source` label.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::HackerNews => "hackernews",
            SourceKind::Reddit => "reddit",
            SourceKind::GoogleTrends => "google_trends",
            SourceKind::Wikipedia => "wikipedia",
            SourceKind::File => "file",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One topic as a source parser reports it, before cleaning and merging.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTrend {
    /// Title as found upstream (may still hold entities, odd whitespace, control characters).
    pub title: String,
    /// The source's own popularity measure (points, upvotes, views, approximate searches).
    pub score: f64,
    /// A page a reader can follow, when the source gives one.
    pub url: Option<String>,
    /// Why it trends, as the source tells it (news headlines, article description,
    /// subreddit, linked site); raw upstream text, cleaned and capped in the merge.
    pub context: Option<String>,
}

/// One entry of the merged ranking.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trend {
    /// Cleaned title, the one the story is written about.
    pub topic: String,
    /// Every source that lists this topic (after case and punctuation insensitive matching).
    pub sources: Vec<SourceKind>,
    /// 1-based position in the merged ranking.
    pub rank: usize,
    /// Merged score: per source normalized to 0..=1, weighted, summed across sources.
    pub score: f64,
    pub url: Option<String>,
    /// Why it trends, for the story prompt: cleaned, at most
    /// [`normalize::MAX_CONTEXT_CHARS`], from the highest-weighted source that gives one.
    pub context: Option<String>,
    /// When a successful fetch first listed this topic (kept across refreshes).
    #[serde(serialize_with = "ser_time")]
    pub first_seen: SystemTime,
    /// The latest successful fetch that listed this topic; TTL counts from here.
    #[serde(serialize_with = "ser_time")]
    pub last_seen: SystemTime,
    /// The latest fetch attempt of its sources, successful or not.
    #[serde(serialize_with = "ser_time")]
    pub fetched_at: SystemTime,
    /// True when every source listing it failed its latest attempt (served from the last good list).
    pub stale: bool,
}

impl Trend {
    /// Time since a successful fetch last listed this topic.
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.last_seen).unwrap_or_default()
    }
}

/// How much the current snapshot can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Freshness {
    /// No source has ever succeeded: the embedded default list.
    Default,
    /// Every trend was confirmed by its sources' latest attempt.
    Fresh,
    /// Some sources failed their latest attempt; their last good trends (within TTL) are served.
    Stale,
    /// Nothing is younger than the TTL; the last good list is served rather than nothing.
    Expired,
}

impl Freshness {
    pub const ALL: [Freshness; 4] = [Self::Default, Self::Fresh, Self::Stale, Self::Expired];

    /// The name in JSON bodies and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Fresh => "fresh",
            Self::Stale => "stale",
            Self::Expired => "expired",
        }
    }
}

/// What handlers read: the ranking plus per-source status, built once per change.
#[derive(Debug, Clone, Serialize)]
pub struct TrendSnapshot {
    pub trends: Vec<Trend>,
    pub freshness: Freshness,
    #[serde(serialize_with = "ser_time")]
    pub built_at: SystemTime,
    /// One entry per configured source, enabled or not, in [`SourceKind::ALL`] order.
    pub sources: Vec<SourceStatus>,
}

impl TrendSnapshot {
    /// Age of the oldest trend served, `None` for the embedded default list.
    pub fn age(&self, now: SystemTime) -> Option<Duration> {
        if self.freshness == Freshness::Default {
            return None;
        }
        self.trends.iter().map(|t| t.age(now)).max()
    }

    /// Looks a topic up case and punctuation insensitively, as the merge does.
    pub fn find(&self, topic: &str) -> Option<&Trend> {
        let key = normalize::dedupe_key(topic);
        self.trends
            .iter()
            .find(|t| normalize::dedupe_key(&t.topic) == key)
    }
}

/// Everything that can go wrong fetching or parsing a source.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrendsError {
    #[error("{url}: no response within {timeout_ms} ms")]
    Timeout { url: String, timeout_ms: u64 },
    #[error("{url}: request failed: {reason}")]
    Request { url: String, reason: String },
    #[error("{url}: HTTP {status}")]
    Status {
        url: String,
        status: u16,
        /// From a `Retry-After` header on 429/503; the source waits at least this long.
        retry_after: Option<Duration>,
    },
    #[error("{url}: body larger than the {limit_bytes} byte cap")]
    TooLarge { url: String, limit_bytes: usize },
    #[error("{url}: reading the body failed: {reason}")]
    Body { url: String, reason: String },
    #[error("{kind}: unreadable payload: {reason}")]
    Parse { kind: SourceKind, reason: String },
    #[error("{kind}: no usable topics in the response")]
    Empty { kind: SourceKind },
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("the trends actor is not running")]
    ActorGone,
}

impl TrendsError {
    /// The server-requested wait, if the upstream sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TrendsError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub(crate) fn parse(kind: SourceKind, reason: impl fmt::Display) -> Self {
        TrendsError::Parse {
            kind,
            reason: reason.to_string(),
        }
    }
}

/// RFC 3339 in UTC, the format of every timestamp TrendStory prints.
pub fn format_time(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "invalid-time".into())
}

fn ser_time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*t))
}

fn ser_opt_time<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(&format_time(*t)),
        None => s.serialize_none(),
    }
}
