"""Robust segmentation quality under untargeted attacks at several Linf budgets: the one budget sweep, the
robustness curve of one or several checkpoints, and its monotonicity check.

:func:`robust_sweep` attacks at each budget and scores per image the robust Dice per structure and the IoU against
the ground truth; the validation callback, the defense report's sanity checks and the ``attack`` command's
robustness curve all use it. Curve rows: checkpoint x attack x eps, means over images; eps = 0 is the clean model;
the budget as ``eps_x255`` (units of :mod:`lightning_seg.evaluation.units`), Dice and IoU in [0,1].
Written as ``robustness.csv``, ``robustness.md`` and ``robustness.png``.

The sanity checks of robust evaluations (Carlini et al. 2019) are pure functions here (:func:`check_monotone`,
:func:`check_effort`, :func:`check_worst_case`, :func:`check_transfer_dice`, :func:`check_black_box`,
:func:`check_unbounded`): each takes measured numbers and returns its violations, so the reports flag them and the
tests feed them violating numbers.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lightning_seg.attacks import attack_defaults, bind_task, build_named_attack, default_alpha, per_image_iou
from lightning_seg.evaluation import units
from lightning_seg.evaluation.inference import attack_batches, on_grid, predict
from lightning_seg.io import write_csv, write_figure, write_text
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
    # APGD / SEA (alpha None) adapt their own step from 2 eps; a fixed PGD step would only weaken them; Square has no
    # step (its steps are queries)
    own_step = attack_defaults(registered).get("alpha", None) is None
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
        rows += model_curve(load_module(str(ckpt)), ckpt, images, labels, eps_values=eps_values, attacks=attacks,
                            steps=steps, batch_size=batch_size, sections=sections, progress=progress, valid=valid)
    return flag_monotone(rows)


def model_curve(module: Any, label: Path, images: Tensor, labels: Tensor, *, eps_values: list[float], attacks: list[str],
                steps: int, batch_size: int, sections: dict[str, Any] | None = None, progress: Any = None,
                valid: Tensor | None = None, clean_pred: Tensor | None = None) -> list[dict[str, Any]]:
    """The curve rows of one loaded model (``label``: its checkpoint or weights file): clean, then each attack per
    budget; ``clean_pred``: its clean predictions, when already made."""
    net, task = module.net.to(images.device).eval(), module.task
    y = module.crop_labels(images, labels)
    clean = clean_pred if clean_pred is not None else predict(net, images, batch_size, valid=valid)
    kind = model_kind(module)
    rows = [_row(label, "clean", score_prediction(0.0, clean, y, task, valid), task, kind)]
    for name in attacks:
        for s in robust_sweep(net, images, y, task, eps_values, steps=steps, attack=name, sections=sections,
                              batch_size=batch_size, progress=progress, valid=valid):
            rows.append(_row(label, name, s, task, kind))
    return rows


def model_kind(module: Any) -> str:
    """How the model was trained, for legends: ``fit`` or ``adv-train``, with the defense it is deployed behind."""
    hparams = getattr(module, "hparams", {})
    kind = "adv-train" if (hparams.get("adv_train") or {}).get("enabled") else "fit"
    defense = hparams.get("defense") or {}
    return f"{kind} + {defense['name']}" if defense.get("name", "none") != "none" else kind


def check_monotone(points: list[tuple[float, float]], tol: float = NOISE_TOL) -> list[str]:
    """Violations of 'robust Dice does not rise with the budget' in ``[(eps, dice), ...]``."""
    return _rises(points, tol, lambda eps: f"at eps {eps * 255:g}/255")


# ----------------------------------------------------------------------------- sanity checks (pure functions)
# After Carlini et al., "On Evaluating Adversarial Robustness" (2019): each check takes measured numbers and returns a
# list of violations (empty = ok), so that reports can flag them and tests can feed them violating numbers. Dice is
# the robust Dice vs the ground truth under untargeted attacks (lower = stronger attack); ``tol`` absorbs the noise of
# random starts and of means over few images.
UNBOUNDED_MAX_DICE = 0.1  # "close to 0": an unbounded attack leaves at most this mean Dice


def check_effort(points: Sequence[tuple[float, float]], what: str = "iterations", tol: float = NOISE_TOL) -> list[str]:
    """Violations of 'more effort does not raise robust Dice' in ``[(effort, dice)]`` (effort: iterations, restarts
    or queries; any order). A rise means the attack's output is not its best iterate or its steps are noise."""
    return _rises(points, tol, lambda n: f"with {n:g} {what}", lambda n: f"with {n:g}")


def _rises(points: Sequence[tuple[float, float]], tol: float, first: Any, second: Any = None) -> list[str]:
    """Each step of ``points`` (sorted by x) where the Dice rises by more than ``tol``, named by ``first`` / ``second``
    (x -> text; ``second`` defaults to ``first``)."""
    second = second or first
    return [f"Dice rises from {d0:.3f} {first(x0)} to {d1:.3f} {second(x1)}"
            for (x0, d0), (x1, d1) in itertools.pairwise(sorted(points)) if d1 > d0 + tol]


def check_worst_case(worst: float | Tensor, members: dict[str, float | Tensor], tol: float = 1e-6) -> list[str]:
    """Violations of 'the ensemble's worst case is at most each member's Dice' (floats: means; tensors: per image,
    NaN = the member did not run for that image). Exact by construction, so the default tolerance is float noise."""
    out = []
    for name, dice in members.items():
        if isinstance(worst, Tensor) or isinstance(dice, Tensor):
            w, d = torch.as_tensor(worst, dtype=torch.float64), torch.as_tensor(dice, dtype=torch.float64)
            bad = (w > d + tol) & ~torch.isnan(d)
            if bool(bad.any()):
                out.append(f"worst case above member {name} on {int(bad.sum())} image(s) "
                           f"(max excess {float((w - d)[bad].max()):.3f})")
        elif worst > dice + tol:
            out.append(f"worst case {worst:.3f} above member {name} ({dice:.3f})")
    return out


def check_not_stronger(white_box: float, other: float, what: str, tol: float = NOISE_TOL) -> list[str]:
    """Violation of 'a weaker threat model (``what``: transfer, black-box) is not stronger than the white-box attack':
    ``other`` (its Dice) below ``white_box`` (the white-box Dice) by more than ``tol``. A white-box attacker could
    submit the other attack's images, so this means the white-box attack is too weak (masked gradients, too few
    steps), not that the model is robust."""
    if other < white_box - tol:
        return [f"{what} stronger than white-box (Dice {other:.3f} < {white_box:.3f})"]
    return []


def check_transfer_dice(white_box: float, transfer: float, tol: float = NOISE_TOL) -> list[str]:
    """Transfer from the undefended model is not stronger than white-box (:func:`check_not_stronger`)."""
    return check_not_stronger(white_box, transfer, "transfer", tol)


def check_black_box(white_box: float, black_box: float, tol: float = NOISE_TOL) -> list[str]:
    """A query-based black-box attack (Square) is not stronger than white-box (:func:`check_not_stronger`)."""
    return check_not_stronger(white_box, black_box, "black-box (Square)", tol)


def check_unbounded(dice: float, limit: float = UNBOUNDED_MAX_DICE) -> list[str]:
    """Violation of 'an unbounded attack drives Dice close to 0' (at most ``limit``)."""
    return [] if dice <= limit else [f"unbounded adaptive attack leaves Dice {dice:.3f} > {limit}"]


def flag_monotone(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sanity check of every curve: a stronger budget must not give a higher robust Dice; a rise means the attack is
    too weak (e.g. masked gradients, Athalye et al. 2018). Sets each row's ``check`` to "" or a ``WARN`` naming it."""
    for row in rows:
        row["check"] = ""
    for ckpt in dict.fromkeys(r["checkpoint"] for r in rows):
        clean = [r for r in rows if r["checkpoint"] == ckpt and r["attack"] == "clean"]
        for attack in dict.fromkeys(r["attack"] for r in rows if r["checkpoint"] == ckpt and r["attack"] != "clean"):
            points = (r for r in rows if r["checkpoint"] == ckpt and r["attack"] == attack)
            curve = clean + sorted(points, key=lambda r: r[units.EPS])
            for prev, row in itertools.pairwise(curve):
                points = [(prev[units.EPS] / units.X255, prev["dice"]), (row[units.EPS] / units.X255, row["dice"])]
                problems = check_monotone(points)
                row["check"] = "WARN: " + "; ".join(problems) if problems else ""
    return rows


def _row(ckpt: Path, attack: str, s: RobustScores, task: Task, model: str) -> dict[str, Any]:
    row: dict[str, Any] = {"checkpoint": _label(ckpt), "model": model, "attack": attack,
                           units.EPS: round(units.x255(s.eps), 3), "n_images": int(s.dice.shape[0])}
    for j, name in enumerate(task.structure_names):
        row[f"dice_{name}"] = float(s.dice[:, j].mean())
    row["dice"] = float(s.dice.mean())
    per_image = s.dice.double().mean(1)  # the spread over images, drawn as a band in the plot
    row["dice_q25"], row["dice_q75"] = (float(q) for q in torch.quantile(per_image, torch.tensor([0.25, 0.75]).double()))
    row["iou"] = float(s.iou.mean())
    return row


def _label(ckpt: Path) -> str:
    """``<run folder>/<checkpoint>`` is readable and unique enough for a legend."""
    return f"{ckpt.parent.parent.name}/{ckpt.stem}" if ckpt.parent.name == "checkpoints" else ckpt.stem


def robustness_table(rows: list[dict[str, Any]]) -> str:
    structures = [k for k in rows[0] if k.startswith("dice_")]
    head = (f"| checkpoint | attack | {units.EPS_HEAD} | " + " | ".join(f"Dice {s[5:]} {units.SCORE}" for s in structures)
            + f" | mean Dice {units.SCORE} | IoU {units.SCORE} | check |")
    lines = [head, "|" + "---|" * (6 + len(structures))]
    for r in rows:
        cells = " | ".join(f"{r[s]:.3f}" for s in structures)
        lines.append(f"| {r['checkpoint']} | {r['attack']} | {r[units.EPS]:g} | {cells} | {r['dice']:.3f} | {r['iou']:.3f} | "
                     f"{r.get('check') or 'ok'} |")
    return "\n".join(lines)


def write_robustness(run_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """``robustness.csv``, ``robustness.md`` and the curve ``robustness.png`` (returned) in ``run_dir``."""
    write_csv(run_dir / "robustness.csv", rows)
    write_text(run_dir / "robustness.md", robustness_table(rows) + "\n")
    return plot_curve(rows, run_dir / "robustness.png")


def plot_curve(rows: list[dict[str, Any]], path: Path) -> Path:
    """Robust Dice vs eps, one line per (model, attack); the clean value is drawn at eps = 0.

    Lines are named by the model (row ``model``: fit, adv-train, a defense; else the checkpoint label) and the attack;
    the title gives the image count (row ``n_images``, or ``n``). When the rows carry per-image quartiles
    (``dice_q25`` / ``dice_q75``) or a bootstrap interval (``dice_lo`` / ``dice_hi``) the spread is drawn as a band
    around the mean, and named in the legend. Colours and markers: Okabe-Ito, colour-blind safe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lightning_seg.viz.panels import OKABE_ITO

    colours = [c for name, c in OKABE_ITO.items() if name != "black"]
    markers = "osD^vP*X"
    band = next(((lo, hi, what) for lo, hi, what in (("dice_q25", "dice_q75", "interquartile range over images"),
                                                     ("dice_lo", "dice_hi", "bootstrap interval"))
                 if all(lo in r and hi in r for r in rows)), None)
    counts = sorted({int(r.get("n_images", r.get("n", 0)) or 0) for r in rows} - {0})
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    line = 0
    for ckpt in dict.fromkeys(r["checkpoint"] for r in rows):
        mine = [r for r in rows if r["checkpoint"] == ckpt]
        clean = [r for r in mine if r["attack"] == "clean"][:1]
        name = str(mine[0].get("model") or ckpt)
        for attack in dict.fromkeys(r["attack"] for r in mine if r["attack"] != "clean"):
            pts = clean + sorted((r for r in mine if r["attack"] == attack), key=lambda r: _eps_x255(r))
            x = [_eps_x255(r) for r in pts]
            colour, marker = colours[line % len(colours)], markers[line % len(markers)]
            ax.plot(x, [r["dice"] for r in pts], marker=marker, color=colour, label=f"{name} / {attack}")
            if band:
                ax.fill_between(x, [r[band[0]] for r in pts], [r[band[1]] for r in pts], color=colour, alpha=0.2, lw=0)
            line += 1
    if band:
        ax.fill_between([], [], [], color="grey", alpha=0.2, lw=0, label=band[2])
    ax.set_xlabel("Linf budget eps (x255)")
    ax.set_ylabel("robust Dice vs ground truth (mean) [0,1]")
    n_text = f"n = {counts[0]} images" if len(counts) == 1 else (f"n = {', '.join(map(str, counts))} images" if counts else "")
    ax.set_title("Robust Dice under untargeted attacks" + (f" ({n_text})" if n_text else ""), fontsize=10)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return write_figure(path, fig)


def _eps_x255(row: dict[str, Any]) -> float:
    """A curve row's budget in 1/255 steps (``eps_x255``; rows of older runs: ``eps_255`` or ``eps`` in [0,1])."""
    for key, scale in (("eps_x255", 1.0), ("eps_255", 1.0), ("eps", 255.0)):
        if row.get(key) is not None:
            return float(row[key]) * scale
    raise KeyError("eps_x255")


__all__ = ["NOISE_TOL", "UNBOUNDED_MAX_DICE", "RobustScores", "check_black_box", "check_effort", "check_monotone",
           "check_not_stronger", "check_transfer_dice", "check_unbounded", "check_worst_case", "flag_monotone", "plot_curve", "robust_sweep",
           "robustness_sweep", "robustness_table", "score_prediction", "write_robustness"]
