"""Stop a run that diverges, before a non-finite model reaches a checkpoint.

A loss that turns NaN or infinite (too large a learning rate, an exploding adversarial batch) would otherwise let
training run to the end and exit 0, and ``last.ckpt`` / ``best.ckpt`` would hold NaN weights. The guard checks the
training loss after every step, on every rank together (one rank's NaN stops them all; the flag is reduced with the
strategy, never behind a rank-zero check), and refuses to write a checkpoint whose weights are not all finite.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_seg.config import ConfigError

FIX = "lower optim.lr or clip gradients with trainer.gradient_clip_val=1.0"


class DivergenceError(ConfigError):
    """Training diverged; reported as one line with the settings that fix it (exit 2 on the command line)."""


class DivergenceGuard(Callback):
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        bad = (~torch.isfinite(loss.detach())).any().float()
        bad = trainer.strategy.reduce(bad, reduce_op="max")  # collective on every rank
        if bool(bad):
            raise DivergenceError(f"training diverged: non-finite loss at epoch {trainer.current_epoch}, step "
                                  f"{trainer.global_step}; the run stopped and its checkpoints hold the last finite "
                                  f"weights; {FIX}")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        bad = [k for k, v in checkpoint["state_dict"].items()
               if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:  # raising here keeps Lightning from writing the file
            raise DivergenceError(f"training diverged: non-finite weights ({', '.join(bad[:3])}"
                                  f"{', ...' if len(bad) > 3 else ''}) at epoch {trainer.current_epoch}; no checkpoint "
                                  f"was written with them; {FIX}")
