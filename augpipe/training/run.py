"""One training run from settings to run directory: data -> augmentation -> loaders -> model
(from a plugin) -> loop -> curves, checkpoints, metrics, test score."""
from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from augpipe.config import TrainConfig
from augpipe.errors import AugpipeError, ConfigError, DataError, PluginError

log = logging.getLogger("augpipe")

SCHEDULER_ALIASES = {"one-cycle": "onecycle", "one_cycle": "onecycle", "reduce-on-plateau": "plateau",
                     "reduce_on_plateau": "plateau", "constant": "none"}


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    history: object = field(repr=False, default=None)

    @property
    def failed(self) -> bool:
        return bool(self.summary.get("failed"))


def build_config(config=None, *, config_file=None, plugins=None, **flags) -> TrainConfig:
    """Settings from (lowest first) defaults, the plugin's defaults, a config file and flags."""
    from augpipe.plugin_manager import get_plugins

    plugins = plugins or get_plugins()
    if isinstance(config, TrainConfig):
        base = {k: v for k, v in config.to_dict().items() if v is not None}
    else:
        base = dict(config or {})
    file = TrainConfig.read_yaml(config_file) if config_file else {}
    file = {**base, **file}
    chosen = {**{k: v for k, v in file.items() if v is not None}, **{k: v for k, v in flags.items() if v is not None}}
    if chosen.get("recipe"):
        from augpipe.recipes import recipe_path

        chosen = {**TrainConfig.read_yaml(recipe_path(chosen["recipe"])), **chosen}
    if "scheduler" in chosen:
        chosen["scheduler"] = SCHEDULER_ALIASES.get(chosen["scheduler"], chosen["scheduler"])
    trainer = plugins.trainer(chosen.get("plugin", TrainConfig.plugin))
    defaults = dict(trainer.defaults)
    if "optimizer" in chosen and "lr" not in chosen:
        defaults.pop("lr", None)  # the plugin's lr suits its own optimizer, not the one chosen
    cfg = TrainConfig.resolve(plugin_defaults=defaults, flags=chosen)
    if cfg.model is None:
        cfg.model = trainer.default_model
    names = trainer.model_names()
    if names and cfg.model not in names:  # before any data is decoded
        from augpipe.plugin_manager import unknown_name_message

        raise PluginError(unknown_name_message("model", str(cfg.model), names, f" for plugin {cfg.plugin!r}"))
    plugins.optimizers.get(cfg.optimizer)
    plugins.schedulers.get(cfg.scheduler)
    for name in cfg.callbacks:
        plugins.callbacks.get(name)
    return cfg


def data_or_sample(path) -> str:
    """The data set to use: ``path``, or the bundled sample data when none is given."""
    if path is not None:
        return str(path)
    from augpipe.sample_data import path as sample_path

    return str(sample_path())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def build_model(plugins, cfg: TrainConfig, num_classes: int, image_size: int):
    trainer = plugins.trainer(cfg.plugin)
    try:
        model = trainer.build_model(model=cfg.model, num_classes=num_classes, image_size=image_size,
                                    activation=cfg.activation, dropout=cfg.dropout)
    except AugpipeError:
        raise
    except Exception as err:
        owner = plugins.trainers.owner.get(cfg.plugin, cfg.plugin)
        raise PluginError(f"plugin {owner!r} failed to build model {cfg.model!r}: {type(err).__name__}: {err}") from None
    if not isinstance(model, torch.nn.Module):
        raise PluginError(f"plugin {cfg.plugin!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def call_plugin(registry, name: str, *args, **kwargs):
    """Call a registered factory; its failure is reported as the plugin's, by name."""
    factory = registry.get(name)
    try:
        return factory(*args, **kwargs)
    except AugpipeError:
        raise
    except Exception as err:
        owner = registry.owner.get(name, "?")
        raise PluginError(f"plugin {owner!r} failed to build {registry.kind} {name!r}: "
                          f"{type(err).__name__}: {err}") from None


def new_run_dir(cfg: TrainConfig) -> Path:
    name = cfg.name or datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.out) / name
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise DataError(f"--out {cfg.out}: not a directory")
    if run_dir.exists():
        raise DataError(f"run directory {run_dir} already exists: choose another --name, or remove it")
    return run_dir


class DataPipeline:
    """Loaders and the batch preparation (augmentation and normalisation) for a prepared split."""

    def __init__(self, data, cfg: TrainConfig, spec, image_size: int, device: torch.device, plugins):
        from augpipe.augment.cpu import build_eval_transform, build_train_transform
        from augpipe.data.loader import AugmentedImages, BatchNormalizer, EpochLoader, default_workers

        self.aug_on_device = cfg.aug_device == "gpu" or (cfg.aug_device == "auto" and device.type == "cuda")
        native = data.store.native_size() if data.store.shapes_equal else None
        self.native = native
        workers = cfg.workers if cfg.workers is not None else default_workers(device.type)
        lookup = plugins.augmentation_lookup()
        if self.aug_on_device:
            from augpipe.augment.device import DeviceAugment

            if spec.extra:
                raise ConfigError("augmentations under 'extra' run only in loader workers: use --aug-device cpu")
            self.train_transform = build_eval_transform(spec, image_size, native=native) if native != (image_size, image_size) else None
            self.device_augment = DeviceAugment(spec, image_size, device=device, generator_seed=cfg.seed,
                                                channels_last=cfg.channels_last)
            self.prepare_train = self.device_augment
        else:
            self.train_transform = build_train_transform(spec, image_size, native=native, seed=cfg.seed, lookup=lookup)
            self.prepare_train = BatchNormalizer(spec.normalize.mean, spec.normalize.std, device,
                                                 channels_last=cfg.channels_last)
        eval_transform = build_eval_transform(spec, image_size, native=native)
        if not eval_transform.transforms:
            eval_transform = None
        self.prepare_eval = BatchNormalizer(spec.normalize.mean, spec.normalize.std, device,
                                            channels_last=cfg.channels_last)
        pin = device.type == "cuda"
        labels = data.source.labels

        def loader(split, transform, shuffle, seed_offset, n_workers, drop_last=False):
            ds = AugmentedImages(data.store, data.indices(split), labels, transform)
            return EpochLoader(ds, batch_size=cfg.batch_size, shuffle=shuffle, num_workers=n_workers,
                               seed=cfg.seed + seed_offset, pin_memory=pin, drop_last=drop_last)

        # A last training batch of a single image breaks batch norm (one value per channel).
        lone_last = len(data.indices("train")) % cfg.batch_size == 1 and len(data.indices("train")) > 1
        self.train = loader("train", self.train_transform, True, 0, workers, drop_last=lone_last)
        # Evaluation batches need no augmentation: decoding from the cache is cheap in-process.
        eval_workers = 0 if data.store.cached else workers
        self.val = loader("val", eval_transform, False, 1, eval_workers)
        self.test = loader("test", eval_transform, False, 2, eval_workers)
        self.workers = workers


def checkpoint_state(*, epoch, model, optimizer, schedule, cfg, data, image_size, history, pipeline) -> dict:
    return {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": schedule.state_dict(),
        "config": cfg.to_dict(),
        "class_names": data.class_names,
        "image_size": image_size,
        "split": {"key_column": data.source.key_column, "keys": data.source.keys,
                  "labels": data.source.labels.tolist(), "splits": data.assignment.tolist(),
                  "seed": data.seed, "val": data.val, "test": data.test},
        "history": list(history.epochs),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "train_loader": pipeline.train.generator.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }


def train(config=None, *, config_file=None, plugins=None, progress: bool | None = None, **flags) -> RunResult:
    """Train as ``augpipe train`` does: ``config`` is a TrainConfig, a dict of its fields or
    None; keyword arguments override it (``augpipe.train(plugin="cnn", epochs=3)``)."""
    from augpipe.augment.cpu import build_train_transform, save_pipeline
    from augpipe.augment.spec import AugmentSpec
    from augpipe.data.prepare import prepare_data
    from augpipe.data.split import describe_duplicates, split_table, write_manifest
    from augpipe.plugin_manager import get_plugins
    from augpipe.report import plot_confusion, plot_curves
    from augpipe.training.callbacks import Checkpoints, EarlyStopping, HookCallback, MetricsFile
    from augpipe.training.loop import evaluate, fit

    plugins = plugins or get_plugins()
    cfg = build_config(config, config_file=config_file, plugins=plugins, **flags)
    device = resolve_device(cfg.device)
    if cfg.precision == "fp16" and device.type != "cuda":
        log.info("--precision fp16 applies on CUDA only; training in fp32 on the CPU (bf16 works on CPUs)")
    spec = AugmentSpec.load(cfg.aug)
    run_dir = new_run_dir(cfg)
    seed_everything(cfg.seed)

    data_path = data_or_sample(cfg.data)
    data = prepare_data(data_path, val=cfg.val, test=cfg.test, seed=cfg.seed, split_file=cfg.split_file,
                        strict=cfg.strict, cache_mb=cfg.cache_mb)
    if len(data.indices("train")) == 0:
        raise DataError(f"{data_path}: the training split is empty")
    log.info("data: %s (%d images, %d classes)\n%s\n%s", data_path, len(data.source), len(data.class_names),
             split_table(data.class_names, data.source.labels, data.assignment), describe_duplicates(data.duplicates))
    image_size = cfg.image_size or spec.size or min(data.store.native_size())
    num_classes = len(data.class_names)

    model = build_model(plugins, cfg, num_classes, image_size).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = call_plugin(plugins.optimizers, cfg.optimizer, model, lr=cfg.resolved_lr,
                            weight_decay=cfg.weight_decay, momentum=cfg.resolved_momentum)
    pipeline = DataPipeline(data, cfg, spec, image_size, device, plugins)
    steps = len(pipeline.train)
    schedule = call_plugin(plugins.schedulers, cfg.scheduler, optimizer, config=cfg, steps_per_epoch=steps,
                           epochs=cfg.epochs)
    extra_callbacks = [call_plugin(plugins.callbacks, name, run_dir, cfg) for name in cfg.callbacks]
    threads = cfg.threads or max(1, _cores())
    torch.set_num_threads(threads)
    train_model = torch.compile(model) if cfg.compile else model

    # Everything a user can get wrong has been checked: only now is anything written.
    try:
        run_dir.mkdir(parents=True)
    except OSError as err:
        raise DataError(f"{run_dir}: can not be created ({err.strerror})") from None
    from augpipe.training.loop import History

    history = History()
    try:
        cfg_to_save = TrainConfig(**{**cfg.to_dict(), "aug": spec.to_dict()})
        cfg_to_save.save(run_dir / "config.yaml")
        write_manifest(run_dir / "split.csv", data.source, data.assignment, seed=data.seed, val=data.val, test=data.test)
        # The Albumentations form of the spec, also when the device backend runs it.
        save_pipeline(build_train_transform(spec, image_size, native=pipeline.native, seed=cfg.seed,
                                            lookup=plugins.augmentation_lookup()), run_dir / "augment.yaml")
        n_params = sum(p.numel() for p in model.parameters())
        log.info("model: %s/%s, %s parameters, %s, image %d px, batch %d, %d iterations per epoch, device %s, "
                 "augmentation on %s, %d loader worker(s), %d thread(s)", cfg.plugin, cfg.model, f"{n_params:,}",
                 cfg.activation, image_size, cfg.batch_size, steps, device,
                 "the device" if pipeline.aug_on_device else "the CPU", pipeline.workers, threads)
        log.info("run directory: %s", run_dir)

        tracker = EarlyStopping(cfg.monitor, cfg.monitor_mode, cfg.patience, cfg.min_delta, cfg.start_from_epoch,
                                cfg.restore_best)

        callbacks = [tracker,
                     Checkpoints(run_dir, lambda epoch: checkpoint_state(
                         epoch=epoch, model=model, optimizer=optimizer, schedule=schedule, cfg=cfg_to_save, data=data,
                         image_size=image_size, history=history, pipeline=pipeline), tracker),
                     MetricsFile(run_dir / "metrics.csv"), HookCallback(plugins, run_dir)]
        callbacks += extra_callbacks
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        eval_loss = torch.nn.CrossEntropyLoss()
        show_progress = sys.stderr.isatty() if progress is None else progress
        start = time.perf_counter()
        try:
            fit(train_model, pipeline.train, pipeline.val, prepare_train=pipeline.prepare_train,
                prepare_eval=pipeline.prepare_eval, optimizer=optimizer, schedule=schedule, loss_fn=loss_fn,
                epochs=cfg.epochs, device=device, num_classes=num_classes, callbacks=callbacks, tracker=tracker,
                precision=cfg.precision, max_seconds=cfg.max_minutes * 60 if cfg.max_minutes else None,
                progress=show_progress, history=history)
        except KeyboardInterrupt:
            history.stop_reason = "interrupted"
            log.info("interrupted: finishing the run directory with the epochs done so far")
        train_seconds = time.perf_counter() - start

        restored = tracker.restore(model)
        summary = {"run_dir": str(run_dir), "plugin": cfg.plugin, "model": cfg.model, "activation": cfg.activation,
                   "parameters": n_params, "image_size": image_size, "device": str(device),
                   "epochs_run": len(history.epochs), "stop_reason": history.stop_reason, "failed": history.failed,
                   "best_epoch": tracker.best_epoch, "monitor": cfg.monitor, "best_value": tracker.best,
                   "restored_best": restored, "train_seconds": round(train_seconds, 2),
                   "mean_images_per_s": float(np.mean([e["images_per_s"] for e in history.epochs])) if history.epochs else None,
                   "skipped_images": len(data.skipped), "duplicates": data.duplicates}
        if history.epochs and len(pipeline.test.dataset):
            test = evaluate(model, pipeline.test, pipeline.prepare_eval, eval_loss, num_classes, device, cfg.precision)
            per_class = {name: (float(test["confusion"][i, i] / row) if (row := test["confusion"][i].sum()) else None)
                         for i, name in enumerate(data.class_names)}
            summary.update(test_acc=test["acc"], test_loss=test["loss"], test_images=test["n"],
                           per_class_acc=per_class, confusion=test["confusion"].tolist())
            plot_confusion(test["confusion"], data.class_names, run_dir / "confusion.png",
                           title=f"test accuracy {test['acc']:.3f} ({cfg.plugin}/{cfg.model})")
            log.info("test accuracy %.4f on %d images (weights of epoch %s)", test["acc"], test["n"],
                     tracker.best_epoch if restored else len(history.epochs))
        if history.epochs:
            plot_curves(history.epochs, run_dir / "curves.png", best_epoch=tracker.best_epoch,
                        stop_epoch=tracker.stopped_epoch, iteration_losses=history.iteration_losses,
                        title=f"{cfg.plugin}/{cfg.model}, {cfg.activation}, {cfg.optimizer} lr {cfg.resolved_lr:g}, "
                              f"aug {cfg.aug if isinstance(cfg.aug, str) else 'custom'}")
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
        return RunResult(run_dir, summary, history)
    except BaseException as err:
        _close_failed_run(run_dir, history, err)
        raise


def _close_failed_run(run_dir: Path, history, err: BaseException) -> None:
    """A run that fails after its directory was made leaves either nothing (no epoch done) or a
    summary saying why it failed beside the epochs it finished: never a half-written run."""
    import shutil

    if not history.epochs:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    summary = {"run_dir": str(run_dir), "epochs_run": len(history.epochs), "failed": True,
               "stop_reason": f"{type(err).__name__}: {err}"}
    try:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    except OSError:
        pass


def _json_default(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return str(v)


def evaluate(run_dir, *, data=None, checkpoint: str = "best.pt", device: str = "auto", plugins=None) -> dict:
    """Rescore a run's checkpoint on the test split of its manifest (or of ``data``)."""
    from augpipe.augment.spec import AugmentSpec
    from augpipe.data.loader import AugmentedImages, BatchNormalizer, EpochLoader
    from augpipe.augment.cpu import build_eval_transform
    from augpipe.data.prepare import prepare_data
    from augpipe.plugin_manager import get_plugins
    from augpipe.training.loop import evaluate as score

    run_dir = Path(run_dir)
    path = run_dir / checkpoint
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise DataError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or not {"config", "class_names", "image_size", "model"} <= set(state):
        raise DataError(f"{path}: not an augpipe checkpoint")
    cfg = TrainConfig.from_dict(state["config"], where=str(path))
    plugins = plugins or get_plugins()
    dev = resolve_device(device)
    data_path = data_or_sample(data or cfg.data)
    split_file = run_dir / "split.csv"
    prepared = prepare_data(data_path, split_file=split_file if split_file.is_file() else None,
                            val=cfg.val, test=cfg.test, seed=cfg.seed, cache_mb=cfg.cache_mb)
    if prepared.class_names != state["class_names"]:
        raise DataError(f"{data_path}: its classes differ from the run's ({', '.join(state['class_names'])})")
    model = build_model(plugins, cfg, len(prepared.class_names), state["image_size"])
    model.load_state_dict(state["model"])
    model.to(dev)
    spec = AugmentSpec.load(cfg.aug)
    native = prepared.store.native_size() if prepared.store.shapes_equal else None
    transform = build_eval_transform(spec, state["image_size"], native=native)
    ds = AugmentedImages(prepared.store, prepared.indices("test"), prepared.source.labels,
                         transform if transform.transforms else None)
    loader = EpochLoader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=0, seed=cfg.seed)
    result = score(model, loader, BatchNormalizer(spec.normalize.mean, spec.normalize.std, dev),
                   torch.nn.CrossEntropyLoss(), len(prepared.class_names), dev)
    result["per_class_acc"] = {name: float(result["confusion"][i, i] / max(1, result["confusion"][i].sum()))
                               for i, name in enumerate(prepared.class_names)}
    result["epoch"] = state["epoch"]
    result["class_names"] = prepared.class_names
    return result
