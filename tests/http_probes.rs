//! The real server on 127.0.0.1 through the same `server::run` as `main`: liveness at once,
//! readiness once the model is loaded, metrics in the format the scraper asks for.

mod common;

use std::time::Duration;

use trendstory::config::{Config, InferenceConfig, ModelConfig};

use common::get_json;

#[actix_web::test]
async fn healthz_at_once_and_readyz_once_loaded() {
    let dir = common::required_model(common::TINY);
    let config = Config {
        model: ModelConfig { dir },
        runtime: common::runtime(),
        inference: InferenceConfig {
            threads_per_worker: 1,
            ..InferenceConfig::default()
        },
        ..Config::default()
    };
    trendstory::server::preflight(&config).expect("preflight");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    actix_web::rt::spawn(trendstory::server::run(config, listener));
    let client = awc::Client::default();

    let (status, body) = get_json(&base, "/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");

    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let (status, body) = get_json(&base, "/readyz").await;
            if status == 200 {
                return body;
            }
            assert_eq!(status, 503, "not ready yet is 503: {body}");
            assert_eq!(body["ready"], false);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("ready within a minute");
    assert_eq!(ready["ready"], true);
    assert!(ready["trends"].as_u64().unwrap() > 0, "{ready}");
    assert_eq!(ready["inference"]["workers_up"], 1);
    let model = ready["model"].as_str().unwrap();
    assert!(
        model.contains("random weights"),
        "the tiny model is random: {model}"
    );

    // Metrics: OpenMetrics for Prometheus (it asks), the text format 0.0.4 for others.
    for (accept, content_type, counter_type) in [
        (
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            "# TYPE trendstory_inference_worker_restarts counter\n",
        ),
        (
            "*/*",
            "text/plain; version=0.0.4; charset=utf-8",
            "# TYPE trendstory_inference_worker_restarts_total counter\n",
        ),
    ] {
        let mut response = client
            .get(format!("{base}/metrics"))
            .insert_header(("Accept", accept))
            .send()
            .await
            .expect("metrics");
        assert_eq!(
            response.headers().get("content-type").unwrap(),
            content_type
        );
        let body = response.body().limit(1 << 22).await.unwrap();
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains(counter_type), "{accept}: {text}");
        assert_eq!(common::metric(text, "trendstory_ready"), 1.0, "{text}");
        assert_eq!(
            text.ends_with("# EOF\n"),
            content_type.contains("openmetrics")
        );
    }
}

#[test]
fn preflight_names_a_missing_model() {
    let config = Config {
        model: ModelConfig {
            dir: "onnx/no-model-here".into(),
        },
        runtime: common::runtime(),
        ..Config::default()
    };
    let err = trendstory::server::preflight(&config)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-model-here"), "{err}");
}
