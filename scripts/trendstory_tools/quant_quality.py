"""How far a quantized export's next-token distributions are from the fp32 export of the same
weights: per position KL divergence and top-1 agreement, paired against a baseline variant,
results saved and reloaded (.npz) so that large exports need not be kept; the table
BENCHMARKS.md "int4 quality" shows. The command line is cli/quant_quality.py."""
from __future__ import annotations

import gc
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from trendstory_tools.golden import make_session, run_full
from trendstory_tools.int4.formats import MATRIX_KINDS
from trendstory_tools.log import log as tool_log


def log(msg: str) -> None:
    tool_log(msg, "quant_quality")


def read_manifest(d: Path) -> dict:
    p = d / "manifest.json"
    if not p.exists():
        raise SystemExit(f"error: {p} not found (not a complete export_onnx.py export)")
    return json.loads(p.read_text())


def kind_formats(q: dict) -> dict:
    """{kind: (block size, symmetric)} of a manifest's int4 quantization (exports from before
    per-kind formats had one block size and symmetry for all)."""
    if "kinds" in q:
        return {k: (f["block_size"], f["symmetric"]) for k, f in q["kinds"].items()}
    return {k: (q["block_size"], q.get("symmetric", True)) for k in MATRIX_KINDS}


def describe(man: dict) -> str:
    if man.get("gguf") and man.get("weights_of"):
        return f"llama.cpp {man['gguf']['file_type']} (GGUF dequantized to fp32)"
    q = man.get("quantization")
    if man.get("precision") == "fp32" or not q:
        return "fp32"
    if q.get("keep_native"):
        # a GGUF import: each kind's encoding (gguf_import.py), e.g. "lm_head: 8-bit block 32, ..."
        return "GGUF blocks kept: " + "; ".join(sorted(q["nodes"]))
    formats = kind_formats(q)
    if len(set(formats.values())) == 1:
        block, symmetric = next(iter(formats.values()))
        desc = f"{'symmetric' if symmetric else 'asymmetric (zero points)'}, block {block}"
    else:
        desc = ",".join(f"{k}={b}{'' if sym else ':zp'}" for k, (b, sym) in formats.items())
    return f"int4 {desc}, {q.get('rounding', 'absmax')} rounding, accuracy level {q['accuracy_level']}"


def is_uniform_block32(man: dict) -> bool:
    """Symmetric int4 at block 32 for every kind: the default baseline."""
    q = man.get("quantization")
    return (man.get("precision") == "int4" and bool(q)
            and set(kind_formats(q).values()) == {(32, True)})


def check_same_model(ref: Path, ref_man: dict, d: Path, man: dict, allow_other_source: bool):
    keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "head_dim", "vocab_size")
    for k in keys:
        if man.get(k) != ref_man.get(k):
            raise SystemExit(f"error: {d} has {k}={man.get(k)}, {ref} has {ref_man.get(k)}")
    tok, ref_tok = man["files"].get("tokenizer.json"), ref_man["files"].get("tokenizer.json")
    if tok != ref_tok:
        raise SystemExit(f"error: {d} and {ref} have different tokenizers")
    # a dequantized GGUF export (gguf_dequant.py) names the checkpoint it approximates
    if man.get("weights_of", man.get("source")) != ref_man.get("source"):
        msg = (f"{d} was exported from {man.get('source')!r}, {ref} from "
               f"{ref_man.get('source')!r}: not provably the same weights")
        if not allow_other_source:
            raise SystemExit(f"error: {msg} (--allow-other-source to compare anyway)")
        log(f"warning: {msg}")


def windows_of(ids: list[int], bos: int | None, window: int, max_windows: int | None,
               min_tokens: int = 16) -> list[list[int]]:
    """Non-overlapping windows of `window` tokens: BOS + the next window-1 text tokens (or
    `window` text tokens for a model that takes no BOS: bos None).

    A last, shorter window is kept when it has at least min_tokens text tokens."""
    lead = [] if bos is None else [bos]
    step = window - len(lead)
    out = []
    for start in range(0, len(ids), step):
        chunk = ids[start:start + step]
        if len(chunk) < min_tokens:
            break
        out.append(lead + chunk)
        if max_windows and len(out) == max_windows:
            break
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def run_model(d: Path, cfg: dict, windows: list[list[int]], threads: int):
    """Log-probabilities [positions, vocab] (float64) over all windows, and timings."""
    t0 = time.time()
    sess = make_session(d / "model.onnx", threads)
    t_load = time.time() - t0
    t1 = time.time()
    out = [log_softmax(run_full(sess, cfg, np.array([w], dtype=np.int64))[0]) for w in windows]
    t_run = time.time() - t1
    del sess
    gc.collect()
    return np.concatenate(out, axis=0), t_load, t_run


def compare(lp_ref: np.ndarray, lp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per position: KL(p_ref || p) in nats, and whether the argmaxes agree."""
    kl = (np.exp(lp_ref) * (lp_ref - lp)).sum(axis=-1)
    kl = np.maximum(kl, 0.0)  # tiny negative values from rounding
    return kl, lp_ref.argmax(-1) == lp.argmax(-1)


def summary(name: str, path: str, quantization: str, manifest_quantization, kl, agree) -> dict:
    """A variant's row: top-1 agreement and the KL distribution over all positions."""
    return {"name": name, "path": path, "quantization": quantization,
            "manifest_quantization": manifest_quantization,
            "top1_agreement": float(agree.mean()), "top1_agree_count": int(agree.sum()),
            "kl_mean": float(kl.mean()), "kl_median": float(np.median(kl)),
            "kl_p95": float(np.percentile(kl, 95)), "kl_max": float(kl.max())}


def save_result(path: Path, row: dict, kl, agree, fingerprint: dict) -> None:
    """A variant's per-position KL and agreement, for a later run's --saved."""
    meta = {"name": row["name"], "quantization": row["quantization"],
            "manifest_quantization": row["manifest_quantization"], "fingerprint": fingerprint}
    write_npz(path, kl=kl, agree=agree, meta=np.array(json.dumps(meta)))


def save_ref(path: Path, lp_ref, windows, text_tokens: int, manifest: dict, cfg: dict,
             fingerprint: dict) -> None:
    """The reference's log-probabilities (float32) and windows, for a later run's --ref."""
    meta = {"manifest": manifest, "config": cfg, "fingerprint": fingerprint,
            "text_tokens": text_tokens, "window_lengths": [len(w) for w in windows]}
    write_npz(path, lp=lp_ref.astype(np.float32), ids=np.concatenate(windows),
              meta=np.array(json.dumps(meta)))


def write_npz(path: Path, **arrays) -> None:
    """np.savez to path, whole or not at all (a full disk leaves no truncated file behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"saved {path}")


def load_saved_ref(path: Path) -> dict:
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            lp, ids = z["lp"].astype(np.float64), z["ids"].tolist()
    except (OSError, KeyError, ValueError) as e:
        raise SystemExit(f"error: {path} is not a reference saved by quant_quality.py --save ({e})")
    ends = np.cumsum(meta.pop("window_lengths")).tolist()
    windows = [ids[a:b] for a, b in zip([0, *ends[:-1]], ends)]
    return {**meta, "lp": lp, "windows": windows}


def load_saved(path: Path) -> dict:
    try:
        with np.load(path) as z:
            return {**json.loads(str(z["meta"])), "kl": z["kl"], "agree": z["agree"]}
    except (OSError, KeyError, ValueError) as e:
        raise SystemExit(f"error: {path} is not a quant_quality.py --save file ({e})")


def paired(kl_v, agree_v, kl_b, agree_b, window_ids) -> dict:
    diff = kl_v - kl_b
    n = len(diff)
    se = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else float("inf")
    only_base = int((agree_b & ~agree_v).sum())
    only_var = int((agree_v & ~agree_b).sum())
    wins = sorted(set(window_ids.tolist()))
    kl_worse_windows = sum(int(diff[window_ids == w].mean() > 0) for w in wins)
    top1_worse_windows = sum(int(agree_v[window_ids == w].sum() < agree_b[window_ids == w].sum())
                             for w in wins)
    kl_worse = bool(diff.mean() > 2 * se)
    kl_better = bool(diff.mean() < -2 * se)
    margin = 2 * math.sqrt(only_base + only_var)
    top1_worse = bool(only_base - only_var > margin)
    top1_better = bool(only_var - only_base > margin)
    if kl_worse or top1_worse:
        verdict = "fails"
    elif kl_better or top1_better:
        verdict = "meets (better beyond noise)"
    elif diff.mean() <= 0 and only_var >= only_base:
        verdict = "meets (at least as good, raw)"
    else:
        verdict = "meets (worse within noise)"
    return {"kl_diff_mean": float(diff.mean()), "kl_diff_se": se,
            "kl_ratio": float(kl_v.mean() / kl_b.mean()) if kl_b.mean() > 0 else None,
            "top1_only_baseline_agrees": only_base, "top1_only_variant_agrees": only_var,
            "kl_worse_beyond_noise": kl_worse, "kl_better_beyond_noise": kl_better,
            "top1_worse_beyond_noise": top1_worse, "top1_better_beyond_noise": top1_better,
            "windows": len(wins), "windows_kl_worse": kl_worse_windows,
            "windows_top1_worse": top1_worse_windows, "verdict": verdict}


def markdown(report: dict) -> str:
    base = report["baseline"]
    lines = [
        f"reference: {report['ref']} (fp32); text: {report['text']} ({report['text_tokens']} "
        f"tokens); {report['windows']} windows of <= {report['window']} tokens (BOS + text), "
        f"{report['positions']} positions",
        f"fp32 next-token distribution: mean entropy {report['ref_entropy_mean']:.3f} nats "
        f"(uniform: {math.log(report['vocab_size']):.3f}), mean top-1 probability "
        f"{report['ref_top1_prob_mean']:.3f}, median top-1/top-2 logit gap "
        f"{report['ref_top2_gap_median']:.3f}",
        "",
        "| variant | quantization | top-1 agreement | mean KL (nats) | median KL | p95 KL | max KL |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in report["variants"]:
        lines.append(
            f"| {v['name']} | {v['quantization']} | {v['top1_agreement'] * 100:.1f}% "
            f"({v['top1_agree_count']}/{report['positions']}) | {v['kl_mean']:.4g} | "
            f"{v['kl_median']:.4g} | {v['kl_p95']:.4g} | {v['kl_max']:.4g} |")
    if base:
        lines += ["", f"Against the baseline {base} (paired, same positions):", "",
                  "| variant | KL - baseline KL (mean +- 2 SE) | KL ratio | top-1: only baseline / "
                  "only variant agrees | windows worse (KL, top-1) | verdict |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for v in report["variants"]:
            c = v.get("vs_baseline")
            if not c:
                continue
            ratio = f"{c['kl_ratio']:.2f}x" if c["kl_ratio"] is not None else "-"
            lines.append(
                f"| {v['name']} | {c['kl_diff_mean']:+.4g} +- {2 * c['kl_diff_se']:.2g} | {ratio} | "
                f"{c['top1_only_baseline_agrees']} / {c['top1_only_variant_agrees']} | "
                f"{c['windows_kl_worse']}/{c['windows']}, {c['windows_top1_worse']}/{c['windows']} | "
                f"{c['verdict']} |")
    return "\n".join(lines)
