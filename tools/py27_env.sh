#!/usr/bin/env bash
# Python 2.7 + numpy 1.16 for checking the loss layer the way DIGITS runs it.
#
# DIGITS 6 (and the NVCaffe in its container) run Python 2.7 with an old numpy, and
# DIGITS uploads prototxt/digits_python_layers.py as it is; tests/test_py27_layer.py
# runs that file's forward and backward there. This script finds a Python 2.7 and
# installs numpy 1.16.6 (the last release with Python 2.7 wheels) into a cached
# folder, once; later calls print the same two lines in a moment.
#
#   bash tools/py27_env.sh          # prints: PY27=<interpreter>  and  PY27_SITE=<folder for PYTHONPATH>
#
# Cache: $THERMALNET_CACHE (default ~/.cache/thermalnet)/py27-numpy116. Exit 3 (one line on
# stderr) when no Python 2.7 exists; exit 1 when the numpy install fails.
set -euo pipefail
NUMPY_PIN="numpy==1.16.6"
CACHE="${THERMALNET_CACHE:-${HOME:-/tmp}/.cache/thermalnet}"
SITE="$CACHE/py27-numpy116"

find_py27() {
    local c
    for c in "${PY27:-}" "$(command -v python2.7 || true)" "$(command -v python2 || true)" \
             "${PYENV_ROOT:-${HOME:-/nonexistent}/.pyenv}"/versions/2.7*/bin/python2.7; do
        [ -n "$c" ] && [ -x "$c" ] || continue
        if "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' >/dev/null 2>&1; then
            echo "$c"; return 0
        fi
    done
    return 1
}

PY=$(find_py27) || { echo "py27_env: no Python 2.7 interpreter found (python2.7, python2, pyenv 2.7.x; or set PY27)" >&2; exit 3; }

if ! PYTHONPATH="$SITE" "$PY" -c 'import numpy, sys; sys.exit(numpy.__version__ != "1.16.6")' >/dev/null 2>&1; then
    tmp="$SITE.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$(dirname "$SITE")"
    # pip for 2.7 may be missing: ensurepip ships with CPython 2.7.9+.
    "$PY" -m pip --version >/dev/null 2>&1 || "$PY" -m ensurepip --user >/dev/null 2>&1 || true
    if ! "$PY" -m pip install --disable-pip-version-check --no-warn-script-location --quiet \
            --only-binary=:all: --target "$tmp" "$NUMPY_PIN" >"$tmp.log" 2>&1; then
        echo "py27_env: installing $NUMPY_PIN for $PY failed (log: $tmp.log)" >&2
        rm -rf "$tmp"; exit 1
    fi
    rm -rf "$SITE"; mv "$tmp" "$SITE"; rm -f "$tmp.log"
fi
echo "PY27=$PY"
echo "PY27_SITE=$SITE"
