"""Glaucoma optic disc / cup segmentation: REFUGE, Drishti-GS1, RIM-ONE r3/DL, ORIGA, generic folders, or synthetic fundus."""

from __future__ import annotations

from pathlib import Path

from lightning_seg.datamodules.base import Pair, SegmentationDataModule


class GlaucomaDataModule(SegmentationDataModule):
    name = "glaucoma"
    tasks = ("disc_cup", "disc")

    def synthetic_pair(self, index: int) -> Pair:
        from lightning_seg.datamodules.synthetic import synth_fundus

        return synth_fundus(index, seed=self.data_seed, size=self.image_size, task=self.task.name)

    def discover(self, root: Path):
        from lightning_seg.datamodules.layouts import discover_glaucoma

        return discover_glaucoma(root, self.layout, **self.options)
