"""Minimum budget per image: the smallest Linf budget eps at which an untargeted worst-case attack drives each image's
Dice (vs the ground truth) below a chosen ``level``; reported as the median over images and a per-image curve (the
share of images broken at each eps, i.e. the empirical distribution function of the minimum budgets), so that models
are compared without picking one eps.

Search, per image and for the whole batch at once (each image with its own eps, a tensor [B], in one attack call):

1. eps = 0: an image whose clean Dice is already below ``level`` has minimum budget 0.
2. eps = ``eps_max``: an image the attack does not break there has no budget within the search range: ``inf``,
   reported as "> eps_max" (and its bracket lower end is eps_max).
3. ``bisection_steps`` halvings of the bracket ``[lo, hi]`` (initially ``[0, eps_max]``): the attack runs at
   ``mid = (lo + hi) / 2`` on the images still bracketed; broken (Dice < level) -> ``hi = mid``, else ``lo = mid``.

The reported budget is ``hi``: a budget at which the attack DID find an image with Dice < level (an upper bound on the
true minimum, certified by an adversarial example), within ``eps_max / 2**bisection_steps`` of the largest budget at
which it did not (``lo``). Attacks are not exactly monotone in eps, so the bracket is what the attack found, not a
proof. Evaluator at each probed eps: APGD (CE loss, Croce & Hein 2020) or PGD (step 2.5 eps / steps), Linf, random
start, each with ``restarts`` and returning per image its iterate of lowest Dice; the Dice is that iterate's hard Dice
over the task's structures (mean over structures), the attacks' own selection Dice. Cost: (1 + bisection_steps)
attacks on the images still searched, plus one clean forward.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_seg.attacks._common import check_inputs, check_output
from lightning_seg.attacks.apgd import Best, apgd, apgd_run, make_objective
from lightning_seg.attacks.guard import attack_guard
from lightning_seg.attacks.pgd import _random_start, pgd_core
from lightning_seg.attacks.synthesis import hard_dice
from lightning_seg.config import MinBudgetConfig
from lightning_seg.evaluation import units
from lightning_seg.io import write_csv, write_figure, write_json, write_text

_D = MinBudgetConfig()  # the one set of defaults (attack_eval.min_budget)
_APGD = {n: p.default for n, p in inspect.signature(apgd).parameters.items()}
EVALUATORS = ("apgd", "pgd")


@dataclass
class MinBudget:
    """Per-image minimum budgets ([0,1] units, CPU float64) and what the search found.

    ``eps`` [B]: 0 (broken clean), inf (not broken within ``eps_max``), else the bracket's upper end; ``lower`` [B]:
    the largest probed budget at which the attack did not break the image (0 if none was probed); ``clean_dice``
    [B]; ``dice`` [B]: the Dice at ``eps`` (the clean Dice for eps = 0, the Dice at eps_max for inf)."""

    eps: Tensor
    lower: Tensor
    clean_dice: Tensor
    dice: Tensor
    level: float
    eps_max: float
    attack: str
    steps: int
    restarts: int
    bisection_steps: int
    forwards: int
    backwards: int

    def __len__(self) -> int:
        return int(self.eps.shape[0])

    @property
    def resolution(self) -> float:
        """Width of the final bracket of a bisected image."""
        return self.eps_max / 2 ** self.bisection_steps

    def median(self) -> float:
        """Median minimum budget over all images ([0,1] units; inf when more than half are not broken within
        eps_max; NaN for no image)."""
        if len(self) == 0:
            return float("nan")
        v = torch.sort(self.eps.double().cpu()).values
        n = v.numel()
        lo, hi = float(v[(n - 1) // 2]), float(v[n // 2])
        return hi if math.isinf(hi) else (lo + hi) / 2

    def curve(self) -> tuple[list[float], list[float]]:
        """The per-image curve: (eps values in x255 units, share of ALL images broken at that eps, in %), a step
        function from eps = 0 to eps_max (its steps at the images' budgets; the unbroken images never count)."""
        n = max(len(self), 1)
        finite = sorted(float(e) for e in self.eps.cpu() if math.isfinite(float(e)))
        xs, ys = [0.0], [100.0 * sum(e <= 0 for e in finite) / n]
        for i, e in enumerate(finite):
            if e > 0:
                xs += [units.x255(e), units.x255(e)]
                ys += [ys[-1], 100.0 * (i + 1) / n]
        xs.append(units.x255(self.eps_max))
        ys.append(ys[-1])
        return xs, ys

    def summary(self) -> dict[str, Any]:
        """Aggregates for the report (budgets in x255 units, shares in %); the median is None ("> eps_max") when more
        than half the images are not broken within eps_max."""
        n = len(self)
        med = self.median()
        broken = torch.isfinite(self.eps)
        return {
            "n": n, "level": self.level, "attack": self.attack, "steps": self.steps, "restarts": self.restarts,
            "bisection_steps": self.bisection_steps, "eps_max_x255": units.x255(self.eps_max),
            "resolution_x255": units.x255(self.resolution),
            "median_eps_x255": units.x255(med) if math.isfinite(med) else None,
            "broken_pct": units.pct(broken.float().mean().item()) if n else None,
            "broken_clean_pct": units.pct((self.eps == 0).float().mean().item()) if n else None,
            "forwards": self.forwards, "backwards": self.backwards,
        }

    def to_records(self) -> list[dict[str, Any]]:
        """One row per image: ``min_eps_x255`` (empty when not broken within eps_max: see ``above_eps_max``)."""
        rows = []
        for i in range(len(self)):
            e = float(self.eps[i])
            rows.append({
                "index": i, "clean_dice": float(self.clean_dice[i]),
                "min_eps_x255": units.x255(e) if math.isfinite(e) else None,
                "above_eps_max": int(not math.isfinite(e)),
                "lower_x255": units.x255(float(self.lower[i])),
                "dice_at_min_eps": float(self.dice[i]),
            })
        return rows


def _structures(task: Any) -> list[list[int]] | None:
    if task is None:
        return None
    return [list(ids) for _, ids in task.structures]


def _evaluate(net: nn.Module, x: Tensor, y: Tensor, m: Tensor, pm: Tensor | None, eps: Tensor, *, attack: str,
              steps: int, restarts: int, structures: list[list[int]] | None,
              generator: torch.Generator | None) -> tuple[Tensor, int, int]:
    """Worst-case Dice [b] of images ``x`` at per-image budgets ``eps`` [b] (Linf), with the model-call counts."""
    if attack == "pgd":
        # step 2.5 eps / steps per image: the project's PGD rule (lightning_seg.attacks.pgd.default_alpha)
        res = pgd_core(net, x, y, mask=m, perturbation_mask=pm, eps=eps, alpha=2.5 * eps / steps, steps=steps,
                       norm="linf", targeted=False, random_start=True, generator=generator, adv_threshold=0.99,
                       restarts=restarts, structures=structures, name="min_budget/pgd")
        return res.extras["dice"], res.forwards, res.backwards
    objective = make_objective("ce", y, m, targeted=False, steps=steps, class_weights=None, structures=structures)
    with attack_guard(net) as ctx:
        best = Best.empty(x)
        for _ in range(restarts):
            run, _ = apgd_run(ctx, x, y, m, pm, start=_random_start(x, eps, "linf", generator), eps=eps,
                              norm="linf", steps=steps, objective=objective, eta0=2 * eps,
                              momentum=_APGD["momentum"], rho=_APGD["rho"], targeted=False, structures=structures)
            best.merge(run)
        return best.primary, ctx.forwards, ctx.backwards


def min_budget(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    task: Any = None,
    *,
    mask: Tensor | None = None,
    perturbation_mask: Tensor | None = None,
    level: float = _D.level,
    eps_max: float = _D.eps_max,
    attack: str = _D.attack,
    steps: int = _D.steps,
    restarts: int = _D.restarts,
    bisection_steps: int = _D.bisection_steps,
    batch_size: int | None = None,
    seed: int | None = 0,
) -> MinBudget:
    """Per-image minimum Linf budget to drive the Dice below ``level`` (module docstring).

    images [B,C,H,W] in [0,1] (on the model's device); labels: ground truth long [B,h,w]; ``task``: a
    :class:`lightning_seg.tasks.Task` whose structures the Dice averages (None: each foreground class); mask: counted
    pixels [B,h,w]; perturbation_mask: where the attack may change the image ([B or 1, 1 or C, H, W]; padding: 0). ``batch_size``: images per attack call (None: all). ``seed``: the random starts (None: torch's
    global generator)."""
    if attack not in EVALUATORS:
        raise ValueError(f"min_budget: attack must be one of {', '.join(EVALUATORS)}, got {attack!r}")
    if not 0 < level <= 1 or not eps_max > 0 or steps < 1 or restarts < 1 or bisection_steps < 0:
        raise ValueError(f"min_budget: need 0 < level <= 1, eps_max > 0, steps >= 1, restarts >= 1, bisection_steps >= 0 "
                         f"(got {level}, {eps_max}, {steps}, {restarts}, {bisection_steps})")
    x0, lab, cnt, pm = check_inputs(images, labels, mask, perturbation_mask)
    structures = _structures(task)
    B, dev = x0.shape[0], x0.device
    gen = None if seed is None else torch.Generator(device=dev).manual_seed(int(seed))
    chunk = B if not batch_size else int(batch_size)
    calls = [0, 0]

    def worst_dice(idx: Tensor, eps: Tensor) -> Tensor:
        """Worst-case Dice (CPU [n]) of the images ``idx`` (CPU) at budgets ``eps`` (CPU float64 [n])."""
        out = []
        for s in range(0, idx.numel(), max(chunk, 1)):
            j = idx[s:s + chunk].to(dev)
            d, f, b = _evaluate(net, x0[j], lab[j], cnt[j], None if pm is None else pm[j],
                                eps[s:s + chunk].to(device=dev, dtype=x0.dtype), attack=attack, steps=steps,
                                restarts=restarts, structures=structures, generator=gen)
            out.append(d.detach().cpu())  # one host sync per chunk and probe, never inside an attack
            calls[0] += f
            calls[1] += b
        return torch.cat(out) if out else torch.zeros(0)

    with attack_guard(net) as ctx, torch.no_grad():
        clean = []
        for s in range(0, B, max(chunk, 1)):
            z = ctx.forward(x0[s:s + chunk])
            check_output(z, lab[s:s + chunk])
            clean.append(hard_dice(z, lab[s:s + chunk], cnt[s:s + chunk], structures).cpu())
        clean_dice = torch.cat(clean) if clean else torch.zeros(0)
        calls[0] += ctx.forwards
    # the brackets live on the CPU in float64 (exact halvings of eps_max); the attacks get the image dtype
    f64 = torch.float64
    hi = torch.where(clean_dice < level, 0.0, float("inf")).to(f64)
    lo, dice = torch.zeros(B, dtype=f64), clean_dice.clone()
    idx = torch.nonzero(torch.isinf(hi)).flatten()
    if idx.numel():
        d = worst_dice(idx, torch.full((idx.numel(),), float(eps_max), dtype=f64))
        broken = d < level
        hi[idx] = torch.where(broken, float(eps_max), hi[idx])
        lo[idx] = torch.where(broken, lo[idx], float(eps_max))
        dice[idx] = d
    for _ in range(bisection_steps):
        idx = torch.nonzero(torch.isfinite(hi) & (hi > 0)).flatten()
        if not idx.numel():
            break
        mid = (lo[idx] + hi[idx]) / 2
        d = worst_dice(idx, mid)
        broken = d < level
        hi[idx] = torch.where(broken, mid, hi[idx])
        lo[idx] = torch.where(broken, lo[idx], mid)
        dice[idx] = torch.where(broken, d, dice[idx])
    return MinBudget(eps=hi, lower=lo, clean_dice=clean_dice, dice=dice, level=float(level), eps_max=float(eps_max),
                     attack=attack, steps=int(steps), restarts=int(restarts), bisection_steps=int(bisection_steps),
                     forwards=calls[0], backwards=calls[1])


def min_budget_table(result: MinBudget, name: str = "") -> str:
    """Markdown: the median minimum budget, the share of images broken within eps_max and clean, and the search."""
    s = result.summary()
    above = f"> {s['eps_max_x255']:.3g}"
    med = above if s["median_eps_x255"] is None else f"{s['median_eps_x255']:.3g}"
    head = (f"| model | n | Dice level {units.SCORE} | median min {units.EPS_HEAD} | broken within eps_max (%) "
            f"| broken clean (%) | attack | search |")
    search = (f"[0, {s['eps_max_x255']:.3g}], {s['bisection_steps']} halvings (+-{s['resolution_x255']:.2g}), "
              f"{s['restarts']} restart(s)")
    row = (f"| {name or '-'} | {s['n']} | {s['level']:.2f} | {med} | "
           f"{(s['broken_pct'] or 0):.1f} | {(s['broken_clean_pct'] or 0):.1f} | {s['attack']} ({s['steps']} steps) | "
           f"{search} |")
    note = (f"\nMinimum budget per image: the smallest Linf eps (x255) at which untargeted {s['attack']} drives the "
            f"image's Dice vs the ground truth below {s['level']:.2f}, by bisection per image; '{above}': not broken "
            f"within eps_max. Model calls (samples): {s['forwards']} forwards, {s['backwards']} backwards.\n")
    return "\n".join([head, "|" + "---|" * 8, row]) + "\n" + note


def plot_min_budget(results: dict[str, MinBudget], path: Path) -> Path:
    """Share of images broken (Dice < level) vs eps (x255), one step curve per model, median marked; Okabe-Ito."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lightning_seg.viz.panels import OKABE_ITO

    colours = [c for n, c in OKABE_ITO.items() if n != "black"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    levels, counts = set(), set()
    for i, (name, r) in enumerate(results.items()):
        xs, ys = r.curve()
        colour = colours[i % len(colours)]
        med = r.median()
        label = name or "model"
        label += f" (median {units.x255(med):.3g})" if math.isfinite(med) else f" (median > {units.x255(r.eps_max):.3g})"
        ax.plot(xs, ys, color=colour, label=label, drawstyle="default")
        if math.isfinite(med):
            ax.axvline(units.x255(med), color=colour, ls="--", lw=0.8)
        levels.add(r.level)
        counts.add(len(r))
    ax.axhline(50, color="grey", ls=":", lw=0.8)
    lvl = ", ".join(f"{v:.2f}" for v in sorted(levels))
    ax.set_xlabel("Linf budget eps (x255)")
    ax.set_ylabel(f"images with Dice < {lvl} (%)")
    n_text = ", ".join(str(c) for c in sorted(counts))
    ax.set_title(f"Minimum budget per image (n = {n_text} images); dashed: median", fontsize=10)
    ax.set_ylim(0, 100)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return write_figure(path, fig)


def write_min_budget(result: MinBudget, run_dir: str | Path, *, name: str = "",
                     names: list[str] | None = None) -> dict[str, Any]:
    """Write ``min_budget.csv`` (one row per image; ``names``: the images' file names), ``min_budget.md`` (table),
    ``min_budget.png`` (curve) and ``min_budget.json`` (summary) into ``run_dir``; returns the summary."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = result.to_records()
    if names is not None:
        rows = [{"index": r["index"], "image": n, **{k: v for k, v in r.items() if k != "index"}}
                for r, n in zip(rows, names)]
    write_csv(run_dir / "min_budget.csv", rows)
    write_text(run_dir / "min_budget.md", min_budget_table(result, name))
    plot_min_budget({name: result}, run_dir / "min_budget.png")
    summary = result.summary()
    write_json(run_dir / "min_budget.json", summary)
    return summary


def min_budget_report(net: nn.Module, images: Tensor, labels: Tensor, task: Any, valid: Tensor | None,
                      cfg: Any, run_dir: str | Path, *, name: str = "", names: list[str] | None = None,
                      batch_size: int | None = None, seed: int | None = 0) -> dict[str, Any]:
    """The attack command's hook: run :func:`min_budget` with the ``attack_eval.min_budget`` section ``cfg`` (a
    :class:`lightning_seg.config.MinBudgetConfig`, a DictConfig or a dict; ``enabled`` is the caller's test) and write
    its files into ``run_dir`` (:func:`write_min_budget`). ``valid``: bool [B,H,W] on the images' grid, False on
    padding (None: every pixel), which is neither counted nor perturbed, as the attack command's attacks. Returns the summary (budgets x255, shares %), with keys
    prefixed ``min_budget_`` ready to merge into a run summary."""
    get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
    params = {f.name: get(f.name, f.default) for f in dataclasses.fields(MinBudgetConfig) if f.name != "enabled"}
    mask = pm = None
    if valid is not None and not bool(valid.all()):
        from lightning_seg.evaluation.inference import on_grid

        valid = valid.to(device=images.device, dtype=torch.bool)
        mask, pm = on_grid(valid, labels), valid.unsqueeze(1)
    result = min_budget(net, images, labels, task, mask=mask, perturbation_mask=pm, batch_size=batch_size, seed=seed,
                        **params)
    summary = write_min_budget(result, run_dir, name=name, names=names)
    return {f"min_budget_{k}": v for k, v in summary.items()}


__all__ = ["EVALUATORS", "MinBudget", "min_budget", "min_budget_report", "min_budget_table", "plot_min_budget",
           "write_min_budget"]
