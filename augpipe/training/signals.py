"""SIGINT and SIGTERM during training: finish the current step, save, write the run directory,
and exit 130 or 143, as Slurm, Kubernetes and ``timeout`` expect of a job they stop."""
from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("augpipe")

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class Interrupted(KeyboardInterrupt):
    """A stop signal that arrived where the run could not finish a step first (before training
    started, or a second signal). A KeyboardInterrupt, so code that handles Ctrl-C handles it."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class StopSignals:
    """While active, SIGINT and SIGTERM raise ``Interrupted``; inside ``deferred()`` (the
    training loop) the first one only records a request that the loop honours at the next step
    boundary, and a second one stops at once. Handlers are installed only in the main thread
    (Python allows no other), and the previous ones are put back on exit."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.received: str | None = None
        self._deferring = False
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if not self._deferring or self.received is not None:
            raise Interrupted(self.received or name)
        self.received = name
        log.warning("%s received: finishing the current step and saving last.pt (send it again to stop at once)",
                    name)

    def requested(self) -> bool:
        return self.received is not None

    def deferred(self):
        signals = self

        class _Deferred:
            def __enter__(self):
                signals._deferring = True

            def __exit__(self, *exc):
                signals._deferring = False

        return _Deferred()
