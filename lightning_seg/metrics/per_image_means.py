"""A torchmetrics ``Metric`` of per-image means that is exact under DDP."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class PerImageMeans(Metric):
    """Means over images of per-image values, as sums and counts: exact under DDP whatever the number of
    batches per rank (``compute()`` all-reduces the sums; every rank must call it). NaN values (undefined
    read-outs, e.g. the compactness of an empty prediction) are skipped: each key has its own count of
    defined values; a key with none gives NaN. ``images`` counts all images."""

    full_state_update = False

    def __init__(self, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.keys = keys
        for k in keys:
            self.add_state(f"sum_{k}", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"n_{k}", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: dict[str, Tensor]) -> None:  # type: ignore[override]
        for k in self.keys:
            v = values[k].double()
            defined = ~torch.isnan(v)
            setattr(self, f"sum_{k}", getattr(self, f"sum_{k}") + torch.where(defined, v, torch.zeros_like(v)).sum())
            setattr(self, f"n_{k}", getattr(self, f"n_{k}") + defined.sum())
        self.count += values[self.keys[0]].numel()

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        out = {}
        for k in self.keys:
            n = getattr(self, f"n_{k}")
            mean = getattr(self, f"sum_{k}") / n.clamp_min(1)
            out[k] = torch.where(n > 0, mean, torch.full_like(mean, float("nan"))).float()
        return out | {"images": self.count.float()}
