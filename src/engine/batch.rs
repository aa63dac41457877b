//! The continuous-batching engine: every request in flight shares each decode step, and
//! requests join or leave the batch between any two steps.
//!
//! One `step`:
//! 1. drops sequences whose client left or whose deadline passed;
//! 2. admits waiting requests while the batch-size and KV-token budgets allow (the KV budget
//!    counts padding: rows x the longest possible row); user requests go before background
//!    ones and, when the batch is full, take a background sequence's place (`Preempted`);
//! 3. prefills admitted prompts, starting from the kept KV of a shared prefix when the
//!    request names one (see `prefix_cache`); prompts that can finish together share one
//!    pass, a long one goes alone in chunks; at most `prefill_chunk_tokens` prompt tokens
//!    per step while other streams are decoding, so a long prompt delays their next token
//!    by one chunk, not by the whole prompt;
//! 4. lets prefilled sequences join the batch: with a slot cache (fused-attention graphs)
//!    each newcomer's prompt KV is copied into its own slot, a finished row's or a new one;
//!    with a padded cache (explicit-attention graphs) the batch cache is rebuilt when
//!    sequences are ready or many rows have finished (finished rows otherwise stay as cheap
//!    dead rows until then);
//! 5. runs one decode step for every row in one `session.run`.
//!
//! Each row's positions count only its own tokens, so a row gets the same logits as it
//! would alone: in a slot cache a row's real positions start its slot; in a padded cache
//! they are the rightmost ones and the attention mask hides the left padding (see
//! `kv_cache`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::kv_cache::RowSource;
use super::prefix_cache::PrefixCache;
use super::sequence::Sequence;
use super::{
    sampler, Engine, EngineError, FinishReason, GenerationEvent, GenerationRequest, KvCache,
    KvLayout, OnnxModel, Priority, StepInput, TextTokenizer,
};
use crate::config::InferenceConfig;

/// The per-worker limits the engine enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineLimits {
    pub max_batch_size: usize,
    pub max_prompt_tokens: usize,
    pub max_new_tokens: usize,
    pub max_total_kv_tokens: usize,
    pub prefill_chunk_tokens: usize,
}

impl From<&InferenceConfig> for EngineLimits {
    fn from(c: &InferenceConfig) -> Self {
        Self {
            max_batch_size: c.max_batch_size,
            max_prompt_tokens: c.max_prompt_tokens,
            max_new_tokens: c.max_new_tokens,
            max_total_kv_tokens: c.max_total_kv_tokens,
            prefill_chunk_tokens: c.prefill_chunk_tokens,
        }
    }
}

/// Counters for benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineStats {
    pub decode_steps: u64,
    /// Sum over decode steps of the number of live rows (tokens produced by decoding).
    pub decoded_tokens: u64,
    pub decode_time: Duration,
    pub prefill_tokens: u64,
    pub prefill_time: Duration,
    /// Passes that prefilled several prompts together.
    pub batched_prefills: u64,
    /// Prefills that started from a kept shared prefix, and the prompt tokens they skipped.
    pub prefix_hits: u64,
    pub prefix_tokens_reused: u64,
    pub rebuilds: u64,
    pub rebuild_time: Duration,
    /// Wall time of whole `step` calls.
    pub step_time: Duration,
}

/// A prompt being prefilled, possibly over several steps.
struct Prefill {
    seq: Sequence,
    cache: KvCache,
    done: usize,
}

/// A prefilled sequence (first token sampled) waiting to join the batch, with the cache
/// holding its prompt: its own, or one shared with the rows it was prefilled with.
struct Ready {
    seq: Sequence,
    cache: Arc<KvCache>,
    row: usize,
}

impl Ready {
    /// Where its prompt's KV lies.
    fn source(&self) -> RowSource<'_> {
        RowSource {
            cache: &self.cache,
            row: self.row,
            len: self.seq.prompt_len(),
        }
    }
}

/// A batch row: a live sequence, or a finished one kept until the next rebuild (padded
/// cache) or until a newcomer takes its slot (slot cache).
struct Row {
    seq: Option<Sequence>,
    /// Real (unpadded) positions of this row in the cache.
    len: usize,
}

struct Batch {
    rows: Vec<Row>,
    cache: KvCache,
}

impl Batch {
    fn live(&self) -> usize {
        self.rows.iter().filter(|r| r.seq.is_some()).count()
    }
}

/// Continuous-batching generator over one ONNX session.
pub struct BatchEngine {
    model: OnnxModel,
    tokenizer: Arc<TextTokenizer>,
    limits: EngineLimits,
    waiting: VecDeque<Sequence>,
    prefilling: VecDeque<Prefill>,
    /// Prefilled sequences, to join the batch at the next rebuild.
    ready: VecDeque<Ready>,
    batch: Option<Batch>,
    prefixes: PrefixCache,
    stats: EngineStats,
}

impl BatchEngine {
    pub fn new(model: OnnxModel, tokenizer: Arc<TextTokenizer>, limits: EngineLimits) -> Self {
        Self {
            model,
            tokenizer,
            limits,
            waiting: VecDeque::new(),
            prefilling: VecDeque::new(),
            ready: VecDeque::new(),
            batch: None,
            prefixes: PrefixCache::default(),
            stats: EngineStats::default(),
        }
    }

    /// Loads the model folder `dir` and builds an engine with the configured limits and
    /// session threads.
    pub fn load(
        dir: &std::path::Path,
        runtime: &crate::config::RuntimeConfig,
        config: &InferenceConfig,
    ) -> Result<Self, EngineError> {
        let info = super::ModelInfo::load(dir)?;
        let tokenizer = Arc::new(TextTokenizer::load(&info.tokenizer_path(), &info)?);
        let options = super::SessionOptions::from_config(config);
        let model = OnnxModel::load(&info, runtime, &options)?;
        Ok(Self::new(model, tokenizer, EngineLimits::from(config)))
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    pub fn model(&self) -> &OnnxModel {
        &self.model
    }

    /// KV positions the batch could grow to if `extra` joined: every row is padded to the
    /// longest, so the bound is rows x the largest prompt-plus-max_tokens among them. This is
    /// what `max_total_kv_tokens` caps, padding included.
    fn padded_kv_footprint(&self, extra: &Sequence) -> usize {
        let batch = self.batch.iter().flat_map(|b| b.rows.iter());
        let admitted = self
            .prefilling
            .iter()
            .map(|p| &p.seq)
            .chain(self.ready.iter().map(|r| &r.seq))
            .chain(batch.filter_map(|r| r.seq.as_ref()))
            .chain(std::iter::once(extra));
        let (rows, longest) = admitted.fold((0, 0), |(rows, longest), s| {
            (rows + 1, longest.max(s.reserved_tokens()))
        });
        rows * longest
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
        let cancelled = |s: &Sequence| s.is_cancelled(now);
        for seq in extract(&mut self.waiting, |s| cancelled(s)) {
            seq.finish(FinishReason::Cancelled);
        }
        for p in extract(&mut self.prefilling, |p| cancelled(&p.seq)) {
            p.seq.finish(FinishReason::Cancelled);
        }
        for r in extract(&mut self.ready, |r| cancelled(&r.seq)) {
            r.seq.finish(FinishReason::Cancelled);
        }
        if let Some(batch) = &mut self.batch {
            for row in &mut batch.rows {
                if row.seq.as_ref().is_some_and(cancelled) {
                    if let Some(seq) = row.seq.take() {
                        seq.finish(FinishReason::Cancelled);
                    }
                }
            }
        }
    }

    /// Moves waiting requests into prefill while the budgets allow: user requests first
    /// (oldest first), background ones only when no user request waits. A user request
    /// that does not fit takes the place of a running background sequence.
    fn admit(&mut self, now: Instant) -> Result<(), EngineError> {
        while let Some(index) = self.next_to_admit() {
            let next = &self.waiting[index];
            let fits_batch = self.active() < self.limits.max_batch_size;
            let fits_kv = self.padded_kv_footprint(next) <= self.limits.max_total_kv_tokens;
            if !(fits_batch && fits_kv) {
                if next.request.priority == Priority::Interactive && self.preempt_background() {
                    continue;
                }
                break;
            }
            let Some(mut seq) = self.waiting.remove(index) else {
                break;
            };
            seq.mark_admitted(now);
            // A kept shared prefix is adopted by `prefill`, which follows in the same step.
            let cache = self.model.empty_cache(1, seq.prompt_len())?;
            let prefill = Prefill {
                seq,
                cache,
                done: 0,
            };
            // User prompts are prefilled before background ones.
            let at = match prefill.seq.request.priority {
                Priority::Interactive => self
                    .prefilling
                    .iter()
                    .position(|p| p.seq.request.priority == Priority::Background)
                    .unwrap_or(self.prefilling.len()),
                Priority::Background => self.prefilling.len(),
            };
            self.prefilling.insert(at, prefill);
        }
        Ok(())
    }

    /// The oldest waiting user request, else the oldest waiting request.
    fn next_to_admit(&self) -> Option<usize> {
        let interactive = self
            .waiting
            .iter()
            .position(|s| s.request.priority == Priority::Interactive);
        interactive.or(if self.waiting.is_empty() {
            None
        } else {
            Some(0)
        })
    }

    /// Ends the youngest admitted background sequence as `Preempted` (cheapest first: one
    /// still prefilling, then one ready to join, then a batch row). False when none runs.
    fn preempt_background(&mut self) -> bool {
        let background = |s: &Sequence| s.request.priority == Priority::Background;
        if let Some(i) = self.prefilling.iter().rposition(|p| background(&p.seq)) {
            if let Some(p) = self.prefilling.remove(i) {
                p.seq.finish(FinishReason::Preempted);
                return true;
            }
        }
        if let Some(i) = self.ready.iter().rposition(|r| background(&r.seq)) {
            if let Some(r) = self.ready.remove(i) {
                r.seq.finish(FinishReason::Preempted);
                return true;
            }
        }
        let rows = self.batch.iter_mut().flat_map(|b| b.rows.iter_mut());
        for row in rows.rev() {
            if row.seq.as_ref().is_some_and(background) {
                if let Some(seq) = row.seq.take() {
                    seq.finish(FinishReason::Preempted);
                    return true;
                }
            }
        }
        false
    }

    /// Runs prefill: all pending prompts when nothing is decoding, otherwise at most
    /// `prefill_chunk_tokens` tokens (padding included) so decoding streams are not stalled
    /// for long. Prompts that can finish together go in one pass (`prefill_together`);
    /// a long prompt, or one whose shared prefix must first be kept, goes alone in chunks.
    fn prefill(&mut self) -> Result<(), EngineError> {
        let decoding = self.batch.as_ref().is_some_and(|b| b.live() > 0);
        let mut budget = if decoding {
            self.limits.prefill_chunk_tokens
        } else {
            usize::MAX
        };
        self.adopt_kept_prefixes()?;
        while budget > 0 && !self.prefilling.is_empty() {
            let together = self.batchable(budget);
            let spent = if together >= 2 {
                self.prefill_together(together)?
            } else {
                self.prefill_chunk(budget)?
            };
            budget = budget.saturating_sub(spent);
        }
        Ok(())
    }

    /// True when `p` must first prefill its shared prefix alone, to keep it.
    fn must_keep_prefix(&self, p: &Prefill) -> bool {
        let prefix = shared_prefix(&p.seq);
        p.done < prefix && !self.prefixes.contains(&p.seq.request.prompt_ids[..prefix])
    }

    /// Admitted sequences whose shared prefix is kept start from a copy of it: those
    /// admitted this step, and those admitted before another sequence kept it.
    fn adopt_kept_prefixes(&mut self) -> Result<(), EngineError> {
        for p in self.prefilling.iter_mut().filter(|p| p.done == 0) {
            let prefix = shared_prefix(&p.seq);
            if prefix == 0 {
                continue;
            }
            let ids = &p.seq.request.prompt_ids[..prefix];
            if let Some(cache) = self.prefixes.copy_of(self.model.info(), ids)? {
                self.stats.prefix_hits += 1;
                self.stats.prefix_tokens_reused += prefix as u64;
                p.cache = cache;
                p.done = prefix;
            }
        }
        Ok(())
    }

    /// How many sequences at the front of `prefilling` can finish their prompts in one
    /// pass: each has at most a chunk left and no prefix to keep first, and rows × the
    /// longest rest (the padded size of the pass) fits the budget.
    fn batchable(&self, budget: usize) -> usize {
        let (mut rows, mut longest) = (0, 0);
        for p in &self.prefilling {
            let rest = p.seq.prompt_len() - p.done;
            let padded = (rows + 1) * longest.max(rest);
            if rest > self.limits.prefill_chunk_tokens
                || self.must_keep_prefix(p)
                || padded > budget
            {
                break;
            }
            rows += 1;
            longest = longest.max(rest);
        }
        rows
    }

    /// Prefills the front sequence alone, one chunk (at most `budget` tokens; a shared
    /// prefix not kept yet is a chunk of its own, then kept). Returns the tokens spent.
    fn prefill_chunk(&mut self, budget: usize) -> Result<usize, EngineError> {
        let Some(mut p) = self.prefilling.pop_front() else {
            return Ok(0);
        };
        let prefix = shared_prefix(&p.seq);
        let keep_prefix = self.must_keep_prefix(&p);
        let prompt = &p.seq.request.prompt_ids;
        let stop = if keep_prefix { prefix } else { prompt.len() };
        let chunk = (stop - p.done)
            .min(self.limits.prefill_chunk_tokens)
            .min(budget);
        let total = p.done + chunk;
        let input = StepInput {
            batch: 1,
            seq_len: chunk,
            input_ids: prompt[p.done..total]
                .iter()
                .map(|&t| i64::from(t))
                .collect(),
            past: vec![p.done],
            new: vec![chunk],
        };
        let started = Instant::now();
        let mut out = self.model.forward(input, p.cache)?;
        let spent = started.elapsed();
        self.stats.prefill_time += spent;
        self.stats.prefill_tokens += chunk as u64;
        p.seq.add_prefill_time(spent);
        p.cache = out.cache;
        p.done = total;
        if keep_prefix && p.done == prefix {
            let ids = &p.seq.request.prompt_ids[..prefix];
            self.prefixes.insert(self.model.info(), ids, &p.cache)?;
        }
        if p.done < p.seq.prompt_len() {
            self.prefilling.push_front(p);
            return Ok(chunk);
        }
        let eos = self.model.info().eos_token_id;
        match p.seq.advance(&mut out.last_logits, &self.tokenizer, eos) {
            Some(reason) => p.seq.finish(reason),
            None => self.ready.push_back(Ready {
                seq: p.seq,
                cache: Arc::new(p.cache),
                row: 0,
            }),
        }
        Ok(chunk)
    }

    /// Finishes the prompts of the first `n` prefilling sequences in one pass. Their kept
    /// positions (a shared prefix, earlier chunks) are gathered into one cache; their
    /// remaining tokens follow, each row padded at its end to the longest rest, so every
    /// row's real positions stay contiguous, and each row's first token comes from the
    /// logits of its own last real position. Returns the padded tokens spent.
    fn prefill_together(&mut self, n: usize) -> Result<usize, EngineError> {
        let rows: Vec<Prefill> = self.prefilling.drain(..n).collect();
        let info = self.model.info();
        let past = rows.iter().map(|p| p.done).max().unwrap_or(0);
        let width = rows
            .iter()
            .map(|p| p.seq.prompt_len() - p.done)
            .max()
            .unwrap_or(0);
        let sources: Vec<RowSource> = rows
            .iter()
            .map(|p| RowSource {
                cache: &p.cache,
                row: 0,
                len: p.done,
            })
            .collect();
        let cache = KvCache::gather(info, &sources, past + width)?;
        drop(sources);
        let pad = i64::from(info.eos_token_id);
        let mut input_ids = Vec::with_capacity(n * width);
        for p in &rows {
            let rest = &p.seq.request.prompt_ids[p.done..];
            input_ids.extend(rest.iter().map(|&t| i64::from(t)));
            input_ids.extend(std::iter::repeat_n(pad, width - rest.len()));
        }
        let started = Instant::now();
        let mut out = self.model.forward(
            StepInput {
                batch: n,
                seq_len: width,
                input_ids,
                past: rows.iter().map(|p| p.done).collect(),
                new: rows.iter().map(|p| p.seq.prompt_len() - p.done).collect(),
            },
            cache,
        )?;
        let spent = started.elapsed();
        self.stats.prefill_time += spent;
        self.stats.batched_prefills += 1;
        let vocab = self.model.info().vocab_size;
        let eos = self.model.info().eos_token_id;
        let shared = Arc::new(out.cache);
        for (i, mut p) in rows.into_iter().enumerate() {
            let rest = p.seq.prompt_len() - p.done;
            self.stats.prefill_tokens += rest as u64;
            p.seq.add_prefill_time(spent);
            let logits = &mut out.last_logits[i * vocab..(i + 1) * vocab];
            match p.seq.advance(logits, &self.tokenizer, eos) {
                Some(reason) => p.seq.finish(reason),
                None => self.ready.push_back(Ready {
                    seq: p.seq,
                    cache: Arc::clone(&shared),
                    row: i,
                }),
            }
        }
        Ok(n * width)
    }

    /// Lets ready sequences join the batch, the KV layout's way (`rebuild_padded` or
    /// `fill_slots`), and counts the time as the engine's KV copying.
    fn maybe_rebuild(&mut self) -> Result<(), EngineError> {
        let started = Instant::now();
        let copied = match self.model.kv_layout() {
            KvLayout::Padded => self.rebuild_padded()?,
            KvLayout::Slots => self.fill_slots()?,
        };
        if copied {
            self.stats.rebuilds += 1;
            self.stats.rebuild_time += started.elapsed();
        }
        Ok(())
    }

    /// The largest KV length any admitted row may reach: a slot cache's capacity, so that
    /// rows never outgrow their slots while decoding.
    fn slot_capacity(&self) -> usize {
        let batch = self.batch.iter().flat_map(|b| b.rows.iter());
        batch
            .filter_map(|r| r.seq.as_ref())
            .chain(self.ready.iter().map(|r| &r.seq))
            .map(Sequence::reserved_tokens)
            .max()
            .unwrap_or(0)
    }

    /// Padded cache: rebuilds it when sequences are ready to join or half the rows are
    /// finished (a copy of every live row); otherwise leaves it alone. True when rebuilt.
    fn rebuild_padded(&mut self) -> Result<bool, EngineError> {
        let (live, dead) = self
            .batch
            .as_ref()
            .map_or((0, 0), |b| (b.live(), b.rows.len() - b.live()));
        if self.ready.is_empty() && (dead == 0 || dead < live) {
            return Ok(false);
        }
        let old = self.batch.take();
        let ready = std::mem::take(&mut self.ready);
        let mut sources = Vec::new();
        if let Some(b) = &old {
            for (row, r) in b.rows.iter().enumerate() {
                if r.seq.is_some() {
                    sources.push(RowSource {
                        cache: &b.cache,
                        row,
                        len: r.len,
                    });
                }
            }
        }
        sources.extend(ready.iter().map(Ready::source));
        let cache = if sources.is_empty() {
            None
        } else {
            Some(KvCache::gather(self.model.info(), &sources, 0)?)
        };
        drop(sources);
        let mut rows = Vec::new();
        if let Some(b) = old {
            rows.extend(b.rows.into_iter().filter(|r| r.seq.is_some()));
        }
        rows.extend(ready.into_iter().map(|r| Row {
            len: r.seq.prompt_len(),
            seq: Some(r.seq),
        }));
        self.batch = cache.map(|cache| Batch { rows, cache });
        Ok(true)
    }

    /// Slot cache: each ready sequence takes a finished row's slot, or a new one at the
    /// end; only that slot is written (the whole cache moves only when a newcomer needs
    /// more positions than the slots have). Finished rows at the end are dropped, which
    /// shrinks the next step's batch. True when a sequence joined.
    fn fill_slots(&mut self) -> Result<bool, EngineError> {
        let capacity = self.slot_capacity();
        let ready = std::mem::take(&mut self.ready);
        let joined = !ready.is_empty();
        let info = self.model.info();
        let mut batch = match self.batch.take() {
            Some(batch) => batch,
            None if ready.is_empty() => return Ok(false),
            None => Batch {
                rows: Vec::new(),
                cache: self.model.empty_cache(0, capacity)?,
            },
        };
        for r in ready {
            let slot = batch
                .rows
                .iter()
                .position(|row| row.seq.is_none())
                .unwrap_or(batch.rows.len());
            batch.cache.place(info, slot, &r.source(), capacity)?;
            let row = Row {
                len: r.seq.prompt_len(),
                seq: Some(r.seq),
            };
            if slot == batch.rows.len() {
                batch.rows.push(row);
            } else {
                batch.rows[slot] = row;
            }
        }
        while batch.rows.last().is_some_and(|r| r.seq.is_none()) {
            batch.rows.pop();
        }
        batch.cache.truncate(info, batch.rows.len());
        if !batch.rows.is_empty() {
            self.batch = Some(batch);
        }
        Ok(joined)
    }

    /// One decode step for every row of the batch.
    fn decode(&mut self) -> Result<(), EngineError> {
        let Some(batch) = self.batch.take() else {
            return Ok(());
        };
        if batch.live() == 0 {
            return Ok(());
        }
        let Batch { mut rows, cache } = batch;
        let n = rows.len();
        let mut input_ids = Vec::with_capacity(n);
        let mut past = Vec::with_capacity(n);
        for row in &rows {
            match &row.seq {
                Some(seq) => {
                    input_ids.push(i64::from(seq.next_input));
                    past.push(row.len);
                }
                // A finished row waiting for a rebuild or a newcomer: a placeholder with no
                // past at position 0, so it never runs past the model's context however long
                // the others go on. Its output is ignored.
                None => {
                    input_ids.push(0);
                    past.push(0);
                }
            }
        }
        let started = Instant::now();
        let mut out = self.model.forward(
            StepInput {
                batch: n,
                seq_len: 1,
                input_ids,
                past,
                new: vec![1; n],
            },
            cache,
        )?;
        let vocab = self.model.info().vocab_size;
        let eos = self.model.info().eos_token_id;
        let mut live = 0;
        for (i, row) in rows.iter_mut().enumerate() {
            let Some(seq) = row.seq.as_mut() else {
                continue;
            };
            row.len += 1;
            live += 1;
            let logits = &mut out.last_logits[i * vocab..(i + 1) * vocab];
            if let Some(reason) = seq.advance(logits, &self.tokenizer, eos) {
                if let Some(seq) = row.seq.take() {
                    seq.finish(reason);
                }
            }
        }
        self.stats.decode_steps += 1;
        self.stats.decoded_tokens += live;
        self.stats.decode_time += started.elapsed();
        self.batch = Some(Batch {
            rows,
            cache: out.cache,
        });
        Ok(())
    }
}

/// The request's shared prefix, when it leaves at least one prompt token to prefill (the
/// last prompt token's logits give the first new token).
fn shared_prefix(seq: &Sequence) -> usize {
    let n = seq.request.shared_prefix;
    if n < seq.prompt_len() {
        n
    } else {
        0
    }
}

/// Removes and returns the items matching `pred`, keeping the others in order.
fn extract<T>(queue: &mut VecDeque<T>, mut pred: impl FnMut(&T) -> bool) -> Vec<T> {
    let mut taken = Vec::new();
    let mut kept = VecDeque::with_capacity(queue.len());
    for item in queue.drain(..) {
        if pred(&item) {
            taken.push(item);
        } else {
            kept.push_back(item);
        }
    }
    *queue = kept;
    taken
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
        self.admit(started)?;
        self.prefill()?;
        self.maybe_rebuild()?;
        self.decode()?;
        self.maybe_rebuild()?;
        self.stats.step_time += started.elapsed();
        Ok(())
    }

    fn has_work(&self) -> bool {
        !self.waiting.is_empty() || self.active() > 0
    }

    /// Sequences admitted (prefilling, ready or in the batch), not counting dead rows.
    fn active(&self) -> usize {
        self.prefilling.len() + self.ready.len() + self.batch.as_ref().map_or(0, Batch::live)
    }

    fn fail_all(&mut self, reason: &str) {
        for seq in self.waiting.drain(..) {
            seq.fail(reason);
        }
        for p in self.prefilling.drain(..) {
            p.seq.fail(reason);
        }
        for r in self.ready.drain(..) {
            r.seq.fail(reason);
        }
        if let Some(batch) = self.batch.take() {
            for seq in batch.rows.into_iter().filter_map(|r| r.seq) {
                seq.fail(reason);
            }
        }
    }
}
