//! What the engine needs to know about an exported model folder.
//!
//! The exporter writes `config.json` (the Hugging Face config), `tokenizer.json`,
//! `model.onnx` and, last, `manifest.json`. Folders exported by other tools (for example
//! `onnx-community/TinyLlama-1.1B-Chat-v1.0-ONNX`) have no manifest, so it is optional.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::EngineError;

/// Dimensions and special tokens of a Llama-style decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub dir: PathBuf,
    /// A display name; models with random weights say so, since their text is noise.
    pub model_id: String,
    pub random_weights: bool,
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
}

#[derive(Deserialize)]
struct HfConfig {
    num_hidden_layers: usize,
    hidden_size: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    max_position_embeddings: usize,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
}

#[derive(Deserialize)]
struct Manifest {
    name: String,
    #[serde(default)]
    random_weights: bool,
}

impl ModelInfo {
    pub fn model_path(&self) -> PathBuf {
        self.dir.join("model.onnx")
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }

    /// Reads and checks a model folder.
    ///
    /// # Errors
    /// `ModelDirMissing`, `ModelFileMissing` naming the absent file, or `BadModelFile` when
    /// `config.json`/`manifest.json` cannot be parsed or hold impossible dimensions.
    pub fn load(dir: &Path) -> Result<Self, EngineError> {
        if !dir.is_dir() {
            return Err(EngineError::ModelDirMissing {
                path: dir.to_path_buf(),
            });
        }
        for (file, hint) in [
            ("config.json", "the model's Hugging Face config"),
            ("tokenizer.json", "the tokenizer"),
            ("model.onnx", "the ONNX graph"),
        ] {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(EngineError::ModelFileMissing { path, hint });
            }
        }
        let config: HfConfig = read_json(&dir.join("config.json"))?;
        let manifest_path = dir.join("manifest.json");
        let manifest: Option<Manifest> = if manifest_path.is_file() {
            Some(read_json(&manifest_path)?)
        } else {
            None
        };
        let bad = |reason: String| EngineError::BadModelFile {
            path: dir.join("config.json"),
            reason,
        };
        let num_kv_heads = config
            .num_key_value_heads
            .unwrap_or(config.num_attention_heads);
        if config.num_attention_heads == 0
            || num_kv_heads == 0
            || !config.num_attention_heads.is_multiple_of(num_kv_heads)
        {
            return Err(bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {num_kv_heads}",
                config.num_attention_heads
            )));
        }
        let head_dim = config
            .head_dim
            .unwrap_or(config.hidden_size / config.num_attention_heads);
        if head_dim == 0 || config.num_hidden_layers == 0 || config.vocab_size == 0 {
            return Err(bad(
                "layers, head size and vocabulary must be positive".into()
            ));
        }
        let fallback_name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let (name, random_weights) = match manifest {
            Some(m) => (m.name, m.random_weights),
            None => (fallback_name, false),
        };
        let model_id = if random_weights {
            format!("{name} (random weights: output is noise)")
        } else {
            name
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            model_id,
            random_weights,
            num_layers: config.num_hidden_layers,
            num_kv_heads,
            head_dim,
            vocab_size: config.vocab_size,
            max_position_embeddings: config.max_position_embeddings,
            bos_token_id: config.bos_token_id.unwrap_or(1),
            eos_token_id: config.eos_token_id.unwrap_or(2),
        })
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, EngineError> {
    let bad = |reason: String| EngineError::BadModelFile {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| bad(e.to_string()))
}
