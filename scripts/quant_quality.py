#!/usr/bin/env python3
"""int4 quality against fp32: next-token agreement and KL divergence on real English text.

Given an fp32 export (--ref) and one or more int4 exports of the SAME weights (for example
`export_onnx.py --hf-dir onnx/tinyllama-bench/hf --out onnx/q-b32`, `... --block-size 128`,
`... --block-size 128 --zero-points`), runs a plain English text (scripts/quality_text.txt by
default) through every model in windows of --window tokens, each window starting with BOS,
one full-sequence forward pass per window (the decoder-with-past graph with an empty past, no
KV cache; no BOS for a model whose tokenizer adds none), and reports per int4 variant, over every position of every window:

  - top-1 agreement: the share of positions where argmax(int4 logits) == argmax(fp32 logits);
  - KL(p_fp32 || p_int4) of the next-token distributions, in nats: mean, median, p95, max.

No perplexity: on a random-weights checkpoint the text's own next tokens mean nothing, but the
distance to the fp32 model still measures the quantization error for that weight distribution.

Verdict against a baseline variant (--baseline, default the symmetric block-32 export): the
comparison is paired (same positions), so the text's own variation cancels. A variant "meets"
the baseline unless it is worse beyond noise:
  - KL: mean of the per-position difference KL_variant - KL_baseline above 2 standard errors;
  - top-1: b - c > 2 sqrt(b + c) (a sign/McNemar test at ~95%), where b counts positions only
    the baseline agrees with fp32 on and c positions only the variant does.
The standard errors treat positions as independent; positions in one window share context,
so the per-window signs (how many windows the variant is worse in) are reported as well.

The peer's quantization is a variant too: scripts/gguf_dequant.py exports a llama.cpp GGUF
dequantized to fp32 (its manifest names the checkpoint it approximates), e.g. the load test's
Q4_0 as --baseline, the rule of BENCHMARKS.md "int4 quality".

  .venv/bin/python scripts/quant_quality.py --ref onnx/q-fp32 onnx/q-b32 onnx/q-b128 onnx/q-b128-zp
  ... --json    machine-readable output on stdout (the table then goes to stderr)
  ... --save DIR    also keep each variant's per-position results (DIR/NAME.npz) and the
                    reference's log-probabilities (DIR/REF.ref.npz): a later run compares
                    them as --saved DIR/NAME.npz and --ref DIR/REF.ref.npz without the exports
                    (4.4 GB each in fp32)
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_onnx as E  # noqa: E402

DEFAULT_TEXT = Path(__file__).resolve().parent / "quality_text.txt"


def log(msg: str) -> None:
    print(f"[quant_quality] {msg}", file=sys.stderr, flush=True)


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
    return {k: (q["block_size"], q.get("symmetric", True)) for k in E.MATRIX_KINDS}


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
    sess = E.make_session(d / "model.onnx", threads)
    t_load = time.time() - t0
    t1 = time.time()
    out = [log_softmax(E.run_full(sess, cfg, np.array([w], dtype=np.int64))[0]) for w in windows]
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", type=Path, required=True,
                    help="the fp32 export (--precision fp32), or its results saved by an earlier "
                    "run's --save (DIR/NAME.ref.npz: its export can then be deleted)")
    ap.add_argument("variants", type=Path, nargs="*", help="int4 exports of the same weights")
    ap.add_argument("--saved", type=Path, action="append", default=[], metavar="FILE.npz",
                    help="a variant measured by an earlier run with --save (same reference, "
                    "text and windows; checked), compared without its export")
    ap.add_argument("--save", type=Path, metavar="DIR",
                    help="write each variant's per-position results to DIR/NAME.npz (for "
                    "--saved: a big export, such as a dequantized GGUF, can then be deleted) "
                    "and the reference's log-probabilities to DIR/REF.ref.npz (for --ref)")
    ap.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="plain text (default %(default)s)")
    ap.add_argument("--window", type=int, default=128, help="tokens per window, BOS included")
    ap.add_argument("--max-windows", type=int, help="use only the first N windows")
    ap.add_argument("--baseline", help="variant (folder or saved name) the others are judged against "
                    "(default: the symmetric block-32 int4 variant, if any)")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    ap.add_argument("--allow-other-source", action="store_true",
                    help="compare exports whose manifests name different sources")
    ap.add_argument("--json", action="store_true", help="JSON report on stdout")
    args = ap.parse_args(argv)
    if args.window < 2:
        ap.error("--window must be at least 2")

    t_start = time.time()
    text = args.text.read_text(encoding="utf-8")
    saved_ref = load_saved_ref(args.ref) if args.ref.suffix == ".npz" else None
    ref_man = saved_ref["manifest"] if saved_ref else read_manifest(args.ref)
    if ref_man.get("precision") != "fp32":
        log(f"warning: {args.ref} is {describe(ref_man)}, not fp32")
    if not args.variants and not args.saved:
        ap.error("give at least one variant (an export folder or --saved FILE.npz)")
    mans = []
    for d in args.variants:
        man = read_manifest(d)
        check_same_model(args.ref, ref_man, d, man, args.allow_other_source)
        mans.append(man)
    saved = [load_saved(f) for f in args.saved]
    names = [d.name for d in args.variants] + [sv["name"] for sv in saved]
    if len(set(names)) != len(names):
        raise SystemExit(f"error: variant names must differ: {names}")
    baseline = args.baseline
    if baseline is None:
        baseline = next((d.name for d, man in zip(args.variants, mans) if is_uniform_block32(man)),
                        None)
    elif baseline not in names:
        raise SystemExit(f"error: --baseline {baseline} is not one of {names}")

    if saved_ref:
        cfg, windows, text_tokens = saved_ref["config"], saved_ref["windows"], saved_ref["text_tokens"]
        if args.max_windows and args.max_windows != len(windows):
            raise SystemExit(f"error: {args.ref} holds {len(windows)} windows, not --max-windows "
                             f"{args.max_windows}")
    else:
        cfg = json.loads((args.ref / "config.json").read_text())
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(args.ref / "tokenizer.json"))
        ids = tok.encode(text, add_special_tokens=False).ids
        text_tokens = len(ids)
        bos = int(ref_man.get("bos_token_id", 1))
        takes_bos = tok.encode("a", add_special_tokens=True).ids[:1] == [bos]
        windows = windows_of(ids, bos if takes_bos else None, args.window, args.max_windows)
        if not windows:
            raise SystemExit(f"error: {args.text} has too few tokens ({len(ids)})")
    window_ids = np.concatenate([np.full(len(w), i) for i, w in enumerate(windows)])
    positions = int(window_ids.size)
    log(f"{text_tokens} text tokens -> {len(windows)} windows, {positions} positions")
    fingerprint = {"ref_weights": ref_man["files"].get("model.onnx.data"),
                   "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
                   "window": args.window, "windows": len(windows), "positions": positions}
    for sv, f in [*zip(saved, args.saved), *([(saved_ref, args.ref)] if saved_ref else [])]:
        if sv["fingerprint"] != fingerprint:
            raise SystemExit(f"error: {f} was measured against another reference, text or "
                             f"windows ({sv['fingerprint']}, this run: {fingerprint})")

    if saved_ref:
        lp_ref = saved_ref["lp"]
    else:
        lp_ref, t_load, t_run = run_model(args.ref, cfg, windows, args.threads)
        log(f"{args.ref}: fp32 reference, load {t_load:.1f}s, run {t_run:.1f}s")
        if args.save:
            save_ref(args.save / f"{args.ref.name}.ref.npz", lp_ref, windows, text_tokens, ref_man,
                     cfg, fingerprint)
    p_ref = np.exp(lp_ref)
    entropy = -(p_ref * lp_ref).sum(-1)
    top2 = np.sort(lp_ref, axis=-1)[:, -2:]  # log-prob gap == logit gap
    del p_ref

    results, per_pos = [], {}
    for d, man in zip(args.variants, mans):
        lp, t_load, t_run = run_model(d, cfg, windows, args.threads)
        kl, agree = compare(lp_ref, lp)
        del lp
        per_pos[d.name] = (kl, agree)
        results.append({**summary(d.name, str(d), describe(man), man.get("quantization"), kl, agree),
                        "load_seconds": round(t_load, 2), "run_seconds": round(t_run, 2)})
        log(f"{d}: {describe(man)}: top-1 {agree.mean() * 100:.1f}%, mean KL {kl.mean():.4g} "
            f"(load {t_load:.1f}s, run {t_run:.1f}s)")
        if args.save:
            save_result(args.save / f"{d.name}.npz", results[-1], kl, agree, fingerprint)
    for sv, f in zip(saved, args.saved):
        per_pos[sv["name"]] = (sv["kl"], sv["agree"])
        results.append(summary(sv["name"], str(f), sv["quantization"],
                               sv["manifest_quantization"], sv["kl"], sv["agree"]))
    if baseline:
        kl_b, agree_b = per_pos[baseline]
        for r in results:
            if r["name"] != baseline:
                kl_v, agree_v = per_pos[r["name"]]
                r["vs_baseline"] = paired(kl_v, agree_v, kl_b, agree_b, window_ids)

    report = {
        "ref": str(args.ref), "ref_source": ref_man.get("source"),
        "random_weights": bool(ref_man.get("random_weights")),
        "text": str(args.text), "text_tokens": text_tokens, "window": args.window,
        "windows": len(windows), "positions": positions, "vocab_size": int(cfg["vocab_size"]),
        "threads": args.threads,
        "ref_entropy_mean": float(entropy.mean()),
        "ref_top1_prob_mean": float(np.exp(top2[:, 1]).mean()),
        "ref_top2_gap_median": float(np.median(top2[:, 1] - top2[:, 0])),
        "baseline": baseline, "variants": results,
        "seconds": round(time.time() - t_start, 1),
    }
    table = markdown(report)
    if report["random_weights"]:
        table += ("\n\nRandom weights: these figures measure the quantization error for this "
                  "weight distribution, not language quality.")
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        print(table)
    log(f"done in {report['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
