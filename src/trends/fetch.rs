//! The one way the trends module talks HTTP: an awc client with a whole-request timeout,
//! a cap on the (decompressed) body, a fixed User-Agent, and `Retry-After` captured on
//! 429/503 so the source's backoff can honour it.
//!
//! `https://` upstreams (every real source) go through awc's rustls connector with the
//! Mozilla root certificates (see the `awc` and `rustls` lines in Cargo.toml).
//!
//! awc clients are `!Send`: a [`Fetcher`] is built and used on one actix thread (the actor's,
//! or the CLI's system). Cloning it shares the connection pool.

use std::time::{Duration, SystemTime};

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use awc::error::{PayloadError, SendRequestError};

use super::config::{FetchConfig, TrendsConfig};
use super::TrendsError;

/// Shared HTTP client plus the limits every request obeys.
#[derive(Clone)]
pub struct Fetcher {
    client: awc::Client,
    limits: FetchConfig,
}

impl Fetcher {
    /// Builds the client; call on the thread that will use it.
    pub fn new(config: &TrendsConfig) -> Self {
        let client = awc::Client::builder()
            .timeout(config.fetch.timeout())
            .add_default_header((header::USER_AGENT, config.user_agent.clone()))
            .add_default_header((
                header::ACCEPT,
                "application/json, application/rss+xml, application/xml;q=0.9, */*;q=0.5",
            ))
            .finish();
        Self {
            client,
            limits: config.fetch.clone(),
        }
    }

    /// The limits this fetcher enforces (sources read `max_concurrent_requests`).
    pub fn limits(&self) -> &FetchConfig {
        &self.limits
    }

    /// GETs `url` and returns the body of a 2xx response.
    ///
    /// # Errors
    /// `Timeout` when the whole exchange (body included) exceeds `timeout_ms`; `Status` for
    /// non-2xx (with `Retry-After` on 429/503); `TooLarge` past `max_body_bytes`;
    /// `Request`/`Body` for connection and transfer failures.
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
        let mut response = self.client.get(url).send().await.map_err(|e| match e {
            SendRequestError::Timeout => TrendsError::Timeout {
                url: url.into(),
                timeout_ms: self.limits.timeout_ms,
            },
            other => TrendsError::Request {
                url: url.into(),
                reason: other.to_string(),
            },
        })?;
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
    fn retry_after_garbage_is_ignored() {
        assert_eq!(retry_after(&headers("soon"), SystemTime::now()), None);
        assert_eq!(retry_after(&HeaderMap::new(), SystemTime::now()), None);
    }
}
