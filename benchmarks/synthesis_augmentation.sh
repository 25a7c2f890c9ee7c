#!/usr/bin/env bash
# Synthesis augmentation on the embedded default (issue 6, criterion 2): does adversarial synthesis make the segmenter
# hold its Dice under held-out deformations and bias fields better than standard training?
#
#   bash benchmarks/synthesis_augmentation.sh [OUT] [extra overrides, e.g. data=glaucoma data.task=disc_cup]
#
# Per training seed (SEEDS, default "0 1 2 3"): a standard model (`fit`, the default 20 epochs), then three 10-epoch
# fine-tunes of it with the same optimiser schedule: standard (fit), random synthesis and adversarial synthesis
# (adv-train, half of each batch replaced). Then benchmarks/synthesis_shift.py scores every model under the held-out
# levels (seeds 1001-1003, never used in training) and prints mean +- sd over the training seeds.
# Cost on one CPU thread per run: about 5 min per fit, 3.5 min per standard or random fine-tune and 9 min per
# adversarial fine-tune, so about 1 h 20 min for four seeds. FROM_SCRATCH=1 adds 20-epoch augmented models trained from
# scratch (about 16 min each for the adversarial one).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/runs/synthesis_augmentation}"
shift || true
SEEDS="${SEEDS:-0 1 2 3}"
source "$ROOT/scripts/env.sh"  # the project's venv, as scripts/demo.sh
PY="$VENV/bin/python"
cd "$ROOT"
run() { "$PY" -m lightning_seg "$@" logger=csv run.output_dir="$OUT" "${EXTRA[@]}"; }
EXTRA=("$@")
MODELS=()
for s in $SEEDS; do
  run fit seed="$s" run.name="fit_s$s"
  FT=(seed="$s" run.init_from="$OUT/fit/fit_s$s" trainer.max_epochs=10)
  run fit "${FT[@]}" run.name="ft_standard_s$s"
  run adv-train "${FT[@]}" adv_train.attack=random_synthesis adv_train.ratio=0.5 run.name="ft_random_s$s"
  run adv-train "${FT[@]}" adv_train.attack=synthesis adv_train.ratio=0.5 run.name="ft_synthesis_s$s"
  MODELS+=("fit:$s=$OUT/fit/fit_s$s" "fit + 10 standard:$s=$OUT/fit/ft_standard_s$s"
           "fit + 10 random synthesis:$s=$OUT/adv-train/ft_random_s$s"
           "fit + 10 synthesis-AT:$s=$OUT/adv-train/ft_synthesis_s$s")
  if [ "${FROM_SCRATCH:-0}" = 1 ]; then
    run adv-train seed="$s" adv_train.attack=random_synthesis adv_train.ratio=0.5 run.name="random_s$s"
    run adv-train seed="$s" adv_train.attack=synthesis adv_train.ratio=0.5 run.name="synthesis_s$s"
    MODELS+=("random synthesis:$s=$OUT/adv-train/random_s$s" "synthesis-AT:$s=$OUT/adv-train/synthesis_s$s")
  fi
done
"$PY" benchmarks/synthesis_shift.py "${MODELS[@]}" --out "$OUT/shift"
