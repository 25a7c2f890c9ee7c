"""Shared pieces of the input-transformation defenses: registry, rounding modes, config building.

Every defense is an ``nn.Module`` mapping images ``[B,C,H,W]`` float in [0,1] to images of the
same shape in [0,1] (REFERENCE 1.1). Defenses that quantise (FR, JPEG, bit depth) accept a
``rounding`` override in ``forward`` so :class:`~lightning_seg.defenses.defended.DefendedModel`
can evaluate the real transform and a differentiable surrogate of it (REFERENCE 3.4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_seg.registry import Registry

DEFENSES: Registry[nn.Module] = Registry("defense")

Rounding = Literal["exact", "ste", "cubic"]
ROUNDING_MODES: tuple[str, ...] = ("exact", "ste", "cubic")


def check_rounding(rounding: str) -> str:
    """Validate a rounding-mode name early (one clear message, REFERENCE conventions)."""
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


@DEFENSES.register("none")
class NoDefense(Defense):
    """Identity transform (the undefended baseline)."""

    @dataclasses.dataclass
    class Config:
        name: str = "none"

    def forward(self, x: Tensor, rounding: str | None = None) -> Tensor:
        check_images(x, "NoDefense")
        return x


def config_defaults(name: str) -> dict[str, Any]:
    """Default config of a registered defense as a plain dict (incl. ``name``)."""
    cls = DEFENSES.get(name)
    return dataclasses.asdict(cls.Config())  # type: ignore[attr-defined]


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
    cls = DEFENSES.get(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)} - {"name"}  # type: ignore[attr-defined]
    unknown = sorted(set(params) - fields)
    if unknown:
        raise TypeError(
            f"defense {name!r} got unknown option(s) {unknown}; valid options: {sorted(fields) or 'none'}."
        )
    return cls(**params)
