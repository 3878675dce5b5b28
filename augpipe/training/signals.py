"""SIGINT and SIGTERM during training: finish the current step, save, write the run directory,
and exit 130 or 143, as Slurm, Kubernetes and ``timeout`` expect of a job they stop."""

from __future__ import annotations

import contextlib
import logging
import os
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
        # A rank under torchrun (or --devices N): the launcher passes on the signal it got, so a
        # rank signalled with its process group gets the same signal twice, and that is one
        # request. The launcher's SIGKILL after its shutdown timeout is the stop at once there.
        self._launcher_forwards = "TORCHELASTIC_RUN_ID" in os.environ

    def __enter__(self) -> StopSignals:
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
        if self._deferring and self._launcher_forwards and self.received == name:
            return
        if not self._deferring or self.received is not None:
            raise Interrupted(self.received or name)
        self.received = name
        if os.environ.get("RANK", "0") != "0":
            return  # rank 0 speaks for a distributed run
        log.warning("%s received: finishing the current step and saving last.pt (send it again to stop at once)", name)

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


# -- the one policy for child processes ---------------------------------------------------------
# ``timeout``, Slurm, ``kill -- -PGID`` and a terminal's Ctrl-C signal the whole process group:
# every loader worker and scan process gets the signal at the same moment as the main process.
# Only the main process decides how a run ends (finish the step, save, summary, exit 130/143);
# a child that died of the signal, or raised KeyboardInterrupt, would instead end the run with
# "DataLoader worker is killed by signal" and a traceback. So children never act on it.
_STOP = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def children_start_deaf():
    """Block SIGINT and SIGTERM in this thread while it starts child processes: a forked child
    inherits the blocked mask, so a signal that arrives before the child has set its own
    handlers (``loader_worker_signals``, ``scan_worker_signals``) waits instead of running the
    parent's handler there. The parent gets its pending signals as soon as the block ends."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _unblock() -> None:
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP)


def loader_worker_signals() -> None:
    """A DataLoader worker ignores SIGINT and SIGTERM: the main process stops the run at a step
    boundary and then shuts its workers down itself (or they leave when it is gone: torch's
    workers watch their parent)."""
    for sig in _STOP:
        signal.signal(sig, signal.SIG_IGN)
    _unblock()


def scan_worker_signals() -> None:
    """An image-scan process ignores SIGINT (Ctrl-C reaches the main process, which stops the
    scan) and dies quietly of SIGTERM, as the pool's shutdown ends its processes with it: never
    a KeyboardInterrupt traceback, never training's handler inherited from the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _unblock()
