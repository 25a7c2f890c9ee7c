"""CosPGD (Agnihotri, Jung, Keuper, ICML 2024; package ``cospgd`` 0.1.3).

Per-pixel detached weight ``w_p = cos(softmax(z_p), onehot(y_p)) = softmax(z_p)_y / ||softmax(z_p)||_2``
(softmax as in the package code; the SEA restatement uses sigmoid). Untargeted:
``L = mean_p w_p CE_p`` ascended; targeted: weight ``1 - w_p`` with the target labels, descended.
Ignored pixels are excluded through ``mask`` (the package clamps labels to K-1 instead, which
silently turns ignore index 255 into the last class: not reproduced).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lightning_seg.attacks._common import variant
from lightning_seg.attacks.pgd import pgd, pgd_core
from lightning_seg.attacks.result import AttackResult


def cospgd_weight(logits: Tensor, labels: Tensor, t: int, steps: int, targeted: bool) -> Tensor:
    """Per-pixel CosPGD weight (detached by the caller)."""
    prob = logits.softmax(1)
    py = prob.gather(1, labels.unsqueeze(1)).squeeze(1)
    w = py / prob.norm(dim=1).clamp_min(1e-12)
    return 1 - w if targeted else w


def _run(**kwargs: Any) -> AttackResult:
    return pgd_core(**kwargs, weight_fn=cospgd_weight, name="cospgd")


cospgd = variant(pgd, "cospgd", "CosPGD attack; arguments and defaults as :func:`lightning_seg.attacks.pgd.pgd`, but "
                 "20 steps.", run=_run, steps=20)


__all__ = ["cospgd", "cospgd_weight"]
