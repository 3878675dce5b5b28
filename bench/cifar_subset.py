"""A CSV manifest of a class-balanced CIFAR-10 subset: N training images per class (the first
N of each class folder) and the full test set, for short experiments such as the augmentation
ablation in docs/ablation.md. The manifest points into ../shared; nothing is copied.

    python bench/cifar_subset.py --per-class 1000 --out /tmp/cifar10-10k.csv
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
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if not CIFAR.is_dir():
        raise SystemExit(f"{CIFAR} is absent: this needs CIFAR-10")
    rows = []
    for split, limit in (("train", args.per_class), ("test", None)):
        for cls in sorted(p.name for p in (CIFAR / split).iterdir() if p.is_dir()):
            files = sorted((CIFAR / split / cls).iterdir())[:limit]
            rows += [(str(f.resolve()), cls, split) for f in files]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    print(f"wrote {args.out}: {sum(r[2] == 'train' for r in rows)} training, {sum(r[2] == 'test' for r in rows)} test images")


if __name__ == "__main__":
    main()
