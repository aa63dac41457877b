//! Finds and loads the ONNX Runtime shared library, once per process.
//!
//! `ort` is built with `load-dynamic`, so nothing is downloaded at build time: the library
//! comes from `scripts/fetch-onnxruntime.sh` (a pinned, checksummed pip wheel) or from a path
//! the operator gives. ONNX Runtime allows one environment per process, so the first
//! successful load is kept in a `OnceLock` and shared by every session.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

use crate::config::{find_default, PathOrigin, RuntimeConfig};

/// The ONNX Runtime version `scripts/fetch-onnxruntime.sh` installs.
pub const PINNED_ORT_VERSION: &str = "1.32.0";

/// Where `scripts/fetch-onnxruntime.sh` puts the library, relative to the repository root;
/// looked for in the working directory, then beside the binary (`config::find_default`).
pub const DEFAULT_LIBRARY_PATH: &str = ".cache/onnxruntime/libonnxruntime.so.1.32.0";

/// Environment variable that overrides every other setting, as `ort` itself documents.
pub const LIBRARY_ENV_VAR: &str = "ORT_DYLIB_PATH";

const FETCH_HINT: &str =
    "run ./scripts/fetch-onnxruntime.sh, or set ORT_DYLIB_PATH / runtime.onnxruntime_library";

/// Why ONNX Runtime could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime library not found at {} ({source_of_path}); {FETCH_HINT}", path.display())]
    LibraryMissing {
        path: PathBuf,
        source_of_path: String,
    },
    #[error("ONNX Runtime library at {} could not be loaded: {reason}; {FETCH_HINT}", path.display())]
    LibraryInvalid { path: PathBuf, reason: String },
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// Resolves the library path: `ORT_DYLIB_PATH`, then the config key, then the default
/// cache; with where it came from, in words.
pub fn library_path(config: &RuntimeConfig) -> (PathBuf, String) {
    if let Some(path) = std::env::var_os(LIBRARY_ENV_VAR).filter(|p| !p.is_empty()) {
        return (PathBuf::from(path), format!("from {LIBRARY_ENV_VAR}"));
    }
    match &config.onnxruntime_library {
        Some(path) => (path.clone(), "from runtime.onnxruntime_library".into()),
        None => {
            let (path, looked) = find_default(Path::new(DEFAULT_LIBRARY_PATH));
            (path, PathOrigin::Default { looked }.to_string())
        }
    }
}

/// Returns the process-wide ONNX Runtime environment, loading the library on first use.
///
/// # Errors
/// `LibraryMissing` when no file is at the resolved path, `LibraryInvalid` when the file is
/// not a loadable ONNX Runtime of a compatible version. A failed attempt leaves nothing
/// behind, so a later call with a corrected path can succeed.
pub fn environment(config: &RuntimeConfig) -> Result<Environment, RuntimeError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env.clone());
    }
    let (path, source_of_path) = library_path(config);
    load(&path, source_of_path)
}

fn load(path: &Path, source_of_path: String) -> Result<Environment, RuntimeError> {
    let _guard = INIT_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env.clone());
    }
    if !path.is_file() {
        return Err(RuntimeError::LibraryMissing {
            path: path.to_path_buf(),
            source_of_path,
        });
    }
    let invalid = |reason: String| RuntimeError::LibraryInvalid {
        path: path.to_path_buf(),
        reason,
    };
    let env = ort::init_from(path)
        .map_err(|e| invalid(e.to_string()))?
        .with_name("trendstory")
        .with_telemetry(false)
        .build()
        .map_err(|e| invalid(e.to_string()))?;
    tracing::info!(library = %path.display(), version = ort::info(), "ONNX Runtime loaded");
    Ok(ENVIRONMENT.get_or_init(|| env).clone())
}
