"""Held-out Dice under random deformations and bias fields for several checkpoints (criterion 2 of issue 6).

    python benchmarks/synthesis_shift.py fit=runs/fit/<run> synthesis-AT=runs/adv-train/<run> [--split val] [--out f.md]
    python benchmarks/synthesis_shift.py fit:0=<run> fit:1=<run> synthesis-AT:0=<run> synthesis-AT:1=<run> --out f

Labels ``name:seed`` are also averaged per name over training seeds (mean ± sd, a second table).

Each ``label=checkpoint`` (file or run folder; the run's best checkpoint) is evaluated on the split of the data it was
trained on (the data config stored in the checkpoint), under the levels of ``lightning_seg.synthesis_eval.LEVELS``
with seeds 1001-1003 (never used in training). Prints a markdown table (mean Dice over structures, vs the deformed
label) and writes it with the raw rows to ``--out`` (.md and .json).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lightning_seg.config import compose
from lightning_seg.evaluation.shift import LEVELS, mean_over_seeds, shift_dice, shift_table
from lightning_seg.io import write_json, write_text
from lightning_seg.runs import resolve_checkpoint
from lightning_seg.training.checkpoint import load_checkpoint_config, load_module
from lightning_seg.training.trainer import build_datamodule_from


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="label=checkpoint-or-run-folder")
    parser.add_argument("--split", default="val")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--out", default=None, help="write <out>.md and <out>.json")
    parser.add_argument("--seeds", default="1001,1002,1003", help="comma-separated held-out seeds")
    parser.add_argument("--levels", default=None, help="comma-separated subset of LEVELS names (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {}
    for item in args.models:
        label, sep, path = item.partition("=")
        if not sep:
            parser.error(f"{item!r}: expected label=checkpoint")
        ckpt = resolve_checkpoint(path, "runs")
        stored = load_checkpoint_config(ckpt) or {}
        cfg = compose(base={"seed": stored.get("seed", 0), "data": stored["data"]} if stored else None)
        module = load_module(str(ckpt))
        dm = build_datamodule_from(cfg)
        dm.setup()
        ds = dm.dataset(args.split)
        items = [ds[(i, 0)] for i in range(min(args.num_images, len(ds)))]
        images = torch.stack([it["image"] for it in items])
        labels = torch.stack([it["mask"] for it in items])
        levels = LEVELS if not args.levels else {k: LEVELS[k] for k in args.levels.split(",")}
        seeds = tuple(int(v) for v in args.seeds.split(","))
        results[label] = shift_dice(module.net, images, labels, module.task, levels=levels, seeds=seeds)
        print(f"{label}: {ckpt}", flush=True)
    table = shift_table(results)
    if any(":" in label for label in results):
        table += "\n\nMean ± sd over training seeds:\n\n" + shift_table(mean_over_seeds(results))
    print(table)
    if args.out:
        write_text(Path(args.out).with_suffix(".md"), table + "\n")
        write_json(Path(args.out).with_suffix(".json"), results)


if __name__ == "__main__":
    main()
