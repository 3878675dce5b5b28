"""Everything a plugin author imports: ``from augpipe.plugin import ...``.

A plugin is a module of pluggy hook implementations, listed under the ``augpipe`` entry-point
group of its package. augpipe loads the group once; a plugin that fails to import is reported
by name (``augpipe plugins``) and the others keep working::

    # pyproject.toml
    [project.entry-points.augpipe]
    mytrainer = "mypackage.augpipe_plugin"

Import from here, not from augpipe's other modules: this module is the stable surface.
It imports neither torch nor timm, so a plugin can import it at module level and
``augpipe --help`` stays fast; import torch inside your ``build_model``.

What is here
------------
``hookimpl``                marks a hook implementation (``@hookimpl``).
``Trainer``                 the record of a model family (fields below).
``activation_layer(name)``  the torch activation class for one of augpipe's names; each
                            class takes ``inplace=`` (timm passes it).
``check_activation(model, activation, what)``  raises ``PluginError`` if ``model`` keeps an
                            activation of another family (a hard-coded ``nn.ReLU`` in a
                            network built with ``tanh``); returns ``model``.
``unknown_name_message(kind, name, choices, where="")``  the one-line "unknown model 'x'.
                            Did you mean 'y'? Choose from: ..." text; raise it as a
                            ``PluginError``.
``create_timm_model(model, *, pretrained, **kwargs)``, ``timm_input_size(model)``  timm with
                            one-line errors for pretrained weights that can not be had; the
                            image side a timm model is built for.
``Callback``                base class of a callback: every hook a no-op.
``AugpipeError``, ``PluginError``, ``ConfigError``, ``DataError``  raise these for mistakes a
                            user can make: the CLI prints one ``Error:`` line, no traceback.
                            Any other exception from a plugin is reported as the plugin's
                            failure, naming the plugin and the hook.
``ACTIVATIONS``             the activation names (loaded on first use).
``LRSchedule``              augpipe's schedule object (loaded on first use; imports torch).

The hooks and what each gets
----------------------------
``augpipe_register_trainers(register)``
    ``register(Trainer(name=, build_model=, models=, default_model=, defaults=, description=,
    input_size=))``. ``build_model(*, model, num_classes, image_size, activation, dropout)``
    returns an ``nn.Module`` mapping float NCHW batches to ``num_classes`` logits;
    ``activation`` (one of ``ACTIVATIONS``) must reach every activation of the network and
    ``dropout`` is the rate before the classifier (0 means no dropout at all). Take
    ``pretrained=False`` too if you can load pretrained weights. ``models`` is a list of names
    or a callable returning one (large families); ``defaults`` are training settings (lr,
    optimizer, epochs, ...); ``input_size`` the image side the models are built for (an int, a
    function of the model name, or None for any size).
``augpipe_register_optimizers(register)``
    ``register(name, factory)``; ``factory(model, *, lr, weight_decay, momentum)`` returns a
    ``torch.optim.Optimizer``.
``augpipe_register_schedulers(register)``
    ``register(name, factory)``; ``factory(optimizer, *, config, steps_per_epoch, epochs,
    total_steps)`` returns a torch scheduler (stepped every iteration), a
    ``ReduceLROnPlateau`` or an object with ``per_epoch = True`` (stepped once per epoch with
    the monitored figure), or an ``LRSchedule``; it needs ``state_dict``/``load_state_dict``.
``augpipe_register_augmentations(register)``
    ``register(name, transform_class)``: an Albumentations transform class that augmentation
    specs name under ``extra: [{name: NAME, p: 0.5, ...}]``. It gets uint8 HWC images and must
    keep their dtype and size, and draw its randomness from Albumentations' generators
    (``self.py_random``, ``self.random_generator``) so that a run's seed repeats it.
``augpipe_register_callbacks(register)``
    ``register(name, factory)``; ``--callbacks NAME`` calls ``factory(run_dir, config)``, which
    returns an object with any of ``Callback``'s hooks: ``on_train_batch_end(epoch, step,
    loss)``, ``on_epoch_end(epoch, metrics, model) -> bool`` (True stops the run; set
    ``self.reason``), ``state_dict()``/``load_state_dict(state)`` (plain values, kept in
    ``last.pt`` for ``--resume``).
``augpipe_epoch_end(run, epoch, metrics)``
    observes each epoch's end (``run`` the run directory); the return value is ignored.
``augpipe_register_commands(cli)``
    ``cli.add_command(click_command)`` adds a subcommand to ``augpipe``.

An implementation may take a subset of its hook's arguments, as pluggy allows. A name
registered twice (by any two plugins) is an error naming both.

Example
-------
::

    from augpipe.plugin import PluginError, Trainer, activation_layer, hookimpl, unknown_name_message

    WIDTHS = {"tiny": 16, "small": 32}

    def build(*, model, num_classes, image_size, activation, dropout):
        from torch import nn

        if model not in WIDTHS:
            raise PluginError(unknown_name_message("model", model, WIDTHS, " for plugin 'mine'"))
        act, w = activation_layer(activation), WIDTHS[model]
        return nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), act(inplace=True),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                             nn.Linear(w, num_classes))

    @hookimpl
    def augpipe_register_trainers(register):
        register(Trainer(name="mine", build_model=build, models=list(WIDTHS), default_model="tiny",
                         defaults={"optimizer": "adam", "lr": 1e-3}, description="a tiny conv net"))

Test it with the conformance kit, under pytest::

    from augpipe.testing import check_plugin

    def test_my_plugin():
        check_plugin("mine")          # the installed entry point; or pass the module itself

``examples/augpipe-example-plugin`` in augpipe's repository is a complete package: a trainer,
an augmentation, its tests and its ``pyproject.toml``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from augpipe.errors import AugpipeError, ConfigError, DataError, PluginError
from augpipe.hookspecs import Trainer, hookimpl
from augpipe.plugin_manager import unknown_name_message
from augpipe.plugins.layers import activation_layer, check_activation, create_timm_model, timm_input_size
from augpipe.training.callbacks import Callback

if TYPE_CHECKING:  # served by __getattr__ at run time; named here for checkers and editors
    from augpipe.config import ACTIVATIONS
    from augpipe.training.optim import LRSchedule

__all__ = [
    "ACTIVATIONS",
    "AugpipeError",
    "Callback",
    "ConfigError",
    "DataError",
    "LRSchedule",
    "PluginError",
    "Trainer",
    "activation_layer",
    "check_activation",
    "create_timm_model",
    "hookimpl",
    "timm_input_size",
    "unknown_name_message",
]

# Loaded on first use: augpipe.config pulls in numpy, augpipe.training.optim torch.
_LAZY = {"ACTIVATIONS": "augpipe.config", "LRSchedule": "augpipe.training.optim"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'augpipe.plugin' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
