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
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from trendstory_tools.paths import QUALITY_TEXT
from trendstory_tools.quant_quality import (
    check_same_model, compare, describe, is_uniform_block32, load_saved, load_saved_ref, log,
    markdown, paired, read_manifest, run_model, save_ref, save_result, summary, windows_of)


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
    ap.add_argument("--text", type=Path, default=QUALITY_TEXT, help="plain text (default %(default)s)")
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
