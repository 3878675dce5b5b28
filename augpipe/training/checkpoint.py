"""What a checkpoint holds, and how a resumed run puts every piece of it back.

A checkpoint holds tensors and plain Python values only, so that it loads with
``torch.load(weights_only=True)`` (``augpipe.files.load_checkpoint``): numpy's random state is
stored as a tensor and numbers, never as a pickled object.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from augpipe.errors import DataError

FORMAT = 2
REQUIRED = ("config", "class_names", "image_size", "model", "epoch")


def global_random_states() -> dict:
    """torch's, numpy's, Python's and CUDA's global random streams, as tensors and plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_global_random_states(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def random_states(pipeline) -> dict:
    """Every random stream a run draws from: the global ones, each loader's generator (order and
    augmentation seeds), and the device augmentation's."""
    device_augment = getattr(pipeline, "device_augment", None)
    return {
        **global_random_states(),
        "loaders": {name: getattr(pipeline, name).generator.get_state() for name in ("train", "val", "test")},
        "device_augment": None
        if device_augment is None
        else [device_augment.generator.get_state(), device_augment.host_generator.get_state()],
    }


def restore_random_states(state: dict, pipeline, *, loaders: bool = True) -> None:
    restore_global_random_states(state)
    if loaders:
        for name, generator_state in state["loaders"].items():
            getattr(pipeline, name).generator.set_state(generator_state)
    device_augment = getattr(pipeline, "device_augment", None)
    if device_augment is not None and state.get("device_augment") is not None:
        generator, host = state["device_augment"]
        device_augment.generator.set_state(generator)
        device_augment.host_generator.set_state(host)


def checkpoint_state(
    *,
    epoch,
    model,
    optimizer,
    schedule,
    scaler,
    cfg,
    data,
    image_size,
    history,
    pipeline,
    tracker,
    callbacks,
    train_seconds: float,
    progress=None,
    loggers=(),
    scored=None,
) -> dict:
    """``epoch``: the last finished epoch; ``progress``: the unfinished one, for an interrupted
    run (an ``EpochProgress``), else None."""
    plain_model = getattr(model, "_orig_mod", model)
    return {
        "format": FORMAT,
        "epoch": epoch,
        # "model" is what the run scores (the weight average with --ema), which evaluate, predict
        # and export load; the weights being trained are "train_model" then, for --resume.
        "model": (scored if scored is not None else plain_model).state_dict(),
        "train_model": plain_model.state_dict() if scored is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": schedule.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "config": cfg.to_dict(),
        "class_names": list(data.class_names),
        "image_size": int(image_size),
        "split": {
            "key_column": data.source.key_column,
            "keys": list(data.source.keys),
            "labels": data.source.labels.tolist(),
            "splits": [str(s) for s in data.assignment.tolist()],
            "seed": int(data.seed),
            "val": float(data.val),
            "test": float(data.test),
            "fingerprint": data.source.fingerprint(),
            "pixels": getattr(data, "pixels", ""),
        },
        "history": {"epochs": list(history.epochs), "iteration_losses": list(history.iteration_losses)},
        "train_seconds": float(train_seconds),
        "early_stopping": tracker.state_dict(epoch if progress is None else None),
        "callbacks": {name: cb.state_dict() for name, cb in callbacks.items()},
        "loggers": {lg.name: lg.state_dict() for lg in loggers},
        "in_epoch": progress.state_dict() if progress is not None else None,
        "rng": random_states(pipeline),
    }


def check_checkpoint(state: dict, path) -> dict:
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise DataError(f"{path}: not an augpipe checkpoint (no {', '.join(missing)})")
    return state


def check_resumable(state: dict, path) -> dict:
    check_checkpoint(state, path)
    if state.get("format") != FORMAT or "rng" not in state:
        raise DataError(
            f"{path}: written by an older augpipe that did not save what resuming needs; start the run again"
        )
    return state
