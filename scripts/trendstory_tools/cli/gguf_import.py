"""A llama.cpp GGUF of the Llama architecture as a TrendStory model folder (or as a Hugging
Face folder). Run through scripts/import-gguf.sh:

  scripts/import-gguf.sh FILE.gguf --out onnx/NAME [exporter options, e.g. --precision fp32]
  scripts/import-gguf.sh FILE.gguf --hf-out DIR     # config, tokenizer, bf16 safetensors

From the file alone (no Hugging Face download):
- config.json and generation_config.json from its metadata (llama.* keys, the special token
  ids; general.sampling.* and --sampling as sampling defaults);
- tokenizer.json built from tokenizer.ggml.{model,tokens,token_type,merges,pre} so that it
  tokenizes as llama.cpp does for the same file (PRE_TOKENIZERS: the pre-tokenizers whose
  llama.cpp rules we reproduce; BOS only where tokenizer.ggml.add_bos_token says so), and
  tokenizer_config.json with the chat template and special tokens;
- the weights: an int4 export keeps the file's own blocks where MatMulNBits can hold them
  (GGUFWeights.native: Q4_0 at 4 bits, Q8_0 and Q4_0 at 8 bits exactly; Q4_1 at 8 bits within
  a small offset, because ONNX Runtime 1.32 runs float zero points on a slow path) and
  quantizes the rest with the exporter's own formats; the manifest's quantization.nodes says
  which node got what. --requantize [KIND,...] quantizes those kinds (all by default, and
  all when any of --block-size, --zero-points, --quant is given) with our formats from the
  dequantized weights; --precision fp32 dequantizes.
Anything else (another architecture, a truncated or corrupt file, a tokenizer we cannot
build) is an error naming the file and the field. The folder is written beside its final
place and renamed into it only when complete: nothing half-written is left behind.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trendstory_tools.export_options import parse_args
from trendstory_tools.gguf_import.config import parse_sampling
from trendstory_tools.gguf_import.folder import import_gguf, replace_folder, write_hf_folder
from trendstory_tools.gguf_import.gguf_file import GGUFError, GGUFFile
from trendstory_tools.int4.formats import MATRIX_KINDS
from trendstory_tools.log import log

# Exporter options that make no sense for a file that brings its own weights and tokenizer.
NOT_FOR_GGUF = ("--hf-dir", "--random-init", "--preset", "--tokenizer", "--dtype", "--seed",
                "--source", "--out")
# Options that ask for our own int4 formats (so nothing of the file's blocks is kept).
REQUANTIZING = ("--block-size", "--zero-points", "--quant", "--rounding")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Other options go to scripts/export_onnx.py (see its --help): --precision, "
        "--block-size, --zero-points, --quant, --rounding, --accuracy-level, --attention, "
        "--prefill-lanes, --golden-tokens, --no-golden, --linear-only, --threads.")
    ap.add_argument("gguf", type=Path, help="a llama.cpp GGUF file of the Llama architecture")
    out = ap.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", type=Path, help="the TrendStory model folder to write")
    out.add_argument("--hf-out", type=Path, help="write a Hugging Face folder instead (config, "
                     "tokenizer, bf16 model.safetensors)")
    ap.add_argument("--requantize", nargs="?", const=",".join(MATRIX_KINDS), default="",
                    metavar="KIND,...",
                    help="quantize these matrix kinds (default: all of "
                    f"{','.join(MATRIX_KINDS)}) with our int4 formats (export_onnx.py's "
                    "defaults or options) instead of keeping the file's own blocks; any of "
                    "--block-size, --zero-points, --quant, --rounding alone means all")
    ap.add_argument("--sampling", default="", metavar="NAME=VALUE,...",
                    help="sampling defaults for generation_config.json (temperature, top_p, "
                    "top_k, repetition_penalty), over the file's general.sampling.*")
    args, rest = ap.parse_known_args(argv)
    for option in rest:
        if option.split("=")[0] in NOT_FOR_GGUF:
            ap.error(f"{option}: not an option for a GGUF import (the file brings the weights "
                     "and the tokenizer)")
    try:
        sampling = parse_sampling(args.sampling)
    except ValueError as e:
        ap.error(f"--sampling: {e}")
    target = args.out or args.hf_out
    export_args = parse_args(["--hf-dir", str(args.gguf), "--out", str(target), *rest])
    requantize = tuple(filter(None, args.requantize.split(",")))
    if bad := [k for k in requantize if k not in MATRIX_KINDS]:
        ap.error(f"--requantize: {', '.join(bad)}: the kinds are {', '.join(MATRIX_KINDS)}")
    if not requantize and any(o.split("=")[0] in REQUANTIZING for o in rest):
        requantize = MATRIX_KINDS
    try:
        f = GGUFFile(args.gguf)
        if args.hf_out:
            replace_folder(args.hf_out, lambda d: write_hf_folder(f, d, sampling))
        else:
            replace_folder(args.out, lambda d: import_gguf(f, d, sampling, export_args, requantize))
    except GGUFError as e:
        print(f"import-gguf: error: {e}", file=sys.stderr)
        return 1
    log(f"imported {args.gguf} into {target}")
    return 0
