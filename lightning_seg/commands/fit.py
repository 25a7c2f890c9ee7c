"""The ``fit`` and ``adv-train`` commands: train a segmenter (optionally with the adversarial-training hook)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from torch.multiprocessing import ProcessRaisedException

from lightning_seg.config import to_plain
from lightning_seg.io import write_json, write_text
from lightning_seg.runs import new_run_dir, resolve_checkpoint, run_scope
from lightning_seg.training.checkpoint import StoreConfig, load_weights, safe_load
from lightning_seg.training.divergence import DivergenceError, DivergenceGuard
from lightning_seg.training.trainer import (
    adversarial_callbacks,
    build_datamodule_from,
    build_logger,
    build_module,
    build_trainer,
    finish_logger,
    scalar_metrics,
)


def fit(cfg: DictConfig, *, extra_callbacks: list[Callback] | None = None, command: str = "fit") -> dict[str, Any]:
    """Train a segmenter; returns the run folder, checkpoint paths and final metrics (also in results.json).

    ``run.resume`` continues an interrupted run in its own folder from its ``last.ckpt``; ``run.init_from`` starts from
    a checkpoint's weights with a new optimiser. Either checkpoint is checked (safe to load, same architecture) before
    a run folder is created or touched."""
    resume_ckpt = resolve_checkpoint(cfg.run.resume, cfg.run.output_dir, prefer="last") if cfg.run.resume else None
    init = resolve_checkpoint(cfg.run.init_from, cfg.run.output_dir) if cfg.run.init_from and not resume_ckpt else None
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule_from(cfg)
    module = build_module(cfg)
    if resume_ckpt or init:
        load_weights(module, safe_load(resume_ckpt or init), resume_ckpt or init)  # resume: Lightning loads it again
    if resume_ckpt and resume_ckpt.parent.name == "checkpoints":
        run_dir = resume_ckpt.parent.parent
    else:
        run_dir = new_run_dir(cfg.run.output_dir, command, cfg.data.name, None if resume_ckpt else cfg.run.name)
    with run_scope(run_dir):
        return _fit(cfg, datamodule, module, run_dir, resume_ckpt, extra_callbacks or [], command)


def adv_train(cfg: DictConfig, *, extra_callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """``fit`` with the adversarial-training hook switched on (robust defaults in ``adv_train``);
    ``run.init_from`` fine-tunes from a ``fit`` checkpoint."""
    cfg = cfg.copy()
    cfg.adv_train.enabled = True
    return fit(cfg, extra_callbacks=extra_callbacks, command="adv-train")


def _fit(cfg: DictConfig, datamodule: Any, module: Any, run_dir: Path, resume_ckpt: Path | None,
         extra_callbacks: list[Callback], command: str) -> dict[str, Any]:
    plain = to_plain(cfg)
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
    callbacks: list[Callback] = [DivergenceGuard(), checkpoint, last, StoreConfig(plain), *adversarial_callbacks(cfg),
                                 *extra_callbacks]
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    trainer = build_trainer(cfg, run_dir, callbacks=callbacks, logger=logger)
    if trainer.is_global_zero:
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    start = time.perf_counter()
    try:
        # weights_only=True explicitly: an environment override cannot make Lightning unpickle code on resume
        ckpt_path = str(resume_ckpt) if resume_ckpt else None
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except ProcessRaisedException as e:  # ddp_spawn: a worker's error arrives as its traceback text
        diverged = _worker_divergence(e)
        if diverged is None:
            raise
        raise diverged from None
    result = {
        "command": command,
        "run_dir": str(run_dir),
        "best_checkpoint": checkpoint.best_model_path or None,
        "last_checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
        "best_val_dice": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "epochs": trainer.current_epoch,
        "interrupted": trainer.interrupted,
        "fit_seconds": round(time.perf_counter() - start, 2),
        "metrics": scalar_metrics(trainer.callback_metrics),
    }
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", result)
    finish_logger(logger)
    return result


def _worker_divergence(error: ProcessRaisedException) -> DivergenceError | None:
    """The one-line DivergenceError a spawned worker raised, rebuilt from its traceback text (None: another error)."""
    prefix = f"{DivergenceError.__module__}.{DivergenceError.__qualname__}: "
    lines = [line[len(prefix):] for line in str(error).splitlines() if line.startswith(prefix)]
    return DivergenceError(lines[-1]) if lines else None
