"""The learning-rate range test (Smith 2015, "Cyclical Learning Rates"; fastai's ``lr_find``):
train for a few iterations while the rate grows exponentially, record the loss, suggest a rate.

Nothing it touches survives it: the model and optimizer get their states back, and so do the
global random streams and torch's thread count, so a run after it is the run it would have been.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from augpipe.errors import ConfigError, DataError
from augpipe.training.checkpoint import global_random_states, restore_global_random_states

log = logging.getLogger("augpipe")

DEFAULTS = {"start_lr": 1e-7, "end_lr": 10.0, "iterations": 100, "smooth": 0.05, "diverge": 4.0, "out": "lr_find"}
MIN_ITERATIONS = 5
MAX_ITERATIONS = 10**6  # steps of the ramp: as many as a computer finishes (docs/reliability.md)
STEEPEST = "steepest descent"
MINIMUM = "loss minimum / 10"


@dataclass
class RangeTest:
    """What the ramp recorded: one entry per iteration done (fewer than planned when it stopped)."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    planned: int
    stop_reason: str = "completed"


@dataclass
class Suggestion:
    lr: float | None  # the suggested rate; None when the loss never fell
    rule: str | None  # STEEPEST, or MINIMUM when no descent could be measured
    steepest_lr: float | None  # where the smoothed loss falls fastest against log(lr)
    minimum_lr: float | None  # the rate at the smoothed loss's minimum
    minimum_div10: float | None  # a tenth of it; None when the minimum is the first point
    note: str = ""


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    rule: str | None
    steepest_lr: float | None
    minimum_div10: float | None
    minimum_lr: float | None
    stop_reason: str
    planned: int
    paths: dict = field(default_factory=dict)  # "plot": lr_find.png, "csv": lr_find.csv
    note: str = ""


# -- the pure parts -----------------------------------------------------------------------


def check_settings(*, start_lr, end_lr, iterations, smooth, diverge) -> None:
    """Before any work: each a one-line error naming the flag."""

    def number(name, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ConfigError(f"--{name.replace('_', '-')} must be a number, got {value!r}")

    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        number(name, value)
        if not (0 < value < math.inf):
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite rate above 0, got {value}")
    if start_lr >= end_lr:
        raise ConfigError(f"--start-lr ({start_lr:g}) must be below --end-lr ({end_lr:g}): the rate ramps up")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < MIN_ITERATIONS:
        raise ConfigError(f"--iterations must be a whole number of at least {MIN_ITERATIONS}, got {iterations!r}")
    if iterations > MAX_ITERATIONS:
        from augpipe.config import shown_number

        raise ConfigError(f"--iterations must be at most {MAX_ITERATIONS:,}, got {shown_number(iterations)}")
    number("smooth", smooth)
    if not 0 < smooth <= 1:
        raise ConfigError(f"--smooth must be in (0, 1] (the weight of each new loss; 1 = no smoothing), got {smooth}")
    number("diverge", diverge)
    if not diverge > 1:
        raise ConfigError(f"--diverge must be above 1 (a factor on the best smoothed loss), got {diverge}")


def lr_ramp(start_lr: float, end_lr: float, iterations: int) -> np.ndarray:
    """``start * (end / start) ** (i / (n - 1))``: evenly spaced on a log axis, both ends included."""
    return start_lr * (end_lr / start_lr) ** (np.arange(iterations) / (iterations - 1))


class SmoothedLoss:
    """fastai's exponential moving average with bias correction: ``avg = beta * avg + (1 - beta) *
    loss`` from ``avg = 0``, divided by ``1 - beta ** n`` so the first values are not pulled to 0."""

    def __init__(self, smooth: float):
        self.beta = 1.0 - smooth
        self.avg = 0.0
        self.n = 0

    def update(self, loss: float) -> float:
        self.n += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        return self.avg / (1 - self.beta**self.n)


def skip_start(planned: int) -> int:
    """Points left out at the start of the steepest-descent search: the average is still mostly
    the first few batches there, and their noise would pass for a slope."""
    return min(10, planned // 10)


def suggest(lrs, smoothed, *, skip: int = 0) -> Suggestion:
    """Steepest descent: the minimum of d(smoothed loss) / d(log lr), searched from ``skip`` to
    just before the minimum of the smoothed loss (past it the loss is diverging, not learning).
    The loss minimum / 10 comes with it as the second common rule, and stands in when no
    descent can be measured."""
    lrs = np.asarray(lrs, dtype=float)
    s = np.asarray(smoothed, dtype=float)
    finite = np.isfinite(s)
    n = int(np.argmin(finite)) if not finite.all() else len(s)  # points before the first non-finite one
    if n == 0:
        # The first loss comes before any step: a non-finite one is the model's or the data's doing.
        return Suggestion(None, None, None, None, None, "the first loss was not finite, before any step was taken")
    lrs, s = lrs[:n], s[:n]
    low = int(np.argmin(s))
    if low == 0:
        return Suggestion(
            None,
            None,
            None,
            float(lrs[0]),
            None,
            "the smoothed loss never fell below its first value: try more --iterations or a lower --start-lr",
        )
    minimum_lr = float(lrs[low])
    grad = np.gradient(s, np.log(lrs))
    first = skip if low - skip >= 2 else 0  # a minimum that early leaves only the first points
    window = grad[first:low]
    k = int(np.argmin(window))
    if not window[k] < 0:
        return Suggestion(
            minimum_lr / 10,
            MINIMUM,
            None,
            minimum_lr,
            minimum_lr / 10,
            f"no descent measured before the minimum: the {MINIMUM} rule stands in",
        )
    return Suggestion(float(lrs[first + k]), STEEPEST, float(lrs[first + k]), minimum_lr, minimum_lr / 10)


# -- the state it must give back ----------------------------------------------------------


@contextlib.contextmanager
def kept_state(model=None, optimizer=None):
    """Deep copies of the model's and optimizer's state_dicts, the global random streams and the
    thread count, put back on the way out (also after an error or Ctrl-C)."""
    model_state = copy.deepcopy(model.state_dict()) if model is not None else None
    training = model.training if model is not None else None
    optimizer_state = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    rng = global_random_states()
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if model is not None:
            model.load_state_dict(model_state)
            model.train(training)
        if optimizer is not None:
            optimizer.load_state_dict(optimizer_state)
        restore_global_random_states(rng)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


# -- the test itself ----------------------------------------------------------------------


def _cycle(loader):
    """Batches without end: a test longer than an epoch starts the loader again (a new shuffle)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise DataError("the training loader yields no batches")


def range_test(
    model,
    optimizer,
    loader,
    *,
    prepare,
    loss_fn,
    device,
    start_lr: float = DEFAULTS["start_lr"],
    end_lr: float = DEFAULTS["end_lr"],
    iterations: int = DEFAULTS["iterations"],
    smooth: float = DEFAULTS["smooth"],
    diverge: float = DEFAULTS["diverge"],
    precision: str = "fp32",
    progress: bool = False,
) -> RangeTest:
    """One optimizer step per iteration at the ramp's rate, until the ramp ends or the smoothed
    loss passes ``diverge`` times its best (or the loss is not finite). ``model`` and ``optimizer``
    end as they began. Param groups keep their ratios to the first group's rate."""
    from augpipe.training.loop import autocast_for, optimizer_step

    check_settings(start_lr=start_lr, end_lr=end_lr, iterations=iterations, smooth=smooth, diverge=diverge)
    ramp = lr_ramp(start_lr, end_lr, iterations)
    base = optimizer.param_groups[0]["lr"]
    ratios = [g["lr"] / base if base > 0 else 1.0 for g in optimizer.param_groups]
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and torch.device(device).type == "cuda" else None
    result = RangeTest([], [], [], planned=iterations)
    average, best = SmoothedLoss(smooth), math.inf
    batches = _cycle(loader)
    steps = zip(ramp, batches)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, total=iterations, desc="lr-find", leave=False, file=sys.stderr, dynamic_ncols=True)
    with kept_state(getattr(model, "_orig_mod", model), optimizer):
        model.train()
        try:
            for i, (lr, (images, labels)) in enumerate(steps):
                for group, ratio in zip(optimizer.param_groups, ratios):
                    group["lr"] = float(lr) * ratio
                x = prepare(images)
                y = labels.to(device, non_blocking=True)
                with autocast_for(torch.device(device), precision):
                    loss = loss_fn(model(x).float(), y)
                optimizer_step(loss, optimizer, scaler)
                value = float(loss.detach())
                smoothed = average.update(value)
                result.lrs.append(float(lr))
                result.losses.append(value)
                result.smoothed.append(smoothed)
                if not (math.isfinite(value) and math.isfinite(smoothed)):
                    result.stop_reason = f"stopped at iteration {i + 1}: the loss became {value} at lr {lr:.3g}"
                    break
                if smoothed > diverge * best:
                    result.stop_reason = (
                        f"stopped at iteration {i + 1}: the smoothed loss {smoothed:.4g} passed "
                        f"{diverge:g} x its best ({best:.4g}) at lr {lr:.3g}"
                    )
                    break
                best = min(best, smoothed)
        finally:
            if hasattr(steps, "close"):
                steps.close()
            batches.close()  # lets go of the loader's iterator (and its worker processes) now
    return result


# -- files --------------------------------------------------------------------------------


def write_csv(test: RangeTest, path) -> Path:
    from augpipe.files import write_atomic

    # repr: the shortest text that reads back as the same float, so the table can be recomputed
    rows = ["iteration,lr,loss,smoothed_loss"]
    rows += [
        f"{i + 1},{lr!r},{loss!r},{sm!r}" for i, (lr, loss, sm) in enumerate(zip(test.lrs, test.losses, test.smoothed))
    ]
    return write_atomic(path, "\n".join(rows) + "\n")


def plot(test: RangeTest, suggestion: Suggestion, path, *, diverge: float, title: str = "") -> Path:
    """Loss against lr on a log axis, the raw loss faint behind the smoothed one, both rules marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from augpipe.report import save_figure

    lrs, raw, sm = (np.asarray(v, dtype=float) for v in (test.lrs, test.losses, test.smoothed))
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    ax.plot(lrs, raw, color="tab:blue", alpha=0.25, lw=0.8, label="loss")
    ax.plot(lrs, sm, color="tab:blue", lw=1.8, label="smoothed loss")
    marks = [(suggestion.steepest_lr, STEEPEST, "tab:red", "o"), (suggestion.minimum_div10, MINIMUM, "tab:green", "s")]
    for lr, rule, color, marker in marks:
        if lr is None:
            continue
        chosen = " (suggested)" if rule == suggestion.rule else ""
        ax.axvline(lr, color=color, ls="--", lw=1, label=f"{rule}: {lr:.2g}{chosen}")
        if lrs[0] <= lr <= lrs[-1]:
            ax.plot([lr], [np.interp(np.log(lr), np.log(lrs), sm)], marker, color=color, ms=7)
    finite = sm[np.isfinite(sm)]
    if finite.size:
        # A diverging tail reaches far above the part worth reading: cut it where the test stops.
        top = min(float(finite.max()), diverge * float(finite.min()))
        bottom = float(np.nanmin(np.where(np.isfinite(raw), raw, np.nan)))
        span = max(top - bottom, 1e-6)
        ax.set_ylim(bottom - 0.05 * span, top + 0.1 * span)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "learning-rate range test", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, Path(path))


# -- the command ----------------------------------------------------------------------------


def _output_dir(out) -> tuple[Path, bool]:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: not a directory")
    existed = out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"--out {out}: can not be created ({err.strerror or err})") from None
    return out, existed


def lr_find(
    config=None,
    *,
    config_file=None,
    plugins=None,
    start_lr: float = DEFAULTS["start_lr"],
    end_lr: float = DEFAULTS["end_lr"],
    iterations: int = DEFAULTS["iterations"],
    smooth: float = DEFAULTS["smooth"],
    diverge: float = DEFAULTS["diverge"],
    out=DEFAULTS["out"],
    progress: bool | None = None,
    data_cache: dict | None = None,
    **flags,
) -> LRFindResult:
    """The range test on the data, model, optimizer and training augmentation that
    ``augpipe.train`` with the same settings would use (its scheduler, epochs and early stopping
    are not used; ``out`` is this test's folder, not a run directory). Writes ``lr_find.png`` and
    ``lr_find.csv`` into ``out``."""
    from augpipe.augment.spec import AugmentSpec
    from augpipe.plugin_manager import get_plugins
    from augpipe.training.parts import build_parts
    from augpipe.training.pipeline import load_data
    from augpipe.training.settings import build_config, resolve_device, seed_everything

    check_settings(start_lr=start_lr, end_lr=end_lr, iterations=iterations, smooth=smooth, diverge=diverge)
    plugins = plugins or get_plugins()
    cfg = build_config(config, config_file=config_file, plugins=plugins, **flags)
    device = resolve_device(cfg.device)
    spec = AugmentSpec.load(cfg.aug)
    out_dir, existed = _output_dir(out)
    try:
        with kept_state():
            seed_everything(cfg.seed)
            data_path, data = load_data(cfg, cfg.split_file, data_cache)
            parts = build_parts(cfg, plugins, data, data_path, spec, device)
            optimizer, pipeline, train_model = parts.optimizer, parts.pipeline, parts.train_model
            batches = len(pipeline.train)
            log.info(
                "lr-find: %s/%s, %s, %s, batch %d on %s (%d training images, %d iterations per epoch): "
                "%d iterations from %g to %g",
                cfg.plugin,
                cfg.model,
                cfg.activation,
                cfg.optimizer,
                cfg.batch_size,
                data_path,
                len(data.indices("train")),
                batches,
                iterations,
                start_lr,
                end_lr,
            )
            test = range_test(
                train_model,
                optimizer,
                pipeline.train,
                prepare=pipeline.prepare_train,
                loss_fn=torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
                device=device,
                start_lr=start_lr,
                end_lr=end_lr,
                iterations=iterations,
                smooth=smooth,
                diverge=diverge,
                precision=cfg.precision,
                progress=sys.stderr.isatty() if progress is None else progress,
            )
        found = suggest(test.lrs, test.smoothed, skip=skip_start(iterations))
        title = (
            f"{cfg.plugin}/{cfg.model}, {cfg.activation}, {cfg.optimizer}, batch {cfg.batch_size}, "
            f"aug {cfg.aug if isinstance(cfg.aug, str) else 'custom'}"
        )
        paths = {
            "csv": write_csv(test, out_dir / "lr_find.csv"),
            "plot": plot(test, found, out_dir / "lr_find.png", diverge=diverge, title=title),
        }
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only when empty: made for this test alone
        raise
    return LRFindResult(
        lrs=test.lrs,
        losses=test.losses,
        smoothed=test.smoothed,
        suggestion=found.lr,
        rule=found.rule,
        steepest_lr=found.steepest_lr,
        minimum_div10=found.minimum_div10,
        minimum_lr=found.minimum_lr,
        stop_reason=test.stop_reason,
        planned=iterations,
        paths=paths,
        note=found.note,
    )
