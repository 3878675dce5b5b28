"""Time to accuracy on CIFAR-10: train a recipe and score the full test set (10,000 images)
after every epoch, against the training time spent so far (scoring time not counted).

    python bench/time_to_accuracy.py                         # --recipe cifar10-fast
    python bench/time_to_accuracy.py --recipe cifar10-fast --epochs 6
    python bench/time_to_accuracy.py --plugin resnet --model resnet20 --epochs 10

Prints a row per epoch (training minutes, test accuracy), the accuracy reached within 5, 10 and
15 minutes, and the run's peak memory (RSS, with its loader workers).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CIFAR = Path(os.environ.get("CIFAR10", ROOT.parent / "shared" / "data" / "cifar10"))


class TestScore:
    """An augpipe callback: the test accuracy of the model after each epoch."""

    def __init__(
        self, images, labels, spec, precision: str, target: float | None = None, batch: int = 500, tta: str = "none"
    ):
        import torch

        self.x = torch.from_numpy(images).permute(0, 3, 1, 2)
        self.y = torch.from_numpy(labels)
        self.spec, self.precision, self.batch, self.target, self.tta = spec, precision, batch, target, tta
        self.rows, self.train_seconds, self.reason = [], 0.0, None

    def on_epoch_end(self, epoch, metrics, model):
        import torch

        from augpipe.data.loader import BatchNormalizer
        from augpipe.training.loop import autocast_for
        from augpipe.training.tta import tta_logits

        self.train_seconds += metrics["seconds"]
        self.epoch_seconds = getattr(self, "epoch_seconds", []) + [metrics["seconds"]]
        device = next(model.parameters()).device
        normalize = BatchNormalizer(self.spec.normalize.mean, self.spec.normalize.std, device, channels_last=True)
        model.eval()
        correct = 0
        with torch.no_grad(), autocast_for(device, self.precision):
            for i in range(0, len(self.y), self.batch):
                logits = tta_logits(model, normalize(self.x[i : i + self.batch]), self.tta)
                correct += int((logits.argmax(1).cpu() == self.y[i : i + self.batch]).sum())
        model.train()
        acc = correct / len(self.y)
        self.rows.append((epoch, self.train_seconds / 60, acc))
        print(f"epoch {epoch:3d}  {self.train_seconds / 60:6.2f} min  test accuracy {acc:.4f}", flush=True)
        if self.target is not None and acc >= self.target:
            self.reason = f"reached {self.target:.2%} test accuracy after {self.train_seconds:.1f} s of training"
            print(self.reason, flush=True)
            return True
        return False


def main() -> None:
    import augpipe
    from augpipe.augment.spec import AugmentSpec
    from augpipe.data.datasets import open_dataset
    from augpipe.data.images import ImageStore
    from augpipe.plugin_manager import get_plugins
    from augpipe.training.settings import build_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="cifar10-fast")
    ap.add_argument("--plugin")
    ap.add_argument("--model")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--optimizer", help="default: the recipe's (muon, nesterov, ...)")
    ap.add_argument("--momentum", type=float)
    ap.add_argument("--min-lr", type=float, help="the schedule's last rate (default: the recipe's)")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--low-res-size", type=int, help="progressive resizing: the first epochs at this side")
    ap.add_argument("--low-res-epochs", type=int, help="how many epochs at --low-res-size")
    ap.add_argument("--workers", type=int)
    ap.add_argument("--precision")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--tta", help="test-time augmentation of the scores (default: the recipe's)")
    ap.add_argument("--data-on-device", help="auto, on or off (default: augpipe's)")
    ap.add_argument("--compile-mode", help="torch.compile's mode (default: the recipe's)")
    ap.add_argument(
        "--compile", type=lambda v: v not in ("off", "0", "false"), help="on or off (default: the recipe's)"
    )
    ap.add_argument("--device")
    ap.add_argument("--target", type=float, help="stop once the test accuracy reaches this")
    ap.add_argument("--keep", type=Path, help="keep the run directory here (default: a temporary one, deleted)")
    args = ap.parse_args()
    target = args.target
    if not CIFAR.is_dir():
        sys.exit(f"{CIFAR} is absent: this benchmark needs CIFAR-10")
    flags = {k: v for k, v in vars(args).items() if v is not None and k not in ("target", "keep")}
    if args.plugin:
        flags.pop("recipe", None)
    cfg = build_config(data=str(CIFAR), **flags)
    spec = AugmentSpec.load(cfg.aug)
    test_source = open_dataset(CIFAR / "test")
    store, _ = ImageStore.build(test_source)
    scorer = TestScore(
        np.stack([store[i] for i in range(len(store))]),
        test_source.labels.copy(),
        spec,
        cfg.precision,
        target,
        tta=cfg.tta,
    )
    plugins = get_plugins()

    class Register:
        @augpipe.hookimpl
        def augpipe_register_callbacks(self, register):
            register("bench-test-score", lambda run_dir, config: scorer)

    plugins.register(Register(), name="bench-time-to-accuracy")
    with tempfile.TemporaryDirectory() as out:
        if args.keep is not None:
            out, name = str(args.keep.parent), args.keep.name
        else:
            name = "tta"
        result = augpipe.train(cfg, out=out, name=name, callbacks=["bench-test-score"], progress=False)
    s = result.summary
    print(
        f"\nrecipe {args.recipe if not args.plugin else '-'}: {cfg.plugin}/{cfg.model}, {cfg.epochs} epochs, "
        f"batch {cfg.batch_size}, {cfg.precision}, seed {cfg.seed}, tta {cfg.tta}; final test accuracy (best "
        f"weights) {s.get('test_acc', 0):.4f}; training {scorer.train_seconds / 60:.2f} min"
    )
    for budget in (5, 10, 15):
        reached = [acc for _, minutes, acc in scorer.rows if minutes <= budget]
        print(f"within {budget:2d} min: {max(reached) if reached else float('nan'):.4f}")
    sec = getattr(scorer, "epoch_seconds", [])
    if len(sec) > 1:
        # epoch 1 pays for warm-up (compilation, cuDNN's kernel choice): counted as a later epoch's
        steady = sum(sec[1:]) + float(np.median(sec[1:]))
        print(
            f"training {sum(sec):.2f} s: epoch 1 {sec[0]:.2f} s, epochs 2-{len(sec)} {sum(sec[1:]):.2f} s; "
            f"without warm-up {steady:.2f} s (epoch 1 at the median later epoch's time), warm-up "
            f"{sec[0] - float(np.median(sec[1:])):.2f} s"
        )
    if s.get("peak_device_memory_mb") is not None:
        print(f"peak device memory: {s['peak_device_memory_mb']:.0f} MB; data on the device: {s.get('data_on_device')}")
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"peak RSS: {peak_self:.0f} MB (this process, which also holds the test set), "
        f"{peak_children:.0f} MB (largest child process)"
    )


if __name__ == "__main__":
    main()
