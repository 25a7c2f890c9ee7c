"""The ``attack`` command's report: per-image rows and the summary of one attack, the markdown of the run, its files.

Rows and summaries add to Table 1 (:mod:`lightning_seg.evaluation.table1`) the clinical read-outs of the clean and
adversarial predictions (``clin_*``) and, for the synthesis attack, its realism records (``synth_*``). Units: those of
:mod:`lightning_seg.evaluation.units` (shares of images as ``*_pct`` in percent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_seg.attacks import AttackResult
from lightning_seg.attacks.synthesis import synthesis_records, synthesis_summary
from lightning_seg.evaluation import units
from lightning_seg.evaluation.clinical import clinical_report, summarize_clinical, target_flip_shares
from lightning_seg.evaluation.defense_report import report_markdown
from lightning_seg.evaluation.robustness import robustness_table
from lightning_seg.evaluation.table1 import clinical_table, per_image_rows, summarise_method, synthesis_table, table1
from lightning_seg.io import write_csv, write_json, write_text
from lightning_seg.metrics.clinical import CLINICAL_TASK
from lightning_seg.tasks import Task

UNITS_NOTE = ("Units: L2 unnormalised over the whole input in [0,1] units; Linf and RMS x255 (1/255 steps); success and "
              "other rates in percent; Dice, IoU and pixel accuracy in [0,1]; mean +- std over images.")


def method_report(name: str, targeted: bool, results: list[AttackResult], seconds: float, *, task: Task, keys: list[str],
                  ref_keys: list[str], labels: Tensor, clean_pred: Tensor, clean_dice: Tensor,
                  reference: Tensor, sizes: Tensor | None = None,
                  valid: Tensor | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-image rows and the summary of one attack's batch ``results`` (Table 1, clinical and synthesis columns).

    ``labels``: the ground truth; attacks that deform the anatomy (synthesis) are scored against the equally deformed
    label instead. ``reference``: what the attack aimed at (targets, or the ground truth). ``sizes`` / ``valid``: the
    images' original (H, W) and validity maps: clinical read-outs in the original aspect ratio, padding excluded."""
    adv_pred = torch.cat([r.pred for r in results])
    gt, synth = synthesis_records(results) if "adv_labels" in results[0].extras else (labels, None)
    rows = per_image_rows(name, targeted, results, adv_pred, keys, ref_keys, gt, clean_dice, task)
    clinical = clinical_report(CLINICAL_TASK[task.name], gt, clean_pred, adv_pred, sizes=sizes, valid=valid)
    for i, row in enumerate(rows):
        row.update({f"clin_{k}": float(v[i]) for k, v in clinical.items()} | (synth[i] if synth else {}))
    extra = target_flip_shares(CLINICAL_TASK[task.name], clean_pred, reference, sizes=sizes, valid=valid) if targeted else {}
    clinical_summary = {f"clin_{k}": float(v) for k, v in (summarize_clinical(clinical) | extra).items()}
    summary = (summarise_method(name, targeted, rows, results, seconds)
               | units.share_columns(clinical_summary | (synthesis_summary(synth) if synth else {})))
    return rows, summary


def attack_markdown(summaries: list[dict[str, Any]], robustness: list[dict[str, Any]] | None,
                    defense: dict[str, Any] | None) -> str:
    """The run's tables: Table 1, robustness curve, defenses, clinical read-outs and synthesis, those that apply."""
    table = table1(summaries) if summaries else ""
    if robustness:
        table += ("\n\n" if table else "") + "Robustness (untargeted, vs ground truth):\n\n" + robustness_table(robustness)
    if defense:
        table += ("\n\nDefenses (threat model per row; efficiency = IoU of the defended prediction vs ground truth):\n\n"
                  + report_markdown(defense))
    if summaries:
        table += "\n\nClinical read-outs (clean vs adversarial prediction):\n\n" + clinical_table(summaries)
    if any("synth_within_tol_pct" in s for s in summaries):
        table += "\n\nSynthesis (Dice vs the equally deformed label):\n\n" + synthesis_table(summaries)
    return table


def write_attack_results(run_dir: Path, result: dict[str, Any], rows: list[dict[str, Any]], header: str) -> None:
    """``per_image.{csv,json}`` and ``summary.csv`` (when attacks ran), ``summary.md`` and ``results.json``."""
    if rows:
        write_csv(run_dir / "per_image.csv", rows)
        write_json(run_dir / "per_image.json", rows)
        write_csv(run_dir / "summary.csv", result["summary"])
    write_text(run_dir / "summary.md", f"# Attack results\n\n{header}\n\n{result['table']}\n")
    write_json(run_dir / "results.json", result)


__all__ = ["UNITS_NOTE", "attack_markdown", "method_report", "write_attack_results"]
