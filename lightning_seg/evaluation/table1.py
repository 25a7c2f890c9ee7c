"""Per-image rows, per-attack summaries and the markdown tables of the ``attack`` command.

Table 1 follows the layout of the ASMA paper's Table 1 (L2, Linf, IoU and pixel accuracy against the attack's
reference) with the success rate, the RMS of the perturbation, iterations and cost added.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_seg.metrics.clinical import SCREENING_THRESHOLDS
from lightning_seg.metrics.segmentation import per_image_dice
from lightning_seg.tasks import Task


def per_image_rows(name: str, targeted: bool, results: list[Any], adv_pred: Tensor, keys: list[str], ref_keys: list[str],
                   labels: Tensor, clean_dice: Tensor, task: Task) -> list[dict[str, Any]]:
    """One row per attacked image: the attack's record, clean and adversarial Dice per structure vs ``labels``, and the
    forwards / backwards per image of the whole attack."""
    adv_dice = per_image_dice(adv_pred, labels, task)
    structures = task.structure_names
    records = [rec for r in results for rec in r.to_records()]
    # ensembles (SEA) name, per image, the member whose result is the worst case
    winners = [r.extras["members"][int(w)] for r in results if "winner" in r.extras for w in r.extras["winner"].tolist()]
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
        if winners:
            row["winner"] = winners[i]
        out.append(row)
    return out


def summarise_method(name: str, targeted: bool, rows: list[dict[str, Any]], results: list[Any], seconds: float) -> dict[str, Any]:
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
    if "winner" in rows[0]:
        out["winners"] = {w: sum(r["winner"] == w for r in rows) for w in dict.fromkeys(r["winner"] for r in rows)}
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
    for s in summaries:
        if s.get("winners"):
            counts = ", ".join(f"{member} {n}" for member, n in s["winners"].items())
            lines.append(f"\n{s['method']}: worst case per image came from {counts} (images per member)")
    return "\n".join(lines)


_AT = " / ".join(f"{t:g}" for t in SCREENING_THRESHOLDS)


def _per_threshold(key: str) -> tuple[str, ...]:
    return tuple(f"clin_{key}@{t:g}" for t in SCREENING_THRESHOLDS)


CLINICAL_COLUMNS = {
    "vCDR gt / clean / adv": ("clin_vcdr_gt", "clin_vcdr_clean", "clin_vcdr_adv"),
    f"screening flips at {_AT}": _per_threshold("flip"),
    f"target masks' flips at {_AT}": _per_threshold("target_flip"),
    f"normal->suspect of clean-normal at {_AT}": _per_threshold("n2s_of_normal"),
    "same for the target masks": _per_threshold("target_n2s_of_normal"),
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
