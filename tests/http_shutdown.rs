//! Graceful shutdown of the real binary: SIGTERM during generations turns readiness false
//! and refuses new stories at once, lets the streams in flight finish, then exits 0.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

/// Kills the server if the test fails half-way.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads a whole SSE response and returns its events' names.
async fn event_names(
    mut response: awc::ClientResponse<
        impl futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>>
            + Unpin,
    >,
) -> Vec<String> {
    let mut body = String::new();
    while let Some(chunk) = response.next().await {
        body.push_str(std::str::from_utf8(&chunk.expect("chunk")).unwrap());
    }
    common::parse_sse(&body)
        .into_iter()
        .map(|e| e.event)
        .collect()
}

#[actix_web::test]
async fn sigterm_drains_streams_then_exits_zero() {
    let model = common::required_model(common::TINY);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_trendstory"))
        .arg("serve")
        .env("TRENDSTORY_SERVER__HOST", "127.0.0.1")
        .env("TRENDSTORY_SERVER__PORT", port.to_string())
        .env("TRENDSTORY_SERVER__SHUTDOWN_DRAIN_SECS", "1")
        .env("TRENDSTORY_SERVER__SHUTDOWN_TIMEOUT_SECS", "30")
        .env("TRENDSTORY_MODEL__DIR", &model)
        .env(
            "TRENDSTORY_RUNTIME__ONNXRUNTIME_LIBRARY",
            common::runtime().onnxruntime_library.unwrap(),
        )
        .env("TRENDSTORY_INFERENCE__THREADS_PER_WORKER", "1")
        .env("TRENDSTORY_STORIES__TRENDING__ENABLED", "false")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the server");
    let mut server = Server(child);
    common::wait_ready(&base).await;

    // Several long streams, so each step is slower and they outlast the drain.
    let client = common::client();
    let mut streams = Vec::new();
    for seed in 0..8 {
        let response = client
            .post(format!("{base}/v1/stories"))
            .send_json(&json!({"topic": "The long night", "max_tokens": 300, "seed": seed, "stream": true}))
            .await
            .expect("stream");
        assert_eq!(response.status(), 200);
        streams.push(response);
    }
    let sent_at = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());

    // Readiness turns false first, and new stories are refused, while streams go on.
    let not_ready = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let mut response = client.get(format!("{base}/readyz")).send().await.unwrap();
            if response.status() == 503 {
                return response.json::<Value>().await.unwrap();
            }
            actix_web::rt::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("readiness false soon after SIGTERM");
    assert_eq!(not_ready["shutting_down"], true);
    let mut refused = client
        .post(format!("{base}/v1/stories"))
        .send_json(&json!({"topic": "too late", "max_tokens": 2}))
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().get("retry-after").is_some());
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "shutting_down");

    for response in streams {
        let names = event_names(response).await;
        assert_eq!(names.last().map(String::as_str), Some("done"), "{names:?}");
        assert!(names.len() > 1);
    }
    let finished_after = sent_at.elapsed();

    let exit = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(status) = server.0.try_wait().unwrap() {
                return status;
            }
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the server exits after draining");
    assert!(exit.success(), "exit status {exit:?}");
    eprintln!("streams finished {finished_after:?} after SIGTERM");
}
