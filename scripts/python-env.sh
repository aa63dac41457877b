#!/usr/bin/env bash
# Create or update a Python virtualenv from a requirements file: by default <repo>/.venv from
# scripts/requirements.txt (the model tools, the test and load-test tooling).
#
# Idempotent and fast on a second run: the sha256 of the requirements file is stored in
# VENV/.requirements.sha256 and pip runs only when it changes (or the venv is broken).
# Usable both ways:
#   bash scripts/python-env.sh [REQUIREMENTS VENV]   # make sure that venv is ready; prints
#                                                    # its python's path
#   source scripts/python-env.sh                     # ... the default one, and put .venv/bin
#                                                    # first on PATH
# Exports PYTHON_ENV_PY with the venv's python path (sourced: the default venv's).
# The second form is for venvs the default one must not carry, e.g.
#   bash scripts/python-env.sh scripts/requirements-reference.txt .cache/venv-reference

_pyenv_main() {
    set -euo pipefail
    local here root req venv stamp want have py
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    root="$(cd "$here/.." && pwd)"
    req="${1:-$here/requirements.txt}"
    venv="$(realpath -m "${2:-$root/.venv}")"
    stamp="$venv/.requirements.sha256"
    py="${PYTHON:-python3}"

    # The file and those it includes (`-r other.txt`, next to it): a change in either reinstalls.
    local included
    included="$(sed -n 's/^-r[[:space:]]*//p' "$req" | sed "s|^|$(dirname "$req")/|")"
    # shellcheck disable=SC2086  # one path per line, none with spaces
    want="$(cat "$req" $included | sha256sum | cut -d' ' -f1)"
    have=""
    [[ -f "$stamp" ]] && have="$(cat "$stamp")"

    if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
        echo "python-env: creating $venv" >&2
        rm -rf "$venv"
        "$py" -m venv "$venv"
        have=""
    fi
    if [[ "$want" != "$have" ]]; then
        echo "python-env: installing $req" >&2
        "$venv/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip >&2 || true
        "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req" >&2
        echo "$want" > "$stamp"
    fi
    PYTHON_ENV_PY="$venv/bin/python"
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    # Sourced: run in a subshell so `set -euo pipefail` does not leak into the caller's shell.
    if ( _pyenv_main ); then
        PYTHON_ENV_PY="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/python"
        export PYTHON_ENV_PY
        export PATH="$(dirname "$PYTHON_ENV_PY"):$PATH"
        unset -f _pyenv_main
    else
        unset -f _pyenv_main
        return 1
    fi
else
    _pyenv_main "$@"
    echo "$PYTHON_ENV_PY"
fi
