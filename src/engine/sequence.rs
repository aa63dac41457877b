//! One request inside the engine: its sampler, detokenizer, timings and event channel.

use std::time::{Duration, Instant};

use super::detokenizer::Detokenizer;
use super::sampler::Sampler;
use super::{FinishReason, GenerationEvent, GenerationRequest, GenerationStats, TextTokenizer};

/// A request being generated.
pub struct Sequence {
    pub request: GenerationRequest,
    sampler: Sampler,
    detokenizer: Detokenizer,
    /// Tokens generated so far (EOS included once produced).
    pub generated: Vec<u32>,
    /// The token to feed at the next decode step.
    pub next_input: u32,
    admitted_at: Option<Instant>,
    prefill_time: Duration,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
}

impl Sequence {
    pub fn new(request: GenerationRequest) -> Self {
        let sampler = Sampler::new(request.params.clone(), &request.prompt_ids);
        let detokenizer = Detokenizer::new(&request.prompt_ids, request.params.stop.clone());
        Self {
            request,
            sampler,
            detokenizer,
            generated: Vec::new(),
            next_input: 0,
            admitted_at: None,
            prefill_time: Duration::ZERO,
            first_token_at: None,
            last_token_at: None,
        }
    }

    pub fn prompt_len(&self) -> usize {
        self.request.prompt_ids.len()
    }

    /// KV positions this sequence may need at most: prompt plus every allowed new token.
    pub fn reserved_tokens(&self) -> usize {
        self.prompt_len() + self.request.params.max_tokens
    }

    pub fn mark_admitted(&mut self, now: Instant) {
        self.admitted_at = Some(now);
        self.request.span.in_scope(|| {
            tracing::debug!(
                engine_request = self.request.id,
                prompt_tokens = self.prompt_len(),
                queued_ms = now
                    .saturating_duration_since(self.request.received_at)
                    .as_millis() as u64,
                "admitted to a batch slot"
            )
        });
    }

    pub fn add_prefill_time(&mut self, spent: Duration) {
        self.prefill_time += spent;
    }

    /// The client is gone or the deadline passed.
    pub fn is_cancelled(&self, now: Instant) -> bool {
        self.request.events.is_closed() || self.request.deadline.is_some_and(|d| now >= d)
    }

    /// Picks the next token from this sequence's logits row: the token and its raw logit.
    pub fn sample(&mut self, logits: &mut [f32]) -> (u32, f32) {
        self.sampler.sample(logits)
    }

    /// Takes `token` as generated: sends its text and says whether the sequence is finished
    /// (and why).
    pub fn emit(
        &mut self,
        token: u32,
        logit: f32,
        tokenizer: &TextTokenizer,
        eos: u32,
    ) -> Option<FinishReason> {
        let now = Instant::now();
        if self.first_token_at.is_none() {
            self.first_token_at = Some(now);
            self.request.span.in_scope(|| {
                tracing::debug!(
                    engine_request = self.request.id,
                    after_ms = now
                        .saturating_duration_since(self.request.received_at)
                        .as_millis() as u64,
                    "first token"
                )
            });
        }
        self.last_token_at = Some(now);
        self.generated.push(token);
        self.next_input = token;
        let (text, finish) = if token == eos && !self.request.params.ignore_eos {
            (self.detokenizer.finish(tokenizer), Some(FinishReason::Stop))
        } else {
            let delta = self.detokenizer.push(token, tokenizer);
            if delta.stopped {
                (delta.text, Some(FinishReason::Stop))
            } else if self.generated.len() >= self.request.params.max_tokens {
                (
                    delta.text + &self.detokenizer.finish(tokenizer),
                    Some(FinishReason::Length),
                )
            } else {
                (delta.text, None)
            }
        };
        // A closed channel is noticed as a cancellation at the next step.
        let _ = self.request.events.send(GenerationEvent::Token {
            token_id: token,
            text,
            logit,
        });
        finish
    }

    /// Sends the final event with this sequence's timings.
    pub fn finish(self, reason: FinishReason) {
        let stats = self.stats(reason);
        self.request.span.in_scope(|| {
            tracing::debug!(
                engine_request = self.request.id,
                finish_reason = ?reason,
                generated_tokens = stats.generated_tokens,
                "generation ended"
            )
        });
        let _ = self.request.events.send(GenerationEvent::Done(stats));
    }

    /// Sends an error as the final event.
    pub fn fail(self, reason: &str) {
        self.request.span.in_scope(|| {
            tracing::debug!(
                engine_request = self.request.id,
                reason,
                "generation failed"
            )
        });
        let _ = self
            .request
            .events
            .send(GenerationEvent::Error(reason.to_string()));
    }

    fn stats(&self, finish_reason: FinishReason) -> GenerationStats {
        let received = self.request.received_at;
        let decode_time = match (self.first_token_at, self.last_token_at) {
            (Some(first), Some(last)) => last - first,
            _ => Duration::ZERO,
        };
        let after_first = self.generated.len().saturating_sub(1);
        GenerationStats {
            finish_reason,
            prompt_tokens: self.prompt_len(),
            generated_tokens: self.generated.len(),
            queue_time: self.admitted_at.map_or_else(
                || received.elapsed(),
                |a| a.saturating_duration_since(received),
            ),
            prefill_time: self.prefill_time,
            time_to_first_token: self
                .first_token_at
                .map(|t| t.saturating_duration_since(received)),
            decode_time,
            decode_tokens_per_second: if decode_time.is_zero() {
                0.0
            } else {
                after_first as f64 / decode_time.as_secs_f64()
            },
        }
    }
}
