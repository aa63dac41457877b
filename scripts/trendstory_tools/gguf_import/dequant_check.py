"""A GGUF's weights dequantized and held to the checkpoint they were made from: each tensor's
relative error must be what its block format predicts (a wrong name mapping, a missed row
un-permutation or another checkpoint is 10x or more off), for the int4 quality table's
llama.cpp rows (cli/gguf_dequant.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trendstory_tools.gguf_import.folder import kind_of_tensor
from trendstory_tools.gguf_import.gguf_file import GGUFError, GGUFFile
from trendstory_tools.gguf_import.weights import GGUFWeights
from trendstory_tools.safetensors_io import SafeTensorsDir, round_to_bf16

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


def predicted_rel_error(w: np.ndarray, type_name: str) -> float:
    """Relative error ||Q(w) - w|| / ||w|| the GGUF type predicts for w: per block, a uniform
    rounding error over one step (step^2 / 12 per element); float types: the cast's own error."""
    if type_name in ("F32", "F16", "BF16"):
        cast = {"F32": w, "F16": w.astype(np.float16).astype(np.float32),
                "BF16": round_to_bf16(w)}[type_name]
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


def load_weights(path: Path, cfg: dict, names: list[str]) -> GGUFWeights:
    """The GGUF's tensors under the checkpoint's names (the file must hold exactly those)."""
    try:
        weights = GGUFWeights(GGUFFile(path), cfg)
    except GGUFError as e:
        raise SystemExit(f"error: {e}")
    if set(weights.tensors) != set(names):
        raise SystemExit(f"error: {path} and the checkpoint differ in tensors: "
                         f"{sorted(set(weights.tensors) ^ set(names))}")
    return weights


def check(weights: GGUFWeights, checkpoint: SafeTensorsDir) -> tuple[list[dict], list[str]]:
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
        g = groups.setdefault((kind_of_tensor(name), type_name), {"errors": [], "ratios": []})
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
