"""Clinical reports: per-image read-outs of ground truth, clean and adversarial predictions, and their aggregates.

The measurements themselves (vCDR, screening labels, area, perimeter, compactness, asymmetry) are in
:mod:`lightning_seg.metrics.clinical`; this module combines them per task.

Every read-out is taken in the original aspect ratio of the image: given the batch's ``valid`` map and ``orig_size``
(``sizes``), masks are cropped to the image region (padding removed) and, for the shape read-outs, resampled to square
pixels (:func:`lightning_seg.metrics.clinical.original_aspect`), so that ``data.resize=stretch`` and
``data.resize=pad`` give the same area, compactness and asymmetry of the same anatomy. vCDR is a ratio of two lengths
along the same (vertical) axis, which a per-axis scale leaves unchanged: it is measured on the cropped mask without
resampling, which would only add rounding. Without ``sizes`` and ``valid`` the masks are measured as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_seg.metrics.clinical import (
    ASYM_THRESHOLD,
    GLAUCOMA_TASKS,
    SCREENING_THRESHOLDS,
    SHAPE_TASKS,
    area,
    asymmetry,
    asymmetry_score,
    centroid_shift,
    check_masks,
    compactness,
    original_aspect,
    perimeter,
    relative_area_change,
    screening_flip_flags,
    screening_flips,
    vcdr,
)


def _shape_readouts(prefix: str, binary: Tensor, asym_threshold: float) -> dict[str, Tensor]:
    asym = asymmetry(binary)
    return {
        f"area_{prefix}": area(binary),
        f"perimeter_{prefix}": perimeter(binary),
        f"compactness_{prefix}": compactness(binary),
        f"asym1_{prefix}": asym[:, 0],
        f"asym2_{prefix}": asym[:, 1],
        f"asym_score_{prefix}": asymmetry_score(binary, asym_threshold, asym=asym),
    }


def clinical_report(
    task: str,
    gt: Tensor,
    clean_pred: Tensor,
    adv_pred: Tensor,
    *,
    thresholds: tuple[float, ...] = SCREENING_THRESHOLDS,
    asym_threshold: float = ASYM_THRESHOLD,
    sizes: Tensor | None = None,
    valid: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-image clinical read-outs (every value [B]) for ground truth, clean and adversarial predictions.

    ``sizes`` (long [B,2], original (H, W)) and ``valid`` (bool [B,H,W] on the input grid, False on padding): measure
    in the original aspect ratio (module docstring); the masks may be a centred crop of the input grid.

    task "disc_cup" / "glaucoma" ({0 bg, 1 rim, 2 cup}): ``vcdr_gt``, ``vcdr_clean``,
    ``vcdr_adv``, ``dvcdr`` (adv - clean), ``abs_err_clean`` / ``abs_err_adv`` (vs gt) and per
    threshold t the 0/1 flags ``n2s@t`` / ``s2n@t`` of clean -> adv screening flips.
    task "isic" / "disc" (foreground = mask >= 1): area, perimeter, compactness, asym1,
    asym2, asym_score for ``gt``, ``clean`` and ``adv``, plus ``rel_area_change``,
    ``centroid_shift_px`` and ``centroid_shift_rel`` of adv vs clean.
    Use :func:`summarize_clinical` for the aggregate (flip shares = means of the flags).
    """
    for name, t in (("gt", gt), ("clean_pred", clean_pred), ("adv_pred", adv_pred)):
        check_masks(t, name)
    if not (gt.shape == clean_pred.shape == adv_pred.shape):
        raise ValueError(
            f"gt {tuple(gt.shape)}, clean_pred {tuple(clean_pred.shape)} and adv_pred {tuple(adv_pred.shape)} must match"
        )
    key = task.lower()
    gt, clean_pred, adv_pred = _in_original_aspect((gt, clean_pred, adv_pred), sizes, valid, key)
    if key in GLAUCOMA_TASKS:
        v_gt, v_clean, v_adv = vcdr(gt), vcdr(clean_pred), vcdr(adv_pred)
        out = {
            "vcdr_gt": v_gt,
            "vcdr_clean": v_clean,
            "vcdr_adv": v_adv,
            "dvcdr": v_adv - v_clean,
            "abs_err_clean": (v_clean - v_gt).abs(),
            "abs_err_adv": (v_adv - v_gt).abs(),
        }
        return out | screening_flip_flags(v_clean, v_adv, thresholds)
    if key in SHAPE_TASKS:
        fg = [m >= 1 for m in (gt, clean_pred, adv_pred)]
        out = {}
        for prefix, m in zip(("gt", "clean", "adv"), fg):
            out.update(_shape_readouts(prefix, m, asym_threshold))
        shift_px, shift_rel = centroid_shift(fg[1], fg[2])
        out["rel_area_change"] = relative_area_change(fg[1], fg[2])
        out["centroid_shift_px"] = shift_px
        out["centroid_shift_rel"] = shift_rel
        return out
    raise ValueError(f"Unknown task {task!r} for clinical_report; use one of {GLAUCOMA_TASKS + SHAPE_TASKS}")


def _in_original_aspect(masks: tuple[Tensor, ...], sizes: Tensor | None, valid: Tensor | None,
                        task: str) -> tuple[Tensor, ...]:
    """The masks cropped to the image region; resampled to square pixels for the shape read-outs (not for vCDR, a
    ratio of vertical lengths)."""
    if sizes is None and valid is None:
        return masks
    sizes = None if task in GLAUCOMA_TASKS else sizes
    return tuple(original_aspect(m, sizes, valid) for m in masks)


def concat_reports(reports: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Concatenate per-image reports of several batches (e.g. across a validation epoch)."""
    if not reports:
        return {}
    return {k: torch.cat([r[k].reshape(-1) for r in reports]) for k in reports[0]}


_MAYBE_UNDEFINED = ("compactness", "asym", "rel_area_change", "centroid_shift")


def summarize_clinical(report: dict[str, Tensor]) -> dict[str, Tensor]:
    """Aggregate a per-image report into scalars: nan-mean per key, ``n_<key>`` = defined values
    for the keys that can be NaN (compactness, asymmetry, relative area change, centroid shift).

    For glaucoma reports the means of the ``n2s@t`` / ``s2n@t`` flags are the flip shares;
    ``flip@t`` (their sum) and ``mean_abs_dvcdr`` are added.
    """
    out: dict[str, Tensor] = {}
    for k, v in report.items():
        v = v.float()
        defined = ~torch.isnan(v)
        out[k] = torch.nanmean(v) if v.numel() else torch.tensor(float("nan"))
        if k.startswith(_MAYBE_UNDEFINED):  # fixed key set, so logged keys do not vary per batch
            out[f"n_{k}"] = defined.sum().float()
    for k in list(out):
        if k.startswith("n2s@"):
            t = k[4:]
            out[f"flip@{t}"] = out[k] + out[f"s2n@{t}"]
    if "dvcdr" in report:
        out["mean_abs_dvcdr"] = report["dvcdr"].abs().float().mean()
    if "vcdr_clean" in report:  # normal -> suspect among the images that can flip that way (clean vCDR < t)
        for k in list(out):
            if k.startswith("n2s@"):
                normal = report["vcdr_clean"] < float(k[4:])
                n = normal.sum()
                out[f"n2s_of_normal@{k[4:]}"] = torch.where(
                    n > 0, (report[k].float() * normal).sum() / n.clamp_min(1), torch.tensor(float("nan")))
    return out


def target_flip_shares(task: str, clean_pred: Tensor, targets: Tensor,
                       thresholds: tuple[float, ...] = SCREENING_THRESHOLDS, *, sizes: Tensor | None = None,
                       valid: Tensor | None = None) -> dict[str, Tensor]:
    """Glaucoma: share of images whose screening label flips from the clean prediction to the attack's *target*
    mask (``target_flip@t``), the upper bound of what a targeted attack can flip, and the normal -> suspect share
    among clean-normal images (``target_n2s_of_normal@t``); {} for shape tasks. ``sizes``, ``valid``: as
    :func:`clinical_report`."""
    if task.lower() not in GLAUCOMA_TASKS:
        return {}
    clean_pred, targets = _in_original_aspect((clean_pred, targets), sizes, valid, task.lower())
    v_clean, v_target = vcdr(clean_pred), vcdr(targets)
    flips = screening_flips(v_clean, v_target, thresholds)
    out = {f"target_flip@{t:g}": flips[f"flip@{t:g}"] for t in thresholds}
    for t in thresholds:
        normal = v_clean < t
        out[f"target_n2s_of_normal@{t:g}"] = (normal & (v_target >= t)).float().sum() / normal.sum().clamp_min(1)
    return out


# Per-image read-outs for the validation callback (fixed key set per task, so DDP ranks log the same keys).
CALLBACK_KEYS = {
    "disc_cup": ("vcdr_gt", "vcdr_clean", "vcdr_adv", *(f"flip@{t:g}" for t in SCREENING_THRESHOLDS)),
    "isic": ("rel_area_change", "compactness_clean", "compactness_adv", "asym_clean", "asym_adv"),
}

CALLBACK_KEYS["glaucoma"] = CALLBACK_KEYS["disc_cup"]
CALLBACK_KEYS["disc"] = CALLBACK_KEYS["isic"]


def callback_values(task: str, gt: Tensor, clean_pred: Tensor, adv_pred: Tensor, *, sizes: Tensor | None = None,
                    valid: Tensor | None = None) -> dict[str, Tensor]:
    """Per-image values [B] for :data:`CALLBACK_KEYS`: vCDR of gt / clean / adv and 0/1 screening flips (clean vs
    adv) at each screening threshold (glaucoma); relative area change, compactness and the asymmetry index (mean of
    the two principal-axis A_k) clean / adv (shape tasks). NaN where undefined (e.g. empty masks). ``sizes``,
    ``valid``: as :func:`clinical_report`."""
    key = task.lower()
    r = clinical_report(key, gt, clean_pred, adv_pred, sizes=sizes, valid=valid)
    if key in GLAUCOMA_TASKS:
        out = {k: r[k] for k in ("vcdr_gt", "vcdr_clean", "vcdr_adv")}
        for t in SCREENING_THRESHOLDS:
            out[f"flip@{t:g}"] = r[f"n2s@{t:g}"] + r[f"s2n@{t:g}"]
        return out
    return {"rel_area_change": r["rel_area_change"], "compactness_clean": r["compactness_clean"],
            "compactness_adv": r["compactness_adv"], "asym_clean": 0.5 * (r["asym1_clean"] + r["asym2_clean"]),
            "asym_adv": 0.5 * (r["asym1_adv"] + r["asym2_adv"])}
