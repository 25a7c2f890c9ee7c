"""Chen-style adversarial synthesis: deformation + bias field + noise lowering Dice by a chosen amount.

Liang Chen et al., "Intelligent image synthesis to attack a segmentation CNN using
adversarial learning", SASHIMI 2019 (arXiv 1909.11167): adversarial examples made of
anatomical variation (deformation) and appearance change that lower Dice by a
pre-specified amount without a target mask. The paper's generator is not public; this is
our own design on top of AdvChain-style transforms (:mod:`lightning_seg.attacks.deformations`):

1. Direction: ``steps`` normalised-gradient-ascent steps on ``1 - softDice(f(T(x)), y o phi)``
   over the transform parameters (velocity grid, log-bias control points, noise); each
   component moves by ``step_size`` times its budget radius along its per-image unit
   gradient and is projected back into its budget. The iterate with the largest soft loss
   is kept per image.
2. Magnitude: per image, bisect ``alpha`` in [0,1] (all components scaled together) until
   the hard Dice against the equally warped label lies in
   ``[dice_clean - dice_drop - tol, dice_clean - dice_drop + tol]``. ``reached`` is False if
   no evaluated alpha lands in the window (e.g. alpha = 1 does not lower Dice enough); the
   result then holds the alpha closest to the target.

Scoring is always against the warped label ``y o phi``: the anatomy moved with the image, so a
deformation alone does not lower the Dice of a perfect, equivariant model.

Dice (hard, for the target and the report): per image, mean over the foreground classes
(1..K-1; for a 1-channel sigmoid head the single class z > 0) of 2|P n G| / (|P| + |G|),
with Dice = 1 when a class is absent from both, over the pixels that count (``mask``).
Soft Dice (for gradients): the same with softmax / sigmoid probabilities, smoothed by 1.

Execution rules, as for every attack: the model runs under :func:`~lightning_seg.attacks.guard.attack_guard`
(every module in eval mode, parameters frozen, both restored afterwards; forwards / backwards
counted); gradients by ``torch.autograd.grad`` w.r.t. the transform parameters only; every
quantity per image; no host sync inside the loops (fixed numbers of steps); images clamped to [0,1].

Defaults: the optimisation's in :func:`synthesis_attack`, the budgets' in
:class:`~lightning_seg.attacks.deformations.TransformConfig`; :func:`synthesis` (``attack=synthesis``)
takes both from there.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.attacks.deformations import (
    SmoothTransform,
    TransformConfig,
    identity_transform,
    sample_random_transform,
)
from lightning_seg.attacks.guard import attack_guard
from lightning_seg.attacks.measure import class_map, per_image_iou, pixel_accuracy
from lightning_seg.attacks.result import AttackResult

__all__ = ["SynthesisResult", "synthesis", "synthesis_attack", "synthesis_records", "synthesis_summary",
           "TRANSFORM_KEYS", "random_synthesis", "hard_dice", "soft_dice"]


@dataclass
class SynthesisResult:
    """Output of :func:`synthesis_attack` (all per-image tensors have leading dim B).

    adv_images [B,C,H,W] in [0,1]; adv_labels [B,H,W] warped labels; adv_mask [B,H,W] warped
    counted-pixel mask or None; pred [B,H,W] prediction on adv_images; dice_clean /
    dice_adv / target_dice / alpha [B]; reached [B] bool; realism metrics [B]: max_bias
    (max |b-1|), max_disp_px, min_jacobian (> 0: no folding), noise_l2, ssim (vs the clean
    image); forwards / backwards: batched passes (each over all B images, so also the per
    image count); iterations: (gradient steps, bisection steps); transform: the final
    transform (parameters with alpha applied) for re-use on other tensors.
    """

    adv_images: Tensor
    adv_labels: Tensor
    adv_mask: Tensor | None
    pred: Tensor
    dice_clean: Tensor
    dice_adv: Tensor
    target_dice: Tensor
    alpha: Tensor
    reached: Tensor
    max_bias: Tensor
    max_disp_px: Tensor
    min_jacobian: Tensor
    noise_l2: Tensor
    ssim: Tensor
    forwards: int
    backwards: int
    iterations: tuple[int, int]
    transform: SmoothTransform
    num_classes: int = 2  # K of the model's logits (2 for a 1-channel sigmoid head)


Structures = "tuple[tuple[int, ...], ...] | None"


def _fg_probs_and_onehot(logits: Tensor, labels: Tensor, hard: bool,
                         structures: Structures = None) -> tuple[Tensor, Tensor]:
    """Foreground prediction maps [B,F,H,W] (hard or soft) and label maps [B,F,H,W]: one per foreground class,
    or one per structure (a union of classes, e.g. glaucoma disc = {rim, cup}) when ``structures`` is given."""
    k = logits.shape[1]
    if k == 1:  # binary sigmoid head: class 1 iff z > 0
        p = (logits > 0).to(logits.dtype) if hard else torch.sigmoid(logits)
        return p, (labels == 1).unsqueeze(1).to(logits.dtype)
    if hard:
        p = F.one_hot(class_map(logits), k).permute(0, 3, 1, 2).to(logits.dtype)
    else:
        p = torch.softmax(logits, dim=1)
    y = F.one_hot(labels.clamp(0, k - 1), k).permute(0, 3, 1, 2).to(logits.dtype)
    if structures:
        return (torch.stack([p[:, list(ids)].sum(1) for ids in structures], 1),
                torch.stack([y[:, list(ids)].sum(1) for ids in structures], 1))
    return p[:, 1:], y[:, 1:]


def _overlap(p: Tensor, y: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-image, per-structure intersection and size sum [B,S] of predictions ``p`` and labels ``y`` over counted
    pixels: the two terms of every Dice here."""
    if mask is not None:
        m = mask.unsqueeze(1).to(p.dtype)
        p, y = p * m, y * m
    return (p * y).flatten(2).sum(-1), p.flatten(2).sum(-1) + y.flatten(2).sum(-1)


def hard_dice(logits: Tensor, labels: Tensor, mask: Tensor | None = None, structures: Structures = None) -> Tensor:
    """Per-image foreground Dice [B] of argmax (or z > 0) predictions; 1 for a class absent from both."""
    inter, denom = _overlap(*_fg_probs_and_onehot(logits, labels, hard=True, structures=structures), mask)
    d = torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(denom))
    return d.mean(1)


def soft_dice(logits: Tensor, labels: Tensor, mask: Tensor | None = None, smooth: float = 1.0,
              structures: Structures = None) -> Tensor:
    """Per-image soft foreground Dice [B] (softmax / sigmoid probabilities, smoothing ``smooth``)."""
    inter, denom = _overlap(*_fg_probs_and_onehot(logits, labels, hard=False, structures=structures), mask)
    return ((2 * inter + smooth) / (denom + smooth)).mean(1)


def _bcast(cond: Tensor, t: Tensor) -> Tensor:
    return cond.view(-1, *([1] * (t.dim() - 1)))


def _unit(g: Tensor) -> Tensor:
    return g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))


def synthesis_attack(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    dice_drop: float = 0.2,
    tol: float = 0.02,
    steps: int = 10,
    step_size: float = 0.5,
    bisect_steps: int = 10,
    config: TransformConfig | None = None,
    init: str = "random",
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    structures: Structures = None,
) -> SynthesisResult:
    """Find a smooth deformation + bias field + noise lowering each image's Dice by ``dice_drop``.

    model: images [B,C,H,W] in [0,1] -> logits [B,K,H,W] (K = 1: sigmoid head, scored as [0, z]).
    labels: long [B,H,W] class indices; mask: optional bool [B,H,W] of pixels that count.
    dice_drop, tol: per image, aim at Dice_adv in [Dice_clean - dice_drop +- tol].
    steps: gradient-ascent steps for the direction (0 keeps the initial transform).
    step_size: each step moves every component by step_size x its budget radius (velocity:
        eps_morph; noise: its L2 radius; log-bias: half-width of the clamp box x sqrt(#points)).
    bisect_steps: bisection steps on alpha (after one evaluation at alpha = 1).
    config: transform budgets (default: ``TransformConfig()``, the project's synthesis budgets).
    init: "random" (AdvChain-style full-budget draw from ``generator``) or "zero".
    structures: Dice per union of classes (e.g. ((1, 2), (2,)) for glaucoma disc and cup, the
        project's reporting convention) instead of per foreground class; mean over them.
    Returns a :class:`SynthesisResult`; see the module docstring for the algorithm.
    """
    if images.dim() != 4 or labels.dim() != 3 or labels.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"images must be [B,C,H,W] and labels [B,H,W]; got {tuple(images.shape)} and {tuple(labels.shape)}")
    if mask is not None and mask.shape != labels.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must have the labels' shape {tuple(labels.shape)}")
    if not 0.0 <= dice_drop <= 1.0 or tol < 0:
        raise ValueError(f"dice_drop={dice_drop} must be in [0,1] and tol={tol} >= 0")
    if steps < 0 or bisect_steps < 0 or step_size <= 0:
        raise ValueError(f"steps={steps} and bisect_steps={bisect_steps} must be >= 0 and step_size={step_size} > 0")
    if init not in ("random", "zero"):
        raise ValueError(f"init={init!r}; use 'random' or 'zero'")
    cfg = config or TransformConfig()
    b, c, h, w = images.shape
    x = images.detach().clone()
    y = labels.detach().clone()
    m = None if mask is None else mask.detach().clone()

    with attack_guard(model) as ctx:
        with torch.no_grad():
            clean_logits = ctx.forward(x)
        if tuple(clean_logits.shape[-2:]) != (h, w):
            raise ValueError(f"synthesis needs logits at the image size {(h, w)} (a same-padding model); "
                             f"got {tuple(clean_logits.shape[-2:])}: use model.padding=same")
        k = clean_logits.shape[1]  # >= 2: the context turns a sigmoid head into [0, z]
        if mask is None:
            valid = y < k
            m = None if bool(valid.all()) else valid  # ignore labels (e.g. 255) do not count
        y = torch.where(y < k, y, torch.zeros_like(y))
        dice_clean = hard_dice(clean_logits, y, m, structures)
        target = dice_clean - dice_drop

        kw = dict(channels=c, config=cfg, device=x.device, dtype=x.dtype)
        t0 = sample_random_transform(b, (h, w), generator=generator, **kw) if init == "random" \
            else identity_transform(b, (h, w), **kw)
        params = [p.detach().clone() for p in t0.parameters()]
        names = [n for n in ("velocity", "log_bias", "noise") if getattr(t0, n) is not None]
        lo_b, hi_b = cfg.log_bias_bounds
        radius = {
            "velocity": cfg.eps_morph,
            "noise": cfg.noise_radius(c * h * w),
            "log_bias": 0.5 * (hi_b - lo_b) * (cfg.bias_grid()[0] * cfg.bias_grid()[1]) ** 0.5,
        }

        def build(ps: list[Tensor]) -> SmoothTransform:
            d = dict(zip(names, ps))
            return SmoothTransform(cfg, (h, w), d.get("velocity"), d.get("log_bias"), d.get("noise"))

        # ---- (a) direction: normalised gradient ascent on 1 - softDice, best iterate per image
        best = [p.clone() for p in params]
        best_loss = torch.full((b,), -1.0, device=x.device, dtype=x.dtype)
        for _ in range(steps):
            ps = [p.detach().requires_grad_(True) for p in params]
            t = build(ps)
            with torch.enable_grad():
                adv, yw, mw = t.apply(x, y, m, num_classes=k)
                loss = 1 - soft_dice(ctx.forward(adv), yw, mw, structures=structures)
                grads = ctx.grad(loss.sum(), ps)
            loss = loss.detach()
            better = loss > best_loss
            best = [torch.where(_bcast(better, bp), p.detach(), bp) for bp, p in zip(best, ps)]
            best_loss = torch.where(better, loss, best_loss)
            with torch.no_grad():
                params = [p.detach() + step_size * radius[n] * _unit(g) for p, g, n in zip(ps, grads, names)]
                build(params).project_()
        if steps > 0:  # the last update has not been scored yet
            with torch.no_grad():
                adv, yw, mw = build(params).apply(x, y, m, num_classes=k)
                loss = 1 - soft_dice(ctx.forward(adv), yw, mw, structures=structures)
            better = loss > best_loss
            best = [torch.where(_bcast(better, bp), p, bp) for bp, p in zip(best, params)]
        direction = build(best)

        # ---- (b) magnitude: bisect alpha per image on the hard Dice
        with torch.no_grad():
            best_alpha = torch.zeros(b, device=x.device, dtype=x.dtype)
            best_err = (dice_clean - target).abs()
            best_dice = dice_clean.clone()
            best_adv, best_y = x.clone(), y.clone()
            best_m = None if m is None else m.clone()
            best_pred = class_map(clean_logits)

            def evaluate(alpha: Tensor) -> Tensor:
                nonlocal best_alpha, best_err, best_dice, best_adv, best_y, best_m, best_pred
                adv, yw, mw = direction.scale(alpha).apply(x, y, m, num_classes=k)
                logits = ctx.forward(adv)
                d = hard_dice(logits, yw, mw, structures)
                err = (d - target).abs()
                upd = err < best_err
                best_alpha = torch.where(upd, alpha, best_alpha)
                best_err = torch.where(upd, err, best_err)
                best_dice = torch.where(upd, d, best_dice)
                best_adv = torch.where(_bcast(upd, adv), adv, best_adv)
                best_y = torch.where(_bcast(upd, yw), yw, best_y)
                if mw is not None:
                    best_m = torch.where(_bcast(upd, mw), mw, best_m)
                pred = class_map(logits)
                best_pred = torch.where(_bcast(upd, pred), pred, best_pred)
                return d

            ones = torch.ones(b, device=x.device, dtype=x.dtype)
            d1 = evaluate(ones)
            lo = torch.zeros_like(ones)
            hi = ones.clone()
            # unreachable at alpha = 1 or already inside the window: nothing to bisect
            done = (best_err <= tol) | (d1 > target + tol)
            for _ in range(bisect_steps):
                mid = torch.where(done, best_alpha, 0.5 * (lo + hi))
                d = evaluate(mid)
                too_weak = d > target + tol
                lo = torch.where(~done & too_weak, mid, lo)
                hi = torch.where(~done & ~too_weak, mid, hi)
                done = done | (best_err <= tol)

            final = direction.scale(best_alpha).detach()
            real = final.realism(x, best_adv)

    return SynthesisResult(
        adv_images=best_adv,
        adv_labels=best_y,
        adv_mask=best_m,
        pred=best_pred,
        dice_clean=dice_clean,
        dice_adv=best_dice,
        target_dice=target,
        alpha=best_alpha,
        reached=best_err <= tol,
        max_bias=real["max_bias"],
        max_disp_px=real["max_disp_px"],
        min_jacobian=real["min_jacobian"],
        noise_l2=real["noise_l2"],
        ssim=real["ssim"],
        forwards=ctx.forwards // b,  # the context counts images, the result batched passes
        backwards=ctx.backwards // b,
        iterations=(steps, bisect_steps),
        transform=final,
        num_classes=k,
    )


def random_synthesis(images: Tensor, labels: Tensor, config: TransformConfig, *, max_alpha: float = 1.0,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, SmoothTransform]:
    """Non-adversarial counterpart: a random transform at full budget (AdvChain's initialisation) scaled per image by
    alpha ~ U[0, max_alpha]; returns the transformed images, the equally warped labels and the transform."""
    b, c, h, w = images.shape
    t = sample_random_transform(b, (h, w), channels=c, config=config, generator=generator, device=images.device,
                                dtype=images.dtype)
    gdev = generator.device if generator is not None else torch.device("cpu")
    alpha = max_alpha * torch.rand(b, generator=generator, device=gdev, dtype=images.dtype).to(images.device)
    t = t.scale(alpha)
    k = max(int(labels.max()) + 1, 2)
    out, warped, _ = t.apply(images, labels, num_classes=k)
    return out, warped, t


_OPT = {n: q.default for n, q in inspect.signature(synthesis_attack).parameters.items()}  # optimisation defaults
_BUDGET = TransformConfig()  # budget defaults


def synthesis(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    mask: Tensor | None = None,
    perturbation_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    dice_drop: float = _OPT["dice_drop"],
    tol: float = _OPT["tol"],
    steps: int = _OPT["steps"],
    step_size: float = _OPT["step_size"],
    bisect_steps: int = _OPT["bisect_steps"],
    init: str = _OPT["init"],
    morph_spacing: int = _BUDGET.morph_spacing,
    eps_morph: float = _BUDGET.eps_morph,
    max_disp_px: float | None = _BUDGET.max_disp_px,
    diffeomorphic: bool = _BUDGET.diffeomorphic,
    ss_steps: int = _BUDGET.ss_steps,
    bias_cells: int = _BUDGET.bias_cells,
    eps_bias: float = _BUDGET.eps_bias,
    noise_std: float = _BUDGET.noise_std,
    label_mode: str = _BUDGET.label_mode,
    structures: Structures = None,
) -> AttackResult:
    """Registry entry point (``attack=synthesis``): :func:`synthesis_attack` returning an :class:`AttackResult`.

    Budgets: deformation from a velocity grid of one control point per ``morph_spacing`` pixels,
    ||v||_2 <= ``eps_morph`` (normalised coordinates) and max displacement <= ``max_disp_px``
    pixels, integrated by scaling and squaring when ``diffeomorphic``; bias field |b - 1| <=
    ``eps_bias`` (log-amplitude within [log(1-eps_bias), log(1+eps_bias)]) on ``bias_cells``
    cubic B-spline cells per axis; noise of per-value RMS <= ``noise_std`` ([0,1] units).

    Defaults (those of ``attack=synthesis``): the optimisation's of :func:`synthesis_attack` and the budgets of
    :class:`~lightning_seg.attacks.deformations.TransformConfig`, taken from there.

    Untargeted: ``labels`` is the ground truth; the reference of ``iou`` / ``pixel_acc`` is the
    *equally deformed* label (``extras["adv_labels"]``), and ``success`` means the hard Dice reached
    Dice_clean - dice_drop within ``tol``. ``l2`` / ``linf`` measure x_adv - x, deformation included.
    ``forwards`` / ``backwards`` count images (batched passes x B).
    """
    if perturbation_mask is not None:
        raise ValueError("synthesis deforms the whole image: perturbation_mask is not supported (pass None)")
    b, c, h, w = images.shape
    cfg = TransformConfig(morph_spacing=morph_spacing, eps_morph=eps_morph, max_disp_px=max_disp_px,
                          diffeomorphic=diffeomorphic, ss_steps=ss_steps, bias_cells=bias_cells, eps_bias=eps_bias,
                          noise_std=noise_std, label_mode=label_mode)
    r = synthesis_attack(model, images, labels, dice_drop=dice_drop, tol=tol, steps=steps, step_size=step_size,
                         bisect_steps=bisect_steps, config=cfg, init=init, mask=mask, generator=generator,
                         structures=structures)
    delta = (r.adv_images - images.detach()).flatten(1)
    extras = {
        "adv_labels": r.adv_labels, "adv_mask": r.adv_mask, "dice_clean": r.dice_clean, "dice_adv": r.dice_adv,
        "target_dice": r.target_dice, "dice_drop": dice_drop, "tol": tol, "alpha": r.alpha,
        "max_bias": r.max_bias, "max_disp_px": r.max_disp_px, "min_jacobian": r.min_jacobian,
        "noise_l2": r.noise_l2, "ssim": r.ssim, "transform": r.transform,
    }
    return AttackResult(
        adv=r.adv_images.detach(), pred=r.pred, success=r.reached,
        iou=per_image_iou(r.pred, r.adv_labels, r.adv_mask, num_classes=r.num_classes),
        pixel_acc=pixel_accuracy(r.pred, r.adv_labels, r.adv_mask),
        l2=delta.norm(dim=1).float(), linf=delta.abs().amax(dim=1).float(),
        iterations=torch.full((b,), sum(r.iterations), dtype=torch.long, device=images.device),
        forwards=r.forwards * b, backwards=r.backwards * b, targeted=False, extras=extras,
    )


# The budget parameters of `synthesis` (the TransformConfig fields it exposes), e.g. to draw random transforms at a
# synthesis config's budgets: derived, so a new budget cannot be forgotten.
TRANSFORM_KEYS = tuple(n for n in inspect.signature(synthesis).parameters
                       if n in {f.name for f in dataclasses.fields(TransformConfig)})


def synthesis_records(results: list[AttackResult]) -> tuple[Tensor, list[dict[str, float]]]:
    """For the ``attack`` report: the deformed labels of all batches (the ground truth for this method's rows)
    and per image the requested / achieved Dice drop, whether it is within ``tol``, alpha and realism."""
    cat = lambda k: torch.cat([r.extras[k] for r in results]).double().cpu()  # noqa: E731
    labels = torch.cat([r.extras["adv_labels"] for r in results])
    clean, adv, alpha = cat("dice_clean"), cat("dice_adv"), cat("alpha")
    real = {k: cat(k) for k in ("max_disp_px", "max_bias", "min_jacobian", "noise_l2", "ssim")}
    drops = [float(r.extras["dice_drop"]) for r in results for _ in range(len(r))]
    tols = [float(r.extras["tol"]) for r in results for _ in range(len(r))]
    rows = []
    for i, (req, tol) in enumerate(zip(drops, tols)):
        achieved = float(clean[i] - adv[i])
        rows.append({"synth_dice_clean": float(clean[i]), "synth_dice_adv": float(adv[i]), "synth_drop_requested": req,
                     "synth_drop_achieved": achieved, "synth_within_tol": abs(achieved - req) <= tol + 1e-9,
                     "synth_alpha": float(alpha[i]), **{f"synth_{k}": float(v[i]) for k, v in real.items()}})
    return labels, rows


def synthesis_summary(rows: list[dict[str, float]]) -> dict[str, float]:
    """Aggregate :func:`synthesis_records` rows: means (and std of the achieved drop), the share of images whose
    achieved drop is within the tolerance, and the smallest Jacobian determinant (> 0: no folding anywhere)."""
    t = {k: torch.tensor([float(r[k]) for r in rows], dtype=torch.float64) for k in rows[0]}
    out = {f"{k}_mean": float(v.mean()) for k, v in t.items() if k != "synth_within_tol"}
    out["synth_drop_achieved_std"] = float(t["synth_drop_achieved"].std(unbiased=False))
    out["synth_within_tol_share"] = float(t["synth_within_tol"].mean())
    out["synth_min_jacobian_min"] = float(t["synth_min_jacobian"].min())
    return out
