#!/usr/bin/env bash
# Create or update a Python virtualenv from a requirements file: by default <repo>/.venv from
# scripts/requirements.txt (the model tools, the test and load-test tooling), with the
# project's own tools package (scripts/trendstory_tools, scripts/pyproject.toml) installed
# editable, so tests and scripts/loadtest/ import it from anywhere; the other venvs run no
# code of it or, like the container image's export venv, only scripts/*.py, which find the
# package beside them.
#
# Idempotent and fast on a second run: the sha256 of the requirements file (with the files
# it includes and, for the default venv, pyproject.toml) is stored in
# VENV/.requirements.sha256 and pip runs only when it changes (or the venv is broken). The
# package's code needs no reinstall: the editable install reads it from the checkout.
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

    # The file and those it includes (`-r other.txt`, next to it), and for the default venv the
    # tools package's pyproject.toml: a change in any reinstalls.
    local included package=""
    included="$(sed -n 's/^-r[[:space:]]*//p' "$req" | sed "s|^|$(dirname "$req")/|")"
    if [[ "$(realpath "$req")" == "$(realpath "$here/requirements.txt")" ]]; then
        package="$here"
        included+=$'\n'"$here/pyproject.toml"
    fi
    # The package's folder counts too: the editable install points at it, so a venv installed
    # from another checkout (a git worktree, a moved folder) reinstalls.
    # shellcheck disable=SC2086  # one path per line, none with spaces
    want="$( (cat "$req" $included; [[ -z "$package" ]] || echo "$package") | sha256sum | cut -d' ' -f1)"
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
        if [[ -n "$package" ]]; then
            # (setuptools warns of folders named like the package in the working directory:
            # there is none but the package itself.)
            PYTHONWARNINGS="ignore:Editable installation" "$venv/bin/python" -m pip install \
                --disable-pip-version-check -q --no-deps -e "$package" >&2
        fi
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
