//! Path settings: what a relative path is relative to, and where a default is looked for.
//!
//! A relative path in the config file is taken from the file's folder, so a file and the
//! folders it names can move together; one from an environment variable (or a command-line
//! flag) from the working directory, as a shell user expects. A built-in default
//! (`model.dir`, the ONNX Runtime library) is looked for in the working directory, then
//! beside the binary: the checkout it was built in (`<repo>/target/<profile>/trendstory`)
//! or its install prefix (`<prefix>/bin/trendstory` finds `<prefix>/share/trendstory/`).
//! The first place that holds it wins; when none does, the error lists every place looked.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::{Figment, Source};

use super::{Config, ENV_PREFIX};

/// Where a path setting's value came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum PathOrigin {
    /// Set by code: a test, or a command-line flag.
    #[default]
    Given,
    /// The config file; a relative value was taken from its folder.
    File(PathBuf),
    /// This environment variable; a relative value is taken from the working directory.
    Env(String),
    /// The built-in default, looked for in these places (the first that held it was taken).
    Default { looked: Vec<PathBuf> },
}

impl fmt::Display for PathOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Given => f.write_str("as given"),
            Self::File(file) => write!(f, "set in {}", file.display()),
            Self::Env(var) => write!(f, "set by {var}"),
            Self::Default { looked } => {
                let places: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
                write!(f, "the default, looked for in {}", places.join(", "))
            }
        }
    }
}

/// The origin of each path setting of a loaded [`Config`].
#[derive(Debug, Clone, Default)]
pub struct PathOrigins(Vec<(&'static str, PathOrigin)>);

impl PathOrigins {
    /// Where `key` (e.g. `model.dir`) came from; `Given` for a config built in code.
    pub fn of(&self, key: &str) -> &PathOrigin {
        const GIVEN: &PathOrigin = &PathOrigin::Given;
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(GIVEN, |(_, origin)| origin)
    }
}

/// A path setting: its dotted key and where it is in a [`Config`] (`None` when unset).
type PathSetting = (&'static str, fn(&mut Config) -> Option<&mut PathBuf>);

/// Every path setting. The ONNX Runtime library's default (unset) is looked for by
/// `runtime::library_path` with [`find_default`].
const PATH_SETTINGS: [PathSetting; 4] = [
    ("model.dir", |c| Some(&mut c.model.dir)),
    ("runtime.onnxruntime_library", |c| {
        c.runtime.onnxruntime_library.as_mut()
    }),
    ("trends.sources.file.path", |c| {
        c.trends.sources.file.path.as_mut()
    }),
    ("api.api_keys_file", |c| c.api.api_keys_file.as_mut()),
];

/// Resolves each path setting of `config` (as `figment` extracted it from defaults, the
/// file `file` and the environment, in that order) and records where it came from.
pub(super) fn resolve(config: &mut Config, figment: &Figment, file: Option<&Path>) -> PathOrigins {
    let mut origins = Vec::new();
    for (key, setting) in PATH_SETTINGS {
        let Some(path) = setting(config) else {
            continue;
        };
        let source = figment.find_metadata(key).and_then(|m| m.source.as_ref());
        let origin = match (source, file) {
            (Some(Source::File(_)), Some(file)) => {
                if path.is_relative() {
                    if let Some(folder) = absolute(file).parent() {
                        *path = folder.join(&*path);
                    }
                }
                PathOrigin::File(file.to_path_buf())
            }
            (Some(Source::Code(_)), _) => {
                let (found, looked) = find_default(path);
                *path = found;
                PathOrigin::Default { looked }
            }
            _ => PathOrigin::Env(env_var(key)),
        };
        origins.push((key, origin));
    }
    PathOrigins(origins)
}

/// The variable that overrides `key`: `model.dir` -> `TRENDSTORY_MODEL__DIR`.
pub fn env_var(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_uppercase().replace('.', "__"))
}

/// The places a default relative path is looked for, in order: the working directory,
/// then the checkout or install prefix of the running binary (module doc).
pub fn default_places(relative: &Path) -> Vec<PathBuf> {
    let mut places = vec![absolute(relative)];
    let binary = std::env::current_exe().ok();
    let folder = binary.as_deref().and_then(Path::parent);
    if let Some(folder) = folder {
        // `<repo>/target/<profile>/trendstory` (or `.../deps/` for test binaries).
        if let Some(target) = folder.ancestors().find(|a| a.ends_with("target")) {
            if let Some(repo) = target.parent() {
                places.push(repo.join(relative));
            }
        }
        if folder.ends_with("bin") {
            if let Some(prefix) = folder.parent() {
                places.push(prefix.join("share/trendstory").join(relative));
            }
        }
    }
    places.dedup();
    places
}

/// The first of [`default_places`] that exists (else the first), and every place looked.
pub fn find_default(relative: &Path) -> (PathBuf, Vec<PathBuf>) {
    let looked = default_places(relative);
    let found = looked
        .iter()
        .find(|p| p.exists())
        .unwrap_or(&looked[0])
        .clone();
    (found, looked)
}

/// `path` from the working directory, as errors show it.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_named_as_figment_reads_them() {
        assert_eq!(env_var("model.dir"), "TRENDSTORY_MODEL__DIR");
        assert_eq!(
            env_var("trends.sources.file.path"),
            "TRENDSTORY_TRENDS__SOURCES__FILE__PATH"
        );
    }

    #[test]
    fn defaults_are_looked_for_here_then_beside_the_binary() {
        // Test binaries live in `<repo>/target/<profile>/deps/`.
        let places = default_places(Path::new("onnx/x"));
        assert_eq!(places[0], std::env::current_dir().unwrap().join("onnx/x"));
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx/x");
        assert!(places.contains(&repo), "{places:?}");
        let (found, _) = find_default(Path::new("Cargo.toml"));
        assert!(found.is_file(), "{found:?}");
    }

    #[test]
    fn origins_say_where_to_look() {
        let origin = PathOrigin::Default {
            looked: vec!["/a/m".into(), "/b/m".into()],
        };
        assert_eq!(origin.to_string(), "the default, looked for in /a/m, /b/m");
        assert_eq!(
            PathOrigin::Env(env_var("model.dir")).to_string(),
            "set by TRENDSTORY_MODEL__DIR"
        );
        assert_eq!(PathOrigins::default().of("model.dir"), &PathOrigin::Given);
    }
}
