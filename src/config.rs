//! Service configuration: one TOML file plus `TRENDSTORY_` environment overrides.
//!
//! Every limit the service enforces lives here so operators can tune it without a rebuild.
//! `Config::load` merges defaults, the file and the environment (in that order), then
//! `validate` checks cross-field rules; every error names the offending key.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Environment variables starting with this prefix override the file; `__` separates
/// sections, e.g. `TRENDSTORY_SERVER__PORT=9000`. `TRENDSTORY_CONFIG` names the file itself.
pub const ENV_PREFIX: &str = "TRENDSTORY_";

/// Errors raised while loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read, or a value has the wrong type or an unknown key.
    #[error("configuration error: {0}")]
    Load(String),
    /// A value parsed but breaks a rule; `key` is the dotted path of the bad setting.
    #[error("invalid configuration key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// The whole configuration tree.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub runtime: RuntimeConfig,
    pub model: ModelConfig,
    pub trends: crate::trends::TrendsConfig,
}

/// Where the HTTP server listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8080,
        }
    }
}

/// How the ONNX Runtime shared library is found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Path to `libonnxruntime.so`; `ORT_DYLIB_PATH` overrides it, and when neither is set
    /// the cache folder filled by `scripts/fetch-onnxruntime.sh` is used.
    pub onnxruntime_library: Option<PathBuf>,
}

/// Which exported model to serve and how many threads ONNX Runtime may use for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// A folder written by `scripts/export_onnx.py` (model.onnx, tokenizer.json, manifest.json).
    pub dir: PathBuf,
    /// ONNX Runtime intra-op threads per session; 0 means one per available core.
    pub intra_threads: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("onnx/tinyllama-1.1b-chat-int4"),
            intra_threads: 0,
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (if any), then `TRENDSTORY_*` variables, and validates.
    ///
    /// # Errors
    /// `ConfigError::Load` for unreadable files, unknown keys and type errors (the message
    /// names the key and where the value came from); `ConfigError::Invalid` for rule breaks.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).ignore(&["config"]).split("__"));
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks rules that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.host.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "server.host",
                reason: "must not be empty".into(),
            });
        }
        if self.model.dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "model.dir",
                reason: "must not be empty".into(),
            });
        }
        self.trends.validate()?;
        Ok(())
    }
}
