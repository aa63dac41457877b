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

    /// Builds a new batch cache from rows of existing caches. Each row keeps its `len`
    /// real positions ending at `end` (the cache's length for a left-padded row; earlier
    /// for a row of a batched prefill with trailing padding), right-aligned in the new
    /// cache, whose length is the longest `len`; the rest is zero padding the attention
    /// mask hides. This is the one place the engine copies KV data: when rows join or
    /// leave the batch, never on an ordinary decode step.
    pub fn gather(info: &ModelInfo, rows: &[RowSource<'_>]) -> Result<Self, EngineError> {
        let (heads, dim) = (info.num_kv_heads, info.head_dim);
        let past_len = rows.iter().map(|r| r.len).max().unwrap_or(0);
        let batch = rows.len();
        for r in rows {
            if r.row >= r.cache.batch || r.len > r.end || r.end > r.cache.past_len {
                return Err(EngineError::InvalidInput(format!(
                    "row {} with {} positions ending at {} is outside a cache of batch {} and length {}",
                    r.row, r.len, r.end, r.cache.batch, r.cache.past_len
                )));
            }
        }
        let mut tensors = Vec::with_capacity(info.num_layers * 2);
        for t in 0..info.num_layers * 2 {
            let mut data = vec![0.0f32; batch * heads * past_len * dim];
            for (dest_row, r) in rows.iter().enumerate() {
                let (_, src) = r.cache.tensors[t]
                    .try_extract_tensor::<f32>()
                    .map_err(EngineError::inference)?;
                let src_len = r.cache.past_len;
                for h in 0..heads {
                    let from = ((r.row * heads + h) * src_len + (r.end - r.len)) * dim;
                    let to = ((dest_row * heads + h) * past_len + (past_len - r.len)) * dim;
                    let n = r.len * dim;
                    data[to..to + n].copy_from_slice(&src[from..from + n]);
                }
            }
            let shape = [batch, heads, past_len, dim];
            tensors.push(
                Tensor::<f32>::from_array((shape, data))
                    .map_err(EngineError::inference)?
                    .into_dyn(),
            );
        }
        Ok(Self {
            tensors,
            batch,
            past_len,
        })
    }
}

/// One row to take into a gathered cache: `cache`'s row `row`, whose `len` positions
/// ending at `end` (exclusive) are real tokens.
pub struct RowSource<'a> {
    pub cache: &'a KvCache,
    pub row: usize,
    pub len: usize,
    pub end: usize,
}

impl<'a> RowSource<'a> {
    /// A left-padded row: its real positions are the cache's last `len`.
    pub fn last(cache: &'a KvCache, row: usize, len: usize) -> Self {
        Self {
            cache,
            row,
            len,
            end: cache.past_len,
        }
    }
}
