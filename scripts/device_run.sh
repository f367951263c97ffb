#!/usr/bin/env bash
# Run on the GPU machine, from a copy of the repository that carries .device/ (made by scripts/device_prepare.sh):
#
#   bash scripts/device_run.sh            # results under $OUT (default outputs/device): logs + gpu_bench.json
#
# 1. installs our dependencies offline from .device/wheels (packages the machine already has at a version that
#    fits are kept: torch, torchvision, numpy, scipy, pillow always come from the machine), then this repository
#    in editable mode; 2. prints the GPU, driver and versions; 3. runs the `cuda` tests; 4. runs bench/gpu.py.
# Each step has its own time limit (tests 200 s, benchmark 300 s, cut so that the script ends within TOTAL_S = 550 s
# of its start; the install takes about 30 s), so the whole stays under about 9 minutes. A failed step does not stop
# the later ones; the exit status is that of the first failure.
# From the device tool: command `OUT=$OUT bash scripts/device_run.sh`, carry [".device"], timeout_s 600; the logs
# and gpu_bench.json come back from $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-outputs/device}
TEST_TIMEOUT_S=${TEST_TIMEOUT_S:-200}
BENCH_TIMEOUT_S=${BENCH_TIMEOUT_S:-300}
TOTAL_S=${TOTAL_S:-550}                  # the benchmark's limit shrinks to end the script by then
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1  # the image's pytest plugins (xdist, cov, ...) need not fit our pinned pytest
status=0
step() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }
fail() { echo "FAILED: $1 (exit $2)"; [ "$status" -ne 0 ] || status=$2; }

step "1. offline install from .device/wheels"
if [ ! -d .device/wheels ]; then
    echo "error: no .device/wheels: run scripts/device_prepare.sh where there is a registry, and carry .device"
    exit 2
fi
timeout 90 "$PY" -m pip install --quiet --no-index --find-links .device/wheels --no-cache-dir \
    -r .device/requirements.txt || fail "pip install of the wheels" $?
if ! timeout 45 "$PY" -m pip install --quiet --no-index --find-links .device/wheels --no-cache-dir --no-deps -e .; then
    echo "editable install failed: using PYTHONPATH=$PWD instead"
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

step "2. machine"
nvidia-smi || true
git log -1 --oneline 2>/dev/null || true
"$PY" - <<'PYEOF' || fail "torch sees no GPU" $?
import importlib.metadata as md
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
print(", ".join(f"{n} {md.version(n)}" for n in ("numpy", "scipy", "pillow", "diffusers", "open-clip-torch",
                                                 "hydra-core", "spandrel", "pytorch-lightning", "pytest")))
PYEOF

step "3. cuda tests (limit ${TEST_TIMEOUT_S} s)"
timeout "$TEST_TIMEOUT_S" "$PY" -m pytest -m cuda tests/cuda -v -rA -p no:cacheprovider --durations=0 2>&1 \
    | tee "$OUT/cuda_tests.log"
rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || fail "cuda tests" "$rc"

left=$((TOTAL_S - SECONDS)); [ "$left" -lt "$BENCH_TIMEOUT_S" ] && BENCH_TIMEOUT_S=$left
step "4. bench/gpu.py (limit ${BENCH_TIMEOUT_S} s)"
if [ "$BENCH_TIMEOUT_S" -lt 60 ]; then
    fail "bench/gpu.py not run: ${BENCH_TIMEOUT_S} s left of TOTAL_S=${TOTAL_S}" 124
else
    timeout "$BENCH_TIMEOUT_S" "$PY" bench/gpu.py --out "$OUT/gpu_bench.json" --budget-s $((BENCH_TIMEOUT_S - 40)) \
        2>&1 | tee "$OUT/gpu_bench.log"
    rc=${PIPESTATUS[0]}; [ "$rc" -eq 0 ] || fail "bench/gpu.py" "$rc"
fi

step "done, exit $status"
exit "$status"
