//! The continuous-batching engine: every request in flight holds a slot, and each step is
//! one pass over a token for every decoding row plus prompt chunks of newcomers, packed
//! together (on our packed graphs, one `session.run`; see `kv_store` for foreign ones).
//!
//! One `step`:
//! 1. drops sequences whose client left or whose deadline passed;
//! 2. asks the [`scheduler`](super::scheduler) for the step's plan, from the rows' state alone:
//!    who is preempted, who is admitted into which slot, who decodes, which prompt chunks run;
//! 3. admitted requests whose shared prompt prefix is kept start from a copy of it in their
//!    slot (`prefix_sharing`); the first request with a new prefix prefills it as a chunk of
//!    its own and keeps it, and requests with the same prefix wait one step for it;
//! 4. runs the pass, then samples: a token for every decoding row, and the first token of
//!    every prompt that finished. Text deltas stream back through each request's channel.
//!
//! Each row's positions count only its own tokens (its slot holds them from position 0), so
//! a row gets the same logits as it would alone.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::kv_store::{KvStore, Pass};
use super::prefix_sharing::{shared_prefix, PrefixCache};
use super::scheduler::{self, Candidate, Occupant, Phase, Plan};
use super::sequence::Sequence;
use super::{
    sampler, Engine, EngineError, EngineSnapshot, FinishReason, GenerationEvent, GenerationRequest,
    OnnxModel, PassRow, Priority, TextTokenizer,
};

/// The per-worker limits the engine enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineLimits {
    /// Slots: sequences admitted at once.
    pub max_batch_size: usize,
    pub max_prompt_tokens: usize,
    pub max_new_tokens: usize,
    /// KV positions admitted sequences may reserve in all (prompt plus `max_tokens` each).
    pub max_total_kv_tokens: usize,
    /// Tokens in one pass: a token per decoding row, the rest for prompt chunks.
    pub step_token_budget: usize,
    /// User sequences above which background ones neither start nor keep their slots.
    pub background_max_users: usize,
}

impl EngineLimits {
    /// Positions of one slot: the longest prompt plus the most new tokens, within the
    /// model's context.
    fn slot_capacity(&self, context: usize) -> usize {
        (self.max_prompt_tokens + self.max_new_tokens).min(context)
    }
}

/// Counters for benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineStats {
    /// Steps that ran a pass.
    pub steps: u64,
    /// Tokens sampled by decoding rows.
    pub decoded_tokens: u64,
    /// Prompt tokens prefilled (kept prefixes not counted).
    pub prefill_tokens: u64,
    /// Steps with no prompt chunk, their tokens and their time: the pure decode step.
    pub decode_only_steps: u64,
    pub decode_only_tokens: u64,
    pub decode_only_time: Duration,
    /// Prefills that started from a kept shared prefix, and the prompt tokens they skipped.
    pub prefix_hits: u64,
    pub prefix_tokens_reused: u64,
    /// Wall time of whole `step` calls, and within it: copying kept prefixes in and out,
    /// sampling, and detokenizing and sending text.
    pub step_time: Duration,
    pub kv_copy_time: Duration,
    pub sample_time: Duration,
    pub detokenize_time: Duration,
}

/// Where a sequence holding a slot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotPhase {
    /// `done` prompt tokens are in its KV.
    Prefilling { done: usize },
    /// Its KV holds `len` positions; `next_input` is fed next.
    Decoding { len: usize },
}

/// A sequence in its slot.
struct Running {
    seq: Sequence,
    admitted: u64,
    phase: SlotPhase,
}

/// Continuous-batching generator over one ONNX session.
pub struct BatchEngine {
    model: OnnxModel,
    tokenizer: Arc<TextTokenizer>,
    limits: EngineLimits,
    waiting: VecDeque<Sequence>,
    slots: Vec<Option<Running>>,
    kv: KvStore,
    prefixes: PrefixCache,
    admissions: u64,
    stats: EngineStats,
}

impl BatchEngine {
    pub fn new(model: OnnxModel, tokenizer: Arc<TextTokenizer>, limits: EngineLimits) -> Self {
        let capacity = limits.slot_capacity(model.info().max_position_embeddings);
        let kv = KvStore::new(&model, limits.max_batch_size, capacity);
        Self {
            model,
            tokenizer,
            kv,
            slots: (0..limits.max_batch_size).map(|_| None).collect(),
            limits,
            waiting: VecDeque::new(),
            prefixes: PrefixCache::default(),
            admissions: 0,
            stats: EngineStats::default(),
        }
    }

    /// Loads the model folder `dir` into a session of `env` and builds an engine with
    /// these limits.
    pub fn load(
        dir: &std::path::Path,
        env: &ort::environment::Environment,
        limits: EngineLimits,
        options: &super::SessionOptions,
    ) -> Result<Self, EngineError> {
        let info = super::ModelInfo::load(dir)?;
        let tokenizer = Arc::new(TextTokenizer::load(&info.tokenizer_path(), &info)?);
        let model = OnnxModel::load(&info, env, options)?;
        Ok(Self::new(model, tokenizer, limits))
    }

    /// Sequences holding a slot (prefilling or decoding).
    pub fn running(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    pub fn model(&self) -> &OnnxModel {
        &self.model
    }

    pub fn model_mut(&mut self) -> &mut OnnxModel {
        &mut self.model
    }

    fn check(&self, request: &GenerationRequest) -> Result<(), String> {
        let prompt = request.prompt_ids.len();
        let max_tokens = request.params.max_tokens;
        let context = self.model.info().max_position_embeddings;
        if prompt == 0 {
            return Err("the prompt has no tokens".into());
        }
        if prompt > self.limits.max_prompt_tokens {
            return Err(format!(
                "the prompt has {prompt} tokens, more than max_prompt_tokens {}",
                self.limits.max_prompt_tokens
            ));
        }
        if max_tokens == 0 || max_tokens > self.limits.max_new_tokens {
            return Err(format!(
                "max_tokens must be between 1 and {}, got {max_tokens}",
                self.limits.max_new_tokens
            ));
        }
        if prompt + max_tokens > context {
            return Err(format!(
                "prompt of {prompt} tokens plus max_tokens {max_tokens} exceeds the model's context of {context}"
            ));
        }
        if prompt + max_tokens > self.limits.max_total_kv_tokens {
            return Err(format!(
                "prompt of {prompt} tokens plus max_tokens {max_tokens} exceeds max_total_kv_tokens {}",
                self.limits.max_total_kv_tokens
            ));
        }
        let vocab = self.model.info().vocab_size;
        if let Some(bad) = request.prompt_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            ));
        }
        sampler::validate(&request.params)
    }

    /// Ends cancelled sequences wherever they are.
    fn drop_cancelled(&mut self, now: Instant) {
        let (cancelled, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|s| s.is_cancelled(now));
        self.waiting = waiting.into();
        for seq in cancelled {
            seq.finish(FinishReason::Cancelled);
        }
        for slot in 0..self.slots.len() {
            if self.slots[slot]
                .as_ref()
                .is_some_and(|s| s.seq.is_cancelled(now))
            {
                self.end(slot, FinishReason::Cancelled);
            }
        }
    }

    /// Ends the sequence in `slot` and frees the slot.
    fn end(&mut self, slot: usize, reason: FinishReason) {
        if let Some(s) = self.slots[slot].take() {
            s.seq.finish(reason);
        }
        self.kv.free(slot);
    }

    /// The request's shared prefix (see [`shared_prefix`]).
    fn shared_prefix(seq: &Sequence) -> &[u32] {
        shared_prefix(&seq.request.prompt_ids, seq.request.shared_prefix)
    }

    /// Where a prompt with `done` tokens in its KV may prefill to this step
    /// ([`PrefixCache::prefill_stop`]).
    fn stop(&self, seq: &Sequence, done: usize, keepers: &mut Vec<Vec<u32>>) -> usize {
        let prefix = Self::shared_prefix(seq);
        self.prefixes
            .prefill_stop(prefix, seq.prompt_len(), done, keepers)
    }

    /// The scheduler's view of the slots and the waiting queue, and its plan.
    fn plan(&self) -> Plan {
        let mut keepers = Vec::new();
        let mut occupants: Vec<Option<Occupant>> = vec![None; self.slots.len()];
        let mut by_age: Vec<(u64, usize)> = (0..self.slots.len())
            .filter_map(|i| self.slots[i].as_ref().map(|s| (s.admitted, i)))
            .collect();
        by_age.sort_unstable();
        for (_, i) in by_age {
            let Some(s) = &self.slots[i] else { continue };
            let phase = match s.phase {
                SlotPhase::Prefilling { done } => Phase::Prefilling {
                    done,
                    stop: self.stop(&s.seq, done, &mut keepers),
                },
                SlotPhase::Decoding { .. } => Phase::Decoding,
            };
            occupants[i] = Some(Occupant {
                priority: s.seq.request.priority,
                admitted: s.admitted,
                reserved: s.seq.reserved_tokens(),
                phase,
            });
        }
        let candidates: Vec<Candidate> = self
            .waiting
            .iter()
            .map(|seq| {
                let start = self.prefixes.prefill_start(Self::shared_prefix(seq));
                Candidate {
                    priority: seq.request.priority,
                    reserved: seq.reserved_tokens(),
                    start,
                    stop: self.stop(seq, start, &mut keepers),
                }
            })
            .collect();
        scheduler::plan(
            &occupants,
            &candidates,
            &scheduler::Limits {
                slots: self.limits.max_batch_size,
                kv_tokens: self.limits.max_total_kv_tokens,
                step_tokens: self.limits.step_token_budget,
                lanes: self.model.prefill_lanes().unwrap_or(usize::MAX),
                background_max_users: self.limits.background_max_users,
            },
        )
    }

    /// Preempts and admits as planned; an admitted request whose shared prefix is kept
    /// starts from a copy of it.
    fn apply_admissions(&mut self, plan: &Plan, now: Instant) -> Result<(), EngineError> {
        for &slot in &plan.preempt {
            self.end(slot, FinishReason::Preempted);
        }
        let mut admitted: Vec<(usize, usize)> = plan.admit.clone();
        // Remove from the back so earlier indices stay valid, then place in plan order.
        admitted.sort_by_key(|&(index, _)| std::cmp::Reverse(index));
        let mut placed = Vec::with_capacity(admitted.len());
        for (index, slot) in admitted {
            if let Some(seq) = self.waiting.remove(index) {
                placed.push((index, slot, seq));
            }
        }
        placed.sort_by_key(|&(index, _, _)| index);
        for (_, slot, mut seq) in placed {
            seq.mark_admitted(now);
            let prefix = Self::shared_prefix(&seq).to_vec();
            let done = if self.start_from_kept(slot, &prefix)? {
                prefix.len()
            } else {
                0
            };
            self.slots[slot] = Some(Running {
                seq,
                admitted: self.admissions,
                phase: SlotPhase::Prefilling { done },
            });
            self.admissions += 1;
        }
        Ok(())
    }

    /// Prompts admitted before their prefix was kept start from it once it is.
    fn adopt_kept_prefixes(&mut self) -> Result<(), EngineError> {
        for slot in 0..self.slots.len() {
            let Some(s) = &self.slots[slot] else { continue };
            let prefix = Self::shared_prefix(&s.seq);
            if s.phase != (SlotPhase::Prefilling { done: 0 }) || prefix.is_empty() {
                continue;
            }
            let prefix = prefix.to_vec();
            if self.start_from_kept(slot, &prefix)? {
                if let Some(s) = self.slots[slot].as_mut() {
                    s.phase = SlotPhase::Prefilling { done: prefix.len() };
                }
            }
        }
        Ok(())
    }

    /// Copies the kept KV of `prefix`, when there is one, into `slot`; says whether it did.
    fn start_from_kept(&mut self, slot: usize, prefix: &[u32]) -> Result<bool, EngineError> {
        let started = Instant::now();
        if !self
            .prefixes
            .copy_into(&mut self.kv, &self.model, slot, prefix)?
        {
            return Ok(false);
        }
        self.stats.kv_copy_time += started.elapsed();
        self.stats.prefix_hits += 1;
        self.stats.prefix_tokens_reused += prefix.len() as u64;
        Ok(true)
    }

    /// The pass the plan asks for.
    fn pass(&self, plan: &Plan) -> Pass {
        let mut pass = Pass::default();
        for &slot in &plan.decode {
            if let Some(Running {
                seq,
                phase: SlotPhase::Decoding { len },
                ..
            }) = &self.slots[slot]
            {
                pass.decode.push(PassRow {
                    slot,
                    past: *len,
                    tokens: vec![seq.next_input],
                    logits: true,
                });
            }
        }
        for chunk in &plan.chunks {
            if let Some(Running {
                seq,
                phase: SlotPhase::Prefilling { done },
                ..
            }) = &self.slots[chunk.slot]
            {
                let end = done + chunk.len;
                pass.chunks.push(PassRow {
                    slot: chunk.slot,
                    past: *done,
                    tokens: seq.request.prompt_ids[*done..end].to_vec(),
                    logits: end == seq.prompt_len(),
                });
            }
        }
        pass
    }

    /// Samples a token for every row of `pass` that has logits and moves each row on.
    fn apply_pass(
        &mut self,
        pass: &Pass,
        mut logits: Vec<f32>,
        spent: Duration,
    ) -> Result<(), EngineError> {
        let vocab = self.model.info().vocab_size;
        let mut at = 0;
        for row in &pass.decode {
            if let Some(s) = self.slots[row.slot].as_mut() {
                s.phase = SlotPhase::Decoding { len: row.past + 1 };
            }
            self.stats.decoded_tokens += 1;
            self.take_token(row.slot, &mut logits[at * vocab..(at + 1) * vocab]);
            at += 1;
        }
        for row in &pass.chunks {
            let done = row.past + row.tokens.len();
            self.stats.prefill_tokens += row.tokens.len() as u64;
            let Some(s) = self.slots[row.slot].as_mut() else {
                continue;
            };
            s.seq.add_prefill_time(spent);
            s.phase = SlotPhase::Prefilling { done };
            let started = Instant::now();
            let prefix = Self::shared_prefix(&s.seq);
            if self
                .prefixes
                .keep_if_new(&self.kv, row.slot, prefix, done)?
            {
                self.stats.kv_copy_time += started.elapsed();
            }
            if row.logits {
                if let Some(s) = self.slots[row.slot].as_mut() {
                    s.phase = SlotPhase::Decoding { len: done };
                }
                self.take_token(row.slot, &mut logits[at * vocab..(at + 1) * vocab]);
                at += 1;
            }
        }
        Ok(())
    }

    /// Samples the next token of the sequence in `slot` and streams it; ends the sequence
    /// when it is finished.
    fn take_token(&mut self, slot: usize, logits: &mut [f32]) {
        let eos = self.model.info().eos_token_id;
        let Some(s) = self.slots[slot].as_mut() else {
            return;
        };
        let sampled = Instant::now();
        let (token, logit) = s.seq.sample(logits);
        let emitted = Instant::now();
        let finish = s.seq.emit(token, logit, &self.tokenizer, eos);
        self.stats.sample_time += emitted - sampled;
        self.stats.detokenize_time += emitted.elapsed();
        if let Some(reason) = finish {
            self.end(slot, reason);
        }
    }
}

impl Engine for BatchEngine {
    fn submit(&mut self, request: GenerationRequest) {
        if let Err(reason) = self.check(&request) {
            let _ = request.events.send(GenerationEvent::Error(reason));
            return;
        }
        self.waiting.push_back(Sequence::new(request));
    }

    fn step(&mut self) -> Result<(), EngineError> {
        let started = Instant::now();
        self.drop_cancelled(started);
        self.adopt_kept_prefixes()?;
        let plan = self.plan();
        self.apply_admissions(&plan, started)?;
        let pass = self.pass(&plan);
        if pass.decode.is_empty() && pass.chunks.is_empty() {
            return Ok(());
        }
        let run_started = Instant::now();
        let logits = self.kv.forward(&mut self.model, &pass)?;
        self.apply_pass(&pass, logits, run_started.elapsed())?;
        let spent = started.elapsed();
        self.stats.steps += 1;
        self.stats.step_time += spent;
        if pass.chunks.is_empty() {
            self.stats.decode_only_steps += 1;
            self.stats.decode_only_tokens += pass.decode.len() as u64;
            self.stats.decode_only_time += spent;
        }
        Ok(())
    }

    fn has_work(&self) -> bool {
        !self.waiting.is_empty() || self.running() > 0
    }

    fn snapshot(&self) -> EngineSnapshot {
        let background = self
            .waiting
            .iter()
            .filter(|seq| seq.request.priority == Priority::Background)
            .count();
        EngineSnapshot {
            waiting_user: self.waiting.len() - background,
            waiting_background: background,
            running: self.running(),
            steps: self.stats.steps,
            passes: self.model.runs(),
            tokens: self.stats.decoded_tokens + self.stats.prefill_tokens,
            step_time: self.stats.step_time,
        }
    }

    fn fail_all(&mut self, reason: &str) {
        for seq in self.waiting.drain(..) {
            seq.fail(reason);
        }
        for slot in 0..self.slots.len() {
            if let Some(s) = self.slots[slot].take() {
                s.seq.fail(reason);
            }
            self.kv.free(slot);
        }
    }
}
