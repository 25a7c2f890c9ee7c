"""CosPGD (Agnihotri, Jung, Keuper, ICML 2024; package ``cospgd`` 0.1.3), REFERENCE 2.5.

Per-pixel detached weight ``w_p = cos(softmax(z_p), onehot(y_p)) = softmax(z_p)_y / ||softmax(z_p)||_2``
(softmax as in the package code; the SEA restatement uses sigmoid). Untargeted:
``L = mean_p w_p CE_p`` ascended; targeted: weight ``1 - w_p`` with the target labels, descended.
Ignored pixels are excluded through ``mask`` (the package clamps labels to K-1 instead, which
silently turns ignore index 255 into the last class: not reproduced).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lightning_seg.attacks.pgd import pgd_core
from lightning_seg.attacks.result import AttackResult


def cospgd_weight(logits: Tensor, labels: Tensor, t: int, steps: int, targeted: bool) -> Tensor:
    """Per-pixel CosPGD weight (detached by the caller)."""
    prob = logits.softmax(1)
    py = prob.gather(1, labels.unsqueeze(1)).squeeze(1)
    w = py / prob.norm(dim=1).clamp_min(1e-12)
    return 1 - w if targeted else w


def cospgd(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    mask: Tensor | None = None,
    perturbation_mask: Tensor | None = None,
    eps: float = 4 / 255,
    alpha: float = 1 / 255,
    steps: int = 20,
    norm: Literal["linf", "l2"] = "linf",
    targeted: bool = False,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    adv_threshold: float = 0.99,
) -> AttackResult:
    """CosPGD attack; arguments as :func:`lightning_seg.attacks.pgd.pgd`."""
    return pgd_core(model, images, labels, mask=mask, perturbation_mask=perturbation_mask, eps=eps, alpha=alpha,
                    steps=steps, norm=norm, targeted=targeted, random_start=random_start, generator=generator,
                    adv_threshold=adv_threshold, weight_fn=cospgd_weight, name="cospgd")


__all__ = ["cospgd", "cospgd_weight"]
