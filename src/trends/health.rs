//! Per-source health: exponential backoff with jitter, a circuit breaker, and the status
//! numbers operators read (last success, last error, consecutive failures, items, latency).
//!
//! Pure bookkeeping over [`SystemTime`]s handed in by the caller, so tests drive it with a
//! manual clock. A failure schedules the next attempt `base * 2^(n-1)` later (capped, then
//! scaled by a jitter factor in `0.5..=1.0`), or later still when the upstream sent
//! `Retry-After`. After `breaker_threshold` consecutive failures the breaker opens for
//! `breaker_cooldown_secs`; then one trial request either closes it or re-opens it.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::config::FetchConfig;
use super::{ser_opt_time, SourceKind, TrendsError};

/// Circuit breaker position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Breaker {
    /// Requests flow (possibly after a backoff delay).
    Closed,
    /// Too many failures in a row: no requests until the cooldown ends.
    Open,
    /// Cooldown over: the next attempt is a single trial.
    HalfOpen,
}

/// What `/metrics`, `/readyz` and `trendstory trends` report about one source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceStatus {
    pub source: SourceKind,
    pub enabled: bool,
    #[serde(serialize_with = "ser_opt_time")]
    pub last_success: Option<SystemTime>,
    #[serde(serialize_with = "ser_opt_time")]
    pub last_attempt: Option<SystemTime>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    /// Topics in the last good list.
    pub items: usize,
    /// Duration of the latest attempt, successful or not.
    pub latency_ms: Option<u64>,
    /// Attempts skipped until this time (backoff or open breaker).
    #[serde(serialize_with = "ser_opt_time")]
    pub next_attempt_at: Option<SystemTime>,
    pub breaker: Breaker,
}

/// Mutable health of one source; [`SourceHealth::status`] renders it.
#[derive(Debug, Clone)]
pub struct SourceHealth {
    source: SourceKind,
    enabled: bool,
    last_success: Option<SystemTime>,
    last_attempt: Option<SystemTime>,
    last_error: Option<String>,
    consecutive_failures: u32,
    items: usize,
    latency: Option<Duration>,
    next_attempt_at: Option<SystemTime>,
    breaker_open_until: Option<SystemTime>,
}

impl SourceHealth {
    pub fn new(source: SourceKind, enabled: bool) -> Self {
        Self {
            source,
            enabled,
            last_success: None,
            last_attempt: None,
            last_error: None,
            consecutive_failures: 0,
            items: 0,
            latency: None,
            next_attempt_at: None,
            breaker_open_until: None,
        }
    }

    /// Whether an attempt may start at `now` (enabled, not backing off, breaker not open).
    pub fn is_due(&self, now: SystemTime) -> bool {
        self.enabled && self.next_attempt_at.is_none_or(|at| now >= at)
    }

    /// When the latest attempt ended, successful or not.
    pub fn last_attempt(&self) -> Option<SystemTime> {
        self.last_attempt
    }

    pub fn breaker(&self, now: SystemTime) -> Breaker {
        match self.breaker_open_until {
            Some(until) if now < until => Breaker::Open,
            Some(_) => Breaker::HalfOpen,
            None => Breaker::Closed,
        }
    }

    pub fn record_success(&mut self, now: SystemTime, items: usize, latency: Duration) {
        if self.breaker_open_until.is_some() {
            tracing::info!(source = %self.source, "circuit breaker closed after a successful trial");
        }
        self.last_success = Some(now);
        self.last_attempt = Some(now);
        self.consecutive_failures = 0;
        self.items = items;
        self.latency = Some(latency);
        self.next_attempt_at = None;
        self.breaker_open_until = None;
    }

    /// Records a failure and schedules the next attempt. `jitter` scales the backoff and
    /// must be in `0.5..=1.0` (callers draw it at random; tests pin it).
    pub fn record_failure(
        &mut self,
        now: SystemTime,
        error: &TrendsError,
        latency: Duration,
        policy: &FetchConfig,
        jitter: f64,
    ) {
        self.last_attempt = Some(now);
        self.last_error = Some(error.to_string());
        self.latency = Some(latency);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);

        let max = Duration::from_secs(policy.backoff_max_secs);
        let exponent = self.consecutive_failures.saturating_sub(1).min(30);
        let backoff = Duration::from_secs(policy.backoff_base_secs)
            .saturating_mul(1u32 << exponent)
            .min(max)
            .mul_f64(jitter.clamp(0.5, 1.0));
        let mut wait = backoff.max(error.retry_after().unwrap_or_default().min(max));

        if self.consecutive_failures >= policy.breaker_threshold {
            let cooldown = Duration::from_secs(policy.breaker_cooldown_secs);
            wait = wait.max(cooldown);
            self.breaker_open_until = Some(now + wait);
            tracing::warn!(
                source = %self.source,
                failures = self.consecutive_failures,
                cooldown_secs = wait.as_secs(),
                "circuit breaker open"
            );
        }
        self.next_attempt_at = Some(now + wait);
    }

    pub fn status(&self, now: SystemTime) -> SourceStatus {
        SourceStatus {
            source: self.source,
            enabled: self.enabled,
            last_success: self.last_success,
            last_attempt: self.last_attempt,
            last_error: self.last_error.clone(),
            consecutive_failures: self.consecutive_failures,
            items: self.items,
            latency_ms: self
                .latency
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            next_attempt_at: self.next_attempt_at.filter(|at| *at > now),
            breaker: self.breaker(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn policy() -> FetchConfig {
        FetchConfig {
            backoff_base_secs: 10,
            backoff_max_secs: 100,
            breaker_threshold: 4,
            breaker_cooldown_secs: 600,
            ..FetchConfig::default()
        }
    }

    fn boom() -> TrendsError {
        TrendsError::Status {
            url: "http://x".into(),
            status: 500,
            retry_after: None,
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let mut h = SourceHealth::new(SourceKind::Reddit, true);
        let no_breaker = FetchConfig {
            breaker_threshold: 99,
            ..policy()
        };
        let fail_once = |h: &mut SourceHealth| {
            h.record_failure(t(0), &boom(), Duration::ZERO, &no_breaker, 1.0);
            h.next_attempt_at
        };
        let waits: Vec<u64> = (0..4)
            .map(|_| {
                fail_once(&mut h)
                    .map(|at| at.duration_since(t(0)).map(|d| d.as_secs()).unwrap_or(0))
                    .unwrap_or(0)
            })
            .collect();
        assert_eq!(waits, vec![10, 20, 40, 80]);
        assert_eq!(fail_once(&mut h), Some(t(100)));
    }

    #[test]
    fn jitter_shortens_but_never_below_half() {
        let mut h = SourceHealth::new(SourceKind::Reddit, true);
        h.record_failure(t(0), &boom(), Duration::ZERO, &policy(), 0.1);
        assert_eq!(h.next_attempt_at, Some(t(5)));
        assert!(!h.is_due(t(4)));
        assert!(h.is_due(t(5)));
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let mut h = SourceHealth::new(SourceKind::HackerNews, true);
        let limited = TrendsError::Status {
            url: "http://x".into(),
            status: 429,
            retry_after: Some(Duration::from_secs(60)),
        };
        h.record_failure(t(0), &limited, Duration::ZERO, &policy(), 1.0);
        assert_eq!(h.next_attempt_at, Some(t(60)));
        let greedy = TrendsError::Status {
            url: "http://x".into(),
            status: 503,
            retry_after: Some(Duration::from_secs(86_400)),
        };
        h.record_failure(t(0), &greedy, Duration::ZERO, &policy(), 1.0);
        assert_eq!(h.next_attempt_at, Some(t(100)));
    }

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let mut h = SourceHealth::new(SourceKind::Wikipedia, true);
        for _ in 0..3 {
            h.record_failure(t(0), &boom(), Duration::ZERO, &policy(), 1.0);
        }
        assert_eq!(h.breaker(t(0)), Breaker::Closed);
        h.record_failure(t(0), &boom(), Duration::ZERO, &policy(), 1.0);
        assert_eq!(h.breaker(t(1)), Breaker::Open);
        assert!(!h.is_due(t(599)));
        assert_eq!(h.breaker(t(600)), Breaker::HalfOpen);
        assert!(h.is_due(t(600)));
        // The trial fails: open again for a full cooldown.
        h.record_failure(t(600), &boom(), Duration::ZERO, &policy(), 1.0);
        assert_eq!(h.breaker(t(601)), Breaker::Open);
        assert!(!h.is_due(t(1_199)));
        // The next trial succeeds: closed, counters reset.
        h.record_success(t(1_200), 7, Duration::from_millis(12));
        let status = h.status(t(1_200));
        assert_eq!(status.breaker, Breaker::Closed);
        assert_eq!(status.consecutive_failures, 0);
        assert_eq!(status.items, 7);
        assert_eq!(status.latency_ms, Some(12));
        assert_eq!(status.next_attempt_at, None);
        assert!(h.is_due(t(1_200)));
    }

    #[test]
    fn disabled_sources_are_never_due() {
        let h = SourceHealth::new(SourceKind::File, false);
        assert!(!h.is_due(t(0)));
    }
}
