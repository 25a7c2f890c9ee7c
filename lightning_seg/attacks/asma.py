"""ASMA: Adaptive Segmentation Mask Attack (Ozbulak, Van Messem, De Neve, MICCAI 2019,
arXiv 1907.13124), with the SSM / ASM / DPM switches.

One image, logits g(x) [K,h,w], target Y, prediction P = argmax_c g(x):

* Eq. 2 (SSM + adaptive mask): ``L_pred(x) = sum_c sum_p g_c(x)_p 1[Y_p = c] 1[P_p != c]``.
  ``adaptive_mask=False`` drops the factor ``1[P_p != c]`` (plain SSM).
* Objective (maximised): ``J(x) = L_pred(x) - ||x - x0||_2^2`` (squared L2 over the whole input).
* Eq. 3 (update): ``x_{k+1} = clip_[0,1](x_k + mu_k grad_x J(x_k))``, raw gradient (no sign,
  no normalisation) for ``step="raw"``.
* DPM: ``mu_0 = tau``, ``mu_{k+1} = beta * IoU(argmax g(x_{k+1}), Y) + tau``; with
  ``dynamic_multiplier=False`` mu = tau throughout.

Variants: ``ssm`` (no ASM, no DPM), ``asm`` (ASM, fixed mu), ``asma`` (both).

Differences from the reference code and adv_lib, deliberately not reproduced: the logit term
and the multiplier are per image (adv_lib sums logits over the batch, i.e. a step multiplied
by B, and pools IoU over the batch); IoU(empty, empty) = 1 instead of NaN; multi-class IoU is
the mean over classes present in target ∪ prediction.

Schedules:

* efficient (default): ONE forward per iteration. The forward at x_k yields the gradient and
  the prediction; IoU(x_k) drives mu_k (k >= 1) and the early stop. This equals the reference
  schedule up to the clamp (the reference measures IoU on the unclamped x_k before clipping).
  Images whose IoU reaches ``iou_threshold`` are frozen (their delta no longer changes) and
  every ``check_every`` iterations the active sub-batch is shrunk (:class:`ActiveSet`: one host
  sync per check, none per step); the loop ends when no image is active.
* ``paper_exact=True``: the original loop: fixed ``max_iter`` iterations, a second forward per
  iteration on the updated *unclamped* image to get the IoU for the next multiplier, and the
  statistics the reference prints (IoU, pixel accuracy, L2, Linf) taken before the clamp; they
  are returned in ``extras["paper_stats"]``. The main result fields are always computed on
  the final clamped ``adv``. Cost: 2 forwards + 1 backward per iteration instead of 1 + 1.

Per-image budget of the efficient schedule (all per image, all tensor operations between checks):

* early stop at ``iou_threshold``; finished images are frozen and leave the forward at the next check
  (``check_every`` = 2: at most one wasted forward per image, one host sync per two iterations);
* shrink phase (``shrink_steps``, ``shrink``, ``shrink_step``): after an image first reaches the threshold it runs
  a few more iterations on an L2 sphere, with the norm and the direction decoupled as in DDN (Rony et al., CVPR
  2019, Algorithm 1): the radius starts at the perturbation's L2 and shrinks by ``1 - shrink`` while the image
  stays on target (grows by ``1 + shrink`` when it falls off); each iteration takes a step of length
  ``shrink_step * radius`` along the ASMA gradient, which repairs the pixels that fell off, and projects back onto
  the sphere. The paper's L2 term pulls towards 0 too, but at a rate of 2 mu per step, i.e. about 1e-6 of delta
  per iteration with its constants (negligible);
* ``return_best``: the smallest-L2 iterate that reached the success threshold is returned (the final iterate when
  none did);
* refinement (``refine_steps``): a forward-only bisection on the scale a in [0, 1] of each successful perturbation,
  keeping the smallest ``a * delta`` that still reaches the threshold (the DPM's steps grow with the IoU and cross
  the target's boundary);
* stall stop (``stall_window``, ``stall_gain``): an image whose best IoU has not risen by ``stall_gain`` over the
  last ``stall_window`` iterations stops (``extras["stalled"]``), so that targets out of reach (e.g. a disc drawn
  where the image has none) do not run to ``max_iter``.

``extras["iterations_to_target"]``: the steps taken before each image first reached the threshold (-1: never);
``iterations`` counts every step including the shrink phase.

Step multiplier units: tau/beta multiply the raw logit gradient, so they depend on the model,
logit scale, resolution and number of active pixels and are not transferable across models:
the paper's values (1e-7 / 1e-6 over 2501 iterations) are tuned to its own model and barely move
others. Two scale-free alternatives, both keeping the DPM's relative growth (up to
(beta + tau) / tau) and per image:

* ``step="normalized"`` (project default): ``step_size * (mu_i / tau) * g_i / ||g_i||_2``: every
  step has length ``step_size`` times the DPM's factor 1 + (beta / tau) IoU, however few pixels are
  still wrong. The last few wrong pixels (the boundary of the target) keep getting full-length
  steps, so the target is reached in fewer iterations than with ``relative``; the overshoot this
  causes is what the shrink phase removes.
* ``step="relative"``: ``step_size * (mu_i / tau) * g_i / ||g_i^(0)||_2``, i.e. the paper's
  raw-gradient schedule with tau calibrated per image so that the first step has L2 length
  ``step_size``. Later steps keep the raw gradient's magnitude, which shrinks as the adaptive
  mask empties (fewer wrong pixels contribute to Eq. 2): less overshoot, but a slow approach to
  the last pixels of the target.

Defaults (those of ``attack=asma``, listed in :func:`asma`): the ``normalized`` step with a per-image
early stop and the shrink phase. The paper's raw schedule (``step="raw"``, ``max_iter=2501``, ``iou_threshold=None``,
``paper_exact=True``) is ``attack=asma_paper`` (conf/attack/asma_paper.yaml) or those keyword
arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_seg.attacks._common import (
    ActiveSet,
    check_inputs,
    check_output,
    finish,
    per_image,
    project_box,
    variant,
)
from lightning_seg.attacks.guard import AttackContext, attack_guard
from lightning_seg.attacks.measure import class_map, l2_norm, linf_norm, per_image_iou, pixel_accuracy
from lightning_seg.attacks.result import AttackResult


def _asma_loss(
    z: Tensor, targets: Tensor, mask: Tensor, delta: Tensor, adaptive_mask: bool, l2_weight: float
) -> tuple[Tensor, Tensor]:
    """Per-image J (Eq. 2 minus the squared L2 term) and the prediction."""
    pred = class_map(z)
    active = mask & (pred != targets) if adaptive_mask else mask
    zt = z.gather(1, targets.unsqueeze(1)).squeeze(1)
    logit_term = (zt * active).flatten(1).sum(1)
    return logit_term - l2_weight * delta.flatten(1).pow(2).sum(1), pred


def _step(g: Tensor, mu: Tensor, step: str, step_size: float, tau: float, ref_norm: Tensor | None) -> Tensor:
    if step == "raw":
        return per_image(mu) * g
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-12) if step == "normalized" else ref_norm
    return per_image(step_size * (mu / tau) / norm) * g


def _shrink_radius(l2: Tensor, radius: Tensor, on_target: Tensor, reached: Tensor, newly: Tensor,
                   shrink: float) -> Tensor:
    """The shrink phase's L2 radius per image, DDN's rule (Rony et al., CVPR 2019, Algorithm 1): it starts at the
    perturbation's L2 at the first success, then shrinks by the factor ``1 - shrink`` while the image is on target and
    grows by ``1 + shrink`` when it falls off, so that it settles near the smallest successful norm."""
    r = torch.where(on_target, radius * (1 - shrink), radius * (1 + shrink))
    return torch.where(reached, torch.where(newly, l2, r), radius)


def _on_sphere(d: Tensor, g: Tensor, radius: Tensor, step: float) -> Tensor:
    """One step of L2 length ``step * radius`` along the ASMA gradient (it repairs the pixels that fell off the target),
    then back onto the sphere of that radius: the norm is set by the radius, the direction by the gradient."""
    d = d + per_image(step * radius / g.flatten(1).norm(dim=1).clamp_min(1e-12)) * g
    return d * per_image(radius / d.flatten(1).norm(dim=1).clamp_min(1e-12))


def _ref_norm(g: Tensor, step: str) -> Tensor | None:
    """Per-image gradient norm at the first iterate: the scale of ``step="relative"``."""
    return g.flatten(1).norm(dim=1).clamp_min(1e-12) if step == "relative" else None


@dataclass(frozen=True)
class AsmaSettings:
    """The hyper-parameters of one ASMA run, as the inner loops need them (see :func:`asma`)."""

    adaptive_mask: bool
    dynamic_multiplier: bool
    tau: float
    beta: float
    max_iter: int
    iou_threshold: float | None
    threshold: float  # success criterion IoU >= threshold (iou_threshold, or success_threshold without early stop)
    step: str
    step_size: float
    l2_weight: float
    return_best: bool
    check_every: int
    refine_steps: int
    shrink_steps: int
    shrink: float
    shrink_step: float
    stall_window: int | None
    stall_gain: float

    def multiplier(self, iou: Tensor, k: int) -> Tensor:
        """mu_k per image: the DPM's beta * IoU + tau from the second iterate on, tau otherwise."""
        if self.dynamic_multiplier and k > 0:
            return self.beta * iou + self.tau
        return torch.full_like(iou, self.tau)


def asma(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    mask: Tensor | None = None,
    perturbation_mask: Tensor | None = None,
    adaptive_mask: bool = True,
    dynamic_multiplier: bool = True,
    tau: float = 1e-7,
    beta: float = 1e-6,
    max_iter: int = 500,
    iou_threshold: float | None = 0.95,
    success_threshold: float = 0.95,
    step: Literal["raw", "relative", "normalized"] = "normalized",
    step_size: float = 0.02,
    l2_weight: float = 1.0,
    paper_exact: bool = False,
    return_best: bool = True,
    check_every: int = 2,
    shrink_steps: int = 10,
    shrink: float = 0.1,
    shrink_step: float = 0.05,
    refine_steps: int = 8,
    stall_window: int | None = 100,
    stall_gain: float = 0.01,
) -> AttackResult:
    """Targeted ASMA / ASM / SSM attack (Ozbulak et al. 2019, Eq. 1-3; see module docstring).

    The defaults are the project's (``attack=asma``): the scale-free ``normalized`` step, whose first step has L2
    length ``step_size`` in [0,1] units, with a per-image early stop at IoU 0.95, because the paper's tau/beta are
    raw-gradient units specific to its model. The paper's schedule: ``step="raw", max_iter=2501,
    iou_threshold=None, paper_exact=True`` (``attack=asma_paper``).

    Args:
        model: maps images [B,C,H,W] in [0,1] to logits [B,K,h,w] (1-channel heads -> [0, z]).
            h,w may differ from H,W (valid convolutions); ``targets``/``mask`` must be [B,h,w].
        images: [B,C,H,W] float in [0,1] (not modified).
        targets: [B,h,w] long target masks.
        mask: [B,h,w] bool pixels that count (None = all).
        perturbation_mask: [B|1, 1|C, H, W] where the input may change (1) or not (0).
        adaptive_mask: ASM switch (factor 1[P != Y] in Eq. 2).
        dynamic_multiplier: DPM switch (mu = beta * IoU + tau, per image).
        tau, beta: multiplier constants (the paper's 1e-7, 1e-6; raw-gradient units for ``step="raw"``, only
            their ratio matters for the scale-free steps).
        max_iter: iteration budget (paper 2501).
        iou_threshold: per-image early stop when IoU(pred, target) >= threshold; None = run all.
        success_threshold: success criterion IoU >= this when ``iou_threshold`` is None.
        step: "raw" (the paper's), "relative" or "normalized" (scale-free, see module docstring).
        step_size: L2 length of the first step ("relative") or of every step at IoU 0 ("normalized").
        l2_weight: weight of the squared-L2 term (1 in the paper).
        paper_exact: reproduce the original two-forward schedule (needs ``iou_threshold=None``).
        return_best: return, per image, the smallest-L2 iterate that reached the success threshold (the final
            iterate when none did).
        check_every: iterations between active-batch shrinks (one host sync each; finished images are frozen
            in between and drop out of the forward at the next check).
        shrink_steps: after an image first reaches ``iou_threshold``, this many more iterations on an L2 sphere
            whose radius shrinks while the image stays on target (DDN's rule, see the module docstring; 0 = stop at
            the first success); the smallest successful iterate is returned.
        shrink: the radius factor per shrink iteration: ``1 - shrink`` on target, ``1 + shrink`` off it.
        shrink_step: the L2 length of each shrink iteration's gradient step, as a fraction of the radius.
        refine_steps: forward-only bisection steps on the scale a in [0, 1] of each successful perturbation
            (the smallest a whose x0 + a * delta still reaches the success threshold; 0 = off).
        stall_window: stop an image whose best IoU has not risen by ``stall_gain`` over the last
            ``max(stall_window, j)`` iterations, j the iteration of its last gain (None = never; needs early
            stopping, ``iou_threshold`` not None).
        stall_gain: the IoU gain that counts as progress for ``stall_window``.

    Returns:
        AttackResult (targeted=True; iou/pixel_acc vs ``targets``; success = IoU >= threshold).
    """
    if step not in ("raw", "normalized", "relative"):
        raise ValueError(f"step must be 'raw', 'normalized' or 'relative', got {step!r}")
    if max_iter < 0 or check_every < 1 or refine_steps < 0 or shrink_steps < 0 or not 0 <= shrink < 1 or shrink_step < 0:
        raise ValueError("max_iter, refine_steps, shrink_steps and shrink_step must be >= 0, check_every >= 1, "
                         "0 <= shrink < 1")
    if stall_window is not None and stall_window < 1:
        raise ValueError("stall_window must be None or >= 1")
    if paper_exact and iou_threshold is not None:
        raise ValueError("paper_exact=True runs a fixed number of iterations: set iou_threshold=None")
    if paper_exact:  # the reference returns its last iterate
        return_best, refine_steps, shrink_steps = False, 0, 0
    x0, tgt, cnt, pm = check_inputs(images, targets, mask, perturbation_mask)
    s = AsmaSettings(adaptive_mask=adaptive_mask, dynamic_multiplier=dynamic_multiplier, tau=tau, beta=beta,
                     max_iter=max_iter, iou_threshold=iou_threshold,
                     threshold=success_threshold if iou_threshold is None else iou_threshold, step=step,
                     step_size=step_size, l2_weight=l2_weight, return_best=return_best, check_every=check_every,
                     refine_steps=refine_steps, shrink_steps=shrink_steps, shrink=shrink, shrink_step=shrink_step,
                     stall_window=stall_window if iou_threshold is not None else None,
                     stall_gain=stall_gain)
    extras: dict = {
        "adaptive_mask": adaptive_mask,
        "dynamic_multiplier": dynamic_multiplier,
        "paper_exact": paper_exact,
        "step": step,
    }
    with attack_guard(model) as ctx:
        if paper_exact:
            delta, iters, stats = _paper_exact(ctx, x0, tgt, cnt, pm, s)
            extras["paper_stats"] = stats
        else:
            delta, iters, stalled, first_hit = _efficient(ctx, x0, tgt, cnt, pm, s)
            extras["stalled"] = stalled
            extras["iterations_to_target"] = first_hit
            if s.refine_steps:
                delta, scale = _refine(ctx, x0, delta, tgt, cnt, s)
                extras["refine_scale"] = scale
        return finish(ctx, x0, delta, tgt, cnt, targeted=True, iterations=iters, criterion="iou", threshold=s.threshold,
                      extras=extras)


def _efficient(ctx: AttackContext, x0: Tensor, tgt: Tensor, cnt: Tensor, pm: Tensor | None,
               s: AsmaSettings) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One forward per iteration, per-image early stop at the threshold and on a stall. Returns the perturbation
    (the smallest successful iterate with ``return_best`` or a shrink phase), the iterations per image, the stalled
    flags and the steps before the first success (-1: never)."""
    B = x0.shape[0]
    delta = torch.zeros_like(x0)
    early = s.iou_threshold is not None
    shrinking = early and s.shrink_steps > 0
    keep_best = s.return_best or shrinking
    active = ActiveSet(B, x0.device, s.check_every if early else None)
    best = delta.clone() if keep_best else None
    best_l2 = torch.full((B,), float("inf"), device=x0.device) if keep_best else None
    hit = torch.zeros(B, dtype=torch.bool, device=x0.device)  # reached the threshold at least once
    first_hit = torch.full((B,), -1, dtype=torch.long, device=x0.device)  # steps before the first success (-1: never)
    after = torch.zeros(B, dtype=torch.long, device=x0.device)  # shrink iterations done
    radius = torch.zeros(B, device=x0.device)  # shrink phase: the L2 radius of each image's perturbation
    stalled = torch.zeros(B, dtype=torch.bool, device=x0.device)
    watch = s.stall_window is not None
    top_iou = torch.full((B,), -1.0, device=x0.device)  # best IoU so far (stall watch)
    last_gain = torch.zeros(B, dtype=torch.long, device=x0.device)  # iteration of the last gain >= stall_gain
    ref = None
    for k in range(s.max_iter):
        if not active.running(k):
            break
        xa, ta, ca = active.take(x0), active.take(tgt), active.take(cnt)
        d = active.take(delta).detach().clone().requires_grad_(True)
        z = ctx.forward(xa + d)
        if k == 0:
            check_output(z, ta)
        loss, pred = _asma_loss(z, ta, ca, d, s.adaptive_mask, s.l2_weight)
        g = ctx.grad(loss.sum(), d)  # images are independent: the sum keeps per-image gradients
        iou = per_image_iou(pred, ta, ca, int(z.shape[1]))
        d = d.detach()
        if keep_best:
            l2 = l2_norm(d)
            ok = (iou >= s.threshold) & (l2 < active.take(best_l2))
            best = active.put(best, torch.where(per_image(ok), d, active.take(best)))
            best_l2 = active.put(best_l2, torch.where(ok, l2, active.take(best_l2)))
        if k == 0:
            ref = _ref_norm(g, s.step)
        upd = _step(g, s.multiplier(iou, k), s.step, s.step_size, s.tau, None if ref is None else active.take(ref))
        finished = iou >= s.iou_threshold if early else None
        if shrinking:  # reached once: shrink_steps iterations on a shrinking L2 sphere, the smallest success kept
            reached = active.take(hit) | finished
            hit = active.put(hit, reached)
            first_hit = active.put(first_hit, torch.where(finished & (active.take(first_hit) < 0),
                                                          torch.full_like(iou, k, dtype=torch.long),
                                                          active.take(first_hit)))
            r = _shrink_radius(l2, active.take(radius), iou >= s.threshold, reached,  # l2: keep_best is on
                               active.take(first_hit) == k, s.shrink)
            radius = active.put(radius, r)
            gm = g if pm is None else g * active.take(pm)  # the sphere lives where the input may change
            upd = torch.where(per_image(reached), _on_sphere(d, gm, r, s.shrink_step) - d, upd)
            count = active.take(after) + reached.long()
            after = active.put(after, count)
            finished = (count > s.shrink_steps) | (active.take(first_hit) == 0)  # delta = 0 already on target
        elif early:
            first_hit = active.put(first_hit, torch.where(finished & (active.take(first_hit) < 0),
                                                          torch.full_like(iou, k, dtype=torch.long),
                                                          active.take(first_hit)))
            reached = finished
        if watch:
            gain = iou >= active.take(top_iou) + s.stall_gain
            top_iou = active.put(top_iou, torch.maximum(active.take(top_iou), iou))
            last = active.put(last_gain, torch.where(gain, torch.full_like(iou, k, dtype=torch.long),
                                                     active.take(last_gain)))
            last_gain = last
            since = active.take(last_gain)  # a plateau counts as a stall once it outlasts both the window and
            stall = (k - since >= torch.clamp(since, min=s.stall_window)) & ~reached & ~active.take(active.done)
            # the progress before it (slow schedules, e.g. the raw step, flip pixels at growing intervals)
            stalled = active.put(stalled, active.take(stalled) | stall)
            finished = finished | stall
        go = active.step(finished)
        if go is not None:
            upd = upd * per_image(go.to(upd.dtype))
        delta = active.put(delta, project_box(xa, d + upd, None if pm is None else active.take(pm)))
    if keep_best:
        # the final iterate may itself be the best one; it is evaluated in `finish` only, so
        # keep it unless an earlier iterate is known to be smaller and successful
        delta = torch.where(per_image(torch.isfinite(best_l2)), best, delta)
    return delta, active.iterations, stalled, first_hit


@torch.no_grad()
def _refine(ctx: AttackContext, x0: Tensor, delta: Tensor, tgt: Tensor, cnt: Tensor,
            s: AsmaSettings) -> tuple[Tensor, Tensor]:
    """Shrink each successful perturbation along its own direction: bisection on a in [0, 1] for the smallest
    ``x0 + a * delta`` whose IoU still reaches the threshold (``refine_steps`` forwards, no backward). The ASMA
    steps grow with the IoU (DPM) and overshoot the target's boundary; the paper's L2 term pulls them back only by
    2 mu ||delta|| per step. ``a * delta`` stays in the box and the perturbation mask (both convex, contain 0).
    Images that did not succeed at ``a = 1`` keep their delta (scale 1). Returns the new delta and the scale."""
    B = x0.shape[0]
    z = ctx.forward((x0 + delta).clamp(0.0, 1.0))
    ok0 = per_image_iou(class_map(z), tgt, cnt, int(z.shape[1])) >= s.threshold
    idx = ok0.nonzero().squeeze(1)  # one host sync for the whole refinement
    scale = torch.ones(B, device=x0.device)
    if idx.numel() == 0:
        return delta, scale
    xs, ds, ts, cs = x0[idx], delta[idx], tgt[idx], cnt[idx]
    lo = torch.zeros(idx.numel(), device=x0.device)
    hi = torch.ones_like(lo)
    for _ in range(s.refine_steps):
        mid = (lo + hi) / 2
        z = ctx.forward((xs + per_image(mid) * ds).clamp(0.0, 1.0))
        good = per_image_iou(class_map(z), ts, cs, int(z.shape[1])) >= s.threshold
        hi = torch.where(good, mid, hi)
        lo = torch.where(good, lo, mid)
    delta = delta.clone()
    delta[idx] = per_image(hi) * ds
    scale[idx] = hi
    return delta, scale


def _paper_exact(ctx: AttackContext, x0: Tensor, tgt: Tensor, cnt: Tensor, pm: Tensor | None,
                 s: AsmaSettings) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    B = x0.shape[0]
    delta = torch.zeros_like(x0)
    mu = torch.full((B,), s.tau, device=x0.device)
    stats: dict[str, Tensor] = {}
    for k in range(s.max_iter):
        d = delta.clone().requires_grad_(True)
        z = ctx.forward(x0 + d)
        if k == 0:
            check_output(z, tgt)
        loss, _ = _asma_loss(z, tgt, cnt, d, s.adaptive_mask, s.l2_weight)
        g = ctx.grad(loss.sum(), d)
        if k == 0:
            ref = _ref_norm(g, s.step)
        upd = _step(g, mu, s.step, s.step_size, s.tau, ref)
        if pm is not None:
            upd = upd * pm
        d_un = d.detach() + upd  # updated, not yet clamped
        with torch.no_grad():  # the reference's second forward (it also built a graph there)
            pred2 = class_map(ctx.forward(x0 + d_un))
        iou2 = per_image_iou(pred2, tgt, cnt, int(z.shape[1]))
        if s.dynamic_multiplier:
            mu = s.beta * iou2 + s.tau
        stats = {
            "iou": iou2, "pixel_acc": pixel_accuracy(pred2, tgt, cnt), "l2": l2_norm(d_un), "linf": linf_norm(d_un)
        }
        delta = (x0 + d_un).clamp(0.0, 1.0) - x0
    iters = torch.full((B,), s.max_iter, dtype=torch.long, device=x0.device)
    return delta, iters, stats


# the ablations keep a fixed multiplier, whose steps shrink as pixels flip: they progress at growing intervals and run
# without the stall stop (their comparison with ASMA is at the same iteration budget)
ssm = variant(asma, "ssm", "SSM: ASMA without adaptive mask and with a fixed multiplier (paper ablation).",
              adaptive_mask=False, dynamic_multiplier=False, stall_window=None)
asm = variant(asma, "asm", "ASM: adaptive mask with a fixed multiplier (paper ablation).",
              adaptive_mask=True, dynamic_multiplier=False, stall_window=None)


__all__ = ["AsmaSettings", "asm", "asma", "ssm"]
