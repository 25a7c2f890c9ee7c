"""Universal adversarial perturbation for segmentation (Metzen, Kumar, Brox, Fischer, ICCV 2017).

Targets: *static* (one fixed target mask for every input) or *dynamic* (hide class o: its
pixels in the reference map are relabelled to the nearest non-o label; "nearest" in the 8-
neighbour/chessboard sense, computed by iterative 3x3 propagation). The reference map is the
model's clean prediction (Metzen) or the given labels (``reference="labels"``).

Loss (targeted CE, per image normalised by the counted pixels |I|):
``J^omega = 1/|I| [ omega sum_{I_o} CE + (1 - omega) sum_{I_bg} CE ]`` where I_o are the pixels whose
reference label is o (dynamic mode); static mode weights every pixel equally (1/2 each, i.e.
omega plays no role). A pixel's loss is switched off once the target class is reached with
probability > ``tau_conf``.

Universal update (L-infinity): ``xi <- clip_eps(xi - alpha sign(sum_k grad_xi J(x_k + xi)))``, one
step per mini-batch (the gradient summed over the batch's images), ``epochs`` passes over
``batches``. The learned ``xi`` ([1,C,H,W]) is then added to unseen images
(:meth:`UniversalPerturbation.apply`) and evaluated with :func:`universal_attack`.

No best iterate and no restarts: the perturbation is one tensor shared by every image, fitted on training batches,
so there is no per-image iterate to choose (a per-image choice would no longer be universal), and the evaluation
applies it once. Both functions have no ``restarts`` parameter, so ``attack.up.restarts=...`` fails as an unknown
parameter instead of being ignored; fit again with another ``seed`` and ``random_start=true`` to compare starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.attacks._common import check_inputs, check_output, finish
from lightning_seg.attacks.guard import attack_guard
from lightning_seg.attacks.measure import class_map
from lightning_seg.attacks.result import AttackResult


@dataclass
class UniversalPerturbation:
    """A learned universal perturbation ``delta`` [1,C,H,W] with its budget and target spec."""

    delta: Tensor
    eps: float
    mode: str
    hide_class: int
    target: Tensor | None
    reference: str
    steps: int

    def apply(self, images: Tensor) -> Tensor:
        """``clamp(images + delta, 0, 1)`` for images [B,C,H,W] of the training size."""
        if tuple(images.shape[1:]) != tuple(self.delta.shape[1:]):
            raise ValueError(
                f"images {tuple(images.shape[1:])} do not match the perturbation {tuple(self.delta.shape[1:])}"
            )
        return (images + self.delta.to(images)).clamp(0.0, 1.0)


def hide_class_target(ref: Tensor, hide_class: int, num_classes: int) -> Tensor:
    """Relabel pixels of ``hide_class`` in ``ref`` [B,h,w] with the nearest other label
    (chessboard distance; ties -> lowest class index). All-o images become class 0 (or 1 if o=0)."""
    B, h, w = ref.shape
    onehot = F.one_hot(ref, num_classes).permute(0, 3, 1, 2).to(torch.float32)
    onehot[:, hide_class] = 0
    cand = onehot
    hidden = ref == hide_class
    for _ in range(max(h, w)):  # outside any attack loop: the sync per propagation step is fine
        if not bool((hidden & (cand.sum(1) == 0)).any()):
            break
        cand = torch.maximum(cand, F.max_pool2d(cand, 3, stride=1, padding=1))
    fill = cand.argmax(1)
    fallback = torch.full_like(ref, 0 if hide_class != 0 else 1)
    fill = torch.where(cand.sum(1) > 0, fill, fallback)
    return torch.where(hidden, fill, ref)


def _make_target(
    z: Tensor, labels: Tensor, mode: str, target: Tensor | None, hide_class: int, reference: str
) -> tuple[Tensor, Tensor]:
    """(target [B,h,w], I_o indicator [B,h,w])."""
    ref = class_map(z) if reference == "prediction" else labels
    if mode == "static":
        assert target is not None
        t = target.to(labels.device).expand_as(labels)
        return t, torch.zeros_like(labels, dtype=torch.bool)
    return hide_class_target(ref, hide_class, int(z.shape[1])), ref == hide_class


def _batches(batches: Iterable[Any]) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
    for b in batches:
        if isinstance(b, dict):
            yield b["image"], b["mask"], b.get("valid")
        elif len(b) == 2:
            yield b[0], b[1], None
        else:
            yield b[0], b[1], b[2]


def _check_spec(mode: str, target: Tensor | None, reference: str, omega: float) -> None:
    if mode not in ("static", "dynamic"):
        raise ValueError(f"mode must be 'static' or 'dynamic', got {mode!r}")
    if mode == "static" and target is None:
        raise ValueError("mode='static' needs target=<long mask [h,w] or [1,h,w]>")
    if reference not in ("prediction", "labels"):
        raise ValueError(f"reference must be 'prediction' or 'labels', got {reference!r}")
    if not 0.0 <= omega <= 1.0:
        raise ValueError(f"omega must be in [0,1], got {omega}")


def universal_perturbation(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    eps: float = 10 / 255,
    alpha: float = 1 / 255,
    epochs: int = 10,
    mode: Literal["static", "dynamic"] = "dynamic",
    target: Tensor | None = None,
    hide_class: int = 1,
    omega: float = 0.7,
    tau_conf: float = 0.75,
    reference: Literal["prediction", "labels"] = "prediction",
    random_start: bool = False,
    generator: torch.Generator | None = None,
) -> UniversalPerturbation:
    """Learn one Linf-bounded perturbation over ``batches`` (re-iterable: list or DataLoader)
    of ``(images, labels[, mask])`` tuples or ``{"image", "mask"}`` dicts.

    eps/alpha in [0,1] units (Metzen: eps = 10 on 0-255). ``target`` (static) is a long mask
    [h,w] or [1,h,w]. Returns a :class:`UniversalPerturbation`.
    """
    _check_spec(mode, target, reference, omega)
    if target is not None and target.dim() == 2:
        target = target.unsqueeze(0)
    delta: Tensor | None = None
    steps = 0
    with attack_guard(model) as ctx:
        for _ in range(epochs):
            seen = False
            for images, labels, mask in _batches(batches):
                seen = True
                x0, lab, cnt, _ = check_inputs(images, labels, mask, None)
                if delta is None:
                    delta = torch.zeros_like(x0[:1])
                    if random_start:
                        gdev = generator.device if generator is not None else x0.device
                        u = torch.rand(delta.shape, generator=generator, device=gdev).to(x0)
                        delta = (2 * u - 1) * eps
                with torch.no_grad():
                    z0 = ctx.forward(x0)
                check_output(z0, lab)
                tgt, is_o = _make_target(z0, lab, mode, target, hide_class, reference)
                if mode == "dynamic":
                    weight = torch.where(is_o, omega, 1 - omega)
                else:
                    weight = torch.full_like(lab, 0.5, dtype=x0.dtype)
                d = delta.clone().requires_grad_(True)
                z = ctx.forward((x0 + d).clamp(0.0, 1.0))
                ce = F.cross_entropy(z, tgt, reduction="none")
                reached = z.detach().softmax(1).gather(1, tgt.unsqueeze(1)).squeeze(1) > tau_conf
                on = cnt & ~reached
                loss = (ce * weight * on).flatten(1).sum(1) / cnt.flatten(1).sum(1).clamp_min(1)
                g = ctx.grad(loss.sum(), d)
                delta = (delta - alpha * g.sign()).clamp(-eps, eps)
                steps += 1
            if not seen:
                raise ValueError("batches yielded nothing (pass a re-iterable such as a list or a DataLoader)")
    assert delta is not None
    return UniversalPerturbation(delta=delta.detach(), eps=eps, mode=mode, hide_class=hide_class,
                                 target=target, reference=reference, steps=steps)


def universal_attack(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    perturbation: UniversalPerturbation,
    mask: Tensor | None = None,
    adv_threshold: float = 0.99,
) -> AttackResult:
    """Evaluate a learned universal perturbation on (unseen) images as a targeted attack.

    The reference labels are the perturbation's target (static) or the hide-class target built
    from the clean prediction / ``labels`` (dynamic); success = APSR >= ``adv_threshold``.
    ``extras["clean_pred"]`` holds the clean prediction.
    """
    x0, lab, cnt, _ = check_inputs(images, labels, mask, None)
    with attack_guard(model) as ctx:
        with torch.no_grad():
            z0 = ctx.forward(x0)
        check_output(z0, lab)
        tgt, _ = _make_target(z0, lab, perturbation.mode, perturbation.target, perturbation.hide_class,
                              perturbation.reference)
        delta = perturbation.apply(x0) - x0
        iters = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
        return finish(ctx, x0, delta, tgt.contiguous(), cnt, targeted=True, iterations=iters, criterion="apsr",
                      threshold=adv_threshold, extras={"clean_pred": z0.argmax(1), "eps": perturbation.eps})


__all__ = ["UniversalPerturbation", "hide_class_target", "universal_attack", "universal_perturbation"]
