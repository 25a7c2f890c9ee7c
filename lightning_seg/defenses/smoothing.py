"""Spatial smoothing defenses: median filter and Gaussian blur (feature squeezing, Xu, Evans, Qi, NDSS 2018:
median smoothing; Gaussian sigma in {0.5, 1, 2}).

Both pad with ``reflect`` (mirror without repeating the edge pixel: ``d c b | a b c d``, numpy
``reflect`` = scipy.ndimage ``mirror``), so the output keeps the input size. Both are
differentiable (median routes the gradient to the selected pixel), so no BPDA is required, but
BPDA-identity is still a valid (often stronger) adaptive attack.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_seg.defenses.base import Defense, check_images, register_defense, signature_defaults


def _check_pad(x: Tensor, pad: int, who: str) -> None:
    h, w = x.shape[-2:]
    if pad >= h or pad >= w:
        raise ValueError(f"{who}: reflect padding {pad} needs images larger than {pad} px, got {h}x{w}; reduce the kernel.")


def median_filter(x: Tensor, kernel_size: int = 3) -> Tensor:
    """k x k median filter per channel of ``x`` ``[B,C,H,W]``; ``kernel_size`` odd >= 1."""
    check_images(x, "median_filter")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"median kernel_size={kernel_size!r} must be an odd int >= 1 (e.g. 3 or 5).")
    if kernel_size == 1:
        return x
    p = kernel_size // 2
    _check_pad(x, p, "median_filter")
    xp = F.pad(x, (p, p, p, p), mode="reflect")
    patches = xp.unfold(2, kernel_size, 1).unfold(3, kernel_size, 1)  # [B,C,H,W,k,k]
    return patches.reshape(*x.shape, kernel_size * kernel_size).median(dim=-1).values


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, *, dtype=torch.float64, device=None) -> Tensor:
    """Normalised 1-D Gaussian taps, radius ``int(truncate * sigma + 0.5)`` (scipy.ndimage's rule)."""
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def gaussian_blur(x: Tensor, sigma: float = 1.0, truncate: float = 4.0) -> Tensor:
    """Separable Gaussian blur per channel of ``x`` ``[B,C,H,W]`` with standard deviation ``sigma`` px."""
    check_images(x, "gaussian_blur")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"gaussian sigma={sigma!r} must be a finite float > 0 (pixels).")
    k = gaussian_kernel1d(float(sigma), truncate, dtype=x.dtype, device=x.device)
    r = (k.numel() - 1) // 2
    if r == 0:
        return x
    _check_pad(x, r, "gaussian_blur")
    b, c, h, w = x.shape
    y = F.pad(x.reshape(b * c, 1, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1))  # horizontal pass
    y = F.conv2d(y, k.view(1, 1, -1, 1))  # vertical pass
    return y.reshape(b, c, h, w)


_MEDIAN = signature_defaults(median_filter)
_GAUSSIAN = signature_defaults(gaussian_blur)


@register_defense("median")
class MedianFilter(Defense):
    """Median smoothing module; see :func:`median_filter`."""


    def __init__(self, kernel_size: int = _MEDIAN["kernel_size"]) -> None:
        super().__init__()
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"median kernel_size={kernel_size!r} must be an odd int >= 1 (e.g. 3 or 5).")
        self.kernel_size = kernel_size

    def forward(self, x: Tensor, rounding: str | None = None) -> Tensor:
        return median_filter(x, self.kernel_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


@register_defense("gaussian")
class GaussianBlur(Defense):
    """Gaussian smoothing module; see :func:`gaussian_blur`."""


    def __init__(self, sigma: float = _GAUSSIAN["sigma"], truncate: float = _GAUSSIAN["truncate"]) -> None:
        super().__init__()
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"gaussian sigma={sigma!r} must be a finite float > 0 (pixels).")
        self.sigma, self.truncate = float(sigma), float(truncate)

    def forward(self, x: Tensor, rounding: str | None = None) -> Tensor:
        return gaussian_blur(x, self.sigma, self.truncate)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, truncate={self.truncate}"
