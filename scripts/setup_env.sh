#!/usr/bin/env bash
# Create .venv (if missing) and install a requirements file into it.
# Usage: scripts/setup_env.sh [requirements file]   (default: requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
requirements="${1:-requirements.txt}"
python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $("$python_bin" --version)"
  "$python_bin" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
echo "installing $requirements into .venv"
.venv/bin/python -m pip install --quiet -r "$requirements"
