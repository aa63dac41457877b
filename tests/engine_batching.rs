//! The continuous-batching engine on the tiny model: golden parity whatever the arrival
//! pattern, sampling, finish reasons, streaming text, cancellation and budgets. Every step on
//! the packed graph is checked to be one `session.run`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedReceiver;
use trendstory::engine::{
    event_channel, BatchEngine, Engine, EngineLimits, FinishReason, GenerationEvent,
    GenerationRequest, GenerationStats, KvLayout, Priority, SamplingParams, TextTokenizer,
};

fn limits() -> EngineLimits {
    EngineLimits {
        max_batch_size: 8,
        max_prompt_tokens: 256,
        max_new_tokens: 64,
        max_total_kv_tokens: 4096,
        step_token_budget: 16,
        background_max_users: 8,
    }
}

struct Harness {
    engine: BatchEngine,
    tokenizer: Arc<TextTokenizer>,
    next_id: u64,
}

impl Harness {
    fn new(dir: &Path, limits: EngineLimits) -> Self {
        let loaded = common::load(dir);
        let tokenizer = Arc::new(loaded.tokenizer);
        Self {
            engine: BatchEngine::new(loaded.model, Arc::clone(&tokenizer), limits),
            tokenizer,
            next_id: 0,
        }
    }

    /// Submits each golden prompt, greedy, for the golden number of tokens.
    fn submit_golden<'p>(
        &mut self,
        prompts: impl IntoIterator<Item = &'p common::GoldenPrompt>,
        max_tokens: usize,
    ) -> Vec<Output> {
        prompts
            .into_iter()
            .map(|p| self.submit(p.input_ids.clone(), greedy(max_tokens)))
            .collect()
    }

    fn submit(&mut self, prompt_ids: Vec<u32>, params: SamplingParams) -> Output {
        self.submit_with(prompt_ids, params, None, Priority::Interactive, 0)
    }

    fn submit_with(
        &mut self,
        prompt_ids: Vec<u32>,
        params: SamplingParams,
        deadline: Option<Instant>,
        priority: Priority,
        shared_prefix: usize,
    ) -> Output {
        let (events, rx) = event_channel();
        self.next_id += 1;
        self.engine.submit(GenerationRequest {
            id: self.next_id,
            priority,
            prompt_ids,
            shared_prefix,
            params,
            deadline,
            received_at: Instant::now(),
            events,
            span: tracing::Span::none(),
        });
        Output::new(rx)
    }

    /// One step; on a packed graph it must be one `session.run` (none when idle).
    fn step(&mut self) {
        let runs = self.engine.model().runs();
        self.engine.step().expect("step");
        let passes = self.engine.model().runs() - runs;
        if self.engine.model().kv_layout() == KvLayout::Slots {
            assert!(passes <= 1, "a packed step took {passes} session.run calls");
        }
    }

    fn run_until_idle(&mut self) {
        let mut guard = 0;
        while self.engine.has_work() {
            self.step();
            guard += 1;
            assert!(guard < 10_000, "engine never went idle");
        }
    }
}

/// Events of one request, drained as they arrive.
struct Output {
    rx: UnboundedReceiver<GenerationEvent>,
    tokens: Vec<u32>,
    /// The raw logit of each chosen token.
    logits: Vec<f32>,
    text: String,
    done: Option<GenerationStats>,
    error: Option<String>,
}

impl Output {
    fn new(rx: UnboundedReceiver<GenerationEvent>) -> Self {
        Self {
            rx,
            tokens: Vec::new(),
            logits: Vec::new(),
            text: String::new(),
            done: None,
            error: None,
        }
    }

    fn drain(&mut self) -> &mut Self {
        while let Ok(event) = self.rx.try_recv() {
            assert!(
                self.done.is_none() && self.error.is_none(),
                "event after the final one: {event:?}"
            );
            match event {
                GenerationEvent::Token {
                    token_id,
                    text,
                    logit,
                } => {
                    self.tokens.push(token_id);
                    self.logits.push(logit);
                    self.text.push_str(&text);
                }
                GenerationEvent::Done(stats) => self.done = Some(stats),
                GenerationEvent::Error(e) => self.error = Some(e),
            }
        }
        self
    }

    fn finish_reason(&mut self) -> FinishReason {
        self.drain();
        if let Some(e) = &self.error {
            panic!("request failed: {e}");
        }
        self.done
            .as_ref()
            .expect("request not finished")
            .finish_reason
    }
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        ..SamplingParams::default()
    }
}

/// The golden ids, and each chosen token's logit within 1e-3 of the golden one: the tiny
/// model's ids hardly depend on context, its logits do, so a KV mix-up shows there.
fn assert_golden(out: &mut Output, golden: &common::GoldenPrompt, what: &str) {
    out.drain();
    let expected = &golden.output_ids;
    assert_eq!(&out.tokens, expected, "{what}");
    common::assert_logits_close(&out.logits, &golden.top1_logits, what);
    let stats = out.done.as_ref().expect("finished");
    assert_eq!(stats.generated_tokens, expected.len());
    assert!(stats.time_to_first_token.is_some());
}

/// Each output against the golden prompt at its index.
fn assert_all_golden(outs: &mut [Output], prompts: &[common::GoldenPrompt]) {
    assert_eq!(outs.len(), prompts.len());
    for (out, p) in outs.iter_mut().zip(prompts) {
        assert_golden(out, p, &p.text);
    }
}

/// One request at a time: golden ids, and the streamed deltas add up to the decoded text.
#[test]
fn one_by_one_matches_golden_and_streams_the_decoded_text() {
    for dir in common::tiny_models() {
        let golden = common::golden(&dir);
        let mut h = Harness::new(&dir, limits());
        for p in &golden.prompts {
            let mut out = h.submit(p.input_ids.clone(), greedy(golden.max_new_tokens));
            h.run_until_idle();
            assert_golden(&mut out, p, &p.text);
            let tokens: Vec<u32> = out.tokens.iter().copied().filter(|&t| t != 2).collect();
            let mut all = p.input_ids.clone();
            all.extend(&tokens);
            let whole = h.tokenizer.decode(&all).unwrap();
            let prompt_text = h.tokenizer.decode(&p.input_ids).unwrap();
            assert_eq!(
                out.text.trim_start(),
                whole[prompt_text.len()..].trim_start(),
                "prompt {:?}",
                p.text
            );
        }
    }
}

#[test]
fn all_at_once_matches_golden() {
    for dir in common::tiny_models() {
        let golden = common::golden(&dir);
        let mut h = Harness::new(&dir, limits());
        let mut outs = h.submit_golden(&golden.prompts, golden.max_new_tokens);
        h.run_until_idle();
        assert_all_golden(&mut outs, &golden.prompts);
        let stats = h.engine.stats();
        assert!(
            stats.decoded_tokens > stats.steps,
            "sequences must share steps: {stats:?}"
        );
    }
}

#[test]
fn staggered_arrivals_match_golden() {
    for dir in common::tiny_models() {
        let golden = common::golden(&dir);
        let mut h = Harness::new(&dir, limits());
        let mut outs = Vec::new();
        for (i, p) in golden.prompts.iter().enumerate() {
            outs.push(h.submit(p.input_ids.clone(), greedy(golden.max_new_tokens)));
            // Let earlier requests run a few steps (prefill chunks included) before the next
            // joins mid-generation.
            for _ in 0..(2 + i % 3) {
                h.step();
            }
        }
        h.run_until_idle();
        assert_all_golden(&mut outs, &golden.prompts);
    }
}

/// One pass holding decoding rows, the last chunk of a prompt prefilled over earlier steps
/// and the first chunk of another prompt (of a different length): every row still gets its
/// golden ids and logits.
#[test]
fn a_mixed_step_gives_every_row_its_own_logits() {
    for dir in common::tiny_models() {
        let golden = common::golden(&dir);
        let n = golden.max_new_tokens;
        let (short, long, other) = (&golden.prompts[1], &golden.prompts[5], &golden.prompts[4]);
        let budget = 20;
        let mut h = Harness::new(
            &dir,
            EngineLimits {
                step_token_budget: budget,
                ..limits()
            },
        );
        let mut decoding = h.submit(short.input_ids.clone(), greedy(n));
        h.step();
        let mut long_out = h.submit(long.input_ids.clone(), greedy(n));
        let mut other_out = h.submit(other.input_ids.clone(), greedy(n));
        // Each step: a token for the decoding row, the rest of the budget for the prompts,
        // oldest first. The step that finishes `long` also starts `other`.
        let per_step = budget - 1;
        let steps_for_long = long.input_ids.len().div_ceil(per_step);
        let last_chunk = long.input_ids.len() - (steps_for_long - 1) * per_step;
        assert!(
            last_chunk < per_step && steps_for_long >= 2,
            "a chunked prompt"
        );
        for _ in 0..steps_for_long - 1 {
            h.step();
        }
        let before = h.engine.stats();
        h.step();
        let after = h.engine.stats();
        long_out.drain();
        other_out.drain();
        assert_eq!(
            long_out.tokens.len(),
            1,
            "long's first token in the mixed step"
        );
        assert!(other_out.tokens.is_empty(), "other prefilled only a part");
        assert_eq!(after.decoded_tokens - before.decoded_tokens, 1);
        assert_eq!(
            after.prefill_tokens - before.prefill_tokens,
            per_step as u64,
            "long's last {last_chunk} tokens and other's first {} in one step",
            per_step - last_chunk
        );
        h.run_until_idle();
        assert_golden(&mut decoding, short, "decoding row");
        assert_golden(&mut long_out, long, "continued prompt");
        assert_golden(&mut other_out, other, "new prompt");
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    for dir in common::tiny_models() {
        let golden = common::golden(&dir);
        let prompt = golden.prompts[2].input_ids.clone();
        let mut h = Harness::new(&dir, limits());
        // The tiny model's logits are built to be decisive (top-2 margins of ~70), so only a
        // high temperature makes sampling differ from greedy.
        let params = |seed| SamplingParams {
            temperature: 100.0,
            top_k: 0,
            top_p: 1.0,
            seed,
            max_tokens: 24,
            ..SamplingParams::default()
        };
        let mut run = |seed| {
            let mut out = h.submit(prompt.clone(), params(seed));
            h.run_until_idle();
            out.drain();
            out.tokens.clone()
        };
        let a = run(42);
        assert_eq!(a, run(42), "same seed, same tokens");
        assert_ne!(a, run(43), "different seeds should differ");
    }
}

#[test]
fn max_tokens_ends_with_length() {
    for dir in common::tiny_models() {
        let golden = common::golden(&dir);
        let mut h = Harness::new(&dir, limits());
        let mut out = h.submit(golden.prompts[1].input_ids.clone(), greedy(3));
        h.run_until_idle();
        assert_eq!(out.finish_reason(), FinishReason::Length);
        assert_eq!(out.tokens.len(), 3);
        assert_eq!(out.tokens, golden.prompts[1].output_ids[..3]);
    }
}

#[test]
fn eos_ends_with_stop() {
    for dir in common::tiny_models() {
        let mut h = Harness::new(&dir, limits());
        // Find a token after which the model's greedy choice is EOS: try every token in one
        // batch of two-token prompts.
        let info = trendstory::engine::ModelInfo::load(&dir).unwrap();
        let mut loaded = common::load(&dir);
        let prompts: Vec<Vec<u32>> = (3..info.vocab_size as u32).map(|t| vec![1, t]).collect();
        let first = trendstory::engine::greedy_generate(&mut loaded.model, &prompts, 1).unwrap();
        let Some(row) = first.tokens.iter().position(|t| t[0] == info.eos_token_id) else {
            panic!("no token of the tiny model leads to EOS; the test needs one");
        };
        let mut out = h.submit(prompts[row].clone(), greedy(10));
        h.run_until_idle();
        assert_eq!(out.finish_reason(), FinishReason::Stop);
        assert_eq!(out.tokens, vec![info.eos_token_id]);
    }
}

#[test]
fn stop_string_ends_the_text_before_it() {
    for dir in common::tiny_models() {
        let golden = common::golden(&dir);
        let mut h = Harness::new(&dir, limits());
        let prompt = golden.prompts[2].input_ids.clone();
        let mut full = h.submit(prompt.clone(), greedy(16));
        h.run_until_idle();
        full.drain();
        let text = full.text.clone();
        // A stop string from the middle of the greedy text (at a character boundary).
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        assert!(chars.len() >= 6, "greedy text too short: {text:?}");
        let (start, _) = chars[chars.len() / 2];
        let (end, _) = chars[chars.len() / 2 + 2];
        let stop = text[start..end].to_string();
        let expected = &text[..text.find(&stop).unwrap()];
        let mut out = h.submit(
            prompt,
            SamplingParams {
                stop: vec![stop.clone()],
                ..greedy(16)
            },
        );
        h.run_until_idle();
        assert_eq!(out.finish_reason(), FinishReason::Stop);
        assert_eq!(out.text, expected, "stop {stop:?} in {text:?}");
    }
}

#[test]
fn cancelling_frees_the_slot() {
    for dir in common::tiny_models() {
        let golden = common::golden(&dir);
        let mut h = Harness::new(
            &dir,
            EngineLimits {
                max_batch_size: 1,
                ..limits()
            },
        );
        let first = h.submit(golden.prompts[0].input_ids.clone(), greedy(64));
        let mut second = h.submit(golden.prompts[1].input_ids.clone(), greedy(4));
        for _ in 0..3 {
            h.step();
        }
        second.drain();
        assert!(
            second.tokens.is_empty(),
            "second must wait for the only slot"
        );
        drop(first); // the client goes away
        h.run_until_idle();
        assert_eq!(second.finish_reason(), FinishReason::Length);
        assert_eq!(second.tokens, golden.prompts[1].output_ids[..4]);
    }
}

/// A sequence cancelled in the middle of a running batch leaves its row (its slot, in a
/// slot cache) to the next newcomer while the rows around it go on: every survivor and the
/// newcomer still produce their golden ids, so no stale KV leaks into the reused slot.
#[test]
fn a_cancelled_rows_place_is_reused_mid_batch() {
    for dir in common::tiny_models() {
        let golden = common::golden(&dir);
        let n = golden.max_new_tokens;
        let mut h = Harness::new(&dir, limits());
        let mut first = h.submit(golden.prompts[0].input_ids.clone(), greedy(n));
        let middle = h.submit(golden.prompts[3].input_ids.clone(), greedy(n));
        let mut last = h.submit(golden.prompts[2].input_ids.clone(), greedy(n));
        for _ in 0..4 {
            h.step();
        }
        drop(middle);
        h.step();
        let mut newcomer = h.submit(golden.prompts[4].input_ids.clone(), greedy(n));
        h.run_until_idle();
        assert_golden(&mut first, &golden.prompts[0], "first");
        assert_golden(&mut last, &golden.prompts[2], "last");
        assert_golden(&mut newcomer, &golden.prompts[4], "newcomer");
    }
}

#[test]
fn a_user_request_takes_a_background_slot_within_one_step() {
    for dir in common::tiny_models() {
        let golden = common::golden(&dir);
        let mut h = Harness::new(
            &dir,
            EngineLimits {
                max_batch_size: 2,
                // Whole prompts per step, so the first token shows when admission happened.
                step_token_budget: 256,
                ..limits()
            },
        );
        let background = |h: &mut Harness, i: usize| {
            h.submit_with(
                golden.prompts[i].input_ids.clone(),
                greedy(64),
                None,
                Priority::Background,
                0,
            )
        };
        let mut first = background(&mut h, 0);
        let mut second = background(&mut h, 1);
        // A third background request waits behind the full batch; the user must not.
        let mut third = background(&mut h, 2);
        for _ in 0..3 {
            h.step();
        }
        assert_eq!(h.engine.running(), 2, "both background rows decode");
        let mut user = h.submit(golden.prompts[2].input_ids.clone(), greedy(4));
        h.step();
        user.drain();
        assert!(
            !user.tokens.is_empty(),
            "the user's first token comes at the very next step"
        );
        let preempted = [first.drain(), second.drain()]
            .iter()
            .filter(|o| o.done.as_ref().map(|d| d.finish_reason) == Some(FinishReason::Preempted))
            .count();
        assert_eq!(preempted, 1, "exactly one background row gave its slot");
        third.drain();
        assert!(third.tokens.is_empty(), "background waits behind users");
        h.run_until_idle();
        assert_eq!(user.finish_reason(), FinishReason::Length);
        assert_eq!(
            user.tokens,
            golden.prompts[2].output_ids[..4],
            "parity holds"
        );
        assert_eq!(third.finish_reason(), FinishReason::Length);
    }
}

#[test]
fn a_kept_shared_prefix_gives_the_same_tokens() {
    for dir in common::tiny_models() {
        let golden = common::golden(&dir);
        let mut h = Harness::new(&dir, limits());
        for p in &golden.prompts {
            let prefix = p.input_ids.len() - 1;
            // Miss (prefills the prefix as its own chunk and keeps it), then hit, then a whole
            // prompt equal to the prefix (nothing left after it: no reuse, still golden).
            for _ in 0..2 {
                let mut out = h.submit_with(
                    p.input_ids.clone(),
                    greedy(golden.max_new_tokens),
                    None,
                    Priority::Interactive,
                    prefix,
                );
                h.run_until_idle();
                assert_golden(&mut out, p, &p.text);
            }
            let mut whole = h.submit_with(
                p.input_ids.clone(),
                greedy(golden.max_new_tokens),
                None,
                Priority::Interactive,
                p.input_ids.len(),
            );
            h.run_until_idle();
            assert_golden(&mut whole, p, &p.text);
        }
        let stats = h.engine.stats();
        assert_eq!(stats.prefix_hits, golden.prompts.len() as u64);
        let reused: usize = golden.prompts.iter().map(|p| p.input_ids.len() - 1).sum();
        assert_eq!(stats.prefix_tokens_reused, reused as u64);
    }
}

/// Prompts of different lengths arriving together start in one pass (as many as the packed
/// graph has prefill lanes), kept prefixes or not.
#[test]
fn prompts_arriving_together_prefill_together() {
    for dir in common::tiny_models() {
        let golden = common::golden(&dir);
        let together = EngineLimits {
            step_token_budget: 256,
            ..limits()
        };
        let mut h = Harness::new(&dir, together);
        let lanes = h.engine.model().prefill_lanes().unwrap_or(usize::MAX);
        let lengths: Vec<usize> = golden.prompts.iter().map(|p| p.input_ids.len()).collect();
        assert!(
            lengths.iter().min() != lengths.iter().max(),
            "rows of different lengths: {lengths:?}"
        );
        let mut outs = h.submit_golden(&golden.prompts, golden.max_new_tokens);
        h.step();
        let started = outs
            .iter_mut()
            .map(|o| !o.drain().tokens.is_empty())
            .filter(|&first| first)
            .count();
        assert_eq!(
            started,
            golden.prompts.len().min(lanes),
            "first tokens after one step"
        );
        h.run_until_idle();
        assert_all_golden(&mut outs, &golden.prompts);

        // Rows with different kept positions: the first starts from its kept prefix.
        let first = &golden.prompts[0];
        let prefix = first.input_ids.len() - 1;
        let with_prefix = |h: &mut Harness| {
            h.submit_with(
                first.input_ids.clone(),
                greedy(golden.max_new_tokens),
                None,
                Priority::Interactive,
                prefix,
            )
        };
        let mut keep = with_prefix(&mut h);
        h.run_until_idle();
        assert_golden(&mut keep, first, &first.text);
        let mut outs = vec![with_prefix(&mut h)];
        outs.extend(h.submit_golden(&golden.prompts[1..], golden.max_new_tokens));
        h.run_until_idle();
        assert_all_golden(&mut outs, &golden.prompts);
        assert_eq!(h.engine.stats().prefix_hits, 1);
    }
}

#[test]
fn finished_rows_never_run_past_the_context() {
    // The tiny model has 512 positions. One row finishes early and waits in the batch
    // (fewer dead rows than live ones: no rebuild) while three others run almost to the
    // end of the context; the waiting row must not count positions past it.
    for dir in common::tiny_models() {
        let mut h = Harness::new(
            &dir,
            EngineLimits {
                max_batch_size: 4,
                max_prompt_tokens: 64,
                max_new_tokens: 500,
                max_total_kv_tokens: 4096,
                step_token_budget: 256,
                background_max_users: 4,
            },
        );
        let prompt = |len: usize, salt: u32| -> Vec<u32> {
            std::iter::once(1)
                .chain((0..len as u32 - 1).map(|i| 300 + (i * 7 + salt) % 700))
                .collect()
        };
        let ignore_eos = |max_tokens| SamplingParams {
            max_tokens,
            ignore_eos: true,
            ..SamplingParams::default()
        };
        let mut short = h.submit(prompt(60, 0), ignore_eos(4));
        let mut long: Vec<Output> = (1..4)
            .map(|salt| h.submit(prompt(10, salt), ignore_eos(490)))
            .collect();
        h.run_until_idle();
        assert_eq!(short.finish_reason(), FinishReason::Length);
        for out in &mut long {
            assert_eq!(out.finish_reason(), FinishReason::Length);
            assert_eq!(out.tokens.len(), 490);
        }
    }
}

#[test]
fn passed_deadline_cancels() {
    for dir in common::tiny_models() {
        let golden = common::golden(&dir);
        let mut h = Harness::new(&dir, limits());
        let mut out = h.submit_with(
            golden.prompts[0].input_ids.clone(),
            greedy(8),
            Some(Instant::now()),
            Priority::Interactive,
            0,
        );
        h.run_until_idle();
        assert_eq!(out.finish_reason(), FinishReason::Cancelled);
        assert!(out.tokens.is_empty());
    }
}

#[test]
fn kv_budget_makes_requests_wait_not_fail() {
    for dir in common::tiny_models() {
        let golden = common::golden(&dir);
        let p = &golden.prompts[1];
        let mut h = Harness::new(
            &dir,
            EngineLimits {
                max_total_kv_tokens: p.input_ids.len() + 8,
                ..limits()
            },
        );
        let mut a = h.submit(p.input_ids.clone(), greedy(8));
        let mut b = h.submit(p.input_ids.clone(), greedy(8));
        h.step();
        b.drain();
        assert!(b.tokens.is_empty(), "b does not fit beside a");
        let held = h.engine.snapshot();
        assert_eq!(
            (held.waiting_user, held.running),
            (1, 1),
            "the engine counts the request the KV budget holds back as waiting"
        );
        h.run_until_idle();
        assert_eq!(a.finish_reason(), FinishReason::Length);
        assert_eq!(b.finish_reason(), FinishReason::Length);
        assert_eq!(a.tokens, b.tokens);
        let done = h.engine.snapshot();
        assert_eq!((done.waiting_user, done.running), (0, 0));
        assert_eq!(done.passes, h.engine.model().runs());
        assert!(done.steps > 0 && done.step_time > std::time::Duration::ZERO);
        assert_eq!(
            done.tokens,
            2 * (p.input_ids.len() as u64 + 7),
            "each prompt once and 7 decoding rows each (the 8th token ends it unfed)"
        );
    }
}

/// Admission counts each request's prompt plus `max_tokens`: two requests whose sum fits
/// run together; one position less and the second waits for the first to leave.
#[test]
fn kv_budget_is_the_sum_of_reserved_tokens() {
    for dir in common::tiny_models() {
        let golden = common::golden(&dir);
        let (long, short) = (&golden.prompts[3], &golden.prompts[0]);
        let reserved = long.input_ids.len() + 16 + short.input_ids.len() + 4;
        for (budget, together) in [(reserved, true), (reserved - 1, false)] {
            let mut h = Harness::new(
                &dir,
                EngineLimits {
                    max_total_kv_tokens: budget,
                    ..limits()
                },
            );
            let mut a = h.submit(long.input_ids.clone(), greedy(16));
            let mut b = h.submit(short.input_ids.clone(), greedy(4));
            let mut overlapped = false;
            while h.engine.has_work() {
                h.step();
                overlapped |= !b.drain().tokens.is_empty() && a.drain().done.is_none();
            }
            assert_eq!(overlapped, together, "budget {budget}");
            assert_eq!(a.finish_reason(), FinishReason::Length);
            assert_eq!(b.tokens, short.output_ids[..4]);
        }
    }
}

#[test]
fn invalid_requests_get_an_error_at_once() {
    for dir in common::tiny_models() {
        let mut h = Harness::new(&dir, limits());
        let cases = [
            (vec![], greedy(4), "no tokens"),
            (vec![1; 300], greedy(4), "max_prompt_tokens"),
            (vec![1, 5], greedy(0), "max_tokens"),
            (vec![1, 5], greedy(65), "max_tokens"),
            (vec![1, 999_999], greedy(4), "vocabulary"),
            (
                vec![1, 5],
                SamplingParams {
                    temperature: -1.0,
                    ..greedy(4)
                },
                "temperature",
            ),
        ];
        for (ids, params, needle) in cases {
            let mut out = h.submit(ids, params);
            out.drain();
            let error = out.error.clone().expect("an error event");
            assert!(error.contains(needle), "{error:?} should mention {needle}");
        }
        assert!(!h.engine.has_work());
    }
}
