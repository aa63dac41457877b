//! Prefix sharing: the KV of prompt prefixes many requests share (a chat template and a
//! style's system prompt), prefilled once per engine, not once per request. The whole
//! protocol is here; the batch loop calls it at four points.
//!
//! A request says how many of its first prompt tokens are such a prefix
//! (`GenerationRequest::shared_prefix`).
//! - Planning ([`PrefixCache::prefill_start`], [`PrefixCache::prefill_stop`]): a request whose
//!   prefix is kept starts after it; the first request with a new prefix prefills up to the
//!   prefix's end and stops there, and later ones with the same prefix wait a step for it.
//! - Admission ([`PrefixCache::copy_into`]): a request whose prefix is kept starts from a copy
//!   of that KV in its own slot; one admitted before its prefix was kept adopts it once it is.
//! - After a pass ([`PrefixCache::keep_if_new`]): a prompt that has just prefilled a new
//!   prefix leaves a copy of its KV ([`KeptKv`]) here.
//!
//! Entries are keyed by the prefix's token ids (so a different template or tokenizer can never
//! match) and bounded in number, least recently used first.

use super::{EngineError, OnnxModel};

/// The KV of one shared prompt prefix, kept out of any slot: per layer and key/value a
/// `[kv_heads, len, head_dim]` buffer.
pub struct KeptKv {
    pub(crate) tensors: Vec<Vec<f32>>,
    pub(crate) len: usize,
}

/// Where the rows' KV lives: what a kept prefix is copied into and out of (the engine's
/// `KvStore`, for either graph contract).
pub trait PrefixStore {
    /// Starts `slot` from a kept prefix.
    fn adopt(&mut self, model: &OnnxModel, slot: usize, kept: &KeptKv) -> Result<(), EngineError>;
    /// A copy of the first `len` positions of `slot`, which is prefilling and holds exactly
    /// that many.
    fn keep(&self, slot: usize, len: usize) -> Result<KeptKv, EngineError>;
}

/// The shared prefix of a prompt of `prompt_ids` whose first `shared` ids are one, when it
/// leaves at least one prompt token to prefill (the last prompt token's logits give the
/// first new token); empty otherwise.
pub fn shared_prefix(prompt_ids: &[u32], shared: usize) -> &[u32] {
    if shared < prompt_ids.len() {
        &prompt_ids[..shared]
    } else {
        &[]
    }
}

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

    /// Where a waiting prompt with shared prefix `prefix` starts prefilling: after the
    /// prefix when it is kept, else at 0.
    pub fn prefill_start(&self, prefix: &[u32]) -> usize {
        if self.contains(prefix) {
            prefix.len()
        } else {
            0
        }
    }

    /// Where a prompt of `prompt_len` tokens with `done` of them in its KV may prefill to this
    /// step: its end, or the end of its shared `prefix` when that must be kept first; `done`
    /// itself (nothing) when another prompt, earlier in `keepers`, is keeping the same prefix.
    /// Adds the prefix to `keepers` when this prompt keeps it.
    pub fn prefill_stop(
        &self,
        prefix: &[u32],
        prompt_len: usize,
        done: usize,
        keepers: &mut Vec<Vec<u32>>,
    ) -> usize {
        if done >= prefix.len() || self.contains(prefix) {
            return prompt_len;
        }
        if keepers.iter().any(|k| k.as_slice() == prefix) {
            return done;
        }
        keepers.push(prefix.to_vec());
        prefix.len()
    }

    /// Copies the kept KV of `prefix`, when there is one, into `slot` of `kv`; says whether
    /// it did.
    pub fn copy_into(
        &mut self,
        kv: &mut impl PrefixStore,
        model: &OnnxModel,
        slot: usize,
        prefix: &[u32],
    ) -> Result<bool, EngineError> {
        match self.get(prefix) {
            Some(kept) => kv.adopt(model, slot, kept).map(|()| true),
            None => Ok(false),
        }
    }

    /// Keeps a copy of `slot`'s KV when its prompt has just prefilled exactly its shared
    /// `prefix` (`done` tokens) and that prefix is not kept yet; says whether it did.
    pub fn keep_if_new(
        &mut self,
        kv: &impl PrefixStore,
        slot: usize,
        prefix: &[u32],
        done: usize,
    ) -> Result<bool, EngineError> {
        if prefix.is_empty() || done != prefix.len() || self.contains(prefix) {
            return Ok(false);
        }
        let kept = kv.keep(slot, done)?;
        self.insert(prefix, kept);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(len: usize) -> KeptKv {
        KeptKv {
            tensors: vec![vec![0.0; len]],
            len,
        }
    }

    #[test]
    fn a_prefix_leaves_at_least_one_prompt_token_to_prefill() {
        assert_eq!(shared_prefix(&[1, 2, 3], 2), &[1, 2]);
        assert!(shared_prefix(&[1, 2, 3], 3).is_empty());
        assert!(shared_prefix(&[1, 2, 3], 0).is_empty());
    }

    #[test]
    fn the_first_prompt_with_a_new_prefix_keeps_it_and_the_others_wait() {
        let mut cache = PrefixCache::default();
        let prefix = [1, 2, 3];
        let mut keepers = Vec::new();
        assert_eq!(cache.prefill_start(&prefix), 0);
        // The first stops at the prefix's end, the second with the same prefix waits,
        // one with another prefix keeps that one.
        assert_eq!(cache.prefill_stop(&prefix, 10, 0, &mut keepers), 3);
        assert_eq!(cache.prefill_stop(&prefix, 12, 0, &mut keepers), 0);
        assert_eq!(cache.prefill_stop(&[7, 8], 9, 0, &mut keepers), 2);
        // Past its prefix, or with no prefix, a prompt prefills to its end.
        assert_eq!(cache.prefill_stop(&prefix, 10, 3, &mut keepers), 10);
        assert_eq!(cache.prefill_stop(&[], 5, 0, &mut keepers), 5);

        cache.insert(&prefix, kept(3));
        let mut keepers = Vec::new();
        assert_eq!(cache.prefill_start(&prefix), 3);
        assert_eq!(cache.prefill_stop(&prefix, 12, 0, &mut keepers), 12);
        assert!(keepers.is_empty());
    }

    #[test]
    fn the_least_recently_used_prefix_leaves_first() {
        let mut cache = PrefixCache::default();
        for i in 0..MAX_PREFIXES as u32 {
            cache.insert(&[i], kept(1));
        }
        assert!(cache.get(&[0]).is_some(), "prefix 0 used again");
        cache.insert(&[99], kept(1));
        assert!(cache.contains(&[0]) && cache.contains(&[99]));
        assert!(!cache.contains(&[1]), "the least recently used one left");
        assert_eq!(cache.entries.len(), MAX_PREFIXES);
    }
}
