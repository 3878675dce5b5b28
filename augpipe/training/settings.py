"""A run's settings and machine: the one resolver of defaults, plugin defaults, recipe, config
file and flags (``build_config``), the device, the global random streams."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from augpipe.config import TrainConfig, check_device_name, typed_settings
from augpipe.errors import ConfigError, PluginError

log = logging.getLogger("augpipe")


SCHEDULER_ALIASES = {
    "one-cycle": "onecycle",
    "one_cycle": "onecycle",
    "reduce-on-plateau": "plateau",
    "reduce_on_plateau": "plateau",
    "constant": "none",
}


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
    chosen = {
        **{k: v for k, v in file.items() if v is not None},
        **{k: v for k, v in typed_settings(flags, "settings").items() if v is not None},
    }
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
        raise ConfigError(
            f"trainer {cfg.plugin!r} supports --activation {', '.join(trainer.activations)}, not {cfg.activation!r}"
        )
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
