"""Shared pieces of the input-transformation defenses: registry, rounding modes, config building.

Every defense is an ``nn.Module`` mapping images ``[B,C,H,W]`` float in [0,1] to images of the
same shape in [0,1], the range attack budgets are measured in. Defenses that quantise (FR, JPEG, bit depth) accept a
``rounding`` override in ``forward`` so :class:`~lightning_seg.defenses.defended.DefendedModel`
can evaluate the real transform and a differentiable surrogate of it (BPDA, Athalye et al. ICML 2018).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_seg.registry import Registry

DEFENSES: Registry[nn.Module] = Registry("defense")

ROUNDING_MODES: tuple[str, ...] = ("exact", "ste", "cubic")


def check_rounding(rounding: str) -> str:
    """Validate a rounding-mode name early, with one clear message."""
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding={rounding!r} is not a rounding mode; use one of {', '.join(ROUNDING_MODES)}.")
    return rounding


def round_with_mode(x: Tensor, rounding: str = "exact") -> Tensor:
    """Round to the nearest integer (half to even, as numpy/torch) with a chosen gradient.

    - ``exact``: ``torch.round``; gradient zero almost everywhere (gradient masking, Athalye et al. 2018).
    - ``ste``: straight-through estimator; forward ``round(x)``, backward identity.
    - ``cubic``: ``round(x) + (x - round(x))**3`` (Shin & Song 2017 differentiable-JPEG surrogate);
      note the forward value differs slightly from ``round(x)``.
    """
    if rounding == "exact":
        return torch.round(x)
    if rounding == "ste":
        return x + (torch.round(x) - x).detach()
    if rounding == "cubic":
        r = torch.round(x).detach()
        return r + (x - r) ** 3
    raise ValueError(f"rounding={rounding!r} is not a rounding mode; use one of {', '.join(ROUNDING_MODES)}.")


def check_images(x: Tensor, who: str) -> None:
    """Raise early on inputs that break the [B,C,H,W] float contract (shape/dtype only: no host sync)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} expects a torch.Tensor of images [B,C,H,W], got {type(x).__name__}.")
    if x.dim() != 4:
        raise ValueError(f"{who} expects images [B,C,H,W], got shape {tuple(x.shape)}; add a batch dimension.")
    if not x.is_floating_point():
        raise TypeError(f"{who} expects float images in [0,1], got dtype {x.dtype}; convert with x.float() / 255.")


class Defense(nn.Module):
    """Base class: a (possibly quantising) image-to-image transform in [0,1].

    ``forward(x, rounding=None)``: ``rounding`` overrides the configured rounding mode for this call
    (ignored by transforms that do not round). ``randomized`` tells attacks whether EOT is needed.
    """

    randomized: bool = False
    rounds: bool = False

    def forward(self, x: Tensor, rounding: str | None = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def signature_defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    """The keyword defaults of ``fn``: a defense module's ``__init__`` takes its defaults from its pure function, so that
    ``jpeg(x)`` and ``JPEG()(x)`` run the same transform and each default is written once."""
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}


def register_defense(name: str) -> Callable[[type[Defense]], type[Defense]]:
    """Register a defense module under ``name`` and give it a ``Config`` dataclass built from its ``__init__`` signature
    (``name`` plus every parameter with its default): the config layer and :func:`build_defense` read it."""

    def decorator(cls: type[Defense]) -> type[Defense]:
        params = [p for p in inspect.signature(cls.__init__).parameters.values()
                  if p.name != "self" and p.default is not inspect.Parameter.empty]
        fields = [("name", str, dataclasses.field(default=name))]
        fields += [(p.name, p.annotation, dataclasses.field(default=p.default)) for p in params]
        cls.Config = dataclasses.make_dataclass(f"{cls.__name__}Config", fields)  # type: ignore[attr-defined]
        return DEFENSES.register(name)(cls)

    return decorator


def defense_defaults(name: str) -> dict[str, Any]:
    """Every parameter of registered defense ``name`` with its default (``name`` included)."""
    return dataclasses.asdict(DEFENSES.get(name).Config())  # type: ignore[attr-defined]


@register_defense("none")
class NoDefense(Defense):
    """Identity transform (the undefended baseline)."""

    def forward(self, x: Tensor, rounding: str | None = None) -> Tensor:
        check_images(x, "NoDefense")
        return x


def parameter_names(name: str) -> list[str]:
    """The parameters of a registered defense (its Config fields but ``name``), sorted."""
    cls = DEFENSES.get(name)  # unknown name: UnknownNameError with close matches
    return sorted({f.name for f in dataclasses.fields(cls.Config)} - {"name"})  # type: ignore[attr-defined]


def build_defense(cfg: Any = None, /, **overrides: Any) -> Defense:
    """Build a defense from a name, a mapping / DictConfig with a ``name`` key, or a config dataclass.

    Examples: ``build_defense("fr")``, ``build_defense({"name": "jpeg", "quality": 50})``,
    ``build_defense(FrequencyRefinement.Config(gd=80))``, ``build_defense("fr", gd=80)``.
    Unknown names raise ``UnknownNameError`` with close matches; unknown keys raise ``TypeError``.
    """
    if cfg is None:
        params: dict[str, Any] = {}
    elif isinstance(cfg, str):
        params = {"name": cfg}
    elif dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        params = dataclasses.asdict(cfg)
    elif isinstance(cfg, Mapping):
        params = dict(cfg)
    else:
        try:  # OmegaConf DictConfig without importing omegaconf at module import time
            from omegaconf import DictConfig, OmegaConf

            if isinstance(cfg, DictConfig):
                params = dict(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
            else:
                raise TypeError
        except (ImportError, TypeError):
            raise TypeError(
                f"build_defense expects a name, a mapping with a 'name' key or a defense Config, got {type(cfg).__name__}."
            ) from None
    params.update(overrides)
    if "name" not in params:
        raise ValueError(f"defense config needs a 'name' key; registered defenses: {', '.join(DEFENSES.names())}.")
    name = params.pop("name")
    valid = parameter_names(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise TypeError(f"defense {name!r} got unknown option(s) {unknown}; valid options: {valid or 'none'}.")
    return DEFENSES.get(name)(**params)
