//! [`PrefixCache`]: the KV of prompt prefixes many requests share (a chat template and a
//! style's system prompt), kept per engine so they are prefilled once, not per request.
//!
//! A request says how many of its first prompt tokens are such a prefix
//! (`GenerationRequest::shared_prefix`). The first request with a new prefix prefills it as
//! its own chunk and leaves a copy here; later ones start from a copy of that KV in their own
//! slot and prefill only the rest. Entries are keyed by the prefix's token ids (so a different
//! template or tokenizer can never match) and bounded in number, least recently used first.

use super::slot_cache::KeptKv;

/// Prefixes kept per engine: a few styles' worth.
pub const MAX_PREFIXES: usize = 16;

struct Entry {
    ids: Vec<u32>,
    kv: KeptKv,
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

    /// The KV kept for `ids`, if any (marked as just used).
    pub fn get(&mut self, ids: &[u32]) -> Option<&KeptKv> {
        self.tick += 1;
        let entry = self.entries.iter_mut().find(|e| e.ids == ids)?;
        entry.last_used = self.tick;
        Some(&entry.kv)
    }

    /// Keeps `kv` (exactly `ids.len()` positions) for `ids`, evicting the least recently used
    /// entry when full.
    pub fn insert(&mut self, ids: &[u32], kv: KeptKv) {
        if self.contains(ids) {
            return;
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
            kv,
            last_used: self.tick,
        });
    }
}
