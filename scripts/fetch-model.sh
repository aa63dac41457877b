#!/usr/bin/env bash
# Download TinyLlama-1.1B-Chat-v1.0 from the Hugging Face hub and export it to
# onnx/tinyllama-1.1b-chat-int4/ (int4 MatMulNBits, see scripts/export_onnx.py).
#
# Needs internet. Idempotent: skips the download for files already in the cache and the
# export when onnx/tinyllama-1.1b-chat-int4/manifest.json lists complete files. Extra arguments
# go to the exporter, e.g. `./scripts/fetch-model.sh --block-size 32` (default: the exporter's
# int4 mix DEFAULT_QUANT with least-squares scales, the packed one-pass graph); an export holding another
# graph than asked for (another quantization or attention, or an older default) is redone.
# Honours HF_ENDPOINT (mirror) and HF_TOKEN.
#
# Exit codes: 0 ok, 3 hub unreachable (scripts/run.sh then falls back to the random-weight
# stand-in), anything else: a real failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

REPO_ID="TinyLlama/TinyLlama-1.1B-Chat-v1.0"
CACHE_DIR="$root/.cache/hf/TinyLlama-1.1B-Chat-v1.0"
OUT_DIR="$root/onnx/tinyllama-1.1b-chat-int4"
FILES=(config.json generation_config.json model.safetensors tokenizer.json tokenizer.model
       tokenizer_config.json special_tokens_map.json)

source "$here/python-env.sh"
PY="$PYTHON_ENV_PY"

# 1. Already exported? manifest.json is written last; check its listed files still match.
if [[ -f "$OUT_DIR/manifest.json" ]] && "$PY" - "$here" "$OUT_DIR" "$@" <<'PYEOF'
import hashlib, json, os, sys
sys.path.insert(0, sys.argv[1])
import export_onnx
d = sys.argv[2]
if not export_onnx.export_matches(d, sys.argv[3:]):
    print(f"fetch-model: {d} holds another graph than requested; re-exporting")
    sys.exit(1)
m = json.load(open(os.path.join(d, "manifest.json")))
for name, digest in m.get("files", {}).items():
    p = os.path.join(d, name)
    if not os.path.exists(p):
        sys.exit(1)
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    if h.hexdigest() != digest:
        sys.exit(1)
sys.exit(0 if m.get("source", "").startswith("hub:") else 1)
PYEOF
then
    echo "fetch-model: $OUT_DIR is complete (manifest.json); nothing to do"
    exit 0
fi

# 2. Reachability probe: never hang without internet.
endpoint="${HF_ENDPOINT:-https://huggingface.co}"
if ! timeout 10 "$PY" - "$endpoint" <<'PYEOF'
import sys, urllib.request
url = sys.argv[1].rstrip("/") + "/api/models/TinyLlama/TinyLlama-1.1B-Chat-v1.0"
try:
    urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5)
except urllib.error.HTTPError as e:
    print(f"probe: HTTP {e.code} for {url}", file=sys.stderr)
    sys.exit(0 if e.code in (401, 403) else 1)  # gated/auth: reachable; 404/5xx: not a hub
except Exception as e:
    print(f"probe: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
PYEOF
then
    cat >&2 <<MSG
fetch-model: the Hugging Face hub ($endpoint) is unreachable from this machine (no answer, or not a hub).
  The real TinyLlama weights cannot be downloaded here. For a stand-in with exactly the same
  size and run cost (random weights, same graph, same Llama 2 tokenizer), run:
      .venv/bin/python scripts/export_onnx.py --random-init --preset tinyllama
  (-> onnx/tinyllama-bench/), or ./scripts/run.sh, which falls back to it.
  With a mirror, set HF_ENDPOINT=https://your-mirror and retry.
MSG
    exit 3
fi

# 3. Download (huggingface_hub resumes and skips files already complete).
mkdir -p "$CACHE_DIR"
echo "fetch-model: downloading $REPO_ID into $CACHE_DIR"
"$PY" - "$REPO_ID" "$CACHE_DIR" "${FILES[@]}" <<'PYEOF'
import sys
from huggingface_hub import hf_hub_download
repo, dest, files = sys.argv[1], sys.argv[2], sys.argv[3:]
for f in files:
    try:
        hf_hub_download(repo_id=repo, filename=f, local_dir=dest)
        print(f"  {f}", flush=True)
    except Exception as e:
        if f in ("special_tokens_map.json",):  # optional
            print(f"  {f}: skipped ({type(e).__name__})", flush=True)
            continue
        raise
PYEOF

# 4. Export.
echo "fetch-model: exporting to $OUT_DIR"
"$PY" "$here/export_onnx.py" --hf-dir "$CACHE_DIR" --out "$OUT_DIR" \
    --source "hub:$REPO_ID" "$@"
echo "fetch-model: done: $OUT_DIR"
