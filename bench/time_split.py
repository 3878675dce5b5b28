"""What a training step's time goes to: data, augmentation, forward, backward, optimizer step, averaging, validation.

    python bench/time_split.py                              # --recipe cifar10-94, 5,000 images, 1 epoch
    python bench/time_split.py --limit 512 --steps 6        # a quick look
    python bench/time_split.py --recipe none --plugin cnn --data sample_data/shapes --json /tmp/split.json

The model, optimizer, schedule, loaders, augmentation and weight average are the objects
``augpipe train`` builds (``Run.prepare``); the step below is ``train_epoch``'s, cut into parts
with a clock read between them (after ``torch.cuda.synchronize()`` on a GPU). The same steps
are then run again through ``train_epoch`` itself, without timers: the ratio of the two says
what the timers cost and that the timed step is the loop's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CIFAR = Path(os.environ.get("CIFAR10", ROOT.parent / "shared" / "data" / "cifar10"))


def first_per_class(items: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` of ``items`` taken class by class in turn: CIFAR's folders are sorted by
    class, so a plain first 5,000 would be airplanes only."""
    lab = labels[items]
    rank = np.zeros(len(items), dtype=np.int64)
    for c in np.unique(lab):
        rank[lab == c] = np.arange(int((lab == c).sum()))
    return np.sort(items[np.lexsort((items, rank))[:n]])


def limiting(load, limit: int | None, steps_needed):
    """``_load_data_once`` that keeps the first ``limit`` training images, so that Run.prepare
    builds its loaders, whitening fit and schedule from them as from a data set of that size."""

    def load_data_once(cfg, *rest):
        path, data = load(cfg, *rest)
        train, val = data.indices("train"), data.indices("val")
        if limit and len(train) > limit:
            labels = data.source.labels
            # validation shrinks alike: its share of an epoch stays the full data set's
            keep = np.r_[
                first_per_class(train, labels, limit),
                first_per_class(val, labels, round(len(val) * limit / len(train))),
            ]
            data.assignment[np.setdiff1d(np.r_[train, val], keep)] = "unused"
        # the schedule must cover every step taken here (OneCycleLR raises past its end)
        per_epoch = max(1, math.ceil(len(data.indices("train")) / cfg.batch_size))
        cfg.epochs = max(cfg.epochs, math.ceil(steps_needed(per_epoch) / per_epoch) + 1)
        return path, data

    return load_data_once


class TimedTransform:
    """The loader's Albumentations pipeline with a clock around each call: in-process loading
    runs it inside ``next(batches)``, which is otherwise one opaque wait."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def __getattr__(self, name):  # set_random_state (the loader's reseed), transforms
        return getattr(self.inner, name)

    def __call__(self, **kw):
        start = time.perf_counter()  # host work: no device sync needed
        out = self.inner(**kw)
        self.seconds += time.perf_counter() - start
        return out


def plan_of(args, per_epoch: int) -> list[tuple[int, int, bool]]:
    """(epoch, steps, validate after) chunks: whole epochs, or --steps across as many as needed.
    They are a run's first epochs: a weight average that starts later (--ema-start) copies the
    weights at every step here, as it does in a run before it starts."""
    if args.steps is None:
        return [(e, per_epoch, True) for e in range(1, args.epochs + 1)]
    chunks = [
        (e + 1, min(per_epoch, args.steps - e * per_epoch), False) for e in range(math.ceil(args.steps / per_epoch))
    ]
    chunks[-1] = (*chunks[-1][:2], True)
    return chunks


def set_epoch(run, epoch: int) -> None:
    from augpipe.training.loop import unwrap

    run.pipeline.train.set_epoch(epoch)  # what fit does before each epoch
    if callable(getattr(unwrap(run.train_model), "set_epoch", None)):
        unwrap(run.train_model).set_epoch(epoch)


def timed_pass(run, epoch: int, steps: int, val, parts: dict, clock, loss_fn, mixer, host) -> int:
    """``train_epoch``'s step, part by part, for ``steps`` steps of ``epoch`` (then ``val()``, the
    validation, when given); returns the images trained on."""
    from augpipe.training.loop import autocast_for

    cfg, dev, model, opt, pipe = run.cfg, run.device, run.train_model, run.optimizer, run.pipeline
    prep_name = "device augmentation + normalise" if pipe.aug_on_device else "normalise (uint8 -> float)"
    callbacks = [run.average] if run.average is not None else []

    def lap(name, t, less=0.0):
        now = clock()
        parts[name] = parts.get(name, 0.0) + now - t - less
        return now

    set_epoch(run, epoch)
    model.train()
    correct = torch.zeros((), dtype=torch.float64, device=dev)
    pending, n = [], 0
    t = clock()
    batches = iter(pipe.train)  # starting the pass (forking workers) is data time too
    for step in range(steps):
        aug = host.seconds if host else 0.0
        images, labels = next(batches)
        # in-process loading: the augmentation is inside the wait; shown apart
        aug = host.seconds - aug if host else 0.0
        t = lap("data (loader wait)", t, less=aug)
        if host:
            parts["host augmentation (main process)"] = parts.get("host augmentation (main process)", 0.0) + aug
        x = pipe.prepare_train(images)
        y = labels.to(dev, non_blocking=True)
        t = lap(prep_name, t)
        targets = y
        if mixer is not None:
            x, targets, _ = mixer(x, y, epoch=epoch, step=step)
            t = lap("batch mixing (MixUp / CutMix)", t)
        with autocast_for(dev, cfg.precision):
            logits = model(x)
            loss = loss_fn(logits.float(), targets)
        t = lap("forward (+ loss)", t)
        opt.zero_grad(set_to_none=True)
        (run.scaler.scale(loss) if run.scaler else loss).backward()
        t = lap("backward", t)
        if run.scaler:
            run.scaler.step(opt)
            run.scaler.update()
        else:
            opt.step()
        run.schedule.step_iteration()
        t = lap("optimizer step (+ lr schedule)", t)
        if mixer is not None:
            from augpipe.augment.mixing import mixed_correct

            correct += mixed_correct(logits.detach(), targets)
        else:
            correct += (logits.detach().argmax(1) == y).sum()
        pending.append(loss.detach())
        if len(pending) >= (50 if dev.type == "cuda" else 1):  # train_epoch fetches and checks them as often
            all(math.isfinite(v) for v in torch.stack(pending).float().cpu().tolist())
            pending.clear()
        n += len(y)
        t = lap("loss and accuracy bookkeeping", t)
        if callbacks:
            for cb in callbacks:
                cb.on_train_batch_end(epoch, step + 1, loss)
            t = lap("weight averaging (EMA / Lookahead)", t)
    float(correct)
    t = lap("loss and accuracy bookkeeping", t)
    if val is not None:
        run.schedule.step_epoch(val()["loss"])  # what fit does after each epoch
        lap("validation", t)
    return n


class Count:
    def on_train_batch_end(self, epoch, step, loss):
        self.n += 1


def plain_pass(run, epoch: int, steps: int, loss_fn, mixer, clock) -> float:
    """The same steps through augpipe's ``train_epoch``, with a clock around the pass only."""
    from augpipe.training.loop import EpochProgress, TrainingControl, train_epoch

    count = Count()
    count.n = 0
    control = TrainingControl(
        stop_requested=lambda: count.n >= steps,
        batch_callbacks=([run.average] if run.average is not None else []) + [count],
    )
    set_epoch(run, epoch)
    start = clock()
    train_epoch(
        run.train_model,
        run.pipeline.train,
        run.pipeline.prepare_train,
        run.optimizer,
        run.schedule,
        loss_fn,
        run.device,
        precision=run.cfg.precision,
        scaler=run.scaler,
        state=EpochProgress(epoch=epoch),
        check_every=50 if run.device.type == "cuda" else 1,
        control=control,
        mixer=mixer,
    )
    return clock() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="cifar10-94", help="'none' for none")
    ap.add_argument("--plugin", help="a trainer instead of the recipe")
    ap.add_argument("--model")
    ap.add_argument("--data", help=f"default: {CIFAR} ($CIFAR10)")
    ap.add_argument("--limit", type=int, default=5000, help="the first N training images, class by class (0: all)")
    how_long = ap.add_mutually_exclusive_group()
    how_long.add_argument("--steps", type=int, help="timed training steps (validation counted pro rata)")
    how_long.add_argument("--epochs", type=int, default=1, help="timed epochs, each with its validation")
    ap.add_argument("--warmup", type=int, default=3, help="training steps before the clock starts")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--optimizer", help="default: the recipe's (muon: the Newton-Schulz step's cost shows)")
    ap.add_argument("--momentum", type=float)
    ap.add_argument("--threads", type=int, help="torch threads (default: augpipe's choice)")
    ap.add_argument("--workers", type=int, help="loader workers (default: augpipe's choice)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", choices=("on", "off"), help="torch.compile (default: the recipe's)")
    ap.add_argument(
        "--cold", action="store_true", help="leave the decoded-image cache empty, as a first epoch finds it"
    )
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    if (args.steps is not None and args.steps < 1) or args.epochs < 1 or args.warmup < 0:
        ap.error("--steps and --epochs must be at least 1, --warmup at least 0")

    import augpipe.training.run as run_module
    from augpipe.augment.mixing import BatchMixer
    from augpipe.plugin_manager import get_plugins
    from augpipe.training.loop import evaluate
    from augpipe.training.settings import build_config

    data = args.data
    if data is None:
        if not CIFAR.is_dir():
            sys.exit(f"{CIFAR} is absent: give --data (or $CIFAR10)")
        data = str(CIFAR)
    recipe = None if args.plugin or args.recipe == "none" else args.recipe
    flags = dict(recipe=recipe, plugin=args.plugin, model=args.model, data=data, batch_size=args.batch_size)
    flags.update(threads=args.threads, workers=args.workers, device=args.device)
    flags.update(optimizer=args.optimizer, momentum=args.momentum)
    flags.update(compile=None if args.compile is None else args.compile == "on")
    flags = {k: v for k, v in flags.items() if v is not None}
    plugins = get_plugins()
    cfg = build_config(plugins=plugins, **flags)

    def steps_needed(per_epoch):
        counted = args.steps if args.steps is not None else args.epochs * per_epoch
        return args.warmup + 2 * counted

    # Run.prepare is what `augpipe train` builds before its first step; nothing is written.
    run_module._load_data_once = limiting(run_module._load_data_once, args.limit, steps_needed)
    run = run_module.Run(cfg, plugins, run_dir=None, saved=None, progress=False, signals=None)
    run.prepare()
    dev, pipe = run.device, run.pipeline
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

    def clock():
        sync()
        return time.perf_counter()

    n_train, n_val = len(run.data.indices("train")), len(run.data.indices("val"))
    per_epoch = len(pipe.train)
    plan = plan_of(args, per_epoch)
    steps = sum(s for _, s, _ in plan)
    if not args.cold:  # later epochs find every image decoded; the first decodes as it reads
        for i in np.r_[run.data.indices("train"), run.data.indices("val")]:
            run.data.store[int(i)]
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    mixer = BatchMixer.from_spec(run.spec, run.num_classes, seed=cfg.seed, rank=0)
    scored = run.scored if run.average is not None else run.train_model

    def validate(loader=pipe.val):
        return evaluate(scored, loader, pipe.prepare_eval, loss_fn, run.num_classes, dev, cfg.precision, cfg.tta)

    print(
        f"{cfg.recipe or '-'}: {cfg.plugin}/{cfg.model}, batch {cfg.batch_size}, {cfg.precision}, "
        f"channels-last {cfg.channels_last}, device {dev}, {run.threads} thread(s), {pipe.workers} loader worker(s), "
        f"augmentation on {'the device' if pipe.aug_on_device else 'the CPU'}, EMA {cfg.ema or 'off'}, tta {cfg.tta}\n"
        f"data: {data}, {n_train} training and {n_val} validation images, {per_epoch} steps an epoch; "
        f"{args.warmup} warm-up steps, then {steps} timed and the same {steps} untimed, in turns",
        flush=True,
    )
    parts: dict[str, float] = {}
    if args.warmup:  # allocation, oneDNN's kernel choice, compilation
        timed_pass(run, 1, min(args.warmup, per_epoch), None, {}, clock, loss_fn, mixer, None)
        validate(list(itertools.islice(pipe.val, 1)))
    dataset = getattr(pipe.train, "dataset", None)
    wrap = pipe.workers == 0 and getattr(dataset, "transform", None) is not None
    host = TimedTransform(dataset.transform) if wrap else None
    n_images, plain = 0, 0.0
    for k, (epoch, n, val) in enumerate(plan):
        # timed and plain passes take turns going first: a slow moment of a shared machine hits both
        for timed in (True, False) if k % 2 == 0 else (False, True):
            if not timed:
                plain += plain_pass(run, epoch, n, loss_fn, mixer, clock)
                continue
            if wrap:
                dataset.transform = host
            n_images += timed_pass(run, epoch, n, validate if val else None, parts, clock, loss_fn, mixer, host)
            if wrap:
                dataset.transform = host.inner
    passes = sum(v for _, _, v in plan)
    # a --steps run validates once: counted for the share of an epoch that its steps make
    factor = steps / (per_epoch * passes)
    parts["validation"] = parts.get("validation", 0.0) * factor
    train_seconds = sum(v for k, v in parts.items() if k != "validation")

    total = sum(parts.values())
    print(f"\n{'part':<38} {'seconds':>9} {'share':>7} {'ms/step':>9}")
    for name, sec in parts.items():
        print(f"{name:<38} {sec:9.3f} {sec / total:7.1%} {1000 * sec / steps:9.2f}")
    print(f"{'total':<38} {total:9.3f} {1:7.1%} {1000 * total / steps:9.2f}")
    if factor != 1:
        print(f"(validation: {passes} pass(es), counted x {factor:.3g}: {steps} steps of an epoch of {per_epoch})")
    if pipe.workers:
        print(f"(augmentation runs in {pipe.workers} loader worker(s), beside the step: 'data' is the wait for them)")
    print(f"images/s overall: {n_images / total:.1f} ({n_images} images in {steps} steps, validation included)")
    print(
        f"timers: the {steps} timed steps took {train_seconds:.3f} s, the same steps through augpipe's "
        f"train_epoch without timers {plain:.3f} s: ratio {train_seconds / plain:.3f}"
    )
    if args.json:
        figures = {
            "settings": flags,
            "resolved": {
                "plugin": cfg.plugin,
                "model": cfg.model,
                "batch_size": cfg.batch_size,
                "threads": run.threads,
            },
            "workers": pipe.workers,
            "aug_on_device": pipe.aug_on_device,
            "train_images": n_train,
            "steps": steps,
            "images": n_images,
            "validation_factor": factor,
            "parts": {k: {"seconds": v, "share": v / total, "ms_per_step": 1000 * v / steps} for k, v in parts.items()},
            "total_seconds": total,
            "images_per_s": n_images / total,
            "timed_train_seconds": train_seconds,
            "plain_train_seconds": plain,
            "timed_over_plain": train_seconds / plain,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
