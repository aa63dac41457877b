//! TEMPORARY stand-in until the prompt branch merges.
use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    #[default]
    News,
    FairyTale,
    SciFi,
    Mystery,
    Poem,
}

impl Style {
    pub const ALL: [Style; 5] = [
        Style::News,
        Style::FairyTale,
        Style::SciFi,
        Style::Mystery,
        Style::Poem,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Style::News => "news",
            Style::FairyTale => "fairy_tale",
            Style::SciFi => "sci_fi",
            Style::Mystery => "mystery",
            Style::Poem => "poem",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("topic is empty after cleaning")]
    EmptyTopic,
    #[error("{0}")]
    Other(String),
}

pub fn clean_topic(raw: &str, max_chars: usize) -> Result<String, PromptError> {
    let s: String = raw
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let s: String = s.chars().take(max_chars).collect();
    if s.is_empty() {
        Err(PromptError::EmptyTopic)
    } else {
        Ok(s)
    }
}

pub struct Prompt {
    pub text: String,
    pub ids: Vec<u32>,
    pub prefix_tokens: usize,
}

pub struct PromptTemplate {
    tokenizer: std::sync::Arc<crate::engine::TextTokenizer>,
}

impl PromptTemplate {
    pub fn load(
        _dir: &std::path::Path,
        tokenizer: std::sync::Arc<crate::engine::TextTokenizer>,
    ) -> Result<Self, PromptError> {
        Ok(Self { tokenizer })
    }
    pub fn build(
        &self,
        style: Style,
        topic: &str,
        context: Option<&str>,
    ) -> Result<Prompt, PromptError> {
        let text = format!(
            "<|system|>\nWrite a {} story.</s>\n<|user|>\n{topic} {}</s>\n<|assistant|>\n",
            style.as_str(),
            context.unwrap_or("")
        );
        let ids = self
            .tokenizer
            .encode(&text)
            .map_err(|e| PromptError::Other(e.to_string()))?;
        Ok(Prompt {
            text,
            ids,
            prefix_tokens: 0,
        })
    }
}
