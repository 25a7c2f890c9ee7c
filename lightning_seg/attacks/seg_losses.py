"""Per-image segmentation objectives for the APGD-based attacks (``apgd``, ``sea``): the losses of SEA plus soft Dice,
margin, SegPGD and CosPGD, in one place.

Every objective returns one value per image ``[B]`` that the attack MAXIMISES: untargeted attacks take the labels
(ground truth) and raise the loss; targeted attacks take the target map and the objective is the negated loss towards
it. Per-pixel terms are averaged over each image's counted pixels (``mask``) with an iteration-independent normaliser,
so that APGD can compare the objective across iterations, and images never couple.

Losses (``p = softmax(z)``, ``CE_p = -log p_{p,y}``, ``1[.]`` the indicator, ``n`` the counted pixels of the image):

- ``ce``: ``(1/n) sum_p CE_p``.
- ``masked_ce`` (Croce, Singh & Hein, ECCV 2024, "Mask-CE"): ``(1/n) sum_p 1[argmax z_p = y_p] CE_p``: only pixels
  still classified correctly push, because the CE gradient of a misclassified pixel grows as ``p_y -> 0`` and would
  dominate the update. Targeted: only pixels not yet at the target, descending the CE to the target.
- ``balanced_ce`` (SEA's class-balanced Mask-CE): ``sum_p w_{y_p} 1[argmax z_p = y_p] CE_p / sum_p w_{y_p}`` with
  class weights ``w_c``: ``class_weights`` when given (e.g. inverse class frequencies of the training masks), else the
  inverse class frequency of each image's OWN label map (``w_c = 1 / n_c``), which makes the loss the mean over the
  classes present of each class's masked CE. Per-image weights keep images independent of their batch mates (a
  batch-level count would couple them); SEA computes them from the training set: pass ``class_weights`` for that.
- ``js``: Jensen-Shannon divergence between ``p`` and the one-hot label ``e_y``; with ``m = (p + e_y)/2`` it reduces to
  ``JS_p = log 2 + (p_y log p_y - (1 + p_y) log(1 + p_y)) / 2`` in ``[0, log 2]``: bounded, and its gradient vanishes as
  ``p_y -> 0``, so misclassified pixels stop pulling.
- ``dice``: ``1 - soft Dice`` of the softmax against the labels, per foreground class or per ``structures`` (unions
  of classes, e.g. glaucoma disc {1, 2} and cup {2}), smoothing 1 (:func:`lightning_seg.attacks.synthesis.soft_dice`).
- ``margin``: ``(1/n) sum_p (max_{c != y} z_{p,c} - z_{p,y})`` (unclamped logit margin: every pixel weighs the same).
- ``segpgd`` / ``cospgd``: CE weighted per pixel by the SegPGD weights (Gu et al., ECCV 2022; ``lambda_t = (t-1)/2T``)
  or the CosPGD weights (Agnihotri et al., ICML 2024), as in :mod:`lightning_seg.attacks.segpgd` /
  :mod:`lightning_seg.attacks.cospgd`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_seg.attacks._common import parse_fraction
from lightning_seg.attacks.cospgd import cospgd_weight
from lightning_seg.attacks.measure import class_map
from lightning_seg.attacks.segpgd import segpgd_weight
from lightning_seg.attacks.synthesis import soft_dice

Loss = Literal["ce", "balanced_ce", "masked_ce", "js", "dice", "margin", "segpgd", "cospgd"]
LOSSES: tuple[str, ...] = get_args(Loss)
_LOG2 = math.log(2.0)


def _mean(v: Tensor, mask: Tensor) -> Tensor:
    """Per-image mean of a per-pixel map [B,h,w] over the counted pixels."""
    m = mask.to(v.dtype)
    return (v * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)


def class_weight_map(labels: Tensor, mask: Tensor, num_classes: int,
                     class_weights: Sequence[float] | Tensor | None = None) -> Tensor:
    """Per-pixel class weight ``w_{y_p}`` [B,h,w]: ``class_weights`` [K] when given, else ``1 / n_c`` with ``n_c`` the
    number of counted pixels of class c in the same image."""
    if class_weights is not None:
        if not isinstance(class_weights, Tensor):  # a config list may hold fractions such as "1/3"
            class_weights = [parse_fraction(v) for v in class_weights]
        w = torch.as_tensor(class_weights, dtype=torch.float32, device=labels.device)
        if w.dim() != 1 or w.numel() != num_classes:
            raise ValueError(f"class_weights must hold one weight per class (K={num_classes}), got {tuple(w.shape)}")
        return w[labels]
    onehot = F.one_hot(labels, num_classes).to(torch.float32) * mask.unsqueeze(-1).to(torch.float32)  # [B,h,w,K]
    counts = onehot.flatten(1, 2).sum(1)  # [B,K]
    inv = torch.where(counts > 0, 1.0 / counts.clamp_min(1.0), torch.zeros_like(counts))
    return inv.gather(1, labels.flatten(1)).view_as(labels)


def js_divergence(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-pixel Jensen-Shannon divergence between softmax(logits) and the one-hot labels [B,h,w], in [0, log 2]."""
    log_py = F.log_softmax(logits, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
    py = log_py.exp()
    return _LOG2 + 0.5 * (py * log_py - (1 + py) * torch.log1p(py))


def segmentation_objective(
    name: str,
    logits: Tensor,
    labels: Tensor,
    mask: Tensor,
    *,
    targeted: bool = False,
    t: int = 1,
    steps: int = 1,
    class_weights: Sequence[float] | Tensor | None = None,
    structures: tuple[tuple[int, ...], ...] | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """The per-image objective [B] to maximise (module docstring). ``logits`` [B,K,h,w]; ``labels`` long [B,h,w] (the
    ground truth, or the target when ``targeted``), zero at ignored pixels; ``mask`` bool [B,h,w]; ``t`` / ``steps``:
    the 1-based iteration and the budget (SegPGD's schedule). ``weights``: the :func:`class_weight_map` of
    ``balanced_ce``, when precomputed (the labels do not change during an attack)."""
    sign = -1.0 if targeted else 1.0
    if name == "dice":
        return sign * (1.0 - soft_dice(logits, labels, mask, structures=structures))
    if name == "js":
        return sign * _mean(js_divergence(logits, labels), mask)
    if name == "margin":
        zy = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
        other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).bool(), float("-inf"))
        return sign * _mean(other.amax(1) - zy, mask)
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    ce = F.cross_entropy(logits, labels, reduction="none")
    if name == "ce":
        return sign * _mean(ce, mask)
    if name == "segpgd":
        return sign * _mean(ce * segpgd_weight(logits.detach(), labels, t, steps, targeted), mask)
    if name == "cospgd":
        return sign * _mean(ce * cospgd_weight(logits.detach(), labels, t, steps, targeted), mask)
    # masked CE: untargeted, pixels still at the label; targeted, pixels not yet at the target
    at_label = class_map(logits.detach()) == labels
    keep = (~at_label if targeted else at_label).to(ce.dtype)
    if name == "masked_ce":
        return sign * _mean(ce * keep, mask)
    if weights is None:
        weights = class_weight_map(labels, mask, logits.shape[1], class_weights)
    w = weights * mask.to(ce.dtype)  # balanced_ce
    return sign * (w * keep * ce).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1e-12)


__all__ = ["LOSSES", "Loss", "class_weight_map", "js_divergence", "segmentation_objective"]
