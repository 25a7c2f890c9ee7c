"""Square Attack, Linf (Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020), adapted to segmentation.

A query-based (score-based black-box) attack: it only calls the model's forward, never its gradient, so it is the
black-box reference of the sanity check "a black-box attack is not stronger than the white-box one" (AutoAttack runs
it for the same reason). Random search, per image:

- start: vertical stripes, ``x0 + eps * s`` with one random sign ``s`` per channel and image column (clipped to [0,1]);
- at query i: a square window of side ``h_i = round(sqrt(p_i * H * W))`` (at least 1, at most ``min(H, W) - 1``) at a
  random position; inside it the perturbation is set to ``+eps`` or ``-eps``, one random sign per channel (the
  paper's update: the window's values move to a vertex of the ball); outside it nothing changes;
- the candidate is kept when its score is better than the image's current one, else dropped.

``p_i`` follows the paper's schedule: ``p_init`` halves at query 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a
10,000-query budget (rescaled to ``steps`` queries).

Score (segmentation): the output-selection rule of :func:`lightning_seg.attacks.apgd.quality`, i.e. the quality the
untargeted evaluation reports: the hard Dice against the labels (lower is better for the attacker), ties broken by a
continuous ``loss`` of :mod:`lightning_seg.attacks.seg_losses` (higher is better; ``margin`` by default, as the
margin loss of the paper), so that the search moves on Dice plateaus; targeted: the Dice against the target (higher is
better), ties by the negated loss towards it. Everything is per image: each image draws its own windows and signs
and keeps its own candidate; images never couple. An untargeted image at Dice 0 (targeted: Dice 1 against the target)
is finished and is no longer queried: every ``check_every`` queries the batch shrinks to the unfinished images (one
host sync per check), as the original queries only the images not fooled yet.

Cost: one forward per active image and query, plus the start and the final forward; no backward.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from lightning_seg.attacks._common import check_inputs, check_output, finish, per_image, project_box
from lightning_seg.attacks.apgd import lex_better, make_objective, quality
from lightning_seg.attacks.guard import attack_guard
from lightning_seg.attacks.result import AttackResult
from lightning_seg.attacks.seg_losses import Loss
from lightning_seg.attacks.synthesis import Structures

# Andriushchenko et al. 2020 (their code's p_selection): query (of 10,000) after which p halves again
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(p_init: float, query: int, steps: int) -> float:
    """The share of the image changed at ``query`` (0-based) of ``steps``: ``p_init`` halved once per passed entry of
    the paper's schedule, rescaled from 10,000 queries to ``steps``."""
    it = int(query / max(steps, 1) * 10000)
    return p_init / 2 ** sum(it > h for h in _HALVINGS)


def window_side(p: float, height: int, width: int) -> int:
    """Side of the square window changing a share ``p`` of the pixels, in [1, min(H, W) - 1] (1 for tiny images)."""
    side = round(math.sqrt(p * height * width))
    return max(1, min(side, min(height, width) - 1))


def square(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    mask: Tensor | None = None,
    perturbation_mask: Tensor | None = None,
    eps: float = 4 / 255,
    steps: int = 5000,
    p_init: float = 0.05,
    loss: Loss = "margin",
    targeted: bool = False,
    structures: Structures = None,
    check_every: int = 10,
    generator: torch.Generator | None = None,
    adv_threshold: float = 0.99,
) -> AttackResult:
    """Square Attack (Linf, ECCV 2020) for segmentation; see the module docstring.

    images [B,C,H,W] in [0,1]; labels long [B,h,w] (ground truth, or the target when ``targeted``); mask bool [B,h,w];
    ``perturbation_mask``: pixels the attack may change. ``eps``: Linf budget in [0,1] units (accepts 8/255).
    ``steps``: queries per image after the start (5000 as in AutoAttack). ``p_init``: initial share of changed pixels
    (0.05, the paper's Linf value). ``loss``: the tie-breaking score (a loss of
    :data:`lightning_seg.attacks.seg_losses.LOSSES`). ``structures``: unions of classes for the Dice (None: each
    foreground class). ``check_every``: queries between shrinks of the batch to its unfinished images. ``generator``:
    every random draw (stripes, windows, signs), on the input device. Success: APSR >= ``adv_threshold``. extras:
    ``dice`` (the selection Dice of the returned image), ``queries`` [B] (model queries per image, start included),
    ``eps``, ``p_init``, ``loss``.
    """
    if eps < 0 or steps < 0 or not 0.0 < p_init <= 1.0 or check_every < 1:
        raise ValueError(f"square: need eps >= 0, steps >= 0, 0 < p_init <= 1 and check_every >= 1 "
                         f"(got {eps}, {steps}, {p_init}, {check_every})")
    x0, lab, cnt, pm = check_inputs(images, labels, mask, perturbation_mask)
    objective = make_objective(loss, lab, cnt, targeted=targeted, steps=max(steps, 1), class_weights=None,
                               structures=structures)
    B, C, H, W = x0.shape
    dev = x0.device
    done_at = -1.0 if targeted else 0.0  # primary at which an image is finished: Dice 0, or Dice 1 to the target

    with attack_guard(model) as ctx:
        def score(x: Tensor, rows: Tensor, f_rows: Any) -> tuple[Tensor, Tensor]:
            """(primary, secondary) of ``x`` for the images ``rows`` (``f_rows``: their objective): lower is better
            for the attacker."""
            with torch.no_grad():
                z = ctx.forward(x)
                check_output(z, lab)
                primary, _ = quality(z, lab[rows], cnt[rows], targeted, structures)
                f = f_rows(z, 1)
            return primary, -f

        def objective_of(rows: Tensor) -> Any:
            """The tie-breaking objective of the images ``rows`` (built again only when the batch shrinks)."""
            if rows.numel() == B:
                return objective
            return make_objective(loss, lab[rows], cnt[rows], targeted=targeted, steps=max(steps, 1),
                                  class_weights=None, structures=structures)

        # vertical stripes: one sign per (image, channel, column)
        signs = torch.randint(0, 2, (B, C, 1, W), generator=generator, device=dev).to(x0.dtype) * 2 - 1
        delta = project_box(x0, (eps * signs).expand(B, C, H, W), pm)
        everyone = torch.arange(B, device=dev)
        best_p, best_s = score(x0 + delta, everyone, objective)
        f_idx = objective
        queries = torch.ones(B, dtype=torch.long, device=dev)
        idx = everyone
        rows_h = torch.arange(H, device=dev).view(1, 1, H, 1)
        rows_w = torch.arange(W, device=dev).view(1, 1, 1, W)
        for i in range(steps if eps > 0 else 0):
            if i % check_every == 0:  # shrink to the unfinished images (one host sync per check)
                kept = idx[best_p[idx] > done_at]
                if kept.numel() == 0:
                    break
                if kept.numel() != idx.numel():
                    idx, f_idx = kept, objective_of(kept)
            n = idx.numel()
            side = window_side(p_schedule(p_init, i, steps), H, W)
            top = torch.randint(0, H - side + 1, (n,), generator=generator, device=dev).view(n, 1, 1, 1)
            left = torch.randint(0, W - side + 1, (n,), generator=generator, device=dev).view(n, 1, 1, 1)
            window = (rows_h >= top) & (rows_h < top + side) & (rows_w >= left) & (rows_w < left + side)
            vertex = torch.randint(0, 2, (n, C, 1, 1), generator=generator, device=dev).to(x0.dtype) * 2 - 1
            xs = x0[idx]
            cand = project_box(xs, torch.where(window, eps * vertex, delta[idx]), None if pm is None else pm[idx])
            p_new, s_new = score(xs + cand, idx, f_idx)
            keep = lex_better(p_new, s_new, best_p[idx], best_s[idx])
            delta[idx] = torch.where(per_image(keep), cand, delta[idx])
            best_p[idx] = torch.where(keep, p_new, best_p[idx])
            best_s[idx] = torch.where(keep, s_new, best_s[idx])
            queries[idx] += 1
        dice = -best_p if targeted else best_p
        return finish(ctx, x0, delta, lab, cnt, targeted=targeted, iterations=queries - 1, criterion="apsr",
                      threshold=adv_threshold,
                      extras={"eps": eps, "p_init": p_init, "loss": loss, "dice": dice, "queries": queries})


__all__ = ["p_schedule", "square", "window_side"]
