//! [`ConfigError`], in a module of its own that imports nothing of the service: each room's
//! configuration section (`trends`, `stories`, `api`) validates itself with it, and
//! `config` composes those sections, so the error sits below both.

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
