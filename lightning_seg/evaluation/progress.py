"""Progress of long work (each attack, the defense report, the robustness sweep): one bar per phase.

In a terminal (``stream.isatty()``) a tqdm bar named after the phase, with done / total, rate, ETA and a postfix
(e.g. the success so far). When the output is not a terminal (SLURM logs, pipes) a plain line on ``stream``
(stderr) when the phase starts, at most every ``interval`` seconds (30 by default) while it runs, and when it ends,
each with done / total, rate and ETA. A heartbeat thread writes the line also when no unit finished for
``interval`` seconds (one long batch), so the log never stays silent longer than that. Only rank 0 prints
(``RANK`` / ``LOCAL_RANK``, as Lightning's ``rank_zero_only``).

Attacks report no per-iteration count without host syncs, so attack phases advance per batch, by its images.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

INTERVAL_S = 30.0


def is_rank_zero() -> bool:
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        value = os.environ.get(var)
        if value not in (None, ""):
            try:
                return int(value) == 0
            except ValueError:
                return True
    return True


def format_seconds(seconds: float | None) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m40s``; None (unknown) -> ``?``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class Progress:
    """Progress of one phase: ``total`` units (images, or phases of a report) named ``desc``.

    ``update(n, **postfix)`` counts ``n`` units done; ``set_total`` changes the total (the defense report knows its
    phases once its defenses are built); ``close`` ends the phase (a final line off a terminal). ``tty``: None reads
    ``stream.isatty()``; ``clock``: seconds (tests pass a fake one); ``heartbeat``: the thread that prints while no
    unit finishes (off a terminal; off by default with a fake clock)."""

    counts_images = True  # attack_batches advances it by the images of each batch (a plain tqdm bar: by one)

    def __init__(self, desc: str, total: int, *, unit: str = "img", stream: IO[str] | None = None,
                 clock: Callable[[], float] = time.monotonic, interval: float = INTERVAL_S, tty: bool | None = None,
                 enabled: bool | None = None, heartbeat: bool | None = None) -> None:
        self.desc, self.total, self.unit, self.done = desc, int(total), unit, 0
        self.stream = stream if stream is not None else sys.stderr
        self.clock, self.interval = clock, interval
        self.enabled = is_rank_zero() if enabled is None else enabled
        self.tty = _isatty(self.stream) if tty is None else tty
        self.postfix: dict[str, Any] = {}
        self.start = self.last = clock()
        self.closed = False
        self._lock = threading.Lock()
        self._bar = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not self.enabled:
            return
        if self.tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True)
            return
        self._write(f"{desc}: started" + (f", {self.total} {unit}" if self.total else ""))  # 0: set_total follows
        if heartbeat if heartbeat is not None else clock is time.monotonic:
            self._thread = threading.Thread(target=self._beat, name=f"progress {desc}", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ counting
    def update(self, n: int = 1, **postfix: Any) -> None:
        with self._lock:
            self.done += int(n)
            self.postfix.update(postfix)
            if not self.enabled:
                return
            if self._bar is not None:
                if postfix:
                    self._bar.set_postfix(self.postfix, refresh=False)
                self._bar.update(int(n))
                return
            if self.clock() - self.last >= self.interval:
                self._log()

    def set_postfix(self, **postfix: Any) -> None:
        with self._lock:
            self.postfix.update(postfix)
            if self._bar is not None:
                self._bar.set_postfix(self.postfix)

    def set_total(self, total: int) -> None:
        with self._lock:
            self.total = int(total)
            if self._bar is not None:
                self._bar.total = self.total
                self._bar.refresh()

    def close(self, stopped: bool = False) -> None:
        """End the phase; ``stopped``: it ended early (an exception), the final line says ``stopped after``."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._stop.set()
            if not self.enabled:
                return
            if self._bar is not None:
                self._bar.close()
            else:
                self._log(final="stopped after" if stopped else "done in")
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def __enter__(self) -> Progress:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(stopped=exc_type is not None)

    # ------------------------------------------------------------------ lines off a terminal
    def line(self, final: str | None = None) -> str:
        """``<desc>: <done>/<total> <unit> (<pct> %), <rate> <unit>/s, ETA <time>[, postfix]``; ``final``: ``done in`` or
        ``stopped after`` the elapsed time instead of the ETA."""
        elapsed = max(self.clock() - self.start, 0.0)
        rate = self.done / elapsed if elapsed > 0 else None
        share = f" ({100 * self.done / self.total:.0f} %)" if self.total else ""
        speed = f"{rate:.3g} {self.unit}/s" if rate else f"? {self.unit}/s"
        if final:
            when = f"{final} {format_seconds(elapsed)}"
        else:
            eta = (self.total - self.done) / rate if rate else None
            when = f"ETA {format_seconds(eta)}, elapsed {format_seconds(elapsed)}"
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        return f"{self.desc}: {self.done}/{self.total} {self.unit}{share}, {speed}, {when}{extra}"

    def _log(self, final: str | None = None) -> None:
        self.last = self.clock()
        self._write(self.line(final))

    def _write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def tick(self) -> None:
        """Write the line if ``interval`` seconds passed since the last one (the heartbeat calls it)."""
        with self._lock:
            if self.enabled and self._bar is None and not self.closed and self.clock() - self.last >= self.interval:
                self._log()

    def _beat(self) -> None:
        while not self._stop.wait(min(self.interval, 5.0)):
            self.tick()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def advance(progress: Any, images: int, **postfix: Any) -> None:
    """Count one finished batch of ``images`` on ``progress``: a :class:`Progress` by its images (with ``postfix``),
    any other bar (a plain tqdm) by one batch; None: nothing."""
    if progress is None:
        return
    if getattr(progress, "counts_images", False):
        progress.update(images, **postfix)
    else:
        progress.update(1)


__all__ = ["INTERVAL_S", "Progress", "advance", "format_seconds", "is_rank_zero"]
