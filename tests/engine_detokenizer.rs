//! Incremental detokenization with real tokenizers: deltas never split a character and
//! concatenate to the decoded text, emoji and CJK included (byte-fallback tokens of
//! SentencePiece-style vocabularies, byte-level BPE pieces of SmolLM2's).

mod common;

use std::path::Path;

use trendstory::engine::{Detokenizer, TextTokenizer};

const TEXTS: &[&str] = &[
    "Café ☕ in Zürich: naïve crème brûlée 🚀 東京の桜 🌸 is trending",
    "🎉🎉 新年快乐 — 2026 👩‍🚀 a story",
    "plain ascii, then emoji at the end 🌍",
];

fn tokenizer(dir: &Path) -> TextTokenizer {
    common::load(dir).tokenizer
}

/// The ids of `text` without the BOS the tokenizer may add.
fn without_bos(tok: &TextTokenizer, text: &str) -> Vec<u32> {
    let bare = tok.hf_tokenizer().encode(text, false).unwrap();
    bare.get_ids().to_vec()
}

fn stream(
    tok: &TextTokenizer,
    prompt: &[u32],
    ids: &[u32],
    stop: Vec<String>,
) -> (Vec<String>, String) {
    let mut d = Detokenizer::new(prompt, stop);
    let mut deltas = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let delta = d.push(id, tok);
        deltas.push(delta.text);
        if delta.stopped {
            return (deltas, d.text().to_string());
        }
        if i + 1 == ids.len() {
            deltas.push(d.finish(tok));
        }
    }
    (deltas, d.text().to_string())
}

fn deltas_concatenate_to_decoded_text(dir: &Path) {
    let tok = tokenizer(dir);
    let prompt = tok.encode("Write about").unwrap();
    for text in TEXTS {
        let ids = without_bos(&tok, text);
        let partial = |&t: &u32| tok.decode(&[t]).unwrap().contains('\u{FFFD}');
        assert!(
            ids.iter().any(partial) || dir.ends_with("tiny-llama2tok"),
            "{text:?} should need tokens that end inside a character"
        );
        let (deltas, _) = stream(&tok, &prompt, &ids, vec![]);
        for d in &deltas {
            assert!(
                !d.contains('\u{FFFD}'),
                "delta {d:?} splits a character of {text:?}"
            );
        }
        let joined: String = deltas.concat();
        let expected = tok.decode(&ids).unwrap();
        assert_eq!(joined.trim_start(), expected.trim_start(), "{text:?}");
    }
}

#[test]
fn tiny_tokenizer_deltas_concatenate() {
    deltas_concatenate_to_decoded_text(&common::required_model(common::TINY));
}

#[test]
fn needs_shared_llama2_tokenizer_deltas_concatenate() {
    if let Some(dir) = common::shared_model(
        common::TINY_LLAMA_TOKENIZER,
        "needs_shared_llama2_tokenizer_deltas_concatenate",
    ) {
        deltas_concatenate_to_decoded_text(&dir);
    }
}

#[test]
fn smollm2_byte_level_deltas_concatenate() {
    deltas_concatenate_to_decoded_text(&common::required_model(common::SMOLLM2));
}

#[test]
fn stop_string_is_held_back_then_cut() {
    let tok = tokenizer(&common::required_model(common::TINY));
    let ids: Vec<u32> = tok.encode("the rain kept falling on the stadium").unwrap()[1..].to_vec();
    let (deltas, text) = stream(&tok, &[1], &ids, vec!["falling".into()]);
    let joined: String = deltas.concat();
    assert_eq!(joined.trim_start(), "the rain kept ");
    assert_eq!(text.trim_start(), "the rain kept ");
    // Nothing of "falling" was ever sent, even partially.
    assert!(deltas.iter().all(|d| !d.contains("fall")), "{deltas:?}");
}

#[test]
fn held_back_prefix_is_released_when_no_stop_follows() {
    let tok = tokenizer(&common::required_model(common::TINY));
    let ids: Vec<u32> = tok.encode("we fall asleep").unwrap()[1..].to_vec();
    let (deltas, _) = stream(&tok, &[1], &ids, vec!["falling".into()]);
    assert_eq!(deltas.concat().trim_start(), "we fall asleep");
}
