//! `[api]` configuration: body and request head limits, API keys, rate limit, CORS.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::error::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// Longer URLs (path and query) get 414 with the JSON error. Must stay below the HTTP
    /// codec's own limit ([`CODEC_MAX_URL_BYTES`]), which answers with an empty 400.
    pub max_url_bytes: usize,
    /// Request headers (names, values and their separators) over this get 431 with the
    /// JSON error; the codec refuses a head over [`CODEC_MAX_HEAD_BYTES`] or more than
    /// [`CODEC_MAX_HEADERS`] headers itself, with an empty 431.
    pub max_header_bytes: usize,
    /// Bearer tokens accepted on `/v1/*`; with none here or in the file, `/v1` is open.
    pub api_keys: Vec<String>,
    /// A file with one key per line (`#` comments), e.g. a mounted Kubernetes secret.
    pub api_keys_file: Option<PathBuf>,
    /// Requests per second per API key (or per client IP without keys); 0 turns it off.
    pub rate_limit_per_second: u32,
    /// Requests a client may send at once before the per-second rate applies.
    pub rate_limit_burst: u32,
    /// Take the client IP from `X-Forwarded-For` / `Forwarded` (only behind a load
    /// balancer that sets them; otherwise clients could pick their own bucket).
    pub trust_forwarded_for: bool,
    /// Origins allowed to call the API from a browser; `["*"]` allows any, empty none.
    pub cors_allowed_origins: Vec<String>,
}

/// actix-http's limits, enforced before any of our code runs (its answers have an empty body
/// and no request id): the `http` crate's longest URI, the longest head the decoder buffers,
/// and the most headers it parses.
pub const CODEC_MAX_URL_BYTES: usize = 65_534;
pub const CODEC_MAX_HEAD_BYTES: usize = 131_072;
pub const CODEC_MAX_HEADERS: usize = 96;

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024,
            max_url_bytes: 8 * 1024,
            max_header_bytes: 16 * 1024,
            api_keys: Vec::new(),
            api_keys_file: None,
            rate_limit_per_second: 0,
            rate_limit_burst: 20,
            trust_forwarded_for: false,
            cors_allowed_origins: Vec::new(),
        }
    }
}

impl ApiConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_body_bytes == 0 {
            return Err(ConfigError::Invalid {
                key: "api.max_body_bytes",
                reason: "must be at least 1".into(),
            });
        }
        if self.max_url_bytes == 0 || self.max_url_bytes >= CODEC_MAX_URL_BYTES {
            return Err(ConfigError::Invalid {
                key: "api.max_url_bytes",
                reason: format!(
                    "must be between 1 and {} (the HTTP codec's own limit)",
                    CODEC_MAX_URL_BYTES - 1
                ),
            });
        }
        if self.max_header_bytes == 0
            || self.max_url_bytes + self.max_header_bytes >= CODEC_MAX_HEAD_BYTES
        {
            return Err(ConfigError::Invalid {
                key: "api.max_header_bytes",
                reason: format!(
                    "must be at least 1, and with api.max_url_bytes below {CODEC_MAX_HEAD_BYTES} (the HTTP codec's head limit)"
                ),
            });
        }
        if self
            .api_keys
            .iter()
            .any(|k| k.trim().is_empty() || k.contains(' '))
        {
            return Err(ConfigError::Invalid {
                key: "api.api_keys",
                reason: "keys must be non-empty and hold no spaces".into(),
            });
        }
        if let Some(bad) = self
            .cors_allowed_origins
            .iter()
            .find(|o| o.as_str() != "*" && !(o.starts_with("http://") || o.starts_with("https://")))
        {
            return Err(ConfigError::Invalid {
                key: "api.cors_allowed_origins",
                reason: format!("`{bad}` is neither `*` nor an http(s) origin"),
            });
        }
        Ok(())
    }
}
