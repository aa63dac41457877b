//! Stories: from a client's request to a finished (or streamed) story.
//!
//! - `config`: `[stories]` defaults, limits, cache and pre-generation settings.
//! - `prompt`: styles, topic cleaning and injection-safe tokenization of story prompts.
//! - `template`: the model's chat template (`tokenizer_config.json` or a built-in fallback),
//!   checked at load and rendered with minijinja.
//! - `validate`: a [`StoryRequest`] (everything optional) into a [`ValidStoryRequest`]
//!   (topic resolved in the trend snapshot, defaults filled, each rule checked by name).
//! - `cache`: finished stories (TTL, LRU bound) and in-flight generations that identical
//!   requests share ([`StoryCache`]).
//! - `service`: the pipeline handlers call ([`StoryService`]): cache, coalescing,
//!   admission, and the task that drives one generation for all its subscribers.
//! - `another`: "another story", a story about a topic that the client has not seen: the
//!   topic's variants (seeds every replica derives alike), first the ones written ahead.
//! - `pregen`: keeps stories written for the top trends at low priority, and their variants.

pub mod another;
pub mod cache;
pub mod config;
pub mod integer;
pub mod pregen;
pub mod prompt;
pub mod service;
pub mod template;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use another::{Seen, VariantAnswer};
pub use cache::{CacheUsage, StoryCache, StoryKey};
pub use config::StoriesConfig;
pub use prompt::Style;
pub use service::{CacheOutcome, StoryEvent, StoryService, StoryStream};
pub use validate::{ValidStoryRequest, ValidationError};

use crate::inference::InferError;

/// A story request as a client sends it, as a JSON body (`POST /v1/stories`) or as query
/// parameters (`GET /v1/stories`). Every field is optional; unknown fields are refused.
/// The bounds of each field are in `validate` (published by the OpenAPI document, which
/// also fills them into this schema); floats are f64 so they are checked as sent.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoryRequest {
    /// What the story is about: it must hold a visible character (control characters,
    /// invisible formatting and surrounding spaces are removed); at most
    /// `stories.max_topic_chars` characters are kept. Absent: the top current trend.
    pub topic: Option<String>,
    /// Absent: `stories.default_style`.
    pub style: Option<Style>,
    /// New tokens at most (at most `inference.max_new_tokens`; the prompt plus these must
    /// also fit the model's context).
    #[serde(default, deserialize_with = "integer::optional")]
    pub max_tokens: Option<u32>,
    /// 0 is greedy.
    pub temperature: Option<f64>,
    /// Nucleus sampling mass.
    pub top_p: Option<f64>,
    /// 0 disables top-k.
    #[serde(default, deserialize_with = "integer::optional")]
    pub top_k: Option<u32>,
    /// Above 1 discourages repeated tokens.
    pub repetition_penalty: Option<f64>,
    /// Same seed, same parameters, same model: same story (and always cacheable).
    #[serde(default, deserialize_with = "integer::optional")]
    pub seed: Option<u64>,
    /// "Another story": the ids of the stories about this topic the client has already
    /// shown (at most 32; in a query, comma-separated; may be empty). The answer is one not
    /// among them, written ahead when one is ready (`variant: ready`), else written now
    /// (`variant: new`). With `seed`, that seed's story as always (`seen` is only checked).
    #[schema(value_type = Option<Vec<String>>)]
    pub seen: Option<Seen>,
    /// Server-Sent Events instead of one JSON answer (`Accept: text/event-stream` too).
    pub stream: Option<bool>,
}

/// Why a story ended, as its answer says. The engine's other endings (cancelled,
/// preempted, failed) are errors, never a story.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = FinishReason)]
pub enum StoryEnd {
    /// The model ended it (its end of turn or a stop string).
    Stop,
    /// It reached `max_tokens`.
    Length,
}

/// The trend a story's topic matched, as written into the story.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TrendRef {
    /// Sources listing the topic (`hackernews`, `reddit`, `google_trends`, `wikipedia`, `file`).
    pub sources: Vec<String>,
    /// 1-based rank in the merged ranking when the story was requested.
    pub rank: usize,
    pub url: Option<String>,
    /// Why it trends, as the source tells (put into the prompt).
    pub context: Option<String>,
}

/// Stage timings of the generation that wrote a story, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct GenerationTimings {
    /// Waiting for a batch slot.
    pub queue_ms: f64,
    /// Prefill of the prompt.
    pub prefill_ms: f64,
    /// From submission to the first token.
    pub ttft_ms: f64,
    /// From submission to the last token.
    pub generation_ms: f64,
}

/// A finished story, as cached and shared by every request that asked for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Story {
    pub id: String,
    pub topic: String,
    pub trend: Option<TrendRef>,
    pub style: Style,
    pub text: String,
    pub model: Arc<str>,
    pub prompt_tokens: usize,
    /// The most new tokens the story could have: the request's `max_tokens`, or fewer where
    /// the prompt left less room in the model's context.
    pub max_tokens: usize,
    pub tokens: usize,
    pub finish_reason: StoryEnd,
    /// The seed the request gave; `None` when the server picked one.
    pub seed: Option<u64>,
    pub timings: GenerationTimings,
}

impl Story {
    /// Bytes the cache charges for this story.
    pub fn size(&self) -> usize {
        self.text.len() + self.topic.len() + self.id.len() + 256
    }
}

/// Why a story request failed; the API layer picks the HTTP status from it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoryError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Inference(#[from] InferError),
    /// The request's deadline (`inference.request_timeout_secs`) passed.
    #[error("the story was not finished within {}s", .0.as_secs())]
    Timeout(Duration),
    /// The generation was given up (its last client left, or the server is stopping).
    #[error("the generation was cancelled")]
    Cancelled,
    /// Pre-generation only: a user request took the slot.
    #[error("the background generation gave its slot to a user request")]
    Preempted,
    /// No trend is known and the request named no topic.
    #[error("no trending topic is available; name a topic")]
    NoTrends,
}

impl StoryError {
    /// Stable machine-readable name: the `code` of HTTP error bodies and the metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(e) => e.code(),
            Self::Inference(e) => e.code(),
            Self::Timeout(_) => "timeout",
            Self::Cancelled => "cancelled",
            Self::Preempted => "preempted",
            Self::NoTrends => "no_trends",
        }
    }
}

/// Milliseconds of a duration, as the API reports timings.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
