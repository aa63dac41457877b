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


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of hf_to_gguf.permute (llama.cpp's rotary pairs back to HF's halves)."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


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


class GGUFWeights:
    """The GGUF's tensors under their Hugging Face names, dequantized to float32 on demand (the
    exporter's weights interface: get_f32 and `in`)."""

    def __init__(self, gguf, path: Path, cfg: dict, hf_names: list[str]):
        self.gguf = gguf
        self.reader = gguf.GGUFReader(str(path))
        self.n_head = int(cfg["num_attention_heads"])
        self.n_head_kv = int(cfg.get("num_key_value_heads", self.n_head))
        name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(cfg["num_hidden_layers"]))
        by_name = {t.name: t for t in self.reader.tensors}
        self.tensors = {}
        for hf in hf_names:
            g = name_map.get_name(hf, try_suffixes=(".weight", ".bias"))
            if g is None or g not in by_name:
                raise SystemExit(f"error: {path} has no tensor for {hf} (GGUF name {g})")
            self.tensors[hf] = by_name.pop(g)
        if by_name:
            raise SystemExit(f"error: {path} has tensors the checkpoint lacks: {sorted(by_name)}")
        field = self.reader.get_field("general.file_type")
        self.file_type = (gguf.LlamaFileType(int(field.contents())).name.removeprefix("MOSTLY_")
                          if field is not None else "unknown")

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def type_name(self, name: str) -> str:
        return self.tensors[name].tensor_type.name

    def get_f32(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        w = np.asarray(self.gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        if name.endswith("self_attn.q_proj.weight"):
            w = unpermute(w, self.n_head)
        elif name.endswith("self_attn.k_proj.weight"):
            w = unpermute(w, self.n_head_kv)
        return w


def tensor_kind(name: str) -> str:
    """model.layers.3.mlp.down_proj.weight -> mlp.down_proj; lm_head.weight -> lm_head."""
    parts = name.removesuffix(".weight").split(".")
    return ".".join(parts[3:]) if parts[:2] == ["model", "layers"] else ".".join(parts)


def check(weights: GGUFWeights, checkpoint: E.SafeTensorsDir) -> tuple[list[dict], list[str]]:
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
        g = groups.setdefault((tensor_kind(name), type_name), {"errors": [], "ratios": []})
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
    ap.add_argument("--attention", choices=["gqa", "explicit"], default="gqa",
                    help="the export's attention graph (same logits either way)")
    ap.add_argument("--source", help="the checkpoint's export source, recorded as weights_of "
                    "(default hf-dir:HF_DIR, what export_onnx.py --hf-dir HF_DIR records)")
    args = ap.parse_args(argv)
    gguf = import_gguf(args.gguf_py)
    if not args.gguf.is_file():
        raise SystemExit(f"error: {args.gguf} not found")
    cfg = json.loads((args.hf_dir / "config.json").read_text())
    checkpoint = E.SafeTensorsDir(args.hf_dir)
    names = [n for n in checkpoint.where if not n.endswith(".rotary_emb.inv_freq")]
    weights = GGUFWeights(gguf, args.gguf, cfg, names)
    t0 = time.time()
    summary, bad = check(weights, checkpoint)
    table = markdown(summary)
    print(f"{args.gguf.name} (llama.cpp {weights.file_type}) against {args.hf_dir}:\n{table}")
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
    man["gguf"] = {"file": args.gguf.name, "file_type": weights.file_type,
                   "size_bytes": args.gguf.stat().st_size, "tensors": summary}
    (args.out / "manifest.json").write_text(json.dumps(man, indent=2))
    log(f"exported {args.out} (fp32, dequantized {weights.file_type})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
