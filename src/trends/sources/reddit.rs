//! Reddit: one listing, `r/{subreddit}/hot.json?limit=N&raw_json=1` (`raw_json` keeps `&`
//! unescaped in titles). Stickied posts (moderator announcements) and `over_18` posts are
//! skipped; engagement is upvotes plus comments.

use serde::Deserialize;

use super::json;
use crate::trends::config::RedditConfig;
use crate::trends::fetch::Fetcher;
use crate::trends::{RawTrend, SourceKind, TrendsError};

const SOURCE: SourceKind = SourceKind::Reddit;

#[derive(Deserialize)]
struct Listing {
    data: ListingData,
}

#[derive(Deserialize)]
struct ListingData {
    children: Vec<Child>,
}

#[derive(Deserialize)]
struct Child {
    data: Post,
}

#[derive(Deserialize)]
struct Post {
    title: Option<String>,
    #[serde(default)]
    score: f64,
    #[serde(default)]
    num_comments: f64,
    permalink: Option<String>,
    #[serde(default)]
    stickied: bool,
    #[serde(default)]
    over_18: bool,
}

/// Parses a listing (`data.children[].data`), in listing order.
pub fn parse(bytes: &[u8]) -> Result<Vec<RawTrend>, TrendsError> {
    let listing: Listing = json(SOURCE, bytes)?;
    Ok(listing
        .data
        .children
        .into_iter()
        .map(|child| child.data)
        .filter(|post| !post.stickied && !post.over_18)
        .filter_map(|post| {
            Some(RawTrend {
                title: post.title?,
                score: post.score.max(0.0) + post.num_comments.max(0.0),
                url: post.permalink.map(|p| format!("https://www.reddit.com{p}")),
            })
        })
        .collect())
}

pub async fn fetch(fetcher: &Fetcher, config: &RedditConfig) -> Result<Vec<RawTrend>, TrendsError> {
    let url = format!(
        "{}/r/{}/hot.json?limit={}&raw_json=1",
        config.base_url.trim_end_matches('/'),
        config.subreddit,
        config.limit
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
    fn parses_listing_and_skips_stickied_and_nsfw() {
        let items = parse(&fixture("reddit_popular_hot.json")).unwrap();
        let titles: Vec<&str> = items.iter().map(|t| t.title.as_str()).collect();
        assert_eq!(
            titles,
            [
                "Scientists teach crows to count out loud — and they’re better at it than toddlers",
                "Mbappé scores a hat-trick as Real Madrid win El Clásico 4–2",
                "TIL the Eiffel Tower grows ~15 cm in summer & shrinks in winter",
            ]
        );
        assert_eq!(items[0].score, 48_211.0 + 3_120.0);
        assert_eq!(
            items[1].url.as_deref(),
            Some("https://www.reddit.com/r/soccer/comments/1abc02/mbappe_hat_trick/")
        );
        assert_eq!(items[2].url, None, "permalink missing");
    }

    #[test]
    fn rejects_non_listings() {
        assert!(parse(b"<!doctype html><html><title>Too Many Requests</title></html>").is_err());
        assert!(parse(
            br#"{"kind": "Listing", "data": {"children": [{"kind": "t3", "data": {"title": "x""#
        )
        .is_err());
        assert_eq!(
            parse(br#"{"kind":"Listing","data":{"children":[]}}"#).unwrap(),
            vec![]
        );
    }

    #[test]
    fn needs_shared_recorded_payload_is_accepted() {
        let Some(bytes) = shared_recording("reddit__r_askreddit_hot_100.json") else {
            return;
        };
        let items = parse(&bytes).unwrap();
        // 102 posts, 2 stickied and 3 over_18 (the recording's counts).
        assert_eq!(items.len(), 97);
        assert_eq!(
            items[0].title,
            "Reddit, what went 0-100 real fucking quick?"
        );
        assert!(items.iter().all(|t| !t.title.contains("EXTRAVAGANZA")));
        assert!(items.iter().all(|t| t
            .url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://www.reddit.com/r/AskReddit/"))));
    }
}
