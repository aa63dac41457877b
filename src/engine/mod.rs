//! The model engine: synchronous code around one ONNX Runtime session, with no actix in it,
//! so it can be tested and benchmarked alone.
//!
//! - [`model_info`]: reads an exported model folder and checks it is complete.
//! - [`tokenizer`]: the Hugging Face tokenizer, checked against the model's vocabulary.
//! - [`session`]: the ONNX session and one forward pass, for fused (GroupQueryAttention) or
//!   explicit-attention graphs.
//! - [`kv_cache`]: the per-layer key/value tensors carried from one step to the next: slots
//!   written in place, or a left-padded batch.
//! - [`generate`]: greedy generation of a fixed batch, the reference path for parity tests.
//! - [`batch`]: the continuous-batching engine (scheduler, prefill, decode, KV rebuilds);
//!   `prefix_cache` keeps the KV of shared prompt prefixes.
//! - `sequence`, `sampler`, `detokenizer`: one request's state, token choice and text.
//! - [`request`]: requests, events and the step-driven [`Engine`] trait the workers drive.

pub mod batch;
mod detokenizer;
pub mod generate;
pub mod kv_cache;
pub mod model_info;
mod prefix_cache;
pub mod request;
mod sampler;
mod sequence;
pub mod session;
pub mod tokenizer;

use std::path::PathBuf;

use crate::runtime::RuntimeError;

pub use batch::{BatchEngine, EngineLimits, EngineStats};
pub use detokenizer::{Delta, Detokenizer};
pub use generate::{greedy_generate, Generation};
pub use kv_cache::{KvCache, KvLayout};
pub use model_info::ModelInfo;
pub use request::{
    event_channel, Engine, FinishReason, GenerationEvent, GenerationRequest, GenerationStats,
    Priority, RequestId, SamplingParams,
};
pub use session::{open_session, OnnxModel, SessionOptions, StepInput};
pub use tokenizer::TextTokenizer;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
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
