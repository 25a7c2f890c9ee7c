"""Dice under random (non-adversarial) deformations and bias fields: the held-out test of synthesis augmentation.

For each magnitude level (a :class:`~lightning_seg.attacks.deformations.TransformConfig`) and each seed, every image
gets a random transform drawn at the level's full budget (the random initialisation of AdvChain, Chen et al., MedIA
2022) and the Dice of the
prediction is measured against the *equally deformed* label, per structure, averaged over images and seeds.
Held-out means: seeds (and some magnitudes) that training never used.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_seg.attacks.deformations import TransformConfig, sample_random_transform
from lightning_seg.evaluation.inference import predict
from lightning_seg.metrics.segmentation import per_image_dice
from lightning_seg.tasks import Task

# name -> budgets; morph: max displacement in px (velocity ||v||_2 <= 1.5 as AdvChain, then the pixel bound); bias:
# |b - 1| <= eps_bias. Training with attack=synthesis uses 6 px / 0.3 (conf/attack/synthesis.yaml): 9 px / 0.45 is beyond,
# 12 px / 0.6 far beyond, so that the held-out levels include shifts large enough to hurt a standard model.
# 12 px needs a larger velocity radius: at ||v||_2 <= 1.5 the displacement peaks near 9 px and the bound would not bind.
LEVELS: dict[str, dict[str, Any]] = {
    "clean": {},
    "morph 3px": {"max_disp_px": 3.0, "eps_bias": 0.0},
    "morph 6px": {"max_disp_px": 6.0, "eps_bias": 0.0},
    "morph 9px": {"max_disp_px": 9.0, "eps_bias": 0.0},
    "bias 0.3": {"eps_morph": 0.0, "eps_bias": 0.3},
    "bias 0.45": {"eps_morph": 0.0, "eps_bias": 0.45},
    "morph 6px + bias 0.3": {"max_disp_px": 6.0, "eps_bias": 0.3},
    "morph 9px + bias 0.45": {"max_disp_px": 9.0, "eps_bias": 0.45},
    "morph 12px": {"eps_morph": 3.0, "max_disp_px": 12.0, "eps_bias": 0.0},
    "bias 0.6": {"eps_morph": 0.0, "eps_bias": 0.6},
    "morph 12px + bias 0.6": {"eps_morph": 3.0, "max_disp_px": 12.0, "eps_bias": 0.6},
}


@torch.no_grad()  # the random transforms need no graph either
def shift_dice(net: nn.Module, images: Tensor, labels: Tensor, task: Task, *, levels: dict[str, dict[str, Any]] | None = None,
               seeds: tuple[int, ...] = (1001, 1002, 1003), batch_size: int = 32) -> list[dict[str, Any]]:
    """One row per level: mean Dice per structure (and their mean) over images and seeds, vs the deformed label.

    net maps [B,C,H,W] in [0,1] to logits at the image size; labels long [B,H,W]; noise is off (eps_noise 0) so
    the levels isolate anatomy and appearance. Predictions are made in eval mode (the net's mode is restored).
    """
    rows = []
    for name, budget in (levels or LEVELS).items():
        dice = []
        for seed in seeds:
            g = torch.Generator().manual_seed(seed)
            for x, y in zip(images.split(batch_size), labels.split(batch_size)):
                if budget:
                    cfg = TransformConfig(**{"eps_noise": 0.0, **budget})
                    t = sample_random_transform(x.shape[0], tuple(x.shape[-2:]), channels=x.shape[1], config=cfg,
                                                generator=g, device=x.device, dtype=x.dtype)
                    x, y, _ = t.apply(x, y, num_classes=task.num_classes)
                dice.append(per_image_dice(predict(net, x), y, task))
            if not budget:
                break  # the clean level does not depend on the seed
        d = torch.cat(dice).double().mean(0)
        row = {"level": name, **{f"dice_{s}": float(d[j]) for j, s in enumerate(task.structure_names)}}
        row["dice"] = float(d.mean())
        rows.append(row)
    return rows


def mean_over_seeds(results: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Group models labelled ``name:seed`` by name: per level the mean of every Dice over the group, plus ``dice_sd``
    (standard deviation over training seeds, ddof 1; 0 for a single model) and ``n``. Labels without ``:`` are their
    own group. Training seeds matter: clean Dice alone varies between seeds, so compare means with their spread."""
    groups: dict[str, list[list[dict[str, Any]]]] = {}
    for label, rows in results.items():
        groups.setdefault(label.split(":")[0], []).append(rows)
    out = {}
    for name, members in groups.items():
        rows = []
        for per_level in zip(*members):
            keys = [k for k in per_level[0] if k == "dice" or k.startswith("dice_")]
            d = {k: torch.tensor([r[k] for r in per_level], dtype=torch.float64) for k in keys}
            rows.append({"level": per_level[0]["level"], **{k: float(v.mean()) for k, v in d.items()},
                         "dice_sd": float(d["dice"].std()) if len(per_level) > 1 else 0.0, "n": len(per_level)})
        out[name] = rows
    return out


def shift_table(results: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: one row per level, one column per model (mean Dice over structures; per structure in brackets;
    ``± sd`` over training seeds for rows from :func:`mean_over_seeds`)."""
    models = list(results)
    levels = [r["level"] for r in results[models[0]]]
    lines = ["| level | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for i, level in enumerate(levels):
        cells = []
        for m in models:
            r = results[m][i]
            parts = [f"{r[k]:.3f}" for k in r if k.startswith("dice_") and k != "dice_sd"]
            sd = f" ± {r['dice_sd']:.3f}" if r.get("n", 1) > 1 else ""
            cells.append(f"{r['dice']:.3f}{sd}" + (f" ({' / '.join(parts)})" if len(parts) > 1 else ""))
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["LEVELS", "mean_over_seeds", "shift_dice", "shift_table"]
