"""SegPGD (Gu, Zhao, Tresp, Torr, ECCV 2022, arXiv 2207.12391).

``L_t = 1/|counted| [ (1 - lambda_t) sum_{p in P^T} CE_p + lambda_t sum_{p in P^F} CE_p ]`` with
``lambda_t = (t - 1) / (2T)``, t = 1..T (0 at the first step, -> 1/2), P^T / P^F the pixels whose
argmax equals / differs from the label. Targeted: labels are the target, the two weights are
swapped (pixels not yet at the target get 1 - lambda) and the loss is descended.

Not reproduced from public ports: correct/incorrect masks from max-logit values instead of argmax
indices, logits multiplied by masks instead of weighting per-pixel CE, lambda < 0 at t = 1,
swapped weights, normalisation over the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_seg.attacks._common import variant
from lightning_seg.attacks.measure import class_map
from lightning_seg.attacks.pgd import pgd, pgd_core
from lightning_seg.attacks.result import AttackResult


def segpgd_weight(logits: Tensor, labels: Tensor, t: int, steps: int, targeted: bool) -> Tensor:
    """Per-pixel SegPGD weight at 1-based step t of T = steps."""
    lam = (t - 1) / (2 * steps)
    right = class_map(logits) == labels
    w_right, w_wrong = (lam, 1 - lam) if targeted else (1 - lam, lam)
    return torch.where(right, torch.full_like(labels, 0, dtype=logits.dtype) + w_right,
                       torch.full_like(labels, 0, dtype=logits.dtype) + w_wrong)


def _run(**kwargs: Any) -> AttackResult:
    return pgd_core(**kwargs, weight_fn=segpgd_weight, name="segpgd")


segpgd = variant(pgd, "segpgd", "SegPGD attack; arguments and defaults as :func:`lightning_seg.attacks.pgd.pgd`, but "
                 "20 steps.", run=_run, steps=20)


__all__ = ["segpgd", "segpgd_weight"]
