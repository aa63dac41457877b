//! [`PaddedCache`]: the KV cache of an explicit-attention graph (the optimum contract): per
//! layer and key/value an ONNX Runtime value `[batch, kv_heads, width, head_dim]`. The graph
//! returns `present.*` as past and new concatenated, so a pass's outputs are the next pass's
//! inputs unchanged. Rows shorter than the widest are left-padded (the attention mask hides
//! the padding): row `b`'s real positions are the last `len` of it, `len` being known to the
//! caller.

use ort::value::DynValue;

use super::prefix_sharing::KeptKv;
use super::session::owned_value;
use super::{EngineError, ModelInfo};

/// See the module doc.
pub struct PaddedCache {
    pub(crate) tensors: Vec<DynValue>,
    batch: usize,
    width: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// One row to take into a gathered cache: `cache`'s row `row`, whose last `len` positions
/// are real.
pub struct RowSource<'a> {
    pub cache: &'a PaddedCache,
    pub row: usize,
    pub len: usize,
}

impl PaddedCache {
    /// A cache with no positions, for the first pass of `batch` rows.
    pub fn empty(info: &ModelInfo, batch: usize) -> Result<Self, EngineError> {
        Self::from_buffers(info, batch, 0, vec![Vec::new(); info.num_layers * 2])
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// A new cache from rows of existing ones, each right-aligned to the longest `len`.
    pub fn gather(info: &ModelInfo, rows: &[RowSource<'_>]) -> Result<Self, EngineError> {
        let width = rows.iter().map(|r| r.len).max().unwrap_or(0);
        if let Some(bad) = rows
            .iter()
            .find(|r| r.row >= r.cache.batch || r.len > r.cache.width)
        {
            return Err(EngineError::InvalidInput(format!(
                "row {} with {} positions is outside a cache of batch {} and width {}",
                bad.row, bad.len, bad.cache.batch, bad.cache.width
            )));
        }
        let (heads, dim) = (info.num_kv_heads, info.head_dim);
        let mut buffers = Vec::with_capacity(info.num_layers * 2);
        for t in 0..info.num_layers * 2 {
            let mut data = vec![0.0f32; rows.len() * heads * width * dim];
            for (dest, r) in rows.iter().enumerate() {
                let src = r.cache.layer(t)?;
                for h in 0..heads {
                    let from = ((r.row * heads + h) * r.cache.width + r.cache.width - r.len) * dim;
                    let to = ((dest * heads + h) * width + width - r.len) * dim;
                    data[to..to + r.len * dim].copy_from_slice(&src[from..from + r.len * dim]);
                }
            }
            buffers.push(data);
        }
        Self::from_buffers(info, rows.len(), width, buffers)
    }

    /// A one-row cache holding `kept`.
    pub fn from_kept(info: &ModelInfo, kept: &KeptKv) -> Result<Self, EngineError> {
        Self::from_buffers(info, 1, kept.len, kept.tensors.clone())
    }

    /// The last `len` positions of row 0.
    pub fn keep(&self, len: usize) -> Result<KeptKv, EngineError> {
        if self.batch == 0 || len > self.width {
            return Err(EngineError::InvalidInput(format!(
                "cannot keep {len} positions of a cache of batch {} and width {}",
                self.batch, self.width
            )));
        }
        let (heads, dim) = (self.kv_heads, self.head_dim);
        let tensors = (0..self.tensors.len())
            .map(|t| {
                let src = self.layer(t)?;
                let mut kept = Vec::with_capacity(heads * len * dim);
                for h in 0..heads {
                    let from = (h * self.width + self.width - len) * dim;
                    kept.extend_from_slice(&src[from..from + len * dim]);
                }
                Ok(kept)
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        Ok(KeptKv { tensors, len })
    }

    /// A cache of `batch` rows of `width` positions over the graph's `present.*` values.
    pub(crate) fn from_values(
        info: &ModelInfo,
        tensors: Vec<DynValue>,
        batch: usize,
        width: usize,
    ) -> Self {
        Self {
            tensors,
            batch,
            width,
            kv_heads: info.num_kv_heads,
            head_dim: info.head_dim,
        }
    }

    fn from_buffers(
        info: &ModelInfo,
        batch: usize,
        width: usize,
        buffers: Vec<Vec<f32>>,
    ) -> Result<Self, EngineError> {
        let shape = vec![batch, info.num_kv_heads, width, info.head_dim];
        let tensors = buffers
            .into_iter()
            .map(|d| owned_value(shape.clone(), d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_values(info, tensors, batch, width))
    }

    /// Tensor `t` (`[l0.key, l0.value, ...]` order) as a flat slice.
    fn layer(&self, t: usize) -> Result<&[f32], EngineError> {
        self.tensors[t]
            .try_extract_tensor::<f32>()
            .map(|(_, data)| data)
            .map_err(EngineError::inference)
    }
}
