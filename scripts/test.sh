#!/usr/bin/env bash
# Set up, lint, and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# The browser test (tests/test_app_browser.py) drives Debian's Chromium; Playwright's own
# browser downloads need a network that CI does not have.
if ! command -v chromium >/dev/null; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi
scripts/setup_env.sh requirements-test.txt
# tests/test_export_compat.py loads exports in transformers 4.57 (built once, then reused).
scripts/compat_env.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
