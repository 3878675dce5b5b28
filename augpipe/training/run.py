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


def train(config=None, *, config_file=None, plugins=None, progress: bool | None = None, resume=None,
          data_cache: dict | None = None, **flags) -> RunResult:
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
        return _train(cfg, plugins, run_dir=run_dir, saved=saved, progress=progress, signals=signals,
                      data_cache=data_cache)


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
        return _train_rank(cfg, plugins, run_dir=run_dir, saved=saved, progress=progress, signals=signals,
                           data_cache=data_cache)
    joined_here = not dist.is_initialized()
    me = distributed.start(resolve_device(cfg.device).type, cfg.dist_timeout)
    if not me.is_main:
        log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))  # rank 0 speaks for the run
    try:
        return _train_rank(cfg, plugins, run_dir=run_dir, saved=saved, progress=progress, signals=signals,
                           data_cache=data_cache)
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
    from augpipe.augment.cpu import build_train_transform, save_pipeline
    from augpipe.augment.mixing import BatchMixer
    from augpipe.augment.spec import AugmentSpec
    from augpipe.data.split import describe_duplicates, split_table, write_manifest
    from augpipe.files import exclusive_lock, remove_stale_temporaries, write_atomic
    from augpipe.training.callbacks import Checkpoints, EarlyStopping, HookCallback, MetricsFile, PluginCallback
    from augpipe.training.checkpoint import checkpoint_state, restore_random_states
    from augpipe.training.loop import EpochProgress, History, TrainingControl, fit
    from augpipe.training.optim import as_schedule

    resuming = saved is not None
    me = distributed.ranks()
    device = _rank_device(resolve_device(cfg.device), me)
    if cfg.precision == "fp16" and device.type != "cuda":
        log.info("--precision fp16 applies on CUDA only; training in fp32 on the CPU (bf16 works on CPUs)")
    spec = AugmentSpec.load(cfg.aug)
    seed_everything(cfg.seed)

    split_file = run_dir / "split.csv" if resuming else cfg.split_file
    data_path, data = _load_data_once(cfg, split_file, data_cache, me)
    if resuming and (data.source.fingerprint() != saved["split"].get("fingerprint")
                     or data.assignment.tolist() != saved["split"]["splits"]):
        raise DataError(f"{data_path}: the data set is not the one the run started with (images were added, "
                        f"removed or relabelled); a resumed run needs the same data")
    if resuming and saved["split"].get("pixels") and data.pixels != saved["split"]["pixels"]:
        raise DataError(f"{data_path}: the pixels of images the run started with have changed since (the same "
                        f"names, other content); a resumed run needs the same data")
    if cfg.patience is not None and cfg.monitor.startswith("val_") and len(data.indices("val")) == 0:
        raise ConfigError(f"early stopping (--patience {cfg.patience}) watches {cfg.monitor}, but there is no "
                          f"validation split: give --val above 0, or --monitor train_loss")
    log.info("data: %s (%d images, %d classes)\n%s\n%s", data_path, len(data.source), len(data.class_names),
             split_table(data.class_names, data.source.labels, data.assignment), describe_duplicates(data.duplicates))
    parts = build_parts(cfg, plugins, data, data_path, spec, device,
                        image_size=saved["image_size"] if resuming else None, resuming=resuming)
    model, optimizer, pipeline, image_size = parts.model, parts.optimizer, parts.pipeline, parts.image_size
    num_classes = len(data.class_names)
    steps = len(pipeline.train)
    schedule = as_schedule(call_plugin(plugins.schedulers, cfg.scheduler, optimizer, config=cfg,
                                       steps_per_epoch=steps, epochs=cfg.epochs, total_steps=steps * cfg.epochs),
                           cfg.scheduler, plugins.schedulers.owner.get(cfg.scheduler, "?"))
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" and device.type == "cuda" else None
    threads = parts.threads
    train_model = parts.train_model
    average = None
    if cfg.ema is not None:
        from augpipe.training.averaging import WeightAverage

        average = WeightAverage(model, cfg.ema, steps, cfg.ema_start, every=cfg.ema_every, power=cfg.ema_power,
                                total_steps=steps * cfg.epochs, lookahead=cfg.ema_mode == "lookahead")
    scored = average.module if average is not None else model  # what is validated, kept as best, tested
    tracker = EarlyStopping(cfg.monitor, cfg.monitor_mode, cfg.patience, cfg.min_delta, cfg.start_from_epoch,
                            cfg.restore_best)
    history = History()
    resume_at = None
    done_seconds = 0.0
    cfg_to_save = portable_config(cfg, spec)

    def make_callbacks():
        if not me.is_main:  # plugins' callbacks write files and see the run as a whole: rank 0 runs them
            return {}
        return {name: PluginCallback(call_plugin(plugins.callbacks, name, run_dir, cfg), name,
                                     plugins.callbacks.owner.get(name, "?"))
                for name in cfg.callbacks}

    loggers: list = []  # started once the run directory exists

    # Everything a user can get wrong has been checked: only now is anything written, by rank 0.
    if resuming:
        lock = exclusive_lock(run_dir, "training this run") if me.is_main else _NoLock()
        if me.is_main:
            remove_stale_temporaries(run_dir)
        try:
            extra_callbacks = make_callbacks()
            model.load_state_dict(saved.get("train_model") or saved["model"])
            if average is not None:
                average.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["scheduler"])
            if scaler is not None and saved.get("scaler"):
                scaler.load_state_dict(saved["scaler"])
            tracker.load_state_dict(saved["early_stopping"], saved["model"])
            for name, cb in extra_callbacks.items():
                cb.load_state_dict(saved["callbacks"].get(name))
        except BaseException as err:
            lock.close()
            if not isinstance(err, (RuntimeError, KeyError, ValueError, TypeError)):
                raise
            raise DataError(f"{run_dir / 'last.pt'}: does not fit the run's model or settings "
                            f"({type(err).__name__}: {_first_line(err)})") from None
        history.epochs = list(saved["history"]["epochs"])
        history.iteration_losses = list(saved["history"]["iteration_losses"])
        done_seconds = saved["train_seconds"]
        if saved["in_epoch"] is not None:
            resume_at = EpochProgress.from_state(saved["in_epoch"])
        start_epoch = saved["epoch"] + 1
        restore_random_states(saved["rng"], pipeline)
        log.info("resuming %s after epoch %d%s", run_dir, saved["epoch"],
                 f" at step {resume_at.step} of epoch {resume_at.epoch}" if resume_at else "")
    else:
        out_existed = Path(cfg.out).exists()
        run_dir = make_run_dir(cfg) if me.is_main else None
        if me.active:
            run_dir = Path(distributed.broadcast_object(str(run_dir) if me.is_main else None))
        lock = exclusive_lock(run_dir, "training this run") if me.is_main else _NoLock()
        start_epoch = 1
    try:
        if not resuming:
            extra_callbacks = make_callbacks()
        if not resuming and me.is_main:
            cfg_to_save.save(run_dir / "config.yaml")
            write_manifest(run_dir / "split.csv", data.source, data.assignment, seed=data.seed, val=data.val,
                           test=data.test)
            # The Albumentations form of the spec, also when the device backend runs it.
            save_pipeline(build_train_transform(spec, image_size, native=pipeline.native, seed=cfg.seed,
                                                lookup=plugins.augmentation_lookup()), run_dir / "augment.yaml")
        loggers = start_loggers(cfg, cfg_to_save, run_dir, saved if resuming else None, pipeline, data, image_size,
                                plugins) if me.is_main else []
        n_params = sum(p.numel() for p in model.parameters())
        log.info("model: %s/%s, %s parameters, %s, image %d px, batch %d, %d iterations per epoch, device %s, "
                 "augmentation on %s, %d loader worker(s), %d thread(s)", cfg.plugin, cfg.model, f"{n_params:,}",
                 cfg.activation, image_size, cfg.batch_size, steps, device,
                 "the device" if pipeline.aug_on_device else "the CPU", pipeline.workers, threads)
        if me.active:
            log.info("distributed: %d processes (%s), batch %d per process, %d in all; each process takes %d "
                     "steps an epoch", me.world_size, "nccl" if device.type == "cuda" else "gloo", cfg.batch_size,
                     cfg.batch_size * me.world_size, steps)
        log.info("run directory: %s", run_dir)
        session_start = time.perf_counter()

        def state(epoch, progress_state=None):
            return checkpoint_state(
                epoch=epoch, model=model, optimizer=optimizer, schedule=schedule, scaler=scaler, cfg=cfg_to_save,
                data=data, image_size=image_size, history=history, pipeline=pipeline, tracker=tracker,
                callbacks=extra_callbacks, train_seconds=done_seconds + time.perf_counter() - session_start,
                progress=progress_state, loggers=loggers, scored=average.module if average is not None else None)

        def save_unfinished_epoch(progress_state):
            from augpipe.files import save_checkpoint

            save_checkpoint(state(progress_state.epoch - 1, progress_state), run_dir / "last.pt")
            log.info("saved %s at step %d of epoch %d", run_dir / "last.pt", progress_state.step,
                     progress_state.epoch)

        def after_fast_forward():
            restore_random_states(saved["rng"], pipeline, loaders=False)

        # Checkpoints run last: last.pt must hold the state the next epoch starts from.
        callbacks = [tracker]
        if me.is_main:
            callbacks += [MetricsFile(run_dir / "metrics.csv", history.epochs), HookCallback(plugins, run_dir)]
        if cfg.freeze_epochs:
            from augpipe.training.finetune import FreezeBackbone, classifier_parameter_names

            callbacks.insert(1, FreezeBackbone(model, classifier_parameter_names(model, num_classes),
                                               cfg.freeze_epochs, start_epoch))
        callbacks += list(extra_callbacks.values()) + loggers
        if me.is_main:
            callbacks.append(Checkpoints(run_dir, state, tracker))
        control = TrainingControl(signals.requested, resume_at=resume_at,
                                  on_interrupt=save_unfinished_epoch if me.is_main else None,
                                  after_fast_forward=after_fast_forward if resume_at else None,
                                  batch_callbacks=([average] if average is not None else [])
                                  + list(extra_callbacks.values()), step_loggers=loggers)
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        mixer = BatchMixer.from_spec(spec, num_classes, seed=cfg.seed, rank=me.rank)
        # None: a bar on a terminal, a line every 30 s elsewhere (augpipe.progress)
        show_progress = progress if me.is_main else False
        max_seconds = cfg.max_minutes * 60 - done_seconds if cfg.max_minutes else None
        with signals.deferred():
            fit(train_model, pipeline.train, pipeline.val, prepare_train=pipeline.prepare_train,
                prepare_eval=pipeline.prepare_eval, optimizer=optimizer, schedule=schedule, loss_fn=loss_fn,
                epochs=cfg.epochs, device=device, num_classes=num_classes, callbacks=callbacks, tracker=tracker,
                precision=cfg.precision, max_seconds=max(1e-9, max_seconds) if max_seconds is not None else None,
                progress=show_progress, start_epoch=start_epoch, history=history, control=control, scaler=scaler,
                tta=cfg.tta, scored_model=average.module if average is not None else None, mixer=mixer)
        train_seconds = done_seconds + time.perf_counter() - session_start
        if history.stop_reason == "interrupted" and me.is_main:
            log.warning("interrupted by %s: last.pt saved; resume with: augpipe train --resume %s",
                        signals.received, run_dir)
        summary = _finish(cfg, scored, pipeline, data, history, tracker, run_dir, image_size, device, n_params,
                          train_seconds, interrupted=signals.received if history.stop_reason == "interrupted" else None,
                          write=me.is_main)
        if me.active:
            summary.update(world_size=me.world_size, global_batch_size=cfg.batch_size * me.world_size)
        if me.is_main:
            write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2, default=_json_default))
        finish_loggers(loggers, summary, run_dir)
        return RunResult(run_dir, summary, history)
    except BaseException as err:
        for lg in loggers:
            lg.finish({}, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            lg.close()
        if not me.is_main:
            raise
        _close_failed_run(run_dir, history, err, keep=resuming)
        if isinstance(err, WriteError) and run_dir is not None and (run_dir / "last.pt").is_file():
            raise WriteError(f"{err}; {run_dir / 'last.pt'} is intact: make room, then augpipe train --resume "
                             f"{run_dir}") from None
        if not resuming and not out_existed:
            with contextlib.suppress(OSError):
                Path(cfg.out).rmdir()  # only when empty: made for this run alone
        raise
    finally:
        lock.close()


def start_loggers(cfg: TrainConfig, saved_cfg: TrainConfig, run_dir: Path, saved, pipeline, data, image_size: int,
                  plugins) -> list:
    """The run's TensorBoard / MLflow loggers, started (a resumed run continues its own), with the
    settings as hyper-parameters and a grid of augmented training images."""
    from augpipe.training.loggers import hparams_from_config, make_loggers

    if not cfg.logger:
        return []
    loggers = make_loggers(cfg.logger, root=run_dir.parent, run_name=run_dir.name, experiment=cfg.experiment,
                           tracking_uri=cfg.tracking_uri)
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


def _finish(cfg, model, pipeline, data, history, tracker, run_dir, image_size, device, n_params, train_seconds,
            interrupted, write: bool = True) -> dict:
    """Score the test split with the weights the run keeps, draw the curves (``write``: this
    process writes the run directory), and say how it ended."""
    from augpipe.report import plot_confusion, plot_curves
    from augpipe.training.loop import evaluate

    restored = tracker.restore(model)
    summary = {"run_dir": str(run_dir), "plugin": cfg.plugin, "model": cfg.model, "activation": cfg.activation,
               "parameters": n_params, "image_size": image_size, "device": str(device),
               "epochs_run": len(history.epochs), "stop_reason": history.stop_reason, "failed": history.failed,
               "interrupted": interrupted, "resumable": interrupted is not None,
               "best_epoch": tracker.best_epoch, "monitor": cfg.monitor, "best_value": tracker.best,
               "restored_best": restored, "scored_checkpoint": "best.pt" if cfg.restore_best else "last.pt",
               "train_seconds": round(train_seconds, 2),
               "mean_images_per_s": float(np.mean([e["images_per_s"] for e in history.epochs])) if history.epochs else None,
               "skipped_images": len(data.skipped), "duplicates": data.duplicates,
               "aug_on_device": pipeline.aug_on_device, "data_on_device": pipeline.resident,
               "peak_device_memory_mb": _peak_device_memory_mb(device)}
    if interrupted:
        summary["resume_command"] = f"augpipe train --resume {run_dir}"
    if history.epochs and len(pipeline.test.dataset):
        test = evaluate(model, pipeline.test, pipeline.prepare_eval, torch.nn.CrossEntropyLoss(),
                        len(data.class_names), device, cfg.precision, cfg.tta)
        per_class = {name: (float(test["confusion"][i, i] / row) if (row := test["confusion"][i].sum()) else None)
                     for i, name in enumerate(data.class_names)}
        summary.update(test_acc=test["acc"], test_loss=test["loss"], test_images=test["n"],
                       per_class_acc=per_class, confusion=test["confusion"].tolist())
        if len(data.class_names) > INLINE_CONFUSION_CLASSES:
            # 1,000 classes made a 9 MB summary.json: the matrix goes to a file of its own.
            summary["confusion"] = None
            summary["confusion_file"] = CONFUSION_FILE
            if write:
                write_confusion_csv(run_dir / CONFUSION_FILE, test["confusion"], data.class_names)
        if not math.isfinite(test["loss"]) and not history.failed:
            summary["failed"] = history.failed = True
            summary["stop_reason"] = history.stop_reason = f"the test loss is {test['loss']}: the weights are not finite"
        if write:
            plot_confusion(test["confusion"], data.class_names, run_dir / "confusion.png",
                           title=f"test accuracy {test['acc']:.3f} ({cfg.plugin}/{cfg.model})")
        log.info("test accuracy %.4f on %d images (weights of epoch %s)", test["acc"], test["n"],
                 tracker.best_epoch if restored else len(history.epochs))
    if history.epochs and write:
        plot_curves(history.epochs, run_dir / "curves.png", best_epoch=tracker.best_epoch,
                    stop_epoch=tracker.stopped_epoch, iteration_losses=history.iteration_losses,
                    title=f"{cfg.plugin}/{cfg.model}, {cfg.activation}, {cfg.optimizer} lr {cfg.resolved_lr:g}, "
                          f"aug {cfg.aug if isinstance(cfg.aug, str) else 'custom'}")
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
    summary = {"run_dir": str(run_dir), "epochs_run": len(history.epochs), "failed": not interrupted,
               "interrupted": getattr(err, "signal_name", "SIGINT") if interrupted else None,
               "resumable": resumable,
               "stop_reason": "interrupted" if interrupted else f"{type(err).__name__}: {err}"}
    if resumable:
        summary["resume_command"] = f"augpipe train --resume {run_dir}"
    try:
        write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2, default=_json_default))
    except AugpipeError:
        pass


def evaluate(run_dir, *, data=None, checkpoint: str | None = None, device: str = "auto", plugins=None,
             tta: str | None = None) -> dict:
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
    prepared = prepare_data(data_path, split_file=split_file if split_file.is_file() else None,
                            val=cfg.val, test=cfg.test, seed=cfg.seed, cache_mb=cfg.cache_mb, max_pixels=cfg.max_pixels)
    if prepared.class_names != state["class_names"]:
        raise DataError(f"{data_path}: its classes differ from the run's ({', '.join(state['class_names'])})")
    image_size = state["image_size"]
    model = model_from_checkpoint(plugins, cfg, state, path, dev)
    spec = AugmentSpec.load(cfg.aug)
    pipeline = DataPipeline(prepared, cfg, spec, image_size, dev, plugins)
    from augpipe.training.tta import check_tta

    result = score(model, pipeline.test, pipeline.prepare_eval, torch.nn.CrossEntropyLoss(),
                   len(prepared.class_names), dev, cfg.precision, check_tta(cfg.tta if tta is None else tta))
    result["per_class_acc"] = {name: float(result["confusion"][i, i] / max(1, result["confusion"][i].sum()))
                               for i, name in enumerate(prepared.class_names)}
    result["epoch"] = state["epoch"]
    result["checkpoint"] = checkpoint
    result["class_names"] = prepared.class_names
    return result
