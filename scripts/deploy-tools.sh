#!/usr/bin/env bash
# Installs what the deploy tests (tests/deploy) need beyond the Python venv, as Debian
# packages: nginx, which scripts/cluster.sh balances with (and curl, which it also uses),
# prometheus, whose server scrapes that cluster (cluster.sh --with-prometheus) and whose
# promtool checks and unit-tests the alert rules (k8s/monitoring), and podman, runc and
# mmdebstrap, which build and run the container image. kubectl (with kustomize),
# hadolint and kubernetes-validate come from PyPI, pinned in requirements.txt
# (scripts/python-env.sh). Idempotent: when the tools are there it only checks, in milliseconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

missing=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v curl >/dev/null || missing+=(curl)
command -v promtool >/dev/null && command -v prometheus >/dev/null || missing+=(prometheus)
# The container image built and run here (scripts/image.sh podman, tests/deploy/test_container.py):
# podman under runc (scripts/podman/containers.conf), and mmdebstrap for the local base images.
for tool in podman runc mmdebstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            echo "deploy-tools: ${missing[*]} missing; as root: apt-get install ${missing[*]}" >&2
            exit 1
        fi
    fi
    echo "deploy-tools: installing ${missing[*]} (apt-get)"
    # Outside a container nothing stops the packages from starting a system nginx on port
    # 80 or a system Prometheus on 9090; only scripts/cluster.sh's own instances should
    # run, so forbid service starts during the install (Docker images ship this file
    # already).
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 0755 "$policy"
        trap '"${sudo[@]}" rm -f "$policy"' EXIT
    fi
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

for tool in kubectl hadolint kubernetes-validate; do
    [[ -x "$ROOT/.venv/bin/$tool" ]] || {
        echo "deploy-tools: .venv/bin/$tool is missing: run scripts/python-env.sh" >&2
        exit 1
    }
done
echo "deploy-tools: nginx $( (nginx -v 2>&1 || /usr/sbin/nginx -v 2>&1) | sed 's/.*nginx\///')," \
    "prometheus $(prometheus --version 2>&1 | awk 'NR == 1 { print $3 }')," \
    "$(podman --version), runc $(runc --version | awk 'NR == 1 { print $3 }')," \
    "$("$ROOT/.venv/bin/kubectl" version --client 2>/dev/null | head -1)"
