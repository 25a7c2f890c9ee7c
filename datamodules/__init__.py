"""LightningDataModules for ISIC and glaucoma, behind a name-to-builder registry (``data=isic|glaucoma``)."""

from __future__ import annotations

from typing import Any

from lightning_seg.datamodules.base import SegmentationDataModule
from lightning_seg.datamodules.glaucoma import GlaucomaDataModule
from lightning_seg.datamodules.isic import ISICDataModule

from lightning_seg.registry import Registry

DATAMODULES: Registry[SegmentationDataModule] = Registry("data set")
DATAMODULES.register("isic")(ISICDataModule)
DATAMODULES.register("glaucoma")(GlaucomaDataModule)


def build_datamodule(name: str, /, **kwargs: Any) -> SegmentationDataModule:
    return DATAMODULES.build(name, **kwargs)


__all__ = ["DATAMODULES", "GlaucomaDataModule", "ISICDataModule", "SegmentationDataModule", "build_datamodule"]
