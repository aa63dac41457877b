#!/usr/bin/env bash
# The load-test report (issue 9) from one command: Locust against the release server on the
# bench model, on 127.0.0.1 only, every run bounded in time.
#
#   scripts/bench.sh --quick               # about 6 minutes (9 with --with-peer): 1 and 5 users
#   scripts/bench.sh                       # the full report (about 63 minutes at the defaults)
#   scripts/bench.sh --with-peer ...       # also llama.cpp's llama-server (about 90 minutes)
#   scripts/bench.sh --with-peer --level-duration 90 --steady-duration 240 \
#       --endurance-duration 300 --nobatch-levels 1,20 --peer-levels 1,20   # about 57 minutes
#   scripts/bench.sh --smoke [--binary P]  # seconds: tiny model, 1 user, 5 requests per run (CI)
#
# Durations and levels (full-run defaults in brackets): --levels 1,5,10,20, --level-duration
# S [120], --w2-duration S [30], --trend-limit N [20] (W2's and W4's topics), --w4-levels
# 1,5,10,15,20,30,50 and --w4-duration S [120] (W4, the page's traffic, on both servers),
# --steady-duration S [600], --spike-duration S [300], --spike-ramp S [30],
# --endurance-duration S [600] (3600: the 1-hour run), --nobatch-levels LIST, --peer-levels
# LIST (llama-server's W1 and W3), --variants-levels LIST [20] (W1 again on a replica writing
# background stories and "another story" variants, as deployed); 0 or an empty list skips a part.
# Other options: --binary PATH, --model DIR, --out DIR, --no-docs (leave BENCHMARKS.md alone),
# --peer-gguf FILE (llama-server serves that file: the GGUF --model was imported from, e.g.
# SmolLM2's, with prompts in the model's own template) and --ignore-eos (both servers write
# max_tokens per request, past a real model's end of turn).
#
# It sets up what it needs as run.sh does (ONNX Runtime, .venv with Locust and matplotlib,
# the bench model onnx/tinyllama-bench with random weights when absent or holding another
# graph than the exporter's defaults or TRENDSTORY_EXPORT_ARGS ask for, a release build),
# then runs scripts/loadtest/bench.py: results in DIR/results.json (default docs/loadtest/),
# charts DIR/*.png, and the load-test section of BENCHMARKS.md rewritten between its markers
# (--smoke writes all of it under target/loadtest/smoke/ instead). Records and logs of every
# run: target/loadtest/MODE/. Exit status 1 when a run finished no request (and, with
# --smoke, when any request failed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
COMMAND="scripts/bench.sh${*:+ $*}"

mode=full
binary=""
model=""
out=""
docs=1
with_peer=0
pass=()
while (($#)); do
    case "$1" in
        --quick) mode=quick ;;
        --smoke) mode=smoke ;;
        --full) mode=full ;;
        --with-peer) with_peer=1 ;;
        --peer-gguf) export PEER_GGUF="$2"; pass+=("$1" "$2"); shift ;;
        --ignore-eos) pass+=("$1") ;;
        --binary) binary="$2"; shift ;;
        --model) model="$2"; shift ;;
        --out) out="$2"; shift ;;
        --no-docs) docs=0 ;;
        --levels|--level-duration|--w2-duration|--trend-limit|--steady-duration|--spike-duration|\
--spike-ramp|--spike-users|--endurance-duration|--nobatch-levels|--peer-levels|--max-tokens|\
--max-requests|--w4-levels|--w4-duration|--variants-levels)
            pass+=("$1" "$2"); shift ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

./scripts/fetch-onnxruntime.sh >/dev/null
source scripts/python-env.sh

if [[ "$mode" == smoke ]]; then
    model="${model:-onnx/tiny}"
    out="${out:-target/loadtest/smoke}"
    docs=0
    if [[ ! -f "$model/manifest.json" ]]; then
        "$PYTHON_ENV_PY" scripts/export_onnx.py --random-init --preset tiny --out "$model"
    fi
    if [[ -z "$binary" ]]; then
        for candidate in target/debug/trendstory target/release/trendstory; do
            if [[ -x "$candidate" ]]; then binary="$candidate"; break; fi
        done
        if [[ -z "$binary" ]]; then
            cargo build --quiet --bin trendstory
            binary=target/debug/trendstory
        fi
    fi
else
    model="${model:-onnx/tinyllama-bench}"
    out="${out:-docs/loadtest}"
    if [[ "$model" != onnx/tinyllama-bench && ! -f "$model/manifest.json" ]]; then
        echo "bench.sh: $model/manifest.json is missing" >&2
        exit 1
    fi
    # The benchmark stand-in (what run.sh never serves unasked): random weights, real shape, the
    # exporter's defaults or TRENDSTORY_EXPORT_ARGS; an export of another graph is redone.
    # The engine's own attention graph (SLOTS_CONTRACT) unless TRENDSTORY_EXPORT_ARGS asks
    # for another.
    read -r -a EXPORT_ARGS <<< "--attention slots ${TRENDSTORY_EXPORT_ARGS:-}"
    # (--check-current: whether the folder holds what this command line would write.)
    export_command=(scripts/export_onnx.py --random-init --preset tinyllama "${EXPORT_ARGS[@]}")
    if [[ "$model" == onnx/tinyllama-bench ]] \
            && ! "$PYTHON_ENV_PY" "${export_command[@]}" --check-current; then
        echo "bench.sh: building onnx/tinyllama-bench (random weights, TinyLlama-1.1B shape)"
        "$PYTHON_ENV_PY" "${export_command[@]}"
    fi
    if [[ -z "$binary" ]]; then
        cargo build --release --quiet
        binary=target/release/trendstory
    fi
fi

args=(--mode "$mode" --binary "$binary" --model "$model" --out "$out" --command "$COMMAND")
if ((docs)); then
    args+=(--benchmarks BENCHMARKS.md)
fi
if ((with_peer)); then
    ./scripts/loadtest/peer-llama-server.sh build
    args+=(--with-peer)
fi
exec "$PYTHON_ENV_PY" scripts/loadtest/bench.py "${args[@]}" "${pass[@]}"
