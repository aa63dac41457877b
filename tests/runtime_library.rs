//! Loading the ONNX Runtime library: missing or wrong files give one clear error naming the
//! script to run. This is its own test binary (own process) because ONNX Runtime allows one
//! environment per process; failed attempts must leave nothing behind.

mod common;

use std::path::PathBuf;

use trendstory::config::RuntimeConfig;
use trendstory::runtime::{environment, RuntimeError};

#[test]
fn missing_then_wrong_then_right_library() {
    // The operator's ORT_DYLIB_PATH would override the paths under test.
    std::env::remove_var(trendstory::runtime::LIBRARY_ENV_VAR);

    let missing = RuntimeConfig {
        onnxruntime_library: Some(PathBuf::from("/nonexistent/libonnxruntime.so")),
    };
    let err = environment(&missing).unwrap_err();
    assert!(
        matches!(err, RuntimeError::LibraryMissing { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("/nonexistent/libonnxruntime.so"),
        "{message}"
    );
    assert!(
        message.contains("scripts/fetch-onnxruntime.sh"),
        "{message}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"this is not a shared library").unwrap();
    let wrong = RuntimeConfig {
        onnxruntime_library: Some(fake),
    };
    let err = environment(&wrong).unwrap_err();
    assert!(
        matches!(err, RuntimeError::LibraryInvalid { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("scripts/fetch-onnxruntime.sh"));

    environment(&common::runtime()).expect("the fetched library loads after failed attempts");
}
