"""Stop a run that diverges, before a non-finite model reaches a checkpoint.

A loss that turns NaN or infinite (too large a learning rate, an exploding adversarial batch) would otherwise let
training run to the end and exit 0, and ``last.ckpt`` / ``best.ckpt`` would hold NaN weights. The guard checks the
training loss after every step and the weights (parameters and buffers) before every checkpoint is written. Each
decision is a flag reduced with the strategy on every rank (one rank's NaN stops them all, no rank is left waiting
in a collective; never behind a rank-zero check). Raising in ``on_save_checkpoint`` happens while Lightning builds
the checkpoint dict, before the file is written, so the previous, finite checkpoint stays in place.
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


def _any_rank(trainer: pl.Trainer, bad: bool, device: torch.device) -> bool:
    """``bad`` on any rank; a collective, so every rank must call it at the same point."""
    flag = torch.tensor(float(bad), device=device)
    return bool(trainer.strategy.reduce(flag, reduce_op="max"))


class DivergenceGuard(Callback):
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        bad = torch.is_tensor(loss) and not bool(torch.isfinite(loss.detach()).all())
        if _any_rank(trainer, bad, pl_module.device):
            raise DivergenceError(f"training diverged: non-finite loss at epoch {trainer.current_epoch}, batch "
                                  f"{batch_idx} (global step {trainer.global_step}); the run stopped and its "
                                  f"checkpoints hold the last finite weights; {FIX}")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        bad = [k for k, v in checkpoint["state_dict"].items()
               if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
        # buffers (BatchNorm statistics) are per rank under DDP: one rank's may blow up alone
        if _any_rank(trainer, bool(bad), pl_module.device):
            where = f" ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})" if bad else " on another rank"
            raise DivergenceError(f"training diverged: non-finite weights{where} at epoch {trainer.current_epoch} "
                                  f"(global step {trainer.global_step}); no checkpoint was written with them; {FIX}")
