//! The packed contract (our exporter's `--attention packed`, PACKED_CONTRACT in
//! `scripts/trendstory_tools/graph/packed_contract.py`): every row's new tokens in one sequence, so one `session.run` serves the
//! whole step; rows of one token (decoding) go through one fused `GroupQueryAttention` over
//! the first slots of a [`SlotCache`], longer ones (prompt chunks) through batch-1 prefill
//! lanes, each bound to its row's slot in the same buffers; logits only where asked.

use super::binding::{
    bind_pass_values, borrowed_f32_tensor, check_rows, pad_logits_index, PassBinding,
};
use super::{owned_value, OnnxModel, PassRow};
use crate::engine::{EngineError, SlotCache};

/// Input and output names of a packed graph, built once.
pub(super) struct PackedNames {
    /// Per lane: start, end, seqlens_k, total.
    pub(super) lane_inputs: Vec<[String; 4]>,
    /// Per lane, per tensor: its past and present.
    pub(super) lane_past: Vec<Vec<String>>,
    pub(super) lane_present: Vec<Vec<String>>,
}

impl PackedNames {
    /// The lane inputs and KV names of a graph with `lanes` prefill lanes; `tensor_names`
    /// lists a name per layer and key/value from a pattern.
    pub(super) fn new(
        lanes: usize,
        tensor_names: impl Fn(&dyn Fn(usize, &str) -> String) -> Vec<String>,
    ) -> Self {
        Self {
            lane_inputs: (0..lanes)
                .map(|k| ["start", "end", "seqlens_k", "total"].map(|n| format!("lane.{k}.{n}")))
                .collect(),
            lane_past: (0..lanes)
                .map(|k| tensor_names(&|i, kv| format!("lane.{k}.past.{i}.{kv}")))
                .collect(),
            lane_present: (0..lanes)
                .map(|k| tensor_names(&|i, kv| format!("lane.{k}.present.{i}.{kv}")))
                .collect(),
        }
    }
}

impl OnnxModel {
    /// Binds a pass's inputs: the small ones every time, the KV views only where they
    /// changed since the last pass over the same cache (the decode rows' span, each lane's
    /// slot), since a graph of 22 layers has hundreds of them.
    pub(super) fn bind_packed(
        &self,
        mut b: PassBinding,
        packed: &PackedInputs,
        cache: &mut SlotCache,
    ) -> Result<PassBinding, EngineError> {
        let fail = EngineError::inference;
        let small = [
            (
                "input_ids",
                owned_value(vec![1, packed.ids.len()], packed.ids.clone())?,
            ),
            (
                "decode_rows",
                owned_value(vec![packed.slots], packed.decode_rows.clone())?,
            ),
            (
                "decode_seqlens_k",
                owned_value(vec![packed.slots], packed.decode_seqlens.clone())?,
            ),
            (
                "decode_total",
                owned_value(vec![], vec![packed.decode_total])?,
            ),
            (
                "attn_order",
                owned_value(vec![packed.attn_order.len()], packed.attn_order.clone())?,
            ),
            (
                "logits_index",
                owned_value(vec![packed.logits_index.len()], packed.logits_index.clone())?,
            ),
        ];
        let memory = bind_pass_values(&mut b.binding, &small)?;
        for (names, lane) in self.packed.lane_inputs.iter().zip(&packed.lanes) {
            let values = [
                owned_value(vec![1], vec![lane.start as i64])?,
                owned_value(vec![1], vec![lane.end as i64])?,
                owned_value(vec![1], vec![lane.seqlens_k])?,
                owned_value(vec![], vec![lane.seqlens_k + 1])?,
            ];
            for (name, value) in names.iter().zip(&values) {
                b.binding.bind_input(name.as_str(), value).map_err(fail)?;
            }
        }
        // Every KV view is bound as both past and present: GroupQueryAttention then writes
        // the new positions into the same memory it reads.
        let bind_kv = |binding: &mut ort::session::IoBinding,
                       past: &str,
                       present: &str,
                       (data, shape): (*mut f32, [usize; 4])| {
            // SAFETY: `data` points into `cache`'s buffers (or its scratch), which are never
            // reallocated and live as long as the cache. The binding is used for a run only
            // with the cache it was made for (`cache_id`), so the views are valid whenever
            // ONNX Runtime reads or writes through them. They overlap only as
            // GroupQueryAttention's shared past/present, and the decode rows and the lanes
            // write disjoint positions.
            let (input, output) = unsafe {
                (
                    borrowed_f32_tensor(&memory, data, shape)?,
                    borrowed_f32_tensor(&memory, data, shape)?,
                )
            };
            binding.bind_input(past, &input).map_err(fail)?;
            binding.bind_output(present, output).map_err(fail)
        };
        for (k, lane) in packed.lanes.iter().enumerate() {
            let target = Some(lane.slot);
            if b.lanes[k] == target {
                continue;
            }
            for t in 0..self.past_names.len() {
                let view = match lane.slot {
                    Some(slot) => cache.view(t, slot..slot + 1)?,
                    None => cache.scratch(t, k),
                };
                let (past, present) = (
                    &self.packed.lane_past[k][t],
                    &self.packed.lane_present[k][t],
                );
                bind_kv(&mut b.binding, past, present, view)?;
            }
            b.lanes[k] = target;
        }
        if b.decode_slots != packed.slots {
            for t in 0..self.past_names.len() {
                let view = cache.view(t, 0..packed.slots)?;
                bind_kv(
                    &mut b.binding,
                    &self.past_names[t],
                    &self.present_names[t],
                    view,
                )?;
            }
            b.decode_slots = packed.slots;
        }
        Ok(b)
    }
}

/// A packed pass's inputs, laid out as the exporter's PACKED_CONTRACT says: one-token rows
/// first (the decode attention's tokens), then each longer row's chunk in a lane.
pub(super) struct PackedInputs {
    /// Slots bound to the decode attention: up to the highest slot in the pass.
    slots: usize,
    ids: Vec<i64>,
    decode_rows: Vec<i64>,
    decode_seqlens: Vec<i32>,
    decode_total: i32,
    lanes: Vec<LaneInput>,
    attn_order: Vec<i64>,
    logits_index: Vec<i64>,
    /// Rows asking for logits.
    pub(super) asked: usize,
}

/// One prefill lane: its packed positions `start..end` and its row's slot (`None`: unused,
/// one dummy token over a scratch slot).
struct LaneInput {
    slot: Option<usize>,
    start: usize,
    end: usize,
    seqlens_k: i32,
}

impl PackedInputs {
    pub(super) fn new(
        rows: &[PassRow],
        cache: &SlotCache,
        lanes: usize,
    ) -> Result<Self, EngineError> {
        let slots = rows.iter().map(|r| r.slot + 1).max().unwrap_or(0);
        check_rows(rows, cache, Some(slots))?;
        let long: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i].tokens.len() > 1)
            .collect();
        if long.len() > lanes {
            return Err(EngineError::InvalidInput(format!(
                "{} prompt chunks in one pass; the graph has {lanes} prefill lanes",
                long.len()
            )));
        }
        // A slot that does not decode still gets a write from the decode attention: at its
        // end (after its chunk, if any), a position nothing reads before it is rewritten.
        let mut inputs = Self {
            slots,
            ids: Vec::new(),
            decode_rows: vec![0; slots],
            decode_seqlens: (0..slots).map(|s| cache.end(s) as i32).collect(),
            decode_total: 0,
            lanes: Vec::with_capacity(lanes),
            attn_order: Vec::new(),
            logits_index: Vec::new(),
            asked: 0,
        };
        let mut position = vec![0; rows.len()];
        for (i, r) in rows.iter().enumerate().filter(|(_, r)| r.tokens.len() == 1) {
            position[i] = inputs.ids.len();
            inputs.decode_rows[r.slot] = inputs.ids.len() as i64;
            inputs.decode_seqlens[r.slot] = r.past as i32;
            inputs.attn_order.push(r.slot as i64);
            inputs.ids.push(i64::from(r.tokens[0]));
        }
        // The attention outputs are concatenated: the decode rows', then each lane's.
        let mut concat_at = slots;
        for k in 0..lanes {
            let lane = match long.get(k) {
                Some(&i) => {
                    let r = &rows[i];
                    let (start, n) = (inputs.ids.len(), r.tokens.len());
                    position[i] = start;
                    inputs.ids.extend(r.tokens.iter().map(|&t| i64::from(t)));
                    inputs
                        .attn_order
                        .extend((concat_at..concat_at + n).map(|a| a as i64));
                    inputs.decode_seqlens[r.slot] = (r.past + n) as i32;
                    LaneInput {
                        slot: Some(r.slot),
                        start,
                        end: start + n,
                        seqlens_k: (r.past + n - 1) as i32,
                    }
                }
                None => LaneInput {
                    slot: None,
                    start: 0,
                    end: 1,
                    seqlens_k: 0,
                },
            };
            concat_at += lane.end - lane.start;
            inputs.lanes.push(lane);
        }
        inputs.decode_total = inputs.decode_seqlens.iter().copied().max().unwrap_or(0) + 1;
        for (i, r) in rows.iter().enumerate().filter(|(_, r)| r.logits) {
            inputs
                .logits_index
                .push((position[i] + r.tokens.len() - 1) as i64);
        }
        inputs.asked = pad_logits_index(&mut inputs.logits_index);
        Ok(inputs)
    }
}
