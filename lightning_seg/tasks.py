"""Segmentation tasks: class names and the anatomical structures that metrics report.

``Task.class_names`` is the one name of each class index, used wherever classes are named (W&B mask overlays,
tables). Structures are unions of classes. For glaucoma ``disc_cup`` the model predicts one index map
{0 background, 1 rim, 2 cup} (a softmax keeps cup inside disc by construction), while metrics
and the Dice loss use the two clinical binary structures disc = {rim, cup} and cup = {cup}
(disc = mask >= 1, cup = mask == 2, as the REFUGE challenge scores them; not a 3-class mean).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Task:
    name: str
    class_names: tuple[str, ...]  # index -> name
    structures: tuple[tuple[str, tuple[int, ...]], ...]  # (structure name, class ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def structure_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.structures)

    def structure_masks(self, labels: Tensor) -> Tensor:
        """Class-index map [B, H, W] -> binary structure maps [B, S, H, W] (long, for torchmetrics)."""
        maps = [torch.isin(labels, torch.tensor(ids, device=labels.device)) for _, ids in self.structures]
        return torch.stack(maps, dim=1).long()

    def structure_probs(self, probs: Tensor) -> Tensor:
        """Class probabilities [B, K, H, W] -> structure probabilities [B, S, H, W] (sums over member classes)."""
        return torch.stack([probs[:, list(ids)].sum(dim=1) for _, ids in self.structures], dim=1)


TASKS: dict[str, Task] = {
    "lesion": Task("lesion", ("background", "lesion"), (("lesion", (1,)),)),
    "disc": Task("disc", ("background", "disc"), (("disc", (1,)),)),
    "disc_cup": Task("disc_cup", ("background", "rim", "cup"), (("disc", (1, 2)), ("cup", (2,)))),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown task {name!r}.{hint} Tasks: {', '.join(TASKS)}.")
    return TASKS[name]
