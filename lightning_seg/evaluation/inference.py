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
from lightning_seg.attacks.measure import apsr, l2_norm, linf_norm, per_image_iou, pixel_accuracy
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
                   progress: Any = None, valid: Tensor | None = None, quantize: bool = False) -> list[AttackResult]:
    """``attack`` on ``net``, ``batch_size`` images at a time against the matching ``reference`` masks (targets or
    ground truth); one result per batch. ``progress``: a :class:`~lightning_seg.evaluation.progress.Progress` advances
    by the images of each batch, with the success so far as postfix; a plain tqdm bar by one per batch. ``valid``:
    see :func:`run_attack`. ``quantize``: each result after a uint8 round-trip (:func:`quantize_result`)."""
    size = batch_size or len(images)
    results = []
    valids = [None] * len(images.split(size)) if valid is None else valid.split(size)
    succeeded = done = 0
    for x, ref, v in zip(images.split(size), reference.split(size), valids):
        result = run_attack(attack, net, x, ref, v)
        results.append(quantize_result(attack, net, x, ref, result, v) if quantize else result)
        if progress is not None:
            done += len(x)
            succeeded += int(results[-1].success.sum())  # one host sync per batch, after the attack
            advance(progress, len(x), success=f"{succeeded}/{done}")
    return results


def success_rule(attack: Any) -> tuple[str, float] | None:
    """How ``attack`` decides success, read from its config: ``("iou", t)`` (IoU with the target >= t: SSM / ASM /
    ASMA) or ``("apsr", t)`` (attack pixel success rate >= t: DAG, the PGD family, APGD, SEA, UP); None when it has
    neither (synthesis: scored against deformed labels)."""
    config = getattr(attack, "config", None)
    if hasattr(config, "iou_threshold"):
        return "iou", config.iou_threshold if config.iou_threshold is not None else config.success_threshold
    if hasattr(config, "adv_threshold"):
        return "apsr", config.adv_threshold
    return None


@torch.no_grad()
def quantize_result(attack: Any, net: nn.Module, images: Tensor, reference: Tensor, result: AttackResult,
                    valid: Tensor | None = None) -> AttackResult:
    """``result`` after a uint8 round-trip of its adversarial images (as when they are saved to an 8-bit file):
    ``round(adv * 255) / 255`` where the attack changed a value (untouched values, padding included, keep their clean
    value), then the prediction, IoU, pixel accuracy, APSR, success (the attack's own rule, :func:`success_rule`) and
    L2 / Linf against the clean ``images`` of those quantized images. Iterations and forward / backward counts stay
    the attack's. Clean images on the 8-bit grid keep every Linf within the budget rounded to the nearest 1/255."""
    rule = success_rule(attack)
    if rule is None:
        raise ValueError(f"attack {getattr(attack, 'name', attack)!r} has no success rule to re-score quantized images")
    adv = torch.where(result.adv == images, images, (result.adv * 255).round() / 255)
    mask = None if valid is None else on_grid(_check_valid(valid, images), reference)
    was_training = net.training
    net.eval()
    try:
        logits = net(adv)
    finally:
        net.train(was_training)
    pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.max(1).indices
    if mask is not None:
        pred = restrict(pred, mask)
    iou = per_image_iou(pred, reference, mask, max(2, int(logits.shape[1])))
    rate = apsr(pred, reference, mask, result.targeted)
    success = (iou >= rule[1]) if rule[0] == "iou" else (rate >= rule[1])
    delta = adv - images
    return dataclasses.replace(result, adv=adv, pred=pred, success=success, iou=iou,
                               pixel_acc=pixel_accuracy(pred, reference, mask), l2=l2_norm(delta),
                               linf=linf_norm(delta), extras={**result.extras, "apsr": rate})


def result_state(result: AttackResult) -> dict[str, Any]:
    """``result`` as plain tensors, lists and numbers, on the CPU (``torch.load(weights_only=True)`` reads it back).
    Extras that are objects (the synthesis attack's ``transform``, a module of its own) are left out: a shard file
    must never need code to be read, and the reports use only the plain extras."""
    def plain(v: Any) -> Any:
        return v.detach().cpu() if isinstance(v, Tensor) else v

    def is_plain(v: Any) -> bool:
        if isinstance(v, (list, tuple)):
            return all(is_plain(x) for x in v)
        if isinstance(v, dict):
            return all(isinstance(k, str) and is_plain(x) for k, x in v.items())
        return v is None or isinstance(v, (Tensor, bool, int, float, str))

    fields = {f.name: plain(getattr(result, f.name)) for f in dataclasses.fields(result) if f.name != "extras"}
    return {"fields": fields, "extras": {k: plain(v) for k, v in result.extras.items() if is_plain(v)}}


def result_from_state(state: dict[str, Any]) -> AttackResult:
    return AttackResult(**state["fields"], extras=dict(state["extras"]))


def concat_results(results: list[AttackResult], order: Tensor | None = None) -> AttackResult:
    """One result for all images of ``results`` (batches), in the order ``order`` (positions in the concatenation;
    None: as given). Per-image tensors (and per-image tensor extras) are concatenated, forward / backward counts
    summed, counts per name (an ensemble's ``winner_counts``) summed; other extras (an ensemble's member names) are
    the first batch's."""
    def cat(values: list[Tensor]) -> Tensor:
        joined = torch.cat(values)
        return joined if order is None else joined[order.to(joined.device)]

    first = results[0]
    per_image = [f.name for f in dataclasses.fields(first) if isinstance(getattr(first, f.name), Tensor)]
    merged = {name: cat([getattr(r, name) for r in results]) for name in per_image}
    extras: dict[str, Any] = {}
    for key, value in first.extras.items():
        batched = isinstance(value, Tensor) and value.dim() > 0 and all(
            isinstance(r.extras.get(key), Tensor) and r.extras[key].dim() > 0 and len(r.extras[key]) == len(r)
            for r in results)
        counts = isinstance(value, dict) and all(
            isinstance(r.extras.get(key), dict) and all(isinstance(c, int) for c in r.extras[key].values())
            for r in results)
        if batched:
            extras[key] = cat([r.extras[key] for r in results])
        elif counts:
            extras[key] = {name: sum(r.extras[key].get(name, 0) for r in results) for name in value}
        else:
            extras[key] = value
    return dataclasses.replace(first, **merged, forwards=sum(r.forwards for r in results),
                               backwards=sum(r.backwards for r in results), extras=extras)


__all__ = ["NO_PERTURBATION_MASK", "attack_batches", "concat_results", "on_grid", "predict", "quantize_result",
           "result_from_state", "result_state", "run_attack", "success_rule"]
