#!/usr/bin/env bash
# One run on a GPU machine (no internet needed): build gpunet with nvcc, record
# the GPU, driver and CUDA versions, run the GPU parity tests, run the full GPU
# benchmark, then the whole test suite if time is left. Everything lands in
# bench/results/ under names carrying the GPU, driver, CUDA version, commit and
# date. About 9 minutes in all (GPU_CHECK_SECONDS, default 540).
#
#   bash bench/gpu_check.sh
#
# Needs python with numpy, cupy, torch, pybind11, cmake (ninja optional) and
# nvcc (PATH or /usr/local/cuda/bin); pytest for the test steps.
# A failing step does not stop the later ones; the summary file lists each
# step's exit status, and the script exits non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/cuda/bin"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_SECONDS:-540}"
START=$(date +%s)
OUT=bench/results
mkdir -p "$OUT"

left() { echo $((BUDGET - ($(date +%s) - START))); }
slug() { tr 'A-Z' 'a-z' | sed -e 's/[^a-z0-9.]\+/-/g' -e 's/^-//' -e 's/-$//'; }

GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)
DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1)
CUDA=$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p')
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo no-git)
TAG="gpu-$(echo "${GPU:-unknown-gpu}" | slug)-driver${DRIVER:-unknown}-cuda${CUDA:-unknown}-${COMMIT}-$(date +%Y-%m-%d)"
SUMMARY="$OUT/$TAG-summary.txt"
: > "$SUMMARY"
FAILED=0

step() {  # step NAME LOGFILE SECONDS COMMAND...: run with a hard time limit, log, record the status
    local name=$1 log=$2 secs=$3
    shift 3
    local t0=$(date +%s)
    echo "== $name (limit ${secs}s) -> $log"
    timeout --kill-after=10 "$secs" "$@" > "$log" 2>&1
    local rc=$?
    tail -n 25 "$log"
    echo "$name: exit $rc after $(( $(date +%s) - t0 ))s (log $log)" | tee -a "$SUMMARY"
    [ "$rc" -eq 0 ] || FAILED=1
}

# ---- environment: what ran, on what
{
    echo "date: $(date -Is)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null) $(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo '(dirty)')"
    echo "gpu: $GPU"; echo "driver: $DRIVER"; echo "nvcc: $CUDA"
    echo; nvidia-smi
    echo; nvcc --version
    echo; "$PY" - <<'EOF'
import platform, numpy
print("python", platform.python_version(), "numpy", numpy.__version__)
try:
    import cupy
    rt = cupy.cuda.runtime
    print("cupy", cupy.__version__, "runtime", rt.runtimeGetVersion(), "driver API", rt.driverGetVersion())
except Exception as e:
    print("cupy:", type(e).__name__, e)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
          "available", torch.cuda.is_available())
except Exception as e:
    print("torch:", type(e).__name__, e)
EOF
} > "$OUT/$TAG-env.txt" 2>&1
cat "$OUT/$TAG-env.txt"

# ---- build: gpunet._C with nvcc (sm_80/sm_90) and gpunet._C_sim; keep the ptxas report
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
command -v ninja > /dev/null && export CMAKE_GENERATOR="${CMAKE_GENERATOR:-Ninja}"
step build "$OUT/$TAG-build.log" 300 "$PY" -m pip install -v --no-build-isolation --no-deps -e .
grep -E "ptxas|Compiling entry|registers|spill|bytes stack frame" "$OUT/$TAG-build.log" > "$OUT/$TAG-ptxas.txt"
echo "ptxas lines: $(wc -l < "$OUT/$TAG-ptxas.txt") -> $OUT/$TAG-ptxas.txt; spills:"
grep -E "[1-9][0-9]* bytes spill (stores|loads)" "$OUT/$TAG-ptxas.txt" | sort -u | head -n 20
"$PY" -c "import gpunet; print(gpunet.backends())" | tee -a "$SUMMARY"

# ---- GPU parity tests
if "$PY" -m pytest --version > /dev/null 2>&1; then
    step "pytest -k 'cuda or cupy'" "$OUT/$TAG-pytest-gpu.txt" 150 "$PY" -m pytest -q -rs -k "cuda or cupy"
else
    echo "pytest: not installed, parity tests skipped" | tee -a "$SUMMARY"
    FAILED=1
fi

# ---- the full GPU benchmark: stops starting cases with 60 s to spare; the
# JSON/Markdown are rewritten after every case, so even a hard stop keeps them
BENCH=$(( $(left) - 90 ))
if [ "$BENCH" -gt 60 ]; then
    step benchmark "$OUT/$TAG-bench.txt" $((BENCH + 60)) \
        "$PY" -m gpunet.bench --device cuda cupy --out "$OUT" --time-limit "$BENCH"
else
    echo "benchmark: no time left" | tee -a "$SUMMARY"
    FAILED=1
fi

# ---- the whole suite, with whatever time is left
if [ "$(left)" -gt 45 ] && "$PY" -m pytest --version > /dev/null 2>&1; then
    step "pytest (whole suite)" "$OUT/$TAG-pytest-all.txt" $(( $(left) - 10 )) "$PY" -m pytest -q -rs
fi

echo "total $(( $(date +%s) - START ))s" | tee -a "$SUMMARY"
echo "results in $OUT:"; ls -l "$OUT" | grep -E "$TAG|$(date +%Y-%m-%d)"
exit "$FAILED"
