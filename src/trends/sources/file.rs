//! A local JSON list of topics, and the same format compiled in as the default list
//! (`default_trends.json`) so the server has topics with no network at all.
//!
//! Format: a JSON array whose entries are either a topic string or
//! `{"topic": "...", "score": 12.5, "url": "https://...", "context": "why it trends"}`
//! (score, url and context optional). Without scores, order is rank.

use std::path::Path;

use serde::Deserialize;

use super::json;
use crate::trends::config::FileConfig;
use crate::trends::{RawTrend, SourceKind, TrendsError};

const SOURCE: SourceKind = SourceKind::File;

/// The list served until any source succeeds, and by the file source when no path is set.
pub const EMBEDDED: &str = include_str!("../default_trends.json");

#[derive(Deserialize)]
#[serde(untagged)]
enum Entry {
    Topic(String),
    Detailed {
        topic: String,
        score: Option<f64>,
        url: Option<String>,
        context: Option<String>,
    },
}

pub fn parse(bytes: &[u8]) -> Result<Vec<RawTrend>, TrendsError> {
    let entries: Vec<Entry> = json(SOURCE, bytes)?;
    Ok(entries
        .into_iter()
        .map(|entry| match entry {
            Entry::Topic(title) => RawTrend {
                title,
                score: 0.0,
                url: None,
                context: None,
            },
            Entry::Detailed {
                topic,
                score,
                url,
                context,
            } => RawTrend {
                title: topic,
                score: score.unwrap_or(0.0),
                url,
                context,
            },
        })
        .collect())
}

/// The embedded default list. It is checked by a unit test; should it ever fail to parse,
/// the error is logged and the list is empty rather than the process crashing.
pub fn embedded() -> Vec<RawTrend> {
    parse(EMBEDDED.as_bytes()).unwrap_or_else(|error| {
        tracing::error!(%error, "the embedded default trend list does not parse");
        Vec::new()
    })
}

/// Reads `config.path` (off the actor thread), or returns the embedded list.
pub async fn fetch(config: &FileConfig, max_bytes: usize) -> Result<Vec<RawTrend>, TrendsError> {
    let Some(path) = config.path.clone() else {
        return Ok(embedded());
    };
    let shown = path.display().to_string();
    let bytes = actix_web::rt::task::spawn_blocking(move || read_capped(&path, max_bytes))
        .await
        .map_err(|e| TrendsError::File {
            path: shown,
            reason: e.to_string(),
        })??;
    parse(&bytes)
}

fn read_capped(path: &Path, max_bytes: usize) -> Result<Vec<u8>, TrendsError> {
    let error = |reason: String| TrendsError::File {
        path: path.display().to_string(),
        reason,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| error(e.to_string()))?
        .len();
    if len > max_bytes as u64 {
        return Err(error(format!(
            "{len} bytes is over the {max_bytes} byte cap"
        )));
    }
    std::fs::read(path).map_err(|e| error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_list_parses_and_is_not_empty() {
        let items = parse(EMBEDDED.as_bytes()).unwrap();
        assert!(items.len() >= 10, "{}", items.len());
        assert!(items.iter().all(|t| !t.title.trim().is_empty()));
    }

    #[test]
    fn parses_both_entry_forms() {
        let items = parse(br#"["Plain topic", {"topic": "Scored &amp; linked", "score": 3.5, "url": "https://example.org"}, {"topic": "Bare"}]"#).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].title, "Plain topic");
        assert_eq!(items[1].score, 3.5);
        assert_eq!(items[1].url.as_deref(), Some("https://example.org"));
        assert_eq!(items[2].score, 0.0);
        assert!(items.iter().all(|t| t.context.is_none()));
        assert!(parse(br#"{"topics": []}"#).is_err());
    }

    #[test]
    fn reads_an_optional_context() {
        let items = parse(
            br#"["Plain", {"topic": "Eclipse", "context": "Visible across Europe &amp; Africa"}, {"topic": "Null", "context": null}]"#,
        )
        .unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].context, None);
        assert_eq!(
            items[1].context.as_deref(),
            Some("Visible across Europe &amp; Africa"),
            "raw: cleaned in the merge"
        );
        assert_eq!(items[2].context, None);
        assert!(parse(br#"[{"topic": "x", "context": 5}]"#).is_err());
    }

    #[actix_web::test]
    async fn reads_a_file_and_enforces_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topics.json");
        std::fs::write(&path, r#"["Local topic"]"#).unwrap();
        let config = FileConfig {
            enabled: true,
            path: Some(path.clone()),
            weight: 1.0,
        };
        let items = fetch(&config, 1024).await.unwrap();
        assert_eq!(items[0].title, "Local topic");
        assert!(matches!(
            fetch(&config, 4).await,
            Err(TrendsError::File { .. })
        ));
        let missing = FileConfig {
            path: Some(dir.path().join("missing.json")),
            ..config
        };
        assert!(matches!(
            fetch(&missing, 1024).await,
            Err(TrendsError::File { .. })
        ));
    }
}
