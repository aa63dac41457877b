//! Greedy generation for a fixed batch of prompts, padded to one length.
//!
//! This is the plain reference path: prefill every prompt in one pass, then decode one token
//! per row per step with the KV cache, until each row has produced EOS or `max_new_tokens`.
//! Parity tests hold it to the golden ids the exporter computed by full recomputation.

use std::time::{Duration, Instant};

use super::kv_cache::RowSource;
use super::session::StepOutput;
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

/// Greedily continues every prompt (token ids, BOS included) in one padded batch.
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

    // Each row is its prompt then padding; its real length is what the model counts.
    let mut lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let mut input_ids = Vec::with_capacity(batch * width);
    for prompt in prompts {
        input_ids.extend(prompt.iter().map(|&t| i64::from(t)));
        input_ids.extend(std::iter::repeat_n(
            i64::from(info.eos_token_id),
            width - prompt.len(),
        ));
    }

    let started = Instant::now();
    let capacity = width + max_new_tokens;
    let StepOutput {
        last_logits,
        cache: prompt_cache,
    } = model.forward(
        StepInput {
            batch,
            seq_len: width,
            input_ids,
            past: vec![0; batch],
            new: lens.clone(),
        },
        model.empty_cache(batch, capacity)?,
    )?;
    // Rows end with padding after the prompt pass: gather each row's real positions so
    // every row's next token follows its own prompt.
    let rows: Vec<RowSource> = (0..batch)
        .map(|row| RowSource {
            cache: &prompt_cache,
            row,
            len: lens[row],
        })
        .collect();
    let mut step = StepOutput {
        cache: KvCache::gather(&info, &rows, capacity)?,
        last_logits,
    };
    drop(rows);
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
        step = model.forward(
            StepInput {
                batch,
                seq_len: 1,
                input_ids: next,
                past: lens.clone(),
                new: vec![1; batch],
            },
            step.cache,
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
