"""A CSV manifest of a class-balanced CIFAR-10 subset: N training images per class (the first
N of each class folder) and the test set (all of it, or the first M per class), for short
experiments such as the augmentation ablation in docs/ablation.md and the lessons of
docs/lessons.md. The manifest points into ../shared; nothing is copied.

    python bench/cifar_subset.py --per-class 1000 --out /tmp/cifar10-10k.csv
    python bench/cifar_subset.py --per-class 200 --test-per-class 200 --out /tmp/cifar10-2k.csv
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CIFAR = Path(os.environ.get("CIFAR10", ROOT.parent / "shared" / "data" / "cifar10"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=1000)
    # Scoring the whole 10,000-image test set can cost more than a small run's training.
    ap.add_argument("--test-per-class", type=int, default=None, help="default: the whole test set")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    for flag, value in (("--per-class", args.per_class), ("--test-per-class", args.test_per_class)):
        if value is not None and value < 1:
            ap.error(f"{flag} must be at least 1, got {value}")
    if not CIFAR.is_dir():
        raise SystemExit(f"{CIFAR} is absent: this needs CIFAR-10")
    rows = []
    for split, limit in (("train", args.per_class), ("test", args.test_per_class)):
        for cls in sorted(p.name for p in (CIFAR / split).iterdir() if p.is_dir()):
            files = sorted((CIFAR / split / cls).iterdir())[:limit]
            rows += [(str(f.resolve()), cls, split) for f in files]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    print(
        f"wrote {args.out}: {sum(r[2] == 'train' for r in rows)} training, {sum(r[2] == 'test' for r in rows)} test images"
    )


if __name__ == "__main__":
    main()
