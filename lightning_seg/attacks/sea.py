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
holds every member's Dice (NaN where early stopping skipped the member for that image).

Early stopping of broken images (untargeted; SEA, like AutoAttack, runs a later member only on the points the earlier
ones have not broken yet): the members run one after the other, and before each later member the images whose
worst-case Dice so far is at most ``early_stop`` are dropped from its batch (sub-batching by index, so the skipped
images cost no forward or backward; one host sync per member). The default ``early_stop = 0.0`` drops exactly the
images already at Dice 0, the lowest value a later member could reach: the per-image worst-case Dice, the winner and
the winner counts are then the same as without early stopping (a member that did not run for an image cannot win it;
only the tie-break by pixel accuracy among Dice-0 results is not explored further). ``early_stop=None`` runs every
member on every image; a larger value (e.g. 0.05) trades a little worst-case strength for more speed. Targeted SEA
always runs every member. ``forwards`` / ``backwards`` / ``iterations`` count the work really done.
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
    early_stop: float | None = 0.0,
) -> AttackResult:
    """SEA: per image, the worst case over APGD members with the losses ``losses``, each run with the staged radius
    2 eps -> 1.5 eps -> eps over ``steps`` iterations (module docstring).

    Arguments as :func:`lightning_seg.attacks.apgd.apgd`; ``alpha``: the initial step at radius eps (None: 2 eps, the
    paper's), scaled with the radius in the larger stages. ``random_start``: each member starts at its own uniform
    draw in the 2 eps-ball (``generator``, on the input device); otherwise at the clean image. ``iterations``: the
    gradient steps per image over all members (at most ``len(losses) * steps``: fewer for images that early
    stopping dropped). ``early_stop``: Dice at or below which an image counts as broken and skips the later members
    (module docstring; None: never).
    """
    check_budget("sea", eps, steps, alpha, momentum, rho, norm)
    if not losses:
        raise ValueError("sea: losses must name at least one member loss")
    x0, lab, cnt, pm = check_inputs(images, labels, mask, perturbation_mask)

    stages = [(r, n) for r, n in radius_schedule(eps, steps) if n > 0] or [(eps, 0)]
    stages[-1] = (eps, stages[-1][1])  # the output iterates lie in the eps-ball
    B = x0.shape[0]
    members: list[Best] = []
    iters = torch.zeros(B, dtype=torch.long, device=x0.device)
    ran = []  # per member: bool [B], the images it ran on
    with attack_guard(model) as ctx:
        best = Best.empty(x0)
        winner = torch.zeros(B, dtype=torch.long, device=x0.device)
        idx: Tensor | None = None  # None: the whole batch
        for m, loss in enumerate(losses):
            if m > 0 and early_stop is not None and not targeted:
                open_ = best.primary > early_stop
                n_open = int(open_.sum())  # one host sync per member
                idx = None if n_open == B else open_.nonzero().squeeze(1)
            # the random start is drawn for the whole batch (then indexed): each image gets the same draw with or
            # without early stopping, so the members' results do not depend on which images were dropped
            delta_full = torch.zeros_like(x0)
            if random_start and eps > 0:
                delta_full = _random_start(x0, stages[0][0], norm, generator)
            if idx is not None and idx.numel() == 0:  # every image broken: nothing left to attack
                members.append(Best.empty(x0))
                ran.append(torch.zeros(B, dtype=torch.bool, device=x0.device))
                continue
            rows = idx

            def sub(t: Tensor, rows: Tensor | None = rows) -> Tensor:
                return t if rows is None else t[rows]

            xs, ls, cs = sub(x0), sub(lab), sub(cnt)
            ps = None if pm is None else sub(pm)
            objective = make_objective(loss, ls, cs, targeted=targeted, steps=steps, class_weights=class_weights,
                                       structures=structures)
            delta = sub(delta_full)
            for radius, n in stages:
                eta0 = 2.0 * radius if alpha is None else float(alpha) * (radius / eps if eps > 0 else 1.0)
                run, _ = apgd_run(ctx, xs, ls, cs, ps, start=delta, eps=radius,
                                  norm=norm, steps=n, objective=objective, eta0=eta0, momentum=momentum, rho=rho,
                                  targeted=targeted, structures=structures)
                delta = run.delta
            if idx is not None:  # back to the full batch: skipped images keep +inf and cannot win
                full = Best.empty(x0)
                full.delta[idx], full.primary[idx], full.secondary[idx] = run.delta, run.primary, run.secondary
                run = full
                mine = torch.zeros(B, dtype=torch.bool, device=x0.device)
                mine[idx] = True
            else:
                mine = torch.ones(B, dtype=torch.bool, device=x0.device)
            members.append(run)
            ran.append(mine)
            iters = iters + mine.long() * steps
            winner = torch.where(best.merge(run), torch.full_like(winner, m), winner)
        sign = -1.0 if targeted else 1.0
        member_dice = torch.stack([torch.where(r, sign * b.primary, torch.full_like(b.primary, float("nan")))
                                   for b, r in zip(members, ran)], 1)
        counts: dict[str, int] = {}
        for name, c in zip(losses, torch.bincount(winner, minlength=len(losses)).tolist()):  # one sync, at the end
            counts[name] = counts.get(name, 0) + c
        return finish(ctx, x0, best.delta, lab, cnt, targeted=targeted, iterations=iters, criterion="apsr",
                      threshold=adv_threshold,
                      extras={"eps": eps, "norm": norm, "members": tuple(losses), "winner": winner,
                              "winner_counts": counts, "member_dice": member_dice,
                              "dice": sign * best.primary, "early_stop": early_stop,
                              "member_images": torch.stack(ran, 1)})


__all__ = ["RADII", "SEA_LOSSES", "SHARES", "radius_schedule", "sea"]
