//! The slots contract (our exporter's `--attention slots`, SLOTS_CONTRACT in
//! `scripts/trendstory_tools/graph/slots_contract.py`): the packed pass
//! with our own attention operator ([`crate::engine::attention`]): the rows' tokens one row
//! after another, a descriptor per row, and one node per layer over the whole [`SlotCache`],
//! bound once; the nodes write the new KV in place.

use super::binding::{
    bind_pass_values, borrowed_f32_tensor, check_rows, pad_logits_index, PassBinding,
};
use super::{owned_value, OnnxModel, PassRow};
use crate::engine::{EngineError, SlotCache};

impl OnnxModel {
    /// Binds a slots pass: its three small inputs, the logits, and the whole cache as the
    /// KV inputs the first time (the attention nodes write into them in place).
    pub(super) fn bind_slots(
        &self,
        mut b: PassBinding,
        inputs: &SlotsInputs,
        cache: &mut SlotCache,
    ) -> Result<PassBinding, EngineError> {
        let fail = EngineError::inference;
        let small = [
            (
                "input_ids",
                owned_value(vec![1, inputs.ids.len()], inputs.ids.clone())?,
            ),
            (
                "rows",
                owned_value(vec![inputs.rows.len() / 4, 4], inputs.rows.clone())?,
            ),
            (
                "logits_index",
                owned_value(vec![inputs.logits_index.len()], inputs.logits_index.clone())?,
            ),
        ];
        let memory = bind_pass_values(&mut b.binding, &small)?;
        if b.decode_slots != cache.slots() {
            for (t, name) in self.past_names.iter().enumerate() {
                let (data, shape) = cache.view(t, 0..cache.slots())?;
                // SAFETY: as in `bind_packed`: the view lies in `cache`'s buffers, never reallocated,
                // and the binding runs only with the cache it was made for (`cache_id`).
                let view = unsafe { borrowed_f32_tensor(&memory, data, shape)? };
                b.binding.bind_input(name.as_str(), &view).map_err(fail)?;
            }
            b.decode_slots = cache.slots();
        }
        Ok(b)
    }
}

/// A slots pass's inputs (SLOTS_CONTRACT): the rows' tokens one row after another.
pub(super) struct SlotsInputs {
    ids: Vec<i64>,
    /// `[rows, 4]`: slot, past, start, count.
    rows: Vec<i64>,
    logits_index: Vec<i64>,
    /// Rows asking for logits.
    pub(super) asked: usize,
}

impl SlotsInputs {
    pub(super) fn new(rows: &[PassRow], cache: &SlotCache) -> Result<Self, EngineError> {
        check_rows(rows, cache, None)?;
        let mut inputs = Self {
            ids: Vec::new(),
            rows: Vec::with_capacity(rows.len() * 4),
            logits_index: Vec::new(),
            asked: 0,
        };
        for r in rows {
            let start = inputs.ids.len();
            inputs.ids.extend(r.tokens.iter().map(|&t| i64::from(t)));
            inputs
                .rows
                .extend([r.slot, r.past, start, r.tokens.len()].map(|x| x as i64));
            if r.logits {
                inputs.logits_index.push(inputs.ids.len() as i64 - 1);
            }
        }
        inputs.asked = pad_logits_index(&mut inputs.logits_index);
        Ok(inputs)
    }
}
