"""One default per parameter: calling an attack function with its defaults runs exactly what ``attack=<name>`` runs.

For every registered attack the function's keyword defaults, the config dataclass defaults and the attack section the
CLI composes (``conf/attack/<name>.yaml`` over those defaults) must agree. The test iterates the registry, so a new
attack registered without a config, a yaml, or with defaults that differ somewhere fails it.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from lightning_seg.attacks import ATTACKS, CONFIGS, FUNCTIONS, asm, asma, ssm
from lightning_seg.attacks.config import is_targeted
from lightning_seg.attacks.deformations import TransformConfig
from lightning_seg.attacks.synthesis import synthesis, synthesis_attack
from lightning_seg.config import compose, to_plain

DATA = {"model", "images", "labels", "targets", "mask", "perturbation_mask", "generator", "batches", "target",
        "perturbation"}


def function_defaults(functions: tuple[Any, ...]) -> dict[str, Any]:
    """Keyword hyper-parameters with defaults, read from the functions' signatures (first function wins)."""
    out: dict[str, Any] = {}
    for fn in functions:
        for p in inspect.signature(fn).parameters.values():
            if p.name not in DATA and p.default is not inspect.Parameter.empty:
                out.setdefault(p.name, p.default)
    return out


def mismatches(name: str, functions: tuple[Any, ...], config_cls: type, section: dict[str, Any]) -> list[str]:
    """Disagreements between the function defaults, the config defaults and the composed CLI section of ``name``."""
    config = dataclasses.asdict(config_cls())
    fn = function_defaults(functions)
    missing = "<missing>"
    out = [f"{k}: function {fn.get(k, missing)!r} != config {config.get(k, missing)!r}"
           for k in sorted((set(fn) | set(config)) - {"name", "seed"}) if fn.get(k, missing) != config.get(k, missing)]
    out += [f"{k}: config {config.get(k, missing)!r} != CLI {section.get(k, missing)!r}"
            for k in sorted(set(config) | set(section)) if config.get(k, missing) != section.get(k, missing)]
    if config.get("name") != name:
        out.append(f"config name {config.get('name')!r} != {name!r}")
    return out


@pytest.mark.parametrize("name", ATTACKS.names())
def test_function_config_and_cli_defaults_agree(name: str):
    assert name in CONFIGS and name in FUNCTIONS, f"attack {name!r} is registered without a config / its functions"
    section = to_plain(compose([f"attack={name}", "logger=none"]).attack)[name]
    assert mismatches(name, FUNCTIONS[name], CONFIGS[name], section) == []
    attack = ATTACKS.build(name)
    assert dataclasses.asdict(attack.config) == dataclasses.asdict(CONFIGS[name]())
    if hasattr(attack, "fn"):
        assert attack.fn is FUNCTIONS[name][0]
    # the "targeted" rule agrees everywhere: the attack wrapper, its config, and the function's own default
    assert attack.targeted == is_targeted(attack) == is_targeted(attack.config)
    fixed = function_defaults(FUNCTIONS[name]).get("targeted")
    if fixed is not None:
        assert is_targeted(attack) == fixed


def test_a_mismatching_attack_fails_the_check():
    def fake(model, images, labels, *, mask=None, perturbation_mask=None, eps: float = 0.1, steps: int = 3):
        raise NotImplementedError

    @dataclasses.dataclass
    class FakeConfig:
        name: str = "fake"
        eps: float = 0.2  # disagrees with the function
        steps: int = 3

    section = {"name": "fake", "eps": 0.2, "steps": 5}  # and the yaml disagrees with the config
    problems = mismatches("fake", (fake,), FakeConfig, section)
    assert any(p.startswith("eps: function") for p in problems) and any(p.startswith("steps: config") for p in problems)


def test_asma_defaults_are_the_project_schedule_and_the_paper_stays_available():
    d = function_defaults((asma,))
    assert (d["step"], d["max_iter"], d["iou_threshold"], d["paper_exact"]) == ("normalized", 500, 0.95, False)
    assert function_defaults((asm,))["dynamic_multiplier"] is False and function_defaults((asm,))["adaptive_mask"]
    assert not function_defaults((ssm,))["adaptive_mask"] and not function_defaults((ssm,))["dynamic_multiplier"]
    paper = to_plain(compose(["attack=asma_paper", "logger=none"]).attack)["asma_paper"]
    assert paper["name"] == "asma"
    assert {k: v for k, v in paper.items() if d.get(k) != v and k != "name"} == {
        "max_iter": 2501, "iou_threshold": None, "step": "raw", "step_size": 0.05, "paper_exact": True,
        "return_best": False, "shrink_steps": 0, "refine_steps": 0, "stall_window": None}
    # the project's budget additions are on by default (smallest successful iterate, shrink, bisection, stall stop)
    assert d["return_best"] and d["shrink_steps"] > 0 and d["refine_steps"] > 0 and d["stall_window"] is not None


def test_synthesis_budgets_have_one_default():
    """The registered synthesis, its core function and the transform budgets share one set of defaults."""
    s = function_defaults((synthesis,))
    core = function_defaults((synthesis_attack,))
    assert all(s[k] == v for k, v in core.items() if k in s)
    budgets = dataclasses.asdict(TransformConfig())
    assert all(s[k] == v for k, v in budgets.items() if k in s)
    assert {k for k in s if k in budgets} >= {"eps_morph", "max_disp_px", "eps_bias", "noise_std", "morph_spacing"}
