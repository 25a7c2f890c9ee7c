"""Plain functions behind the CLI: ``fit(cfg)``, ``evaluate(cfg, stage)``. Tests call them directly.

Every Trainer is built here with ``inference_mode=False`` (attacks need input gradients during
validate/test, REFERENCE 8.1) and ``use_distributed_sampler=False`` (our sampler splits ranks
without padding evaluation sets, so multi-process metrics equal single-process ones).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from datamodules import SegmentationDataModule, build_datamodule
from lightning_seg.config import to_plain
from lightning_seg.io import write_json, write_text
from lightning_seg.lit_module import SegmentationModule
from lightning_seg.runs import new_run_dir, resolve_checkpoint, run_scope

CONFIG_KEY = "lightning_seg_config"


class StoreConfig(Callback):
    """Puts the resolved run config into every checkpoint (plain containers: weights_only-safe)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.config


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
    from callbacks.adversarial_validation import AdversarialValidation

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
        inference_mode=False,  # attacks need input gradients in validate/test (REFERENCE 8.1)
        use_distributed_sampler=False,  # datamodules.sampling.EpochSampler splits ranks itself
        enable_model_summary=False,
    )


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(metrics.items()) if torch.is_tensor(v) and v.numel() == 1 or isinstance(v, (int, float))}


def fit(cfg: DictConfig, *, extra_callbacks: list[Callback] | None = None, command: str = "fit") -> dict[str, Any]:
    """Train a segmenter; returns the run folder, checkpoint paths and final metrics (also in results.json).

    ``run.resume`` continues an interrupted run in its own folder from its ``last.ckpt``."""
    resume_ckpt = None
    if cfg.run.resume:
        resume_ckpt = resolve_checkpoint(cfg.run.resume, cfg.run.output_dir, prefer="last")
        run_dir = resume_ckpt.parent.parent if resume_ckpt.parent.name == "checkpoints" else new_run_dir(cfg.run.output_dir, command, cfg.data.name)
    else:
        run_dir = new_run_dir(cfg.run.output_dir, command, cfg.data.name, cfg.run.name)
    with run_scope(run_dir):
        return _fit(cfg, run_dir, resume_ckpt, extra_callbacks or [], command)


def adv_train(cfg: DictConfig, *, extra_callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """``fit`` with the adversarial-training hook switched on (robust defaults in ``adv_train``);
    ``run.init_from`` fine-tunes from a ``fit`` checkpoint."""
    cfg = cfg.copy()
    cfg.adv_train.enabled = True
    return fit(cfg, extra_callbacks=extra_callbacks, command="adv-train")


def _fit(cfg: DictConfig, run_dir: Path, resume_ckpt: Path | None, extra_callbacks: list[Callback], command: str) -> dict[str, Any]:
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    plain = to_plain(cfg)
    datamodule = build_datamodule_from(cfg)
    module = build_module(cfg)
    if cfg.run.init_from and not resume_ckpt:
        init = resolve_checkpoint(cfg.run.init_from, cfg.run.output_dir)
        module.load_state_dict(torch.load(init, map_location="cpu", weights_only=True)["state_dict"])
    checkpoint = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="best",
        monitor="val/dice",
        mode="max",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    # A separate unmonitored callback writes last.ckpt every epoch: Lightning 2.6's save_last only refreshes it
    # when a top-k checkpoint was saved in the same step, which would make resume restart from a stale epoch.
    last = ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="last", save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True)
    logger = build_logger(cfg, run_dir, command)
    callbacks: list[Callback] = [checkpoint, last, StoreConfig(plain), *adversarial_callbacks(cfg), *extra_callbacks]
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    trainer = build_trainer(cfg, run_dir, callbacks=callbacks, logger=logger)
    if trainer.is_global_zero:
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_ckpt) if resume_ckpt else None)
    result = {
        "command": command,
        "run_dir": str(run_dir),
        "best_checkpoint": checkpoint.best_model_path or None,
        "last_checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
        "best_val_dice": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "epochs": trainer.current_epoch,
        "interrupted": trainer.interrupted,
        "fit_seconds": round(time.perf_counter() - start, 2),
        "metrics": _scalars(trainer.callback_metrics),
    }
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", result)
    _finish_logger(logger)
    return result


def load_checkpoint_config(path: Path) -> dict[str, Any] | None:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt.get(CONFIG_KEY)


def evaluate(cfg: DictConfig, stage: str = "validate") -> dict[str, Any]:
    """Run ``validate`` or ``test`` on a checkpoint (``run.ckpt``; default: best of the latest fit run)."""
    if stage not in ("validate", "test"):
        raise ValueError(f"stage must be 'validate' or 'test', got {stage!r}")
    ckpt = resolve_checkpoint(cfg.run.ckpt, cfg.run.output_dir)
    run_dir = new_run_dir(cfg.run.output_dir, stage, cfg.data.name, cfg.run.name)
    with run_scope(run_dir):
        return _evaluate(cfg, stage, ckpt, run_dir)


def _evaluate(cfg: DictConfig, stage: str, ckpt: Path, run_dir: Path) -> dict[str, Any]:
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    hparams = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    module = SegmentationModule(**{**hparams, "defense": defense_hparams(cfg)})  # cfg.defense: the checkpoint's unless overridden
    if module.task.name != cfg.data.task:
        raise ValueError(f"Checkpoint {ckpt} was trained for task {module.task.name!r} but data.task={cfg.data.task!r}")
    datamodule = build_datamodule_from(cfg)
    logger = build_logger(cfg, run_dir, stage)
    trainer = build_trainer(cfg, run_dir, callbacks=adversarial_callbacks(cfg), logger=logger)
    if trainer.is_global_zero:
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    run = trainer.validate if stage == "validate" else trainer.test
    # weights_only=True: Lightning re-loads the file; it holds only plain containers and tensors.
    run(module, datamodule=datamodule, ckpt_path=str(ckpt), weights_only=True)
    result = {"command": stage, "run_dir": str(run_dir), "checkpoint": str(ckpt), "metrics": _scalars(trainer.callback_metrics)}
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", result)
    _finish_logger(logger)
    return result


def _finish_logger(logger: Any) -> None:
    if logger and hasattr(logger, "experiment") and type(logger).__name__ == "WandbLogger":
        import wandb

        if wandb.run is not None:
            wandb.finish()
