//! What goes into the engine and what comes out of it, per request.
//!
//! A request carries its own event channel: the engine sends token deltas and one final
//! event through it from the worker thread, and notices a closed channel (client gone) as a
//! cancellation at the next step. The channel is unbounded because a request can never
//! produce more than `max_tokens` events, and a bounded one could block the worker thread on
//! one slow reader.

use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// Identifies a request inside one engine; the inference layer assigns it.
pub type RequestId = u64;

/// How the next token is picked. `temperature == 0` means greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables nucleus sampling.
    pub top_p: f32,
    /// 1.0 disables it; above 1 discourages tokens already in the prompt or output.
    pub repetition_penalty: f32,
    /// Same seed and same inputs give the same text.
    pub seed: u64,
    /// Maximum number of new tokens.
    pub max_tokens: usize,
    /// Generation ends before any of these strings; they are not part of the output.
    pub stop: Vec<String>,
    /// Keep generating past EOS until `max_tokens`: benchmarks need fixed lengths.
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
            max_tokens: 64,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// Who waits for a request. User requests always go first: a waiting `Interactive`
/// request is admitted before any `Background` one, and takes the slot of a running
/// background sequence (which ends as [`FinishReason::Preempted`]) when the batch is full,
/// so background work never delays a user by more than one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Priority {
    /// A client is waiting for it.
    #[default]
    Interactive,
    /// Pre-generation nobody waits for; runs only in capacity users leave free.
    Background,
}

/// One generation job as the engine receives it (prompt already tokenized).
#[derive(Debug)]
pub struct GenerationRequest {
    pub id: RequestId,
    pub priority: Priority,
    /// Prompt token ids, BOS included.
    pub prompt_ids: Vec<u32>,
    /// How many leading prompt ids are a prefix many requests share (chat template and
    /// system prompt): the engine keeps their KV and reuses it. 0 for none.
    pub shared_prefix: usize,
    pub params: SamplingParams,
    /// Past this instant the request ends with `FinishReason::Cancelled`.
    pub deadline: Option<Instant>,
    /// When the request entered the system, for the queue-time figure.
    pub received_at: Instant,
    pub events: UnboundedSender<GenerationEvent>,
    /// The tracing span it was submitted in (an HTTP request's, with its id): the engine
    /// logs the request's admission, first token and end inside it, so one request can be
    /// followed through the log from another thread.
    pub span: tracing::Span,
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The client went away or the deadline passed.
    Cancelled,
    /// A background request gave its slot to a user request; it may be tried again later.
    Preempted,
    /// The engine failed; an `Error` event says why.
    Error,
}

/// Per-request timings and counts, sent with the final event.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationStats {
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// From `received_at` until the engine admitted the request.
    pub queue_time: Duration,
    /// Time spent in the prefill of this request's prompt.
    pub prefill_time: Duration,
    /// From `received_at` until the first token was sent.
    pub time_to_first_token: Option<Duration>,
    /// From the first token to the last.
    pub decode_time: Duration,
    /// Tokens after the first, per second of `decode_time`.
    pub decode_tokens_per_second: f64,
}

/// What the engine sends back for a request.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// New text. `text` never splits a UTF-8 character; it may be empty while a
    /// multi-byte character is still incomplete or a stop string may be starting.
    /// `logit` is the model's raw logit of the chosen token (before any repetition
    /// penalty), so tests can hold a batched run to a reference's logits, not only its ids.
    Token {
        token_id: u32,
        text: String,
        logit: f32,
    },
    /// The last event of a successful or cancelled request.
    Done(GenerationStats),
    /// The last event of a failed request.
    Error(String),
}

/// A request's event channel.
pub fn event_channel() -> (
    UnboundedSender<GenerationEvent>,
    UnboundedReceiver<GenerationEvent>,
) {
    tokio::sync::mpsc::unbounded_channel()
}

/// An engine's own numbers: what it holds now (gauges) and what it has done since it
/// loaded (counters). Tokens per pass, step time and passes per step are ratios of the
/// counters' rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineSnapshot {
    /// User requests submitted and not holding a slot, those the KV-token budget holds
    /// back included.
    pub waiting_user: usize,
    /// Background requests waiting likewise.
    pub waiting_background: usize,
    /// Requests holding a slot (prefilling or decoding), either priority.
    pub running: usize,
    /// Steps that ran the model.
    pub steps: u64,
    /// Model passes those steps ran (one per step on our exports).
    pub passes: u64,
    /// Tokens those passes took: prompt chunks and decoding rows.
    pub tokens: u64,
    /// Wall time of those steps, scheduling, sampling and detokenizing included.
    pub step_time: Duration,
}

impl EngineSnapshot {
    /// The counters alone, its gauges at zero: what an engine that went away leaves.
    pub fn counters(&self) -> Self {
        Self {
            waiting_user: 0,
            waiting_background: 0,
            running: 0,
            ..*self
        }
    }
}

/// Field by field: the numbers of several engines (a pool's workers) together.
impl std::ops::Add for EngineSnapshot {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            waiting_user: self.waiting_user + other.waiting_user,
            waiting_background: self.waiting_background + other.waiting_background,
            running: self.running + other.running,
            steps: self.steps + other.steps,
            passes: self.passes + other.passes,
            tokens: self.tokens + other.tokens,
            step_time: self.step_time + other.step_time,
        }
    }
}

/// A step-driven batched generator. The inference worker owns one on its own thread and
/// calls `step` in a loop while `has_work`; everything else is bookkeeping between steps.
pub trait Engine: Send {
    /// Queues a request; it joins the batch at a later step. Invalid requests (prompt
    /// too long, too many tokens asked) get an `Error` event right away.
    fn submit(&mut self, request: GenerationRequest);
    /// Admits waiting requests and runs one decode step for every active sequence,
    /// sending events. Requests whose receiver is gone or whose deadline passed leave.
    ///
    /// # Errors
    /// A failed forward pass: the engine's state can no longer be trusted, so the caller
    /// fails every request in flight (`fail_all`) and replaces the engine.
    fn step(&mut self) -> Result<(), super::EngineError>;
    /// True while any request is waiting or active.
    fn has_work(&self) -> bool;
    /// What the engine holds now and has done since it loaded, for `/metrics`.
    fn snapshot(&self) -> EngineSnapshot;
    /// Ends every request in flight with an `Error` event carrying `reason`.
    fn fail_all(&mut self, reason: &str);
}
