//! [`StoryRequest`] into [`ValidStoryRequest`]: the topic cleaned and looked up in the
//! trend snapshot, defaults filled in, every parameter checked with an error naming it.

use std::sync::Arc;

use super::another::{is_story_id, MAX_SEEN};
use super::cache::StoryKey;
use super::config::SamplingDefaults;
use super::prompt::{clean_topic, PromptError, Style};
use super::{StoriesConfig, StoryRequest, TrendRef};
use crate::engine::SamplingParams;
use crate::trends::{Trend, TrendSnapshot};

/// The range of a number field: `validate` checks it and the OpenAPI document publishes it,
/// so the two cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NumberRange {
    pub min: f64,
    /// `min` itself is refused (JSON Schema's `exclusiveMinimum`).
    pub min_exclusive: bool,
    pub max: f64,
}

impl NumberRange {
    /// True for a finite value within the range.
    pub fn contains(&self, value: f64) -> bool {
        let above_min = if self.min_exclusive {
            value > self.min
        } else {
            value >= self.min
        };
        value.is_finite() && above_min && value <= self.max
    }

    /// The range in the words of every error about its field ([`field_rule`]).
    pub fn rule(&self) -> String {
        if self.min_exclusive {
            format!("a number above {} and at most {}", self.min, self.max)
        } else {
            format!("a number between {} and {}", self.min, self.max)
        }
    }
}

/// `temperature`: 0 is greedy; above 5 the text is noise.
pub const TEMPERATURE: NumberRange = NumberRange {
    min: 0.0,
    min_exclusive: false,
    max: 5.0,
};
/// `top_p`: the nucleus' probability mass.
pub const TOP_P: NumberRange = NumberRange {
    min: 0.0,
    min_exclusive: true,
    max: 1.0,
};
/// `repetition_penalty`: above 1 discourages repeated tokens.
pub const REPETITION_PENALTY: NumberRange = NumberRange {
    min: 0.0,
    min_exclusive: true,
    max: 10.0,
};
/// The smallest `max_tokens`; the largest is `inference.max_new_tokens`.
pub const MIN_MAX_TOKENS: u32 = 1;

/// The fields of a story request, in the order the API documents them.
pub const FIELDS: [&str; 10] = [
    "topic",
    "style",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "seed",
    "seen",
    "stream",
];

/// What `field` of a story request accepts, in the words of every error about it: a
/// range check below, and a wrong type at the HTTP edge.
pub fn field_rule(field: &str, max_new_tokens: usize) -> String {
    match field {
        "topic" => "a string".into(),
        "style" => {
            let names: Vec<&str> = Style::ALL.iter().map(|s| s.as_str()).collect();
            format!("one of {}", names.join(", "))
        }
        "max_tokens" => format!("a whole number between {MIN_MAX_TOKENS} and {max_new_tokens}"),
        "temperature" => TEMPERATURE.rule(),
        "top_p" => TOP_P.rule(),
        "top_k" => format!("a whole number between 0 (off) and {}", u32::MAX),
        "repetition_penalty" => REPETITION_PENALTY.rule(),
        "seed" => format!("a whole number between 0 and {}", u64::MAX),
        "seen" => format!("a list of at most {MAX_SEEN} story ids (`story-` and 16 hex digits)"),
        "stream" => "true or false".into(),
        _ => "a valid value".into(),
    }
}

/// One rule a request broke; the message names the field, the rule and the value given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error("`topic` is empty once control characters and spaces are removed")]
    EmptyTopic,
    #[error("`{field}` must be {rule}, got {value}")]
    OutOfRange {
        field: &'static str,
        rule: String,
        value: String,
    },
    #[error("the request body or query is invalid: {0}")]
    Malformed(String),
}

impl ValidationError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::EmptyTopic => "empty_topic",
            Self::OutOfRange { .. } => "out_of_range",
            Self::Malformed(_) => "invalid_request",
        }
    }

    fn range(field: &'static str, rule: impl Into<String>, value: impl ToString) -> Self {
        Self::OutOfRange {
            field,
            rule: rule.into(),
            value: value.to_string(),
        }
    }
}

/// A request with every rule checked and every default resolved.
#[derive(Debug, Clone)]
pub struct ValidStoryRequest {
    /// The cleaned topic (the trend's own title when none was given).
    pub topic: String,
    /// The current trend the topic matches, if any.
    pub trend: Option<TrendRef>,
    pub style: Style,
    /// Sampling as the engine gets it; `seed` is random when the client gave none.
    pub params: SamplingParams,
    /// The seed the client gave.
    pub seed: Option<u64>,
    pub stream: bool,
    /// Identifies identical requests for the cache and for sharing one generation.
    pub key: StoryKey,
    /// May be cached and shared (a seed was given, or `cache_unseeded` is on).
    pub cacheable: bool,
    /// "Another story": the ids of the stories the client has seen (`super::another`).
    pub seen: Option<Vec<String>>,
}

impl ValidStoryRequest {
    /// The same request with this seed, as if the client had given it.
    pub fn with_seed(&self, seed: u64) -> Self {
        Self {
            params: SamplingParams {
                seed,
                ..self.params.clone()
            },
            seed: Some(seed),
            key: self.key.with_seed(seed),
            cacheable: true,
            seen: None,
            ..self.clone()
        }
    }

    /// Variant `index` of this request ("another story", `super::another`).
    pub fn variant(&self, index: usize) -> Self {
        self.with_seed(self.key.variant_seed(index))
    }
}

/// Checks `request` against `config` and the limits of the engine.
///
/// # Errors
/// The first rule broken; `Ok(None)`-like absence of trends is the caller's
/// (`topic` missing and no trend known gives [`super::StoryError::NoTrends`]).
pub fn validate(
    request: StoryRequest,
    config: &StoriesConfig,
    sampling: &SamplingDefaults,
    max_new_tokens: usize,
    snapshot: &TrendSnapshot,
    model: &Arc<str>,
) -> Result<Option<ValidStoryRequest>, ValidationError> {
    let (topic, trend) = match &request.topic {
        Some(raw) => {
            let topic = clean_topic(raw, config.max_topic_chars).map_err(|e| match e {
                PromptError::EmptyTopic => ValidationError::EmptyTopic,
                other => ValidationError::Malformed(other.to_string()),
            })?;
            let trend = snapshot.find(&topic).map(trend_ref);
            (topic, trend)
        }
        None => match snapshot.trends.first() {
            Some(top) => (top.topic.clone(), Some(trend_ref(top))),
            None => return Ok(None),
        },
    };
    let max_tokens = match request.max_tokens {
        Some(n) if n < MIN_MAX_TOKENS || n as usize > max_new_tokens => {
            return Err(ValidationError::range(
                "max_tokens",
                field_rule("max_tokens", max_new_tokens),
                n,
            ))
        }
        Some(n) => n as usize,
        None => config.default_max_tokens,
    };
    // Checked as the f64 the client sent, then narrowed for the engine.
    let temperature = request
        .temperature
        .unwrap_or(f64::from(sampling.temperature));
    if !TEMPERATURE.contains(temperature) {
        return Err(ValidationError::range(
            "temperature",
            field_rule("temperature", max_new_tokens),
            temperature,
        ));
    }
    let top_p = request.top_p.unwrap_or(f64::from(sampling.top_p));
    if !TOP_P.contains(top_p) {
        return Err(ValidationError::range(
            "top_p",
            field_rule("top_p", max_new_tokens),
            top_p,
        ));
    }
    let top_k = request.top_k.map_or(sampling.top_k, |k| k as usize);
    let repetition_penalty = request
        .repetition_penalty
        .unwrap_or(f64::from(sampling.repetition_penalty));
    if !REPETITION_PENALTY.contains(repetition_penalty) {
        return Err(ValidationError::range(
            "repetition_penalty",
            field_rule("repetition_penalty", max_new_tokens),
            repetition_penalty,
        ));
    }
    let style = request.style.unwrap_or(config.default_style);
    let params = SamplingParams {
        temperature: temperature as f32,
        top_k,
        top_p: positive_f32(top_p),
        repetition_penalty: positive_f32(repetition_penalty),
        seed: request.seed.unwrap_or_else(rand::random),
        max_tokens,
        stop: Vec::new(),
        ignore_eos: config.ignore_eos,
    };
    let seen = match request.seen {
        None => None,
        Some(seen) => {
            let bad = seen.0.iter().find(|id| !is_story_id(id));
            if seen.0.len() > MAX_SEEN || bad.is_some() {
                let value = match bad {
                    Some(id) => format!("the unknown id {id:?}"),
                    None => format!("{} ids", seen.0.len()),
                };
                return Err(ValidationError::range(
                    "seen",
                    field_rule("seen", max_new_tokens),
                    value,
                ));
            }
            // A seed keeps its meaning, that seed's story: `seen` is then only checked.
            request.seed.is_none().then_some(seen.0)
        }
    };
    let key = StoryKey::new(&topic, style, model, &params, request.seed);
    Ok(Some(ValidStoryRequest {
        seen,
        cacheable: request.seed.is_some() || config.cache.cache_unseeded,
        topic,
        trend,
        style,
        params,
        seed: request.seed,
        stream: request.stream.unwrap_or(false),
        key,
    }))
}

/// A positive f64 as an f32 that stays positive (a value below f32's range would round to 0,
/// which the sampler refuses).
fn positive_f32(value: f64) -> f32 {
    (value as f32).max(f32::MIN_POSITIVE)
}

fn trend_ref(trend: &Trend) -> TrendRef {
    TrendRef {
        sources: trend
            .sources
            .iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        rank: trend.rank,
        url: trend.url.clone(),
        context: trend.context.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stories::another::Seen;
    use crate::trends::{Freshness, TrendSnapshot};
    use std::time::SystemTime;

    fn snapshot(topics: &[&str]) -> TrendSnapshot {
        let now = SystemTime::now();
        TrendSnapshot {
            trends: topics
                .iter()
                .enumerate()
                .map(|(i, t)| Trend {
                    topic: t.to_string(),
                    sources: vec![crate::trends::SourceKind::File],
                    rank: i + 1,
                    score: 1.0,
                    url: None,
                    context: Some(format!("why {t} trends")),
                    first_seen: now,
                    last_seen: now,
                    fetched_at: now,
                    stale: false,
                })
                .collect(),
            freshness: Freshness::Default,
            built_at: now,
            sources: Vec::new(),
        }
    }

    fn check(request: StoryRequest) -> Result<Option<ValidStoryRequest>, ValidationError> {
        validate(
            request,
            &StoriesConfig::default(),
            &SamplingDefaults::BUILT_IN,
            512,
            &snapshot(&["Solar eclipse", "Rust 2.0"]),
            &Arc::from("m"),
        )
    }

    fn field_of(err: ValidationError) -> &'static str {
        match err {
            ValidationError::OutOfRange { field, .. } => field,
            other => panic!("expected OutOfRange, got {other:?}"),
        }
    }

    #[test]
    fn no_topic_takes_the_top_trend() {
        let valid = check(StoryRequest::default()).unwrap().unwrap();
        assert_eq!(valid.topic, "Solar eclipse");
        assert_eq!(valid.trend.unwrap().rank, 1);
        assert_eq!(valid.style, Style::default());
        assert_eq!(valid.params.max_tokens, 128);
        let none = validate(
            StoryRequest::default(),
            &StoriesConfig::default(),
            &SamplingDefaults::BUILT_IN,
            512,
            &snapshot(&[]),
            &Arc::from("m"),
        );
        assert!(matches!(none, Ok(None)), "no trend and no topic");
    }

    #[test]
    fn a_topic_matching_a_trend_carries_it() {
        let valid = check(StoryRequest {
            topic: Some("  rust 2.0\n".into()),
            ..StoryRequest::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(valid.topic, "rust 2.0");
        let trend = valid.trend.unwrap();
        assert_eq!(trend.rank, 2);
        assert_eq!(trend.context.as_deref(), Some("why Rust 2.0 trends"));
    }

    #[test]
    fn an_empty_topic_after_cleaning_is_refused() {
        let err = check(StoryRequest {
            topic: Some(" \n\t\u{0}\u{7} ".into()),
            ..StoryRequest::default()
        })
        .unwrap_err();
        assert_eq!(err, ValidationError::EmptyTopic);
    }

    #[test]
    fn each_out_of_range_field_is_named() {
        let cases = [
            (
                StoryRequest {
                    max_tokens: Some(0),
                    ..StoryRequest::default()
                },
                "max_tokens",
            ),
            (
                StoryRequest {
                    max_tokens: Some(513),
                    ..StoryRequest::default()
                },
                "max_tokens",
            ),
            (
                StoryRequest {
                    temperature: Some(-0.1),
                    ..StoryRequest::default()
                },
                "temperature",
            ),
            (
                StoryRequest {
                    temperature: Some(f64::NAN),
                    ..StoryRequest::default()
                },
                "temperature",
            ),
            (
                StoryRequest {
                    top_p: Some(0.0),
                    ..StoryRequest::default()
                },
                "top_p",
            ),
            (
                StoryRequest {
                    top_p: Some(1.01),
                    ..StoryRequest::default()
                },
                "top_p",
            ),
            (
                StoryRequest {
                    repetition_penalty: Some(0.0),
                    ..StoryRequest::default()
                },
                "repetition_penalty",
            ),
        ];
        for (request, field) in cases {
            assert_eq!(field_of(check(request).unwrap_err()), field);
        }
    }

    #[test]
    fn seen_takes_story_ids_without_a_seed() {
        let id = "story-0123456789abcdef".to_string();
        let valid = check(StoryRequest {
            seen: Some(Seen(vec![id.clone()])),
            ..StoryRequest::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(valid.seen, Some(vec![id.clone()]));
        let variant = valid.with_seed(7);
        assert_eq!((variant.seed, variant.params.seed), (Some(7), 7));
        assert!(variant.cacheable && variant.seen.is_none());
        assert_eq!(variant.key, valid.key.with_seed(7));
        // With a seed, that seed's story: `seen` is only checked.
        let seeded = check(StoryRequest {
            seen: Some(Seen(vec![id.clone()])),
            seed: Some(1),
            ..StoryRequest::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!((seeded.seen, seeded.seed), (None, Some(1)));
        for (seen, why) in [
            (vec!["story-1".to_string()], "the unknown id \"story-1\""),
            (vec![id.clone(); MAX_SEEN + 1], "33 ids"),
        ] {
            let err = check(StoryRequest {
                seen: Some(Seen(seen)),
                seed: Some(1),
                ..StoryRequest::default()
            })
            .unwrap_err();
            assert_eq!(field_of(err.clone()), "seen");
            assert!(err.to_string().contains(why), "{err}");
        }
    }

    #[test]
    fn the_fields_are_every_field_serde_knows() {
        let err = serde_json::from_str::<StoryRequest>(r#"{"?": 1}"#)
            .unwrap_err()
            .to_string();
        // "unknown field `?`, expected one of `topic`, `style`, ... at line 1 column 5"
        let listed: Vec<&str> = err.split('`').skip(3).step_by(2).collect();
        assert_eq!(listed, FIELDS, "{err}");
    }

    #[test]
    fn bounds_are_checked_on_the_value_sent_and_stay_valid_for_the_engine() {
        // The smallest positive f64 is inside (0, 1] but rounds to 0 as an f32.
        let valid = check(StoryRequest {
            top_p: Some(5e-324),
            repetition_penalty: Some(5e-324),
            ..StoryRequest::default()
        })
        .unwrap()
        .unwrap();
        assert!(valid.params.top_p > 0.0 && valid.params.repetition_penalty > 0.0);
        // Just above the maximum as an f64, the maximum itself as an f32: refused.
        let above = f64::from_bits(TEMPERATURE.max.to_bits() + 1);
        let err = check(StoryRequest {
            temperature: Some(above),
            ..StoryRequest::default()
        })
        .unwrap_err();
        assert_eq!(field_of(err), "temperature");
        for (range, inside, outside) in [
            (TEMPERATURE, [0.0, 5.0], [-1e-9, 5.000001]),
            (TOP_P, [1e-9, 1.0], [0.0, 1.000001]),
            (REPETITION_PENALTY, [1e-9, 10.0], [0.0, 10.000001]),
        ] {
            assert!(inside.iter().all(|v| range.contains(*v)), "{range:?}");
            assert!(!outside.iter().any(|v| range.contains(*v)), "{range:?}");
            assert!(!range.contains(f64::NAN) && !range.contains(f64::INFINITY));
        }
    }

    #[test]
    fn range_errors_say_what_the_field_accepts() {
        let message = |request| check(request).unwrap_err().to_string();
        assert_eq!(
            message(StoryRequest {
                top_p: Some(2.0),
                ..StoryRequest::default()
            }),
            "`top_p` must be a number above 0 and at most 1, got 2"
        );
        assert_eq!(
            message(StoryRequest {
                temperature: Some(9.5),
                ..StoryRequest::default()
            }),
            "`temperature` must be a number between 0 and 5, got 9.5"
        );
        assert_eq!(
            message(StoryRequest {
                repetition_penalty: Some(0.0),
                ..StoryRequest::default()
            }),
            "`repetition_penalty` must be a number above 0 and at most 10, got 0"
        );
        for max_tokens in [0, 513] {
            assert_eq!(
                message(StoryRequest {
                    max_tokens: Some(max_tokens),
                    ..StoryRequest::default()
                }),
                format!("`max_tokens` must be a whole number between 1 and 512, got {max_tokens}")
            );
        }
    }

    #[test]
    fn a_seed_makes_the_request_cacheable_and_keys_differ_by_parameters() {
        let seeded = |seed, max_tokens| {
            check(StoryRequest {
                topic: Some("Tides".into()),
                seed: Some(seed),
                max_tokens: Some(max_tokens),
                ..StoryRequest::default()
            })
            .unwrap()
            .unwrap()
        };
        let a = seeded(7, 32);
        assert!(a.cacheable);
        assert_eq!(a.params.seed, 7);
        assert_eq!(a.key, seeded(7, 32).key);
        assert_ne!(a.key, seeded(8, 32).key);
        assert_ne!(a.key, seeded(7, 33).key);
        let unseeded = check(StoryRequest {
            topic: Some("TIDES".into()),
            max_tokens: Some(32),
            ..StoryRequest::default()
        })
        .unwrap()
        .unwrap();
        assert_ne!(unseeded.key, a.key, "no seed is its own key");
    }
}
