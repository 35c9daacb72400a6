#!/usr/bin/env bash
# Set up, then train the tiny summarizer on the bundled Korean sample data (CPU, offline).
# Extra arguments are config overrides, e.g. scripts/quickstart.sh train.num_epochs=1
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh requirements.txt
exec .venv/bin/python train_flax.py --config configs/tiny.py "$@"
