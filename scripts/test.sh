#!/usr/bin/env bash
# Install, lint, run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
ruff check .
ruff format --check .
lint-imports  # the layer contract in pyproject.toml: dependencies point one way
# The exhaustive per-variant sweep (`-m sweep`: every deep model exported, folded, ...) is
# left out to keep CI within minutes on 2 cores; each code path it covers is tested here.
python -m pytest -q -m "not sweep"
