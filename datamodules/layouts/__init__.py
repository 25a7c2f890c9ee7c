"""Real-data layouts for ISIC and glaucoma datasets: discovery, decoding and bad-data checks.

Typical use (datamodule ``setup``)::

    found = discover_isic(root)                       # names only, fast
    problems = found.problems + check_records(found.records, "lesion")
    if problems and not skip_bad:
        raise DataError.from_problems(problems, root=found.root)
    image, mask = load_pair(record, "lesion")         # uint8 HxWx3 RGB, uint8 HxW indices

Layout trees are documented in ``isic.py`` and ``glaucoma.py``; mask rules in ``reading.py``;
``fake_trees.py`` writes tiny trees with the real naming for tests.
"""

from __future__ import annotations

from .checks import bad_keys, check_records
from .glaucoma import discover_glaucoma
from .isic import discover_generic, discover_isic
from .reading import load_pair, read_grey, read_rgb
from .records import (
    GLAUCOMA_LAYOUTS,
    ISIC_LAYOUTS,
    SKIP_OPTION,
    SOFT_THRESHOLDS,
    TASKS,
    DataError,
    DataProblem,
    Discovery,
    PairRecord,
    format_problems,
)

__all__ = [
    "GLAUCOMA_LAYOUTS",
    "ISIC_LAYOUTS",
    "SKIP_OPTION",
    "SOFT_THRESHOLDS",
    "TASKS",
    "DataError",
    "DataProblem",
    "Discovery",
    "PairRecord",
    "bad_keys",
    "check_records",
    "discover_generic",
    "discover_glaucoma",
    "discover_isic",
    "format_problems",
    "load_pair",
    "read_grey",
    "read_rgb",
]
