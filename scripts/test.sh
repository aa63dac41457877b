#!/usr/bin/env bash
# Installs what the tests need and runs them: the ONNX Runtime library, the Python venv,
# the tiny test models (rebuilt only when the exporter changes), the Python exporter tests
# and `cargo test`. Idempotent and fast on a second run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

./scripts/fetch-onnxruntime.sh
source scripts/python-env.sh

# Builds a tiny test model into $1 (with the tokenizer folder $2, or the project's own
# tokenizer), again only when the exporter, its corpus or that tokenizer changed.
build_tiny() {
    local out="$1" tokenizer="${2:-}"
    local stamp="$out/.inputs.sha256" want
    local args=(--random-init --preset tiny --out "$out")
    local inputs=(scripts/export_onnx.py scripts/tokenizer_corpus.txt scripts/requirements.txt)
    if [[ -n "$tokenizer" ]]; then
        args+=(--tokenizer "$tokenizer")
        inputs+=("$tokenizer/tokenizer.json")
    fi
    want="$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)"
    if [[ -f "$out/manifest.json" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        echo "test.sh: $out is up to date"
        return
    fi
    rm -rf "$out"
    "$PYTHON_ENV_PY" scripts/export_onnx.py "${args[@]}"
    echo "$want" > "$stamp"
}

build_tiny onnx/tiny
SHARED_TOKENIZER="$ROOT/../shared/models/llama2-tokenizer"
if [[ -f "$SHARED_TOKENIZER/tokenizer.json" ]]; then
    build_tiny onnx/tiny-llama2tok "$SHARED_TOKENIZER"
else
    echo "test.sh: WARNING: $SHARED_TOKENIZER is absent; tests that need the real Llama 2 tokenizer will say SKIPPED" >&2
    rm -rf onnx/tiny-llama2tok
fi

echo "test.sh: Python exporter tests"
"$PYTHON_ENV_PY" -m pytest -q tests/python

echo "test.sh: cargo test"
cargo test --all-targets "$@"
