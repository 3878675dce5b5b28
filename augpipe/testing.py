"""Conformance checks for augpipe plugins, to call from a plugin's own pytest tests::

    from augpipe.testing import check_plugin, check_trainer

    def test_my_plugin_conforms():
        check_plugin("mine")                               # everything the plugin registers

    def test_my_big_models():
        check_trainer("mine", models=["huge"], activations=["relu", "gelu"])

Each check builds what the plugin registers and uses it as augpipe's training loop would, on
a tiny batch, on the CPU. A failure raises ``PluginCheckError`` (an ``AssertionError``, so
pytest reports it as a failed test) whose message names the check, the plugin, and for a
trainer the model and the activation.

What a trainer is held to, for each model at each activation (``check_trainer``):

- ``build``: ``build_model`` returns an ``nn.Module``;
- ``forward``: a float batch of 2 images at the model's input size (32 px for size-agnostic
  trainers) gives finite outputs; ``num_classes``: of shape ``(2, num_classes)``, for two class
  counts;
- ``activation``: no activation module of another family is left (a network built with ``tanh``
  keeps no ``nn.ReLU``), and no two activations give the same outputs (an activation applied as
  a function that ignores ``activation`` shows that way);
- ``dropout``: with dropout 0.5 two forward passes in train mode differ, in eval mode they
  agree, and an ``nn.Dropout`` of the model has ``p=0.5`` if it has any; with dropout 0 train
  mode is deterministic (dropout 0 means none);
- ``backward``: a cross-entropy loss gives finite gradients, not all zero;
- ``state_dict``: the state dict survives ``torch.save``/``torch.load(weights_only=True)`` (as
  checkpoints do) and a freshly built model loaded with it gives the same outputs in eval mode.

Models default to all the trainer lists, or only its default model when ``models`` is a
callable (a large family such as timm's); activations to all of ``augpipe.config.ACTIVATIONS``,
or those in the Trainer's ``activations`` attribute where it has one.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import random
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn

from augpipe.errors import AugpipeError

__all__ = [
    "PluginCheckError",
    "check_augmentation",
    "check_callback",
    "check_optimizer",
    "check_plugin",
    "check_scheduler",
    "check_trainer",
]


class PluginCheckError(AssertionError):
    """A plugin that does not keep augpipe's contract. ``check`` names the check; ``kind``,
    ``name`` and ``plugin`` what failed it, ``model`` and ``activation`` where it applies."""

    def __init__(
        self,
        check: str,
        *,
        kind: str,
        name: str,
        plugin: str,
        detail: str,
        model: str | None = None,
        activation: str | None = None,
    ):
        self.check, self.kind, self.name, self.plugin = check, kind, name, plugin
        self.model, self.activation, self.detail = model, activation, detail
        where = f"plugin {plugin!r}" if kind == "plugin" else f"{kind} {name!r} of plugin {plugin!r}"
        if model is not None:
            where += f", model {model!r}"
        if activation is not None:
            where += f", activation {activation!r}"
        super().__init__(f"{check} check failed: {where}: {detail}")


class _Subject:
    """What is being checked, to name it in every failure."""

    def __init__(self, kind: str, name: str, plugin: str):
        self.kind, self.name, self.plugin = kind, name, plugin

    def fail(self, check: str, detail: str, err: BaseException | None = None, **where) -> NoReturn:
        if err is not None:
            detail = f"{detail}: {type(err).__name__}: {err}"
        raise PluginCheckError(
            check, kind=self.kind, name=self.name, plugin=self.plugin, detail=detail, **where
        ) from err

    def call(self, check: str, what: str, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``; whatever it raises is the plugin's failure of ``check``."""
        where = {k: kwargs.pop("_" + k) for k in ("model", "activation") if "_" + k in kwargs}
        try:
            return fn(*args, **kwargs)
        except PluginCheckError:
            raise
        except Exception as err:
            self.fail(check, f"{what} raised", err, **where)


def _manager(plugins):
    if plugins is not None:
        return plugins
    from augpipe.plugin_manager import get_plugins

    return get_plugins()


def _resolve(registry, thing, kind: str) -> tuple[str, Any, _Subject]:
    """A registered name, or the object itself (a factory, a class, a Trainer)."""
    if isinstance(thing, str):
        if thing not in registry:
            from augpipe.plugin_manager import unknown_name_message

            raise PluginCheckError(
                "registered",
                kind=kind,
                name=thing,
                plugin="?",
                detail=unknown_name_message(kind, thing, registry.names()),
            )
        return thing, registry.get(thing), _Subject(kind, thing, registry.owner.get(thing, "?"))
    name = getattr(thing, "name", None) if kind == "trainer" else None
    name = name or getattr(thing, "__name__", None) or type(thing).__name__
    owner = next((registry.owner[n] for n in registry.names() if registry.get(n) is thing), "(not registered)")
    return name, thing, _Subject(kind, name, owner)


@contextlib.contextmanager
def _isolated():
    """The checks seed torch's generator and use one thread; the caller's random stream and
    thread count are put back afterwards. One thread: batches of two images gain nothing from
    more, and lose much where other processes share the cores (8x on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)


def _tiny_model(seed: int = 0) -> nn.Module:
    # A normalisation layer too: its one-dimensional weights are what weight-decay grouping
    # treats apart, and its buffers what a state dict must carry.
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _tiny_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g)


def _through_checkpoint(state):
    """``state`` as a checkpoint gives it back: saved, and loaded with ``weights_only=True``."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN
    return a == b


# -- trainers ----------------------------------------------------------------------------------


def check_trainer(
    trainer,
    *,
    models: Iterable[str] | None = None,
    activations: Iterable[str] | None = None,
    image_size: int | None = None,
    num_classes: int = 3,
    plugins=None,
) -> list[str]:
    """Check a trainer (its registered name, or the ``Trainer`` itself) for each of ``models``
    at each of ``activations`` (module docstring). ``image_size`` overrides the trainer's
    input size (e.g. to check a 224 px model quickly). Returns the models checked."""
    from augpipe.config import ACTIVATIONS

    if num_classes < 2:
        raise ValueError("num_classes must be at least 2")
    registry = _manager(plugins).trainers
    name, record, subject = _resolve(registry, trainer, "trainer")
    if not callable(getattr(record, "build_model", None)):
        subject.fail("record", f"{type(record).__name__} is not a Trainer (it has no build_model)")
    names = subject.call("record", "models", record.model_names)
    if record.default_model is not None and names and record.default_model not in names:
        subject.fail("record", f"the default model {record.default_model!r} is not among its models")
    if models is None:
        candidates = [record.default_model] if callable(record.models) else names
        models = [m for m in candidates if m is not None]
    models = list(models)
    if not models:
        subject.fail("record", "it names no models (give models=[...] to check_trainer)")
    for model in models:
        if names and model not in names:
            subject.fail("record", f"model {model!r} is not among its models", model=model)
    supported = getattr(record, "activations", None)
    acts = list(activations if activations is not None else (supported or ACTIVATIONS))
    unknown = [a for a in acts if a not in ACTIVATIONS]
    if unknown or not acts:
        raise ValueError(f"activations must be among {', '.join(ACTIVATIONS)}, got {acts}")
    with _isolated():
        for model in models:
            size = image_size or subject.call("record", "input_size", record.model_input_size, model) or 32
            _check_model(subject, record, model, acts, size, num_classes)
    return models


def _check_model(subject: _Subject, record, model: str, acts: list[str], size: int, num_classes: int) -> None:
    from augpipe.errors import PluginError
    from augpipe.plugins.layers import check_activation

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, size, size, generator=g)
    targets = torch.arange(2) % num_classes

    def build(activation, *, dropout=0.5, classes=num_classes, seed=0):
        torch.manual_seed(seed)
        net = subject.call(
            "build",
            "build_model",
            record.build_model,
            model=model,
            num_classes=classes,
            image_size=size,
            activation=activation,
            dropout=dropout,
            _model=model,
            _activation=activation,
        )
        if not isinstance(net, nn.Module):
            subject.fail(
                "build",
                f"build_model returned {type(net).__name__}, not a torch.nn.Module",
                model=model,
                activation=activation,
            )
        return net

    def forward(net, activation, *, train: bool, classes=num_classes):
        net.train(train)
        with torch.no_grad():
            try:
                out = net(x)
            except Exception as err:
                subject.fail(
                    "forward",
                    f"forward of a {tuple(x.shape)} batch in {'train' if train else 'eval'} mode raised",
                    err,
                    model=model,
                    activation=activation,
                )
        if not isinstance(out, torch.Tensor):
            subject.fail(
                "forward",
                f"forward returned {type(out).__name__}, not a tensor of logits",
                model=model,
                activation=activation,
            )
        if tuple(out.shape) != (2, classes):
            subject.fail(
                "num_classes",
                f"a batch of 2 gave outputs of shape {tuple(out.shape)}, expected "
                f"(2, {classes}) for num_classes={classes}",
                model=model,
                activation=activation,
            )
        if not torch.isfinite(out).all():
            subject.fail("forward", "the outputs are not finite", model=model, activation=activation)
        return out

    seen: dict[str, torch.Tensor] = {}
    for i, act in enumerate(acts):
        where: dict[str, Any] = dict(model=model, activation=act)
        net = build(act)
        try:
            check_activation(net, act, "the model")
        except PluginError as err:
            subject.fail("activation", str(err), **where)
        out = forward(net, act, train=False)  # before any train-mode pass moves batch-norm statistics
        for other, before in seen.items():
            if torch.equal(before, out):
                subject.fail(
                    "activation",
                    f"the outputs are exactly those with activation {other!r}: "
                    f"the activation does not reach the network",
                    **where,
                )
        seen[act] = out
        if not torch.equal(out, forward(net, act, train=False)):
            subject.fail("dropout", "two forward passes in eval mode differ: eval mode must be deterministic", **where)
        if torch.equal(forward(net, act, train=True), forward(net, act, train=True)):
            subject.fail(
                "dropout",
                "with dropout 0.5 two forward passes in train mode give the same outputs: dropout is ignored",
                **where,
            )
        rates = [m.p for m in net.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        if rates and 0.5 not in rates:
            subject.fail("dropout", f"built with dropout 0.5, its dropout layers have p={sorted(set(rates))}", **where)

        net.train()
        net.zero_grad(set_to_none=True)
        try:
            loss = nn.functional.cross_entropy(net(x), targets)
            loss.backward()
        except Exception as err:
            subject.fail("backward", "a forward and backward pass in train mode raised", err, **where)
        grads = [p.grad for p in net.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            subject.fail("backward", "no parameter got a gradient", **where)
        if not all(torch.isfinite(g).all() for g in grads):
            subject.fail("backward", "some gradients are not finite", **where)
        if not any(g.abs().sum() > 0 for g in grads):
            subject.fail("backward", "every gradient is zero", **where)

        ref = forward(net, act, train=False)
        try:
            state = _through_checkpoint(net.state_dict())
        except Exception as err:
            subject.fail(
                "state_dict", "the state dict does not survive torch.save / torch.load(weights_only=True)", err, **where
            )
        fresh = build(act, seed=1)
        try:
            fresh.load_state_dict(state)
        except Exception as err:
            subject.fail("state_dict", "a freshly built model does not take the state dict", err, **where)
        again = forward(fresh, act, train=False)
        if not torch.allclose(ref, again, rtol=1e-5, atol=1e-6):
            diff = (ref - again).abs().max().item()
            subject.fail(
                "state_dict",
                f"a fresh model loaded with the state dict gives other outputs in eval mode "
                f"(largest difference {diff:.3g}): some of the model's state is not in its state dict",
                **where,
            )

        if i == 0:  # what does not depend on the activation, once per model
            classes = num_classes + 4  # a count the model can not have hard-coded by chance
            forward(build(act, classes=classes), act, train=False, classes=classes)
            plain = build(act, dropout=0.0)
            if not torch.equal(forward(plain, act, train=True), forward(plain, act, train=True)):
                subject.fail(
                    "dropout",
                    "with dropout 0 two forward passes in train mode differ: dropout 0 must mean no dropout",
                    **where,
                )


# -- optimizers and schedulers ---------------------------------------------------------------------


def check_optimizer(optimizer, *, plugins=None, lr: float = 0.1) -> None:
    """Build the optimizer (its registered name, or the factory) as augpipe does,
    ``factory(model, lr=, weight_decay=, momentum=)``, over a tiny model: it covers every
    trainable parameter at ``lr``, a step changes the weights, and its state dict survives a
    checkpoint and continues the same steps."""
    name, factory, subject = _resolve(_manager(plugins).optimizers, optimizer, "optimizer")

    def make(model):
        opt = subject.call("build", "the factory", factory, model, lr=lr, weight_decay=1e-4, momentum=0.9)
        if not isinstance(opt, torch.optim.Optimizer):
            subject.fail("build", f"the factory returned {type(opt).__name__}, not a torch.optim.Optimizer")
        return opt

    def step(model, opt):
        x, y = _tiny_batch()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        subject.call("step", "step()", opt.step)

    with _isolated():
        model = _tiny_model()
        opt = make(model)
        covered = {id(p) for group in opt.param_groups for p in group["params"]}
        missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
        if missing:
            subject.fail("build", f"the optimizer leaves parameters out: {', '.join(missing)}")
        rates = sorted({group["lr"] for group in opt.param_groups})
        if rates != [lr]:
            subject.fail("lr", f"built with lr={lr}, its parameter groups have lr {rates}")
        before = [p.detach().clone() for p in model.parameters()]
        model.train()
        step(model, opt)
        if all(torch.equal(b, p) for b, p in zip(before, model.parameters())):
            subject.fail("step", "a step left every weight as it was")
        twin = copy.deepcopy(model)
        try:
            state = _through_checkpoint(opt.state_dict())
        except Exception as err:
            subject.fail(
                "state_dict", "the state dict does not survive torch.save / torch.load(weights_only=True)", err
            )
        twin_opt = make(twin)
        subject.call("state_dict", "load_state_dict", twin_opt.load_state_dict, state)
        for _ in range(2):
            step(model, opt)
            step(twin, twin_opt)
        if not all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(model.parameters(), twin.parameters())):
            subject.fail("state_dict", "an optimizer loaded with the state dict takes other steps than the original")


def check_scheduler(
    scheduler, *, plugins=None, changes_lr: bool = True, steps_per_epoch: int = 3, epochs: int = 6
) -> list[float]:
    """Build the scheduler (its registered name, or the factory) as augpipe does,
    ``factory(optimizer, config=, steps_per_epoch=, epochs=, total_steps=)``, and step it as the
    loop does (every iteration, and once per epoch with a validation loss that never improves,
    which a plateau schedule answers) through ``epochs`` epochs: the learning rate stays finite
    and not negative, changes (unless ``changes_lr=False``: a constant schedule), and a schedule
    restored from its state dict half-way continues with the same rates. Returns the rates."""
    from augpipe.config import TrainConfig
    from augpipe.training.optim import as_schedule, current_lr

    name, factory, subject = _resolve(_manager(plugins).schedulers, scheduler, "scheduler")
    # Steps every 2 epochs, so that a step schedule shows within the check's epochs.
    config, total = TrainConfig(step_size=2), steps_per_epoch * epochs

    def make():
        model = _tiny_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        made = subject.call(
            "build",
            "the factory",
            factory,
            opt,
            config=config,
            steps_per_epoch=steps_per_epoch,
            epochs=epochs,
            total_steps=total,
        )
        try:
            return model, opt, as_schedule(made, name, subject.plugin)
        except AugpipeError as err:
            subject.fail("build", str(err))

    def run(model, opt, schedule, start, stop, rates):
        x, y = _tiny_batch()
        for it in range(start, stop):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            subject.call("step", "step_iteration", schedule.step_iteration)
            if (it + 1) % steps_per_epoch == 0:
                subject.call("step", "step_epoch", schedule.step_epoch, 1.0)
            rates.append(current_lr(opt))

    with _isolated():
        model, opt, schedule = make()
        first = current_lr(opt)
        rates: list[float] = []
        run(model, opt, schedule, 0, total, rates)
        if not all(np.isfinite(r) and r >= 0 for r in rates):
            subject.fail("lr", f"the learning rate became {next(r for r in rates if not (np.isfinite(r) and r >= 0))}")
        if changes_lr and all(r == first for r in rates):
            subject.fail(
                "lr",
                f"the learning rate stayed {first:g} through {epochs} epochs of {steps_per_epoch} "
                f"steps (a constant schedule: check it with changes_lr=False)",
            )
        if not changes_lr and any(r != first for r in rates):
            subject.fail(
                "lr",
                f"a constant schedule changed the learning rate from {first:g} to "
                f"{next(r for r in rates if r != first):g}",
            )

        half = total // 2
        model, opt, schedule = make()
        head: list[float] = []
        run(model, opt, schedule, 0, half, head)
        try:
            saved = _through_checkpoint(
                {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": schedule.state_dict()}
            )
        except Exception as err:
            subject.fail(
                "state_dict", "the state dict does not survive torch.save / torch.load(weights_only=True)", err
            )
        model, opt, schedule = make()  # what --resume does: build anew, then load
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        subject.call("state_dict", "load_state_dict", schedule.load_state_dict, saved["scheduler"])
        tail: list[float] = []
        run(model, opt, schedule, half, total, tail)
        if not np.allclose(head + tail, rates, rtol=1e-9, atol=0):
            subject.fail(
                "state_dict",
                f"restored at step {half} of {total}, the schedule continued with rates "
                f"{[f'{r:.4g}' for r in tail[:4]]} ... instead of {[f'{r:.4g}' for r in rates[half : half + 4]]} ...",
            )
    return rates


# -- augmentations and callbacks -------------------------------------------------------------------


def check_augmentation(augmentation, *, params: dict | None = None, plugins=None) -> None:
    """Build the transform class (its registered name, or the class) with ``params`` and
    ``p=1``, as an augmentation spec's ``extra`` does: it runs on uint8 HWC images keeping their
    dtype and size, the same seed gives the same images whatever numpy's and Python's global
    generators hold, and it survives Albumentations' serialisation (every run saves
    ``augment.yaml``)."""
    import albumentations as A

    from augpipe.augment.cpu import seed_transform

    name, cls, subject = _resolve(_manager(plugins).augmentations, augmentation, "augmentation")
    kwargs = {"p": 1.0, **(params or {})}

    def pipeline():
        t = subject.call("build", f"{name}(**{kwargs})", cls, **kwargs)
        if not isinstance(t, A.BasicTransform):
            subject.fail("build", f"{type(t).__name__} is not an Albumentations transform")
        if getattr(t, "invalid_args", None):
            subject.fail("build", f"unknown argument(s) {', '.join(t.invalid_args)}")
        return A.Compose([t])

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24, 40, 3), dtype=np.uint8) for _ in range(4)]  # not square: h and w apart

    def apply(compose, seed, global_seed):
        seed_transform(compose, seed)
        # Other global states for each run: a transform drawing from them would not repeat.
        np.random.seed(global_seed)
        random.seed(global_seed)
        out = []
        for img in images:
            result = subject.call("apply", "the transform", compose, image=img.copy())["image"]
            if not isinstance(result, np.ndarray) or result.dtype != np.uint8:
                subject.fail("dtype", f"a uint8 image came back as {getattr(result, 'dtype', type(result).__name__)}")
            if result.shape != img.shape:
                subject.fail("size", f"an image of shape {img.shape} came back as {result.shape}")
            out.append(result)
        return out

    state = np.random.get_state(), random.getstate()
    try:
        first = apply(pipeline(), 0, 1)
        if not all(np.array_equal(a, b) for a, b in zip(first, apply(pipeline(), 0, 2))):
            subject.fail(
                "seed",
                "two pipelines seeded alike gave different images: draw random numbers from "
                "self.py_random or self.random_generator, not from numpy's or Python's global state",
            )
        compose = pipeline()
        try:
            rebuilt = A.from_dict(A.to_dict(compose))
        except Exception as err:
            subject.fail("serialize", "Albumentations can not save and rebuild the transform (augment.yaml)", err)
        if not all(np.array_equal(a, b) for a, b in zip(apply(compose, 3, 1), apply(rebuilt, 3, 1))):
            subject.fail(
                "serialize",
                "rebuilt from its saved form, the transform gives other images: "
                "get_transform_init_args_names() must name every parameter",
            )
    finally:
        np.random.set_state(state[0])
        random.setstate(state[1])


def check_callback(callback, *, plugins=None, run_dir: str | Path | None = None) -> None:
    """Build the callback (its registered name, or the factory) as ``--callbacks`` does,
    ``factory(run_dir, config)``, call its hooks through two epochs of three steps as the loop
    does, and restore a fresh one from its state dict (through a checkpoint): it must give the
    same state back."""
    from augpipe.config import TrainConfig
    from augpipe.training.callbacks import METRIC_COLUMNS, PluginCallback

    name, factory, subject = _resolve(_manager(plugins).callbacks, callback, "callback")
    hooks = ("on_train_batch_end", "on_epoch_end", "state_dict", "load_state_dict")
    config = TrainConfig()
    with tempfile.TemporaryDirectory() as tmp, _isolated():
        base = Path(run_dir) if run_dir is not None else Path(tmp)
        (base / "run").mkdir(parents=True, exist_ok=True)
        (base / "resumed").mkdir(parents=True, exist_ok=True)
        made = subject.call("build", "the factory", factory, base / "run", config)
        if not any(callable(getattr(made, h, None)) for h in hooks):
            subject.fail("hooks", f"{type(made).__name__} has none of the hooks {', '.join(hooks)}")
        wrapped = PluginCallback(made, name, subject.plugin)
        model = _tiny_model()
        for epoch in (1, 2):
            for step in (1, 2, 3):
                _plugin_hook(subject, wrapped.on_train_batch_end, epoch, step, torch.tensor(1.0 / (epoch + step)))
            metrics = {c: float(epoch) for c in METRIC_COLUMNS}
            metrics.update(epoch=epoch, train_loss=1.0 / epoch, val_loss=1.5 / epoch)
            _plugin_hook(subject, wrapped.on_epoch_end, epoch, metrics, model)
        state = _plugin_hook(subject, wrapped.state_dict)
        if not isinstance(state, dict):
            subject.fail("state_dict", f"state_dict() returned {type(state).__name__}, not a dict")
        try:
            saved = _through_checkpoint(state)
        except Exception as err:
            subject.fail(
                "state_dict",
                "the state dict does not survive torch.save / torch.load(weights_only=True): "
                "keep plain values and tensors",
                err,
            )
        again = PluginCallback(
            subject.call("build", "the factory", factory, base / "resumed", config), name, subject.plugin
        )
        _plugin_hook(subject, again.load_state_dict, saved)
        restored = _plugin_hook(subject, again.state_dict)
        if not _same(restored, state):
            subject.fail(
                "state_dict", f"restored from its state dict, the callback's state is {restored!r}, not {state!r}"
            )


def _plugin_hook(subject: _Subject, hook, *args):
    try:
        return hook(*args)
    except AugpipeError as err:  # PluginCallback names the hook that failed
        subject.fail("hooks", str(err))


# -- a whole plugin ----------------------------------------------------------------------------------


def check_plugin(
    plugin,
    *,
    models: dict[str, Iterable[str]] | Iterable[str] | None = None,
    activations: Iterable[str] | None = None,
    image_size: int | None = None,
    num_classes: int = 3,
    constant_schedulers: Iterable[str] = ("none",),
    augmentation_params: dict[str, dict] | None = None,
) -> dict[str, list[str]]:
    """Run every check on whatever a plugin registers. ``plugin`` is an installed plugin's
    entry-point name, an importable module name, or the module (any object with hook
    implementations) itself. ``models`` limits the models checked, for every trainer (a list)
    or per trainer (``{"timm": ["resnet18"]}``); ``constant_schedulers`` names schedulers that
    keep the learning rate constant on purpose; ``augmentation_params`` gives the arguments of
    transforms that need some. Returns what was checked, by kind."""
    from augpipe.plugin_manager import Plugins, get_plugins

    subject = _Subject("plugin", str(getattr(plugin, "__name__", plugin)), str(getattr(plugin, "__name__", plugin)))
    manager, owner = None, ""
    if isinstance(plugin, str):
        installed = get_plugins()
        if plugin in installed.info:
            manager, owner = installed, plugin
        else:
            try:
                plugin = importlib.import_module(plugin)
            except Exception as err:
                subject.fail(
                    "load", f"no installed plugin is named {plugin!r} and importing it as a module failed", err
                )
    if manager is None:
        owner = getattr(plugin, "__name__", type(plugin).__name__)
        manager = Plugins(load_entry_points=False)
        try:
            manager.register(plugin, name=owner)
        except AugpipeError as err:
            subject.fail("hooks", str(err))
    error = manager.info[owner].error
    if error:
        subject.fail("load", error)
    registries = {
        "trainers": manager.trainers,
        "optimizers": manager.optimizers,
        "schedulers": manager.schedulers,
        "augmentations": manager.augmentations,
        "callbacks": manager.callbacks,
    }
    error = manager.info[owner].error
    if error:  # a registration hook that raised
        subject.fail("register", error)
    owned = {kind: [n for n in reg.names() if reg.owner[n] == owner] for kind, reg in registries.items()}
    observes = any(
        impl.plugin_name == owner
        for hook in (manager.pm.hook.augpipe_epoch_end, manager.pm.hook.augpipe_register_commands)
        for impl in hook.get_hookimpls()
    )
    if not any(owned.values()) and not observes:
        subject.fail("register", "the plugin registers nothing and implements no hook")

    constant = set(constant_schedulers)
    for name in owned["trainers"]:
        chosen = models.get(name) if isinstance(models, dict) else models
        check_trainer(
            name,
            models=chosen,
            activations=activations,
            image_size=image_size,
            num_classes=num_classes,
            plugins=manager,
        )
    for name in owned["optimizers"]:
        check_optimizer(name, plugins=manager)
    for name in owned["schedulers"]:
        check_scheduler(name, plugins=manager, changes_lr=name not in constant)
    for name in owned["augmentations"]:
        check_augmentation(name, params=(augmentation_params or {}).get(name), plugins=manager)
    for name in owned["callbacks"]:
        check_callback(name, plugins=manager)
    return owned
