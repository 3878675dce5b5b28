"""Optimizers and learning-rate schedules by name: torch's optimizer classes with timm's
weight-decay grouping, and torch's schedulers. The built-in plugin registers these;
third-party plugins add their own."""
from __future__ import annotations

import inspect
import math
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau


def weight_decay_groups(model, weight_decay: float) -> list[dict]:
    """Biases and normalisation weights (one-dimensional parameters) take no weight decay, as in
    timm's ``param_groups_weight_decay``: decaying them only fights the normalisation."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


NORM_LAYERS = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)


def decay_every_parameter(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """``--decay-bias-and-norm``: the groups that ``weight_decay_groups`` (or a plugin's
    optimizer) left without decay get ``weight_decay`` too, as airbench94 decays its batch-norm
    shifts and first-layer bias."""
    for group in optimizer.param_groups:
        group["weight_decay"] = weight_decay


def split_param_groups(optimizer: torch.optim.Optimizer, scaled_ids: set[int], lr_scale: float,
                       decay_scale: float = 1.0) -> None:
    """Split each parameter group in two: the parameters whose ``id`` is in ``scaled_ids`` at
    ``lr_scale`` times the group's rate and ``decay_scale`` times its decay, the rest as they
    were and first (so that the logged rate is --lr)."""
    plain, scaled = [], []
    for group in optimizer.param_groups:
        options = {k: v for k, v in group.items() if k != "params"}
        rest = [p for p in group["params"] if id(p) not in scaled_ids]
        chosen = [p for p in group["params"] if id(p) in scaled_ids]
        if rest:
            plain.append({**options, "params": rest})
        if chosen:
            scaled.append({**options, "params": chosen, "lr": options["lr"] * lr_scale,
                           "weight_decay": options.get("weight_decay", 0.0) * decay_scale})
    optimizer.param_groups.clear()
    for group in plain + scaled:
        optimizer.add_param_group(group)


def scale_norm_lr(optimizer: torch.optim.Optimizer, model: torch.nn.Module, scale: float) -> None:
    """The normalisation layers' parameters at ``scale`` times the rate. airbench94 trains its
    batch norms' shifts 64 times faster than the convolutions; their weight decay is divided by
    ``scale`` so that what it takes off per step (lr x decay for SGD and AdamW alike) stays the
    same."""
    norm_ids = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    split_param_groups(optimizer, norm_ids, scale, 1.0 / scale)


def torch_optimizer(model, *, cls, lr: float, weight_decay: float, momentum: float, **extra):
    # timm's create_optimizer_v2 builds these same torch classes, but importing timm costs
    # seconds and ~200 MB that the small trainers do not otherwise need.
    if cls in (torch.optim.SGD, torch.optim.RMSprop):
        extra["momentum"] = momentum
    params = list(model.parameters())
    # On CUDA one fused kernel updates every tensor (torch's default there is foreach: a kernel
    # per op across tensors); older torch lacks fused for some classes and keeps the default.
    if params and all(p.is_cuda for p in params) and "fused" in inspect.signature(cls.__init__).parameters:
        extra.setdefault("fused", True)
    return cls(weight_decay_groups(model, weight_decay), lr=lr, **extra)


OPTIMIZERS = {
    "sgd": partial(torch_optimizer, cls=torch.optim.SGD, nesterov=False),
    "momentum": partial(torch_optimizer, cls=torch.optim.SGD, nesterov=False),
    "nesterov": partial(torch_optimizer, cls=torch.optim.SGD, nesterov=True),
    "rmsprop": partial(torch_optimizer, cls=torch.optim.RMSprop, alpha=0.9),
    "adam": partial(torch_optimizer, cls=torch.optim.Adam),
    "adamw": partial(torch_optimizer, cls=torch.optim.AdamW),
    "adagrad": partial(torch_optimizer, cls=torch.optim.Adagrad),
}


class LRSchedule:
    """A learning-rate schedule stepped once per iteration (``step_iteration``), with an optional
    once-per-epoch part (``step_epoch(metric)``) for reduce-on-plateau."""

    def __init__(self, per_iteration=None, per_epoch=None, iteration_limit: int | None = None):
        self.per_iteration = per_iteration
        self.per_epoch = per_epoch
        self.iteration_limit = iteration_limit  # plateau: the warm-up part stops here
        self.iterations = 0

    def step_iteration(self) -> None:
        self.iterations += 1
        if self.per_iteration is not None and (self.iteration_limit is None or self.iterations <= self.iteration_limit):
            self.per_iteration.step()

    def step_epoch(self, metric: float | None) -> None:
        if self.per_epoch is not None and metric is not None and math.isfinite(metric):
            self.per_epoch.step(metric)

    def state_dict(self) -> dict:
        return {"iterations": self.iterations,
                "per_iteration": self.per_iteration.state_dict() if self.per_iteration else None,
                "per_epoch": self.per_epoch.state_dict() if self.per_epoch else None}

    def load_state_dict(self, state: dict) -> None:
        self.iterations = state["iterations"]
        if self.per_iteration is not None:
            self.per_iteration.load_state_dict(state["per_iteration"])
        if self.per_epoch is not None:
            self.per_epoch.load_state_dict(state["per_epoch"])


def as_schedule(schedule, name: str, owner: str) -> LRSchedule:
    """What a scheduler factory returned, as the LRSchedule the loop steps: augpipe's own, a
    torch scheduler stepped per iteration, or one stepped per epoch on the monitored metric
    (ReduceLROnPlateau, or any object with ``per_epoch = True``)."""
    if isinstance(schedule, LRSchedule):
        return schedule
    if all(hasattr(schedule, m) for m in ("step_iteration", "step_epoch", "state_dict", "load_state_dict")):
        return schedule
    if not all(hasattr(schedule, m) for m in ("step", "state_dict", "load_state_dict")):
        from augpipe.errors import PluginError

        raise PluginError(f"plugin {owner!r}: scheduler {name!r} returned {type(schedule).__name__}, which has no "
                          f"step(), state_dict() and load_state_dict()")
    if isinstance(schedule, ReduceLROnPlateau) or getattr(schedule, "per_epoch", False):
        return LRSchedule(per_epoch=schedule)
    return LRSchedule(per_iteration=schedule)


def _warmup(it: int, warmup: int) -> float:
    return (it + 1) / warmup if it < warmup else 1.0


def _milestones(config, epochs: int) -> list[float]:
    ms = list(config.milestones)
    return [m * epochs for m in ms] if ms and all(m < 1 for m in ms) else ms


def _lambda_schedule(shape, optimizer, *, config, steps_per_epoch: int, epochs: int, **_) -> LRSchedule:
    """Warm-up for ``warmup_epochs``, then ``shape(iteration, epoch)`` as the factor on the lr."""
    warmup = int(round(config.warmup_epochs * steps_per_epoch))

    def factor(it: int) -> float:
        if it < warmup:
            return _warmup(it, warmup)
        return shape(it, it / steps_per_epoch, warmup)

    return LRSchedule(LambdaLR(optimizer, factor))


def constant(optimizer, **kw):
    return _lambda_schedule(lambda it, e, w: 1.0, optimizer, **kw)


def step(optimizer, *, config, **kw):
    return _lambda_schedule(lambda it, e, w: config.gamma ** math.floor(e / config.step_size), optimizer,
                            config=config, **kw)


def multistep(optimizer, *, config, epochs, **kw):
    marks = _milestones(config, epochs)
    return _lambda_schedule(lambda it, e, w: config.gamma ** sum(e >= m for m in marks), optimizer,
                            config=config, epochs=epochs, **kw)


def exponential(optimizer, *, config, **kw):
    # Defined per epoch (torch's ExponentialLR): the factor changes at epoch boundaries.
    return _lambda_schedule(lambda it, e, w: config.gamma ** math.floor(e), optimizer, config=config, **kw)


def cosine(optimizer, *, config, steps_per_epoch, epochs, **kw):
    total = steps_per_epoch * epochs
    base = optimizer.param_groups[0]["lr"]
    floor = config.min_lr / base if base > 0 else 0.0

    def shape(it, e, warmup):
        t = (it - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return _lambda_schedule(shape, optimizer, config=config, steps_per_epoch=steps_per_epoch, epochs=epochs, **kw)


def onecycle(optimizer, *, config, steps_per_epoch, epochs, **kw):
    total = steps_per_epoch * epochs
    pct = config.warmup_epochs / epochs if config.warmup_epochs > 0 else 0.3
    lr = [group["lr"] for group in optimizer.param_groups]  # groups may differ (--backbone-lr-scale)
    cycle_momentum = "momentum" in optimizer.defaults and optimizer.defaults.get("momentum", 0) > 0 \
        or "betas" in optimizer.defaults
    return LRSchedule(OneCycleLR(optimizer, max_lr=lr, total_steps=max(2, total), pct_start=min(0.9, max(0.01, pct)),
                                 cycle_momentum=cycle_momentum))


LINEAR_START = 0.2  # airbench94's first rate, as a fraction of the peak


def linear(optimizer, *, config, steps_per_epoch, epochs, **kw):
    """airbench94's schedule: up in a straight line from 0.2 lr to lr over --warmup-epochs
    (default: the first 23 % of the run), then down in a straight line to --min-lr, where it
    would be one step after the last. ``min_lr`` is the rate of the first parameter group; the others keep their
    ratio to it (--norm-lr-scale, --backbone-lr-scale)."""
    total = max(2, steps_per_epoch * epochs)
    warmup = int(round(config.warmup_epochs * steps_per_epoch)) if config.warmup_epochs > 0 else int(0.23 * total)
    warmup = min(warmup, total - 1)
    base = optimizer.param_groups[0]["lr"]
    end = config.min_lr / base if base > 0 else 0.0

    def factor(it: int) -> float:
        if it < warmup:
            return LINEAR_START + (1 - LINEAR_START) * it / warmup
        t = min(1.0, (it - warmup) / max(1, total - warmup))
        return 1.0 + (end - 1.0) * t

    return LRSchedule(LambdaLR(optimizer, factor))


def plateau(optimizer, *, config, steps_per_epoch, **kw):
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    per_iteration = LambdaLR(optimizer, lambda it: _warmup(it, warmup)) if warmup else None
    per_epoch = ReduceLROnPlateau(optimizer, mode=config.monitor_mode, factor=config.gamma, patience=2)
    return LRSchedule(per_iteration, per_epoch, iteration_limit=warmup)


SCHEDULERS = {"none": constant, "step": step, "multistep": multistep, "exponential": exponential,
              "cosine": cosine, "onecycle": onecycle, "linear": linear, "plateau": plateau}


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
