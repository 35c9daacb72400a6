#!/usr/bin/env bash
# Create .venv (if missing) and install a requirements file into it.
# Usage: [PYTHON=python3.x] scripts/setup_env.sh [requirements file]   (default: requirements.txt)
#
# The pinned stack (jax, numpy 2.4, transformers 5, orbax) needs Python >= 3.11, but TPU VM
# images such as tpu-ubuntu2204-base ship 3.10: use $PYTHON, else the newest python3.x on
# PATH that is new enough, else a managed Python from uv (installed on the way if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
requirements="${1:-requirements.txt}"
need="Python >= 3.11"

new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

find_python() {
  if [ -n "${PYTHON:-}" ]; then
    new_enough "$PYTHON" && echo "$PYTHON" && return
    echo "setup_env.sh: PYTHON=$PYTHON is not a working $need: point it at one" >&2
    return 1
  fi
  local candidate
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null && new_enough "$candidate"; then
      command -v "$candidate"
      return
    fi
  done
  # Both uv installers put it in ~/.local/bin, which a non-login ssh shell leaves off PATH.
  export PATH="$HOME/.local/bin:$PATH"
  if ! command -v uv >/dev/null; then
    echo "no $need on PATH: installing uv to fetch one" >&2
    # pip --user is refused on PEP 668 images; then the official installer. Either one's
    # failure shows below as no uv, in one line instead of their pages of output.
    { python3 -m pip install --quiet --user uv ||
      curl -LsSf https://astral.sh/uv/install.sh | env UV_NO_MODIFY_PATH=1 sh; } >/dev/null 2>&1 ||
      true
  fi
  if command -v uv >/dev/null && uv python install --quiet 3.11 >&2; then
    uv python find 3.11
    return
  fi
  echo "setup_env.sh: no $need found and uv could not fetch one: install python3.11" \
    "(apt-get install python3.11 python3.11-venv) or uv (https://docs.astral.sh/uv/)," \
    "or set PYTHON=/path/to/python3.11" >&2
  return 1
}

# A .venv left by an older setup with a too-old Python would fail in pip, package by package.
if [ -e .venv ] && ! new_enough .venv/bin/python; then
  echo "setup_env.sh: .venv does not hold a working $need: rebuilding it"
  rm -rf .venv
fi
if [ ! -e .venv ]; then
  python_bin="$(find_python)"
  echo "creating .venv with $("$python_bin" --version) ($python_bin)"
  "$python_bin" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
echo "installing $requirements into .venv"
.venv/bin/python -m pip install --quiet -r "$requirements"
