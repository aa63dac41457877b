//! The trends actor over real HTTP: background refresh, stale-on-error, backoff and the
//! circuit breaker observed by counting upstream hits, TTL driven by a manual clock.

mod fake_upstream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fake_upstream::{fixture, test_day, FakeUpstream, Reply, WIKI_TODAY};
use trendstory::trends::health::Breaker;
use trendstory::trends::{
    Freshness, ManualClock, SourceKind, SourceStatus, TrendSnapshot, TrendsActor, TrendsConfig,
};

const REDDIT: &str = "/reddit/r/popular/hot.json";
const GOOGLE: &str = "/google/trending/rss";
const HN_TOP: &str = "/hn/v0/topstories.json";

fn status(snapshot: &TrendSnapshot, source: SourceKind) -> &SourceStatus {
    snapshot
        .sources
        .iter()
        .find(|s| s.source == source)
        .unwrap()
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(test_day()))
}

fn only(config: &mut TrendsConfig, keep: &[SourceKind]) {
    let s = &mut config.sources;
    s.hackernews.enabled = keep.contains(&SourceKind::HackerNews);
    s.reddit.enabled = keep.contains(&SourceKind::Reddit);
    s.google_trends.enabled = keep.contains(&SourceKind::GoogleTrends);
    s.wikipedia.enabled = keep.contains(&SourceKind::Wikipedia);
    s.file.enabled = keep.contains(&SourceKind::File);
}

#[actix_web::test]
async fn default_config_serves_the_embedded_list_offline() {
    let handle = TrendsActor::start_with_clock(TrendsConfig::default(), clock());
    let first = handle.snapshot();
    assert!(
        !first.trends.is_empty(),
        "something to serve before any refresh"
    );
    let snapshot = handle.refresh().await.unwrap();
    assert_eq!(snapshot.freshness, Freshness::Fresh);
    assert_eq!(snapshot.trends[0].sources, [SourceKind::File]);
    let file = status(&snapshot, SourceKind::File);
    assert!(file.last_success.is_some());
    assert_eq!(file.items, 20);
    assert!(snapshot
        .sources
        .iter()
        .filter(|s| s.source != SourceKind::File)
        .all(|s| !s.enabled));
}

#[actix_web::test]
async fn merged_trends_say_why_they_trend() {
    let upstream = FakeUpstream::start();
    upstream.serve_all_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topics.json");
    std::fs::write(
        &path,
        r#"[{"topic": "Kraków", "context": "The file's Kraków"},
            {"topic": "Local fair", "context": " Stalls&nbsp;&amp;\n\u0007rides "},
            "No context here"]"#,
    )
    .unwrap();
    let mut config = upstream.config();
    config.sources.file.enabled = true;
    config.sources.file.path = Some(path);
    config.sources.file.weight = 0.5;
    let handle = TrendsActor::start_with_clock(config.clone(), clock());
    let snapshot = handle.refresh().await.unwrap();
    let context = |topic: &str| {
        snapshot
            .find(topic)
            .unwrap_or_else(|| panic!("{topic} missing"))
            .context
            .clone()
    };
    // Wikipedia (weight 1) outranks the file (weight 0.5) for the same topic.
    assert_eq!(context("Kraków").as_deref(), Some("City in Poland"));
    assert_eq!(
        context("Super Bowl halftime show").as_deref(),
        Some("Who's performing at the halftime show & when it starts (ESPN); Halftime show ratings (Variety)")
    );
    assert_eq!(
        context(
            "Scientists teach crows to count out loud — and they’re better at it than toddlers"
        )
        .as_deref(),
        Some("r/science (Animal Science)")
    );
    assert_eq!(
        context("The James Webb telescope finds water vapour around a rocky exoplanet").as_deref(),
        Some("example.org")
    );
    assert_eq!(context("Local fair").as_deref(), Some("Stalls & rides"));
    assert_eq!(context("No context here"), None);

    // `trendstory trends` prints it under the topic.
    let text = trendstory::trends::cli::render_text(&snapshot);
    assert!(text.contains("Kraków  [wikipedia, file]"), "{text}");
    assert!(text.contains("\n               City in Poland\n"), "{text}");

    // In JSON the field is always there, null when no source gave one.
    let json = serde_json::to_value(&*snapshot).unwrap();
    let trends = json["trends"].as_array().unwrap();
    assert!(trends.iter().all(|t| t.get("context").is_some()));
    let otani = trends
        .iter()
        .find(|t| t["topic"] == "Ōtani <3 Dodgers")
        .unwrap();
    assert!(otani["context"].is_null(), "{otani}");

    // With the file weighted above Wikipedia, its context wins.
    config.sources.file.weight = 2.0;
    let handle = TrendsActor::start_with_clock(config, clock());
    let snapshot = handle.refresh().await.unwrap();
    let krakow = snapshot.find("Kraków").unwrap();
    assert_eq!(
        krakow.sources,
        [SourceKind::Wikipedia, SourceKind::File],
        "one topic"
    );
    assert_eq!(krakow.context.as_deref(), Some("The file's Kraków"));
}

#[actix_web::test]
async fn all_sources_merge_into_one_ranking() {
    let upstream = FakeUpstream::start();
    upstream.serve_all_fixtures();
    let mut config = upstream.config();
    config.sources.file.enabled = true;
    let handle = TrendsActor::start_with_clock(config, clock());
    let snapshot = handle.refresh().await.unwrap();
    assert_eq!(snapshot.freshness, Freshness::Fresh);
    for source in SourceKind::ALL {
        let s = status(&snapshot, source);
        assert!(s.last_success.is_some(), "{source}: {:?}", s.last_error);
        assert!(s.items > 0, "{source}");
    }
    let zoe = snapshot
        .find("show hn a tiny zoë engine in rust 東京 edition")
        .expect("HN story, cleaned");
    assert_eq!(
        zoe.topic,
        "Show HN: A tiny \"Zoë\" engine in Rust – 東京 edition"
    );
    let ask = snapshot
        .find("Ask HN: How do you stay focused while working remotely?")
        .unwrap();
    assert_eq!(
        ask.topic,
        "Ask HN: How do you stay focused while working remotely?"
    );
    assert!(snapshot.find("Kraków").is_some());
    assert!(snapshot.find("Not safe for work post").is_none());
    assert!(snapshot.find("Main Page").is_none());
    let ranks: Vec<usize> = snapshot.trends.iter().map(|t| t.rank).collect();
    assert_eq!(ranks, (1..=snapshot.trends.len()).collect::<Vec<_>>());
    assert!(snapshot.trends.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(snapshot
        .trends
        .iter()
        .all(|t| t.fetched_at == test_day() && !t.stale));
}

#[actix_web::test]
async fn faults_keep_last_good_lists_and_back_off() {
    let upstream = FakeUpstream::start();
    upstream.serve_all_fixtures();
    let mut config = upstream.config();
    config.fetch.timeout_ms = 300;
    config.fetch.max_body_bytes = 64 * 1024;
    config.sources.file.enabled = true;
    let clock = clock();
    let handle = TrendsActor::start_with_clock(config, clock.clone());
    let good = handle.refresh().await.unwrap();
    let good_topics = good.trends.len();

    let reddit = fixture("reddit_popular_hot.json");
    let rounds: [[(&str, Reply); 4]; 2] = [
        [
            (
                REDDIT,
                Reply::Slow {
                    delay: Duration::from_secs(5),
                    body: reddit.clone(),
                },
            ),
            (GOOGLE, Reply::status(500)),
            (
                HN_TOP,
                Reply::Status {
                    code: 429,
                    retry_after: Some("60"),
                },
            ),
            (
                WIKI_TODAY,
                Reply::json(fixture("wikimedia_featured.json")[..200].to_vec()),
            ),
        ],
        [
            (REDDIT, Reply::json(vec![b' '; 4 * 1024 * 1024])),
            (
                GOOGLE,
                Reply::xml("<rss><channel><item><title>x</item></channel></rss>"),
            ),
            (HN_TOP, Reply::json("[]")),
            (
                WIKI_TODAY,
                Reply::Body {
                    body: b"<html>maintenance</html>".to_vec(),
                    content_type: "text/html",
                },
            ),
        ],
    ];
    for (round, faults) in rounds.into_iter().enumerate() {
        for (path, reply) in faults {
            upstream.set(path, reply);
        }
        // Past any backoff of the previous round (max 300 s), well within the TTL.
        clock.advance(Duration::from_secs(301));
        let before = upstream.total_hits();
        let snapshot = handle.refresh().await.unwrap();
        assert!(
            upstream.total_hits() > before,
            "round {round}: sources were attempted"
        );
        assert_eq!(snapshot.freshness, Freshness::Stale, "round {round}");
        assert_eq!(
            snapshot.trends.len(),
            good_topics,
            "round {round}: nothing lost"
        );
        for source in [
            SourceKind::HackerNews,
            SourceKind::Reddit,
            SourceKind::GoogleTrends,
            SourceKind::Wikipedia,
        ] {
            let s = status(&snapshot, source);
            assert_eq!(
                s.consecutive_failures,
                round as u32 + 1,
                "round {round} {source}"
            );
            assert!(s.last_error.is_some(), "{source}");
            assert!(s.next_attempt_at.is_some(), "{source} backs off");
        }
        assert_eq!(status(&snapshot, SourceKind::File).consecutive_failures, 0);
        assert!(snapshot.find("Kraków").unwrap().stale);
        assert!(snapshot
            .trends
            .iter()
            .filter(|t| t.sources == [SourceKind::File])
            .all(|t| !t.stale));

        // An immediate second refresh stays off the failing upstreams.
        let before = upstream.total_hits();
        handle.refresh().await.unwrap();
        assert_eq!(
            upstream.total_hits(),
            before,
            "round {round}: backoff respected"
        );
    }
    let hn = status(&handle.snapshot(), SourceKind::HackerNews).clone();
    assert!(
        hn.last_error
            .as_deref()
            .unwrap()
            .contains("no usable topics"),
        "{:?}",
        hn.last_error
    );
}

#[actix_web::test]
async fn retry_after_is_honoured() {
    let upstream = FakeUpstream::start();
    let mut config = upstream.config();
    only(&mut config, &[SourceKind::Reddit]);
    upstream.set(
        REDDIT,
        Reply::Status {
            code: 429,
            retry_after: Some("120"),
        },
    );
    let clock = clock();
    let handle = TrendsActor::start_with_clock(config, clock.clone());
    handle.refresh().await.unwrap();
    assert_eq!(upstream.hits(REDDIT), 1);

    // Past the 10 s backoff but inside Retry-After: no request.
    clock.advance(Duration::from_secs(60));
    handle.refresh().await.unwrap();
    assert_eq!(upstream.hits(REDDIT), 1);

    clock.advance(Duration::from_secs(61));
    upstream.set(REDDIT, Reply::json(fixture("reddit_popular_hot.json")));
    let snapshot = handle.refresh().await.unwrap();
    assert_eq!(upstream.hits(REDDIT), 2);
    assert_eq!(snapshot.freshness, Freshness::Fresh);
    assert_eq!(
        status(&snapshot, SourceKind::Reddit).consecutive_failures,
        0
    );
}

#[actix_web::test]
async fn circuit_breaker_stops_hammering_a_failing_source() {
    let upstream = FakeUpstream::start();
    let mut config = upstream.config();
    only(&mut config, &[SourceKind::GoogleTrends]);
    config.fetch.breaker_threshold = 3;
    config.fetch.breaker_cooldown_secs = 600;
    upstream.set(GOOGLE, Reply::status(503));
    let clock = clock();
    let handle = TrendsActor::start_with_clock(config, clock.clone());
    for attempt in 1..=3 {
        handle.refresh().await.unwrap();
        assert_eq!(upstream.hits(GOOGLE), attempt);
        clock.advance(Duration::from_secs(300)); // the longest backoff
    }
    let snapshot = handle.snapshot();
    assert_eq!(
        status(&snapshot, SourceKind::GoogleTrends).breaker,
        Breaker::Open
    );
    // 300 s after the third failure, still inside the 600 s cooldown: skipped.
    handle.refresh().await.unwrap();
    assert_eq!(upstream.hits(GOOGLE), 3);

    // Cooldown over: exactly one trial, which succeeds and closes the breaker.
    clock.advance(Duration::from_secs(300));
    upstream.set(GOOGLE, Reply::xml(fixture("google_trends_us.xml")));
    let snapshot = handle.refresh().await.unwrap();
    assert_eq!(upstream.hits(GOOGLE), 4);
    assert_eq!(
        status(&snapshot, SourceKind::GoogleTrends).breaker,
        Breaker::Closed
    );
    assert_eq!(snapshot.freshness, Freshness::Fresh);
}

#[actix_web::test]
async fn reads_never_wait_for_a_slow_refresh() {
    let upstream = FakeUpstream::start();
    let mut config = upstream.config();
    only(&mut config, &[SourceKind::Reddit, SourceKind::File]);
    config.fetch.timeout_ms = 60_000;
    let open = Arc::new(AtomicBool::new(false));
    upstream.set(
        REDDIT,
        Reply::Gated {
            open: open.clone(),
            body: fixture("reddit_popular_hot.json"),
        },
    );
    let handle = TrendsActor::start_with_clock(config, clock());
    let refreshing = actix_web::rt::spawn({
        let handle = handle.clone();
        async move { handle.refresh().await }
    });

    // While Reddit hangs, the file source lands and readers see it.
    let mut waited = 0;
    while status(&handle.snapshot(), SourceKind::File)
        .last_success
        .is_none()
        || upstream.hits(REDDIT) == 0
    {
        assert!(waited < 1_000, "the file source never landed");
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    let during = handle.snapshot();
    assert_eq!(upstream.hits(REDDIT), 1, "Reddit request is open");
    assert!(
        !refreshing.is_finished(),
        "the refresh is still waiting on Reddit"
    );
    assert!(status(&during, SourceKind::Reddit).last_attempt.is_none());
    assert!(during
        .trends
        .iter()
        .all(|t| t.sources == [SourceKind::File]));

    open.store(true, Ordering::SeqCst);
    let after = refreshing.await.unwrap().unwrap();
    assert!(status(&after, SourceKind::Reddit).last_success.is_some());
    assert!(after
        .find("Mbappé scores a hat-trick as Real Madrid win El Clásico 4–2")
        .is_some());
}

#[actix_web::test]
async fn staleness_and_ttl_follow_the_clock() {
    let upstream = FakeUpstream::start();
    let mut config = upstream.config();
    only(&mut config, &[SourceKind::Reddit, SourceKind::Wikipedia]);
    config.refresh_interval_secs = 300;
    config.ttl_secs = 900;
    upstream.set(REDDIT, Reply::json(fixture("reddit_popular_hot.json")));
    upstream.set(WIKI_TODAY, Reply::json(fixture("wikimedia_featured.json")));
    let clock = clock();
    let handle = TrendsActor::start_with_clock(config, clock.clone());
    let crows = "Scientists teach crows to count out loud — and they’re better at it than toddlers";

    let fresh = handle.refresh().await.unwrap();
    assert_eq!(fresh.freshness, Freshness::Fresh);
    assert!(!fresh.find(crows).unwrap().stale);

    // Reddit starts failing: its topics stay, stale, with their age.
    upstream.set(REDDIT, Reply::status(500));
    clock.advance(Duration::from_secs(300));
    let stale = handle.refresh().await.unwrap();
    assert_eq!(stale.freshness, Freshness::Stale);
    let trend = stale.find(crows).unwrap();
    assert!(trend.stale);
    assert_eq!(trend.age(clock_now(&clock)), Duration::from_secs(300));
    assert!(!stale.find("Kraków").unwrap().stale);

    // Past the TTL the stale Reddit topics are dropped; Wikipedia's fresh ones remain.
    clock.advance(Duration::from_secs(601));
    let expired = handle.refresh().await.unwrap();
    assert!(expired.find(crows).is_none());
    assert!(expired.find("Kraków").is_some());
    assert_eq!(expired.freshness, Freshness::Fresh);

    // Wikipedia fails too, and time passes beyond its TTL: the last good list is kept.
    upstream.set(WIKI_TODAY, Reply::status(500));
    clock.advance(Duration::from_secs(301));
    assert_eq!(handle.refresh().await.unwrap().freshness, Freshness::Stale);
    clock.advance(Duration::from_secs(1_000));
    let last = handle.refresh().await.unwrap();
    assert_eq!(last.freshness, Freshness::Expired);
    assert!(last.find("Kraków").is_some());
    assert!(last.age(clock_now(&clock)).unwrap() > Duration::from_secs(900));
}

fn clock_now(clock: &ManualClock) -> std::time::SystemTime {
    use trendstory::trends::Clock;
    clock.now()
}
