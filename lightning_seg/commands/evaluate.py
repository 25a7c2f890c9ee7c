"""The ``validate`` and ``test`` commands: evaluate a checkpoint on a split, adversarial callback included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from lightning_seg.io import write_json, write_text
from lightning_seg.runs import new_run_dir, resolve_checkpoint, run_scope
from lightning_seg.training.checkpoint import load_module
from lightning_seg.training.trainer import (
    adversarial_callbacks,
    build_datamodule_from,
    build_logger,
    build_trainer,
    defense_hparams,
    finish_logger,
    scalar_metrics,
)


def evaluate(cfg: DictConfig, stage: str = "validate") -> dict[str, Any]:
    """Run ``validate`` or ``test`` on a checkpoint (``run.ckpt``; default: best of the latest fit run)."""
    if stage not in ("validate", "test"):
        raise ValueError(f"stage must be 'validate' or 'test', got {stage!r}")
    ckpt = resolve_checkpoint(cfg.run.ckpt, cfg.run.output_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = load_module(str(ckpt), defense=defense_hparams(cfg))  # cfg.defense: the checkpoint's unless overridden
    if module.task.name != cfg.data.task:
        raise ValueError(f"Checkpoint {ckpt} was trained for task {module.task.name!r} but data.task={cfg.data.task!r}")
    run_dir = new_run_dir(cfg.run.output_dir, stage, cfg.data.name, cfg.run.name)
    with run_scope(run_dir):
        return _evaluate(cfg, stage, module, ckpt, run_dir)


def _evaluate(cfg: DictConfig, stage: str, module: Any, ckpt: Path, run_dir: Path) -> dict[str, Any]:
    datamodule = build_datamodule_from(cfg)
    logger = build_logger(cfg, run_dir, stage)
    trainer = build_trainer(cfg, run_dir, callbacks=adversarial_callbacks(cfg), logger=logger)
    if trainer.is_global_zero:
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    run = trainer.validate if stage == "validate" else trainer.test
    # weights_only=True: Lightning re-loads the file; it holds only plain containers and tensors.
    run(module, datamodule=datamodule, ckpt_path=str(ckpt), weights_only=True)
    result = {"command": stage, "run_dir": str(run_dir), "checkpoint": str(ckpt), "metrics": scalar_metrics(trainer.callback_metrics)}
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", result)
    finish_logger(logger)
    return result
