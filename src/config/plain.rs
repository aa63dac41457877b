//! figment's errors in plain words: the key as written in the file, what it accepts
//! ("a port number from 1 to 65535", "a whole number, 0 or more") instead of Rust type
//! names (`u16`, `usize`), the value given, and where it came from (the file's path or
//! the environment variable's name).

use figment::error::{Actual, Kind};
use figment::Source;

use super::paths::env_var;

/// One message for every error figment found while extracting the configuration.
pub(super) fn describe(error: figment::Error) -> String {
    let parts: Vec<String> = error.into_iter().map(|e| one(&e)).collect();
    parts.join("; ")
}

fn one(error: &figment::Error) -> String {
    let key = error.path.join(".").to_lowercase();
    let origin = match error.metadata.as_ref() {
        Some(m) => match &m.source {
            Some(Source::File(path)) => format!(" (in {})", path.display()),
            Some(Source::Code(_)) => String::new(),
            _ if !key.is_empty() && m.name.contains("environment") => {
                format!(" (from {})", env_var(&key))
            }
            _ => format!(" (from {})", m.name),
        },
        None => String::new(),
    };
    let what = match &error.kind {
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!(
                "must be {}, got {}",
                expected_in_words(&key, expected),
                actual_in_words(actual)
            )
        }
        Kind::UnknownVariant(given, accepted) => {
            format!("must be one of {}, got \"{given}\"", accepted.join(", "))
        }
        Kind::UnknownField(given, accepted) => {
            // figment's path ends with the unknown key itself.
            let section = match key.rsplit_once('.') {
                Some((section, _)) => format!("[{section}]"),
                None => "the top level".into(),
            };
            let full = if key.is_empty() { given } else { &key };
            return format!(
                "unknown key `{full}`{origin}; the keys of {section} are {}",
                accepted.join(", ")
            );
        }
        Kind::DuplicateField(field) => format!("`{field}` is given twice"),
        Kind::MissingField(field) => format!("`{field}` is missing"),
        Kind::USizeOutOfRange(_) | Kind::ISizeOutOfRange(_) => "is too large".to_string(),
        other => other.to_string(),
    };
    if key.is_empty() {
        format!("{what}{origin}")
    } else {
        format!("`{key}` {what}{origin}")
    }
}

/// serde's expectation (a Rust type name, mostly) as a person would say it.
fn expected_in_words(key: &str, expected: &str) -> String {
    let words = match expected {
        "u16" if key.ends_with("port") => "a port number from 1 to 65535",
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a string" | "a char" => "text in quotes",
        "a sequence" => "a list like [\"a\", \"b\"]",
        "path string" => "a path in quotes",
        other if other.starts_with("struct ") || other == "a map" => "a table (a [section])",
        other => other,
    };
    words.to_string()
}

/// The value given, as it would be written in the file.
fn actual_in_words(actual: &Actual) -> String {
    match actual {
        Actual::Bool(v) => v.to_string(),
        Actual::Unsigned(v) => v.to_string(),
        Actual::Signed(v) => v.to_string(),
        Actual::Float(v) => v.to_string(),
        Actual::Char(v) => format!("\"{v}\""),
        Actual::Str(v) => format!("{v:?}"),
        Actual::Seq => "a list".into(),
        Actual::Map => "a table".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::{Format, Toml};
    use figment::Figment;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Server {
        port: u16,
        workers: Option<usize>,
        ratio: Option<f32>,
        spin: Option<bool>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Top {
        server: Server,
    }

    fn message(toml: &str) -> String {
        let error = Figment::from(Toml::string(toml))
            .extract::<Top>()
            .unwrap_err();
        describe(error).replace(" (from TOML source string)", "")
    }

    #[test]
    fn no_rust_type_names() {
        assert_eq!(
            message("[server]\nport = \"x\""),
            "`server.port` must be a port number from 1 to 65535, got \"x\""
        );
        assert_eq!(
            message("[server]\nport = 99999"),
            "`server.port` must be a port number from 1 to 65535, got 99999"
        );
        assert_eq!(
            message("[server]\nport = 1\nworkers = -5"),
            "`server.workers` must be a whole number, 0 or more, got -5"
        );
        assert_eq!(
            message("[server]\nport = 1\nspin = \"yes\""),
            "`server.spin` must be true or false, got \"yes\""
        );
        assert_eq!(
            message("[server]\nport = 1\nratio = [1]"),
            "`server.ratio` must be a number, got a list"
        );
    }

    #[test]
    fn an_unknown_key_lists_its_section() {
        assert_eq!(
            message("[server]\nport = 1\ncolour = 2"),
            "unknown key `server.colour`; the keys of [server] are port, workers, ratio, spin"
        );
    }
}
