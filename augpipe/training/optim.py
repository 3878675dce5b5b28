"""Optimizers and learning-rate schedules by name: torch's optimizer classes with timm's
weight-decay grouping, Muon with nesterov SGD, and torch's schedulers. The built-in plugin registers these;
third-party plugins add their own."""

from __future__ import annotations

import inspect
import math
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau
from torch.optim.sgd import sgd


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


def split_param_groups(
    optimizer: torch.optim.Optimizer, scaled_ids: set[int], lr_scale: float, decay_scale: float = 1.0
) -> None:
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
            scaled.append(
                {
                    **options,
                    "params": chosen,
                    "lr": options["lr"] * lr_scale,
                    "weight_decay": options.get("weight_decay", 0.0) * decay_scale,
                }
            )
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


# Keller Jordan's quintic Newton-Schulz coefficients (kellerjordan.github.io/posts/muon), as
# torch.optim.Muon and timm's Muon use them: five steps take every singular value of a matrix of
# spectral norm <= 1 to about 0.7-1.2, which trains as well as the exact U V^T.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
# Muon's matrices step at this multiple of --lr: the rate of Keller Jordan's Muon (0.02) for the
# rest's default nesterov rate (0.05). One --lr then schedules both parts, keeps lr-find, the
# logged rate and --min-lr meaningful, and every group reports --lr as its rate.
MUON_LR_SCALE = 0.4


def orthogonalize(
    matrix: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16, eps: float = 1e-7
) -> torch.Tensor:
    """About ``U V^T`` of a matrix ``U S V^T`` by ``steps`` quintic Newton-Schulz iterations in
    ``dtype``, as Keller Jordan's Muon computes it: ``X = M / (|M|_F + eps)``, then ``steps``
    times ``A = X X^T; X = a X + (b A + c A A) X``, on the wide orientation of the matrix."""
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:  # the Gram matrix of the shorter side is the smaller one
        x = x.T
    x = x / (x.norm() + eps)  # the Frobenius norm bounds the spectral norm: the iteration converges
    for _ in range(steps):
        gram = x @ x.T
        # fused multiply-adds: fewer bfloat16 roundings and temporaries than the written-out sums
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(matrix.dtype)


def muon_eligible(p: torch.Tensor) -> bool:
    """A weight matrix or a bank of filters, read as (outputs, inputs x kernel). As timm's Muon,
    not a depthwise filter (one input channel) nor a position embedding or class token (one
    leading row): orthogonalising those mixes what are independent vectors."""
    return p.ndim >= 2 and p.shape[0] > 1 and p.shape[1] > 1


def output_layer_ids(model: torch.nn.Module) -> set[int]:
    """The classifier's parameters: timm's ``get_classifier()`` where the model has it, else the
    last linear or convolution layer registered (the factory is not told the class count)."""
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        heads = head if isinstance(head, (tuple, list)) else (head,)
        return {id(p) for h in heads if isinstance(h, torch.nn.Module) for p in h.parameters()}
    last = None
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
            last = m
    return {id(p) for p in last.parameters()} if last is not None else set()


class Muon(torch.optim.Optimizer):
    """Muon for the groups marked ``muon``, nesterov SGD (torch's own ``sgd``) for the others, in
    one optimizer: one state dict, and parameter groups that schedulers, --norm-lr-scale and
    --backbone-lr-scale treat as any optimizer's.

    A Muon step on a parameter ``p`` of gradient ``g`` (``p`` 2-D, or a filter bank read as
    ``(out, in*kh*kw)``, momentum ``mu``, rate ``lr * muon_lr_scale``):
    ``B = mu B + g``; ``U = g + mu B`` (nesterov) or ``B``;
    ``p -= rate * sqrt(max(1, rows / cols)) * orthogonalize(U)``, after ``p *= 1 - rate * wd``
    (decoupled decay, as torch.optim.Muon), or, with ``normalize``, after rescaling ``p`` to the
    Frobenius norm ``sqrt(rows)`` as airbench94_muon does (weight decay then has no effect).
    torch.optim.Muon keeps ``B`` as a running mean, ``(1 - mu)`` times this ``B``: the
    orthogonalised direction is the same."""

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        muon: bool = False,
        muon_lr_scale: float = MUON_LR_SCALE,
        ns_steps: int = 5,
        ns_dtype: str = "bfloat16",
        normalize: bool = False,
    ):
        if not 0 <= momentum < 1:
            raise ValueError(f"Muon's momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("Muon's nesterov momentum needs a momentum above 0")
        if not muon_lr_scale > 0 or not isinstance(ns_steps, int) or ns_steps < 1:
            raise ValueError(f"Muon needs muon_lr_scale > 0 and ns_steps >= 1, got {muon_lr_scale} and {ns_steps}")
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"Muon's ns_dtype must be one of {', '.join(NS_DTYPES)}, got {ns_dtype!r}")
        super().__init__(
            params,
            dict(
                lr=lr,
                momentum=momentum,
                weight_decay=weight_decay,
                nesterov=nesterov,
                muon=muon,
                muon_lr_scale=muon_lr_scale,
                ns_steps=ns_steps,
                ns_dtype=ns_dtype,
                normalize=normalize,
            ),
        )
        for group in self.param_groups:
            flat = [tuple(p.shape) for p in group["params"] if group["muon"] and p.ndim < 2]
            if flat:
                raise ValueError(f"Muon orthogonalises matrices and filters only, not parameters of shape {flat[0]}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]  # frozen for now (set_epoch): no step
            if group["muon"]:
                for p in params:
                    self._muon_update(p, group)
                continue
            buffers = [self.state[p].get("momentum_buffer") for p in params]
            sgd(
                params,
                [p.grad for p in params],
                buffers,
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                lr=group["lr"],
                dampening=0.0,
                nesterov=group["nesterov"],
                maximize=False,
            )
            if group["momentum"] > 0:
                for p, buffer in zip(params, buffers):
                    self.state[p]["momentum_buffer"] = buffer
        return loss

    def _muon_update(self, p: torch.Tensor, group: dict) -> None:
        g, mu = p.grad, group["momentum"]
        if g is None:
            return
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buffer = state["momentum_buffer"]
        buffer.mul_(mu).add_(g)
        update = g.add(buffer, alpha=mu) if group["nesterov"] else buffer
        rate = group["lr"] * group["muon_lr_scale"]
        rows = p.shape[0]
        cols = p.numel() // rows
        if group["normalize"]:
            p.mul_(rows**0.5 / p.norm().clamp_min(1e-12))
        elif group["weight_decay"]:
            p.mul_(1 - rate * group["weight_decay"])
        # reshape, not view: a channels-last filter bank is read in (out, in, kh, kw) order all the same
        orthogonal = orthogonalize(update.reshape(rows, cols), group["ns_steps"], NS_DTYPES[group["ns_dtype"]])
        p.add_(orthogonal.reshape(p.shape), alpha=-rate * max(1.0, rows / cols) ** 0.5)  # (a tall one comes transposed)


def muon_optimizer(
    model,
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    muon_lr_scale: float = MUON_LR_SCALE,
    ns_steps: int = 5,
    ns_dtype: str = "bfloat16",
    normalize: bool = False,
) -> Muon:
    """``--optimizer muon``: Muon for the weight matrices and convolution filters, nesterov SGD at
    --lr for biases, normalisation parameters and the classifier (Keller Jordan's split, and
    airbench94_muon's: the head's few outputs make a poor matrix to orthogonalise). Both parts
    take --momentum; weight decay as ``weight_decay_groups`` gives it (L2 for SGD, decoupled for
    Muon). A plugin registers other settings with ``functools.partial``."""
    head = output_layer_ids(model)
    groups = []
    for group in weight_decay_groups(model, weight_decay):
        for muon in (False, True):  # SGD first: the group whose rate is logged is a plain one
            chosen = [p for p in group["params"] if (muon_eligible(p) and id(p) not in head) == muon]
            if chosen:
                groups.append({**group, "params": chosen, "muon": muon})
    return Muon(
        groups,
        lr=lr,
        momentum=momentum,
        muon_lr_scale=muon_lr_scale,
        ns_steps=ns_steps,
        ns_dtype=ns_dtype,
        normalize=normalize,
    )


OPTIMIZERS = {
    "sgd": partial(torch_optimizer, cls=torch.optim.SGD, nesterov=False),
    "momentum": partial(torch_optimizer, cls=torch.optim.SGD, nesterov=False),
    "nesterov": partial(torch_optimizer, cls=torch.optim.SGD, nesterov=True),
    "rmsprop": partial(torch_optimizer, cls=torch.optim.RMSprop, alpha=0.9),
    "adam": partial(torch_optimizer, cls=torch.optim.Adam),
    "adamw": partial(torch_optimizer, cls=torch.optim.AdamW),
    "adagrad": partial(torch_optimizer, cls=torch.optim.Adagrad),
    "muon": muon_optimizer,
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
        return {
            "iterations": self.iterations,
            "per_iteration": self.per_iteration.state_dict() if self.per_iteration else None,
            "per_epoch": self.per_epoch.state_dict() if self.per_epoch else None,
        }

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

        raise PluginError(
            f"plugin {owner!r}: scheduler {name!r} returned {type(schedule).__name__}, which has no "
            f"step(), state_dict() and load_state_dict()"
        )
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
    return _lambda_schedule(
        lambda it, e, w: config.gamma ** math.floor(e / config.step_size), optimizer, config=config, **kw
    )


def multistep(optimizer, *, config, epochs, **kw):
    marks = _milestones(config, epochs)
    return _lambda_schedule(
        lambda it, e, w: config.gamma ** sum(e >= m for m in marks), optimizer, config=config, epochs=epochs, **kw
    )


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
    cycle_momentum = (
        "momentum" in optimizer.defaults and optimizer.defaults.get("momentum", 0) > 0 or "betas" in optimizer.defaults
    )
    return LRSchedule(
        OneCycleLR(
            optimizer,
            max_lr=lr,
            total_steps=max(2, total),
            pct_start=min(0.9, max(0.01, pct)),
            cycle_momentum=cycle_momentum,
        )
    )


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


SCHEDULERS = {
    "none": constant,
    "step": step,
    "multistep": multistep,
    "exponential": exponential,
    "cosine": cosine,
    "onecycle": onecycle,
    "linear": linear,
    "plateau": plateau,
}


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
