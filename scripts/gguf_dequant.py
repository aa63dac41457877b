#!/usr/bin/env python3
"""A llama.cpp GGUF as a row of the int4 quality table: its weights dequantized back to fp32 and
exported by export_onnx.py like any variant (--precision fp32), so scripts/quant_quality.py
compares the peer's quantization with ours position by position.

  GGUF_PY=$(scripts/loadtest/peer-llama-server.sh path | sed -n 's/^gguf_py=//p')
  .venv/bin/python scripts/gguf_dequant.py .cache/llama.cpp/tinyllama-bench-q4_0.gguf \\
      --hf-dir onnx/tinyllama-bench/hf --out onnx/q-gguf-q4_0 --gguf-py "$GGUF_PY"

1. Every tensor of the GGUF is read and dequantized with the `gguf` package of the llama.cpp
   the peer is built from (--gguf-py, the `gguf_py` path of peer-llama-server.sh), and named
   back to its Hugging Face tensor with gguf's own name map (as scripts/loadtest/hf_to_gguf.py
   names them the other way); the rotary row permutation the converter applies to q and k is
   undone.
2. Each tensor is checked against the checkpoint it was made from (--hf-dir): the relative
   error ||W_gguf - W|| / ||W|| must be what its block format predicts (predicted_rel_error),
   within CHECK_BAND. A tensor mapped to the wrong name, a missed un-permutation (~140% error)
   or another checkpoint fails the check, and the script exits 1 before exporting anything.
3. The dequantized weights are exported in fp32 to --out (the checkpoint's config and
   tokenizer), without a temporary checkpoint: the exporter reads them straight from the GGUF.
   manifest.json records the GGUF ("gguf": file, llama.cpp file type, the per-kind errors)
   and "weights_of": the checkpoint's export source, which quant_quality.py accepts as the same
   model.

Embeddings count: llama.cpp quantizes token_embd too (Q4_0 in a Q4_0 file), while our int4
exports keep it fp32; the row measures what the peer serves.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import export_onnx as E  # noqa: E402
import gguf_import as I  # noqa: E402

# Block formats as (elements per block, bits, symmetric): a symmetric block's step is its
# largest magnitude / 2^(bits-1), an asymmetric one's its range / (2^bits - 1) (K-quants: the
# sub-blocks that carry a scale). Types not listed here are not checked but refused.
BLOCK_FORMATS = {
    "Q4_0": (32, 4, True), "Q4_1": (32, 4, False), "Q5_0": (32, 5, True), "Q5_1": (32, 5, False),
    "Q8_0": (32, 8, True), "Q2_K": (16, 2, False), "Q3_K": (16, 3, True), "Q4_K": (32, 4, False),
    "Q5_K": (32, 5, False), "Q6_K": (16, 6, True),
}
# Measured error / predicted error must fall in this band. The prediction assumes rounding
# errors uniform over one step; llama.cpp's K-quant scale search lands below it (0.85-0.95),
# Q4_0's exact largest value just below 1. A wrong mapping or permutation is 10x or more off.
CHECK_BAND = (0.7, 1.15)


def log(msg: str) -> None:
    print(f"[gguf_dequant] {msg}", file=sys.stderr, flush=True)


def import_gguf(gguf_py: Path | None):
    if gguf_py is not None:
        sys.path.insert(0, str(gguf_py))
    try:
        import gguf
        from gguf import quants  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"error: the gguf package is not importable ({e}): pass --gguf-py "
                         "(scripts/loadtest/peer-llama-server.sh path prints gguf_py=...)")
    return gguf


def predicted_rel_error(w: np.ndarray, type_name: str) -> float:
    """Relative error ||Q(w) - w|| / ||w|| the GGUF type predicts for w: per block, a uniform
    rounding error over one step (step^2 / 12 per element); float types: the cast's own error."""
    if type_name in ("F32", "F16", "BF16"):
        cast = {"F32": w, "F16": w.astype(np.float16).astype(np.float32),
                "BF16": E.round_to_bf16(w)}[type_name]
        return float(np.linalg.norm(cast - w) / np.linalg.norm(w))
    n, bits, symmetric = BLOCK_FORMATS[type_name]
    blocks = w.reshape(-1, n)
    if symmetric:
        step = np.abs(blocks).max(axis=1) / 2 ** (bits - 1)
    else:
        lo = np.minimum(blocks.min(axis=1), 0)
        hi = np.maximum(blocks.max(axis=1), 0)
        step = (hi - lo) / (2 ** bits - 1)
    mse = float((step.astype(np.float64) ** 2).sum() * n / 12)
    return float(np.sqrt(mse) / np.linalg.norm(w.astype(np.float64)))


def load_weights(path: Path, cfg: dict, names: list[str]) -> I.GGUFWeights:
    """The GGUF's tensors under the checkpoint's names (the file must hold exactly those)."""
    try:
        weights = I.GGUFWeights(I.GGUFFile(path), cfg)
    except I.ImportError_ as e:
        raise SystemExit(f"error: {e}")
    if set(weights.tensors) != set(names):
        raise SystemExit(f"error: {path} and the checkpoint differ in tensors: "
                         f"{sorted(set(weights.tensors) ^ set(names))}")
    return weights


def check(weights: I.GGUFWeights, checkpoint: E.SafeTensorsDir) -> tuple[list[dict], list[str]]:
    """Per tensor: measured and predicted relative error against the checkpoint. Returns the
    per (kind, type) summary and the tensors outside CHECK_BAND."""
    groups, bad = {}, []
    for name in weights.tensors:
        ref = checkpoint.get_f32(name)
        got = weights.get_f32(name)
        if got.shape != ref.shape:
            raise SystemExit(f"error: {name}: GGUF shape {got.shape}, checkpoint {ref.shape}")
        type_name = weights.type_name(name)
        if type_name not in BLOCK_FORMATS and type_name not in ("F32", "F16", "BF16"):
            raise SystemExit(f"error: {name}: GGUF type {type_name} has no error prediction")
        err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        pred = predicted_rel_error(ref, type_name)
        if pred == 0:
            ok, ratio = err == 0, None
        else:
            ratio = err / pred
            ok = CHECK_BAND[0] <= ratio <= CHECK_BAND[1]
        if not ok:
            bad.append(f"{name} ({type_name}): error {err:.4%}, predicted {pred:.4%}")
        g = groups.setdefault((I.kind_of_tensor(name), type_name), {"errors": [], "ratios": []})
        g["errors"].append(err)
        if ratio is not None:
            g["ratios"].append(ratio)
    summary = [{"kind": kind, "type": t, "tensors": len(g["errors"]),
                "rel_error_mean": float(np.mean(g["errors"])),
                "ratio_to_predicted_min": float(min(g["ratios"])) if g["ratios"] else None,
                "ratio_to_predicted_max": float(max(g["ratios"])) if g["ratios"] else None}
               for (kind, t), g in sorted(groups.items())]
    return summary, bad


def markdown(summary: list[dict]) -> str:
    lines = ["| tensor kind | GGUF type | tensors | relative error (mean) | measured / predicted |",
             "| --- | --- | --- | --- | --- |"]
    for s in summary:
        ratio = ("exact" if s["ratio_to_predicted_min"] is None else
                 f"{s['ratio_to_predicted_min']:.3f}-{s['ratio_to_predicted_max']:.3f}")
        lines.append(f"| {s['kind']} | {s['type']} | {s['tensors']} | "
                     f"{s['rel_error_mean'] * 100:.3f}% | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", type=Path, help="the GGUF file (e.g. from peer-llama-server.sh build)")
    ap.add_argument("--hf-dir", type=Path, required=True,
                    help="the Hugging Face checkpoint the GGUF was converted from")
    ap.add_argument("--out", type=Path, help="export folder (default: only the check)")
    ap.add_argument("--gguf-py", type=Path, help="llama.cpp's gguf-py folder (default: PYTHONPATH)")
    ap.add_argument("--attention", choices=["packed", "explicit"], default="packed",
                    help="the export's attention graph (same logits either way)")
    ap.add_argument("--source", help="the checkpoint's export source, recorded as weights_of "
                    "(default hf-dir:HF_DIR, what export_onnx.py --hf-dir HF_DIR records)")
    args = ap.parse_args(argv)
    import_gguf(args.gguf_py)
    cfg = json.loads((args.hf_dir / "config.json").read_text())
    checkpoint = E.SafeTensorsDir(args.hf_dir)
    names = [n for n in checkpoint.where if not n.endswith(".rotary_emb.inv_freq")]
    weights = load_weights(args.gguf, cfg, names)
    t0 = time.time()
    summary, bad = check(weights, checkpoint)
    table = markdown(summary)
    print(f"{args.gguf.name} (llama.cpp {weights.f.file_type}) against {args.hf_dir}:\n{table}")
    log(f"checked {len(weights.tensors)} tensors in {time.time() - t0:.1f}s")
    if bad:
        raise SystemExit("error: relative error outside "
                         f"{CHECK_BAND[0]}-{CHECK_BAND[1]}x its format's prediction:\n  "
                         + "\n  ".join(bad))
    if args.out is None:
        return 0
    source = args.source or f"hf-dir:{args.hf_dir}"
    man = E.export(args.hf_dir, args.out, source=f"gguf:{args.gguf.name}",
                   random_weights=(args.hf_dir / E.RANDOM_WEIGHTS_MARKER).exists(),
                   precision="fp32", block_size=None, accuracy_level=4, golden_tokens=None,
                   attention=args.attention, weights=weights)
    man["weights_of"] = source
    man["gguf"] = {"file": args.gguf.name, "file_type": weights.f.file_type,
                   "size_bytes": args.gguf.stat().st_size, "tensors": summary}
    (args.out / "manifest.json").write_text(json.dumps(man, indent=2))
    log(f"exported {args.out} (fp32, dequantized {weights.f.file_type})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
