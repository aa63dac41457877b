//! Picks the next token of one sequence from its logits.
//!
//! Order of operations follows Hugging Face's: repetition penalty, temperature, top-k,
//! top-p, then a draw from the seeded generator. The generator is xoshiro256++ (a fixed,
//! documented algorithm), so the same seed and inputs give the same tokens in every build.

use std::collections::HashSet;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::SamplingParams;

/// Per-sequence sampling state: parameters, generator, and the tokens seen so far (for the
/// repetition penalty).
pub struct Sampler {
    params: SamplingParams,
    rng: Xoshiro256PlusPlus,
    seen: HashSet<u32>,
    /// Scratch buffer of (token, probability) reused between steps.
    candidates: Vec<(u32, f32)>,
    /// Scratch buffer of the raw logits the repetition penalty changed this step.
    penalized: Vec<(u32, f32)>,
}

/// Checks sampling parameters; the message names the field and its allowed range.
pub fn validate(params: &SamplingParams) -> Result<(), String> {
    if !params.temperature.is_finite() || params.temperature < 0.0 {
        return Err(format!(
            "temperature must be a finite number >= 0, got {}",
            params.temperature
        ));
    }
    if !(params.top_p > 0.0 && params.top_p <= 1.0) {
        return Err(format!("top_p must be in (0, 1], got {}", params.top_p));
    }
    if !params.repetition_penalty.is_finite() || params.repetition_penalty <= 0.0 {
        return Err(format!(
            "repetition_penalty must be a finite number > 0, got {}",
            params.repetition_penalty
        ));
    }
    if params.stop.iter().any(String::is_empty) {
        return Err("stop strings must not be empty".into());
    }
    Ok(())
}

impl Sampler {
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let seen = if params.repetition_penalty == 1.0 {
            HashSet::new()
        } else {
            prompt.iter().copied().collect()
        };
        Self {
            rng: Xoshiro256PlusPlus::seed_from_u64(params.seed),
            params,
            seen,
            candidates: Vec::new(),
            penalized: Vec::new(),
        }
    }

    /// Chooses the next token; `logits` is modified in place.
    /// Returns it with its raw logit (as the model gave it, before the penalty).
    pub fn sample(&mut self, logits: &mut [f32]) -> (u32, f32) {
        let penalty = self.params.repetition_penalty;
        self.penalized.clear();
        if penalty != 1.0 {
            for &token in &self.seen {
                if let Some(l) = logits.get_mut(token as usize) {
                    self.penalized.push((token, *l));
                    *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
                }
            }
        }
        let token = if self.params.temperature == 0.0 {
            super::generate::argmax(logits)
        } else {
            self.draw(logits)
        };
        if penalty != 1.0 {
            self.seen.insert(token);
        }
        let raw = self
            .penalized
            .iter()
            .find(|(t, _)| *t == token)
            .map_or(logits[token as usize], |&(_, l)| l);
        (token, raw)
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let inv_t = 1.0 / self.params.temperature;
        let candidates = &mut self.candidates;
        candidates.clear();
        candidates.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        let k = self.params.top_k;
        if k > 0 && k < candidates.len() {
            candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            candidates.truncate(k);
        }
        // Softmax over the remaining candidates.
        let max = candidates
            .iter()
            .map(|c| c.1)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0f32;
        for c in candidates.iter_mut() {
            c.1 = (c.1 - max).exp();
            total += c.1;
        }
        if self.params.top_p < 1.0 {
            candidates.sort_unstable_by(by_logit_desc);
            let threshold = self.params.top_p * total;
            let mut cumulative = 0.0;
            let mut keep = candidates.len();
            for (i, c) in candidates.iter().enumerate() {
                cumulative += c.1;
                if cumulative >= threshold {
                    keep = i + 1;
                    break;
                }
            }
            candidates.truncate(keep);
            total = cumulative.min(total);
        }
        let mut target = self.rng.random::<f32>() * total;
        for &(token, weight) in candidates.iter() {
            if target < weight {
                return token;
            }
            target -= weight;
        }
        // Rounding left a sliver of probability unassigned: take the last candidate.
        candidates.last().map_or(0, |c| c.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            seed,
            ..SamplingParams::default()
        }
    }

    fn logits() -> Vec<f32> {
        (0..50).map(|i| ((i * 7919) % 13) as f32 * 0.3).collect()
    }

    fn run(p: SamplingParams, steps: usize) -> Vec<u32> {
        let mut s = Sampler::new(p, &[]);
        (0..steps).map(|_| s.sample(&mut logits()).0).collect()
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(params(0.0, 1), &[]);
        assert_eq!(s.sample(&mut [0.5, 2.0, 2.0, -1.0]), (1, 2.0));
    }

    #[test]
    fn same_seed_same_tokens_different_seed_different_tokens() {
        let a = run(params(1.0, 7), 40);
        assert_eq!(a, run(params(1.0, 7), 40));
        assert_ne!(a, run(params(1.0, 8), 40));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let p = SamplingParams {
            top_k: 1,
            ..params(1.5, 3)
        };
        let greedy = super::super::generate::argmax(&logits());
        assert!(run(p, 20).iter().all(|&t| t == greedy));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // One token holds ~all the mass: a small top_p must always pick it.
        let mut l = vec![0.0f32; 10];
        l[4] = 20.0;
        let p = SamplingParams {
            top_p: 0.5,
            ..params(1.0, 11)
        };
        let mut s = Sampler::new(p, &[]);
        assert!((0..30).all(|_| s.sample(&mut l.clone()).0 == 4));
    }

    #[test]
    fn repetition_penalty_steers_away_from_seen_tokens() {
        let p = SamplingParams {
            repetition_penalty: 10.0,
            ..params(0.0, 0)
        };
        let mut s = Sampler::new(p, &[1]);
        // Token 1 would win greedily, but it is in the prompt.
        assert_eq!(s.sample(&mut [0.0, 3.0, 2.0]), (2, 2.0));
    }

    #[test]
    fn a_penalized_winner_reports_its_raw_logit() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..params(0.0, 0)
        };
        let mut s = Sampler::new(p, &[1]);
        // Token 1 still wins at 3.0 / 2; the event carries the model's 3.0.
        assert_eq!(s.sample(&mut [0.0, 3.0, 1.0]), (1, 3.0));
    }

    #[test]
    fn validation_names_the_field() {
        let bad = |p: SamplingParams| validate(&p).unwrap_err();
        assert!(bad(params(-1.0, 0)).contains("temperature"));
        assert!(bad(SamplingParams {
            top_p: 0.0,
            ..params(1.0, 0)
        })
        .contains("top_p"));
        assert!(bad(SamplingParams {
            repetition_penalty: 0.0,
            ..params(1.0, 0)
        })
        .contains("repetition_penalty"));
        assert!(bad(SamplingParams {
            stop: vec![String::new()],
            ..params(1.0, 0)
        })
        .contains("stop"));
        assert!(validate(&params(0.7, 0)).is_ok());
    }
}
