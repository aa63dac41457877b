//! What the packed and slots contracts share: a pass's IoBinding, kept from one pass to the
//! next, the checks of a pass's rows, and ONNX Runtime values over the cache's memory.

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::value::DynValue;
use ort::AsPointer;

use super::PassRow;
use crate::engine::{EngineError, SlotCache};

/// A packed or slots graph's IoBinding, kept from one pass to the next over the same cache.
pub(super) struct PassBinding {
    pub(super) binding: ort::session::IoBinding,
    /// The [`SlotCache`] its KV views point into.
    pub(super) cache_id: u64,
    /// Slots bound as KV inputs (0: none yet): packed graphs, the decode attention's first
    /// slots; slots graphs, the whole cache.
    pub(super) decode_slots: usize,
    /// Per lane, what its KV views are bound to: `Some(Some(slot))`, `Some(None)` for the
    /// scratch slot, `None` when not bound yet.
    pub(super) lanes: Vec<Option<Option<usize>>>,
}

/// Checks that a pass's rows are distinct slots of `cache` whose new tokens fit after the
/// positions they hold. Packed graphs give `decode_slots`: every slot below it must have room
/// for the decode attention's write at its end, one past the row's last position.
pub(super) fn check_rows(
    rows: &[PassRow],
    cache: &SlotCache,
    decode_slots: Option<usize>,
) -> Result<(), EngineError> {
    let bad = |why: String| Err(EngineError::InvalidInput(why));
    let slots = decode_slots.unwrap_or(cache.slots());
    // The decode attention writes one position past each slot's end.
    let room = usize::from(decode_slots.is_some());
    if rows.is_empty() || slots > cache.slots() || rows.iter().any(|r| r.slot >= slots) {
        return bad(format!(
            "a pass needs rows in the cache's {} slots",
            cache.slots()
        ));
    }
    let mut seen = vec![false; slots];
    for r in rows {
        let fits =
            r.past + r.tokens.len() + room <= cache.capacity() && r.past == cache.end(r.slot);
        if r.tokens.is_empty() || !fits || seen[r.slot] {
            return bad(format!(
                "the row of slot {} ({} tokens after {}) does not fit a slot holding {} of {} positions, or is in the pass twice",
                r.slot,
                r.tokens.len(),
                r.past,
                cache.end(r.slot),
                cache.capacity()
            ));
        }
        seen[r.slot] = true;
    }
    match (0..decode_slots.unwrap_or(0)).find(|&s| cache.end(s) + 1 >= cache.capacity()) {
        Some(full) => bad(format!(
            "slot {full} is full ({} positions)",
            cache.end(full)
        )),
        None => Ok(()),
    }
}

/// Binds a pass's small inputs (remade every pass) and its logits output, bound anew each
/// pass: a bound output keeps its first shape, and the logits' count changes from pass to
/// pass. Returns where they live, for the KV views.
pub(super) fn bind_pass_values(
    binding: &mut ort::session::IoBinding,
    small: &[(&str, DynValue)],
) -> Result<MemoryInfo<'static>, EngineError> {
    let fail = EngineError::inference;
    for (name, value) in small {
        binding.bind_input(*name, value).map_err(fail)?;
    }
    let memory = cpu_memory()?;
    binding
        .bind_output_to_device("logits", &memory)
        .map_err(fail)?;
    Ok(memory)
}

/// The number of rows asking for logits (`index`'s positions); a pass where none asks gets
/// position 0, since lm_head needs a position to run on (those logits are not read).
pub(super) fn pad_logits_index(index: &mut Vec<i64>) -> usize {
    let asked = index.len();
    if asked == 0 {
        index.push(0);
    }
    asked
}

/// Where the engine's tensors live: the CPU's memory.
fn cpu_memory() -> Result<MemoryInfo<'static>, EngineError> {
    MemoryInfo::new(
        AllocationDevice::CPU,
        0,
        AllocatorType::Device,
        MemoryType::Default,
    )
    .map_err(EngineError::inference)
}

/// An ONNX Runtime float tensor of `shape` over CPU memory (`memory`) it does not own.
///
/// # Safety
/// `data` must point to at least `shape`'s element count of floats that stay valid, and
/// unmoved, for as long as the returned value lives.
pub(super) unsafe fn borrowed_f32_tensor(
    memory: &MemoryInfo,
    data: *mut f32,
    shape: [usize; 4],
) -> Result<DynValue, EngineError> {
    let dims = shape.map(|d| d as i64);
    let bytes = shape.iter().product::<usize>() * std::mem::size_of::<f32>();
    let mut value: *mut ort::sys::OrtValue = std::ptr::null_mut();
    // SAFETY: `memory` and `dims` are valid for the call; the caller vouches for `data`.
    let status = unsafe {
        (ort::api().CreateTensorWithDataAsOrtValue)(
            memory.ptr(),
            data.cast(),
            bytes,
            dims.as_ptr(),
            dims.len(),
            ort::sys::ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
            &mut value,
        )
    };
    // SAFETY: the status comes straight from the API call above.
    unsafe { ort::Error::result_from_status(status) }.map_err(EngineError::inference)?;
    let value = std::ptr::NonNull::new(value)
        .ok_or_else(|| EngineError::inference("ONNX Runtime returned no tensor"))?;
    // SAFETY: `value` is a tensor we own; releasing it leaves `data` alone, since ONNX Runtime
    // does not own memory given to CreateTensorWithDataAsOrtValue.
    Ok(unsafe { DynValue::from_ptr(value, Some(&Allocator::default())) })
}
