"""A GGUF imported as a folder: a TrendStory model folder (the export of the file's weights,
its own blocks kept where they can be) or a Hugging Face one, written beside its final place
and renamed into it only when complete."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from trendstory_tools.digests import sha256_file
from trendstory_tools.export import export
from trendstory_tools.gguf_import.config import generation_config, hf_config
from trendstory_tools.gguf_import.gguf_file import GGUFFile
from trendstory_tools.gguf_import.tokenizer import build_tokenizer
from trendstory_tools.gguf_import.weights import GGUFWeights
from trendstory_tools.int4.formats import MATRIX_KINDS
from trendstory_tools.llama_checkpoint import tensor_specs
from trendstory_tools.safetensors_io import write_safetensors


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_metadata(f: GGUFFile, folder: Path, sampling: dict) -> dict:
    """config.json, generation_config.json, tokenizer.json and tokenizer_config.json; returns
    the config."""
    cfg = hf_config(f)
    tokenizer, tokenizer_config = build_tokenizer(f, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", cfg)
    write_json(folder / "generation_config.json", generation_config(f, cfg, sampling))
    (folder / "tokenizer.json").write_text(tokenizer, encoding="utf-8")
    write_json(folder / "tokenizer_config.json", tokenizer_config)
    return cfg


def write_hf_folder(f: GGUFFile, folder: Path, sampling: dict) -> None:
    """A Hugging Face folder of the model: the metadata files and model.safetensors (bf16,
    as Hugging Face publishes Llama checkpoints), for a stand-in of the hub."""
    cfg = write_metadata(f, folder, sampling)
    cfg["torch_dtype"] = "bfloat16"
    write_json(folder / "config.json", cfg)
    weights = GGUFWeights(f, cfg)
    write_safetensors(folder / "model.safetensors", tensor_specs(cfg),
                      lambda name, _shape: weights.get_f32(name), dtype="BF16")


def import_gguf(f: GGUFFile, folder: Path, sampling: dict, export_args,
                requantize: tuple = ()) -> dict:
    """The TrendStory model folder (export_args: export_onnx's parsed options); the matrix
    kinds in `requantize` are quantized with our formats, the others keep the file's blocks
    where they can."""
    cfg = write_metadata(f, folder, sampling)
    weights = GGUFWeights(f, cfg)
    a = export_args
    golden = None if (a.no_golden or a.linear_only) else (a.golden_tokens or 8)
    man = export(folder, folder, source=f"gguf:{f.path.name}", random_weights=False,
                 precision=a.precision, block_size=a.block_size,
                 accuracy_level=a.accuracy_level, golden_tokens=golden,
                 linear_only=a.linear_only, threads=a.threads, zero_points=a.zero_points,
                 attention=a.attention, prefill_lanes=a.prefill_lanes, quant=a.quant,
                 rounding=a.rounding, weights=weights,
                 keep_native=tuple(k for k in MATRIX_KINDS if k not in requantize),
                 name=a.out.name)
    man["gguf"] = {
        "file": f.path.name, "sha256": sha256_file(f.path), "size_bytes": f.path.stat().st_size,
        "file_type": f.file_type,
        "tensor_types": {k: sorted({weights.type_name(n) for n in weights.tensors
                                    if kind_of_tensor(n) == k})
                         for k in sorted({kind_of_tensor(n) for n in weights.tensors})},
        "requantized": list(requantize),
    }
    write_json(folder / "manifest.json", man)
    return man


def kind_of_tensor(name: str) -> str:
    """model.layers.3.mlp.down_proj.weight -> mlp.down_proj; lm_head.weight -> lm_head."""
    parts = name.removesuffix(".weight").split(".")
    return ".".join(parts[3:]) if parts[:2] == ["model", "layers"] else ".".join(parts)


def replace_folder(out: Path, write) -> None:
    """Runs write(tmp) on a fresh folder beside `out`, then puts it in out's place; on any
    failure the fresh folder goes and `out` stays as it was."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
