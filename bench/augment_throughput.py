"""Throughput of augpipe's CPU training transform against plain Albumentations.

augpipe: an ``AugmentedImages`` dataset (augpipe/data/loader.py) over an ``ImageStore``, with the
pipeline ``build_train_transform`` makes from the 'standard' preset, seeded, indexed item by
item as a loader worker does.
plain:   an ``A.Compose`` of the same four ops with the same parameters (RandomResizedCrop,
HorizontalFlip, ColorJitter, Erasing), called in a plain Python loop on the same uint8 images.

Both run in one process, interleaved in blocks of 100 images whose order alternates, over
several repeats, so that drift in the machine's speed hits both alike. The figure of merit is the median over repeats of the ratio
augpipe / plain images per second; the goal is >= 0.95 (augpipe adds no more than 5%).

    python bench/augment_throughput.py                # 10,000 CIFAR-10 train images if present
    python bench/augment_throughput.py --synthetic    # random 32x32 images
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import albumentations as A
import numpy as np

import augpipe  # noqa: F401  (sets NO_ALBUMENTATIONS_UPDATE before albumentations is imported)
from augpipe.augment.cpu import build_train_transform
from augpipe.augment.spec import AugmentSpec
from augpipe.data.datasets import open_dataset
from augpipe.data.images import ImageStore
from augpipe.data.loader import AugmentedImages
from augpipe.data.sources import ImageSource

CIFAR_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10"
GOAL = 0.95


def load_images(n: int, synthetic: bool, seed: int):
    """(ImageStore of n 32x32 RGB images, labels, description)."""
    train = CIFAR_DIR / "train"
    if not synthetic and train.is_dir():
        src = open_dataset(train)
        # Every k-th image: all classes, no file-order bias, the same images on every run.
        step = max(1, len(src) // n)
        src = src.subset(range(0, step * n, step)[:n])
        store, report = ImageStore.build(src)
        if report.bad or not store.shapes_equal:
            sys.exit(f"{train}: {len(report.bad)} unreadable images or mixed sizes; use --synthetic")
        return store, src.labels, f"CIFAR-10 train, {len(src):,} images from {train}"
    rng = np.random.default_rng(seed)
    arrays = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int64)
    src = ImageSource(
        "synthetic",
        Path("."),
        [str(c) for c in range(10)],
        [str(i) for i in range(n)],
        labels,
        [None] * n,
        arrays=arrays,
    )
    store, _ = ImageStore.build(src)
    return store, labels, f"synthetic, {n:,} random 32x32 images"


def plain_compose(spec: AugmentSpec, size: int, seed: int) -> A.Compose:
    """The same ops with the same parameters, written out by hand."""
    c, j, e = spec.crop, spec.color_jitter, spec.erase
    return A.Compose(
        [
            A.RandomResizedCrop(size=(size, size), scale=tuple(c.scale), ratio=tuple(c.ratio), p=c.p),
            A.HorizontalFlip(p=spec.hflip.p),
            A.ColorJitter(brightness=j.brightness, contrast=j.contrast, saturation=j.saturation, hue=j.hue, p=j.p),
            A.Erasing(scale=tuple(e.scale), ratio=tuple(e.ratio), fill=e.fill, p=e.p),
        ],
        seed=seed,
    )


def run_augpipe(dataset: AugmentedImages, start: int, stop: int) -> float:
    """Seconds to fetch items start..stop of the dataset."""
    t0 = time.perf_counter()
    for i in range(start, stop):
        dataset[i]
    return time.perf_counter() - t0


def run_plain(transform: A.Compose, images: np.ndarray, start: int, stop: int) -> float:
    t0 = time.perf_counter()
    for img in images[start:stop]:
        transform(image=img)["image"]
    return time.perf_counter() - t0


def one_repeat(dataset, plain, images, block: int, augpipe_first: bool) -> tuple[float, float]:
    """Images per second of each over one pass of all images, interleaved block by block: on a
    shared machine a slow second hits both alike instead of one whole pass."""
    ours = theirs = 0.0
    for start in range(0, len(images), block):
        stop = min(start + block, len(images))
        if augpipe_first:
            ours += run_augpipe(dataset, start, stop)
            theirs += run_plain(plain, images, start, stop)
        else:
            theirs += run_plain(plain, images, start, stop)
            ours += run_augpipe(dataset, start, stop)
        augpipe_first = not augpipe_first
    return len(images) / ours, len(images) / theirs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="images per pass (default 10,000)")
    ap.add_argument("--repeats", type=int, default=9, help="repeats, each a pass over all images (default 9)")
    ap.add_argument("--block", type=int, default=100, help="images per interleaved block (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synthetic", action="store_true", help="random images even where CIFAR-10 is present")
    args = ap.parse_args(argv)

    store, labels, what = load_images(args.n, args.synthetic, args.seed)
    images = np.stack([store[i] for i in range(len(store))])  # the same pixels, as a plain array
    size = 32
    spec = AugmentSpec.preset("standard")
    dataset = AugmentedImages(
        store, np.arange(len(store)), labels, build_train_transform(spec, size, native=(32, 32), seed=args.seed)
    )
    plain = plain_compose(spec, size, args.seed)

    # Same output shape and type from both, and a warm-up pass of each (caches, lazy imports).
    a, b = dataset[0][0], plain(image=images[0])["image"]
    assert a.shape == b.shape == (size, size, 3) and a.dtype == b.dtype == np.uint8
    one_repeat(dataset, plain, images[:500], args.block, True)

    print(f"data:    {what}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}, "
        f"albumentations {A.__version__}, numpy {np.__version__}"
    )
    print(
        "ops:     RandomResizedCrop(scale 0.35-1) HorizontalFlip(0.5) ColorJitter(0.2,0.2,0.2,0.05; 0.8) "
        "Erasing(0.02-0.2; 0.25), 32x32 uint8"
    )
    print()
    print(f"{'repeat':>6}  {'augpipe img/s':>14}  {'plain img/s':>12}  {'ratio':>6}")
    rows = []
    for r in range(args.repeats):
        dataset.reseed(args.seed + r)
        plain.set_random_seed(args.seed + r)
        ours, theirs = one_repeat(dataset, plain, images, args.block, augpipe_first=r % 2 == 0)
        rows.append((ours, theirs, ours / theirs))
        print(f"{r + 1:>6}  {ours:>14,.0f}  {theirs:>12,.0f}  {ours / theirs:>6.3f}")
    med = statistics.median(r[2] for r in rows)
    print(
        f"{'median':>6}  {statistics.median(r[0] for r in rows):>14,.0f}  "
        f"{statistics.median(r[1] for r in rows):>12,.0f}  {med:>6.3f}"
    )
    ratios = [r[2] for r in rows]
    print(f"{'range':>6}  {'':>14}  {'':>12}  {min(ratios):.3f}-{max(ratios):.3f}")
    print()
    verdict = "meets" if med >= GOAL else "misses"
    print(f"median ratio augpipe/plain = {med:.3f} ({verdict} the goal of >= {GOAL})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
