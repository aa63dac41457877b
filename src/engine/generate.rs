//! Greedy generation for a fixed batch of prompts, left-padded to one length.
//!
//! This is the plain reference path: prefill every prompt in one pass, then decode one token
//! per row per step with the KV cache, until each row has produced EOS or `max_new_tokens`.
//! Parity tests hold it to the golden ids the exporter computed by full recomputation.

use std::time::{Duration, Instant};

use super::session::push_mask_row;
use super::{EngineError, KvCache, OnnxModel, StepInput};

/// Tokens and timings of one greedy run.
#[derive(Debug, Clone)]
pub struct Generation {
    /// New token ids per prompt, EOS included when it was produced.
    pub tokens: Vec<Vec<u32>>,
    /// The logit of each chosen token, per prompt: parity tests compare these with the
    /// exporter's, which catches attention errors that leave the argmax unchanged.
    pub chosen_logits: Vec<Vec<f32>>,
    /// Wall time of the prefill pass.
    pub prefill: Duration,
    /// Wall time of all decode steps.
    pub decode: Duration,
    /// Number of decode steps run after the prefill.
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

/// Greedily continues every prompt (token ids, BOS included) in one left-padded batch.
///
/// # Errors
/// `InvalidInput` for an empty batch, an empty prompt or one that would run past the
/// model's context; `Inference` when a step fails.
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

    // Real tokens per row; a row's next position is its length, padding not counted.
    let mut lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let mut input_ids = Vec::with_capacity(batch * width);
    let mut attention_mask = Vec::with_capacity(batch * width);
    let mut position_ids = Vec::with_capacity(batch * width);
    for prompt in prompts {
        let pad = width - prompt.len();
        input_ids.extend(std::iter::repeat_n(i64::from(info.eos_token_id), pad));
        input_ids.extend(prompt.iter().map(|&t| i64::from(t)));
        push_mask_row(&mut attention_mask, width, prompt.len());
        position_ids.extend(std::iter::repeat_n(0, pad));
        position_ids.extend(0..prompt.len() as i64);
    }

    let started = Instant::now();
    let mut step = model.forward(
        StepInput {
            batch,
            seq_len: width,
            input_ids,
            attention_mask,
            position_ids,
            logits_at: None,
        },
        KvCache::empty(&info, batch)?,
    )?;
    let prefill = started.elapsed();

    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); batch];
    let mut chosen_logits: Vec<Vec<f32>> = vec![Vec::new(); batch];
    let mut done = vec![max_new_tokens == 0; batch];
    let mut decode_steps = 0;
    let decode_started = Instant::now();
    loop {
        let vocab = info.vocab_size;
        let mut next = Vec::with_capacity(batch);
        for (row, row_tokens) in tokens.iter_mut().enumerate() {
            let logits = &step.last_logits[row * vocab..(row + 1) * vocab];
            let token = argmax(logits);
            if !done[row] {
                row_tokens.push(token);
                chosen_logits[row].push(logits[token as usize]);
                done[row] = token == info.eos_token_id || row_tokens.len() >= max_new_tokens;
            }
            next.push(i64::from(token));
        }
        if done.iter().all(|&d| d) {
            break;
        }
        // One more real position per row; finished rows keep decoding harmlessly until the
        // whole batch is done.
        let width = step.cache.past_len() + 1;
        let mut attention_mask = Vec::with_capacity(batch * width);
        for &len in &lens {
            push_mask_row(&mut attention_mask, width, len + 1);
        }
        let position_ids = lens.iter().map(|&len| len as i64).collect();
        for len in &mut lens {
            *len += 1;
        }
        step = model.forward(
            StepInput {
                batch,
                seq_len: 1,
                input_ids: next,
                attention_mask,
                position_ids,
                logits_at: None,
            },
            step.cache,
        )?;
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
