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

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from tqdm.auto import tqdm

from lightning_seg.adversarial import bind_task
from lightning_seg.attacks import ATTACKS, UniversalAttack, build_attack
from lightning_seg.attacks.synthesis import synthesis_records, synthesis_summary
from lightning_seg.attacks.universal import hide_class_target
from lightning_seg.clinical import CLINICAL_TASK, clinical_report, summarize_clinical, target_flip_shares
from lightning_seg.config import defense_section, to_plain
from lightning_seg.defense_eval import defense_report, report_markdown
from lightning_seg.io import atomic_write, write_json, write_text
from lightning_seg.lit_module import SegmentationModule, load_module
from lightning_seg.metrics import per_image_dice
from lightning_seg.panels import attack_panel, save_png
from lightning_seg.robustness import plot_curve, robustness_sweep, robustness_table
from lightning_seg.runs import new_run_dir, resolve_checkpoint, run_scope
from lightning_seg.targets import derangement_pairs, make_target
from lightning_seg.train import build_datamodule_from, defense_hparams

TABLE_COLUMNS = ("l2", "linf", "iou", "pixel_acc")


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

    logger = _Logger(cfg, run_dir)
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
        method_rows = _rows(name, targeted, results, adv_pred, keys, target_keys if targeted else keys, gt, clean_dice, module)
        clinical = clinical_report(CLINICAL_TASK[module.task.name], gt, clean_pred, adv_pred)
        for i, row in enumerate(method_rows):
            row.update({f"clin_{k}": float(v[i]) for k, v in clinical.items()} | (synth[i] if synth else {}))
        rows += method_rows
        extra = target_flip_shares(CLINICAL_TASK[module.task.name], clean_pred, reference) if targeted else {}
        summaries.append(_summarise(name, targeted, method_rows, results, seconds)
                         | {f"clin_{k}": float(v) for k, v in (summarize_clinical(clinical) | extra).items()}
                         | (synthesis_summary(synth) if synth else {}))
        iou = torch.cat([r.iou for r in results])
        panels[name] = _panels(name, adv, adv_pred, iou, images, reference, ev.panels, run_dir, keys)
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
        _write_csv(run_dir / "per_image.csv", rows)
        write_json(run_dir / "per_image.json", rows)
        _write_csv(run_dir / "summary.csv", summaries)
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
    _write_csv(run_dir / "robustness.csv", rows)
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
    _write_csv(run_dir / "defense.csv", report["rows"])
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


def _rows(name: str, targeted: bool, results: list[Any], adv_pred: Tensor, keys: list[str], ref_keys: list[str], labels: Tensor,
          clean_dice: Tensor, module: SegmentationModule) -> list[dict[str, Any]]:
    adv_dice = per_image_dice(adv_pred, labels, module.task)
    structures = module.task.structure_names
    records = [rec for r in results for rec in r.to_records()]
    n_per = sum(len(r) for r in results)
    fwd = sum(r.forwards for r in results) / n_per
    bwd = sum(r.backwards for r in results) / n_per
    out = []
    for i, rec in enumerate(records):
        row = {"method": name, "image": keys[i], "reference": ref_keys[i], "targeted": targeted}
        row.update({k: v for k, v in rec.items() if k not in ("index", "targeted")})
        for j, s in enumerate(structures):
            row[f"clean_dice_{s}"] = float(clean_dice[i, j])
            row[f"adv_dice_{s}"] = float(adv_dice[i, j])
        row["forwards_per_image"], row["backwards_per_image"] = fwd, bwd
        out.append(row)
    return out


def _summarise(name: str, targeted: bool, rows: list[dict[str, Any]], results: list[Any], seconds: float) -> dict[str, Any]:
    t = {k: torch.tensor([r[k] for r in rows], dtype=torch.float64) for k in ("l2", "linf", "rms", "iou", "pixel_acc", "iterations")}
    out: dict[str, Any] = {"method": name, "targeted": targeted, "n": len(rows),
                           "success_rate": sum(bool(r["success"]) for r in rows) / len(rows)}
    for k, v in t.items():
        out[f"{k}_mean"], out[f"{k}_std"] = float(v.mean()), float(v.std(unbiased=False))
    for k in rows[0]:
        if k.startswith("adv_dice_") or k.startswith("clean_dice_"):
            out[f"{k}_mean"] = sum(r[k] for r in rows) / len(rows)
    out["forwards_per_image"], out["backwards_per_image"] = rows[0]["forwards_per_image"], rows[0]["backwards_per_image"]
    out["seconds"] = round(seconds, 2)
    return out


def table1(summaries: list[dict[str, Any]]) -> str:
    """Markdown table in the layout of ASMA Table 1 (+ success, RMS in 1/255 units, iterations and cost)."""
    lines = ["| method | reference | L2 | Linf | IoU | pixel acc. | success | RMS (x255) | iterations | fwd/img | time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        pct = lambda k: f"{100 * s[k + '_mean']:.1f} % +- {100 * s[k + '_std']:.1f}"  # noqa: E731
        lines.append(
            f"| {s['method']} | {'target' if s['targeted'] else 'ground truth'} | {s['l2_mean']:.2f} +- {s['l2_std']:.2f} | "
            f"{s['linf_mean']:.3f} +- {s['linf_std']:.3f} | {pct('iou')} | {pct('pixel_acc')} | {100 * s['success_rate']:.0f} % | "
            f"{255 * s['rms_mean']:.2f} | {s['iterations_mean']:.0f} | {s['forwards_per_image']:.0f} | {s['seconds']:.1f} |"
        )
    return "\n".join(lines)


CLINICAL_COLUMNS = {
    "vCDR gt / clean / adv": ("clin_vcdr_gt", "clin_vcdr_clean", "clin_vcdr_adv"),
    "screening flips at 0.6 / 0.7": ("clin_flip@0.6", "clin_flip@0.7"),
    "target masks' flips at 0.6 / 0.7": ("clin_target_flip@0.6", "clin_target_flip@0.7"),
    "normal->suspect of clean-normal at 0.6 / 0.7": ("clin_n2s_of_normal@0.6", "clin_n2s_of_normal@0.7"),
    "same for the target masks": ("clin_target_n2s_of_normal@0.6", "clin_target_n2s_of_normal@0.7"),
    "mean abs dvCDR": ("clin_mean_abs_dvcdr",),
    "rel. area change": ("clin_rel_area_change",),
    "compactness clean / adv": ("clin_compactness_clean", "clin_compactness_adv"),
    "asymmetry score clean / adv": ("clin_asym_score_clean", "clin_asym_score_adv"),
}


def clinical_table(summaries: list[dict[str, Any]]) -> str:
    """Per attack: vCDR and screening-label flips (glaucoma disc_cup) or lesion shape changes (ISIC, disc)."""
    columns = {name: keys for name, keys in CLINICAL_COLUMNS.items() if any(all(k in s for k in keys) for s in summaries)}
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for s in summaries:
        cells = [" / ".join(f"{s[k]:.3f}" if k in s else "-" for k in keys) for keys in columns.values()]
        lines.append(f"| {s['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def synthesis_table(summaries: list[dict[str, Any]]) -> str:
    """Requested vs achieved Dice drop, share of images within the tolerance, and realism of the synthesis attack."""
    lines = ["| method | requested drop | achieved drop | within tol | max disp (px) | max abs(b-1) | min det J | SSIM |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        if "synth_within_tol_share" in s:
            lines.append(f"| {s['method']} | {s['synth_drop_requested_mean']:.3f} | {s['synth_drop_achieved_mean']:.3f} +- "
                         f"{s['synth_drop_achieved_std']:.3f} | {100 * s['synth_within_tol_share']:.0f} % | "
                         f"{s['synth_max_disp_px_mean']:.2f} | {s['synth_max_bias_mean']:.3f} | {s['synth_min_jacobian_min']:.3f} | "
                         f"{s['synth_ssim_mean']:.3f} |")
    return "\n".join(lines)


def _panels(name: str, adv: Tensor, pred: Tensor, iou: Tensor, images: Tensor, reference: Tensor, n: int, run_dir: Path,
            keys: list[str]) -> list[Path]:
    paths = []
    for i in range(min(n, len(adv))):
        panel = attack_panel(images[i], reference[i], adv[i], pred[i], title=f"{name} | {keys[i]} | IoU {float(iou[i]):.3f}")
        path = run_dir / "panels" / f"{name}_{i:03d}.png"
        save_png(panel, path)
        paths.append(path)
    return paths


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))

    def write(f: io.TextIOBase) -> None:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(path, write)


class _Logger:
    """W&B logging for the attack command (no Trainer here): tables, summary metrics, panels with mask overlays."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.run = None
        if cfg.logger.name != "wandb" or cfg.logger.mode == "disabled":
            return
        import wandb

        self.wandb = wandb
        self.classes = {0: "background", 1: "lesion" if cfg.data.task == "lesion" else "disc / rim", 2: "cup"}
        self.run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, dir=str(run_dir), mode=cfg.logger.mode,
                              job_type="attack", name=f"attack/{run_dir.name}", config=to_plain(cfg), tags=list(cfg.logger.tags),
                              reinit="finish_previous")

    def method(self, name: str, adv: Tensor, pred: Tensor, reference: Tensor, n: int) -> None:
        if self.run is None:
            return
        from lightning_seg.panels import to_uint8

        media = []
        for i in range(min(n, len(adv))):
            masks = {"prediction": {"mask_data": pred[i].cpu().numpy(), "class_labels": self.classes},
                     "reference": {"mask_data": reference[i].cpu().numpy(), "class_labels": self.classes}}
            media.append(self.wandb.Image(to_uint8(adv[i]), masks=masks, caption=f"{name} #{i}"))
        self.run.log({f"attack/{name}/panels": media})

    def table(self, key: str, rows: list[dict[str, Any]]) -> None:
        if self.run is None or not rows:
            return
        cols = list(rows[0])
        self.run.log({key: self.wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows])})

    def robustness(self, rows: list[dict[str, Any]], plot: Path) -> None:
        if self.run is None:
            return
        cols = list(rows[0])
        self.run.log({"attack/robustness": self.wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows]),
                      "attack/robustness_curve": self.wandb.Image(str(plot))})

    def finish(self, summaries: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        if self.run is None:
            return
        if not summaries:
            self.run.finish()
            return
        for s in summaries:
            for k, v in s.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.run.summary[f"attack/{s['method']}/{k}"] = v
        cols = list(summaries[0])
        self.run.log({"attack/summary": self.wandb.Table(columns=cols, data=[[s[c] for c in cols] for s in summaries])})
        cols = list(dict.fromkeys(k for r in rows for k in r))
        self.run.log({"attack/per_image": self.wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])})
        self.run.finish()


__all__ = ["ATTACKS", "attack", "table1"]
