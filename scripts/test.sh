#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/install_browser.sh   # Debian's chromium for the web app's browser tests (once; needs root)
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
