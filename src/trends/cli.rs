//! `trendstory trends [--json]`: one refresh of the configured sources, through the same
//! fetchers and [`TrendsState`] as the actor, printed with each source's status; how an
//! operator checks a source configuration. Exits non-zero when an enabled source failed.

use std::fmt::Write as _;
use std::time::SystemTime;

use futures_util::future::join_all;

use super::config::TrendsConfig;
use super::fetch::Fetcher;
use super::state::TrendsState;
use super::{format_time, sources, TrendSnapshot};

/// Runs one refresh on a fresh actix system and prints the result to stdout.
///
/// # Errors
/// When any enabled source failed (after printing), or stdout cannot be written.
pub fn run(config: &TrendsConfig, json: bool) -> anyhow::Result<()> {
    let snapshot = actix_web::rt::System::new().block_on(refresh_once(config));
    let out = if json {
        serde_json::to_string_pretty(&snapshot)?
    } else {
        render_text(&snapshot)
    };
    println!("{out}");
    let failed = failed_sources(&snapshot);
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("trend sources failed: {}", failed.join(", "))
    }
}

/// The enabled sources this one refresh got no list from.
fn failed_sources(snapshot: &TrendSnapshot) -> Vec<&'static str> {
    snapshot
        .sources
        .iter()
        .filter(|s| s.enabled && s.last_success.is_none())
        .map(|s| s.source.as_str())
        .collect()
}

/// Fetches every enabled source once, concurrently, and builds the snapshot.
pub async fn refresh_once(config: &TrendsConfig) -> TrendSnapshot {
    let mut state = TrendsState::new(config.clone());
    let fetcher = Fetcher::new(state.config());
    let started = SystemTime::now();
    let due = state.due(started);
    let results = join_all(
        due.iter()
            .map(|&source| sources::fetch(source, &fetcher, config, started)),
    )
    .await;
    let now = SystemTime::now();
    for result in results {
        state.apply(result, now, 1.0);
    }
    state.snapshot(now)
}

/// Human-readable report: one line per source, then the ranking.
pub fn render_text(snapshot: &TrendSnapshot) -> String {
    let mut out = String::from("Sources:\n");
    for s in &snapshot.sources {
        let line = if !s.enabled {
            "disabled".to_string()
        } else {
            let latency = s
                .latency_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "-".into());
            match (&s.last_success, &s.last_error) {
                (Some(_), _) => format!("ok      {:>4} items  {latency}", s.items),
                (None, Some(error)) => format!("FAILED  {latency}  {error}"),
                (None, None) => "not attempted".to_string(),
            }
        };
        let _ = writeln!(out, "  {:<14} {line}", s.source.as_str());
    }
    let failed = failed_sources(snapshot);
    let health = if failed.is_empty() {
        snapshot.freshness.as_str().to_string()
    } else {
        let enabled = snapshot.sources.iter().filter(|s| s.enabled).count();
        format!(
            "{} of {enabled} sources FAILED: {}",
            failed.len(),
            failed.join(", ")
        )
    };
    let _ = writeln!(
        out,
        "\nTrends ({health}; {} topics, built {}):",
        snapshot.trends.len(),
        format_time(snapshot.built_at)
    );
    for t in &snapshot.trends {
        let sources: Vec<&str> = t.sources.iter().map(|s| s.as_str()).collect();
        let _ = writeln!(
            out,
            "  {:>3}. {:>6.3}  {}  [{}]{}{}",
            t.rank,
            t.score,
            t.topic,
            sources.join(", "),
            t.url
                .as_deref()
                .map(|u| format!("  {u}"))
                .unwrap_or_default(),
            if t.stale { "  (stale)" } else { "" }
        );
        if let Some(context) = &t.context {
            let _ = writeln!(out, "               {context}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn default_config_runs_offline_and_renders() {
        let snapshot = refresh_once(&TrendsConfig::default()).await;
        assert_eq!(snapshot.freshness, crate::trends::Freshness::Fresh);
        assert!(!snapshot.trends.is_empty());
        let text = render_text(&snapshot);
        assert!(text.contains("hackernews     disabled"), "{text}");
        assert!(text.contains("file           ok"), "{text}");
        assert!(text.contains("  1. "), "{text}");
        assert!(text.contains("\nTrends (fresh; "), "{text}");
        let json: serde_json::Value = serde_json::to_value(&snapshot).unwrap();
        assert_eq!(json["freshness"], "fresh");
        assert_eq!(json["trends"][0]["rank"], 1);
        assert_eq!(json["sources"][4]["source"], "file");
        assert!(json["built_at"].as_str().unwrap().ends_with('Z'));
    }

    #[actix_web::test]
    async fn the_header_says_which_sources_failed() {
        let mut config = TrendsConfig::default();
        config.sources.hackernews.enabled = true;
        // Nothing listens on port 1: the connection is refused at once.
        config.sources.hackernews.base_url = "http://127.0.0.1:1".into();
        let snapshot = refresh_once(&config).await;
        let text = render_text(&snapshot);
        assert!(
            text.contains("\nTrends (1 of 2 sources FAILED: hackernews; "),
            "{text}"
        );
    }
}
