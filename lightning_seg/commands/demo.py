"""The main job on the embedded data: train an ISIC and a glaucoma segmenter, attack them, summarise.

``python -m lightning_seg demo [overrides]`` runs ``fit`` on the synthetic ISIC-like set and on the
synthetic fundus set (defaults from ``conf/``), then ``attack`` on each best checkpoint (the default
``attack`` choice, ASMA, with the paper's protocol: target = another image's mask), and writes
``summary.md``, ``summary.json`` and ``preview.png`` (validation images with ground-truth and
predicted contours) into ``<run.output_dir>/demo/<timestamp>/``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from lightning_seg.commands.attack import attack
from lightning_seg.commands.compose import compose_for
from lightning_seg.commands.fit import fit
from lightning_seg.config import compose
from lightning_seg.evaluation.demo_report import attack_tables, fit_table, write_demo_summary
from lightning_seg.evaluation.inference import predict
from lightning_seg.runs import new_run_dir
from lightning_seg.training.checkpoint import load_module
from lightning_seg.training.trainer import build_datamodule_from
from lightning_seg.viz.panels import save_png
from lightning_seg.viz.preview import preview_grid, stack_grids

DATASETS = ("isic", "glaucoma")


def demo(overrides: list[str] | None = None) -> dict[str, Any]:
    overrides = list(overrides or [])
    started = time.perf_counter()
    fits = {name: fit(compose([f"data={name}", *overrides])) for name in DATASETS}
    attacks = {name: attack(compose_for("attack", [*overrides, f"run.ckpt={_checkpoint(result)}"])) for name, result in fits.items()}
    cfg = compose(overrides)
    out = new_run_dir(cfg.run.output_dir, "demo", "synthetic", cfg.run.name)
    table, tables = fit_table(fits), attack_tables(attacks)
    preview = out / "preview.png"
    save_png(stack_grids([_preview(_checkpoint(result)) for result in fits.values()]), preview)
    summary = {"command": "demo", "run_dir": str(out), "fits": fits, "attacks": attacks, "table": f"{table}\n\n{tables}",
               "preview": str(preview), "total_seconds": round(time.perf_counter() - started, 1)}
    write_demo_summary(out, summary, table, tables)
    return summary


def _checkpoint(fitted: dict[str, Any]) -> str:
    return fitted["best_checkpoint"] or fitted["last_checkpoint"]


def _preview(ckpt: str, n: int = 4) -> np.ndarray:
    """Validation images of the checkpoint's data with ground-truth (Okabe-Ito blue / sky blue) and prediction (orange / vermillion) contours."""
    module = load_module(ckpt)
    dm = build_datamodule_from(compose_for("validate", [f"run.ckpt={ckpt}"]))  # the data the checkpoint was trained on
    dm.setup()
    ds = dm.dataset("val")
    batch = [ds[(i, 0)] for i in range(min(n, len(ds)))]
    images = torch.stack([b["image"] for b in batch])
    return preview_grid(images, [b["mask"] for b in batch], predict(module, images), ncols=n, scale=2)
