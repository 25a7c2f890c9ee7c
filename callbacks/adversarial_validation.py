"""Runs a registered attack on a bounded number of validation / test batches and logs ``val_adv/*``.

Thin: the work is in :mod:`lightning_seg.evaluation.batch_attack`. Besides attack metrics it logs the clinical read-outs
``val_adv/clin_*`` (vCDR gt / clean / adv and screening flips at 0.6 / 0.7 for glaucoma disc_cup; relative area
change, compactness and asymmetry clean / adv for lesions), also as columns of the W&B per-image table. Metrics are
summed per rank and all-reduced in ``compute()``, which every rank calls (a collective: behind a rank-zero check the
other ranks would wait forever); only the image panels and the per-image table are logged from rank 0. Needs
``Trainer(inference_mode=False)`` for ``validate``/``test`` (every Trainer of this project is built that way).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_seg.attacks import bind_task, build_named_attack
from lightning_seg.evaluation.batch_attack import attack_batch, metric_keys, sweep_batch
from lightning_seg.metrics.per_image_means import PerImageMeans
from lightning_seg.tasks import Task


class AdversarialValidation(Callback):
    def __init__(self, attack: str = "asma", attack_sections: dict[str, Any] | None = None, target: str = "other_image",
                 every_n_epochs: int = 1, max_batches: int = 2, log_images: int = 4, eps_sweep: tuple[float, ...] = (),
                 sweep_steps: int = 10) -> None:
        if every_n_epochs < 1 or max_batches < 1:
            raise ValueError("adv_val.every_n_epochs and adv_val.max_batches must be >= 1")
        self.attack_name, self.target = attack, target
        self.every_n_epochs, self.max_batches, self.log_images = every_n_epochs, max_batches, log_images
        self.eps_sweep, self.sweep_steps = tuple(float(e) for e in eps_sweep), sweep_steps
        self.attack = build_named_attack(attack, attack_sections)  # unknown names/keys fail before training
        self.attack_sections = attack_sections  # the budget sweep's PGD takes its hyper-parameters from here too
        self.metric: PerImageMeans | None = None
        self._media: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        bind_task(self.attack, pl_module.task)
        self.metric = PerImageMeans(metric_keys(pl_module.task, self.eps_sweep)).to(pl_module.device)  # not a submodule: move it

    def _active(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        return not trainer.training and (trainer.state.fn != "fit" or trainer.current_epoch % self.every_n_epochs == 0)

    def _on_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict[str, Any], batch_idx: int) -> None:
        if batch_idx >= self.max_batches or not self._active(trainer):
            return
        images = batch["image"]
        labels = pl_module.crop_labels(images, batch["mask"])
        # data.resize=pad: padding is never perturbed nor scored; clinical read-outs in the original aspect ratio
        valid, sizes = batch.get("valid"), batch.get("orig_size")
        with torch.enable_grad():  # validation runs under no_grad; the attack needs input gradients
            out = attack_batch(self.attack, pl_module.net, images, labels, pl_module.task, self.target, valid=valid,
                               sizes=sizes)
            if out is None:
                return
            result, values = out
            values |= sweep_batch(pl_module.net, images, labels, pl_module.task, self.eps_sweep, self.sweep_steps,
                                  self.attack_sections, valid=valid)
        self.metric.update(values)
        if batch_idx == 0 and trainer.is_global_zero:
            n = self.log_images
            self._media = {"images": images[:n].detach().cpu(), "adv": result.adv[:n].cpu(), "pred": result.pred[:n].cpu(),
                           "labels": labels[:n].cpu(),
                           "values": {k: v[:n].cpu() for k, v in values.items()}, "keys": list(batch.get("key", []))[:n]}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._on_batch(trainer, pl_module, batch, batch_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._on_batch(trainer, pl_module, batch, batch_idx)

    def _flush(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self._active(trainer):
            return
        values = self.metric.compute()  # collective: all ranks
        self.metric.reset()
        pl_module.log_dict({f"{stage}/{k}": v for k, v in values.items()}, sync_dist=False)
        if trainer.is_global_zero and self._media is not None:
            _log_media(trainer, stage, self.attack_name, self._media, pl_module.task)
        self._media = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer, pl_module, "val_adv")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer, pl_module, "test_adv")


def _log_media(trainer: pl.Trainer, stage: str, attack: str, media: dict[str, Any], task: Task) -> None:
    """Panels with mask overlays and a per-image table, for W&B (other loggers: nothing)."""
    from lightning.pytorch.loggers import WandbLogger

    from lightning_seg.evaluation.wandb_log import media_table, panel_media

    loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
    if not loggers:
        return
    # table: input and adversarial image columns with overlays named by the task's classes, then the values
    panels, (cols, data) = panel_media(task, attack, media), media_table(media, task)
    for logger in loggers:
        logger.log_image(key=f"{stage}/panels", step=trainer.global_step, **panels)
        logger.log_table(key=f"{stage}/per_image", columns=cols, data=data, step=trainer.global_step)
