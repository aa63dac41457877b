//! [`SlotCache`]: the KV cache of a packed graph. One buffer per layer and key/value, shaped
//! `[slots, kv_heads, capacity, head_dim]`, allocated once; slot `s`'s real positions are
//! `0..ends[s]`. A pass binds the first rows' slots as the decode node's past and present,
//! and one slot per prefill lane, so ONNX Runtime writes each new position in place: nothing
//! is copied on a step, and a sequence joining or leaving touches only its own slot.
//!
//! The buffers are virtual memory until written: a freed slot's pages are handed back to the
//! kernel (`madvise(MADV_DONTNEED)`), so the resident KV follows the positions in use, not the
//! slots times their capacity.

use super::prefix_sharing::KeptKv;
use super::{EngineError, ModelInfo};

/// Distinguishes caches, so a binding made for one is never used with another.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// See the module doc.
pub struct SlotCache {
    /// Unique per cache: what a kept IoBinding's views point into.
    id: u64,
    buffers: Vec<Vec<f32>>,
    slots: usize,
    capacity: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Per slot, the end (exclusive) of its real positions.
    ends: Vec<usize>,
    /// One `[1, kv_heads, 1, head_dim]` slot per unused lane and tensor: an unused lane writes
    /// its dummy token there.
    scratch: Vec<Vec<f32>>,
}

impl SlotCache {
    /// A cache of `slots` slots of `capacity` positions, with scratch for `lanes` lanes.
    pub fn new(info: &ModelInfo, slots: usize, capacity: usize, lanes: usize) -> Self {
        let slot = info.num_kv_heads * capacity * info.head_dim;
        let tensors = info.num_layers * 2;
        Self {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            // Zeroed allocations come from fresh pages: untouched capacity costs no memory.
            buffers: (0..tensors).map(|_| vec![0.0f32; slots * slot]).collect(),
            slots,
            capacity,
            kv_heads: info.num_kv_heads,
            head_dim: info.head_dim,
            ends: vec![0; slots],
            scratch: (0..tensors * lanes)
                .map(|_| vec![0.0f32; info.num_kv_heads * info.head_dim])
                .collect(),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Real positions of `slot`.
    pub fn end(&self, slot: usize) -> usize {
        self.ends[slot]
    }

    pub(crate) fn set_end(&mut self, slot: usize, end: usize) {
        self.ends[slot] = end;
    }

    /// Floats in one slot of one tensor.
    fn slot_len(&self) -> usize {
        self.kv_heads * self.capacity * self.head_dim
    }

    /// Tensor `t` (`[l0.key, l0.value, l1.key, ...]` order) over `slots`, as a pointer to
    /// `[slots.len(), kv_heads, capacity, head_dim]` floats, for binding to a pass: ONNX
    /// Runtime reads and writes the memory through it. The pointer is valid while `self` is
    /// neither moved nor dropped (the buffers are never reallocated).
    pub(crate) fn view(
        &mut self,
        t: usize,
        slots: std::ops::Range<usize>,
    ) -> Result<(*mut f32, [usize; 4]), EngineError> {
        if slots.is_empty() || slots.end > self.slots || t >= self.buffers.len() {
            return Err(EngineError::InvalidInput(format!(
                "slots {slots:?} of tensor {t} are outside a cache of {} slots",
                self.slots
            )));
        }
        let len = self.slot_len();
        let shape = [slots.len(), self.kv_heads, self.capacity, self.head_dim];
        Ok((self.buffers[t][slots.start * len..].as_mut_ptr(), shape))
    }

    /// Lane `lane`'s scratch slot of tensor `t`, as a pointer to `[1, kv_heads, 1, head_dim]`
    /// floats, valid as [`Self::view`]'s.
    pub(crate) fn scratch(&mut self, t: usize, lane: usize) -> (*mut f32, [usize; 4]) {
        let tensors = self.buffers.len();
        let shape = [1, self.kv_heads, 1, self.head_dim];
        (self.scratch[lane * tensors + t].as_mut_ptr(), shape)
    }

    /// Copies `kept` into `slot`'s first positions; the slot then holds exactly those.
    pub fn adopt(&mut self, slot: usize, kept: &KeptKv) -> Result<(), EngineError> {
        self.check(slot, kept.len)?;
        let (heads, dim, capacity, len) = (self.kv_heads, self.head_dim, self.capacity, kept.len);
        for (buffer, source) in self.buffers.iter_mut().zip(&kept.tensors) {
            for h in 0..heads {
                let to = (slot * heads + h) * capacity * dim;
                let from = h * len * dim;
                buffer[to..to + len * dim].copy_from_slice(&source[from..from + len * dim]);
            }
        }
        self.ends[slot] = len;
        Ok(())
    }

    /// A copy of `slot`'s first `len` positions.
    pub fn keep(&self, slot: usize, len: usize) -> Result<KeptKv, EngineError> {
        self.check(slot, len)?;
        if len > self.ends[slot] {
            return Err(EngineError::InvalidInput(format!(
                "slot {slot} holds {} positions, not {len}",
                self.ends[slot]
            )));
        }
        let (heads, dim, capacity) = (self.kv_heads, self.head_dim, self.capacity);
        let tensors = self
            .buffers
            .iter()
            .map(|buffer| {
                let mut kept = Vec::with_capacity(heads * len * dim);
                for h in 0..heads {
                    let from = (slot * heads + h) * capacity * dim;
                    kept.extend_from_slice(&buffer[from..from + len * dim]);
                }
                kept
            })
            .collect();
        Ok(KeptKv { tensors, len })
    }

    /// Forgets `slot`'s positions and returns its memory to the kernel.
    pub fn free(&mut self, slot: usize) {
        if slot >= self.slots {
            return;
        }
        self.ends[slot] = 0;
        let len = self.slot_len();
        for buffer in &mut self.buffers {
            release(&mut buffer[slot * len..(slot + 1) * len]);
        }
    }

    fn check(&self, slot: usize, len: usize) -> Result<(), EngineError> {
        if slot >= self.slots || len > self.capacity {
            return Err(EngineError::InvalidInput(format!(
                "{len} positions in slot {slot} do not fit {} slots of {}",
                self.slots, self.capacity
            )));
        }
        Ok(())
    }
}

/// Hands the whole pages inside `data` back to the kernel; they read as zero afterwards.
fn release(data: &mut [f32]) {
    const PAGE: usize = 4096;
    let start = data.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(data);
    let (first, last) = (start.next_multiple_of(PAGE), end / PAGE * PAGE);
    if last > first {
        // SAFETY: [first, last) lies inside `data`, which we borrow mutably, so nothing else
        // reads it meanwhile; MADV_DONTNEED on private anonymous memory only replaces its
        // contents with zeroes, a valid value for f32. A failure leaves the pages as they were.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_DONTNEED,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl SlotCache {
        fn slot_mut(&mut self, t: usize, slot: usize) -> &mut [f32] {
            let len = self.slot_len();
            &mut self.buffers[t][slot * len..(slot + 1) * len]
        }
    }

    fn info() -> ModelInfo {
        ModelInfo {
            dir: std::path::PathBuf::new(),
            model_id: "test".into(),
            random_weights: true,
            source: None,
            sampling: Default::default(),
            num_layers: 1,
            num_kv_heads: 2,
            head_dim: 4,
            vocab_size: 10,
            max_position_embeddings: 64,
            bos_token_id: 1,
            eos_token_id: 2,
        }
    }

    #[test]
    fn a_kept_prefix_round_trips_through_another_slot() {
        let mut cache = SlotCache::new(&info(), 3, 8, 1);
        for t in 0..2 {
            for (i, x) in cache.slot_mut(t, 1).iter_mut().enumerate() {
                *x = (t * 1000 + i) as f32;
            }
        }
        cache.set_end(1, 5);
        let kept = cache.keep(1, 3).unwrap();
        cache.adopt(2, &kept).unwrap();
        assert_eq!(cache.end(2), 3);
        for t in 0..2 {
            let one = cache.slot_mut(t, 1).to_vec();
            let two = cache.slot_mut(t, 2);
            for h in 0..2 {
                let head = h * 8 * 4;
                assert_eq!(two[head..head + 12], one[head..head + 12], "head {h}");
                assert!(two[head + 12..head + 32].iter().all(|&x| x == 0.0));
            }
        }
        assert!(cache.keep(1, 6).is_err(), "more than the slot holds");
        assert!(cache.adopt(3, &kept).is_err(), "no such slot");
        assert!(cache.view(0, 2..4).is_err() && cache.view(0, 1..3).is_ok());
    }

    #[test]
    fn a_freed_slot_reads_as_zero_and_leaves_the_others() {
        // Big enough for whole pages inside a slot.
        let mut cache = SlotCache::new(&info(), 2, 1024, 1);
        for slot in 0..2 {
            cache.slot_mut(0, slot).fill(1.0);
            cache.set_end(slot, 10);
        }
        cache.free(0);
        assert_eq!(cache.end(0), 0);
        assert!(cache.slot_mut(0, 0).iter().all(|&x| x == 0.0 || x == 1.0));
        let released = cache.slot_mut(0, 0).iter().filter(|&&x| x == 0.0).count();
        assert!(released > 1024, "whole pages were released: {released}");
        assert!(cache.slot_mut(0, 1).iter().all(|&x| x == 1.0));
        assert_eq!(cache.end(1), 10);
    }
}
