"""Whether a model folder already holds the export a command line asks for, so that the
scripts which export on demand (scripts/bench.sh, scripts/fetch-model.sh, through
`export_onnx.py --check-current`) redo an export only when something changed."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from trendstory_tools.digests import sha256_file
from trendstory_tools.export_options import quantization_of_args


def graph_matches(man: dict, args: argparse.Namespace) -> bool:
    """Whether a manifest records the graph the parsed options ask for: the quantization
    (--precision, --block-size, --zero-points, --quant, --rounding, --accuracy-level; exports
    from before --quant recorded no per-kind formats) and the attention (--attention,
    --prefill-lanes; exports from before --attention had the explicit one, and the old batched
    "gqa" one, are redone). Other options are ignored."""
    quant = quantization_of_args(args)
    same_graph = man.get("linear_only", False) or (
        man.get("attention", "explicit") == args.attention
        and (args.attention != "packed" or man.get("prefill_lanes") == args.prefill_lanes))
    return man.get("quantization") == (quant.manifest() if quant else None) and same_graph


def why_not_current(out_dir: Path, args: argparse.Namespace, source: str) -> str | None:
    """None when out_dir holds the export of the parsed options from `source` (manifest.json's
    graph, quantization and source, every file it lists with its recorded sha256); otherwise
    what differs."""
    try:
        man = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return f"{out_dir} holds no complete export (no readable manifest.json)"
    if not graph_matches(man, args):
        return f"{out_dir} holds another graph than requested"
    if man.get("source") != source:
        return f"{out_dir} was exported from {man.get('source')}, not {source}"
    for name, digest in man.get("files", {}).items():
        path = out_dir / name
        if not path.exists() or sha256_file(path) != digest:
            return f"{path} is missing or not the file manifest.json lists"
    return None
