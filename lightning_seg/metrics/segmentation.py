"""Per-stage segmentation metrics (torchmetrics) reported per anatomical structure.

Dice and IoU are per-image scores averaged over images (torchmetrics ``DiceScore`` with
``aggregation_level='samplewise'`` and ``MeanIoU``), one value per structure
(lesion; disc and cup), and their mean over structures. Keys: ``<stage>/dice_<structure>``,
``<stage>/iou_<structure>``, ``<stage>/dice``, ``<stage>/iou``.
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

    def update(self, logits: Tensor, labels: Tensor) -> None:
        pred = self.task.structure_masks(logits.argmax(dim=1))
        target = self.task.structure_masks(labels)
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


def per_image_dice(pred: Tensor, labels: Tensor, task: Task) -> Tensor:
    """Hard Dice per image and structure [B, S] from class-index maps; Dice(empty, empty) = 1."""
    p = task.structure_masks(pred).bool()
    t = task.structure_masks(labels).bool()
    inter = (p & t).sum((2, 3)).double()
    denom = (p.sum((2, 3)) + t.sum((2, 3))).double()
    return torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(denom)).float()
