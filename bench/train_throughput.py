"""Training throughput: ``augpipe train`` epoch images/s against (a) the compute-only bound, the
same model's forward, backward and optimizer step on ready tensors, and (b) a minimal
hand-written PyTorch + Albumentations loop, all measured in one run on one machine.

    python bench/train_throughput.py                      # CIFAR-10 from ../shared, 1 epoch
    python bench/train_throughput.py --limit 10000        # a 10,000-image subset (quicker)
    python bench/train_throughput.py --recipe cifar10-fast     # the CPU time-to-accuracy recipe
    python bench/train_throughput.py --device cuda --recipe cifar10-94-gpu --epochs 3 --skip-handwritten
        # a GPU: the step overhead of augpipe's loop (data on the device) against a bare loop

Prints images/s for each and the ratios augpipe / bound (goal >= 0.90) and augpipe /
hand-written (goal >= 1.0).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10"


def load_images(limit: int | None, seed: int):
    """CIFAR-10 train images as one uint8 NHWC array (or random images without ../shared)."""
    from augpipe.data.datasets import open_dataset
    from augpipe.data.images import ImageStore

    if CIFAR.is_dir():
        source = open_dataset(CIFAR / "train")
        if limit:
            rng = np.random.default_rng(seed)
            source = source.subset(np.sort(rng.choice(len(source), size=min(limit, len(source)), replace=False)))
        store, _ = ImageStore.build(source)
        return np.stack([store[i] for i in range(len(store))]), source.labels.copy(), "CIFAR-10 train"
    n = limit or 10000
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n), "synthetic"


def augpipe_epoch(npz: Path, args) -> tuple[float, dict]:
    import augpipe

    with tempfile.TemporaryDirectory() as out:
        result = augpipe.train(
            data=str(npz),
            epochs=args.epochs,
            val=0.0001,
            test=0.0001,
            out=out,
            name="bench",
            seed=args.seed,
            workers=args.workers,
            threads=args.threads,
            scheduler="none",
            progress=False,
            **settings(args),
        )
        # the first epoch pays for warm-up (cuDNN's choice of kernels, compilation): the best
        # later epoch is the loop's steady rate
        rates = [e["images_per_s"] for e in result.history.epochs]
        return max(rates[1:] or rates), result.summary


def model_and_optimizer(args, num_classes: int):
    """The model, optimizer and loss as augpipe builds them, in augpipe's memory format, and the
    autocast context of its precision: the baselines differ from augpipe in the data path only."""
    import torch

    from augpipe.config import TrainConfig
    from augpipe.plugin_manager import get_plugins
    from augpipe.training.loop import autocast_for
    from augpipe.training.parts import build_model
    from augpipe.training.settings import build_config

    plugins = get_plugins()
    cfg: TrainConfig = build_config(**settings(args))
    model = build_model(plugins, cfg, num_classes, 32)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(args.device, memory_format=fmt)
    opt = plugins.optimizers.get(cfg.optimizer)(
        model, lr=cfg.resolved_lr, weight_decay=cfg.weight_decay, momentum=cfg.resolved_momentum
    )
    loss = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    device = torch.device(args.device)
    return model, opt, loss, fmt, lambda: autocast_for(device, cfg.precision)


def resolved(args):
    from augpipe.training.settings import build_config

    return build_config(**settings(args))


def settings(args) -> dict:
    out = {
        "recipe": args.recipe,
        "plugin": args.plugin,
        "model": args.model,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "device": args.device,
        "data_on_device": args.data_on_device,
        "compile": None if args.compile is None else args.compile != "off",
        "compile_mode": None if args.compile in (None, "on", "off") else args.compile,
    }
    return {k: v for k, v in out.items() if v is not None}


def compute_bound(images, labels, args, iterations: int) -> float:
    """Forward, backward and step on tensors that are already normalised floats in memory."""
    import torch

    torch.set_num_threads(args.threads or os.cpu_count())
    model, opt, loss_fn, fmt, autocast = model_and_optimizer(args, int(labels.max()) + 1)
    model.train()
    b = resolved(args).batch_size
    x = torch.from_numpy(images[: b * 4]).permute(0, 3, 1, 2).float().div(255).sub(0.45).div(0.25)
    x = x.to(args.device).contiguous(memory_format=fmt)
    y = torch.from_numpy(labels[: b * 4]).long().to(args.device)
    batches = [(x[i * b : (i + 1) * b], y[i * b : (i + 1) * b]) for i in range(4)]

    def step(xb, yb):
        with autocast():
            loss = loss_fn(model(xb).float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for i in range(3):  # warm-up
        step(*batches[i % 4])
    sync()
    start = time.perf_counter()
    for i in range(iterations):
        step(*batches[i % 4])
    sync()
    return iterations * b / (time.perf_counter() - start)


def handwritten_loop(images, labels, args) -> float:
    """What a user writes from the PyTorch and Albumentations tutorials: a Dataset applying an
    Albumentations Compose (with Normalize and ToTensorV2) in DataLoader workers."""
    import albumentations as A
    import torch
    from albumentations.pytorch import ToTensorV2

    torch.set_num_threads(args.threads or os.cpu_count())
    transform = A.Compose(
        [
            A.RandomResizedCrop(size=(32, 32), scale=(0.35, 1.0)),
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(0.2, 0.2, 0.2, 0.05, p=0.8),
            A.Erasing(scale=(0.02, 0.2), p=0.25),
            A.Normalize(),
            ToTensorV2(),
        ]
    )

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(image=images[i])["image"], int(labels[i])

    model, opt, loss_fn, fmt, autocast = model_and_optimizer(args, int(labels.max()) + 1)
    loader = torch.utils.data.DataLoader(
        Images(), batch_size=resolved(args).batch_size, shuffle=True, num_workers=args.handwritten_workers
    )
    model.train()
    start = time.perf_counter()
    n = 0
    for x, y in loader:
        with autocast():
            loss = loss_fn(model(x.contiguous(memory_format=fmt)).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=None)
    ap.add_argument("--plugin", default=None, help="default: resnet, or the recipe's")
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--precision", default=None)
    ap.add_argument("--limit", type=int, default=None, help="train on a random subset of this many images")
    ap.add_argument("--workers", type=int, default=None, help="augpipe loader workers (default: augpipe's choice)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: augpipe's choice)")
    ap.add_argument("--handwritten-workers", type=int, default=2)
    ap.add_argument("--bound-iterations", type=int, default=60)
    ap.add_argument("--skip-handwritten", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--epochs", type=int, default=1, help="augpipe's epochs; the best after the first is reported")
    ap.add_argument("--data-on-device", default=None, help="auto, on or off (default: augpipe's)")
    ap.add_argument(
        "--compile",
        default=None,
        help="off, on, or a torch.compile mode (reduce-overhead, max-autotune-no-cudagraphs, ...); default: the recipe's",
    )
    args = ap.parse_args()

    images, labels, what = load_images(args.limit, args.seed)
    print(
        f"data: {what}, {len(images)} images; settings {settings(args) or '(defaults)'}; {os.cpu_count()} cores",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "train.npz"
        np.savez(npz, x=images, y=labels)
        ours, summary = augpipe_epoch(npz, args)
    print(f"augpipe train (1 epoch): {ours:8.1f} images/s", flush=True)
    bound = compute_bound(images, labels, args, args.bound_iterations)
    print(f"compute-only bound:      {bound:8.1f} images/s", flush=True)
    rows = [("augpipe / compute-only bound", ours / bound, 0.90)]
    if not args.skip_handwritten:
        hand = handwritten_loop(images, labels, args)
        print(f"hand-written loop:       {hand:8.1f} images/s ({args.handwritten_workers} workers)", flush=True)
        rows.append(("augpipe / hand-written loop", ours / hand, 1.0))
    for name, ratio, goal in rows:
        print(f"{name:<30} {ratio:6.3f}   goal >= {goal:.2f}: {'met' if ratio >= goal else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
