"""The export driver: a Hugging Face Llama folder (or weights from elsewhere, e.g. a GGUF) to a
TrendStory model folder: the graph, the tokenizer and config files, golden.json, and
manifest.json written last, which marks the folder complete and records what it holds."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

from trendstory_tools.digests import sha256_file
from trendstory_tools.golden import write_golden
from trendstory_tools.graph.builder import OPSET
from trendstory_tools.graph.decoder import ATTENTIONS, EXPORTER_VERSION, build_decoder
from trendstory_tools.graph.linear_only import build_linear_only
from trendstory_tools.graph.packed_contract import DEFAULT_PREFILL_LANES
from trendstory_tools.int4.formats import (
    DEFAULT_ROUNDING, MATRIX_KINDS, Quantization, quantization)
from trendstory_tools.llama_checkpoint import model_dims
from trendstory_tools.log import log
from trendstory_tools.safetensors_io import SafeTensorsDir


def quantization_manifest(q: Quantization | None, encodings: dict) -> dict | None:
    """manifest.json's "quantization": the requested formats and, where native blocks could be
    kept, what each kind's nodes really got (Linear.encodings: node counts)."""
    if q is None:
        return None
    out = q.manifest()
    if q.keep_native:
        out["nodes"] = encodings
    return out


def export(hf_dir: Path, out_dir: Path, *, source: str, random_weights: bool, precision: str,
           block_size: int | None, accuracy_level: int, golden_tokens: int | None,
           linear_only: bool = False, threads: int = 1, zero_points: bool = False,
           attention: str = "packed", prefill_lanes: int = DEFAULT_PREFILL_LANES,
           quant: str | None = None,
           rounding: str = DEFAULT_ROUNDING, weights=None, keep_native=(),
           name: str | None = None) -> dict:
    """Export hf_dir to out_dir. The quantization arguments mean what the command line's
    options do (see quantization(): block_size None and no zero points start from
    DEFAULT_QUANT). weights: where the tensors come from instead of hf_dir's safetensors
    (anything with get_f32(name) and `name in weights`, e.g. gguf/weights.py's GGUFWeights);
    keep_native: the matrix kinds for which an int4 export keeps the blocks such weights
    already have where it can (Linear). name: the manifest's model name (default: out_dir's)."""
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    cfg_path = hf_dir / "config.json"
    if not cfg_path.exists():
        raise SystemExit(f"error: {cfg_path} not found")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model_type", "llama") != "llama":
        raise SystemExit(f"error: model_type {cfg.get('model_type')!r} is not llama")
    if attention not in ATTENTIONS:
        raise SystemExit(f"error: attention {attention!r} is none of {', '.join(ATTENTIONS)}")
    dm = model_dims(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    if manifest_path.exists():
        manifest_path.unlink()  # incomplete until rewritten at the end
    for stale in ("golden.json", "model.onnx", "model.onnx.data"):
        if (out_dir / stale).exists():
            (out_dir / stale).unlink()
    if (zero_points or quant) and precision != "int4":
        raise SystemExit("error: zero points and --quant are for int4 exports only")
    try:
        q = quantization(precision, block_size, zero_points, quant, accuracy_level, rounding)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    if q is not None and keep_native:
        q = replace(q, keep_native=tuple(k for k in MATRIX_KINDS if k in keep_native))
    name = name or out_dir.name
    weights = weights if weights is not None else SafeTensorsDir(hf_dir)
    t0 = time.time()
    if linear_only:
        encodings = build_linear_only(cfg, weights, out_dir, q)
        manifest = {"name": name, "source": source, "random_weights": random_weights,
                    "linear_only": True, "precision": "int4",
                    "quantization": quantization_manifest(q, encodings),
                    "inputs": {"x": ["batch_size", "sequence_length", dm["hidden"]]},
                    "outputs": {"logits": ["batch_size", "sequence_length", dm["vocab"]]},
                    **dims_manifest(dm),
                    "files": {f: sha256_file(out_dir / f) for f in ("model.onnx", "model.onnx.data")},
                    "exporter_version": EXPORTER_VERSION}
        manifest_path.write_text(json.dumps(manifest, indent=2))
        log(f"linear-only graph written to {out_dir} in {time.time() - t0:.1f}s")
        return manifest

    encodings = build_decoder(cfg, weights, out_dir, q, attention, prefill_lanes)
    log(f"graph written to {out_dir}/model.onnx in {time.time() - t0:.1f}s")
    if not (hf_dir / "tokenizer.json").exists():
        raise SystemExit(f"error: {hf_dir}/tokenizer.json not found")
    if hf_dir.resolve() != out_dir.resolve():
        for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json",
                  "special_tokens_map.json"):
            if (hf_dir / f).exists():
                shutil.copyfile(hf_dir / f, out_dir / f)
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    if golden_tokens and attention == "slots":
        log("golden.json skipped: ONNX Runtime here cannot run the engine's SlotAttention (the "
            "engine's tests hold a slots graph to the packed graph of the same weights)")
    elif golden_tokens:
        t1 = time.time()
        golden = write_golden(out_dir, cfg, golden_tokens, threads)
        log(f"golden.json written in {time.time() - t1:.1f}s (min top-2 margin "
            f"{golden['min_top2_margin']:.4f}, {golden['min_top2_margin_over_logit_std']:.4f} std)")
    files = ["model.onnx", "model.onnx.data", "tokenizer.json", "config.json"]
    for extra in ("tokenizer_config.json", "golden.json"):
        if (out_dir / extra).exists():
            files.append(extra)
    manifest = {
        "name": name,
        "source": source,
        "random_weights": random_weights,
        "precision": precision,
        "attention": attention,
        **({"prefill_lanes": prefill_lanes} if attention == "packed" else {}),
        "quantization": quantization_manifest(q, encodings),
        **dims_manifest(dm),
        "max_position_embeddings": dm["max_pos"],
        "rms_norm_eps": dm["eps"],
        "rope_theta": float(cfg.get("rope_theta", 10000.0)),
        "bos_token_id": int(cfg.get("bos_token_id", 1)),
        "eos_token_id": int(cfg.get("eos_token_id", 2)),
        "opset": OPSET,
        "files": {f: sha256_file(out_dir / f) for f in files},
        "exporter_version": EXPORTER_VERSION,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2))
    log(f"export complete: {out_dir} ({time.time() - t0:.1f}s)")
    return manifest


def dims_manifest(dm: dict) -> dict:
    """The model's dimensions as manifest.json records them (every export's)."""
    return {"num_hidden_layers": dm["layers"], "hidden_size": dm["hidden"],
            "intermediate_size": dm["inter"], "num_attention_heads": dm["heads"],
            "num_key_value_heads": dm["kv_heads"], "head_dim": dm["head_dim"],
            "vocab_size": dm["vocab"]}
