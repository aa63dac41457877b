//! [`PrefixCache`]: the KV of prompt prefixes many requests share (a chat template and a
//! style's system prompt), kept per engine so they are prefilled once, not per request.
//!
//! A request says how many of its first prompt tokens are such a prefix
//! (`GenerationRequest::shared_prefix`). The first request with a new prefix prefills it as
//! its own chunk and leaves a copy here; later ones start from a copy of that KV and
//! prefill only the rest. Entries are keyed by the prefix's token ids (so a different
//! template or tokenizer can never match) and bounded in number, least recently used first.

use super::kv_cache::RowSource;
use super::{EngineError, KvCache, ModelInfo};

/// Prefixes kept per engine: a few styles' worth.
pub const MAX_PREFIXES: usize = 16;

struct Entry {
    ids: Vec<u32>,
    cache: KvCache,
    last_used: u64,
}

/// See the module doc.
#[derive(Default)]
pub struct PrefixCache {
    entries: Vec<Entry>,
    tick: u64,
}

impl PrefixCache {
    pub fn contains(&self, ids: &[u32]) -> bool {
        self.entries.iter().any(|e| e.ids == ids)
    }

    /// A private copy of the prefix's KV (batch of one, `ids.len()` positions), if kept.
    pub fn copy_of(
        &mut self,
        info: &ModelInfo,
        ids: &[u32],
    ) -> Result<Option<KvCache>, EngineError> {
        self.tick += 1;
        let Some(entry) = self.entries.iter_mut().find(|e| e.ids == ids) else {
            return Ok(None);
        };
        entry.last_used = self.tick;
        copy(info, &entry.cache, ids.len()).map(Some)
    }

    /// Keeps a copy of `cache` (batch of one, exactly `ids.len()` positions) for `ids`.
    pub fn insert(
        &mut self,
        info: &ModelInfo,
        ids: &[u32],
        cache: &KvCache,
    ) -> Result<(), EngineError> {
        if self.contains(ids) {
            return Ok(());
        }
        if self.entries.len() >= MAX_PREFIXES {
            if let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            {
                self.entries.swap_remove(oldest);
            }
        }
        self.tick += 1;
        self.entries.push(Entry {
            ids: ids.to_vec(),
            cache: copy(info, cache, ids.len())?,
            last_used: self.tick,
        });
        Ok(())
    }
}

fn copy(info: &ModelInfo, cache: &KvCache, len: usize) -> Result<KvCache, EngineError> {
    let row = RowSource { cache, row: 0, len };
    KvCache::gather(info, &[row], len)
}
