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
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

./scripts/fetch-onnxruntime.sh
source scripts/python-env.sh

if [[ -z "${TRENDSTORY_MODEL__DIR:-}" ]]; then
    set +e
    ./scripts/fetch-model.sh
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
        if [[ ! -f onnx/tinyllama-bench/manifest.json ]]; then
            "$PYTHON_ENV_PY" scripts/export_onnx.py --random-init --preset tinyllama
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
