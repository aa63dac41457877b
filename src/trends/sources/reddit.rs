//! Reddit: one listing, `r/{subreddit}/hot.json?limit=N&raw_json=1` (`raw_json` keeps `&`
//! unescaped in titles). Stickied posts (moderator announcements) and `over_18` posts are
//! skipped; engagement is upvotes plus comments. The context is the subreddit, with the
//! post's flair when it has one: `r/science (Animal Science)`.

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
    subreddit: Option<String>,
    subreddit_name_prefixed: Option<String>,
    link_flair_text: Option<String>,
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
                context: context(&post),
                title: post.title?,
                score: post.score.max(0.0) + post.num_comments.max(0.0),
                url: post.permalink.map(|p| format!("https://www.reddit.com{p}")),
            })
        })
        .collect())
}

fn non_empty(text: &Option<String>) -> Option<&str> {
    text.as_deref().map(str::trim).filter(|t| !t.is_empty())
}

/// `r/{subreddit}`, plus ` ({flair})` when the post has a flair text.
fn context(post: &Post) -> Option<String> {
    let subreddit = match non_empty(&post.subreddit_name_prefixed) {
        Some(prefixed) => prefixed.to_string(),
        None => format!("r/{}", non_empty(&post.subreddit)?),
    };
    Some(match non_empty(&post.link_flair_text) {
        Some(flair) => format!("{subreddit} ({flair})"),
        None => subreddit,
    })
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
        let contexts: Vec<Option<&str>> = items.iter().map(|t| t.context.as_deref()).collect();
        assert_eq!(
            contexts,
            [
                Some("r/science (Animal Science)"),
                Some("r/soccer"),
                Some("r/todayilearned"),
            ]
        );
    }

    #[test]
    fn context_prefers_the_prefixed_name_and_needs_a_subreddit() {
        let listing = br#"{"data": {"children": [
            {"data": {"title": "a", "subreddit": "worldnews", "subreddit_name_prefixed": "r/worldnews", "link_flair_text": "  "}},
            {"data": {"title": "b", "subreddit_name_prefixed": "u/someone"}},
            {"data": {"title": "c", "link_flair_text": "Flair without a subreddit"}}
        ]}}"#;
        let items = parse(listing).unwrap();
        assert_eq!(
            items[0].context.as_deref(),
            Some("r/worldnews"),
            "blank flair"
        );
        assert_eq!(items[1].context.as_deref(), Some("u/someone"));
        assert_eq!(items[2].context, None);
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
        // Flairs of the recording, on the 13th and 72nd post kept.
        assert_eq!(
            items[12].context.as_deref(),
            Some("r/AskReddit (serious replies only)")
        );
        assert_eq!(
            items[71].context.as_deref(),
            Some("r/AskReddit (serious replies only)")
        );
        assert_eq!(
            items
                .iter()
                .filter(|t| t.context.as_deref() == Some("r/AskReddit"))
                .count(),
            95
        );
        assert!(items.iter().all(|t| t
            .url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://www.reddit.com/r/AskReddit/"))));
    }
}
