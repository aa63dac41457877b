//! Pre-generation: keeps stories written for the top `stories.trending.top_k` trends, so
//! `GET /v1/stories/trending` and a plain request for a trending topic are cache hits, and
//! the first variants of the top `stories.variants.top_k` trends, so "another story" about
//! one is a cache hit too (`super::another`).
//!
//! Every `check_interval_secs` the task looks at the current ranking and writes, at
//! background priority, each of those stories that is neither fresh in the cache nor in
//! flight (the trending stories first, then the variants, the first of every trend before
//! the second): a changed ranking is picked up at the next check, an expired story is
//! written again, and the variants of a trend that left the top are dropped. Background
//! requests have their own small admission budget and give their batch slot to any user
//! request (they end `Preempted` and are retried at the next check), so users never wait
//! behind them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};

use super::{StoryError, StoryKey, StoryService, ValidStoryRequest};
use crate::inference::InferError;

/// Runs until `keep_going` says stop; spawn it on the actix system.
pub async fn run(service: Arc<StoryService>, concurrency: usize, keep_going: impl Fn() -> bool) {
    let config = service.config();
    let (trending, variants) = (config.trending.clone(), config.variants.clone());
    let writes_trending = trending.enabled && trending.top_k > 0;
    let writes_variants = variants.enabled && variants.top_k > 0 && variants.per_trend > 0;
    if !writes_trending && !writes_variants {
        return;
    }
    let interval = Duration::from_secs(trending.check_interval_secs);
    // The variants kept by the last round: those no longer wanted are dropped.
    let mut kept: HashSet<StoryKey> = HashSet::new();
    while keep_going() {
        if service.ready() {
            let mut wanted = Vec::new();
            if writes_trending {
                wanted.extend(trending_stories(&service, trending.top_k));
            }
            let pools = variant_stories(&service, variants.top_k);
            let keys: HashSet<StoryKey> = pools.iter().map(|v| v.key.clone()).collect();
            for gone in kept.difference(&keys) {
                service.cache().remove(gone);
            }
            kept = keys;
            let ready_bytes: usize = kept.iter().filter_map(|k| service.cache().peek(k)).sum();
            if ready_bytes < variants.max_bytes {
                wanted.extend(pools);
            }
            let written = write(&service, wanted, concurrency.max(1)).await;
            if written > 0 {
                tracing::info!(written, "trending stories and variants written");
            }
        }
        actix_web::rt::time::sleep(interval).await;
    }
}

/// The plain story (defaults, no seed) of each of the top `top_k` trends.
fn trending_stories(service: &StoryService, top_k: usize) -> Vec<ValidStoryRequest> {
    service
        .top_trends(top_k)
        .into_iter()
        .filter_map(|trend| service.plain_request(&trend.topic, None))
        .collect()
}

/// The variants of the top `top_k` trends, the first of every trend before the second.
fn variant_stories(service: &StoryService, top_k: usize) -> Vec<ValidStoryRequest> {
    let per_trend: Vec<Vec<ValidStoryRequest>> = service
        .top_trends(top_k)
        .iter()
        .map(|trend| service.variants_of(&trend.topic))
        .collect();
    let longest = per_trend.iter().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|i| per_trend.iter().filter_map(move |v| v.get(i).cloned()))
        .collect()
}

/// Writes `wanted` at background priority, `concurrency` at a time; returns how many
/// stories were written.
async fn write(
    service: &StoryService,
    wanted: Vec<ValidStoryRequest>,
    concurrency: usize,
) -> usize {
    let results: Vec<(String, Result<bool, StoryError>)> = stream::iter(wanted)
        .map(|request| async move {
            let result = service.pregenerate(&request).await;
            (request.topic, result)
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
            Err(
                StoryError::Preempted
                | StoryError::Timeout(_)
                | StoryError::Inference(InferError::Overloaded { .. }),
            ) => {
                tracing::debug!(%topic, "background story deferred: users come first");
            }
            Err(error) => tracing::warn!(%topic, %error, "background story failed"),
        }
    }
    written
}
