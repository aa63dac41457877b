//! Who may call `/v1/*`, and how often: optional API keys and a per-client rate limit.
//!
//! Keys come from `api.api_keys` and/or `api.api_keys_file` (one per line, for a mounted
//! Kubernetes secret). Only their SHA-256 digests are kept, and a presented bearer token is
//! hashed and compared with each in constant time (`subtle`), so neither the content nor
//! the length of a key leaks through timing. The rate limit (`governor`'s keyed GCRA) is
//! per API key when keys are on, else per client IP (`X-Forwarded-For` only when
//! `api.trust_forwarded_for`, behind a load balancer that sets it). Probes, metrics and the
//! OpenAPI document are outside `/v1` and stay open.

use std::num::NonZeroU32;
use std::time::Duration;

use actix_web::dev::ServiceRequest;
use actix_web::http::header;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::ApiConfig;
use super::errors::ApiError;
use crate::config::error::ConfigError;

/// Keyed limiters keep one cell per client; past this many, idle cells are dropped.
const MAX_TRACKED_CLIENTS: usize = 10_000;

/// The access rules of one server.
pub struct Access {
    /// SHA-256 of each accepted key; empty means no key is required.
    keys: Vec<[u8; 32]>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    trust_forwarded_for: bool,
}

impl Access {
    /// Reads the keys (file included) and builds the limiter.
    ///
    /// # Errors
    /// An unreadable or empty key file, named with its key.
    pub fn from_config(config: &ApiConfig) -> Result<Self, ConfigError> {
        let mut keys: Vec<String> = config.api_keys.clone();
        if let Some(path) = &config.api_keys_file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                key: "api.api_keys_file",
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            let from_file: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect();
            if from_file.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "api.api_keys_file",
                    reason: format!("{} holds no key", path.display()),
                });
            }
            keys.extend(from_file);
        }
        let limiter = NonZeroU32::new(config.rate_limit_per_second).map(|rate| {
            let burst = NonZeroU32::new(config.rate_limit_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Ok(Self {
            keys: keys.iter().map(|k| digest(k)).collect(),
            limiter,
            trust_forwarded_for: config.trust_forwarded_for,
        })
    }

    /// Checks the key, then the rate limit.
    ///
    /// # Errors
    /// `Unauthorized` (401) or `RateLimited` (429 with Retry-After).
    pub fn check(&self, request: &ServiceRequest) -> Result<(), ApiError> {
        let client = if self.keys.is_empty() {
            format!("ip:{}", self.client_ip(request))
        } else {
            let token = bearer(request).ok_or(ApiError::Unauthorized)?;
            let presented = digest(token);
            // Every key is compared, so the time does not tell which one matched.
            let matched = self
                .keys
                .iter()
                .fold(subtle::Choice::from(0), |found, key| {
                    found | key.ct_eq(&presented)
                });
            if !bool::from(matched) {
                return Err(ApiError::Unauthorized);
            }
            format!("key:{}", hex_prefix(&presented))
        };
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() > MAX_TRACKED_CLIENTS {
            limiter.retain_recent();
        }
        limiter.check_key(&client).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited {
                retry_after: Duration::from_secs(wait.as_secs_f64().ceil().max(1.0) as u64),
            }
        })
    }

    /// The client's address: the peer's, or `X-Forwarded-For`'s when trusted.
    pub fn client_ip(&self, request: &ServiceRequest) -> String {
        let info = request.connection_info();
        let ip = if self.trust_forwarded_for {
            info.realip_remote_addr()
        } else {
            info.peer_addr()
        };
        ip.unwrap_or("unknown").to_string()
    }
}

fn bearer(request: &ServiceRequest) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A short, non-reversible label for a key (rate-limit bucket and logs).
fn hex_prefix(digest: &[u8; 32]) -> String {
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn access(keys: &[&str], rate: u32) -> Access {
        Access::from_config(&ApiConfig {
            api_keys: keys.iter().map(|k| k.to_string()).collect(),
            rate_limit_per_second: rate,
            rate_limit_burst: 2,
            ..ApiConfig::default()
        })
        .unwrap()
    }

    fn with_auth(value: &str) -> ServiceRequest {
        TestRequest::default()
            .insert_header((header::AUTHORIZATION, value))
            .to_srv_request()
    }

    #[test]
    fn keys_are_required_when_configured() {
        let a = access(&["s3cret", "other"], 0);
        assert_eq!(
            a.check(&TestRequest::default().to_srv_request()),
            Err(ApiError::Unauthorized)
        );
        assert_eq!(
            a.check(&with_auth("Bearer wrong")),
            Err(ApiError::Unauthorized)
        );
        assert_eq!(
            a.check(&with_auth("Basic s3cret")),
            Err(ApiError::Unauthorized)
        );
        assert_eq!(a.check(&with_auth("Bearer s3cret")), Ok(()));
        assert_eq!(a.check(&with_auth("bearer other")), Ok(()));
        let open = access(&[], 0);
        assert_eq!(open.check(&TestRequest::default().to_srv_request()), Ok(()));
    }

    #[test]
    fn the_rate_limit_counts_per_key_and_says_when_to_retry() {
        let a = access(&["k1", "k2"], 1);
        assert_eq!(a.check(&with_auth("Bearer k1")), Ok(()));
        assert_eq!(a.check(&with_auth("Bearer k1")), Ok(()), "burst of 2");
        match a.check(&with_auth("Bearer k1")) {
            Err(ApiError::RateLimited { retry_after }) => {
                assert!(retry_after >= Duration::from_secs(1))
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        assert_eq!(a.check(&with_auth("Bearer k2")), Ok(()), "k2 has its own");
    }

    #[test]
    fn a_key_file_adds_keys_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "# comment\nfrom-file\n\n").unwrap();
        let a = Access::from_config(&ApiConfig {
            api_keys_file: Some(file.clone()),
            ..ApiConfig::default()
        })
        .unwrap();
        assert_eq!(a.check(&with_auth("Bearer from-file")), Ok(()));
        std::fs::write(&file, "\n# nothing\n").unwrap();
        let err = Access::from_config(&ApiConfig {
            api_keys_file: Some(file),
            ..ApiConfig::default()
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("api.api_keys_file"), "{err}");
    }
}
