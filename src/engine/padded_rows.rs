//! [`PaddedRows`]: the rows' KV for explicit-attention graphs (optimum exports, for foreign
//! models). Each prompt prefills alone into its own [`PaddedCache`], then joins the decoding
//! rows' left-padded batch cache (a copy of every row when one joins; finished rows stay as
//! cheap dead rows until they outnumber the live ones); a pass is one `session.run` per
//! prompt chunk plus one for the decoding rows.

use super::padded_cache::RowSource;
use super::prefix_sharing::KeptKv;
use super::{EngineError, OnnxModel, PaddedCache, PassRow, StepInput};

/// See the module doc.
pub struct PaddedRows {
    /// Per slot, the KV of a prompt that is not in the batch yet.
    prompts: Vec<Option<PaddedCache>>,
    /// The slot of each batch row (`None`: finished, until the next rebuild).
    rows: Vec<Option<usize>>,
    batch: Option<PaddedCache>,
}

impl PaddedRows {
    pub fn new(slots: usize) -> Self {
        Self {
            prompts: (0..slots).map(|_| None).collect(),
            rows: Vec::new(),
            batch: None,
        }
    }

    /// Starts `slot` from a kept prefix.
    pub fn adopt(
        &mut self,
        model: &OnnxModel,
        slot: usize,
        kept: &KeptKv,
    ) -> Result<(), EngineError> {
        self.prompts[slot] = Some(PaddedCache::from_kept(model.info(), kept)?);
        Ok(())
    }

    /// A copy of the `len` positions of `slot`'s prompt, which holds exactly that many.
    pub fn keep(&self, slot: usize, len: usize) -> Result<KeptKv, EngineError> {
        match &self.prompts[slot] {
            Some(cache) if cache.width() == len => cache.keep(len),
            _ => Err(EngineError::InvalidInput(format!(
                "slot {slot} holds no prompt of {len} positions"
            ))),
        }
    }

    /// Forgets `slot`'s KV.
    pub fn free(&mut self, slot: usize) {
        if let Some(prompt) = self.prompts.get_mut(slot) {
            *prompt = None;
        }
        for row in &mut self.rows {
            if *row == Some(slot) {
                *row = None;
            }
        }
    }

    /// Runs a step's pass: each prompt chunk alone, then the decoding rows in one batch;
    /// returns the decoding rows' logits, then the chunks' that ask for them.
    pub fn forward(
        &mut self,
        model: &mut OnnxModel,
        decode: &[PassRow],
        chunks: &[PassRow],
    ) -> Result<Vec<f32>, EngineError> {
        let vocab = model.info().vocab_size;
        let mut chunk_logits = Vec::new();
        for chunk in chunks {
            let cache = match self.prompts[chunk.slot].take() {
                Some(cache) => cache,
                None => PaddedCache::empty(model.info(), 1)?,
            };
            let (logits, cache) = model.forward(
                &StepInput {
                    batch: 1,
                    seq_len: chunk.tokens.len(),
                    input_ids: chunk.tokens.iter().map(|&t| i64::from(t)).collect(),
                    past: vec![chunk.past],
                },
                &cache,
            )?;
            self.prompts[chunk.slot] = Some(cache);
            if chunk.logits {
                chunk_logits.extend(logits);
            }
        }
        let mut logits = Vec::with_capacity((decode.len()) * vocab + chunk_logits.len());
        if !decode.is_empty() {
            self.join(model, decode)?;
            let past_of = |slot: usize| decode.iter().find(|r| r.slot == slot);
            let (mut ids, mut past) = (Vec::new(), Vec::new());
            for row in &self.rows {
                // A finished row decodes a placeholder over no past; its output is ignored.
                let (id, p) = row
                    .and_then(past_of)
                    .map_or((0, 0), |r| (r.tokens[0], r.past));
                ids.push(i64::from(id));
                past.push(p);
            }
            let Some(batch) = self.batch.take() else {
                return Err(EngineError::InvalidInput("no batch to decode".into()));
            };
            let (out, cache) = model.forward(
                &StepInput {
                    batch: self.rows.len(),
                    seq_len: 1,
                    input_ids: ids,
                    past,
                },
                &batch,
            )?;
            self.batch = Some(cache);
            for r in decode {
                let row = self.rows.iter().position(|&s| s == Some(r.slot));
                let row = row.ok_or_else(|| {
                    EngineError::InvalidInput(format!("slot {} is not in the batch", r.slot))
                })?;
                logits.extend_from_slice(&out[row * vocab..(row + 1) * vocab]);
            }
        }
        logits.extend(chunk_logits);
        Ok(logits)
    }

    /// Rebuilds the batch cache when a decoding row is not in it yet (its prompt just
    /// finished) or finished rows outnumber live ones: a copy of every decoding row.
    fn join(&mut self, model: &OnnxModel, decode: &[PassRow]) -> Result<(), EngineError> {
        let in_batch = |slot: usize| self.rows.contains(&Some(slot));
        let joining = decode.iter().any(|r| !in_batch(r.slot));
        let live = self.rows.iter().flatten().count();
        if !joining && live * 2 >= self.rows.len() {
            return Ok(());
        }
        let mut sources = Vec::with_capacity(decode.len());
        let mut rows = Vec::with_capacity(decode.len());
        for r in decode {
            let (cache, row) = match self.rows.iter().position(|&s| s == Some(r.slot)) {
                Some(row) => (self.batch.as_ref(), row),
                None => (self.prompts[r.slot].as_ref(), 0),
            };
            let cache = cache.ok_or_else(|| {
                EngineError::InvalidInput(format!("slot {} has no KV to decode from", r.slot))
            })?;
            sources.push(RowSource {
                cache,
                row,
                len: r.past,
            });
            rows.push(Some(r.slot));
        }
        let batch = PaddedCache::gather(model.info(), &sources)?;
        drop(sources);
        for r in decode {
            self.prompts[r.slot] = None;
        }
        self.batch = Some(batch);
        self.rows = rows;
        Ok(())
    }
}
