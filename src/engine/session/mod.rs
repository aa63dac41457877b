//! One ONNX Runtime session of a decoder-with-past graph and its forward pass.
//!
//! Three graph contracts, told apart by the inputs at load, each in a file of its own:
//! [`explicit`] (optimum exports, a padded cache, one `forward` per pass), [`packed`] (our
//! exporter's GroupQueryAttention graph with prefill lanes) and [`slots`] (our exporter's
//! graph with our own attention operator); the last two share a slot cache and the
//! IoBinding of [`binding`], and the batch loop runs them through `forward_packed`.
//!
//! Names are checked once at load, so a foreign graph fails with a clear error instead of at
//! the first request.

mod binding;
mod explicit;
mod packed;
mod slots;

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{DynValue, PrimitiveTensorElementType, Tensor};

use super::{attention, resident_weights, EngineError, ModelInfo, SlotCache};
use binding::PassBinding;
pub use explicit::StepInput;
use packed::{PackedInputs, PackedNames};
use slots::SlotsInputs;

/// Knobs of one session; the inference pool picks them from its configuration.
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

/// Which KV cache a graph takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvLayout {
    /// [`PaddedCache`]: explicit attention.
    Padded,
    /// [`SlotCache`]: packed graphs.
    Slots,
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
/// optimizations, the configured intra-op threads and spinning, and our operators, in the
/// process's ONNX Runtime environment `env` (the caller loads the library).
pub fn open_session(
    path: &std::path::Path,
    env: &Environment,
    options: &SessionOptions,
) -> Result<Session, EngineError> {
    let fail = |reason: String| EngineError::SessionLoad {
        path: path.to_path_buf(),
        reason,
    };
    let threads = match options.intra_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut builder = Session::builder(env)
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
    let one_at_a_time = LOADING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let session = builder
        .commit_from_file(path)
        .map_err(|e| fail(e.to_string()))?;
    // Reading the weights in needs no lock: another worker's session may register meanwhile.
    drop(one_at_a_time);
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
    /// Packed and slots graphs: the binding of the last pass, reused by the next one.
    binding: Option<PassBinding>,
}

impl OnnxModel {
    /// Creates the session for `info`'s `model.onnx` and checks the graph's inputs and
    /// outputs against one of the two contracts and the model's layer count.
    pub fn load(
        info: &ModelInfo,
        env: &Environment,
        options: &SessionOptions,
    ) -> Result<Self, EngineError> {
        let path = info.model_path();
        let session = open_session(&path, env, options)?;

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
        let packed = PackedNames::new(lanes, tensor_names);
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
            _ => PassBinding {
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
            (self.bind_packed(binding, &packed, cache)?, packed.asked)
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
