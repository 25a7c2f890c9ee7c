"""Toy models with closed-form minimal perturbations, for attack tests (an oracle in the spirit of adv_lib's tests).

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


class SmallUNet(nn.Module):
    """Two-level U-Net-like conv net with BatchNorm (for tests and benchmarks)."""

    def __init__(self, c: int = 8, k: int = 2) -> None:
        super().__init__()
        self.e1 = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.e2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.d1 = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, k, 1))

    def forward(self, x: Tensor) -> Tensor:
        a = self.e1(x)
        return self.d1(torch.cat([a, self.up(self.e2(a))], 1))


def synthetic_disks(n: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Synthetic "lesions": a brighter reddish disk on a noisy background; label = the disk."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = torch.rand(n, 2, generator=generator) * size * 0.5 + size * 0.25
    r = torch.rand(n, generator=generator) * size * 0.15 + size * 0.1
    lab = ((yy - c[:, :1, None]) ** 2 + (xx - c[:, 1:, None]) ** 2 <= r[:, None, None] ** 2).long()
    x = 0.35 + 0.1 * torch.rand(n, 3, size, size, generator=generator)
    x = x + lab[:, None] * torch.tensor([0.3, 0.1, 0.05]).view(1, 3, 1, 1)
    return x.clamp(0, 1), lab


def train_quick(model: nn.Module, size: int, *, steps: int = 60, batch: int = 16, lr: float = 5e-3, seed: int = 0,
                device: torch.device | str = "cpu") -> nn.Module:
    """A few Adam steps on :func:`synthetic_disks` (seconds on CPU); returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        x, y = synthetic_disks(batch, size, gen)
        loss = nn.functional.cross_entropy(model(x.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


__all__ = ["PixelLinear", "SmallUNet", "minimal_norms", "synthetic_disks", "train_quick"]
