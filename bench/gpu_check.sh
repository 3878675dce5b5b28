#!/usr/bin/env bash
# GPU check for one CUDA machine, from the repository root; about 4 minutes on one H100.
#   bash bench/gpu_check.sh            (CIFAR-10 expected at ../shared/data/cifar10 or $CIFAR10)
# 1. makes augpipe importable (from carried wheels in .whl/ when packages are missing: the
#    machine has no network), 2. runs the CUDA tests, 3. measures device-side against CPU
#    augmentation (images/s), 4. trains the cifar10-94-gpu recipe (airbench94 in augpipe's flags)
#    and the cifar10-gpu recipe, and reports the seconds to 94 % test accuracy of each. Results go to $OUT (or ./gpu_check_out) as well as the terminal.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}; mkdir -p "$OUT"
CIFAR10=${CIFAR10:-../shared/data/cifar10}
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1

# GPU_CHECK_DRY_RUN=1 runs everything up to the CUDA parts on a machine without a GPU.
DRY=${GPU_CHECK_DRY_RUN:-0}
if [ "$DRY" != 1 ]; then
    python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1
fi
if ! python3 -c "import albumentations, timm, pluggy, click, cv2, yaml, tqdm, matplotlib" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "missing packages and no .whl/ folder of wheels to install them from" >&2; exit 1
    fi
fi
export PYTHONPATH=$PWD/.gpu_pkg${PYTHONPATH:+:$PYTHONPATH}
# The package layout maps plugins/ and cli/ into augpipe: link it together without pip.
rm -rf .gpu_pkg && mkdir -p .gpu_pkg/augpipe && cp -r augpipe/. .gpu_pkg/augpipe/ && \
    cp -r plugins .gpu_pkg/augpipe/plugins && cp -r cli .gpu_pkg/augpipe/cli && cp -r sample_data .gpu_pkg/augpipe/sample_data
mkdir -p .gpu_pkg/augpipe-0.1.0.dist-info && cat > .gpu_pkg/augpipe-0.1.0.dist-info/METADATA <<META
Metadata-Version: 2.1
Name: augpipe
Version: 0.1.0
META
python3 - <<'PY' > .gpu_pkg/augpipe-0.1.0.dist-info/entry_points.txt
import tomllib
eps = tomllib.load(open("pyproject.toml", "rb"))["project"]["entry-points"]["augpipe"]
print("[augpipe]"); [print(f"{k} = {v}") for k, v in eps.items()]
PY

echo "== CUDA tests"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_augment_device.py tests/test_loader.py 2>&1 | tee "$OUT/tests.log" | tail -3
if [ "$DRY" = 1 ]; then python3 -c "import augpipe.training.run, augpipe.augment.device; from augpipe.plugin_manager import get_plugins; print('dry run: augpipe importable; plugins', sorted(get_plugins().trainers.names()))"; exit 0; fi
echo "== augmentation throughput: device against CPU"
timeout 60 python3 bench/augment_device.py --device cuda 2>&1 | tee "$OUT/augment_device.log"
echo "== CIFAR-10 time to 94 %"
timeout 150 python3 bench/time_to_accuracy.py --recipe cifar10-94-gpu --target 0.94 2>&1 | tee "$OUT/time_to_accuracy_94.log"
timeout 240 python3 bench/time_to_accuracy.py --recipe cifar10-gpu --target 0.94 2>&1 | tee "$OUT/time_to_accuracy.log"
