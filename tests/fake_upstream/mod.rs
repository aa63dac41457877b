//! A fake upstream for the trends tests: a real actix-web server on 127.0.0.1 whose replies
//! the test sets per path, counting hits so backoff can be observed.

#![allow(dead_code)] // each test binary uses a different part of this helper

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use actix_web::{
    http::StatusCode, middleware::Compress, web, App, HttpRequest, HttpResponse, HttpServer,
};
use trendstory::trends::config::FetchConfig;
use trendstory::trends::TrendsConfig;

/// What the fake upstream answers on one path.
#[derive(Clone)]
pub enum Reply {
    Body {
        body: Vec<u8>,
        content_type: &'static str,
    },
    Status {
        code: u16,
        retry_after: Option<&'static str>,
    },
    /// Answers after `delay` (past the client's timeout in the timeout tests).
    Slow { delay: Duration, body: Vec<u8> },
    /// Holds the request until the test opens the gate.
    Gated {
        open: Arc<AtomicBool>,
        body: Vec<u8>,
    },
}

impl Reply {
    pub fn json(body: impl Into<Vec<u8>>) -> Self {
        Reply::Body {
            body: body.into(),
            content_type: "application/json",
        }
    }

    pub fn xml(body: impl Into<Vec<u8>>) -> Self {
        Reply::Body {
            body: body.into(),
            content_type: "application/rss+xml; charset=utf-8",
        }
    }

    pub fn status(code: u16) -> Self {
        Reply::Status {
            code,
            retry_after: None,
        }
    }
}

#[derive(Default)]
struct Shared {
    replies: Mutex<HashMap<String, Reply>>,
    hits: Mutex<HashMap<String, usize>>,
    queries: Mutex<HashMap<String, String>>,
    headers: Mutex<Vec<(String, String)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

pub struct FakeUpstream {
    pub base: String,
    shared: Arc<Shared>,
}

impl FakeUpstream {
    /// Starts the server on an unused port; call inside an actix system.
    pub fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let data = web::Data::from(Arc::clone(&shared));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .wrap(Compress::default())
                .default_service(web::to(answer))
        })
        .workers(2)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .expect("bind 127.0.0.1:0");
        let addr = server.addrs()[0];
        actix_web::rt::spawn(server.run());
        Self {
            base: format!("http://{addr}"),
            shared,
        }
    }

    pub fn set(&self, path: &str, reply: Reply) {
        self.shared
            .replies
            .lock()
            .unwrap()
            .insert(path.into(), reply);
    }

    pub fn hits(&self, path: &str) -> usize {
        self.shared
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn total_hits(&self) -> usize {
        self.shared.hits.lock().unwrap().values().sum()
    }

    pub fn query(&self, path: &str) -> Option<String> {
        self.shared.queries.lock().unwrap().get(path).cloned()
    }

    /// Values of `name` seen on any request.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.shared
            .headers
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// A config with every network source pointed here and enabled, the file source off,
    /// and timers long enough that only explicit refreshes fetch.
    pub fn config(&self) -> TrendsConfig {
        let mut config = TrendsConfig {
            refresh_interval_secs: 3_600,
            ttl_secs: 7_200,
            fetch: FetchConfig {
                timeout_ms: 2_000,
                backoff_base_secs: 10,
                backoff_max_secs: 300,
                breaker_threshold: 100,
                breaker_cooldown_secs: 600,
                ..FetchConfig::default()
            },
            ..TrendsConfig::default()
        };
        let s = &mut config.sources;
        s.hackernews.enabled = true;
        s.hackernews.base_url = format!("{}/hn/v0", self.base);
        s.hackernews.limit = 6;
        s.reddit.enabled = true;
        s.reddit.base_url = format!("{}/reddit", self.base);
        s.google_trends.enabled = true;
        s.google_trends.base_url = format!("{}/google", self.base);
        s.wikipedia.enabled = true;
        s.wikipedia.base_url = format!("{}/wiki", self.base);
        s.file.enabled = false;
        config
    }

    /// Serves every in-repo fixture at the path its source asks for on [`test_day`].
    pub fn serve_all_fixtures(&self) {
        self.set(
            "/hn/v0/topstories.json",
            Reply::json(fixture("hn_topstories.json")),
        );
        let items = [
            "hn_item_story.json",
            "hn_item_ask.json",
            "hn_item_dead.json",
            "hn_item_deleted.json",
            "hn_item_job.json",
            "hn_item_story2.json",
        ];
        for (i, name) in items.iter().enumerate() {
            self.set(
                &format!("/hn/v0/item/{}.json", 41_300_001 + i),
                Reply::json(fixture(name)),
            );
        }
        self.set(
            "/reddit/r/popular/hot.json",
            Reply::json(fixture("reddit_popular_hot.json")),
        );
        self.set(
            "/google/trending/rss",
            Reply::xml(fixture("google_trends_us.xml")),
        );
        self.set(WIKI_TODAY, Reply::json(fixture("wikimedia_featured.json")));
    }
}

/// The Wikipedia feed path for [`test_day`] and the day before.
pub const WIKI_TODAY: &str = "/wiki/en/featured/2025/03/07";
pub const WIKI_YESTERDAY: &str = "/wiki/en/featured/2025/03/06";

/// 2025-03-07T12:00:00Z, the start of every test clock.
pub fn test_day() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_741_348_800)
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/trends")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

async fn answer(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let path = req.path().to_string();
    *shared.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    shared
        .queries
        .lock()
        .unwrap()
        .insert(path.clone(), req.query_string().to_string());
    for (name, value) in req.headers() {
        let value = value.to_str().unwrap_or_default().to_string();
        shared
            .headers
            .lock()
            .unwrap()
            .push((name.as_str().to_string(), value));
    }
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let reply = shared.replies.lock().unwrap().get(&path).cloned();
    let response = match reply {
        None => HttpResponse::NotFound().finish(),
        Some(Reply::Body { body, content_type }) => {
            // Let parallel requests overlap so the concurrency cap is observable.
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
            HttpResponse::Ok().content_type(content_type).body(body)
        }
        Some(Reply::Status { code, retry_after }) => {
            let mut response = HttpResponse::build(StatusCode::from_u16(code).unwrap());
            if let Some(value) = retry_after {
                response.insert_header(("Retry-After", value));
            }
            response.body("upstream says no")
        }
        Some(Reply::Slow { delay, body }) => {
            actix_web::rt::time::sleep(delay).await;
            HttpResponse::Ok()
                .content_type("application/json")
                .body(body)
        }
        Some(Reply::Gated { open, body }) => {
            while !open.load(Ordering::SeqCst) {
                actix_web::rt::time::sleep(Duration::from_millis(5)).await;
            }
            HttpResponse::Ok()
                .content_type("application/json")
                .body(body)
        }
    };
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}
