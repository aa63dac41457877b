//! The upstream sources. Each file pairs an async `fetch` (through the shared [`Fetcher`])
//! with pure parsers from bytes to [`RawTrend`]s, so parsers are tested on recorded payloads
//! and fetchers against a local fake upstream.

pub mod file;
pub mod google_rss;
pub mod hackernews;
pub mod reddit;
pub mod wikimedia;

use std::time::{Duration, Instant, SystemTime};

use super::config::TrendsConfig;
use super::fetch::Fetcher;
use super::{RawTrend, SourceKind, TrendsError};

/// The result of one fetch attempt of one source.
#[derive(Debug, Clone)]
pub struct SourceResult {
    pub source: SourceKind,
    pub outcome: Result<Vec<RawTrend>, TrendsError>,
    pub latency: Duration,
}

/// Fetches and parses one source. An empty list is an error (`Empty`), so it never replaces
/// the last good list. `now` picks the Wikipedia feed's date.
pub async fn fetch(
    source: SourceKind,
    fetcher: &Fetcher,
    config: &TrendsConfig,
    now: SystemTime,
) -> SourceResult {
    let started = Instant::now();
    let sources = &config.sources;
    let outcome = match source {
        SourceKind::HackerNews => hackernews::fetch(fetcher, &sources.hackernews).await,
        SourceKind::Reddit => reddit::fetch(fetcher, &sources.reddit).await,
        SourceKind::GoogleTrends => google_rss::fetch(fetcher, &sources.google_trends).await,
        SourceKind::Wikipedia => wikimedia::fetch(fetcher, &sources.wikipedia, now).await,
        SourceKind::File => file::fetch(&sources.file, config.fetch.max_body_bytes).await,
    }
    .and_then(|items| {
        if items.is_empty() {
            Err(TrendsError::Empty { kind: source })
        } else {
            Ok(items)
        }
    });
    let latency = started.elapsed();
    match &outcome {
        Ok(items) => tracing::info!(
            %source,
            items = items.len(),
            latency_ms = latency.as_millis() as u64,
            "trend source fetched"
        ),
        Err(error) => tracing::warn!(
            %source,
            %error,
            latency_ms = latency.as_millis() as u64,
            "trend source failed"
        ),
    }
    SourceResult {
        source,
        outcome,
        latency,
    }
}

/// Parses JSON, naming the source in the error (truncated bodies and HTML land here).
fn json<'a, T: serde::Deserialize<'a>>(
    source: SourceKind,
    bytes: &'a [u8],
) -> Result<T, TrendsError> {
    serde_json::from_slice(bytes).map_err(|e| TrendsError::parse(source, e))
}

/// Reads a fixture recorded from the real API in `../shared/testdata/trends/`, or says
/// loudly that the conformance check is skipped.
#[cfg(test)]
pub(crate) fn shared_recording(name: &str) -> Option<Vec<u8>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/testdata/trends")
        .join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            // Straight to stderr, past the test harness's capture, so CI logs show the skip.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: recorded payload {} not available ({e})",
                path.display()
            );
            None
        }
    }
}

/// Reads an in-repo fixture from `tests/fixtures/trends/`.
#[cfg(test)]
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/trends")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}
