//! Google Trends daily trending searches: RSS 2.0 with the `ht:` namespace. Each `<item>`
//! gives a `<title>` (the search), `<ht:approx_traffic>` such as `20,000+` (the score) and
//! `<ht:news_item>`s whose first `<ht:news_item_url>` becomes the link, and whose first
//! [`CONTEXT_HEADLINES`] headlines (`<ht:news_item_title>`, with `<ht:news_item_source>`
//! in parentheses) joined by `"; "` become the context. Parsed as a stream of XML events
//! with quick-xml; a document whose root is not `<rss>` is rejected.

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::trends::config::GoogleTrendsConfig;
use crate::trends::fetch::Fetcher;
use crate::trends::{RawTrend, SourceKind, TrendsError};

const SOURCE: SourceKind = SourceKind::GoogleTrends;

/// News headlines of an item that make up its context.
pub const CONTEXT_HEADLINES: usize = 2;

/// Which text field the parser is inside.
#[derive(Clone, Copy, PartialEq)]
enum Field {
    None,
    Title,
    Traffic,
    NewsUrl,
    NewsTitle,
    NewsSource,
}

#[derive(Default)]
struct ItemDraft {
    title: String,
    traffic: String,
    news_url: String,
    /// One per `<ht:news_item>` seen so far.
    news: Vec<NewsDraft>,
}

#[derive(Default)]
struct NewsDraft {
    title: String,
    source: String,
}

impl ItemDraft {
    /// `"headline (source); headline (source)"` from the first news items with a headline.
    fn context(&self) -> Option<String> {
        let headlines: Vec<String> = self
            .news
            .iter()
            .filter(|news| !news.title.trim().is_empty())
            .take(CONTEXT_HEADLINES)
            .map(|news| match news.source.trim() {
                "" => news.title.trim().to_string(),
                source => format!("{} ({source})", news.title.trim()),
            })
            .collect();
        (!headlines.is_empty()).then(|| headlines.join("; "))
    }
}

/// Parses `"20,000+"` into `20000`.
pub fn parse_traffic(text: &str) -> f64 {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(0.0)
}

/// Parses the feed, in feed order.
pub fn parse(bytes: &[u8]) -> Result<Vec<RawTrend>, TrendsError> {
    let mut reader = Reader::from_reader(bytes);
    let mut buf = Vec::new();
    let mut items = Vec::new();
    let mut seen_root = false;
    let mut item: Option<ItemDraft> = None;
    let mut field = Field::None;
    let mut depth = 0usize;
    loop {
        let event = reader.read_event_into(&mut buf).map_err(|e| {
            TrendsError::parse(SOURCE, format!("at byte {}: {e}", reader.error_position()))
        })?;
        match event {
            Event::Start(start) => {
                depth += 1;
                let name = start.local_name();
                if !seen_root {
                    if name.as_ref() != b"rss" {
                        return Err(TrendsError::parse(SOURCE, "root element is not <rss>"));
                    }
                    seen_root = true;
                }
                field = match (name.as_ref(), &mut item) {
                    (b"item", _) => {
                        item = Some(ItemDraft::default());
                        Field::None
                    }
                    (b"title", Some(_)) => Field::Title,
                    (b"approx_traffic", Some(_)) => Field::Traffic,
                    (b"news_item_url", Some(draft)) if draft.news_url.is_empty() => Field::NewsUrl,
                    (b"news_item", Some(draft)) => {
                        draft.news.push(NewsDraft::default());
                        Field::None
                    }
                    (b"news_item_title", Some(_)) => Field::NewsTitle,
                    (b"news_item_source", Some(_)) => Field::NewsSource,
                    _ => Field::None,
                };
            }
            Event::Empty(_) if !seen_root => {
                return Err(TrendsError::parse(SOURCE, "root element is not <rss>"));
            }
            Event::End(end) => {
                depth = depth.saturating_sub(1);
                if end.local_name().as_ref() == b"item" {
                    if let Some(draft) = item.take() {
                        items.push(RawTrend {
                            context: draft.context(),
                            score: parse_traffic(&draft.traffic),
                            url: Some(draft.news_url).filter(|u| !u.trim().is_empty()),
                            title: draft.title,
                        });
                    }
                }
                field = Field::None;
            }
            Event::Text(text) => {
                let text = text.decode().map_err(|e| TrendsError::parse(SOURCE, e))?;
                push_text(&mut item, field, &text);
            }
            Event::CData(data) => {
                let text = data.decode().map_err(|e| TrendsError::parse(SOURCE, e))?;
                push_text(&mut item, field, &text);
            }
            Event::GeneralRef(reference) => {
                let text = match reference
                    .resolve_char_ref()
                    .map_err(|e| TrendsError::parse(SOURCE, e))?
                {
                    Some(c) => c.to_string(),
                    None => {
                        let name = reference
                            .decode()
                            .map_err(|e| TrendsError::parse(SOURCE, e))?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| {
                                TrendsError::parse(SOURCE, format!("unknown entity &{name};"))
                            })?
                            .to_string()
                    }
                };
                push_text(&mut item, field, &text);
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !seen_root {
        return Err(TrendsError::parse(SOURCE, "no <rss> document"));
    }
    if depth > 0 || item.is_some() {
        return Err(TrendsError::parse(
            SOURCE,
            "document is truncated (unclosed elements)",
        ));
    }
    Ok(items)
}

fn push_text(item: &mut Option<ItemDraft>, field: Field, text: &str) {
    let Some(draft) = item else {
        return;
    };
    match field {
        Field::Title => draft.title.push_str(text),
        Field::Traffic => draft.traffic.push_str(text),
        Field::NewsUrl => draft.news_url.push_str(text),
        // A headline outside any <ht:news_item> has no item to belong to.
        Field::NewsTitle => {
            if let Some(news) = draft.news.last_mut() {
                news.title.push_str(text);
            }
        }
        Field::NewsSource => {
            if let Some(news) = draft.news.last_mut() {
                news.source.push_str(text);
            }
        }
        Field::None => {}
    }
}

pub async fn fetch(
    fetcher: &Fetcher,
    config: &GoogleTrendsConfig,
) -> Result<Vec<RawTrend>, TrendsError> {
    let url = format!(
        "{}/trending/rss?geo={}",
        config.base_url.trim_end_matches('/'),
        config.geo
    );
    let mut items = parse(&fetcher.get(&url).await?)?;
    items.truncate(config.limit);
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trends::sources::{fixture, shared_recording};

    #[test]
    fn traffic_strings() {
        assert_eq!(parse_traffic("20,000+"), 20_000.0);
        assert_eq!(parse_traffic("1000+"), 1_000.0);
        assert_eq!(parse_traffic(""), 0.0);
    }

    #[test]
    fn parses_items_with_entities_and_cdata() {
        let items = parse(&fixture("google_trends_us.xml")).unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0].title, "Super Bowl halftime show");
        assert_eq!(items[0].score, 2_000_000.0);
        assert_eq!(
            items[0].url.as_deref(),
            Some("https://example.com/news/halftime?id=1&src=rss")
        );
        assert_eq!(items[1].title, "Beyoncé & Jay-Z");
        assert_eq!(items[2].title, "Ōtani <3 Dodgers");
        assert_eq!(items[2].url, None, "no news items");
        assert_eq!(items[3].score, 0.0, "traffic missing");
    }

    #[test]
    fn context_is_the_first_headlines_with_their_sources() {
        let items = parse(&fixture("google_trends_us.xml")).unwrap();
        let contexts: Vec<Option<&str>> = items.iter().map(|t| t.context.as_deref()).collect();
        assert_eq!(
            contexts,
            [
                Some("Who's performing at the halftime show & when it starts (ESPN); Halftime show ratings (Variety)"),
                Some("Beyoncé & Jay-Z announce a surprise tour (Billboard)"),
                None,
                Some("Winter storm"),
            ]
        );
    }

    #[test]
    fn context_skips_empty_headlines_and_stops_after_two() {
        let feed = br#"<rss xmlns:ht="https://trends.google.com/trending/rss"><channel><item>
            <title>Topic</title>
            <ht:news_item><ht:news_item_title> </ht:news_item_title><ht:news_item_source>Empty</ht:news_item_source></ht:news_item>
            <ht:news_item><ht:news_item_title>First</ht:news_item_title></ht:news_item>
            <ht:news_item><ht:news_item_source>Source</ht:news_item_source><ht:news_item_title>Second</ht:news_item_title></ht:news_item>
            <ht:news_item><ht:news_item_title>Third</ht:news_item_title></ht:news_item>
            </item></channel></rss>"#;
        let items = parse(feed).unwrap();
        assert_eq!(items[0].title, "Topic", "news titles stay out of the title");
        assert_eq!(items[0].context.as_deref(), Some("First; Second (Source)"));
    }

    #[test]
    fn rejects_broken_documents() {
        assert!(
            parse(b"<rss><channel><item><title>x</title></channel></rss>").is_err(),
            "mismatched tags"
        );
        assert!(
            parse(b"<rss><channel><item><title>cut off").is_err(),
            "truncated"
        );
        assert!(parse(b"{\"not\": \"xml\"}").is_err());
        assert!(parse(b"<!DOCTYPE html><html><body>blocked</body></html>").is_err());
        assert_eq!(
            parse(b"<rss version=\"2.0\"><channel></channel></rss>").unwrap(),
            vec![]
        );
    }

    #[test]
    fn needs_shared_recorded_payload_is_accepted() {
        let Some(bytes) = shared_recording("google_trends__rss_geo-GB_2026-02-02.xml") else {
            return;
        };
        let items = parse(&bytes).unwrap();
        assert_eq!(items.len(), 10);
        assert_eq!(items[0].title, "Nvidia");
        assert_eq!(items[0].score, 100.0);
        assert_eq!(
            items[0].url.as_deref(),
            Some("https://www.cnbc.com/2026/02/02/nvidia-stock-price-openai-funding.html")
        );
        assert_eq!(items[2].title, "nipah virus outbreak latest news");
        assert_eq!(items[2].score, 500.0);
        assert_eq!(
            items[0].context.as_deref(),
            Some(
                "Nvidia shares are down after a report that its OpenAI investment stalled. \
                 Here's what's happening (CNBC); \
                 Amazon in talks to invest up to $50bn in OpenAI - report (Sharecast.com)"
            )
        );
        assert!(items.iter().all(|t| t.context.is_some()));
    }
}
