"""Experiment loggers: a training run's scalars, hyper-parameters and images, sent to
TensorBoard (``torch.utils.tensorboard``) or MLflow as well as to ``metrics.csv``.

Both are optional extras, imported only when a logger is made. Every logger writes the same
names: ``iteration/<name>`` per optimizer step (x: the global iteration), ``epoch/<name>`` per
epoch (x: the epoch), ``final/<name>`` once at the end (the test score, the best monitored
value...). Only finite numbers are logged: a NaN or infinite value is skipped, because in these
metrics it means "not measured" (no validation split, no step timed), and a loss that really
became NaN stops the run with its own message while ``metrics.csv`` keeps the value.

Where things go: TensorBoard ``<root>/tensorboard/<run_name>/``; MLflow the tracking URI given,
else ``$MLFLOW_TRACKING_URI``, else ``file:<root>/mlruns``, experiment ``augpipe`` unless named.
A sweep gives all its runs the same root (and an experiment of its own name), so they land in
one TensorBoard directory and one MLflow experiment.
"""

from __future__ import annotations

import abc
import importlib.util
import logging
import math
import numbers
import os
import sys
import time
from pathlib import Path

import numpy as np

from augpipe.errors import ConfigError, DataError
from augpipe.training.callbacks import Callback

log = logging.getLogger("augpipe")

LOGGER_NAMES = ("tensorboard", "mlflow")
# The module whose presence makes a logger usable, and the extra that installs it.
_REQUIRES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
STATUSES = ("FINISHED", "FAILED", "KILLED")
DEFAULT_EXPERIMENT = "augpipe"

# Settings that say where or how fast a run went, not what it trained: left out of the hparams
# that hparams_from_config picks, so the HParams table holds what a sweep compares.
_NOT_HPARAMS = {
    "data",
    "split_file",
    "weights",
    "out",
    "name",
    "resume",
    "callbacks",
    "logger",
    "loggers",
    "tracking_uri",
    "experiment",
    "threads",
    "workers",
    "device",
    "devices",
    "dist_timeout",
    "cache_mb",
    "max_pixels",
    "strict",
    "compile",
    "channels_last",
}


# -- choosing --------------------------------------------------------------------------------
def _installed(module: str) -> bool:
    if module in sys.modules:  # a None entry is how Python (and a test) marks a blocked import
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _missing(name: str, detail: str = "") -> ConfigError:
    why = f" ({detail})" if detail else ""
    return ConfigError(f"--logger {name} needs the {_REQUIRES[name]} package{why}: pip install 'augpipe[{name}]'")


def check_loggers(names) -> tuple[str, ...]:
    """The logger names, checked before anything is written: each must be one of
    ``LOGGER_NAMES`` (the closest is suggested) and its package installed. ``names`` is a list,
    or one comma-separated string; repeats are dropped. Finding a package costs no import."""
    from augpipe.plugin_manager import unknown_name_message

    if names is None:
        return ()
    if isinstance(names, str):
        names = names.split(",")
    chosen: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise ConfigError(f"--logger: expected a logger name, got {name!r}")
        name = name.strip().lower()
        if not name:
            continue
        if name not in LOGGER_NAMES:
            raise ConfigError(unknown_name_message("logger", name, LOGGER_NAMES, " (--logger)"))
        if name not in chosen:
            chosen.append(name)
    for name in chosen:  # a misspelt name is reported before a missing package
        if not _installed(_REQUIRES[name]):
            raise _missing(name)
    return tuple(chosen)


def make_loggers(
    names, *, root, run_name: str, experiment: str | None = None, tracking_uri: str | None = None
) -> list[ExperimentLogger]:
    """One logger per name (``check_loggers`` first). Nothing is written until ``start``."""
    loggers: list[ExperimentLogger] = []
    for name in check_loggers(names):
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(root, run_name))
        else:
            loggers.append(MLflowLogger(root, run_name, experiment=experiment, tracking_uri=tracking_uri))
    return loggers


def hparams_from_config(config: dict) -> dict:
    """The flat scalar settings worth comparing between runs: every top-level number, string
    and bool of ``config`` but paths and machine settings; ``None`` left out, an augmentation
    spec given as a mapping shown as ``custom``."""
    out = {}
    for key, value in config.items():
        if key in _NOT_HPARAMS or value is None:
            continue
        if key == "aug" and not isinstance(value, str):
            value = "custom"
        if isinstance(value, (bool, str)) or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
            out[key] = value
    return out


def summary_metrics(summary: dict) -> dict:
    """The final figures of a run's ``summary.json`` that a logger records: what ``finish`` wants."""
    keys = ("test_acc", "test_loss", "best_value", "best_epoch", "epochs_run", "train_seconds", "mean_images_per_s")
    return {k: summary[k] for k in keys if summary.get(k) is not None}


# -- values ----------------------------------------------------------------------------------
def finite_scalars(values: dict) -> dict[str, float]:
    """The entries of ``values`` that are finite numbers (ints, floats, numpy scalars, one-value
    tensors), as floats; bools, strings, None, NaN and infinities are left out."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or value is None:
            continue
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 and not isinstance(value, np.bool_):
            value = value.item()
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            value = float(value)
            if math.isfinite(value):
                out[str(key)] = value
    return out


def _hparam_value(value):
    """A value the HParams view and MLflow params take: numbers and strings as they are, a
    bool as ``True``/``False`` (torch's writer would turn it into 1.0), anything else as text."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    return value if isinstance(value, str) else str(value)


def _clean_hparams(hparams: dict) -> dict:
    return {str(k): _hparam_value(v) for k, v in (hparams or {}).items() if v is not None}


def as_rgb_image(image) -> np.ndarray:
    """An HWC uint8 RGB array: ``image`` itself (HW grayscale is expanded, RGBA loses alpha),
    or a PNG/JPEG file read with OpenCV."""
    if isinstance(image, (str, os.PathLike)):
        import cv2

        data = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if data is None:
            raise DataError(f"{image}: not a readable image")
        return np.ascontiguousarray(data[:, :, ::-1])
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"an image to log must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"an image to log must be HWC with 1, 3 or 4 channels, got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


# -- the loggers -----------------------------------------------------------------------------
class ExperimentLogger(Callback, abc.ABC):
    """What the training run calls, in this order: ``load_state_dict`` (a resumed run only),
    ``start``, then ``log_step`` / ``on_epoch_end`` / ``log_image`` as the run goes, ``finish``
    once, ``close``. ``state_dict`` goes into ``last.pt`` so that a resumed run continues the
    same TensorBoard directory and MLflow run.

    A backend that fails while training (a full disk, a tracking server gone) is reported once
    as a warning and not used again: the run and ``metrics.csv`` go on."""

    name = ""

    def __init__(self):
        self.step = 0  # the last global iteration logged
        self.epoch = 0  # the last epoch logged
        self.hparams: dict = {}
        self.resumed = False
        self.started = False
        self.finished = False
        self.broken = False

    # the hooks ---------------------------------------------------------------------------
    def start(self, config: dict, hparams: dict) -> None:
        """Open the run: ``config`` is every setting (kept as text / an artifact), ``hparams``
        the flat scalars to compare runs by. A resumed run keeps what its first start wrote."""
        if self.started:
            return
        self.hparams = _clean_hparams(hparams)
        self._open(dict(config or {}))
        self.started = True

    def log_step(self, step: int, scalars: dict) -> None:
        """Per optimizer step: ``step`` is the global iteration (from 1, across epochs)."""
        self._need_start()
        values = finite_scalars(scalars)
        self.step = max(self.step, int(step))
        if values:
            self._guard("log_step", self._scalars, {f"iteration/{k}": v for k, v in values.items()}, int(step))

    def on_epoch_end(self, epoch: int, metrics: dict, model=None) -> bool:
        self._need_start()
        values = finite_scalars({k: v for k, v in metrics.items() if k != "epoch"})
        self.epoch = int(epoch)
        self._guard("on_epoch_end", self._scalars, {f"epoch/{k}": v for k, v in values.items()}, int(epoch))
        self._guard("on_epoch_end", self._epoch_flush)
        return False

    def log_image(self, tag: str, image, step: int = 0) -> None:
        """``image``: HWC uint8 RGB (or a PNG file, such as ``confusion.png``)."""
        self._need_start()
        self._guard("log_image", self._image, str(tag), image, int(step))

    def finish(self, summary: dict, status: str = "FINISHED") -> None:
        """Record the final figures (``final/<name>``, and in the HParams record) and how the
        run ended: FINISHED, FAILED, or KILLED (interrupted: ``--resume`` may continue it).
        Once per session; nothing before ``start`` (so a failure path may always call it)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        if not self.started or self.finished:  # a run that failed before it started logs nothing
            return
        values = finite_scalars(summary or {})
        self._guard("finish", self._finish, {f"final/{k}": v for k, v in values.items()}, status)
        self.finished = True

    def close(self) -> None:
        if self.started:
            self._guard("close", self._close)

    def state_dict(self) -> dict:
        return {"step": self.step, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.step = int(state.get("step", 0))
        self.epoch = int(state.get("epoch", 0))
        self.resumed = True

    # for the backends ----------------------------------------------------------------------
    def _need_start(self):
        if not self.started:
            raise RuntimeError(f"{type(self).__name__}.start(config, hparams) must be called first")

    def _guard(self, hook: str, fn, *args):
        if self.broken:
            return
        try:
            fn(*args)
        except Exception as err:  # noqa: BLE001 - any backend failure: a warning, never the run's end
            self.broken = True
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            log.warning(
                "%s logging failed in %s (%s: %s); no more is sent to it, metrics.csv has every epoch",
                self.name,
                hook,
                type(err).__name__,
                first[:200],
            )

    # What each backend writes: TensorBoardLogger and MLflowLogger define all four.
    @abc.abstractmethod
    def _open(self, config: dict) -> None: ...

    @abc.abstractmethod
    def _scalars(self, values: dict[str, float], step: int) -> None: ...

    @abc.abstractmethod
    def _image(self, tag: str, image, step: int) -> None: ...

    @abc.abstractmethod
    def _finish(self, values: dict[str, float], status: str) -> None: ...

    def _epoch_flush(self) -> None:
        pass

    def _close(self) -> None:
        pass


def _config_text(config: dict) -> str:
    from augpipe.files import dump_yaml

    try:
        return dump_yaml(config)
    except Exception:  # noqa: BLE001 - a value YAML can not write: its text is still worth keeping
        return "\n".join(f"{k}: {v!r}" for k, v in config.items())


class TensorBoardLogger(ExperimentLogger):
    """Event files in ``<root>/tensorboard/<run_name>/`` through torch's SummaryWriter; the
    hyper-parameters as the HParams plugin's records, so ``tensorboard --logdir
    <root>/tensorboard`` compares the runs."""

    name = "tensorboard"
    FLUSH_SECS = 30
    # Events waiting for the writer thread: at torch's default of 10 a step's add_scalar calls
    # wait for the disk (1 ms a step measured); a few thousand small events cost nothing.
    MAX_QUEUE = 4096

    def __init__(self, root, run_name: str):
        super().__init__()
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - fail here, not mid-run
        except ImportError as err:
            raise _missing("tensorboard", str(err)) from None
        self.log_dir = Path(root).absolute() / "tensorboard" / run_name
        self.writer = None
        self.metric_tags: set[str] = set()

    def state_dict(self) -> dict:
        # log_dir is for reading only: a resumed run writes where its root puts it now, so a
        # runs/ folder moved as a whole keeps its TensorBoard files together.
        return {**super().state_dict(), "log_dir": str(self.log_dir)}

    def _open(self, config: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        if not self.resumed and self.log_dir.is_dir():
            # Run names are new for every run (the run directory is never reused): events here
            # are a removed run's, and would mix into this one's charts and HParams row.
            stale = sorted(self.log_dir.glob("events.out.tfevents.*"))
            for path in stale:
                path.unlink()
            if stale:
                log.warning(
                    "removed %d event file(s) of an earlier run named %s from %s",
                    len(stale),
                    self.log_dir.name,
                    self.log_dir,
                )
        try:
            # A resumed run that redoes steps (after a SIGKILL mid-epoch) starts a new event file
            # that tells TensorBoard to drop the old file's events from this step on.
            self.writer = SummaryWriter(
                str(self.log_dir),
                flush_secs=self.FLUSH_SECS,
                max_queue=self.MAX_QUEUE,
                purge_step=self.step + 1 if self.resumed and self.step else None,
            )
        except OSError as err:
            raise DataError(f"{self.log_dir}: can not be written ({err.strerror or err})") from None
        if self.resumed:
            return
        self.writer.add_text("config", "```\n" + _config_text(config) + "\n```", 0)
        if self.hparams:
            # The session start record (the run's hyper-parameters) now, so a running or killed
            # run is in the HParams table too; its metrics are named at the end.
            _exp, ssi, _sei = hparams(self.hparams, {})
            self.writer.file_writer.add_summary(ssi, 0)
        self.writer.flush()

    def _scalars(self, values, step):
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.metric_tags.update(tag for tag in values if tag.startswith("epoch/"))

    def _image(self, tag, image, step):
        self.writer.add_image(tag, as_rgb_image(image), step, dataformats="HWC")
        self.writer.flush()

    def _finish(self, values, status):
        from torch.utils.tensorboard.summary import hparams

        step = max(self.epoch, 0)
        self._scalars(values, step)
        if self.hparams:
            # The HParams columns: the final figures, and the last epoch's losses and accuracies.
            last = [f"epoch/{k}" for k in ("train_loss", "train_acc", "val_loss", "val_acc")]
            metrics = sorted(values) + [tag for tag in last if tag in self.metric_tags]
            exp, _ssi, _sei = hparams(self.hparams, dict.fromkeys(metrics, 0.0))
            # TensorBoard keeps the first record of each kind a run wrote: a run interrupted and
            # resumed names its metrics once, and its end (success or failure) only when it has
            # one; an interrupted run is left open.
            self.writer.file_writer.add_summary(exp, step)
            if status != "KILLED":
                self.writer.file_writer.add_summary(_session_end(status), step)
        self.writer.flush()

    def _epoch_flush(self):
        self.writer.flush()

    def _close(self):
        if self.writer is not None:
            self.writer.close()


def _session_end(status: str):
    """The HParams plugin's session-end record with the run's status (torch's own ``hparams``
    always writes success)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    code = api_pb2.STATUS_SUCCESS if status == "FINISHED" else api_pb2.STATUS_FAILURE
    content = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=code, end_time_secs=time.time()),
        version=metadata.PLUGIN_DATA_VERSION,
    )
    smd = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString())
    )
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=smd)])


def _quiet_mlflow_environment(tracking_uri: str) -> None:
    """Before mlflow is imported: no usage telemetry (it would send events and write
    ~/.config/mlflow/telemetry.json), and the file store that MLflow 3 keeps in maintenance mode
    allowed for a ``file:`` URI. A value the user set is kept."""
    from urllib.parse import urlparse

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if urlparse(tracking_uri).scheme in ("", "file"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


class MLflowLogger(ExperimentLogger):
    """An MLflow run (named ``run_name``) in ``experiment``, through ``MlflowClient`` (no global
    active run, so several loggers live in one process): hyper-parameters as params, the
    config as ``config.yaml``, images under ``images/``, scalars as metric histories."""

    name = "mlflow"
    BATCH = 1000  # MLflow's limit of metrics per log_batch call
    FLUSH_SECS = 30  # per-iteration metrics are sent at least this often (and at each epoch's end)

    def __init__(self, root, run_name: str, *, experiment: str | None = None, tracking_uri: str | None = None):
        super().__init__()
        tracking_uri = (
            tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (Path(root).absolute() / "mlruns").as_uri()
        )
        self.tracking_uri = tracking_uri
        _quiet_mlflow_environment(tracking_uri)
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as err:
            raise _missing("mlflow", str(err)) from None
        self.experiment_name = experiment or DEFAULT_EXPERIMENT
        self.run_name = run_name
        try:
            self.client = MlflowClient(tracking_uri=tracking_uri)
        except Exception as err:  # noqa: BLE001 - MLflow reports a store it can not use in many ways
            raise self._uri_error(err) from None
        self.experiment_id = None
        self.run_id: str | None = None
        self.pending: list = []
        self.last_flush = time.monotonic()

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "tracking_uri": self.tracking_uri,
        }

    def load_state_dict(self, state: dict) -> None:
        # The run is looked up in the store this logger was made for (``file:<root>/mlruns``
        # moves with the folder); where it is not found, a new run is started, with a warning.
        super().load_state_dict(state)
        if state:
            self.run_id = state.get("run_id")
            self.experiment_id = state.get("experiment_id")

    def _uri_error(self, err) -> ConfigError:
        from urllib.parse import urlparse

        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        database = urlparse(self.tracking_uri).scheme.split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql")
        hint = (
            "; a database store needs SQLAlchemy: pip install mlflow"
            if database and not _installed("sqlalchemy")
            else ""
        )
        return ConfigError(f"MLflow can not use the tracking URI {self.tracking_uri} ({first[:200]}){hint}")

    def _mlflow_error(self, err) -> DataError:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return DataError(f"MLflow at {self.tracking_uri}: {first[:300]}")

    def _experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment_name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise DataError(
                    f"MLflow experiment {self.experiment_name!r} at {self.tracking_uri} is deleted: "
                    f"restore it or name another (--experiment)"
                )
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment_name, artifact_location=self._artifact_location())
        except MlflowException:  # another process made it first (two sweeps starting together)
            found = self.client.get_experiment_by_name(self.experiment_name)
            if found is None:
                raise
            return found.experiment_id

    def _artifact_location(self) -> str | None:
        """For a SQLite store, ``mlartifacts/`` beside the database file: MLflow's own default
        is ``./mlruns`` in whatever folder the command ran from. Other stores choose their own."""
        from urllib.parse import urlparse

        parsed = urlparse(self.tracking_uri)
        if parsed.scheme != "sqlite" or parsed.path in ("", "/", "/:memory:"):
            return None
        database = Path(parsed.path[1:])  # sqlite:///relative.db, sqlite:////absolute.db
        return (database.absolute().parent / "mlartifacts").as_uri()

    def _open(self, config: dict) -> None:
        from mlflow.entities import Param, RunStatus
        from mlflow.exceptions import MlflowException

        try:
            if self.resumed and self.run_id:
                try:
                    run = self.client.get_run(self.run_id)
                except MlflowException:
                    log.warning(
                        "MLflow run %s is not in %s any more: logging to a new run", self.run_id, self.tracking_uri
                    )
                    self.run_id, self.resumed = None, False
                else:
                    self.experiment_id = run.info.experiment_id
                    self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
                    return
            self.experiment_id = self._experiment()
            run = self.client.create_run(
                self.experiment_id, run_name=self.run_name, tags={"mlflow.source.name": "augpipe"}
            )
            self.run_id = run.info.run_id
            params = [Param(k, str(v)) for k, v in self.hparams.items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params a call
                self.client.log_batch(self.run_id, params=params[i : i + 100])
            self.client.log_text(self.run_id, _config_text(config), "config.yaml")
        except MlflowException as err:
            raise self._mlflow_error(err) from None
        except ImportError as err:  # a store whose driver is missing shows it at the first call
            raise self._uri_error(err) from None
        except OSError as err:
            raise DataError(f"MLflow at {self.tracking_uri}: can not be written ({err.strerror or err})") from None

    def _scalars(self, values, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending.extend(Metric(k, v, now, step) for k, v in values.items())
        if len(self.pending) >= self.BATCH or time.monotonic() - self.last_flush > self.FLUSH_SECS:
            self._flush()

    def _flush(self):
        # Synchronous: MLflow's asynchronous mode (synchronous=False) was measured slower here,
        # its thread competing for the interpreter (0.78 against about 0.4 ms a step of three
        # scalars); the file store's cost is paid once per BATCH metrics or FLUSH_SECS.
        while self.pending:
            batch, self.pending = self.pending[: self.BATCH], self.pending[self.BATCH :]
            self.client.log_batch(self.run_id, metrics=batch)
        self.last_flush = time.monotonic()

    def _epoch_flush(self):
        self._flush()

    def _image(self, tag, image, step):
        name = tag if step == 0 else f"{tag}_step{step}"
        if isinstance(image, (str, os.PathLike)) and Path(image).suffix.lower() == ".png":
            # A PNG already written (confusion.png) goes as it is, not decoded and encoded again.
            import shutil
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                target = Path(tmp) / f"{Path(name).name}.png"
                shutil.copyfile(image, target)
                parent = str(Path("images", name).parent)
                self.client.log_artifact(self.run_id, str(target), parent)
            return
        self.client.log_image(self.run_id, as_rgb_image(image), artifact_file=f"images/{name}.png")

    def _finish(self, values, status):
        self._scalars(values, max(self.epoch, 0))
        self._flush()
        self.client.set_terminated(self.run_id, status)

    def _close(self):
        self._flush()
