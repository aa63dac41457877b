#!/usr/bin/env bash
# The container image built with podman on this machine (scripts/image.sh local-bases and
# scripts/image.sh podman [MODEL] call this; see there and the README, "Container image").
#
#   scripts/podman/build.sh local-bases      the Dockerfile's three base images made from
#                                            Debian's packages (mmdebstrap), imported into
#                                            podman, where Docker Hub cannot be reached
#   scripts/podman/build.sh podman [MODEL]   the image, from those bases (made when missing);
#                                            MODEL as for `image.sh model` (default none);
#                                            prints its name, localhost/trendstory:COMMIT-MODEL
#
# podman runs with scripts/podman/containers.conf (runc, cgroupfs, no default ulimits) unless
# CONTAINERS_CONF names another file. The host's CA bundle goes to the build as the secret
# `ca-bundle` (the Dockerfile's downloading steps trust it; no layer keeps it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HOST_CA=/etc/ssl/certs/ca-certificates.crt
# The local stand-ins for the Dockerfile's bases (TOOLS_IMAGE, BUILD_IMAGE, RUNTIME_IMAGE).
LOCAL_TOOLS_IMAGE="localhost/trendstory-base-tools:bookworm"
LOCAL_BUILD_IMAGE="localhost/trendstory-base-rust:bookworm"
LOCAL_RUNTIME_IMAGE="localhost/trendstory-base-runtime:bookworm"

die() {
    echo "build.sh: $*" >&2
    exit 1
}

# podman as this machine needs it (scripts/podman/containers.conf) and the tools to be there.
podman_ready() {
    export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/scripts/podman/containers.conf}"
    local tool
    for tool in podman runc mmdebstrap; do
        command -v "$tool" >/dev/null ||
            die "$tool is not installed (scripts/deploy-tools.sh installs it: Debian package)"
    done
}

# A Debian bookworm root file system from Debian's packages imported as image NAME:
# debian_base NAME PACKAGES CHANGES [MMDEBSTRAP ARGS...]; kept when NAME exists.
debian_base() {
    local name="$1" packages="$2" changes="$3" work
    shift 3
    if podman image exists "$name"; then
        echo "build.sh: $name is there" >&2
        return
    fi
    work="$(mktemp -d)"
    echo "build.sh: making $name (mmdebstrap bookworm${packages:+ with $packages})" >&2
    # Without documentation, manuals and translations, as Debian's slim images are made, and
    # /usr merged by mmdebstrap's hook rather than by the usrmerge package (which pulls in
    # 46 MB of Perl).
    # shellcheck disable=SC2016  # $1 is mmdebstrap's: the root file system being made
    mmdebstrap --quiet --variant=minbase ${packages:+--include="$packages"} \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
        --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
        "$@" bookworm "$work/rootfs.tar" >&2
    local args=() change
    while IFS= read -r change; do
        [[ -n "$change" ]] && args+=(--change "$change")
    done <<< "$changes"
    podman import "${args[@]}" "$work/rootfs.tar" "$name" >/dev/null
    rm -rf "$work"
}

# The three bases where the official images cannot be pulled: Debian's minbase for the
# runtime (what debian:bookworm-slim is), with Debian's Python 3.11 for the tools stage, and
# with a C/C++ toolchain plus this machine's own Rust toolchain (Debian's rustc is too old)
# for the build stage, laid out as the official rust image is.
local_bases() {
    podman_ready
    local path="/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    debian_base "$LOCAL_RUNTIME_IMAGE" "" 'CMD ["/bin/bash"]'
    debian_base "$LOCAL_TOOLS_IMAGE" "ca-certificates,python3,python3-venv,python3-pip" \
        'CMD ["/usr/bin/python3"]'
    local sysroot
    sysroot="$(rustc --print sysroot)" || die "no Rust toolchain here to copy into the build base"
    local changes="ENV PATH=$path
ENV CARGO_HOME=/usr/local/cargo
CMD [\"/bin/bash\"]"
    # shellcheck disable=SC2016  # $1 is mmdebstrap's: the root file system being made
    debian_base "$LOCAL_BUILD_IMAGE" "ca-certificates,gcc,g++,libc6-dev,make,pkg-config" "$changes" \
        --customize-hook='mkdir -p "$1/usr/local/rust" "$1/usr/local/cargo/bin"' \
        --customize-hook="copy-in $sysroot/bin $sysroot/lib $sysroot/libexec /usr/local/rust"
    echo "build.sh: bases $LOCAL_TOOLS_IMAGE, $LOCAL_BUILD_IMAGE ($(rustc --version)), $LOCAL_RUNTIME_IMAGE" >&2
}

# The image built with podman from the local bases; prints its name.
podman_build() {
    local model="${1:-none}" tag secret=()
    local_bases
    tag="localhost/trendstory:$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo dev)-$model"
    [[ -f "$HOST_CA" ]] && secret=(--secret "id=ca-bundle,src=$HOST_CA")
    # --format docker keeps the HEALTHCHECK (the OCI format has none); --network host
    # reaches the package registries as this machine does.
    podman build --format docker --network host "${secret[@]}" \
        --build-arg TOOLS_IMAGE="$LOCAL_TOOLS_IMAGE" --build-arg BUILD_IMAGE="$LOCAL_BUILD_IMAGE" \
        --build-arg RUNTIME_IMAGE="$LOCAL_RUNTIME_IMAGE" --build-arg MODEL="$model" \
        --tag "$tag" "$ROOT" >&2
    echo "$tag"
}

case "${1:-}" in
    local-bases) local_bases ;;
    podman) [[ $# -le 2 ]] || die "usage: image.sh podman [MODEL]"; podman_build "${2:-none}" ;;
    *) die "usage: build.sh local-bases | podman [MODEL]" ;;
esac
