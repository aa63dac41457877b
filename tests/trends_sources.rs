//! Each source fetched over real HTTP from a fake upstream on 127.0.0.1 serving the source's
//! real payload format, and each upstream fault mapped to its error without a panic.

mod fake_upstream;

use std::time::Duration;

use fake_upstream::{fixture, test_day, FakeUpstream, Reply, WIKI_TODAY, WIKI_YESTERDAY};
use trendstory::trends::fetch::Fetcher;
use trendstory::trends::sources::{self, SourceResult};
use trendstory::trends::{SourceKind, TrendsConfig, TrendsError};

async fn fetch(source: SourceKind, config: &TrendsConfig) -> SourceResult {
    let fetcher = Fetcher::new(config);
    sources::fetch(source, &fetcher, config, test_day()).await
}

fn titles(result: &SourceResult) -> Vec<String> {
    match &result.outcome {
        Ok(items) => items.iter().map(|t| t.title.clone()).collect(),
        Err(e) => panic!("{} failed: {e}", result.source),
    }
}

#[actix_web::test]
async fn each_source_reads_its_real_format() {
    let upstream = FakeUpstream::start();
    upstream.serve_all_fixtures();
    let config = upstream.config();

    let hn = fetch(SourceKind::HackerNews, &config).await;
    assert_eq!(
        titles(&hn),
        [
            "Show HN: A tiny &quot;Zoë&quot; engine in Rust – 東京 edition",
            "Ask HN:   How do you stay focused\n while working remotely?",
            "The James Webb telescope finds water vapour around a rocky exoplanet",
        ]
    );
    assert_eq!(
        upstream.hits("/hn/v0/item/41300007.json"),
        0,
        "limit is 6 items"
    );

    let reddit = fetch(SourceKind::Reddit, &config).await;
    assert_eq!(titles(&reddit).len(), 3);
    assert_eq!(
        upstream.query("/reddit/r/popular/hot.json").as_deref(),
        Some("limit=25&raw_json=1")
    );

    let google = fetch(SourceKind::GoogleTrends, &config).await;
    assert_eq!(titles(&google)[1], "Beyoncé & Jay-Z");
    assert_eq!(
        upstream.query("/google/trending/rss").as_deref(),
        Some("geo=US")
    );

    let wiki = fetch(SourceKind::Wikipedia, &config).await;
    assert_eq!(
        titles(&wiki),
        ["Kraków", "Pokémon Legends: Z-A", "Dune: Part Two"]
    );
    assert_eq!(upstream.hits(WIKI_YESTERDAY), 0);

    // Every request carried the configured User-Agent and offered compression.
    let agents = upstream.header_values("user-agent");
    assert!(!agents.is_empty());
    assert!(agents.iter().all(|a| a == &config.user_agent), "{agents:?}");
    assert!(upstream
        .header_values("accept-encoding")
        .iter()
        .all(|v| v.contains("gzip")));
}

#[actix_web::test]
async fn wikipedia_falls_back_to_the_previous_day() {
    let upstream = FakeUpstream::start();
    let config = upstream.config();
    // Today's feed exists but has no most-read list yet.
    upstream.set(
        WIKI_TODAY,
        Reply::json(r#"{"tfa": {"title": "Something"}}"#),
    );
    upstream.set(
        WIKI_YESTERDAY,
        Reply::json(fixture("wikimedia_featured.json")),
    );
    let wiki = fetch(SourceKind::Wikipedia, &config).await;
    assert_eq!(titles(&wiki)[0], "Kraków");
    assert_eq!(upstream.hits(WIKI_YESTERDAY), 1);

    // Today's feed is a 404: same fallback.
    upstream.set(WIKI_TODAY, Reply::status(404));
    let wiki = fetch(SourceKind::Wikipedia, &config).await;
    assert_eq!(titles(&wiki)[0], "Kraków");
    assert_eq!(upstream.hits(WIKI_YESTERDAY), 2);
}

#[actix_web::test]
async fn hacker_news_item_requests_are_bounded() {
    let upstream = FakeUpstream::start();
    let mut config = upstream.config();
    config.sources.hackernews.limit = 12;
    config.fetch.max_concurrent_requests = 2;
    upstream.set(
        "/hn/v0/topstories.json",
        Reply::json(fixture("hn_topstories.json")),
    );
    for id in 41_300_001..=41_300_012u64 {
        upstream.set(
            &format!("/hn/v0/item/{id}.json"),
            Reply::json(format!(
                r#"{{"id":{id},"type":"story","title":"Story {id}","score":{id}}}"#
            )),
        );
    }
    let hn = fetch(SourceKind::HackerNews, &config).await;
    let got = titles(&hn);
    assert_eq!(got.len(), 12);
    assert_eq!(got[0], "Story 41300001", "ranking order is kept");
    assert_eq!(got[11], "Story 41300012");
    assert!(
        upstream.max_in_flight() <= 2,
        "max in flight {}",
        upstream.max_in_flight()
    );
}

#[actix_web::test]
async fn hacker_news_skips_failed_items_but_fails_when_all_do() {
    let upstream = FakeUpstream::start();
    let config = upstream.config();
    upstream.set(
        "/hn/v0/topstories.json",
        Reply::json("[41300001, 41300002]"),
    );
    upstream.set(
        "/hn/v0/item/41300001.json",
        Reply::json(fixture("hn_item_story.json")),
    );
    upstream.set("/hn/v0/item/41300002.json", Reply::status(500));
    assert_eq!(
        titles(&fetch(SourceKind::HackerNews, &config).await).len(),
        1
    );

    upstream.set(
        "/hn/v0/item/41300001.json",
        Reply::json("{\"id\": 41300001, \"ti"),
    );
    let all_failed = fetch(SourceKind::HackerNews, &config).await;
    assert!(
        matches!(all_failed.outcome, Err(TrendsError::Parse { .. })),
        "{:?}",
        all_failed.outcome
    );
}

/// One upstream fault, the source it hits, and the error it must become.
struct Fault {
    name: &'static str,
    source: SourceKind,
    path: &'static str,
    reply: Reply,
    expect: fn(&TrendsError) -> bool,
}

#[actix_web::test]
async fn upstream_faults_become_errors() {
    let upstream = FakeUpstream::start();
    let mut config = upstream.config();
    config.fetch.timeout_ms = 300;
    config.fetch.max_body_bytes = 64 * 1024;
    let reddit = "/reddit/r/popular/hot.json";
    let full_reddit = fixture("reddit_popular_hot.json");
    let faults = [
        Fault {
            name: "slow past the timeout",
            source: SourceKind::Reddit,
            path: reddit,
            reply: Reply::Slow {
                delay: Duration::from_secs(5),
                body: full_reddit.clone(),
            },
            expect: |e| {
                matches!(
                    e,
                    TrendsError::Timeout {
                        timeout_ms: 300,
                        ..
                    }
                )
            },
        },
        Fault {
            name: "500",
            source: SourceKind::Reddit,
            path: reddit,
            reply: Reply::status(500),
            expect: |e| {
                matches!(
                    e,
                    TrendsError::Status {
                        status: 500,
                        retry_after: None,
                        ..
                    }
                )
            },
        },
        Fault {
            name: "429 with Retry-After",
            source: SourceKind::Reddit,
            path: reddit,
            reply: Reply::Status {
                code: 429,
                retry_after: Some("120"),
            },
            expect: |e| e.retry_after() == Some(Duration::from_secs(120)),
        },
        Fault {
            name: "503 with Retry-After",
            source: SourceKind::GoogleTrends,
            path: "/google/trending/rss",
            reply: Reply::Status {
                code: 503,
                retry_after: Some("30"),
            },
            expect: |e| {
                matches!(e, TrendsError::Status { status: 503, .. })
                    && e.retry_after() == Some(Duration::from_secs(30))
            },
        },
        Fault {
            name: "truncated JSON",
            source: SourceKind::Reddit,
            path: reddit,
            reply: Reply::json(full_reddit[..full_reddit.len() / 2].to_vec()),
            expect: |e| {
                matches!(
                    e,
                    TrendsError::Parse {
                        kind: SourceKind::Reddit,
                        ..
                    }
                )
            },
        },
        Fault {
            name: "body far over the cap",
            source: SourceKind::Reddit,
            path: reddit,
            reply: Reply::json(vec![b' '; 8 * 1024 * 1024]),
            expect: |e| {
                matches!(
                    e,
                    TrendsError::TooLarge {
                        limit_bytes: 65_536,
                        ..
                    }
                )
            },
        },
        Fault {
            name: "HTML instead of JSON",
            source: SourceKind::Reddit,
            path: reddit,
            reply: Reply::Body {
                body: b"<!doctype html><html><body><h1>Whoa there, pardner!</h1></body></html>"
                    .to_vec(),
                content_type: "text/html",
            },
            expect: |e| {
                matches!(
                    e,
                    TrendsError::Parse {
                        kind: SourceKind::Reddit,
                        ..
                    }
                )
            },
        },
        Fault {
            name: "invalid XML",
            source: SourceKind::GoogleTrends,
            path: "/google/trending/rss",
            reply: Reply::xml("<rss><channel><item><title>Broken</channel></rss>"),
            expect: |e| {
                matches!(
                    e,
                    TrendsError::Parse {
                        kind: SourceKind::GoogleTrends,
                        ..
                    }
                )
            },
        },
        Fault {
            name: "empty list",
            source: SourceKind::HackerNews,
            path: "/hn/v0/topstories.json",
            reply: Reply::json("[]"),
            expect: |e| {
                matches!(
                    e,
                    TrendsError::Empty {
                        kind: SourceKind::HackerNews
                    }
                )
            },
        },
        Fault {
            name: "connection refused",
            source: SourceKind::Wikipedia,
            path: WIKI_TODAY,
            reply: Reply::status(500),
            expect: |e| matches!(e, TrendsError::Request { .. }),
        },
    ];
    for fault in faults {
        upstream.set(fault.path, fault.reply);
        let mut config = config.clone();
        if fault.name == "connection refused" {
            // A port that was just free: nothing listens there any more.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            config.sources.wikipedia.base_url = format!("http://127.0.0.1:{port}/wiki");
        }
        let result = fetch(fault.source, &config).await;
        match &result.outcome {
            Err(error) => assert!(
                (fault.expect)(error),
                "{}: unexpected error {error:?}",
                fault.name
            ),
            Ok(items) => panic!(
                "{}: expected an error, got {} items",
                fault.name,
                items.len()
            ),
        }
    }
}
