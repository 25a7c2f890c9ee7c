"""Per-image rows, per-attack summaries and the markdown tables of the ``attack`` command.

Table 1 follows the layout of the ASMA paper's Table 1 (L2, Linf, IoU and pixel accuracy against the attack's
reference) with the success rate, the RMS of the perturbation, the robust Dice per structure against the ground
truth, iterations and cost added. Units (:mod:`lightning_seg.evaluation.units`): L2 in [0,1] units, Linf and RMS
x255, success in percent, scores in [0,1]; the column names of rows and summaries say so.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_seg.evaluation import units
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
        row.update(units.perturbation_columns({k: v for k, v in rec.items() if k not in ("index", "targeted")}))
        for j, s in enumerate(structures):
            row[f"clean_dice_{s}"] = float(clean_dice[i, j])
            row[f"adv_dice_{s}"] = float(adv_dice[i, j])
        row["forwards_per_image"], row["backwards_per_image"] = fwd, bwd
        if winners:
            row["winner"] = winners[i]
        out.append(row)
    return out


def summarise_method(name: str, targeted: bool, rows: list[dict[str, Any]], results: list[Any], seconds: float) -> dict[str, Any]:
    """Means (and std) over the per-image ``rows`` of one attack, in the rows' units (``success_pct`` in percent)."""
    columns = (units.L2, units.LINF, units.RMS, "iou", "pixel_acc", "iterations")
    t = {k: torch.tensor([r[k] for r in rows], dtype=torch.float64) for k in columns}
    out: dict[str, Any] = {"method": name, "targeted": targeted, "n": len(rows),
                           units.SUCCESS_PCT: units.pct(sum(bool(r[units.SUCCESS]) for r in rows) / len(rows))}
    for k, v in t.items():
        out[f"{k}_mean"], out[f"{k}_std"] = float(v.mean()), float(v.std(unbiased=False))
    for k in rows[0]:
        if k.startswith("adv_dice_") or k.startswith("clean_dice_"):
            out[f"{k}_mean"] = sum(r[k] for r in rows) / len(rows)
    out["forwards_per_image"], out["backwards_per_image"] = rows[0]["forwards_per_image"], rows[0]["backwards_per_image"]
    out["seconds"] = round(seconds, 2)
    if "winner" in rows[0]:
        out["winners"] = {w: sum(r["winner"] == w for r in rows) for w in dict.fromkeys(r["winner"] for r in rows)}
        out["check"] = ensemble_check(results)
    return out


def ensemble_check(results: list[Any]) -> str:
    """Sanity check of an ensemble (SEA): per image, its worst-case Dice is at most every member's that ran on the
    image; "ok" or "WARN: ..." (a violation would mean the per-image selection is broken)."""
    from lightning_seg.evaluation.robustness import check_worst_case

    worst = torch.cat([r.extras["dice"] for r in results]).cpu()
    members = torch.cat([r.extras["member_dice"] for r in results]).cpu()
    names = results[0].extras["members"]
    problems = check_worst_case(worst, {f"{j}:{n}": members[:, j] for j, n in enumerate(names)})
    return "ok" if not problems else "WARN: " + "; ".join(problems)


def structures(summaries: list[dict[str, Any]]) -> list[str]:
    """The structures with a robust Dice (``adv_dice_<s>_mean``) in ``summaries``, in first-seen order."""
    keys = (k for s in summaries for k in s if k.startswith("adv_dice_") and k.endswith("_mean"))
    return list(dict.fromkeys(k[len("adv_dice_"):-len("_mean")] for k in keys))


def table1(summaries: list[dict[str, Any]]) -> str:
    """Markdown table in the layout of ASMA Table 1, + success, RMS, robust Dice per structure vs ground truth,
    iterations and cost (units in the headers)."""
    names = structures(summaries)
    dice_heads = "".join(f" robust Dice {n} vs GT {units.SCORE} |" for n in names)
    lines = [(f"| method | reference | {units.L2_HEAD} | {units.LINF_HEAD} | IoU {units.SCORE} | pixel acc. {units.SCORE} | "
             f"{units.SUCCESS_HEAD} | {units.RMS_HEAD} |{dice_heads} iterations | fwd/img | time (s) |"),
             "|---|---|---|---|---|---|---|---|" + "---|" * len(names) + "---|---|---|"]
    def pm(s: dict[str, Any], k: str, d: int) -> str:
        return f"{s[k + '_mean']:.{d}f} +- {s[k + '_std']:.{d}f}"

    for s in summaries:
        dice = "".join(f" {s[f'adv_dice_{n}_mean']:.3f} |" if f"adv_dice_{n}_mean" in s else " - |" for n in names)
        lines.append(
            f"| {s['method']} | {'target' if s['targeted'] else 'ground truth'} | {pm(s, units.L2, 2)} | {pm(s, units.LINF, 2)} | "
            f"{pm(s, 'iou', 3)} | {pm(s, 'pixel_acc', 3)} | {units.fmt_pct(s[units.SUCCESS_PCT], 0)} | {s[units.RMS + '_mean']:.2f} |"
            f"{dice} {s['iterations_mean']:.0f} | {s['forwards_per_image']:.0f} | {s['seconds']:.1f} |"
        )
    for s in summaries:
        if s.get("winners"):
            counts = ", ".join(f"{member} {n}" for member, n in s["winners"].items())
            lines.append(f"\n{s['method']}: worst case per image came from {counts} (images per member); "
                         f"worst case at most every member's Dice per image: {s.get('check', '-')}")
    return "\n".join(lines)


_AT = " / ".join(f"{t:g}" for t in SCREENING_THRESHOLDS)


def _per_threshold(key: str) -> tuple[str, ...]:
    return tuple(f"clin_{units.share_key(f'{key}@{t:g}')}" for t in SCREENING_THRESHOLDS)


CLINICAL_COLUMNS = {
    "vCDR gt / clean / adv": ("clin_vcdr_gt", "clin_vcdr_clean", "clin_vcdr_adv"),
    f"screening flips (%) at {_AT}": _per_threshold("flip"),
    f"target masks' flips (%) at {_AT}": _per_threshold("target_flip"),
    f"normal->suspect of clean-normal (%) at {_AT}": _per_threshold("n2s_of_normal"),
    "same for the target masks (%)": _per_threshold("target_n2s_of_normal"),
    "mean abs dvCDR": ("clin_mean_abs_dvcdr",),
    "rel. area change (ratio)": ("clin_rel_area_change",),
    "compactness clean / adv": ("clin_compactness_clean", "clin_compactness_adv"),
    "asymmetry score clean / adv": ("clin_asym_score_clean", "clin_asym_score_adv"),
}


def clinical_table(summaries: list[dict[str, Any]]) -> str:
    """Per attack: vCDR and screening-label flips (glaucoma disc_cup) or lesion shape changes (ISIC, disc)."""
    columns = {name: keys for name, keys in CLINICAL_COLUMNS.items() if any(all(k in s for k in keys) for s in summaries)}
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for s in summaries:
        cells = [" / ".join(_cell(s, k) for k in keys) for keys in columns.values()]
        lines.append(f"| {s['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(summary: dict[str, Any], key: str) -> str:
    if key not in summary:
        return "-"
    return f"{summary[key]:.1f}" if "_pct" in key else f"{summary[key]:.3f}"


def synthesis_table(summaries: list[dict[str, Any]]) -> str:
    """Requested vs achieved Dice drop, share of images within the tolerance, and realism of the synthesis attack."""
    lines = ["| method | requested drop | achieved drop | within tol (%) | max disp (px) | max abs(b-1) | min det J | SSIM |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        if "synth_within_tol_pct" in s:
            lines.append(f"| {s['method']} | {s['synth_drop_requested_mean']:.3f} | {s['synth_drop_achieved_mean']:.3f} +- "
                         f"{s['synth_drop_achieved_std']:.3f} | {s['synth_within_tol_pct']:.0f} | "
                         f"{s['synth_max_disp_px_mean']:.2f} | {s['synth_max_bias_mean']:.3f} | {s['synth_min_jacobian_min']:.3f} | "
                         f"{s['synth_ssim_mean']:.3f} |")
    return "\n".join(lines)
