//! The model's tokenizer (Hugging Face `tokenizer.json`), checked against the model.

use std::path::Path;

use tokenizers::Tokenizer;

use super::{EngineError, ModelInfo};

/// A tokenizer known to match the model's vocabulary.
pub struct TextTokenizer {
    inner: Tokenizer,
    /// `byte_tokens[id]` is true for byte-fallback tokens such as `<0xE3>`.
    byte_tokens: Vec<bool>,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and checks its size equals the model's vocabulary, so ids
    /// never index past the embedding table and text never decodes from foreign ids.
    pub fn load(path: &Path, info: &ModelInfo) -> Result<Self, EngineError> {
        let inner = Tokenizer::from_file(path).map_err(|e| EngineError::Tokenizer {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let size = inner.get_vocab_size(true);
        if size != info.vocab_size {
            return Err(EngineError::VocabularyMismatch {
                tokenizer: size,
                model: info.vocab_size,
            });
        }
        let byte_tokens = (0..size as u32)
            .map(|id| {
                inner
                    .id_to_token(id)
                    .is_some_and(|t| t.len() == 6 && t.starts_with("<0x") && t.ends_with('>'))
            })
            .collect();
        Ok(Self { inner, byte_tokens })
    }

    /// The Hugging Face tokenizer itself, for callers that need more than [`Self::encode`]:
    /// the story prompt builder encodes template and user text apart and reads offsets.
    pub fn hf_tokenizer(&self) -> &Tokenizer {
        &self.inner
    }

    /// True for byte-fallback tokens, which carry one raw byte of UTF-8 text.
    pub fn is_byte_token(&self, id: u32) -> bool {
        self.byte_tokens.get(id as usize).copied().unwrap_or(false)
    }

    /// Token ids of `text`, with the BOS token the model was trained with.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        self.inner
            .encode(text, true)
            .map(|enc| enc.get_ids().to_vec())
            .map_err(|e| EngineError::InvalidInput(format!("cannot tokenize prompt: {e}")))
    }

    /// Text of `ids`, skipping special tokens such as BOS and EOS.
    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| EngineError::InvalidInput(format!("cannot decode tokens: {e}")))
    }
}
