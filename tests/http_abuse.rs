//! Abusive clients over real sockets against the real binary (`trendstory serve` on the
//! tiny model, a child process so its memory can be read from /proc): slow request heads,
//! streams whose client stops reading, more connections than `server.max_connections`,
//! and a flood of unique topics at ten times the admission capacity.
//!
//! Each test asserts the bound (a connection cut, a byte or memory ceiling, an answer
//! refused or served) and prints what it measured (`cargo test --test http_abuse --
//! --nocapture`), for the README's reliability section. No test asserts a duration except
//! as a generous ceiling that only a hang would reach.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;
use socket2::{Domain, Socket, Type};

use common::process::{self, ServerProcess};

/// Long enough that only a hang reaches it.
const HANG: Duration = Duration::from_secs(60);

/// The real binary on 127.0.0.1 with the tiny model, killed on drop.
struct Server {
    process: ServerProcess,
    address: SocketAddr,
}

impl Server {
    /// Starts it with `TRENDSTORY_*` overrides on top of the tests' settings; waits until ready.
    fn start(overrides: &[(&str, &str)]) -> Self {
        let port = process::free_port();
        let mut command = process::serve_tiny_command(
            port,
            &[
                ("TRENDSTORY_SERVER__HTTP_WORKERS", "2"),
                ("TRENDSTORY_SERVER__SHUTDOWN_DRAIN_SECS", "0"),
                ("RUST_LOG", "warn"),
            ],
        );
        for (key, value) in overrides {
            command.env(format!("TRENDSTORY_{key}"), value);
        }
        let mut process = ServerProcess::start(command, port);
        actix_web::rt::System::new().block_on(process.wait_ready());
        Self {
            process,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// Resident memory of the server process, in KiB.
    fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.process.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// One sample of `/metrics`.
    fn metric(&self, sample: &str) -> f64 {
        let (_, body) = get(self.address, "/metrics").expect("metrics");
        common::metric(&body, sample)
    }

    /// Waits until the server counts at most one open connection (the one that asks);
    /// returns how long that took.
    fn wait_connections_at_most_one(&self) -> Duration {
        let waiting = Instant::now();
        loop {
            let open = self.metric("trendstory_http_connections");
            if open <= 1.0 {
                return waiting.elapsed();
            }
            assert!(
                waiting.elapsed() < HANG,
                "{open} connections still open after {HANG:?}"
            );
            sleep(Duration::from_millis(50));
        }
    }
}

/// `GET path` on a new connection: status and body, `None` if the server does not answer.
fn get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    parse_answer(&exchange(address, path).ok()?)
}

/// `GET path` on a new connection (`Connection: close`): the whole answer, head and body.
fn exchange(address: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(HANG))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

fn parse_answer(answer: &str) -> Option<(u16, String)> {
    let status = answer.get(9..12)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// The value of header `name` (any case) in an answer's head (or a whole answer: the
/// lines after the head's blank line are not read).
fn header(head: &str, name: &str) -> Option<String> {
    let prefix = format!("{}:", name.to_lowercase());
    head.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        l.to_lowercase()
            .strip_prefix(&prefix)
            .map(|v| v.trim().to_string())
    })
}

/// Reads one whole answer with `Content-Length` from a kept-alive connection.
fn read_answer(stream: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = header(head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= length {
                let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                return Ok((status, body[..length].to_string()));
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&chunk[..n]);
    }
}

/// True once the server has closed (or reset) the connection.
fn closed(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue, // a 408 answer before the close
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Slowloris: heads sent a byte every 100 ms. A first request's head is cut by actix at
/// `client_request_timeout_secs` (408); a kept-alive connection's next head, which actix
/// does not time, by the connection watchdog at `keep_alive_secs + client_request_timeout_secs`.
/// Meanwhile the one HTTP worker still serves everyone else.
#[test]
fn slow_request_heads_are_cut_off_and_cost_no_worker() {
    let server = Server::start(&[
        ("SERVER__HTTP_WORKERS", "1"),
        ("SERVER__CLIENT_REQUEST_TIMEOUT_SECS", "1"),
        ("SERVER__KEEP_ALIVE_SECS", "1"),
    ]);
    let head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: one byte at a time, never ending...";
    // (kept alive, connection, when the timer of its head starts)
    let mut clients: Vec<(bool, TcpStream, Instant)> = Vec::new();
    for kept_alive in [false, true] {
        for _ in 0..10 {
            let mut stream = TcpStream::connect(server.address).unwrap();
            let mut since = Instant::now();
            if kept_alive {
                stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                    .unwrap();
                assert_eq!(read_answer(&mut stream).unwrap().0, 200);
                since = Instant::now();
            }
            stream.set_nonblocking(true).unwrap();
            clients.push((kept_alive, stream, since));
        }
    }
    let started = Instant::now();
    let mut cut_after: Vec<Option<(bool, Duration)>> = vec![None; clients.len()];
    let mut served_meanwhile = 0;
    for byte in head.iter().cycle() {
        for (i, (kept_alive, stream, since)) in clients.iter_mut().enumerate() {
            if cut_after[i].is_none() && (stream.write(&[*byte]).is_err() || closed(stream)) {
                cut_after[i] = Some((*kept_alive, since.elapsed()));
            }
        }
        if cut_after.iter().all(Option::is_some) || started.elapsed() > HANG {
            break;
        }
        // Another client is served while the slow ones trickle.
        if get(server.address, "/healthz").map(|(status, _)| status) == Some(200) {
            served_meanwhile += 1;
        }
        sleep(Duration::from_millis(100));
    }
    let longest = |kind: bool| {
        cut_after
            .iter()
            .flatten()
            .filter(|(k, _)| *k == kind)
            .map(|(_, d)| *d)
            .max()
    };
    assert!(
        cut_after.iter().all(Option::is_some),
        "slow heads still open after {HANG:?}: {cut_after:?}"
    );
    let (first, kept) = (longest(false).unwrap(), longest(true).unwrap());
    // actix dates the deadline with its clock cached for 500 ms: up to that much early.
    assert!(
        first >= Duration::from_millis(400),
        "cut before the timeout: {first:?}"
    );
    assert!(served_meanwhile > 0, "nobody else was served meanwhile");
    eprintln!(
        "slowloris: 10 first-request heads cut after at most {first:?} (timeout 1 s), 10 kept-alive heads after at most {kept:?} (keep-alive 1 s + timeout 1 s); {served_meanwhile} other requests served meanwhile by the one HTTP worker"
    );
}

/// Server-side socket queues of a port from /proc/net/tcp: (bytes unsent or unacknowledged
/// by the server, bytes received but unread by the clients), per connection.
fn socket_queues(port: u16) -> (Vec<u64>, Vec<u64>) {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = format!(":{port:04X}");
    let (mut server, mut client) = (Vec::new(), Vec::new());
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, queues) = (fields[1], fields[2], fields[4]);
        let (tx, rx) = queues.split_once(':').unwrap();
        let (tx, rx) = (
            u64::from_str_radix(tx, 16).unwrap(),
            u64::from_str_radix(rx, 16).unwrap(),
        );
        if local.ends_with(&port) && fields[3] == "01" {
            server.push(tx);
        } else if remote.ends_with(&port) && fields[3] == "01" {
            client.push(rx);
        }
    }
    (server, client)
}

/// A story stream, one SSE body, read to its end by a client that keeps reading.
fn read_stream(address: SocketAddr, path: &str) -> (String, Duration) {
    let started = Instant::now();
    let (status, body) = get(address, path).expect("stream answered");
    assert_eq!(status, 200, "{body}");
    (body, started.elapsed())
}

fn done_event(body: &str) -> Value {
    let events = common::parse_sse(&dechunk(body));
    let last = events.last().expect("events");
    assert_eq!(last.event, "done", "the stream ended with {last:?}");
    last.data.clone()
}

/// The payload of a chunked HTTP/1.1 body.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    out
}

/// Fifty clients open the same story stream and never read a byte; one more reads it.
/// The generation they share is not held back by them (the reader gets the whole story while
/// they stall), what the server buffers for each stays bounded (kernel send buffer of
/// `server.send_buffer_bytes`, actix's write buffer), and each is dropped after
/// `server.send_timeout_secs` without progress. Memory is read while all fifty hang.
#[test]
fn stalled_stream_readers_are_bounded_and_dropped() {
    let server = Server::start(&[
        ("SERVER__SEND_TIMEOUT_SECS", "2"),
        ("SERVER__SEND_BUFFER_BYTES", "4096"),
        // Long enough that only the send timeout can be what drops them.
        ("SERVER__KEEP_ALIVE_SECS", "60"),
        ("INFERENCE__MAX_NEW_TOKENS", "320"),
    ]);
    let query = "topic=Slow%20readers&seed=11&temperature=0&max_tokens=320&stream=true";
    // The same story alone first (another seed): what an unshared generation takes.
    let (alone, _) = read_stream(
        server.address,
        &format!("/v1/stories?{}", query.replace("seed=11", "seed=12")),
    );
    let alone = done_event(&alone);
    // And shared by 51 clients that all read (another seed): the cost of serving the readers
    // themselves, to compare with 50 stalled ones below.
    let readers_path = format!("/v1/stories?{}", query.replace("seed=11", "seed=13"));
    let with_readers = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..51)
            .map(|_| scope.spawn(|| done_event(&read_stream(server.address, &readers_path).0)))
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().unwrap())
            .filter(|done| done["cached"] == false)
            .map(|done| done["timings"]["generation_ms"].as_f64().unwrap())
            .fold(0.0, f64::max)
    });
    let rss_before = server.rss_kib();

    let mut stalled = Vec::new();
    for _ in 0..50 {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(1).unwrap(); // the kernel's minimum: stalls early
        socket.connect(&server.address.into()).unwrap();
        let mut stream: TcpStream = socket.into();
        write!(
            stream,
            "GET /v1/stories?{query} HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        .unwrap();
        stalled.push(stream);
    }
    let (body, shared_took) = read_stream(server.address, &format!("/v1/stories?{query}"));
    let story = done_event(&body);
    assert_eq!(
        story["cached"], false,
        "the reader joined the generation in flight"
    );
    let coalesced = server.metric("trendstory_story_cache_lookups_total{result=\"coalesced\"}");
    assert!(
        coalesced >= 50.0,
        "the fifty and the reader shared one generation: {coalesced}"
    );
    let stream_bytes = body.len();

    // All fifty hang now: what the server holds for them.
    let rss_hanging = server.rss_kib();
    let (unsent, unread) = socket_queues(server.address.port());
    let most_unsent = unsent.iter().copied().max().unwrap_or(0);
    let most_unread = unread.iter().copied().max().unwrap_or(0);
    assert!(
        most_unsent + most_unread < stream_bytes as u64,
        "the story ({stream_bytes} bytes) must not fit the stalled path, or nothing stalls"
    );
    assert!(
        most_unsent <= 64 * 1024,
        "kernel bytes held for one client: {most_unsent}"
    );
    let growth_mib = rss_hanging.saturating_sub(rss_before) as f64 / 1024.0;
    assert!(
        growth_mib < 64.0,
        "RSS grew by {growth_mib:.1} MiB for 50 stalled streams"
    );

    // Dropped after the send timeout: the connections close, each cut short.
    let dropped_after = server.wait_connections_at_most_one();
    for stream in &mut stalled {
        stream.set_read_timeout(Some(HANG)).unwrap();
        let mut received = Vec::new();
        let ended = stream.read_to_end(&mut received);
        assert!(
            received.len() < stream_bytes,
            "a stalled client got the whole stream ({} bytes): it was not dropped ({ended:?})",
            received.len()
        );
    }
    let rss_after = server.rss_kib();
    eprintln!(
        "stalled readers: 50 clients (receive buffer at the kernel's minimum) on one {stream_bytes}-byte story stream; the reader sharing it got {} tokens in {shared_took:?} (generation {} ms; the same story alone: {} ms, shared by 51 reading clients: {with_readers} ms); per stalled client at most {most_unsent} bytes unsent in the server's kernel buffer and {most_unread} unread in the client's; server RSS {rss_before} KiB before, {rss_hanging} KiB with all 50 hanging (+{growth_mib:.1} MiB), {rss_after} KiB after they were dropped ({:.1} s after the reader finished, send timeout 2 s)",
        story["tokens"],
        story["timings"]["generation_ms"],
        alone["timings"]["generation_ms"],
        dropped_after.as_secs_f64(),
    );
}

/// More connections than `server.max_connections`: the excess waits in the listen backlog
/// (not accepted, so it costs the server nothing) while the admitted ones are served; once
/// one closes, a waiting one is served.
#[test]
fn connections_over_the_limit_wait_while_the_others_are_served() {
    let backlog = 16;
    let attempts = backlog + 8;
    let server = Server::start(&[
        ("SERVER__HTTP_WORKERS", "1"),
        ("SERVER__MAX_CONNECTIONS", "8"),
        ("SERVER__BACKLOG", &backlog.to_string()),
        ("SERVER__KEEP_ALIVE_SECS", "60"),
        ("SERVER__CLIENT_REQUEST_TIMEOUT_SECS", "60"),
    ]);
    // Let the readiness probe's connection close, so eight are free.
    server.wait_connections_at_most_one();
    sleep(Duration::from_millis(200));
    let rss_before = server.rss_kib();
    let mut admitted: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut stream = TcpStream::connect(server.address).unwrap();
            stream.set_read_timeout(Some(HANG)).unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            assert_eq!(read_answer(&mut stream).unwrap().0, 200);
            stream
        })
        .collect();
    // Up to the backlog they wait; beyond it the kernel drops their connection attempts.
    let mut excess: Vec<TcpStream> = (0..attempts)
        .filter_map(|_| {
            TcpStream::connect_timeout(&server.address, Duration::from_millis(300)).ok()
        })
        .collect();
    let not_accepted = attempts - excess.len();
    assert!(
        !excess.is_empty() && excess.len() <= backlog + 2,
        "{} waiting",
        excess.len()
    );
    let waiting = &mut excess[0];
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = waiting.read(&mut byte);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "a connection over the limit was served: {early:?}"
    );
    // The admitted ones are served meanwhile, and the server counts eight open.
    let first = &mut admitted[0];
    first
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (status, metrics) = read_answer(first).unwrap();
    assert_eq!(status, 200);
    let open = common::metric(&metrics, "trendstory_http_connections");
    assert_eq!(open, 8.0, "open connections with more waiting");
    let rss_waiting = server.rss_kib();
    let growth_kib = rss_waiting.saturating_sub(rss_before);
    assert!(growth_kib < 16 * 1024, "RSS grew by {growth_kib} KiB");
    // One admitted connection leaves: the waiting one gets in and is answered.
    drop(admitted.remove(1));
    let waiting = &mut excess[0];
    waiting.set_read_timeout(Some(HANG)).unwrap();
    assert_eq!(read_answer(waiting).unwrap().0, 200);
    eprintln!(
        "max connections: 8 served (1 HTTP worker); of {} more, {} waited in the backlog ({backlog}) unanswered and {not_accepted} were not accepted by the kernel; server RSS {rss_before} KiB before, {rss_waiting} KiB with them all (+{growth_kib} KiB); a waiting one was served once an admitted one closed",
        attempts,
        excess.len(),
    );
}

/// A flood of unique topics at ten times the admission capacity (`workers x max_batch_size
/// + max_queue`, read from /readyz): the excess gets 429 with Retry-After at once, every
/// admitted request (JSON or stream) gets its whole story, the story cache stays within
/// `stories.cache.max_bytes`, and the first request after the flood is served.
#[test]
fn a_flood_of_unique_topics_is_refused_beyond_capacity_and_hurts_no_one_admitted() {
    let cache_bytes = 1500;
    let server = Server::start(&[
        ("INFERENCE__MAX_BATCH_SIZE", "2"),
        ("INFERENCE__MAX_QUEUE", "2"),
        ("STORIES__CACHE__MAX_BYTES", &cache_bytes.to_string()),
    ]);
    let (_, ready) = get(server.address, "/readyz").unwrap();
    let ready: Value = serde_json::from_str(&ready).unwrap();
    let capacity = ready["inference"]["capacity"].as_u64().unwrap() as usize;
    let max_tokens = 48;
    let story = |i: usize, stream: bool| {
        format!("/v1/stories?topic=Flood%20topic%20{i}&seed={i}&max_tokens={max_tokens}&stream={stream}")
    };
    let timed = |path: String| {
        let started = Instant::now();
        let answer = get(server.address, &path).expect("answered");
        (answer, started.elapsed())
    };
    let ((status, _), unloaded) = timed(story(100_000, false));
    assert_eq!(status, 200);

    let flood = 10 * capacity;
    let address = server.address;
    let answers: Vec<(bool, u16, String, Option<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..flood)
            .map(|i| {
                let path = story(i, i % 2 == 1);
                scope.spawn(move || {
                    let answer = exchange(address, &path).unwrap();
                    let retry_after = header(&answer, "retry-after");
                    let (status, body) = parse_answer(&answer).expect("an HTTP answer");
                    (i % 2 == 1, status, body, retry_after)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut served = 0;
    let mut refused = 0;
    for (stream, status, body, retry_after) in &answers {
        match status {
            200 if *stream => {
                let done = done_event(body);
                assert_eq!(done["tokens"], max_tokens, "{done}");
                served += 1;
            }
            200 => {
                let story: Value = serde_json::from_str(body).unwrap();
                assert_eq!(story["tokens"], max_tokens, "{story}");
                served += 1;
            }
            429 => {
                let error: Value = serde_json::from_str(body).unwrap();
                assert_eq!(error["error"]["code"], "overloaded", "{error}");
                let after: u64 = retry_after
                    .as_deref()
                    .expect("Retry-After")
                    .parse()
                    .unwrap();
                assert!(after >= 1);
                refused += 1;
            }
            other => panic!("an answer of the flood was {other}: {body}"),
        }
    }
    assert!(
        served >= capacity,
        "{served} served of {flood}, capacity {capacity}"
    );
    assert!(refused > 0, "a flood at 10x capacity was never refused");
    // Every generation that started ended well (refusals are counted as `overloaded`).
    let (_, metrics) = get(server.address, "/metrics").unwrap();
    let failed: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("trendstory_generations_total{"))
        .filter(|l| !l.contains("outcome=\"ok\"") && !l.contains("outcome=\"overloaded\""))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(
        failed.is_empty(),
        "generations failed during the flood: {failed:?}"
    );
    let cached = server.metric("trendstory_story_cache_size_bytes");
    let entries = server.metric("trendstory_story_cache_entries");
    assert!(
        cached <= f64::from(cache_bytes),
        "cache holds {cached} bytes, bound {cache_bytes}"
    );
    assert!(
        (entries as usize) < served,
        "the cache bound was never reached"
    );

    let ((status, _), after) = timed(story(100_001, false));
    assert_eq!(status, 200, "the first request after the flood");
    eprintln!(
        "flood: {flood} unique topics at once (10x capacity {capacity}): {served} served in full, {refused} refused with 429 + Retry-After, 0 failed; story cache {cached} bytes in {entries} stories (bound {cache_bytes}); a request took {unloaded:?} before the flood and {after:?} right after it"
    );
}
