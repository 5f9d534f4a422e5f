"""The one progress helper. On a terminal: a tqdm bar (count, rate, and with a total the ETA).
Elsewhere (a log, a pipe, CI): one line on stderr every ``MVR_PROGRESS_SECONDS`` (default 10)
while a step runs, and one when it ends, only for steps that last that long; nothing for quick
ones. ``show=False``, ``--quiet`` or ``MVR_QUIET=1``: nothing at all."""

from __future__ import annotations

import os
import sys
import time


def progress_enabled(show=None):
    if show is not None:
        return bool(show)
    return not _quiet() and sys.stderr.isatty()


def _quiet() -> bool:
    return os.environ.get("MVR_QUIET", "") not in ("", "0")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class Lines:
    """Progress as occasional lines: ``desc: done/total unit (pct), rate unit/s, ETA``."""

    def __init__(self, total=None, desc=None, unit="it", every: float | None = None, stream=None):
        self.total, self.desc, self.units = total, desc or "working", unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")  # docs, batches
        self.every = every if every is not None else float(os.environ.get("MVR_PROGRESS_SECONDS", "10"))
        self.stream = stream or sys.stderr
        self.n = 0
        self.started = self.last = time.monotonic()
        self.printed = False

    def _line(self, final: bool) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.n / elapsed
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        if final:
            return f"mvr: {self.desc}: {done} {self.units} in {_duration(elapsed)} ({rate:.1f} {self.units}/s)"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = f", ETA {_duration((self.total - self.n) / rate)}" if self.total and rate > 0 and self.n < self.total else ""
        return f"mvr: {self.desc}: {done} {self.units}{share}, {rate:.1f} {self.units}/s{eta}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            print(self._line(False), file=self.stream, flush=True)
            self.last, self.printed = now, True

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def close(self) -> None:
        if self.printed:
            print(self._line(True), file=self.stream, flush=True)
            self.printed = False


def progress(total=None, desc=None, unit="it", show=None):
    """A progress reporter with ``update(n)`` and ``close()``: a tqdm bar on a terminal (or with
    ``show=True``), occasional :class:`Lines` elsewhere, nothing with ``show=False`` or MVR_QUIET."""
    if show is None and not _quiet() and not sys.stderr.isatty():
        return Lines(total, desc, unit)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not progress_enabled(show), dynamic_ncols=True)
