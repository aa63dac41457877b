//! Wikipedia most-read articles from the Wikimedia featured feed,
//! `{base}/{lang}/featured/{yyyy}/{mm}/{dd}` (`mostread.articles[]`: title, views, rank).
//! Today's feed (UTC) is asked first; when it has no `mostread` yet (or is a 404), the
//! previous day's is used. The main page and non-article pages (namespaces other than 0,
//! such as `Special:`) are skipped. The context is the article's short `description`
//! ("City in Poland"), or when it has none the start of its `extract` (the lead paragraph).

use std::time::SystemTime;

use serde::Deserialize;
use time::{Date, OffsetDateTime};

use super::json;
use crate::trends::config::WikipediaConfig;
use crate::trends::fetch::Fetcher;
use crate::trends::{RawTrend, SourceKind, TrendsError};

const SOURCE: SourceKind = SourceKind::Wikipedia;

/// Prefixes of non-article namespaces, for feeds that do not send `namespace.id`.
const NON_ARTICLE_PREFIXES: [&str; 12] = [
    "Special:",
    "Wikipedia:",
    "File:",
    "Portal:",
    "Talk:",
    "User:",
    "Template:",
    "Category:",
    "Help:",
    "Draft:",
    "Module:",
    "MediaWiki:",
];

#[derive(Deserialize)]
struct Feed {
    mostread: Option<MostRead>,
}

#[derive(Deserialize)]
struct MostRead {
    #[serde(default)]
    articles: Vec<Article>,
}

#[derive(Deserialize)]
struct Article {
    title: String,
    normalizedtitle: Option<String>,
    #[serde(default)]
    views: f64,
    namespace: Option<Namespace>,
    content_urls: Option<ContentUrls>,
    lang: Option<String>,
    description: Option<String>,
    extract: Option<String>,
}

/// Longest part of an extract kept as context (the merge caps it further at a word).
const EXTRACT_CHARS: usize = 600;

#[derive(Deserialize)]
struct Namespace {
    id: i64,
}

#[derive(Deserialize)]
struct ContentUrls {
    desktop: Option<PageUrl>,
}

#[derive(Deserialize)]
struct PageUrl {
    page: String,
}

fn is_article(article: &Article) -> bool {
    if article.namespace.as_ref().is_some_and(|ns| ns.id != 0) {
        return false;
    }
    let title = article.title.as_str();
    title != "Main_Page"
        && title != "Main Page"
        && !NON_ARTICLE_PREFIXES.iter().any(|p| title.starts_with(p))
}

/// Parses a featured feed; an empty list when the feed has no `mostread` section yet.
pub fn parse(bytes: &[u8]) -> Result<Vec<RawTrend>, TrendsError> {
    let feed: Feed = json(SOURCE, bytes)?;
    let Some(mostread) = feed.mostread else {
        return Ok(Vec::new());
    };
    Ok(mostread
        .articles
        .into_iter()
        .filter(is_article)
        .map(|article| {
            let url = article
                .content_urls
                .and_then(|c| c.desktop)
                .map(|d| d.page)
                .or_else(|| {
                    article
                        .lang
                        .as_ref()
                        .map(|lang| format!("https://{lang}.wikipedia.org/wiki/{}", article.title))
                });
            let context = [&article.description, &article.extract]
                .into_iter()
                .flatten()
                .find(|text| !text.trim().is_empty())
                .map(|text| text.chars().take(EXTRACT_CHARS).collect());
            RawTrend {
                title: article
                    .normalizedtitle
                    .unwrap_or_else(|| article.title.replace('_', " ")),
                score: article.views,
                url,
                context,
            }
        })
        .collect())
}

fn feed_url(config: &WikipediaConfig, date: Date) -> String {
    format!(
        "{}/{}/featured/{:04}/{:02}/{:02}",
        config.base_url.trim_end_matches('/'),
        config.lang,
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// Fetches the most-read list for `now`'s UTC date, falling back to the day before.
pub async fn fetch(
    fetcher: &Fetcher,
    config: &WikipediaConfig,
    now: SystemTime,
) -> Result<Vec<RawTrend>, TrendsError> {
    let today = OffsetDateTime::from(now).date();
    let first = match fetcher.get(&feed_url(config, today)).await {
        Ok(bytes) => parse(&bytes)?,
        Err(TrendsError::Status { status: 404, .. }) => Vec::new(),
        Err(other) => return Err(other),
    };
    let mut items = if first.is_empty() {
        let Some(yesterday) = today.previous_day() else {
            return Ok(first);
        };
        tracing::debug!(%today, "no most-read list yet, using the previous day's");
        parse(&fetcher.get(&feed_url(config, yesterday)).await?)?
    } else {
        first
    };
    items.truncate(config.limit);
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trends::sources::{fixture, shared_recording};

    #[test]
    fn parses_mostread_and_skips_non_articles() {
        let items = parse(&fixture("wikimedia_featured.json")).unwrap();
        let titles: Vec<&str> = items.iter().map(|t| t.title.as_str()).collect();
        assert_eq!(titles, ["Kraków", "Pokémon Legends: Z-A", "Dune: Part Two"]);
        assert_eq!(items[0].score, 812_345.0);
        assert_eq!(
            items[0].url.as_deref(),
            Some("https://en.wikipedia.org/wiki/Krak%C3%B3w")
        );
        assert_eq!(
            items[2].url.as_deref(),
            Some("https://en.wikipedia.org/wiki/Dune:_Part_Two")
        );
        let contexts: Vec<Option<&str>> = items.iter().map(|t| t.context.as_deref()).collect();
        assert_eq!(
            contexts,
            [
                Some("City in Poland"),
                Some("2025 video game"),
                Some("Dune: Part Two is a 2024 American epic science fiction film directed by Denis Villeneuve."),
            ],
            "description first, else the extract"
        );
    }

    #[test]
    fn long_extracts_are_shortened() {
        let extract = "Lead paragraph. ".repeat(200);
        let feed = serde_json::json!({"mostread": {"articles": [
            {"title": "Long", "views": 5, "description": " ", "extract": extract},
            {"title": "Bare", "views": 4}
        ]}});
        let items = parse(feed.to_string().as_bytes()).unwrap();
        let context = items[0].context.as_deref().unwrap();
        assert!(context.starts_with("Lead paragraph. Lead"), "{context}");
        assert_eq!(context.chars().count(), EXTRACT_CHARS);
        assert_eq!(items[1].context, None);
    }

    #[test]
    fn missing_mostread_is_an_empty_list() {
        assert_eq!(
            parse(br#"{"tfa": {"title": "Something"}}"#).unwrap(),
            vec![]
        );
        assert!(parse(br#"{"mostread": {"articles": [{"title": "#).is_err());
    }

    #[test]
    fn builds_dated_urls() {
        let config = WikipediaConfig::default();
        let date = Date::from_calendar_date(2024, time::Month::March, 7).unwrap();
        assert_eq!(
            feed_url(&config, date),
            "https://api.wikimedia.org/feed/v1/wikipedia/en/featured/2024/03/07"
        );
    }

    #[test]
    fn needs_shared_recorded_payload_is_accepted() {
        let Some(bytes) = shared_recording("wikimedia__featured_feed_full_2017-02.json") else {
            return;
        };
        let items = parse(&bytes).unwrap();
        assert_eq!(items.len(), 38);
        assert_eq!(items[0].title, "Tom Brady");
        assert_eq!(items[0].score, 397_850.0);
        assert_eq!(
            items[0].url.as_deref(),
            Some("https://en.wikipedia.org/wiki/Tom_Brady")
        );
        assert!(items
            .iter()
            .any(|t| t.title == "UFC Fight Night: Bermudez vs. Korean Zombie"));
        assert_eq!(
            items[0].context.as_deref(),
            Some("American football player, quarterback")
        );
        // Two articles have no description: their extracts stand in.
        let super_bowl = items.iter().find(|t| t.title == "Super Bowl XLIX").unwrap();
        assert!(super_bowl
            .context
            .as_deref()
            .unwrap()
            .starts_with("Super Bowl XLIX was an American football game"));
        assert!(items.iter().all(|t| t.context.is_some()));
    }
}
