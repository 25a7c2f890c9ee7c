"""Success of a targeted attack run against how much the image's and the target's ground-truth masks overlap.

    PYTHONPATH=. python benchmarks/target_overlap.py runs/attack/<attack run> [more attack runs]

Reads each run's ``per_image.csv`` (image, reference, success) and the attacked split's masks (the run's stored data
config, through the checkpoint it names), and prints, per overlap bin (IoU of the two foreground masks), the pairs and
the successes of each attack of the run. On the fundus this shows whether a model can be made to draw a disc where the image has none.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lightning_seg.commands.compose import compose_for
from lightning_seg.training.trainer import build_datamodule_from

BINS = ((0.0, 1e-9, "0 (no overlap)"), (1e-9, 0.25, "(0, 0.25)"), (0.25, 0.5, "[0.25, 0.5)"), (0.5, 1.01, ">= 0.5"))


def overlap_table(run: Path) -> dict[str, list[tuple[str, int, int]]]:
    """Per attack (method) of the run folder ``run``: ``[(bin, pairs, successes)]``."""
    results = json.loads((run / "results.json").read_text())
    dm = build_datamodule_from(compose_for("validate", [f"run.ckpt={results['checkpoint']}"]))
    dm.setup()
    ds = dm.dataset(OmegaConf.load(run / "config.yaml").attack_eval.split)
    masks = {}
    for i in range(len(ds)):
        item = ds[(i, 0)]
        masks[item["key"]] = item["mask"] > 0
    pairs: dict[str, list[tuple[float, bool]]] = {}
    with (run / "per_image.csv").open() as f:
        for row in csv.DictReader(f):
            a, t = masks[row["image"]], masks[row["reference"]]
            overlap = (a & t).sum().item() / max((a | t).sum().item(), 1)
            pairs.setdefault(row["method"], []).append((overlap, row["success"] == "1"))
    return {method: [(name, sum(lo <= o < hi for o, _ in rows), sum(ok for o, ok in rows if lo <= o < hi))
                     for lo, hi, name in BINS] for method, rows in pairs.items()}


def main(runs: list[str]) -> None:
    torch.set_num_threads(1)
    for run in runs:
        for method, table in overlap_table(Path(run)).items():
            print(f"\n{run}: {method}\n| mask overlap (IoU) | pairs | successes |\n|---|---|---|")
            for name, n, ok in table:
                print(f"| {name} | {n} | {ok} ({100 * ok / n:.0f} %) |" if n else f"| {name} | 0 | - |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
