#!/usr/bin/env bash
# The test suite: set up (first run only), then pytest on every core (pytest-xdist, `-n auto`; set
# METARL_TEST_WORKERS=0 for one process). Extra arguments go to pytest
# (e.g. `bash scripts/test.sh -m "not slow"` for the quick tier, `-k navigation` for one area).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "${METARL_VENV:-$ROOT/.venv}/bin/pytest" -n "${METARL_TEST_WORKERS:-auto}" "$@"
