//! One ONNX Runtime session of a decoder-with-past graph and its forward pass.
//!
//! Two graph contracts, told apart by the inputs:
//! - explicit attention, the one of optimum / transformers.js exports: `input_ids`,
//!   `attention_mask`, optional `position_ids`, and `past_key_values.{i}.key|value`; the
//!   cache is left-padded ([`PaddedCache`]) and `present.*` is past and new concatenated;
//! - packed (our exporter's default, `scripts/export_onnx.py` PACKED_CONTRACT): every row's
//!   new tokens in one sequence, so one `session.run` serves the whole step; rows of one token
//!   (decoding) go through one fused `GroupQueryAttention` over the first slots of a
//!   [`SlotCache`], longer ones (prompt chunks) through batch-1 prefill lanes, each bound to
//!   its row's slot in the same buffers; logits only where asked;
//! - slots (`--attention slots`, SLOTS_CONTRACT): the packed pass with our own attention
//!   operator ([`super::attention`]): the rows' tokens one row after another, a descriptor per
//!   row, and one node per layer over the whole [`SlotCache`], bound once.
//!
//! Names are checked once at load, so a foreign graph fails with a clear error instead of at
//! the first request.

use std::borrow::Cow;

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, PrimitiveTensorElementType, Tensor};
use ort::AsPointer;

use super::{attention, resident_weights, EngineError, ModelInfo, PaddedCache, SlotCache};
use crate::config::RuntimeConfig;

/// Knobs of one session; the engine picks them from the configuration.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Intra-op threads; 0 means one per available core.
    pub intra_threads: usize,
    /// Let idle pool threads spin between ops (lower latency, busier cores).
    pub spin_threads: bool,
    /// Write ONNX Runtime's profile (every node of every run) to a file starting with this;
    /// benchmarks only.
    pub profile_prefix: Option<std::path::PathBuf>,
}

impl SessionOptions {
    /// The session settings the inference configuration asks for.
    pub fn from_config(config: &crate::config::InferenceConfig) -> Self {
        Self {
            intra_threads: config.resolved_threads_per_worker(),
            spin_threads: config.spin_threads,
            profile_prefix: None,
        }
    }
}

/// Which KV cache a graph takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvLayout {
    /// [`PaddedCache`]: explicit attention.
    Padded,
    /// [`SlotCache`]: packed graphs.
    Slots,
}

/// Inputs of an explicit-attention pass: `seq_len` new tokens for each of `batch` rows.
#[derive(Debug, Clone)]
pub struct StepInput {
    pub batch: usize,
    pub seq_len: usize,
    /// `[batch, seq_len]` token ids.
    pub input_ids: Vec<i64>,
    /// Per row, its real positions in the cache (right-aligned; the rest is padding).
    pub past: Vec<usize>,
}

/// One row's part of a packed pass: `tokens` after the `past` positions its slot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassRow {
    pub slot: usize,
    pub past: usize,
    pub tokens: Vec<u32>,
    /// Whether the pass returns the logits of its last token.
    pub logits: bool,
}

/// Creates an ONNX Runtime session for the graph at `path` with our settings: all graph
/// optimizations, the configured intra-op threads and spinning, and our operators.
pub fn open_session(
    path: &std::path::Path,
    runtime: &RuntimeConfig,
    options: &SessionOptions,
) -> Result<Session, EngineError> {
    let env = crate::runtime::environment(runtime)?;
    let fail = |reason: String| EngineError::SessionLoad {
        path: path.to_path_buf(),
        reason,
    };
    let threads = match options.intra_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut builder = Session::builder(&env)
        .map_err(|e| fail(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| fail(e.to_string()))?
        .with_intra_threads(threads)
        .map_err(|e| fail(e.to_string()))?
        .with_intra_op_spinning(options.spin_threads)
        .map_err(|e| fail(e.to_string()))?
        .with_operators(attention::domain().map_err(|e| fail(e.to_string()))?)
        .map_err(|e| fail(e.to_string()))?;
    if let Some(prefix) = &options.profile_prefix {
        builder = builder
            .with_profiling(prefix)
            .map_err(|e| fail(e.to_string()))?;
    }
    // ONNX Runtime registers a custom operator domain in a process-wide table, checking
    // and adding in two steps: two sessions loading at once can both try to add ours and
    // one fails ("domain is already exist"). Sessions load rarely, so they load one at a time.
    static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = LOADING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let session = builder
        .commit_from_file(path)
        .map_err(|e| fail(e.to_string()))?;
    if let Some(dir) = path.parent() {
        match resident_weights::make_resident(dir) {
            Ok(bytes) => tracing::info!(
                mib = bytes / (1 << 20),
                "weights read in place from the model files made resident"
            ),
            Err(e) => tracing::warn!(error = %e, "could not make the mapped weights resident"),
        }
    }
    Ok(session)
}

/// How a graph is fed, told by its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contract {
    /// The optimum contract: `attention_mask` (+ optional `position_ids`), a padded cache.
    Explicit { has_position_ids: bool },
    /// Our one-pass graph with `lanes` prefill lanes, a slot cache.
    Packed { lanes: usize },
    /// Our one-pass graph with our attention operator, a slot cache.
    Slots,
}

/// Input and output names of a packed graph, built once.
struct PackedNames {
    /// Per lane: start, end, seqlens_k, total.
    lane_inputs: Vec<[String; 4]>,
    /// Per lane, per tensor: its past and present.
    lane_past: Vec<Vec<String>>,
    lane_present: Vec<Vec<String>>,
}

/// A loaded model: its session plus what is needed to feed it.
pub struct OnnxModel {
    session: Session,
    /// Time spent inside `session.run`, so benchmarks can tell the engine's own overhead.
    run_time: std::time::Duration,
    /// `session.run` calls since load: one per step on packed graphs.
    runs: u64,
    info: ModelInfo,
    contract: Contract,
    past_names: Vec<String>,
    present_names: Vec<String>,
    packed: PackedNames,
    /// Packed graphs: the binding of the last pass, reused by the next one.
    binding: Option<PackedBinding>,
}

impl OnnxModel {
    /// Creates the session for `info`'s `model.onnx` and checks the graph's inputs and
    /// outputs against one of the two contracts and the model's layer count.
    pub fn load(
        info: &ModelInfo,
        runtime: &RuntimeConfig,
        options: &SessionOptions,
    ) -> Result<Self, EngineError> {
        let path = info.model_path();
        let session = open_session(&path, runtime, options)?;

        let inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let lanes = (0..)
            .take_while(|k| inputs.contains(&format!("lane.{k}.start").as_str()))
            .count();
        let contract = if inputs.contains(&"decode_rows") {
            Contract::Packed { lanes }
        } else if inputs.contains(&"rows") {
            Contract::Slots
        } else {
            Contract::Explicit {
                has_position_ids: inputs.contains(&"position_ids"),
            }
        };
        let tensor_names = |pattern: &dyn Fn(usize, &str) -> String| -> Vec<String> {
            (0..info.num_layers)
                .flat_map(|i| ["key", "value"].map(|kv| pattern(i, kv)))
                .collect()
        };
        let past_names = tensor_names(&|i, kv| format!("past_key_values.{i}.{kv}"));
        let present_names = tensor_names(&|i, kv| format!("present.{i}.{kv}"));
        let packed = PackedNames {
            lane_inputs: (0..lanes)
                .map(|k| ["start", "end", "seqlens_k", "total"].map(|n| format!("lane.{k}.{n}")))
                .collect(),
            lane_past: (0..lanes)
                .map(|k| tensor_names(&|i, kv| format!("lane.{k}.past.{i}.{kv}")))
                .collect(),
            lane_present: (0..lanes)
                .map(|k| tensor_names(&|i, kv| format!("lane.{k}.present.{i}.{kv}")))
                .collect(),
        };
        let mut required: Vec<String> = match contract {
            Contract::Packed { .. } => [
                "input_ids",
                "decode_rows",
                "decode_seqlens_k",
                "decode_total",
                "attn_order",
                "logits_index",
            ]
            .map(String::from)
            .into(),
            Contract::Slots => ["input_ids", "rows", "logits_index"]
                .map(String::from)
                .into(),
            Contract::Explicit { .. } => vec!["input_ids".into(), "attention_mask".into()],
        };
        required.extend(past_names.iter().cloned());
        required.extend(packed.lane_inputs.iter().flatten().cloned());
        required.extend(packed.lane_past.iter().flatten().cloned());
        if lanes == 0 && matches!(contract, Contract::Packed { .. }) {
            return Err(EngineError::GraphContract(
                "a packed graph needs at least one prefill lane (lane.0.start)".into(),
            ));
        }
        if let Some(missing) = required.iter().find(|n| !inputs.contains(&n.as_str())) {
            return Err(EngineError::GraphContract(format!(
                "input `{missing}` is missing; the graph has {} past inputs for the {} layers config.json says (inputs: {inputs:?})",
                inputs.iter().filter(|n| n.starts_with("past_key_values.")).count(),
                info.num_layers,
            )));
        }
        // Slots graphs write the KV in place and return only the logits.
        let presents = match contract {
            Contract::Slots => &[][..],
            _ => &present_names[..],
        };
        let produced = std::iter::once("logits".to_string())
            .chain(presents.iter().cloned())
            .chain(packed.lane_present.iter().flatten().cloned());
        if let Some(missing) = produced
            .into_iter()
            .find(|n| !outputs.contains(&n.as_str()))
        {
            return Err(EngineError::GraphContract(format!(
                "output `{missing}` is missing (outputs: {outputs:?})"
            )));
        }
        Ok(Self {
            session,
            run_time: std::time::Duration::ZERO,
            runs: 0,
            info: info.clone(),
            contract,
            past_names,
            present_names,
            packed,
            binding: None,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The KV layout this graph takes.
    pub fn kv_layout(&self) -> KvLayout {
        match self.contract {
            Contract::Explicit { .. } => KvLayout::Padded,
            Contract::Packed { .. } | Contract::Slots => KvLayout::Slots,
        }
    }

    /// Prompt chunks a packed pass takes (its prefill lanes); `None` where any number fits:
    /// slots graphs take them all in one pass, explicit graphs prefill each in a pass of its
    /// own.
    pub fn prefill_lanes(&self) -> Option<usize> {
        match self.contract {
            Contract::Explicit { .. } | Contract::Slots => None,
            Contract::Packed { lanes } => Some(lanes),
        }
    }

    /// Cumulative time inside `session.run` since load.
    pub fn run_time(&self) -> std::time::Duration {
        self.run_time
    }

    /// `session.run` calls since load.
    pub fn runs(&self) -> u64 {
        self.runs
    }

    /// Ends ONNX Runtime's profiling (see [`SessionOptions::profile_prefix`]) and returns the
    /// profile's file name.
    pub fn end_profiling(&mut self) -> Result<String, EngineError> {
        self.session.end_profiling().map_err(EngineError::inference)
    }

    /// Explicit-attention graphs: one pass of `input`'s new tokens for every row over
    /// `cache`. Returns the logits of each row's last new token (`[batch, vocab]`) and the
    /// cache extended by the new positions.
    ///
    /// # Errors
    /// `InvalidInput` when the shapes disagree with each other, the cache or the graph,
    /// `Inference` when ONNX Runtime fails.
    pub fn forward(
        &mut self,
        input: &StepInput,
        cache: &PaddedCache,
    ) -> Result<(Vec<f32>, PaddedCache), EngineError> {
        let StepInput {
            batch,
            seq_len,
            ref input_ids,
            ref past,
        } = *input;
        let Contract::Explicit { has_position_ids } = self.contract else {
            return Err(EngineError::InvalidInput(
                "a packed graph runs packed passes (forward_packed)".into(),
            ));
        };
        let width = cache.width();
        if cache.batch() != batch
            || seq_len == 0
            || input_ids.len() != batch * seq_len
            || past.len() != batch
            || past.iter().any(|&p| p > width)
        {
            return Err(EngineError::InvalidInput(format!(
                "step shapes disagree: batch {batch}, seq {seq_len}, cache batch {} of width {width}, ids {}, past {past:?}",
                cache.batch(),
                input_ids.len(),
            )));
        }
        let total = width + seq_len;
        let mut mask = Vec::with_capacity(batch * total);
        let mut positions = Vec::with_capacity(batch * seq_len);
        for &p in past {
            mask.extend(std::iter::repeat_n(0i64, width - p));
            mask.extend(std::iter::repeat_n(1i64, p + seq_len));
            positions.extend((p..p + seq_len).map(|q| q as i64));
        }
        let mut feeds: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(3 + cache.tensors.len());
        feeds.push((
            "input_ids".into(),
            i64_tensor(vec![batch, seq_len], input_ids.clone())?,
        ));
        feeds.push((
            "attention_mask".into(),
            i64_tensor(vec![batch, total], mask)?,
        ));
        if has_position_ids {
            feeds.push((
                "position_ids".into(),
                i64_tensor(vec![batch, seq_len], positions)?,
            ));
        }
        for (name, value) in self.past_names.iter().zip(&cache.tensors) {
            feeds.push((Cow::Borrowed(name.as_str()), SessionInputValue::from(value)));
        }
        let started = std::time::Instant::now();
        let result = self.session.run(feeds);
        self.run_time += started.elapsed();
        self.runs += 1;
        let mut outputs = result.map_err(EngineError::inference)?;
        let last: Vec<usize> = (0..batch).map(|b| b * seq_len + seq_len - 1).collect();
        let logits = logits_at(&outputs, &self.info, batch * seq_len, &last)?;
        let tensors = self
            .present_names
            .iter()
            .map(|name| {
                outputs
                    .remove(name.as_str())
                    .ok_or_else(|| EngineError::inference(format!("graph returned no {name}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((
            logits,
            PaddedCache::from_values(&self.info, tensors, batch, total),
        ))
    }

    /// Packed and slots graphs: one pass over every row's new tokens, each written in place
    /// into its slot of `cache`. In packed graphs rows of one token go through the decode
    /// attention, longer ones through a prefill lane each; slots graphs take them all alike.
    /// Returns the logits of the rows that ask for them, in order (`[rows asking, vocab]`).
    ///
    /// # Errors
    /// `InvalidInput` when a row does not fit its slot or the pass has more long rows than
    /// the graph has lanes, `Inference` when ONNX Runtime fails.
    pub fn forward_packed(
        &mut self,
        rows: &[PassRow],
        cache: &mut SlotCache,
    ) -> Result<Vec<f32>, EngineError> {
        let lanes = match self.contract {
            Contract::Packed { lanes } => lanes,
            Contract::Slots => 0,
            Contract::Explicit { .. } => {
                return Err(EngineError::InvalidInput(
                    "an explicit-attention graph runs padded passes (forward)".into(),
                ))
            }
        };
        let fail = EngineError::inference;
        let binding = match self.binding.take() {
            Some(b) if b.cache_id == cache.id() => b,
            _ => PackedBinding {
                binding: self.session.create_binding().map_err(fail)?,
                cache_id: cache.id(),
                decode_slots: 0,
                lanes: vec![None; lanes],
            },
        };
        let (binding, asked) = if self.contract == Contract::Slots {
            let inputs = SlotsInputs::new(rows, cache)?;
            (self.bind_slots(binding, &inputs, cache)?, inputs.asked)
        } else {
            let packed = PackedInputs::new(rows, cache, lanes)?;
            (self.bind(binding, &packed, cache)?, packed.asked)
        };
        let started = std::time::Instant::now();
        let result = self.session.run_binding(&binding.binding);
        self.run_time += started.elapsed();
        self.runs += 1;
        let logits = result.map_err(fail).and_then(|outputs| {
            logits_at(&outputs, &self.info, asked, &(0..asked).collect::<Vec<_>>())
        });
        // A failed run leaves the binding as it was bound: keep it either way.
        self.binding = Some(binding);
        let logits = logits?;
        for row in rows {
            cache.set_end(row.slot, row.past + row.tokens.len());
        }
        Ok(logits)
    }

    /// Binds a pass's inputs: the small ones every time, the KV views only where they
    /// changed since the last pass over the same cache (the decode rows' span, each lane's
    /// slot), since a graph of 22 layers has hundreds of them.
    fn bind(
        &self,
        mut b: PackedBinding,
        packed: &PackedInputs,
        cache: &mut SlotCache,
    ) -> Result<PackedBinding, EngineError> {
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

    /// Binds a slots pass: its three small inputs, the logits, and the whole cache as the
    /// KV inputs the first time (the attention nodes write into them in place).
    fn bind_slots(
        &self,
        mut b: PackedBinding,
        inputs: &SlotsInputs,
        cache: &mut SlotCache,
    ) -> Result<PackedBinding, EngineError> {
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
                // SAFETY: as in `bind`: the view lies in `cache`'s buffers, never reallocated,
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
struct SlotsInputs {
    ids: Vec<i64>,
    /// `[rows, 4]`: slot, past, start, count.
    rows: Vec<i64>,
    logits_index: Vec<i64>,
    /// Rows asking for logits.
    asked: usize,
}

impl SlotsInputs {
    fn new(rows: &[PassRow], cache: &SlotCache) -> Result<Self, EngineError> {
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

/// The packed graph's IoBinding, kept from one pass to the next over the same cache.
struct PackedBinding {
    binding: ort::session::IoBinding,
    /// The [`SlotCache`] its KV views point into.
    cache_id: u64,
    /// Slots bound as KV inputs (0: none yet): packed graphs, the decode attention's first
    /// slots; slots graphs, the whole cache.
    decode_slots: usize,
    /// Per lane, what its KV views are bound to: `Some(Some(slot))`, `Some(None)` for the
    /// scratch slot, `None` when not bound yet.
    lanes: Vec<Option<Option<usize>>>,
}

/// A packed pass's inputs, laid out as the exporter's PACKED_CONTRACT says: one-token rows
/// first (the decode attention's tokens), then each longer row's chunk in a lane.
struct PackedInputs {
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
    asked: usize,
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
    fn new(rows: &[PassRow], cache: &SlotCache, lanes: usize) -> Result<Self, EngineError> {
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

/// Checks that a pass's rows are distinct slots of `cache` whose new tokens fit after the
/// positions they hold. Packed graphs give `decode_slots`: every slot below it must have room
/// for the decode attention's write at its end, one past the row's last position.
fn check_rows(
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
fn bind_pass_values(
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
fn pad_logits_index(index: &mut Vec<i64>) -> usize {
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

/// An int64 input tensor of `shape`, for a plain run.
fn i64_tensor(
    shape: Vec<usize>,
    data: Vec<i64>,
) -> Result<SessionInputValue<'static>, EngineError> {
    owned_value(shape, data).map(SessionInputValue::from)
}

/// An ONNX Runtime tensor of `shape` that owns `data`.
pub(crate) fn owned_value<T>(shape: Vec<usize>, data: Vec<T>) -> Result<DynValue, EngineError>
where
    T: PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
{
    Tensor::<T>::from_array((shape, data))
        .map(|t| t.into_dyn())
        .map_err(EngineError::inference)
}

/// The logits at the given flat positions of a pass's `logits` output, which covers
/// `positions` positions.
fn logits_at(
    outputs: &ort::session::SessionOutputs<'_>,
    info: &ModelInfo,
    positions: usize,
    at: &[usize],
) -> Result<Vec<f32>, EngineError> {
    let vocab = info.vocab_size;
    let logits = outputs
        .get("logits")
        .ok_or_else(|| EngineError::inference("graph returned no logits"))?;
    let (shape, data) = logits
        .try_extract_tensor::<f32>()
        .map_err(EngineError::inference)?;
    let covered = shape.iter().map(|&d| d as usize).product::<usize>() / vocab.max(1);
    if shape.last().copied() != Some(vocab as i64) || covered < positions.max(1) {
        return Err(EngineError::GraphContract(format!(
            "logits shape {:?}, expected {positions} positions of {vocab}",
            &shape[..]
        )));
    }
    let mut out = Vec::with_capacity(at.len() * vocab);
    for &p in at {
        out.extend_from_slice(&data[p * vocab..(p + 1) * vocab]);
    }
    Ok(out)
}

/// An ONNX Runtime float tensor of `shape` over CPU memory (`memory`) it does not own.
///
/// # Safety
/// `data` must point to at least `shape`'s element count of floats that stay valid, and
/// unmoved, for as long as the returned value lives.
unsafe fn borrowed_f32_tensor(
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
