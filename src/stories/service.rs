//! [`StoryService`]: the story pipeline the handlers and pre-generation call.
//!
//! `validate` checks a request against the trend snapshot and the limits. `start` then
//! answers from the cache, joins an identical generation in flight, or builds the prompt,
//! submits it to the inference pool (refused at once when full) and spawns the task that
//! drives the generation: it feeds every delta to the flight's subscribers, stores the
//! finished story, and cancels the generation when the last subscriber leaves.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::another::VariantAnswer;
use super::cache::{Flight, FlightEvent, Lookup, StoryCache, StoryKey, Subscription};
use super::config::SamplingDefaults;
use super::prompt::PromptBuilder;
use super::validate::{validate, ValidStoryRequest, ValidationError};
use super::{
    millis, GenerationTimings, StoriesConfig, Story, StoryEnd, StoryError, StoryRequest, Style,
};
use crate::engine::{FinishReason, GenerationStats, Priority, SamplingParams};
use crate::inference::{InferError, InferenceHandle, ResponseStream, StreamEvent};
use crate::metrics::Metrics;
use crate::trends::{Trend, TrendsHandle};

/// Everything a story needs; cheap to share (`Arc`) between HTTP workers.
pub struct StoryService {
    inference: InferenceHandle,
    trends: TrendsHandle,
    cache: Arc<StoryCache>,
    prompts: PromptBuilder,
    config: StoriesConfig,
    /// Sampling of a request that sets none (the configuration's, the model's, built in).
    sampling: SamplingDefaults,
    max_new_tokens: usize,
    /// Prompt plus new tokens must fit here: the model's context, capped by
    /// `inference.max_prompt_tokens` for the prompt part.
    limits: PromptLimits,
    request_timeout: Duration,
    model: Arc<str>,
    metrics: Arc<Metrics>,
}

/// What a story stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum StoryEvent {
    /// New text.
    Delta(String),
    /// The finished story; `cached` when it came from the cache without a generation.
    Done {
        story: Arc<Story>,
        cached: bool,
    },
    Failed(StoryError),
}

/// One request's view of its story: a cached one, or a generation (its own or shared).
pub struct StoryStream {
    source: Source,
    ended: bool,
    cache: CacheOutcome,
    /// "Another story" only: how it was answered.
    variant: Option<VariantAnswer>,
}

/// How the story cache answered a request: the `result` label of the cache metric and
/// the `cache` field of the request's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// A finished story, no generation.
    Hit,
    /// Joined an identical generation in flight.
    Coalesced,
    /// Started the generation others may join.
    Miss,
    /// Not cacheable (no seed and `stories.cache.cache_unseeded = false`): a private one.
    Bypass,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Coalesced => "coalesced",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }
}

enum Source {
    Cached { story: Arc<Story>, sent: bool },
    Live(Subscription),
}

impl StoryStream {
    /// The next event; `None` after the end.
    pub async fn next(&mut self) -> Option<StoryEvent> {
        if self.ended {
            return None;
        }
        let event = match &mut self.source {
            Source::Cached { story, sent } => {
                if !*sent {
                    *sent = true;
                    return Some(StoryEvent::Delta(story.text.clone()));
                }
                StoryEvent::Done {
                    story: Arc::clone(story),
                    cached: true,
                }
            }
            Source::Live(subscription) => match subscription.next().await {
                FlightEvent::Delta(text) => return Some(StoryEvent::Delta(text)),
                FlightEvent::End(Ok(story)) => StoryEvent::Done {
                    story,
                    cached: false,
                },
                FlightEvent::End(Err(e)) => StoryEvent::Failed(e),
            },
        };
        self.ended = true;
        Some(event)
    }

    /// How the story cache answered this request.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }

    /// For "another story" (a request with `seen`): whether it was written ahead.
    pub fn variant(&self) -> Option<VariantAnswer> {
        self.variant
    }

    /// Waits for the end: the story and whether it came from the cache.
    ///
    /// # Errors
    /// The generation's failure.
    pub async fn finish(self) -> Result<(Arc<Story>, bool), StoryError> {
        match self.source {
            Source::Cached { story, .. } => Ok((story, true)),
            Source::Live(subscription) => subscription.finish().await.map(|s| (s, false)),
        }
    }
}

impl StoryService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        inference: InferenceHandle,
        trends: TrendsHandle,
        prompts: PromptBuilder,
        config: StoriesConfig,
        sampling: SamplingDefaults,
        inference_config: &crate::config::InferenceConfig,
        context_tokens: usize,
        model: Arc<str>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inference,
            trends,
            cache: Arc::new(StoryCache::new(config.cache.clone())),
            prompts,
            config,
            sampling,
            max_new_tokens: inference_config.max_new_tokens,
            limits: PromptLimits {
                context_tokens,
                max_prompt_tokens: inference_config.max_prompt_tokens,
            },
            request_timeout: Duration::from_secs(inference_config.request_timeout_secs),
            model,
            metrics,
        }
    }

    pub fn cache(&self) -> &Arc<StoryCache> {
        &self.cache
    }

    pub fn config(&self) -> &StoriesConfig {
        &self.config
    }

    /// `inference.max_new_tokens`: the largest `max_tokens` a request may ask for.
    pub fn max_new_tokens(&self) -> usize {
        self.max_new_tokens
    }

    /// True when an inference worker has its model loaded.
    pub fn ready(&self) -> bool {
        self.inference.ready()
    }

    /// The first `n` trends of the current ranking.
    pub fn top_trends(&self, n: usize) -> Vec<Trend> {
        self.trends
            .snapshot()
            .trends
            .iter()
            .take(n)
            .cloned()
            .collect()
    }

    /// The cached story of a plain request (defaults, no seed) for `topic`, as
    /// pre-generation writes it.
    pub fn default_story(&self, topic: &str) -> Option<Arc<Story>> {
        let request = self.plain_request(topic, None)?;
        self.cache.get(&request.key)
    }

    /// A request for `topic` (in `style`, else the default one) with every other field at
    /// its default: what pre-generation writes; `None` when it does not validate.
    pub fn plain_request(&self, topic: &str, style: Option<Style>) -> Option<ValidStoryRequest> {
        self.validate(StoryRequest {
            topic: Some(topic.to_string()),
            style,
            ..StoryRequest::default()
        })
        .ok()
    }

    /// One short generation through the whole prompt path, so the first user request
    /// does not pay for the engine's first allocations, and the default style's shared
    /// prefix is already kept.
    ///
    /// # Errors
    /// The generation's failure.
    pub async fn warm_up(&self) -> Result<(), StoryError> {
        let prompt = self
            .prompts
            .build(self.config.default_style, "warm-up", None)
            .map_err(|e| StoryError::Inference(InferError::Generation(e.to_string())))?;
        let params = SamplingParams {
            max_tokens: 2,
            ..SamplingParams::default()
        };
        let stream = self.inference.submit_prompt(
            prompt.ids,
            prompt.shared_tokens,
            params,
            Priority::Interactive,
        )?;
        stream.collect().await?;
        Ok(())
    }

    /// Checks a request against the current trends and the limits.
    ///
    /// # Errors
    /// `Invalid` for a broken rule, `NoTrends` when no topic is given and none trends.
    pub fn validate(&self, request: StoryRequest) -> Result<ValidStoryRequest, StoryError> {
        let snapshot = self.trends.snapshot();
        validate(
            request,
            &self.config,
            &self.sampling,
            self.max_new_tokens,
            &snapshot,
            &self.model,
        )?
        .ok_or(StoryError::NoTrends)
    }

    /// Starts (or joins, or answers from the cache) the story of a valid request.
    ///
    /// # Errors
    /// `Inference(Overloaded | NotReady)` when the pool refuses a new generation, or a
    /// prompt that cannot be built.
    pub fn start(&self, request: &ValidStoryRequest) -> Result<StoryStream, StoryError> {
        if let Some(seen) = &request.seen {
            return self.start_another(request, seen);
        }
        let live = |subscription, cache| StoryStream {
            source: Source::Live(subscription),
            ended: false,
            cache,
            variant: None,
        };
        if !request.cacheable {
            let (flight, subscription) = StoryCache::private_flight();
            self.launch(request, flight, None, Priority::Interactive)?;
            return Ok(live(subscription, CacheOutcome::Bypass));
        }
        match self.cache.lookup(&request.key) {
            Lookup::Hit(story) => {
                self.metrics.cache_result(CacheOutcome::Hit.as_str());
                Ok(StoryStream {
                    source: Source::Cached { story, sent: false },
                    ended: false,
                    cache: CacheOutcome::Hit,
                    variant: None,
                })
            }
            Lookup::Follow(subscription) => {
                self.metrics.cache_result(CacheOutcome::Coalesced.as_str());
                Ok(live(subscription, CacheOutcome::Coalesced))
            }
            Lookup::Lead(flight, subscription) => {
                self.metrics.cache_result(CacheOutcome::Miss.as_str());
                let landing = Landing {
                    cache: Arc::clone(&self.cache),
                    key: request.key.clone(),
                    shared: true,
                };
                match self.launch(
                    request,
                    Arc::clone(&flight),
                    Some(landing),
                    Priority::Interactive,
                ) {
                    Ok(()) => Ok(live(subscription, CacheOutcome::Miss)),
                    Err(e) => {
                        // Followers that joined meanwhile get the same refusal.
                        self.cache.land(&request.key, &flight);
                        flight.end(Err(e.clone()));
                        Err(e)
                    }
                }
            }
        }
    }

    /// "Another story": the first of the request's variants whose id is not in `seen`
    /// that is ready (written ahead), else the first not seen, written now (or joined while
    /// another client's request writes it).
    fn start_another(
        &self,
        request: &ValidStoryRequest,
        seen: &[String],
    ) -> Result<StoryStream, StoryError> {
        // One more candidate than ids seen: at least one is not among them.
        let count = self.config.variants.per_trend.max(seen.len() + 1);
        let unseen: Vec<ValidStoryRequest> = (0..count)
            .map(|index| request.variant(index))
            .filter(|v| !seen.contains(&v.key.story_id()))
            .collect();
        let chosen = unseen
            .iter()
            .find(|v| self.cache.peek(&v.key).is_some())
            .unwrap_or(&unseen[0]);
        let mut stream = self.start(chosen)?;
        let answer = match stream.cache {
            CacheOutcome::Hit => VariantAnswer::Ready,
            _ => VariantAnswer::New,
        };
        self.metrics.another_story(answer);
        stream.variant = Some(answer);
        Ok(stream)
    }

    /// The variants written ahead for a top trend: every style of `stories.variants`, its
    /// first `per_trend` seeds, the lower seeds of every style first.
    pub fn variants_of(&self, topic: &str) -> Vec<ValidStoryRequest> {
        let variants = &self.config.variants;
        if !variants.enabled {
            return Vec::new();
        }
        let bases: Vec<ValidStoryRequest> = self
            .config
            .variant_styles()
            .into_iter()
            .filter_map(|style| self.plain_request(topic, Some(style)))
            .collect();
        (0..variants.per_trend)
            .flat_map(|index| bases.iter().map(move |base| base.variant(index)))
            .collect()
    }

    /// Variants ready per top trend (`stories.variants.top_k` of them), in rank order.
    pub fn variants_ready(&self) -> Vec<usize> {
        if !self.config.variants.enabled {
            return Vec::new();
        }
        self.top_trends(self.config.variants.top_k)
            .iter()
            .map(|trend| {
                self.variants_of(&trend.topic)
                    .iter()
                    .filter(|v| self.cache.peek(&v.key).is_some())
                    .count()
            })
            .collect()
    }

    /// Writes a story at background priority unless a fresh one is cached or being
    /// written; waits for it. Used by pre-generation (trending stories and variants).
    ///
    /// # Errors
    /// As `start`, plus `Preempted` when a user request took the slot.
    pub async fn pregenerate(&self, request: &ValidStoryRequest) -> Result<bool, StoryError> {
        if self.cache.get(&request.key).is_some() || self.cache.in_flight(&request.key) {
            return Ok(false);
        }
        let (flight, subscription) = StoryCache::private_flight();
        let landing = Landing {
            cache: Arc::clone(&self.cache),
            key: request.key.clone(),
            shared: false,
        };
        self.launch(request, flight, Some(landing), Priority::Background)?;
        subscription.finish().await.map(|_| true)
    }

    /// Builds the prompt, submits it, and spawns the task that drives the flight.
    fn launch(
        &self,
        request: &ValidStoryRequest,
        flight: Arc<Flight>,
        landing: Option<Landing>,
        priority: Priority,
    ) -> Result<(), StoryError> {
        let context = request.trend.as_ref().and_then(|t| t.context.as_deref());
        let prompt = self
            .prompts
            .build(request.style, &request.topic, context)
            .map_err(|e| StoryError::Inference(InferError::Generation(e.to_string())))?;
        let prompt_tokens = prompt.ids.len();
        let mut params = request.params.clone();
        params.max_tokens = self.limits.grant(prompt_tokens, params.max_tokens)?;
        let max_tokens = params.max_tokens;
        let submitted =
            self.inference
                .submit_prompt(prompt.ids, prompt.shared_tokens, params, priority);
        let stream = submitted.inspect_err(|e| {
            self.metrics.generation_ended(priority, e.code());
        })?;
        // A seeded story's id is its key's, the same on every replica (`another`).
        let id = match request.seed {
            Some(_) => request.key.story_id(),
            None => format!("story-{:016x}", rand::random::<u64>()),
        };
        let story = Story {
            id,
            topic: request.topic.clone(),
            trend: request.trend.clone(),
            style: request.style,
            text: String::new(),
            model: Arc::clone(&self.model),
            prompt_tokens,
            max_tokens,
            tokens: 0,
            finish_reason: StoryEnd::Stop,
            seed: request.seed,
            timings: GenerationTimings::default(),
        };
        let driver = Driver {
            stream,
            flight,
            landing,
            story,
            priority,
            timeout: self.request_timeout,
            metrics: Arc::clone(&self.metrics),
        };
        actix_web::rt::spawn(driver.run());
        Ok(())
    }
}

/// The token limits a built prompt must respect.
struct PromptLimits {
    context_tokens: usize,
    max_prompt_tokens: usize,
}

impl PromptLimits {
    /// New tokens that fit in the model's context after a prompt (none after one too long).
    fn room(&self, prompt_tokens: usize) -> usize {
        if prompt_tokens > self.max_prompt_tokens {
            return 0;
        }
        self.context_tokens.saturating_sub(prompt_tokens)
    }

    /// The new tokens a story may have after a prompt of `prompt_tokens`: `max_tokens`, or
    /// what fits in the model's context when that is less (the story then ends with
    /// `finish_reason: length` at that count, and its answer's `max_tokens` says so). Every
    /// `max_tokens` the published bound allows is served, whatever the topic's length.
    /// Refuses, as the client's error, a prompt too long to leave room for a token.
    fn grant(&self, prompt_tokens: usize, max_tokens: usize) -> Result<usize, ValidationError> {
        let room = self.room(prompt_tokens);
        if room == 0 {
            return Err(ValidationError::OutOfRange {
                field: "topic",
                rule: format!(
                    "short enough for a prompt of at most {} tokens",
                    self.max_prompt_tokens
                        .min(self.context_tokens.saturating_sub(1))
                ),
                value: format!("a prompt of {prompt_tokens} tokens"),
            });
        }
        Ok(max_tokens.min(room))
    }
}

/// Where a finished story goes: into the cache, and (for a shared flight) out of the map
/// of flights.
struct Landing {
    cache: Arc<StoryCache>,
    key: StoryKey,
    shared: bool,
}

/// The task of one generation.
struct Driver {
    stream: ResponseStream,
    flight: Arc<Flight>,
    landing: Option<Landing>,
    /// Filled as the generation goes.
    story: Story,
    priority: Priority,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Driver {
    async fn run(mut self) {
        let result = self.generate().await;
        let outcome = result.as_ref().map_or_else(StoryError::code, |_| "ok");
        self.metrics.generation_ended(self.priority, outcome);
        let result = result.map(Arc::new);
        if let Some(landing) = &self.landing {
            if let Ok(story) = &result {
                landing.cache.insert(landing.key.clone(), Arc::clone(story));
            }
            // After the insert: a lookup in between finds the story, never nothing.
            if landing.shared {
                landing.cache.land(&landing.key, &self.flight);
            }
        }
        self.flight.end(result);
    }

    /// Reads the engine's events into the flight until the end, or until the last
    /// subscriber leaves (dropping the stream cancels the sequence at the next step).
    async fn generate(&mut self) -> Result<Story, StoryError> {
        loop {
            let event = tokio::select! {
                event = self.stream.next() => event,
                () = self.flight.cancelled() => return Err(StoryError::Cancelled),
            };
            match event {
                Some(Ok(StreamEvent::Token { text, .. })) => {
                    if !text.is_empty() {
                        self.story.text.push_str(&text);
                        self.flight.push(text);
                    }
                }
                Some(Ok(StreamEvent::Done(stats))) => return self.finish(&stats),
                Some(Err(e)) => return Err(e.into()),
                None => return Err(InferError::Incomplete.into()),
            }
        }
    }

    fn finish(&mut self, stats: &GenerationStats) -> Result<Story, StoryError> {
        // Before the outcome: a request whose deadline passed in the queue waited too.
        self.metrics.observe_generation(self.priority, stats);
        let end = match stats.finish_reason {
            FinishReason::Cancelled => return Err(StoryError::Timeout(self.timeout)),
            FinishReason::Preempted => return Err(StoryError::Preempted),
            FinishReason::Error => return Err(InferError::Incomplete.into()),
            FinishReason::Stop => StoryEnd::Stop,
            FinishReason::Length => StoryEnd::Length,
        };
        let ttft = stats.time_to_first_token.unwrap_or_default();
        let mut story = self.story.clone();
        story.tokens = stats.generated_tokens;
        story.finish_reason = end;
        story.timings = GenerationTimings {
            queue_ms: millis(stats.queue_time),
            prefill_ms: millis(stats.prefill_time),
            ttft_ms: millis(ttft),
            generation_ms: millis(ttft + stats.decode_time),
        };
        Ok(story)
    }
}
