#!/usr/bin/env bash
# Create the Python venv for bench/insightface_bench.py if missing, install bench/requirements.txt
# into it, and print the venv's python on stdout (progress goes to stderr).
#
# The venv lives at ${PORTIER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/portier}/bench-venv, beside
# the ONNX Runtime that scripts/fetch-onnxruntime caches. Idempotent: a stamp in the venv records
# the hash of the requirement files, and pip runs again only when they change.
# Needs python3 >= 3.11 with venv (Debian: python3-venv), gcc and g++. Set PYTHON to choose
# another interpreter.
# Usage: py=$(bench/install.sh) && "$py" bench/insightface_bench.py PHOTO...
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv="${PORTIER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/portier}/bench-venv"
req="$here/requirements.txt"
constraints="$here/build-constraints.txt"
stamp="$venv/.portier-bench-requirements.sha256"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "bench/install.sh: $python must be Python 3.11 or newer" >&2
    exit 1
  fi
  echo "bench/install.sh: creating $venv" >&2
  mkdir -p "$(dirname "$venv")"
  if ! "$python" -m venv "$venv" >&2; then
    rm -rf "$venv"
    echo "bench/install.sh: '$python -m venv' failed (Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
fi

want=$(cat "$req" "$constraints" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "bench/install.sh: installing bench/requirements.txt (builds insightface from source)" >&2
  # PIP_CONSTRAINT also reaches pip's isolated build environment, pinning the sdist's
  # setuptools/numpy/Cython there.
  PIP_CONSTRAINT="$constraints" "$venv/bin/python" -m pip install \
    --disable-pip-version-check --quiet -r "$req" >&2
  echo "$want" >"$stamp"
fi

echo "$venv/bin/python"
