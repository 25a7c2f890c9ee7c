"""Per-image attack metrics (IoU as in ASMA's Table 1, adv_lib's APSR, norms), all batched torch, no host sync.

Every function returns one value per image ([B] tensors) so that images never couple.
Conventions: IoU(empty, empty) = 1; empty target with a non-empty prediction = 0; pixels
outside ``mask`` are excluded everywhere; an image with no counted pixel has IoU = 1,
pixel accuracy = 1 and APSR = 1 (nothing to attack).
"""

from __future__ import annotations

import torch
from torch import Tensor


def binary_logits(z: Tensor) -> Tensor:
    """Turn a 1-channel sigmoid head ``z`` [B,1,h,w] into 2-class logits ``[0, z]`` [B,2,h,w].

    softmax([0, z])[1] = sigmoid(z) and argmax = 1[z > 0], so argmax/gather based attacks
    (ASMA, DAG, CE-PGD) apply unchanged.
    """
    if z.dim() != 4 or z.shape[1] != 1:
        raise ValueError(f"binary_logits expects [B,1,h,w] logits, got shape {tuple(z.shape)}")
    return torch.cat([torch.zeros_like(z), z], dim=1)


def class_map(logits: Tensor) -> Tensor:
    """``logits.argmax(1)`` (first maximum on ties), computed as ``max(1).indices``: on CPU, argmax over
    the class dim of [B,K,H,W] takes a slow strided path, a noticeable share of an attack iteration."""
    return logits.max(1).indices


def _flat(mask: Tensor | None, ref: Tensor) -> Tensor:
    if mask is None:
        return torch.ones_like(ref, dtype=torch.bool)
    return mask.to(torch.bool).expand_as(ref)


def per_image_iou(pred: Tensor, ref: Tensor, mask: Tensor | None = None, num_classes: int = 2) -> Tensor:
    """Per-image IoU of ``pred`` vs ``ref`` (both long [B,h,w]) over counted pixels.

    2 classes: foreground (class 1) IoU. K > 2: mean IoU over the classes present in
    ref ∪ pred (ASMA Table 1 metric). IoU(∅,∅) = 1.
    """
    m = _flat(mask, ref).flatten(1)
    p = pred.flatten(1)
    r = ref.flatten(1)
    if num_classes <= 2:
        pf = (p == 1) & m
        rf = (r == 1) & m
        inter = (pf & rf).sum(1).to(torch.float32)
        union = (pf | rf).sum(1).to(torch.float32)
        return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))
    total = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
    present = torch.zeros_like(total)
    for c in range(num_classes):  # K is small; a Python loop over classes is not a host sync
        pc = (p == c) & m
        rc = (r == c) & m
        inter = (pc & rc).sum(1).to(torch.float32)
        union = (pc | rc).sum(1).to(torch.float32)
        has = union > 0
        total = total + torch.where(has, inter / union.clamp_min(1.0), torch.zeros_like(union))
        present = present + has.to(torch.float32)
    return torch.where(present > 0, total / present.clamp_min(1.0), torch.ones_like(total))


def pixel_accuracy(pred: Tensor, ref: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-image fraction of counted pixels where ``pred == ref`` (1 if none counted)."""
    m = _flat(mask, ref).flatten(1)
    hit = ((pred.flatten(1) == ref.flatten(1)) & m).sum(1).to(torch.float32)
    n = m.sum(1).to(torch.float32)
    return torch.where(n > 0, hit / n.clamp_min(1.0), torch.ones_like(n))


def apsr(pred: Tensor, ref: Tensor, mask: Tensor | None = None, targeted: bool = False) -> Tensor:
    """Attack pixel success rate (adv_lib): fraction of counted pixels at the
    target (targeted) or away from the label (untargeted)."""
    acc = pixel_accuracy(pred, ref, mask)
    if targeted:
        return acc
    m = _flat(mask, ref).flatten(1)
    n = m.sum(1)
    return torch.where(n > 0, 1.0 - acc, torch.ones_like(acc))


def l2_norm(delta: Tensor) -> Tensor:
    """Unnormalised per-image L2 over all channels and pixels ([0,1] units)."""
    return delta.flatten(1).to(torch.float32).norm(p=2, dim=1)


def linf_norm(delta: Tensor) -> Tensor:
    """Per-image L-infinity norm."""
    return delta.flatten(1).abs().amax(dim=1).to(torch.float32)


__all__ = ["apsr", "binary_logits", "class_map", "l2_norm", "linf_norm", "per_image_iou", "pixel_accuracy"]
