#!/usr/bin/env bash
# Remakes every table and picture of docs/lessons.md from real runs on the bundled sample data
# (about 40 minutes on 2 CPU cores). Runs go to $RUNS (default /tmp/augpipe-lessons); only the
# tables and pictures are copied here.
#   bash docs/lessons/make.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
runs=${RUNS:-/tmp/augpipe-lessons}
mkdir -p "$runs"
cd "$here/../.."

keep() {  # keep SWEEP NAME: copy a sweep's table and picture as NAME.md / NAME.png
    cp "$runs/$1/sweep.md" "$here/$2.md"
    cp "$runs/$1/sweep.png" "$here/$2.png"
}
sweep() {  # sweep NAME FLAGS...: one seed per setting, on the sample data
    local name=$1; shift
    augpipe sweep --plugin cnn --out "$runs" --name "$name" "$@" >"$runs/$name.log" 2>&1
    keep "$name" "$name"
}

# Splitting: the per-class table that train prints, and the manifest.
augpipe split sample_data/shapes --val 0.1 --test 0.1 --seed 0 --out "$runs/split.csv" 2>&1 \
    | sed "s|$runs/||" >"$here/split.txt"

# Mini-batches and epochs: the same 6 epochs are 160, 80 or 20 steps per epoch.
sweep batch --batch-size 16,32,128

# Optimizers, each at its own default rate (augpipe.config.DEFAULT_LR), no schedule.
sweep optimizers --optimizer sgd,momentum,rmsprop,adam,adagrad --scheduler none

# The learning rate: too low, the default, too high; then the range test.
sweep lr --lr 0.001,0.02,0.5 --scheduler none
augpipe lr-find --plugin cnn --out "$runs/lr_find" >"$runs/lr_find.log" 2>&1
cp "$runs/lr_find/lr_find.png" "$here/lr_find.png"
tail -n 3 "$runs/lr_find.log" | sed "s|$runs/||" >"$here/lr_find.txt"

# Schedules: constant, step decay every 2 epochs, one-cycle.
sweep schedules --scheduler none,step,onecycle --step-size 2

# Over-fitting and early stopping: 320 training images, no augmentation, up to 30 epochs, patience 5.
augpipe train --plugin cnn --val 0.8 --aug none --epochs 30 --patience 5 \
    --out "$runs" --name overfit >"$runs/overfit.log" 2>&1
cp "$runs/overfit/curves.png" "$here/overfit.png"
tail -n 4 "$runs/overfit.log" | sed "s|$runs/||" >"$here/overfit.txt"

# Activations.
sweep activations --activation relu,tanh,sigmoid

# Dropout and augmentation, on the same 320 training images where over-fitting shows.
sweep dropout --val 0.8 --aug none --epochs 15 --dropout 0,0.5
sweep augmentation --val 0.8 --epochs 15 --aug none,standard
augpipe preview --per-transform --out "$here/preview.png" >/dev/null 2>&1
