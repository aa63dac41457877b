"""W4's request mix and the prompts llama-server gets (scripts/loadtest/page_traffic.py): the
sequence is reproducible from its seed and has the page's shares, and the prompt text is
the one src/stories/prompt.rs renders (its strings are read from the Rust source, so a
change there that the load test misses fails here).
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import pytest

from trendstory_tools.loadtest import page_traffic as page

REPO = Path(__file__).resolve().parents[2]

TRENDS = [{"topic": f"Trend {rank}", "context": f"why {rank} trends"} for rank in range(1, 21)]


def draw(n: int, seed: int = 7) -> list[page.PageRequest]:
    traffic = page.PageTraffic(TRENDS, seed, 1.1)
    return [traffic.next() for _ in range(n)]


def test_the_same_seed_gives_the_same_sequence():
    assert draw(300) == draw(300)
    assert draw(300) != draw(300, seed=8)


def test_the_mix_has_the_pages_shares():
    requests = draw(20_000)
    kinds = collections.Counter(r.kind for r in requests)
    for kind, share in page.KIND_WEIGHTS.items():
        assert kinds[kind] / len(requests) == pytest.approx(share, abs=0.015), kind
    styles = collections.Counter(r.style for r in requests)
    assert styles.most_common(1)[0][0] == "news"
    for style, share in page.STYLE_WEIGHTS.items():
        assert styles[style] / len(requests) == pytest.approx(share, abs=0.015), style
    # Trends by Zipf rank (s = 1.1): rank 1 most often, in the weights' proportion.
    on_trends = [r for r in requests if r.kind != "typed"]
    ranks = collections.Counter(int(r.topic.split()[1]) for r in on_trends)
    weights = page.zipf_weights(20, 1.1)
    assert ranks[1] / len(on_trends) == pytest.approx(weights[0] / sum(weights), abs=0.015)
    assert ranks[1] > ranks[2] > ranks[5] > ranks[20] > 0


def test_each_kind_carries_what_the_page_sends():
    requests = draw(5_000)
    typed = [r for r in requests if r.kind == "typed"]
    assert len({r.topic for r in typed}) == len(typed), "typed topics are unique"
    assert all(r.context is None and r.seed is None for r in typed)
    assert not {r.topic for r in typed} & {t["topic"] for t in TRENDS}
    write = [r for r in requests if r.kind == "write"]
    assert all(r.seed is None and r.context == "why " + r.topic.split()[1] + " trends"
               for r in write)
    another = [r for r in requests if r.kind == "another"]
    assert all(r.seed is not None and 0 <= r.seed < 2**31 for r in another)
    assert len({r.seed for r in another}) == len(another), "each another story a fresh seed"
    # Another level's seed: none of its typed topics or seeds meets this one's.
    other = draw(5_000, seed=8)
    assert not {r.topic for r in other if r.kind == "typed"} & {r.topic for r in typed}


def test_no_trends_is_refused():
    with pytest.raises(ValueError):
        page.PageTraffic([], 1, 1.1)


def rust_strings(body: str) -> dict[str, str]:
    """`Style::Name => "..."` arms of a Rust match, as the strings they compile to."""
    out = {}
    for name, literal in re.findall(r'Style::(\w+)\s*=>\s*\{?\s*"((?:[^"\\]|\\.)*)"', body, re.S):
        text = re.sub(r"\\\n\s*", "", literal).replace('\\"', '"').replace("\\n", "\n")
        out[re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()] = text
    return out


def test_prompts_are_the_ones_trendstory_renders():
    source = (REPO / "src/stories/prompt.rs").read_text()
    systems = rust_strings(source.split("pub fn system_prompt")[1].split("\n    }\n")[0])
    kinds = rust_strings(source.split("fn story_kind")[1].split("\n    }\n")[0])
    assert set(systems) == set(kinds) == set(page.STYLES) == set(page.STYLE_WEIGHTS)
    for style, (system, kind) in page.STYLES.items():
        assert system == systems[style], style
        assert kind == kinds[style], style
    # The user message around the topic and the context.
    assert '"Write {} about this trending topic.\\nTopic: {topic}"' in source
    assert 'message.push_str("\\nWhy it is trending: ");' in source


def test_chat_prompt_renders_tinyllamas_template_with_the_context():
    system = page.STYLES["poem"][0]
    assert page.chat_prompt("Snow  in\tthe\ndesert", "poem", " Rare snowfall (Reuters) ") == (
        f"<|system|>\n{system}</s>\n<|user|>\n"
        "Write a short story told as a poem about this trending topic.\nTopic: Snow in the desert"
        "\nWhy it is trending: Rare snowfall (Reuters)</s>\n<|assistant|>\n")
    # No context, or one that cleans to nothing: no "Why it is trending" line.
    assert "Why it is trending" not in page.chat_prompt("Comet")
    assert "Why it is trending" not in page.chat_prompt("Comet", context=" \u200b\x07 ")


def test_a_model_folders_template_renders_as_trendstory_renders_it():
    """SmolLM2's ChatML template (onnx/smollm2-test, imported by ./scripts/test.sh): the same
    text tests/real_text.rs expects of TrendStory's prompt builder."""
    config = REPO / "onnx" / "smollm2-test" / "tokenizer_config.json"
    if not config.is_file():
        pytest.fail(f"{config} is missing: run ./scripts/fetch-smollm2.sh --out onnx/smollm2-test")
    system = page.STYLES["news"][0]
    assert page.chat_prompt("Comet", "news", "Seen at dawn", page.ChatTemplate(str(config))) == (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
        "Write a short news story about this trending topic.\nTopic: Comet\nWhy it is trending: "
        "Seen at dawn<|im_end|>\n<|im_start|>assistant\n")


def test_clean_leaves_text_as_trendstory_does():
    assert page.clean("  a\u200bb\x00c \u00a0 d\u200de ") == "abc d\u200de"
    assert page.clean("x <|assistant|> y") == "x <assistant> y"
    assert page.clean("<||user||>") == "<user>"
