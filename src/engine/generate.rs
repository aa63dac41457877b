//! Greedy generation for a fixed batch of prompts.
//!
//! This is the plain reference path: prefill every prompt (as many per pass as the graph
//! takes), then decode one token per row per pass with the KV cache, until each row has
//! produced EOS or `max_new_tokens`. Parity tests hold it to the golden ids the exporter
//! computed by full recomputation.

use std::time::{Duration, Instant};

use super::kv_store::{KvStore, Pass};
use super::{EngineError, OnnxModel, PassRow};

/// Tokens and timings of one greedy run.
#[derive(Debug, Clone)]
pub struct Generation {
    /// New token ids per prompt, EOS included when it was produced.
    pub tokens: Vec<Vec<u32>>,
    /// The logit of each chosen token, per prompt: parity tests compare these with the
    /// exporter's, which catches attention errors that leave the argmax unchanged.
    pub chosen_logits: Vec<Vec<f32>>,
    /// Wall time of the prefill passes.
    pub prefill: Duration,
    /// Wall time of all decode passes.
    pub decode: Duration,
    /// Number of decode passes run after the prefill.
    pub decode_steps: usize,
}

/// Index of the largest logit; the first one wins a tie, as `numpy.argmax` does.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedily continues every prompt (token ids, BOS included), all rows decoding together.
///
/// # Errors
/// `InvalidInput` for an empty batch, an empty prompt or one that would run past the
/// model's context; `Inference` when a pass fails.
pub fn greedy_generate(
    model: &mut OnnxModel,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
) -> Result<Generation, EngineError> {
    let info = model.info().clone();
    let batch = prompts.len();
    if batch == 0 || prompts.iter().any(Vec::is_empty) {
        return Err(EngineError::InvalidInput(
            "every prompt needs at least one token".into(),
        ));
    }
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if width + max_new_tokens > info.max_position_embeddings {
        return Err(EngineError::InvalidInput(format!(
            "prompt of {width} tokens plus {max_new_tokens} new tokens exceeds the model's context of {}",
            info.max_position_embeddings
        )));
    }
    let mut kv = KvStore::new(model, batch, width + max_new_tokens + 1);

    let started = Instant::now();
    let lanes = model.prefill_lanes().unwrap_or(batch).max(1);
    let mut logits = Vec::with_capacity(batch * info.vocab_size);
    for first in (0..batch).step_by(lanes) {
        let chunks = (first..batch.min(first + lanes))
            .map(|slot| PassRow {
                slot,
                past: 0,
                tokens: prompts[slot].clone(),
                logits: true,
            })
            .collect();
        logits.extend(kv.forward(
            model,
            &Pass {
                decode: Vec::new(),
                chunks,
            },
        )?);
    }
    let prefill = started.elapsed();

    let mut lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); batch];
    let mut chosen_logits: Vec<Vec<f32>> = vec![Vec::new(); batch];
    let mut done = vec![max_new_tokens == 0; batch];
    let mut decode_steps = 0;
    let decode_started = Instant::now();
    loop {
        let vocab = info.vocab_size;
        let mut decode = Vec::with_capacity(batch);
        for (row, row_tokens) in tokens.iter_mut().enumerate() {
            let row_logits = &logits[row * vocab..(row + 1) * vocab];
            let token = argmax(row_logits);
            if !done[row] {
                row_tokens.push(token);
                chosen_logits[row].push(row_logits[token as usize]);
                done[row] = token == info.eos_token_id || row_tokens.len() >= max_new_tokens;
            }
            // Finished rows keep decoding harmlessly until the whole batch is done.
            decode.push(PassRow {
                slot: row,
                past: lens[row],
                tokens: vec![token],
                logits: true,
            });
        }
        if done.iter().all(|&d| d) {
            break;
        }
        logits = kv.forward(
            model,
            &Pass {
                decode,
                chunks: Vec::new(),
            },
        )?;
        for len in &mut lens {
            *len += 1;
        }
        decode_steps += 1;
    }
    Ok(Generation {
        tokens,
        chosen_logits,
        prefill,
        decode: decode_started.elapsed(),
        decode_steps,
    })
}
