"""The training parts of a run, built from its settings: the plugin's model, the optimizer, the
data pipeline, the loss (``build_parts`` -> ``TrainingParts``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from augpipe import distributed
from augpipe.config import TrainConfig
from augpipe.errors import AugpipeError, ConfigError, DataError, PluginError
from augpipe.errors import first_line as _first_line
from augpipe.training.pipeline import DataPipeline, choose_image_size, use_weights_normalization
from augpipe.training.settings import _cores

log = logging.getLogger("augpipe")


def build_model(plugins, cfg: TrainConfig, num_classes: int, image_size: int, pretrained: bool = False):
    """The plugin's model; with ``pretrained``, its pretrained weights (a trainer's
    ``build_model`` that can load them takes ``pretrained=True``)."""
    import inspect

    trainer = plugins.trainer(cfg.plugin)
    kwargs = dict(
        model=cfg.model, num_classes=num_classes, image_size=image_size, activation=cfg.activation, dropout=cfg.dropout
    )
    if pretrained:
        params = inspect.signature(trainer.build_model).parameters
        if "pretrained" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise PluginError(
                f"trainer {cfg.plugin!r} has no pretrained weights (its build_model takes no "
                f"pretrained=); use --weights FILE"
            )
        kwargs["pretrained"] = True
    try:
        model = trainer.build_model(**kwargs)
    except AugpipeError:
        raise
    except Exception as err:
        owner = plugins.trainers.owner.get(cfg.plugin, cfg.plugin)
        raise PluginError(
            f"plugin {owner!r} failed to build model {cfg.model!r}: {type(err).__name__}: {err}"
        ) from None
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
        raise PluginError(
            f"plugin {owner!r} failed to build {registry.kind} {name!r}: {type(err).__name__}: {err}"
        ) from None


def check_model_input(
    model, cfg: TrainConfig, num_classes: int, image_size: int, device, remedy: str = "give a larger --image-size"
) -> None:
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
        raise ConfigError(
            f"model {cfg.plugin}/{cfg.model} can not take {image_size}x{image_size} images "
            f"({type(err).__name__}: {_first_line(err)}); {remedy}"
        ) from None
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


@dataclass
class TrainingParts:
    model: torch.nn.Module
    train_model: torch.nn.Module  # the model, or its torch.compile'd form
    optimizer: torch.optim.Optimizer
    pipeline: DataPipeline
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
    model.init_from_data(
        torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), spec.normalize.mean, spec.normalize.std
    )
    log.info("%s/%s: first layer fitted to %d training images", cfg.plugin, cfg.model, len(images))


def build_parts(
    cfg: TrainConfig, plugins, data, data_path, spec, device, image_size: int | None = None, resuming: bool = False
) -> TrainingParts:
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
    if cfg.low_res_size is not None and cfg.low_res_size < image_size:
        # a fully connected input layer, or a vision transformer's fixed patch grid, takes one size
        check_model_input(
            model,
            cfg,
            num_classes,
            cfg.low_res_size,
            device,
            "progressive resizing (--low-res-size) needs a model that takes images of any size",
        )
    optimizer = call_plugin(
        plugins.optimizers,
        cfg.optimizer,
        model,
        lr=cfg.resolved_lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.resolved_momentum,
    )
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
        train_model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.freeze_epochs > 0 or callable(getattr(model, "set_epoch", None)),
        )
    return TrainingParts(
        model, _compiled(train_model, cfg) if cfg.compile else train_model, optimizer, pipeline, image_size, threads
    )


def _compiled(model, cfg: TrainConfig):
    return torch.compile(model, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
