#!/usr/bin/env bash
# Model families on the embedded ISIC default (issue 14, criterion 6): train each network with the default `fit` (data,
# optimiser, the 20-epoch schedule unless overridden), then attack its best checkpoint with ASMA at the project
# defaults (32 validation images, each pushed toward another image's mask), and print the README's table.
#
#   bash benchmarks/model_families.sh [OUT] [extra overrides for every fit, e.g. trainer.max_epochs=10]
#
# One run at a time; wall times (fit, attack) go to OUT/times.tsv and the table to OUT/table.md
# (benchmarks/model_families.py). ONLY="unet monai_unet" runs a subset; a family whose attack run exists is skipped.
# Cost: about 20 min for the four on the 2-core reference machine when idle (2 torch threads); the README's table.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/runs/model_families}"
shift || true
EXTRA=("$@")
source "$ROOT/scripts/env.sh"  # the project's venv, as scripts/demo.sh
PY="$VENV/bin/python"
cd "$ROOT"
mkdir -p "$OUT"
# name | model overrides (all ~0.4-0.5 M parameters; 96 px is divisible by every network's total stride, 8)
FAMILIES=(
  "unet|model=unet"
  "monai_unet|model=monai_unet"
  "monai_attention_unet|model.name=monai.AttentionUnet model.params.channels=[16,32,64,128] model.params.strides=[2,2,2]"
  "monai_segresnet|model.name=monai.SegResNet model.params.init_filters=8"
)
for entry in "${FAMILIES[@]}"; do
  name="${entry%%|*}"
  read -r -a model <<< "${entry#*|}"
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
  if [ -f "$OUT/attack/$name/results.json" ]; then continue; fi
  t0=$(date +%s)
  if [ ! -f "$OUT/fit/$name/results.json" ]; then
    "$PY" -m lightning_seg fit "${model[@]}" logger=csv run.output_dir="$OUT" run.name="$name" "${EXTRA[@]}"
  fi
  t1=$(date +%s)
  "$PY" -m lightning_seg attack run.ckpt="$OUT/fit/$name" "attack=[asma]" logger=csv run.output_dir="$OUT" run.name="$name"
  t2=$(date +%s)
  printf '%s\t%s\t%s\t%s\n' "$name" "$((t1 - t0))" "$((t2 - t1))" "${entry#*|}" >> "$OUT/times.tsv"
done
"$PY" benchmarks/model_families.py "$OUT" | tee "$OUT/table.md"
