"""The plugin contract. A plugin is a module (or object) with ``@hookimpl`` functions named as
below, listed under the ``augpipe`` entry-point group of its package::

    [project.entry-points.augpipe]
    mytrainer = "mypackage.augpipe_plugin"

Registration hooks take a ``register`` callback: augpipe owns the registries, lists their names,
and rejects a name registered twice, naming both plugins.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("augpipe")
hookimpl = pluggy.HookimplMarker("augpipe")


@dataclass
class Trainer:
    """A model family offered by a plugin.

    ``build_model(model=..., num_classes=..., image_size=..., activation=..., dropout=...)``
    returns a ``torch.nn.Module`` mapping float NCHW batches to class logits. ``activation`` is
    one of augpipe's names (relu, sigmoid, ...) and must reach every activation of the network;
    ``dropout`` is the rate before the classifier. ``models`` lists the accepted ``model`` names
    (a callable returning the list is fine for large families); ``defaults`` are training
    settings (lr, optimizer, epochs ...) that suit the family, used where the user set none.
    """

    name: str
    build_model: Callable[..., Any]
    models: list[str] | Callable[[], list[str]] = field(default_factory=list)
    default_model: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def model_names(self) -> list[str]:
        return list(self.models() if callable(self.models) else self.models)


@hookspec
def augpipe_register_trainers(register):
    """Call ``register(Trainer(...))`` for each trainer the plugin offers."""


@hookspec
def augpipe_register_optimizers(register):
    """Call ``register(name, factory)``; ``factory(model, lr=, weight_decay=, momentum=)``
    returns a ``torch.optim.Optimizer`` over the model's parameters."""


@hookspec
def augpipe_register_schedulers(register):
    """Call ``register(name, factory)``; ``factory(optimizer, total_steps=, steps_per_epoch=,
    epochs=, config=)`` returns a scheduler stepped once per iteration, or an object with
    ``per_epoch = True`` whose ``step(metric)`` is called once per epoch."""


@hookspec
def augpipe_register_augmentations(register):
    """Call ``register(name, transform_class)`` for Albumentations transforms that augmentation
    specs may name under ``extra``."""


@hookspec
def augpipe_register_callbacks(register):
    """Call ``register(name, factory)``; ``factory(run_dir, config)`` returns an object whose
    optional ``on_epoch_end(epoch, metrics, model)`` is called after each epoch."""


@hookspec
def augpipe_epoch_end(run, epoch, metrics):
    """Observe the end of an epoch: ``run`` is the run directory (a Path), ``metrics`` a dict of
    the epoch's figures. The return value is ignored."""


@hookspec
def augpipe_register_commands(cli):
    """Add click commands to the ``augpipe`` command group ``cli`` (``cli.add_command(cmd)``)."""
