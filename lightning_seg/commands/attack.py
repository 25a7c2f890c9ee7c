"""The ``attack`` command: run registered attacks on a trained segmenter and report Table-1 style results.

Protocol (ASMA paper, REFERENCE 5.1): the first ``attack_eval.num_images`` images of a split are
attacked; targeted attacks aim at another image's mask (a seeded derangement of those images, or a
clinical edit from ``lightning_seg.targets``); untargeted attacks use the ground truth. Every image's
result is kept: success, IoU and pixel accuracy against the attack's reference (target or ground
truth), L2 / Linf / RMS of the perturbation, iterations, and Dice of the adversarial prediction
against the ground truth. The run folder gets ``per_image.{csv,json}``, ``summary.{md,csv}``,
``panels/*.png`` and ``results.json``; W&B gets the same tables and the panels with mask overlays.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from tqdm.auto import tqdm

from lightning_seg.attacks import ATTACKS, UniversalAttack, build_attack
from lightning_seg.attacks.config import bind_task
from lightning_seg.attacks.synthesis import synthesis_records, synthesis_summary
from lightning_seg.attacks.targets import derangement_pairs, make_target
from lightning_seg.attacks.universal import hide_class_target
from lightning_seg.config import defense_section, to_plain
from lightning_seg.evaluation.clinical import clinical_report, summarize_clinical, target_flip_shares
from lightning_seg.evaluation.defense_report import defense_report, report_markdown
from lightning_seg.evaluation.robustness import plot_curve, robustness_sweep, robustness_table
from lightning_seg.evaluation.table1 import clinical_table, per_image_rows, summarise_method, synthesis_table, table1
from lightning_seg.evaluation.wandb_log import AttackLogger
from lightning_seg.io import write_csv, write_json, write_text
from lightning_seg.metrics.clinical import CLINICAL_TASK
from lightning_seg.metrics.segmentation import per_image_dice
from lightning_seg.runs import new_run_dir, resolve_checkpoint, run_scope
from lightning_seg.training.checkpoint import load_module
from lightning_seg.training.module import SegmentationModule
from lightning_seg.training.trainer import build_datamodule_from, defense_hparams
from lightning_seg.viz.panels import save_panels


def attack(cfg: DictConfig) -> dict[str, Any]:
    """Attack the checkpoint ``run.ckpt`` (default: best of the latest fit run) with every attack in ``cfg.attack``."""
    if cfg.attack_eval.target_base not in ("label", "prediction"):
        raise ValueError(f"attack_eval.target_base={cfg.attack_eval.target_base!r}: use label (ground truth) or prediction "
                         "(the model's clean mask)")
    if cfg.attack_eval.defenses and not cfg.attack:
        raise ValueError("attack_eval.defenses needs attacks to evaluate them under: add attack=[asma,pgd]")
    if not cfg.attack and not cfg.attack_eval.eps_sweep:
        raise ValueError("Nothing to do: choose attacks (attack=[ssm,asm,asma,dag]) and/or a sweep (attack_eval.eps_sweep=[1/255,4/255])")
    # key = the label in reports (e.g. asma_paper); params["name"] = the registered attack. Bad keys fail here, early.
    attacks = {key: build_attack(params.pop("name", key), **params) for key, params in to_plain(cfg.attack).items()}
    ckpt = resolve_checkpoint(cfg.run.ckpt, cfg.run.output_dir)
    run_dir = new_run_dir(cfg.run.output_dir, "attack", cfg.data.name, cfg.run.name)
    with run_scope(run_dir):
        return _attack(cfg, attacks, ckpt, run_dir)


def _attack(cfg: DictConfig, attacks: dict[str, Any], ckpt: Path, run_dir: Path) -> dict[str, Any]:
    pl.seed_everything(cfg.seed, verbose=False)
    ev = cfg.attack_eval
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    module = load_module(str(ckpt), defense=defense_hparams(cfg))  # cfg.defense: the checkpoint's unless overridden
    if module.task.name != cfg.data.task:
        raise ValueError(f"Checkpoint {ckpt} was trained for task {module.task.name!r} but data.task={cfg.data.task!r}")
    net = module.net.eval()
    device = torch.device("cuda" if cfg.trainer.accelerator == "gpu" and torch.cuda.is_available() else "cpu")
    net.to(device)
    dm = build_datamodule_from(cfg)
    dm.setup()
    images, labels, keys = _load_split(dm, ev.split, ev.num_images, device)
    with torch.no_grad():
        clean_pred = torch.cat([net(x).argmax(1) for x in images.split(ev.batch_size)])
    labels = module.crop_labels(images, labels)
    targets, target_keys = _targets(labels if ev.target_base == "label" else clean_pred, keys, ev, device)
    clean_dice = per_image_dice(clean_pred, labels, module.task)

    logger = AttackLogger(cfg, run_dir)
    rows: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    panels: dict[str, list[Path]] = {}
    adversarial: dict[str, Tensor] = {}
    n_batches = math.ceil(len(images) / ev.batch_size)
    n_sweep = max(1, len(ev.checkpoints)) * len(ev.sweep_attacks) * len(ev.eps_sweep)
    progress = tqdm(total=(len(attacks) + n_sweep) * n_batches, desc="attack", unit="batch", disable=None)
    for name, atk in attacks.items():
        bind_task(atk, module.task)
        targeted = bool(getattr(atk, "targeted", getattr(atk.config, "targeted", True)))
        reference = targets if targeted else labels
        if isinstance(atk, UniversalAttack):
            atk.fit(net, _train_batches(dm, ev.up_train_batches, device))
            reference = hide_class_target(clean_pred, atk.config.hide_class, module.task.num_classes)
        start = time.perf_counter()
        results = []
        for x, ref in zip(images.split(ev.batch_size), reference.split(ev.batch_size)):
            results.append(atk(net, x, ref))
            progress.update(1)
        seconds = time.perf_counter() - start
        adv, adv_pred = torch.cat([r.adv for r in results]), torch.cat([r.pred for r in results])
        if not isinstance(atk, UniversalAttack):
            adversarial[name] = adv
        # synthesis deforms the anatomy: its ground truth is the equally deformed label
        gt, synth = synthesis_records(results) if "adv_labels" in results[0].extras else (labels, None)
        method_rows = per_image_rows(name, targeted, results, adv_pred, keys, target_keys if targeted else keys, gt, clean_dice, module.task)
        clinical = clinical_report(CLINICAL_TASK[module.task.name], gt, clean_pred, adv_pred)
        for i, row in enumerate(method_rows):
            row.update({f"clin_{k}": float(v[i]) for k, v in clinical.items()} | (synth[i] if synth else {}))
        rows += method_rows
        extra = target_flip_shares(CLINICAL_TASK[module.task.name], clean_pred, reference) if targeted else {}
        summaries.append(summarise_method(name, targeted, method_rows, results, seconds)
                         | {f"clin_{k}": float(v) for k, v in (summarize_clinical(clinical) | extra).items()}
                         | (synthesis_summary(synth) if synth else {}))
        iou = torch.cat([r.iou for r in results])
        panels[name] = save_panels(name, adv, adv_pred, iou, images, reference, ev.panels, run_dir, keys)
        logger.method(name, adv, adv_pred, reference, ev.panels)
    defense = None
    if ev.defenses:
        defense = _defense_report(cfg, ckpt, module, attacks, adversarial, images, labels, targets, run_dir)
        logger.table("attack/defense", defense["rows"])
    robustness = None
    if ev.eps_sweep:
        robustness = _sweep(cfg, ckpt, images, labels, run_dir, progress)
        logger.robustness(robustness, run_dir / "robustness.png")
    progress.close()

    table = ""
    if rows:
        write_csv(run_dir / "per_image.csv", rows)
        write_json(run_dir / "per_image.json", rows)
        write_csv(run_dir / "summary.csv", summaries)
        table = table1(summaries)
    if robustness:
        table += ("\n\n" if table else "") + "Robustness (untargeted, vs ground truth):\n\n" + robustness_table(robustness)
    header = (f"Checkpoint `{ckpt}`, {cfg.data.name} ({cfg.data.source}), {len(images)} {ev.split} images, "
              f"targets: {ev.target}. L2 is unnormalised over the whole [0,1] input; mean +- std over images.")
    if defense:
        table += "\n\nDefenses (threat model per row; efficiency = IoU of the defended prediction vs ground truth):\n\n" + report_markdown(defense)
    if summaries:
        table += "\n\nClinical read-outs (clean vs adversarial prediction):\n\n" + clinical_table(summaries)
    if any("synth_within_tol_share" in s for s in summaries):
        table += "\n\nSynthesis (Dice vs the equally deformed label):\n\n" + synthesis_table(summaries)
    write_text(run_dir / "summary.md", f"# Attack results\n\n{header}\n\n{table}\n")
    result = {"command": "attack", "run_dir": str(run_dir), "checkpoint": str(ckpt), "table": table,
              "summary": summaries, "panels": {k: [str(p) for p in v] for k, v in panels.items()}, "robustness": robustness,
              "defense": defense}
    write_json(run_dir / "results.json", result)
    logger.finish(summaries, rows)
    return result


def _sweep(cfg: DictConfig, ckpt: Path, images: Tensor, labels: Tensor, run_dir: Path, progress: Any) -> list[dict[str, Any]]:
    ev = cfg.attack_eval
    checkpoints = [resolve_checkpoint(c, cfg.run.output_dir) for c in ev.checkpoints] or [ckpt]
    rows = robustness_sweep(checkpoints, images, labels, eps_values=list(ev.eps_sweep), attacks=list(ev.sweep_attacks),
                            steps=ev.sweep_steps, batch_size=ev.batch_size, sections=to_plain(cfg.attack), progress=progress)
    write_csv(run_dir / "robustness.csv", rows)
    write_text(run_dir / "robustness.md", robustness_table(rows) + "\n")
    plot_curve(rows, run_dir / "robustness.png")
    return rows


def _defense_report(cfg: DictConfig, ckpt: Path, module: SegmentationModule, attacks: dict[str, Any], adversarial: dict[str, Tensor],
                    images: Tensor, labels: Tensor, targets: Tensor, run_dir: Path) -> dict[str, Any]:
    """Each defense of ``attack_eval.defenses`` in front of the checkpoint's bare network (lightning_seg.defense_eval)."""
    ev = cfg.attack_eval
    bare = module.base_net
    # images crafted on the bare network by the main loop are the oblivious attacker's (not when it attacked a defended net)
    oblivious = adversarial if bare is module.net else None
    report = defense_report(bare, {name: defense_section(name) for name in ev.defenses},
                            {k: a for k, a in attacks.items() if not isinstance(a, UniversalAttack)}, images, labels, targets,
                            module.task, batch_size=ev.batch_size, eps_sweep=list(ev.eps_sweep), sweep_steps=ev.sweep_steps,
                            oblivious=oblivious, sections=to_plain(cfg.attack))
    write_csv(run_dir / "defense.csv", report["rows"])
    header = (f"# Defense report\n\nCheckpoint `{ckpt}`, {len(images)} {ev.split} images; "
              "oblivious = adversarial images crafted on the undefended model, then defended; adaptive = the attack on "
              "model . defense (BPDA: identity backward). Only adaptive rows support a robustness claim. Adversarial images stay "
              "float in [0,1] (no uint8 round-trip); means over images; IoU / Dice per image vs the ground truth.")
    write_text(run_dir / "defense.md", report_markdown(report, header) + "\n")
    return report


def _load_split(dm: Any, split: str, n: int, device: torch.device) -> tuple[Tensor, Tensor, list[str]]:
    ds = dm.dataset(split)
    n = min(n, len(ds))
    if n < 1:
        raise ValueError(f"The {split} split is empty: nothing to attack")
    items = [ds[(i, 0)] for i in range(n)]
    images = torch.stack([it["image"] for it in items]).to(device)
    labels = torch.stack([it["mask"] for it in items]).to(device)
    return images, labels, [it["key"] for it in items]


def _targets(labels: Tensor, keys: list[str], ev: Any, device: torch.device) -> tuple[Tensor, list[str]]:
    """Target masks built from ``labels`` (the ground truth, or the clean prediction for ``target_base=prediction``)."""
    if ev.target == "other_image":
        if len(keys) < 2:
            raise ValueError("target=other_image needs at least 2 images (attack_eval.num_images >= 2)")
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


__all__ = ["ATTACKS", "attack", "table1"]
