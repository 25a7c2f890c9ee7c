"""Shared input checks and result assembly for the attack functions (internal)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_seg.attacks.guard import AttackContext
from lightning_seg.attacks.measure import apsr, class_map, l2_norm, linf_norm, per_image_iou, pixel_accuracy
from lightning_seg.attacks.result import AttackResult


def parse_fraction(value: Any) -> float:
    """Parse a budget given as a float/int or a string such as ``"8/255"`` or ``"0.03"``.

    OmegaConf keeps ``attack.eps=8/255`` from the command line as a string (REFERENCE 1.2);
    config dataclasses call this in ``__post_init__``.
    """
    if isinstance(value, bool):
        raise TypeError(f"expected a number or a fraction string like '8/255', got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        s = value.strip()
        try:
            if "/" in s:
                num, den = s.split("/", 1)
                return float(num) / float(den)
            return float(s)
        except (ValueError, ZeroDivisionError) as exc:
            raise ValueError(f"cannot parse {value!r} as a number; use e.g. 0.03 or '8/255'") from exc
    raise TypeError(f"expected a number or a fraction string like '8/255', got {type(value).__name__}")


def check_inputs(
    images: Tensor, labels: Tensor, mask: Tensor | None, perturbation_mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Validate shapes/dtypes once (outside loops). Returns (x0, labels with ignored pixels
    zeroed, bool mask, float perturbation mask or None)."""
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor [B,C,H,W] in [0,1], got {getattr(images, 'shape', images)}")
    if labels.dim() != 3 or labels.shape[0] != images.shape[0] or labels.dtype != torch.long:
        raise ValueError(
            f"labels/targets must be long [B,h,w] with B={images.shape[0]}, got {labels.dtype} {tuple(labels.shape)}"
        )
    lo, hi = torch.aminmax(images.detach())
    if bool(lo < 0) or bool(hi > 1):
        raise ValueError("images must be in [0,1] (normalisation belongs inside the model, REFERENCE 1.1)")
    if mask is None:
        mask = torch.ones_like(labels, dtype=torch.bool)
    else:
        if mask.shape != labels.shape:
            raise ValueError(f"mask must have the labels' shape {tuple(labels.shape)}, got {tuple(mask.shape)}")
        mask = mask.to(torch.bool)
    # zero ignored labels so gather/one-hot never sees e.g. 255 (they are excluded by the mask)
    labels = torch.where(mask, labels, torch.zeros_like(labels))
    pm = None
    if perturbation_mask is not None:
        B, C, H, W = images.shape
        s = perturbation_mask.shape
        if perturbation_mask.dim() != 4 or s[0] not in (1, B) or s[1] not in (1, C) or tuple(s[2:]) != (H, W):
            raise ValueError(
                f"perturbation_mask must be [B or 1, 1 or C, H, W] = [{B}|1, {C}|1, {H}, {W}], got {tuple(s)}"
            )
        pm = perturbation_mask.to(images.dtype).expand(B, C, H, W)
    return images.detach(), labels, mask, pm


def check_output(z: Tensor, labels: Tensor) -> None:
    """The model output must match the label grid (valid-conv models: crop labels first)."""
    if tuple(z.shape[-2:]) != tuple(labels.shape[-2:]):
        raise ValueError(
            f"model output is {tuple(z.shape[-2:])} but labels/targets are {tuple(labels.shape[-2:])}; "
            "crop the labels to the model's output size (REFERENCE 1.1)"
        )


def project_box(x0: Tensor, delta: Tensor, pm: Tensor | None) -> Tensor:
    """Apply the perturbation mask, then keep x0 + delta inside [0,1]."""
    if pm is not None:
        delta = delta * pm
    return (x0 + delta).clamp(0.0, 1.0) - x0


def finish(
    ctx: AttackContext,
    x0: Tensor,
    delta: Tensor,
    ref: Tensor,
    mask: Tensor,
    *,
    targeted: bool,
    iterations: Tensor,
    criterion: str,
    threshold: float,
    extras: dict[str, Any] | None = None,
) -> AttackResult:
    """Final forward on the clamped adversarial image and per-image metrics.

    criterion "iou": success = IoU(pred, ref) >= threshold (ASMA); "apsr": APSR >= threshold (adv_lib).
    """
    adv = (x0 + delta.detach()).clamp(0.0, 1.0)
    with torch.no_grad():
        z = ctx.forward(adv)
    check_output(z, ref)
    pred = class_map(z)
    k = int(z.shape[1])
    iou = per_image_iou(pred, ref, mask, k)
    acc = pixel_accuracy(pred, ref, mask)
    rate = apsr(pred, ref, mask, targeted)
    success = (iou >= threshold) if criterion == "iou" else (rate >= threshold)
    d = adv - x0
    ex = dict(extras or {})
    ex.setdefault("apsr", rate)
    return AttackResult(
        adv=adv,
        pred=pred,
        success=success,
        iou=iou,
        pixel_acc=acc,
        l2=l2_norm(d),
        linf=linf_norm(d),
        iterations=iterations,
        forwards=ctx.forwards,
        backwards=ctx.backwards,
        targeted=targeted,
        extras=ex,
    )


def per_image(v: Tensor) -> Tensor:
    """[B] -> [B,1,1,1] for broadcasting against images."""
    return v.view(-1, 1, 1, 1)
