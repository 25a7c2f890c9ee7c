#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv, or $LIGHTNING_SEG_VENV) from pyproject.toml.
# On a machine without an NVIDIA GPU, torch 2.13.0 (CPU build) is installed first, so the ordinary
# `torch` requirement is already satisfied and no multi-GB CUDA build is downloaded.
# On GPU machines the ordinary torch requirement applies.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LIGHTNING_SEG_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.lightning_seg-installed"

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$STAMP" -nt "$ROOT/pyproject.toml" ]; then
  return 0 2>/dev/null || exit 0
fi
echo "[env] setting up $VENV (once; a few minutes)" >&2
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[env] NVIDIA GPU found: installing the default (CUDA) torch build" >&2
else
  "${PIP[@]}" "torch==2.13.0"
fi
"${PIP[@]}" -e "$ROOT[dev]"
touch "$STAMP"
