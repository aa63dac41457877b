//! The inference pool over a fake engine: admission, cancellation, deadlines, crashes and
//! restarts, routing, failed loads, and which threads run the engine. Every await that
//! could hang is wrapped in a generous timeout, so a hang fails the test instead of CI.

mod fake_engine;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use fake_engine::{FailMode, FakeControl};
use futures_util::StreamExt;
use trendstory::config::InferenceConfig;
use trendstory::engine::{FinishReason, SamplingParams};
use trendstory::inference::{
    InferError, InferenceHandle, InferencePool, ResponseStream, StreamEvent,
};

/// Hang guard only; nothing here is a speed assertion.
const HANG_GUARD: Duration = Duration::from_secs(20);

fn config(workers: usize, max_batch_size: usize, max_queue: usize) -> InferenceConfig {
    InferenceConfig {
        workers,
        max_batch_size,
        max_queue,
        retry_after_secs: 3,
        restart_delay_ms: 20,
        ..InferenceConfig::default()
    }
}

fn params(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        ..SamplingParams::default()
    }
}

async fn guard<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("hung: {what}"))
}

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    guard(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Starts a pool and waits until `workers` engines are loaded.
async fn start(config: InferenceConfig, control: &FakeControl) -> InferenceHandle {
    let pool = InferencePool::start(&config, control.factory());
    let workers = config.workers;
    let ready = pool.clone();
    wait_until("workers ready", move || {
        ready.status().workers_up == workers
    })
    .await;
    pool
}

async fn next(stream: &mut ResponseStream) -> Result<StreamEvent, InferError> {
    guard("next event", stream.next())
        .await
        .expect("stream ended without an error or Done")
}

#[test]
fn the_handle_and_streams_can_cross_threads() {
    fn send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    fn send<T: Send + 'static>() {}
    send_sync_clone::<InferenceHandle>();
    send::<ResponseStream>();
}

#[actix_web::test]
async fn tokens_stream_in_order_and_steps_run_on_named_worker_threads() {
    let control = FakeControl::default();
    let pool = start(config(1, 4, 0), &control).await;
    let mut stream = pool.submit(vec![5, 9], params(3)).unwrap();
    for i in 0..3u32 {
        assert_eq!(
            next(&mut stream).await,
            Ok(StreamEvent::Token {
                token_id: 5 + i,
                text: format!("t{i} ")
            })
        );
    }
    let Ok(StreamEvent::Done(stats)) = next(&mut stream).await else {
        panic!("expected Done")
    };
    assert_eq!(
        (
            stats.finish_reason,
            stats.generated_tokens,
            stats.prompt_tokens
        ),
        (FinishReason::Length, 3, 2)
    );
    assert_eq!(guard("end", stream.next()).await, None);

    let (text, _) = guard(
        "collect",
        pool.submit(vec![1], params(2)).unwrap().collect(),
    )
    .await
    .unwrap();
    assert_eq!(text, "t0 t1 ");

    let worker = ["inference-worker-0".to_string()].into();
    assert_eq!(
        control.step_threads(),
        worker,
        "steps never run on the event loop"
    );
    assert_eq!(
        control.factory_threads(),
        worker,
        "the model loads off the event loop"
    );
    let status = pool.status();
    assert_eq!((status.in_flight, status.workers[0].in_flight), (0, 0));
}

#[actix_web::test]
async fn requests_over_the_budget_are_refused_at_once_and_the_rest_complete() {
    let control = FakeControl::default();
    control.set_step_delay(Duration::from_millis(5));
    control.set_max_batch(2);
    // Budget: 1 worker × 2 batch slots + 1 queued = 3.
    let pool = start(config(1, 2, 1), &control).await;
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for id in 0..5u32 {
        match pool.submit(vec![id * 100], params(4)) {
            Ok(stream) => admitted.push(stream),
            Err(err) => refused.push(err),
        }
    }
    assert_eq!(admitted.len(), 3);
    let overloaded = InferError::Overloaded {
        retry_after: Duration::from_secs(3),
    };
    assert_eq!(refused, [overloaded.clone(), overloaded]);
    assert_eq!(refused[0].code(), "overloaded");
    let status = pool.status();
    assert_eq!((status.capacity, status.in_flight), (3, 3));

    for stream in admitted {
        let (text, stats) = guard("collect", stream.collect()).await.unwrap();
        assert_eq!(
            (text.as_str(), stats.finish_reason),
            ("t0 t1 t2 t3 ", FinishReason::Length)
        );
    }
    assert_eq!(pool.status().in_flight, 0);
    let again = pool.submit(vec![1], params(1)).unwrap();
    assert!(guard("collect", again.collect()).await.is_ok());
}

/// The queue depth is what the engines hold without a slot, as they report it after each
/// step, and their counters add up every worker's steps and tokens.
#[actix_web::test]
async fn the_queue_depth_and_the_engine_counters_come_from_the_engines() {
    let control = FakeControl::default();
    control.set_step_delay(Duration::from_millis(20));
    control.set_max_batch(1);
    let pool = start(config(1, 1, 2), &control).await;
    let streams: Vec<ResponseStream> = (0..3u32)
        .map(|id| pool.submit(vec![id * 100], params(10)).unwrap())
        .collect();
    let status = pool.clone();
    wait_until("two wait while one runs", move || {
        let s = status.status();
        (s.queued, s.batch_size) == (2, 1)
    })
    .await;
    for stream in streams {
        guard("collect", stream.collect()).await.unwrap();
    }
    let status = pool.clone();
    wait_until("the engine reports it is empty", move || {
        let s = status.status();
        (s.queued, s.batch_size) == (0, 0)
    })
    .await;
    let engine = pool.status().engine;
    assert_eq!(engine.tokens, 30, "ten tokens for each of three requests");
    assert!(engine.steps >= 30, "one request in the batch at a time");
    assert_eq!(engine.passes, engine.steps);
}

#[actix_web::test]
async fn dropping_a_stream_frees_its_slot_and_the_engine_cancels_it() {
    let control = FakeControl::default();
    control.set_step_delay(Duration::from_millis(10));
    let pool = start(config(1, 1, 0), &control).await;
    let mut first = pool.submit(vec![10], params(100_000)).unwrap();
    assert!(matches!(
        next(&mut first).await,
        Ok(StreamEvent::Token { .. })
    ));
    assert!(matches!(
        pool.submit(vec![20], params(2)),
        Err(InferError::Overloaded { .. })
    ));

    drop(first); // the client went away
    let second = pool
        .submit(vec![20], params(2))
        .expect("the slot was freed on drop");
    let (text, _) = guard("collect", second.collect()).await.unwrap();
    assert_eq!(text, "t0 t1 ");
    assert_eq!(
        control.cancelled(),
        1,
        "the engine dropped the abandoned sequence"
    );
}

#[actix_web::test]
async fn a_request_past_its_deadline_ends_cancelled() {
    let control = FakeControl::default();
    control.set_step_delay(Duration::from_millis(100));
    let config = InferenceConfig {
        request_timeout_secs: 1,
        ..config(1, 2, 0)
    };
    let pool = start(config, &control).await;
    let stream = pool.submit(vec![1], params(100_000)).unwrap();
    let (text, stats) = guard("deadline", stream.collect()).await.unwrap();
    assert_eq!(stats.finish_reason, FinishReason::Cancelled);
    assert!(stats.generated_tokens < 100_000);
    assert!(text.starts_with("t0 "));
    assert_eq!(control.cancelled(), 1);
}

/// One worker crashes mid-generation: the request in flight fails fast, the supervisor
/// restarts the worker with a fresh engine, and later requests succeed.
async fn crash_and_recover(mode: FailMode) {
    let control = FakeControl::default();
    control.set_step_delay(Duration::from_millis(5));
    let pool = start(config(1, 4, 0), &control).await;
    let mut doomed = pool.submit(vec![100], params(100_000)).unwrap();
    assert!(matches!(
        next(&mut doomed).await,
        Ok(StreamEvent::Token { .. })
    ));

    control.fail_while_serving(100, mode);
    let ending = loop {
        match next(&mut doomed).await {
            Ok(StreamEvent::Token { .. }) => continue,
            other => break other,
        }
    };
    assert_eq!(ending, Err(InferError::WorkerRestarted));
    assert_eq!(ending.unwrap_err().code(), "worker_restarted");
    assert_eq!(
        pool.status().in_flight,
        0,
        "the failed request's slot is free"
    );

    let restarted = pool.clone();
    wait_until("restart", move || {
        let status = restarted.status();
        status.workers_up == 1 && status.restarts == 1
    })
    .await;
    assert_eq!(
        control.engines_created(),
        2,
        "a fresh engine after the crash"
    );
    assert_eq!(pool.status().workers[0].last_error, None);
    let before_restart = pool.status().engine;
    assert!(
        before_restart.tokens > 0,
        "the crashed engine's tokens are kept"
    );
    assert_eq!(
        (before_restart.waiting_user, before_restart.running),
        (0, 0)
    );
    let (text, _) = guard(
        "after restart",
        pool.submit(vec![7], params(2)).unwrap().collect(),
    )
    .await
    .unwrap();
    assert_eq!(text, "t0 t1 ");
    let status = pool.clone();
    wait_until("the new engine's tokens add to the old ones'", move || {
        status.status().engine.tokens == before_restart.tokens + 2
    })
    .await;
}

#[actix_web::test]
async fn a_panicking_step_fails_in_flight_requests_and_the_worker_restarts() {
    crash_and_recover(FailMode::Panic).await;
}

#[actix_web::test]
async fn a_failed_step_fails_in_flight_requests_and_the_worker_restarts() {
    crash_and_recover(FailMode::Error).await;
}

#[actix_web::test]
async fn a_crash_leaves_the_other_worker_alone() {
    let control = FakeControl::default();
    control.set_step_delay(Duration::from_millis(10));
    let pool = start(config(2, 4, 0), &control).await;
    let mut doomed = pool.submit(vec![100], params(100_000)).unwrap();
    let survivor = pool.submit(vec![200], params(30)).unwrap();
    assert!(matches!(
        next(&mut doomed).await,
        Ok(StreamEvent::Token { .. })
    ));
    let doomed_thread = control.served_by(100).unwrap();
    assert_ne!(Some(&doomed_thread), control.served_by(200).as_ref());

    control.fail_while_serving(100, FailMode::Panic);
    let ending = loop {
        match next(&mut doomed).await {
            Ok(StreamEvent::Token { .. }) => continue,
            other => break other,
        }
    };
    assert_eq!(ending, Err(InferError::WorkerRestarted));
    let (text, stats) = guard("survivor", survivor.collect()).await.unwrap();
    assert_eq!(
        (stats.finish_reason, stats.generated_tokens),
        (FinishReason::Length, 30)
    );
    assert!(text.ends_with("t29 "));

    let status = pool.clone();
    wait_until("restart", move || status.status().workers_up == 2).await;
    let restarts: Vec<u64> = pool.status().workers.iter().map(|w| w.restarts).collect();
    assert_eq!(restarts, [1, 0], "only the crashed worker restarted");
    assert_eq!(doomed_thread, "inference-worker-0");
}

#[actix_web::test]
async fn concurrent_requests_spread_over_the_least_loaded_workers() {
    let control = FakeControl::default();
    let pool = start(config(2, 8, 0), &control).await;
    let streams: Vec<ResponseStream> = (1..=6u32)
        .map(|id| pool.submit(vec![id], params(5)).unwrap())
        .collect();
    let loads: Vec<usize> = pool.status().workers.iter().map(|w| w.in_flight).collect();
    assert_eq!(loads, [3, 3]);
    let results = guard(
        "all",
        futures_util::future::join_all(streams.into_iter().map(ResponseStream::collect)),
    )
    .await;
    assert!(results.iter().all(Result::is_ok));

    let mut per_thread: HashMap<String, usize> = HashMap::new();
    for id in 1..=6u32 {
        *per_thread
            .entry(control.served_by(id).unwrap())
            .or_default() += 1;
    }
    assert_eq!(per_thread["inference-worker-0"], 3);
    assert_eq!(per_thread["inference-worker-1"], 3);
}

#[actix_web::test]
async fn a_failing_factory_keeps_the_pool_not_ready_and_retries() {
    let control = FakeControl::default();
    control.fail_loads(true);
    let pool = InferencePool::start(&config(1, 4, 0), control.factory());
    let watched = pool.clone();
    wait_until("load error reported", move || {
        watched.status().workers[0].last_error.is_some()
    })
    .await;
    assert!(!pool.ready());
    let err = pool.submit(vec![1], params(2)).unwrap_err();
    assert_eq!(err.code(), "not_ready");
    assert!(err.to_string().contains("does not exist"), "{err}");

    let retried = control.clone();
    wait_until("load retried", move || retried.factory_calls() >= 2).await;
    control.fail_loads(false);
    let recovered = pool.clone();
    wait_until("model loads", move || recovered.ready()).await;
    let status = pool.status();
    assert!(status.workers[0].restarts >= 1);
    assert_eq!(status.workers[0].last_error, None);
    assert!(guard(
        "after load",
        pool.submit(vec![1], params(2)).unwrap().collect()
    )
    .await
    .is_ok());
}
