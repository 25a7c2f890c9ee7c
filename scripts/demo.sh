#!/usr/bin/env bash
# The main job on the embedded synthetic data: train an ISIC and a glaucoma segmenter (W&B offline).
# Extra arguments are config overrides passed to both runs, e.g. `bash scripts/demo.sh trainer.max_epochs=3`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m lightning_seg demo "$@"
