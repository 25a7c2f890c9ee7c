"""Robust segmentation quality under untargeted attacks at several Linf budgets (REFERENCE 5.3), for one or
several checkpoints, and the robustness curve (Dice vs eps) in one plot.

Rows: checkpoint x attack x eps, with robust Dice per structure and mean IoU against the ground truth
(per image, averaged over images); eps = 0 is the clean model. Written as ``robustness.csv``,
``robustness.md`` and ``robustness.png``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_seg.attacks import per_image_iou
from lightning_seg.attacks.config import build_named_attack
from lightning_seg.evaluation.defense_report import check_monotone
from lightning_seg.io import atomic_write
from lightning_seg.metrics.segmentation import per_image_dice
from lightning_seg.training.checkpoint import load_module


def robustness_sweep(checkpoints: list[Path], images: Tensor, labels: Tensor, *, eps_values: list[float], attacks: list[str],
                     steps: int, batch_size: int, sections: dict[str, Any] | None = None, progress: Any = None) -> list[dict[str, Any]]:
    rows = []
    for ckpt in checkpoints:
        module = load_module(str(ckpt))
        net, task = module.net.to(images.device).eval(), module.task
        y = module.crop_labels(images, labels)
        with torch.no_grad():
            clean = torch.cat([net(x).argmax(1) for x in images.split(batch_size)])
        rows.append(_row(ckpt, "clean", 0.0, clean, y, task))
        for name in attacks:
            for eps in eps_values:
                attack = build_named_attack(name, sections, eps=eps, alpha=2.5 * eps / steps, steps=steps, targeted=False)
                preds = []
                for x, t in zip(images.split(batch_size), y.split(batch_size)):
                    preds.append(attack(net, x, t).pred)
                    if progress is not None:
                        progress.update(1)
                rows.append(_row(ckpt, name, eps, torch.cat(preds), y, task))
    return flag_monotone(rows)


def flag_monotone(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sanity check of every curve (REFERENCE 3.6): robust Dice must not rise with the budget. Sets each row's
    ``check`` to "" or a ``WARN`` naming the rise (a rise means a too-weak attack, e.g. masked gradients)."""
    for row in rows:
        row["check"] = ""
    for ckpt in dict.fromkeys(r["checkpoint"] for r in rows):
        clean = [r for r in rows if r["checkpoint"] == ckpt and r["attack"] == "clean"]
        for attack in dict.fromkeys(r["attack"] for r in rows if r["checkpoint"] == ckpt and r["attack"] != "clean"):
            curve = clean + sorted((r for r in rows if r["checkpoint"] == ckpt and r["attack"] == attack), key=lambda r: r["eps"])
            for prev, row in zip(curve, curve[1:]):
                problems = check_monotone([(prev["eps"], prev["dice"]), (row["eps"], row["dice"])])
                row["check"] = "WARN: " + "; ".join(problems) if problems else ""
    return rows


def _row(ckpt: Path, attack: str, eps: float, pred: Tensor, labels: Tensor, task: Any) -> dict[str, Any]:
    dice = per_image_dice(pred, labels, task)
    row: dict[str, Any] = {"checkpoint": _label(ckpt), "attack": attack, "eps": eps, "eps_255": round(eps * 255, 3)}
    for j, s in enumerate(task.structure_names):
        row[f"dice_{s}"] = float(dice[:, j].mean())
    row["dice"] = float(dice.mean())
    row["iou"] = float(per_image_iou(pred, labels, num_classes=task.num_classes).mean())
    return row


def _label(ckpt: Path) -> str:
    """``<run folder>/<checkpoint>`` is readable and unique enough for a legend."""
    return f"{ckpt.parent.parent.name}/{ckpt.stem}" if ckpt.parent.name == "checkpoints" else ckpt.stem


def robustness_table(rows: list[dict[str, Any]]) -> str:
    structures = [k for k in rows[0] if k.startswith("dice_")]
    head = "| checkpoint | attack | eps (x255) | " + " | ".join(f"Dice {s[5:]}" for s in structures) + " | mean Dice | IoU | check |"
    lines = [head, "|" + "---|" * (6 + len(structures))]
    for r in rows:
        cells = " | ".join(f"{r[s]:.3f}" for s in structures)
        lines.append(f"| {r['checkpoint']} | {r['attack']} | {r['eps_255']:g} | {cells} | {r['dice']:.3f} | {r['iou']:.3f} | "
                     f"{r.get('check') or 'ok'} |")
    return "\n".join(lines)


def plot_curve(rows: list[dict[str, Any]], path: Path) -> Path:
    """Mean Dice vs eps, one line per (checkpoint, attack); the clean value is drawn at eps = 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for ckpt in dict.fromkeys(r["checkpoint"] for r in rows):
        clean = next(r for r in rows if r["checkpoint"] == ckpt and r["attack"] == "clean")
        for attack in dict.fromkeys(r["attack"] for r in rows if r["attack"] != "clean"):
            pts = [clean] + [r for r in rows if r["checkpoint"] == ckpt and r["attack"] == attack]
            ax.plot([r["eps_255"] for r in pts], [r["dice"] for r in pts], marker="o", label=f"{ckpt} / {attack}")
    ax.set_xlabel("Linf budget eps (x 1/255)")
    ax.set_ylabel("robust Dice vs ground truth")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()), binary=True)
    return path
