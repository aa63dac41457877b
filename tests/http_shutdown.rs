//! Graceful shutdown of the real binary: SIGTERM during generations turns readiness false
//! and refuses new stories at once, lets the streams in flight finish, then exits 0.

mod common;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use common::process::ServerProcess;

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
    let mut server = ServerProcess::serve_tiny(&[
        ("TRENDSTORY_SERVER__SHUTDOWN_DRAIN_SECS", "1"),
        ("TRENDSTORY_SERVER__SHUTDOWN_TIMEOUT_SECS", "30"),
    ])
    .await;
    let base = server.base.clone();

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
    server.signal("TERM");

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

    let exit = server
        .exit_within(Duration::from_secs(30))
        .await
        .expect("the server exits after draining");
    assert!(exit.success(), "exit status {exit:?}");
    eprintln!("streams finished {finished_after:?} after SIGTERM");
}
