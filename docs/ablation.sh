#!/usr/bin/env bash
# The augmentation ablation of docs/ablation.md: the ops of docs/ablation/cifar-small.yaml
# (translate 4 px, flip, erasing) removed one at a time, on a small CIFAR-10 training set
# (bench/cifar_subset.py --per-class 100: 800 images trained, 200 validated, 2,000 tested), 3 seeds
# each, at two budgets: 30 epochs, by which the unaugmented net has long memorised its 800 images,
# and 3 epochs, by which it has not. About 12 minutes on 2 CPU cores (docs/lessons/make.sh runs it
# as its last lesson).
#   bash docs/ablation.sh [OUT]        (CIFAR-10 expected at ../shared/data/cifar10 or $CIFAR10)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-sweeps}
mkdir -p "$OUT"
data=$OUT/cifar1k.csv
[ -f "$data" ] || python bench/cifar_subset.py --per-class 100 --test-per-class 200 --out "$data"
# The lessons' small conv net, no other regulariser, a constant rate; each run tested with the
# weights of its best validation accuracy. 2 runs at once, one core each.
COMMON=(--plugin cnn --model cnn_small --data "$data" --val 0.2 --label-smoothing 0 --weight-decay 0
        --batch-size 32 --optimizer adam --lr 1e-3 --scheduler none --monitor val_acc
        --aug docs/ablation/cifar-small.yaml --ablate --seeds 3 --parallel 2 --out "$OUT")
for budget in long:30 short:3; do
    name=ablation-${budget%%:*}
    augpipe --quiet sweep "${COMMON[@]}" --epochs "${budget##*:}" --name "$name" >"$OUT/$name.log" 2>&1
    cp "$OUT/$name/ablation.md" "docs/ablation/$name.md"
    cp "$OUT/$name/ablation.png" "docs/ablation/$name.png"
done
