"""FGSM / PGD for segmentation (Goodfellow et al. 2015; Madry et al. 2018), Linf and L2.

Loss: per-pixel cross-entropy averaged over each image's counted pixels (per-image mean, so
images never couple), optionally weighted per pixel by a detached weight (SegPGD, CosPGD reuse
this loop). Untargeted ascends the CE w.r.t. the labels, targeted descends it w.r.t. the target.

Linf: ``delta <- clip_eps(delta + alpha * sign(g))``; L2: ``delta <- Proj_{||.||_2 <= eps}(delta +
alpha * g / ||g||_2)`` per image; then the perturbation mask and the [0,1] box. Random start:
uniform in the Linf ball, or uniform direction with radius eps * U^(1/n) in the L2 ball, drawn
with ``generator`` (which must live on the input device). FGSM = one step, alpha = eps, no
random start. Returns the final iterate; success = APSR >= ``adv_threshold``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.attacks._common import check_inputs, check_output, finish, per_image, project_box
from lightning_seg.attacks.guard import attack_guard
from lightning_seg.attacks.result import AttackResult

# weight_fn(logits_detached, labels, t (1-based), steps, targeted) -> per-pixel weight [B,h,w]
WeightFn = Callable[[Tensor, Tensor, int, int, bool], Tensor]


def default_alpha(eps: float, steps: int) -> float:
    """The PGD step size used wherever only a budget and a step count are given: ``2.5 * eps / steps``.

    Madry et al. (2018) take a step of 2.5 eps / steps so that ``steps`` steps can cross the eps-ball from any
    random start and still move along its boundary; the adversarial-training hook, the robustness sweeps and the
    defense report all use this one rule."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return 2.5 * float(eps) / int(steps)


def _random_start(x0: Tensor, eps: float, norm: str, generator: torch.Generator | None) -> Tensor:
    if norm == "linf":
        u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return (2 * u - 1) * eps
    g = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    n = x0[0].numel()
    r = torch.rand(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype) ** (1.0 / n)
    return g * per_image(r * eps)


def _project_ball(delta: Tensor, eps: float, norm: str) -> Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = delta.flatten(1).norm(dim=1)
    return delta * per_image((eps / n.clamp_min(1e-12)).clamp(max=1.0))


def pgd_core(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    mask: Tensor | None,
    perturbation_mask: Tensor | None,
    eps: float,
    alpha: float,
    steps: int,
    norm: str,
    targeted: bool,
    random_start: bool,
    generator: torch.Generator | None,
    adv_threshold: float,
    weight_fn: WeightFn | None = None,
    name: str = "pgd",
) -> AttackResult:
    """The shared projected-gradient loop (see module docstring)."""
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if eps < 0 or alpha <= 0 or steps < 0:
        raise ValueError(f"{name}: need eps >= 0, alpha > 0, steps >= 0 (got {eps}, {alpha}, {steps})")
    x0, lab, cnt, pm = check_inputs(images, labels, mask, perturbation_mask)
    B = x0.shape[0]
    npix = cnt.flatten(1).sum(1).clamp_min(1).to(x0.dtype)
    with attack_guard(model) as ctx:
        delta = torch.zeros_like(x0)
        if random_start and eps > 0:
            delta = project_box(x0, _random_start(x0, eps, norm, generator), pm)
        for t in range(1, steps + 1):
            d = delta.requires_grad_(True)
            z = ctx.forward(x0 + d)
            if t == 1:
                check_output(z, lab)
            ce = F.cross_entropy(z, lab, reduction="none")
            if weight_fn is not None:
                ce = ce * weight_fn(z.detach(), lab, t, steps, targeted)
            loss = (ce * cnt).flatten(1).sum(1) / npix  # per-image mean over counted pixels
            g = ctx.grad(loss.sum(), d)
            if targeted:
                g = -g
            if norm == "linf":
                d = d.detach() + alpha * g.sign()
            else:
                d = d.detach() + per_image(alpha / g.flatten(1).norm(dim=1).clamp_min(1e-12)) * g
            delta = project_box(x0, _project_ball(d, eps, norm), pm)
        iters = torch.full((B,), steps, dtype=torch.long, device=x0.device)
        return finish(ctx, x0, delta, lab, cnt, targeted=targeted, iterations=iters, criterion="apsr",
                      threshold=adv_threshold, extras={"eps": eps, "alpha": alpha, "norm": norm})


def pgd(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    mask: Tensor | None = None,
    perturbation_mask: Tensor | None = None,
    eps: float = 4 / 255,
    alpha: float = 1 / 255,
    steps: int = 10,
    norm: Literal["linf", "l2"] = "linf",
    targeted: bool = False,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    adv_threshold: float = 0.99,
) -> AttackResult:
    """PGD with per-pixel CE averaged per image (Madry et al. 2018).

    images [B,C,H,W] in [0,1]; labels (ground truth, or target when ``targeted``) long [B,h,w];
    mask bool [B,h,w]. eps/alpha in [0,1] units (Linf) or unnormalised L2 over the input.
    """
    return pgd_core(model, images, labels, mask=mask, perturbation_mask=perturbation_mask, eps=eps, alpha=alpha,
                    steps=steps, norm=norm, targeted=targeted, random_start=random_start, generator=generator,
                    adv_threshold=adv_threshold, name="pgd")


_PGD = {n: p.default for n, p in inspect.signature(pgd).parameters.items()}  # FGSM shares PGD's defaults


def fgsm(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    mask: Tensor | None = None,
    perturbation_mask: Tensor | None = None,
    eps: float = _PGD["eps"],
    norm: Literal["linf", "l2"] = _PGD["norm"],
    targeted: bool = _PGD["targeted"],
    adv_threshold: float = _PGD["adv_threshold"],
) -> AttackResult:
    """FGSM (Goodfellow et al. 2015): one step of size eps (L2: fast gradient method)."""
    return pgd_core(model, images, labels, mask=mask, perturbation_mask=perturbation_mask, eps=eps,
                    alpha=max(eps, 1e-12), steps=1, norm=norm, targeted=targeted, random_start=False,
                    generator=None, adv_threshold=adv_threshold, name="fgsm")


__all__ = ["fgsm", "pgd", "pgd_core"]
