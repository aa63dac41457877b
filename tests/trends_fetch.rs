//! The fetcher against servers that close connections: an HTTP/1.0 server that answers one
//! request per connection (as Python's `http.server` does), and connections lost before any
//! response, which are retried once; timeouts and HTTP statuses are not retried.

mod fake_upstream;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fake_upstream::{FakeUpstream, Reply};
use trendstory::trends::fetch::Fetcher;
use trendstory::trends::{
    cli, ManualClock, SourceKind, TrendSnapshot, TrendsActor, TrendsConfig, TrendsError,
};

/// Hacker News ids served by [`hacker_news_server`].
const IDS: std::ops::RangeInclusive<u64> = 41_300_001..=41_300_030;

/// A one-request-per-connection HTTP/1.0 server on 127.0.0.1, one thread per connection.
struct Http10Server {
    base: String,
    /// Requests read, answered or not.
    requests: Arc<AtomicUsize>,
    /// Requests that arrived on a connection that had already been answered.
    reused: Arc<AtomicUsize>,
}

impl Http10Server {
    /// Serves `routes` (path to JSON body; anything else is a 404). `answer(n)` says whether
    /// the n-th connection (from 0) is answered, or closed as soon as its request is read.
    fn start(
        routes: HashMap<String, Vec<u8>>,
        answer: impl Fn(usize) -> bool + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let reused = Arc::new(AtomicUsize::new(0));
        let routes = Arc::new(routes);
        let (counted, reused_count) = (Arc::clone(&requests), Arc::clone(&reused));
        // Runs until the test binary exits; each connection ends within READ_WAIT.
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let answered = answer(n);
                let routes = Arc::clone(&routes);
                let (counted, reused) = (Arc::clone(&counted), Arc::clone(&reused_count));
                std::thread::spawn(move || {
                    serve(stream, answered, &routes, &counted, &reused);
                });
            }
        });
        Self {
            base,
            requests,
            reused,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn reused(&self) -> usize {
        self.reused.load(Ordering::SeqCst)
    }
}

/// How long a connection waits for a request (bounds every server thread).
const READ_WAIT: Duration = Duration::from_secs(2);

fn serve(
    mut stream: TcpStream,
    answered: bool,
    routes: &HashMap<String, Vec<u8>>,
    requests: &AtomicUsize,
    reused: &AtomicUsize,
) {
    let _ = stream.set_read_timeout(Some(READ_WAIT));
    let Some(head) = read_head(&mut stream) else {
        return;
    };
    requests.fetch_add(1, Ordering::SeqCst);
    if !answered {
        return; // dropped: the client reads EOF where the response should be
    }
    let path = head.split_whitespace().nth(1).unwrap_or_default();
    let response = match routes.get(path) {
        Some(body) => {
            let mut response = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            response.extend_from_slice(body);
            response
        }
        None => b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
    };
    if stream.write_all(&response).is_err() {
        return;
    }
    // HTTP/1.0 without keep-alive: this connection is done. The close is held back until the
    // client sends something or goes away, the way a busy server's FIN can arrive after the
    // client already reused the connection; a request sent on it now gets no answer.
    if read_head(&mut stream).is_some() {
        reused.fetch_add(1, Ordering::SeqCst);
    }
}

/// Reads up to the end of a request head; `None` on EOF, error or timeout first.
fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return None;
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// `topstories.json` with [`IDS`] and one story per id, under `/v0`.
fn hacker_news_server() -> Http10Server {
    let mut routes = HashMap::new();
    let ids: Vec<u64> = IDS.collect();
    routes.insert(
        "/v0/topstories.json".to_string(),
        serde_json::to_vec(&ids).unwrap(),
    );
    for id in IDS {
        routes.insert(
            format!("/v0/item/{id}.json"),
            format!(
                r#"{{"id":{id},"type":"story","title":"Story number {id}","score":{},"url":"https://example.org/{id}"}}"#,
                41_300_100 - id
            )
            .into_bytes(),
        );
    }
    Http10Server::start(routes, |_| true)
}

/// Only Hacker News, at `server`, fetching every id with the default concurrency.
fn hacker_news_config(server: &Http10Server) -> TrendsConfig {
    let mut config = TrendsConfig {
        refresh_interval_secs: 3_600,
        ttl_secs: 7_200,
        ..TrendsConfig::default()
    };
    config.fetch.timeout_ms = 10_000;
    config.sources.file.enabled = false;
    config.sources.hackernews.enabled = true;
    config.sources.hackernews.base_url = format!("{}/v0", server.base);
    config.sources.hackernews.limit = IDS.count();
    config
}

/// Panics unless the snapshot holds every story and Hacker News reported all of them.
fn assert_every_item(snapshot: &TrendSnapshot, run: usize) {
    let hn = snapshot
        .sources
        .iter()
        .find(|s| s.source == SourceKind::HackerNews)
        .unwrap();
    assert_eq!(
        hn.items,
        IDS.count(),
        "run {run}: {} items, last error {:?}",
        hn.items,
        hn.last_error
    );
    let mut topics: Vec<&str> = snapshot.trends.iter().map(|t| t.topic.as_str()).collect();
    topics.sort_unstable();
    let mut expected: Vec<String> = IDS.map(|id| format!("Story number {id}")).collect();
    expected.sort_unstable();
    assert_eq!(topics, expected, "run {run}");
}

#[actix_web::test]
async fn cli_refreshes_from_an_http10_server_lose_no_items() {
    let server = hacker_news_server();
    let config = hacker_news_config(&server);
    let runs = 50;
    for run in 0..runs {
        // What `trendstory trends` does: a new fetcher (and connection pool) per run.
        let snapshot = cli::refresh_once(&config).await;
        assert_every_item(&snapshot, run);
    }
    // Only a connection pooled before the first HTTP/1.0 answer of a run can be reused (and
    // is then retried); every later request asks the server to close.
    assert!(
        server.reused() <= runs,
        "{} requests sent on closed connections in {runs} runs",
        server.reused()
    );
}

#[actix_web::test]
async fn actor_refreshes_from_an_http10_server_lose_no_items() {
    let server = hacker_news_server();
    let config = hacker_news_config(&server);
    let clock = Arc::new(ManualClock::new(std::time::SystemTime::UNIX_EPOCH));
    let handle = TrendsActor::start_with_clock(config, clock);
    for run in 0..50 {
        let snapshot = handle.refresh().await.unwrap();
        assert_every_item(&snapshot, run);
    }
    // One fetcher for the actor's life: it learns once that this host closes connections.
    assert!(server.reused() <= 1, "{} reused", server.reused());
}

#[actix_web::test]
async fn a_connection_lost_before_the_response_is_retried_once() {
    let routes = HashMap::from([("/list.json".to_string(), b"[1, 2, 3]".to_vec())]);
    // The first connection is closed without an answer, later ones are answered.
    let server = Http10Server::start(routes, |n| n > 0);
    let fetcher = Fetcher::new(&TrendsConfig::default());
    let body = fetcher
        .get(&format!("{}/list.json", server.base))
        .await
        .unwrap();
    assert_eq!(&body[..], b"[1, 2, 3]");
    assert_eq!(server.requests(), 2);
}

#[actix_web::test]
async fn a_retry_that_fails_too_is_an_error() {
    let routes = HashMap::from([("/list.json".to_string(), b"[]".to_vec())]);
    let server = Http10Server::start(routes, |_| false);
    let fetcher = Fetcher::new(&TrendsConfig::default());
    let result = fetcher.get(&format!("{}/list.json", server.base)).await;
    assert!(
        matches!(result, Err(TrendsError::Request { .. })),
        "{result:?}"
    );
    assert_eq!(server.requests(), 2, "one request and one retry");
}

#[actix_web::test]
async fn timeouts_and_statuses_are_not_retried() {
    let upstream = FakeUpstream::start();
    let mut config = upstream.config();
    config.fetch.timeout_ms = 300;
    let fetcher = Fetcher::new(&config);

    upstream.set("/status", Reply::status(500));
    let result = fetcher.get(&format!("{}/status", upstream.base)).await;
    assert!(
        matches!(result, Err(TrendsError::Status { status: 500, .. })),
        "{result:?}"
    );
    assert_eq!(upstream.hits("/status"), 1);

    upstream.set(
        "/slow",
        Reply::Slow {
            delay: Duration::from_secs(5),
            body: b"[]".to_vec(),
        },
    );
    let result = fetcher.get(&format!("{}/slow", upstream.base)).await;
    assert!(
        matches!(result, Err(TrendsError::Timeout { .. })),
        "{result:?}"
    );
    assert_eq!(upstream.hits("/slow"), 1);
}
