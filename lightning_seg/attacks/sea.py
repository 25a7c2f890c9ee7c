"""SEA, the Segmentation Ensemble Attack (Croce, Singh & Hein, "Towards Reliable Evaluation and Fast Training of
Robust Semantic Segmentation Models", ECCV 2024, arXiv 2306.12941).

Members: APGD (:mod:`lightning_seg.attacks.apgd`) with each loss of ``losses``, by default SEA's three: the
class-balanced masked CE, the masked CE and the Jensen-Shannon divergence (:mod:`lightning_seg.attacks.seg_losses`).
Every member runs ``steps`` iterations (300 by default) with SEA's progressive radius reduction: APGD at radius 2 eps
for 30 % of the iterations, at 1.5 eps for the next 30 %, at eps for the last 40 %; each stage restarts APGD's step
schedule (initial step 2 x its radius) from the previous stage's output iterate projected onto the smaller ball.
Only iterates inside the final eps-ball can be returned.

Per image the result is the worst case over the members, by the rule APGD uses to pick its output iterate: untargeted,
the lowest hard Dice against the labels (mean over the foreground classes or ``structures``), ties broken by the
lowest pixel accuracy, then by the member order; targeted, the highest Dice (then pixel accuracy) against the target.
``extras["winner"]`` [B] names, per image, the index into ``extras["members"]`` of the member that won;
``extras["winner_counts"]`` counts them (one host sync at the end of the attack); ``extras["member_dice"]`` [B, M]
holds every member's Dice.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lightning_seg.attacks._common import check_inputs, finish
from lightning_seg.attacks.apgd import Best, ClassWeights, apgd_run, check_budget, make_objective
from lightning_seg.attacks.guard import attack_guard
from lightning_seg.attacks.pgd import _random_start
from lightning_seg.attacks.result import AttackResult
from lightning_seg.attacks.seg_losses import Loss
from lightning_seg.attacks.synthesis import Structures

SEA_LOSSES: tuple[Loss, ...] = ("balanced_ce", "masked_ce", "js")
RADII = (2.0, 1.5, 1.0)  # SEA's radius schedule, in units of eps
SHARES = (0.3, 0.3, 0.4)  # share of the iterations spent at each radius


def radius_schedule(eps: float, steps: int) -> list[tuple[float, int]]:
    """SEA's stages ``[(radius, iterations)]``: 2 eps, 1.5 eps, eps for 30 / 30 / 40 % of ``steps`` (the last stage
    takes the rounding remainder, so the stages add up to ``steps``)."""
    n1 = round(SHARES[0] * steps)
    n2 = round(SHARES[1] * steps)
    return [(RADII[0] * eps, n1), (RADII[1] * eps, n2), (RADII[2] * eps, steps - n1 - n2)]


def sea(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    mask: Tensor | None = None,
    perturbation_mask: Tensor | None = None,
    eps: float = 4 / 255,
    norm: Literal["linf", "l2"] = "linf",
    steps: int = 300,
    losses: tuple[Loss, ...] = SEA_LOSSES,
    targeted: bool = False,
    alpha: float | None = None,
    momentum: float = 0.75,
    rho: float = 0.75,
    class_weights: ClassWeights = None,
    structures: Structures = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    adv_threshold: float = 0.99,
) -> AttackResult:
    """SEA: per image, the worst case over APGD members with the losses ``losses``, each run with the staged radius
    2 eps -> 1.5 eps -> eps over ``steps`` iterations (module docstring).

    Arguments as :func:`lightning_seg.attacks.apgd.apgd`; ``alpha``: the initial step at radius eps (None: 2 eps, the
    paper's), scaled with the radius in the larger stages. ``random_start``: each member starts at its own uniform
    draw in the 2 eps-ball (``generator``, on the input device); otherwise at the clean image. ``iterations``: the
    gradient steps per image over all members (``len(losses) * steps``).
    """
    check_budget("sea", eps, steps, alpha, momentum, rho, norm)
    if not losses:
        raise ValueError("sea: losses must name at least one member loss")
    x0, lab, cnt, pm = check_inputs(images, labels, mask, perturbation_mask)

    stages = [(r, n) for r, n in radius_schedule(eps, steps) if n > 0] or [(eps, 0)]
    stages[-1] = (eps, stages[-1][1])  # the output iterates lie in the eps-ball
    members: list[Best] = []
    with attack_guard(model) as ctx:
        for loss in losses:
            objective = make_objective(loss, lab, cnt, targeted=targeted, steps=steps, class_weights=class_weights,
                                       structures=structures)
            delta = torch.zeros_like(x0)
            if random_start and eps > 0:
                delta = _random_start(x0, stages[0][0], norm, generator)
            for radius, n in stages:
                eta0 = 2.0 * radius if alpha is None else float(alpha) * (radius / eps if eps > 0 else 1.0)
                run, _ = apgd_run(ctx, x0, lab, cnt, pm, start=delta, eps=radius,
                                  norm=norm, steps=n, objective=objective, eta0=eta0, momentum=momentum, rho=rho,
                                  targeted=targeted, structures=structures)
                delta = run.delta
            members.append(run)
        best = Best.empty(x0)
        winner = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
        for m, run in enumerate(members):
            winner = torch.where(best.merge(run), torch.full_like(winner, m), winner)
        sign = -1.0 if targeted else 1.0
        member_dice = torch.stack([sign * r.primary for r in members], 1)
        counts: dict[str, int] = {}
        for name, c in zip(losses, torch.bincount(winner, minlength=len(losses)).tolist()):  # one sync, at the end
            counts[name] = counts.get(name, 0) + c
        iters = torch.full((x0.shape[0],), steps * len(losses), dtype=torch.long, device=x0.device)
        return finish(ctx, x0, best.delta, lab, cnt, targeted=targeted, iterations=iters, criterion="apsr",
                      threshold=adv_threshold,
                      extras={"eps": eps, "norm": norm, "members": tuple(losses), "winner": winner,
                              "winner_counts": counts, "member_dice": member_dice,
                              "dice": sign * best.primary})


__all__ = ["RADII", "SEA_LOSSES", "SHARES", "radius_schedule", "sea"]
