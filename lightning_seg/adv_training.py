"""Adversarial-training hook: replaces (a share of) each training batch by adversarial examples.

Default recipe (REFERENCE 4.3): Linf PGD with random start, K = 3 steps, alpha = 2.5 eps / K, generated
with the network in eval mode (the attack guard; BatchNorm statistics stay clean) through
``torch.autograd.grad`` w.r.t. the input on the bare network (no DDP hooks fire, no parameter
``.grad``); the outer loss is then computed on the detached adversarial batch. ``attack=asma`` trains
against targeted ASMA examples whose targets are random realistic masks (another image's mask by default).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from lightning_seg.adversarial import build_named_attack, is_targeted
from lightning_seg.targets import make_target

PGD_FAMILY = ("pgd", "segpgd", "cospgd", "fgsm")


class AdversarialTrainingHook:
    def __init__(self, attack: str = "pgd", eps: float = 4 / 255, steps: int = 3, alpha: float | None = None,
                 ratio: float = 1.0, target: str = "other_image", params: dict[str, Any] | None = None, **_: Any) -> None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"adv_train.ratio must be in (0, 1], got {ratio}")
        params = dict(params or {})
        if attack in PGD_FAMILY:
            params.setdefault("eps", eps)
            if attack != "fgsm":
                params.setdefault("steps", steps)
                params.setdefault("alpha", alpha if alpha is not None else 2.5 * eps / steps)
                params.setdefault("random_start", True)
            params.setdefault("seed", None)  # a fixed seed would reuse one random start for every batch
        self.attack = build_named_attack(attack, None, **params)
        self.name, self.ratio, self.target = attack, ratio, target

    def __call__(self, net: nn.Module, images: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        n = max(1, round(self.ratio * images.shape[0]))
        start = time.perf_counter()
        x, y = images[:n], labels[:n]
        if is_targeted(self.attack):
            if self.target == "other_image" and n < 2:
                return images, {"adv_seconds": 0.0, "adv_images": 0.0}
            y = make_target(self.target, y)
        result = self.attack(net, x, y)
        mixed = torch.cat([result.adv.detach(), images[n:]]) if n < images.shape[0] else result.adv.detach()
        return mixed, {"adv_seconds": time.perf_counter() - start, "adv_images": float(n),
                       "adv_forwards_per_image": result.forwards / n}
