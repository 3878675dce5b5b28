"""The shared training loop: ``fit`` runs epochs of mini-batches and returns the history;
``evaluate`` scores a loader."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from augpipe import distributed
from augpipe.progress import duration, track
from augpipe.training.optim import current_lr

log = logging.getLogger("augpipe")


class NonFiniteLoss(Exception):
    pass


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    iteration_losses: list[float] = field(default_factory=list)
    stop_reason: str = "completed"
    failed: bool = False  # a non-finite loss ended the run


def unwrap(model):
    """The model itself, inside torch.compile's and DistributedDataParallel's wrappers: its
    state dict has the plain names a single-process run loads."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, DistributedDataParallel):
            model = model.module
        else:
            return model


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on CUDA and on CPUs (oneDNN runs bf16 convolutions natively on AVX-512
    BF16 and AMX cores); fp16 on CUDA only."""
    if precision == "fp32" or (device.type != "cuda" and precision != "bf16"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(
    model, loader, prepare, loss_fn, num_classes: int, device, precision: str = "fp32", tta: str = "none"
) -> dict:
    """Mean loss, accuracy and the confusion matrix (rows: true class, columns: predicted), of the
    logits averaged over the views ``tta`` names (augpipe.training.tta)."""
    from augpipe.training.tta import tta_logits

    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    for images, labels in loader:
        x = prepare(images)
        y = labels.to(device, non_blocking=True)
        with autocast_for(device, precision):
            logits = tta_logits(model, x, tta)
        total_loss += loss_fn(logits.float(), y).double() * len(y)
        pred = logits.argmax(1)
        confusion.view(-1).index_add_(0, y * num_classes + pred, torch.ones_like(y))
        n += len(y)
    # In a distributed run every rank scored its own share: the sums make the whole split's.
    counted = torch.tensor([float(n)], dtype=torch.float64, device=device)
    distributed.sum_(total_loss), distributed.sum_(confusion), distributed.sum_(counted)
    n = int(counted.item())
    confusion = confusion.cpu().numpy()
    correct = int(np.trace(confusion))
    return {"loss": float(total_loss) / max(1, n), "acc": correct / max(1, n), "n": n, "confusion": confusion}


@dataclass
class EpochProgress:
    """How far the current epoch got: what an interrupted epoch's checkpoint keeps, so that a
    resumed run continues it at the next step with the same sums."""

    epoch: int
    step: int = 0  # training steps done in this epoch
    losses: list[float] = field(default_factory=list)
    correct: float = 0  # a float: a mixed batch (MixUp, CutMix) counts each image by its label's weight
    n: int = 0
    seconds: float = 0.0
    loader_state: object = None  # the training loader's generator at the start of the epoch
    lr: float | None = None  # the learning rate at the start of the epoch, as metrics.csv reports it

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "losses": list(self.losses),
            "correct": self.correct,
            "n": self.n,
            "seconds": self.seconds,
            "loader_state": self.loader_state,
            "lr": self.lr,
        }

    @classmethod
    def from_state(cls, state: dict) -> EpochProgress:
        return cls(**state)


class TrainingControl:
    """What the loop asks between steps: has a stop been requested (a signal), and where does
    the first epoch start (a resumed run). ``on_interrupt(progress)`` saves an unfinished epoch."""

    def __init__(
        self,
        stop_requested=lambda: False,
        resume_at: EpochProgress | None = None,
        on_interrupt=None,
        after_fast_forward=None,
        batch_callbacks=(),
        step_loggers=(),
    ):
        self.stop_requested = stop_requested
        self.resume_at = resume_at
        self.on_interrupt = on_interrupt
        self.after_fast_forward = after_fast_forward
        self.batch_callbacks = list(batch_callbacks)
        self.step_loggers = list(step_loggers)  # ExperimentLogger: log_step(global step, scalars)


def optimizer_step(loss, optimizer, scaler=None) -> None:
    """Backward and update; with fp16's gradient scaler when there is one."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


class StepTimer:
    """Times a few steps after the first (which pays for warm-up: allocation, oneDNN's kernel
    choice, cuDNN's benchmark) and logs what the whole epoch will take, so that a run on a slow
    setting says so in seconds, not after the first epoch."""

    FIRST, LAST = 2, 6  # steps timed: 2..6

    def __init__(self, steps_per_epoch: int, desc: str):
        self.steps = steps_per_epoch
        self.desc = desc
        self.start = None
        self.count = 0  # steps taken since this timer was made (a resumed epoch starts midway)
        self.done = steps_per_epoch <= self.LAST  # such an epoch is over before an estimate helps

    def step(self, loss) -> None:
        if self.done:
            return
        self.count += 1
        step = self.count
        if step == self.FIRST - 1:
            if loss.device.type == "cuda":
                torch.cuda.synchronize(loss.device)
            self.start = time.perf_counter()
        elif step >= self.LAST and self.start is not None:
            if loss.device.type == "cuda":
                torch.cuda.synchronize(loss.device)
            per_step = (time.perf_counter() - self.start) / (step - self.FIRST + 1)
            log.info(
                "%s: about %s for %d steps (%.3g s a step, timed over steps %d-%d), then validation",
                self.desc,
                duration(per_step * self.steps),
                self.steps,
                per_step,
                self.FIRST,
                step,
            )
            self.done = True


def train_epoch(
    model,
    loader,
    prepare,
    optimizer,
    schedule,
    loss_fn,
    device,
    *,
    precision="fp32",
    scaler=None,
    progress: bool | None = False,
    desc="",
    deadline=None,
    check_every: int = 1,
    state: EpochProgress | None = None,
    control: TrainingControl | None = None,
    estimate: bool = False,
    mixer=None,
) -> EpochProgress:
    """One pass over ``loader``, from ``state.step`` on when an interrupted epoch is resumed.
    Returns the epoch's progress; ``step < len(loader)`` means a stop was requested.
    ``estimate``: log the epoch's expected time once a few steps have been timed.
    ``mixer``: MixUp / CutMix of each prepared batch (augpipe.augment.mixing.BatchMixer)."""
    from augpipe.augment.mixing import mixed_correct

    model.train()
    control = control or TrainingControl()
    state = state or EpochProgress(epoch=0)
    start = time.perf_counter() - state.seconds
    correct = torch.zeros((), dtype=torch.float64, device=device)
    pending = []
    batches = iter(loader)
    if state.step:
        # The loader repeats its order and augmentation from the epoch's generator state: drawing
        # the batches already trained on (without training) puts every stream where it was.
        for _ in range(state.step):
            next(batches)
        if control.after_fast_forward is not None:
            control.after_fast_forward()
    counted, n_before = state.correct, state.n
    timer = StepTimer(len(loader), desc) if estimate else None

    world = distributed.ranks().world_size
    since = {"time": time.perf_counter(), "n": state.n}

    def flush():
        # Every rank records the mean over the ranks of each step's loss, so that all of them
        # stop together on a non-finite one.
        values = (distributed.sum_(torch.stack(pending).float()) / world).cpu().tolist()
        pending.clear()
        state.losses.extend(values)
        if control.step_loggers:
            now = time.perf_counter()
            rate = (state.n - since["n"]) * world / (now - since["time"]) if now > since["time"] else float("nan")
            since.update(time=now, n=state.n)
            lr = current_lr(optimizer)
            first = (state.epoch - 1) * len(loader) + state.step - len(values) + 1
            for k, v in enumerate(values):
                for lg in control.step_loggers:
                    lg.log_step(first + k, {"loss": v, "lr": lr, "images_per_s": rate})
        bad = next((k for k, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            # the losses are fetched in groups (every 50 steps on a GPU): name the first bad one
            at = state.step - len(values) + bad + 1
            raise NonFiniteLoss(f"the training loss became {values[bad]} at iteration {at}")

    shown = track(
        batches,
        len(loader) - state.step,
        desc,
        enabled=progress,
        unit="step",
        per_item=(getattr(loader, "batch_size", 1) * distributed.ranks().world_size, "images"),
    )
    for images, labels in shown:
        x = prepare(images)
        y = labels.to(device, non_blocking=True)
        targets = y
        if mixer is not None:
            # Keyed by the step's index in the epoch: a resumed epoch mixes its batches alike.
            x, targets, _ = mixer(x, y, epoch=state.epoch, step=state.step)
        with autocast_for(device, precision):
            logits = model(x)
            loss = loss_fn(logits.float(), targets)
        optimizer_step(loss, optimizer, scaler)
        schedule.step_iteration()
        if mixer is not None:
            correct += mixed_correct(logits.detach(), targets)
        else:
            correct += (logits.detach().argmax(1) == y).sum()
        state.n += len(y)
        state.step += 1
        pending.append(loss.detach())
        # Fetching the loss every iteration would stall a GPU; a CPU loses nothing.
        if len(pending) >= check_every:
            flush()
        for cb in control.batch_callbacks:
            cb.on_train_batch_end(state.epoch, state.step, loss)
        if timer is not None:
            timer.step(loss)
        stop = (deadline is not None and time.perf_counter() > deadline) or (
            control.stop_requested() and state.step < len(loader)
        )
        if world == 1:
            if stop:
                break
        # The ranks agree on a stop at the same steps (every step on CPUs; a GPU is not made to
        # wait for the answer at every one).
        elif state.step % check_every == 0 and distributed.any_(stop, device):
            break
    if pending:
        flush()
    seen = torch.tensor([state.n - n_before], dtype=torch.int64, device=device)
    distributed.sum_(correct), distributed.sum_(seen)
    state.correct = counted + (float(correct) if mixer is not None else int(correct))
    state.n = n_before + int(seen.item())
    state.seconds = time.perf_counter() - start
    return state


def fit(
    model,
    train_loader,
    val_loader,
    *,
    prepare_train,
    prepare_eval,
    optimizer,
    schedule,
    loss_fn,
    epochs: int,
    device,
    num_classes: int,
    callbacks=(),
    tracker=None,
    precision: str = "fp32",
    max_seconds: float | None = None,
    progress: bool | None = False,
    start_epoch: int = 1,
    history: History | None = None,
    control: TrainingControl | None = None,
    scaler=None,
    tta: str = "none",
    scored_model=None,
    mixer=None,
) -> History:
    """Train for ``epochs`` epochs (from ``start_epoch``), validating after each. ``callbacks``
    see every epoch's metrics; one returning True stops the run (its ``reason`` is recorded).
    Between steps ``control`` may stop the run (an interrupt) or resume an unfinished epoch."""
    history = history or History()
    control = control or TrainingControl()
    # What is validated, what callbacks see (early stopping's best weights): the model, or the
    # average of its weights (--ema).
    plain_model = scored_model if scored_model is not None else unwrap(model)
    if scaler is None and precision == "fp16" and device.type == "cuda":
        scaler = torch.amp.GradScaler("cuda")
    check_every = 50 if device.type == "cuda" else 1
    deadline = time.perf_counter() + max_seconds if max_seconds else None
    resume_at, control.resume_at = control.resume_at, None
    estimate = True  # for the first epoch this call trains
    for epoch in range(start_epoch, epochs + 1):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        # A model may change with the epoch (fastcifar freezes its whitening bias after 3).
        if callable(getattr(unwrap(model), "set_epoch", None)):
            unwrap(model).set_epoch(epoch)
        generator = getattr(train_loader, "generator", None)
        if resume_at is not None and resume_at.epoch == epoch:
            state = resume_at
            if generator is not None and state.loader_state is not None:
                generator.set_state(state.loader_state)
        else:
            state = EpochProgress(
                epoch=epoch,
                loader_state=generator.get_state() if generator is not None else None,
                lr=current_lr(optimizer),
            )
        lr = state.lr if state.lr is not None else current_lr(optimizer)
        try:
            state = train_epoch(
                model,
                train_loader,
                prepare_train,
                optimizer,
                schedule,
                loss_fn,
                device,
                precision=precision,
                scaler=scaler,
                progress=progress,
                desc=f"epoch {epoch}/{epochs}",
                deadline=deadline,
                check_every=check_every,
                state=state,
                control=control,
                estimate=estimate,
                mixer=mixer,
            )
            estimate = False
        except NonFiniteLoss as err:
            history.stop_reason = f"stopped at epoch {epoch}: {err}"
            history.failed = True
            log.error("%s", history.stop_reason)
            break
        if state.step < len(train_loader) and distributed.any_(control.stop_requested(), device):
            history.stop_reason = "interrupted"
            if control.on_interrupt is not None:
                control.on_interrupt(state)
            break
        history.iteration_losses.extend(state.losses)
        train_loss = float(np.mean(state.losses)) if state.losses else float("nan")
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": state.correct / max(1, state.n),
            "lr": lr,
            "seconds": state.seconds,
            "images_per_s": state.n / state.seconds if state.seconds > 0 else float("nan"),
        }
        if val_loader is not None and len(val_loader.dataset):
            val = evaluate(
                plain_model if scored_model is not None else model,
                val_loader,
                prepare_eval,
                loss_fn,
                num_classes,
                device,
                precision,
                tta,
            )
            metrics.update(val_loss=val["loss"], val_acc=val["acc"])
        schedule.step_epoch(metrics.get(tracker.monitor) if tracker else metrics.get("val_loss"))
        history.epochs.append(metrics)
        log.info(
            "epoch %d/%d  train loss %.4f acc %.3f  val loss %s acc %s  lr %.3g  %.1f s  %.0f img/s",
            epoch,
            epochs,
            train_loss,
            metrics["train_acc"],
            _f(metrics.get("val_loss"), 4),
            _f(metrics.get("val_acc"), 3),
            lr,
            state.seconds,
            metrics["images_per_s"],
        )
        stop = False
        # Weights can turn NaN on an update whose own loss was finite (a NaN weight decay, one
        # step per epoch): the validation loss is the first figure to show it.
        val_loss = metrics.get("val_loss")
        if val_loss is not None and not math.isfinite(val_loss):
            history.stop_reason = f"stopped at epoch {epoch}: the validation loss became {val_loss}"
            history.failed = True
            stop = True
        for cb in callbacks:
            if cb.on_epoch_end(epoch, metrics, plain_model) and not stop:
                stop = True
                history.stop_reason = getattr(cb, "reason", None) or f"stopped by {type(cb).__name__}"
        # Rank 0's callbacks (plugins', which only it runs) may stop the run for every rank.
        if distributed.any_(stop, device) and not stop:
            stop, history.stop_reason = True, "stopped by a callback on rank 0"
        if stop:
            (log.error if history.failed else log.info)("%s", history.stop_reason)
            break
        if distributed.any_(control.stop_requested(), device):
            history.stop_reason = "interrupted"
            break
        if distributed.any_(deadline is not None and time.perf_counter() > deadline, device):
            history.stop_reason = f"time budget of {max_seconds / 60:g} min reached after epoch {epoch}"
            log.info("%s", history.stop_reason)
            break
    return history


def _f(v, digits):
    return "-" if v is None else f"{v:.{digits}f}"
