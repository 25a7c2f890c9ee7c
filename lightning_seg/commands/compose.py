"""The run config of a command: evaluation commands start from the data the checkpoint was trained on (with
``run.weights``, weights trained elsewhere, from the command line alone), a resumed ``fit`` / ``adv-train`` from the
whole config of the run it continues."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_seg.config import ConfigError, check_values, compose, split_overrides
from lightning_seg.runs import resolve_checkpoint
from lightning_seg.training.checkpoint import load_checkpoint_config


def compose_for(command: str, overrides: list[str], extra_files: list[str] | None = None) -> Any:
    """Compose the config for a command; evaluation commands start from the checkpoint's stored data config, a
    resume (``run.resume=...``) from the stored config of its run, so that only what the command line says differs
    (:func:`lightning_seg.commands.resume.plan_resume` then refuses what a resume may not change)."""
    if command in ("fit", "adv-train"):
        return _compose_training(command, overrides, extra_files)
    if command not in ("validate", "test", "attack"):
        return compose(overrides, extra_files=extra_files)
    # first pass unchecked: its data section is the default one until the checkpoint's stored data replaces it
    cfg = compose(overrides, extra_files=extra_files, check=False)
    if cfg.run.weights:  # weights trained elsewhere: the model and data are the command line's (no stored config)
        check_values(cfg)
        return cfg
    stored = load_checkpoint_config(resolve_checkpoint(cfg.run.ckpt, cfg.run.output_dir))
    if not stored:
        check_values(cfg)
        return cfg
    base = {"seed": stored["seed"], "data": stored["data"], "model": stored["model"]}
    if stored.get("defense"):  # trained behind a defense: evaluated behind it unless defense=... says otherwise
        base["defense"] = stored["defense"]
    cfg = compose(overrides, extra_files=extra_files, base=base)
    _refuse_model_changes(command, stored["model"], cfg)
    return cfg


def _refuse_model_changes(command: str, stored: dict[str, Any], cfg: DictConfig) -> None:
    """The network of an evaluation command is the checkpoint's: a model override would otherwise be silently ignored
    (the weights are loaded into the stored architecture), so one that differs is refused."""
    from lightning_seg.commands.resume import config_differences
    from lightning_seg.config import _show, to_plain

    changed = config_differences({"model": stored}, {"model": to_plain(cfg.model)})
    if changed:
        listed = ", ".join(f"{key}={_show(new)} (the checkpoint has {_show(old)})" for key, (old, new) in changed.items())
        raise ConfigError(f"{command} evaluates the model stored in {cfg.run.ckpt or 'the latest fit run'}; it cannot "
                          f"change {listed}: drop the model override, or train a run with that model")


def _compose_training(command: str, overrides: list[str], extra_files: list[str] | None) -> DictConfig:
    from lightning_seg.commands.resume import prune_unrequested, resume_checkpoint, stored_run_config

    first = compose(overrides, extra_files=extra_files, check=False)  # unchecked: only run.* is read from it
    if first.run.weights:
        raise ConfigError(f"run.weights is for validate, test and attack: {command} starts from weights trained "
                          f"elsewhere with run.init_from={first.run.weights}")
    if not first.run.resume:
        return compose(overrides, extra_files=extra_files)
    stored = stored_run_config(resume_checkpoint(first, command))
    if not stored:  # a checkpoint without a stored config and outside a run folder: the command line is the config
        return compose(overrides, extra_files=extra_files)
    cfg = compose(overrides, extra_files=extra_files, base={k: v for k, v in stored.items() if k != "run"})
    prune_unrequested(cfg, stored, _requested_keys(overrides, extra_files))
    return cfg


def _requested_keys(overrides: list[str], extra_files: list[str] | None) -> list[str]:
    """The dotted keys the command line sets: group names (``data=glaucoma``), override keys, keys of extra files."""
    choices, dotlist = split_overrides(overrides)
    keys = [*choices, *(item.split("=", 1)[0] for item in dotlist)]
    for extra in extra_files or []:
        keys += _leaves(OmegaConf.to_container(OmegaConf.load(Path(extra))), "")
    return keys


def _leaves(node: Any, prefix: str) -> list[str]:
    if not isinstance(node, dict) or not node:
        return [prefix[:-1]] if prefix else []
    return [key for k, v in node.items() for key in _leaves(v, f"{prefix}{k}.")]
