"""The main job on the embedded data: train an ISIC and a glaucoma segmenter, attack them, summarise.

``python -m lightning_seg demo [overrides]`` runs ``fit`` on the synthetic ISIC-like set and on the
synthetic fundus set (defaults from ``conf/``), then ``attack`` on each best checkpoint (the default
``attack`` choice, ASMA, with the paper's protocol: target = another image's mask), and writes
``summary.md``, ``summary.json`` and ``preview.png`` (validation images with ground-truth and
predicted contours) into ``<run.output_dir>/demo/<timestamp>/``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_seg.commands.attack import attack
from lightning_seg.commands.compose import compose_for
from lightning_seg.commands.fit import fit
from lightning_seg.config import compose
from lightning_seg.io import write_json, write_text
from lightning_seg.runs import new_run_dir
from lightning_seg.training.checkpoint import load_checkpoint_config, load_module
from lightning_seg.training.trainer import build_datamodule_from
from lightning_seg.viz.panels import save_png
from lightning_seg.viz.preview import preview_grid

DATASETS = ("isic", "glaucoma")


def demo(overrides: list[str] | None = None) -> dict[str, Any]:
    overrides = list(overrides or [])
    started = time.perf_counter()
    fits = {name: fit(compose([f"data={name}", *overrides])) for name in DATASETS}
    attacks = {
        name: attack(compose_for("attack", [*overrides, f"run.ckpt={result['best_checkpoint'] or result['last_checkpoint']}"]))
        for name, result in fits.items()
    }
    cfg = compose(overrides)
    out = new_run_dir(cfg.run.output_dir, "demo", "synthetic", cfg.run.name)
    rows = []
    for name, result in fits.items():
        metrics = result["metrics"]
        structures = sorted(k.split("_", 1)[1] for k in metrics if k.startswith("val/dice_"))
        for s in structures:
            rows.append((name, s, metrics[f"val/dice_{s}"], metrics[f"val/iou_{s}"], result["epochs"], result["fit_seconds"], result["run_dir"]))
    lines = [
        "| data (synthetic) | structure | val Dice | val IoU | epochs | fit time (s) | run folder |",
        "|---|---|---|---|---|---|---|",
        *[f"| {d} | {s} | {dice:.3f} | {iou:.3f} | {ep} | {sec:.0f} | `{run}` |" for d, s, dice, iou, ep, sec, run in rows],
    ]
    table = "\n".join(lines)
    attack_tables = "\n\n".join(f"**{name}** (`{a['run_dir']}`)\n\n{a['table']}" for name, a in attacks.items())
    preview = out / "preview.png"
    _save_preview(fits, preview)
    summary = {"command": "demo", "run_dir": str(out), "fits": fits, "attacks": attacks, "table": f"{table}\n\n{attack_tables}", "preview": str(preview),
               "total_seconds": round(time.perf_counter() - started, 1)}
    write_text(out / "summary.md", f"# lightning_seg demo\n\n{table}\n\n## Attacks\n\n{attack_tables}\n\n![preview](preview.png)\n")
    write_json(out / "summary.json", summary)
    return summary


@torch.no_grad()
def _save_preview(fits: dict[str, dict[str, Any]], path: Path, per_dataset: int = 4) -> None:
    """A grid: per data set, validation images with ground truth (green/blue) and prediction (red/yellow) contours."""
    tiles = []
    for result in fits.values():
        ckpt = result["best_checkpoint"] or result["last_checkpoint"]
        module = load_module(ckpt)
        stored = load_checkpoint_config(Path(ckpt))
        dm = build_datamodule_from(compose([], base={"seed": stored["seed"], "data": stored["data"]}))
        dm.setup()
        ds = dm.dataset("val")
        batch = [ds[(i, 0)] for i in range(min(per_dataset, len(ds)))]
        images = torch.stack([b["image"] for b in batch])
        preds = module(images).argmax(1)
        tiles.append(preview_grid(images, [b["mask"] for b in batch], preds, ncols=per_dataset, scale=2))
    width = max(t.shape[1] for t in tiles)
    grid = np.concatenate([np.pad(t, ((0, 6), (0, width - t.shape[1]), (0, 0)), constant_values=255) for t in tiles])
    save_png(grid, path)
