"""Records shared by all dataset layouts: one image/mask pair, a discovery result, problems.

Discovery (``isic.py``, ``glaucoma.py``) only looks at file *names* and returns
:class:`PairRecord` objects plus the :class:`DataProblem` list of files it could not
pair. Decoding (``reading.py``) and the full check (``checks.py``) add problems found
inside the files. Every problem names the file and what is wrong, and
:func:`format_problems` turns any number of them into the one message users see
(a pair dropped silently would shrink the data set unnoticed, so unmatched ids fail loudly, all listed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Name of the datamodule option that skips bad pairs (owned by the datamodule config).
SKIP_OPTION = "data.skip_bad=true"

#: Longest problem list printed in full; the rest is summarised by a count.
MAX_LISTED = 200

ISIC_LAYOUTS = ("isic2016", "isic2017", "isic2018", "generic")
GLAUCOMA_LAYOUTS = ("refuge", "drishti", "rimone_r3", "rimone_dl", "origa", "generic")
TASKS = ("lesion", "disc", "disc_cup")
SOFT_THRESHOLDS = ("majority", "all", "any")


@dataclass(frozen=True)
class DataProblem:
    """One bad file or pair: ``path`` is the offending file, ``key`` the pair id."""

    path: Path
    key: str
    problem: str


@dataclass(frozen=True)
class PairRecord:
    """One image and the file(s) holding its ground truth.

    ``masks`` maps a role to a file: ``"mask"`` (index / binary / grey-coded mask),
    ``"disc"`` and ``"cup"`` (separate binary or soft-map files) or ``"mat"`` (ORIGA).
    ``split`` is the official split when the layout defines one ("train"|"val"|"test").
    Records are plain picklable data so they can travel to dataloader workers.
    """

    key: str
    image: Path
    masks: Mapping[str, Path]
    layout: str
    split: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Accept str paths from callers but always store Path objects (frozen => setattr trick).
        object.__setattr__(self, "image", Path(self.image))
        object.__setattr__(self, "masks", {k: Path(v) for k, v in self.masks.items()})
        object.__setattr__(self, "meta", dict(self.meta))

    def __hash__(self) -> int:  # dict fields are unhashable; key + layout + image identify a pair
        return hash((self.key, self.layout, self.image))


@dataclass
class Discovery:
    """Result of scanning a dataset root: detected layout, pairs, and unpairable files."""

    layout: str
    records: list[PairRecord]
    problems: list[DataProblem]
    root: Path | None = None

    def split(self, name: str) -> list[PairRecord]:
        """Records of one official split (empty when the layout has none)."""
        return [r for r in self.records if r.split == name]


def _shown(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(Path(path).relative_to(root))
        except ValueError:
            pass
    return str(path)


def format_problems(
    problems: Sequence[DataProblem], *, root: Path | None = None, max_listed: int = MAX_LISTED
) -> str:
    """The one clear message for any number of bad files (also used for the skip warning).

    Lists every bad file (path relative to ``root`` when given) with what is wrong,
    then how to fix it or skip the bad pairs with ``data.skip_bad=true``.
    """
    if not problems:
        return "no data problems found"
    root = Path(root) if root is not None else None
    n = len(problems)
    where = f" under {root}" if root is not None else ""
    lines = [f"{n} bad data file{'s' if n != 1 else ''}{where}:"]
    for p in list(problems)[:max_listed]:
        lines.append(f"  - {_shown(p.path, root)} [{p.key}]: {p.problem}")
    if n > max_listed:
        lines.append(f"  ... and {n - max_listed} more (see check_records() output for the full list)")
    lines.append(
        "Fix: repair or replace these files (add the missing masks, re-extract the zip), "
        f"or set {SKIP_OPTION} to skip the bad pairs with a warning."
    )
    return "\n".join(lines)


class DataError(ValueError):
    """Bad or unrecognised data. The message names each bad file, what is wrong, and the fix.

    ``problems`` keeps the structured list (empty for whole-root errors such as
    "unrecognised layout").
    """

    def __init__(self, message: str, problems: Sequence[DataProblem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)

    @classmethod
    def from_problems(cls, problems: Sequence[DataProblem], *, root: Path | None = None) -> DataError:
        return cls(format_problems(problems, root=root), problems)


def check_task(task: str, layout: str) -> None:
    """Raise early for a task that the layout cannot provide (e.g. ``disc_cup`` on ISIC)."""
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    isic = layout.startswith("isic")
    if isic and task != "lesion":
        raise DataError(f"layout {layout!r} is an ISIC skin-lesion layout; use task='lesion', not {task!r}")
    if layout in GLAUCOMA_LAYOUTS and layout != "generic" and task == "lesion":
        raise DataError(f"layout {layout!r} is a glaucoma layout; use task='disc' or 'disc_cup', not 'lesion'")


def check_soft_threshold(soft_threshold: str) -> None:
    if soft_threshold not in SOFT_THRESHOLDS:
        raise DataError(
            f"unknown soft_threshold {soft_threshold!r}; use one of {', '.join(SOFT_THRESHOLDS)} "
            "(majority: >= 0.5*255, all: > 254, any: > 0)"
        )


def dedupe_keys(records: list[PairRecord], problems: list[DataProblem]) -> list[PairRecord]:
    """Keep the first record of each key; later duplicates become problems (keys must be unique)."""
    seen: dict[str, PairRecord] = {}
    out: list[PairRecord] = []
    for r in records:
        if r.key in seen:
            problems.append(
                DataProblem(r.image, r.key, f"duplicate id: also used by {seen[r.key].image}; ids must be unique")
            )
            continue
        seen[r.key] = r
        out.append(r)
    return out
