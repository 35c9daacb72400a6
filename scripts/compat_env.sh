#!/usr/bin/env bash
# Create .venv-compat: transformers 4.57 and the CPU torch, where tests/test_export_compat.py
# checks that exports load and summarize as in the newest transformers. Built once: a
# .venv-compat that already imports the pinned transformers is left as it is.
# Usage: [PYTHON=python3.x] scripts/compat_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-compat
wanted="$(sed -n 's/^transformers==//p' requirements-compat.txt)"

if [ -x "$venv/bin/python" ] &&
  [ "$("$venv/bin/python" -c 'import torch, transformers; print(transformers.__version__)' 2>/dev/null)" = "$wanted" ]; then
  exit 0
fi
# The main .venv's Python (>= 3.11, found by setup_env.sh): the CPU torch wheel pinned here
# is built for it.
python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
  if [ -x .venv/bin/python ]; then
    python_bin="$(.venv/bin/python -c 'import sys; print(sys._base_executable)')"
  elif ! python_bin="$(command -v python3.11)"; then
    echo "compat_env.sh: no .venv and no python3.11: run scripts/setup_env.sh first" \
      "or set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
fi
echo "creating $venv with $("$python_bin" --version) and transformers $wanted"
rm -rf "$venv"
"$python_bin" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r requirements-compat.txt
