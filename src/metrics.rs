//! Prometheus metrics (`GET /metrics`, OpenMetrics text via `prometheus-client`).
//!
//! Every family is declared once here with its unit and closed label set; names follow
//! `trendstory_<area>_<thing>_<unit>`. Counters and histograms are updated where things
//! happen; gauges that mirror state owned elsewhere (the pool, the trend cache, the story
//! cache) are set from their snapshots when `/metrics` is scraped, so nothing polls.
//! One [`Metrics`] per server (not a process-global registry), so tests can run several.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::engine::{GenerationStats, Priority};
use crate::inference::PoolStatus;
use crate::trends::TrendSnapshot;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route pattern (`/v1/stories`), or `unmatched`: never the raw path.
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `hit`, `miss` or `coalesced`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenerationLabels {
    /// `user` or `background`.
    pub priority: &'static str,
    /// `ok` or the failure's error code.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

type Hist = Family<HttpLabels, Histogram, fn() -> Histogram>;

/// Every metric of one server.
pub struct Metrics {
    registry: Registry,
    pub http_duration: Hist,
    pub story_cache: Family<ResultLabels, Counter>,
    pub generations: Family<GenerationLabels, Counter>,
    pub tokens_generated: Counter,
    pub ttft: Histogram,
    pub prefill_rate: Histogram,
    pub decode_rate: Histogram,
    queue_depth: Gauge,
    in_flight: Gauge,
    batch_size: Gauge,
    workers_up: Gauge,
    worker_restarts: Counter,
    cached_stories: Gauge,
    cached_bytes: Gauge,
    trends: Gauge,
    source_up: Family<SourceLabels, Gauge>,
    source_age: Family<SourceLabels, Gauge<f64, AtomicU64>>,
    /// Set by the connections themselves (`api::connections`), not from a snapshot.
    connections: Gauge,
}

fn http_histogram() -> Histogram {
    // 1 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("trendstory");
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
        let generations = Family::<GenerationLabels, Counter>::default();
        registry.register(
            "story_generations",
            "Generations that ended, by priority and outcome",
            generations.clone(),
        );
        let tokens_generated = Counter::default();
        registry.register(
            "inference_generated_tokens",
            "Tokens generated",
            tokens_generated.clone(),
        );
        let ttft = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register_with_unit(
            "inference_time_to_first_token",
            "From submission to the first token",
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
            &mut registry,
            "inference_queue_depth",
            "User requests waiting for a batch slot",
        );
        let in_flight = gauge(
            &mut registry,
            "inference_in_flight",
            "User requests admitted and not finished",
        );
        let batch_size = gauge(
            &mut registry,
            "inference_batch_size",
            "Sequences in the engines' batches after their last step",
        );
        let workers_up = gauge(
            &mut registry,
            "inference_workers_up",
            "Workers with a loaded model",
        );
        let worker_restarts = Counter::default();
        registry.register(
            "inference_worker_restarts",
            "Worker restarts since start",
            worker_restarts.clone(),
        );
        let cached_stories = gauge(&mut registry, "story_cache_entries", "Stories in the cache");
        let cached_bytes = Gauge::default();
        registry.register_with_unit(
            "story_cache_size",
            "Bytes of stories in the cache",
            Unit::Bytes,
            cached_bytes.clone(),
        );
        let trends = gauge(&mut registry, "trends", "Trends in the merged ranking");
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
            &mut registry,
            "http_connections",
            "Open client connections (at most server.max_connections)",
        );
        Self {
            registry,
            http_duration,
            story_cache,
            generations,
            tokens_generated,
            ttft,
            prefill_rate,
            decode_rate,
            queue_depth,
            in_flight,
            batch_size,
            workers_up,
            worker_restarts,
            cached_stories,
            cached_bytes,
            trends,
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

    /// Counts a story request's cache result.
    pub fn cache_result(&self, result: &'static str) {
        self.story_cache
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Records a finished generation's engine figures.
    pub fn observe_generation(&self, stats: &GenerationStats) {
        self.tokens_generated.inc_by(stats.generated_tokens as u64);
        if let Some(ttft) = stats.time_to_first_token {
            self.ttft.observe(ttft.as_secs_f64());
        }
        if !stats.prefill_time.is_zero() {
            self.prefill_rate
                .observe(stats.prompt_tokens as f64 / stats.prefill_time.as_secs_f64());
        }
        if stats.decode_tokens_per_second > 0.0 {
            self.decode_rate.observe(stats.decode_tokens_per_second);
        }
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
    pub fn render(
        &self,
        pool: &PoolStatus,
        trends: &TrendSnapshot,
        cache_usage: (usize, usize),
        now: SystemTime,
    ) -> String {
        self.queue_depth.set(pool.queued as i64);
        self.in_flight.set(pool.in_flight as i64);
        self.batch_size.set(pool.batch_size as i64);
        self.workers_up.set(pool.workers_up as i64);
        // The pool counts restarts itself; the counter follows it.
        let seen = self.worker_restarts.get();
        if pool.restarts > seen {
            self.worker_restarts.inc_by(pool.restarts - seen);
        }
        self.cached_stories.set(cache_usage.0 as i64);
        self.cached_bytes.set(cache_usage.1 as i64);
        self.trends.set(trends.trends.len() as i64);
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
        out
    }
}
