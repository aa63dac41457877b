"""`scripts/export_onnx.py`: the options (export_options.py) to an export (export.py), with the
--random-init checkpoint written first (random_init.py), or to the --check-current answer
(current_export.py)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from trendstory_tools.current_export import why_not_current
from trendstory_tools.export import export
from trendstory_tools.export_options import parse_args
from trendstory_tools.log import log
from trendstory_tools.paths import REPO_ROOT
from trendstory_tools.random_init import RANDOM_WEIGHTS_MARKER, write_random_hf


def main(argv=None) -> int:
    args = parse_args(argv)
    out, source = output_folder(args), export_source(args)
    if args.check_current:
        problem = why_not_current(out, args, source)
        log(problem or f"{out} holds this export")
        return 0 if problem is None else 1
    t0 = time.time()
    if args.random_init:
        hf_dir = random_checkpoint(args, out)
        random_weights = True
        golden_default = 16 if args.preset == "tiny" else 8
    else:
        hf_dir = args.hf_dir
        random_weights = (hf_dir / RANDOM_WEIGHTS_MARKER).exists()
        golden_default = 8
    golden = None if (args.no_golden or args.linear_only) else (args.golden_tokens or golden_default)
    export(hf_dir, out, source=source, random_weights=random_weights, precision=args.precision,
           block_size=args.block_size, accuracy_level=args.accuracy_level, golden_tokens=golden,
           linear_only=args.linear_only, threads=args.threads, zero_points=args.zero_points,
           attention=args.attention, prefill_lanes=args.prefill_lanes, quant=args.quant,
           rounding=args.rounding)
    log(f"done in {time.time() - t0:.1f}s")
    return 0


def preset_folder_name(args: argparse.Namespace) -> str:
    """onnx/<this> is a --random-init export's default folder."""
    name = {"tiny": "tiny", "tinyllama": "tinyllama-bench"}[args.preset]
    return name + "-linear" if args.linear_only else name


def output_folder(args: argparse.Namespace) -> Path:
    if args.random_init:
        return args.out or (REPO_ROOT / "onnx" / preset_folder_name(args))
    return args.out


def export_source(args: argparse.Namespace) -> str:
    """What manifest.json's "source" records."""
    if args.random_init:
        return args.source or f"random-init:{args.preset}"
    return args.source or f"hf-dir:{args.hf_dir}"


def random_checkpoint(args: argparse.Namespace, out: Path) -> Path:
    """The --random-init checkpoint folder: written into out/hf, except that --linear-only
    reuses the full export's random checkpoint when it is already there."""
    dtype = args.dtype or ("bf16" if args.preset == "tinyllama" else "f32")
    base_hf = REPO_ROOT / "onnx" / preset_folder_name(args).removesuffix("-linear") / "hf"
    if args.linear_only and args.out is None and (base_hf / "model.safetensors").exists() \
            and args.tokenizer is None and args.seed == 0 and hf_matches(base_hf, dtype):
        log(f"reusing random checkpoint {base_hf}")
        return base_hf
    write_random_hf(args.preset, out / "hf", dtype, args.seed, args.tokenizer)
    return out / "hf"


def hf_matches(hf_dir: Path, dtype: str) -> bool:
    """Whether the checkpoint in hf_dir was written with this dtype."""
    try:
        cfg = json.loads((hf_dir / "config.json").read_text())
        return cfg.get("torch_dtype") == ("bfloat16" if dtype == "bf16" else "float32")
    except (OSError, ValueError):
        return False
