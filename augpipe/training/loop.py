"""The shared training loop: ``fit`` runs epochs of mini-batches and returns the history;
``evaluate`` scores a loader."""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

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


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on CUDA and on CPUs (oneDNN runs bf16 convolutions natively on AVX-512
    BF16 and AMX cores); fp16 on CUDA only."""
    if precision == "fp32" or (device.type != "cuda" and precision != "bf16"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model, loader, prepare, loss_fn, num_classes: int, device, precision: str = "fp32") -> dict:
    """Mean loss, accuracy and the confusion matrix (rows: true class, columns: predicted)."""
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    for images, labels in loader:
        x = prepare(images)
        y = labels.to(device, non_blocking=True)
        with autocast_for(device, precision):
            logits = model(x)
        total_loss += loss_fn(logits.float(), y).double() * len(y)
        pred = logits.argmax(1)
        confusion.view(-1).index_add_(0, y * num_classes + pred, torch.ones_like(y))
        n += len(y)
    confusion = confusion.cpu().numpy()
    correct = int(np.trace(confusion))
    return {"loss": float(total_loss) / max(1, n), "acc": correct / max(1, n), "n": n, "confusion": confusion}


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)


def train_epoch(model, loader, prepare, optimizer, schedule, loss_fn, device, *, precision="fp32",
                scaler=None, progress=False, desc="", deadline=None, check_every: int = 1):
    """One pass over ``loader``. Returns (mean loss, accuracy, images, seconds, iteration losses)."""
    model.train()
    start = time.perf_counter()
    losses, correct, n = [], torch.zeros((), dtype=torch.int64, device=device), 0
    pending = []
    for it, (images, labels) in enumerate(_progress(loader, len(loader), desc, progress)):
        x = prepare(images)
        y = labels.to(device, non_blocking=True)
        with autocast_for(device, precision):
            logits = model(x)
            loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        schedule.step_iteration()
        correct += (logits.detach().argmax(1) == y).sum()
        n += len(y)
        pending.append(loss.detach())
        # Fetching the loss every iteration would stall a GPU; a CPU loses nothing.
        if len(pending) >= check_every:
            values = torch.stack(pending).float().cpu().tolist()
            pending.clear()
            losses.extend(values)
            if not all(math.isfinite(v) for v in values):
                raise NonFiniteLoss(f"the training loss became {values[-1]} at iteration {it + 1}")
        if deadline is not None and time.perf_counter() > deadline:
            break
    if pending:
        values = torch.stack(pending).float().cpu().tolist()
        losses.extend(values)
        if not all(math.isfinite(v) for v in values):
            raise NonFiniteLoss(f"the training loss became {values[-1]}")
    seconds = time.perf_counter() - start
    mean = float(np.mean(losses)) if losses else float("nan")
    return mean, int(correct) / max(1, n), n, seconds, losses


def fit(model, train_loader, val_loader, *, prepare_train, prepare_eval, optimizer, schedule, loss_fn,
        epochs: int, device, num_classes: int, callbacks=(), tracker=None, precision: str = "fp32",
        max_seconds: float | None = None, progress: bool = False, start_epoch: int = 1,
        history: History | None = None) -> History:
    """Train for ``epochs`` epochs (from ``start_epoch``), validating after each. ``callbacks``
    see every epoch's metrics; one returning True stops the run (its ``reason`` is recorded)."""
    history = history or History()
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and device.type == "cuda" else None
    check_every = 50 if device.type == "cuda" else 1
    deadline = time.perf_counter() + max_seconds if max_seconds else None
    for epoch in range(start_epoch, epochs + 1):
        lr = current_lr(optimizer)
        try:
            train_loss, train_acc, n, seconds, losses = train_epoch(
                model, train_loader, prepare_train, optimizer, schedule, loss_fn, device, precision=precision,
                scaler=scaler, progress=progress, desc=f"epoch {epoch}/{epochs}", deadline=deadline,
                check_every=check_every)
        except NonFiniteLoss as err:
            history.stop_reason = f"stopped at epoch {epoch}: {err}"
            history.failed = True
            log.error("%s", history.stop_reason)
            break
        history.iteration_losses.extend(losses)
        metrics = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "lr": lr,
                   "seconds": seconds, "images_per_s": n / seconds if seconds > 0 else float("nan")}
        if val_loader is not None and len(val_loader.dataset):
            val = evaluate(model, val_loader, prepare_eval, loss_fn, num_classes, device, precision)
            metrics.update(val_loss=val["loss"], val_acc=val["acc"])
        schedule.step_epoch(metrics.get(tracker.monitor) if tracker else metrics.get("val_loss"))
        history.epochs.append(metrics)
        log.info("epoch %d/%d  train loss %.4f acc %.3f  val loss %s acc %s  lr %.3g  %.1f s  %.0f img/s",
                 epoch, epochs, train_loss, train_acc, _f(metrics.get("val_loss"), 4), _f(metrics.get("val_acc"), 3),
                 lr, seconds, metrics["images_per_s"])
        stop = False
        for cb in callbacks:
            if cb.on_epoch_end(epoch, metrics, model):
                stop = True
                history.stop_reason = getattr(cb, "reason", None) or f"stopped by {type(cb).__name__}"
        if stop:
            log.info("%s", history.stop_reason)
            break
        if deadline is not None and time.perf_counter() > deadline:
            history.stop_reason = f"time budget of {max_seconds / 60:g} min reached after epoch {epoch}"
            log.info("%s", history.stop_reason)
            break
    return history


def _f(v, digits):
    return "-" if v is None else f"{v:.{digits}f}"
