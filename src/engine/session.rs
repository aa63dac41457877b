//! One ONNX Runtime session of a decoder-with-past graph and its forward pass.
//!
//! Two graph contracts, told apart by the inputs:
//! - explicit attention, the one of optimum / transformers.js exports: `input_ids`,
//!   `attention_mask`, optional `position_ids`, and `past_key_values.{i}.key|value`; the
//!   cache is left-padded and `present.*` is past and new concatenated;
//! - fused `GroupQueryAttention` (our exporter's `--attention gqa`): `input_ids`,
//!   `seqlens_k`, `total_sequence_length` and the same past names; the cache is a slot cache
//!   bound as both past and present, written in place.
//!
//! Both return `logits` and `present.{i}.key|value`. Names are checked once at load, so a
//! foreign graph fails with a clear error instead of at the first request.

use std::borrow::Cow;

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};
use ort::AsPointer;

use super::kv_cache::{KvLayout, KvStorage};
use super::{EngineError, KvCache, ModelInfo};
use crate::config::RuntimeConfig;

/// Knobs of one session; the engine picks them from the configuration.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Intra-op threads; 0 means one per available core.
    pub intra_threads: usize,
    /// Let idle pool threads spin between ops (lower latency, busier cores).
    pub spin_threads: bool,
}

impl SessionOptions {
    /// The session settings the inference configuration asks for.
    pub fn from_config(config: &crate::config::InferenceConfig) -> Self {
        Self {
            intra_threads: config.resolved_threads_per_worker(),
            spin_threads: config.spin_threads,
        }
    }
}

/// Inputs of one forward pass. Each row feeds its new tokens first and then padding up to
/// `seq_len`; how the graph learns where a row's tokens are (a mask and position ids, or
/// per-row lengths) is the model's business, so the engine never builds masks.
#[derive(Debug, Clone)]
pub struct StepInput {
    pub batch: usize,
    /// New positions per row in this step (the longest prompt rest at prefill, 1 when
    /// decoding).
    pub seq_len: usize,
    /// `[batch, seq_len]` token ids; padding positions hold any valid id.
    pub input_ids: Vec<i64>,
    /// Per row, the real positions already in the cache (a padded cache has them
    /// right-aligned).
    pub past: Vec<usize>,
    /// Per row, its real new tokens (1 to `seq_len`); its logits are those of the last one.
    pub new: Vec<usize>,
}

/// What a forward pass returns.
pub struct StepOutput {
    /// `[batch, vocab]`: logits of every row's last new token.
    pub last_logits: Vec<f32>,
    /// The cache extended by this step's positions.
    pub cache: KvCache,
}

/// Creates an ONNX Runtime session for the graph at `path` with our settings: all graph
/// optimizations, the configured intra-op threads and spinning.
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
    Session::builder(&env)
        .map_err(|e| fail(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| fail(e.to_string()))?
        .with_intra_threads(threads)
        .map_err(|e| fail(e.to_string()))?
        .with_intra_op_spinning(options.spin_threads)
        .map_err(|e| fail(e.to_string()))?
        .commit_from_file(path)
        .map_err(|e| fail(e.to_string()))
}

/// How a graph attends, told by its inputs: the engine feeds each its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attention {
    /// The optimum contract: `attention_mask` (+ optional `position_ids`), a padded cache.
    Explicit { has_position_ids: bool },
    /// Fused `GroupQueryAttention`: `seqlens_k` and `total_sequence_length`, a slot cache.
    Fused,
}

/// A loaded model: its session plus what is needed to feed it.
pub struct OnnxModel {
    session: Session,
    /// Time spent inside `session.run`, so benchmarks can tell the engine's own overhead.
    run_time: std::time::Duration,
    info: ModelInfo,
    attention: Attention,
    past_names: Vec<String>,
    present_names: Vec<String>,
}

impl OnnxModel {
    /// Creates the session for `info`'s `model.onnx` and checks the graph's inputs and
    /// outputs against the decoder-with-past contract (either attention) and the model's
    /// layer count.
    pub fn load(
        info: &ModelInfo,
        runtime: &RuntimeConfig,
        options: &SessionOptions,
    ) -> Result<Self, EngineError> {
        let path = info.model_path();
        let session = open_session(&path, runtime, options)?;

        let inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let fused = inputs.contains(&"seqlens_k");
        let required: &[&str] = if fused {
            &["input_ids", "seqlens_k", "total_sequence_length"]
        } else {
            &["input_ids", "attention_mask"]
        };
        for required in required {
            if !inputs.contains(required) {
                return Err(EngineError::GraphContract(format!(
                    "input `{required}` is missing (inputs: {inputs:?})"
                )));
            }
        }
        if !outputs.contains(&"logits") {
            return Err(EngineError::GraphContract(format!(
                "output `logits` is missing (outputs: {outputs:?})"
            )));
        }
        let layer_names = |prefix: &str| -> Vec<String> {
            (0..info.num_layers)
                .flat_map(|i| [format!("{prefix}.{i}.key"), format!("{prefix}.{i}.value")])
                .collect()
        };
        let past_names = layer_names("past_key_values");
        let present_names = layer_names("present");
        let past_inputs = inputs
            .iter()
            .filter(|n| n.starts_with("past_key_values."))
            .count();
        if past_inputs != past_names.len()
            || past_names.iter().any(|n| !inputs.contains(&n.as_str()))
            || present_names.iter().any(|n| !outputs.contains(&n.as_str()))
        {
            return Err(EngineError::GraphContract(format!(
                "expected past_key_values.*/present.* for {} layers as config.json says, the graph has {} past inputs",
                info.num_layers, past_inputs
            )));
        }
        let attention = if fused {
            Attention::Fused
        } else {
            Attention::Explicit {
                has_position_ids: inputs.contains(&"position_ids"),
            }
        };
        Ok(Self {
            session,
            run_time: std::time::Duration::ZERO,
            info: info.clone(),
            attention,
            past_names,
            present_names,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The KV layout this graph's attention takes.
    pub fn kv_layout(&self) -> KvLayout {
        match self.attention {
            Attention::Explicit { .. } => KvLayout::Padded,
            Attention::Fused => KvLayout::Slots,
        }
    }

    /// An empty cache of this graph's layout for `batch` rows (a slot cache with room for
    /// `capacity` positions per row; it grows when a step needs more).
    pub fn empty_cache(&self, batch: usize, capacity: usize) -> Result<KvCache, EngineError> {
        KvCache::empty(self.kv_layout(), &self.info, batch, capacity)
    }

    /// Cumulative time inside `session.run` since load.
    pub fn run_time(&self) -> std::time::Duration {
        self.run_time
    }

    /// Runs one forward pass: the new tokens of every row, attending to its cached ones.
    ///
    /// # Errors
    /// `InvalidInput` when the shapes disagree with each other or with the cache,
    /// `Inference` when ONNX Runtime fails.
    pub fn forward(
        &mut self,
        input: StepInput,
        mut cache: KvCache,
    ) -> Result<StepOutput, EngineError> {
        let StepInput {
            batch,
            seq_len,
            ref input_ids,
            ref past,
            ref new,
        } = input;
        let bad_row = (0..past.len().min(new.len())).find(|&b| {
            let fits = match cache.layout() {
                // A padded row's past must be right-aligned in the cache.
                KvLayout::Padded => cache.ends[b] == cache.width() && past[b] <= cache.width(),
                KvLayout::Slots => cache.ends[b] == past[b],
            };
            new[b] == 0 || new[b] > seq_len || (past[b] > 0 && !fits)
        });
        if cache.batch != batch
            || seq_len == 0
            || input_ids.len() != batch * seq_len
            || past.len() != batch
            || new.len() != batch
            || bad_row.is_some()
        {
            return Err(EngineError::InvalidInput(format!(
                "step shapes disagree: batch {batch}, seq {seq_len}, cache batch {} of width {}, ids {}, past {:?}, new {:?}",
                cache.batch,
                cache.width(),
                input_ids.len(),
                past,
                new,
            )));
        }
        let last_logits = match self.attention {
            Attention::Explicit { has_position_ids } => {
                let (logits, presents) = self.run_padded(&input, &cache, has_position_ids)?;
                let width = cache.width();
                cache.storage = KvStorage::Padded {
                    tensors: presents,
                    past_len: width + seq_len,
                };
                for (b, end) in cache.ends.iter_mut().enumerate() {
                    *end = width + new[b];
                }
                logits
            }
            Attention::Fused => {
                let needed = (0..batch).map(|b| past[b] + seq_len).max().unwrap_or(0);
                if needed > cache.width() {
                    let grown = needed
                        .max(cache.width() * 2)
                        .min(self.info.max_position_embeddings);
                    cache.reserve(&self.info, batch, grown.max(needed))?;
                }
                // GroupQueryAttention takes several new tokens over a past one row at a time.
                let together = seq_len == 1 || past.iter().all(|&p| p == 0);
                let logits = if together {
                    self.run_slots(&input, &mut cache, 0..batch)?
                } else {
                    let mut logits = Vec::with_capacity(batch * self.info.vocab_size);
                    for b in 0..batch {
                        logits.extend(self.run_slots(&input, &mut cache, b..b + 1)?);
                    }
                    logits
                };
                for (b, end) in cache.ends.iter_mut().enumerate() {
                    *end = past[b] + new[b];
                }
                logits
            }
        };
        Ok(StepOutput { last_logits, cache })
    }

    /// The explicit-attention pass: a left-padded mask over the cache and the new tokens,
    /// positions counted over each row's real tokens. Returns the logits of every row's
    /// last new token and the `present.*` values (past and new, concatenated).
    fn run_padded(
        &mut self,
        input: &StepInput,
        cache: &KvCache,
        has_position_ids: bool,
    ) -> Result<(Vec<f32>, Vec<DynValue>), EngineError> {
        let (batch, seq_len) = (input.batch, input.seq_len);
        let width = cache.width();
        let total = width + seq_len;
        let mut mask = Vec::with_capacity(batch * total);
        let mut positions = Vec::with_capacity(batch * seq_len);
        for b in 0..batch {
            let (past, new) = (input.past[b], input.new[b]);
            mask.extend(std::iter::repeat_n(0i64, width - past));
            mask.extend(std::iter::repeat_n(1i64, past + new));
            mask.extend(std::iter::repeat_n(0i64, seq_len - new));
            positions.extend((past..past + seq_len).map(|p| p as i64));
        }
        let KvStorage::Padded { tensors, .. } = &cache.storage else {
            return Err(EngineError::InvalidInput(
                "an explicit-attention graph takes a padded cache".into(),
            ));
        };
        let mut feeds: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(3 + tensors.len());
        feeds.push((
            "input_ids".into(),
            i64_tensor([batch, seq_len], input.input_ids.clone())?,
        ));
        feeds.push(("attention_mask".into(), i64_tensor([batch, total], mask)?));
        if has_position_ids {
            feeds.push((
                "position_ids".into(),
                i64_tensor([batch, seq_len], positions)?,
            ));
        }
        for (name, value) in self.past_names.iter().zip(tensors) {
            feeds.push((Cow::Borrowed(name.as_str()), SessionInputValue::from(value)));
        }
        let started = std::time::Instant::now();
        let result = self.session.run(feeds);
        self.run_time += started.elapsed();
        let mut outputs = result.map_err(EngineError::inference)?;
        let logits = last_logits(&outputs, &self.info, batch, seq_len, &input.new, 0..batch)?;
        let presents = self
            .present_names
            .iter()
            .map(|name| {
                outputs
                    .remove(name.as_str())
                    .ok_or_else(|| EngineError::inference(format!("graph returned no {name}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((logits, presents))
    }

    /// The fused-attention pass over rows `rows` of a slot cache: the past and present of
    /// every layer are bound to those rows' slots, so GroupQueryAttention writes the new
    /// positions in place and nothing else moves. Returns the rows' logits.
    fn run_slots(
        &mut self,
        input: &StepInput,
        cache: &mut KvCache,
        rows: std::ops::Range<usize>,
    ) -> Result<Vec<f32>, EngineError> {
        let seq_len = input.seq_len;
        let n = rows.len();
        let ids = input.input_ids[rows.start * seq_len..rows.end * seq_len].to_vec();
        // Padding counts as real here (GroupQueryAttention assumes none after the past); its
        // positions lie past the row's end and are overwritten by its next tokens.
        let totals: Vec<usize> = rows.clone().map(|b| input.past[b] + seq_len).collect();
        let seqlens: Vec<i32> = totals.iter().map(|&t| t as i32 - 1).collect();
        let total = totals.iter().copied().max().unwrap_or(0) as i32;
        let info = &self.info;
        let capacity = cache.width();
        let KvStorage::Slots { buffers, .. } = &mut cache.storage else {
            return Err(EngineError::InvalidInput(
                "a fused-attention graph takes a slot cache".into(),
            ));
        };
        let slot = info.num_kv_heads * capacity * info.head_dim;
        let shape = [n, info.num_kv_heads, capacity, info.head_dim];
        let fail = EngineError::inference;
        let memory = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(fail)?;
        let mut binding = self.session.create_binding().map_err(fail)?;
        let ids = Tensor::<i64>::from_array(([n, seq_len], ids)).map_err(fail)?;
        binding.bind_input("input_ids", &ids).map_err(fail)?;
        let seqlens = Tensor::<i32>::from_array(([n], seqlens)).map_err(fail)?;
        binding.bind_input("seqlens_k", &seqlens).map_err(fail)?;
        let total = Tensor::<i32>::from_array((Vec::<usize>::new(), vec![total])).map_err(fail)?;
        binding
            .bind_input("total_sequence_length", &total)
            .map_err(fail)?;
        for ((past, present), buffer) in self
            .past_names
            .iter()
            .zip(&self.present_names)
            .zip(buffers.iter_mut())
        {
            let rows_data = &mut buffer[rows.start * slot..rows.end * slot];
            // SAFETY: both values view `rows_data`, which outlives them: they are dropped with
            // the binding at the end of this function, before the buffer can move or be
            // freed. ONNX Runtime reads the past and writes the present through them, the
            // sharing GroupQueryAttention is built for.
            let (input_view, output_view) = unsafe {
                (
                    borrowed_f32_tensor(&memory, rows_data.as_mut_ptr(), shape)?,
                    borrowed_f32_tensor(&memory, rows_data.as_mut_ptr(), shape)?,
                )
            };
            binding
                .bind_input(past.as_str(), &input_view)
                .map_err(fail)?;
            binding
                .bind_output(present.as_str(), output_view)
                .map_err(fail)?;
        }
        binding
            .bind_output_to_device("logits", &memory)
            .map_err(fail)?;
        let started = std::time::Instant::now();
        let result = self.session.run_binding(&binding);
        self.run_time += started.elapsed();
        let outputs = result.map_err(EngineError::inference)?;
        last_logits(&outputs, info, n, seq_len, &input.new, rows)
    }
}

/// An int64 input tensor.
fn i64_tensor(
    shape: [usize; 2],
    data: Vec<i64>,
) -> Result<SessionInputValue<'static>, EngineError> {
    Tensor::<i64>::from_array((shape, data))
        .map(|t| SessionInputValue::from(t.into_dyn()))
        .map_err(EngineError::inference)
}

/// The logits of each row's last new token (`new[row] - 1`) from a pass over `rows`.
fn last_logits(
    outputs: &ort::session::SessionOutputs<'_>,
    info: &ModelInfo,
    batch: usize,
    seq_len: usize,
    new: &[usize],
    rows: std::ops::Range<usize>,
) -> Result<Vec<f32>, EngineError> {
    let vocab = info.vocab_size;
    let logits = outputs
        .get("logits")
        .ok_or_else(|| EngineError::inference("graph returned no logits"))?;
    let (shape, data) = logits
        .try_extract_tensor::<f32>()
        .map_err(EngineError::inference)?;
    if shape.len() != 3 || shape[0] as usize != batch || shape[2] as usize != vocab {
        return Err(EngineError::inference(format!(
            "logits shape {:?}, expected [{batch}, *, {vocab}]",
            &shape[..]
        )));
    }
    let positions = shape[1] as usize;
    if positions != seq_len && new.iter().any(|&n| n != seq_len) {
        return Err(EngineError::GraphContract(format!(
            "logits cover {positions} of {seq_len} positions; the contract is every position"
        )));
    }
    let mut last = Vec::with_capacity(batch * vocab);
    for (i, b) in rows.enumerate() {
        let at = if positions == seq_len {
            new[b] - 1
        } else {
            positions - 1
        };
        let start = (i * positions + at) * vocab;
        last.extend_from_slice(&data[start..start + vocab]);
    }
    Ok(last)
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
