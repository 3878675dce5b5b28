#!/usr/bin/env bash
# The augmentation ablation of docs/ablation.md: the ops of docs/ablation/cifar-small.yaml
# (translate 4 px, flip, erasing) each left out and each trained alone, on a small CIFAR-10
# training set (bench/cifar_subset.py --per-class 100: 800 images trained, 200 validated, 2,000
# tested), 3 seeds each, one-cycle rate:
#   long   30 epochs, by which the unaugmented net has long memorised its 800 images (24 runs)
#   short  3 epochs, by which it has not (the regime note; 15 runs)
#   constant  30 epochs at a constant rate, as the first version of the page ran it: the
#          regime where erasing does not pay (15 runs)
# About 12, 1 and 7 minutes on 2 idle CPU cores (docs/lessons/make.sh runs them as its last
# lessons, ablation and ablation_constant).
#   bash docs/ablation.sh [OUT] [long|short|constant ...]   (CIFAR-10 at ../shared/data/cifar10 or $CIFAR10)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-sweeps}
shift || true
budgets=("$@")
[ ${#budgets[@]} -gt 0 ] || budgets=(long short constant)
mkdir -p "$OUT"
data=$OUT/cifar1k.csv
[ -f "$data" ] || python bench/cifar_subset.py --per-class 100 --test-per-class 200 --out "$data"
COMMON=(--plugin cnn --model cnn_small --data "$data" --val 0.2 --label-smoothing 0 --weight-decay 0
        --batch-size 32 --optimizer adam --lr 1e-3 --monitor val_acc
        --aug docs/ablation/cifar-small.yaml --seeds 3 --parallel 2 --out "$OUT")
for budget in "${budgets[@]}"; do
    case $budget in
        long) flags=(--scheduler onecycle --epochs 30 --ablate both) ;;
        short) flags=(--scheduler onecycle --epochs 3 --ablate) ;;
        constant) flags=(--scheduler none --epochs 30 --ablate) ;;
        *) echo "unknown budget $budget (long, short or constant)" >&2; exit 2 ;;
    esac
    name=ablation-$budget
    augpipe --quiet sweep "${COMMON[@]}" "${flags[@]}" --name "$name" >"$OUT/$name.log" 2>&1
    cp "$OUT/$name/ablation.md" "docs/ablation/$name.md"
    cp "$OUT/$name/ablation.png" "docs/ablation/$name.png"
done
