"""DAG: Dense Adversary Generation (Xie et al., ICCV 2017, arXiv 1703.08603).

Paper version (not adv_lib's margin variant): adversarial labels l'_n are fixed before the loop
(untargeted: drawn uniformly among the K-1 wrong classes per pixel with ``generator``;
targeted: the target mask). At iteration m the active set T_m holds the counted pixels still
predicted as their true label (untargeted) or not yet at the target (targeted; the "true" label
there is the current prediction). Per image

    r_m = grad_x sum_{n in T_m} [ f_{l'_n}(x + r) - f_{l_n}(x + r) ],
    r'_m = gamma * r_m / ||r_m||_p      (p = inf in the paper, norm="linf"),
    r <- r + r'_m,

then the image is clamped to [0,1] (project rule). An image stops when its APSR reaches
``adv_threshold`` (1.0 = the paper's "active set empty"); finished images are frozen and the
active sub-batch shrinks every ``check_every`` iterations (:class:`ActiveSet`: one host sync per check).

Output iterate: per image the evaluated iterate of worst segmentation quality, by the rule of PGD and APGD
(:func:`lightning_seg.attacks.apgd.quality`): untargeted, the lowest hard Dice against the labels, ties broken by the
lowest pixel accuracy; targeted, the highest Dice (then pixel accuracy) against the target. Each iteration's forward
evaluates the current iterate; one more forward (no grad, the images still running at the end) evaluates the last
step, so the selection costs one forward per run. Among equally good iterates the first (smallest) one is kept.

Restarts: DAG is deterministic once its adversarial labels are drawn. ``restarts > 1`` runs it again from a random
start, uniform in the ball of radius ``gamma`` (one step) around the image, drawn with ``generator``, and, untargeted,
with newly drawn adversarial labels; per image the better output by the same rule (never worse than one run).
``iterations`` and the forward/backward counts add up all runs.

Units: ``gamma`` is in [0,1] image units. The paper's gamma = 0.5 is on the 0-255 scale, so the
default here is 0.5/255 ~ 0.00196. (adv_lib's default gamma = 0.5 is in [0,1] units, i.e. huge.)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lightning_seg.attacks._common import ActiveSet, check_inputs, check_output, finish, per_image, project_box
from lightning_seg.attacks.apgd import Best, quality
from lightning_seg.attacks.guard import AttackContext, attack_guard
from lightning_seg.attacks.measure import apsr, class_map
from lightning_seg.attacks.pgd import _random_start
from lightning_seg.attacks.result import AttackResult
from lightning_seg.attacks.synthesis import Structures


def _offer(best: Best, active: ActiveSet, delta: Tensor, z: Tensor, labels: Tensor, mask: Tensor, targeted: bool,
           structures: Structures) -> None:
    """Offer the active images' iterate ``delta`` (with its logits ``z``) to the full-batch ``best``."""
    sub = Best(active.take(best.delta), active.take(best.primary), active.take(best.secondary))
    sub.offer(delta, *quality(z, labels, mask, targeted, structures))
    best.delta = active.put(best.delta, sub.delta)
    best.primary = active.put(best.primary, sub.primary)
    best.secondary = active.put(best.secondary, sub.secondary)


def _run(ctx: AttackContext, x0: Tensor, lab: Tensor, cnt: Tensor, pm: Tensor | None, start: Tensor, *,
         targeted: bool, gamma: float, max_iter: int, norm: str, adv_threshold: float,
         generator: torch.Generator | None, check_every: int, structures: Structures,
         ) -> tuple[Best, Tensor, Tensor]:
    """One DAG run from ``start``: (per-image best iterate, iterations [B], adversarial labels)."""
    dev = x0.device
    best = Best.empty(x0)
    delta = start
    active = ActiveSet(x0.shape[0], dev, check_every)
    adv_lab = lab
    for m in range(max_iter):
        if not active.running(m):
            break
        xa, la, ca = active.take(x0), active.take(lab), active.take(cnt)
        d = active.take(delta).detach().clone().requires_grad_(True)
        z = ctx.forward(xa + d)
        if m == 0:
            check_output(z, la)
            K = int(z.shape[1])
            if not targeted:
                if K < 2:
                    raise ValueError("untargeted DAG needs at least 2 classes")
                # uniform over the K-1 wrong classes, fixed for the whole run
                off = torch.randint(1, K, lab.shape, generator=generator, device=dev)
                adv_lab = (lab + off) % K
        _offer(best, active, d.detach(), z.detach(), la, ca, targeted, structures)
        pred = class_map(z).detach()
        if targeted:
            on = ca & (pred != la)
            src, dst = pred, la
        else:
            on = ca & (pred == la)
            src, dst = la, active.take(adv_lab)
        gain = z.gather(1, dst.unsqueeze(1)).squeeze(1) - z.gather(1, src.unsqueeze(1)).squeeze(1)
        r = ctx.grad((gain * on).sum(), d)
        go = active.step(apsr(pred, la, ca, targeted) >= adv_threshold)
        n = r.flatten(1).abs().amax(1) if norm == "linf" else r.flatten(1).norm(dim=1)
        scale = torch.where(go & (n > 0), gamma / n.clamp_min(1e-30), torch.zeros_like(n))
        delta = active.put(delta, project_box(xa, d.detach() + per_image(scale) * r,
                                              None if pm is None else active.take(pm)))
    # the last step of the images still running (finished images did not move since their last forward)
    da = active.take(delta).detach()
    with torch.no_grad():
        z = ctx.forward(active.take(x0) + da)
    check_output(z, lab)
    _offer(best, active, da, z, active.take(lab), active.take(cnt), targeted, structures)
    return best, active.iterations, adv_lab


def dag(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    mask: Tensor | None = None,
    perturbation_mask: Tensor | None = None,
    targeted: bool = False,
    gamma: float = 0.5 / 255,
    max_iter: int = 200,
    norm: Literal["linf", "l2"] = "linf",
    adv_threshold: float = 1.0,
    restarts: int = 1,
    structures: Structures = None,
    generator: torch.Generator | None = None,
    check_every: int = 10,
) -> AttackResult:
    """Dense Adversary Generation (Xie et al. 2017).

    Args:
        model: images [B,C,H,W] in [0,1] -> logits [B,K,h,w]. labels/mask are [B,h,w].
        labels: ground truth (untargeted) or target mask (targeted), long [B,h,w].
        gamma: step length in [0,1] units (paper 0.5 on 0-255 => 0.5/255 here).
        max_iter: M_0 (200 for segmentation in the paper), per run.
        norm: norm used to normalise r_m per image ("linf" in the paper, "l2" in the medical port).
        adv_threshold: stop an image when its APSR >= this (1.0 = active set empty).
        restarts: runs; the later ones from a random start (module docstring).
        structures: unions of classes for the Dice of the output selection (None: each foreground class).
        generator: draws the random adversarial labels (untargeted) and the restarts' random starts; must be on the
            input device.

    Returns:
        AttackResult of the best iterate (module docstring); success = APSR >= adv_threshold; iou/pixel_acc vs
        ``labels``; extras ``dice`` (the selection Dice of the returned iterate).
    """
    if gamma <= 0 or max_iter < 0 or check_every < 1:
        raise ValueError("gamma must be > 0, max_iter >= 0, check_every >= 1")
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if restarts < 1:
        raise ValueError(f"dag: restarts must be >= 1, got {restarts}")
    x0, lab, cnt, pm = check_inputs(images, labels, mask, perturbation_mask)
    with attack_guard(model) as ctx:
        best = Best.empty(x0)
        iterations = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
        adv_lab = lab
        for r in range(restarts):
            start = torch.zeros_like(x0)
            if r > 0:
                start = project_box(x0, _random_start(x0, gamma, norm, generator), pm)
            run, iters, labs = _run(ctx, x0, lab, cnt, pm, start, targeted=targeted, gamma=gamma, max_iter=max_iter,
                                    norm=norm, adv_threshold=adv_threshold, generator=generator,
                                    check_every=check_every, structures=structures)
            better = best.merge(run)
            adv_lab = labs if r == 0 else torch.where(better.view(-1, 1, 1), labs, adv_lab)
            iterations = iterations + iters
        dice = -best.primary if targeted else best.primary
        extras = {"gamma": gamma, "norm": norm, "dice": dice, "restarts": restarts}
        if not targeted:
            extras["adversarial_labels"] = adv_lab
        return finish(ctx, x0, best.delta, lab, cnt, targeted=targeted, iterations=iterations, criterion="apsr",
                      threshold=adv_threshold, extras=extras)


__all__ = ["dag"]
