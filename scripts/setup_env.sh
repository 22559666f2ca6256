#!/usr/bin/env bash
# Create ./.venv (once) and install metarl into it, editable, with its dev tools.
#
# torch==2.13.0 is installed *before* the package: on these machines that exact version is a local
# CPU build that installs in seconds, while an unpinned `torch` (pulled in as a dependency) would
# download the newest CUDA build, several GB. A machine that already has torch in the venv keeps it.
#
# Variables: PYTHON (interpreter used to create the venv, default python3.11 or python3),
#            METARL_VENV (venv folder, default ./.venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${METARL_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtualenv $VENV with $PYTHON" >&2
  "$PYTHON" -m venv "$VENV"
fi
# Some machines' pip configuration lists local package folders that do not exist; pip warns once per
# package about each. Those lines are dropped; everything else pip prints (errors included) is kept.
quiet_pip() { grep -v "^WARNING: Location 'file:" >&2 || true; }
STAMP="$VENV/.metarl-installed"
WANT="$( (echo "$ROOT"; cat "$ROOT/pyproject.toml") | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "[setup] installing torch==2.13.0 (CPU build) first" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.13.0 2>&1 | quiet_pip
  fi
  echo "[setup] installing metarl (editable) and its dependencies" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[dev]" 2>&1 | quiet_pip
  echo "$WANT" > "$STAMP"
fi
