"""Shared input checks, budget parsing, per-image early stop and result assembly for the attack functions."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lightning_seg.attacks.guard import AttackContext
from lightning_seg.attacks.measure import apsr, class_map, l2_norm, linf_norm, per_image_iou, pixel_accuracy
from lightning_seg.attacks.result import AttackResult


def parse_fraction(value: Any) -> float:
    """Parse a budget given as a float/int or a string such as ``"8/255"`` or ``"0.03"``.

    The one fraction parser of the project: budgets are naturally written on the 0-255 scale (``8/255``), which
    OmegaConf keeps as a string; the config dataclasses call this in ``__post_init__`` and the config layer on
    command-line overrides.
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


def variant(base: Callable[..., AttackResult], name: str, doc: str, *, run: Callable[..., AttackResult] | None = None,
            **defaults: Any) -> Callable[..., AttackResult]:
    """An attack that takes ``base``'s arguments with other ``defaults`` (e.g. SegPGD = PGD with 20 steps and its own
    loss weights, ASM = ASMA without the dynamic multiplier) and calls ``run`` (default ``base``) with all of them.
    Its signature shows the defaults it runs, so that its config is derived from it like every attack's and no
    default is written twice."""
    sig = inspect.signature(base)
    unknown = set(defaults) - set(sig.parameters)
    if unknown:
        raise TypeError(f"{name}: {base.__name__} has no parameter(s) {sorted(unknown)}")
    sig = sig.replace(parameters=[p.replace(default=defaults[p.name]) if p.name in defaults else p
                                  for p in sig.parameters.values()])
    target = run or base

    def attack(*args: Any, **kwargs: Any) -> AttackResult:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return target(**bound.arguments)

    attack.__signature__ = sig  # type: ignore[attr-defined]
    attack.__name__ = attack.__qualname__ = name
    attack.__doc__ = doc
    attack.__module__ = getattr(target, "__module__", base.__module__)
    return attack


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
    lo, hi = torch.aminmax(images.detach())  # NaN propagates into both
    if bool(torch.isnan(lo) | torch.isnan(hi)):
        raise ValueError("images contain NaN: a NaN pixel makes every gradient step NaN; check the loading and the "
                         "transforms before the attack (torch.isnan(images).nonzero() finds them)")
    if bool(lo < 0) or bool(hi > 1):
        raise ValueError("images must be in [0,1] (normalisation belongs inside the model, so that budgets are in "
                         "image units)")
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
            "crop the labels to the model's output size"
        )


class ActiveSet:
    """Per-image early stop over a batch without a host sync per step (ASMA, DAG).

    Finished images are frozen: their rows of the full-batch tensors are no longer written. Every ``check_every``
    iterations (and once after the first) the active index set shrinks to the unfinished images, with one host sync
    per check; :meth:`running` returns False when no image is left. While the whole batch is active, :meth:`take`
    and :meth:`put` pass tensors through without gathers and scatters. ``check_every=None`` never checks (a fixed
    number of iterations for every image).
    """

    def __init__(self, batch: int, device: torch.device, check_every: int | None) -> None:
        self.idx = torch.arange(batch, device=device)
        self.full = True  # idx == arange(batch)
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.iterations = torch.zeros(batch, dtype=torch.long, device=device)
        self.check_every = check_every

    def running(self, k: int) -> bool:
        """Called at the start of iteration k: shrink the active set at a check; False when every image is done."""
        if self.check_every is None or not (k == 1 or (k > 0 and k % self.check_every == 0)):
            return True
        keep = ~self.done[self.idx]
        if not bool(keep.any()):  # one host sync per check, never per step
            return False
        if not bool(keep.all()):
            self.idx = self.idx[keep]
            self.full = False
        return True

    def take(self, t: Tensor) -> Tensor:
        """The active images' rows of a full-batch tensor."""
        return t if self.full else t[self.idx]

    def put(self, t: Tensor, rows: Tensor) -> Tensor:
        """Write the active images' new rows into the full-batch tensor ``t`` (returned)."""
        if self.full:
            return rows
        t[self.idx] = rows
        return t

    def step(self, finished: Tensor | None) -> Tensor | None:
        """Record this iteration for the active images: ``finished`` [active] marks those that stop now (None: none
        ever stops). Returns the active images that still move (bool [active]) and counts their iteration."""
        if finished is None:
            self.iterations = self.put(self.iterations, self.take(self.iterations) + 1)
            return None
        fin = finished | self.take(self.done)
        self.done = self.put(self.done, fin)
        go = ~fin
        self.iterations = self.put(self.iterations, self.take(self.iterations) + go.long())
        return go


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
