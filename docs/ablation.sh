#!/usr/bin/env bash
# The CIFAR-10 augmentation ablation of docs/ablation.md: cifar-modern's ops removed one at a
# time, and the standard preset at the same budget, on a 10,000-image class-balanced subset of
# CIFAR-10 (scored on the full test set), 2 seeds each. About 25 minutes on 2 CPU cores.
#   bash docs/ablation.sh [OUT]        (CIFAR-10 expected at ../shared/data/cifar10 or $CIFAR10)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-sweeps}
python bench/cifar_subset.py --per-class 1000 --out "$OUT/cifar10-10k.csv"
# The fast-CIFAR trainer at a short budget: 3 epochs of 9,800 images, augmentation in the main
# process (TrivialAugment runs only there), the last epoch's weights tested, no TTA.
COMMON=(--recipe cifar10-94 --data "$OUT/cifar10-10k.csv" --epochs 3 --tta none --no-restore-best
        --aug-device cpu --seeds 2 --out "$OUT")
time augpipe --quiet sweep "${COMMON[@]}" --aug cifar-modern --ablate --name cifar10-ablation
time augpipe --quiet sweep "${COMMON[@]}" --aug standard --name cifar10-standard
