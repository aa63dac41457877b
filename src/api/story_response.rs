//! The story answer's JSON: what every story endpoint and the final SSE event return.

use std::time::{Duration, Instant};

use serde::Serialize;
use utoipa::ToSchema;

use crate::stories::{millis, Story, StoryEnd, Style, TrendRef, VariantAnswer};

/// A story, as every story endpoint and the final SSE event return it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StoryResponse {
    pub id: String,
    pub topic: String,
    /// The current trend the topic matched, if any.
    pub trend: Option<TrendRef>,
    pub style: Style,
    pub story: String,
    pub model: String,
    pub prompt_tokens: usize,
    /// The most new tokens this story could have: the request's `max_tokens` (or the
    /// default), or fewer where the prompt left less room in the model's context.
    pub max_tokens: usize,
    /// Tokens generated.
    pub tokens: usize,
    pub finish_reason: StoryEnd,
    /// Served from the story cache (no generation ran for this request).
    pub cached: bool,
    /// The seed the request gave (absent: the server picked one); for "another story", the
    /// variant's seed, which asks for this story again.
    pub seed: Option<u64>,
    /// Only in the answer to "another story" (a request with `seen`): `ready` when the story
    /// was written ahead, `new` when none was ready and it was written for this request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<VariantAnswer>,
    pub timings: Timings,
}

/// Stage timings in milliseconds. Generation stages are those of the generation that wrote
/// the story (shared by coalesced requests; zero for a cache hit); `total_ms` is this request's.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Timings {
    pub trend_lookup_ms: f64,
    pub queue_ms: f64,
    pub prefill_ms: f64,
    pub ttft_ms: f64,
    pub generation_ms: f64,
    pub total_ms: f64,
}

impl StoryResponse {
    pub fn new(story: &Story, cached: bool, trend_lookup: Duration, started: Instant) -> Self {
        let generation = if cached {
            Default::default()
        } else {
            story.timings
        };
        Self {
            id: story.id.clone(),
            topic: story.topic.clone(),
            trend: story.trend.clone(),
            style: story.style,
            story: story.text.clone(),
            model: story.model.to_string(),
            prompt_tokens: story.prompt_tokens,
            max_tokens: story.max_tokens,
            tokens: story.tokens,
            finish_reason: story.finish_reason,
            cached,
            seed: story.seed,
            variant: None,
            timings: Timings {
                trend_lookup_ms: millis(trend_lookup),
                queue_ms: generation.queue_ms,
                prefill_ms: generation.prefill_ms,
                ttft_ms: generation.ttft_ms,
                generation_ms: generation.generation_ms,
                total_ms: millis(started.elapsed()),
            },
        }
    }

    /// Says how "another story" was answered.
    pub fn with_variant(self, variant: Option<VariantAnswer>) -> Self {
        Self { variant, ..self }
    }
}
