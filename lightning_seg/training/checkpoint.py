"""Checkpoints: the run config stored inside them, and safe loading (``weights_only=True``: no unpickling of code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_seg.training.module import SegmentationModule

CONFIG_KEY = "lightning_seg_config"


class StoreConfig(Callback):
    """Puts the resolved run config into every checkpoint (plain containers: weights_only-safe)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.config


def load_checkpoint_config(path: Path) -> dict[str, Any] | None:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt.get(CONFIG_KEY)


def load_module(path: str, map_location: str | torch.device = "cpu", defense: Any = "checkpoint") -> SegmentationModule:
    """Load a checkpoint written by ``fit`` safely (``weights_only=True``: no arbitrary unpickling).

    ``defense``: ``"checkpoint"`` keeps the defense the model was trained behind; a defense config section
    (plain mapping, ``None`` = bare network) puts the weights behind that defense instead."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a lightning_seg checkpoint (no hyper_parameters/state_dict)")
    hparams = dict(ckpt["hyper_parameters"])
    if not isinstance(defense, str):
        hparams["defense"] = defense
    module = SegmentationModule(**hparams)
    module.load_state_dict(ckpt["state_dict"])
    return module.eval()
