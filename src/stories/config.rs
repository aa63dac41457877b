//! `[stories]` configuration: request defaults and limits, the story cache, and the
//! background pre-generation of stories for the top trends.

use serde::{Deserialize, Serialize};

use super::prompt::Style;
use crate::config::ConfigError;

/// Defaults and limits of a story request, the cache and pre-generation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoriesConfig {
    /// Style of a request that names none.
    pub default_style: Style,
    /// `max_tokens` of a request that gives none (at most `inference.max_new_tokens`).
    pub default_max_tokens: usize,
    /// Sampling defaults; a request may override each.
    pub default_temperature: f32,
    pub default_top_p: f32,
    pub default_top_k: usize,
    pub default_repetition_penalty: f32,
    /// Longer topics are cut to this many characters (after cleaning).
    pub max_topic_chars: usize,
    pub cache: CacheConfig,
    pub trending: TrendingConfig,
}

impl Default for StoriesConfig {
    fn default() -> Self {
        Self {
            default_style: Style::default(),
            default_max_tokens: 128,
            default_temperature: 0.8,
            default_top_p: 0.95,
            default_top_k: 50,
            default_repetition_penalty: 1.1,
            max_topic_chars: 200,
            cache: CacheConfig::default(),
            trending: TrendingConfig::default(),
        }
    }
}

/// The story cache: finished stories by (topic, style, model, sampling parameters).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// A story is served from the cache for this long after it was written; also the
    /// `Cache-Control: max-age` of `GET /v1/stories`.
    pub ttl_secs: u64,
    /// Most stories kept; the least recently used go first.
    pub max_entries: usize,
    /// Most bytes of story text kept; the least recently used go first.
    pub max_bytes: usize,
    /// Cache (and share) stories of requests without a seed. Requests with a seed are
    /// deterministic and always cached.
    pub cache_unseeded: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 600,
            max_entries: 2_000,
            max_bytes: 16 * 1024 * 1024,
            cache_unseeded: true,
        }
    }
}

/// Background pre-generation of stories for the top trends, at low priority.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrendingConfig {
    pub enabled: bool,
    /// Stories are kept written for this many of the top trends (default style and
    /// sampling, no seed: what a plain request for the topic asks for).
    pub top_k: usize,
    /// How often the trend list is checked for topics without a fresh story.
    pub check_interval_secs: u64,
}

impl Default for TrendingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            top_k: 5,
            check_interval_secs: 10,
        }
    }
}

impl StoriesConfig {
    /// Checks rules types cannot express; `max_new_tokens` is `inference.max_new_tokens`.
    pub fn validate(&self, max_new_tokens: usize) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid { key, reason };
        if self.default_max_tokens == 0 || self.default_max_tokens > max_new_tokens {
            return Err(invalid(
                "stories.default_max_tokens",
                format!(
                    "must be between 1 and inference.max_new_tokens ({max_new_tokens}), got {}",
                    self.default_max_tokens
                ),
            ));
        }
        if !(self.default_temperature >= 0.0 && self.default_temperature.is_finite()) {
            return Err(invalid(
                "stories.default_temperature",
                format!("must be 0 or more, got {}", self.default_temperature),
            ));
        }
        if !(self.default_top_p > 0.0 && self.default_top_p <= 1.0) {
            return Err(invalid(
                "stories.default_top_p",
                format!("must be in (0, 1], got {}", self.default_top_p),
            ));
        }
        if !(self.default_repetition_penalty > 0.0 && self.default_repetition_penalty.is_finite()) {
            return Err(invalid(
                "stories.default_repetition_penalty",
                format!("must be above 0, got {}", self.default_repetition_penalty),
            ));
        }
        if self.max_topic_chars == 0 {
            return Err(invalid(
                "stories.max_topic_chars",
                "must be at least 1".into(),
            ));
        }
        if self.cache.ttl_secs == 0 {
            return Err(invalid(
                "stories.cache.ttl_secs",
                "must be at least 1".into(),
            ));
        }
        if self.trending.check_interval_secs == 0 {
            return Err(invalid(
                "stories.trending.check_interval_secs",
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }
}
