"""Adversarial attacks on segmentation models: batched pure functions returning an
:class:`AttackResult`, typed configs and the ``ATTACKS`` name registry.

Contract: ``fn(model, images [B,C,H,W] in [0,1], labels long [B,h,w], *, mask=None,
perturbation_mask=None, **hyper) -> AttackResult``; models return logits [B,K,h,w]
(1-channel sigmoid heads are converted to ``[0, z]``). Attacks run in eval mode with frozen
parameters and restore the model's state afterwards (see :mod:`lightning_seg.attacks.guard`).
"""

from __future__ import annotations

from lightning_seg.attacks._common import parse_fraction
from lightning_seg.attacks.apgd import apgd
from lightning_seg.attacks.asma import asm, asma, ssm
from lightning_seg.attacks.config import (
    ATTACKS,
    CONFIGS,
    FUNCTIONS,
    AsmaConfig,
    AsmConfig,
    Attack,
    CosPgdConfig,
    DagConfig,
    FgsmConfig,
    PgdConfig,
    SegPgdConfig,
    SsmConfig,
    SynthesisConfig,
    UniversalAttack,
    UpConfig,
    _config_class,
    _register,
    attack_defaults,
    bind_task,
    build_attack,
    build_named_attack,
    is_targeted,
)
from lightning_seg.attacks.cospgd import cospgd
from lightning_seg.attacks.dag import dag
from lightning_seg.attacks.guard import AttackContext, attack_guard
from lightning_seg.attacks.measure import apsr, binary_logits, l2_norm, linf_norm, per_image_iou, pixel_accuracy
from lightning_seg.attacks.pgd import default_alpha, fgsm, pgd
from lightning_seg.attacks.result import AttackResult
from lightning_seg.attacks.sea import sea
from lightning_seg.attacks.segpgd import segpgd
from lightning_seg.attacks.square import square
from lightning_seg.attacks.universal import (
    UniversalPerturbation,
    hide_class_target,
    universal_attack,
    universal_perturbation,
)

# APGD and SEA: configs derived from the function signatures like every attack's (see attacks/config.py), registered
# here so that attacks/config.py stays as it is.
ApgdConfig = _config_class("ApgdConfig", "apgd", (apgd,), doc="""APGD (Croce & Hein, ICML 2020) with a segmentation
loss (SEA's masked / balanced CE and JS, soft Dice, margin, SegPGD, CosPGD); eps in [0,1] units.""")
SeaConfig = _config_class("SeaConfig", "sea", (sea,), doc="""SEA (Croce, Singh & Hein, ECCV 2024): per-image worst
case over APGD members (balanced masked CE, masked CE, JS) at radius 2 eps -> 1.5 eps -> eps.""")
SquareConfig = _config_class("SquareConfig", "square", (square,), doc="""Square Attack (Andriushchenko et al., ECCV
2020), Linf, query-based black-box: random square updates kept when the Dice (ties: the loss) improves.""")
for _name, _fn, _cfg in (("apgd", apgd, ApgdConfig), ("sea", sea, SeaConfig), ("square", square, SquareConfig)):
    FUNCTIONS[_name], CONFIGS[_name] = (_fn,), _cfg
    _register(_name)

__all__ = [
    "ATTACKS",
    "CONFIGS",
    "FUNCTIONS",
    "ApgdConfig",
    "AsmConfig",
    "AsmaConfig",
    "Attack",
    "AttackContext",
    "AttackResult",
    "CosPgdConfig",
    "DagConfig",
    "FgsmConfig",
    "PgdConfig",
    "SeaConfig",
    "SegPgdConfig",
    "SquareConfig",
    "SsmConfig",
    "SynthesisConfig",
    "UniversalAttack",
    "UniversalPerturbation",
    "UpConfig",
    "apgd",
    "apsr",
    "asm",
    "asma",
    "attack_defaults",
    "attack_guard",
    "binary_logits",
    "bind_task",
    "build_attack",
    "build_named_attack",
    "cospgd",
    "dag",
    "default_alpha",
    "fgsm",
    "hide_class_target",
    "is_targeted",
    "l2_norm",
    "linf_norm",
    "parse_fraction",
    "per_image_iou",
    "pgd",
    "pixel_accuracy",
    "sea",
    "segpgd",
    "square",
    "ssm",
    "universal_attack",
    "universal_perturbation",
]
