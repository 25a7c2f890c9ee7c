"""Typed configs (one dataclass per attack), the ``Attack`` wrapper and the ``ATTACKS`` registry.

Each config's fields are the attack function's keyword hyper-parameters plus ``name`` (and
``seed`` where the attack is random: a fresh ``torch.Generator`` on the input device is seeded
with it on every call). ``conf/attack/<name>.yaml`` holds the same defaults. Budgets (eps,
alpha, gamma, ...) accept strings such as ``"8/255"`` via :func:`parse_fraction` in
``__post_init__``; an OmegaConf structured schema typed ``float`` rejects such strings, so the
config layer should pass CLI overrides through :func:`normalize_fraction_overrides` first.

    attack = build_attack("asma", iou_threshold=0.9)     # or ATTACKS.get("asma")(...)
    result = attack(model, images, targets, mask=valid)  # -> AttackResult
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_seg.attacks._common import parse_fraction
from lightning_seg.attacks.asma import asma
from lightning_seg.attacks.cospgd import cospgd
from lightning_seg.attacks.dag import dag
from lightning_seg.attacks.pgd import fgsm, pgd
from lightning_seg.attacks.result import AttackResult
from lightning_seg.attacks.segpgd import segpgd
from lightning_seg.attacks.synthesis import synthesis
from lightning_seg.attacks.universal import UniversalPerturbation, universal_attack, universal_perturbation
from lightning_seg.registry import Registry
from lightning_seg.tasks import Task


class _Parse:
    """Mixin: parse fraction strings in the listed float fields."""

    _fraction_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in self._fraction_fields:
            v = getattr(self, f)
            if v is not None:
                setattr(self, f, parse_fraction(v))

    def kwargs(self) -> dict[str, Any]:
        """The attack function's keyword arguments (without ``name`` and ``seed``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("name", "seed")}


@dataclass
class AsmaConfig(_Parse):
    """ASMA (Ozbulak et al. 2019); see :func:`lightning_seg.attacks.asma.asma`.

    Project defaults: the scale-free relative step (the raw schedule with tau calibrated per image, first step of
    L2 length ``step_size``) with per-image early stop at IoU 0.95, because the
    paper's raw-gradient tau/beta (1e-7 / 1e-6, 2501 iterations: ``attack=asma_paper``) are specific to
    its model and barely move others (REFERENCE 1.2)."""

    name: str = "asma"
    adaptive_mask: bool = True
    dynamic_multiplier: bool = True
    tau: float = 1e-7
    beta: float = 1e-6
    max_iter: int = 500
    iou_threshold: float | None = 0.95
    success_threshold: float = 0.95
    step: str = "relative"
    step_size: float = 0.02  # embedded ISIC default, 32 pairs: RMS 1.31/255 (0.03: 1.73, 0.05: 2.62), all 100 % success
    l2_weight: float = 1.0
    paper_exact: bool = False
    return_best: bool = False
    check_every: int = 10
    _fraction_fields = ("tau", "beta", "step_size")


@dataclass
class AsmConfig(AsmaConfig):
    """ASM ablation: adaptive mask, fixed multiplier."""

    name: str = "asm"
    dynamic_multiplier: bool = False


@dataclass
class SsmConfig(AsmaConfig):
    """SSM ablation: no adaptive mask, fixed multiplier."""

    name: str = "ssm"
    adaptive_mask: bool = False
    dynamic_multiplier: bool = False


@dataclass
class DagConfig(_Parse):
    """DAG (Xie et al. 2017); gamma in [0,1] units (paper 0.5 on 0-255)."""

    name: str = "dag"
    targeted: bool = False
    gamma: float = 0.5 / 255
    max_iter: int = 200
    norm: str = "linf"
    adv_threshold: float = 1.0
    check_every: int = 10
    seed: int | None = 0
    _fraction_fields = ("gamma",)


@dataclass
class PgdConfig(_Parse):
    """PGD (Madry et al. 2018), eps/alpha in [0,1] units."""

    name: str = "pgd"
    eps: float = 4 / 255
    alpha: float = 1 / 255
    steps: int = 10
    norm: str = "linf"
    targeted: bool = False
    random_start: bool = True
    adv_threshold: float = 0.99
    seed: int | None = 0
    _fraction_fields = ("eps", "alpha")


@dataclass
class FgsmConfig(_Parse):
    """FGSM (Goodfellow et al. 2015)."""

    name: str = "fgsm"
    eps: float = 4 / 255
    norm: str = "linf"
    targeted: bool = False
    adv_threshold: float = 0.99
    _fraction_fields = ("eps",)


@dataclass
class SegPgdConfig(PgdConfig):
    """SegPGD (Gu et al. 2022)."""

    name: str = "segpgd"
    steps: int = 20


@dataclass
class CosPgdConfig(PgdConfig):
    """CosPGD (Agnihotri et al. 2024)."""

    name: str = "cospgd"
    steps: int = 20


@dataclass
class UpConfig(_Parse):
    """Universal perturbation (Metzen et al. 2017); the static target mask is passed to ``fit``."""

    name: str = "up"
    eps: float = 10 / 255
    alpha: float = 1 / 255
    epochs: int = 10
    mode: str = "dynamic"
    hide_class: int = 1
    omega: float = 0.7
    tau_conf: float = 0.75
    reference: str = "prediction"
    random_start: bool = False
    adv_threshold: float = 0.99
    seed: int | None = 0
    _fraction_fields = ("eps", "alpha")


@dataclass
class SynthesisConfig(_Parse):
    """Chen-style synthesis (SASHIMI 2019; REFERENCE 2.8): smooth deformation + bias field + noise, optimised to
    lower Dice, then scaled by bisection to a Dice drop of ``dice_drop`` +- ``tol`` against the equally deformed
    label; see :func:`lightning_seg.attacks.synthesis.synthesis`. Untargeted. Budgets: velocity grid of one control
    point per ``morph_spacing`` px, ||v||_2 <= ``eps_morph`` (normalised coords, AdvChain scale) and max displacement
    <= ``max_disp_px`` px; |bias - 1| <= ``eps_bias`` on ``bias_cells`` B-spline cells per axis; noise per-value RMS
    <= ``noise_std``. ``structures``: Dice per union of classes (None: per foreground class; the attack command
    sets the task's structures, e.g. glaucoma disc and cup)."""

    name: str = "synthesis"
    dice_drop: float = 0.2
    tol: float = 0.02
    steps: int = 10
    step_size: float = 0.5
    bisect_steps: int = 10
    init: str = "random"
    morph_spacing: int = 16
    eps_morph: float = 1.5
    max_disp_px: float | None = 6.0
    diffeomorphic: bool = True
    ss_steps: int = 8
    bias_cells: int = 2
    eps_bias: float = 0.3
    noise_std: float = 0.01
    label_mode: str = "bilinear"
    structures: list[list[int]] | None = None
    seed: int | None = 0
    targeted = False  # class attribute, not a field: untargeted, the reference is the (deformed) ground truth
    _fraction_fields = ("noise_std", "eps_bias", "tol", "dice_drop")

    def kwargs(self) -> dict[str, Any]:
        kw = super().kwargs()
        kw["structures"] = None if self.structures is None else tuple(tuple(int(i) for i in s) for s in self.structures)
        return kw


CONFIGS: dict[str, type[_Parse]] = {
    "asma": AsmaConfig,
    "asm": AsmConfig,
    "ssm": SsmConfig,
    "dag": DagConfig,
    "fgsm": FgsmConfig,
    "pgd": PgdConfig,
    "segpgd": SegPgdConfig,
    "cospgd": CosPgdConfig,
    "up": UpConfig,
    "synthesis": SynthesisConfig,
}

_FUNCTIONS: dict[str, Callable[..., AttackResult]] = {
    "asma": asma, "asm": asma, "ssm": asma, "dag": dag, "fgsm": fgsm, "pgd": pgd, "segpgd": segpgd, "cospgd": cospgd,
    "synthesis": synthesis,
}


_FRACTION = re.compile(r"^\s*[-+]?\d*\.?\d+(e[-+]?\d+)?\s*/\s*\d*\.?\d+(e[-+]?\d+)?\s*$", re.IGNORECASE)


def normalize_fraction_overrides(dotlist: list[str]) -> list[str]:
    """Rewrite ``key=8/255`` dotlist overrides to ``key=0.0313...`` so that an OmegaConf
    structured schema typed ``float`` accepts them (OmegaConf keeps ``8/255`` as a string)."""
    out = []
    for item in dotlist:
        key, sep, value = item.partition("=")
        if sep and _FRACTION.match(value):
            item = f"{key}={parse_fraction(value)!r}"
        out.append(item)
    return out


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    return None if seed is None else torch.Generator(device=device).manual_seed(int(seed))


@dataclass
class Attack:
    """Thin callable wrapper: ``attack(model, images, labels, mask=..., perturbation_mask=...)``."""

    name: str
    config: Any
    fn: Callable[..., AttackResult] = field(repr=False)

    @property
    def targeted(self) -> bool:
        return bool(getattr(self.config, "targeted", True))

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor, *, mask: Tensor | None = None,
                 perturbation_mask: Tensor | None = None) -> AttackResult:
        kw = self.config.kwargs()
        if hasattr(self.config, "seed"):
            kw["generator"] = _generator(self.config.seed, images.device)
        return self.fn(model, images, labels, mask=mask, perturbation_mask=perturbation_mask, **kw)


@dataclass
class UniversalAttack:
    """Universal perturbation: ``fit(model, batches, target=None)`` then call like any attack."""

    name: str
    config: UpConfig
    perturbation: UniversalPerturbation | None = None
    targeted: bool = True

    def fit(self, model: nn.Module, batches: Iterable[Any], *, target: Tensor | None = None) -> UniversalPerturbation:
        c = self.config
        gen = None
        if c.random_start and c.seed is not None:
            gen = torch.Generator().manual_seed(int(c.seed))  # CPU draw, moved to the data device
        self.perturbation = universal_perturbation(
            model, batches, eps=c.eps, alpha=c.alpha, epochs=c.epochs, mode=c.mode, target=target,
            hide_class=c.hide_class, omega=c.omega, tau_conf=c.tau_conf, reference=c.reference,
            random_start=c.random_start, generator=gen)
        return self.perturbation

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor, *, mask: Tensor | None = None,
                 perturbation_mask: Tensor | None = None) -> AttackResult:
        if self.perturbation is None:
            raise RuntimeError("universal attack 'up' is not fitted: call attack.fit(model, train_batches) first")
        if perturbation_mask is not None:
            raise ValueError("perturbation_mask is not supported by the universal perturbation evaluation")
        return universal_attack(model, images, labels, perturbation=self.perturbation, mask=mask,
                                adv_threshold=self.config.adv_threshold)


ATTACKS: Registry[Any] = Registry("attack")


def _make_config(name: str, overrides: dict[str, Any]) -> Any:
    cls = CONFIGS[name]
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in overrides:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
            raise TypeError(f"attack {name!r} has no parameter {key!r}.{hint} Parameters: {', '.join(valid)}.")
    overrides = {k: v for k, v in overrides.items() if k != "name"}
    return cls(**overrides)


def _register(name: str) -> None:
    if name == "up":
        ATTACKS.register(name)(lambda **kw: UniversalAttack(name, _make_config(name, kw)))
    else:
        ATTACKS.register(name)(lambda **kw: Attack(name, _make_config(name, kw), _FUNCTIONS[name]))


for _name in CONFIGS:
    _register(_name)


def build_attack(name: str, **overrides: Any) -> Attack | UniversalAttack:
    """Build a registered attack with config overrides; unknown names/keys fail with close matches."""
    return ATTACKS.build(name, **overrides)


__all__ = [
    "ATTACKS", "CONFIGS", "Attack", "AsmConfig", "AsmaConfig", "CosPgdConfig", "DagConfig", "FgsmConfig",
    "PgdConfig", "SegPgdConfig", "SsmConfig", "SynthesisConfig", "UniversalAttack", "UpConfig", "build_attack",
    "normalize_fraction_overrides",
]


def build_named_attack(name: str, sections: dict[str, Any] | None = None, **overrides: Any) -> Any:
    """An attack from a key of the config's ``attack`` section (e.g. ``asma_paper``) or a registered name."""
    params = dict((sections or {}).get(name, {}))
    registered = params.pop("name", name)
    params.update(overrides)
    return build_attack(registered, **params)



def bind_task(attack: Any, task: Task) -> Any:
    """Give an attack that scores Dice itself (synthesis: ``structures`` = None) the task's structures, so that its
    Dice is the project's reporting Dice (glaucoma: disc = {rim, cup} and cup, REFERENCE 1.1)."""
    config = getattr(attack, "config", None)
    if config is not None and hasattr(config, "structures") and config.structures is None:
        config.structures = [list(ids) for _, ids in task.structures]
    return attack



def is_targeted(attack: Any) -> bool:
    return bool(getattr(attack, "targeted", getattr(attack.config, "targeted", True)))
