"""Name-to-builder registries (timm / segmentation_models_pytorch style).

One ``Registry`` per concern (models, attacks, defenses, target generators). Unknown
names fail early with the closest registered names, so a typo on the command line
(``attack=asmma``) produces one actionable message instead of a KeyError deep inside.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps lower-case names to builders (callables returning a ``T``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        key = name.lower()

        def decorator(builder: Callable[..., T]) -> Callable[..., T]:
            if key in self._builders and self._builders[key] is not builder:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[key] = builder
            return builder

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        key = str(name).lower()
        if key not in self._builders:
            close = difflib.get_close_matches(key, self._builders, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}.{hint} Registered {self.kind}s: {', '.join(sorted(self._builders))}."
            )
        return self._builders[key]

    def build(self, name: str, /, **kwargs: Any) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_target(spec: str) -> Any:
    """The object ``package.module:name`` (also ``package.module.name``; the name may be a dotted attribute path)
    names, for user-supplied builders (models, optimisers, schedulers, callbacks); ValueError in one line otherwise."""
    module_name, sep, attr = str(spec).partition(":")
    if not sep:
        module_name, _, attr = str(spec).rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{spec!r} is not of the form package.module:name")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - a user's module may fail to import in any way
        raise ValueError(f"cannot import {module_name} ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                         "is it installed or on PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = {n.lower(): n for n in dir(obj) if not n.startswith("_")}
            close = difflib.get_close_matches(part.lower(), list(names), n=3, cutoff=0.6)
            hint = f" Did you mean: {', '.join(repr(names[c]) for c in close)}?" if close else ""
            raise ValueError(f"{getattr(obj, '__name__', module_name)} has no attribute {part!r}.{hint}")
        obj = getattr(obj, part)
    return obj
