"""Resume = the same run: ``fit|adv-train run.resume=...`` continues a run with the config stored in it.

The stored config (in the checkpoint being resumed; the run folder's ``config.yaml`` for checkpoints written without
it) is the run's config. The command line composes on top of it (:func:`lightning_seg.commands.compose.compose_for`),
so ``fit run.resume=last`` alone restores data, model, trainer, logger and seed; :func:`plan_resume` then compares the
composed config with the stored one and refuses, in one line, every difference outside :data:`ALLOWED_CHANGES`. The
check runs before any run folder is touched; the allowed changes are recorded in the run's resume history (stored in
its checkpoints and in ``results.json``) and ``config.yaml`` is rewritten only once training has started.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from lightning_seg.config import ConfigError, RootConfig, _show, to_plain
from lightning_seg.io import write_text
from lightning_seg.runs import resolve_checkpoint
from lightning_seg.training.checkpoint import CONFIG_KEY, safe_load

RESUMES_KEY = "lightning_seg_resumes"  # the run's resume history, stored in every checkpoint next to its config

# What a resume may change. Everything else would make the continued run another experiment than the one its
# checkpoints, metrics history and W&B run describe; that is a new run (or `run.init_from=<ckpt>` to fine-tune).
# - trainer.max_epochs: extend (or end earlier) a run. The cosine schedule spans the new length from the resumed step
#   on (its total is the planned number of steps), so the learning rate continues on the longer curve.
# - The hardware: trainer.accelerator, devices, strategy, num_nodes, sync_batchnorm. data.batch_size is the global
#   batch and the datamodules' sampler deals every global batch out over the ranks, so each optimiser step sees the
#   same images on 1 CPU or 8 GPUs; what changes is floating-point order and, without sync_batchnorm, the per-process
#   BatchNorm statistics (sync_batchnorm=true computes them over the global batch, as one process does).
# - data.num_workers: augmentation is seeded per (seed, epoch, image), identical for any number of workers.
# - data.cache, data.cache_dir: where decoded pairs are kept; cached samples are bit-identical to decoded ones.
# - trainer.enable_progress_bar, trainer.log_every_n_steps: display and logging frequency only.
# - run.*: where runs live and what to resume; not part of the run's config (the stored run section is kept).
ALLOWED_CHANGES: tuple[str, ...] = (
    "trainer.max_epochs",
    "trainer.accelerator", "trainer.devices", "trainer.strategy", "trainer.num_nodes", "trainer.sync_batchnorm",
    "data.num_workers", "data.cache", "data.cache_dir",
    "trainer.enable_progress_bar", "trainer.log_every_n_steps",
)

_ABSENT = object()


@dataclass
class ResumePlan:
    """What ``fit`` needs to continue a run: the checkpoint, the config to train with, where its history stops."""

    checkpoint: Path
    cfg: DictConfig  # the stored config with the allowed changes (and the stored run section)
    step: int  # batches stepped at the checkpoint: logged rows from this step on are logged again
    epochs_done: int
    changed: dict[str, list[Any]] = field(default_factory=dict)  # key -> [stored, new], allowed changes only
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier resumes of the run and this one

    @property
    def run_dir(self) -> Path | None:
        """The run folder of the checkpoint (None: a checkpoint file outside a run folder; it starts a new folder)."""
        return self.checkpoint.parent.parent if self.checkpoint.parent.name == "checkpoints" else None


def stored_run_config(checkpoint: Path, ckpt: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The run config stored in ``checkpoint``; for checkpoints written without it, its run folder's config.yaml."""
    ckpt = safe_load(checkpoint) if ckpt is None else ckpt
    stored = ckpt.get(CONFIG_KEY)
    if stored:
        return stored
    saved = checkpoint.parent.parent / "config.yaml"
    if checkpoint.parent.name == "checkpoints" and saved.is_file():
        return OmegaConf.to_container(OmegaConf.load(saved), resolve=True)  # type: ignore[return-value]
    return None


def resume_checkpoint(cfg: DictConfig, command: str) -> Path:
    """The checkpoint ``run.resume`` names: ``last`` is the latest run of this command (fit or adv-train)."""
    return resolve_checkpoint(cfg.run.resume, cfg.run.output_dir, prefer="last", command=command, option="run.resume")


def plan_resume(cfg: DictConfig, command: str) -> ResumePlan:
    """Check that ``cfg`` continues the run ``run.resume`` names; one :class:`ConfigError` line otherwise.

    Loads the checkpoint safely (``weights_only``), compares ``cfg`` with the stored config and the number of epochs
    done with ``trainer.max_epochs``. Touches no file."""
    checkpoint = resume_checkpoint(cfg, command)
    if cfg.run.init_from:
        raise ConfigError(f"run.resume={cfg.run.resume} and run.init_from={cfg.run.init_from} exclude each other: "
                          "resume continues a run as it was, init_from starts a new run from its weights; drop one")
    ckpt = safe_load(checkpoint)
    stored = stored_run_config(checkpoint, ckpt)
    where = _where(checkpoint)
    loops = ckpt.get("loops", {}).get("fit_loop", {})
    step = int(loops.get("epoch_loop.state_dict", {}).get("_batches_that_stepped", ckpt.get("global_step", 0)))
    done = int(loops.get("epoch_progress", {}).get("total", {}).get("processed", ckpt.get("epoch", 0)))
    changed: dict[str, list[Any]] = {}
    effective = cfg
    if stored:
        _check_command(stored, command, checkpoint, where)
        differences = config_differences(stored, to_plain(cfg))
        refused = {k: v for k, v in differences.items() if not _allowed(k)}
        if refused:
            raise ConfigError(_refusal(refused, where, checkpoint))
        changed = {k: [_plain(a), _plain(b)] for k, (a, b) in differences.items()}
        effective = cfg.copy()
        if isinstance(stored.get("run"), dict):  # the run's own run section: how it was made (name, init_from)
            effective.run = OmegaConf.merge(effective.run, {**stored["run"], "output_dir": cfg.run.output_dir})
    max_epochs = effective.trainer.max_epochs
    if done >= max_epochs:
        raise ConfigError(f"run.resume: {where} has already trained {done} epoch{'s' if done != 1 else ''} of "
                          f"trainer.max_epochs={max_epochs}; to train it further, extend it with "
                          f"trainer.max_epochs=N (N > {done})")
    history = list(ckpt.get(RESUMES_KEY) or [])
    history.append({"checkpoint": str(checkpoint), "epochs_done": done, "step": step, "changed": changed,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return ResumePlan(checkpoint=checkpoint, cfg=effective, step=step, epochs_done=done, changed=changed, history=history)


def config_differences(stored: dict[str, Any], requested: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (stored value, requested value) for every difference outside ``run``; a missing side is
    ``_ABSENT``. A schema key the stored config lacks (written by an older version) counts as its default."""
    out: dict[str, tuple[Any, Any]] = {}
    _diff({k: v for k, v in stored.items() if k != "run"}, {k: v for k, v in requested.items() if k != "run"}, "", out)
    return out


def _diff(stored: dict[str, Any], requested: dict[str, Any], prefix: str, out: dict[str, tuple[Any, Any]]) -> None:
    for key in [*stored, *(k for k in requested if k not in stored)]:
        path = f"{prefix}{key}"
        a, b = stored.get(key, _ABSENT), requested.get(key, _ABSENT)
        if isinstance(a, dict) and isinstance(b, dict):
            _diff(a, b, f"{path}.", out)
        elif a is _ABSENT and is_schema_key(path):  # written by an older version: it ran with the default
            default = OmegaConf.select(_schema(), path)
            if isinstance(default, DictConfig | ListConfig):
                default = OmegaConf.to_container(default)
            if default != b:
                out[path] = (default, b)
        elif a != b or isinstance(a, bool) != isinstance(b, bool):
            out[path] = (a, b)


_SCHEMA: DictConfig | None = None


def _schema() -> DictConfig:
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = OmegaConf.structured(RootConfig)
    return _SCHEMA


def is_schema_key(path: str) -> bool:
    """Whether ``path`` is a key of the config schema (not an entry of a free-form mapping such as ``attack``)."""
    node: Any = _schema()
    for part in path.split("."):
        if not isinstance(node, DictConfig) or is_free_form(node) or part not in list(node.keys()):  # with MISSING values
            return False
        node = node._get_node(part)
    return True


def is_free_form(node: DictConfig) -> bool:
    return node._metadata.object_type in (None, dict)


def _allowed(path: str) -> bool:
    return path in ALLOWED_CHANGES


def _check_command(stored: dict[str, Any], command: str, checkpoint: Path, where: str) -> None:
    """An adv-train run resumes with adv-train, a fit run with fit (the adversarial-training hook is the difference)."""
    adversarial = bool(stored.get("adv_train", {}).get("enabled"))
    if adversarial and command != "adv-train":
        raise ConfigError(f"run.resume: {where} is an adv-train run: continue it with "
                          f"`python -m lightning_seg adv-train run.resume={_spec(checkpoint)}`")
    if not adversarial and command == "adv-train":
        raise ConfigError(f"run.resume: {where} is a fit run: continue it with `python -m lightning_seg fit "
                          f"run.resume={_spec(checkpoint)}`, or train it adversarially in a new run with "
                          f"`python -m lightning_seg adv-train run.init_from={_spec(checkpoint)}`")


def _refusal(refused: dict[str, tuple[Any, Any]], where: str, checkpoint: Path) -> str:
    changes = "; ".join(f"{k}={_value(b)} (the run has {_value(a)})" for k, (a, b) in refused.items())
    return (f"run.resume: {where} continues with its own config, but this command changes {changes}. A resume may "
            f"change only {_allowed_text()}: drop the other overrides to continue the run, or start a new run "
            f"(fine-tune from its weights with run.init_from={_spec(checkpoint)})")


def _allowed_text() -> str:
    """``trainer.max_epochs/accelerator/...`` and ``data.num_workers``: the allowed keys, by section."""
    sections: dict[str, list[str]] = {}
    for key in ALLOWED_CHANGES:
        section, _, name = key.partition(".")
        sections.setdefault(section, []).append(name)
    return " and ".join(f"{section}.{'/'.join(names)}" for section, names in sections.items())


def _where(checkpoint: Path) -> str:
    return f"run {checkpoint.parent.parent}" if checkpoint.parent.name == "checkpoints" else f"checkpoint {checkpoint}"


def _spec(checkpoint: Path) -> str:
    return str(checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint)


def _value(value: Any) -> str:
    if value is _ABSENT:
        return "nothing"
    text = _show(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _plain(value: Any) -> Any:
    return None if value is _ABSENT else value


def prune_unrequested(cfg: DictConfig, stored: dict[str, Any], requested: list[str]) -> None:
    """Drop entries of free-form sections (``attack``) that composing added from the default groups although
    neither the stored config nor the command asked for them: a resumed ``attack`` section stays the stored one."""
    _prune(cfg, stored, "", requested)


def _prune(node: DictConfig, stored: dict[str, Any], prefix: str, requested: list[str]) -> None:
    for key in list(node.keys()):
        path = f"{prefix}{key}"
        if prefix == "" and key == "run":
            continue
        if key not in stored:
            if is_free_form(node) and not any(path == r or path.startswith(f"{r}.") or r.startswith(f"{path}.")
                                              for r in requested):
                del node[key]
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and isinstance(stored[key], dict):
            _prune(child, stored[key], f"{path}.", requested)


class ResumeLog(Callback):
    """Keeps the run's resume history in every checkpoint; on a resume that changed an allowed key, rewrites the
    run's config.yaml (atomically) once training has started, so a resume that fails before changes no file."""

    def __init__(self, history: list[dict[str, Any]], config_file: Path | None = None, config_text: str = "") -> None:
        self.history = history
        self.config_file, self.config_text = config_file, config_text

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.config_file is not None and trainer.is_global_zero:
            write_text(self.config_file, self.config_text)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[RESUMES_KEY] = self.history
