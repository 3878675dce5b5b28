"""One training run from settings to run directory: data -> augmentation -> loaders -> model
(from a plugin) -> loop -> curves, checkpoints, metrics, test score."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from augpipe import distributed
from augpipe.config import TrainConfig, check_device_name, typed_settings
from augpipe.errors import AugpipeError, ConfigError, DataError, PluginError, WriteError

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
        base = config.chosen()
    else:
        base = typed_settings({} if config is None else config, "config")
    file = typed_settings(TrainConfig.read_yaml(config_file), str(config_file)) if config_file else {}
    file = {**base, **file}
    chosen = {**{k: v for k, v in file.items() if v is not None},
              **{k: v for k, v in typed_settings(flags, "settings").items() if v is not None}}
    if chosen.get("recipe"):
        from augpipe.recipes import recipe_path

        chosen = {**typed_settings(TrainConfig.read_yaml(recipe_path(chosen["recipe"])), chosen["recipe"]), **chosen}
    if "scheduler" in chosen:
        chosen["scheduler"] = SCHEDULER_ALIASES.get(chosen["scheduler"], chosen["scheduler"])
    trainer = plugins.trainer(chosen.get("plugin", TrainConfig.plugin))
    defaults = dict(trainer.defaults)
    if "optimizer" in chosen and "lr" not in chosen:
        defaults.pop("lr", None)  # the plugin's lr suits its own optimizer, not the one chosen
    cfg = TrainConfig.resolve(plugin_defaults=defaults, flags=chosen)
    if cfg.model is None:
        cfg.model = trainer.default_model
    if trainer.activations is not None and cfg.activation not in trainer.activations:
        raise ConfigError(f"trainer {cfg.plugin!r} supports --activation {', '.join(trainer.activations)}, "
                          f"not {cfg.activation!r}")
    names = trainer.model_names()
    if names and cfg.model not in names:  # before any data is decoded
        from augpipe.plugin_manager import unknown_name_message

        raise PluginError(unknown_name_message("model", str(cfg.model), names, f" for plugin {cfg.plugin!r}"))
    plugins.optimizers.get(cfg.optimizer)
    plugins.schedulers.get(cfg.scheduler)
    for name in cfg.callbacks:
        plugins.callbacks.get(name)
    from augpipe.training.loggers import check_loggers

    cfg.logger = list(check_loggers(cfg.logger))
    return cfg


def data_or_sample(path) -> str:
    """The data set to use: ``path``, or the bundled sample data when none is given."""
    if path is not None:
        return str(path)
    from augpipe.sample_data import path as sample_path

    return str(sample_path())


def resolve_device(name: str) -> torch.device:
    check_device_name(name)
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


def build_model(plugins, cfg: TrainConfig, num_classes: int, image_size: int, pretrained: bool = False):
    """The plugin's model; with ``pretrained``, its pretrained weights (a trainer's
    ``build_model`` that can load them takes ``pretrained=True``)."""
    import inspect

    trainer = plugins.trainer(cfg.plugin)
    kwargs = dict(model=cfg.model, num_classes=num_classes, image_size=image_size, activation=cfg.activation,
                  dropout=cfg.dropout)
    if pretrained:
        params = inspect.signature(trainer.build_model).parameters
        if "pretrained" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise PluginError(f"trainer {cfg.plugin!r} has no pretrained weights (its build_model takes no "
                              f"pretrained=); use --weights FILE")
        kwargs["pretrained"] = True
    try:
        model = trainer.build_model(**kwargs)
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


class DataPipeline:
    """Loaders and the batch preparation (augmentation and normalisation) for a prepared split."""

    def __init__(self, data, cfg: TrainConfig, spec, image_size: int, device: torch.device, plugins):
        from augpipe.augment.cpu import build_eval_transform, build_train_transform
        from augpipe.data.loader import AugmentedImages, BatchNormalizer, EpochLoader, default_workers

        needs_workers = _needs_loader_workers(spec)
        if cfg.aug_device == "gpu" and needs_workers:
            raise ConfigError(f"{needs_workers}: use --aug-device cpu")
        # auto: on the device where there is a CUDA one (or the data is to be there), unless the
        # spec has operations only the workers' Albumentations can run.
        self.aug_on_device = cfg.aug_device == "gpu" or (
            cfg.aug_device == "auto" and (device.type == "cuda" or cfg.data_on_device == "on") and not needs_workers)
        if cfg.data_on_device == "on" and needs_workers:
            raise ConfigError(f"--data-on-device on: {needs_workers}")
        native = data.store.native_size() if data.store.shapes_equal else None
        self.native = native
        workers = cfg.workers if cfg.workers is not None else default_workers(device.type)
        lookup = plugins.augmentation_lookup()
        if spec.batch_ops() and cfg.batch_size < 2:
            ops = spec.batch_ops()
            raise ConfigError(f"{' and '.join(ops)} {'mix' if len(ops) > 1 else 'mixes'} the images of a batch: "
                              f"--batch-size must be at least 2, got {cfg.batch_size}")
        if self.aug_on_device:
            from augpipe.augment.device import DeviceAugment

            self.train_transform = build_eval_transform(spec, image_size, native=native) if native != (image_size, image_size) else None
            rank = distributed.ranks().rank  # each rank its own random numbers
            # flip_seed: the alternate flip of an image is the same whichever rank draws it
            self.device_augment = DeviceAugment(spec, image_size, device=device,
                                                generator_seed=cfg.seed + 7919 * rank if rank else cfg.seed,
                                                channels_last=cfg.channels_last, flip_seed=cfg.seed)
            self.prepare_train = self._augment_on_device
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
        me = distributed.ranks()

        shards = shard_batch_sampler(data, cfg, me, workers)
        self.resident = self.aug_on_device and self._data_to_device(data, cfg, device, image_size, shards)
        if self.resident:
            workers = 0

        def loader(split, transform, shuffle, seed_offset, n_workers, drop_last=False, batch_sampler=None):
            if self.resident:
                from augpipe.data.resident import ResidentLoader, stack_split

                items = data.indices(split)
                return ResidentLoader(stack_split(data.store, items, transform), labels[items], items, device,
                                      batch_size=cfg.batch_size, shuffle=shuffle, seed=cfg.seed + seed_offset,
                                      drop_last=drop_last, rank=me.rank, world_size=me.world_size)
            ds = AugmentedImages(data.store, data.indices(split), labels, transform, stream=me.rank)
            return EpochLoader(ds, batch_size=cfg.batch_size, shuffle=shuffle, num_workers=n_workers,
                               seed=cfg.seed + seed_offset, pin_memory=pin, drop_last=drop_last,
                               rank=me.rank, world_size=me.world_size, batch_sampler=batch_sampler)

        # A last training batch of a single image breaks batch norm (one value per channel).
        n_train = math.ceil(len(data.indices("train")) / me.world_size)  # this rank's share
        lone_last = n_train % cfg.batch_size == 1 and n_train > 1
        if cfg.batch_size > n_train > 0:
            log.warning("--batch-size %d is more than the %d training images%s: each epoch is one batch of %d",
                        cfg.batch_size, n_train, " of this process" if me.world_size > 1 else "", n_train)
        self.train = loader("train", self.train_transform, True, 0, workers, drop_last=lone_last,
                            batch_sampler=shards)
        # Evaluation batches need no augmentation: decoding from the cache is cheap in-process.
        eval_workers = 0 if data.store.cached else workers
        self.val = loader("val", eval_transform, False, 1, eval_workers)
        self.test = loader("test", eval_transform, False, 2, eval_workers)
        self.workers = workers


    @staticmethod
    def _data_to_device(data, cfg: TrainConfig, device: torch.device, image_size: int, shards) -> bool:
        from augpipe.data.resident import decide, split_bytes

        why_not = "the data is read from tar shards, a few at a time" if shards is not None else None
        resized = None if data.store.shapes_equal and data.store.native_size() == (image_size, image_size) \
            else image_size
        needed = sum(split_bytes(data.store, data.indices(s), resized) for s in ("train", "val", "test"))
        return decide(cfg.data_on_device, device, needed, why_not)

    def _augment_on_device(self, images):
        # The alternate flip decides by the batch's items and the epoch, which the train loader knows.
        return self.device_augment(images, items=self.train.batch_items, epoch=self.train.epoch)

    def check_train_transform(self, data, image_size: int) -> None:
        """Run the training augmentation once on a real image, on a copy (the pipeline's own
        random streams stay untouched): an ``extra`` transform that fails on these images (a
        crop larger than they are) or changes their size is refused before anything is written."""
        import copy

        if self.train_transform is None or not len(data.indices("train")):
            return
        i = int(data.indices("train")[0])
        try:
            out = copy.deepcopy(self.train_transform)(image=data.store[i])["image"]
        except AugpipeError:
            raise
        except Exception as err:
            raise ConfigError(f"the augmentation fails on {data.source.describe(i)}: {type(err).__name__}: "
                              f"{_first_line(err)}") from None
        if out.shape != (image_size, image_size, 3):
            raise ConfigError(f"the augmentation turns {data.source.describe(i)} into {tuple(out.shape)}, "
                              f"not {image_size}x{image_size}x3: an 'extra' transform changes the size")


def _needs_loader_workers(spec) -> str | None:
    """Why ``spec`` can only be augmented by Albumentations in loader workers, or None."""
    if spec.extra:
        return "augmentations under 'extra' run only in loader workers"
    if spec.policy_ops():
        return f"{', '.join(spec.policy_ops())} runs only in loader workers (its operations are Albumentations')"
    return None


def shard_batch_sampler(data, cfg: TrainConfig, me, workers: int):
    """For a data set read from tar shards, the batch sampler that gives each rank and each loader
    worker its own shards; None for every other source. Its batches are all full (a reader short
    of items repeats its own), so there is no lone last batch to drop."""
    shard_of = getattr(data.source.blobs, "shard_of_item", None)
    if shard_of is None:
        return None
    from augpipe.data.shards import ShardBatchSampler

    train = data.indices("train")
    return ShardBatchSampler(np.asarray(shard_of)[train], cfg.batch_size, rank=me.rank, world_size=me.world_size,
                             num_workers=workers, seed=cfg.seed)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def check_model_input(model, cfg: TrainConfig, num_classes: int, image_size: int, device) -> None:
    """One forward pass of two blank images before training: a model that can not take images of
    this size (4x4 pixels into three pooling stages) is a one-line error, not a traceback later."""
    x = torch.zeros(2, 3, image_size, image_size, device=device)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:
        raise ConfigError(f"model {cfg.plugin}/{cfg.model} can not take {image_size}x{image_size} images "
                          f"({type(err).__name__}: {_first_line(err)}); give a larger --image-size") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PluginError(f"model {cfg.plugin}/{cfg.model} returned {shape} for 2 images, not (2, {num_classes})")


def portable_config(cfg: TrainConfig, spec) -> TrainConfig:
    """The settings as ``config.yaml`` keeps them: the augmentation spec itself rather than a
    file name, and absolute data paths, so the run can be re-run or evaluated from anywhere."""
    saved = cfg.to_dict()
    saved["aug"] = spec.to_dict()
    for key in ("data", "split_file", "weights"):
        if saved[key] is not None:
            saved[key] = str(Path(saved[key]).expanduser().resolve())
    return TrainConfig.from_dict(saved)


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
        raise ConfigError(f"--resume continues a run with its own settings: --{changed[0].replace('_', '-')} "
                          f"can not be changed (only {', '.join('--' + f for f in RESUME_FLAGS)} can)")
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run directory")
    state = run_state(run_dir)
    if state == "finished":
        raise DataError(f"{run_dir}: the run has ended ({read_summary(run_dir)['stop_reason']}); nothing to resume")
    path = run_dir / "last.pt"
    if state != "resume":
        raise DataError(f"{run_dir}: no last.pt to resume from (the run was stopped before it finished a step); "
                        f"start it again")
    state = check_resumable(load_checkpoint(path), path)
    cfg = TrainConfig.from_dict({**state["config"], **{k: v for k, v in flags.items() if v is not None}},
                                where=str(path))
    from augpipe.training.loggers import check_loggers

    cfg.logger = list(check_loggers(cfg.logger))
    return cfg, state


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


def load_data(cfg: TrainConfig, split_file=None, data_cache: dict | None = None, min_classes: int = 2):
    """The run's data, opened, decoded, checked and split. With ``data_cache`` (a dict shared by
    the runs of one process, as a sweep's) a data set is decoded once for every run that reads it
    with the same decoding settings; only the split, which depends on the seed, is made anew."""
    from augpipe.data.prepare import decode_data, split_decoded

    data_path = data_or_sample(cfg.data)
    key = (str(Path(data_path).expanduser().resolve()), cfg.strict, cfg.cache_mb, cfg.max_pixels, min_classes)
    decoded = data_cache.get(key) if data_cache is not None else None
    if decoded is None:
        decoded = decode_data(data_path, strict=cfg.strict, cache_mb=cfg.cache_mb, max_pixels=cfg.max_pixels,
                              min_classes=min_classes, split_file=split_file)
        if data_cache is not None:
            data_cache[key] = decoded
    return data_path, split_decoded(decoded, val=cfg.val, test=cfg.test, seed=cfg.seed, split_file=split_file)


def choose_image_size(cfg: TrainConfig, spec, trainer, data) -> tuple[int, str]:
    """The side images are trained at, and where it came from: --image-size, else the
    augmentation spec's size, else the size the model is built for (as timm's models declare
    theirs), else the data's own."""
    native = data.store.native_size()
    held = (f"the data's images are {native[1]}x{native[0]}" if data.store.shapes_equal
            else f"the data's images differ in size, most are {native[1]}x{native[0]}")
    if cfg.image_size:
        return cfg.image_size, f"--image-size; {held}"
    if spec.size:
        return spec.size, f"the augmentation spec's size; {held}"
    built_for = trainer.model_input_size(cfg.model)
    if built_for:
        if data.store.shapes_equal and native == (built_for, built_for):
            return built_for, f"what {cfg.plugin}/{cfg.model} is built for, and the data's own size"
        return built_for, f"what {cfg.plugin}/{cfg.model} is built for; {held}, resized to it " \
                          f"(--image-size to choose)"
    return min(native), f"the data's own size; {cfg.plugin}/{cfg.model} takes any"


def use_weights_normalization(spec, normalization) -> None:
    """Starting weights were trained on images normalised their own way: use it, unless the
    augmentation spec names a normalisation of its own (anything but the default)."""
    from augpipe.augment.spec import IMAGENET_MEAN, IMAGENET_STD, Normalize

    mean, std = (tuple(float(v) for v in normalization[0]), tuple(float(v) for v in normalization[1]))
    own = (tuple(float(v) for v in spec.normalize.mean), tuple(float(v) for v in spec.normalize.std))
    if own != (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)):
        if own != (mean, std):
            log.info("normalisation: the spec's own (mean %s, std %s), not the weights' (mean %s, std %s)",
                     list(spec.normalize.mean), list(spec.normalize.std), list(mean), list(std))
        return
    if len(mean) == 3 and len(std) == 3 and all(s > 0 for s in std):
        spec.normalize = Normalize(mean=mean, std=std)
        log.info("normalisation: the weights' own (mean %s, std %s)", list(mean), list(std))


@dataclass
class TrainingParts:
    model: torch.nn.Module
    train_model: torch.nn.Module  # the model, or its torch.compile'd form
    optimizer: torch.optim.Optimizer
    pipeline: "DataPipeline"
    image_size: int
    threads: int


def fit_to_training_images(model, data, spec, image_size: int, cfg: TrainConfig, count: int = 5000) -> None:
    """A model whose first layer is fitted to the data (patch whitening: ``init_from_data``) gets
    up to ``count`` training images, unaugmented, at its size, with the run's normalisation. A
    resumed run, or one from --weights, keeps the fitted layer its checkpoint holds."""
    from augpipe.augment.cpu import build_eval_transform

    native = data.store.native_size() if data.store.shapes_equal else None
    transform = build_eval_transform(spec, image_size, native=native)
    picks = data.indices("train")[:count]
    images = [data.store[int(i)] for i in picks]
    if transform.transforms:
        images = [transform(image=im)["image"] for im in images]
    model.init_from_data(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), spec.normalize.mean,
                         spec.normalize.std)
    log.info("%s/%s: first layer fitted to %d training images", cfg.plugin, cfg.model, len(images))


def build_parts(cfg: TrainConfig, plugins, data, data_path, spec, device, image_size: int | None = None,
                resuming: bool = False) -> TrainingParts:
    """Model, optimizer and data pipeline as a run trains them, each checked on the real data
    before anything is written: what ``train`` and ``lr-find`` share. The starting weights
    (--pretrained, --weights) are loaded unless the run is resumed (its checkpoint has its
    own); their normalisation replaces the spec's default one."""
    from augpipe.training.finetune import classifier_parameter_names, load_weights, scale_backbone_lr

    if len(data.indices("train")) == 0:
        raise DataError(f"{data_path}: the training split is empty")
    if image_size is None:
        image_size, reason = choose_image_size(cfg, spec, plugins.trainer(cfg.plugin), data)
        log.info("image size: %d px (%s)", image_size, reason)
    num_classes = len(data.class_names)
    model = build_model(plugins, cfg, num_classes, image_size, pretrained=cfg.pretrained and not resuming)
    normalization = None
    if cfg.pretrained and not resuming:
        pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
        if pretrained_cfg.get("mean") and pretrained_cfg.get("std"):
            normalization = (tuple(pretrained_cfg["mean"]), tuple(pretrained_cfg["std"]))
    if cfg.weights and not resuming:
        normalization = load_weights(model, cfg.weights, num_classes)
    if normalization is not None:
        use_weights_normalization(spec, normalization)
    if callable(getattr(model, "init_from_data", None)) and not resuming and not cfg.weights and not cfg.pretrained:
        fit_to_training_images(model, data, spec, image_size, cfg)
    model = model.to(device)
    if device.type == "cuda":
        # fixed batch shapes: cuDNN times its kernels once and keeps the fastest (a GPU run is
        # not bit-for-bit repeatable anyway; the CPU's is)
        torch.backends.cudnn.benchmark = True
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    check_model_input(model, cfg, num_classes, image_size, device)
    optimizer = call_plugin(plugins.optimizers, cfg.optimizer, model, lr=cfg.resolved_lr,
                            weight_decay=cfg.weight_decay, momentum=cfg.resolved_momentum)
    if cfg.backbone_lr_scale != 1.0:
        scale_backbone_lr(optimizer, model, classifier_parameter_names(model, num_classes), cfg.backbone_lr_scale)
    if cfg.decay_bias_and_norm:
        from augpipe.training.optim import decay_every_parameter

        decay_every_parameter(optimizer, cfg.weight_decay)
    if cfg.norm_lr_scale != 1.0:
        from augpipe.training.optim import scale_norm_lr

        scale_norm_lr(optimizer, model, cfg.norm_lr_scale)
    pipeline = DataPipeline(data, cfg, spec, image_size, device, plugins)
    pipeline.check_train_transform(data, image_size)
    me = distributed.ranks()
    threads = cfg.threads or max(1, _cores() // me.local_world_size)
    torch.set_num_threads(threads)
    train_model = model
    if me.active:
        from torch.nn.parallel import DistributedDataParallel

        # A frozen backbone's weights get no gradient, nor does what a model's set_epoch freezes:
        # DDP must be told to expect that.
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=cfg.freeze_epochs > 0
                                              or callable(getattr(model, "set_epoch", None)))
    return TrainingParts(model, _compiled(train_model, cfg) if cfg.compile else train_model, optimizer, pipeline,
                         image_size, threads)


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


def _load_data_once(cfg, split_file, data_cache, me):
    """Rank 0 opens and decodes the data set first (filling the image index), then the other
    ranks do (reading it), and every rank takes rank 0's split: the split is made once."""
    if me.active and not me.is_main:
        distributed.barrier_for_data()
    data_path, data = load_data(cfg, split_file, data_cache)
    if not me.active:
        return data_path, data
    if me.is_main:
        distributed.barrier_for_data()
    fingerprint, assignment = distributed.broadcast_object(
        (data.source.fingerprint(), data.assignment.tolist()), data_phase=True)
    if data.source.fingerprint() != fingerprint:
        raise DataError(f"rank {me.rank}: the data set at {data_path} is not the one rank 0 reads (its images or "
                        f"labels differ); every node needs the same copy")
    data.assignment = np.asarray(assignment, dtype=data.assignment.dtype)
    return data_path, data


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


def augmented_grid(cfg: TrainConfig, data, pipeline, image_size: int, plugins, rows: int = 8, variants: int = 6):
    """Training images (one a row, in the first column) and augmented versions of them, as the
    run's spec augments them, tiled into one RGB array. Drawn with a copy of the pipeline seeded
    apart, so that the run's own random streams are untouched."""
    from augpipe.augment.cpu import build_eval_transform, build_train_transform, seed_transform
    from augpipe.augment.spec import AugmentSpec

    spec = AugmentSpec.load(cfg.aug)
    transform = build_train_transform(spec, image_size, native=pipeline.native, seed=cfg.seed,
                                      lookup=plugins.augmentation_lookup())
    seed_transform(transform, cfg.seed + 104729)
    plain = build_eval_transform(spec, image_size, native=pipeline.native)
    train = data.indices("train")
    picks = np.random.default_rng(cfg.seed).choice(train, size=min(rows, len(train)), replace=False)
    tiles = []
    for i in picks:
        img = data.store[int(i)]
        row = [plain(image=img)["image"] if plain.transforms else img]
        row += [transform(image=img)["image"] for _ in range(variants)]
        tiles.append(np.concatenate([np.pad(t, ((1, 1), (1, 1), (0, 0)), constant_values=255) for t in row], axis=1))
    return np.concatenate(tiles, axis=0)


def finish_loggers(loggers: list, summary: dict, run_dir: Path) -> None:
    from augpipe.training.loggers import summary_metrics

    status = "FAILED" if summary.get("failed") else "KILLED" if summary.get("interrupted") else "FINISHED"
    for lg in loggers:
        if (run_dir / "confusion.png").is_file():
            lg.log_image("confusion", run_dir / "confusion.png", step=int(summary.get("epochs_run") or 0))
        lg.finish(summary_metrics(summary), status)
        lg.close()


def _compiled(model, cfg: TrainConfig):
    return torch.compile(model, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)


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


def _json_default(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return str(v)


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
