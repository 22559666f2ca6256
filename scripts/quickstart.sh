#!/usr/bin/env bash
# The main job: set up (first run only), train on Navigation2D, evaluate on held-out goals, plot.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "${METARL_VENV:-$ROOT/.venv}/bin/metarl" demo "$@"
