//! The one way the trends module talks HTTP: an awc client with a whole-request timeout,
//! a cap on the (decompressed) body, a fixed User-Agent, and `Retry-After` captured on
//! 429/503 so the source's backoff can honour it.
//!
//! `https://` upstreams (every real source) go through awc's rustls connector with the
//! Mozilla root certificates (see the `awc` and `rustls` lines in Cargo.toml).
//!
//! awc clients are `!Send`: a [`Fetcher`] is built and used on one actix thread (the actor's,
//! or the CLI's system). Cloning it shares the connection pool.
//!
//! # Servers that close every connection
//! An HTTP/1.0 server without `Connection: keep-alive` (Python's `http.server`, many small
//! mirrors) closes the connection after each response. awc 3 / actix-http 3 get this wrong
//! when such a response has a `Content-Length`: the client codec only looks at an explicit
//! `Connection` header, so it keeps the keep-alive it asked for, and once the body is read
//! the connection goes back into the pool. The pool's liveness check is a non-blocking read
//! that only sees the server's FIN once the reactor has; the next request to that host
//! (Hacker News fires its item requests right behind each other) is then often written on
//! the closed socket, reads EOF instead of a response head and fails with "connector has been
//! disconnected". So the fetcher remembers hosts that answered that way and sends
//! `Connection: close` to them, which makes awc close the connection instead of pooling it.
//! The connections pooled before the first such answer can still be stale, as can any pooled
//! connection a server closes on its idle timeout: a GET that fails at the connection level
//! (before any response) is retried once, on a new connection.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use actix_web::error::ParseError;
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::{StatusCode, Version};
use actix_web::web::Bytes;
use awc::error::{ConnectError, PayloadError, SendRequestError};

use super::config::{FetchConfig, TrendsConfig};
use super::TrendsError;

/// Shared HTTP client plus the limits every request obeys.
#[derive(Clone)]
pub struct Fetcher {
    client: awc::Client,
    /// For the one retry only: every request says `Connection: close`, so its pool stays
    /// empty and the retry always gets a new connection, never another stale pooled one.
    fresh: awc::Client,
    /// `scheme://authority` of upstreams that close the connection after each response.
    closing_hosts: Rc<RefCell<HashSet<String>>>,
    limits: FetchConfig,
}

impl Fetcher {
    /// Builds the client; call on the thread that will use it.
    pub fn new(config: &TrendsConfig) -> Self {
        let client = || {
            awc::Client::builder()
                .timeout(config.fetch.timeout())
                .add_default_header((header::USER_AGENT, config.user_agent.clone()))
                .add_default_header((
                    header::ACCEPT,
                    "application/json, application/rss+xml, application/xml;q=0.9, */*;q=0.5",
                ))
                .finish()
        };
        Self {
            client: client(),
            fresh: client(),
            closing_hosts: Rc::default(),
            limits: config.fetch.clone(),
        }
    }

    /// The limits this fetcher enforces (sources read `max_concurrent_requests`).
    pub fn limits(&self) -> &FetchConfig {
        &self.limits
    }

    /// GETs `url` and returns the body of a 2xx response.
    ///
    /// A failure to connect, or a connection lost before any response arrived, is retried
    /// once on a new connection (see the module doc); timeouts and HTTP statuses are not.
    ///
    /// # Errors
    /// `Timeout` when the whole exchange (retry and body included) exceeds `timeout_ms`;
    /// `Status` for non-2xx (with `Retry-After` on 429/503); `TooLarge` past
    /// `max_body_bytes`; `Request`/`Body` for connection and transfer failures.
    pub async fn get(&self, url: &str) -> Result<Bytes, TrendsError> {
        let timeout = self.limits.timeout();
        match actix_web::rt::time::timeout(timeout, self.get_inner(url)).await {
            Ok(result) => result,
            Err(_) => Err(TrendsError::Timeout {
                url: url.into(),
                timeout_ms: self.limits.timeout_ms,
            }),
        }
    }

    async fn get_inner(&self, url: &str) -> Result<Bytes, TrendsError> {
        let host = host_key(url);
        let mut request = self.client.get(url);
        if self.closing_hosts.borrow().contains(&host) {
            request = request.force_close();
        }
        let sent = match request.send().await {
            Err(error) if is_connection_failure(&error) => {
                tracing::debug!(url, %error, "no response on this connection; retrying once");
                self.fresh.get(url).force_close().send().await
            }
            other => other,
        };
        let mut response = sent.map_err(|e| match e {
            SendRequestError::Timeout => TrendsError::Timeout {
                url: url.into(),
                timeout_ms: self.limits.timeout_ms,
            },
            other => TrendsError::Request {
                url: url.into(),
                reason: other.to_string(),
            },
        })?;
        if closes_after_response(response.version(), response.headers())
            && self.closing_hosts.borrow_mut().insert(host)
        {
            tracing::debug!(url, "upstream closes every connection; not reusing them");
        }
        let status = response.status();
        if !status.is_success() {
            let retry_after = if status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE
            {
                retry_after(response.headers(), SystemTime::now())
            } else {
                None
            };
            return Err(TrendsError::Status {
                url: url.into(),
                status: status.as_u16(),
                retry_after,
            });
        }
        let limit = self.limits.max_body_bytes;
        response.body().limit(limit).await.map_err(|e| match e {
            PayloadError::Overflow => TrendsError::TooLarge {
                url: url.into(),
                limit_bytes: limit,
            },
            other => TrendsError::Body {
                url: url.into(),
                reason: other.to_string(),
            },
        })
    }
}

/// `scheme://authority` of `url` (the pool's key is the authority), or `url` itself when it
/// does not parse (the request then fails anyway).
fn host_key(url: &str) -> String {
    match url.parse::<awc::http::Uri>() {
        Ok(uri) => format!(
            "{}://{}",
            uri.scheme_str().unwrap_or_default(),
            uri.authority().map(|a| a.as_str()).unwrap_or_default()
        ),
        Err(_) => url.to_string(),
    }
}

/// Whether the server ends the connection after this response: HTTP/1.0 (or older) unless
/// it says `Connection: keep-alive`. (HTTP/1.1 `Connection: close` awc handles itself.)
fn closes_after_response(version: Version, headers: &HeaderMap) -> bool {
    let keep_alive = headers.get_all(header::CONNECTION).any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("keep-alive"))
        })
    });
    version < Version::HTTP_11 && !keep_alive
}

/// Failures where no response was received, so a GET can safely be sent again: the
/// connection could not be opened (refused, reset) or was closed before a response head
/// arrived (a stale pooled connection). Not timeouts (the time is spent), DNS failures, bad
/// URLs or malformed responses, and not HTTP statuses (those are responses).
fn is_connection_failure(error: &SendRequestError) -> bool {
    match error {
        SendRequestError::Connect(ConnectError::Disconnected | ConnectError::Io(_)) => true,
        SendRequestError::Send(_) => true,
        SendRequestError::Response(ParseError::Io(_)) => true,
        SendRequestError::H2(e) => e.is_io() || e.is_go_away(),
        _ => false,
    }
}

/// Reads `Retry-After` as delta-seconds or an HTTP date (relative to `now`).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(header::RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        map
    }

    #[test]
    fn retry_after_seconds() {
        assert_eq!(
            retry_after(&headers(" 120 "), SystemTime::now()),
            Some(Duration::from_secs(120))
        );
    }

    #[test]
    fn retry_after_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        // "Sun, 06 Nov 1994 08:49:37 GMT" is 784111777; 90 s later:
        assert_eq!(
            retry_after(&headers("Sun, 06 Nov 1994 08:51:07 GMT"), now),
            Some(Duration::from_secs(90))
        );
        // A date in the past means "now".
        assert_eq!(
            retry_after(&headers("Sun, 06 Nov 1994 08:00:00 GMT"), now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn http10_without_keep_alive_closes_the_connection() {
        let connection = |value: &str| {
            let mut map = HeaderMap::new();
            map.insert(header::CONNECTION, HeaderValue::from_str(value).unwrap());
            map
        };
        assert!(closes_after_response(Version::HTTP_10, &HeaderMap::new()));
        assert!(closes_after_response(
            Version::HTTP_10,
            &connection("close")
        ));
        assert!(!closes_after_response(
            Version::HTTP_10,
            &connection("Keep-Alive")
        ));
        assert!(!closes_after_response(
            Version::HTTP_10,
            &connection("foo, keep-alive")
        ));
        assert!(!closes_after_response(Version::HTTP_11, &HeaderMap::new()));
        assert!(!closes_after_response(
            Version::HTTP_11,
            &connection("close")
        ));
    }

    #[test]
    fn only_failures_before_a_response_are_retried() {
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        for retried in [
            SendRequestError::Connect(ConnectError::Disconnected),
            SendRequestError::Connect(ConnectError::Io(io())),
            SendRequestError::Send(io()),
            SendRequestError::Response(ParseError::Io(io())),
        ] {
            assert!(is_connection_failure(&retried), "{retried}");
        }
        for final_error in [
            SendRequestError::Timeout,
            SendRequestError::Connect(ConnectError::Timeout),
            SendRequestError::Connect(ConnectError::Unresolved),
            SendRequestError::Connect(ConnectError::NoRecords),
            SendRequestError::Response(ParseError::Header),
            SendRequestError::Response(ParseError::Status),
        ] {
            assert!(!is_connection_failure(&final_error), "{final_error}");
        }
    }

    #[test]
    fn hosts_are_keyed_by_scheme_and_authority() {
        assert_eq!(
            host_key("http://127.0.0.1:8000/v0/item/1.json"),
            "http://127.0.0.1:8000"
        );
        assert_eq!(
            host_key("https://hacker-news.firebaseio.com/v0/topstories.json"),
            "https://hacker-news.firebaseio.com"
        );
        assert_ne!(
            host_key("http://example.org/a"),
            host_key("https://example.org/a")
        );
    }

    #[test]
    fn retry_after_garbage_is_ignored() {
        assert_eq!(retry_after(&headers("soon"), SystemTime::now()), None);
        assert_eq!(retry_after(&HeaderMap::new(), SystemTime::now()), None);
    }
}
