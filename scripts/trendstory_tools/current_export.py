"""Whether a model folder already holds the export a command line asks for, so that the
scripts which export on demand (scripts/bench.sh, scripts/fetch-model.sh) redo an export only
when something changed."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from trendstory_tools.export_options import parse_args, quantization_of_args


def export_matches(out_dir: Path, exporter_args: list[str]) -> bool:
    """Whether out_dir/manifest.json records the graph these exporter arguments ask for: the
    quantization (--precision, --block-size, --zero-points, --quant, --rounding,
    --accuracy-level; exports from before --quant recorded no per-kind formats) and the
    attention (--attention, --prefill-lanes; exports from before --attention had the explicit
    one, and the old batched "gqa" one, are redone). Other arguments are ignored: a different
    request, or an older export than the defaults ask for, means re-exporting."""
    try:
        man = json.loads((Path(out_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return graph_matches(man, parse_args(["--hf-dir", "-", "--out", "-", *exporter_args]))


def graph_matches(man: dict, args: argparse.Namespace) -> bool:
    """Whether a manifest records the graph and quantization of the parsed options."""
    quant = quantization_of_args(args)
    same_graph = man.get("linear_only", False) or (
        man.get("attention", "explicit") == args.attention
        and (args.attention != "packed" or man.get("prefill_lanes") == args.prefill_lanes))
    return man.get("quantization") == (quant.manifest() if quant else None) and same_graph

