#!/usr/bin/env bash
# GPU check for one CUDA machine, from the repository root; at most 8 minutes on a fresh H200
# setup included. Every figure goes to one file, $OUT/gpu_check.txt (OUT defaults to gpu_check_out).
#
#   bash bench/gpu_check.sh          the cuda tests, device augmentation against Albumentations,
#                                    the step overhead against a bare loop, the GPU recipes
#   bash bench/gpu_check.sh suite    the whole test suite on the GPU machine (pytest -n 16)
#
# The machine has no network: packages it lacks travel as wheels in .whl/ (bench/README.md says
# how to fetch them) and CIFAR-10 as one packed file, .gpu_data/cifar10.pack.gz
# (bench/cifar_pack.py), unpacked to ../shared/data/cifar10 when that is absent.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}
OUT=${OUT:-gpu_check_out}; mkdir -p "$OUT"
REPORT=$OUT/gpu_check.txt
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
say() { echo "$*" | tee -a "$REPORT"; }
t0=$(date +%s)

python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || { echo "no CUDA device" >&2; exit 1; }
if ! python3 -c "import albumentations, webdataset" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl 2>&1 | tail -2
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -2
CIFAR10=${CIFAR10:-../shared/data/cifar10}
if [ ! -d "$CIFAR10" ] && [ -f .gpu_data/cifar10.pack.gz ]; then
    python3 bench/cifar_pack.py unpack .gpu_data/cifar10.pack.gz "$CIFAR10" >/dev/null
fi
export CIFAR10
say "== $(date -u +%FT%TZ) $(python3 -c 'import torch, timm, albumentations, cv2; print(torch.cuda.get_device_name(), "torch", torch.__version__, "timm", timm.__version__, "albumentations", albumentations.__version__, "opencv", cv2.__version__)')"
say "setup: $(( $(date +%s) - t0 )) s"

if [ "$MODE" = suite ]; then
    say "== the whole suite, pytest -n 16"
    timeout 420 python3 -m pytest -n 16 --timeout 150 -q -rfEs -p no:cacheprovider -o addopts="" \
        2>&1 | tee "$OUT/suite.log" | grep -E "^(FAILED|ERROR)|passed|failed" | tee -a "$REPORT"
    say "total: $(( $(date +%s) - t0 )) s"
    exit 0
fi

say "== cuda tests, and the tests that failed on a GPU before this round"
timeout 100 python3 -m pytest -n 16 -q -p no:cacheprovider -rfEs --timeout 90 \
    tests/test_resident.py tests/test_augment_device.py tests/test_mixing.py tests/test_mixing_training.py \
    tests/test_bad_inputs.py tests/test_lr_find.py tests/test_train.py tests/test_train_cli.py \
    2>&1 | tee "$OUT/tests.log" | grep -E "^(FAILED|ERROR)|passed|failed" | tee -a "$REPORT"
say "== --recipe cifar10-94-gpu, seeds 0 1 2 (data on the device: auto)"
for seed in 0 1 2; do
    timeout 70 python3 bench/time_to_accuracy.py --recipe cifar10-94-gpu --seed $seed 2>&1 | tail -8 | tee -a "$REPORT"
done
say "== step overhead against a bare loop, data on the device, compiled (bench/train_throughput.py)"
timeout 80 python3 bench/train_throughput.py --device cuda --recipe cifar10-94-gpu --epochs 3 --skip-handwritten \
    --bound-iterations 100 2>&1 | tail -5 | tee -a "$REPORT"
say "== device augmentation against Albumentations (bench/augment_device.py --device cuda)"
timeout 40 python3 bench/augment_device.py --device cuda --min-time 1 2>&1 | tail -12 | tee -a "$REPORT"
say "== --recipe cifar10-94-gpu, seed 0, the data on the host (loader workers, a copy per step)"
timeout 55 python3 bench/time_to_accuracy.py --recipe cifar10-94-gpu --seed 0 --data-on-device off 2>&1 | tail -8 | tee -a "$REPORT"
say "total: $(( $(date +%s) - t0 )) s"
