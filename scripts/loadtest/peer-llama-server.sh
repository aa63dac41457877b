#!/usr/bin/env bash
# The load tests' peer: llama.cpp's llama-server serving the bench checkpoint as GGUF Q4_0.
#
#   scripts/loadtest/peer-llama-server.sh build         # sdist, build, GGUF, Q4_0 (cached)
#   scripts/loadtest/peer-llama-server.sh serve [PORT]  # build if needed, then serve (foreground)
#   scripts/loadtest/peer-llama-server.sh path          # print the paths the steps made
#   PEER_QUANT=Q4_K_M scripts/loadtest/peer-llama-server.sh build   # another llama-quantize type
#   PEER_GGUF=FILE.gguf scripts/loadtest/peer-llama-server.sh serve   # serve that file as it is
#
# 1. `pip download --no-deps --no-binary llama-cpp-python llama-cpp-python==$LLAMA_CPP_PYTHON`:
#    the source distribution from PyPI, which vendors llama.cpp (vendor/llama.cpp). Only this
#    package is taken as source (`--no-binary :all:` would also build pip's build
#    dependencies, cmake included, from source just to read the metadata: minutes for nothing).
# 2. `llama-server` and `llama-quantize` built from it with Debian's cmake and g++ (installed
#    with apt-get when missing), Release, -march=native (GGML_NATIVE), no OpenSSL, no web UI
#    download; `nice -n 19`, 2 jobs.
# 3. The checkpoint `onnx/tinyllama-bench/hf` (safetensors, bf16, random weights) written as
#    an F16 GGUF by scripts/trendstory_tools/loadtest/hf_to_gguf.py with the `gguf` package of
#    the sdist (vendor/llama.cpp/gguf-py) and the SentencePiece vocabulary of
#    `tokenizer.model`, then quantized to Q4_0 (or $PEER_QUANT: any type name llama-quantize takes, e.g. Q4_K_M, its
#    usual recommendation; for scripts/gguf_dequant.py's quality rows) by the built
#    `llama-quantize`. With PEER_GGUF, that file is served instead (e.g. SmolLM2's, the same
#    file scripts/fetch-smollm2.sh imports for TrendStory) and nothing is converted. The F16 file is deleted once quantized. The sdist's own converter
#    (convert_hf_to_gguf.py) imports torch at module level, and PyPI's Linux torch wheel is
#    the CUDA build (about 3 GB with its nvidia-* dependencies; the CPU-only wheels live on
#    another index, which this machine cannot reach): not practical for a converter that
#    only needs to copy tensors. hf_to_gguf.py does what that converter does for a Llama
#    checkpoint (same tensor names, the q/k row permutation, the same metadata keys).
# 4. `llama-server` on 127.0.0.1 with 32 parallel slots (-np 32, as many as TrendStory has by
#    default, so neither side queues by configuration; PEER_SLOTS), a context of 32 x 256
#    positions (a story prompt is about 100 tokens, plus 64 new ones), 2 threads, no web UI.
#
# Everything lands in .cache/llama.cpp/ (git-ignored) and is reused: a second `build` takes
# a second. Not run in CI (the build takes minutes). Needs PyPI and, when cmake or g++ is
# missing, Debian's packages and root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

LLAMA_CPP_PYTHON="${LLAMA_CPP_PYTHON:-0.3.36}"
# The converter's venv (.cache/llama.cpp/venv): the gguf package's dependencies and
# SentencePiece, pinned (numpy and PyYAML as in scripts/requirements.txt).
CONVERTER_PACKAGES=(numpy==2.4.6 sentencepiece==0.2.3 PyYAML==6.0.4 tqdm==4.70.1 requests==2.34.2)
CACHE="$ROOT/.cache/llama.cpp"
SRC="$CACHE/src/llama_cpp_python-$LLAMA_CPP_PYTHON"
LLAMA="$SRC/vendor/llama.cpp"
BUILD="$CACHE/build-$LLAMA_CPP_PYTHON-noamx"
HF="${PEER_HF_DIR:-$ROOT/onnx/tinyllama-bench/hf}"
GGUF_F16="$CACHE/tinyllama-bench-f16.gguf"
QUANT="${PEER_QUANT:-Q4_0}"
GGUF_Q="${PEER_GGUF:-$CACHE/tinyllama-bench-${QUANT,,}.gguf}"
PEER_VENV="$CACHE/venv"
SLOTS="${PEER_SLOTS:-32}"
THREADS="${PEER_THREADS:-2}"
CTX=$((SLOTS * 256))

log() { echo "peer-llama-server: $*" >&2; }

fetch_source() {
    if [[ -f "$LLAMA/CMakeLists.txt" ]]; then
        return
    fi
    source scripts/python-env.sh
    mkdir -p "$CACHE/sdist" "$CACHE/src"
    local tarball="$CACHE/sdist/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz"
    if [[ ! -f "$tarball" ]]; then
        log "downloading the llama-cpp-python $LLAMA_CPP_PYTHON sdist (PyPI)"
        "$PYTHON_ENV_PY" -m pip download --disable-pip-version-check -q --no-deps \
            --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$CACHE/sdist"
    fi
    tar -xzf "$tarball" -C "$CACHE/src"
}

ensure_toolchain() {
    if command -v cmake >/dev/null && command -v g++ >/dev/null; then
        return
    fi
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
        log "cmake and g++ are needed: run 'apt-get install cmake g++' as root"
        exit 1
    fi
    log "installing cmake and g++ (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cmake g++ make >/dev/null
}

build_binaries() {
    if [[ -x "$BUILD/bin/llama-server" && -x "$BUILD/bin/llama-quantize" ]]; then
        return
    fi
    ensure_toolchain
    local started=$SECONDS
    log "building llama-server and llama-quantize in $BUILD (nice -n 19, -j2; minutes)"
    local no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    nice -n 19 cmake -S "$LLAMA" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=OFF >"$CACHE/cmake.log"
    nice -n 19 cmake --build "$BUILD" --target llama-server llama-quantize -j 2 >"$CACHE/build.log"
    log "built in $((SECONDS - started)) s"
}

converter_python() {
    local stamp="$PEER_VENV/.packages"
    if [[ ! -x "$PEER_VENV/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "${CONVERTER_PACKAGES[*]}" ]]; then
        log "creating $PEER_VENV (${CONVERTER_PACKAGES[*]})"
        rm -rf "$PEER_VENV"
        "${PYTHON:-python3}" -m venv "$PEER_VENV"
        "$PEER_VENV/bin/python" -m pip install --disable-pip-version-check -q \
            "${CONVERTER_PACKAGES[@]}" >&2
        echo "${CONVERTER_PACKAGES[*]}" > "$stamp"
    fi
    echo "$PEER_VENV/bin/python"
}

build_model() {
    if [[ -n "${PEER_GGUF:-}" ]]; then
        [[ -f "$PEER_GGUF" ]] || { log "PEER_GGUF $PEER_GGUF is not a file"; exit 1; }
        return
    fi
    if [[ -f "$GGUF_Q" && "$GGUF_Q" -nt "$HF/model.safetensors" ]]; then
        return
    fi
    if [[ ! -f "$HF/model.safetensors" ]]; then
        log "$HF/model.safetensors is missing: build onnx/tinyllama-bench first" \
            "(scripts/export_onnx.py --random-init --preset tinyllama, as scripts/run.sh does)"
        exit 1
    fi
    if [[ ! -f "$GGUF_F16" || "$HF/model.safetensors" -nt "$GGUF_F16" ]]; then
        local py
        py="$(converter_python)"
        log "converting $HF to $GGUF_F16"
        PYTHONPATH="$LLAMA/gguf-py" "$py" scripts/trendstory_tools/loadtest/hf_to_gguf.py "$HF" "$GGUF_F16.tmp"
        mv "$GGUF_F16.tmp" "$GGUF_F16"
    fi
    log "quantizing to $QUANT: $GGUF_Q"
    nice -n 19 "$BUILD/bin/llama-quantize" "$GGUF_F16" "$GGUF_Q.tmp" "$QUANT" "$THREADS" >"$CACHE/quantize.log" 2>&1
    mv "$GGUF_Q.tmp" "$GGUF_Q"
    rm -f "$GGUF_F16"
}

build_all() {
    fetch_source
    build_binaries
    build_model
}

case "${1:-serve}" in
    build)
        build_all
        ;;
    path)
        echo "server=$BUILD/bin/llama-server"
        echo "quantize=$BUILD/bin/llama-quantize"
        echo "model=$GGUF_Q"
        echo "gguf_py=$LLAMA/gguf-py"
        ;;
    serve)
        build_all
        port="${2:-${PEER_PORT:-18090}}"
        log "serving $GGUF_Q on 127.0.0.1:$port ($SLOTS slots, context $CTX, $THREADS threads)"
        exec "$BUILD/bin/llama-server" -m "$GGUF_Q" --host 127.0.0.1 --port "$port" \
            -np "$SLOTS" -c "$CTX" -t "$THREADS" -tb "$THREADS" --no-webui \
            --alias "$(basename "$GGUF_Q" .gguf)"
        ;;
    *)
        echo "usage: $0 build | serve [PORT] | path" >&2
        exit 2
        ;;
esac
