"""Segmentation models behind a name-to-builder registry (``model.name=unet``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_seg.models.normalize import Normalize
from lightning_seg.models.unet import UNet, center_crop
from lightning_seg.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")


@MODELS.register("unet")
def _build_unet(**kwargs: Any) -> nn.Module:
    return UNet(**kwargs)


def build_model(name: str = "unet", **kwargs: Any) -> nn.Module:
    """Build a registered model; unknown names fail with the closest registered ones."""
    return MODELS.build(name, **kwargs)


__all__ = ["MODELS", "Normalize", "UNet", "build_model", "center_crop"]
