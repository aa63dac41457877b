//! `trendstory generate` end to end, as an operator runs it.

mod common;

use std::process::Command;

fn trendstory() -> Command {
    let mut cmd = common::process::trendstory();
    cmd.env(
        "ORT_DYLIB_PATH",
        common::repo_path(trendstory::runtime::DEFAULT_LIBRARY_PATH),
    );
    cmd
}

#[test]
fn generate_prints_text_and_speed() {
    let dir = common::required_model(common::TINY);
    let golden = common::golden(&dir);
    let out = trendstory()
        .args([
            "generate",
            "--prompt",
            &golden.prompts[0].text,
            "--max-tokens",
            "8",
            "--model",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert!(stderr.contains("tokens/s"), "{stderr}");
    assert!(
        stderr.contains("random weights"),
        "random models must say so: {stderr}"
    );
}

/// Runs a command that must fail cleanly (non-zero exit, no panic) and returns its stderr.
fn failing_stderr(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "must fail: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn generate_with_missing_model_fails_cleanly() {
    let stderr = failing_stderr(trendstory().args([
        "generate",
        "--prompt",
        "hi",
        "--model",
        "onnx/definitely-missing",
    ]));
    assert!(stderr.contains("definitely-missing"), "{stderr}");
}

#[test]
fn generate_with_missing_runtime_says_which_script_to_run() {
    let dir = common::required_model(common::TINY);
    let stderr = failing_stderr(
        trendstory()
            .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
            .args(["generate", "--prompt", "hi", "--model"])
            .arg(&dir),
    );
    assert!(stderr.contains("fetch-onnxruntime.sh"), "{stderr}");
}

#[test]
fn bad_config_value_names_the_key() {
    let stderr = failing_stderr(
        trendstory()
            .env("TRENDSTORY_SERVER__PORT", "not-a-port")
            .args(["generate", "--prompt", "hi"]),
    );
    assert!(
        stderr.contains("`server.port` must be a port number from 1 to 65535, got \"not-a-port\" (from TRENDSTORY_SERVER__PORT)"),
        "plain words, the key and where the value came from: {stderr}"
    );
}
