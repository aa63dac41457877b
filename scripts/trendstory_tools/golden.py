"""golden.json: each export's greedy outputs on a few prompts, computed by stock ONNX Runtime
re-running the whole sequence at every step (no KV cache), for the engine's tests to match;
and the plain forward passes that tests and quant_quality run on an export."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from trendstory_tools.llama_checkpoint import model_dims
from trendstory_tools.log import log

GOLDEN_PROMPTS = [
    "The",
    "The weather today is",
    "Once upon a time, a curious robot lived in a lighthouse at the end of the island.",
    (
        "Breaking news: scientists at the observatory found a faint comet moving across the "
        "edge of the solar system, and engineers tested a new battery that charges in ten "
        "minutes. Fans waited outside the stadium for hours while the rain kept falling, and "
        "the final match was moved to Sunday."
    ),
    "Café ☕ in Zürich: naïve crème brûlée 🚀 東京の桜 🌸 is trending",
    "<|user|>\nWrite a short story about the trend: electric cars</s>\n<|assistant|>\n",
]


def make_session(model_path: Path, threads: int = 1):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])


def run_full(sess, cfg: dict, ids_2d: np.ndarray, mask_2d: np.ndarray | None = None,
             position_ids: np.ndarray | None = None) -> np.ndarray:
    """One forward pass with an empty past: returns logits [B, S, V]."""
    dm = model_dims(cfg)
    ids_2d = np.asarray(ids_2d, dtype=np.int64)
    b, s = ids_2d.shape
    if mask_2d is None:
        mask_2d = np.ones((b, s), dtype=np.int64)
    if position_ids is None:
        position_ids = np.clip(np.cumsum(mask_2d, axis=1) - 1, 0, None).astype(np.int64)
    names = {i.name for i in sess.get_inputs()}
    if "decode_rows" in names:
        # Packed contract: each row alone, its whole sequence in lane 0 over an empty past.
        if not np.all(mask_2d == 1):
            raise ValueError("a packed graph takes whole rows, not a mask")
        return np.concatenate([run_packed_row(sess, dm, names, row) for row in ids_2d])
    feed = {"input_ids": ids_2d, "attention_mask": np.asarray(mask_2d, dtype=np.int64),
            "position_ids": position_ids}
    empty = np.zeros((b, dm["kv_heads"], 0, dm["head_dim"]), dtype=np.float32)
    for i in range(dm["layers"]):
        feed[f"past_key_values.{i}.key"] = empty
        feed[f"past_key_values.{i}.value"] = empty
    return sess.run(["logits"], feed)[0]


def packed_lanes(input_names) -> int:
    """The number of prefill lanes a packed graph has."""
    return sum(1 for n in input_names if n.startswith("lane.") and n.endswith(".start"))


def run_packed_row(sess, dm: dict, names, ids: np.ndarray) -> np.ndarray:
    """One row through a packed graph with an empty past: lane 0 takes all its tokens (over a
    fresh slot of exactly that length), the decode node and the other lanes one dummy token
    over scratch slots. Returns logits [1, S, V] of every position."""
    s = len(ids)
    i32 = lambda v: np.asarray(v, dtype=np.int32)  # noqa: E731
    i64 = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    feed = {"input_ids": i64([ids]), "decode_rows": i64([0]), "decode_seqlens_k": i32([0]),
            "decode_total": i32(1), "attn_order": i64(1 + np.arange(s)),
            "logits_index": i64(np.arange(s))}
    scratch = np.zeros((1, dm["kv_heads"], 1, dm["head_dim"]), dtype=np.float32)
    for k in range(packed_lanes(names)):
        start, end, total = (0, s, s) if k == 0 else (0, 1, 1)
        feed.update({f"lane.{k}.start": i64([start]), f"lane.{k}.end": i64([end]),
                     f"lane.{k}.seqlens_k": i32([total - 1]), f"lane.{k}.total": i32(total)})
        past = np.zeros((1, dm["kv_heads"], s, dm["head_dim"]), np.float32) if k == 0 else scratch
        for i in range(dm["layers"]):
            for kv in ("key", "value"):
                feed[f"lane.{k}.past.{i}.{kv}"] = past
    for i in range(dm["layers"]):
        for kv in ("key", "value"):
            feed[f"past_key_values.{i}.{kv}"] = scratch
    return sess.run(["logits"], feed)[0]


def greedy_full_recompute(sess, cfg: dict, input_ids: list[int], max_new: int, eos: int):
    """Greedy decode re-running the whole sequence each step (no KV cache).

    Returns (output_ids, per-step top-2 margins, per-step logit std, per-step top-1 logit)."""
    seq = list(input_ids)
    out, margins, stds, tops = [], [], [], []
    for _ in range(max_new):
        logits = run_full(sess, cfg, np.array([seq]))[0, -1].astype(np.float64)
        order = np.argsort(-logits, kind="stable")
        nxt = int(order[0])
        margins.append(float(logits[order[0]] - logits[order[1]]))
        stds.append(float(logits.std()))
        tops.append(float(logits[order[0]]))
        out.append(nxt)
        seq.append(nxt)
        if nxt == eos:
            break
    return out, margins, stds, tops


def write_golden(out_dir: Path, cfg: dict, max_new: int, threads: int = 1) -> dict:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    sess = make_session(out_dir / "model.onnx", threads)
    eos = int(cfg.get("eos_token_id", 2))
    prompts, all_margins, rel = [], [], []
    for text in GOLDEN_PROMPTS:
        ids = tok.encode(text, add_special_tokens=True).ids
        t0 = time.time()
        out, margins, stds, tops = greedy_full_recompute(sess, cfg, ids, max_new, eos)
        all_margins += margins
        rel += [m / s for m, s in zip(margins, stds)]
        prompts.append({"text": text, "input_ids": ids, "output_ids": out,
                        "top1_logits": [round(t, 4) for t in tops],
                        "top2_margins": [round(m, 4) for m in margins]})
        log(f"  golden: {len(ids)} prompt tokens -> {out} ({time.time() - t0:.1f}s)")
    golden = {"max_new_tokens": max_new, "eos_token_id": eos,
              "min_top2_margin": round(min(all_margins), 6),
              "min_top2_margin_over_logit_std": round(min(rel), 6),
              "prompts": prompts}
    (out_dir / "golden.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1))
    return golden
