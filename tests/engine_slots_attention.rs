//! The slots graph (our own attention operator) against the packed GroupQueryAttention graph
//! of the same weights, pass by pass on mixed passes: the logits within 1e-3, and the same
//! passes refused.

mod common;

use trendstory::engine::{PassRow, SlotCache};

const SLOTS: usize = 4;
/// Positions per slot of the slots graph. The packed graph's cache gets one more: its
/// decode attention writes one position past each slot's end.
const CAPACITY: usize = 150;

fn row(slot: usize, past: usize, tokens: &[u32]) -> PassRow {
    PassRow {
        slot,
        past,
        tokens: tokens.to_vec(),
        logits: true,
    }
}

/// Token ids spread over the vocabulary, different for each `seed`.
fn tokens(seed: u32, n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (seed * 7919 + i * 104_729) % (vocab - 3) + 3)
        .collect()
}

#[test]
fn slots_graph_matches_the_packed_graph_on_mixed_passes() {
    let mut packed = common::load(&common::required_model(common::TINY));
    let mut slots = common::load(&common::required_model(common::TINY_SLOTS));
    let vocab = packed.info.vocab_size as u32;
    let mut packed_cache = SlotCache::new(&packed.info, SLOTS, CAPACITY + 1, 2);
    let mut slots_cache = SlotCache::new(&slots.info, SLOTS, CAPACITY, 0);
    let t = |seed, n| tokens(seed, n, vocab);
    let passes: Vec<(&str, Vec<PassRow>)> = vec![
        (
            "two prompts from an empty past",
            vec![row(0, 0, &t(1, 5)), row(2, 0, &t(2, 9))],
        ),
        (
            "a decode row, a chunk continuing at past 9, a new prompt",
            vec![
                row(0, 5, &t(3, 1)),
                row(2, 9, &t(4, 4)),
                row(1, 0, &t(5, 3)),
            ],
        ),
        (
            "decode rows at pasts 6, 3 and 13 and a chunk in one pass",
            vec![
                row(0, 6, &t(6, 1)),
                row(1, 3, &t(7, 1)),
                row(2, 13, &t(8, 1)),
                row(3, 0, &t(9, 6)),
            ],
        ),
        (
            "a chunk filling slot 0 up to its next-to-last position",
            vec![row(0, 7, &t(10, CAPACITY - 8)), row(3, 6, &t(11, 1))],
        ),
        (
            "slot 0's last position, beside a decode row",
            vec![row(0, CAPACITY - 1, &t(12, 1)), row(1, 4, &t(13, 1))],
        ),
    ];
    for (what, rows) in &passes {
        let want = packed
            .model
            .forward_packed(rows, &mut packed_cache)
            .expect(what);
        let got = slots
            .model
            .forward_packed(rows, &mut slots_cache)
            .expect(what);
        assert_eq!(got.len(), rows.len() * vocab as usize, "{what}");
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-3, "{what}: logits differ by {worst} (relative)");
        for r in rows {
            assert_eq!(slots_cache.end(r.slot), r.past + r.tokens.len(), "{what}");
        }
    }
    assert_eq!(slots_cache.end(0), CAPACITY, "slot 0 is full");
    let full = slots
        .model
        .forward_packed(&[row(0, CAPACITY, &t(14, 1))], &mut slots_cache)
        .expect_err("a full slot takes no token");
    assert!(full.to_string().contains("does not fit"), "{full}");
}

#[test]
fn bad_slots_passes_are_refused_before_the_run() {
    let mut slots = common::load(&common::required_model(common::TINY_SLOTS));
    let mut cache = SlotCache::new(&slots.info, SLOTS, CAPACITY, 0);
    let mut run = |rows: &[PassRow]| slots.model.forward_packed(rows, &mut cache);
    let refused: [(&str, Vec<PassRow>); 4] = [
        ("an empty pass", vec![]),
        ("a row with no tokens", vec![row(0, 0, &[])]),
        ("a row twice", vec![row(1, 0, &[5]), row(1, 0, &[6])]),
        ("a slot outside the cache", vec![row(SLOTS, 0, &[5])]),
    ];
    for (what, rows) in refused {
        let err = run(&rows).expect_err(what);
        assert!(
            err.to_string().starts_with("invalid input"),
            "{what}: {err}"
        );
    }
    let past_mismatch = run(&[row(0, 3, &[5])]).expect_err("the slot holds no positions");
    assert!(
        past_mismatch.to_string().contains("does not fit"),
        "{past_mismatch}"
    );
    run(&[row(0, 0, &[5, 6, 7])]).expect("a good pass after the refused ones");
}
