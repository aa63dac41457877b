//! The model engine: synchronous code around one ONNX Runtime session, with no actix in it,
//! so it can be tested and benchmarked alone. It imports nothing of the service: callers
//! hand it plain [`EngineLimits`], [`SessionOptions`] and ONNX Runtime's environment.
//!
//! - [`model_info`]: reads an exported model folder and checks it is complete.
//! - [`tokenizer`]: the Hugging Face tokenizer, checked against the model's vocabulary.
//! - [`session`]: the ONNX session and its forward pass, a file per graph contract: one
//!   packed or slots pass per step on our exports, padded passes on explicit-attention
//!   (optimum) graphs.
//! - `resident_weights`: reads the weights ONNX Runtime maps from the model files in at
//!   load, so memory is flat from the first request.
//! - [`slot_cache`], [`padded_cache`]: the key/value tensors of each contract;
//!   `kv_store`, which holds the rows' KV and runs a step's pass over it, and `padded_rows`,
//!   its explicit-attention half.
//! - [`scheduler`]: each step's plan (admission, preemption, decode rows, prompt chunks) from
//!   the rows' state alone, as plain data.
//! - [`batch`]: the continuous-batching engine that applies the plan.
//! - `prefix_sharing`: the KV of prompt prefixes many requests share, prefilled once; the
//!   whole protocol the batch loop follows for it.
//! - [`generate`]: greedy generation of a fixed batch, the reference path for parity tests.
//! - `sequence`, `sampler`, `detokenizer`: one request's state, token choice and text.
//! - [`request`]: requests, events and the step-driven [`Engine`] trait the workers drive.

pub mod attention;
pub mod batch;
mod detokenizer;
pub mod generate;
mod kv_store;
pub mod model_info;
pub mod padded_cache;
mod padded_rows;
mod prefix_sharing;
pub mod request;
mod resident_weights;
mod sampler;
pub mod scheduler;
mod sequence;
pub mod session;
pub mod slot_cache;
pub mod tokenizer;

use std::path::PathBuf;

pub use batch::{BatchEngine, EngineLimits, EngineStats};
pub use detokenizer::{Delta, Detokenizer};
pub use generate::{greedy_generate, Generation};
pub use model_info::{ModelInfo, ModelSampling};
pub use padded_cache::PaddedCache;
pub use request::{
    event_channel, Engine, EngineSnapshot, FinishReason, GenerationEvent, GenerationRequest,
    GenerationStats, Priority, RequestId, SamplingParams,
};
pub use session::{open_session, KvLayout, OnnxModel, PassRow, SessionOptions, StepInput};
pub use slot_cache::SlotCache;
pub use tokenizer::TextTokenizer;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model folder {path} does not exist; build one with scripts/export_onnx.py or scripts/fetch-model.sh")]
    ModelDirMissing { path: PathBuf },
    #[error("model folder is incomplete: {path} is missing ({hint})")]
    ModelFileMissing { path: PathBuf, hint: &'static str },
    #[error("cannot read {path}: {reason}")]
    BadModelFile { path: PathBuf, reason: String },
    #[error("cannot load tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("tokenizer has {tokenizer} tokens but the model expects a vocabulary of {model}; the tokenizer does not belong to this model")]
    VocabularyMismatch { tokenizer: usize, model: usize },
    #[error("ONNX session for {path} could not be created: {reason}")]
    SessionLoad { path: PathBuf, reason: String },
    #[error("model graph does not follow the decoder-with-past contract: {0}")]
    GraphContract(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("inference failed: {0}")]
    Inference(String),
}

impl EngineError {
    /// Wraps an ONNX Runtime failure during a run.
    pub(crate) fn inference(err: impl std::fmt::Display) -> Self {
        Self::Inference(err.to_string())
    }
}
