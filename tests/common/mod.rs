//! Helpers shared by the integration tests: where the test models are and how to load them.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

use serde::Deserialize;
use trendstory::config::RuntimeConfig;
use trendstory::engine::{ModelInfo, OnnxModel, SessionOptions, TextTokenizer};

/// The tiny model with the project's own tokenizer, built by `./scripts/test.sh`.
pub const TINY: &str = "onnx/tiny";
/// The tiny model with the real Llama 2 tokenizer; needs `../shared`.
pub const TINY_LLAMA_TOKENIZER: &str = "onnx/tiny-llama2tok";

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Returns the folder of a test model, panicking with the command that builds it.
pub fn required_model(relative: &str) -> PathBuf {
    let dir = repo_path(relative);
    assert!(
        dir.join("manifest.json").is_file(),
        "test model {} is missing: run ./scripts/test.sh (it builds the tiny models)",
        dir.display()
    );
    dir
}

/// Returns the folder of a model that needs `../shared`, or `None` after saying loudly
/// that the calling test is skipped.
pub fn shared_model(relative: &str, test: &str) -> Option<PathBuf> {
    let dir = repo_path(relative);
    if dir.join("manifest.json").is_file() {
        return Some(dir);
    }
    // Straight to stderr, past the test harness's capture, so CI logs show the skip.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {} is absent (it needs ../shared/models/llama2-tokenizer; ./scripts/test.sh builds it when ../shared exists)",
        dir.display()
    );
    None
}

/// Runtime settings for tests: the library fetched by `scripts/fetch-onnxruntime.sh`.
pub fn runtime() -> RuntimeConfig {
    RuntimeConfig {
        onnxruntime_library: Some(repo_path(trendstory::runtime::DEFAULT_LIBRARY_PATH)),
    }
}

pub struct Loaded {
    pub info: ModelInfo,
    pub tokenizer: TextTokenizer,
    pub model: OnnxModel,
}

/// Loads a model folder with two intra-op threads.
pub fn load(dir: &Path) -> Loaded {
    let info = ModelInfo::load(dir).expect("model info");
    let tokenizer = TextTokenizer::load(&info.tokenizer_path(), &info).expect("tokenizer");
    let model = OnnxModel::load(
        &info,
        &runtime(),
        &SessionOptions {
            intra_threads: 2,
            spin_threads: false,
        },
    )
    .expect("session");
    Loaded {
        info,
        tokenizer,
        model,
    }
}

#[derive(Debug, Deserialize)]
pub struct Golden {
    pub max_new_tokens: usize,
    pub prompts: Vec<GoldenPrompt>,
}

#[derive(Debug, Deserialize)]
pub struct GoldenPrompt {
    pub text: String,
    pub input_ids: Vec<u32>,
    pub output_ids: Vec<u32>,
    /// Logit of each greedy token, as ONNX Runtime in Python computed it.
    pub top1_logits: Vec<f32>,
}

/// Asserts that Rust's chosen-token logits equal the golden ones within float noise
/// (different kernel orders for cached versus recomputed attention, and padding).
pub fn assert_logits_close(actual: &[f32], golden: &[f32], what: &str) {
    assert_eq!(actual.len(), golden.len(), "{what}: number of steps");
    for (step, (a, g)) in actual.iter().zip(golden).enumerate() {
        let tolerance = 1e-3 * g.abs().max(1.0);
        assert!(
            (a - g).abs() <= tolerance,
            "{what}: step {step} logit {a} differs from golden {g} by more than {tolerance}"
        );
    }
}

/// Reads the greedy ids the exporter computed in Python by full recomputation.
pub fn golden(dir: &Path) -> Golden {
    let text = std::fs::read_to_string(dir.join("golden.json")).expect("golden.json");
    serde_json::from_str(&text).expect("golden.json schema")
}
