//! `[stories]` configuration: request defaults and limits, the story cache, and the
//! background pre-generation of stories for the top trends.

use serde::{Deserialize, Serialize};

use super::prompt::Style;
use crate::config::error::ConfigError;
use crate::engine::ModelSampling;

/// Defaults and limits of a story request, the cache and pre-generation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoriesConfig {
    /// Style of a request that names none.
    pub default_style: Style,
    /// `max_tokens` of a request that gives none (at most `inference.max_new_tokens`).
    pub default_max_tokens: usize,
    /// Sampling defaults; a request may override each. Unset ones are the model folder's
    /// (its `generation_config.json`), else [`SamplingDefaults::BUILT_IN`]'s.
    pub default_temperature: Option<f32>,
    pub default_top_p: Option<f32>,
    pub default_top_k: Option<usize>,
    pub default_repetition_penalty: Option<f32>,
    /// Longer topics are cut to this many characters (after cleaning).
    pub max_topic_chars: usize,
    /// Benchmarks only: every story runs to its `max_tokens`, past the model's end of turn,
    /// so a load test writes as many tokens per request as a peer told to ignore EOS.
    pub ignore_eos: bool,
    pub cache: CacheConfig,
    pub trending: TrendingConfig,
    pub variants: VariantsConfig,
}

impl Default for StoriesConfig {
    fn default() -> Self {
        Self {
            default_style: Style::default(),
            default_max_tokens: 128,
            default_temperature: None,
            default_top_p: None,
            default_top_k: None,
            default_repetition_penalty: None,
            max_topic_chars: 200,
            ignore_eos: false,
            cache: CacheConfig::default(),
            trending: TrendingConfig::default(),
            variants: VariantsConfig::default(),
        }
    }
}

/// The sampling a story request starts from, each value from the configuration where it
/// sets one, else from the model folder, else built in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingDefaults {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub repetition_penalty: f32,
}

impl SamplingDefaults {
    /// For models whose folder says nothing (TinyLlama's generation_config.json names only
    /// its special tokens).
    pub const BUILT_IN: Self = Self {
        temperature: 0.8,
        top_p: 0.95,
        top_k: 50,
        repetition_penalty: 1.1,
    };

    pub fn resolve(config: &StoriesConfig, model: &ModelSampling) -> Self {
        let b = Self::BUILT_IN;
        Self {
            temperature: config
                .default_temperature
                .or(model.temperature)
                .unwrap_or(b.temperature),
            top_p: config.default_top_p.or(model.top_p).unwrap_or(b.top_p),
            top_k: config.default_top_k.or(model.top_k).unwrap_or(b.top_k),
            repetition_penalty: config
                .default_repetition_penalty
                .or(model.repetition_penalty)
                .unwrap_or(b.repetition_penalty),
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

/// Variants written ahead for "another story" (`stories::another`): for each of the top
/// trends and each style listed, the first `per_trend` variants are kept written, at
/// background priority with the capacity users leave free.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VariantsConfig {
    pub enabled: bool,
    /// Variants are kept for this many of the top trends (the page's "another story" asks
    /// about the top 10 of 20 five times in six, in the load test's Zipf mix); a trend that
    /// leaves them drops its variants from the story cache.
    pub top_k: usize,
    /// Variants kept written per trend and style.
    pub per_trend: usize,
    /// Styles to write variants in (empty: `stories.default_style`). The page's traffic asks
    /// for the default style most.
    pub styles: Vec<Style>,
    /// Most bytes of variants kept; no more are written past it (they live in the story cache,
    /// within its own bounds too).
    pub max_bytes: usize,
}

impl Default for VariantsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            top_k: 10,
            per_trend: 2,
            styles: Vec::new(),
            max_bytes: 1024 * 1024,
        }
    }
}

impl StoriesConfig {
    /// The styles variants are written in.
    pub fn variant_styles(&self) -> Vec<Style> {
        if self.variants.styles.is_empty() {
            vec![self.default_style]
        } else {
            self.variants.styles.clone()
        }
    }

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
        let sampling = ModelSampling {
            temperature: self.default_temperature,
            top_p: self.default_top_p,
            top_k: self.default_top_k,
            repetition_penalty: self.default_repetition_penalty,
        };
        if let Some((name, reason)) = sampling.invalid() {
            let key = match name {
                "temperature" => "stories.default_temperature",
                "top_p" => "stories.default_top_p",
                _ => "stories.default_repetition_penalty",
            };
            return Err(invalid(key, reason));
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
        let variants = &self.variants;
        if variants.per_trend > super::another::MAX_SEEN {
            return Err(invalid(
                "stories.variants.per_trend",
                format!(
                    "must be at most {} (the ids a request may list as seen), got {}",
                    super::another::MAX_SEEN,
                    variants.per_trend
                ),
            ));
        }
        let mut styles = variants.styles.clone();
        styles.sort_by_key(|s| s.as_str());
        styles.dedup();
        if styles.len() != variants.styles.len() {
            return Err(invalid(
                "stories.variants.styles",
                "lists a style twice".into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_sampling_default_names_its_key() {
        let config = StoriesConfig {
            default_top_p: Some(1.5),
            ..StoriesConfig::default()
        };
        let err = config.validate(512).unwrap_err().to_string();
        assert!(
            err.contains("stories.default_top_p") && err.contains("must be in (0, 1], got 1.5"),
            "{err}"
        );
    }

    #[test]
    fn bad_variants_name_their_key() {
        let mut config = StoriesConfig::default();
        config.variants.per_trend = 33;
        let err = config.validate(512).unwrap_err().to_string();
        assert!(err.contains("stories.variants.per_trend"), "{err}");
        let mut config = StoriesConfig::default();
        config.variants.styles = vec![Style::Poem, Style::News, Style::Poem];
        let err = config.validate(512).unwrap_err().to_string();
        assert!(err.contains("stories.variants.styles"), "{err}");
        assert_eq!(
            StoriesConfig::default().variant_styles(),
            [Style::default()]
        );
    }

    #[test]
    fn sampling_defaults_are_the_configs_then_the_models_then_built_in() {
        let model = ModelSampling {
            temperature: Some(0.3),
            top_k: Some(20),
            ..ModelSampling::default()
        };
        let config = StoriesConfig {
            default_top_k: Some(40),
            ..StoriesConfig::default()
        };
        let resolved = SamplingDefaults::resolve(&config, &model);
        assert_eq!(
            resolved,
            SamplingDefaults {
                temperature: 0.3,
                top_k: 40,
                ..SamplingDefaults::BUILT_IN
            }
        );
        assert_eq!(
            SamplingDefaults::resolve(&StoriesConfig::default(), &ModelSampling::default()),
            SamplingDefaults::BUILT_IN
        );
    }
}
