"""FGSM / PGD for segmentation (Goodfellow et al. 2015; Madry et al. 2018), Linf and L2.

Loss: per-pixel cross-entropy averaged over each image's counted pixels (per-image mean, so
images never couple), optionally weighted per pixel by a detached weight (SegPGD, CosPGD reuse
this loop). Untargeted ascends the CE w.r.t. the labels, targeted descends it w.r.t. the target.

Linf: ``delta <- clip_eps(delta + alpha * sign(g))``; L2: ``delta <- Proj_{||.||_2 <= eps}(delta +
alpha * g / ||g||_2)`` per image; then the perturbation mask and the [0,1] box. Random start:
uniform in the Linf ball, or uniform direction with radius eps * U^(1/n) in the L2 ball, drawn
with ``generator`` (which must live on the input device). FGSM = one step, alpha = eps, no
random start. Success = APSR >= ``adv_threshold``.

Output iterate: per image the evaluated iterate of worst segmentation quality, by the rule APGD uses
(:func:`lightning_seg.attacks.apgd.quality`): untargeted, the lowest hard Dice against the labels (mean over the
foreground classes, or over ``structures``), ties broken by the lowest pixel accuracy; targeted, the highest Dice
(then pixel accuracy) against the target. The forward of step t already evaluates the iterate of step t - 1 (the
start at t = 1), so only the last iterate costs one extra forward (no grad): ``steps`` + 1 forwards and ``steps``
backwards per restart, plus the final forward of the result. The selection adds no host synchronisation.

Restarts (``restarts > 1``): new random starts drawn from ``generator``; per image the better output by the same
rule, so more restarts are never worse (they need ``random_start``: without it every restart repeats the first).

Budgets: ``eps`` and ``alpha`` are floats, or tensors [B] with one budget per image (as the per-image minimum-budget
search uses); an image with eps = 0 is left unperturbed.
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
from lightning_seg.attacks.synthesis import Structures

# A budget: one float for the batch, or a tensor [B] with one value per image.
Budget = float | Tensor

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


def _radius(eps: Budget) -> Budget:
    """A budget for broadcasting against images: a float as is, a per-image tensor [B] as [B,1,1,1]."""
    return per_image(eps) if isinstance(eps, Tensor) else eps


def _random_start(x0: Tensor, eps: Budget, norm: str, generator: torch.Generator | None) -> Tensor:
    if norm == "linf":
        u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return (2 * u - 1) * _radius(eps)
    g = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    n = x0[0].numel()
    r = torch.rand(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype) ** (1.0 / n)
    return g * per_image(r * eps)


def _project_ball(delta: Tensor, eps: Budget, norm: str) -> Tensor:
    if norm == "linf":
        if isinstance(eps, Tensor):
            e = per_image(eps).to(delta.dtype)
            return torch.minimum(torch.maximum(delta, -e), e)
        return delta.clamp(-eps, eps)
    n = delta.flatten(1).norm(dim=1)
    return delta * per_image((eps / n.clamp_min(1e-12)).clamp(max=1.0))


def _budget(name: str, what: str, value: Budget, x0: Tensor) -> Budget:
    """Check a budget (float, or tensor [B] / scalar tensor): returned as a float or a [B] tensor on the input device."""
    if not isinstance(value, Tensor):
        return float(value)
    if value.dim() == 0:
        return float(value)
    if tuple(value.shape) != (x0.shape[0],):
        raise ValueError(f"{name}: a per-image {what} must be a tensor [B] = [{x0.shape[0]}], got {tuple(value.shape)}")
    return value.detach().to(device=x0.device, dtype=x0.dtype)


def pgd_core(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    mask: Tensor | None,
    perturbation_mask: Tensor | None,
    eps: Budget,
    alpha: Budget,
    steps: int,
    norm: str,
    targeted: bool,
    random_start: bool,
    generator: torch.Generator | None,
    adv_threshold: float,
    restarts: int = 1,
    structures: Structures = None,
    weight_fn: WeightFn | None = None,
    name: str = "pgd",
) -> AttackResult:
    """The shared projected-gradient loop (see module docstring)."""
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if restarts < 1:
        raise ValueError(f"{name}: restarts must be >= 1, got {restarts}")
    if restarts > 1 and not random_start:
        raise ValueError(f"{name}: restarts={restarts} needs random_start=true: without a random start every restart "
                         "repeats the first one")
    x0, lab, cnt, pm = check_inputs(images, labels, mask, perturbation_mask)
    eps, alpha = _budget(name, "eps", eps, x0), _budget(name, "alpha", alpha, x0)
    # one check before the loop (a host sync for tensor budgets, never per step)
    if steps < 0 or bool(torch.as_tensor(eps).lt(0).any()) or bool(torch.as_tensor(alpha).le(0).any()):
        raise ValueError(f"{name}: need eps >= 0, alpha > 0, steps >= 0 (got {eps}, {alpha}, {steps})")
    from lightning_seg.attacks.apgd import Best, quality  # apgd imports this module's projections

    B = x0.shape[0]
    npix = cnt.flatten(1).sum(1).clamp_min(1).to(x0.dtype)
    step = _radius(alpha)
    with attack_guard(model) as ctx:
        best = Best.empty(x0)
        for _ in range(restarts):
            delta = torch.zeros_like(x0)
            if random_start and (isinstance(eps, Tensor) or eps > 0):
                delta = project_box(x0, _random_start(x0, eps, norm, generator), pm)
            for t in range(1, steps + 1):
                d = delta.requires_grad_(True)
                z = ctx.forward(x0 + d)
                if t == 1:
                    check_output(z, lab)
                best.offer(d.detach(), *quality(z.detach(), lab, cnt, targeted, structures))  # z is delta_{t-1}'s
                ce = F.cross_entropy(z, lab, reduction="none")
                if weight_fn is not None:
                    ce = ce * weight_fn(z.detach(), lab, t, steps, targeted)
                loss = (ce * cnt).flatten(1).sum(1) / npix  # per-image mean over counted pixels
                g = ctx.grad(loss.sum(), d)
                if targeted:
                    g = -g
                if norm == "linf":
                    d = d.detach() + step * g.sign()
                else:
                    d = d.detach() + per_image(alpha / g.flatten(1).norm(dim=1).clamp_min(1e-12)) * g
                delta = project_box(x0, _project_ball(d, eps, norm), pm)
            with torch.no_grad():  # the last iterate: the one forward the selection adds
                z = ctx.forward(x0 + delta)
            check_output(z, lab)
            best.offer(delta.detach(), *quality(z, lab, cnt, targeted, structures))
        iters = torch.full((B,), steps * restarts, dtype=torch.long, device=x0.device)
        dice = -best.primary if targeted else best.primary
        return finish(ctx, x0, best.delta, lab, cnt, targeted=targeted, iterations=iters, criterion="apsr",
                      threshold=adv_threshold,
                      extras={"eps": eps, "alpha": alpha, "norm": norm, "dice": dice, "restarts": restarts})


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
    restarts: int = 1,
    structures: Structures = None,
    generator: torch.Generator | None = None,
    adv_threshold: float = 0.99,
) -> AttackResult:
    """PGD with per-pixel CE averaged per image (Madry et al. 2018).

    images [B,C,H,W] in [0,1]; labels (ground truth, or target when ``targeted``) long [B,h,w];
    mask bool [B,h,w]. eps/alpha in [0,1] units (Linf) or unnormalised L2 over the input (floats, or tensors [B]
    with one value per image). Returns per image the iterate of worst quality over the ``restarts`` runs (module
    docstring); ``structures``: unions of classes for that Dice (None: each foreground class; the attack command sets
    the task's). extras: ``dice`` (the selection Dice of the returned iterate), ``eps``, ``alpha``, ``norm``,
    ``restarts``.
    """
    return pgd_core(model, images, labels, mask=mask, perturbation_mask=perturbation_mask, eps=eps, alpha=alpha,
                    steps=steps, norm=norm, targeted=targeted, random_start=random_start, generator=generator,
                    adv_threshold=adv_threshold, restarts=restarts, structures=structures, name="pgd")


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
    structures: Structures = _PGD["structures"],
    adv_threshold: float = _PGD["adv_threshold"],
) -> AttackResult:
    """FGSM (Goodfellow et al. 2015): one step of size eps (L2: fast gradient method). Deterministic, so no restarts;
    the output is the better of the clean image and the step by the PGD rule (module docstring)."""
    alpha = eps.clamp_min(1e-12) if isinstance(eps, Tensor) else max(eps, 1e-12)
    return pgd_core(model, images, labels, mask=mask, perturbation_mask=perturbation_mask, eps=eps,
                    alpha=alpha, steps=1, norm=norm, targeted=targeted, random_start=False,
                    generator=None, adv_threshold=adv_threshold, structures=structures, name="fgsm")


__all__ = ["Budget", "fgsm", "pgd", "pgd_core"]
