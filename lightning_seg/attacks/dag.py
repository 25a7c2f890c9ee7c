"""DAG: Dense Adversary Generation (Xie et al., ICCV 2017, arXiv 1703.08603), REFERENCE 2.2.

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
active sub-batch shrinks every ``check_every`` iterations (one host sync per check).

Units: ``gamma`` is in [0,1] image units. The paper's gamma = 0.5 is on the 0-255 scale, so the
default here is 0.5/255 ~ 0.00196. (adv_lib's default gamma = 0.5 is in [0,1] units, i.e. huge.)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lightning_seg.attacks._common import check_inputs, check_output, finish, per_image, project_box
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
    B = x0.shape[0]
    dev = x0.device
    with attack_guard(model) as ctx:
        delta = torch.zeros_like(x0)
        iters = torch.zeros(B, dtype=torch.long, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        idx = torch.arange(B, device=dev)
        full = True
        adv_lab = lab
        for m in range(max_iter):
            if m == 1 or (m > 0 and m % check_every == 0):
                keep = ~done[idx]
                if not bool(keep.any()):  # one sync per check
                    break
                if not bool(keep.all()):
                    idx = idx[keep]
                    full = False
            sel = (lambda t: t) if full else (lambda t: t[idx])
            xa, la, ca = sel(x0), sel(lab), sel(cnt)
            d = sel(delta).detach().clone().requires_grad_(True)
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
                active = ca & (pred != la)
                src, dst = pred, la
            else:
                active = ca & (pred == la)
                src, dst = la, sel(adv_lab)
            gain = z.gather(1, dst.unsqueeze(1)).squeeze(1) - z.gather(1, src.unsqueeze(1)).squeeze(1)
            r = ctx.grad((gain * active).sum(), d)
            fin = (apsr(pred, la, ca, targeted) >= adv_threshold) | sel(done)
            done[idx] = fin
            go = ~fin
            n = r.flatten(1).abs().amax(1) if norm == "linf" else r.flatten(1).norm(dim=1)
            scale = torch.where(go & (n > 0), gamma / n.clamp_min(1e-30), torch.zeros_like(n))
            iters[idx] = sel(iters) + go.long()
            delta[idx] = project_box(xa, d.detach() + per_image(scale) * r, None if pm is None else sel(pm))
        extras = {"gamma": gamma, "norm": norm}
        if not targeted:
            extras["adversarial_labels"] = adv_lab
        return finish(ctx, x0, delta, lab, cnt, targeted=targeted, iterations=iters, criterion="apsr",
                      threshold=adv_threshold, extras=extras)


__all__ = ["dag"]
