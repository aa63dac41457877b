//! `[trends]` configuration: refresh timing, fetch hygiene, and one table per source.
//!
//! Defaults start the server offline: only the `file` source is enabled, and with no `path`
//! it serves the embedded default list. To read an upstream, enable it, e.g. in the TOML file
//! `[trends.sources.hackernews] enabled = true`, or `TRENDSTORY_TRENDS__SOURCES__REDDIT__ENABLED=true`.
//! Durations are integer fields with the unit in the key name.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::error::ConfigError;

/// Builds `trends.sources.<source>.<field>` as a `&'static str` for error messages.
macro_rules! source_key {
    ($source:literal, $field:literal) => {
        concat!("trends.sources.", $source, ".", $field)
    };
}

/// Everything the trends actor and `trendstory trends` need.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrendsConfig {
    /// How often every due source is fetched (and TTLs re-checked).
    pub refresh_interval_secs: u64,
    /// A trend not confirmed by a successful fetch for this long is dropped (see the module
    /// doc of `trends` for the "nothing else left" exception). Must exceed the interval.
    pub ttl_secs: u64,
    /// Length of the merged ranking.
    pub max_trends: usize,
    /// Longer titles are cut at a word boundary and end with `…`.
    pub max_title_chars: usize,
    /// Sent on every upstream request; Reddit rejects generic agents.
    pub user_agent: String,
    pub fetch: FetchConfig,
    pub sources: SourcesConfig,
}

impl Default for TrendsConfig {
    fn default() -> Self {
        Self {
            refresh_interval_secs: 300,
            ttl_secs: 900,
            max_trends: 50,
            max_title_chars: 120,
            user_agent: concat!(
                "linux:trendstory:",
                env!("CARGO_PKG_VERSION"),
                " (trending topics for short stories)"
            )
            .into(),
            fetch: FetchConfig::default(),
            sources: SourcesConfig::default(),
        }
    }
}

/// Limits applied to every upstream request, and how a failing source is retried.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
    /// Whole request, body included.
    pub timeout_ms: u64,
    /// Decompressed body cap; larger responses fail without being buffered.
    pub max_body_bytes: usize,
    /// Requests one source may have open at once (Hacker News fetches items in parallel).
    pub max_concurrent_requests: usize,
    /// First retry delay after a failure; doubles per consecutive failure, with jitter.
    pub backoff_base_secs: u64,
    /// Longest backoff, and the longest `Retry-After` honoured.
    pub backoff_max_secs: u64,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker skips the source before one trial request.
    pub breaker_cooldown_secs: u64,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 5_000,
            max_body_bytes: 2 * 1024 * 1024,
            max_concurrent_requests: 4,
            backoff_base_secs: 30,
            backoff_max_secs: 1_800,
            breaker_threshold: 5,
            breaker_cooldown_secs: 900,
        }
    }
}

impl FetchConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// One table per source; each is enabled on its own.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourcesConfig {
    pub hackernews: HackerNewsConfig,
    pub reddit: RedditConfig,
    pub google_trends: GoogleTrendsConfig,
    pub wikipedia: WikipediaConfig,
    pub file: FileConfig,
}

/// Hacker News top stories (Firebase API).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HackerNewsConfig {
    pub enabled: bool,
    /// `{base_url}/topstories.json` and `{base_url}/item/{id}.json`.
    pub base_url: String,
    /// Stories fetched (one request each).
    pub limit: usize,
    /// Multiplies this source's normalized scores in the merge.
    pub weight: f64,
}

impl Default for HackerNewsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            base_url: "https://hacker-news.firebaseio.com/v0".into(),
            limit: 30,
            weight: 1.0,
        }
    }
}

/// A Reddit listing, `{base_url}/r/{subreddit}/hot.json?limit={limit}&raw_json=1`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedditConfig {
    pub enabled: bool,
    pub base_url: String,
    pub subreddit: String,
    pub limit: usize,
    pub weight: f64,
}

impl Default for RedditConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            base_url: "https://www.reddit.com".into(),
            subreddit: "popular".into(),
            limit: 25,
            weight: 1.0,
        }
    }
}

/// Google Trends daily trending searches, RSS at `{base_url}/trending/rss?geo={geo}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GoogleTrendsConfig {
    pub enabled: bool,
    pub base_url: String,
    /// Two-letter region code, e.g. `US`, `GB`.
    pub geo: String,
    pub limit: usize,
    pub weight: f64,
}

impl Default for GoogleTrendsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            base_url: "https://trends.google.com".into(),
            geo: "US".into(),
            limit: 20,
            weight: 1.0,
        }
    }
}

/// Wikipedia most-read articles, `{base_url}/{lang}/featured/{yyyy}/{mm}/{dd}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WikipediaConfig {
    pub enabled: bool,
    pub base_url: String,
    pub lang: String,
    pub limit: usize,
    pub weight: f64,
}

impl Default for WikipediaConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            base_url: "https://api.wikimedia.org/feed/v1/wikipedia".into(),
            lang: "en".into(),
            limit: 25,
            weight: 1.0,
        }
    }
}

/// A local JSON list of topics; without `path`, the list compiled into the binary.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub enabled: bool,
    pub path: Option<PathBuf>,
    pub weight: f64,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: None,
            weight: 0.5,
        }
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

fn check_url(key: &'static str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("must start with http:// or https://, got {url:?}"),
        ))
    }
}

fn check_limit(key: &'static str, limit: usize) -> Result<(), ConfigError> {
    if (1..=500).contains(&limit) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("must be between 1 and 500, got {limit}"),
        ))
    }
}

fn check_weight(key: &'static str, weight: f64) -> Result<(), ConfigError> {
    if weight.is_finite() && weight >= 0.0 {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("must be a finite number >= 0, got {weight}"),
        ))
    }
}

fn check_word(key: &'static str, value: &str) -> Result<(), ConfigError> {
    if !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '+')
    {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("must be a non-empty name of letters, digits, `_`, `-` or `+`, got {value:?}"),
        ))
    }
}

impl TrendsConfig {
    /// Checks rules that types alone cannot express; the error names the bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.refresh_interval_secs == 0 {
            return Err(invalid(
                "trends.refresh_interval_secs",
                "must be at least 1",
            ));
        }
        if self.ttl_secs <= self.refresh_interval_secs {
            return Err(invalid(
                "trends.ttl_secs",
                format!(
                    "must exceed trends.refresh_interval_secs ({}), got {}",
                    self.refresh_interval_secs, self.ttl_secs
                ),
            ));
        }
        if self.max_trends == 0 {
            return Err(invalid("trends.max_trends", "must be at least 1"));
        }
        if self.max_title_chars < 8 {
            return Err(invalid(
                "trends.max_title_chars",
                format!("must be at least 8, got {}", self.max_title_chars),
            ));
        }
        if self.user_agent.trim().is_empty() {
            return Err(invalid("trends.user_agent", "must not be empty"));
        }
        self.fetch.validate()?;
        self.sources.validate()
    }
}

impl FetchConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout_ms == 0 {
            return Err(invalid("trends.fetch.timeout_ms", "must be at least 1"));
        }
        if self.max_body_bytes < 1024 {
            return Err(invalid(
                "trends.fetch.max_body_bytes",
                format!("must be at least 1024, got {}", self.max_body_bytes),
            ));
        }
        if self.max_concurrent_requests == 0 {
            return Err(invalid(
                "trends.fetch.max_concurrent_requests",
                "must be at least 1",
            ));
        }
        if self.backoff_base_secs == 0 {
            return Err(invalid(
                "trends.fetch.backoff_base_secs",
                "must be at least 1",
            ));
        }
        if self.backoff_max_secs < self.backoff_base_secs {
            return Err(invalid(
                "trends.fetch.backoff_max_secs",
                format!(
                    "must be at least trends.fetch.backoff_base_secs ({}), got {}",
                    self.backoff_base_secs, self.backoff_max_secs
                ),
            ));
        }
        if self.breaker_threshold == 0 {
            return Err(invalid(
                "trends.fetch.breaker_threshold",
                "must be at least 1",
            ));
        }
        if self.breaker_cooldown_secs == 0 {
            return Err(invalid(
                "trends.fetch.breaker_cooldown_secs",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

impl SourcesConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let hn = &self.hackernews;
        check_url(source_key!("hackernews", "base_url"), &hn.base_url)?;
        check_limit(source_key!("hackernews", "limit"), hn.limit)?;
        check_weight(source_key!("hackernews", "weight"), hn.weight)?;

        let reddit = &self.reddit;
        check_url(source_key!("reddit", "base_url"), &reddit.base_url)?;
        check_word(source_key!("reddit", "subreddit"), &reddit.subreddit)?;
        check_limit(source_key!("reddit", "limit"), reddit.limit)?;
        check_weight(source_key!("reddit", "weight"), reddit.weight)?;

        let google = &self.google_trends;
        check_url(source_key!("google_trends", "base_url"), &google.base_url)?;
        check_word(source_key!("google_trends", "geo"), &google.geo)?;
        check_limit(source_key!("google_trends", "limit"), google.limit)?;
        check_weight(source_key!("google_trends", "weight"), google.weight)?;

        let wiki = &self.wikipedia;
        check_url(source_key!("wikipedia", "base_url"), &wiki.base_url)?;
        check_word(source_key!("wikipedia", "lang"), &wiki.lang)?;
        check_limit(source_key!("wikipedia", "limit"), wiki.limit)?;
        check_weight(source_key!("wikipedia", "weight"), wiki.weight)?;

        check_weight(source_key!("file", "weight"), self.file.weight)?;
        if let Some(path) = &self.file.path {
            if path.as_os_str().is_empty() {
                return Err(invalid(
                    source_key!("file", "path"),
                    "must not be empty when set",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad_key(config: &TrendsConfig) -> &'static str {
        match config.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_offline() {
        let config = TrendsConfig::default();
        assert!(config.validate().is_ok());
        assert!(config.sources.file.enabled);
        assert!(!config.sources.hackernews.enabled);
        assert!(!config.sources.reddit.enabled);
        assert!(!config.sources.google_trends.enabled);
        assert!(!config.sources.wikipedia.enabled);
    }

    #[test]
    fn zero_refresh_interval_names_its_key() {
        let config = TrendsConfig {
            refresh_interval_secs: 0,
            ..TrendsConfig::default()
        };
        assert_eq!(bad_key(&config), "trends.refresh_interval_secs");
    }

    #[test]
    fn ttl_not_above_interval_names_ttl() {
        let defaults = TrendsConfig::default();
        let config = TrendsConfig {
            ttl_secs: defaults.refresh_interval_secs,
            ..defaults
        };
        assert_eq!(bad_key(&config), "trends.ttl_secs");
    }

    #[test]
    fn backoff_max_below_base_names_max() {
        let mut config = TrendsConfig::default();
        config.fetch.backoff_max_secs = config.fetch.backoff_base_secs - 1;
        assert_eq!(bad_key(&config), "trends.fetch.backoff_max_secs");
    }

    #[test]
    fn source_fields_name_their_source() {
        let mut config = TrendsConfig::default();
        config.sources.reddit.base_url = "ftp://reddit".into();
        assert_eq!(bad_key(&config), "trends.sources.reddit.base_url");

        let mut config = TrendsConfig::default();
        config.sources.wikipedia.lang = "en/../x".into();
        assert_eq!(bad_key(&config), "trends.sources.wikipedia.lang");

        let mut config = TrendsConfig::default();
        config.sources.hackernews.limit = 0;
        assert_eq!(bad_key(&config), "trends.sources.hackernews.limit");

        let mut config = TrendsConfig::default();
        config.sources.google_trends.weight = f64::NAN;
        assert_eq!(bad_key(&config), "trends.sources.google_trends.weight");
    }
}
