#!/usr/bin/env bash
# The lowest allowed versions: a fresh environment with every run-time dependency of augpipe (and
# pytest and hypothesis) at the floor pyproject.toml gives it (.ci/floors.py writes the pins),
# then the part of the suite that exercises those dependencies: augmentation on both backends,
# the loaders, models, weights in and out, optimizers, averaging, mixing, policies, sources and
# splits, config parsing, the fastcifar trainer. The main CI run tests the newest allowed ones.
#
# torch and torchvision are the exception: held at the machine's build (2.14.1 / 0.29.1, on its
# disk), because an older release is a several-GB CUDA download from PyPI. Their floor (2.11 /
# 0.26) is the release the suite was run on, on the GPU machine (bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 .ci/floors.py > .ci/floors.txt.tmp
echo "floors:" $(tr '\n' ' ' < .ci/floors.txt.tmp)
rm -rf .venv-floors
# Six GB (torch's build again), needed only for this step.
trap 'rm -rf .venv-floors' EXIT
python3 -m venv .venv-floors
. .venv-floors/bin/activate
pip install -q torch==2.14.1 torchvision==0.29.1
pip install -q -c .ci/floors.txt.tmp -e . pytest hypothesis
rm -f .ci/floors.txt.tmp
pip list 2>/dev/null | grep -i -E "^(albumentations|opencv-python-headless|numpy|torch|torchvision|timm|pluggy|click|matplotlib|pyyaml|tqdm|webdataset|pytest|hypothesis) "
python -m pytest -q -p no:cacheprovider tests/test_augment.py tests/test_augment_device.py tests/test_loader.py \
    tests/test_resident.py tests/test_models.py tests/test_models_io.py tests/test_plugins.py tests/test_optim.py \
    tests/test_tta_ema.py tests/test_mixing.py tests/test_policies.py tests/test_sources.py tests/test_split.py \
    tests/test_config_properties.py tests/test_fastcifar.py
