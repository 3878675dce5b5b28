"""Small objects the training loop calls: early stopping, checkpoints, the metrics file, and
plugins' callbacks. Each has ``on_epoch_end(epoch, metrics, model) -> bool`` (True asks to
stop); ``Callback`` lists every hook, each a no-op, as Lightning's does."""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

from augpipe.errors import AugpipeError, PluginError
from augpipe.files import save_checkpoint

log = logging.getLogger("augpipe")


class Callback:
    """The hooks the training loop calls, each a no-op here: subclass and override what you
    need. ``state_dict``/``load_state_dict`` carry a callback's state through ``last.pt``, so a
    resumed run continues it."""

    def on_train_batch_end(self, epoch: int, step: int, loss) -> None:
        """After each optimizer step; ``step`` counts from 1 within the epoch, ``loss`` is a tensor."""

    def on_epoch_end(self, epoch: int, metrics: dict, model=None) -> bool:
        """After each epoch's validation; return True to stop the run (set ``self.reason``)."""
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class PluginCallback(Callback):
    """A plugin's callback: a failure inside it is reported as that plugin's, by name."""

    def __init__(self, callback, name: str, owner: str):
        self.callback, self.name, self.owner = callback, name, owner
        self.reason = None

    def _call(self, hook: str, *args):
        method = getattr(self.callback, hook, None)
        if method is None:
            return None
        try:
            return method(*args)
        except AugpipeError:
            raise
        except Exception as err:
            raise PluginError(
                f"callback {self.name!r} of plugin {self.owner!r} failed in {hook}: {type(err).__name__}: {err}"
            ) from None

    def on_train_batch_end(self, epoch, step, loss):
        self._call("on_train_batch_end", epoch, step, loss)

    def on_epoch_end(self, epoch, metrics, model=None):
        stop = bool(self._call("on_epoch_end", epoch, metrics, model))
        self.reason = getattr(self.callback, "reason", None) or (f"stopped by callback {self.name!r}" if stop else None)
        return stop

    def state_dict(self):
        return self._call("state_dict") or {}

    def load_state_dict(self, state):
        if state:
            self._call("load_state_dict", state)


class EarlyStopping(Callback):
    """Stops when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs, counting
    only epochs after ``start_from_epoch``; keeps the best weights to restore at the end.

    With ``patience=None`` it only tracks the best epoch (so the best weights are tested)."""

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "min",
        patience: int | None = 5,
        min_delta: float = 0.0,
        start_from_epoch: int = 0,
        restore_best: bool = True,
    ):
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.min_delta, self.start_from_epoch, self.restore_best = min_delta, start_from_epoch, restore_best
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.reason: str | None = None

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch: int, metrics: dict, model=None) -> bool:
        value = metrics.get(self.monitor)
        if value is None or not math.isfinite(value) or epoch <= self.start_from_epoch:
            return False
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best and model is not None:
                # A torch.compile'd model prefixes its keys with '_orig_mod.'; the weights are
                # restored into the plain model, so keep the plain model's keys.
                model = getattr(model, "_orig_mod", model)
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return False
        self.wait += 1
        if self.patience is not None and self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.reason = (
                f"early stopping: {self.monitor} did not improve by more than {self.min_delta:g} "
                f"for {self.wait} epoch(s); best {self.best:.4f} at epoch {self.best_epoch}"
            )
            return True
        return False

    def state_dict(self, finished_epoch: int | None = None) -> dict:
        """Plain values. The best weights are left out when the checkpoint is taken at the end of
        the epoch that set them (``finished_epoch``): the checkpoint's model weights are they."""
        state = {k: getattr(self, k) for k in ("best", "best_epoch", "wait", "stopped_epoch", "reason")}
        same = self.best_state is not None and finished_epoch is not None and finished_epoch == self.best_epoch
        state["best_state"] = "model" if same else self.best_state
        return state

    def load_state_dict(self, state: dict, model_state: dict | None = None) -> None:
        for k in ("best", "best_epoch", "wait", "stopped_epoch", "reason"):
            setattr(self, k, state[k])
        best = state.get("best_state")
        self.best_state = dict(model_state) if best == "model" else best

    def restore(self, model) -> bool:
        """Load the best weights into ``model``; False when there are none to restore."""
        if not self.restore_best or self.best_state is None:
            return False
        model.load_state_dict(self.best_state)
        return True


class Checkpoints(Callback):
    """``last.pt`` after every epoch and ``best.pt`` whenever the monitored figure improves.
    Runs after the other callbacks, so that ``last.pt`` holds the state the next epoch starts
    from. ``best.pt`` is written first: a kill between the two leaves ``last.pt`` at the epoch
    before, which a resumed run redoes, rewriting the same ``best.pt``."""

    def __init__(self, run_dir: Path, state_fn, tracker: EarlyStopping):
        self.run_dir = Path(run_dir)
        self.state_fn = state_fn  # epoch -> the checkpoint dict
        self.tracker = tracker

    def on_epoch_end(self, epoch: int, metrics: dict, model=None) -> bool:
        state = self.state_fn(epoch)
        # While no epoch has been scored (no validation split, or before start_from_epoch), the
        # latest weights are the best known: without this no best.pt exists, and evaluate fails.
        if self.tracker.best_epoch == epoch or self.tracker.best_epoch is None:
            save_checkpoint(state, self.run_dir / "best.pt")
        save_checkpoint(state, self.run_dir / "last.pt")
        return False


METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"]


class MetricsFile(Callback):
    """``metrics.csv``, one row per epoch, flushed to disk each time so a killed run keeps its
    rows. ``epochs`` (a resumed run's history) rewrites the file to exactly those rows first, so
    rows of an epoch that is redone are never duplicated."""

    def __init__(self, path: Path, epochs: list[dict] = ()):
        self.path = Path(path)
        self.rows = [[_fmt(metrics.get(c)) for c in METRIC_COLUMNS] for metrics in epochs]
        self._write()

    def _write(self) -> None:
        # The whole file, atomically, every epoch (a few hundred bytes): an append on a full
        # disk could leave half a row; this leaves the previous file or a WriteError.
        from augpipe.files import write_atomic

        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(METRIC_COLUMNS)
        writer.writerows(self.rows)
        write_atomic(self.path, buf.getvalue())

    def on_epoch_end(self, epoch: int, metrics: dict, model=None) -> bool:
        self.rows.append([_fmt(metrics.get(c)) for c in METRIC_COLUMNS])
        self._write()
        return False


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def read_metrics(path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: (float(v) if v not in ("",) else None) for k, v in row.items()} for row in csv.DictReader(fh)]


class HookCallback(Callback):
    """Forwards each epoch's end to the plugins' ``augpipe_epoch_end`` hooks."""

    def __init__(self, plugins, run_dir: Path):
        self.plugins, self.run_dir = plugins, Path(run_dir)

    def on_epoch_end(self, epoch: int, metrics: dict, model=None) -> bool:
        self.plugins.epoch_end(self.run_dir, epoch, dict(metrics))
        return False
