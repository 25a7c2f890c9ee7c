"""Per-stage segmentation metrics (torchmetrics) reported per anatomical structure.

Dice and IoU are per-image scores averaged over images (torchmetrics ``DiceScore`` with
``aggregation_level='samplewise'`` and ``MeanIoU``), one value per structure
(lesion; disc and cup), and their mean over structures. Keys: ``<stage>/dice_<structure>``,
``<stage>/iou_<structure>``, ``<stage>/dice``, ``<stage>/iou``.

Padding (``valid`` False, ``data.resize=pad``) is excluded: prediction and label are both set to background there, so
it adds nothing to the foreground intersections and unions these scores are made of (whatever the network predicts on
the padding).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics.segmentation import DiceScore, MeanIoU

from lightning_seg.tasks import Task


class StructureMetrics(nn.Module):
    """Dice and IoU per structure for one stage. ``compute()`` is a collective under DDP: call it on every rank."""

    def __init__(self, task: Task, stage: str) -> None:
        super().__init__()
        self.task, self.stage = task, stage
        n = len(task.structures)
        self.dice = DiceScore(num_classes=n, average="none", input_format="one-hot")
        self.iou = MeanIoU(num_classes=n, per_class=True, input_format="one-hot")

    def update(self, logits: Tensor, labels: Tensor, valid: Tensor | None = None) -> None:
        """``valid``: bool [B,h,w] of the pixels that count (``None``: all)."""
        pred = self.task.structure_masks(restrict(logits.argmax(dim=1), valid))
        target = self.task.structure_masks(restrict(labels, valid))
        self.dice.update(pred, target)
        self.iou.update(pred, target)

    def compute(self) -> dict[str, Tensor]:
        dice, iou = self.dice.compute().reshape(-1), self.iou.compute().reshape(-1)
        out: dict[str, Tensor] = {}
        for i, name in enumerate(self.task.structure_names):
            out[f"{self.stage}/dice_{name}"] = dice[i]
            out[f"{self.stage}/iou_{name}"] = iou[i]
        out[f"{self.stage}/dice"] = dice.nanmean()
        out[f"{self.stage}/iou"] = iou.nanmean()
        return out

    def reset(self) -> None:
        self.dice.reset()
        self.iou.reset()


def restrict(masks: Tensor, valid: Tensor | None) -> Tensor:
    """Class-index maps [B,h,w] set to background (0) where ``valid`` is False (padding); ``None``: unchanged."""
    if valid is None:
        return masks
    if valid.shape != masks.shape:
        raise ValueError(f"valid must have the masks' shape {tuple(masks.shape)}, got {tuple(valid.shape)}")
    return torch.where(valid.bool(), masks, torch.zeros_like(masks))


def per_image_dice(pred: Tensor, labels: Tensor, task: Task, valid: Tensor | None = None) -> Tensor:
    """Hard Dice per image and structure [B, S] from class-index maps; Dice(empty, empty) = 1. ``valid`` (bool
    [B,h,w]): only these pixels count (padding excluded)."""
    p = task.structure_masks(restrict(pred, valid)).bool()
    t = task.structure_masks(restrict(labels, valid)).bool()
    inter = (p & t).sum((2, 3)).double()
    denom = (p.sum((2, 3)) + t.sum((2, 3))).double()
    return torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(denom)).float()
