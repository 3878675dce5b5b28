"""A run directory and its state: its name, whether it is free, finished, failed or resumable
(``run_state``), the settings a resume keeps, and the files of a run's record."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from augpipe.config import TrainConfig
from augpipe.errors import ConfigError, DataError

log = logging.getLogger("augpipe")


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    history: object = field(repr=False, default=None)

    @property
    def failed(self) -> bool:
        return bool(self.summary.get("failed"))


def read_summary(run_dir: Path) -> dict | None:
    """A run's summary.json, or None where there is none that can be read."""
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def run_state(run_dir: Path) -> str:
    """finished (its summary says how it ended, and that it can not be resumed), resume (it has a
    last.pt), redo (a directory that has neither: stopped before its first step) or new."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    if summary is not None and summary.get("stop_reason") and not summary.get("resumable"):
        return "finished"
    if (run_dir / "last.pt").is_file():
        return "resume"
    return "redo" if run_dir.exists() else "new"


# Settings a resumed run may change: where and how fast it computes, not what it computes.
RESUME_FLAGS = ("device", "threads", "devices", "dist_timeout", "logger", "tracking_uri", "experiment")


def _resume_settings(run_dir: Path, config, config_file, flags) -> tuple[TrainConfig, dict]:
    from augpipe.files import load_checkpoint
    from augpipe.training.checkpoint import check_resumable

    if config is not None or config_file is not None:
        raise ConfigError("--resume continues a run with its own settings: it takes no --config")
    changed = sorted(k for k, v in flags.items() if v is not None and k not in RESUME_FLAGS)
    if changed:
        raise ConfigError(
            f"--resume continues a run with its own settings: --{changed[0].replace('_', '-')} "
            f"can not be changed (only {', '.join('--' + f for f in RESUME_FLAGS)} can)"
        )
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run directory")
    state = run_state(run_dir)
    if state == "finished":
        raise DataError(f"{run_dir}: the run has ended ({read_summary(run_dir)['stop_reason']}); nothing to resume")
    path = run_dir / "last.pt"
    if state != "resume":
        raise DataError(
            f"{run_dir}: no last.pt to resume from (the run was stopped before it finished a step); start it again"
        )
    state = check_resumable(load_checkpoint(path), path)
    cfg = TrainConfig.from_dict(
        {**state["config"], **{k: v for k, v in flags.items() if v is not None}}, where=str(path)
    )
    from augpipe.training.loggers import check_loggers

    cfg.logger = list(check_loggers(cfg.logger))
    return cfg, state


def check_run_dir_free(cfg: TrainConfig) -> None:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {cfg.out}: not a directory")
    if cfg.name and (out / cfg.name).exists():
        raise DataError(f"run directory {out / cfg.name} already exists: choose another --name, or remove it")


def make_run_dir(cfg: TrainConfig) -> Path:
    """Create the run directory. Without ``--name`` it is the start time, with ``-2``, ``-3`` ...
    when runs start in the same second: mkdir is atomic, so two processes never share one."""
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.name:
            path = out / cfg.name
            try:
                path.mkdir()
            except FileExistsError:
                raise DataError(f"run directory {path} already exists: choose another --name, or remove it") from None
            return path
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        for k in range(1, 10_000):
            path = out / (stamp if k == 1 else f"{stamp}-{k}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as err:
        raise DataError(f"{out}: a run directory can not be created there ({err.strerror})") from None
    raise DataError(f"{out}: too many runs started in the second {stamp}")


# Above this many classes the test confusion matrix is written to CONFUSION_FILE (rows: true
# class, columns: predicted) instead of into summary.json; per_class_acc stays in the summary.
INLINE_CONFUSION_CLASSES = 50


CONFUSION_FILE = "confusion.csv"


def write_confusion_csv(path: Path, confusion, class_names) -> Path:
    import csv
    import io

    from augpipe.files import write_atomic

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["true/predicted", *class_names])
    for name, row in zip(class_names, np.asarray(confusion).tolist()):
        writer.writerow([name, *row])
    return write_atomic(path, buf.getvalue())


def _json_default(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return str(v)
