//! The whole inference path on the real (tiny) model: pool, worker thread, batching
//! engine. Concurrent requests through the pool get exactly their golden ids.

mod common;

use std::time::Duration;

use futures_util::future::join_all;
use futures_util::StreamExt;
use trendstory::config::{Config, InferenceConfig, ModelConfig};
use trendstory::engine::{FinishReason, SamplingParams};
use trendstory::inference::{model_factory, InferencePool, StreamEvent};

const HANG_GUARD: Duration = Duration::from_secs(60);

fn config(dir: std::path::PathBuf) -> Config {
    Config {
        model: ModelConfig { dir },
        runtime: common::runtime(),
        inference: InferenceConfig {
            max_batch_size: 4,
            threads_per_worker: 2,
            ..InferenceConfig::default()
        },
        ..Config::default()
    }
}

#[actix_web::test]
async fn concurrent_requests_through_the_pool_match_golden() {
    let dir = common::required_model(common::TINY);
    let golden = common::golden(&dir);
    let config = config(dir);
    let pool = InferencePool::start(&config.inference, model_factory(&config));
    tokio::time::timeout(HANG_GUARD, async {
        while !pool.ready() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the tiny model loads");

    // More requests than batch slots: some wait in the queue and join mid-generation.
    let runs = golden.prompts.iter().map(|p| {
        let pool = pool.clone();
        async move {
            let params = SamplingParams {
                max_tokens: golden.max_new_tokens,
                ..SamplingParams::default()
            };
            let mut stream = pool.submit(p.input_ids.clone(), params).expect("admitted");
            let mut ids = Vec::new();
            let mut finish = None;
            while let Some(event) = stream.next().await {
                match event.expect("no error") {
                    StreamEvent::Token { token_id, .. } => ids.push(token_id),
                    StreamEvent::Done(stats) => finish = Some(stats.finish_reason),
                }
            }
            (ids, finish)
        }
    });
    let results = tokio::time::timeout(HANG_GUARD, join_all(runs))
        .await
        .expect("requests finish");
    for (p, (ids, finish)) in golden.prompts.iter().zip(results) {
        assert_eq!(ids, p.output_ids, "prompt {:?}", p.text);
        let expected = if p.output_ids.last() == Some(&2) {
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        assert_eq!(finish, Some(expected));
    }
}

#[actix_web::test]
async fn missing_model_keeps_the_pool_not_ready_with_the_reason() {
    let config = config("onnx/does-not-exist".into());
    let pool = InferencePool::start(&config.inference, model_factory(&config));
    let reason = tokio::time::timeout(HANG_GUARD, async {
        loop {
            if let Some(e) = pool.status().workers[0].last_error.clone() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the failed load is reported");
    assert!(reason.contains("does-not-exist"), "{reason}");
    assert!(!pool.ready());
    match pool.submit(vec![1, 2, 3], SamplingParams::default()) {
        Err(err) => assert_eq!(err.code(), "not_ready"),
        Ok(_) => panic!("a pool without a model must refuse requests"),
    }
}
