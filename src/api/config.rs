//! `[api]` configuration: body limit, API keys, rate limit, CORS.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
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

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024,
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
