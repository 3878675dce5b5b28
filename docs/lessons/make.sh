#!/usr/bin/env bash
# Remakes every table and picture of docs/lessons.md from real runs, and prints how long each
# lesson took (about 70 minutes on 2 CPU cores, every lesson under 12 on idle cores;
# docs/lessons.md has the table). Runs go to $RUNS (default
# /tmp/augpipe-lessons); only the tables and pictures are copied here. The same command again
# skips the runs that finished (a sweep resumes), so an interrupted make.sh loses little.
#   bash docs/lessons/make.sh                  # every lesson
#   bash docs/lessons/make.sh optimizers lr    # some of them
# The CIFAR-10 lessons train on a class-balanced subset (bench/cifar_subset.py: 100 images per
# class, of which 20 % are held out for validation; 200 test images per class), small enough
# that an unregularised network memorises it in a few epochs: the regime in which over-fitting,
# dropout and augmentation show. Each setting runs with 3 seeds, 2 runs at once (one core each).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
runs=${RUNS:-/tmp/augpipe-lessons}
mkdir -p "$runs"
cd "$here/../.."
data=$runs/cifar1k.csv

# The small conv net (batch norm, global max-pooling) without the cnn plugin's regularisers
# (label smoothing, weight decay), so that each lesson adds only the one it is about.
CIFAR=(--plugin cnn --model cnn_small --data "$data" --val 0.2 --label-smoothing 0 --weight-decay 0
       --batch-size 32 --seeds 3 --parallel 2)

sweep() {  # sweep NAME FLAGS...: a CIFAR-10 sweep into $runs/NAME, its output in $runs/NAME.log
    local name=$1; shift
    augpipe --quiet sweep "${CIFAR[@]}" --out "$runs" --name "$name" "$@" >"$runs/$name.log" 2>&1
}
tables() {  # tables LESSON: the lesson's table (LESSON.md) and picture (LESSON.png), from the sweeps
    python "$here/lessons.py" "$1" "$runs" "$here"
}

data() {
    [ -f "$data" ] || python bench/cifar_subset.py --per-class 100 --test-per-class 200 --out "$data"
}

split() {  # on the bundled sample data: the per-class table and the manifest; the standard preview
    augpipe split sample_data/shapes --val 0.1 --test 0.1 --seed 0 --out "$runs/split.csv" 2>&1 \
        | sed "s|$runs/||" >"$here/split.txt"
    augpipe preview --per-transform --out "$here/preview.png" >/dev/null 2>&1
}

batch() {  # the same 6 epochs as 100, 25 or 7 steps each
    sweep batch --optimizer adam --lr 1e-3 --scheduler none --aug none --epochs 6 --batch-size 8,32,128
    tables batch
}

optimizers() {  # also the learning-rate lesson's runs (opt-sgd): 200 steps, constant rates
    local fixed=(--scheduler none --aug none --epochs 8)
    sweep opt-sgd "${fixed[@]}" --optimizer sgd --lr 0.001,0.01,0.1,3
    sweep opt-momentum "${fixed[@]}" --optimizer momentum --momentum 0.9 --lr 0.01   # effective step 0.1
    sweep opt-adaptive "${fixed[@]}" --optimizer adam,rmsprop --lr 0.001
    sweep opt-adagrad "${fixed[@]}" --optimizer adagrad --lr 0.01
    tables optimizers
}

lr() {  # too low, good, too high: the plain-SGD runs of the optimizers lesson, and the range test
    [ -f "$runs/opt-sgd/sweep.csv" ] || optimizers
    tables lr
    augpipe --quiet lr-find --plugin cnn --model cnn_small --data "$data" --val 0.2 --label-smoothing 0 \
        --weight-decay 0 --batch-size 32 --aug none --optimizer sgd --start-lr 1e-4 --end-lr 10 \
        --iterations 150 --out "$runs/lr_find" >"$runs/lr_find.log" 2>&1
    cp "$runs/lr_find/lr_find.png" "$here/lr_find.png"
    tail -n 3 "$runs/lr_find.log" | sed "s|$runs/||" >"$here/lr_find.txt"
}

schedules() {  # the same peak rate, 10 epochs, with augmentation so that the runs do not just memorise
    sweep schedules --optimizer adam --lr 3e-3 --aug cifar-translate --epochs 10 \
        --scheduler none,step,cosine,onecycle --step-size 4
    tables schedules
}

regularisation() {  # over-fitting, early stopping, dropout and augmentation: 30 epochs, constant rate
    sweep regularisation --optimizer adam --lr 1e-3 --scheduler none --epochs 30 --monitor val_acc \
        --dropout 0,0.5 --aug none,cifar-translate
    tables regularisation
    augpipe preview --aug cifar-translate --per-transform --out "$here/preview-cifar-translate.png" >/dev/null 2>&1
}

dropout() {  # the lecture's setting: a fully connected net, dropout between its hidden layers
    sweep dropout --plugin mlp --model mlp --optimizer adam --lr 1e-3 --scheduler none --epochs 30 \
        --monitor val_acc --aug none --dropout 0,0.5
    # the second point: ten times the data (8,000 trained), scored on the whole test set (its own
    # noise then about 0.5 points), a cosine schedule, a mild and the classic rate
    local more=$runs/cifar10k.csv
    [ -f "$more" ] || python bench/cifar_subset.py --per-class 1000 --out "$more"
    sweep dropout-10k --data "$more" --plugin mlp --model mlp --optimizer adam --lr 1e-3 --scheduler cosine \
        --epochs 20 --monitor val_acc --aug none --dropout 0,0.2,0.5
    tables dropout
}

SEVEN=relu,leaky_relu,prelu,elu,selu,tanh,sigmoid
activations() {  # the CPU version: the same net and rate for all seven, 8 epochs
    sweep activations --optimizer adam --lr 1e-3 --scheduler none --aug none --epochs 8 --monitor val_acc \
        --activation "$SEVEN"
    tables activations
}

# A lesson of its own (about 12 minutes): with the 8-epoch one it would pass 15. Its table joins
# the activations lesson's (tables activations).
activations_long() {  # the same at 20 epochs, augmented: closer to the reference's training
    sweep activations-long --optimizer adam --lr 1e-3 --scheduler none --aug cifar-translate --epochs 20 \
        --monitor val_acc --activation "$SEVEN"
    tables activations
}

ablation() {  # docs/ablation.md: translate, flip and erasing each left out and each alone, one-cycle, 30 and 3 epochs
    bash docs/ablation.sh "$runs" long short
}

ablation_constant() {  # the same at a constant rate, 30 epochs: the regime where erasing does not pay
    bash docs/ablation.sh "$runs" constant
}

all=(data split batch optimizers lr schedules regularisation dropout activations activations_long ablation
     ablation_constant)
if [ $# -gt 0 ]; then all=(data "$@"); else : >"$runs/timings.txt"; fi  # some lessons: add their times
for lesson in "${all[@]}"; do
    start=$SECONDS
    "$lesson"
    line=$(awk -v s=$((SECONDS - start)) -v n="$lesson" 'BEGIN { printf "%-15s %5.1f min", n, s / 60 }')
    echo "$line" | tee -a "$runs/timings.txt"
done
