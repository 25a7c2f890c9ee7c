"""Glaucoma optic disc / cup segmentation: REFUGE, Drishti-GS1, RIM-ONE r3/DL, ORIGA, generic folders, or synthetic fundus."""

from __future__ import annotations

from pathlib import Path

from lightning_seg.datamodules.base import Pair, SegmentationDataModule


class GlaucomaDataModule(SegmentationDataModule):
    name = "glaucoma"
    tasks = ("disc_cup", "disc")
    folder_options = ("rimone_masks", "rimone_dl_partition")  # data.options of the real layouts (discover_glaucoma)

    def synthetic_pair(self, index: int) -> Pair:
        from lightning_seg.datamodules.synthetic import synth_fundus

        return synth_fundus(index, seed=self.data_seed, size=self.image_size, task=self.task.name)

    def discover(self, root: Path):
        import difflib

        from lightning_seg.datamodules.layouts import discover_glaucoma

        from lightning_seg.config import ConfigError

        for key in self.options:
            if key not in self.folder_options:
                close = difflib.get_close_matches(key, self.folder_options, n=1)
                hint = f" Did you mean: {close[0]!r}?" if close else ""
                raise ConfigError(f"data.options.{key} is not an option of the glaucoma layouts.{hint} Options: "
                                  f"{', '.join(self.folder_options)}")
        return discover_glaucoma(root, self.layout, **self.options)
