"""Builders of the Trainer, its logger and callbacks, the datamodule and the LightningModule from a run config.

Every Trainer is built here with ``inference_mode=False``: attacks need input gradients during validate and test,
and ``torch.inference_mode`` tensors cannot require them. ``use_distributed_sampler=False``: the datamodules' own
sampler splits ranks without padding evaluation sets, so multi-process metrics equal single-process ones.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig

from lightning_seg.config import to_plain
from lightning_seg.datamodules import SegmentationDataModule, build_datamodule
from lightning_seg.training.module import SegmentationModule


def build_datamodule_from(cfg: DictConfig) -> SegmentationDataModule:
    data = to_plain(cfg.data)
    return build_datamodule(data.pop("name"), seed=cfg.seed, **data)


def defense_hparams(cfg: DictConfig) -> dict[str, Any] | None:
    """The ``defense`` section as the module's hyper-parameter (plain; ``None`` = no defense, as in old checkpoints)."""
    return to_plain(cfg.defense) if cfg.defense.name != "none" else None


def build_module(cfg: DictConfig) -> SegmentationModule:
    adv = to_plain(cfg.adv_train) if cfg.adv_train.enabled else None
    return SegmentationModule(model=to_plain(cfg.model), task=cfg.data.task, optim=to_plain(cfg.optim), loss=to_plain(cfg.loss), adv_train=adv,
                              defense=defense_hparams(cfg))


def adversarial_callbacks(cfg: DictConfig) -> list[Callback]:
    if not cfg.adv_val.enabled:
        return []
    from lightning_seg.callbacks.adversarial_validation import AdversarialValidation

    v = cfg.adv_val
    return [AdversarialValidation(v.attack, to_plain(cfg.attack), v.target, v.every_n_epochs, v.max_batches, v.log_images,
                                  tuple(v.eps_sweep), v.sweep_steps)]


def _run_id(run_dir: Path) -> str:
    """The W&B run id of a run folder: derived from its path, so every rank (also ranks started independently
    by torchrun / srun) and a resumed run get the same id without coordination."""
    return hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]


def build_logger(cfg: DictConfig, run_dir: Path, command: str) -> Any:
    kind = cfg.logger.name
    if kind == "none":
        return False
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="", version="csv")
    if kind != "wandb":
        raise ValueError(f"logger.name={kind!r}: use wandb, csv or none")
    if cfg.logger.mode not in ("offline", "online", "disabled"):
        raise ValueError(f"logger.mode={cfg.logger.mode!r}: use offline, online or disabled")
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_SILENT", "true")
    # mode goes to wandb.init directly: WandbLogger(offline=True) would set WANDB_MODE for the whole process.
    return WandbLogger(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        save_dir=str(run_dir),
        name=f"{command}/{run_dir.name}",
        id=_run_id(run_dir),
        resume="allow",
        mode=cfg.logger.mode,
        job_type=command,
        tags=list(cfg.logger.tags),
        config=to_plain(cfg),
    )


def build_trainer(cfg: DictConfig, run_dir: Path, *, callbacks: list[Callback], logger: Any) -> pl.Trainer:
    t = cfg.trainer
    if t.sync_batchnorm and t.accelerator == "cpu":
        raise ValueError("trainer.sync_batchnorm=true only works on GPUs: set trainer.sync_batchnorm=false for CPU runs")
    return pl.Trainer(
        default_root_dir=str(run_dir),
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=t.precision,
        max_epochs=t.max_epochs,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        limit_test_batches=t.limit_test_batches,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        log_every_n_steps=t.log_every_n_steps,
        sync_batchnorm=t.sync_batchnorm,
        gradient_clip_val=t.gradient_clip_val,
        enable_progress_bar=t.enable_progress_bar,
        deterministic=t.deterministic,
        callbacks=callbacks,
        logger=logger,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),  # no default checkpoints in validate/test
        inference_mode=False,  # attacks need input gradients in validate/test (see the module docstring)
        use_distributed_sampler=False,  # datamodules.sampling.EpochSampler splits ranks itself
        enable_model_summary=False,
    )


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(metrics.items()) if torch.is_tensor(v) and v.numel() == 1 or isinstance(v, (int, float))}


def finish_logger(logger: Any) -> None:
    if logger and hasattr(logger, "experiment") and type(logger).__name__ == "WandbLogger":
        import wandb

        if wandb.run is not None:
            wandb.finish()
