"""Batched forward passes outside the training loop: clean predictions and attacks over a whole image set."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_seg.attacks import AttackResult


@torch.no_grad()
def predict(net: nn.Module, images: Tensor, batch_size: int | None = None) -> Tensor:
    """Hard predictions ``[N,h,w]`` of ``net`` in eval mode, ``batch_size`` images at a time (all at once for
    ``None``); the network's training flag is restored afterwards."""
    was_training = net.training
    net.eval()
    try:
        return torch.cat([net(x).argmax(1) for x in images.split(batch_size or len(images))])
    finally:
        net.train(was_training)


def attack_batches(attack: Any, net: nn.Module, images: Tensor, reference: Tensor, batch_size: int | None = None,
                   progress: Any = None) -> list[AttackResult]:
    """``attack`` on ``net``, ``batch_size`` images at a time against the matching ``reference`` masks (targets or
    ground truth); one result per batch. ``progress`` (a tqdm bar) advances by one per batch."""
    size = batch_size or len(images)
    results = []
    for x, ref in zip(images.split(size), reference.split(size)):
        results.append(attack(net, x, ref))
        if progress is not None:
            progress.update(1)
    return results


__all__ = ["attack_batches", "predict"]
