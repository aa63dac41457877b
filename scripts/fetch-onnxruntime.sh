#!/usr/bin/env bash
# Installs the pinned ONNX Runtime shared library into .cache/onnxruntime/.
#
# The `ort` crate is built with `load-dynamic`, so the library is a run-time file. It comes
# from the official onnxruntime wheel on PyPI (a package registry, reachable where crates.io
# is), pinned by version and checked by sha256. Idempotent: a verified library is kept.
set -euo pipefail

ORT_VERSION="1.32.0"
# sha256 of libonnxruntime.so.1.32.0 inside onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl
ORT_SHA256="6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f"
WHEEL_PLATFORM="manylinux_2_28_x86_64"
WHEEL_PYTHON="3.11"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST_DIR="${TRENDSTORY_ORT_DIR:-$ROOT/.cache/onnxruntime}"
LIB="$DEST_DIR/libonnxruntime.so.$ORT_VERSION"

if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
    echo "fetch-onnxruntime: only Linux x86_64 is scripted; install ONNX Runtime $ORT_VERSION yourself and set ORT_DYLIB_PATH" >&2
    exit 1
fi

verify() {
    [[ -f "$1" ]] && echo "$ORT_SHA256  $1" | sha256sum --check --status
}

if verify "$LIB"; then
    echo "fetch-onnxruntime: $LIB is present and verified"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
echo "fetch-onnxruntime: downloading onnxruntime==$ORT_VERSION ($WHEEL_PLATFORM) with pip"
if ! "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        --platform "$WHEEL_PLATFORM" --python-version "$WHEEL_PYTHON" \
        --dest "$WORK" "onnxruntime==$ORT_VERSION"; then
    echo "fetch-onnxruntime: pip could not download onnxruntime==$ORT_VERSION (is PyPI reachable?)" >&2
    exit 1
fi
WHEEL="$(ls "$WORK"/onnxruntime-*.whl)"
"$PYTHON" - "$WHEEL" "$WORK/lib" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as zf:
    names = [n for n in zf.namelist() if n.startswith("onnxruntime/capi/libonnxruntime.so.")]
    if len(names) != 1:
        sys.exit(f"unexpected wheel layout: {names}")
    zf.extract(names[0], out)
    print(f"{out}/{names[0]}")
PY
EXTRACTED="$WORK/lib/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION"
if ! verify "$EXTRACTED"; then
    echo "fetch-onnxruntime: checksum mismatch for $EXTRACTED (expected $ORT_SHA256)" >&2
    exit 1
fi
mkdir -p "$DEST_DIR"
install -m 0755 "$EXTRACTED" "$LIB.tmp"
mv "$LIB.tmp" "$LIB"
echo "fetch-onnxruntime: installed $LIB"
