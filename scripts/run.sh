#!/usr/bin/env bash
# Sets up everything on a fresh machine and starts TrendStory:
#   1. the pinned ONNX Runtime library (scripts/fetch-onnxruntime.sh),
#   2. the Python venv for the model tools (scripts/python-env.sh),
#   3. a model: the real TinyLlama-1.1B-Chat int4 export when the Hugging Face hub is
#      reachable (scripts/fetch-model.sh), otherwise a random-weights stand-in of the same
#      size and cost (its stories are noise; a loud warning says so),
#   4. a release build, then `trendstory serve` (extra arguments are passed to it).
# Idempotent: a second run reuses the library, the venv, the model and the build.
# TRENDSTORY_MODEL__DIR=... skips step 3 and serves that folder.
# TRENDSTORY_EXPORT_ARGS="--block-size 32" (for example; see `scripts/export_onnx.py --help`:
# --block-size, --zero-points, --quant KIND=BLOCK[:zp],..., --rounding) passes exporter options
# to step 3 (either model); a model folder exported with another quantization is then redone.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

./scripts/fetch-onnxruntime.sh
source scripts/python-env.sh

# Whether folder $1's manifest.json records the graph EXPORT_ARGS (or the defaults) ask for.
export_matches() {
    "$PYTHON_ENV_PY" -c 'import sys; sys.path.insert(0, "scripts"); import export_onnx as E
sys.exit(0 if E.export_matches(sys.argv[1], sys.argv[2:]) else 1)' "$1" "${EXPORT_ARGS[@]}"
}

if [[ -z "${TRENDSTORY_MODEL__DIR:-}" ]]; then
    read -r -a EXPORT_ARGS <<< "${TRENDSTORY_EXPORT_ARGS:-}"
    set +e
    ./scripts/fetch-model.sh "${EXPORT_ARGS[@]}"
    rc=$?
    set -e
    if [[ $rc -eq 0 ]]; then
        export TRENDSTORY_MODEL__DIR="onnx/tinyllama-1.1b-chat-int4"
    elif [[ $rc -eq 3 ]]; then
        cat >&2 <<'MSG'
################################################################################
# WARNING: the Hugging Face hub is unreachable, so the real TinyLlama weights
# cannot be downloaded. Serving onnx/tinyllama-bench instead: the same model
# shape, size and speed with RANDOM weights. Every story it writes is noise.
################################################################################
MSG
        if ! export_matches onnx/tinyllama-bench; then
            "$PYTHON_ENV_PY" scripts/export_onnx.py --random-init --preset tinyllama "${EXPORT_ARGS[@]}"
        fi
        export TRENDSTORY_MODEL__DIR="onnx/tinyllama-bench"
    else
        echo "run.sh: scripts/fetch-model.sh failed (exit $rc)" >&2
        exit "$rc"
    fi
fi

cargo build --release
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/libonnxruntime.so.1.32.0}"
exec ./target/release/trendstory serve "$@"
