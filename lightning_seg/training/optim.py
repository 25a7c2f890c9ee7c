"""The optimiser and learning-rate scheduler of the ``optim`` config section (:class:`~lightning_seg.config.OptimConfig`).

``optim.name`` is any ``torch.optim`` optimiser, matched case-insensitively (``adamw``, ``adam``, ``sgd``, ``rmsprop``,
...) or ``package.module:Class``; it gets ``optim.lr``, ``optim.weight_decay`` and ``optim.params``.
``optim.scheduler`` is ``none``, ``cosine`` (the project's linear warm-up + cosine decay per step), a preset (``step``,
``plateau``, ``onecycle``), any ``torch.optim.lr_scheduler`` class by name (``MultiStepLR``, ``exponentiallr``, ...)
or ``package.module:Class``; it gets ``optim.scheduler_params``, and the values a run determines are filled in unless
given: OneCycleLR's ``max_lr`` (``optim.lr``) and ``total_steps``, CosineAnnealingLR's ``T_max`` (the run's steps or
epochs), ReduceLROnPlateau's ``mode`` (``max``, ``min`` for a loss). :func:`check_optim` checks a section when the
config is composed: names, parameter names (with the closest match), value types, and both objects are built once on
a dummy parameter.
"""

from __future__ import annotations

import difflib
import inspect
import math
from typing import Any

import torch
from torch.optim import Optimizer, lr_scheduler

from lightning_seg.registry import import_target

SCHEDULER_PRESETS = {"step": "StepLR", "plateau": "ReduceLROnPlateau", "onecycle": "OneCycleLR"}
BUILT_IN = ("cosine", "none")  # cosine: lightning_seg.training.module.warmup_cosine, stepped every optimiser step
# schedulers built from Python callables or other scheduler objects, which a config cannot hold
_UNCONFIGURABLE = {"LambdaLR", "MultiplicativeLR", "SequentialLR", "ChainedScheduler", "LRScheduler", "_LRScheduler"}
_STEP_INTERVAL = {"OneCycleLR", "CyclicLR"}  # schedulers whose natural unit is the optimiser step


def optimizer_classes() -> dict[str, type[Optimizer]]:
    """Lower-case name -> every optimiser class of ``torch.optim``."""
    out = {}
    for name in dir(torch.optim):
        cls = getattr(torch.optim, name)
        if isinstance(cls, type) and issubclass(cls, Optimizer) and cls is not Optimizer:
            out[name.lower()] = cls
    return out


def scheduler_classes() -> dict[str, type]:
    """Lower-case name -> every ``torch.optim.lr_scheduler`` class a config can build."""
    out = {}
    for name in dir(lr_scheduler):
        cls = getattr(lr_scheduler, name)
        if (isinstance(cls, type) and issubclass(cls, (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau))
                and name not in _UNCONFIGURABLE):
            out[name.lower()] = cls
    return out


def _is_target(spec: str) -> bool:
    return ":" in spec or "." in spec.strip(".")


def optimizer_class(name: str) -> type[Optimizer]:
    if _is_target(name):
        cls = import_target(name)
        if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
            raise ValueError(f"optim.name={name!r} is not a torch.optim.Optimizer subclass")
        return cls
    classes = optimizer_classes()
    if name.lower() in classes:
        return classes[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(classes), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ValueError(f"optim.name={name!r} is not valid: use a torch.optim optimiser ({', '.join(sorted(classes))}) "
                     f"or package.module:Class.{hint}")


def scheduler_class(name: str) -> type | None:
    """The scheduler class ``optim.scheduler`` names; None for the built-in ``cosine`` and ``none``."""
    if name in BUILT_IN:
        return None
    if _is_target(name):
        cls = import_target(name)
        if not (isinstance(cls, type) and issubclass(cls, (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau))):
            raise ValueError(f"optim.scheduler={name!r} is not a torch.optim.lr_scheduler.LRScheduler subclass")
        return cls
    classes = scheduler_classes()
    key = SCHEDULER_PRESETS.get(name, name).lower()
    if key in classes:
        return classes[key]
    if key in {n.lower() for n in _UNCONFIGURABLE}:
        raise ValueError(f"optim.scheduler={name!r} is not valid: it is built from Python callables or other "
                         "schedulers, which a config cannot hold; use package.module:Class for a scheduler of your own")
    names = {n: cls.__name__ for n, cls in classes.items()}
    close = difflib.get_close_matches(name.lower(), [*BUILT_IN, *SCHEDULER_PRESETS, *names], n=1)
    hint = f" Did you mean '{names.get(close[0], close[0])}'?" if close else ""
    raise ValueError(f"optim.scheduler={name!r} is not valid: use one of {', '.join([*BUILT_IN, *SCHEDULER_PRESETS])}, "
                     f"a torch.optim.lr_scheduler class ({', '.join(sorted(names.values()))}) or package.module:Class."
                     f"{hint}")


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def _accepts(cls: type, name: str) -> bool:
    parameters = inspect.signature(cls.__init__).parameters
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def optimizer_kwargs(optim: Any) -> dict[str, Any]:
    """The optimiser's keyword arguments: ``optim.lr``, ``optim.weight_decay`` (where the class has it) and
    ``optim.params``."""
    cls = optimizer_class(optim.name)
    kwargs: dict[str, Any] = {"lr": optim.lr}
    if _accepts(cls, "weight_decay"):
        kwargs["weight_decay"] = optim.weight_decay
    return {**kwargs, **{k: _freeze(v) for k, v in dict(optim.params).items()}}


def build_optimizer(parameters: Any, optim: Any) -> Optimizer:
    """``optim.name`` over ``parameters``. The default (adamw) is ``torch.optim.AdamW(parameters, lr=optim.lr,
    weight_decay=optim.weight_decay)``."""
    return optimizer_class(optim.name)(parameters, **optimizer_kwargs(optim))


def interval(optim: Any, cls: type | None) -> str:
    """When the scheduler steps: ``optim.interval``, else per optimiser step for cosine / OneCycleLR / CyclicLR and
    per epoch for the others."""
    if optim.interval:
        return str(optim.interval)
    return "step" if cls is None or cls.__name__ in _STEP_INTERVAL else "epoch"


def plateau_mode(monitor: str) -> str:
    """ReduceLROnPlateau's default mode for a monitored key: ``min`` for a loss, ``max`` for Dice / IoU."""
    return "min" if "loss" in monitor.rsplit("/", 1)[-1] else "max"


def scheduler_kwargs(optim: Any, cls: type, *, total_steps: int, total_epochs: int) -> dict[str, Any]:
    """``optim.scheduler_params`` over the values the run determines (see the module docstring)."""
    given = {k: _freeze(v) for k, v in dict(optim.scheduler_params).items()}
    span = total_steps if interval(optim, cls) == "step" else total_epochs
    derived: dict[str, Any] = {}
    if issubclass(cls, lr_scheduler.OneCycleLR):
        derived["max_lr"] = optim.lr
        if "epochs" not in given and "steps_per_epoch" not in given:
            derived["total_steps"] = span
    elif issubclass(cls, lr_scheduler.CosineAnnealingLR):
        derived["T_max"] = span
    elif issubclass(cls, lr_scheduler.ReduceLROnPlateau):
        derived["mode"] = plateau_mode(optim.monitor)
    return {**derived, **given}


def build_scheduler(optimizer: Optimizer, optim: Any, trainer: Any) -> dict[str, Any] | None:
    """The Lightning ``lr_scheduler`` config of ``optim.scheduler`` (None for ``none``). ``trainer`` gives the run's
    length: ``estimated_stepping_batches`` (max_epochs or max_steps, accumulate_grad_batches, devices included)."""
    if optim.scheduler == "none":
        return None
    cls = scheduler_class(optim.scheduler)
    total = max(1, int(trainer.estimated_stepping_batches))
    if cls is None:  # cosine, as before the scheduler could be chosen: a step-wise LambdaLR
        from lightning_seg.training.module import warmup_cosine

        warmup = int(optim.warmup_fraction * total)
        scheduler = lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
        return {"scheduler": scheduler, "interval": interval(optim, None)}
    scheduler = cls(optimizer, **scheduler_kwargs(optim, cls, total_steps=total, total_epochs=_epochs(trainer, total)))
    config: dict[str, Any] = {"scheduler": scheduler, "interval": interval(optim, cls)}
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        config["monitor"] = optim.monitor
        every = getattr(trainer, "check_val_every_n_epoch", None)
        if config["interval"] == "epoch" and optim.monitor.startswith("val") and isinstance(every, int) and every > 1:
            config["frequency"] = every  # the monitored value exists only after the epochs that validate
    return config


def _epochs(trainer: Any, total_steps: int) -> int:
    """The epochs the run trains: ``total_steps`` over the optimiser steps of one epoch (max_steps may end it before
    max_epochs)."""
    batches = getattr(trainer, "num_training_batches", math.inf)
    per_epoch = math.ceil(batches / max(1, int(getattr(trainer, "accumulate_grad_batches", 1)))) if math.isfinite(batches) else 0
    if per_epoch > 0:
        return max(1, math.ceil(total_steps / per_epoch))
    return max(1, int(trainer.max_epochs or 1))


def check_optim(optim: Any) -> None:
    """One ValueError line for a section that would not build: unknown names or parameters (with the closest match),
    values of the wrong type, values the classes refuse (both are built on a dummy parameter)."""
    from lightning_seg.config import check_arguments

    cls = optimizer_class(optim.name)
    check_arguments("optim.params", cls, dict(optim.params), skip=("params",),
                    taken={"lr": "optim.lr", "weight_decay": "optim.weight_decay"})
    if not _accepts(cls, "weight_decay") and optim.weight_decay != 0:
        raise ValueError(f"optim.name={optim.name} ({cls.__name__}) has no weight decay: set optim.weight_decay=0")
    dummy = [torch.nn.Parameter(torch.zeros(2, 2))]
    try:
        optimizer = build_optimizer(dummy, optim)
    except Exception as e:  # noqa: BLE001 - a class of the user's choice may raise anything: one line
        raise ValueError(f"optim.name={optim.name} with optim.params={_show(dict(optim.params))}: {_first_line(e)}") from None
    sched = scheduler_class(optim.scheduler)
    given = dict(optim.scheduler_params)
    if sched is None:
        if given:
            raise ValueError(f"optim.scheduler_params={_show(given)} is not valid for optim.scheduler={optim.scheduler}, "
                             "which takes none (cosine: optim.warmup_fraction): remove them")
        return
    kwargs = scheduler_kwargs(optim, sched, total_steps=100, total_epochs=10)
    missing = check_arguments("optim.scheduler_params", sched, given, skip=("optimizer",), filled=kwargs)
    if missing:
        needed = ", ".join(f"optim.scheduler_params.{n}=..." for n in missing)
        raise ValueError(f"optim.scheduler={optim.scheduler} ({sched.__name__}) needs {needed}")
    try:
        sched(optimizer, **kwargs)
    except Exception as e:  # noqa: BLE001 - a class of the user's choice may raise anything: one line
        raise ValueError(f"optim.scheduler={optim.scheduler} with optim.scheduler_params={_show(given)}: "
                         f"{_first_line(e)}") from None


def _show(value: Any) -> str:
    from lightning_seg.config import _show as show

    return show(value)


def _first_line(e: BaseException) -> str:
    text = str(e)
    return text.splitlines()[0] if text.strip() else type(e).__name__
