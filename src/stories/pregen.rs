//! Pre-generation: keeps stories written for the top `stories.trending.top_k` trends, so
//! `GET /v1/stories/trending` and a plain request for a trending topic are cache hits.
//!
//! Every `check_interval_secs` the task looks at the current ranking and writes, at
//! background priority, the story of each top topic that has no fresh story and none in
//! flight: a changed ranking is picked up at the next check, an expired story is written
//! again. Background requests have their own small admission budget and give their batch
//! slot to any user request (they end `Preempted` and are retried at the next check), so
//! users never wait behind them.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};

use super::{StoryError, StoryService};
use crate::inference::InferError;

/// Runs until `keep_going` says stop; spawn it on the actix system.
pub async fn run(service: Arc<StoryService>, concurrency: usize, keep_going: impl Fn() -> bool) {
    let trending = service.config().trending.clone();
    if !trending.enabled || trending.top_k == 0 {
        return;
    }
    let interval = Duration::from_secs(trending.check_interval_secs);
    while keep_going() {
        if service.ready() {
            let written = round(&service, trending.top_k, concurrency.max(1)).await;
            if written > 0 {
                tracing::info!(written, "trending stories written");
            }
        }
        actix_web::rt::time::sleep(interval).await;
    }
}

/// One pass over the top topics; returns how many stories were written.
async fn round(service: &StoryService, top_k: usize, concurrency: usize) -> usize {
    let topics: Vec<String> = service
        .top_trends(top_k)
        .into_iter()
        .map(|t| t.topic)
        .collect();
    let results: Vec<(String, Result<bool, StoryError>)> = stream::iter(topics)
        .map(|topic| async move {
            let result = service.pregenerate(&topic).await;
            (topic, result)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut written = 0;
    for (topic, result) in results {
        match result {
            Ok(true) => written += 1,
            Ok(false) => {}
            // Users come first: retried at the next check.
            Err(StoryError::Preempted | StoryError::Inference(InferError::Overloaded { .. })) => {
                tracing::debug!(%topic, "trending story deferred: users come first");
            }
            Err(error) => tracing::warn!(%topic, %error, "trending story failed"),
        }
    }
    written
}
