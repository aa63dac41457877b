"""W4, the web page's traffic, and the prompts TrendStory renders (for llama-server).

The page (src/api/page/) lists the current trends; a reader picks **Write a story** on one,
maybe asks for another story about it, or types a topic of their own. W4 draws each request
from that mix: 70% a story about one of the top trends (Zipf-skewed by rank, no seed: what
the page sends), 20% another story about a top trend (the page's **Another story**:
TrendStory gets the ids the user was shown, `seen`, from the load test's user; llama-server a
fresh seed, drawn here), 10% a topic the user typed (unique). The style
is one of the page's five, its default (news) most likely. `PageTraffic` draws that sequence
from a seed, so TrendStory and llama-server get the same requests in the same order.

llama-server gets the text TrendStory renders for each request (`chat_prompt`): TinyLlama's
chat template (or a model folder's, `ChatTemplate`) around the style's system prompt and the
user message, with the trend's context ("why it is trending") as TrendStory adds it.
tests/loadtest checks these strings against src/stories/prompt.rs.

No Locust import here: bench.py, report.py and the tests use it too.
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass

# Style::system_prompt and Style::story_kind of src/stories/prompt.rs, by wire name.
STYLES = {
    "news": (
        "You are a news reporter. Write a short, original news story of three or four "
        "paragraphs about the topic the user gives, in a clear, factual tone. "
        "Reply with the story only: no title, introduction or notes.",
        "a short news story"),
    "fairy_tale": (
        "You are a storyteller. Write a short, original fairy tale of three or four "
        "paragraphs about the topic the user gives. Begin with \"Once upon a time\", "
        "add a little magic and end with a gentle lesson. "
        "Reply with the story only: no title, introduction or notes.",
        "a short fairy tale"),
    "sci_fi": (
        "You are a science-fiction author. Write a short, original science-fiction story "
        "of three or four paragraphs about the topic the user gives, set in the future, "
        "with one vivid invention and a surprising ending. "
        "Reply with the story only: no title, introduction or notes.",
        "a short science-fiction story"),
    "mystery": (
        "You are a mystery writer. Write a short, original mystery story of three or four "
        "paragraphs about the topic the user gives: a puzzling event, a few clues and a "
        "clever solution at the end. "
        "Reply with the story only: no title, introduction or notes.",
        "a short mystery story"),
    "poem": (
        "You are a poet. Write a short, original story told as a poem of three or four "
        "stanzas about the topic the user gives, with vivid images and a steady rhythm. "
        "Reply with the poem only: no title, introduction or notes.",
        "a short story told as a poem"),
}
# The page's style menu: its default (news, selected when the page opens) for most readers.
STYLE_WEIGHTS = {"news": 0.6, "fairy_tale": 0.1, "sci_fi": 0.1, "mystery": 0.1, "poem": 0.1}
# The page's three kinds of request and their shares.
KIND_WEIGHTS = {"write": 0.7, "another": 0.2, "typed": 0.1}
# `is_invisible_format` of src/stories/prompt.rs: soft hyphen, zero-width space, bidi marks,
# embeddings, overrides and isolates, word joiner and invisible operators, BOM.
INVISIBLE = frozenset("\u00ad\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062"
                      "\u2063\u2064\u2066\u2067\u2068\u2069\ufeff")
SUBJECTS = [
    "electric cars", "solar storms", "a new comet", "the world cup final", "a mars rover",
    "quantum chips", "coral reefs", "chess engines", "ocean cleanup", "vertical farms",
    "deep sea mining", "heat pumps", "a record heatwave", "a city marathon", "a lost painting",
]


def clean(text: str) -> str:
    """Text as TrendStory's `clean_topic` leaves it for a prompt: control and invisible
    format characters dropped, whitespace runs as one space, trimmed, no `<|` or `|>`."""
    kept = []
    for c in text:
        if c.isspace():
            kept.append(" ")
        elif unicodedata.category(c) != "Cc" and c not in INVISIBLE:
            kept.append(c)
    out = " ".join("".join(kept).split())
    while "<|" in out or "|>" in out:
        out = out.replace("<|", "<").replace("|>", ">")
    return out


class ChatTemplate:
    """A model folder's chat template (tokenizer_config.json), rendered as TrendStory renders
    it (src/stories/template.rs: Hugging Face's trim_blocks and lstrip_blocks, the folder's
    BOS and EOS tokens)."""

    def __init__(self, tokenizer_config: str):
        import json

        import jinja2
        config = json.loads(open(tokenizer_config, encoding="utf-8").read())
        token = lambda v: v.get("content") if isinstance(v, dict) else v  # noqa: E731
        self.bos, self.eos = token(config.get("bos_token")), token(config.get("eos_token"))
        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        self.template = env.from_string(config["chat_template"])

    def render(self, system: str, user: str) -> str:
        return self.template.render(
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            add_generation_prompt=True, bos_token=self.bos, eos_token=self.eos)


def chat_prompt(topic: str, style: str = "news", context: str | None = None,
                template: ChatTemplate | None = None) -> str:
    """The text of TrendStory's prompt (TinyLlama's chat template unless another is given;
    BOS added by the tokenizer where the model takes one) for a story about `topic`, with why
    it trends when known."""
    system, kind = STYLES[style]
    user = f"Write {kind} about this trending topic.\nTopic: {clean(topic)}"
    if context and clean(context):
        user += f"\nWhy it is trending: {clean(context)}"
    if template is not None:
        return template.render(system, user)
    return f"<|system|>\n{system}</s>\n<|user|>\n{user}</s>\n<|assistant|>\n"


def zipf_weights(n: int, s: float) -> list[float]:
    """Weight 1/r^s of rank r = 1..n."""
    return [1 / (rank ** s) for rank in range(1, n + 1)]


@dataclass(frozen=True)
class PageRequest:
    """One W4 request: what the page would send."""

    kind: str  # write | another | typed
    topic: str
    context: str | None  # the trend's, as /v1/trends gives it; None for a typed topic
    style: str
    seed: int | None  # only "another" sends one


class PageTraffic:
    """W4's requests in a fixed order from `seed`, over `trends` (dicts with `topic` and
    `context`, ranked): the same sequence whichever server answers."""

    def __init__(self, trends: list[dict], seed: int, zipf_s: float):
        if not trends:
            raise ValueError("W4 needs at least one trend")
        self.trends = trends
        self.weights = zipf_weights(len(trends), zipf_s)
        self.rng = random.Random(seed)

    def next(self) -> PageRequest:
        rng = self.rng
        kind = rng.choices(list(KIND_WEIGHTS), list(KIND_WEIGHTS.values()))[0]
        style = rng.choices(list(STYLE_WEIGHTS), list(STYLE_WEIGHTS.values()))[0]
        if kind == "typed":
            # 40 random bits: no two typed topics of a run, or of runs with other seeds, meet.
            topic = f"{rng.choice(SUBJECTS)}, asked {rng.getrandbits(40):010x}"
            return PageRequest(kind, topic, None, style, None)
        trend = rng.choices(self.trends, self.weights)[0]
        # 31 bits: llama-server reads the seed as a 32-bit value.
        seed = rng.getrandbits(31) if kind == "another" else None
        return PageRequest(kind, trend["topic"], trend.get("context"), style, seed)
