"""Decode every pair once, before training, and collect all problems.

Running this up front (datamodule ``setup``) is what keeps bad files from crashing a
dataloader worker mid-epoch: the datamodule either raises one :class:`DataError`
listing every bad file, or, with ``data.skip_bad=true``, warns with the same text and
drops the bad pairs. The same decode fills the datamodule's decode cache (``keep``), so setup decodes each pair once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from lightning_seg.config import DataConfig

from .reading import load_pair
from .records import DataError, DataProblem, PairRecord, check_soft_threshold, check_task

#: ``keep(record, image, mask)``: receives every pair that passed the check (e.g. to cache it)
Keep = Callable[[PairRecord, np.ndarray, np.ndarray], None]


def _check_one(record: PairRecord, task: str, soft_threshold: str, keep: Keep | None = None) -> list[DataProblem]:
    try:
        image, mask = load_pair(record, task, soft_threshold=soft_threshold)
    except DataError as err:
        return err.problems or [DataProblem(record.image, record.key, str(err))]
    except Exception as err:  # never let one odd file abort the whole check
        return [DataProblem(record.image, record.key, f"unexpected error while decoding: {type(err).__name__}: {err}")]
    if keep is not None:  # outside the try: a failure of the caller's code is not a problem of the data
        keep(record, image, mask)
    return []


def check_records(
    records: Sequence[PairRecord], task: str, *, soft_threshold: str = DataConfig.soft_threshold, workers: int = 4,
    keep: Keep | None = None,
) -> list[DataProblem]:
    """Decode every pair and return all problems, in record order; never raises for a bad pair. ``keep(record, image,
    mask)`` is called (in the pool's threads) with each good pair as decoded, before it is dropped.

    Configuration mistakes (unknown ``task``/``soft_threshold``, a task the layout cannot
    provide) still raise :class:`DataError` at once, since no pair could pass.
    Decoding runs in a thread pool (PIL and numpy release the GIL while decoding).
    """
    check_soft_threshold(soft_threshold)
    for layout in sorted({r.layout for r in records}):
        check_task(task, layout)
    if workers <= 1 or len(records) <= 1:
        results = [_check_one(r, task, soft_threshold, keep) for r in records]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda r: _check_one(r, task, soft_threshold, keep), records))
    return [p for probs in results for p in probs]


def bad_keys(problems: Sequence[DataProblem]) -> set[str]:
    """Keys of the pairs named in ``problems`` (for ``skip_bad`` filtering)."""
    return {p.key for p in problems}
