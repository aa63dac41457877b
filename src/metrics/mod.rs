//! Prometheus metrics (`GET /metrics`), declared once here.
//!
//! Every family has its unit and a closed label set; names follow
//! `trendstory_<area>_<thing>_<unit>`, plus the standard `process_*` families. Counters and
//! histograms are updated where things happen; gauges that mirror state owned elsewhere
//! (the pool, the trend cache, the story cache, readiness) and the counters those owners
//! keep themselves (worker restarts, cache evictions) are set from their snapshots when
//! `/metrics` is scraped, so nothing polls. One [`Metrics`] per server (not a
//! process-global registry), so tests can run several.
//!
//! - `format`: OpenMetrics for Prometheus, the Prometheus text format 0.0.4 for other
//!   clients ([`Format::negotiate`]).
//! - `process`: the `process_*` families, read from `/proc/self` at each scrape.
//!
//! The alert rules, the dashboard and the autoscaler's adapter rule in `k8s/monitoring/`
//! query these names; `tests/deploy/test_monitoring.py` fails when one of them is missing.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

mod format;
mod process;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::engine::{GenerationStats, Priority};
use crate::inference::PoolStatus;
use crate::stories::{CacheUsage, VariantAnswer};
use crate::trends::{Freshness, TrendSnapshot};
pub use format::Format;
use process::ProcessCollector;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route pattern (`/v1/stories`), or `unmatched`: never the raw path.
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// One of [`CACHE_RESULTS`].
    pub result: &'static str,
}

/// The values of the story cache's `result` label.
pub const CACHE_RESULTS: [&str; 3] = ["hit", "miss", "coalesced"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenerationLabels {
    /// `user` or `background`.
    pub priority: &'static str,
    /// `ok` or the failure's error code.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnswerLabels {
    /// `ready` (written ahead) or `new` (written for the request); see [`VariantAnswer`].
    pub answer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RankLabels {
    /// 1-based rank of the trend (a bounded label, unlike the topic).
    pub rank: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FreshnessLabels {
    /// `default`, `fresh`, `stale` or `expired` (see [`Freshness`]).
    pub freshness: &'static str,
}

type Hist = Family<HttpLabels, Histogram, fn() -> Histogram>;

/// What `/metrics` reads from the state's owners at each scrape.
pub struct Observed<'a> {
    pub pool: &'a PoolStatus,
    pub trends: &'a TrendSnapshot,
    pub cache: CacheUsage,
    /// Variants written ahead and ready, per top trend in rank order.
    pub variants_ready: &'a [usize],
    /// What `/readyz` answers.
    pub ready: bool,
    pub now: SystemTime,
}

/// Every metric of one server.
pub struct Metrics {
    registry: Registry,
    pub http_duration: Hist,
    pub story_cache: Family<ResultLabels, Counter>,
    pub generations: Family<GenerationLabels, Counter>,
    another: Family<AnswerLabels, Counter>,
    variants_ready: Family<RankLabels, Gauge>,
    prompt_tokens: Counter,
    tokens_generated: Counter,
    background_tokens: Counter,
    queue_time: Histogram,
    ttft: Histogram,
    prefill_rate: Histogram,
    decode_rate: Histogram,
    queue_depth: Gauge,
    background_queue_depth: Gauge,
    in_flight: Gauge,
    capacity: Gauge,
    batch_size: Gauge,
    engine_steps: Counter,
    engine_passes: Counter,
    engine_tokens: Counter,
    engine_step_time: Counter<f64, AtomicU64>,
    workers_up: Gauge,
    worker_restarts: Counter,
    ready: Gauge,
    cached_stories: Gauge,
    cached_bytes: Gauge,
    cache_evictions: Counter,
    trends: Gauge,
    freshness: Family<FreshnessLabels, Gauge>,
    source_up: Family<SourceLabels, Gauge>,
    source_age: Family<SourceLabels, Gauge<f64, AtomicU64>>,
    /// Set by the connections themselves (`api::connections`), not from a snapshot.
    connections: Gauge,
}

fn http_histogram() -> Histogram {
    // 1 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Buckets for a user's wait (queue, first token): from cache-fast to the default
/// `inference.request_timeout_secs` (120 s), with edges on the alert thresholds (5 s and
/// 10 s), so their p95 is read where it matters rather than interpolated across a wide bucket.
fn wait_histogram() -> Histogram {
    Histogram::new([
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0,
        120.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("trendstory");
        let http_duration: Hist = Family::new_with_constructor(http_histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time to the response head, by route, method and status",
            Unit::Seconds,
            http_duration.clone(),
        );
        let story_cache = Family::<ResultLabels, Counter>::default();
        registry.register(
            "story_cache_lookups",
            "Story requests by cache result: hit, miss (a new generation), coalesced (joined one in flight)",
            story_cache.clone(),
        );
        // Every result from the start at 0: a series that first appears at 1 hides that
        // increase from rate(), so a replica's first hit would never show.
        for result in CACHE_RESULTS {
            let _ = story_cache.get_or_create(&ResultLabels { result });
        }
        let generations = Family::<GenerationLabels, Counter>::default();
        registry.register(
            "story_generations",
            "Generations that ended, by priority and outcome",
            generations.clone(),
        );
        let another = Family::<AnswerLabels, Counter>::default();
        registry.register(
            "story_another",
            "\"Another story\" requests (with `seen`) by answer: ready (written ahead) or new (written for the request)",
            another.clone(),
        );
        for answer in VariantAnswer::ALL {
            let _ = another.get_or_create(&AnswerLabels {
                answer: answer.as_str(),
            });
        }
        let variants_ready = Family::<RankLabels, Gauge>::default();
        registry.register(
            "story_variants_ready",
            "Variants written ahead and ready for \"another story\", per top trend by rank",
            variants_ready.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let prompt_tokens = counter(
            registry,
            "inference_prompt_tokens",
            "Prompt tokens of generations that got past prefill (a kept shared prefix included), counted when they end (all priorities)",
        );
        let tokens_generated = counter(
            registry,
            "inference_generated_tokens",
            "Tokens generated, counted when their generation ends (all priorities)",
        );
        let background_tokens = counter(
            registry,
            "inference_background_generated_tokens",
            "Tokens generated at background priority (trending stories and their variants), counted when their generation ends",
        );
        let queue_time = wait_histogram();
        registry.register_with_unit(
            "inference_queue_time",
            "User requests: from admission until the engine gave them a batch slot (or their deadline passed waiting)",
            Unit::Seconds,
            queue_time.clone(),
        );
        let ttft = wait_histogram();
        registry.register_with_unit(
            "inference_time_to_first_token",
            "User requests: from admission to the first token",
            Unit::Seconds,
            ttft.clone(),
        );
        let prefill_rate = Histogram::new(exponential_buckets(4.0, 2.0, 12));
        registry.register(
            "inference_prefill_tokens_per_second",
            "Prompt tokens per second of prefill, per generation",
            prefill_rate.clone(),
        );
        let decode_rate = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "inference_decode_tokens_per_second",
            "Tokens per second after the first, per generation",
            decode_rate.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let queue_depth = gauge(
            registry,
            "inference_queue_depth",
            "User requests the engines hold without a batch slot (waiting for one, or held back by the KV-token budget)",
        );
        let background_queue_depth = gauge(
            registry,
            "inference_background_queue_depth",
            "Background requests (pre-generation) the engines hold without a batch slot",
        );
        let in_flight = gauge(
            registry,
            "inference_in_flight",
            "User requests admitted and not finished (the autoscaler's per-pod metric)",
        );
        let capacity = gauge(
            registry,
            "inference_capacity",
            "User requests admitted at most (workers x max_batch_size + max_queue); beyond it 429",
        );
        let batch_size = gauge(
            registry,
            "inference_batch_size",
            "Sequences in the engines' batches after their last step",
        );
        let engine_steps = counter(
            registry,
            "engine_steps",
            "Engine steps that ran the model, over all workers",
        );
        let engine_passes = counter(
            registry,
            "engine_passes",
            "Model passes those steps ran (one per step on our exports)",
        );
        let engine_tokens = counter(
            registry,
            "engine_tokens",
            "Tokens those passes took: prompt chunks and decoding rows",
        );
        let engine_step_time = Counter::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "engine_step",
            "Wall time of those steps",
            Unit::Seconds,
            engine_step_time.clone(),
        );
        let workers_up = gauge(
            registry,
            "inference_workers_up",
            "Workers with a loaded model",
        );
        let worker_restarts = counter(
            registry,
            "inference_worker_restarts",
            "Worker restarts since start",
        );
        let ready = gauge(
            registry,
            "ready",
            "1 when /readyz answers 200 (model loaded and warmed up, trends present, not shutting down)",
        );
        let cached_stories = gauge(registry, "story_cache_entries", "Stories in the cache");
        let cached_bytes = Gauge::default();
        registry.register_with_unit(
            "story_cache_size",
            "Bytes of stories in the cache",
            Unit::Bytes,
            cached_bytes.clone(),
        );
        let cache_evictions = counter(
            registry,
            "story_cache_evictions",
            "Stories removed before their TTL to stay within max_entries and max_bytes",
        );
        let trends = gauge(registry, "trends", "Trends in the merged ranking");
        let freshness = Family::<FreshnessLabels, Gauge>::default();
        registry.register(
            "trends_freshness",
            "1 for the trend list's current state: default (no source ever succeeded), fresh, stale (a source failed its latest fetch) or expired (nothing confirmed within the TTL)",
            freshness.clone(),
        );
        let source_up = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "trend_source_up",
            "1 when the source's latest fetch succeeded (enabled sources only)",
            source_up.clone(),
        );
        let source_age = Family::<SourceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "trend_source_age",
            "Time since the source's last successful fetch",
            Unit::Seconds,
            source_age.clone(),
        );
        let connections = gauge(
            registry,
            "http_connections",
            "Open client connections (at most server.max_connections)",
        );
        Self {
            registry: root,
            http_duration,
            story_cache,
            generations,
            another,
            variants_ready,
            prompt_tokens,
            tokens_generated,
            background_tokens,
            queue_time,
            ttft,
            prefill_rate,
            decode_rate,
            queue_depth,
            background_queue_depth,
            in_flight,
            capacity,
            batch_size,
            engine_steps,
            engine_passes,
            engine_tokens,
            engine_step_time,
            workers_up,
            worker_restarts,
            ready,
            cached_stories,
            cached_bytes,
            cache_evictions,
            trends,
            freshness,
            source_up,
            source_age,
            connections,
        }
    }

    pub fn connection_opened(&self) {
        self.connections.inc();
    }

    pub fn connection_closed(&self) {
        self.connections.dec();
    }

    /// Counts one HTTP response.
    pub fn observe_http(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.http_duration
            .get_or_create(&HttpLabels {
                route: route.to_string(),
                method: method.to_string(),
                status,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a story request's cache result, one of [`CACHE_RESULTS`].
    pub fn cache_result(&self, result: &'static str) {
        debug_assert!(CACHE_RESULTS.contains(&result), "{result}");
        self.story_cache
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Records the engine's figures of a generation that ended with stats (finished,
    /// cancelled or preempted). Waits are user requests' only: background work waits for
    /// spare capacity on purpose.
    pub fn observe_generation(&self, priority: Priority, stats: &GenerationStats) {
        self.tokens_generated.inc_by(stats.generated_tokens as u64);
        if priority == Priority::Background {
            self.background_tokens.inc_by(stats.generated_tokens as u64);
        }
        if priority == Priority::Interactive {
            self.queue_time.observe(stats.queue_time.as_secs_f64());
        }
        if let Some(ttft) = stats.time_to_first_token {
            // A first token means the prompt was prefilled.
            self.prompt_tokens.inc_by(stats.prompt_tokens as u64);
            if priority == Priority::Interactive {
                self.ttft.observe(ttft.as_secs_f64());
            }
        }
        if !stats.prefill_time.is_zero() {
            self.prefill_rate
                .observe(stats.prompt_tokens as f64 / stats.prefill_time.as_secs_f64());
        }
        if stats.decode_tokens_per_second > 0.0 {
            self.decode_rate.observe(stats.decode_tokens_per_second);
        }
    }

    /// Counts how an "another story" request was answered.
    pub fn another_story(&self, answer: VariantAnswer) {
        self.another
            .get_or_create(&AnswerLabels {
                answer: answer.as_str(),
            })
            .inc();
    }

    /// Counts a generation's end.
    pub fn generation_ended(&self, priority: Priority, outcome: &'static str) {
        let priority = match priority {
            Priority::Interactive => "user",
            Priority::Background => "background",
        };
        self.generations
            .get_or_create(&GenerationLabels { priority, outcome })
            .inc();
    }

    /// Sets the gauges from the owners' current state, then renders every family.
    pub fn render(&self, observed: &Observed, format: Format) -> String {
        let Observed {
            pool,
            trends,
            cache,
            variants_ready,
            ready,
            now,
        } = observed;
        // Ranks beyond today's pools must not keep yesterday's count.
        self.variants_ready.clear();
        for (index, &ready) in variants_ready.iter().enumerate() {
            self.variants_ready
                .get_or_create(&RankLabels { rank: index + 1 })
                .set(ready as i64);
        }
        self.queue_depth.set(pool.queued as i64);
        self.in_flight.set(pool.in_flight as i64);
        self.capacity.set(pool.capacity as i64);
        self.batch_size.set(pool.batch_size as i64);
        self.background_queue_depth
            .set(pool.engine.waiting_background as i64);
        follow(&self.engine_steps, pool.engine.steps);
        follow(&self.engine_passes, pool.engine.passes);
        follow(&self.engine_tokens, pool.engine.tokens);
        follow(&self.engine_step_time, pool.engine.step_time.as_secs_f64());
        self.workers_up.set(pool.workers_up as i64);
        follow(&self.worker_restarts, pool.restarts);
        self.ready.set(i64::from(*ready));
        self.cached_stories.set(cache.entries as i64);
        self.cached_bytes.set(cache.bytes as i64);
        follow(&self.cache_evictions, cache.evictions);
        self.trends.set(trends.trends.len() as i64);
        for state in Freshness::ALL {
            self.freshness
                .get_or_create(&FreshnessLabels {
                    freshness: state.as_str(),
                })
                .set(i64::from(state == trends.freshness));
        }
        for status in trends.sources.iter().filter(|s| s.enabled) {
            let labels = SourceLabels {
                source: status.source.as_str(),
            };
            self.source_up.get_or_create(&labels).set(i64::from(
                status.last_error.is_none() && status.last_success.is_some(),
            ));
            if let Some(at) = status.last_success {
                let age = now.duration_since(at).unwrap_or_default();
                self.source_age
                    .get_or_create(&labels)
                    .set(age.as_secs_f64());
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        match format {
            Format::OpenMetrics => out,
            Format::Text => format::to_text_format(&out),
        }
    }
}

/// Moves a counter up to a total its owner keeps (restarts, evictions, engine steps).
fn follow<N, A>(counter: &Counter<N, A>, total: N)
where
    N: PartialOrd + std::ops::Sub<Output = N> + Copy,
    A: prometheus_client::metrics::counter::Atomic<N>,
{
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_metrics_are_read_from_proc() {
        let text = Metrics::new().render(
            &Observed {
                pool: &PoolStatus::default(),
                trends: &TrendSnapshot {
                    trends: Vec::new(),
                    freshness: Freshness::Fresh,
                    built_at: SystemTime::now(),
                    sources: Vec::new(),
                },
                cache: CacheUsage::default(),
                variants_ready: &[2, 0],
                ready: true,
                now: SystemTime::now(),
            },
            Format::Text,
        );
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_start_time_seconds") > 1.5e9);
        assert_eq!(value("trendstory_ready"), 1.0);
        assert_eq!(
            value("trendstory_trends_freshness{freshness=\"fresh\"}"),
            1.0
        );
        assert_eq!(
            value("trendstory_trends_freshness{freshness=\"expired\"}"),
            0.0
        );
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert_eq!(value("trendstory_story_variants_ready{rank=\"1\"}"), 2.0);
        assert_eq!(value("trendstory_story_variants_ready{rank=\"2\"}"), 0.0);
        assert_eq!(
            value("trendstory_story_another_total{answer=\"ready\"}"),
            0.0
        );
    }
}
