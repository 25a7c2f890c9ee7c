"""Robust segmentation quality under untargeted attacks at several Linf budgets: the one budget sweep, the
robustness curve of one or several checkpoints, and its monotonicity check.

:func:`robust_sweep` attacks at each budget and scores per image the robust Dice per structure and the IoU against
the ground truth; the validation callback, the defense report's sanity checks and the ``attack`` command's
robustness curve all use it. Curve rows: checkpoint x attack x eps, means over images; eps = 0 is the clean model.
Written as ``robustness.csv``, ``robustness.md`` and ``robustness.png``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lightning_seg.attacks import attack_defaults, bind_task, build_named_attack, default_alpha, per_image_iou
from lightning_seg.evaluation.inference import attack_batches, on_grid, predict
from lightning_seg.io import atomic_write, write_csv, write_text
from lightning_seg.metrics.segmentation import per_image_dice
from lightning_seg.tasks import Task
from lightning_seg.training.checkpoint import load_module

# Differences of mean scores below this are noise (random starts, means over few images), not a finding.
NOISE_TOL = 0.02


class RobustScores(NamedTuple):
    """Per-image scores against the ground truth at one budget (eps = 0: the clean prediction)."""

    eps: float
    dice: Tensor  # [N, S]: per structure
    iou: Tensor  # [N]: mean over classes


def score_prediction(eps: float, pred: Tensor, labels: Tensor, task: Task, valid: Tensor | None = None) -> RobustScores:
    """Per-image Dice per structure and IoU of the prediction ``pred`` against the ground truth ``labels``; ``valid``
    (input grid): padding excluded."""
    mask = None if valid is None else on_grid(valid, labels)
    iou = per_image_iou(pred, labels, mask, num_classes=task.num_classes)
    return RobustScores(eps, per_image_dice(pred, labels, task, mask), iou)


def robust_sweep(net: nn.Module, images: Tensor, labels: Tensor, task: Task, eps_values: Sequence[float], *, steps: int,
                 attack: str = "pgd", sections: dict[str, Any] | None = None, batch_size: int | None = None,
                 progress: Any = None, rescore: bool = False, valid: Tensor | None = None) -> list[RobustScores]:
    """Scores under the untargeted ``attack`` (a key of the config's ``attack`` section, whose hyper-parameters it
    takes, or a registered name) at each Linf budget, with ``steps`` steps of :func:`default_alpha`.

    The prediction scored is the attack's own final forward; ``rescore`` predicts the adversarial images again, as
    the defense report scores every row (it differs only for randomised defenses, which draw a new sample). ``valid``:
    padding neither perturbed nor scored (:func:`lightning_seg.evaluation.inference.run_attack`)."""
    out = []
    registered = dict((sections or {}).get(attack, {})).get("name", attack)
    # APGD / SEA (alpha None) adapt their own step from 2 eps; a fixed PGD step would only weaken them
    own_step = attack_defaults(registered).get("alpha", 0.0) is None
    for eps in eps_values:
        step = {} if own_step else {"alpha": default_alpha(eps, steps)}
        atk = bind_task(build_named_attack(attack, sections, eps=eps, steps=steps, targeted=False, **step), task)
        results = attack_batches(atk, net, images, labels, batch_size, progress, valid=valid)
        if rescore:
            pred = predict(net, torch.cat([r.adv for r in results]), batch_size, valid=valid)
        else:
            pred = torch.cat([r.pred for r in results])
        out.append(score_prediction(eps, pred, labels, task, valid))
    return out


def robustness_sweep(checkpoints: list[Path], images: Tensor, labels: Tensor, *, eps_values: list[float],
                     attacks: list[str], steps: int, batch_size: int, sections: dict[str, Any] | None = None,
                     progress: Any = None, valid: Tensor | None = None) -> list[dict[str, Any]]:
    """Curve rows of every checkpoint (with the defense it was trained behind): clean, then each attack per budget.
    ``valid``: padding neither perturbed nor scored."""
    rows = []
    for ckpt in checkpoints:
        module = load_module(str(ckpt))
        net, task = module.net.to(images.device).eval(), module.task
        y = module.crop_labels(images, labels)
        clean = predict(net, images, batch_size, valid=valid)
        rows.append(_row(ckpt, "clean", score_prediction(0.0, clean, y, task, valid), task))
        for name in attacks:
            for s in robust_sweep(net, images, y, task, eps_values, steps=steps, attack=name, sections=sections,
                                  batch_size=batch_size, progress=progress, valid=valid):
                rows.append(_row(ckpt, name, s, task))
    return flag_monotone(rows)


def check_monotone(points: list[tuple[float, float]], tol: float = NOISE_TOL) -> list[str]:
    """Violations of 'robust Dice does not rise with the budget' in ``[(eps, dice), ...]``."""
    out = []
    pts = sorted(points)
    for (e0, d0), (e1, d1) in zip(pts, pts[1:]):
        if d1 > d0 + tol:
            out.append(f"Dice rises from {d0:.3f} at eps {e0 * 255:g}/255 to {d1:.3f} at {e1 * 255:g}/255")
    return out


def flag_monotone(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sanity check of every curve: a stronger budget must not give a higher robust Dice; a rise means the attack is
    too weak (e.g. masked gradients, Athalye et al. 2018). Sets each row's ``check`` to "" or a ``WARN`` naming it."""
    for row in rows:
        row["check"] = ""
    for ckpt in dict.fromkeys(r["checkpoint"] for r in rows):
        clean = [r for r in rows if r["checkpoint"] == ckpt and r["attack"] == "clean"]
        for attack in dict.fromkeys(r["attack"] for r in rows if r["checkpoint"] == ckpt and r["attack"] != "clean"):
            points = (r for r in rows if r["checkpoint"] == ckpt and r["attack"] == attack)
            curve = clean + sorted(points, key=lambda r: r["eps"])
            for prev, row in zip(curve, curve[1:]):
                problems = check_monotone([(prev["eps"], prev["dice"]), (row["eps"], row["dice"])])
                row["check"] = "WARN: " + "; ".join(problems) if problems else ""
    return rows


def _row(ckpt: Path, attack: str, s: RobustScores, task: Task) -> dict[str, Any]:
    row: dict[str, Any] = {"checkpoint": _label(ckpt), "attack": attack, "eps": s.eps, "eps_255": round(s.eps * 255, 3)}
    for j, name in enumerate(task.structure_names):
        row[f"dice_{name}"] = float(s.dice[:, j].mean())
    row["dice"] = float(s.dice.mean())
    row["iou"] = float(s.iou.mean())
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


def write_robustness(run_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """``robustness.csv``, ``robustness.md`` and the curve ``robustness.png`` (returned) in ``run_dir``."""
    write_csv(run_dir / "robustness.csv", rows)
    write_text(run_dir / "robustness.md", robustness_table(rows) + "\n")
    return plot_curve(rows, run_dir / "robustness.png")


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


__all__ = ["NOISE_TOL", "RobustScores", "check_monotone", "flag_monotone", "plot_curve", "robust_sweep",
           "robustness_sweep", "robustness_table", "score_prediction", "write_robustness"]
