"""APGD for segmentation (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, Algorithm 1), Linf and L2, untargeted or targeted, with the segmentation losses of
:mod:`lightning_seg.attacks.seg_losses` (SEA's masked / balanced CE and Jensen-Shannon divergence, soft Dice, margin,
SegPGD, CosPGD).

Algorithm 1, per image, maximising the objective ``f`` over ``S = B_eps(x0) ∩ [0,1]`` (∩ the perturbation mask):

- ``x(1) = P_S(x(0) + eta * s(g(0)))``; then for k >= 1
  ``z(k+1) = P_S(x(k) + eta(k) s(g(k)))`` and
  ``x(k+1) = P_S(x(k) + a (z(k+1) - x(k)) + (1 - a)(x(k) - x(k-1)))`` with momentum ``a = 0.75``;
  ``s(g) = sign(g)`` (Linf) or ``g / ||g||_2`` (L2); initial step ``eta(0) = 2 eps``.
- Checkpoints ``w_j = ceil(p_j N)``, ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``.
  At ``w_j`` the step halves, and the iterate restarts from the point of highest objective ``x_max`` (with its
  gradient), if condition 1: fewer than ``rho (w_j - w_{j-1})`` of the steps since ``w_{j-1}`` raised ``f``
  (``rho = 0.75``), or condition 2: the step was not halved at ``w_{j-1}`` and ``f_max`` has not changed since.

Everything is per image (step size, counters, ``x_max``, the output iterate), and the checkpoint decisions are tensor
operations: no host synchronisation inside the loop. ``steps = N`` gradient steps cost N backwards and N + 1 forwards
(the last iterate is evaluated, not differentiated), plus the final forward of the result.

Output iterate: ``x_max`` (highest objective) only steers the step-size schedule; the attack RETURNS, per image, the
evaluated iterate of worst segmentation quality: untargeted, the lowest hard Dice against the labels (mean over the
foreground classes, or over ``structures``), ties broken by the lowest pixel accuracy; targeted, the highest Dice (then
pixel accuracy) against the target. The objective is a poor selector for segmentation: the masked losses FALL as
pixels flip, and no loss is monotone in Dice. Restarts (``restarts > 1``, new random starts from ``generator``) keep
the better output per image by the same rule, so more restarts are never worse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_seg.attacks._common import check_inputs, check_output, finish, per_image, project_box
from lightning_seg.attacks.guard import AttackContext, attack_guard
from lightning_seg.attacks.measure import class_map, pixel_accuracy
from lightning_seg.attacks.pgd import _project_ball, _random_start
from lightning_seg.attacks.result import AttackResult
from lightning_seg.attacks.seg_losses import LOSSES, Loss, class_weight_map, segmentation_objective
from lightning_seg.attacks.synthesis import Structures, hard_dice

# one weight per class, or None; a string alias (as synthesis' Structures) so that the config layer does not take the
# field for a scalar budget to parse as a fraction
ClassWeights = "tuple[float, ...] | None"
P1, P_DECAY, P_MIN = 0.22, 0.03, 0.06  # Croce & Hein 2020, Sec. 3: p_1, the shrink of the period and its minimum


def checkpoints(steps: int) -> list[int]:
    """APGD's checkpoints ``w_j = ceil(p_j N)`` for N = ``steps`` (duplicates, possible for small N, removed).

    ``ceil`` is taken with a 1e-9 tolerance so that binary rounding of ``p_j`` (e.g. 0.41 * 100 = 41.000000000000004)
    does not push a checkpoint one iteration late."""
    p = [0.0, P1]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - P_DECAY, P_MIN)
        if nxt > 1.0:
            break
        p.append(nxt)
    return sorted({min(steps, math.ceil(pj * steps - 1e-9)) for pj in p})


def halving(increases: Tensor, window: int, halved_last: Tensor, fmax: Tensor, fmax_last: Tensor,
            rho: float) -> Tensor:
    """Per-image step-halving decision at a checkpoint (bool [B]): condition 1, ``increases < rho * window``, or
    condition 2, not halved at the previous checkpoint and ``f_max`` unchanged since (``fmax <= fmax_last``)."""
    return (increases.to(torch.float32) < rho * window) | (~halved_last & (fmax <= fmax_last))


# (logits, 1-based iteration) -> per-image objective [B] to maximise
Objective = Callable[[Tensor, int], Tensor]


def lex_better(primary: Tensor, secondary: Tensor, best_p: Tensor, best_s: Tensor) -> Tensor:
    """Per image, whether ``(primary, secondary)`` is strictly lower than ``(best_p, best_s)`` (lexicographic)."""
    return (primary < best_p) | ((primary == best_p) & (secondary < best_s))


@dataclass
class Best:
    """Per-image output iterate: lowest ``(primary, secondary)`` so far (lexicographic)."""

    delta: Tensor
    primary: Tensor
    secondary: Tensor

    @classmethod
    def empty(cls, like: Tensor) -> Best:
        inf = torch.full((like.shape[0],), float("inf"), device=like.device)
        return cls(torch.zeros_like(like), inf, inf.clone())

    def offer(self, delta: Tensor, primary: Tensor, secondary: Tensor) -> Tensor:
        """Keep ``delta`` where it is strictly better; returns the images where it was (bool [B])."""
        better = lex_better(primary, secondary, self.primary, self.secondary)
        self.delta = torch.where(per_image(better), delta, self.delta)
        self.primary = torch.where(better, primary, self.primary)
        self.secondary = torch.where(better, secondary, self.secondary)
        return better

    def merge(self, other: Best) -> Tensor:
        return self.offer(other.delta, other.primary, other.secondary)


def quality(logits: Tensor, labels: Tensor, mask: Tensor, targeted: bool,
            structures: Structures = None) -> tuple[Tensor, Tensor]:
    """The output selection key (lower = stronger attack): untargeted ``(Dice, pixel accuracy)`` vs the labels,
    targeted ``(-Dice, -pixel accuracy)`` vs the target."""
    dice = hard_dice(logits, labels, mask, structures)
    acc = pixel_accuracy(class_map(logits), labels, mask)
    return (-dice, -acc) if targeted else (dice, acc)


def apgd_run(ctx: AttackContext, x0: Tensor, labels: Tensor, mask: Tensor, pm: Tensor | None, *, start: Tensor,
             eps: float, norm: str, steps: int, objective: Objective, eta0: float, momentum: float, rho: float,
             targeted: bool, structures: Structures = None) -> tuple[Best, Tensor]:
    """One APGD run (Algorithm 1) of ``steps`` gradient steps in the ball of radius ``eps`` from ``start`` (a
    perturbation inside it). Returns the per-image output iterate (module docstring) and the final step sizes [B]."""
    B = x0.shape[0]
    best = Best.empty(x0)
    W = checkpoints(steps)

    def project(d: Tensor) -> Tensor:
        return project_box(x0, _project_ball(d, eps, norm), pm)

    def evaluate(d: Tensor, t: int, grad: bool) -> tuple[Tensor, Tensor | None]:
        d = d.detach().requires_grad_(grad)
        z = ctx.forward(x0 + d)
        check_output(z, labels)
        with torch.set_grad_enabled(grad):
            f = objective(z, t)
        g = ctx.grad(f.sum(), d) if grad else None
        best.offer(d.detach(), *quality(z.detach(), labels, mask, targeted, structures))
        return f.detach(), g

    def direction(g: Tensor) -> Tensor:
        if norm == "linf":
            return g.sign()
        if pm is not None:
            g = g * pm  # normalise the part of the gradient the attack can use
        return g / per_image(g.flatten(1).norm(dim=1).clamp_min(1e-12))

    x = project(start)
    moving = steps > 0 and bool(torch.as_tensor(eps).gt(0).any())  # eps, eta0: floats or per-image tensors [B]
    f, g = evaluate(x, 1, moving)
    eta = torch.as_tensor(eta0, device=x0.device, dtype=x0.dtype).expand(B).clone()
    if not moving:  # nothing to move: the start is the output
        return best, eta
    x_max, f_max, g_max = x, f, g
    x_prev = x
    increases = torch.zeros(B, dtype=torch.long, device=x0.device)
    halved_last = torch.zeros(B, dtype=torch.bool, device=x0.device)
    fmax_last = f_max
    j = 1  # next checkpoint index (W[0] = 0)
    for k in range(steps):  # produce and evaluate x(k+1)
        assert g is not None
        z = project(x + per_image(eta) * direction(g))
        if k == 0:
            x_new = z
        else:
            x_new = project(x + momentum * (z - x) + (1 - momentum) * (x - x_prev))
        f_new, g_new = evaluate(x_new, min(k + 2, steps), k + 1 < steps)
        increases = increases + (f_new > f).long()
        up = f_new > f_max
        x_max = torch.where(per_image(up), x_new, x_max)
        f_max = torch.where(up, f_new, f_max)
        if g_new is not None:
            g_max = torch.where(per_image(up), g_new, g_max)
        x_prev, x, f, g = x, x_new, f_new, g_new
        if j < len(W) and k + 1 == W[j]:  # checkpoint w_j (a Python int: no host sync)
            if k + 1 < steps:  # at the last iterate there is no step left to change
                half = halving(increases, W[j] - W[j - 1], halved_last, f_max, fmax_last, rho)
                eta = torch.where(half, eta / 2, eta)
                x = torch.where(per_image(half), x_max, x)
                f = torch.where(half, f_max, f)
                g = torch.where(per_image(half), g_max, g)
                halved_last, fmax_last = half, f_max
                increases = torch.zeros_like(increases)
            j += 1
    return best, eta


def make_objective(loss: str, labels: Tensor, mask: Tensor, *, targeted: bool, steps: int,
                   class_weights: Sequence[float] | None, structures: Structures) -> Objective:
    """The per-image objective of ``loss`` against fixed ``labels``; the class weights of ``balanced_ce`` are
    computed once, at the first call (the number of classes is the model's), not at every iteration."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    cache: dict[int, Tensor] = {}

    def objective(z: Tensor, t: int) -> Tensor:
        weights = None
        if loss == "balanced_ce":
            k = int(z.shape[1])
            if k not in cache:
                cache[k] = class_weight_map(labels, mask, k, class_weights)
            weights = cache[k]
        return segmentation_objective(loss, z, labels, mask, targeted=targeted, t=t, steps=max(steps, 1),
                                      structures=structures, weights=weights)

    return objective


def check_budget(name: str, eps: float, steps: int, alpha: float | None, momentum: float, rho: float,
                 norm: str) -> None:
    if norm not in ("linf", "l2"):
        raise ValueError(f"{name}: norm must be 'linf' or 'l2', got {norm!r}")
    if eps < 0 or steps < 0 or (alpha is not None and alpha <= 0):
        raise ValueError(f"{name}: need eps >= 0, steps >= 0 and alpha > 0 (got {eps}, {steps}, {alpha})")
    if not 0.0 < momentum <= 1.0 or not 0.0 < rho <= 1.0:
        raise ValueError(f"{name}: momentum and rho must be in (0, 1], got {momentum}, {rho}")


def apgd(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    mask: Tensor | None = None,
    perturbation_mask: Tensor | None = None,
    eps: float = 4 / 255,
    norm: Literal["linf", "l2"] = "linf",
    steps: int = 100,
    loss: Loss = "ce",
    targeted: bool = False,
    restarts: int = 1,
    alpha: float | None = None,
    momentum: float = 0.75,
    rho: float = 0.75,
    class_weights: ClassWeights = None,
    structures: Structures = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    adv_threshold: float = 0.99,
) -> AttackResult:
    """APGD (Croce & Hein, ICML 2020, Algorithm 1) with a segmentation loss; see the module docstring.

    images [B,C,H,W] in [0,1]; labels long [B,h,w]: the ground truth, or the target when ``targeted``; mask bool
    [B,h,w]. eps in [0,1] units (Linf) or unnormalised L2 over the input. ``steps``: gradient steps per restart (100 as
    in AutoAttack). ``alpha``: the initial step eta(0) (None: 2 eps, the paper's); ``momentum`` and ``rho``: the
    paper's 0.75 and 0.75. ``loss``: one of :data:`lightning_seg.attacks.seg_losses.LOSSES`; ``class_weights`` (one
    per class) for ``balanced_ce`` (None: inverse class frequencies of each image's label map). ``structures``: unions
    of classes for the Dice of ``loss="dice"`` and of the output selection (None: each foreground class; the attack
    command sets the task's, e.g. glaucoma disc and cup). ``random_start``: a uniform start in the ball, drawn with
    ``generator`` (on the input device), for every restart; without it the first restart starts at the clean image.
    Success: APSR >= ``adv_threshold``. extras: ``dice`` (the selection Dice of the returned iterate), ``step_size``
    (each image's final step of the last restart), ``eps``, ``norm``, ``loss``.
    """
    check_budget("apgd", eps, steps, alpha, momentum, rho, norm)
    if restarts < 1:
        raise ValueError(f"apgd: restarts must be >= 1, got {restarts}")
    x0, lab, cnt, pm = check_inputs(images, labels, mask, perturbation_mask)
    objective = make_objective(loss, lab, cnt, targeted=targeted, steps=steps, class_weights=class_weights,
                               structures=structures)
    eta0 = 2.0 * eps if alpha is None else float(alpha)
    with attack_guard(model) as ctx:
        best = Best.empty(x0)
        eta = torch.full((x0.shape[0],), eta0, device=x0.device)
        for _ in range(restarts):
            start = torch.zeros_like(x0)
            if random_start and eps > 0:
                start = _random_start(x0, eps, norm, generator)
            run, eta = apgd_run(ctx, x0, lab, cnt, pm, start=start, eps=eps, norm=norm, steps=steps,
                                objective=objective, eta0=eta0, momentum=momentum, rho=rho, targeted=targeted,
                                structures=structures)
            best.merge(run)
        iters = torch.full((x0.shape[0],), steps * restarts, dtype=torch.long, device=x0.device)
        dice = -best.primary if targeted else best.primary
        return finish(ctx, x0, best.delta, lab, cnt, targeted=targeted, iterations=iters, criterion="apsr",
                      threshold=adv_threshold,
                      extras={"eps": eps, "norm": norm, "loss": loss, "dice": dice, "step_size": eta})


__all__ = ["Best", "ClassWeights", "apgd", "apgd_run", "checkpoints", "halving", "quality"]
