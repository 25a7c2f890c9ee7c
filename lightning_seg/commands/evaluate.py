"""The ``validate`` and ``test`` commands: evaluate a checkpoint (or, with ``run.weights``, weights trained elsewhere)
on a split, adversarial callback included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from lightning_seg.config import ConfigError
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
    use_checkpoint_artifact,
    wandb_run,
)
from lightning_seg.training.weights import module_from_weights


def evaluate(cfg: DictConfig, stage: str = "validate") -> dict[str, Any]:
    """Run ``validate`` or ``test`` on a checkpoint (``run.ckpt``; default: best of the latest fit run), or on weights
    trained elsewhere (``run.weights``: the network and data of the config; results.json records the file's sha256).

    The data are set up (decoded, split, printed) before the run folder exists: an empty split of this stage (val for
    validate, test for test; no other split needs images) fails with one line naming the counts and the option that
    changes them, and leaves no run folder."""
    if stage not in ("validate", "test"):
        raise ValueError(f"stage must be 'validate' or 'test', got {stage!r}")
    weights = None
    if cfg.run.weights:
        ckpt = None
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        module, weights = module_from_weights(cfg)
    else:
        ckpt = resolve_checkpoint(cfg.run.ckpt, cfg.run.output_dir)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        module = load_module(str(ckpt), defense=defense_hparams(cfg))  # cfg.defense: the checkpoint's unless overridden
        if module.task.name != cfg.data.task:
            raise ConfigError(f"Checkpoint {ckpt} was trained for task {module.task.name!r} but data.task="
                              f"{cfg.data.task!r}: use data.task={module.task.name} (or leave it at the checkpoint's)")
    datamodule = build_datamodule_from(cfg)
    datamodule.setup(stage)  # Lightning's own setup call later finds the data ready (and checks the split again)
    run_dir = new_run_dir(cfg.run.output_dir, stage, cfg.data.name, cfg.run.name)
    with run_scope(run_dir):
        return _evaluate(cfg, stage, module, ckpt, run_dir, datamodule, weights)


def _evaluate(cfg: DictConfig, stage: str, module: Any, ckpt: Path | None, run_dir: Path, datamodule: Any,
              weights: dict[str, Any] | None = None) -> dict[str, Any]:
    logger = build_logger(cfg, run_dir, stage)
    trainer = build_trainer(cfg, run_dir, callbacks=adversarial_callbacks(cfg), logger=logger)
    if trainer.is_global_zero:
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        use_checkpoint_artifact(wandb_run(logger), cfg, ckpt)  # W&B lineage: this run reads the fit run's model
    run = trainer.validate if stage == "validate" else trainer.test
    # weights_only=True: Lightning re-loads the checkpoint; it holds only plain containers and tensors. Weights trained
    # elsewhere are in the module already (Lightning would not read their file).
    run(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    result = {"command": stage, "run_dir": str(run_dir), "checkpoint": str(ckpt) if ckpt else None}
    if weights:
        result["weights"] = weights
    result |= {"data": datamodule.describe(), "metrics": scalar_metrics(trainer.callback_metrics)}
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", result)
    finish_logger(logger)
    return result
