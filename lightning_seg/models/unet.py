"""A readable 2-D U-Net (Ronneberger et al., MICCAI 2015) with configurable width, depth and padding.

Input: images in [0, 1], [B, C, H, W] (normalised inside the model). Output: logits [B, K, h, w].
With ``padding="same"`` h, w = H, W (H and W must be divisible by 2**depth). With ``padding="valid"``
the convolutions are unpadded as in the original paper and the ASMA reference SimpleUnet (572 -> 388);
skip connections are centre-cropped and ``output_size`` tells the label crop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_seg.config import ModelConfig

# The project's U-Net defaults live in the config schema (``model=unet``); UNet() builds the same network.
_DEFAULT = ModelConfig()

from lightning_seg.models.normalize import Normalize


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"Unknown norm {kind!r}: use 'batch', 'group' or 'none'")


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, pad: int, norm: str) -> None:
        bias = norm == "none"  # a bias before a norm layer is redundant
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=pad, bias=bias), _norm(norm, cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=pad, bias=bias), _norm(norm, cout), nn.ReLU(inplace=True),
        )


def center_crop(x: Tensor, height: int, width: int) -> Tensor:
    """Crop the last two dims of ``x`` to (height, width) around the centre."""
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        width: int = _DEFAULT.width,
        depth: int = _DEFAULT.depth,
        padding: str = _DEFAULT.padding,
        norm: str = _DEFAULT.norm,
        upsample: str = _DEFAULT.upsample,
        mean: Sequence[float] = tuple(_DEFAULT.mean),
        std: Sequence[float] = tuple(_DEFAULT.std),
    ) -> None:
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        if upsample not in ("transpose", "bilinear"):
            raise ValueError(f"upsample must be 'transpose' or 'bilinear', got {upsample!r}")
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be >= 1, got depth={depth}, width={width}")
        if len(mean) != in_channels:
            raise ValueError(f"mean/std have {len(mean)} channels but in_channels={in_channels}")
        self.in_channels, self.num_classes, self.depth, self.padding = in_channels, num_classes, depth, padding
        pad = 1 if padding == "same" else 0
        chans = [width * 2**i for i in range(depth + 1)]
        self.normalize = Normalize(mean, std)
        self.down = nn.ModuleList([DoubleConv(in_channels, chans[0], pad, norm)])
        self.down.extend(DoubleConv(chans[i], chans[i + 1], pad, norm) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(depth)):
            if upsample == "transpose":
                self.up.append(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2))
            else:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(chans[i + 1], chans[i], 1)))
            self.dec.append(DoubleConv(2 * chans[i], chans[i], pad, norm))
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == "same" and (x.shape[-2] % 2**self.depth or x.shape[-1] % 2**self.depth):
            raise ValueError(
                f"UNet(depth={self.depth}, padding='same') needs H and W divisible by {2**self.depth}, got {tuple(x.shape[-2:])}: "
                "resize/pad the data (data.image_size) or change model.depth"
            )
        x = self.normalize(x)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.up, self.dec):
            x = up(x)
            skip = skips.pop()
            if skip.shape[-2:] != x.shape[-2:]:
                skip = center_crop(skip, *x.shape[-2:])
            x = dec(torch.cat([skip, x], dim=1))
        return self.head(x)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the logits for an input of (height, width)."""
        if self.padding == "same":
            return height, width
        h, w = height, width
        for _ in range(self.depth):
            h, w = (h - 4) // 2, (w - 4) // 2
        h, w = h - 4, w - 4
        for _ in range(self.depth):
            h, w = 2 * h - 4, 2 * w - 4
        if h <= 0 or w <= 0:
            raise ValueError(f"input {height}x{width} is too small for a valid-padding UNet of depth {self.depth}")
        return h, w
