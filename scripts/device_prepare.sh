#!/usr/bin/env bash
# Prepare, on a machine with internet, what the GPU machine needs to run the `cuda` tests and bench/gpu.py offline.
#
#   bash scripts/device_prepare.sh            # -> .device/wheels/*.whl + .device/requirements.txt (git-ignored)
#
# The GPU machine (see README "On a GPU") has its own Python 3.12 and torch/torchvision but may lack our other
# dependencies and cannot reach a registry. This downloads CPython 3.12 manylinux x86-64 wheels of every non-torch
# package that the cuda tests and the benchmark import, with their dependencies, at the versions installed in
# .venv (= requirements.txt's pins for the packages it names). Left out, because they are big and the GPU image
# ships them (KINDS.md: numpy, scipy, pillow) or because torch brings them: torch, torchvision, triton, nvidia-*.
# Not needed by the tested code, so not downloaded: kornia (only upscale.mode=sharpen imports it), matplotlib,
# transformers, tokenizers, rich, psutil (pytorch_lightning, open_clip and diffusers import them only where they are
# installed, as on the GPU image; nothing of ours does), the Hydra launchers, the notebook packages.
# The working tree travels with the wheels and the whole must stay under 64 MiB: the wheels may take MAX_MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PY312=${PY312:-python3.12}               # for the real-install check (step 5), where one is at hand
OUT_DIR=.device/wheels
MAX_MB=${MAX_MB:-30}                     # MiB
# what ldm/, msbd/ (toy models, reranker, upscaler), scripts/run.py, tests/cuda and bench/gpu.py import, + the build
ROOTS="einops omegaconf hydra-core safetensors tqdm ftfy regex open-clip-torch spandrel pytorch-lightning
       pytest diffusers setuptools"
SOURCE_ONLY="antlr4-python3-runtime"     # no wheel on PyPI: built here (pure Python)
FROM_IMAGE="numpy scipy pillow"          # required, not shipped: the GPU image has them (too big to carry)
# for the checks: torch, torchvision and numpy at the versions KINDS.md lists; scipy and pillow's are not listed there
IMAGE_VERSIONS="torch==2.11.0 torchvision==0.26.0 numpy==2.5.2 scipy==1.16.0 pillow==11.0.0"
PLATFORMS="manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64
           manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64"

rm -rf "$OUT_DIR" && mkdir -p "$OUT_DIR"
# 1. the dependency closure of ROOTS, pinned to the versions in .venv (markers evaluated for Linux CPython 3.12)
"$PY" scripts/device_closure.py --skip torch torchvision triton $FROM_IMAGE -- $ROOTS > .device/pins.txt
echo "$(wc -l < .device/pins.txt) packages to download (pins in .device/pins.txt)"
# 2. one wheel each, no dependency resolution (the closure is the resolution); the pure-Python packages that PyPI
#    has only as source (antlr4-python3-runtime 4.9.3, which hydra-core 1.3 pins) are built into wheels here
plat_args=(); for p in $PLATFORMS; do plat_args+=(--platform "$p"); done
grep -vE "^($SOURCE_ONLY)==" .device/pins.txt > .device/pins-binary.txt
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --abi abi3 --abi none "${plat_args[@]}" --platform any -d "$OUT_DIR" -r .device/pins-binary.txt
grep -E "^($SOURCE_ONLY)==" .device/pins.txt | "$PY" -m pip wheel --quiet --no-deps -w "$OUT_DIR" -r /dev/stdin
for w in "$OUT_DIR"/*.whl; do
    case "$w" in *-none-any.whl|*cp312*manylinux*x86_64*.whl|*abi3*manylinux*x86_64*.whl) ;;
        *) echo "error: $w does not install on CPython 3.12 x86-64" >&2; exit 1 ;; esac
done
# 3. what device_run.sh installs: the ROOTS pinned, the image's packages unpinned (its versions are kept)
#    (setuptools is only for building the editable install: pip finds it in the folder)
{ grep -E "^($(echo $ROOTS | tr ' ' '|'))==" .device/pins.txt | grep -v "^setuptools=="
  printf '%s\n' $FROM_IMAGE torch torchvision; } > .device/requirements.txt
# 4. resolution check: on a Python 3.12 that holds only the image's packages (metadata-only stand-ins at the
#    versions KINDS.md lists), would the offline install find every wheel it needs?
standins=$(mktemp -d)
trap 'rm -rf "$standins"' EXIT
"$PY" scripts/device_standins.py "$standins" $IMAGE_VERSIONS
env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null "$PY" -m pip install --quiet --dry-run \
    --ignore-installed --no-index --find-links "$OUT_DIR" --find-links "$standins" --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none "${plat_args[@]}" --platform any \
    --target "$standins/target" -r .device/requirements.txt \
    || { echo "error: the wheels in $OUT_DIR do not resolve offline (see pip's message above)" >&2; exit 1; }
echo "offline resolution on Python 3.12 with the image's $(echo $IMAGE_VERSIONS | tr -s ' \n' ' '): ok"
# 5. a real install, where a Python 3.12 is at hand: a fresh venv holding the stand-ins, then device_run.sh's step 1
#    (the wheels offline, this repository editable: setuptools comes from the folder)
if "$PY312" -c "import sys; assert sys.version_info[:2] == (3, 12)" 2> /dev/null; then
    "$PY312" -m venv "$standins/venv"
    "$standins/venv/bin/python" -m pip install --quiet --no-index --no-deps "$standins"/*.whl
    env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null "$standins/venv/bin/python" -m pip install \
        --quiet --no-index --find-links "$OUT_DIR" -r .device/requirements.txt
    cp -r pyproject.toml README.md ldm msbd "$standins/" && rm -rf "$standins"/msbd/toy/weights
    env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null "$standins/venv/bin/python" -m pip install \
        --quiet --no-index --find-links "$OUT_DIR" --no-deps -e "$standins"
    echo "offline install into a Python 3.12 venv (+ this repository, editable): ok"
else
    echo "no Python 3.12 here (PY312=$PY312): the real-install check is skipped"
fi
# 6. size check: the wheels travel with the working tree (tracked and untracked-not-ignored files), 64 MiB in all
size_mb=$(( $(du -sb "$OUT_DIR" | cut -f1) / 1048576 ))
tree_mb=$(( $(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 \
              | cut -f1) / 1048576 ))
echo "$(ls "$OUT_DIR" | wc -l) wheels, ${size_mb} MiB in $OUT_DIR; with the working tree (${tree_mb} MiB):" \
     "$((size_mb + tree_mb)) MiB of the 64 MiB that travel"
if [ "$size_mb" -gt "$MAX_MB" ] || [ $((size_mb + tree_mb)) -gt 58 ]; then
    echo "error: the wheels take ${size_mb} MiB (MAX_MB=${MAX_MB}), ${tree_mb} MiB with the tree; drop a package" \
         "from ROOTS" >&2
    exit 1
fi
