"""Training loss: cross-entropy + soft Dice over the task's structures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.config import LossConfig
from lightning_seg.tasks import Task

_DEFAULT = LossConfig()  # the loss weights' defaults live in the config schema
_IGNORE = -100  # F.cross_entropy's default ignore_index


def soft_dice_loss(probs: Tensor, targets: Tensor, eps: float = 1.0) -> Tensor:
    """1 - mean soft Dice; probs and binary targets [B, S, H, W]. Per image and structure, then averaged.

    ``eps`` smooths empty structures so that an empty target predicted empty costs ~0, not NaN.
    """
    dims = (2, 3)
    inter = (probs * targets).sum(dims)
    denom = probs.sum(dims) + targets.sum(dims)
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


class DiceCELoss(nn.Module):
    def __init__(self, task: Task, dice_weight: float = _DEFAULT.dice_weight, ce_weight: float = _DEFAULT.ce_weight) -> None:
        super().__init__()
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got dice={dice_weight}, ce={ce_weight}")
        self.task, self.dice_weight, self.ce_weight = task, dice_weight, ce_weight

    def forward(self, logits: Tensor, labels: Tensor, valid: Tensor | None = None) -> Tensor:
        """Loss of ``logits`` [B,K,h,w] against ``labels`` long [B,h,w]. ``valid`` (bool [B,h,w], optional): the pixels
        that count; padding (False) adds nothing to either term (cross-entropy is the mean over valid pixels, the soft
        Dice sees neither probabilities nor labels there). ``None``: every pixel counts."""
        loss = logits.new_zeros(())
        if valid is not None and valid.shape != labels.shape:
            raise ValueError(f"valid must have the labels' shape {tuple(labels.shape)}, got {tuple(valid.shape)}")
        if self.ce_weight:
            # padded pixels get cross_entropy's ignore index: the mean is over valid pixels, and without padding the
            # call is the plain one (bit-identical)
            ce_labels = labels if valid is None else torch.where(valid, labels, torch.full_like(labels, _IGNORE))
            loss = loss + self.ce_weight * F.cross_entropy(logits, ce_labels, ignore_index=_IGNORE)
        if self.dice_weight:
            probs = self.task.structure_probs(torch.softmax(logits, dim=1))
            targets = self.task.structure_masks(labels).to(probs.dtype)
            if valid is not None:
                w = valid.unsqueeze(1).to(probs.dtype)
                probs, targets = probs * w, targets * w
            loss = loss + self.dice_weight * soft_dice_loss(probs, targets)
        return loss
