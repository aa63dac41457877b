//! [`KvStore`]: where the engine's rows keep their KV and how one step's pass runs over it,
//! for each graph contract:
//! - packed graphs: a [`SlotCache`], and the pass is one `session.run` (decoding rows and
//!   prompt chunks together);
//! - explicit-attention graphs (optimum exports, for foreign models): [`PaddedRows`], padded
//!   caches and one `session.run` per prompt chunk plus one for the decoding rows.

use super::padded_rows::PaddedRows;
use super::prefix_sharing::{KeptKv, PrefixStore};
use super::{EngineError, KvLayout, OnnxModel, PassRow, SlotCache};

/// One step's work: a token for each decoding row, and prompt chunks.
#[derive(Debug, Clone, Default)]
pub struct Pass {
    pub decode: Vec<PassRow>,
    pub chunks: Vec<PassRow>,
}

/// See the module doc.
pub enum KvStore {
    Slots(SlotCache),
    Padded(PaddedRows),
}

impl KvStore {
    /// An empty store for `model`'s contract: `slots` rows of up to `capacity` positions.
    pub fn new(model: &OnnxModel, slots: usize, capacity: usize) -> Self {
        match model.kv_layout() {
            KvLayout::Slots => Self::Slots(SlotCache::new(
                model.info(),
                slots,
                capacity,
                model.prefill_lanes().unwrap_or(0),
            )),
            KvLayout::Padded => Self::Padded(PaddedRows::new(slots)),
        }
    }

    /// Runs `pass` and returns the logits of its rows that ask for them: decoding rows first,
    /// then chunks, each in order.
    pub fn forward(&mut self, model: &mut OnnxModel, pass: &Pass) -> Result<Vec<f32>, EngineError> {
        match self {
            Self::Slots(cache) => {
                let rows: Vec<PassRow> = pass.decode.iter().chain(&pass.chunks).cloned().collect();
                model.forward_packed(&rows, cache)
            }
            Self::Padded(rows) => rows.forward(model, &pass.decode, &pass.chunks),
        }
    }

    /// Forgets `slot`'s KV.
    pub fn free(&mut self, slot: usize) {
        match self {
            Self::Slots(cache) => cache.free(slot),
            Self::Padded(rows) => rows.free(slot),
        }
    }
}

impl PrefixStore for KvStore {
    fn adopt(&mut self, model: &OnnxModel, slot: usize, kept: &KeptKv) -> Result<(), EngineError> {
        match self {
            Self::Slots(cache) => cache.adopt(slot, kept),
            Self::Padded(rows) => rows.adopt(model, slot, kept),
        }
    }

    fn keep(&self, slot: usize, len: usize) -> Result<KeptKv, EngineError> {
        match self {
            Self::Slots(cache) => cache.keep(slot, len),
            Self::Padded(rows) => rows.keep(slot, len),
        }
    }
}
