//! The Rust engine against the exporter's golden ids (ONNX Runtime in Python, full
//! recomputation, one prompt at a time). Exact equality: the tiny models are built with
//! decisive logits (see `min_top2_margin` in golden.json), so a differing id is a bug, not
//! a near-tie flipped by another kernel order.

mod common;

use std::path::Path;

use trendstory::engine::{greedy_generate, KvLayout};

fn tokenizer_matches_golden(dir: &Path) {
    let loaded = common::load(dir);
    let golden = common::golden(dir);
    for prompt in &golden.prompts {
        let ids = loaded.tokenizer.encode(&prompt.text).expect("encode");
        assert_eq!(ids, prompt.input_ids, "tokenization of {:?}", prompt.text);
    }
}

fn kv_cache_generation_matches_golden(dir: &Path) {
    let mut loaded = common::load(dir);
    let golden = common::golden(dir);
    assert!(
        golden.prompts.len() >= 3,
        "golden.json needs several prompts"
    );
    for prompt in &golden.prompts {
        let out = greedy_generate(
            &mut loaded.model,
            std::slice::from_ref(&prompt.input_ids),
            golden.max_new_tokens,
        )
        .expect("generate");
        assert_eq!(out.tokens[0], prompt.output_ids, "prompt {:?}", prompt.text);
        common::assert_logits_close(&out.chosen_logits[0], &prompt.top1_logits, &prompt.text);
    }
}

fn padded_batch_matches_golden(dir: &Path) {
    let mut loaded = common::load(dir);
    let golden = common::golden(dir);
    let prompts: Vec<Vec<u32>> = golden.prompts.iter().map(|p| p.input_ids.clone()).collect();
    let lengths: std::collections::BTreeSet<usize> = prompts.iter().map(Vec::len).collect();
    assert!(lengths.len() >= 3, "golden prompts must differ in length");
    let out =
        greedy_generate(&mut loaded.model, &prompts, golden.max_new_tokens).expect("generate");
    for (row, prompt) in golden.prompts.iter().enumerate() {
        let what = format!("batched prompt {:?}", prompt.text);
        assert_eq!(out.tokens[row], prompt.output_ids, "{what}");
        common::assert_logits_close(&out.chosen_logits[row], &prompt.top1_logits, &what);
    }
}

#[test]
fn tiny_tokenizer_matches_golden() {
    tokenizer_matches_golden(&common::required_model(common::TINY));
}

#[test]
fn tiny_kv_cache_generation_matches_golden() {
    for dir in common::tiny_models() {
        kv_cache_generation_matches_golden(&dir);
    }
}

#[test]
fn tiny_padded_batch_matches_golden() {
    for dir in common::tiny_models() {
        padded_batch_matches_golden(&dir);
    }
}

/// The tiny graphs take their KV layouts from their inputs: mask and position ids for
/// explicit attention, decode rows and prefill lanes for the packed graph, row descriptors
/// (and no lanes) for the slots graph.
#[test]
fn each_graph_gets_its_kv_layout() {
    let [explicit, packed, slots] = common::tiny_models();
    let slots = common::load(&slots).model;
    assert_eq!(slots.kv_layout(), KvLayout::Slots);
    assert_eq!(slots.prefill_lanes(), None, "any number of chunks per pass");
    assert_eq!(common::load(&explicit).model.kv_layout(), KvLayout::Padded);
    let packed = common::load(&packed).model;
    assert_eq!(packed.kv_layout(), KvLayout::Slots);
    assert_eq!(
        packed.prefill_lanes(),
        Some(2),
        "the exporter's default lanes"
    );
}

/// The packed graph (slot cache, written in place) against the explicit one (padded cache,
/// concatenated) on the same weights, all golden prompts in one batch: the same ids, and
/// the chosen logits within 1e-3 relative.
#[test]
fn packed_graph_matches_explicit_attention() {
    let [explicit, packed, _] = common::tiny_models();
    let golden = common::golden(&explicit);
    let prompts: Vec<Vec<u32>> = golden.prompts.iter().map(|p| p.input_ids.clone()).collect();
    let run = |dir: &Path| {
        let mut loaded = common::load(dir);
        greedy_generate(&mut loaded.model, &prompts, golden.max_new_tokens).expect("generate")
    };
    let (a, b) = (run(&explicit), run(&packed));
    for (row, prompt) in golden.prompts.iter().enumerate() {
        let what = format!("packed vs explicit, prompt {:?}", prompt.text);
        assert_eq!(b.tokens[row], a.tokens[row], "{what}");
        common::assert_logits_close(&b.chosen_logits[row], &a.chosen_logits[row], &what);
    }
}

#[test]
fn needs_shared_llama2_tokenizer_model_matches_golden() {
    let Some(dir) = common::shared_model(
        common::TINY_LLAMA_TOKENIZER,
        "needs_shared_llama2_tokenizer_model_matches_golden",
    ) else {
        return;
    };
    tokenizer_matches_golden(&dir);
    kv_cache_generation_matches_golden(&dir);
    padded_batch_matches_golden(&dir);
}
