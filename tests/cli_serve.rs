//! `trendstory serve` as an operator runs it: the request log, the `--host`/`--port` flags,
//! paths relative to the config file or found beside the binary, and Ctrl-C.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::process::{free_port, trendstory, ServerProcess};

/// The log line of the request with this id, once it is written (after the response).
async fn line_of(server: &ServerProcess, request_id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = server.log().lines().find(|l| l.contains(request_id)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {request_id}:\n{}",
            server.log()
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

fn request_id(headers: &actix_web::http::header::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .expect("x-request-id")
        .to_str()
        .unwrap()
        .to_string()
}

/// GETs or POSTs and returns the status, the `x-request-id` and the body.
async fn call(url: String, body: Option<Value>) -> (u16, String, Value) {
    let client = common::client();
    let mut response = match body {
        Some(body) => client.post(url).send_json(&body).await,
        None => client.get(url).send().await,
    }
    .expect("request");
    let id = request_id(response.headers());
    let body = response.json().limit(1 << 20).await.unwrap_or(Value::Null);
    (response.status().as_u16(), id, body)
}

#[actix_web::test]
async fn each_request_is_one_json_log_line_with_its_id() {
    let server = ServerProcess::serve_tiny(&[("TRENDSTORY_SERVER__LOG_FORMAT", "json")]).await;
    let base = server.base.clone();

    let (status, id, story) = call(
        format!("{base}/v1/stories"),
        Some(serde_json::json!({"topic": "log me", "max_tokens": 3})),
    )
    .await;
    assert_eq!(status, 200, "{story}");
    let line: Value = serde_json::from_str(&line_of(&server, &id).await).expect("one JSON object");
    let fields = &line["fields"];
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["target"], "trendstory::api::request_log");
    assert_eq!(fields["method"], "POST");
    assert_eq!(fields["route"], "/v1/stories");
    assert_eq!(fields["status"], 200);
    assert_eq!(fields["request_id"], id.as_str());
    assert_eq!(fields["client"], "127.0.0.1");
    assert_eq!(fields["complete"], true);
    assert!(fields["latency_ms"].as_f64().unwrap() > 0.0, "{line}");
    assert_eq!(fields["cache"], "miss");
    assert_eq!(fields["prompt_tokens"], story["prompt_tokens"]);
    assert_eq!(fields["tokens"], 3);

    // The same story again, streamed: a cache hit; its line is written at the stream's
    // end, with the story's tokens.
    let mut response = common::client()
        .get(format!(
            "{base}/v1/stories?topic=log%20me&max_tokens=3&stream=true"
        ))
        .send()
        .await
        .unwrap();
    let id = request_id(response.headers());
    response.body().await.unwrap();
    let line: Value = serde_json::from_str(&line_of(&server, &id).await).unwrap();
    assert_eq!(line["fields"]["route"], "/v1/stories");
    assert_eq!(line["fields"]["tokens"], 3);
    assert_eq!(line["fields"]["cache"], "hit");

    // An error answer has its line too, without story fields.
    let (status, id, body) = call(format!("{base}/v1/trends?limit=abc"), None).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["request_id"], id.as_str());
    let line: Value = serde_json::from_str(&line_of(&server, &id).await).unwrap();
    assert_eq!(line["fields"]["status"], 400);
    assert_eq!(line["fields"]["route"], "/v1/trends");
    assert!(line["fields"].get("cache").is_none(), "{line}");
}

/// With the engine's debug lines on, one generation can be followed by its request id: the
/// engine's thread logs its admission, first token and end inside the request's span.
#[actix_web::test]
async fn the_engine_logs_a_generation_under_its_request_id() {
    let server = ServerProcess::serve_tiny(&[
        ("TRENDSTORY_SERVER__LOG_FORMAT", "json"),
        ("RUST_LOG", "info,ort=warn,trendstory::engine=debug"),
    ])
    .await;
    let (status, id, story) = call(
        format!("{}/v1/stories", server.base),
        Some(serde_json::json!({"topic": "follow me", "max_tokens": 3})),
    )
    .await;
    assert_eq!(status, 200, "{story}");
    // The request's own line comes after its generation ended.
    line_of(&server, &id).await;
    let log = server.log();
    let engine_lines: Vec<String> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| {
            line["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("trendstory::engine"))
                && line["span"]["request_id"] == id.as_str()
        })
        .map(|line| line["fields"]["message"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        engine_lines,
        [
            "admitted to a batch slot",
            "first token",
            "generation ended"
        ],
        "{log}"
    );
}

#[actix_web::test]
async fn flags_override_the_file_and_relative_paths_follow_the_file() {
    // A config file in its own folder, naming the model, the library and a topics file by
    // paths relative to that folder; the server starts from somewhere else.
    let root = tempfile::tempdir().unwrap();
    let conf = root.path().join("conf");
    std::fs::create_dir_all(conf.join("models")).unwrap();
    std::os::unix::fs::symlink(
        common::required_model(common::TINY),
        conf.join("models/tiny"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        common::runtime().onnxruntime_library.unwrap(),
        conf.join("libonnxruntime.so"),
    )
    .unwrap();
    std::fs::write(conf.join("topics.json"), r#"["A topic from the file"]"#).unwrap();
    let taken = free_port();
    let _occupied = std::net::TcpListener::bind(("127.0.0.1", taken)).unwrap();
    std::fs::write(
        conf.join("trendstory.toml"),
        format!(
            "[server]\nhost = \"256.0.0.1\"\nport = {taken}\n\
             [runtime]\nonnxruntime_library = \"libonnxruntime.so\"\n\
             [model]\ndir = \"models/tiny\"\n\
             [inference]\nthreads_per_worker = 1\n\
             [stories.trending]\nenabled = false\n\
             [trends.sources.file]\npath = \"topics.json\"\n"
        ),
    )
    .unwrap();
    let elsewhere = root.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let port = free_port();
    let mut command = trendstory();
    command.current_dir(&elsewhere).args([
        "--config",
        "../conf/trendstory.toml",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
    ]);
    let mut server = ServerProcess::start(command, port);
    server.wait_ready().await;

    let (status, id, trends) = call(format!("{}/v1/trends", server.base), None).await;
    assert_eq!(status, 200);
    assert_eq!(trends["trends"][0]["topic"], "A topic from the file");
    // Text logs carry the id too.
    let line = line_of(&server, &id).await;
    assert!(line.contains("route=/v1/trends status=200"), "{line}");
}

#[test]
fn a_missing_default_model_names_the_key_and_where_it_looked() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = trendstory()
        .current_dir(elsewhere.path())
        .args(["serve"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let default = "onnx/tinyllama-1.1b-chat-int4";
    let here = elsewhere.path().canonicalize().unwrap().join(default);
    let repo = common::repo_path(default);
    for needle in [
        "`model.dir`",
        "TRENDSTORY_MODEL__DIR",
        &here.display().to_string(),
        &repo.display().to_string(),
    ] {
        assert!(stderr.contains(needle), "{needle} not in: {stderr}");
    }
}

#[test]
fn the_default_runtime_library_is_found_beside_the_binary() {
    // No ORT_DYLIB_PATH and no `runtime.onnxruntime_library`, from another folder: the
    // binary in `<repo>/target/debug/` finds `<repo>/.cache/onnxruntime/`.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = trendstory()
        .current_dir(elsewhere.path())
        .args(["generate", "--prompt", "hi", "--max-tokens", "2", "--model"])
        .arg(common::required_model(common::TINY))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let library = common::repo_path(trendstory::runtime::DEFAULT_LIBRARY_PATH);
    assert!(stderr.contains(&library.display().to_string()), "{stderr}");
}

#[actix_web::test]
async fn ctrl_c_on_an_idle_server_skips_the_drain() {
    // A drain far longer than the test waits: only skipping it lets the server exit.
    let mut server =
        ServerProcess::serve_tiny(&[("TRENDSTORY_SERVER__SHUTDOWN_DRAIN_SECS", "600")]).await;
    server.signal("INT");
    let status = server
        .exit_within(Duration::from_secs(120))
        .await
        .unwrap_or_else(|| panic!("still running after Ctrl-C:\n{}", server.log()));
    assert!(status.success(), "{status}: {}", server.log());
    assert!(server.log().contains("Ctrl-C"), "{}", server.log());
}
