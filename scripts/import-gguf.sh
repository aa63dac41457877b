#!/usr/bin/env bash
# A llama.cpp GGUF (Llama architecture) as a TrendStory model folder:
#   scripts/import-gguf.sh FILE.gguf --out onnx/NAME [exporter options, e.g. --precision fp32]
#   scripts/import-gguf.sh FILE.gguf --hf-out DIR      # a Hugging Face folder instead
# Then serve it: TRENDSTORY_MODEL__DIR=onnx/NAME ./scripts/run.sh
# See scripts/gguf_import.py --help for what is kept from the file and what is re-quantized.
# Sets up the Python venv (scripts/python-env.sh) first. Exit status 1 with a message naming
# the file and the field when the file cannot be imported (nothing is left half-written).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/python-env.sh"
exec "$PYTHON_ENV_PY" "$here/gguf_import.py" "$@"
