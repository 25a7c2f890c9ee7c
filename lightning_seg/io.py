"""Atomic file writes: a result or config file is either complete or absent, never half-written."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | Path, write: Callable[[IO[Any]], None], *, binary: bool = False) -> Path:
    """Write through ``write(handle)`` into a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; results must be readable like any other file
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows within one file system
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def write_json(path: str | Path, data: Any) -> Path:
    return atomic_write(path, lambda f: json.dump(data, f, indent=2, sort_keys=False, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # tensors and numpy values
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))

    def write(f: io.TextIOBase) -> None:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(path, write)


def write_figure(path: str | Path, fig: Any) -> Path:
    """A matplotlib Figure laid out (``tight_layout``), written atomically as PNG, then closed (figures live in
    pyplot's registry until closed)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()), binary=True)
