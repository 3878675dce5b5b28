"""Progress of long loops (decoding, epochs, sweeps): a tqdm bar on a terminal; where stderr is not
a terminal (nohup, CI, Slurm), a log line at most every ``LOG_EVERY_S`` seconds with the count,
the rate and the time left, so that a log never stays silent for minutes; nothing under
``--quiet``."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("augpipe")

LOG_EVERY_S = 30.0

_quiet = {"on": False}


def set_quiet(quiet: bool) -> None:
    """``--quiet``: no bars and no progress lines, in this process, until set back."""
    _quiet["on"] = bool(quiet)


def is_quiet() -> bool:
    return _quiet["on"]


def mode(enabled: bool | None = None) -> str:
    """ "bar", "log" or "off". ``enabled``: True asks for a bar, False for nothing, None decides
    from stderr (a terminal gets a bar, anything else log lines)."""
    if is_quiet() or enabled is False:
        return "off"
    if enabled is True:
        return "bar"
    return "bar" if sys.stderr.isatty() else "log"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class LogLines:
    """The non-terminal form of a bar: wraps an iterable and logs where it is, at most every
    ``every`` seconds (the first line after ``every`` seconds: a short loop logs nothing)."""

    def __init__(
        self,
        iterable,
        total: int | None,
        desc: str,
        unit: str = "it",
        every: float | None = None,
        clock=None,
        per_item: tuple[int, str] | None = None,
    ):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.clock = clock or time.monotonic
        self.every = LOG_EVERY_S if every is None else every
        self.per_item = per_item  # (images, "images") per step: the rate a reader wants to see
        self.n = 0

    def __iter__(self):
        start = last = self.clock()
        for item in self.iterable:
            yield item
            self.n += 1
            now = self.clock()
            if now - last >= self.every:
                last = now
                log.info("%s", self.line(now - start))

    def update(self, n: int = 1) -> None:
        self.n += n

    def line(self, elapsed: float) -> str:
        rate = self.n / elapsed if elapsed > 0 else 0.0
        shown = f"{rate * self.per_item[0]:.0f} {self.per_item[1]}/s" if self.per_item else f"{rate:.3g} {self.unit}/s"
        if self.total:
            left = duration((self.total - self.n) / rate) if rate > 0 else "?"
            return (
                f"{self.desc}: {self.unit} {self.n:,}/{self.total:,} ({100 * self.n / self.total:.0f} %), "
                f"{shown}, about {left} left"
            )
        return f"{self.desc}: {self.n:,} {self.unit}s, {shown}"


def track(
    iterable,
    total: int | None,
    desc: str,
    *,
    enabled: bool | None = None,
    unit: str = "it",
    leave: bool = False,
    per_item: tuple[int, str] | None = None,
):
    """``iterable`` with its progress shown as ``mode(enabled)`` says."""
    how = mode(enabled)
    if how == "off":
        return iterable
    if how == "log":
        return LogLines(iterable, total, desc, unit, per_item=per_item)
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=leave, file=sys.stderr, dynamic_ncols=True, unit=unit)


class _LoggedCounter(LogLines):
    """``counter``'s non-terminal form: counts what it is told, logs at most every ``every`` s."""

    def __init__(self, total, desc, unit, clock=None):
        super().__init__((), total, desc, unit, clock=clock)
        self.start = self.last = self.clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            log.info("%s", self.line(now - self.start))

    def close(self) -> None:
        pass


class _NoCounter:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def counter(total: int, desc: str, *, enabled: bool | None = None, unit: str = "it"):
    """A progress counter for work done in chunks (``update(n)``, ``close()``), shown as
    ``mode(enabled)`` says."""
    how = mode(enabled)
    if how == "off":
        return _NoCounter()
    if how == "log":
        return _LoggedCounter(total, desc, unit)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)
