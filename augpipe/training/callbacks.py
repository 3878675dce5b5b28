"""Small objects the training loop calls after each epoch: early stopping, checkpoints, the
metrics file. Each has ``on_epoch_end(epoch, metrics, model) -> bool`` (True asks to stop)."""
from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path

import torch

log = logging.getLogger("augpipe")


class EarlyStopping:
    """Stops when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs, counting
    only epochs after ``start_from_epoch``; keeps the best weights to restore at the end.

    With ``patience=None`` it only tracks the best epoch (so the best weights are tested)."""

    def __init__(self, monitor: str = "val_loss", mode: str = "min", patience: int | None = 5,
                 min_delta: float = 0.0, start_from_epoch: int = 0, restore_best: bool = True):
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
            self.reason = (f"early stopping: {self.monitor} did not improve by more than {self.min_delta:g} "
                           f"for {self.wait} epoch(s); best {self.best:.4f} at epoch {self.best_epoch}")
            return True
        return False

    def restore(self, model) -> bool:
        """Load the best weights into ``model``; False when there are none to restore."""
        if not self.restore_best or self.best_state is None:
            return False
        model.load_state_dict(self.best_state)
        return True


def save_atomic(obj, path: Path) -> None:
    """torch.save through a temporary file: a kill mid-write never corrupts the checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Checkpoints:
    """``last.pt`` after every epoch and ``best.pt`` whenever the monitored figure improves."""

    def __init__(self, run_dir: Path, state_fn, tracker: EarlyStopping):
        self.run_dir = Path(run_dir)
        self.state_fn = state_fn  # epoch -> the checkpoint dict
        self.tracker = tracker

    def on_epoch_end(self, epoch: int, metrics: dict, model=None) -> bool:
        state = self.state_fn(epoch)
        save_atomic(state, self.run_dir / "last.pt")
        # While no epoch has been scored (no validation split, or before start_from_epoch), the
        # latest weights are the best known: without this no best.pt exists, and evaluate fails.
        if self.tracker.best_epoch == epoch or self.tracker.best_epoch is None:
            save_atomic(state, self.run_dir / "best.pt")
        return False


METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"]


class MetricsFile:
    """``metrics.csv``, one row per epoch, flushed each time so a killed run keeps its rows."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "w", newline="") as fh:
            csv.writer(fh).writerow(METRIC_COLUMNS)

    def on_epoch_end(self, epoch: int, metrics: dict, model=None) -> bool:
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow([_fmt(metrics.get(c)) for c in METRIC_COLUMNS])
        return False


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def read_metrics(path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: (float(v) if v not in ("",) else None) for k, v in row.items()} for row in csv.DictReader(fh)]


class HookCallback:
    """Forwards each epoch's end to the plugins' ``augpipe_epoch_end`` hooks."""

    def __init__(self, plugins, run_dir: Path):
        self.plugins, self.run_dir = plugins, Path(run_dir)

    def on_epoch_end(self, epoch: int, metrics: dict, model=None) -> bool:
        self.plugins.epoch_end(self.run_dir, epoch, dict(metrics))
        return False
