"""Toy models with closed-form minimal perturbations, for attack tests (REFERENCE 2.10).

``PixelLinear``: a per-pixel linear 2-class classifier (1x1 convolution). With
``d_p = w . x_p + b`` the logits are ``[-d_p/2, d_p/2]`` ("symmetric", so the raw gradient of
either logit is parallel to the decision normal w) or ``[0, d_p]``; pixel p is class 1 iff
d_p > 0. The minimal change flipping pixel p is ``|d_p| / ||w||_2`` in L2 and
``|d_p| / ||w||_1`` in L-infinity (projection on the hyperplane), and pixels are independent.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PixelLinear(nn.Module):
    """Per-pixel linear classifier; ``heads=1`` returns the sigmoid logit d only."""

    def __init__(self, w: Tensor, b: float, *, symmetric: bool = True, heads: int = 2) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone().to(torch.float32))
        self.b = nn.Parameter(torch.tensor(float(b)))
        self.symmetric = symmetric
        self.heads = heads

    def margin(self, x: Tensor) -> Tensor:
        """d = w . x + b per pixel, [B,H,W]."""
        return torch.einsum("bchw,c->bhw", x, self.w) + self.b

    def forward(self, x: Tensor) -> Tensor:
        d = self.margin(x).unsqueeze(1)
        if self.heads == 1:
            return d
        if self.symmetric:
            return torch.cat([-d / 2, d / 2], 1)
        return torch.cat([torch.zeros_like(d), d], 1)


def minimal_norms(model: PixelLinear, x: Tensor, flip: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image optimal (L2, Linf) norms to flip the pixels in ``flip`` [B,H,W] (ignoring the box)."""
    with torch.no_grad():
        d = model.margin(x).abs() * flip
        l2 = d.flatten(1).norm(dim=1) / model.w.norm(p=2)
        linf = d.flatten(1).amax(dim=1) / model.w.norm(p=1)
    return l2, linf


__all__ = ["PixelLinear", "minimal_norms"]
