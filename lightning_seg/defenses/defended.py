"""Model composed with an input-transformation defense, with a selectable gradient for the attacker.

Threat models: the *oblivious* attacker attacks the bare ``model``; the *adaptive white-box* attacker
attacks ``DefendedModel(model, defense, gradient="bpda")`` (or ``"surrogate"``) with the same
attack code, since the wrapper is just an ``nn.Module`` mapping [0,1] images to logits.

Gradient modes (the forward value is always ``model(defense(x))``):

- ``"exact"``: the true gradient of the transform. For rounding defenses (FR, JPEG, bit depth) it is
  zero almost everywhere, i.e. gradient masking: attacks look weak without the defense being robust.
- ``"bpda"``: Backward Pass Differentiable Approximation with the identity (Athalye, Carlini, Wagner,
  ICML 2018): forward through the real transform, backward as if ``defense(x) = x``, i.e.
  ``grad_x f(g(x)) ~= grad f(.)|_{g(x)}``.
- ``"surrogate"``: forward through the real transform, backward through the same transform with
  cubic rounding ``round(x) + (x - round(x))^3`` (Shin & Song 2017). For transforms without rounding
  (median, Gaussian, noise) this equals ``"exact"``.
- ``"ste"`` (straight-through): forward through the real transform, backward through the same transform with only
  its rounding replaced by the identity (``round_with_mode(..., "ste")``); every other step of the transform (colour
  conversion, chroma subsampling and upsampling, padding, the output clamp to [0,1]) keeps its true gradient. It is
  NOT the same as BPDA-identity, which replaces the whole transform by the identity: for JPEG the chroma subsampling
  low-passes the straight-through gradient of Cb/Cr, and for FR and JPEG the output clamp zeroes it where the
  transform's output saturates. For bit-depth reduction the two coincide (``round(L x) / L`` with the rounding
  passed straight through is ``x`` on [0,1], and neither clamp is active there, up to float ties at exactly 0 or 1), so
  :func:`applicable_modes` counts it once (as ``bpda``). For transforms without rounding it equals ``"exact"``.

:func:`applicable_modes` lists the distinct modes worth trying on a defense (the defense report tries each and
reports the worst case): ``bpda`` always; for rounding defenses ``surrogate`` and ``ste`` (where different from
``bpda``) but not ``exact`` (zero almost everywhere: the attack would not move from its start); for differentiable
defenses ``exact`` (then ``surrogate`` and ``ste`` are the same gradient and are not repeated).

Randomised defenses need EOT (Expectation over Transformation, Athalye et al. 2018):
``eot_samples = n`` averages the logits over n independent transform samples in ``forward``
(expectation of the model output); :func:`eot_input_grad` averages input gradients of a loss over
n samples (expectation of the gradient). Deterministic defenses need n = 1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_seg.defenses.base import Defense, build_defense, parameter_names

GRADIENT_MODES: tuple[str, ...] = ("exact", "bpda", "surrogate", "ste")


def applicable_modes(defense: nn.Module) -> list[str]:
    """The distinct gradient modes an adaptive attacker should try on ``defense`` (module docstring), ``bpda``
    first. A defense sets ``ste_is_bpda = True`` when its straight-through gradient equals the identity (bit depth)."""
    if not getattr(defense, "rounds", False):
        return ["bpda", "exact"]
    modes = ["bpda", "surrogate"]
    if not getattr(defense, "ste_is_bpda", False):
        modes.append("ste")
    return modes


def check_attacker(gradient: str, eot_samples: int, prefix: str = "") -> None:
    """The attacker's settings: a gradient mode and a number of EOT samples >= 1 (``prefix`` names the config key)."""
    if gradient not in GRADIENT_MODES:
        raise ValueError(f"{prefix}gradient={gradient!r} is not a gradient mode; use one of {', '.join(GRADIENT_MODES)}.")
    if isinstance(eot_samples, bool) or not isinstance(eot_samples, int) or eot_samples < 1:
        raise ValueError(f"{prefix}eot_samples={eot_samples!r} must be an int >= 1.")


def defense_with_gradient(defense: nn.Module, x: Tensor, gradient: str = "bpda") -> Tensor:
    """Apply ``defense`` to ``x`` with the chosen backward (see module docstring); forward = ``defense(x)``."""
    if gradient == "exact":
        return defense(x)
    if gradient == "bpda":
        with torch.no_grad():
            y = defense(x)
        # value y, gradient identity: dy/dx = I
        return x + (y - x).detach()
    if gradient == "surrogate":
        if not getattr(defense, "rounds", False):
            return defense(x)  # already differentiable: its true gradient is the surrogate
        with torch.no_grad():
            y = defense(x)
        y_sur = defense(x, rounding="cubic")
        return y_sur + (y - y_sur).detach()
    if gradient == "ste":
        if not getattr(defense, "rounds", False):
            return defense(x)
        with torch.no_grad():
            y = defense(x)
        y_ste = defense(x, rounding="ste")  # same value up to rounding error; the exact value is y
        return y_ste + (y - y_ste).detach()
    raise ValueError(f"gradient={gradient!r} is not a gradient mode; use one of {', '.join(GRADIENT_MODES)}.")


class DefendedModel(nn.Module):
    """``model . defense`` as one module mapping images ``[B,C,H,W]`` in [0,1] to logits.

    Args:
        model: segmentation network (logits out).
        defense: a :class:`Defense`, any image-to-image ``nn.Module``, a registered name
            (``"fr"``) or a config (mapping / dataclass with ``name``).
        gradient: ``"exact"``, ``"bpda"``, ``"surrogate"`` or ``"ste"`` (chosen per attack).
        eot_samples: number of transform samples whose logits are averaged (1 for deterministic defenses).
    """

    def __init__(self, model: nn.Module, defense: nn.Module | str | object, gradient: str = "bpda", eot_samples: int = 1) -> None:
        super().__init__()
        check_attacker(gradient, eot_samples)
        if not isinstance(defense, nn.Module):
            defense = build_defense(defense)
        self.model = model
        self.defense = defense
        self.gradient = gradient
        self.eot_samples = eot_samples

    @property
    def randomized(self) -> bool:
        return bool(getattr(self.defense, "randomized", False))

    def transform(self, x: Tensor) -> Tensor:
        """The defended model input ``defense(x)`` with this wrapper's gradient mode."""
        return defense_with_gradient(self.defense, x, self.gradient)

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(self.transform(x))
        for _ in range(self.eot_samples - 1):
            out = out + self.model(self.transform(x))
        return out / self.eot_samples if self.eot_samples > 1 else out

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the logits (the defenses keep the input size)."""
        inner = getattr(self.model, "output_size", None)
        return inner(height, width) if inner is not None else (height, width)

    def extra_repr(self) -> str:
        return f"gradient={self.gradient!r}, eot_samples={self.eot_samples}"


# keys of the flat ``defense`` config section (lightning_seg.config.DefenseConfig) that configure the attacker, not the transform
ATTACKER_KEYS = ("gradient", "eot_samples")


def defense_from_config(section: Mapping[str, Any] | None) -> tuple[Defense | None, str, int]:
    """``(defense or None, gradient, eot_samples)`` from a flat ``defense`` config section (plain mapping).

    The one reading of the section: config composition calls it to fail early, :func:`defend` to build the model.
    Parameters left at ``None`` take the defense's defaults; a parameter the named defense does not have fails
    with one line naming it and the valid ones. ``name: none`` (or no section: old checkpoints) gives ``None``."""
    section = dict(section or {})
    gradient, eot_samples = section.pop("gradient", "bpda"), section.pop("eot_samples", 1)
    check_attacker(gradient, eot_samples, prefix="defense.")
    name = section.pop("name", "none")
    params = {k: v for k, v in section.items() if v is not None}
    valid = parameter_names(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"defense {name!r} has no parameter(s) {', '.join(f'defense.{k}' for k in unknown)}; "
                         f"its parameters: {', '.join(valid) or 'none'}.")
    if name == "none":
        return None, gradient, eot_samples
    return build_defense({"name": name, **params}), gradient, eot_samples


def defend(model: nn.Module, section: Mapping[str, Any] | None) -> nn.Module:
    """``model`` behind the configured defense as deployed (a :class:`DefendedModel` whose prediction averages the
    configured EOT samples), or ``model`` itself for ``none``."""
    defense, gradient, eot_samples = defense_from_config(section)
    if defense is None:
        return model
    return DefendedModel(model, defense, gradient=gradient, eot_samples=eot_samples)


def eot_input_grad(
    model: nn.Module, x: Tensor, loss_fn: Callable[[Tensor], Tensor], n_samples: int = 1
) -> tuple[Tensor, Tensor]:
    """EOT gradient: mean over ``n_samples`` forward/backward passes of ``grad_x loss_fn(model(x))``.

    ``loss_fn`` maps logits to a per-image loss ``[B]`` (or a scalar); per-image losses are summed
    before differentiation, so images stay independent. Uses ``torch.autograd.grad`` on the input only
    (no parameter ``.grad``, so an attack never disturbs the model's training state). Returns
    ``(mean loss, mean gradient)``, both detached; the gradient has the shape of ``x``. No host synchronisation.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples={n_samples!r} must be an int >= 1.")
    xg = x.detach().requires_grad_(True)
    grad_sum = torch.zeros_like(xg)
    loss_sum: Tensor | None = None
    for _ in range(n_samples):
        loss = loss_fn(model(xg))
        (g,) = torch.autograd.grad(loss.sum(), xg)
        grad_sum = grad_sum + g
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    assert loss_sum is not None
    return loss_sum / n_samples, grad_sum / n_samples


__all__ = [
    "ATTACKER_KEYS",
    "GRADIENT_MODES",
    "DefendedModel",
    "Defense",
    "applicable_modes",
    "check_attacker",
    "defend",
    "defense_from_config",
    "defense_with_gradient",
    "eot_input_grad",
]
