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

Units: ``gamma`` is in [0,1] image units. The paper's gamma = 0.5 is on the 0-255 scale, so the
default here is 0.5/255 ~ 0.00196. (adv_lib's default gamma = 0.5 is in [0,1] units, i.e. huge.)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lightning_seg.attacks._common import ActiveSet, check_inputs, check_output, finish, per_image, project_box
from lightning_seg.attacks.guard import attack_guard
from lightning_seg.attacks.measure import apsr, class_map
from lightning_seg.attacks.result import AttackResult


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
    generator: torch.Generator | None = None,
    check_every: int = 10,
) -> AttackResult:
    """Dense Adversary Generation (Xie et al. 2017).

    Args:
        model: images [B,C,H,W] in [0,1] -> logits [B,K,h,w]. labels/mask are [B,h,w].
        labels: ground truth (untargeted) or target mask (targeted), long [B,h,w].
        gamma: step length in [0,1] units (paper 0.5 on 0-255 => 0.5/255 here).
        max_iter: M_0 (200 for segmentation in the paper).
        norm: norm used to normalise r_m per image ("linf" in the paper, "l2" in the medical port).
        adv_threshold: stop an image when its APSR >= this (1.0 = active set empty).
        generator: draws the random adversarial labels (untargeted); must be on the input device.

    Returns:
        AttackResult; success = APSR >= adv_threshold; iou/pixel_acc vs ``labels``.
    """
    if gamma <= 0 or max_iter < 0 or check_every < 1:
        raise ValueError("gamma must be > 0, max_iter >= 0, check_every >= 1")
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    x0, lab, cnt, pm = check_inputs(images, labels, mask, perturbation_mask)
    dev = x0.device
    with attack_guard(model) as ctx:
        delta = torch.zeros_like(x0)
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
                    # uniform over the K-1 wrong classes, fixed for the whole attack
                    off = torch.randint(1, K, lab.shape, generator=generator, device=dev)
                    adv_lab = (lab + off) % K
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
        extras = {"gamma": gamma, "norm": norm}
        if not targeted:
            extras["adversarial_labels"] = adv_lab
        return finish(ctx, x0, delta, lab, cnt, targeted=targeted, iterations=active.iterations, criterion="apsr",
                      threshold=adv_threshold, extras=extras)


__all__ = ["dag"]
