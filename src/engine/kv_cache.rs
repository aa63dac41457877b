//! Key/value tensors of every layer, carried from one forward pass to the next.
//!
//! The graph returns `present.*` as the concatenation of the past and the new positions, so a
//! step's outputs are the next step's inputs unchanged: the cache moves between steps
//! without a copy on our side.

use ort::value::{DynValue, Tensor};

use super::{EngineError, ModelInfo};

/// The KV cache of a batch: for each layer a key and a value tensor shaped
/// `[batch, kv_heads, past_len, head_dim]`, stored as `[l0.key, l0.value, l1.key, ...]`.
pub struct KvCache {
    pub(crate) tensors: Vec<DynValue>,
    pub(crate) batch: usize,
    pub(crate) past_len: usize,
}

impl KvCache {
    /// A cache with no past positions, for the first (prefill) step of a batch.
    pub fn empty(info: &ModelInfo, batch: usize) -> Result<Self, EngineError> {
        let shape = [
            batch as i64,
            info.num_kv_heads as i64,
            0,
            info.head_dim as i64,
        ];
        let tensors = (0..info.num_layers * 2)
            .map(|_| {
                Tensor::<f32>::from_array((shape, Vec::<f32>::new()))
                    .map(|t| t.into_dyn())
                    .map_err(EngineError::inference)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            tensors,
            batch,
            past_len: 0,
        })
    }

    /// Number of rows (sequences) the cache holds.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Number of positions already cached for every row (padding included).
    pub fn past_len(&self) -> usize {
        self.past_len
    }
}
