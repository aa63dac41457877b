//! Service configuration: one TOML file plus `TRENDSTORY_` environment overrides.
//!
//! Every limit the service enforces lives here so operators can tune it without a rebuild.
//! `Config::load` merges defaults, the file and the environment (in that order), resolves
//! the path settings (`paths`: relative to the file's folder, defaults looked for beside
//! the binary too), then `validate` checks cross-field rules; every error names the
//! offending key, in plain words (`plain`).

pub mod error;
mod paths;
mod plain;

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use error::ConfigError;
pub use paths::{env_var, find_default, PathOrigin, PathOrigins};

/// Environment variables starting with this prefix override the file; `__` separates
/// sections, e.g. `TRENDSTORY_SERVER__PORT=9000`. `TRENDSTORY_CONFIG` names the file itself.
pub const ENV_PREFIX: &str = "TRENDSTORY_";

/// The whole configuration tree.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where each path setting came from (filled by [`Config::load`]), for errors that
    /// say which key to change and where a default was looked for.
    #[serde(skip)]
    pub origins: PathOrigins,
    pub server: ServerConfig,
    pub runtime: RuntimeConfig,
    pub model: ModelConfig,
    pub inference: InferenceConfig,
    pub trends: crate::trends::config::TrendsConfig,
    pub stories: crate::stories::config::StoriesConfig,
    pub api: crate::api::config::ApiConfig,
}

/// Where the HTTP server listens, how it stops, how it logs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// actix-web worker threads; 0 means one per core.
    pub http_workers: usize,
    /// After SIGTERM, readiness is false and new stories are refused for this long before
    /// the listener closes, so the load balancer stops sending traffic first.
    pub shutdown_drain_secs: u64,
    /// Then requests and streams in flight get this long to finish before the exit.
    pub shutdown_timeout_secs: u64,
    /// `text` (human-readable) or `json` (one object per line, with the request id).
    pub log_format: LogFormat,
    /// A request head (line and headers) must arrive within this long: from the connection's
    /// start for its first request (actix answers 408 and closes), and for a later request
    /// within `keep_alive_secs` plus this of the previous answer (the connection watchdog
    /// closes it: `api::connections`). Bounds slow-header (slowloris) clients.
    pub client_request_timeout_secs: u64,
    /// An idle connection between requests is closed after this long.
    pub keep_alive_secs: u64,
    /// Open connections at most, shared evenly by the HTTP workers; more wait in the
    /// listen backlog (`backlog`) until one closes, and beyond it are refused by the kernel.
    pub max_connections: usize,
    /// Connections the kernel keeps waiting for acceptance beyond `max_connections`.
    pub backlog: u32,
    /// A connection whose client stops reading (or vanishes) with answer bytes unsent is
    /// dropped after this long (TCP_USER_TIMEOUT: the kernel aborts it, streams included).
    pub send_timeout_secs: u64,
    /// Kernel send buffer of each connection (SO_SNDBUF; the kernel doubles it for its
    /// bookkeeping): with actix's 32 KiB write buffer, what a client that stops reading
    /// can make the server hold.
    pub send_buffer_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8080,
            http_workers: 0,
            shutdown_drain_secs: 5,
            shutdown_timeout_secs: 30,
            log_format: LogFormat::Text,
            client_request_timeout_secs: 5,
            keep_alive_secs: 5,
            max_connections: 1024,
            backlog: 1024,
            send_timeout_secs: 30,
            send_buffer_bytes: 64 * 1024,
        }
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.port == 0 {
            return Err(ConfigError::Invalid {
                key: "server.port",
                reason: "must be a port number from 1 to 65535, got 0".into(),
            });
        }
        if self.host.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "server.host",
                reason: "must not be empty".into(),
            });
        }
        at_least_one(&[
            (
                "server.client_request_timeout_secs",
                self.client_request_timeout_secs,
            ),
            ("server.keep_alive_secs", self.keep_alive_secs),
            ("server.max_connections", self.max_connections as u64),
            ("server.backlog", u64::from(self.backlog)),
            ("server.send_timeout_secs", self.send_timeout_secs),
            ("server.send_buffer_bytes", self.send_buffer_bytes as u64),
        ])?;
        // TCP_USER_TIMEOUT is a u32 of milliseconds.
        if self.send_timeout_secs > u64::from(u32::MAX / 1000) {
            return Err(ConfigError::Invalid {
                key: "server.send_timeout_secs",
                reason: format!("must be at most {}", u32::MAX / 1000),
            });
        }
        Ok(())
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// How the ONNX Runtime shared library is found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Path to `libonnxruntime.so`; `ORT_DYLIB_PATH` overrides it, and when neither is set
    /// the cache folder filled by `scripts/fetch-onnxruntime.sh` is used.
    pub onnxruntime_library: Option<PathBuf>,
}

/// Which exported model to serve.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// A folder written by `scripts/export_onnx.py` (model.onnx, tokenizer.json, manifest.json).
    pub dir: PathBuf,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("onnx/tinyllama-1.1b-chat-int4"),
        }
    }
}

/// The inference pool and the limits of each worker's batching engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// Number of inference workers, each with its own ONNX session.
    pub workers: usize,
    /// ONNX Runtime intra-op threads per worker; 0 splits the available cores evenly.
    pub threads_per_worker: usize,
    /// Let idle ONNX Runtime threads spin; faster steps, but burns the cores the HTTP
    /// workers need between steps.
    pub spin_threads: bool,
    /// Slots per worker: sequences admitted at once (prefilling or decoding), each with its
    /// own KV cache of `max_prompt_tokens + max_new_tokens` positions (memory only as used).
    pub max_batch_size: usize,
    /// Requests that may wait for a batch slot across the pool before new ones are
    /// refused as overloaded.
    pub max_queue: usize,
    /// Background (story pre-generation) requests in flight across the pool; they have
    /// their own budget and give their batch slot to any user request that needs it.
    pub max_background: usize,
    /// A worker runs background sequences only while at most this many user sequences
    /// hold its slots; past it they end and are retried later (on a CPU every row of a
    /// pass slows the others).
    pub background_max_users: usize,
    /// Longest accepted prompt, in tokens.
    pub max_prompt_tokens: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_new_tokens: usize,
    /// Key/value positions a worker's admitted requests may reserve in all (each its prompt
    /// plus `max_tokens`). A request that does not fit waits.
    pub max_total_kv_tokens: usize,
    /// Tokens in one engine step (one forward pass): a token for every decoding sequence,
    /// the rest for prompt chunks, so a long prompt spreads over several steps and never
    /// stalls the others' next token.
    pub step_token_budget: usize,
    /// A request still running after this long is cancelled.
    pub request_timeout_secs: u64,
    /// The Retry-After hint given with an overloaded refusal.
    pub retry_after_secs: u64,
    /// Pause before a crashed worker is started again.
    pub restart_delay_ms: u64,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            threads_per_worker: 0,
            spin_threads: false,
            // The KV budget over a story's 512 positions (a prompt of up to ~380 tokens and
            // the default 128 new ones): 20 users at once never wait for a slot.
            max_batch_size: 32,
            max_queue: 64,
            max_background: 2,
            background_max_users: 4,
            max_prompt_tokens: 1024,
            max_new_tokens: 512,
            max_total_kv_tokens: 16_384,
            // Measured on the bench model (BENCHMARKS.md, "One pass per step"): the engine's
            // tokens/s is flat from about 30 tokens per pass, and a pass of 64 takes about
            // 0.3 s, the longest a decoding stream waits while a long prompt prefills.
            step_token_budget: 64,
            request_timeout_secs: 120,
            retry_after_secs: 1,
            restart_delay_ms: 500,
        }
    }
}

impl InferenceConfig {
    /// Intra-op threads each worker's session gets.
    pub fn resolved_threads_per_worker(&self) -> usize {
        match self.threads_per_worker {
            0 => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                (cores / self.workers.max(1)).max(1)
            }
            n => n,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        at_least_one(&[
            ("inference.workers", self.workers as u64),
            ("inference.max_batch_size", self.max_batch_size as u64),
            ("inference.max_prompt_tokens", self.max_prompt_tokens as u64),
            ("inference.max_new_tokens", self.max_new_tokens as u64),
            (
                "inference.max_total_kv_tokens",
                self.max_total_kv_tokens as u64,
            ),
            ("inference.step_token_budget", self.step_token_budget as u64),
        ])?;
        if self.request_timeout_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "inference.request_timeout_secs",
                reason: "must be at least 1".into(),
            });
        }
        if self.step_token_budget < self.max_batch_size {
            return Err(ConfigError::Invalid {
                key: "inference.step_token_budget",
                reason: format!(
                    "{} leaves no room for prompts when all {} slots but one decode; it must be at least inference.max_batch_size",
                    self.step_token_budget, self.max_batch_size
                ),
            });
        }
        if self.max_total_kv_tokens < self.max_prompt_tokens + self.max_new_tokens {
            return Err(ConfigError::Invalid {
                key: "inference.max_total_kv_tokens",
                reason: format!(
                    "{} cannot hold even one request of max_prompt_tokens {} + max_new_tokens {}",
                    self.max_total_kv_tokens, self.max_prompt_tokens, self.max_new_tokens
                ),
            });
        }
        Ok(())
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
            if path.is_dir() {
                return Err(ConfigError::Load(format!(
                    "config file {} is a folder; give the TOML file in it",
                    path.display()
                )));
            }
            if !path.is_file() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).ignore(&["config"]).split("__"));
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Load(plain::describe(e)))?;
        config.origins = paths::resolve(&mut config, &figment, file);
        config.validate()?;
        Ok(config)
    }

    /// Checks rules that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        if self.model.dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "model.dir",
                reason: "must not be empty".into(),
            });
        }
        self.inference.validate()?;
        self.trends.validate()?;
        self.stories.validate(self.inference.max_new_tokens)?;
        self.api.validate()
    }
}

/// The first of `fields` (key, value) that is 0, as the error that names it.
fn at_least_one(fields: &[(&'static str, u64)]) -> Result<(), ConfigError> {
    match fields.iter().find(|&&(_, value)| value == 0) {
        Some(&(key, _)) => Err(ConfigError::Invalid {
            key,
            reason: "must be at least 1".into(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
// figment's `Jail` closures must return its (large) `figment::Error`.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn load_in(jail: &Jail, file: Option<&str>) -> Result<Config, ConfigError> {
        Config::load(file.map(|f| jail.directory().join(f)).as_deref())
    }

    #[test]
    fn defaults_are_valid_and_offline() {
        Jail::expect_with(|jail| {
            let config = load_in(jail, None).expect("defaults load");
            assert_eq!(config.server.port, 8080);
            assert!(!config.trends.sources.hackernews.enabled);
            Ok(())
        });
    }

    #[test]
    fn the_example_file_loads() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("trendstory.example.toml");
        Jail::expect_with(|_| {
            let config = Config::load(Some(&example)).expect("example loads");
            assert!(config.trends.sources.hackernews.enabled);
            assert_eq!(config.inference.max_batch_size, 32);
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_the_file() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "[server]\nport = 9000\n[inference]\nworkers = 2\n",
            )?;
            jail.set_env("TRENDSTORY_SERVER__PORT", "9100");
            let config = load_in(jail, Some("t.toml")).expect("loads");
            assert_eq!(config.server.port, 9100);
            assert_eq!(config.inference.workers, 2);
            Ok(())
        });
    }

    #[test]
    fn unknown_and_mistyped_keys_are_named() {
        Jail::expect_with(|jail| {
            jail.create_file("t.toml", "[inference]\nmax_batch = 4\n")?;
            let err = load_in(jail, Some("t.toml")).unwrap_err().to_string();
            assert!(err.contains("max_batch"), "{err}");
            jail.set_env("TRENDSTORY_INFERENCE__WORKERS", "many");
            let err = load_in(jail, None).unwrap_err().to_string();
            assert!(err.contains("inference.workers"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn broken_rules_name_the_key() {
        Jail::expect_with(|jail| {
            jail.set_env("TRENDSTORY_INFERENCE__MAX_BATCH_SIZE", "0");
            let err = load_in(jail, None).unwrap_err().to_string();
            assert!(err.contains("inference.max_batch_size"), "{err}");
            jail.set_env("TRENDSTORY_INFERENCE__MAX_BATCH_SIZE", "4");
            jail.set_env("TRENDSTORY_INFERENCE__MAX_TOTAL_KV_TOKENS", "100");
            let err = load_in(jail, None).unwrap_err().to_string();
            assert!(err.contains("inference.max_total_kv_tokens"), "{err}");
            jail.set_env("TRENDSTORY_INFERENCE__MAX_TOTAL_KV_TOKENS", "16384");
            jail.set_env("TRENDSTORY_INFERENCE__STEP_TOKEN_BUDGET", "3");
            let err = load_in(jail, None).unwrap_err().to_string();
            assert!(err.contains("inference.step_token_budget"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn relative_paths_in_the_file_are_taken_from_its_folder() {
        Jail::expect_with(|jail| {
            std::fs::create_dir("conf").unwrap();
            jail.create_file(
                "conf/t.toml",
                "[model]\ndir = \"models/m\"\n[api]\napi_keys_file = \"/abs/keys\"\n\
                 [trends.sources.file]\npath = \"topics.json\"\n",
            )?;
            let config = load_in(jail, Some("conf/t.toml")).expect("loads");
            let folder = jail.directory().join("conf");
            assert_eq!(config.model.dir, folder.join("models/m"));
            assert_eq!(
                config.trends.sources.file.path,
                Some(folder.join("topics.json"))
            );
            assert_eq!(config.api.api_keys_file, Some(PathBuf::from("/abs/keys")));
            assert_eq!(
                config.origins.of("model.dir"),
                &PathOrigin::File(folder.join("t.toml"))
            );
            // From the environment: the working directory's, as a shell user expects.
            jail.set_env("TRENDSTORY_MODEL__DIR", "here/m");
            let config = load_in(jail, Some("conf/t.toml")).expect("loads");
            assert_eq!(config.model.dir, PathBuf::from("here/m"));
            assert_eq!(
                config.origins.of("model.dir").to_string(),
                "set by TRENDSTORY_MODEL__DIR"
            );
            Ok(())
        });
    }

    #[test]
    fn a_default_path_is_looked_for_here_and_beside_the_binary() {
        Jail::expect_with(|jail| {
            let config = load_in(jail, None).expect("loads");
            let PathOrigin::Default { looked } = config.origins.of("model.dir") else {
                panic!("{:?}", config.origins);
            };
            let default = Path::new("onnx/tinyllama-1.1b-chat-int4");
            assert_eq!(looked[0], jail.directory().join(default));
            let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join(default);
            assert!(looked.contains(&repo), "{looked:?}");
            assert!(looked.contains(&config.model.dir), "the dir is one of them");
            Ok(())
        });
    }

    #[test]
    fn a_folder_given_as_the_file_says_so() {
        Jail::expect_with(|jail| {
            std::fs::create_dir("conf").unwrap();
            let err = load_in(jail, Some("conf")).unwrap_err().to_string();
            assert!(err.contains("is a folder"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_missing_file_is_an_error() {
        Jail::expect_with(|jail| {
            let err = load_in(jail, Some("nope.toml")).unwrap_err().to_string();
            assert!(err.contains("nope.toml"), "{err}");
            Ok(())
        });
    }
}
