"""SegmentationModule: trains a registered segmenter with Dice + cross-entropy.

Metrics are separate torchmetrics objects per stage (``train/``, ``val/``, ``test/`` keys), computed
on every rank at epoch end (``compute()`` is a collective: never behind a rank-zero check).
Hyper-parameters are stored as plain containers so checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_seg.config import OptimConfig
from lightning_seg.defenses import DefendedModel, defend
from lightning_seg.metrics.segmentation import StructureMetrics
from lightning_seg.models import build_model, center_crop
from lightning_seg.tasks import get_task
from lightning_seg.training.loss import DiceCELoss


class SegmentationModule(pl.LightningModule):
    def __init__(self, model: dict[str, Any], task: str, optim: dict[str, Any] | None = None, loss: dict[str, Any] | None = None,
                 adv_train: dict[str, Any] | None = None, defense: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.task = get_task(task)
        model = dict(model)
        net = build_model(model.pop("name", "unet"), num_classes=self.task.num_classes, **model)
        # The defense is part of the model: trained behind it, and attacks on `net` (callback, AT hook, `attack`)
        # are adaptive (BPDA by default). `defense=None` / name none: the bare network.
        self.net = defend(net, defense)
        self.optim_config = OptimConfig(**(optim or {}))  # the config schema holds the defaults
        self.criterion = DiceCELoss(self.task, **(loss or {}))
        self.adv_hook = None
        if adv_train and adv_train.get("enabled"):
            from lightning_seg.attacks import bind_task
            from lightning_seg.training.adversarial_hook import AdversarialTrainingHook

            self.adv_hook = AdversarialTrainingHook(**adv_train)
            if self.adv_hook.attack is not None:  # synthesis: its Dice drop is the reporting Dice (disc = rim + cup)
                bind_task(self.adv_hook.attack, self.task)
        # ModuleDict keys cannot be "train" (an nn.Module method), hence the prefix.
        self.stage_metrics = torch.nn.ModuleDict({f"m_{s}": StructureMetrics(self.task, s) for s in ("train", "val", "test")})

    def metrics_for(self, stage: str) -> StructureMetrics:
        return self.stage_metrics[f"m_{stage}"]  # type: ignore[return-value]

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    @property
    def base_net(self) -> torch.nn.Module:
        """The network without its input defense (what an oblivious attacker attacks)."""
        return self.net.model if isinstance(self.net, DefendedModel) else self.net

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Weights load whether or not the checkpoint was trained behind a defense: the defenses have no
        parameters, only the prefix of the network's keys differs (``net.`` vs ``net.model.``)."""
        return super().load_state_dict(_align_net_keys(state_dict, set(self.state_dict())), strict=strict, assign=assign)

    def crop_labels(self, images: Tensor, labels: Tensor) -> Tensor:
        """Labels cropped to the logits' size for these images (no forward pass needed)."""
        size = self.net.output_size(*images.shape[-2:]) if hasattr(self.net, "output_size") else images.shape[-2:]
        return center_crop(labels, *size) if tuple(size) != tuple(labels.shape[-2:]) else labels

    @staticmethod
    def align(logits: Tensor, labels: Tensor) -> Tensor:
        """Crop labels to the logits' size (valid-padding models predict a centred sub-window)."""
        if logits.shape[-2:] != labels.shape[-2:]:
            labels = center_crop(labels, *logits.shape[-2:])
        return labels

    def _shared_step(self, batch: dict[str, Any], stage: str) -> Tensor:
        images, labels = batch["image"], batch["mask"]
        logits = self(images)
        labels = self.align(logits, labels)
        # padding of data.resize=pad (valid False) counts neither in the loss nor in the metrics
        valid = batch.get("valid")
        valid = None if valid is None else self.align(logits, valid)
        loss = self.criterion(logits, labels, valid)
        self.metrics_for(stage).update(logits.detach(), labels, valid)
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, sync_dist=stage != "train", batch_size=images.shape[0])
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.adv_hook is not None:
            labels = self.crop_labels(batch["image"], batch["mask"])
            # bare net: no DDP hooks in the attack; labels change only for deforming attacks (synthesis); the padding
            # of data.resize=pad is never perturbed and does not count in the attack's loss
            images, labels, cost = self.adv_hook(self.net, batch["image"], labels, valid=batch.get("valid"))
            batch = {**batch, "image": images, "mask": labels}
            n = batch["image"].shape[0]
            self.log("train/adv_seconds", cost["adv_seconds"], on_step=False, on_epoch=True, reduce_fx="sum", batch_size=n)
            self.log("train/adv_images", cost["adv_images"], on_step=False, on_epoch=True, reduce_fx="sum", batch_size=n)
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def _log_epoch(self, stage: str) -> None:
        metrics = self.metrics_for(stage)
        values = metrics.compute()  # collective on every rank; the result is already global
        self.log_dict(values, sync_dist=False)
        metrics.reset()

    def on_train_start(self) -> None:
        self.metrics_for("val").reset()  # sanity-check batches must not leak into epoch-0 metrics

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._log_epoch("val")
        else:
            self.metrics_for("val").reset()

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> Any:
        """``optim.name`` (default AdamW) and ``optim.scheduler`` (default the step-wise warm-up cosine) of the
        ``optim`` section; see lightning_seg/training/optim.py."""
        from lightning_seg.training.optim import build_optimizer, build_scheduler

        optimizer = build_optimizer(self.parameters(), self.optim_config)
        scheduler = build_scheduler(optimizer, self.optim_config, self.trainer)
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _align_net_keys(state_dict: Any, own: set[str]) -> Any:
    bare, wrapped = "net.", "net.model."
    out = type(state_dict)()
    for key, value in state_dict.items():
        if key not in own and key.startswith(wrapped) and bare + key[len(wrapped):] in own:
            key = bare + key[len(wrapped):]
        elif key not in own and key.startswith(bare) and wrapped + key[len(bare):] in own:
            key = wrapped + key[len(bare):]
        out[key] = value
    return out


