"""A llama.cpp GGUF as a row of the int4 quality table: its weights dequantized back to fp32 and
exported by export_onnx.py like any variant (--precision fp32), so scripts/quant_quality.py
compares the peer's quantization with ours position by position.

  GGUF_PY=$(scripts/loadtest/peer-llama-server.sh path | sed -n 's/^gguf_py=//p')
  .venv/bin/python scripts/gguf_dequant.py .cache/llama.cpp/tinyllama-bench-q4_0.gguf \\
      --hf-dir onnx/tinyllama-bench/hf --out onnx/q-gguf-q4_0 --gguf-py "$GGUF_PY"

1. Every tensor of the GGUF is read and dequantized with the `gguf` package of the llama.cpp
   the peer is built from (--gguf-py, the `gguf_py` path of peer-llama-server.sh), and named
   back to its Hugging Face tensor with gguf's own name map (as loadtest/hf_to_gguf.py of
   scripts/trendstory_tools names them the other way); the rotary row permutation the
   converter applies to q and k is undone.
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

from trendstory_tools.export import export
from trendstory_tools.gguf_import.dequant_check import CHECK_BAND, check, load_weights, markdown
from trendstory_tools.log import log
from trendstory_tools.random_init import RANDOM_WEIGHTS_MARKER
from trendstory_tools.safetensors_io import SafeTensorsDir


def load_gguf_package(gguf_py: Path | None):
    """The gguf package: by default the installed one (requirements-export.txt pins the
    version the peer's llama-cpp-python vendors); with --gguf-py, the peer's own vendored copy
    (a third-party package at a path the user names, hence the sys.path entry), so the check
    dequantizes exactly as the llama.cpp the peer is built from."""
    if gguf_py is not None:
        sys.path.insert(0, str(gguf_py))
    try:
        import gguf
        from gguf import quants  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"error: the gguf package is not importable ({e}): pass --gguf-py "
                         "(scripts/loadtest/peer-llama-server.sh path prints gguf_py=...)")
    return gguf


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
    load_gguf_package(args.gguf_py)
    cfg = json.loads((args.hf_dir / "config.json").read_text())
    checkpoint = SafeTensorsDir(args.hf_dir)
    names = [n for n in checkpoint.where if not n.endswith(".rotary_emb.inv_freq")]
    weights = load_weights(args.gguf, cfg, names)
    t0 = time.time()
    summary, bad = check(weights, checkpoint)
    table = markdown(summary)
    print(f"{args.gguf.name} (llama.cpp {weights.f.file_type}) against {args.hf_dir}:\n{table}")
    log(f"checked {len(weights.tensors)} tensors in {time.time() - t0:.1f}s", "gguf_dequant")
    if bad:
        raise SystemExit("error: relative error outside "
                         f"{CHECK_BAND[0]}-{CHECK_BAND[1]}x its format's prediction:\n  "
                         + "\n  ".join(bad))
    if args.out is None:
        return 0
    source = args.source or f"hf-dir:{args.hf_dir}"
    man = export(args.hf_dir, args.out, source=f"gguf:{args.gguf.name}",
                 random_weights=(args.hf_dir / RANDOM_WEIGHTS_MARKER).exists(),
                 precision="fp32", block_size=None, accuracy_level=4, golden_tokens=None,
                 attention=args.attention, weights=weights)
    man["weights_of"] = source
    man["gguf"] = {"file": args.gguf.name, "file_type": weights.f.file_type,
                   "size_bytes": args.gguf.stat().st_size, "tensors": summary}
    (args.out / "manifest.json").write_text(json.dumps(man, indent=2))
    log(f"exported {args.out} (fp32, dequantized {weights.f.file_type})", "gguf_dequant")
    return 0
