"""The plugin contract. A plugin is a module (or object) with ``@hookimpl`` functions named as
below, listed under the ``augpipe`` entry-point group of its package::

    [project.entry-points.augpipe]
    mytrainer = "mypackage.augpipe_plugin"

Registration hooks take a ``register`` callback: augpipe owns the registries, lists their names,
and rejects a name registered twice, naming both plugins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("augpipe")
hookimpl = pluggy.HookimplMarker("augpipe")


@dataclass
class Trainer:
    """A model family offered by a plugin.

    ``build_model(model=..., num_classes=..., image_size=..., activation=..., dropout=...)``
    returns a ``torch.nn.Module`` mapping float NCHW batches to class logits. ``activation`` is
    one of augpipe's names (relu, sigmoid, ...) and must reach every activation of the network;
    ``dropout`` is the rate before the classifier. A ``build_model`` that can load pretrained
    weights takes ``pretrained=True`` too (``--pretrained``; augpipe passes it only then). The
    classifier is found by timm's ``get_classifier()``, else as the last layer with
    ``num_classes`` outputs (``--weights``, ``--freeze-epochs``). ``models`` lists the accepted ``model`` names
    (a callable returning the list is fine for large families); ``defaults`` are training
    settings (lr, optimizer, epochs ...) that suit the family, used where the user set none.
    ``input_size`` is the image side in pixels the models are built for (an int, or a function
    of the model name returning one, or None for "any"): images of another size are resized to
    it unless ``--image-size`` or the augmentation spec names a size. ``activations`` names the
    activations ``build_model`` supports, where it does not take all of augpipe's (None: all);
    another ``--activation`` is refused before any data is read.

    Two optional methods of the model are called when it has them: ``init_from_data(images,
    mean, std)`` once before a new run's first epoch, with up to 5,000 training images (uint8
    NCHW, not augmented) and the normalisation of the batches (fastcifar's whitening layer is
    fitted so); ``set_epoch(epoch)`` before each training epoch, from 1 (fastcifar freezes a
    bias there: a parameter whose gradient it turns off is left alone by the optimizer).
    """

    name: str
    build_model: Callable[..., Any]
    models: list[str] | Callable[[], list[str]] = field(default_factory=list)
    default_model: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    input_size: int | Callable[[str], int | None] | None = None
    activations: tuple[str, ...] | None = None

    def model_names(self) -> list[str]:
        return list(self.models() if callable(self.models) else self.models)

    def model_input_size(self, model: str | None) -> int | None:
        if callable(self.input_size):
            # A function of the model's name has nothing to answer without one.
            size = self.input_size(model) if model is not None else None
        else:
            size = self.input_size
        if size is None:
            return None
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            from augpipe.errors import PluginError

            raise PluginError(
                f"trainer {self.name!r} gave input size {size!r} for model {model!r}, not a positive integer"
            )
        return size


@hookspec
def augpipe_register_trainers(register):
    """Call ``register(Trainer(...))`` for each trainer the plugin offers."""


@hookspec
def augpipe_register_optimizers(register):
    """Call ``register(name, factory)``; ``factory(model, lr=, weight_decay=, momentum=)``
    returns a ``torch.optim.Optimizer`` over the model's parameters."""


@hookspec
def augpipe_register_schedulers(register):
    """Call ``register(name, factory)``; ``factory(optimizer, *, config, steps_per_epoch, epochs,
    total_steps)`` (``total_steps = steps_per_epoch * epochs``; ``config`` the TrainConfig)
    returns one of:

    - a torch learning-rate scheduler, whose ``step()`` is called after every iteration;
    - a ``ReduceLROnPlateau``, or any object with ``per_epoch = True``, whose ``step(metric)`` is
      called once per epoch with the monitored figure;
    - an ``augpipe.training.optim.LRSchedule``, which may combine the two.

    It must have ``state_dict()``/``load_state_dict()``: a resumed run restores it."""


@hookspec
def augpipe_register_augmentations(register):
    """Call ``register(name, transform_class)`` for Albumentations transforms that augmentation
    specs may name under ``extra``."""


@hookspec
def augpipe_register_callbacks(register):
    """Call ``register(name, factory)``; ``--callbacks name`` attaches it. ``factory(run_dir,
    config)`` returns an object with any of the hooks of ``augpipe.training.callbacks.Callback``
    (subclass it to get them all as no-ops):

    - ``on_train_batch_end(epoch, step, loss)`` after every optimizer step;
    - ``on_epoch_end(epoch, metrics, model) -> bool`` after each epoch; True stops the run
      (``reason`` says why);
    - ``state_dict()`` / ``load_state_dict(state)``: plain values kept in ``last.pt``, given back
      when the run is resumed.

    An exception raised in a hook ends the run with an error naming the plugin."""


@hookspec
def augpipe_epoch_end(run, epoch, metrics):
    """Observe the end of an epoch: ``run`` is the run directory (a Path), ``metrics`` a dict of
    the epoch's figures. The return value is ignored."""


@hookspec
def augpipe_register_commands(cli):
    """Add click commands to the ``augpipe`` command group ``cli`` (``cli.add_command(cmd)``)."""
