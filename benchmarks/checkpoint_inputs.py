"""The attacked inputs of a fit checkpoint, as the ``attack`` command builds them (shared by the benchmarks).

The checkpoint's stored config gives the data set and task; the first ``num_images`` images of the validation split
come with their ground truth and their targets (another image's mask, the command's seeded derangement). The network
is returned in eval mode with frozen parameters, ready for attacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from torch import nn

from lightning_seg.commands.attack import AttackInputs, _load_inputs
from lightning_seg.config import compose


def checkpoint_inputs(ckpt: Path, num_images: int) -> tuple[AttackInputs, nn.Module, Any]:
    """``(inputs, frozen eval network, stored data config)`` of the fit checkpoint ``ckpt``."""
    stored = OmegaConf.load(ckpt.parent.parent / "config.yaml")
    cfg = compose(["logger=none", f"data={stored.data.name}", f"data.task={stored.data.task}",
                   f"attack_eval.num_images={num_images}"])
    inputs = _load_inputs(cfg, ckpt)
    net = inputs.module.net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return inputs, net, stored.data
