"""The ``attack`` command: run registered attacks on a trained segmenter and report Table-1 style results.

Protocol of the ASMA paper (Ozbulak et al., MICCAI 2019): the images of a split (all of them, or the first
``attack_eval.num_images``) are attacked; targeted attacks aim at another image's mask (a seeded derangement of those images, or a
clinical edit from ``lightning_seg.attacks.targets``); untargeted attacks use the ground truth. Every image's
result is kept: success, IoU and pixel accuracy against the attack's reference (target or ground
truth), L2 / Linf / RMS of the perturbation, iterations, and Dice of the adversarial prediction
against the ground truth. The run folder gets ``per_image.{csv,json}``, ``summary.{md,csv}``,
``panels/*.png`` and ``results.json``; W&B gets the same tables and the panels with mask overlays.

The attacks run through Lightning (:mod:`lightning_seg.evaluation.attack_loop`) on the ``trainer`` section's devices:
one CPU or GPU, or DDP (``trainer=ddp``, ``trainer=ddp_cpu``), each rank attacking its own shard of the images without
padding. Every batch's results are kept in the run folder as they finish; the launching process (rank 0) merges them
in image order and writes the same files as one process would. A rerun on that folder (``attack_eval.resume=<run
folder>``, or the same ``run.name``) attacks only the images not done yet. The defense report and the robustness sweep
run afterwards in the launching process, over the attacked images. ``attack_eval.quantize=true`` scores the
adversarial images after a uint8 round-trip.

This module loads, loops and calls: the scores and files are written by :mod:`lightning_seg.evaluation`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from lightning_seg.attacks import AttackResult, UniversalAttack, bind_task, build_attack, hide_class_target, is_targeted
from lightning_seg.attacks.targets import derangement_pairs, make_target
from lightning_seg.config import ConfigError, defense_section, to_plain
from lightning_seg.evaluation.attack_loop import fingerprint, iter_merged, run_sharded, shard_jobs
from lightning_seg.evaluation.attack_report import UNITS_NOTE, attack_markdown, method_report, write_attack_results
from lightning_seg.evaluation.defense_report import defense_report, write_defense_report
from lightning_seg.evaluation.inference import attack_batches, predict, success_rule
from lightning_seg.evaluation.min_budget import min_budget_report
from lightning_seg.evaluation.progress import Progress
from lightning_seg.evaluation.robustness import flag_monotone, model_curve, robustness_sweep, write_robustness
from lightning_seg.evaluation.wandb_log import AttackLogger
from lightning_seg.io import write_text
from lightning_seg.metrics.segmentation import per_image_dice
from lightning_seg.runs import new_run_dir, resolve_checkpoint, run_scope
from lightning_seg.training.checkpoint import load_module
from lightning_seg.training.module import SegmentationModule
from lightning_seg.training.trainer import build_datamodule_from, defense_hparams, trainer_arguments
from lightning_seg.training.weights import module_from_weights
from lightning_seg.viz.panels import save_panels


@dataclass
class AttackInputs:
    """What every attack of a run works on: the checkpoint's module, the attacked images and their masks."""

    module: SegmentationModule
    datamodule: Any
    images: Tensor
    labels: Tensor  # ground truth, cropped to the logits
    keys: list[str]
    clean_pred: Tensor
    clean_dice: Tensor  # [N, S] of the clean prediction
    targets: Tensor
    target_keys: list[str]
    valid: Tensor | None = None  # bool [N,H,W]: False on the padding of data.resize=pad (never perturbed nor scored)
    sizes: Tensor | None = None  # long [N,2]: original (H, W), for clinical read-outs in the original aspect ratio
    weights: dict[str, Any] | None = None  # run.weights: the file of weights trained elsewhere (path, sha256, ...)

    @property
    def net(self) -> nn.Module:
        return self.module.net


def attack(cfg: DictConfig) -> dict[str, Any]:
    """Attack the checkpoint ``run.ckpt`` (default: best of the latest fit run), or the weights trained elsewhere of
    ``run.weights`` in the config's network, with every attack in ``cfg.attack``."""
    _check_request(cfg)
    # key = the label in reports (e.g. asma_paper); params["name"] = the registered attack. Bad keys fail here, early.
    attacks = {key: build_attack(params.pop("name", key), **params) for key, params in to_plain(cfg.attack).items()}
    ckpt = None if cfg.run.weights else resolve_checkpoint(cfg.run.ckpt, cfg.run.output_dir)
    pl.seed_everything(cfg.seed, verbose=False)
    inputs = _load_inputs(cfg, ckpt, attacks)  # before the run folder: a request that cannot run leaves no folder behind
    resume = cfg.attack_eval.resume
    run_dir = Path(resume).expanduser() if resume else new_run_dir(cfg.run.output_dir, "attack", cfg.data.name,
                                                                    cfg.run.name)
    with run_scope(run_dir):
        return _attack(cfg, attacks, ckpt, inputs, run_dir)


def _check_request(cfg: DictConfig) -> None:
    """What only the attack command needs (the values themselves are checked when the config is composed)."""
    if cfg.attack_eval.defenses and not cfg.attack:
        raise ConfigError("attack_eval.defenses needs attacks to evaluate them under: add attack=[asma,pgd]")
    if not cfg.attack and not cfg.attack_eval.eps_sweep and not cfg.attack_eval.min_budget.enabled:
        raise ConfigError("Nothing to do: choose attacks (attack=[ssm,asm,asma,dag]), a sweep "
                          "(attack_eval.eps_sweep=[1/255,4/255]) and/or attack_eval.min_budget.enabled=true")
    if cfg.attack_eval.quantize:
        for key, params in to_plain(cfg.attack).items():
            if success_rule(build_attack(params.pop("name", key), **params)) is None:
                raise ConfigError(f"attack_eval.quantize=true re-scores the quantized images with the attack's success "
                                  f"rule, which attack={key} does not have: drop it or set attack_eval.quantize=false")
    resume = cfg.attack_eval.resume
    if resume and not (Path(resume).expanduser() / "config.yaml").is_file():
        raise ConfigError(f"attack_eval.resume={resume} is not an attack run folder (no config.yaml in it): give the "
                          "folder of the attack run to continue")
    if resume:
        _check_same_run(cfg, Path(resume).expanduser())


# what a resumed attack run may change: where and how it runs, not what it computes
RESUME_MAY_CHANGE = ("trainer.", "logger.", "attack_eval.resume", "data.num_workers", "data.cache", "data.cache_dir")


def _check_same_run(cfg: DictConfig, run_dir: Path) -> None:
    """A resume continues the run of ``run_dir``: the same attacks, data, checkpoint and evaluation settings as its
    ``config.yaml`` (else the new results would replace the run's report while its finished shards stay behind)."""
    from lightning_seg.commands.resume import config_differences

    stored = to_plain(OmegaConf.load(run_dir / "config.yaml"))
    requested = OmegaConf.to_container(cfg, resolve=True)
    diffs = {k: v for k, v in config_differences(stored, requested).items() if not k.startswith(RESUME_MAY_CHANGE)}
    for key in ("ckpt", "weights"):
        if stored.get("run", {}).get(key) != requested["run"].get(key):
            diffs[f"run.{key}"] = (stored.get("run", {}).get(key), requested["run"].get(key))
    if diffs:
        shown = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, (a, b) in list(diffs.items())[:3])
        raise ConfigError(f"attack_eval.resume={run_dir} continues that run with its own settings, but {shown}"
                          f"{' (and more)' if len(diffs) > 3 else ''}: repeat the run's settings (its config.yaml) or "
                          "drop attack_eval.resume for a new run folder")


def _attack(cfg: DictConfig, attacks: dict[str, Any], ckpt: Path | None, inputs: AttackInputs,
            run_dir: Path) -> dict[str, Any]:
    ev = cfg.attack_eval
    launcher = _is_launcher()
    if launcher:
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    jobs = _jobs(cfg, attacks, ckpt, inputs, run_dir)
    stopped = False
    try:  # every rank: its shard of every attack, one progress bar with ETA per attack (rank 0)
        rank = run_sharded(_trainer_kwargs(cfg, run_dir), inputs.net, jobs, inputs.images, inputs.valid,
                           batch_size=ev.batch_size, seed=ev.seed, quantize=ev.quantize)
    except KeyboardInterrupt:  # the batches written so far stay for a resume; finished attacks are reported
        stopped, rank = True, 0 if launcher else 1
    if rank != 0:  # DDP ranks > 0: their rows are in the run folder, rank 0 writes the results
        return {"command": "attack", "run_dir": str(run_dir), "rank": rank, "table": f"(rank {rank}: shards written)"}
    logger = AttackLogger(cfg, run_dir, ckpt)  # W&B: the study's group, the checkpoint artifact as input
    done = _Done()
    n_images = len(inputs.images)
    n_sweep = max(1, len(ev.checkpoints)) * len(ev.sweep_attacks) * len(ev.eps_sweep)
    try:  # one progress bar (off a terminal: a log line at least every 30 s) per defense report and sweep
        for (name, merged, seconds), job in zip(iter_merged(jobs, n_images), jobs):
            if merged is None and not stopped:
                raise RuntimeError(f"attack {name}: images missing from {job.folder} after every rank finished")
            if merged is not None:
                _attack_one(cfg, name, attacks[name], inputs, run_dir, merged, job.reference, seconds, logger, done)
        if stopped:
            raise KeyboardInterrupt
        if ev.defenses:
            with Progress("defense report", 0, unit="phase") as progress:
                done.defense = _defense_report(cfg, ckpt, inputs, attacks, done.adversarial, run_dir, logger, progress)
        if ev.eps_sweep:
            with Progress("robustness sweep", n_sweep * n_images) as progress:
                done.robustness = _sweep(cfg, ckpt, inputs, run_dir, progress, logger)
        if ev.min_budget.enabled:  # rank 0, over the attacked images, as the defense report and the sweep
            print(f"attack: minimum budget per image ({ev.min_budget.attack}, {ev.min_budget.bisection_steps} "
                  f"halvings of [0, {ev.min_budget.eps_max * 255:g}/255])", flush=True)
            done.min_budget = min_budget_report(inputs.net, inputs.images, inputs.labels, inputs.module.task,
                                                inputs.valid, ev.min_budget, run_dir, name=_source(ckpt, inputs),
                                                names=inputs.keys, batch_size=ev.batch_size, seed=ev.seed)
        not_run: list[str] = []
    except KeyboardInterrupt:  # keep what finished: its rows and summary, marked partial
        not_run = [k for k in attacks if k not in done.panels]
        not_run += [part for part, asked, got in (("defense report", ev.defenses, done.defense),
                                                  ("robustness sweep", ev.eps_sweep, done.robustness),
                                                  ("minimum budget", ev.min_budget.enabled, done.min_budget))
                    if asked and not got]
    result = {"command": "attack", "run_dir": str(run_dir), "checkpoint": str(ckpt) if ckpt else None}
    if inputs.weights:
        result["weights"] = inputs.weights
    result |= {"table": attack_markdown(done.summaries, done.robustness, done.defense), "summary": done.summaries,
              "panels": {k: [str(p) for p in v] for k, v in done.panels.items()}, "robustness": done.robustness,
              "defense": done.defense, "min_budget": done.min_budget}
    if done.min_budget:
        result["table"] += ("\n\n" if result["table"] else "") + (run_dir / "min_budget.md").read_text()
    result |= {"data": inputs.datamodule.describe(), "num_images": len(inputs.images)}
    header = (f"{_source(ckpt, inputs)}, {cfg.data.name} ({cfg.data.source}), {len(inputs.images)} {ev.split} images, "
              f"targets: {ev.target}. {UNITS_NOTE}")
    if not_run:
        result |= {"partial": True, "not_run": not_run}
        header = f"**Partial: interrupted; not run: {', '.join(not_run)}.** {header}"
    write_attack_results(run_dir, result, done.rows, header)
    logger.finish(done.summaries, done.rows)
    if not_run:
        raise KeyboardInterrupt(f"partial results in {run_dir} (attack_eval.resume={run_dir} attacks the images "
                                f"still missing)")
    return result


@dataclass
class _Done:
    """What the attack command has finished so far (written out even when the run is interrupted)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)
    panels: dict[str, list[Path]] = field(default_factory=dict)
    adversarial: dict[str, Tensor] = field(default_factory=dict)  # crafted on the checkpoint's net: defense report
    defense: dict[str, Any] | None = None
    robustness: list[dict[str, Any]] | None = None
    min_budget: dict[str, Any] | None = None


def _is_launcher() -> bool:
    """The process that writes the results (rank 0; DDP children and other ranks only attack their shards)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def _trainer_kwargs(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """The ``trainer`` section's devices and strategy for the attack phase; no logger, checkpoints or Lightning
    progress bar (the command shows its own per attack), full precision as the attacks' budgets assume, and no
    SyncBatchNorm (the network is in eval mode)."""
    return {**trainer_arguments(cfg), "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
            "sync_batchnorm": False, "precision": "32-true", "callbacks": [], "default_root_dir": str(run_dir)}


def _jobs(cfg: DictConfig, attacks: dict[str, Any], ckpt: Path | None, inputs: AttackInputs, run_dir: Path) -> list:
    """Every attack's masks to aim at, shard folder (named by a fingerprint of everything that changes its results)
    and images left to do; a universal perturbation with images left is fitted first (on every rank alike)."""
    ev, task = cfg.attack_eval, inputs.module.task
    references, keys = {}, {}
    source = str(ckpt) if ckpt is not None else (inputs.weights or {}).get("sha256")
    sections = to_plain(cfg.attack)
    for name, atk in attacks.items():
        bind_task(atk, task)
        reference = inputs.targets if is_targeted(atk) else inputs.labels
        if isinstance(atk, UniversalAttack):
            reference = hide_class_target(inputs.clean_pred, atk.config.hide_class, task.num_classes)
        references[name] = reference
        keys[name] = fingerprint(sections.get(name), source, to_plain(cfg.data), ev.split, ev.seed, ev.quantize,
                                 ev.up_train_batches if isinstance(atk, UniversalAttack) else None, inputs.keys,
                                 reference)
    jobs = shard_jobs(run_dir, attacks, references, len(inputs.images), keys)
    for job in jobs:
        if isinstance(job.attack, UniversalAttack) and job.todo:
            job.attack.fit(inputs.net, _train_batches(inputs.datamodule, ev.up_train_batches, inputs.images.device))
    return jobs


def _attack_one(cfg: DictConfig, name: str, atk: Any, inputs: AttackInputs, run_dir: Path, merged: AttackResult,
                reference: Tensor, seconds: float, logger: AttackLogger, done: _Done) -> None:
    """Score one attack's merged results (all images, in order), save its panels and log it."""
    ev = cfg.attack_eval
    device = inputs.labels.device
    results = [dataclasses.replace(merged, **{f.name: getattr(merged, f.name).to(device) for f in
                                              dataclasses.fields(merged) if isinstance(getattr(merged, f.name), Tensor)})]
    reference = reference.to(device)
    method_rows, summary = _score(name, atk, results, reference, seconds, inputs)
    adv, adv_pred = torch.cat([r.adv for r in results]), torch.cat([r.pred for r in results])
    if not isinstance(atk, UniversalAttack):
        done.adversarial[name] = adv
    iou = torch.cat([r.iou for r in results])
    targeted = is_targeted(atk)
    panels = save_panels(name, adv, adv_pred, iou, inputs.images, reference, ev.panels, run_dir, inputs.keys,
                         labels=inputs.labels, clean_pred=inputs.clean_pred, targeted=targeted, task=inputs.module.task)
    logger.method(name, adv, adv_pred, reference, ev.panels, images=inputs.images, labels=inputs.labels,
                  clean_pred=inputs.clean_pred, keys=inputs.keys, values={"iou": iou}, targeted=targeted)
    done.rows += method_rows
    done.summaries.append(summary)
    done.panels[name] = panels  # last: an attack counts as done once all of it is kept


def _load_inputs(cfg: DictConfig, ckpt: Path | None, attacks: dict[str, Any] | None = None) -> AttackInputs:
    """The checkpoint (behind ``cfg.defense``: the checkpoint's unless overridden; ``ckpt`` None: the config's network
    with the weights of ``run.weights``), the images, masks and targets."""
    ev = cfg.attack_eval
    weights = None
    if ckpt is None:
        module, weights = module_from_weights(cfg)
    else:
        module = load_module(str(ckpt), defense=defense_hparams(cfg))
        if module.task.name != cfg.data.task:
            raise ConfigError(f"Checkpoint {ckpt} was trained for task {module.task.name!r} but data.task="
                              f"{cfg.data.task!r}: use data.task={module.task.name} (or leave it at the checkpoint's)")
    # DDP on GPUs: each rank's own GPU (LOCAL_RANK), where Lightning will put its shard's batches
    gpu = cfg.trainer.accelerator == "gpu" and torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if gpu else torch.device("cpu")
    module.net.eval().to(device)
    dm = build_datamodule_from(cfg)
    _require_splits(dm, cfg, attacks or {})
    try:
        dm.setup()
    except ValueError as e:  # plain ValueErrors of setup are the data config's
        if type(e) is not ValueError:  # DataError, ConfigError: already one line for the command line
            raise
        raise ConfigError(str(e).splitlines()[0]) from None
    _check_split_size(dm, ev, attacks or {})
    images, labels, keys, valid, sizes = _load_split_padded(dm, ev.split, ev.num_images, device)
    clean_pred = predict(module.net, images, ev.batch_size, valid=valid)
    labels = module.crop_labels(images, labels)
    targets, target_keys = _targets(labels if ev.target_base == "label" else clean_pred, keys, ev, device)
    clean_dice = per_image_dice(clean_pred, labels, module.task)
    return AttackInputs(module, dm, images, labels, keys, clean_pred, clean_dice, targets, target_keys, valid, sizes,
                        weights)


def _source(ckpt: Path | None, inputs: AttackInputs) -> str:
    """What was attacked, for report headers: the checkpoint, or the weights file and its digest."""
    if ckpt is not None or not inputs.weights:
        return f"Checkpoint `{ckpt}`"
    return f"Weights `{inputs.weights['path']}` (sha256 {inputs.weights['sha256'][:12]})"


def _needs_image_targets(attacks: dict[str, Any]) -> list[str]:
    """The attacks that aim at ``attack_eval.target`` masks (the universal perturbation builds its own)."""
    return [k for k, a in attacks.items() if is_targeted(a) and not isinstance(a, UniversalAttack)]


def _require_splits(dm: Any, cfg: DictConfig, attacks: dict[str, Any]) -> None:
    """The splits this run reads: the attacked one, and train for a universal perturbation (fitted on train batches);
    ``dm.setup`` then fails, before any run folder, when one is empty. No other split needs images."""
    ev = cfg.attack_eval
    dm.require(ev.split, f"attack_eval.split={ev.split}", alternative="attack_eval.split")
    universal = [k for k, a in attacks.items() if isinstance(a, UniversalAttack)]
    if universal:
        dm.require("train", f"attack={universal[0]} (a universal perturbation, fitted on attack_eval.up_train_batches="
                            f"{ev.up_train_batches} train batches)")


def _check_split_size(dm: Any, ev: Any, attacks: dict[str, Any]) -> None:
    """``other_image`` pairs each attacked image with another one: the attacked split must hold two. Says the real
    size and what changes it; also says when the split holds fewer than ``attack_eval.num_images``."""
    size = len(dm.split_ids[ev.split])
    targeted = _needs_image_targets(attacks)
    if ev.target == "other_image" and size < 2 and targeted:
        counts = {s: len(ids) for s, ids in dm.split_ids.items()}
        fixes = [f"attack_eval.split={s}" for s in ("val", "test", "train") if s != ev.split and counts[s] >= 2][:1]
        if dm.source_kind == "synthetic":
            fixes.append(f"data.num_{ev.split} >= 2")
        elif dm.split_mode == "random" and ev.split != "train":
            fixes.append(f"a larger data.{ev.split}_fraction")
        fixes.append("a target built from each image's own mask (e.g. attack_eval.target=shift)")
        shown = ", ".join(f"{s} {n}" for s, n in counts.items())
        fix = f"{', '.join(fixes[:-1])} or {fixes[-1]}" if len(fixes) > 1 else fixes[0]
        raise ConfigError(f"attack_eval.target=other_image aims each image at another image's mask, but the {ev.split} "
                          f"split holds {size} image{'' if size == 1 else 's'} ({shown}; targeted attacks: "
                          f"{', '.join(targeted)}): use {fix}")
    if ev.num_images is not None and size < ev.num_images:
        print(f"attack: the {ev.split} split holds {size} image{'' if size == 1 else 's'}, fewer than "
              f"attack_eval.num_images={ev.num_images}: attacking all {size}", flush=True)


def _run(cfg: DictConfig, atk: Any, inputs: AttackInputs, progress: Any) -> tuple[list[AttackResult], Tensor, float]:
    """One attack over all images: its batch results, the masks it aimed at, and the seconds it took."""
    ev, task = cfg.attack_eval, inputs.module.task
    bind_task(atk, task)
    reference = inputs.targets if is_targeted(atk) else inputs.labels
    if isinstance(atk, UniversalAttack):  # one perturbation for all images, fitted on training batches first
        atk.fit(inputs.net, _train_batches(inputs.datamodule, ev.up_train_batches, inputs.images.device))
        reference = hide_class_target(inputs.clean_pred, atk.config.hide_class, task.num_classes)
    start = time.perf_counter()
    results = attack_batches(atk, inputs.net, inputs.images, reference, ev.batch_size, progress, valid=inputs.valid,
                             quantize=bool(ev.get("quantize", False)))
    return results, reference, time.perf_counter() - start


def _score(name: str, atk: Any, results: list[AttackResult], reference: Tensor, seconds: float,
           inputs: AttackInputs) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-image rows and the summary of one attack (targeted attacks name the target's image as reference)."""
    targeted = is_targeted(atk)
    return method_report(name, targeted, results, seconds, task=inputs.module.task, keys=inputs.keys,
                         ref_keys=inputs.target_keys if targeted else inputs.keys, labels=inputs.labels,
                         clean_pred=inputs.clean_pred, clean_dice=inputs.clean_dice, reference=reference,
                         sizes=inputs.sizes, valid=inputs.valid)


def _sweep(cfg: DictConfig, ckpt: Path | None, inputs: AttackInputs, run_dir: Path, progress: Any,
           logger: AttackLogger) -> list[dict[str, Any]]:
    """The robustness curve of ``attack_eval.checkpoints`` (default: the attacked checkpoint or weights)."""
    ev = cfg.attack_eval
    options = {"eps_values": list(ev.eps_sweep), "attacks": list(ev.sweep_attacks), "steps": ev.sweep_steps,
               "batch_size": ev.batch_size, "sections": to_plain(cfg.attack), "progress": progress, "valid": inputs.valid}
    if ev.checkpoints or ckpt is not None:
        checkpoints = [resolve_checkpoint(c, cfg.run.output_dir) for c in ev.checkpoints] or [ckpt]
        rows = robustness_sweep(checkpoints, inputs.images, inputs.labels, **options)
    else:  # weights trained elsewhere: no checkpoint to load by path, the attacked module itself
        rows = flag_monotone(model_curve(inputs.module, Path(cfg.run.weights), inputs.images, inputs.labels,
                                         clean_pred=inputs.clean_pred, **options))
    logger.robustness(rows, write_robustness(run_dir, rows))
    return rows


def _defense_report(cfg: DictConfig, ckpt: Path | None, inputs: AttackInputs, attacks: dict[str, Any],
                    adversarial: dict[str, Tensor], run_dir: Path, logger: AttackLogger,
                    progress: Any = None) -> dict[str, Any]:
    """Each defense of ``attack_eval.defenses`` in front of the checkpoint's bare network."""
    ev = cfg.attack_eval
    bare = inputs.module.base_net
    # images crafted on the bare network by the main loop are the oblivious attacker's (not when it attacked a defended net)
    oblivious = adversarial if bare is inputs.net else None
    per_image = {k: a for k, a in attacks.items() if not isinstance(a, UniversalAttack)}
    report = defense_report(bare, {name: defense_section(name) for name in ev.defenses}, per_image, inputs.images,
                            inputs.labels, inputs.targets, inputs.module.task, batch_size=ev.batch_size,
                            eps_sweep=list(ev.eps_sweep), sweep_steps=ev.sweep_steps, oblivious=oblivious,
                            sections=to_plain(cfg.attack), valid=inputs.valid, progress=progress)
    write_defense_report(run_dir, report, f"{_source(ckpt, inputs)}, {len(inputs.images)} {ev.split} images")
    logger.table("attack/defense", report["rows"])
    return report


def _load_split(dm: Any, split: str, n: int | None, device: torch.device) -> tuple[Tensor, Tensor, list[str]]:
    return _load_split_padded(dm, split, n, device)[:3]


def _load_split_padded(dm: Any, split: str, n: int | None, device: torch.device) -> tuple[Tensor, Tensor, list[str], Tensor, Tensor]:
    """Images, labels, keys, validity maps (False on padding) and original (H, W) of the first ``n`` images (None:
    all of the split)."""
    ds = dm.dataset(split)
    n = len(ds) if n is None else min(n, len(ds))
    if n < 1:
        raise ConfigError(f"attack_eval.split={split!r}: the {split} split is empty, nothing to attack")
    items = [ds[(i, 0)] for i in range(n)]
    images = torch.stack([it["image"] for it in items]).to(device)
    labels = torch.stack([it["mask"] for it in items]).to(device)
    valid = torch.stack([it["valid"] for it in items]).to(device)
    sizes = torch.stack([it["orig_size"] for it in items])
    return images, labels, [it["key"] for it in items], valid, sizes


def _targets(labels: Tensor, keys: list[str], ev: Any, device: torch.device) -> tuple[Tensor, list[str]]:
    """Target masks built from ``labels`` (the ground truth, or the clean prediction for ``target_base=prediction``)."""
    if ev.target == "other_image":
        if len(keys) < 2:  # no attack aims at these targets (_check_split_size): a placeholder, never used
            return labels.clone(), list(keys)
        pairs = derangement_pairs(len(keys), seed=ev.seed)
        order = [t for _, t in sorted(pairs)]
        return labels[order].clone(), [keys[t] for t in order]
    generator = torch.Generator(device=device).manual_seed(ev.seed)
    targets = make_target(ev.target, labels, generator=generator, **to_plain(ev.target_params))
    return targets, [f"{k}:{ev.target}" for k in keys]


def _train_batches(dm: Any, n: int, device: torch.device):
    for i, batch in enumerate(dm.train_dataloader()):
        if i >= n:
            break
        yield batch["image"].to(device), batch["mask"].to(device)


__all__ = ["AttackInputs", "attack"]
