//! Hacker News: `topstories.json` (ranked ids), then `item/{id}.json` for the top `limit`,
//! at most `max_concurrent_requests` at a time, keeping the ranking order. Dead, deleted and
//! non-story items (jobs, polls) are skipped; a story without a `url` (Ask/Tell HN) links to
//! its discussion page.

use futures_util::stream::{self, StreamExt};
use serde::Deserialize;

use super::json;
use crate::trends::config::HackerNewsConfig;
use crate::trends::fetch::Fetcher;
use crate::trends::{RawTrend, SourceKind, TrendsError};

const SOURCE: SourceKind = SourceKind::HackerNews;

#[derive(Deserialize)]
struct Item {
    id: u64,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    dead: bool,
    #[serde(rename = "type")]
    kind: Option<String>,
    title: Option<String>,
    score: Option<f64>,
    url: Option<String>,
}

/// Parses `topstories.json`: a JSON array of item ids, best first.
pub fn parse_top_ids(bytes: &[u8]) -> Result<Vec<u64>, TrendsError> {
    json(SOURCE, bytes)
}

/// Parses `item/{id}.json`; `Ok(None)` for items that are not live stories (HN answers
/// `null` for unknown ids).
pub fn parse_item(bytes: &[u8]) -> Result<Option<RawTrend>, TrendsError> {
    let Some(item) = json::<Option<Item>>(SOURCE, bytes)? else {
        return Ok(None);
    };
    if item.deleted || item.dead || item.kind.as_deref() != Some("story") {
        return Ok(None);
    }
    let Some(title) = item.title else {
        return Ok(None);
    };
    Ok(Some(RawTrend {
        title,
        score: item.score.unwrap_or(0.0),
        url: Some(
            item.url
                .unwrap_or_else(|| format!("https://news.ycombinator.com/item?id={}", item.id)),
        ),
    }))
}

/// Fetches the top stories. Single item failures are skipped; if every item fails, the
/// first item error is returned.
pub async fn fetch(
    fetcher: &Fetcher,
    config: &HackerNewsConfig,
) -> Result<Vec<RawTrend>, TrendsError> {
    let base = config.base_url.trim_end_matches('/');
    let ids = parse_top_ids(&fetcher.get(&format!("{base}/topstories.json")).await?)?;
    let concurrency = fetcher.limits().max_concurrent_requests;
    let results: Vec<Result<Option<RawTrend>, TrendsError>> =
        stream::iter(ids.into_iter().take(config.limit))
            .map(|id| async move {
                let bytes = fetcher.get(&format!("{base}/item/{id}.json")).await?;
                parse_item(&bytes)
            })
            .buffered(concurrency)
            .collect()
            .await;

    let total = results.len();
    let mut items = Vec::new();
    let mut first_error = None;
    let mut failed = 0;
    for result in results {
        match result {
            Ok(Some(item)) => items.push(item),
            Ok(None) => {}
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(error) if failed == total => Err(error),
        Some(error) => {
            tracing::warn!(failed, total, %error, "some Hacker News items could not be fetched");
            Ok(items)
        }
        None => Ok(items),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trends::sources::{fixture, shared_recording};

    #[test]
    fn parses_top_ids() {
        let ids = parse_top_ids(&fixture("hn_topstories.json")).unwrap();
        assert_eq!(ids[..3], [41_300_001, 41_300_002, 41_300_003]);
        assert!(parse_top_ids(b"[1, 2, 3").is_err(), "truncated JSON");
        assert!(parse_top_ids(b"<html><body>Oops</body></html>").is_err());
    }

    #[test]
    fn parses_a_story_and_skips_the_rest() {
        let story = parse_item(&fixture("hn_item_story.json")).unwrap().unwrap();
        assert_eq!(
            story.title,
            "Show HN: A tiny &quot;Zoë&quot; engine in Rust – 東京 edition"
        );
        assert_eq!(story.score, 412.0);
        assert_eq!(story.url.as_deref(), Some("https://example.org/zoe-engine"));

        let ask = parse_item(&fixture("hn_item_ask.json")).unwrap().unwrap();
        assert_eq!(
            ask.url.as_deref(),
            Some("https://news.ycombinator.com/item?id=41300002")
        );
        assert_eq!(ask.score, 0.0, "score missing");

        for skipped in [
            "hn_item_dead.json",
            "hn_item_deleted.json",
            "hn_item_job.json",
        ] {
            assert_eq!(parse_item(&fixture(skipped)).unwrap(), None, "{skipped}");
        }
        assert_eq!(parse_item(b"null").unwrap(), None);
    }

    #[test]
    fn needs_shared_recorded_payloads_are_accepted() {
        if let Some(bytes) = shared_recording("hn__topstories_2023-08.json") {
            let ids = parse_top_ids(&bytes).unwrap();
            assert_eq!(ids.len(), 500);
            assert_eq!(ids[0], 37_047_053);
        }
        if let Some(bytes) = shared_recording("hn__item_41236745_tellhn_text_html.json") {
            let item = parse_item(&bytes).unwrap().unwrap();
            assert!(item.title.starts_with("Tell HN"), "{}", item.title);
            assert_eq!(item.score, 169.0);
            assert_eq!(
                item.url.as_deref(),
                Some("https://news.ycombinator.com/item?id=41236745")
            );
        }
        if let Some(bytes) = shared_recording("hn__item_41245073_job.json") {
            assert_eq!(parse_item(&bytes).unwrap(), None, "jobs are not trends");
        }
    }
}
