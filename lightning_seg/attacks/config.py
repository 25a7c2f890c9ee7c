"""Typed configs (one dataclass per attack), the ``Attack`` wrapper and the ``ATTACKS`` registry.

One default per parameter: the attack FUNCTION's signature holds it. Each config dataclass is built from the
signature(s) of the function(s) in ``FUNCTIONS`` (its keyword hyper-parameters with their defaults, plus ``name``, and
``seed`` where the attack is random: a fresh ``torch.Generator`` on the input device is seeded with it on every call),
and the config layer (lightning_seg.config) fills each ``attack`` section from these dataclass defaults, so that
``conf/attack/<name>.yaml`` holds only genuine deviations (e.g. ``asma_paper``). Calling a function with its defaults
therefore runs exactly what ``attack=<name>`` runs (tests/test_attack_defaults.py checks it for every registered
attack). Budgets (float parameters) accept strings such as ``"8/255"`` via :func:`parse_fraction`.

    attack = build_attack("asma", iou_threshold=0.9)     # or ATTACKS.get("asma")(...)
    result = attack(model, images, targets, mask=valid)  # -> AttackResult
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import inspect
import sys
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch
from torch import Tensor, nn

from lightning_seg.attacks._common import parse_fraction
from lightning_seg.attacks.asma import asm, asma, ssm
from lightning_seg.attacks.cospgd import cospgd
from lightning_seg.attacks.dag import dag
from lightning_seg.attacks.pgd import fgsm, pgd
from lightning_seg.attacks.result import AttackResult
from lightning_seg.attacks.segpgd import segpgd
from lightning_seg.attacks.synthesis import synthesis
from lightning_seg.attacks.universal import UniversalPerturbation, universal_attack, universal_perturbation
from lightning_seg.registry import Registry
from lightning_seg.tasks import Task

# Function parameters that are data or state, not hyper-parameters of the attack.
_NOT_HYPER = frozenset({"model", "images", "labels", "targets", "mask", "perturbation_mask", "generator", "batches",
                        "target", "perturbation"})


class AttackParamError(TypeError, ValueError):
    """A bad attack parameter: ``param`` names it; ``expected`` says what to give instead of ``value`` (None: the
    attack has no such parameter). Both a TypeError and a ValueError, as a bad keyword argument or value is."""

    def __init__(self, message: str, param: str, value: Any = None, expected: str | None = None) -> None:
        super().__init__(message)
        self.param, self.value, self.expected = param, value, expected


def resolve_annotation(annotation: Any, fn: Callable[..., Any]) -> Any:
    """The type an annotation string of ``fn``'s signature names (``Any`` when it cannot be resolved: the function
    then checks the value itself). Variants (asm, segpgd) carry their base's annotations without its globals, so the
    names of ``typing`` and ``collections.abc`` are there too."""
    if annotation is inspect.Parameter.empty:
        return Any
    if not isinstance(annotation, str):
        return annotation
    module = sys.modules.get(getattr(fn, "__module__", ""), None)
    namespace = {**vars(typing), **vars(collections.abc), **(vars(module) if module else {})}
    try:
        resolved = eval(annotation, namespace)  # noqa: S307 - what typing.get_type_hints does with annotation strings
    except Exception:
        return Any
    return resolve_annotation(resolved, fn) if isinstance(resolved, str) else resolved  # string aliases: Structures


def value_problem(value: Any, tp: Any, *, fractions: bool = True) -> str | None:
    """``None`` when ``value`` fits the type ``tp``, else what to give instead (e.g. "one of raw, relative,
    normalized"). ``fractions``: a float may be given as a fraction string such as ``"8/255"``."""
    return None if _fits(value, tp, fractions) else _describe(tp, fractions)


def _fits(value: Any, tp: Any, fractions: bool) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (Union, types.UnionType):
        return any(_fits(value, a, fractions) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        if isinstance(value, str) and fractions:
            try:
                parse_fraction(value)
            except (TypeError, ValueError):
                return False
            return True
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(v, a, fractions) for v, a in zip(value, args))
        return all(_fits(v, args[0], fractions) for v in value) if args else True
    return True  # other annotations (Any, tensors): the function checks the value


def _describe(tp: Any, fractions: bool, plural: bool = False) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return f"one of {', '.join(str(a) for a in args)}"
    if origin in (Union, types.UnionType):
        parts = [_describe(a, fractions, plural) for a in args if a is not type(None)]
        return " or ".join(parts + (["null"] if type(None) in args else []))
    if origin in (tuple, list, collections.abc.Sequence):
        return f"{'lists' if plural else 'a list'} of {_describe(args[0], fractions, True) if args else 'values'}"
    names = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), str: ("a string", "strings"),
             float: ("a number" + (" (e.g. 0.03 or 8/255)" if fractions else ""), "numbers")}
    return names[tp][plural] if tp in names else str(tp)


class _Parse:
    """Base of the attack configs: fraction strings in float fields are parsed; ``kwargs`` feeds the function."""

    _fraction_fields: tuple[str, ...] = ()
    _types: dict[str, Any] = {}  # field -> the type its function's annotation names (checked by build_attack)

    def __post_init__(self) -> None:
        for f in self._fraction_fields:
            v = getattr(self, f)
            if v is not None:
                setattr(self, f, parse_fraction(v))

    def kwargs(self) -> dict[str, Any]:
        """The attack function's keyword arguments (without ``name`` and ``seed``); lists (``structures`` from a yaml)
        become tuples."""
        return {f.name: _freeze(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name not in ("name", "seed")}


def _freeze(v: Any) -> Any:
    return tuple(_freeze(i) for i in v) if isinstance(v, list) else v


def _config_class(cls_name: str, name: str, functions: tuple[Callable[..., Any], ...], doc: str,
                  targeted: bool | None = None) -> type[_Parse]:
    """The config dataclass of attack ``name``: ``name``, then the keyword hyper-parameters of ``functions`` with their
    signature defaults, then ``seed`` (default 0) when a function draws random numbers from a ``generator``.
    ``targeted``: the fixed answer of an attack without a ``targeted`` parameter (a class attribute, not a field)."""
    fields: list[tuple[str, Any, Any]] = [("name", "str", field(default=name))]
    types_: dict[str, Any] = {"name": str}
    random = False
    for fn in functions:
        for p in inspect.signature(fn).parameters.values():
            random |= p.name == "generator"
            if p.name in _NOT_HYPER or p.default is inspect.Parameter.empty or p.name in {f[0] for f in fields}:
                continue
            fields.append((p.name, p.annotation, field(default=p.default)))
            types_[p.name] = resolve_annotation(p.annotation, fn)
    if random:
        fields.append(("seed", "int | None", field(default=0)))
        types_["seed"] = int | None
    namespace: dict[str, Any] = {
        "__doc__": doc,
        "_fraction_fields": tuple(n for n, a, _ in fields if "float" in str(a)),
        "_types": types_,
    }
    if targeted is not None:
        if "targeted" in {f[0] for f in fields}:
            raise TypeError(f"attack {name!r} has a `targeted` parameter: it cannot also be fixed")
        namespace["targeted"] = targeted
    cls = dataclasses.make_dataclass(cls_name, fields, bases=(_Parse,), namespace=namespace)
    cls.__module__ = __name__
    return cls


AsmaConfig = _config_class("AsmaConfig", "asma", (asma,), targeted=True, doc="""ASMA (Ozbulak et al. 2019), targeted;
see :func:`lightning_seg.attacks.asma.asma` for the defaults (scale-free relative step, early stop at IoU 0.95) and
``attack=asma_paper`` for the paper's raw schedule.""")
AsmConfig = _config_class("AsmConfig", "asm", (asm,), targeted=True,
                          doc="ASM ablation of ASMA: adaptive mask, fixed multiplier.")
SsmConfig = _config_class("SsmConfig", "ssm", (ssm,), targeted=True,
                          doc="SSM ablation of ASMA: no adaptive mask, fixed multiplier.")
DagConfig = _config_class("DagConfig", "dag", (dag,),
                          doc="DAG (Xie et al. 2017); gamma in [0,1] units (paper 0.5 on 0-255).")
PgdConfig = _config_class("PgdConfig", "pgd", (pgd,), doc="PGD (Madry et al. 2018), eps/alpha in [0,1] units.")
FgsmConfig = _config_class("FgsmConfig", "fgsm", (fgsm,), doc="FGSM (Goodfellow et al. 2015).")
SegPgdConfig = _config_class("SegPgdConfig", "segpgd", (segpgd,), doc="SegPGD (Gu et al. 2022).")
CosPgdConfig = _config_class("CosPgdConfig", "cospgd", (cospgd,), doc="CosPGD (Agnihotri et al. 2024).")
UpConfig = _config_class("UpConfig", "up", (universal_perturbation, universal_attack), targeted=True, doc="""Universal
perturbation (Metzen et al. 2017), targeted: fitted with :func:`universal_perturbation`, evaluated with
:func:`universal_attack` (``adv_threshold``); the static target mask is passed to ``fit``.""")
SynthesisConfig = _config_class("SynthesisConfig", "synthesis", (synthesis,), targeted=False, doc="""Chen-style
synthesis (SASHIMI 2019): smooth deformation + bias field + noise, optimised to lower Dice, then scaled by bisection
to a Dice drop of ``dice_drop`` +- ``tol`` against the equally deformed label; see
:func:`lightning_seg.attacks.synthesis.synthesis`. Untargeted: the reference is the (deformed) ground truth. Budgets:
velocity grid of one control point per ``morph_spacing`` px, ||v||_2 <= ``eps_morph`` (normalised coords, AdvChain
scale) and max displacement <= ``max_disp_px`` px; |bias - 1| <= ``eps_bias`` on ``bias_cells`` B-spline cells per
axis; noise per-value RMS <= ``noise_std``. ``structures``: Dice per union of classes (None: per foreground class;
the attack command sets the task's structures, e.g. glaucoma disc and cup).""")

# attack name -> the function(s) whose keyword defaults make up its config (the first one runs the attack).
FUNCTIONS: dict[str, tuple[Callable[..., Any], ...]] = {
    "asma": (asma,), "asm": (asm,), "ssm": (ssm,), "dag": (dag,), "fgsm": (fgsm,), "pgd": (pgd,),
    "segpgd": (segpgd,), "cospgd": (cospgd,), "up": (universal_perturbation, universal_attack),
    "synthesis": (synthesis,),
}

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


def attack_defaults(name: str) -> dict[str, Any]:
    """All parameters of registered attack ``name`` with their defaults (the config layer's ``attack.<key>`` base);
    empty for an unknown name, which :func:`build_attack` reports."""
    return dataclasses.asdict(CONFIGS[name]()) if name in CONFIGS else {}


def is_targeted(attack: Any) -> bool:
    """The one rule: an attack (or its config) is targeted iff its config says so: the ``targeted`` field of attacks
    that can be either (PGD family, DAG), else the config class's fixed answer (ASMA family and the universal
    perturbation: targeted; synthesis: untargeted)."""
    return bool(getattr(attack, "config", attack).targeted)


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
        return is_targeted(self)

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

    @property
    def targeted(self) -> bool:
        return is_targeted(self)

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
    """The config of attack ``name`` with ``overrides``: an unknown parameter, or a value that does not fit the
    function's annotation (``step="foo"`` for a Literal, ``steps="ten"`` for an int), fails with one line naming it."""
    cls = CONFIGS[name]
    valid = [f.name for f in dataclasses.fields(cls)]
    for key, value in overrides.items():
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
            raise AttackParamError(f"attack {name!r} has no parameter {key!r}.{hint} Parameters: {', '.join(valid)}.", key)
        expected = None if key == "name" else value_problem(value, cls._types.get(key, Any))
        if expected:
            raise AttackParamError(f"attack {name!r}: {key}={value!r} is not valid: use {expected}", key, value, expected)
    overrides = {k: v for k, v in overrides.items() if k != "name"}
    return cls(**overrides)


def _register(name: str) -> None:
    if name == "up":
        ATTACKS.register(name)(lambda **kw: UniversalAttack(name, _make_config(name, kw)))
    else:
        ATTACKS.register(name)(lambda **kw: Attack(name, _make_config(name, kw), FUNCTIONS[name][0]))


for _name in CONFIGS:
    _register(_name)


def build_attack(name: str, **overrides: Any) -> Attack | UniversalAttack:
    """Build a registered attack with config overrides; unknown names/keys fail with close matches."""
    return ATTACKS.build(name, **overrides)


def build_named_attack(name: str, sections: dict[str, Any] | None = None, **overrides: Any) -> Any:
    """An attack from a key of the config's ``attack`` section (e.g. ``asma_paper``) or a registered name."""
    params = dict((sections or {}).get(name, {}))
    registered = params.pop("name", name)
    params.update(overrides)
    return build_attack(registered, **params)


def bind_task(attack: Any, task: Task) -> Any:
    """Give an attack that scores Dice itself (synthesis: ``structures`` = None) the task's structures, so that its
    Dice is the project's reporting Dice (glaucoma: disc = {rim, cup} and cup, not rim and cup)."""
    config = getattr(attack, "config", None)
    if config is not None and hasattr(config, "structures") and config.structures is None:
        config.structures = [list(ids) for _, ids in task.structures]
    return attack


__all__ = [
    "ATTACKS", "CONFIGS", "FUNCTIONS", "Attack", "AttackParamError", "AsmConfig", "AsmaConfig", "CosPgdConfig",
    "DagConfig", "FgsmConfig", "PgdConfig", "SegPgdConfig", "SsmConfig", "SynthesisConfig", "UniversalAttack", "UpConfig",
    "attack_defaults", "bind_task", "build_attack", "build_named_attack", "is_targeted", "resolve_annotation",
    "value_problem",
]
