#!/usr/bin/env bash
# Create .venv (Python 3.11) and install searcher with its dev tools.
# Re-runs are instant: pip runs again only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
stamp=".venv/.searcher-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x .venv/bin/searcher ]; then
  echo "installing searcher and its dependencies into .venv ..." >&2
  .venv/bin/python -m pip install --quiet -e ".[dev,ray]"  # ray: the distributed engine's tests run in CI
  echo "$want" > "$stamp"
fi
