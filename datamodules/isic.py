"""ISIC skin-lesion segmentation: real ISIC 2016/2017/2018 Task 1 folders or the embedded synthetic set."""

from __future__ import annotations

from pathlib import Path

from lightning_seg.datamodules.base import Pair, SegmentationDataModule


class ISICDataModule(SegmentationDataModule):
    name = "isic"
    tasks = ("lesion",)

    synthetic_options = ("contrast",)  # e.g. data.options.contrast=[0.3,1.0]: fainter lesions

    def synthetic_pair(self, index: int) -> Pair:
        from lightning_seg.datamodules.synthetic import synth_isic

        return synth_isic(index, seed=self.data_seed, size=self.image_size, **self.options)

    def discover(self, root: Path):
        from lightning_seg.datamodules.layouts import discover_isic

        from lightning_seg.config import ConfigError

        if self.options:
            raise ConfigError(f"data.options {sorted(self.options)} are not used by the ISIC layouts; remove them")
        return discover_isic(root, self.layout)
