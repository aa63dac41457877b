//! One ONNX Runtime session of a decoder-with-past graph and its forward pass.
//!
//! The graph contract is the one of optimum / transformers.js exports: inputs `input_ids`,
//! `attention_mask`, optional `position_ids`, and `past_key_values.{i}.key|value`; outputs
//! `logits` and `present.{i}.key|value`. Names are checked once at load, so a foreign graph
//! fails with a clear error instead of at the first request.

use std::borrow::Cow;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;

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

/// Inputs of one forward pass over a left-padded batch.
#[derive(Debug, Clone)]
pub struct StepInput {
    pub batch: usize,
    /// New positions per row in this step (prompt length at prefill, 1 when decoding).
    pub seq_len: usize,
    /// `[batch, seq_len]` token ids; padding positions hold any valid id.
    pub input_ids: Vec<i64>,
    /// `[batch, past_len + seq_len]`: 1 for real tokens, 0 for left padding.
    pub attention_mask: Vec<i64>,
    /// `[batch, seq_len]` positions of the new tokens, counted over real tokens only.
    pub position_ids: Vec<i64>,
    /// Per row, the index among the new positions whose logits to return; `None`: the last
    /// (rows of a batched prefill end with padding, so their last real token is earlier).
    pub logits_at: Option<Vec<usize>>,
}

/// Appends one row of a left-padded attention mask: `width` positions whose last `real`
/// are tokens (1) and the rest padding (0).
pub(crate) fn push_mask_row(mask: &mut Vec<i64>, width: usize, real: usize) {
    mask.extend(std::iter::repeat_n(0, width - real));
    mask.extend(std::iter::repeat_n(1, real));
}

/// What a forward pass returns.
pub struct StepOutput {
    /// `[batch, vocab]`: logits of the last position of every row (or of `logits_at`).
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

/// A loaded model: its session plus what is needed to feed it.
pub struct OnnxModel {
    session: Session,
    /// Time spent inside `session.run`, so benchmarks can tell the engine's own overhead.
    run_time: std::time::Duration,
    info: ModelInfo,
    has_position_ids: bool,
    past_names: Vec<String>,
    present_names: Vec<String>,
}

impl OnnxModel {
    /// Creates the session for `info`'s `model.onnx` and checks the graph's inputs and
    /// outputs against the decoder-with-past contract and the model's layer count.
    pub fn load(
        info: &ModelInfo,
        runtime: &RuntimeConfig,
        options: &SessionOptions,
    ) -> Result<Self, EngineError> {
        let path = info.model_path();
        let session = open_session(&path, runtime, options)?;

        let inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        for required in ["input_ids", "attention_mask"] {
            if !inputs.contains(&required) {
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
        let has_position_ids = inputs.contains(&"position_ids");
        Ok(Self {
            session,
            run_time: std::time::Duration::ZERO,
            info: info.clone(),
            has_position_ids,
            past_names,
            present_names,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Cumulative time inside `session.run` since load.
    pub fn run_time(&self) -> std::time::Duration {
        self.run_time
    }

    /// Runs one forward pass: the new positions of every row, attending to `past`.
    ///
    /// # Errors
    /// `InvalidInput` when the shapes disagree with each other or with the cache,
    /// `Inference` when ONNX Runtime fails.
    pub fn forward(&mut self, input: StepInput, past: KvCache) -> Result<StepOutput, EngineError> {
        let StepInput {
            batch,
            seq_len,
            input_ids,
            attention_mask,
            position_ids,
            logits_at,
        } = input;
        let total = past.past_len + seq_len;
        if past.batch != batch
            || seq_len == 0
            || input_ids.len() != batch * seq_len
            || position_ids.len() != batch * seq_len
            || attention_mask.len() != batch * total
            || logits_at
                .as_ref()
                .is_some_and(|at| at.len() != batch || at.iter().any(|&i| i >= seq_len))
        {
            return Err(EngineError::InvalidInput(format!(
                "step shapes disagree: batch {batch}, seq {seq_len}, past {} (cache batch {}), ids {}, mask {}, positions {}",
                past.past_len,
                past.batch,
                input_ids.len(),
                attention_mask.len(),
                position_ids.len()
            )));
        }
        let tensor = |shape: [usize; 2], data: Vec<i64>| {
            Tensor::<i64>::from_array((shape, data))
                .map(|t| SessionInputValue::from(t.into_dyn()))
                .map_err(EngineError::inference)
        };
        let mut feeds: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(3 + past.tensors.len());
        feeds.push(("input_ids".into(), tensor([batch, seq_len], input_ids)?));
        feeds.push((
            "attention_mask".into(),
            tensor([batch, total], attention_mask)?,
        ));
        if self.has_position_ids {
            feeds.push((
                "position_ids".into(),
                tensor([batch, seq_len], position_ids)?,
            ));
        }
        for (name, value) in self.past_names.iter().zip(past.tensors) {
            feeds.push((Cow::Borrowed(name.as_str()), SessionInputValue::from(value)));
        }

        let started = std::time::Instant::now();
        let result = self.session.run(feeds);
        self.run_time += started.elapsed();
        let mut outputs = result.map_err(EngineError::inference)?;
        let vocab = self.info.vocab_size;
        let last_logits = {
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
            let rows = shape[1] as usize;
            if logits_at.is_some() && rows != seq_len {
                return Err(EngineError::GraphContract(format!(
                    "logits cover {rows} of {seq_len} positions; the contract is every position"
                )));
            }
            let mut last = Vec::with_capacity(batch * vocab);
            for b in 0..batch {
                let at = logits_at.as_ref().map_or(rows - 1, |at| at[b]);
                let start = (b * rows + at) * vocab;
                last.extend_from_slice(&data[start..start + vocab]);
            }
            last
        };
        let tensors = self
            .present_names
            .iter()
            .map(|name| {
                outputs
                    .remove(name.as_str())
                    .ok_or_else(|| EngineError::inference(format!("graph returned no {name}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StepOutput {
            last_logits,
            cache: KvCache {
                tensors,
                batch,
                past_len: total,
            },
        })
    }
}
