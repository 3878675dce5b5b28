"""One training run from settings to run directory: data -> augmentation -> loaders -> model
(from a plugin) -> loop -> curves, checkpoints, metrics, test score."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from augpipe import distributed
from augpipe.config import TrainConfig, check_device_name
from augpipe.errors import AugpipeError, ConfigError, DataError, WriteError
from augpipe.errors import first_line as _first_line
from augpipe.training.callbacks import PluginCallback
from augpipe.training.parts import build_model, build_parts, call_plugin, portable_config  # noqa: F401
from augpipe.training.pipeline import DataPipeline, _load_data_once, augmented_grid, load_data  # noqa: F401
from augpipe.training.rundir import (  # noqa: F401
    CONFUSION_FILE,
    INLINE_CONFUSION_CLASSES,
    RunResult,
    _json_default,
    _resume_settings,
    check_run_dir_free,
    make_run_dir,
    read_summary,
    run_state,
    write_confusion_csv,
)
from augpipe.training.settings import build_config, data_or_sample, resolve_device, seed_everything  # noqa: F401

log = logging.getLogger("augpipe")


def train(
    config=None,
    *,
    config_file=None,
    plugins=None,
    progress: bool | None = None,
    resume=None,
    data_cache: dict | None = None,
    **flags,
) -> RunResult:
    """Train as ``augpipe train`` does: ``config`` is a TrainConfig, a dict of its fields or
    None; keyword arguments override it (``augpipe.train(plugin="cnn", epochs=3)``).

    ``resume``: a run directory whose ``last.pt`` the run continues from, with every state put
    back, so that it ends as the run would have ended uninterrupted.

    SIGINT and SIGTERM finish the current step, save ``last.pt``, and close the run directory as
    "interrupted": ``summary["interrupted"]`` names the signal (the CLI exits 130 or 143).

    ``data_cache``: a dict shared by several runs in one process (a sweep): a data set is opened,
    decoded and split once for all the runs that ask for it with the same settings."""
    from augpipe.plugin_manager import get_plugins
    from augpipe.training.signals import StopSignals

    plugins = plugins or get_plugins()
    with StopSignals() as signals:
        if resume is not None:
            run_dir = Path(resume)
            cfg, saved = _resume_settings(run_dir, config, config_file, flags)
        else:
            cfg = build_config(config, config_file=config_file, plugins=plugins, **flags)
            check_run_dir_free(cfg)
            run_dir, saved = None, None
        if cfg.devices > 1 and not distributed.launched_ranks().active:
            # Checked here, before any process starts: a mistake is one line, not N of them.
            distributed.check_devices(cfg.devices, resolve_device(cfg.device).type)
            from augpipe.progress import is_quiet

            if is_quiet():  # the spawned processes do not inherit --quiet
                progress = False
            return distributed.launch(cfg.devices, _train_launched, config, config_file, resume, progress, flags)
        return _train(
            cfg, plugins, run_dir=run_dir, saved=saved, progress=progress, signals=signals, data_cache=data_cache
        )


def _train_launched(config, config_file, resume, progress, flags) -> RunResult:
    """What each process of ``--devices N`` runs: the same ``train`` call, now inside a process group."""
    return train(config, config_file=config_file, resume=resume, progress=progress, **flags)


class _NoLock:
    def close(self) -> None:
        pass


def _train(cfg: TrainConfig, plugins, *, run_dir, saved, progress, signals, data_cache=None) -> RunResult:
    """A run in this process: alone, or as one rank of a distributed run when the environment
    says so (torchrun, or ``--devices N``), in which case the process group lives as long as it."""
    import torch.distributed as dist

    if not distributed.launched_ranks().active:
        return _train_rank(
            cfg, plugins, run_dir=run_dir, saved=saved, progress=progress, signals=signals, data_cache=data_cache
        )
    joined_here = not dist.is_initialized()
    me = distributed.start(resolve_device(cfg.device).type, cfg.dist_timeout)
    if not me.is_main:
        log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))  # rank 0 speaks for the run
    try:
        return _train_rank(
            cfg, plugins, run_dir=run_dir, saved=saved, progress=progress, signals=signals, data_cache=data_cache
        )
    except RuntimeError as err:
        if distributed.lost_contact(err):  # inside DDP's backward, say
            raise distributed.lost_contact_error(err) from None
        raise
    finally:
        if joined_here:
            distributed.stop()


def _rank_device(device: torch.device, me) -> torch.device:
    """Each rank of a distributed CUDA run trains on the GPU of its local rank."""
    if me.active and device.type == "cuda":
        return torch.device("cuda", me.local_rank)
    return device


def _train_rank(cfg: TrainConfig, plugins, *, run_dir, saved, progress, signals, data_cache=None) -> RunResult:
    """One process's run, phase by phase. Everything a user can get wrong is checked in
    ``prepare``; nothing is written before ``open``; after it a failure closes the run directory
    as failed, keeping what it holds."""
    run = Run(cfg, plugins, run_dir=run_dir, saved=saved, progress=progress, signals=signals)
    run.prepare(data_cache)
    run.open()
    try:
        run.write_start()
        run.fit()
        return run.finish()
    except BaseException as err:
        run.close_failed(err)
        raise
    finally:
        run.lock.close()


class Run:
    """The state of one process's run, and its phases in order (fastai's ``Learner.fit`` is the
    model): ``prepare`` (data, model, optimizer, schedule, averaging, early stopping), ``open``
    (a new run directory, or every state put back from ``last.pt``), ``write_start`` (config.yaml,
    split.csv, augment.yaml, loggers), ``fit`` (the shared loop with its callbacks), ``finish``
    (test score, pictures, summary.json), or ``close_failed``."""

    def __init__(self, cfg: TrainConfig, plugins, *, run_dir, saved, progress, signals):
        from augpipe.training.loop import History

        self.cfg, self.plugins, self.run_dir, self.saved = cfg, plugins, run_dir, saved
        self.progress, self.signals = progress, signals
        self.resuming = saved is not None
        self.me = distributed.ranks()
        self.history = History()
        self.resume_at = None  # an unfinished epoch's progress, to continue mid-epoch
        self.done_seconds = 0.0  # training time of the sessions before a resume
        self.start_epoch = 1
        self.loggers: list = []  # started once the run directory exists
        self.extra_callbacks: dict = {}
        self.lock = _NoLock()
        self.out_existed = True

    # -- prepare: nothing written yet ------------------------------------------------------------
    def prepare(self, data_cache=None) -> None:
        from augpipe.augment.spec import AugmentSpec
        from augpipe.data.split import describe_duplicates, split_table
        from augpipe.training.callbacks import EarlyStopping
        from augpipe.training.optim import as_schedule

        cfg, saved, me, plugins = self.cfg, self.saved, self.me, self.plugins
        self.device = device = _rank_device(resolve_device(cfg.device), me)
        if cfg.precision == "fp16" and device.type != "cuda":
            log.info("--precision fp16 applies on CUDA only; training in fp32 on the CPU (bf16 works on CPUs)")
        self.spec = AugmentSpec.load(cfg.aug)
        seed_everything(cfg.seed)

        split_file = self.run_dir / "split.csv" if self.resuming else cfg.split_file
        self.data_path, self.data = data_path, data = _load_data_once(cfg, split_file, data_cache, me)
        if self.resuming:
            self._check_same_data()
        if cfg.patience is not None and cfg.monitor.startswith("val_") and len(data.indices("val")) == 0:
            raise ConfigError(
                f"early stopping (--patience {cfg.patience}) watches {cfg.monitor}, but there is no "
                f"validation split: give --val above 0, or --monitor train_loss"
            )
        log.info(
            "data: %s (%d images, %d classes)\n%s\n%s",
            data_path,
            len(data.source),
            len(data.class_names),
            split_table(data.class_names, data.source.labels, data.assignment),
            describe_duplicates(data.duplicates),
        )
        parts = build_parts(
            cfg,
            plugins,
            data,
            data_path,
            self.spec,
            device,
            image_size=saved["image_size"] if self.resuming else None,
            resuming=self.resuming,
        )
        self.model, self.optimizer, self.pipeline = parts.model, parts.optimizer, parts.pipeline
        self.image_size, self.threads, self.train_model = parts.image_size, parts.threads, parts.train_model
        self.num_classes = len(data.class_names)
        self.steps = steps = len(self.pipeline.train)
        self.schedule = as_schedule(
            call_plugin(
                plugins.schedulers,
                cfg.scheduler,
                self.optimizer,
                config=cfg,
                steps_per_epoch=steps,
                epochs=cfg.epochs,
                total_steps=steps * cfg.epochs,
            ),
            cfg.scheduler,
            plugins.schedulers.owner.get(cfg.scheduler, "?"),
        )
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" and device.type == "cuda" else None
        self.average = None
        if cfg.ema is not None:
            from augpipe.training.averaging import WeightAverage

            self.average = WeightAverage(
                self.model,
                cfg.ema,
                steps,
                cfg.ema_start,
                every=cfg.ema_every,
                power=cfg.ema_power,
                total_steps=steps * cfg.epochs,
                lookahead=cfg.ema_mode == "lookahead",
            )
        # what is validated, kept as best, tested: the model, or the average of its weights
        self.scored = self.average.module if self.average is not None else self.model
        self.tracker = EarlyStopping(
            cfg.monitor, cfg.monitor_mode, cfg.patience, cfg.min_delta, cfg.start_from_epoch, cfg.restore_best
        )
        self.cfg_to_save = portable_config(cfg, self.spec)

    def _check_same_data(self) -> None:
        data, saved, data_path = self.data, self.saved, self.data_path
        if (
            data.source.fingerprint() != saved["split"].get("fingerprint")
            or data.assignment.tolist() != saved["split"]["splits"]
        ):
            raise DataError(
                f"{data_path}: the data set is not the one the run started with (images were added, "
                f"removed or relabelled); a resumed run needs the same data"
            )
        if saved["split"].get("pixels") and data.pixels != saved["split"]["pixels"]:
            raise DataError(
                f"{data_path}: the pixels of images the run started with have changed since (the "
                f"same names, other content); a resumed run needs the same data"
            )

    def _plugin_callbacks(self) -> dict:
        if not self.me.is_main:  # plugins' callbacks write files and see the run as a whole: rank 0 runs them
            return {}
        return {
            name: PluginCallback(
                call_plugin(self.plugins.callbacks, name, self.run_dir, self.cfg),
                name,
                self.plugins.callbacks.owner.get(name, "?"),
            )
            for name in self.cfg.callbacks
        }

    # -- open: the run directory, new or resumed -------------------------------------------------
    def open(self) -> None:
        from augpipe.files import exclusive_lock

        me = self.me
        if self.resuming:
            self.lock = exclusive_lock(self.run_dir, "training this run") if me.is_main else _NoLock()
            self._restore()
            return
        self.out_existed = Path(self.cfg.out).exists()
        run_dir = make_run_dir(self.cfg) if me.is_main else None
        if me.active:
            run_dir = Path(distributed.broadcast_object(str(run_dir) if me.is_main else None))
        self.run_dir = run_dir
        self.lock = exclusive_lock(run_dir, "training this run") if me.is_main else _NoLock()

    def _restore(self) -> None:
        """Every state of ``last.pt`` put back, so that the run ends as it would have uninterrupted."""
        from augpipe.files import remove_stale_temporaries
        from augpipe.training.checkpoint import restore_random_states
        from augpipe.training.loop import EpochProgress

        saved, run_dir = self.saved, self.run_dir
        if self.me.is_main:
            remove_stale_temporaries(run_dir)
        try:
            self.extra_callbacks = self._plugin_callbacks()
            self.model.load_state_dict(saved.get("train_model") or saved["model"])
            if self.average is not None:
                self.average.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.schedule.load_state_dict(saved["scheduler"])
            if self.scaler is not None and saved.get("scaler"):
                self.scaler.load_state_dict(saved["scaler"])
            self.tracker.load_state_dict(saved["early_stopping"], saved["model"])
            for name, cb in self.extra_callbacks.items():
                cb.load_state_dict(saved["callbacks"].get(name))
        except BaseException as err:
            self.lock.close()
            if not isinstance(err, (RuntimeError, KeyError, ValueError, TypeError)):
                raise
            raise DataError(
                f"{run_dir / 'last.pt'}: does not fit the run's model or settings "
                f"({type(err).__name__}: {_first_line(err)})"
            ) from None
        self.history.epochs = list(saved["history"]["epochs"])
        self.history.iteration_losses = list(saved["history"]["iteration_losses"])
        self.done_seconds = saved["train_seconds"]
        if saved["in_epoch"] is not None:
            self.resume_at = EpochProgress.from_state(saved["in_epoch"])
        self.start_epoch = saved["epoch"] + 1
        restore_random_states(saved["rng"], self.pipeline)
        log.info(
            "resuming %s after epoch %d%s",
            run_dir,
            saved["epoch"],
            f" at step {self.resume_at.step} of epoch {self.resume_at.epoch}" if self.resume_at else "",
        )

    # -- write_start: what a new run directory holds before the first step ------------------------
    def write_start(self) -> None:
        from augpipe.augment.cpu import build_train_transform, save_pipeline
        from augpipe.data.split import write_manifest

        cfg, me, run_dir, data, pipeline = self.cfg, self.me, self.run_dir, self.data, self.pipeline
        if not self.resuming:
            self.extra_callbacks = self._plugin_callbacks()
        if not self.resuming and me.is_main:
            self.cfg_to_save.save(run_dir / "config.yaml")
            write_manifest(
                run_dir / "split.csv", data.source, data.assignment, seed=data.seed, val=data.val, test=data.test
            )
            # The Albumentations form of the spec, also when the device backend runs it.
            save_pipeline(
                build_train_transform(
                    self.spec,
                    self.image_size,
                    native=pipeline.native,
                    seed=cfg.seed,
                    lookup=self.plugins.augmentation_lookup(),
                ),
                run_dir / "augment.yaml",
            )
        if me.is_main:
            self.loggers = start_loggers(
                cfg, self.cfg_to_save, run_dir, self.saved, pipeline, data, self.image_size, self.plugins
            )
        self.n_params = sum(p.numel() for p in self.model.parameters())
        log.info(
            "model: %s/%s, %s parameters, %s, image %d px, batch %d, %d iterations per epoch, device %s, "
            "augmentation on %s, %d loader worker(s), %d thread(s)",
            cfg.plugin,
            cfg.model,
            f"{self.n_params:,}",
            cfg.activation,
            self.image_size,
            cfg.batch_size,
            self.steps,
            self.device,
            "the device" if pipeline.aug_on_device else "the CPU",
            pipeline.workers,
            self.threads,
        )
        if me.active:
            log.info(
                "distributed: %d processes (%s), batch %d per process, %d in all; each process takes %d steps an epoch",
                me.world_size,
                "nccl" if self.device.type == "cuda" else "gloo",
                cfg.batch_size,
                cfg.batch_size * me.world_size,
                self.steps,
            )
        log.info("run directory: %s", run_dir)

    # -- fit: the shared loop --------------------------------------------------------------------
    def _state(self, epoch, progress_state=None) -> dict:
        from augpipe.training.checkpoint import checkpoint_state

        return checkpoint_state(
            epoch=epoch,
            model=self.model,
            optimizer=self.optimizer,
            schedule=self.schedule,
            scaler=self.scaler,
            cfg=self.cfg_to_save,
            data=self.data,
            image_size=self.image_size,
            history=self.history,
            pipeline=self.pipeline,
            tracker=self.tracker,
            callbacks=self.extra_callbacks,
            train_seconds=self.done_seconds + time.perf_counter() - self.session_start,
            progress=progress_state,
            loggers=self.loggers,
            scored=self.average.module if self.average is not None else None,
        )

    def _save_unfinished_epoch(self, progress_state) -> None:
        from augpipe.files import save_checkpoint

        save_checkpoint(self._state(progress_state.epoch - 1, progress_state), self.run_dir / "last.pt")
        log.info("saved %s at step %d of epoch %d", self.run_dir / "last.pt", progress_state.step, progress_state.epoch)

    def _after_fast_forward(self) -> None:
        from augpipe.training.checkpoint import restore_random_states

        restore_random_states(self.saved["rng"], self.pipeline, loaders=False)

    def _epoch_callbacks(self) -> list:
        """Early stopping first, checkpoints last: last.pt must hold the state the next epoch starts from."""
        from augpipe.training.callbacks import Checkpoints, HookCallback, MetricsFile

        cfg, me = self.cfg, self.me
        callbacks = [self.tracker]
        if me.is_main:
            callbacks += [
                MetricsFile(self.run_dir / "metrics.csv", self.history.epochs),
                HookCallback(self.plugins, self.run_dir),
            ]
        if cfg.freeze_epochs:
            from augpipe.training.finetune import FreezeBackbone, classifier_parameter_names

            callbacks.insert(
                1,
                FreezeBackbone(
                    self.model,
                    classifier_parameter_names(self.model, self.num_classes),
                    cfg.freeze_epochs,
                    self.start_epoch,
                ),
            )
        callbacks += list(self.extra_callbacks.values()) + self.loggers
        if me.is_main:
            callbacks.append(Checkpoints(self.run_dir, self._state, self.tracker))
        return callbacks

    def fit(self) -> None:
        from augpipe.augment.mixing import BatchMixer
        from augpipe.training.loop import TrainingControl, fit

        cfg, me, pipeline = self.cfg, self.me, self.pipeline
        self.session_start = time.perf_counter()
        callbacks = self._epoch_callbacks()
        control = TrainingControl(
            self.signals.requested,
            resume_at=self.resume_at,
            on_interrupt=self._save_unfinished_epoch if me.is_main else None,
            after_fast_forward=self._after_fast_forward if self.resume_at else None,
            batch_callbacks=([self.average] if self.average is not None else []) + list(self.extra_callbacks.values()),
            step_loggers=self.loggers,
        )
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        mixer = BatchMixer.from_spec(self.spec, self.num_classes, seed=cfg.seed, rank=me.rank)
        # None: a bar on a terminal, a line every 30 s elsewhere (augpipe.progress)
        show_progress = self.progress if me.is_main else False
        max_seconds = cfg.max_minutes * 60 - self.done_seconds if cfg.max_minutes else None
        with self.signals.deferred():
            fit(
                self.train_model,
                pipeline.train,
                pipeline.val,
                prepare_train=pipeline.prepare_train,
                prepare_eval=pipeline.prepare_eval,
                optimizer=self.optimizer,
                schedule=self.schedule,
                loss_fn=loss_fn,
                epochs=cfg.epochs,
                device=self.device,
                num_classes=self.num_classes,
                callbacks=callbacks,
                tracker=self.tracker,
                precision=cfg.precision,
                max_seconds=max(1e-9, max_seconds) if max_seconds is not None else None,
                progress=show_progress,
                start_epoch=self.start_epoch,
                history=self.history,
                control=control,
                scaler=self.scaler,
                tta=cfg.tta,
                scored_model=self.average.module if self.average is not None else None,
                mixer=mixer,
            )
        self.train_seconds = self.done_seconds + time.perf_counter() - self.session_start

    # -- finish, or close as failed --------------------------------------------------------------
    def finish(self) -> RunResult:
        from augpipe.files import write_atomic

        me, history, signals, run_dir = self.me, self.history, self.signals, self.run_dir
        if history.stop_reason == "interrupted" and me.is_main:
            log.warning(
                "interrupted by %s: last.pt saved; resume with: augpipe train --resume %s", signals.received, run_dir
            )
        summary = _finish(
            self.cfg,
            self.scored,
            self.pipeline,
            self.data,
            history,
            self.tracker,
            run_dir,
            self.image_size,
            self.device,
            self.n_params,
            self.train_seconds,
            interrupted=signals.received if history.stop_reason == "interrupted" else None,
            write=me.is_main,
        )
        if me.active:
            summary.update(world_size=me.world_size, global_batch_size=self.cfg.batch_size * me.world_size)
        if me.is_main:
            write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2, default=_json_default))
        finish_loggers(self.loggers, summary, run_dir)
        return RunResult(run_dir, summary, history)

    def close_failed(self, err: BaseException) -> None:
        """After a failure in any phase past ``open``: loggers closed, the run directory closed as
        failed (rank 0); a write error says that last.pt is intact and how to resume."""
        for lg in self.loggers:
            lg.finish({}, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            lg.close()
        if not self.me.is_main:
            return
        run_dir = self.run_dir
        _close_failed_run(run_dir, self.history, err, keep=self.resuming)
        if isinstance(err, WriteError) and run_dir is not None and (run_dir / "last.pt").is_file():
            raise WriteError(
                f"{err}; {run_dir / 'last.pt'} is intact: make room, then augpipe train --resume {run_dir}"
            ) from None
        if not self.resuming and not self.out_existed:
            with contextlib.suppress(OSError):
                Path(self.cfg.out).rmdir()  # only when empty: made for this run alone


def start_loggers(
    cfg: TrainConfig, saved_cfg: TrainConfig, run_dir: Path, saved, pipeline, data, image_size: int, plugins
) -> list:
    """The run's TensorBoard / MLflow loggers, started (a resumed run continues its own), with the
    settings as hyper-parameters and a grid of augmented training images."""
    from augpipe.training.loggers import hparams_from_config, make_loggers

    if not cfg.logger:
        return []
    loggers = make_loggers(
        cfg.logger, root=run_dir.parent, run_name=run_dir.name, experiment=cfg.experiment, tracking_uri=cfg.tracking_uri
    )
    settings = saved_cfg.to_dict()
    for lg in loggers:
        if saved is not None:
            lg.load_state_dict((saved.get("loggers") or {}).get(lg.name))
        lg.start(settings, hparams_from_config(settings))
    if saved is None:
        grid = augmented_grid(cfg, data, pipeline, image_size, plugins)
        for lg in loggers:
            lg.log_image("preview", grid)
    return loggers


def finish_loggers(loggers: list, summary: dict, run_dir: Path) -> None:
    from augpipe.training.loggers import summary_metrics

    status = "FAILED" if summary.get("failed") else "KILLED" if summary.get("interrupted") else "FINISHED"
    for lg in loggers:
        if (run_dir / "confusion.png").is_file():
            lg.log_image("confusion", run_dir / "confusion.png", step=int(summary.get("epochs_run") or 0))
        lg.finish(summary_metrics(summary), status)
        lg.close()


def _peak_device_memory_mb(device: torch.device) -> float | None:
    """The most memory torch's allocator held on a CUDA device during the run; None elsewhere."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def _finish(
    cfg,
    model,
    pipeline,
    data,
    history,
    tracker,
    run_dir,
    image_size,
    device,
    n_params,
    train_seconds,
    interrupted,
    write: bool = True,
) -> dict:
    """Score the test split with the weights the run keeps, draw the curves (``write``: this
    process writes the run directory), and say how it ended."""
    from augpipe.report import plot_confusion, plot_curves
    from augpipe.training.loop import evaluate

    restored = tracker.restore(model)
    summary = {
        "run_dir": str(run_dir),
        "plugin": cfg.plugin,
        "model": cfg.model,
        "activation": cfg.activation,
        "parameters": n_params,
        "image_size": image_size,
        "device": str(device),
        "epochs_run": len(history.epochs),
        "stop_reason": history.stop_reason,
        "failed": history.failed,
        "interrupted": interrupted,
        "resumable": interrupted is not None,
        "best_epoch": tracker.best_epoch,
        "monitor": cfg.monitor,
        "best_value": tracker.best,
        "restored_best": restored,
        "scored_checkpoint": "best.pt" if cfg.restore_best else "last.pt",
        "train_seconds": round(train_seconds, 2),
        "mean_images_per_s": float(np.mean([e["images_per_s"] for e in history.epochs])) if history.epochs else None,
        "skipped_images": len(data.skipped),
        "duplicates": data.duplicates,
        "aug_on_device": pipeline.aug_on_device,
        "data_on_device": pipeline.resident,
        "peak_device_memory_mb": _peak_device_memory_mb(device),
    }
    if interrupted:
        summary["resume_command"] = f"augpipe train --resume {run_dir}"
    if history.epochs and len(pipeline.test.dataset):
        test = evaluate(
            model,
            pipeline.test,
            pipeline.prepare_eval,
            torch.nn.CrossEntropyLoss(),
            len(data.class_names),
            device,
            cfg.precision,
            cfg.tta,
        )
        per_class = {
            name: (float(test["confusion"][i, i] / row) if (row := test["confusion"][i].sum()) else None)
            for i, name in enumerate(data.class_names)
        }
        summary.update(
            test_acc=test["acc"],
            test_loss=test["loss"],
            test_images=test["n"],
            per_class_acc=per_class,
            confusion=test["confusion"].tolist(),
        )
        if len(data.class_names) > INLINE_CONFUSION_CLASSES:
            # 1,000 classes made a 9 MB summary.json: the matrix goes to a file of its own.
            summary["confusion"] = None
            summary["confusion_file"] = CONFUSION_FILE
            if write:
                write_confusion_csv(run_dir / CONFUSION_FILE, test["confusion"], data.class_names)
        if not math.isfinite(test["loss"]) and not history.failed:
            summary["failed"] = history.failed = True
            summary["stop_reason"] = history.stop_reason = (
                f"the test loss is {test['loss']}: the weights are not finite"
            )
        if write:
            plot_confusion(
                test["confusion"],
                data.class_names,
                run_dir / "confusion.png",
                title=f"test accuracy {test['acc']:.3f} ({cfg.plugin}/{cfg.model})",
            )
        log.info(
            "test accuracy %.4f on %d images (weights of epoch %s)",
            test["acc"],
            test["n"],
            tracker.best_epoch if restored else len(history.epochs),
        )
    if history.epochs and write:
        plot_curves(
            history.epochs,
            run_dir / "curves.png",
            best_epoch=tracker.best_epoch,
            stop_epoch=tracker.stopped_epoch,
            iteration_losses=history.iteration_losses,
            title=f"{cfg.plugin}/{cfg.model}, {cfg.activation}, {cfg.optimizer} lr {cfg.resolved_lr:g}, "
            f"aug {cfg.aug if isinstance(cfg.aug, str) else 'custom'}",
        )
    return summary


def _close_failed_run(run_dir: Path | None, history, err: BaseException, keep: bool = False) -> None:
    """A run that fails after its directory was made leaves either nothing (no step done) or a
    summary saying why it ended beside what it finished: never a half-written run. A resumed run
    keeps everything: its last.pt is still the place to resume from."""
    import shutil

    from augpipe.files import write_atomic

    if run_dir is None or keep:
        return
    if not history.epochs and not (run_dir / "last.pt").is_file():
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    interrupted = isinstance(err, KeyboardInterrupt)
    # A full disk stops a run as a signal does: the last complete last.pt is intact (writes are
    # atomic), so the run resumes once there is room.
    resumable = (interrupted or isinstance(err, WriteError)) and (run_dir / "last.pt").is_file()
    summary = {
        "run_dir": str(run_dir),
        "epochs_run": len(history.epochs),
        "failed": not interrupted,
        "interrupted": getattr(err, "signal_name", "SIGINT") if interrupted else None,
        "resumable": resumable,
        "stop_reason": "interrupted" if interrupted else f"{type(err).__name__}: {err}",
    }
    if resumable:
        summary["resume_command"] = f"augpipe train --resume {run_dir}"
    try:
        write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2, default=_json_default))
    except AugpipeError:
        pass


def evaluate(
    run_dir, *, data=None, checkpoint: str | None = None, device: str = "auto", plugins=None, tta: str | None = None
) -> dict:
    """Rescore a run's checkpoint on the test split of its manifest (or of ``data``), the way the
    run scored it: the same evaluation transform, batches, precision and memory layout, so the
    run's own test split gives exactly its ``summary.json`` ``test_acc``. ``checkpoint``
    defaults to the one the run scored (best.pt, or last.pt under ``--no-restore-best``); ``tta``
    to the run's own test-time augmentation."""
    from augpipe.augment.spec import AugmentSpec
    from augpipe.data.prepare import prepare_data
    from augpipe.inference import model_from_checkpoint, read_run_checkpoint
    from augpipe.plugin_manager import get_plugins
    from augpipe.training.loop import evaluate as score

    check_device_name(device)
    path, state, cfg = read_run_checkpoint(run_dir, checkpoint)
    run_dir, checkpoint = Path(run_dir), path.name
    cfg.device = device
    plugins = plugins or get_plugins()
    dev = resolve_device(device)
    data_path = data_or_sample(data or cfg.data)
    split_file = run_dir / "split.csv"
    prepared = prepare_data(
        data_path,
        split_file=split_file if split_file.is_file() else None,
        val=cfg.val,
        test=cfg.test,
        seed=cfg.seed,
        cache_mb=cfg.cache_mb,
        max_pixels=cfg.max_pixels,
    )
    if prepared.class_names != state["class_names"]:
        raise DataError(f"{data_path}: its classes differ from the run's ({', '.join(state['class_names'])})")
    image_size = state["image_size"]
    model = model_from_checkpoint(plugins, cfg, state, path, dev)
    spec = AugmentSpec.load(cfg.aug)
    pipeline = DataPipeline(prepared, cfg, spec, image_size, dev, plugins)
    from augpipe.training.tta import check_tta

    result = score(
        model,
        pipeline.test,
        pipeline.prepare_eval,
        torch.nn.CrossEntropyLoss(),
        len(prepared.class_names),
        dev,
        cfg.precision,
        check_tta(cfg.tta if tta is None else tta),
    )
    result["per_class_acc"] = {
        name: float(result["confusion"][i, i] / max(1, result["confusion"][i].sum()))
        for i, name in enumerate(prepared.class_names)
    }
    result["epoch"] = state["epoch"]
    result["checkpoint"] = checkpoint
    result["class_names"] = prepared.class_names
    return result
