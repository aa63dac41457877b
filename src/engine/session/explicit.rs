//! The explicit-attention contract (optimum / transformers.js exports): `input_ids`,
//! `attention_mask`, optional `position_ids`, and `past_key_values.{i}.key|value`; the cache
//! is left-padded ([`PaddedCache`]) and `present.*` is past and new concatenated, so every
//! pass returns a new cache.

use std::borrow::Cow;

use ort::session::SessionInputValue;

use super::{logits_at, owned_value, Contract, OnnxModel};
use crate::engine::{EngineError, PaddedCache};

/// Inputs of an explicit-attention pass: `seq_len` new tokens for each of `batch` rows.
#[derive(Debug, Clone)]
pub struct StepInput {
    pub batch: usize,
    pub seq_len: usize,
    /// `[batch, seq_len]` token ids.
    pub input_ids: Vec<i64>,
    /// Per row, its real positions in the cache (right-aligned; the rest is padding).
    pub past: Vec<usize>,
}

impl OnnxModel {
    /// Explicit-attention graphs: one pass of `input`'s new tokens for every row over
    /// `cache`. Returns the logits of each row's last new token (`[batch, vocab]`) and the
    /// cache extended by the new positions.
    ///
    /// # Errors
    /// `InvalidInput` when the shapes disagree with each other, the cache or the graph,
    /// `Inference` when ONNX Runtime fails.
    pub fn forward(
        &mut self,
        input: &StepInput,
        cache: &PaddedCache,
    ) -> Result<(Vec<f32>, PaddedCache), EngineError> {
        let StepInput {
            batch,
            seq_len,
            ref input_ids,
            ref past,
        } = *input;
        let Contract::Explicit { has_position_ids } = self.contract else {
            return Err(EngineError::InvalidInput(
                "a packed graph runs packed passes (forward_packed)".into(),
            ));
        };
        let width = cache.width();
        if cache.batch() != batch
            || seq_len == 0
            || input_ids.len() != batch * seq_len
            || past.len() != batch
            || past.iter().any(|&p| p > width)
        {
            return Err(EngineError::InvalidInput(format!(
                "step shapes disagree: batch {batch}, seq {seq_len}, cache batch {} of width {width}, ids {}, past {past:?}",
                cache.batch(),
                input_ids.len(),
            )));
        }
        let total = width + seq_len;
        let mut mask = Vec::with_capacity(batch * total);
        let mut positions = Vec::with_capacity(batch * seq_len);
        for &p in past {
            mask.extend(std::iter::repeat_n(0i64, width - p));
            mask.extend(std::iter::repeat_n(1i64, p + seq_len));
            positions.extend((p..p + seq_len).map(|q| q as i64));
        }
        let mut feeds: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(3 + cache.tensors.len());
        feeds.push((
            "input_ids".into(),
            i64_tensor(vec![batch, seq_len], input_ids.clone())?,
        ));
        feeds.push((
            "attention_mask".into(),
            i64_tensor(vec![batch, total], mask)?,
        ));
        if has_position_ids {
            feeds.push((
                "position_ids".into(),
                i64_tensor(vec![batch, seq_len], positions)?,
            ));
        }
        for (name, value) in self.past_names.iter().zip(&cache.tensors) {
            feeds.push((Cow::Borrowed(name.as_str()), SessionInputValue::from(value)));
        }
        let started = std::time::Instant::now();
        let result = self.session.run(feeds);
        self.run_time += started.elapsed();
        self.runs += 1;
        let mut outputs = result.map_err(EngineError::inference)?;
        let last: Vec<usize> = (0..batch).map(|b| b * seq_len + seq_len - 1).collect();
        let logits = logits_at(&outputs, &self.info, batch * seq_len, &last)?;
        let tensors = self
            .present_names
            .iter()
            .map(|name| {
                outputs
                    .remove(name.as_str())
                    .ok_or_else(|| EngineError::inference(format!("graph returned no {name}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((
            logits,
            PaddedCache::from_values(&self.info, tensors, batch, total),
        ))
    }
}

/// An int64 input tensor of `shape`, for a plain run.
fn i64_tensor(
    shape: Vec<usize>,
    data: Vec<i64>,
) -> Result<SessionInputValue<'static>, EngineError> {
    owned_value(shape, data).map(SessionInputValue::from)
}
