"""The ``fit`` and ``adv-train`` commands: train a segmenter (optionally with the adversarial-training hook)."""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.multiprocessing import ProcessRaisedException

from lightning_seg.commands.resume import ResumeLog, ResumePlan, plan_resume
from lightning_seg.config import ConfigError, to_plain
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
    log_checkpoint_artifacts,
    scalar_metrics,
    wandb_run,
)
from lightning_seg.training.weights import load_initial_weights


def fit(cfg: DictConfig, *, extra_callbacks: list[Callback] | None = None, command: str = "fit") -> dict[str, Any]:
    """Train a segmenter; returns the run folder, checkpoint paths and final metrics (also in results.json).

    ``run.resume`` continues a run in its own folder from its ``last.ckpt``, as the same run: its stored config
    (data, model, trainer, logger, seed), a refusal of any other change than :data:`~lightning_seg.commands.resume.
    ALLOWED_CHANGES`, its CSV history continued, its W&B run id. ``run.init_from`` starts from a checkpoint's weights
    with a new optimiser. Either checkpoint is checked (safe to load, same architecture, and for a resume the same
    config) and the data are set up before a run folder is created or touched."""
    plan = plan_resume(cfg, command) if cfg.run.resume else None
    if plan is not None:
        cfg = plan.cfg
    resume_ckpt = plan.checkpoint if plan else None
    init = resolve_checkpoint(cfg.run.init_from, cfg.run.output_dir) if cfg.run.init_from and not resume_ckpt else None
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule_from(cfg)
    module = build_module(cfg)
    if resume_ckpt:
        load_weights(module, safe_load(resume_ckpt), resume_ckpt)  # resume: Lightning loads it again
    elif init:  # a lightning_seg checkpoint, or weights trained elsewhere for the configured network
        load_initial_weights(module, init, cfg.run.weights_prefix)
    _check_world_size(cfg)
    # Lightning creates the loggers' files before it sets the data up: bad data must fail before the run folder
    if cfg.trainer.limit_val_batches == 0:  # no validation: only the train split is read
        datamodule.require("train", command)
        datamodule.setup(None)
    else:
        datamodule.setup("fit")
    if plan is not None and plan.run_dir is not None:
        run_dir = plan.run_dir
    else:
        run_dir = new_run_dir(cfg.run.output_dir, command, cfg.data.name, None if resume_ckpt else cfg.run.name)
    started = _TrainingStarted()
    try:
        with run_scope(run_dir):
            return _fit(cfg, datamodule, module, run_dir, plan, [started, *(extra_callbacks or [])], command)
    except BaseException:
        # a new run that failed (or was interrupted) before its first training step leaves no folder behind
        began = started.flag or (run_dir / "checkpoints").is_dir()  # the flag of a spawned worker stays there
        if run_dir != (plan.run_dir if plan else None) and not began and _is_launcher():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


class _TrainingStarted(Callback):
    """Whether training reached its first step (before it, a failed run's folder holds nothing worth keeping). Spawned
    DDP workers say so through the run folder: they create its checkpoints/ folder when training starts."""

    def __init__(self) -> None:
        self.flag = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flag = True
        if trainer.is_global_zero:
            (Path(trainer.default_root_dir) / "checkpoints").mkdir(parents=True, exist_ok=True)


def _is_launcher() -> bool:
    """The process that created the run folder (DDP children and other ranks reuse it)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def adv_train(cfg: DictConfig, *, extra_callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """``fit`` with the adversarial-training hook switched on (robust defaults in ``adv_train``);
    ``run.init_from`` fine-tunes from a ``fit`` checkpoint; ``run.resume=last`` continues the latest adv-train run."""
    cfg = cfg.copy()
    cfg.adv_train.enabled = True
    return fit(cfg, extra_callbacks=extra_callbacks, command="adv-train")


def _check_world_size(cfg: DictConfig) -> None:
    """The global batch sizes split evenly over the processes (checked here, before any run folder: the datamodule
    finds out only when Lightning asks it for a loader, after the loggers have written their files)."""
    devices = cfg.trainer.devices
    count = len(devices) if isinstance(devices, (list, ListConfig)) else devices if isinstance(devices, int) else None
    if not count or count < 1:  # -1 / "auto": known only to Lightning
        return
    world = count * cfg.trainer.num_nodes
    for key in ("batch_size", "eval_batch_size"):
        if cfg.data[key] % world:
            raise ConfigError(f"data.{key}={cfg.data[key]} is not divisible by the {world} processes of trainer.devices="
                              f"{count} x trainer.num_nodes={cfg.trainer.num_nodes}: use a multiple of {world}")


def _fit(cfg: DictConfig, datamodule: Any, module: Any, run_dir: Path, plan: ResumePlan | None,
         extra_callbacks: list[Callback], command: str) -> dict[str, Any]:
    plain = to_plain(cfg)
    resume_ckpt = plan.checkpoint if plan else None
    continued = plan is not None and plan.run_dir == run_dir  # the run's own folder: its files are continued
    checkpoint = _RunCheckpoint(
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
    last = _RunCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="last", save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True)
    logger = build_logger(cfg, run_dir, command, resume_step=plan.step if continued else None)
    config_text = OmegaConf.to_yaml(cfg, resolve=True)
    # a resume rewrites config.yaml only for an allowed change, and only once training has started
    rewrite = continued and bool(plan.changed)
    history = ResumeLog(plan.history if plan else [], run_dir / "config.yaml" if rewrite else None, config_text)
    callbacks: list[Callback] = [DivergenceGuard(), checkpoint, last, StoreConfig(plain), history,
                                 *adversarial_callbacks(cfg), *extra_callbacks]
    if logger:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    trainer = build_trainer(cfg, run_dir, callbacks=callbacks, logger=logger)
    if trainer.is_global_zero and not continued:
        write_text(run_dir / "config.yaml", config_text)
    start = time.perf_counter()
    try:
        # weights_only=True explicitly: an environment override cannot make Lightning unpickle code on resume
        ckpt_path = str(resume_ckpt) if resume_ckpt else None
        with warnings.catch_warnings():
            if continued:  # the run's own checkpoints: expected, not a reason to warn
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except ProcessRaisedException as e:  # ddp_spawn: a worker's error arrives as its traceback text
        known = _worker_error(e)
        if known is None:
            raise
        raise known from None
    result = {
        "command": command,
        "run_dir": str(run_dir),
        "best_checkpoint": checkpoint.best_model_path or None,
        "last_checkpoint": str(last_path) if (last_path := run_dir / "checkpoints" / "last.ckpt").is_file() else None,
        "best_val_dice": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "epochs": trainer.current_epoch,
        "interrupted": trainer.interrupted,
        "fit_seconds": round(time.perf_counter() - start, 2),
        "metrics": scalar_metrics(trainer.callback_metrics),
        "resumes": history.history,  # each resume: checkpoint, epochs done, step, allowed changes [stored, new]
        "data": datamodule.describe(),  # the layout found and the images per split
    }
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", result)
        # W&B: best / last as versions of the run's model artifact (no collective here: rank 0 only)
        log_checkpoint_artifacts(wandb_run(logger), cfg, {"best": result["best_checkpoint"], "last": result["last_checkpoint"]})
    finish_logger(logger)
    return result


class _RunCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that resumes its state (best score, best path) also in a run folder that was moved or copied
    since the checkpoint was written: Lightning drops that state when the folder's path differs, and the next
    validation would then overwrite best.ckpt whatever it scores. Same state key as ModelCheckpoint, so checkpoints
    written before this class existed resume their state too."""

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            def moved(path: Any) -> Any:
                return str(Path(self.dirpath) / Path(path).name) if path and Path(path).parent == Path(old) else path

            state_dict = {**state_dict, "dirpath": self.dirpath,
                          **{k: moved(state_dict.get(k)) for k in ("best_model_path", "kth_best_model_path", "last_model_path")},
                          "best_k_models": {moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()}}
        super().load_state_dict(state_dict)


def _worker_error(error: ProcessRaisedException) -> Exception | None:
    """The user error (divergence, config, checkpoint or data) a spawned worker raised, rebuilt from its traceback
    text so that it is reported as in a single process (None: another error, re-raised with its traceback)."""
    from lightning_seg.datamodules.layouts import DataError
    from lightning_seg.training.checkpoint import CheckpointError

    lines = str(error).rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        for cls in (DivergenceError, CheckpointError, ConfigError, DataError):
            prefix = f"{cls.__module__}.{cls.__qualname__}: "
            if lines[i].startswith(prefix):
                return cls("\n".join([lines[i][len(prefix):], *lines[i + 1:]]))
    return None
