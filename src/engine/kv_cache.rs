//! Key/value tensors of every layer, carried from one forward pass to the next, in the
//! layout the graph's attention asks for ([`KvLayout`]).
//!
//! - `Padded` (explicit attention, the optimum contract): ONNX Runtime values shaped
//!   `[batch, kv_heads, past_len, head_dim]`; the graph returns `present.*` as the
//!   concatenation of the past and the new positions, so a step's outputs are the next step's
//!   inputs unchanged. Rows shorter than the longest are left-padded (the mask hides it).
//! - `Slots` (fused `GroupQueryAttention`): one buffer per layer and key/value shaped
//!   `[slots, kv_heads, capacity, head_dim]`, bound as both past and present, so a step writes
//!   only its new positions, in place. Row `r`'s real positions are `0..len` of slot `r`; a
//!   sequence joining or leaving the batch touches only its own slot.
//!
//! Either way a row's real positions are contiguous and end at `ends[row]`.

use ort::value::{DynValue, Tensor};

use super::{EngineError, ModelInfo};

/// Which KV layout a graph takes; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvLayout {
    Padded,
    Slots,
}

/// The KV cache of a batch, stored per layer as `[l0.key, l0.value, l1.key, ...]`.
pub struct KvCache {
    pub(crate) storage: KvStorage,
    /// Rows (sequences) the cache holds.
    pub(crate) batch: usize,
    /// Per row, the end (exclusive) of its real positions.
    pub(crate) ends: Vec<usize>,
}

pub(crate) enum KvStorage {
    /// `[batch, kv_heads, past_len, head_dim]` ONNX Runtime values.
    Padded {
        tensors: Vec<DynValue>,
        past_len: usize,
    },
    /// `[batch, kv_heads, capacity, head_dim]` buffers: one slot per row.
    Slots {
        buffers: Vec<Vec<f32>>,
        capacity: usize,
    },
}

impl KvCache {
    /// A cache with no past positions, for the first (prefill) step of `batch` rows; a slot
    /// cache starts with room for `capacity` positions per row.
    pub fn empty(
        layout: KvLayout,
        info: &ModelInfo,
        batch: usize,
        capacity: usize,
    ) -> Result<Self, EngineError> {
        let storage = match layout {
            KvLayout::Padded => {
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
                KvStorage::Padded {
                    tensors,
                    past_len: 0,
                }
            }
            KvLayout::Slots => KvStorage::Slots {
                buffers: slot_buffers(info, batch, capacity),
                capacity,
            },
        };
        Ok(Self {
            storage,
            batch,
            ends: vec![0; batch],
        })
    }

    pub fn layout(&self) -> KvLayout {
        match self.storage {
            KvStorage::Padded { .. } => KvLayout::Padded,
            KvStorage::Slots { .. } => KvLayout::Slots,
        }
    }

    /// Number of rows (sequences) the cache holds.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Positions per row the storage spans: the padded length, or a slot's capacity.
    pub fn width(&self) -> usize {
        match &self.storage {
            KvStorage::Padded { past_len, .. } => *past_len,
            KvStorage::Slots { capacity, .. } => *capacity,
        }
    }

    /// Builds a new batch cache from rows of existing caches (all of one layout). Each row
    /// keeps its last `len` real positions. Padded: right-aligned to the longest `len`, the
    /// rest zero padding the mask hides. Slots: each row at the start of its own slot, with
    /// room for `capacity` positions (at least the longest `len`). This is where the
    /// engine copies KV data: when rows join a batch, never on an ordinary decode step.
    pub fn gather(
        info: &ModelInfo,
        rows: &[RowSource<'_>],
        capacity: usize,
    ) -> Result<Self, EngineError> {
        let longest = rows.iter().map(|r| r.len).max().unwrap_or(0);
        let batch = rows.len();
        let starts = rows
            .iter()
            .map(RowSource::start)
            .collect::<Result<Vec<_>, _>>()?;
        let layout = rows.first().map_or(KvLayout::Padded, |r| r.cache.layout());
        if rows.iter().any(|r| r.cache.layout() != layout) {
            return Err(EngineError::InvalidInput(
                "cannot gather rows of different KV layouts".into(),
            ));
        }
        let (width, aligned_right) = match layout {
            KvLayout::Padded => (longest, true),
            KvLayout::Slots => (capacity.max(longest), false),
        };
        let mut data: Vec<Vec<f32>> = slot_buffers(info, batch, width);
        for (t, buffer) in data.iter_mut().enumerate() {
            for (dest, (r, &start)) in rows.iter().zip(&starts).enumerate() {
                let at = if aligned_right { width - r.len } else { 0 };
                let src = r.cache.layer(t)?;
                copy_positions(
                    info,
                    (src, r.cache.width(), r.row, start),
                    (buffer, width, dest, at),
                    r.len,
                );
            }
        }
        let (storage, ends) = match layout {
            KvLayout::Padded => {
                let shape = [batch, info.num_kv_heads, width, info.head_dim];
                let tensors = data
                    .into_iter()
                    .map(|d| {
                        Tensor::<f32>::from_array((shape, d))
                            .map(|t| t.into_dyn())
                            .map_err(EngineError::inference)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                (
                    KvStorage::Padded {
                        tensors,
                        past_len: width,
                    },
                    vec![width; batch],
                )
            }
            KvLayout::Slots => (
                KvStorage::Slots {
                    buffers: data,
                    capacity: width,
                },
                rows.iter().map(|r| r.len).collect(),
            ),
        };
        Ok(Self {
            storage,
            batch,
            ends,
        })
    }

    /// Slot caches only: writes `source`'s last `len` positions into slot `row` (a free
    /// slot, or one past the last row), growing the capacity to `capacity` first if it is
    /// smaller. Only that slot is written, unless the capacity grows.
    pub fn place(
        &mut self,
        info: &ModelInfo,
        row: usize,
        source: &RowSource<'_>,
        capacity: usize,
    ) -> Result<(), EngineError> {
        let start = source.start()?;
        if row > self.batch {
            return Err(EngineError::InvalidInput(format!(
                "cannot place a row at {row} in a batch of {}",
                self.batch
            )));
        }
        self.reserve(info, row + 1, capacity.max(source.len))?;
        let width = self.width();
        let KvStorage::Slots { buffers, .. } = &mut self.storage else {
            return Err(EngineError::InvalidInput(
                "rows are placed into slot caches only".into(),
            ));
        };
        for (t, buffer) in buffers.iter_mut().enumerate() {
            let src = source.cache.layer(t)?;
            copy_positions(
                info,
                (src, source.cache.width(), source.row, start),
                (buffer, width, row, 0),
                source.len,
            );
        }
        self.ends[row] = source.len;
        Ok(())
    }

    /// Slot caches only: makes room for `rows` rows of `capacity` positions. Adding rows
    /// extends the buffers at the end; a larger capacity relays every slot out (a copy).
    pub(crate) fn reserve(
        &mut self,
        info: &ModelInfo,
        rows: usize,
        capacity: usize,
    ) -> Result<(), EngineError> {
        let KvStorage::Slots {
            buffers,
            capacity: current,
        } = &mut self.storage
        else {
            return Err(EngineError::InvalidInput(
                "only slot caches can grow in place".into(),
            ));
        };
        let slot = info.num_kv_heads * *current * info.head_dim;
        if capacity > *current {
            let mut grown = slot_buffers(info, rows.max(self.batch), capacity);
            for (old, new) in buffers.iter().zip(grown.iter_mut()) {
                for row in 0..self.batch {
                    copy_positions(
                        info,
                        (old, *current, row, 0),
                        (new, capacity, row, 0),
                        self.ends[row],
                    );
                }
            }
            *buffers = grown;
            *current = capacity;
        } else if rows > self.batch {
            for buffer in buffers.iter_mut() {
                buffer.resize(rows * slot, 0.0);
            }
        }
        if rows > self.batch {
            self.ends.resize(rows, 0);
            self.batch = rows;
        }
        Ok(())
    }

    /// Slot caches only: forgets the rows from `rows` on (their slots become free space).
    pub(crate) fn truncate(&mut self, info: &ModelInfo, rows: usize) {
        if let KvStorage::Slots { buffers, capacity } = &mut self.storage {
            if rows < self.batch {
                let slot = info.num_kv_heads * *capacity * info.head_dim;
                for buffer in buffers.iter_mut() {
                    buffer.truncate(rows * slot);
                }
                self.ends.truncate(rows);
                self.batch = rows;
            }
        }
    }

    /// Layer tensor `t` (`[l0.key, l0.value, ...]` order) as a flat slice.
    fn layer(&self, t: usize) -> Result<&[f32], EngineError> {
        match &self.storage {
            KvStorage::Padded { tensors, .. } => tensors[t]
                .try_extract_tensor::<f32>()
                .map(|(_, data)| data)
                .map_err(EngineError::inference),
            KvStorage::Slots { buffers, .. } => Ok(&buffers[t]),
        }
    }
}

/// Zeroed `[rows, kv_heads, width, head_dim]` buffers, one per layer and key/value. The
/// zeroes come from the allocator's fresh pages, so untouched capacity costs no memory.
fn slot_buffers(info: &ModelInfo, rows: usize, width: usize) -> Vec<Vec<f32>> {
    let len = rows * info.num_kv_heads * width * info.head_dim;
    (0..info.num_layers * 2)
        .map(|_| vec![0.0f32; len])
        .collect()
}

/// Copies `n` positions of every kv head: from `(data, width, row, position)` of one
/// `[rows, kv_heads, width, head_dim]` buffer to another.
fn copy_positions(
    info: &ModelInfo,
    (src, src_width, src_row, src_at): (&[f32], usize, usize, usize),
    (dst, dst_width, dst_row, dst_at): (&mut [f32], usize, usize, usize),
    n: usize,
) {
    let (heads, dim) = (info.num_kv_heads, info.head_dim);
    for h in 0..heads {
        let from = ((src_row * heads + h) * src_width + src_at) * dim;
        let to = ((dst_row * heads + h) * dst_width + dst_at) * dim;
        dst[to..to + n * dim].copy_from_slice(&src[from..from + n * dim]);
    }
}

/// One row to take into a gathered cache: `cache`'s row `row`, whose last `len` real
/// positions (ending at the cache's `ends[row]`) are kept.
pub struct RowSource<'a> {
    pub cache: &'a KvCache,
    pub row: usize,
    pub len: usize,
}

impl RowSource<'_> {
    /// The position of the row's first kept token, once the row is checked to be in the
    /// cache with at least `len` real positions.
    fn start(&self) -> Result<usize, EngineError> {
        match self.cache.ends.get(self.row) {
            Some(&end) if self.len <= end => Ok(end - self.len),
            _ => Err(EngineError::InvalidInput(format!(
                "row {} with {} positions is outside a cache of batch {}",
                self.row, self.len, self.cache.batch
            ))),
        }
    }
}
