//! `trendstory bench-engine --users N --duration S`: the engine's side of the "every
//! request a new topic" load test. N requests are always in flight: as soon as one
//! finishes, a new one with a new unique prompt (after the shared prefix) takes its place.
//! Reports stories/s, tokens/s and the time-to-first-token and end-to-end percentiles of
//! the requests that finished within the duration, what a step did (passes, tokens per pass)
//! and where its time went; with a baseline, the share of the bare int4 matmul stack's
//! throughput at the same tokens per pass that the engine reached (its roof efficiency).

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;

use super::{load_engine, peak_rss_mib, percent, reading, Baseline, Prompts, StepSplit};
use crate::config::Config;
use crate::engine::SessionOptions;
use crate::engine::{Engine, GenerationEvent, GenerationStats};

/// What to run.
pub struct ClosedLoopOptions {
    pub model: std::path::PathBuf,
    pub users: usize,
    pub duration: Duration,
    pub prompt_tokens: usize,
    pub shared_prefix_tokens: usize,
    pub new_tokens: usize,
    /// A `--linear-only` export of the same model: the bare matmul roof.
    pub baseline: Option<std::path::PathBuf>,
    /// Profile every ONNX Runtime run into a file starting with this (see
    /// `scripts/profile_steps.py`).
    pub ort_profile: Option<std::path::PathBuf>,
}

/// The figures of one closed-loop run.
#[derive(Debug, Serialize)]
pub struct ClosedLoopReport {
    pub model: String,
    pub users: usize,
    pub duration_s: f64,
    pub prompt_tokens: usize,
    pub shared_prefix_tokens: usize,
    pub new_tokens: usize,
    pub completed: usize,
    pub failed: usize,
    pub stories_per_s: f64,
    /// Tokens of the finished stories, per second of the run.
    pub generated_tokens_per_s: f64,
    /// Every token generated during the run, unfinished stories included: the decode
    /// throughput the loop sustained.
    pub all_tokens_per_s: f64,
    /// Tokens through the model per second: decode tokens and prompt tokens after the kept
    /// prefix (what the matmuls processed).
    pub processed_tokens_per_s: f64,
    pub split: StepSplit,
    /// The bare matmul stack's tokens/s at this run's tokens per pass, and the engine's
    /// processed tokens/s over it.
    pub baseline_tokens_per_s: Option<f64>,
    pub roof_efficiency: Option<f64>,
    /// The ONNX Runtime profile written, if asked for.
    pub ort_profile: Option<String>,
    pub ttft_p50_ms: f64,
    pub ttft_p95_ms: f64,
    pub end_to_end_p50_ms: f64,
    pub end_to_end_p95_ms: f64,
    /// Prefills that started from the kept shared prefix.
    pub prefix_hits: u64,
    pub peak_rss_mib: f64,
}

/// One request in flight: its events and when it was sent.
struct InFlight {
    events: UnboundedReceiver<GenerationEvent>,
    sent: Instant,
}

/// Runs the loop and returns its figures.
pub fn run(config: &Config, options: &ClosedLoopOptions) -> anyhow::Result<ClosedLoopReport> {
    let (mut engine, session_options) = load_engine(
        config,
        &options.model,
        (options.users, options.prompt_tokens, options.new_tokens),
        options.ort_profile.clone(),
    )?;
    let info = engine.model().info().clone();
    let prompts = Prompts::new(&info, options.prompt_tokens, options.shared_prefix_tokens);
    let mut next = 0usize;
    let mut submit = |engine: &mut dyn Engine| {
        let (request, events) = prompts.request(next as u64, next, options.new_tokens);
        next += 1;
        engine.submit(request);
        InFlight {
            events,
            sent: Instant::now(),
        }
    };
    // Warm-up outside the measurement: buffers allocated, shared prefix kept.
    let warm = submit(&mut engine);
    while engine.has_work() {
        engine.step()?;
    }
    drop(warm);

    let before = reading(&engine);
    let started = Instant::now();
    let mut in_flight: Vec<InFlight> = (0..options.users).map(|_| submit(&mut engine)).collect();
    let mut finished: Vec<(GenerationStats, Duration)> = Vec::new();
    let mut failed = 0;
    let mut all_tokens = 0usize;
    while started.elapsed() < options.duration {
        engine.step()?;
        let mut i = 0;
        while i < in_flight.len() {
            match drain(&mut in_flight[i].events, &mut all_tokens) {
                Some(Ok(stats)) => {
                    finished.push((stats, in_flight[i].sent.elapsed()));
                    in_flight[i] = submit(&mut engine);
                }
                Some(Err(_)) => {
                    failed += 1;
                    in_flight[i] = submit(&mut engine);
                }
                None => i += 1,
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = reading(&engine);
    let ort_profile = match options.ort_profile {
        Some(_) => Some(engine.model_mut().end_profiling()?),
        None => None,
    };
    let split = StepSplit::between(before, after);
    let processed = ((after.0.decoded_tokens - before.0.decoded_tokens)
        + (after.0.prefill_tokens - before.0.prefill_tokens)) as f64
        / elapsed;
    let baseline_tokens_per_s = match &options.baseline {
        Some(dir) => Some(roof(
            dir,
            config,
            &session_options,
            split.tokens_per_pass(),
        )?),
        None => None,
    };
    let tokens: usize = finished.iter().map(|(s, _)| s.generated_tokens).sum();
    let ttft: Vec<f64> = finished
        .iter()
        .map(|(s, _)| s.time_to_first_token.unwrap_or_default().as_secs_f64() * 1e3)
        .collect();
    let end_to_end: Vec<f64> = finished
        .iter()
        .map(|(_, d)| d.as_secs_f64() * 1e3)
        .collect();
    Ok(ClosedLoopReport {
        model: info.model_id,
        users: options.users,
        duration_s: elapsed,
        prompt_tokens: options.prompt_tokens,
        shared_prefix_tokens: options.shared_prefix_tokens,
        new_tokens: options.new_tokens,
        completed: finished.len(),
        failed,
        stories_per_s: finished.len() as f64 / elapsed,
        generated_tokens_per_s: tokens as f64 / elapsed,
        all_tokens_per_s: all_tokens as f64 / elapsed,
        processed_tokens_per_s: processed,
        split,
        baseline_tokens_per_s,
        roof_efficiency: baseline_tokens_per_s.map(|b| processed / b),
        ort_profile,
        ttft_p50_ms: percentile(&ttft, 0.50),
        ttft_p95_ms: percentile(&ttft, 0.95),
        end_to_end_p50_ms: percentile(&end_to_end, 0.50),
        end_to_end_p95_ms: percentile(&end_to_end, 0.95),
        prefix_hits: after.0.prefix_hits - before.0.prefix_hits,
        peak_rss_mib: peak_rss_mib(),
    })
}

/// The bare matmul stack's tokens/s over passes of `tokens_per_pass` tokens (rounded).
fn roof(
    dir: &std::path::Path,
    config: &Config,
    options: &SessionOptions,
    tokens_per_pass: f64,
) -> anyhow::Result<f64> {
    let tokens = (tokens_per_pass.round() as usize).max(1);
    // The engine's profile, if any, is not the baseline's.
    let options = SessionOptions {
        profile_prefix: None,
        ..options.clone()
    };
    let mut baseline = Baseline::load(dir, config, &options)?;
    Ok(tokens as f64 / baseline.step_time(tokens)?.as_secs_f64())
}

/// The request's end, if it came: its stats, or the error. Counts its tokens on the way.
fn drain(
    events: &mut UnboundedReceiver<GenerationEvent>,
    tokens: &mut usize,
) -> Option<Result<GenerationStats, String>> {
    while let Ok(event) = events.try_recv() {
        match event {
            GenerationEvent::Token { .. } => *tokens += 1,
            GenerationEvent::Done(stats) => return Some(Ok(stats)),
            GenerationEvent::Error(e) => return Some(Err(e)),
        }
    }
    None
}

/// Nearest-rank percentile; 0 for no values.
fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl ClosedLoopReport {
    pub fn print(&self) {
        println!(
            "model: {} | {} users for {:.1} s | prompt {} tokens ({} shared) | {} new tokens",
            self.model,
            self.users,
            self.duration_s,
            self.prompt_tokens,
            self.shared_prefix_tokens,
            self.new_tokens
        );
        println!(
            "completed {} (failed {}) | {:.2} stories/s | {:.1} tokens/s of finished stories, {:.1} generated in all, {:.1} through the model | TTFT p50 {:.0} ms p95 {:.0} ms | end-to-end p50 {:.0} ms p95 {:.0} ms | prefix hits {} | peak RSS {:.0} MiB",
            self.completed,
            self.failed,
            self.stories_per_s,
            self.generated_tokens_per_s,
            self.all_tokens_per_s,
            self.processed_tokens_per_s,
            self.ttft_p50_ms,
            self.ttft_p95_ms,
            self.end_to_end_p50_ms,
            self.end_to_end_p95_ms,
            self.prefix_hits,
            self.peak_rss_mib
        );
        let s = &self.split;
        println!(
            "steps {} | {:.2} passes per step | tokens per pass {:.1} (decode {:.1}, prefill {:.1}) | step time: run {}, KV copies {}, sampling {}, detokenizing {}, other {}",
            s.steps,
            s.passes_per_step,
            s.tokens_per_pass(),
            s.decode_tokens_per_pass,
            s.prefill_tokens_per_pass,
            percent(s.run_share),
            percent(s.kv_copy_share),
            percent(s.sample_share),
            percent(s.detokenize_share),
            percent(s.other_share),
        );
        if let (Some(base), Some(efficiency)) = (self.baseline_tokens_per_s, self.roof_efficiency) {
            println!(
                "bare matmul stack at {:.0} tokens per pass: {base:.1} tokens/s | roof efficiency {}",
                s.tokens_per_pass().round(),
                percent(efficiency)
            );
        }
        if let Some(profile) = &self.ort_profile {
            println!("ONNX Runtime profile (warm-up included): {profile}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 10.0);
        assert_eq!(percentile(&v, 0.95), 19.0);
        assert_eq!(percentile(&[3.0], 0.95), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
