//! What the engine needs to know about an exported model folder.
//!
//! The exporter writes `config.json` (the Hugging Face config), `tokenizer.json`,
//! `model.onnx` and, last, `manifest.json`. Folders exported by other tools (for example
//! `onnx-community/TinyLlama-1.1B-Chat-v1.0-ONNX`) have no manifest, so it is optional, as is
//! `generation_config.json`, whose sampling settings are the model's own defaults.

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
    /// Where the weights came from, as the manifest says (`hub:REPO`, `gguf:FILE`,
    /// `random-init:PRESET`); `None` without a manifest.
    pub source: Option<String>,
    /// The sampling defaults `generation_config.json` gives (each may be absent).
    pub sampling: ModelSampling,
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
    source: Option<String>,
}

/// Sampling defaults from a model folder's `generation_config.json` (Hugging Face's names);
/// what it leaves out is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModelSampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
}

/// The keys of `generation_config.json` read here (the special token ids are config.json's).
#[derive(Deserialize)]
struct GenerationConfig {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    repetition_penalty: Option<f32>,
    do_sample: Option<bool>,
}

impl ModelSampling {
    /// Reads `generation_config.json` when there is one and checks each value is usable;
    /// `do_sample: false` means greedy: temperature 0.
    fn load(path: &Path) -> Result<Self, EngineError> {
        if !path.is_file() {
            return Ok(Self::default());
        }
        let g: GenerationConfig = read_json(path)?;
        let sampling = Self {
            temperature: if g.do_sample == Some(false) {
                Some(0.0)
            } else {
                g.temperature
            },
            top_p: g.top_p,
            top_k: g.top_k,
            repetition_penalty: g.repetition_penalty,
        };
        match sampling.invalid() {
            Some((key, reason)) => Err(EngineError::BadModelFile {
                path: path.to_path_buf(),
                reason: format!("`{key}` {reason}"),
            }),
            None => Ok(sampling),
        }
    }

    /// The first value sampling cannot use, by its Hugging Face name, and why; the same
    /// rules hold for a folder's values and for the `stories.default_*` keys.
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        if let Some(t) = self.temperature.filter(|t| !(t.is_finite() && *t >= 0.0)) {
            return Some(("temperature", format!("must be 0 or more, got {t}")));
        }
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return Some(("top_p", format!("must be in (0, 1], got {p}")));
        }
        if let Some(r) = self
            .repetition_penalty
            .filter(|r| !(r.is_finite() && *r > 0.0))
        {
            return Some(("repetition_penalty", format!("must be above 0, got {r}")));
        }
        None
    }
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
        let (name, random_weights, source) = match manifest {
            Some(m) => (m.name, m.random_weights, m.source),
            None => (fallback_name, false, None),
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
            source,
            sampling: ModelSampling::load(&dir.join("generation_config.json"))?,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling_of(json: &str) -> Result<ModelSampling, EngineError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("generation_config.json");
        std::fs::write(&path, json).unwrap();
        ModelSampling::load(&path)
    }

    #[test]
    fn generation_config_gives_the_models_sampling() {
        let s = sampling_of(r#"{"eos_token_id": 2, "temperature": 0.6, "top_p": 0.9}"#).unwrap();
        assert_eq!(
            (s.temperature, s.top_p, s.top_k),
            (Some(0.6), Some(0.9), None)
        );
        let greedy = sampling_of(r#"{"do_sample": false, "temperature": 0.6}"#).unwrap();
        assert_eq!(greedy.temperature, Some(0.0), "do_sample false is greedy");
        assert_eq!(
            ModelSampling::load(Path::new("/nonexistent/generation_config.json")).unwrap(),
            ModelSampling::default()
        );
    }

    #[test]
    fn a_bad_sampling_value_names_the_file_and_key() {
        let err = sampling_of(r#"{"top_p": 1.5}"#).unwrap_err().to_string();
        assert!(
            err.contains("generation_config.json") && err.contains("`top_p`"),
            "{err}"
        );
        let err = sampling_of(r#"{"temperature": "hot"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("generation_config.json"), "{err}");
    }
}
