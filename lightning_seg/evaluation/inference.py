"""Batched forward passes outside the training loop: clean predictions and attacks over a whole image set.

Padded inputs (``data.resize=pad``) pass their validity map ``valid`` (bool [B,H,W] at the input resolution, False on
padding). It is the one place where padding is handled for attacks: :func:`run_attack` hands the attack
``perturbation_mask=valid`` (the attacks' common projection keeps padded pixels exactly at their clean value, so the
L2 / Linf of the result are those of the valid pixels) and ``mask=valid`` cropped to the label grid (padding counts in
neither the attack loss nor its IoU / pixel accuracy / APSR), and sets predictions to background on padding, so that
every score computed afterwards against ground truth that is background there (Dice, clinical read-outs) ignores it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from lightning_seg.attacks import AttackResult
from lightning_seg.evaluation.progress import advance
from lightning_seg.metrics.segmentation import restrict
from lightning_seg.models import center_crop

# Attacks that cannot leave the padding untouched: synthesis deforms the whole canvas, the universal perturbation is
# one image-sized pattern. They get the loss mask only (their perturbation and norms include the padding).
NO_PERTURBATION_MASK = ("synthesis", "up")


def on_grid(valid: Tensor, like: Tensor) -> Tensor:
    """``valid`` [B,H,W] cropped to the grid of ``like`` [B,h,w] (valid-convolution models predict a centred crop)."""
    h, w = like.shape[-2:]
    return valid if tuple(valid.shape[-2:]) == (h, w) else center_crop(valid, h, w)


def _check_valid(valid: Tensor, images: Tensor) -> Tensor:
    if valid.dim() != 3 or valid.shape[0] != images.shape[0] or valid.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"valid must be bool [B,H,W] = {[images.shape[0], *images.shape[-2:]]} (the images' grid), "
                         f"got {tuple(valid.shape)}")
    return valid.to(device=images.device, dtype=torch.bool)


@torch.no_grad()
def predict(net: nn.Module, images: Tensor, batch_size: int | None = None, valid: Tensor | None = None) -> Tensor:
    """Hard predictions ``[N,h,w]`` of ``net`` in eval mode, ``batch_size`` images at a time (all at once for
    ``None``); the network's training flag is restored afterwards. ``valid``: background on padded pixels."""
    was_training = net.training
    net.eval()
    try:
        pred = torch.cat([net(x).argmax(1) for x in images.split(batch_size or len(images))])
    finally:
        net.train(was_training)
    return pred if valid is None else restrict(pred, on_grid(_check_valid(valid, images), pred))


def run_attack(attack: Any, net: nn.Module, images: Tensor, reference: Tensor, valid: Tensor | None = None) -> AttackResult:
    """``attack(net, images, reference)`` restricted to the valid pixels (module docstring); ``valid=None``: the plain
    call, bit-identical to calling the attack directly, as is a ``valid`` without padding (``data.resize=stretch``)."""
    if valid is not None:
        valid = _check_valid(valid, images)
    if valid is None or bool(valid.all()):  # one host sync per batch, outside the attack's loop
        return attack(net, images, reference)
    mask = on_grid(valid, reference)
    if getattr(attack, "name", getattr(attack, "__name__", None)) in NO_PERTURBATION_MASK:
        result = attack(net, images, reference, mask=mask)
    else:
        result = attack(net, images, reference, mask=mask, perturbation_mask=valid.unsqueeze(1))
        # values the attack may change, per image: the RMS is taken over these, not over the padding
        result.extras["perturbed_values"] = valid.flatten(1).sum(1) * images.shape[1]
    return dataclasses.replace(result, pred=restrict(result.pred, mask))


def attack_batches(attack: Any, net: nn.Module, images: Tensor, reference: Tensor, batch_size: int | None = None,
                   progress: Any = None, valid: Tensor | None = None) -> list[AttackResult]:
    """``attack`` on ``net``, ``batch_size`` images at a time against the matching ``reference`` masks (targets or
    ground truth); one result per batch. ``progress``: a :class:`~lightning_seg.evaluation.progress.Progress` advances
    by the images of each batch, with the success so far as postfix; a plain tqdm bar by one per batch. ``valid``:
    see :func:`run_attack`."""
    size = batch_size or len(images)
    results = []
    valids = [None] * len(images.split(size)) if valid is None else valid.split(size)
    succeeded = done = 0
    for x, ref, v in zip(images.split(size), reference.split(size), valids):
        results.append(run_attack(attack, net, x, ref, v))
        if progress is not None:
            done += len(x)
            succeeded += int(results[-1].success.sum())  # one host sync per batch, after the attack
            advance(progress, len(x), success=f"{succeeded}/{done}")
    return results


__all__ = ["NO_PERTURBATION_MASK", "attack_batches", "on_grid", "predict", "run_attack"]
