"""The result object every attack returns: per-image outcome, norms and model-call counts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class AttackResult:
    """Per-image outcome of an attack. All tensors are detached and live on the input device.

    ``iou``/``pixel_acc`` are measured against the attack's reference labels: the target for
    targeted attacks, the ground truth for untargeted ones. ``forwards``/``backwards`` count
    samples (images) through the model, as adv_lib's ForwardCounter/BackwardCounter.
    """

    adv: Tensor  # [B,C,H,W] in [0,1]
    pred: Tensor  # [B,h,w] long
    success: Tensor  # [B] bool
    iou: Tensor  # [B] float
    pixel_acc: Tensor  # [B] float
    l2: Tensor  # [B] float, unnormalised
    linf: Tensor  # [B] float
    iterations: Tensor  # [B] long
    forwards: int
    backwards: int
    targeted: bool
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def rms(self) -> Tensor:
        """Per-value RMS of the perturbation: l2 / sqrt(numel per image), or over the values the attack could change
        (``extras["perturbed_values"]`` [B], set for padded inputs: padding is not counted)."""
        values = self.extras.get("perturbed_values")
        if values is not None:
            return self.l2 / values.to(self.l2.dtype).clamp_min(1).sqrt()
        numel = self.adv[0].numel()
        return self.l2 / math.sqrt(numel)

    def __len__(self) -> int:
        return int(self.adv.shape[0])

    def to_records(self) -> list[dict[str, Any]]:
        """One plain dict per image (Python floats/ints/bools) for CSV / JSON."""
        cols = {
            "success": self.success.cpu().tolist(),
            "iou": self.iou.cpu().tolist(),
            "pixel_acc": self.pixel_acc.cpu().tolist(),
            "l2": self.l2.cpu().tolist(),
            "rms": self.rms.cpu().tolist(),
            "linf": self.linf.cpu().tolist(),
            "iterations": self.iterations.cpu().tolist(),
        }
        n = len(self)
        return [
            {"index": i, "targeted": self.targeted, **{k: v[i] for k, v in cols.items()}} for i in range(n)
        ]

    def summary(self) -> dict[str, float]:
        """Mean / std over images of each per-image quantity, plus success rate and cost."""
        out: dict[str, float] = {"n": float(len(self)), "success_rate": self.success.float().mean().item()}
        for name in ("iou", "pixel_acc", "l2", "rms", "linf", "iterations"):
            v = getattr(self, name).to(torch.float64)
            out[f"{name}_mean"] = v.mean().item()
            out[f"{name}_std"] = v.std(unbiased=False).item() if v.numel() > 0 else float("nan")
        out["forwards"] = float(self.forwards)
        out["backwards"] = float(self.backwards)
        return out


__all__ = ["AttackResult"]
