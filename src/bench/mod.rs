//! `trendstory bench-engine`: the batching engine alone (no HTTP, no actors) at several
//! concurrency levels, and optionally the bare int4 matmul graph as a baseline measured in
//! the same run, so figures from this shared, noisy machine can be compared as ratios.
//! With `--users`, the closed loop of `closed_loop` instead: N requests always in flight.
//! `table` prints both reports' columns under their headings.
//!
//! Prompts are synthetic token ids; with `--shared-prefix-tokens N` every prompt starts
//! with the same N tokens (as story prompts share their chat template and system prompt)
//! and the requests say so, so the engine's shared-prefix KV cache is measured.

pub mod closed_loop;
mod table;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use ort::session::Session;
use ort::value::Tensor;
use serde::Serialize;

use crate::config::{Config, InferenceConfig};
use crate::inference::{engine_limits, session_options};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::engine::{
    event_channel, open_session, BatchEngine, Engine, EngineStats, GenerationEvent,
    GenerationRequest, ModelInfo, Priority, SamplingParams, SessionOptions,
};
use table::{Column, Table};

/// What to measure.
pub struct BenchOptions {
    pub model: PathBuf,
    pub concurrency: Vec<usize>,
    pub prompt_tokens: usize,
    /// Leading prompt tokens every request shares (and declares as its shared prefix).
    pub shared_prefix_tokens: usize,
    pub new_tokens: usize,
    /// A `--linear-only` export of the same model: the bare matmul baseline.
    pub baseline: Option<PathBuf>,
}

/// Figures for one concurrency level.
#[derive(Debug, Serialize)]
pub struct LevelReport {
    pub concurrency: usize,
    /// Decode tokens per second of the steps where every row decodes (no prompt chunk).
    pub aggregate_decode_tokens_per_s: f64,
    /// Rows in those steps, on average: `concurrency` unless prompts started late enough
    /// for early rows to finish first.
    pub mean_decode_rows: f64,
    pub per_stream_decode_tokens_per_s: f64,
    /// Prompt tokens per second of the steps that prefilled.
    pub prefill_tokens_per_s: f64,
    /// Mean time of a step where every row decodes.
    pub mean_decode_step_ms: f64,
    pub mean_time_to_first_token_ms: f64,
    /// Where the level's step time went: see [`StepSplit`].
    pub split: StepSplit,
    pub peak_rss_mib: f64,
    /// Bare matmul graph, same batch size: ms per step, and engine step / baseline step.
    pub baseline_step_ms: Option<f64>,
    pub engine_over_baseline: Option<f64>,
}

/// What the engine's steps did and where their time went, between two readings of its
/// counters.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepSplit {
    pub steps: u64,
    /// `session.run` calls per step: 1 on packed graphs.
    pub passes_per_step: f64,
    /// Tokens through the model per pass: decode tokens and prompt tokens.
    pub decode_tokens_per_pass: f64,
    pub prefill_tokens_per_pass: f64,
    /// Shares of the step time: inside `session.run`, copying kept prefixes, sampling,
    /// detokenizing and sending text, and the rest (scheduling, building inputs).
    pub run_share: f64,
    pub kv_copy_share: f64,
    pub sample_share: f64,
    pub detokenize_share: f64,
    pub other_share: f64,
}

impl StepSplit {
    /// The split between the readings `before` and `after` of the engine's counters and
    /// of its model's `session.run` time and count.
    fn between(
        (before, run_before, runs_before): (EngineStats, Duration, u64),
        (after, run_after, runs_after): (EngineStats, Duration, u64),
    ) -> Self {
        let steps = after.steps - before.steps;
        let passes = (runs_after - runs_before).max(1) as f64;
        let total = (after.step_time - before.step_time).as_secs_f64().max(1e-9);
        let share = |d: Duration| d.as_secs_f64() / total;
        let run_share = share(run_after - run_before);
        let kv_copy_share = share(after.kv_copy_time - before.kv_copy_time);
        let sample_share = share(after.sample_time - before.sample_time);
        let detokenize_share = share(after.detokenize_time - before.detokenize_time);
        Self {
            steps,
            passes_per_step: passes / steps.max(1) as f64,
            decode_tokens_per_pass: (after.decoded_tokens - before.decoded_tokens) as f64 / passes,
            prefill_tokens_per_pass: (after.prefill_tokens - before.prefill_tokens) as f64 / passes,
            run_share,
            kv_copy_share,
            sample_share,
            detokenize_share,
            other_share: (1.0 - run_share - kv_copy_share - sample_share - detokenize_share)
                .max(0.0),
        }
    }

    /// Tokens through the model per pass.
    pub fn tokens_per_pass(&self) -> f64 {
        self.decode_tokens_per_pass + self.prefill_tokens_per_pass
    }
}

/// The engine's counters with its model's `session.run` time and count.
fn reading(engine: &BatchEngine) -> (EngineStats, Duration, u64) {
    (
        engine.stats(),
        engine.model().run_time(),
        engine.model().runs(),
    )
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub threads_per_worker: usize,
    pub spin_threads: bool,
    pub prompt_tokens: usize,
    pub shared_prefix_tokens: usize,
    pub new_tokens: usize,
    pub levels: Vec<LevelReport>,
}

/// Runs the benchmark and returns its figures.
pub fn run(config: &Config, options: &BenchOptions) -> anyhow::Result<BenchReport> {
    let max_concurrency = options.concurrency.iter().copied().max().unwrap_or(1);
    let (mut engine, session_options) = load_engine(
        config,
        &options.model,
        (max_concurrency, options.prompt_tokens, options.new_tokens),
        None,
    )?;
    let info = engine.model().info().clone();
    let prompts = Prompts::new(&info, options.prompt_tokens, options.shared_prefix_tokens);
    let mut baseline = match &options.baseline {
        Some(dir) => Some(Baseline::load(dir, config, &session_options)?),
        None => None,
    };

    // Warm-up: first runs allocate ONNX Runtime's buffers (and keep the shared prefix).
    run_level(&mut engine, &prompts, 1, 4.min(options.new_tokens))?;

    let mut levels = Vec::new();
    for &concurrency in &options.concurrency {
        let mut level = run_level(&mut engine, &prompts, concurrency, options.new_tokens)?;
        // The baseline is timed right after the level, at the rows its decode steps had
        // (prompts start a few per step, so early rows may finish before late ones start).
        if let Some(b) = baseline.as_mut() {
            let rows = (level.mean_decode_rows.round() as usize).max(1);
            let ms = b.step_time(rows)?.as_secs_f64() * 1e3;
            level.baseline_step_ms = Some(ms);
            level.engine_over_baseline = Some(level.mean_decode_step_ms / ms);
        }
        levels.push(level);
    }
    Ok(BenchReport {
        model: info.model_id,
        threads_per_worker: session_options.intra_threads,
        spin_threads: session_options.spin_threads,
        prompt_tokens: options.prompt_tokens,
        shared_prefix_tokens: options.shared_prefix_tokens,
        new_tokens: options.new_tokens,
        levels,
    })
}

/// The configured engine, with limits that admit `streams` requests of this size at once
/// (and a step budget that leaves prompts room beside them); with `profile_prefix`, ONNX
/// Runtime profiles every run.
fn load_engine(
    config: &Config,
    model: &std::path::Path,
    (streams, prompt_tokens, new_tokens): (usize, usize, usize),
    profile_prefix: Option<std::path::PathBuf>,
) -> anyhow::Result<(BatchEngine, SessionOptions)> {
    let inference = InferenceConfig {
        max_batch_size: streams,
        max_prompt_tokens: prompt_tokens,
        max_new_tokens: new_tokens,
        max_total_kv_tokens: streams * (prompt_tokens + new_tokens),
        step_token_budget: config.inference.step_token_budget.max(streams + 1),
        ..config.inference.clone()
    };
    let options = SessionOptions {
        profile_prefix,
        ..session_options(&inference)
    };
    let env = crate::runtime::environment(&config.runtime)?;
    let engine = BatchEngine::load(model, &env, engine_limits(&inference), &options)?;
    Ok((engine, options))
}

/// Synthetic prompts: `len` tokens, the first `shared` the same for every prompt.
pub(crate) struct Prompts {
    bos: u32,
    vocab: u64,
    len: usize,
    shared: usize,
}

impl Prompts {
    fn new(info: &ModelInfo, len: usize, shared: usize) -> Self {
        Self {
            bos: info.bos_token_id,
            vocab: info.vocab_size as u64,
            len,
            shared: shared.min(len),
        }
    }

    /// Prompt number `salt`: BOS and the shared tokens, then tokens unique to `salt`.
    fn get(&self, salt: usize) -> Vec<u32> {
        let mut ids = vec![self.bos];
        ids.extend(self.tokens(usize::MAX, self.shared.saturating_sub(1)));
        ids.extend(self.tokens(salt, self.len - ids.len()));
        ids
    }

    /// A request for prompt `salt` with `new_tokens` fixed-length new tokens.
    fn request(
        &self,
        id: u64,
        salt: usize,
        new_tokens: usize,
    ) -> (GenerationRequest, UnboundedReceiver<GenerationEvent>) {
        let (events, rx) = event_channel();
        let request = GenerationRequest {
            id,
            priority: Priority::Interactive,
            prompt_ids: self.get(salt),
            shared_prefix: self.shared,
            params: SamplingParams {
                max_tokens: new_tokens,
                ignore_eos: true,
                ..SamplingParams::default()
            },
            deadline: None,
            received_at: Instant::now(),
            events,
            span: tracing::Span::none(),
        };
        (request, rx)
    }

    /// `n` deterministic ordinary vocabulary ids (xorshift from `salt`).
    fn tokens(&self, salt: usize, n: usize) -> impl Iterator<Item = u32> + '_ {
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ salt as u64;
        (0..n).map(move |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (300 + x % (self.vocab - 300)) as u32
        })
    }
}

/// Submits `concurrency` identical-length requests at once and runs the engine dry.
fn run_level(
    engine: &mut BatchEngine,
    prompts: &Prompts,
    concurrency: usize,
    new_tokens: usize,
) -> anyhow::Result<LevelReport> {
    let start = reading(engine);
    let before = start.0;
    let mut receivers = Vec::new();
    for i in 0..concurrency {
        let (request, rx) = prompts.request(i as u64, i, new_tokens);
        engine.submit(request);
        receivers.push(rx);
    }
    while engine.has_work() {
        engine.step()?;
    }
    let mut per_stream = Vec::new();
    let mut ttft = Vec::new();
    for mut rx in receivers {
        while let Ok(event) = rx.try_recv() {
            match event {
                GenerationEvent::Done(stats) => {
                    per_stream.push(stats.decode_tokens_per_second);
                    ttft.push(stats.time_to_first_token.unwrap_or_default());
                }
                GenerationEvent::Error(e) => anyhow::bail!("benchmark request failed: {e}"),
                GenerationEvent::Token { .. } => {}
            }
        }
    }
    let end = reading(engine);
    let after = end.0;
    let split = StepSplit::between(start, end);
    let decode_time = (after.decode_only_time - before.decode_only_time).as_secs_f64();
    let decode_steps = (after.decode_only_steps - before.decode_only_steps).max(1) as f64;
    let decode_tokens = (after.decode_only_tokens - before.decode_only_tokens) as f64;
    let prefill_time = (after.step_time - before.step_time).as_secs_f64() - decode_time;
    let prefill_tokens = (after.prefill_tokens - before.prefill_tokens) as f64;
    Ok(LevelReport {
        concurrency,
        aggregate_decode_tokens_per_s: decode_tokens / decode_time,
        mean_decode_rows: decode_tokens / decode_steps,
        per_stream_decode_tokens_per_s: mean(&per_stream),
        prefill_tokens_per_s: prefill_tokens / prefill_time,
        mean_decode_step_ms: decode_time / decode_steps * 1e3,
        mean_time_to_first_token_ms: mean(
            &ttft
                .iter()
                .map(|d| d.as_secs_f64() * 1e3)
                .collect::<Vec<_>>(),
        ),
        split,
        peak_rss_mib: peak_rss_mib(),
        baseline_step_ms: None,
        engine_over_baseline: None,
    })
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// Peak resident memory of this process (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The `--linear-only` graph: the model's int4 matmuls and nothing else.
struct Baseline {
    session: Session,
    hidden: usize,
}

impl Baseline {
    fn load(
        dir: &std::path::Path,
        config: &Config,
        options: &SessionOptions,
    ) -> anyhow::Result<Self> {
        let manifest: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("manifest.json"))
                .with_context(|| format!("baseline {} has no manifest.json", dir.display()))?,
        )?;
        let hidden = manifest["hidden_size"]
            .as_u64()
            .context("baseline manifest has no hidden_size")? as usize;
        let env = crate::runtime::environment(&config.runtime)?;
        let session = open_session(&dir.join("model.onnx"), &env, options)?;
        Ok(Self { session, hidden })
    }

    /// Mean time of one pass over `tokens` tokens (a step's worth of matmuls).
    fn step_time(&mut self, tokens: usize) -> anyhow::Result<Duration> {
        let runs = 16;
        let mut total = Duration::ZERO;
        for i in 0..runs + 2 {
            let x = Tensor::<f32>::from_array((
                [1, tokens, self.hidden],
                vec![0.01f32; tokens * self.hidden],
            ))?;
            let started = Instant::now();
            self.session.run(ort::inputs!["x" => x])?;
            if i >= 2 {
                total += started.elapsed();
            }
        }
        Ok(total / runs)
    }
}

impl BenchReport {
    /// The human-readable table.
    pub fn print_table(&self) {
        println!(
            "model: {} | threads/worker {} | spin {} | prompt {} tokens ({} shared) | {} new tokens",
            self.model,
            self.threads_per_worker,
            self.spin_threads,
            self.prompt_tokens,
            self.shared_prefix_tokens,
            self.new_tokens
        );
        print!("{}", self.table());
    }

    fn table(&self) -> Table {
        let optional =
            |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
        let mut table = Table::new(vec![
            Column::new("conc", 5),
            Column::new("rows", 5),
            Column::new("agg tok/s", 10),
            Column::new("stream t/s", 11),
            Column::new("prefill t/s", 12),
            Column::new("step ms", 8),
            Column::new("TTFT ms", 8),
            Column::new("tok/pass", 9),
            Column::new("pass/step", 10),
            Column::new("run", 6),
            Column::new("kv copy", 8),
            Column::new("sample", 7),
            Column::new("detok", 6),
            Column::new("RSS MiB", 8),
            Column::new("base ms", 8),
            Column::new("eng/base", 9),
        ]);
        for l in &self.levels {
            let s = &l.split;
            table.row(vec![
                l.concurrency.to_string(),
                format!("{:.1}", l.mean_decode_rows),
                format!("{:.1}", l.aggregate_decode_tokens_per_s),
                format!("{:.1}", l.per_stream_decode_tokens_per_s),
                format!("{:.1}", l.prefill_tokens_per_s),
                format!("{:.1}", l.mean_decode_step_ms),
                format!("{:.0}", l.mean_time_to_first_token_ms),
                format!("{:.1}", s.tokens_per_pass()),
                format!("{:.2}", s.passes_per_step),
                percent(s.run_share),
                percent(s.kv_copy_share),
                percent(s.sample_share),
                percent(s.detokenize_share),
                format!("{:.0}", l.peak_rss_mib),
                optional(l.baseline_step_ms, 1),
                optional(l.engine_over_baseline, 2),
            ]);
        }
        table
    }
}

/// A share as a percentage with one decimal.
fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split() -> StepSplit {
        StepSplit {
            steps: 10,
            passes_per_step: 1.0,
            decode_tokens_per_pass: 15.5,
            prefill_tokens_per_pass: 3.25,
            run_share: 0.95,
            kv_copy_share: 0.001,
            sample_share: 0.02,
            detokenize_share: 0.01,
            other_share: 0.019,
        }
    }

    #[test]
    fn every_column_of_the_level_table_has_its_heading() {
        let level = |concurrency, baseline: Option<f64>| LevelReport {
            concurrency,
            aggregate_decode_tokens_per_s: 123.45,
            mean_decode_rows: 15.5,
            per_stream_decode_tokens_per_s: 7.7,
            prefill_tokens_per_s: 1234.5,
            mean_decode_step_ms: 130.1,
            mean_time_to_first_token_ms: 456.0,
            split: split(),
            peak_rss_mib: 1500.0,
            baseline_step_ms: baseline,
            engine_over_baseline: baseline.map(|b| 130.1 / b),
        };
        let report = BenchReport {
            model: "m".into(),
            threads_per_worker: 2,
            spin_threads: false,
            prompt_tokens: 64,
            shared_prefix_tokens: 0,
            new_tokens: 64,
            levels: vec![level(1, None), level(16, Some(120.0))],
        };
        let text = report.table().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let columns = |line: &str| line.split_whitespace().count();
        // headings hold spaces ("agg tok/s"), values do not: count by the table's own widths
        assert_eq!(lines[0].len(), lines[1].len(), "{text}");
        assert_eq!(lines[1].len(), lines[2].len(), "{text}");
        assert_eq!(columns(lines[1]), 16, "{text}");
        // each value ends where its heading ends
        for (heading, value) in [("eng/base", "1.08"), ("TTFT ms", "456"), ("detok", "1.0%")] {
            let end = lines[0].find(heading).unwrap() + heading.len();
            assert_eq!(
                &lines[2][end - value.len()..end],
                value,
                "{heading}\n{text}"
            );
        }
    }
}
