"""Evaluate a model on a datamodule under a list of attacks and defenses: the ``attack`` command as one function.

:func:`evaluate_model` runs what ``python -m lightning_seg attack "attack=[...]" "attack_eval.defenses=[...]"`` runs,
through the same functions (:mod:`lightning_seg.commands.attack`: the images of the split, the targets, the attack
loop and its scoring; :func:`~lightning_seg.evaluation.defense_report.defense_report`), so its numbers equal the
command's for the same model, data and settings. It takes a model object instead of a checkpoint path and returns the
report instead of writing a run folder (:meth:`EvaluationReport.write` writes the command's files).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from lightning_seg.attacks import Attack, UniversalAttack, build_attack
from lightning_seg.config import AttackEvalConfig, defense_section
from lightning_seg.evaluation.attack_report import attack_markdown, write_attack_results
from lightning_seg.evaluation.defense_report import defense_report, write_defense_report
from lightning_seg.evaluation.inference import predict
from lightning_seg.metrics.segmentation import per_image_dice
from lightning_seg.tasks import Task

AttackSpec = str | Attack | UniversalAttack


@dataclass
class EvaluationReport:
    """What :func:`evaluate_model` measured, as the ``attack`` command reports it. ``summary``: one dict per attack,
    the columns of the command's ``summary.csv`` (Table 1: success, IoU, L2 / Linf / RMS, iterations, seconds; the
    clean and adversarial Dice per structure ``clean_dice_<s>_mean`` / ``adv_dice_<s>_mean``; clinical read-outs
    ``clin_*``). ``rows``: one dict per attack and image (``per_image.csv``). ``defense``: ``{"rows": [...],
    "sanity": [...]}`` of :func:`~lightning_seg.evaluation.defense_report.defense_report` (None without defenses).
    ``clean_dice``: mean clean Dice per structure of the evaluated images."""

    summary: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    defense: dict[str, Any] | None
    clean_dice: dict[str, float]
    num_images: int
    split: str
    target: str

    @property
    def markdown(self) -> str:
        """The tables of the ``attack`` command's ``summary.md``: Table 1, defenses (with sanity checks), clinical."""
        return attack_markdown(self.summary, None, self.defense)

    def write(self, folder: str | Path) -> Path:
        """The ``attack`` command's files in ``folder``: ``per_image.{csv,json}``, ``summary.{md,csv}``,
        ``results.json`` and, with defenses, ``defense.{md,csv}``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        source = f"{self.num_images} {self.split} images"
        result = {"command": "evaluate_model", "table": self.markdown, "summary": self.summary, "defense": self.defense,
                  "clean_dice": self.clean_dice, "num_images": self.num_images}
        write_attack_results(folder, result, self.rows, f"{source}, targets: {self.target}. L2 is unnormalised over the "
                                                        "whole [0,1] input; mean +- std over images.")
        if self.defense:
            write_defense_report(folder, self.defense, source)
        return folder


@dataclass
class _Evaluated:
    """The part of a SegmentationModule the attack command's helpers use: the network and the task."""

    net: nn.Module
    task: Task

    @property
    def base_net(self) -> nn.Module:
        from lightning_seg.defenses import DefendedModel

        return self.net.model if isinstance(self.net, DefendedModel) else self.net


def evaluate_model(model: nn.Module, datamodule: Any, attacks: Sequence[AttackSpec] | Mapping[str, Any] = ("asma",),
                   defenses: Sequence[str] | Mapping[str, Mapping[str, Any]] = (), *, split: str = "val",
                   num_images: int | None = None, batch_size: int = 16, target: str = "other_image",
                   target_params: Mapping[str, Any] | None = None, target_base: str = "label", seed: int = 0,
                   quantize: bool = False, device: str | torch.device | None = None,
                   progress: Any = None) -> EvaluationReport:
    """Attack the images of ``split`` (all, or the first ``num_images``) with every attack, then evaluate every defense
    in front of the model; the same protocol and numbers as the ``attack`` command with ``attack_eval.*`` set to these arguments.

    Args:
        model: a :class:`~lightning_seg.training.module.SegmentationModule` (e.g. from
            :func:`~lightning_seg.training.checkpoint.load_module`: its network, and its defense if it was trained
            behind one) or any ``nn.Module`` mapping images [B,3,H,W] in [0,1] to logits [B,K,H,W], K = the task's
            classes (a 1-channel sigmoid head: wrap it in :class:`lightning_seg.models.external.ExternalModel`).
        datamodule: a project datamodule (:func:`lightning_seg.datamodules.build_datamodule`); its task scores a
            plain ``nn.Module``. It is set up here (a no-op when it already is).
        attacks: registered attack names (``"asma"``: the project defaults, as ``attack=asma``), built attacks
            (:func:`~lightning_seg.attacks.build_attack`), or a mapping label -> name / built attack / overrides
            (``{"pgd8": {"name": "pgd", "eps": 8/255}}``). Targeted attacks aim at ``target`` masks, untargeted ones at
            the ground truth.
        defenses: names of ``conf/defense/*.yaml`` (``"fr"``, ``"jpeg"``, ...) or a mapping label -> defense section
            (``{"jpeg50": {"name": "jpeg", "quality": 50}}``), each evaluated under oblivious and adaptive attackers.
        split, num_images, batch_size, target, target_params, target_base, seed, quantize: ``attack_eval.*`` of the
            command (``num_images=None``: the whole split; ``quantize``: scores after a uint8 round-trip of the
            adversarial images). Runs in this process on ``device``; the command also runs on several (DDP).
        device: where the model and images go (default: the model's device).
        progress: a tqdm bar advanced once per attacked batch (None: silent).

    Returns:
        an :class:`EvaluationReport` (``.summary``, ``.rows``, ``.defense``, ``.markdown``, ``.write(folder)``).
    """
    from lightning_seg.commands import attack as command  # the attack command's own steps (imports the CLI stack)

    evaluated = _evaluated(model, datamodule)
    built, sections = _attacks(attacks)
    ev = OmegaConf.structured(AttackEvalConfig(split=split, num_images=num_images, batch_size=batch_size, target=target,
                                               target_params=dict(target_params or {}), target_base=target_base,
                                               seed=seed, quantize=quantize))
    cfg = OmegaConf.create({"attack_eval": ev})
    net = evaluated.net
    device = torch.device(device) if device is not None else _device(net)
    was_training = net.training
    net.eval().to(device)
    try:
        command._require_splits(datamodule, cfg, built)
        datamodule.setup()
        command._check_split_size(datamodule, ev, built)
        images, labels, keys, valid, sizes = command._load_split_padded(datamodule, split, num_images, device)
        clean_pred = predict(net, images, batch_size, valid=valid)
        labels = _crop(labels, clean_pred)
        targets, target_keys = command._targets(labels if target_base == "label" else clean_pred, keys, ev, device)
        clean_dice = per_image_dice(clean_pred, labels, evaluated.task)
        inputs = command.AttackInputs(evaluated, datamodule, images, labels, keys, clean_pred, clean_dice,  # type: ignore[arg-type]
                                      targets, target_keys, valid, sizes)
        rows: list[dict[str, Any]] = []
        summaries: list[dict[str, Any]] = []
        adversarial: dict[str, Tensor] = {}
        for label, atk in built.items():
            results, reference, seconds = command._run(cfg, atk, inputs, progress)
            method_rows, summary = command._score(label, atk, results, reference, seconds, inputs)
            rows += method_rows
            summaries.append(summary)
            if not isinstance(atk, UniversalAttack):
                adversarial[label] = torch.cat([r.adv for r in results])
        report = None
        if defenses:
            bare = evaluated.base_net
            per_image = {k: a for k, a in built.items() if not isinstance(a, UniversalAttack)}
            report = defense_report(bare, _defenses(defenses), per_image, images, labels, targets, evaluated.task,
                                    batch_size=batch_size, oblivious=adversarial if bare is net else None,
                                    sections=sections, valid=valid)
    finally:
        net.train(was_training)
    dice = {name: float(clean_dice[:, j].mean()) for j, name in enumerate(evaluated.task.structure_names)}
    return EvaluationReport(summaries, rows, report, dice, len(images), split, target)


def _evaluated(model: nn.Module, datamodule: Any) -> _Evaluated:
    task = getattr(datamodule, "task", None)
    own = getattr(model, "task", None)
    net = getattr(model, "net", None) if isinstance(own, Task) else model
    if not isinstance(net, nn.Module):
        raise TypeError(f"model must be a SegmentationModule or an nn.Module, got {type(model).__name__}")
    if not isinstance(task, Task):
        raise TypeError("datamodule must be a project datamodule (lightning_seg.datamodules.build_datamodule), "
                        f"got {type(datamodule).__name__}")
    if isinstance(own, Task) and own.name != task.name:
        raise ValueError(f"the model was trained for task {own.name!r} but the datamodule's task is {task.name!r}")
    return _Evaluated(net, task)


def _attacks(attacks: Sequence[AttackSpec] | Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """label -> built attack, and label -> hyper-parameters (the ``attack`` section the sanity checks' PGD reads)."""
    if isinstance(attacks, str):
        raise TypeError(f"attacks must be a list, e.g. attacks=[{attacks!r}]")
    items = attacks.items() if isinstance(attacks, Mapping) else [(_label(a), a) for a in attacks]
    built: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for label, spec in items:
        if isinstance(spec, str):
            built[label] = build_attack(spec)
        elif isinstance(spec, Mapping):
            params = dict(spec)
            sections[label] = dict(params)
            built[label] = build_attack(params.pop("name", label), **params)
        else:
            built[label] = spec
    if not built:
        raise ValueError("attacks is empty: give at least one attack, e.g. attacks=['asma']")
    return built, sections


def _label(spec: AttackSpec) -> str:
    return spec if isinstance(spec, str) else str(getattr(spec, "name", type(spec).__name__))


def _defenses(defenses: Sequence[str] | Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """label -> flat defense section: a name reads ``conf/defense/<name>.yaml`` as ``attack_eval.defenses`` does."""
    if isinstance(defenses, Mapping):
        return {label: dict(section) for label, section in defenses.items()}
    if isinstance(defenses, str):
        raise TypeError(f"defenses must be a list of names, e.g. defenses=[{defenses!r}]")
    return {name: defense_section(name) for name in defenses}


def _device(net: nn.Module) -> torch.device:
    param = next(net.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _crop(labels: Tensor, pred: Tensor) -> Tensor:
    """Labels cropped to the prediction grid (valid-convolution networks predict a centred sub-window), as
    ``SegmentationModule.align`` does for the logits."""
    from lightning_seg.training.module import SegmentationModule

    return SegmentationModule.align(pred, labels)


__all__ = ["EvaluationReport", "evaluate_model"]
