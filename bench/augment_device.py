"""Throughput of the device augmentation backend against the Albumentations CPU backend (and
kornia.augmentation, when it is importable), on one batch of small uint8 images.

    python bench/augment_device.py                      # CPU tensors
    python bench/augment_device.py --device cuda        # on the GPU

Each row: images per second for the same spec (default: the "standard" preset at 32 x 32,
batch 512), and the ratio to the Albumentations pipeline run image by image in this process
(one core's worth of loader-worker work, followed by the uint8 -> float normalisation). The
device rows include moving the uint8 batch to the device. Kornia is only a point of comparison
here: augpipe does not depend on it.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from augpipe.augment.cpu import build_train_transform
from augpipe.augment.device import DeviceAugment
from augpipe.augment.spec import AugmentSpec
from augpipe.data.loader import BatchNormalizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device, *, min_time: float, warmup: int = 3) -> float:
    """Seconds per call: the median of repeats, run until ``min_time`` has passed."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def albumentations_fn(spec, size, images_hwc, device):
    t = build_train_transform(spec, size, native=images_hwc.shape[1:3], seed=0)
    norm = BatchNormalizer(spec.normalize.mean, spec.normalize.std, device=device)

    def run():
        out = np.stack([t(image=img)["image"] for img in images_hwc])
        return norm(torch.from_numpy(out).permute(0, 3, 1, 2))

    return run


def kornia_fn(spec, size, batch, device):
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    ops = []
    if spec.crop:
        ops.append(K.RandomResizedCrop((size, size), scale=spec.crop.scale, ratio=spec.crop.ratio, p=spec.crop.p))
    if spec.hflip:
        ops.append(K.RandomHorizontalFlip(p=spec.hflip.p))
    if spec.color_jitter:
        cj = spec.color_jitter
        # kornia's ColorJitter draws one random order per batch (Albumentations: per image)
        ops.append(K.ColorJitter(cj.brightness, cj.contrast, cj.saturation, cj.hue, p=cj.p))
    if spec.erase:
        er = spec.erase
        ops.append(
            K.RandomErasing(
                scale=er.scale,
                ratio=er.ratio,
                value=0.0 if er.fill == "random" else float(np.mean(er.fill)) / 255,
                p=er.p,
            )
        )
    ops.append(K.Normalize(mean=torch.tensor(spec.normalize.mean), std=torch.tensor(spec.normalize.std)))
    pipe = K.AugmentationSequential(*ops).to(device)

    def run():
        with torch.no_grad():
            return pipe(batch.to(device, non_blocking=True).float().div_(255))

    return run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="standard")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--input-size", type=int, default=None, help="side of the input images (default: --size)")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds of timing per row")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = AugmentSpec.preset(args.preset)
    side = args.input_size or args.size
    rng = np.random.default_rng(0)
    images_hwc = rng.integers(0, 256, (args.batch, side, side, 3), dtype=np.uint8)
    # the loader's batch: NCHW as a channels-last view of stacked HWC arrays
    batch = torch.from_numpy(images_hwc).permute(0, 3, 1, 2)
    if device.type == "cuda":
        batch = batch.pin_memory()

    rows: list[tuple[str, float]] = []
    alb = timeit(albumentations_fn(spec, args.size, images_hwc, device), device, min_time=args.min_time)
    rows.append(("albumentations, per image (1 core) + normalise", alb))

    aug = DeviceAugment(spec, args.size, device=device)
    rows.append((f"DeviceAugment ({args.preset})", timeit(lambda: aug(batch), device, min_time=args.min_time)))
    on_dev = batch.to(device).contiguous()
    rows.append(
        ("DeviceAugment, batch already on device, NCHW", timeit(lambda: aug(on_dev), device, min_time=args.min_time))
    )
    for op in spec.active_ops():  # one op at a time (+ normalise)
        one = DeviceAugment(
            AugmentSpec.from_dict({"size": spec.size, op: getattr(spec, op).__dict__}), args.size, device=device
        )
        rows.append((f"  only {op}", timeit(lambda: one(on_dev), device, min_time=args.min_time)))
    none = DeviceAugment(AugmentSpec(), args.size, device=device)
    rows.append(("  only normalise", timeit(lambda: none(on_dev), device, min_time=args.min_time)))

    k = kornia_fn(spec, args.size, batch, device)
    if k is not None:
        rows.append(("kornia.augmentation equivalent", timeit(k, device, min_time=args.min_time)))
    else:
        rows.append(("kornia.augmentation (not installed)", float("nan")))

    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"preset {args.preset}: batch {args.batch} x 3 x {side} x {side} uint8 -> {args.size} x {args.size}; "
        f"device {device} ({where}); torch {torch.__version__}"
    )
    print(f"{'pipeline':50s} {'ms/batch':>10s} {'images/s':>12s} {'vs albu':>8s}")
    for name, sec in rows:
        if sec != sec:
            print(f"{name:50s} {'-':>10s} {'-':>12s} {'-':>8s}")
            continue
        print(f"{name:50s} {sec * 1e3:10.2f} {args.batch / sec:12,.0f} {alb / sec:7.2f}x")


if __name__ == "__main__":
    main()
