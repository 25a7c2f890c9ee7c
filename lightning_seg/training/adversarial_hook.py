"""Adversarial-training hook: replaces (a share of) each training batch by adversarial examples.

Default recipe (Madry et al. 2018): Linf PGD with random start, K = ``adv_train.steps`` steps of
:func:`~lightning_seg.attacks.pgd.default_alpha` (2.5 eps / K), generated with the network in eval mode (the attack
guard; BatchNorm statistics stay clean) through ``torch.autograd.grad`` w.r.t. the input on the bare network (no DDP
hooks fire, no parameter ``.grad``); the outer loss is then computed on the detached adversarial batch.
``attack=asma`` trains against targeted ASMA examples whose targets are random realistic masks (another image's mask
by default).

``attack=synthesis`` is adversarial data augmentation with the Chen-style synthesis transforms (in the spirit of
AdvChain, Chen et al. 2022): a smooth deformation + bias field + noise optimised against the network (``steps``
gradient steps, then scaled to a Dice drop of ``params.dice_drop``), trained against the *equally deformed* labels;
its noise component is off unless ``params.noise_std`` is set (see ``SYNTHESIS_TRAIN_DEVIATIONS``).
``attack=random_synthesis`` draws the same transforms at random (alpha ~ U[0,1]) without a forward pass: the
non-adversarial baseline. ``params`` takes the keys of ``conf/attack/synthesis.yaml``. ``random_bias=True`` (synthesis
only) optimises the deformation (and noise, if on) and applies a random bias field on top.

The hook's own defaults (attack, eps, steps, ratio, target) are those of ``AdvTrainConfig`` (lightning_seg.config).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from lightning_seg.attacks.config import SynthesisConfig, build_named_attack, is_targeted
from lightning_seg.attacks.deformations import TransformConfig
from lightning_seg.attacks.pgd import default_alpha
from lightning_seg.attacks.synthesis import TRANSFORM_KEYS, random_synthesis
from lightning_seg.attacks.targets import make_target
from lightning_seg.config import AdvTrainConfig
from lightning_seg.evaluation.inference import run_attack

PGD_FAMILY = ("pgd", "segpgd", "cospgd", "fgsm", "apgd")
# Deliberate deviations of the training adversary from the synthesis defaults (conf/attack/synthesis.yaml): it is
# cheaper (3 bisection steps; the gradient steps are adv_train.steps), draws a fresh random start per batch (seed
# None), asks for a larger Dice drop so that the examples are hard, and has no noise component: adversarial noise is an
# L2 attack of its own that can reach the drop alone, which makes the bisection shrink deformation and bias and turns
# the augmentation into L2 adversarial training (docs/experiments.md, "Synthesis augmentation").
SYNTHESIS_TRAIN_DEVIATIONS = {"bisect_steps": 3, "dice_drop": 0.3, "seed": None, "noise_std": 0.0}
_DEFAULTS = AdvTrainConfig()


class AdversarialTrainingHook:
    def __init__(self, attack: str = _DEFAULTS.attack, eps: float = _DEFAULTS.eps, steps: int = _DEFAULTS.steps,
                 alpha: float | None = _DEFAULTS.alpha, ratio: float = _DEFAULTS.ratio, target: str = _DEFAULTS.target,
                 params: dict[str, Any] | None = None, random_bias: bool = _DEFAULTS.random_bias, **_: Any) -> None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"adv_train.ratio must be in (0, 1], got {ratio}")
        if random_bias and attack != "synthesis":
            raise ValueError(f"adv_train.random_bias applies to attack=synthesis only, got attack={attack!r}")
        params = dict(params or {})
        if attack in PGD_FAMILY:
            params.setdefault("eps", eps)
            if attack != "fgsm":
                params.setdefault("steps", steps)
                if attack != "apgd" or alpha is not None:  # APGD adapts its own step from 2 eps
                    params.setdefault("alpha", alpha if alpha is not None else default_alpha(eps, steps))
                params.setdefault("random_start", True)
            if attack != "apgd":  # APGD takes a generator (None: the global RNG), not a seed
                params.setdefault("seed", None)  # a fixed seed would reuse one random start for every batch
        self.name, self.ratio, self.target = attack, ratio, target
        self.bias: SynthesisConfig | None = None  # random_bias: the budgets of the random bias field
        if attack == "random_synthesis":
            self.attack = None
            self.synthesis: SynthesisConfig = build_named_attack("synthesis", None, **params).config  # validates the keys
            return
        if attack == "synthesis":
            params = {"steps": steps, **SYNTHESIS_TRAIN_DEVIATIONS, **params}
            if random_bias:
                self.bias = build_named_attack("synthesis", None, **params).config
                params["eps_bias"] = 0.0  # the adversary gets no bias component
        self.attack = build_named_attack(attack, None, **params)

    def __call__(self, net: nn.Module, images: Tensor, labels: Tensor,
                 valid: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, float]]:
        """(mixed images, their labels, cost): the first ``ratio`` share of the batch is replaced; labels change only
        for transforms that deform the anatomy (synthesis), which are trained against the deformed labels.

        ``valid`` (bool [B,H,W] at the input resolution, False on the padding of ``data.resize=pad``): additive
        attacks never change padded pixels and ignore them in their loss
        (:func:`lightning_seg.evaluation.inference.run_attack`); after a synthesis transform, which moves the whole
        canvas, the padded pixels are reset to their clean value (the training loss ignores them anyway)."""
        n = max(1, round(self.ratio * images.shape[0]))
        start = time.perf_counter()
        x, y = images[:n], labels[:n]
        v = None if valid is None else valid[:n].to(torch.bool)
        if self.attack is None:  # random_synthesis: no forward pass
            adv, adv_labels = _random_transform(self.synthesis, x, y)
            forwards = 0.0
        else:
            if is_targeted(self.attack):
                if self.target == "other_image" and n < 2:
                    return images, labels, {"adv_seconds": 0.0, "adv_images": 0.0}
                y = make_target(self.target, y)
            result = run_attack(self.attack, net, x, y, v)
            adv, adv_labels = result.adv, result.extras.get("adv_labels", labels[:n])
            if self.bias is not None:  # appearance only (no deformation, no second noise draw): labels unchanged
                adv = _random_transform(self.bias, adv, adv_labels, eps_morph=0.0, noise_std=0.0)[0]
            forwards = result.forwards / n
        if v is not None:  # a no-op for additive attacks; synthesis and the random bias field change the padding
            adv = torch.where(v.unsqueeze(1), adv, x)
        mixed = torch.cat([adv.detach(), images[n:]]) if n < images.shape[0] else adv.detach()
        mixed_labels = torch.cat([adv_labels, labels[n:]]) if n < labels.shape[0] else adv_labels
        return mixed, mixed_labels, {"adv_seconds": time.perf_counter() - start, "adv_images": float(n),
                                     "adv_forwards_per_image": forwards}


def _random_transform(budgets: SynthesisConfig, x: Tensor, y: Tensor, **override: float) -> tuple[Tensor, Tensor]:
    """A random synthesis transform at the budgets of ``budgets`` (keys in ``override`` replaced): images, labels."""
    cfg = TransformConfig(**{**{k: getattr(budgets, k) for k in TRANSFORM_KEYS}, **override})
    adv, adv_labels, _ = random_synthesis(x, y, cfg)
    return adv, adv_labels
