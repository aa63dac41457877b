//! Refresh bookkeeping shared by the actor and `trendstory trends`: which sources are due,
//! what each last returned, and how a snapshot is assembled from that (TTL, staleness,
//! the embedded fallback). Plain synchronous code over times handed in by the caller.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::config::TrendsConfig;
use super::health::SourceHealth;
use super::normalize::{self, SourceInput};
use super::sources::{self, SourceResult};
use super::{Freshness, RawTrend, SourceKind, Trend, TrendSnapshot};

/// A source's last successful list.
struct LastGood {
    items: Vec<RawTrend>,
    fetched_at: SystemTime,
}

struct SourceState {
    source: SourceKind,
    weight: f64,
    health: SourceHealth,
    last_good: Option<LastGood>,
}

/// Per-source lists and health, plus the `first_seen` memory of the merged topics.
pub struct TrendsState {
    config: TrendsConfig,
    slots: Vec<SourceState>,
    first_seen: HashMap<String, SystemTime>,
    embedded: Vec<RawTrend>,
}

impl TrendsState {
    pub fn new(config: TrendsConfig) -> Self {
        let s = &config.sources;
        let slots = SourceKind::ALL
            .iter()
            .map(|&source| {
                let (enabled, weight) = match source {
                    SourceKind::HackerNews => (s.hackernews.enabled, s.hackernews.weight),
                    SourceKind::Reddit => (s.reddit.enabled, s.reddit.weight),
                    SourceKind::GoogleTrends => (s.google_trends.enabled, s.google_trends.weight),
                    SourceKind::Wikipedia => (s.wikipedia.enabled, s.wikipedia.weight),
                    SourceKind::File => (s.file.enabled, s.file.weight),
                };
                SourceState {
                    source,
                    weight,
                    health: SourceHealth::new(source, enabled),
                    last_good: None,
                }
            })
            .collect();
        Self {
            config,
            slots,
            first_seen: HashMap::new(),
            embedded: sources::file::embedded(),
        }
    }

    pub fn config(&self) -> &TrendsConfig {
        &self.config
    }

    /// Enabled sources whose backoff and breaker allow an attempt at `now`.
    pub fn due(&self, now: SystemTime) -> Vec<SourceKind> {
        self.slots
            .iter()
            .filter(|slot| slot.health.is_due(now))
            .map(|slot| slot.source)
            .collect()
    }

    /// Records one attempt. A failure keeps the last good list and schedules a retry
    /// (`jitter` in `0.5..=1.0` scales the backoff).
    pub fn apply(&mut self, result: SourceResult, now: SystemTime, jitter: f64) {
        let Some(slot) = self.slots.iter_mut().find(|s| s.source == result.source) else {
            return;
        };
        match result.outcome {
            Ok(items) => {
                slot.health.record_success(now, items.len(), result.latency);
                slot.last_good = Some(LastGood {
                    items,
                    fetched_at: now,
                });
            }
            Err(error) => {
                slot.health
                    .record_failure(now, &error, result.latency, &self.config.fetch, jitter);
            }
        }
    }

    /// Builds the ranking as of `now` (see the `trends` module doc for the TTL rules).
    pub fn snapshot(&mut self, now: SystemTime) -> TrendSnapshot {
        let ttl = Duration::from_secs(self.config.ttl_secs);
        let age = |t: SystemTime| now.duration_since(t).unwrap_or_default();
        let with_data: Vec<&SourceState> = self
            .slots
            .iter()
            .filter(|s| s.last_good.is_some())
            .collect();
        let live: Vec<&SourceState> = with_data
            .iter()
            .copied()
            .filter(|s| {
                s.last_good
                    .as_ref()
                    .is_some_and(|g| age(g.fetched_at) <= ttl)
            })
            .collect();

        let (freshness, merged) = if with_data.is_empty() {
            let input = SourceInput {
                source: SourceKind::File,
                items: &self.embedded,
                weight: 1.0,
                fetched_at: now,
                attempted_at: now,
                stale: false,
            };
            (
                Freshness::Default,
                normalize::merge(&[input], self.config.max_title_chars),
            )
        } else {
            let expired = live.is_empty();
            let chosen = if expired { &with_data } else { &live };
            let inputs: Vec<SourceInput<'_>> = chosen
                .iter()
                .filter_map(|slot| {
                    let good = slot.last_good.as_ref()?;
                    let attempted_at = slot.health.last_attempt().unwrap_or(good.fetched_at);
                    Some(SourceInput {
                        source: slot.source,
                        items: &good.items,
                        weight: slot.weight,
                        fetched_at: good.fetched_at,
                        attempted_at,
                        stale: attempted_at > good.fetched_at,
                    })
                })
                .collect();
            let merged = normalize::merge(&inputs, self.config.max_title_chars);
            let freshness = if expired {
                tracing::warn!(
                    ttl_secs = ttl.as_secs(),
                    "every trend is past its TTL; serving the last good list"
                );
                Freshness::Expired
            } else if merged.iter().take(self.config.max_trends).any(|m| m.stale) {
                Freshness::Stale
            } else {
                Freshness::Fresh
            };
            (freshness, merged)
        };

        self.first_seen
            .retain(|key, _| merged.iter().any(|m| &m.key == key));
        let trends = merged
            .into_iter()
            .take(self.config.max_trends)
            .enumerate()
            .map(|(i, m)| {
                let first_seen = *self.first_seen.entry(m.key).or_insert(m.last_seen);
                Trend {
                    topic: m.topic,
                    sources: m.sources,
                    rank: i + 1,
                    score: m.score,
                    url: m.url,
                    context: m.context,
                    first_seen,
                    last_seen: m.last_seen,
                    fetched_at: m.fetched_at,
                    stale: m.stale,
                }
            })
            .collect();
        TrendSnapshot {
            trends,
            freshness,
            built_at: now,
            sources: self.slots.iter().map(|s| s.health.status(now)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trends::TrendsError;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn config() -> TrendsConfig {
        let mut config = TrendsConfig::default();
        config.sources.file.enabled = false;
        config.sources.reddit.enabled = true;
        config.sources.wikipedia.enabled = true;
        config.refresh_interval_secs = 60;
        config.ttl_secs = 300;
        config.fetch.backoff_base_secs = 10;
        config
    }

    fn ok(source: SourceKind, titles: &[&str]) -> SourceResult {
        SourceResult {
            source,
            outcome: Ok(titles
                .iter()
                .enumerate()
                .map(|(i, title)| RawTrend {
                    title: (*title).into(),
                    score: 100.0 - i as f64,
                    url: None,
                    context: None,
                })
                .collect()),
            latency: Duration::from_millis(5),
        }
    }

    fn failed(source: SourceKind) -> SourceResult {
        SourceResult {
            source,
            outcome: Err(TrendsError::Empty { kind: source }),
            latency: Duration::from_millis(5),
        }
    }

    fn topics(snapshot: &TrendSnapshot) -> Vec<&str> {
        snapshot.trends.iter().map(|t| t.topic.as_str()).collect()
    }

    #[test]
    fn nothing_fetched_serves_the_embedded_list() {
        let mut state = TrendsState::new(config());
        let snapshot = state.snapshot(t(0));
        assert_eq!(snapshot.freshness, Freshness::Default);
        assert!(snapshot.trends.len() >= 10);
        assert_eq!(snapshot.age(t(50)), None);
        assert_eq!(
            state.due(t(0)),
            vec![SourceKind::Reddit, SourceKind::Wikipedia]
        );
    }

    #[test]
    fn failed_source_is_served_stale_then_dropped_after_ttl() {
        let mut state = TrendsState::new(config());
        state.apply(ok(SourceKind::Reddit, &["Alpha", "Beta"]), t(0), 1.0);
        state.apply(ok(SourceKind::Wikipedia, &["Gamma"]), t(0), 1.0);
        let fresh = state.snapshot(t(0));
        assert_eq!(fresh.freshness, Freshness::Fresh);
        assert_eq!(fresh.trends.len(), 3);

        // Reddit fails at t=60: its trends stay, marked stale.
        state.apply(failed(SourceKind::Reddit), t(60), 1.0);
        state.apply(ok(SourceKind::Wikipedia, &["Gamma"]), t(60), 1.0);
        let stale = state.snapshot(t(60));
        assert_eq!(stale.freshness, Freshness::Stale);
        let alpha = stale.find("alpha").unwrap();
        assert!(alpha.stale);
        assert_eq!(alpha.last_seen, t(0));
        assert_eq!(alpha.fetched_at, t(60));
        assert_eq!(alpha.age(t(60)), Duration::from_secs(60));
        assert!(!stale.find("gamma").unwrap().stale);
        assert_eq!(stale.age(t(60)), Some(Duration::from_secs(60)));

        // Past the TTL, Reddit's list is dropped because Wikipedia has fresh data.
        state.apply(ok(SourceKind::Wikipedia, &["Gamma"]), t(301), 1.0);
        let later = state.snapshot(t(301));
        assert_eq!(topics(&later), ["Gamma"]);
        assert_eq!(later.freshness, Freshness::Fresh);
        // first_seen survives refreshes.
        assert_eq!(later.trends[0].first_seen, t(0));
        assert_eq!(later.trends[0].last_seen, t(301));
    }

    #[test]
    fn when_everything_expired_the_last_good_list_is_kept() {
        let mut state = TrendsState::new(config());
        state.apply(ok(SourceKind::Reddit, &["Alpha"]), t(0), 1.0);
        state.apply(failed(SourceKind::Reddit), t(100), 1.0);
        assert_eq!(state.snapshot(t(299)).freshness, Freshness::Stale);
        let expired = state.snapshot(t(301));
        assert_eq!(expired.freshness, Freshness::Expired);
        assert_eq!(topics(&expired), ["Alpha"]);
        assert_eq!(expired.age(t(301)), Some(Duration::from_secs(301)));
    }

    #[test]
    fn failures_back_off_and_report_status() {
        let mut state = TrendsState::new(config());
        state.apply(failed(SourceKind::Reddit), t(0), 1.0);
        assert_eq!(state.due(t(5)), vec![SourceKind::Wikipedia]);
        assert_eq!(
            state.due(t(10)),
            vec![SourceKind::Reddit, SourceKind::Wikipedia]
        );
        let status = &state.snapshot(t(5)).sources[1];
        assert_eq!(status.source, SourceKind::Reddit);
        assert_eq!(status.consecutive_failures, 1);
        assert_eq!(
            status.last_error.as_deref(),
            Some("reddit: no usable topics in the response")
        );
        assert_eq!(status.next_attempt_at, Some(t(10)));
        assert_eq!(
            state.snapshot(t(5)).freshness,
            Freshness::Default,
            "nothing good yet"
        );
    }

    #[test]
    fn ranking_is_capped_and_numbered() {
        let mut config = config();
        config.max_trends = 2;
        let mut state = TrendsState::new(config);
        state.apply(ok(SourceKind::Reddit, &["One", "Two", "Three"]), t(0), 1.0);
        let snapshot = state.snapshot(t(0));
        assert_eq!(topics(&snapshot), ["One", "Two"]);
        assert_eq!(
            snapshot.trends.iter().map(|t| t.rank).collect::<Vec<_>>(),
            [1, 2]
        );
    }
}
