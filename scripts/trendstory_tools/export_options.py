"""The exporter's command line: its options, parsed the same way for scripts/export_onnx.py,
for the GGUF import (which passes them on to the export) and for the check whether a folder
already holds the export a command line asks for (current_export.py)."""
from __future__ import annotations

import argparse
from pathlib import Path

from trendstory_tools.graph.decoder import ATTENTIONS
from trendstory_tools.graph.packed_contract import DEFAULT_PREFILL_LANES
from trendstory_tools.int4.formats import (
    BLOCK_SIZES, DEFAULT_QUANT, DEFAULT_ROUNDING, MATRIX_KINDS, ROUNDINGS, Quantization,
    parse_quant_spec, quantization)

HELP = """\
Export a Hugging Face Llama checkpoint to the ONNX graph the TrendStory engine runs.

No torch: weights are read from safetensors with our own parser (numpy has no bfloat16),
the graph is built with onnx.helper, linear layers are quantized to int4 for ONNX Runtime's
`com.microsoft.MatMulNBits` (a block size and symmetric or asymmetric, with a 4-bit zero point
per block, for each matrix kind; least-squares rounding by default), and golden greedy outputs
are computed with onnxruntime.

Modes (see the options below):
  --hf-dir DIR --out onnx/NAME          export an existing HF Llama folder
  --random-init --preset tinyllama      TinyLlama-1.1B shape, random weights (same run cost)
  --random-init --preset tiny           2-layer model + self-trained 1k BPE tokenizer, for tests
  --linear-only                         only the int4 matmuls (a benchmark baseline)
  --block-size 32|64|128 --zero-points  one int4 format for every matrix kind (zero points:
                                        asymmetric int4); default: the per-kind DEFAULT_QUANT
  --quant KIND=BLOCK[:zp],...           the format of some kinds (qkv, o, gate_up, down, lm_head)
  --rounding absmax|search              scale rule (search: least squared error, the default)
  --attention packed|explicit|slots     one-pass packed graph (default), the optimum contract,
                                        or the engine's one-pass slot graph
  --check-current                       export nothing: exit 0 when the output folder already
                                        holds what this command line would write, 1 otherwise

Output folder: model.onnx + model.onnx.data, tokenizer.json (+tokenizer_config.json),
config.json, golden.json (not for slots graphs) and manifest.json (written last: marks a
complete export).

The code is the package scripts/trendstory_tools/ (its __init__.py maps it); the graph
contracts are documented in scripts/trendstory_tools/graph/: explicit_contract.py (the optimum
decoder-with-past contract), packed_contract.py (PACKED_CONTRACT) and slots_contract.py
(SLOTS_CONTRACT).
"""


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf-dir", type=Path, help="existing Hugging Face Llama folder to export")
    src.add_argument("--random-init", action="store_true", help="random weights (needs --preset)")
    ap.add_argument("--preset", choices=["tiny", "tinyllama"], help="model shape for --random-init")
    ap.add_argument("--out", type=Path, help="output folder (default onnx/tiny, onnx/tinyllama-bench)")
    ap.add_argument("--source", help="manifest 'source' override (e.g. hub:TinyLlama/...)")
    ap.add_argument("--tokenizer", type=Path, help="tokenizer folder for --random-init (tokenizer.json)")
    ap.add_argument("--dtype", choices=["bf16", "f32"], help="safetensors dtype for --random-init "
                    "(default: bf16 for tinyllama, f32 for tiny)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=["int4", "fp32"], default="int4")
    ap.add_argument("--block-size", type=int, choices=BLOCK_SIZES,
                    help="int4 block size of every matrix kind (default: the per-kind mix "
                    f"{DEFAULT_QUANT})")
    ap.add_argument("--accuracy-level", type=int, choices=[0, 1, 2, 3, 4], default=4)
    ap.add_argument("--attention", choices=ATTENTIONS, default=ATTENTIONS[0],
                    help="packed: every row's tokens in one pass, fused GroupQueryAttention over "
                         "a slot KV cache (PACKED_CONTRACT); explicit: the optimum "
                         "decoder-with-past contract (attention_mask, left padding); slots: the "
                         "packed pass with the engine's own SlotAttention, for TrendStory's "
                         "engine only (SLOTS_CONTRACT)")
    ap.add_argument("--prefill-lanes", type=int, default=DEFAULT_PREFILL_LANES,
                    help="packed graphs: prompts that can advance in one pass beside the "
                         f"decoding rows (default {DEFAULT_PREFILL_LANES})")
    ap.add_argument("--zero-points", action="store_true",
                    help="asymmetric int4: per-block min/max scale and a 4-bit zero point "
                    "(MatMulNBits input zero_points; manifest quantization.kinds.*.symmetric "
                    "false) for every matrix kind, at --block-size (default 32). Default: "
                    "the per-kind mix")
    ap.add_argument("--quant", metavar="KIND=BLOCK[:zp],...",
                    help=f"int4 format per matrix kind ({', '.join(MATRIX_KINDS)}): block size "
                    f"({'|'.join(map(str, BLOCK_SIZES))}) and ':zp' for zero points, over the "
                    f"default mix {DEFAULT_QUANT} (or over --block-size/--zero-points when "
                    "given), e.g. --quant gate_up=128:zp,down=128:zp")
    ap.add_argument("--rounding", choices=ROUNDINGS, default=DEFAULT_ROUNDING,
                    help="absmax: scale from each block's largest magnitude (min/max with zero "
                    "points); search: the scale (and zero point) of least squared error per "
                    "block (default %(default)s)")
    ap.add_argument("--golden-tokens", type=int, help="greedy tokens per golden prompt "
                    "(default 16 for tiny, 8 otherwise)")
    ap.add_argument("--no-golden", action="store_true")
    ap.add_argument("--linear-only", action="store_true",
                    help="write only the int4 linear layers (benchmark baseline), to NAME-linear")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads for golden runs")
    ap.add_argument("--check-current", action="store_true",
                    help="export nothing: exit 0 when the output folder's manifest.json records "
                    "this export (the same graph, quantization and source, every listed file "
                    "unchanged), else 1 with the reason (for the scripts that skip an export "
                    "already done)")
    args = ap.parse_args(argv)
    if args.random_init and not args.preset:
        ap.error("--random-init needs --preset tiny|tinyllama")
    if args.hf_dir and not args.out:
        ap.error("--hf-dir needs --out")
    if args.linear_only and args.precision != "int4":
        ap.error("--linear-only is int4 only")
    if args.zero_points and args.precision != "int4":
        ap.error("--zero-points is int4 only")
    if not 1 <= args.prefill_lanes <= 64:
        ap.error("--prefill-lanes must be between 1 and 64")
    if args.quant:
        if args.precision != "int4":
            ap.error("--quant is int4 only")
        try:
            parse_quant_spec(args.quant)
        except ValueError as e:
            ap.error(f"--quant: {e}")
    return args


def quantization_of_args(args) -> Quantization | None:
    """The Quantization parsed options ask for (None for fp32)."""
    return quantization(args.precision, args.block_size, args.zero_points, args.quant,
                        args.accuracy_level, args.rounding)
