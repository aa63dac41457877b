//! The `[trends]` section through the real loader (TOML file + `TRENDSTORY_` environment), and
//! `trendstory trends` run as the operator would, against a fake upstream on 127.0.0.1.

mod fake_upstream;

use std::process::Command;

use fake_upstream::{fixture, FakeUpstream, Reply};
use trendstory::config::{Config, ConfigError};

/// One test, because environment variables are process-wide and `Config::load` reads them.
#[test]
fn trends_config_loads_from_file_and_environment_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("trendstory.toml");

    std::fs::write(
        &file,
        r#"
[trends]
refresh_interval_secs = 120
ttl_secs = 600

[trends.sources.reddit]
enabled = true
subreddit = "worldnews"
"#,
    )
    .unwrap();
    let config = Config::load(Some(&file)).unwrap();
    assert_eq!(config.trends.refresh_interval_secs, 120);
    assert!(config.trends.sources.reddit.enabled);
    assert_eq!(config.trends.sources.reddit.subreddit, "worldnews");
    assert!(
        config.trends.sources.file.enabled,
        "defaults fill what the file leaves out"
    );

    std::env::set_var("TRENDSTORY_TRENDS__SOURCES__WIKIPEDIA__ENABLED", "true");
    std::env::set_var("TRENDSTORY_TRENDS__FETCH__TIMEOUT_MS", "750");
    let config = Config::load(Some(&file));
    std::env::remove_var("TRENDSTORY_TRENDS__SOURCES__WIKIPEDIA__ENABLED");
    std::env::remove_var("TRENDSTORY_TRENDS__FETCH__TIMEOUT_MS");
    let config = config.unwrap();
    assert!(config.trends.sources.wikipedia.enabled);
    assert_eq!(config.trends.fetch.timeout_ms, 750);

    std::fs::write(&file, "[trends]\nrefresh_interval_secs = 0\n").unwrap();
    match Config::load(Some(&file)) {
        Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "trends.refresh_interval_secs"),
        other => panic!("expected an invalid key, got {other:?}"),
    }

    std::fs::write(
        &file,
        "[trends.sources.hackernews]\nbase_url = \"hn.example\"\n",
    )
    .unwrap();
    match Config::load(Some(&file)) {
        Err(ConfigError::Invalid { key, .. }) => {
            assert_eq!(key, "trends.sources.hackernews.base_url")
        }
        other => panic!("expected an invalid key, got {other:?}"),
    }

    std::fs::write(&file, "[trends.sources.reddit]\nsubreddits = \"x\"\n").unwrap();
    match Config::load(Some(&file)) {
        Err(ConfigError::Load(message)) => assert!(message.contains("subreddits"), "{message}"),
        other => panic!("expected an unknown-key error, got {other:?}"),
    }
}

#[actix_web::test]
async fn cli_prints_ranking_and_source_status() {
    let upstream = FakeUpstream::start();
    upstream.set(
        "/reddit/r/popular/hot.json",
        Reply::json(fixture("reddit_popular_hot.json")),
    );
    upstream.set("/google/trending/rss", Reply::xml("<rss><channel><item>"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("trendstory.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[trends.sources.reddit]
enabled = true
base_url = "{base}/reddit"

[trends.sources.google_trends]
enabled = true
base_url = "{base}/google"
"#,
            base = upstream.base
        ),
    )
    .unwrap();

    let run = |json: bool| {
        let file = file.clone();
        actix_web::rt::task::spawn_blocking(move || {
            let mut command = Command::new(env!("CARGO_BIN_EXE_trendstory"));
            command.arg("trends").arg("--config").arg(&file);
            if json {
                command.arg("--json");
            }
            command.env("RUST_LOG", "warn").output().unwrap()
        })
    };

    let text = run(false).await.unwrap();
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        !text.status.success(),
        "a failed source makes the check fail"
    );
    assert!(
        stdout.contains("reddit         ok         3 items"),
        "{stdout}"
    );
    assert!(stdout.contains("google_trends  FAILED"), "{stdout}");
    assert!(stdout.contains("unreadable payload"), "{stdout}");
    assert!(stdout.contains("Mbappé scores a hat-trick"), "{stdout}");
    assert!(String::from_utf8_lossy(&text.stderr).contains("google_trends"));

    let json = run(true).await.unwrap();
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["freshness"], "fresh");
    let sources = value["sources"].as_array().unwrap();
    let reddit = sources.iter().find(|s| s["source"] == "reddit").unwrap();
    assert_eq!(reddit["items"], 3);
    assert!(reddit["latency_ms"].is_u64());
    let google = sources
        .iter()
        .find(|s| s["source"] == "google_trends")
        .unwrap();
    assert_eq!(google["consecutive_failures"], 1);
    assert!(value["trends"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["sources"] == serde_json::json!(["reddit"])));
}
