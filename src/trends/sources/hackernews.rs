//! Hacker News: `topstories.json` (ranked ids), then `item/{id}.json` for the top `limit`,
//! at most `max_concurrent_requests` at a time, keeping the ranking order. Dead, deleted and
//! non-story items (jobs, polls) are skipped; a story without a `url` (Ask/Tell HN) links to
//! its discussion page. The context is the linked site's domain (`github.com`), or for a
//! story without a link its kind (`Ask HN`, `Show HN`...).

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
    let context = match item.url.as_deref().and_then(domain) {
        Some(domain) => domain,
        None => discussion_kind(&title).to_string(),
    };
    Ok(Some(RawTrend {
        score: item.score.unwrap_or(0.0),
        url: Some(
            item.url
                .unwrap_or_else(|| format!("https://news.ycombinator.com/item?id={}", item.id)),
        ),
        context: Some(context),
        title,
    }))
}

/// The host of an absolute URL, lower-case, without `www.`, port or credentials.
fn domain(url: &str) -> Option<String> {
    let (_, rest) = url.trim().split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit('@').next()?;
    let host = match host.strip_prefix('[') {
        Some(ipv6) => ipv6.split(']').next()?,
        None => host.split(':').next()?,
    };
    let host = host.to_ascii_lowercase();
    let host = host.strip_prefix("www.").unwrap_or(&host);
    (!host.is_empty()).then(|| host.to_string())
}

/// `Ask HN`, `Show HN`, `Tell HN` or `Launch HN` from a title's prefix, for stories without
/// a link; any other linkless story is a discussion on the site.
fn discussion_kind(title: &str) -> &'static str {
    const KINDS: [&str; 4] = ["Ask HN", "Show HN", "Tell HN", "Launch HN"];
    let start = title.trim_start();
    KINDS
        .into_iter()
        .find(|kind| {
            start
                .get(..kind.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(kind))
                && {
                    let rest = &start[kind.len()..];
                    rest.is_empty() || rest.starts_with([':', ' ', '\t'])
                }
        })
        .unwrap_or("Hacker News discussion")
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
        assert_eq!(story.context.as_deref(), Some("example.org"));

        let ask = parse_item(&fixture("hn_item_ask.json")).unwrap().unwrap();
        assert_eq!(
            ask.url.as_deref(),
            Some("https://news.ycombinator.com/item?id=41300002")
        );
        assert_eq!(ask.score, 0.0, "score missing");
        assert_eq!(ask.context.as_deref(), Some("Ask HN"), "no url");

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
    fn context_is_the_domain_or_the_kind_of_discussion() {
        assert_eq!(
            domain("https://www.GitHub.com/rust-lang/rust/pull/1").as_deref(),
            Some("github.com")
        );
        assert_eq!(
            domain("http://user:pw@blog.example.co.uk:8080?q=1").as_deref(),
            Some("blog.example.co.uk")
        );
        assert_eq!(domain("https://[::1]:8080/x").as_deref(), Some("::1"));
        assert_eq!(domain("not a url"), None);
        assert_eq!(domain("https:///path"), None);

        assert_eq!(discussion_kind("Show HN: My project"), "Show HN");
        assert_eq!(discussion_kind("  tell hn:  a thing"), "Tell HN");
        assert_eq!(discussion_kind("Launch HN: Acme (YC W25)"), "Launch HN");
        assert_eq!(discussion_kind("Ask HN"), "Ask HN");
        assert_eq!(discussion_kind("Ask HNews"), "Hacker News discussion");
        assert_eq!(discussion_kind("Why Rust?"), "Hacker News discussion");

        let story2 = parse_item(&fixture("hn_item_story2.json"))
            .unwrap()
            .unwrap();
        assert_eq!(story2.context.as_deref(), Some("example.org"));
        let linkless = parse_item(br#"{"id": 7, "type": "story", "title": "Poll results"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(linkless.context.as_deref(), Some("Hacker News discussion"));
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
            assert_eq!(item.context.as_deref(), Some("Tell HN"));
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
