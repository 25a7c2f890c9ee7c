"""Model guard and forward/backward accounting for attacks.

An attack must neither change the model (weights, BatchNorm statistics, train/eval flags) nor be
steered by train-mode behaviour (dropout, batch statistics); this module enforces both.

``attack_guard(model)`` puts every module in eval mode (BatchNorm uses running stats and
does not update them, dropout off), sets ``requires_grad=False`` on all parameters (no
weight gradients are computed or accumulated), enables grad mode, and restores the exact
previous per-module training flags and per-parameter ``requires_grad`` on exit, even on error.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from lightning_seg.attacks.measure import binary_logits


class AttackContext:
    """Counts samples through the model; the only way attacks call the model or autograd."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.forwards = 0
        self.backwards = 0

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B,K,h,w]; a 1-channel sigmoid head is converted to ``[0, z]`` (K = 2)."""
        z = self.model(x)
        if not isinstance(z, Tensor):
            raise TypeError(
                f"model returned {type(z).__name__}; attacks need a plain logits tensor [B,K,h,w] "
                "(wrap models that return dicts/tuples)"
            )
        if z.dim() != 4:
            raise ValueError(f"model output must be logits [B,K,h,w], got shape {tuple(z.shape)}")
        self.forwards += int(x.shape[0])
        return binary_logits(z) if z.shape[1] == 1 else z

    def grad(self, loss: Tensor, wrt: Tensor | Sequence[Tensor]) -> Any:
        """Gradient of ``loss`` w.r.t. the input (or a list of per-sample attack parameters, e.g. the synthesis
        transform's) via ``torch.autograd.grad``, never ``.backward()``: no parameter ``.grad`` is touched."""
        if isinstance(wrt, Tensor):
            (g,) = torch.autograd.grad(loss, wrt)
            self.backwards += int(wrt.shape[0])
            return g
        grads = list(torch.autograd.grad(loss, list(wrt)))
        self.backwards += int(wrt[0].shape[0])
        return grads


@contextmanager
def attack_guard(model: nn.Module) -> Iterator[AttackContext]:
    """Eval mode + frozen parameters + grad enabled for the duration of an attack."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "attack called inside torch.inference_mode(): input gradients are impossible there. "
            "Run it outside inference mode (e.g. Trainer(inference_mode=False) for validation callbacks)."
        )
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield AttackContext(model)
    finally:
        for m, training in modes:
            m.training = training
        for p, req in flags:
            p.requires_grad_(req)


__all__ = ["AttackContext", "attack_guard"]
